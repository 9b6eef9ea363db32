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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_only_task_updates_replicate_and_replay_identically() {
    use swarm_core::model::{Object, Service, ServiceSpec, Task, TaskState, TaskStatus};
    use swarm_core::state::{Action, Transaction};
    let mut c = Cluster::start(3, 14).await;
    let leader = c.leader(Duration::from_secs(5)).await;
    let follower = *c.ids.iter().find(|&&i| i != leader).expect("a follower");
    let svc = Service { id: "s".into(), spec: ServiceSpec::replicated("web", "nginx:1.27", 1), ..Default::default() };
    let mut t = Task {
        id: "t1".into(),
        service_id: "s".into(),
        slot: Some(1),
        node_id: Some("n1".into()),
        ..Default::default()
    };
    t.spec.container.image = "nginx:1.27".into();
    t.status.state = TaskState::Assigned;
    let setup = node_tx("n1").create(svc).create(t);
    commit_retry(c.store(leader), setup, Duration::from_secs(5)).await.expect("setup");
    c.converge(Duration::from_secs(5)).await;
    let mut watches = Vec::new();
    for s in c.stores.values() {
        watches.push(s.watch(1).await.expect("watch"));
    }
    let stored = read_retry(c.store(follower), Duration::from_secs(5)).await.task(&"t1".into()).expect("t1").clone();
    // Proposed on a follower (forwarded), as a dispatcher there would.
    let running = TaskStatus { state: TaskState::Running, message: "started".into(), ..Default::default() };
    let tx = Transaction::new().update_task_status(stored.id.clone(), stored.meta.version, running.clone());
    let change = commit_retry(c.store(follower), tx.clone(), Duration::from_secs(5)).await.expect("status write");
    assert_eq!(change.revision, 2);
    c.converge(Duration::from_secs(5)).await;
    // Every manager's watchers see the same change: an update of the whole
    // task with the new status, and the task before it.
    for w in &mut watches {
        let got = w.next().await.expect("change");
        assert_eq!(*got, *change);
    }
    let ev = &change.events[0];
    assert_eq!(ev.action, Action::Update);
    assert_eq!(ev.old, Some(Object::Task(stored.as_ref().clone())));
    let Object::Task(after) = &ev.object else { panic!("a task event: {ev:?}") };
    assert_eq!(after.status, running);
    assert_eq!(after.spec, stored.spec);
    // The same state everywhere, and again after a follower replays its log.
    let images = |c: &Cluster| c.stores.values().map(|s| s.stale_snapshot().to_image()).collect::<Vec<_>>();
    let before = images(&c);
    assert!(before.windows(2).all(|w| w[0] == w[1]));
    c.stop(follower).await;
    c.restart(follower).await;
    c.converge(Duration::from_secs(5)).await;
    assert_eq!(read_retry(c.store(follower), Duration::from_secs(5)).await.to_image(), before[0]);
    // A stale status write (the version read before) is refused everywhere.
    let err = c.store(leader).commit(tx).await.expect_err("stale status write");
    assert!(matches!(err, StoreError::Rejected(_)), "{err}");
    c.converge(Duration::from_secs(5)).await;
    assert_eq!(images(&c), before);
    c.shutdown().await;
}

/// Managers take their snapshots in turn, not all at the same index (which
/// would stall a quorum's disk writes together): with 3 voters and an
/// interval of 60 entries, each one's snapshots fall in its own third of
/// the index space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_take_their_snapshots_in_turn() {
    let c = Cluster::start_with(3, 36, |cfg| cfg.with_snapshot_interval(60, 10)).await;
    c.leader(Duration::from_secs(5)).await;
    for i in 0..400 {
        commit_retry(c.any(), node_tx(&format!("s{i}")), Duration::from_secs(5)).await.expect("write");
    }
    c.converge(Duration::from_secs(5)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let indexes = loop {
        let idx: Vec<u64> = (1..=3).map(|id| c.store(id).status().snapshot_index).collect();
        if idx.iter().all(|i| *i > 60) || std::time::Instant::now() > deadline {
            break idx;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(indexes.iter().all(|i| *i > 60), "every manager snapshotted: {indexes:?}");
    // Slot k of 20 entries belongs to the voter of rank k mod 3 (ids 1, 2,
    // 3 in order). Writes are one at a time, so no batch of entries steps
    // over a slot: every snapshot is in its manager's own slot, and the
    // three are never at one index.
    for (rank, index) in indexes.iter().enumerate() {
        assert_eq!((index / 20) % 3, rank as u64, "manager {} snapshotted at {index}: {indexes:?}", rank + 1);
    }
    c.shutdown().await;
}
