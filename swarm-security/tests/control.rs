//! The control API over real TLS on loopback and over the local Unix
//! socket: who may call it, that a remote caller sees and changes the same
//! cluster as an embedded one, and how errors cross the wire.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use swarm_core::cluster::{Cluster, ClusterError, TaskFilter};
use swarm_core::manager::Manager;
use swarm_core::model::{Availability, Node, ObjectKind, Resources, ServiceSpec, Task};
use swarm_core::scheduler::FirstFit;
use swarm_core::state::{Action, Transaction};
use swarm_core::store::MemStore;
use swarm_security::ca::{ClusterCa, NodeCsr};
use swarm_security::castore::{self, SecurityOptions};
use swarm_security::control::{ControlError, ControlService, RemoteCluster};
use swarm_security::identity::NodeIdentity;
use swarm_security::role::Role;
use swarm_security::rpc::{Reloadable, Router, RpcClient, RpcServer, ServerLimits};
use swarm_security::tls::{
    PeerPolicy, TlsCredentials, anonymous_client_config, client_config, server_config_optional_client,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const CLUSTER_ID: &str = "ctl-cluster";
const LIMIT: Duration = Duration::from_secs(8);

fn creds(ca: &ClusterCa, name: &str, role: Role) -> TlsCredentials {
    let csr = NodeCsr::generate(name).unwrap();
    let cert = ca.sign_node_csr(csr.csr_pem(), name, role, None, SystemTime::now()).unwrap();
    TlsCredentials::from_pem(ca.cert_pem(), cert.cert_pem(), &csr.key_pem()).unwrap()
}

/// A manager: a MemStore cluster with its control loops, its CA, and the
/// control API served over TLS on 127.0.0.1 (and, on demand, a local
/// socket).
struct Fixture {
    ca: Arc<ClusterCa>,
    cluster: Cluster,
    addr: SocketAddr,
    router: Arc<Router>,
    tasks: Vec<JoinHandle<()>>,
    _manager: Manager,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Fixture {
    async fn start() -> Fixture {
        let ca = Arc::new(ClusterCa::generate(CLUSTER_ID, Duration::from_secs(86_400)).unwrap());
        let store = Arc::new(MemStore::new());
        let manager = Manager::start(store.clone(), Box::new(FirstFit), Default::default());
        let cluster = Cluster::new(store);
        let router =
            Arc::new(Router::new().route("control", Arc::new(ControlService::new(cluster.clone(), Some(ca.clone())))));
        let server_creds = creds(&ca, "manager-1", Role::Manager);
        let tls = server_config_optional_client(&server_creds, PeerPolicy::api(CLUSTER_ID)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server =
            tokio::spawn(RpcServer::serve(listener, Reloadable::new(tls), router.clone(), ServerLimits::default()));
        Fixture { ca, cluster, addr, router, tasks: vec![server], _manager: manager }
    }

    /// A client presenting `creds`.
    fn remote_with(&self, creds: &TlsCredentials) -> RemoteCluster {
        let tls = Reloadable::new(client_config(creds).unwrap());
        RemoteCluster::connect(&[self.addr], tls).unwrap()
    }

    /// A client holding a fresh certificate of this cluster.
    fn remote(&self, name: &str, role: Role) -> RemoteCluster {
        self.remote_with(&creds(&self.ca, name, role))
    }

    /// Serves the local socket at `dir/swarm.sock` with `router`, returns
    /// its path once it accepts connections.
    async fn local_socket(&mut self, dir: &Path, router: Arc<Router>) -> PathBuf {
        let path = dir.join("swarm.sock");
        let p = path.clone();
        self.tasks.push(tokio::spawn(async move {
            RpcServer::serve_unix(&p, router).await.unwrap();
        }));
        tokio::time::timeout(LIMIT, async {
            while tokio::net::UnixStream::connect(&path).await.is_err() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the local socket was never bound");
        path
    }
}

/// Waits (on the cluster's own events, no sleeping) until `cond` holds
/// for the live tasks of `service`.
async fn wait_tasks(cluster: &Cluster, service: &str, cond: impl Fn(&[Task]) -> bool) -> Vec<Task> {
    let filter = TaskFilter { service: Some(service.into()), node: None, live_only: true };
    tokio::time::timeout(LIMIT, async {
        let mut events = cluster.events().await.unwrap();
        loop {
            let tasks = cluster.list_tasks(filter.clone()).await.unwrap();
            if cond(&tasks) {
                return tasks;
            }
            events.next().await.unwrap();
        }
    })
    .await
    .expect("the tasks never reached the expected state")
}

fn ids(tasks: &[Task]) -> BTreeSet<String> {
    tasks.iter().map(|t| t.id.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_certificate_drives_the_cluster_and_sees_the_embedded_state() {
    let f = Fixture::start().await;
    let remote = f.remote("manager-2", Role::Manager);

    let id = remote.create_service(ServiceSpec::replicated("web", "nginx:1.27", 3)).await.unwrap();
    let embedded = f.cluster.inspect_service("web").await.unwrap();
    assert_eq!(embedded.id, id);
    assert_eq!(remote.inspect_service("web").await.unwrap(), embedded);
    wait_tasks(&f.cluster, "web", |t| t.len() == 3).await;

    remote.scale("web", 5).await.unwrap();
    assert_eq!(f.cluster.inspect_service("web").await.unwrap().spec.mode.replicas, Some(5));
    let local = wait_tasks(&f.cluster, "web", |t| t.len() == 5).await;

    let live = TaskFilter { service: Some("web".into()), node: None, live_only: true };
    let remote_tasks = remote.list_tasks(live.clone()).await.unwrap();
    assert_eq!(ids(&remote_tasks), ids(&local));
    let one = &remote_tasks[0];
    assert_eq!(remote.inspect_task(&one.id.to_string()).await.unwrap().id, one.id);
    assert_eq!(remote.list_services().await.unwrap(), f.cluster.list_services().await.unwrap());

    remote.remove_service("web").await.unwrap();
    assert!(f.cluster.list_services().await.unwrap().is_empty());
    assert!(remote.list_services().await.unwrap().is_empty());
    let err = remote.inspect_service("web").await.unwrap_err();
    assert_eq!(err, ControlError::NotFound { kind: ObjectKind::Service, name: "web".into() });
    assert_eq!(err.to_string(), r#"service "web" not found"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_certificate_works() {
    let f = Fixture::start().await;
    let remote = f.remote("alice", Role::Operator);
    remote.create_service(ServiceSpec::replicated("api", "nginx:1.27", 1)).await.unwrap();
    remote.modify_service("api", |s| s.mode.replicas = Some(2)).await.unwrap();
    assert_eq!(f.cluster.inspect_service("api").await.unwrap().spec.mode.replicas, Some(2));

    remote.create_secret("db-password", b"hunter2".to_vec()).await.unwrap();
    let secrets = remote.list_secrets().await.unwrap();
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0].spec.name, "db-password");
    assert!(secrets[0].spec.data.0.is_empty(), "secret data must not leave the manager");
    remote.create_config("nginx.conf", b"worker_processes 1;".to_vec()).await.unwrap();
    assert_eq!(remote.list_configs().await.unwrap()[0].spec.data, b"worker_processes 1;");
    remote.remove_object(ObjectKind::Config, "nginx.conf").await.unwrap();
    assert!(remote.list_configs().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_certificate_is_refused_with_the_reason() {
    let f = Fixture::start().await;
    let remote = f.remote("worker-7", Role::Worker);
    let err = remote.create_service(ServiceSpec::replicated("web", "nginx:1.27", 1)).await.unwrap_err();
    let ControlError::Denied { message } = &err else { panic!("expected Denied, got {err:?}") };
    assert!(message.contains("worker-7") && message.contains("worker certificate"), "{message}");
    assert!(message.contains("manager and operator"), "{message}");
    assert!(f.cluster.list_services().await.unwrap().is_empty());
    // Reads are refused too.
    assert!(matches!(remote.list_nodes().await, Err(ControlError::Denied { .. })));
    assert!(matches!(remote.events().await, Err(ControlError::Denied { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused() {
    let f = Fixture::start().await;
    let tls = Reloadable::new(anonymous_client_config(f.ca.cert_pem()).unwrap());
    let remote = RemoteCluster::new(RpcClient::new(f.addr, "swarm-manager", tls).unwrap());
    let err = remote.list_services().await.unwrap_err();
    let ControlError::Denied { message } = &err else { panic!("expected Denied, got {err:?}") };
    assert!(message.contains("needs a client certificate"), "{message}");
    let err = remote.create_service(ServiceSpec::replicated("web", "nginx:1.27", 1)).await.unwrap_err();
    assert!(matches!(err, ControlError::Denied { .. }), "{err:?}");
    assert!(f.cluster.list_services().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_certificate_fails_the_handshake() {
    let f = Fixture::start().await;
    // A manager certificate of another cluster's CA, from a client that
    // trusts this cluster's CA (so only the server can refuse).
    let other = ClusterCa::generate("other-cluster", Duration::from_secs(86_400)).unwrap();
    let csr = NodeCsr::generate("manager-x").unwrap();
    let cert = other.sign_node_csr(csr.csr_pem(), "manager-x", Role::Manager, None, SystemTime::now()).unwrap();
    let foreign = TlsCredentials::from_pem(f.ca.cert_pem(), cert.cert_pem(), &csr.key_pem()).unwrap();
    let remote = f.remote_with(&foreign);
    let err = remote.create_service(ServiceSpec::replicated("web", "nginx:1.27", 1)).await.unwrap_err();
    let ControlError::Denied { message } = &err else { panic!("expected Denied, got {err:?}") };
    assert!(message.contains("handshake"), "{message}");
    assert!(f.cluster.list_services().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validation_error_crosses_the_wire_with_the_field_named_and_changes_nothing() {
    let f = Fixture::start().await;
    let remote = f.remote("alice", Role::Operator);
    remote.create_service(ServiceSpec::replicated("web", "nginx:1.27", 2)).await.unwrap();
    let before = f.cluster.list_services().await.unwrap();

    let err = remote.create_service(ServiceSpec::replicated("Bad Name", "nginx:1.27", 1)).await.unwrap_err();
    assert!(err.has_field("name"), "{err:?}");
    // The same words as the embedded API's error.
    let embedded = f.cluster.create_service(ServiceSpec::replicated("Bad Name", "nginx:1.27", 1)).await.unwrap_err();
    assert_eq!(err.to_string(), embedded.to_string());
    assert!(matches!(ClusterError::try_from(err), Ok(ClusterError::Invalid(v)) if v.has_field("name")));

    let mut bad = before[0].spec.clone();
    bad.task_template.container.image = String::new();
    let err = remote.update_service("web", bad).await.unwrap_err();
    assert!(matches!(err, ControlError::Invalid { .. }), "{err:?}");
    assert!(err.to_string().contains("image"), "{err}");

    let err = remote.scale("nope", 3).await.unwrap_err();
    assert!(matches!(err, ControlError::NotFound { .. }), "{err:?}");
    let err = remote.rollback_service("web").await.unwrap_err();
    assert_eq!(err, ControlError::NoPreviousSpec { service: "web".into() });

    assert_eq!(f.cluster.list_services().await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_socket_is_owner_only_works_and_issues_operator_certificates() {
    let mut f = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = f.local_socket(dir.path(), f.router.clone()).await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let local = RemoteCluster::unix(&path);
    local.create_service(ServiceSpec::replicated("web", "nginx:1.27", 1)).await.unwrap();
    assert_eq!(local.list_services().await.unwrap(), f.cluster.list_services().await.unwrap());

    let csr = NodeCsr::generate("bob").unwrap();
    let issued = local.issue_operator_cert("bob", csr.csr_pem(), None).await.unwrap();
    let id = NodeIdentity::from_pem(&issued.cert_pem).unwrap();
    assert_eq!((id.node_id.as_str(), id.role, id.cluster_id.as_str()), ("bob", Role::Operator, CLUSTER_ID));
    assert_eq!(issued.ca_cert_pem, f.ca.cert_pem());

    // The certificate works over TLS.
    let creds = TlsCredentials::from_pem(&issued.ca_cert_pem, &issued.cert_pem, &csr.key_pem()).unwrap();
    let remote = f.remote_with(&creds);
    remote.scale("web", 4).await.unwrap();
    assert_eq!(f.cluster.inspect_service("web").await.unwrap().spec.mode.replicas, Some(4));

    // A bad name is refused by the CA, with the reason.
    let err = local.issue_operator_cert("bob smith", csr.csr_pem(), None).await.unwrap_err();
    let ControlError::Certificate { message } = &err else { panic!("expected Certificate, got {err:?}") };
    assert!(message.contains("bob smith"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuing_an_operator_certificate_over_tls_is_refused_even_to_a_manager() {
    let f = Fixture::start().await;
    let csr = NodeCsr::generate("mallory").unwrap();
    for (name, role) in [("manager-2", Role::Manager), ("alice", Role::Operator)] {
        let err = f.remote(name, role).issue_operator_cert("mallory", csr.csr_pem(), None).await.unwrap_err();
        let ControlError::Denied { message } = &err else { panic!("expected Denied, got {err:?}") };
        assert!(message.contains("local socket"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_without_the_ca_key_cannot_issue() {
    let mut f = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    let no_ca = Arc::new(Router::new().route("control", Arc::new(ControlService::new(f.cluster.clone(), None))));
    let path = f.local_socket(dir.path(), no_ca).await;
    let csr = NodeCsr::generate("bob").unwrap();
    let err = RemoteCluster::unix(&path).issue_operator_cert("bob", csr.csr_pem(), None).await.unwrap_err();
    assert!(matches!(err, ControlError::Certificate { .. }), "{err:?}");
    assert!(err.to_string().contains("holds no CA key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_manager_is_skipped() {
    let f = Fixture::start().await;
    // An address nothing listens on any more.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let tls = Reloadable::new(client_config(&creds(&f.ca, "alice", Role::Operator)).unwrap());
    let remote = RemoteCluster::connect(&[dead, f.addr], tls.clone()).unwrap();
    remote.create_service(ServiceSpec::replicated("web", "nginx:1.27", 1)).await.unwrap();
    assert_eq!(remote.list_services().await.unwrap().len(), 1);

    let only_dead = RemoteCluster::connect(&[dead], tls).unwrap();
    let err = only_dead.list_services().await.unwrap_err();
    assert!(matches!(err, ControlError::Transport { .. }), "{err:?}");
    assert!(err.to_string().contains(&dead.to_string()), "{err}");
    assert!(RemoteCluster::with_failover(Vec::new()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_over_tls() {
    let f = Fixture::start().await;
    let remote = f.remote("alice", Role::Operator);
    let mut events = remote.events().await.unwrap();
    f.cluster.create_service(ServiceSpec::replicated("web", "nginx:1.27", 1)).await.unwrap();
    let created = tokio::time::timeout(LIMIT, async {
        loop {
            let ev = events.next().await.unwrap();
            if ev.kind == ObjectKind::Service && ev.action == Action::Create {
                return ev;
            }
        }
    })
    .await
    .expect("no service event");
    assert_eq!(created.name, "web");
    assert_eq!(events.last_revision(), Some(created.revision));

    // From a revision: the same event again.
    let mut again = remote.events_since(created.revision - 1).await.unwrap();
    let first = tokio::time::timeout(LIMIT, again.next()).await.unwrap().unwrap();
    assert_eq!(first, created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_managed_over_the_wire_and_a_busy_node_is_not_removed() {
    let f = Fixture::start().await;
    let node = Node::ready("node-a", "host-a", Resources::new(4_000_000_000, 8 << 30));
    f.cluster.store().commit(Transaction::new().create(node)).await.unwrap();
    let remote = f.remote("alice", Role::Operator);

    assert_eq!(remote.list_nodes().await.unwrap(), f.cluster.list_nodes().await.unwrap());
    assert_eq!(remote.inspect_node("host-a").await.unwrap().id.to_string(), "node-a");
    remote.set_node_label("host-a", "zone", Some("eu-1")).await.unwrap();
    let labels = f.cluster.inspect_node("node-a").await.unwrap().spec.labels;
    assert_eq!(labels.get("zone").map(String::as_str), Some("eu-1"));

    remote.create_service(ServiceSpec::replicated("web", "nginx:1.27", 2)).await.unwrap();
    wait_tasks(&f.cluster, "web", |t| t.len() == 2 && t.iter().all(|t| t.node_id.is_some())).await;
    let err = remote.remove_node("node-a", false).await.unwrap_err();
    assert_eq!(err, ControlError::NodeHasTasks { node: "node-a".into(), tasks: 2 });
    assert_eq!(err.to_string(), "node node-a still runs 2 task(s): drain it first or force the removal");
    assert_eq!(f.cluster.list_nodes().await.unwrap().len(), 1);

    remote.set_node_availability("node-a", Availability::Drain).await.unwrap();
    assert_eq!(f.cluster.inspect_node("node-a").await.unwrap().spec.availability, Availability::Drain);
    remote.remove_node("node-a", true).await.unwrap();
    assert!(remote.list_nodes().await.unwrap().is_empty());
    // No security plane in this store: nothing to deny, and no failure.
    assert!(!castore::is_removed(&f.cluster.store().snapshot().await.unwrap(), "node-a"));
    let err = remote.set_node_label("node-a", "zone", None).await.unwrap_err();
    assert_eq!(err, ControlError::NotFound { kind: ObjectKind::Node, name: "node-a".into() });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_node_of_a_secured_cluster_puts_it_on_the_deny_list() {
    let f = Fixture::start().await;
    let store = f.cluster.store().clone();
    castore::init_security(store.as_ref(), CLUSTER_ID, SecurityOptions::default()).await.unwrap();
    for (id, host) in [("node-a", "host-a"), ("node-b", "host-b")] {
        let node = Node::ready(id, host, Resources::new(4_000_000_000, 8 << 30));
        store.commit(Transaction::new().create(node)).await.unwrap();
    }
    let remote = f.remote("alice", Role::Operator);
    remote.create_service(ServiceSpec::replicated("web", "nginx:1.27", 2)).await.unwrap();
    wait_tasks(&f.cluster, "web", |t| t.len() == 2 && t.iter().all(|t| t.node_id.is_some())).await;
    let busy = f.cluster.list_tasks(TaskFilter::default()).await.unwrap()[0].node_id.clone().unwrap().to_string();

    // A refused removal revokes nothing.
    let err = remote.remove_node(&busy, false).await.unwrap_err();
    assert!(matches!(err, ControlError::NodeHasTasks { .. }), "{err:?}");
    assert!(!castore::is_removed(&store.snapshot().await.unwrap(), &busy));

    // Removed by hostname: the node's id is what is denied.
    let host = f.cluster.inspect_node(&busy).await.unwrap().description.hostname;
    remote.remove_node(&host, true).await.unwrap();
    let state = store.snapshot().await.unwrap();
    assert!(castore::is_removed(&state, &busy), "the removed node is on the deny-list");
    let other = if busy == "node-a" { "node-b" } else { "node-a" };
    assert!(!castore::is_removed(&state, other), "only the removed node is");
    assert!(state.get(ObjectKind::Node, &busy).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_operator_is_refused_and_its_name_is_not_issued_again() {
    use swarm_security::ca_service::CaService;
    let mut f = Fixture::start().await;
    let store = f.cluster.store().clone();
    let (ca, _) = castore::init_security(store.as_ref(), CLUSTER_ID, SecurityOptions::default()).await.unwrap();
    let (deny, follow) = castore::DenyList::start(store.clone()).await.unwrap();
    f.tasks.push(follow);
    // A manager as swarmd builds it: control and ca services behind the
    // deny-list, the CA from the store.
    let router = Arc::new(
        Router::new()
            .route("control", Arc::new(ControlService::with_ca_from_store(f.cluster.clone())))
            .route("ca", Arc::new(CaService::new(store.clone())))
            .gate(deny.clone()),
    );
    let tls = server_config_optional_client(&creds(&ca, "manager-1", Role::Manager), PeerPolicy::api(CLUSTER_ID));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    f.tasks.push(tokio::spawn(RpcServer::serve(
        listener,
        Reloadable::new(tls.unwrap()),
        router.clone(),
        ServerLimits::default(),
    )));
    let dir = tempfile::tempdir().unwrap();
    let path = f.local_socket(dir.path(), router).await;
    let local = RemoteCluster::unix(&path);
    let operator = |name: &'static str| {
        let local = &local;
        async move {
            let csr = NodeCsr::generate(name).unwrap();
            let issued = local.issue_operator_cert(name, csr.csr_pem(), None).await?;
            let creds = TlsCredentials::from_pem(&issued.ca_cert_pem, &issued.cert_pem, &csr.key_pem()).unwrap();
            Ok::<_, ControlError>(
                RemoteCluster::connect(&[addr], Reloadable::new(client_config(&creds).unwrap())).unwrap(),
            )
        }
    };
    let carol = operator("carol").await.unwrap();
    let dave = operator("dave").await.unwrap();
    carol.create_service(ServiceSpec::replicated("web", "nginx:1.27", 1)).await.unwrap();

    // Revoked through the local socket, as `swarmctl operator-cert --revoke`.
    RpcClient::unix(&path)
        .call::<_, serde_json::Value>("ca.revoke_operator", &serde_json::json!({ "name": "carol" }))
        .await
        .unwrap();
    assert!(castore::is_revoked_operator(&store.snapshot().await.unwrap(), "carol"));
    deny.caught_up(store.snapshot().await.unwrap().revision()).await;

    let err = carol.list_services().await.unwrap_err();
    assert!(err.to_string().contains("the certificates of operator carol were revoked"), "{err}");
    let err = carol.scale("web", 3).await.unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
    assert_eq!(f.cluster.inspect_service("web").await.unwrap().spec.mode.replicas, Some(1), "nothing changed");
    // The name is not issued again; another operator is unaffected.
    let err = operator("carol").await.expect_err("a revoked name is refused");
    assert!(matches!(&err, ControlError::Certificate { message } if message.contains("revoked")), "{err:?}");
    dave.scale("web", 2).await.unwrap();
    assert_eq!(f.cluster.inspect_service("web").await.unwrap().spec.mode.replicas, Some(2));
}
