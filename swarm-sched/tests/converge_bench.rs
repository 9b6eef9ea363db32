//! Compiles `examples/converge_bench.rs` (the very file) into the test
//! harness: the benchmark's convergence and heal at a small size, and its
//! check (one running task per slot, runtimes running exactly those
//! tasks' containers) on hand-made states where it must object. Mimics
//! the facade's paths like tests/custom_scheduler.rs.

extern crate self as swarm;

pub use swarm_core::*;

/// What the facade exposes as `swarm::placement`.
pub mod placement {
    pub use swarm_sched::*;
}

// `main` is the example binary's entry point; the tests call `run` and
// `check_converged`.
#[allow(dead_code)]
#[path = "../../examples/converge_bench.rs"]
mod example;

use std::collections::HashSet;
use swarm_core::id::{NodeId, ServiceId, TaskId};
use swarm_core::model::{Node, Resources, Service, ServiceSpec, Task, TaskState, TaskStatus};
use swarm_core::state::{State, Transaction};
use swarm_core::store::{MemStore, Store};

#[test]
fn the_benchmark_converges_and_heals_with_every_slot_and_container_checked() {
    let r = example::run(20, 200).unwrap();
    assert_eq!((r.nodes, r.replicas), (20, 200));
    // 2 of 20 nodes fail; spread put about a tenth of the tasks on them.
    assert!(r.lost_tasks > 0 && r.lost_tasks < 200, "{r:?}");
    // The heal waits out the heartbeat grace (simulated time): 15 s of
    // silence, counted from each failed node's last heartbeat, which came at
    // most one heartbeat period (5 s) before the failure.
    assert!(r.heal_virtual_s >= 15.0 - 5.0 && r.heal_virtual_s < 20.0, "{r:?}");
}

/// A state with service `web` (3 replicas) and running tasks given as
/// (task id, slot, node, container).
fn state(tasks: &[(&str, u64, &str, &str)]) -> std::sync::Arc<State> {
    let store = MemStore::new();
    let web = Service {
        id: ServiceId::new("web"),
        spec: ServiceSpec::replicated("web", "nginx:1.27", 3),
        ..Default::default()
    };
    let mut tx = Transaction::new().create(web.clone());
    for n in ["n1", "n2", "n7"] {
        tx = tx.create(Node::ready(n, n, Resources::new(1_000_000_000, 1 << 30)));
    }
    for (id, slot, node, container) in tasks {
        tx = tx.create(Task {
            id: TaskId::new(*id),
            service_id: web.id.clone(),
            service_name: "web".into(),
            slot: Some(*slot),
            node_id: Some((*node).into()),
            spec: web.spec.task_template.clone(),
            spec_version: web.spec_version,
            desired_state: TaskState::Running,
            status: TaskStatus {
                state: TaskState::Running,
                container_id: Some(container.to_string()),
                ..Default::default()
            },
            ..Default::default()
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        store.commit(tx).await.unwrap();
        store.snapshot().await.unwrap()
    })
}

fn running(lists: &[&[&str]]) -> Vec<Vec<String>> {
    lists.iter().map(|l| l.iter().map(|c| c.to_string()).collect()).collect()
}

#[test]
fn the_check_objects_to_doubled_and_missing_slots_and_to_stray_or_absent_containers() {
    let nodes: Vec<NodeId> = vec!["n1".into(), "n2".into()];
    let none = HashSet::new();
    let check = |s: &State, on: &[&[&str]], failed: &HashSet<NodeId>| {
        example::check_converged(s, "web", 3, &nodes, &running(on), failed)
    };

    let good = state(&[("a", 1, "n1", "c1"), ("b", 2, "n1", "c2"), ("c", 3, "n2", "c3")]);
    assert_eq!(check(&good, &[&["c1", "c2"], &["c3"]], &none), Vec::<String>::new());

    // Slot 1 twice, slot 2 missing: still 3 tasks running.
    let doubled = state(&[("a", 1, "n1", "c1"), ("b", 1, "n1", "c2"), ("c", 3, "n2", "c3")]);
    assert_eq!(
        check(&doubled, &[&["c1", "c2"], &["c3"]], &none),
        vec!["slot 1 runs 2 tasks: a, b".to_string(), "1 slots run no task: 2".to_string()]
    );

    // A container no running task accounts for, and one the runtime lost.
    assert_eq!(
        check(&good, &[&["c1", "c2", "c9"], &[]], &none),
        vec![
            "n1 runs 1 containers of no running task: [\"c9\"]".to_string(),
            "n2 does not run 1 containers of running tasks: [\"c3\"]".to_string(),
        ]
    );

    // After a failure: tasks on the failed node do not count, and its
    // runtime must run nothing.
    let failed: HashSet<NodeId> = ["n2".into()].into_iter().collect();
    assert_eq!(
        check(&good, &[&["c1", "c2"], &["c3"]], &failed),
        vec!["1 slots run no task: 3".to_string(), "n2 runs 1 containers of no running task: [\"c3\"]".to_string()]
    );
    let healed = state(&[("a", 1, "n1", "c1"), ("b", 2, "n1", "c2"), ("c", 3, "n2", "c3"), ("d", 3, "n1", "c4")]);
    assert_eq!(check(&healed, &[&["c1", "c2", "c4"], &[]], &failed), Vec::<String>::new());

    // Running tasks on a node the benchmark has no runtime for.
    let elsewhere = state(&[("a", 1, "n1", "c1"), ("b", 2, "n1", "c2"), ("c", 3, "n7", "c3")]);
    assert_eq!(
        check(&elsewhere, &[&["c1", "c2"], &[]], &none),
        vec!["1 running tasks on n7, a node without a runtime".to_string()]
    );
}
