//! The whole control plane on a replicated store: three raft managers
//! (in-process network, logs on disk), a `Manager` on each whose control
//! loops run only while its store leads (`Store::leadership`), three agents
//! on SimRuntime following whichever manager leads (`LeaderDispatcher`).
//! The leader is killed: a new one takes over the loops, the agents
//! reconnect, the service stays at its replica count and a scale-up made
//! through a follower is carried out.
//!
//! Real time (raft-rs runs on its own threads), 10 ms raft ticks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm::agent::{Agent, AgentConfig};
use swarm::cluster::Cluster;
use swarm::dispatcher::LeaderDispatcher;
use swarm::manager::Manager;
use swarm::model::*;
use swarm::placement::Pipeline;
use swarm::raft::{InProcNetwork, RaftStore, RaftStoreConfig};
use swarm::sim::SimRuntime;
use swarm::store::Store;
use swarm::time::SpecDuration;

struct ManagerProcess {
    store: RaftStore,
    manager: Manager,
}

/// A manager on `store`, added to the dispatcher the agents follow.
fn start_manager(store: RaftStore, follow: &LeaderDispatcher) -> ManagerProcess {
    let manager = Manager::builder(Arc::new(store.clone())).scheduler(Box::new(Pipeline::spread())).start().unwrap();
    follow.add_manager(&store, &manager);
    ManagerProcess { store, manager }
}

async fn running(store: &RaftStore, name: &str) -> usize {
    let Ok(s) = store.snapshot().await else { return 0 };
    let Some(svc) = s.service_by_name(name) else { return 0 };
    s.tasks_of_service(&svc.id)
        .filter(|t| t.desired_state <= TaskState::Running && t.status.state == TaskState::Running)
        .count()
}

async fn wait_running(store: &RaftStore, name: &str, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let r = running(store, name).await;
        if r == n {
            return;
        }
        assert!(Instant::now() < deadline, "{name}: {r} running, want {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_loops_follow_the_raft_leader() {
    let tmp = tempfile::tempdir().unwrap();
    let net = InProcNetwork::new(42);
    let ids = vec![1u64, 2, 3];
    let follow = LeaderDispatcher::new();
    let mut managers: BTreeMap<u64, ManagerProcess> = BTreeMap::new();
    for &id in &ids {
        let cfg = RaftStoreConfig::new(id, tmp.path().join(format!("m{id}")), ids.clone())
            .with_tick(Duration::from_millis(10));
        let store = RaftStore::open_async(cfg, net.transport(id)).await.unwrap();
        net.register(id, store.inbox());
        managers.insert(id, start_manager(store, &follow));
    }
    let any = managers[&1].store.clone();
    // Short heartbeats so the dispatcher of a new leader sees nodes quickly.
    let api = Cluster::new(Arc::new(any.clone()));
    let mut spec = ClusterSpec::default();
    spec.dispatcher.heartbeat_period = SpecDuration::from_millis(500);
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.set_cluster_spec(spec.clone()).await.is_err() {
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut agents = Vec::new();
    for i in 1..=3 {
        let agent = Agent::new(
            AgentConfig {
                node_id: format!("worker-{i}").into(),
                description: NodeDescription {
                    hostname: format!("w{i}"),
                    platform: Platform::new("linux", "amd64"),
                    resources: Resources::new(4_000_000_000, 8 << 30),
                    engine_labels: Labels::new(),
                },
                addr: format!("127.0.0.{i}"),
            },
            Arc::new(SimRuntime::with_index(format!("w{i}"), 100 + i)),
            Arc::new(follow.clone()),
        );
        agents.push(tokio::spawn(async move {
            let _ = agent.run().await;
        }));
    }
    let mut spec = ServiceSpec::replicated("web", "nginx:1.27", 6);
    spec.task_template.restart_policy.delay = SpecDuration::from_millis(100);
    api.create_service(spec).await.unwrap();
    wait_running(&any, "web", 6, Duration::from_secs(30)).await;

    // Kill the leading manager.
    let leader = any.status().leader.expect("a leader");
    let dead = managers.remove(&leader).unwrap();
    dead.manager.stop();
    dead.store.shutdown().await;
    assert!(!net.registered().contains(&leader), "a stopped manager leaves the network");
    let survivor = managers.values().next().unwrap().store.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = survivor.status().leader;
        if l.is_some() && l != Some(leader) {
            break;
        }
        assert!(Instant::now() < deadline, "no new leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The new leader's loops keep the service whole and act on new specs.
    wait_running(&survivor, "web", 6, Duration::from_secs(30)).await;
    let api = Cluster::new(Arc::new(survivor.clone()));
    api.scale("web", 9).await.unwrap();
    wait_running(&survivor, "web", 9, Duration::from_secs(30)).await;
    let s = survivor.snapshot().await.unwrap();
    assert!(s.nodes().all(|n| n.status.state == NodeState::Ready), "agents reconnected to the new leader");

    for a in agents {
        a.abort();
    }
    for (_, m) in managers {
        m.manager.stop();
        m.store.shutdown().await;
    }
}
