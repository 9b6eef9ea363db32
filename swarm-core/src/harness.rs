//! A test harness for orchestration logic, in the spirit of Nomad's
//! scheduler `Harness`: an N-node cluster on [`MemStore`], [`SimRuntime`]
//! and any [`Scheduler`], with the manager's loops and one agent per node
//! running in-process. Advance time (tokio's paused clock), inject faults,
//! and assert on the store.
//!
//! Nodes are numbered from 0 everywhere: node `i` has the id `node-i`, the
//! hostname `host-i`, and is `sim(i)`, `fail_node(i)`, `node_id(i)`.
//! Extra controllers ([`HarnessBuilder::controller`]) run beside the
//! manager's own, so a custom controller is tested in a whole cluster.
//!
//! Paused time needs tokio's `test-util` feature in your dev-dependencies:
//! `tokio = { version = "1", features = ["macros", "rt", "test-util"] }`,
//! then `#[tokio::test(start_paused = true)]`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::time::Duration;
//! use swarm_core::harness::Harness;
//! use swarm_core::model::{ServiceSpec, TaskState};
//! use swarm_core::scheduler::*;
//!
//! let h = Harness::builder().nodes(3).scheduler(FirstFit).seed(1).build().await.unwrap();
//! h.cluster().create_service(ServiceSpec::replicated("web", "nginx:1.27", 3)).await.unwrap();
//! h.wait_running("web", 3, Duration::from_secs(30)).await.unwrap();
//! // Crash one replica's container from outside: it is replaced.
//! let sim = h.sim(0);
//! for id in sim.running() { sim.kill_from_outside(&id, 1); }
//! h.wait_running("web", 3, Duration::from_secs(60)).await.unwrap();
//! h.shutdown();
//! # }
//! ```

pub mod linearizability;

