//! Membership: add, promote, demote, remove (including the leader),
//! leadership transfer, and the force-new-cluster recovery.

mod common;

use common::*;
use std::time::{Duration, Instant};
use swarm_core::store::{Store, StoreError};
use swarm_raft::{RaftStore, Role};

async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_learner_promote_demote_and_remove() {
    let mut c = Cluster::start_with(3, 31, |cfg| cfg.with_snapshot_interval(10, 2)).await;
    c.leader(Duration::from_secs(5)).await;
    for i in 0..30 {
        commit_retry(c.any(), node_tx(&format!("m{i}")), Duration::from_secs(5)).await.expect("write");
    }
    // A new manager joins with an empty directory and no initial voters.
    let new = c.open(4, vec![]).await;
    let voters = c.store(2).add_learner(4).await.expect("add learner");
    assert_eq!(voters.len(), 3);
    wait_for("the learner to catch up by snapshot", Duration::from_secs(5), || {
        new.stale_snapshot().revision() == 30 && new.status().snapshot_index > 0
    })
    .await;
    // Promote: 4 voters, quorum 3.
    let voters = c.store(1).add_voter(4).await.expect("promote");
    assert_eq!(voters.len(), 4);
    commit_retry(&new, node_tx("from-new"), Duration::from_secs(5)).await.expect("write on the new manager");
    // Demote back to learner, then remove.
    c.store(3).demote(4).await.expect("demote");
    wait_for("demotion seen", Duration::from_secs(5), || c.store(1).status().learners == vec![4]).await;
    let voters = c.store(3).remove(4).await.expect("remove");
    assert_eq!(voters.len(), 3);
    wait_for("manager 4 knows it was removed", Duration::from_secs(5), || new.status().removed).await;
    let err = new.commit(node_tx("refused")).await.expect_err("a removed manager refuses writes");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    commit_retry(c.store(1), node_tx("still"), Duration::from_secs(5)).await.expect("cluster goes on");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_or_demoting_the_leader_keeps_the_cluster_writable() {
    let mut c = Cluster::start(5, 32).await;
    let leader = c.leader(Duration::from_secs(5)).await;
    commit_retry(c.any(), node_tx("a"), Duration::from_secs(5)).await.expect("write");
    // Remove the leader, asked on the leader itself.
    let voters = c.store(leader).remove(leader).await.expect("remove the leader");
    assert!(!voters.contains(&leader) && voters.len() == 4, "{voters:?}");
    c.stop(leader).await;
    let second = c.leader(Duration::from_secs(5)).await;
    assert_ne!(second, leader);
    commit_retry(c.any(), node_tx("b"), Duration::from_secs(5)).await.expect("write after removing the leader");
    // Demote the new leader, asked on another manager.
    let other = *c.stores.keys().find(|&&i| i != second).expect("another manager");
    c.store(other).demote(second).await.expect("demote the leader");
    wait_for("a new leader", Duration::from_secs(5), || {
        c.stores.values().any(|s| s.status().role == Role::Leader && s.id() != second)
    })
    .await;
    commit_retry(c.store(other), node_tx("c"), Duration::from_secs(5)).await.expect("write after demoting the leader");
    let st = c.store(other).status();
    assert_eq!(st.voters.len(), 3, "{st:?}");
    assert_eq!(st.learners, vec![second]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_transfer() {
    let c = Cluster::start(3, 33).await;
    let leader = c.leader(Duration::from_secs(5)).await;
    let target = *c.ids.iter().find(|&&i| i != leader).expect("a follower");
    // Asked on a follower that is not the target: forwarded to the leader.
    let asker = *c.ids.iter().find(|&&i| i != leader && i != target).expect("a third manager");
    c.store(asker).transfer_leadership(target).await.expect("transfer");
    wait_for("the target to lead", Duration::from_secs(1), || c.store(target).status().role == Role::Leader).await;
    commit_retry(c.store(leader), node_tx("x"), Duration::from_secs(5)).await.expect("write via the old leader");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_recovers_from_one_survivor() {
    let mut c = Cluster::start_with(3, 34, |cfg| cfg.with_snapshot_interval(7, 2)).await;
    c.leader(Duration::from_secs(5)).await;
    for i in 0..20 {
        commit_retry(c.any(), node_tx(&format!("f{i}")), Duration::from_secs(5)).await.expect("write");
    }
    c.converge(Duration::from_secs(5)).await;
    // Managers 2 and 3 are lost for good; 1 alone has no quorum.
    for id in [1, 2, 3] {
        c.stop(id).await;
    }
    std::fs::remove_dir_all(c.dir(2)).expect("lose manager 2");
    std::fs::remove_dir_all(c.dir(3)).expect("lose manager 3");
    let dir = c.dir(1);
    let index = tokio::task::spawn_blocking(move || RaftStore::force_new_cluster(&dir, 1))
        .await
        .expect("join")
        .expect("force new cluster");
    assert!(index > 0);
    c.ids = vec![1];
    let s = c.restart(1).await;
    assert_eq!(s.status().voters, vec![1]);
    let st = read_retry(&s, Duration::from_secs(5)).await;
    assert_eq!(st.revision(), 20);
    commit_retry(&s, node_tx("after"), Duration::from_secs(5)).await.expect("write on the forced cluster");
    // Rebuild: a new manager joins with an empty directory.
    let new = c.open(2, vec![]).await;
    s.add_voter(2).await.expect("add a manager back");
    wait_for("the new manager to catch up", Duration::from_secs(5), || new.stale_snapshot().revision() == 21).await;
    c.shutdown().await;
}

/// A manager that joins with an empty log must learn the founders'
/// membership before it applies the log: the bootstrap membership lives in
/// a snapshot, so the founders' log starts after it and a joiner is sent
/// that snapshot first. (With the bootstrap snapshot at index 0 a joiner
/// could be sent the log from index 1 instead, apply "add me" to an empty
/// membership, believe itself the only voter and, after a restart, elect
/// itself: the CI failure of quorum_of_2_managers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_learns_the_founders_membership_even_before_any_snapshot() {
    // No snapshot is taken and no entry is compacted during the test.
    let mut c = Cluster::start_with(1, 35, |cfg| cfg.with_snapshot_interval(1_000_000, 1_000_000)).await;
    c.leader(Duration::from_secs(5)).await;
    commit_retry(c.store(1), node_tx("before"), Duration::from_secs(5)).await.expect("write");
    let new = c.open(2, vec![]).await;
    let voters = c.store(1).add_voter(2).await.expect("add a voter");
    assert_eq!(voters, vec![1, 2]);
    wait_for("the joiner to apply its own addition", Duration::from_secs(5), || !new.status().voters.is_empty()).await;
    assert_eq!(new.status().voters, vec![1, 2], "the joiner's membership");
    // Restarted, the joiner still knows it is one of two: it cannot elect
    // itself alone, and the pair keeps committing.
    c.stop(2).await;
    let new = c.restart(2).await;
    assert_eq!(new.status().voters, vec![1, 2], "the joiner's membership after a restart");
    commit_retry(&new, node_tx("after"), Duration::from_secs(5)).await.expect("write through the joiner");
    assert_eq!(c.store(1).status().role, Role::Leader, "the founder still leads");
    c.shutdown().await;
}
