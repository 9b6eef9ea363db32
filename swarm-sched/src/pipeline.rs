//! [`Pipeline`]: filters, then a scorer, behind the [`Scheduler`] trait.
//!
//! For each group of identical tasks (see [`batch`](crate::batch)):
//! 1. the static filters narrow the nodes through the [`NodeIndex`] (set
//!    operations; failures counted per filter for the explanation);
//! 2. the dynamic filters (resources, host ports, max replicas) drop the
//!    nodes that cannot take even one task of the group;
//! 3. the survivors are scored once and put in a max-heap; if the tasks
//!    have placement preferences (`spread=node.labels.zone`), the heap is
//!    split into a tree of label values, one level per preference, and
//!    each task goes down the branch holding the fewest tasks of the
//!    service (Swarm's hierarchical spread), then to the best node there;
//! 4. each task pops the best node, re-checks the dynamic filters on it
//!    (a node that fails is dropped for the rest of the group: placements
//!    only consume), reserves, and pushes the node back with its new score.
//!
//! A group costs O(nodes / 64) for the static filters, O(candidates) to
//! build the heap and O(log candidates) per task: 100,000 tasks onto 10,000
//! nodes run well under a second on one core (see BENCHMARKS.md).
//! Tasks fixed to a node (global services) are checked against that node
//! alone.
//!
//! A group whose every candidate would be scored for a few tasks is
//! wasteful when nearly every service has its own task shape (production
//! traces). When the scorer gives rank keys ([`Scorer::rank_key`]: every
//! built-in one), groups without preferences take the indexed path
//! instead: a [`RankIndex`] keeps every node in the scorer's order (per
//! class: one, or one per machine capacity), in blocks that know the
//! skyline of their nodes' free CPU and memory; each task takes the better
//! of the index's best fitting candidate and a local heap of the nodes its
//! service already runs on (hidden from the index for the group). That
//! costs O(classes x log nodes) per task plus the blocks and nodes it
//! steps over, whatever the shape. Tightly constrained groups with many
//! tasks still take the per-group heap.
//!
//! Many small services would pay O(candidates) per group for a few tasks
//! each. So small groups (up to 32 tasks, no preferences) whose scorer and
//! filters are [`shareable`](Scorer::shareable) share one heap per
//! placement *shape* (constraints, platforms, reservations, host ports,
//! max replicas), built the second time a shape shows up (the eighth,
//! for bin-packing scorers with rank keys; never for spreading scorers
//! with rank keys, which stay on the index). Its entries are
//! scored for no service in particular, which is exact on nodes the
//! service does not touch; the few nodes it touches (runs tasks or failed
//! recently) sit in a small per-group heap, and each task takes the better
//! of the two tops. Every placement bumps the node's version and is
//! logged; before a group uses a shared heap, the nodes changed since its
//! last use get fresh entries (or the heap is rebuilt when that is
//! cheaper), and stale entries are dropped when they surface. Scorers whose
//! score never rises with placements ([`Scorer::never_rises`]: Spread,
//! LeastAllocated) skip the sync: a stale entry overestimates, so it is
//! re-scored when it surfaces. Tests check that both paths make identical
//! decisions.
//!
//! When no node is left, the task (and the rest of its group) gets an
//! [`Explanation`] counting, per filter, the nodes it ruled out.
//!
//! ```
//! use std::sync::Arc;
//! use swarm_core::model::{Node, Resources};
//! use swarm_core::scheduler::{ClusterView, Decision, NodeInfo, Scheduler, TaskRequest};
//! use swarm_sched::Pipeline;
//! let g = 1u64 << 30;
//! let nodes = (1..=3).map(|i| NodeInfo::new(Arc::new(Node::ready(format!("n{i}"), "h", Resources::new(0, 4 * g)))));
//! let view = ClusterView { nodes: nodes.collect() };
//! let task = |i: u32| TaskRequest {
//!     task_id: format!("t{i}").into(),
//!     service_id: "web".into(),
//!     reservations: Resources::new(0, g),
//!     ..Default::default()
//! };
//! let batch: Vec<_> = (0..4).map(task).collect();
//! // Spread: one task per node, then around again.
//! let spread = Pipeline::spread().schedule(&view, &batch);
//! assert_eq!(spread[3], Decision::Assign("n1".into()));
//! // BinPack: fill n1 first.
//! let packed = Pipeline::binpack().schedule(&view, &batch);
//! assert!(packed.iter().all(|d| *d == Decision::Assign("n1".into())));
//! // Too big anywhere: explained.
//! let huge = TaskRequest { reservations: Resources::new(0, 8 * g), ..task(9) };
//! let Decision::Unschedulable(why) = &Pipeline::spread().schedule(&view, &[huge])[0] else { panic!() };
//! assert_eq!(why.to_string(), "no suitable node (insufficient memory on 3 nodes)");
//! ```

use crate::batch::group_batch;
use crate::filter::{Filter, first_failure, standard_filters};
use crate::index::{NodeIndex, NodeSet, RankIndex};
use crate::score::{BestFit, LeastAllocated, MostAllocated, Scorer, Spread, cpu_equivalents};
use std::cmp::{Ordering, Reverse};
use std::collections::binary_heap::PeekMut;
use std::collections::{BinaryHeap, HashMap};
use swarm_core::constraint::Constraint;
use swarm_core::id::ServiceId;
use swarm_core::model::{Node, Platform};
use swarm_core::scheduler::{
    ClusterView, Decision, Explanation, FilterFailure, HostPort, NodeInfo, Scheduler, TaskRequest,
};

/// Why a scheduler could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    /// [`Pipeline::by_name`] got a name it does not know.
    #[error("unknown scheduler {0:?}: expected one of {names}", names = Pipeline::NAMES.join(", "))]
    UnknownScheduler(String),
}

/// A scheduler made of filters and a scorer. See the [module docs](self).
pub struct Pipeline {
    name: String,
    filters: Vec<Box<dyn Filter>>,
    scorer: Box<dyn Scorer>,
    order: GroupOrder,
}

/// In which order the groups of a batch are scheduled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GroupOrder {
    /// The order of each group's first task in the batch (Swarm's).
    #[default]
    Batch,
    /// Groups with the fewest eligible nodes (after the static filters)
    /// first, ties in batch order: scarce nodes go to the tasks that can
    /// only run there before looser tasks fill them. The default of the
    /// bin-packing schedulers, which otherwise fill the first nodes
    /// whatever their labels.
    MostConstrainedFirst,
    /// Scarce groups first (fewer eligible nodes than a quarter of the
    /// view's nodes, after the static filters), fewest eligible first;
    /// then every other group by task size, largest first (CPU plus
    /// memory at [`MEMORY_PER_CPU`](crate::score::MEMORY_PER_CPU) per
    /// CPU); ties by fewer eligible nodes, then batch order. The default
    /// of the bin-packing schedulers: scarce nodes still go to the tasks
    /// that can only run there, and the rest of the pass is packed as a
    /// first-fit-decreasing packer would order it (large tasks first,
    /// small ones filling the gaps they leave). Only the order of the
    /// groups within one `schedule` call changes: a pass still places
    /// every task it can, and each task sees every placement before it.
    ScarceFirstThenLargest,
}

