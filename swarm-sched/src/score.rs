//! Scorers: the ranking half of the pipeline.
//!
//! A [`Scorer`] gives every feasible node a number; the pipeline picks the
//! highest, ties going to the node that comes first in the view (nodes are
//! ordered by id, so results are deterministic). The contract that makes
//! the pipeline fast: **a node's score may depend only on that node and the
//! request**. Then placing a task changes only the score of the node that
//! took it, and the pipeline keeps candidates in a heap instead of scanning
//! every node for every task.
//!
//! Every built-in scorer also gives each node a [`RankKey`]
//! ([`Scorer::rank_key`]): a class (one, or one per node capacity) and an
//! integer key ordering the nodes of that class as the score does for any
//! task. The pipeline keeps the nodes ordered by it and finds a task's
//! best node from the class's best keys, whatever the task's size, instead
//! of scoring every candidate per group.
//!
//! Built in:
//! - [`Spread`]: Swarm's rule. Fewest tasks of the service on the node,
//!   then fewest tasks in total; nodes where the service failed
//!   [`Spread::max_failures`] times within the failure window rank last.
//! - [`BestFit`]: bin packing by absolute best fit, the default
//!   `binpack`. Nodes already running a task first, the one with the least
//!   capacity left after placing the task (CPU plus memory at 4 GiB per
//!   CPU); empty nodes last, the largest first. On mixed machine sizes a
//!   score by the *share* used fills the smallest machines first; this
//!   one opens big machines and fills them (see docs/swarm-sched.md).
//! - [`MostAllocated`]: Kubernetes' MostAllocated (the mean share of CPU
//!   and memory requested after placing the task) among nodes in use,
//!   then empty nodes largest first, like [`BestFit`].
//! - [`LeastAllocated`]: Kubernetes' LeastAllocated, the mean share left
//!   free: spreads by load rather than by task count.
//!
//! ```
//! use swarm_sched::score::Scorer;
//! use swarm_core::scheduler::{NodeInfo, TaskRequest};
//! /// Prefers nodes with an SSD; all others tie (first node wins).
//! struct PreferSsd;
//! impl Scorer for PreferSsd {
//!     fn name(&self) -> &str { "prefer-ssd" }
//!     fn score(&self, node: &NodeInfo, _req: &TaskRequest) -> f64 {
//!         if node.node.spec.labels.get("disk").is_some_and(|d| d == "ssd") { 1.0 } else { 0.0 }
//!     }
//! }
//! ```

use swarm_core::model::Resources;
use swarm_core::scheduler::{NodeInfo, TaskRequest};

/// Ranks feasible nodes for a task: higher is better. See the
/// [module docs](self) for the contract.
pub trait Scorer: Send + Sync {
    /// A short name.
    fn name(&self) -> &str;

    /// The node's score for placing a task like `req` on it, higher is
    /// better. Depends only on `node` and `req`, never on `req.task_id`:
    /// the pipeline uses a score for every task of `req`'s group (same
    /// service, spec version and placement needs).
    ///
    /// Whether `node` includes the task: the pipeline calls `score` at two
    /// moments, and `node` is always the node as it stands at that moment
    /// in the `schedule` call (the view's tasks plus every task the call
    /// placed on it so far, earlier tasks of the same group included).
    /// - Ranking a candidate: `req` is *not* on `node`. A score "with the
    ///   task placed" (as [`BestFit`], [`MostAllocated`] and
    ///   [`LeastAllocated`] compute it) subtracts `req.reservations` from
    ///   `node.available` itself; [`Spread`] counts the tasks already
    ///   there. The node has passed every filter for `req`.
    /// - Right after placing `req` on `node`: `req` *is* on `node` (in
    ///   `available`, `reserved`, `total_tasks` and `tasks_by_service`),
    ///   and the score ranks the node for the group's next task, which is
    ///   not yet on it. The node may no longer fit that task: the dynamic
    ///   filters are checked again before it takes another.
    ///
    /// `req` may have an empty service id: "no service in particular", see
    /// [`Scorer::shareable`].
    fn score(&self, node: &NodeInfo, req: &TaskRequest) -> f64;

