//! The manager: the leader-only controllers (orchestrator, allocator,
//! scheduler loop, reaper), the dispatcher's node-health loop, and any
//! controller the embedder adds, on one [controller runtime](crate::controller).
//!
//! Every controller is level-triggered: it lists, watches from the list's
//! revision, and on each batch of changes looks at the whole state of what
//! changed. They run only while [`Store::leadership`] says this process
//! leads; a new leader simply picks up where the state stands.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::sync::Arc;
//! use swarm_core::cluster::Cluster;
//! use swarm_core::manager::{Manager, ManagerConfig};
//! use swarm_core::model::ServiceSpec;
//! use swarm_core::scheduler::FirstFit;
//! use swarm_core::store::MemStore;
//!
//! let store = Arc::new(MemStore::new());
//! let manager = Manager::builder(store.clone())
//!     .scheduler(Box::new(FirstFit))
//!     .config(ManagerConfig { seed: Some(1), ..Default::default() })
//!     // .controller(|| MyController::new()) runs your own beside them
//!     .start()
//!     .unwrap();
//! Cluster::new(store.clone()).create_service(ServiceSpec::replicated("web", "nginx:1.27", 2)).await.unwrap();
//! tokio::time::sleep(std::time::Duration::from_secs(1)).await;
//! assert_eq!(store.state().tasks().count(), 2, "the orchestrator created the tasks");
//! // ... agents connect through manager.dispatcher() ...
//! drop(manager); // stops every controller
//! # }
//! ```

use crate::allocator::{Admission, NothingToAllocate, TaskAllocator};
use crate::controller::{self, Context, Controller, Debounce, Interest, Plan, RuntimeConfig};
use crate::dispatcher::LocalDispatcher;
use crate::id::{IdGen, ServiceId, TaskId};
use crate::model::*;
use crate::orchestrator::reconcile_service;
use crate::scheduler::{ClusterView, Decision, Scheduler, TaskRequest};
use crate::state::{Action, Change, Op, State};
use crate::store::{Store, StoreError};
use crate::time::Timestamp;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::{JoinHandle, JoinSet};

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
    /// With an allocator of the embedder's ([`ManagerBuilder::allocator`]):
    /// which new tasks the orchestrator creates PENDING at once (default
    /// [`Admission::Nothing`]: all wait for the allocator). Ignored with
    /// the default allocator, which admits everything at creation.
    pub admission: Admission,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            seed: None,
            schedule_debounce: Duration::from_millis(50),
            schedule_max_delay: Duration::from_secs(1),
            max_tx_ops: 1000,
            admission: Admission::Nothing,
        }
    }
}

/// The running control loops: the built-in controllers (orchestrator,
/// scheduler loop, reaper), the dispatcher's node-health loop, and any
/// controller the embedder added, all run only while the store says this
/// process leads ([`Store::leadership`]). Dropping it, or [`Manager::stop`],
/// stops them all.
pub struct Manager {
    dispatcher: LocalDispatcher,
    supervisor: JoinHandle<()>,
}

/// Starts one controller on the runtime: a fresh instance for each term of
/// leadership.
type Spawner = Box<dyn FnMut(&mut JoinSet<()>, Arc<dyn Store>, RuntimeConfig) + Send>;

/// Builds a [`Manager`]: the store, the scheduler, settings, and extra
/// controllers. See [`Manager::builder`].
pub struct ManagerBuilder {
    store: Arc<dyn Store>,
    scheduler: Option<Box<dyn Scheduler>>,
    config: ManagerConfig,
    allocator: Option<Spawner>,
    controllers: Vec<Spawner>,
}

impl ManagerBuilder {
    /// The scheduler the scheduler loop calls (required).
    pub fn scheduler(mut self, scheduler: Box<dyn Scheduler>) -> Self {
        self.scheduler = Some(scheduler);
        self
    }

    /// Settings (batching, transaction size, seed).
    pub fn config(mut self, config: ManagerConfig) -> Self {
        self.config = config;
        self
    }

    /// Replaces the default allocator ([`TaskAllocator`], which admits every
    /// NEW task to scheduling at once) with one that allocates networks and
    /// ports first, such as swarm-net's. `make` builds a fresh one for each
    /// term of leadership.
    pub fn allocator<C, F>(mut self, make: F) -> Self
    where
        C: Controller,
        F: FnMut() -> C + Send + 'static,
    {
        self.allocator = Some(spawner(make));
        self
    }

