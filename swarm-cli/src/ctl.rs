//! `swarmctl`: the command line over the control API, in the spirit of the
//! docker CLI. The binary only parses the global flags and prints; every
//! command is here, on a [`RemoteCluster`], so a program can run them too.
//!
//! ```text
//! swarmctl [--socket PATH | --host HOST:PORT[,HOST:PORT...] --cert-dir DIR] [--format table|json] COMMAND
//!
//! service create NAME --image IMAGE [--replicas N] [--mode replicated|global|replicated-job|global-job]
//!                [--env K=V]... [--label K=V]... [--constraint EXPR]... [--publish PUBLISHED:TARGET[/udp]]...
//!                [--secret NAME]... [--config NAME]... [--reserve-cpu CPUS] [--reserve-memory BYTES]
//!                [--limit-cpu CPUS] [--limit-memory BYTES] [--restart-condition none|on-failure|any]
//!                [--endpoint-mode vip|dnsrr] [--update-parallelism N] [--update-delay DURATION]
//!                [--update-order stop-first|start-first]
//!                [--update-failure-action pause|continue|rollback] [--command ARG]...
//! service ls | ps SERVICE | inspect SERVICE | scale SERVICE=N... | rollback SERVICE | rm SERVICE...
//! service update SERVICE [--image IMAGE] [--replicas N] [--env-add K=V]... [--force]
//! node ls | inspect NODE | update NODE [--availability active|pause|drain] [--label-add K=V]... [--label-rm K]...
//! node promote NODE | demote NODE | rm NODE [--force]
//! secret create NAME FILE|- | secret ls | secret rm NAME...       (same for config)
//! join-token worker|manager [--rotate] [--quiet]
//! ca [--rotate [--ca-cert FILE --ca-key FILE] [--detach] [--timeout DURATION]] [--quiet]
//! operator-cert --name NAME --out DIR                 (local socket only)
//! operator-cert --revoke NAME
//! ```

use crate::args::{ArgError, Args};
use crate::membership::RaftStatus;
use serde::Serialize;
use std::fmt::Write as _;
use std::io::Read;
use swarm_core::cluster::{ServiceStatus, TaskFilter};
use swarm_core::id::NodeId;
use swarm_core::model::*;
use swarm_core::time::SpecDuration;
use swarm_security::control::{ControlError, RemoteCluster};
use swarm_security::rpc::RpcClient;

/// What a command prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns (the default).
    Table,
    /// One JSON document.
    Json,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The command line is wrong.
    #[error(transparent)]
    Args(#[from] ArgError),
    /// The cluster refused or could not be reached.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Another call failed.
    #[error("{0}")]
    Other(String),
}

/// The endpoints a command talks to: the control API and the raw RPC
/// client for the `raft` and `ca` services.
pub struct Target {
    /// The control API.
    pub cluster: RemoteCluster,
    /// A client of the same manager for the other services.
    pub rpc: RpcClient,
    /// True on the local socket.
    pub local: bool,
}

fn duration(v: &str, flag: &str) -> Result<SpecDuration, ArgError> {
    humantime::parse_duration(v)
        .map(|d| SpecDuration::from_nanos(d.as_nanos() as i64))
        .map_err(|e| ArgError::BadValue { flag: flag.into(), value: v.into(), reason: e.to_string() })
}

fn key_value(v: &str, flag: &str) -> Result<(String, String), ArgError> {
    v.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| ArgError::BadValue {
        flag: flag.into(),
        value: v.into(),
        reason: "expected KEY=VALUE".into(),
    })
}

fn cpus(v: Option<String>, flag: &str) -> Result<Option<u64>, ArgError> {
    v.map(|s| {
        s.parse::<f64>().ok().filter(|c| c.is_finite() && *c >= 0.0).map(|c| (c * 1e9) as u64).ok_or_else(|| {
            ArgError::BadValue { flag: flag.into(), value: s, reason: "expected a number of CPUs".into() }
        })
    })
    .transpose()
}

fn enum_value<T: serde::de::DeserializeOwned>(v: &str, flag: &str) -> Result<T, ArgError> {
    serde_json::from_value(serde_json::Value::String(v.to_owned())).map_err(|e| ArgError::BadValue {
        flag: flag.into(),
        value: v.into(),
        reason: e.to_string(),
    })
}

