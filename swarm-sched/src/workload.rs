//! Placement workloads and metrics: what the placement benchmark
//! (`examples/placement_bench.rs`), the criterion bench and the property
//! tests feed the schedulers, and how they judge the result.
//!
//! - [`Workload::generate`]: seeded built-in workloads ([`WorkloadKind`]).
//! - [`parse_nodes_csv`] / [`parse_tasks_csv`]: bring your own trace (the
//!   formats are documented in docs/swarm-sched.md and on the functions).
//! - [`measure`]: nodes used, the lower bound ([`crate::bound`]), skew,
//!   fragmentation.
//!
//! ```
//! use swarm_core::scheduler::Scheduler;
//! use swarm_sched::workload::{Workload, WorkloadKind, measure};
//! use swarm_sched::Pipeline;
//! let w = Workload::generate(WorkloadKind::Uniform, 50, 400, 7);
//! let decisions = Pipeline::binpack().schedule(&w.view, &w.tasks);
//! let m = measure(&w.view, &w.tasks, &decisions);
//! assert_eq!(m.unschedulable, 0);
//! assert!(m.nodes_used >= m.lower_bound.nodes);
//! ```

use crate::batch;
use crate::bound::{LowerBound, lower_bound};
use crate::filter::{Filter, standard_filters};
use crate::index::{NodeIndex, NodeSet};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use swarm_core::constraint::Constraint;
use swarm_core::id::{IdGen, ServiceId};
use swarm_core::model::{Availability, Node, NodeRole, Protocol, Resources};
use swarm_core::scheduler::{ClusterView, Decision, Explanation, NodeInfo, TaskRequest};
use swarm_core::validate::validate_node;

const CPU: u64 = 1_000_000_000;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The built-in workloads of the placement benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    /// Identical nodes (8 CPUs, 32 GiB, 3 zones, 10% with an SSD);
    /// services of 100 tasks of 0.25-1 CPU and 0.5-2 GiB; a quarter of the
    /// services constrained to a zone, a tenth to SSD nodes.
    Uniform,
    /// Uniform nodes; task sizes drawn from a Pareto distribution (most
    /// small, a few near a whole node).
    HeavyTailed,
    /// Uniform nodes; services of 1-5 small tasks.
    ManySmall,
    /// Uniform nodes; four services share all the tasks, one of them with
    /// at most 4 tasks per node.
    FewHuge,
    /// Nodes of 4, 8 and 32 CPUs (16, 32, 128 GiB) in a 4:4:2 mix; tasks as
    /// in `uniform`.
    MixedNodes,
    /// Five zones of uneven size, two racks each; every service spreads
    /// over `node.labels.zone`, half of them then over `node.labels.rack`.
    Zoned,
    /// Shaped like published production traces: machines of 8, 16 and 32
    /// CPUs (4 GiB per CPU) in a 5:3:2 mix; every service draws its own
    /// task size from a continuous heavy-tailed distribution and its
    /// replica count from a Zipf distribution; some services constrained
    /// to a zone or to SSD nodes, some at most one task per node. See
    /// [`Workload::generate`] for the distributions.
    Production,
}

impl WorkloadKind {
    /// Every workload, in the order of their names.
    pub const ALL: [WorkloadKind; 7] = [
        WorkloadKind::Uniform,
        WorkloadKind::HeavyTailed,
        WorkloadKind::ManySmall,
        WorkloadKind::FewHuge,
        WorkloadKind::MixedNodes,
        WorkloadKind::Zoned,
        WorkloadKind::Production,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Uniform => "uniform",
            WorkloadKind::HeavyTailed => "heavy-tailed",
            WorkloadKind::ManySmall => "many-small",
            WorkloadKind::FewHuge => "few-huge",
            WorkloadKind::MixedNodes => "mixed-nodes",
            WorkloadKind::Zoned => "zoned",
            WorkloadKind::Production => "production",
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a workload name or a trace could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    /// An unknown workload name.
    #[error(
        "unknown workload {0:?}: expected one of uniform, heavy-tailed, many-small, few-huge, mixed-nodes, zoned, production"
    )]
    UnknownWorkload(String),
    /// A workload the trace format cannot hold (see [`nodes_csv`],
    /// [`tasks_csv`]).
    #[error("cannot write as a trace: {0}")]
    Unwritable(String),
    /// A trace line that does not parse.
    #[error("{file} line {line}: {message}")]
    Trace {
        /// "nodes.csv" or "tasks.csv" (the kind of trace).
        file: &'static str,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

impl FromStr for WorkloadKind {
    type Err = WorkloadError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkloadKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| WorkloadError::UnknownWorkload(s.into()))
    }
}

/// Nodes and the tasks to place on them.
#[derive(Clone, Debug, Default)]
pub struct Workload {
    /// The cluster, nothing placed yet.
    pub view: ClusterView,
    /// The tasks, in submission order (services contiguous).
    pub tasks: Vec<TaskRequest>,
}

struct Rng(IdGen);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// The `production` workload's parameters (see [`Workload::generate`]).
pub mod production {
    /// Machine sizes in CPUs, and how many in ten have each.
    pub const MACHINES: [(u64, u64); 3] = [(8, 5), (16, 3), (32, 2)];
    /// Memory per CPU of every machine, GiB.
    pub const GIB_PER_CPU: u64 = 4;
    /// Share of machines with `disk=ssd`.
    pub const SSD_SHARE: f64 = 0.1;
    /// Task CPU: Pareto with this shape...
    pub const CPU_ALPHA: f64 = 1.5;
    /// ...from this many CPUs (mean about 0.55 CPU once capped)...
    pub const CPU_MIN: f64 = 0.2;
    /// ...capped here (a task always fits an empty machine).
    pub const CPU_MAX: f64 = 6.0;
    /// Task memory: CPUs x 4 GiB x 2^u, u uniform in [-1.5, 1.5], clamped
    /// to [64 MiB, 24 GiB].
    pub const MEM_SPREAD_LOG2: f64 = 1.5;
    /// Replicas per service: Zipf with this exponent over 1..=REPLICAS_MAX.
    pub const REPLICAS_ZIPF: f64 = 1.8;
    /// Largest replica count.
    pub const REPLICAS_MAX: u64 = 1000;
    /// Share of services constrained to one zone (`node.labels.zone==zone-k`).
    pub const ZONE_SHARE: f64 = 0.15;
    /// Share of services constrained to SSD nodes (`node.labels.disk==ssd`).
    pub const SSD_SERVICE_SHARE: f64 = 0.05;
    /// Share of services with at most one task per node (`max_replicas` 1).
    pub const MAX_ONE_SHARE: f64 = 0.1;
}

