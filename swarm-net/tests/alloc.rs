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

// ---- Overlay IPAM: the pure pass on a State, as the controller runs it.

mod ipam {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::Ipv4Addr;
    use swarm_core::allocator::{Allocate, TaskAllocation, admit_new_tasks};
    use swarm_core::id::TaskId;
    use swarm_core::state::Transaction;
    use swarm_core::time::Timestamp;

    /// A state built by hand, allocated by passes of the real
    /// [`NetworkAllocation`], each committed as the controller commits it.
    pub struct World {
        pub state: State,
        pass: NetworkAllocation,
        next: u64,
    }

    impl World {
        pub fn new() -> World {
            World {
                state: State::default(),
                pass: NetworkAllocation::new(AllocatorConfig::default()).unwrap(),
                next: 0,
            }
        }

        pub fn commit(&mut self, tx: Transaction) {
            self.state = self.state.apply(&tx).expect("commit").0;
        }

        pub fn network(&mut self, spec: NetworkSpec) {
            let id = format!("net-{}", spec.name);
            self.commit(Transaction::new().create(Network { id: id.into(), spec, ..Default::default() }));
        }

        pub fn overlay(&mut self, name: &str, subnet: &str) {
            self.network(NetworkSpec {
                name: name.into(),
                driver: "overlay".into(),
                subnet: subnet.into(),
                ..Default::default()
            });
        }

        /// A service attached to `nets` (names), with no task yet.
        pub fn service(&mut self, name: &str, nets: &[&str], mode: EndpointMode) {
            let mut spec = ServiceSpec::replicated(name, "nginx:1.27", 0);
            spec.networks =
                nets.iter().map(|n| NetworkAttachmentConfig { target: n.to_string(), aliases: vec![] }).collect();
            spec.endpoint_spec.mode = mode;
            let id = format!("svc-{name}");
            self.commit(Transaction::new().create(Service { id: id.into(), spec, ..Default::default() }));
        }

        /// A NEW task of `service`, as the orchestrator makes it.
        pub fn task(&mut self, service: &str) -> TaskId {
            let svc = self.state.service_by_name(service).expect("service").clone();
            self.next += 1;
            let id = TaskId::new(format!("{service}-t{:03}", self.next));
            let task = Task {
                id: id.clone(),
                service_id: svc.id.clone(),
                service_name: svc.spec.name.clone(),
                slot: Some(self.next),
                spec: svc.spec.task_template.clone(),
                endpoint: svc.spec.endpoint_spec.clone(),
                networks: svc
                    .spec
                    .networks
                    .iter()
                    .map(|n| NetworkAttachment { network: n.target.clone(), ..Default::default() })
                    .collect(),
                desired_state: TaskState::Running,
                status: TaskStatus { state: TaskState::New, message: "created".into(), ..Default::default() },
                ..Default::default()
            };
            self.commit(Transaction::new().create(task));
            id
        }

        /// One allocation pass, committed; returns what it allocated.
        pub fn pass(&mut self) -> swarm_core::allocator::Allocation {
            let alloc = self.pass.allocate(&self.state);
            let mut ops = alloc.ops.clone();
            ops.extend(admit_new_tasks(&self.state, &alloc, Timestamp(1)));
            if !ops.is_empty() {
                self.commit(Transaction { ops, timestamp: None });
            }
            alloc
        }

        /// Passes until one writes nothing (at most 5).
        pub fn settle(&mut self) {
            for _ in 0..5 {
                let before = self.state.revision();
                self.pass();
                if self.state.revision() == before {
                    return;
                }
            }
            panic!("the allocator does not settle");
        }

        pub fn set_state(&mut self, id: &TaskId, state: TaskState, desired: TaskState) {
            let mut t = self.state.task(id).expect("task").as_ref().clone();
            t.status.state = state;
            t.desired_state = desired;
            self.commit(Transaction::new().update(t));
        }

        pub fn remove_task(&mut self, id: &TaskId) {
            let v = self.state.task(id).expect("task").meta.version;
            self.commit(Transaction::new().delete(swarm_core::model::ObjectKind::Task, id.to_string(), v));
        }

        pub fn t(&self, id: &TaskId) -> Task {
            self.state.task(id).expect("task").as_ref().clone()
        }

        /// The task's address on `net`, if it has one.
        pub fn addr(&self, id: &TaskId, net: &str) -> Option<Ipv4Addr> {
            let t = self.t(id);
            let a = t.networks.iter().find(|a| a.network == net)?;
            a.addresses.first().map(|s| s.parse().expect("address"))
        }

