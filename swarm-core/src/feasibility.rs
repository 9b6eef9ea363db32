//! The standard feasibility rules: can this node take this task?
//!
//! Each rule is written once, here, as a [`Rule`] whose [`Rule::check`]
//! returns `Ok(())` or the [`FilterFailure`] that rules the node out (the
//! failure is the explanation a user reads). Everything that decides
//! feasibility goes through these rules: [`check_node`] runs
//! [`Rule::STANDARD`] in order; swarm-sched's standard filters are one rule
//! each (they add node-index fast paths for the static rules, built on the
//! same predicates: [`node_ready`], [`node_active`], [`platform_ok`],
//! [`Constraint::matches`]).
//!
//! A rule is *static* when it reads only the node object and the request
//! (ready and active, fixed node, constraints, platform): its function
//! takes a [`Node`], so it cannot look at placements. The others are
//! *dynamic* (resources, host ports, max replicas): they read what is
//! placed on the node ([`NodeInfo`]), and placing tasks only makes them
//! fail more. A rule that is not [`relevant`](Rule::relevant) to a request
//! passes on every node, so callers may skip it.
//!
//! ```
//! use std::sync::Arc;
//! use swarm_core::feasibility::{Rule, check_node};
//! use swarm_core::model::{Node, Resources};
//! use swarm_core::scheduler::{FilterFailure, NodeInfo, TaskRequest};
//! let info = NodeInfo::new(Arc::new(Node::ready("n1", "h1", Resources::new(1_000_000_000, 1 << 30))));
//! let big = TaskRequest { reservations: Resources::new(0, 1 << 31), ..Default::default() };
//! assert_eq!(Rule::Resources.check(&info, &big), Err(FilterFailure::InsufficientMemory));
//! assert_eq!(check_node(&info, &big), Err(FilterFailure::InsufficientMemory));
//! assert!(Rule::Ready.is_static() && !Rule::Resources.is_static());
//! ```

use crate::constraint::{Constraint, normalize_arch};
use crate::model::{Availability, Node, NodeState, Platform, Resources};
use crate::scheduler::{FilterFailure, HostPort, NodeInfo, TaskRequest};
use std::collections::HashSet;

/// One standard feasibility rule. See the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// The node is ready ([`FilterFailure::NotReady`]) and active, not
    /// paused or drained ([`FilterFailure::NotActive`]).
    Ready,
    /// A task fixed to a node (global services) goes there only
    /// ([`FilterFailure::OtherNode`]).
    FixedNode,
    /// Every placement constraint holds; the first that does not is named
    /// ([`FilterFailure::Constraint`]).
    Constraints,
    /// The node's platform is one of the task's ([`FilterFailure::Platform`]).
    Platform,
    /// The reservations fit in what is left on the node
    /// ([`FilterFailure::InsufficientCpu`], [`FilterFailure::InsufficientMemory`],
    /// [`FilterFailure::InsufficientGeneric`]).
    Resources,
    /// No host-mode port of the task is in use on the node
    /// ([`FilterFailure::HostPortInUse`]).
    HostPorts,
    /// The node runs fewer than `max_replicas` tasks of the service
    /// ([`FilterFailure::MaxReplicas`]).
    MaxReplicas,
}

impl Rule {
    /// Every rule, in Swarm's order: a node is explained by the first rule
    /// it fails.
    pub const STANDARD: [Rule; 7] = [
        Rule::Ready,
        Rule::FixedNode,
        Rule::Constraints,
        Rule::Platform,
        Rule::Resources,
        Rule::HostPorts,
        Rule::MaxReplicas,
    ];

