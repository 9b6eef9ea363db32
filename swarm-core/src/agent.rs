//! The worker agent: runs the tasks the managers assign to its node.
//!
//! The agent opens a session with a [`Dispatcher`], heartbeats, and
//! receives its node's [`Assignments`]. Each assigned task gets a worker
//! that drives the [`Runtime`] through ACCEPTED, PREPARING, READY,
//! STARTING and RUNNING, then watches it: an exit becomes COMPLETE (code 0)
//! or FAILED (with the code); health probes (command, TCP, HTTP; interval,
//! timeout, retries, start period) that fail `retries` times in a row stop
//! the container and fail the task; a desired state past RUNNING stops the
//! container within its stop grace period (then kills it) and reports
//! SHUTDOWN. When a task is deleted from the store its container is
//! removed.
//!
//! Status reports are batched: whatever accumulated while the previous
//! report was in flight goes in the next one, and reports that could not be
//! delivered (session lost) are sent again on the next session.
//!
//! After a restart the agent lists the containers labelled with its node id
//! and re-adopts those whose task is still assigned to it; it removes the
//! others.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use swarm_core::agent::{Agent, AgentConfig};
//! use swarm_core::cluster::Cluster;
//! use swarm_core::manager::Manager;
//! use swarm_core::model::{NodeDescription, Resources, ServiceSpec, TaskState};
//! use swarm_core::scheduler::FirstFit;
//! use swarm_core::sim::SimRuntime;
//! use swarm_core::store::MemStore;
//!
//! let store = Arc::new(MemStore::new());
//! let manager = Manager::start(store.clone(), Box::new(FirstFit), Default::default());
//! let sim = SimRuntime::new("node-1");
//! let agent = Agent::new(
//!     AgentConfig {
//!         node_id: "node-1".into(),
//!         description: NodeDescription { hostname: "host-1".into(), resources: Resources::new(2_000_000_000, 4 << 30), ..Default::default() },
//!         addr: "10.0.0.1".into(),
//!     },
//!     Arc::new(sim.clone()),
//!     Arc::new(manager.dispatcher()),
//! );
//! tokio::spawn(agent.run()); // registers the node, then runs what it is assigned
//! Cluster::new(store.clone()).create_service(ServiceSpec::replicated("web", "nginx:1.27", 2)).await.unwrap();
//! tokio::time::sleep(Duration::from_secs(5)).await;
//! assert_eq!(store.state().tasks().filter(|t| t.status.state == TaskState::Running).count(), 2);
//! assert_eq!(sim.running().len(), 2, "two containers on the node's runtime");
//! # }
//! ```

use crate::dispatcher::{Assignments, DispatchError, Dispatcher, SessionInfo, SessionRequest, TaskStatusUpdate};
use crate::id::{NodeId, TaskId};
use crate::model::*;
use crate::overlay::OverlayView;
use crate::runtime::{
    ContainerConfig, ContainerState, ExitStatus, FileMaterial, NetworkEndpoint, ProbeResult, Runtime, RuntimeError,
    labels,
};
use crate::time;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// What an agent says about its node.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The node's id.
    pub node_id: NodeId,
    /// Hostname, platform, capacity, engine labels.
    pub description: NodeDescription,
    /// Address of the node.
    pub addr: String,
}

/// Why an agent stopped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AgentError {
    /// The node was removed from the cluster.
    #[error("node {0} was removed from the cluster")]
    Removed(String),
}

#[derive(Default)]
struct Refs {
    secrets: HashMap<String, Secret>,
    configs: HashMap<String, Config>,
}

/// A worker agent. See the [module docs](self).
pub struct Agent {
    config: AgentConfig,
    runtime: Arc<dyn Runtime>,
    dispatcher: Arc<dyn Dispatcher>,
    overlay: watch::Sender<OverlayView>,
}

struct Worker {
    tx: watch::Sender<Arc<Task>>,
    handle: JoinHandle<()>,
}

/// The running workers. Dropping the set (the agent stopped or was
/// aborted) aborts them, leaving their containers running, as a crashed
/// agent process would.
#[derive(Default)]
struct Workers(HashMap<TaskId, Worker>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in self.0.values() {
            w.handle.abort();
        }
    }
}