        pub fn net(&self, name: &str) -> Network {
            self.state.network_by_name(name).expect("network").as_ref().clone()
        }

        pub fn vip(&self, service: &str, net: &str) -> Option<IpAddr> {
            let s = self.state.service_by_name(service).expect("service");
            s.endpoint.virtual_ips.iter().find(|v| v.network == net).map(|v| v.addr)
        }
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn an_overlay_network_gets_gateway_and_vni_and_its_tasks_unique_addresses_on_admission() {
        let mut w = World::new();
        w.overlay("ovl", "");
        w.service("web", &["ovl"], EndpointMode::Vip);
        let tasks: Vec<TaskId> = (0..3).map(|_| w.task("web")).collect();

        // First pass: the network's allocation is written; its tasks wait
        // untouched (no VNI in a task that the store does not hold yet).
        let first = w.pass();
        assert!(tasks.iter().all(|t| first.tasks.get(t) == Some(&TaskAllocation::Wait)), "{:?}", first.tasks);
        for t in &tasks {
            assert_eq!(w.t(t).status.state, TaskState::New);
            assert_eq!(w.t(t).status.message, "created");
            assert_eq!(w.t(t).meta.version.0, w.t(t).meta.created_revision, "a waiting task is not written");
        }
        let n = w.net("ovl");
        assert_eq!(n.subnet.as_deref(), Some("10.0.1.0/24"));
        assert_eq!(n.gateway.as_deref(), Some("10.0.1.1"));
        assert_eq!(n.vni, Some(FIRST_VNI));
        assert_eq!(w.vip("web", "ovl"), Some(ip("10.0.1.2")));

        // Second pass: admitted, one write each, with the attachment.
        w.pass();
        for (i, t) in tasks.iter().enumerate() {
            let task = w.t(t);
            assert_eq!(task.status.state, TaskState::Pending);
            assert_eq!(task.meta.version.0, w.state.revision(), "one write from NEW to PENDING, with its address");
            assert_eq!(
                task.networks,
                vec![NetworkAttachment {
                    network: "ovl".into(),
                    addresses: vec![format!("10.0.1.{}", 3 + i)],
                    overlay: Some(OverlayAttachment {
                        network_id: n.id.clone(),
                        vni: FIRST_VNI,
                        subnet: "10.0.1.0/24".into(),
                        gateway: "10.0.1.1".into(),
                        internal: false,
                        encrypted: false,
                    }),
                }]
            );
        }
        // Nothing more to do: a third pass writes nothing.
        let rev = w.state.revision();
        let third = w.pass();
        assert!(third.ops.is_empty() && third.tasks.is_empty());
        assert_eq!(w.state.revision(), rev);
    }

    #[test]
    fn network_broadcast_gateway_and_vips_are_skipped_and_exhaustion_waits_until_an_address_is_released() {
        let mut w = World::new();
        w.overlay("x", "10.0.9.0/29");
        w.service("web", &["x"], EndpointMode::Vip);
        w.settle();
        assert_eq!(w.vip("web", "x"), Some(ip("10.0.9.2")));
        // .0 network, .1 gateway, .2 the VIP, .7 broadcast: .3-.6 are left.
        let tasks: Vec<TaskId> = (0..6).map(|_| w.task("web")).collect();
        w.pass();
        let addrs: Vec<Option<Ipv4Addr>> = tasks.iter().map(|t| w.addr(t, "x")).collect();
        assert_eq!(
            addrs,
            vec![Some(v4("10.0.9.3")), Some(v4("10.0.9.4")), Some(v4("10.0.9.5")), Some(v4("10.0.9.6")), None, None]
        );
        for t in &tasks[4..] {
            let task = w.t(t);
            assert_eq!(task.status.state, TaskState::New);
            assert_eq!(task.status.message, "allocation failed: network \"x\": no free address in 10.0.9.0/29");
        }
        let errs = w.pass.allocate(&w.state);
        assert_eq!(errs.blocked.len(), 0, "the service is not blocked: only the tasks without an address wait");

        // A task told to stop but still running keeps its address.
        w.set_state(&tasks[0], TaskState::Running, TaskState::Shutdown);
        w.pass();
        assert_eq!(w.t(&tasks[4]).status.state, TaskState::New);
        // Once it is dead, its address goes to the oldest waiting task.
        w.set_state(&tasks[0], TaskState::Shutdown, TaskState::Shutdown);
        w.pass();
        assert_eq!(w.t(&tasks[4]).status.state, TaskState::Pending);
        assert_eq!(w.addr(&tasks[4], "x"), Some(v4("10.0.9.3")));
        assert_eq!(w.t(&tasks[5]).status.state, TaskState::New);
        // A task removed from the store (even before it ended) releases too.
        w.remove_task(&tasks[2]);
        w.pass();
        assert_eq!(w.t(&tasks[5]).status.state, TaskState::Pending);
        assert_eq!(w.addr(&tasks[5], "x"), Some(v4("10.0.9.5")));
        // The others never moved.
        assert_eq!(w.addr(&tasks[1], "x"), Some(v4("10.0.9.4")));
        assert_eq!(w.addr(&tasks[3], "x"), Some(v4("10.0.9.6")));
    }

