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
use crate::index::{NodeIndex, NodeSet};
use crate::score::{BestFit, LeastAllocated, MostAllocated, Scorer, Spread};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use swarm_core::model::Node;
use swarm_core::scheduler::{ClusterView, Decision, Explanation, FilterFailure, NodeInfo, Scheduler, TaskRequest};

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
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name)
            .field("filters", &self.filters.iter().map(|x| x.name()).collect::<Vec<_>>())
            .field("scorer", &self.scorer.name())
            .finish()
    }
}

impl Pipeline {
    /// Names accepted by [`Pipeline::by_name`].
    pub const NAMES: [&'static str; 4] = ["spread", "binpack", "most-allocated", "least-allocated"];

    /// The standard filters and `scorer`, called `name`.
    pub fn new(name: impl Into<String>, scorer: impl Scorer + 'static) -> Self {
        Pipeline { name: name.into(), filters: standard_filters(), scorer: Box::new(scorer) }
    }

    /// Swarm's spread ([`Spread`]).
    pub fn spread() -> Self {
        Self::new("spread", Spread::default())
    }

    /// Bin packing with Nomad's BestFit v3 ([`BestFit`]).
    pub fn binpack() -> Self {
        Self::new("binpack", BestFit)
    }

    /// Bin packing with Kubernetes' MostAllocated ([`MostAllocated`]).
    pub fn most_allocated() -> Self {
        Self::new("most-allocated", MostAllocated)
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
        let index = NodeIndex::new(view);
        let mut work = view.nodes.clone();
        let mut out = vec![Decision::Unschedulable(Explanation::new(view.nodes.len())); batch.len()];
        let groups = group_batch(batch);
        let mut placed = 0usize;
        for group in &groups {
            placed += self.schedule_group(view, &index, &mut work, batch, group, &mut out);
        }
        tracing::debug!(
            scheduler = %self.name,
            nodes = view.nodes.len(),
            tasks = batch.len(),
            groups = groups.len(),
            placed,
            "scheduled batch"
        );
        out
    }
}

/// A node in a heap: best score first, then the lowest position.
#[derive(Clone, Copy, Debug)]
struct Entry {
    score: f64,
    idx: usize,
}

impl Entry {
    fn new(score: f64, idx: usize) -> Self {
        Entry { score: if score.is_nan() { f64::NEG_INFINITY } else { score }, idx }
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
        self.score.total_cmp(&other.score).then(other.idx.cmp(&self.idx))
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
    if let Some(k) = descriptor.strip_prefix("node.labels.") {
        Some(node.spec.labels.get(k).map(String::as_str).unwrap_or(""))
    } else if let Some(k) = descriptor.strip_prefix("engine.labels.") {
        Some(node.description.engine_labels.get(k).map(String::as_str).unwrap_or(""))
    } else {
        None
    }
}

impl Tree {
    fn build(entries: Vec<Entry>, prefs: &[String], nodes: &[NodeInfo], req: &TaskRequest) -> Tree {
        let Some((first, rest)) = prefs.split_first() else {
            return Tree::Leaf(BinaryHeap::from(entries));
        };
        if entries.first().is_some_and(|e| descriptor_value(&nodes[e.idx].node, first).is_none()) {
            tracing::warn!(
                descriptor = %first,
                service = %req.service_id,
                "ignoring unknown spread preference: expected node.labels.<key> or engine.labels.<key>"
            );
            return Tree::build(entries, rest, nodes, req);
        }
        let mut by_value: BTreeMap<&str, Vec<Entry>> = BTreeMap::new();
        for e in entries {
            let v = descriptor_value(&nodes[e.idx].node, first).unwrap_or("");
            by_value.entry(v).or_default().push(e);
        }
        let branches = by_value
            .into_values()
            .map(|es| Branch {
                count: es.iter().map(|e| u64::from(nodes[e.idx].service_tasks(&req.service_id))).sum(),
                done: false,
                tree: Tree::build(es, rest, nodes, req),
            })
            .collect();
        Tree::Split(branches)
    }

