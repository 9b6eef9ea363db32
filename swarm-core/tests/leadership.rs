//! The control loops run only while this process leads.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarm_core::cluster::Cluster;
use swarm_core::manager::{Manager, ManagerConfig, run_while_leader};
use swarm_core::model::{ServiceSpec, TaskState};
use swarm_core::store::{MemStore, Store};

mod common;

fn tasks(store: &MemStore) -> usize {
    store.state().tasks().filter(|t| t.desired_state <= TaskState::Running).count()
}

#[tokio::test(start_paused = true)]
async fn loops_run_only_while_leader_and_resume_after_a_new_election() {
    let store = Arc::new(MemStore::new());
    let dyn_store: Arc<dyn Store> = store.clone();
    let (lead, leadership) = tokio::sync::watch::channel(false);
    let starts = Arc::new(Mutex::new(0));
    let s2 = starts.clone();
    let runner = tokio::spawn(run_while_leader(
        leadership,
        move || {
            *s2.lock().unwrap() += 1;
            Manager::start(
                dyn_store.clone(),
                Box::new(common::LeastLoaded),
                ManagerConfig { seed: Some(1), ..Default::default() },
            )
        },
        |_| {},
    ));
    let cluster = Cluster::with_seed(store.clone(), 2);
    cluster.create_service(ServiceSpec::replicated("web", "nginx:1.27", 3)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(tasks(&store), 0, "a follower does not orchestrate");
    lead.send_replace(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(tasks(&store), 3, "the leader creates the tasks");
    lead.send_replace(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.scale("web", 5).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(tasks(&store), 3, "loops stopped with the leadership");
    lead.send_replace(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(tasks(&store), 5, "a new term picks up where the state stands");
    assert_eq!(*starts.lock().unwrap(), 2);
    drop(lead);
    runner.await.unwrap();
}
