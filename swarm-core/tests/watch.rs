//! `Store::watch` on MemStore (and `Replica`): resuming from any revision
//! without a gap or a repeat, concurrent writers, compaction, future
//! revisions, lagging watchers and their recovery, and the list-then-watch
//! pattern controllers use.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use swarm_core::model::*;
use swarm_core::state::{Action, Change, State, Transaction};
use swarm_core::store::{MemStore, Replica, Store, StoreError, Watch};

fn node(id: &str) -> Node {
    Node::ready(id, format!("host-{id}"), Resources::new(1_000_000_000, 1 << 30))
}

/// Commits `n` node creations `{prefix}{i}` and returns the changes.
async fn commit_nodes(store: &MemStore, prefix: &str, n: usize) -> Vec<Arc<Change>> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(store.commit(Transaction::new().create(node(&format!("{prefix}{i}")))).await.unwrap());
    }
    out
}

/// Everything the watch has ready now, failing on an error.
fn drain(w: &mut Watch) -> Vec<Arc<Change>> {
    let mut out = Vec::new();
    while let Some(c) = w.try_next() {
        out.push(c.expect("no error while draining"));
    }
    out
}

async fn next_within(w: &mut Watch) -> Result<Arc<Change>, StoreError> {
    tokio::time::timeout(Duration::from_secs(5), w.next()).await.expect("a change within 5 s")
}

#[tokio::test]
async fn resuming_from_every_revision_yields_exactly_the_later_changes_then_live_ones() {
    const N: u64 = 30;
    let store = MemStore::new();
    let committed = commit_nodes(&store, "n", N as usize).await;
    assert_eq!(committed.iter().map(|c| c.revision).collect::<Vec<_>>(), (1..=N).collect::<Vec<_>>());

    let mut watches = Vec::new();
    for r in 0..=N {
        let mut w = store.watch(r).await.unwrap();
        assert_eq!(w.revision(), r);
        // The backlog through `next` and through `try_next` alike.
        let mut got = Vec::new();
        if r < N {
            got.push(next_within(&mut w).await.unwrap());
        }
        got.extend(drain(&mut w));
        let revs: Vec<u64> = got.iter().map(|c| c.revision).collect();
        assert_eq!(revs, (r + 1..=N).collect::<Vec<_>>(), "resumed from {r}");
        for c in &got {
            assert_eq!(**c, *committed[c.revision as usize - 1], "the change at {} is the committed one", c.revision);
        }
        assert_eq!(w.revision(), N);
        watches.push(w);
    }

    // Every watch continues with the live changes, in order, once each.
    let live = commit_nodes(&store, "live", 3).await;
    for (r, w) in watches.iter_mut().enumerate() {
        for want in &live {
            let got = next_within(w).await.unwrap();
            assert_eq!(got.revision, want.revision, "watch from {r}");
            assert_eq!(*got, **want);
        }
        assert!(w.try_next().is_none(), "watch from {r}: nothing repeated");
    }
}

