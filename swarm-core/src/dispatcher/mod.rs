//! The agent <-> manager session: the [`Dispatcher`] trait and
//! [`LocalDispatcher`], its in-process implementation.
//!
//! A worker opens a session ([`Dispatcher::open_session`]), then heartbeats
//! at the period the manager gives, streams its node's [`Assignments`] and
//! sends [`TaskStatusUpdate`]s. Every request and response is a plain serde
//! type, so a network transport (gRPC or framed TCP over mutual TLS) can
//! carry the same messages later; nothing here relies on shared memory.
//!
//! The dispatcher also keeps node health: a node whose heartbeats stop for
//! `heartbeat_period * grace_periods` (Swarm: 5 s * 3) is marked DOWN in the
//! store, which makes the orchestrators replace its tasks. Heartbeats are
//! kept in the leader's memory ([`sessions::SessionTable`], a pure
//! structure), not written to the store, as in SwarmKit; [`NodeHealth`] is
//! the controller that marks silent nodes down, woken when the first of
//! them can expire.
//!
//! Assignments carry a sequence, as SwarmKit's incremental assignments do:
//! each message says which message it follows (`applies_to`) and which it
//! results in (`results_in`); a worker that sees a gap (a message that does
//! not follow the last one it applied) ends the session and opens a new
//! one, which starts with the full set.
//!
//! Status reports are group-committed ([`reports`]): the reports of every
//! session that arrive while a write is in flight share the next write.
//!
//! Secrets and configs travel with the assignments, and only to the node
//! whose tasks reference them.
//!
//! A session id is what a worker presents on every later call, so it is a
//! credential: 128 bits from the OS random source ([`new_session_id`]),
//! never from a seeded generator, so that knowing a test's or a manager's
//! seed does not let anyone guess a live session.
//!
//! A worker's side of a session, by hand (the [`Agent`](crate::agent::Agent)
//! does this for you):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::sync::Arc;
//! use swarm_core::dispatcher::{Dispatcher, SessionRequest};
//! use swarm_core::manager::Manager;
//! use swarm_core::model::NodeDescription;
//! use swarm_core::scheduler::FirstFit;
//! use swarm_core::store::MemStore;
//!
//! let store = Arc::new(MemStore::new());
//! let manager = Manager::start(store.clone(), Box::new(FirstFit), Default::default());
//! let d = manager.dispatcher();
//! let req = SessionRequest { node_id: "node-1".into(), description: NodeDescription::default(), addr: "10.0.0.1".into() };
//! let session = d.open_session(req).await.unwrap(); // the node is READY in the store
//! let mut assignments = d.assignments(&session.session_id).await.unwrap();
//! let first = assignments.next().await.unwrap();
//! assert!(first.full && first.tasks.is_empty()); // nothing to run yet
//! d.heartbeat(&session.session_id).await.unwrap(); // every heartbeat_period
//! assert!(d.heartbeat("guessed").await.is_err());
//! # }
//! ```

use crate::id::{NodeId, TaskId};
use crate::model::*;
use crate::overlay::{OverlayView, overlay_relevant};
use crate::state::{Action, Change, Op, State, Transaction};
use crate::store::{Store, StoreError};
use crate::time::{self, Timestamp};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub mod follow;
pub mod reports;
pub mod sessions;

pub use follow::LeaderDispatcher;

use crate::controller::{Context, Controller, Interest, Plan};
use reports::StatusWriter;
use sessions::SessionTable;

/// A worker asks for a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRequest {
    /// The node's id.
    pub node_id: NodeId,
    /// What the node reports about itself.
    pub description: NodeDescription,
    /// The address others reach it at.
    pub addr: String,
}

/// The manager's answer to [`SessionRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Identifies the session in later calls.
    pub session_id: String,
    /// How often to heartbeat.
    pub heartbeat_period: Duration,
}

/// Answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// How often to heartbeat from now on.
    pub heartbeat_period: Duration,
}

/// A task's observed status, as the worker reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskStatusUpdate {
    /// The task.
    pub task_id: TaskId,
    /// Its new status.
    pub status: TaskStatus,
    /// Its network addresses, when known.
    pub networks: Option<Vec<NetworkAttachment>>,
}

