//! The rolling update: replacing the tasks that run an older spec version.
//!
//! Parameters come from the service's `update_config` (or
//! `rollback_config` while rolling back), with Swarm's defaults:
//! parallelism 1, delay 0, stop-first, failure action pause, monitor 5 s,
//! max failure ratio 0.
//!
//! - A slot is *outdated* when its current task runs an older spec version.
//! - A slot is *updating* while its replacement is not yet RUNNING (and
//!   healthy, when it has a health check), or while its old task is being
//!   stopped (stop-first). At most `parallelism` slots update at once (0 =
//!   all at once); after a batch, the next waits `delay`.
//! - Stop-first stops the old task and creates the new one once the old one
//!   has stopped. Start-first creates the new task next to the old one; the
//!   old one is stopped once the new one is running and healthy (see the
//!   slot rules in [`super`]).
//! - A new task that fails within `monitor` of its start counts as a
//!   failure; when failures exceed `max_failure_ratio` of the replicas the
//!   failure action runs: pause (the update stops until resumed), continue,
//!   or rollback (the previous spec becomes the spec again and is rolled out
//!   with `rollback_config`).
//! - The update is complete when no slot is outdated or updating and the
//!   last new task has been up for `monitor`.

use super::engine::{Ctx, Slot, SlotKey, SlotState};
use crate::model::*;
use crate::time::Timestamp;

fn is_rollback(s: &Service) -> bool {
    matches!(
        s.update_status.as_ref().map(|u| u.state),
        Some(UpdateState::RollbackStarted | UpdateState::RollbackPaused | UpdateState::RollbackCompleted)
    )
}

fn set_status(ctx: &mut Ctx<'_>, state: UpdateState, message: String) {
    let now = ctx.now;
    let svc = ctx.edit_service();
    let st = svc.update_status.get_or_insert_with(UpdateStatus::default);
    st.state = state;
    st.message = message;
    if matches!(state, UpdateState::Completed | UpdateState::RollbackCompleted) {
        st.completed_at = Some(now);
    }
}

/// Rolls the service's outdated slots forward. See the [module docs](self).
pub(crate) fn rolling_update(ctx: &mut Ctx<'_>, slots: &[Slot]) {
    let svc = ctx.svc;
    let version = svc.spec_version;
    let status = svc.update_status.clone();
    let rolling_back = is_rollback(svc);
    let cfg = if rolling_back { svc.spec.rollback_config } else { svc.spec.update_config };
    let in_progress =
        matches!(status.as_ref().map(|s| s.state), Some(UpdateState::Updating | UpdateState::RollbackStarted));
    let paused = matches!(status.as_ref().map(|s| s.state), Some(UpdateState::Paused | UpdateState::RollbackPaused));

    let mut outdated: Vec<(&Slot, &Task)> = Vec::new();
    let mut updating = 0usize;
    let mut last_up: Option<Timestamp> = None;
    for s in slots {
        match &s.state {
            SlotState::Live(cur) if cur.spec_version < version => outdated.push((s, cur.as_ref())),
            SlotState::Live(cur) => {
                if cur.is_running_and_healthy() {
                    if let Some(t) = cur.status.started_at {
                        last_up = Some(last_up.map_or(t, |l| l.max(t)));
                    }
                } else if !cur.status.state.is_terminal() {
                    updating += 1;
                }
            }
            SlotState::Stopping | SlotState::Vacant => {
                if s.tasks.last().is_some_and(|t| t.spec_version < version) {
                    updating += 1;
                }
            }
            SlotState::Dead => {}
        }
    }

    if paused {
        return;
    }

    if in_progress {
        let since = status.as_ref().and_then(|s| s.started_at).unwrap_or(Timestamp::EPOCH);
        let monitor = cfg.monitor.to_std();
        let failed: Vec<&Task> = slots
            .iter()
            .flat_map(|s| s.tasks.iter())
            .map(|t| t.as_ref())
            .filter(|t| {
                t.spec_version == version
                    && matches!(t.status.state, TaskState::Failed | TaskState::Rejected)
                    && t.status.timestamp >= since
                    && t.status.started_at.is_none_or(|st| t.status.timestamp.since(st) <= monitor)
            })
            .collect();
        let total = slots.len().max(1) as f32;
        if !failed.is_empty() && failed.len() as f32 / total > cfg.max_failure_ratio {
            let first = failed[0];
            let why = format!(
                "task {} failed ({}{})",
                first.id,
                first.status.err.clone().unwrap_or_else(|| first.status.message.clone()),
                first.status.exit_code.map(|c| format!(", exit code {c}")).unwrap_or_default()
            );
            match cfg.failure_action {
                FailureAction::Continue => {}
                FailureAction::Pause => {
                    let (st, what) = if rolling_back {
                        (UpdateState::RollbackPaused, "rollback")
                    } else {
                        (UpdateState::Paused, "update")
                    };
                    set_status(ctx, st, format!("{what} paused: {why}"));
                    return;
                }
                FailureAction::Rollback if !rolling_back && svc.previous_spec.is_some() => {
                    let now = ctx.now;
                    let s = ctx.edit_service();
                    if let Some(prev) = s.previous_spec.take() {
                        let failed_spec = std::mem::replace(&mut s.spec, *prev);
                        s.previous_spec = Some(Box::new(failed_spec));
                        s.spec_version += 1;
                        s.update_status = Some(UpdateStatus {
                            state: UpdateState::RollbackStarted,
                            started_at: Some(now),
                            completed_at: None,
                            message: format!("update rolled back: {why}"),
                        });
                    }
                    return;
                }
                FailureAction::Rollback => {
                    set_status(ctx, UpdateState::RollbackPaused, format!("rollback paused: {why}"));
                    return;
                }
            }
        }
    }

    if outdated.is_empty() {
        if in_progress && updating == 0 {
            let done_at = last_up.unwrap_or(ctx.now).plus(cfg.monitor.to_std());
            if ctx.now >= done_at {
                let (st, msg) = if rolling_back {
                    (UpdateState::RollbackCompleted, "rollback completed")
                } else {
                    (UpdateState::Completed, "update completed")
                };
                set_status(ctx, st, msg.into());
            } else {
                ctx.wake_at(done_at);
            }
        }
        return;
    }

    let parallelism = if cfg.parallelism == 0 { usize::MAX } else { cfg.parallelism as usize };
    let mut budget = parallelism.saturating_sub(updating);
    let delay = cfg.delay.to_std();
    if budget > 0 && !delay.is_zero() && updating == 0 {
        if let Some(last) =
            last_up.filter(|l| *l >= status.as_ref().and_then(|s| s.started_at).unwrap_or(Timestamp::EPOCH))
        {
            let next = last.plus(delay);
            if ctx.now < next {
                ctx.wake_at(next);
                budget = 0;
            }
        }
    }
    for (slot, current) in outdated.into_iter().take(budget) {
        match cfg.order {
            UpdateOrder::StopFirst => ctx.shutdown(current, "shutdown for update"),
            UpdateOrder::StartFirst => match &slot.key {
                SlotKey::Slot(n) => ctx.create(Some(*n), None),
                SlotKey::Node(n) => ctx.create(None, Some(n.clone())),
            },
        }
    }
}
