//! The deterministic state machine (`State::apply`) through the public API:
//! the task state machine, optimistic concurrency, atomicity, integrity
//! rules (names, references, immutable fields), the task indexes and the
//! snapshot image.

use std::collections::BTreeSet;
use swarm_core::id::{NodeId, ServiceId, TaskId};
use swarm_core::model::*;
use swarm_core::state::{Action, Op, State, StateImage, Transaction, TxError};
use swarm_core::store::{MemStore, Store, StoreError};
use swarm_core::time::Timestamp;

const TS: Timestamp = Timestamp(1_700_000_000_000_000_000);

/// Applies `tx` with a fixed timestamp and returns the new state.
fn apply(s: &State, tx: Transaction) -> State {
    try_apply(s, tx).unwrap_or_else(|e| panic!("transaction should commit: {e}")).0
}

fn try_apply(s: &State, mut tx: Transaction) -> Result<(State, swarm_core::state::Change), TxError> {
    tx.timestamp = Some(TS);
    s.apply(&tx)
}

/// Applies `tx`, expects a rejection, and checks the state did not move.
fn reject(s: &State, tx: Transaction) -> TxError {
    let before = s.to_image();
    let err = try_apply(s, tx).expect_err("transaction should be rejected");
    assert_eq!(s.to_image(), before, "a rejected transaction changes nothing");
    err
}

fn node(id: &str) -> Node {
    Node::ready(id, format!("host-{id}"), Resources::new(4_000_000_000, 8 << 30))
}

fn service(id: &str, name: &str) -> Service {
    Service { id: id.into(), spec: ServiceSpec::replicated(name, "nginx:1.27", 2), ..Default::default() }
}

fn task(id: &str, service: &str, slot: Option<u64>) -> Task {
    Task {
        id: id.into(),
        service_id: service.into(),
        service_name: "web".into(),
        slot,
        spec: TaskSpec { container: ContainerSpec::new("nginx:1.27"), ..Default::default() },
        ..Default::default()
    }
}

fn secret(id: &str, name: &str, data: &[u8]) -> Secret {
    Secret {
        id: id.into(),
        spec: SecretSpec { name: name.into(), data: SecretBytes(data.to_vec()), ..Default::default() },
        ..Default::default()
    }
}

fn config(id: &str, name: &str, data: &[u8]) -> Config {
    Config {
        id: id.into(),
        spec: ConfigSpec { name: name.into(), data: data.to_vec(), ..Default::default() },
        ..Default::default()
    }
}

fn network(id: &str, name: &str) -> Network {
    Network { id: id.into(), spec: NetworkSpec { name: name.into(), ..Default::default() }, ..Default::default() }
}

fn volume(id: &str, name: &str) -> Volume {
    Volume { id: id.into(), spec: VolumeSpec { name: name.into(), ..Default::default() }, ..Default::default() }
}

/// Two nodes and a service "web" (id s1).
fn base() -> State {
    apply(&State::default(), Transaction::new().create(node("n1")).create(node("n2")).create(service("s1", "web")))
}

fn get_task(s: &State, id: &str) -> Task {
    s.task(&TaskId::from(id)).expect("task exists").as_ref().clone()
}

fn task_ids<'a>(it: impl Iterator<Item = &'a std::sync::Arc<Task>>) -> Vec<String> {
    it.map(|t| t.id.to_string()).collect()
}

// ---------------------------------------------------------------- task states

#[test]
fn task_states_are_ordered_as_the_life_cycle() {
    let names: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "NEW",
            "PENDING",
            "ASSIGNED",
            "ACCEPTED",
            "PREPARING",
            "READY",
            "STARTING",
            "RUNNING",
            "COMPLETE",
            "SHUTDOWN",
            "FAILED",
            "REJECTED",
            "ORPHANED",
            "REMOVE"
        ]
    );
    assert!(TaskState::ALL.windows(2).all(|w| w[0] < w[1]));
    assert!(!TaskState::Running.is_terminal());
    assert!(TaskState::Complete.is_terminal());
}

/// A state with task t1 whose `field` is at `from`.
fn with_task_at(field: &str, from: TaskState) -> State {
    let mut t = task("t1", "s1", Some(1));
    match field {
        "status.state" => t.status.state = from,
        "desired_state" => t.desired_state = from,
        _ => unreachable!(),
    }
    apply(&base(), Transaction::new().create(t))
}

fn moved(s: &State, field: &str, to: TaskState) -> Task {
    let mut t = get_task(s, "t1");
    match field {
        "status.state" => t.status.state = to,
        "desired_state" => t.desired_state = to,
        _ => unreachable!(),
    }
    t
}

