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
//!
//! Convergence is when the store first shows N tasks RUNNING; then
//! [`check_converged`] must hold, or the benchmark fails (exit 1, nothing
//! reported): one running task per slot 1..=N (none twice, none missing),
//! and every SimRuntime runs exactly the containers of the running tasks
//! on its node (no more, no fewer). The same after the heal, on the nodes
//! that did not fail (the failed ones run nothing). The checks are not
//! timed.
//!
//! swarm-sched/tests/converge_bench.rs runs this file at a small size and
//! shows the check catching a doubled slot, a missing slot, a stray
//! container and a missing one.

use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm::agent::{Agent, AgentConfig};
use swarm::dispatcher::Dispatcher;
use swarm::manager::{Manager, ManagerConfig};
use swarm::model::*;
use swarm::placement::Pipeline;
use swarm::runtime::Runtime;
use swarm::sim::SimRuntime;
use swarm::state::State;
use swarm::store::{MemStore, Store};

/// Where the service's running tasks and the runtimes disagree: one line
/// per problem (empty: they agree).
///
/// `running_on[i]` lists the containers that node `node_ids[i]`'s runtime
/// runs; nodes in `failed` are expected to run nothing, and their tasks are
/// not counted.
pub fn check_converged(
    state: &State,
    service: &str,
    replicas: u64,
    node_ids: &[NodeId],
    running_on: &[Vec<String>],
    failed: &HashSet<NodeId>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(svc) = state.services().find(|s| s.spec.name == service) else {
        return vec![format!("no service {service:?}")];
    };
    let mut slots: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut want: BTreeMap<&NodeId, BTreeSet<String>> = BTreeMap::new();
    for t in state.tasks().filter(|t| t.service_id == svc.id) {
        let on_failed = t.node_id.as_ref().is_some_and(|n| failed.contains(n));
        if t.status.state != TaskState::Running || t.desired_state > TaskState::Running || on_failed {
            continue;
        }
        match t.slot {
            Some(slot) => slots.entry(slot).or_default().push(t.id.to_string()),
            None => problems.push(format!("running task {} has no slot", t.id)),
        }
        match (&t.node_id, &t.status.container_id) {
            (Some(n), Some(c)) => {
                want.entry(n).or_default().insert(c.clone());
            }
            _ => problems.push(format!("running task {} has no node or no container", t.id)),
        }
    }
    for (slot, tasks) in &slots {
        if tasks.len() > 1 {
            problems.push(format!("slot {slot} runs {} tasks: {}", tasks.len(), tasks.join(", ")));
        }
        if *slot == 0 || *slot > replicas {
            problems.push(format!("slot {slot} is outside 1..={replicas}"));
        }
    }
    let missing: Vec<u64> = (1..=replicas).filter(|s| !slots.contains_key(s)).collect();
    if !missing.is_empty() {
        let shown: Vec<String> = missing.iter().take(10).map(u64::to_string).collect();
        problems.push(format!("{} slots run no task: {}", missing.len(), shown.join(", ")));
    }
    for (i, id) in node_ids.iter().enumerate() {
        let has: BTreeSet<String> = running_on.get(i).into_iter().flatten().cloned().collect();
        // Tasks on failed nodes were skipped: those expect nothing.
        let expected = want.remove(id).unwrap_or_default();
        let extra: Vec<&String> = has.difference(&expected).collect();
        let absent: Vec<&String> = expected.difference(&has).collect();
        if !extra.is_empty() {
            problems.push(format!("{id} runs {} containers of no running task: {extra:?}", extra.len()));
        }
        if !absent.is_empty() {
            problems.push(format!("{id} does not run {} containers of running tasks: {absent:?}", absent.len()));
        }
    }
    for (id, c) in want {
        problems.push(format!("{} running tasks on {id}, a node without a runtime", c.len()));
    }
    problems
}

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

use std::collections::{BTreeMap, BTreeSet, HashSet};
use swarm::id::NodeId;