/// A group is scarce for [`GroupOrder::ScarceFirstThenLargest`] when fewer
/// than `1 / SCARCE_SHARE` of the view's nodes pass its static filters.
const SCARCE_SHARE: usize = 4;

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name)
            .field("filters", &self.filters.iter().map(|x| x.name()).collect::<Vec<_>>())
            .field("scorer", &self.scorer.name())
            .field("order", &self.order)
            .finish()
    }
}

impl Pipeline {
    /// Names accepted by [`Pipeline::by_name`].
    pub const NAMES: [&'static str; 4] = ["spread", "binpack", "most-allocated", "least-allocated"];

    /// The standard filters and `scorer`, called `name`.
    pub fn new(name: impl Into<String>, scorer: impl Scorer + 'static) -> Self {
        Pipeline { name: name.into(), filters: standard_filters(), scorer: Box::new(scorer), order: GroupOrder::Batch }
    }

    /// Swarm's spread ([`Spread`]).
    pub fn spread() -> Self {
        Self::new("spread", Spread::default())
    }

    /// Bin packing by absolute best fit ([`BestFit`]), scarce groups
    /// first, then largest tasks first
    /// ([`GroupOrder::ScarceFirstThenLargest`]).
    pub fn binpack() -> Self {
        Self::new("binpack", BestFit).with_order(GroupOrder::ScarceFirstThenLargest)
    }

    /// Bin packing with Kubernetes' MostAllocated ([`MostAllocated`]),
    /// scarce groups first, then largest tasks first
    /// ([`GroupOrder::ScarceFirstThenLargest`]).
    pub fn most_allocated() -> Self {
        Self::new("most-allocated", MostAllocated).with_order(GroupOrder::ScarceFirstThenLargest)
    }

    /// Sets the order in which a batch's groups are scheduled.
    pub fn with_order(mut self, order: GroupOrder) -> Self {
        self.order = order;
        self
    }

    /// Kubernetes' LeastAllocated ([`LeastAllocated`]).
    pub fn least_allocated() -> Self {
        Self::new("least-allocated", LeastAllocated)
    }

    /// A built-in scheduler by name (one of [`Pipeline::NAMES`]).
    pub fn by_name(name: &str) -> Result<Self, PipelineError> {
        match name {
            "spread" => Ok(Self::spread()),
            "binpack" => Ok(Self::binpack()),
            "most-allocated" => Ok(Self::most_allocated()),
            "least-allocated" => Ok(Self::least_allocated()),
            other => Err(PipelineError::UnknownScheduler(other.to_string())),
        }
    }

    /// Adds a filter after the others.
    pub fn with_filter(mut self, filter: impl Filter + 'static) -> Self {
        self.filters.push(Box::new(filter));
        self
    }

    /// Replaces the filters (order matters for explanations: a node is
    /// counted under the first filter it fails).
    pub fn with_filters(mut self, filters: Vec<Box<dyn Filter>>) -> Self {
        self.filters = filters;
        self
    }

    /// The filters, in order.
    pub fn filters(&self) -> &[Box<dyn Filter>] {
        &self.filters
    }

    /// The scorer.
    pub fn scorer(&self) -> &dyn Scorer {
        self.scorer.as_ref()
    }
}

impl Scheduler for Pipeline {
    fn name(&self) -> &str {
        &self.name
    }

    fn schedule(&mut self, view: &ClusterView, batch: &[TaskRequest]) -> Vec<Decision> {
        let mut call = Call::new(view);
        let mut out = vec![Decision::Unschedulable(Explanation::new(view.nodes.len())); batch.len()];
        let mut groups = group_batch(batch);
        if self.order != GroupOrder::Batch {
            // Fewest eligible nodes first (fixed-node tasks: one); stable.
            let mut keyed: Vec<(usize, Vec<usize>)> = groups
                .into_iter()
                .map(|g| {
                    let rep = &batch[g[0]];
                    let eligible = if rep.node_id.is_some() { 1 } else { self.static_pass(&call, rep).0.count() };
                    (eligible, g)
                })
                .collect();
            if self.order == GroupOrder::ScarceFirstThenLargest {
                let n = call.work.len();
                let size = |g: &[usize]| {
                    let r = &batch[g[0]].reservations;
                    Reverse(cpu_equivalents(r.nano_cpus, r.memory_bytes))
                };
                // Scarce groups (fewest eligible first), then the others
                // largest task first; stable (batch order last).
                keyed.sort_by_key(|(e, g)| {
                    let scarce = e.saturating_mul(SCARCE_SHARE) < n;
                    (!scarce, if scarce { *e } else { 0 }, size(g), *e)
                });
            } else {
                keyed.sort_by_key(|(eligible, _)| *eligible);
            }
            groups = keyed.into_iter().map(|(_, g)| g).collect();
        }
        let mut placed = 0usize;
        for group in &groups {
            placed += self.schedule_group(&mut call, batch, group, &mut out);
        }
        tracing::debug!(
            scheduler = %self.name,
            nodes = view.nodes.len(),
            tasks = batch.len(),
            groups = groups.len(),
            shared_heaps = call.shared.len(),
            placed,
            "scheduled batch"
        );
        out
    }
}

/// Most heap entries kept in heaps shared between groups, per call
/// (16 bytes each: 2^21 entries is 32 MiB).
const SHARED_ENTRY_BUDGET: usize = 1 << 21;

/// Per-node values of one preference descriptor: a dense id per node, ids
/// in the order of the values (so branches come out sorted).
struct LabelIds {
    ids: Vec<u32>,
    values: usize,
}

/// What groups with the same placement needs share (everything but the
/// service, the spec version and the task).
#[derive(Clone, PartialEq, Eq, Hash)]
struct ShapeKey {
    constraints: Vec<Constraint>,
    platforms: Vec<Platform>,
    nano_cpus: u64,
    memory_bytes: u64,
    generic: Vec<(String, u64)>,
    host_ports: Vec<HostPort>,
    max_replicas: u64,
}

impl ShapeKey {
    fn of(r: &TaskRequest) -> Self {
        ShapeKey {
            constraints: r.constraints.clone(),
            platforms: r.platforms.clone(),
            nano_cpus: r.reservations.nano_cpus,
            memory_bytes: r.reservations.memory_bytes,
            generic: r.reservations.generic.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            host_ports: r.host_ports.clone(),
            max_replicas: r.max_replicas,
        }
    }
}

/// The candidates of one shape, shared by the groups of that shape.
struct SharedHeap {
    /// Entries scored for no service in particular. A node may have stale
    /// entries (older version): when one surfaces it is dropped (the sync in
    /// [`Pipeline::pick_shared`] re-pushes every changed node) or, for
    /// scores that never rise, re-scored in place (no sync then).
    heap: BinaryHeap<Entry>,
    /// The shape's request with an empty service id.
    neutral: TaskRequest,
    /// Nodes that pass the shape's static filters.
    alive: NodeSet,
    /// How many.
    alive_count: usize,
    /// How much of [`Call::log`] the heap has taken in.
    synced: usize,
}

/// How many groups of a shape asked, and its shared heap once built.
type Shared = HashMap<ShapeKey, (u32, Option<SharedHeap>)>;

/// Groups of at most this many tasks use shared heaps; larger groups pay
/// for scoring every candidate once and amortise it.
const SHARED_GROUP_MAX: usize = 32;

/// When the rank index can serve a shape (and the scorer's scores can
/// rise: bin packing), its shared heap is built when this many small
/// groups have asked: scoring every candidate pays off only for a shape
/// many groups share (`many-small`: 54 shapes for 33,000 groups); a shape
/// seen once or twice, as in traces where nearly every service has its
/// own, stays on the index.
const SHARED_BUILD_AT_INDEXED: u32 = 8;

/// The state of one `schedule` call.
struct Call<'a> {
    view: &'a ClusterView,
    index: NodeIndex,
    /// The nodes with this call's placements applied.
    work: Vec<NodeInfo>,
    /// Bumped on every placement on the node (shared heap entries carry it).
    version: Vec<u32>,
    /// Nodes running tasks of a service or with recent failures of it.
    service_nodes: HashMap<ServiceId, Vec<usize>>,
    labels: HashMap<String, Option<LabelIds>>,
    shared: Shared,
    shared_entries: usize,
    /// Every placement's node, in order.
    log: Vec<usize>,
    /// The nodes in the scorer's rank order, when it has one; built when
    /// a group first wants it (`rank_built`), kept up to date from then.
    rank: Option<RankIndex>,
    rank_built: bool,
}