impl Agent {
    /// An agent for one node.
    pub fn new(config: AgentConfig, runtime: Arc<dyn Runtime>, dispatcher: Arc<dyn Dispatcher>) -> Self {
        Agent { config, runtime, dispatcher, overlay: watch::channel(OverlayView::default()).0 }
    }

    /// The node's overlay networks as the managers last sent them: feed it
    /// to the node's overlay data plane (`swarm_net::overlay`). It keeps
    /// its last value while the agent is disconnected, so the plane (like
    /// the tasks) keeps running.
    pub fn overlay(&self) -> watch::Receiver<OverlayView> {
        self.overlay.subscribe()
    }

    /// Runs until the node is removed. Session failures reconnect.
    pub async fn run(self) -> Result<(), AgentError> {
        let node = self.config.node_id.clone();
        let (status_tx, status_rx) = mpsc::unbounded_channel::<TaskStatusUpdate>();
        let (session_tx, session_rx) = watch::channel::<Option<String>>(None);
        let reporter = AbortOnDrop(tokio::spawn(report_loop(self.dispatcher.clone(), status_rx, session_rx)));
        let refs = Arc::new(Mutex::new(Refs::default()));
        let mut workers = Workers::default();
        let mut adopted_once = false;
        let result = loop {
            let session = match self
                .dispatcher
                .open_session(SessionRequest {
                    node_id: node.clone(),
                    description: self.config.description.clone(),
                    addr: self.config.addr.clone(),
                })
                .await
            {
                Ok(s) => s,
                Err(DispatchError::NodeRemoved(n)) => break Err(AgentError::Removed(n)),
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "cannot open a session; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            session_tx.send_replace(Some(session.session_id.clone()));
            let end = self.session(&session, &status_tx, &refs, &mut workers, &mut adopted_once).await;
            session_tx.send_replace(None);
            match end {
                Err(DispatchError::NodeRemoved(n)) => break Err(AgentError::Removed(n)),
                Err(e) => tracing::warn!(node = %node, error = %e, "session ended; reconnecting"),
                Ok(()) => tracing::warn!(node = %node, "assignment stream closed; reconnecting"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        drop(reporter);
        drop(workers);
        result
    }

    async fn session(
        &self,
        session: &SessionInfo,
        status_tx: &mpsc::UnboundedSender<TaskStatusUpdate>,
        refs: &Arc<Mutex<Refs>>,
        workers: &mut Workers,
        adopted_once: &mut bool,
    ) -> Result<(), DispatchError> {
        let mut stream = self.dispatcher.assignments(&session.session_id).await?;
        let mut last = 0;
        let mut period = session.heartbeat_period;
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let r = self.dispatcher.heartbeat(&session.session_id).await?;
                    if r.heartbeat_period != period && !r.heartbeat_period.is_zero() {
                        period = r.heartbeat_period;
                        beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    // A delta must follow the last message applied; a gap
                    // ends the session, and the next one starts with the
                    // full set.
                    if !msg.full && msg.applies_to != last {
                        return Err(DispatchError::AssignmentGap { expected: last, got: msg.applies_to });
                    }
                    last = msg.results_in;
                    let adopt = if msg.full && !*adopted_once {
                        *adopted_once = true;
                        self.adopt(&msg).await
                    } else {
                        HashMap::new()
                    };
                    self.apply(msg, adopt, status_tx, refs, workers);
                }
            }
        }
    }

    /// Matches the runtime's containers with the assigned tasks: returns
    /// the containers to re-adopt, removes the others.
    async fn adopt(&self, msg: &Assignments) -> HashMap<TaskId, String> {
        let mut selector = Labels::new();
        selector.insert(labels::NODE_ID.into(), self.config.node_id.to_string());
        let found = match self.runtime.list(&selector).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers for adoption");
                return HashMap::new();
            }
        };
        let assigned: HashMap<&str, &Task> = msg.tasks.iter().map(|t| (t.id.as_str(), t)).collect();
        let mut adopt = HashMap::new();
        for c in found {
            let task = c.labels.get(labels::TASK_ID).and_then(|id| assigned.get(id.as_str()));
            match task {
                Some(t) if t.desired_state <= TaskState::Running => {
                    tracing::info!(task = %t.id, container = %c.id, "re-adopting container");
                    adopt.insert(t.id.clone(), c.id);
                }
                _ => {
                    tracing::info!(container = %c.id, "removing container of a task no longer assigned here");
                    if c.state == ContainerState::Running {
                        let _ = self.runtime.stop(&c.id, Duration::from_secs(10)).await;
                    }
                    if let Err(e) = self.runtime.remove(&c.id).await {
                        tracing::warn!(container = %c.id, error = %e, "cannot remove container");
                    }
                }
            }
        }
        adopt
    }

