//! Messages no honest manager sends, delivered to live managers: each is
//! refused (logged and counted), the manager keeps running, and the
//! cluster still commits. Before the checks in front of raft-rs, the first
//! two tests killed the manager (raft-rs panics on its driver thread).

#![allow(clippy::field_reassign_with_default)] // protobuf messages are built field by field

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use protobuf::Message as _;
use raft::prelude::{Entry, Message, MessageType};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarm_core::store::{Store, StoreError};
use swarm_raft::{InProcNetwork, RaftStore, RaftStoreConfig, Transport};

fn frame(m: &Message) -> Vec<u8> {
    m.write_to_bytes().expect("encode")
}

/// Waits until `store` counted `n` refused messages.
async fn wait_rejected(store: &RaftStore, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.status().rejected_messages < n {
        assert!(Instant::now() < deadline, "refusal not counted: {:?}", store.status());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_proposal_does_not_stop_the_leader() {
    let c = Cluster::start(3, 41).await;
    let leader = c.leader(Duration::from_secs(5)).await;
    let from = *c.ids.iter().find(|&&i| i != leader).expect("a follower");
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgPropose);
    m.to = leader;
    m.from = from;
    c.store(leader).inbox().deliver(frame(&m));
    wait_rejected(c.store(leader), 1).await;
    assert!(!c.store(leader).status().stopped);
    commit_retry(c.store(leader), node_tx("after-empty-proposal"), Duration::from_secs(5))
        .await
        .expect("the leader still commits");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_conflicting_with_committed_entries_does_not_stop_a_follower() {
    let c = Cluster::start(3, 42).await;
    let leader = c.leader(Duration::from_secs(5)).await;
    for i in 0..3 {
        commit_retry(c.store(leader), node_tx(&format!("w{i}")), Duration::from_secs(5)).await.expect("write");
    }
    c.converge(Duration::from_secs(5)).await;
    let follower = *c.ids.iter().find(|&&i| i != leader).expect("a follower");
    // A follower learns the commit index from the leader's next message:
    // converged revisions do not mean it has heard of the last commit yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut st = c.store(follower).status();
    while st.commit < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        st = c.store(follower).status();
    }
    assert!(st.commit >= 4, "{st:?}");
    // From the leader, in its term, anchored at the commit index (whose
    // entry is of this term): it rewrites entry 1, committed long ago.
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.to = follower;
    m.from = leader;
    m.term = st.term;
    m.index = st.commit;
    m.log_term = st.term;
    m.commit = st.commit;
    let mut e = Entry::default();
    e.index = 1;
    e.term = st.term + 7;
    e.data = b"forged".to_vec().into();
    m.set_entries(vec![e].into());
    c.store(follower).inbox().deliver(frame(&m));
    wait_rejected(c.store(follower), 1).await;
    assert!(!c.store(follower).status().stopped);
    commit_retry(c.store(follower), node_tx("after-conflict"), Duration::from_secs(5))
        .await
        .expect("the follower still forwards and applies writes");
    c.converge(Duration::from_secs(5)).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_drops_frames_and_counts_them() {
    init_tracing();
    let tmp = tempfile::tempdir().expect("tempdir");
    let net = InProcNetwork::new(43);
    let mut cfg = RaftStoreConfig::new(1, tmp.path().join("m1"), vec![1]).with_tick(TICK);
    cfg.inbox_frames = 4;
    let store = RaftStore::open_async(cfg, net.transport(1)).await.expect("open");
    // Empty frames decode as a message to manager 0: each is refused, if it
    // gets in at all. 2,000 arrive faster than the driver takes them.
    let inbox = store.inbox();
    for _ in 0..2000 {
        inbox.deliver(Vec::new());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = store.status();
        if st.rejected_messages + st.inbox_dropped == 2000 {
            assert!(st.inbox_dropped > 0, "a 4-frame inbox dropped nothing: {st:?}");
            assert!(st.rejected_messages >= 4, "{st:?}");
            break;
        }
        assert!(Instant::now() < deadline, "frames unaccounted for: {st:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.commit(node_tx("after-flood")).await.expect("still commits");
    store.shutdown().await;
}

// ---------------------------------------------------------------------------
// Fuzzing live managers with mutated real traffic.

/// A transport that keeps the latest frames sent (real traffic to mutate).
struct Tap {
    inner: Arc<dyn Transport>,
    seen: Arc<Mutex<VecDeque<Vec<u8>>>>,
}

impl Transport for Tap {
    fn send(&self, to: u64, frame: Vec<u8>) {
        {
            let mut s = self.seen.lock().unwrap();
            if s.len() == 256 {
                s.pop_front();
            }
            s.push_back(frame.clone());
        }
        self.inner.send(to, frame);
    }
}

/// One change to a real message (or its bytes).
#[derive(Clone, Debug)]
enum Mutation {
    Type(i32),
    To(u64),
    From(u64),
    Term(u64),
    Index(u64),
    LogTerm(u64),
    Commit(u64),
    Reject(bool, u64),
    EntryIndex(usize, u64),
    EntryTerm(usize, u64),
    EntryData(usize, Vec<u8>),
    DropEntries,
    DuplicateEntries,
    SnapshotIndex(u64),
    Truncate(usize),
    FlipByte(usize, u8),
    Garbage(Vec<u8>),
}

fn arb_value() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..=40, Just(u64::MAX), Just(u64::MAX / 2), any::<u64>()]
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0i32..=18).prop_map(Mutation::Type),
        (0u64..=4).prop_map(Mutation::To),
        (0u64..=4).prop_map(Mutation::From),
        arb_value().prop_map(Mutation::Term),
        arb_value().prop_map(Mutation::Index),
        arb_value().prop_map(Mutation::LogTerm),
        arb_value().prop_map(Mutation::Commit),
        (any::<bool>(), arb_value()).prop_map(|(r, h)| Mutation::Reject(r, h)),
        (0usize..4, arb_value()).prop_map(|(i, v)| Mutation::EntryIndex(i, v)),
        (0usize..4, arb_value()).prop_map(|(i, v)| Mutation::EntryTerm(i, v)),
        (0usize..4, proptest::collection::vec(any::<u8>(), 0..16)).prop_map(|(i, d)| Mutation::EntryData(i, d)),
        Just(Mutation::DropEntries),
        Just(Mutation::DuplicateEntries),
        arb_value().prop_map(Mutation::SnapshotIndex),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipByte(i, b)),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Mutation::Garbage),
    ]
}

