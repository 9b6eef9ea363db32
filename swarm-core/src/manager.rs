//! The manager's control loops, run by the leader: the orchestrator, the
//! scheduler loop, the task reaper and the dispatcher (sessions and node
//! health).
//!
//! Every loop is level-triggered: it takes a snapshot, watches from its
//! revision, and on each batch of changes looks at the whole state of what
//! changed. A loop that is restarted, or a new leader, picks up where the
//! state stands. A lagged watch re-lists.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::sync::Arc;
//! use swarm_core::manager::{Manager, ManagerConfig};
//! use swarm_core::scheduler::*;
//! use swarm_core::store::MemStore;
//! # struct Nowhere;
//! # impl Scheduler for Nowhere {
//! #     fn name(&self) -> &str { "nowhere" }
//! #     fn schedule(&mut self, v: &ClusterView, b: &[TaskRequest]) -> Vec<Decision> {
//! #         b.iter().map(|_| Decision::Unschedulable(Explanation::new(v.nodes.len()))).collect()
//! #     }
//! # }
//! let store = Arc::new(MemStore::new());
//! let manager = Manager::start(store.clone(), Box::new(Nowhere), ManagerConfig::default());
//! // ... agents connect through manager.dispatcher() ...
//! manager.stop();
//! # }
//! ```

use crate::dispatcher::LocalDispatcher;
use crate::id::{IdGen, ServiceId, TaskId};
use crate::model::*;
use crate::orchestrator::reconcile_service;
use crate::scheduler::{ClusterView, Decision, Scheduler, TaskRequest};
use crate::state::{Action, Change, Op, State, Transaction};
use crate::store::{Store, StoreError};
use crate::time::{self, Timestamp};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Manager settings.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Seed for task ids; `None` = from entropy. Session ids never come
    /// from it: they are drawn from the OS random source.
    pub seed: Option<u64>,
    /// The scheduler waits this long without new pending tasks before
    /// placing a batch (Swarm: 50 ms)...
    pub schedule_debounce: Duration,
    /// ... but never longer than this after the first one (Swarm: 1 s).
    pub schedule_max_delay: Duration,
    /// Largest number of operations per transaction.
    pub max_tx_ops: usize,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            seed: None,
            schedule_debounce: Duration::from_millis(50),
            schedule_max_delay: Duration::from_secs(1),
            max_tx_ops: 1000,
        }
    }
}

/// The running control loops. Dropping it does not stop them; call
/// [`Manager::stop`].
pub struct Manager {
    dispatcher: LocalDispatcher,
    handles: Vec<JoinHandle<()>>,
}

impl Manager {
    /// Starts the orchestrator, scheduler, reaper and dispatcher loops.
    pub fn start(store: Arc<dyn Store>, scheduler: Box<dyn Scheduler>, config: ManagerConfig) -> Manager {
        let seed = config.seed.unwrap_or_else(|| IdGen::from_entropy().next_u64());
        let dispatcher = LocalDispatcher::new(store.clone());
        let mut handles = Vec::new();
        let (s, c) = (store.clone(), config.clone());
        handles.push(tokio::spawn(async move {
            supervise("orchestrator", || orchestrate(s.clone(), seed, c.clone())).await
        }));
        let (s, c) = (store.clone(), config.clone());
        let sched = Arc::new(tokio::sync::Mutex::new(scheduler));
        handles.push(tokio::spawn(async move {
            supervise("scheduler", || schedule_loop(s.clone(), sched.clone(), c.clone())).await
        }));
        let (s, c) = (store.clone(), config.clone());
        handles.push(tokio::spawn(async move { supervise("reaper", || reap_loop(s.clone(), c.clone())).await }));
        let d = dispatcher.clone();
        handles.push(tokio::spawn(async move { supervise("dispatcher", || d.run()).await }));
        Manager { dispatcher, handles }
    }

    /// The dispatcher agents open sessions with.
    pub fn dispatcher(&self) -> LocalDispatcher {
        self.dispatcher.clone()
    }

    /// Stops every loop.
    pub fn stop(self) {
        for h in self.handles {
            h.abort();
        }
    }
}

