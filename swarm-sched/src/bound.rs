//! A lower bound on the nodes a placement needs: the yardstick the
//! placement benchmark holds `nodes_used` against.
//!
//! [`lower_bound`] looks at the tasks a scheduler *placed* (not the ones it
//! left unschedulable: no placement of them exists to compare with) and
//! returns the largest of these bounds, each a count of nodes that every
//! placement of those tasks honouring the standard filters must touch:
//!
//! - **capacity**, per resource (CPU, memory): the fewest schedulable nodes
//!   whose free capacity (before the batch), largest first, adds up to the
//!   placed tasks' total reservation. Any `k` nodes hold at most what the
//!   `k` largest hold, so fewer nodes cannot fit the total.
//! - **capacity per constraint class**: the same, over the tasks with one
//!   set of constraints, platforms and fixed node, against only the nodes
//!   that pass those static filters; those tasks cannot go anywhere else.
//! - **max replicas**: a service whose tasks all allow at most `r` per node
//!   and placed `n` of them needs `ceil(n / r)` nodes.
//! - **host ports**: `n` tasks publishing the same host port need `n`
//!   nodes (a port is bound once per node).
//! - **one task**: a placement of at least one task uses at least one node.
//!
//! The maximum of lower bounds is a lower bound, so the result never
//! exceeds the nodes a valid placement of the same tasks uses. It ignores
//! fragmentation (tasks do not split across nodes), so it can be below the
//! best placement.
//!
//! ```
//! use swarm_core::scheduler::Scheduler;
//! use swarm_sched::bound::lower_bound;
//! use swarm_sched::workload::{Workload, WorkloadKind};
//! use swarm_sched::Pipeline;
//! let w = Workload::generate(WorkloadKind::FewHuge, 100, 1000, 1);
//! let d = Pipeline::binpack().schedule(&w.view, &w.tasks);
//! let b = lower_bound(&w.view, &w.tasks, &d);
//! let m = swarm_sched::workload::measure(&w.view, &w.tasks, &d);
//! assert!(b.nodes <= m.nodes_used, "{} by {}", b.nodes, b.by);
//! assert_eq!(m.lower_bound, b);
//! ```

use crate::filter::{Filter, standard_filters};
use crate::index::{NodeIndex, NodeSet};
use std::collections::HashMap;
use std::fmt;
use swarm_core::constraint::Constraint;
use swarm_core::id::{NodeId, ServiceId};
use swarm_core::model::{Platform, Protocol};
use swarm_core::scheduler::{ClusterView, Decision, Explanation, HostPort, TaskRequest};

/// Constraint classes looked at separately, the ones with the most placed
/// tasks first (each costs a pass over its eligible nodes).
pub const MAX_CLASSES: usize = 256;

/// A resource the capacity bounds add up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    /// Nano-CPUs.
    Cpu,
    /// Memory bytes.
    Memory,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
        })
    }
}

/// Which bound gave [`LowerBound::nodes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BoundBy {
    /// No task was placed.
    NothingPlaced,
    /// At least one task was placed, and every capacity bound was 0 (tasks
    /// reserving nothing).
    OneTask,
    /// The placed tasks' total `resource` against every schedulable node.
    Capacity {
        /// CPU or memory.
        resource: Resource,
        /// Schedulable nodes.
        nodes: usize,
    },
    /// The total `resource` of the placed tasks of one constraint class
    /// against the nodes that pass its static filters.
    Class {
        /// CPU or memory.
        resource: Resource,
        /// The class: its constraints, platforms or fixed node.
        class: String,
        /// Nodes passing the class's static filters.
        nodes: usize,
    },
    /// A service's placed tasks over its most tasks per node.
    MaxReplicas {
        /// The service.
        service: ServiceId,
        /// Most tasks per node.
        max_replicas: u64,
        /// Its placed tasks.
        tasks: usize,
    },
    /// Placed tasks publishing the same host port.
    HostPort {
        /// The port.
        port: HostPort,
        /// Placed tasks publishing it.
        tasks: usize,
    },
}

