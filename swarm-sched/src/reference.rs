//! An offline reference packer for the placement benchmark:
//! first-fit-decreasing over the standard filters. Not a scheduler the
//! manager uses: it sees the whole batch at once, reorders it freely and
//! ignores spread preferences; it is the yardstick `placement_bench`
//! holds every scheduler's nodes used against.
//!
//! [`first_fit_decreasing`]:
//! 1. tasks by size, largest first: CPU plus memory at
//!    [`MEMORY_PER_CPU`](crate::score::MEMORY_PER_CPU) per CPU, ties in
//!    batch order;
//! 2. nodes by free capacity (the same measure), largest first, ties by
//!    position in the view;
//! 3. each task goes to the first node in that order that passes every
//!    standard filter (swarm-core's `check_node`: ready, active, fixed
//!    node, constraints, platform, resources, host ports, max replicas)
//!    with the tasks placed so far.
//!
//! Finding the first node is a descent of a tree of the largest free CPU
//! and memory per range of nodes, one tree per constraint class (tasks with
//! the same constraints and platforms see the same nodes), starting where
//! the group's previous task went (the nodes before it failed that shape
//! and still do), so the packer runs in about O(tasks x log nodes) plus
//! the nodes a group skips for host ports or max replicas.
//!
//! ```
//! use swarm_sched::reference::first_fit_decreasing;
//! use swarm_sched::workload::{Workload, WorkloadKind, measure};
//! let w = Workload::generate(WorkloadKind::Production, 200, 2000, 1);
//! let d = first_fit_decreasing(&w.view, &w.tasks);
//! let m = measure(&w.view, &w.tasks, &d);
//! assert_eq!(m.placed + m.unschedulable, 2000);
//! assert!(m.lower_bound.nodes <= m.nodes_used);
//! ```

use crate::batch::group_batch;
use crate::filter::{Filter, standard_filters};
use crate::index::{NodeIndex, NodeSet};
use crate::score::cpu_equivalents;
use std::cmp::Reverse;
use std::collections::HashMap;
use swarm_core::constraint::Constraint;
use swarm_core::model::Platform;
use swarm_core::scheduler::{ClusterView, Decision, Explanation, NodeInfo, TaskRequest, check_node};

/// The largest free CPU and memory over ranges of a class's nodes (in the
/// packer's node order): a segment tree over a power-of-two number of
/// leaves.
struct FitTree {
    /// The class's nodes (view positions), largest first.
    members: Vec<usize>,
    leaves: usize,
    cpu: Vec<u64>,
    mem: Vec<u64>,
}

impl FitTree {
    fn new(members: Vec<usize>, nodes: &[NodeInfo]) -> Self {
        let leaves = members.len().next_power_of_two().max(1);
        let mut t = FitTree { members, leaves, cpu: vec![0; 2 * leaves], mem: vec![0; 2 * leaves] };
        for (slot, &i) in t.members.iter().enumerate() {
            t.cpu[leaves + slot] = nodes[i].available.nano_cpus;
            t.mem[leaves + slot] = nodes[i].available.memory_bytes;
        }
        for k in (1..leaves).rev() {
            t.cpu[k] = t.cpu[2 * k].max(t.cpu[2 * k + 1]);
            t.mem[k] = t.mem[2 * k].max(t.mem[2 * k + 1]);
        }
        t
    }

    fn set(&mut self, slot: usize, node: &NodeInfo) {
        let mut k = self.leaves + slot;
        self.cpu[k] = node.available.nano_cpus;
        self.mem[k] = node.available.memory_bytes;
        while k > 1 {
            k /= 2;
            self.cpu[k] = self.cpu[2 * k].max(self.cpu[2 * k + 1]);
            self.mem[k] = self.mem[2 * k].max(self.mem[2 * k + 1]);
        }
    }

    /// The first slot at or after `from` with at least `cpu` and `mem`
    /// free.
    fn first_fit(&self, from: usize, cpu: u64, mem: u64) -> Option<usize> {
        self.search(1, 0, self.leaves, from, cpu, mem)
    }