impl<'a> Call<'a> {
    fn new(view: &'a ClusterView) -> Self {
        let mut service_nodes: HashMap<ServiceId, Vec<usize>> = HashMap::new();
        for (i, n) in view.nodes.iter().enumerate() {
            let running = n.tasks_by_service.iter().filter(|(_, c)| **c > 0).map(|(s, _)| s);
            let failed = n.recent_failures.iter().filter(|(s, f)| **f > 0 && n.service_tasks(s) == 0).map(|(s, _)| s);
            for s in running.chain(failed) {
                service_nodes.entry(s.clone()).or_default().push(i);
            }
        }
        Call {
            view,
            index: NodeIndex::new(view),
            work: view.nodes.clone(),
            version: vec![0; view.nodes.len()],
            service_nodes,
            labels: HashMap::new(),
            shared: HashMap::new(),
            shared_entries: 0,
            log: Vec::new(),
            rank: None,
            rank_built: false,
        }
    }

    /// The rank index, built from the nodes as they now stand on first use.
    fn rank_index(&mut self, scorer: &dyn Scorer) -> bool {
        if !self.rank_built {
            self.rank_built = true;
            self.rank = RankIndex::new(&self.work, scorer);
        }
        self.rank.is_some()
    }

    /// Places `req` on node `i`: reserves, bumps the node's version,
    /// records that the service now touches the node and re-keys it in the
    /// rank index.
    fn place(&mut self, i: usize, req: &TaskRequest, scorer: &dyn Scorer) {
        let untouched = !touches(&self.work[i], &req.service_id);
        self.place_known(i, req, scorer, untouched);
    }

    /// [`Call::place`] when the caller knows whether the service touched
    /// the node (`untouched`: it ran no task of it there and did not fail
    /// there recently): one hash lookup fewer per placement.
    fn place_known(&mut self, i: usize, req: &TaskRequest, scorer: &dyn Scorer, untouched: bool) {
        self.log.push(i);
        let info = &mut self.work[i];
        if untouched {
            // No key clone when the service already has an entry.
            match self.service_nodes.get_mut(&req.service_id) {
                Some(nodes) => nodes.push(i),
                None => {
                    self.service_nodes.insert(req.service_id.clone(), vec![i]);
                }
            }
        }
        info.reserve(req);
        self.version[i] = self.version[i].wrapping_add(1);
        if let Some(rank) = self.rank.as_mut() {
            if !rank.update(i, &self.work[i], scorer) {
                tracing::warn!(scorer = scorer.name(), "a rank key broke its contract (class changed): index dropped");
                self.rank = None;
            }
        }
    }

    fn label_ids(&mut self, descriptor: &str) {
        if self.labels.contains_key(descriptor) {
            return;
        }
        let values: Option<Vec<&str>> = self.view.nodes.iter().map(|n| descriptor_value(&n.node, descriptor)).collect();
        let ids = values.map(|values| {
            let mut distinct = values.clone();
            distinct.sort_unstable();
            distinct.dedup();
            let ids = values.iter().map(|v| distinct.binary_search(v).unwrap_or(0) as u32).collect();
            LabelIds { ids, values: distinct.len() }
        });
        self.labels.insert(descriptor.to_string(), ids);
    }
}

/// True when the service runs on the node or failed there recently.
fn touches(info: &NodeInfo, service: &ServiceId) -> bool {
    info.service_tasks(service) > 0 || info.recent_failures.get(service).is_some_and(|f| *f > 0)
}

/// A node in a heap: best score first, then the lowest position. `version`
/// is the node's version when scored (shared heaps only).
#[derive(Clone, Copy, Debug)]
struct Entry {
    score: f64,
    node: u32,
    version: u32,
}

impl Entry {
    fn new(score: f64, idx: usize, version: u32) -> Self {
        // Node positions fit in u32 (a view of 4 billion nodes would not fit
        // in memory anyway); 16-byte entries keep the heaps cache-friendly.
        Entry { score: if score.is_nan() { f64::NEG_INFINITY } else { score }, node: idx as u32, version }
    }

    fn idx(&self) -> usize {
        self.node as usize
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then(other.node.cmp(&self.node))
    }
}

/// Candidates of a group: a heap, or one level of spread preferences.
enum Tree {
    Leaf(BinaryHeap<Entry>),
    Split(Vec<Branch>),
}

struct Branch {
    /// Tasks of the service on the branch's nodes.
    count: u64,
    done: bool,
    tree: Tree,
}

/// The value of a preference descriptor on a node: `Some(value or "")` for
/// `node.labels.X` / `engine.labels.X` (a node without the label goes to
/// the "" branch, like Swarm), `None` for descriptors we do not know.
fn descriptor_value<'a>(node: &'a Node, descriptor: &str) -> Option<&'a str> {
    // The prefix compares case-insensitively, as in SwarmKit.
    let strip = |prefix: &str| {
        let head = descriptor.get(..prefix.len())?;
        (head.eq_ignore_ascii_case(prefix) && descriptor.len() > prefix.len()).then(|| &descriptor[prefix.len()..])
    };
    if let Some(k) = strip("node.labels.") {
        Some(node.spec.labels.get(k).map(String::as_str).unwrap_or(""))
    } else if let Some(k) = strip("engine.labels.") {
        Some(node.description.engine_labels.get(k).map(String::as_str).unwrap_or(""))
    } else {
        None
    }
}