/// What the manager wants a node to run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Assignments {
    /// True when `tasks` is the node's whole set (first message after
    /// subscribing): tasks not in it are not the node's any more.
    pub full: bool,
    /// The `results_in` of the message this one follows (0 before the
    /// first). A worker that last applied another one missed a message.
    #[serde(default)]
    pub applies_to: u64,
    /// This message's number in the session, for the next `applies_to`.
    #[serde(default)]
    pub results_in: u64,
    /// Tasks created or changed (status ASSIGNED or later).
    pub tasks: Vec<Task>,
    /// Tasks deleted from the store: remove their containers.
    pub removed: Vec<TaskId>,
    /// Secrets the tasks above reference.
    pub secrets: Vec<Secret>,
    /// Configs the tasks above reference.
    pub configs: Vec<Config>,
    /// The node's overlay networks, when they changed (always in a full
    /// set): the node programs its overlay data plane from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<OverlayView>,
}

/// Why a session call failed. Serializable so that a network transport
/// can carry it to the worker unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum DispatchError {
    /// The session is unknown or expired: open a new one.
    #[error("session {0} is unknown or expired")]
    InvalidSession(String),
    /// The node may not run tasks (it was removed).
    #[error("node {0} is not a member of the cluster")]
    NodeRemoved(String),
    /// The manager's store failed.
    #[error("store error: {0}")]
    Store(String),
    /// The manager is gone.
    #[error("dispatcher unavailable: {0}")]
    Unavailable(String),
    /// An assignment message did not follow the last one the worker
    /// applied: it missed one and must start again from a full set.
    #[error("assignment message applies to {got} but the last one applied was {expected}: a message was missed")]
    AssignmentGap {
        /// The `results_in` of the last message applied.
        expected: u64,
        /// The `applies_to` of the message received.
        got: u64,
    },
}

impl From<StoreError> for DispatchError {
    fn from(e: StoreError) -> Self {
        DispatchError::Store(e.to_string())
    }
}

/// A stream of [`Assignments`].
pub struct AssignmentStream {
    rx: mpsc::UnboundedReceiver<Assignments>,
}

impl AssignmentStream {
    /// Wraps a receiver (for dispatcher implementations).
    pub fn new(rx: mpsc::UnboundedReceiver<Assignments>) -> Self {
        AssignmentStream { rx }
    }
    /// The next message; `None` when the session ended.
    pub async fn next(&mut self) -> Option<Assignments> {
        self.rx.recv().await
    }
}

/// The manager side of a worker's session. See the [module docs](self).
#[async_trait]
pub trait Dispatcher: Send + Sync + 'static {
    /// Registers the node (creating or refreshing its Node object, marking
    /// it READY) and opens a session.
    async fn open_session(&self, req: SessionRequest) -> Result<SessionInfo, DispatchError>;
    /// Keeps the session (and the node) alive.
    async fn heartbeat(&self, session_id: &str) -> Result<HeartbeatResponse, DispatchError>;
    /// Applies the worker's task status reports. Reports that would move a
    /// task backwards, or about tasks not on the session's node, are
    /// ignored. Returns once they are committed ([`LocalDispatcher`]
    /// commits the reports of many sessions together: [`reports`]).
    async fn update_task_status(&self, session_id: &str, updates: Vec<TaskStatusUpdate>) -> Result<(), DispatchError>;
    /// The node's assignments: first the whole set, then changes.
    async fn assignments(&self, session_id: &str) -> Result<AssignmentStream, DispatchError>;
}

/// A session's assignment stream: where to send, and the number of the
/// last message sent.
struct Subscriber {
    sender: mpsc::UnboundedSender<Assignments>,
    seq: u64,
    /// The overlay view last sent (sent again only when it changes).
    overlay: OverlayView,
}

impl Subscriber {
    /// Numbers `msg` after the previous one and sends it.
    fn send(&mut self, mut msg: Assignments) {
        msg.applies_to = self.seq;
        self.seq += 1;
        msg.results_in = self.seq;
        let _ = self.sender.send(msg);
    }
}

struct Inner {
    /// Sessions and when each node was last heard from.
    table: SessionTable,
    /// Assignment streams, by session id.
    subscribers: HashMap<String, Subscriber>,
    /// Every node's state as the router last saw it in the store, so that a
    /// heartbeat (the hottest call) needs no store read.
    node_states: HashMap<NodeId, NodeState>,
    /// The cluster's heartbeat settings, kept current by the router.
    config: DispatcherConfig,
    /// The router has read `config` from the store at least once.
    refreshed: bool,
}

