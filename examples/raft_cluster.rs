//! A highly available swarm in one process: three managers replicate their
//! store with raft, each runs the manager's control loops (they act only
//! while their manager leads), and three agents on simulated runtimes reach
//! whichever manager leads through one `LeaderDispatcher`.
//!
//! The scenario: a service of 4 replicas is created; the leading manager is
//! stopped; another takes over, the agents reconnect to it, the service
//! stays at 4 replicas, and a scale to 6 made through a surviving manager is
//! carried out.
//!
//! ```text
//! cargo run --example raft_cluster --features raft
//! ```
//!
//! It runs in real time (raft has its own threads), a few seconds.
//! tests/raft_cluster.rs runs [`demo`] and checks what it reports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm::agent::{Agent, AgentConfig};
use swarm::cluster::Cluster;
use swarm::dispatcher::LeaderDispatcher;
use swarm::id::TaskId;
use swarm::manager::Manager;
use swarm::model::{ClusterSpec, NodeDescription, NodeState, Platform, Resources, ServiceSpec};
use swarm::placement::Pipeline;
use swarm::raft::{InProcNetwork, RaftStore, RaftStoreConfig, Role};
use swarm::sim::SimRuntime;
use swarm::store::Store;
use swarm::time::SpecDuration;

type Error = Box<dyn std::error::Error>;

/// What the demo saw, step by step.
#[derive(Debug)]
pub struct Report {
    /// The manager that led first (and was stopped).
    pub first_leader: u64,
    /// Running replicas once the service converged.
    pub running_at_start: usize,
    /// The manager that took over.
    pub new_leader: u64,
    /// Running replicas once the new leader settled.
    pub running_after_failover: usize,
    /// True when those are the very tasks that ran before (none replaced).
    pub same_tasks_after_failover: bool,
    /// Running replicas after the scale to 6.
    pub running_after_scale: usize,
    /// Nodes READY at the end (every agent reconnected).
    pub ready_nodes: usize,
    /// Managers still on the network after the stop.
    pub on_the_network: Vec<u64>,
    /// The managers' log directory (removed when the demo ends).
    pub data_dir: PathBuf,
}

/// A manager process: its replicated store and the control loops on it.
struct ManagerProcess {
    store: RaftStore,
    manager: Manager,
}

