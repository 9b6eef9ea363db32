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

cpu_criterion_main!(bench);
