//! The routing mesh on loopback with real TCP and UDP backends. Tasks are
//! put in a MemStore with 127.0.x.y addresses, `MemDiscovery` follows it,
//! and one `Mesh` per node listens on its own 127.0.x.y address. Each test
//! uses its own address block so they can run in parallel.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use swarm_core::discovery::{Discovery, MemDiscovery};
use swarm_core::id::TaskId;
use swarm_core::model::*;
use swarm_core::store::MemStore;
use swarm_core::time::SpecDuration;
use swarm_net::mesh::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const TARGET: u16 = 18080;
const PUBLISHED: u32 = 30080;

struct Setup {
    store: Arc<MemStore>,
    discovery: MemDiscovery,
    meshes: Vec<Mesh>,
    backends: Vec<TcpBackend>,
    tasks: Vec<TaskId>,
}

/// `n` backends at 127.0.`block`.(10+i) on nodes node-1..3 round-robin,
/// and `nodes` meshes at 127.0.`block`.(1+k).
async fn setup(block: u8, n: usize, nodes: usize, config: MeshConfig, grace: Duration) -> Setup {
    let (store, cluster) = fake_cluster(3).await;
    let mut spec = ServiceSpec::replicated("web", "web:1", n as u64);
    spec.endpoint_spec.ports = vec![
        PortConfig { target_port: TARGET as u32, published_port: Some(PUBLISHED), ..Default::default() },
        PortConfig {
            protocol: Protocol::Udp,
            target_port: TARGET as u32,
            published_port: Some(PUBLISHED),
            ..Default::default()
        },
    ];
    spec.task_template.container.stop_grace_period = SpecDuration::from(grace);
    cluster.create_service(spec).await.unwrap();
    let mut backends = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let ip = format!("127.0.{block}.{}", 10 + i);
        backends.push(TcpBackend::start(&ip, TARGET, i as u8).await);
        let node = format!("node-{}", i % 3 + 1);
        tasks.push(add_task(&store, "web", &node, i as u64 + 1, &[("default", &ip)]).await);
    }
    let discovery = MemDiscovery::new();
    let (d, s) = (discovery.clone(), store.clone());
    tokio::spawn(async move { d.follow(s.as_ref()).await });
    let mut meshes = Vec::new();
    for k in 0..nodes {
        let listen_ip = format!("127.0.{block}.{}", k + 1).parse().unwrap();
        let m = Mesh::start(Arc::new(discovery.clone()), MeshConfig { listen_ip, ..config.clone() });
        meshes.push(m);
    }
    for m in &meshes {
        wait_until("mesh listening", Duration::from_secs(5), || m.addr(Protocol::Tcp, PUBLISHED).is_some()).await;
    }
    wait_until("3 endpoints", Duration::from_secs(5), || {
        discovery.resolve("web").is_some_and(|s| s.endpoints.len() == n)
    })
    .await;
    for m in &meshes {
        assert!(m.synced(Duration::from_secs(5)).await);
    }
    Setup { store, discovery, meshes, backends, tasks }
}

impl Setup {
    fn addrs(&self) -> Vec<SocketAddr> {
        self.meshes.iter().map(|m| m.addr(Protocol::Tcp, PUBLISHED).unwrap()).collect()
    }
}