fn port(v: &str) -> Result<PortConfig, ArgError> {
    let bad = |reason: &str| ArgError::BadValue { flag: "publish".into(), value: v.into(), reason: reason.into() };
    let (ports, proto) = match v.split_once('/') {
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some(_) => return Err(bad("the protocol must be tcp or udp")),
        None => (v, Protocol::Tcp),
    };
    let (published, target) = ports.split_once(':').ok_or_else(|| bad("expected PUBLISHED:TARGET"))?;
    let published: u32 = published.parse().map_err(|_| bad("the published port is not a number"))?;
    let target: u32 = target.parse().map_err(|_| bad("the target port is not a number"))?;
    Ok(PortConfig { protocol: proto, target_port: target, published_port: Some(published), ..Default::default() })
}

/// Builds a service spec from `service create`'s flags.
pub fn service_spec(name: String, a: &mut Args) -> Result<ServiceSpec, ArgError> {
    let image = a.required("image")?;
    let mut spec = ServiceSpec::replicated(name, image, 1);
    let mode = a.value("mode").unwrap_or_else(|| "replicated".into());
    let replicas: Option<u64> = a.parsed("replicas")?;
    spec.mode = match mode.as_str() {
        "replicated" => ServiceMode::replicated(replicas.unwrap_or(1)),
        "global" => ServiceMode::global(),
        "replicated-job" => ServiceMode::replicated_job(replicas.unwrap_or(1), 1),
        "global-job" => ServiceMode::global_job(),
        other => {
            return Err(ArgError::BadValue {
                flag: "mode".into(),
                value: other.into(),
                reason: "use replicated, global, replicated-job or global-job".into(),
            });
        }
    };
    if spec.mode.is_global() && replicas.is_some() {
        return Err(ArgError::BadValue {
            flag: "replicas".into(),
            value: replicas.unwrap_or_default().to_string(),
            reason: format!("a {mode} service has no replica count"),
        });
    }
    let c = &mut spec.task_template.container;
    c.env = a.values("env");
    c.command = a.values("command");
    for l in a.values("label") {
        let (k, v) = key_value(&l, "label")?;
        spec.labels.insert(k, v);
    }
    c.secrets =
        a.values("secret").into_iter().map(|s| SecretReference { secret_name: s, ..Default::default() }).collect();
    c.configs =
        a.values("config").into_iter().map(|s| ConfigReference { config_name: s, ..Default::default() }).collect();
    let t = &mut spec.task_template;
    t.placement.constraints = a.values("constraint");
    if let Some(v) = cpus(a.value("reserve-cpu"), "reserve-cpu")? {
        t.resources.reservations.nano_cpus = v;
    }
    if let Some(v) = a.parsed("reserve-memory")? {
        t.resources.reservations.memory_bytes = v;
    }
    if let Some(v) = cpus(a.value("limit-cpu"), "limit-cpu")? {
        t.resources.limits.nano_cpus = v;
    }
    if let Some(v) = a.parsed("limit-memory")? {
        t.resources.limits.memory_bytes = v;
    }
    if let Some(v) = a.value("restart-condition") {
        t.restart_policy.condition = enum_value(&v, "restart-condition")?;
    }
    for p in a.values("publish") {
        spec.endpoint_spec.ports.push(port(&p)?);
    }
    if let Some(v) = a.value("endpoint-mode") {
        spec.endpoint_spec.mode = enum_value(&v, "endpoint-mode")?;
    }
    // `--network NAME[,alias=A...]`, repeatable (as `docker service create
    // --network name=N,alias=A` in its short form).
    for n in a.values("network") {
        let mut parts = n.split(',');
        let target = parts.next().unwrap_or_default().trim_start_matches("name=").to_string();
        if target.is_empty() {
            return Err(ArgError::BadValue {
                flag: "network".into(),
                value: n.clone(),
                reason: "no network name".into(),
            });
        }
        let mut aliases = Vec::new();
        for p in parts {
            let alias = p.strip_prefix("alias=").ok_or_else(|| ArgError::BadValue {
                flag: "network".into(),
                value: n.clone(),
                reason: format!("{p:?}: expected alias=NAME"),
            })?;
            aliases.push(alias.to_string());
        }
        spec.networks.push(NetworkAttachmentConfig { target, aliases });
    }
    if let Some(v) = a.parsed("update-parallelism")? {
        spec.update_config.parallelism = v;
    }
    if let Some(v) = a.value("update-delay") {
        spec.update_config.delay = duration(&v, "update-delay")?;
    }
    if let Some(v) = a.value("update-order") {
        spec.update_config.order = enum_value(&v, "update-order")?;
    }
    if let Some(v) = a.value("update-failure-action") {
        spec.update_config.failure_action = enum_value(&v, "update-failure-action")?;
    }
    Ok(spec)
}