    #[test]
    fn ip_range_and_a_given_gateway_are_honoured_for_vips_and_tasks() {
        let mut w = World::new();
        w.network(NetworkSpec {
            name: "r".into(),
            driver: "overlay".into(),
            subnet: "10.20.0.0/24".into(),
            gateway: "10.20.0.9".into(),
            ip_range: "10.20.0.8/30".into(),
            ..Default::default()
        });
        w.service("api", &["r"], EndpointMode::Vip);
        w.settle();
        assert_eq!(w.net("r").gateway.as_deref(), Some("10.20.0.9"));
        // The range is .8-.11; .9 is the gateway; .8 and .11 are hosts of
        // the /24, so usable.
        assert_eq!(w.vip("api", "r"), Some(ip("10.20.0.8")));
        let a = w.task("api");
        let b = w.task("api");
        let c = w.task("api");
        w.pass();
        assert_eq!(w.addr(&a, "r"), Some(v4("10.20.0.10")));
        assert_eq!(w.addr(&b, "r"), Some(v4("10.20.0.11")));
        assert_eq!(w.t(&c).status.message, "allocation failed: network \"r\": no free address in 10.20.0.8/30");
        assert_eq!(w.t(&a).networks[0].overlay.as_ref().unwrap().gateway, "10.20.0.9");
    }

    #[test]
    fn a_vip_never_takes_an_address_a_task_holds_whichever_came_first() {
        let mut w = World::new();
        w.overlay("o", "10.30.0.0/24");
        // A DNSRR service has no VIP: its tasks take .2 and .3.
        w.service("rr", &["o"], EndpointMode::Dnsrr);
        w.settle();
        let a = w.task("rr");
        let b = w.task("rr");
        w.pass();
        assert_eq!((w.addr(&a, "o"), w.addr(&b, "o")), (Some(v4("10.30.0.2")), Some(v4("10.30.0.3"))));
        // A VIP service created later skips the tasks' addresses.
        w.service("v", &["o"], EndpointMode::Vip);
        w.pass();
        assert_eq!(w.vip("v", "o"), Some(ip("10.30.0.4")));
        // A stored VIP on a task's address (a store written by hand) is
        // moved by the next pass that gives addresses (it looks at the
        // tasks' addresses then): the running container's address cannot
        // move. The new task of that pass skips both.
        let mut svc = w.state.service_by_name("v").unwrap().as_ref().clone();
        svc.endpoint.virtual_ips[0].addr = ip("10.30.0.2");
        w.commit(Transaction::new().update(svc));
        let c = w.task("rr");
        w.pass();
        assert_eq!(w.vip("v", "o"), Some(ip("10.30.0.4")));
        assert_eq!(w.addr(&a, "o"), Some(v4("10.30.0.2")));
        assert_eq!(w.addr(&c, "o"), Some(v4("10.30.0.5")));
    }

    #[test]
    fn allocations_are_stable_for_a_new_leader_and_admitted_tasks_are_never_readdressed() {
        let mut w = World::new();
        w.overlay("a", "");
        w.overlay("b", "");
        w.service("s", &["a", "b"], EndpointMode::Vip);
        w.settle();
        let tasks: Vec<TaskId> = (0..4).map(|_| w.task("s")).collect();
        w.pass();
        let before: Vec<Task> = tasks.iter().map(|t| w.t(t)).collect();
        assert!(before.iter().all(|t| t.networks.len() == 2 && t.networks.iter().all(|a| a.overlay.is_some())));
        assert_eq!((w.net("a").vni, w.net("b").vni), (Some(FIRST_VNI), Some(FIRST_VNI + 1)));

        // A new leader: a fresh pass over the same store changes nothing.
        let mut fresh = NetworkAllocation::new(AllocatorConfig::default()).unwrap();
        let again = fresh.allocate(&w.state);
        assert!(again.ops.is_empty() && again.tasks.is_empty() && again.blocked.is_empty(), "{again:?}");

        // Tasks move on (scheduled, running): still the same addresses,
        // and a new task gets the next free one, not a held one.
        for t in &tasks {
            w.set_state(t, TaskState::Running, TaskState::Running);
        }
        let n = w.task("s");
        w.pass();
        for (t, b) in tasks.iter().zip(&before) {
            assert_eq!(w.t(t).networks, b.networks);
        }
        assert_eq!(w.addr(&n, "a"), Some(v4("10.0.1.7")));
        assert_eq!(w.addr(&n, "b"), Some(v4("10.0.2.7")));
    }

