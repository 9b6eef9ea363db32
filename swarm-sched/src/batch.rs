//! Batching: tasks of the same service and spec version, with the same
//! placement needs, form one group scheduled in one pass.
//!
//! Within a group every task asks the same thing, so the static filters
//! (readiness, constraints, platform) run once for the group, the
//! candidate nodes are scored once and kept in a heap, and the spread
//! counts carry over from task to task. Groups keep the order of their
//! first task in the batch; tasks keep their batch order inside a group.
//!
//! ```
//! use swarm_core::scheduler::TaskRequest;
//! use swarm_sched::batch::group_batch;
//! let t = |svc: &str, v: u64| TaskRequest { service_id: svc.into(), spec_version: v, ..Default::default() };
//! let batch = [t("web", 1), t("db", 1), t("web", 1), t("web", 2)];
//! assert_eq!(group_batch(&batch), vec![vec![0, 2], vec![1], vec![3]]);
//! ```

use std::collections::HashMap;
use swarm_core::id::ServiceId;
use swarm_core::scheduler::TaskRequest;

/// True when `a` and `b` ask for the same placement (everything but the
/// task id and a fixed node, which the pipeline handles per task).
pub fn same_shape(a: &TaskRequest, b: &TaskRequest) -> bool {
    a.service_id == b.service_id
        && a.spec_version == b.spec_version
        && a.node_id.is_some() == b.node_id.is_some()
        && a.constraints == b.constraints
        && a.preferences == b.preferences
        && a.max_replicas == b.max_replicas
        && a.platforms == b.platforms
        && a.reservations == b.reservations
        && a.host_ports == b.host_ports
}

/// Splits a batch into groups of positions: same service, same spec version
/// and same placement needs (requests built by hand may differ within a
/// service version; they then form separate groups).
pub fn group_batch(batch: &[TaskRequest]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_key: HashMap<(&ServiceId, u64), Vec<usize>> = HashMap::new();
    for (i, req) in batch.iter().enumerate() {
        let candidates = by_key.entry((&req.service_id, req.spec_version)).or_default();
        match candidates.iter().find(|&&g| same_shape(&batch[groups[g][0]], req)) {
            Some(&g) => groups[g].push(i),
            None => {
                candidates.push(groups.len());
                groups.push(vec![i]);
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_core::model::Resources;

    #[test]
    fn differing_requests_of_one_version_split() {
        let a = TaskRequest { service_id: "s".into(), reservations: Resources::new(1, 1), ..Default::default() };
        let b = TaskRequest { service_id: "s".into(), reservations: Resources::new(2, 1), ..Default::default() };
        let fixed = TaskRequest { service_id: "s".into(), node_id: Some("n1".into()), ..a.clone() };
        let fixed2 = TaskRequest { node_id: Some("n2".into()), ..fixed.clone() };
        let batch = [a.clone(), b, a, fixed, fixed2];
        assert_eq!(group_batch(&batch), vec![vec![0, 2], vec![1], vec![3, 4]]);
        assert!(group_batch(&[]).is_empty());
    }
}
