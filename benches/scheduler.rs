//! Criterion bench of the scheduler hot path: one `schedule` call of a
//! whole batch (index build, static filters per group, heap selection per
//! task) for Spread and BinPack, on the headline size (10,000 nodes,
//! 100,000 tasks with constraints and reservations), on many small services
//! (the shared-heap path) and on a zoned workload with hierarchical spread
//! preferences.
//!
//! Measured in CPU time of the benchmarking thread (Linux
//! `/proc/thread-self/schedstat`), not wall time: the build machine is
//! shared, and wall time there mostly measures the other jobs. Where that
//! file is missing, wall time is used.
//!
//! ```text
//! cargo bench --bench scheduler
//! ```

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant};
use swarm::sched::Pipeline;
use swarm::sched::workload::{Workload, WorkloadKind};
use swarm::scheduler::Scheduler;

/// CPU time of the current thread, or wall time where it is unavailable.
struct ThreadCpu;

fn now() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_else(|| START.get_or_init(Instant::now).elapsed())
}

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        now()
    }
    fn end(&self, start: Duration) -> Duration {
        now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

/// Nanoseconds shown as ms; throughput as elements per CPU second.
struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, _typical: f64, values: &mut [f64]) -> &'static str {
        values.iter_mut().for_each(|v| *v /= 1e6);
        "ms (cpu)"
    }
    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match t {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) | Throughput::Bits(n) => *n,
            Throughput::ElementsAndBytes { elements, .. } => *elements,
        } as f64;
        values.iter_mut().for_each(|v| *v = n * 1e9 / *v / 1e3);
        "Kelem/cpu-s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn bench(c: &mut Criterion<ThreadCpu>) {
    let cases = [
        (WorkloadKind::Uniform, 10_000, 100_000),
        (WorkloadKind::ManySmall, 2_000, 20_000),
        (WorkloadKind::Zoned, 1_000, 10_000),
    ];
    for (kind, nodes, tasks) in cases {
        let w = Workload::generate(kind, nodes, tasks, 1);
        let mut g = c.benchmark_group(format!("schedule/{kind}/{nodes}n_{tasks}t"));
        g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(8));
        g.throughput(Throughput::Elements(tasks as u64));
        for name in ["spread", "binpack"] {
            let mut s = Pipeline::by_name(name).expect("built-in scheduler name");
            g.bench_function(name, |b| b.iter(|| black_box(s.schedule(&w.view, &w.tasks))));
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = bench
}
criterion_main!(benches);
