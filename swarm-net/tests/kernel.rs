//! The kernel data path (iptables NAT) for real, in network namespaces the
//! tests create, so the machine's own rules are never touched: one
//! namespace for the single-host tests; three "nodes" and a client on a
//! bridge for the cluster test. Needs root, iproute2 and iptables: skipped
//! without them (recorded, listed by `scripts/test.sh`), failing under CI.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use swarm_conformance::skip::skip;
use swarm_core::discovery::{Discovery, MemDiscovery};
use swarm_core::id::TaskId;
use swarm_core::model::*;
use swarm_core::store::{MemStore, Store};
use swarm_net::alloc::{Allocator, AllocatorConfig};
use swarm_net::kernel::{KernelConfig, KernelMesh};
use swarm_net::netns::{self, NetNs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// False (after a recorded skip) when namespaces and iptables cannot be
/// used here; panics instead under CI (`swarm_conformance::skip`).
fn can_run(_test: &str) -> bool {
    match netns::available() {
        Ok(()) => true,
        Err(why) => {
            skip(&format!("needs root, iproute2 and iptables: {why}"));
            false
        }
    }
}

fn ns_name(test: &str) -> String {
    format!("swk{}-{test}", std::process::id())
}

/// Runs the chains' state through iptables-save in the calling thread's
/// namespace.
fn saved() -> String {
    let out = std::process::Command::new("iptables-save").output().expect("iptables-save");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn follow(store: &Arc<MemStore>) -> MemDiscovery {
    let discovery = MemDiscovery::new();
    let (d, s) = (discovery.clone(), store.clone());
    tokio::spawn(async move { d.follow(s.as_ref()).await });
    discovery
}

/// Service "web" publishing `target` as `published` (ingress), VIP from
/// 10.0.0.0/8.
async fn web(store: &Arc<MemStore>, cluster: &swarm_core::cluster::Cluster, target: u32, published: u32) {
    let mut spec = ServiceSpec::replicated("web", "web:1", 3);
    spec.endpoint_spec.ports =
        vec![PortConfig { target_port: target, published_port: Some(published), ..Default::default() }];
    cluster.create_service(spec).await.unwrap();
    let allocator = Allocator::new(store.clone() as Arc<dyn Store>, AllocatorConfig::default()).unwrap();
    allocator.reconcile().await.unwrap();
}

fn vip_of(store: &MemStore) -> std::net::IpAddr {
    store.state().service_by_name("web").unwrap().endpoint.virtual_ips[0].addr
}

fn tally(ids: impl IntoIterator<Item = u8>) -> BTreeMap<u8, usize> {
    let mut m = BTreeMap::new();
    for id in ids {
        *m.entry(id).or_default() += 1;
    }
    m
}

/// Runs `body` on a current-thread runtime in a fresh network namespace
/// this test thread enters, with a route for the VIP pool 10.0.0.0/8
/// (through a veth, as a node's default route would give); unless the
/// test cannot run here (see `can_run`).
fn in_namespace<F: std::future::Future<Output = ()>>(test: &str, body: impl FnOnce() -> F) {
    if !can_run(test) {
        return;
    }
    let ns = NetNs::create(ns_name(test)).unwrap();
    ns.enter_current_thread().unwrap();
    ns.ip(&["link", "add", "swk0", "type", "veth", "peer", "name", "swk1"]).unwrap();
    ns.ip(&["addr", "add", "10.0.0.1/8", "dev", "swk0"]).unwrap();
    ns.ip(&["link", "set", "swk0", "up"]).unwrap();
    ns.ip(&["link", "set", "swk1", "up"]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(body());
}

/// `n` real backends of "web" on `127.0.<block>.(2 + i):<port>` (id `i`,
/// TCP, and UDP too with `udp`), each with a RUNNING task on node-(i + 1).
async fn serve(store: &MemStore, block: u8, port: u16, n: u8, udp: bool) -> (Vec<TcpBackend>, Vec<TaskId>) {
    let (mut backends, mut tasks) = (Vec::new(), Vec::new());
    for i in 0..n {
        let ip = format!("127.0.{block}.{}", 2 + i);
        backends.push(TcpBackend::start(&ip, port, i).await);
        if udp {
            udp_backend(&ip, port, i).await;
        }
        tasks.push(add_task(store, "web", &format!("node-{}", i + 1), i as u64 + 1, &[("default", &ip)]).await);
    }
    (backends, tasks)
}

/// Waits until "web" has `n` endpoints in `discovery`.
async fn until_endpoints(discovery: &dyn Discovery, n: usize) {
    wait_until(&format!("{n} endpoints"), Duration::from_secs(5), || {
        discovery.resolve("web").is_some_and(|s| s.endpoints.len() == n)
    })
    .await;
}

/// Discovery following `store` once "web" has `n` endpoints, and a kernel
/// mesh on it that has applied them.
async fn mesh_on(store: &Arc<MemStore>, n: usize, config: KernelConfig) -> (MemDiscovery, KernelMesh) {
    let discovery = follow(store).await;
    until_endpoints(&discovery, n).await;
    let mesh = KernelMesh::start(Arc::new(discovery.clone()), config).await.unwrap();
    assert!(mesh.synced(Duration::from_secs(5)).await, "{:?}", mesh.errors());
    (discovery, mesh)
}

#[test]
fn ingress_port_and_vip_rotate_connections_over_the_endpoints_in_the_kernel() {
    in_namespace("rotate", || async {
        let (store, cluster) = fake_cluster(3).await;
        web(&store, &cluster, 8080, 30080).await;
        let (_backends, _) = serve(&store, 0, 8080, 3, false).await;
        let (_discovery, mesh) = mesh_on(&store, 3, KernelConfig::default()).await;
        assert!(mesh.errors().is_empty(), "{:?}", mesh.errors());
        let rules = saved();
        assert!(rules.contains("-A PREROUTING -j SWARM-MESH") && rules.contains("-A OUTPUT -j SWARM-MESH"), "{rules}");
        assert!(rules.contains("-j SWARM-IT30080"), "{rules}");

        // 10,000 connections to the published port on a node address:
        // every one lands on an endpoint, in exact rotation.
        let mut ids = Vec::new();
        for _ in 0..10_000 {
            ids.push(ping("127.0.0.1:30080".parse().unwrap()).await.expect("through the kernel mesh"));
        }
        let counts = tally(ids);
        assert_eq!(counts.len(), 3, "{counts:?}");
        for (id, n) in &counts {
            assert!((3_000..=3_667).contains(n), "backend {id} got {n} of 10,000: {counts:?}");
        }
        // The VIP, on the target port (no listener on it anywhere).
        let vip = vip_of(&store);
        assert_eq!(vip.to_string(), "10.0.0.2");
        let ids: Vec<u8> = {
            let mut v = Vec::new();
            for _ in 0..300 {
                v.push(ping(SocketAddr::new(vip, 8080)).await.expect("through the VIP"));
            }
            v
        };
        assert_eq!(tally(ids).values().copied().collect::<Vec<_>>(), [100, 100, 100]);

        mesh.stop().await.unwrap();
        let rules = saved();
        assert!(!rules.contains("SWARM"), "stop left rules behind:\n{rules}");
        let refused = tokio::net::TcpStream::connect("127.0.0.1:30080").await;
        assert!(refused.is_err(), "nothing serves the port once the mesh stopped");
    });
}

#[test]
fn a_stopping_endpoint_drains_and_a_service_without_endpoints_is_refused_at_once() {
    in_namespace("drain", || async {
        let (store, cluster) = fake_cluster(2).await;
        web(&store, &cluster, 8081, 30081).await;
        let (backends, tasks) = serve(&store, 1, 8081, 2, false).await;
        let (discovery, mesh) = mesh_on(&store, 2, KernelConfig::default()).await;

        // The first new connection goes to the first endpoint (slot 1).
        let addr: SocketAddr = "127.0.0.1:30081".parse().unwrap();
        let mut open = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut id = [0u8; 1];
        open.read_exact(&mut id).await.unwrap();
        assert_eq!(id[0], 0);

        // Its task is told to stop: no new connection reaches it, the open
        // one keeps flowing (the task serves it until it is killed).
        set_desired(&store, &tasks[0], TaskState::Shutdown).await;
        until_endpoints(&discovery, 1).await;
        assert!(mesh.synced(Duration::from_secs(5)).await);
        for _ in 0..50 {
            assert_eq!(ping(addr).await.unwrap(), 1, "a new connection reached the stopping task");
        }
        for _ in 0..3 {
            open.write_all(b"drain").await.unwrap();
            let mut back = [0u8; 5];
            open.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"drain");
        }

        // No endpoint left: refused at once (TCP reset), not a hang.
        set_desired(&store, &tasks[1], TaskState::Shutdown).await;
        until_endpoints(&discovery, 0).await;
        assert!(mesh.synced(Duration::from_secs(5)).await);
        let t = tokio::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr)).await;
        assert!(matches!(r, Ok(Err(_))), "expected a refused connection, got {r:?}");
        assert!(t.elapsed() < Duration::from_secs(1));
        let vip = SocketAddr::new(vip_of(&store), 8081);
        let r = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(vip)).await;
        assert!(matches!(r, Ok(Err(_))), "expected the VIP to refuse, got {r:?}");

        // A bad setting is named; a failing command is reported and nothing
        // is left behind.
        let bad = KernelConfig { chain_prefix: "no spaces".into(), ..Default::default() };
        let e = KernelMesh::start(Arc::new(discovery.clone()), bad).await.err().unwrap();
        assert!(e.to_string().contains("chain_prefix"), "{e}");
        let missing = KernelConfig {
            chain_prefix: "SWX".into(),
            iptables_restore: "/nonexistent/iptables-restore".into(),
            ..Default::default()
        };
        let e = KernelMesh::start(Arc::new(discovery.clone()), missing).await.err().unwrap();
        assert!(e.to_string().contains("/nonexistent/iptables-restore"), "{e}");
        assert!(!saved().contains("SWX"));
        mesh.stop().await.unwrap();
        for b in &backends {
            b.stop();
        }
    });
}

