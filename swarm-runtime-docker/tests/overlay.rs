//! Containers on overlay endpoints (`ContainerConfig::endpoints`) against
//! the real Docker Engine: one Engine bridge network per overlay network on
//! its `swbr<vni>` bridge, containers with exactly the manager's address and
//! MAC.
//!
//! Names start with `swrt-<pid>-`, bridges are `swbr71xx`, subnets are in
//! 10.230.0.0/16; everything is removed afterwards, also when a test fails.
//! Without an engine (or root, to make a bridge as the overlay plane does)
//! the tests record a skip, except under CI, where they fail.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};
use swarm_core::model::{Labels, NetworkSpec, overlay_bridge_name, overlay_mac, overlay_mac_string};
use swarm_core::runtime::{ContainerConfig, ContainerState, NetworkEndpoint, Runtime, RuntimeError};
use swarm_runtime_docker::{DockerRuntime, DockerRuntimeOptions, NETWORK_VNI_LABEL, fixture};

mod common;
use common::{TEST_LABEL, engine_runtime};

/// A bridge made outside the engine (as the overlay plane does), deleted on drop.
struct HostBridge(String);

impl HostBridge {
    fn new(name: &str, cidr: &str) -> Self {
        let _ = Command::new("ip").args(["link", "del", name]).output();
        for args in [
            vec!["link", "add", name, "type", "bridge"],
            vec!["addr", "add", cidr, "dev", name],
            vec!["link", "set", name, "up"],
        ] {
            let out = Command::new("ip").args(&args).output().expect("run ip");
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        HostBridge(name.to_string())
    }
}

impl Drop for HostBridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

fn link_exists(name: &str) -> bool {
    Command::new("ip").args(["link", "show", "dev", name]).output().is_ok_and(|o| o.status.success())
}

fn endpoint(network: &str, vni: u32, subnet: &str, address: &str, internal: bool) -> NetworkEndpoint {
    let subnet: ipnet::Ipv4Net = subnet.parse().unwrap();
    let address: Ipv4Addr = address.parse().unwrap();
    NetworkEndpoint {
        network: network.into(),
        bridge: overlay_bridge_name(vni),
        vni,
        subnet,
        address,
        mac: overlay_mac(address),
        gateway: (!internal).then(|| Ipv4Addr::from(u32::from(subnet.network()) + 1)),
        internal,
        encrypted: false,
        aliases: vec![],
    }
}

#[derive(Clone)]
struct Scope {
    rt: DockerRuntime,
    image: String,
    prefix: String,
}

impl Scope {
    fn workload(&self, service: &str, endpoints: Vec<NetworkEndpoint>) -> ContainerConfig {
        let name = format!("{}-{service}.1", self.prefix);
        let task = format!("{}-{service}-task", self.prefix);
        let mut cfg = fixture::workload_config(&self.image, &name, &task);
        cfg.service_name = format!("{}-{service}", self.prefix);
        cfg.labels.insert(TEST_LABEL.into(), self.prefix.clone());
        for e in &endpoints {
            cfg.networks.retain(|n| n.target != e.network);
        }
        cfg.endpoints = endpoints;
        cfg
    }

