//! The dispatcher carries each node's overlay view (swarm_core::overlay)
//! to its worker: the whole view in the first message of a session, then
//! a new view whenever a change in the store alters it, and nothing when
//! a change leaves it as it was. The view carries each network's DNS
//! names, so a task becoming RUNNING (an endpoint of its service) sends a
//! new view.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;
use swarm_core::dispatcher::{AssignmentStream, Assignments, Dispatcher, LocalDispatcher, SessionRequest};
use swarm_core::id::NodeId;
use swarm_core::model::*;
use swarm_core::overlay::OverlayView;
use swarm_core::state::Transaction;
use swarm_core::store::{MemStore, Store};

fn request(node: &str, addr: &str) -> SessionRequest {
    SessionRequest {
        node_id: NodeId::new(node),
        description: NodeDescription {
            hostname: node.into(),
            platform: Platform::new("linux", "amd64"),
            ..Default::default()
        },
        addr: addr.into(),
    }
}

fn network(id: &str, name: &str, vni: u32, subnet: &str) -> Network {
    Network {
        id: id.into(),
        spec: NetworkSpec { name: name.into(), driver: "overlay".into(), ..Default::default() },
        subnet: Some(subnet.into()),
        gateway: Some(subnet.replace(".0/24", ".1")),
        vni: Some(vni),
        ..Default::default()
    }
}

fn task(id: &str, node: &str, net: &Network, addr: &str, state: TaskState) -> Task {
    Task {
        id: id.into(),
        service_id: "s1".into(),
        service_name: "web".into(),
        node_id: Some(node.into()),
        desired_state: TaskState::Running,
        status: TaskStatus { state, ..Default::default() },
        networks: vec![NetworkAttachment {
            network: net.spec.name.clone(),
            addresses: vec![addr.into()],
            overlay: Some(OverlayAttachment {
                network_id: net.id.clone(),
                vni: net.vni.unwrap_or_default(),
                subnet: net.subnet.clone().unwrap_or_default(),
                gateway: net.gateway.clone().unwrap_or_default(),
                internal: false,
                encrypted: false,
            }),
        }],
        ..Default::default()
    }
}

/// A store, a dispatcher on it and its router task (abort it at the end).
fn dispatcher() -> (Arc<dyn Store>, LocalDispatcher, tokio::task::JoinHandle<Result<(), swarm_core::store::StoreError>>)
{
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let d = LocalDispatcher::new(store.clone());
    let router = {
        let d = d.clone();
        tokio::spawn(async move { d.run().await })
    };
    (store, d, router)
}

/// Starts the agent of node n1 (address 192.168.0.1) on `runtime` against
/// `d`, and waits until its session registered the node: its published
/// overlay view and its task.
async fn start_agent(
    store: &Arc<dyn Store>,
    d: &LocalDispatcher,
    runtime: Arc<swarm_core::sim::SimRuntime>,
) -> (tokio::sync::watch::Receiver<OverlayView>, tokio::task::JoinHandle<Result<(), swarm_core::agent::AgentError>>) {
    use swarm_core::agent::{Agent, AgentConfig};
    let agent = Agent::new(
        AgentConfig { node_id: "n1".into(), description: NodeDescription::default(), addr: "192.168.0.1".into() },
        runtime,
        Arc::new(d.clone()),
    );
    let views = agent.overlay();
    let run = tokio::spawn(agent.run());
    while store.snapshot().await.unwrap().node(&"n1".into()).is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (views, run)
}

