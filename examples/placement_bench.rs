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
//! mixed-nodes, zoned, production; default uniform), `--schedulers a,b` (default all:
//! spread, binpack, most-allocated, least-allocated), `--seed S` (default
//! 1), `--repeat R` (time R runs, report the median; default 1),
//! `--trace-nodes FILE` / `--trace-tasks FILE` (CSV traces replacing the
//! generated nodes / tasks; formats in docs/swarm-sched.md),
//! `--write-trace PREFIX` (also write the workload as `PREFIX-nodes.csv`
//! and `PREFIX-tasks.csv`, traces any version of this benchmark, or another
//! tool, can read back).
//!
//! First it runs the offline reference packer
//! (`swarm_sched::reference::first_fit_decreasing`: first-fit-decreasing
//! over the standard filters, largest nodes first; not a scheduler the
//! manager uses), as the `reference` row; every scheduler's row then
//! gives its nodes used as a ratio to the reference's (`used/ref`, JSON
//! `nodes_ratio_to_reference`, with `reference_nodes_used` and
//! `reference_unschedulable`).
//!
//! Every placement, the reference's included, is replayed through
//! swarm-core's `check_node` (constraints, platform, resources, host
//! ports, max replicas); one that fails stops the benchmark with an error.
//!
//! Prints a table, then one JSON array as the last line: per scheduler
//! `name`, `placements_per_sec` (tasks placed / wall seconds in
//! `schedule`, median run), `cpu_ms` (this thread's CPU time in that run,
//! Linux only: robust to a busy machine), `nodes_used`, `lower_bound`
//! (over the tasks this scheduler placed) and `lower_bound_by` (which
//! bound: `swarm_sched::bound`), `unschedulable`, `max_skew`
//! (`{"node": .., "zone": ..}`), `fragmentation`, plus the inputs.
//!
//! Besides `schedule`, it times building the scheduler's input from a
//! store snapshot, as the manager's scheduling pass does, in a `MemStore`
//! holding the nodes, one service per service id and every task:
//! `input_cpu_ms` / `input_elapsed_ms`, with every task pending:
//! `ClusterView::from_state` plus a `TaskRequest::from_task` per pending
//! task (the pass before `schedule`); `view_cpu_ms` / `view_elapsed_ms`,
//! with this scheduler's placement committed (placed tasks running, the
//! rest pending): `ClusterView::from_state` alone (the next pass's view,
//! every task counted on its node). Medians of `--repeat` runs. Host
//! ports are left out of the store; services are named `svc-<n>` (a trace's
//! service ids need not be DNS labels). When the store refuses a trace's
//! objects (a label it does not accept, say), these timings are skipped
//! with a note on stderr and are `null` in the JSON.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use swarm::id::ServiceId;
use swarm::model::{Placement, PlacementPreference, Service, ServiceSpec, Task, TaskState, TaskStatus};
use swarm::placement::Pipeline;
use swarm::placement::reference::first_fit_decreasing;
use swarm::placement::workload::{
    Workload, WorkloadKind, measure, nodes_csv, parse_nodes_csv, parse_tasks_csv, tasks_csv,
};
use swarm::scheduler::{ClusterView, Decision, Scheduler, TaskRequest, check_node};
use swarm::state::{State, Transaction};
use swarm::store::{MemStore, Store};