    #[test]
    fn vnis_are_the_lowest_free_from_4096_or_the_requested_one() {
        let mut w = World::new();
        let with_vni = |name: &str, vni: &str| NetworkSpec {
            name: name.into(),
            driver: "overlay".into(),
            options: [(swarm_core::validate::OPT_VXLANID_LIST.to_string(), vni.to_string())].into(),
            ..Default::default()
        };
        w.network(with_vni("asked", "4096"));
        w.overlay("auto1", "");
        w.network(with_vni("low", "100"));
        w.overlay("auto2", "");
        // Bridge networks get no VNI.
        w.network(NetworkSpec { name: "local".into(), driver: "bridge".into(), ..Default::default() });
        w.settle();
        assert_eq!(w.net("asked").vni, Some(4096));
        assert_eq!(w.net("auto1").vni, Some(4097));
        assert_eq!(w.net("low").vni, Some(100));
        assert_eq!(w.net("auto2").vni, Some(4098));
        assert_eq!((w.net("local").vni, w.net("local").gateway.clone()), (None, None));
        assert!(w.net("local").subnet.is_some());

        // A request for a VNI another network holds (written behind the
        // create check's back): that network gets no allocation, and the
        // error names the holder; its services wait.
        w.network(with_vni("clash", "4097"));
        w.service("c", &["clash"], EndpointMode::Vip);
        let t = w.task("c");
        w.pass();
        let p = plan(&w.state, &AllocatorConfig::default());
        assert!(p.errors.contains(&AllocError::BadNetwork {
            network: "clash".into(),
            field: "options.com.docker.network.driver.overlay.vxlanid_list".into(),
            value: "4097".into(),
            reason: "is the VNI of network \"auto1\"".into(),
        }));
        assert_eq!(w.net("clash").vni, None);
        assert_eq!(
            w.t(&t).status.message,
            "allocation failed: network \"clash\": options.com.docker.network.driver.overlay.vxlanid_list \"4097\" is the VNI of network \"auto1\""
        );
        // The stored VNIs of the others did not move.
        assert_eq!(w.net("auto1").vni, Some(4097));
    }

    #[test]
    fn internal_and_encrypted_networks_and_node_local_ones() {
        let mut w = World::new();
        w.network(NetworkSpec {
            name: "secret".into(),
            driver: "overlay".into(),
            internal: true,
            options: [("encrypted".to_string(), String::new())].into(),
            ..Default::default()
        });
        w.network(NetworkSpec { name: "br".into(), driver: "bridge".into(), ..Default::default() });
        w.service("s", &["secret", "br"], EndpointMode::Vip);
        w.service("plain", &["br"], EndpointMode::Vip);
        w.settle();
        let t = w.task("s");
        let p = w.task("plain");
        let alloc = w.pass();
        assert!(!alloc.tasks.contains_key(&p), "a task on node-local networks only is admitted as it is");
        assert_eq!(w.t(&p).status.state, TaskState::Pending);
        assert_eq!(w.t(&p).networks, vec![NetworkAttachment { network: "br".into(), ..Default::default() }]);
        let task = w.t(&t);
        assert_eq!(task.status.state, TaskState::Pending);
        let o = task.networks[0].overlay.clone().expect("overlay");
        assert!(o.internal && o.encrypted);
        assert_eq!(o.gateway, "", "an internal network gives no gateway to its tasks");
        assert_eq!(w.net("secret").gateway.as_deref(), Some("10.0.1.1"), "but reserves it");
        assert_eq!(task.networks[1], NetworkAttachment { network: "br".into(), ..Default::default() });
    }