impl Tree {
    /// `levels`: the per-node value ids of each preference, in order.
    /// `touched`: the nodes that may run tasks of `service` (the others
    /// count 0 without a lookup).
    fn build(
        entries: Vec<Entry>,
        levels: &[&LabelIds],
        nodes: &[NodeInfo],
        touched: &NodeSet,
        service: &ServiceId,
    ) -> Tree {
        let Some((first, rest)) = levels.split_first() else {
            return Tree::Leaf(BinaryHeap::from(entries));
        };
        let mut buckets: Vec<Vec<Entry>> = (0..first.values).map(|_| Vec::new()).collect();
        for e in entries {
            buckets[first.ids[e.idx()] as usize].push(e);
        }
        let branches = buckets
            .into_iter()
            .filter(|b| !b.is_empty())
            .map(|es| Branch {
                count: es
                    .iter()
                    .filter(|e| touched.contains(e.idx()))
                    .map(|e| u64::from(nodes[e.idx()].service_tasks(service)))
                    .sum(),
                done: false,
                tree: Tree::build(es, rest, nodes, touched, service),
            })
            .collect();
        Tree::Split(branches)
    }

    /// The best node accepted by `take` (which re-checks, reserves and
    /// returns the node's new score, or `None` to drop the node).
    fn pick(&mut self, take: &mut dyn FnMut(usize) -> Option<f64>) -> Option<usize> {
        match self {
            Tree::Leaf(heap) => {
                while let Some(mut top) = heap.peek_mut() {
                    let i = top.idx();
                    match take(i) {
                        Some(score) => {
                            // Re-scored in place: one sift down.
                            *top = Entry::new(score, i, 0);
                            return Some(i);
                        }
                        None => {
                            PeekMut::pop(top);
                        }
                    }
                }
                None
            }
            Tree::Split(branches) => loop {
                let b = branches.iter_mut().filter(|b| !b.done).min_by_key(|b| b.count)?;
                match b.tree.pick(take) {
                    Some(i) => {
                        b.count += 1;
                        return Some(i);
                    }
                    None => b.done = true,
                }
            },
        }
    }
}

/// True when the indexed path should beat scoring the group's candidates
/// once: per task it skips about `nodes / candidates` nodes that fail the
/// static filters, so a tightly constrained group with many tasks (a few
/// SSD nodes, one fixed host) is cheaper on the per-group path.
fn index_pays(tasks: usize, candidates: usize, nodes: usize) -> bool {
    candidates > 0 && tasks.saturating_mul(nodes / candidates) <= 4 * candidates
}

/// The first dynamic filter `info` fails for `req`.
fn dyn_check(dynamic: &[&dyn Filter], info: &NodeInfo, req: &TaskRequest) -> Result<(), FilterFailure> {
    for f in dynamic {
        f.check(info, req)?;
    }
    Ok(())
}

impl Pipeline {
    /// The nodes that pass the static filters for `rep`, and why the others
    /// do not.
    fn static_pass(&self, call: &Call, rep: &TaskRequest) -> (NodeSet, Explanation) {
        let n = call.work.len();
        let mut why = Explanation::new(n);
        let mut alive = NodeSet::full(n);
        for f in self.filters.iter().filter(|f| f.is_static() && f.relevant(rep)) {
            if !f.check_indexed(call.view, &call.index, rep, &mut alive, &mut why) {
                for i in alive.clone().iter() {
                    if let Err(e) = f.check(&call.work[i], rep) {
                        alive.remove(i);
                        why.add(&e);
                    }
                }
            }
        }
        (alive, why)
    }

    /// Schedules one group; returns how many tasks were placed.
    fn schedule_group(&self, call: &mut Call, batch: &[TaskRequest], group: &[usize], out: &mut [Decision]) -> usize {
        let Some(&first) = group.first() else { return 0 };
        let rep = &batch[first];
        if rep.node_id.is_some() {
            return group.iter().filter(|&&t| self.schedule_fixed(call, &batch[t], &mut out[t])).count();
        }

        // 1. Static filters, once for the group.
        let (alive, why_static) = self.static_pass(call, rep);
        let relevant: Vec<&dyn Filter> = self.filters.iter().filter(|f| f.relevant(rep)).map(|f| f.as_ref()).collect();
        let dynamic: Vec<&dyn Filter> = relevant.iter().copied().filter(|f| !f.is_static()).collect();

        let shareable = rep.preferences.is_empty() && self.scorer.shareable() && relevant.iter().all(|f| f.shareable());
        let indexed = shareable
            && index_pays(group.len(), alive.count(), call.work.len())
            && call.rank_index(self.scorer.as_ref());
        // With the index, a shape needs more groups to pay for a heap; and
        // spreading scorers (scores that never rise) stay on the index:
        // each placement lands atop every shape's heap, which all re-sort.
        let build_at = match (indexed, self.scorer.never_rises()) {
            (false, _) => 2,
            (true, false) => SHARED_BUILD_AT_INDEXED,
            (true, true) => u32::MAX,
        };
        let placed = if shareable
            && group.len() <= SHARED_GROUP_MAX
            && self.shared_heap(call, rep, &alive, &dynamic, build_at)
        {
            self.pick_shared(call, batch, group, out, &alive, &dynamic)
        } else if indexed {
            self.pick_indexed(call, batch, group, out, &alive, &dynamic)
        } else {
            self.pick_group(call, batch, group, out, &alive, &dynamic)
        };
        if placed < group.len() {
            // 5. Explain, once: static failures plus each surviving node's
            // first dynamic failure now.
            let req = &batch[group[placed.min(group.len() - 1)]];
            let mut why = why_static;
            for i in alive.iter() {
                if let Err(e) = dyn_check(&dynamic, &call.work[i], req) {
                    why.add(&e);
                }
            }
            tracing::debug!(service = %req.service_id, reason = %why, "task unschedulable");
            for &t in group {
                if matches!(out[t], Decision::Unschedulable(_)) {
                    out[t] = Decision::Unschedulable(why.clone());
                }
            }
        }
        tracing::trace!(service = %rep.service_id, tasks = group.len(), placed, "scheduled group");
        placed
    }

