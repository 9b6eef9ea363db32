//! Task networking: one Linux bridge per node, one network namespace and a
//! veth pair per task, set up with `ip` (iproute2).
//!
//! Overlay endpoints ([`NetworkEndpoint`]): one more veth per endpoint, on
//! the network's bridge `swbr<vni>` ([`ensure_endpoint_bridge`]), with
//! exactly the manager's address and MAC. Bridges and the host ends of the
//! veths live in the runtime's own network namespace, or in a given one
//! (`host_netns`: commands then run through `nsenter --net=<path>`).
//!
//! containerd has no networking of its own. The bridge carries the gateway
//! address (the first of the subnet), so the host reaches every task's
//! address directly: health probes, the routing mesh and discovery use the
//! same addresses as on Docker. Addresses are allocated from the subnet,
//! skipping those held by this process ([`IpAllocator`]) and those recorded
//! in the labels of the containers already in containerd's namespace (so an
//! agent that restarted does not hand out an address in use).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;
use swarm_core::runtime::{NetworkEndpoint, RuntimeError};
use tokio::process::Command;
use tracing::{debug, info};

/// Most overlay endpoints one task may have (interface names must fit).
pub const MAX_ENDPOINTS: usize = 32;

/// Prefix of the alias (`ip link set .. alias`) the runtime puts on an
/// endpoint bridge, followed by the network's name: how
/// [`remove_endpoint_bridges`] finds the bridges of a network.
pub const BRIDGE_ALIAS_PREFIX: &str = "swarm-rs-network:";

/// `program` run in the runtime's network namespace, or in `netns` (a
/// namespace path such as `/run/netns/<name>`) through `nsenter`.
pub(crate) fn command_in(netns: Option<&Path>, program: &str) -> Command {
    match netns {
        None => Command::new(program),
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg(program);
            c
        }
    }
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty() && name.len() <= 15 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The node bridge and its subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Bridge interface name (at most 15 bytes).
    pub name: String,
    /// Subnet base address (the gateway is base + 1).
    pub subnet: Ipv4Addr,
    /// Prefix length (8..=30).
    pub prefix: u8,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig { name: "swarm-ctd0".into(), subnet: Ipv4Addr::new(10, 213, 0, 0), prefix: 22 }
    }
}

impl BridgeConfig {
    /// The bridge of node number `index` (0..512) in a cluster: its own /22
    /// of 10.200.0.0/13, so task addresses are unique cluster-wide (the
    /// routing mesh and discovery need that across nodes).
    pub fn for_node(index: u16) -> Result<Self, RuntimeError> {
        if index >= 512 {
            return Err(RuntimeError::InvalidConfig(format!("node index {index} must be below 512")));
        }
        let base = u32::from(Ipv4Addr::new(10, 200, 0, 0)) + (u32::from(index) << 10);
        Ok(BridgeConfig { subnet: Ipv4Addr::from(base), prefix: 22, ..Default::default() })
    }

    /// Checks the names and the subnet.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        if !valid_ifname(&self.name) {
            return Err(RuntimeError::InvalidConfig(format!(
                "bridge name {:?} must be 1-15 of [A-Za-z0-9_-]",
                self.name
            )));
        }
        if !(8..=30).contains(&self.prefix) {
            return Err(RuntimeError::InvalidConfig(format!("bridge prefix /{} must be in /8../30", self.prefix)));
        }
        if u32::from(self.subnet) & !self.mask() != 0 {
            return Err(RuntimeError::InvalidConfig(format!(
                "bridge subnet {}/{} has host bits set",
                self.subnet, self.prefix
            )));
        }
        Ok(())
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// The gateway (bridge) address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + 1)
    }

    /// Usable task addresses: base+2 .. broadcast-1.
    fn hosts(&self) -> std::ops::Range<u32> {
        let base = u32::from(self.subnet);
        let size = 1u32 << (32 - u32::from(self.prefix));
        base + 2..base + size - 1
    }
}

/// Addresses handed out by this process, per bridge.
static HELD: Mutex<BTreeMap<String, BTreeSet<Ipv4Addr>>> = Mutex::new(BTreeMap::new());

/// Allocates task addresses on a bridge.
#[derive(Debug, Clone)]
pub struct IpAllocator {
    bridge: BridgeConfig,
}

impl IpAllocator {
    /// An allocator for `bridge`.
    pub fn new(bridge: BridgeConfig) -> Self {
        IpAllocator { bridge }
    }

