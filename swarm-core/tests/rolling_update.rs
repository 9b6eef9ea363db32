//! Rolling updates and rollback (issue 5), on the harness with paused time.
//!
//! The no-downtime proofs look at *every* store revision (a mirror rebuilt
//! from the watch stream) and at the data plane (MemDiscovery following the
//! store, checked against the containers actually running in the sims).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarm_core::discovery::{Discovery, MemDiscovery, endpoints_from_state};
use swarm_core::harness::{Harness, running_count};
use swarm_core::model::*;
use swarm_core::sim::{Fault, FaultRule};
use swarm_core::state::State;
use swarm_core::store::Store;
use swarm_core::time::SpecDuration;

mod common;
use common::{LeastLoaded, Mirror};

const MIN: Duration = Duration::from_secs(60);
const LONG: Duration = Duration::from_secs(900);

async fn harness(nodes: usize) -> Harness {
    Harness::builder().nodes(nodes).scheduler(LeastLoaded).seed(11).build().await.expect("harness")
}

fn web(replicas: u64, image: &str) -> ServiceSpec {
    let mut spec = ServiceSpec::replicated("web", image, replicas);
    spec.task_template.container.health_check = Some(HealthCheck {
        probe: HealthProbe::Http { port: 8080, path: "/health".into() },
        interval: SpecDuration::from_secs(1),
        timeout: SpecDuration::from_millis(500),
        retries: 2,
        start_period: SpecDuration::ZERO,
    });
    spec.task_template.restart_policy.delay = SpecDuration::from_secs(1);
    spec
}

fn live(s: &State, name: &str) -> Vec<Task> {
    let svc = s.service_by_name(name).expect("service");
    s.tasks_of_service(&svc.id).filter(|t| t.desired_state <= TaskState::Running).map(|t| (**t).clone()).collect()
}

fn update_state(s: &State, name: &str) -> Option<UpdateState> {
    s.service_by_name(name).and_then(|s| s.update_status.as_ref().map(|u| u.state))
}

fn all_on_version(s: &State, name: &str, version: u64, n: usize) -> bool {
    let l = live(s, name);
    l.len() == n && l.iter().all(|t| t.spec_version == version && t.is_running_and_healthy())
}

#[test]
fn update_config_defaults_are_swarms() {
    let u = UpdateConfig::default();
    assert_eq!(u.parallelism, 1);
    assert_eq!(u.delay, SpecDuration::ZERO);
    assert_eq!(u.order, UpdateOrder::StopFirst);
    assert_eq!(u.failure_action, FailureAction::Pause);
    assert_eq!(u.monitor, SpecDuration::from_secs(5));
    assert_eq!(u.max_failure_ratio, 0.0);
}

/// Watches every revision of the update and records, per revision, the
/// number of endpoints and how many slots were updating at once.
struct Recorder {
    min_endpoints: usize,
    max_updating: usize,
    revisions: usize,
}

async fn record_until_done(h: &Harness, name: &str, until: UpdateState, replicas: usize) -> Recorder {
    let store = h.store().clone();
    let start = store.snapshot().await.unwrap();
    let mut mirror = Mirror::new((*start).clone());
    let mut watch = store.watch(start.revision()).await.unwrap();
    let mut rec = Recorder { min_endpoints: usize::MAX, max_updating: 0, revisions: 0 };
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let change = tokio::time::timeout_at(deadline, watch.next()).await.expect("update finished in time").unwrap();
        mirror.apply(&change);
        let s = &mirror.state;
        rec.revisions += 1;
        let eps = endpoints_from_state(s).get(name).map(|e| e.endpoints.len()).unwrap_or(0);
        rec.min_endpoints = rec.min_endpoints.min(eps);
        let svc = s.service_by_name(name).unwrap();
        // A slot is updating while its current task is on the new version
        // and not yet up, or its old task is stopping with no new one yet.
        let mut by_slot: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
        for t in s.tasks_of_service(&svc.id) {
            if let Some(slot) = t.slot {
                by_slot.entry(slot).or_default().push(t);
            }
        }
        let updating = by_slot
            .values()
            .filter(|ts| {
                let new_live =
                    ts.iter().find(|t| t.spec_version == svc.spec_version && t.desired_state <= TaskState::Running);
                match new_live {
                    Some(t) => !t.is_running_and_healthy(),
                    None => !ts.iter().any(|t| t.desired_state <= TaskState::Running && t.is_running_and_healthy()),
                }
            })
            .count();
        rec.max_updating = rec.max_updating.max(updating);
        if update_state(s, name) == Some(until) && all_on_version(s, name, svc.spec_version, replicas) {
            return rec;
        }
    }
}