    /// A short name ("ready", "constraints", ...).
    pub const fn name(self) -> &'static str {
        match self {
            Rule::Ready => "ready",
            Rule::FixedNode => "node",
            Rule::Constraints => "constraints",
            Rule::Platform => "platform",
            Rule::Resources => "resources",
            Rule::HostPorts => "host-ports",
            Rule::MaxReplicas => "max-replicas",
        }
    }

    /// True when the rule reads only the node object and the request, not
    /// what is placed on the node.
    pub const fn is_static(self) -> bool {
        matches!(self, Rule::Ready | Rule::FixedNode | Rule::Constraints | Rule::Platform)
    }

    /// False when the rule passes on every node for `req` (nothing to
    /// check: no fixed node, no constraint, ...). Ready is always relevant.
    #[inline]
    pub fn relevant(self, req: &TaskRequest) -> bool {
        match self {
            Rule::Ready => true,
            Rule::FixedNode => req.node_id.is_some(),
            Rule::Constraints => !req.constraints.is_empty(),
            Rule::Platform => !req.platforms.is_empty(),
            Rule::Resources => !req.reservations.is_zero(),
            Rule::HostPorts => !req.host_ports.is_empty(),
            Rule::MaxReplicas => req.max_replicas > 0,
        }
    }

    /// `Ok(())` when `info` passes this rule for `req`, else why not.
    #[inline]
    pub fn check(self, info: &NodeInfo, req: &TaskRequest) -> Result<(), FilterFailure> {
        match self {
            Rule::Ready => check_ready(&info.node),
            Rule::FixedNode => check_fixed_node(&info.node, req),
            Rule::Constraints => check_constraints(&info.node, &req.constraints),
            Rule::Platform => check_platform(&info.node, &req.platforms),
            Rule::Resources => resources_ok(&info.available, &req.reservations),
            Rule::HostPorts => check_host_ports(&info.host_ports, &req.host_ports),
            Rule::MaxReplicas => check_max_replicas(info, req),
        }
    }
}

/// The standard rules ([`Rule::STANDARD`]) in order: the first one the
/// node fails.
pub fn check_node(info: &NodeInfo, req: &TaskRequest) -> Result<(), FilterFailure> {
    for rule in Rule::STANDARD {
        if rule.relevant(req) {
            rule.check(info, req)?;
        }
    }
    Ok(())
}

/// True when the node's status is ready (not down, disconnected or
/// unknown).
#[inline]
pub fn node_ready(node: &Node) -> bool {
    node.status.state == NodeState::Ready
}

/// True when the node's availability is active (not paused or drained).
#[inline]
pub fn node_active(node: &Node) -> bool {
    node.spec.availability == Availability::Active
}

/// [`Rule::Ready`]: ready first, then active.
#[inline]
pub fn check_ready(node: &Node) -> Result<(), FilterFailure> {
    if !node_ready(node) {
        Err(FilterFailure::NotReady)
    } else if !node_active(node) {
        Err(FilterFailure::NotActive)
    } else {
        Ok(())
    }
}

/// [`Rule::FixedNode`]: a request fixed to a node passes only there.
#[inline]
pub fn check_fixed_node(node: &Node, req: &TaskRequest) -> Result<(), FilterFailure> {
    match &req.node_id {
        Some(want) if want != &node.id => Err(FilterFailure::OtherNode),
        _ => Ok(()),
    }
}

/// [`Rule::Constraints`]: the first constraint (in order) the node does
/// not satisfy, as written.
#[inline]
pub fn check_constraints(node: &Node, constraints: &[Constraint]) -> Result<(), FilterFailure> {
    match constraints.iter().find(|c| !c.matches(node)) {
        Some(c) => Err(FilterFailure::Constraint(c.to_string())),
        None => Ok(()),
    }
}

/// [`Rule::Platform`]: the node's platform is one of `wanted` (empty =
/// any), by [`platform_ok`].
#[inline]
pub fn check_platform(node: &Node, wanted: &[Platform]) -> Result<(), FilterFailure> {
    if platform_ok(&node.description.platform, wanted) { Ok(()) } else { Err(FilterFailure::Platform) }
}