    /// The lowest address neither held here nor in `in_use`.
    pub fn allocate(&self, in_use: &BTreeSet<Ipv4Addr>) -> Result<Ipv4Addr, RuntimeError> {
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        let mine = held.entry(self.bridge.name.clone()).or_default();
        for a in self.bridge.hosts() {
            let ip = Ipv4Addr::from(a);
            if !mine.contains(&ip) && !in_use.contains(&ip) {
                mine.insert(ip);
                return Ok(ip);
            }
        }
        Err(RuntimeError::Engine(format!(
            "no free address left in {}/{} on bridge {}",
            self.bridge.subnet, self.bridge.prefix, self.bridge.name
        )))
    }

    /// Gives an address back.
    pub fn release(&self, ip: Ipv4Addr) {
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = held.get_mut(&self.bridge.name) {
            s.remove(&ip);
        }
    }
}

/// Runs `ip` with `args` (in `netns` if given); returns its output, the
/// error names the command and its stderr.
async fn ip_out(netns: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let out = command_in(netns, "ip")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("running `ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let at = netns.map(|n| format!(" in {}", n.display())).unwrap_or_default();
        Err(format!("`ip {}`{at} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

async fn ip(netns: Option<&Path>, args: &[&str]) -> Result<(), String> {
    ip_out(netns, args).await.map(|_| ())
}

/// Runs `ip <opts> -batch -` (in `netns` if given) with `cmds` on stdin.
async fn ip_batch(netns: Option<&Path>, opts: &[&str], cmds: &str) -> Result<(), String> {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;
    let mut child = command_in(netns, "ip")
        .args(opts)
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running `ip -batch`: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(cmds.as_bytes()).await.map_err(|e| format!("writing to `ip -batch`: {e}"))?;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("waiting for `ip -batch`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {} -batch` of {:?} failed: {}",
            opts.join(" "),
            cmds.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Creates the bridge `name` unless it exists (tolerating a concurrent creation).
async fn ensure_link(netns: Option<&Path>, name: &str) -> Result<(), RuntimeError> {
    if ip(netns, &["link", "show", "dev", name]).await.is_err() {
        if let Err(e) = ip(netns, &["link", "add", "name", name, "type", "bridge"]).await {
            // Another runtime in this process (or the overlay plane) may have raced us to it.
            if ip(netns, &["link", "show", "dev", name]).await.is_err() {
                return Err(RuntimeError::Unavailable(format!("cannot create bridge {name}: {e}")));
            }
        }
    }
    Ok(())
}

/// Creates the bridge with its gateway address, up (idempotent), in
/// `netns` if given.
pub async fn ensure_bridge(b: &BridgeConfig, netns: Option<&Path>) -> Result<(), RuntimeError> {
    b.validate()?;
    ensure_link(netns, &b.name).await?;
    let cidr = format!("{}/{}", b.gateway(), b.prefix);
    if let Err(e) = ip(netns, &["addr", "replace", &cidr, "dev", &b.name]).await {
        return Err(RuntimeError::Unavailable(format!("cannot address bridge {}: {e}", b.name)));
    }
    ip(netns, &["link", "set", "dev", &b.name, "up"])
        .await
        .map_err(|e| RuntimeError::Unavailable(format!("cannot bring bridge {} up: {e}", b.name)))?;
    Ok(())
}

/// Checks an overlay endpoint before anything is made for it: a valid
/// bridge name, the address a host address of the subnet and not the
/// gateway.
pub fn validate_endpoint(ep: &NetworkEndpoint) -> Result<(), RuntimeError> {
    let at = format!("overlay endpoint on network {:?}", ep.network);
    if !valid_ifname(&ep.bridge) {
        return Err(RuntimeError::InvalidConfig(format!(
            "{at}: bridge name {:?} must be 1-15 of [A-Za-z0-9_-]",
            ep.bridge
        )));
    }
    let net = ep.subnet.trunc();
    if net.prefix_len() > 30 {
        return Err(RuntimeError::InvalidConfig(format!("{at}: subnet {net} is smaller than a /30")));
    }
    if !net.contains(&ep.address) || ep.address == net.network() || ep.address == net.broadcast() {
        return Err(RuntimeError::InvalidConfig(format!(
            "{at}: address {} is not a host address of {net}",
            ep.address
        )));
    }
    if let Some(gw) = ep.gateway
        && (!net.contains(&gw) || gw == ep.address)
    {
        return Err(RuntimeError::InvalidConfig(format!(
            "{at}: gateway {gw} must be another address of {net} than the task's {}",
            ep.address
        )));
    }
    Ok(())
}

/// Makes sure an endpoint's bridge exists and is up (in `netns` if
/// given), with the gateway address (and the subnet's prefix) unless the
/// network is internal, the alias naming its network, and a `FORWARD`
/// accept for traffic within it ([`accept_within_bridge`](crate::ports::accept_within_bridge)). A bridge made
/// first by the overlay plane is taken as it is (addresses added, none
/// removed).
pub async fn ensure_endpoint_bridge(ep: &NetworkEndpoint, netns: Option<&Path>) -> Result<(), RuntimeError> {
    validate_endpoint(ep)?;
    ensure_link(netns, &ep.bridge).await?;
    let fail = |e: String| RuntimeError::Unavailable(format!("bridge {} of network {:?}: {e}", ep.bridge, ep.network));
    let alias = format!("{BRIDGE_ALIAS_PREFIX}{}", ep.network);
    ip(netns, &["link", "set", "dev", &ep.bridge, "alias", &alias]).await.map_err(fail)?;
    if let (false, Some(gw)) = (ep.internal, ep.gateway) {
        let cidr = format!("{gw}/{}", ep.subnet.prefix_len());
        ip(netns, &["addr", "replace", &cidr, "dev", &ep.bridge]).await.map_err(fail)?;
    }
    ip(netns, &["link", "set", "dev", &ep.bridge, "up"]).await.map_err(fail)?;
    crate::ports::accept_within_bridge(netns, &ep.bridge).await
}

/// Removes the bridges of network `name` (found by their alias, in
/// `netns` if given) that nothing is plugged into. A bridge with a task's
/// veth on it is an error naming them; a bridge with only other ports (the
/// overlay plane's VXLAN device) is left to the plane. Returns the bridges
/// removed.
pub async fn remove_endpoint_bridges(name: &str, netns: Option<&Path>) -> Result<Vec<String>, RuntimeError> {
    let fail = |e: String| RuntimeError::Engine(format!("removing network {name:?}: {e}"));
    let links = ip_out(netns, &["-j", "-d", "link", "show", "type", "bridge"]).await.map_err(fail)?;
    let alias = format!("{BRIDGE_ALIAS_PREFIX}{name}");
    let mut removed = Vec::new();
    for br in links_where(&links, |l| l["ifalias"].as_str() == Some(alias.as_str())) {
        let ports = ip_out(netns, &["-j", "-d", "link", "show", "master", &br]).await.map_err(fail)?;
        let veths = links_where(&ports, |l| l["linkinfo"]["info_kind"].as_str() == Some("veth"));
        if !veths.is_empty() {
            return Err(fail(format!("bridge {br} still has task interfaces {veths:?}")));
        }
        let others = links_where(&ports, |_| true);
        if !others.is_empty() {
            info!(network = name, bridge = %br, ports = ?others, "bridge left to the overlay plane, which still uses it");
            continue;
        }
        match ip(netns, &["link", "del", "dev", &br]).await {
            Ok(()) => {
                crate::ports::forget_bridge(netns, &br).await;
                removed.push(br)
            }
            // Gone meanwhile.
            Err(_) if ip(netns, &["link", "show", "dev", &br]).await.is_err() => {}
            Err(e) => return Err(fail(e)),
        }
    }
    Ok(removed)
}

/// Names of the links in `ip -j` output that satisfy `keep`.
fn links_where(json: &str, keep: impl Fn(&serde_json::Value) -> bool) -> Vec<String> {
    let list: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
    list.iter().filter(|l| keep(l)).filter_map(|l| l["ifname"].as_str().map(str::to_string)).collect()
}

/// One interface of a task's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskIface {
    /// The bridge its host end is plugged into.
    pub bridge: String,
    /// Its address.
    pub address: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// Its MAC (`None`: the kernel's random one).
    pub mac: Option<[u8; 6]>,
    /// Its MTU, both ends (`None`: the kernel's default).
    pub mtu: Option<u32>,
}

/// A task's interfaces (`eth0`, `eth1`, .. in this order) and its default
/// route: (index of the interface, gateway).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TaskNetPlan {
    /// The interfaces.
    pub ifaces: Vec<TaskIface>,
    /// The default route, if any.
    pub default_route: Option<(usize, Ipv4Addr)>,
}

impl TaskNetPlan {
    /// The interfaces for `endpoints` (MTU `mtu`, 0 = default), then one on
    /// the node bridge at `node` if given. The default route goes through
    /// the first endpoint that is not internal, else the node bridge.
    pub fn new(endpoints: &[NetworkEndpoint], mtu: u32, node: Option<(&BridgeConfig, Ipv4Addr)>) -> Self {
        let mut plan = TaskNetPlan::default();
        for ep in endpoints {
            if plan.default_route.is_none()
                && !ep.internal
                && let Some(gw) = ep.gateway
            {
                plan.default_route = Some((plan.ifaces.len(), gw));
            }
            plan.ifaces.push(TaskIface {
                bridge: ep.bridge.clone(),
                address: ep.address,
                prefix: ep.subnet.prefix_len(),
                mac: Some(ep.mac),
                mtu: Some(ep.mtu(mtu)).filter(|m| *m > 0),
            });
        }
        if let Some((b, addr)) = node {
            if plan.default_route.is_none() {
                plan.default_route = Some((plan.ifaces.len(), b.gateway()));
            }
            plan.ifaces.push(TaskIface {
                bridge: b.name.clone(),
                address: addr,
                prefix: b.prefix,
                mac: None,
                mtu: None,
            });
        }
        plan
    }
}

/// Names of a task's network objects, derived from a short token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskNet {
    /// Network namespace name (under `/var/run/netns`).
    pub netns: String,
    /// Host end of the veth pair of the first interface (`eth0`).
    pub host_if: String,
    token: String,
}

impl TaskNet {
    /// Names for `token` (8 hex digits).
    pub fn for_token(token: &str) -> Self {
        TaskNet { netns: format!("swarm-ctd-{token}"), host_if: format!("swv{token}"), token: token.to_string() }
    }

    /// The namespace's path, for the OCI spec.
    pub fn netns_path(&self) -> String {
        format!("/var/run/netns/{}", self.netns)
    }

    /// Host end of the veth of interface `i` (`swv<token>`, then
    /// `swv<token>1`, ..).
    pub fn host_if_of(&self, i: usize) -> String {
        if i == 0 { self.host_if.clone() } else { format!("swv{}{i}", self.token) }
    }

    /// The namespace end before it is renamed `eth<i>`.
    fn peer_if_of(&self, i: usize) -> String {
        self.host_if_of(i).replacen("swv", "swp", 1)
    }

    /// `ip -batch` commands run in the host namespace: the task's
    /// namespace, and a veth per interface with its host end on its bridge.
    pub fn host_script(&self, plan: &TaskNetPlan) -> String {
        let mut s = format!("netns add {}\n", self.netns);
        for (i, f) in plan.ifaces.iter().enumerate() {
            let mtu = f.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default();
            s += &format!(
                "link add {h}{mtu} type veth peer name {p}{mtu} netns {ns}\nlink set {h} master {br} up\n",
                h = self.host_if_of(i),
                p = self.peer_if_of(i),
                ns = self.netns,
                br = f.bridge
            );
        }
        s
    }

    /// `ip -batch` commands run in the task's namespace: names, MACs,
    /// addresses, links up, the default route.
    pub fn inside_script(&self, plan: &TaskNetPlan) -> String {
        let mut s = String::new();
        for (i, f) in plan.ifaces.iter().enumerate() {
            s += &format!("link set {} name eth{i}\n", self.peer_if_of(i));
            if let Some(mac) = f.mac {
                let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
                s += &format!("link set eth{i} address {mac}\n");
            }
            s += &format!("addr add {}/{} dev eth{i}\nlink set eth{i} up\n", f.address, f.prefix);
        }
        s += "link set lo up\n";
        if let Some((i, gw)) = plan.default_route {
            s += &format!("route add default via {gw} dev eth{i}\n");
        }
        s
    }

    /// Creates the namespace and the veths of `plan`, their host ends in
    /// `host_netns` if given. On failure, removes what it made.
    pub async fn setup(&self, plan: &TaskNetPlan, host_netns: Option<&Path>) -> Result<(), RuntimeError> {
        if plan.ifaces.len() > MAX_ENDPOINTS + 1 {
            return Err(RuntimeError::InvalidConfig(format!(
                "{} network interfaces: at most {MAX_ENDPOINTS} overlay endpoints per task",
                plan.ifaces.len()
            )));
        }
        let r = async {
            // Two `ip -batch` runs instead of many `ip` processes: the host
            // side, then the inside of the namespace.
            ip_batch(host_netns, &[], &self.host_script(plan)).await?;
            ip_batch(None, &["-n", &self.netns], &self.inside_script(plan)).await
        }
        .await;
        if let Err(e) = &r {
            debug!(netns = %self.netns, error = %e, "network setup failed, removing what was made");
            self.teardown(plan.ifaces.len().max(1), host_netns).await;
        }
        r.map_err(|e| RuntimeError::Engine(format!("network setup of {}: {e}", self.netns)))
    }

    /// Removes the first `ifaces` veths (host ends in `host_netns` if
    /// given) and the namespace (idempotent, best effort).
    pub async fn teardown(&self, ifaces: usize, host_netns: Option<&Path>) {
        let links: String = (0..ifaces).map(|i| format!("link del {}\n", self.host_if_of(i))).collect();
        if let Err(e) = ip_batch(host_netns, &["-force"], &links).await {
            debug!(error = %e, "some veths were already gone");
        }
        if let Err(e) = ip(None, &["netns", "del", &self.netns]).await {
            debug!(error = %e, "the namespace was already gone");
        }
    }

    /// True while the namespace exists.
    pub fn exists(&self) -> bool {
        std::path::Path::new(&self.netns_path()).exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_skips_used_and_held() {
        let b = BridgeConfig { name: "swarm-ut0".into(), subnet: Ipv4Addr::new(10, 250, 0, 0), prefix: 29 };
        b.validate().unwrap();
        assert_eq!(b.gateway(), Ipv4Addr::new(10, 250, 0, 1));
        let a = IpAllocator::new(b);
        let used: BTreeSet<_> = [Ipv4Addr::new(10, 250, 0, 2)].into();
        let x = a.allocate(&used).unwrap();
        assert_eq!(x, Ipv4Addr::new(10, 250, 0, 3));
        let y = a.allocate(&used).unwrap();
        assert_eq!(y, Ipv4Addr::new(10, 250, 0, 4));
        a.release(x);
        assert_eq!(a.allocate(&used).unwrap(), x);
        // .5 and .6 left; .7 is the broadcast.
        a.allocate(&used).unwrap();
        a.allocate(&used).unwrap();
        assert!(a.allocate(&used).unwrap_err().to_string().contains("no free address"));
    }

    #[test]
    fn bad_bridges_are_rejected() {
        let mut b = BridgeConfig::default();
        b.validate().unwrap();
        b.name = "a-name-much-too-long".into();
        assert!(b.validate().is_err());
        let b = BridgeConfig { subnet: Ipv4Addr::new(10, 0, 0, 1), ..Default::default() };
        assert!(b.validate().unwrap_err().to_string().contains("host bits"));
    }

    #[test]
    fn node_bridges_do_not_overlap() {
        let a = BridgeConfig::for_node(0).unwrap();
        let b = BridgeConfig::for_node(1).unwrap();
        let last = BridgeConfig::for_node(511).unwrap();
        assert_eq!(a.subnet, Ipv4Addr::new(10, 200, 0, 0));
        assert_eq!(b.subnet, Ipv4Addr::new(10, 200, 4, 0));
        assert_eq!(last.subnet, Ipv4Addr::new(10, 207, 252, 0));
        for x in [a, b, last] {
            x.validate().unwrap();
        }
        assert!(BridgeConfig::for_node(512).is_err());
    }

    fn ep(network: &str, vni: u32, subnet: &str, address: &str, internal: bool) -> NetworkEndpoint {
        let subnet: ipnet::Ipv4Net = subnet.parse().unwrap();
        let address: Ipv4Addr = address.parse().unwrap();
        NetworkEndpoint {
            network: network.into(),
            bridge: swarm_core::model::overlay_bridge_name(vni),
            vni,
            subnet,
            address,
            mac: swarm_core::model::overlay_mac(address),
            gateway: (!internal).then(|| Ipv4Addr::from(u32::from(subnet.network()) + 1)),
            internal,
            encrypted: false,
            aliases: vec![],
        }
    }

    #[test]
    fn plan_puts_endpoints_first_and_routes_through_the_first_external_one() {
        let node = BridgeConfig { name: "swarm-ut0".into(), subnet: Ipv4Addr::new(10, 250, 0, 0), prefix: 24 };
        let eps = [ep("a", 4100, "10.1.0.0/24", "10.1.0.5", true), ep("b", 4101, "10.2.0.0/16", "10.2.3.4", false)];
        let plan = TaskNetPlan::new(&eps, 1450, Some((&node, Ipv4Addr::new(10, 250, 0, 2))));
        assert_eq!(plan.ifaces.len(), 3);
        assert_eq!(plan.default_route, Some((1, Ipv4Addr::new(10, 2, 0, 1))));
        assert_eq!((plan.ifaces[1].prefix, plan.ifaces[1].mtu), (16, Some(1450)));
        assert_eq!((plan.ifaces[2].bridge.as_str(), plan.ifaces[2].mac), ("swarm-ut0", None));
        // Only internal endpoints and no node bridge: no default route.
        let plan = TaskNetPlan::new(&eps[..1], 0, None);
        assert_eq!((plan.ifaces.len(), plan.default_route, plan.ifaces[0].mtu), (1, None, None));
        // No external endpoint: the node bridge gives the route.
        let plan = TaskNetPlan::new(&eps[..1], 0, Some((&node, Ipv4Addr::new(10, 250, 0, 2))));
        assert_eq!(plan.default_route, Some((1, Ipv4Addr::new(10, 250, 0, 1))));
    }

    #[test]
    fn scripts_give_each_interface_its_address_mac_and_bridge() {
        let eps = [ep("a", 4100, "10.1.0.0/24", "10.1.0.5", true), ep("b", 4101, "10.2.0.0/24", "10.2.0.9", false)];
        let plan = TaskNetPlan::new(&eps, 1450, None);
        let n = TaskNet::for_token("0123abcd");
        assert_eq!(
            n.host_script(&plan),
            "netns add swarm-ctd-0123abcd\n\
             link add swv0123abcd mtu 1450 type veth peer name swp0123abcd mtu 1450 netns swarm-ctd-0123abcd\n\
             link set swv0123abcd master swbr4100 up\n\
             link add swv0123abcd1 mtu 1450 type veth peer name swp0123abcd1 mtu 1450 netns swarm-ctd-0123abcd\n\
             link set swv0123abcd1 master swbr4101 up\n"
        );
        assert_eq!(
            n.inside_script(&plan),
            "link set swp0123abcd name eth0\nlink set eth0 address 02:42:0a:01:00:05\n\
             addr add 10.1.0.5/24 dev eth0\nlink set eth0 up\n\
             link set swp0123abcd1 name eth1\nlink set eth1 address 02:42:0a:02:00:09\n\
             addr add 10.2.0.9/24 dev eth1\nlink set eth1 up\n\
             link set lo up\nroute add default via 10.2.0.1 dev eth1\n"
        );
        assert!(n.host_if_of(MAX_ENDPOINTS).len() <= 15);
    }

    #[test]
    fn bad_endpoints_are_rejected() {
        validate_endpoint(&ep("a", 4100, "10.1.0.0/24", "10.1.0.5", false)).unwrap();
        for (bad, want) in [
            (ep("a", 4100, "10.1.0.0/24", "10.1.0.1", false), "gateway"),
            (ep("a", 4100, "10.1.0.0/24", "10.1.0.0", false), "not a host address"),
            (ep("a", 4100, "10.1.0.0/24", "10.9.0.3", false), "not a host address"),
            (NetworkEndpoint { bridge: "x".repeat(16), ..ep("a", 4100, "10.1.0.0/24", "10.1.0.5", false) }, "bridge"),
        ] {
            let e = validate_endpoint(&bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn links_are_picked_from_ip_json() {
        let json = r#"[{"ifname":"swbr1","ifalias":"swarm-rs-network:x","linkinfo":{"info_kind":"bridge"}},
                       {"ifname":"v1","linkinfo":{"info_kind":"veth"}}]"#;
        assert_eq!(links_where(json, |l| l["ifalias"].as_str() == Some("swarm-rs-network:x")), ["swbr1"]);
        assert_eq!(links_where(json, |l| l["linkinfo"]["info_kind"].as_str() == Some("veth")), ["v1"]);
        assert!(links_where("", |_| true).is_empty());
    }

    #[test]
    fn names_fit_interface_limits() {
        let n = TaskNet::for_token("0123abcd");
        assert!(n.host_if.len() <= 15);
        assert_eq!(n.netns_path(), "/var/run/netns/swarm-ctd-0123abcd");
    }
}