/// A table with a header row, printed with aligned columns.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Table { rows: vec![header.iter().map(|s| s.to_string()).collect()] }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let widths: Vec<usize> =
            (0..cols).map(|c| self.rows.iter().map(|r| r.get(c).map_or(0, |s| s.len())).max().unwrap_or(0)).collect();
        let mut out = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                if i + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<w$}   ", w = widths[i]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn json(v: &impl Serialize) -> Result<String, CtlError> {
    serde_json::to_string_pretty(v).map(|s| s + "\n").map_err(|e| CtlError::Other(e.to_string()))
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

fn replicas(s: &Service, st: &ServiceStatus) -> String {
    let (run, desired) = (st.running_tasks, st.desired_tasks);
    match s.spec.mode.kind {
        ModeKind::ReplicatedJob => {
            format!("{run}/{desired} ({}/{} completed)", st.completed_tasks, s.spec.mode.total_completions())
        }
        _ => format!("{run}/{desired}"),
    }
}

async fn raft_status(t: &Target) -> Option<RaftStatus> {
    t.rpc.call::<_, RaftStatus>("raft.status", &()).await.ok()
}

/// Runs one command (the words and flags after the global flags) and
/// returns what to print.
pub async fn run(t: &Target, format: &Format, mut a: Args) -> Result<String, CtlError> {
    let group = a.word("a command (service, node, network, secret, config, join-token, ca, operator-cert)")?;
    let out = match group.as_str() {
        "service" => service(t, format, &mut a).await?,
        "node" => node(t, format, &mut a).await?,
        "secret" | "config" => blob(t, format, &group, &mut a).await?,
        "network" => network(t, format, &mut a).await?,
        "join-token" => join_token(t, format, &mut a).await?,
        "ca" => ca(t, format, &mut a).await?,
        "operator-cert" => operator_cert(t, &mut a).await?,
        other => return Err(CtlError::Other(format!("unknown command {other:?}"))),
    };
    a.finish()?;
    Ok(out)
}

