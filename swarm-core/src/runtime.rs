//! The [`Runtime`] trait: the worker side that runs containers.
//!
//! The agent drives a runtime through a task's life: [`Runtime::prepare`]
//! (image present, networks, volumes), [`Runtime::create`],
//! [`Runtime::start`], [`Runtime::wait`] for the exit,
//! [`Runtime::stop`] with a grace period (then kill), [`Runtime::remove`].
//! [`Runtime::inspect`] and [`Runtime::list`] (by label) let an agent that
//! restarted adopt or clean up its containers. This is SwarmKit's
//! executor/controller split (Prepare, Start, Wait, Shutdown, Terminate,
//! Remove) as one trait.
//!
//! Containers carry the project's labels ([`labels`]) so they can be found
//! again. Health checks are run by the agent through [`Runtime::probe`]: its
//! default runs command probes with [`Runtime::exec`] and TCP/HTTP probes
//! against the container's address; a runtime may override it.
//!
//! A task's life on any runtime, here [`SimRuntime`](crate::sim::SimRuntime):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::time::Duration;
//! use swarm_core::runtime::{ContainerConfig, ContainerState, Runtime};
//! use swarm_core::sim::SimRuntime;
//!
//! async fn run_once(rt: &dyn Runtime, cfg: &ContainerConfig) -> Result<(), swarm_core::runtime::RuntimeError> {
//!     rt.prepare(cfg).await?;
//!     let id = rt.create(cfg).await?;
//!     rt.start(&id).await?;
//!     assert_eq!(rt.inspect(&id).await?.state, ContainerState::Running);
//!     rt.stop(&id, Duration::from_secs(10)).await?; // SIGTERM, SIGKILL after 10 s
//!     rt.remove(&id).await
//! }
//! let mut cfg = ContainerConfig::default();
//! cfg.spec.image = "nginx:1.27".into();
//! run_once(&SimRuntime::new("node-1"), &cfg).await.unwrap();
//! # }
//! ```

use crate::id::{NodeId, ServiceId, TaskId};
use crate::model::*;
use async_trait::async_trait;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Label keys the runtimes put on every container they create for a task.
pub mod labels {
    /// Prefix of all the project's labels.
    pub const PREFIX: &str = "io.swarm-rs.";
    /// Marks a container as managed by this project (value "true").
    pub const MANAGED: &str = "io.swarm-rs.managed";
    /// The task id.
    pub const TASK_ID: &str = "io.swarm-rs.task.id";
    /// The task name.
    pub const TASK_NAME: &str = "io.swarm-rs.task.name";
    /// The service id.
    pub const SERVICE_ID: &str = "io.swarm-rs.service.id";
    /// The service name.
    pub const SERVICE_NAME: &str = "io.swarm-rs.service.name";
    /// The slot (replicated services).
    pub const SLOT: &str = "io.swarm-rs.task.slot";
    /// The node id.
    pub const NODE_ID: &str = "io.swarm-rs.node.id";
}

/// A secret or config resolved to bytes, with where it goes.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct FileMaterial {
    /// Secret or config name.
    pub name: String,
    /// Absolute path in the container.
    pub path: String,
    /// Content (redacted in Debug).
    pub data: SecretBytes,
    /// Owner uid ("" = 0).
    pub uid: String,
    /// Owner gid ("" = 0).
    pub gid: String,
    /// Mode (0 = 0o444).
    pub mode: u32,
}

/// Everything a runtime needs to create a task's container.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct ContainerConfig {
    /// Container name (the task name, e.g. `web.1.abc123`).
    pub name: String,
    /// The task.
    pub task_id: TaskId,
    /// Its service.
    pub service_id: ServiceId,
    /// Its service's name.
    pub service_name: String,
    /// Its slot.
    pub slot: Option<u64>,
    /// The node it runs on.
    pub node_id: NodeId,
    /// The container spec.
    pub spec: ContainerSpec,
    /// Limits to enforce.
    pub resources: ResourceRequirements,
    /// Networks to attach to (by name), with aliases (the service name is
    /// always an alias).
    pub networks: Vec<NetworkAttachmentConfig>,
    /// The task's places on overlay networks, allocated by the manager:
    /// the runtime attaches the container to each endpoint's bridge with
    /// exactly that address and MAC. A network listed here is not also in
    /// `networks`.
    pub endpoints: Vec<NetworkEndpoint>,
    /// Ports to publish on the host (host mode).
    pub host_ports: Vec<PortConfig>,
    /// Secrets to materialise as files (in memory only).
    pub secrets: Vec<FileMaterial>,
    /// Configs to materialise as files.
    pub configs: Vec<FileMaterial>,
    /// Labels to put on the container: the spec's plus the project's.
    pub labels: Labels,
}