/// Cumulative Zipf weights `k^-s` for k in 1..=max, normalised to 1.
fn zipf_cdf(s: f64, max: u64) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=max)
        .map(|k| {
            acc += (k as f64).powf(-s);
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    cdf
}

/// One `production` service: replicas and the shared task template.
fn production_service(rng: &mut Rng, zipf: &[f64], service: usize) -> (usize, TaskRequest) {
    use production::*;
    let u = rng.unit();
    let replicas = zipf.partition_point(|c| *c < u) + 1;
    let cpus = (CPU_MIN * (1.0 - rng.unit()).powf(-1.0 / CPU_ALPHA)).min(CPU_MAX);
    let nano = ((cpus * 1000.0).round() as u64).max(1) * (CPU / 1000); // whole milli-CPUs
    let factor = (rng.unit() * 2.0 * MEM_SPREAD_LOG2 - MEM_SPREAD_LOG2).exp2();
    let mem = (cpus * (GIB_PER_CPU * GIB) as f64 * factor).clamp((64 * MIB) as f64, (24 * GIB) as f64);
    let mem = (mem / MIB as f64).round() as u64 * MIB; // whole MiB
    let mut t = task(service, 0, &Resources::new(nano, mem));
    if rng.chance(ZONE_SHARE) {
        t.constraints.extend(format!("node.labels.zone==zone-{}", rng.below(3)).parse::<Constraint>().ok());
    } else if rng.chance(SSD_SERVICE_SHARE / (1.0 - ZONE_SHARE)) {
        t.constraints.extend("node.labels.disk==ssd".parse::<Constraint>().ok());
    }
    if rng.chance(MAX_ONE_SHARE) {
        t.max_replicas = 1;
    }
    (replicas, t)
}

fn node(i: usize, cpus: u64, mem_gib: u64) -> Node {
    Node::ready(format!("node-{i:06}"), format!("host-{i}"), Resources::new(cpus * CPU, mem_gib * GIB))
}

fn task(service: usize, i: usize, reservations: &Resources) -> TaskRequest {
    TaskRequest {
        task_id: format!("svc-{service:06}.{i}").into(),
        service_id: format!("svc-{service:06}").into(),
        spec_version: 1,
        reservations: reservations.clone(),
        ..Default::default()
    }
}

impl Workload {
    /// A built-in workload of `nodes` nodes and `tasks` tasks; same seed,
    /// same workload.
    ///
    /// `production` ([`production`] holds the parameters): each machine
    /// has 8, 16 or 32 CPUs (probabilities 0.5, 0.3, 0.2) and 4 GiB per
    /// CPU, a zone drawn from three and `disk=ssd` with probability 0.1.
    /// Services follow one another until `tasks` are drawn (the last one
    /// cut short); each draws its replica count from Zipf(1.8) over
    /// 1..=1000 (mean about 8) and one task size for all its replicas:
    /// CPUs from a Pareto distribution (shape 1.5, from 0.2 CPU, capped at
    /// 6), in whole milli-CPUs; memory the CPUs times 4 GiB times 2^u (u
    /// uniform in [-1.5, 1.5]), clamped to [64 MiB, 24 GiB], in whole MiB.
    /// So nearly every service has its own shape. 15% of the services are
    /// constrained to one zone, 5% to SSD nodes, and 10% allow at most one
    /// task per node. The tasks ask for about a third of the cluster's CPU.
    pub fn generate(kind: WorkloadKind, nodes: usize, tasks: usize, seed: u64) -> Workload {
        let mut rng = Rng(IdGen::seeded(seed));
        let mut ns: Vec<Node> = Vec::with_capacity(nodes);
        for i in 0..nodes {
            let mut n = match kind {
                WorkloadKind::Production => {
                    let mut pick = rng.below(10);
                    let mut cpus = production::MACHINES[0].0;
                    for (c, tenths) in production::MACHINES {
                        if pick < tenths {
                            cpus = c;
                            break;
                        }
                        pick -= tenths;
                    }
                    node(i, cpus, cpus * production::GIB_PER_CPU)
                }
                WorkloadKind::MixedNodes => match i % 10 {
                    0..=3 => node(i, 4, 16),
                    4..=7 => node(i, 8, 32),
                    _ => node(i, 32, 128),
                },
                _ => node(i, 8, 32),
            };
            let labels = &mut n.spec.labels;
            if kind == WorkloadKind::Zoned {
                // Zones of 30%, 30%, 20%, 10%, 10%.
                let z = match i % 10 {
                    0..=2 => 0,
                    3..=5 => 1,
                    6 | 7 => 2,
                    8 => 3,
                    _ => 4,
                };
                labels.insert("zone".into(), format!("zone-{z}"));
                labels.insert("rack".into(), format!("rack-{}", (i / 10) % 2));
            } else if kind == WorkloadKind::Production {
                labels.insert("zone".into(), format!("zone-{}", rng.below(3)));
            } else {
                labels.insert("zone".into(), format!("zone-{}", i % 3));
            }
            if kind == WorkloadKind::Production {
                if rng.chance(production::SSD_SHARE) {
                    labels.insert("disk".into(), "ssd".into());
                }
            } else if rng.below(10) == 0 {
                labels.insert("disk".into(), "ssd".into());
            }
            ns.push(n);
        }
        let mut out = Vec::with_capacity(tasks);
        let sizes_cpu = [CPU / 4, CPU / 2, CPU];
        let sizes_mem = [GIB / 2, GIB, 2 * GIB];
        let mut service = 0;
        let zipf = if kind == WorkloadKind::Production {
            zipf_cdf(production::REPLICAS_ZIPF, production::REPLICAS_MAX)
        } else {
            Vec::new()
        };
        while kind == WorkloadKind::Production && out.len() < tasks {
            let (count, proto) = production_service(&mut rng, &zipf, service);
            for i in 0..count.min(tasks - out.len()) {
                out.push(TaskRequest { task_id: format!("svc-{service:06}.{i}").into(), ..proto.clone() });
            }
            service += 1;
        }
        while out.len() < tasks {
            let left = tasks - out.len();
            let (count, res) = match kind {
                WorkloadKind::ManySmall => {
                    let r = Resources::new(
                        rng.pick(&[CPU / 10, CPU / 4, CPU / 2]),
                        rng.pick(&[128 * MIB, 256 * MIB, GIB / 2]),
                    );
                    (1 + rng.below(5) as usize, r)
                }
                WorkloadKind::FewHuge => {
                    (tasks.div_ceil(4), Resources::new(rng.pick(&sizes_cpu), rng.pick(&sizes_mem)))
                }
                WorkloadKind::HeavyTailed => {
                    // Pareto(alpha 1.5) from 0.1 CPU, capped at 7 CPUs.
                    let x = 0.1 * (1.0 - rng.unit()).powf(-1.0 / 1.5);
                    let cpu = (x.min(7.0) * CPU as f64) as u64;
                    let mem = (cpu as f64 / CPU as f64 * 4.0 * GIB as f64 * (0.5 + rng.unit())) as u64;
                    (100, Resources::new(cpu.max(CPU / 100), mem.clamp(64 * MIB, 30 * GIB)))
                }
                _ => (100, Resources::new(rng.pick(&sizes_cpu), rng.pick(&sizes_mem))),
            };
            let mut proto = task(service, 0, &res);
            match kind {
                WorkloadKind::Zoned => {
                    proto.preferences.push("node.labels.zone".into());
                    if service % 2 == 1 {
                        proto.preferences.push("node.labels.rack".into());
                    }
                }
                WorkloadKind::FewHuge if service == 1 => proto.max_replicas = 4,
                _ => {}
            }
            if kind != WorkloadKind::Zoned {
                let c = match service % 20 {
                    1 | 5 | 9 | 13 => Some(format!("node.labels.zone==zone-{}", service % 3)),
                    3 | 17 => Some("node.labels.disk==ssd".into()),
                    7 => Some("node.role!=manager".into()),
                    _ => None,
                };
                proto.constraints.extend(c.and_then(|c| c.parse::<Constraint>().ok()));
            }
            for i in 0..count.min(left) {
                out.push(TaskRequest { task_id: format!("svc-{service:06}.{i}").into(), ..proto.clone() });
            }
            service += 1;
        }
        Workload {
            view: ClusterView { nodes: ns.into_iter().map(|n| NodeInfo::new(Arc::new(n))).collect() },
            tasks: out,
        }
    }
}

/// One CSV line: its number and its non-empty fields by column name.
type CsvRow<'a> = (usize, HashMap<&'a str, &'a str>);

/// Splits a CSV text into (line number, header-keyed fields) rows. No
/// quoting: fields must not contain commas. Blank lines and lines starting
/// with `#` are skipped.
fn csv_rows<'a>(
    file: &'static str,
    text: &'a str,
    known: &[&str],
    required: &[&str],
) -> Result<Vec<CsvRow<'a>>, WorkloadError> {
    let err = |line, message: String| WorkloadError::Trace { file, line, message };
    let mut lines =
        text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let Some((hline, header)) = lines.next() else { return Err(err(1, "empty file: expected a header line".into())) };
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    for c in &cols {
        if !known.contains(c) {
            return Err(err(hline, format!("unknown column {c:?}: expected some of {}", known.join(", "))));
        }
    }
    for r in required {
        if !cols.contains(r) {
            return Err(err(hline, format!("missing column {r:?}")));
        }
    }
    let mut rows = Vec::new();
    for (n, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() > cols.len() {
            return Err(err(n, format!("{} fields, but the header has {} columns", fields.len(), cols.len())));
        }
        rows.push((n, cols.iter().copied().zip(fields).filter(|(_, v)| !v.is_empty()).collect()));
    }
    Ok(rows)
}

