//! A stopped manager leaves the in-process network on its own: after
//! `shutdown`, and after its last handle is dropped. A restarted manager
//! that registered again is not removed by its old driver stopping.
//!
//! Real time (raft-rs runs on its own threads), bounded waits.

mod common;

use std::time::{Duration, Instant};
use swarm_raft::{InProcNetwork, RaftStore, RaftStoreConfig};

async fn open(net: &InProcNetwork, dir: &std::path::Path, id: u64, voters: Vec<u64>) -> RaftStore {
    let cfg = RaftStoreConfig::new(id, dir.join(format!("m{id}")), voters).with_tick(common::TICK);
    let store = RaftStore::open_async(cfg, net.transport(id)).await.expect("open manager");
    net.register(id, store.inbox());
    store
}

async fn wait_registered(net: &InProcNetwork, want: Vec<u64>, within: Duration) {
    let deadline = Instant::now() + within;
    while net.registered() != want {
        assert!(Instant::now() < deadline, "registered {:?}, want {want:?}", net.registered());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_the_network() {
    common::init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let net = InProcNetwork::new(11);
    let mut stores = Vec::new();
    for id in 1..=3 {
        stores.push(open(&net, tmp.path(), id, vec![1, 2, 3]).await);
    }
    assert_eq!(net.registered(), vec![1, 2, 3]);
    let two = stores.remove(1);
    two.shutdown().await;
    assert_eq!(net.registered(), vec![1, 3], "shutdown returns once the manager left");
    assert!(two.status().stopped);
    for s in stores {
        s.shutdown().await;
    }
    assert_eq!(net.registered(), Vec::<u64>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_leaves_the_network() {
    common::init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let net = InProcNetwork::new(12);
    let one = open(&net, tmp.path(), 1, vec![1]).await;
    let clone = one.clone();
    drop(one);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(net.registered(), vec![1], "a clone still holds the manager");
    drop(clone);
    wait_registered(&net, vec![], Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_manager_stays_registered() {
    common::init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let net = InProcNetwork::new(13);
    let old = open(&net, tmp.path(), 1, vec![1]).await;
    // The same id comes back (from another directory, so both logs can be
    // open at once) and registers before the old one stops.
    let cfg = RaftStoreConfig::new(1, tmp.path().join("m1-again"), vec![1]).with_tick(common::TICK);
    let new = RaftStore::open_async(cfg, net.transport(1)).await.unwrap();
    net.register(1, new.inbox());
    old.shutdown().await;
    assert_eq!(net.registered(), vec![1], "the old driver stopping does not remove the new registration");
    new.shutdown().await;
    assert_eq!(net.registered(), Vec::<u64>::new());
}
