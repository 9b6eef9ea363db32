//! The VIP data path on loopback with real TCP (and UDP) backends. The
//! allocator gives VIPs from 127.64.0.0/16 (local on Linux, no root), or
//! from a 10.x pool translated onto 127.0.0.0/8, or (as root) from a 10.x
//! pool added to `lo` by `IpAddrBinder`. Tests run in parallel: each one has
//! its own target port and backend address block.

mod common;

use common::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use swarm_core::cluster::Cluster;
use swarm_core::discovery::{Discovery, MemDiscovery};
use swarm_core::id::TaskId;
use swarm_core::model::*;
use swarm_core::store::{MemStore, Store};
use swarm_core::time::SpecDuration;
use swarm_net::alloc::{Allocator, AllocatorConfig};
use swarm_net::dns::{DnsConfig, DnsHandler, DnsServer};
use swarm_net::mesh::{AddrMap, Balance, MeshConfig};
use swarm_net::vip::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Setup {
    store: Arc<MemStore>,
    cluster: Cluster,
    discovery: MemDiscovery,
    proxy: VipProxy,
    backends: Vec<TcpBackend>,
    tasks: Vec<TaskId>,
    vip: IpAddr,
}

fn pool(cidr: &str) -> AllocatorConfig {
    AllocatorConfig { pool: cidr.parse().unwrap(), slice_prefix: 24, ..Default::default() }
}

/// Service "web" (VIP mode) with TCP and UDP `port`, `n` real backends at
/// 127.0.`block`.(10+i):`port`, the allocator on `alloc`, and a VipProxy.
async fn setup(
    port: u16,
    block: u8,
    n: usize,
    alloc: AllocatorConfig,
    binder: Arc<dyn VipBinder>,
    config: VipConfig,
) -> Setup {
    let (store, cluster) = fake_cluster(3).await;
    let mut spec = ServiceSpec::replicated("web", "web:1", n as u64);
    spec.endpoint_spec.ports = vec![
        PortConfig { target_port: port as u32, ..Default::default() },
        PortConfig { protocol: Protocol::Udp, target_port: port as u32, ..Default::default() },
    ];
    spec.task_template.container.stop_grace_period = SpecDuration::from(Duration::from_secs(5));
    cluster.create_service(spec).await.unwrap();
    let allocator = Allocator::new(store.clone() as Arc<dyn Store>, alloc).unwrap();
    allocator.reconcile().await.unwrap();
    let vip = store.state().service_by_name("web").unwrap().endpoint.virtual_ips[0].addr;
    let mut backends = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let ip = format!("127.0.{block}.{}", 10 + i);
        backends.push(TcpBackend::start(&ip, port, i as u8).await);
        let node = format!("node-{}", i % 3 + 1);
        tasks.push(add_task(&store, "web", &node, i as u64 + 1, &[("default", &ip)]).await);
    }
    let discovery = MemDiscovery::new();
    let (d, s) = (discovery.clone(), store.clone());
    tokio::spawn(async move { d.follow(s.as_ref()).await });
    wait_until("endpoints", Duration::from_secs(5), || {
        discovery.resolve("web").is_some_and(|s| s.endpoints.len() == n)
    })
    .await;
    let proxy = VipProxy::start(Arc::new(discovery.clone()), binder, config);
    assert!(proxy.synced(Duration::from_secs(5)).await);
    Setup { store, cluster, discovery, proxy, backends, tasks, vip }
}