    /// True when, on a node that runs no task of the request's service and
    /// has no recent failure of it, the score depends only on the node and
    /// the request's placement needs (constraints, platforms, reservations,
    /// host ports, max replicas), not on which service or task asks. Then
    /// the pipeline keeps one scored heap per placement shape shared by
    /// every service of that shape, instead of scoring every candidate for
    /// every group: many small services stay cheap.
    /// Defaults to false (always correct, slower with many services). All
    /// the built-in scorers are shareable. The pipeline scores for "no
    /// service in particular" with an empty service id (never a real
    /// service's: the store rejects empty ids).
    fn shareable(&self) -> bool {
        false
    }

    /// True when placing a task on a node never raises the node's score
    /// for any request (Spread, LeastAllocated: a fuller node is never
    /// better). Shared heaps then refresh lazily instead of re-scoring
    /// every changed node for every shape. Defaults to false.
    fn never_rises(&self) -> bool {
        false
    }

    /// Opts into the pipeline's indexed fast path: the node's class and
    /// key in an order that answers "the best node for this task" without
    /// scoring every candidate. `None` (the default) keeps the per-group
    /// heaps. The contract, for a request `req` and nodes `a`, `b` of the
    /// same class that both pass every filter for `req` and run no task of
    /// `req`'s service (nor failed it recently):
    /// - `key(a) > key(b)` implies `score(a, req) >= score(b, req)`, and
    ///   equal keys give equal scores (up to floating-point rounding);
    /// - `key(a) <= rank_bound(class, req)`.
    ///
    /// Nodes of different classes are compared by [`Scorer::score`]. A
    /// node's key may change as tasks are placed on it, its class may not.
    /// Few classes keep it fast: the pipeline looks at each class's best
    /// node per task, and keeps the per-group path when a view has more
    /// than [`MAX_RANK_CLASSES`](crate::index::MAX_RANK_CLASSES) classes
    /// or some node has no key. Every built-in scorer has one (see the
    /// [module docs](self)).
    fn rank_key(&self, _node: &NodeInfo) -> Option<RankKey> {
        None
    }

    /// An upper bound on the key of a node of `class` that can take `req`
    /// (see [`Scorer::rank_key`]): where the search for a fitting node
    /// starts. Defaults to `i128::MAX` (no bound).
    fn rank_bound(&self, _class: (u64, u64), _req: &TaskRequest) -> i128 {
        i128::MAX
    }
}

/// A node's place in a scorer's order: see [`Scorer::rank_key`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankKey {
    /// Nodes compared by `key` (the built-ins: `(0, 0)` for one class, or
    /// the node's capacity in nano-CPUs and bytes).
    pub class: (u64, u64),
    /// Higher is better within the class.
    pub key: i128,
}

impl<S: Scorer + ?Sized> Scorer for Box<S> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn score(&self, node: &NodeInfo, req: &TaskRequest) -> f64 {
        (**self).score(node, req)
    }
    fn shareable(&self) -> bool {
        (**self).shareable()
    }
    fn never_rises(&self) -> bool {
        (**self).never_rises()
    }
    fn rank_key(&self, node: &NodeInfo) -> Option<RankKey> {
        (**self).rank_key(node)
    }
    fn rank_bound(&self, class: (u64, u64), req: &TaskRequest) -> i128 {
        (**self).rank_bound(class, req)
    }
}

/// Swarm's default: recent failures (past the threshold), then tasks of the
/// service, then tasks in total, fewer first.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    /// Recent failures of the service on a node (within
    /// [`FAILURE_WINDOW`](swarm_core::scheduler::FAILURE_WINDOW)) from
    /// which the node ranks after every node with fewer. Swarm uses 5;
    /// 1 avoids a node after any recent failure.
    pub max_failures: u32,
}

impl Default for Spread {
    fn default() -> Self {
        Spread { max_failures: 5 }
    }
}

const FIELD: f64 = (1u64 << 21) as f64;

