//! The whole control plane on a replicated store: three raft managers
//! (in-process network, logs on disk), the control loops running only on
//! the leader (`manager::run_while_leader`), three agents on SimRuntime
//! following whichever manager leads. The leader is killed: a new one takes
//! over the loops, the agents reconnect, the service stays at its replica
//! count and a scale-up made through a follower is carried out.
//!
//! Real time (raft-rs runs on its own threads), 10 ms raft ticks.

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarm::agent::{Agent, AgentConfig};
use swarm::cluster::Cluster;
use swarm::dispatcher::*;
use swarm::manager::{Manager, ManagerConfig, run_while_leader};
use swarm::model::*;
use swarm::raft::{InProcNetwork, RaftStore, RaftStoreConfig};
use swarm::sched::Pipeline;
use swarm::sim::SimRuntime;
use swarm::store::Store;
use swarm::time::SpecDuration;

/// A dispatcher that forwards to the current leader's, as a worker whose
/// connection follows the leader would.
#[derive(Clone, Default)]
struct FollowLeader(Arc<Mutex<Option<LocalDispatcher>>>);

impl FollowLeader {
    fn current(&self) -> Result<LocalDispatcher, DispatchError> {
        self.0.lock().unwrap().clone().ok_or_else(|| DispatchError::Unavailable("no leader".into()))
    }
}

#[async_trait]
impl Dispatcher for FollowLeader {
    async fn open_session(&self, req: SessionRequest) -> Result<SessionInfo, DispatchError> {
        self.current()?.open_session(req).await
    }
    async fn heartbeat(&self, session_id: &str) -> Result<HeartbeatResponse, DispatchError> {
        self.current()?.heartbeat(session_id).await
    }
    async fn update_task_status(&self, session_id: &str, updates: Vec<TaskStatusUpdate>) -> Result<(), DispatchError> {
        self.current()?.update_task_status(session_id, updates).await
    }
    async fn assignments(&self, session_id: &str) -> Result<AssignmentStream, DispatchError> {
        self.current()?.assignments(session_id).await
    }
}

struct ManagerProcess {
    store: RaftStore,
    lead: tokio::task::JoinHandle<()>,
    poll: tokio::task::JoinHandle<()>,
}

fn start_manager(id: u64, store: RaftStore, follow: FollowLeader) -> ManagerProcess {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let s = store.clone();
    let poll = tokio::spawn(async move {
        loop {
            let st = s.status();
            tx.send_if_modified(|v| {
                let now = st.leader == Some(id) && !st.stopped;
                std::mem::replace(v, now) != now
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let dyn_store: Arc<dyn Store> = Arc::new(store.clone());
    let lead = tokio::spawn(run_while_leader(
        rx,
        move || Manager::start(dyn_store.clone(), Box::new(Pipeline::spread()), ManagerConfig::default()),
        move |m| *follow.0.lock().unwrap() = m.map(|m| m.dispatcher()),
    ));
    ManagerProcess { store, lead, poll }
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
    let follow = FollowLeader::default();
    let mut managers: BTreeMap<u64, ManagerProcess> = BTreeMap::new();
    for &id in &ids {
        let cfg = RaftStoreConfig::new(id, tmp.path().join(format!("m{id}")), ids.clone())
            .with_tick(Duration::from_millis(10));
        let store = RaftStore::open_async(cfg, net.transport(id)).await.unwrap();
        net.register(id, store.inbox());
        managers.insert(id, start_manager(id, store, follow.clone()));
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
    dead.poll.abort();
    dead.lead.abort();
    net.unregister(leader);
    dead.store.shutdown().await;
    *follow.0.lock().unwrap() = None;
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
        m.poll.abort();
        m.lead.abort();
        m.store.shutdown().await;
    }
}
