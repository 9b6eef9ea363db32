//! The node API's wire over real TLS on loopback: unary calls, streams,
//! faults, who the handler sees as the peer, the gate, the local socket.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::{Value, json};
use swarm_security::ca::{ClusterCa, NodeCsr, SigningPolicy};
use swarm_security::role::Role;
use swarm_security::rpc::{
    self, Code, Fault, Gate, Handler, Peer, Reloadable, Reply, Router, RpcClient, RpcError, RpcServer, ServerLimits,
};
use swarm_security::tls::{
    PeerPolicy, TlsCredentials, anonymous_client_config, client_config, server_config_optional_client,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn creds(ca: &ClusterCa, node: &str, role: Role) -> TlsCredentials {
    let csr = NodeCsr::generate(node).unwrap();
    let cert = ca.sign_node_csr(csr.csr_pem(), node, role, None, SystemTime::now()).unwrap();
    TlsCredentials::from_pem(ca.cert_pem(), cert.cert_pem(), &csr.key_pem()).unwrap()
}

/// `echo.who` answers the peer's node id (or "anonymous"/"local");
/// `echo.count {n}` streams 0..n; `echo.fail` answers a service fault.
struct Echo;

#[async_trait]
impl Handler for Echo {
    async fn call(&self, peer: &Peer, method: &str, body: rpc::Body) -> Result<Reply, Fault> {
        match method {
            "who" => {
                let who = match (&peer.identity, peer.local) {
                    (Some(id), _) => format!("{} ({})", id.node_id, id.role),
                    (None, true) => "local".into(),
                    (None, false) => "anonymous".into(),
                };
                Reply::unary(&who)
            }
            "managers_only" => {
                let id = peer.require(&[Role::Manager], "echo.managers_only")?;
                Reply::unary(&id.node_id)
            }
            "count" => {
                let body: Value = rpc::body("echo.count", body)?;
                let n = body["n"].as_u64().ok_or_else(|| Fault::new(Code::BadRequest, "count needs n"))?;
                let (tx, rx) = mpsc::channel(4);
                tokio::spawn(async move {
                    for i in 0..n {
                        if tx.send(rpc::encode(&i)).await.is_err() {
                            return;
                        }
                    }
                });
                Ok(Reply::Stream(rx))
            }
            "fail" => Err(Fault::service("no such widget", &json!({"widget": 7}))),
            other => Err(Fault::new(Code::UnknownMethod, format!("no echo.{other}"))),
        }
    }
}

/// Refuses node "banned".
struct Ban;

impl Gate for Ban {
    fn admit(&self, peer: &Peer) -> Result<(), Fault> {
        match &peer.identity {
            Some(id) if id.node_id == "banned" => Err(Fault::new(Code::PermissionDenied, "node banned was removed")),
            _ => Ok(()),
        }
    }
}

struct Server {
    addr: std::net::SocketAddr,
    _task: tokio::task::JoinHandle<()>,
}

async fn serve(ca: &ClusterCa) -> Server {
    let server = creds(ca, "m1", Role::Manager);
    let tls = Reloadable::new(server_config_optional_client(&server, PeerPolicy::nodes(ca.cluster_id())).unwrap());
    let router = Arc::new(Router::new().route("echo", Arc::new(Echo)).gate(Arc::new(Ban)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(RpcServer::serve(listener, tls, router, ServerLimits::default()));
    Server { addr, _task: task }
}

fn client(addr: std::net::SocketAddr, c: &TlsCredentials) -> RpcClient {
    RpcClient::new(addr, "swarm-manager", Reloadable::new(client_config(c).unwrap())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_see_the_certificate_identity_and_share_one_connection() {
    let ca = ClusterCa::generate("c1", Duration::from_secs(86_400)).unwrap();
    let s = serve(&ca).await;
    let w = client(s.addr, &creds(&ca, "w1", Role::Worker));
    for _ in 0..3 {
        let who: String = w.call("echo.who", &()).await.unwrap();
        assert_eq!(who, "w1 (worker)");
    }
    let err = w.call::<_, String>("echo.managers_only", &()).await.unwrap_err();
    let fault = err.fault().expect("a fault");
    assert_eq!(fault.code, Code::PermissionDenied);
    assert!(fault.message.contains("node w1 presented a worker certificate"), "{fault}");
    // The connection survives a fault.
    let m = client(s.addr, &creds(&ca, "m2", Role::Manager));
    assert_eq!(m.call::<_, String>("echo.managers_only", &()).await.unwrap(), "m2");
    let err = w.call::<_, Value>("echo.fail", &()).await.unwrap_err();
    let fault = err.fault().unwrap();
    assert_eq!((fault.code, fault.detail_as::<Value>()), (Code::Service, Some(json!({"widget": 7}))));
    let err = w.call::<_, Value>("nope.who", &()).await.unwrap_err();
    assert_eq!(err.fault().unwrap().code, Code::UnknownMethod);
    assert!(err.to_string().contains("no service \"nope\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_deliver_every_item_then_end() {
    let ca = ClusterCa::generate("c1", Duration::from_secs(86_400)).unwrap();
    let s = serve(&ca).await;
    let w = client(s.addr, &creds(&ca, "w1", Role::Worker));
    let mut st = w.stream::<_, u64>("echo.count", &json!({"n": 100})).await.unwrap();
    let mut got = Vec::new();
    while let Some(i) = st.next().await.unwrap() {
        got.push(i);
    }
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    assert_eq!(st.next().await.unwrap(), None);
    // A refused stream fails on the first read.
    let mut bad = w.stream::<_, u64>("echo.count", &json!({})).await.unwrap();
    assert_eq!(bad.next().await.unwrap_err().fault().unwrap().code, Code::BadRequest);
    // Unary calls still work alongside.
    assert_eq!(w.call::<_, String>("echo.who", &()).await.unwrap(), "w1 (worker)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_certificate_are_anonymous_and_others_clusters_are_refused() {
    let ca = ClusterCa::generate("c1", Duration::from_secs(86_400)).unwrap();
    let s = serve(&ca).await;
    let anon =
        RpcClient::new(s.addr, "swarm-manager", Reloadable::new(anonymous_client_config(ca.cert_pem()).unwrap()))
            .unwrap();
    assert_eq!(anon.call::<_, String>("echo.who", &()).await.unwrap(), "anonymous");
    let err = anon.call::<_, String>("echo.managers_only", &()).await.unwrap_err();
    assert_eq!(err.fault().unwrap().code, Code::Unauthenticated);

    let other = ClusterCa::generate("c2", Duration::from_secs(86_400)).unwrap();
    let stranger = client(s.addr, &creds(&other, "x1", Role::Manager));
    let err = stranger.call::<_, String>("echo.who", &()).await.unwrap_err();
    assert!(matches!(err, RpcError::Handshake { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_refuses_before_any_handler() {
    let ca = ClusterCa::generate("c1", Duration::from_secs(86_400)).unwrap();
    let s = serve(&ca).await;
    let banned = client(s.addr, &creds(&ca, "banned", Role::Manager));
    let err = banned.call::<_, String>("echo.who", &()).await.unwrap_err();
    let fault = err.fault().unwrap();
    assert_eq!((fault.code, fault.message.as_str()), (Code::PermissionDenied, "node banned was removed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_socket_is_owner_only_and_its_peers_are_local() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    // A stale file is replaced.
    std::fs::write(&path, b"stale").unwrap();
    let router = Arc::new(Router::new().route("echo", Arc::new(Echo)));
    let p = path.clone();
    let _task = tokio::spawn(async move { RpcServer::serve_unix(&p, router).await.unwrap() });
    let c = RpcClient::unix(&path);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let who = loop {
        match c.call::<_, String>("echo.who", &()).await {
            Ok(w) => break w,
            Err(e) if tokio::time::Instant::now() < deadline && e.is_unreachable() => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(who, "local");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// Collects what the code under test logs, for every test of this binary:
/// a global subscriber, as a scoped one misses events whose callsite
/// another test thread registered first.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn global() -> Logs {
        static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            let sink = logs.clone();
            let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || sink.clone()).finish();
            tracing::subscriber::set_global_default(subscriber).unwrap();
            logs
        })
        .clone()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_with_expiry_named_on_both_ends() {
    let logs = Logs::global();
    let started = std::time::Instant::now();

    let ca = ClusterCa::generate("c1", Duration::from_secs(86_400)).unwrap();
    let s = serve(&ca).await;
    // Issued two minutes ago for one minute: expired a minute ago.
    let short = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap().with_policy(SigningPolicy {
        min_lifetime: Duration::from_secs(1),
        backdate: Duration::ZERO,
        ..SigningPolicy::default()
    });
    let csr = NodeCsr::generate("w-old").unwrap();
    let issued = SystemTime::now() - Duration::from_secs(120);
    let cert =
        short.sign_node_csr(csr.csr_pem(), "w-old", Role::Worker, Some(Duration::from_secs(60)), issued).unwrap();
    let expired = TlsCredentials::from_pem(ca.cert_pem(), cert.cert_pem(), &csr.key_pem()).unwrap();

    let err =
        tokio::time::timeout(Duration::from_secs(10), client(s.addr, &expired).call::<_, String>("echo.who", &()))
            .await
            .expect("refused within 10 s")
            .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RpcError::Handshake { .. }), "{err:?}");
    assert!(text.to_lowercase().contains("expired"), "the client is told its certificate expired: {text}");

    // The server refused the handshake and logged why.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = logs.text();
        if log.lines().any(|l| l.contains("TLS handshake refused") && l.contains("certificate expired")) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the server's log names the expiry: {log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A fresh certificate of the same node is served.
    let fresh = client(s.addr, &creds(&ca, "w-old", Role::Worker));
    let who = fresh.call::<_, String>("echo.who", &()).await;
    assert_eq!(who.as_deref().map_err(|e| e.to_string()), Ok("w-old (worker)"), "after {:?}", started.elapsed());
}