/// Most tasks a tasks trace may describe (the sum of its `count`s): ten
/// times the benchmark's headline size (100,000 tasks). A larger trace is
/// refused at the line that crosses the limit, before anything is built.
pub const MAX_TRACE_TASKS: u64 = 1_000_000;

/// Decimal CPUs to nano-CPUs; refuses what a u64 cannot hold.
fn parse_cpus(v: &str) -> Result<u64, String> {
    // 2^64: the first nano-CPU count a u64 cannot hold (exact in f64).
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => {
            let nano = (x * CPU as f64).round();
            if nano < LIMIT {
                Ok(nano as u64)
            } else {
                Err(format!("cpus {v:?} is too large (at most {} CPUs)", u64::MAX / CPU))
            }
        }
        _ => Err(format!("cpus {v:?} is not a non-negative number")),
    }
}

/// Integer MiB to bytes; refuses what a u64 cannot hold.
fn parse_mib(v: &str) -> Result<u64, String> {
    parse_u64("memory_mib", v)?
        .checked_mul(MIB)
        .ok_or_else(|| format!("memory_mib {v:?} is too large (at most {} MiB)", u64::MAX / MIB))
}

fn parse_u64(col: &str, v: &str) -> Result<u64, String> {
    v.parse::<u64>().map_err(|_| format!("{col} {v:?} is not a non-negative integer"))
}

fn parse_pairs<'a>(col: &str, v: &'a str) -> Result<Vec<(&'a str, &'a str)>, String> {
    v.split(';')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(a, b)| (a.trim(), b.trim()))
                .ok_or_else(|| format!("{col} entry {p:?} is not key=value"))
        })
        .collect()
}

