//! Orchestration scenarios on the harness: MemStore + SimRuntime + the
//! manager's loops + one agent per node, under tokio's paused clock.

use std::time::Duration;
use swarm_core::harness::{Harness, running_count};
use swarm_core::model::*;
use swarm_core::sim::{Fault, FaultRule};
use swarm_core::state::State;
use swarm_core::time::SpecDuration;

mod common;
use common::LeastLoaded;

async fn harness(nodes: usize) -> Harness {
    Harness::builder().nodes(nodes).scheduler(LeastLoaded).seed(7).build().await.expect("harness")
}

const MIN: Duration = Duration::from_secs(60);

fn live_tasks(s: &State, name: &str) -> Vec<Task> {
    let svc = s.service_by_name(name).expect("service");
    s.tasks_of_service(&svc.id).filter(|t| t.desired_state <= TaskState::Running).map(|t| (**t).clone()).collect()
}

fn all_tasks(s: &State, name: &str) -> Vec<Task> {
    let svc = s.service_by_name(name).expect("service");
    s.tasks_of_service(&svc.id).map(|t| (**t).clone()).collect()
}

#[tokio::test(start_paused = true)]
async fn replicated_service_converges_with_slots_1_to_n_spread_over_nodes() {
    let h = harness(3).await;
    h.cluster().create_service(ServiceSpec::replicated("web", "nginx:1.27", 6)).await.unwrap();
    let s = h.wait_running("web", 6, MIN).await.unwrap();
    let mut slots: Vec<u64> = live_tasks(&s, "web").iter().filter_map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, vec![1, 2, 3, 4, 5, 6]);
    for i in 0..3 {
        assert_eq!(h.sim(i).running().len(), 2, "node {i} runs 2 containers");
    }
    for t in live_tasks(&s, "web") {
        assert!(t.status.container_id.is_some());
        assert!(!t.networks.is_empty() && !t.networks[0].addresses.is_empty(), "running task has an address");
    }
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn scale_0_to_100_to_10_removes_highest_slots() {
    let h = harness(4).await;
    let mut spec = ServiceSpec::replicated("api", "app:1", 0);
    spec.task_template.resources.reservations = Resources::new(10_000_000, 1 << 20);
    h.cluster().create_service(spec).await.unwrap();
    h.advance(Duration::from_secs(1)).await;
    assert_eq!(all_tasks(&h.state(), "api").len(), 0);
    h.cluster().scale("api", 100).await.unwrap();
    h.wait_running("api", 100, MIN).await.unwrap();
    h.cluster().scale("api", 10).await.unwrap();
    let s = h
        .wait_for("10 tasks left, 90 removed", MIN, |s| {
            running_count(s, "api") == 10 && all_tasks(s, "api").len() == 10
        })
        .await
        .unwrap();
    let total_running: usize = (0..4).map(|i| h.sim(i).running().len()).sum();
    assert_eq!(total_running, 10, "the removed tasks' containers are stopped");
    let slots: Vec<u64> = live_tasks(&s, "api").iter().filter_map(|t| t.slot).collect();
    assert!(slots.iter().all(|s| *s <= 100));
    // Balanced nodes lose tasks evenly: highest slots from the busiest nodes.
    let per_node: Vec<usize> = (0..4).map(|i| h.sim(i).running().len()).collect();
    assert!(per_node.iter().max().unwrap() - per_node.iter().min().unwrap() <= 1, "{per_node:?}");
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn crash_loop_respects_delay_and_max_attempts() {
    let h = harness(2).await;
    for i in 0..2 {
        h.sim(i).inject(FaultRule::new(Fault::ExitAfter { after: Duration::from_secs(1), code: 3 }).service("crashy"));
    }
    let mut spec = ServiceSpec::replicated("crashy", "crash:1", 1);
    spec.task_template.restart_policy = RestartPolicy {
        condition: RestartCondition::OnFailure,
        delay: SpecDuration::from_secs(10),
        max_attempts: 3,
        window: SpecDuration::ZERO,
    };
    h.cluster().create_service(spec).await.unwrap();
    // 1 original + 3 restarts, each failing after 1 s, 10 s apart.
    let s = h
        .wait_for("4 failed tasks and a dead slot", Duration::from_secs(600), |s| {
            let t = all_tasks(s, "crashy");
            t.len() == 4
                && t.iter().all(|t| t.status.state == TaskState::Failed && t.desired_state == TaskState::Shutdown)
        })
        .await
        .unwrap();
    let mut tasks = all_tasks(&s, "crashy");
    tasks.sort_by_key(|t| t.meta.created_revision);
    for t in &tasks {
        assert_eq!(t.status.exit_code, Some(3));
        assert_eq!(t.slot, Some(1));
        assert!(t.status.err.as_deref().unwrap_or("").contains("non-zero exit (3)"));
    }
    for pair in tasks.windows(2) {
        let gap = pair[1].meta.created_at.since(pair[0].status.timestamp);
        assert!(gap >= Duration::from_secs(10), "restart after the delay, got {gap:?}");
    }
    // No fifth attempt, ever.
    h.advance(Duration::from_secs(3600)).await;
    assert_eq!(all_tasks(&h.state(), "crashy").len(), 4);
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn restart_condition_none_leaves_a_crashed_replica_dead_and_any_restarts_completed_ones() {
    let h = harness(2).await;
    for i in 0..2 {
        h.sim(i).inject(FaultRule::new(Fault::ExitAfter { after: Duration::from_secs(2), code: 0 }).image("once:1"));
    }
    let mut none = ServiceSpec::replicated("none", "once:1", 2);
    none.task_template.restart_policy.condition = RestartCondition::None;
    h.cluster().create_service(none).await.unwrap();
    let mut any = ServiceSpec::replicated("any", "once:1", 1);
    any.task_template.restart_policy.delay = SpecDuration::from_secs(1);
    h.cluster().create_service(any).await.unwrap();
    h.advance(Duration::from_secs(30)).await;
    let s = h.state();
    let none_tasks = all_tasks(&s, "none");
    assert_eq!(none_tasks.len(), 2, "no replacements with condition none");
    assert!(none_tasks.iter().all(|t| t.status.state == TaskState::Complete));
    assert!(all_tasks(&s, "any").len() > 3, "condition any restarts completed tasks");
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn node_loss_is_healed_within_heartbeat_grace_plus_scheduling_delay() {
    let mut h = harness(3).await;
    h.cluster().create_service(ServiceSpec::replicated("web", "nginx:1.27", 6)).await.unwrap();
    h.wait_running("web", 6, MIN).await.unwrap();
    let t0 = tokio::time::Instant::now();
    h.fail_node(0);
    let lost = h.node_id(0);
    let s = h
        .wait_for("6 running replicas off the lost node", MIN, |s| {
            running_count(s, "web") == 6
                && live_tasks(s, "web").iter().all(|t| t.node_id.as_ref() != Some(&lost))
                && s.node(&lost).is_some_and(|n| n.status.state == NodeState::Down)
        })
        .await
        .unwrap();
    let healed = t0.elapsed();
    // Grace = 3 x 5 s; then scheduling (<= 1 s) and starting.
    assert!(healed <= Duration::from_secs(15 + 3 + 1), "healed in {healed:?}");
    assert!(healed >= Duration::from_secs(10), "not before the node was declared down: {healed:?}");
    let orphaned = all_tasks(&s, "web").iter().filter(|t| t.status.state == TaskState::Orphaned).count();
    assert_eq!(orphaned, 2, "the lost node's tasks are orphaned");
    // The node comes back empty; nothing moves back by itself, but it is ready.
    h.recover_node(0);
    h.wait_for("node back", MIN, |s| s.node(&lost).is_some_and(|n| n.status.state == NodeState::Ready)).await.unwrap();
    assert_eq!(running_count(&h.state(), "web"), 6);
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn drain_moves_tasks_away_and_pause_takes_no_new_ones() {
    let h = harness(3).await;
    h.cluster().create_service(ServiceSpec::replicated("web", "nginx:1.27", 6)).await.unwrap();
    h.wait_running("web", 6, MIN).await.unwrap();
    let n0 = h.node_id(0).to_string();
    h.cluster().set_node_availability(&n0, Availability::Drain).await.unwrap();
    let s = h
        .wait_for("drained", MIN, |s| {
            running_count(s, "web") == 6
                && live_tasks(s, "web").iter().all(|t| t.node_id.as_ref().unwrap().as_str() != n0)
        })
        .await
        .unwrap();
    h.wait_for("drained node stopped its containers", MIN, |_| h.sim(0).running().is_empty()).await.unwrap();
    let shut: Vec<Task> =
        all_tasks(&s, "web").into_iter().filter(|t| t.node_id.as_ref().unwrap().as_str() == n0).collect();
    assert_eq!(shut.len(), 2);
    let s = h
        .wait_for("old tasks shut down", MIN, |s| {
            shut.iter().all(|t| s.task(&t.id).is_some_and(|t| t.status.state == TaskState::Shutdown))
        })
        .await
        .unwrap();
    assert_eq!(running_count(&s, "web"), 6);
    // Pause node 1: scale up lands only on node 2 (node 0 is drained).
    let n1 = h.node_id(1).to_string();
    h.cluster().set_node_availability(&n1, Availability::Pause).await.unwrap();
    let before1 = h.sim(1).running().len();
    h.cluster().scale("web", 9).await.unwrap();
    h.wait_running("web", 9, MIN).await.unwrap();
    assert_eq!(h.sim(1).running().len(), before1, "paused node keeps its tasks and takes no new ones");
    assert_eq!(h.sim(2).running().len(), 9 - before1);
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn global_service_follows_node_join_leave_and_constraints() {
    let mut h = harness(3).await;
    let mut spec = ServiceSpec::global("agent", "monitor:1");
    spec.task_template.placement.constraints = vec!["node.labels.monitored!=no".into()];
    h.cluster().create_service(spec).await.unwrap();
    h.wait_running("agent", 3, MIN).await.unwrap();
    let i = h.add_node(Resources::new(1_000_000_000, 1 << 30)).await.unwrap();
    let s = h.wait_running("agent", 4, MIN).await.unwrap();
    let new_id = h.node_id(i);
    assert_eq!(live_tasks(&s, "agent").iter().filter(|t| t.node_id.as_ref() == Some(&new_id)).count(), 1);
    // A node leaves (fails): its task is not recreated elsewhere.
    h.fail_node(0);
    h.wait_running("agent", 3, MIN).await.unwrap();
    h.advance(Duration::from_secs(30)).await;
    let s = h.state();
    assert_eq!(running_count(&s, "agent"), 3);
    for n in s.nodes() {
        let on = live_tasks(&s, "agent").iter().filter(|t| t.node_id.as_ref() == Some(&n.id)).count();
        assert!(on <= 1, "at most one task per node");
    }
    // A label change makes node 1 ineligible: its task is shut down.
    h.cluster().set_node_label(h.node_id(1).as_str(), "monitored", Some("no")).await.unwrap();
    h.wait_running("agent", 2, MIN).await.unwrap();
    h.wait_for("node 1 container stopped", MIN, |_| h.sim(1).running().is_empty()).await.unwrap();
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn replicated_job_runs_total_completions_at_most_max_concurrent_at_once() {
    let h = harness(3).await;
    for i in 0..3 {
        h.sim(i).inject(FaultRule::new(Fault::ExitAfter { after: Duration::from_secs(5), code: 0 }).image("batch:1"));
    }
    let mut spec = ServiceSpec::replicated("batch", "batch:1", 0);
    spec.mode = ServiceMode::replicated_job(7, 2);
    h.cluster().create_service(spec).await.unwrap();
    let start = tokio::time::Instant::now();
    let mut max_seen = 0;
    let s = loop {
        let s = h.state();
        let running = all_tasks(&s, "batch").iter().filter(|t| t.status.state == TaskState::Running).count();
        max_seen = max_seen.max(running);
        let complete = all_tasks(&s, "batch").iter().filter(|t| t.status.state == TaskState::Complete).count();
        if complete == 7 {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(3600), "job did not finish");
        h.advance(Duration::from_millis(250)).await;
    };
    assert_eq!(max_seen, 2, "ran 2 at once, never more");
    let mut slots: Vec<u64> = all_tasks(&s, "batch").iter().filter_map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, (1..=7).collect::<Vec<_>>());
    h.advance(Duration::from_secs(600)).await;
    assert_eq!(all_tasks(&h.state(), "batch").len(), 7, "completed job tasks are not restarted");
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn global_job_runs_once_per_node() {
    let h = harness(3).await;
    for i in 0..3 {
        h.sim(i).inject(FaultRule::new(Fault::ExitAfter { after: Duration::from_secs(1), code: 0 }).image("setup:1"));
    }
    let mut spec = ServiceSpec::global("setup", "setup:1");
    spec.mode = ServiceMode::global_job();
    h.cluster().create_service(spec).await.unwrap();
    let s = h
        .wait_for("3 completions", MIN, |s| {
            all_tasks(s, "setup").iter().filter(|t| t.status.state == TaskState::Complete).count() == 3
        })
        .await
        .unwrap();
    let mut nodes: Vec<_> = all_tasks(&s, "setup").iter().map(|t| t.node_id.clone().unwrap()).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3);
    h.advance(Duration::from_secs(120)).await;
    assert_eq!(all_tasks(&h.state(), "setup").len(), 3);
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn orphaned_tasks_are_deleted_once_their_node_is_back_and_its_agent_removes_their_containers() {
    let mut h = harness(3).await;
    h.cluster().create_service(ServiceSpec::replicated("web", "nginx:1.27", 6)).await.unwrap();
    h.wait_running("web", 6, MIN).await.unwrap();
    // Node 0 is cut off: its agent is gone, its containers keep running.
    let kept = h.sim(0).running();
    assert_eq!(kept.len(), 2);
    h.partition_node(0);
    let lost = h.node_id(0);
    let orphaned_on_lost = |s: &State| {
        all_tasks(s, "web")
            .iter()
            .filter(|t| t.node_id.as_ref() == Some(&lost) && t.status.state == TaskState::Orphaned)
            .count()
    };
    h.wait_for("node 0 down, its 2 tasks orphaned and replaced elsewhere", MIN, |s| {
        s.node(&lost).is_some_and(|n| n.status.state == NodeState::Down)
            && orphaned_on_lost(s) == 2
            && running_count(s, "web") == 6
    })
    .await
    .unwrap();
    // While the node is down the orphaned tasks stay, as its history, and
    // the cut-off node's containers run on.
    h.advance(Duration::from_secs(10)).await;
    assert_eq!(orphaned_on_lost(&h.state()), 2, "kept while the node is down");
    assert_eq!(h.sim(0).running(), kept, "a partition does not stop the containers");
    // Healed: the node is READY again, the orphaned tasks are deleted and
    // its agent removes their containers.
    h.heal_node(0);
    let s = h
        .wait_for("node 0 back and its orphaned tasks deleted", MIN, |s| {
            s.node(&lost).is_some_and(|n| n.status.state == NodeState::Ready) && orphaned_on_lost(s) == 0
        })
        .await
        .unwrap();
    assert_eq!(running_count(&s, "web"), 6);
    assert!(all_tasks(&s, "web").iter().all(|t| t.status.state != TaskState::Orphaned));
    let mut waited = Duration::ZERO;
    while h.sim(0).container_count() > 0 && waited < MIN {
        h.advance(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    assert_eq!(h.sim(0).container_count(), 0, "the cut-off node's containers removed (after {waited:?})");
    assert_eq!(running_count(&h.state(), "web"), 6, "the replacements run on");
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn agent_restart_readopts_running_containers() {
    let mut h = harness(2).await;
    h.cluster().create_service(ServiceSpec::replicated("web", "nginx:1.27", 4)).await.unwrap();
    let before = h.wait_running("web", 4, MIN).await.unwrap();
    let ids: Vec<_> = live_tasks(&before, "web").iter().map(|t| t.id.clone()).collect();
    let containers_before = h.sim(0).running();
    let starts_before = h.sim(0).starts() + h.sim(1).starts();
    h.restart_agent(0);
    h.advance(Duration::from_secs(30)).await;
    let after = h.state();
    assert_eq!(running_count(&after, "web"), 4);
    let ids_after: Vec<_> = live_tasks(&after, "web").iter().map(|t| t.id.clone()).collect();
    assert_eq!(ids, ids_after, "same tasks");
    assert_eq!(h.sim(0).running(), containers_before, "same containers");
    assert_eq!(h.sim(0).starts() + h.sim(1).starts(), starts_before, "nothing restarted");
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn agent_restart_removes_containers_of_tasks_no_longer_assigned() {
    let mut h = harness(1).await;
    h.cluster().create_service(ServiceSpec::replicated("web", "nginx:1.27", 2)).await.unwrap();
    h.wait_running("web", 2, MIN).await.unwrap();
    // A container labelled for this node whose task the store never had.
    let orphan = {
        use swarm_core::runtime::{ContainerConfig, Runtime};
        let mut cfg = ContainerConfig::default();
        cfg.labels.insert(swarm_core::runtime::labels::NODE_ID.into(), h.node_id(0).to_string());
        cfg.labels.insert(swarm_core::runtime::labels::TASK_ID.into(), "gone-task".into());
        let id = h.sim(0).create(&cfg).await.unwrap();
        h.sim(0).start(&id).await.unwrap();
        id
    };
    assert!(h.sim(0).running().contains(&orphan));
    h.restart_agent(0);
    h.advance(Duration::from_secs(5)).await;
    assert!(!h.sim(0).running().contains(&orphan), "unknown container removed");
    assert_eq!(h.sim(0).running().len(), 2, "the service's containers are kept");
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn unplaceable_task_is_explained_then_placed_when_a_node_joins() {
    let mut h = harness(2).await;
    let mut spec = ServiceSpec::replicated("big", "db:1", 1);
    spec.task_template.resources.reservations = Resources::new(0, 32 << 30);
    h.cluster().create_service(spec).await.unwrap();
    let s = h
        .wait_for("explained", MIN, |s| {
            all_tasks(s, "big").iter().any(|t| t.status.message.contains("insufficient memory on 2 nodes"))
        })
        .await
        .unwrap();
    let t = &all_tasks(&s, "big")[0];
    assert_eq!(t.status.state, TaskState::Pending);
    assert_eq!(t.status.message, "no suitable node (insufficient memory on 2 nodes)");
    h.advance(Duration::from_secs(60)).await;
    assert_eq!(all_tasks(&h.state(), "big")[0].status.state, TaskState::Pending, "still pending");
    let i = h.add_node(Resources::new(8_000_000_000, 64 << 30)).await.unwrap();
    let s = h.wait_running("big", 1, MIN).await.unwrap();
    assert_eq!(live_tasks(&s, "big")[0].node_id, Some(h.node_id(i)));
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn failing_health_check_gets_the_task_replaced() {
    let h = harness(2).await;
    for i in 0..2 {
        h.sim(i).inject(FaultRule::new(Fault::UnhealthyAfter(Duration::from_secs(20))).service("web").times(1));
    }
    let mut spec = ServiceSpec::replicated("web", "nginx:1.27", 1);
    spec.task_template.container.health_check = Some(HealthCheck {
        probe: HealthProbe::Http { port: 80, path: "/health".into() },
        interval: SpecDuration::from_secs(2),
        timeout: SpecDuration::from_secs(1),
        retries: 3,
        start_period: SpecDuration::ZERO,
    });
    spec.task_template.restart_policy.delay = SpecDuration::from_secs(1);
    h.cluster().create_service(spec).await.unwrap();
    let s = h
        .wait_for("unhealthy task failed and replaced by a healthy one", Duration::from_secs(300), |s| {
            let t = all_tasks(s, "web");
            t.iter().any(|t| t.status.state == TaskState::Failed && t.status.message == "unhealthy container")
                && running_count(s, "web") == 1
        })
        .await
        .unwrap();
    let live = live_tasks(&s, "web");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].status.health, Some(HealthState::Healthy));
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn stop_grace_period_is_waited_then_the_container_is_killed() {
    let h = harness(1).await;
    h.sim(0).inject(FaultRule::new(Fault::HangOnStop).service("stubborn"));
    let mut spec = ServiceSpec::replicated("stubborn", "app:1", 1);
    spec.task_template.container.stop_grace_period = SpecDuration::from_secs(20);
    h.cluster().create_service(spec).await.unwrap();
    h.wait_running("stubborn", 1, MIN).await.unwrap();
    let t0 = tokio::time::Instant::now();
    h.cluster().scale("stubborn", 0).await.unwrap();
    h.wait_for("stopped", MIN, |_| h.sim(0).running().is_empty()).await.unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(20) && took < Duration::from_secs(22),
        "killed after the grace period: {took:?}"
    );
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn removing_a_service_stops_and_removes_its_tasks() {
    let h = harness(2).await;
    h.cluster().create_service(ServiceSpec::replicated("web", "nginx:1.27", 4)).await.unwrap();
    h.wait_running("web", 4, MIN).await.unwrap();
    h.cluster().remove_service("web").await.unwrap();
    h.wait_for("all tasks gone", MIN, |s| s.tasks().count() == 0).await.unwrap();
    h.wait_for("containers removed", MIN, |_| h.sim(0).container_count() + h.sim(1).container_count() == 0)
        .await
        .unwrap();
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn removing_a_node_with_tasks_is_refused_unless_forced() {
    let h = harness(2).await;
    h.cluster().create_service(ServiceSpec::replicated("web", "nginx:1.27", 2)).await.unwrap();
    h.wait_running("web", 2, MIN).await.unwrap();
    let n = h.node_id(0).to_string();
    let err = h.cluster().remove_node(&n, false).await.unwrap_err();
    assert!(err.to_string().contains("still runs 1 task"), "{err}");
    assert!(h.state().node(&h.node_id(0)).is_some(), "refusal changed nothing");
    h.cluster().remove_node(&n, true).await.unwrap();
    let s = h
        .wait_for("replaced elsewhere", MIN, |s| {
            running_count(s, "web") == 2 && live_tasks(s, "web").iter().all(|t| t.node_id == Some(h.node_id(1)))
        })
        .await
        .unwrap();
    assert!(s.node(&h.node_id(0)).is_none());
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn task_history_is_limited_per_slot() {
    let h = harness(1).await;
    h.sim(0).inject(FaultRule::new(Fault::ExitAfter { after: Duration::from_secs(1), code: 1 }).service("flappy"));
    let mut spec = ServiceSpec::replicated("flappy", "app:1", 1);
    spec.task_template.restart_policy.delay = SpecDuration::from_secs(1);
    h.cluster().create_service(spec).await.unwrap();
    h.advance(Duration::from_secs(120)).await;
    let s = h.state();
    let t = all_tasks(&s, "flappy");
    let old = t.iter().filter(|t| t.desired_state > TaskState::Running).count();
    assert!(old <= 5, "at most 5 old tasks kept, found {old}");
    assert!(h.sim(0).starts() > 20, "kept restarting: {}", h.sim(0).starts());
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn events_stream_reports_what_changed() {
    let h = harness(1).await;
    let mut events = h.cluster().events().await.unwrap();
    h.cluster().create_service(ServiceSpec::replicated("web", "nginx:1.27", 1)).await.unwrap();
    h.wait_running("web", 1, MIN).await.unwrap();
    let mut seen = Vec::new();
    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(10), events.next()).await {
        seen.push(e);
    }
    assert!(seen.iter().any(|e| e.kind == ObjectKind::Service && e.action == swarm_core::state::Action::Create));
    let on = format!("-> RUNNING on {}", h.node_id(0));
    assert!(seen.iter().any(|e| e.kind == ObjectKind::Task && e.detail.contains(&on)), "{seen:#?}");
    h.shutdown();
}
