//! The allocation step between the orchestrator and the scheduler, as in
//! SwarmKit: the orchestrator creates tasks NEW; an allocator gives them
//! what they need from the cluster (networks, addresses, published ports)
//! and only then moves them to PENDING, where the scheduler sees them. A
//! task whose service cannot be allocated stays NEW with the reason in its
//! status message, and moves on once the allocation succeeds.
//!
//! The core knows nothing to allocate by itself: [`TaskAllocator`], the
//! manager's default allocator, admits every NEW task at once. A network
//! allocator (swarm-net's) replaces it: its [`Allocation`] names the
//! services it could not allocate and, per task, the network attachments
//! (overlay addresses) to write in the very update that moves the task to
//! PENDING ([`TaskAllocation`]), so a task is written once on admission.
//!
//! ```
//! use swarm_core::allocator::{admit_new_tasks, Allocation};
//! use swarm_core::state::State;
//! use swarm_core::time::Timestamp;
//! // Nothing NEW in an empty state: nothing to do.
//! assert!(admit_new_tasks(&State::default(), &Allocation::default(), Timestamp::EPOCH).is_empty());
//! ```

use crate::controller::{Context, Controller, Interest, Plan};
use crate::id::{ServiceId, TaskId};
use crate::model::{NetworkAttachment, Object, TaskState};
use crate::state::{Action, Change, Op, State};
use crate::time::Timestamp;
use std::collections::BTreeMap;

/// Which new tasks the orchestrator may create PENDING at once, skipping
/// the allocator's admission write (one write per task fewer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Admission {
    /// Every task: the allocator has nothing to give (the manager's default
    /// allocator).
    #[default]
    Everything,
    /// Tasks with nothing to allocate ([`needs_allocation`] is false): for
    /// a network allocator whose only per-task work is addresses on the
    /// task's networks (swarm-net's). Such a task is scheduled even while
    /// its service's own allocation (VIPs, published ports) is pending or
    /// failed: both are service-level and concern no single task.
    WithoutAllocation,
    /// None: every task waits for the allocator.
    Nothing,
}

/// Whether a task of `service` needs an allocator's work before it can be
/// scheduled: it has network attachments, or its service publishes ports
/// through the routing mesh (its tasks join the ingress network).
pub fn needs_allocation(service: &crate::model::Service, task: &crate::model::Task) -> bool {
    !task.networks.is_empty()
        || service.spec.endpoint_spec.ports.iter().any(|p| p.publish_mode == crate::model::PublishMode::Ingress)
}

/// Status message of a task admitted to scheduling.
pub const PENDING_MESSAGE: &str = "pending task scheduling";

/// Operations moving every NEW task that is still wanted to PENDING, with
/// the attachments `alloc` gives it ([`TaskAllocation::Ready`]), except
/// tasks of the services in `alloc.blocked` and tasks blocked on their own
/// ([`TaskAllocation::Blocked`]), which stay NEW with the reason as their
/// status message (written only when it changed), and tasks that wait
/// ([`TaskAllocation::Wait`]), left untouched.
pub fn admit_new_tasks(state: &State, alloc: &Allocation, now: Timestamp) -> Vec<Op> {
    let mut ops = Vec::new();
    for t in state.tasks().filter(|t| t.status.state == TaskState::New && t.desired_state <= TaskState::Running) {
        let why = match (alloc.blocked.get(&t.service_id), alloc.tasks.get(&t.id)) {
            (Some(why), _) | (None, Some(TaskAllocation::Blocked(why))) => Some(why),
            (None, Some(TaskAllocation::Wait)) => continue,
            _ => None,
        };
        let mut t = t.as_ref().clone();
        match why {
            Some(why) => {
                let msg = format!("allocation failed: {why}");
                if t.status.message == msg {
                    continue;
                }
                t.status.message = msg;
            }
            None => {
                if let Some(TaskAllocation::Ready(networks)) = alloc.tasks.get(&t.id) {
                    t.networks = networks.clone();
                }
                t.status.state = TaskState::Pending;
                t.status.message = PENDING_MESSAGE.into();
            }
        }
        t.status.timestamp = now;
        ops.push(Op::Update(Object::Task(t)));
    }
    ops
}

