//! Property test of the state machine: arbitrary sequences of transactions
//! (built from the current state, sometimes with stale versions, illegal
//! moves or dangling references) keep every invariant: a rejected
//! transaction changes nothing, a committed one moves the revision by one,
//! the indexes match the objects, task states never move back, no service
//! refers to a missing secret or network, and the snapshot image rebuilds
//! the same state.
//!
//! Half the cases run on the fixed seed, half on a fresh one from
//! `harness::test_seed` (printed; `SWARM_TEST_SEED=0x...` replays it).

use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, RngAlgorithm, RngSeed, TestCaseError, TestRunner};
use std::collections::BTreeMap;
use swarm_core::harness::test_seed;
use swarm_core::model::*;
use swarm_core::state::{Action, State, Transaction};
use swarm_core::time::Timestamp;

/// One raw choice; interpreted against the current state.
type Step = (u8, u8, u8, u8);

fn node(i: u8) -> Node {
    Node::ready(format!("n{i}"), format!("host{i}"), Resources::new(1_000_000_000, 1 << 30))
}

fn svc_name(i: u8) -> String {
    ["web", "api", "db", "cache"][(i % 4) as usize].to_string()
}

/// Builds one operation from a raw choice.
fn build(s: &State, (op, a, b, c): Step, tx: &mut Transaction) {
    let state = |i: u8| TaskState::ALL[(i % 14) as usize];
    match op % 12 {
        0 => *tx = std::mem::take(tx).create(node(a % 4)),
        1 => *tx = std::mem::take(tx).delete_any(ObjectKind::Node, format!("n{}", a % 4)),
        2 => {
            let mut spec = ServiceSpec::replicated(svc_name(b), "nginx:1.27", u64::from(c % 4));
            if c % 3 == 0 {
                spec.task_template.container.secrets =
                    vec![SecretReference { secret_name: format!("sec{}", c % 2), ..Default::default() }];
            }
            if c % 5 == 0 {
                spec.networks = vec![NetworkAttachmentConfig { target: format!("net{}", b % 2), aliases: vec![] }];
            }
            *tx = std::mem::take(tx).create(Service { id: format!("s{}", a % 4).into(), spec, ..Default::default() });
        }
        3 => {
            // Rename / rescale a service, with a stale version one time in four.
            if let Some(svc) = s.services().nth(usize::from(a) % 4) {
                let mut svc = svc.as_ref().clone();
                svc.spec.name = svc_name(b);
                svc.spec.mode.replicas = Some(u64::from(c % 5));
                if c % 4 == 0 {
                    svc.meta.version = Version(svc.meta.version.0.saturating_sub(1));
                }
                *tx = std::mem::take(tx).update(svc);
            }
        }
        4 => *tx = std::mem::take(tx).delete_any(ObjectKind::Service, format!("s{}", a % 4)),
        5 => {
            let mut t = Task {
                id: format!("t{}", a % 8).into(),
                service_id: format!("s{}", b % 4).into(),
                service_name: "x".into(),
                slot: Some(u64::from(c % 3)),
                ..Default::default()
            };
            t.status.state = state(c / 3);
            if c % 2 == 0 {
                t.node_id = Some(format!("n{}", b % 4).into());
            }
            *tx = std::mem::take(tx).create(t);
        }
        6 | 7 => {
            // Move a task's states (forward or backward) and maybe assign it.
            if let Some(t) = s.tasks().nth(usize::from(a) % 8) {
                let mut t = t.as_ref().clone();
                t.status.state = state(b);
                if c % 2 == 0 {
                    t.desired_state = state(c / 2);
                }
                if c % 3 == 0 {
                    t.node_id = Some(format!("n{}", b % 4).into());
                }
                if c % 7 == 0 {
                    t.slot = Some(99);
                }
                *tx = std::mem::take(tx).update(t);
            }
        }
        8 => *tx = std::mem::take(tx).delete_any(ObjectKind::Task, format!("t{}", a % 8)),
        9 => {
            let id = format!("sec{}", a % 3);
            *tx = if b % 2 == 0 {
                std::mem::take(tx).create(Secret {
                    id: id.clone().into(),
                    spec: SecretSpec { name: id, data: SecretBytes(vec![c]), ..Default::default() },
                    ..Default::default()
                })
            } else {
                std::mem::take(tx).delete_any(ObjectKind::Secret, id)
            };
        }
        10 => {
            let id = format!("net{}", a % 2);
            *tx = if b % 2 == 0 {
                std::mem::take(tx).create(Network {
                    id: id.clone().into(),
                    spec: NetworkSpec { name: id, ..Default::default() },
                    ..Default::default()
                })
            } else {
                std::mem::take(tx).delete_any(ObjectKind::Network, id)
            };
        }
        _ => {
            // A versioned delete, stale one time in two.
            if let Some(n) = s.nodes().nth(usize::from(a) % 4) {
                let v = if b % 2 == 0 { n.meta.version } else { Version(n.meta.version.0 + 1) };
                *tx = std::mem::take(tx).delete(ObjectKind::Node, n.id.to_string(), v);
            }
        }
    }
}