fn parse_generic(v: &str) -> Result<BTreeMap<String, u64>, String> {
    parse_pairs("generic", v)?.into_iter().map(|(k, n)| Ok((k.to_string(), parse_u64("generic count", n)?))).collect()
}

/// Reads a nodes trace. Columns (header line first, any order):
/// `id`, `cpus` (decimal), `memory_mib` (integer) are required; optional
/// `labels` (`zone=eu;disk=ssd`), `generic` (`gpu=2`), `role`
/// (worker|manager), `availability` (active|pause|drain), `os`, `arch`.
/// Nodes are ready and sorted by id, like a [`ClusterView`]; a node a
/// store would refuse (swarm-core's `validate_node`: label keys, say) is an
/// error on its line.
pub fn parse_nodes_csv(text: &str) -> Result<Vec<NodeInfo>, WorkloadError> {
    const FILE: &str = "nodes.csv";
    let known = ["id", "cpus", "memory_mib", "labels", "generic", "role", "availability", "os", "arch"];
    let mut nodes = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (line, row) in csv_rows(FILE, text, &known, &["id", "cpus", "memory_mib"])? {
        let parsed = (|| -> Result<Node, String> {
            let id = row.get("id").ok_or("id is empty")?;
            let cpus = parse_cpus(row.get("cpus").ok_or("cpus is empty")?)?;
            let mem = parse_mib(row.get("memory_mib").ok_or("memory_mib is empty")?)?;
            let mut n = Node::ready(*id, *id, Resources::new(cpus, mem));
            if let Some(v) = row.get("labels") {
                for (k, v) in parse_pairs("labels", v)? {
                    n.spec.labels.insert(k.into(), v.into());
                }
            }
            if let Some(v) = row.get("generic") {
                n.description.resources.generic = parse_generic(v)?;
            }
            n.spec.role = match row.get("role").copied() {
                None | Some("worker") => NodeRole::Worker,
                Some("manager") => NodeRole::Manager,
                Some(o) => return Err(format!("role {o:?} is not worker or manager")),
            };
            n.spec.availability = match row.get("availability").copied() {
                None | Some("active") => Availability::Active,
                Some("pause") => Availability::Pause,
                Some("drain") => Availability::Drain,
                Some(o) => return Err(format!("availability {o:?} is not active, pause or drain")),
            };
            if let Some(os) = row.get("os") {
                n.description.platform.os = os.to_string();
            }
            if let Some(arch) = row.get("arch") {
                n.description.platform.architecture = arch.to_string();
            }
            // What a store would refuse (a label key with a space...).
            validate_node(&n).map_err(|e| e.to_string())?;
            Ok(n)
        })();
        let n = parsed.map_err(|message| WorkloadError::Trace { file: FILE, line, message })?;
        if let Some(first) = seen.insert(n.id.to_string(), line) {
            let message = format!("node id {} appears twice (first on line {first})", n.id);
            return Err(WorkloadError::Trace { file: FILE, line, message });
        }
        nodes.push(n);
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(nodes.into_iter().map(|n| NodeInfo::new(Arc::new(n))).collect())
}

/// What a tasks trace asks for so far, in checked arithmetic.
#[derive(Default)]
struct TraceTotal {
    tasks: u64,
    reservations: Resources,
}

impl TraceTotal {
    /// Adds `count` tasks reserving `r` each, or says which total would
    /// overflow (and adds nothing).
    fn add(&mut self, r: &Resources, count: u64) -> Result<(), String> {
        let over = |what: &str, unit: &str, each: u64| {
            format!("{count} tasks of {each} {unit} bring the trace's total {what} past u64::MAX {unit}")
        };
        let cpu = r
            .nano_cpus
            .checked_mul(count)
            .and_then(|x| x.checked_add(self.reservations.nano_cpus))
            .ok_or_else(|| over("cpus", "nano-CPUs", r.nano_cpus))?;
        let mem = r
            .memory_bytes
            .checked_mul(count)
            .and_then(|x| x.checked_add(self.reservations.memory_bytes))
            .ok_or_else(|| over("memory", "bytes", r.memory_bytes))?;
        let mut generic = self.reservations.generic.clone();
        for (k, v) in &r.generic {
            let sum = v
                .checked_mul(count)
                .and_then(|x| x.checked_add(generic.get(k).copied().unwrap_or(0)))
                .ok_or_else(|| over(&format!("generic {k:?}"), "units", *v))?;
            generic.insert(k.clone(), sum);
        }
        self.tasks += count;
        self.reservations = Resources { nano_cpus: cpu, memory_bytes: mem, generic };
        Ok(())
    }
}

/// Reads a tasks trace. Columns (header line first, any order): `service`,
/// `cpus` (decimal), `memory_mib` (integer) are required; optional `count`
/// (identical tasks on this row, default 1), `constraints`
/// (`node.labels.zone==eu;node.role!=manager`), `preferences`
/// (`node.labels.zone;node.labels.rack`), `max_replicas`, `host_ports`
/// (`8080/tcp;53/udp`), `generic` (`gpu=1`). Rows of one service with the
/// same needs are scheduled as one group.
///
/// Limits: at most [`MAX_TRACE_TASKS`] tasks in all; each value and the
/// trace's totals (CPU, memory, each generic resource, over every task)
/// must fit a u64 (nano-CPUs, bytes), so every sum over the trace's tasks
/// does. A row that breaks a limit is an error naming its line.
pub fn parse_tasks_csv(text: &str) -> Result<Vec<TaskRequest>, WorkloadError> {
    const FILE: &str = "tasks.csv";
    let known = [
        "service",
        "count",
        "cpus",
        "memory_mib",
        "constraints",
        "preferences",
        "max_replicas",
        "host_ports",
        "generic",
    ];
    let mut tasks = Vec::new();
    let mut seq: HashMap<String, usize> = HashMap::new();
    let mut total = TraceTotal::default();
    for (line, row) in csv_rows(FILE, text, &known, &["service", "cpus", "memory_mib"])? {
        let parsed = (|| -> Result<(TaskRequest, u64), String> {
            let service = row.get("service").ok_or("service is empty")?;
            let cpus = parse_cpus(row.get("cpus").ok_or("cpus is empty")?)?;
            let mem = parse_mib(row.get("memory_mib").ok_or("memory_mib is empty")?)?;
            let mut t = TaskRequest {
                service_id: ServiceId::new(*service),
                spec_version: 1,
                reservations: Resources::new(cpus, mem),
                ..Default::default()
            };
            if let Some(v) = row.get("generic") {
                t.reservations.generic = parse_generic(v)?;
            }
            if let Some(v) = row.get("constraints") {
                let list: Vec<&str> = v.split(';').filter(|c| !c.trim().is_empty()).collect();
                t.constraints = Constraint::parse_all(&list).map_err(|e| e.to_string())?;
            }
            if let Some(v) = row.get("preferences") {
                t.preferences = v.split(';').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect();
            }
            if let Some(v) = row.get("max_replicas") {
                t.max_replicas = parse_u64("max_replicas", v)?;
            }
            if let Some(v) = row.get("host_ports") {
                for p in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                    let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                    let proto = match proto {
                        "tcp" => Protocol::Tcp,
                        "udp" => Protocol::Udp,
                        o => return Err(format!("host port {p:?}: protocol {o:?} is not tcp or udp")),
                    };
                    match port.parse::<u32>() {
                        Ok(n) if (1..=65535).contains(&n) => t.host_ports.push((proto, n)),
                        _ => return Err(format!("host port {p:?}: {port:?} is not a port (1-65535)")),
                    }
                }
            }
            let count = match row.get("count") {
                Some(v) => parse_u64("count", v)?,
                None => 1,
            };
            if count > MAX_TRACE_TASKS - total.tasks {
                return Err(format!(
                    "count {count} brings the trace past {MAX_TRACE_TASKS} tasks (the limit; {} before this line)",
                    total.tasks
                ));
            }
            total.add(&t.reservations, count)?;
            Ok((t, count))
        })();
        let (t, count) = parsed.map_err(|message| WorkloadError::Trace { file: FILE, line, message })?;
        let next = seq.entry(t.service_id.to_string()).or_insert(0);
        for _ in 0..count {
            tasks.push(TaskRequest { task_id: format!("{}.{}", t.service_id, *next).into(), ..t.clone() });
            *next += 1;
        }
    }
    Ok(tasks)
}