/// True when a change creates a NEW task, changes a service or a network
/// (whose allocation may now succeed or fail), or releases a task's
/// overlay addresses (the task ended or was deleted), which a task waiting
/// for a free address may now take.
pub fn allocation_relevant(change: &Change) -> bool {
    change.events.iter().any(|e| match &e.object {
        Object::Task(t) => {
            t.status.state == TaskState::New
                || (t.networks.iter().any(|a| a.overlay.is_some())
                    && (e.action == Action::Delete || t.status.state.is_terminal()))
        }
        Object::Service(_) | Object::Network(_) => true,
        _ => false,
    })
}

/// What an allocator gives tasks before they may be scheduled (networks,
/// addresses, published ports): one pass over the whole state.
pub trait Allocate: Send + 'static {
    /// The allocations to write, and the services that cannot be allocated
    /// now, each with the reason (their NEW tasks wait).
    fn allocate(&mut self, state: &State) -> Allocation;
}

/// One allocation pass: see [`Allocate::allocate`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Allocation {
    /// Writes of allocations (service endpoints, network subnets...).
    pub ops: Vec<Op>,
    /// Services whose tasks must stay NEW, with why.
    pub blocked: BTreeMap<ServiceId, String>,
    /// What NEW tasks of services not blocked get; a task not listed is
    /// admitted as it is.
    pub tasks: BTreeMap<TaskId, TaskAllocation>,
}

/// What one NEW task gets from an allocation pass.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskAllocation {
    /// Admitted to scheduling with these network attachments (replacing
    /// the task's own), written in the same update that makes it PENDING.
    Ready(Vec<NetworkAttachment>),
    /// Stays NEW with the reason (e.g. no free address on a network).
    Blocked(String),
    /// Stays NEW, untouched: it waits for this pass's own writes (its
    /// network's allocation) to be committed, and the next pass admits it.
    Wait,
}

/// The core has nothing to allocate: every NEW task may be scheduled.
#[derive(Clone, Copy, Debug, Default)]
pub struct NothingToAllocate;

impl Allocate for NothingToAllocate {
    fn allocate(&mut self, _: &State) -> Allocation {
        Allocation::default()
    }
}

/// The allocator controller: runs an [`Allocate`] over the whole state on
/// every [`allocation_relevant`] change, writes its allocations and admits
/// NEW tasks to scheduling except those of the services it blocked. The
/// manager's default is `TaskAllocator::default()` ([`NothingToAllocate`]);
/// swarm-net's allocator is `TaskAllocator<NetworkAllocation>`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskAllocator<A = NothingToAllocate>(pub A);

