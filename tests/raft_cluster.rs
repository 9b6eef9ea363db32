//! examples/raft_cluster.rs, run: three raft managers, the manager's
//! control loops on each, agents following the leader through
//! `LeaderDispatcher`; the leading manager is stopped and the service stays
//! whole, then scales through a survivor.
//!
//! Real time (raft-rs runs on its own threads), bounded waits in the demo.

#[path = "../examples/raft_cluster.rs"]
mod example;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_survives_the_loss_of_the_leading_manager() {
    let r = example::demo().await.expect("the demo runs");
    assert_eq!(r.running_at_start, 4, "{r:#?}");
    assert_ne!(r.new_leader, r.first_leader, "another manager took over: {r:#?}");
    assert_eq!(r.running_after_failover, 4, "the new leader keeps the replica count: {r:#?}");
    assert!(r.same_tasks_after_failover, "no task was replaced across the failover: {r:#?}");
    assert_eq!(r.running_after_scale, 6, "a scale through a survivor is carried out: {r:#?}");
    assert_eq!(r.ready_nodes, 3, "every agent reconnected to the new leader: {r:#?}");
    assert!(r.on_the_network.is_empty(), "stopped managers left the network: {r:#?}");
    assert!(!r.data_dir.exists(), "the demo removed its data directory: {r:#?}");
}
