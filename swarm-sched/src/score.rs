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
//! Built in:
//! - [`Spread`]: Swarm's rule. Fewest tasks of the service on the node,
//!   then fewest tasks in total; nodes where the service failed
//!   [`Spread::max_failures`] times within the failure window rank last.
//! - [`BestFit`]: Nomad's BestFit v3 bin packing,
//!   `20 - (10^freeCpu + 10^freeMem)` after placing the task. The default
//!   `binpack`: the exponent punishes a node left with much of one resource
//!   free and little of the other more than a linear score does, so it packs
//!   while keeping CPU and memory balanced, which leaves fewer stranded
//!   fragments (see docs/swarm-sched.md).
//! - [`MostAllocated`]: Kubernetes' MostAllocated, the mean share of CPU
//!   and memory requested after placing the task. Linear; offered for
//!   comparison in the placement benchmark.
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

/// Nomad's BestFit v3: `20 - (10^freeCpu + 10^freeMem)` with the task
/// placed, from 0 (empty node) to 18 (full node). The tightest fit wins.
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
        let (cpu, mem) = shares(node, req);
        20.0 - (10f64.powf(cpu) + 10f64.powf(mem))
    }
}

/// Kubernetes' MostAllocated: mean requested share of CPU and memory with
/// the task placed, 0 to 100. The fullest node wins.
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
        let (cpu, mem) = shares(node, req);
        100.0 * ((1.0 - cpu) + (1.0 - mem)) / 2.0
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

    #[test]
    fn best_fit_is_nomads_formula_and_prefers_tight_balanced_fits() {
        let req = TaskRequest { reservations: Resources::new(CPU, G), ..Default::default() };
        // Empty 4/4 node: free 3/4 of each after placing.
        let expected = 20.0 - 2.0 * 10f64.powf(0.75);
        assert!((BestFit.score(&node(4, 4, 0, 0), &req) - expected).abs() < 1e-9);
        // Filled exactly: 20 - 2.
        assert!((BestFit.score(&node(4, 4, 3, 3), &req) - 18.0).abs() < 1e-9);
        // Fuller beats emptier.
        assert!(BestFit.score(&node(4, 4, 2, 2), &req) > BestFit.score(&node(4, 4, 1, 1), &req));
        // Same total free share: balanced beats lopsided (10^x is convex),
        // while MostAllocated sees no difference.
        let balanced = node(8, 8, 4, 4);
        let lopsided = node(8, 8, 7, 1);
        assert!(BestFit.score(&balanced, &req) > BestFit.score(&lopsided, &req));
        assert!((MostAllocated.score(&balanced, &req) - MostAllocated.score(&lopsided, &req)).abs() < 1e-9);
    }

    #[test]
    fn allocated_scores_are_mirror_images() {
        let req = TaskRequest { reservations: Resources::new(CPU, G), ..Default::default() };
        let a = node(4, 8, 1, 2);
        assert!((MostAllocated.score(&a, &req) - 43.75).abs() < 1e-9);
        assert!((LeastAllocated.score(&a, &req) - 56.25).abs() < 1e-9);
        assert!(LeastAllocated.score(&node(4, 4, 0, 0), &req) > LeastAllocated.score(&node(4, 4, 1, 0), &req));
        // A node declaring no capacity counts as full: never preferred by
        // LeastAllocated.
        assert_eq!(LeastAllocated.score(&node(0, 0, 0, 0), &TaskRequest::default()), 0.0);
    }
}
