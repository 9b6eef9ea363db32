//! Benchmark of the Docker runtime: how fast replicas get from create to
//! RUNNING on the local Docker Engine, for 1, 10 and 50 replicas of the
//! test workload (the self-built static image of
//! `swarm_runtime_docker::fixture`).
//!
//! Two paths, each run `BENCH_RUNS` times (default 3), medians reported:
//!
//! - service (the headline `create_to_running_s` and `starts_per_sec`):
//!   `Cluster::create_service` of N replicas on an in-process cluster
//!   (swarm-core's manager, a spread scheduler, one node agent on a
//!   `DockerRuntime`), timed until the store shows N tasks RUNNING; so it
//!   includes orchestration, scheduling, dispatch, the agent and the Engine.
//!   `service_remove_s` is the time from the service removal until its
//!   containers are gone.
//! - runtime (`runtime_*` keys): the same N containers through
//!   `DockerRuntime` directly (prepare, create, start, one tokio task per
//!   replica), timed until the Engine reports all RUNNING, then until all
//!   answer `/health` over their address, then force-removed.
//!
//! Run: `cargo run --release --features docker --example docker_bench`.
//! The last stdout line is a JSON array, one object per replica count.
//! Ctrl-C (or SIGTERM) removes the containers of the run and exits with
//! 130 (143); see `support::interrupt`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::interrupt::Interrupt;
use support::tracked::Tracked;
use swarm_core::agent::{Agent, AgentConfig};
use swarm_core::cluster::{Cluster, TaskFilter};
use swarm_core::dispatcher::Dispatcher;
use swarm_core::id::NodeId;
use swarm_core::manager::{Manager, ManagerConfig};
use swarm_core::model::{ClusterSpec, Labels, NodeDescription, Platform, Resources, ServiceSpec, TaskState};
use swarm_core::runtime::{ContainerState, Runtime, labels};
use swarm_core::store::{MemStore, Store};
use swarm_core::time::SpecDuration;
use swarm_runtime_docker::{DockerRuntime, DockerRuntimeOptions, fixture};

/// The engine, through the run's tracking (see `support::tracked`).
type Engine = Tracked<DockerRuntime>;

const BENCH_LABEL: &str = "io.swarm-rs.bench-run";

/// A one-node in-process cluster whose agent runs on the engine.
struct Bench {
    cluster: Cluster,
    manager: Manager,
    agent: tokio::task::JoinHandle<()>,
    node: String,
}

async fn start_cluster(rt: &Engine, prefix: &str) -> Bench {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let cluster = Cluster::with_seed(store.clone(), 5);
    let mut spec = ClusterSpec::default();
    spec.dispatcher.heartbeat_period = SpecDuration::from_secs(1);
    cluster.set_cluster_spec(spec).await.expect("cluster spec");
    let manager = Manager::start(
        store,
        Box::new(swarm::placement::Pipeline::spread()),
        ManagerConfig { seed: Some(5), ..Default::default() },
    );
    let node = format!("{prefix}-node1");
    let agent = Agent::new(
        AgentConfig {
            node_id: NodeId::new(&node),
            description: NodeDescription {
                hostname: node.clone(),
                platform: Platform::new("linux", "amd64"),
                resources: Resources::new(64_000_000_000, 64 << 30),
                engine_labels: Labels::new(),
            },
            addr: "127.0.0.1".into(),
        },
        Arc::new(rt.clone()),
        Arc::new(manager.dispatcher()) as Arc<dyn Dispatcher>,
    );
    let agent = tokio::spawn(async move {
        let _ = agent.run().await;
    });
    Bench { cluster, manager, agent, node }
}

