//! The overlay data plane for real: "hosts" are network namespaces on one
//! underlay LAN (10.211.0.0/24), each running an [`Overlay`] in its
//! namespace; "tasks" are small namespaces whose `eth0` is a veth enslaved
//! to the host's `swbr<vni>`, with the address, MAC (`overlay_mac`) and
//! default route (the gateway) the design gives them. Needs root, iproute2,
//! iptables and busybox (ping): skipped without them (recorded), failing
//! under CI. Every namespace and interface starts with `swov`.
#![cfg(target_os = "linux")]

mod overlay_support;

use overlay_support::{on, view, wait_until};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm_conformance::skip::skip;
use swarm_core::model::overlay_mac_string;
use swarm_core::overlay::{NetworkView, OverlayView};
use swarm_net::netns::{self, Lan, NetNs};
use swarm_net::overlay::{Overlay, OverlayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::sync::watch;

/// False (after a recorded skip) when namespaces, iptables or busybox
/// cannot be used here; panics instead under CI.
fn can_run() -> bool {
    let busybox = std::process::Command::new("busybox").arg("true").output().map(|o| o.status.success());
    match (netns::available(), busybox) {
        (Ok(()), Ok(true)) => true,
        (Err(why), _) => {
            skip(&format!("needs root, iproute2 and iptables: {why}"));
            false
        }
        (_, _) => {
            skip("needs busybox (ping)");
            false
        }
    }
}

/// `swov<pid mod 1000><tag>`: unique per test and per test process, short
/// enough for interface names built on it.
fn prefix(tag: &str) -> String {
    format!("swov{}{tag}", std::process::id() % 1000)
}

fn underlay(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 211, 0, i))
}

/// A host: a namespace on the LAN with its overlay plane.
struct Host {
    overlay: Option<Overlay>,
    views: watch::Sender<OverlayView>,
    rt: Option<Runtime>,
    ns: NetNs,
    addr: IpAddr,
}

impl Host {
    fn start(lan: &Lan, name: &str, i: u8, resync: Duration) -> Host {
        Host::start_with(lan, name, i, resync, |_| {})
    }

    fn start_with(lan: &Lan, name: &str, i: u8, resync: Duration, tune: impl FnOnce(&mut OverlayConfig)) -> Host {
        let addr = underlay(i);
        let ns = lan.host(name, &[&format!("{addr}/24")]).expect("host namespace");
        let rt = ns.runtime().expect("host runtime");
        let (views, rx) = watch::channel(OverlayView::default());
        let mut config = OverlayConfig::new(addr);
        config.resync = resync;
        config.retry = Duration::from_millis(200);
        tune(&mut config);
        let overlay = on(&rt, Overlay::start(rx, config)).expect("overlay starts");
        Host { overlay: Some(overlay), views, rt: Some(rt), ns, addr }
    }

    fn overlay(&self) -> &Overlay {
        self.overlay.as_ref().expect("running")
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().expect("runtime")
    }

    /// Publishes `view` and waits until it is applied without error.
    fn set(&self, view: OverlayView) {
        self.views.send_replace(view.clone());
        let ok = self.rt().block_on(self.overlay().synced(&view, Duration::from_secs(5)));
        assert!(ok, "{}: view not applied: {:?}", self.ns.name(), self.overlay().errors());
    }

    fn sh(&self, cmd: &str, args: &[&str]) -> String {
        self.ns.exec(cmd, args).unwrap_or_else(|e| panic!("{}: {e}", self.ns.name()))
    }

    fn fdb(&self, vni: u32) -> String {
        self.sh("bridge", &["fdb", "show", "dev", &format!("swvx{vni}")])
    }

    fn neigh(&self, vni: u32) -> String {
        self.sh("ip", &["neigh", "show", "dev", &format!("swvx{vni}")])
    }

    fn links(&self) -> String {
        self.sh("ip", &["-o", "link", "show"])
    }

