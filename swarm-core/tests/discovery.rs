//! Discovery through the public API: which tasks are endpoints, and
//! MemDiscovery following a MemStore (notifying only on real changes).

use std::time::Duration;
use swarm_core::discovery::{Discovery, MemDiscovery, endpoints_from_state, is_endpoint, service_endpoints};
use swarm_core::model::*;
use swarm_core::state::{State, Transaction};
use swarm_core::store::{MemStore, Store};

fn node(id: &str, state: NodeState) -> Node {
    let mut n = Node::ready(id, format!("host-{id}"), Resources::default());
    n.status.state = state;
    n
}

fn web() -> Service {
    let mut spec = ServiceSpec::replicated("web", "nginx", 3);
    spec.endpoint_spec.ports = vec![PortConfig { target_port: 80, published_port: Some(8080), ..Default::default() }];
    Service { id: "s1".into(), spec, ..Default::default() }
}

fn running(id: &str, slot: u64, node: &str, addr: Option<&str>) -> Task {
    let mut t = Task {
        id: id.into(),
        service_id: "s1".into(),
        service_name: "web".into(),
        slot: Some(slot),
        node_id: Some(node.into()),
        desired_state: TaskState::Running,
        ..Default::default()
    };
    t.status.state = TaskState::Running;
    if let Some(a) = addr {
        t.networks = vec![NetworkAttachment { network: "backend".into(), addresses: vec![a.into()], overlay: None }];
    }
    t
}

fn commit(s: &State, tx: Transaction) -> State {
    s.apply(&tx).unwrap().0
}

#[test]
fn only_running_healthy_wanted_tasks_on_live_nodes_are_endpoints() {
    let base = commit(
        &State::default(),
        Transaction::new().create(node("n1", NodeState::Ready)).create(node("n2", NodeState::Down)).create(web()),
    );
    let mut tx = Transaction::new();
    tx = tx.create(running("t-slot3", 3, "n1", Some("10.0.0.3")));
    tx = tx.create(running("t-slot1", 1, "n1", Some("10.0.0.1")));
    tx = tx.create(running("t-down-node", 2, "n2", Some("10.0.0.9"))); // node down
    let mut pending = running("t-pending", 4, "n1", Some("10.0.0.4"));
    pending.status.state = TaskState::Pending;
    tx = tx.create(pending);
    let mut stopping = running("t-stopping", 5, "n1", Some("10.0.0.5"));
    stopping.desired_state = TaskState::Shutdown;
    tx = tx.create(stopping);
    tx = tx.create(running("t-no-addr", 6, "n1", None));
    let mut healthy = running("t-healthy", 7, "n1", Some("10.0.0.7"));
    healthy.spec.container.health_check = Some(HealthCheck::default());
    healthy.status.health = Some(HealthState::Healthy);
    tx = tx.create(healthy);
    let mut starting = running("t-starting", 8, "n1", Some("10.0.0.8"));
    starting.spec.container.health_check = Some(HealthCheck::default());
    starting.status.health = Some(HealthState::Starting);
    tx = tx.create(starting);
    let mut bad_addr = running("t-bad-addr", 9, "n1", Some("not-an-ip"));
    bad_addr.networks[0].addresses.push("10.0.0.10".into());
    tx = tx.create(bad_addr);
    let s = commit(&base, tx);

    let svc = s.service(&"s1".into()).unwrap();
    let eps = service_endpoints(&s, svc);
    let got: Vec<(&str, Option<u64>, String)> =
        eps.endpoints.iter().map(|e| (e.task_id.as_str(), e.slot, e.addr.to_string())).collect();
    assert_eq!(
        got,
        [
            ("t-slot1", Some(1), "10.0.0.1".to_string()),
            ("t-slot3", Some(3), "10.0.0.3".to_string()),
            ("t-healthy", Some(7), "10.0.0.7".to_string()),
            ("t-bad-addr", Some(9), "10.0.0.10".to_string()),
        ],
        "ordered by slot; the first address that parses"
    );
    assert_eq!(eps.name, "web");
    assert_eq!(eps.revision, s.revision());
    assert_eq!(eps.ports[0].published_port, Some(8080), "the spec's ports until the allocator resolves them");
    assert!(!is_endpoint(s.task(&"t-down-node".into()).unwrap(), &s));
    // A task whose node object is gone still counts (only a known-down node excludes).
    let s2 = commit(&s, Transaction::new().delete_any(ObjectKind::Node, "n1"));
    assert!(is_endpoint(s2.task(&"t-slot1".into()).unwrap(), &s2));
    let all = endpoints_from_state(&s);
    assert_eq!(all.keys().collect::<Vec<_>>(), ["web"]);
    assert_eq!(all["web"], eps);
}

#[tokio::test(start_paused = true)]
async fn mem_discovery_follows_a_store_and_notifies_only_on_endpoint_changes() {
    let store = MemStore::new();
    store.commit(Transaction::new().create(node("n1", NodeState::Ready)).create(web())).await.unwrap();
    let disco = MemDiscovery::new();
    let follower = tokio::spawn({
        let disco = disco.clone();
        let store = store.clone();
        async move { disco.follow(&store).await }
    });
    let settle = || tokio::time::sleep(Duration::from_millis(10));
    settle().await;
    let mut rx = disco.subscribe();
    assert_eq!(disco.services(), ["web"]);
    assert!(disco.resolve("web").unwrap().endpoints.is_empty());
    assert!(disco.resolve("nope").is_none());

    // A task starts running: subscribers hear of it, at the commit's revision.
    let c = store.commit(Transaction::new().create(running("t1", 1, "n1", Some("10.0.0.1")))).await.unwrap();
    settle().await;
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), c.revision);
    let eps = disco.resolve("web").unwrap();
    assert_eq!(eps.endpoints.len(), 1);
    assert_eq!(eps.endpoints[0].addr.to_string(), "10.0.0.1");

    // Writes that do not change any endpoint wake nobody.
    let mut n = store.state().node(&"n1".into()).unwrap().as_ref().clone();
    n.spec.labels.insert("zone".into(), "eu".into());
    store.commit(Transaction::new().update(n)).await.unwrap();
    let sec = Secret {
        id: "sec".into(),
        spec: SecretSpec { name: "sec".into(), data: SecretBytes(b"x".to_vec()), ..Default::default() },
        ..Default::default()
    };
    store.commit(Transaction::new().create(sec)).await.unwrap();
    settle().await;
    assert!(!rx.has_changed().unwrap(), "unrelated writes do not notify");

    // The node goes down: the endpoint goes away.
    let mut n = store.state().node(&"n1".into()).unwrap().as_ref().clone();
    n.status.state = NodeState::Down;
    store.commit(Transaction::new().update(n)).await.unwrap();
    settle().await;
    assert!(rx.has_changed().unwrap());
    assert!(disco.resolve("web").unwrap().endpoints.is_empty());

    // The service is deleted: it is no longer resolvable.
    store.commit(Transaction::new().delete_any(ObjectKind::Service, "s1")).await.unwrap();
    settle().await;
    assert!(disco.resolve("web").is_none());
    assert!(disco.services().is_empty());
    assert!(!follower.is_finished(), "follow keeps running while the store is up");
    follower.abort();
}
