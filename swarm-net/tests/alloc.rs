//! VIP, subnet and port allocation: the pure plan, the controller on a
//! store, and endpoint timing on the harness under a paused clock.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use swarm_core::cluster::Cluster;
use swarm_core::model::*;
use swarm_core::state::State;
use swarm_core::store::{MemStore, Store};
use swarm_net::alloc::*;

fn port(target: u32, published: Option<u32>) -> PortConfig {
    PortConfig { target_port: target, published_port: published, ..Default::default() }
}

fn web(name: &str, ports: Vec<PortConfig>) -> ServiceSpec {
    let mut s = ServiceSpec::replicated(name, "nginx:1.27", 1);
    s.endpoint_spec.ports = ports;
    s
}

async fn setup() -> (Arc<MemStore>, Cluster, Allocator) {
    let store = Arc::new(MemStore::new());
    let dyn_store: Arc<dyn Store> = store.clone();
    let cluster = Cluster::with_seed(dyn_store.clone(), 1);
    let alloc = Allocator::new(dyn_store, AllocatorConfig::default()).expect("config");
    (store, cluster, alloc)
}

fn endpoint(s: &State, name: &str) -> Endpoint {
    s.service_by_name(name).expect("service").endpoint.clone()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[tokio::test]
async fn vips_subnets_and_ports_are_allocated_and_dnsrr_gets_no_vip() {
    let (store, cluster, alloc) = setup().await;
    cluster.create_network(NetworkSpec { name: "front".into(), ..Default::default() }).await.unwrap();
    cluster.create_network(NetworkSpec { name: "back".into(), ..Default::default() }).await.unwrap();
    cluster.create_service(web("a", vec![port(80, None), port(443, Some(8443))])).await.unwrap();
    let mut b = web("b", vec![port(80, None)]);
    b.networks = vec![
        NetworkAttachmentConfig { target: "front".into(), aliases: vec![] },
        NetworkAttachmentConfig { target: "back".into(), aliases: vec![] },
    ];
    cluster.create_service(b).await.unwrap();
    let mut c = web("c", vec![]);
    c.endpoint_spec.mode = EndpointMode::Dnsrr;
    cluster.create_service(c).await.unwrap();

    let p = alloc.reconcile().await.unwrap();
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    let s = store.state();
    assert_eq!(s.network_by_name("front").unwrap().subnet.as_deref(), Some("10.0.1.0/24"));
    assert_eq!(s.network_by_name("back").unwrap().subnet.as_deref(), Some("10.0.2.0/24"));
    let a = endpoint(&s, "a");
    assert_eq!(a.virtual_ips, vec![VirtualIp { network: DEFAULT_NETWORK.into(), addr: ip("10.0.0.2") }]);
    assert_eq!(a.ports.iter().map(|p| p.published_port).collect::<Vec<_>>(), vec![Some(30000), Some(8443)]);
    let b = endpoint(&s, "b");
    assert_eq!(
        b.virtual_ips,
        vec![
            VirtualIp { network: "front".into(), addr: ip("10.0.1.2") },
            VirtualIp { network: "back".into(), addr: ip("10.0.2.2") }
        ]
    );
    assert_eq!(b.ports[0].published_port, Some(30001));
    let c = endpoint(&s, "c");
    assert!(c.virtual_ips.is_empty());
    // A second pass has nothing to do.
    assert!(alloc.reconcile().await.unwrap().is_empty());
}

#[tokio::test]
async fn conflicting_published_port_is_rejected_with_a_clear_error() {
    let (store, cluster, alloc) = setup().await;
    cluster.create_service(web("a", vec![port(80, Some(8080))])).await.unwrap();
    alloc.reconcile().await.unwrap();
    let before = store.state().revision();
    let err = create_service_checked(&cluster, web("b", vec![port(80, Some(8080))])).await.unwrap_err();
    assert_eq!(err.to_string(), "service \"b\": published port 8080/tcp is already in use by service \"a\"");
    assert_eq!(store.state().revision(), before, "a rejected create changes nothing");
    // UDP on the same number is another port.
    let udp = PortConfig { protocol: Protocol::Udp, ..port(53, Some(8080)) };
    create_service_checked(&cluster, web("d", vec![udp])).await.unwrap();

    // Created behind the check's back: the older service keeps the port, the
    // newer one is reported and gets the rest of its endpoint.
    cluster.create_service(web("b", vec![port(80, Some(8080)), port(81, None)])).await.unwrap();
    let p = alloc.reconcile().await.unwrap();
    assert_eq!(
        p.errors,
        vec![AllocError::PortInUse { service: "b".into(), port: 8080, protocol: "tcp", owner: "a".into() }]
    );
    assert_eq!(*alloc.errors().borrow(), p.errors);
    let s = store.state();
    assert_eq!(endpoint(&s, "a").ports[0].published_port, Some(8080));
    assert_eq!(endpoint(&s, "b").ports.iter().map(|p| p.target_port).collect::<Vec<_>>(), vec![81]);
}

#[tokio::test]
async fn allocations_are_stable_across_restarts_and_released_on_removal() {
    let (store, cluster, alloc) = setup().await;
    for name in ["a", "b", "c"] {
        cluster.create_service(web(name, vec![port(80, None)])).await.unwrap();
    }
    alloc.reconcile().await.unwrap();
    let first = store.state();
    drop(alloc);

    // A new allocator (a restart, a new leader) changes nothing.
    let again = Allocator::new(store.clone() as Arc<dyn Store>, AllocatorConfig::default()).unwrap();
    assert!(again.reconcile().await.unwrap().is_empty());
    for name in ["a", "b", "c"] {
        assert_eq!(endpoint(&store.state(), name), endpoint(&first, name));
    }

    // Removing b frees its VIP and port; a and c keep theirs; the next
    // service gets what b had.
    let b = endpoint(&first, "b");
    cluster.remove_service("b").await.unwrap();
    again.reconcile().await.unwrap();
    cluster.create_service(web("d", vec![port(80, None)])).await.unwrap();
    again.reconcile().await.unwrap();
    let s = store.state();
    assert_eq!(endpoint(&s, "a"), endpoint(&first, "a"));
    assert_eq!(endpoint(&s, "c"), endpoint(&first, "c"));
    assert_eq!(endpoint(&s, "d"), b);
}

#[tokio::test]
async fn plan_is_deterministic_and_keeps_valid_stored_allocations() {
    let (store, cluster, alloc) = setup().await;
    cluster.create_service(web("a", vec![port(80, None)])).await.unwrap();
    alloc.reconcile().await.unwrap();
    // Someone moved a's VIP and port by hand to other valid values: kept.
    let mut svc = store.state().service_by_name("a").unwrap().as_ref().clone();
    svc.endpoint.virtual_ips[0].addr = ip("10.0.0.77");
    svc.endpoint.ports[0].published_port = Some(31000);
    store.commit(swarm_core::state::Transaction::new().update(svc)).await.unwrap();
    cluster.create_service(web("b", vec![port(80, None)])).await.unwrap();
    let s = store.state();
    let p1 = plan(&s, &AllocatorConfig::default());
    assert_eq!(p1, plan(&s, &AllocatorConfig::default()));
    alloc.reconcile().await.unwrap();
    let s = store.state();
    assert_eq!(endpoint(&s, "a").virtual_ips[0].addr, ip("10.0.0.77"));
    assert_eq!(endpoint(&s, "a").ports[0].published_port, Some(31000));
    assert_eq!(endpoint(&s, "b").virtual_ips[0].addr, ip("10.0.0.2"));
    assert_eq!(endpoint(&s, "b").ports[0].published_port, Some(30000));

    // A VIP outside the subnet is replaced.
    let mut svc = s.service_by_name("b").unwrap().as_ref().clone();
    svc.endpoint.virtual_ips[0].addr = ip("192.168.1.1");
    store.commit(swarm_core::state::Transaction::new().update(svc)).await.unwrap();
    alloc.reconcile().await.unwrap();
    assert_eq!(endpoint(&store.state(), "b").virtual_ips[0].addr, ip("10.0.0.2"));
}

#[tokio::test]
async fn exhaustion_and_bad_settings_are_reported() {
    let store = Arc::new(MemStore::new());
    let cluster = Cluster::with_seed(store.clone() as Arc<dyn Store>, 1);
    let cfg = AllocatorConfig { ingress_ports: 30000..=30001, ..Default::default() };
    for name in ["a", "b", "c"] {
        cluster.create_service(web(name, vec![port(80, None)])).await.unwrap();
    }
    let p = plan(&store.state(), &cfg);
    assert_eq!(
        p.errors,
        vec![AllocError::PortRangeExhausted { service: "c".into(), protocol: "tcp", range: "30000-30001".into() }]
    );
    let bad = AllocatorConfig { slice_prefix: 4, ..Default::default() };
    let err = Allocator::new(store.clone() as Arc<dyn Store>, bad).err().unwrap();
    assert_eq!(err.to_string(), "allocator settings: slice_prefix /4 must be between the pool's /8 and /30");
}

/// Run by a manager in place of its default allocator, the allocator moves
/// NEW tasks to PENDING only once their service is allocated: a service
/// whose published port is taken keeps its tasks NEW with the reason, and
/// they are scheduled once the port is free.
#[tokio::test(start_paused = true)]
async fn tasks_wait_as_new_until_their_service_is_allocated() {
    use std::time::Duration;
    use swarm_core::manager::Manager;
    let (store, cluster, alloc) = setup().await;
    let mut errors = alloc.errors();
    let _manager = Manager::builder(store.clone())
        .scheduler(Box::new(swarm_sched::Pipeline::spread()))
        .allocator(move || alloc.controller())
        .start()
        .unwrap();
    cluster.create_service(web("a", vec![port(80, Some(8080))])).await.unwrap();
    cluster.create_service(web("b", vec![port(80, Some(8080))])).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let states = |name: &str| -> Vec<(TaskState, String)> {
        let s = store.state();
        let id = s.service_by_name(name).unwrap().id.clone();
        s.tasks_of_service(&id).map(|t| (t.status.state, t.status.message.clone())).collect()
    };
    // No node: a's task is admitted and waits for one; b's never got past NEW.
    assert_eq!(states("a").len(), 1);
    assert_eq!(states("a")[0].0, TaskState::Pending, "{:?}", states("a"));
    let b = states("b");
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].0, TaskState::New);
    assert!(
        b[0].1.starts_with("allocation failed: ") && b[0].1.contains("8080") && b[0].1.contains("\"a\""),
        "the reason names the port and its owner: {}",
        b[0].1
    );
    assert_eq!(errors.borrow_and_update().len(), 1);

    cluster.remove_service("a").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(states("b")[0].0, TaskState::Pending, "admitted once the port was free: {:?}", states("b"));
    assert!(errors.borrow().is_empty());
}