/// A container's interface on an overlay network (see
/// [`ContainerConfig::endpoints`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NetworkEndpoint {
    /// The network's name.
    pub network: String,
    /// The host bridge to attach to
    /// ([`overlay_bridge_name`]).
    pub bridge: String,
    /// The network's VXLAN identifier.
    pub vni: u32,
    /// The network's subnet.
    pub subnet: ipnet::Ipv4Net,
    /// The container's address (in `subnet`).
    pub address: std::net::Ipv4Addr,
    /// The interface's MAC ([`overlay_mac`] of
    /// `address`).
    pub mac: [u8; 6],
    /// The default gateway through this network (the bridge's address on
    /// the node); `None` on internal networks.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// No route outside the network.
    pub internal: bool,
    /// Traffic between nodes is encrypted (the tunnel's overhead lowers
    /// the MTU: [`NetworkEndpoint::mtu`]).
    pub encrypted: bool,
    /// DNS names of the container on this network (the service name first).
    pub aliases: Vec<String>,
}

impl NetworkEndpoint {
    /// The MTU of the container's interface on this endpoint, given the
    /// runtime's MTU for overlay endpoints (`0`: the kernel's default, 1500
    /// less nothing): on encrypted networks [`ENCRYPTED_OVERHEAD`] lower
    /// (from a 1500-byte underlay: 1500 - 50 - 68 = 1382, what the tunnel
    /// carries whole).
    pub fn mtu(&self, overlay_mtu: u32) -> u32 {
        match (self.encrypted, overlay_mtu) {
            (false, m) => m,
            (true, 0) => 1500 - crate::model::VXLAN_OVERHEAD - crate::model::ENCRYPTED_OVERHEAD,
            (true, m) => m.saturating_sub(crate::model::ENCRYPTED_OVERHEAD),
        }
    }

    /// The endpoint of a task's attachment, if it is an overlay one with a
    /// valid address; `Err` names what is wrong.
    pub fn from_attachment(a: &NetworkAttachment, aliases: Vec<String>) -> Option<Result<Self, String>> {
        let o = a.overlay.as_ref()?;
        Some((|| {
            let subnet: ipnet::Ipv4Net =
                o.subnet.parse().map_err(|e| format!("network {:?}: subnet {:?}: {e}", a.network, o.subnet))?;
            let first = a.addresses.first().ok_or_else(|| format!("network {:?}: no address allocated", a.network))?;
            let address: std::net::Ipv4Addr =
                first.parse().map_err(|e| format!("network {:?}: address {first:?}: {e}", a.network))?;
            if !subnet.contains(&address) {
                return Err(format!("network {:?}: address {address} is not in {subnet}", a.network));
            }
            let gateway = if o.internal || o.gateway.is_empty() {
                None
            } else {
                Some(o.gateway.parse().map_err(|e| format!("network {:?}: gateway {:?}: {e}", a.network, o.gateway))?)
            };
            Ok(NetworkEndpoint {
                network: a.network.clone(),
                bridge: crate::model::overlay_bridge_name(o.vni),
                vni: o.vni,
                subnet,
                address,
                mac: crate::model::overlay_mac(address),
                gateway,
                internal: o.internal,
                encrypted: o.encrypted,
                aliases,
            })
        })())
    }
}

impl ContainerConfig {
    /// The project's labels for a task on a node.
    pub fn task_labels(task: &Task, node: &NodeId) -> Labels {
        let mut l = Labels::new();
        l.insert(labels::MANAGED.into(), "true".into());
        l.insert(labels::TASK_ID.into(), task.id.to_string());
        l.insert(labels::TASK_NAME.into(), task.name());
        l.insert(labels::SERVICE_ID.into(), task.service_id.to_string());
        l.insert(labels::SERVICE_NAME.into(), task.service_name.clone());
        if let Some(s) = task.slot {
            l.insert(labels::SLOT.into(), s.to_string());
        }
        l.insert(labels::NODE_ID.into(), node.to_string());
        l
    }
}

/// A container's life-cycle state.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited (see the exit code).
    Exited,
    /// Gone or in a state the runtime cannot use.
    Unknown,
}

/// How a container ended.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ExitStatus {
    /// Exit code (137 after a kill).
    pub code: i32,
    /// Runtime-level error, if any (e.g. "OOM killed").
    pub error: Option<String>,
}

