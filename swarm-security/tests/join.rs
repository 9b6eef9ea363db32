//! Joining a cluster over real TLS on loopback: a manager serving the `ca`
//! service from a MemStore, nodes joining with tokens, and each way a join
//! or a renewal is refused, with its reason.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use swarm_core::model::{Node, NodeRole, Resources};
use swarm_core::state::Transaction;
use swarm_core::store::{MemStore, Store};
use swarm_security::ca::{ClusterCa, NodeCsr, SigningPolicy};
use swarm_security::ca_service::{
    CaRefusal, CaService, IssueRequest, IssueResponse, JoinTokensResponse, RotateRequest,
};
use swarm_security::castore::{self, DenyList, SecurityOptions};
use swarm_security::files::NodeFiles;
use swarm_security::identity::NodeIdentity;
use swarm_security::join::{self, JoinError, JoinedNode};
use swarm_security::role::Role;
use swarm_security::rpc::{Code, Reloadable, Router, RpcClient, RpcError, RpcServer, ServerLimits};
use swarm_security::tls::{
    PeerPolicy, TlsCredentials, anonymous_client_config, client_config, server_config_optional_client,
};
use swarm_security::token::{JoinToken, JoinTokens};
use tokio::net::TcpListener;

const CLUSTER: &str = "c1";

/// One manager: the store, its CA service behind the deny-list gate, on a
/// loopback listener.
struct Manager {
    store: MemStore,
    ca: ClusterCa,
    tokens: JoinTokens,
    addr: SocketAddr,
    deny: Arc<DenyList>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    creds: TlsCredentials,
}