/// `count` pings through `addr`; how many each backend id got.
async fn spread(addr: SocketAddr, n: usize, count: usize) -> Vec<usize> {
    let mut counts = vec![0usize; n];
    for _ in 0..count {
        counts[ping(addr).await.expect("connection through the vip") as usize] += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vip_from_a_loopback_pool_reaches_every_endpoint_balanced() {
    let port = 18201;
    let s = setup(port, 41, 3, pool("127.64.0.0/16"), Arc::new(AlreadyLocal), VipConfig::default()).await;
    assert_eq!(s.vip, "127.64.0.2".parse::<IpAddr>().unwrap(), "first host of the default network's slice");
    let addr = SocketAddr::new(s.vip, port);
    assert_eq!(s.proxy.addr(Protocol::Tcp, s.vip, port), Some(addr));
    let mut served: Vec<(Protocol, SocketAddr)> = s.proxy.listening().iter().map(|l| (l.protocol, l.addr)).collect();
    served.sort();
    assert_eq!(served, vec![(Protocol::Tcp, addr), (Protocol::Udp, addr)]);
    assert!(s.proxy.errors().is_empty(), "{:?}", s.proxy.errors());

    let counts = spread(addr, 3, 300).await;
    assert_eq!(counts, vec![100, 100, 100], "round-robin over three endpoints");
    assert_eq!(s.proxy.backends("web").iter().map(|b| b.total).sum::<u64>(), 300);

    // UDP: a real echo backend replaces backend 0's address for UDP.
    let udp_backend = tokio::net::UdpSocket::bind(format!("127.0.41.10:{port}")).await.unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = udp_backend.recv_from(&mut buf).await {
            let _ = udp_backend.send_to(&buf[..n], from).await;
        }
    });
    // Only backend 0 answers UDP: retry new flows (new client sockets) until
    // one lands on it; round-robin gets there within 3 flows.
    let mut echoed = false;
    for _ in 0..3 {
        let c = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.connect(addr).await.unwrap();
        c.send(b"hello").await.unwrap();
        let mut buf = [0u8; 16];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), c.recv(&mut buf)).await {
            assert_eq!(&buf[..n], b"hello");
            echoed = true;
            break;
        }
    }
    assert!(echoed, "a udp flow to the vip reached the udp backend");
    s.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_through_the_vip() {
    let port = 18202;
    let config = VipConfig {
        proxy: MeshConfig { balance: Balance::LeastConnections, ..Default::default() },
        ..Default::default()
    };
    let s = setup(port, 42, 2, pool("127.64.0.0/16"), Arc::new(AlreadyLocal), config).await;
    let addr = SocketAddr::new(s.vip, port);
    // Hold one connection open on some backend: the next ones go to the other.
    let mut held = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut id = [0u8; 1];
    held.read_exact(&mut id).await.unwrap();
    for _ in 0..10 {
        assert_eq!(ping(addr).await.unwrap(), 1 - id[0], "the idle backend");
        // The proxy sees the close a moment after the client.
        wait_until("ping closed", Duration::from_secs(5), || {
            s.proxy.backends("web").iter().map(|b| b.active).sum::<usize>() == 1
        })
        .await;
    }
    drop(held);
    s.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_leaving_gets_no_new_connections_and_its_open_one_drains() {
    let port = 18203;
    let s = setup(port, 43, 3, pool("127.64.0.0/16"), Arc::new(AlreadyLocal), VipConfig::default()).await;
    let addr = SocketAddr::new(s.vip, port);
    // An open connection to backend 0.
    let mut open = None;
    for _ in 0..3 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut id = [0u8; 1];
        c.read_exact(&mut id).await.unwrap();
        if id[0] == 0 {
            open = Some(c);
        }
    }
    let mut open = open.expect("round-robin gave backend 0 one of three connections");

    set_desired(&s.store, &s.tasks[0], TaskState::Shutdown).await;
    wait_until("endpoint left", Duration::from_secs(5), || {
        s.discovery.resolve("web").is_some_and(|e| e.endpoints.len() == 2)
    })
    .await;
    assert!(s.proxy.synced(Duration::from_secs(5)).await);
    let counts = spread(addr, 3, 60).await;
    assert_eq!(counts, vec![0, 30, 30], "no new connection to the task told to stop");
    // Its open connection still flows (grace period 5 s).
    open.write_all(b"abcd").await.unwrap();
    let mut back = [0u8; 4];
    open.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"abcd");
    let stats = s.proxy.backends("web");
    assert!(stats.iter().any(|b| b.task_id == s.tasks[0] && b.draining && b.active == 1), "{stats:?}");
    s.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_service_is_refused_and_dnsrr_or_portless_services_follow_the_config() {
    let port = 18204;
    let config = VipConfig { default_ports: vec![(Protocol::Tcp, 18214)], ..Default::default() };
    let s = setup(port, 44, 2, pool("127.64.0.0/16"), Arc::new(AlreadyLocal), config).await;
    let addr = SocketAddr::new(s.vip, port);
    assert!(ping(addr).await.is_ok());

    // A dnsrr service gets nothing; a VIP service with no declared port
    // gets the configured default ports.
    let mut rr = ServiceSpec::replicated("rr", "rr:1", 1);
    rr.endpoint_spec.mode = EndpointMode::Dnsrr;
    rr.endpoint_spec.ports =
        vec![PortConfig { target_port: 18224, publish_mode: PublishMode::Host, ..Default::default() }];
    s.cluster.create_service(rr).await.unwrap();
    s.cluster.create_service(ServiceSpec::replicated("bare", "bare:1", 1)).await.unwrap();
    Allocator::new(s.store.clone() as Arc<dyn Store>, pool("127.64.0.0/16")).unwrap().reconcile().await.unwrap();
    let state = s.store.state();
    assert!(state.service_by_name("rr").unwrap().endpoint.virtual_ips.is_empty());
    let bare_vip = state.service_by_name("bare").unwrap().endpoint.virtual_ips[0].addr;
    let bare_backend = TcpBackend::start("127.0.44.20", 18214, 9).await;
    add_task(&s.store, "bare", "node-1", 1, &[("default", "127.0.44.20")]).await;
    add_task(&s.store, "rr", "node-1", 1, &[("default", "127.0.44.21")]).await;
    wait_until("bare served", Duration::from_secs(5), || s.proxy.addr(Protocol::Tcp, bare_vip, 18214).is_some()).await;
    wait_until("bare endpoint", Duration::from_secs(5), || s.proxy.backends("bare").len() == 1).await;
    assert_eq!(ping(SocketAddr::new(bare_vip, 18214)).await.unwrap(), 9);
    assert!(s.proxy.listening().iter().all(|l| l.service != "rr"), "dnsrr: no vip served");
    assert!(s.proxy.backends("rr").is_empty());

    s.cluster.remove_service("web").await.unwrap();
    wait_until("web gone", Duration::from_secs(5), || s.discovery.resolve("web").is_none()).await;
    assert!(s.proxy.synced(Duration::from_secs(5)).await);
    let e = tokio::net::TcpStream::connect(addr).await.expect_err("removed service: nothing listens");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(s.proxy.listening().iter().all(|l| l.service == "bare"));
    bare_backend.stop();
    s.proxy.stop().await;
    let e = tokio::net::TcpStream::connect(SocketAddr::new(bare_vip, 18214)).await.expect_err("stopped proxy");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answer_then_connect_to_the_vip_end_to_end() {
    let port = 18205;
    let s = setup(port, 45, 2, pool("127.64.0.0/16"), Arc::new(AlreadyLocal), VipConfig::default()).await;
    let handler = DnsHandler::new(DnsConfig::default());
    let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), handler.clone()).await.unwrap();
    let st = s.store.clone();
    tokio::spawn(async move { handler.follow(st.as_ref()).await });
    let dns = server.local_addr();
    let answer = resolve_eventually(dns, "web.").await;
    assert_eq!(answer, vec![Ipv4Addr::new(127, 64, 0, 2)], "the vip");
    let addr = SocketAddr::new(IpAddr::V4(answer[0]), port);
    let counts = spread(addr, 2, 20).await;
    assert_eq!(counts, vec![10, 10]);
    server.shutdown().await;
    s.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translated_vips_are_served_on_loopback() {
    let port = 18206;
    // 10.77.x.y -> 127.77.x.y.
    let translate = AddrMap(Arc::new(|a: IpAddr| match a {
        IpAddr::V4(v) => {
            let o = v.octets();
            IpAddr::V4(Ipv4Addr::new(127, o[1], o[2], o[3]))
        }
        other => other,
    }));
    let config = VipConfig { translate_vip: Some(translate), ..Default::default() };
    let s = setup(port, 46, 2, pool("10.77.0.0/16"), Arc::new(AlreadyLocal), config).await;
    assert_eq!(s.vip, "10.77.0.2".parse::<IpAddr>().unwrap());
    let local: SocketAddr = format!("127.77.0.2:{port}").parse().unwrap();
    assert_eq!(s.proxy.addr(Protocol::Tcp, s.vip, port), Some(local));
    assert!(s.proxy.listening().iter().all(|l| l.vip == s.vip && l.network == "default"));
    assert_eq!(spread(local, 2, 10).await, vec![5, 5]);
    s.proxy.stop().await;
}

