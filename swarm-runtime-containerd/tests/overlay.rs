//! Tasks on overlay endpoints (`ContainerConfig::endpoints`) against the
//! machine's real containerd, with the node's host side in a network
//! namespace of the test's own (`ContainerdConfig::host_netns`), as tests
//! run hosts: bridges `swbr72xx`, the tasks' veths with exactly the
//! manager's address and MAC, default routes, published ports, isolation.
//!
//! Names start with `swrt`, subnets are in 10.230.0.0/16; the namespace
//! (and with it every bridge and veth in it) and the tasks are removed
//! afterwards, also when the test fails. Without containerd or root the
//! test records a skip, except under CI, where it fails.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use swarm_core::model::{
    Labels, NetworkSpec, PortConfig, PublishMode, overlay_bridge_name, overlay_mac, overlay_mac_string,
};
use swarm_core::runtime::*;
use swarm_runtime_containerd::fixture::{INDEX_HTML, import_busybox};
use swarm_runtime_containerd::runtime::ctd_labels;
use swarm_runtime_containerd::{BridgeConfig, ContainerdConfig, ContainerdRuntime};

const NS: &str = "swrt-ctd-overlay-test";
const IMAGE: &str = "swarm-ctd-test/busybox:1";
const RUN: &str = "io.swarm-rs.test-run";

/// A network namespace standing for a host, deleted on drop (with every
/// bridge and veth end in it).
struct HostNs(String);

impl HostNs {
    fn new(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let add = Command::new("ip").args(["netns", "add", name]).output().expect("run ip");
        assert!(add.status.success(), "ip netns add {name}: {}", String::from_utf8_lossy(&add.stderr));
        let ns = HostNs(name.to_string());
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }

    /// `ip -n <ns> args`, which must succeed; its output.
    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip").args(["-n", &self.0]).args(args).output().expect("run ip");
        assert!(out.status.success(), "ip -n {} {args:?}: {}", self.0, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn has_link(&self, name: &str) -> bool {
        Command::new("ip").args(["-n", &self.0, "link", "show", "dev", name]).output().is_ok_and(|o| o.status.success())
    }

    /// Runs a program inside the namespace; its success and output.
    fn exec(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip").args(["netns", "exec", &self.0]).args(args).output().expect("run ip netns exec");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for HostNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Interfaces made in the test process's own namespace, deleted on drop
/// (with the FORWARD accepts the runtime made for them).
struct RootLinks(Vec<&'static str>);

impl Drop for RootLinks {
    fn drop(&mut self) {
        for l in &self.0 {
            let _ = Command::new("ip").args(["link", "del", l]).output();
            let rule = ["-w", "-D", "FORWARD", "-i", l, "-o", l, "-j", "ACCEPT"];
            while Command::new("iptables").args(rule).output().is_ok_and(|o| o.status.success()) {}
        }
    }
}

fn forward_accepts(bridge: &str) -> bool {
    let out = Command::new("iptables").args(["-w", "-S", "FORWARD"]).output().expect("run iptables");
    String::from_utf8_lossy(&out.stdout).lines().any(|l| l == format!("-A FORWARD -i {bridge} -o {bridge} -j ACCEPT"))
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|u| u.split_whitespace().nth(1));
    euid == Some("0")
}

fn root_has_link(name: &str) -> bool {
    Command::new("ip").args(["link", "show", "dev", name]).output().is_ok_and(|o| o.status.success())
}

fn endpoint(network: &str, vni: u32, subnet: &str, address: &str, internal: bool) -> NetworkEndpoint {
    let subnet: ipnet::Ipv4Net = subnet.parse().unwrap();
    let address: std::net::Ipv4Addr = address.parse().unwrap();
    NetworkEndpoint {
        network: network.into(),
        bridge: overlay_bridge_name(vni),
        vni,
        subnet,
        address,
        mac: overlay_mac(address),
        gateway: (!internal).then(|| std::net::Ipv4Addr::from(u32::from(subnet.network()) + 1)),
        internal,
        encrypted: false,
        aliases: vec![],
    }
}

fn task(name: &str, endpoints: Vec<NetworkEndpoint>) -> ContainerConfig {
    task_in(NS, name, endpoints)
}

fn task_in(run: &str, name: &str, endpoints: Vec<NetworkEndpoint>) -> ContainerConfig {
    let mut c = ContainerConfig::default();
    c.spec.image = IMAGE.into();
    c.spec.command =
        ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"].iter().map(|s| s.to_string()).collect();
    c.name = format!("swrt-{name}.1");
    c.service_name = format!("swrt-{name}");
    c.labels.insert(RUN.into(), run.into());
    c.labels.insert(labels::MANAGED.into(), "true".into());
    c.endpoints = endpoints;
    c
}

async fn sh(rt: &ContainerdRuntime, id: &str, script: &str) -> ExecResult {
    let cmd: Vec<String> = ["sh", "-c", script].iter().map(|s| s.to_string()).collect();
    rt.exec(id, &cmd, Duration::from_secs(20)).await.expect("exec")
}

/// `GET /` on `addr:8080` from inside task `id` (with `nc`: this static
/// busybox's wget crashes): the answer, or `None`.
async fn fetch(rt: &ContainerdRuntime, id: &str, addr: std::net::Ipv4Addr) -> Option<String> {
    let r = sh(rt, id, &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {addr} 8080")).await;
    (r.exit_code == 0 && r.output.starts_with("HTTP/1")).then_some(r.output)
}

async fn fetch_soon(rt: &ContainerdRuntime, id: &str, addr: std::net::Ipv4Addr) -> String {
    for _ in 0..50 {
        if let Some(body) = fetch(rt, id, addr).await {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = sh(rt, id, "ip addr; ip route; ip neigh").await;
    panic!("{id} cannot GET http://{addr}:8080/; its network: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_in_a_host_namespace() {
    if !is_root() {
        swarm_conformance::skip::skip("needs root (network namespaces, bridges)");
        return;
    }
    let host = HostNs::new(&format!("swrt-h{}", std::process::id()));
    let mut cfg = ContainerdConfig::new(NS);
    cfg.bridge = BridgeConfig { name: "swrtctd0".into(), subnet: "10.230.40.0".parse().unwrap(), prefix: 24 };
    cfg.state_dir = PathBuf::from("/var/lib/swarm-rs-containerd-test").join(NS);
    cfg.host_netns = Some(host.path());
    let rt = match ContainerdRuntime::connect(cfg).await {
        Ok(rt) => Arc::new(rt),
        Err(e) => {
            swarm_conformance::skip::skip(&format!("needs containerd (set CONTAINERD_ADDRESS): {e}"));
            return;
        }
    };
    import_busybox(&rt.config().address, NS, IMAGE, true).await.expect("importing the busybox fixture image");
    // The node bridge went into the host namespace, not ours.
    assert!(host.has_link("swrtctd0") && !root_has_link("swrtctd0"));

    let body_rt = rt.clone();
    let hostns = host.0.clone();
    let body = async move {
        let rt = body_rt;
        let host = HostNs(hostns);
        // The overlay plane made n3's bridge first, with its gateway.
        host.ip(&["link", "add", "swbr7203", "type", "bridge"]);
        host.ip(&["addr", "add", "10.230.23.1/24", "dev", "swbr7203"]);
        let a_ep = endpoint("swrt-n1", 7201, "10.230.21.0/24", "10.230.21.10", false);
        let b_ep = endpoint("swrt-n1", 7201, "10.230.21.0/24", "10.230.21.11", false);
        let c_ep = endpoint("swrt-n2", 7202, "10.230.22.0/24", "10.230.22.10", true);
        let d_int = endpoint("swrt-n2", 7202, "10.230.22.0/24", "10.230.22.11", true);
        let d_ext = endpoint("swrt-n1", 7201, "10.230.21.0/24", "10.230.21.12", false);
        let e_ep = endpoint("swrt-n3", 7203, "10.230.23.0/24", "10.230.23.10", false);
        let mut a = task("a", vec![a_ep.clone()]);
        a.host_ports = vec![PortConfig {
            target_port: 8080,
            published_port: Some(18201),
            publish_mode: PublishMode::Host,
            ..Default::default()
        }];
        let configs = [
            a,
            task("b", vec![b_ep.clone()]),
            task("c", vec![c_ep.clone()]),
            task("d", vec![d_int.clone(), d_ext.clone()]),
            task("e", vec![e_ep.clone()]),
        ];
        let mut ids = Vec::new();
        for c in &configs {
            rt.prepare(c).await.expect("prepare");
            let id = rt.create(c).await.expect("create");
            rt.start(&id).await.expect("start");
            ids.push(id);
        }
        let [a, b, c, d, e] = [&ids[0], &ids[1], &ids[2], &ids[3], &ids[4]];

        // Bridges and host ends of the veths are in the host namespace only.
        for br in ["swbr7201", "swbr7202", "swbr7203"] {
            assert!(host.has_link(br) && !root_has_link(br), "{br}");
        }
        let gw = host.ip(&["-4", "-o", "addr", "show", "dev", "swbr7201"]);
        assert!(gw.contains("10.230.21.1/24"), "{gw}");
        let internal = host.ip(&["-4", "-o", "addr", "show", "dev", "swbr7202"]);
        assert!(internal.trim().is_empty(), "an internal bridge has no gateway: {internal}");
        let alias = host.ip(&["-j", "link", "show", "dev", "swbr7201"]);
        assert!(alias.contains("swarm-rs-network:swrt-n1"), "{alias}");
        let c_meta = rt.list(&Labels::new()).await.unwrap();
        let token_of = |id: &str| c_meta.iter().find(|s| s.id == id).unwrap().labels[ctd_labels::TOKEN].clone();
        let d_token = token_of(d);
        for h in [format!("swv{d_token}"), format!("swv{d_token}1")] {
            assert!(host.has_link(&h) && !root_has_link(&h), "{h}");
        }
        let ports = host.ip(&["-j", "link", "show", "master", "swbr7201"]);
        assert!(ports.contains(&format!("swv{d_token}1")), "{ports}");

        // Exactly the given address, MAC and MTU; routes as asked.
        for (id, ep) in [(a, &a_ep), (b, &b_ep), (c, &c_ep), (e, &e_ep)] {
            let r = sh(&rt, id, "cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu; ip -4 -o addr show dev eth0")
                .await;
            assert_eq!(r.exit_code, 0, "{r:?}");
            let mut lines = r.output.lines();
            assert_eq!(lines.next(), Some(overlay_mac_string(ep.address).as_str()), "{id}: {r:?}");
            assert_eq!(lines.next(), Some("1450"), "{id}: {r:?}");
            assert!(r.output.contains(&format!("inet {}/24 ", ep.address)), "{id}: {r:?}");
            let n = sh(&rt, id, "ls /sys/class/net").await.output;
            assert_eq!(n.split_whitespace().collect::<Vec<_>>(), ["eth0", "lo"], "{id}: only its endpoint");
            assert_eq!(rt.inspect(id).await.unwrap().addresses, vec![std::net::IpAddr::V4(ep.address)]);
        }
        let r = sh(&rt, a, "ip route").await.output;
        assert!(r.contains("default via 10.230.21.1 dev eth0"), "{r}");
        let r = sh(&rt, c, "ip route").await.output;
        assert!(!r.contains("default"), "an internal endpoint has no default route: {r}");
        let r = sh(&rt, d, "ip route; cat /sys/class/net/eth1/address").await.output;
        assert!(r.contains("default via 10.230.21.1 dev eth1"), "the first external endpoint routes: {r}");
        assert!(r.contains(&overlay_mac_string(d_ext.address)), "{r}");
        let st = rt.inspect(d).await.unwrap();
        assert_eq!(st.addresses, vec![std::net::IpAddr::V4(d_int.address), std::net::IpAddr::V4(d_ext.address)]);

        // One network: reachable by address. d, on both, reaches c.
        assert!(fetch_soon(&rt, a, b_ep.address).await.ends_with(INDEX_HTML));
        assert!(fetch_soon(&rt, d, c_ep.address).await.ends_with(INDEX_HTML));
        // The published port answers on the host namespace's address.
        let (ok, out) =
            host.exec(&["sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 10.230.21.1 18201"]);
        assert!(ok && out.ends_with(INDEX_HTML), "published port in the host namespace: {out:?}");
        // Other networks: not reachable while the host does not forward...
        host.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"]);
        assert_eq!(fetch(&rt, a, e_ep.address).await, None, "n1 reaches n3");
        assert_eq!(fetch(&rt, c, a_ep.address).await, None, "internal n2 reaches n1");
        // ...and when it does (a new namespace inherits the root's setting,
        // 1 where Docker runs), routed traffic between external networks
        // passes: isolation is the overlay plane's iptables rules, not the runtime's.
        host.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        assert!(fetch_soon(&rt, a, e_ep.address).await.ends_with(INDEX_HTML));
        assert_eq!(fetch(&rt, c, a_ep.address).await, None, "internal n2 has no route out");

        // From another host (a namespace on a veth), with FORWARD dropping
        // by default: the published port's own accepts let it through.
        let client = HostNs::new(&format!("swrt-c{}", std::process::id()));
        host.ip(&["link", "add", "swrtcl0", "type", "veth", "peer", "name", "swrtcl1", "netns", &client.0]);
        host.ip(&["addr", "add", "10.230.50.1/30", "dev", "swrtcl0"]);
        host.ip(&["link", "set", "swrtcl0", "up"]);
        client.ip(&["addr", "add", "10.230.50.2/30", "dev", "swrtcl1"]);
        client.ip(&["link", "set", "swrtcl1", "up"]);
        host.exec(&["iptables", "-w", "-P", "FORWARD", "DROP"]);
        let get = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 10.230.50.1 18201";
        let (ok, out) = client.exec(&["sh", "-c", get]);
        assert!(ok && out.ends_with(INDEX_HTML), "published port from another host: {out:?}");
        host.exec(&["iptables", "-w", "-P", "FORWARD", "ACCEPT"]);
        drop(client);

        // A network with tasks cannot go; without, its bridge goes, unless
        // the overlay plane still has a device on it.
        let err = rt.remove_network("swrt-n1").await.unwrap_err();
        assert!(err.to_string().contains("task interfaces"), "{err}");
        // Only a's published port is let through its overlay bridge.
        let a_token = token_of(a);
        let (_, fwd) = host.exec(&["iptables", "-w", "-S", "FORWARD"]);
        let a_rules: Vec<&str> = fwd.lines().filter(|l| l.contains(&format!("swarm-ctd-{a_token}"))).collect();
        assert_eq!(a_rules.len(), 2, "{fwd}");
        assert!(a_rules.iter().all(|l| l.contains("10.230.21.10") && l.contains("8080")), "{a_rules:?}");
        assert!(!fwd.contains("-A FORWARD -i swbr7201 -j ACCEPT"), "the whole bridge is let through: {fwd}");
        for id in &ids {
            rt.remove(id).await.unwrap();
            let token = token_of(id);
            assert!(!swarm_runtime_containerd::ports::has_rules(Some(&host.path()), &token).await);
            assert!(!PathBuf::from(format!("/var/run/netns/swarm-ctd-{token}")).exists());
            assert!(!host.has_link(&format!("swv{token}")) && !host.has_link(&format!("swv{token}1")));
        }
        // Bridges stay when their last task goes (the plane removes networks).
        assert!(host.has_link("swbr7201"));
        host.ip(&["link", "add", "swrtvx7203", "type", "vxlan", "id", "7203", "dstport", "4789", "nolearning"]);
        host.ip(&["link", "set", "swrtvx7203", "master", "swbr7203"]);
        rt.remove_network("swrt-n1").await.unwrap();
        rt.remove_network("swrt-n3").await.unwrap();
        rt.remove_network("swrt-n1").await.unwrap(); // idempotent
        assert!(!host.has_link("swbr7201"));
        assert!(host.has_link("swbr7203"), "a bridge the overlay plane uses stays");
        // An overlay spec alone makes nothing.
        rt.ensure_network(&NetworkSpec { name: "swrt-n9".into(), driver: "overlay".into(), ..Default::default() })
            .await
            .unwrap();
        std::mem::forget(host); // the outer guard deletes the namespace
    };
    let r = tokio::time::timeout(Duration::from_secs(240), tokio::spawn(body)).await;
    let mut sel = Labels::new();
    sel.insert(RUN.into(), NS.into());
    for c in rt.list(&sel).await.unwrap_or_default() {
        let _ = rt.remove(&c.id).await;
    }
    drop(host);
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Err(_) => panic!("the test did not finish within 240 s"),
    }
}

/// Without `host_netns`: the bridges in the runtime's own namespace, where
/// Docker's FORWARD policy is DROP and `br_netfilter` sends bridged frames
/// through it: tasks on one endpoint bridge still reach each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_in_the_runtimes_own_namespace() {
    const NS2: &str = "swrt-ctd-overlay-test-root";
    if !is_root() {
        swarm_conformance::skip::skip("needs root (bridges, iptables)");
        return;
    }
    let links = RootLinks(vec!["swbr7211", "swbr7212", "swrtctd1"]);
    let mut cfg = ContainerdConfig::new(NS2);
    cfg.bridge = BridgeConfig { name: "swrtctd1".into(), subnet: "10.230.41.0".parse().unwrap(), prefix: 24 };
    cfg.state_dir = PathBuf::from("/var/lib/swarm-rs-containerd-test").join(NS2);
    let rt = match ContainerdRuntime::connect(cfg).await {
        Ok(rt) => Arc::new(rt),
        Err(e) => {
            swarm_conformance::skip::skip(&format!("needs containerd (set CONTAINERD_ADDRESS): {e}"));
            return;
        }
    };
    import_busybox(&rt.config().address, NS2, IMAGE, true).await.expect("importing the busybox fixture image");
    let body_rt = rt.clone();
    let body = async move {
        let rt = body_rt;
        let t1_ep = endpoint("swrt-n11", 7211, "10.230.31.0/24", "10.230.31.10", false);
        let t2_ep = endpoint("swrt-n11", 7211, "10.230.31.0/24", "10.230.31.11", false);
        let t3_ep = endpoint("swrt-n12", 7212, "10.230.32.0/24", "10.230.32.10", true);
        let mut ids = Vec::new();
        for c in [
            task_in(NS2, "t1", vec![t1_ep.clone()]),
            task_in(NS2, "t2", vec![t2_ep.clone()]),
            task_in(NS2, "t3", vec![t3_ep.clone()]),
        ] {
            rt.prepare(&c).await.expect("prepare");
            let id = rt.create(&c).await.expect("create");
            rt.start(&id).await.expect("start");
            ids.push(id);
        }
        assert!(root_has_link("swbr7211") && forward_accepts("swbr7211"));
        assert!(fetch_soon(&rt, &ids[0], t2_ep.address).await.ends_with(INDEX_HTML));
        let r = sh(&rt, &ids[2], "ip route").await.output;
        assert!(!r.contains("default"), "an internal endpoint has no default route: {r}");
        assert_eq!(fetch(&rt, &ids[2], t1_ep.address).await, None, "internal n12 reaches n11");
        assert_eq!(fetch(&rt, &ids[0], t3_ep.address).await, None, "n11 reaches internal n12");
        for id in &ids {
            rt.remove(id).await.unwrap();
        }
        for (net, br) in [("swrt-n11", "swbr7211"), ("swrt-n12", "swbr7212")] {
            rt.remove_network(net).await.unwrap();
            assert!(!root_has_link(br) && !forward_accepts(br), "{br} and its rule are gone");
        }
    };
    let r = tokio::time::timeout(Duration::from_secs(240), tokio::spawn(body)).await;
    let mut sel = Labels::new();
    sel.insert(RUN.into(), NS2.into());
    for c in rt.list(&sel).await.unwrap_or_default() {
        let _ = rt.remove(&c.id).await;
    }
    drop(links);
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Err(_) => panic!("the test did not finish within 240 s"),
    }
}