#[tokio::test]
async fn a_watch_taken_before_any_write_sees_every_change() {
    let store = MemStore::new();
    let mut w = store.watch(0).await.unwrap();
    assert!(w.try_next().is_none());
    let c = store.commit(Transaction::new().create(node("a")).create(node("b"))).await.unwrap();
    let got = next_within(&mut w).await.unwrap();
    assert_eq!(got.revision, 1);
    assert_eq!(got.events.len(), 2);
    assert!(got.events.iter().all(|e| e.action == Action::Create));
    assert_eq!(*got, *c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_are_seen_as_strictly_consecutive_revisions() {
    const WRITERS: usize = 4;
    const EACH: usize = 100;
    let store = MemStore::new();
    store.commit(Transaction::new().create(node("seed"))).await.unwrap();

    // One watcher from the start, one started mid-way through the writes.
    let mut from_start = store.watch(0).await.unwrap();
    let reader = tokio::spawn({
        async move {
            let mut seen = Vec::new();
            while seen.len() < WRITERS * EACH + 1 {
                seen.push(next_within(&mut from_start).await.unwrap());
            }
            seen
        }
    });
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut revs = Vec::new();
                for i in 0..EACH {
                    let c = store.commit(Transaction::new().create(node(&format!("w{w}-{i}")))).await.unwrap();
                    revs.push(c.revision);
                    if i % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                revs
            })
        })
        .collect();
    tokio::task::yield_now().await;
    let mid_rev = store.state().revision();
    let mut mid = store.watch(mid_rev).await.unwrap();

    let mut writer_revs = Vec::new();
    for w in writers {
        let revs = w.await.unwrap();
        assert!(revs.windows(2).all(|p| p[0] < p[1]), "a writer's own commits are ordered");
        writer_revs.extend(revs);
    }
    writer_revs.sort_unstable();
    let total = (WRITERS * EACH + 1) as u64;
    assert_eq!(writer_revs, (2..=total).collect::<Vec<_>>(), "every commit got its own revision");

    let seen = reader.await.unwrap();
    let revs: Vec<u64> = seen.iter().map(|c| c.revision).collect();
    assert_eq!(revs, (1..=total).collect::<Vec<_>>(), "no gap, no repeat, in order");
    let mut ids: Vec<String> = seen.iter().map(|c| c.events[0].object.id().to_string()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), WRITERS * EACH + 1, "every object was seen once");

    let mut mid_seen = Vec::new();
    while mid_seen.len() < (total - mid_rev) as usize {
        mid_seen.push(next_within(&mut mid).await.unwrap().revision);
    }
    assert_eq!(mid_seen, (mid_rev + 1..=total).collect::<Vec<_>>());
    assert!(mid.try_next().is_none());
    assert_eq!(store.state().counts().0, WRITERS * EACH + 1);
}

#[tokio::test]
async fn resuming_below_the_retained_history_is_compacted() {
    let store = MemStore::with_limits(5, 16);
    commit_nodes(&store, "n", 10).await;
    // History holds revisions 6..=10: a watch from 5 onwards can resume.
    for r in 5..=10 {
        let mut w = store.watch(r).await.unwrap_or_else(|e| panic!("watch({r}): {e}"));
        let revs: Vec<u64> = drain(&mut w).iter().map(|c| c.revision).collect();
        assert_eq!(revs, (r + 1..=10).collect::<Vec<_>>());
    }
    for r in 0..5 {
        match store.watch(r).await {
            Err(StoreError::Compacted { requested, oldest }) => assert_eq!((requested, oldest), (r, 5)),
            Err(e) => panic!("watch({r}): expected Compacted, got {e}"),
            Ok(_) => panic!("watch({r}): expected Compacted, got a watch"),
        }
    }
    let Err(err) = store.watch(0).await else { panic!("compacted") };
    let msg = err.to_string();
    assert!(msg.contains("revision 0 is compacted") && msg.contains("take a new snapshot"), "{msg}");
}

#[tokio::test]
async fn the_history_is_bounded_in_events_not_changes() {
    // Room for 5 events; each change creates 2 nodes.
    let store = MemStore::with_limits(5, 16);
    for i in 0..4 {
        let (a, b) = (format!("a{i}"), format!("b{i}"));
        store.commit(Transaction::new().create(node(&a)).create(node(&b))).await.unwrap();
    }
    // Revisions 3 and 4 (4 events) are kept; 2 would make 6.
    for r in 2..=4 {
        let mut w = store.watch(r).await.unwrap_or_else(|e| panic!("watch({r}): {e}"));
        let revs: Vec<u64> = drain(&mut w).iter().map(|c| c.revision).collect();
        assert_eq!(revs, (r + 1..=4).collect::<Vec<_>>());
    }
    match store.watch(1).await {
        Err(StoreError::Compacted { requested, oldest }) => assert_eq!((requested, oldest), (1, 2)),
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(_) => panic!("expected Compacted, got a watch"),
    }
    // A change larger than the whole history is still kept, alone.
    let mut big = Transaction::new();
    for i in 0..7 {
        big = big.create(node(&format!("c{i}")));
    }
    store.commit(big).await.unwrap();
    let mut w = store.watch(4).await.expect("the last change is always kept");
    assert_eq!(drain(&mut w).iter().map(|c| (c.revision, c.events.len())).collect::<Vec<_>>(), vec![(5, 7)]);
    assert!(matches!(store.watch(3).await, Err(StoreError::Compacted { requested: 3, oldest: 4 })));
}