    #[test]
    fn tasks_publishing_ingress_ports_get_an_address_on_the_ingress_network() {
        let mut w = World::new();
        w.network(NetworkSpec { name: "ingress".into(), ingress: true, ..Default::default() });
        w.overlay("app", "");
        let mut spec = ServiceSpec::replicated("pub", "nginx:1.27", 0);
        spec.networks = vec![NetworkAttachmentConfig { target: "net-app".into(), aliases: vec![] }];
        spec.endpoint_spec.ports = vec![port(80, Some(8080))];
        w.commit(Transaction::new().create(Service { id: "svc-pub".into(), spec, ..Default::default() }));
        w.service("quiet", &["app"], EndpointMode::Vip);
        w.settle();
        let a = w.task("pub");
        let b = w.task("quiet");
        w.pass();
        let nets: Vec<String> = w.t(&a).networks.iter().map(|n| n.network.clone()).collect();
        assert_eq!(nets, vec!["ingress".to_string(), "app".to_string()], "ingress first; a target by id is named");
        assert_eq!(w.t(&a).networks[0].overlay.as_ref().unwrap().vni, w.net("ingress").vni.unwrap());
        assert!(w.addr(&a, "ingress").is_some());
        let nets: Vec<String> = w.t(&b).networks.iter().map(|n| n.network.clone()).collect();
        assert_eq!(nets, vec!["app".to_string()]);
    }

    #[derive(Clone, Debug)]
    enum Step {
        /// A NEW task of service `0` ("a", VIP) or `1` ("b", DNSRR).
        Create(bool),
        /// The n-th live task (mod count) reaches RUNNING.
        Run(usize),
        /// ... ends (FAILED).
        End(usize),
        /// ... is told to stop while still running.
        Stop(usize),
        /// ... leaves the store.
        Remove(usize),
        /// An allocation pass.
        Pass,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            3 => any::<bool>().prop_map(Step::Create),
            2 => any::<usize>().prop_map(Step::Run),
            1 => any::<usize>().prop_map(Step::End),
            1 => any::<usize>().prop_map(Step::Stop),
            1 => any::<usize>().prop_map(Step::Remove),
            3 => Just(Step::Pass),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]
        /// Over random sequences of task creations, state changes and
        /// removals on a small network: the addresses of tasks that hold
        /// one are unique, inside the range, never the network, broadcast,
        /// gateway or a VIP; an admitted task keeps its address; and a task
        /// waits for an address only while the range is full.
        #[test]
        fn addresses_stay_unique_inside_the_range(steps in proptest::collection::vec(step(), 1..80)) {
            let mut w = World::new();
            w.network(NetworkSpec {
                name: "p".into(),
                driver: "overlay".into(),
                subnet: "10.5.0.0/27".into(),
                gateway: "10.5.0.17".into(),
                ip_range: "10.5.0.16/29".into(),
                ..Default::default()
            });
            w.service("a", &["p"], EndpointMode::Vip);
            w.service("b", &["p"], EndpointMode::Dnsrr);
            w.settle();
            let range: ipnet::Ipv4Net = "10.5.0.16/29".parse().unwrap();
            let vip = match w.vip("a", "p") { Some(IpAddr::V4(v)) => v, other => panic!("vip {other:?}") };
            // .16-.23, less the gateway .17 and the VIP: 6 addresses.
            let capacity = 6;
            let mut first: BTreeMap<TaskId, Ipv4Addr> = BTreeMap::new();
            let live = |w: &World| -> Vec<TaskId> { w.state.tasks().map(|t| t.id.clone()).collect() };
            for s in steps {
                let ids = live(&w);
                let pick = |n: usize| ids.get(n % ids.len().max(1)).cloned();
                match s {
                    Step::Create(a) => { w.task(if a { "a" } else { "b" }); }
                    Step::Run(n) => if let Some(id) = pick(n) {
                        let t = w.t(&id);
                        if !t.status.state.is_terminal() && t.status.state >= TaskState::Pending {
                            w.set_state(&id, TaskState::Running, t.desired_state);
                        }
                    },
                    Step::End(n) => if let Some(id) = pick(n) {
                        if !w.t(&id).status.state.is_terminal() {
                            w.set_state(&id, TaskState::Failed, TaskState::Shutdown);
                        }
                    },
                    Step::Stop(n) => if let Some(id) = pick(n) {
                        let t = w.t(&id);
                        if !t.status.state.is_terminal() {
                            w.set_state(&id, t.status.state, TaskState::Shutdown);
                        }
                    },
                    Step::Remove(n) => if let Some(id) = pick(n) { w.remove_task(&id); },
                    Step::Pass => { w.pass(); }
                }
                let mut held = BTreeSet::new();
                for t in w.state.tasks() {
                    if t.status.state == TaskState::New {
                        proptest::prop_assert!(t.networks.iter().all(|a| a.overlay.is_none()));
                        continue;
                    }
                    let Some(a) = w.addr(&t.id, "p") else {
                        // Ended before it was ever admitted.
                        proptest::prop_assert!(t.status.state.is_terminal() && !first.contains_key(&t.id));
                        continue;
                    };
                    proptest::prop_assert_eq!(*first.entry(t.id.clone()).or_insert(a), a, "re-addressed");
                    if t.status.state.is_terminal() {
                        continue;
                    }
                    proptest::prop_assert!(range.contains(&a), "{} outside the range", a);
                    proptest::prop_assert!(a != v4("10.5.0.17") && a != vip, "{} is reserved", a);
                    proptest::prop_assert!(held.insert(a), "{} held twice", a);
                }
                let waiting = w.state.tasks().any(|t| {
                    t.status.state == TaskState::New
                        && t.desired_state <= TaskState::Running
                        && t.status.message.contains("no free address")
                });
                if waiting && matches!(s, Step::Pass) {
                    proptest::prop_assert_eq!(held.len(), capacity, "a task waits while addresses are free");
                }
            }
        }
    }

