//! The controller runtime: one implementation of the list / watch /
//! re-list / debounce / wake-up / chunked commit / retry loop that every
//! leader-only control loop needs, with the decisions left to a
//! [`Controller`].
//!
//! A controller says which keys a change concerns ([`Controller::interest`]),
//! which keys exist on a fresh list ([`Controller::keys`]), and reconciles
//! one key as a pure function of the state, the time and an id generator
//! ([`Controller::reconcile`]), returning a [`Plan`]: the operations to
//! commit and when to look again. [`run`] does the rest:
//! - takes a snapshot and watches from its revision (no gap), reconciles
//!   every key once, then the keys each batch of changes concerns;
//! - re-lists on [`StoreError::Lagged`] / [`StoreError::Compacted`];
//! - waits out an optional [`Debounce`] (a quiet period, capped) before
//!   acting on a burst of changes it is interested in (other changes do
//!   not break the quiet);
//! - wakes a key at its plan's `wake_at` even when nothing changes;
//! - commits large plans in chunks of at most `max_tx_ops` operations;
//! - on a version conflict reads a new snapshot and reconciles that key
//!   again; a plan the state machine rejects is logged, not retried;
//! - on any other store error backs off (doubling, capped) and re-lists;
//! - runs each reconcile in a `tracing` span named after the controller.
//!
//! Reconciles are level-triggered: each looks at the whole state of its key,
//! so running one twice, late, or after a leader change does no harm.
//!
//! A complete controller: every node gets the label `seen=yes`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::sync::Arc;
//! use swarm_core::controller::{self, Context, Controller, Interest, Plan, RuntimeConfig};
//! use swarm_core::id::NodeId;
//! use swarm_core::model::{Node, Object, Resources};
//! use swarm_core::state::{Change, Op, State, Transaction};
//! use swarm_core::store::{MemStore, Store};
//!
//! struct Labeler;
//! impl Controller for Labeler {
//!     type Key = NodeId;
//!     fn name(&self) -> &str { "labeler" }
//!     fn keys(&self, state: &State) -> Vec<NodeId> { state.nodes().map(|n| n.id.clone()).collect() }
//!     fn interest(&self, change: &Change) -> Interest<NodeId> {
//!         Interest::Keys(change.events.iter().filter_map(|e| match &e.object {
//!             Object::Node(n) => Some(n.id.clone()),
//!             _ => None,
//!         }).collect())
//!     }
//!     fn reconcile(&mut self, cx: &mut Context<'_>, id: &NodeId) -> Plan {
//!         let mut plan = Plan::default();
//!         if let Some(n) = cx.state.node(id).filter(|n| !n.spec.labels.contains_key("seen")) {
//!             let mut n = n.as_ref().clone();
//!             n.spec.labels.insert("seen".into(), "yes".into());
//!             plan.ops.push(Op::Update(Object::Node(n)));
//!         }
//!         plan
//!     }
//! }
//!
//! let store = Arc::new(MemStore::new());
//! let s: Arc<dyn Store> = store.clone();
//! let task = tokio::spawn(controller::run(s, Labeler, RuntimeConfig::default()));
//! store.commit(Transaction::new().create(Node::ready("n1", "host-1", Resources::default()))).await.unwrap();
//! tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//! assert_eq!(store.state().node(&"n1".into()).unwrap().spec.labels["seen"], "yes");
//! task.abort();
//! # }
//! ```

use crate::id::IdGen;
use crate::state::{Change, Op, State, Transaction};
use crate::store::{Store, StoreError};
use crate::time::{self, Timestamp};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// What one reconcile decided: the operations to commit (in chunks of at
/// most `max_tx_ops`, in order) and when to reconcile the key again even if
/// nothing changes.
#[derive(Debug, Default)]
pub struct Plan {
    /// Operations to commit.
    pub ops: Vec<Op>,
    /// When to reconcile this key again even if nothing changes.
    pub wake_at: Option<Timestamp>,
}

/// Which keys a change concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interest<K> {
    /// These keys (possibly none).
    Keys(Vec<K>),
    /// Every key the state has: reconcile all of them.
    Everything,
}

impl<K> Interest<K> {
    /// Concerns nothing.
    pub fn nothing() -> Self {
        Interest::Keys(Vec::new())
    }
}

/// Wait for a quiet period before acting on a burst of changes, but never
/// longer than `max_delay` after the first one (the scheduler's batching:
/// Swarm waits for 50 ms of quiet, at most 1 s). Only changes the
/// controller is interested in ([`Controller::interest`]) start a burst or
/// break the quiet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Debounce {
    /// Quiet time that ends a burst.
    pub quiet: Duration,
    /// Longest wait after the first change of a burst.
    pub max_delay: Duration,
}

/// What a reconcile sees.
pub struct Context<'a> {
    /// The state at the snapshot's revision.
    pub state: &'a State,
    /// The time of this reconcile (tokio's clock: paused in tests).
    pub now: Timestamp,
    /// Ids for new objects; seeded, so runs are reproducible.
    pub ids: &'a mut IdGen,
}

