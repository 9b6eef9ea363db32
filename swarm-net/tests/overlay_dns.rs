//! The per-network DNS servers of a node for real: a "host" namespace runs
//! the overlay plane and [`OverlayDns`] on one view; "tasks" are namespaces
//! plugged into the networks' bridges, asking the gateway over UDP and TCP
//! with a real DNS client (hickory-proto messages on a socket). Needs root,
//! iproute2 and iptables: skipped without them (recorded), failing under
//! CI. Every namespace and interface starts with `swdn`; VNIs 9101-9102,
//! addresses in 10.254.0.0/16.
#![cfg(target_os = "linux")]

mod overlay_support;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use overlay_support::{on, view, wait_until};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use swarm_conformance::skip::skip;
use swarm_core::model::overlay_mac_string;
use swarm_core::overlay::{NameRecord, NetworkView};
use swarm_net::netns::{self, Lan, NetNs};
use swarm_net::overlay::{Overlay, OverlayConfig};
use swarm_net::overlay_dns::{OverlayDns, OverlayDnsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::sync::watch;

fn can_run() -> bool {
    match netns::available() {
        Ok(()) => true,
        Err(why) => {
            skip(&format!("needs root, iproute2 and iptables: {why}"));
            false
        }
    }
}

/// A task namespace whose `eth0` is plugged into `swbr<vni>` of `host`.
struct Task {
    rt: Option<Runtime>,
    _ns: NetNs,
}

impl Task {
    fn plug(pre: &str, host: &NetNs, name: &str, vni: u32, ip: &str, gateway: &str) -> Task {
        let ns = NetNs::create(format!("{pre}-{name}")).expect("task namespace");
        let outer = format!("{pre}{name}");
        netns::ip(&[
            "link",
            "add",
            &outer,
            "netns",
            host.name(),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])
        .expect("veth");
        host.ip(&["link", "set", &outer, "master", &format!("swbr{vni}"), "up"]).expect("enslave");
        let addr: Ipv4Addr = ip.parse().expect("ip");
        ns.ip(&["link", "set", "eth0", "address", &overlay_mac_string(addr)]).expect("mac");
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]).expect("addr");
        ns.ip(&["link", "set", "eth0", "up"]).expect("up");
        ns.ip(&["route", "add", "default", "via", gateway]).expect("default route");
        let rt = ns.runtime().expect("task runtime");
        Task { rt: Some(rt), _ns: ns }
    }

    /// Asks `server` for the A records of `name` over UDP (TCP if `tcp`);
    /// `None` without an answer within 2 s.
    fn ask(&self, server: Ipv4Addr, name: &str, tcp: bool) -> Option<(ResponseCode, Vec<Ipv4Addr>)> {
        let name = name.to_string();
        let rt = self.rt.as_ref().expect("runtime");
        on(rt, async move {
            let mut q = Message::query();
            q.add_query(Query::query(Name::from_ascii(&name).expect("name"), RecordType::A));
            q.metadata.recursion_desired = true;
            let bytes = q.to_vec().expect("encode");
            let to = SocketAddr::from((server, 53));
            let exchange = async {
                if tcp {
                    let mut s = tokio::net::TcpStream::connect(to).await.ok()?;
                    s.write_all(&(bytes.len() as u16).to_be_bytes()).await.ok()?;
                    s.write_all(&bytes).await.ok()?;
                    let len = s.read_u16().await.ok()? as usize;
                    let mut buf = vec![0u8; len];
                    s.read_exact(&mut buf).await.ok()?;
                    Some(buf)
                } else {
                    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await.ok()?;
                    sock.send_to(&bytes, to).await.ok()?;
                    let mut buf = vec![0u8; 4096];
                    let n = sock.recv(&mut buf).await.ok()?;
                    buf.truncate(n);
                    Some(buf)
                }
            };
            let raw = tokio::time::timeout(Duration::from_secs(2), exchange).await.ok()??;
            let m = Message::from_vec(&raw).expect("decode");
            assert_eq!(m.metadata.id, q.metadata.id);
            let mut addrs: Vec<Ipv4Addr> = m
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect();
            addrs.sort();
            Some((m.metadata.response_code, addrs))
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

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn network(vni: u32, n: u8, local: &[&str], names: &[(&str, &[&str], bool)]) -> NetworkView {
    NetworkView {
        name: format!("swdn{vni}"),
        vni,
        subnet: format!("10.254.{n}.0/24"),
        gateway: format!("10.254.{n}.1"),
        local: local.iter().map(|a| ip(a)).collect(),
        names: names
            .iter()
            .map(|(name, addrs, vip)| {
                (name.to_string(), NameRecord { addrs: addrs.iter().map(|a| ip(a)).collect(), vip: *vip })
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn each_gateway_answers_its_networks_names_and_follows_the_view() {
    if !can_run() {
        return;
    }
    let pre = format!("swdn{}", std::process::id() % 1000);
    let lan = Lan::create(&pre).expect("lan");
    let host = lan.host("h1", &["10.254.0.1/24"]).expect("host namespace");
    host.ip(&["link", "set", "lo", "up"]).expect("lo up");
    let rt = host.runtime().expect("host runtime");
    let underlay = IpAddr::from([10, 254, 0, 1]);

    let front = network(
        9101,
        1,
        &["10.254.1.2"],
        &[
            ("web", &["10.254.1.100"], true),
            ("www", &["10.254.1.100"], true),
            ("tasks.web", &["10.254.1.2", "10.254.1.3"], false),
        ],
    );
    let back =
        network(9102, 2, &["10.254.2.2"], &[("db", &["10.254.2.2"], false), ("tasks.db", &["10.254.2.2"], false)]);
    let (views, rx) = watch::channel(view(vec![front.clone(), back.clone()]));
    // The servers start before the plane: the gateways are not there yet,
    // the binds fail and are retried.
    let dns = {
        let rx = rx.clone();
        on(&rt, async move {
            let dns =
                OverlayDns::start(rx, OverlayDnsConfig { retry: Duration::from_millis(100), ..Default::default() });
            let deadline = Instant::now() + Duration::from_secs(5);
            while dns.errors().len() < 2 {
                assert!(Instant::now() < deadline, "bind errors reported before the plane runs");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            dns
        })
    };
    assert!(dns.errors()[&9101].contains("10.254.1.1:53"), "{:?}", dns.errors());
    let mut config = OverlayConfig::new(underlay);
    config.retry = Duration::from_millis(200);
    let plane = on(&rt, Overlay::start(rx, config)).expect("the overlay plane starts");
    wait_until("both networks served on their gateways", Duration::from_secs(5), || dns.serving().len() == 2);
    assert_eq!(dns.serving()[&9101], SocketAddr::from(([10, 254, 1, 1], 53)));
    assert_eq!(dns.serving()[&9102], SocketAddr::from(([10, 254, 2, 1], 53)));
    assert!(dns.errors().is_empty(), "{:?}", dns.errors());

    let a = Task::plug(&pre, &host, "a", 9101, "10.254.1.2", "10.254.1.1");
    let b = Task::plug(&pre, &host, "b", 9102, "10.254.2.2", "10.254.2.1");
    let (gw1, gw2) = (ip("10.254.1.1"), ip("10.254.2.1"));
    let found = |addrs: &[&str]| Some((ResponseCode::NoError, addrs.iter().map(|a| ip(a)).collect::<Vec<_>>()));

    // A task of the front network: its names, over UDP and TCP, any case.
    for tcp in [false, true] {
        assert_eq!(a.ask(gw1, "web.", tcp), found(&["10.254.1.100"]), "tcp: {tcp}");
        assert_eq!(a.ask(gw1, "WWW", tcp), found(&["10.254.1.100"]));
        assert_eq!(a.ask(gw1, "tasks.web", tcp), found(&["10.254.1.2", "10.254.1.3"]));
        // Another network's name, and a name nobody has: nothing forwarded.
        assert_eq!(a.ask(gw1, "db", tcp), Some((ResponseCode::NXDomain, vec![])));
        assert_eq!(a.ask(gw1, "example.com", tcp), Some((ResponseCode::NXDomain, vec![])));
    }
    // A task of the back network: its own names only.
    assert_eq!(b.ask(gw2, "db", false), found(&["10.254.2.2"]));
    assert_eq!(b.ask(gw2, "web", false), Some((ResponseCode::NXDomain, vec![])));
    assert_eq!(b.ask(gw2, "tasks.web", true), Some((ResponseCode::NXDomain, vec![])));
    // Asking the front network's gateway from the back network: the host
    // routes there, but the server refuses clients of another subnet.
    let cross = b.ask(gw1, "web", false);
    assert!(
        matches!(&cross, None | Some((ResponseCode::Refused, _))),
        "a task of another network must not get the front network's names: {cross:?}"
    );

    // The view changes: a new name is answered within a second, a removed
    // one is gone.
    let mut front2 = front.clone();
    front2.names.insert("api".into(), NameRecord { addrs: vec![ip("10.254.1.7")], vip: false });
    front2.names.remove("www");
    views.send_replace(view(vec![front2, back.clone()]));
    let start = Instant::now();
    wait_until("the new name answered", Duration::from_secs(1), || a.ask(gw1, "api", false) == found(&["10.254.1.7"]));
    eprintln!("new name answered after {:?}", start.elapsed());
    assert_eq!(a.ask(gw1, "www", false), Some((ResponseCode::NXDomain, vec![])));

    // The back network leaves the view: its server is closed.
    views.send_replace(view(vec![front.clone()]));
    wait_until("the back network's server closed", Duration::from_secs(1), || !dns.serving().contains_key(&9102));
    assert_eq!(b.ask(gw2, "db", false), None, "no server on a network that left");
    assert_eq!(a.ask(gw1, "web", true), found(&["10.254.1.100"]), "the other network is still served");

    on(&rt, async move { dns.stop().await });
    let gone = a.ask(gw1, "web", false);
    assert_eq!(gone, None, "stopped: no answer");
    rt.block_on(plane.stop()).expect("the plane stops");
    drop((a, b));
    rt.shutdown_background();
}