impl Drop for Manager {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn manager() -> Manager {
    manager_with(SecurityOptions::default(), SigningPolicy::default()).await
}

async fn manager_with(opts: SecurityOptions, policy: SigningPolicy) -> Manager {
    let store = MemStore::new();
    let (ca, tokens) = castore::init_security(&store, CLUSTER, opts).await.unwrap();
    let csr = NodeCsr::generate("manager-1").unwrap();
    let cert = ca.sign_node_csr(csr.csr_pem(), "manager-1", Role::Manager, None, SystemTime::now()).unwrap();
    let creds = TlsCredentials::from_pem(ca.cert_pem(), cert.cert_pem(), &csr.key_pem()).unwrap();
    let tls = server_config_optional_client(&creds, PeerPolicy::nodes(CLUSTER)).unwrap();

    let shared: Arc<dyn Store> = Arc::new(store.clone());
    let (deny, follower) = DenyList::start(shared.clone()).await.unwrap();
    let router = Router::new().route("ca", Arc::new(CaService::new(shared).with_policy(policy))).gate(deny.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server =
        tokio::spawn(RpcServer::serve(listener, Reloadable::new(tls), Arc::new(router), ServerLimits::default()));
    Manager { store, ca, tokens, addr, deny, tasks: vec![follower, server], creds }
}

impl Manager {
    /// A client presenting `node`'s certificate.
    fn client_as(&self, node: &JoinedNode) -> RpcClient {
        let tls = client_config(&node.tls_credentials().unwrap()).unwrap();
        RpcClient::new(self.addr, "swarm-manager", Reloadable::new(tls)).unwrap().with_timeout(Duration::from_secs(5))
    }

    /// A client presenting the manager's own certificate.
    fn manager_client(&self) -> RpcClient {
        let tls = client_config(&self.creds).unwrap();
        RpcClient::new(self.addr, "swarm-manager", Reloadable::new(tls)).unwrap().with_timeout(Duration::from_secs(5))
    }

    /// A client without a certificate that trusts the CA.
    fn anonymous_client(&self) -> RpcClient {
        let tls = anonymous_client_config(self.ca.cert_pem()).unwrap();
        RpcClient::new(self.addr, "swarm-manager", Reloadable::new(tls)).unwrap().with_timeout(Duration::from_secs(5))
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn refusal(e: &JoinError) -> &CaRefusal {
    e.refusal().unwrap_or_else(|| panic!("expected a CA refusal, got: {e}"))
}

/// Bounds each test well under 10 s.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(8), f).await.expect("test took too long")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_joins_with_the_worker_token() {
    within(async {
        let m = manager().await;
        let dir = tempfile::tempdir().unwrap();
        let files = NodeFiles::new(dir.path().join("certs"));
        let node = join::join(m.addr, &m.tokens.worker().to_string(), Some(Role::Worker), &files).await.unwrap();

        let id = NodeIdentity::from_pem(&node.cert_pem).unwrap();
        assert_eq!(id.node_id, node.node_id);
        assert_eq!(node.node_id.len(), 25, "a CA-assigned Swarm-like id: {}", node.node_id);
        assert_ne!(node.node_id, "joining-node", "the CSR's subject is not used");
        assert_eq!(id.role, Role::Worker);
        assert_eq!(id.cluster_id, CLUSTER);
        id.check(SystemTime::now(), CLUSTER, &[Role::Worker]).unwrap();
        let lifetime = id.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(lifetime > Duration::from_secs(89 * 86_400), "90-day default: {lifetime:?}");

        for path in [files.cert_path(), files.key_path(), files.ca_cert_path()] {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
        assert_eq!(mode(&dir.path().join("certs")), 0o700);
        assert_eq!(JoinedNode::load(&files).unwrap(), node, "a restart finds what the join wrote");
        assert_eq!(node.ca_cert_pem, m.ca.cert_pem());

        // The certificate works on the node API: the worker may renew, but
        // may not read the join tokens.
        let err = m.client_as(&node).call::<_, JoinTokensResponse>("ca.join_tokens", &serde_json::json!({})).await;
        assert_eq!(err.unwrap_err().fault().map(|f| f.code), Some(Code::PermissionDenied));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_joins_with_the_manager_token_and_sees_the_tokens() {
    within(async {
        let m = manager().await;
        let dir = tempfile::tempdir().unwrap();
        let files = NodeFiles::new(dir.path());
        let node = join::join(m.addr, &m.tokens.manager().to_string(), Some(Role::Manager), &files).await.unwrap();
        let id = node.identity().unwrap();
        assert_eq!((id.role, id.cluster_id.as_str()), (Role::Manager, CLUSTER));

        let tokens: JoinTokensResponse =
            m.client_as(&node).call("ca.join_tokens", &serde_json::json!({})).await.unwrap();
        assert_eq!(tokens.worker, m.tokens.worker().to_string());
        assert_eq!(tokens.manager, m.tokens.manager().to_string());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_role_asked_the_token_decides() {
    within(async {
        let m = manager().await;
        let dir = tempfile::tempdir().unwrap();
        let a = join::join(m.addr, &m.tokens.manager().to_string(), None, &NodeFiles::new(dir.path().join("a")))
            .await
            .unwrap();
        assert_eq!(a.identity().unwrap().role, Role::Manager);
        let b = join::join(m.addr, &m.tokens.worker().to_string(), None, &NodeFiles::new(dir.path().join("b")))
            .await
            .unwrap();
        assert_eq!(b.identity().unwrap().role, Role::Worker);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_another_ca_is_refused_by_the_node_and_by_the_ca() {
    within(async {
        let m = manager().await;
        let other = ClusterCa::generate(CLUSTER, Duration::from_secs(86_400)).unwrap();
        let foreign = JoinTokens::generate(other.cert_der()).unwrap().worker().to_string();
        let dir = tempfile::tempdir().unwrap();
        let files = NodeFiles::new(dir.path());

        // The joining node refuses the CA it is shown.
        let err = join::join(m.addr, &foreign, Some(Role::Worker), &files).await.unwrap_err();
        assert!(matches!(&err, JoinError::CaMismatch { addr } if *addr == m.addr.to_string()), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "the CA certificate at {} does not match the token's digest: wrong cluster or tampered connection",
                m.addr
            )
        );
        assert!(!files.cert_path().exists() && !files.ca_cert_path().exists(), "nothing written");

        // A node that skipped the check is refused by the CA.
        let csr = NodeCsr::generate("x").unwrap();
        let req =
            IssueRequest { token: foreign, csr_pem: csr.csr_pem().into(), role: Some(Role::Worker), node_id: None };
        let err = m.anonymous_client().call::<_, IssueResponse>("ca.issue", &req).await.unwrap_err();
        let fault = err.fault().unwrap();
        assert_eq!(fault.message, "token is for another CA");
        assert_eq!(fault.detail_as::<CaRefusal>(), Some(CaRefusal::WrongCa));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused() {
    within(async {
        let m = manager().await;
        // Right CA digest, secret of no token of this cluster.
        let guessed = JoinTokens::generate(m.ca.cert_der()).unwrap().worker().to_string();
        let dir = tempfile::tempdir().unwrap();
        let err = join::join(m.addr, &guessed, Some(Role::Worker), &NodeFiles::new(dir.path())).await.unwrap_err();
        assert_eq!(refusal(&err), &CaRefusal::InvalidSecret);
        assert_eq!(err.to_string(), format!("ca.issue refused by {}: token is not valid (rotated?)", m.addr));

        let err =
            join::join(m.addr, "SWMTKN-1-nonsense", Some(Role::Worker), &NodeFiles::new(dir.path())).await.unwrap_err();
        assert!(matches!(err, JoinError::Token(_)), "{err}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_is_refused_at_once_and_the_new_one_works() {
    within(async {
        let m = manager().await;
        let old = m.tokens.worker().to_string();
        let rotated = castore::rotate_join_token(&m.store, Role::Worker).await.unwrap();
        assert_eq!(rotated.manager(), m.tokens.manager(), "the manager token is untouched");
        let dir = tempfile::tempdir().unwrap();
        let err =
            join::join(m.addr, &old, Some(Role::Worker), &NodeFiles::new(dir.path().join("a"))).await.unwrap_err();
        assert_eq!(refusal(&err), &CaRefusal::InvalidSecret);
        join::join(m.addr, &rotated.worker().to_string(), Some(Role::Worker), &NodeFiles::new(dir.path().join("b")))
            .await
            .unwrap();

        // Rotation over the node API, by a manager.
        let again: JoinTokensResponse =
            m.manager_client().call("ca.rotate_join_token", &RotateRequest { role: Role::Manager }).await.unwrap();
        assert_eq!(again.worker, rotated.worker().to_string());
        assert_ne!(again.manager, m.tokens.manager().to_string());
        let err = join::join(m.addr, &m.tokens.manager().to_string(), Some(Role::Manager), &NodeFiles::new(dir.path()))
            .await
            .unwrap_err();
        assert_eq!(refusal(&err), &CaRefusal::InvalidSecret);
        let parsed = JoinToken::parse(&again.manager).unwrap();
        assert_eq!(castore::join_tokens(&m.store.state()).unwrap().manager(), &parsed);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_token_cannot_join_as_a_manager() {
    within(async {
        let m = manager().await;
        let dir = tempfile::tempdir().unwrap();
        let files = NodeFiles::new(dir.path());
        let err = join::join(m.addr, &m.tokens.worker().to_string(), Some(Role::Manager), &files).await.unwrap_err();
        assert_eq!(refusal(&err), &CaRefusal::RoleMismatch { token: Role::Worker, requested: Role::Manager });
        assert!(err.to_string().ends_with("the worker token cannot join as a manager"), "{err}");
        assert!(!files.cert_path().exists());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_refused_with_the_reason() {
    within(async {
        let m = manager().await;
        let dir = tempfile::tempdir().unwrap();
        let files = NodeFiles::new(dir.path());
        let node = join::join(m.addr, &m.tokens.worker().to_string(), Some(Role::Worker), &files).await.unwrap();
        let client = m.client_as(&node);
        join::renew(&client, &files).await.unwrap();

        let rev = castore::record_removed_node(&m.store, &node.node_id).await.unwrap();
        m.deny.caught_up(rev).await;
        // Its certificate is still valid under the CA: the TLS handshake
        // admits it, the gate refuses every call.
        let client = m.client_as(&JoinedNode::load(&files).unwrap());
        let err = join::renew(&client, &files).await.unwrap_err();
        let expected =
            format!("node {} was removed from the cluster; its certificate is no longer accepted", node.node_id);
        assert_eq!(refusal(&err), &CaRefusal::Removed { node_id: node.node_id.clone() });
        assert!(err.to_string().ends_with(&expected), "{err}");
        match &err {
            JoinError::Refused { .. } => {}
            other => panic!("{other}"),
        }
        let raw = client.call::<_, serde_json::Value>("ca.root_ca", &serde_json::json!({})).await.unwrap_err();
        let fault = raw.fault().unwrap();
        assert_eq!((fault.code, fault.message.as_str()), (Code::PermissionDenied, expected.as_str()));

        // The CA itself refuses to renew it even without the gate.
        let no_gate = Router::new().route("ca", Arc::new(CaService::new(Arc::new(m.store.clone()))));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = server_config_optional_client(&m.creds, PeerPolicy::nodes(CLUSTER)).unwrap();
        let server =
            tokio::spawn(RpcServer::serve(listener, Reloadable::new(tls), Arc::new(no_gate), ServerLimits::default()));
        let tls = client_config(&JoinedNode::load(&files).unwrap().tls_credentials().unwrap()).unwrap();
        let direct = RpcClient::new(addr, "swarm-manager", Reloadable::new(tls)).unwrap();
        let err = join::renew(&direct, &files).await.unwrap_err();
        assert_eq!(refusal(&err), &CaRefusal::Removed { node_id: node.node_id.clone() });
        server.abort();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_keeps_the_node_id_and_gives_a_fresh_certificate() {
    within(async {
        let m = manager().await;
        let dir = tempfile::tempdir().unwrap();
        let files = NodeFiles::new(dir.path());
        let first = join::join(m.addr, &m.tokens.worker().to_string(), Some(Role::Worker), &files).await.unwrap();
        let renewed = join::renew(&m.client_as(&first), &files).await.unwrap();
        assert_eq!(renewed.node_id, first.node_id);
        assert_eq!(renewed.role, Role::Worker);
        assert_ne!(renewed.cert_pem, first.cert_pem);
        assert_ne!(renewed.key_pem, first.key_pem, "a new key");
        assert_eq!(JoinedNode::load(&files).unwrap(), renewed);
        assert_eq!(mode(&files.key_path()), 0o600);

        // The new certificate is accepted by the manager.
        join::renew(&m.client_as(&renewed), &files).await.unwrap();

        // Without a certificate there is nothing to renew.
        let err: RpcError = m
            .anonymous_client()
            .call::<_, IssueResponse>("ca.renew", &serde_json::json!({"csr_pem": first.cert_pem}))
            .await
            .unwrap_err();
        assert_eq!(err.fault().map(|f| f.code), Some(Code::Unauthenticated), "{err}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_after_a_promotion_gives_a_manager_certificate() {
    within(async {
        let m = manager().await;
        let dir = tempfile::tempdir().unwrap();
        let files = NodeFiles::new(dir.path());
        let node = join::join(m.addr, &m.tokens.worker().to_string(), Some(Role::Worker), &files).await.unwrap();

        let mut object = Node::ready(node.node_id.as_str(), "host-1", Resources::default());
        object.spec.role = NodeRole::Manager;
        m.store.commit(Transaction::new().create(object)).await.unwrap();

        let renewed = join::renew(&m.client_as(&node), &files).await.unwrap();
        assert_eq!(renewed.node_id, node.node_id);
        assert_eq!(renewed.role, Role::Manager);
        let id = NodeIdentity::from_pem(&renewed.cert_pem).unwrap();
        assert_eq!((id.role, id.cluster_id.as_str()), (Role::Manager, CLUSTER));
        assert_eq!(JoinedNode::load(&files).unwrap().role, Role::Manager);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_lifetime_comes_from_the_store() {
    within(async {
        // Seconds-long certificates, as tests of expiry need: the store asks
        // for 30 s and the service's policy allows it.
        let opts = SecurityOptions { node_cert_lifetime: Some(Duration::from_secs(30)), ..SecurityOptions::default() };
        let policy = SigningPolicy { min_lifetime: Duration::from_secs(1), ..SigningPolicy::default() };
        let m = manager_with(opts.clone(), policy).await;
        let dir = tempfile::tempdir().unwrap();
        let node = join::join(m.addr, &m.tokens.worker().to_string(), Some(Role::Worker), &NodeFiles::new(dir.path()))
            .await
            .unwrap();
        let left = node.identity().unwrap().not_after.duration_since(SystemTime::now()).unwrap();
        assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(20), "{left:?}");

        // With the production policy (at least 1 hour) the CA refuses.
        let m = manager_with(opts, SigningPolicy::default()).await;
        let err = join::join(m.addr, &m.tokens.worker().to_string(), Some(Role::Worker), &NodeFiles::new(dir.path()))
            .await
            .unwrap_err();
        match refusal(&err) {
            CaRefusal::Signing { detail } => assert!(detail.contains("shorter than the minimum"), "{detail}"),
            other => panic!("{other}"),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_for_managers_and_the_local_socket_only() {
    within(async {
        let m = manager().await;
        let empty = serde_json::json!({});
        let err = m.anonymous_client().call::<_, JoinTokensResponse>("ca.join_tokens", &empty).await.unwrap_err();
        assert_eq!(err.fault().map(|f| f.code), Some(Code::Unauthenticated), "{err}");
        let ours: JoinTokensResponse = m.manager_client().call("ca.join_tokens", &empty).await.unwrap();
        assert_eq!(ours.worker, m.tokens.worker().to_string());

        // The manager's local socket is an operator's: it may rotate.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swarm.sock");
        let router = Router::new().route("ca", Arc::new(CaService::new(Arc::new(m.store.clone()))));
        let server = {
            let path = path.clone();
            tokio::spawn(async move {
                let _ = RpcServer::serve_unix(&path, Arc::new(router)).await;
            })
        };
        let local = RpcClient::unix(&path).with_timeout(Duration::from_secs(5));
        let mut rotated = None;
        for _ in 0..100 {
            // The socket appears once the server task has bound it.
            match local
                .call::<_, JoinTokensResponse>("ca.rotate_join_token", &RotateRequest { role: Role::Worker })
                .await
            {
                Ok(t) => {
                    rotated = Some(t);
                    break;
                }
                Err(e) if e.is_unreachable() => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => panic!("{e}"),
            }
        }
        let rotated = rotated.expect("the local socket answered");
        assert_ne!(rotated.worker, ours.worker);
        assert_eq!(rotated.manager, ours.manager);
        server.abort();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_its_id_only_when_its_certificate_proves_it() {
    within(async {
        let m = manager().await;
        let dir = tempfile::tempdir().unwrap();
        let node = join::join(m.addr, &m.tokens.worker().to_string(), Some(Role::Worker), &NodeFiles::new(dir.path()))
            .await
            .unwrap();
        let ask = |token: String, role: Role| IssueRequest {
            token,
            csr_pem: NodeCsr::generate("x").unwrap().csr_pem().to_owned(),
            role: Some(role),
            node_id: Some(node.node_id.clone()),
        };
        // Without its certificate, asking for its id gets a new one.
        let stranger: IssueResponse =
            m.anonymous_client().call("ca.issue", &ask(m.tokens.worker().to_string(), Role::Worker)).await.unwrap();
        assert_ne!(stranger.node_id, node.node_id);
        // With it, the manager token makes the same node a manager.
        let same: IssueResponse =
            m.client_as(&node).call("ca.issue", &ask(m.tokens.manager().to_string(), Role::Manager)).await.unwrap();
        assert_eq!((same.node_id.as_str(), same.role), (node.node_id.as_str(), Role::Manager));
    })
    .await
}