    #[test]
    fn a_network_whose_pool_is_exhausted_blocks_its_services_with_the_reason() {
        let cfg = AllocatorConfig { pool: "10.0.0.0/23".parse().unwrap(), ..Default::default() };
        let mut w = World { pass: NetworkAllocation::new(cfg).unwrap(), ..World::new() };
        w.overlay("one", "");
        w.overlay("two", "");
        w.service("s", &["two"], EndpointMode::Vip);
        let t = w.task("s");
        w.settle();
        assert_eq!(w.net("two").subnet, None);
        assert_eq!(
            w.t(&t).status.message,
            "allocation failed: network \"two\": no free /24 left in the address pool 10.0.0.0/23"
        );
    }
}

/// `Cluster::create_network` refuses what the allocator could not give,
/// naming the network and the field.
#[tokio::test]
async fn network_specs_are_validated_on_create_with_clear_errors() {
    let (_store, cluster, _alloc) = setup().await;
    let ovl = |name: &str| NetworkSpec { name: name.into(), driver: "overlay".into(), ..Default::default() };
    let err = |spec: NetworkSpec| {
        let cluster = &cluster;
        async move { cluster.create_network(spec).await.expect_err("refused").to_string() }
    };
    assert_eq!(
        err(NetworkSpec { subnet: "10.1.0.0/33".into(), ..ovl("a") }).await,
        "invalid network \"a\": subnet: \"10.1.0.0/33\" is not a CIDR"
    );
    assert_eq!(
        err(NetworkSpec { subnet: "fd00::/64".into(), ..ovl("a") }).await,
        "invalid network \"a\": subnet: \"fd00::/64\": overlay networks take IPv4 subnets only"
    );
    assert_eq!(
        err(NetworkSpec { subnet: "10.1.0.0/24".into(), gateway: "10.2.0.1".into(), ..ovl("a") }).await,
        "invalid network \"a\": gateway: 10.2.0.1 is not in subnet 10.1.0.0/24"
    );
    assert_eq!(
        err(NetworkSpec { subnet: "10.1.0.0/24".into(), gateway: "10.1.0.255".into(), ..ovl("a") }).await,
        "invalid network \"a\": gateway: 10.1.0.255 is the network or broadcast address of subnet 10.1.0.0/24"
    );
    assert_eq!(
        err(NetworkSpec { gateway: "10.1.0.1".into(), ..ovl("a") }).await,
        "invalid network \"a\": gateway: \"10.1.0.1\" needs a subnet to belong to (set subnet)"
    );
    assert_eq!(
        err(NetworkSpec { subnet: "10.1.0.0/24".into(), ip_range: "10.1.1.0/28".into(), ..ovl("a") }).await,
        "invalid network \"a\": ip_range: 10.1.1.0/28 is not inside subnet 10.1.0.0/24"
    );
    assert_eq!(
        err(NetworkSpec { driver: "weave".into(), ..ovl("a") }).await,
        "invalid network \"a\": driver: \"weave\" is not a known driver (one of overlay, bridge, host, null, macvlan, ipvlan)"
    );
    let vni = |v: &str| [(swarm_core::validate::OPT_VXLANID_LIST.to_string(), v.to_string())].into();
    assert_eq!(
        err(NetworkSpec { options: vni("4097,4098"), ..ovl("a") }).await,
        "invalid network \"a\": options.com.docker.network.driver.overlay.vxlanid_list: \"4097,4098\" lists 2 VNIs; the network has one subnet, so give one"
    );
    assert_eq!(
        err(NetworkSpec { options: vni("16777216"), ..ovl("a") }).await,
        "invalid network \"a\": options.com.docker.network.driver.overlay.vxlanid_list: \"16777216\" is not a VXLAN identifier (1-16777215)"
    );
    assert_eq!(
        err(NetworkSpec { driver: "bridge".into(), options: vni("5000"), ..ovl("a") }).await,
        "invalid network \"a\": options.com.docker.network.driver.overlay.vxlanid_list: a VXLAN identifier is only for an overlay network"
    );

    // Against the networks that exist.
    cluster
        .create_network(NetworkSpec { subnet: "10.1.0.0/16".into(), options: vni("5000"), ..ovl("first") })
        .await
        .unwrap();
    cluster.create_network(NetworkSpec { name: "ingress".into(), ingress: true, ..Default::default() }).await.unwrap();
    assert_eq!(
        err(NetworkSpec { subnet: "10.1.4.0/24".into(), ..ovl("b") }).await,
        "invalid network \"b\": subnet: 10.1.4.0/24 overlaps subnet 10.1.0.0/16 of network \"first\""
    );
    assert_eq!(
        err(NetworkSpec { options: vni("5000"), ..ovl("b") }).await,
        "invalid network \"b\": options.com.docker.network.driver.overlay.vxlanid_list: VNI 5000 is in use by network \"first\""
    );
    assert_eq!(
        err(NetworkSpec { ingress: true, ..ovl("b") }).await,
        "invalid network \"b\": ingress: network \"ingress\" is already the ingress network"
    );
    // A valid one passes.
    cluster
        .create_network(NetworkSpec {
            subnet: "10.2.0.0/24".into(),
            gateway: "10.2.0.254".into(),
            ip_range: "10.2.0.128/25".into(),
            ..ovl("ok")
        })
        .await
        .unwrap();
}

