//! The scheduler's inputs through the public API: a ClusterView built from
//! a State (reservations of live tasks, freed ones, host ports, recent
//! failures), TaskRequest::from_task, and check_node's rules in order.

use std::sync::Arc;
use std::time::Duration;
use swarm_core::model::*;
use swarm_core::scheduler::{
    ClusterView, Decision, Explanation, FAILURE_WINDOW, FilterFailure, FirstFit, NodeInfo, Scheduler, TaskRequest,
    check_node,
};
use swarm_core::state::{State, Transaction};
use swarm_core::time::Timestamp;

const NOW: Timestamp = Timestamp(1_800_000_000_000_000_000);

fn task(id: &str, node: &str, state: TaskState, mem: u64) -> Task {
    let mut t = Task {
        id: id.into(),
        service_id: "s1".into(),
        service_name: "web".into(),
        slot: Some(1),
        node_id: Some(node.into()),
        ..Default::default()
    };
    t.spec.resources.reservations = Resources::new(100_000_000, mem);
    t.status.state = state;
    t.status.timestamp = NOW;
    t
}

fn state() -> State {
    let mut tx = Transaction::new()
        .create(Node::ready("n1", "h1", Resources::new(4_000_000_000, 4 << 30)))
        .create(Node::ready("n2", "h2", Resources::new(4_000_000_000, 4 << 30)))
        .create(Service { id: "s1".into(), spec: ServiceSpec::replicated("web", "nginx", 4), ..Default::default() });
    tx = tx.create(task("t-run", "n1", TaskState::Running, 1 << 30));
    tx = tx.create(task("t-assigned", "n1", TaskState::Assigned, 1 << 29));
    tx = tx.create(task("t-done", "n1", TaskState::Complete, 2 << 30)); // frees its reservation
    let mut host = task("t-host", "n2", TaskState::Running, 0);
    host.status.published_ports = vec![
        PortConfig {
            target_port: 80,
            published_port: Some(8080),
            publish_mode: PublishMode::Host,
            ..Default::default()
        },
        PortConfig {
            target_port: 81,
            published_port: Some(30001),
            publish_mode: PublishMode::Ingress,
            ..Default::default()
        },
    ];
    tx = tx.create(host);
    let mut recent = task("t-failed-recent", "n2", TaskState::Failed, 1 << 30);
    recent.status.timestamp = NOW.minus(Duration::from_secs(10));
    tx = tx.create(recent);
    let mut old = task("t-failed-old", "n2", TaskState::Failed, 1 << 30);
    old.status.timestamp = NOW.minus(FAILURE_WINDOW + Duration::from_secs(1));
    tx = tx.create(old);
    tx.timestamp = Some(NOW);
    State::default().apply(&tx).unwrap().0
}

fn info<'a>(view: &'a ClusterView, id: &str) -> &'a NodeInfo {
    view.nodes.iter().find(|n| n.node.id.as_str() == id).unwrap()
}

#[test]
fn the_view_reserves_live_tasks_and_frees_terminal_ones() {
    let view = ClusterView::from_state(&state(), NOW);
    assert_eq!(view.nodes.len(), 2);
    let n1 = info(&view, "n1");
    assert_eq!(n1.reserved, Resources::new(200_000_000, (1 << 30) + (1 << 29)));
    assert_eq!(n1.available, Resources::new(3_800_000_000, (4 << 30) - (1 << 30) - (1 << 29)));
    assert_eq!(n1.total_tasks, 2);
    assert_eq!(n1.service_tasks(&"s1".into()), 2);
    assert!(n1.recent_failures.is_empty());

    let n2 = info(&view, "n2");
    assert_eq!(n2.total_tasks, 1);
    assert!(n2.host_ports.contains(&(Protocol::Tcp, 8080)), "host-mode ports are taken");
    assert!(!n2.host_ports.contains(&(Protocol::Tcp, 30001)), "ingress ports are not host ports");
    assert_eq!(
        n2.recent_failures.get(&swarm_core::id::ServiceId::from("s1")),
        Some(&1),
        "only failures inside the window count"
    );
}