    /// Adds a controller of the embedder's, run beside the built-in ones
    /// while this manager leads. `make` builds a fresh one for each term of
    /// leadership (a new leader starts from the store, not from memory).
    pub fn controller<C, F>(mut self, make: F) -> Self
    where
        C: Controller,
        F: FnMut() -> C + Send + 'static,
    {
        self.controllers.push(spawner(make));
        self
    }

    /// Starts the manager: its controllers run whenever the store says this
    /// process leads, and stop as soon as it does not.
    pub fn start(self) -> Result<Manager, ManagerError> {
        let scheduler = self.scheduler.ok_or(ManagerError::NoScheduler)?;
        Ok(launch(self.store, scheduler, self.config, self.allocator, self.controllers))
    }
}

fn spawner<C, F>(mut make: F) -> Spawner
where
    C: Controller,
    F: FnMut() -> C + Send + 'static,
{
    Box::new(move |set, store, runtime| {
        set.spawn(controller::run(store, make(), runtime));
    })
}

fn launch(
    store: Arc<dyn Store>,
    scheduler: Box<dyn Scheduler>,
    config: ManagerConfig,
    allocator: Option<Spawner>,
    extra: Vec<Spawner>,
) -> Manager {
    let seed = config.seed.unwrap_or_else(|| IdGen::from_entropy().next_u64());
    let dispatcher = LocalDispatcher::new(store.clone());
    let runtime = RuntimeConfig { max_tx_ops: config.max_tx_ops, seed: Some(seed), ..RuntimeConfig::default() };
    let scheduler = Arc::new(std::sync::Mutex::new(scheduler));
    let debounce = Debounce { quiet: config.schedule_debounce, max_delay: config.schedule_max_delay };
    let d = dispatcher.clone();
    let admission = match (&allocator, config.admission) {
        (None, _) => Admission::Everything,
        (Some(_), a) => a,
    };
    let mut spawners: Vec<Spawner> = vec![
        Box::new(move |set, store, rt| {
            set.spawn(controller::run(store, Orchestrator { admission }, rt));
        }),
        allocator.unwrap_or_else(|| spawner(TaskAllocator::<NothingToAllocate>::default)),
        Box::new(move |set, store, rt| {
            set.spawn(controller::run(store, SchedulerLoop { scheduler: scheduler.clone(), debounce }, rt));
        }),
        Box::new(|set, store, rt| {
            set.spawn(controller::run(store, Reaper, rt));
        }),
        Box::new(move |set, store, rt| {
            // The assignment router follows the store; node health is a
            // controller like the others.
            let router = d.clone();
            set.spawn(async move { supervise("dispatcher", || router.run()).await });
            set.spawn(controller::run(store, d.node_health(), rt));
        }),
    ];
    spawners.extend(extra);
    let supervisor = tokio::spawn(lead(store, spawners, runtime));
    Manager { dispatcher, supervisor }
}

/// Why a manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// [`ManagerBuilder::scheduler`] was not called.
    #[error("no scheduler: call ManagerBuilder::scheduler before start")]
    NoScheduler,
}

/// Runs every controller while the store says this process leads.
async fn lead(store: Arc<dyn Store>, mut spawners: Vec<Spawner>, runtime: RuntimeConfig) {
    let mut leadership = store.leadership();
    // Dropping the set (the manager stopped) aborts every controller.
    let mut term = JoinSet::new();
    let mut leading = false;
    loop {
        let now = *leadership.borrow_and_update();
        if now && !leading {
            tracing::info!("leading: starting the controllers");
            for spawn in &mut spawners {
                spawn(&mut term, store.clone(), runtime.clone());
            }
        } else if !now && leading {
            tracing::info!("no longer leading: stopping the controllers");
            term.abort_all();
            while term.join_next().await.is_some() {}
        }
        leading = now;
        if leadership.changed().await.is_err() {
            // The store will not change its mind again: keep what we have.
            std::future::pending::<()>().await;
        }
    }
}

impl Manager {
    /// A builder: `Manager::builder(store).scheduler(..).controller(..).start()`.
    pub fn builder(store: Arc<dyn Store>) -> ManagerBuilder {
        ManagerBuilder {
            store,
            scheduler: None,
            config: ManagerConfig::default(),
            allocator: None,
            controllers: Vec::new(),
        }
    }

