//! Table tests of the pure reconcile.

use super::*;
use crate::id::IdGen;
use crate::state::{Op, State, Transaction};
use crate::time::SpecDuration;
use std::time::Duration;

const T0: Timestamp = Timestamp(1_000_000_000_000);

fn task(state: TaskState, code_at: Timestamp, policy: RestartPolicy) -> Task {
    let mut t = Task { id: "t".into(), slot: Some(1), ..Default::default() };
    t.spec.restart_policy = policy;
    t.status.state = state;
    t.status.timestamp = code_at;
    t
}

#[test]
fn restart_policy_table() {
    let any = RestartPolicy::default();
    let on_failure = RestartPolicy { condition: RestartCondition::OnFailure, ..any };
    let none = RestartPolicy { condition: RestartCondition::None, ..any };
    let later = T0.plus(Duration::from_secs(5));
    let cases = [
        // (state, policy, is_job, now, expected)
        (TaskState::Failed, any, false, T0, RestartDecision::At(later)),
        (TaskState::Failed, any, false, later, RestartDecision::Now),
        (TaskState::Complete, any, false, later, RestartDecision::Now),
        (TaskState::Complete, on_failure, false, later, RestartDecision::Never),
        (TaskState::Failed, on_failure, false, later, RestartDecision::Now),
        (TaskState::Rejected, on_failure, false, later, RestartDecision::Now),
        (TaskState::Failed, none, false, later, RestartDecision::Never),
        (TaskState::Complete, any, true, later, RestartDecision::Never),
        (TaskState::Failed, any, true, later, RestartDecision::Now),
    ];
    for (i, (state, policy, job, now, want)) in cases.into_iter().enumerate() {
        let t = task(state, T0, policy);
        assert_eq!(restart_decision(&t, &[&t], job, now), want, "case {i}");
    }
}

#[test]
fn max_attempts_count_only_inside_the_window() {
    let policy = RestartPolicy {
        max_attempts: 2,
        window: SpecDuration::from_secs(60),
        delay: SpecDuration::ZERO,
        ..Default::default()
    };
    let now = T0.plus(Duration::from_secs(1000));
    let mut old1 = task(TaskState::Failed, T0, policy);
    old1.id = "a".into();
    let mut recent = task(TaskState::Failed, now.minus(Duration::from_secs(10)), policy);
    recent.id = "b".into();
    let current = task(TaskState::Failed, now, policy);
    // One earlier failure in the window + this one = 2 attempts: allowed.
    assert_eq!(restart_decision(&current, &[&old1, &recent, &current], false, now), RestartDecision::Now);
    let mut recent2 = recent.clone();
    recent2.id = "c".into();
    // Two earlier failures in the window + this one = 3 > 2: refused.
    assert_eq!(restart_decision(&current, &[&recent, &recent2, &current], false, now), RestartDecision::Never);
}

fn state_with(replicas: u64, running: u64) -> (State, Service) {
    let mut s = State::default();
    let node = Node::ready("n1", "h1", Resources::new(4_000_000_000, 1 << 33));
    let svc = Service {
        id: "s1".into(),
        spec: ServiceSpec::replicated("web", "nginx", replicas),
        spec_version: 1,
        job_iteration: 1,
        ..Default::default()
    };
    let mut tx = Transaction::new().create(node).create(svc.clone());
    for slot in 1..=running {
        let mut t = Task {
            id: format!("t{slot}").into(),
            service_id: "s1".into(),
            service_name: "web".into(),
            slot: Some(slot),
            node_id: Some("n1".into()),
            spec_version: 1,
            job_iteration: 1,
            desired_state: TaskState::Running,
            ..Default::default()
        };
        t.status.state = TaskState::Running;
        tx = tx.create(t);
    }
    s = s.apply(&tx).unwrap().0;
    let svc = s.service(&"s1".into()).unwrap().as_ref().clone();
    (s, svc)
}

#[test]
fn reconcile_scales_up_into_the_lowest_free_slots_and_down_from_the_highest() {
    let mut ids = IdGen::seeded(1);
    let (s, svc) = state_with(5, 3);
    let plan = reconcile_service(&s, &svc, T0, &mut ids);
    let created: Vec<u64> = plan
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Create(Object::Task(t)) => t.slot,
            _ => None,
        })
        .collect();
    assert_eq!(created, vec![4, 5]);

    let (s, svc) = state_with(1, 3);
    let plan = reconcile_service(&s, &svc, T0, &mut ids);
    let removed: Vec<u64> = plan
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Update(Object::Task(t)) if t.desired_state == TaskState::Remove => t.slot,
            _ => None,
        })
        .collect();
    assert_eq!(removed, vec![2, 3]);
    // Applying the plan converges: a second pass has nothing to do.
    let (s2, _) = s.apply(&Transaction { ops: plan.ops, timestamp: Some(T0) }).unwrap();
    let svc2 = s2.service(&"s1".into()).unwrap().as_ref().clone();
    assert!(reconcile_service(&s2, &svc2, T0, &mut ids).ops.is_empty());
}

#[test]
fn reconcile_orphans_and_replaces_tasks_of_a_down_node() {
    let mut ids = IdGen::seeded(2);
    let (s, svc) = state_with(2, 2);
    let mut node = s.node(&"n1".into()).unwrap().as_ref().clone();
    node.status.state = NodeState::Down;
    let (s, _) = s.apply(&Transaction::new().update(node)).unwrap();
    let plan = reconcile_service(&s, &svc, T0, &mut ids);
    let orphaned = plan
        .ops
        .iter()
        .filter(|op| matches!(op, Op::Update(Object::Task(t)) if t.status.state == TaskState::Orphaned))
        .count();
    let created = plan.ops.iter().filter(|op| matches!(op, Op::Create(Object::Task(_)))).count();
    assert_eq!((orphaned, created), (2, 2));
}
