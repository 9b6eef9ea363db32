//! Filters: the feasibility half of the pipeline.
//!
//! A [`Filter`] answers one question about one node for one task:
//! [`Filter::check`] returns `Ok(())` or the [`FilterFailure`] that rules the
//! node out. The failure is the explanation: the pipeline counts failures
//! per kind across nodes into an [`Explanation`], which prints as
//! "no suitable node (insufficient memory on 3 nodes; 2 nodes fail
//! constraint node.labels.zone==eu)". [`Filter::relevant`] (SwarmKit's
//! `SetTask`) lets a filter skip tasks it has nothing to say about.
//!
//! Two kinds, told apart by [`Filter::is_static`]:
//! - static filters look only at the node object and the request (ready,
//!   availability, constraints, platform): the pipeline runs them once per
//!   group of identical tasks, through [`Filter::check_indexed`] when the
//!   filter has an index fast path;
//! - dynamic filters look at what is placed on the node (resources, host
//!   ports, max replicas): the pipeline re-checks them on the node it is
//!   about to pick. They must be *monotone within a group*: once a node
//!   fails a task of a group, it fails the rest of the group (placing tasks
//!   only consumes), so the pipeline can drop it for good.
//!
//! [`standard_filters`] are SwarmKit's rules: one filter per swarm-core
//! [`Rule`], in [`Rule::STANDARD`]'s order.
//! Each standard filter's name, kind, relevance and check *are* its
//! rule's, the very code [`check_node`] runs, so the two cannot drift
//! apart; what the filters add is the index fast path of the static rules,
//! built on the rules' own predicates (a randomized test checks the fast
//! paths against [`check_node`]).
//!
//! ```
//! use swarm_sched::filter::Filter;
//! use swarm_core::scheduler::{FilterFailure, NodeInfo, TaskRequest};
//! /// Keeps tasks away from nodes labelled maintenance=true.
//! struct NotInMaintenance;
//! impl Filter for NotInMaintenance {
//!     fn name(&self) -> &str { "maintenance" }
//!     fn is_static(&self) -> bool { true }
//!     fn check(&self, node: &NodeInfo, _req: &TaskRequest) -> Result<(), FilterFailure> {
//!         match node.node.spec.labels.get("maintenance").map(String::as_str) {
//!             Some("true") => Err(FilterFailure::Other("in maintenance".into())),
//!             _ => Ok(()),
//!         }
//!     }
//! }
//! ```
//!
//! [`check_node`]: swarm_core::scheduler::check_node

use crate::index::{NodeIndex, NodeSet};
use swarm_core::feasibility::Rule;
use swarm_core::scheduler::{ClusterView, Explanation, FilterFailure, NodeInfo, TaskRequest};

/// One feasibility rule. See the [module docs](self).
pub trait Filter: Send + Sync {
    /// A short name ("constraints", "resources", ...).
    fn name(&self) -> &str;

    /// True when the filter depends only on the node object and the request,
    /// not on the tasks placed on the node. Defaults to false (dynamic).
    fn is_static(&self) -> bool {
        false
    }

    /// False when the filter has nothing to say about `req` (SwarmKit's
    /// `SetTask`), so the pipeline skips it. Defaults to true.
    fn relevant(&self, _req: &TaskRequest) -> bool {
        true
    }

    /// True when the verdict depends only on the node and the request's
    /// placement needs (constraints, platforms, reservations, host ports,
    /// max replicas), except on nodes that run tasks of the request's
    /// service or failed it recently; and (for dynamic filters) a node that
    /// fails keeps failing as tasks are added. Lets the pipeline share
    /// candidate heaps between services with the same placement needs (see
    /// [`Scorer::shareable`](crate::Scorer::shareable)). Defaults to false;
    /// every standard filter is shareable.
    fn shareable(&self) -> bool {
        false
    }

    /// `Ok(())` when `node` can take `req`, else why not.
    fn check(&self, node: &NodeInfo, req: &TaskRequest) -> Result<(), FilterFailure>;

    /// Index fast path for static filters: removes from `alive` every node
    /// that fails, counting each in `why` under its failure, and returns
    /// true. Returns false (the default) when the filter has no fast path;
    /// the pipeline then calls [`Filter::check`] on each node of `alive`.
    fn check_indexed(
        &self,
        _view: &ClusterView,
        _index: &NodeIndex,
        _req: &TaskRequest,
        _alive: &mut NodeSet,
        _why: &mut Explanation,
    ) -> bool {
        false
    }
}

