//! Helpers shared by the orchestration test files (each file uses a part).
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use swarm_core::controller::{Context, Controller, Interest, Plan};
use swarm_core::id::NodeId;
use swarm_core::scheduler::*;

/// Test scheduler: the feasible node with the fewest tasks of the service,
/// then the fewest tasks, then the lowest id.
pub struct LeastLoaded;

impl Scheduler for LeastLoaded {
    fn name(&self) -> &str {
        "least-loaded"
    }
    fn schedule(&mut self, view: &ClusterView, batch: &[TaskRequest]) -> Vec<Decision> {
        let mut view = view.clone();
        batch
            .iter()
            .map(|req| {
                let mut why = Explanation::new(view.nodes.len());
                let mut best: Option<usize> = None;
                for (i, n) in view.nodes.iter().enumerate() {
                    match check_node(n, req) {
                        Ok(()) => {
                            let key = |n: &NodeInfo| (n.service_tasks(&req.service_id), n.total_tasks);
                            if best.is_none_or(|b| key(n) < key(&view.nodes[b])) {
                                best = Some(i);
                            }
                        }
                        Err(f) => why.add(&f),
                    }
                }
                match best {
                    Some(i) => {
                        view.nodes[i].reserve(req);
                        Decision::Assign(view.nodes[i].node.id.clone())
                    }
                    None => Decision::Unschedulable(why),
                }
            })
            .collect()
    }
}

use swarm_core::model::Object;
use swarm_core::state::{Action, Change, Op, State, Transaction};

/// A copy of the store's state rebuilt change by change, so a test can look
/// at every revision, not only at the snapshots it happens to take.
pub struct Mirror {
    pub state: State,
}

impl Mirror {
    pub fn new(state: State) -> Self {
        Mirror { state }
    }

    /// Applies one committed change; panics if the change does not follow.
    pub fn apply(&mut self, change: &Change) {
        let mut tx = Transaction { ops: Vec::new(), timestamp: Some(change.timestamp) };
        for ev in &change.events {
            let op = match ev.action {
                Action::Create => Op::Create(ev.object.clone()),
                Action::Update => {
                    let mut o: Object = ev.object.clone();
                    o.meta_mut().version = ev.old.as_ref().expect("update has old").meta().version;
                    Op::Update(o)
                }
                Action::Delete => Op::Delete { kind: ev.object.kind(), id: ev.object.id().to_string(), version: None },
            };
            tx.ops.push(op);
        }
        let (next, got) = self.state.apply(&tx).expect("mirror applies the change");
        assert_eq!(got.revision, change.revision, "mirror in step with the store");
        self.state = next;
    }
}

/// A controller for the runtime's and the manager's tests: gives every node
/// the label `seen=yes`; counts lists and reconciles.
#[derive(Clone, Default)]
pub struct Labeler {
    /// Calls of `keys` (a list or a re-list).
    pub lists: Arc<AtomicUsize>,
    /// Calls of `reconcile`.
    pub reconciles: Arc<AtomicUsize>,
}

impl Controller for Labeler {
    type Key = NodeId;
    fn name(&self) -> &str {
        "labeler"
    }
    fn keys(&self, state: &State) -> Vec<NodeId> {
        self.lists.fetch_add(1, SeqCst);
        state.nodes().map(|n| n.id.clone()).collect()
    }
    fn interest(&self, change: &Change) -> Interest<NodeId> {
        Interest::Keys(
            change
                .events
                .iter()
                .filter_map(|e| match &e.object {
                    Object::Node(n) => Some(n.id.clone()),
                    _ => None,
                })
                .collect(),
        )
    }
    fn reconcile(&mut self, cx: &mut Context<'_>, id: &NodeId) -> Plan {
        self.reconciles.fetch_add(1, SeqCst);
        let mut plan = Plan::default();
        if let Some(n) = cx.state.node(id).filter(|n| !n.spec.labels.contains_key("seen")) {
            let mut n = n.as_ref().clone();
            n.spec.labels.insert("seen".into(), "yes".into());
            plan.ops.push(Op::Update(Object::Node(n)));
        }
        plan
    }
}

/// A MemStore whose leadership the test sets (`Store::leadership`), for
/// the manager's leader-gating tests.
pub struct Led {
    pub inner: swarm_core::store::MemStore,
    pub leader: tokio::sync::watch::Sender<bool>,
}

#[async_trait::async_trait]
impl swarm_core::store::Store for Led {
    async fn commit(&self, tx: Transaction) -> Result<Arc<Change>, swarm_core::store::StoreError> {
        self.inner.commit(tx).await
    }
    async fn snapshot(&self) -> Result<Arc<State>, swarm_core::store::StoreError> {
        self.inner.snapshot().await
    }
    async fn watch(&self, from: u64) -> Result<swarm_core::store::Watch, swarm_core::store::StoreError> {
        self.inner.watch(from).await
    }
    fn leadership(&self) -> tokio::sync::watch::Receiver<bool> {
        self.leader.subscribe()
    }
}

/// A [`Led`] store, leading or not.
pub fn led(leading: bool) -> Arc<Led> {
    Arc::new(Led { inner: swarm_core::store::MemStore::new(), leader: tokio::sync::watch::channel(leading).0 })
}
