//! [`ContainerdRuntime`]: the [`Runtime`] trait on containerd's gRPC API.
//!
//! One task is one containerd container plus its task (the process), in a
//! containerd namespace of the project's own. `create` resolves the image
//! in the store (unpacking it if needed), allocates an address, sets up the
//! network namespace, writes secrets and configs to a tmpfs, prepares an
//! overlayfs snapshot on the image's top layer, creates the container with
//! a generated OCI spec and creates its task with stdout and stderr going
//! to log files. `start` starts the task; `wait` is containerd's
//! `tasks.Wait`; `stop` sends the stop signal, waits the grace period, then
//! SIGKILLs; `remove` undoes everything `create` did. What the runtime needs
//! to find a task's pieces again (address, network names, stop signal) is
//! kept in the container's labels, so an agent that restarted can adopt or
//! remove its containers from [`Runtime::list`] alone.

use crate::engine::{Engine, is_not_found, status_err};
use crate::image::{ensure_unpacked, image_exists, resolve};
use crate::metrics::{self, Sample};
use crate::net::{
    BridgeConfig, IpAllocator, MAX_ENDPOINTS, TaskNet, TaskNetPlan, ensure_bridge, ensure_endpoint_bridge,
    remove_endpoint_bridges, validate_endpoint,
};
use crate::pull::{PullOptions, pull};
use crate::spec::{
    Accounts, PROCESS_TYPE_URL, SPEC_TYPE_URL, SpecContext, build_spec, parse_signal, user_needs_accounts, user_string,
};
use crate::{files, ports, token};
use async_trait::async_trait;
use containerd_client::events::TaskExit;
use containerd_client::services::v1::container::Runtime as ContainerRuntimeInfo;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateNamespaceRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest, GetContainerRequest, GetRequest, KillRequest,
    ListContainersRequest, ListTasksRequest, MetricsRequest, Namespace, StartRequest, SubscribeRequest, WaitRequest,
};
use containerd_client::types::v1::Status as TaskStatus;
use futures_util::{Stream, StreamExt};
use prost::Message;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarm_core::model::{Labels, MountKind, NetworkSpec, PortConfig, VolumeSpec};
use swarm_core::runtime::*;
use tracing::{debug, info, warn};

/// Label keys this runtime adds to its containers (besides the project's
/// [`labels`]).
pub mod ctd_labels {
    /// The task's IPv4 address on the node bridge (absent when the task
    /// has only overlay endpoints).
    pub const ADDRESS: &str = "io.swarm-rs.containerd.address";
    /// The task's overlay endpoints, in interface order:
    /// `<address>@<bridge>,...`.
    pub const ENDPOINTS: &str = "io.swarm-rs.containerd.endpoints";
    /// The token naming the task's network namespace and veth.
    pub const TOKEN: &str = "io.swarm-rs.containerd.token";
    /// The stop signal number.
    pub const STOP_SIGNAL: &str = "io.swarm-rs.containerd.stop-signal";
    /// The container name from the config.
    pub const NAME: &str = "io.swarm-rs.containerd.name";
    /// Host-mode published ports, `proto:target:published,...`.
    pub const HOST_PORTS: &str = "io.swarm-rs.containerd.host-ports";
}

const SIGKILL: u32 = 9;
const SIGTERM: u32 = 15;
/// How long a SIGKILLed task may take to be reported gone.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Most bytes of exec output returned.
const EXEC_OUTPUT_MAX: usize = 64 * 1024;

/// Where and how the runtime talks to containerd.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerdConfig {
    /// containerd's socket.
    pub address: PathBuf,
    /// The containerd namespace (never Docker's `moby`).
    pub namespace: String,
    /// Snapshotter for image layers and rootfs.
    pub snapshotter: String,
    /// containerd runtime (shim) name.
    pub runtime: String,
    /// Host directory for logs, volumes and the secret tmpfs mounts.
    pub state_dir: PathBuf,
    /// The node bridge.
    pub bridge: BridgeConfig,
    /// RLIMIT_NOFILE of task processes (default
    /// [`default_nofile`](crate::spec::default_nofile)).
    pub nofile: u64,
    /// Pull images missing from the store from their registry
    /// ([`pull`](crate::pull); default true).
    pub pull: bool,
    /// Credentials for pulls (by registry as references name it:
    /// `docker.io`, `registry.example.com:5000`) and extra TLS roots.
    pub registry: PullOptions,
    /// The network namespace (a path, e.g. `/run/netns/<name>`) holding the
    /// bridges, the host ends of the tasks' veths and the port rules;
    /// `None`: the runtime's own. Tests run hosts as namespaces.
    pub host_netns: Option<PathBuf>,
    /// MTU of tasks' interfaces on overlay endpoints (both veth ends):
    /// VXLAN adds 50 bytes, so 1450 under a 1500 byte underlay; 0 leaves
    /// the kernel's default (1500). Default 1450.
    pub overlay_mtu: u32,
}

/// Default [`ContainerdConfig::overlay_mtu`]: 1500 minus VXLAN's 50 bytes.
pub const DEFAULT_OVERLAY_MTU: u32 = 1450;

impl ContainerdConfig {
    /// Defaults for `namespace`: [`ContainerdConfig::default_address`],
    /// overlayfs, runc v2, `/var/lib/swarm-rs-containerd/<namespace>`, the
    /// default bridge.
    pub fn new(namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        ContainerdConfig {
            address: Self::default_address(),
            state_dir: PathBuf::from("/var/lib/swarm-rs-containerd").join(&namespace),
            namespace,
            snapshotter: "overlayfs".into(),
            runtime: "io.containerd.runc.v2".into(),
            bridge: BridgeConfig::default(),
            nofile: crate::spec::default_nofile(),
            pull: true,
            registry: PullOptions::default(),
            host_netns: None,
            overlay_mtu: DEFAULT_OVERLAY_MTU,
        }
    }

