//! Shared test helpers: a small scheduler for the harness.
#![allow(dead_code)]

use swarm_core::scheduler::*;

/// The feasible node with the fewest tasks of the service, then the fewest
/// tasks, then the lowest id.
pub struct LeastLoaded;

impl Scheduler for LeastLoaded {
    fn name(&self) -> &str {
        "least-loaded"
    }
    fn schedule(&mut self, view: &ClusterView, batch: &[TaskRequest]) -> Vec<Decision> {
        let mut view = view.clone();
        batch
            .iter()
            .map(|req| {
                let mut why = Explanation::new(view.nodes.len());
                let mut best: Option<usize> = None;
                for (i, n) in view.nodes.iter().enumerate() {
                    match check_node(n, req) {
                        Ok(()) => {
                            let key = |n: &NodeInfo| (n.service_tasks(&req.service_id), n.total_tasks);
                            if best.is_none_or(|b| key(n) < key(&view.nodes[b])) {
                                best = Some(i);
                            }
                        }
                        Err(f) => why.add(&f),
                    }
                }
                match best {
                    Some(i) => {
                        view.nodes[i].reserve(req);
                        Decision::Assign(view.nodes[i].node.id.clone())
                    }
                    None => Decision::Unschedulable(why),
                }
            })
            .collect()
    }
}