    fn search(&self, k: usize, lo: usize, hi: usize, from: usize, cpu: u64, mem: u64) -> Option<usize> {
        if hi <= from || lo >= self.members.len() || self.cpu[k] < cpu || self.mem[k] < mem {
            return None;
        }
        if hi - lo == 1 {
            return Some(lo);
        }
        let mid = (lo + hi) / 2;
        self.search(2 * k, lo, mid, from, cpu, mem).or_else(|| self.search(2 * k + 1, mid, hi, from, cpu, mem))
    }
}

/// What the static filters of a task without a fixed node look at.
type ClassKey<'a> = (&'a [Constraint], &'a [Platform]);

/// First-fit-decreasing of `tasks` onto `view`: one decision per task, in
/// the tasks' order. See the [module docs](self). An unplaced task's
/// explanation counts, over every node, the first filter each fails for
/// the first task of its group (same service, version and needs) the
/// packer could not place, at that moment.
pub fn first_fit_decreasing(view: &ClusterView, tasks: &[TaskRequest]) -> Vec<Decision> {
    let n = view.nodes.len();
    let mut work = view.nodes.clone();
    let index = NodeIndex::new(view);
    let size = |r: &swarm_core::model::Resources| cpu_equivalents(r.nano_cpus, r.memory_bytes);
    let mut node_order: Vec<usize> = (0..n).collect();
    node_order.sort_by_key(|&i| (Reverse(size(&work[i].available)), i));

    let statics: Vec<Box<dyn Filter>> = standard_filters().into_iter().filter(|f| f.is_static()).collect();
    let mut classes: HashMap<ClassKey<'_>, usize> = HashMap::new();
    let mut trees: Vec<FitTree> = Vec::new();
    // Per node: (class, slot) of every tree it is in.
    let mut slots: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
    let mut class_of: Vec<Option<usize>> = vec![None; tasks.len()];
    for (t, req) in tasks.iter().enumerate() {
        if req.node_id.is_some() {
            continue;
        }
        let key: ClassKey<'_> = (&req.constraints, &req.platforms);
        let c = *classes.entry(key).or_insert_with(|| {
            let mut alive = NodeSet::full(n);
            let mut why = Explanation::new(n);
            for f in statics.iter().filter(|f| f.relevant(req)) {
                if !f.check_indexed(view, &index, req, &mut alive, &mut why) {
                    for i in alive.clone().iter() {
                        if f.check(&view.nodes[i], req).is_err() {
                            alive.remove(i);
                        }
                    }
                }
            }
            let members: Vec<usize> = node_order.iter().copied().filter(|&i| alive.contains(i)).collect();
            let c = trees.len();
            for (slot, &i) in members.iter().enumerate() {
                slots[i].push((c, slot));
            }
            trees.push(FitTree::new(members, &work));
            c
        });
        class_of[t] = Some(c);
    }

    let mut order: Vec<usize> = (0..tasks.len()).collect();
    order.sort_by_key(|&t| (Reverse(size(&tasks[t].reservations)), t));
    let group_of: Vec<usize> = {
        let mut g = vec![0; tasks.len()];
        for (k, members) in group_batch(tasks).into_iter().enumerate() {
            for t in members {
                g[t] = k;
            }
        }
        g
    };
    let mut explained: HashMap<usize, Explanation> = HashMap::new();
    // Per group, the slot its last task went to: every earlier slot failed
    // a task of the same shape, and keeps failing it (placements only
    // consume resources, ports and replica slots).
    let mut cursor: Vec<usize> = vec![0; tasks.len()];
    let mut out: Vec<Option<Decision>> = vec![None; tasks.len()];
    for t in order {
        let req = &tasks[t];
        let r = &req.reservations;
        let placed = match (class_of[t], &req.node_id) {
            (Some(c), _) => {
                let tree = &trees[c];
                let from = &mut cursor[group_of[t]];
                loop {
                    let Some(slot) = tree.first_fit(*from, r.nano_cpus, r.memory_bytes) else {
                        *from = tree.members.len();
                        break None;
                    };
                    *from = slot;
                    let i = tree.members[slot];
                    if check_node(&work[i], req).is_ok() {
                        break Some(i);
                    }
                    *from = slot + 1;
                }
            }
            (None, Some(id)) => index.position(id).filter(|&i| check_node(&work[i], req).is_ok()),
            (None, None) => None, // every task without a fixed node has a class
        };
        out[t] = Some(match placed {
            Some(i) => {
                work[i].reserve(req);
                for &(c, slot) in &slots[i] {
                    trees[c].set(slot, &work[i]);
                }
                Decision::Assign(work[i].node.id.clone())
            }
            None => {
                let why = explained.entry(group_of[t]).or_insert_with(|| {
                    let mut why = Explanation::new(n);
                    for node in &work {
                        if let Err(e) = check_node(node, req) {
                            why.add(&e);
                        }
                    }
                    why
                });
                Decision::Unschedulable(why.clone())
            }
        });
    }
    out.into_iter().map(|d| d.unwrap_or_else(|| Decision::Unschedulable(Explanation::new(n)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use swarm_core::model::{Node, Resources};

    const CPU: u64 = 1_000_000_000;
    const G: u64 = 1 << 30;

    fn view(cpus: &[u64]) -> ClusterView {
        let nodes = cpus
            .iter()
            .enumerate()
            .map(|(i, c)| {
                NodeInfo::new(Arc::new(Node::ready(format!("n{i}"), "h", Resources::new(c * CPU, c * 4 * G))))
            })
            .collect();
        ClusterView { nodes }
    }

    fn task(svc: &str, i: usize, cpus: u64) -> TaskRequest {
        TaskRequest {
            task_id: format!("{svc}.{i}").into(),
            service_id: svc.into(),
            reservations: Resources::new(cpus * CPU, cpus * G),
            ..Default::default()
        }
    }

    #[test]
    fn largest_tasks_first_onto_the_largest_nodes_first() {
        // Nodes of 4, 16 and 8 CPUs; tasks of 1, 6, 3, 6 CPUs. Decreasing:
        // 6 -> n1 (16), 6 -> n1 (4 left), 3 -> n1 (1 left), 1 -> n1 (0 left).
        let v = view(&[4, 16, 8]);
        let tasks = vec![task("a", 0, 1), task("b", 0, 6), task("c", 0, 3), task("b", 1, 6)];
        let d = first_fit_decreasing(&v, &tasks);
        assert!(d.iter().all(|x| *x == Decision::Assign("n1".into())), "{d:?}");
        // One more 6: the next largest node (8 CPUs), then 4 CPUs is too
        // small for another.
        let mut more = tasks.clone();
        more.push(task("b", 2, 6));
        more.push(task("b", 3, 6));
        let d = first_fit_decreasing(&v, &more);
        assert_eq!(d[4], Decision::Assign("n2".into()));
        let Decision::Unschedulable(why) = &d[5] else { panic!("{d:?}") };
        assert_eq!(why.to_string(), "no suitable node (insufficient cpu on 3 nodes)");
    }

    #[test]
    fn filters_hold() {
        let mut v = view(&[8, 8, 8]);
        Arc::make_mut(&mut v.nodes[2].node).spec.labels.insert("disk".into(), "ssd".into());
        let mut tasks: Vec<TaskRequest> = (0..3).map(|i| task("web", i, 1)).collect();
        for t in &mut tasks {
            t.max_replicas = 1;
        }
        let mut db = task("db", 0, 1);
        db.constraints = vec!["node.labels.disk==ssd".parse().unwrap()];
        tasks.push(db);
        let d = first_fit_decreasing(&v, &tasks);
        let mut replay = v.nodes.clone();
        for (t, x) in tasks.iter().zip(&d) {
            let Decision::Assign(id) = x else { panic!("{d:?}") };
            let i = replay.iter().position(|n| &n.node.id == id).unwrap();
            assert_eq!(check_node(&replay[i], t), Ok(()));
            replay[i].reserve(t);
        }
        assert_eq!(d[3], Decision::Assign("n2".into()));
    }
}
