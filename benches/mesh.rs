//! Criterion bench of the kernel mesh's control path: the CPU one update
//! costs before `iptables-restore` runs. Every discovery change re-renders
//! the whole rule set (`kernel::render`) and builds the restore input
//! (`kernel::restore_input`), so both are measured on a large cluster:
//! 1,000 VIP services with 10 endpoints each, each publishing one TCP and
//! one UDP ingress port (2,000 port chains + 1,000 VIP chains, ~36,000 rule
//! lines). The `iptables-restore` process itself is not measured here (it
//! needs root; see `examples/mesh_bench.rs` for the data path).
//!
//! Measured in CPU time of the benchmarking thread (see benches/common).
//!
//! ```text
//! cargo bench --features net --bench mesh
//! ```

#[macro_use]
mod common;

use common::ThreadCpu;
use criterion::{Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use swarm::net::kernel::{KernelConfig, render, restore_input};
use swarm::net::workload;

const SERVICES: u32 = 1_000;
const ENDPOINTS: u32 = 10;

fn bench(c: &mut Criterion<ThreadCpu>) {
    let config = KernelConfig::default();
    let (before, after) = (workload::services(SERVICES, ENDPOINTS, 0), workload::services(SERVICES, ENDPOINTS, 100));
    let (old, new) = (render(&before, &config), render(&after, &config));
    assert!(old.skipped.is_empty() && old.nat.len() > 30_000, "{} nat lines", old.nat.len());

    let mut g = c.benchmark_group(format!("kernel_mesh/{SERVICES}svc_{ENDPOINTS}ep"));
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(SERVICES as u64));
    g.bench_function("render", |b| b.iter(|| black_box(render(black_box(&after), &config))));
    g.bench_function("restore_input", |b| b.iter(|| black_box(restore_input(black_box(&old), black_box(&new), false))));
    g.finish();
}

cpu_criterion_main!(bench);
