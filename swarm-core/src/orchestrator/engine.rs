//! The reconcile engine shared by replicated and global services.

use super::update;
use super::{RestartDecision, ended_on_its_own, is_live, restart_decision};
use crate::constraint::Constraint;
use crate::id::{IdGen, NodeId, TaskId};
use crate::model::*;
use crate::scheduler::platform_ok;
use crate::state::{Op, State};
use crate::time::Timestamp;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub use crate::controller::Plan;

/// A slot: a replica number, or a node for global services.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum SlotKey {
    Slot(u64),
    Node(NodeId),
}

/// Where a slot stands after the per-slot rules.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum SlotState {
    /// Has a current task (possibly ended, awaiting a delayed restart).
    Live(Arc<Task>),
    /// The restart policy gave up on it.
    Dead,
    /// Its last task is being stopped; nothing to do until it is.
    Stopping,
    /// Needs a new task.
    Vacant,
}

/// One slot and its tasks, oldest first (tasks on their way to removal
/// excluded).
pub(crate) struct Slot {
    pub key: SlotKey,
    pub tasks: Vec<Arc<Task>>,
    pub state: SlotState,
}

/// Mutable context of one pass.
pub(crate) struct Ctx<'a> {
    pub state: &'a State,
    pub svc: &'a Service,
    pub now: Timestamp,
    ids: &'a mut IdGen,
    edits: BTreeMap<TaskId, Task>,
    creates: Vec<Task>,
    pub service_edit: Option<Service>,
    wake: Option<Timestamp>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(state: &'a State, svc: &'a Service, now: Timestamp, ids: &'a mut IdGen) -> Self {
        Ctx { state, svc, now, ids, edits: BTreeMap::new(), creates: Vec::new(), service_edit: None, wake: None }
    }

    /// The task as this pass has left it.
    pub(crate) fn current<'t>(&'t self, t: &'t Task) -> &'t Task {
        self.edits.get(&t.id).unwrap_or(t)
    }

    fn edit(&mut self, t: &Task) -> &mut Task {
        self.edits.entry(t.id.clone()).or_insert_with(|| t.clone())
    }

    pub(crate) fn wake_at(&mut self, ts: Timestamp) {
        self.wake = Some(self.wake.map_or(ts, |w| w.min(ts)));
    }

    /// Sets the desired state to SHUTDOWN (if lower), with a message.
    pub(crate) fn shutdown(&mut self, t: &Task, why: &str) {
        let now = self.now;
        let e = self.edit(t);
        if e.desired_state < TaskState::Shutdown {
            e.desired_state = TaskState::Shutdown;
            if !e.status.state.is_terminal() {
                e.status.message = why.to_string();
                e.status.timestamp = now;
            }
        }
    }

    /// Marks the task lost with its node.
    pub(crate) fn orphan(&mut self, t: &Task, why: &str) {
        let now = self.now;
        let e = self.edit(t);
        if e.desired_state < TaskState::Shutdown {
            e.desired_state = TaskState::Shutdown;
        }
        if !e.status.state.is_terminal() {
            e.status.state = TaskState::Orphaned;
            e.status.message = why.to_string();
            e.status.timestamp = now;
        }
    }

    /// Sets the desired state to COMPLETE: a finished job task.
    pub(crate) fn complete(&mut self, t: &Task) {
        let e = self.edit(t);
        if e.desired_state < TaskState::Complete {
            e.desired_state = TaskState::Complete;
        }
    }

    /// Marks the task for removal (scale down, service removed).
    pub(crate) fn remove(&mut self, t: &Task) {
        let e = self.edit(t);
        if e.desired_state < TaskState::Remove {
            e.desired_state = TaskState::Remove;
        }
    }

    /// A new task for `slot` / `node` running the service's current spec.
    pub(crate) fn create(&mut self, slot: Option<u64>, node: Option<NodeId>) {
        let svc = self.svc;
        let task = Task {
            id: self.ids.next_id(),
            service_id: svc.id.clone(),
            service_name: svc.spec.name.clone(),
            slot,
            node_id: node,
            spec: svc.spec.task_template.clone(),
            spec_version: svc.spec_version,
            job_iteration: svc.job_iteration,
            endpoint: svc.spec.endpoint_spec.clone(),
            networks: svc
                .spec
                .networks
                .iter()
                .map(|n| NetworkAttachment { network: n.target.clone(), addresses: Vec::new(), overlay: None })
                .collect(),
            desired_state: TaskState::Running,
            status: TaskStatus {
                state: TaskState::New,
                timestamp: self.now,
                message: "created".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        self.creates.push(task);
    }

    /// Edits the service (update status, rollback).
    pub(crate) fn edit_service(&mut self) -> &mut Service {
        if self.service_edit.is_none() {
            self.service_edit = Some(self.svc.clone());
        }
        // Just set above when absent.
        self.service_edit.get_or_insert_with(|| self.svc.clone())
    }

    pub(crate) fn into_plan(self) -> Plan {
        let mut ops = Vec::with_capacity(self.edits.len() + self.creates.len() + 1);
        if let Some(s) = self.service_edit {
            if &s != self.svc {
                ops.push(Op::Update(Object::Service(s)));
            }
        }
        for (_, t) in self.edits {
            let unchanged = self.state.task(&t.id).is_some_and(|o| **o == t);
            if !unchanged {
                ops.push(Op::Update(Object::Task(t)));
            }
        }
        ops.extend(self.creates.into_iter().map(|t| Op::Create(Object::Task(t))));
        Plan { ops, wake_at: self.wake }
    }
}

/// Reconciles one service: see the [module docs](super).
pub fn reconcile_service(state: &State, svc: &Service, now: Timestamp, ids: &mut IdGen) -> Plan {
    let mut ctx = Ctx::new(state, svc, now, ids);
    match svc.spec.mode.kind {
        ModeKind::Replicated => replicated(&mut ctx),
        ModeKind::Global => global(&mut ctx),
        ModeKind::ReplicatedJob | ModeKind::GlobalJob => super::jobs::reconcile_job(&mut ctx),
    }
    ctx.into_plan()
}

/// Tasks of the service grouped by slot key, oldest first, without those
/// marked for removal.
pub(crate) fn group(ctx: &Ctx<'_>, key: impl Fn(&Task) -> Option<SlotKey>) -> BTreeMap<SlotKey, Vec<Arc<Task>>> {
    let mut slots: BTreeMap<SlotKey, Vec<Arc<Task>>> = BTreeMap::new();
    for t in ctx.state.tasks_of_service(&ctx.svc.id) {
        if t.desired_state >= TaskState::Remove {
            continue;
        }
        if let Some(k) = key(t) {
            slots.entry(k).or_default().push(t.clone());
        }
    }
    for tasks in slots.values_mut() {
        tasks.sort_by_key(|t| (t.meta.created_revision, t.id.clone()));
    }
    slots
}

/// Why a task's node can no longer hold it, and so what becomes of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeProblem {
    /// The node left the cluster: its tasks are orphaned (nobody will
    /// report on them again).
    Removed,
    /// The node missed its heartbeats: orphaned too.
    Down,
    /// The operator drains the node: its tasks are shut down gracefully.
    Drained,
}

