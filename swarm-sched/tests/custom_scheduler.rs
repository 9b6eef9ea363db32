//! Compiles `examples/custom_scheduler.rs` (the very file, not a copy)
//! into the test harness and checks its in-house scheduler: what the
//! example prints, SSD nodes first, else first fit, never a node in
//! maintenance, explanations counted per filter, and the scheduler driving
//! a cluster. The example is written against the `swarm` facade; this test
//! crate mimics the facade's paths (`swarm::placement`, swarm-core at the root)
//! so the file compiles here unchanged.

extern crate self as swarm;

pub use swarm_core::*;

/// What the facade exposes as `swarm::placement`.
pub mod placement {
    pub use swarm_sched::*;
}

// `main` is the example binary's entry point; the tests call `report`,
// which is what it prints.
#[allow(dead_code)]
#[path = "../../examples/custom_scheduler.rs"]
mod example;

use swarm_core::model::{Node, Resources};
use swarm_core::scheduler::{ClusterView, Decision, NodeInfo, Scheduler, TaskRequest};

#[tokio::test]
async fn the_example_scheduler_prefers_ssd_then_first_fit() {
    let store = example::demo_store().await;
    let decisions = example::schedule_pending(&store.state(), &mut example::ssd_first());
    let shown: Vec<(String, String)> = decisions
        .into_iter()
        .map(|(t, d)| match d {
            Decision::Assign(n) => (t, n.to_string()),
            Decision::Unschedulable(why) => (t, why.to_string()),
        })
        .collect();
    let want = [
        ("batch-1", "no suitable node (insufficient memory on 3 nodes; 1 node: in maintenance)"),
        // n2 has an SSD and 1 GiB left; n3 has an SSD but is in maintenance.
        ("web-2", "n2"),
        // n2 is full: first fit among the rest.
        ("web-3", "n1"),
        ("web-4", "n1"),
    ];
    let want: Vec<(String, String)> = want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(shown, want);
}

/// What the example prints (main prints `report()`): every pending task
/// with its node or the explanation.
#[tokio::test]
async fn the_example_prints_where_each_task_goes() {
    let want = "scheduler ssd-first:\n\
                \x20 batch-1  -> no suitable node (insufficient memory on 3 nodes; 1 node: in maintenance)\n\
                \x20 web-2    -> n2\n\
                \x20 web-3    -> n1\n\
                \x20 web-4    -> n1\n";
    assert_eq!(example::report().await, want);
}

#[test]
fn maintenance_beats_ssd_and_ssd_beats_order() {
    let n = |id: &str, labels: &[(&str, &str)]| {
        let mut n = Node::ready(id, id, Resources::new(1_000_000_000, 1 << 30));
        n.spec.labels.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        NodeInfo::new(std::sync::Arc::new(n))
    };
    let view = ClusterView {
        nodes: vec![n("a", &[]), n("b", &[("disk", "ssd"), ("maintenance", "true")]), n("c", &[("disk", "ssd")])],
    };
    let req = |i: u32| TaskRequest {
        task_id: format!("t{i}").into(),
        service_id: "s".into(),
        reservations: Resources::new(1_000_000_000, 0),
        ..Default::default()
    };
    let d = example::ssd_first().schedule(&view, &[req(1), req(2), req(3)]);
    assert_eq!(d[0], Decision::Assign("c".into()));
    assert_eq!(d[1], Decision::Assign("a".into()));
    let Decision::Unschedulable(why) = &d[2] else { panic!("{d:?}") };
    assert_eq!(why.to_string(), "no suitable node (insufficient cpu on 2 nodes; 1 node: in maintenance)");
}

/// The example's scheduler plugged into a running cluster: the harness's
/// manager, agents and SimRuntime nodes.
#[tokio::test(start_paused = true)]
async fn the_example_scheduler_runs_a_cluster() {
    use std::time::Duration;
    use swarm_core::harness::Harness;
    use swarm_core::model::{ServiceSpec, TaskState};
    let h = Harness::builder()
        .nodes(3)
        .boxed_scheduler(Box::new(example::ssd_first()))
        .node_label(1, "disk", "ssd")
        .node_label(2, "maintenance", "true")
        .seed(3)
        .build()
        .await
        .unwrap();
    h.cluster().create_service(ServiceSpec::replicated("web", "nginx:1.27", 4)).await.unwrap();
    let s = h.wait_running("web", 4, Duration::from_secs(60)).await.unwrap();
    let svc = s.service_by_name("web").unwrap();
    let on = |i: usize| {
        s.tasks_of_service(&svc.id)
            .filter(|t| t.status.state == TaskState::Running && t.node_id == Some(h.node_id(i)))
            .count()
    };
    // Capacity is not the limit (4 CPUs, 8 GiB, nothing reserved): every
    // task goes to the SSD node; none to the node in maintenance.
    assert_eq!((on(0), on(1), on(2)), (0, 4, 0));
    h.shutdown();
}
