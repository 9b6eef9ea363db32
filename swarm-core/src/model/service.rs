use super::{Labels, Meta, Platform, ResourceRequirements};
use crate::id::ServiceId;
use crate::time::{SpecDuration, Timestamp};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A service: the desired state of a set of tasks.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Service {
    /// Service id.
    pub id: ServiceId,
    /// Store bookkeeping.
    pub meta: Meta,
    /// The current spec.
    pub spec: ServiceSpec,
    /// Bumped each time `spec.task_template` (or a forced update) changes,
    /// so tasks record which spec they run. Scaling does not bump it.
    pub spec_version: u64,
    /// The spec before the last update, for rollback. Boxed: a service
    /// that carried two specs inline made every [`Object`](super::Object)
    /// (and every store event, which holds two) twice the size of a task,
    /// and tasks are most of what a store holds and streams.
    pub previous_spec: Option<Box<ServiceSpec>>,
    /// The rolling update's progress, if one ever ran.
    pub update_status: Option<UpdateStatus>,
    /// Resolved endpoint: virtual IPs and the published ports in use.
    pub endpoint: Endpoint,
    /// For jobs: bumped on each (re)run of the job.
    pub job_iteration: u64,
}

/// Everything an operator says about a service.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceSpec {
    /// The service name: a DNS label (1-63 of a-z, 0-9, '-', not at the ends).
    pub name: String,
    /// Service labels (changing them does not restart tasks).
    pub labels: Labels,
    /// What each task runs.
    pub task_template: TaskSpec,
    /// Replicated, global or a job.
    pub mode: ServiceMode,
    /// How to roll out a new spec.
    pub update_config: UpdateConfig,
    /// How to roll back to the previous spec.
    pub rollback_config: UpdateConfig,
    /// Ports and the load-balancing mode.
    pub endpoint_spec: EndpointSpec,
    /// Networks the tasks attach to.
    pub networks: Vec<NetworkAttachmentConfig>,
}

impl ServiceSpec {
    /// A replicated service of `replicas` tasks running `image`.
    pub fn replicated(name: impl Into<String>, image: impl Into<String>, replicas: u64) -> Self {
        ServiceSpec {
            name: name.into(),
            task_template: TaskSpec { container: ContainerSpec::new(image), ..Default::default() },
            mode: ServiceMode::replicated(replicas),
            ..Default::default()
        }
    }

    /// A global service (one task per eligible node) running `image`.
    pub fn global(name: impl Into<String>, image: impl Into<String>) -> Self {
        ServiceSpec { mode: ServiceMode::global(), ..Self::replicated(name, image, 0) }
    }
}

/// What a task runs and under which rules.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskSpec {
    /// The container.
    pub container: ContainerSpec,
    /// Reservations and limits.
    pub resources: ResourceRequirements,
    /// When a task that stopped is replaced.
    pub restart_policy: RestartPolicy,
    /// Where tasks may run.
    pub placement: Placement,
    /// Bump to force a rolling restart with an unchanged spec.
    pub force_update: u64,
}

/// The container of a task.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerSpec {
    /// Image reference, e.g. `nginx:1.27` or `registry:5000/team/app@sha256:...`.
    pub image: String,
    /// Replaces the image's entrypoint when not empty.
    pub command: Vec<String>,
    /// Arguments to the command.
    pub args: Vec<String>,
    /// Environment, `KEY=value`.
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// User (name or `uid[:gid]`).
    pub user: Option<String>,
    /// Container hostname.
    pub hostname: Option<String>,
    /// Container labels (the runtime adds the project's own).
    pub labels: Labels,
    /// Volumes, binds and tmpfs mounts.
    pub mounts: Vec<Mount>,
    /// Secrets exposed as files.
    pub secrets: Vec<SecretReference>,
    /// Configs exposed as files.
    pub configs: Vec<ConfigReference>,
    /// Health check; `None` means the task is healthy once running.
    pub health_check: Option<HealthCheck>,
    /// Time between the stop signal and the kill.
    pub stop_grace_period: SpecDuration,
    /// Signal sent to stop (default SIGTERM).
    pub stop_signal: Option<String>,
}

impl ContainerSpec {
    /// A container spec for `image` with Swarm's defaults.
    pub fn new(image: impl Into<String>) -> Self {
        ContainerSpec { image: image.into(), ..Default::default() }
    }
}

/// Swarm's default stop grace period: 10 s.
pub const DEFAULT_STOP_GRACE_PERIOD: SpecDuration = SpecDuration::from_secs(10);

impl ContainerSpec {
    /// The stop grace period, defaulting to 10 s when unset (zero).
    pub fn effective_stop_grace(&self) -> std::time::Duration {
        if self.stop_grace_period == SpecDuration::ZERO {
            DEFAULT_STOP_GRACE_PERIOD.to_std()
        } else {
            self.stop_grace_period.to_std()
        }
    }
}

/// A mount in a container.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Mount {
    /// Volume, bind or tmpfs.
    pub kind: MountKind,
    /// Volume name or host path; empty for tmpfs (and anonymous volumes).
    pub source: String,
    /// Path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// tmpfs size in bytes (0 = unlimited).
    pub tmpfs_size_bytes: u64,
}

