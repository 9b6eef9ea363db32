//! Property tests of the built-in schedulers, each run twice: with a fixed
//! seed (the same cases every run), then with a fresh seed from
//! `swarm_core::harness::test_seed` (printed with the test's name;
//! `SWARM_TEST_SEED=0x... cargo test -p swarm-sched --test properties`
//! replays it). A failure names the seed and the shrunk input.
//! - no placement violates a constraint, a reservation, a host port or max
//!   replicas (every decision is replayed through swarm-core's
//!   `check_node` in order);
//! - with identical nodes and room for every task, Spread's skew per
//!   service is at most 1;
//! - on the same input (identical nodes), BinPack never uses more nodes
//!   than Spread;
//! - the shared candidate heaps (small groups) and the rank index decide
//!   exactly as the per-group path does;
//! - on clusters of mixed machine sizes, partly used, each task the rank
//!   index places goes to a node as good (same score, ties allowed) as
//!   the best of a naive scan of every feasible node;
//! - the lower bound on nodes used (`swarm_sched::bound`) never exceeds
//!   the nodes any scheduler used.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use swarm_core::model::{Availability, Node, NodeState, Protocol, Resources};
use swarm_core::scheduler::{ClusterView, Decision, NodeInfo, Scheduler, TaskRequest, check_node};
use swarm_sched::bound::lower_bound;
use swarm_sched::{BestFit, LeastAllocated, MostAllocated, Pipeline, Scorer, Spread};

const CPU: u64 = 1_000_000_000;
const GIB: u64 = 1 << 30;

/// The seed every run starts with.
const FIXED_SEED: u64 = 0x5eed;

fn config(seed: u64) -> Config {
    Config { cases: 96, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..Config::default() }
}

/// Runs `property` on `strategy`'s cases from the fixed seed, then from a
/// fresh one (`test_seed(name)`); panics with the seed and the shrunk
/// failing input.
fn check<S>(name: &str, strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    for seed in [FIXED_SEED, swarm_core::harness::test_seed(name)] {
        let mut runner = TestRunner::new(config(seed));
        if let Err(e) = runner.run(&strategy, &property) {
            panic!("{name}, seed {seed:#x} (replay with SWARM_TEST_SEED={seed:#x}): {e}");
        }
    }
}

#[derive(Clone, Debug)]
struct NodeGen {
    cpus: u64,
    mem_gib: u64,
    zone: Option<u8>,
    ssd: bool,
    down: bool,
    drained: bool,
    used_cpus: u64,
    port80: bool,
    /// Recent failures of service s0.
    failures: u32,
}

const IDENTICAL: NodeGen = NodeGen {
    cpus: 8,
    mem_gib: 16,
    zone: None,
    ssd: false,
    down: false,
    drained: false,
    used_cpus: 0,
    port80: false,
    failures: 0,
};

fn node_gen() -> impl Strategy<Value = NodeGen> {
    (1u64..=8, 1u64..=16, proptest::option::of(0u8..3), any::<bool>(), 0u8..10, 0u8..10, 0u64..=2, 0u8..4, 0u32..8)
        .prop_map(|(cpus, mem, zone, ssd, down, drained, used, port, failures)| NodeGen {
            failures: failures.saturating_sub(4),
            cpus,
            mem_gib: mem,
            zone,
            ssd,
            down: down == 0,
            drained: drained == 0,
            used_cpus: used.min(cpus),
            port80: port == 0,
        })
}

fn build_view(gens: &[NodeGen]) -> ClusterView {
    let nodes = gens
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let mut n = Node::ready(format!("n{i:03}"), format!("h{i}"), Resources::new(g.cpus * CPU, g.mem_gib * GIB));
            if let Some(z) = g.zone {
                n.spec.labels.insert("zone".into(), format!("z{z}"));
            }
            if g.ssd {
                n.spec.labels.insert("disk".into(), "ssd".into());
            }
            if g.down {
                n.status.state = NodeState::Down;
            }
            if g.drained {
                n.spec.availability = Availability::Drain;
            }
            let mut info = NodeInfo::new(Arc::new(n));
            if g.failures > 0 {
                info.recent_failures.insert("s0".into(), g.failures);
            }
            if g.used_cpus > 0 || g.port80 {
                info.reserve(&TaskRequest {
                    service_id: "existing".into(),
                    reservations: Resources::new(g.used_cpus * CPU, 0),
                    host_ports: if g.port80 { vec![(Protocol::Tcp, 80)] } else { vec![] },
                    ..Default::default()
                });
            }
            info
        })
        .collect();
    ClusterView { nodes }
}

