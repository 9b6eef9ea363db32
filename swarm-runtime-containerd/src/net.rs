//! Task networking: one Linux bridge per node, one network namespace and a
//! veth pair per task, set up with `ip` (iproute2).
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
use std::sync::Mutex;
use swarm_core::runtime::RuntimeError;
use tokio::process::Command;
use tracing::debug;

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
        if self.name.is_empty()
            || self.name.len() > 15
            || !self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
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

/// Runs `ip` with `args`; the error names the command and its stderr.
async fn ip(args: &[&str]) -> Result<(), String> {
    let out =
        Command::new("ip").args(args).output().await.map_err(|e| format!("running `ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Runs `ip <opts> -batch -` with `cmds` on stdin.
async fn ip_batch(opts: &[&str], cmds: &str) -> Result<(), String> {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new("ip")
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

/// Creates the bridge with its gateway address, up (idempotent).
pub async fn ensure_bridge(b: &BridgeConfig) -> Result<(), RuntimeError> {
    b.validate()?;
    if ip(&["link", "show", "dev", &b.name]).await.is_err() {
        if let Err(e) = ip(&["link", "add", "name", &b.name, "type", "bridge"]).await {
            // Another runtime in this process may have raced us to it.
            if ip(&["link", "show", "dev", &b.name]).await.is_err() {
                return Err(RuntimeError::Unavailable(format!("cannot create bridge {}: {e}", b.name)));
            }
        }
    }
    let cidr = format!("{}/{}", b.gateway(), b.prefix);
    if let Err(e) = ip(&["addr", "replace", &cidr, "dev", &b.name]).await {
        return Err(RuntimeError::Unavailable(format!("cannot address bridge {}: {e}", b.name)));
    }
    ip(&["link", "set", "dev", &b.name, "up"])
        .await
        .map_err(|e| RuntimeError::Unavailable(format!("cannot bring bridge {} up: {e}", b.name)))?;
    Ok(())
}

/// Names of a task's network objects, derived from a short token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskNet {
    /// Network namespace name (under `/var/run/netns`).
    pub netns: String,
    /// Host end of the veth pair.
    pub host_if: String,
}

impl TaskNet {
    /// Names for `token` (8 hex digits).
    pub fn for_token(token: &str) -> Self {
        TaskNet { netns: format!("swarm-ctd-{token}"), host_if: format!("swv{token}") }
    }

    /// The namespace's path, for the OCI spec.
    pub fn netns_path(&self) -> String {
        format!("/var/run/netns/{}", self.netns)
    }

    /// Creates the namespace and veth, gives the task `addr`, plugs the host
    /// end into the bridge. On failure, removes what it made.
    pub async fn setup(&self, b: &BridgeConfig, addr: Ipv4Addr) -> Result<(), RuntimeError> {
        let r = self.try_setup(b, addr).await;
        if let Err(e) = &r {
            debug!(netns = %self.netns, error = %e, "network setup failed, removing what was made");
            self.teardown().await;
        }
        r.map_err(|e| RuntimeError::Engine(format!("network setup of {}: {e}", self.netns)))
    }

    async fn try_setup(&self, b: &BridgeConfig, addr: Ipv4Addr) -> Result<(), String> {
        let peer = self.host_if.replacen("swv", "swp", 1);
        // Two `ip -batch` runs instead of nine `ip` processes: the host side,
        // then the inside of the namespace.
        let host = format!(
            "netns add {ns}\nlink add {h} type veth peer name {p} netns {ns}\nlink set {h} master {br} up\n",
            ns = self.netns,
            h = self.host_if,
            p = peer,
            br = b.name
        );
        ip_batch(&[], &host).await?;
        let inside = format!(
            "link set {p} name eth0\naddr add {addr}/{prefix} dev eth0\nlink set eth0 up\nlink set lo up\n\
             route add default via {gw}\n",
            p = peer,
            prefix = b.prefix,
            gw = b.gateway()
        );
        ip_batch(&["-n", &self.netns], &inside).await
    }

    /// Removes the veth and the namespace (idempotent, best effort).
    pub async fn teardown(&self) {
        let cmds = format!("link del {}\nnetns del {}\n", self.host_if, self.netns);
        if let Err(e) = ip_batch(&["-force"], &cmds).await {
            debug!(error = %e, "some network pieces were already gone");
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

    #[test]
    fn names_fit_interface_limits() {
        let n = TaskNet::for_token("0123abcd");
        assert!(n.host_if.len() <= 15);
        assert_eq!(n.netns_path(), "/var/run/netns/swarm-ctd-0123abcd");
    }
}