async fn service(t: &Target, format: &Format, a: &mut Args) -> Result<String, CtlError> {
    let c = &t.cluster;
    let verb = a.word("a service command (create, ls, ps, inspect, scale, update, rollback, rm)")?;
    Ok(match verb.as_str() {
        "create" => {
            let name = a.word("the service name")?;
            let spec = service_spec(name, a)?;
            let id = c.create_service(spec).await?;
            format!("{id}\n")
        }
        "ls" => match format {
            Format::Json => json(&c.list_services().await?)?,
            Format::Table => {
                let services = c.list_services_with_status().await?;
                let mut tb = Table::new(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE"]);
                for (s, st) in &services {
                    tb.row(vec![
                        short(s.id.as_str()),
                        s.spec.name.clone(),
                        format!("{:?}", s.spec.mode.kind).to_lowercase(),
                        replicas(s, st),
                        s.spec.task_template.container.image.clone(),
                    ]);
                }
                tb.render()
            }
        },
        "ps" => {
            let name = a.word("the service name")?;
            let tasks = c.list_tasks(TaskFilter { service: Some(name), node: None, live_only: false }).await?;
            match format {
                Format::Json => json(&tasks)?,
                Format::Table => {
                    let nodes = c.list_nodes().await?;
                    let host = |id: &Option<NodeId>| {
                        id.as_ref()
                            .map(|id| {
                                nodes
                                    .iter()
                                    .find(|n| &n.id == id)
                                    .map(|n| n.description.hostname.clone())
                                    .filter(|h| !h.is_empty())
                                    .unwrap_or_else(|| id.to_string())
                            })
                            .unwrap_or_default()
                    };
                    let mut tb = Table::new(&["ID", "SLOT", "NODE", "DESIRED", "CURRENT", "ERROR"]);
                    for task in &tasks {
                        tb.row(vec![
                            short(task.id.as_str()),
                            task.slot.map(|s| s.to_string()).unwrap_or_default(),
                            host(&task.node_id),
                            task.desired_state.to_string(),
                            task.status.state.to_string(),
                            task.status.err.clone().unwrap_or_default(),
                        ]);
                    }
                    tb.render()
                }
            }
        }
        "inspect" => json(&c.inspect_service(&a.word("the service name")?).await?)?,
        "scale" => {
            let mut out = String::new();
            let mut any = false;
            while let Some(w) = a.next_word() {
                any = true;
                let (name, n) = key_value(&w, "scale")?;
                let n: u64 = n.parse().map_err(|_| ArgError::BadValue {
                    flag: "scale".into(),
                    value: w.clone(),
                    reason: "expected SERVICE=REPLICAS".into(),
                })?;
                c.scale(&name, n).await?;
                let _ = writeln!(out, "{name} scaled to {n}");
            }
            if !any {
                return Err(ArgError::Missing("SERVICE=REPLICAS".into()).into());
            }
            out
        }
        "update" => {
            let name = a.word("the service name")?;
            let image = a.value("image");
            let replicas: Option<u64> = a.parsed("replicas")?;
            let env_add = a.values("env-add");
            let force = a.switch("force");
            c.modify_service(&name, move |s| {
                if let Some(i) = &image {
                    s.task_template.container.image = i.clone();
                }
                if let Some(r) = replicas {
                    s.mode.replicas = Some(r);
                }
                for e in &env_add {
                    let key = e.split('=').next().unwrap_or_default().to_owned();
                    s.task_template.container.env.retain(|x| x.split('=').next() != Some(key.as_str()));
                    s.task_template.container.env.push(e.clone());
                }
                if force {
                    s.task_template.force_update = s.task_template.force_update.wrapping_add(1);
                }
            })
            .await?;
            format!("{name}\n")
        }
        "rollback" => {
            let name = a.word("the service name")?;
            c.rollback_service(&name).await?;
            format!("{name}\n")
        }
        "rm" => {
            let mut out = String::new();
            let first = a.word("the service name")?;
            for name in std::iter::once(first).chain(std::iter::from_fn(|| a.next_word())) {
                c.remove_service(&name).await?;
                let _ = writeln!(out, "{name}");
            }
            out
        }
        other => return Err(CtlError::Other(format!("unknown service command {other:?}"))),
    })
}

/// `node ls` in JSON: the node and, for managers, its raft standing.
#[derive(Debug, Serialize)]
struct NodeRow<'a> {
    #[serde(flatten)]
    node: &'a Node,
    /// `leader`, `reachable` (a voter following the leader) or
    /// `unreachable`, for managers; absent for workers.
    manager_status: Option<&'static str>,
}