/// Removes from `alive` the nodes outside `pass`, counting them under `f`.
fn narrow(alive: &mut NodeSet, pass: &NodeSet, f: FilterFailure, why: &mut Explanation) {
    why.add_n(f, alive.count_minus(pass));
    alive.intersect(pass);
}

/// The index fast path of a standard rule: the index's sets are built from
/// the rule's own predicates ([`node_ready`](swarm_core::feasibility::node_ready),
/// [`node_active`](swarm_core::feasibility::node_active),
/// [`Constraint::matches`](swarm_core::constraint::Constraint::matches),
/// [`platform_ok`](swarm_core::feasibility::platform_ok)), and each set
/// is counted under the failure the rule reports, in the rule's order.
/// False for the dynamic rules (no fast path).
fn check_rule_indexed(
    rule: Rule,
    view: &ClusterView,
    index: &NodeIndex,
    req: &TaskRequest,
    alive: &mut NodeSet,
    why: &mut Explanation,
) -> bool {
    match rule {
        Rule::Ready => {
            narrow(alive, index.ready(), FilterFailure::NotReady, why);
            narrow(alive, index.active(), FilterFailure::NotActive, why);
        }
        Rule::FixedNode => {
            let mut pass = NodeSet::empty(index.len());
            if let Some(i) = req.node_id.as_ref().and_then(|id| index.position(id)) {
                pass.insert(i);
            }
            narrow(alive, &pass, FilterFailure::OtherNode, why);
        }
        Rule::Constraints => {
            for c in &req.constraints {
                let pass = index.constraint_set(view, c);
                narrow(alive, &pass, FilterFailure::Constraint(c.to_string()), why);
            }
        }
        Rule::Platform => narrow(alive, &index.platform_matching(&req.platforms), FilterFailure::Platform, why),
        Rule::Resources | Rule::HostPorts | Rule::MaxReplicas => return false,
    }
    true
}

/// Implements [`Filter`] for a standard filter type: name, static or
/// dynamic, relevance and check are its swarm-core [`Rule`]'s; the index
/// fast path is [`check_rule_indexed`]; every standard filter is
/// shareable.
macro_rules! standard_filter {
    ($ty:ident, $rule:expr) => {
        impl $ty {
            /// The swarm-core rule this filter applies.
            pub const RULE: Rule = $rule;
        }

        impl Filter for $ty {
            fn name(&self) -> &str {
                Self::RULE.name()
            }
            fn shareable(&self) -> bool {
                true
            }
            fn is_static(&self) -> bool {
                Self::RULE.is_static()
            }
            fn relevant(&self, req: &TaskRequest) -> bool {
                Self::RULE.relevant(req)
            }
            fn check(&self, node: &NodeInfo, req: &TaskRequest) -> Result<(), FilterFailure> {
                Self::RULE.check(node, req)
            }
            fn check_indexed(
                &self,
                view: &ClusterView,
                index: &NodeIndex,
                req: &TaskRequest,
                alive: &mut NodeSet,
                why: &mut Explanation,
            ) -> bool {
                check_rule_indexed(Self::RULE, view, index, req, alive, why)
            }
        }
    };
}

/// The node must be ready and active (not paused or drained):
/// [`Rule::Ready`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadyFilter;
standard_filter!(ReadyFilter, Rule::Ready);

/// A task fixed to a node (global services) can only go there:
/// [`Rule::FixedNode`].
#[derive(Clone, Copy, Debug, Default)]
pub struct FixedNodeFilter;
standard_filter!(FixedNodeFilter, Rule::FixedNode);

/// Placement constraints (`node.labels.zone==eu`, `node.ip==10.0.0.0/8`...),
/// each counted separately in explanations: [`Rule::Constraints`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ConstraintFilter;
standard_filter!(ConstraintFilter, Rule::Constraints);

/// The node's OS and architecture must be one of the task's platforms:
/// [`Rule::Platform`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PlatformFilter;
standard_filter!(PlatformFilter, Rule::Platform);

/// The task's reservations (CPU, memory, generic resources) must fit in
/// what is left on the node: [`Rule::Resources`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ResourceFilter;
standard_filter!(ResourceFilter, Rule::Resources);