/// Kind of a [`Mount`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A named volume.
    #[default]
    Volume,
    /// A host path.
    Bind,
    /// An in-memory filesystem.
    Tmpfs,
}

/// Where a secret or config file appears in the container.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileTarget {
    /// File name or absolute path. Secrets default to `/run/secrets/<name>`,
    /// configs to `/<name>`.
    pub name: String,
    /// Owner uid.
    pub uid: String,
    /// Owner gid.
    pub gid: String,
    /// File mode (default 0o444).
    pub mode: u32,
}

/// A reference from a task to a secret.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SecretReference {
    /// Name of the secret.
    pub secret_name: String,
    /// Where it appears; `name` empty = `/run/secrets/<secret_name>`.
    pub target: FileTarget,
}

/// A reference from a task to a config.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigReference {
    /// Name of the config.
    pub config_name: String,
    /// Where it appears; `name` empty = `/<config_name>`.
    pub target: FileTarget,
}

impl SecretReference {
    /// The absolute path of the file in the container.
    pub fn path(&self) -> String {
        let n = if self.target.name.is_empty() { &self.secret_name } else { &self.target.name };
        if n.starts_with('/') { n.clone() } else { format!("/run/secrets/{n}") }
    }
}

impl ConfigReference {
    /// The absolute path of the file in the container.
    pub fn path(&self) -> String {
        let n = if self.target.name.is_empty() { &self.config_name } else { &self.target.name };
        if n.starts_with('/') { n.clone() } else { format!("/{n}") }
    }
}

/// How the health of a task's container is checked.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthCheck {
    /// The probe.
    pub probe: HealthProbe,
    /// Time between probes (default 30 s).
    pub interval: SpecDuration,
    /// Time a probe may take (default 30 s).
    pub timeout: SpecDuration,
    /// Consecutive failures before unhealthy (default 3).
    pub retries: u32,
    /// Grace after start during which failures do not count (default 0).
    pub start_period: SpecDuration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            probe: HealthProbe::Command(vec!["true".into()]),
            interval: SpecDuration::from_secs(30),
            timeout: SpecDuration::from_secs(30),
            retries: 3,
            start_period: SpecDuration::ZERO,
        }
    }
}

/// A health probe.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthProbe {
    /// Run a command in the container; exit 0 = healthy.
    Command(Vec<String>),
    /// Open a TCP connection to the container's port.
    Tcp {
        /// Container port.
        port: u16,
    },
    /// HTTP GET on the container's port; 2xx/3xx = healthy.
    Http {
        /// Container port.
        port: u16,
        /// Request path, e.g. `/health`.
        path: String,
    },
}

/// When a task that stopped is replaced.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Never.
    None,
    /// When it failed (non-zero exit, failed health check, lost node).
    OnFailure,
    /// Whenever it stopped (Swarm's default).
    #[default]
    Any,
}

/// Restart policy (Swarm defaults: any, 5 s delay, unlimited attempts).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct RestartPolicy {
    /// When to restart.
    pub condition: RestartCondition,
    /// Wait between a stop and the replacement's start.
    pub delay: SpecDuration,
    /// Attempts allowed within `window` (0 = unlimited).
    pub max_attempts: u64,
    /// Window over which attempts are counted (0 = forever).
    pub window: SpecDuration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay: SpecDuration::from_secs(5),
            max_attempts: 0,
            window: SpecDuration::ZERO,
        }
    }
}

/// Where a service's tasks may run.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Placement {
    /// Constraints like `node.labels.zone==eu` or `node.role!=manager`.
    pub constraints: Vec<String>,
    /// Spread preferences, applied as a hierarchy in order.
    pub preferences: Vec<PlacementPreference>,
    /// Most tasks of this service on one node (0 = unlimited).
    pub max_replicas: u64,
    /// Platforms the image runs on (empty = any).
    pub platforms: Vec<Platform>,
}

/// Spread tasks evenly over the values of a node label.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PlacementPreference {
    /// A descriptor such as `node.labels.zone`.
    pub spread: String,
}

/// What kind of service: the [`ServiceMode`] discriminant.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModeKind {
    /// N tasks in slots 1..N.
    #[default]
    Replicated,
    /// One task on every eligible node.
    Global,
    /// Run to completion `total_completions` times, `max_concurrent` at once.
    ReplicatedJob,
    /// Run to completion once on every eligible node.
    GlobalJob,
}

/// The service mode, in the flat shape of a compose file's `deploy:`
/// section, so that a field that does not belong to the mode (replicas on
/// a global service) can be said and rejected by validation.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceMode {
    /// The kind of service.
    pub kind: ModeKind,
    /// Replicated only: the number of tasks (default 1).
    pub replicas: Option<u64>,
    /// Replicated jobs only: tasks running at once (default 1).
    pub max_concurrent: Option<u64>,
    /// Replicated jobs only: successful completions wanted (default
    /// `max_concurrent`).
    pub total_completions: Option<u64>,
}