#[test]
fn task_requests_carry_the_placement_of_the_task() {
    let mut t = task("t1", "n1", TaskState::Pending, 1 << 20);
    t.spec.placement.constraints = vec!["node.labels.zone==eu".into()];
    t.spec.placement.max_replicas = 2;
    let ep = EndpointSpec {
        ports: vec![
            PortConfig {
                target_port: 80,
                published_port: Some(80),
                publish_mode: PublishMode::Host,
                ..Default::default()
            },
            PortConfig { target_port: 81, published_port: Some(81), ..Default::default() },
        ],
        ..Default::default()
    };
    t.endpoint = ep;
    let req = TaskRequest::from_task(&t).unwrap();
    assert_eq!(req.constraints.len(), 1);
    assert_eq!(req.host_ports, [(Protocol::Tcp, 80)]);
    assert_eq!(req.node_id, None, "a replicated task may go anywhere");
    assert_eq!(req.reservations.memory_bytes, 1 << 20);
    t.slot = None;
    assert_eq!(TaskRequest::from_task(&t).unwrap().node_id, Some("n1".into()), "a global task is pinned");
    t.spec.placement.constraints = vec!["node.colour==red".into()];
    assert!(TaskRequest::from_task(&t).is_err());
}

#[test]
fn check_node_reports_the_first_failing_rule() {
    let view = ClusterView::from_state(&state(), NOW);
    let mut n2 = info(&view, "n2").clone();
    let req = TaskRequest { service_id: "s1".into(), ..Default::default() };
    assert_eq!(check_node(&n2, &req), Ok(()));

    let mut down = n2.clone();
    let mut node = down.node.as_ref().clone();
    node.status.state = NodeState::Down;
    node.spec.availability = Availability::Drain;
    down.node = Arc::new(node);
    assert_eq!(check_node(&down, &req), Err(FilterFailure::NotReady), "readiness comes first");
    let mut drained = n2.clone();
    let mut node = drained.node.as_ref().clone();
    node.spec.availability = Availability::Pause;
    drained.node = Arc::new(node);
    assert_eq!(check_node(&drained, &req), Err(FilterFailure::NotActive));

    let pinned = TaskRequest { node_id: Some("n1".into()), ..req.clone() };
    assert_eq!(check_node(&n2, &pinned), Err(FilterFailure::OtherNode));
    let port = TaskRequest { host_ports: vec![(Protocol::Tcp, 8080)], ..req.clone() };
    assert_eq!(check_node(&n2, &port), Err(FilterFailure::HostPortInUse("8080/tcp".into())));
    let udp = TaskRequest { host_ports: vec![(Protocol::Udp, 8080)], ..req.clone() };
    assert_eq!(check_node(&n2, &udp), Ok(()), "the same number on udp is free");
    let cpu = TaskRequest { reservations: Resources::new(5_000_000_000, 0), ..req.clone() };
    assert_eq!(check_node(&n2, &cpu), Err(FilterFailure::InsufficientCpu));
    let maxr = TaskRequest { max_replicas: 1, ..req.clone() };
    assert_eq!(check_node(&n2, &maxr), Err(FilterFailure::MaxReplicas(1)));
    let maxr2 = TaskRequest { max_replicas: 2, ..req.clone() };
    assert_eq!(check_node(&n2, &maxr2), Ok(()));
    n2.reserve(&maxr2);
    assert_eq!(check_node(&n2, &maxr2), Err(FilterFailure::MaxReplicas(2)), "reserve counts the new task");
    let label = TaskRequest { constraints: vec!["node.labels.zone==eu".parse().unwrap()], ..req.clone() };
    assert_eq!(check_node(&n2, &label), Err(FilterFailure::Constraint("node.labels.zone==eu".into())));
    let plat = TaskRequest { platforms: vec![Platform::new("", "x86_64")], ..req };
    assert_eq!(check_node(&n2, &plat), Ok(()), "x86_64 is amd64; an empty os matches any");
}

#[test]
fn a_boxed_scheduler_places_a_batch_and_explains_what_does_not_fit() {
    let view = ClusterView::from_state(&state(), NOW);
    let mut s: Box<dyn Scheduler> = Box::new(FirstFit);
    assert_eq!(s.name(), "first-fit");
    let req = |mem: u64| TaskRequest { reservations: Resources::new(0, mem), ..Default::default() };
    // n1 has 2.5 GiB free, n2 4 GiB.
    let out = s.schedule(&view, &[req(2 << 30), req(2 << 30), req(2 << 30), req(2 << 30)]);
    assert_eq!(out[0], Decision::Assign("n1".into()));
    assert_eq!(out[1], Decision::Assign("n2".into()));
    assert_eq!(out[2], Decision::Assign("n2".into()));
    match &out[3] {
        Decision::Unschedulable(why) => {
            assert_eq!(why.failures.get(&FilterFailure::InsufficientMemory), Some(&2));
            assert_eq!(why.to_string(), "no suitable node (insufficient memory on 2 nodes)");
        }
        other => panic!("expected unschedulable, got {other:?}"),
    }
    assert_eq!(Explanation::new(0).to_string(), "no suitable node (no nodes in the cluster)");
}
