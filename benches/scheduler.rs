//! Criterion bench of the scheduler hot path: one `schedule` call of a
//! whole batch (index build, static filters per group, heap selection per
//! task) for Spread and BinPack, on the headline size (10,000 nodes,
//! 100,000 tasks with constraints and reservations), on many small services
//! and on a zoned workload with hierarchical spread preferences; and every
//! built-in scheduler on the `production` workload at the headline size
//! (mixed machine sizes, nearly every service its own task shape: the
//! rank-index path).
//!
//! Measured in CPU time of the benchmarking thread (Linux
//! `/proc/thread-self/schedstat`), not wall time: the build machine is
//! shared, and wall time there mostly measures the other jobs. Where that
//! file is missing, wall time is used.
//!
//! ```text
//! cargo bench --bench scheduler
//! ```

#[macro_use]
mod common;

use common::ThreadCpu;
use criterion::{Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use swarm::placement::Pipeline;
use swarm::placement::workload::{Workload, WorkloadKind};
use swarm::scheduler::Scheduler;

fn bench(c: &mut Criterion<ThreadCpu>) {
    let two: &[&str] = &["spread", "binpack"];
    let cases = [
        (WorkloadKind::Uniform, 10_000, 100_000, two),
        (WorkloadKind::ManySmall, 2_000, 20_000, two),
        (WorkloadKind::Zoned, 1_000, 10_000, two),
        (WorkloadKind::Production, 10_000, 100_000, &Pipeline::NAMES[..]),
    ];
    for (kind, nodes, tasks, names) in cases {
        let w = Workload::generate(kind, nodes, tasks, 1);
        let mut g = c.benchmark_group(format!("schedule/{kind}/{nodes}n_{tasks}t"));
        g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(8));
        g.throughput(Throughput::Elements(tasks as u64));
        for &name in names {
            let mut s = Pipeline::by_name(name).expect("built-in scheduler name");
            g.bench_function(name, |b| b.iter(|| black_box(s.schedule(&w.view, &w.tasks))));
        }
        g.finish();
    }
}

cpu_criterion_main!(bench);