fn lo_has(addr: &str) -> bool {
    let out = std::process::Command::new("ip").args(["-o", "addr", "show", "dev", "lo"]).output().expect("ip");
    String::from_utf8_lossy(&out.stdout).contains(&format!("inet {addr}/32"))
}

/// Removes the address whatever happens to the test.
struct DelOnDrop(&'static str);

impl Drop for DelOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["addr", "del", &format!("{}/32", self.0), "dev", "lo"]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_addr_binder_adds_the_vip_to_lo_and_removes_it() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let has_ip = std::process::Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    if !root || !has_ip {
        swarm_conformance::skip::skip(&format!("needs root and iproute2 (root: {root}, ip: {has_ip})"));
        return;
    }
    const VIP: &str = "10.213.0.2";
    let _cleanup = DelOnDrop(VIP);
    assert!(!lo_has(VIP), "{VIP} on lo before the test");
    let port = 18207;
    let s = setup(port, 47, 2, pool("10.213.0.0/16"), Arc::new(IpAddrBinder::new("lo")), VipConfig::default()).await;
    assert_eq!(s.vip.to_string(), VIP);
    assert!(s.proxy.errors().is_empty(), "{:?}", s.proxy.errors());
    assert!(lo_has(VIP), "the binder added {VIP}/32 to lo");
    assert_eq!(spread(SocketAddr::new(s.vip, port), 2, 10).await, vec![5, 5]);

    // The service goes: its listeners close and the address is removed.
    s.cluster.remove_service("web").await.unwrap();
    wait_until("web gone", Duration::from_secs(5), || s.discovery.resolve("web").is_none()).await;
    assert!(s.proxy.synced(Duration::from_secs(5)).await);
    assert!(!lo_has(VIP), "the binder removed {VIP} with the service");
    s.proxy.stop().await;

    // A binder failure is reported, not hidden: no such interface.
    let bad = IpAddrBinder::new("no-such-if0");
    let e = bad.bind("10.213.0.9".parse().unwrap()).await.expect_err("no interface");
    assert!(e.to_string().contains("ip addr add 10.213.0.9/32 dev no-such-if0"), "{e}");
    drop(s.backends);
}
