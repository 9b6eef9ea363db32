//! The [`Scheduler`] trait: pure, synchronous task placement.
//!
//! Input: a [`ClusterView`] (every node with its capacity, what is reserved
//! on it, its labels and platform, how many tasks of each service it runs,
//! the host ports in use and recent failures) and a batch of
//! [`TaskRequest`]s. Output: one [`Decision`] per request, in order: a node,
//! or [`Decision::Unschedulable`] with an [`Explanation`] that counts why
//! nodes were rejected. No I/O and no clock: easy to test, benchmark and
//! replace. Implementations live in `swarm-sched`; [`check_node`] runs the
//! standard feasibility rules ([`feasibility`](crate::feasibility), written
//! once there; swarm-sched's standard filters are the same rules) so every
//! scheduler agrees on them.
//!
//! [`FirstFit`] is the smallest complete scheduler (read its source to
//! write your own); tests and examples use it where the placement is not
//! the point.
//!
//! ```
//! use swarm_core::model::{Node, Resources, ServiceSpec, Task};
//! use swarm_core::scheduler::*;
//! use swarm_core::state::{State, Transaction};
//! use swarm_core::time::Timestamp;
//! let node = Node::ready("n1", "host-1", Resources::new(1_000_000_000, 1 << 30));
//! let (state, _) = State::default().apply(&Transaction::new().create(node)).unwrap();
//! let view = ClusterView::from_state(&state, Timestamp::EPOCH);
//! let mut task = Task { id: "t1".into(), service_id: "s1".into(), ..Default::default() };
//! task.spec = ServiceSpec::replicated("web", "nginx:1.27", 1).task_template;
//! let request = TaskRequest::from_task(&task).unwrap();
//! let mut s: Box<dyn Scheduler> = Box::new(FirstFit);
//! assert_eq!(s.schedule(&view, &[request]), vec![Decision::Assign("n1".into())]);
//! ```

use crate::constraint::{Constraint, ConstraintError};
use crate::id::{NodeId, ServiceId, TaskId};
use crate::model::*;
use crate::state::State;
use crate::time::Timestamp;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

// The standard feasibility rules are written once, in `feasibility`; their
// entry points stay reachable here, where schedulers look for them.
pub use crate::feasibility::{check_node, platform_ok, resources_ok};

/// Places batches of tasks on nodes. See the [module docs](self).
pub trait Scheduler: Send {
    /// A short name ("spread", "binpack", ...).
    fn name(&self) -> &str;

    /// One decision per request, in the order of `batch`. Tasks of a batch
    /// see each other's placements (resources, ports, spread counts).
    fn schedule(&mut self, view: &ClusterView, batch: &[TaskRequest]) -> Vec<Decision>;
}

impl<S: Scheduler + ?Sized> Scheduler for Box<S> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn schedule(&mut self, view: &ClusterView, batch: &[TaskRequest]) -> Vec<Decision> {
        (**self).schedule(view, batch)
    }
}

/// A (protocol, port) pair published in host mode.
pub type HostPort = (Protocol, u32);

/// One node as the scheduler sees it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The node object.
    pub node: Arc<Node>,
    /// Capacity minus reservations of the tasks on it.
    pub available: Resources,
    /// Sum of the reservations of the tasks on it.
    pub reserved: Resources,
    /// Active tasks on it per service.
    pub tasks_by_service: HashMap<ServiceId, u32>,
    /// Active tasks on it in total.
    pub total_tasks: u32,
    /// Host-mode ports in use on it.
    pub host_ports: HashSet<HostPort>,
    /// Recent task failures on it per service (Swarm avoids such nodes).
    pub recent_failures: HashMap<ServiceId, u32>,
}

impl NodeInfo {
    /// A node with nothing on it.
    pub fn new(node: Arc<Node>) -> Self {
        NodeInfo {
            available: node.description.resources.clone(),
            node,
            reserved: Resources::default(),
            tasks_by_service: HashMap::new(),
            total_tasks: 0,
            host_ports: HashSet::new(),
            recent_failures: HashMap::new(),
        }
    }

    /// Accounts for `req` placed on this node.
    pub fn reserve(&mut self, req: &TaskRequest) {
        self.available.sub(&req.reservations);
        self.reserved.add(&req.reservations);
        *self.tasks_by_service.entry(req.service_id.clone()).or_insert(0) += 1;
        self.total_tasks += 1;
        self.host_ports.extend(req.host_ports.iter().copied());
    }

    /// Tasks of `service` on this node.
    pub fn service_tasks(&self, service: &ServiceId) -> u32 {
        self.tasks_by_service.get(service).copied().unwrap_or(0)
    }
}

/// The cluster as the scheduler sees it: nodes ordered by id.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    /// Every node (ready or not: the filters decide).
    pub nodes: Vec<NodeInfo>,
}

/// How long a task failure on a node counts against it (Swarm: 5 minutes).
pub const FAILURE_WINDOW: Duration = Duration::from_secs(300);