/// The next message carrying a view, skipping others, within 5 s.
async fn next_view(s: &mut AssignmentStream) -> OverlayView {
    loop {
        let msg: Assignments = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("a message within 5 s")
            .expect("the stream is open");
        if let Some(v) = msg.overlay {
            return v;
        }
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn workers_receive_their_overlay_views_and_their_changes() {
    let (store, d, router) = dispatcher();
    let net = network("net1", "back", 4096, "10.10.1.0/24");
    let other = network("net2", "other", 4097, "10.10.2.0/24");
    let svc = Service { id: "s1".into(), spec: ServiceSpec::replicated("web", "img:1", 2), ..Default::default() };
    store.commit(Transaction::new().create(net.clone()).create(other.clone()).create(svc)).await.unwrap();
    let s1 = d.open_session(request("n1", "192.168.0.1")).await.unwrap().session_id;
    let s2 = d.open_session(request("n2", "192.168.0.2")).await.unwrap().session_id;
    let mut a1 = d.assignments(&s1).await.unwrap();
    let mut a2 = d.assignments(&s2).await.unwrap();
    // No task yet: nothing to join.
    assert!(next_view(&mut a1).await.networks.is_empty());
    assert!(next_view(&mut a2).await.networks.is_empty());

    // A task on n1: n1 joins "back" with it as local; n2 has no task there
    // and does not join.
    store.commit(Transaction::new().create(task("t1", "n1", &net, "10.10.1.2", TaskState::Assigned))).await.unwrap();
    let v1 = next_view(&mut a1).await;
    let back = &v1.networks[&4096];
    assert_eq!(back.name, "back");
    assert_eq!(back.subnet, "10.10.1.0/24");
    assert_eq!(back.gateway, "10.10.1.1");
    assert_eq!(back.local.iter().copied().collect::<Vec<_>>(), vec![ip("10.10.1.2")]);
    assert!(back.remote.is_empty());

    // A task on n2: each node sees the other's task as remote, at the
    // other node's address.
    store.commit(Transaction::new().create(task("t2", "n2", &net, "10.10.1.3", TaskState::Assigned))).await.unwrap();
    let v1 = next_view(&mut a1).await;
    let v2 = next_view(&mut a2).await;
    assert_eq!(v1.networks[&4096].remote.get(&ip("10.10.1.3")), Some(&IpAddr::from([192, 168, 0, 2])));
    assert_eq!(v2.networks[&4096].remote.get(&ip("10.10.1.2")), Some(&IpAddr::from([192, 168, 0, 1])));
    assert_eq!(v2.networks[&4096].local.iter().copied().collect::<Vec<_>>(), vec![ip("10.10.1.3")]);

    // The service is attached to no network (no names): a worker's RUNNING
    // report changes no view and no view is sent. The next message with a
    // view is the one after the task on n2 ends.
    let mut running = task("t2", "n2", &net, "10.10.1.3", TaskState::Running);
    running.meta.version = store.snapshot().await.unwrap().task(&"t2".into()).unwrap().meta.version;
    store.commit(Transaction::new().update(running.clone())).await.unwrap();
    let mut done = running;
    done.status.state = TaskState::Complete;
    done.meta.version = store.snapshot().await.unwrap().task(&"t2".into()).unwrap().meta.version;
    store.commit(Transaction::new().update(done)).await.unwrap();
    let v1 = next_view(&mut a1).await;
    assert!(v1.networks[&4096].remote.is_empty(), "the finished task's entry is gone: {v1:?}");
    let v2 = next_view(&mut a2).await;
    assert!(v2.networks.is_empty(), "n2 has no task on the network any more: {v2:?}");
    router.abort();
}

#[tokio::test(start_paused = true)]
async fn the_ingress_network_is_joined_by_every_node() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let d = LocalDispatcher::new(store.clone());
    let mut ingress = network("ing", "ingress", 4100, "10.0.0.0/24");
    ingress.spec.ingress = true;
    ingress.spec.driver = String::new();
    store.commit(Transaction::new().create(ingress)).await.unwrap();
    let s = d.open_session(request("n1", "192.168.0.1")).await.unwrap().session_id;
    let mut a = d.assignments(&s).await.unwrap();
    let router = {
        let d = d.clone();
        tokio::spawn(async move { d.run().await })
    };
    let v = next_view(&mut a).await;
    assert!(v.networks[&4100].ingress);
    assert!(v.networks[&4100].local.is_empty());
    router.abort();
}

/// The agent hands the view it receives to whoever programs the node's
/// data plane, and keeps it while disconnected.
#[tokio::test(start_paused = true)]
async fn the_agent_publishes_its_nodes_view() {
    use swarm_core::sim::SimRuntime;
    let (store, d, router) = dispatcher();
    let net = network("net1", "back", 4096, "10.10.1.0/24");
    let svc = Service { id: "s1".into(), spec: ServiceSpec::replicated("web", "img:1", 2), ..Default::default() };
    store.commit(Transaction::new().create(net.clone()).create(svc)).await.unwrap();
    let (mut views, run) = start_agent(&store, &d, Arc::new(SimRuntime::new("n1"))).await;
    // n2 is another node (no agent) with a task on the network.
    let mut n2 = Node::ready("n2", "h2", Resources::default());
    n2.status.addr = "192.168.0.2".into();
    store.commit(Transaction::new().create(n2)).await.unwrap();
    store
        .commit(Transaction::new().create(task("t1", "n1", &net, "10.10.1.2", TaskState::Assigned)).create(task(
            "t2",
            "n2",
            &net,
            "10.10.1.3",
            TaskState::Assigned,
        )))
        .await
        .unwrap();
    let seen = tokio::time::timeout(
        Duration::from_secs(5),
        views.wait_for(|v| v.networks.get(&4096).is_some_and(|n| !n.remote.is_empty())),
    )
    .await
    .expect("a view within 5 s")
    .expect("the agent is running")
    .clone();
    assert_eq!(seen.networks[&4096].remote.get(&ip("10.10.1.3")), Some(&IpAddr::from([192, 168, 0, 2])));
    assert!(seen.networks[&4096].local.contains(&ip("10.10.1.2")));
    // The managers go away: the last view stays.
    router.abort();
    d.drop_session(&"n1".into());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(*views.borrow(), seen);
    run.abort();
}

/// The names of a network follow its service's endpoints: a task becoming
/// RUNNING, a VIP being allocated, a task ending; each sends a new view to
/// every node of the network.
#[tokio::test(start_paused = true)]
async fn workers_receive_the_names_of_their_networks() {
    use swarm_core::overlay::NameRecord;
    let (store, d, router) = dispatcher();
    let net = network("net1", "back", 4096, "10.10.1.0/24");
    let mut svc = Service { id: "s1".into(), spec: ServiceSpec::replicated("web", "img:1", 2), ..Default::default() };
    svc.spec.networks = vec![NetworkAttachmentConfig { target: "back".into(), aliases: vec!["www".into()] }];
    store.commit(Transaction::new().create(net.clone()).create(svc)).await.unwrap();
    let s1 = d.open_session(request("n1", "192.168.0.1")).await.unwrap().session_id;
    let s2 = d.open_session(request("n2", "192.168.0.2")).await.unwrap().session_id;
    let mut a1 = d.assignments(&s1).await.unwrap();
    let mut a2 = d.assignments(&s2).await.unwrap();
    assert!(next_view(&mut a1).await.networks.is_empty());
    assert!(next_view(&mut a2).await.networks.is_empty());
    let records = |addrs: &[&str], vip: bool| NameRecord { addrs: addrs.iter().map(|a| ip(a)).collect(), vip };

    store
        .commit(Transaction::new().create(task("t1", "n1", &net, "10.10.1.2", TaskState::Assigned)).create(task(
            "t2",
            "n2",
            &net,
            "10.10.1.3",
            TaskState::Assigned,
        )))
        .await
        .unwrap();
    let v1 = next_view(&mut a1).await;
    assert_eq!(v1.networks[&4096].names["tasks.web"], records(&[], false), "no endpoint yet: {v1:?}");
    next_view(&mut a2).await;

    // t2 reports RUNNING: both nodes get the new names.
    let snapshot = store.snapshot().await.unwrap();
    let mut running = snapshot.task(&"t2".into()).unwrap().as_ref().clone();
    running.status.state = TaskState::Running;
    store.commit(Transaction::new().update(running)).await.unwrap();
    for a in [&mut a1, &mut a2] {
        let names = next_view(a).await.networks[&4096].names.clone();
        assert_eq!(names["web"], records(&["10.10.1.3"], false));
        assert_eq!(names["www"], records(&["10.10.1.3"], false));
        assert_eq!(names["tasks.web"], records(&["10.10.1.3"], false));
    }

    // A VIP is allocated: the name and alias resolve to it.
    let snapshot = store.snapshot().await.unwrap();
    let mut svc = snapshot.service(&"s1".into()).unwrap().as_ref().clone();
    svc.endpoint.virtual_ips = vec![VirtualIp { network: "back".into(), addr: "10.10.1.250".parse().unwrap() }];
    store.commit(Transaction::new().update(svc)).await.unwrap();
    let names = next_view(&mut a1).await.networks[&4096].names.clone();
    assert_eq!(names["web"], records(&["10.10.1.250"], true));
    assert_eq!(names["www"], records(&["10.10.1.250"], true));
    assert_eq!(names["tasks.web"], records(&["10.10.1.3"], false));
    next_view(&mut a2).await;

    // t2 is told to stop: its address leaves tasks.web (and its entry the
    // forwarding tables) at once.
    let snapshot = store.snapshot().await.unwrap();
    let mut stopping = snapshot.task(&"t2".into()).unwrap().as_ref().clone();
    stopping.desired_state = TaskState::Shutdown;
    store.commit(Transaction::new().update(stopping)).await.unwrap();
    let v1 = next_view(&mut a1).await;
    assert_eq!(v1.networks[&4096].names["tasks.web"], records(&[], false));
    assert!(v1.networks[&4096].remote.is_empty());
    router.abort();
}

/// When the node leaves an overlay network (its last task there stops),
/// the agent removes the runtime's network for it.
#[tokio::test(start_paused = true)]
async fn the_agent_removes_the_runtimes_network_of_a_network_it_left() {
    use swarm_core::sim::SimRuntime;
    let (store, d, router) = dispatcher();
    let net = network("net1", "back", 4096, "10.10.1.0/24");
    let svc = Service { id: "s1".into(), spec: ServiceSpec::replicated("web", "img:1", 1), ..Default::default() };
    store.commit(Transaction::new().create(net.clone()).create(svc)).await.unwrap();
    let sim = Arc::new(SimRuntime::new("n1"));
    let (_, run) = start_agent(&store, &d, sim.clone()).await;
    let mut t = task("t1", "n1", &net, "10.10.1.2", TaskState::Assigned);
    t.spec.container.image = "img:1".into();
    store.commit(Transaction::new().create(t)).await.unwrap();
    let mut waited = 0;
    while !sim.networks().contains(&"back".to_string()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
        assert!(waited < 100, "the task's container was created with its network: {:?}", sim.networks());
    }
    // Told to stop: the node leaves the network, then the agent removes it
    // once the container is gone.
    let mut t = store.snapshot().await.unwrap().task(&"t1".into()).unwrap().as_ref().clone();
    t.desired_state = TaskState::Shutdown;
    store.commit(Transaction::new().update(t)).await.unwrap();
    let mut waited = 0;
    while sim.networks().contains(&"back".to_string()) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        waited += 1;
        assert!(waited < 200, "the network was removed: {:?}", sim.networks());
    }
    run.abort();
    router.abort();
}