/// Restarts a loop that returned an error, after a short pause.
async fn supervise<F, Fut>(name: &'static str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    loop {
        match f().await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(loop_name = name, error = %e, "control loop failed; restarting");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Commits `ops` in transactions of at most `max` operations.
async fn commit_chunks(store: &dyn Store, ops: Vec<Op>, max: usize) -> Result<(), StoreError> {
    let mut ops = ops;
    while !ops.is_empty() {
        let rest = if ops.len() > max { ops.split_off(max) } else { Vec::new() };
        store.commit(Transaction { ops, timestamp: None }).await?;
        ops = rest;
    }
    Ok(())
}

/// Services a change may concern (`None` = all of them).
fn touched_services(change: &Change) -> Option<BTreeSet<ServiceId>> {
    let mut out = BTreeSet::new();
    for ev in &change.events {
        match &ev.object {
            Object::Task(t) => {
                out.insert(t.service_id.clone());
            }
            Object::Service(s) => {
                out.insert(s.id.clone());
            }
            Object::Node(_) | Object::Cluster(_) => return None,
            _ => {}
        }
    }
    Some(out)
}

async fn orchestrate(store: Arc<dyn Store>, seed: u64, config: ManagerConfig) -> Result<(), StoreError> {
    // Mix the starting revision into the seed: a manager started again (a
    // new leader, a restarted loop) with the same seed must not produce the
    // ids it produced before. Still reproducible for a given history.
    let start = store.snapshot().await?.revision();
    let mut ids = IdGen::seeded(seed ^ start.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    loop {
        let mut state = store.snapshot().await?;
        let mut watch = store.watch(state.revision()).await?;
        let mut dirty: BTreeSet<ServiceId> = state.services().map(|s| s.id.clone()).collect();
        let mut wakeups: BTreeMap<Timestamp, BTreeSet<ServiceId>> = BTreeMap::new();
        'watching: loop {
            let mut conflict = false;
            for id in std::mem::take(&mut dirty) {
                let Some(svc) = state.service(&id) else { continue };
                let plan = reconcile_service(&state, svc, time::now(), &mut ids);
                if let Some(at) = plan.wake_at {
                    wakeups.entry(at).or_default().insert(id.clone());
                }
                if plan.ops.is_empty() {
                    continue;
                }
                tracing::debug!(service = %svc.spec.name, ops = plan.ops.len(), "orchestrator commits");
                match commit_chunks(store.as_ref(), plan.ops, config.max_tx_ops).await {
                    Ok(()) => {}
                    Err(e) if e.is_conflict() => {
                        conflict = true;
                        dirty.insert(id);
                    }
                    Err(StoreError::Rejected(e)) => {
                        tracing::error!(service = %svc.spec.name, error = %e, "orchestrator transaction rejected");
                    }
                    Err(e) => return Err(e),
                }
            }
            if conflict {
                state = store.snapshot().await?;
                continue;
            }
            let next_wake = wakeups.keys().next().copied();
            let sleep = async {
                match next_wake {
                    Some(at) => tokio::time::sleep(at.since(time::now())).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                change = watch.next() => {
                    let mut changes = vec![change];
                    while let Some(c) = watch.try_next() {
                        changes.push(c);
                    }
                    let mut all = false;
                    for c in changes {
                        match c {
                            Ok(c) => match touched_services(&c) {
                                Some(s) => dirty.extend(s),
                                None => all = true,
                            },
                            Err(StoreError::Lagged { .. } | StoreError::Compacted { .. }) => break 'watching,
                            Err(e) => return Err(e),
                        }
                    }
                    state = store.snapshot().await?;
                    if all {
                        dirty.extend(state.services().map(|s| s.id.clone()));
                    }
                }
                _ = sleep => {
                    let now = time::now();
                    let due: Vec<Timestamp> = wakeups.range(..=now).map(|(k, _)| *k).collect();
                    for k in due {
                        if let Some(s) = wakeups.remove(&k) {
                            dirty.extend(s);
                        }
                    }
                    state = store.snapshot().await?;
                }
            }
        }
    }
}

/// True when a change can make a pending task placeable (or creates one).
fn scheduling_relevant(change: &Change) -> bool {
    change.events.iter().any(|ev| match (&ev.object, &ev.old) {
        (Object::Node(_), _) | (Object::Cluster(_), _) => true,
        (Object::Service(_), _) => ev.action != Action::Delete,
        (Object::Task(t), None) => t.status.state == TaskState::Pending || ev.action == Action::Delete,
        (Object::Task(t), Some(Object::Task(old))) => {
            // Placed tasks ending free resources; new pending tasks need
            // placing. A pending task whose message changed (our own
            // explanation) does not count.
            (t.status.state.is_terminal() && !old.status.state.is_terminal())
                || (t.status.state == TaskState::Pending && old.status.state != TaskState::Pending)
                || (t.status.state == TaskState::Pending && t.desired_state != old.desired_state)
        }
        _ => false,
    })
}

fn pending_tasks(state: &State) -> Vec<Arc<Task>> {
    state
        .tasks()
        .filter(|t| t.status.state == TaskState::Pending && t.desired_state <= TaskState::Running)
        .cloned()
        .collect()
}

/// What a scheduling pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassOutcome {
    /// Tasks assigned to a node.
    pub placed: usize,
    /// Tasks left pending (unschedulable).
    pub unplaced: usize,
    /// The commit hit a version conflict: nothing was written, run again.
    pub conflicted: bool,
}

/// One scheduling pass over every pending task.
pub async fn schedule_pass(
    store: &dyn Store,
    scheduler: &mut dyn Scheduler,
    max_tx_ops: usize,
) -> Result<PassOutcome, StoreError> {
    let state = store.snapshot().await?;
    let mut pending = pending_tasks(&state);
    if pending.is_empty() {
        return Ok(PassOutcome::default());
    }
    // Batches: tasks of one service and spec version together, in order.
    pending.sort_by(|a, b| {
        (&a.service_id, a.spec_version, a.slot, &a.id).cmp(&(&b.service_id, b.spec_version, b.slot, &b.id))
    });
    let now = time::now();
    let view = ClusterView::from_state(&state, now);
    let mut requests = Vec::with_capacity(pending.len());
    let mut tasks = Vec::with_capacity(pending.len());
    let mut ops = Vec::new();
    for t in &pending {
        match TaskRequest::from_task(t) {
            Ok(r) => {
                requests.push(r);
                tasks.push(t.clone());
            }
            Err(e) => {
                // Cannot happen for a validated spec; say so on the task.
                let mut t = t.as_ref().clone();
                let msg = format!("invalid placement constraint: {e}");
                if t.status.message != msg {
                    t.status.message = msg;
                    ops.push(Op::Update(Object::Task(t)));
                }
            }
        }
    }
    let decisions = scheduler.schedule(&view, &requests);
    let (mut placed, mut unplaced) = (0, 0);
    for (t, d) in tasks.iter().zip(decisions) {
        let mut t = t.as_ref().clone();
        match d {
            Decision::Assign(node) => {
                if t.node_id.as_ref().is_some_and(|n| n != &node) {
                    tracing::error!(task = %t.id, "scheduler moved a task off its fixed node; ignored");
                    continue;
                }
                t.node_id = Some(node);
                t.status.state = TaskState::Assigned;
                t.status.message = "scheduler assigned task to node".into();
                t.status.timestamp = now;
                placed += 1;
            }
            Decision::Unschedulable(why) => {
                unplaced += 1;
                let msg = why.to_string();
                if t.status.message == msg {
                    continue;
                }
                t.status.message = msg;
                t.status.timestamp = now;
            }
        }
        ops.push(Op::Update(Object::Task(t)));
    }
    match commit_chunks(store, ops, max_tx_ops).await {
        Ok(()) => Ok(PassOutcome { placed, unplaced, conflicted: false }),
        Err(e) if e.is_conflict() => Ok(PassOutcome { placed: 0, unplaced: pending.len(), conflicted: true }),
        Err(e) => Err(e),
    }
}

async fn schedule_loop(
    store: Arc<dyn Store>,
    scheduler: Arc<tokio::sync::Mutex<Box<dyn Scheduler>>>,
    config: ManagerConfig,
) -> Result<(), StoreError> {
    let mut sched = scheduler.lock().await;
    loop {
        let state = store.snapshot().await?;
        let mut watch = store.watch(state.revision()).await?;
        let mut due = !pending_tasks(&state).is_empty();
        loop {
            if due {
                // Swarm's batching: wait for a quiet 50 ms, at most 1 s.
                let first = tokio::time::Instant::now();
                loop {
                    let quiet = tokio::time::sleep(config.schedule_debounce);
                    let cap = tokio::time::sleep_until(first + config.schedule_max_delay);
                    tokio::select! {
                        c = watch.next() => { c?; }
                        _ = quiet => break,
                        _ = cap => break,
                    }
                }
                let out = schedule_pass(store.as_ref(), sched.as_mut(), config.max_tx_ops).await?;
                tracing::debug!(
                    placed = out.placed,
                    unplaced = out.unplaced,
                    conflicted = out.conflicted,
                    "scheduling pass"
                );
                // A conflicted pass wrote nothing: go again.
                due = out.conflicted;
                if due {
                    continue;
                }
            }
            match watch.next().await {
                Ok(c) => due = scheduling_relevant(&c),
                Err(StoreError::Lagged { .. } | StoreError::Compacted { .. }) => break,
                Err(e) => return Err(e),
            }
        }
    }
}

/// A replicated slot, or the node of a global task.
type SlotOrNode = (Option<u64>, Option<crate::id::NodeId>);

/// The reaper's decisions on a snapshot: tasks to delete and tasks whose
/// service is gone to mark for removal.
pub fn reap(state: &State) -> Vec<Op> {
    let limit = state.cluster_spec().orchestration.task_history_limit as usize;
    let mut ops = Vec::new();
    let mut deleted: HashSet<TaskId> = HashSet::new();
    let mut del = |t: &Task, ops: &mut Vec<Op>| {
        if deleted.insert(t.id.clone()) {
            ops.push(Op::Delete { kind: ObjectKind::Task, id: t.id.to_string(), version: Some(t.meta.version) });
        }
    };
    for t in state.tasks() {
        let node_gone =
            t.node_id.as_ref().is_some_and(|n| state.node(n).is_none_or(|n| n.status.state == NodeState::Down));
        if state.service(&t.service_id).is_none() && t.desired_state < TaskState::Remove {
            let mut t = t.as_ref().clone();
            t.desired_state = TaskState::Remove;
            ops.push(Op::Update(Object::Task(t)));
            continue;
        }
        if t.desired_state == TaskState::Remove
            && (t.status.state.is_terminal() || t.status.state < TaskState::Assigned || node_gone)
        {
            del(t, &mut ops);
        }
    }
    // History per slot (or per node for global services).
    for svc in state.services() {
        let mut slots: BTreeMap<SlotOrNode, Vec<&Arc<Task>>> = BTreeMap::new();
        for t in state.tasks_of_service(&svc.id) {
            if t.desired_state > TaskState::Running && t.status.state.is_terminal() {
                let key = if t.slot.is_some() { (t.slot, None) } else { (None, t.node_id.clone()) };
                slots.entry(key).or_default().push(t);
            }
        }
        let policy = svc.spec.task_template.restart_policy;
        let keep = limit.max(if policy.max_attempts > 0 { policy.max_attempts as usize + 1 } else { 0 }).max(1);
        for (_, mut old) in slots {
            if old.len() <= keep {
                continue;
            }
            old.sort_by_key(|t| (t.meta.created_revision, t.id.clone()));
            let excess = old.len() - keep;
            for t in &old[..excess] {
                del(t, &mut ops);
            }
        }
    }
    ops
}

async fn reap_loop(store: Arc<dyn Store>, config: ManagerConfig) -> Result<(), StoreError> {
    loop {
        let state = store.snapshot().await?;
        let mut watch = store.watch(state.revision()).await?;
        loop {
            let state = store.snapshot().await?;
            let ops = reap(&state);
            if !ops.is_empty() {
                match commit_chunks(store.as_ref(), ops, config.max_tx_ops).await {
                    Ok(()) => {}
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => return Err(e),
                }
            }
            // Debounce: the reaper is not urgent.
            match watch.next().await {
                Ok(_) => {}
                Err(StoreError::Lagged { .. } | StoreError::Compacted { .. }) => break,
                Err(e) => return Err(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Some(c) = watch.try_next() {
                if let Err(e) = c {
                    if matches!(e, StoreError::Lagged { .. } | StoreError::Compacted { .. }) {
                        break;
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// Runs the manager's loops only while this process leads.
///
/// With a replicated store every manager holds the state, but only the
/// leader may run the control loops (two orchestrators would fight).
/// `leadership` says whether this process is the leader now (for the raft
/// store: its status' leader is itself); `start` builds a fresh [`Manager`]
/// each time leadership is gained (a new scheduler, a new dispatcher); it is
/// stopped as soon as leadership is lost. The loops are level-triggered, so
/// a new leader simply picks up where the state stands.
///
/// Returns when the `leadership` sender is dropped. `on_change` is told of
/// each start (`Some(manager)`) and stop (`None`), e.g. to point agents at
/// the new dispatcher.
pub async fn run_while_leader<F, C>(mut leadership: tokio::sync::watch::Receiver<bool>, mut start: F, mut on_change: C)
where
    F: FnMut() -> Manager,
    C: FnMut(Option<&Manager>),
{
    let mut running: Option<Manager> = None;
    loop {
        let leader = *leadership.borrow_and_update();
        match (leader, running.is_some()) {
            (true, false) => {
                tracing::info!("gained leadership: starting the control loops");
                let m = start();
                on_change(Some(&m));
                running = Some(m);
            }
            (false, true) => {
                tracing::info!("lost leadership: stopping the control loops");
                if let Some(m) = running.take() {
                    m.stop();
                }
                on_change(None);
            }
            _ => {}
        }
        if leadership.changed().await.is_err() {
            if let Some(m) = running.take() {
                m.stop();
            }
            return;
        }
    }
}