impl Scorer for Spread {
    fn name(&self) -> &str {
        "spread"
    }
    fn shareable(&self) -> bool {
        true
    }
    fn never_rises(&self) -> bool {
        true
    }
    fn score(&self, node: &NodeInfo, req: &TaskRequest) -> f64 {
        let total = f64::from(node.total_tasks).min(FIELD - 1.0);
        if req.service_id.as_str().is_empty() {
            return -total; // no service in particular: no task of it, no failure
        }
        let failures = node.recent_failures.get(&req.service_id).copied().unwrap_or(0);
        let failures = if failures >= self.max_failures.max(1) { failures.min(1 << 10) } else { 0 };
        // Lexicographic (failures, service tasks, total tasks) packed into
        // one f64: 10 + 21 + 21 bits, exact below 2^53.
        let service = f64::from(node.service_tasks(&req.service_id)).min(FIELD - 1.0);
        -((f64::from(failures) * FIELD + service) * FIELD + total)
    }
    /// One class; fewest tasks in total first (the score on a node the
    /// service does not touch).
    fn rank_key(&self, node: &NodeInfo) -> Option<RankKey> {
        Some(RankKey { class: (0, 0), key: -i128::from(node.total_tasks.min(FIELD as u32 - 1)) })
    }
}

/// `1 - (used + request) / capacity` for one resource, clamped to [0, 1];
/// 0 when the node declares no capacity for it (nothing left to fill).
fn free_share(capacity: u64, available: u64, request: u64) -> f64 {
    if capacity == 0 {
        return 0.0;
    }
    let left = available.saturating_sub(request) as f64;
    (left / capacity as f64).clamp(0.0, 1.0)
}

fn shares(node: &NodeInfo, req: &TaskRequest) -> (f64, f64) {
    let cap: &Resources = &node.node.description.resources;
    let r = &req.reservations;
    (
        free_share(cap.nano_cpus, node.available.nano_cpus, r.nano_cpus),
        free_share(cap.memory_bytes, node.available.memory_bytes, r.memory_bytes),
    )
}

/// Bytes of memory that weigh as much as one CPU when the bin-packing
/// scores add CPU and memory up (4 GiB: the memory per CPU of common
/// machine shapes, and of the built-in workloads' nodes).
pub const MEMORY_PER_CPU: u64 = 4 << 30;

const NANO: u64 = 1_000_000_000;

/// `cpu` nano-CPUs and `memory` bytes in one integer: nano-CPUs times
/// [`MEMORY_PER_CPU`] plus bytes times 10^9 (exact; at most 2^97).
pub fn cpu_equivalents(cpu: u64, memory: u64) -> i128 {
    i128::from(cpu) * i128::from(MEMORY_PER_CPU) + i128::from(memory) * i128::from(NANO)
}

/// [`cpu_equivalents`] in CPUs (1 CPU, or 4 GiB of memory, is 1.0).
fn in_cpus(units: i128) -> f64 {
    units as f64 / (NANO as f64 * MEMORY_PER_CPU as f64)
}

/// Score offset of the "empty node" tier of the bin-packing scores: below
/// every node already in use, whatever its size (scores of nodes in use
/// are above -[`TIER_SPAN`]; empty nodes score at most -1e12 + 2.3e10: a
/// node of u64::MAX nano-CPUs and bytes).
const EMPTY_TIER: f64 = -1e12;

/// A node runs nothing (no task of the view or of this call).
fn empty(node: &NodeInfo) -> bool {
    node.total_tasks == 0
}

/// Width of a machine-size tier in the bin-packing scores of nodes in use
/// (see [`size_tier`]): a node's measure within its tier (leftover
/// CPU-equivalents, or a share from 0 to 100) stays below it.
const TIER_SPAN: f64 = (1u64 << 24) as f64;

/// The machine size of a node in whole CPU-equivalents of its capacity
/// (CPUs plus memory at [`MEMORY_PER_CPU`] per CPU, rounded down): the
/// first criterion of the bin-packing scores among nodes in use, larger
/// first. Capped at 2^28 (a machine of 134 million CPUs) so the score stays
/// exact to 2^-4 of a CPU.
pub fn size_tier(node: &NodeInfo) -> u64 {
    let c = &node.node.description.resources;
    let t = cpu_equivalents(c.nano_cpus, c.memory_bytes) / (i128::from(NANO) * i128::from(MEMORY_PER_CPU));
    u64::try_from(t).unwrap_or(u64::MAX).min(1 << 28)
}

