//! Spec validation. Every problem becomes a [`FieldError`] naming the field
//! (a path such as `endpoint_spec.ports[1].published_port`) and the reason;
//! a spec with problems yields one [`ValidationError`] that lists them all.
//!
//! The state machine validates every spec it stores, so no [`Store`]
//! accepts an invalid one. Every count a spec carries is bounded by
//! [`limits`], so no spec can make a manager do
//! unbounded work.
//!
//! [`Store`]: crate::store::Store
//!
//! ```
//! use swarm_core::model::{ServiceSpec, ServiceMode};
//! use swarm_core::validate::validate_service_spec;
//! let mut spec = ServiceSpec::global("web", "nginx:1.27");
//! spec.mode.replicas = Some(3);
//! let err = validate_service_spec(&spec).unwrap_err();
//! assert_eq!(err.errors[0].field, "mode.replicas");
//! ```

use crate::constraint::Constraint;
use crate::image::ImageRef;
use crate::model::limits::*;
use crate::model::*;
use crate::time::SpecDuration;
use std::collections::BTreeSet;
use std::fmt;

/// One problem with one field.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Path to the field, e.g. `task_template.container.image`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// All problems found in one spec.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ValidationError {
    /// What was validated, e.g. `service "web"`.
    pub subject: String,
    /// The problems, in field order.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: ", self.subject)?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}

impl ValidationError {
    /// True when some error is about `field`.
    pub fn has_field(&self, field: &str) -> bool {
        self.errors.iter().any(|e| e.field == field)
    }
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), reason: reason.into() });
    }
    fn finish(self, subject: String) -> Result<(), ValidationError> {
        if self.0.is_empty() { Ok(()) } else { Err(ValidationError { subject, errors: self.0 }) }
    }
    fn duration(&mut self, field: &str, d: SpecDuration) {
        if d.is_negative() {
            self.add(field, format!("duration {d} is negative"));
        }
    }
    /// `value` must not be above `limit`.
    fn at_most<T: PartialOrd + fmt::Display>(&mut self, field: &str, value: T, limit: T) {
        if value > limit {
            self.add(field, format!("{value} is above the limit of {limit}"));
        }
    }
}