/// Runs the scenario; needs a multi-threaded tokio runtime (see `main`).
pub async fn demo() -> Result<Report, Error> {
    // Each manager keeps its raft log in its own directory under a temporary
    // one, removed at the end (or when `data` is dropped, on an error).
    let data = tempfile::tempdir()?;
    let net = InProcNetwork::new(7); // an in-process "network" between managers
    let ids = vec![1, 2, 3];

    // 1. Three managers. Each one: a raft store, then `Manager::builder` on
    //    it. All three always run; only the leader's loops do any work.
    let follow = LeaderDispatcher::new();
    let mut managers = BTreeMap::new();
    for &id in &ids {
        let cfg = RaftStoreConfig::new(id, data.path().join(format!("manager-{id}")), ids.clone())
            .with_tick(Duration::from_millis(20)); // fast elections for a demo
        let store = RaftStore::open_async(cfg, net.transport(id)).await?;
        net.register(id, store.inbox());
        let manager = Manager::builder(Arc::new(store.clone())).scheduler(Box::new(Pipeline::spread())).start()?;
        // The agents' dispatcher: forwards to this manager while it leads.
        follow.add_manager(&store, &manager);
        managers.insert(id, ManagerProcess { store, manager });
    }
    let first_leader = wait_for_leader(&managers, None).await?;
    println!("managers {ids:?} started; manager {first_leader} leads");

    // 2. The Cluster API works through any manager (writes go to the leader).
    //    Short heartbeats so that agents notice a new leader quickly.
    let api = Cluster::new(Arc::new(managers[&ids[0]].store.clone()));
    let mut spec = ClusterSpec::default();
    spec.dispatcher.heartbeat_period = SpecDuration::from_millis(500);
    api.set_cluster_spec(spec).await?;

    // 3. Three agents on simulated container runtimes, all talking to
    //    whichever manager leads.
    let mut agents = Vec::new();
    for i in 1..=3u32 {
        let config = AgentConfig {
            node_id: format!("worker-{i}").into(),
            description: NodeDescription {
                hostname: format!("worker-{i}"),
                platform: Platform::new("linux", "amd64"),
                resources: Resources::new(4_000_000_000, 8 << 30),
                engine_labels: Default::default(),
            },
            addr: format!("10.0.0.{i}"),
        };
        let runtime = Arc::new(SimRuntime::with_index(format!("worker-{i}"), i));
        agents.push(tokio::spawn(Agent::new(config, runtime, Arc::new(follow.clone())).run()));
    }

    // 4. A service of 4 replicas.
    api.create_service(ServiceSpec::replicated("web", "nginx:1.27", 4)).await?;
    let running_at_start = wait_running(&managers[&ids[0]].store, "web", 4).await?;
    let tasks_at_start = running_tasks(&managers[&ids[0]].store, "web").await?;
    println!("service web: {running_at_start} replicas running");

    // 5. Stop the leading manager: its control loops, then its store (it
    //    leaves the network on its own).
    let stopped = managers.remove(&first_leader).ok_or("the leader is one of ours")?;
    stopped.manager.stop();
    stopped.store.shutdown().await;
    println!("manager {first_leader} stopped");
    let new_leader = wait_for_leader(&managers, Some(first_leader)).await?;
    println!("manager {new_leader} leads now");

    // 6. The new leader keeps the service whole, and a scale made through
    //    any surviving manager is carried out.
    let survivor = managers.values().next().ok_or("a surviving manager")?.store.clone();
    // Past the heartbeat grace (3 x 500 ms) an agent that had not
    // reconnected would be marked down and its tasks replaced.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let running_after_failover = wait_running(&survivor, "web", 4).await?;
    let same_tasks_after_failover = running_tasks(&survivor, "web").await? == tasks_at_start;
    println!("service web: {running_after_failover} replicas running under manager {new_leader}");
    Cluster::new(Arc::new(survivor.clone())).scale("web", 6).await?;
    let running_after_scale = wait_running(&survivor, "web", 6).await?;
    println!("service web scaled: {running_after_scale} replicas running");
    let state = survivor.snapshot().await?;
    let ready_nodes = state.nodes().filter(|n| n.status.state == NodeState::Ready).count();
    println!("{ready_nodes} nodes ready");

    // 7. Clean up: agents, managers, then the data directory.
    for agent in agents {
        agent.abort();
    }
    for (_, m) in managers {
        m.manager.stop();
        m.store.shutdown().await;
    }
    let on_the_network = net.registered();
    let data_dir = data.path().to_path_buf();
    data.close()?;
    Ok(Report {
        first_leader,
        running_at_start,
        new_leader,
        running_after_failover,
        same_tasks_after_failover,
        running_after_scale,
        ready_nodes,
        on_the_network,
        data_dir,
    })
}

/// Waits (up to 10 s) until one of `managers` leads, other than `not`.
async fn wait_for_leader(managers: &BTreeMap<u64, ManagerProcess>, not: Option<u64>) -> Result<u64, Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leader = managers.values().map(|m| m.store.status()).find_map(|s| (s.role == Role::Leader).then_some(s.id));
        if let Some(id) = leader.filter(|&id| Some(id) != not) {
            return Ok(id);
        }
        if Instant::now() > deadline {
            return Err("no leader elected within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 30 s) until `want` tasks of service `name` run.
async fn wait_running(store: &RaftStore, name: &str, want: usize) -> Result<usize, Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = store.snapshot().await.map(|s| swarm::harness::running_count(&s, name)).unwrap_or(0);
        if running == want {
            return Ok(running);
        }
        if Instant::now() > deadline {
            return Err(format!("{name}: {running} running after 30 s, want {want}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ids of the running tasks of service `name`.
async fn running_tasks(store: &RaftStore, name: &str) -> Result<BTreeSet<TaskId>, Error> {
    let state = store.snapshot().await?;
    let service = state.service_by_name(name).ok_or("no such service")?;
    Ok(state.tasks_of_service(&service.id).filter(|t| t.is_running_and_healthy()).map(|t| t.id.clone()).collect())
}

#[allow(dead_code)] // the test includes this file for `demo` only
fn main() -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let report = rt.block_on(demo())?;
    println!("{report:#?}");
    Ok(())
}