    fn apply(
        &self,
        msg: Assignments,
        mut adopt: HashMap<TaskId, String>,
        status_tx: &mpsc::UnboundedSender<TaskStatusUpdate>,
        refs: &Arc<Mutex<Refs>>,
        workers: &mut Workers,
    ) {
        let workers = &mut workers.0;
        if let Some(view) = msg.overlay {
            let mut left = Vec::new();
            self.overlay.send_if_modified(|v| {
                let changed = *v != view;
                let names = |v: &OverlayView| v.networks.values().map(|n| n.name.clone()).collect::<Vec<_>>();
                let kept = names(&view);
                left = names(v).into_iter().filter(|n| !kept.contains(n)).collect();
                *v = view;
                changed
            });
            for name in left {
                tokio::spawn(remove_left_network(self.runtime.clone(), self.overlay.subscribe(), name));
            }
        }
        {
            let mut r = refs.lock().unwrap_or_else(|p| p.into_inner());
            for s in msg.secrets {
                r.secrets.insert(s.spec.name.clone(), s);
            }
            for c in msg.configs {
                r.configs.insert(c.spec.name.clone(), c);
            }
        }
        let mut gone: Vec<TaskId> = msg.removed;
        if msg.full {
            let keep: std::collections::HashSet<&TaskId> = msg.tasks.iter().map(|t| &t.id).collect();
            gone.extend(workers.keys().filter(|id| !keep.contains(id)).cloned());
        }
        for id in gone {
            if let Some(w) = workers.remove(&id) {
                // Dropping the sender tells the worker its task is gone.
                drop(w.tx);
                drop(w.handle);
            }
        }
        workers.retain(|_, w| !w.handle.is_finished());
        for task in msg.tasks {
            let task = Arc::new(task);
            match workers.get(&task.id) {
                Some(w) => {
                    let newer = task.meta.version >= w.tx.borrow().meta.version;
                    if newer {
                        w.tx.send_replace(task);
                    }
                }
                None => {
                    let (tx, rx) = watch::channel(task.clone());
                    let ctx = WorkerCtx {
                        runtime: self.runtime.clone(),
                        node: self.config.node_id.clone(),
                        status: status_tx.clone(),
                        refs: refs.clone(),
                        last: task.status.clone(),
                        networks: task.networks.clone(),
                    };
                    let adopted = adopt.remove(&task.id);
                    let handle = tokio::spawn(run_worker(ctx, rx, adopted));
                    workers.insert(task.id.clone(), Worker { tx, handle });
                }
            }
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn report_loop(
    dispatcher: Arc<dyn Dispatcher>,
    mut rx: mpsc::UnboundedReceiver<TaskStatusUpdate>,
    mut session: watch::Receiver<Option<String>>,
) {
    let mut pending: BTreeMap<TaskId, TaskStatusUpdate> = BTreeMap::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(u) => merge(&mut pending, u),
                None => return,
            }
        }
        while let Ok(u) = rx.try_recv() {
            merge(&mut pending, u);
        }
        let sid = session.borrow().clone();
        let Some(sid) = sid else {
            if session.changed().await.is_err() {
                return;
            }
            continue;
        };
        let batch: Vec<TaskStatusUpdate> = pending.values().cloned().collect();
        match dispatcher.update_task_status(&sid, batch).await {
            Ok(()) => pending.clear(),
            Err(e) => {
                tracing::warn!(error = %e, "status report failed; will retry");
                tokio::select! {
                    changed = session.changed() => if changed.is_err() {
                        return; // the agent is gone
                    },
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

fn merge(pending: &mut BTreeMap<TaskId, TaskStatusUpdate>, u: TaskStatusUpdate) {
    match pending.get_mut(&u.task_id) {
        Some(p) => {
            if u.networks.is_some() {
                p.networks = u.networks.clone();
            }
            p.status = u.status;
        }
        None => {
            pending.insert(u.task_id.clone(), u);
        }
    }
}

struct WorkerCtx {
    runtime: Arc<dyn Runtime>,
    node: NodeId,
    status: mpsc::UnboundedSender<TaskStatusUpdate>,
    refs: Arc<Mutex<Refs>>,
    last: TaskStatus,
    networks: Vec<NetworkAttachment>,
}

impl WorkerCtx {
    fn report(&mut self, task: &Task, f: impl FnOnce(&mut TaskStatus)) {
        let mut s = self.last.clone();
        f(&mut s);
        if s == self.last || !self.last.state.can_move_to(s.state) {
            return;
        }
        s.timestamp = time::now();
        self.last = s.clone();
        let _ = self.status.send(TaskStatusUpdate { task_id: task.id.clone(), status: s, networks: None });
    }

    fn report_state(&mut self, task: &Task, state: TaskState, message: &str) {
        self.report(task, |s| {
            s.state = state;
            s.message = message.to_string();
        });
    }

    fn report_networks(&mut self, task: &Task, addrs: &[std::net::IpAddr]) {
        let mut nets = self.networks.clone();
        if nets.is_empty() {
            nets.push(NetworkAttachment { network: "default".into(), addresses: Vec::new(), overlay: None });
        }
        // Overlay attachments keep the addresses the manager allocated;
        // the others get what the runtime reports.
        for n in nets.iter_mut().filter(|n| n.overlay.is_none()) {
            n.addresses = addrs.iter().map(|a| a.to_string()).collect();
        }
        let _ = self.status.send(TaskStatusUpdate {
            task_id: task.id.clone(),
            status: self.last.clone(),
            networks: Some(nets),
        });
    }

    fn config(&self, task: &Task) -> Result<ContainerConfig, String> {
        let refs = self.refs.lock().unwrap_or_else(|p| p.into_inner());
        let c = &task.spec.container;
        let mut secrets = Vec::new();
        for r in &c.secrets {
            let s = refs
                .secrets
                .get(&r.secret_name)
                .ok_or_else(|| format!("secret {:?} was not delivered to this node", r.secret_name))?;
            secrets.push(FileMaterial {
                name: r.secret_name.clone(),
                path: r.path(),
                data: s.spec.data.clone(),
                uid: r.target.uid.clone(),
                gid: r.target.gid.clone(),
                mode: r.target.mode,
            });
        }
        let mut configs = Vec::new();
        for r in &c.configs {
            let cf = refs
                .configs
                .get(&r.config_name)
                .ok_or_else(|| format!("config {:?} was not delivered to this node", r.config_name))?;
            configs.push(FileMaterial {
                name: r.config_name.clone(),
                path: r.path(),
                data: SecretBytes(cf.spec.data.clone()),
                uid: r.target.uid.clone(),
                gid: r.target.gid.clone(),
                mode: r.target.mode,
            });
        }
        let mut endpoints = Vec::new();
        for n in &task.networks {
            if let Some(e) = NetworkEndpoint::from_attachment(n, vec![task.service_name.clone()]) {
                endpoints.push(e?);
            }
        }
        let mut l = c.labels.clone();
        l.extend(ContainerConfig::task_labels(task, &self.node));
        let mut spec = c.clone();
        for v in spec.env.iter_mut().chain(spec.hostname.iter_mut()) {
            *v = expand_template(v, task, &self.node);
        }
        Ok(ContainerConfig {
            name: task.name(),
            task_id: task.id.clone(),
            service_id: task.service_id.clone(),
            service_name: task.service_name.clone(),
            slot: task.slot,
            node_id: self.node.clone(),
            spec,
            resources: task.spec.resources.clone(),
            endpoints,
            networks: task
                .networks
                .iter()
                .filter(|n| n.overlay.is_none())
                .map(|n| NetworkAttachmentConfig {
                    target: n.network.clone(),
                    aliases: vec![task.service_name.clone()],
                })
                .collect(),
            host_ports: task.endpoint.ports.iter().filter(|p| p.publish_mode == PublishMode::Host).cloned().collect(),
            secrets,
            configs,
            labels: l,
        })
    }
}

/// How long the agent keeps trying to remove the runtime's network of an
/// overlay network the node left (its last containers may still be
/// stopping), and how often.
const NETWORK_REMOVAL_TRIES: u32 = 24;
const NETWORK_REMOVAL_EVERY: Duration = Duration::from_secs(5);

/// Removes the runtime's network for overlay network `name`, which left
/// the node's view: the runtime refuses while a container still uses it,
/// so it is tried again every few seconds for two minutes, and given up
/// as soon as the network is back in the view.
async fn remove_left_network(runtime: Arc<dyn Runtime>, view: watch::Receiver<OverlayView>, name: String) {
    for _ in 0..NETWORK_REMOVAL_TRIES {
        if view.borrow().networks.values().any(|n| n.name == name) {
            return;
        }
        match runtime.remove_network(&name).await {
            Ok(()) => {
                tracing::info!(network = %name, "removed the network of an overlay network this node left");
                return;
            }
            Err(e) => tracing::debug!(network = %name, error = %e, "cannot remove the network yet; retrying"),
        }
        tokio::time::sleep(NETWORK_REMOVAL_EVERY).await;
    }
    tracing::warn!(network = %name, "gave up removing the network of an overlay network this node left");
}

/// Expands Swarm's service templates in `s`: `{{.Task.ID}}`,
/// `{{.Task.Name}}`, `{{.Task.Slot}}`, `{{.Service.ID}}`,
/// `{{.Service.Name}}`, `{{.Node.ID}}`. Anything else is left as written.
pub fn expand_template(s: &str, task: &Task, node: &NodeId) -> String {
    if !s.contains("{{") {
        return s.to_string();
    }
    let slot = task.slot.map(|n| n.to_string()).unwrap_or_default();
    [
        ("{{.Task.ID}}", task.id.as_str()),
        ("{{.Task.Name}}", &task.name()),
        ("{{.Task.Slot}}", &slot),
        ("{{.Service.ID}}", task.service_id.as_str()),
        ("{{.Service.Name}}", &task.service_name),
        ("{{.Node.ID}}", node.as_str()),
    ]
    .iter()
    .fold(s.to_string(), |acc, (k, v)| acc.replace(k, v))
}

/// Waits until the task is deleted (sender dropped) or marked for
/// removal, then removes its container.
async fn await_removal(ctx: &WorkerCtx, rx: &mut watch::Receiver<Arc<Task>>, container: Option<&str>) {
    loop {
        if rx.borrow().desired_state >= TaskState::Remove {
            break;
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
    if let Some(id) = container {
        if let Ok(s) = ctx.runtime.inspect(id).await {
            if s.state == ContainerState::Running {
                let grace = rx.borrow().spec.container.effective_stop_grace();
                let _ = ctx.runtime.stop(id, grace).await;
            }
        }
        if let Err(e) = ctx.runtime.remove(id).await {
            tracing::debug!(container = id, error = %e, "remove failed");
        }
    }
}

async fn run_worker(mut ctx: WorkerCtx, mut rx: watch::Receiver<Arc<Task>>, adopted: Option<String>) {
    let task = rx.borrow().clone();
    if task.status.state.is_terminal() {
        await_removal(&ctx, &mut rx, adopted.as_deref().or(task.status.container_id.as_deref())).await;
        return;
    }
    let container = match adopted {
        Some(id) => id,
        None => match start_task(&mut ctx, &task, &rx).await {
            Some(id) => id,
            None => {
                let id = ctx.last.container_id.clone();
                await_removal(&ctx, &mut rx, id.as_deref()).await;
                return;
            }
        },
    };
    monitor(&mut ctx, &mut rx, &container).await;
    await_removal(&ctx, &mut rx, Some(&container)).await;
}

/// Drives a fresh task to RUNNING. Returns its container, or `None` when
/// it ended before running (its status says why).
async fn start_task(ctx: &mut WorkerCtx, task: &Task, rx: &watch::Receiver<Arc<Task>>) -> Option<String> {
    if task.desired_state > TaskState::Running {
        ctx.report_state(task, TaskState::Shutdown, "shutdown before start");
        return None;
    }
    ctx.report_state(task, TaskState::Accepted, "accepted");
    ctx.report_state(task, TaskState::Preparing, "preparing");
    let cfg = match ctx.config(task) {
        Ok(c) => c,
        Err(e) => {
            ctx.report(task, |s| {
                s.state = TaskState::Rejected;
                s.message = "preparing".into();
                s.err = Some(e);
            });
            return None;
        }
    };
    if let Err(e) = ctx.runtime.prepare(&cfg).await {
        ctx.report(task, |s| {
            s.state = TaskState::Rejected;
            s.message = "preparing".into();
            s.err = Some(e.to_string());
        });
        return None;
    }
    let id = match ctx.runtime.create(&cfg).await {
        Ok(id) => id,
        Err(e) => {
            ctx.report(task, |s| {
                s.state = TaskState::Rejected;
                s.message = "creating".into();
                s.err = Some(e.to_string());
            });
            return None;
        }
    };
    ctx.report(task, |s| {
        s.state = TaskState::Ready;
        s.message = "created".into();
        s.container_id = Some(id.clone());
    });
    if rx.borrow().desired_state > TaskState::Running {
        ctx.report_state(task, TaskState::Shutdown, "shutdown before start");
        return Some(id);
    }
    ctx.report_state(task, TaskState::Starting, "starting");
    if let Err(e) = ctx.runtime.start(&id).await {
        ctx.report(task, |s| {
            s.state = TaskState::Failed;
            s.message = "starting".into();
            s.err = Some(e.to_string());
        });
        return Some(id);
    }
    let addrs = ctx.runtime.inspect(&id).await.map(|s| s.addresses).unwrap_or_default();
    let has_check = task.spec.container.health_check.is_some();
    ctx.report(task, |s| {
        s.state = TaskState::Running;
        s.message = "started".into();
        s.started_at = Some(time::now());
        s.health = has_check.then_some(HealthState::Starting);
    });
    ctx.report_networks(task, &addrs);
    Some(id)
}

/// Reports how a container ended.
fn report_exit(ctx: &mut WorkerCtx, task: &Task, desired: TaskState, exit: Result<ExitStatus, RuntimeError>) {
    match exit {
        Ok(e) if desired > TaskState::Running => ctx.report(task, |s| {
            s.state = TaskState::Shutdown;
            s.message = "shutdown".into();
            s.exit_code = Some(e.code);
        }),
        Ok(e) if e.code == 0 => ctx.report(task, |s| {
            s.state = TaskState::Complete;
            s.message = "finished".into();
            s.exit_code = Some(0);
        }),
        Ok(e) => ctx.report(task, |s| {
            s.state = TaskState::Failed;
            s.message = "started".into();
            s.exit_code = Some(e.code);
            s.err = Some(match e.error {
                Some(err) => format!("task: non-zero exit ({}): {err}", e.code),
                None => format!("task: non-zero exit ({})", e.code),
            });
        }),
        Err(err) => ctx.report(task, |s| {
            s.state = TaskState::Failed;
            s.err = Some(format!("lost the container: {err}"));
        }),
    }
}

/// Watches a running container until its task ends.
async fn monitor(ctx: &mut WorkerCtx, rx: &mut watch::Receiver<Arc<Task>>, id: &str) {
    let task = rx.borrow().clone();
    if ctx.last.state.is_terminal() {
        return;
    }
    // An adopted container: report what it is doing now.
    if ctx.last.state < TaskState::Running {
        match ctx.runtime.inspect(id).await {
            Ok(s) if s.state == ContainerState::Running => {
                let has_check = task.spec.container.health_check.is_some();
                ctx.report(&task, |st| {
                    st.state = TaskState::Running;
                    st.message = "started".into();
                    st.container_id = Some(id.to_string());
                    st.started_at = Some(time::now());
                    st.health = has_check.then_some(HealthState::Starting);
                });
                ctx.report_networks(&task, &s.addresses);
            }
            Ok(_) => {}
            Err(e) => {
                ctx.report(&task, |st| {
                    st.state = TaskState::Failed;
                    st.err = Some(e.to_string());
                });
                return;
            }
        }
    }
    let check = task.spec.container.health_check.clone();
    let grace = task.spec.container.effective_stop_grace();
    let interval =
        check.as_ref().map(|c| c.interval.to_std()).filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs(30));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let started = tokio::time::Instant::now();
    let mut failures = 0u32;
    let runtime = ctx.runtime.clone();
    let wait = runtime.wait(id);
    tokio::pin!(wait);
    loop {
        tokio::select! {
            exit = &mut wait => {
                let desired = rx.borrow().desired_state;
                report_exit(ctx, &task, desired, exit);
                return;
            }
            changed = rx.changed() => {
                let gone = changed.is_err();
                if gone || rx.borrow().desired_state > TaskState::Running {
                    if let Err(e) = ctx.runtime.stop(id, grace).await {
                        tracing::warn!(container = id, error = %e, "stop failed; killing");
                        let _ = ctx.runtime.kill(id).await;
                    }
                    let code = ctx.runtime.inspect(id).await.ok().and_then(|s| s.exit_code);
                    ctx.report(&task, |s| {
                        s.state = TaskState::Shutdown;
                        s.message = "shutdown".into();
                        s.exit_code = code;
                    });
                    return;
                }
            }
            _ = ticker.tick(), if check.is_some() => {
                let Some(check) = &check else { continue };
                let timeout = Some(check.timeout.to_std()).filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs(30));
                let result = match tokio::time::timeout(timeout, ctx.runtime.probe(id, &check.probe, timeout)).await {
                    Ok(r) => r,
                    Err(_) => ProbeResult::Unhealthy(format!("probe timed out after {timeout:?}")),
                };
                match result {
                    ProbeResult::Healthy => {
                        failures = 0;
                        ctx.report(&task, |s| s.health = Some(HealthState::Healthy));
                    }
                    ProbeResult::Unhealthy(why) => {
                        if started.elapsed() < check.start_period.to_std() {
                            continue;
                        }
                        failures += 1;
                        if failures >= check.retries.max(1) {
                            // A probe fails when the container has just
                            // exited: that is an exit, not ill health.
                            if let Ok(st) = ctx.runtime.inspect(id).await {
                                if st.state != ContainerState::Running {
                                    let desired = rx.borrow().desired_state;
                                    let exit = ExitStatus { code: st.exit_code.unwrap_or(-1), error: st.error };
                                    report_exit(ctx, &task, desired, Ok(exit));
                                    return;
                                }
                            }
                            tracing::info!(task = %task.id, reason = %why, "container unhealthy; stopping it");
                            ctx.report(&task, |s| s.health = Some(HealthState::Unhealthy));
                            let _ = ctx.runtime.stop(id, grace).await;
                            ctx.report(&task, |s| {
                                s.state = TaskState::Failed;
                                s.message = "unhealthy container".into();
                                s.err = Some(format!("task: unhealthy container: {why}"));
                            });
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_like_swarms() {
        let task = Task {
            id: "abc123".into(),
            service_id: "svc1".into(),
            service_name: "web".into(),
            slot: Some(3),
            ..Default::default()
        };
        let node = NodeId::new("node-7");
        assert_eq!(
            expand_template("TASK={{.Task.ID}} slot={{.Task.Slot}} on {{.Node.ID}} of {{.Service.Name}}", &task, &node),
            "TASK=abc123 slot=3 on node-7 of web"
        );
        assert_eq!(expand_template("{{.Task.Name}}", &task, &node), "web.3.abc123");
        assert_eq!(expand_template("{{.Unknown}} stays", &task, &node), "{{.Unknown}} stays");
    }
}
