//! Seeded fault runs checked for linearizability.
//!
//! Each run starts a cluster on the in-process network, lets concurrent
//! clients write (unique node ids) and read (linearizable snapshots) through
//! random managers while a nemesis, chosen by the seed, crashes the leader,
//! partitions a minority or the leader's side, loses/duplicates/reorders
//! messages, restarts the whole cluster, or changes membership during a
//! partition. The recorded history is checked by a Wing-Gong-Lowe search (as
//! in Porcupine / Knossos) against a grow-only-set model: no acknowledged
//! write is lost, no read is stale, writes refused for sure never appear;
//! and no term ever has two leaders. Every run must acknowledge a minimum of
//! writes and reads, and its membership changes must return the expected
//! voters or one of the errors a partition explains. The fixed seeds
//! (`SWARM_RAFT_SEED`, `SWARM_RAFT_RUNS`) run first, then one fresh seed,
//! printed (`SWARM_TEST_SEED=0x...` replays it).

mod common;

use common::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarm_core::harness::linearizability::{Op, OpKind, linearizable};
use swarm_core::store::{Store, StoreError};
use swarm_raft::{Faults, RaftStore, Role, SeededRng};

// The checker lives in swarm_core::harness::linearizability (shared with
// swarm-cli's multi-process tests), with its own tests of known histories.

// ---------------------------------------------------------------------------
// The runs.

#[derive(Default)]
struct History {
    ops: Vec<Op>,
    /// Writes refused for sure (must never appear).
    refused: Vec<u32>,
    ok_writes: usize,
    ok_reads: usize,
}

type Stores = Arc<Mutex<BTreeMap<u64, RaftStore>>>;

fn pick(stores: &Stores, r: u64) -> Option<RaftStore> {
    let s = stores.lock().unwrap();
    let v: Vec<&RaftStore> = s.values().collect();
    (!v.is_empty()).then(|| v[(r % v.len() as u64) as usize].clone())
}

fn key(bit: u32) -> String {
    format!("k{bit}")
}

fn bits_of(state: &swarm_core::state::State, max: u32) -> Result<u128, String> {
    let mut bits = 0u128;
    for n in state.nodes() {
        let id = n.id.to_string();
        let Some(b) = id.strip_prefix('k').and_then(|b| b.parse::<u32>().ok()) else { continue };
        if b >= max {
            return Err(format!("read an element never written: {id}"));
        }
        bits |= 1 << b;
    }
    Ok(bits)
}

const MAX_WRITES: u32 = 120;

async fn client(
    id: u64,
    seed: u64,
    stores: Stores,
    t0: Instant,
    until: Instant,
    next_bit: Arc<Mutex<u32>>,
    hist: Arc<Mutex<History>>,
) {
    let mut rng = SeededRng::new(seed ^ (id << 32));
    let now = |t0: Instant| t0.elapsed().as_micros() as u64;
    // Past `until`, a client goes on (up to `HARD_STOP` more) while the run
    // has fewer than `MIN_OPS_PER_RUN` acknowledged writes or reads, so a
    // run slowed down by a loaded machine still gets a meaningful history.
    let enough = |h: &History| h.ok_writes >= MIN_OPS_PER_RUN && h.ok_reads >= MIN_OPS_PER_RUN;
    while Instant::now() < until || (Instant::now() < until + HARD_STOP && !enough(&hist.lock().unwrap())) {
        let Some(store) = pick(&stores, rng.next_u64()) else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        if rng.below(2) == 0 {
            let bit = {
                let mut b = next_bit.lock().unwrap();
                if *b >= MAX_WRITES {
                    return;
                }
                *b += 1;
                *b - 1
            };
            let call = now(t0);
            let res = store.commit(node_tx(&key(bit))).await;
            let ret = now(t0);
            let mut h = hist.lock().unwrap();
            match res {
                Ok(_) => {
                    h.ok_writes += 1;
                    h.ops.push(Op { call, ret: Some(ret), kind: OpKind::Add(bit) });
                }
                Err(StoreError::Indeterminate(_)) => h.ops.push(Op { call, ret: None, kind: OpKind::Add(bit) }),
                Err(StoreError::NoQuorum(_) | StoreError::Unavailable(_) | StoreError::Rejected(_)) => {
                    h.refused.push(bit)
                }
                Err(e) => panic!("unexpected write error: {e}"),
            }
        } else {
            let call = now(t0);
            let res = store.snapshot().await;
            let ret = now(t0);
            if let Ok(state) = res {
                let bits = bits_of(&state, MAX_WRITES).expect("phantom element");
                let mut h = hist.lock().unwrap();
                h.ok_reads += 1;
                h.ops.push(Op { call, ret: Some(ret), kind: OpKind::Read(bits) });
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(4))).await;
    }
}

fn sync_stores(c: &Cluster, shared: &Stores) {
    *shared.lock().unwrap() = c.stores.clone();
}