/// A SimRuntime that keeps every config it is asked to create.
#[derive(Clone)]
struct Recording {
    sim: swarm_core::sim::SimRuntime,
    configs: Arc<std::sync::Mutex<Vec<swarm_core::runtime::ContainerConfig>>>,
}

mod recording {
    use super::Recording;
    use std::time::Duration;
    use swarm_core::model::*;
    use swarm_core::runtime::*;

    #[async_trait::async_trait]
    impl Runtime for Recording {
        fn name(&self) -> &str {
            self.sim.name()
        }
        async fn prepare(&self, c: &ContainerConfig) -> Result<(), RuntimeError> {
            self.sim.prepare(c).await
        }
        async fn create(&self, c: &ContainerConfig) -> Result<String, RuntimeError> {
            self.configs.lock().unwrap().push(c.clone());
            self.sim.create(c).await
        }
        async fn start(&self, id: &str) -> Result<(), RuntimeError> {
            self.sim.start(id).await
        }
        async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
            self.sim.wait(id).await
        }
        async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
            self.sim.stop(id, grace).await
        }
        async fn kill(&self, id: &str) -> Result<(), RuntimeError> {
            self.sim.kill(id).await
        }
        async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
            self.sim.remove(id).await
        }
        async fn inspect(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
            self.sim.inspect(id).await
        }
        async fn list(&self, selector: &Labels) -> Result<Vec<ContainerSummary>, RuntimeError> {
            self.sim.list(selector).await
        }
        async fn logs(&self, id: &str, tail: Option<usize>) -> Result<Vec<LogLine>, RuntimeError> {
            self.sim.logs(id, tail).await
        }
        async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
            self.sim.stats(id).await
        }
        async fn exec(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecResult, RuntimeError> {
            self.sim.exec(id, cmd, timeout).await
        }
        async fn ensure_network(&self, spec: &NetworkSpec) -> Result<(), RuntimeError> {
            self.sim.ensure_network(spec).await
        }
        async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
            self.sim.remove_network(name).await
        }
        async fn ensure_volume(&self, spec: &VolumeSpec) -> Result<(), RuntimeError> {
            self.sim.ensure_volume(spec).await
        }
        async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
            self.sim.remove_volume(name).await
        }
    }
}

