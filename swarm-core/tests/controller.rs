//! The controller runtime under tokio's paused clock: list then watch,
//! re-list after lag and compaction, conflicts, a failing store (backoff),
//! wake-ups, debounce, chunked commits and rejected plans.

use async_trait::async_trait;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarm_core::controller::{self, Context, Controller, Debounce, Interest, Plan, RuntimeConfig};
use swarm_core::id::NodeId;
use swarm_core::model::{Node, Object, Resources};
use swarm_core::state::{Change, Op, State, Transaction};
use swarm_core::store::{MemStore, Store, StoreError, Watch};
use swarm_core::time;

mod common;
use common::Labeler;

/// MemStore with injected faults: the next commits conflict (a concurrent
/// writer bumps the same node first), the next snapshots fail, the next
/// watch calls report compaction.
struct Flaky {
    inner: MemStore,
    conflicts: AtomicUsize,
    failing_snapshots: AtomicUsize,
    compacted_watches: AtomicUsize,
    snapshots: AtomicUsize,
}

impl Flaky {
    fn new(inner: MemStore) -> Arc<Self> {
        Arc::new(Flaky {
            inner,
            conflicts: AtomicUsize::new(0),
            failing_snapshots: AtomicUsize::new(0),
            compacted_watches: AtomicUsize::new(0),
            snapshots: AtomicUsize::new(0),
        })
    }
}

fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(SeqCst, SeqCst, |v| v.checked_sub(1)).is_ok()
}

#[async_trait]
impl Store for Flaky {
    async fn commit(&self, tx: Transaction) -> Result<Arc<Change>, StoreError> {
        if take_one(&self.conflicts) {
            // Someone else updates the node first: the plan's version is stale.
            for op in &tx.ops {
                if let Op::Update(Object::Node(n)) = op {
                    let mut cur = self.inner.state().node(&n.id).unwrap().as_ref().clone();
                    cur.spec.labels.insert("bumped".into(), "yes".into());
                    self.inner.commit(Transaction::new().update(cur)).await.unwrap();
                }
            }
        }
        self.inner.commit(tx).await
    }
    async fn snapshot(&self) -> Result<Arc<State>, StoreError> {
        self.snapshots.fetch_add(1, SeqCst);
        if take_one(&self.failing_snapshots) {
            return Err(StoreError::Unavailable("injected".into()));
        }
        self.inner.snapshot().await
    }
    async fn watch(&self, from: u64) -> Result<Watch, StoreError> {
        if take_one(&self.compacted_watches) {
            return Err(StoreError::Compacted { requested: from, oldest: from + 1 });
        }
        self.inner.watch(from).await
    }
}

fn node(i: usize) -> Node {
    Node::ready(format!("n{i}"), format!("host-{i}"), Resources::default())
}