struct Args {
    nodes: usize,
    tasks: usize,
    workload: WorkloadKind,
    schedulers: Vec<String>,
    seed: u64,
    repeat: usize,
    trace_nodes: Option<String>,
    trace_tasks: Option<String>,
    write_trace: Option<String>,
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
        write_trace: None,
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
            "--write-trace" => a.write_trace = Some(value()?),
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
    if let Some(prefix) = &args.write_trace {
        for (path, text) in [
            (format!("{prefix}-nodes.csv"), nodes_csv(&w.view.nodes)),
            (format!("{prefix}-tasks.csv"), tasks_csv(&w.tasks)),
        ] {
            let text = text.map_err(|e| format!("{path}: {e}"))?;
            std::fs::write(&path, text).map_err(|e| format!("cannot write {path}: {e}"))?;
        }
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

/// `f`'s result, and its wall and thread-CPU time in ms (medians of
/// `repeat` runs, at least one).
fn timed<T>(repeat: usize, mut f: impl FnMut() -> T) -> (T, f64, Option<f64>) {
    let mut once = || {
        let (start, cpu) = (Instant::now(), thread_cpu());
        let out = f();
        let cpu = cpu.zip(thread_cpu()).map(|(a, b)| b.saturating_sub(a));
        (out, (start.elapsed(), cpu))
    };
    let (mut out, first) = once();
    let mut times = vec![first];
    for _ in 1..repeat {
        let (o, t) = once();
        out = o;
        times.push(t);
    }
    let mut walls: Vec<Duration> = times.iter().map(|t| t.0).collect();
    walls.sort();
    let mut cpus: Vec<Duration> = times.iter().filter_map(|t| t.1).collect();
    cpus.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    (out, walls.get(walls.len() / 2).map_or(0.0, ms), cpus.get(cpus.len() / 2).map(ms))
}

/// A store snapshot holding the workload: its nodes, one service per
/// service id, and every task; with `placement`, placed tasks are running
/// on their node and the others pending, else all are pending.
fn snapshot_of(w: &Workload, placement: Option<&[Decision]>) -> Result<std::sync::Arc<State>, String> {
    let mut counts: BTreeMap<&ServiceId, u64> = BTreeMap::new();
    for t in &w.tasks {
        *counts.entry(&t.service_id).or_insert(0) += 1;
    }
    let mut tx = Transaction::new();
    for n in &w.view.nodes {
        tx = tx.create(n.node.as_ref().clone());
    }
    let mut services: BTreeMap<&ServiceId, Service> = BTreeMap::new();
    for (k, (id, count)) in counts.into_iter().enumerate() {
        let s = Service {
            id: id.clone(),
            spec: ServiceSpec::replicated(format!("svc-{k}"), "nginx:1.27", count),
            ..Default::default()
        };
        tx = tx.create(s.clone());
        services.insert(id, s);
    }
    let mut slots: BTreeMap<&ServiceId, u64> = BTreeMap::new();
    for (i, req) in w.tasks.iter().enumerate() {
        let svc = &services[&req.service_id];
        let slot = slots.entry(&req.service_id).or_insert(0);
        *slot += 1;
        let mut spec = svc.spec.task_template.clone();
        spec.resources.reservations = req.reservations.clone();
        spec.placement = Placement {
            constraints: req.constraints.iter().map(|c| c.to_string()).collect(),
            preferences: req.preferences.iter().map(|p| PlacementPreference { spread: p.clone() }).collect(),
            max_replicas: req.max_replicas,
            platforms: req.platforms.clone(),
        };
        let node = match placement.and_then(|p| p.get(i)) {
            Some(Decision::Assign(n)) => Some(n.clone()),
            _ => None,
        };
        let state = if node.is_some() { TaskState::Running } else { TaskState::Pending };
        tx = tx.create(Task {
            id: req.task_id.clone(),
            service_id: req.service_id.clone(),
            service_name: svc.spec.name.clone(),
            slot: Some(*slot),
            node_id: node,
            spec,
            spec_version: svc.spec_version,
            desired_state: TaskState::Running,
            status: TaskStatus { state, ..Default::default() },
            ..Default::default()
        });
    }
    let store = MemStore::new();
    let rt = tokio::runtime::Builder::new_current_thread().build().map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async {
        store.commit(tx).await.map_err(|e| format!("building the store: {e}"))?;
        store.snapshot().await.map_err(|e| format!("store snapshot: {e}"))
    })
}

/// Placements that break a standard filter: every assignment replayed
/// through swarm-core's `check_node` in batch order (any order gives the
/// same verdict: reservations, ports and replicas only add up).
fn violations(w: &Workload, decisions: &[Decision]) -> usize {
    let mut nodes = w.view.nodes.clone();
    let pos: std::collections::HashMap<&str, usize> =
        w.view.nodes.iter().enumerate().map(|(i, n)| (n.node.id.as_str(), i)).collect();
    let mut bad = 0;
    for (t, d) in w.tasks.iter().zip(decisions) {
        if let Decision::Assign(id) = d {
            match pos.get(id.as_str()) {
                Some(&i) => {
                    bad += usize::from(check_node(&nodes[i], t).is_err());
                    nodes[i].reserve(t);
                }
                None => bad += 1,
            }
        }
    }
    bad
}

fn main() {
    if let Err(e) = run() {
        eprintln!("placement_bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let (args, w) = match load() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("placement_bench: {e}");
            eprintln!(
                "usage: placement_bench [--nodes N] [--tasks M] [--workload NAME] [--schedulers a,b] [--seed S] [--repeat R] [--trace-nodes nodes.csv] [--trace-tasks tasks.csv] [--write-trace PREFIX]"
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
    // The scheduling pass's input, every task pending: the view and one
    // request per pending task, from a store snapshot.
    let show = |c: Option<f64>| c.map_or("-".to_string(), |c| format!("{c:.1}"));
    let (mut input_wall, mut input_cpu) = (None, None);
    match snapshot_of(&w, None) {
        Err(e) => eprintln!("placement_bench: store timings skipped: {e}"),
        Ok(pending) => {
            let (requests, wall, cpu) = timed(args.repeat, || {
                let view = ClusterView::from_state(&pending, swarm::time::now());
                let requests: Result<Vec<TaskRequest>, _> = pending
                    .tasks()
                    .filter(|t| t.status.state == TaskState::Pending)
                    .map(|t| TaskRequest::from_task(t))
                    .collect();
                requests.map(|r| (view.nodes.len(), r.len()))
            });
            let (nodes, n) = requests.map_err(|e| format!("a task's constraints do not parse back: {e}"))?;
            if (nodes, n) != (w.view.nodes.len(), w.tasks.len()) {
                return Err(format!(
                    "the store's view has {nodes} nodes and {n} pending tasks, expected {} and {}",
                    w.view.nodes.len(),
                    w.tasks.len()
                ));
            }
            println!(
                "input from a store snapshot ({n} pending tasks: view + requests): {} ms cpu, {wall:.1} ms wall",
                show(cpu)
            );
            (input_wall, input_cpu) = (Some(wall), cpu);
        }
    }
    println!(
        "{:<16} {:>12} {:>10} {:>10} {:>8} {:>8} {:>8} {:<12} {:>8} {:>9} {:>9} {:>7} {:>9}",
        "scheduler",
        "placed/s",
        "wall ms",
        "cpu ms",
        "used",
        "used/ref",
        "lower",
        "bound by",
        "unsched",
        "skew/node",
        "skew/zone",
        "frag",
        "view ms"
    );
    let mut rows = Vec::new();
    // The reference packer: offline first-fit-decreasing, same filters.
    let (reference, ref_wall, ref_cpu) = timed(args.repeat, || first_fit_decreasing(&w.view, &w.tasks));
    let r = measure(&w.view, &w.tasks, &reference);
    let bad = violations(&w, &reference);
    if bad > 0 {
        return Err(format!("the reference packer broke a standard filter in {bad} placements"));
    }
    let ref_per_sec = if ref_wall > 0.0 { r.placed as f64 * 1e3 / ref_wall } else { 0.0 };
    println!(
        "{:<16} {:>12.0} {:>10.1} {:>10} {:>8} {:>8} {:>8} {:<12} {:>8} {:>9} {:>9} {:>7.3} {:>9}",
        "reference (ffd)",
        ref_per_sec,
        ref_wall,
        show(ref_cpu),
        r.nodes_used,
        "1.000",
        r.lower_bound.nodes,
        r.lower_bound.by.short(),
        r.unschedulable,
        r.max_skew_node,
        r.max_skew_zone.map_or("-".to_string(), |z| z.to_string()),
        r.fragmentation,
        "-"
    );
    rows.push(serde_json::json!({
        "name": "reference",
        "reference": true,
        "workload": source,
        "nodes": w.view.nodes.len(),
        "tasks": w.tasks.len(),
        "seed": args.seed,
        "elapsed_ms": ref_wall,
        "cpu_ms": ref_cpu,
        "placed": r.placed,
        "placements_per_sec": ref_per_sec,
        "nodes_used": r.nodes_used,
        "nodes_ratio_to_reference": 1.0,
        "lower_bound": r.lower_bound.nodes,
        "lower_bound_by": r.lower_bound.by.to_string(),
        "unschedulable": r.unschedulable,
        "max_skew": { "node": r.max_skew_node, "zone": r.max_skew_zone },
        "fragmentation": r.fragmentation,
    }));
    let ratio = |used: usize| if r.nodes_used > 0 { used as f64 / r.nodes_used as f64 } else { f64::NAN };
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
        let bad = violations(&w, &decisions);
        if bad > 0 {
            return Err(format!("{name}: {bad} placements break a standard filter (check_node)"));
        }
        // The next pass's view: this placement committed, from a snapshot.
        let (mut view_wall, mut view_cpu) = (None, None);
        if let (Some(_), Ok(placed)) = (input_wall, snapshot_of(&w, Some(&decisions))) {
            let (view, wall, cpu) = timed(args.repeat, || ClusterView::from_state(&placed, swarm::time::now()));
            let counted: usize = view.nodes.iter().map(|n| n.total_tasks as usize).sum();
            if counted != m.placed {
                return Err(format!(
                    "{name}: the store's view counts {counted} tasks on nodes, {} were placed",
                    m.placed
                ));
            }
            (view_wall, view_cpu) = (Some(wall), cpu);
        }
        let per_sec = if elapsed > 0.0 { m.placed as f64 / elapsed } else { 0.0 };
        let zone = m.max_skew_zone.map_or("-".to_string(), |z| z.to_string());
        println!(
            "{:<16} {:>12.0} {:>10.1} {:>10} {:>8} {:>8.3} {:>8} {:<12} {:>8} {:>9} {:>9} {:>7.3} {:>9}",
            name,
            per_sec,
            elapsed * 1e3,
            show(cpu_ms),
            m.nodes_used,
            ratio(m.nodes_used),
            m.lower_bound.nodes,
            m.lower_bound.by.short(),
            m.unschedulable,
            m.max_skew_node,
            zone,
            m.fragmentation,
            show(view_cpu)
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
            "nodes_ratio_to_reference": ratio(m.nodes_used),
            "reference_nodes_used": r.nodes_used,
            "reference_unschedulable": r.unschedulable,
            "lower_bound": m.lower_bound.nodes,
            "lower_bound_by": m.lower_bound.by.to_string(),
            "unschedulable": m.unschedulable,
            "max_skew": { "node": m.max_skew_node, "zone": m.max_skew_zone },
            "fragmentation": m.fragmentation,
            "input_cpu_ms": input_cpu,
            "input_elapsed_ms": input_wall,
            "view_cpu_ms": view_cpu,
            "view_elapsed_ms": view_wall,
        }));
    }
    println!(
        "every placement above passes check_node (constraints, platform, resources, host ports, max replicas), replayed; used/ref = nodes used / the reference packer's (offline first-fit-decreasing, not a scheduler); lower = a lower bound on the nodes any valid placement of the tasks that scheduler placed uses (bound by: which one; docs/swarm-sched.md); view ms = ClusterView::from_state on a snapshot with that placement (cpu)"
    );
    println!("{}", serde_json::Value::Array(rows));
    Ok(())
}
