//! Routing mesh vs a direct connection, on loopback, in one run.
//!
//! A backend on 127.0.0.2 serves three things: a sink (throughput: the
//! client streams bytes, the backend counts them and acks at the end), a
//! one-byte echo (latency, on one kept connection), and a connect-echo-close
//! (connections per second). Each is run directly against the backend and
//! through the routing mesh in each of its data paths: the userspace
//! [`swarm::net::mesh::Mesh`] on 127.0.0.1 (splice(2)) and 127.0.0.3
//! (userspace copy), and, when run as root with iptables, the kernel
//! [`swarm::net::kernel::KernelMesh`] (iptables DNAT) reached at 127.0.0.4.
//! Every mesh follows a `MemDiscovery` of a store holding one task at the
//! backend's address. As root the whole bench runs in a private network
//! namespace (its own loopback and iptables), so the machine's rules are
//! untouched, and a second part measures across hosts: client, node and
//! backend in three namespaces on a bridge (`remote` in the JSON), and a
//! third the cost of one rule update at scale (`rules`).
//!
//! `cargo run --release --features net --example mesh_bench [-- --quick]`
//! prints progress on stderr and ONE JSON object as the last stdout line:
//! mesh_mode (the headline mode: iptables when it could run, else splice),
//! direct_mbps, mesh_mbps, throughput_ratio, conn_per_sec_ratio,
//! added_p50_us, added_p99_us for that mode, and `modes` with the same
//! figures for every mode measured. MB/s are 10^6 bytes per second; medians
//! of the repeats, the targets interleaved within each repeat.

mod bench_net;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm::cluster::Cluster;
use swarm::discovery::{Discovery, MemDiscovery};
use swarm::model::*;
use swarm::net::kernel::{KernelConfig, KernelMesh, Rules, render, restore_input};
use swarm::net::mesh::{CopyMode, Mesh, MeshConfig};
use swarm::net::netns::{self, Lan};
use swarm::net::workload;
use swarm::state::Transaction;
use swarm::store::{MemStore, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SINK: u16 = 19001;
const ECHO: u16 = 19002;
async fn backend(ip: &str) -> std::io::Result<()> {
    let ip: std::net::IpAddr = ip.parse().map_err(std::io::Error::other)?;
    bench_net::sink_and_echo(ip, SINK, ECHO).await
}

/// MB/s streaming `bytes` one way, ack included.
async fn throughput(addr: SocketAddr, bytes: u64) -> std::io::Result<f64> {
    let mut s = TcpStream::connect(addr).await?;
    let chunk = vec![7u8; 1 << 20];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        s.write_all(&chunk).await?;
        sent += chunk.len() as u64;
    }
    s.shutdown().await?;
    let got = s.read_u64().await?;
    let secs = start.elapsed().as_secs_f64();
    if got != sent {
        return Err(std::io::Error::other(format!("sink got {got} of {sent} bytes")));
    }
    Ok(sent as f64 / secs / 1e6)
}

/// Round-trip times (µs) of `n` one-byte pings on one connection.
async fn rtts(addr: SocketAddr, n: usize) -> std::io::Result<Vec<f64>> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut out = Vec::with_capacity(n);
    let mut b = [0u8; 1];
    for _ in 0..n + 200 {
        let t = Instant::now();
        s.write_all(b"x").await?;
        s.read_exact(&mut b).await?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out.split_off(200)) // drop the warm-up
}