    /// The best node accepted by `take` (which re-checks, reserves and
    /// returns the node's new score, or `None` to drop the node).
    fn pick(&mut self, take: &mut dyn FnMut(usize) -> Option<f64>) -> Option<usize> {
        match self {
            Tree::Leaf(heap) => {
                while let Some(e) = heap.pop() {
                    if let Some(score) = take(e.idx) {
                        heap.push(Entry::new(score, e.idx));
                        return Some(e.idx);
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

impl Pipeline {
    /// Schedules one group; returns how many tasks were placed.
    fn schedule_group(
        &self,
        view: &ClusterView,
        index: &NodeIndex,
        work: &mut [NodeInfo],
        batch: &[TaskRequest],
        group: &[usize],
        out: &mut [Decision],
    ) -> usize {
        let Some(&first) = group.first() else { return 0 };
        let rep = &batch[first];
        let n = work.len();
        if rep.node_id.is_some() {
            return group.iter().filter(|&&t| self.schedule_fixed(index, work, &batch[t], &mut out[t])).count();
        }

        // 1. Static filters, once for the group.
        let mut why_static = Explanation::new(n);
        let mut alive = NodeSet::full(n);
        for f in self.filters.iter().filter(|f| f.is_static() && f.relevant(rep)) {
            if !f.check_indexed(view, index, rep, &mut alive, &mut why_static) {
                for i in alive.clone().iter() {
                    if let Err(e) = f.check(&work[i], rep) {
                        alive.remove(i);
                        why_static.add(&e);
                    }
                }
            }
        }
        let dynamic: Vec<&dyn Filter> =
            self.filters.iter().filter(|f| !f.is_static() && f.relevant(rep)).map(|f| f.as_ref()).collect();
        let dyn_check = |info: &NodeInfo, req: &TaskRequest| -> Result<(), FilterFailure> {
            for f in &dynamic {
                f.check(info, req)?;
            }
            Ok(())
        };

        // 2-3. Candidates that can take one task now, scored, in a tree.
        let statics: Vec<usize> = alive.iter().collect();
        let entries: Vec<Entry> = statics
            .iter()
            .filter(|&&i| dyn_check(&work[i], rep).is_ok())
            .map(|&i| Entry::new(self.scorer.score(&work[i], rep), i))
            .collect();
        let candidates = entries.len();
        let mut tree = Tree::build(entries, &rep.preferences, work, rep);

        // 4. One pop per task.
        let mut placed = 0;
        let mut exhausted: Option<Explanation> = None;
        for &t in group {
            let req = &batch[t];
            if let Some(why) = &exhausted {
                out[t] = Decision::Unschedulable(why.clone());
                continue;
            }
            let scorer = &self.scorer;
            let picked = tree.pick(&mut |i| {
                let info = &mut work[i];
                dyn_check(info, req).ok()?;
                info.reserve(req);
                Some(scorer.score(info, req))
            });
            match picked {
                Some(i) => {
                    out[t] = Decision::Assign(work[i].node.id.clone());
                    placed += 1;
                }
                None => {
                    let mut why = why_static.clone();
                    for &i in &statics {
                        if let Err(e) = dyn_check(&work[i], req) {
                            why.add(&e);
                        }
                    }
                    tracing::debug!(service = %req.service_id, reason = %why, "task unschedulable");
                    out[t] = Decision::Unschedulable(why.clone());
                    exhausted = Some(why);
                }
            }
        }
        tracing::trace!(service = %rep.service_id, tasks = group.len(), candidates, placed, "scheduled group");
        placed
    }

    /// A task fixed to one node: every filter on that node alone.
    fn schedule_fixed(&self, index: &NodeIndex, work: &mut [NodeInfo], req: &TaskRequest, out: &mut Decision) -> bool {
        let n = work.len();
        let mut why = Explanation::new(n);
        let Some(i) = req.node_id.as_ref().and_then(|id| index.position(id)) else {
            why.add_n(FilterFailure::OtherNode, n);
            *out = Decision::Unschedulable(why);
            return false;
        };
        match first_failure(&self.filters, &work[i], req) {
            Ok(()) => {
                work[i].reserve(req);
                *out = Decision::Assign(work[i].node.id.clone());
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
        let d = Pipeline::spread().schedule(&v, &tasks("web", 6, |t| t.preferences = vec!["node.labels.zone".into()]));
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