async fn leader_of(c: &Cluster) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Some(s) = c.stores.values().find(|s| s.status().role == Role::Leader) {
            return Some(s.id());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// What a membership change during the run returned, checked as it
/// returns: `Ok` with the expected voters, or one of the two errors a
/// change may meet during a partition:
/// - `NoQuorum`: no leader within `leader_wait` (the isolated manager was
///   the leader and the others are still electing); nothing was proposed.
/// - `Indeterminate`: proposed but not applied within the commit timeout
///   (a leader change lost it, or raft-rs refused it because the previous
///   change was not applied yet); it may still apply.
#[derive(Debug, Default)]
struct Membership {
    /// Outcomes in order: (change, "ok" or the expected error's kind).
    outcomes: Vec<(&'static str, &'static str)>,
}

fn check_change(
    seed: u64,
    what: &'static str,
    res: Result<Vec<u64>, StoreError>,
    new_id: u64,
    voter: bool,
) -> &'static str {
    match res {
        Ok(voters) => {
            assert_eq!(
                voters.contains(&new_id),
                voter,
                "seed {seed}: {what} returned voters {voters:?} (manager {new_id} should {}be one)",
                if voter { "" } else { "not " }
            );
            "ok"
        }
        Err(StoreError::NoQuorum(_)) => "no quorum",
        Err(StoreError::Indeterminate(_)) => "indeterminate",
        Err(e) => panic!("seed {seed}: {what} failed unexpectedly: {e}"),
    }
}

