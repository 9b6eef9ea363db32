//! End to end on the real orchestration loops (harness: manager, agents,
//! SimRuntime) in real time with a 200 ms heartbeat: allocator,
//! `MemDiscovery::follow` and one mesh per node. SimRuntime task addresses
//! (10.128.x.y) are not reachable, so a "container farm" runs a real TCP
//! backend at 127.128.x.y for each running task, and the meshes translate
//! 10.x.y.z to 127.x.y.z. A client loop through all three meshes runs
//! during a node loss and then during a rolling update.

mod common;

use common::*;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarm_core::discovery::{Discovery, MemDiscovery};
use swarm_core::harness::Harness;
use swarm_core::id::{NodeId, TaskId};
use swarm_core::model::*;
use swarm_core::store::{MemStore, Store};
use swarm_core::time::SpecDuration;
use swarm_net::alloc::{Allocator, AllocatorConfig};
use swarm_net::mesh::{AddrMap, Mesh, MeshConfig};
use tokio::time::Instant;

const TARGET: u16 = 18080;
const PUBLISHED: u32 = 30280;

fn reach(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(v) => {
            let o = v.octets();
            IpAddr::V4(Ipv4Addr::new(127, o[1], o[2], o[3]))
        }
        other => other,
    }
}

type Farm = Arc<Mutex<HashMap<TaskId, (NodeId, TcpBackend)>>>;

/// Nodes whose containers vanished with them: no backend runs there again.
type Dead = Arc<Mutex<Vec<NodeId>>>;

