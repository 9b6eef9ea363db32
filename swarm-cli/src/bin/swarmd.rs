//! `swarmd`: runs one node of a networked swarm (manager or worker).
//!
//! ```text
//! swarmd init --state-dir DIR [node flags] [--heartbeat 5s] [--cert-expiry 2160h]
//!             [--external-ca http://HOST:PORT --external-ca-cert ROOT.pem]   (a CFSSL signer keeps the CA key)
//! swarmd join --token SWMTKN-1-... --state-dir DIR [node flags] MANAGER_ADDR
//! swarmd run  --state-dir DIR [node flags] [--force-new-cluster]   (restart a node set up before)
//!
//! node flags:
//!   --listen-addr HOST:PORT   node API (managers)          default 127.0.0.1:4242
//!   --raft-addr HOST:PORT     raft (managers)              default listen port + 1
//!   --advertise-addr IP       the IP others reach this node at (default: the listen IP)
//!   --hostname NAME           default: the host's name
//!   --runtime sim|docker|containerd                        default docker
//!   --cpus N --memory BYTES   capacity reported             default: the host's
//!   --raft-tick DURATION      default 100ms (election after 10 ticks)
//!   --allow-short-certs       certificate lifetimes under an hour (tests; every manager)
//!   --overlay                 run the overlay data plane (root; VXLAN underlay = the advertised IP)
//!   --force-new-cluster       run: this manager alone forms a new cluster from its log
//!                             (after losing the quorum for good; re-join the others)
//! ```
//!
//! It prints `swarmd: ready node=<id> role=<role> ...` once serving, and
//! stops cleanly on SIGTERM or SIGINT (containers keep running). See
//! docs/swarm-cli.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use swarm_cli::args::{ArgError, Args};
use swarm_cli::node::{DEFAULT_RAFT_TICK, NodeOptions, SwarmNode, host_resources, spec_with_heartbeat};
use swarm_core::model::Resources;
use swarm_core::runtime::Runtime;

type Error = Box<dyn std::error::Error>;

fn usage() -> &'static str {
    "usage: swarmd init|join|run --state-dir DIR [--listen-addr HOST:PORT] [--raft-addr HOST:PORT] \
     [--advertise-addr IP] [--hostname NAME] [--runtime sim|docker|containerd] [--cpus N] [--memory BYTES] \
     [--raft-tick DURATION] [--allow-short-certs] [--overlay]\n  init: [--heartbeat DURATION] [--cert-expiry DURATION] [--external-ca URL --external-ca-cert FILE]\n  join: --token TOKEN MANAGER_ADDR\n  run: [--force-new-cluster]"
}

fn duration(a: &mut Args, name: &str) -> Result<Option<Duration>, ArgError> {
    match a.value(name) {
        None => Ok(None),
        Some(v) => humantime::parse_duration(&v).map(Some).map_err(|e| ArgError::BadValue {
            flag: name.into(),
            value: v,
            reason: e.to_string(),
        }),
    }
}