/// Service create to N tasks RUNNING; then service removal to no containers.
async fn service_run(
    b: &Bench,
    rt: &Engine,
    run_labels: &Labels,
    image: &str,
    prefix: &str,
    n: usize,
) -> Result<(f64, f64), String> {
    let name = format!("{prefix}web");
    let mut spec = ServiceSpec::replicated(&name, image, n as u64);
    spec.task_template.container.labels.insert(BENCH_LABEL.into(), prefix.into());
    spec.task_template.container.labels.extend(run_labels.clone());
    spec.task_template.container.stop_grace_period = SpecDuration::from_secs(2);
    let t0 = Instant::now();
    b.cluster.create_service(spec).await.map_err(|e| e.to_string())?;
    let filter = TaskFilter { service: Some(name.clone()), live_only: true, ..Default::default() };
    loop {
        let tasks = b.cluster.list_tasks(filter.clone()).await.map_err(|e| e.to_string())?;
        if tasks.iter().filter(|t| t.status.state == TaskState::Running).count() == n {
            break;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            return Err(format!("{name}: not {n} RUNNING after 300 s"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let to_running = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    b.cluster.remove_service(&name).await.map_err(|e| e.to_string())?;
    let mut sel = Labels::new();
    sel.insert(labels::SERVICE_NAME.into(), name.clone());
    sel.insert(labels::NODE_ID.into(), b.node.clone());
    while !rt.list(&sel).await.map_err(|e| e.to_string())?.is_empty() {
        if t1.elapsed() > Duration::from_secs(300) {
            return Err(format!("{name}: containers left 300 s after the removal"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((to_running, t1.elapsed().as_secs_f64()))
}

struct Sample {
    create_to_running: f64,
    create_to_http: f64,
    remove: f64,
}

async fn one_run(rt: &Engine, run_labels: &Labels, image: &str, prefix: &str, n: usize) -> Result<Sample, String> {
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 1..=n {
        let rt = rt.clone();
        let mut cfg = fixture::workload_config(image, &format!("{prefix}-web.{i}"), &format!("{prefix}-task{i}"));
        cfg.slot = Some(i as u64);
        cfg.labels.insert(BENCH_LABEL.into(), prefix.into());
        cfg.labels.extend(run_labels.clone());
        set.spawn(async move {
            rt.prepare(&cfg).await.map_err(|e| e.to_string())?;
            let id = rt.create(&cfg).await.map_err(|e| e.to_string())?;
            rt.start(&id).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(id)
        });
    }
    let mut ids = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        ids.push(r.map_err(|e| e.to_string())??);
    }
    // All RUNNING as the engine reports it.
    let mut addrs = Vec::with_capacity(n);
    for id in &ids {
        loop {
            let st = rt.inspect(id).await.map_err(|e| e.to_string())?;
            match st.state {
                ContainerState::Running => {
                    let a = st.addresses.first().ok_or("a running container without an address")?;
                    addrs.push(SocketAddr::new(*a, fixture::PORT));
                    break;
                }
                ContainerState::Exited | ContainerState::Unknown => return Err(format!("{id} did not run: {st:?}")),
                ContainerState::Created => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
    let create_to_running = t0.elapsed().as_secs_f64();
    for a in &addrs {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(fixture::http_get(*a, "/health", Duration::from_secs(2)).await, Ok((200, _))) {
            if Instant::now() > deadline {
                return Err(format!("{a} never answered /health"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let create_to_http = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for id in ids {
        let rt = rt.clone();
        set.spawn(async move { rt.remove(&id).await.map_err(|e| e.to_string()) });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    Ok(Sample { create_to_running, create_to_http, remove: t1.elapsed().as_secs_f64() })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

async fn cleanup(rt: &Engine, prefix: &str) {
    let mut sel = Labels::new();
    sel.insert(BENCH_LABEL.into(), prefix.into());
    for c in rt.list(&sel).await.unwrap_or_default() {
        let _ = rt.remove(&c.id).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let interrupt = Interrupt::install("docker_bench").expect("signal handlers");
    let status = interrupt.guard(bench(&interrupt)).await;
    std::process::exit(status)
}

/// The whole benchmark; returns the exit status.
async fn bench(interrupt: &Interrupt) -> i32 {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
    let rt = interrupt.track(DockerRuntime::connect(DockerRuntimeOptions::default()).expect("docker client"));
    if let Err(e) = rt.inner().ping().await {
        eprintln!("docker_bench needs a reachable docker engine: {e}");
        return 2;
    }
    let image = fixture::ensure_test_image(rt.inner().client()).await.expect("test image");
    let run_labels = interrupt.run_labels();
    let pid = std::process::id();
    let bench = start_cluster(&rt, &format!("swbench{pid}")).await;
    let mut out = Vec::new();
    let mut failed = false;
    for n in [1usize, 10, 50] {
        let (mut svc_running, mut svc_remove, mut samples) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            let prefix = format!("swbench{pid}n{n}r{run}");
            let r = service_run(&bench, &rt, &run_labels, &image, &prefix, n).await;
            cleanup(&rt, &prefix).await;
            match r {
                Ok((up, down)) => {
                    println!("service replicas={n} run={run} create_to_running={up:.3}s remove={down:.3}s");
                    svc_running.push(up);
                    svc_remove.push(down);
                }
                Err(e) => {
                    eprintln!("service replicas={n} run={run} failed: {e}");
                    failed = true;
                    break;
                }
            }
            let prefix = format!("swbench-{pid}-{n}-{run}");
            let r = one_run(&rt, &run_labels, &image, &prefix, n).await;
            cleanup(&rt, &prefix).await;
            match r {
                Ok(s) => {
                    println!(
                        "runtime replicas={n} run={run} create_to_running={:.3}s create_to_http_ready={:.3}s remove={:.3}s",
                        s.create_to_running, s.create_to_http, s.remove
                    );
                    samples.push(s);
                }
                Err(e) => {
                    eprintln!("runtime replicas={n} run={run} failed: {e}");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            break;
        }
        let med = median(svc_running.clone());
        let rt_running: Vec<f64> = samples.iter().map(|s| s.create_to_running).collect();
        let rt_med = median(rt_running.clone());
        out.push(serde_json::json!({
            "replicas": n,
            "runs": runs,
            "create_to_running_s": med,
            "starts_per_sec": n as f64 / med,
            "service_remove_s": median(svc_remove),
            "create_to_running_samples_s": svc_running,
            "runtime_create_to_running_s": rt_med,
            "runtime_starts_per_sec": n as f64 / rt_med,
            "runtime_create_to_http_ready_s": median(samples.iter().map(|s| s.create_to_http).collect()),
            "runtime_remove_s": median(samples.iter().map(|s| s.remove).collect()),
            "runtime_create_to_running_samples_s": rt_running,
        }));
    }
    bench.manager.stop();
    bench.agent.abort();
    if failed {
        return 1;
    }
    println!("{}", serde_json::Value::Array(out));
    0
}
