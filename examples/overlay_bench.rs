//! Overlay networks vs the underlay, in one run: the kernel VXLAN overlay
//! (plaintext) and the encrypted overlay (VXLAN through the userspace AEAD
//! tunnel), task to task across two hosts, against the hosts talking
//! directly.
//!
//! Hosts are network namespaces on one underlay LAN (a bridge,
//! 10.251.<m>.0/24), each running the overlay plane
//! ([`swarm::net::overlay::Overlay`], views written by hand, the encrypted
//! network's key in the view as the managers send it; the plane runs the
//! tunnel, [`swarm::net::tunnel::Tunnel`]). Tasks
//! are namespaces whose `eth0` is plugged into the host's `swbr<vni>` with
//! the address, MAC and gateway the design gives them: one pair on a
//! plaintext network, one on an encrypted one (10.250.0.0/16, VNIs
//! 9000-9099). Task interfaces get the largest MTU their network allows:
//! underlay - 50 (plaintext), `overlay_mtu(underlay)` = underlay - 118
//! (encrypted). The whole run is repeated per underlay MTU (`--mtus`,
//! default 1500 and 9000).
//!
//! Measured for each path (underlay host to host, plaintext task to task,
//! encrypted task to task), the paths interleaved within each repetition:
//! TCP throughput (a bulk transfer of `--mib` MiB, `--reps` times,
//! median), connections per second (connect, 1-byte echo, close, for
//! `--seconds`), and request latency p50/p99 (1-byte ping-pong on one
//! connection, for `--seconds`).
//!
//! `sudo target/release/examples/overlay_bench [--mib 64] [--reps 3]
//! [--seconds 2] [--mtus 1500,9000]` (build it with `cargo build --release
//! --features net --example overlay_bench`). Needs root, iproute2,
//! iptables and /dev/net/tun; without them it says so and exits with 2.
//! Prints a table on stderr and ONE JSON object as the last stdout line:
//! the first MTU's figures and ratios at the top level, every MTU's under
//! `by_mtu`. MiB/s are 2^20 bytes per second. `SWBN_DIAG=1` adds each
//! host's UDP counters and TUN device statistics to the stderr report. Every namespace and
//! interface it makes starts with `swbn`; they are removed on exit, on
//! error and on SIGINT/SIGTERM.

mod bench_net;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use swarm::model::{NetworkKey, overlay_mac_string};
use swarm::net::netkeys::generate_secret;
use swarm::net::netns::{self, Lan, NetNs};
use swarm::net::overlay::{Overlay, OverlayConfig};
use swarm::net::tunnel::{TunnelConfig, overlay_mtu};
use swarm::overlay::{NetworkView, OverlayView};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::watch;

type Error = Box<dyn std::error::Error + Send + Sync>;

const SINK: u16 = 19101;
const ECHO: u16 = 19102;
/// Any one measurement's upper bound.
const LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
struct Options {
    mib: u64,
    reps: usize,
    seconds: f64,
    mtus: Vec<u32>,
}

