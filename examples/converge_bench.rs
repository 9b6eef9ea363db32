//! Convergence benchmark: one service create to N replicas RUNNING on M
//! simulated nodes, then the heal after 10% of the nodes fail.
//!
//! `cargo run --release --example converge_bench -- --nodes 1000 --replicas 10000`
//!
//! Everything (store, manager loops, one agent per node, SimRuntime) runs on
//! one thread under tokio's paused clock: simulated waits (heartbeat grace,
//! scheduler debounce) take no wall time, so the figures are the CPU cost
//! of the control plane itself. The JSON's `*_s` keys are wall-clock
//! seconds; `heal_virtual_s` is the simulated time the heal took (dominated
//! by the 15 s heartbeat grace).

use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm::agent::{Agent, AgentConfig};
use swarm::dispatcher::Dispatcher;
use swarm::manager::{Manager, ManagerConfig};
use swarm::model::*;
use swarm::runtime::Runtime;
use swarm::sched::Pipeline;
use swarm::sim::SimRuntime;
use swarm::state::State;
use swarm::store::{MemStore, Store};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn peak_rss_bytes() -> u64 {
    // VmHWM: the resident set's high-water mark, from the kernel.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// CPU time (user + system) of this process so far, in seconds.
fn cpu_s() -> f64 {
    // Fields 14 and 15 of /proc/self/stat, in clock ticks (100 per second).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let utime: f64 = after.get(11)?.parse().ok()?;
            let stime: f64 = after.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

fn running(state: &State, avoid: &HashSet<NodeId>) -> usize {
    state
        .tasks()
        .filter(|t| t.desired_state <= TaskState::Running && t.status.state == TaskState::Running)
        .filter(|t| t.node_id.as_ref().is_none_or(|n| !avoid.contains(n)))
        .count()
}

use std::collections::HashSet;
use swarm::id::NodeId;

async fn wait(store: &MemStore, what: &str, pred: impl Fn(&State) -> bool) {
    let mut watch = store.watch(store.state().revision()).await.expect("watch");
    loop {
        if pred(&store.state()) {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(3600), watch.next()).await {
            Ok(Ok(_)) => {
                // Check once per burst of changes, not after each one: the
                // check walks every task and must not dominate the figures.
                tokio::time::sleep(Duration::from_millis(10)).await;
                while let Some(r) = watch.try_next() {
                    if r.is_err() {
                        watch = store.watch(store.state().revision()).await.expect("watch");
                        break;
                    }
                }
            }
            Ok(Err(_)) => watch = store.watch(store.state().revision()).await.expect("watch"),
            Err(_) => panic!("timed out waiting for {what}: {}", swarm::harness::summary(&store.state())),
        }
    }
}

fn main() {
    let nodes = arg("--nodes", 1000);
    let replicas = arg("--replicas", 10_000);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
    rt.block_on(async move {
        let store = Arc::new(MemStore::new());
        let dyn_store: Arc<dyn Store> = store.clone();
        let manager = Manager::start(
            dyn_store.clone(),
            Box::new(Pipeline::spread()),
            ManagerConfig { seed: Some(1), ..Default::default() },
        );
        let dispatcher: Arc<dyn Dispatcher> = Arc::new(manager.dispatcher());
        let mut sims = Vec::new();
        let mut agents = Vec::new();
        for i in 0..nodes {
            let sim = SimRuntime::with_index(format!("n{i}"), i as u32);
            let runtime: Arc<dyn Runtime> = Arc::new(sim.clone());
            let agent = Agent::new(
                AgentConfig {
                    node_id: format!("node-{i:05}").into(),
                    description: NodeDescription {
                        hostname: format!("host-{i}"),
                        platform: Platform::new("linux", "amd64"),
                        resources: Resources::new(8_000_000_000, 32 << 30),
                        engine_labels: Labels::new(),
                    },
                    addr: format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                },
                runtime,
                dispatcher.clone(),
            );
            agents.push(tokio::spawn(async move {
                let _ = agent.run().await;
            }));
            sims.push(sim);
        }
        wait(&store, "nodes ready", |s| s.nodes().filter(|n| n.status.state == NodeState::Ready).count() == nodes).await;

        let cluster = swarm::cluster::Cluster::with_seed(dyn_store.clone(), 2);
        let mut spec = ServiceSpec::replicated("web", "nginx:1.27", replicas as u64);
        spec.task_template.resources.reservations = Resources::new(10_000_000, 16 << 20);
        let t0 = Instant::now();
        let c0 = cpu_s();
        let v0 = tokio::time::Instant::now();
        cluster.create_service(spec).await.expect("create");
        wait(&store, "all replicas running", |s| running(s, &HashSet::new()) == replicas).await;
        let converge_s = t0.elapsed().as_secs_f64();
        let converge_cpu_s = cpu_s() - c0;
        let converge_virtual_s = v0.elapsed().as_secs_f64();

        // 10% of the nodes fail at once.
        let failed: HashSet<NodeId> = (0..nodes / 10).map(|i| format!("node-{i:05}").into()).collect();
        let lost = store.state().tasks().filter(|t| t.node_id.as_ref().is_some_and(|n| failed.contains(n))).count();
        let t1 = Instant::now();
        let c1 = cpu_s();
        let v1 = tokio::time::Instant::now();
        for i in 0..nodes / 10 {
            sims[i].fail();
            agents[i].abort();
        }
        wait(&store, "healed", |s| running(s, &failed) == replicas).await;
        let heal_s = t1.elapsed().as_secs_f64();
        let heal_cpu_s = cpu_s() - c1;
        let heal_virtual_s = v1.elapsed().as_secs_f64();
        manager.stop();
        for a in agents {
            a.abort();
        }
        println!(
            "nodes={nodes} replicas={replicas} converge={converge_s:.2}s heal={heal_s:.2}s (lost {lost} tasks; simulated heal {heal_virtual_s:.1}s)"
        );
        println!(
            "{{\"nodes\":{nodes},\"replicas\":{replicas},\"converge_s\":{converge_s:.3},\"converge_virtual_s\":{converge_virtual_s:.3},\"converge_cpu_s\":{converge_cpu_s:.2},\"heal_s\":{heal_s:.3},\"heal_cpu_s\":{heal_cpu_s:.2},\"heal_virtual_s\":{heal_virtual_s:.3},\"lost_tasks\":{lost},\"peak_rss_bytes\":{}}}",
            peak_rss_bytes()
        );
    });
}