#[derive(Clone, Debug)]
struct ServiceGen {
    count: usize,
    quarter_cpus: u64,
    mem_gib: u64,
    constraint: u8,
    max_replicas: u64,
    port: bool,
    spread_zone: bool,
}

fn service_gen(plain: bool) -> impl Strategy<Value = ServiceGen> {
    (1usize..12, 0u64..=8, 0u64..=3, 0u8..6, 0u64..=3, 0u8..5, any::<bool>()).prop_map(
        move |(count, q, mem, constraint, max_replicas, port, spread_zone)| ServiceGen {
            count,
            quarter_cpus: q,
            mem_gib: mem,
            constraint: if plain { 0 } else { constraint },
            max_replicas: if plain { 0 } else { max_replicas },
            port: !plain && port == 0,
            spread_zone: !plain && spread_zone,
        },
    )
}

fn build_tasks(services: &[ServiceGen]) -> Vec<TaskRequest> {
    let mut out = Vec::new();
    for (s, g) in services.iter().enumerate() {
        let constraints = match g.constraint {
            1 => vec!["node.labels.zone==z1"],
            2 => vec!["node.labels.disk==ssd"],
            3 => vec!["node.labels.zone!=z0", "node.role==worker"],
            _ => vec![],
        };
        for i in 0..g.count {
            out.push(TaskRequest {
                task_id: format!("s{s}.{i}").into(),
                service_id: format!("s{s}").into(),
                spec_version: 1,
                constraints: constraints.iter().map(|c| c.parse().unwrap()).collect(),
                preferences: if g.spread_zone { vec!["node.labels.zone".into()] } else { vec![] },
                max_replicas: g.max_replicas,
                reservations: Resources::new(g.quarter_cpus * CPU / 4, g.mem_gib * GIB),
                host_ports: if g.port { vec![(Protocol::Tcp, 80)] } else { vec![] },
                ..Default::default()
            });
        }
    }
    out
}

/// Replays decisions in order; every assignment must pass check_node on
/// the node as it was at that moment.
fn assert_valid(view: &ClusterView, tasks: &[TaskRequest], decisions: &[Decision], who: &str) {
    assert_eq!(decisions.len(), tasks.len());
    let mut nodes = view.nodes.clone();
    let pos: HashMap<String, usize> = nodes.iter().enumerate().map(|(i, n)| (n.node.id.to_string(), i)).collect();
    for (t, d) in tasks.iter().zip(decisions) {
        if let Decision::Assign(id) = d {
            let i = pos[id.as_str()];
            assert_eq!(check_node(&nodes[i], t), Ok(()), "{who}: {} on {id}", t.task_id);
            nodes[i].reserve(t);
        }
    }
}

fn per_node(decisions: &[Decision], tasks: &[TaskRequest]) -> HashMap<(String, String), usize> {
    let mut m = HashMap::new();
    for (t, d) in tasks.iter().zip(decisions) {
        if let Decision::Assign(n) = d {
            *m.entry((t.service_id.to_string(), n.to_string())).or_insert(0) += 1;
        }
    }
    m
}

fn nodes_used(decisions: &[Decision]) -> usize {
    let mut used: Vec<&str> =
        decisions.iter().filter_map(|d| if let Decision::Assign(n) = d { Some(n.as_str()) } else { None }).collect();
    used.sort_unstable();
    used.dedup();
    used.len()
}

/// A built-in scorer behind a wrapper that is shareable but has no rank
/// keys: forces the shared heaps (small groups) instead of the rank index.
struct SharedOnly(Box<dyn Scorer>);
impl Scorer for SharedOnly {
    fn name(&self) -> &str {
        "shared-only"
    }
    fn score(&self, node: &NodeInfo, req: &TaskRequest) -> f64 {
        self.0.score(node, req)
    }
    fn shareable(&self) -> bool {
        true
    }
    fn never_rises(&self) -> bool {
        self.0.never_rises()
    }
}