fn mutate(original: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let Ok(mut m) = Message::parse_from_bytes(original) else { return original.to_vec() };
    let mut bytes_muts = Vec::new();
    for mu in muts {
        match mu {
            Mutation::Type(t) => {
                m.set_msg_type(<MessageType as protobuf::ProtobufEnum>::from_i32(*t).unwrap_or(MessageType::MsgAppend))
            }
            Mutation::To(v) => m.to = *v,
            Mutation::From(v) => m.from = *v,
            Mutation::Term(v) => m.term = *v,
            Mutation::Index(v) => m.index = *v,
            Mutation::LogTerm(v) => m.log_term = *v,
            Mutation::Commit(v) => m.commit = *v,
            Mutation::Reject(r, h) => {
                m.reject = *r;
                m.reject_hint = *h;
            }
            Mutation::EntryIndex(i, v) => {
                let n = m.entries.len();
                if n > 0 {
                    m.mut_entries()[i % n].index = *v;
                }
            }
            Mutation::EntryTerm(i, v) => {
                let n = m.entries.len();
                if n > 0 {
                    m.mut_entries()[i % n].term = *v;
                }
            }
            Mutation::EntryData(i, d) => {
                let n = m.entries.len();
                if n > 0 {
                    m.mut_entries()[i % n].data = d.clone().into();
                }
            }
            Mutation::DropEntries => m.mut_entries().clear(),
            Mutation::DuplicateEntries => {
                let es: Vec<Entry> = m.get_entries().to_vec();
                m.mut_entries().extend(es);
            }
            Mutation::SnapshotIndex(v) => m.mut_snapshot().mut_metadata().index = *v,
            other => bytes_muts.push(other.clone()),
        }
    }
    let mut bytes = frame(&m);
    for mu in bytes_muts {
        match mu {
            Mutation::Truncate(n) if !bytes.is_empty() => bytes.truncate(n % bytes.len()),
            Mutation::FlipByte(i, b) if !bytes.is_empty() => {
                let n = bytes.len();
                bytes[i % n] ^= b;
            }
            Mutation::Garbage(g) => bytes = g,
            _ => {}
        }
    }
    bytes
}