async fn node(t: &Target, format: &Format, a: &mut Args) -> Result<String, CtlError> {
    let c = &t.cluster;
    let verb = a.word("a node command (ls, inspect, update, promote, demote, rm)")?;
    Ok(match verb.as_str() {
        "ls" => {
            let nodes = c.list_nodes().await?;
            let raft = raft_status(t).await;
            let standing = |n: &Node| -> Option<&'static str> {
                let m = n.manager.as_ref()?;
                let r = raft.as_ref()?;
                Some(if r.leader == Some(m.raft_id) {
                    "leader"
                } else if r.voters.contains(&m.raft_id) && n.status.state == NodeState::Ready {
                    "reachable"
                } else {
                    "unreachable"
                })
            };
            match format {
                Format::Json => {
                    let rows: Vec<NodeRow> =
                        nodes.iter().map(|n| NodeRow { node: n, manager_status: standing(n) }).collect();
                    json(&rows)?
                }
                Format::Table => {
                    let mut tb = Table::new(&["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"]);
                    for n in &nodes {
                        tb.row(vec![
                            n.id.to_string(),
                            n.description.hostname.clone(),
                            format!("{:?}", n.status.state).to_lowercase(),
                            format!("{:?}", n.spec.availability).to_lowercase(),
                            standing(n).unwrap_or_default().to_owned(),
                        ]);
                    }
                    tb.render()
                }
            }
        }
        "inspect" => json(&c.inspect_node(&a.word("the node id or hostname")?).await?)?,
        "update" => {
            let name = a.word("the node id or hostname")?;
            if let Some(v) = a.value("availability") {
                c.set_node_availability(&name, enum_value(&v, "availability")?).await?;
            }
            for l in a.values("label-add") {
                let (k, v) = key_value(&l, "label-add")?;
                c.set_node_label(&name, &k, Some(&v)).await?;
            }
            for k in a.values("label-rm") {
                c.set_node_label(&name, &k, None).await?;
            }
            format!("{name}\n")
        }
        "promote" | "demote" => {
            let name = a.word("the node id or hostname")?;
            let role = if verb == "promote" { NodeRole::Manager } else { NodeRole::Worker };
            c.set_node_role(&name, role).await?;
            format!("{name}\n")
        }
        "rm" => {
            let name = a.word("the node id or hostname")?;
            let force = a.switch("force");
            c.remove_node(&name, force).await?;
            format!("{name}\n")
        }
        other => return Err(CtlError::Other(format!("unknown node command {other:?}"))),
    })
}

async fn blob(t: &Target, format: &Format, kind: &str, a: &mut Args) -> Result<String, CtlError> {
    let c = &t.cluster;
    let verb = a.word(&format!("a {kind} command (create, ls, rm)"))?;
    Ok(match verb.as_str() {
        "create" => {
            let name = a.word(&format!("the {kind} name"))?;
            let file = a.word("FILE (or - for standard input)")?;
            let data = if file == "-" {
                let mut b = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut b)
                    .map_err(|e| CtlError::Other(format!("reading standard input: {e}")))?;
                b
            } else {
                std::fs::read(&file).map_err(|e| CtlError::Other(format!("reading {file}: {e}")))?
            };
            let id = if kind == "secret" {
                c.create_secret(&name, data).await?.to_string()
            } else {
                c.create_config(&name, data).await?.to_string()
            };
            format!("{id}\n")
        }
        "ls" => {
            let rows: Vec<(String, String)> = if kind == "secret" {
                c.list_secrets().await?.into_iter().map(|s| (s.id.to_string(), s.spec.name)).collect()
            } else {
                c.list_configs().await?.into_iter().map(|s| (s.id.to_string(), s.spec.name)).collect()
            };
            match format {
                Format::Json => {
                    let v: Vec<serde_json::Value> =
                        rows.iter().map(|(id, name)| serde_json::json!({"id": id, "name": name})).collect();
                    json(&v)?
                }
                Format::Table => {
                    let mut tb = Table::new(&["ID", "NAME"]);
                    for (id, name) in rows {
                        tb.row(vec![id, name]);
                    }
                    tb.render()
                }
            }
        }
        "rm" => {
            let object = if kind == "secret" { ObjectKind::Secret } else { ObjectKind::Config };
            let mut out = String::new();
            let first = a.word(&format!("the {kind} name"))?;
            for name in std::iter::once(first).chain(std::iter::from_fn(|| a.next_word())) {
                c.remove_object(object, &name).await?;
                let _ = writeln!(out, "{name}");
            }
            out
        }
        other => return Err(CtlError::Other(format!("unknown {kind} command {other:?}"))),
    })
}