    /// Starts the orchestrator, scheduler, reaper and dispatcher loops (no
    /// extra controllers): the builder's shortest form.
    pub fn start(store: Arc<dyn Store>, scheduler: Box<dyn Scheduler>, config: ManagerConfig) -> Manager {
        launch(store, scheduler, config, None, Vec::new())
    }

    /// The dispatcher agents open sessions with.
    pub fn dispatcher(&self) -> LocalDispatcher {
        self.dispatcher.clone()
    }

    /// Stops every loop (as dropping the manager does).
    pub fn stop(self) {}
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.supervisor.abort();
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

/// Services a change may concern (`None` = all of them).
///
/// A task moving among NEW, PENDING and ASSIGNED with the same desired
/// state (the allocator's and the scheduler's own writes) concerns no
/// service: no orchestration rule tells those states apart, so reconciling
/// after each would only repeat the last decision.
fn touched_services(change: &Change) -> Option<BTreeSet<ServiceId>> {
    let mut out = BTreeSet::new();
    for ev in &change.events {
        match &ev.object {
            Object::Task(t) => {
                let manager_step = |old: &Task| {
                    old.status.state <= TaskState::Assigned
                        && t.status.state <= TaskState::Assigned
                        && old.desired_state == t.desired_state
                };
                if ev.action == Action::Update && ev.old.as_ref().and_then(Object::as_task).is_some_and(manager_step) {
                    continue;
                }
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
}

/// A scheduling pass's decisions as store operations: every pending task
/// is offered to `scheduler` (batched by service and spec version, in slot
/// order); placed tasks become ASSIGNED, unplaceable ones keep PENDING with
/// the scheduler's explanation (written only when it changed). Pure: the
/// same state, scheduler and time give the same operations.
pub fn plan_schedule(state: &State, scheduler: &mut dyn Scheduler, now: Timestamp) -> (Vec<Op>, PassOutcome) {
    let mut pending = pending_tasks(state);
    if pending.is_empty() {
        return (Vec::new(), PassOutcome::default());
    }
    // Batches: tasks of one service and spec version together, in order.
    pending.sort_by(|a, b| {
        (&a.service_id, a.spec_version, a.slot, &a.id).cmp(&(&b.service_id, b.spec_version, b.slot, &b.id))
    });
    let view = ClusterView::from_state(state, now);
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
    let mut out = PassOutcome::default();
    // Compact operations (the decision, not the whole task) at the version
    // read: the pass's write is a few hundred bytes per task.
    for (t, d) in tasks.iter().zip(decisions) {
        let version = Some(t.meta.version);
        match d {
            Decision::Assign(node) => {
                if t.node_id.as_ref().is_some_and(|n| n != &node) {
                    tracing::error!(task = %t.id, "scheduler moved a task off its fixed node; ignored");
                    continue;
                }
                let mut status = t.status.clone();
                status.state = TaskState::Assigned;
                status.message = "scheduler assigned task to node".into();
                status.timestamp = now;
                out.placed += 1;
                ops.push(Op::AssignTask { id: t.id.clone(), version, node, status });
            }
            Decision::Unschedulable(why) => {
                out.unplaced += 1;
                let msg = why.to_string();
                if t.status.message == msg {
                    continue;
                }
                let mut status = t.status.clone();
                status.message = msg;
                status.timestamp = now;
                ops.push(Op::UpdateTaskStatus { id: t.id.clone(), version, status, networks: None });
            }
        }
    }
    (ops, out)
}

/// The orchestrator on the controller runtime: one key per service,
/// reconciled by [`reconcile_service`]; node and cluster changes concern
/// every service.
///
/// Tasks are created NEW, for the allocator to admit. With the manager's
/// default allocator ([`TaskAllocator`]: nothing to allocate) the builder
/// sets [`Admission::Everything`], and the orchestrator writes them
/// PENDING in the transaction that creates them: the admission the
/// allocator would make at once, without a second write of every task.
/// [`ManagerConfig::admission`] extends that to an embedder's allocator
/// for the tasks it has nothing to give.
#[derive(Clone, Copy, Debug, Default)]
pub struct Orchestrator {
    /// Which new tasks are created PENDING rather than NEW (those with
    /// nothing to allocate between the two).
    pub admission: Admission,
}

impl Controller for Orchestrator {
    type Key = ServiceId;
    fn name(&self) -> &str {
        "orchestrator"
    }
    fn keys(&self, state: &State) -> Vec<ServiceId> {
        state.services().map(|s| s.id.clone()).collect()
    }
    fn interest(&self, change: &Change) -> Interest<ServiceId> {
        match touched_services(change) {
            Some(ids) => Interest::Keys(ids.into_iter().collect()),
            None => Interest::Everything,
        }
    }
    fn reconcile(&mut self, cx: &mut Context<'_>, id: &ServiceId) -> Plan {
        let Some(svc) = cx.state.service(id) else { return Plan::default() };
        let mut plan = reconcile_service(cx.state, svc, cx.now, cx.ids);
        if self.admission != Admission::Nothing {
            for op in &mut plan.ops {
                if let Op::Create(Object::Task(t)) = op
                    && t.status.state == TaskState::New
                    && (self.admission == Admission::Everything || !crate::allocator::needs_allocation(svc, t))
                {
                    t.status.state = TaskState::Pending;
                    t.status.message = crate::allocator::PENDING_MESSAGE.into();
                }
            }
        }
        plan
    }
}

/// The scheduler loop on the controller runtime: one pass over every
/// pending task after changes that can make one placeable, batched as
/// Swarm does (a quiet period, capped).
pub struct SchedulerLoop {
    scheduler: Arc<std::sync::Mutex<Box<dyn Scheduler>>>,
    debounce: Debounce,
}

impl SchedulerLoop {
    /// Runs `scheduler` with the batching of `config`.
    pub fn new(scheduler: Box<dyn Scheduler>, config: &ManagerConfig) -> Self {
        SchedulerLoop {
            scheduler: Arc::new(std::sync::Mutex::new(scheduler)),
            debounce: Debounce { quiet: config.schedule_debounce, max_delay: config.schedule_max_delay },
        }
    }
}

impl Controller for SchedulerLoop {
    type Key = ();
    fn name(&self) -> &str {
        "scheduler"
    }
    fn keys(&self, _: &State) -> Vec<()> {
        vec![()]
    }
    fn interest(&self, change: &Change) -> Interest<()> {
        if scheduling_relevant(change) { Interest::Keys(vec![()]) } else { Interest::nothing() }
    }
    fn reconcile(&mut self, cx: &mut Context<'_>, _: &()) -> Plan {
        // The lock is only ever taken here, by one controller at a time; a
        // scheduler that panicked mid-pass left no state we rely on.
        let mut scheduler = self.scheduler.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (ops, out) = plan_schedule(cx.state, scheduler.as_mut(), cx.now);
        if out.placed + out.unplaced > 0 {
            tracing::debug!(placed = out.placed, unplaced = out.unplaced, "scheduling pass");
        }
        Plan { ops, wake_at: None }
    }
    fn debounce(&self) -> Option<Debounce> {
        Some(self.debounce)
    }
}

/// The task reaper on the controller runtime: [`reap`] over the whole
/// state, at most every 100 ms (it is not urgent).
pub struct Reaper;

impl Controller for Reaper {
    type Key = ();
    fn name(&self) -> &str {
        "reaper"
    }
    fn keys(&self, _: &State) -> Vec<()> {
        vec![()]
    }
    fn interest(&self, _: &Change) -> Interest<()> {
        Interest::Keys(vec![()])
    }
    fn reconcile(&mut self, cx: &mut Context<'_>, _: &()) -> Plan {
        Plan { ops: reap(cx.state), wake_at: None }
    }
    fn debounce(&self) -> Option<Debounce> {
        let d = Duration::from_millis(100);
        Some(Debounce { quiet: d, max_delay: d })
    }
}

/// A replicated slot, or the node of a global task.
type SlotOrNode = (Option<u64>, Option<crate::id::NodeId>);

/// The reaper's decisions on a snapshot: tasks to delete (marked for
/// removal and done; orphaned on a node that is back; past the history
/// limit) and tasks whose service is gone to mark for removal.
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
        // An orphaned task (its node was lost, the task replaced) whose
        // node is back: the task goes, and with it the container, which
        // the node's agent may have kept all along (a partition, not a
        // crash): its agent removes containers of tasks no longer
        // assigned to it. SwarmKit's reaper deletes orphaned tasks too.
        // Nothing serving goes with it: an ORPHANED task is no endpoint.
        if t.status.state == TaskState::Orphaned
            && t.node_id.as_ref().and_then(|n| state.node(n)).is_some_and(|n| n.status.state == NodeState::Ready)
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