/// Nano-CPUs as a decimal number of CPUs, exactly.
fn cpus_text(nano: u64) -> String {
    format!("{}.{:09}", nano / CPU, nano % CPU)
}

/// Bytes in whole MiB, or which value is not.
fn mib_text(what: &str, bytes: u64) -> Result<String, WorkloadError> {
    if bytes % MIB != 0 {
        return Err(WorkloadError::Unwritable(format!("{what}: {bytes} bytes is not a whole number of MiB")));
    }
    Ok((bytes / MIB).to_string())
}

/// The nodes as a nodes trace that [`parse_nodes_csv`] reads back
/// (`id,cpus,memory_mib,labels`: ready, active, linux/amd64 workers, as
/// the built-in workloads' nodes are). Refuses what the format cannot
/// say: memory that is not whole MiB, a label with `,`, `;` or `=`, or a
/// node that is not a plain ready, active linux/amd64 worker without
/// generic resources or engine labels.
pub fn nodes_csv(nodes: &[NodeInfo]) -> Result<String, WorkloadError> {
    let mut out = String::from("id,cpus,memory_mib,labels\n");
    for info in nodes {
        let n = &info.node;
        let plain = Node::ready(n.id.clone(), n.id.as_str(), n.description.resources.clone());
        let r = &n.description.resources;
        if n.spec.role != plain.spec.role
            || n.spec.availability != plain.spec.availability
            || n.status.state != plain.status.state
            || n.description.platform != plain.description.platform
            || !r.generic.is_empty()
            || !n.description.engine_labels.is_empty()
        {
            return Err(WorkloadError::Unwritable(format!("node {}: not a plain ready worker", n.id)));
        }
        let mut labels = Vec::new();
        for (k, v) in &n.spec.labels {
            if [k, v].iter().any(|x| x.contains([',', ';', '='])) {
                return Err(WorkloadError::Unwritable(format!("node {}: label {k}={v}", n.id)));
            }
            labels.push(format!("{k}={v}"));
        }
        let mem = mib_text(&format!("node {}", n.id), r.memory_bytes)?;
        out.push_str(&format!("{},{},{mem},{}\n", n.id, cpus_text(r.nano_cpus), labels.join(";")));
    }
    Ok(out)
}

/// The tasks as a tasks trace that [`parse_tasks_csv`] reads back into
/// the same requests (`<service>.<n>` task ids, spec version 1, as the
/// built-in workloads have): consecutive tasks of one service with the
/// same needs are one row with a `count`. Refuses what the format cannot
/// say: memory that is not whole MiB, generic resources, platforms, fixed
/// nodes, fields with `,` or `;`, or task ids and versions that would not
/// read back the same.
pub fn tasks_csv(tasks: &[TaskRequest]) -> Result<String, WorkloadError> {
    let mut out = String::from("service,count,cpus,memory_mib,constraints,preferences,max_replicas,host_ports\n");
    let mut seq: HashMap<&ServiceId, usize> = HashMap::new();
    let mut rows: Vec<(&TaskRequest, usize)> = Vec::new();
    for t in tasks {
        let next = seq.entry(&t.service_id).or_insert(0);
        let id = format!("{}.{}", t.service_id, *next);
        *next += 1;
        if t.task_id.as_str() != id || t.spec_version != 1 {
            return Err(WorkloadError::Unwritable(format!("task {}: expected id {id}, spec version 1", t.task_id)));
        }
        if !t.reservations.generic.is_empty() || !t.platforms.is_empty() || t.node_id.is_some() {
            return Err(WorkloadError::Unwritable(format!(
                "task {}: generic resources, platforms or a fixed node",
                t.task_id
            )));
        }
        match rows.last_mut() {
            Some((r, n)) if batch::same_shape(r, t) => *n += 1,
            _ => rows.push((t, 1)),
        }
    }
    for (t, count) in rows {
        let constraints: Vec<String> = t.constraints.iter().map(|c| c.to_string()).collect();
        let ports: Vec<String> = t
            .host_ports
            .iter()
            .map(|(p, n)| format!("{n}/{}", if *p == Protocol::Udp { "udp" } else { "tcp" }))
            .collect();
        let fields = [t.service_id.to_string(), constraints.join(";"), t.preferences.join(";")];
        if fields.iter().any(|f| f.contains(',')) || t.service_id.as_str().contains(';') {
            return Err(WorkloadError::Unwritable(format!("task {}: a field holds ',' or ';'", t.task_id)));
        }
        let mem = mib_text(&format!("task {}", t.task_id), t.reservations.memory_bytes)?;
        out.push_str(&format!(
            "{},{count},{},{mem},{},{},{},{}\n",
            fields[0],
            cpus_text(t.reservations.nano_cpus),
            fields[1],
            fields[2],
            t.max_replicas,
            ports.join(";")
        ));
    }
    Ok(out)
}