/// Three nodes and a client on one bridge (10.77.0.0/24); node i has the
/// address .i and runs one task at .(10 + i), served by a real backend in
/// its namespace, and its own kernel mesh. Connections to any node reach
/// tasks on every node (forwarded and masqueraded). Node 3 is then cut off
/// and marked down: once the meshes have dropped its endpoint, a client
/// loop through nodes 1 and 2 sees no failed connection. Then task 2 is told
/// to stop while the loop runs (a rolling update step): no failure at all.
#[test]
fn connections_to_any_node_reach_every_node_and_survive_a_node_loss() {
    const TEST: &str = "cluster";
    if !can_run(TEST) {
        return;
    }
    let lan = netns::Lan::create(format!("swk{}", std::process::id())).unwrap();
    let mut hosts = Vec::new();
    for (i, h) in ["n1", "n2", "n3"].iter().enumerate() {
        let (node, task) = (format!("10.77.0.{}/24", i + 1), format!("10.77.0.{}/24", 11 + i));
        hosts.push(lan.host(h, &[&node, &task]).unwrap());
    }
    hosts.push(lan.host("cl", &["10.77.0.100/24"]).unwrap());
    let rts: Vec<tokio::runtime::Runtime> = hosts.iter().map(|h| h.runtime().unwrap()).collect();

    let main = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    main.block_on(async {
        let (store, cluster) = fake_cluster(3).await;
        web(&store, &cluster, 8082, 30082).await;
        let mut tasks = Vec::new();
        let mut backends = Vec::new();
        for (i, rt) in rts[..3].iter().enumerate() {
            let ip = format!("10.77.0.{}", 11 + i);
            let ip2 = ip.clone();
            backends.push(rt.spawn(async move { TcpBackend::start(&ip2, 8082, i as u8).await }).await.unwrap());
            tasks.push(add_task(&store, "web", &format!("node-{}", i + 1), i as u64 + 1, &[("default", &ip)]).await);
        }
        let discovery = follow(&store).await;
        until_endpoints(&discovery, 3).await;
        let mut meshes = Vec::new();
        for rt in &rts[..3] {
            let d: Arc<dyn Discovery> = Arc::new(discovery.clone());
            let mesh = rt.spawn(async move { KernelMesh::start(d, KernelConfig::default()).await }).await.unwrap();
            let mesh = mesh.expect("kernel mesh on a node");
            assert!(mesh.synced(Duration::from_secs(5)).await);
            meshes.push(mesh);
        }
        let client = &rts[3];

        // Through each node, 30 connections: 10 per task, wherever it runs.
        for node in 1..=3 {
            let addr: SocketAddr = format!("10.77.0.{node}:30082").parse().unwrap();
            let ids = client
                .spawn(async move {
                    let mut v = Vec::new();
                    for _ in 0..30 {
                        v.push(ping(addr).await.expect("through a node"));
                    }
                    v
                })
                .await
                .unwrap();
            assert_eq!(tally(ids).values().copied().collect::<Vec<_>>(), [10, 10, 10], "through node {node}");
        }

        // A client loop through nodes 1 and 2, recording (start, outcome).
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let looping = client.spawn(async move {
            let mut log = Vec::new();
            let mut n = 0usize;
            while !*stop_rx.borrow() {
                let addr: SocketAddr = format!("10.77.0.{}:30082", 1 + n % 2).parse().unwrap();
                let started = tokio::time::Instant::now();
                // Before the failover a connection to the lost node hangs:
                // give up on it after 2 s (slow, not failed, on a loaded
                // machine otherwise).
                let r = tokio::time::timeout(Duration::from_secs(2), ping(addr)).await;
                let outcome = match r {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("{addr}: {e}")),
                    Err(_) => Err(format!("{addr}: no answer in 2 s")),
                };
                log.push((started, outcome));
                n += 1;
            }
            log
        });
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Node 3 is lost: cut off, then marked down by the managers.
        hosts[2].ip(&["link", "set", "lan0", "down"]).unwrap();
        node_down(&store, "node-3").await;
        until_endpoints(&discovery, 2).await; // node 3's is gone
        for m in &meshes[..2] {
            assert!(m.synced(Duration::from_secs(5)).await);
        }
        let healed = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(700)).await;

        // A rolling-update step: task 2 told to stop, served until killed.
        set_desired(&store, &tasks[1], TaskState::Shutdown).await;
        until_endpoints(&discovery, 1).await; // task 2's is gone
        for m in &meshes[..2] {
            assert!(m.synced(Duration::from_secs(5)).await);
        }
        // Killed at the end of its grace period (1 s here, 10 s by default):
        // connections it accepted before leaving the rules have finished.
        tokio::time::sleep(Duration::from_secs(1)).await;
        backends[1].stop();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop_tx.send_replace(true);
        let log = looping.await.unwrap();
        let after: Vec<(Duration, &Result<(), String>)> =
            log.iter().filter(|(t, _)| *t > healed).map(|(t, r)| (*t - healed, r)).collect();
        assert!(after.len() > 50, "the loop ran: {} connections after the failover", after.len());
        let failed: Vec<_> = after.iter().filter(|(_, r)| r.is_err()).collect();
        assert!(
            failed.is_empty(),
            "{} of {} connections failed after the failover window (started at, error): {failed:?}",
            failed.len(),
            after.len()
        );

        for (m, rt) in meshes.into_iter().zip(&rts) {
            rt.spawn(async move { m.stop().await }).await.unwrap().unwrap();
        }
        for b in &backends {
            b.stop();
        }
    });
    for rt in rts {
        rt.shutdown_background();
    }
}