/// One seeded run; returns (history, scenario name, leaders per term,
/// membership change outcomes).
async fn run(seed: u64) -> (History, &'static str, usize, Membership) {
    let mut rng = SeededRng::new(seed);
    let mut membership = Membership::default();
    let scenario = rng.below(6);
    let n = if rng.below(3) == 0 { 5 } else { 3 };
    let mut c = Cluster::start_with(n, seed, |mut cfg| {
        cfg.commit_timeout = Some(Duration::from_millis(600));
        cfg.with_snapshot_interval(16, 4)
    })
    .await;
    let shared: Stores = Arc::new(Mutex::new(BTreeMap::new()));
    sync_stores(&c, &shared);
    let hist = Arc::new(Mutex::new(History::default()));
    let next_bit = Arc::new(Mutex::new(0u32));
    let terms: Arc<Mutex<HashMap<u64, HashSet<u64>>>> = Arc::default();
    let stop_monitor = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let (shared, terms, stop) = (shared.clone(), terms.clone(), stop_monitor.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let stores: Vec<RaftStore> = shared.lock().unwrap().values().cloned().collect();
                for s in stores {
                    let st = s.status();
                    if st.role == Role::Leader {
                        terms.lock().unwrap().entry(st.term).or_default().insert(st.id);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let t0 = Instant::now();
    let until = t0 + Duration::from_millis(450);
    let clients: Vec<_> = (0..3)
        .map(|i| tokio::spawn(client(i, seed, shared.clone(), t0, until, next_bit.clone(), hist.clone())))
        .collect();

    tokio::time::sleep(Duration::from_millis(80 + rng.below(60))).await;
    let name = match scenario {
        0 => {
            if let Some(l) = leader_of(&c).await {
                c.stop(l).await;
                sync_stores(&c, &shared);
                tokio::time::sleep(Duration::from_millis(150)).await;
                c.restart(l).await;
                sync_stores(&c, &shared);
            }
            "leader crash and restart"
        }
        1 => {
            let victim = 1 + rng.below(n);
            c.net.isolate(victim, &c.ids);
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.net.heal();
            "minority partition"
        }
        2 => {
            // The leader ends up on the minority side.
            if let Some(l) = leader_of(&c).await {
                let minority: Vec<u64> = std::iter::once(l)
                    .chain(c.ids.iter().copied().filter(|&i| i != l).take(((n - 1) / 2 - 1) as usize))
                    .collect();
                let majority: Vec<u64> = c.ids.iter().copied().filter(|i| !minority.contains(i)).collect();
                c.net.partition(&minority, &majority);
                tokio::time::sleep(Duration::from_millis(200)).await;
                c.net.heal();
            }
            "majority partition away from the leader"
        }
        3 => {
            c.net.set_faults(Faults { drop: 0.1, duplicate: 0.1, max_delay: Duration::from_millis(4) });
            tokio::time::sleep(Duration::from_millis(250)).await;
            c.net.set_faults(Faults::default());
            "message loss, duplication and reordering"
        }
        4 => {
            for id in c.ids.clone() {
                c.stop(id).await;
            }
            sync_stores(&c, &shared);
            for id in c.ids.clone() {
                c.restart(id).await;
            }
            sync_stores(&c, &shared);
            "whole-cluster restart"
        }
        _ => {
            // Membership change during a partition: cut one manager off, add
            // and promote a new one through the majority, then heal.
            let victim = 1 + rng.below(n);
            c.net.isolate(victim, &c.ids);
            let new_id = n + 1;
            c.open(new_id, vec![]).await;
            let asker = c.stores.values().find(|s| s.id() != victim && s.id() != new_id).cloned();
            let a = asker.expect("a manager on the majority side");
            let res = a.add_learner(new_id).await;
            membership.outcomes.push(("add learner", check_change(seed, "add_learner", res, new_id, false)));
            let res = a.add_voter(new_id).await;
            membership.outcomes.push(("add voter", check_change(seed, "add_voter", res, new_id, true)));
            sync_stores(&c, &shared);
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.net.heal();
            "membership change during a partition"
        }
    };
    for cl in clients {
        cl.await.expect("client task");
    }
    // Final linearizable reads on every manager, after healing.
    c.net.heal();
    c.net.set_faults(Faults::default());
    for s in c.stores.values() {
        let call = t0.elapsed().as_micros() as u64;
        let deadline = Instant::now() + Duration::from_secs(5);
        let state = loop {
            match s.snapshot().await {
                Ok(st) => break st,
                Err(e) => {
                    assert!(Instant::now() < deadline, "seed {seed}: manager {} unreadable after healing: {e}", s.id());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let ret = t0.elapsed().as_micros() as u64;
        let bits = bits_of(&state, MAX_WRITES).expect("phantom element");
        hist.lock().unwrap().ops.push(Op { call, ret: Some(ret), kind: OpKind::Read(bits) });
    }
    stop_monitor.store(true, std::sync::atomic::Ordering::Relaxed);
    monitor.await.expect("monitor");
    let terms = std::mem::take(&mut *terms.lock().unwrap());
    for (term, leaders) in terms.iter() {
        assert!(leaders.len() <= 1, "seed {seed}: term {term} had leaders {leaders:?}");
    }
    let nterms = terms.len();
    c.shutdown().await;
    let h = std::mem::take(&mut *hist.lock().unwrap());
    (h, name, nterms, membership)
}

/// Least acknowledged writes and reads every run must have: the run
/// exercised the system, not only its failures.
const MIN_OPS_PER_RUN: usize = 8;

/// How long clients may go on past the planned end to reach the minimum.
const HARD_STOP: Duration = Duration::from_secs(2);

/// Runs one seed and checks its history; returns (writes, reads, unknown).
async fn check_run(seed: u64, replay: &str) -> (usize, usize, usize) {
    let (h, name, _terms, membership) = run(seed).await;
    for bit in &h.refused {
        for op in &h.ops {
            if let OpKind::Read(bits) = op.kind {
                assert!(bits & (1 << bit) == 0, "seed {seed} ({name}): refused write k{bit} was applied ({replay})");
            }
        }
    }
    assert!(linearizable(&h.ops), "seed {seed} ({name}): history is not linearizable ({replay})\n{:#?}", h.ops);
    let unknown = h.ops.iter().filter(|o| o.ret.is_none()).count();
    assert!(
        h.ok_writes >= MIN_OPS_PER_RUN && h.ok_reads >= MIN_OPS_PER_RUN,
        "seed {seed} ({name}): only {} acknowledged writes and {} reads ({unknown} unknown, {} refused); \
         the run barely exercised the cluster ({replay})",
        h.ok_writes,
        h.ok_reads,
        h.refused.len()
    );
    if !membership.outcomes.is_empty() {
        eprintln!("seed {seed} ({name}): membership changes {:?}", membership.outcomes);
    }
    (h.ok_writes, h.ok_reads, unknown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_fault_runs_are_linearizable() {
    let runs: u64 = std::env::var("SWARM_RAFT_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let first: u64 = std::env::var("SWARM_RAFT_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let (mut writes, mut reads, mut unknown) = (0, 0, 0);
    let mut per_run = Vec::new();
    for seed in first..first + runs {
        let replay = format!("rerun with SWARM_RAFT_SEED={seed} SWARM_RAFT_RUNS=1");
        let (w, r, u) = check_run(seed, &replay).await;
        per_run.push((w, r));
        (writes, reads, unknown) = (writes + w, reads + r, unknown + u);
    }
    // One fresh seed each time, printed (replay: SWARM_TEST_SEED=...).
    let fresh = swarm_core::harness::test_seed("seeded_fault_runs_are_linearizable");
    let replay = format!("replay with SWARM_TEST_SEED={fresh:#x} SWARM_RAFT_RUNS=0");
    let (w, r, u) = check_run(fresh, &replay).await;
    per_run.push((w, r));
    (writes, reads, unknown) = (writes + w, reads + r, unknown + u);
    let least_writes = per_run.iter().map(|p| p.0).min().unwrap_or(0);
    let least_reads = per_run.iter().map(|p| p.1).min().unwrap_or(0);
    eprintln!(
        "{} runs: {writes} acknowledged writes, {reads} reads, {unknown} unknown outcomes; \
         per run at least {least_writes} writes and {least_reads} reads",
        per_run.len()
    );
}