/// How good a placement is. See [`measure`].
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    /// Tasks placed.
    pub placed: usize,
    /// Tasks left unschedulable.
    pub unschedulable: usize,
    /// Nodes that received at least one task.
    pub nodes_used: usize,
    /// A lower bound on the nodes any valid placement of the *placed*
    /// tasks uses, and which bound it is (see [`crate::bound`]): never above
    /// `nodes_used` for a placement that honours the standard filters.
    pub lower_bound: LowerBound,
    /// Max over services of (max - min) tasks placed per node, over the
    /// nodes that pass the service's static filters (ready, active,
    /// constraints, platform).
    pub max_skew_node: u64,
    /// The same per value of the `zone` node label, over zones with at
    /// least one such node; `None` when no node has a zone.
    pub max_skew_zone: Option<u64>,
    /// Share of the free capacity left on schedulable nodes that cannot fit
    /// the median task (median CPU and median memory over all tasks), mean
    /// of the CPU and memory shares, 0 to 1.
    pub fragmentation: f64,
}

/// Judges `decisions` (one per task, as a scheduler returned them) on the
/// workload.
pub fn measure(view: &ClusterView, tasks: &[TaskRequest], decisions: &[Decision]) -> Metrics {
    let index = NodeIndex::new(view);
    let mut nodes = view.nodes.clone();
    let mut per_service: HashMap<&ServiceId, HashMap<usize, u64>> = HashMap::new();
    let mut rep: HashMap<&ServiceId, &TaskRequest> = HashMap::new();
    let mut used = NodeSet::empty(nodes.len());
    let mut placed = 0;
    for (t, d) in tasks.iter().zip(decisions) {
        rep.entry(&t.service_id).or_insert(t);
        if let Decision::Assign(id) = d {
            if let Some(i) = index.position(id) {
                nodes[i].reserve(t);
                used.insert(i);
                *per_service.entry(&t.service_id).or_default().entry(i).or_insert(0) += 1;
                placed += 1;
            }
        }
    }
    let schedulable: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].node.is_schedulable()).collect();

    // Skew.
    let statics: Vec<Box<dyn Filter>> = standard_filters().into_iter().filter(|f| f.is_static()).collect();
    let zones: Vec<Option<&str>> = nodes.iter().map(|n| n.node.spec.labels.get("zone").map(String::as_str)).collect();
    let mut zone_sets: BTreeMap<&str, NodeSet> = BTreeMap::new();
    for (i, z) in zones.iter().enumerate() {
        if let Some(z) = z {
            zone_sets.entry(z).or_insert_with(|| NodeSet::empty(nodes.len())).insert(i);
        }
    }
    let (mut skew_node, mut skew_zone) = (0u64, 0u64);
    for (svc, req) in &rep {
        let mut alive = NodeSet::full(nodes.len());
        let mut why = Explanation::new(nodes.len());
        for f in statics.iter().filter(|f| f.relevant(req)) {
            if !f.check_indexed(view, &index, req, &mut alive, &mut why) {
                for i in alive.clone().iter() {
                    if f.check(&nodes[i], req).is_err() {
                        alive.remove(i);
                    }
                }
            }
        }
        let eligible = alive.count();
        if eligible == 0 {
            continue;
        }
        // Only the nodes the service got tasks on need a look: every other
        // eligible node counts 0.
        let placed_on: Vec<(usize, u64)> = per_service
            .get(svc)
            .into_iter()
            .flatten()
            .filter(|(i, _)| alive.contains(**i))
            .map(|(i, c)| (*i, *c))
            .collect();
        let hi = placed_on.iter().map(|(_, c)| *c).max().unwrap_or(0);
        let lo = if placed_on.len() < eligible { 0 } else { placed_on.iter().map(|(_, c)| *c).min().unwrap_or(0) };
        skew_node = skew_node.max(hi - lo);
        let mut by_zone: BTreeMap<&str, u64> = zone_sets
            .iter()
            .filter(|(_, set)| alive.count_minus(&set.complement()) > 0)
            .map(|(z, _)| (*z, 0))
            .collect();
        for (i, c) in &placed_on {
            if let Some(total) = zones[*i].and_then(|z| by_zone.get_mut(z)) {
                *total += c;
            }
        }
        if let (Some(zlo), Some(zhi)) = (by_zone.values().min(), by_zone.values().max()) {
            skew_zone = skew_zone.max(zhi - zlo);
        }
    }
    let any_zone = !zone_sets.is_empty();

    // Fragmentation.
    let median = |mut v: Vec<u64>| -> u64 {
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let med_cpu = median(tasks.iter().map(|t| t.reservations.nano_cpus).collect());
    let med_mem = median(tasks.iter().map(|t| t.reservations.memory_bytes).collect());
    let (mut free, mut stranded) = ([0f64; 2], [0f64; 2]);
    for &i in &schedulable {
        let a = &nodes[i].available;
        let f = [a.nano_cpus as f64, a.memory_bytes as f64];
        let fits = a.nano_cpus >= med_cpu && a.memory_bytes >= med_mem;
        for r in 0..2 {
            free[r] += f[r];
            if !fits {
                stranded[r] += f[r];
            }
        }
    }
    let share = |r: usize| if free[r] > 0.0 { stranded[r] / free[r] } else { 0.0 };
    Metrics {
        placed,
        unschedulable: decisions.iter().filter(|d| matches!(d, Decision::Unschedulable(_))).count(),
        nodes_used: used.count(),
        lower_bound: lower_bound(view, tasks, decisions),
        max_skew_node: skew_node,
        max_skew_zone: any_zone.then_some(skew_zone),
        fragmentation: (share(0) + share(1)) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pipeline;
    use swarm_core::scheduler::Scheduler;

    #[test]
    fn workloads_are_deterministic_and_sized() {
        for kind in WorkloadKind::ALL {
            let a = Workload::generate(kind, 40, 333, 1);
            let b = Workload::generate(kind, 40, 333, 1);
            assert_eq!(a.tasks.len(), 333, "{kind}");
            assert_eq!(a.view.nodes.len(), 40);
            assert_eq!(
                a.tasks.iter().map(|t| (&t.task_id, &t.reservations)).collect::<Vec<_>>(),
                b.tasks.iter().map(|t| (&t.task_id, &t.reservations)).collect::<Vec<_>>()
            );
            assert_eq!(kind.name().parse::<WorkloadKind>(), Ok(kind));
        }
        assert!("bogus".parse::<WorkloadKind>().is_err());
    }

    #[test]
    fn generated_workloads_write_as_traces_that_read_back() {
        for kind in [WorkloadKind::Production, WorkloadKind::FewHuge, WorkloadKind::Zoned] {
            let w = Workload::generate(kind, 60, 700, 2);
            let nodes = parse_nodes_csv(&nodes_csv(&w.view.nodes).unwrap()).unwrap();
            assert_eq!(nodes.len(), w.view.nodes.len());
            for (a, b) in nodes.iter().zip(&w.view.nodes) {
                assert_eq!(
                    (&a.node.id, &a.node.spec.labels, &a.available),
                    (&b.node.id, &b.node.spec.labels, &b.available),
                    "{kind}"
                );
            }
            let text = tasks_csv(&w.tasks).unwrap();
            assert_eq!(format!("{:?}", parse_tasks_csv(&text).unwrap()), format!("{:?}", w.tasks), "{kind}");
        }
        let mut odd = Workload::generate(WorkloadKind::Uniform, 2, 2, 1);
        odd.tasks[1].reservations.memory_bytes += 1;
        assert!(tasks_csv(&odd.tasks).unwrap_err().to_string().contains("not a whole number of MiB"));
    }

    #[test]
    fn metrics_on_a_hand_checked_placement() {
        let nodes =
            parse_nodes_csv("id,cpus,memory_mib,labels\nb,4,4096,zone=eu\na,4,4096,zone=us\nc,4,4096,zone=eu\n")
                .unwrap();
        assert_eq!(nodes[0].node.id.as_str(), "a");
        let view = ClusterView { nodes };
        let tasks = parse_tasks_csv("service,count,cpus,memory_mib\nweb,3,1.5,1024\n").unwrap();
        assert_eq!(tasks.len(), 3);
        assert_eq!(tasks[2].task_id.as_str(), "web.2");
        let d = Pipeline::binpack().schedule(&view, &tasks);
        let m = measure(&view, &tasks, &d);
        // 4.5 CPUs over 4-CPU nodes: at least 2; binpack puts 2 on a, 1 on b.
        assert_eq!(m.lower_bound.nodes, 2);
        assert_eq!(m.nodes_used, 2);
        assert_eq!(m.max_skew_node, 2);
        // zones: us 2, eu 1.
        assert_eq!(m.max_skew_zone, Some(1));
        // Median task 1.5 CPU/1 GiB: a has 1 CPU left (stranded), b 2.5, c 4.
        // CPU: 1 / 7.5; memory: 2048 / (2048 + 3072 + 4096) MiB.
        let want = (1.0 / 7.5 + 2048.0 / 9216.0) / 2.0;
        assert!((m.fragmentation - want).abs() < 1e-9, "{}", m.fragmentation);
        let s = Pipeline::spread().schedule(&view, &tasks);
        assert_eq!(measure(&view, &tasks, &s).max_skew_node, 0);
    }

    #[test]
    fn traces_report_bad_lines() {
        let e = parse_nodes_csv("id,cpus,memory_mib\nn1,four,1024\n").unwrap_err();
        assert_eq!(e.to_string(), "nodes.csv line 2: cpus \"four\" is not a non-negative number");
        let e = parse_nodes_csv("id,cpus,ram\n").unwrap_err();
        assert!(e.to_string().starts_with("nodes.csv line 1: unknown column \"ram\""), "{e}");
        let e = parse_tasks_csv("service,cpus,memory_mib,constraints\nweb,1,1,node.labels.zone=eu\n").unwrap_err();
        assert!(
            e.to_string().starts_with("tasks.csv line 2: constraint \"node.labels.zone=eu\" has no operator"),
            "{e}"
        );
        let e = parse_tasks_csv("# comment\nservice,cpus,memory_mib,host_ports\n\nweb,1,1,80/sctp\n").unwrap_err();
        assert_eq!(e.to_string(), "tasks.csv line 4: host port \"80/sctp\": protocol \"sctp\" is not tcp or udp");
        assert!(parse_tasks_csv("").is_err());
        let t = parse_tasks_csv(
            "service,cpus,memory_mib,constraints,preferences,max_replicas,host_ports,generic\n\
             db,0.5,512,node.labels.disk==ssd;node.role!=manager,node.labels.zone,2,5432/tcp;53/udp,gpu=1\n",
        )
        .unwrap();
        assert_eq!(t[0].constraints.len(), 2);
        assert_eq!(t[0].preferences, vec!["node.labels.zone".to_string()]);
        assert_eq!(t[0].max_replicas, 2);
        assert_eq!(t[0].host_ports, vec![(Protocol::Tcp, 5432), (Protocol::Udp, 53)]);
        assert_eq!(t[0].reservations, Resources::new(CPU / 2, 512 * MIB).with_generic("gpu", 1));
        let n = parse_nodes_csv(
            "id,cpus,memory_mib,generic,role,availability,os,arch\nm,2,2048,gpu=2,manager,drain,linux,arm64\n",
        )
        .unwrap();
        assert_eq!(n[0].node.spec.availability, Availability::Drain);
        assert_eq!(n[0].node.description.resources.generic["gpu"], 2);
        let e = parse_nodes_csv("id,cpus,memory_mib,labels\na,1,1,zone=eu\nb,1,1,bad key=x\n").unwrap_err();
        assert!(e.to_string().starts_with("nodes.csv line 3: invalid node \"b\": spec.labels.bad key"), "{e}");
        let e = parse_nodes_csv("id,cpus,memory_mib\nx,1,1\ny,1,1\nx,1,1\n").unwrap_err();
        assert_eq!(e.to_string(), "nodes.csv line 4: node id x appears twice (first on line 2)");
    }

    #[test]
    fn trace_counts_are_bounded() {
        let e = parse_tasks_csv("service,count,cpus,memory_mib\nweb,18446744073709551615,1,1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "tasks.csv line 2: count 18446744073709551615 brings the trace past 1000000 tasks (the limit; 0 before this line)"
        );
        // The limit is on the whole trace, not one row.
        let e = parse_tasks_csv("service,count,cpus,memory_mib\na,600000,0,0\n# b\nb,400001,0,0\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "tasks.csv line 4: count 400001 brings the trace past 1000000 tasks (the limit; 600000 before this line)"
        );
        let t = parse_tasks_csv("service,count,cpus,memory_mib\na,600000,0,0\nb,400000,0,0\n").unwrap();
        assert_eq!(t.len() as u64, MAX_TRACE_TASKS);
    }

    #[test]
    fn trace_values_and_totals_that_overflow_are_refused() {
        // One value past u64: 2^44 MiB is 2^64 bytes; 2^64 nano-CPUs.
        let e = parse_tasks_csv("service,cpus,memory_mib\nweb,1,17592186044416\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "tasks.csv line 2: memory_mib \"17592186044416\" is too large (at most 17592186044415 MiB)"
        );
        let e = parse_nodes_csv("id,cpus,memory_mib\nn1,18446744074,1\n").unwrap_err();
        assert_eq!(e.to_string(), "nodes.csv line 2: cpus \"18446744074\" is too large (at most 18446744073 CPUs)");
        let e = parse_nodes_csv("id,cpus,memory_mib\nn1,1e300,1\n").unwrap_err();
        assert!(e.to_string().starts_with("nodes.csv line 2: cpus \"1e300\" is too large"), "{e}");
        let e = parse_nodes_csv("id,cpus,memory_mib\nn1,1,17592186044416\n").unwrap_err();
        assert!(e.to_string().starts_with("nodes.csv line 2: memory_mib"), "{e}");
        // A row's count times its reservation.
        let e = parse_tasks_csv("service,count,cpus,memory_mib\nweb,2,10000000000,1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "tasks.csv line 2: 2 tasks of 10000000000000000000 nano-CPUs bring the trace's total cpus past u64::MAX nano-CPUs"
        );
        // The sum over rows.
        let e = parse_tasks_csv("service,cpus,memory_mib\na,1,17592186044415\nb,1,1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "tasks.csv line 3: 1 tasks of 1048576 bytes bring the trace's total memory past u64::MAX bytes"
        );
        let e =
            parse_tasks_csv("service,count,cpus,memory_mib,generic\na,2,0,0,gpu=9223372036854775808\n").unwrap_err();
        assert!(e.to_string().contains("total generic \"gpu\" past u64::MAX units"), "{e}");
        // Just under every limit: accepted, and measure sums it.
        let tasks = parse_tasks_csv("service,count,cpus,memory_mib\na,1,18446744073,17592186044415\n").unwrap();
        let nodes = parse_nodes_csv("id,cpus,memory_mib\nn1,18446744073,17592186044415\n").unwrap();
        let view = ClusterView { nodes };
        let d = Pipeline::binpack().schedule(&view, &tasks);
        assert_eq!(measure(&view, &tasks, &d).placed, 1);
    }

    #[test]
    fn the_lower_bound_never_exceeds_the_nodes_any_scheduler_used() {
        // few-huge leaves about a third of its tasks unschedulable: a bound
        // over every task said 9,375 nodes where binpack used 5,625.
        for kind in WorkloadKind::ALL {
            let w = Workload::generate(kind, 400, 4000, 1);
            for name in Pipeline::NAMES {
                let d = Pipeline::by_name(name).unwrap().schedule(&w.view, &w.tasks);
                let m = measure(&w.view, &w.tasks, &d);
                assert!(
                    m.lower_bound.nodes <= m.nodes_used,
                    "{kind} {name}: bound {} ({}) > {} nodes used",
                    m.lower_bound.nodes,
                    m.lower_bound.by,
                    m.nodes_used
                );
                assert!(m.placed == 0 || m.lower_bound.nodes > 0, "{kind} {name}");
            }
        }
    }

    #[test]
    fn measure_sums_reservations_past_u64() {
        // Hand-built workloads bypass the trace checks: two tasks of
        // u64::MAX bytes each, on two such nodes, must not overflow a sum.
        let big = Resources::new(u64::MAX, u64::MAX);
        let view = ClusterView {
            nodes: ["a", "b"].iter().map(|id| NodeInfo::new(Arc::new(Node::ready(*id, *id, big.clone())))).collect(),
        };
        let tasks: Vec<TaskRequest> = (0..2).map(|i| task(0, i, &big)).collect();
        let d = Pipeline::binpack().schedule(&view, &tasks);
        let m = measure(&view, &tasks, &d);
        assert_eq!((m.placed, m.nodes_used, m.lower_bound.nodes), (2, 2, 2));
    }
}
