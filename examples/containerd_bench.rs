//! Benchmark of the containerd runtime: time from the first `create` to
//! every task running, for 1, 10 and 50 tasks created and started
//! concurrently (as an agent does when a service scales up), each size run
//! three times (median reported). Uses the self-built busybox image
//! (imported with `ctr`, no registry) in namespace `swarm-rs-bench`.
//!
//! `cargo run --release --features containerd --example containerd_bench`
//!
//! Prints one JSON object as the last line: `replicas`,
//! `create_to_running_s` (medians) and `starts_per_sec` (arrays, one entry
//! per size), plus every run's times and the median over runs of the mean
//! per-task `create` and `start` latencies.
//!
//! Ctrl-C (or SIGTERM) removes the containers of the run and exits with
//! 130 (143); see `support::interrupt`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use support::interrupt::Interrupt;
use support::tracked::Tracked;
use swarm_core::runtime::{ContainerConfig, ContainerState, Runtime, RuntimeError};
use swarm_runtime_containerd::fixture::import_busybox;
use swarm_runtime_containerd::{ContainerdConfig, ContainerdRuntime};
use tokio::task::JoinSet;

/// containerd, through the run's tracking (see `support::tracked`).
type Engine = Tracked<ContainerdRuntime>;

const NS: &str = "swarm-rs-bench";
const IMAGE: &str = "swarm-ctd-bench/busybox:1";
const SIZES: [usize; 3] = [1, 10, 50];
const RUNS: usize = 3;

/// Task `i` of the run (named after the run, so its container id, state
/// directory and snapshot say which run they belong to).
fn config(interrupt: &Interrupt, i: usize) -> ContainerConfig {
    let mut c = ContainerConfig { name: format!("{}.{i}", interrupt.run()), ..Default::default() };
    c.spec.image = IMAGE.into();
    c.spec.command = ["httpd", "-f", "-p", "8080", "-h", "/www"].iter().map(|s| s.to_string()).collect();
    c.labels.insert("io.swarm-rs.bench".into(), "true".into());
    c.labels.extend(interrupt.run_labels());
    c
}

/// One round: (wall time to all running, mean create time, mean start time).
async fn one_round(
    rt: &Arc<Engine>,
    interrupt: &Interrupt,
    n: usize,
) -> Result<(f64, f64, f64), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..n {
        let rt = rt.clone();
        let config = config(interrupt, i);
        set.spawn(async move {
            let t = Instant::now();
            let id = rt.create(&config).await?;
            let created = t.elapsed().as_secs_f64();
            rt.start(&id).await?;
            Ok::<(String, f64, f64), RuntimeError>((id, created, t.elapsed().as_secs_f64() - created))
        });
    }
    let mut ids = Vec::new();
    let (mut create_sum, mut start_sum) = (0.0, 0.0);
    let mut first_err: Option<RuntimeError> = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok((id, c, st))) => {
                ids.push(id);
                create_sum += c;
                start_sum += st;
            }
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(e) => first_err = first_err.or(Some(RuntimeError::Engine(format!("bench task panicked: {e}")))),
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    for id in &ids {
        let s = rt.inspect(id).await?;
        if s.state != ContainerState::Running {
            first_err = first_err.or(Some(RuntimeError::Engine(format!("{id} is {:?}", s.state))));
        }
    }
    for id in &ids {
        rt.remove(id).await?;
    }
    match first_err {
        Some(e) => Err(e.into()),
        None => Ok((elapsed, create_sum / n as f64, start_sum / n as f64)),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let interrupt = Interrupt::install("containerd_bench")?;
    interrupt.guard(bench(&interrupt)).await
}

async fn bench(interrupt: &Interrupt) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = ContainerdConfig::new(NS);
    let rt = Arc::new(interrupt.track(ContainerdRuntime::connect(cfg.clone()).await?));
    import_busybox(&cfg.address, NS, IMAGE, true).await?;
    // Warm-up: the first task pays for one-off costs (bridge, logger, cgroup parents).
    one_round(&rt, interrupt, 1).await?;
    let mut medians = Vec::new();
    let mut per_run = Vec::new();
    let (mut create_means, mut start_means) = (Vec::new(), Vec::new());
    for n in SIZES {
        let (mut times, mut creates, mut starts) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let (t, c, s) = one_round(&rt, interrupt, n).await?;
            eprintln!("{n} tasks: {t:.3} s (mean create {c:.3} s, mean start {s:.3} s)");
            times.push(t);
            creates.push(c);
            starts.push(s);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        per_run.push(times.clone());
        medians.push(median(&mut times));
        create_means.push(median(&mut creates));
        start_means.push(median(&mut starts));
    }
    let rates: Vec<f64> = SIZES.iter().zip(&medians).map(|(n, t)| *n as f64 / t).collect();
    let round = |v: &[f64]| v.iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>();
    let out = serde_json::json!({
        "runtime": "containerd",
        "replicas": SIZES,
        "create_to_running_s": round(&medians),
        "starts_per_sec": round(&rates),
        "runs_s": per_run.iter().map(|r| round(r)).collect::<Vec<_>>(),
        "per_task_create_s": round(&create_means),
        "per_task_start_s": round(&start_means),
    });
    println!("{out}");
    Ok(())
}
