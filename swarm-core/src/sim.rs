//! [`SimRuntime`]: a deterministic fake container runtime with fault
//! injection, driven by tokio time.
//!
//! Each `SimRuntime` stands for one node's engine. Containers "run" without
//! doing anything; what they do is decided by [`Fault`] rules matched
//! against the container at create time: the image is missing, the start
//! fails, the container exits with code N after a delay, ignores the stop
//! signal (hangs on stop until killed), or its health check turns bad after
//! a delay. [`SimRuntime::fail`] makes the whole node's engine vanish.
//! A container's secrets and configs are kept as the files the task would
//! see ([`SimRuntime::files`]: target, content, owner, mode), so a test can
//! check what a task is given, as it would read them on a real engine.
//! Timers are tokio timers, so under a paused clock (`start_paused = true`)
//! a test that spans hours finishes in milliseconds and is deterministic.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::time::Duration;
//! use swarm_core::runtime::{ContainerConfig, Runtime};
//! use swarm_core::sim::{Fault, FaultRule, SimRuntime};
//! let sim = SimRuntime::new("node-1");
//! sim.inject(FaultRule::new(Fault::ExitAfter { after: Duration::from_secs(3), code: 2 }).image("crasher"));
//! let mut cfg = ContainerConfig::default();
//! cfg.spec.image = "crasher".into();
//! sim.prepare(&cfg).await.unwrap();
//! let id = sim.create(&cfg).await.unwrap();
//! sim.start(&id).await.unwrap();
//! let exit = sim.wait(&id).await.unwrap(); // 3 s of paused time, instantly
//! assert_eq!(exit.code, 2);
//! # }
//! ```

use crate::model::{HealthProbe, Labels, NetworkSpec, SecretBytes, VolumeSpec};
use crate::runtime::*;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Something that goes wrong with matching containers.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// `prepare` fails: the image is not present and cannot be pulled.
    ImageMissing,
    /// `start` fails with this reason.
    StartFails(String),
    /// The container exits with `code` this long after starting.
    ExitAfter {
        /// Time from start to exit.
        after: Duration,
        /// Exit code.
        code: i32,
    },
    /// The container ignores the stop signal: `stop` waits the whole grace
    /// period, then kills (exit 137).
    HangOnStop,
    /// Health probes fail from this long after the start.
    UnhealthyAfter(Duration),
    /// `start` takes this long.
    SlowStart(Duration),
    /// The container's secret and config files come up empty, as if the
    /// runtime failed to write their content.
    LoseFileContent,
}

/// Which containers a rule applies to.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Target {
    /// Every container.
    #[default]
    Any,
    /// Containers of this image.
    Image(String),
    /// Containers of this service (by name).
    Service(String),
    /// The container of one task.
    Task(String),
}

/// A fault, whom it hits, and how many more times.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    /// What goes wrong.
    pub fault: Fault,
    /// On which containers.
    pub target: Target,
    /// How many more containers it hits (`None` = all of them).
    pub remaining: Option<u32>,
}

impl FaultRule {
    /// A rule hitting every container, forever.
    pub fn new(fault: Fault) -> Self {
        FaultRule { fault, target: Target::Any, remaining: None }
    }
    /// Only containers of `image`.
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.target = Target::Image(image.into());
        self
    }
    /// Only containers of service `name`.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.target = Target::Service(name.into());
        self
    }
    /// Only the container of task `id`.
    pub fn task(mut self, id: impl Into<String>) -> Self {
        self.target = Target::Task(id.into());
        self
    }
    /// Only the next `n` matching containers.
    pub fn times(mut self, n: u32) -> Self {
        self.remaining = Some(n);
        self
    }

    fn hits(&self, cfg: &ContainerConfig) -> bool {
        match &self.target {
            Target::Any => true,
            Target::Image(i) => &cfg.spec.image == i,
            Target::Service(s) => &cfg.service_name == s,
            Target::Task(t) => cfg.task_id.as_str() == t,
        }
    }
}