/// A manager running swarm-net's allocator, two nodes with agents on
/// SimRuntime: an overlay service's tasks reach RUNNING with unique
/// addresses of the network's subnet, each container is created with its
/// endpoint (bridge, address, MAC, gateway), and tasks added by a scale-up
/// never get the address of a running one.
#[tokio::test(start_paused = true)]
async fn overlay_tasks_run_with_their_allocated_addresses_as_container_endpoints() {
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;
    use std::time::Duration;
    use swarm_core::agent::{Agent, AgentConfig};
    use swarm_core::dispatcher::Dispatcher;
    use swarm_core::manager::Manager;

    let (store, cluster, alloc) = setup().await;
    let manager = Manager::builder(store.clone())
        .scheduler(Box::new(swarm_sched::Pipeline::spread()))
        .allocator(move || alloc.controller())
        .start()
        .unwrap();
    let configs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut agents = Vec::new();
    for i in 0..2u32 {
        let rt = Recording {
            sim: swarm_core::sim::SimRuntime::with_index(format!("node-{i}"), i),
            configs: configs.clone(),
        };
        let agent = Agent::new(
            AgentConfig {
                node_id: format!("node-{i}").into(),
                description: NodeDescription {
                    hostname: format!("host-{i}"),
                    platform: Platform::new("linux", "amd64"),
                    resources: Resources::new(4_000_000_000, 8 << 30),
                    engine_labels: Labels::new(),
                },
                addr: format!("192.168.50.{}", i + 1),
            },
            Arc::new(rt),
            Arc::new(manager.dispatcher()) as Arc<dyn Dispatcher>,
        );
        agents.push(tokio::spawn(agent.run()));
    }
    cluster
        .create_network(NetworkSpec {
            name: "backend".into(),
            driver: "overlay".into(),
            subnet: "10.70.0.0/24".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut spec = ServiceSpec::replicated("api", "nginx:1.27", 4);
    spec.networks = vec![NetworkAttachmentConfig { target: "backend".into(), aliases: vec![] }];
    cluster.create_service(spec).await.unwrap();

    let running = |s: &State| -> Vec<Task> {
        let Some(svc) = s.service_by_name("api") else { return vec![] };
        s.tasks_of_service(&svc.id)
            .filter(|t| t.status.state == TaskState::Running)
            .map(|t| t.as_ref().clone())
            .collect()
    };
    let mut waited = 0;
    while running(&store.state()).len() < 4 {
        assert!(waited < 120, "tasks did not reach RUNNING: {}", swarm_core::harness::summary(&store.state()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        waited += 1;
    }
    let s = store.state();
    let net = s.network_by_name("backend").unwrap().clone();
    assert_eq!(net.vni, Some(FIRST_VNI));
    assert_eq!(net.gateway.as_deref(), Some("10.70.0.1"));
    let vip = endpoint(&s, "api").virtual_ips[0].addr;
    let subnet: ipnet::Ipv4Net = "10.70.0.0/24".parse().unwrap();
    let tasks = running(&s);
    let mut seen = BTreeSet::new();
    for t in &tasks {
        assert_eq!(t.networks.len(), 1, "{:?}", t.networks);
        let a = &t.networks[0];
        let o = a.overlay.as_ref().expect("overlay attachment");
        assert_eq!((o.vni, o.subnet.as_str(), o.gateway.as_str()), (FIRST_VNI, "10.70.0.0/24", "10.70.0.1"));
        let addr: Ipv4Addr = a.addresses[0].parse().unwrap();
        assert!(subnet.contains(&addr) && addr != subnet.network() && addr != subnet.broadcast());
        assert_ne!(IpAddr::V4(addr), vip);
        assert_ne!(addr, Ipv4Addr::new(10, 70, 0, 1));
        assert!(seen.insert(addr), "address {addr} given twice");
        // The container was created with exactly that endpoint.
        let cfgs = configs.lock().unwrap();
        let cfg = cfgs.iter().find(|c| c.task_id == t.id).expect("container config");
        assert_eq!(cfg.endpoints.len(), 1);
        let e = &cfg.endpoints[0];
        assert_eq!((e.network.as_str(), e.bridge.as_str(), e.vni), ("backend", "swbr4096", FIRST_VNI));
        assert_eq!(e.address, addr);
        assert_eq!(e.mac, overlay_mac(addr));
        assert_eq!(e.gateway, Some(Ipv4Addr::new(10, 70, 0, 1)));
        assert!(cfg.networks.is_empty(), "an overlay network is an endpoint, not a runtime network");
    }
    assert_eq!(seen.len(), 4);

    // Scale up: the new tasks get fresh addresses, none of the running ones.
    let mut svc = s.service_by_name("api").unwrap().spec.clone();
    svc.mode.replicas = Some(6);
    cluster.update_service("api", svc).await.unwrap();
    let mut waited = 0;
    while running(&store.state()).len() < 6 {
        assert!(waited < 120, "scale-up did not converge: {}", swarm_core::harness::summary(&store.state()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        waited += 1;
    }
    let all: Vec<Ipv4Addr> =
        running(&store.state()).iter().map(|t| t.networks[0].addresses[0].parse().unwrap()).collect();
    let unique: BTreeSet<_> = all.iter().collect();
    assert_eq!(unique.len(), 6, "{all:?}");
    assert!(seen.iter().all(|a| all.contains(a)), "the running tasks kept their addresses");
    for a in agents {
        a.abort();
    }
}