async fn balance_over_10k(block: u8, balance: Balance, copy: CopyMode) {
    let s = setup(block, 3, 1, MeshConfig { balance, copy, ..Default::default() }, Duration::from_secs(1)).await;
    let addr = s.addrs()[0];
    let mut counts = [0usize; 3];
    // 8 clients in parallel, 10,000 connections in all.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        set.spawn(async move {
            let mut c = [0usize; 3];
            for _ in 0..1250 {
                c[ping(addr).await.expect("connection through the mesh") as usize] += 1;
            }
            c
        });
    }
    while let Some(c) = set.join_next().await {
        let c = c.unwrap();
        for i in 0..3 {
            counts[i] += c[i];
        }
    }
    assert_eq!(counts.iter().sum::<usize>(), 10_000);
    let mean = 10_000.0 / 3.0;
    for c in counts {
        assert!(((c as f64) - mean).abs() / mean <= 0.10, "{balance:?}: counts {counts:?} not within 10%");
    }
    let stats = s.meshes[0].backends("web");
    assert_eq!(stats.iter().map(|b| b.total).sum::<u64>(), 10_000);
    wait_until("connections closed", Duration::from_secs(5), || {
        s.meshes[0].backends("web").iter().all(|b| b.active == 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_balances_10k_connections_within_10_percent() {
    balance_over_10k(31, Balance::RoundRobin, CopyMode::Splice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_balances_10k_connections_within_10_percent() {
    balance_over_10k(32, Balance::LeastConnections, CopyMode::Userspace { buffer: 64 * 1024 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_the_busy_backend() {
    let s = setup(
        33,
        2,
        1,
        MeshConfig { balance: Balance::LeastConnections, ..Default::default() },
        Duration::from_secs(1),
    )
    .await;
    let addr = s.addrs()[0];
    // Hold 5 connections open: they spread 3/2 or 2/3...
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut id = [0u8; 1];
        c.read_exact(&mut id).await.unwrap();
        held.push((id[0], c));
    }
    let on0 = held.iter().filter(|(i, _)| *i == 0).count();
    assert!(on0 == 2 || on0 == 3, "5 held connections spread evenly, got {on0} on backend 0");
    // ...then close those on backend 1: new ones go to backend 1 until even.
    held.retain(|(i, _)| *i == 0);
    wait_until("closes seen", Duration::from_secs(5), || {
        s.meshes[0].backends("web").iter().map(|b| b.active).sum::<usize>() == on0
    })
    .await;
    for _ in 0..on0 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut id = [0u8; 1];
        c.read_exact(&mut id).await.unwrap();
        assert_eq!(id[0], 1, "least connections picks the idle backend");
        held.push((id[0], c));
    }
}

/// A client loop through every node's mesh (in turn) records each
/// connection's start time and outcome.
fn client_loop(
    addrs: Vec<SocketAddr>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Instant, Result<u8, String>)>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let started = Instant::now();
            let r = ping(addrs[i % addrs.len()]).await.map_err(|e| e.to_string());
            out.push((started, r));
            i += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        out
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_loss_no_failed_connection_after_the_failover_window() {
    let s = setup(34, 3, 3, MeshConfig::default(), Duration::from_secs(1)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = client_loop(s.addrs(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // node-2 dies: its backend (slot 2) vanishes at once; the managers mark
    // the node down 200 ms later (a stand-in for the heartbeat grace).
    s.backends[1].stop();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    node_down(&s.store, "node-2").await;
    let down = Instant::now();
    wait_until("endpoint gone", Duration::from_secs(5), || {
        s.discovery.resolve("web").is_some_and(|e| e.endpoints.len() == 2)
    })
    .await;
    let window_end = down + Duration::from_secs(1);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let log = client.await.unwrap();

    let after: Vec<_> = log.iter().filter(|(t, _)| *t > window_end).collect();
    assert!(after.len() > 20, "the client kept going ({} after the window)", after.len());
    let failed_after: Vec<_> = after.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(failed_after.is_empty(), "failures after the failover window: {failed_after:?}");
    assert!(after.iter().all(|(_, r)| *r.as_ref().unwrap() != 1), "nothing reaches the dead backend");
    // Connects to the dead backend were retried elsewhere: even inside the
    // window no connection failed (only established ones could have).
    let failed_in_window = log.iter().filter(|(t, r)| *t > killed && *t <= window_end && r.is_err()).count();
    assert_eq!(failed_in_window, 0, "refused connects are retried on another backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_sees_no_failed_connection_and_drains() {
    let grace = Duration::from_millis(800);
    let s = setup(35, 3, 3, MeshConfig::default(), grace).await;
    let addr0 = s.addrs()[0];
    // A long-lived connection to whichever backend; it must survive its
    // backend's removal for the grace period, then be closed.
    let mut long = tokio::net::TcpStream::connect(addr0).await.unwrap();
    let mut id = [0u8; 1];
    long.read_exact(&mut id).await.unwrap();
    let long_backend = id[0] as usize;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = client_loop(s.addrs(), stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Roll slot by slot: start the new task, tell the old one to stop; the
    // old container keeps serving for its grace period, then exits.
    let mut new_backends = Vec::new();
    let mut drained_at = BTreeMap::new();
    for slot in 0..3usize {
        let ip = format!("127.0.35.{}", 20 + slot);
        new_backends.push(TcpBackend::start(&ip, TARGET, 10 + slot as u8).await);
        add_task(&s.store, "web", &format!("node-{}", slot % 3 + 1), slot as u64 + 1, &[("default", &ip)]).await;
        set_desired(&s.store, &s.tasks[slot], TaskState::Shutdown).await;
        // From the moment every node's mesh has applied the change.
        let old_task = s.tasks[slot].clone();
        wait_until("old task out of discovery", Duration::from_secs(5), || {
            s.discovery.resolve("web").is_some_and(|e| e.endpoints.iter().all(|e| e.task_id != old_task))
        })
        .await;
        for m in &s.meshes {
            assert!(m.synced(Duration::from_secs(5)).await);
        }
        let told = Instant::now();
        drained_at.insert(slot, told);
        if slot == long_backend {
            // Still open within the grace period.
            tokio::time::sleep(grace / 2).await;
            long.write_all(b"live").await.unwrap();
            let mut back = [0u8; 4];
            long.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"live", "an open connection keeps flowing while its task drains");
        }
        tokio::time::sleep(grace).await;
        s.backends[slot].stop();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let log = client.await.unwrap();

    assert!(log.len() > 100, "the client kept going ({})", log.len());
    let failed: Vec<_> = log.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(failed.is_empty(), "failed connections during the rolling update: {failed:?}");
    // No connection started after the meshes applied the stop reached the
    // old task.
    for (slot, told) in &drained_at {
        let late = log.iter().filter(|(t, r)| *t > *told && r.as_ref().ok() == Some(&(*slot as u8))).count();
        assert_eq!(late, 0, "old slot {slot} got {late} new connections after it was told to stop");
    }
    let tail: Vec<u8> = log.iter().rev().take(30).map(|(_, r)| *r.as_ref().unwrap()).collect();
    assert!(tail.iter().all(|i| *i >= 10), "only new tasks serve at the end: {tail:?}");
    // The long connection was closed by the mesh at the end of the drain.
    let mut buf = [0u8; 4];
    let r = tokio::time::timeout(Duration::from_secs(2), long.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(r, Ok(0) | Err(_)), "the drained connection is closed: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_are_forwarded_and_spread() {
    let s = setup(36, 3, 1, MeshConfig::default(), Duration::from_secs(1)).await;
    // UDP echo backends on the same addresses as the TCP ones.
    for i in 0..3u8 {
        udp_backend(&format!("127.0.36.{}", 10 + i), TARGET, i).await;
    }
    let mesh_addr = s.meshes[0].addr(Protocol::Udp, PUBLISHED).expect("udp port served");
    let mut seen = BTreeMap::new();
    for c in 0..6 {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for k in 0..3 {
            let msg = format!("hello {c} {k}");
            sock.send_to(msg.as_bytes(), mesh_addr).await.unwrap();
            let mut buf = [0u8; 1500];
            let n =
                tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await.expect("udp reply").unwrap();
            assert_eq!(&buf[1..n], msg.as_bytes());
            // One flow sticks to one backend.
            assert_eq!(*seen.entry(c).or_insert(buf[0]), buf[0]);
        }
    }
    let mut per_backend = [0; 3];
    for b in seen.values() {
        per_backend[*b as usize] += 1;
    }
    assert_eq!(per_backend, [2, 2, 2], "6 flows round-robin over 3 backends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_follow_the_services_and_bind_errors_are_reported() {
    let s = setup(37, 1, 1, MeshConfig::default(), Duration::from_secs(1)).await;
    let m = &s.meshes[0];
    assert_eq!(m.listening().len(), 2, "tcp and udp");
    // Occupy a port, then publish it: the mesh reports why it cannot serve.
    let _squatter = std::net::TcpListener::bind("127.0.37.1:30090").unwrap();
    let cluster = swarm_core::cluster::Cluster::new(s.store.clone() as Arc<dyn swarm_core::store::Store>);
    cluster
        .modify_service("web", |spec| {
            spec.endpoint_spec.ports =
                vec![PortConfig { target_port: TARGET as u32, published_port: Some(30090), ..Default::default() }];
        })
        .await
        .unwrap();
    wait_until("old ports closed", Duration::from_secs(5), || m.addr(Protocol::Tcp, PUBLISHED).is_none()).await;
    wait_until("bind error reported", Duration::from_secs(5), || !m.errors().is_empty()).await;
    let errs = m.errors();
    assert_eq!(errs[0].1, 30090);
    assert!(errs[0].2.contains("cannot listen on 127.0.37.1:30090/tcp for service \"web\""), "{errs:?}");
    assert!(ping(SocketAddr::from(([127, 0, 37, 1], PUBLISHED as u16))).await.is_err(), "unpublished port closed");
    cluster.remove_service("web").await.unwrap();
    wait_until("errors cleared", Duration::from_secs(5), || m.errors().is_empty() && m.listening().is_empty()).await;
}

async fn bulk_echo(block: u8, copy: CopyMode) {
    let s = setup(block, 1, 1, MeshConfig { copy, ..Default::default() }, Duration::from_secs(1)).await;
    let mut c = tokio::net::TcpStream::connect(s.addrs()[0]).await.unwrap();
    let mut id = [0u8; 1];
    c.read_exact(&mut id).await.unwrap();
    let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (mut r, mut w) = c.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap(); // half-close: the echo must still come back whole
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "{copy:?}: echoed bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfer_with_half_close_is_exact_with_splice() {
    bulk_echo(38, CopyMode::Splice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfer_with_half_close_is_exact_in_userspace() {
    bulk_echo(39, CopyMode::Userspace { buffer: 256 * 1024 }).await;
}
