//! Raft over mutual TLS on loopback (feature `tls`): three managers elect a
//! leader and commit; the raft port refuses workers, managers of another
//! cluster, expired certificates, plaintext, and a manager claiming another
//! manager's raft id.

mod common;

use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};
use swarm_raft::tls::{RaftTls, TlsRefusals};
use swarm_raft::{InboundLimits, RaftStore, RaftStoreConfig, Role, TcpTransport, TcpTransportConfig};
use swarm_security::ca::{ClusterCa, NodeCsr};
use swarm_security::role::Role as NodeRole;
use swarm_security::tls::{TlsCredentials, client_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

const DAY: Duration = Duration::from_secs(86_400);

/// A CA valid from ten days ago, so it can also sign already expired
/// certificates.
fn cluster_ca(cluster: &str) -> ClusterCa {
    let ten_days_ago = SystemTime::now() - 10 * DAY;
    ClusterCa::generate_at(cluster, 365 * DAY, ten_days_ago).expect("CA")
}

/// Credentials trusting `trust`'s CA certificate, with a certificate for
/// `node_id` in `role` issued by `issuer` at `at` for `lifetime`.
fn creds_at(
    trust: &ClusterCa,
    issuer: &ClusterCa,
    node_id: &str,
    role: NodeRole,
    at: SystemTime,
    lifetime: Duration,
) -> TlsCredentials {
    let csr = NodeCsr::generate(node_id).expect("csr");
    let cert = issuer.sign_node_csr(csr.csr_pem(), node_id, role, Some(lifetime), at).expect("sign");
    TlsCredentials::from_pem(trust.cert_pem(), cert.cert_pem(), &csr.key_pem()).expect("creds")
}

fn creds(ca: &ClusterCa, node_id: &str, role: NodeRole) -> TlsCredentials {
    creds_at(ca, ca, node_id, role, SystemTime::now(), 30 * DAY)
}

fn names() -> HashMap<u64, String> {
    (1..=3).map(|id| (id, format!("m{id}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_elect_and_commit_over_mtls() {
    init_tracing();
    let ca = cluster_ca("c1");
    let tmp = tempfile::tempdir().expect("tempdir");
    let ids = [1u64, 2, 3];
    let (listeners, addrs) = bind_loopback(&ids).await;
    let mut stores = Vec::new();
    let mut servers = Vec::new();
    let mut tlss = Vec::new();
    for (id, listener) in ids.into_iter().zip(listeners) {
        let tls = RaftTls::new(&creds(&ca, &format!("m{id}"), NodeRole::Manager), names()).expect("raft tls");
        let transport =
            TcpTransport::new(TcpTransportConfig::new(id, addrs.clone()).with_tls(tls.clone())).expect("transport");
        let cfg = RaftStoreConfig::new(id, tmp.path().join(format!("m{id}")), ids.to_vec()).with_tick(TICK);
        let store = RaftStore::open_async(cfg, transport).await.expect("open");
        servers.push(tokio::spawn(TcpTransport::serve_tls(
            listener,
            store.inbox(),
            InboundLimits::default(),
            tls.clone(),
        )));
        stores.push(store);
        tlss.push(tls);
    }
    for i in 0..10 {
        let via = &stores[i % 3];
        commit_retry(via, node_tx(&format!("t{i}")), Duration::from_secs(10)).await.expect("write over mtls");
    }
    for s in &stores {
        assert_eq!(read_retry(s, Duration::from_secs(5)).await.revision(), 10);
    }
    assert_eq!(stores.iter().filter(|s| s.status().role == Role::Leader).count(), 1, "one leader");
    for tls in &tlss {
        assert_eq!(tls.refusals(), TlsRefusals::default(), "managers of the cluster are never refused");
    }
    for s in &stores {
        s.shutdown().await;
    }
    for srv in servers {
        srv.abort();
    }
}

/// A raft listener for manager `m1` of cluster `c1` over mTLS, counting
/// the frames that reach its inbox.
struct Listener {
    addr: SocketAddr,
    tls: Arc<RaftTls>,
    delivered: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

async fn listener(ca: &ClusterCa) -> Listener {
    let tls = RaftTls::new(&creds(ca, "m1", NodeRole::Manager), names()).expect("raft tls");
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let delivered = Arc::new(AtomicUsize::new(0));
    let d = delivered.clone();
    let inbox = swarm_raft::Inbox::new(move |_| {
        d.fetch_add(1, Ordering::SeqCst);
    });
    let limits = InboundLimits { hello_timeout: Duration::from_secs(2), ..InboundLimits::default() };
    let task = tokio::spawn(TcpTransport::serve_tls(l, inbox, limits, tls.clone()));
    Listener { addr, tls, delivered, task }
}

fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut wire = (bytes.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(bytes);
    wire
}

/// Dials `addr` over TLS with `creds` (server name `m1`), claims raft id
/// `claim`, sends one frame, and says whether the connection stayed open
/// for a second afterwards (false: the handshake failed or the server
/// closed it).
async fn stays_open(addr: SocketAddr, creds: &TlsCredentials, claim: u64) -> bool {
    let connector = TlsConnector::from(client_config(creds).expect("client config"));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("m1").expect("server name");
    let Ok(mut s) = connector.connect(name, tcp).await else {
        return false;
    };
    // In TLS 1.3 the client finishes first; the server's verdict on the
    // client certificate arrives as an alert on the next read.
    let mut wire = frame(&claim.to_be_bytes());
    wire.extend(frame(b"not a raft message"));
    if s.write_all(&wire).await.is_err() || s.flush().await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => false,
        Ok(Ok(n)) => panic!("the raft listener sent {n} bytes"),
        Err(_) => true,
    }
}

async fn refusals_reach(tls: &RaftTls, want: TlsRefusals) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tls.refusals() != want && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(tls.refusals(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_port_refuses_all_but_this_clusters_managers() {
    init_tracing();
    let ca = cluster_ca("c1");
    let l = listener(&ca).await;
    let none = TlsRefusals::default();

    // A manager of the cluster, claiming its own raft id: admitted.
    let m2 = creds(&ca, "m2", NodeRole::Manager);
    assert!(stays_open(l.addr, &m2, 2).await, "manager m2 as raft id 2 is admitted");
    assert_eq!(l.delivered.load(Ordering::SeqCst), 1, "its frame reached the inbox");
    assert_eq!(l.tls.refusals(), TlsRefusals::default());

    // A worker of the same cluster: its certificate is valid, its role is
    // not admitted.
    let worker = creds(&ca, "w1", NodeRole::Worker);
    assert!(!stays_open(l.addr, &worker, 2).await, "a worker is refused");
    refusals_reach(&l.tls, TlsRefusals { identity: 1, ..none }).await;

    // A manager of another cluster (trusting our CA, so only the server
    // can refuse it).
    let other_ca = cluster_ca("c2");
    let stranger = creds_at(&ca, &other_ca, "m2", NodeRole::Manager, SystemTime::now(), 30 * DAY);
    assert!(!stays_open(l.addr, &stranger, 2).await, "a manager of another cluster is refused");
    refusals_reach(&l.tls, TlsRefusals { identity: 1, certificate: 1, ..none }).await;

    // An expired manager certificate of this cluster: not valid under the
    // CA.
    let expired = creds_at(&ca, &ca, "m2", NodeRole::Manager, SystemTime::now() - 5 * DAY, DAY);
    assert!(!stays_open(l.addr, &expired, 2).await, "an expired certificate is refused");
    refusals_reach(&l.tls, TlsRefusals { identity: 1, certificate: 2, ..none }).await;

    // A manager of this cluster claiming another manager's raft id, or one
    // that has none.
    assert!(!stays_open(l.addr, &m2, 3).await, "m2 claiming raft id 3 is refused");
    refusals_reach(&l.tls, TlsRefusals { identity: 1, certificate: 2, wrong_id: 1, ..none }).await;
    let m9 = creds(&ca, "m9", NodeRole::Manager);
    assert!(!stays_open(l.addr, &m9, 9).await, "a manager with no raft id in the table is refused");
    refusals_reach(&l.tls, TlsRefusals { identity: 1, certificate: 2, wrong_id: 2, ..none }).await;

    // Plaintext on the TLS port.
    let mut plain = TcpStream::connect(l.addr).await.expect("connect");
    let _ = plain.write_all(&frame(&2u64.to_be_bytes())).await;
    let mut buf = [0u8; 64];
    let closed = match tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match plain.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    {
        Ok(()) => true,
        Err(_) => false,
    };
    assert!(closed, "a plaintext client is disconnected");
    refusals_reach(&l.tls, TlsRefusals { identity: 1, certificate: 2, wrong_id: 2, handshake: 1 }).await;

    assert_eq!(l.delivered.load(Ordering::SeqCst), 1, "nothing from a refused peer reached raft");
    l.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_port_refuses_a_removed_managers_certificate() {
    init_tracing();
    let ca = cluster_ca("c1");
    let l = listener(&ca).await;
    let m2 = creds(&ca, "m2", NodeRole::Manager);
    assert!(stays_open(l.addr, &m2, 2).await, "manager m2 is admitted before its removal");
    // m2 is removed (the deny-list names it): its certificate, still valid
    // under the CA and still in the raft-id table, is refused.
    let removed = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::<String>::new()));
    let list = removed.clone();
    l.tls.set_deny_list(move |node| list.lock().unwrap().contains(node));
    assert!(stays_open(l.addr, &m2, 2).await, "an empty deny-list refuses nobody");
    removed.lock().unwrap().insert("m2".to_owned());
    assert!(!stays_open(l.addr, &m2, 2).await, "a removed manager is refused");
    refusals_reach(&l.tls, TlsRefusals { identity: 1, ..TlsRefusals::default() }).await;
    assert_eq!(l.delivered.load(Ordering::SeqCst), 2, "nothing from the removed manager reached raft");

    l.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialer_refuses_a_server_with_the_wrong_identity() {
    init_tracing();
    let ca = cluster_ca("c1");
    // The listener presents m1's certificate; a transport of m2 believes
    // raft id 1 is node m3: it must not send it anything.
    let l = listener(&ca).await;
    let mut wrong = names();
    wrong.insert(1, "m3".to_owned());
    let tls = RaftTls::new(&creds(&ca, "m2", NodeRole::Manager), wrong).expect("raft tls");
    let peers = HashMap::from([(1u64, l.addr)]);
    let transport = TcpTransport::new(TcpTransportConfig::new(2, peers).with_tls(tls)).expect("transport");
    for _ in 0..5 {
        swarm_raft::Transport::send(&*transport, 1, b"frame".to_vec());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(l.delivered.load(Ordering::SeqCst), 0, "nothing sent to a server that is not the expected node");
    assert!(l.tls.refusals().handshake >= 1, "the listener saw the dialer abort");
    l.task.abort();
}

#[test]
fn raft_tls_needs_a_manager_certificate() {
    let ca = cluster_ca("c1");
    let err = RaftTls::new(&creds(&ca, "w1", NodeRole::Worker), names()).expect_err("worker refused");
    assert!(err.to_string().contains("worker"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_is_what_new_connections_present() {
    init_tracing();
    let ca = cluster_ca("c1");
    let l = listener(&ca).await;
    // m2's transport starts with a certificate that expired four days ago:
    // the listener refuses it and nothing reaches raft.
    let expired = creds_at(&ca, &ca, "m2", NodeRole::Manager, SystemTime::now() - 5 * DAY, DAY);
    let tls = RaftTls::new(&expired, names()).expect("raft tls");
    let peers = HashMap::from([(1u64, l.addr)]);
    let transport = TcpTransport::new(TcpTransportConfig::new(2, peers).with_tls(tls.clone())).expect("transport");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while l.tls.refusals().certificate == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the expired certificate was never presented");
        swarm_raft::Transport::send(&*transport, 1, b"frame".to_vec());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(l.delivered.load(Ordering::SeqCst), 0, "nothing from the expired certificate reached raft");

    // Credentials of another node are not taken.
    let err = tls.reload(&creds(&ca, "m3", NodeRole::Manager)).expect_err("another node's certificate");
    assert!(err.to_string().contains("m3"), "{err}");

    // Renewed: the next connection presents the new certificate and is
    // admitted.
    tls.reload(&creds(&ca, "m2", NodeRole::Manager)).expect("reload");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while l.delivered.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "frames never delivered after the reload: {:?}",
            l.tls.refusals()
        );
        swarm_raft::Transport::send(&*transport, 1, b"frame".to_vec());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    l.task.abort();
}
