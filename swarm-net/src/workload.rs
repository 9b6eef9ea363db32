//! Synthetic discovery states for benchmarks of the mesh's control path
//! (like `swarm_sched::workload` for placement): many VIP services, each
//! with endpoints and published ports, built without a store.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use swarm_core::discovery::{Endpoint, ServiceEndpoints};
use swarm_core::model::{EndpointMode, PortConfig, Protocol, VirtualIp};

/// `services` VIP-mode services `svc-<i>` with `endpoints` endpoints each,
/// publishing port `30000 + i` over TCP and UDP (target 8080). VIPs are
/// 10.0.0.2 upwards; endpoint `e` of service `i` is `10.128.0.0 + 256 i +
/// e + 2`, except the last one, moved by `shift` (so two calls with
/// different `shift` differ in one endpoint of every service).
/// `services` must stay under 35,000 (published ports) and `endpoints +
/// shift` under 254.
pub fn services(services: u32, endpoints: u32, shift: u32) -> Vec<ServiceEndpoints> {
    (0..services)
        .map(|i| {
            let name = format!("svc-{i}");
            let ports = [Protocol::Tcp, Protocol::Udp]
                .into_iter()
                .map(|protocol| PortConfig {
                    protocol,
                    target_port: 8080,
                    published_port: Some(30_000 + i),
                    ..Default::default()
                })
                .collect();
            let endpoints = (0..endpoints)
                .map(|e| {
                    let host = if e + 1 == endpoints { e + shift } else { e };
                    Endpoint {
                        task_id: format!("{name}.{e}").into(),
                        node_id: None,
                        slot: Some(u64::from(e) + 1),
                        addr: IpAddr::V4(Ipv4Addr::from(0x0A80_0000 + i * 256 + host + 2)),
                    }
                })
                .collect();
            ServiceEndpoints {
                service_id: name.as_str().into(),
                name,
                mode: EndpointMode::Vip,
                virtual_ips: vec![VirtualIp {
                    network: "default".into(),
                    addr: IpAddr::V4(Ipv4Addr::from(0x0A00_0002 + i)),
                }],
                ports,
                endpoints,
                stop_grace_period: Duration::from_secs(10),
                revision: 1,
            }
        })
        .collect()
}