impl BoundBy {
    /// A one-word name for tables: `none`, `one-task`, `cpu`, `memory`,
    /// `class-cpu`, `class-memory`, `max-replicas`, `host-port`.
    pub fn short(&self) -> &'static str {
        match self {
            BoundBy::NothingPlaced => "none",
            BoundBy::OneTask => "one-task",
            BoundBy::Capacity { resource: Resource::Cpu, .. } => "cpu",
            BoundBy::Capacity { resource: Resource::Memory, .. } => "memory",
            BoundBy::Class { resource: Resource::Cpu, .. } => "class-cpu",
            BoundBy::Class { resource: Resource::Memory, .. } => "class-memory",
            BoundBy::MaxReplicas { .. } => "max-replicas",
            BoundBy::HostPort { .. } => "host-port",
        }
    }
}

impl fmt::Display for BoundBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoundBy::NothingPlaced => f.write_str("no task placed"),
            BoundBy::OneTask => f.write_str("at least one task placed"),
            BoundBy::Capacity { resource, nodes } => {
                write!(f, "{resource} of the placed tasks over the {nodes} schedulable nodes")
            }
            BoundBy::Class { resource, class, nodes } => {
                write!(f, "{resource} of the placed tasks with {class} over the {nodes} nodes they can use")
            }
            BoundBy::MaxReplicas { service, max_replicas, tasks } => {
                write!(f, "{tasks} placed tasks of {service} at most {max_replicas} per node")
            }
            BoundBy::HostPort { port: (proto, port), tasks } => {
                let proto = match proto {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                };
                write!(f, "{tasks} placed tasks publishing host port {port}/{proto}")
            }
        }
    }
}

/// A lower bound on the nodes a placement uses, and the bound that gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LowerBound {
    /// Nodes.
    pub nodes: usize,
    /// Which bound.
    pub by: BoundBy,
}

/// What the static filters look at: tasks alike in these can use the same
/// nodes.
type ClassKey<'a> = (&'a [Constraint], &'a [Platform], Option<&'a NodeId>);

#[derive(Default)]
struct Totals {
    cpu: u128,
    memory: u128,
    tasks: usize,
}

impl Totals {
    fn add(&mut self, t: &TaskRequest) {
        self.cpu += u128::from(t.reservations.nano_cpus);
        self.memory += u128::from(t.reservations.memory_bytes);
        self.tasks += 1;
    }
}

/// Fewest of `caps`, largest first, that add up to `total`; all of them
/// when they fall short (the placement overcommitted: it broke the
/// resource filter).
fn fewest_holding(mut caps: Vec<u64>, total: u128) -> usize {
    caps.sort_unstable_by(|a, b| b.cmp(a));
    let mut sum = 0u128;
    for (k, c) in caps.iter().enumerate() {
        if sum >= total {
            return k;
        }
        sum += u128::from(*c);
    }
    caps.len()
}

/// Keeps the larger bound; ties keep the first found.
fn raise(best: &mut LowerBound, nodes: usize, by: impl FnOnce() -> BoundBy) {
    if nodes > best.nodes {
        *best = LowerBound { nodes, by: by() };
    }
}

fn describe(key: &ClassKey<'_>) -> String {
    let mut parts: Vec<String> = key.0.iter().map(|c| c.to_string()).collect();
    if !key.1.is_empty() {
        let ps: Vec<String> = key.1.iter().map(|p| format!("{}/{}", p.os, p.architecture)).collect();
        parts.push(format!("platform {}", ps.join("|")));
    }
    if let Some(n) = key.2 {
        parts.push(format!("node {n}"));
    }
    parts.join(";")
}