/// What [`Runtime::inspect`] reports.
#[derive(Clone, PartialEq, Debug)]
pub struct ContainerStatus {
    /// Container id.
    pub id: String,
    /// State.
    pub state: ContainerState,
    /// Exit code once exited.
    pub exit_code: Option<i32>,
    /// Error text from the runtime.
    pub error: Option<String>,
    /// Addresses of the container (first = primary).
    pub addresses: Vec<IpAddr>,
    /// Labels.
    pub labels: Labels,
    /// Host ports actually published.
    pub host_ports: Vec<PortConfig>,
}

/// A container found by [`Runtime::list`].
#[derive(Clone, PartialEq, Debug)]
pub struct ContainerSummary {
    /// Container id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// State.
    pub state: ContainerState,
}

/// Resource usage of a container.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct ContainerStats {
    /// CPU use in percent of one CPU (may exceed 100 on several CPUs).
    pub cpu_percent: f64,
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Memory limit, bytes (0 = none).
    pub memory_limit_bytes: u64,
}

/// Output of a command run in a container.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ExecResult {
    /// Exit code.
    pub exit_code: i32,
    /// Combined stdout and stderr (possibly truncated).
    pub output: String,
}

/// Outcome of one health probe.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ProbeResult {
    /// The probe passed.
    Healthy,
    /// The probe failed, with why.
    Unhealthy(String),
}

/// Why a runtime call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuntimeError {
    /// The image is not present and cannot be pulled.
    #[error("image {image:?} not found: {reason}")]
    ImageNotFound {
        /// The image.
        image: String,
        /// Detail.
        reason: String,
    },
    /// No such container.
    #[error("container {0} not found")]
    NotFound(String),
    /// The container could not start.
    #[error("container {id} failed to start: {reason}")]
    StartFailed {
        /// Container id.
        id: String,
        /// Detail.
        reason: String,
    },
    /// The config cannot be run by this runtime.
    #[error("invalid container config: {0}")]
    InvalidConfig(String),
    /// The engine is unreachable (or the node is down).
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    /// The call took too long.
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// Operation.
        op: &'static str,
        /// Limit.
        after: Duration,
    },
    /// This runtime does not do that (yet); the message says what instead.
    #[error("{runtime} does not support {op}: {detail}")]
    Unsupported {
        /// Runtime name.
        runtime: &'static str,
        /// Operation.
        op: &'static str,
        /// Detail.
        detail: String,
    },
    /// Any other engine error.
    #[error("engine error: {0}")]
    Engine(String),
}

/// A line of container output.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LogLine {
    /// "stdout" or "stderr".
    pub stream: &'static str,
    /// The text, without the newline.
    pub line: String,
}

/// The worker-side container runtime. See the [module docs](self).
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// A short name ("docker", "containerd", "sim").
    fn name(&self) -> &str;

    /// Makes sure what the container needs exists: the image (pulling it
    /// when a registry is reachable), its networks and named volumes.
    async fn prepare(&self, config: &ContainerConfig) -> Result<(), RuntimeError>;

    /// Creates the container; returns its id.
    async fn create(&self, config: &ContainerConfig) -> Result<String, RuntimeError>;

    /// Starts a created container.
    async fn start(&self, id: &str) -> Result<(), RuntimeError>;

    /// Waits until the container exits.
    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError>;

    /// Sends the stop signal, waits up to `grace`, then kills. Returns once
    /// the container has exited.
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;

    /// Kills the container at once (SIGKILL).
    async fn kill(&self, id: &str) -> Result<(), RuntimeError>;

    /// Removes the container (and its anonymous volumes).
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;

    /// Observed state of a container.
    async fn inspect(&self, id: &str) -> Result<ContainerStatus, RuntimeError>;

    /// Containers whose labels include every pair of `selector`.
    async fn list(&self, selector: &Labels) -> Result<Vec<ContainerSummary>, RuntimeError>;

    /// The last `tail` lines of output (all with `None`).
    async fn logs(&self, id: &str, tail: Option<usize>) -> Result<Vec<LogLine>, RuntimeError>;

    /// Current resource usage.
    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError>;

    /// Runs a command in a running container.
    async fn exec(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecResult, RuntimeError>;

    /// Creates a network for the cluster's Network object (idempotent).
    async fn ensure_network(&self, spec: &NetworkSpec) -> Result<(), RuntimeError>;

    /// Removes a network (idempotent).
    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError>;

    /// Creates a named volume (idempotent).
    async fn ensure_volume(&self, spec: &VolumeSpec) -> Result<(), RuntimeError>;

    /// Removes a named volume (idempotent).
    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError>;

    /// Runs one health probe. The default runs command probes through
    /// [`Runtime::exec`] and TCP/HTTP probes against the container's first
    /// address from [`Runtime::inspect`].
    async fn probe(&self, id: &str, probe: &HealthProbe, timeout: Duration) -> ProbeResult {
        default_probe(self, id, probe, timeout).await
    }
}