impl<A: Allocate> Controller for TaskAllocator<A> {
    type Key = ();
    fn name(&self) -> &str {
        "allocator"
    }
    fn keys(&self, _: &State) -> Vec<()> {
        vec![()]
    }
    fn interest(&self, change: &Change) -> Interest<()> {
        if allocation_relevant(change) { Interest::Keys(vec![()]) } else { Interest::nothing() }
    }
    fn reconcile(&mut self, cx: &mut Context<'_>, _: &()) -> Plan {
        let mut alloc = self.0.allocate(cx.state);
        let admitted = admit_new_tasks(cx.state, &alloc, cx.now);
        alloc.ops.extend(admitted);
        let ops = alloc.ops;
        Plan { ops, wake_at: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Service, ServiceSpec, Task};
    use crate::state::Transaction;

    fn state_with(tasks: &[(&str, TaskState, TaskState)]) -> (State, ServiceId) {
        let svc = Service { id: "s1".into(), spec: ServiceSpec::replicated("web", "nginx:1", 1), ..Default::default() };
        let mut tx = Transaction::new().create(svc);
        for (id, state, desired) in tasks {
            let mut t = Task { id: (*id).into(), service_id: "s1".into(), slot: Some(1), ..Default::default() };
            t.status.state = *state;
            t.desired_state = *desired;
            tx = tx.create(t);
        }
        (State::default().apply(&tx).unwrap().0, "s1".into())
    }

    fn updated(ops: &[Op]) -> Vec<(String, TaskState, String)> {
        ops.iter()
            .map(|op| match op {
                Op::Update(Object::Task(t)) => (t.id.to_string(), t.status.state, t.status.message.clone()),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn new_tasks_are_admitted_unless_their_service_is_blocked() {
        let (state, svc) = state_with(&[
            ("t1", TaskState::New, TaskState::Running),
            ("t2", TaskState::Pending, TaskState::Running),
            ("t3", TaskState::New, TaskState::Shutdown),
        ]);
        let now = Timestamp(5);
        assert_eq!(
            updated(&admit_new_tasks(&state, &Allocation::default(), now)),
            vec![("t1".into(), TaskState::Pending, PENDING_MESSAGE.into())],
            "only the wanted NEW task moves"
        );
        let blocked =
            Allocation { blocked: BTreeMap::from([(svc, "port 80 in use".to_string())]), ..Default::default() };
        let ops = admit_new_tasks(&state, &blocked, now);
        assert_eq!(
            updated(&ops),
            vec![("t1".into(), TaskState::New, "allocation failed: port 80 in use".into())],
            "a blocked service's task stays NEW with the reason"
        );
        // Once the reason is written, nothing more to do.
        let (state, _) = state.apply(&Transaction { ops, timestamp: None }).unwrap();
        assert!(admit_new_tasks(&state, &blocked, now).is_empty());
    }

    #[test]
    fn a_task_is_admitted_with_its_attachments_blocked_alone_or_left_waiting() {
        let (state, _) = state_with(&[
            ("t1", TaskState::New, TaskState::Running),
            ("t2", TaskState::New, TaskState::Running),
            ("t3", TaskState::New, TaskState::Running),
        ]);
        let att = NetworkAttachment { network: "backend".into(), addresses: vec!["10.0.9.2".into()], overlay: None };
        let alloc = Allocation {
            tasks: BTreeMap::from([
                ("t1".into(), TaskAllocation::Ready(vec![att.clone()])),
                ("t2".into(), TaskAllocation::Blocked("network \"backend\": no free address".into())),
                ("t3".into(), TaskAllocation::Wait),
            ]),
            ..Default::default()
        };
        let ops = admit_new_tasks(&state, &alloc, Timestamp(1));
        assert_eq!(
            updated(&ops),
            vec![
                ("t1".into(), TaskState::Pending, PENDING_MESSAGE.into()),
                ("t2".into(), TaskState::New, "allocation failed: network \"backend\": no free address".into()),
            ],
            "t3 waits untouched"
        );
        // One write moves t1 to PENDING and stores its attachments.
        match &ops[0] {
            Op::Update(Object::Task(t)) => assert_eq!(t.networks, vec![att]),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_task_releasing_an_overlay_address_wakes_the_allocator() {
        use crate::model::{ObjectKind, OverlayAttachment};
        let (state, _) = state_with(&[("t1", TaskState::Running, TaskState::Running)]);
        let mut t = state.task(&"t1".into()).unwrap().as_ref().clone();
        // Without an overlay address, a task ending concerns no allocation.
        t.status.state = TaskState::Failed;
        let (_, c) = state.apply(&Transaction::new().update(t.clone())).unwrap();
        assert!(!allocation_relevant(&c));
        // With one, it frees an address a waiting task may take.
        t.networks = vec![NetworkAttachment {
            network: "o".into(),
            addresses: vec!["10.0.9.3".into()],
            overlay: Some(OverlayAttachment::default()),
        }];
        t.status.state = TaskState::Running;
        let (state, c) = state.apply(&Transaction::new().update(t.clone())).unwrap();
        assert!(!allocation_relevant(&c), "still running: nothing released");
        let mut t = state.task(&"t1".into()).unwrap().as_ref().clone();
        t.status.state = TaskState::Complete;
        let (_, c) = state.apply(&Transaction::new().update(t.clone())).unwrap();
        assert!(allocation_relevant(&c));
        let v = state.task(&"t1".into()).unwrap().meta.version;
        let (_, c) = state.apply(&Transaction::new().delete(ObjectKind::Task, "t1".to_string(), v)).unwrap();
        assert!(allocation_relevant(&c), "a deleted task releases too");
    }
}
