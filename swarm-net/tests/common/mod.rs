//! Shared test helpers: a small scheduler for the harness.
#![allow(dead_code)]

use swarm_core::scheduler::*;

/// The feasible node with the fewest tasks of the service, then the fewest
/// tasks, then the lowest id.
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

use std::sync::Arc;
use swarm_core::cluster::Cluster;
use swarm_core::id::TaskId;
use swarm_core::model::*;
use swarm_core::state::Transaction;
use swarm_core::store::{MemStore, Store};

/// A store with `nodes` ready nodes (node-1..) and the cluster API on it.
pub async fn fake_cluster(nodes: usize) -> (Arc<MemStore>, Cluster) {
    let store = Arc::new(MemStore::new());
    let cluster = Cluster::with_seed(store.clone() as Arc<dyn Store>, 5);
    for i in 1..=nodes {
        let n = Node::ready(format!("node-{i}"), format!("host-{i}"), Resources::new(4_000_000_000, 8 << 30));
        store.commit(Transaction::new().create(n)).await.expect("node");
    }
    (store, cluster)
}

/// Puts a RUNNING task of `service` in slot `slot` on `node`, with the
/// given (network, address) attachments, straight into the store.
pub async fn add_task(store: &MemStore, service: &str, node: &str, slot: u64, addrs: &[(&str, &str)]) -> TaskId {
    let state = store.state();
    let svc = state.service_by_name(service).expect("service");
    let id = TaskId::new(format!("{service}-{slot}-{}", state.revision()));
    let mut networks: Vec<NetworkAttachment> = Vec::new();
    for (net, addr) in addrs {
        match networks.iter_mut().find(|n| n.network == *net) {
            Some(n) => n.addresses.push(addr.to_string()),
            None => networks.push(NetworkAttachment { network: net.to_string(), addresses: vec![addr.to_string()] }),
        }
    }
    let task = Task {
        id: id.clone(),
        service_id: svc.id.clone(),
        service_name: service.to_string(),
        slot: Some(slot),
        node_id: Some(node.into()),
        spec: svc.spec.task_template.clone(),
        desired_state: TaskState::Running,
        status: TaskStatus { state: TaskState::Running, ..Default::default() },
        networks,
        ..Default::default()
    };
    store.commit(Transaction::new().create(task)).await.expect("task");
    id
}

/// Sets a task's desired state (e.g. SHUTDOWN: told to stop).
pub async fn set_desired(store: &MemStore, id: &TaskId, desired: TaskState) {
    let mut t = store.state().task(id).expect("task").as_ref().clone();
    t.desired_state = desired;
    store.commit(Transaction::new().update(t)).await.expect("update task");
}

/// Marks a node down.
pub async fn node_down(store: &MemStore, node: &str) {
    let mut n = store.state().node(&node.into()).expect("node").as_ref().clone();
    n.status.state = NodeState::Down;
    store.commit(Transaction::new().update(n)).await.expect("update node");
}
