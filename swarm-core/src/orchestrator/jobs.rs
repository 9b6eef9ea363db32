//! Jobs: replicated-job (run to `total_completions` successes,
//! `max_concurrent` at a time) and global-job (run once to completion on
//! every eligible node). A job's tasks belong to the service's current
//! `job_iteration`; bumping it (an update of the job) runs it again. A
//! completed job task is never restarted; a failed one follows the restart
//! policy (condition `any` behaves as `on-failure` for jobs).

use super::engine::{Ctx, SlotKey, SlotState, global_eligibility, group, settle_slot};
use super::is_live;
use crate::constraint::Constraint;
use crate::model::*;
use std::sync::Arc;

pub(crate) fn reconcile_job(ctx: &mut Ctx<'_>) {
    let iteration = ctx.svc.job_iteration;
    let all: Vec<Arc<Task>> = ctx.state.tasks_of_service(&ctx.svc.id).cloned().collect();
    for t in &all {
        if t.job_iteration != iteration && is_live(t) {
            ctx.shutdown(t, "superseded by a new run of the job");
        }
        if t.job_iteration == iteration && t.status.state == TaskState::Complete && is_live(t) {
            mark_complete(ctx, t);
        }
    }
    match ctx.svc.spec.mode.kind {
        ModeKind::GlobalJob => global_job(ctx, iteration),
        _ => replicated_job(ctx, iteration),
    }
}

fn mark_complete(ctx: &mut Ctx<'_>, t: &Task) {
    // Desired COMPLETE: the job task is done and must not be restarted.
    ctx.complete(t);
}

fn replicated_job(ctx: &mut Ctx<'_>, iteration: u64) {
    let total = ctx.svc.spec.mode.total_completions();
    let concurrent = ctx.svc.spec.mode.max_concurrent() as usize;
    let groups = group(ctx, |t| if t.job_iteration == iteration { t.slot.map(SlotKey::Slot) } else { None });
    let mut active = 0usize;
    let mut vacant = Vec::new();
    let mut unstarted = Vec::new();
    for slot in 1..=total {
        let Some(tasks) = groups.get(&SlotKey::Slot(slot)) else {
            unstarted.push(slot);
            continue;
        };
        if tasks.iter().any(|t| t.status.state == TaskState::Complete) {
            continue;
        }
        match settle_slot(ctx, tasks, None) {
            SlotState::Live(_) | SlotState::Stopping => active += 1,
            SlotState::Vacant => vacant.push(slot),
            SlotState::Dead => {}
        }
    }
    // Slots past the total (the job was shrunk) are removed.
    for (key, tasks) in &groups {
        if matches!(key, SlotKey::Slot(n) if *n > total) {
            for t in tasks {
                ctx.remove(t);
            }
        }
    }
    for slot in vacant.into_iter().chain(unstarted) {
        if active >= concurrent {
            break;
        }
        ctx.create(Some(slot), None);
        active += 1;
    }
}

fn global_job(ctx: &mut Ctx<'_>, iteration: u64) {
    let groups = group(ctx, |t| if t.job_iteration == iteration { t.node_id.clone().map(SlotKey::Node) } else { None });
    let placement = &ctx.svc.spec.task_template.placement;
    let Ok(constraints) = Constraint::parse_all(&placement.constraints) else { return };
    let platforms = placement.platforms.clone();
    let nodes: Vec<Arc<Node>> = ctx.state.nodes().cloned().collect();
    for (key, tasks) in &groups {
        let SlotKey::Node(node_id) = key else { continue };
        if tasks.iter().any(|t| t.status.state == TaskState::Complete) {
            continue;
        }
        let (keep, take) = match ctx.state.node(node_id) {
            Some(n) => global_eligibility(n, &constraints, &platforms),
            None => (false, false),
        };
        if settle_slot(ctx, tasks, Some(keep)) == SlotState::Vacant && take {
            ctx.create(None, Some(node_id.clone()));
        }
    }
    for node in nodes {
        if groups.contains_key(&SlotKey::Node(node.id.clone())) {
            continue;
        }
        if global_eligibility(&node, &constraints, &platforms).1 {
            ctx.create(None, Some(node.id.clone()));
        }
    }
}