/// A host-mode published port can be taken once per node:
/// [`Rule::HostPorts`].
#[derive(Clone, Copy, Debug, Default)]
pub struct HostPortFilter;
standard_filter!(HostPortFilter, Rule::HostPorts);

/// At most `max_replicas` tasks of the service per node:
/// [`Rule::MaxReplicas`].
#[derive(Clone, Copy, Debug, Default)]
pub struct MaxReplicasFilter;
standard_filter!(MaxReplicasFilter, Rule::MaxReplicas);

/// The standard filter type of `rule`.
pub fn standard_filter(rule: Rule) -> Box<dyn Filter> {
    match rule {
        Rule::Ready => Box::new(ReadyFilter),
        Rule::FixedNode => Box::new(FixedNodeFilter),
        Rule::Constraints => Box::new(ConstraintFilter),
        Rule::Platform => Box::new(PlatformFilter),
        Rule::Resources => Box::new(ResourceFilter),
        Rule::HostPorts => Box::new(HostPortFilter),
        Rule::MaxReplicas => Box::new(MaxReplicasFilter),
    }
}

/// SwarmKit's rules, one filter per [`Rule`] in [`Rule::STANDARD`]'s
/// order (that of [`check_node`](swarm_core::scheduler::check_node)):
/// ready and active, fixed node, constraints, platform, resources, host
/// ports, max replicas.
pub fn standard_filters() -> Vec<Box<dyn Filter>> {
    Rule::STANDARD.into_iter().map(standard_filter).collect()
}