    /// `CONTAINERD_ADDRESS` if set, else `/run/containerd/containerd.sock`
    /// if it exists, else Docker's `/run/docker/containerd/containerd.sock`.
    pub fn default_address() -> PathBuf {
        if let Some(a) = std::env::var_os("CONTAINERD_ADDRESS").filter(|a| !a.is_empty()) {
            let a = PathBuf::from(a);
            return a.strip_prefix("unix://").map(Path::to_path_buf).unwrap_or(a);
        }
        let plain = PathBuf::from("/run/containerd/containerd.sock");
        if plain.exists() { plain } else { PathBuf::from("/run/docker/containerd/containerd.sock") }
    }
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        Self::new("swarm-rs")
    }
}

/// A task's exit as reported by containerd's events service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitEvent {
    /// Container id.
    pub id: String,
    /// Exit status.
    pub code: i32,
}

/// The containerd runtime. See the [module docs](self). Cheap to clone
/// (one gRPC channel, shared state).
#[derive(Debug, Clone)]
pub struct ContainerdRuntime {
    engine: Engine,
    cfg: ContainerdConfig,
    alloc: IpAllocator,
    cpu: Arc<Mutex<HashMap<String, (u64, Instant)>>>,
    /// One gate per image being pulled, so concurrent prepares of the
    /// same image (a service's replicas) pull it once.
    pulls: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

fn engine_err(what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Engine(what.to_string())
}

/// A containerd container id for a task name: its `[A-Za-z0-9._-]` with
/// other characters as `-`, at most 60 of them, then `-<token>`.
pub fn container_id(name: &str, token: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' { c } else { '-' })
        .take(60)
        .collect();
    s = s.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string();
    if s.is_empty() {
        s = "task".into();
    }
    format!("{s}-{token}")
}

/// The log driver the shim runs per task (containerd's `binary://` I/O):
/// fd 3 is the task's stdout, fd 4 its stderr, closing fd 5 tells the shim
/// the logger is ready; the arguments are `d <task state dir>`. Once both
/// streams are at their end (every writer gone) and copied, it creates
/// `logs.done`, which `wait` waits for so that the logs are whole when it
/// returns (the exit event does not wait for the logger).
const LOGGER_SCRIPT: &str = "#!/bin/sh
# swarm-runtime-containerd log driver (written by the runtime).
dir=\"$2\"
cat <&3 >>\"$dir/stdout.log\" 5>&- &
cat <&4 >>\"$dir/stderr.log\" 5>&- &
exec 3<&- 4<&- 5>&-
wait
: >\"$dir/logs.done\"
";

/// How long `wait` waits for the logger to copy the last output of a task
/// that exited (its streams end when the task's last process is gone).
const LOGS_DRAIN: Duration = Duration::from_secs(2);

async fn install_logger(path: &Path) -> Result<(), RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |e: std::io::Error| engine_err(format!("cannot install the log driver {}: {e}", path.display()));
    if tokio::fs::read(path).await.ok().as_deref() != Some(LOGGER_SCRIPT.as_bytes()) {
        let tmp = path.with_extension(format!("tmp{}", token()));
        tokio::fs::write(&tmp, LOGGER_SCRIPT).await.map_err(io)?;
        tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).await.map_err(io)?;
        tokio::fs::rename(&tmp, path).await.map_err(io)?;
    }
    Ok(())
}

/// The directories of a rootfs's mounts, topmost first: an overlay's
/// upperdir then lowerdirs, or a bind mount's source.
fn rootfs_dirs(mounts: &[containerd_client::types::Mount]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for m in mounts {
        match m.r#type.as_str() {
            "overlay" => {
                let opt = |k: &str| m.options.iter().find_map(|o| o.strip_prefix(k)).map(str::to_string);
                if let Some(u) = opt("upperdir=") {
                    dirs.push(PathBuf::from(u));
                }
                if let Some(l) = opt("lowerdir=") {
                    dirs.extend(l.split(':').map(PathBuf::from));
                }
            }
            "bind" | "rbind" => dirs.push(PathBuf::from(&m.source)),
            _ => {}
        }
    }
    dirs
}

/// `/etc/passwd` and `/etc/group` as the rootfs shows them (the topmost
/// layer that has each file).
async fn read_accounts(mounts: &[containerd_client::types::Mount]) -> Accounts {
    let dirs = rootfs_dirs(mounts);
    let find = |rel: &'static str| {
        let dirs = dirs.clone();
        async move {
            for d in dirs {
                if let Ok(text) = tokio::fs::read_to_string(d.join(rel)).await {
                    return Some(text);
                }
            }
            None
        }
    };
    Accounts { passwd: find("etc/passwd").await, group: find("etc/group").await }
}

fn map_status(s: i32) -> ContainerState {
    match TaskStatus::try_from(s) {
        Ok(TaskStatus::Created) => ContainerState::Created,
        Ok(TaskStatus::Running) | Ok(TaskStatus::Paused) | Ok(TaskStatus::Pausing) => ContainerState::Running,
        Ok(TaskStatus::Stopped) => ContainerState::Exited,
        _ => ContainerState::Unknown,
    }
}