/// Writes, retrying through elections the fuzzed messages may cause.
async fn commit_somewhere(stores: &BTreeMap<u64, RaftStore>, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempt = 0u64;
    loop {
        let store = stores.values().nth((attempt % stores.len() as u64) as usize).expect("a manager");
        match store.commit(node_tx(&format!("{key}-{attempt}"))).await {
            Ok(_) => return,
            Err(e @ (StoreError::NoQuorum(_) | StoreError::Indeterminate(_) | StoreError::Unavailable(_))) => {
                assert!(Instant::now() < deadline, "the cluster stopped committing: {e}");
                assert!(stores.values().all(|s| !s.status().stopped), "a manager stopped: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
        attempt += 1;
    }
}

/// Each case delivers a batch of mutated real frames to the managers of a
/// live cluster, then a write must commit and no manager may have stopped.
fn fuzz_live(name: &str, seed: u64, cases: u32) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        init_tracing();
        let tmp = tempfile::tempdir().expect("tempdir");
        let net = InProcNetwork::new(seed);
        let seen: Arc<Mutex<VecDeque<Vec<u8>>>> = Arc::default();
        let mut stores = BTreeMap::new();
        for id in 1..=3u64 {
            // Frequent snapshots and compaction: the log starts past index
            // 1, and its first kept index is below the snapshot's (the
            // corner where raft-rs cannot read the term before the log).
            let cfg = RaftStoreConfig::new(id, tmp.path().join(format!("m{id}")), vec![1, 2, 3])
                .with_tick(TICK)
                .with_snapshot_interval(8, 3);
            let tap = Arc::new(Tap { inner: net.transport(id), seen: seen.clone() });
            let s = RaftStore::open_async(cfg, tap).await.expect("open");
            net.register(id, s.inbox());
            stores.insert(id, s);
        }
        commit_somewhere(&stores, "warmup").await;
        let runner_cfg =
            Config { cases, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..Config::default() };
        let strategy = proptest::collection::vec(
            (any::<prop::sample::Index>(), 1u64..=3, proptest::collection::vec(arb_mutation(), 1..4)),
            1..16,
        );
        let handle = tokio::runtime::Handle::current();
        let case = std::sync::atomic::AtomicU32::new(0);
        let result = tokio::task::block_in_place(|| {
            TestRunner::new(runner_cfg).run(&strategy, |batch| {
                let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let frames: Vec<Vec<u8>> = seen.lock().unwrap().iter().cloned().collect();
                for (pick, to, muts) in batch {
                    let original = &frames[pick.index(frames.len())];
                    stores[&to].inbox().deliver(mutate(original, &muts));
                }
                handle.block_on(commit_somewhere(&stores, &format!("case{n}")));
                Ok(())
            })
        });
        if let Err(e) = result {
            panic!("{name} (seed {seed:#x}): {e}");
        }
        let rejected: u64 = stores.values().map(|s| s.status().rejected_messages).sum();
        eprintln!("{name}: {cases} cases, {rejected} messages refused");
        assert!(rejected > 0, "the mutations never produced a refused message");
        for s in stores.values() {
            assert!(!s.status().stopped);
            s.shutdown().await;
        }
        net.close();
    });
}

#[test]
fn mutated_traffic_never_stops_a_manager_fixed_seed() {
    fuzz_live("mutated_traffic_never_stops_a_manager_fixed_seed", 0x4f57_11e0, 150);
}

#[test]
fn mutated_traffic_never_stops_a_manager_fresh_seed() {
    let name = "mutated_traffic_never_stops_a_manager_fresh_seed";
    fuzz_live(name, swarm_core::harness::test_seed(name), 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_cannot_speak_in_another_managers_name() {
    let c = Cluster::start(3, 43).await;
    let leader = c.leader(Duration::from_secs(5)).await;
    let followers: Vec<u64> = c.ids.iter().copied().filter(|&i| i != leader).collect();
    let (a, b) = (followers[0], followers[1]);
    let term = c.store(leader).status().term;
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeatResponse);
    m.to = leader;
    m.from = b;
    m.term = term;
    let before = c.store(leader).status().rejected_messages;
    // On a connection authenticated as `a`, a message claiming to be `b`'s.
    c.store(leader).inbox().deliver_from(a, frame(&m));
    wait_rejected(c.store(leader), before + 1).await;
    // From `b` itself the same message is admitted.
    c.store(leader).inbox().deliver_from(b, frame(&m));
    commit_retry(c.store(leader), node_tx("after-impersonation"), Duration::from_secs(5))
        .await
        .expect("the leader still commits");
    assert_eq!(c.store(leader).status().rejected_messages, before + 1, "only the impersonation was refused");
    c.shutdown().await;
}
