//! Counts a spec carries are bounded (`model::limits`): one over its limit
//! is refused with an error that names the field and the limit, through
//! validation, the embedding API and the store alike, and nothing changes;
//! one at its limit is accepted. Also the arithmetic those counts feed
//! (grace period, force-update counter) cannot overflow.

use std::sync::Arc;
use swarm_core::cluster::{Cluster, ClusterError};
use swarm_core::model::limits::*;
use swarm_core::model::*;
use swarm_core::state::{Transaction, TxError};
use swarm_core::store::{MemStore, Store, StoreError};
use swarm_core::time::SpecDuration;
use swarm_core::validate::{ValidationError, validate_cluster_spec, validate_raft_config, validate_service_spec};

/// The error must be about `field` alone, say `value` and the limit, and
/// its Display must carry all three.
fn assert_over_limit(err: &ValidationError, field: &str, value: impl ToString, limit: impl ToString) {
    let (value, limit) = (value.to_string(), limit.to_string());
    assert_eq!(err.errors.len(), 1, "expected one problem, got {err}");
    assert_eq!(err.errors[0].field, field, "{err}");
    let want = format!("{value} is above the limit of {limit}");
    assert_eq!(err.errors[0].reason, want);
    assert!(err.to_string().contains(&format!("{field}: {want}")), "{err}");
}

/// A service count: its field path, the mode it belongs to, how to set it,
/// and its limit.
struct ServiceCount {
    field: &'static str,
    mode: ServiceMode,
    set: fn(&mut ServiceSpec, u64),
    limit: u64,
}

fn service_counts() -> Vec<ServiceCount> {
    vec![
        ServiceCount {
            field: "mode.replicas",
            mode: ServiceMode::replicated(1),
            set: |s, n| s.mode.replicas = Some(n),
            limit: MAX_TASKS_PER_SERVICE,
        },
        ServiceCount {
            field: "mode.max_concurrent",
            mode: ServiceMode::replicated_job(1, 1),
            set: |s, n| s.mode.max_concurrent = Some(n),
            limit: MAX_TASKS_PER_SERVICE,
        },
        ServiceCount {
            field: "mode.total_completions",
            mode: ServiceMode::replicated_job(1, 1),
            set: |s, n| s.mode.total_completions = Some(n),
            limit: MAX_TASKS_PER_SERVICE,
        },
        ServiceCount {
            field: "task_template.placement.max_replicas",
            mode: ServiceMode::replicated(1),
            set: |s, n| s.task_template.placement.max_replicas = n,
            limit: MAX_TASKS_PER_SERVICE,
        },
        ServiceCount {
            field: "update_config.parallelism",
            mode: ServiceMode::replicated(1),
            set: |s, n| s.update_config.parallelism = n,
            limit: MAX_TASKS_PER_SERVICE,
        },
        ServiceCount {
            field: "rollback_config.parallelism",
            mode: ServiceMode::replicated(1),
            set: |s, n| s.rollback_config.parallelism = n,
            limit: MAX_TASKS_PER_SERVICE,
        },
        ServiceCount {
            field: "task_template.restart_policy.max_attempts",
            mode: ServiceMode::replicated(1),
            set: |s, n| s.task_template.restart_policy.max_attempts = n,
            limit: MAX_RESTART_ATTEMPTS,
        },
        ServiceCount {
            field: "task_template.container.health_check.retries",
            mode: ServiceMode::replicated(1),
            set: |s, n| {
                s.task_template.container.health_check =
                    Some(HealthCheck { retries: u32::try_from(n).unwrap_or(u32::MAX), ..Default::default() })
            },
            limit: u64::from(MAX_HEALTH_RETRIES),
        },
    ]
}

fn spec_with(c: &ServiceCount, n: u64) -> ServiceSpec {
    let mut s = ServiceSpec::replicated("web", "nginx:1.27", 1);
    s.mode = c.mode;
    (c.set)(&mut s, n);
    s
}

#[test]
fn every_service_count_is_accepted_at_its_limit_and_refused_above_it() {
    for c in service_counts() {
        validate_service_spec(&spec_with(&c, c.limit)).unwrap_or_else(|e| panic!("{} at its limit: {e}", c.field));
        let err = validate_service_spec(&spec_with(&c, c.limit + 1)).unwrap_err();
        assert_over_limit(&err, c.field, c.limit + 1, c.limit);
        // u64::MAX (u32::MAX for the u32 field) too.
        let huge =
            if c.limit <= u64::from(u32::MAX) && c.field.ends_with("retries") { u64::from(u32::MAX) } else { u64::MAX };
        let err = validate_service_spec(&spec_with(&c, huge)).unwrap_err();
        assert_over_limit(&err, c.field, huge, c.limit);
    }
}