    /// The per-group path: candidates scored for this group, in a tree
    /// when the tasks have spread preferences. Places tasks in group order
    /// until the candidates run out; returns how many it placed.
    fn pick_group(
        &self,
        call: &mut Call,
        batch: &[TaskRequest],
        group: &[usize],
        out: &mut [Decision],
        alive: &NodeSet,
        dynamic: &[&dyn Filter],
    ) -> usize {
        let rep = &batch[group[0]];
        // A shareable scorer scores the nodes the service does not touch
        // for no service in particular (cheaper: no per-service lookups).
        let neutral = TaskRequest { service_id: ServiceId::default(), ..rep.clone() };
        let mut touched = NodeSet::empty(call.work.len());
        if self.scorer.shareable() {
            for &i in call.service_nodes.get(&rep.service_id).into_iter().flatten() {
                touched.insert(i);
            }
        } else {
            touched = NodeSet::full(call.work.len());
        }
        let entries: Vec<Entry> = alive
            .iter()
            .filter(|&i| dyn_check(dynamic, &call.work[i], rep).is_ok())
            .map(|i| {
                let req = if touched.contains(i) { rep } else { &neutral };
                Entry::new(self.scorer.score(&call.work[i], req), i, 0)
            })
            .collect();
        let mut levels = Vec::new();
        for p in &rep.preferences {
            call.label_ids(p);
        }
        for p in &rep.preferences {
            match call.labels.get(p).and_then(Option::as_ref) {
                Some(ids) => levels.push(ids),
                None => tracing::warn!(
                    descriptor = %p,
                    service = %rep.service_id,
                    "ignoring unknown spread preference: expected node.labels.<key> or engine.labels.<key>"
                ),
            }
        }
        let mut tree = Tree::build(entries, &levels, &call.work, &touched, &rep.service_id);
        let mut placed = 0;
        for &t in group {
            let req = &batch[t];
            let scorer = self.scorer.as_ref();
            let picked = tree.pick(&mut |i| {
                dyn_check(dynamic, &call.work[i], req).ok()?;
                call.place(i, req, scorer);
                Some(scorer.score(&call.work[i], req))
            });
            let Some(i) = picked else { break };
            out[t] = Decision::Assign(call.work[i].node.id.clone());
            placed += 1;
        }
        placed
    }

    /// The indexed path: per task, the best of the rank index's answer
    /// (nodes the service does not touch, by the scorer's rank keys: see
    /// [`Scorer::rank_key`]) and a small local heap of the nodes the
    /// service touches. Costs O(classes x log nodes) per task plus the
    /// nodes skipped because they fail the group's filters, whatever the
    /// number of groups and shapes.
    fn pick_indexed(
        &self,
        call: &mut Call,
        batch: &[TaskRequest],
        group: &[usize],
        out: &mut [Decision],
        alive: &NodeSet,
        dynamic: &[&dyn Filter],
    ) -> usize {
        let rep = &batch[group[0]];
        let scorer = self.scorer.as_ref();
        let mut candidates = alive.clone();
        let mut local: BinaryHeap<Entry> = BinaryHeap::new();
        // The nodes the service touches leave the index for the group (the
        // local heap ranks them), so searches do not step over them.
        let mut hidden: Vec<usize> = Vec::new();
        for &i in call.service_nodes.get(&rep.service_id).into_iter().flatten() {
            if candidates.contains(i) {
                candidates.remove(i);
                hidden.push(i);
                if dyn_check(dynamic, &call.work[i], rep).is_ok() {
                    local.push(Entry::new(scorer.score(&call.work[i], rep), i, 0));
                }
            }
        }
        if let Some(rank) = call.rank.as_mut() {
            for &i in &hidden {
                rank.hide(i);
            }
        }
        let placed = self.pick_indexed_tasks(call, batch, group, out, alive, dynamic, candidates, local, &mut hidden);
        if let Some(rank) = call.rank.as_mut() {
            for &i in &hidden {
                rank.show(i);
            }
        }
        placed
    }

    /// The task loop of [`Pipeline::pick_indexed`]; `hidden` gets the
    /// nodes it takes out of the index.
    #[allow(clippy::too_many_arguments)]
    fn pick_indexed_tasks(
        &self,
        call: &mut Call,
        batch: &[TaskRequest],
        group: &[usize],
        out: &mut [Decision],
        alive: &NodeSet,
        dynamic: &[&dyn Filter],
        mut candidates: NodeSet,
        mut local: BinaryHeap<Entry>,
        hidden: &mut Vec<usize>,
    ) -> usize {
        let rep = &batch[group[0]];
        let scorer = self.scorer.as_ref();
        let neutral = TaskRequest { service_id: ServiceId::default(), ..rep.clone() };
        let mut placed = 0;
        for (k, &t) in group.iter().enumerate() {
            let req = &batch[t];
            let Some(rank) = call.rank.as_mut() else {
                // The index was dropped (a scorer broke the rank contract):
                // the rest of the group takes the per-group path.
                return placed + self.pick_group(call, batch, &group[k..], out, alive, dynamic);
            };
            let mut fits = |n: &NodeInfo| dyn_check(dynamic, n, req).is_ok();
            let indexed = rank.best(&call.work, scorer, req, &neutral, &mut candidates, &mut fits);
            let local_best = loop {
                let Some(&top) = local.peek() else { break None };
                if dyn_check(dynamic, &call.work[top.idx()], req).is_err() {
                    local.pop();
                } else {
                    break Some(top);
                }
            };
            let i = match (indexed, local_best) {
                (None, None) => break,
                (Some((s, i)), Some(l)) if Entry::new(s, i, 0) > l => i,
                (Some((_, i)), None) => i,
                (_, Some(l)) => {
                    local.pop();
                    l.idx()
                }
            };
            // From the index: the service did not touch the node (those it
            // touches are out of `candidates`, in the local heap).
            let from_index = candidates.contains(i);
            if from_index {
                // The node now runs a task of the service, the local heap
                // ranks it for the rest of the group.
                candidates.remove(i);
                if let Some(rank) = call.rank.as_mut() {
                    rank.hide(i);
                    hidden.push(i);
                }
            }
            call.place_known(i, req, scorer, from_index);
            local.push(Entry::new(scorer.score(&call.work[i], req), i, 0));
            out[t] = Decision::Assign(call.work[i].node.id.clone());
            placed += 1;
        }
        placed
    }

    /// Makes sure the group's shape has a shared heap, building it the
    /// `build_at`-th time the shape is seen (within the entry budget).
    /// False when the group should take another path.
    fn shared_heap(
        &self,
        call: &mut Call,
        rep: &TaskRequest,
        alive: &NodeSet,
        dynamic: &[&dyn Filter],
        build_at: u32,
    ) -> bool {
        let key = ShapeKey::of(rep);
        let seen = match call.shared.get_mut(&key) {
            Some((_, Some(_))) => return true,
            Some((seen, None)) => {
                *seen += 1;
                *seen
            }
            None => {
                call.shared.insert(key.clone(), (1, None));
                1
            }
        };
        if seen < build_at {
            return false;
        }
        let count = alive.count();
        // A heap holds at most about twice its candidates (see the sync).
        if call.shared_entries + 2 * count > SHARED_ENTRY_BUDGET {
            return false;
        }
        let neutral = TaskRequest { service_id: ServiceId::default(), ..rep.clone() };
        let heap: BinaryHeap<Entry> = alive
            .iter()
            .filter(|&i| dyn_check(dynamic, &call.work[i], &neutral).is_ok())
            .map(|i| Entry::new(self.scorer.score(&call.work[i], &neutral), i, call.version[i]))
            .collect();
        call.shared_entries += 2 * count;
        let shared = SharedHeap { heap, neutral, alive: alive.clone(), alive_count: count, synced: call.log.len() };
        call.shared.insert(key, (seen, Some(shared)));
        true
    }

