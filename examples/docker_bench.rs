//! Benchmark of the Docker runtime: how fast containers get from create to
//! running on the local Docker Engine.
//!
//! For 1, 10 and 50 replicas of the test workload (the self-built static
//! image of `swarm_runtime_docker::fixture`), it creates and starts all
//! containers at once through `DockerRuntime` (prepare, create, start; one
//! tokio task per replica), and measures the time from the first create to
//! the last container RUNNING (`create_to_running_s`), the containers
//! started per second (`starts_per_sec`), the time until every replica
//! answers `/health` over its address (`create_to_http_ready_s`), and the
//! time to stop (kill) and remove them all (`remove_s`). Each count runs
//! `BENCH_RUNS` times (default 3); the figures are medians.
//!
//! At this stage it drives the runtime directly, one container per
//! replica; once the orchestrator is merged it is to be switched to a
//! service create through the cluster API (service create to all tasks
//! RUNNING), so the figures will then include scheduling and dispatch.
//!
//! Run: `cargo run --release --features docker --example docker_bench`.
//! The last stdout line is a JSON array, one object per replica count.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use swarm_core::model::Labels;
use swarm_core::runtime::{ContainerState, Runtime};
use swarm_runtime_docker::{DockerRuntime, DockerRuntimeOptions, fixture};

const BENCH_LABEL: &str = "io.swarm-rs.bench-run";

struct Sample {
    create_to_running: f64,
    create_to_http: f64,
    remove: f64,
}

async fn one_run(rt: &DockerRuntime, image: &str, prefix: &str, n: usize) -> Result<Sample, String> {
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 1..=n {
        let rt = rt.clone();
        let mut cfg = fixture::workload_config(image, &format!("{prefix}-web.{i}"), &format!("{prefix}-task{i}"));
        cfg.slot = Some(i as u64);
        cfg.labels.insert(BENCH_LABEL.into(), prefix.into());
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

async fn cleanup(rt: &DockerRuntime, prefix: &str) {
    let mut sel = Labels::new();
    sel.insert(BENCH_LABEL.into(), prefix.into());
    for c in rt.list(&sel).await.unwrap_or_default() {
        let _ = rt.remove(&c.id).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
    let rt = DockerRuntime::connect(DockerRuntimeOptions::default()).expect("docker client");
    if let Err(e) = rt.ping().await {
        eprintln!("docker_bench needs a reachable docker engine: {e}");
        std::process::exit(2);
    }
    let image = fixture::ensure_test_image(rt.client()).await.expect("test image");
    let mut out = Vec::new();
    for n in [1usize, 10, 50] {
        let mut samples = Vec::new();
        for run in 0..runs {
            let prefix = format!("swbench-{}-{n}-{run}", std::process::id());
            let r = one_run(&rt, &image, &prefix, n).await;
            cleanup(&rt, &prefix).await;
            match r {
                Ok(s) => {
                    println!(
                        "replicas={n} run={run} create_to_running={:.3}s create_to_http_ready={:.3}s remove={:.3}s",
                        s.create_to_running, s.create_to_http, s.remove
                    );
                    samples.push(s);
                }
                Err(e) => {
                    eprintln!("replicas={n} run={run} failed: {e}");
                    std::process::exit(1);
                }
            }
        }
        let running: Vec<f64> = samples.iter().map(|s| s.create_to_running).collect();
        let med = median(running.clone());
        out.push(serde_json::json!({
            "replicas": n,
            "runs": runs,
            "create_to_running_s": med,
            "starts_per_sec": n as f64 / med,
            "create_to_http_ready_s": median(samples.iter().map(|s| s.create_to_http).collect()),
            "remove_s": median(samples.iter().map(|s| s.remove).collect()),
            "create_to_running_samples_s": running,
        }));
    }
    println!("{}", serde_json::Value::Array(out));
}
