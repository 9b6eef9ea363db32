//! The dispatcher over the network: real mutual TLS on loopback between
//! `DispatcherService` listeners and workers (an unchanged `Agent` over a
//! `RemoteDispatcher`, or raw `RpcClient` calls for the refusals).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use swarm_core::agent::{Agent, AgentConfig};
use swarm_core::cluster::Cluster;
use swarm_core::dispatcher::{Assignments, DispatchError, Dispatcher, SessionRequest};
use swarm_core::manager::Manager;
use swarm_core::model::{NodeDescription, NodeState, Resources, ServiceSpec, TaskState};
use swarm_core::scheduler::FirstFit;
use swarm_core::sim::SimRuntime;
use swarm_core::store::MemStore;
use swarm_security::ca::{ClusterCa, NodeCsr};
use swarm_security::dispatch::{
    DispatcherService, OpenSessionReply, RemoteDispatcher, SERVICE, SessionCall, StatusReport,
};
use swarm_security::role::Role;
use swarm_security::rpc::{Code, Reloadable, Router, RpcClient, RpcError, RpcServer, ServerLimits};
use swarm_security::tls::{
    PeerPolicy, TlsCredentials, anonymous_client_config, client_config, server_config_optional_client,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const CLUSTER: &str = "cluster-1";

fn ca() -> ClusterCa {
    ClusterCa::generate(CLUSTER, Duration::from_secs(86_400)).unwrap()
}

fn creds(ca: &ClusterCa, node: &str, role: Role) -> TlsCredentials {
    let csr = NodeCsr::generate(node).unwrap();
    let cert = ca.sign_node_csr(csr.csr_pem(), node, role, None, SystemTime::now()).unwrap();
    TlsCredentials::from_pem(ca.cert_pem(), cert.cert_pem(), &csr.key_pem()).unwrap()
}

fn client_tls(ca: &ClusterCa, node: &str) -> Arc<Reloadable<rustls::ClientConfig>> {
    Reloadable::new(client_config(&creds(ca, node, Role::Worker)).unwrap())
}

fn rpc_client(addr: &str, tls: Arc<Reloadable<rustls::ClientConfig>>) -> RpcClient {
    RpcClient::new(addr.parse().unwrap(), Role::Manager.server_name(), tls).unwrap()
}

async fn bind() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

/// A manager's node API listener serving `dispatcher`. The returned
/// sender holds the leadership (dropping it freezes it).
struct Api {
    task: JoinHandle<()>,
    _leads: watch::Sender<bool>,
}

fn serve(
    ca: &ClusterCa,
    listener: TcpListener,
    dispatcher: Arc<dyn Dispatcher>,
    leads: bool,
    leader: Option<String>,
    managers: Vec<String>,
) -> Api {
    let (tx, rx) = watch::channel(leads);
    let service = DispatcherService::new(dispatcher, rx)
        .with_leader(move || leader.clone())
        .with_managers(move || managers.clone());
    let router = Arc::new(Router::new().route(SERVICE, Arc::new(service)));
    let tls =
        server_config_optional_client(&creds(ca, "manager-1", Role::Manager), PeerPolicy::nodes(CLUSTER)).unwrap();
    let task = tokio::spawn(RpcServer::serve(listener, Reloadable::new(tls), router, ServerLimits::default()));
    Api { task, _leads: tx }
}

/// Polls `cond` until it holds, failing after `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn agent(node: &str, sim: &SimRuntime, dispatcher: Arc<dyn Dispatcher>) -> JoinHandle<()> {
    let config = AgentConfig {
        node_id: node.into(),
        description: NodeDescription {
            hostname: format!("host-{node}"),
            resources: Resources::new(4_000_000_000, 8 << 30),
            ..Default::default()
        },
        addr: "10.0.0.1".into(),
    };
    let agent = Agent::new(config, Arc::new(sim.clone()), dispatcher);
    tokio::spawn(async move {
        let _ = agent.run().await;
    })
}

fn node_ready(store: &MemStore, node: &str) -> bool {
    store.state().node(&node.into()).is_some_and(|n| n.status.state == NodeState::Ready)
}

fn running(store: &MemStore) -> usize {
    store.state().tasks().filter(|t| t.status.state == TaskState::Running).count()
}

fn session_request(node: &str) -> SessionRequest {
    SessionRequest { node_id: node.into(), description: NodeDescription::default(), addr: "10.0.0.9".into() }
}