    /// The shared path: the best of the shape's shared heap (nodes the
    /// service does not touch, scored for no service in particular, kept
    /// fresh lazily by version) and a small local heap of the nodes the
    /// service touches. Exact: see [`Scorer::shareable`].
    fn pick_shared(
        &self,
        call: &mut Call,
        batch: &[TaskRequest],
        group: &[usize],
        out: &mut [Decision],
        alive: &NodeSet,
        dynamic: &[&dyn Filter],
    ) -> usize {
        let rep = &batch[group[0]];
        let key = ShapeKey::of(rep);
        let Some((seen, Some(mut shared))) = call.shared.remove(&key) else { return 0 };
        // Sync: fresh entries for the nodes changed since the last use, or
        // a rebuild when that is cheaper or stale entries pile up. Scores
        // that never rise need no sync: a stale entry overestimates, so it
        // is re-scored when it surfaces.
        let lazy = self.scorer.never_rises();
        let mut changed = if lazy { Vec::new() } else { call.log[shared.synced..].to_vec() };
        let (work, version) = (&call.work, &call.version);
        let entry = |i: usize| {
            (dyn_check(dynamic, &work[i], &shared.neutral).is_ok())
                .then(|| Entry::new(self.scorer.score(&work[i], &shared.neutral), i, version[i]))
        };
        if lazy {
            // nothing to sync
        } else if changed.len() >= shared.alive_count
            || shared.heap.len() + changed.len() > 2 * shared.alive_count + 1024
        {
            shared.heap = shared.alive.iter().filter_map(entry).collect();
        } else {
            changed.sort_unstable();
            changed.dedup();
            for i in changed.into_iter().filter(|&i| shared.alive.contains(i)) {
                shared.heap.extend(entry(i));
            }
        }
        let synced = call.log.len();
        let heap = &mut shared.heap;
        let service = &rep.service_id;
        let mut local: BinaryHeap<Entry> = call
            .service_nodes
            .get(service)
            .into_iter()
            .flatten()
            .filter(|&&i| alive.contains(i) && dyn_check(dynamic, &call.work[i], rep).is_ok())
            .map(|&i| Entry::new(self.scorer.score(&call.work[i], rep), i, 0))
            .collect();
        let mut set_aside = Vec::new();
        let mut placed = 0;
        for &t in group {
            let req = &batch[t];
            let shared_best = loop {
                let Some(&top) = heap.peek() else { break None };
                let info = &call.work[top.idx()];
                if call.version[top.idx()] != top.version {
                    let fresh = (lazy && dyn_check(dynamic, info, &shared.neutral).is_ok()).then(|| {
                        Entry::new(self.scorer.score(info, &shared.neutral), top.idx(), call.version[top.idx()])
                    });
                    match (fresh, heap.peek_mut()) {
                        // Its only entry: re-scored (never higher than
                        // before) in place, one sift down.
                        (Some(fresh), Some(mut slot)) => *slot = fresh,
                        // Else the sync pushed (or will push) a fresh one.
                        (_, Some(slot)) => {
                            PeekMut::pop(slot);
                        }
                        (_, None) => {}
                    }
                } else if touches(info, service) {
                    // Its score for this service differs: the local heap
                    // has it; back in the shared heap after the group.
                    set_aside.extend(heap.pop());
                } else if dyn_check(dynamic, info, req).is_err() {
                    heap.pop(); // fails every group of the shape from now on
                } else {
                    break Some(top);
                }
            };
            let local_best = loop {
                let Some(&top) = local.peek() else { break None };
                if dyn_check(dynamic, &call.work[top.idx()], req).is_err() {
                    local.pop();
                } else {
                    break Some(top);
                }
            };
            let take_local = match (shared_best, local_best) {
                (None, None) => break,
                (Some(s), Some(l)) => l > s,
                (None, Some(_)) => true,
                (Some(_), None) => false,
            };
            let popped = if take_local { local.pop() } else { heap.pop() };
            let Some(e) = popped else { break }; // just peeked: never None
            if !take_local {
                set_aside.push(e);
            }
            let i = e.idx();
            call.place(i, req, self.scorer.as_ref());
            local.push(Entry::new(self.scorer.score(&call.work[i], req), i, 0));
            out[t] = Decision::Assign(call.work[i].node.id.clone());
            placed += 1;
        }
        heap.extend(set_aside);
        // This group's placements are taken in by the next sync.
        shared.synced = synced;
        call.shared.insert(key, (seen, Some(shared)));
        placed
    }