/// What a container will do, decided when it is created.
#[derive(Clone, Debug, Default, PartialEq)]
struct Behavior {
    start_error: Option<String>,
    exit: Option<(Duration, i32)>,
    hang_on_stop: bool,
    unhealthy_after: Option<Duration>,
    slow_start: Option<Duration>,
    lose_file_content: bool,
}

/// A secret or config file as a task sees it in its container.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SimFile {
    /// Absolute path in the container.
    pub path: String,
    /// The secret's or config's name.
    pub name: String,
    /// Content (redacted in Debug).
    pub data: SecretBytes,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Permission bits (e.g. 0o444).
    pub mode: u32,
    /// The filesystem it is on: `tmpfs`, as the real runtimes keep secrets
    /// and configs in memory.
    pub fs_type: &'static str,
}

/// The files a container gets for `config`'s secrets and configs, checked
/// as the real runtimes check them (absolute file path, one file per
/// target, numeric owner).
fn materialise(config: &ContainerConfig) -> Result<Vec<SimFile>, RuntimeError> {
    let owner = |f: &FileMaterial, what: &str, v: &str| -> Result<u32, RuntimeError> {
        if v.is_empty() {
            return Ok(0);
        }
        v.parse().map_err(|_| {
            RuntimeError::InvalidConfig(format!(
                "secret/config {:?}: {what} {v:?} of {} is not a number",
                f.name, f.path
            ))
        })
    };
    let mut files: Vec<SimFile> = Vec::new();
    for f in config.secrets.iter().chain(config.configs.iter()) {
        if !f.path.starts_with('/') || f.path.ends_with('/') {
            return Err(RuntimeError::InvalidConfig(format!(
                "secret/config {:?}: target {:?} must be an absolute file path",
                f.name, f.path
            )));
        }
        if files.iter().any(|g| g.path == f.path) {
            return Err(RuntimeError::InvalidConfig(format!(
                "secret/config {:?}: target {:?} is used twice",
                f.name, f.path
            )));
        }
        files.push(SimFile {
            path: f.path.clone(),
            name: f.name.clone(),
            data: f.data.clone(),
            uid: owner(f, "uid", &f.uid)?,
            gid: owner(f, "gid", &f.gid)?,
            mode: if f.mode == 0 { 0o444 } else { f.mode & 0o7777 },
            fs_type: "tmpfs",
        });
    }
    Ok(files)
}

#[derive(Debug)]
struct SimContainer {
    config: ContainerConfig,
    state: ContainerState,
    behavior: Behavior,
    started_at: Option<Instant>,
    exit: watch::Sender<Option<ExitStatus>>,
    addr: IpAddr,
    logs: Vec<LogLine>,
    /// Its secret and config files.
    files: Vec<SimFile>,
    /// Bumped on each start so stale exit timers do nothing.
    generation: u64,
}

#[derive(Debug, Default)]
struct Inner {
    index: u32,
    failed: bool,
    missing_images: BTreeSet<String>,
    rules: Vec<FaultRule>,
    containers: BTreeMap<String, SimContainer>,
    networks: BTreeSet<String>,
    volumes: BTreeSet<String>,
    next_id: u64,
    starts: u64,
}

/// A fake runtime for one node. Cheap to clone (shared state).
#[derive(Clone, Debug)]
pub struct SimRuntime {
    node: String,
    inner: Arc<Mutex<Inner>>,
}