fn options() -> Result<Options, String> {
    let mut o = Options { mib: 64, reps: 3, seconds: 2.0, mtus: vec![1500, 9000] };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--mib" => o.mib = value()?.parse().map_err(|e| format!("--mib: {e}"))?,
            "--reps" => o.reps = value()?.parse().map_err(|e| format!("--reps: {e}"))?,
            "--seconds" => o.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--mtus" => {
                o.mtus = value()?
                    .split(',')
                    .map(|m| m.trim().parse::<u32>().map_err(|e| format!("--mtus {m:?}: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "-h" | "--help" => {
                return Err("usage: overlay_bench [--mib N] [--reps N] [--seconds S] [--mtus 1500,9000]".into());
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    if o.mib == 0 || o.reps == 0 || o.seconds.is_nan() || o.seconds <= 0.0 || o.seconds > 30.0 {
        return Err("--mib and --reps must be at least 1, --seconds in (0, 30]".into());
    }
    if o.mtus.is_empty() || o.mtus.iter().any(|m| !(1280..=9000).contains(m)) {
        return Err("--mtus: underlay MTUs between 1280 and 9000".into());
    }
    if o.mtus.len() > 4 {
        return Err("--mtus: at most 4 MTUs".into());
    }
    Ok(o)
}

// ---------------------------------------------------------------------------
// The world: two hosts on a LAN, planes, tunnels, task namespaces.

/// Runs `f` on `rt`'s worker threads (so in its namespace) and waits.
fn on<T: Send + 'static>(rt: &Runtime, f: impl std::future::Future<Output = T> + Send + 'static) -> Result<T, Error> {
    Ok(rt.block_on(rt.spawn(f))?)
}

/// A host: its namespace, runtime and overlay plane (which runs the
/// tunnel of the encrypted network). Stops it on drop (the namespace goes
/// after).
struct Host {
    overlay: Option<Overlay>,
    views: watch::Sender<OverlayView>,
    rt: Option<Runtime>,
    ns: NetNs,
    addr: Ipv4Addr,
}

impl Host {
    fn start(lan: &Lan, prefix: &str, name: &str, addr: Ipv4Addr, mtu: u32) -> Result<Host, Error> {
        let ns = lan.host(name, &[&format!("{addr}/24")])?;
        // Both ends of the LAN veth and the LAN bridge at the underlay MTU.
        ns.ip(&["link", "set", "lan0", "mtu", &mtu.to_string()])?;
        netns::ip(&[
            "-n",
            &format!("{prefix}-lan"),
            "link",
            "set",
            &format!("{prefix}{name}"),
            "mtu",
            &mtu.to_string(),
        ])?;
        let rt = ns.runtime()?;
        let (views, rx) = watch::channel(OverlayView::default());
        let mut config = OverlayConfig::new(IpAddr::V4(addr));
        config.resync = Duration::from_secs(3600);
        config.mtu = Some(mtu - 50);
        let mut tconfig = TunnelConfig::new(addr);
        tconfig.underlay_mtu = mtu;
        config.tunnel = Some(tconfig);
        let mut host = Host { overlay: None, views, rt: Some(rt), ns, addr };
        host.overlay = Some(on(host.rt(), Overlay::start(rx, config))??);
        Ok(host)
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().expect("the runtime lives as long as the host")
    }

    fn set(&self, view: OverlayView) -> Result<(), Error> {
        self.views.send_replace(view.clone());
        let overlay = self.overlay.as_ref().ok_or("no overlay plane")?;
        if !self.rt().block_on(overlay.synced(&view, Duration::from_secs(10))) {
            return Err(format!("{}: view not applied: {:?}", self.ns.name(), overlay.errors()).into());
        }
        Ok(())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            if let Some(o) = self.overlay.take() {
                if let Err(e) = rt.block_on(rt.spawn(o.stop())).map_err(Error::from).and_then(|r| Ok(r?)) {
                    eprintln!("warning: {}: overlay stop: {e}", self.ns.name());
                }
            }
            rt.shutdown_background();
        }
    }
}

/// A task: a namespace whose `eth0` is plugged into its host's bridge.
struct Task {
    rt: Option<Runtime>,
    /// Deleted on drop, after the runtime.
    _ns: NetNs,
    ip: Ipv4Addr,
}

impl Task {
    fn plug(
        prefix: &str,
        host: &Host,
        name: &str,
        vni: u32,
        ip: Ipv4Addr,
        gateway: Ipv4Addr,
        mtu: u32,
    ) -> Result<Task, Error> {
        let ns = NetNs::create(format!("{prefix}-{name}"))?;
        let outer = format!("{prefix}{name}");
        let mtu = mtu.to_string();
        #[rustfmt::skip]
        netns::ip(&["link", "add", &outer, "netns", host.ns.name(), "mtu", &mtu, "type", "veth",
            "peer", "name", "eth0", "netns", ns.name(), "mtu", &mtu])?;
        host.ns.ip(&["link", "set", &outer, "master", &format!("swbr{vni}"), "up"])?;
        ns.ip(&["link", "set", "eth0", "address", &overlay_mac_string(ip)])?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
        let rt = ns.runtime()?;
        Ok(Task { rt: Some(rt), _ns: ns, ip })
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().expect("the runtime lives as long as the task")
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn network(vni: u32, third: u8, keys: &[NetworkKey], local: Ipv4Addr, remote: (Ipv4Addr, Ipv4Addr)) -> NetworkView {
    NetworkView {
        name: format!("swbn{vni}"),
        vni,
        subnet: format!("10.250.{third}.0/24"),
        gateway: format!("10.250.{third}.1"),
        encrypted: !keys.is_empty(),
        keys: keys.to_vec(),
        local: [local].into(),
        remote: [(remote.0, IpAddr::V4(remote.1))].into(),
        ..Default::default()
    }
}

/// Everything of one underlay MTU; fields drop in order: tasks, hosts
/// (planes and tunnels stopped), then the LAN.
struct World {
    tasks: BTreeMap<&'static str, Task>,
    hosts: Vec<Host>,
    _lan: Lan,
}

fn build(prefix: &str, m: u8, mtu: u32) -> Result<World, Error> {
    let lan = Lan::create(prefix)?;
    let (u1, u2) = (Ipv4Addr::new(10, 251, m, 1), Ipv4Addr::new(10, 251, m, 2));
    let mut world = World { tasks: BTreeMap::new(), hosts: Vec::new(), _lan: lan };
    world.hosts.push(Host::start(&world._lan, prefix, "h1", u1, mtu)?);
    world.hosts.push(Host::start(&world._lan, prefix, "h2", u2, mtu)?);
    let (plain, enc) = (9000 + 2 * u32::from(m), 9001 + 2 * u32::from(m));
    let (pt, et) = (2 * m, 2 * m + 1);
    let ip = |third: u8, i: u8| Ipv4Addr::new(10, 250, third, i);
    // As the managers' key controller makes it (swarm_net::netkeys).
    let keys = [NetworkKey { id: 1, secret: generate_secret()?, created: Default::default(), current: true }];
    for (i, host) in world.hosts.iter().enumerate() {
        let other = world.hosts[1 - i].addr;
        let (me, peer) = (10 + i as u8, 11 - i as u8);
        let view = OverlayView {
            networks: [
                (plain, network(plain, pt, &[], ip(pt, me), (ip(pt, peer), other))),
                (enc, network(enc, et, &keys, ip(et, me), (ip(et, peer), other))),
            ]
            .into(),
        };
        host.set(view)?;
    }
    let [h1, h2] = &world.hosts[..] else { unreachable!("two hosts") };
    let (pm, em) = (mtu - 50, overlay_mtu(mtu));
    world.tasks.insert("pa", Task::plug(prefix, h1, "pa", plain, ip(pt, 10), ip(pt, 1), pm)?);
    world.tasks.insert("pb", Task::plug(prefix, h2, "pb", plain, ip(pt, 11), ip(pt, 1), pm)?);
    world.tasks.insert("ea", Task::plug(prefix, h1, "ea", enc, ip(et, 10), ip(et, 1), em)?);
    world.tasks.insert("eb", Task::plug(prefix, h2, "eb", enc, ip(et, 11), ip(et, 1), em)?);
    Ok(world)
}

// ---------------------------------------------------------------------------
// Workloads

/// The sink and the echo server on `ip`.
async fn serve(ip: Ipv4Addr) -> std::io::Result<()> {
    bench_net::sink_and_echo(ip.into(), SINK, ECHO).await
}

/// MiB/s streaming `mib` MiB to the sink at `ip`, its answer included.
async fn throughput(ip: Ipv4Addr, mib: u64) -> std::io::Result<f64> {
    let bytes = mib << 20;
    let started = Instant::now();
    let mut s = TcpStream::connect((ip, SINK)).await?;
    let chunk = vec![0x5au8; 1 << 18];
    let mut sent = 0u64;
    while sent < bytes {
        let n = chunk.len().min((bytes - sent) as usize);
        s.write_all(&chunk[..n]).await?;
        sent += n as u64;
    }
    s.shutdown().await?;
    let mut got = [0u8; 8];
    s.read_exact(&mut got).await?;
    let took = started.elapsed().as_secs_f64();
    if u64::from_be_bytes(got) != bytes {
        return Err(std::io::Error::other(format!("sink counted {} of {bytes} bytes", u64::from_be_bytes(got))));
    }
    Ok(mib as f64 / took)
}

/// Connections per second: connect, 1-byte echo, close, for `secs`.
async fn conn_per_sec(ip: Ipv4Addr, secs: f64) -> std::io::Result<f64> {
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while Instant::now() < until {
        let mut s = TcpStream::connect((ip, ECHO)).await?;
        s.set_nodelay(true)?;
        s.write_all(b"c").await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        drop(s);
        n += 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Round-trip times (µs) of 1-byte ping-pongs on one connection for `secs`.
async fn latencies(ip: Ipv4Addr, secs: f64) -> std::io::Result<Vec<f64>> {
    let mut s = TcpStream::connect((ip, ECHO)).await?;
    s.set_nodelay(true)?;
    let mut b = [0u8; 1];
    for _ in 0..50 {
        s.write_all(b"p").await?;
        s.read_exact(&mut b).await?;
    }
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut rtts = Vec::new();
    while Instant::now() < until {
        let t = Instant::now();
        s.write_all(b"p").await?;
        s.read_exact(&mut b).await?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(rtts)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

#[derive(Clone, Debug, Default)]
struct Figures {
    mibps: Vec<f64>,
    cps: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Figures {
    fn mibps(&self) -> f64 {
        median(self.mibps.clone())
    }
}

/// Runs `f` on `rt` within [`LIMIT`].
fn timed<T: Send + 'static>(
    rt: &Runtime,
    what: &str,
    f: impl std::future::Future<Output = std::io::Result<T>> + Send + 'static,
) -> Result<T, Error> {
    match on(rt, async move { tokio::time::timeout(LIMIT, f).await })? {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(format!("{what}: {e}").into()),
        Err(_) => Err(format!("{what}: no result within {LIMIT:?}").into()),
    }
}

const PATHS: [&str; 3] = ["underlay", "overlay", "encrypted"];

/// The three paths' figures (in [`PATHS`] order) for the world's MTU.
fn measure(world: &World, o: &Options) -> Result<Vec<Figures>, Error> {
    let (h1, h2) = (&world.hosts[0], &world.hosts[1]);
    let t = |k: &str| world.tasks.get(k).ok_or_else(|| format!("no task {k}"));
    let (pa, pb, ea, eb) = (t("pa")?, t("pb")?, t("ea")?, t("eb")?);
    // (client runtime, server address) per path.
    let paths: [(&Runtime, Ipv4Addr); 3] = [(h1.rt(), h2.addr), (pa.rt(), pb.ip), (ea.rt(), eb.ip)];
    on(h2.rt(), serve(h2.addr))??;
    on(pb.rt(), serve(pb.ip))??;
    on(eb.rt(), serve(eb.ip))??;
    let mut figures = vec![Figures::default(); 3];
    // Warm-up: neighbours resolved, the tunnel's peer state created.
    for (i, (rt, ip)) in paths.iter().enumerate() {
        timed(rt, &format!("{} warm-up", PATHS[i]), throughput(*ip, 1))?;
    }
    for rep in 0..o.reps {
        for (i, (rt, ip)) in paths.iter().enumerate() {
            let m = timed(rt, &format!("{} throughput", PATHS[i]), throughput(*ip, o.mib))?;
            eprintln!("  rep {}: {:<9} {m:>8.1} MiB/s", rep + 1, PATHS[i]);
            figures[i].mibps.push(m);
        }
    }
    for (i, (rt, ip)) in paths.iter().enumerate() {
        figures[i].cps = timed(rt, &format!("{} connections", PATHS[i]), conn_per_sec(*ip, o.seconds))?;
        let mut rtts = timed(rt, &format!("{} latency", PATHS[i]), latencies(*ip, o.seconds))?;
        rtts.sort_by(f64::total_cmp);
        figures[i].p50_us = percentile(&rtts, 0.5);
        figures[i].p99_us = percentile(&rtts, 0.99);
    }
    for h in [h1, h2] {
        if let Some(s) = h.overlay.as_ref().and_then(Overlay::tunnel_stats) {
            let dropped: BTreeMap<String, u64> =
                s.dropped.iter().filter(|(_, n)| **n > 0).map(|(r, n)| (format!("{r:?}"), *n)).collect();
            eprintln!("  {}: tunnel sealed {} opened {} dropped {dropped:?}", h.ns.name(), s.sealed, s.opened);
        }
        if std::env::var_os("SWBN_DIAG").is_some() {
            let snmp = h.ns.exec("cat", &["/proc/net/snmp"]).unwrap_or_default();
            let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
            let link = h.ns.exec("ip", &["-s", "link", "show", "swtun0"]).unwrap_or_default();
            eprintln!("  {}: {udp:?}\n{link}", h.ns.name());
        }
    }
    Ok(figures)
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn report(mtu: u32, f: &[Figures]) -> serde_json::Value {
    let (u, p, e) = (&f[0], &f[1], &f[2]);
    let path = |x: &Figures| {
        serde_json::json!({
            "mibps": r1(x.mibps()),
            "mibps_reps": x.mibps.iter().map(|m| r1(*m)).collect::<Vec<_>>(),
            "conn_per_sec": x.cps.round(),
            "rtt_p50_us": r1(x.p50_us),
            "rtt_p99_us": r1(x.p99_us),
        })
    };
    serde_json::json!({
        "underlay_mtu": mtu,
        "overlay_mtu": mtu - 50,
        "encrypted_mtu": overlay_mtu(mtu),
        "underlay": path(u),
        "overlay": path(p),
        "encrypted": path(e),
        "overlay_throughput_ratio": r3(p.mibps() / u.mibps()),
        "encrypted_throughput_ratio": r3(e.mibps() / u.mibps()),
        "overlay_conn_per_sec_ratio": r3(p.cps / u.cps),
        "encrypted_conn_per_sec_ratio": r3(e.cps / u.cps),
        "overlay_added_p50_us": r1(p.p50_us - u.p50_us),
        "overlay_added_p99_us": r1(p.p99_us - u.p99_us),
        "encrypted_added_p50_us": r1(e.p50_us - u.p50_us),
        "encrypted_added_p99_us": r1(e.p99_us - u.p99_us),
    })
}

fn table(mtu: u32, f: &[Figures]) {
    eprintln!("underlay MTU {mtu} (overlay {}, encrypted {}):", mtu - 50, overlay_mtu(mtu));
    eprintln!("  {:<10} {:>10} {:>7} {:>10} {:>10} {:>9}", "path", "MiB/s", "ratio", "conn/s", "p50 µs", "p99 µs");
    let base = f[0].mibps();
    for (name, x) in PATHS.iter().zip(f) {
        eprintln!(
            "  {:<10} {:>10.1} {:>7.3} {:>10.0} {:>10.1} {:>9.1}",
            name,
            x.mibps(),
            x.mibps() / base,
            x.cps,
            x.p50_us,
            x.p99_us
        );
    }
}

/// Deletes every namespace whose name starts with `prefix` (the signal
/// path, where the guards do not run).
fn remove_namespaces(prefix: &str) {
    if let Ok(out) = std::process::Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = line.split_whitespace().next().filter(|n| n.starts_with(prefix)) {
                let _ = netns::ip(&["netns", "del", name]);
            }
        }
    }
}

fn main() {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("overlay_bench: {e}");
            std::process::exit(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("overlay_bench: needs root (network namespaces, VXLAN, TUN, iptables); run it with sudo");
        std::process::exit(2);
    }
    let tun = std::fs::metadata("/dev/net/tun").map(drop).map_err(|e| format!("/dev/net/tun: {e}"));
    if let Err(why) = netns::available().and(tun) {
        eprintln!("overlay_bench: cannot run here: {why}");
        std::process::exit(2);
    }
    let prefix = format!("swbn{}", std::process::id() % 1000);
    {
        // SIGINT/SIGTERM: the guards would not run, so remove the
        // namespaces (and with them every interface, rule and tunnel).
        let prefix = prefix.clone();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
                    return;
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                eprintln!("overlay_bench: interrupted, cleaning up");
                remove_namespaces(&prefix);
                std::process::exit(130);
            });
        });
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "overlay_bench: {} MiB x {} reps, {} s per cps/latency run, underlay MTUs {:?}; load {}",
        o.mib,
        o.reps,
        o.seconds,
        o.mtus,
        load.trim()
    );
    let started = Instant::now();
    let mut by_mtu = Vec::new();
    for (m, mtu) in o.mtus.iter().enumerate() {
        let run = (|| {
            let world = build(&format!("{prefix}{m}"), m as u8, *mtu)?;
            measure(&world, &o)
        })();
        match run {
            Ok(f) => {
                table(*mtu, &f);
                by_mtu.push(report(*mtu, &f));
            }
            Err(e) => {
                eprintln!("overlay_bench: underlay MTU {mtu}: {e}");
                remove_namespaces(&prefix);
                std::process::exit(1);
            }
        }
    }
    let mut json = by_mtu[0].clone();
    if let Some(obj) = json.as_object_mut() {
        obj.insert("by_mtu".into(), serde_json::Value::Array(by_mtu));
        obj.insert("mib".into(), o.mib.into());
        obj.insert("reps".into(), o.reps.into());
        obj.insert("seconds".into(), o.seconds.into());
        obj.insert("load_before".into(), load.trim().into());
        let after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        obj.insert("load_after".into(), after.trim().into());
        obj.insert("elapsed_s".into(), r1(started.elapsed().as_secs_f64()).into());
    }
    println!("{json}");
}