#[test]
fn every_forward_move_of_status_and_desired_state_is_accepted() {
    let mut checked = 0;
    for field in ["status.state", "desired_state"] {
        for from in TaskState::ALL {
            let s = with_task_at(field, from);
            for to in TaskState::ALL.into_iter().filter(|to| *to >= from) {
                let (next, change) = try_apply(&s, Transaction::new().update(moved(&s, field, to)))
                    .unwrap_or_else(|e| panic!("{field} {from} -> {to} should be legal: {e}"));
                let t = get_task(&next, "t1");
                let got = if field == "status.state" { t.status.state } else { t.desired_state };
                assert_eq!(got, to);
                assert_eq!(change.events.len(), 1);
                assert_eq!(change.events[0].action, Action::Update);
                assert_eq!(t.meta.version, Version(next.revision()));
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 14 * 15 / 2);
}

#[test]
fn every_backward_move_is_rejected_naming_both_states() {
    let mut checked = 0;
    for field in ["status.state", "desired_state"] {
        for from in TaskState::ALL {
            let s = with_task_at(field, from);
            for to in TaskState::ALL.into_iter().filter(|to| *to < from) {
                let err = reject(&s, Transaction::new().update(moved(&s, field, to)));
                match &err {
                    TxError::IllegalTransition { task, field: f, from: a, to: b } => {
                        assert_eq!(task, "t1");
                        assert_eq!(*f, field);
                        assert_eq!((*a, *b), (from, to));
                    }
                    other => panic!("{field} {from} -> {to}: expected IllegalTransition, got {other:?}"),
                }
                let msg = err.to_string();
                for needle in [from.as_str(), to.as_str(), field, "t1"] {
                    assert!(msg.contains(needle), "{msg:?} should name {needle}");
                }
                assert!(msg.find(from.as_str()) < msg.rfind(to.as_str()), "{msg:?}: from before to");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 14 * 13 / 2);
}

#[test]
fn a_full_task_life_cycle_commits_step_by_step() {
    let mut s = apply(&base(), Transaction::new().create(task("t1", "s1", Some(1))));
    for (i, st) in TaskState::ALL.into_iter().enumerate().skip(1).take(7) {
        let mut t = get_task(&s, "t1");
        t.status.state = st;
        t.desired_state = TaskState::Running;
        if st == TaskState::Assigned {
            t.node_id = Some("n1".into());
        }
        s = apply(&s, Transaction::new().update(t));
        assert_eq!(get_task(&s, "t1").status.state, TaskState::ALL[i]);
    }
    assert_eq!(get_task(&s, "t1").status.state, TaskState::Running);
    assert_eq!(task_ids(s.tasks_on_node(&"n1".into())), ["t1"]);
}

#[tokio::test]
async fn an_illegal_transition_through_a_store_changes_nothing() {
    let store = MemStore::new();
    store.commit(Transaction::new().create(node("n1")).create(service("s1", "web"))).await.unwrap();
    let mut t = task("t1", "s1", Some(1));
    t.status.state = TaskState::Running;
    store.commit(Transaction::new().create(t.clone())).await.unwrap();
    let before = store.state().to_image();
    let mut watch = store.watch(2).await.unwrap();
    let mut back = store.state().task(&"t1".into()).unwrap().as_ref().clone();
    back.status.state = TaskState::Pending;
    let err = store.commit(Transaction::new().update(back)).await.unwrap_err();
    assert!(matches!(
        &err,
        StoreError::Rejected(TxError::IllegalTransition { from: TaskState::Running, to: TaskState::Pending, .. })
    ));
    assert!(err.to_string().contains("RUNNING") && err.to_string().contains("PENDING"), "{err}");
    assert_eq!(store.state().to_image(), before);
    assert!(watch.try_next().is_none(), "a rejected transaction is not published");
}

// ------------------------------------------------------- optimistic concurrency

#[test]
fn a_stale_update_is_a_version_conflict() {
    let s = base();
    let stale = s.node(&"n1".into()).unwrap().as_ref().clone();
    assert_eq!(stale.meta.version, Version(1));
    let mut fresh = stale.clone();
    fresh.spec.availability = Availability::Drain;
    let s2 = apply(&s, Transaction::new().update(fresh));
    assert_eq!(s2.node(&"n1".into()).unwrap().meta.version, Version(2));

    let mut late = stale;
    late.spec.labels.insert("zone".into(), "eu".into());
    match reject(&s2, Transaction::new().update(late)) {
        TxError::VersionConflict { kind, id, expected, actual } => {
            assert_eq!((kind, id.as_str(), expected, actual), (ObjectKind::Node, "n1", 1, 2));
        }
        other => panic!("expected a version conflict, got {other:?}"),
    }
    // A version from the future is a conflict too.
    let mut future = s2.node(&"n1".into()).unwrap().as_ref().clone();
    future.meta.version = Version(99);
    assert!(matches!(reject(&s2, Transaction::new().update(future)), TxError::VersionConflict { expected: 99, .. }));
}

#[test]
fn a_stale_delete_is_a_version_conflict_and_an_unchecked_delete_is_not() {
    let s = base();
    let mut n = s.node(&"n2".into()).unwrap().as_ref().clone();
    n.spec.availability = Availability::Pause;
    let s2 = apply(&s, Transaction::new().update(n));
    let err = reject(&s2, Transaction::new().delete(ObjectKind::Node, "n2", Version(1)));
    assert_eq!(err, TxError::VersionConflict { kind: ObjectKind::Node, id: "n2".into(), expected: 1, actual: 2 });
    assert!(err.to_string().contains("version 1") && err.to_string().contains("version 2"), "{err}");

    let s3 = apply(&s2, Transaction::new().delete(ObjectKind::Node, "n2", Version(2)));
    assert!(s3.node(&"n2".into()).is_none());
    let s4 = apply(&s2, Transaction::new().delete_any(ObjectKind::Node, "n2"));
    assert!(s4.node(&"n2".into()).is_none());
}

#[test]
fn a_transaction_whose_last_op_conflicts_leaves_the_first_unapplied() {
    let s = base();
    let mut svc = s.service(&"s1".into()).unwrap().as_ref().clone();
    svc.meta.version = Version(0); // stale
    let tx = Transaction::new().create(node("n3")).create(task("t1", "s1", Some(1))).update(svc);
    assert!(matches!(reject(&s, tx), TxError::VersionConflict { kind: ObjectKind::Service, .. }));
    assert!(s.node(&"n3".into()).is_none());
    assert!(s.task(&"t1".into()).is_none());
    assert_eq!(s.revision(), 1);

    // Same with a stale delete last.
    let tx = Transaction::new().create(node("n3")).delete(ObjectKind::Node, "n1", Version(7));
    assert!(matches!(reject(&s, tx), TxError::VersionConflict { kind: ObjectKind::Node, expected: 7, .. }));
    assert!(s.node(&"n3".into()).is_none());
}

#[tokio::test]
async fn a_multi_op_conflict_through_a_store_changes_nothing_and_publishes_nothing() {
    let store = MemStore::new();
    store.commit(Transaction::new().create(node("n1"))).await.unwrap();
    let stale = store.state().node(&"n1".into()).unwrap().as_ref().clone();
    let mut n = stale.clone();
    n.spec.availability = Availability::Drain;
    store.commit(Transaction::new().update(n)).await.unwrap();
    let before = store.state().to_image();
    let mut watch = store.watch(2).await.unwrap();

    let err = store.commit(Transaction::new().create(node("n2")).update(stale)).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(store.state().revision(), 2);
    assert_eq!(store.state().to_image(), before);
    assert!(store.state().node(&"n2".into()).is_none());
    assert!(watch.try_next().is_none());

    // The next good commit gets the very next revision: no hole.
    let c = store.commit(Transaction::new().create(node("n2"))).await.unwrap();
    assert_eq!(c.revision, 3);
    assert_eq!(watch.try_next().unwrap().unwrap().revision, 3);
}

#[test]
fn versions_and_timestamps_are_set_by_the_state_machine() {
    let s = base();
    let n = s.node(&"n1".into()).unwrap();
    assert_eq!(n.meta.version, Version(1));
    assert_eq!(n.meta.created_at, TS);
    let mut upd = n.as_ref().clone();
    upd.meta.created_at = Timestamp(5); // ignored
    let mut tx = Transaction::new().update(upd);
    tx.timestamp = Some(Timestamp(TS.0 + 10));
    let (s2, change) = s.apply(&tx).unwrap();
    let n2 = s2.node(&"n1".into()).unwrap();
    assert_eq!(
        n2.meta,
        Meta { version: Version(2), created_revision: 1, created_at: TS, updated_at: Timestamp(TS.0 + 10) }
    );
    assert_eq!(change.revision, 2);
    assert_eq!(change.timestamp, Timestamp(TS.0 + 10));
    assert_eq!(change.events[0].old.as_ref().unwrap().meta().version, Version(1));
}

// ------------------------------------------------------------ integrity rules

#[test]
fn empty_transactions_and_empty_ids_are_rejected() {
    let s = base();
    assert_eq!(reject(&s, Transaction::new()), TxError::Empty);
    assert_eq!(reject(&s, Transaction::new().create(node(""))), TxError::EmptyId { kind: ObjectKind::Node });
}

#[test]
fn creating_an_existing_id_is_already_exists() {
    let s = base();
    for (tx, kind, id) in [
        (Transaction::new().create(node("n1")), ObjectKind::Node, "n1"),
        (Transaction::new().create(service("s1", "other")), ObjectKind::Service, "s1"),
        // Twice in one transaction.
        (Transaction::new().create(node("n9")).create(node("n9")), ObjectKind::Node, "n9"),
    ] {
        let err = reject(&s, tx);
        assert_eq!(err, TxError::AlreadyExists { kind, id: id.into() });
        assert!(err.to_string().contains("already exists"), "{err}");
    }
    // Only one cluster object.
    let c = Cluster { id: "c1".into(), ..Default::default() };
    let s2 = apply(&s, Transaction::new().create(c));
    let err = reject(&s2, Transaction::new().create(Cluster { id: "c2".into(), ..Default::default() }));
    assert!(matches!(err, TxError::AlreadyExists { kind: ObjectKind::Cluster, .. }), "{err:?}");
}

#[test]
fn updating_or_deleting_a_missing_object_is_not_found() {
    let s = base();
    assert_eq!(
        reject(&s, Transaction::new().update(node("ghost"))),
        TxError::NotFound { kind: ObjectKind::Node, id: "ghost".into() }
    );
    assert_eq!(
        reject(&s, Transaction::new().delete_any(ObjectKind::Task, "ghost")),
        TxError::NotFound { kind: ObjectKind::Task, id: "ghost".into() }
    );
    // The id exists, but as another kind.
    assert_eq!(
        reject(&s, Transaction::new().delete_any(ObjectKind::Service, "n1")),
        TxError::NotFound { kind: ObjectKind::Service, id: "n1".into() }
    );
    // Deleted earlier in the same transaction.
    let tx = Transaction::new().delete_any(ObjectKind::Node, "n2").delete_any(ObjectKind::Node, "n2");
    assert!(matches!(reject(&s, tx), TxError::NotFound { .. }));
}

#[test]
fn names_are_unique_per_kind() {
    let s = base();
    // Another service named "web".
    let err = reject(&s, Transaction::new().create(service("s2", "web")));
    assert_eq!(err, TxError::NameInUse { kind: ObjectKind::Service, name: "web".into(), id: "s1".into() });
    assert!(err.to_string().contains("\"web\"") && err.to_string().contains("s1"), "{err}");

    // The same name in other kinds is fine.
    let s = apply(
        &s,
        Transaction::new()
            .create(secret("x1", "web", b"a"))
            .create(config("x2", "web", b"a"))
            .create(network("x3", "web"))
            .create(volume("x4", "web")),
    );
    for (tx, kind) in [
        (Transaction::new().create(secret("y1", "web", b"b")), ObjectKind::Secret),
        (Transaction::new().create(config("y2", "web", b"b")), ObjectKind::Config),
        (Transaction::new().create(network("y3", "web")), ObjectKind::Network),
        (Transaction::new().create(volume("y4", "web")), ObjectKind::Volume),
    ] {
        assert!(matches!(reject(&s, tx), TxError::NameInUse { kind: k, .. } if k == kind));
    }

    // Renaming onto a taken name is refused; renaming frees the old name.
    let s = apply(&s, Transaction::new().create(service("s2", "api")));
    let mut api = s.service(&"s2".into()).unwrap().as_ref().clone();
    api.spec.name = "web".into();
    assert!(matches!(reject(&s, Transaction::new().update(api.clone())), TxError::NameInUse { .. }));
    api.spec.name = "api-v2".into();
    let s = apply(&s, Transaction::new().update(api));
    assert_eq!(s.service_by_name("api-v2").unwrap().id, ServiceId::from("s2"));
    assert!(s.service_by_name("api").is_none());
    let s = apply(&s, Transaction::new().create(service("s3", "api")));
    assert_eq!(s.service_by_name("api").unwrap().id, ServiceId::from("s3"));

    // Deleting frees the name; within one transaction too.
    let s = apply(&s, Transaction::new().delete_any(ObjectKind::Service, "s1").create(service("s4", "web")));
    assert_eq!(s.service_by_name("web").unwrap().id, ServiceId::from("s4"));
}

#[test]
fn a_service_referring_to_missing_objects_is_rejected() {
    let s = base();
    let mut svc = service("s2", "api");
    svc.spec.task_template.container.secrets =
        vec![SecretReference { secret_name: "db-pass".into(), ..Default::default() }];
    let err = reject(&s, Transaction::new().create(svc.clone()));
    assert_eq!(
        err,
        TxError::MissingReference {
            kind: ObjectKind::Service,
            name: "api".into(),
            ref_kind: ObjectKind::Secret,
            ref_name: "db-pass".into()
        }
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
    // Created in the same transaction, before the service: fine.
    let s_ok = apply(&s, Transaction::new().create(secret("sec1", "db-pass", b"pw")).create(svc.clone()));
    assert!(s_ok.service_by_name("api").is_some());
    // After the service in the same transaction: refused.
    assert!(matches!(
        reject(&s, Transaction::new().create(svc).create(secret("sec1", "db-pass", b"pw"))),
        TxError::MissingReference { ref_kind: ObjectKind::Secret, .. }
    ));

    let mut svc = service("s2", "api");
    svc.spec.task_template.container.configs =
        vec![ConfigReference { config_name: "app.toml".into(), ..Default::default() }];
    assert!(matches!(
        reject(&s, Transaction::new().create(svc)),
        TxError::MissingReference { ref_kind: ObjectKind::Config, ref_name, .. } if ref_name == "app.toml"
    ));

    let mut svc = service("s2", "api");
    svc.spec.networks = vec![NetworkAttachmentConfig { target: "backend".into(), aliases: vec![] }];
    assert!(matches!(
        reject(&s, Transaction::new().create(svc.clone())),
        TxError::MissingReference { ref_kind: ObjectKind::Network, ref_name, .. } if ref_name == "backend"
    ));
    // A reference by id works as well as by name.
    let s_ok = apply(&s, Transaction::new().create(network("net-id-1", "backend")));
    svc.spec.networks[0].target = "net-id-1".into();
    apply(&s_ok, Transaction::new().create(svc));

    // An update that adds a missing reference is refused too.
    let mut web = s.service(&"s1".into()).unwrap().as_ref().clone();
    web.spec.networks = vec![NetworkAttachmentConfig { target: "nope".into(), aliases: vec![] }];
    assert!(matches!(reject(&s, Transaction::new().update(web)), TxError::MissingReference { .. }));
}

#[test]
fn a_task_referring_to_a_missing_service_or_node_is_rejected() {
    let s = base();
    assert!(matches!(
        reject(&s, Transaction::new().create(task("t1", "nope", Some(1)))),
        TxError::MissingReference { kind: ObjectKind::Task, ref_kind: ObjectKind::Service, ref_name, .. } if ref_name == "nope"
    ));
    let mut t = task("t1", "s1", Some(1));
    t.node_id = Some("n9".into());
    assert!(matches!(
        reject(&s, Transaction::new().create(t)),
        TxError::MissingReference { ref_kind: ObjectKind::Node, ref_name, .. } if ref_name == "n9"
    ));
    // Assigning an existing task to a missing node.
    let s = apply(&s, Transaction::new().create(task("t1", "s1", Some(1))));
    let mut t = get_task(&s, "t1");
    t.node_id = Some("n9".into());
    assert!(matches!(reject(&s, Transaction::new().update(t)), TxError::MissingReference { .. }));
}

#[test]
fn deleting_a_referenced_secret_config_network_or_volume_is_in_use() {
    let s = apply(
        &base(),
        Transaction::new()
            .create(secret("sec1", "db-pass", b"pw"))
            .create(config("cfg1", "app.toml", b"x"))
            .create(network("net1", "backend"))
            .create(volume("vol1", "data")),
    );
    let mut svc = service("s2", "api");
    let c = &mut svc.spec.task_template.container;
    c.secrets = vec![SecretReference { secret_name: "db-pass".into(), ..Default::default() }];
    c.configs = vec![ConfigReference { config_name: "cfg1".into(), ..Default::default() }]; // by id
    c.mounts =
        vec![Mount { kind: MountKind::Volume, source: "data".into(), target: "/data".into(), ..Default::default() }];
    svc.spec.networks = vec![NetworkAttachmentConfig { target: "backend".into(), aliases: vec![] }];
    let s = apply(&s, Transaction::new().create(svc));

    for (kind, id, name) in [
        (ObjectKind::Secret, "sec1", "db-pass"),
        (ObjectKind::Config, "cfg1", "app.toml"),
        (ObjectKind::Network, "net1", "backend"),
        (ObjectKind::Volume, "vol1", "data"),
    ] {
        let err = reject(&s, Transaction::new().delete_any(kind, id));
        assert_eq!(err, TxError::InUse { kind, name: name.into(), users: vec!["service api".into()] });
        assert!(err.to_string().contains("in use by service api"), "{err}");
    }
    // Deleting the service first, in the same transaction, frees them all.
    let s2 = apply(
        &s,
        Transaction::new()
            .delete_any(ObjectKind::Service, "s2")
            .delete_any(ObjectKind::Secret, "sec1")
            .delete_any(ObjectKind::Config, "cfg1")
            .delete_any(ObjectKind::Network, "net1")
            .delete_any(ObjectKind::Volume, "vol1"),
    );
    assert!(s2.secret_by_name("db-pass").is_none() && s2.network_by_name("backend").is_none());
    assert!(s2.config_by_name("app.toml").is_none() && s2.volume_by_name("data").is_none());
}

#[test]
fn secret_and_config_data_are_immutable() {
    let s =
        apply(&base(), Transaction::new().create(secret("sec1", "db-pass", b"pw")).create(config("cfg1", "c", b"1")));
    let mut sec = s.secret(&"sec1".into()).unwrap().as_ref().clone();
    sec.spec.data = SecretBytes(b"other".to_vec());
    let err = reject(&s, Transaction::new().update(sec.clone()));
    assert_eq!(err, TxError::Immutable { kind: ObjectKind::Secret, id: "sec1".into(), field: "spec.data" });
    assert!(err.to_string().contains("spec.data cannot be changed"), "{err}");
    // Labels may change.
    sec.spec.data = SecretBytes(b"pw".to_vec());
    sec.spec.labels.insert("rotated".into(), "no".into());
    apply(&s, Transaction::new().update(sec));

    let mut cfg = s.config(&"cfg1".into()).unwrap().as_ref().clone();
    cfg.spec.data = b"2".to_vec();
    assert!(matches!(reject(&s, Transaction::new().update(cfg)), TxError::Immutable { field: "spec.data", .. }));
}

#[test]
fn task_service_id_slot_and_assigned_node_are_immutable() {
    let s = apply(&base(), Transaction::new().create(service("s2", "api")).create(task("t1", "s1", Some(1))));
    let t = get_task(&s, "t1");

    let mut moved = t.clone();
    moved.service_id = "s2".into();
    assert_eq!(
        reject(&s, Transaction::new().update(moved)),
        TxError::Immutable { kind: ObjectKind::Task, id: "t1".into(), field: "service_id" }
    );
    let mut reslot = t.clone();
    reslot.slot = Some(2);
    assert!(matches!(reject(&s, Transaction::new().update(reslot)), TxError::Immutable { field: "slot", .. }));
    let mut unslot = t.clone();
    unslot.slot = None;
    assert!(matches!(reject(&s, Transaction::new().update(unslot)), TxError::Immutable { field: "slot", .. }));

    // node_id: None -> Some is the assignment; after that it is fixed.
    let mut assigned = t.clone();
    assigned.node_id = Some("n1".into());
    let s = apply(&s, Transaction::new().update(assigned));
    let t = get_task(&s, "t1");
    for other in [Some(NodeId::from("n2")), None] {
        let mut m = t.clone();
        m.node_id = other;
        let err = reject(&s, Transaction::new().update(m));
        assert!(matches!(err, TxError::Immutable { field, .. } if field.starts_with("node_id")), "{err:?}");
    }
    // Unchanged node_id with a forward move is fine even after the node is gone.
    let s = apply(&s, Transaction::new().delete_any(ObjectKind::Node, "n1"));
    let mut m = get_task(&s, "t1");
    m.status.state = TaskState::Orphaned;
    apply(&s, Transaction::new().update(m));
}

// ------------------------------------------------------------------ indexes

/// Task ids per service and per node.
type Indexes = (Vec<(String, Vec<String>)>, Vec<(String, Vec<String>)>);

fn index_snapshot(s: &State) -> Indexes {
    let by_service = s.services().map(|x| (x.id.to_string(), task_ids(s.tasks_of_service(&x.id)))).collect();
    let by_node = s.nodes().map(|x| (x.id.to_string(), task_ids(s.tasks_on_node(&x.id)))).collect();
    (by_service, by_node)
}

/// The indexes recomputed from the task objects.
fn index_expected(s: &State) -> Indexes {
    let by_service =
        s.services().map(|x| (x.id.to_string(), task_ids(s.tasks().filter(|t| t.service_id == x.id)))).collect();
    let by_node = s
        .nodes()
        .map(|x| (x.id.to_string(), task_ids(s.tasks().filter(|t| t.node_id.as_ref() == Some(&x.id)))))
        .collect();
    (by_service, by_node)
}

#[test]
fn task_indexes_follow_create_update_and_delete() {
    let mut s = apply(&base(), Transaction::new().create(service("s2", "api")));
    let mut tx = Transaction::new();
    for i in 0..6 {
        let svc = if i % 2 == 0 { "s1" } else { "s2" };
        tx = tx.create(task(&format!("t{i}"), svc, Some(i / 2 + 1)));
    }
    s = apply(&s, tx);
    assert_eq!(task_ids(s.tasks_of_service(&"s1".into())), ["t0", "t2", "t4"]);
    assert_eq!(task_ids(s.tasks_of_service(&"s2".into())), ["t1", "t3", "t5"]);
    assert_eq!(s.tasks_on_node(&"n1".into()).count(), 0);
    assert_eq!(index_snapshot(&s), index_expected(&s));

    // Assign t0, t1 to n1 and t2 to n2.
    let mut tx = Transaction::new();
    for (t, n) in [("t0", "n1"), ("t1", "n1"), ("t2", "n2")] {
        let mut task = get_task(&s, t);
        task.node_id = Some(n.into());
        task.status.state = TaskState::Assigned;
        tx = tx.update(task);
    }
    s = apply(&s, tx);
    assert_eq!(task_ids(s.tasks_on_node(&"n1".into())), ["t0", "t1"]);
    assert_eq!(task_ids(s.tasks_on_node(&"n2".into())), ["t2"]);
    assert_eq!(index_snapshot(&s), index_expected(&s));

    // Delete t0 and t2: both indexes shrink.
    s = apply(&s, Transaction::new().delete_any(ObjectKind::Task, "t0").delete_any(ObjectKind::Task, "t2"));
    assert_eq!(task_ids(s.tasks_of_service(&"s1".into())), ["t4"]);
    assert_eq!(task_ids(s.tasks_on_node(&"n1".into())), ["t1"]);
    assert_eq!(s.tasks_on_node(&"n2".into()).count(), 0);
    assert_eq!(index_snapshot(&s), index_expected(&s));

    // Delete the rest: nothing left anywhere.
    let mut tx = Transaction::new();
    for t in ["t1", "t3", "t4", "t5"] {
        tx = tx.delete_any(ObjectKind::Task, t);
    }
    s = apply(&s, tx);
    assert_eq!(s.tasks_of_service(&"s1".into()).count() + s.tasks_of_service(&"s2".into()).count(), 0);
    assert_eq!(s.tasks_on_node(&"n1".into()).count(), 0);
    assert_eq!(s.counts(), (2, 2, 0));
}

#[test]
fn older_snapshots_keep_their_indexes() {
    let s1 = apply(&base(), Transaction::new().create(task("t1", "s1", Some(1))));
    let s2 = apply(&s1, Transaction::new().delete_any(ObjectKind::Task, "t1"));
    assert_eq!(task_ids(s1.tasks_of_service(&"s1".into())), ["t1"], "persistent: s1 is untouched by s2");
    assert_eq!(s2.tasks_of_service(&"s1".into()).count(), 0);
}

// ------------------------------------------------------------ state image

/// A state with every kind of object, assigned tasks and some history.
fn rich_state() -> State {
    let mut s = apply(
        &base(),
        Transaction::new()
            .create(Cluster { id: "c1".into(), ..Default::default() })
            .create(secret("sec1", "db-pass", b"\x00\xffpw"))
            .create(config("cfg1", "app.toml", b"x=1"))
            .create(network("net1", "backend"))
            .create(volume("vol1", "data")),
    );
    let mut svc = service("s2", "api");
    svc.spec.task_template.container.secrets =
        vec![SecretReference { secret_name: "db-pass".into(), ..Default::default() }];
    svc.spec.networks = vec![NetworkAttachmentConfig { target: "backend".into(), aliases: vec!["a".into()] }];
    s = apply(&s, Transaction::new().create(svc));
    let mut tx = Transaction::new();
    for i in 0..5u64 {
        let mut t = task(&format!("t{i}"), if i < 3 { "s1" } else { "s2" }, Some(i + 1));
        if i != 4 {
            t.node_id = Some(if i % 2 == 0 { "n1" } else { "n2" }.into());
            t.status.state = TaskState::Running;
            t.status.container_id = Some(format!("c{i}"));
        }
        tx = tx.create(t);
    }
    s = apply(&s, tx);
    apply(&s, Transaction::new().delete_any(ObjectKind::Task, "t1"))
}

#[test]
fn a_state_image_round_trips_with_its_indexes() {
    let s = rich_state();
    let image = s.to_image();
    assert_eq!(image.revision, s.revision());
    let r = State::from_image(image.clone());
    assert_eq!(r.to_image(), image);
    assert_eq!(r.revision(), s.revision());
    assert_eq!(r.counts(), s.counts());
    assert_eq!(index_snapshot(&r), index_snapshot(&s));
    assert_eq!(index_snapshot(&r), index_expected(&r));
    for name in ["web", "api"] {
        assert_eq!(r.service_by_name(name).map(|x| x.id.clone()), s.service_by_name(name).map(|x| x.id.clone()));
    }
    assert_eq!(r.secret_by_name("db-pass").unwrap().spec.data, SecretBytes(b"\x00\xffpw".to_vec()));
    assert!(r.config_by_name("app.toml").is_some() && r.network_by_name("backend").is_some());
    assert!(r.volume_by_name("data").is_some() && r.cluster().is_some());

    // Through JSON (a raft snapshot on disk) too.
    let json = serde_json::to_vec(&image).unwrap();
    let back: StateImage = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, image);
    let r2 = State::from_image(back);
    assert_eq!(index_snapshot(&r2), index_snapshot(&s));

    // The rebuilt state enforces the same rules and reaches the same next state.
    let tx = Transaction::new().create(service("s3", "web"));
    assert_eq!(reject(&r, tx.clone()), reject(&s, tx));
    let tx = Transaction::new().delete_any(ObjectKind::Secret, "sec1");
    assert!(matches!(reject(&r, tx), TxError::InUse { .. }));
    let mut t = get_task(&s, "t0");
    t.status.state = TaskState::Complete;
    let tx = Transaction::new().update(t).delete_any(ObjectKind::Task, "t2").create(task("t9", "s2", Some(9)));
    let (a, ca) = try_apply(&s, tx.clone()).unwrap();
    let (b, cb) = try_apply(&r, tx).unwrap();
    assert_eq!(ca, cb);
    assert_eq!(a.to_image(), b.to_image());
    assert_eq!(index_snapshot(&a), index_snapshot(&b));
}

#[test]
fn apply_is_deterministic_and_pure() {
    let s = rich_state();
    let before = s.to_image();
    let tx = Transaction::new().create(node("n3")).delete_any(ObjectKind::Task, "t0");
    let (a, ca) = try_apply(&s, tx.clone()).unwrap();
    let (b, cb) = try_apply(&s, tx).unwrap();
    assert_eq!(ca, cb);
    assert_eq!(a.to_image(), b.to_image());
    assert_eq!(s.to_image(), before, "apply does not touch the input state");
    let events: Vec<Action> = ca.events.iter().map(|e| e.action).collect();
    assert_eq!(events, [Action::Create, Action::Delete]);
    // Ops serialize (the raft log carries them).
    let op = Op::Delete { kind: ObjectKind::Task, id: "t0".into(), version: Some(Version(3)) };
    let back: Op = serde_json::from_str(&serde_json::to_string(&op).unwrap()).unwrap();
    assert_eq!(back, op);
    let ids: BTreeSet<String> = a.tasks().map(|t| t.id.to_string()).collect();
    assert!(!ids.contains("t0"));
}

#[test]
fn task_names_cut_non_ascii_ids_on_a_character() {
    // 11 ASCII bytes then a 2-byte character: byte 12 is inside it.
    let mut t = task("aaaaaaaaaaaé-and-more", "s1", Some(3));
    assert_eq!(t.name(), "web.3.aaaaaaaaaaaé");
    t.slot = None;
    t.node_id = Some("n1".into());
    assert_eq!(t.name(), "web.n1.aaaaaaaaaaaé");
    t.node_id = None;
    assert_eq!(task("短", "s1", None).name(), "web.短");
    // Such a task can be stored, and its name is what the change carries.
    let s = apply(&base(), Transaction::new().create(t.clone()));
    assert_eq!(s.get(ObjectKind::Task, "aaaaaaaaaaaé-and-more").unwrap().name(), "web.aaaaaaaaaaaé");
}

// ------------------------------------------------- read-modify-write retry

fn count_of(n: &Node) -> u64 {
    n.spec.labels.get("count").and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn increment(s: &State) -> Option<Transaction> {
    let mut n = s.node(&"n1".into())?.as_ref().clone();
    n.spec.labels.insert("count".into(), (count_of(&n) + 1).to_string());
    Some(Transaction::new().update(n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_read_modify_write_with_retry_loses_no_update() {
    let store = MemStore::new();
    store.commit(Transaction::new().create(node("n1"))).await.unwrap();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    let c = swarm_core::store::update_with_retry(&store, 10_000, increment).await.unwrap();
                    assert!(c.is_some());
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let s = store.state();
    assert_eq!(count_of(s.node(&"n1".into()).unwrap()), 200, "every increment landed exactly once");
    assert_eq!(s.revision(), 201, "no conflicting write was committed");
}

#[tokio::test]
async fn update_with_retry_gives_up_with_the_conflict_and_skips_empty_builds() {
    let store = MemStore::new();
    store.commit(Transaction::new().create(node("n1"))).await.unwrap();
    // Nothing to write: no commit.
    assert!(swarm_core::store::update_with_retry(&store, 3, |_| None).await.unwrap().is_none());
    assert_eq!(store.state().revision(), 1);
    // Always stale: every attempt conflicts, the error says so, nothing changes.
    let attempts = std::sync::atomic::AtomicUsize::new(0);
    let err = swarm_core::store::update_with_retry(&store, 3, |s| {
        attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut n = s.node(&"n1".into()).unwrap().as_ref().clone();
        n.meta.version = Version(0);
        Some(Transaction::new().update(n))
    })
    .await
    .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(store.state().revision(), 1);
    // A non-conflict rejection is returned at once.
    let attempts = std::sync::atomic::AtomicUsize::new(0);
    let err = swarm_core::store::update_with_retry(&store, 3, |_| {
        attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(Transaction::new().create(node("n1")))
    })
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Rejected(TxError::AlreadyExists { .. })), "{err}");
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 1);
}

// ------------------------------------------------ status-only task updates

/// The full update a status-only op stands for: the stored task with the
/// new status.
fn full_status_update(s: &State, id: &str, status: &TaskStatus) -> Transaction {
    let mut t = get_task(s, id);
    t.status = status.clone();
    Transaction::new().update(t)
}

fn status(state: TaskState, message: &str) -> TaskStatus {
    TaskStatus { state, message: message.into(), container_id: Some("c-new".into()), ..Default::default() }
}

#[test]
fn a_status_op_is_applied_as_the_full_update_would_be() {
    let s = rich_state();
    let t0 = get_task(&s, "t0");
    let st = status(TaskState::Complete, "finished");
    let full = try_apply(&s, full_status_update(&s, "t0", &st)).unwrap();
    let short =
        try_apply(&s, Transaction::new().update_task_status(t0.id.clone(), t0.meta.version, st.clone())).unwrap();
    // Same events (an Update of the task with the new status, and the old
    // task), same revision and timestamp, same state, indexes included.
    assert_eq!(short.1, full.1);
    assert_eq!(short.1.events.len(), 1);
    assert_eq!(short.1.events[0].action, Action::Update);
    assert_eq!(short.1.events[0].old, Some(Object::Task(t0.clone())));
    assert_eq!(short.0.to_image(), full.0.to_image());
    assert_eq!(index_snapshot(&short.0), index_snapshot(&full.0));
    let after = get_task(&short.0, "t0");
    assert_eq!(after.status, st);
    assert_eq!(after.meta.version, Version(short.1.revision));
    assert_eq!(after.meta.updated_at, TS);
    assert_eq!(after.meta.created_at, t0.meta.created_at);
    assert_eq!(after.meta.created_revision, t0.meta.created_revision);
    // Everything but the status and the meta is the stored task's.
    let mut expected = t0;
    expected.status = st;
    expected.meta = after.meta.clone();
    assert_eq!(after, expected);
}

#[test]
fn a_stale_status_op_is_a_version_conflict_and_changes_nothing() {
    let s = rich_state();
    let t0 = get_task(&s, "t0");
    let s2 = apply(
        &s,
        Transaction::new().update_task_status(t0.id.clone(), t0.meta.version, status(TaskState::Running, "a")),
    );
    let err = reject(
        &s2,
        Transaction::new().update_task_status(t0.id.clone(), t0.meta.version, status(TaskState::Complete, "b")),
    );
    let full_err = {
        let mut stale = t0.clone();
        stale.status = status(TaskState::Complete, "b");
        reject(&s2, Transaction::new().update(stale))
    };
    assert_eq!(err, full_err, "the same refusal as the full update's");
    assert!(matches!(err, TxError::VersionConflict { kind: ObjectKind::Task, ref id, .. } if id == "t0"), "{err}");
    // In a transaction with other ops, the conflict refuses them all.
    let tx = Transaction::new().create(node("n9")).update_task_status(
        t0.id.clone(),
        t0.meta.version,
        status(TaskState::Complete, "b"),
    );
    reject(&s2, tx);
    // Without a version the check is skipped, as for an unchecked delete.
    let mut tx = Transaction::new();
    tx.push(Op::UpdateTaskStatus {
        id: t0.id.clone(),
        version: None,
        status: status(TaskState::Complete, "c"),
        networks: None,
    });
    assert_eq!(get_task(&apply(&s2, tx), "t0").status.message, "c");
}

#[test]
fn a_status_op_is_refused_where_the_full_update_is() {
    let s = rich_state();
    let t0 = get_task(&s, "t0");
    // Backwards.
    let back = status(TaskState::Assigned, "back");
    let err = reject(&s, Transaction::new().update_task_status(t0.id.clone(), t0.meta.version, back.clone()));
    assert_eq!(err, reject(&s, full_status_update(&s, "t0", &back)));
    assert!(matches!(err, TxError::IllegalTransition { field: "status.state", .. }), "{err}");
    // Missing (t1 was deleted).
    let err =
        reject(&s, Transaction::new().update_task_status("t1".into(), Version(1), status(TaskState::Running, "")));
    assert!(matches!(err, TxError::NotFound { kind: ObjectKind::Task, ref id } if id == "t1"), "{err}");
}

#[test]
fn a_status_op_gives_every_replica_the_same_state() {
    let s = rich_state();
    let replica = State::from_image(s.to_image());
    let t0 = get_task(&s, "t0");
    let t2 = get_task(&s, "t2");
    let mut tx = Transaction::new()
        .update_task_status(t0.id, t0.meta.version, status(TaskState::Failed, "exit 1"))
        .update_task_status(t2.id, t2.meta.version, status(TaskState::Complete, "exit 0"));
    tx.timestamp = Some(TS);
    // Through the log's encoding, as a follower gets it.
    let json = serde_json::to_string(&tx).unwrap();
    assert!(json.contains(r#""op":"updatetaskstatus""#), "{json}");
    assert!(!json.contains("nginx"), "the entry carries no spec: {json}");
    let decoded: Transaction = serde_json::from_str(&json).unwrap();
    assert_eq!(decoded, tx);
    let (a, ca) = s.apply(&tx).unwrap();
    let (b, cb) = replica.apply(&decoded).unwrap();
    assert_eq!(ca, cb);
    assert_eq!(a.to_image(), b.to_image());
    assert_eq!(index_snapshot(&a), index_snapshot(&b));
    // Applying it again is a version conflict everywhere, and changes nothing.
    assert_eq!(reject(&a, tx.clone()), reject(&b, decoded));
}

/// Any sequence of status reports, some of them stale or backwards, leaves
/// the same states, changes and refusals whether written as status-only
/// ops or as full updates.
#[test]
fn status_ops_and_full_updates_agree_on_any_sequence() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config as PtConfig, RngAlgorithm, RngSeed, TestRunner};
    let runner = |seed| {
        TestRunner::new(PtConfig {
            cases: 64,
            rng_algorithm: RngAlgorithm::ChaCha,
            rng_seed: RngSeed::Fixed(seed),
            failure_persistence: None,
            ..PtConfig::default()
        })
    };
    // (task, state, message, use a stale version)
    let step = (0..5usize, 0..TaskState::ALL.len(), "[a-z]{0,3}", prop::bool::weighted(0.2));
    let steps = prop::collection::vec(step, 1..12);
    for seed in [0x5747_u64, swarm_core::harness::test_seed("status_ops_and_full_updates_agree_on_any_sequence")] {
        runner(seed)
            .run(&steps, |steps| {
                let (mut short, mut full) = (rich_state(), rich_state());
                for (i, state, message, stale) in steps {
                    let id = format!("t{i}");
                    let st = status(TaskState::ALL[state], &message);
                    let Some(current) = short.task(&TaskId::from(id.as_str())).cloned() else {
                        continue;
                    };
                    let version =
                        if stale { Version(current.meta.version.0.saturating_sub(1)) } else { current.meta.version };
                    let mut t = current.as_ref().clone();
                    t.status = st.clone();
                    t.meta.version = version;
                    let a = try_apply(&short, Transaction::new().update_task_status(current.id.clone(), version, st));
                    let b = try_apply(&full, Transaction::new().update(t));
                    match (a, b) {
                        (Ok((sa, ca)), Ok((sb, cb))) => {
                            prop_assert_eq!(ca, cb);
                            prop_assert_eq!(sa.to_image(), sb.to_image());
                            (short, full) = (sa, sb);
                        }
                        (Err(ea), Err(eb)) => prop_assert_eq!(ea, eb),
                        (a, b) => {
                            prop_assert!(false, "status op {:?} but full update {:?}", a.map(|_| ()), b.map(|_| ()))
                        }
                    }
                }
                prop_assert_eq!(index_snapshot(&short), index_snapshot(&full));
                Ok(())
            })
            .unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
    }
}

#[test]
fn an_assign_op_applies_and_refuses_as_the_full_update() {
    let s = rich_state();
    let t4 = get_task(&s, "t4");
    let assigned = status(TaskState::Assigned, "scheduler assigned task to node");
    let op = |version| Op::AssignTask { id: t4.id.clone(), version, node: "n1".into(), status: assigned.clone() };
    let mut full = t4.clone();
    full.node_id = Some("n1".into());
    full.status = assigned.clone();
    let mut tx = Transaction::new();
    tx.push(op(Some(t4.meta.version)));
    tx.timestamp = Some(TS);
    let mut full_tx = Transaction::new().update(full);
    full_tx.timestamp = tx.timestamp;
    // Through the log's encoding: compact, and the same state and events.
    let json = serde_json::to_string(&tx).unwrap();
    assert!(json.contains(r#""op":"assigntask""#) && !json.contains("nginx"), "{json}");
    let decoded: Transaction = serde_json::from_str(&json).unwrap();
    let (a, ca) = s.apply(&decoded).unwrap();
    let (b, cb) = s.apply(&full_tx).unwrap();
    assert_eq!(get_task(&a, "t4"), get_task(&b, "t4"));
    assert_eq!(ca, cb);
    // A stale version is the full update's conflict, and changes nothing.
    let s2 = apply(&s, tx);
    let mut stale = Transaction::new();
    stale.push(op(Some(t4.meta.version)));
    assert!(matches!(reject(&s2, stale), TxError::VersionConflict { ref id, .. } if id == "t4"));
    // Backwards (RUNNING -> ASSIGNED) is refused as the full update is.
    let t0 = get_task(&s, "t0");
    let mut back = Transaction::new();
    back.push(Op::AssignTask {
        id: t0.id.clone(),
        version: Some(t0.meta.version),
        node: "n2".into(),
        status: assigned,
    });
    assert!(matches!(reject(&s, back), TxError::IllegalTransition { field: "status.state", .. }));
}