/// Connections per second: connect, one echo, close; `conc` clients.
async fn conn_rate(addr: SocketAddr, total: usize, conc: usize) -> std::io::Result<f64> {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conc {
        set.spawn(async move {
            for _ in 0..total / conc {
                let mut s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                s.write_all(b"x").await?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await?;
            }
            Ok::<_, std::io::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(std::io::Error::other)??;
    }
    Ok((total / conc * conc) as f64 / start.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

struct Figures {
    mbps: f64,
    conn_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Measures every target, interleaved: each repeat runs every target in
/// turn, so load drift on a shared machine hits them alike. Returns one
/// `Figures` per target: medians over the repeats (throughput, connection
/// rate) and percentiles over all pings of a target.
async fn measure(targets: &[(&str, SocketAddr, SocketAddr)], quick: bool) -> std::io::Result<Vec<Figures>> {
    let (bytes, reps, pings, conns) =
        if quick { (256 << 20, 3, 5_000, 2_000) } else { (512 << 20, 15, 30_000, 15_000) };
    let k = targets.len();
    let (mut mbps, mut rates, mut rtt) = (vec![Vec::new(); k], vec![Vec::new(); k], vec![Vec::new(); k]);
    for _ in 0..reps {
        for (i, (name, sink, echo)) in targets.iter().enumerate() {
            let ctx = |phase: &str| {
                let phase = phase.to_string();
                move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{name} {phase}: {e}"))
            };
            mbps[i].push(throughput(*sink, bytes).await.map_err(ctx("throughput"))?);
            rates[i].push(conn_rate(*echo, conns / reps, 4).await.map_err(ctx("connection rate"))?);
            rtt[i].extend(rtts(*echo, pings / reps).await.map_err(ctx("latency"))?);
        }
    }
    let mut out = Vec::new();
    for (i, (name, _, _)) in targets.iter().enumerate() {
        let f = Figures {
            mbps: median(mbps[i].clone()),
            conn_per_sec: median(rates[i].clone()),
            p50_us: pct(&rtt[i], 0.5),
            p99_us: pct(&rtt[i], 0.99),
        };
        eprintln!(
            "{name:>10}: {:>8.0} MB/s  {:>7.0} conn/s  rtt p50 {:>6.1} µs  p99 {:>6.1} µs",
            f.mbps, f.conn_per_sec, f.p50_us, f.p99_us
        );
        out.push(f);
    }
    Ok(out)
}

async fn mesh_on(store: &Arc<MemStore>, ip: [u8; 4], copy: CopyMode) -> Result<Mesh, Box<dyn std::error::Error>> {
    let mesh = Mesh::start(follow(store), MeshConfig { listen_ip: ip.into(), copy, ..Default::default() });
    let deadline = Instant::now() + Duration::from_secs(5);
    while mesh.listening().len() < 2 {
        if Instant::now() > deadline {
            return Err(format!("mesh did not open its ports: {:?}", mesh.errors()).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(mesh)
}

fn follow(store: &Arc<MemStore>) -> Arc<dyn Discovery> {
    let discovery = MemDiscovery::new();
    let (d, s) = (discovery.clone(), store.clone());
    tokio::spawn(async move { d.follow(s.as_ref()).await });
    Arc::new(discovery)
}

/// One service publishing the backend's ports as `offset + port`, one
/// task at `task_ip`.
async fn service(
    store: &Arc<MemStore>,
    name: &str,
    offset: u16,
    task_ip: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let cluster = Cluster::new(store.clone() as Arc<dyn Store>);
    let mut spec = ServiceSpec::replicated(name, "bench:1", 1);
    spec.endpoint_spec.ports = [SINK, ECHO]
        .iter()
        .map(|p| PortConfig {
            target_port: *p as u32,
            published_port: Some((*p + offset) as u32),
            ..Default::default()
        })
        .collect();
    let svc = cluster.create_service(spec).await?;
    let state = store.state();
    let task = Task {
        id: format!("{name}-1").into(),
        service_id: svc.clone(),
        service_name: name.into(),
        slot: Some(1),
        node_id: Some("node-1".into()),
        spec: state.service(&svc).map(|s| s.spec.task_template.clone()).unwrap_or_default(),
        desired_state: TaskState::Running,
        status: TaskStatus { state: TaskState::Running, ..Default::default() },
        networks: vec![NetworkAttachment { network: "default".into(), addresses: vec![task_ip.into()], overlay: None }],
        ..Default::default()
    };
    store.commit(Transaction::new().create(task)).await?;
    Ok(())
}

/// Two stores: "bench" for the userspace meshes (ports +1000), "kbench"
/// for the kernel one (+2000), each with one task at `task_ip`.
async fn stores(task_ip: &str) -> Result<(Arc<MemStore>, Arc<MemStore>), Box<dyn std::error::Error>> {
    let store = Arc::new(MemStore::new());
    let kstore = Arc::new(MemStore::new());
    for s in [&store, &kstore] {
        s.commit(Transaction::new().create(Node::ready("node-1", "host-1", Resources::default()))).await?;
    }
    service(&store, "bench", 1000, task_ip).await?;
    service(&kstore, "kbench", 2000, task_ip).await?;
    Ok((store, kstore))
}

fn ratios(f: &Figures, direct: &Figures) -> serde_json::Value {
    serde_json::json!({
        "mbps": f.mbps.round(),
        "throughput_ratio": (f.mbps / direct.mbps * 1000.0).round() / 1000.0,
        "conn_per_sec": f.conn_per_sec.round(),
        "conn_per_sec_ratio": (f.conn_per_sec / direct.conn_per_sec * 1000.0).round() / 1000.0,
        "rtt_p50_us": (f.p50_us * 10.0).round() / 10.0,
        "rtt_p99_us": (f.p99_us * 10.0).round() / 10.0,
        "added_p50_us": ((f.p50_us - direct.p50_us) * 10.0).round() / 10.0,
        "added_p99_us": ((f.p99_us - direct.p99_us) * 10.0).round() / 10.0,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    // The kernel mesh needs iptables: run the whole bench (every target,
    // so they stay comparable) in a private network namespace, leaving the
    // machine's own rules alone. Without root, the userspace modes only.
    let kernel = netns::available().and_then(|()| netns::unshare_current_thread().map_err(|e| e.to_string()));
    if let Err(why) = &kernel {
        eprintln!("kernel mesh not measured: {why}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let remote = match &kernel {
        Ok(()) => Some(rt.block_on(remote(quick))?),
        Err(_) => None,
    };
    let rules = match &kernel {
        Ok(()) => Some(rules_at_scale(quick)?),
        Err(_) => None,
    };
    rt.block_on(run(quick, kernel, remote, rules))
}

/// Runs `iptables-restore --noflush` on `input`; its wall time in ms.
fn restore(input: &str) -> Result<f64, Box<dyn std::error::Error>> {
    use std::io::Write;
    let start = Instant::now();
    let mut child = std::process::Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().ok_or("no stdin")?.write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("iptables-restore: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// The cost of one kernel-mesh update at scale, in this private namespace:
/// the rules of 1,000 services x 10 endpoints (200 with --quick) loaded
/// from nothing, then a change of one endpoint of one service applied as
/// the mesh does (only the changed chains) and as a full rewrite of every
/// chain, alternately, 7 times each (medians). Render time (CPU) included.
fn rules_at_scale(quick: bool) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let (n, reps) = if quick { (200, 3) } else { (1_000, 7) };
    let config = KernelConfig { chain_prefix: "SCALE".into(), ..Default::default() };
    let base = workload::services(n, 10, 0);
    let mut one = base.clone();
    if let Some(e) = one[0].endpoints.last_mut() {
        e.addr = [10, 200, 0, 2].into();
    }
    let (a, b) = (render(&base, &config), render(&one, &config));
    let empty = Rules::default();
    let initial_ms = restore(&restore_input(&empty, &a, true))?;
    let (mut incremental, mut full) = (Vec::new(), Vec::new());
    // The two states, and which one is in force; each step moves to the
    // other one.
    let states = [(&base, &a), (&one, &b)];
    let mut at = 0;
    for _ in 0..reps {
        for full_rewrite in [false, true] {
            let to = 1 - at;
            let t = Instant::now();
            let input = restore_input(states[at].1, &render(states[to].0, &config), full_rewrite);
            let ms = t.elapsed().as_secs_f64() * 1e3 + restore(&input)?;
            if full_rewrite {
                full.push(ms);
            } else {
                incremental.push(ms);
            }
            at = to;
        }
    }
    restore(&restore_input(states[at].1, &empty, true))?;
    let (inc, ful) = (median(incremental), median(full));
    eprintln!(
        "rules: {} nat lines for {n} services; load {initial_ms:.0} ms; one-endpoint update {inc:.1} ms (changed chains) vs {ful:.1} ms (every chain)",
        a.nat.len()
    );
    Ok(serde_json::json!({
        "services": n,
        "endpoints_per_service": 10,
        "nat_lines": a.nat.len(),
        "initial_load_ms": (initial_ms * 10.0).round() / 10.0,
        "one_endpoint_update_ms": (inc * 10.0).round() / 10.0,
        "full_rewrite_update_ms": (ful * 10.0).round() / 10.0,
    }))
}

/// Across hosts: a client, a node and a backend in three network
/// namespaces on one bridge (veth pairs), so the mesh's traffic is
/// forwarded and masqueraded as between machines. Direct: client ->
/// backend (one hop); mesh: client -> node -> backend (two hops).
async fn remote(quick: bool) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let lan = Lan::create(format!("mb{}", std::process::id()))?;
    let hosts = [
        lan.host("c", &["10.78.0.1/24"])?,
        lan.host("n", &["10.78.0.2/24", "10.78.0.4/24", "10.78.0.5/24"])?,
        lan.host("b", &["10.78.0.3/24"])?,
    ];
    // The userspace meshes open one upstream connection per client
    // connection, and close it first (TIME_WAIT on the node): tens of
    // thousands of short connections to one backend exhaust the node's
    // ephemeral ports unless TIME_WAIT ports may be reused, which Linux
    // allows by default on loopback only. A proxy node is tuned so.
    hosts[1].exec("sysctl", &["-q", "-w", "net.ipv4.tcp_tw_reuse=1"])?;
    let rts = hosts.iter().map(|h| h.runtime()).collect::<Result<Vec<_>, _>>()?;
    let (client, node, back) = (&rts[0], &rts[1], &rts[2]);
    back.spawn(backend("10.78.0.3")).await??;
    let (store, kstore) = stores("10.78.0.3").await?;
    let result = async {
        let (s1, s2) = (store.clone(), store.clone());
        // The userspace meshes listen on the node's second and third
        // addresses; the kernel one answers on its first.
        let splice = node
            .spawn(async move { mesh_on(&s1, [10, 78, 0, 4], CopyMode::Splice).await.map_err(|e| e.to_string()) })
            .await??;
        let user = node
            .spawn(async move {
                mesh_on(&s2, [10, 78, 0, 5], CopyMode::Userspace { buffer: 256 * 1024 })
                    .await
                    .map_err(|e| e.to_string())
            })
            .await??;
        let k = kstore.clone();
        let kmesh = node
            .spawn(async move {
                let m = KernelMesh::start(follow(&k), KernelConfig { vips: false, ..Default::default() }).await?;
                let synced = m.synced(Duration::from_secs(5)).await;
                Ok::<_, swarm::net::kernel::KernelError>((m, synced))
            })
            .await??;
        if !kmesh.1 {
            return Err(format!("kernel mesh did not sync: {:?}", kmesh.0.errors()).into());
        }
        let at = |ip: [u8; 4], port: u16| SocketAddr::from((ip, port));
        let targets = vec![
            ("remote direct", at([10, 78, 0, 3], SINK), at([10, 78, 0, 3], ECHO)),
            ("remote splice", at([10, 78, 0, 4], SINK + 1000), at([10, 78, 0, 4], ECHO + 1000)),
            ("remote userspace", at([10, 78, 0, 5], SINK + 1000), at([10, 78, 0, 5], ECHO + 1000)),
            ("remote iptables", at([10, 78, 0, 2], SINK + 2000), at([10, 78, 0, 2], ECHO + 2000)),
        ];
        let t = targets.clone();
        let figures = client.spawn(async move { measure(&t, quick).await.map_err(|e| e.to_string()) }).await??;
        splice.stop();
        user.stop();
        node.spawn(kmesh.0.stop()).await??;
        let direct = &figures[0];
        let mut modes = serde_json::Map::new();
        for ((name, _, _), f) in targets.iter().zip(&figures).skip(1) {
            modes.insert(name.trim_start_matches("remote ").to_string(), ratios(f, direct));
        }
        Ok::<_, Box<dyn std::error::Error>>(serde_json::json!({
            "direct_mbps": direct.mbps.round(),
            "direct_conn_per_sec": direct.conn_per_sec.round(),
            "direct_rtt_p50_us": (direct.p50_us * 10.0).round() / 10.0,
            "direct_rtt_p99_us": (direct.p99_us * 10.0).round() / 10.0,
            "modes": modes,
        }))
    }
    .await;
    for rt in rts {
        rt.shutdown_background();
    }
    result
}

async fn run(
    quick: bool,
    kernel: Result<(), String>,
    remote: Option<serde_json::Value>,
    rules: Option<serde_json::Value>,
) -> Result<(), Box<dyn std::error::Error>> {
    backend("127.0.0.2").await?;
    // Two stores: "bench" for the userspace meshes (ports +1000), "kbench"
    // for the kernel one (+2000). The kernel mesh programs every ingress
    // port it is told of on every local address, so it must not see the
    // userspace meshes' service (it would take their connections).
    let (store, kstore) = stores("127.0.0.2").await?;

    let splice = mesh_on(&store, [127, 0, 0, 1], CopyMode::Splice).await?;
    let user = mesh_on(&store, [127, 0, 0, 3], CopyMode::Userspace { buffer: 256 * 1024 }).await?;
    let at = |ip: [u8; 4], port: u16| SocketAddr::from((ip, port));
    let mut targets = vec![
        ("direct", at([127, 0, 0, 2], SINK), at([127, 0, 0, 2], ECHO)),
        ("splice", at([127, 0, 0, 1], SINK + 1000), at([127, 0, 0, 1], ECHO + 1000)),
        ("userspace", at([127, 0, 0, 3], SINK + 1000), at([127, 0, 0, 3], ECHO + 1000)),
    ];
    let kmesh = match kernel {
        Ok(()) => {
            let config = KernelConfig { vips: false, enable_forwarding: false, ..Default::default() };
            let m = KernelMesh::start(follow(&kstore), config).await?;
            if !m.synced(Duration::from_secs(5)).await {
                return Err(format!("kernel mesh did not sync: {:?}", m.errors()).into());
            }
            targets.push(("iptables", at([127, 0, 0, 4], SINK + 2000), at([127, 0, 0, 4], ECHO + 2000)));
            Some(m)
        }
        Err(_) => None,
    };

    let figures = measure(&targets, quick).await?;
    splice.stop();
    user.stop();
    if let Some(m) = kmesh {
        m.stop().await?;
    }
    let direct = &figures[0];
    let mut modes = serde_json::Map::new();
    for ((name, _, _), f) in targets.iter().zip(&figures).skip(1) {
        modes.insert(name.to_string(), ratios(f, direct));
    }
    // The headline is the mode a node would use: the kernel data path when
    // it could run, else splice.
    let head_name = if modes.contains_key("iptables") { "iptables" } else { "splice" };
    let head = &modes[head_name];
    let json = serde_json::json!({
        "mesh_mode": head_name,
        "direct_mbps": direct.mbps.round(),
        "mesh_mbps": head["mbps"],
        "throughput_ratio": head["throughput_ratio"],
        "conn_per_sec_ratio": head["conn_per_sec_ratio"],
        "added_p50_us": head["added_p50_us"],
        "added_p99_us": head["added_p99_us"],
        "direct_conn_per_sec": direct.conn_per_sec.round(),
        "direct_rtt_p50_us": (direct.p50_us * 10.0).round() / 10.0,
        "direct_rtt_p99_us": (direct.p99_us * 10.0).round() / 10.0,
        "modes": modes,
        "remote": remote,
        "rules": rules,
        "quick": quick,
    });
    println!("{json}");
    Ok(())
}