/// `NodeNetwork` with `DataPath::auto()` picks the kernel path as root:
/// DNS answers the VIP, the VIP and the published port reach the tasks
/// through the rules, and `stop` removes them.
#[test]
fn node_network_auto_picks_the_kernel_path_and_serves_dns_vip_and_port() {
    use swarm_net::node::{DataPath, NodeNetwork, NodeNetworkConfig};
    in_namespace("node", || async {
        let (store, cluster) = fake_cluster(2).await;
        web(&store, &cluster, 8083, 30083).await;
        let (backends, _) = serve(&store, 2, 8083, 2, false).await;
        let data_path = DataPath::auto();
        assert!(format!("{data_path:?}").starts_with("Kernel"), "{data_path:?}");
        let config = NodeNetworkConfig { dns: Some(("127.0.0.1:0".parse().unwrap(), Default::default())), data_path };
        let net = NodeNetwork::start(store.clone() as Arc<dyn Store>, config).await.unwrap();
        until_endpoints(net.discovery(), 2).await;
        assert!(net.synced(Duration::from_secs(5)).await, "{:?}", net.errors());
        let dns = net.dns_addr().unwrap();
        let vips = resolve_eventually(dns, "web.").await;
        assert_eq!(vips, vec![std::net::Ipv4Addr::new(10, 0, 0, 2)]);
        let mut seen = [0usize; 2];
        for addr in [SocketAddr::new(vips[0].into(), 8083), "127.0.0.1:30083".parse().unwrap()] {
            for _ in 0..10 {
                seen[ping(addr).await.unwrap_or_else(|e| panic!("through {addr}: {e}")) as usize] += 1;
            }
        }
        assert_eq!(seen, [10, 10]);
        net.stop().await.unwrap();
        assert!(!saved().contains("SWARM"), "rules left after stop");
        for b in &backends {
            b.stop();
        }
    });
}

