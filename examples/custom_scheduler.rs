//! An in-house scheduler on swarm's public API: "SSD nodes first, else
//! first fit, never on a node in maintenance". The scheduler itself is the
//! block between the two `----` rules (about 30 lines): a [`Scorer`] and a
//! [`Filter`] plugged into a [`Pipeline`], which brings the standard
//! filters (readiness, constraints, resources, ports...), batching, node
//! indexes and explanations for free.
//!
//! The rest builds a small cluster in a `MemStore` (four nodes, a service,
//! one running task, pending tasks), takes a [`ClusterView`] of its state
//! and prints the scheduler's decisions.
//!
//! ```text
//! cargo run --example custom_scheduler
//! ```
//!
//! swarm-sched/tests/custom_scheduler.rs compiles this very file and
//! asserts what it prints ([`report`]), its decisions on the demo store and
//! on hand-built views, and the scheduler driving a cluster.

use swarm::id::{ServiceId, TaskId};
use swarm::model::{Node, Resources, Service, ServiceSpec, Task, TaskState, TaskStatus};
use swarm::placement::{Filter, Pipeline, Scorer};
use swarm::scheduler::{ClusterView, Decision, FilterFailure, NodeInfo, Scheduler, TaskRequest};
use swarm::state::{State, Transaction};
use swarm::store::{MemStore, Store};

// ---- the in-house scheduler ----------------------------------------------

/// Nodes labelled `disk=ssd` score 1, others 0; ties go to the first node
/// by id, so "else first fit".
pub struct PreferSsd;

impl Scorer for PreferSsd {
    fn name(&self) -> &str {
        "prefer-ssd"
    }
    fn score(&self, node: &NodeInfo, _req: &TaskRequest) -> f64 {
        if node.node.spec.labels.get("disk").is_some_and(|d| d == "ssd") { 1.0 } else { 0.0 }
    }
}

/// Rules out nodes labelled `maintenance=true`.
pub struct NotInMaintenance;

impl Filter for NotInMaintenance {
    fn name(&self) -> &str {
        "maintenance"
    }
    fn is_static(&self) -> bool {
        true // depends on the node's labels only: checked once per batch group
    }
    fn check(&self, node: &NodeInfo, _req: &TaskRequest) -> Result<(), FilterFailure> {
        match node.node.spec.labels.get("maintenance") {
            Some(v) if v == "true" => Err(FilterFailure::Other("in maintenance".into())),
            _ => Ok(()),
        }
    }
}

/// The scheduler: standard filters + maintenance, scored by [`PreferSsd`].
pub fn ssd_first() -> Pipeline {
    Pipeline::new("ssd-first", PreferSsd).with_filter(NotInMaintenance)
}

// ---- end of the scheduler -------------------------------------------------

const GIB: u64 = 1 << 30;

fn node(id: &str, mem_gib: u64, labels: &[(&str, &str)]) -> Node {
    let mut n = Node::ready(id, format!("host-{id}"), Resources::new(4_000_000_000, mem_gib * GIB));
    n.spec.labels.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    n
}

fn task(service: &Service, slot: u64, node: Option<&str>, state: TaskState) -> Task {
    Task {
        id: TaskId::new(format!("{}-{slot}", service.spec.name)),
        service_id: service.id.clone(),
        service_name: service.spec.name.clone(),
        slot: Some(slot),
        node_id: node.map(Into::into),
        spec: service.spec.task_template.clone(),
        spec_version: service.spec_version,
        desired_state: TaskState::Running,
        status: TaskStatus { state, ..Default::default() },
        ..Default::default()
    }
}

/// A store with four nodes (n2 and n3 have SSDs, n3 is in maintenance), a
/// service `web` reserving 1 GiB per task with one task running on n2, three
/// pending `web` tasks and one pending `batch` task too big for any node.
pub async fn demo_store() -> MemStore {
    let store = MemStore::new();
    let mut web = Service { id: ServiceId::new("web"), ..Default::default() };
    web.spec = ServiceSpec::replicated("web", "nginx:1.27", 4);
    web.spec.task_template.resources.reservations = Resources::new(0, GIB);
    let mut batch = Service { id: ServiceId::new("batch"), ..Default::default() };
    batch.spec = ServiceSpec::replicated("batch", "busybox", 1);
    batch.spec.task_template.resources.reservations = Resources::new(0, 16 * GIB);
    let mut tx = Transaction::new()
        .create(node("n1", 4, &[]))
        .create(node("n2", 2, &[("disk", "ssd")]))
        .create(node("n3", 8, &[("disk", "ssd"), ("maintenance", "true")]))
        .create(node("n4", 4, &[]))
        .create(web.clone())
        .create(batch.clone())
        .create(task(&web, 1, Some("n2"), TaskState::Running));
    for slot in 2..=4 {
        tx = tx.create(task(&web, slot, None, TaskState::Pending));
    }
    tx = tx.create(task(&batch, 1, None, TaskState::Pending));
    store.commit(tx).await.expect("the demo objects are valid");
    store
}

/// Schedules every pending task of `state` with `scheduler`: (task id,
/// decision) pairs in task id order.
pub fn schedule_pending(state: &State, scheduler: &mut dyn Scheduler) -> Vec<(String, Decision)> {
    let view = ClusterView::from_state(state, swarm::time::now());
    let pending: Vec<&Task> = state.tasks().filter(|t| t.status.state == TaskState::Pending).map(|t| &**t).collect();
    let batch: Vec<TaskRequest> =
        pending.iter().map(|t| TaskRequest::from_task(t).expect("the demo constraints parse")).collect();
    let decisions = scheduler.schedule(&view, &batch);
    pending.iter().map(|t| t.id.to_string()).zip(decisions).collect()
}

/// What `main` prints: the scheduler's name, then one line per pending
/// task of the demo store, `task -> node` or `task -> why not`.
pub async fn report() -> String {
    let store = demo_store().await;
    let state = store.snapshot().await.expect("a MemStore snapshot cannot fail");
    let mut scheduler = ssd_first();
    let mut out = format!("scheduler {}:\n", scheduler.name());
    for (task, decision) in schedule_pending(&state, &mut scheduler) {
        match decision {
            Decision::Assign(node) => out.push_str(&format!("  {task:<8} -> {node}\n")),
            Decision::Unschedulable(why) => out.push_str(&format!("  {task:<8} -> {why}\n")),
        }
    }
    out
}

#[tokio::main(flavor = "current_thread")]
pub async fn main() {
    print!("{}", report().await);
}
