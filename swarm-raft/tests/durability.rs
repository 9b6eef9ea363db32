//! Durability: whole-cluster restarts from disk, snapshots and compaction,
//! damaged log tails.

mod common;

use common::*;
use std::time::Duration;
use swarm_raft::{InProcNetwork, RaftStore, RaftStoreConfig, Recovery};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_keeps_every_committed_write() {
    // Small snapshot interval: the restart replays a snapshot plus a log tail.
    let mut c = Cluster::start_with(3, 21, |cfg| cfg.with_snapshot_interval(8, 2)).await;
    c.leader(Duration::from_secs(5)).await;
    let mut acked = Vec::new();
    for i in 0..30u64 {
        let via = c.ids[(i % 3) as usize];
        let name = format!("d{i}");
        commit_retry(c.store(via), node_tx(&name), Duration::from_secs(5)).await.expect("write");
        acked.push(name);
    }
    let before = c.store(1).status();
    assert!(before.snapshot_index > 0, "snapshots were taken: {before:?}");
    assert!(before.first_index > 1, "the log was compacted: {before:?}");
    for id in c.ids.clone() {
        c.stop(id).await;
    }
    for id in c.ids.clone() {
        c.restart(id).await;
    }
    c.leader(Duration::from_secs(5)).await;
    for s in c.stores.values() {
        let st = read_retry(s, Duration::from_secs(5)).await;
        for name in &acked {
            assert!(st.node(&name.as_str().into()).is_some(), "{name} lost on manager {}", s.id());
        }
        assert_eq!(st.revision(), 30);
    }
    // And the restarted cluster keeps working.
    commit_retry(c.any(), node_tx("after"), Duration::from_secs(5)).await.expect("write after restart");
    c.shutdown().await;
}

fn newest_log_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("log dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "raftlog"))
        .collect();
    files.sort();
    files.pop().expect("a raft log file")
}

/// Damages the last `n` bytes of the newest log file (a torn, garbled write).
fn garble_tail(dir: &std::path::Path, n: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let path = newest_log_file(dir);
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).expect("open log file");
    let len = f.metadata().expect("metadata").len();
    f.seek(SeekFrom::Start(len.saturating_sub(n))).expect("seek");
    f.write_all(&vec![0xA5; n as usize]).expect("garble");
    f.sync_all().expect("sync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_tail_is_detected_and_never_applied() {
    init_tracing();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("solo");
    let net = InProcNetwork::new(5);
    let cfg = RaftStoreConfig::new(1, &dir, vec![1]).with_tick(TICK);
    let s = RaftStore::open_async(cfg.clone(), net.transport(1)).await.expect("open");
    for i in 0..20 {
        commit_retry(&s, node_tx(&format!("c{i}")), Duration::from_secs(5)).await.expect("write");
    }
    s.shutdown().await;
    // Enough bytes to hit the records of the last few entries (not only
    // the last commit-index update, which raft would simply re-learn).
    garble_tail(&dir, 600);

    // Strict recovery refuses the damaged log, naming the engine and dir.
    let mut strict = cfg.clone();
    strict.recovery = Recovery::Strict;
    let err = RaftStore::open_async(strict, net.transport(1)).await.err().expect("strict open must fail");
    assert!(err.to_string().contains("raft log engine"), "{err}");

    // The default cuts the damaged tail: the state is an intact prefix of
    // the writes, the garbled record is not applied.
    let s = RaftStore::open_async(cfg, net.transport(1)).await.expect("tolerant open");
    let st = read_retry(&s, Duration::from_secs(5)).await;
    let rev = st.revision();
    assert!(rev < 20, "the damaged last write was cut (revision {rev})");
    for i in 0..20u64 {
        assert_eq!(st.node(&format!("c{i}").into()).is_some(), i < rev, "c{i} at revision {rev}");
    }
    // It goes on from there.
    commit_retry(&s, node_tx("after"), Duration::from_secs(5)).await.expect("write after recovery");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_at_the_last_whole_record() {
    init_tracing();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("solo");
    let net = InProcNetwork::new(6);
    let cfg = RaftStoreConfig::new(1, &dir, vec![1]).with_tick(TICK);
    let s = RaftStore::open_async(cfg.clone(), net.transport(1)).await.expect("open");
    for i in 0..20 {
        commit_retry(&s, node_tx(&format!("c{i}")), Duration::from_secs(5)).await.expect("write");
    }
    s.shutdown().await;
    // A crash in the middle of a write: the file ends inside a record.
    let path = newest_log_file(&dir);
    let f = std::fs::OpenOptions::new().write(true).open(&path).expect("open log file");
    let len = f.metadata().expect("metadata").len();
    f.set_len(len - 300).expect("truncate");
    drop(f);
    let s = RaftStore::open_async(cfg, net.transport(1)).await.expect("open after a torn write");
    let st = read_retry(&s, Duration::from_secs(5)).await;
    let rev = st.revision();
    assert!(rev < 20, "the torn records were cut (revision {rev})");
    for i in 0..20u64 {
        assert_eq!(st.node(&format!("c{i}").into()).is_some(), i < rev, "c{i} at revision {rev}");
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_with_a_damaged_tail_catches_up_from_the_cluster() {
    let mut c = Cluster::start(3, 22).await;
    c.leader(Duration::from_secs(5)).await;
    for i in 0..20 {
        commit_retry(c.any(), node_tx(&format!("t{i}")), Duration::from_secs(5)).await.expect("write");
    }
    c.converge(Duration::from_secs(5)).await;
    c.stop(3).await;
    garble_tail(&c.dir(3), 600);
    c.restart(3).await;
    c.converge(Duration::from_secs(5)).await;
    let st = read_retry(c.store(3), Duration::from_secs(5)).await;
    assert_eq!(st.revision(), 20);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_catches_up_by_snapshot() {
    let mut c = Cluster::start_with(3, 23, |cfg| cfg.with_snapshot_interval(10, 2)).await;
    c.leader(Duration::from_secs(5)).await;
    commit_retry(c.any(), node_tx("first"), Duration::from_secs(5)).await.expect("write");
    c.converge(Duration::from_secs(5)).await;
    c.stop(3).await;
    for i in 0..50 {
        commit_retry(c.any(), node_tx(&format!("s{i}")), Duration::from_secs(5)).await.expect("write");
    }
    let st1 = c.store(1).status();
    assert!(st1.first_index > 3, "the leader compacted past the stopped follower: {st1:?}");
    c.restart(3).await;
    c.converge(Duration::from_secs(5)).await;
    let st3 = c.store(3).status();
    assert!(st3.snapshot_index >= 10, "manager 3 installed a snapshot: {st3:?}");
    assert_eq!(read_retry(c.store(3), Duration::from_secs(5)).await.revision(), 51);
    // The installed snapshot is durable: restart manager 3 alone on its
    // disk state (cut off from the others) and read it locally.
    c.stop(3).await;
    c.net.isolate(3, &c.ids);
    let s3 = c.restart(3).await;
    let st = s3.stale_snapshot();
    assert!(st.revision() >= 10 && st.node(&"first".into()).is_some(), "revision {}", st.revision());
    assert!(s3.status().snapshot_index >= 10);
    c.net.heal();
    c.converge(Duration::from_secs(5)).await;
    assert_eq!(read_retry(c.store(3), Duration::from_secs(5)).await.revision(), 51);
    c.shutdown().await;
}
