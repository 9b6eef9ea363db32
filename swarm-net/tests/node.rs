//! A node's network plane started in one call (`NodeNetwork`), userspace
//! data path, on loopback: DNS answers the service's VIP, the VIP and the
//! published port reach real backends, and `stop` closes everything. The
//! kernel data path through `NodeNetwork` is in tests/kernel.rs (root).

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use swarm_core::model::*;
use swarm_core::store::Store;
use swarm_net::alloc::{Allocator, AllocatorConfig};
use swarm_net::mesh::MeshConfig;
use swarm_net::node::{DataPath, NodeNetwork, NodeNetworkConfig};
use swarm_net::vip::{AlreadyLocal, VipConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_vip_and_published_port_from_one_start() {
    let (store, cluster) = fake_cluster(2).await;
    let mut spec = ServiceSpec::replicated("api", "api:1", 2);
    spec.endpoint_spec.ports =
        vec![PortConfig { target_port: 18301, published_port: Some(18302), ..Default::default() }];
    cluster.create_service(spec).await.unwrap();
    let alloc = AllocatorConfig { pool: "127.65.0.0/16".parse().unwrap(), slice_prefix: 24, ..Default::default() };
    Allocator::new(store.clone() as Arc<dyn Store>, alloc).unwrap().reconcile().await.unwrap();
    let mut backends = Vec::new();
    for i in 0..2u8 {
        let ip = format!("127.0.51.{}", 10 + i);
        backends.push(TcpBackend::start(&ip, 18301, i).await);
        add_task(&store, "api", &format!("node-{}", i + 1), i as u64 + 1, &[("default", &ip)]).await;
    }
    let config = NodeNetworkConfig {
        dns: Some(("127.0.0.1:0".parse().unwrap(), Default::default())),
        data_path: DataPath::Userspace {
            mesh: MeshConfig { listen_ip: [127, 0, 51, 1].into(), ..Default::default() },
            vip: VipConfig::default(),
            binder: Arc::new(AlreadyLocal),
        },
    };
    let net = NodeNetwork::start(store.clone() as Arc<dyn Store>, config).await.unwrap();
    let dns = net.dns_addr().expect("dns served");
    wait_until("endpoints", Duration::from_secs(5), || {
        swarm_core::discovery::Discovery::resolve(net.discovery(), "api").is_some_and(|s| s.endpoints.len() == 2)
    })
    .await;
    assert!(net.synced(Duration::from_secs(5)).await);
    assert!(net.errors().is_empty(), "{:?}", net.errors());

    let vips = resolve_eventually(dns, "api.").await;
    assert_eq!(vips.len(), 1, "one VIP for api: {vips:?}");
    let vip = SocketAddr::new(vips[0].into(), 18301);
    let published: SocketAddr = "127.0.51.1:18302".parse().unwrap();
    let mut seen = [0usize; 2];
    for addr in [vip, published] {
        for _ in 0..10 {
            seen[ping(addr).await.unwrap_or_else(|e| panic!("through {addr}: {e}")) as usize] += 1;
        }
    }
    assert_eq!(seen, [10, 10], "round-robin over both tasks through the VIP and the mesh");

    net.stop().await.unwrap();
    for addr in [vip, published] {
        let e = tokio::net::TcpStream::connect(addr).await.expect_err("stopped");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{addr}");
    }
    for b in &backends {
        b.stop();
    }
}
