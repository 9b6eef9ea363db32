//! `Store::leadership` on the raft store: true on the leader only, moving
//! with the leadership, false once a manager stops; and a `Manager` built
//! on each of three managers runs its controllers on the leader only.

mod common;

use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm_core::cluster::Cluster as Api;
use swarm_core::manager::{Manager, ManagerConfig};
use swarm_core::model::{ServiceSpec, TaskState};
use swarm_core::scheduler::FirstFit;
use swarm_core::store::Store;

async fn leading_ids(c: &Cluster, within: Duration) -> Vec<u64> {
    // Settle: leadership is published after each raft step.
    let deadline = Instant::now() + within;
    loop {
        let ids: Vec<u64> = c.stores.iter().filter(|(_, s)| *s.leadership().borrow()).map(|(id, _)| *id).collect();
        if ids.len() == 1 || Instant::now() >= deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_follows_the_raft_leader() {
    let mut c = Cluster::start(3, 21).await;
    let leader = c.leader(Duration::from_secs(5)).await;
    assert_eq!(leading_ids(&c, Duration::from_secs(2)).await, vec![leader]);
    let mut old = c.store(leader).leadership();
    assert!(*old.borrow_and_update());
    c.stop(leader).await;
    assert!(!*old.borrow(), "a stopped manager does not lead");
    let next = c.leader(Duration::from_secs(5)).await;
    assert_ne!(next, leader);
    assert_eq!(leading_ids(&c, Duration::from_secs(2)).await, vec![next]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_on_every_raft_member_run_controllers_on_the_leader_only() {
    let mut c = Cluster::start(3, 22).await;
    let _managers: Vec<Manager> = c
        .stores
        .values()
        .map(|s| {
            Manager::builder(Arc::new(s.clone()))
                .scheduler(Box::new(FirstFit))
                .config(ManagerConfig { seed: Some(7), ..Default::default() })
                .start()
                .unwrap()
        })
        .collect();
    let leader = c.leader(Duration::from_secs(5)).await;
    let api = Api::new(Arc::new(c.store(leader).clone()));
    api.create_service(ServiceSpec::replicated("web", "nginx:1.27", 3)).await.unwrap();
    let live = |c: &Cluster| {
        let s = c.any().stale_snapshot();
        s.tasks().filter(|t| t.desired_state <= TaskState::Running).count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while live(&c) < 3 {
        assert!(Instant::now() < deadline, "the leader's orchestrator did not create the tasks");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Exactly three: one orchestrator ran (three would have made nine).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(live(&c), 3);

    // The leader goes; the new leader's controllers act on a scale-up.
    c.stop(leader).await;
    let next = c.leader(Duration::from_secs(5)).await;
    let api = Api::new(Arc::new(c.store(next).clone()));
    api.scale("web", 5).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while live(&c) < 5 {
        assert!(Instant::now() < deadline, "the new leader's orchestrator did not scale");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(live(&c), 5);
    drop(_managers);
    c.shutdown().await;
}