/// The score of an empty node for the bin-packing scorers: the tier's
/// offset plus its free capacity in CPU-equivalents, so the largest empty
/// node opens first.
fn empty_score(node: &NodeInfo) -> f64 {
    EMPTY_TIER + in_cpus(cpu_equivalents(node.available.nano_cpus, node.available.memory_bytes))
}

/// The rank key of an empty node: below every node in use (whose keys are
/// above -2^98), larger free capacity first.
fn empty_key(node: &NodeInfo) -> i128 {
    i128::MIN / 2 + cpu_equivalents(node.available.nano_cpus, node.available.memory_bytes)
}

/// Bin packing by absolute best fit, for clusters of mixed machine sizes.
/// Two tiers:
/// - nodes already running a task: the largest machine first
///   ([`size_tier`]: whole CPU-equivalents of capacity), then by the
///   capacity left *after* placing the task, least first, in
///   CPU-equivalents (free CPUs plus free memory at [`MEMORY_PER_CPU`] per
///   CPU): `size_tier x 2^24 - leftover`;
/// - then empty nodes, largest free capacity first (scores near -1e12).
///
/// The tightest fit on the largest machines in use wins, and a new node is
/// opened only when none fits, the largest first: a first-fit-decreasing
/// packer's choice of bins, which tries every large bin before a small
/// one. A smaller machine opened for a constrained task (no large one of
/// its zone had room) then takes only what the large machines in use
/// cannot; ranked by leftover alone it looked like the tightest fit and
/// drew tasks away from half-full large machines, which ended up less
/// full while more small machines were opened. Shares (Nomad's BestFit
/// v3, Kubernetes' MostAllocated) instead rank an empty 8-CPU node above
/// an empty 32-CPU one and fill the smallest machines first (see
/// docs/swarm-sched.md).
#[derive(Clone, Copy, Debug, Default)]
pub struct BestFit;

impl Scorer for BestFit {
    fn name(&self) -> &str {
        "binpack"
    }
    fn shareable(&self) -> bool {
        true
    }
    fn score(&self, node: &NodeInfo, req: &TaskRequest) -> f64 {
        if empty(node) {
            return empty_score(node);
        }
        let (a, r) = (&node.available, &req.reservations);
        let left =
            cpu_equivalents(a.nano_cpus.saturating_sub(r.nano_cpus), a.memory_bytes.saturating_sub(r.memory_bytes));
        size_tier(node) as f64 * TIER_SPAN - in_cpus(left).min(TIER_SPAN - 1.0)
    }
    /// One class per machine size ([`size_tier`]); within it nodes in use
    /// by free capacity, least first (the leftover after placing any task
    /// is the free capacity minus the task's, the same for every node),
    /// then empty nodes.
    fn rank_key(&self, node: &NodeInfo) -> Option<RankKey> {
        let key = if empty(node) {
            empty_key(node)
        } else {
            -cpu_equivalents(node.available.nano_cpus, node.available.memory_bytes)
        };
        Some(RankKey { class: (size_tier(node), 0), key })
    }
    fn rank_bound(&self, _class: (u64, u64), req: &TaskRequest) -> i128 {
        // A node in use that fits has at least the task's CPU and memory free.
        -cpu_equivalents(req.reservations.nano_cpus, req.reservations.memory_bytes)
    }
}

/// `available_cpu * capacity_memory + available_memory * capacity_cpu`
/// (each capacity at least 1), saturating: orders the nodes of one
/// capacity by their mean free share, the order of Kubernetes'
/// MostAllocated and LeastAllocated within that capacity.
fn share_key(cap: (u64, u64), cpu: u64, memory: u64) -> i128 {
    let (cc, cm) = (u128::from(cap.0.max(1)), u128::from(cap.1.max(1)));
    let k = u128::from(cpu).saturating_mul(cm).saturating_add(u128::from(memory).saturating_mul(cc));
    i128::try_from(k).unwrap_or(i128::MAX)
}

