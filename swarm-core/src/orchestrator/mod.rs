//! The orchestrators: pure reconcile functions from (state, service, now)
//! to the store operations that move the service toward its spec.
//!
//! [`reconcile_service`] is level-triggered: it looks at the whole service
//! and its tasks each time, so it can run after any change, or after a
//! leader restart, without harm. It returns a [`Plan`]: the operations to
//! commit, and the earliest time it wants to look again (a restart delay,
//! an update delay, a monitor window). The async loop that runs it lives in
//! [`crate::manager`].
//!
//! One engine covers the four modes. A service's tasks are grouped by
//! *slot*: the slot number for replicated services and jobs, the node for
//! global ones. In each slot at most one task is *current* (the newest
//! whose desired state is still RUNNING or lower); older ones are history.
//!
//! Rules, in the order they are applied to each slot:
//! 1. A live task on a node that is down (or gone) is ORPHANED and
//!    replaced; on a drained node it is shut down and replaced; on a node a
//!    global service may no longer use it is shut down.
//! 2. A live task that ended on its own (COMPLETE, FAILED, REJECTED) goes
//!    to the restart policy: condition none|on-failure|any, max attempts
//!    within the window (counted over the slot's history), and the delay. A
//!    restart shuts it down and creates the replacement when the delay has
//!    passed; a refused restart leaves the slot *dead* until the service
//!    spec changes. A completed job task is never restarted.
//! 3. Replicated: slots are added (lowest free numbers) or removed (dead and
//!    vacant slots first, then unassigned tasks, then tasks on the nodes
//!    running the most tasks of the service, highest slot first) to reach
//!    the replica count. Global: one slot per eligible node.
//! 4. Rolling update ([`update`]): slots whose current task runs an older
//!    spec version are replaced, `parallelism` at a time, stop-first or
//!    start-first, with the delay, the monitor window, the failure ratio and
//!    the failure action.
//!
//! ```
//! use swarm_core::id::IdGen;
//! use swarm_core::model::{Node, Resources, Service, ServiceSpec, TaskState};
//! use swarm_core::orchestrator::reconcile_service;
//! use swarm_core::state::{Op, State, Transaction};
//! use swarm_core::time::Timestamp;
//!
//! let svc = Service { id: "s1".into(), spec: ServiceSpec::replicated("web", "nginx:1.27", 3), ..Default::default() };
//! let node = Node::ready("n1", "host-1", Resources::default());
//! let (state, _) = State::default().apply(&Transaction::new().create(svc).create(node)).unwrap();
//! let svc = state.service(&"s1".into()).unwrap();
//! // A pure decision: three new tasks in slots 1..3, nothing written yet.
//! let plan = reconcile_service(&state, svc, Timestamp::EPOCH, &mut IdGen::seeded(1));
//! let slots: Vec<u64> = plan.ops.iter().filter_map(|op| match op {
//!     Op::Create(swarm_core::model::Object::Task(t)) => { assert_eq!(t.status.state, TaskState::New); t.slot }
//!     _ => None,
//! }).collect();
//! assert_eq!(slots, vec![1, 2, 3]);
//! ```

mod engine;
mod jobs;
pub mod update;

pub use engine::{Plan, reconcile_service};

use crate::model::*;
use crate::time::Timestamp;

/// Why a slot's task ended, in words for its status message.
pub(crate) fn ended_on_its_own(t: &Task) -> bool {
    matches!(t.status.state, TaskState::Complete | TaskState::Failed | TaskState::Rejected)
}

/// True while the managers still want the task to run.
pub(crate) fn is_live(t: &Task) -> bool {
    t.desired_state <= TaskState::Running
}

/// What the restart policy says about a task that ended on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Replace it now.
    Now,
    /// Replace it at this time.
    At(Timestamp),
    /// Do not replace it.
    Never,
}

/// Applies a restart policy to `task`, which ended on its own, given the
/// other tasks of its slot (any order) and whether the service is a job.
pub fn restart_decision(task: &Task, slot_history: &[&Task], is_job: bool, now: Timestamp) -> RestartDecision {
    let policy = task.spec.restart_policy;
    let state = task.status.state;
    if state == TaskState::Complete && (is_job || policy.condition != RestartCondition::Any) {
        return RestartDecision::Never;
    }
    if policy.condition == RestartCondition::None {
        return RestartDecision::Never;
    }
    if policy.max_attempts > 0 {
        let window = policy.window.to_std();
        let since = if window.is_zero() { Timestamp::EPOCH } else { now.minus(window) };
        let attempts = slot_history
            .iter()
            .filter(|t| t.id != task.id && ended_on_its_own(t) && t.status.timestamp >= since)
            .count() as u64
            + 1;
        if attempts > policy.max_attempts {
            return RestartDecision::Never;
        }
    }
    let due = task.status.timestamp.plus(policy.delay.to_std());
    if now >= due { RestartDecision::Now } else { RestartDecision::At(due) }
}

#[cfg(test)]
mod tests;
