//! Three managers over real TCP on loopback: replication, forwarding and a
//! leader failover.

mod common;

use common::*;
use std::time::{Duration, Instant};
use swarm_raft::{InboundLimits, RaftStore, RaftStoreConfig, Role, TcpTransport, TcpTransportConfig};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_over_tcp() {
    init_tracing();
    let tmp = tempfile::tempdir().expect("tempdir");
    let ids = [1u64, 2, 3];
    let (listeners, addrs) = bind_loopback(&ids).await;
    let mut stores = Vec::new();
    let mut servers = Vec::new();
    for (id, listener) in ids.into_iter().zip(listeners) {
        let transport = TcpTransport::new(TcpTransportConfig::new(id, addrs.clone())).expect("transport");
        let cfg = RaftStoreConfig::new(id, tmp.path().join(format!("m{id}")), ids.to_vec()).with_tick(TICK);
        let store = RaftStore::open_async(cfg, transport).await.expect("open");
        servers.push(tokio::spawn(TcpTransport::serve(listener, store.inbox())));
        stores.push(store);
    }
    for i in 0..10 {
        let via = &stores[i % 3];
        commit_retry(via, node_tx(&format!("t{i}")), Duration::from_secs(5)).await.expect("write over tcp");
    }
    for s in &stores {
        assert_eq!(read_retry(s, Duration::from_secs(5)).await.revision(), 10);
    }
    // Kill the leader: the other two elect a new one and keep writing.
    let leader = stores.iter().position(|s| s.status().role == Role::Leader).expect("a leader");
    stores[leader].shutdown().await;
    servers[leader].abort();
    let started = Instant::now();
    let survivor = &stores[(leader + 1) % 3];
    commit_retry(survivor, node_tx("after"), Duration::from_secs(5)).await.expect("write after failover");
    assert!(started.elapsed() < Duration::from_secs(3), "failover took {:?}", started.elapsed());
    for (i, s) in stores.iter().enumerate() {
        if i != leader {
            s.shutdown().await;
        }
    }
    for srv in servers {
        srv.abort();
    }
}

/// Whether the server closed `s` within `within` (EOF or reset), or kept it open.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(n)) => panic!("the server sent {n} bytes"),
        Err(_) => false,
    }
}

async fn hello(addr: std::net::SocketAddr, id: u64) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may already have closed a connection over its limits.
    let mut wire = 8u32.to_be_bytes().to_vec();
    wire.extend_from_slice(&id.to_be_bytes());
    let _ = s.write_all(&wire).await;
    s
}

fn counting_inbox() -> (swarm_raft::Inbox, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = n.clone();
    let inbox = swarm_raft::Inbox::new(move |_| {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    (inbox, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_connections_are_bounded_in_total_and_per_peer() {
    init_tracing();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let limits = InboundLimits { max_connections: 2, max_per_peer: 1, ..InboundLimits::default() };
    let (inbox, _) = counting_inbox();
    let server = tokio::spawn(TcpTransport::serve_with(listener, inbox, limits));
    let short = Duration::from_millis(300);
    let mut a = hello(addr, 7).await;
    assert!(!closed_within(&mut a, short).await, "the first connection of manager 7 stays open");
    // A second connection claiming to be manager 7 is one too many for it.
    let mut b = hello(addr, 7).await;
    assert!(closed_within(&mut b, Duration::from_secs(2)).await, "a second connection of manager 7 is closed");
    let mut c = hello(addr, 8).await;
    assert!(!closed_within(&mut c, short).await, "manager 8 gets its own connection");
    // Two are open: a third one is closed at once, whoever it is.
    let mut d = hello(addr, 9).await;
    assert!(closed_within(&mut d, Duration::from_secs(2)).await, "a connection over the total is closed");
    // Closing one frees its slots.
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut e = hello(addr, 7).await;
    assert!(!closed_within(&mut e, short).await, "manager 7 can connect again once its connection closed");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_and_oversized_frames_are_closed() {
    use tokio::io::AsyncWriteExt;
    init_tracing();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let limits =
        InboundLimits { hello_timeout: Duration::from_millis(200), max_frame: 1024, ..InboundLimits::default() };
    let (inbox, frames) = counting_inbox();
    let server = tokio::spawn(TcpTransport::serve_with(listener, inbox, limits));
    // Connected but silent: closed once the preamble is overdue.
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await, "a silent connection is closed");
    // A preamble that is not an 8-byte id.
    let mut bad = tokio::net::TcpStream::connect(addr).await.expect("connect");
    bad.write_all(&[0, 0, 0, 3, 1, 2, 3]).await.expect("write");
    assert!(closed_within(&mut bad, Duration::from_secs(2)).await, "a bad preamble closes the connection");
    // A frame within the limit is delivered; a header over it closes the
    // connection before any of its body is read.
    let mut s = hello(addr, 2).await;
    s.write_all(&[0, 0, 0, 2, 9, 9]).await.expect("write");
    s.write_all(&2048u32.to_be_bytes()).await.expect("write");
    assert!(closed_within(&mut s, Duration::from_secs(2)).await, "an oversized frame closes the connection");
    assert_eq!(frames.load(std::sync::atomic::Ordering::SeqCst), 1);
    server.abort();
}