impl NodeProblem {
    /// The status message it gives the task.
    pub(crate) fn message(self) -> &'static str {
        match self {
            NodeProblem::Removed => "node removed",
            NodeProblem::Down => "node is down",
            NodeProblem::Drained => "node is drained",
        }
    }

    /// True when the node's agent will never stop the task itself.
    pub(crate) fn orphans(self) -> bool {
        matches!(self, NodeProblem::Removed | NodeProblem::Down)
    }
}

/// Why a node cannot hold a task of this service, if it cannot.
fn node_problem(node: Option<&Arc<Node>>) -> Option<NodeProblem> {
    match node {
        None => Some(NodeProblem::Removed),
        Some(n) if n.status.state == NodeState::Down => Some(NodeProblem::Down),
        Some(n) if n.spec.availability == Availability::Drain => Some(NodeProblem::Drained),
        _ => None,
    }
}

/// Rules 1 and 2 on one slot; returns its state. `keep_on_node` says
/// whether a global service may keep a task on the slot's node.
pub(crate) fn settle_slot(ctx: &mut Ctx<'_>, tasks: &[Arc<Task>], keep_on_node: Option<bool>) -> SlotState {
    let is_job = ctx.svc.spec.mode.is_job();
    let mut vacancy = false;
    let mut dead = false;
    let mut live: Vec<Arc<Task>> = Vec::new();
    for t in tasks.iter().filter(|t| is_live(t)) {
        if let Some(node_id) = &t.node_id {
            let node = ctx.state.node(node_id);
            match node_problem(node) {
                Some(p) if p.orphans() => {
                    ctx.orphan(t, p.message());
                    vacancy = true;
                    continue;
                }
                Some(p) => {
                    ctx.shutdown(t, p.message());
                    vacancy = true;
                    continue;
                }
                None => {}
            }
            if keep_on_node == Some(false) {
                ctx.shutdown(t, "node no longer eligible for this service");
                continue;
            }
        }
        if ended_on_its_own(t) {
            let history: Vec<&Task> = tasks.iter().map(|x| x.as_ref()).collect();
            match restart_decision(t, &history, is_job, ctx.now) {
                RestartDecision::Now => {
                    ctx.shutdown(t, "restarting");
                    vacancy = true;
                }
                RestartDecision::At(at) => {
                    ctx.wake_at(at);
                    live.push(t.clone());
                }
                RestartDecision::Never => {
                    ctx.shutdown(t, "not restarted (restart policy)");
                    dead = !(is_job && t.status.state == TaskState::Complete);
                }
            }
            continue;
        }
        live.push(t.clone());
    }
    if let Some(current) = live.last().cloned() {
        if live.len() > 1 && current.is_running_and_healthy() {
            let msg = format!("replaced by task {}", current.id);
            for older in &live[..live.len() - 1] {
                ctx.shutdown(older, &msg);
            }
        }
        return SlotState::Live(current);
    }
    if dead {
        return SlotState::Dead;
    }
    if vacancy {
        return SlotState::Vacant;
    }
    let Some(latest) = tasks.last() else { return SlotState::Vacant };
    if !latest.status.state.is_terminal() && !ctx.current(latest).status.state.is_terminal() {
        let node = latest.node_id.as_ref().map(|n| ctx.state.node(n));
        if let Some(p) = node.and_then(node_problem).filter(|p| p.orphans()) {
            ctx.orphan(latest, p.message());
            return SlotState::Vacant;
        }
        return SlotState::Stopping;
    }
    if is_dead(ctx.svc, latest) {
        return SlotState::Dead;
    }
    SlotState::Vacant
}