/// True when `platform` is one of `wanted` (empty = any). OS and
/// architecture compare case-insensitively, architectures normalised; an
/// empty OS or architecture in `wanted` matches any.
pub fn platform_ok(platform: &Platform, wanted: &[Platform]) -> bool {
    wanted.is_empty()
        || wanted.iter().any(|w| {
            (w.os.is_empty() || w.os.eq_ignore_ascii_case(&platform.os))
                && (w.architecture.is_empty()
                    || normalize_arch(&w.architecture) == normalize_arch(&platform.architecture))
        })
}

/// [`Rule::Resources`]: `request` fits in `available`; else the first
/// resource that does not (CPU, memory, then generic resources by kind).
#[inline]
pub fn resources_ok(available: &Resources, request: &Resources) -> Result<(), FilterFailure> {
    if available.nano_cpus < request.nano_cpus {
        return Err(FilterFailure::InsufficientCpu);
    }
    if available.memory_bytes < request.memory_bytes {
        return Err(FilterFailure::InsufficientMemory);
    }
    for (k, v) in &request.generic {
        if *v > 0 && available.generic.get(k).copied().unwrap_or(0) < *v {
            return Err(FilterFailure::InsufficientGeneric(k.clone()));
        }
    }
    Ok(())
}

/// [`Rule::HostPorts`]: the first of `wanted` already in `in_use`, as
/// "8080/tcp".
#[inline]
pub fn check_host_ports(in_use: &HashSet<HostPort>, wanted: &[HostPort]) -> Result<(), FilterFailure> {
    match wanted.iter().find(|p| in_use.contains(p)) {
        Some((proto, port)) => Err(FilterFailure::HostPortInUse(format!("{port}/{}", proto.as_str()))),
        None => Ok(()),
    }
}