type Subscribe = (String, mpsc::UnboundedSender<Assignments>);

/// The in-process dispatcher. Run [`LocalDispatcher::run`] to route
/// assignments and watch heartbeats.
#[derive(Clone)]
pub struct LocalDispatcher {
    store: Arc<dyn Store>,
    inner: Arc<Mutex<Inner>>,
    subscribe_tx: mpsc::UnboundedSender<Subscribe>,
    subscribe_rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Subscribe>>>,
    /// Writes status reports, many sessions' at a time ([`reports`]).
    reports: StatusWriter,
}

fn is_assigned(t: &Task) -> bool {
    t.node_id.is_some() && t.status.state >= TaskState::Assigned
}

impl LocalDispatcher {
    /// A dispatcher over `store`. Session ids come from the OS random
    /// source (see the [module docs](self)).
    pub fn new(store: Arc<dyn Store>) -> Self {
        let (subscribe_tx, subscribe_rx) = mpsc::unbounded_channel();
        LocalDispatcher {
            reports: StatusWriter::new(store.clone()),
            store,
            subscribe_tx,
            subscribe_rx: Arc::new(tokio::sync::Mutex::new(subscribe_rx)),
            inner: Arc::new(Mutex::new(Inner {
                table: SessionTable::default(),
                subscribers: HashMap::new(),
                node_states: HashMap::new(),
                config: DispatcherConfig::default(),
                refreshed: false,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn node_of(&self, session_id: &str) -> Result<NodeId, DispatchError> {
        self.lock()
            .table
            .node_of(session_id)
            .cloned()
            .ok_or_else(|| DispatchError::InvalidSession(session_id.to_string()))
    }

    /// Nodes with an open session.
    pub fn connected_nodes(&self) -> Vec<NodeId> {
        self.lock().table.nodes().cloned().collect()
    }

    /// Ends a node's session (as if its connection dropped). The node is
    /// marked down if it does not come back within the heartbeat grace.
    pub fn drop_session(&self, node: &NodeId) {
        let mut g = self.lock();
        if let Some(sid) = g.table.close(node) {
            g.subscribers.remove(&sid);
        }
    }

    /// The node-health controller of this dispatcher, for the manager to
    /// run while it leads.
    pub fn node_health(&self) -> NodeHealth {
        NodeHealth { dispatcher: self.clone(), started: false }
    }

    /// Takes node states and heartbeat settings from a whole snapshot.
    fn refresh(&self, state: &State) {
        let mut g = self.lock();
        g.node_states = state.nodes().map(|n| (n.id.clone(), n.status.state)).collect();
        g.config = state.cluster_spec().dispatcher;
        g.refreshed = true;
    }

    /// Keeps node states and heartbeat settings in step with a change.
    fn observe(&self, change: &Change) {
        let mut g = self.lock();
        for ev in &change.events {
            match (&ev.object, ev.action) {
                (Object::Node(n), Action::Delete) => {
                    g.node_states.remove(&n.id);
                    forget(&mut g, &n.id);
                }
                (Object::Node(n), _) => {
                    g.node_states.insert(n.id.clone(), n.status.state);
                }
                (Object::Cluster(_), Action::Delete) => g.config = DispatcherConfig::default(),
                (Object::Cluster(c), _) => g.config = c.spec.dispatcher,
                _ => {}
            }
        }
    }

    /// Routes assignments and marks silent nodes down, until the store
    /// fails. Run it in its own task (one at a time: a second call waits).
    pub async fn run(&self) -> Result<(), StoreError> {
        let mut subscriptions = self.subscribe_rx.lock().await;
        loop {
            let state = self.store.snapshot().await?;
            self.refresh(&state);
            let mut watch = self.store.watch(state.revision()).await?;
            loop {
                tokio::select! {
                    change = watch.next() => match change {
                        Ok(change) => {
                            self.observe(&change);
                            self.route(&change).await;
                        }
                        Err(StoreError::Lagged { .. } | StoreError::Compacted { .. }) => {
                            self.resend_full().await;
                            break;
                        }
                        Err(e) => return Err(e),
                    },
                    Some((session_id, sender)) = subscriptions.recv() => self.subscribe(session_id, sender).await,
                }
            }
        }
    }

    async fn route(&self, change: &Change) {
        let mut per_node: BTreeMap<NodeId, Assignments> = BTreeMap::new();
        for ev in &change.events {
            let Some(task) = ev.object.as_task() else { continue };
            let Some(node) = &task.node_id else { continue };
            let msg = per_node.entry(node.clone()).or_default();
            match ev.action {
                Action::Delete => msg.removed.push(task.id.clone()),
                _ if is_assigned(task) && !is_worker_report(ev) => msg.tasks.push(task.clone()),
                _ => {}
            }
        }
        let overlay = self.overlay_views(change).await;
        if per_node.is_empty() && overlay.is_none() {
            return;
        }
        let needs_refs = per_node.values().any(|m| m.tasks.iter().any(has_refs));
        let mut state = None;
        if let Some((s, views)) = overlay {
            for (node, view) in views {
                per_node.entry(node).or_default().overlay = Some(view);
            }
            state = Some(s);
        }
        if needs_refs && state.is_none() {
            state = self.store.snapshot().await.ok();
        }
        let state = if needs_refs { state } else { None };
        let mut g = self.lock();
        let g = &mut *g;
        for (node, mut msg) in per_node {
            if msg.tasks.is_empty() && msg.removed.is_empty() && msg.overlay.is_none() {
                continue;
            }
            if let Some(state) = &state {
                attach_refs(state, &mut msg);
            }
            if let Some(sub) = g.table.session_of(&node).and_then(|sid| g.subscribers.get_mut(sid)) {
                if let Some(view) = &msg.overlay {
                    if *view == sub.overlay {
                        msg.overlay = None;
                        if msg.tasks.is_empty() && msg.removed.is_empty() {
                            continue;
                        }
                    } else {
                        sub.overlay = view.clone();
                    }
                }
                sub.send(msg);
            }
        }
    }

    /// Every connected node's overlay view after `change`, when it may
    /// have changed one (see [`overlay_relevant`]).
    async fn overlay_views(&self, change: &Change) -> Option<(Arc<State>, BTreeMap<NodeId, OverlayView>)> {
        if !overlay_relevant(change) {
            return None;
        }
        let state = self.store.snapshot().await.ok()?;
        let nodes = self.connected_nodes();
        let views = OverlayView::for_nodes(&state, &nodes);
        Some((state, views))
    }

    /// Sends the full set, then attaches the sender for deltas. Done by the
    /// router task so no delta can overtake the full set.
    async fn subscribe(&self, session_id: String, sender: mpsc::UnboundedSender<Assignments>) {
        let Ok(state) = self.store.snapshot().await else { return };
        let mut g = self.lock();
        let Some(node) = g.table.node_of(&session_id).cloned() else { return };
        let msg = full_set(&state, &node);
        let mut sub = Subscriber { sender, seq: 0, overlay: msg.overlay.clone().unwrap_or_default() };
        sub.send(msg);
        g.subscribers.insert(session_id, sub);
    }

    async fn resend_full(&self) {
        let Ok(state) = self.store.snapshot().await else { return };
        let mut g = self.lock();
        let g = &mut *g;
        for (sid, sub) in g.subscribers.iter_mut() {
            if let Some(node) = g.table.node_of(sid) {
                let msg = full_set(&state, node);
                sub.overlay = msg.overlay.clone().unwrap_or_default();
                sub.send(msg);
            }
        }
    }
}

/// Whether `ev` only records a status past ASSIGNED, which the node's own
/// worker reported: nothing for the worker to act on, so it is not echoed
/// back to it (SwarmKit's dispatcher skips these too). Statuses up to
/// ASSIGNED are the managers' and are always sent; so is any other change
/// of the task (desired state, spec, networks...).
fn is_worker_report(ev: &crate::state::Event) -> bool {
    let (Object::Task(new), Some(Object::Task(old))) = (&ev.object, &ev.old) else { return false };
    if new.status.state <= TaskState::Assigned {
        return false;
    }
    // Every field but `meta` and `status`, named so that a new field of
    // Task has to be considered here.
    let Task {
        id,
        meta: _,
        service_id,
        service_name,
        slot,
        node_id,
        spec,
        spec_version,
        job_iteration,
        endpoint,
        desired_state,
        status: _,
        networks,
    } = new;
    *id == old.id
        && *service_id == old.service_id
        && *service_name == old.service_name
        && *slot == old.slot
        && *node_id == old.node_id
        && *spec_version == old.spec_version
        && *job_iteration == old.job_iteration
        && *desired_state == old.desired_state
        && *networks == old.networks
        && *endpoint == old.endpoint
        && *spec == old.spec
}

/// Stops tracking `node` and ends its session and assignment stream.
fn forget(g: &mut Inner, node: &NodeId) {
    if let Some(sid) = g.table.session_of(node).map(str::to_string) {
        g.subscribers.remove(&sid);
    }
    g.table.forget(node);
}

/// Node health on the controller runtime: marks DOWN every ready node not
/// heard from for the cluster's heartbeat grace, and asks to be woken when
/// the next one can expire. Made by [`LocalDispatcher::node_health`]; the
/// manager runs it only while it leads. On its first reconcile every ready
/// node gets a whole grace from then (a new leader has heard from no one).
pub struct NodeHealth {
    dispatcher: LocalDispatcher,
    started: bool,
}

impl Controller for NodeHealth {
    type Key = ();
    fn name(&self) -> &str {
        "node-health"
    }
    fn keys(&self, _: &State) -> Vec<()> {
        vec![()]
    }
    fn interest(&self, change: &Change) -> Interest<()> {
        let relevant = change.events.iter().any(|e| matches!(e.object, Object::Node(_) | Object::Cluster(_)));
        if relevant { Interest::Keys(vec![()]) } else { Interest::nothing() }
    }
    fn reconcile(&mut self, cx: &mut Context<'_>, _: &()) -> Plan {
        let grace = cx.state.cluster_spec().dispatcher.grace();
        let mut g = self.dispatcher.lock();
        if !self.started {
            self.started = true;
            g.table.grant_grace(cx.now);
        }
        for n in cx.state.nodes().filter(|n| n.status.state == NodeState::Ready) {
            g.table.track(&n.id, cx.now);
        }
        let msg = format!("heartbeat failure: no heartbeat for more than {grace:?}");
        let mut ops = Vec::new();
        for id in g.table.silent(cx.now, grace) {
            match cx.state.node(&id) {
                Some(n) if n.status.state == NodeState::Ready => {
                    tracing::warn!(node = %id, "{msg}");
                    // Its session ends now: a node that comes back opens a
                    // new one, which marks it ready again.
                    if let Some(sid) = g.table.close(&id) {
                        g.subscribers.remove(&sid);
                    }
                    let mut n = n.as_ref().clone();
                    n.status.state = NodeState::Down;
                    n.status.message = msg.clone();
                    ops.push(Op::Update(Object::Node(n)));
                }
                // Down already, or gone: nothing to watch any more.
                _ => forget(&mut g, &id),
            }
        }
        Plan { ops, wake_at: g.table.next_expiry(cx.now, grace) }
    }
}

fn has_refs(t: &Task) -> bool {
    !t.spec.container.secrets.is_empty() || !t.spec.container.configs.is_empty()
}

fn attach_refs(state: &State, msg: &mut Assignments) {
    let mut secrets = BTreeSet::new();
    let mut configs = BTreeSet::new();
    for t in &msg.tasks {
        if t.status.state.is_terminal() {
            continue;
        }
        for r in &t.spec.container.secrets {
            secrets.insert(r.secret_name.clone());
        }
        for r in &t.spec.container.configs {
            configs.insert(r.config_name.clone());
        }
    }
    msg.secrets = secrets.iter().filter_map(|n| state.secret_by_name(n)).map(|s| s.as_ref().clone()).collect();
    msg.configs = configs.iter().filter_map(|n| state.config_by_name(n)).map(|c| c.as_ref().clone()).collect();
}

/// The whole assignment set of a node.
pub fn full_set(state: &State, node: &NodeId) -> Assignments {
    let mut msg = Assignments {
        full: true,
        tasks: state.tasks_on_node(node).filter(|t| is_assigned(t)).map(|t| t.as_ref().clone()).collect(),
        overlay: Some(OverlayView::from_state(state, node)),
        ..Default::default()
    };
    attach_refs(state, &mut msg);
    msg
}

#[async_trait]
impl Dispatcher for LocalDispatcher {
    async fn open_session(&self, req: SessionRequest) -> Result<SessionInfo, DispatchError> {
        // Drawn first: if the OS cannot give randomness, nothing changes.
        let session_id = new_session_id()?;
        let now = time::now();
        let node_id = req.node_id.clone();
        // The heartbeat settings of the state the session is opened on: the
        // router may not have read them yet (a manager that just started).
        let mut seen = DispatcherConfig::default();
        let res = crate::store::update_with_retry(self.store.as_ref(), 10, |state| {
            seen = state.cluster_spec().dispatcher;
            let node = match state.node(&node_id) {
                Some(n) => {
                    let mut n = n.as_ref().clone();
                    n.description = req.description.clone();
                    n.status = ready_status(&req.addr, now);
                    return Some(Transaction::new().update(n));
                }
                None => Node {
                    id: node_id.clone(),
                    description: req.description.clone(),
                    status: ready_status(&req.addr, now),
                    ..Default::default()
                },
            };
            Some(Transaction::new().create(node))
        })
        .await?;
        let _ = res;
        let mut g = self.lock();
        if !g.refreshed {
            g.config = seen;
        }
        let period = g.config.heartbeat_period.to_std();
        if let Some(old) = g.table.open(node_id.clone(), session_id.clone(), now) {
            g.subscribers.remove(&old);
        }
        g.node_states.insert(node_id.clone(), NodeState::Ready);
        Ok(SessionInfo { session_id, heartbeat_period: period })
    }

    async fn heartbeat(&self, session_id: &str) -> Result<HeartbeatResponse, DispatchError> {
        let node = {
            let mut g = self.lock();
            g.table
                .heartbeat(session_id, time::now())
                .ok_or_else(|| DispatchError::InvalidSession(session_id.to_string()))?
        };
        // A node that was marked down but heartbeats again is back. The
        // router keeps node states current: no store read per heartbeat.
        let (known, config) = {
            let g = self.lock();
            (g.node_states.get(&node).copied(), g.config)
        };
        match known {
            None => return Err(DispatchError::NodeRemoved(node.to_string())),
            Some(NodeState::Ready) => {}
            Some(_) => {
                let now = time::now();
                crate::store::update_with_retry(self.store.as_ref(), 5, |state| {
                    let n = state.node(&node)?;
                    if n.status.state == NodeState::Ready {
                        return None;
                    }
                    let mut n = n.as_ref().clone();
                    n.status = ready_status(&n.status.addr, now);
                    Some(Transaction::new().update(n))
                })
                .await?;
                self.lock().node_states.insert(node.clone(), NodeState::Ready);
            }
        }
        Ok(HeartbeatResponse { heartbeat_period: config.heartbeat_period.to_std() })
    }

    async fn update_task_status(&self, session_id: &str, updates: Vec<TaskStatusUpdate>) -> Result<(), DispatchError> {
        let node = self.node_of(session_id)?;
        if updates.is_empty() {
            return Ok(());
        }
        self.reports.submit(node, updates).await
    }

    async fn assignments(&self, session_id: &str) -> Result<AssignmentStream, DispatchError> {
        self.node_of(session_id)?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribe_tx
            .send((session_id.to_string(), tx))
            .map_err(|_| DispatchError::Unavailable("the dispatcher is not running".into()))?;
        Ok(AssignmentStream::new(rx))
    }
}

/// Bytes of OS randomness in a session id (128 bits).
const SESSION_ID_BYTES: usize = 16;

/// A fresh session id: 32 lowercase hex digits of OS randomness.
///
/// # Errors
/// [`DispatchError::Unavailable`] when the OS random source fails (no
/// session is better than a guessable one).
pub fn new_session_id() -> Result<String, DispatchError> {
    let mut b = [0u8; SESSION_ID_BYTES];
    getrandom::getrandom(&mut b).map_err(|e| {
        tracing::error!(error = %e, "the OS random source failed; no session id");
        DispatchError::Unavailable(format!("the OS random source failed, so no session id can be made: {e}"))
    })?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn ready_status(addr: &str, now: Timestamp) -> NodeStatus {
    NodeStatus { state: NodeState::Ready, message: String::new(), addr: addr.to_string(), last_heartbeat: Some(now) }
}