/// A slot whose last task ended on its own and was not restarted, at the
/// service's current spec version, stays dead.
fn is_dead(svc: &Service, latest: &Task) -> bool {
    ended_on_its_own(latest)
        && latest.desired_state >= TaskState::Shutdown
        && latest.spec_version == svc.spec_version
        && latest.job_iteration == svc.job_iteration
        && !(latest.status.state == TaskState::Complete && svc.spec.mode.is_job())
}

fn replicated(ctx: &mut Ctx<'_>) {
    let groups = group(ctx, |t| t.slot.map(SlotKey::Slot));
    let mut slots: Vec<Slot> = Vec::with_capacity(groups.len());
    for (key, tasks) in groups {
        let state = settle_slot(ctx, &tasks, None);
        slots.push(Slot { key, tasks, state });
    }
    let want = ctx.svc.spec.mode.replicas() as usize;
    if slots.len() > want {
        scale_down(ctx, &mut slots, want);
    }
    if slots.len() < want {
        let used: std::collections::BTreeSet<u64> = slots
            .iter()
            .filter_map(|s| match s.key {
                SlotKey::Slot(n) => Some(n),
                SlotKey::Node(_) => None,
            })
            .collect();
        let mut next = 1u64;
        while slots.len() < want {
            while used.contains(&next) {
                next += 1;
            }
            slots.push(Slot { key: SlotKey::Slot(next), tasks: Vec::new(), state: SlotState::Vacant });
            next += 1;
        }
        slots.sort_by(|a, b| a.key.cmp(&b.key));
    }
    for s in &slots {
        if s.state == SlotState::Vacant {
            if let SlotKey::Slot(n) = s.key {
                ctx.create(Some(n), None);
            }
        }
    }
    update::rolling_update(ctx, &slots);
}