fn capacity(node: &NodeInfo) -> (u64, u64) {
    let c = &node.node.description.resources;
    (c.nano_cpus, c.memory_bytes)
}

/// Kubernetes' MostAllocated on nodes already running a task, the largest
/// machine first as for [`BestFit`] ([`size_tier`]), then the mean
/// requested share of CPU and memory with the task placed, 0 to 100, the
/// fullest node wins: `size_tier x 2^24 + share`; then, as for
/// [`BestFit`], empty nodes, largest first (scores near -1e12). Shares
/// alone would open the smallest empty node first.
#[derive(Clone, Copy, Debug, Default)]
pub struct MostAllocated;

impl Scorer for MostAllocated {
    fn name(&self) -> &str {
        "most-allocated"
    }
    fn shareable(&self) -> bool {
        true
    }
    fn score(&self, node: &NodeInfo, req: &TaskRequest) -> f64 {
        if empty(node) {
            return empty_score(node);
        }
        let (cpu, mem) = shares(node, req);
        size_tier(node) as f64 * TIER_SPAN + 100.0 * ((1.0 - cpu) + (1.0 - mem)) / 2.0
    }
    /// One class per capacity; within it nodes in use by mean free share,
    /// least first, then empty nodes.
    fn rank_key(&self, node: &NodeInfo) -> Option<RankKey> {
        let class = capacity(node);
        let key = if empty(node) {
            empty_key(node)
        } else {
            -share_key(class, node.available.nano_cpus, node.available.memory_bytes)
        };
        Some(RankKey { class, key })
    }
    fn rank_bound(&self, class: (u64, u64), req: &TaskRequest) -> i128 {
        -share_key(class, req.reservations.nano_cpus, req.reservations.memory_bytes)
    }
}

/// Kubernetes' LeastAllocated: mean free share of CPU and memory with the
/// task placed, 0 to 100. The emptiest node wins.
#[derive(Clone, Copy, Debug, Default)]
pub struct LeastAllocated;