    async fn run(&self, cfg: &ContainerConfig) -> String {
        self.rt.prepare(cfg).await.expect("prepare");
        let id = self.rt.create(cfg).await.expect("create");
        self.rt.start(&id).await.expect("start");
        let st = self.rt.inspect(&id).await.expect("inspect");
        assert_eq!(st.state, ContainerState::Running, "{st:?}");
        id
    }
}

/// GET until it answers 200 or `within` passes.
async fn get_ok(addr: Ipv4Addr, path: &str, within: Duration) -> String {
    let start = Instant::now();
    let sa = SocketAddr::from((addr, fixture::PORT));
    loop {
        match fixture::http_get(sa, path, Duration::from_secs(5)).await {
            Ok((200, body)) => return body,
            other if start.elapsed() > within => panic!("GET {path} on {sa}: {other:?} after {within:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The default route's gateway in `/proc/net/route` text, if any.
fn default_gateway(route: &str) -> Option<(String, Ipv4Addr)> {
    route.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"00000000")).then(|| {
            let gw = u32::from_str_radix(f[2], 16).unwrap();
            (f[0].to_string(), Ipv4Addr::from(gw.swap_bytes()))
        })
    })
}

async fn scoped<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Scope) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let _ = tracing_subscriber::fmt().with_env_filter("swarm_runtime_docker=debug").with_test_writer().try_init();
    let Some(rt) = engine_runtime(DockerRuntimeOptions::default()).await else { return };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        swarm_conformance::skip::skip("needs root (to make a bridge as the overlay plane does)");
        return;
    }
    let image = fixture::ensure_test_image(rt.client()).await.expect("test image");
    let prefix = format!("swrt-{}-{test}", std::process::id());
    let scope = Scope { rt: rt.clone(), image, prefix: prefix.clone() };
    let result = tokio::time::timeout(Duration::from_secs(240), tokio::spawn(body(scope))).await;
    let mut sel = Labels::new();
    sel.insert(TEST_LABEL.into(), prefix.clone());
    for c in rt.list(&sel).await.unwrap_or_default() {
        let _ = rt.remove(&c.id).await;
    }
    let nets = rt.client().list_networks(None::<bollard::query_parameters::ListNetworksOptions>).await;
    for n in nets.unwrap_or_default().into_iter().filter_map(|n| n.name).filter(|n| n.starts_with(&prefix)) {
        let _ = rt.remove_network(&n).await;
    }
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Err(_) => panic!("{test} did not finish within 240 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_endpoints_have_exact_addresses_and_networks_are_isolated() {
    scoped("ep", |s| async move {
        let front = format!("{}-front", s.prefix);
        let back = format!("{}-back", s.prefix);
        // The overlay plane made front's bridge first, with its gateway.
        let plane_bridge = HostBridge::new("swbr7101", "10.230.11.1/24");
        let x_ep = endpoint(&front, 7101, "10.230.11.0/24", "10.230.11.10", false);
        let y_ep = endpoint(&front, 7101, "10.230.11.0/24", "10.230.11.11", false);
        let z_ep = endpoint(&back, 7102, "10.230.12.0/24", "10.230.12.10", true);
        let x = s.workload("x", vec![x_ep.clone()]);
        let mut y = s.workload("y", vec![y_ep.clone()]);
        y.endpoints[0].aliases = vec![y.service_name.clone(), format!("{}-yy", s.prefix)];
        let z = s.workload("z", vec![z_ep.clone()]);
        // w: internal first, then front: the default route still goes through front.
        let w_ep = endpoint(&front, 7101, "10.230.11.0/24", "10.230.11.12", false);
        let w_int = endpoint(&back, 7102, "10.230.12.0/24", "10.230.12.11", true);
        let w = s.workload("w", vec![w_int.clone(), w_ep.clone()]);
        let ids: Vec<String> = {
            let mut v = Vec::new();
            for c in [&x, &y, &z, &w] {
                v.push(s.run(c).await);
            }
            v
        };
        // Engine networks as asked: the plane's bridge taken as it is, the other made.
        let n = s.rt.client().inspect_network(&front, None).await.unwrap();
        assert_eq!(n.options.unwrap()["com.docker.network.bridge.name"], "swbr7101");
        assert_eq!(n.labels.unwrap()[NETWORK_VNI_LABEL], "7101");
        let n = s.rt.client().inspect_network(&back, None).await.unwrap();
        assert_eq!(n.internal, Some(true));
        assert!(link_exists("swbr7102"));

        // Exactly the given address and MAC, as inspect and the container see them.
        for (id, c, ep) in [(&ids[0], &x, &x_ep), (&ids[1], &y, &y_ep), (&ids[2], &z, &z_ep)] {
            let st = s.rt.inspect(id).await.unwrap();
            assert_eq!(st.addresses, vec![std::net::IpAddr::V4(ep.address)], "{}", c.name);
            let mac = get_ok(ep.address, "/file?path=/sys/class/net/eth0/address", Duration::from_secs(10)).await;
            assert_eq!(mac.trim(), overlay_mac_string(ep.address), "{}", c.name);
            let mtu = get_ok(ep.address, "/file?path=/sys/class/net/eth0/mtu", Duration::from_secs(5)).await;
            assert_eq!(mtu.trim(), "1450", "{}", c.name);
            let trie = get_ok(ep.address, "/file?path=/proc/net/fib_trie", Duration::from_secs(5)).await;
            assert!(trie.contains(&format!("|-- {}\n", ep.address)), "{}: {trie}", c.name);
        }
        // w: both addresses, primary (its first endpoint) first.
        let st = s.rt.inspect(&ids[3]).await.unwrap();
        assert_eq!(st.addresses, vec![std::net::IpAddr::V4(w_int.address), std::net::IpAddr::V4(w_ep.address)]);
        let route = get_ok(w_ep.address, "/file?path=/proc/net/route", Duration::from_secs(10)).await;
        let (_, gw) = default_gateway(&route).expect("w has a default route");
        assert_eq!(gw, Ipv4Addr::new(10, 230, 11, 1), "{route}");

        // x reaches y by address and by alias; not z, on another network.
        let path = format!("/fetch?host={}&port={}&path=/id", y_ep.address, fixture::PORT);
        assert_eq!(get_ok(x_ep.address, &path, Duration::from_secs(10)).await, y.task_id.as_str());
        let path = format!("/fetch?host={}-yy&port={}&path=/id", s.prefix, fixture::PORT);
        assert_eq!(get_ok(x_ep.address, &path, Duration::from_secs(10)).await, y.task_id.as_str());
        let path = format!("/fetch?host={}&port={}&path=/id", z_ep.address, fixture::PORT);
        let r =
            fixture::http_get(SocketAddr::from((x_ep.address, fixture::PORT)), &path, Duration::from_secs(10)).await;
        assert!(matches!(&r, Ok((502, _))), "front must not reach back: {r:?}");
        // z (internal) does not reach front either; w, on both, reaches z.
        let path = format!("/fetch?host={}&port={}&path=/id", x_ep.address, fixture::PORT);
        let r =
            fixture::http_get(SocketAddr::from((z_ep.address, fixture::PORT)), &path, Duration::from_secs(10)).await;
        assert!(matches!(&r, Ok((502, _))), "back must not reach front: {r:?}");
        let path = format!("/fetch?host={}&port={}&path=/id", z_ep.address, fixture::PORT);
        assert_eq!(get_ok(w_ep.address, &path, Duration::from_secs(10)).await, z.task_id.as_str());

        // A network in use cannot be replaced by a different one of its name.
        let mut stale = s.workload("stale", vec![endpoint(&front, 7103, "10.230.13.0/24", "10.230.13.5", false)]);
        stale.name = format!("{}-stale.1", s.prefix);
        let e = s.rt.prepare(&stale).await.unwrap_err();
        assert!(matches!(&e, RuntimeError::Engine(m) if m.contains("still use it") && m.contains("swbr7101")), "{e}");

        for id in &ids {
            s.rt.remove(id).await.unwrap();
        }
        // Unused, it is replaced (the bridge of the overlay plane stays).
        s.rt.prepare(&stale).await.unwrap();
        let n = s.rt.client().inspect_network(&front, None).await.unwrap();
        assert_eq!(n.options.unwrap()["com.docker.network.bridge.name"], "swbr7103");
        assert!(link_exists("swbr7101"), "the engine removed a bridge it did not make");
        s.rt.remove_network(&front).await.unwrap();
        assert!(!link_exists("swbr7103"), "the engine's own bridge goes with its network");
        s.rt.remove_network(&back).await.unwrap();
        assert!(!link_exists("swbr7102"));
        s.rt.remove_network(&back).await.unwrap(); // idempotent
        drop(plane_bridge);

        // An overlay spec alone creates nothing: the endpoint carries the allocation.
        let spec = NetworkSpec { name: format!("{}-spec", s.prefix), driver: "overlay".into(), ..Default::default() };
        s.rt.ensure_network(&spec).await.unwrap();
        assert!(s.rt.client().inspect_network(&spec.name, None).await.is_err());
    })
    .await;
}