async fn wait(store: &MemStore, what: &str, pred: impl Fn(&State) -> bool) {
    loop {
        let state = store.state();
        if pred(&state) {
            return;
        }
        // Subscribed only while waiting for the next change: a watcher
        // that sleeps while subscribed keeps every change committed in the
        // meantime alive (a broadcast value lives until every receiver has
        // read it), and at 100,000 replicas that was 400 MB of the peak
        // RSS, a cost of the benchmark and not of the control plane.
        let mut watch = store.watch(state.revision()).await.expect("watch");
        drop(state);
        match tokio::time::timeout(Duration::from_secs(3600), watch.next()).await {
            Ok(Ok(_)) => {
                drop(watch);
                // Check once per burst of changes, not after each one: the
                // check walks every task and must not dominate the figures.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(Err(_)) => {}
            Err(_) => panic!("timed out waiting for {what}: {}", swarm::harness::summary(&store.state())),
        }
    }
}

/// Waits until the store shows every node of `failed` DOWN and returns the
/// wall-clock instant (and the process' CPU time) it saw the last of them
/// go. It watches from the
/// current revision and looks at each change's node events only, so it
/// notices the write that marks the last node down as soon as the runtime
/// polls it (after the tasks already queued before it).
async fn detection(store: Arc<MemStore>, failed: HashSet<NodeId>) -> Result<(Instant, f64), String> {
    let state = store.state();
    let is_down = |n: &Node| n.status.state == NodeState::Down;
    let mut pending: HashSet<NodeId> =
        failed.iter().filter(|id| !state.node(id).is_some_and(|n| is_down(n))).cloned().collect();
    let mut watch = store.watch(state.revision()).await.map_err(|e| format!("watch: {e}"))?;
    while !pending.is_empty() {
        let change = watch.next().await.map_err(|e| format!("detection watch: {e}"))?;
        for ev in &change.events {
            if let Object::Node(n) = &ev.object
                && is_down(n)
            {
                pending.remove(&n.id);
            }
        }
    }
    Ok((Instant::now(), cpu_s()))
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// Nodes.
    pub nodes: usize,
    /// Replicas of the service.
    pub replicas: usize,
    /// Wall seconds from the create to N tasks RUNNING.
    pub converge_s: f64,
    /// Simulated seconds of the same.
    pub converge_virtual_s: f64,
    /// CPU seconds of the same.
    pub converge_cpu_s: f64,
    /// Wall seconds from the failure of 10% of the nodes to N tasks
    /// RUNNING on the others.
    pub heal_s: f64,
    /// CPU seconds of the same.
    pub heal_cpu_s: f64,
    /// Simulated seconds of the same.
    pub heal_virtual_s: f64,
    /// Wall seconds from the moment the store shows every failed node
    /// DOWN (the detection, after the heartbeat grace) to N tasks RUNNING
    /// on the others: the heal's cost once the managers know.
    pub heal_after_detection_s: f64,
    /// CPU seconds of the same (the process is one thread: on a loaded
    /// machine this is the figure that does not depend on the load).
    pub heal_after_detection_cpu_s: f64,
    /// Tasks on the failed nodes.
    pub lost_tasks: usize,
}

/// Fails with every problem [`check_converged`] finds (after `when`).
fn verify(
    when: &str,
    state: &State,
    replicas: usize,
    ids: &[NodeId],
    sims: &[SimRuntime],
    failed: &HashSet<NodeId>,
) -> Result<(), String> {
    let running_on: Vec<Vec<String>> = sims.iter().map(SimRuntime::running).collect();
    let problems = check_converged(state, "web", replicas as u64, ids, &running_on, failed);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{when}: {} problems:\n  {}", problems.len(), problems.join("\n  ")))
    }
}