    /// A task fixed to one node: every filter on that node alone.
    fn schedule_fixed(&self, call: &mut Call, req: &TaskRequest, out: &mut Decision) -> bool {
        let n = call.work.len();
        let mut why = Explanation::new(n);
        let Some(i) = req.node_id.as_ref().and_then(|id| call.index.position(id)) else {
            why.add_n(FilterFailure::OtherNode, n);
            *out = Decision::Unschedulable(why);
            return false;
        };
        match first_failure(&self.filters, &call.work[i], req) {
            Ok(()) => {
                call.place(i, req, self.scorer.as_ref());
                *out = Decision::Assign(call.work[i].node.id.clone());
                true
            }
            Err(e) => {
                why.add_n(FilterFailure::OtherNode, n - 1);
                why.add(&e);
                *out = Decision::Unschedulable(why);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;
    use swarm_core::model::{Availability, Protocol, Resources};

    const G: u64 = 1 << 30;

    fn view(zones: &[&str]) -> ClusterView {
        let nodes = zones
            .iter()
            .enumerate()
            .map(|(i, z)| {
                let mut n = Node::ready(format!("n{i:02}"), format!("h{i}"), Resources::new(4_000_000_000, 8 * G));
                if !z.is_empty() {
                    n.spec.labels.insert("zone".into(), z.to_string());
                }
                NodeInfo::new(Arc::new(n))
            })
            .collect();
        ClusterView { nodes }
    }

    fn tasks(service: &str, n: usize, f: impl Fn(&mut TaskRequest)) -> Vec<TaskRequest> {
        (0..n)
            .map(|i| {
                let mut t = TaskRequest {
                    task_id: format!("{service}.{i}").into(),
                    service_id: service.into(),
                    reservations: Resources::new(0, G),
                    ..Default::default()
                };
                f(&mut t);
                t
            })
            .collect()
    }

    fn counts(d: &[Decision]) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for x in d {
            if let Decision::Assign(n) = x {
                *m.entry(n.to_string()).or_insert(0) += 1;
            }
        }
        m
    }

    #[test]
    fn explanation_counts_failures_per_filter() {
        let mut v = view(&["eu", "eu", "us", "us", "us"]);
        Arc::make_mut(&mut v.nodes[4].node).spec.availability = Availability::Drain;
        for i in 0..2 {
            v.nodes[i].reserve(&TaskRequest { reservations: Resources::new(0, 7 * G), ..Default::default() });
        }
        let req = tasks("web", 1, |t| {
            t.constraints = vec!["node.labels.zone==eu".parse().unwrap()];
            t.reservations = Resources::new(0, 2 * G);
        });
        let d = Pipeline::spread().schedule(&v, &req);
        let Decision::Unschedulable(why) = &d[0] else { panic!("{d:?}") };
        assert_eq!(
            why.to_string(),
            "no suitable node (2 nodes fail constraint node.labels.zone==eu; insufficient memory on 2 nodes; 1 node is paused or drained)"
        );
        let empty = Pipeline::binpack().schedule(&ClusterView::default(), &req);
        assert_eq!(empty[0], Decision::Unschedulable(Explanation::new(0)));
    }

    #[test]
    fn spread_prefers_fewest_service_tasks_then_fewest_total() {
        let mut v = view(&["", "", ""]);
        // n00 runs 2 tasks of another service, n01 one task of web.
        for _ in 0..2 {
            v.nodes[0].reserve(&TaskRequest { service_id: "db".into(), ..Default::default() });
        }
        v.nodes[1].reserve(&TaskRequest { service_id: "web".into(), ..Default::default() });
        let d = Pipeline::spread().schedule(&v, &tasks("web", 3, |_| {}));
        // n02 (0 web, 0 total), then n00 (0 web, 2 total), then n01 or n02
        // (1 web each; n02 has 1 total, n01 has 1 total: lowest id).
        assert_eq!(
            d,
            vec![Decision::Assign("n02".into()), Decision::Assign("n00".into()), Decision::Assign("n01".into())]
        );
    }

    #[test]
    fn spread_avoids_nodes_with_recent_failures() {
        let mut v = view(&["", ""]);
        v.nodes[0].recent_failures.insert("web".into(), 5);
        let d = Pipeline::spread().schedule(&v, &tasks("web", 2, |_| {}));
        assert_eq!(d, vec![Decision::Assign("n01".into()), Decision::Assign("n01".into())]);
        v.nodes[0].recent_failures.insert("web".into(), 1);
        let d = Pipeline::new("s", Spread { max_failures: 1 }).schedule(&v, &tasks("web", 1, |_| {}));
        assert_eq!(d, vec![Decision::Assign("n01".into())]);
    }

    #[test]
    fn spread_preferences_split_evenly_over_label_values() {
        // 4 nodes in eu, 1 in us, 1 without a zone: 6 tasks -> 2 per value.
        let v = view(&["eu", "eu", "eu", "eu", "us", ""]);
        let d = Pipeline::spread().schedule(&v, &tasks("web", 6, |t| t.preferences = vec!["Node.Labels.zone".into()]));
        let c = counts(&d);
        assert_eq!(c["n04"], 2, "{c:?}");
        assert_eq!(c["n05"], 2, "{c:?}");
        assert_eq!((0..4).map(|i| c.get(&format!("n0{i}")).copied().unwrap_or(0)).sum::<usize>(), 2);
        // Hierarchy: zone, then rack within the zone.
        let mut v = view(&["eu", "eu", "eu", "us"]);
        for (i, rack) in ["a", "a", "b", "a"].iter().enumerate() {
            Arc::make_mut(&mut v.nodes[i].node).spec.labels.insert("rack".into(), rack.to_string());
        }
        let prefs = vec!["node.labels.zone".to_string(), "node.labels.rack".to_string()];
        let d = Pipeline::binpack().schedule(&v, &tasks("web", 4, |t| t.preferences = prefs.clone()));
        let c = counts(&d);
        // 2 to us (n03), 2 to eu: 1 to rack a (binpack: n00), 1 to rack b.
        assert_eq!(c.get("n03"), Some(&2), "{c:?}");
        assert_eq!(c.get("n02"), Some(&1), "{c:?}");
        assert_eq!(c.get("n00"), Some(&1), "{c:?}");
    }

    #[test]
    fn engine_label_preferences_split_and_unknown_ones_are_ignored() {
        let mut v = view(&["", "", ""]);
        for (i, disk) in ["ssd", "ssd", "hdd"].iter().enumerate() {
            Arc::make_mut(&mut v.nodes[i].node).description.engine_labels.insert("disk".into(), disk.to_string());
        }
        let d =
            Pipeline::binpack().schedule(&v, &tasks("web", 4, |t| t.preferences = vec!["engine.labels.disk".into()]));
        let c = counts(&d);
        assert_eq!((c.get("n00"), c.get("n02")), (Some(&2), Some(&2)), "{c:?}");
        // An unknown descriptor does not split: plain bin packing.
        let d = Pipeline::binpack().schedule(&v, &tasks("web", 4, |t| t.preferences = vec!["node.hostname".into()]));
        assert_eq!(counts(&d).get("n00"), Some(&4));
    }

    #[test]
    fn preferences_count_existing_tasks_and_skip_full_branches() {
        let mut v = view(&["eu", "us"]);
        for _ in 0..3 {
            v.nodes[0].reserve(&TaskRequest { service_id: "web".into(), ..Default::default() });
        }
        // us takes 3 to even out, then the zones alternate until us is full
        // (8 GiB: 8 tasks); the last tasks go to eu.
        let d = Pipeline::spread().schedule(&v, &tasks("web", 16, |t| t.preferences = vec!["node.labels.zone".into()]));
        let c = counts(&d);
        assert_eq!(c["n01"], 8, "{c:?}");
        assert_eq!(c["n00"], 8, "{c:?}");
    }

    #[test]
    fn batch_tasks_see_each_other_host_ports_and_max_replicas() {
        let v = view(&["", ""]);
        let d = Pipeline::binpack().schedule(&v, &tasks("web", 3, |t| t.host_ports = vec![(Protocol::Tcp, 80)]));
        assert_eq!(d[0], Decision::Assign("n00".into()));
        assert_eq!(d[1], Decision::Assign("n01".into()));
        let Decision::Unschedulable(why) = &d[2] else { panic!() };
        assert_eq!(why.to_string(), "no suitable node (host port 80/tcp in use on 2 nodes)");
        let d = Pipeline::binpack().schedule(&v, &tasks("web", 5, |t| t.max_replicas = 2));
        assert_eq!(counts(&d).values().sum::<usize>(), 4);
        let Decision::Unschedulable(why) = &d[4] else { panic!() };
        assert_eq!(why.to_string(), "no suitable node (max replicas per node (2) reached on 2 nodes)");
    }

    #[test]
    fn fixed_node_tasks_go_to_their_node_or_are_explained() {
        let v = view(&["", "", ""]);
        let mut batch = tasks("agent", 3, |_| {});
        for (i, t) in batch.iter_mut().enumerate() {
            t.node_id = Some(format!("n{i:02}").into());
        }
        batch[2].reservations = Resources::new(0, 100 * G);
        batch.push(TaskRequest { node_id: Some("gone".into()), ..batch[0].clone() });
        let d = Pipeline::spread().schedule(&v, &batch);
        assert_eq!(d[0], Decision::Assign("n00".into()));
        assert_eq!(d[1], Decision::Assign("n01".into()));
        let Decision::Unschedulable(why) = &d[2] else { panic!() };
        assert_eq!(
            why.to_string(),
            "no suitable node (2 nodes are not the task's node; insufficient memory on 1 node)"
        );
        let Decision::Unschedulable(why) = &d[3] else { panic!() };
        assert_eq!(why.to_string(), "no suitable node (3 nodes are not the task's node)");
    }

    #[test]
    fn binpack_serves_the_most_constrained_groups_first() {
        // n00 is the only SSD node; 8 GiB per node.
        let mut v = view(&["", "", ""]);
        Arc::make_mut(&mut v.nodes[0].node).spec.labels.insert("disk".into(), "ssd".into());
        let mut batch = tasks("web", 8, |_| {});
        batch.extend(tasks("db", 4, |t| t.constraints = vec!["node.labels.disk==ssd".parse().unwrap()]));
        // In batch order, web fills n00 and db finds no room.
        let d = Pipeline::new("b", BestFit).schedule(&v, &batch);
        assert!(d[..8].iter().all(|x| *x == Decision::Assign("n00".into())));
        assert!(matches!(d[8], Decision::Unschedulable(_)));
        // Most constrained first: db takes half of n00, web the rest and n01.
        let d = Pipeline::binpack().schedule(&v, &batch);
        assert!(d[8..].iter().all(|x| *x == Decision::Assign("n00".into())), "{d:?}");
        let c = counts(&d);
        assert_eq!((c["n00"], c["n01"]), (8, 4), "{c:?}");
        assert_eq!(d.iter().filter(|x| matches!(x, Decision::Unschedulable(_))).count(), 0);
    }

    #[test]
    fn binpack_places_a_pass_largest_tasks_first() {
        // Nodes of 4 CPUs. In batch order, best fit puts the two 1-CPU
        // tasks on n00, then neither 3-CPU task fits there: 3 nodes.
        // Largest first (as first-fit-decreasing): each 3-CPU task opens a
        // node and a 1-CPU task fills each: 2 nodes.
        let v = view(&["", "", ""]);
        let mut batch = tasks("small", 2, |t| t.reservations = Resources::new(1_000_000_000, 0));
        batch.extend(tasks("large", 2, |t| t.reservations = Resources::new(3_000_000_000, 0)));
        let d = Pipeline::new("b", BestFit).schedule(&v, &batch);
        assert_eq!(counts(&d).len(), 3, "{d:?}");
        for packer in [Pipeline::binpack(), Pipeline::most_allocated()] {
            let mut packer = packer;
            let d = packer.schedule(&v, &batch);
            let c = counts(&d);
            assert_eq!((c.len(), c["n00"], c["n01"]), (2, 2, 2), "{}: {d:?}", packer.name());
        }
    }

    /// What `Scorer::score` documents: when ranking a candidate the node
    /// does not include the request; right after a placement the node is
    /// re-scored with the placed task on it. On both paths: per group
    /// (service a, shape seen once) and shared heap (service b, same shape).
    #[test]
    fn scorer_sees_the_node_without_the_task_then_with_it_after_placement() {
        use std::sync::Mutex;
        /// Records (task, service, tasks on the node) per call.
        #[derive(Default)]
        struct Recording(Mutex<Vec<(String, String, u32)>>);
        impl Scorer for Recording {
            fn name(&self) -> &str {
                "recording"
            }
            fn shareable(&self) -> bool {
                true
            }
            fn score(&self, node: &NodeInfo, req: &TaskRequest) -> f64 {
                let call = (req.task_id.to_string(), req.service_id.to_string(), node.total_tasks);
                self.0.lock().unwrap().push(call);
                0.0
            }
        }
        let scorer = Arc::new(Recording::default());
        struct Shared(Arc<Recording>);
        impl Scorer for Shared {
            fn name(&self) -> &str {
                self.0.name()
            }
            fn shareable(&self) -> bool {
                self.0.shareable()
            }
            fn score(&self, node: &NodeInfo, req: &TaskRequest) -> f64 {
                self.0.score(node, req)
            }
        }
        let v = view(&[""]);
        let mut batch = tasks("a", 1, |_| {});
        batch.extend(tasks("b", 1, |_| {}));
        let d = Pipeline::new("rec", Shared(scorer.clone())).schedule(&v, &batch);
        assert_eq!(d, vec![Decision::Assign("n00".into()), Decision::Assign("n00".into())]);
        let calls = scorer.0.lock().unwrap().clone();
        let call = |t: &str, s: &str, n: u32| (t.to_string(), s.to_string(), n);
        assert_eq!(
            calls,
            vec![
                call("a.0", "", 0),  // a's candidate, scored for no service: a.0 not on it
                call("a.0", "a", 1), // re-scored after a.0 was placed: a.0 on it
                call("b.0", "", 1),  // the shared heap built for b: b.0 not on it
                call("b.0", "b", 2), // re-scored after b.0 was placed: b.0 on it
            ]
        );
    }

    #[test]
    fn custom_filters_without_an_index_are_checked_per_node() {
        struct OddOnly;
        impl Filter for OddOnly {
            fn name(&self) -> &str {
                "odd"
            }
            fn is_static(&self) -> bool {
                true
            }
            fn check(&self, node: &NodeInfo, _req: &TaskRequest) -> Result<(), FilterFailure> {
                if node.node.id.as_str().ends_with(['1', '3']) {
                    Ok(())
                } else {
                    Err(FilterFailure::Other("even".into()))
                }
            }
        }
        let v = view(&["", "", "", ""]);
        let d = Pipeline::spread().with_filter(OddOnly).schedule(&v, &tasks("web", 2, |_| {}));
        assert_eq!(d, vec![Decision::Assign("n01".into()), Decision::Assign("n03".into())]);
        assert_eq!(
            Pipeline::by_name("nope").unwrap_err().to_string(),
            "unknown scheduler \"nope\": expected one of spread, binpack, most-allocated, least-allocated"
        );
        for name in Pipeline::NAMES {
            assert_eq!(Pipeline::by_name(name).unwrap().name(), name);
        }
    }
}