/// [`Rule::MaxReplicas`]: fewer than `req.max_replicas` tasks of the
/// request's service on the node (0 = unlimited).
#[inline]
pub fn check_max_replicas(info: &NodeInfo, req: &TaskRequest) -> Result<(), FilterFailure> {
    if req.max_replicas > 0 && u64::from(info.service_tasks(&req.service_id)) >= req.max_replicas {
        Err(FilterFailure::MaxReplicas(req.max_replicas))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::IdGen;
    use crate::model::{NodeRole, Protocol};
    use std::sync::Arc;

    /// Random nodes (some busy) and requests, seed 42: a rule that is not
    /// relevant to a request passes on every node (so skipping it, as
    /// check_node and the pipeline do, changes nothing), and a static rule
    /// gives the same answer whatever is placed on the node.
    #[test]
    fn irrelevant_rules_pass_and_static_rules_ignore_placements() {
        let mut rng = IdGen::seeded(42);
        let mut r = |n: u64| rng.next_u64() % n;
        let mut nodes = Vec::new();
        for i in 0..100 {
            let mut n = Node::ready(format!("n{i}"), format!("h{i}"), Resources::new(r(3) * 1_000_000_000, r(3) << 30));
            n.status.state = [NodeState::Ready, NodeState::Down, NodeState::Unknown][r(3) as usize];
            n.spec.availability = [Availability::Active, Availability::Pause, Availability::Drain][r(3) as usize];
            n.spec.role = if r(2) == 0 { NodeRole::Manager } else { NodeRole::Worker };
            if r(2) == 0 {
                n.spec.labels.insert("zone".into(), "eu".into());
            }
            let empty = NodeInfo::new(Arc::new(n));
            let mut busy = empty.clone();
            busy.reserve(&TaskRequest {
                service_id: "s1".into(),
                reservations: Resources::new(1_000_000_000, 1 << 30).with_generic("gpu", r(2)),
                host_ports: vec![(Protocol::Tcp, 80)],
                ..Default::default()
            });
            nodes.push((empty, busy));
        }
        let mut checked = [0usize; 7];
        for k in 0..100 {
            let req = TaskRequest {
                service_id: "s1".into(),
                node_id: if r(4) == 0 { Some(format!("n{}", r(100)).into()) } else { None },
                constraints: if r(2) == 0 { vec!["node.labels.zone==eu".parse().unwrap()] } else { vec![] },
                platforms: if r(3) == 0 { vec![Platform::new("linux", "arm64")] } else { vec![] },
                reservations: if r(2) == 0 { Resources::default() } else { Resources::new(r(2), r(2) << 30) },
                host_ports: if r(2) == 0 { vec![(Protocol::Tcp, 80)] } else { vec![] },
                max_replicas: r(3),
                ..Default::default()
            };
            for (ri, rule) in Rule::STANDARD.into_iter().enumerate() {
                for (empty, busy) in &nodes {
                    if !rule.relevant(&req) {
                        assert_eq!(rule.check(empty, &req), Ok(()), "{rule:?}, request {k}");
                        assert_eq!(rule.check(busy, &req), Ok(()), "{rule:?}, request {k}");
                        checked[ri] += 1;
                    }
                    if rule.is_static() {
                        assert_eq!(rule.check(empty, &req), rule.check(busy, &req), "{rule:?}, request {k}");
                    }
                }
            }
        }
        // Every rule but Ready (always relevant) was skipped for some request.
        assert_eq!(checked[0], 0);
        assert!(checked[1..].iter().all(|&c| c > 0), "{checked:?}");
    }

    #[test]
    fn each_rule_names_its_failure() {
        let mut node = Node::ready("n1", "h1", Resources::new(2_000_000_000, 1 << 30));
        node.spec.labels.insert("zone".into(), "eu".into());
        let mut info = NodeInfo::new(Arc::new(node));
        info.reserve(&TaskRequest {
            service_id: "s1".into(),
            host_ports: vec![(Protocol::Udp, 53), (Protocol::Tcp, 80)],
            ..Default::default()
        });
        let req = |f: &dyn Fn(&mut TaskRequest)| {
            let mut r = TaskRequest { service_id: "s1".into(), ..Default::default() };
            f(&mut r);
            r
        };
        let cases: Vec<(Rule, TaskRequest, FilterFailure)> = vec![
            (Rule::FixedNode, req(&|r| r.node_id = Some("n2".into())), FilterFailure::OtherNode),
            (
                Rule::Constraints,
                req(&|r| {
                    r.constraints = vec!["node.labels.zone==eu".parse().unwrap(), "node.role==manager".parse().unwrap()]
                }),
                FilterFailure::Constraint("node.role==manager".into()),
            ),
            (Rule::Platform, req(&|r| r.platforms = vec![Platform::new("windows", "")]), FilterFailure::Platform),
            (
                Rule::Resources,
                req(&|r| r.reservations = Resources::new(3_000_000_000, 1 << 31)),
                FilterFailure::InsufficientCpu,
            ),
            (
                Rule::Resources,
                req(&|r| r.reservations = Resources::default().with_generic("gpu", 1)),
                FilterFailure::InsufficientGeneric("gpu".into()),
            ),
            (
                Rule::HostPorts,
                req(&|r| r.host_ports = vec![(Protocol::Tcp, 53), (Protocol::Tcp, 80), (Protocol::Udp, 53)]),
                FilterFailure::HostPortInUse("80/tcp".into()),
            ),
            (Rule::MaxReplicas, req(&|r| r.max_replicas = 1), FilterFailure::MaxReplicas(1)),
        ];
        for (rule, r, want) in cases {
            assert!(rule.relevant(&r), "{rule:?}");
            assert_eq!(rule.check(&info, &r), Err(want.clone()), "{rule:?}");
            assert_eq!(check_node(&info, &r), Err(want), "{rule:?} through check_node");
        }
        let mut down = info.clone();
        Arc::make_mut(&mut down.node).status.state = NodeState::Down;
        Arc::make_mut(&mut down.node).spec.availability = Availability::Drain;
        assert_eq!(check_ready(&down.node), Err(FilterFailure::NotReady), "readiness before availability");
        Arc::make_mut(&mut down.node).status.state = NodeState::Ready;
        assert_eq!(check_ready(&down.node), Err(FilterFailure::NotActive));
        assert!(node_ready(&down.node) && !node_active(&down.node));
    }
}