/// Why `name` is not a DNS label, if it is not one.
pub fn dns_label_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty; a name must be a DNS label".into());
    }
    if name.len() > 63 {
        return Some(format!("{name:?} is longer than 63 characters, the limit of a DNS label"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
        return Some(format!("{name:?} contains {c:?}; a DNS label holds only letters, digits and '-'"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some(format!("{name:?} starts or ends with '-', which a DNS label may not"));
    }
    None
}

fn object_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".into());
    }
    if name.len() > 64 {
        return Some(format!("{name:?} is longer than 64 characters"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Some(format!("{name:?} contains {c:?}; use letters, digits, '-', '_' and '.'"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some(format!("{name:?} must start with a letter or digit"));
    }
    None
}

fn labels(errs: &mut Errors, field: &str, l: &Labels) {
    for k in l.keys() {
        if k.trim().is_empty() {
            errs.add(field, "a label key is empty");
        } else if k.chars().any(|c| c.is_whitespace() || c == '=') {
            errs.add(format!("{field}.{k}"), "label keys may not hold whitespace or '='");
        }
    }
}

/// Validates a service spec.
pub fn validate_service_spec(spec: &ServiceSpec) -> Result<(), ValidationError> {
    let mut e = Errors::default();
    if let Some(p) = dns_label_problem(&spec.name) {
        e.add("name", p);
    }
    labels(&mut e, "labels", &spec.labels);
    task_spec(&mut e, &spec.task_template);
    mode(&mut e, &spec.mode);
    update_config(&mut e, "update_config", &spec.update_config);
    update_config(&mut e, "rollback_config", &spec.rollback_config);
    endpoint(&mut e, &spec.endpoint_spec);
    let mut nets = BTreeSet::new();
    for (i, n) in spec.networks.iter().enumerate() {
        if n.target.is_empty() {
            e.add(format!("networks[{i}].target"), "is empty");
        } else if !nets.insert(n.target.as_str()) {
            e.add(format!("networks[{i}].target"), format!("network {:?} is attached twice", n.target));
        }
        for (j, a) in n.aliases.iter().enumerate() {
            if let Some(p) = dns_label_problem(a) {
                e.add(format!("networks[{i}].aliases[{j}]"), p);
            }
        }
    }
    e.finish(format!("service {:?}", spec.name))
}

fn task_spec(e: &mut Errors, t: &TaskSpec) {
    let c = &t.container;
    match ImageRef::parse(&c.image) {
        Ok(_) => {}
        Err(err) => e.add("task_template.container.image", err.to_string()),
    }
    for (i, v) in c.env.iter().enumerate() {
        let key = v.split('=').next().unwrap_or("");
        if key.is_empty() {
            e.add(format!("task_template.container.env[{i}]"), format!("{v:?} has no variable name (want KEY=value)"));
        } else if key.chars().any(char::is_whitespace) {
            e.add(format!("task_template.container.env[{i}]"), format!("variable name {key:?} holds whitespace"));
        }
    }
    if let Some(w) = &c.workdir {
        if !w.starts_with('/') {
            e.add("task_template.container.workdir", format!("{w:?} is not an absolute path"));
        }
    }
    if let Some(u) = &c.user {
        if u.is_empty() || u.contains(char::is_whitespace) {
            e.add("task_template.container.user", format!("{u:?} is not a user name or uid[:gid]"));
        }
    }
    labels(e, "task_template.container.labels", &c.labels);
    let mut targets = BTreeSet::new();
    for (i, m) in c.mounts.iter().enumerate() {
        let f = format!("task_template.container.mounts[{i}]");
        if !m.target.starts_with('/') {
            e.add(format!("{f}.target"), format!("{:?} is not an absolute path", m.target));
        } else if !targets.insert(m.target.clone()) {
            e.add(format!("{f}.target"), format!("{:?} is mounted twice", m.target));
        }
        match m.kind {
            MountKind::Bind if !m.source.starts_with('/') => {
                e.add(format!("{f}.source"), format!("a bind mount needs an absolute host path, got {:?}", m.source))
            }
            MountKind::Volume if !m.source.is_empty() => {
                if let Some(p) = object_name_problem(&m.source) {
                    e.add(format!("{f}.source"), format!("volume name {p}"));
                }
            }
            MountKind::Tmpfs if !m.source.is_empty() => e.add(format!("{f}.source"), "a tmpfs mount has no source"),
            _ => {}
        }
        if m.tmpfs_size_bytes > 0 && m.kind != MountKind::Tmpfs {
            e.add(format!("{f}.tmpfs_size_bytes"), "only a tmpfs mount has a size");
        }
    }
    let mut files = BTreeSet::new();
    for (i, s) in c.secrets.iter().enumerate() {
        let f = format!("task_template.container.secrets[{i}]");
        if let Some(p) = object_name_problem(&s.secret_name) {
            e.add(format!("{f}.secret_name"), p);
        } else if !files.insert(s.path()) {
            e.add(format!("{f}.target.name"), format!("file {:?} is the target of two secrets or configs", s.path()));
        }
    }
    for (i, s) in c.configs.iter().enumerate() {
        let f = format!("task_template.container.configs[{i}]");
        if let Some(p) = object_name_problem(&s.config_name) {
            e.add(format!("{f}.config_name"), p);
        } else if !files.insert(s.path()) {
            e.add(format!("{f}.target.name"), format!("file {:?} is the target of two secrets or configs", s.path()));
        }
    }
    if let Some(h) = &c.health_check {
        let f = "task_template.container.health_check";
        e.at_most(&format!("{f}.retries"), h.retries, MAX_HEALTH_RETRIES);
        e.duration(&format!("{f}.interval"), h.interval);
        e.duration(&format!("{f}.timeout"), h.timeout);
        e.duration(&format!("{f}.start_period"), h.start_period);
        match &h.probe {
            HealthProbe::Command(cmd) if cmd.is_empty() || cmd[0].is_empty() => {
                e.add(format!("{f}.probe"), "the command is empty")
            }
            HealthProbe::Tcp { port: 0 } | HealthProbe::Http { port: 0, .. } => {
                e.add(format!("{f}.probe.port"), "port 0 is not a port")
            }
            HealthProbe::Http { path, .. } if !path.starts_with('/') => {
                e.add(format!("{f}.probe.path"), format!("{path:?} does not start with '/'"))
            }
            _ => {}
        }
    }
    e.duration("task_template.container.stop_grace_period", c.stop_grace_period);
    let r = &t.resources;
    let f = "task_template.resources";
    if r.limits.memory_bytes > 0 && r.reservations.memory_bytes > r.limits.memory_bytes {
        e.add(
            format!("{f}.reservations.memory_bytes"),
            format!(
                "the reservation ({} bytes) is above the limit ({} bytes)",
                r.reservations.memory_bytes, r.limits.memory_bytes
            ),
        );
    }
    if r.limits.nano_cpus > 0 && r.reservations.nano_cpus > r.limits.nano_cpus {
        e.add(
            format!("{f}.reservations.nano_cpus"),
            format!("the reservation ({}) is above the limit ({})", r.reservations.nano_cpus, r.limits.nano_cpus),
        );
    }
    e.duration("task_template.restart_policy.delay", t.restart_policy.delay);
    e.duration("task_template.restart_policy.window", t.restart_policy.window);
    e.at_most("task_template.restart_policy.max_attempts", t.restart_policy.max_attempts, MAX_RESTART_ATTEMPTS);
    let p = &t.placement;
    e.at_most("task_template.placement.max_replicas", p.max_replicas, MAX_TASKS_PER_SERVICE);
    for (i, c) in p.constraints.iter().enumerate() {
        if let Err(err) = c.parse::<Constraint>() {
            e.add(format!("task_template.placement.constraints[{i}]"), err.to_string());
        }
    }
    for (i, pref) in p.preferences.iter().enumerate() {
        let ok = pref
            .spread
            .strip_prefix("node.labels.")
            .or_else(|| pref.spread.strip_prefix("engine.labels."))
            .is_some_and(|k| !k.is_empty());
        if !ok {
            e.add(
                format!("task_template.placement.preferences[{i}].spread"),
                format!("{:?} is not node.labels.<key> or engine.labels.<key>", pref.spread),
            );
        }
    }
    for (i, pl) in p.platforms.iter().enumerate() {
        if pl.os.is_empty() && pl.architecture.is_empty() {
            e.add(format!("task_template.placement.platforms[{i}]"), "names neither an OS nor an architecture");
        }
    }
}

fn mode(e: &mut Errors, m: &ServiceMode) {
    let name = match m.kind {
        ModeKind::Replicated => "replicated",
        ModeKind::Global => "global",
        ModeKind::ReplicatedJob => "replicated-job",
        ModeKind::GlobalJob => "global-job",
    };
    match m.replicas {
        Some(_) if m.kind != ModeKind::Replicated => {
            e.add("mode.replicas", format!("replicas is not allowed on a {name} service"))
        }
        Some(n) => e.at_most("mode.replicas", n, MAX_TASKS_PER_SERVICE),
        None => {}
    }
    if m.kind != ModeKind::ReplicatedJob {
        if m.max_concurrent.is_some() {
            e.add("mode.max_concurrent", format!("max_concurrent is only for replicated-job, not {name}"));
        }
        if m.total_completions.is_some() {
            e.add("mode.total_completions", format!("total_completions is only for replicated-job, not {name}"));
        }
    } else {
        match m.max_concurrent {
            Some(0) => e.add("mode.max_concurrent", "must be at least 1"),
            Some(n) => e.at_most("mode.max_concurrent", n, MAX_TASKS_PER_SERVICE),
            None => {}
        }
        if let Some(n) = m.total_completions {
            e.at_most("mode.total_completions", n, MAX_TASKS_PER_SERVICE);
        }
    }
}

fn update_config(e: &mut Errors, field: &str, u: &UpdateConfig) {
    e.at_most(&format!("{field}.parallelism"), u.parallelism, MAX_TASKS_PER_SERVICE);
    e.duration(&format!("{field}.delay"), u.delay);
    e.duration(&format!("{field}.monitor"), u.monitor);
    if !(0.0..=1.0).contains(&u.max_failure_ratio) {
        e.add(format!("{field}.max_failure_ratio"), format!("{} is not between 0 and 1", u.max_failure_ratio));
    }
}

fn endpoint(e: &mut Errors, ep: &EndpointSpec) {
    let mut published = BTreeSet::new();
    for (i, p) in ep.ports.iter().enumerate() {
        let f = format!("endpoint_spec.ports[{i}]");
        if p.target_port == 0 || p.target_port > 65535 {
            e.add(format!("{f}.target_port"), format!("{} is not a port (1-65535)", p.target_port));
        }
        if let Some(pp) = p.published_port {
            if pp == 0 || pp > 65535 {
                e.add(format!("{f}.published_port"), format!("{pp} is not a port (1-65535)"));
            } else if !published.insert((p.protocol, pp)) {
                e.add(format!("{f}.published_port"), format!("{}/{} is published twice", pp, p.protocol.as_str()));
            }
        }
        if ep.mode == EndpointMode::Dnsrr && p.publish_mode == PublishMode::Ingress {
            e.add(format!("{f}.publish_mode"), "ingress ports need endpoint mode vip; use host mode with dnsrr");
        }
    }
}

/// Validates a node spec.
pub fn validate_node(node: &Node) -> Result<(), ValidationError> {
    let mut e = Errors::default();
    if node.id.as_str().is_empty() {
        e.add("id", "is empty");
    }
    labels(&mut e, "spec.labels", &node.spec.labels);
    labels(&mut e, "description.engine_labels", &node.description.engine_labels);
    if !node.status.addr.is_empty() && node.status.addr.parse::<std::net::IpAddr>().is_err() {
        e.add("status.addr", format!("{:?} is not an IP address", node.status.addr));
    }
    e.finish(format!("node {:?}", node.id.as_str()))
}

/// The driver option requesting an overlay network's VXLAN identifier, as
/// Docker's (`--opt com.docker.network.driver.overlay.vxlanid_list=4097`).
/// Docker takes one VNI per subnet; a network here has one subnet, so one
/// VNI.
pub const OPT_VXLANID_LIST: &str = "com.docker.network.driver.overlay.vxlanid_list";

/// Network drivers a spec may name (empty = the runtime's default): the
/// engine's built-in ones.
pub const NETWORK_DRIVERS: [&str; 6] = ["overlay", "bridge", "host", "null", "macvlan", "ipvlan"];

/// The VNI `spec` requests through [`OPT_VXLANID_LIST`], if any; `Err`
/// says why the option is not one VNI from 1 to
/// [`MAX_VNI`].
pub fn requested_vni(spec: &NetworkSpec) -> Result<Option<u32>, String> {
    let Some(v) = spec.options.get(OPT_VXLANID_LIST) else { return Ok(None) };
    let ids: Vec<&str> = v.split(',').map(str::trim).collect();
    if ids.len() != 1 {
        return Err(format!("{v:?} lists {} VNIs; the network has one subnet, so give one", ids.len()));
    }
    match ids[0].parse::<u32>() {
        Ok(n) if (1..=MAX_VNI).contains(&n) => Ok(Some(n)),
        _ => Err(format!("{v:?} is not a VXLAN identifier (1-{MAX_VNI})")),
    }
}

/// Validates a network spec: the name, a known driver, and an addressing
/// that holds together (subnet a CIDR, IPv4 with room for tasks on an
/// overlay network; gateway an address of the subnet but not its network
/// or broadcast address; ip_range inside the subnet; a requested VNI only
/// on an overlay network).
pub fn validate_network_spec(spec: &NetworkSpec) -> Result<(), ValidationError> {
    let mut e = Errors::default();
    if let Some(p) = dns_label_problem(&spec.name) {
        e.add("name", p);
    }
    labels(&mut e, "labels", &spec.labels);
    if !spec.driver.is_empty() && !NETWORK_DRIVERS.contains(&spec.driver.as_str()) {
        e.add("driver", format!("{:?} is not a known driver (one of {})", spec.driver, NETWORK_DRIVERS.join(", ")));
    }
    if spec.ingress && !matches!(spec.driver.as_str(), "" | "overlay") {
        e.add("driver", format!("the ingress network is an overlay network, not {:?}", spec.driver));
    }
    let overlay = spec.is_overlay();
    let subnet = if spec.subnet.is_empty() {
        None
    } else {
        match spec.subnet.parse::<ipnet::IpNet>() {
            Err(_) => {
                e.add("subnet", format!("{:?} is not a CIDR", spec.subnet));
                None
            }
            Ok(ipnet::IpNet::V6(_)) if overlay => {
                e.add("subnet", format!("{:?}: overlay networks take IPv4 subnets only", spec.subnet));
                None
            }
            Ok(n) if overlay && n.prefix_len() > 30 => {
                e.add("subnet", format!("{:?} is smaller than a /30 and leaves no address for tasks", spec.subnet));
                None
            }
            Ok(n) => Some(n.trunc()),
        }
    };
    if !spec.gateway.is_empty() {
        match (spec.gateway.parse::<std::net::IpAddr>(), subnet) {
            (Err(_), _) => e.add("gateway", format!("{:?} is not an IP address", spec.gateway)),
            (Ok(_), None) if spec.subnet.is_empty() => {
                e.add("gateway", format!("{:?} needs a subnet to belong to (set subnet)", spec.gateway))
            }
            (Ok(_), None) => {}
            (Ok(g), Some(n)) if !n.contains(&g) => {
                e.add("gateway", format!("{g} is not in subnet {n}"));
            }
            (Ok(g), Some(n)) if g == n.network() || g == n.broadcast() => {
                e.add("gateway", format!("{g} is the network or broadcast address of subnet {n}"));
            }
            (Ok(_), Some(_)) => {}
        }
    }
    if !spec.ip_range.is_empty() {
        match (spec.ip_range.parse::<ipnet::IpNet>(), subnet) {
            (Err(_), _) => e.add("ip_range", format!("{:?} is not a CIDR", spec.ip_range)),
            (Ok(_), None) if spec.subnet.is_empty() => {
                e.add("ip_range", format!("{:?} needs a subnet to be part of (set subnet)", spec.ip_range))
            }
            (Ok(_), None) => {}
            (Ok(r), Some(n)) if !n.contains(&r) => e.add("ip_range", format!("{r} is not inside subnet {n}")),
            (Ok(_), Some(_)) => {}
        }
    }
    match requested_vni(spec) {
        Err(why) => e.add(format!("options.{OPT_VXLANID_LIST}"), why),
        Ok(Some(_)) if !overlay => {
            e.add(format!("options.{OPT_VXLANID_LIST}"), "a VXLAN identifier is only for an overlay network")
        }
        Ok(_) => {}
    }
    e.finish(format!("network {:?}", spec.name))
}

/// Checks a new network `spec` against the networks of `state`: its
/// subnet may not overlap another network's (requested or allocated), its
/// requested VNI may not be another network's, and there is at most one
/// ingress network. (The allocator applies the same rules to networks
/// created behind this check's back: the older network keeps what it has.)
pub fn validate_network_in(state: &crate::state::State, spec: &NetworkSpec) -> Result<(), ValidationError> {
    let mut e = Errors::default();
    let subnet = spec.subnet.parse::<ipnet::IpNet>().ok().map(|n| n.trunc());
    let vni = requested_vni(spec).ok().flatten();
    for other in state.networks().filter(|n| n.spec.name != spec.name) {
        if let Some(mine) = subnet {
            let theirs = [Some(other.spec.subnet.as_str()), other.subnet.as_deref()];
            if let Some(t) = theirs.iter().flatten().filter_map(|t| t.parse::<ipnet::IpNet>().ok()).find(|t| {
                let t = t.trunc();
                t.contains(&mine.network()) || mine.contains(&t.network())
            }) {
                e.add("subnet", format!("{mine} overlaps subnet {t} of network {:?}", other.spec.name));
            }
        }
        if let Some(v) = vni {
            let taken = other.vni == Some(v) || requested_vni(&other.spec).ok().flatten() == Some(v);
            if taken {
                e.add(
                    format!("options.{OPT_VXLANID_LIST}"),
                    format!("VNI {v} is in use by network {:?}", other.spec.name),
                );
            }
        }
        if spec.ingress && other.spec.ingress {
            e.add("ingress", format!("network {:?} is already the ingress network", other.spec.name));
        }
    }
    e.finish(format!("network {:?}", spec.name))
}

/// Validates a volume spec.
pub fn validate_volume_spec(spec: &VolumeSpec) -> Result<(), ValidationError> {
    let mut e = Errors::default();
    if let Some(p) = object_name_problem(&spec.name) {
        e.add("name", p);
    }
    labels(&mut e, "labels", &spec.labels);
    e.finish(format!("volume {:?}", spec.name))
}

/// Largest secret or config, as in Swarm: 500 KiB.
pub const MAX_SECRET_BYTES: usize = 500 * 1024;

/// Validates a secret spec.
pub fn validate_secret_spec(spec: &SecretSpec) -> Result<(), ValidationError> {
    let mut e = Errors::default();
    if let Some(p) = object_name_problem(&spec.name) {
        e.add("name", p);
    }
    labels(&mut e, "labels", &spec.labels);
    if spec.data.0.len() > MAX_SECRET_BYTES {
        e.add("data", format!("{} bytes is above the limit of {MAX_SECRET_BYTES}", spec.data.0.len()));
    }
    e.finish(format!("secret {:?}", spec.name))
}

/// Validates a config spec.
pub fn validate_config_spec(spec: &ConfigSpec) -> Result<(), ValidationError> {
    let mut e = Errors::default();
    if let Some(p) = object_name_problem(&spec.name) {
        e.add("name", p);
    }
    labels(&mut e, "labels", &spec.labels);
    if spec.data.len() > MAX_SECRET_BYTES {
        e.add("data", format!("{} bytes is above the limit of {MAX_SECRET_BYTES}", spec.data.len()));
    }
    e.finish(format!("config {:?}", spec.name))
}

/// Validates the cluster settings.
pub fn validate_cluster_spec(spec: &ClusterSpec) -> Result<(), ValidationError> {
    let mut e = Errors::default();
    e.at_most("orchestration.task_history_limit", spec.orchestration.task_history_limit, MAX_TASK_HISTORY);
    let d = &spec.dispatcher;
    if d.heartbeat_period.is_negative() {
        e.duration("dispatcher.heartbeat_period", d.heartbeat_period);
    } else if d.heartbeat_period < MIN_HEARTBEAT_PERIOD {
        e.add(
            "dispatcher.heartbeat_period",
            format!("{} is below the minimum of {MIN_HEARTBEAT_PERIOD}", d.heartbeat_period),
        );
    } else {
        e.at_most("dispatcher.heartbeat_period", d.heartbeat_period, MAX_HEARTBEAT_PERIOD);
    }
    e.at_most("dispatcher.grace_periods", d.grace_periods, MAX_GRACE_PERIODS);
    raft(&mut e, &spec.raft);
    e.finish(format!("cluster {:?}", spec.name))
}

/// Validates raft settings on their own (a raft store's start-up settings),
/// with the same rules and field names (`raft.tick`, ...) as in the cluster
/// spec.
pub fn validate_raft_config(cfg: &RaftConfig) -> Result<(), ValidationError> {
    let mut e = Errors::default();
    raft(&mut e, cfg);
    e.finish("raft settings".into())
}

fn raft(e: &mut Errors, r: &RaftConfig) {
    if r.tick.is_negative() {
        e.duration("raft.tick", r.tick);
    } else if r.tick == SpecDuration::ZERO {
        e.add("raft.tick", "must be above zero");
    } else {
        e.at_most("raft.tick", r.tick, MAX_RAFT_TICK);
    }
    if r.heartbeat_tick == 0 {
        e.add("raft.heartbeat_tick", "must be at least 1");
    }
    if r.election_tick <= r.heartbeat_tick {
        e.add("raft.election_tick", "must be greater than raft.heartbeat_tick");
    } else {
        e.at_most("raft.election_tick", r.election_tick, MAX_ELECTION_TICKS);
    }
    e.at_most("raft.snapshot_interval", r.snapshot_interval, MAX_RAFT_LOG_ENTRIES);
    e.at_most("raft.log_entries_for_slow_followers", r.log_entries_for_slow_followers, MAX_RAFT_LOG_ENTRIES);
    e.at_most("raft.keep_old_snapshots", r.keep_old_snapshots, MAX_KEPT_SNAPSHOTS);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(f: impl FnOnce(&mut NetworkSpec)) -> NetworkSpec {
        let mut s = NetworkSpec { name: "net".into(), driver: "overlay".into(), ..Default::default() };
        f(&mut s);
        s
    }

    fn fields(spec: &NetworkSpec) -> Vec<String> {
        match validate_network_spec(spec) {
            Ok(()) => vec![],
            Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn overlay_network_specs() {
        assert!(fields(&overlay(|_| {})).is_empty());
        assert!(
            fields(&overlay(|s| {
                s.subnet = "10.1.0.0/24".into();
                s.gateway = "10.1.0.254".into();
                s.ip_range = "10.1.0.128/25".into();
                s.options.insert(OPT_VXLANID_LIST.into(), " 4100 ".into());
            }))
            .is_empty()
        );
        assert_eq!(
            fields(&overlay(|s| s.subnet = "10.1.0.0/31".into())),
            vec!["subnet: \"10.1.0.0/31\" is smaller than a /30 and leaves no address for tasks"]
        );
        // A bridge network may take a /31 and an IPv6 subnet: the runtime
        // allocates those.
        assert!(
            fields(&overlay(|s| {
                s.driver = "bridge".into();
                s.subnet = "fd00::/64".into();
            }))
            .is_empty()
        );
        assert_eq!(
            fields(&overlay(|s| {
                s.driver = "bridge".into();
                s.ingress = true;
            })),
            vec!["driver: the ingress network is an overlay network, not \"bridge\""]
        );
        assert_eq!(fields(&overlay(|s| s.gateway = "nope".into())), vec!["gateway: \"nope\" is not an IP address"]);
        assert_eq!(
            fields(&overlay(|s| {
                s.subnet = "10.1.0.0/24".into();
                s.gateway = "10.1.0.0".into();
            })),
            vec!["gateway: 10.1.0.0 is the network or broadcast address of subnet 10.1.0.0/24"]
        );
        assert_eq!(
            fields(&overlay(|s| s.ip_range = "10.1.0.0/28".into())),
            vec!["ip_range: \"10.1.0.0/28\" needs a subnet to be part of (set subnet)"]
        );
    }

    #[test]
    fn requested_vnis() {
        let with = |v: &str| {
            overlay(|s| {
                s.options.insert(OPT_VXLANID_LIST.into(), v.into());
            })
        };
        assert_eq!(requested_vni(&overlay(|_| {})), Ok(None));
        assert_eq!(requested_vni(&with("4097")), Ok(Some(4097)));
        assert_eq!(requested_vni(&with("1")), Ok(Some(1)));
        assert!(requested_vni(&with("0")).is_err());
        assert!(requested_vni(&with("x")).is_err());
        assert!(requested_vni(&with("1,2")).is_err());
        assert!(requested_vni(&with(&(MAX_VNI + 1).to_string())).is_err());
    }
}