fn fault_code(e: &RpcError) -> Code {
    e.fault().unwrap_or_else(|| panic!("not a fault: {e}")).code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_over_the_network_runs_a_service() {
    let ca = ca();
    let store = Arc::new(MemStore::new());
    let manager = Manager::start(store.clone(), Box::new(FirstFit), Default::default());
    let (listener, addr) = bind().await;
    let _api = serve(&ca, listener, Arc::new(manager.dispatcher()), true, None, vec![addr.clone()]);

    let remote = Arc::new(RemoteDispatcher::new(vec![addr.clone()], client_tls(&ca, "node-1")).with_seed(1));
    let sim = SimRuntime::new("node-1");
    let worker = agent("node-1", &sim, remote.clone());
    eventually("node-1 registers", Duration::from_secs(5), || async { node_ready(&store, "node-1") }).await;

    Cluster::new(store.clone()).create_service(ServiceSpec::replicated("web", "nginx:1.27", 2)).await.unwrap();
    eventually("two tasks run", Duration::from_secs(8), || async { running(&store) == 2 && sim.running().len() == 2 })
        .await;
    assert!(store.state().tasks().all(|t| t.node_id.as_ref().map(|n| n.as_str()) == Some("node-1")));
    assert_eq!(remote.current_manager(), Some(addr.clone()));
    assert_eq!(remote.managers(), vec![addr]);
    worker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_for_another_node_is_refused() {
    let ca = ca();
    let manager = Manager::start(Arc::new(MemStore::new()), Box::new(FirstFit), Default::default());
    let (listener, addr) = bind().await;
    let _api = serve(&ca, listener, Arc::new(manager.dispatcher()), true, None, vec![]);

    let client = rpc_client(&addr, client_tls(&ca, "node-a"));
    let e =
        client.call::<_, OpenSessionReply>("dispatcher.open_session", &session_request("node-b")).await.unwrap_err();
    assert_eq!(fault_code(&e), Code::PermissionDenied, "{e}");
    let msg = &e.fault().unwrap().message;
    assert!(msg.contains("node node-a") && msg.contains("node node-b"), "{msg}");
    assert!(manager.dispatcher().connected_nodes().is_empty());

    // Through a RemoteDispatcher the refusal reaches the agent as an error
    // naming both ids, and does not make it change managers.
    let remote = RemoteDispatcher::new(vec![addr.clone()], client_tls(&ca, "node-a"));
    match remote.open_session(session_request("node-b")).await {
        Err(DispatchError::Unavailable(m)) => assert!(m.contains("node-a") && m.contains("node-b"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(remote.current_manager(), Some(addr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_of_another_node_is_refused() {
    let ca = ca();
    let manager = Manager::start(Arc::new(MemStore::new()), Box::new(FirstFit), Default::default());
    let (listener, addr) = bind().await;
    let _api = serve(&ca, listener, Arc::new(manager.dispatcher()), true, None, vec![]);

    let a = rpc_client(&addr, client_tls(&ca, "node-a"));
    let b = rpc_client(&addr, client_tls(&ca, "node-b"));
    let sa: OpenSessionReply = a.call("dispatcher.open_session", &session_request("node-a")).await.unwrap();
    let _sb: OpenSessionReply = b.call("dispatcher.open_session", &session_request("node-b")).await.unwrap();
    let stolen = SessionCall { session_id: sa.info.session_id.clone() };

    let e = b.call::<_, serde_json::Value>("dispatcher.heartbeat", &stolen).await.unwrap_err();
    assert_eq!(fault_code(&e), Code::PermissionDenied, "{e}");
    assert!(!e.to_string().contains("node-a"), "the refusal names the session's owner: {e}");
    assert_eq!(
        e.fault().unwrap().detail_as::<DispatchError>(),
        Some(DispatchError::InvalidSession(stolen.session_id.clone()))
    );

    let report = StatusReport { session_id: stolen.session_id.clone(), updates: vec![] };
    let e = b.call::<_, ()>("dispatcher.update_task_status", &report).await.unwrap_err();
    assert_eq!(fault_code(&e), Code::PermissionDenied, "{e}");

    let mut s = b.stream::<_, Assignments>("dispatcher.assignments", &stolen).await.unwrap();
    let e = s.next().await.unwrap_err();
    assert_eq!(fault_code(&e), Code::PermissionDenied, "{e}");

    // An unknown session gets the same answer: existence is not revealed.
    let unknown = SessionCall { session_id: "0".repeat(32) };
    let e2 = b.call::<_, serde_json::Value>("dispatcher.heartbeat", &unknown).await.unwrap_err();
    assert_eq!(fault_code(&e2), Code::PermissionDenied);
    assert_eq!(
        e.fault().unwrap().message.replace(&stolen.session_id, "S"),
        e2.fault().unwrap().message.replace(&unknown.session_id, "S")
    );

    // The owner still has its session.
    let _: serde_json::Value = a.call("dispatcher.heartbeat", &stolen).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_certificate_is_unauthenticated() {
    let ca = ca();
    let manager = Manager::start(Arc::new(MemStore::new()), Box::new(FirstFit), Default::default());
    let (listener, addr) = bind().await;
    let _api = serve(&ca, listener, Arc::new(manager.dispatcher()), true, None, vec![]);

    let anonymous = Reloadable::new(anonymous_client_config(ca.cert_pem()).unwrap());
    let client = rpc_client(&addr, anonymous);
    let e =
        client.call::<_, OpenSessionReply>("dispatcher.open_session", &session_request("node-1")).await.unwrap_err();
    assert_eq!(fault_code(&e), Code::Unauthenticated, "{e}");
    let e = client.call::<_, serde_json::Value>("dispatcher.heartbeat", &SessionCall { session_id: "x".into() }).await;
    assert_eq!(fault_code(&e.unwrap_err()), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_cluster_fails_the_handshake() {
    let ca = ca();
    let manager = Manager::start(Arc::new(MemStore::new()), Box::new(FirstFit), Default::default());
    let (listener, addr) = bind().await;
    let _api = serve(&ca, listener, Arc::new(manager.dispatcher()), true, None, vec![]);

    let other = ClusterCa::generate("cluster-2", Duration::from_secs(86_400)).unwrap();
    let client = rpc_client(&addr, client_tls(&other, "node-1"));
    let e =
        client.call::<_, OpenSessionReply>("dispatcher.open_session", &session_request("node-1")).await.unwrap_err();
    assert!(matches!(e, RpcError::Handshake { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("TLS handshake") && msg.contains("certificate"), "{msg}");

    // The agent's dispatcher says the same, as a transport failure.
    let remote = RemoteDispatcher::new(vec![addr], client_tls(&other, "node-1")).with_seed(2);
    match remote.open_session(session_request("node-1")).await {
        Err(DispatchError::Unavailable(m)) => assert!(m.contains("TLS handshake"), "{m}"),
        other => panic!("expected a handshake failure, got {other:?}"),
    }
    assert!(manager.dispatcher().connected_nodes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_redirects_to_the_leader() {
    let ca = ca();
    let store = Arc::new(MemStore::new());
    let manager = Manager::start(store.clone(), Box::new(FirstFit), Default::default());
    let (leader_l, leader) = bind().await;
    let (follower_l, follower) = bind().await;
    let managers = vec![leader.clone(), follower.clone()];
    let _leader = serve(&ca, leader_l, Arc::new(manager.dispatcher()), true, None, managers.clone());
    let _follower =
        serve(&ca, follower_l, Arc::new(manager.dispatcher()), false, Some(leader.clone()), managers.clone());

    let client = rpc_client(&follower, client_tls(&ca, "node-1"));
    let e =
        client.call::<_, OpenSessionReply>("dispatcher.open_session", &session_request("node-1")).await.unwrap_err();
    assert_eq!(fault_code(&e), Code::NotLeader, "{e}");
    assert_eq!(e.fault().unwrap().redirect.as_deref(), Some(leader.as_str()));

    let remote = Arc::new(RemoteDispatcher::new(vec![follower.clone()], client_tls(&ca, "node-1")).with_seed(3));
    let sim = SimRuntime::new("node-1");
    let worker = agent("node-1", &sim, remote.clone());
    eventually("node-1 registers", Duration::from_secs(5), || async { node_ready(&store, "node-1") }).await;
    assert_eq!(remote.current_manager(), Some(leader.clone()));
    // The list comes in the session's reply, which the agent may still be
    // reading when the manager has already marked the node ready.
    eventually("the manager list learned", Duration::from_secs(5), || async { remote.managers() == managers }).await;

    Cluster::new(store.clone()).create_service(ServiceSpec::replicated("web", "nginx:1.27", 1)).await.unwrap();
    eventually("the task runs", Duration::from_secs(8), || async { running(&store) == 1 && sim.running().len() == 1 })
        .await;
    worker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_manager_moves_the_agent_to_the_next() {
    let ca = ca();
    let store_a = Arc::new(MemStore::new());
    let store_b = Arc::new(MemStore::new());
    let manager_a = Manager::start(store_a.clone(), Box::new(FirstFit), Default::default());
    let manager_b = Manager::start(store_b.clone(), Box::new(FirstFit), Default::default());
    let (la, a) = bind().await;
    let (lb, b) = bind().await;
    let managers = vec![a.clone(), b.clone()];
    let api_a = serve(&ca, la, Arc::new(manager_a.dispatcher()), true, None, managers.clone());
    let _api_b = serve(&ca, lb, Arc::new(manager_b.dispatcher()), true, None, managers.clone());

    let remote = Arc::new(RemoteDispatcher::new(managers.clone(), client_tls(&ca, "node-1")).with_seed(4));
    let sim = SimRuntime::new("node-1");
    let worker = agent("node-1", &sim, remote.clone());
    eventually("node-1 registers with a", Duration::from_secs(5), || async { node_ready(&store_a, "node-1") }).await;
    assert_eq!(remote.current_manager(), Some(a.clone()));
    assert!(!node_ready(&store_b, "node-1"));
    // The agent works for a: its assignment stream is up.
    Cluster::new(store_a.clone()).create_service(ServiceSpec::replicated("api", "nginx:1.27", 1)).await.unwrap();
    eventually("a's task runs", Duration::from_secs(8), || async {
        running(&store_a) == 1 && sim.running().len() == 1
    })
    .await;

    api_a.task.abort();
    let _ = api_a.task.await;
    eventually("node-1 registers with b", Duration::from_secs(8), || async { node_ready(&store_b, "node-1") }).await;
    assert_eq!(remote.current_manager(), Some(b.clone()));

    Cluster::new(store_b.clone()).create_service(ServiceSpec::replicated("web", "nginx:1.27", 1)).await.unwrap();
    eventually("the task runs on b's orders", Duration::from_secs(8), || async { running(&store_b) == 1 }).await;
    worker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_switch_the_old_session_is_invalid() {
    let ca = ca();
    let manager_a = Manager::start(Arc::new(MemStore::new()), Box::new(FirstFit), Default::default());
    let manager_b = Manager::start(Arc::new(MemStore::new()), Box::new(FirstFit), Default::default());
    let (la, a) = bind().await;
    let (lb, b) = bind().await;
    let managers = vec![a.clone(), b.clone()];
    let api_a = serve(&ca, la, Arc::new(manager_a.dispatcher()), true, None, managers.clone());
    let _api_b = serve(&ca, lb, Arc::new(manager_b.dispatcher()), true, None, managers.clone());

    let remote = RemoteDispatcher::new(managers, client_tls(&ca, "node-1")).with_seed(5);
    let session = remote.open_session(session_request("node-1")).await.unwrap();
    remote.heartbeat(&session.session_id).await.unwrap();
    assert_eq!(remote.current_manager(), Some(a.clone()));

    api_a.task.abort();
    let _ = api_a.task.await;
    // The first heartbeat after the loss goes to b, which does not know
    // the session: the agent's cue to open a new one. (Polled: the
    // aborted connection tasks close their sockets asynchronously.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let err = loop {
        match remote.heartbeat(&session.session_id).await {
            Err(e) => break e,
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "a still answers"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(err, DispatchError::InvalidSession(session.session_id.clone()));
    assert_eq!(remote.current_manager(), Some(b.clone()));
    let again = remote.open_session(session_request("node-1")).await.unwrap();
    assert_ne!(again.session_id, session.session_id);
    assert_eq!(manager_b.dispatcher().connected_nodes(), vec!["node-1".into()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_stream_ends_when_the_manager_stops_leading() {
    let ca = ca();
    let manager = Manager::start(Arc::new(MemStore::new()), Box::new(FirstFit), Default::default());
    let (listener, addr) = bind().await;
    let (leads, rx) = watch::channel(true);
    let service = DispatcherService::new(Arc::new(manager.dispatcher()), rx);
    let router = Arc::new(Router::new().route(SERVICE, Arc::new(service)));
    let tls =
        server_config_optional_client(&creds(&ca, "manager-1", Role::Manager), PeerPolicy::nodes(CLUSTER)).unwrap();
    let _task = tokio::spawn(RpcServer::serve(listener, Reloadable::new(tls), router, ServerLimits::default()));

    let remote = RemoteDispatcher::new(vec![addr], client_tls(&ca, "node-1")).with_seed(6);
    let session = remote.open_session(session_request("node-1")).await.unwrap();
    let mut stream = remote.assignments(&session.session_id).await.unwrap();
    let first = stream.next().await.unwrap();
    assert!(first.full);
    leads.send_replace(false);
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("the stream ends");
    assert!(end.is_none());
    // And every call is now refused as not the leader (no leader known).
    match remote.heartbeat(&session.session_id).await {
        Err(DispatchError::Unavailable(m)) => assert!(m.contains("does not lead"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