static NEXT_INDEX: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl SimRuntime {
    /// A runtime for node `node`. Its containers get addresses in a /20 of
    /// 10.128.0.0/9 of its own.
    pub fn new(node: impl Into<String>) -> Self {
        let index = NEXT_INDEX.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2048;
        Self::with_index(node, index)
    }

    /// Like [`SimRuntime::new`] with an explicit address block index
    /// (0..2048), for reproducible addresses.
    pub fn with_index(node: impl Into<String>, index: u32) -> Self {
        SimRuntime {
            node: node.into(),
            inner: Arc::new(Mutex::new(Inner { index: index % 2048, ..Default::default() })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a fault rule.
    pub fn inject(&self, rule: FaultRule) {
        self.lock().rules.push(rule);
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.lock().rules.clear();
    }

    /// Makes `image` absent (prepare fails for it).
    pub fn remove_image(&self, image: impl Into<String>) {
        self.lock().missing_images.insert(image.into());
    }

    /// The whole node fails: every container is gone and every call returns
    /// [`RuntimeError::Unavailable`] until [`SimRuntime::recover`].
    pub fn fail(&self) {
        let mut g = self.lock();
        g.failed = true;
        for c in g.containers.values() {
            c.exit.send_replace(Some(ExitStatus { code: 137, error: Some("node failed".into()) }));
        }
        g.containers.clear();
    }

    /// The node's engine is back (empty, as after a reboot).
    pub fn recover(&self) {
        self.lock().failed = false;
    }

    /// True while failed.
    pub fn is_failed(&self) -> bool {
        self.lock().failed
    }

    /// Kills a container from outside (like `docker kill`): it exits with
    /// `code`.
    pub fn kill_from_outside(&self, id: &str, code: i32) -> bool {
        let mut g = self.lock();
        match g.containers.get_mut(id) {
            Some(c) if c.state == ContainerState::Running => {
                exit_container(c, code, Some("killed from outside".into()));
                true
            }
            _ => false,
        }
    }

    /// Ids of the running containers.
    pub fn running(&self) -> Vec<String> {
        self.lock()
            .containers
            .iter()
            .filter(|(_, c)| c.state == ContainerState::Running)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Number of containers (any state).
    pub fn container_count(&self) -> usize {
        self.lock().containers.len()
    }

    /// Number of successful starts so far.
    pub fn starts(&self) -> u64 {
        self.lock().starts
    }

    /// The networks created on this node.
    pub fn networks(&self) -> Vec<String> {
        self.lock().networks.iter().cloned().collect()
    }

    /// The volumes created on this node.
    pub fn volumes(&self) -> Vec<String> {
        self.lock().volumes.iter().cloned().collect()
    }

    /// The secret and config files of container `id`, as its task sees
    /// them.
    pub fn files(&self, id: &str) -> Result<Vec<SimFile>, RuntimeError> {
        let g = self.lock();
        Self::check_up(&g)?;
        Ok(g.containers.get(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?.files.clone())
    }

    fn check_up(g: &Inner) -> Result<(), RuntimeError> {
        if g.failed { Err(RuntimeError::Unavailable("sim node is down".into())) } else { Ok(()) }
    }

    fn take_matching(g: &mut Inner, cfg: &ContainerConfig, pred: impl Fn(&Fault) -> bool) -> Vec<Fault> {
        let mut out = Vec::new();
        for r in g.rules.iter_mut() {
            if pred(&r.fault) && r.hits(cfg) && r.remaining != Some(0) {
                out.push(r.fault.clone());
                if let Some(n) = r.remaining.as_mut() {
                    *n -= 1;
                }
            }
        }
        g.rules.retain(|r| r.remaining != Some(0));
        out
    }
}

fn exit_container(c: &mut SimContainer, code: i32, error: Option<String>) {
    c.state = ContainerState::Exited;
    c.logs.push(LogLine { stream: "stdout", line: format!("exited with code {code}") });
    c.exit.send_replace(Some(ExitStatus { code, error }));
}

#[async_trait]
impl Runtime for SimRuntime {
    fn name(&self) -> &str {
        "sim"
    }

    async fn prepare(&self, config: &ContainerConfig) -> Result<(), RuntimeError> {
        let mut g = self.lock();
        Self::check_up(&g)?;
        let missing = g.missing_images.contains(&config.spec.image)
            || !Self::take_matching(&mut g, config, |f| matches!(f, Fault::ImageMissing)).is_empty();
        if missing {
            return Err(RuntimeError::ImageNotFound {
                image: config.spec.image.clone(),
                reason: "not present on the node and no registry is reachable (sim)".into(),
            });
        }
        for n in &config.networks {
            g.networks.insert(n.target.clone());
        }
        // Overlay endpoints: the node's network for each (as the real
        // runtimes make a bridge network per overlay network).
        for e in &config.endpoints {
            g.networks.insert(e.network.clone());
        }
        for m in &config.spec.mounts {
            if m.kind == crate::model::MountKind::Volume && !m.source.is_empty() {
                g.volumes.insert(m.source.clone());
            }
        }
        Ok(())
    }

    async fn create(&self, config: &ContainerConfig) -> Result<String, RuntimeError> {
        let mut g = self.lock();
        Self::check_up(&g)?;
        // Checked before any fault rule is used up: a refused config
        // creates nothing and consumes nothing.
        let mut files = materialise(config)?;
        let mut behavior = Behavior::default();
        for f in Self::take_matching(&mut g, config, |f| !matches!(f, Fault::ImageMissing)) {
            match f {
                Fault::StartFails(r) => behavior.start_error = Some(r),
                Fault::ExitAfter { after, code } => behavior.exit = Some((after, code)),
                Fault::HangOnStop => behavior.hang_on_stop = true,
                Fault::UnhealthyAfter(d) => behavior.unhealthy_after = Some(d),
                Fault::SlowStart(d) => behavior.slow_start = Some(d),
                Fault::LoseFileContent => behavior.lose_file_content = true,
                Fault::ImageMissing => {}
            }
        }
        if behavior.lose_file_content {
            for f in &mut files {
                f.data = SecretBytes(Vec::new());
            }
        }
        g.next_id += 1;
        let n = g.next_id;
        let id = format!("sim-{}-{n:06}", self.node);
        let host = (n % 4094) as u32 + 1;
        let addr = IpAddr::V4(Ipv4Addr::from(0x0A80_0000u32 + (g.index << 12) + host));
        let (exit, _) = watch::channel(None);
        g.containers.insert(
            id.clone(),
            SimContainer {
                config: config.clone(),
                state: ContainerState::Created,
                behavior,
                started_at: None,
                exit,
                addr,
                logs: vec![LogLine { stream: "stdout", line: format!("created {}", config.name) }],
                files,
                generation: 0,
            },
        );
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let slow = {
            let g = self.lock();
            Self::check_up(&g)?;
            let c = g.containers.get(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
            c.behavior.slow_start
        };
        if let Some(d) = slow {
            tokio::time::sleep(d).await;
        }
        let mut g = self.lock();
        Self::check_up(&g)?;
        let c = g.containers.get_mut(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        if let Some(reason) = c.behavior.start_error.clone() {
            c.state = ContainerState::Exited;
            c.exit.send_replace(Some(ExitStatus { code: 128, error: Some(reason.clone()) }));
            return Err(RuntimeError::StartFailed { id: id.into(), reason });
        }
        if c.state == ContainerState::Running {
            return Ok(());
        }
        c.state = ContainerState::Running;
        c.started_at = Some(Instant::now());
        c.generation += 1;
        c.exit.send_replace(None);
        c.logs.push(LogLine { stream: "stdout", line: "started".into() });
        let generation = c.generation;
        let exit = c.behavior.exit;
        g.starts += 1;
        drop(g);
        if let Some((after, code)) = exit {
            let inner = self.inner.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(c) = g.containers.get_mut(&id) {
                    if c.generation == generation && c.state == ContainerState::Running {
                        exit_container(c, code, None);
                    }
                }
            });
        }
        Ok(())
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        let mut rx = {
            let g = self.lock();
            Self::check_up(&g)?;
            g.containers.get(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?.exit.subscribe()
        };
        loop {
            if let Some(s) = rx.borrow_and_update().clone() {
                return Ok(s);
            }
            if rx.changed().await.is_err() {
                return Err(RuntimeError::Unavailable("container vanished (node failed)".into()));
            }
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let hang = {
            let mut g = self.lock();
            Self::check_up(&g)?;
            let c = g.containers.get_mut(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
            if c.state != ContainerState::Running {
                return Ok(());
            }
            c.logs.push(LogLine { stream: "stdout", line: "received stop signal".into() });
            if !c.behavior.hang_on_stop {
                exit_container(c, 0, None);
                return Ok(());
            }
            true
        };
        if hang {
            tokio::time::sleep(grace).await;
            let mut g = self.lock();
            if let Some(c) = g.containers.get_mut(id) {
                if c.state == ContainerState::Running {
                    exit_container(c, 137, Some("killed after the stop grace period".into()));
                }
            }
        }
        Ok(())
    }

    async fn kill(&self, id: &str) -> Result<(), RuntimeError> {
        let mut g = self.lock();
        Self::check_up(&g)?;
        let c = g.containers.get_mut(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        if c.state == ContainerState::Running {
            exit_container(c, 137, Some("killed".into()));
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut g = self.lock();
        Self::check_up(&g)?;
        match g.containers.remove(id) {
            Some(c) => {
                if c.state == ContainerState::Running {
                    c.exit.send_replace(Some(ExitStatus { code: 137, error: Some("removed".into()) }));
                }
                Ok(())
            }
            None => Err(RuntimeError::NotFound(id.into())),
        }
    }

    async fn inspect(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let g = self.lock();
        Self::check_up(&g)?;
        let c = g.containers.get(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        let exit = c.exit.borrow().clone();
        Ok(ContainerStatus {
            id: id.to_string(),
            state: c.state,
            exit_code: exit.as_ref().map(|e| e.code),
            error: exit.and_then(|e| e.error),
            addresses: vec![c.addr],
            labels: c.config.labels.clone(),
            host_ports: c.config.host_ports.clone(),
        })
    }

    async fn list(&self, selector: &Labels) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let g = self.lock();
        Self::check_up(&g)?;
        Ok(g.containers
            .iter()
            .filter(|(_, c)| selector.iter().all(|(k, v)| c.config.labels.get(k) == Some(v)))
            .map(|(id, c)| ContainerSummary {
                id: id.clone(),
                name: c.config.name.clone(),
                labels: c.config.labels.clone(),
                state: c.state,
            })
            .collect())
    }

    async fn logs(&self, id: &str, tail: Option<usize>) -> Result<Vec<LogLine>, RuntimeError> {
        let g = self.lock();
        Self::check_up(&g)?;
        let c = g.containers.get(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        let skip = tail.map(|t| c.logs.len().saturating_sub(t)).unwrap_or(0);
        Ok(c.logs[skip..].to_vec())
    }

    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let g = self.lock();
        Self::check_up(&g)?;
        let c = g.containers.get(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        if c.state != ContainerState::Running {
            return Ok(ContainerStats {
                memory_limit_bytes: c.config.resources.limits.memory_bytes,
                ..Default::default()
            });
        }
        // A simulated container uses what it reserved.
        let r = &c.config.resources;
        Ok(ContainerStats {
            cpu_percent: r.reservations.nano_cpus as f64 / 1e7,
            memory_bytes: r.reservations.memory_bytes,
            memory_limit_bytes: r.limits.memory_bytes,
        })
    }

    async fn exec(&self, id: &str, cmd: &[String], _timeout: Duration) -> Result<ExecResult, RuntimeError> {
        let g = self.lock();
        Self::check_up(&g)?;
        let c = g.containers.get(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        if c.state != ContainerState::Running {
            return Err(RuntimeError::Engine(format!("container {id} is not running")));
        }
        Ok(ExecResult { exit_code: 0, output: format!("sim exec: {}", cmd.join(" ")) })
    }

    async fn ensure_network(&self, spec: &NetworkSpec) -> Result<(), RuntimeError> {
        let mut g = self.lock();
        Self::check_up(&g)?;
        g.networks.insert(spec.name.clone());
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        let mut g = self.lock();
        Self::check_up(&g)?;
        g.networks.remove(name);
        Ok(())
    }

    async fn ensure_volume(&self, spec: &VolumeSpec) -> Result<(), RuntimeError> {
        let mut g = self.lock();
        Self::check_up(&g)?;
        g.volumes.insert(spec.name.clone());
        Ok(())
    }

    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        let mut g = self.lock();
        Self::check_up(&g)?;
        g.volumes.remove(name);
        Ok(())
    }

    /// Probes pass while the container runs, until an
    /// [`Fault::UnhealthyAfter`] delay has passed since its start.
    async fn probe(&self, id: &str, _probe: &HealthProbe, _timeout: Duration) -> ProbeResult {
        let g = self.lock();
        if g.failed {
            return ProbeResult::Unhealthy("sim node is down".into());
        }
        let Some(c) = g.containers.get(id) else { return ProbeResult::Unhealthy("no such container".into()) };
        if c.state != ContainerState::Running {
            return ProbeResult::Unhealthy("container is not running".into());
        }
        match (c.behavior.unhealthy_after, c.started_at) {
            (Some(after), Some(t0)) if Instant::now() >= t0 + after => {
                ProbeResult::Unhealthy("sim: health check failing (injected)".into())
            }
            _ => ProbeResult::Healthy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(image: &str, service: &str) -> ContainerConfig {
        let mut c = ContainerConfig { service_name: service.into(), ..Default::default() };
        c.spec.image = image.into();
        c
    }

    #[tokio::test(start_paused = true)]
    async fn faults_apply_and_expire() {
        let sim = SimRuntime::with_index("n", 1);
        sim.inject(FaultRule::new(Fault::StartFails("boom".into())).service("web").times(1));
        sim.remove_image("ghost:1");
        assert!(matches!(sim.prepare(&cfg("ghost:1", "x")).await, Err(RuntimeError::ImageNotFound { .. })));
        let a = sim.create(&cfg("app", "web")).await.unwrap();
        assert!(matches!(sim.start(&a).await, Err(RuntimeError::StartFailed { .. })));
        let b = sim.create(&cfg("app", "web")).await.unwrap();
        sim.start(&b).await.unwrap();
        assert_eq!(sim.running(), vec![b.clone()]);
        assert_eq!(sim.inspect(&b).await.unwrap().state, ContainerState::Running);
    }

    #[tokio::test(start_paused = true)]
    async fn hang_on_stop_waits_for_the_grace_period() {
        let sim = SimRuntime::with_index("n", 2);
        sim.inject(FaultRule::new(Fault::HangOnStop));
        let id = sim.create(&cfg("app", "web")).await.unwrap();
        sim.start(&id).await.unwrap();
        let t0 = Instant::now();
        sim.stop(&id, Duration::from_secs(10)).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
        assert_eq!(sim.wait(&id).await.unwrap().code, 137);
    }

    #[tokio::test(start_paused = true)]
    async fn health_turns_bad_after_the_delay() {
        let sim = SimRuntime::with_index("n", 3);
        sim.inject(FaultRule::new(Fault::UnhealthyAfter(Duration::from_secs(30))));
        let id = sim.create(&cfg("app", "web")).await.unwrap();
        sim.start(&id).await.unwrap();
        let probe = HealthProbe::Command(vec!["true".into()]);
        assert_eq!(sim.probe(&id, &probe, Duration::from_secs(1)).await, ProbeResult::Healthy);
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(matches!(sim.probe(&id, &probe, Duration::from_secs(1)).await, ProbeResult::Unhealthy(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn node_failure_ends_everything() {
        let sim = SimRuntime::with_index("n", 4);
        let id = sim.create(&cfg("app", "web")).await.unwrap();
        sim.start(&id).await.unwrap();
        let waiter = {
            let sim = sim.clone();
            let id = id.clone();
            tokio::spawn(async move { sim.wait(&id).await })
        };
        tokio::task::yield_now().await;
        sim.fail();
        assert_eq!(waiter.await.unwrap().unwrap().code, 137);
        assert!(matches!(sim.inspect(&id).await, Err(RuntimeError::Unavailable(_))));
        sim.recover();
        assert_eq!(sim.container_count(), 0);
    }
}