impl Scorer for LeastAllocated {
    fn name(&self) -> &str {
        "least-allocated"
    }
    fn shareable(&self) -> bool {
        true
    }
    fn never_rises(&self) -> bool {
        true
    }
    fn score(&self, node: &NodeInfo, req: &TaskRequest) -> f64 {
        let (cpu, mem) = shares(node, req);
        100.0 * (cpu + mem) / 2.0
    }
    /// One class per capacity; within it by mean free share, most first.
    fn rank_key(&self, node: &NodeInfo) -> Option<RankKey> {
        let class = capacity(node);
        Some(RankKey { class, key: share_key(class, node.available.nano_cpus, node.available.memory_bytes) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use swarm_core::model::Node;

    const G: u64 = 1 << 30;
    const CPU: u64 = 1_000_000_000;

    fn node(cpus: u64, mem_g: u64, used_cpus: u64, used_g: u64) -> NodeInfo {
        let mut info = NodeInfo::new(Arc::new(Node::ready("n", "h", Resources::new(cpus * CPU, mem_g * G))));
        info.reserve(&TaskRequest { reservations: Resources::new(used_cpus * CPU, used_g * G), ..Default::default() });
        info
    }

    #[test]
    fn spread_orders_by_failures_then_service_then_total() {
        let req = TaskRequest { service_id: "web".into(), ..Default::default() };
        let other = TaskRequest { service_id: "db".into(), ..Default::default() };
        let empty = node(4, 4, 0, 0);
        let mut busy = node(4, 4, 0, 0);
        busy.reserve(&other);
        let mut same = node(4, 4, 0, 0);
        same.reserve(&req);
        let s = Spread::default();
        assert!(s.score(&empty, &req) > s.score(&busy, &req));
        assert!(s.score(&busy, &req) > s.score(&same, &req));
        let mut failing = empty.clone();
        failing.recent_failures.insert("web".into(), 4);
        assert_eq!(s.score(&failing, &req), s.score(&empty, &req), "below Swarm's threshold of 5");
        failing.recent_failures.insert("web".into(), 5);
        assert!(s.score(&failing, &req) < s.score(&same, &req));
        assert!(Spread { max_failures: 1 }.score(&failing, &req) < s.score(&same, &req));
    }

    fn empty_node(cpus: u64, mem_g: u64) -> NodeInfo {
        NodeInfo::new(Arc::new(Node::ready("e", "h", Resources::new(cpus * CPU, mem_g * G))))
    }

    #[test]
    fn best_fit_is_the_largest_machine_then_the_least_leftover_then_the_largest_empty_node() {
        let req = TaskRequest { reservations: Resources::new(CPU, 4 * G), ..Default::default() };
        // In use (one task, nothing reserved), 8 CPUs / 32 GiB (tier 16
        // CPU-equivalents): 7 CPUs and 28 GiB left after placing, 7 + 7
        // CPU-equivalents.
        assert_eq!(size_tier(&node(8, 32, 0, 0)), 16);
        assert!((BestFit.score(&node(8, 32, 0, 0), &req) - (16.0 * TIER_SPAN - 14.0)).abs() < 1e-9);
        // Filled exactly: nothing left, the best on its machine size.
        assert_eq!(BestFit.score(&node(4, 8, 3, 4), &req), 6.0 * TIER_SPAN);
        // Absolute, not shares: a 32-CPU node with 3 CPUs and 12 GiB free
        // beats an 8-CPU node with 4 CPUs and 16 GiB free.
        let big = node(32, 128, 29, 116);
        let small = node(8, 32, 4, 16);
        assert!(BestFit.score(&big, &req) > BestFit.score(&small, &req));
        // The larger machine first: a roomy 32-CPU node in use beats an
        // 8-CPU node the task fills exactly; on one machine size the
        // tighter fit wins.
        let (roomy, tight) = (node(32, 128, 8, 32), node(8, 32, 7, 28));
        assert!(BestFit.score(&roomy, &req) > BestFit.score(&tight, &req));
        assert!(MostAllocated.score(&roomy, &req) > MostAllocated.score(&tight, &req));
        assert!(BestFit.score(&big, &req) > BestFit.score(&roomy, &req));
        assert!(MostAllocated.score(&big, &req) > MostAllocated.score(&roomy, &req));
        // Any node in use beats any empty node; among empty nodes the
        // largest wins.
        let (e8, e32) = (empty_node(8, 32), empty_node(32, 128));
        assert!(BestFit.score(&node(64, 256, 0, 0), &req) > BestFit.score(&e32, &req));
        assert!(BestFit.score(&e32, &req) > BestFit.score(&e8, &req));
        assert!(MostAllocated.score(&node(64, 256, 0, 0), &req) > MostAllocated.score(&e32, &req));
        assert!(MostAllocated.score(&e32, &req) > MostAllocated.score(&e8, &req));
        // The rank keys order nodes as the scores do.
        // The rank keys order nodes as the scores do, within a class (a
        // machine size).
        let rank = |n: &NodeInfo| BestFit.rank_key(n).unwrap();
        assert_eq!(rank(&big).class, rank(&e32).class);
        assert_ne!(rank(&big).class, rank(&small).class);
        assert!(rank(&big).key > rank(&roomy).key && rank(&roomy).key > rank(&e32).key);
        assert!(rank(&small).key > rank(&e8).key);
        assert!(rank(&big).key <= BestFit.rank_bound(rank(&big).class, &req));
    }

    #[test]
    fn allocated_scores_are_mirror_images() {
        let req = TaskRequest { reservations: Resources::new(CPU, G), ..Default::default() };
        let a = node(4, 8, 1, 2);
        // 4 CPUs and 8 GiB: the machine-size tier of 6 CPU-equivalents.
        assert!((MostAllocated.score(&a, &req) - 6.0 * TIER_SPAN - 43.75).abs() < 1e-9);
        assert!((LeastAllocated.score(&a, &req) - 56.25).abs() < 1e-9);
        assert!(LeastAllocated.score(&node(4, 4, 0, 0), &req) > LeastAllocated.score(&node(4, 4, 1, 0), &req));
        // A node declaring no capacity counts as full: never preferred by
        // LeastAllocated.
        assert_eq!(LeastAllocated.score(&node(0, 0, 0, 0), &TaskRequest::default()), 0.0);
    }
}