fn labelled(store: &MemStore) -> usize {
    store.state().nodes().filter(|n| n.spec.labels.get("seen").is_some_and(|v| v == "yes")).count()
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

fn start<C: Controller>(store: Arc<dyn Store>, c: C) -> tokio::task::JoinHandle<()> {
    tokio::spawn(controller::run(store, c, RuntimeConfig { seed: Some(1), ..RuntimeConfig::default() }))
}

#[tokio::test(start_paused = true)]
async fn lists_first_then_follows_changes() {
    let store = Arc::new(MemStore::new());
    for i in 0..3 {
        store.commit(Transaction::new().create(node(i))).await.unwrap();
    }
    let c = Labeler::default();
    let task = start(store.clone(), c.clone());
    settle().await;
    assert_eq!(labelled(&store), 3, "the nodes that existed before the start");
    for i in 3..5 {
        store.commit(Transaction::new().create(node(i))).await.unwrap();
    }
    settle().await;
    assert_eq!(labelled(&store), 5, "and those created after");
    assert_eq!(c.lists.load(SeqCst), 1, "one list, no re-list");
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_conflict_reconciles_again_on_a_new_snapshot() {
    let inner = MemStore::new();
    inner.commit(Transaction::new().create(node(0))).await.unwrap();
    let store = Flaky::new(inner);
    store.conflicts.store(1, SeqCst);
    let c = Labeler::default();
    let task = start(store.clone(), c.clone());
    settle().await;
    let n = store.inner.state().node(&"n0".into()).unwrap().clone();
    assert_eq!(n.spec.labels.get("bumped").map(String::as_str), Some("yes"), "the concurrent write stays");
    assert_eq!(n.spec.labels.get("seen").map(String::as_str), Some("yes"), "and the plan was made again on top");
    assert_eq!(store.conflicts.load(SeqCst), 0);
    assert!(c.reconciles.load(SeqCst) >= 2, "reconciled again after the conflict");
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_lagged_watch_lists_again_and_misses_nothing() {
    // A watch buffer of one change: a burst of commits makes the watcher lag.
    let store = Arc::new(MemStore::with_limits(1000, 1));
    let c = Labeler::default();
    let task = start(store.clone(), c.clone());
    settle().await;
    for i in 0..20 {
        store.commit(Transaction::new().create(node(i))).await.unwrap();
    }
    settle().await;
    assert_eq!(labelled(&store), 20);
    assert!(c.lists.load(SeqCst) >= 2, "the lag made it list again ({} lists)", c.lists.load(SeqCst));
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn compaction_lists_again_at_once() {
    let inner = MemStore::new();
    inner.commit(Transaction::new().create(node(0))).await.unwrap();
    let store = Flaky::new(inner);
    store.compacted_watches.store(1, SeqCst);
    let c = Labeler::default();
    let t0 = tokio::time::Instant::now();
    let task = start(store.clone(), c.clone());
    while labelled(&store.inner) < 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(t0.elapsed() < Duration::from_millis(50), "no backoff for a compaction: {:?}", t0.elapsed());
    assert_eq!(c.lists.load(SeqCst), 1, "the list whose watch was compacted did not reconcile");
    assert!(store.snapshots.load(SeqCst) >= 2, "it took a new snapshot");
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_backs_off_doubling_then_recovers() {
    let inner = MemStore::new();
    inner.commit(Transaction::new().create(node(0))).await.unwrap();
    let store = Flaky::new(inner);
    store.failing_snapshots.store(3, SeqCst);
    let task = start(store.clone(), Labeler::default());
    // Pauses of 100, 200 and 400 ms: nothing before 700 ms, done right after.
    tokio::time::sleep(Duration::from_millis(690)).await;
    assert_eq!(labelled(&store.inner), 0, "still backing off");
    assert_eq!(store.snapshots.load(SeqCst), 3, "one try per pause");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(labelled(&store.inner), 1, "recovered after the third pause");
    task.abort();
}

/// Asks to be woken every 10 s; counts reconciles.
struct Ticker(Arc<Mutex<Vec<time::Timestamp>>>);

impl Controller for Ticker {
    type Key = ();
    fn name(&self) -> &str {
        "ticker"
    }
    fn keys(&self, _: &State) -> Vec<()> {
        vec![()]
    }
    fn interest(&self, _: &Change) -> Interest<()> {
        Interest::nothing()
    }
    fn reconcile(&mut self, cx: &mut Context<'_>, _: &()) -> Plan {
        self.0.lock().unwrap().push(cx.now);
        Plan { ops: Vec::new(), wake_at: Some(cx.now.plus(Duration::from_secs(10))) }
    }
}

#[tokio::test(start_paused = true)]
async fn a_plan_wakes_its_key_at_the_time_it_asked() {
    let store = Arc::new(MemStore::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let task = start(store.clone(), Ticker(seen.clone()));
    tokio::time::sleep(Duration::from_secs(25)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "at 0, 10 and 20 s: {seen:?}");
    assert_eq!(seen[1].since(seen[0]), Duration::from_secs(10));
    assert_eq!(seen[2].since(seen[1]), Duration::from_secs(10));
    task.abort();
}

/// Reconciles the whole state at once, debounced like the scheduler.
struct Batcher(Arc<Mutex<Vec<(time::Timestamp, usize)>>>);

impl Controller for Batcher {
    type Key = ();
    fn name(&self) -> &str {
        "batcher"
    }
    fn keys(&self, _: &State) -> Vec<()> {
        vec![()]
    }
    fn interest(&self, _: &Change) -> Interest<()> {
        Interest::Everything
    }
    fn reconcile(&mut self, cx: &mut Context<'_>, _: &()) -> Plan {
        self.0.lock().unwrap().push((cx.now, cx.state.nodes().count()));
        Plan::default()
    }
    fn debounce(&self) -> Option<Debounce> {
        Some(Debounce { quiet: Duration::from_millis(50), max_delay: Duration::from_secs(1) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_changes_is_one_reconcile_after_a_quiet_period_capped() {
    let store = Arc::new(MemStore::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let task = start(store.clone(), Batcher(seen.clone()));
    settle().await;
    assert_eq!(seen.lock().unwrap().len(), 1, "the first list");
    // Five changes 10 ms apart: one reconcile, 50 ms after the last.
    let t0 = time::now();
    for i in 0..5 {
        store.commit(Transaction::new().create(node(i))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[1].1, 5, "it saw the whole burst");
        let after = seen[1].0.since(t0);
        assert!(after >= Duration::from_millis(90) && after <= Duration::from_millis(100), "{after:?}");
    }
    // A change every 30 ms for 2.5 s never goes quiet: reconciles at the cap.
    for i in 5..88 {
        store.commit(Transaction::new().create(node(i))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = seen.lock().unwrap();
    let during = seen.len() - 2;
    assert!((2..=4).contains(&during), "about one reconcile per second of changes, then one at the end: {seen:?}");
    assert_eq!(seen.last().unwrap().1, 88);
    task.abort();
}

/// Debounced like [`Batcher`], but interested only in new nodes.
struct NewNodes(Arc<Mutex<Vec<(time::Timestamp, usize)>>>);

impl Controller for NewNodes {
    type Key = ();
    fn name(&self) -> &str {
        "new-nodes"
    }
    fn keys(&self, _: &State) -> Vec<()> {
        vec![()]
    }
    fn interest(&self, change: &Change) -> Interest<()> {
        let created = change
            .events
            .iter()
            .any(|e| e.action == swarm_core::state::Action::Create && matches!(e.object, Object::Node(_)));
        if created { Interest::Keys(vec![()]) } else { Interest::nothing() }
    }
    fn reconcile(&mut self, cx: &mut Context<'_>, _: &()) -> Plan {
        self.0.lock().unwrap().push((cx.now, cx.state.nodes().count()));
        Plan::default()
    }
    fn debounce(&self) -> Option<Debounce> {
        Some(Debounce { quiet: Duration::from_millis(50), max_delay: Duration::from_secs(1) })
    }
}

#[tokio::test(start_paused = true)]
async fn changes_a_controller_is_not_interested_in_do_not_break_its_quiet_period() {
    let store = Arc::new(MemStore::new());
    store.commit(Transaction::new().create(node(0))).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let task = start(store.clone(), NewNodes(seen.clone()));
    settle().await;
    assert_eq!(seen.lock().unwrap().len(), 1, "the first list");
    // A new node, then an update of node 0 every 10 ms for half a second:
    // the updates concern nothing, so the reconcile comes 50 ms after the
    // new node, not at the 1 s cap.
    let t0 = time::now();
    store.commit(Transaction::new().create(node(1))).await.unwrap();
    for i in 0..50 {
        let mut n = store.state().node(&NodeId::new("n0")).unwrap().as_ref().clone();
        n.spec.labels.insert("tick".into(), i.to_string());
        store.commit(Transaction::new().update(n)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "one reconcile for the new node, none for the updates: {seen:?}");
    assert_eq!(seen[1].1, 2);
    let after = seen[1].0.since(t0);
    assert!(after >= Duration::from_millis(50) && after <= Duration::from_millis(60), "{after:?}");
    drop(seen);
    task.abort();
}

/// Creates `n` nodes in one plan, once.
struct Creator(usize);

impl Controller for Creator {
    type Key = ();
    fn name(&self) -> &str {
        "creator"
    }
    fn keys(&self, _: &State) -> Vec<()> {
        vec![()]
    }
    fn interest(&self, _: &Change) -> Interest<()> {
        Interest::nothing()
    }
    fn reconcile(&mut self, cx: &mut Context<'_>, _: &()) -> Plan {
        let ops = (0..self.0)
            .filter(|i| cx.state.node(&NodeId::new(format!("n{i}"))).is_none())
            .map(|i| Op::Create(Object::Node(node(i))))
            .collect();
        Plan { ops, wake_at: None }
    }
}

#[tokio::test(start_paused = true)]
async fn a_large_plan_is_committed_in_chunks() {
    let store = Arc::new(MemStore::new());
    let config = RuntimeConfig { max_tx_ops: 1000, seed: Some(1), ..RuntimeConfig::default() };
    let task = tokio::spawn(controller::run(store.clone(), Creator(2500), config));
    settle().await;
    let state = store.state();
    assert_eq!(state.nodes().count(), 2500);
    assert_eq!(state.revision(), 3, "1000 + 1000 + 500 operations");
    task.abort();
}

/// Creates a node whose id already exists: the state machine rejects it.
struct Duplicator(Arc<AtomicUsize>);

impl Controller for Duplicator {
    type Key = NodeId;
    fn name(&self) -> &str {
        "duplicator"
    }
    fn keys(&self, state: &State) -> Vec<NodeId> {
        state.nodes().map(|n| n.id.clone()).collect()
    }
    fn interest(&self, change: &Change) -> Interest<NodeId> {
        Labeler::default().interest(change)
    }
    fn reconcile(&mut self, cx: &mut Context<'_>, id: &NodeId) -> Plan {
        self.0.fetch_add(1, SeqCst);
        let n = cx.state.node(id).map(|n| n.as_ref().clone()).unwrap();
        Plan { ops: vec![Op::Create(Object::Node(n))], wake_at: None }
    }
}

#[tokio::test(start_paused = true)]
async fn a_rejected_plan_is_not_retried_and_the_controller_goes_on() {
    let store = Arc::new(MemStore::new());
    store.commit(Transaction::new().create(node(0))).await.unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let task = start(store.clone(), Duplicator(count.clone()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(count.load(SeqCst), 1, "rejected once, not retried in a loop");
    assert_eq!(store.state().revision(), 1, "nothing committed");
    store.commit(Transaction::new().create(node(1))).await.unwrap();
    settle().await;
    assert_eq!(count.load(SeqCst), 2, "still following changes");
    task.abort();
}

/// The runtime's ids: seeded, different after a restart at a later revision.
#[tokio::test(start_paused = true)]
async fn ids_are_seeded_and_mixed_with_the_starting_revision() {
    struct Ids(Arc<Mutex<VecDeque<String>>>);
    impl Controller for Ids {
        type Key = ();
        fn name(&self) -> &str {
            "ids"
        }
        fn keys(&self, _: &State) -> Vec<()> {
            vec![()]
        }
        fn interest(&self, _: &Change) -> Interest<()> {
            Interest::nothing()
        }
        fn reconcile(&mut self, cx: &mut Context<'_>, _: &()) -> Plan {
            self.0.lock().unwrap().push_back(cx.ids.next_id::<String>());
            Plan::default()
        }
    }
    let store = Arc::new(MemStore::new());
    let run = |store: Arc<MemStore>| async move {
        let seen = Arc::new(Mutex::new(VecDeque::new()));
        let task = start(store, Ids(seen.clone()));
        settle().await;
        task.abort();
        seen.lock().unwrap().pop_front().unwrap()
    };
    let a = run(store.clone()).await;
    assert_eq!(a, run(store.clone()).await, "same seed, same revision: same ids");
    store.commit(Transaction::new().create(node(0))).await.unwrap();
    assert_ne!(a, run(store.clone()).await, "a later start does not repeat them");
}

/// A store whose commits finish only when released, in any order, and
/// that refuses the chunk it is told to: shows what `commit_chunks` keeps
/// in flight and what it returns.
struct Gated {
    inner: MemStore,
    submitted: Mutex<Vec<usize>>,
    refuse: usize,
    release: tokio::sync::Semaphore,
}

#[async_trait]
impl Store for Gated {
    async fn commit(&self, tx: Transaction) -> Result<Arc<Change>, StoreError> {
        let chunk = {
            let mut s = self.submitted.lock().unwrap();
            s.push(tx.ops.len());
            s.len()
        };
        self.release.acquire().await.unwrap().forget();
        if chunk == self.refuse {
            return Err(StoreError::Rejected(swarm_core::state::TxError::Empty));
        }
        self.inner.commit(tx).await
    }
    async fn snapshot(&self) -> Result<Arc<State>, StoreError> {
        self.inner.snapshot().await
    }
    async fn watch(&self, from: swarm_core::model::Revision) -> Result<Watch, StoreError> {
        self.inner.watch(from).await
    }
}

fn node_ops(n: usize) -> Vec<Op> {
    (0..n)
        .map(|i| {
            Op::Create(Object::Node(Node::ready(
                format!("n{i}").as_str(),
                format!("h{i}").as_str(),
                Resources::default(),
            )))
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn chunks_are_pipelined_and_the_first_failure_stops_new_ones() {
    // 40 ops in chunks of 1: 40 chunks, more than the pipeline; chunk 3 is
    // refused.
    let store = Arc::new(Gated {
        inner: MemStore::new(),
        submitted: Mutex::new(Vec::new()),
        refuse: 3,
        release: tokio::sync::Semaphore::new(0),
    });
    let s = store.clone();
    let run = tokio::spawn(async move { controller::commit_chunks(s.as_ref(), node_ops(40), 1).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Nothing finished yet: a full window is in flight, submitted in order.
    assert_eq!(store.submitted.lock().unwrap().len(), controller::COMMIT_PIPELINE);
    store.release.add_permits(100);
    let err = run.await.unwrap().unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)), "{err}");
    // The window in flight when chunk 3 failed finished; no chunk was
    // submitted after the failure was seen.
    let submitted = store.submitted.lock().unwrap().clone();
    assert!(submitted.len() >= controller::COMMIT_PIPELINE && submitted.len() < 40, "{submitted:?}");
    let nodes = store.inner.state().nodes().count();
    assert_eq!(nodes, submitted.len() - 1, "every chunk but the refused one committed");
}

#[tokio::test(start_paused = true)]
async fn a_pipelined_plan_commits_every_chunk() {
    let store = MemStore::new();
    controller::commit_chunks(&store, node_ops(25), 2).await.unwrap();
    assert_eq!(store.state().nodes().count(), 25);
    assert_eq!(store.state().revision(), 13, "one revision per chunk");
}