/// A built-in scorer behind a wrapper that does not declare itself
/// shareable: forces the per-group path.
struct Unshared(Box<dyn Scorer>);
impl Scorer for Unshared {
    fn name(&self) -> &str {
        "unshared"
    }
    fn score(&self, node: &NodeInfo, req: &TaskRequest) -> f64 {
        self.0.score(node, req)
    }
}

fn builtin(k: usize) -> Box<dyn Scorer> {
    match k {
        0 => Box::new(Spread { max_failures: 1 }),
        1 => Box::new(BestFit),
        2 => Box::new(MostAllocated),
        _ => Box::new(LeastAllocated),
    }
}

#[test]
fn placements_respect_every_rule() {
    let strategy = (prop::collection::vec(node_gen(), 0..12), prop::collection::vec(service_gen(false), 1..6));
    check("placements_respect_every_rule", strategy, |(nodes, services)| {
        let view = build_view(&nodes);
        let tasks = build_tasks(&services);
        for name in Pipeline::NAMES {
            let d = Pipeline::by_name(name).unwrap().schedule(&view, &tasks);
            assert_valid(&view, &tasks, &d, name);
            // An unschedulable task is explained over every node.
            for x in &d {
                if let Decision::Unschedulable(why) = x {
                    prop_assert_eq!(why.nodes, view.nodes.len());
                    if !view.nodes.is_empty() {
                        prop_assert_eq!(why.failures.values().sum::<usize>(), view.nodes.len(), "{}", why);
                    }
                }
            }
        }
        Ok(())
    });
}

#[test]
fn spread_skew_is_at_most_one_on_identical_nodes() {
    let strategy = (1usize..10, prop::collection::vec(service_gen(true), 1..6));
    check("spread_skew_is_at_most_one_on_identical_nodes", strategy, |(n, services)| {
        let view = build_view(&vec![IDENTICAL; n]);
        // Room for every task on every node: 8 CPUs, 16 GiB per node.
        let tasks: Vec<TaskRequest> = build_tasks(&services)
            .into_iter()
            .map(|mut t| {
                t.reservations = Resources::new(t.reservations.nano_cpus / 64, t.reservations.memory_bytes / 64);
                t
            })
            .collect();
        let d = Pipeline::spread().schedule(&view, &tasks);
        assert_valid(&view, &tasks, &d, "spread");
        let counts = per_node(&d, &tasks);
        for (s, _) in services.iter().enumerate() {
            let svc = format!("s{s}");
            let c: Vec<usize> = view
                .nodes
                .iter()
                .map(|x| counts.get(&(svc.clone(), x.node.id.to_string())).copied().unwrap_or(0))
                .collect();
            let (lo, hi) = (c.iter().min().unwrap(), c.iter().max().unwrap());
            prop_assert!(hi - lo <= 1, "service {} counts {:?}", svc, c);
        }
        Ok(())
    });
}

#[test]
fn binpack_never_uses_more_nodes_than_spread() {
    let strategy = (1usize..12, prop::collection::vec(service_gen(false), 1..6));
    check("binpack_never_uses_more_nodes_than_spread", strategy, |(n, services)| {
        let view = build_view(&vec![NodeGen { ssd: true, ..IDENTICAL }; n]);
        let tasks = build_tasks(&services);
        let spread = Pipeline::spread().schedule(&view, &tasks);
        for name in ["binpack", "most-allocated"] {
            let packed = Pipeline::by_name(name).unwrap().schedule(&view, &tasks);
            prop_assert!(
                nodes_used(&packed) <= nodes_used(&spread),
                "{}: {} > spread {}",
                name,
                nodes_used(&packed),
                nodes_used(&spread)
            );
        }
        Ok(())
    });
}

