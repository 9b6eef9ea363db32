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

mod common;

use common::ThreadCpu;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use swarm::discovery::{Endpoint, ServiceEndpoints};
use swarm::model::{EndpointMode, PortConfig, Protocol, VirtualIp};
use swarm::net::kernel::{KernelConfig, render, restore_input};

const SERVICES: u32 = 1_000;
const ENDPOINTS: u32 = 10;

/// The cluster; `shift` moves every service's last endpoint to another
/// address (one update touching every service).
fn cluster(shift: u32) -> Vec<ServiceEndpoints> {
    (0..SERVICES)
        .map(|i| {
            let name = format!("svc-{i}");
            let vip = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + 2 + i));
            let ports = [Protocol::Tcp, Protocol::Udp]
                .into_iter()
                .map(|protocol| PortConfig {
                    protocol,
                    target_port: 8080,
                    published_port: Some(30_000 + i),
                    ..Default::default()
                })
                .collect();
            let endpoints = (0..ENDPOINTS)
                .map(|e| {
                    let host = if e == ENDPOINTS - 1 { e + shift } else { e };
                    Endpoint {
                        task_id: format!("{name}.{e}").into(),
                        node_id: None,
                        slot: Some(e as u64 + 1),
                        addr: IpAddr::V4(Ipv4Addr::from(0x0A80_0000 + i * 256 + host + 2)),
                    }
                })
                .collect();
            ServiceEndpoints {
                service_id: name.as_str().into(),
                name,
                mode: EndpointMode::Vip,
                virtual_ips: vec![VirtualIp { network: "default".into(), addr: vip }],
                ports,
                endpoints,
                stop_grace_period: Duration::from_secs(10),
                revision: 1,
            }
        })
        .collect()
}

fn bench(c: &mut Criterion<ThreadCpu>) {
    let config = KernelConfig::default();
    let (before, after) = (cluster(0), cluster(100));
    let (old, new) = (render(&before, &config), render(&after, &config));
    assert!(old.skipped.is_empty() && old.nat.len() > 30_000, "{} nat lines", old.nat.len());

    let mut g = c.benchmark_group(format!("kernel_mesh/{SERVICES}svc_{ENDPOINTS}ep"));
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(SERVICES as u64));
    g.bench_function("render", |b| b.iter(|| black_box(render(black_box(&after), &config))));
    g.bench_function("restore_input", |b| b.iter(|| black_box(restore_input(black_box(&old), black_box(&new), false))));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = bench
}
criterion_main!(benches);