impl ClusterView {
    /// Builds the view from a store snapshot. A task counts on its node
    /// (resources, ports, per-service counts) while its observed state is
    /// not terminal; failures within [`FAILURE_WINDOW`] before `now` are
    /// counted per service.
    pub fn from_state(state: &State, now: Timestamp) -> ClusterView {
        let mut nodes: Vec<NodeInfo> = state.nodes().map(|n| NodeInfo::new(n.clone())).collect();
        let index: HashMap<NodeId, usize> = nodes.iter().enumerate().map(|(i, n)| (n.node.id.clone(), i)).collect();
        for task in state.tasks() {
            let Some(i) = task.node_id.as_ref().and_then(|n| index.get(n)) else { continue };
            let info = &mut nodes[*i];
            if !task.status.state.is_terminal() {
                let req = TaskRequest::resources_of(task);
                info.reserve(&req);
            } else if task.status.state == TaskState::Failed && now.since(task.status.timestamp) < FAILURE_WINDOW {
                *info.recent_failures.entry(task.service_id.clone()).or_insert(0) += 1;
            }
        }
        ClusterView { nodes }
    }
}

/// What the scheduler needs to know about one task.
#[derive(Clone, Debug, Default)]
pub struct TaskRequest {
    /// The task.
    pub task_id: TaskId,
    /// Its service.
    pub service_id: ServiceId,
    /// The service spec version it runs (batches group by it).
    pub spec_version: u64,
    /// A node fixed in advance (global services): only it is considered.
    pub node_id: Option<NodeId>,
    /// Parsed placement constraints.
    pub constraints: Vec<Constraint>,
    /// Spread preferences (descriptors like `node.labels.zone`), in order.
    pub preferences: Vec<String>,
    /// Most tasks of the service per node (0 = unlimited).
    pub max_replicas: u64,
    /// Platforms the task can run on (empty = any).
    pub platforms: Vec<Platform>,
    /// Resources to reserve.
    pub reservations: Resources,
    /// Host-mode ports it publishes.
    pub host_ports: Vec<HostPort>,
}

impl TaskRequest {
    /// Builds a request from a task (its placement, reservations and the
    /// host ports of its endpoint spec).
    pub fn from_task(task: &Task) -> Result<TaskRequest, ConstraintError> {
        let endpoint = &task.endpoint;
        let p = &task.spec.placement;
        Ok(TaskRequest {
            task_id: task.id.clone(),
            service_id: task.service_id.clone(),
            spec_version: task.spec_version,
            node_id: if task.slot.is_none() { task.node_id.clone() } else { None },
            constraints: Constraint::parse_all(&p.constraints)?,
            preferences: p.preferences.iter().map(|x| x.spread.clone()).collect(),
            max_replicas: p.max_replicas,
            platforms: p.platforms.clone(),
            reservations: task.spec.resources.reservations.clone(),
            host_ports: host_ports(endpoint),
        })
    }

    fn resources_of(task: &Task) -> TaskRequest {
        let ports = task
            .status
            .published_ports
            .iter()
            .filter(|p| p.publish_mode == PublishMode::Host)
            .filter_map(|p| p.published_port.map(|pp| (p.protocol, pp)))
            .collect();
        TaskRequest {
            task_id: task.id.clone(),
            service_id: task.service_id.clone(),
            reservations: task.spec.resources.reservations.clone(),
            host_ports: ports,
            ..Default::default()
        }
    }
}

/// The host-mode ports with a fixed published port in an endpoint spec.
pub fn host_ports(endpoint: &EndpointSpec) -> Vec<HostPort> {
    endpoint
        .ports
        .iter()
        .filter(|p| p.publish_mode == PublishMode::Host)
        .filter_map(|p| p.published_port.map(|pp| (p.protocol, pp)))
        .collect()
}

/// The scheduler's answer for one task.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Run it on this node.
    Assign(NodeId),
    /// No node can take it now.
    Unschedulable(Explanation),
}

/// Why one node cannot take a task.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FilterFailure {
    /// The node is not ready (down or unknown).
    NotReady,
    /// The node is paused or drained.
    NotActive,
    /// The task is fixed to another node.
    OtherNode,
    /// A constraint does not hold (the constraint, as written).
    Constraint(String),
    /// The platform is not one of the task's.
    Platform,
    /// Not enough CPU.
    InsufficientCpu,
    /// Not enough memory.
    InsufficientMemory,
    /// Not enough of a generic resource (its kind).
    InsufficientGeneric(String),
    /// A host port is taken (as "8080/tcp").
    HostPortInUse(String),
    /// The node already runs the most tasks of the service allowed.
    MaxReplicas(u64),
    /// Anything a custom filter reports.
    Other(String),
}