#[test]
fn shared_heaps_decide_like_the_per_group_path() {
    let strategy =
        (prop::collection::vec(node_gen(), 0..12), prop::collection::vec(service_gen(false), 1..8), 1usize..4);
    check("shared_heaps_decide_like_the_per_group_path", strategy, |(nodes, services, rounds)| {
        let view = build_view(&nodes);
        // Several services of the same shape, some repeated: exercises
        // heaps shared across groups and nodes changed by other groups.
        let mut tasks = build_tasks(&services);
        for r in 1..rounds {
            tasks.extend(build_tasks(&services).into_iter().map(|mut t| {
                t.service_id = format!("{}-r{r}", t.service_id).into();
                t
            }));
        }
        for k in 0..4 {
            prop_assert!(builtin(k).shareable());
            let shared = Pipeline::new("s", SharedOnly(builtin(k))).schedule(&view, &tasks);
            let indexed = Pipeline::new("i", builtin(k)).schedule(&view, &tasks);
            let unshared = Pipeline::new("u", Unshared(builtin(k))).schedule(&view, &tasks);
            prop_assert_eq!(&shared, &unshared, "shared heaps, {}", builtin(k).name());
            prop_assert_eq!(&indexed, &unshared, "rank index, {}", builtin(k).name());
        }
        Ok(())
    });
}

/// On random nodes (some down, drained, partly used, with a port taken)
/// and services (constraints, max replicas, host ports), the lower bound
/// over what each scheduler placed is at most the nodes it used.
#[test]
fn the_lower_bound_never_exceeds_the_nodes_used() {
    let strategy = (prop::collection::vec(node_gen(), 0..12), prop::collection::vec(service_gen(false), 1..6));
    check("the_lower_bound_never_exceeds_the_nodes_used", strategy, |(nodes, services)| {
        let view = build_view(&nodes);
        let tasks = build_tasks(&services);
        for name in Pipeline::NAMES {
            let d = Pipeline::by_name(name).unwrap().schedule(&view, &tasks);
            let b = lower_bound(&view, &tasks, &d);
            prop_assert!(b.nodes <= nodes_used(&d), "{}: bound {} ({}) > {} used", name, b.nodes, b.by, nodes_used(&d));
        }
        Ok(())
    });
}

/// The same on every built-in workload, at a size where shapes repeat
/// many times and nodes fill up.
#[test]
fn shared_heaps_decide_like_the_per_group_path_on_the_workloads() {
    use swarm_sched::workload::{Workload, WorkloadKind};
    for kind in WorkloadKind::ALL {
        let w = Workload::generate(kind, 200, 2500, 3);
        for k in 0..4 {
            let unshared = Pipeline::new("u", Unshared(builtin(k))).schedule(&w.view, &w.tasks);
            for (path, d) in [
                ("shared heaps", Pipeline::new("s", SharedOnly(builtin(k))).schedule(&w.view, &w.tasks)),
                ("rank index", Pipeline::new("i", builtin(k)).schedule(&w.view, &w.tasks)),
            ] {
                let first = d.iter().zip(&unshared).position(|(a, b)| a != b);
                assert_eq!(first, None, "{kind} {} ({path}): first difference at task {first:?}", builtin(k).name());
            }
        }
    }
}

#[derive(Clone, Debug)]
struct MixedNode {
    cpus: u64,
    gib_per_cpu: u64,
    zone: u8,
    ssd: bool,
    down: bool,
    port80: bool,
    /// Tasks already there: (service s0..s3 or "other", CPUs in quarters, GiB).
    existing: Vec<(u8, u64, u64)>,
}

fn mixed_node() -> impl Strategy<Value = MixedNode> {
    let existing = prop::collection::vec((0u8..5, 0u64..=8, 0u64..=4), 0..4);
    (
        prop::sample::select(vec![2u64, 4, 8, 16]),
        prop::sample::select(vec![2u64, 4, 8]),
        0u8..3,
        0u8..4,
        0u8..12,
        0u8..6,
        existing,
    )
        .prop_map(|(cpus, gib_per_cpu, zone, ssd, down, port, existing)| MixedNode {
            cpus,
            gib_per_cpu,
            zone,
            ssd: ssd == 0,
            down: down == 0,
            port80: port == 0,
            existing,
        })
}

fn mixed_view(gens: &[MixedNode]) -> ClusterView {
    let nodes = gens
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let mut n = Node::ready(
                format!("n{i:03}"),
                format!("h{i}"),
                Resources::new(g.cpus * CPU, g.cpus * g.gib_per_cpu * GIB),
            );
            n.spec.labels.insert("zone".into(), format!("z{}", g.zone));
            if g.ssd {
                n.spec.labels.insert("disk".into(), "ssd".into());
            }
            if g.down {
                n.status.state = NodeState::Down;
            }
            let mut info = NodeInfo::new(Arc::new(n));
            for &(s, q, gib) in &g.existing {
                let service = if s < 4 { format!("s{s}") } else { "other".into() };
                let r = Resources::new(q * CPU / 4, gib * GIB);
                if info.available.nano_cpus >= r.nano_cpus && info.available.memory_bytes >= r.memory_bytes {
                    info.reserve(&TaskRequest { service_id: service.into(), reservations: r, ..Default::default() });
                }
            }
            if g.port80 {
                info.reserve(&TaskRequest {
                    service_id: "ports".into(),
                    host_ports: vec![(Protocol::Tcp, 80)],
                    ..Default::default()
                });
            }
            info
        })
        .collect();
    ClusterView { nodes }
}