    fn stop(&mut self) {
        if let (Some(o), Some(rt)) = (self.overlay.take(), self.rt.as_ref()) {
            rt.block_on(o.stop()).expect("overlay stops cleanly");
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let (Some(o), Some(rt)) = (self.overlay.take(), self.rt.as_ref()) {
            let _ = rt.block_on(o.stop());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A task: a namespace whose `eth0` is plugged into its host's bridge.
struct Task {
    rt: Option<Runtime>,
    ns: NetNs,
    ip: Ipv4Addr,
}

impl Task {
    /// Task `name` with address `ip/prefix` on network `vni` of `host`
    /// (whose bridge must exist), default route via `gateway` if any.
    fn plug(pre: &str, host: &Host, name: &str, vni: u32, ip: &str, prefix: u8, gateway: Option<&str>) -> Task {
        let ns = NetNs::create(format!("{pre}-{name}")).expect("task namespace");
        let outer = format!("swov{name}");
        netns::ip(&[
            "link",
            "add",
            &outer,
            "netns",
            host.ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])
        .expect("veth");
        host.ns.ip(&["link", "set", &outer, "master", &format!("swbr{vni}"), "up"]).expect("enslave");
        let ip: Ipv4Addr = ip.parse().expect("ip");
        ns.ip(&["link", "set", "eth0", "address", &overlay_mac_string(ip)]).expect("mac");
        ns.ip(&["addr", "add", &format!("{ip}/{prefix}"), "dev", "eth0"]).expect("addr");
        ns.ip(&["link", "set", "eth0", "up"]).expect("up");
        if let Some(gw) = gateway {
            ns.ip(&["route", "add", "default", "via", gw]).expect("default route");
        }
        let rt = ns.runtime().expect("task runtime");
        Task { rt: Some(rt), ns, ip }
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().expect("runtime")
    }

    /// One ping (1 s timeout).
    fn ping(&self, to: impl std::fmt::Display) -> bool {
        self.ns.exec("busybox", &["ping", "-c", "1", "-W", "1", &to.to_string()]).is_ok()
    }

    /// Echoes every TCP connection on `port`.
    fn serve(&self, port: u16) {
        let addr = (self.ip, port);
        let listener = on(self.rt(), async move { tokio::net::TcpListener::bind(addr).await }).expect("bind");
        self.rt().spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }

    /// Connects to `to:port` within `timeout`, sends `payload`, returns
    /// what came back.
    fn echo(&self, to: Ipv4Addr, port: u16, payload: &'static [u8], timeout: Duration) -> Result<Vec<u8>, String> {
        on(self.rt(), async move {
            let exchange = async {
                let mut s = tokio::net::TcpStream::connect((to, port)).await.map_err(|e| e.to_string())?;
                s.write_all(payload).await.map_err(|e| e.to_string())?;
                let mut back = vec![0u8; payload.len()];
                s.read_exact(&mut back).await.map_err(|e| e.to_string())?;
                Ok(back)
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| format!("no echo from {to}:{port} in {timeout:?}"))?
        })
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn network(vni: u32, subnet: &str, gateway: &str, local: &[&str], remote: &[(&str, IpAddr)]) -> NetworkView {
    NetworkView {
        name: format!("net{vni}"),
        vni,
        subnet: subnet.into(),
        gateway: gateway.into(),
        local: local.iter().map(|a| a.parse().unwrap()).collect(),
        remote: remote.iter().map(|(a, n)| (a.parse().unwrap(), *n)).collect(),
        ..Default::default()
    }
}

const LONG: Duration = Duration::from_secs(3600);

#[test]
fn tasks_reach_each_other_across_hosts() {
    if !can_run() {
        return;
    }
    let pre = prefix("x");
    let lan = Lan::create(&pre).unwrap();
    // VXLAN devices at 1450 bytes (a 1500-byte underlay minus the
    // encapsulation), as the task interfaces.
    let mtu = |c: &mut OverlayConfig| c.mtu = Some(1450);
    let (h1, h2) = (Host::start_with(&lan, "h1", 1, LONG, mtu), Host::start_with(&lan, "h2", 2, LONG, mtu));
    let (a, b) = ("10.210.1.2", "10.210.1.3");
    h1.set(view(vec![network(5001, "10.210.1.0/24", "10.210.1.1", &[a], &[(b, h2.addr)])]));
    h2.set(view(vec![network(5001, "10.210.1.0/24", "10.210.1.1", &[b], &[(a, h1.addr)])]));
    // What the plane programmed.
    let vx = h1.sh("ip", &["-d", "link", "show", "swvx5001"]);
    for want in [
        "vxlan id 5001",
        "local 10.211.0.1",
        "dstport 4789",
        "nolearning",
        "proxy",
        "master swbr5001",
        "UP",
        "mtu 1450",
    ] {
        assert!(vx.contains(want), "{want:?} not in {vx}");
    }
    let br = h1.sh("ip", &["addr", "show", "swbr5001"]);
    assert!(br.contains("inet 10.210.1.1/24"), "{br}");
    let mac_b = overlay_mac_string(b.parse().unwrap());
    assert!(h1.fdb(5001).contains(&format!("{mac_b} dst 10.211.0.2 self permanent")), "{}", h1.fdb(5001));
    assert!(h1.neigh(5001).contains(&format!("{b} lladdr {mac_b} PERMANENT")), "{}", h1.neigh(5001));

    let ta = Task::plug(&pre, &h1, "xa", 5001, a, 24, Some("10.210.1.1"));
    let tb = Task::plug(&pre, &h2, "xb", 5001, b, 24, Some("10.210.1.1"));
    for (host, t, outer) in [(&h1, &ta, "swovxa"), (&h2, &tb, "swovxb")] {
        t.ns.ip(&["link", "set", "eth0", "mtu", "1450"]).unwrap();
        host.ns.ip(&["link", "set", outer, "mtu", "1450"]).unwrap();
    }
    tb.serve(7000);
    let back = ta.echo(b.parse().unwrap(), 7000, b"across the overlay", Duration::from_secs(5)).unwrap();
    assert_eq!(back, b"across the overlay");
    // Full-size segments, both ways.
    static BIG: [u8; 64 * 1024] = [0x5a; 64 * 1024];
    assert_eq!(ta.echo(b.parse().unwrap(), 7000, &BIG, Duration::from_secs(5)).unwrap(), BIG);
    assert!(tb.ping(a), "b -> a");
    // Each task reaches its own node's gateway.
    assert!(ta.ping("10.210.1.1") && tb.ping("10.210.1.1"));
    assert!(h1.overlay().errors().is_empty(), "{:?}", h1.overlay().errors());
}

#[test]
fn networks_are_isolated_on_a_host_and_across_hosts() {
    if !can_run() {
        return;
    }
    let pre = prefix("i");
    let lan = Lan::create(&pre).unwrap();
    let resync = Duration::from_millis(500);
    let (h1, h2) = (Host::start(&lan, "h1", 1, resync), Host::start(&lan, "h2", 2, resync));
    let (a1, a2, b1, b2) = ("10.210.11.2", "10.210.11.3", "10.210.12.2", "10.210.12.3");
    let net_a =
        |local: &[&str], remote: &[(&str, IpAddr)]| network(5011, "10.210.11.0/24", "10.210.11.1", local, remote);
    let net_b =
        |local: &[&str], remote: &[(&str, IpAddr)]| network(5012, "10.210.12.0/24", "10.210.12.1", local, remote);
    h1.set(view(vec![net_a(&[a1], &[(a2, h2.addr)]), net_b(&[b1], &[(b2, h2.addr)])]));
    h2.set(view(vec![net_a(&[a2], &[(a1, h1.addr)]), net_b(&[b2], &[(b1, h1.addr)])]));
    let ta1 = Task::plug(&pre, &h1, "ia1", 5011, a1, 24, Some("10.210.11.1"));
    let tb1 = Task::plug(&pre, &h1, "ib1", 5012, b1, 24, Some("10.210.12.1"));
    let _ta2 = Task::plug(&pre, &h2, "ia2", 5011, a2, 24, Some("10.210.11.1"));
    let _tb2 = Task::plug(&pre, &h2, "ib2", 5012, b2, 24, Some("10.210.12.1"));
    // Within a network, across hosts.
    assert!(ta1.ping(a2), "a1 -> a2");
    assert!(tb1.ping(b2), "b1 -> b2");
    // Between networks: neither on the host nor across.
    assert!(!ta1.ping(b1), "a1 -> b1 (same host) must be dropped");
    assert!(!ta1.ping(b2), "a1 -> b2 (other host) must be dropped");
    assert!(!tb1.ping(a1), "b1 -> a1 must be dropped");
    // The rules are what isolates them: let A and B through by hand, above
    // the plane's jump, and the host routes between its bridges.
    let allow = ["FORWARD", "-i", "swbr5011", "-o", "swbr5012", "-j", "ACCEPT"];
    let back = ["FORWARD", "-i", "swbr5012", "-o", "swbr5011", "-j", "ACCEPT"];
    for r in [allow, back] {
        h1.sh("iptables", &[&["-I"][..], &r[..]].concat());
    }
    assert!(ta1.ping(b1), "without the plane's rules the host forwards between networks");
    for r in [allow, back] {
        h1.sh("iptables", &[&["-D"][..], &r[..]].concat());
    }
    // A jump deleted by hand is put back by the resync.
    h1.sh("iptables", &["-D", "FORWARD", "-j", "SWARM-OVERLAY"]);
    wait_until("jump restored", Duration::from_secs(5), || {
        h1.ns.exec("iptables", &["-C", "FORWARD", "-j", "SWARM-OVERLAY"]).is_ok()
    });
    assert!(!ta1.ping(b1), "isolated again after the resync");
}

#[test]
fn internal_network_has_no_route_out() {
    if !can_run() {
        return;
    }
    let pre = prefix("n");
    let lan = Lan::create(&pre).unwrap();
    let (h1, h2) = (Host::start(&lan, "h1", 1, LONG), Host::start(&lan, "h2", 2, LONG));
    let (i1, i2, o1) = ("10.210.21.2", "10.210.21.3", "10.210.22.2");
    let internal = |local: &[&str], remote: &[(&str, IpAddr)]| {
        let mut n = network(5021, "10.210.21.0/24", "", local, remote);
        n.internal = true;
        n
    };
    let open = network(5022, "10.210.22.0/24", "10.210.22.1", &[o1], &[]);
    h1.set(view(vec![internal(&[i1], &[(i2, h2.addr)]), open]));
    h2.set(view(vec![internal(&[i2], &[(i1, h1.addr)])]));
    let br = h1.sh("ip", &["-4", "addr", "show", "swbr5021"]);
    assert!(!br.contains("inet "), "an internal network's bridge has no address: {br}");
    let ti1 = Task::plug(&pre, &h1, "ni1", 5021, i1, 24, None);
    let _ti2 = Task::plug(&pre, &h2, "ni2", 5021, i2, 24, None);
    let to1 = Task::plug(&pre, &h1, "no1", 5022, o1, 24, Some("10.210.22.1"));
    // Inside the internal network: fine, across hosts.
    assert!(ti1.ping(i2), "internal network works inside");
    // A non-internal network goes out (masqueraded) to the other host.
    assert!(to1.ping(h2.addr), "a non-internal network reaches the underlay");
    // The internal one cannot: no gateway, no route...
    assert!(!ti1.ping(h2.addr), "internal -> underlay must fail");
    assert!(!ti1.ping(h1.addr), "internal -> its own host's underlay address must fail");
    // ... and even a route forced through the host is dropped there.
    h1.sh("ip", &["addr", "add", "10.210.21.254/24", "dev", "swbr5021"]);
    ti1.ns.ip(&["route", "add", "default", "via", "10.210.21.254"]).unwrap();
    assert!(ti1.ping("10.210.21.254"), "the forced gateway answers itself");
    assert!(!ti1.ping(h2.addr), "forwarding out of an internal network is dropped");
    assert!(!ti1.ping(o1), "nor into another network");
}

#[test]
fn moved_task_is_reachable_at_its_new_place_within_a_second() {
    if !can_run() {
        return;
    }
    let pre = prefix("m");
    let lan = Lan::create(&pre).unwrap();
    let h1 = Host::start(&lan, "h1", 1, LONG);
    let h2 = Host::start(&lan, "h2", 2, LONG);
    let h3 = Host::start(&lan, "h3", 3, LONG);
    let (a, m) = ("10.210.31.2", "10.210.31.3");
    let net = |local: &[&str], remote: &[(&str, IpAddr)]| network(5031, "10.210.31.0/24", "10.210.31.1", local, remote);
    h1.set(view(vec![net(&[a], &[(m, h2.addr)])]));
    h2.set(view(vec![net(&[m], &[(a, h1.addr)])]));
    h3.set(view(vec![]));
    let ta = Task::plug(&pre, &h1, "ma", 5031, a, 24, Some("10.210.31.1"));
    let old = Task::plug(&pre, &h2, "mm", 5031, m, 24, Some("10.210.31.1"));
    old.serve(7000);
    assert_eq!(ta.echo(m.parse().unwrap(), 7000, b"at h2", Duration::from_secs(5)).unwrap(), b"at h2");
    // The task moves: gone from h2, started on h3 (same address, same MAC).
    drop(old);
    h3.set(view(vec![net(&[], &[(a, h1.addr)])]));
    let new = Task::plug(&pre, &h3, "mn", 5031, m, 24, Some("10.210.31.1"));
    new.serve(7000);
    h3.set(view(vec![net(&[m], &[(a, h1.addr)])]));
    // The view change reaches h1 (and h2 leaves the network).
    let changed = Instant::now();
    h1.views.send_replace(view(vec![net(&[a], &[(m, h3.addr)])]));
    h2.views.send_replace(view(vec![]));
    let mut tries = 0;
    let reached = loop {
        tries += 1;
        if ta.echo(m.parse().unwrap(), 7000, b"at h3", Duration::from_millis(150)).is_ok() {
            break changed.elapsed();
        }
        assert!(changed.elapsed() < Duration::from_secs(3), "not reachable at its new place after 3 s");
    };
    eprintln!("moved task reachable {reached:?} after the view change ({tries} tries)");
    assert!(reached < Duration::from_secs(1), "reachable after {reached:?} ({tries} tries), over 1 s");
    // h1 points at h3 now, nothing at h2; h2 has left the network.
    let fdb = h1.fdb(5031);
    assert!(fdb.contains("dst 10.211.0.3") && !fdb.contains("dst 10.211.0.2"), "{fdb}");
    wait_until("h2 left the network", Duration::from_secs(2), || !h2.links().contains("swvx5031"));
}

#[test]
fn removed_host_takes_its_entries_away() {
    if !can_run() {
        return;
    }
    let pre = prefix("r");
    let lan = Lan::create(&pre).unwrap();
    let h1 = Host::start(&lan, "h1", 1, LONG);
    let (h2, h3) = (underlay(2), underlay(3));
    let net = |remote: &[(&str, IpAddr)]| network(5051, "10.210.51.0/24", "10.210.51.1", &["10.210.51.2"], remote);
    h1.set(view(vec![net(&[("10.210.51.3", h2), ("10.210.51.4", h2), ("10.210.51.5", h3)])]));
    assert_eq!(h1.fdb(5051).matches("dst 10.211.0.2").count(), 2, "{}", h1.fdb(5051));
    // Node h2 leaves the cluster: its tasks leave the view.
    let start = Instant::now();
    h1.set(view(vec![net(&[("10.210.51.5", h3)])]));
    assert!(start.elapsed() < Duration::from_secs(1), "applied after {:?}", start.elapsed());
    let (fdb, neigh) = (h1.fdb(5051), h1.neigh(5051));
    assert!(!fdb.contains("dst 10.211.0.2"), "{fdb}");
    assert!(fdb.contains(&format!("{} dst 10.211.0.3", overlay_mac_string("10.210.51.5".parse().unwrap()))), "{fdb}");
    assert!(!neigh.contains("10.210.51.3") && !neigh.contains("10.210.51.4"), "{neigh}");
    assert!(neigh.contains("10.210.51.5"), "{neigh}");
}

#[test]
fn resync_repairs_a_deleted_forwarding_entry_and_a_deleted_vxlan_device() {
    if !can_run() {
        return;
    }
    let pre = prefix("s");
    let lan = Lan::create(&pre).unwrap();
    let resync = Duration::from_millis(300);
    let (h1, h2) = (Host::start(&lan, "h1", 1, resync), Host::start(&lan, "h2", 2, resync));
    let (a, b) = ("10.210.41.2", "10.210.41.3");
    let net = |local: &[&str], remote: &[(&str, IpAddr)]| network(5041, "10.210.41.0/24", "10.210.41.1", local, remote);
    h1.set(view(vec![net(&[a], &[(b, h2.addr)])]));
    h2.set(view(vec![net(&[b], &[(a, h1.addr)])]));
    let ta = Task::plug(&pre, &h1, "sa", 5041, a, 24, Some("10.210.41.1"));
    let _tb = Task::plug(&pre, &h2, "sb", 5041, b, 24, Some("10.210.41.1"));
    assert!(ta.ping(b));
    let mac_b = overlay_mac_string(b.parse().unwrap());
    let entry = format!("{mac_b} dst 10.211.0.2 self permanent");
    // A forwarding entry deleted by hand comes back.
    // (`bridge` fails if there was no such entry.)
    h1.sh("bridge", &["fdb", "del", &mac_b, "dev", "swvx5041", "dst", "10.211.0.2", "self"]);
    wait_until("fdb entry repaired", Duration::from_secs(3), || h1.fdb(5041).contains(&entry));
    assert!(ta.ping(b), "reachable again after the fdb repair");
    // A VXLAN device deleted by hand comes back, enslaved, with its entries.
    h1.sh("ip", &["link", "del", "swvx5041"]);
    wait_until("VXLAN device repaired", Duration::from_secs(3), || {
        h1.ns.exec("ip", &["-d", "link", "show", "swvx5041"]).is_ok_and(|s| s.contains("master swbr5041"))
            && h1.fdb(5041).contains(&entry)
            && h1.neigh(5041).contains(b)
    });
    assert!(ta.ping(b), "reachable again after the device repair");
}

#[test]
fn stop_removes_what_the_plane_made_and_only_that() {
    if !can_run() {
        return;
    }
    let pre = prefix("t");
    let lan = Lan::create(&pre).unwrap();
    let mut h1 = Host::start(&lan, "h1", 1, LONG);
    // A bridge a runtime made before the network reached the plane: reused,
    // kept at stop.
    h1.ns.ip(&["link", "add", "swbr5062", "type", "bridge"]).unwrap();
    let v = view(vec![
        network(5061, "10.210.61.0/24", "10.210.61.1", &["10.210.61.2"], &[("10.210.61.3", underlay(2))]),
        network(5062, "10.210.62.0/24", "10.210.62.1", &["10.210.62.2"], &[("10.210.62.3", underlay(2))]),
    ]);
    h1.set(v);
    let links = h1.links();
    for l in ["swbr5061", "swvx5061", "swbr5062", "swvx5062"] {
        assert!(links.contains(&format!(" {l}:")), "{l} missing: {links}");
    }
    assert!(h1.sh("ip", &["addr", "show", "swbr5062"]).contains("10.210.62.1/24"), "gateway on the reused bridge");
    let saved = h1.sh("iptables-save", &[]);
    assert!(saved.contains("-A FORWARD -j SWARM-OVERLAY") && saved.contains("-A POSTROUTING -j SWARM-OVERLAY-POST"));
    h1.stop();
    let links = h1.links();
    for l in ["swbr5061", "swvx5061", "swvx5062"] {
        assert!(!links.contains(&format!(" {l}:")), "{l} left behind: {links}");
    }
    assert!(links.contains(" swbr5062:"), "the runtime's bridge is not the plane's to delete: {links}");
    let saved = h1.sh("iptables-save", &[]);
    assert!(!saved.contains("SWARM-OVERLAY"), "rules left behind: {saved}");
}

#[test]
fn views_follow_the_store() {
    use swarm_core::model::*;
    use swarm_core::state::Transaction;
    use swarm_core::store::{MemStore, Store};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = Arc::new(MemStore::new());
        let mut tx = Transaction::new();
        for (i, addr) in [(1, "10.211.0.1"), (2, "10.211.0.2")] {
            let mut n = Node::ready(format!("node-{i}"), format!("host-{i}"), Resources::default());
            n.status.addr = addr.into();
            tx = tx.create(n);
        }
        let net = Network {
            id: "net-1".into(),
            spec: NetworkSpec { name: "front".into(), driver: "overlay".into(), ..Default::default() },
            subnet: Some("10.210.71.0/24".into()),
            gateway: Some("10.210.71.1".into()),
            vni: Some(5071),
            ..Default::default()
        };
        store.commit(tx.create(net)).await.unwrap();
        let cluster = swarm_core::cluster::Cluster::new(store.clone() as Arc<dyn Store>);
        cluster.create_service(ServiceSpec::replicated("web", "web:1", 2)).await.unwrap();
        let svc = store.state().service_by_name("web").unwrap().clone();
        let task = |id: &str, node: &str, ip: &str| Task {
            id: id.into(),
            service_id: svc.id.clone(),
            service_name: "web".into(),
            node_id: Some(node.into()),
            desired_state: TaskState::Running,
            status: TaskStatus { state: TaskState::Running, ..Default::default() },
            networks: vec![NetworkAttachment {
                network: "front".into(),
                addresses: vec![ip.into()],
                overlay: Some(OverlayAttachment {
                    network_id: "net-1".into(),
                    vni: 5071,
                    subnet: "10.210.71.0/24".into(),
                    gateway: "10.210.71.1".into(),
                    internal: false,
                    encrypted: false,
                }),
            }],
            ..Default::default()
        };
        let (mut views, follower) = swarm_net::overlay::follow_store(store.clone() as Arc<dyn Store>, "node-1".into());
        store.commit(Transaction::new().create(task("t1", "node-1", "10.210.71.2"))).await.unwrap();
        let v = tokio::time::timeout(Duration::from_secs(5), views.wait_for(|v| v.networks.contains_key(&5071)))
            .await
            .unwrap()
            .unwrap()
            .clone();
        assert_eq!(v.networks[&5071].local, ["10.210.71.2".parse().unwrap()].into());
        assert!(v.networks[&5071].remote.is_empty());
        store.commit(Transaction::new().create(task("t2", "node-2", "10.210.71.3"))).await.unwrap();
        let v = tokio::time::timeout(Duration::from_secs(5), views.wait_for(|v| !v.networks[&5071].remote.is_empty()))
            .await
            .unwrap()
            .unwrap()
            .clone();
        assert_eq!(v.networks[&5071].remote, [("10.210.71.3".parse().unwrap(), underlay(2))].into());
        assert_eq!(v, OverlayView::from_state(&store.state(), &"node-1".into()));
        // The MAC every node derives for the remote task.
        assert_eq!(overlay_mac("10.210.71.3".parse().unwrap()), [0x02, 0x42, 10, 210, 71, 3]);
        drop(views);
        follower.abort();
    });
}