impl FilterFailure {
    fn describe(&self, n: usize) -> String {
        let nodes = if n == 1 { "1 node".to_string() } else { format!("{n} nodes") };
        let are = if n == 1 { "is" } else { "are" };
        let fail = if n == 1 { "fails" } else { "fail" };
        match self {
            FilterFailure::NotReady => format!("{nodes} {are} not ready"),
            FilterFailure::NotActive => format!("{nodes} {are} paused or drained"),
            FilterFailure::OtherNode => format!("{nodes} {are} not the task's node"),
            FilterFailure::Constraint(c) => format!("{nodes} {fail} constraint {c}"),
            FilterFailure::Platform => format!("{nodes} {fail} the platform requirement"),
            FilterFailure::InsufficientCpu => format!("insufficient cpu on {nodes}"),
            FilterFailure::InsufficientMemory => format!("insufficient memory on {nodes}"),
            FilterFailure::InsufficientGeneric(k) => format!("insufficient {k} on {nodes}"),
            FilterFailure::HostPortInUse(p) => format!("host port {p} in use on {nodes}"),
            FilterFailure::MaxReplicas(m) => format!("max replicas per node ({m}) reached on {nodes}"),
            FilterFailure::Other(s) => format!("{nodes}: {s}"),
        }
    }
}

/// Why a task could not be placed: failures counted per filter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Explanation {
    /// Nodes considered.
    pub nodes: usize,
    /// How many nodes each failure ruled out.
    pub failures: BTreeMap<FilterFailure, usize>,
}

impl Explanation {
    /// An empty explanation over `nodes` nodes.
    pub fn new(nodes: usize) -> Self {
        Explanation { nodes, failures: BTreeMap::new() }
    }

    /// Counts one node ruled out by `f`.
    pub fn add(&mut self, f: &FilterFailure) {
        *self.failures.entry(f.clone()).or_insert(0) += 1;
    }

    /// Counts `n` nodes ruled out by `f`.
    pub fn add_n(&mut self, f: FilterFailure, n: usize) {
        if n > 0 {
            *self.failures.entry(f).or_insert(0) += n;
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 0 {
            return f.write_str("no suitable node (no nodes in the cluster)");
        }
        f.write_str("no suitable node (")?;
        let mut parts: Vec<(&FilterFailure, &usize)> = self.failures.iter().collect();
        parts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (i, (fail, n)) in parts.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(&fail.describe(**n))?;
        }
        if parts.is_empty() {
            f.write_str("no node was considered")?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explanation_counts_per_filter() {
        let mut e = Explanation::new(5);
        for _ in 0..3 {
            e.add(&FilterFailure::InsufficientMemory);
        }
        e.add_n(FilterFailure::Constraint("node.labels.zone==eu".into()), 2);
        assert_eq!(
            e.to_string(),
            "no suitable node (insufficient memory on 3 nodes; 2 nodes fail constraint node.labels.zone==eu)"
        );
    }

    #[test]
    fn check_node_applies_each_rule() {
        let node = Arc::new(Node::ready("n1", "h1", Resources::new(2_000_000_000, 1 << 30)));
        let info = NodeInfo::new(node);
        let ok = TaskRequest { reservations: Resources::new(1_000_000_000, 1 << 29), ..Default::default() };
        assert_eq!(check_node(&info, &ok), Ok(()));
        let big = TaskRequest { reservations: Resources::new(0, 1 << 31), ..Default::default() };
        assert_eq!(check_node(&info, &big), Err(FilterFailure::InsufficientMemory));
        let gpu = TaskRequest { reservations: Resources::default().with_generic("gpu", 1), ..Default::default() };
        assert_eq!(check_node(&info, &gpu), Err(FilterFailure::InsufficientGeneric("gpu".into())));
        let c = TaskRequest { constraints: vec!["node.role==manager".parse().unwrap()], ..Default::default() };
        assert_eq!(check_node(&info, &c), Err(FilterFailure::Constraint("node.role==manager".into())));
        let arm = TaskRequest { platforms: vec![Platform::new("linux", "arm64")], ..Default::default() };
        assert_eq!(check_node(&info, &arm), Err(FilterFailure::Platform));
        let mut busy = info.clone();
        let port = TaskRequest { host_ports: vec![(Protocol::Tcp, 80)], max_replicas: 1, ..Default::default() };
        busy.reserve(&port);
        assert_eq!(check_node(&busy, &port), Err(FilterFailure::HostPortInUse("80/tcp".into())));
        let maxr = TaskRequest { max_replicas: 1, ..Default::default() };
        assert_eq!(check_node(&busy, &maxr), Err(FilterFailure::MaxReplicas(1)));
    }
}

/// Places every task on the first node (in the view's order) that passes
/// [`check_node`], reserving as it goes; explains the tasks no node can
/// take. The smallest complete [`Scheduler`]: for tests, examples, and as a
/// template. swarm-sched has the real ones.
#[derive(Clone, Copy, Debug, Default)]
pub struct FirstFit;

impl Scheduler for FirstFit {
    fn name(&self) -> &str {
        "first-fit"
    }

    fn schedule(&mut self, view: &ClusterView, batch: &[TaskRequest]) -> Vec<Decision> {
        let mut nodes = view.nodes.clone();
        batch
            .iter()
            .map(|req| {
                let mut why = Explanation::new(nodes.len());
                for node in nodes.iter_mut() {
                    match check_node(node, req) {
                        Ok(()) => {
                            node.reserve(req);
                            return Decision::Assign(node.node.id.clone());
                        }
                        Err(f) => why.add(&f),
                    }
                }
                Decision::Unschedulable(why)
            })
            .collect()
    }
}