/// Replays `builtin(k)`'s pipeline (batch order) on `view`: each task's
/// node must score the best score over every node that passes
/// `check_node` at that moment (ties allowed: equal within 1e-9, the
/// floating-point rounding of the share scores), and a task is left
/// unplaced only when no node passes.
fn as_good_as_a_naive_scan(view: &ClusterView, tasks: &[TaskRequest], k: usize) -> Result<(), TestCaseError> {
    let scorer = builtin(k);
    let d = Pipeline::new("indexed", builtin(k)).schedule(view, tasks);
    let mut replay = view.nodes.clone();
    for (t, x) in tasks.iter().zip(&d) {
        let best = replay
            .iter()
            .filter(|n| check_node(n, t).is_ok())
            .map(|n| scorer.score(n, t))
            .fold(None, |b: Option<f64>, s| Some(b.map_or(s, |b| b.max(s))));
        match (x, best) {
            (Decision::Assign(id), Some(best)) => {
                let i = replay.iter().position(|n| &n.node.id == id).unwrap();
                prop_assert_eq!(check_node(&replay[i], t), Ok(()), "{}: {} on {}", scorer.name(), t.task_id, id);
                let got = scorer.score(&replay[i], t);
                prop_assert!(
                    got >= best - 1e-9 * best.abs().max(1.0),
                    "{}: {} on {} scores {}, the best node {}",
                    scorer.name(),
                    t.task_id,
                    id,
                    got,
                    best
                );
                replay[i].reserve(t);
            }
            (Decision::Unschedulable(_), None) => {}
            (x, best) => {
                prop_assert!(false, "{}: {} got {:?}, the best node scores {:?}", scorer.name(), t.task_id, x, best)
            }
        }
    }
    Ok(())
}

/// The rank index against a naive scan: on clusters of mixed machine
/// sizes (up to 12 capacities), partly used by the services being
/// scheduled and by others, every built-in scorer's pipeline places each
/// task on a node whose score is the best score over every node that
/// passes `check_node` at that moment (ties allowed), and leaves a task
/// unplaced only when no node passes. Services keep batch order
/// (`Pipeline::new`), so the replay sees the pipeline's state. Up to 40
/// nodes: one block per class of the index; the workload test below
/// covers many blocks.
#[test]
fn the_rank_index_picks_as_good_a_node_as_a_naive_scan() {
    let strategy = (prop::collection::vec(mixed_node(), 1..40), prop::collection::vec(service_gen(false), 1..6));
    check("the_rank_index_picks_as_good_a_node_as_a_naive_scan", strategy, |(nodes, services)| {
        let view = mixed_view(&nodes);
        let services: Vec<ServiceGen> = services.into_iter().map(|s| ServiceGen { spread_zone: false, ..s }).collect();
        let tasks = build_tasks(&services);
        for k in 0..4 {
            as_good_as_a_naive_scan(&view, &tasks, k)?;
        }
        Ok(())
    });
}

/// The same on the `production` workload at 600 nodes (about 10 blocks of
/// the rank index per class, blocks split and go stale) and on
/// `mixed-nodes` and `uniform`, 2,000 tasks each.
#[test]
fn the_rank_index_picks_as_good_a_node_as_a_naive_scan_on_the_workloads() {
    use swarm_sched::workload::{Workload, WorkloadKind};
    for kind in [WorkloadKind::Production, WorkloadKind::MixedNodes, WorkloadKind::Uniform] {
        let w = Workload::generate(kind, 600, 2000, 5);
        for k in 0..4 {
            if let Err(e) = as_good_as_a_naive_scan(&w.view, &w.tasks, k) {
                panic!("{kind}: {e}");
            }
        }
    }
}
