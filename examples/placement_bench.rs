//! The placement benchmark: runs each scheduler on the same nodes and tasks
//! and compares speed and placement quality.
//!
//! ```text
//! cargo run --release --example placement_bench -- --nodes 10000 --tasks 100000 \
//!     --workload uniform --schedulers spread,binpack,most-allocated,least-allocated
//! cargo run --release --example placement_bench -- --trace-nodes nodes.csv --trace-tasks tasks.csv
//! ```
//!
//! Options: `--nodes N` (default 1000), `--tasks M` (default 10000),
//! `--workload NAME` (uniform, heavy-tailed, many-small, few-huge,
//! mixed-nodes, zoned; default uniform), `--schedulers a,b` (default all:
//! spread, binpack, most-allocated, least-allocated), `--seed S` (default
//! 1), `--repeat R` (time R runs, report the median; default 1),
//! `--trace-nodes FILE` / `--trace-tasks FILE` (CSV traces replacing the
//! generated nodes / tasks; formats in docs/swarm-sched.md).
//!
//! Prints a table, then one JSON array as the last line: per scheduler
//! `name`, `placements_per_sec` (tasks placed / wall seconds in
//! `schedule`, median run), `cpu_ms` (this thread's CPU time in that run,
//! Linux only: robust to a busy machine), `nodes_used`, `lower_bound`, `unschedulable`, `max_skew`
//! (`{"node": .., "zone": ..}`), `fragmentation`, plus the inputs.

use std::time::{Duration, Instant};
use swarm::sched::Pipeline;
use swarm::sched::workload::{Workload, WorkloadKind, measure, parse_nodes_csv, parse_tasks_csv};
use swarm::scheduler::{Scheduler, TaskRequest};

struct Args {
    nodes: usize,
    tasks: usize,
    workload: WorkloadKind,
    schedulers: Vec<String>,
    seed: u64,
    repeat: usize,
    trace_nodes: Option<String>,
    trace_tasks: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        nodes: 1000,
        tasks: 10_000,
        workload: WorkloadKind::Uniform,
        schedulers: Pipeline::NAMES.iter().map(|s| s.to_string()).collect(),
        seed: 1,
        repeat: 1,
        trace_nodes: None,
        trace_tasks: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|_| format!("{flag}: {v:?} is not a non-negative integer"));
        match flag.as_str() {
            "--nodes" => a.nodes = num(value()?)? as usize,
            "--tasks" => a.tasks = num(value()?)? as usize,
            "--seed" => a.seed = num(value()?)?,
            "--repeat" => a.repeat = (num(value()?)? as usize).max(1),
            "--workload" => a.workload = value()?.parse().map_err(|e| format!("--workload: {e}"))?,
            "--schedulers" => a.schedulers = value()?.split(',').map(|s| s.trim().to_string()).collect(),
            "--trace-nodes" => a.trace_nodes = Some(value()?),
            "--trace-tasks" => a.trace_tasks = Some(value()?),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(a)
}

fn load() -> Result<(Args, Workload), String> {
    let args = parse_args()?;
    let mut w = Workload::generate(args.workload, args.nodes, args.tasks, args.seed);
    let read = |path: &str| std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"));
    if let Some(p) = &args.trace_nodes {
        w.view.nodes = parse_nodes_csv(&read(p)?).map_err(|e| format!("{p}: {e}"))?;
    }
    if let Some(p) = &args.trace_tasks {
        w.tasks = parse_tasks_csv(&read(p)?).map_err(|e| format!("{p}: {e}"))?;
    }
    for name in &args.schedulers {
        Pipeline::by_name(name).map_err(|e| e.to_string())?;
    }
    Ok((args, w))
}

/// CPU time of this thread so far (Linux: /proc/thread-self/schedstat, in
/// ns); `None` elsewhere. Robust to other processes on a shared machine,
/// unlike wall time.
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok().map(Duration::from_nanos)
}

fn main() {
    let (args, w) = match load() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("placement_bench: {e}");
            eprintln!(
                "usage: placement_bench [--nodes N] [--tasks M] [--workload NAME] [--schedulers a,b] [--seed S] [--repeat R] [--trace-nodes nodes.csv] [--trace-tasks tasks.csv]"
            );
            std::process::exit(2);
        }
    };
    let source = match (&args.trace_nodes, &args.trace_tasks) {
        (None, None) => args.workload.name().to_string(),
        (n, t) => format!(
            "trace(nodes={}, tasks={})",
            n.as_deref().unwrap_or("generated"),
            t.as_deref().unwrap_or("generated")
        ),
    };
    println!("workload {source}: {} nodes, {} tasks, seed {}", w.view.nodes.len(), w.tasks.len(), args.seed);
    println!(
        "{:<16} {:>12} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7}",
        "scheduler", "placed/s", "wall ms", "cpu ms", "used", "lower", "unsched", "skew/node", "skew/zone", "frag"
    );
    let mut rows = Vec::new();
    for name in &args.schedulers {
        let Ok(mut s) = Pipeline::by_name(name) else { continue }; // checked in load()
        let mut times: Vec<(Duration, Option<Duration>)> = Vec::new();
        let mut decisions = Vec::new();
        for _ in 0..args.repeat {
            let batch: &[TaskRequest] = &w.tasks;
            let (start, cpu) = (Instant::now(), thread_cpu());
            decisions = s.schedule(&w.view, batch);
            let cpu = cpu.zip(thread_cpu()).map(|(a, b)| b.saturating_sub(a));
            times.push((start.elapsed(), cpu));
        }
        times.sort();
        let elapsed = times[times.len() / 2].0.as_secs_f64();
        let mut cpus: Vec<Duration> = times.iter().filter_map(|t| t.1).collect();
        cpus.sort();
        let cpu_ms = cpus.get(cpus.len() / 2).map(|c| c.as_secs_f64() * 1e3);
        let m = measure(&w.view, &w.tasks, &decisions);
        let per_sec = if elapsed > 0.0 { m.placed as f64 / elapsed } else { 0.0 };
        let zone = m.max_skew_zone.map_or("-".to_string(), |z| z.to_string());
        println!(
            "{:<16} {:>12.0} {:>10.1} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7.3}",
            name,
            per_sec,
            elapsed * 1e3,
            cpu_ms.map_or("-".to_string(), |c| format!("{c:.1}")),
            m.nodes_used,
            m.lower_bound,
            m.unschedulable,
            m.max_skew_node,
            zone,
            m.fragmentation
        );
        rows.push(serde_json::json!({
            "name": name,
            "workload": source,
            "nodes": w.view.nodes.len(),
            "tasks": w.tasks.len(),
            "seed": args.seed,
            "elapsed_ms": elapsed * 1e3,
            "cpu_ms": cpu_ms,
            "placed": m.placed,
            "placements_per_sec": per_sec,
            "nodes_used": m.nodes_used,
            "lower_bound": m.lower_bound,
            "unschedulable": m.unschedulable,
            "max_skew": { "node": m.max_skew_node, "zone": m.max_skew_zone },
            "fragmentation": m.fragmentation,
        }));
    }
    println!("{}", serde_json::Value::Array(rows));
}