/// Checks, whenever discovery changes, that every endpoint it hands out is
/// a container that is actually running. Returns the violations seen.
fn data_plane_checker(h: &Harness, discovery: &MemDiscovery, name: &'static str) -> Arc<Mutex<Vec<String>>> {
    let bad = Arc::new(Mutex::new(Vec::new()));
    let sims: Vec<_> = (0..h.node_count()).map(|i| h.sim(i).clone()).collect();
    let store = h.store().clone();
    let d = discovery.clone();
    let out = bad.clone();
    tokio::spawn(async move {
        let mut rx = d.subscribe();
        loop {
            if rx.changed().await.is_err() {
                return;
            }
            let Some(eps) = d.resolve(name) else { continue };
            let state = store.state();
            let running: Vec<String> = sims.iter().flat_map(|s| s.running()).collect();
            for e in &eps.endpoints {
                let t = state.task(&e.task_id);
                let cid = t.and_then(|t| t.status.container_id.clone()).unwrap_or_default();
                if !running.contains(&cid) {
                    out.lock().unwrap().push(format!("endpoint {} (container {cid}) is not running", e.task_id));
                }
            }
        }
    });
    bad
}

#[tokio::test(start_paused = true)]
async fn start_first_update_never_drops_below_the_replica_count() {
    let h = harness(3).await;
    let discovery = MemDiscovery::new();
    {
        let d = discovery.clone();
        let store = h.store().clone();
        tokio::spawn(async move { d.follow(store.as_ref()).await });
    }
    let mut spec = web(4, "app:1");
    spec.update_config.order = UpdateOrder::StartFirst;
    spec.update_config.parallelism = 1;
    h.cluster().create_service(spec.clone()).await.unwrap();
    h.wait_running("web", 4, MIN).await.unwrap();
    let bad = data_plane_checker(&h, &discovery, "web");
    spec.task_template.container.image = "app:2".into();
    h.cluster().update_service("web", spec).await.unwrap();
    let rec = record_until_done(&h, "web", UpdateState::Completed, 4).await;
    assert!(rec.revisions > 10);
    assert_eq!(rec.min_endpoints, 4, "start-first keeps every replica serving");
    assert!(rec.max_updating <= 1, "parallelism 1, saw {}", rec.max_updating);
    let s = h.state();
    assert!(live(&s, "web").iter().all(|t| t.spec.container.image == "app:2"));
    assert_eq!(discovery.resolve("web").unwrap().endpoints.len(), 4);
    assert!(bad.lock().unwrap().is_empty(), "{:?}", bad.lock().unwrap());
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn stop_first_update_keeps_replicas_minus_parallelism() {
    let h = harness(3).await;
    let discovery = MemDiscovery::new();
    {
        let d = discovery.clone();
        let store = h.store().clone();
        tokio::spawn(async move { d.follow(store.as_ref()).await });
    }
    let mut spec = web(6, "app:1");
    spec.update_config.parallelism = 2;
    h.cluster().create_service(spec.clone()).await.unwrap();
    h.wait_running("web", 6, MIN).await.unwrap();
    let bad = data_plane_checker(&h, &discovery, "web");
    spec.task_template.container.env.push("MODE=fast".into());
    h.cluster().update_service("web", spec).await.unwrap();
    let rec = record_until_done(&h, "web", UpdateState::Completed, 6).await;
    // The stop-first guarantee: at least replicas - parallelism endpoints.
    assert!(rec.min_endpoints >= 4, "min endpoints {}", rec.min_endpoints);
    assert_eq!(rec.min_endpoints, 4, "stop-first does take parallelism tasks down at once");
    assert!(rec.max_updating <= 2, "parallelism 2, saw {}", rec.max_updating);
    assert!(bad.lock().unwrap().is_empty(), "{:?}", bad.lock().unwrap());
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn delay_spaces_the_batches() {
    let h = harness(2).await;
    let mut spec = web(3, "app:1");
    spec.update_config.delay = SpecDuration::from_secs(30);
    h.cluster().create_service(spec.clone()).await.unwrap();
    h.wait_running("web", 3, MIN).await.unwrap();
    let t0 = tokio::time::Instant::now();
    spec.task_template.container.image = "app:2".into();
    h.cluster().update_service("web", spec).await.unwrap();
    let version = h.state().service_by_name("web").unwrap().spec_version;
    h.wait_for("updated", LONG, |s| all_on_version(s, "web", version, 3)).await.unwrap();
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(60), "two 30 s pauses between three batches: {took:?}");
    assert!(took < Duration::from_secs(80), "{took:?}");
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn label_or_replica_changes_do_not_restart_tasks() {
    let h = harness(2).await;
    let spec = web(3, "app:1");
    h.cluster().create_service(spec.clone()).await.unwrap();
    let s = h.wait_running("web", 3, MIN).await.unwrap();
    let before: Vec<_> = live(&s, "web").iter().map(|t| t.id.clone()).collect();
    let v = s.service_by_name("web").unwrap().spec_version;
    let mut labelled = spec.clone();
    labelled.labels.insert("team".into(), "blue".into());
    h.cluster().update_service("web", labelled).await.unwrap();
    h.cluster().scale("web", 4).await.unwrap();
    let s = h.wait_running("web", 4, MIN).await.unwrap();
    h.advance(Duration::from_secs(30)).await;
    let after: Vec<_> = live(&h.state(), "web").iter().map(|t| t.id.clone()).collect();
    assert!(before.iter().all(|id| after.contains(id)), "the original tasks still run");
    assert_eq!(s.service_by_name("web").unwrap().spec_version, v, "no new spec version");
    assert!(s.service_by_name("web").unwrap().update_status.is_none(), "no update started");
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn forced_update_replaces_every_task() {
    let h = harness(2).await;
    h.cluster().create_service(web(2, "app:1")).await.unwrap();
    let s = h.wait_running("web", 2, MIN).await.unwrap();
    let before: Vec<_> = live(&s, "web").iter().map(|t| t.id.clone()).collect();
    h.cluster().force_update("web").await.unwrap();
    let s = h
        .wait_for("forced update done", LONG, |s| update_state(s, "web") == Some(UpdateState::Completed))
        .await
        .unwrap();
    let after: Vec<_> = live(&s, "web").iter().map(|t| t.id.clone()).collect();
    assert!(after.iter().all(|id| !before.contains(id)), "every task replaced");
    assert_eq!(running_count(&s, "web"), 2);
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn an_image_that_exits_at_once_pauses_the_update_and_leaves_the_rest_running() {
    let h = harness(2).await;
    for i in 0..2 {
        h.sim(i)
            .inject(FaultRule::new(Fault::ExitAfter { after: Duration::from_millis(100), code: 1 }).image("app:bad"));
    }
    let mut spec = web(4, "app:1");
    h.cluster().create_service(spec.clone()).await.unwrap();
    h.wait_running("web", 4, MIN).await.unwrap();
    spec.task_template.container.image = "app:bad".into();
    h.cluster().update_service("web", spec).await.unwrap();
    let s = h.wait_for("paused", LONG, |s| update_state(s, "web") == Some(UpdateState::Paused)).await.unwrap();
    let msg = &s.service_by_name("web").unwrap().update_status.as_ref().unwrap().message;
    assert!(msg.contains("update paused") && msg.contains("non-zero exit (1)"), "{msg}");
    h.advance(Duration::from_secs(60)).await;
    let s = h.state();
    let old =
        live(&s, "web").iter().filter(|t| t.spec.container.image == "app:1" && t.is_running_and_healthy()).count();
    assert_eq!(old, 3, "parallelism 1: only one slot was touched, three keep serving");
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn failure_action_rollback_ends_on_the_previous_spec_all_healthy() {
    let h = harness(3).await;
    for i in 0..3 {
        h.sim(i).inject(FaultRule::new(Fault::UnhealthyAfter(Duration::ZERO)).image("app:sick"));
    }
    let mut spec = web(3, "app:1");
    spec.update_config.failure_action = FailureAction::Rollback;
    spec.update_config.order = UpdateOrder::StartFirst;
    h.cluster().create_service(spec.clone()).await.unwrap();
    h.wait_running("web", 3, MIN).await.unwrap();
    spec.task_template.container.image = "app:sick".into();
    h.cluster().update_service("web", spec).await.unwrap();
    let s = h
        .wait_for("rolled back", LONG, |s| {
            update_state(s, "web") == Some(UpdateState::RollbackCompleted)
                && all_on_version(s, "web", s.service_by_name("web").unwrap().spec_version, 3)
        })
        .await
        .unwrap();
    let svc = s.service_by_name("web").unwrap();
    assert_eq!(svc.spec.task_template.container.image, "app:1");
    assert!(live(&s, "web").iter().all(|t| t.spec.container.image == "app:1" && t.is_running_and_healthy()));
    assert!(svc.update_status.as_ref().unwrap().message.contains("rollback completed"));
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn max_failure_ratio_tolerates_some_failures() {
    let h = harness(2).await;
    // One container of the new image fails; the ratio allows 1 in 4.
    h.sim(0).inject(
        FaultRule::new(Fault::ExitAfter { after: Duration::from_millis(100), code: 2 }).image("app:2").times(1),
    );
    let mut spec = web(4, "app:1");
    spec.update_config.max_failure_ratio = 0.25;
    h.cluster().create_service(spec.clone()).await.unwrap();
    h.wait_running("web", 4, MIN).await.unwrap();
    spec.task_template.container.image = "app:2".into();
    h.cluster().update_service("web", spec).await.unwrap();
    let s = h.wait_for("completed", LONG, |s| update_state(s, "web") == Some(UpdateState::Completed)).await.unwrap();
    assert!(live(&s, "web").iter().all(|t| t.spec.container.image == "app:2"));
    let svc = s.service_by_name("web").unwrap();
    let failed = s.tasks_of_service(&svc.id).filter(|t| t.status.state == TaskState::Failed).count();
    assert_eq!(failed, 1, "one failure happened and was tolerated");
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn pause_resume_and_manual_rollback() {
    let h = harness(2).await;
    let mut spec = web(4, "app:1");
    spec.update_config.delay = SpecDuration::from_secs(20);
    h.cluster().create_service(spec.clone()).await.unwrap();
    h.wait_running("web", 4, MIN).await.unwrap();
    spec.task_template.container.image = "app:2".into();
    h.cluster().update_service("web", spec).await.unwrap();
    h.wait_for("first slot updated", LONG, |s| {
        live(s, "web").iter().any(|t| t.spec.container.image == "app:2" && t.is_running_and_healthy())
    })
    .await
    .unwrap();
    h.cluster().pause_update("web").await.unwrap();
    h.advance(Duration::from_secs(120)).await;
    let s = h.state();
    assert_eq!(update_state(&s, "web"), Some(UpdateState::Paused));
    let new = live(&s, "web").iter().filter(|t| t.spec.container.image == "app:2").count();
    assert_eq!(new, 1, "nothing moves while paused");
    h.cluster().resume_update("web").await.unwrap();
    h.wait_for("completed", LONG, |s| update_state(s, "web") == Some(UpdateState::Completed)).await.unwrap();
    h.cluster().rollback_service("web").await.unwrap();
    let s = h
        .wait_for("rolled back by hand", LONG, |s| update_state(s, "web") == Some(UpdateState::RollbackCompleted))
        .await
        .unwrap();
    assert!(live(&s, "web").iter().all(|t| t.spec.container.image == "app:1" && t.is_running_and_healthy()));
    assert_eq!(live(&s, "web").len(), 4);
    h.shutdown();
}