/// Runs the benchmark on a current-thread runtime with a paused clock:
/// `nodes` agents, a service of `replicas`, then 10% of the nodes fail.
/// Fails when the store and the runtimes disagree after either phase.
pub fn run(nodes: usize, replicas: usize) -> Result<Report, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
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
        let ids: Vec<NodeId> = (0..nodes).map(|i| format!("node-{i:05}").into()).collect();
        for (i, id) in ids.iter().enumerate() {
            let sim = SimRuntime::with_index(format!("n{i}"), i as u32);
            let runtime: Arc<dyn Runtime> = Arc::new(sim.clone());
            let agent = Agent::new(
                AgentConfig {
                    node_id: id.clone(),
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
        wait(&store, "nodes ready", |s| s.nodes().filter(|n| n.status.state == NodeState::Ready).count() == nodes)
            .await;

        let cluster = swarm::cluster::Cluster::with_seed(dyn_store.clone(), 2);
        let mut spec = ServiceSpec::replicated("web", "nginx:1.27", replicas as u64);
        spec.task_template.resources.reservations = Resources::new(10_000_000, 16 << 20);
        let t0 = Instant::now();
        let c0 = cpu_s();
        let v0 = tokio::time::Instant::now();
        cluster.create_service(spec).await.map_err(|e| format!("create: {e}"))?;
        wait(&store, "all replicas running", |s| running(s, &HashSet::new()) == replicas).await;
        let converge_s = t0.elapsed().as_secs_f64();
        let converge_cpu_s = cpu_s() - c0;
        let converge_virtual_s = v0.elapsed().as_secs_f64();
        verify("after converging", &store.state(), replicas, &ids, &sims, &HashSet::new())?;

        // 10% of the nodes fail at once.
        let failed: HashSet<NodeId> = ids.iter().take(nodes / 10).cloned().collect();
        let lost = store.state().tasks().filter(|t| t.node_id.as_ref().is_some_and(|n| failed.contains(n))).count();
        // Notes the wall time at which the last failed node is seen DOWN:
        // a task of its own, woken by each change (not a periodic check).
        let detected = tokio::spawn(detection(store.clone(), failed.clone()));
        tokio::task::yield_now().await;
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
        let (healed_at, healed_cpu) = (Instant::now(), cpu_s());
        let (detected_at, detected_cpu) = detected.await.map_err(|e| format!("detection watcher: {e}"))??;
        let heal_after_detection_s = healed_at.saturating_duration_since(detected_at).as_secs_f64();
        let heal_after_detection_cpu_s = healed_cpu - detected_cpu;
        let healed = verify("after healing", &store.state(), replicas, &ids, &sims, &failed);
        manager.stop();
        for a in agents {
            a.abort();
        }
        healed?;
        Ok(Report {
            nodes,
            replicas,
            converge_s,
            converge_virtual_s,
            converge_cpu_s,
            heal_s,
            heal_cpu_s,
            heal_virtual_s,
            heal_after_detection_s,
            heal_after_detection_cpu_s,
            lost_tasks: lost,
        })
    })
}

fn main() {
    let nodes = arg("--nodes", 1000);
    let replicas = arg("--replicas", 10_000);
    let r = match run(nodes, replicas) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("converge_bench: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "nodes={nodes} replicas={replicas} converge={:.2}s heal={:.2}s ({:.2}s after detection; lost {} tasks; simulated heal {:.1}s); checked: one running task per slot, runtimes run exactly those containers",
        r.converge_s, r.heal_s, r.heal_after_detection_s, r.lost_tasks, r.heal_virtual_s
    );
    println!(
        "{{\"nodes\":{nodes},\"replicas\":{replicas},\"converge_s\":{:.3},\"converge_virtual_s\":{:.3},\"converge_cpu_s\":{:.2},\"heal_s\":{:.3},\"heal_cpu_s\":{:.2},\"heal_virtual_s\":{:.3},\"heal_after_detection_s\":{:.3},\"heal_after_detection_cpu_s\":{:.2},\"lost_tasks\":{},\"peak_rss_bytes\":{}}}",
        r.converge_s,
        r.converge_virtual_s,
        r.converge_cpu_s,
        r.heal_s,
        r.heal_cpu_s,
        r.heal_virtual_s,
        r.heal_after_detection_s,
        r.heal_after_detection_cpu_s,
        r.lost_tasks,
        peak_rss_bytes()
    );
}