/// `network create|ls|inspect|rm`, as `docker network`.
async fn network(t: &Target, format: &Format, a: &mut Args) -> Result<String, CtlError> {
    let c = &t.cluster;
    let verb = a.word("a network command (create, ls, inspect, rm)")?;
    Ok(match verb.as_str() {
        "create" => {
            let name = a.word("the network name")?;
            let mut spec = NetworkSpec {
                name,
                driver: a.value("driver").unwrap_or_else(|| "overlay".into()),
                subnet: a.value("subnet").unwrap_or_default(),
                gateway: a.value("gateway").unwrap_or_default(),
                ip_range: a.value("ip-range").unwrap_or_default(),
                internal: a.switch("internal"),
                attachable: a.switch("attachable"),
                ingress: a.switch("ingress"),
                ..Default::default()
            };
            for o in a.values("opt") {
                // `--opt encrypted` (no value) as docker accepts it.
                let (k, v) = match o.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (o.clone(), String::new()),
                };
                spec.options.insert(k, v);
            }
            for l in a.values("label") {
                let (k, v) = key_value(&l, "label")?;
                spec.labels.insert(k, v);
            }
            format!("{}\n", c.create_network(spec).await?)
        }
        "ls" => {
            let nets = c.list_networks().await?;
            match format {
                Format::Json => json(&nets)?,
                Format::Table => {
                    let mut tb = Table::new(&["ID", "NAME", "DRIVER", "SUBNET", "VNI", "FLAGS"]);
                    for n in nets {
                        let mut flags = Vec::new();
                        for (on, f) in [
                            (n.spec.internal, "internal"),
                            (n.spec.attachable, "attachable"),
                            (n.spec.ingress, "ingress"),
                            (n.spec.is_encrypted(), "encrypted"),
                        ] {
                            if on {
                                flags.push(f);
                            }
                        }
                        tb.row(vec![
                            n.id.to_string(),
                            n.spec.name.clone(),
                            if n.spec.driver.is_empty() { "bridge".into() } else { n.spec.driver.clone() },
                            n.subnet.clone().unwrap_or_else(|| "-".into()),
                            n.vni.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                            flags.join(","),
                        ]);
                    }
                    tb.render()
                }
            }
        }
        "inspect" => {
            let name = a.word("the network name")?;
            let n = c
                .list_networks()
                .await?
                .into_iter()
                .find(|n| n.spec.name == name || n.id.as_str() == name)
                .ok_or_else(|| CtlError::Other(format!("no network {name:?}")))?;
            json(&n)?
        }
        "rm" => {
            let mut out = String::new();
            let first = a.word("the network name")?;
            for name in std::iter::once(first).chain(std::iter::from_fn(|| a.next_word())) {
                c.remove_object(ObjectKind::Network, &name).await?;
                let _ = writeln!(out, "{name}");
            }
            out
        }
        other => return Err(CtlError::Other(format!("unknown network command {other:?}"))),
    })
}

async fn join_token(t: &Target, format: &Format, a: &mut Args) -> Result<String, CtlError> {
    let role = a.word("worker or manager")?;
    if role != "worker" && role != "manager" {
        return Err(ArgError::BadValue {
            flag: "join-token".into(),
            value: role,
            reason: "use worker or manager".into(),
        }
        .into());
    }
    let rotate = a.switch("rotate");
    let quiet = a.switch("quiet");
    if rotate {
        t.rpc
            .call::<_, serde_json::Value>("ca.rotate_join_token", &serde_json::json!({ "role": role }))
            .await
            .map_err(|e| CtlError::Other(e.to_string()))?;
    }
    let tokens: serde_json::Value =
        t.rpc.call("ca.join_tokens", &()).await.map_err(|e| CtlError::Other(e.to_string()))?;
    let token = tokens[role.as_str()].as_str().unwrap_or_default().to_owned();
    Ok(match format {
        Format::Json => json(&serde_json::json!({ "role": role, "token": token }))?,
        Format::Table if quiet => format!("{token}\n"),
        Format::Table => {
            let rotated = if rotate { "Rotated. " } else { "" };
            format!("{rotated}To add a {role} to this swarm, run:\n\n    swarmd join --token {token} <manager-addr>\n")
        }
    })
}