/// The default health probe: exec for commands, a TCP connect or an HTTP
/// GET against the container's first address for the others.
pub async fn default_probe<R: Runtime + ?Sized>(
    rt: &R,
    id: &str,
    probe: &HealthProbe,
    timeout: Duration,
) -> ProbeResult {
    match probe {
        HealthProbe::Command(cmd) => match rt.exec(id, cmd, timeout).await {
            Ok(r) if r.exit_code == 0 => ProbeResult::Healthy,
            Ok(r) => ProbeResult::Unhealthy(format!("command exited {}: {}", r.exit_code, r.output.trim())),
            Err(e) => ProbeResult::Unhealthy(e.to_string()),
        },
        HealthProbe::Tcp { port } | HealthProbe::Http { port, .. } => {
            let addr = match rt.inspect(id).await {
                Ok(s) => match s.addresses.first() {
                    Some(a) => SocketAddr::new(*a, *port),
                    None => return ProbeResult::Unhealthy("the container has no address".into()),
                },
                Err(e) => return ProbeResult::Unhealthy(e.to_string()),
            };
            let path = match probe {
                HealthProbe::Http { path, .. } => Some(path.as_str()),
                _ => None,
            };
            match tokio::time::timeout(timeout, probe_addr(addr, path)).await {
                Ok(r) => r,
                Err(_) => ProbeResult::Unhealthy(format!("probe of {addr} timed out after {timeout:?}")),
            }
        }
    }
}

/// TCP connect to `addr`; with `path`, also an HTTP/1.0 GET that must answer
/// 2xx or 3xx. Without the crate's `probes` feature (tokio's network
/// features) every such probe is unhealthy and says why.
#[cfg(not(feature = "probes"))]
pub async fn probe_addr(addr: SocketAddr, _path: Option<&str>) -> ProbeResult {
    ProbeResult::Unhealthy(format!(
        "cannot probe {addr}: TCP and HTTP probes need swarm-core's \"probes\" feature (on by default)"
    ))
}

/// TCP connect to `addr`; with `path`, also an HTTP/1.0 GET that must answer
/// 2xx or 3xx.
#[cfg(feature = "probes")]
pub async fn probe_addr(addr: SocketAddr, path: Option<&str>) -> ProbeResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return ProbeResult::Unhealthy(format!("connect {addr}: {e}")),
    };
    let Some(path) = path else { return ProbeResult::Healthy };
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: swarm-health\r\n\r\n");
    if let Err(e) = stream.write_all(req.as_bytes()).await {
        return ProbeResult::Unhealthy(format!("write to {addr}: {e}"));
    }
    let mut buf = vec![0u8; 256];
    let mut n = 0;
    while n < 16 {
        match stream.read(&mut buf[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return ProbeResult::Unhealthy(format!("read from {addr}: {e}")),
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(c) if (200..400).contains(&c) => ProbeResult::Healthy,
        Some(c) => ProbeResult::Unhealthy(format!("GET {path} answered {c}")),
        None => ProbeResult::Unhealthy(format!("GET {path}: not an HTTP answer")),
    }
}

#[cfg(all(test, feature = "probes"))]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback HTTP server answering every request with `status`.
    async fn http_server(status: u16) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(format!("HTTP/1.0 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn tcp_and_http_probes_against_real_sockets() {
        let ok = http_server(200).await;
        let bad = http_server(503).await;
        assert_eq!(probe_addr(ok, None).await, ProbeResult::Healthy);
        assert_eq!(probe_addr(ok, Some("/health")).await, ProbeResult::Healthy);
        match probe_addr(bad, Some("/health")).await {
            ProbeResult::Unhealthy(why) => assert!(why.contains("503"), "{why}"),
            other => panic!("expected unhealthy, got {other:?}"),
        }
        // Nothing listens on a port we just released.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        match probe_addr(closed, None).await {
            ProbeResult::Unhealthy(why) => assert!(why.contains("connect"), "{why}"),
            other => panic!("expected unhealthy, got {other:?}"),
        }
    }
}