fn check_invariants(s: &State) -> Result<(), TestCaseError> {
    // Indexes match the objects.
    for svc in s.services() {
        let idx: Vec<String> = s.tasks_of_service(&svc.id).map(|t| t.id.to_string()).collect();
        let scan: Vec<String> = s.tasks().filter(|t| t.service_id == svc.id).map(|t| t.id.to_string()).collect();
        prop_assert_eq!(idx, scan, "tasks_of_service({})", svc.id);
        prop_assert_eq!(s.service_by_name(&svc.spec.name).map(|x| x.id.clone()), Some(svc.id.clone()));
        for r in &svc.spec.task_template.container.secrets {
            prop_assert!(s.secret_by_name(&r.secret_name).is_some(), "dangling secret {}", r.secret_name);
        }
        for n in &svc.spec.networks {
            prop_assert!(s.network_by_name(&n.target).is_some(), "dangling network {}", n.target);
        }
    }
    for n in s.nodes() {
        let idx: Vec<String> = s.tasks_on_node(&n.id).map(|t| t.id.to_string()).collect();
        let scan: Vec<String> =
            s.tasks().filter(|t| t.node_id.as_ref() == Some(&n.id)).map(|t| t.id.to_string()).collect();
        prop_assert_eq!(idx, scan, "tasks_on_node({})", n.id);
    }
    let names: Vec<&String> = s.services().map(|x| &x.spec.name).collect();
    let mut dedup = names.clone();
    dedup.sort();
    dedup.dedup();
    prop_assert_eq!(dedup.len(), names.len(), "service names are unique");
    // The image rebuilds the same state, indexes included.
    let image = s.to_image();
    let r = State::from_image(image.clone());
    prop_assert_eq!(r.to_image(), image);
    for svc in s.services() {
        prop_assert_eq!(r.tasks_of_service(&svc.id).count(), s.tasks_of_service(&svc.id).count());
    }
    for n in s.nodes() {
        prop_assert_eq!(r.tasks_on_node(&n.id).count(), s.tasks_on_node(&n.id).count());
    }
    Ok(())
}

#[test]
fn arbitrary_transaction_sequences_keep_every_invariant() {
    let steps = proptest::collection::vec(
        proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()), 1..4),
        1..60,
    );
    let runner = |seed: u64| {
        TestRunner::new(PtConfig {
            cases: 150,
            rng_algorithm: RngAlgorithm::ChaCha,
            rng_seed: RngSeed::Fixed(seed),
            failure_persistence: None,
            ..PtConfig::default()
        })
    };
    let totals = std::cell::Cell::new((0u32, 0u32));
    let name = "proptest_state::arbitrary_transaction_sequences_keep_every_invariant";
    for mut runner in [runner(0x5eed_0101), runner(test_seed(name))] {
        runner
            .run(&steps, |txs| {
                let mut s = State::default();
                // Highest state each live task reached, per field.
                let mut seen: BTreeMap<String, (TaskState, TaskState)> = BTreeMap::new();
                for (i, raw) in txs.into_iter().enumerate() {
                    let mut tx = Transaction::new();
                    for step in raw {
                        build(&s, step, &mut tx);
                    }
                    tx.timestamp = Some(Timestamp(1_000 + i as u64));
                    let before = s.to_image();
                    match s.apply(&tx) {
                        Ok((next, change)) => {
                            // A task deleted (and maybe re-created) here starts afresh.
                            for e in change.events.iter().filter(|e| e.action == Action::Delete) {
                                seen.remove(e.object.id());
                            }
                            prop_assert_eq!(change.revision, s.revision() + 1);
                            prop_assert_eq!(next.revision(), change.revision);
                            prop_assert_eq!(change.events.len(), tx.ops.len());
                            prop_assert_eq!(s.to_image(), before, "apply does not touch its input");
                            s = next;
                            let (ok, rejected) = totals.get();
                            totals.set((ok + 1, rejected));
                        }
                        Err(_) => {
                            prop_assert_eq!(s.to_image(), before);
                            let (ok, rejected) = totals.get();
                            totals.set((ok, rejected + 1));
                        }
                    }
                    // Task states only move forward while a task lives.
                    let live: BTreeMap<String, (TaskState, TaskState)> =
                        s.tasks().map(|t| (t.id.to_string(), (t.status.state, t.desired_state))).collect();
                    for (id, (st, ds)) in &live {
                        if let Some((pst, pds)) = seen.get(id) {
                            prop_assert!(st >= pst && ds >= pds, "task {id} moved back: {pst}->{st}, {pds}->{ds}");
                        }
                    }
                    seen = live;
                    for t in s.tasks() {
                        prop_assert_eq!(t.meta.updated_at.0 >= t.meta.created_at.0, true);
                    }
                    check_invariants(&s)?;
                }
                Ok(())
            })
            .unwrap();
    }
    let (ok, rejected) = totals.get();
    assert!(ok > 1000 && rejected > 1000, "committed {ok}, rejected {rejected}: both paths exercised");
}