/// `ca`: the roots nodes trust and where a rotation stands; with
/// `--rotate`, starts a rotation (to a new root made by the managers, or
/// to `--ca-cert`/`--ca-key`) and, unless `--detach`, follows it until
/// every live node holds a certificate of the new root and the old root
/// is dropped (as `docker swarm ca --rotate`), printing the progress.
async fn ca(t: &Target, format: &Format, a: &mut Args) -> Result<String, CtlError> {
    use swarm_security::ca_service::{RootCaResponse, RotateCaRequest};
    use swarm_security::rotation::RotationStatus;
    let rotate = a.switch("rotate");
    let detach = a.switch("detach");
    let quiet = a.switch("quiet");
    let cert = a.value("ca-cert");
    let key = a.value("ca-key");
    let timeout = match a.value("timeout") {
        Some(v) => Some(duration(&v, "timeout")?.to_std()),
        None => None,
    };
    let other = |e: swarm_security::rpc::RpcError| CtlError::Other(e.to_string());
    let mut progress = String::new();
    if rotate {
        let read = |flag: &str, path: String| {
            std::fs::read_to_string(&path).map_err(|e| CtlError::Other(format!("--{flag} {path}: {e}")))
        };
        let req = RotateCaRequest {
            cert_pem: cert.map(|p| read("ca-cert", p)).transpose()?,
            key_pem: key.map(|p| read("ca-key", p)).transpose()?,
        };
        let started: RotationStatus = t.rpc.call("ca.rotate", &req).await.map_err(other)?;
        let total = started.pending.len() + started.renewed.len();
        let _ = writeln!(progress, "CA rotation started: {} node(s) to renew", total);
        if !detach {
            let began = std::time::Instant::now();
            let mut last = usize::MAX;
            loop {
                let st: RotationStatus = t.rpc.call("ca.rotation", &()).await.map_err(other)?;
                if !st.in_progress {
                    let _ = writeln!(progress, "Progress: all nodes renewed; the old root was dropped");
                    break;
                }
                if st.pending.len() != last {
                    last = st.pending.len();
                    let done = st.renewed.len();
                    let _ = writeln!(progress, "Progress: {done} of {} node(s) renewed", done + last);
                }
                if timeout.is_some_and(|t| began.elapsed() > t) {
                    return Err(CtlError::Other(format!(
                        "ca --rotate: still waiting for {} node(s) after {:?}: {}; the rotation goes on (see `swarmctl ca`)",
                        st.pending.len(),
                        timeout.unwrap_or_default(),
                        st.pending.join(", ")
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
    let roots: RootCaResponse = t.rpc.call("ca.root_ca", &()).await.map_err(other)?;
    let status: RotationStatus = t.rpc.call("ca.rotation", &()).await.map_err(other)?;
    Ok(match format {
        Format::Json => json(&serde_json::json!({ "roots": roots.ca_cert_pem, "rotation": status }))?,
        Format::Table if quiet => roots.ca_cert_pem,
        Format::Table => {
            if status.in_progress {
                let _ = writeln!(
                    progress,
                    "Rotation in progress: {} node(s) renewed, waiting for {}",
                    status.renewed.len(),
                    status.pending.join(", ")
                );
            }
            format!("{progress}{}", roots.ca_cert_pem)
        }
    })
}

async fn operator_cert(t: &Target, a: &mut Args) -> Result<String, CtlError> {
    if let Some(name) = a.value("revoke") {
        t.rpc
            .call::<_, serde_json::Value>("ca.revoke_operator", &serde_json::json!({ "name": name }))
            .await
            .map_err(|e| CtlError::Other(e.to_string()))?;
        return Ok(format!("certificates of operator {name} revoked\n"));
    }
    let name = a.required("name")?;
    let out = std::path::PathBuf::from(a.required("out")?);
    if !t.local {
        return Err(CtlError::Other("operator-cert is served on a manager's local socket only (use --socket)".into()));
    }
    // The key is made here and never leaves this host; the manager signs
    // the request.
    let csr = swarm_security::ca::NodeCsr::generate(&name).map_err(|e| CtlError::Other(e.to_string()))?;
    let issued = t.cluster.issue_operator_cert(&name, csr.csr_pem(), None).await?;
    let files = swarm_security::files::NodeFiles::new(&out);
    files.write_ca_cert(&issued.ca_cert_pem).map_err(|e| CtlError::Other(e.to_string()))?;
    files.write(&issued.cert_pem, &csr.key_pem()).map_err(|e| CtlError::Other(e.to_string()))?;
    Ok(format!("operator certificate for {name} written to {}\n", out.display()))
}