/// The lower bound on the nodes used by `decisions` (one per task of
/// `tasks`, as a scheduler returned them on `view`), over the tasks they
/// place. See the [module docs](self).
pub fn lower_bound(view: &ClusterView, tasks: &[TaskRequest], decisions: &[Decision]) -> LowerBound {
    let index = NodeIndex::new(view);
    let mut all = Totals::default();
    let mut classes: HashMap<ClassKey<'_>, (usize, Totals)> = HashMap::new();
    // Per service: placed tasks, and the largest max_replicas (None once a
    // task has no limit).
    let mut services: HashMap<&ServiceId, (usize, Option<u64>)> = HashMap::new();
    let mut ports: HashMap<HostPort, usize> = HashMap::new();
    for (i, (t, d)) in tasks.iter().zip(decisions).enumerate() {
        let Decision::Assign(node) = d else { continue };
        if index.position(node).is_none() {
            continue;
        }
        all.add(t);
        let key: ClassKey<'_> = (&t.constraints, &t.platforms, t.node_id.as_ref());
        classes.entry(key).or_insert_with(|| (i, Totals::default())).1.add(t);
        let s = services.entry(&t.service_id).or_insert((0, Some(0)));
        s.0 += 1;
        s.1 = match (s.1, t.max_replicas) {
            (Some(r), m) if m > 0 => Some(r.max(m)),
            _ => None,
        };
        let mut seen: Vec<HostPort> = Vec::new();
        for p in &t.host_ports {
            if !seen.contains(p) {
                seen.push(*p);
                *ports.entry(*p).or_insert(0) += 1;
            }
        }
    }
    if all.tasks == 0 {
        return LowerBound { nodes: 0, by: BoundBy::NothingPlaced };
    }
    let mut best = LowerBound { nodes: 1, by: BoundBy::OneTask };

    let statics: Vec<Box<dyn Filter>> = standard_filters().into_iter().filter(|f| f.is_static()).collect();
    let eligible = |req: &TaskRequest| -> NodeSet {
        let mut alive = NodeSet::full(view.nodes.len());
        let mut why = Explanation::new(view.nodes.len());
        for f in statics.iter().filter(|f| f.relevant(req)) {
            if !f.check_indexed(view, &index, req, &mut alive, &mut why) {
                for i in alive.clone().iter() {
                    if f.check(&view.nodes[i], req).is_err() {
                        alive.remove(i);
                    }
                }
            }
        }
        alive
    };
    let caps = |set: &NodeSet, r: Resource| -> Vec<u64> {
        set.iter()
            .map(|i| match r {
                Resource::Cpu => view.nodes[i].available.nano_cpus,
                Resource::Memory => view.nodes[i].available.memory_bytes,
            })
            .collect()
    };

    let schedulable = eligible(&TaskRequest::default());
    let n_schedulable = schedulable.count();
    for (resource, total) in [(Resource::Cpu, all.cpu), (Resource::Memory, all.memory)] {
        let k = fewest_holding(caps(&schedulable, resource), total);
        raise(&mut best, k, || BoundBy::Capacity { resource, nodes: n_schedulable });
    }

    let mut by_size: Vec<(ClassKey<'_>, (usize, Totals))> = classes.into_iter().collect();
    by_size.sort_by(|a, b| b.1.1.tasks.cmp(&a.1.1.tasks).then(a.1.0.cmp(&b.1.0)));
    for (key, (first, totals)) in by_size.into_iter().take(MAX_CLASSES) {
        let set = eligible(&tasks[first]);
        let n = set.count();
        if n == n_schedulable {
            continue; // the same nodes as the overall bound, with fewer tasks
        }
        for (resource, total) in [(Resource::Cpu, totals.cpu), (Resource::Memory, totals.memory)] {
            let k = fewest_holding(caps(&set, resource), total);
            raise(&mut best, k, || BoundBy::Class { resource, class: describe(&key), nodes: n });
        }
    }

    let mut services: Vec<(&ServiceId, (usize, Option<u64>))> = services.into_iter().collect();
    services.sort_by(|a, b| a.0.cmp(b.0));
    for (service, (placed, max)) in services {
        if let Some(r) = max.filter(|r| *r > 0) {
            let k = placed.div_ceil(usize::try_from(r).unwrap_or(usize::MAX));
            raise(&mut best, k, || BoundBy::MaxReplicas { service: service.clone(), max_replicas: r, tasks: placed });
        }
    }
    let mut ports: Vec<(HostPort, usize)> = ports.into_iter().collect();
    ports.sort();
    for (port, n) in ports {
        raise(&mut best, n, || BoundBy::HostPort { port, tasks: n });
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use swarm_core::model::{Node, Resources};
    use swarm_core::scheduler::NodeInfo;

    const CPU: u64 = 1_000_000_000;
    const GIB: u64 = 1 << 30;

    /// A node: id, CPUs, labels.
    type NodeSpec<'a> = (&'a str, u64, &'a [(&'a str, &'a str)]);

    fn view(nodes: &[NodeSpec<'_>]) -> ClusterView {
        let nodes = nodes
            .iter()
            .map(|(id, cpus, labels)| {
                let mut n = Node::ready(*id, *id, Resources::new(cpus * CPU, 64 * GIB));
                n.spec.labels.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
                NodeInfo::new(Arc::new(n))
            })
            .collect();
        ClusterView { nodes }
    }

    fn task(svc: &str, i: usize, cpus: u64) -> TaskRequest {
        TaskRequest {
            task_id: format!("{svc}.{i}").into(),
            service_id: svc.into(),
            reservations: Resources::new(cpus * CPU, GIB),
            ..Default::default()
        }
    }

    fn on(nodes: &[&str]) -> Vec<Decision> {
        nodes.iter().map(|n| Decision::Assign((*n).into())).collect()
    }

    #[test]
    fn unplaced_tasks_do_not_count() {
        let v = view(&[("a", 4, &[]), ("b", 4, &[])]);
        let tasks: Vec<TaskRequest> = (0..3).map(|i| task("s", i, 4)).collect();
        // Two fit; the third is unschedulable. Counting it would say 3 > 2
        // nodes, more than the cluster has.
        let mut d = on(&["a", "b"]);
        d.push(Decision::Unschedulable(Explanation::new(2)));
        let b = lower_bound(&v, &tasks, &d);
        assert_eq!(b, LowerBound { nodes: 2, by: BoundBy::Capacity { resource: Resource::Cpu, nodes: 2 } });
        assert_eq!(b.by.to_string(), "cpu of the placed tasks over the 2 schedulable nodes");
        assert_eq!(lower_bound(&v, &tasks, &[]).by, BoundBy::NothingPlaced);
    }

    #[test]
    fn a_constraint_class_is_bounded_on_its_own_nodes() {
        // One big node (16) and two small SSD nodes (4 each); 8 CPUs of
        // SSD-only tasks need both SSD nodes, though the big node alone
        // could hold the total.
        let v = view(&[("big", 16, &[]), ("s1", 4, &[("disk", "ssd")]), ("s2", 4, &[("disk", "ssd")])]);
        let mut tasks: Vec<TaskRequest> = (0..2).map(|i| task("db", i, 4)).collect();
        for t in &mut tasks {
            t.constraints = vec!["node.labels.disk==ssd".parse().unwrap()];
        }
        let b = lower_bound(&v, &tasks, &on(&["s1", "s2"]));
        assert_eq!(b.nodes, 2);
        assert_eq!(b.by, BoundBy::Class { resource: Resource::Cpu, class: "node.labels.disk==ssd".into(), nodes: 2 });
        assert_eq!(b.by.short(), "class-cpu");
    }

    #[test]
    fn max_replicas_and_host_ports_bound_the_nodes() {
        let v = view(&[("a", 64, &[]), ("b", 64, &[]), ("c", 64, &[]), ("d", 64, &[])]);
        let mut tasks: Vec<TaskRequest> = (0..5).map(|i| task("web", i, 0)).collect();
        for t in &mut tasks {
            t.max_replicas = 2;
        }
        let b = lower_bound(&v, &tasks, &on(&["a", "a", "b", "b", "c"]));
        assert_eq!(
            b,
            LowerBound { nodes: 3, by: BoundBy::MaxReplicas { service: "web".into(), max_replicas: 2, tasks: 5 } }
        );
        for t in &mut tasks {
            t.max_replicas = 0;
            t.host_ports = vec![(Protocol::Tcp, 80), (Protocol::Tcp, 80)];
        }
        let b = lower_bound(&v, &tasks[..4], &on(&["a", "b", "c", "d"]));
        assert_eq!(b, LowerBound { nodes: 4, by: BoundBy::HostPort { port: (Protocol::Tcp, 80), tasks: 4 } });
        assert_eq!(b.by.to_string(), "4 placed tasks publishing host port 80/tcp");
        // Tasks that reserve nothing still use a node.
        let b = lower_bound(&v, &[task("x", 0, 0)], &on(&["a"]));
        assert_eq!(b, LowerBound { nodes: 1, by: BoundBy::OneTask });
    }

    #[test]
    fn sums_do_not_overflow() {
        let mut n = Node::ready("a", "a", Resources::new(u64::MAX, u64::MAX));
        n.spec.labels.insert("k".into(), "v".into());
        let v = ClusterView {
            nodes: vec![NodeInfo::new(Arc::new(n.clone())), NodeInfo::new(Arc::new(Node { id: "b".into(), ..n }))],
        };
        let t = TaskRequest { reservations: Resources::new(u64::MAX, u64::MAX), ..task("s", 0, 0) };
        let b = lower_bound(&v, &[t.clone(), t], &on(&["a", "b"]));
        assert_eq!(b.nodes, 2);
    }
}