/// Runs `filters` in order on one node: the first failure, as
/// [`check_node`](swarm_core::scheduler::check_node) does for the standard
/// set.
pub fn first_failure(filters: &[Box<dyn Filter>], node: &NodeInfo, req: &TaskRequest) -> Result<(), FilterFailure> {
    for f in filters {
        if f.relevant(req) {
            f.check(node, req)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use swarm_core::id::IdGen;
    use swarm_core::model::{Availability, Node, NodeRole, NodeState, Platform, Protocol, Resources};
    use swarm_core::scheduler::check_node;

    /// Random nodes and requests: the standard filters, per node and
    /// through the index, agree with check_node. Per node they run the
    /// same swarm-core rules as check_node, so this is a regression test;
    /// what it really exercises is the index fast paths (node sets counted
    /// under each rule's failure) against the rules. Seed 42, then a fresh
    /// seed each run (printed; `SWARM_TEST_SEED=0x...` replays it).
    #[test]
    fn standard_filters_agree_with_check_node() {
        agree_with_check_node(42);
        agree_with_check_node(swarm_core::harness::test_seed("standard_filters_agree_with_check_node"));
    }

    /// Each standard filter is wired to its own rule: same name, kind,
    /// relevance and verdict as the rule on nodes and requests where each
    /// rule fails in turn (a filter wired to another rule differs on one).
    #[test]
    fn each_standard_filter_is_its_rule() {
        let filters = standard_filters();
        let names: Vec<&str> = filters.iter().map(|f| f.name()).collect();
        assert_eq!(names, Rule::STANDARD.map(Rule::name));
        let node = |f: &dyn Fn(&mut Node)| {
            let mut n = Node::ready("n1", "h1", Resources::new(1_000_000_000, 1 << 30));
            f(&mut n);
            let mut info = NodeInfo::new(Arc::new(n));
            info.reserve(&TaskRequest {
                service_id: "s1".into(),
                host_ports: vec![(Protocol::Tcp, 80)],
                ..Default::default()
            });
            info
        };
        let nodes = [
            node(&|_| {}),
            node(&|n| n.status.state = NodeState::Down),
            node(&|n| n.spec.availability = Availability::Pause),
            node(&|n| n.description.platform = Platform::new("windows", "amd64")),
        ];
        let base = TaskRequest { service_id: "s1".into(), ..Default::default() };
        let requests = [
            base.clone(),
            TaskRequest { node_id: Some("n2".into()), ..base.clone() },
            TaskRequest { constraints: vec!["node.role==manager".parse().unwrap()], ..base.clone() },
            TaskRequest { platforms: vec![Platform::new("linux", "")], ..base.clone() },
            TaskRequest { reservations: Resources::new(2_000_000_000, 0), ..base.clone() },
            TaskRequest { host_ports: vec![(Protocol::Tcp, 80)], ..base.clone() },
            TaskRequest { max_replicas: 1, ..base.clone() },
        ];
        let mut failures = std::collections::BTreeSet::new();
        for (f, rule) in filters.iter().zip(Rule::STANDARD) {
            assert_eq!(f.is_static(), rule.is_static(), "{rule:?}");
            assert!(f.shareable(), "{rule:?}");
            for (k, req) in requests.iter().enumerate() {
                assert_eq!(f.relevant(req), rule.relevant(req), "{rule:?}, request {k}");
                for (i, info) in nodes.iter().enumerate() {
                    let verdict = f.check(info, req);
                    assert_eq!(verdict, rule.check(info, req), "{rule:?}, node {i}, request {k}");
                    failures.extend(verdict.err());
                }
            }
        }
        // The cases make every kind of standard failure show up.
        assert_eq!(failures.len(), 8, "{failures:?}");
    }

    fn agree_with_check_node(seed: u64) {
        let mut rng = IdGen::seeded(seed);
        let mut r = |n: u64| rng.next_u64() % n;
        let mut nodes = Vec::new();
        for i in 0..200 {
            let mut n = Node::ready(format!("n{i}"), format!("h{i}"), Resources::new(r(4) * 1_000_000_000, r(4) << 30));
            n.status.addr = format!("10.0.{}.{}", r(3), i);
            n.status.state = if r(10) == 0 { NodeState::Down } else { NodeState::Ready };
            n.spec.availability = [Availability::Active, Availability::Active, Availability::Drain][r(3) as usize];
            n.spec.role = if r(4) == 0 { NodeRole::Manager } else { NodeRole::Worker };
            if r(2) == 0 {
                n.spec.labels.insert("zone".into(), ["eu", "us", "ap"][r(3) as usize].into());
            }
            if r(5) == 0 {
                n.description.platform = Platform::new("linux", "arm64");
            }
            let mut info = NodeInfo::new(Arc::new(n));
            if r(3) == 0 {
                info.reserve(&TaskRequest {
                    service_id: "s1".into(),
                    host_ports: vec![(Protocol::Tcp, 80)],
                    ..Default::default()
                });
            }
            nodes.push(info);
        }
        let view = ClusterView { nodes };
        let index = NodeIndex::new(&view);
        let constraints =
            ["node.labels.zone==eu", "node.role!=manager", "node.ip==10.0.1.0/24", "node.labels.zone!=us"];
        let filters = standard_filters();
        for k in 0..200 {
            let req = TaskRequest {
                service_id: "s1".into(),
                node_id: if k % 17 == 0 { Some(format!("n{}", r(220)).into()) } else { None },
                constraints: constraints.iter().filter(|_| r(3) == 0).map(|c| c.parse().unwrap()).collect(),
                platforms: if r(4) == 0 { vec![Platform::new("linux", "aarch64")] } else { vec![] },
                reservations: Resources::new(r(3) * 1_000_000_000, r(3) << 30),
                host_ports: if r(3) == 0 { vec![(Protocol::Tcp, 80)] } else { vec![] },
                max_replicas: r(2),
                ..Default::default()
            };
            let mut alive = NodeSet::full(view.nodes.len());
            let mut why = Explanation::new(view.nodes.len());
            let mut want = Explanation::new(view.nodes.len());
            for f in filters.iter().filter(|f| f.relevant(&req)) {
                if !f.is_static() || !f.check_indexed(&view, &index, &req, &mut alive, &mut why) {
                    for i in alive.clone().iter() {
                        if let Err(e) = f.check(&view.nodes[i], &req) {
                            alive.remove(i);
                            why.add(&e);
                        }
                    }
                }
            }
            for (i, info) in view.nodes.iter().enumerate() {
                let direct = check_node(info, &req);
                assert_eq!(first_failure(&filters, info, &req), direct, "seed {seed:#x}, node {i}, request {k}");
                assert_eq!(alive.contains(i), direct.is_ok(), "seed {seed:#x}, node {i}, request {k}");
                if let Err(e) = direct {
                    want.add(&e);
                }
            }
            assert_eq!(why, want, "seed {seed:#x}, request {k}");
        }
    }
}