/// A leader-only control loop's decisions; [`run`] drives it.
pub trait Controller: Send + 'static {
    /// What one reconcile is about: a service, a node, or `()` for a
    /// controller that looks at the whole state at once.
    type Key: Ord + Clone + fmt::Debug + Send + Sync + 'static;

    /// The controller's name, for logs and spans.
    fn name(&self) -> &str;

    /// Every key to reconcile on a fresh list (start and re-list).
    fn keys(&self, state: &State) -> Vec<Self::Key>;

    /// The keys a committed change concerns.
    fn interest(&self, change: &Change) -> Interest<Self::Key>;

    /// Decides what to do about `key`: a pure function of the context.
    fn reconcile(&mut self, cx: &mut Context<'_>, key: &Self::Key) -> Plan;

    /// Batching of changes before reconciling; none by default.
    fn debounce(&self) -> Option<Debounce> {
        None
    }
}

/// Settings of the runtime, common to every controller.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Largest number of operations per transaction.
    pub max_tx_ops: usize,
    /// Seed for the ids reconciles create; `None` = from entropy. The
    /// starting revision is mixed in, so a restarted controller (a new
    /// leader) never repeats the ids of an earlier run.
    pub seed: Option<u64>,
    /// First pause after a store error; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest pause after store errors.
    pub backoff_max: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_tx_ops: 1000,
            seed: None,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// Chunks of one plan a controller has in flight at once.
pub const COMMIT_PIPELINE: usize = 16;

/// Commits `ops` in transactions of at most `max` operations, in order.
///
/// Up to [`COMMIT_PIPELINE`] chunks are in flight at once, submitted in
/// order: a replicated store then logs, replicates and applies them
/// together (one fsync and one round trip for several) instead of one
/// round trip per chunk. Each chunk is atomic, the plan as a whole is not
/// (it never was: a plan is committed chunk by chunk). After a failed
/// chunk no new one is submitted, the ones already in flight finish, and
/// the first failure in plan order is returned; the caller reconciles
/// again from a fresh snapshot, as after any failure.
pub async fn commit_chunks(store: &dyn Store, ops: Vec<Op>, max: usize) -> Result<(), StoreError> {
    type Commit<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Arc<Change>, StoreError>> + Send + 'a>>;
    let max = max.max(1);
    // Each operation is moved once: splitting the rest off the front each
    // time would copy the remainder per chunk, quadratic in a plan's size
    // (100,000 task creates copied 50,000 operations per chunk on average).
    let mut ops = ops.into_iter().peekable();
    // In plan order: a commit still running, or its result.
    enum Slot<'a> {
        Running(Commit<'a>),
        Done(Result<(), StoreError>),
    }
    let mut in_flight: std::collections::VecDeque<Slot<'_>> = std::collections::VecDeque::new();
    let mut first_error: Option<StoreError> = None;
    loop {
        while first_error.is_none() && in_flight.len() < COMMIT_PIPELINE && ops.peek().is_some() {
            let chunk: Vec<Op> = ops.by_ref().take(max).collect();
            in_flight.push_back(Slot::Running(store.commit(Transaction { ops: chunk, timestamp: None })));
        }
        if in_flight.is_empty() {
            return first_error.map_or(Ok(()), Err);
        }
        // Poll every commit in flight (the first poll submits it, in order)
        // until the oldest has finished.
        std::future::poll_fn(|cx| {
            for slot in in_flight.iter_mut() {
                if let Slot::Running(f) = slot
                    && let std::task::Poll::Ready(r) = f.as_mut().poll(cx)
                {
                    *slot = Slot::Done(r.map(|_| ()));
                }
            }
            match in_flight.front() {
                Some(Slot::Running(_)) => std::task::Poll::Pending,
                _ => std::task::Poll::Ready(()),
            }
        })
        .await;
        while let Some(Slot::Done(_)) = in_flight.front() {
            if let Some(Slot::Done(Err(e))) = in_flight.pop_front()
                && first_error.is_none()
            {
                first_error = Some(e);
            }
        }
    }
}