/// Sends on `sock` (one flow) and returns the id of the backend answering.
async fn udp_ask(sock: &tokio::net::UdpSocket, to: SocketAddr) -> u8 {
    sock.send_to(b"hi", to).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, _) =
        tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await.expect("udp answer").unwrap();
    assert_eq!(&buf[1..n], b"hi");
    buf[0]
}

/// An endpoint leaving keeps its UDP flow and its open TCP connection for
/// the stop grace period (2 s here); then the mesh ends them: the same UDP
/// flow moves to the other endpoint, the TCP connection gets a reset.
#[test]
fn a_drained_endpoints_flows_end_with_its_grace_period() {
    const TEST: &str = "grace";
    // Ending the drained flows needs conntrack-tools (scripts/setup-deps.sh).
    if !std::process::Command::new("conntrack").arg("--version").output().is_ok_and(|o| o.status.success()) {
        skip(&format!("{TEST}: needs the conntrack command (conntrack-tools)"));
        return;
    }
    in_namespace(TEST, || async {
        let (store, cluster) = fake_cluster(2).await;
        let mut spec = ServiceSpec::replicated("web", "web:1", 2);
        spec.endpoint_spec.ports = vec![
            PortConfig { target_port: 8084, published_port: Some(30084), ..Default::default() },
            PortConfig {
                protocol: Protocol::Udp,
                target_port: 8084,
                published_port: Some(30084),
                ..Default::default()
            },
        ];
        spec.task_template.container.stop_grace_period = Duration::from_secs(2).into();
        cluster.create_service(spec).await.unwrap();
        let (backends, tasks) = serve(&store, 4, 8084, 2, true).await;
        let (discovery, mesh) = mesh_on(&store, 2, KernelConfig::default()).await;

        let addr: SocketAddr = "127.0.0.1:30084".parse().unwrap();
        let flow = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert_eq!(udp_ask(&flow, addr).await, 0, "the first flow goes to slot 1");
        let mut open = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut id = [0u8; 1];
        open.read_exact(&mut id).await.unwrap();
        assert_eq!(id[0], 0, "the first connection goes to slot 1");

        set_desired(&store, &tasks[0], TaskState::Shutdown).await;
        let left = tokio::time::Instant::now();
        until_endpoints(&discovery, 1).await;
        assert!(mesh.synced(Duration::from_secs(5)).await);
        // Within the grace period: the flow and the connection stay.
        assert_eq!(udp_ask(&flow, addr).await, 0, "the flow keeps its endpoint while it drains");
        open.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        open.read_exact(&mut b).await.unwrap();
        assert!(left.elapsed() < Duration::from_millis(1800), "too slow to check the drain: {:?}", left.elapsed());

        // After it: the flow is answered by the other endpoint, the
        // connection is reset.
        tokio::time::sleep_until(left + Duration::from_millis(2600)).await;
        assert!(mesh.errors().is_empty(), "{:?}", mesh.errors());
        assert_eq!(udp_ask(&flow, addr).await, 1, "the same flow moved to the remaining endpoint");
        let _ = open.write_all(b"x").await;
        let r = tokio::time::timeout(Duration::from_secs(2), open.read(&mut b)).await.expect("an answer, not a hang");
        assert!(matches!(r, Err(_) | Ok(0)), "the drained connection ended, got {r:?}");

        mesh.stop().await.unwrap();
        for b in &backends {
            b.stop();
        }
    });
}