use crate::agent::{Agent, AgentConfig};
use crate::cluster::Cluster;
use crate::controller::Controller;
use crate::dispatcher::{Dispatcher, LocalDispatcher};
use crate::id::NodeId;
use crate::manager::{Manager, ManagerBuilder, ManagerConfig};
use crate::model::*;
use crate::scheduler::Scheduler;
use crate::sim::SimRuntime;
use crate::state::State;
use crate::store::{MemStore, Store, StoreError};
use crate::time::SpecDuration;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Why a harness call failed.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A condition did not hold in time; the message says which and what
    /// the state was.
    #[error("timed out after {after:?} waiting for {what}; last state: {last}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
        /// A summary of the state when it gave up.
        last: String,
    },
    /// No scheduler was given.
    #[error("the harness needs a scheduler: call .scheduler(...)")]
    NoScheduler,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The manager could not start.
    #[error(transparent)]
    Manager(#[from] crate::manager::ManagerError),
    /// A cluster call failed.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// One simulated node.
pub struct SimNode {
    /// Its id.
    pub id: NodeId,
    /// Its runtime.
    pub sim: SimRuntime,
    /// What it reports.
    pub description: NodeDescription,
    agent: Option<JoinHandle<()>>,
}

/// Builds a [`Harness`].
pub struct HarnessBuilder {
    nodes: usize,
    resources: Resources,
    scheduler: Option<Box<dyn Scheduler>>,
    seed: u64,
    cluster_spec: ClusterSpec,
    manager: ManagerConfig,
    labels: Vec<(usize, String, String)>,
    sizes: Vec<(usize, Resources)>,
    controllers: Vec<Box<dyn FnOnce(ManagerBuilder) -> ManagerBuilder + Send>>,
}

impl Default for HarnessBuilder {
    fn default() -> Self {
        HarnessBuilder {
            nodes: 3,
            resources: Resources::new(4_000_000_000, 8 << 30),
            scheduler: None,
            seed: 0,
            cluster_spec: ClusterSpec::default(),
            manager: ManagerConfig::default(),
            labels: Vec::new(),
            sizes: Vec::new(),
            controllers: Vec::new(),
        }
    }
}

impl HarnessBuilder {
    /// Number of nodes (default 3).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }
    /// Capacity of each node (default 4 CPUs, 8 GiB).
    pub fn node_resources(mut self, r: Resources) -> Self {
        self.resources = r;
        self
    }
    /// Capacity of node `index` (0-based), overriding
    /// [`HarnessBuilder::node_resources`] for that node.
    pub fn node_resources_at(mut self, index: usize, r: Resources) -> Self {
        self.sizes.push((index, r));
        self
    }
    /// Runs a controller of yours beside the manager's own
    /// ([`ManagerBuilder::controller`]).
    pub fn controller<C, F>(mut self, make: F) -> Self
    where
        C: Controller,
        F: FnMut() -> C + Send + 'static,
    {
        self.controllers.push(Box::new(move |b: ManagerBuilder| b.controller(make)));
        self
    }
    /// The scheduler to test (required).
    pub fn scheduler(mut self, s: impl Scheduler + 'static) -> Self {
        self.scheduler = Some(Box::new(s));
        self
    }
    /// The scheduler to test, boxed.
    pub fn boxed_scheduler(mut self, s: Box<dyn Scheduler>) -> Self {
        self.scheduler = Some(s);
        self
    }
    /// Seed for every id (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Heartbeat period (default 5 s; nodes are down after 3 missed).
    pub fn heartbeat(mut self, period: Duration) -> Self {
        self.cluster_spec.dispatcher.heartbeat_period = SpecDuration::from(period);
        self
    }
    /// Cluster settings.
    pub fn cluster_spec(mut self, spec: ClusterSpec) -> Self {
        self.cluster_spec = spec;
        self
    }
    /// Manager settings.
    pub fn manager_config(mut self, c: ManagerConfig) -> Self {
        self.manager = c;
        self
    }
    /// Puts label `key=value` on node `index` (0-based).
    pub fn node_label(mut self, index: usize, key: &str, value: &str) -> Self {
        self.labels.push((index, key.into(), value.into()));
        self
    }

    /// Starts the store, the manager and one agent per node, and waits until
    /// every node is ready.
    pub async fn build(self) -> Result<Harness, HarnessError> {
        let scheduler = self.scheduler.ok_or(HarnessError::NoScheduler)?;
        let store = Arc::new(MemStore::new());
        let dyn_store: Arc<dyn Store> = store.clone();
        let cluster = Cluster::with_seed(dyn_store.clone(), self.seed ^ 0xC1A5);
        let grace = self.cluster_spec.dispatcher.grace();
        cluster.set_cluster_spec(self.cluster_spec).await?;
        let mut builder = Manager::builder(dyn_store)
            .scheduler(scheduler)
            .config(ManagerConfig { seed: Some(self.seed), ..self.manager });
        for add in self.controllers {
            builder = add(builder);
        }
        let manager = builder.start()?;
        let mut h = Harness {
            store,
            cluster,
            dispatcher: manager.dispatcher(),
            manager: Some(manager),
            nodes: Vec::new(),
            grace,
        };
        for i in 0..self.nodes {
            let size = self.sizes.iter().rev().find(|(at, _)| *at == i).map(|(_, r)| r.clone());
            h.add_node_quiet(size.unwrap_or_else(|| self.resources.clone()));
        }
        for i in 0..h.nodes.len() {
            h.start_agent(i);
        }
        h.wait_for("all nodes ready", Duration::from_secs(60), |s| {
            s.nodes().filter(|n| n.status.state == NodeState::Ready).count() == self.nodes
        })
        .await?;
        for (idx, k, v) in &self.labels {
            let id = h.nodes[*idx].id.to_string();
            h.cluster.set_node_label(&id, k, Some(v)).await?;
        }
        Ok(h)
    }
}

/// A running in-process cluster. See the [module docs](self).
pub struct Harness {
    store: Arc<MemStore>,
    cluster: Cluster,
    manager: Option<Manager>,
    dispatcher: LocalDispatcher,
    nodes: Vec<SimNode>,
    grace: Duration,
}

impl Harness {
    /// A builder with 3 nodes of 4 CPUs and 8 GiB.
    pub fn builder() -> HarnessBuilder {
        HarnessBuilder::default()
    }

    /// The store.
    pub fn store(&self) -> &Arc<MemStore> {
        &self.store
    }

    /// The embedding API on the store.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The current state.
    pub fn state(&self) -> Arc<State> {
        self.store.state()
    }

    /// Node `i`'s simulated runtime (for fault injection).
    pub fn sim(&self, i: usize) -> &SimRuntime {
        &self.nodes[i].sim
    }

    /// Node `i`'s id.
    pub fn node_id(&self, i: usize) -> NodeId {
        self.nodes[i].id.clone()
    }

    /// Index of a node by id.
    pub fn node_index(&self, id: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| &n.id == id)
    }

    /// Number of nodes (including failed ones).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// How long a silent node stays READY: the heartbeat period times the
    /// grace periods of the cluster spec it was built with (Swarm: 15 s).
    pub fn heartbeat_grace(&self) -> Duration {
        self.grace
    }

    /// Tasks of service `name` running (and healthy, when checked) among
    /// those the managers want running, now.
    pub fn running_count(&self, name: &str) -> usize {
        running_count(&self.state(), name)
    }

    fn add_node_quiet(&mut self, resources: Resources) -> usize {
        let i = self.nodes.len();
        let id = NodeId::new(format!("node-{i}"));
        let sim = SimRuntime::with_index(id.as_str(), i as u32);
        let description = NodeDescription {
            hostname: format!("host-{i}"),
            platform: Platform::new("linux", "amd64"),
            resources,
            engine_labels: Labels::new(),
        };
        self.nodes.push(SimNode { id, sim, description, agent: None });
        i
    }

    fn start_agent(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let agent = Agent::new(
            AgentConfig {
                node_id: n.id.clone(),
                description: n.description.clone(),
                addr: format!("10.0.{}.{}", (i + 1) / 250, (i + 1) % 250 + 1),
            },
            Arc::new(n.sim.clone()),
            Arc::new(self.dispatcher.clone()) as Arc<dyn Dispatcher>,
        );
        let id = n.id.clone();
        n.agent = Some(tokio::spawn(async move {
            if let Err(e) = agent.run().await {
                tracing::info!(node = %id, error = %e, "agent stopped");
            }
        }));
    }

    /// Adds a node with `resources` and starts its agent; returns its index.
    pub async fn add_node(&mut self, resources: Resources) -> Result<usize, HarnessError> {
        let i = self.add_node_quiet(resources);
        self.start_agent(i);
        let id = self.nodes[i].id.clone();
        self.wait_for(&format!("node {id} ready"), Duration::from_secs(60), |s| {
            s.node(&id).is_some_and(|n| n.status.state == NodeState::Ready)
        })
        .await?;
        Ok(i)
    }

    /// Node `i` fails: its engine loses every container and its agent stops
    /// heartbeating (the managers notice after the heartbeat grace).
    pub fn fail_node(&mut self, i: usize) {
        // The agent dies with its node: stop it first so it reports nothing.
        if let Some(a) = self.nodes[i].agent.take() {
            a.abort();
        }
        self.dispatcher.drop_session(&self.nodes[i].id);
        self.nodes[i].sim.fail();
    }

    /// Node `i` is cut off from the managers: its agent stops talking to
    /// them (the managers notice after the heartbeat grace) but its
    /// containers keep running, as on a host behind a network partition.
    pub fn partition_node(&mut self, i: usize) {
        if let Some(a) = self.nodes[i].agent.take() {
            a.abort();
        }
        self.dispatcher.drop_session(&self.nodes[i].id);
    }

    /// A node cut off by [`Harness::partition_node`] reaches the managers
    /// again: a new agent session, with the containers it kept.
    pub fn heal_node(&mut self, i: usize) {
        if self.nodes[i].agent.is_none() {
            self.start_agent(i);
        }
    }

    /// Node `i` comes back (empty engine, new agent).
    pub fn recover_node(&mut self, i: usize) {
        self.nodes[i].sim.recover();
        self.start_agent(i);
    }

    /// Restarts node `i`'s agent, keeping its containers: the new agent must
    /// re-adopt them.
    pub fn restart_agent(&mut self, i: usize) {
        if let Some(a) = self.nodes[i].agent.take() {
            a.abort();
        }
        self.dispatcher.drop_session(&self.nodes[i].id);
        self.start_agent(i);
    }

    /// Lets (paused) time pass.
    pub async fn advance(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Waits until `pred` holds on the store's state.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&State) -> bool,
    ) -> Result<Arc<State>, HarnessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut watch = self.store.watch(self.store.state().revision()).await?;
        loop {
            let state = self.store.state();
            if pred(&state) {
                return Ok(state);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HarnessError::Timeout { what: what.to_string(), after: timeout, last: summary(&state) });
            }
            tokio::select! {
                r = watch.next() => if r.is_err() {
                    watch = self.store.watch(self.store.state().revision()).await?;
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Waits until service `name` has exactly `n` tasks RUNNING (and
    /// healthy, when they have a health check) among those the managers
    /// want running.
    pub async fn wait_running(&self, name: &str, n: usize, timeout: Duration) -> Result<Arc<State>, HarnessError> {
        self.wait_for(&format!("{n} running tasks of {name}"), timeout, |s| running_count(s, name) == n).await
    }

    /// Stops the manager and every agent.
    pub fn shutdown(mut self) {
        if let Some(m) = self.manager.take() {
            m.stop();
        }
        for n in &mut self.nodes {
            if let Some(a) = n.agent.take() {
                a.abort();
            }
        }
    }
}

/// Tasks of service `name` that are running (and healthy if checked) and
/// still wanted.
pub fn running_count(state: &State, name: &str) -> usize {
    let Some(svc) = state.service_by_name(name) else { return 0 };
    state
        .tasks_of_service(&svc.id)
        .filter(|t| t.desired_state <= TaskState::Running && t.is_running_and_healthy())
        .count()
}

/// A one-line summary of the state, for timeout messages.
pub fn summary(state: &State) -> String {
    let mut parts = Vec::new();
    for n in state.nodes() {
        parts.push(format!("{}:{:?}/{:?}", n.id, n.status.state, n.spec.availability));
    }
    for s in state.services() {
        let mut by_state: std::collections::BTreeMap<String, usize> = Default::default();
        for t in state.tasks_of_service(&s.id) {
            *by_state.entry(format!("{}/{}", t.status.state, t.desired_state)).or_default() += 1;
        }
        parts.push(format!("{}: {:?}", s.spec.name, by_state));
        if let Some(t) = state.tasks_of_service(&s.id).find(|t| t.status.state == TaskState::Pending) {
            parts.push(format!("(pending: {})", t.status.message));
        }
    }
    parts.join("; ")
}

/// Environment variable that fixes [`test_seed`]'s value, to replay a run.
pub const TEST_SEED_ENV: &str = "SWARM_TEST_SEED";

/// A seed for one randomized test run: the value of `SWARM_TEST_SEED`
/// (decimal or `0x` hex) when set, else a fresh one from the OS random
/// source. Either way it is printed with `name`, so a failing run's output
/// (cargo shows a failed test's output) says how to replay it:
/// `SWARM_TEST_SEED=0x... cargo test ...`. Randomized tests run their fixed
/// seeds and then this one, so every run also explores a new case.
///
/// # Panics
/// When `SWARM_TEST_SEED` is set but is not a number (a test helper: a
/// typo must not silently run another seed), or when the OS random source
/// fails.
pub fn test_seed(name: &str) -> u64 {
    let seed = match std::env::var(TEST_SEED_ENV) {
        Ok(v) => parse_seed(&v).unwrap_or_else(|| panic!("{TEST_SEED_ENV}={v:?} is not a decimal or 0x-hex u64")),
        Err(_) => {
            let mut b = [0u8; 8];
            if let Err(e) = getrandom::getrandom(&mut b) {
                panic!("the OS random source failed: {e}");
            }
            u64::from_le_bytes(b)
        }
    };
    eprintln!("{name}: seed {seed:#x} (replay with {TEST_SEED_ENV}={seed:#x})");
    seed
}

fn parse_seed(v: &str) -> Option<u64> {
    let v = v.trim();
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

#[cfg(test)]
mod seed_tests {
    use super::parse_seed;

    #[test]
    fn seeds_parse_in_decimal_and_hex() {
        assert_eq!(parse_seed("42"), Some(42));
        assert_eq!(parse_seed("0x2a"), Some(42));
        assert_eq!(parse_seed(" 0XFF\n"), Some(255));
        assert_eq!(parse_seed("0xffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_seed("forty-two"), None);
        assert_eq!(parse_seed(""), None);
    }
}
