//! Live clusters on the in-process network with on-disk logs: the quorum
//! table, forwarding, rejection, reads and watches.

mod common;

use common::*;
use std::time::{Duration, Instant};
use swarm_core::store::{Store, StoreError};

/// Swarm's table: managers, quorum, failures tolerated.
const TABLE: [(u64, u64, u64); 7] = [(1, 1, 0), (2, 2, 0), (3, 2, 1), (4, 3, 1), (5, 3, 2), (6, 4, 2), (7, 4, 3)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_table_holds_on_live_clusters() {
    for (n, quorum, f) in TABLE {
        assert_eq!(quorum, n / 2 + 1);
        let mut c = Cluster::start(n, n).await;
        let leader = c.leader(Duration::from_secs(5)).await;
        commit_retry(c.any(), node_tx("before"), Duration::from_secs(5)).await.expect("first write");
        // Stop f managers, the leader first: writes go on.
        let mut order: Vec<u64> = vec![leader];
        order.extend(c.ids.iter().copied().filter(|&i| i != leader));
        for &id in order.iter().take(f as usize) {
            c.stop(id).await;
        }
        commit_retry(c.any(), node_tx("after-f"), Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{n} managers with {f} stopped must accept writes: {e}"));
        // Stop one more: no quorum. Writes refuse with a clear error, in
        // bounded time, once the leader noticed (check-quorum).
        c.stop(order[f as usize]).await;
        if c.stores.is_empty() {
            // A single-manager cluster with its manager stopped: nothing to ask.
            assert_eq!(n, 1);
            c.shutdown().await;
            continue;
        }
        // A write racing the loss may be in flight at the old leader: its
        // outcome is unknown, but it fails within the commit timeout.
        let racing = c.any().commit(node_tx("racing")).await;
        assert!(racing.is_err(), "a write without quorum cannot succeed");
        // Once the survivors noticed (check-quorum, then an election timeout
        // without a leader), a write is refused as "no quorum" quickly.
        let deadline = Instant::now() + Duration::from_secs(3);
        while c.stores.values().any(|s| s.status().leader.is_some()) {
            assert!(Instant::now() < deadline, "survivors still see a leader without quorum");
            tokio::time::sleep(TICK).await;
        }
        let statuses: Vec<_> = c.stores.values().map(|s| s.status()).collect();
        let started = Instant::now();
        let err = c.any().commit(node_tx("no-quorum")).await.expect_err("write without quorum must fail");
        let took = started.elapsed();
        assert!(matches!(err, StoreError::NoQuorum(_)), "{n} managers, {} stopped: {err}\n{statuses:#?}", f + 1);
        assert!(err.to_string().contains("no quorum"), "{err}");
        assert!(took < Duration::from_secs(2), "refusal took {took:?}");
        // Reads refuse too (linearizable), stale reads still answer.
        assert!(matches!(c.any().snapshot().await, Err(StoreError::NoQuorum(_))));
        // Nothing half-applied: every survivor has the two writes, not the third.
        for s in c.stores.values() {
            let st = s.stale_snapshot();
            assert!(st.node(&"after-f".into()).is_some());
            assert!(st.node(&"no-quorum".into()).is_none());
            assert!(st.node(&"racing".into()).is_none());
        }
        // Bring the stopped managers back: quorum returns, and the refused
        // write is still absent everywhere.
        for &id in order.iter().take(f as usize + 1) {
            c.restart(id).await;
        }
        commit_retry(c.any(), node_tx("back"), Duration::from_secs(5)).await.expect("write after recovery");
        c.converge(Duration::from_secs(5)).await;
        for s in c.stores.values() {
            let st = read_retry(s, Duration::from_secs(5)).await;
            assert!(st.node(&"back".into()).is_some());
            assert!(st.node(&"no-quorum".into()).is_none());
            // The racing write was never committed by a quorum; whether the
            // old leader's copy wins after recovery is raft's choice, but it
            // is all or nothing, the same on every manager.
            let racing = st.node(&"racing".into()).is_some();
            assert_eq!(st.revision(), 3 + u64::from(racing));
        }
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_forwarded_and_rejections_are_identical() {
    let c = Cluster::start(3, 11).await;
    let leader = c.leader(Duration::from_secs(5)).await;
    let follower = *c.ids.iter().find(|&&i| i != leader).expect("a follower");
    let f = c.store(follower);
    let change = commit_retry(f, node_tx("n1"), Duration::from_secs(5)).await.expect("forwarded write");
    assert_eq!(change.revision, 1);
    // The proposer fixed the timestamp: every manager stamped the same time.
    c.converge(Duration::from_secs(5)).await;
    let stamps: Vec<_> =
        c.stores.values().map(|s| s.stale_snapshot().node(&"n1".into()).expect("replicated").meta.created_at).collect();
    assert!(stamps.windows(2).all(|w| w[0] == w[1]), "{stamps:?}");
    // A duplicate create is rejected by the state machine, on the follower
    // that proposed it, and nothing changes anywhere.
    let err = f.commit(node_tx("n1")).await.expect_err("duplicate create");
    assert!(matches!(err, StoreError::Rejected(_)), "{err}");
    c.converge(Duration::from_secs(5)).await;
    for s in c.stores.values() {
        assert_eq!(s.stale_snapshot().revision(), 1);
    }
    // A later write still gets the next revision.
    assert_eq!(f.commit(node_tx("n2")).await.expect("write").revision, 2);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_linearizable_on_followers_and_watch_resumes() {
    let c = Cluster::start(3, 12).await;
    let leader = c.leader(Duration::from_secs(5)).await;
    let follower = *c.ids.iter().find(|&&i| i != leader).expect("a follower");
    let mut watch = c.store(follower).watch(0).await.expect("watch");
    for i in 0..5 {
        commit_retry(c.store(leader), node_tx(&format!("w{i}")), Duration::from_secs(5)).await.expect("write");
        // Read-your-writes on a follower through ReadIndex.
        let st = read_retry(c.store(follower), Duration::from_secs(5)).await;
        assert!(st.node(&format!("w{i}").into()).is_some());
    }
    for rev in 1..=5 {
        assert_eq!(watch.next().await.expect("change").revision, rev);
    }
    // Resume from revision 3 on another manager.
    let other = *c.ids.iter().find(|&&i| i != follower).expect("another manager");
    let mut resumed = c.store(other).watch(3).await.expect("resume");
    assert_eq!(resumed.next().await.expect("change").revision, 4);
    assert_eq!(resumed.next().await.expect("change").revision, 5);
    assert!(matches!(c.store(other).watch(99).await, Err(StoreError::FutureRevision { .. })));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_watch_continues_across_a_leader_crash() {
    let mut c = Cluster::start(3, 13).await;
    let leader = c.leader(Duration::from_secs(5)).await;
    let follower = *c.ids.iter().find(|&&i| i != leader).expect("a follower");
    let mut watch = c.store(follower).watch(0).await.expect("watch");
    commit_retry(c.store(follower), node_tx("before"), Duration::from_secs(5)).await.expect("write");
    c.stop(leader).await;
    commit_retry(c.store(follower), node_tx("after"), Duration::from_secs(5)).await.expect("write after failover");
    let a = watch.next().await.expect("first change");
    let b = watch.next().await.expect("second change");
    assert_eq!((a.revision, b.revision), (1, 2));
    c.shutdown().await;
}
