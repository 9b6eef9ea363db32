//! Endpoint timing on the harness under a paused clock: the allocator and
//! `MemDiscovery::follow` run next to the manager and the agents, a recorder
//! notes when each task enters and leaves the discovered endpoints, and the
//! delays are measured against the moment the store recorded the cause.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarm_core::discovery::{Discovery, MemDiscovery};
use swarm_core::harness::Harness;
use swarm_core::id::TaskId;
use swarm_core::model::*;
use swarm_core::sim::{Fault, FaultRule};
use swarm_core::store::Store;
use swarm_core::time::SpecDuration;
use swarm_net::alloc::{Allocator, AllocatorConfig};
use tokio::time::Instant;

type Log = Arc<Mutex<Vec<(Instant, BTreeSet<TaskId>)>>>;

/// Follows discovery and logs the endpoint set of `service` on each change.
fn record(discovery: &MemDiscovery, service: &'static str) -> Log {
    let log: Log = Arc::default();
    let (d, l) = (discovery.clone(), log.clone());
    let mut rx = d.subscribe();
    tokio::spawn(async move {
        loop {
            let set =
                d.resolve(service).map(|s| s.endpoints.iter().map(|e| e.task_id.clone()).collect()).unwrap_or_default();
            l.lock().unwrap().push((Instant::now(), set));
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    log
}

fn appeared(log: &Log, t: &TaskId) -> Option<Instant> {
    log.lock().unwrap().iter().find(|(_, s)| s.contains(t)).map(|(i, _)| *i)
}

fn gone(log: &Log, t: &TaskId) -> Option<Instant> {
    let log = log.lock().unwrap();
    let first = log.iter().position(|(_, s)| s.contains(t))?;
    log[first..].iter().find(|(_, s)| !s.contains(t)).map(|(i, _)| *i)
}

async fn start(nodes: usize) -> (Harness, MemDiscovery, Log) {
    let h = Harness::builder()
        .nodes(nodes)
        .scheduler(swarm_sched::Pipeline::spread())
        .seed(3)
        .build()
        .await
        .expect("harness");
    let store: Arc<dyn Store> = h.store().clone();
    let alloc = Allocator::new(store.clone(), AllocatorConfig::default()).expect("config");
    tokio::spawn(async move { alloc.run().await });
    let discovery = MemDiscovery::new();
    let d = discovery.clone();
    tokio::spawn(async move { d.follow(store.as_ref()).await });
    let log = record(&discovery, "web");
    (h, discovery, log)
}

fn web(replicas: u64) -> ServiceSpec {
    let mut s = ServiceSpec::replicated("web", "nginx:1.27", replicas);
    s.task_template.container.health_check = Some(HealthCheck {
        interval: SpecDuration::from_secs(2),
        timeout: SpecDuration::from_secs(1),
        retries: 1,
        ..Default::default()
    });
    s.endpoint_spec.ports = vec![PortConfig { target_port: 80, ..Default::default() }];
    s
}

fn live_ids(h: &Harness) -> Vec<TaskId> {
    let s = h.state();
    let svc = s.service_by_name("web").unwrap();
    s.tasks_of_service(&svc.id).filter(|t| t.desired_state <= TaskState::Running).map(|t| t.id.clone()).collect()
}

const SEC: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn endpoints_appear_within_a_second_of_turning_healthy() {
    let (h, discovery, log) = start(3).await;
    h.cluster().create_service(web(3)).await.unwrap();
    // Record when the store says each task is running and healthy.
    let mut healthy_at = std::collections::BTreeMap::new();
    while healthy_at.len() < 3 {
        let s = h
            .wait_for("another healthy task", Duration::from_secs(60), |s| {
                let svc = s.service_by_name("web");
                svc.is_some_and(|svc| {
                    s.tasks_of_service(&svc.id).filter(|t| t.is_running_and_healthy()).count() > healthy_at.len()
                })
            })
            .await
            .unwrap();
        let now = Instant::now();
        let svc = s.service_by_name("web").unwrap();
        for t in s.tasks_of_service(&svc.id).filter(|t| t.is_running_and_healthy()) {
            healthy_at.entry(t.id.clone()).or_insert(now);
        }
    }
    h.advance(SEC).await;
    for (t, at) in &healthy_at {
        let seen = appeared(&log, t).expect("endpoint appeared");
        assert!(seen >= *at && seen - *at <= SEC, "task {t}: healthy at {at:?}, endpoint at {seen:?}");
    }
    let eps = discovery.resolve("web").unwrap();
    assert_eq!(eps.endpoints.len(), 3);
    assert_eq!(eps.virtual_ips.len(), 1, "the allocator gave a VIP");
    assert_eq!(eps.ports[0].published_port, Some(30000));
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn endpoints_disappear_within_a_second_of_failing_stopping_or_node_down() {
    let (mut h, discovery, log) = start(3).await;
    h.cluster().create_service(web(3)).await.unwrap();
    h.wait_running("web", 3, Duration::from_secs(60)).await.unwrap();
    h.advance(SEC).await;
    assert_eq!(discovery.resolve("web").unwrap().endpoints.len(), 3);

    // 1. The container dies: gone within 1 s of the kill.
    let victim = h.state().task(&live_ids(&h)[0]).unwrap().as_ref().clone();
    let idx = h.node_index(victim.node_id.as_ref().unwrap()).unwrap();
    let killed_at = Instant::now();
    assert!(h.sim(idx).kill_from_outside(victim.status.container_id.as_deref().unwrap(), 1));
    h.wait_running("web", 3, Duration::from_secs(60)).await.unwrap();
    h.advance(SEC).await;
    let g = gone(&log, &victim.id).expect("the dead task left the endpoints");
    assert!(g - killed_at <= SEC, "killed at {killed_at:?}, endpoint gone at {g:?}");

    // 2. Health turns bad: the next container started turns unhealthy 10 s
    // after its start; gone within 1 s of the store marking it unhealthy.
    for i in 0..3 {
        h.sim(i).inject(FaultRule::new(Fault::UnhealthyAfter(Duration::from_secs(10))).times(1));
    }
    let victim = h.state().task(&live_ids(&h)[0]).unwrap().as_ref().clone();
    let idx = h.node_index(victim.node_id.as_ref().unwrap()).unwrap();
    h.sim(idx).kill_from_outside(victim.status.container_id.as_deref().unwrap(), 1);
    let s = h
        .wait_for("an unhealthy task", Duration::from_secs(120), |s| {
            s.tasks().any(|t| t.status.health == Some(HealthState::Unhealthy))
        })
        .await
        .unwrap();
    let marked = Instant::now();
    let sick = s.tasks().find(|t| t.status.health == Some(HealthState::Unhealthy)).unwrap().id.clone();
    h.advance(SEC).await;
    let seen = appeared(&log, &sick).expect("the task was an endpoint while healthy");
    let g = gone(&log, &sick).expect("the unhealthy task left the endpoints");
    assert!(seen < marked && g <= marked + SEC, "healthy at {seen:?}, unhealthy at {marked:?}, gone at {g:?}");
    for i in 0..3 {
        h.sim(i).clear_faults();
    }
    h.wait_running("web", 3, Duration::from_secs(120)).await.unwrap();
    h.advance(SEC).await;

    // 3. Told to stop (scale down): gone within 1 s of the desired state.
    let before = live_ids(&h);
    let told = Instant::now();
    h.cluster().scale("web", 2).await.unwrap();
    h.wait_for("one task left", Duration::from_secs(10), |s| {
        before.iter().filter(|t| s.task(t).is_some_and(|t| t.desired_state <= TaskState::Running)).count() == 2
    })
    .await
    .unwrap();
    let stopping = before.iter().find(|t| !live_ids(&h).contains(t)).unwrap().clone();
    h.advance(SEC).await;
    let g = gone(&log, &stopping).expect("stopping task left the endpoints");
    assert!(g <= told + SEC, "scaled down at {told:?}, gone at {g:?}");

    // 4. Node down: gone within 1 s of the managers marking it down.
    let target = live_ids(&h)[0].clone();
    let node = h.state().task(&target).unwrap().node_id.clone().unwrap();
    let idx = h.node_index(&node).unwrap();
    let failed_at = Instant::now();
    h.fail_node(idx);
    h.wait_for("node down", Duration::from_secs(60), |s| {
        s.node(&node).is_some_and(|n| n.status.state == NodeState::Down)
    })
    .await
    .unwrap();
    let down = Instant::now();
    h.advance(SEC).await;
    let g = gone(&log, &target).expect("endpoint on the lost node left");
    assert!(g <= down + SEC, "node down at {down:?}, endpoint gone at {g:?}");
    // Detection itself is the heartbeat grace (3 x 5 s by default).
    assert!(down - failed_at <= Duration::from_secs(16), "node marked down after {:?}", down - failed_at);
    h.shutdown();
}