/// Runs `controller` against `store` until the task is aborted: lists,
/// watches, reconciles, commits; re-lists after lag or compaction; backs
/// off and re-lists after store errors.
pub async fn run<C: Controller>(store: Arc<dyn Store>, mut controller: C, config: RuntimeConfig) {
    let name = controller.name().to_string();
    let span = tracing::info_span!("controller", name = %name);
    async move {
        let seed = config.seed.unwrap_or_else(|| IdGen::from_entropy().next_u64());
        let mut ids: Option<IdGen> = None;
        let mut backoff = config.backoff_min;
        loop {
            let started = tokio::time::Instant::now();
            match run_listed(store.as_ref(), &mut controller, &config, seed, &mut ids).await {
                Ok(()) => {
                    tracing::debug!("watch lagged or compacted: listing again");
                    backoff = config.backoff_min;
                }
                Err(e) => {
                    if started.elapsed() > config.backoff_max {
                        backoff = config.backoff_min;
                    }
                    tracing::warn!(error = %e, retry_in = ?backoff, "controller failed; listing again after a pause");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(config.backoff_max);
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// One list and the watch that follows it: returns `Ok` when the watch must
/// be re-listed (lag, compaction), `Err` on other store errors.
async fn run_listed<C: Controller>(
    store: &dyn Store,
    controller: &mut C,
    config: &RuntimeConfig,
    seed: u64,
    ids: &mut Option<IdGen>,
) -> Result<(), StoreError> {
    let mut state = store.snapshot().await?;
    let mut watch = match store.watch(state.revision()).await {
        Ok(w) => w,
        // Compacted between our snapshot and the watch: list again.
        Err(StoreError::Lagged { .. } | StoreError::Compacted { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let ids = ids.get_or_insert_with(|| IdGen::for_run(seed, state.revision()));
    let mut dirty: BTreeSet<C::Key> = controller.keys(&state).into_iter().collect();
    let mut wakeups: BTreeMap<Timestamp, BTreeSet<C::Key>> = BTreeMap::new();
    loop {
        // Reconcile what is dirty; a conflict re-reads and goes again.
        let mut conflicted = false;
        for key in std::mem::take(&mut dirty) {
            let now = time::now();
            let plan = {
                let _span = tracing::debug_span!("reconcile", key = ?key, revision = state.revision()).entered();
                controller.reconcile(&mut Context { state: &state, now, ids: &mut *ids }, &key)
            };
            if let Some(at) = plan.wake_at {
                wakeups.entry(at).or_default().insert(key.clone());
            }
            if plan.ops.is_empty() {
                continue;
            }
            tracing::debug!(key = ?key, ops = plan.ops.len(), "committing a plan");
            let committing = tokio::time::Instant::now();
            match commit_chunks(store, plan.ops, config.max_tx_ops).await {
                Ok(()) => tracing::debug!(key = ?key, took = ?committing.elapsed(), "plan committed"),
                Err(e) if e.is_conflict() => {
                    tracing::debug!(key = ?key, error = %e, "conflict: reconciling again on a new snapshot");
                    conflicted = true;
                    dirty.insert(key);
                }
                Err(StoreError::Rejected(e)) => {
                    tracing::error!(key = ?key, error = %e, "the state machine rejected a plan");
                }
                Err(e) => return Err(e),
            }
        }
        if conflicted {
            tokio::task::yield_now().await;
            state = store.snapshot().await?;
            continue;
        }

        // Wait for a change or a wake-up.
        let next_wake = wakeups.keys().next().copied();
        let sleep = async {
            match next_wake {
                Some(at) => tokio::time::sleep(at.since(time::now())).await,
                None => std::future::pending().await,
            }
        };
        let mut noted = Noted::default();
        tokio::select! {
            first = watch.next() => {
                let mut next = Some(first);
                while let Some(c) = next.take() {
                    match c {
                        Ok(c) => {
                            noted.add(controller, &c, &mut dirty);
                        }
                        Err(StoreError::Lagged { .. } | StoreError::Compacted { .. }) => return Ok(()),
                        Err(e) => return Err(e),
                    }
                    next = watch.try_next();
                }
            }
            _ = sleep => {}
        }
        if noted.relevant
            && let Some(d) = controller.debounce()
        {
            // Only changes the controller is interested in restart the
            // quiet period: a stream of unrelated writes (workers' status
            // reports during a deployment, say) must not hold a scheduling
            // pass back to the cap.
            let first = tokio::time::Instant::now();
            let mut quiet_until = first + d.quiet;
            loop {
                let quiet = tokio::time::sleep_until(quiet_until);
                let cap = tokio::time::sleep_until(first + d.max_delay);
                tokio::select! {
                    c = watch.next() => match c {
                        Ok(c) => {
                            if noted.add(controller, &c, &mut dirty) {
                                quiet_until = tokio::time::Instant::now() + d.quiet;
                            }
                        }
                        Err(StoreError::Lagged { .. } | StoreError::Compacted { .. }) => return Ok(()),
                        Err(e) => return Err(e),
                    },
                    _ = quiet => break,
                    _ = cap => break,
                }
            }
        }
        let now = time::now();
        let due: Vec<Timestamp> = wakeups.range(..=now).map(|(at, _)| *at).collect();
        for at in due {
            dirty.extend(wakeups.remove(&at).unwrap_or_default());
        }
        if dirty.is_empty() && !noted.everything {
            continue;
        }
        state = store.snapshot().await?;
        if noted.everything {
            dirty.extend(controller.keys(&state));
        }
    }
}

/// What the changes seen since the last reconcile asked for.
#[derive(Default)]
struct Noted {
    /// At least one change concerned at least one key.
    relevant: bool,
    /// One of them concerned every key.
    everything: bool,
}

impl Noted {
    /// Notes what `change` concerns; true if it concerns anything.
    fn add<C: Controller>(&mut self, controller: &C, change: &Change, dirty: &mut BTreeSet<C::Key>) -> bool {
        let relevant = match controller.interest(change) {
            Interest::Keys(keys) => {
                let any = !keys.is_empty();
                dirty.extend(keys);
                any
            }
            Interest::Everything => {
                self.everything = true;
                true
            }
        };
        self.relevant |= relevant;
        relevant
    }
}