impl ContainerdRuntime {
    /// Connects, checks containerd answers, creates the namespace, the
    /// bridge and the state directory.
    pub async fn connect(cfg: ContainerdConfig) -> Result<Self, RuntimeError> {
        cfg.bridge.validate()?;
        let dir = cfg.state_dir.to_string_lossy();
        // The path goes into `binary://` and `file://` URLs for the shim.
        if !cfg.state_dir.is_absolute() || !dir.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b)) {
            return Err(RuntimeError::InvalidConfig(format!(
                "state directory {dir:?} must be an absolute path of [A-Za-z0-9/._-]"
            )));
        }
        let engine = Engine::connect(&cfg.address, &cfg.namespace).await?;
        let v = engine.version().version(()).await.map_err(|s| {
            RuntimeError::Unavailable(format!(
                "containerd at {} does not answer: {}",
                cfg.address.display(),
                s.message()
            ))
        })?;
        info!(version = %v.get_ref().version, address = %cfg.address.display(), namespace = %cfg.namespace, "connected to containerd");
        let ns = Namespace { name: cfg.namespace.clone(), labels: HashMap::new() };
        // containerd publishes a namespace event, which needs the header too.
        match engine.namespaces().create(engine.req(CreateNamespaceRequest { namespace: Some(ns) })).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => return Err(status_err(&format!("namespaces.create {}", cfg.namespace), "", s)),
        }
        if let Some(ns) = &cfg.host_netns {
            if !ns.exists() {
                return Err(RuntimeError::InvalidConfig(format!(
                    "host network namespace {} does not exist",
                    ns.display()
                )));
            }
        }
        ensure_bridge(&cfg.bridge, cfg.host_netns.as_deref()).await?;
        for d in [cfg.state_dir.join("containers"), cfg.state_dir.join("volumes"), cfg.state_dir.join("bin")] {
            tokio::fs::create_dir_all(&d)
                .await
                .map_err(|e| engine_err(format!("cannot create state directory {}: {e}", d.display())))?;
        }
        install_logger(&cfg.state_dir.join("bin").join("swarm-ctd-logger")).await?;
        Ok(ContainerdRuntime {
            alloc: IpAllocator::new(cfg.bridge.clone()),
            engine,
            cfg,
            cpu: Arc::new(Mutex::new(HashMap::new())),
            pulls: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ContainerdConfig {
        &self.cfg
    }

    /// The containerd namespace.
    pub fn namespace(&self) -> &str {
        &self.cfg.namespace
    }

    fn host_netns(&self) -> Option<&Path> {
        self.cfg.host_netns.as_deref()
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("containers").join(id)
    }

    fn logger_path(&self) -> PathBuf {
        self.cfg.state_dir.join("bin").join("swarm-ctd-logger")
    }

    fn log_path(&self, id: &str, stream: &str) -> PathBuf {
        self.dir(id).join(format!("{stream}.log"))
    }

    fn volume_dir(&self, name: &str) -> PathBuf {
        self.cfg.state_dir.join("volumes").join(name)
    }

    async fn get_container(&self, id: &str) -> Result<Container, RuntimeError> {
        let r = self.engine.containers().get(self.engine.req(GetContainerRequest { id: id.into() })).await;
        r.map_err(|s| status_err(&format!("containers.get {id}"), id, s))?
            .into_inner()
            .container
            .ok_or_else(|| RuntimeError::NotFound(id.into()))
    }

    /// The task's process, `None` when the container has no task.
    async fn get_task(&self, id: &str) -> Result<Option<containerd_client::types::v1::Process>, RuntimeError> {
        let r = self
            .engine
            .tasks()
            .get(self.engine.req(GetRequest { container_id: id.into(), exec_id: String::new() }))
            .await;
        match r {
            Ok(r) => Ok(r.into_inner().process),
            Err(s) if is_not_found(&s) => Ok(None),
            Err(s) => Err(status_err(&format!("tasks.get {id}"), "", s)),
        }
    }

    async fn send_signal(&self, id: &str, signal: u32, all: bool) -> Result<(), RuntimeError> {
        let req = KillRequest { container_id: id.into(), exec_id: String::new(), signal, all };
        match self.engine.tasks().kill(self.engine.req(req)).await {
            Ok(_) => Ok(()),
            // The process is already gone: nothing to signal.
            Err(s) if is_not_found(&s) => Ok(()),
            Err(s) => Err(status_err(&format!("tasks.kill {id} signal {signal}"), id, s)),
        }
    }

    async fn wait_exit(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        let req = WaitRequest { container_id: id.into(), exec_id: String::new() };
        let r = self.engine.tasks().wait(self.engine.req(req)).await;
        let w = r.map_err(|s| status_err(&format!("tasks.wait {id}"), id, s))?.into_inner();
        let code = w.exit_status as i32;
        self.logs_drained(id).await;
        Ok(ExitStatus { code, error: self.exit_error(id, code) })
    }

    /// Waits (at most [`LOGS_DRAIN`]) until the logger of an exited task
    /// has copied everything; past that, logs may miss the last lines
    /// (said in the log, not an error: the exit status is what was asked).
    async fn logs_drained(&self, id: &str) {
        let done = self.dir(id).join("logs.done");
        let deadline = Instant::now() + LOGS_DRAIN;
        while !tokio::fs::try_exists(&done).await.unwrap_or(true) {
            if Instant::now() >= deadline {
                warn!(id, "the log driver has not finished {LOGS_DRAIN:?} after the exit; logs may be incomplete");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The task's cgroup path relative to a hierarchy root.
    fn cgroup_path(&self, id: &str) -> String {
        format!("/swarm-rs-containerd/{}/{id}", self.cfg.namespace)
    }

    /// "OOM killed" when the task's memory cgroup (still there until the
    /// task is deleted) counted an OOM kill.
    fn exit_error(&self, id: &str, code: i32) -> Option<String> {
        if code != 137 {
            return None;
        }
        let rel = self.cgroup_path(id);
        let v1 = std::fs::read_to_string(format!("/sys/fs/cgroup/memory{rel}/memory.oom_control"));
        let v2 = || std::fs::read_to_string(format!("/sys/fs/cgroup{rel}/memory.events"));
        let text = v1.or_else(|_| v2()).ok()?;
        let kills = text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse::<u64>().ok());
        (kills.unwrap_or(0) > 0).then(|| "OOM killed (memory limit reached)".to_string())
    }

    /// Addresses recorded in the labels of this namespace's containers.
    async fn addresses_in_use(&self) -> Result<BTreeSet<Ipv4Addr>, RuntimeError> {
        let r = self.engine.containers().list(self.engine.req(ListContainersRequest { filters: vec![] })).await;
        let list = r.map_err(|s| status_err("containers.list", "", s))?.into_inner().containers;
        Ok(list.iter().filter_map(|c| c.labels.get(ctd_labels::ADDRESS)?.parse().ok()).collect())
    }

    /// Undoes whatever exists of a task (best effort, idempotent); returns
    /// the first error other than "not found".
    async fn teardown(
        &self,
        id: &str,
        token: Option<&str>,
        ip: Option<Ipv4Addr>,
        has_ports: bool,
        ifaces: usize,
    ) -> Result<(), RuntimeError> {
        let mut first: Option<RuntimeError> = None;
        let mut note = |e: RuntimeError| {
            warn!(id, error = %e, "teardown step failed");
            first.get_or_insert(e);
        };
        match self.get_task(id).await {
            Ok(Some(p)) if map_status(p.status) != ContainerState::Exited => {
                if let Err(e) = self.send_signal(id, SIGKILL, true).await {
                    note(e);
                }
                if tokio::time::timeout(KILL_WAIT, self.wait_exit(id)).await.is_err() {
                    note(RuntimeError::Timeout { op: "waiting for a killed task", after: KILL_WAIT });
                }
            }
            Ok(_) => {}
            Err(e) => note(e),
        }
        let tasks = self.engine.tasks().delete(self.engine.req(DeleteTaskRequest { container_id: id.into() })).await;
        if let Err(s) = tasks.map(|_| ()).or_else(|s| if is_not_found(&s) { Ok(()) } else { Err(s) }) {
            note(status_err(&format!("tasks.delete {id}"), "", s));
        }
        if let Some(t) = token {
            if has_ports {
                ports::unpublish(self.host_netns(), t).await;
            }
            TaskNet::for_token(t).teardown(ifaces, self.host_netns()).await;
        }
        let dir = self.dir(id);
        files::unmount(&dir.join("files")).await;
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                note(engine_err(format!("cannot remove {}: {e}", dir.display())));
            }
        }
        if let Some(ip) = ip {
            self.alloc.release(ip);
        }
        self.cpu.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        // The container record goes last: while it exists the task is not
        // fully removed (its network namespace, veths, port rules, files),
        // so whoever sees it gone (an agent, a test's cleanup) knows nothing
        // of the task is left, and a teardown cut short is redone by the
        // next `remove` of the container still listed.
        let c = self.engine.containers().delete(self.engine.req(DeleteContainerRequest { id: id.into() })).await;
        if let Err(s) = c.map(|_| ()).or_else(|s| if is_not_found(&s) { Ok(()) } else { Err(s) }) {
            note(status_err(&format!("containers.delete {id}"), "", s));
        }
        let snap = RemoveSnapshotRequest { snapshotter: self.cfg.snapshotter.clone(), key: id.into() };
        let r = self.engine.snapshots().remove(self.engine.req(snap)).await;
        if let Err(s) = r.map(|_| ()).or_else(|s| if is_not_found(&s) { Ok(()) } else { Err(s) }) {
            note(status_err(&format!("snapshots.remove {id}"), "", s));
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn create_parts(
        &self,
        config: &ContainerConfig,
        id: &str,
        token: &str,
        ip: Option<Ipv4Addr>,
        stop_signal: u32,
        host_ports: &[PortConfig],
    ) -> Result<(), RuntimeError> {
        let img = resolve(&self.engine, &config.spec.image).await?;
        ensure_unpacked(&self.engine, &self.cfg.snapshotter, &img).await?;
        // The state directory comes first: its existence marks the task's
        // host-side pieces, so `remove_orphans` finds them after a crash.
        let dir = self.dir(id);
        let io = |e: std::io::Error| engine_err(format!("preparing {}: {e}", dir.display()));
        tokio::fs::create_dir_all(&dir).await.map_err(io)?;
        for ep in &config.endpoints {
            ensure_endpoint_bridge(ep, self.host_netns()).await?;
        }
        let plan = TaskNetPlan::new(&config.endpoints, self.cfg.overlay_mtu, ip.map(|a| (&self.cfg.bridge, a)));
        let primary = plan.ifaces.first().cloned().ok_or_else(|| engine_err(format!("task {id} has no interface")))?;
        let net = TaskNet::for_token(token);
        net.setup(&plan, self.host_netns()).await?;
        // Published ports reach the first interface; on an overlay bridge
        // only they are let through, so the overlay plane's isolation holds.
        let forward = if config.endpoints.is_empty() { ports::Forward::WholeBridge } else { ports::Forward::TaskPorts };
        ports::publish(self.host_netns(), forward, &primary.bridge, token, primary.address, host_ports).await?;
        for s in ["stdout", "stderr"] {
            tokio::fs::write(self.log_path(id, s), b"").await.map_err(io)?;
        }
        match tokio::fs::remove_file(dir.join("logs.done")).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
        let materials: Vec<&FileMaterial> = config.secrets.iter().chain(config.configs.iter()).collect();
        let file_mounts = files::materialize(&dir.join("files"), &materials).await?;
        let mut volume_sources = Vec::new();
        for (i, m) in config.spec.mounts.iter().enumerate() {
            if m.kind != MountKind::Volume {
                continue;
            }
            let d =
                if m.source.is_empty() { dir.join("volumes").join(i.to_string()) } else { self.volume_dir(&m.source) };
            tokio::fs::create_dir_all(&d).await.map_err(io)?;
            volume_sources.push(d.display().to_string());
        }
        let host = crate::spec::hostname(config, id);
        let hosts = dir.join("hosts");
        tokio::fs::write(
            &hosts,
            format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n{}\t{host}\n", primary.address),
        )
        .await
        .map_err(io)?;
        // On overlay networks: the node's DNS server of the first one.
        let resolv = match crate::spec::resolv_conf(&config.endpoints) {
            Some(text) => {
                let path = dir.join("resolv.conf");
                tokio::fs::write(&path, text).await.map_err(io)?;
                Some(path.display().to_string())
            }
            None => None,
        };
        // The rootfs snapshot, labelled as a GC root so the collector
        // cannot take it before the container record references it (an
        // earlier order lost it to a collection in between). It is removed
        // by key with the task, orphans included.
        let prep = PrepareSnapshotRequest {
            snapshotter: self.cfg.snapshotter.clone(),
            key: id.into(),
            parent: img.top_chain_id().into(),
            labels: [("containerd.io/gc.root".to_string(), "swarm-rs".to_string())].into_iter().collect(),
        };
        let mounts = self
            .engine
            .snapshots()
            .prepare(self.engine.req(prep))
            .await
            .map_err(|s| status_err(&format!("snapshots.prepare {id}"), "", s))?
            .into_inner()
            .mounts;
        let accounts = if user_needs_accounts(user_string(config, &img.defaults)) {
            read_accounts(&mounts).await
        } else {
            Accounts::default()
        };
        let ctx = SpecContext {
            id: id.into(),
            netns_path: Some(net.netns_path()),
            cgroups_path: self.cgroup_path(id),
            volume_sources,
            files: file_mounts,
            hosts_file: Some(hosts.display().to_string()),
            resolv_file: resolv,
            nofile: self.cfg.nofile,
            accounts,
        };
        let spec = build_spec(config, &img.defaults, &ctx)?;
        let spec_bytes =
            serde_json::to_vec(&spec).map_err(|e| engine_err(format!("encoding the spec of {id}: {e}")))?;

        let mut labels: HashMap<String, String> = config.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(ip) = ip {
            labels.insert(ctd_labels::ADDRESS.into(), ip.to_string());
        }
        if !config.endpoints.is_empty() {
            let eps: Vec<String> = config.endpoints.iter().map(|e| format!("{}@{}", e.address, e.bridge)).collect();
            labels.insert(ctd_labels::ENDPOINTS.into(), eps.join(","));
        }
        labels.insert(ctd_labels::TOKEN.into(), token.into());
        labels.insert(ctd_labels::STOP_SIGNAL.into(), stop_signal.to_string());
        labels.insert(ctd_labels::NAME.into(), config.name.clone());
        if !host_ports.is_empty() {
            labels.insert(ctd_labels::HOST_PORTS.into(), ports::encode(host_ports));
        }
        let container = Container {
            id: id.into(),
            labels,
            image: img.name.clone(),
            runtime: Some(ContainerRuntimeInfo { name: self.cfg.runtime.clone(), options: None }),
            spec: Some(prost_types::Any { type_url: SPEC_TYPE_URL.into(), value: spec_bytes }),
            snapshotter: self.cfg.snapshotter.clone(),
            snapshot_key: id.into(),
            ..Default::default()
        };
        self.engine
            .containers()
            .create(self.engine.req(CreateContainerRequest { container: Some(container) }))
            .await
            .map_err(|s| status_err(&format!("containers.create {id}"), "", s))?;
        // The shim starts the logger with the task's stdout and stderr
        // pipes; it appends them to the two log files.
        let logger = format!("binary://{}?d={}", self.logger_path().display(), dir.display());
        let task = CreateTaskRequest {
            container_id: id.into(),
            rootfs: mounts,
            stdout: logger.clone(),
            stderr: logger,
            ..Default::default()
        };
        self.engine.tasks().create(self.engine.req(task)).await.map_err(|s| RuntimeError::StartFailed {
            id: id.into(),
            reason: format!("tasks.create: {}", s.message()),
        })?;
        Ok(())
    }

    async fn sample(&self, id: &str) -> Result<Option<Sample>, RuntimeError> {
        let req = MetricsRequest { filters: vec![format!("id=={id}")] };
        let r = self.engine.tasks().metrics(self.engine.req(req)).await;
        let list = r.map_err(|s| status_err(&format!("tasks.metrics {id}"), id, s))?.into_inner().metrics;
        let Some(data) = list.into_iter().find(|m| m.id == id).and_then(|m| m.data) else { return Ok(None) };
        metrics::decode(&data.type_url, &data.value).map(Some)
    }

    /// Removes the host-side pieces (network namespace, veth, port rules,
    /// secret tmpfs, state directory) and any snapshot of tasks whose
    /// containerd container is gone, e.g. after containerd lost its state
    /// or an agent died in the middle of a create. Returns the ids cleaned.
    /// Call it when the agent starts, before it creates tasks (a create in
    /// progress looks like an orphan).
    pub async fn remove_orphans(&self) -> Result<Vec<String>, RuntimeError> {
        let root = self.cfg.state_dir.join("containers");
        let mut rd =
            tokio::fs::read_dir(&root).await.map_err(|e| engine_err(format!("reading {}: {e}", root.display())))?;
        let mut cleaned = Vec::new();
        while let Some(entry) =
            rd.next_entry().await.map_err(|e| engine_err(format!("reading {}: {e}", root.display())))?
        {
            let id = entry.file_name().to_string_lossy().into_owned();
            match self.get_container(&id).await {
                Ok(_) => continue,
                Err(RuntimeError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            // The token is the id's suffix (see `container_id`).
            let token = id.rsplit('-').next().filter(|t| t.len() == 8 && t.bytes().all(|b| b.is_ascii_hexdigit()));
            info!(id, "removing the leftovers of a task whose container is gone");
            // The labels are gone: every interface a task may have.
            self.teardown(&id, token, None, true, MAX_ENDPOINTS + 1).await?;
            cleaned.push(id);
        }
        Ok(cleaned)
    }

    /// Exits of this namespace's tasks as containerd's events service
    /// reports them (`/tasks/exit`), from now on. Exec'd processes are
    /// left out.
    pub async fn exit_events(&self) -> Result<impl Stream<Item = ExitEvent> + Send + 'static, RuntimeError> {
        let req =
            SubscribeRequest { filters: vec![format!("topic==\"/tasks/exit\",namespace=={}", self.cfg.namespace)] };
        let stream =
            self.engine.events().subscribe(req).await.map_err(|s| status_err("events.subscribe", "", s))?.into_inner();
        let ns = self.cfg.namespace.clone();
        Ok(stream.filter_map(move |env| {
            let out = match env {
                Ok(env) if env.namespace == ns => env.event.and_then(|any| TaskExit::decode(any.value.as_slice()).ok()),
                Ok(_) => None,
                Err(s) => {
                    warn!(error = %s, "event stream error");
                    None
                }
            };
            let out = out
                .filter(|e| e.id == e.container_id)
                .map(|e| ExitEvent { id: e.container_id, code: e.exit_status as i32 });
            std::future::ready(out)
        }))
    }
}

impl ContainerdRuntime {
    /// Pulls `image` unless another call is pulling it (then waits for
    /// that one and pulls only if it failed).
    async fn pull_once(&self, image: &str) -> Result<(), RuntimeError> {
        let name = crate::image::normalize(image)?;
        let gate = self.pulls.lock().unwrap_or_else(|p| p.into_inner()).entry(name.clone()).or_default().clone();
        let r = {
            let _held = gate.lock().await;
            if image_exists(&self.engine, image).await? {
                debug!(image, "pulled meanwhile by another prepare");
                Ok(())
            } else {
                pull(&self.engine, image, &self.cfg.registry).await
            }
        };
        let mut pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map and this call hold it: nobody waits, forget it
        // (clones are only taken under this lock).
        if Arc::strong_count(&gate) <= 2 {
            pulls.remove(&name);
        }
        r
    }
}

#[async_trait]
impl Runtime for ContainerdRuntime {
    fn name(&self) -> &str {
        "containerd"
    }

    async fn prepare(&self, config: &ContainerConfig) -> Result<(), RuntimeError> {
        // Not in the store: pull it (when pulls are on), then resolve again.
        let img = match resolve(&self.engine, &config.spec.image).await {
            Err(RuntimeError::ImageNotFound { .. })
                if self.cfg.pull && !image_exists(&self.engine, &config.spec.image).await? =>
            {
                self.pull_once(&config.spec.image).await?;
                resolve(&self.engine, &config.spec.image).await?
            }
            r => r?,
        };
        ensure_unpacked(&self.engine, &self.cfg.snapshotter, &img).await?;
        for m in &config.spec.mounts {
            if m.kind == MountKind::Volume && !m.source.is_empty() {
                self.ensure_volume(&VolumeSpec { name: m.source.clone(), ..Default::default() }).await?;
            }
        }
        Ok(())
    }

    async fn create(&self, config: &ContainerConfig) -> Result<String, RuntimeError> {
        let host_ports = ports::resolve(&config.host_ports, &[])?;
        let stop_signal = match config.spec.stop_signal.as_deref() {
            Some(s) if !s.is_empty() => parse_signal(s)?,
            _ => SIGTERM,
        };
        if config.endpoints.len() > MAX_ENDPOINTS {
            return Err(RuntimeError::InvalidConfig(format!(
                "container {:?}: {} overlay endpoints, at most {MAX_ENDPOINTS}",
                config.name,
                config.endpoints.len()
            )));
        }
        for (i, ep) in config.endpoints.iter().enumerate() {
            validate_endpoint(ep)?;
            if config.endpoints[..i].iter().any(|e| e.network == ep.network || e.bridge == ep.bridge) {
                return Err(RuntimeError::InvalidConfig(format!(
                    "container {:?}: network {:?} ({}) has two endpoints",
                    config.name, ep.network, ep.bridge
                )));
            }
        }
        let token = token();
        let id = container_id(&config.name, &token);
        // The node bridge: for tasks without overlay endpoints (today's
        // networking) and for node-local networks, which all map to it.
        let ip = if config.endpoints.is_empty() || !config.networks.is_empty() {
            Some(self.alloc.allocate(&self.addresses_in_use().await?)?)
        } else {
            None
        };
        let ifaces = config.endpoints.len() + usize::from(ip.is_some());
        debug!(id, ?ip, endpoints = config.endpoints.len(), image = %config.spec.image, "creating task container");
        match self.create_parts(config, &id, &token, ip, stop_signal, &host_ports).await {
            Ok(()) => Ok(id),
            Err(e) => {
                if let Err(t) = self.teardown(&id, Some(&token), ip, !host_ports.is_empty(), ifaces).await {
                    warn!(id, error = %t, "cleanup after a failed create was incomplete");
                }
                Err(e)
            }
        }
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let r = self
            .engine
            .tasks()
            .start(self.engine.req(StartRequest { container_id: id.into(), exec_id: String::new() }))
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if is_not_found(&s) => Err(RuntimeError::NotFound(id.into())),
            Err(s) => {
                // Starting a running task is not an error (as on the sim).
                if let Ok(Some(p)) = self.get_task(id).await {
                    if map_status(p.status) == ContainerState::Running {
                        return Ok(());
                    }
                }
                Err(RuntimeError::StartFailed { id: id.into(), reason: s.message().to_string() })
            }
        }
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        self.wait_exit(id).await
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let c = self.get_container(id).await?;
        let signal = c.labels.get(ctd_labels::STOP_SIGNAL).and_then(|s| s.parse().ok()).unwrap_or(SIGTERM);
        match self.get_task(id).await? {
            Some(p) if map_status(p.status) == ContainerState::Running => {}
            _ => return Ok(()),
        }
        self.send_signal(id, signal, false).await?;
        match tokio::time::timeout(grace, self.wait_exit(id)).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => {
                info!(id, ?grace, "task did not stop within its grace period, killing it");
                self.send_signal(id, SIGKILL, true).await?;
                match tokio::time::timeout(KILL_WAIT, self.wait_exit(id)).await {
                    Ok(r) => r.map(|_| ()),
                    Err(_) => Err(RuntimeError::Timeout { op: "waiting for a killed task", after: KILL_WAIT }),
                }
            }
        }
    }

    async fn kill(&self, id: &str) -> Result<(), RuntimeError> {
        match self.get_task(id).await? {
            Some(p) if map_status(p.status) != ContainerState::Exited => {}
            Some(_) => return Ok(()),
            None => {
                self.get_container(id).await?;
                return Ok(());
            }
        }
        self.send_signal(id, SIGKILL, true).await?;
        match tokio::time::timeout(KILL_WAIT, self.wait_exit(id)).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(RuntimeError::Timeout { op: "waiting for a killed task", after: KILL_WAIT }),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let c = self.get_container(id).await?;
        let token = c.labels.get(ctd_labels::TOKEN).cloned();
        let ip = c.labels.get(ctd_labels::ADDRESS).and_then(|a| a.parse().ok());
        let has_ports = c.labels.contains_key(ctd_labels::HOST_PORTS);
        let ifaces = endpoint_addresses(&c.labels).len() + usize::from(ip.is_some());
        self.teardown(id, token.as_deref(), ip, has_ports, ifaces.max(1)).await
    }

    async fn inspect(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let c = self.get_container(id).await?;
        let task = self.get_task(id).await?;
        let (state, exit_code, error) = match &task {
            Some(p) => {
                let st = map_status(p.status);
                let code = (st == ContainerState::Exited).then_some(p.exit_status as i32);
                (st, code, code.and_then(|c| self.exit_error(id, c)))
            }
            None => (ContainerState::Unknown, None, Some("the container has no task (containerd restarted?)".into())),
        };
        // The endpoints' addresses in interface order, then the node bridge's.
        let mut addresses: Vec<IpAddr> = endpoint_addresses(&c.labels).into_iter().map(IpAddr::V4).collect();
        addresses.extend(c.labels.get(ctd_labels::ADDRESS).and_then(|a| a.parse::<Ipv4Addr>().ok()).map(IpAddr::V4));
        Ok(ContainerStatus {
            id: id.into(),
            state,
            exit_code,
            error,
            addresses,
            host_ports: c.labels.get(ctd_labels::HOST_PORTS).map(|p| ports::decode(p)).unwrap_or_default(),
            labels: c.labels.into_iter().collect(),
        })
    }

    async fn list(&self, selector: &Labels) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let r = self.engine.containers().list(self.engine.req(ListContainersRequest { filters: vec![] })).await;
        let containers = r.map_err(|s| status_err("containers.list", "", s))?.into_inner().containers;
        let r = self.engine.tasks().list(self.engine.req(ListTasksRequest { filter: String::new() })).await;
        let tasks = r.map_err(|s| status_err("tasks.list", "", s))?.into_inner().tasks;
        let states: HashMap<String, ContainerState> = tasks
            .into_iter()
            // containerd 1.6 fills `id` (the container's) and leaves
            // `container_id` empty in this list.
            .map(|p| (if p.container_id.is_empty() { p.id } else { p.container_id }, map_status(p.status)))
            .collect();
        let mut out: Vec<ContainerSummary> = containers
            .into_iter()
            .filter(|c| selector.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
            .map(|c| ContainerSummary {
                state: states.get(&c.id).copied().unwrap_or(ContainerState::Unknown),
                name: c.labels.get(ctd_labels::NAME).cloned().unwrap_or_else(|| c.id.clone()),
                id: c.id,
                labels: c.labels.into_iter().collect(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// stdout lines, then stderr lines (the two files do not record how the
    /// streams interleave); `tail` counts over both.
    async fn logs(&self, id: &str, tail: Option<usize>) -> Result<Vec<LogLine>, RuntimeError> {
        self.get_container(id).await?;
        let mut out = Vec::new();
        for stream in ["stdout", "stderr"] {
            let path = self.log_path(id, stream);
            let text = match tokio::fs::read(&path).await {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(engine_err(format!("reading {}: {e}", path.display()))),
            };
            out.extend(text.lines().map(|l| LogLine { stream, line: l.to_string() }));
        }
        let skip = tail.map(|t| out.len().saturating_sub(t)).unwrap_or(0);
        Ok(out.split_off(skip))
    }

    /// Memory from the task's cgroup; CPU percent over the time since the
    /// previous call for this container (the first call samples twice,
    /// 100 ms apart).
    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let Some(s1) = self.sample(id).await? else {
            // No metrics: the task is not running (or gone).
            self.get_container(id).await?;
            return Ok(ContainerStats::default());
        };
        let now = Instant::now();
        let prev = self.cpu.lock().unwrap_or_else(|p| p.into_inner()).get(id).copied();
        let (before, t0, last, t1) = match prev {
            Some((cpu, t)) => (cpu, t, s1, now),
            None => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let s2 = self.sample(id).await?.unwrap_or(s1);
                (s1.cpu_ns, now, s2, Instant::now())
            }
        };
        self.cpu.lock().unwrap_or_else(|p| p.into_inner()).insert(id.into(), (last.cpu_ns, t1));
        let elapsed = t1.saturating_duration_since(t0).as_nanos() as u64;
        Ok(ContainerStats {
            cpu_percent: metrics::cpu_percent(before, last.cpu_ns, elapsed),
            memory_bytes: last.memory_bytes,
            memory_limit_bytes: last.memory_limit_bytes,
        })
    }

    async fn exec(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecResult, RuntimeError> {
        if cmd.is_empty() {
            return Err(RuntimeError::InvalidConfig(format!("exec in {id}: the command is empty")));
        }
        let c = self.get_container(id).await?;
        match self.get_task(id).await? {
            Some(p) if map_status(p.status) == ContainerState::Running => {}
            _ => return Err(engine_err(format!("exec in {id}: the container is not running"))),
        }
        let spec = c.spec.ok_or_else(|| engine_err(format!("container {id} has no spec")))?;
        let mut spec: serde_json::Value = serde_json::from_slice(&spec.value)
            .map_err(|e| engine_err(format!("cannot parse the spec of {id}: {e}")))?;
        let mut process = spec["process"].take();
        process["args"] = serde_json::json!(cmd);
        process["terminal"] = serde_json::json!(false);
        let process_bytes = serde_json::to_vec(&process).map_err(|e| engine_err(format!("encoding exec spec: {e}")))?;
        let exec_id = format!("exec-{}", token());
        let out_path = self.dir(id).join(format!("{exec_id}.log"));
        let url = format!("file://{}", out_path.display());
        let req = ExecProcessRequest {
            container_id: id.into(),
            stdout: url.clone(),
            stderr: url,
            spec: Some(prost_types::Any { type_url: PROCESS_TYPE_URL.into(), value: process_bytes }),
            exec_id: exec_id.clone(),
            ..Default::default()
        };
        self.engine
            .tasks()
            .exec(self.engine.req(req))
            .await
            .map_err(|s| status_err(&format!("tasks.exec {id}"), id, s))?;
        let run = async {
            self.engine
                .tasks()
                .start(self.engine.req(StartRequest { container_id: id.into(), exec_id: exec_id.clone() }))
                .await
                .map_err(|s| status_err(&format!("starting exec in {id}"), id, s))?;
            let w = WaitRequest { container_id: id.into(), exec_id: exec_id.clone() };
            let r = self.engine.tasks().wait(self.engine.req(w)).await;
            Ok::<i32, RuntimeError>(
                r.map_err(|s| status_err(&format!("waiting for exec in {id}"), id, s))?.into_inner().exit_status as i32,
            )
        };
        let result = tokio::time::timeout(timeout, run).await;
        if result.is_err() {
            let k = KillRequest { container_id: id.into(), exec_id: exec_id.clone(), signal: SIGKILL, all: false };
            let _ = self.engine.tasks().kill(self.engine.req(k)).await;
        }
        let del = DeleteProcessRequest { container_id: id.into(), exec_id: exec_id.clone() };
        if let Err(s) = self.engine.tasks().delete_process(self.engine.req(del)).await {
            debug!(id, exec_id, error = %s, "cannot delete the exec process");
        }
        let output = tokio::fs::read(&out_path).await.unwrap_or_default();
        let _ = tokio::fs::remove_file(&out_path).await;
        let code = match result {
            Ok(r) => r?,
            Err(_) => return Err(RuntimeError::Timeout { op: "exec", after: timeout }),
        };
        let output = String::from_utf8_lossy(&output[..output.len().min(EXEC_OUTPUT_MAX)]).into_owned();
        Ok(ExecResult { exit_code: code, output })
    }

    /// Node-local networks map to the node bridge: tasks of all of them
    /// share it (no isolation between them on one node; see the crate
    /// docs). An overlay network needs nothing ahead: its bridge is made
    /// when a task's endpoint on it is created (the spec alone lacks the
    /// VNI and the allocation).
    async fn ensure_network(&self, spec: &NetworkSpec) -> Result<(), RuntimeError> {
        match spec.driver.as_str() {
            "overlay" => {
                debug!(network = %spec.name, "overlay network: its bridge is made with its first endpoint");
                Ok(())
            }
            "" | "bridge" => {
                debug!(network = %spec.name, bridge = %self.cfg.bridge.name, "network maps to the node bridge");
                ensure_bridge(&self.cfg.bridge, self.host_netns()).await
            }
            d => Err(RuntimeError::Unsupported {
                runtime: "containerd",
                op: "ensure_network",
                detail: format!(
                    "network {:?}: driver {d:?} (only bridge/overlay, both mapped to the node bridge)",
                    spec.name
                ),
            }),
        }
    }

    /// Removes the bridge of overlay network `name` when nothing is
    /// plugged into it (an error when tasks are; left to the overlay plane
    /// when only its devices are). Node-local networks map to the node
    /// bridge, which stays.
    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        let removed = remove_endpoint_bridges(name, self.host_netns()).await?;
        if !removed.is_empty() {
            info!(network = name, bridges = ?removed, "removed the bridge of an overlay network");
        }
        Ok(())
    }

    /// A named volume is a directory under the state directory.
    async fn ensure_volume(&self, spec: &VolumeSpec) -> Result<(), RuntimeError> {
        if !matches!(spec.driver.as_str(), "" | "local") {
            return Err(RuntimeError::Unsupported {
                runtime: "containerd",
                op: "ensure_volume",
                detail: format!("volume {:?}: driver {:?} (only local)", spec.name, spec.driver),
            });
        }
        if spec.name.is_empty() || spec.name.contains('/') || spec.name.starts_with('.') {
            return Err(RuntimeError::InvalidConfig(format!("volume name {:?} is not a plain name", spec.name)));
        }
        let d = self.volume_dir(&spec.name);
        tokio::fs::create_dir_all(&d).await.map_err(|e| engine_err(format!("creating volume {}: {e}", d.display())))
    }

    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(RuntimeError::InvalidConfig(format!("volume name {name:?} is not a plain name")));
        }
        let d = self.volume_dir(name);
        match tokio::fs::remove_dir_all(&d).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(engine_err(format!("removing volume {}: {e}", d.display()))),
        }
    }
}

/// The endpoint addresses recorded in a container's labels, in order.
fn endpoint_addresses(labels: &HashMap<String, String>) -> Vec<Ipv4Addr> {
    labels
        .get(ctd_labels::ENDPOINTS)
        .map(|v| v.split(',').filter_map(|e| e.split('@').next()?.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_labels_give_the_addresses_in_order() {
        let mut l = HashMap::new();
        assert!(endpoint_addresses(&l).is_empty());
        l.insert(ctd_labels::ENDPOINTS.to_string(), "10.0.1.5@swbr4100,10.0.2.9@swbr4101".to_string());
        assert_eq!(endpoint_addresses(&l), [Ipv4Addr::new(10, 0, 1, 5), Ipv4Addr::new(10, 0, 2, 9)]);
    }

    #[test]
    fn ids_are_valid_containerd_ids() {
        assert_eq!(container_id("web.1.abc123", "0011aabb"), "web.1.abc123-0011aabb");
        assert_eq!(container_id("we b/1", "00"), "we-b-1-00");
        assert_eq!(container_id("", "00"), "task-00");
        assert_eq!(container_id(&"x".repeat(100), "00").len(), 63);
    }

    #[test]
    fn statuses_map() {
        assert_eq!(map_status(TaskStatus::Running as i32), ContainerState::Running);
        assert_eq!(map_status(TaskStatus::Stopped as i32), ContainerState::Exited);
        assert_eq!(map_status(TaskStatus::Created as i32), ContainerState::Created);
        assert_eq!(map_status(99), ContainerState::Unknown);
    }
}
