//! Three managers over real TCP on loopback: replication, forwarding and a
//! leader failover.

mod common;

use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use swarm_raft::{RaftStore, RaftStoreConfig, Role, TcpTransport, TcpTransportConfig};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_over_tcp() {
    init_tracing();
    let tmp = tempfile::tempdir().expect("tempdir");
    let ids = [1u64, 2, 3];
    let mut listeners = Vec::new();
    let mut addrs = HashMap::new();
    for id in ids {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        addrs.insert(id, l.local_addr().expect("addr"));
        listeners.push(l);
    }
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