#[tokio::test]
async fn scale_to_u64_max_is_refused_naming_the_field_and_changes_nothing() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let cluster = Cluster::with_seed(store.clone(), 1);
    cluster.create_service(ServiceSpec::replicated("web", "nginx:1.27", 3)).await.unwrap();
    let before = store.snapshot().await.unwrap();
    let err = cluster.scale("web", u64::MAX).await.unwrap_err();
    let ClusterError::Invalid(v) = &err else { panic!("expected a validation error, got {err:?}") };
    assert_over_limit(v, "mode.replicas", u64::MAX, MAX_TASKS_PER_SERVICE);
    assert!(err.to_string().contains("mode.replicas: 18446744073709551615 is above the limit of 1000000"), "{err}");
    let after = store.snapshot().await.unwrap();
    assert_eq!(after.revision(), before.revision(), "a refused scale writes nothing");
    assert_eq!(after.service_by_name("web").unwrap().spec.mode.replicas, Some(3));

    let err = cluster.scale("web", MAX_TASKS_PER_SERVICE + 1).await.unwrap_err();
    assert!(matches!(&err, ClusterError::Invalid(v) if v.has_field("mode.replicas")), "{err}");
    cluster.scale("web", MAX_TASKS_PER_SERVICE).await.expect("scaling to the limit is allowed");
    let svc = cluster.inspect_service("web").await.unwrap();
    assert_eq!(svc.spec.mode.replicas, Some(MAX_TASKS_PER_SERVICE));
}

#[tokio::test]
async fn every_way_in_refuses_a_count_over_its_limit_and_changes_nothing() {
    for c in service_counts() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let cluster = Cluster::with_seed(store.clone(), 1);
        let over = spec_with(&c, c.limit + 1);

        // create_service
        let err = cluster.create_service(over.clone()).await.unwrap_err();
        assert!(matches!(&err, ClusterError::Invalid(v) if v.has_field(c.field)), "{}: {err}", c.field);
        assert_eq!(store.snapshot().await.unwrap().revision(), 0, "{}: create wrote something", c.field);

        // update_service and modify_service on an existing service
        cluster.create_service(spec_with(&c, 1)).await.unwrap();
        let before = store.snapshot().await.unwrap();
        let err = cluster.update_service("web", over.clone()).await.unwrap_err();
        assert!(matches!(&err, ClusterError::Invalid(v) if v.has_field(c.field)), "{}: {err}", c.field);
        let set = c.set;
        let limit = c.limit;
        let err = cluster.modify_service("web", move |s| set(s, limit + 1)).await.unwrap_err();
        assert!(matches!(&err, ClusterError::Invalid(v) if v.has_field(c.field)), "{}: {err}", c.field);
        let after = store.snapshot().await.unwrap();
        assert_eq!(after.revision(), before.revision(), "{}: a refused update wrote something", c.field);
        assert_eq!(after.service_by_name("web").unwrap().spec, spec_with(&c, 1));

        // The store itself (a raft log entry, an embedder's own transaction).
        let svc = Service {
            id: "raw".into(),
            spec: ServiceSpec { name: "raw".into(), ..over.clone() },
            ..Default::default()
        };
        match store.commit(Transaction::new().create(svc)).await {
            Err(StoreError::Rejected(TxError::Invalid(v))) => assert!(v.has_field(c.field), "{v}"),
            other => panic!("{}: the store should refuse the spec, got {other:?}", c.field),
        }
        assert_eq!(store.snapshot().await.unwrap().revision(), before.revision());

        // At the limit, every way in accepts it.
        cluster.update_service("web", spec_with(&c, c.limit)).await.unwrap_or_else(|e| panic!("{}: {e}", c.field));
    }
}

/// A cluster-settings count: field path, how to set it (to a u64, cut to
/// the field's type), and its limit.
struct ClusterCount {
    field: &'static str,
    set: fn(&mut ClusterSpec, u64),
    limit: u64,
}

fn u32_of(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn cluster_counts() -> Vec<ClusterCount> {
    vec![
        ClusterCount {
            field: "orchestration.task_history_limit",
            set: |s, n| s.orchestration.task_history_limit = n,
            limit: MAX_TASK_HISTORY,
        },
        ClusterCount {
            field: "dispatcher.grace_periods",
            set: |s, n| s.dispatcher.grace_periods = u32_of(n),
            limit: u64::from(MAX_GRACE_PERIODS),
        },
        ClusterCount {
            field: "raft.election_tick",
            set: |s, n| s.raft.election_tick = u32_of(n),
            limit: u64::from(MAX_ELECTION_TICKS),
        },
        ClusterCount {
            field: "raft.snapshot_interval",
            set: |s, n| s.raft.snapshot_interval = n,
            limit: MAX_RAFT_LOG_ENTRIES,
        },
        ClusterCount {
            field: "raft.log_entries_for_slow_followers",
            set: |s, n| s.raft.log_entries_for_slow_followers = n,
            limit: MAX_RAFT_LOG_ENTRIES,
        },
        ClusterCount {
            field: "raft.keep_old_snapshots",
            set: |s, n| s.raft.keep_old_snapshots = n,
            limit: MAX_KEPT_SNAPSHOTS,
        },
    ]
}

#[tokio::test]
async fn every_cluster_count_is_refused_above_its_limit_and_changes_nothing() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let cluster = Cluster::with_seed(store.clone(), 1);
    cluster.set_cluster_spec(ClusterSpec::default()).await.unwrap();
    for c in cluster_counts() {
        let mut at = ClusterSpec::default();
        (c.set)(&mut at, c.limit);
        validate_cluster_spec(&at).unwrap_or_else(|e| panic!("{} at its limit: {e}", c.field));
        let mut over = ClusterSpec::default();
        (c.set)(&mut over, c.limit + 1);
        assert_over_limit(&validate_cluster_spec(&over).unwrap_err(), c.field, c.limit + 1, c.limit);

        let before = store.snapshot().await.unwrap();
        let err = cluster.set_cluster_spec(over).await.unwrap_err();
        assert!(matches!(&err, ClusterError::Invalid(v) if v.has_field(c.field)), "{}: {err}", c.field);
        let after = store.snapshot().await.unwrap();
        assert_eq!(after.revision(), before.revision(), "{}: a refused spec wrote something", c.field);
        assert_eq!(after.cluster_spec(), ClusterSpec::default());
    }
}

