//! Upper bounds on every count a spec carries, so that no spec can make a
//! manager do unbounded work.
//!
//! The leader rebuilds every service's slots after each election, loops
//! over a job's completions, keeps task history per slot and multiplies
//! heartbeat settings into a grace period; a count of `u64::MAX` in any of
//! them would stall or crash it. Validation ([`crate::validate`]) rejects a
//! spec above any of these limits with an error naming the field, e.g.
//! `mode.replicas: 18446744073709551615 is above the limit of 1000000`, and
//! since the state machine validates every spec it stores, no store holds
//! one. The limits are constants of the cluster, the same on every manager
//! (a limit that could change would let an old log entry become invalid on
//! replay).
//!
//! ```
//! use swarm_core::model::{ServiceSpec, limits::MAX_TASKS_PER_SERVICE};
//! use swarm_core::validate::validate_service_spec;
//! let mut spec = ServiceSpec::replicated("web", "nginx:1.27", MAX_TASKS_PER_SERVICE);
//! assert!(validate_service_spec(&spec).is_ok());
//! spec.mode.replicas = Some(MAX_TASKS_PER_SERVICE + 1);
//! let err = validate_service_spec(&spec).unwrap_err();
//! assert_eq!(err.errors[0].field, "mode.replicas");
//! ```

use crate::time::SpecDuration;

/// Most tasks one service may ask for at once: `mode.replicas`,
/// `mode.max_concurrent` and `mode.total_completions` of a job, and (as
/// larger values mean nothing more) `task_template.placement.max_replicas`
/// and the update and rollback `parallelism`.
pub const MAX_TASKS_PER_SERVICE: u64 = 1_000_000;

/// Most restart attempts a restart policy may allow
/// (`task_template.restart_policy.max_attempts`). The reaper keeps
/// `max_attempts + 1` old tasks per slot to count them, so this also
/// bounds the history a policy can make the store keep.
pub const MAX_RESTART_ATTEMPTS: u64 = 1_000;

/// Most old tasks kept per slot (`orchestration.task_history_limit`).
pub const MAX_TASK_HISTORY: u64 = 1_000;

/// Most consecutive failed probes a health check may wait for
/// (`health_check.retries`).
pub const MAX_HEALTH_RETRIES: u32 = 1_000;

/// Shortest heartbeat period (`dispatcher.heartbeat_period`): the
/// dispatcher checks for silent nodes twice per period.
pub const MIN_HEARTBEAT_PERIOD: SpecDuration = SpecDuration::from_millis(1);

/// Longest heartbeat period: one day.
pub const MAX_HEARTBEAT_PERIOD: SpecDuration = SpecDuration::from_secs(24 * 3600);

/// Most heartbeat periods a node may miss before it is down
/// (`dispatcher.grace_periods`).
pub const MAX_GRACE_PERIODS: u32 = 1_000;

/// Longest raft tick (`raft.tick`): one minute.
pub const MAX_RAFT_TICK: SpecDuration = SpecDuration::from_secs(60);

/// Most ticks in a raft election timeout (`raft.election_tick`).
pub const MAX_ELECTION_TICKS: u32 = 10_000;

/// Most log entries between snapshots and kept for slow followers
/// (`raft.snapshot_interval`, `raft.log_entries_for_slow_followers`).
pub const MAX_RAFT_LOG_ENTRIES: u64 = 10_000_000;

/// Most old snapshots kept (`raft.keep_old_snapshots`).
pub const MAX_KEPT_SNAPSHOTS: u64 = 100;
