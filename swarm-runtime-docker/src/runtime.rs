//! [`DockerRuntime`]: the [`Runtime`] trait on the Docker Engine API.
//!
//! One `DockerRuntime` talks to one Engine (the node's). Every call maps to
//! one or a few Engine calls; every failure becomes a [`RuntimeError`] that
//! names the operation and the object: a missing container is
//! [`RuntimeError::NotFound`], a missing image that cannot be pulled is
//! [`RuntimeError::ImageNotFound`], an unreachable Engine is
//! [`RuntimeError::Unavailable`].
//!
//! Long calls (`wait`, `stop`, the event stream) use a second client
//! without the request timeout, since the Engine answers them only when
//! the container has stopped.

use crate::convert::{
    create_body, endpoint_network, endpoint_network_mismatch, endpoint_network_request, stats_from_sample,
    status_from_inspect, summary_state_of,
};
use crate::events::{ContainerEvent, event_stream};
use crate::secrets::SecretStore;
use async_trait::async_trait;
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{Ipam, IpamConfig, NetworkConnectRequest, NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptions, StatsOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::{Stream, StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use swarm_core::image::ImageRef;
use swarm_core::model::{Labels, MountKind, NetworkSpec, VolumeSpec};
use swarm_core::runtime::{
    ContainerConfig, ContainerStats, ContainerStatus, ContainerSummary, ExecResult, ExitStatus, FileMaterial, LogLine,
    NetworkEndpoint, Runtime, RuntimeError, labels,
};
use tracing::{debug, info, warn};

/// How long the long-call client waits for an answer's headers.
const LONG_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Serialises network creation in this process (see `ensure_network`).
static NETWORK_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Default [`DockerRuntimeOptions::overlay_mtu`]: 1500 minus VXLAN's 50 bytes.
pub const DEFAULT_OVERLAY_MTU: u32 = 1450;
/// Most bytes of exec output kept.
const EXEC_OUTPUT_LIMIT: usize = 64 * 1024;

/// Settings of a [`DockerRuntime`].
#[derive(Clone, Debug)]
pub struct DockerRuntimeOptions {
    /// Host directory for secret and config files; it must be (or the
    /// runtime mounts there) a tmpfs. Default `/run/swarm-rs/docker-secrets`.
    pub secrets_dir: PathBuf,
    /// Size of the tmpfs the runtime mounts at `secrets_dir` when none is
    /// there. Default 64 MiB.
    pub secrets_tmpfs_size_bytes: u64,
    /// Also translate command health probes into the container's Docker
    /// HEALTHCHECK, so `docker ps` shows health and [`DockerRuntime::events`]
    /// reports health transitions. The agent's own probes
    /// ([`Runtime::probe`]) stay the source of truth. Default off.
    pub docker_healthcheck: bool,
    /// Credentials per registry host (`docker.io` for Docker Hub), sent
    /// with pulls.
    pub registry_auth: HashMap<String, DockerCredentials>,
    /// Longest a pull may take. Default 5 minutes.
    pub pull_timeout: Duration,
    /// MTU of containers' interfaces on overlay networks (the Engine
    /// option `com.docker.network.driver.mtu` of their bridge networks):
    /// frames cross nodes in VXLAN, 50 bytes more, so 1450 under a 1500
    /// byte underlay. 0 leaves the Engine's default (1500). Default 1450.
    pub overlay_mtu: u32,
}

impl Default for DockerRuntimeOptions {
    fn default() -> Self {
        DockerRuntimeOptions {
            secrets_dir: PathBuf::from("/run/swarm-rs/docker-secrets"),
            secrets_tmpfs_size_bytes: 64 << 20,
            docker_healthcheck: false,
            registry_auth: HashMap::new(),
            pull_timeout: Duration::from_secs(300),
            overlay_mtu: DEFAULT_OVERLAY_MTU,
        }
    }
}

/// The [`Runtime`] on a Docker Engine.
///
/// One `DockerRuntime` talks to one Engine (the node's); clones share the
/// connection. A missing container is [`RuntimeError::NotFound`], a missing
/// image that cannot be pulled [`RuntimeError::ImageNotFound`], an
/// unreachable Engine [`RuntimeError::Unavailable`]. `wait`, `stop` and
/// [`DockerRuntime::events`] use a client without request timeout, since
/// the Engine answers them only when the container has stopped.
#[derive(Clone, Debug)]
pub struct DockerRuntime {
    docker: Docker,
    long: Docker,
    opts: DockerRuntimeOptions,
    secrets: SecretStore,
}

/// Maps an Engine error: connection failures are `Unavailable`, the
/// client's timeout is `Timeout`, the rest is `Engine` with what failed.
pub(crate) fn map_err(op: &'static str, what: &str, e: BollardError) -> RuntimeError {
    match e {
        // bollard's default request timeout, which `DockerRuntime::connect` uses.
        BollardError::RequestTimeoutError => RuntimeError::Timeout { op, after: Duration::from_secs(120) },
        BollardError::HyperResponseError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::IOError { .. }
        | BollardError::SocketNotFoundError(_)
        | BollardError::HttpClientError { .. } => RuntimeError::Unavailable(format!("{op} {what}: {e}")),
        BollardError::DockerResponseServerError { status_code, message } => {
            RuntimeError::Engine(format!("{op} {what}: engine answered {status_code}: {}", message.trim()))
        }
        other => RuntimeError::Engine(format!("{op} {what}: {other}")),
    }
}

/// The Engine's status code, when it answered with an error.
fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Like [`map_err`], with 404 as [`RuntimeError::NotFound`] of the container.
fn container_err(op: &'static str, id: &str, e: BollardError) -> RuntimeError {
    if status_of(&e) == Some(404) { RuntimeError::NotFound(id.to_string()) } else { map_err(op, id, e) }
}

impl DockerRuntime {
    /// Connects to the Engine named by `DOCKER_HOST`, else the local socket
    /// (`/var/run/docker.sock`). Does not contact it yet: see [`Self::ping`].
    pub fn connect(opts: DockerRuntimeOptions) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_defaults()
            .map_err(|e| RuntimeError::Unavailable(format!("connect to the docker engine: {e}")))?;
        Ok(Self::with_client(docker, opts))
    }

    /// A runtime on an existing client.
    pub fn with_client(docker: Docker, opts: DockerRuntimeOptions) -> Self {
        let long = docker.clone().with_timeout(LONG_TIMEOUT);
        let secrets = SecretStore::new(opts.secrets_dir.clone(), opts.secrets_tmpfs_size_bytes);
        DockerRuntime { docker, long, opts, secrets }
    }

    /// The underlying client.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// The settings.
    pub fn options(&self) -> &DockerRuntimeOptions {
        &self.opts
    }

    /// Checks that the Engine answers; returns its API version.
    pub async fn ping(&self) -> Result<String, RuntimeError> {
        let v = self.docker.version().await.map_err(|e| match map_err("ping", "engine", e) {
            RuntimeError::Engine(m) => RuntimeError::Unavailable(m),
            other => other,
        })?;
        Ok(v.api_version.unwrap_or_default())
    }

    /// The Engine's events for this project's containers (label
    /// `io.swarm-rs.managed=true`): starts, exits with their code, OOM kills,
    /// health transitions (with [`DockerRuntimeOptions::docker_healthcheck`])
    /// and removals. The stream ends when the connection to the Engine ends.
    pub fn events(&self) -> impl Stream<Item = Result<ContainerEvent, RuntimeError>> + Send + 'static {
        event_stream(&self.long)
    }

    /// Makes sure `image` is on the Engine: present, or pulled (with the
    /// registry's credentials from the options). Without a reachable
    /// registry this is [`RuntimeError::ImageNotFound`] saying so.
    pub async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(map_err("inspect image", image, e)),
        }
        let r = ImageRef::parse(image)
            .map_err(|e| RuntimeError::ImageNotFound { image: image.into(), reason: e.to_string() })?;
        let registry = r.registry.clone().unwrap_or_else(|| "docker.io".to_string());
        // Without a tag or digest the Engine would pull every tag.
        let from = if r.tag.is_none() && r.digest.is_none() { format!("{image}:latest") } else { image.to_string() };
        info!(image = %from, %registry, "image not present, pulling");
        let opts = CreateImageOptionsBuilder::new().from_image(&from).build();
        let creds = self.opts.registry_auth.get(&registry).cloned();
        let pull = self.long.create_image(Some(opts), None, creds).try_collect::<Vec<_>>();
        match tokio::time::timeout(self.opts.pull_timeout, pull).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(RuntimeError::ImageNotFound {
                image: image.into(),
                reason: format!("not present on the engine, and pulling it from {registry} failed: {e}"),
            }),
            Err(_) => Err(RuntimeError::ImageNotFound {
                image: image.into(),
                reason: format!("not present on the engine, and the pull from {registry} timed out"),
            }),
        }
    }

    /// Deletes the secret and config files of containers that no longer
    /// exist (removed behind the runtime's back, e.g. `docker rm`); returns
    /// the container names whose files went. An agent calls it after
    /// adopting its containers.
    pub async fn prune_secret_files(&self) -> Result<Vec<String>, RuntimeError> {
        let mut pruned = Vec::new();
        for name in self.secrets.container_dirs()? {
            match self.docker.inspect_container(&name, None).await {
                Ok(_) => {}
                Err(e) if status_of(&e) == Some(404) => {
                    self.secrets.remove(&name)?;
                    info!(container = %name, "deleted the secret files of a container that is gone");
                    pruned.push(name);
                }
                Err(e) => return Err(map_err("inspect", &name, e)),
            }
        }
        Ok(pruned)
    }

    /// Ids of the networks named exactly `name`, lowest first.
    async fn networks_named(&self, name: &str) -> Result<Vec<String>, RuntimeError> {
        let mut filters: HashMap<String, Vec<String>> = HashMap::new();
        filters.insert("name".into(), vec![name.to_string()]);
        let opts = ListNetworksOptionsBuilder::new().filters(&filters).build();
        let list = self.docker.list_networks(Some(opts)).await.map_err(|e| map_err("list networks", name, e))?;
        // The engine's name filter matches substrings.
        let mut ids: Vec<String> =
            list.into_iter().filter(|n| n.name.as_deref() == Some(name)).filter_map(|n| n.id).collect();
        ids.sort();
        Ok(ids)
    }

    /// Leaves one network named `name`: the one with the lowest id.
    async fn dedupe_network(&self, name: &str) -> Result<(), RuntimeError> {
        let ids = self.networks_named(name).await?;
        for id in ids.iter().skip(1) {
            warn!(network = name, %id, "removing a duplicate network");
            if let Err(e) = self.docker.remove_network(id).await {
                warn!(network = name, %id, error = %e, "cannot remove a duplicate network");
            }
        }
        Ok(())
    }

    /// Makes sure the Engine network of an overlay endpoint exists as it
    /// should: a bridge network named as the overlay network, on the
    /// endpoint's bridge (`swbr<vni>`; an existing bridge of that name, e.g.
    /// made first by the overlay plane, is taken as it is), with its subnet,
    /// gateway and `internal`. A network of that name that differs (left
    /// from an earlier network of the same name) is removed and made again
    /// when no container is on it, else this fails saying what differs and
    /// which containers hold it.
    pub async fn ensure_endpoint_network(&self, ep: &NetworkEndpoint) -> Result<(), RuntimeError> {
        let want = endpoint_network(ep)?;
        let _guard = NETWORK_LOCK.lock().await;
        if !self.networks_named(&want.name).await?.is_empty() {
            self.dedupe_network(&want.name).await?;
            if let Some(id) = self.networks_named(&want.name).await?.into_iter().next() {
                let found =
                    self.docker.inspect_network(&id, None).await.map_err(|e| map_err("inspect network", &id, e))?;
                let Some(diff) = endpoint_network_mismatch(&want, &found) else { return Ok(()) };
                let users: Vec<String> =
                    found.containers.unwrap_or_default().into_iter().map(|(id, c)| c.name.unwrap_or(id)).collect();
                if !users.is_empty() {
                    return Err(RuntimeError::Engine(format!(
                        "network {:?} exists on the engine with {diff}, and containers {users:?} still use it: \
                         remove them or the network",
                        want.name
                    )));
                }
                warn!(network = %want.name, %diff, "replacing a stale network");
                match self.docker.remove_network(&id).await {
                    Ok(()) => {}
                    Err(e) if status_of(&e) == Some(404) => {}
                    Err(e) => return Err(map_err("remove stale network", &want.name, e)),
                }
            }
        }
        match self.docker.create_network(endpoint_network_request(&want, ep.mtu(self.opts.overlay_mtu))).await {
            Ok(_) => {
                info!(network = %want.name, bridge = %want.bridge, subnet = %want.subnet, "created overlay network")
            }
            Err(e) if status_of(&e) == Some(409) => {} // created concurrently
            Err(e) => return Err(map_err("create network", &want.name, e)),
        }
        self.dedupe_network(&want.name).await
    }

    async fn name_of(&self, id: &str) -> Result<String, RuntimeError> {
        let r = self.docker.inspect_container(id, None).await.map_err(|e| container_err("inspect", id, e))?;
        Ok(r.name.unwrap_or_default().trim_start_matches('/').to_string())
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &str {
        "docker"
    }

    async fn prepare(&self, cfg: &ContainerConfig) -> Result<(), RuntimeError> {
        self.ensure_image(&cfg.spec.image).await?;
        for ep in &cfg.endpoints {
            if cfg.networks.iter().any(|n| n.target == ep.network) {
                return Err(RuntimeError::InvalidConfig(format!(
                    "container {:?}: network {:?} is both an overlay endpoint and a node-local network",
                    cfg.name, ep.network
                )));
            }
            self.ensure_endpoint_network(ep).await?;
        }
        // A network the agent has not made yet (with its spec, through
        // ensure_network) is made here as a node-local bridge.
        for att in &cfg.networks {
            if att.target.is_empty() {
                return Err(RuntimeError::InvalidConfig(format!(
                    "container {:?}: a network target is empty",
                    cfg.name
                )));
            }
            self.ensure_network(&NetworkSpec { name: att.target.clone(), ..Default::default() }).await?;
        }
        for m in &cfg.spec.mounts {
            if m.kind == MountKind::Volume && !m.source.is_empty() {
                self.ensure_volume(&VolumeSpec { name: m.source.clone(), ..Default::default() }).await?;
            }
        }
        Ok(())
    }

    async fn create(&self, cfg: &ContainerConfig) -> Result<String, RuntimeError> {
        if cfg.name.is_empty() {
            return Err(RuntimeError::InvalidConfig("container name is empty (use the task name)".into()));
        }
        // Validate everything before writing a single secret.
        let mut plan = create_body(cfg, Vec::new(), self.opts.docker_healthcheck)?;
        let files: Vec<&FileMaterial> = cfg.secrets.iter().chain(cfg.configs.iter()).collect();
        // The secret directory is keyed by the name: never touch the one of
        // an existing container with this name.
        if !files.is_empty() {
            match self.docker.inspect_container(&cfg.name, None).await {
                Ok(c) if c.name.as_deref().map(|n| n.trim_start_matches('/')) == Some(cfg.name.as_str()) => {
                    return Err(RuntimeError::InvalidConfig(format!(
                        "container name {:?} is already in use",
                        cfg.name
                    )));
                }
                Ok(_) => {}
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => return Err(map_err("inspect", &cfg.name, e)),
            }
        }
        let file_mounts = self.secrets.materialise(&cfg.name, &files)?;
        if !file_mounts.is_empty()
            && let Some(h) = plan.body.host_config.as_mut()
        {
            h.mounts.get_or_insert_with(Vec::new).extend(file_mounts);
        }
        let opts = CreateContainerOptionsBuilder::new().name(&cfg.name).build();
        let id = match self.docker.create_container(Some(opts), plan.body).await {
            Ok(r) => r.id,
            Err(e) => {
                let _ = self.secrets.remove(&cfg.name);
                return Err(match status_of(&e) {
                    Some(404) if e.to_string().contains("image") => RuntimeError::ImageNotFound {
                        image: cfg.spec.image.clone(),
                        reason: "not present on the engine (prepare pulls it)".into(),
                    },
                    Some(409) => {
                        RuntimeError::InvalidConfig(format!("container name {:?} is already in use", cfg.name))
                    }
                    _ => map_err("create container", &cfg.name, e),
                });
            }
        };
        for (net, ep) in plan.extra_networks {
            let req = NetworkConnectRequest { container: id.clone(), endpoint_config: Some(ep) };
            if let Err(e) = self.docker.connect_network(&net, req).await {
                let rm = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
                let _ = self.docker.remove_container(&id, Some(rm)).await;
                let _ = self.secrets.remove(&cfg.name);
                return Err(map_err("connect container to network", &net, e));
            }
        }
        debug!(container = %cfg.name, %id, "created");
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        match self.docker.start_container(id, None).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Err(RuntimeError::NotFound(id.into())),
            Err(e) => match map_err("start", id, e) {
                RuntimeError::Engine(reason) => Err(RuntimeError::StartFailed { id: id.into(), reason }),
                other => Err(other),
            },
        }
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        let opts = WaitContainerOptionsBuilder::new().condition("not-running").build();
        let mut s = Box::pin(self.long.wait_container(id, Some(opts)));
        let (code, error) = match s.next().await {
            Some(Ok(r)) => (r.status_code, r.error.and_then(|e| e.message)),
            Some(Err(BollardError::DockerContainerWaitError { error, code })) => (code, Some(error)),
            Some(Err(e)) => return Err(container_err("wait", id, e)),
            None => {
                return Err(RuntimeError::Engine(format!("wait {id}: the engine closed the stream without a status")));
            }
        };
        let mut error = error.filter(|e| !e.is_empty());
        // The wait answer does not say why; the inspect does (OOM kill).
        if let Ok(st) = self.inspect(id).await
            && let Some(e) = st.error
        {
            error = Some(e);
        }
        Ok(ExitStatus { code: i32::try_from(code).unwrap_or(i32::MAX), error })
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let t = i32::try_from(grace.as_secs() + u64::from(grace.subsec_nanos() > 0)).unwrap_or(i32::MAX);
        let opts = StopContainerOptionsBuilder::new().t(t).build();
        let limit = grace + Duration::from_secs(30);
        match tokio::time::timeout(limit, self.long.stop_container(id, Some(opts))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if status_of(&e) == Some(304) => Ok(()), // already stopped
            Ok(Err(e)) => Err(container_err("stop", id, e)),
            Err(_) => {
                warn!(container = id, "stop did not return in time, killing");
                self.kill(id).await?;
                Ok(())
            }
        }
    }

    async fn kill(&self, id: &str) -> Result<(), RuntimeError> {
        let opts = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        match self.docker.kill_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(409) => Ok(()), // not running: nothing to kill
            Err(e) => Err(container_err("kill", id, e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let name = self.name_of(id).await?;
        let opts = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        self.docker.remove_container(id, Some(opts)).await.map_err(|e| container_err("remove", id, e))?;
        self.secrets.remove(&name)?;
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let r = self.docker.inspect_container(id, None).await.map_err(|e| container_err("inspect", id, e))?;
        Ok(status_from_inspect(&r))
    }

    async fn list(&self, selector: &Labels) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let mut filters: HashMap<String, Vec<String>> = HashMap::new();
        if !selector.is_empty() {
            filters.insert("label".into(), selector.iter().map(|(k, v)| format!("{k}={v}")).collect());
        }
        let opts = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let list = self.docker.list_containers(Some(opts)).await.map_err(|e| map_err("list", "containers", e))?;
        let mut out: Vec<ContainerSummary> = list
            .into_iter()
            .map(|c| ContainerSummary {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
                state: summary_state_of(c.state),
            })
            // The engine's filter is exact; re-check so a missing label can never slip through.
            .filter(|c| selector.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn logs(&self, id: &str, tail: Option<usize>) -> Result<Vec<LogLine>, RuntimeError> {
        let tail = tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let opts = LogsOptionsBuilder::new().stdout(true).stderr(true).tail(&tail).build();
        let chunks: Vec<_> =
            self.docker.logs(id, Some(opts)).try_collect().await.map_err(|e| container_err("logs", id, e))?;
        let mut out = Vec::new();
        for c in chunks {
            let (stream, bytes) = match c {
                bollard::container::LogOutput::StdErr { message } => ("stderr", message),
                bollard::container::LogOutput::StdOut { message }
                | bollard::container::LogOutput::Console { message } => ("stdout", message),
                bollard::container::LogOutput::StdIn { .. } => continue,
            };
            let text = String::from_utf8_lossy(&bytes);
            for line in text.strip_suffix('\n').unwrap_or(&text).split('\n') {
                out.push(LogLine { stream, line: line.trim_end_matches('\r').to_string() });
            }
        }
        Ok(out)
    }

    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        // stream=false with one_shot=false: the engine takes two samples a
        // second apart, so precpu is filled and CPU percent is meaningful.
        let opts = StatsOptionsBuilder::new().stream(false).one_shot(false).build();
        let mut s = Box::pin(self.docker.stats(id, Some(opts)));
        match s.next().await {
            Some(Ok(sample)) => Ok(stats_from_sample(&sample)),
            Some(Err(e)) => Err(container_err("stats", id, e)),
            None => Err(RuntimeError::Engine(format!("stats {id}: the engine sent no sample"))),
        }
    }

    async fn exec(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecResult, RuntimeError> {
        if cmd.is_empty() {
            return Err(RuntimeError::InvalidConfig(format!("exec in {id}: the command is empty")));
        }
        let create = CreateExecOptions {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(cmd.to_vec()),
            ..Default::default()
        };
        let exec = self.docker.create_exec(id, create).await.map_err(|e| container_err("exec", id, e))?;
        let run = async {
            let started = self
                .docker
                .start_exec(&exec.id, Some(StartExecOptions { detach: false, ..Default::default() }))
                .await
                .map_err(|e| container_err("exec", id, e))?;
            let mut output = String::new();
            if let StartExecResults::Attached { output: mut stream, .. } = started {
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| map_err("exec output", id, e))?;
                    if output.len() < EXEC_OUTPUT_LIMIT {
                        output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                    }
                }
            }
            output.truncate(EXEC_OUTPUT_LIMIT);
            Ok::<_, RuntimeError>(output)
        };
        let output = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| RuntimeError::Timeout { op: "exec", after: timeout })??;
        let info = self.docker.inspect_exec(&exec.id).await.map_err(|e| map_err("inspect exec", id, e))?;
        let exit_code = info
            .exit_code
            .map(|c| i32::try_from(c).unwrap_or(i32::MAX))
            .ok_or_else(|| RuntimeError::Engine(format!("exec in {id}: the engine reported no exit code")))?;
        Ok(ExecResult { exit_code, output })
    }

    async fn ensure_network(&self, spec: &NetworkSpec) -> Result<(), RuntimeError> {
        if spec.name.is_empty() {
            return Err(RuntimeError::InvalidConfig("network name is empty".into()));
        }
        if spec.ingress {
            return Err(RuntimeError::Unsupported {
                runtime: "docker",
                op: "ensure_network",
                detail: format!(
                    "network {:?} is an ingress (routing mesh) network; publish ports in host mode",
                    spec.name
                ),
            });
        }
        let driver = if spec.driver.is_empty() { "bridge" } else { spec.driver.as_str() };
        if driver == "overlay" {
            // The spec alone lacks the allocation (subnet, gateway, VNI):
            // the network is made from a container's endpoint, in prepare.
            debug!(network = %spec.name, "overlay network: made when a container's endpoint needs it");
            return Ok(());
        }
        // The Engine allows two bridge networks with one name (and then
        // refuses to attach by that name as "ambiguous"), so creations are
        // serialised in this process, and a duplicate made by another
        // process is resolved the same way by everyone: the lowest id stays.
        let _guard = NETWORK_LOCK.lock().await;
        if !self.networks_named(&spec.name).await?.is_empty() {
            return self.dedupe_network(&spec.name).await;
        }
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert(labels::MANAGED.into(), "true".into());
        let req = NetworkCreateRequest {
            name: spec.name.clone(),
            driver: Some(driver.to_string()),
            internal: Some(spec.internal),
            attachable: Some(spec.attachable),
            ipam: (!spec.subnet.is_empty()).then(|| Ipam {
                config: Some(vec![IpamConfig { subnet: Some(spec.subnet.clone()), ..Default::default() }]),
                ..Default::default()
            }),
            labels: Some(labels),
            ..Default::default()
        };
        match self.docker.create_network(req).await {
            Ok(_) => info!(network = %spec.name, driver, "created network"),
            Err(e) if status_of(&e) == Some(409) => {} // created concurrently
            Err(e) => return Err(map_err("create network", &spec.name, e)),
        }
        self.dedupe_network(&spec.name).await
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        // By id: a name shared by duplicates would be "ambiguous".
        for id in self.networks_named(name).await? {
            match self.docker.remove_network(&id).await {
                Ok(()) => {}
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => return Err(map_err("remove network", name, e)),
            }
        }
        Ok(())
    }

    async fn ensure_volume(&self, spec: &VolumeSpec) -> Result<(), RuntimeError> {
        if spec.name.is_empty() {
            return Err(RuntimeError::InvalidConfig("volume name is empty".into()));
        }
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert(labels::MANAGED.into(), "true".into());
        let req = VolumeCreateRequest {
            name: Some(spec.name.clone()),
            driver: Some(if spec.driver.is_empty() { "local".into() } else { spec.driver.clone() }),
            driver_opts: Some(spec.driver_opts.clone().into_iter().collect()),
            labels: Some(labels),
            ..Default::default()
        };
        // Creating an existing volume returns it: idempotent by the engine.
        self.docker.create_volume(req).await.map_err(|e| map_err("create volume", &spec.name, e))?;
        Ok(())
    }

    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        match self.docker.remove_volume(name, None::<RemoveVolumeOptions>).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(map_err("remove volume", name, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_runtime_errors() {
        let e = BollardError::DockerResponseServerError { status_code: 404, message: "No such container: x".into() };
        assert_eq!(container_err("inspect", "x", e), RuntimeError::NotFound("x".into()));
        let e = BollardError::DockerResponseServerError { status_code: 500, message: "boom\n".into() };
        assert_eq!(map_err("start", "c1", e), RuntimeError::Engine("start c1: engine answered 500: boom".into()));
        let e = BollardError::SocketNotFoundError("/nope.sock".into());
        assert!(matches!(map_err("ping", "engine", e), RuntimeError::Unavailable(m) if m.contains("/nope.sock")));
        assert!(matches!(
            map_err("stop", "c", BollardError::RequestTimeoutError),
            RuntimeError::Timeout { op: "stop", .. }
        ));
    }
}