#[test]
fn heartbeat_and_raft_durations_are_bounded_both_ways() {
    let spec_hb = |d: SpecDuration| {
        let mut s = ClusterSpec::default();
        s.dispatcher.heartbeat_period = d;
        s
    };
    // 1 ns would make the dispatcher's check interval (half a period) zero.
    for d in [SpecDuration::ZERO, SpecDuration::from_nanos(1), SpecDuration::from_nanos(999_000)] {
        let err = validate_cluster_spec(&spec_hb(d)).unwrap_err();
        assert_eq!(err.errors.len(), 1, "{err}");
        assert_eq!(err.errors[0].field, "dispatcher.heartbeat_period");
        assert!(err.errors[0].reason.contains("below the minimum of 1ms"), "{err}");
    }
    validate_cluster_spec(&spec_hb(MIN_HEARTBEAT_PERIOD)).unwrap();
    validate_cluster_spec(&spec_hb(MAX_HEARTBEAT_PERIOD)).unwrap();
    let huge = SpecDuration(i64::MAX);
    assert_over_limit(
        &validate_cluster_spec(&spec_hb(huge)).unwrap_err(),
        "dispatcher.heartbeat_period",
        huge,
        MAX_HEARTBEAT_PERIOD,
    );

    let spec_tick = |d: SpecDuration| {
        let mut s = ClusterSpec::default();
        s.raft.tick = d;
        s
    };
    let err = validate_cluster_spec(&spec_tick(SpecDuration::ZERO)).unwrap_err();
    assert_eq!((err.errors[0].field.as_str(), err.errors[0].reason.as_str()), ("raft.tick", "must be above zero"));
    validate_cluster_spec(&spec_tick(MAX_RAFT_TICK)).unwrap();
    assert_over_limit(&validate_cluster_spec(&spec_tick(huge)).unwrap_err(), "raft.tick", huge, MAX_RAFT_TICK);

    let mut s = ClusterSpec::default();
    s.raft.heartbeat_tick = 0;
    let err = validate_cluster_spec(&s).unwrap_err();
    assert!(err.has_field("raft.heartbeat_tick"), "{err}");
}

#[test]
fn the_grace_period_saturates_instead_of_overflowing() {
    let cfg = DispatcherConfig { heartbeat_period: SpecDuration(i64::MAX), grace_periods: u32::MAX };
    // About 292 years times 4.3 billion: past what a Duration holds.
    assert_eq!(cfg.grace(), std::time::Duration::MAX);
    let dflt = DispatcherConfig::default();
    assert_eq!(dflt.grace(), std::time::Duration::from_secs(15));
}

#[tokio::test]
async fn force_update_wraps_its_counter_and_still_rolls() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let cluster = Cluster::with_seed(store.clone(), 1);
    let mut spec = ServiceSpec::replicated("web", "nginx:1.27", 1);
    spec.task_template.force_update = u64::MAX;
    cluster.create_service(spec).await.unwrap();
    cluster.force_update("web").await.expect("a force update at u64::MAX still works");
    let svc = cluster.inspect_service("web").await.unwrap();
    assert_eq!(svc.spec.task_template.force_update, 0);
    assert_eq!(svc.spec_version, 2, "the changed counter rolls the tasks");
}

#[test]
fn raft_settings_alone_follow_the_same_rules() {
    validate_raft_config(&RaftConfig::default()).expect("the defaults are valid");
    // A store's start-up settings multiply tick by election_tick: both
    // bounded, so that product cannot overflow.
    let cfg =
        RaftConfig { tick: SpecDuration::from_secs(365 * 24 * 3600), election_tick: u32::MAX, ..Default::default() };
    let err = validate_raft_config(&cfg).unwrap_err();
    assert_eq!(err.subject, "raft settings");
    let fields: Vec<&str> = err.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["raft.tick", "raft.election_tick"], "{err}");
    assert!(err.to_string().contains("raft.election_tick: 4294967295 is above the limit of 10000"), "{err}");
}