/// Starts a backend for each RUNNING task of `web` (on a node not dead),
/// and shuts it down gracefully once the task is no longer running (its
/// listener closes, requests under way finish), as a server does on the
/// SIGTERM of a rolling update; a lost node's backends are killed instead
/// (below). Killing them here raced the mesh: the store reported the task
/// stopped, and its backend died, while a request the mesh had routed to
/// it just before the endpoint left was still under way.
fn run_farm(store: Arc<MemStore>, farm: Farm, dead: Dead) {
    tokio::spawn(async move {
        loop {
            let state = store.state();
            let mut running = Vec::new();
            if let Some(svc) = state.service_by_name("web") {
                let dead = dead.lock().unwrap().clone();
                for t in state
                    .tasks_of_service(&svc.id)
                    .filter(|t| t.status.state == TaskState::Running)
                    .filter(|t| t.node_id.as_ref().is_none_or(|n| !dead.contains(n)))
                {
                    let addr = t.networks.iter().flat_map(|n| n.addresses.iter()).find_map(|a| a.parse().ok());
                    if let (Some(addr), Some(node)) = (addr, t.node_id.clone()) {
                        running.push((t.id.clone(), node, reach(addr)));
                    }
                }
            }
            let missing: Vec<_> = {
                let f = farm.lock().unwrap();
                running.iter().filter(|(id, _, _)| !f.contains_key(id)).cloned().collect()
            };
            for (id, node, ip) in missing {
                let b = TcpBackend::start(&ip.to_string(), TARGET, 0).await;
                farm.lock().unwrap().insert(id, (node, b));
            }
            farm.lock().unwrap().retain(|id, (_, b)| {
                let keep = running.iter().any(|(r, _, _)| r == id);
                if !keep {
                    b.stop_gracefully();
                }
                keep
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
}

fn client_loop(addrs: Vec<SocketAddr>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<(Instant, bool)>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            let ok = ping(addrs[i % addrs.len()]).await.is_ok();
            out.push((started, ok));
            i += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        out
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_through_the_mesh_survives_node_loss_and_rolling_update() {
    let mut h = Harness::builder()
        .nodes(3)
        .scheduler(swarm_sched::Pipeline::spread())
        .heartbeat(Duration::from_millis(200))
        .seed(9)
        .build()
        .await
        .expect("harness");
    let store: Arc<dyn Store> = h.store().clone();
    let alloc = Allocator::new(store.clone(), AllocatorConfig::default()).unwrap();
    tokio::spawn(async move { alloc.run().await });
    let discovery = MemDiscovery::new();
    let (d, s) = (discovery.clone(), store.clone());
    tokio::spawn(async move { d.follow(s.as_ref()).await });
    let farm: Farm = Arc::default();
    let dead: Dead = Arc::default();
    run_farm(h.store().clone(), farm.clone(), dead.clone());

    let mut spec = ServiceSpec::replicated("web", "web:1", 3);
    spec.endpoint_spec.ports =
        vec![PortConfig { target_port: TARGET as u32, published_port: Some(PUBLISHED), ..Default::default() }];
    spec.update_config.parallelism = 1;
    spec.update_config.delay = SpecDuration::from(Duration::from_millis(200));
    spec.update_config.monitor = SpecDuration::from(Duration::from_millis(200));
    spec.task_template.container.stop_grace_period = SpecDuration::from(Duration::from_millis(500));
    h.cluster().create_service(spec).await.unwrap();
    h.wait_running("web", 3, Duration::from_secs(10)).await.unwrap();

    let meshes: Vec<Mesh> = (0..3)
        .map(|k| {
            let cfg = MeshConfig {
                listen_ip: IpAddr::V4(Ipv4Addr::new(127, 0, 40, k + 1)),
                translate: Some(AddrMap(Arc::new(reach))),
                ..Default::default()
            };
            Mesh::start(Arc::new(discovery.clone()), cfg)
        })
        .collect();
    for m in &meshes {
        wait_until("mesh listening", Duration::from_secs(5), || m.addr(Protocol::Tcp, PUBLISHED).is_some()).await;
    }
    wait_until("3 endpoints and backends", Duration::from_secs(5), || {
        discovery.resolve("web").is_some_and(|e| e.endpoints.len() == 3) && farm.lock().unwrap().len() == 3
    })
    .await;
    let addrs: Vec<SocketAddr> = meshes.iter().map(|m| m.addr(Protocol::Tcp, PUBLISHED).unwrap()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let client = client_loop(addrs.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Node loss: the node of some task fails; its containers vanish at once.
    let victim_node = farm.lock().unwrap().values().next().unwrap().0.clone();
    let idx = h.node_index(&victim_node).unwrap();
    h.fail_node(idx);
    // Its tasks stay RUNNING in the store until the node is declared down:
    // the farm must not start their backends again meanwhile (it did, on
    // the same addresses, and under CPU load the bind could find the old
    // listener not yet closed and fail).
    dead.lock().unwrap().push(victim_node.clone());
    farm.lock().unwrap().retain(|_, (n, b)| {
        if *n == victim_node {
            b.stop();
        }
        *n != victim_node
    });
    h.wait_for("node down", Duration::from_secs(10), |s| {
        s.node(&victim_node).is_some_and(|n| n.status.state == NodeState::Down)
    })
    .await
    .unwrap();
    let down = Instant::now();
    h.wait_running("web", 3, Duration::from_secs(10)).await.unwrap();
    let window_end = down + Duration::from_secs(1);
    let now = Instant::now();
    if now < window_end + Duration::from_millis(1500) {
        tokio::time::sleep(window_end + Duration::from_millis(1500) - now).await;
    }

    // Rolling update, one task at a time.
    let update_start = Instant::now();
    h.cluster().modify_service("web", |s| s.task_template.container.image = "web:2".into()).await.unwrap();
    h.wait_for("update done", Duration::from_secs(20), |s| {
        let svc = s.service_by_name("web").unwrap();
        s.tasks_of_service(&svc.id)
            .filter(|t| {
                t.desired_state <= TaskState::Running
                    && t.status.state == TaskState::Running
                    && t.spec.container.image == "web:2"
            })
            .count()
            == 3
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let update_end = Instant::now();
    stop.store(true, Ordering::SeqCst);
    let log = client.await.unwrap();

    let after_window: Vec<_> = log.iter().filter(|(t, _)| *t > window_end && *t < update_start).collect();
    assert!(after_window.len() > 20, "the client kept going ({} after the window)", after_window.len());
    let failed = after_window.iter().filter(|(_, ok)| !ok).count();
    assert_eq!(failed, 0, "connections failed after the node-loss failover window");
    let during_update: Vec<_> = log.iter().filter(|(t, _)| *t >= update_start && *t <= update_end).collect();
    assert!(during_update.len() > 20, "the client kept going during the update ({})", during_update.len());
    let failed = during_update.iter().filter(|(_, ok)| !ok).count();
    assert_eq!(failed, 0, "connections failed during the rolling update");
    for m in meshes {
        m.stop();
    }
    h.shutdown();
}