#[tokio::test]
async fn resuming_from_a_future_revision_is_refused() {
    let store = MemStore::new();
    commit_nodes(&store, "n", 3).await;
    for r in [4, 100, u64::MAX] {
        match store.watch(r).await {
            Err(StoreError::FutureRevision { requested, current }) => assert_eq!((requested, current), (r, 3)),
            Err(e) => panic!("watch({r}): expected FutureRevision, got {e}"),
            Ok(_) => panic!("watch({r}): expected FutureRevision, got a watch"),
        }
    }
    let mut w = store.watch(3).await.unwrap();
    assert!(w.try_next().is_none(), "watching from the current revision waits for the next change");
}

#[tokio::test]
async fn a_watcher_that_overflows_the_live_buffer_lags_and_recovers_with_a_new_snapshot() {
    // The live buffer holds at least 16 changes.
    let store = MemStore::with_limits(1000, 16);
    commit_nodes(&store, "a", 2).await;
    let mut slow = store.watch(2).await.unwrap();
    let mut fine = store.watch(2).await.unwrap();
    commit_nodes(&store, "b", 5).await;
    for _ in 0..5 {
        fine.try_next().unwrap().unwrap();
    }
    commit_nodes(&store, "c", 40).await;

    match next_within(&mut slow).await {
        Err(StoreError::Lagged { last_seen }) => assert_eq!(last_seen, 2),
        other => panic!("expected Lagged, got {other:?}"),
    }
    // It stays lagged: it never silently skips ahead.
    assert!(matches!(next_within(&mut slow).await, Err(StoreError::Lagged { last_seen: 2 })));
    assert!(matches!(slow.try_next(), Some(Err(StoreError::Lagged { last_seen: 2 }))));
    // The other watcher lagged too (it left 40 unread, above 16).
    assert!(matches!(fine.try_next(), Some(Err(StoreError::Lagged { last_seen: 7 }))));

    // Recovery: a new snapshot, then a watch from its revision.
    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.revision(), 47);
    assert_eq!(snap.counts().0, 47);
    let mut w = store.watch(snap.revision()).await.unwrap();
    let c = store.commit(Transaction::new().create(node("after"))).await.unwrap();
    assert_eq!(next_within(&mut w).await.unwrap().revision, c.revision);
    assert_eq!(c.revision, 48);

    // Or, since the history still holds them, resuming from the last
    // revision seen recovers every missed change without a snapshot.
    let mut resumed = store.watch(2).await.unwrap();
    let revs: Vec<u64> = drain(&mut resumed).iter().map(|c| c.revision).collect();
    assert_eq!(revs, (3..=48).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_watcher_within_the_buffer_does_not_lag() {
    let store = MemStore::with_limits(1000, 16);
    let mut w = store.watch(0).await.unwrap();
    commit_nodes(&store, "n", 16).await;
    let revs: Vec<u64> = drain(&mut w).iter().map(|c| c.revision).collect();
    assert_eq!(revs, (1..=16).collect::<Vec<_>>());
}

/// A controller's local cache: the nodes and their versions.
fn cache_from(state: &State) -> BTreeMap<String, (Version, Availability)> {
    state.nodes().map(|n| (n.id.to_string(), (n.meta.version, n.spec.availability))).collect()
}

fn apply_change(cache: &mut BTreeMap<String, (Version, Availability)>, change: &Change) {
    for e in &change.events {
        let Some(n) = e.object.as_node() else { continue };
        match e.action {
            Action::Create => {
                assert!(cache.insert(n.id.to_string(), (n.meta.version, n.spec.availability)).is_none(), "dup create");
            }
            Action::Update => {
                let old = cache.insert(n.id.to_string(), (n.meta.version, n.spec.availability));
                let old_version = e.old.as_ref().map(|o| o.meta().version);
                assert_eq!(old.map(|o| o.0), old_version, "the update is based on what the cache holds");
            }
            Action::Delete => {
                assert!(cache.remove(n.id.as_str()).is_some(), "delete of an unknown node");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_then_watch_keeps_a_controller_cache_exact() {
    let store = MemStore::new();
    commit_nodes(&store, "n", 20).await;

    // A writer keeps creating, updating and deleting nodes.
    let writer = tokio::spawn({
        let store = store.clone();
        async move {
            for i in 0..200usize {
                let id = format!("n{}", i % 30);
                let state = store.snapshot().await.unwrap();
                let tx = match state.node(&id.as_str().into()) {
                    Some(n) if i % 3 == 0 => Transaction::new().delete(ObjectKind::Node, id.clone(), n.meta.version),
                    Some(n) => {
                        let mut n = n.as_ref().clone();
                        n.spec.availability = if n.spec.availability == Availability::Active {
                            Availability::Drain
                        } else {
                            Availability::Active
                        };
                        Transaction::new().update(n)
                    }
                    None => Transaction::new().create(node(&id)),
                };
                store.commit(tx).await.unwrap();
                if i % 5 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
    });

    // List (snapshot at R), then watch from R while the writer runs.
    tokio::task::yield_now().await;
    let snap = store.snapshot().await.unwrap();
    let mut cache = cache_from(&snap);
    let mut w = store.watch(snap.revision()).await.unwrap();
    writer.await.unwrap();
    let last = store.state().revision();
    assert_eq!(last, 220);
    let mut applied = snap.revision();
    while applied < last {
        let c = next_within(&mut w).await.unwrap();
        assert_eq!(c.revision, applied + 1);
        apply_change(&mut cache, &c);
        applied = c.revision;
    }
    assert_eq!(cache, cache_from(&store.state()), "the cache equals the store after replaying the watch");
}

#[tokio::test]
async fn a_replica_restore_makes_old_revisions_compacted() {
    let mut replica = Replica::with_limits(State::default(), 100, 16);
    for i in 0..5 {
        replica.apply(&Transaction::new().create(node(&format!("n{i}")))).unwrap();
    }
    // Another replica's state, further ahead, installed as a snapshot.
    let mut ahead = Replica::default();
    for i in 0..9 {
        ahead.apply(&Transaction::new().create(node(&format!("m{i}")))).unwrap();
    }
    let image = ahead.state().to_image();
    replica.restore(State::from_image(image.clone()));
    assert_eq!(replica.state().to_image(), image);
    assert!(matches!(replica.watch(4), Err(StoreError::Compacted { requested: 4, .. })));
    assert!(matches!(replica.watch(10), Err(StoreError::FutureRevision { requested: 10, current: 9 })));
    let mut w = replica.watch(9).unwrap();
    let c = replica.apply(&Transaction::new().create(node("x"))).unwrap();
    assert_eq!(c.revision, 10);
    assert_eq!(w.try_next().unwrap().unwrap().revision, 10);
}

#[tokio::test]
async fn a_live_watcher_across_a_replica_restore_is_told_to_relist() {
    let mut replica = Replica::with_limits(State::default(), 100, 16);
    replica.apply(&Transaction::new().create(node("n0"))).unwrap();
    let mut w = replica.watch(1).unwrap();

    let mut ahead = Replica::default();
    for i in 0..5 {
        ahead.apply(&Transaction::new().create(node(&format!("m{i}")))).unwrap();
    }
    replica.restore(State::from_image(ahead.state().to_image()));
    replica.apply(&Transaction::new().create(node("after"))).unwrap();
    // The watcher missed revisions 2..=5: it must hear that it lagged (and
    // re-list), not that the store is gone, and never get revision 6 as if
    // it followed 1.
    match w.try_next() {
        Some(Err(StoreError::Lagged { last_seen: 1 })) => {}
        other => panic!("expected Lagged after a restore, got {other:?}"),
    }
}