async fn runtime(kind: &str, hostname: &str, state_dir: &std::path::Path) -> Result<Arc<dyn Runtime>, Error> {
    Ok(match kind {
        "sim" => Arc::new(swarm_core::sim::SimRuntime::new(hostname)),
        "docker" => Arc::new(swarm_runtime_docker::DockerRuntime::connect(Default::default())?),
        "containerd" => {
            let cfg = swarm_runtime_containerd::ContainerdConfig {
                state_dir: std::path::absolute(state_dir.join("containerd"))?,
                ..Default::default()
            };
            Arc::new(swarm_runtime_containerd::ContainerdRuntime::connect(cfg).await?)
        }
        other => return Err(format!("--runtime {other:?}: use sim, docker or containerd").into()),
    })
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

async fn run() -> Result<(), Error> {
    let mut a = Args::parse(std::env::args().skip(1), &["allow-short-certs", "force-new-cluster", "overlay"])?;
    let command = a.next_word().ok_or(usage())?;
    let state_dir = PathBuf::from(a.required("state-dir")?);
    let listen_addr: SocketAddr = a.parsed("listen-addr")?.unwrap_or_else(|| ([127, 0, 0, 1], 4242).into());
    let raft_addr: SocketAddr =
        a.parsed("raft-addr")?.unwrap_or_else(|| SocketAddr::new(listen_addr.ip(), listen_addr.port().wrapping_add(1)));
    let advertise_ip = a.parsed("advertise-addr")?;
    let hostname = a.value("hostname").unwrap_or_else(host_name);
    let kind = a.value("runtime").unwrap_or_else(|| "docker".into());
    let host = host_resources();
    let cpus: Option<f64> = a.parsed("cpus")?;
    let memory: Option<u64> = a.parsed("memory")?;
    let resources =
        Resources::new(cpus.map(|c| (c * 1e9) as u64).unwrap_or(host.nano_cpus), memory.unwrap_or(host.memory_bytes));
    let raft_tick = duration(&mut a, "raft-tick")?.unwrap_or(DEFAULT_RAFT_TICK);
    let heartbeat = duration(&mut a, "heartbeat")?;
    let cert_lifetime = duration(&mut a, "cert-expiry")?;
    let allow_short_certs = a.switch("allow-short-certs");
    let force_new_cluster = a.switch("force-new-cluster");
    let overlay = a.switch("overlay");
    let token = a.value("token");
    let external_ca = match (a.value("external-ca"), a.value("external-ca-cert")) {
        (Some(url), Some(path)) => {
            let cert_pem = std::fs::read_to_string(&path).map_err(|e| format!("--external-ca-cert {path}: {e}"))?;
            Some(swarm_security::castore::ExternalSignerConfig { url, cert_pem })
        }
        (None, None) => None,
        _ => return Err("--external-ca URL and --external-ca-cert FILE go together".into()),
    };
    let remote: Option<SocketAddr> = if command == "join" {
        let w = a.word("MANAGER_ADDR (host:port of a manager)")?;
        Some(w.parse().map_err(|e| format!("MANAGER_ADDR {w:?} is not host:port: {e}"))?)
    } else {
        None
    };
    a.finish()?;
    let opts = NodeOptions {
        state_dir: state_dir.clone(),
        listen_addr,
        raft_addr,
        advertise_ip,
        hostname: hostname.clone(),
        resources,
        runtime: runtime(&kind, &hostname, &state_dir).await?,
        raft_tick,
        cluster_spec: spec_with_heartbeat(heartbeat.unwrap_or(Duration::from_secs(5))),
        cert_lifetime,
        allow_short_certs,
        force_new_cluster,
        external_ca,
        overlay,
    };
    let node = match command.as_str() {
        "init" => {
            let (node, tokens) = SwarmNode::init(opts).await?;
            println!("swarmd: node {} is the first manager of cluster {}", node.node_id(), node.record().cluster_id);
            println!("worker token: {}", tokens.worker);
            println!("manager token: {}", tokens.manager);
            node
        }
        "join" => {
            let token = token.ok_or("join needs --token")?;
            let remote = remote.ok_or("join needs MANAGER_ADDR")?;
            SwarmNode::join(opts, remote, &token).await?
        }
        "run" => SwarmNode::resume(opts).await?,
        other => return Err(format!("unknown command {other:?}\n{}", usage()).into()),
    };
    match node.api_addr() {
        Some(api) => println!("swarmd: ready node={} role={} api={api}", node.node_id(), node.record().role),
        None => println!("swarmd: ready node={} role={}", node.node_id(), node.record().role),
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let removed = tokio::select! {
        _ = term.recv() => None,
        _ = tokio::signal::ctrl_c() => None,
        id = node.removed() => Some(id),
    };
    eprintln!("swarmd: stopping");
    node.shutdown().await;
    match removed {
        Some(id) => Err(format!(
            "node {id} was removed from the cluster (swarmctl node rm); join again with a token to come back"
        )
        .into()),
        None => Ok(()),
    }
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,raft=warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("swarmd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swarmd: {e}");
            ExitCode::FAILURE
        }
    }
}