/// Rules someone else removed (a flushed chain, a deleted jump) are put
/// back by the periodic resync (300 ms here), without any service change.
#[test]
fn the_periodic_resync_repairs_rules_removed_by_hand() {
    in_namespace("resync", || async {
        let (store, cluster) = fake_cluster(1).await;
        web(&store, &cluster, 8085, 30085).await;
        let backend = TcpBackend::start("127.0.5.2", 8085, 7).await;
        add_task(&store, "web", "node-1", 1, &[("default", "127.0.5.2")]).await;
        let config = KernelConfig { resync: Some(Duration::from_millis(300)), ..Default::default() };
        let (_discovery, mesh) = mesh_on(&store, 1, config).await;
        let addr: SocketAddr = "127.0.0.1:30085".parse().unwrap();
        assert_eq!(ping(addr).await.unwrap(), 7);

        for (table, args) in [("nat", vec!["-F", "SWARM-IT30085"]), ("nat", vec!["-D", "OUTPUT", "-j", "SWARM-MESH"])] {
            let mut cmd = std::process::Command::new("iptables");
            cmd.args(["-w", "-t", table]).args(&args);
            assert!(cmd.status().unwrap().success(), "iptables -t {table} {args:?}");
        }
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the port is no longer translated");

        let mut repaired = false;
        for _ in 0..200 {
            if let Ok(Ok(7)) = tokio::time::timeout(Duration::from_millis(200), ping(addr)).await {
                repaired = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(repaired, "the resync put the rules back: {:?}\n{}", mesh.errors(), saved());
        let rules = saved();
        assert_eq!(rules.matches("-A OUTPUT -j SWARM-MESH").count(), 1, "one jump, not two:\n{rules}");
        mesh.stop().await.unwrap();
        backend.stop();
    });
}