impl ServiceMode {
    /// Replicated with `n` replicas.
    pub fn replicated(n: u64) -> Self {
        ServiceMode { kind: ModeKind::Replicated, replicas: Some(n), ..Default::default() }
    }
    /// Global.
    pub fn global() -> Self {
        ServiceMode { kind: ModeKind::Global, ..Default::default() }
    }
    /// A replicated job.
    pub fn replicated_job(total_completions: u64, max_concurrent: u64) -> Self {
        ServiceMode {
            kind: ModeKind::ReplicatedJob,
            replicas: None,
            max_concurrent: Some(max_concurrent),
            total_completions: Some(total_completions),
        }
    }
    /// A global job.
    pub fn global_job() -> Self {
        ServiceMode { kind: ModeKind::GlobalJob, ..Default::default() }
    }
    /// Replicas wanted (replicated services; 1 when unset).
    pub fn replicas(&self) -> u64 {
        self.replicas.unwrap_or(1)
    }
    /// Concurrency of a replicated job (1 when unset).
    pub fn max_concurrent(&self) -> u64 {
        self.max_concurrent.unwrap_or(1).max(1)
    }
    /// Completions wanted of a replicated job (`max_concurrent` when unset).
    pub fn total_completions(&self) -> u64 {
        self.total_completions.unwrap_or_else(|| self.max_concurrent())
    }
    /// True for replicated-job and global-job.
    pub fn is_job(&self) -> bool {
        matches!(self.kind, ModeKind::ReplicatedJob | ModeKind::GlobalJob)
    }
    /// True for global and global-job.
    pub fn is_global(&self) -> bool {
        matches!(self.kind, ModeKind::Global | ModeKind::GlobalJob)
    }
}

/// What to do when an update's tasks fail.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Stop the update and wait for the operator (Swarm's default).
    #[default]
    Pause,
    /// Carry on.
    Continue,
    /// Roll back to the previous spec.
    Rollback,
}

/// Whether new tasks start before or after the old ones stop.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Stop the old task, then start the new one (Swarm's default).
    #[default]
    StopFirst,
    /// Start the new task, stop the old one once the new one is up.
    StartFirst,
}

/// Rolling update (or rollback) parameters, with Swarm's defaults.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateConfig {
    /// Tasks updated at once (0 = all at once). Default 1.
    pub parallelism: u64,
    /// Wait between batches. Default 0.
    pub delay: SpecDuration,
    /// What to do on failure. Default pause.
    pub failure_action: FailureAction,
    /// How long after a task's update its failure still counts. Default 5 s.
    pub monitor: SpecDuration,
    /// Fraction of tasks that may fail before the failure action. Default 0.
    pub max_failure_ratio: f32,
    /// Stop-first or start-first. Default stop-first.
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay: SpecDuration::ZERO,
            failure_action: FailureAction::Pause,
            monitor: SpecDuration::from_secs(5),
            max_failure_ratio: 0.0,
            order: UpdateOrder::StopFirst,
        }
    }
}

/// The state of a rolling update.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Rolling out.
    #[default]
    Updating,
    /// Stopped on failure or by hand.
    Paused,
    /// Done.
    Completed,
    /// Rolling back.
    RollbackStarted,
    /// Rollback stopped.
    RollbackPaused,
    /// Rolled back.
    RollbackCompleted,
}

/// Progress of the last update.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateStatus {
    /// Where it stands.
    pub state: UpdateState,
    /// When it started.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub completed_at: Option<Timestamp>,
    /// Human-readable detail.
    pub message: String,
}

/// Load-balancing mode of a service.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// One stable virtual IP balancing over the tasks.
    #[default]
    Vip,
    /// DNS round-robin over the task addresses.
    Dnsrr,
}

/// L4 protocol of a port.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// "tcp" or "udp".
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// How a port is published.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// On every node through the routing mesh.
    #[default]
    Ingress,
    /// Only on the node running the task.
    Host,
}

/// A port of a service.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PortConfig {
    /// Optional name.
    pub name: String,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Port inside the container (1-65535).
    pub target_port: u32,
    /// Port published outside (1-65535). `None`: ingress ports are
    /// assigned from 30000-32767; host ports are left to the runtime.
    pub published_port: Option<u32>,
    /// Ingress (routing mesh) or host.
    pub publish_mode: PublishMode,
}

/// Ports and load-balancing mode.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointSpec {
    /// VIP or DNS round-robin.
    pub mode: EndpointMode,
    /// Published ports.
    pub ports: Vec<PortConfig>,
}

/// The resolved endpoint of a service (filled in by the allocator).
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Endpoint {
    /// Ports with published ports resolved.
    pub ports: Vec<PortConfig>,
    /// One virtual IP per attached network.
    pub virtual_ips: Vec<VirtualIp>,
}

/// A service's virtual IP on one network.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct VirtualIp {
    /// Network name.
    pub network: String,
    /// The address.
    pub addr: IpAddr,
}

/// Attaches the tasks of a service to a network.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkAttachmentConfig {
    /// Network name or id.
    pub target: String,
    /// Extra DNS names for the service on that network.
    pub aliases: Vec<String>,
}