fn scale_down(ctx: &mut Ctx<'_>, slots: &mut Vec<Slot>, want: usize) {
    let mut per_node: HashMap<NodeId, usize> = HashMap::new();
    for s in slots.iter() {
        if let SlotState::Live(t) = &s.state {
            if let Some(n) = &t.node_id {
                *per_node.entry(n.clone()).or_default() += 1;
            }
        }
    }
    // Lower rank = removed first.
    let rank = |s: &Slot| -> (u8, std::cmp::Reverse<usize>, std::cmp::Reverse<SlotKey>) {
        let class = match &s.state {
            SlotState::Dead => 0,
            SlotState::Vacant => 1,
            SlotState::Stopping => 2,
            SlotState::Live(t) if t.node_id.is_none() || t.status.state < TaskState::Assigned => 3,
            SlotState::Live(_) => 4,
        };
        let load = match &s.state {
            SlotState::Live(t) => t.node_id.as_ref().and_then(|n| per_node.get(n)).copied().unwrap_or(0),
            _ => 0,
        };
        (class, std::cmp::Reverse(load), std::cmp::Reverse(s.key.clone()))
    };
    slots.sort_by_key(|s| rank(s));
    let extra = slots.len() - want;
    for s in slots.drain(..extra) {
        for t in &s.tasks {
            ctx.remove(t);
        }
    }
    slots.sort_by(|a, b| a.key.cmp(&b.key));
}

/// Whether a node may run a task of this service (it may keep one), and
/// whether it may take a new one.
pub(crate) fn global_eligibility(node: &Node, constraints: &[Constraint], platforms: &[Platform]) -> (bool, bool) {
    let fits = constraints.iter().all(|c| c.matches(node)) && platform_ok(&node.description.platform, platforms);
    let up = !matches!(node.status.state, NodeState::Down | NodeState::Disconnected);
    let keep = fits && up && node.spec.availability != Availability::Drain;
    let take = keep && node.spec.availability == Availability::Active;
    (keep, take)
}

fn global(ctx: &mut Ctx<'_>) {
    let groups = group(ctx, |t| t.node_id.clone().map(SlotKey::Node));
    let placement = &ctx.svc.spec.task_template.placement;
    // Specs are validated on the way in, so constraints parse; a failure
    // here would mean a corrupted store: treat the service as placeable
    // nowhere rather than everywhere.
    let constraints = Constraint::parse_all(&placement.constraints);
    let platforms = placement.platforms.clone();
    let mut slots: Vec<Slot> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (key, tasks) in groups {
        let SlotKey::Node(node_id) = &key else { continue };
        let (keep, take) = match (ctx.state.node(node_id), &constraints) {
            (Some(n), Ok(c)) => global_eligibility(n, c, &platforms),
            _ => (false, false),
        };
        seen.insert(node_id.clone());
        let mut state = settle_slot(ctx, &tasks, Some(keep));
        if state == SlotState::Vacant && !take {
            state = SlotState::Dead; // nothing to run here now
        }
        slots.push(Slot { key, tasks, state });
    }
    if let Ok(c) = &constraints {
        let nodes: Vec<Arc<Node>> = ctx.state.nodes().cloned().collect();
        for node in nodes {
            if seen.contains(&node.id) {
                continue;
            }
            if global_eligibility(&node, c, &platforms).1 {
                slots.push(Slot { key: SlotKey::Node(node.id.clone()), tasks: Vec::new(), state: SlotState::Vacant });
            }
        }
    }
    for s in &slots {
        if s.state == SlotState::Vacant {
            if let SlotKey::Node(n) = &s.key {
                ctx.create(None, Some(n.clone()));
            }
        }
    }
    slots.sort_by(|a, b| a.key.cmp(&b.key));
    update::rolling_update(ctx, &slots);
}
