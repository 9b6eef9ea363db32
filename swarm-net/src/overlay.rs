//! The node's overlay data plane: the kernel's bridges, VXLAN devices,
//! forwarding and neighbour entries and isolation rules made to match the
//! node's [`OverlayView`], programmed over netlink (rtnetlink).
//!
//! For each network of the view (VNI `v`):
//!
//! - the bridge `swbr<v>` (created if missing, up; a bridge a runtime made
//!   first is reused), with the gateway address (subnet prefix) unless the
//!   network is internal;
//! - the VXLAN device `swvx<v>`: id `v`, UDP destination port
//!   [`OverlayConfig::vxlan_port`] (encrypted networks:
//!   [`OverlayConfig::encrypted_port`], whose packets the plane's userspace
//!   tunnel carries, and MTU [`OverlayConfig::encrypted_mtu`]), `local` the
//!   node's underlay address, learning off, ARP proxy on (ARP requests are
//!   answered from the device's neighbour entries, so no broadcast crosses
//!   nodes), enslaved to the bridge, up;
//! - while the view has an encrypted network: one [`Tunnel`] (started
//!   before any encrypted network's VXLAN device exists, stopped when the
//!   last one leaves) holding each encrypted network's keys from the view
//!   ([`key_set`]: seal under the key marked current, open under it or the
//!   other one);
//! - for every remote task `ip` on node `n`: a forwarding entry
//!   `overlay_mac(ip) dst n` on the VXLAN device (permanent, self) and a
//!   permanent neighbour entry `ip lladdr overlay_mac(ip)` on it; entries
//!   not in the view are removed;
//! - iptables rules in the chains `<prefix>` (filter, jumped to from the
//!   top of `FORWARD`) and `<prefix>-POST` (nat, from the top of
//!   `POSTROUTING`): a network's bridge talks to itself; traffic between two
//!   swarm bridges is dropped; an internal network forwards nothing in or
//!   out; other networks go out through the uplinks (any non-swarm
//!   interface by default), masqueraded.
//!
//! The plane is level-triggered: every update reads what the kernel has
//! (links, addresses, entries), computes the changes with the pure
//! [`diff`] and applies them, so a new view is in force within a netlink
//! round trip, and the periodic resync repairs whatever was changed by hand
//! (a deleted entry, a deleted device, flushed rules). Networks that leave
//! the view lose their VXLAN device, their entries, their rules and their
//! bridge when the plane made it (a bridge it creates carries the alias
//! [`BRIDGE_ALIAS`], so a restarted plane still knows it); a bridge a
//! runtime made is left to the runtime.
//!
//! Linux only; needs CAP_NET_ADMIN, `iptables` and `iptables-restore`.
//! The netlink socket and the iptables commands belong to the network
//! namespace of the thread that runs [`Overlay::start`] and the plane's
//! task: to run a plane for a namespace (tests), spawn `Overlay::start` on a
//! runtime whose threads live there ([`crate::netns::NetNs::runtime`]).
//!
//! ```no_run
//! # async fn f(store: std::sync::Arc<dyn swarm_core::store::Store>) -> Result<(), swarm_net::overlay::OverlayError> {
//! use swarm_net::overlay::{follow_store, Overlay, OverlayConfig};
//! let (views, _follower) = follow_store(store, "node-1".into());
//! let overlay = Overlay::start(views, OverlayConfig::new("192.168.1.10".parse().unwrap())).await?;
//! // ... the node's tasks reach their networks' tasks on other nodes ...
//! overlay.stop().await?;
//! # Ok(()) }
//! ```

use crate::kernel::{Rules, restore_input};
use crate::tunnel::{KeySet, Tunnel, TunnelConfig, TunnelStats, overlay_mtu};
use futures_util::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVxlan};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarm_core::id::NodeId;
use swarm_core::model::{MAX_VNI, ObjectKind, VXLAN_PORT, overlay_bridge_name, overlay_mac, overlay_vxlan_name};
use swarm_core::overlay::{NetworkView, OverlayView};
use swarm_core::store::Store;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The alias (`ip link show` prints it) of every bridge the plane creates:
/// only such bridges are deleted when their network leaves the view.
pub const BRIDGE_ALIAS: &str = "swarm-overlay";

/// A MAC address.
pub type Mac = [u8; 6];

/// Settings of an [`Overlay`].
#[derive(Clone, Debug)]
pub struct OverlayConfig {
    /// This node's underlay address: the VXLAN devices' `local` address,
    /// the one other nodes' forwarding entries point at.
    pub underlay: IpAddr,
    /// The UDP destination port of plain VXLAN (default
    /// [`VXLAN_PORT`], 4789).
    pub vxlan_port: u16,
    /// The UDP destination port of the VXLAN devices of encrypted networks
    /// (default 4799): the plane's userspace tunnel ([`crate::tunnel`])
    /// carries those packets.
    pub encrypted_port: u16,
    /// The tunnel's settings (encrypted networks); `None` (default):
    /// [`TunnelConfig::new`] of the underlay address with
    /// `encrypted_port`. Its `local` must be `underlay` and its
    /// `encrypted_port` this one; its `underlay_mtu` sets the MTU of
    /// encrypted networks' VXLAN devices ([`overlay_mtu`]: 1382 on 1500).
    pub tunnel: Option<TunnelConfig>,
    /// Compare the kernel with the view and repair it this often even when
    /// the view does not change (default 10 s).
    pub resync: Duration,
    /// Retry a failed update this soon when nothing changes meanwhile
    /// (default 1 s).
    pub retry: Duration,
    /// Name of the filter chain; the nat chain is `<prefix>-POST`
    /// (letters, digits, `_` and `-`, at most 23 characters; default
    /// `SWARM-OVERLAY`).
    pub chain_prefix: String,
    /// The interfaces a non-internal network may leave by (masqueraded);
    /// empty (default): any interface but the swarm bridges (`swbr+`).
    pub uplinks: Vec<String>,
    /// Write 1 to `/proc/sys/net/ipv4/ip_forward` at start (default true;
    /// needed for traffic out of non-internal networks).
    pub enable_forwarding: bool,
    /// The MTU of the VXLAN devices (a bridge takes the smallest of its
    /// ports'); `None` (default): the kernel's. Set it to the underlay's
    /// MTU minus 50 (1450 on a 1500-byte underlay) when the runtimes give
    /// task interfaces that MTU, so encapsulated frames are not fragmented.
    pub mtu: Option<u32>,
    /// The `iptables` command.
    pub iptables: PathBuf,
    /// The `iptables-restore` command.
    pub iptables_restore: PathBuf,
}

impl OverlayConfig {
    /// The defaults, with `underlay` as this node's address.
    pub fn new(underlay: IpAddr) -> OverlayConfig {
        OverlayConfig {
            underlay,
            vxlan_port: VXLAN_PORT,
            encrypted_port: 4799,
            tunnel: None,
            resync: Duration::from_secs(10),
            retry: Duration::from_secs(1),
            chain_prefix: "SWARM-OVERLAY".into(),
            uplinks: Vec::new(),
            enable_forwarding: true,
            mtu: None,
            iptables: "iptables".into(),
            iptables_restore: "iptables-restore".into(),
        }
    }

    /// The tunnel's settings: [`OverlayConfig::tunnel`], else the defaults
    /// for this node. Encrypted networks need an IPv4 underlay.
    pub fn tunnel_config(&self) -> Result<TunnelConfig, OverlayError> {
        if let Some(t) = &self.tunnel {
            return Ok(t.clone());
        }
        match self.underlay {
            IpAddr::V4(local) => Ok(TunnelConfig { encrypted_port: self.encrypted_port, ..TunnelConfig::new(local) }),
            IpAddr::V6(_) => Err(OverlayError::Config {
                field: "underlay",
                reason: format!("encrypted networks need an IPv4 underlay address, not {}", self.underlay),
            }),
        }
    }

    /// The MTU of an encrypted network's VXLAN device: [`overlay_mtu`] of
    /// the tunnel's underlay MTU, or [`OverlayConfig::mtu`] if lower.
    pub fn encrypted_mtu(&self) -> u32 {
        let underlay = self.tunnel.as_ref().map_or(1500, |t| t.underlay_mtu);
        let m = overlay_mtu(underlay);
        self.mtu.map_or(m, |c| c.min(m))
    }

    fn post_chain(&self) -> String {
        format!("{}-POST", self.chain_prefix)
    }
}

/// Why the overlay plane could not do something.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// A setting is unusable.
    #[error("overlay: bad setting {field}: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The netlink socket could not be opened.
    #[error("overlay: cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
    /// A netlink request failed.
    #[error("overlay: {what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The error.
        source: rtnetlink::Error,
    },
    /// A link the plane needs is not there (or is not what it should be).
    #[error("overlay: {0}")]
    Link(String),
    /// A command could not run or failed.
    #[error("overlay: `{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output or why it could not start.
        detail: String,
    },
    /// Writing a sysctl failed.
    #[error("overlay: cannot set {path}: {source}")]
    Sysctl {
        /// The /proc/sys path.
        path: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The tunnel of encrypted networks failed.
    #[error("overlay: tunnel: {0}")]
    Tunnel(String),
    /// The plane's task ended abnormally.
    #[error("overlay: the plane's task failed: {0}")]
    Task(String),
}

// ---------------------------------------------------------------------------
// Desired state (pure)

/// What the kernel should hold for one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredNetwork {
    /// The VNI.
    pub vni: u32,
    /// `swbr<vni>`.
    pub bridge: String,
    /// `swvx<vni>`.
    pub vxlan: String,
    /// The VXLAN device's UDP destination port.
    pub port: u16,
    /// The VXLAN device's MTU, if set (always for encrypted networks).
    pub mtu: Option<u32>,
    /// Traffic between nodes goes through the tunnel.
    pub encrypted: bool,
    /// An encrypted network's keys for the tunnel (none when the view has
    /// none usable: its traffic between nodes is then dropped).
    pub keys: Option<KeySet>,
    /// The subnet (network address, prefix length).
    pub subnet: (Ipv4Addr, u8),
    /// The gateway address on the bridge, with the subnet's prefix length
    /// (none when internal).
    pub gateway: Option<(Ipv4Addr, u8)>,
    /// No traffic in or out of the network.
    pub internal: bool,
    /// Remote tasks: address -> their node's underlay address.
    pub remote: BTreeMap<Ipv4Addr, IpAddr>,
}

/// What the kernel should hold: one entry per network, by VNI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// The networks.
    pub networks: BTreeMap<u32, DesiredNetwork>,
}

fn parse_subnet(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let a: Ipv4Addr = a.trim().parse().ok()?;
    let p: u8 = p.trim().parse().ok().filter(|p| *p <= 32)?;
    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    Some((Ipv4Addr::from(u32::from(a) & mask), p))
}

fn in_subnet(ip: Ipv4Addr, (net, p): (Ipv4Addr, u8)) -> bool {
    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    u32::from(ip) & mask == u32::from(net)
}

/// The tunnel's keys of an encrypted network from its view: seal under the
/// key marked current (the newest such if several, the oldest key if
/// none is), accept the newest other key too. An error (naming the network
/// and the key, never a secret) when there is no key or one is not 32
/// bytes.
pub fn key_set(n: &NetworkView) -> Result<KeySet, String> {
    let vni = n.vni;
    let mut keys = Vec::with_capacity(n.keys.len());
    for k in &n.keys {
        let secret: [u8; 32] = k.secret.0.as_slice().try_into().map_err(|_| {
            format!(
                "network {:?} (VNI {vni}): key {} has {} bytes, not 32: not installed",
                n.name,
                k.id,
                k.secret.0.len()
            )
        })?;
        keys.push((k.current, crate::tunnel::NetworkKey { id: k.id, secret }));
    }
    let at = keys.iter().rposition(|(current, _)| *current).unwrap_or(0);
    if keys.is_empty() {
        return Err(format!(
            "network {:?} (VNI {vni}): encrypted, but the managers gave it no key yet: its traffic between nodes is dropped",
            n.name
        ));
    }
    let (_, current) = keys.remove(at);
    let previous = keys.into_iter().rev().map(|(_, k)| k).find(|k| k.id != current.id);
    Ok(KeySet { current, previous })
}

/// The desired state for `view` (pure), and what of the view cannot be
/// programmed, and why (a network left out, a remote entry left out).
pub fn desired(view: &OverlayView, config: &OverlayConfig) -> (Desired, Vec<String>) {
    let mut out = Desired::default();
    let mut problems = Vec::new();
    for (vni, n) in &view.networks {
        let vni = *vni;
        if vni == 0 || vni > MAX_VNI {
            problems.push(format!("network {:?}: VNI {vni} is out of range (1-{MAX_VNI})", n.name));
            continue;
        }
        let Some(subnet) = parse_subnet(&n.subnet) else {
            problems.push(format!("network {:?} (VNI {vni}): subnet {:?} is not an IPv4 CIDR", n.name, n.subnet));
            continue;
        };
        let gateway = if n.internal || n.gateway.is_empty() {
            None
        } else {
            match n.gateway.parse::<Ipv4Addr>() {
                Ok(g) if in_subnet(g, subnet) => Some((g, subnet.1)),
                _ => {
                    problems.push(format!(
                        "network {:?} (VNI {vni}): gateway {:?} is not an address of {}",
                        n.name, n.gateway, n.subnet
                    ));
                    None
                }
            }
        };
        let keys = if n.encrypted {
            if !config.underlay.is_ipv4() {
                problems.push(format!(
                    "network {:?} (VNI {vni}): encrypted networks need an IPv4 underlay, this node has {}: not joined",
                    n.name, config.underlay
                ));
                continue;
            }
            key_set(n).map_err(|e| problems.push(e)).ok()
        } else {
            None
        };
        let mut remote = BTreeMap::new();
        for (ip, node) in &n.remote {
            if node.is_ipv4() != config.underlay.is_ipv4() {
                problems.push(format!(
                    "network {:?} (VNI {vni}): task {ip} on node {node}: underlay address family differs from this node's {}",
                    n.name, config.underlay
                ));
                continue;
            }
            if *node == config.underlay {
                problems.push(format!(
                    "network {:?} (VNI {vni}): task {ip} is listed as remote on this node's own address {node}",
                    n.name
                ));
                continue;
            }
            remote.insert(*ip, *node);
        }
        out.networks.insert(
            vni,
            DesiredNetwork {
                vni,
                bridge: overlay_bridge_name(vni),
                vxlan: overlay_vxlan_name(vni),
                port: if n.encrypted { config.encrypted_port } else { config.vxlan_port },
                mtu: if n.encrypted { Some(config.encrypted_mtu()) } else { config.mtu },
                encrypted: n.encrypted,
                keys,
                subnet,
                gateway,
                internal: n.internal,
                remote,
            },
        );
    }
    (out, problems)
}

// ---------------------------------------------------------------------------
// Observed state

/// What kind of device a link is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A bridge.
    Bridge,
    /// A VXLAN device.
    Vxlan,
    /// Anything else (its kind as the kernel names it).
    Other(String),
}

/// A VXLAN device's settings the plane cares about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanParams {
    /// VNI.
    pub id: u32,
    /// UDP destination port.
    pub port: u16,
    /// Local address.
    pub local: Option<IpAddr>,
    /// Learning on.
    pub learning: bool,
    /// ARP proxy on.
    pub proxy: bool,
}

/// A link named like the plane's (`swbr*`, `swvx*`) as the kernel has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedLink {
    /// Its index.
    pub index: u32,
    /// Its kind.
    pub kind: LinkKind,
    /// Administratively up.
    pub up: bool,
    /// Its MTU.
    pub mtu: u32,
    /// The name of its master (bridge), if any.
    pub master: Option<String>,
    /// Carries [`BRIDGE_ALIAS`]: the plane made it.
    pub ours: bool,
    /// VXLAN settings (VXLAN devices).
    pub vxlan: Option<VxlanParams>,
    /// Its IPv4 addresses (address, prefix length).
    pub addrs: BTreeSet<(Ipv4Addr, u8)>,
    /// Its own forwarding entries (VXLAN devices): MAC -> destinations.
    pub fdb: BTreeMap<Mac, BTreeSet<IpAddr>>,
    /// Its IPv4 neighbour entries: address -> (MAC, permanent).
    pub neigh: BTreeMap<Ipv4Addr, (Mac, bool)>,
}

impl ObservedLink {
    /// A link of `kind`, up, with nothing on it.
    pub fn new(index: u32, kind: LinkKind) -> ObservedLink {
        ObservedLink {
            index,
            kind,
            up: true,
            mtu: 1500,
            master: None,
            ours: false,
            vxlan: None,
            addrs: BTreeSet::new(),
            fdb: BTreeMap::new(),
            neigh: BTreeMap::new(),
        }
    }
}

/// The plane's links as the kernel has them, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Links named `swbr<digits>` or `swvx<digits>`.
    pub links: BTreeMap<String, ObservedLink>,
}

fn plane_name(name: &str) -> bool {
    ["swbr", "swvx"]
        .iter()
        .any(|p| name.strip_prefix(p).is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())))
}

/// The MACs [`overlay_mac`] gives (`02:42:...`): the only forwarding
/// entries the plane manages on its VXLAN devices (others, e.g. a default
/// entry a tunnel module adds, are left alone).
fn overlay_like(mac: &Mac) -> bool {
    mac[0] == 0x02 && mac[1] == 0x42
}

// ---------------------------------------------------------------------------
// The diff (pure)

/// One step that brings the kernel closer to the desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Create bridge `name` (alias [`BRIDGE_ALIAS`]) and set it up.
    AddBridge {
        /// Its name.
        name: String,
    },
    /// Create VXLAN device `name` (learning off, proxy on), enslave it to
    /// `master` and set it up.
    AddVxlan {
        /// Its name.
        name: String,
        /// VNI.
        vni: u32,
        /// UDP destination port.
        port: u16,
        /// Local (underlay) address.
        local: IpAddr,
        /// Its MTU (`None`: the kernel's).
        mtu: Option<u32>,
        /// The bridge.
        master: String,
    },
    /// Set the MTU of link `name`.
    SetMtu {
        /// Its name.
        name: String,
        /// The MTU.
        mtu: u32,
    },
    /// Delete link `name`.
    DelLink {
        /// Its name.
        name: String,
    },
    /// Set link `name` up.
    SetUp {
        /// Its name.
        name: String,
    },
    /// Enslave link `name` to bridge `master`.
    SetMaster {
        /// The link.
        name: String,
        /// The bridge.
        master: String,
    },
    /// Add an IPv4 address to a link.
    AddAddr {
        /// The link.
        link: String,
        /// The address.
        addr: Ipv4Addr,
        /// Its prefix length.
        prefix: u8,
    },
    /// Remove an IPv4 address from a link.
    DelAddr {
        /// The link.
        link: String,
        /// The address.
        addr: Ipv4Addr,
        /// Its prefix length.
        prefix: u8,
    },
    /// Create or replace the forwarding entry `mac -> dst` on a VXLAN device.
    SetFdb {
        /// The VXLAN device.
        vxlan: String,
        /// The remote task's MAC.
        mac: Mac,
        /// Its node's underlay address.
        dst: IpAddr,
    },
    /// Remove the forwarding entry `mac -> dst` from a VXLAN device.
    DelFdb {
        /// The VXLAN device.
        vxlan: String,
        /// The MAC.
        mac: Mac,
        /// The destination.
        dst: IpAddr,
    },
    /// Create or replace the permanent neighbour entry `ip -> mac` on a
    /// VXLAN device.
    SetNeigh {
        /// The VXLAN device.
        vxlan: String,
        /// The remote task's address.
        ip: Ipv4Addr,
        /// Its MAC.
        mac: Mac,
    },
    /// Remove the neighbour entry of `ip` from a VXLAN device.
    DelNeigh {
        /// The VXLAN device.
        vxlan: String,
        /// The address.
        ip: Ipv4Addr,
    },
}

/// The changes that make `observed` match `desired` for a node whose
/// underlay address is `underlay` (pure), and what cannot be done (a
/// `swbr<vni>` that is not a bridge). Deletions of networks that left come
/// first; then per network: bridge, its address, VXLAN device, entries.
pub fn diff(desired: &Desired, observed: &Observed, underlay: IpAddr) -> (Vec<Change>, Vec<String>) {
    let mut changes = Vec::new();
    let mut problems = Vec::new();
    let wanted_links: BTreeSet<&str> =
        desired.networks.values().flat_map(|n| [n.bridge.as_str(), n.vxlan.as_str()]).collect();
    // Networks that left: VXLAN devices first (all swvx* are the plane's),
    // then the bridges the plane made.
    for (name, l) in &observed.links {
        if name.starts_with("swvx") && !wanted_links.contains(name.as_str()) {
            changes.push(Change::DelLink { name: name.clone() });
        } else if name.starts_with("swbr") && l.ours && !wanted_links.contains(name.as_str()) {
            // A VXLAN device not named by the plane but enslaved to it would
            // go with it too: only swvx* are ever enslaved by the plane.
            if l.kind == LinkKind::Bridge {
                changes.push(Change::DelLink { name: name.clone() });
            }
        }
    }
    for n in desired.networks.values() {
        // The bridge.
        let bridge = observed.links.get(&n.bridge);
        match bridge {
            None => {
                changes.push(Change::AddBridge { name: n.bridge.clone() });
                if let Some((addr, prefix)) = n.gateway {
                    changes.push(Change::AddAddr { link: n.bridge.clone(), addr, prefix });
                }
            }
            Some(b) if b.kind != LinkKind::Bridge => {
                problems.push(format!(
                    "network VNI {}: {} exists and is not a bridge ({:?}): network not programmed",
                    n.vni, n.bridge, b.kind
                ));
                continue;
            }
            Some(b) => {
                if !b.up {
                    changes.push(Change::SetUp { name: n.bridge.clone() });
                }
                if let Some((addr, prefix)) = n.gateway {
                    if !b.addrs.contains(&(addr, prefix)) {
                        changes.push(Change::AddAddr { link: n.bridge.clone(), addr, prefix });
                    }
                }
                if b.ours {
                    for (addr, prefix) in &b.addrs {
                        if n.gateway != Some((*addr, *prefix)) {
                            changes.push(Change::DelAddr { link: n.bridge.clone(), addr: *addr, prefix: *prefix });
                        }
                    }
                }
            }
        }
        // The VXLAN device.
        let want = VxlanParams { id: n.vni, port: n.port, local: Some(underlay), learning: false, proxy: true };
        let empty = ObservedLink::new(0, LinkKind::Vxlan);
        let vx = match observed.links.get(&n.vxlan) {
            Some(v) if v.kind == LinkKind::Vxlan && v.vxlan.as_ref() == Some(&want) => {
                if v.master.as_deref() != Some(n.bridge.as_str()) {
                    changes.push(Change::SetMaster { name: n.vxlan.clone(), master: n.bridge.clone() });
                }
                if let Some(mtu) = n.mtu.filter(|m| *m != v.mtu) {
                    changes.push(Change::SetMtu { name: n.vxlan.clone(), mtu });
                }
                if !v.up {
                    changes.push(Change::SetUp { name: n.vxlan.clone() });
                }
                v
            }
            other => {
                if other.is_some() {
                    changes.push(Change::DelLink { name: n.vxlan.clone() });
                }
                changes.push(Change::AddVxlan {
                    name: n.vxlan.clone(),
                    vni: n.vni,
                    port: n.port,
                    local: underlay,
                    mtu: n.mtu,
                    master: n.bridge.clone(),
                });
                // A new device has no entries.
                &empty
            }
        };
        // Forwarding entries.
        let want_fdb: BTreeMap<Mac, IpAddr> = n.remote.iter().map(|(ip, dst)| (overlay_mac(*ip), *dst)).collect();
        for (mac, dst) in &want_fdb {
            match vx.fdb.get(mac) {
                None => changes.push(Change::SetFdb { vxlan: n.vxlan.clone(), mac: *mac, dst: *dst }),
                Some(have) if have.len() == 1 => {
                    if !have.contains(dst) {
                        // Replace: the entry moves at once (a task moved).
                        changes.push(Change::SetFdb { vxlan: n.vxlan.clone(), mac: *mac, dst: *dst });
                    }
                }
                Some(have) => {
                    for d in have.iter().filter(|d| *d != dst) {
                        changes.push(Change::DelFdb { vxlan: n.vxlan.clone(), mac: *mac, dst: *d });
                    }
                    if !have.contains(dst) {
                        changes.push(Change::SetFdb { vxlan: n.vxlan.clone(), mac: *mac, dst: *dst });
                    }
                }
            }
        }
        for (mac, dsts) in &vx.fdb {
            if overlay_like(mac) && !want_fdb.contains_key(mac) {
                for d in dsts {
                    changes.push(Change::DelFdb { vxlan: n.vxlan.clone(), mac: *mac, dst: *d });
                }
            }
        }
        // Neighbour entries (ARP proxy).
        for ip in n.remote.keys() {
            let mac = overlay_mac(*ip);
            if vx.neigh.get(ip) != Some(&(mac, true)) {
                changes.push(Change::SetNeigh { vxlan: n.vxlan.clone(), ip: *ip, mac });
            }
        }
        for ip in vx.neigh.keys() {
            if !n.remote.contains_key(ip) {
                changes.push(Change::DelNeigh { vxlan: n.vxlan.clone(), ip: *ip });
            }
        }
    }
    (changes, problems)
}

// ---------------------------------------------------------------------------
// iptables rules (pure)

/// The isolation and masquerade rules for `desired` (pure).
pub fn rules(desired: &Desired, config: &OverlayConfig) -> Rules {
    let (fwd, post) = (config.chain_prefix.clone(), config.post_chain());
    let mut r = Rules::default();
    r.filter_chains.insert(fwd.clone());
    r.nat_chains.insert(post.clone());
    for n in desired.networks.values() {
        let b = &n.bridge;
        let comment = format!("-m comment --comment \"overlay {}\"", n.vni);
        r.filter.push(format!("-A {fwd} -i {b} -o {b} {comment} -j ACCEPT"));
        if n.internal {
            r.filter.push(format!("-A {fwd} -i {b} {comment} -j DROP"));
            r.filter.push(format!("-A {fwd} -o {b} {comment} -j DROP"));
            continue;
        }
        r.filter.push(format!("-A {fwd} -i {b} -o swbr+ {comment} -j DROP"));
        r.filter.push(format!("-A {fwd} -i swbr+ -o {b} {comment} -j DROP"));
        let (net, p) = n.subnet;
        if config.uplinks.is_empty() {
            r.filter.push(format!("-A {fwd} -i {b} {comment} -j ACCEPT"));
            r.nat.push(format!("-A {post} -s {net}/{p} ! -o swbr+ {comment} -j MASQUERADE"));
        } else {
            for u in &config.uplinks {
                r.filter.push(format!("-A {fwd} -i {b} -o {u} {comment} -j ACCEPT"));
                r.nat.push(format!("-A {post} -s {net}/{p} -o {u} {comment} -j MASQUERADE"));
            }
            r.filter.push(format!("-A {fwd} -i {b} {comment} -j DROP"));
        }
        r.filter.push(format!("-A {fwd} -o {b} -m conntrack --ctstate RELATED,ESTABLISHED {comment} -j ACCEPT"));
    }
    r
}

/// Checks a configuration.
pub fn check_config(config: &OverlayConfig) -> Result<(), OverlayError> {
    let p = &config.chain_prefix;
    if p.is_empty() || p.len() > 23 || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(OverlayError::Config {
            field: "chain_prefix",
            reason: format!("{p:?} must be 1 to 23 letters, digits, '_' or '-'"),
        });
    }
    for u in &config.uplinks {
        if u.is_empty() || u.len() > 15 || !u.chars().all(|c| c.is_ascii_alphanumeric() || "-_.+@".contains(c)) {
            return Err(OverlayError::Config { field: "uplinks", reason: format!("{u:?} is not an interface name") });
        }
    }
    if config.underlay.is_unspecified() {
        return Err(OverlayError::Config { field: "underlay", reason: "must be this node's address".into() });
    }
    if let Some(t) = &config.tunnel {
        if IpAddr::V4(t.local) != config.underlay {
            return Err(OverlayError::Config {
                field: "tunnel",
                reason: format!("its local address {} is not the underlay address {}", t.local, config.underlay),
            });
        }
        if t.encrypted_port != config.encrypted_port {
            return Err(OverlayError::Config {
                field: "tunnel",
                reason: format!(
                    "its encrypted_port {} differs from the plane's {}",
                    t.encrypted_port, config.encrypted_port
                ),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Netlink: observe and apply

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> OverlayError {
    let what = what.into();
    move |source| OverlayError::Netlink { what, source }
}

/// The netlink error code (a negative errno), if `e` is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Reads the plane's links, their addresses and entries.
pub async fn observe(handle: &Handle) -> Result<Observed, OverlayError> {
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    let mut links: BTreeMap<String, (ObservedLink, Option<u32>)> = BTreeMap::new();
    let mut stream = handle.link().get().execute();
    while let Some(m) = stream.try_next().await.map_err(nl("listing links"))? {
        let index = m.header.index;
        let mut name = None;
        let (mut kind, mut master, mut ours, mut vxlan) = (LinkKind::Other(String::new()), None, false, None);
        let mut mtu = 0;
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Controller(i) => master = Some(*i),
                LinkAttribute::IfAlias(s) => ours = s == BRIDGE_ALIAS,
                LinkAttribute::Mtu(m) => mtu = *m,
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(InfoKind::Bridge) => kind = LinkKind::Bridge,
                            LinkInfo::Kind(InfoKind::Vxlan) => kind = LinkKind::Vxlan,
                            LinkInfo::Kind(k) => kind = LinkKind::Other(k.to_string()),
                            LinkInfo::Data(InfoData::Vxlan(v)) => vxlan = Some(vxlan_params(v)),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let Some(name) = name else { continue };
        names.insert(index, name.clone());
        if !plane_name(&name) {
            continue;
        }
        let mut l = ObservedLink::new(index, kind);
        l.up = m.header.flags.contains(LinkFlags::Up);
        l.ours = ours;
        l.vxlan = vxlan;
        l.mtu = mtu;
        links.insert(name, (l, master));
    }
    let mut by_index: BTreeMap<u32, String> = BTreeMap::new();
    let mut out = Observed::default();
    for (name, (mut l, master)) in links {
        l.master = master.and_then(|i| names.get(&i).cloned());
        by_index.insert(l.index, name.clone());
        out.links.insert(name, l);
    }
    let mut addrs = handle.address().get().execute();
    while let Some(m) = addrs.try_next().await.map_err(nl("listing addresses"))? {
        let Some(l) = by_index.get(&m.header.index).and_then(|n| out.links.get_mut(n)) else { continue };
        for a in &m.attributes {
            if let AddressAttribute::Local(IpAddr::V4(ip)) = a {
                l.addrs.insert((*ip, m.header.prefix_len));
            }
        }
    }
    let mut fdb = handle.neighbours().get().set_address_family(AddressFamily::Bridge).execute();
    while let Some(m) = fdb.try_next().await.map_err(nl("listing forwarding entries"))? {
        // The device's own entries (NTF_SELF), not its bridge's.
        if !m.header.flags.contains(NeighbourFlags::Own) {
            continue;
        }
        let Some(l) = by_index.get(&m.header.ifindex).and_then(|n| out.links.get_mut(n)) else { continue };
        let (mut mac, mut dst) = (None, None);
        for a in &m.attributes {
            match a {
                NeighbourAttribute::LinkLayerAddress(b) => mac = <Mac>::try_from(b.as_slice()).ok(),
                NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => dst = Some(IpAddr::V4(*d)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) => dst = Some(IpAddr::V6(*d)),
                // In the bridge family the destination comes as raw bytes.
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                    dst = <[u8; 4]>::try_from(b.as_slice())
                        .map(IpAddr::from)
                        .or_else(|_| <[u8; 16]>::try_from(b.as_slice()).map(IpAddr::from))
                        .ok()
                }
                _ => {}
            }
        }
        if let (Some(mac), Some(dst)) = (mac, dst) {
            l.fdb.entry(mac).or_default().insert(dst);
        }
    }
    let mut neigh = handle.neighbours().get().set_address_family(AddressFamily::Inet).execute();
    while let Some(m) = neigh.try_next().await.map_err(nl("listing neighbour entries"))? {
        let Some(l) = by_index.get(&m.header.ifindex).and_then(|n| out.links.get_mut(n)) else { continue };
        let (mut mac, mut ip) = (None, None);
        for a in &m.attributes {
            match a {
                NeighbourAttribute::LinkLayerAddress(b) => mac = <Mac>::try_from(b.as_slice()).ok(),
                NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => ip = Some(*d),
                _ => {}
            }
        }
        if let Some(ip) = ip {
            let permanent = m.header.state == NeighbourState::Permanent;
            l.neigh.insert(ip, (mac.unwrap_or_default(), permanent));
        }
    }
    Ok(out)
}

fn indices(observed: &Observed) -> BTreeMap<String, u32> {
    observed.links.iter().map(|(n, l)| (n.clone(), l.index)).collect()
}

fn vxlan_params(v: &[InfoVxlan]) -> VxlanParams {
    let mut p = VxlanParams { id: 0, port: 0, local: None, learning: true, proxy: false };
    for i in v {
        match i {
            InfoVxlan::Id(id) => p.id = *id,
            InfoVxlan::Port(port) => p.port = *port,
            InfoVxlan::Local(a) => p.local = Some(IpAddr::V4(*a)),
            InfoVxlan::Local6(a) => p.local = Some(IpAddr::V6(*a)),
            InfoVxlan::Learning(b) => p.learning = *b,
            InfoVxlan::Proxy(b) => p.proxy = *b,
            _ => {}
        }
    }
    p
}

/// The index of link `name`, from `indices` or asked (and remembered).
async fn index_of(handle: &Handle, indices: &mut BTreeMap<String, u32>, name: &str) -> Result<u32, OverlayError> {
    if let Some(i) = indices.get(name) {
        return Ok(*i);
    }
    let i = lookup_index(handle, name).await?;
    indices.insert(name.to_string(), i);
    Ok(i)
}

async fn lookup_index(handle: &Handle, name: &str) -> Result<u32, OverlayError> {
    let mut s = handle.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(m.header.index),
        Ok(None) => Err(OverlayError::Link(format!("link {name} not found"))),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Err(OverlayError::Link(format!("link {name} not found"))),
        Err(e) => Err(OverlayError::Netlink { what: format!("looking up link {name}"), source: e }),
    }
}

fn mac_text(mac: &Mac) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

/// Applies one change. `indices` maps link names to indices (seeded from
/// [`Observed`], completed as links are looked up, updated as they are
/// created and deleted), so a change costs one netlink round trip.
pub async fn apply_change(
    handle: &Handle,
    indices: &mut BTreeMap<String, u32>,
    change: &Change,
) -> Result<(), OverlayError> {
    if let Change::AddBridge { name } | Change::AddVxlan { name, .. } | Change::DelLink { name } = change {
        indices.remove(name);
    }
    match change {
        Change::AddBridge { name } => {
            let r = handle.link().add(LinkBridge::new(name).build()).execute().await;
            match r {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(nl(format!("creating bridge {name}"))(e)),
            }
            let index = index_of(handle, indices, name).await?;
            let msg = LinkUnspec::new_with_index(index).alias(BRIDGE_ALIAS).up().build();
            handle.link().set(msg).execute().await.map_err(nl(format!("setting bridge {name} up")))
        }
        Change::AddVxlan { name, vni, port, local, mtu, master } => {
            let bridge = index_of(handle, indices, master).await?;
            let mut b = LinkVxlan::new(name, *vni).port(*port).learning(false).proxy(true);
            if let Some(m) = mtu {
                b = b.mtu(*m);
            }
            let b = match local {
                IpAddr::V4(a) => b.local(*a),
                IpAddr::V6(a) => b.local6(*a),
            };
            handle
                .link()
                .add(b.controller(bridge).up().build())
                .execute()
                .await
                .map_err(nl(format!("creating VXLAN device {name} (VNI {vni}, port {port}, local {local})")))
        }
        Change::DelLink { name } => {
            let index = match lookup_index(handle, name).await {
                Ok(i) => i,
                Err(OverlayError::Link(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            match handle.link().del(index).execute().await {
                Ok(()) => Ok(()),
                Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
                Err(e) => Err(nl(format!("deleting link {name}"))(e)),
            }
        }
        Change::SetMtu { name, mtu } => {
            let index = index_of(handle, indices, name).await?;
            let msg = LinkUnspec::new_with_index(index).mtu(*mtu).build();
            handle.link().set(msg).execute().await.map_err(nl(format!("setting the MTU of {name} to {mtu}")))
        }
        Change::SetUp { name } => {
            let index = index_of(handle, indices, name).await?;
            let msg = LinkUnspec::new_with_index(index).up().build();
            handle.link().set(msg).execute().await.map_err(nl(format!("setting {name} up")))
        }
        Change::SetMaster { name, master } => {
            let (index, bridge) = (index_of(handle, indices, name).await?, index_of(handle, indices, master).await?);
            let msg = LinkUnspec::new_with_index(index).controller(bridge).build();
            handle.link().set(msg).execute().await.map_err(nl(format!("enslaving {name} to {master}")))
        }
        Change::AddAddr { link, addr, prefix } => {
            let index = index_of(handle, indices, link).await?;
            match handle.address().add(index, IpAddr::V4(*addr), *prefix).execute().await {
                Ok(()) => Ok(()),
                Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
                Err(e) => Err(nl(format!("adding {addr}/{prefix} to {link}"))(e)),
            }
        }
        Change::DelAddr { link, addr, prefix } => {
            let index = index_of(handle, indices, link).await?;
            let mut m = AddressMessage::default();
            m.header.family = AddressFamily::Inet;
            m.header.prefix_len = *prefix;
            m.header.index = index;
            m.attributes.push(AddressAttribute::Local(IpAddr::V4(*addr)));
            m.attributes.push(AddressAttribute::Address(IpAddr::V4(*addr)));
            match handle.address().del(m).execute().await {
                Ok(()) => Ok(()),
                Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(()),
                Err(e) => Err(nl(format!("removing {addr}/{prefix} from {link}"))(e)),
            }
        }
        Change::SetFdb { vxlan, mac, dst } => {
            let index = index_of(handle, indices, vxlan).await?;
            let mut req = handle.neighbours().add_bridge(index, mac).flags(NeighbourFlags::Own).replace();
            req.message_mut().attributes.push(NeighbourAttribute::Destination(neighbour_address(*dst)));
            req.execute().await.map_err(nl(format!("setting forwarding entry {} dst {dst} on {vxlan}", mac_text(mac))))
        }
        Change::DelFdb { vxlan, mac, dst } => {
            let index = index_of(handle, indices, vxlan).await?;
            let mut m = NeighbourMessage::default();
            m.header.family = AddressFamily::Bridge;
            m.header.ifindex = index;
            m.header.flags = NeighbourFlags::Own;
            m.header.state = NeighbourState::Permanent;
            m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
            m.attributes.push(NeighbourAttribute::Destination(neighbour_address(*dst)));
            match handle.neighbours().del(m).execute().await {
                Ok(()) => Ok(()),
                Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
                Err(e) => Err(nl(format!("removing forwarding entry {} dst {dst} from {vxlan}", mac_text(mac)))(e)),
            }
        }
        Change::SetNeigh { vxlan, ip, mac } => {
            let index = index_of(handle, indices, vxlan).await?;
            handle
                .neighbours()
                .add(index, IpAddr::V4(*ip))
                .link_layer_address(mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("setting neighbour entry {ip} lladdr {} on {vxlan}", mac_text(mac))))
        }
        Change::DelNeigh { vxlan, ip } => {
            let index = index_of(handle, indices, vxlan).await?;
            let mut m = NeighbourMessage::default();
            m.header.family = AddressFamily::Inet;
            m.header.ifindex = index;
            m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(*ip)));
            match handle.neighbours().del(m).execute().await {
                Ok(()) => Ok(()),
                Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
                Err(e) => Err(nl(format!("removing neighbour entry {ip} from {vxlan}"))(e)),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// iptables

async fn run(cmd: &std::path::Path, args: &[&str], stdin: Option<String>) -> Result<(), OverlayError> {
    use tokio::io::AsyncWriteExt;
    let line = || format!("{} {}", cmd.display(), args.join(" "));
    let mut c = tokio::process::Command::new(cmd);
    c.args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
    c.stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() });
    let mut child = c.spawn().map_err(|e| OverlayError::Command { command: line(), detail: e.to_string() })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| OverlayError::Command { command: line(), detail: format!("writing its input: {e}") })?;
    }
    let out =
        child.wait_with_output().await.map_err(|e| OverlayError::Command { command: line(), detail: e.to_string() })?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(OverlayError::Command { command: line(), detail: format!("{} ({})", err, out.status) })
    }
}

/// (table, built-in chain, the plane's chain).
fn jumps(config: &OverlayConfig) -> [(&'static str, &'static str, String); 2] {
    [("filter", "FORWARD", config.chain_prefix.clone()), ("nat", "POSTROUTING", config.post_chain())]
}

/// Inserts each chain's jump at the top of its built-in chain unless it is
/// there already.
async fn ensure_jumps(config: &OverlayConfig) -> Result<(), OverlayError> {
    for (table, builtin, chain) in jumps(config) {
        let check = ["-w", "-t", table, "-C", builtin, "-j", &chain];
        if run(&config.iptables, &check, None).await.is_err() {
            run(&config.iptables, &["-w", "-t", table, "-I", builtin, "1", "-j", &chain], None).await?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The running plane

struct Shared {
    config: OverlayConfig,
    handle: Handle,
    /// The rules in force (as far as the plane knows).
    applied_rules: Mutex<Rules>,
    /// Rewrite every chain on the next update.
    full_rules: std::sync::atomic::AtomicBool,
    errors: Mutex<Vec<String>>,
    /// The last view applied without error.
    applied: watch::Sender<Option<OverlayView>>,
    /// The tunnel of encrypted networks, while the view has any.
    tunnel: Mutex<Option<RunningTunnel>>,
}

/// The plane's tunnel and the keys installed in it, by VNI.
struct RunningTunnel {
    tunnel: Tunnel,
    keys: BTreeMap<u32, KeySet>,
}

/// A node's running overlay plane. See the [module docs](self).
pub struct Overlay {
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), OverlayError>>,
    connection: JoinHandle<()>,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay").field("underlay", &self.shared.config.underlay).finish_non_exhaustive()
    }
}

impl Overlay {
    /// Opens the netlink socket (in the calling thread's network
    /// namespace), creates the rule chains and their jumps, applies the
    /// current view, then applies every new view at once and resyncs every
    /// [`OverlayConfig::resync`]. Fails (leaving no chain behind) when the
    /// configuration is bad or netlink or iptables cannot be used; a view
    /// that cannot be fully applied is not a start failure: see
    /// [`Overlay::errors`].
    pub async fn start(views: watch::Receiver<OverlayView>, config: OverlayConfig) -> Result<Overlay, OverlayError> {
        check_config(&config)?;
        if config.enable_forwarding {
            const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
            std::fs::write(PATH, "1").map_err(|source| OverlayError::Sysctl { path: PATH, source })?;
        }
        let (connection, handle, _) = rtnetlink::new_connection().map_err(OverlayError::Socket)?;
        let connection = tokio::spawn(connection);
        let shared = Arc::new(Shared {
            config,
            handle,
            applied_rules: Mutex::new(Rules::default()),
            full_rules: std::sync::atomic::AtomicBool::new(true),
            errors: Mutex::new(Vec::new()),
            applied: watch::channel(None).0,
            tunnel: Mutex::new(None),
        });
        let base = rules(&Desired::default(), &shared.config);
        let started = async {
            apply_rules(&shared, &base).await?;
            ensure_jumps(&shared.config).await
        };
        if let Err(e) = started.await {
            let _ = teardown_rules(&shared).await;
            connection.abort();
            return Err(e);
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(supervise(shared.clone(), views, stop_rx));
        Ok(Overlay { shared, stop: Some(stop_tx), task, connection })
    }

    /// What the last update could not do (empty when the kernel matches
    /// the view).
    pub fn errors(&self) -> Vec<String> {
        crate::mesh::lock(&self.shared.errors).clone()
    }

    /// The last view applied without error (`None` before the first).
    pub fn applied(&self) -> watch::Receiver<Option<OverlayView>> {
        self.shared.applied.subscribe()
    }

    /// Waits until `view` has been applied without error (or `timeout`
    /// passes); true if it has.
    pub async fn synced(&self, view: &OverlayView, timeout: Duration) -> bool {
        let mut rx = self.applied();
        tokio::time::timeout(timeout, rx.wait_for(|v| v.as_ref() == Some(view))).await.is_ok_and(|r| r.is_ok())
    }

    /// The counters of the tunnel of encrypted networks, while it runs
    /// (the view has an encrypted network).
    pub fn tunnel_stats(&self) -> Option<TunnelStats> {
        crate::mesh::lock(&self.shared.tunnel).as_ref().map(|t| t.tunnel.stats())
    }

    /// The iptables rules in force.
    pub fn rules(&self) -> Rules {
        crate::mesh::lock(&self.shared.applied_rules).clone()
    }

    /// Stops following views and removes everything the plane made: VXLAN
    /// devices (and their entries), the bridges it created, its rules and
    /// chains. The work runs in the plane's task, so in its namespace.
    pub async fn stop(mut self) -> Result<(), OverlayError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let result = match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(OverlayError::Task(e.to_string())),
        };
        self.connection.abort();
        result
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if self.stop.is_some() {
            tracing::warn!(underlay = %self.shared.config.underlay, "overlay dropped without stop: its devices, entries and rules stay, no longer updated");
            self.task.abort();
            self.connection.abort();
        }
    }
}

async fn supervise(
    shared: Arc<Shared>,
    mut views: watch::Receiver<OverlayView>,
    mut stop: oneshot::Receiver<()>,
) -> Result<(), OverlayError> {
    let mut resync_at = Instant::now() + shared.config.resync;
    let (mut dirty, mut force, mut ok, mut open) = (true, false, true, true);
    loop {
        if std::mem::take(&mut dirty) {
            let view = views.borrow_and_update().clone();
            ok = sync(&shared, &view, std::mem::take(&mut force)).await;
            if ok {
                shared.applied.send_replace(Some(view));
            }
        }
        tokio::select! {
            _ = &mut stop => break,
            changed = views.changed(), if open => match changed {
                Ok(()) => dirty = true,
                // The sender is gone: keep the last view, keep resyncing.
                Err(_) => open = false,
            },
            _ = tokio::time::sleep(shared.config.retry), if !ok => dirty = true,
            _ = tokio::time::sleep_until(resync_at) => {
                force = true;
                dirty = true;
                resync_at = Instant::now() + shared.config.resync;
            }
        }
    }
    teardown(&shared).await
}

/// Makes the kernel match `view`; records errors. True when all of it is
/// in force. `force`: rewrite every rule chain and check the jumps.
async fn sync(shared: &Shared, view: &OverlayView, force: bool) -> bool {
    let (mut want, mut errors) = desired(view, &shared.config);
    // The tunnel first: an encrypted network's VXLAN device sends in the
    // clear until the tunnel's rule routes its packets into the tunnel, so
    // without a tunnel such a network is not joined.
    if want.networks.values().any(|n| n.encrypted)
        && let Err(e) = ensure_tunnel(shared).await
    {
        tracing::warn!(error = %e, "overlay: the tunnel of encrypted networks did not start, will retry");
        want.networks.retain(|vni, n| {
            if n.encrypted {
                errors.push(format!("network with VNI {vni}: encrypted, not joined: {e}"));
            }
            !n.encrypted
        });
    }
    match observe(&shared.handle).await {
        Ok(observed) => {
            let (changes, problems) = diff(&want, &observed, shared.config.underlay);
            errors.extend(problems);
            let mut indices = indices(&observed);
            for c in &changes {
                match apply_change(&shared.handle, &mut indices, c).await {
                    Ok(()) => tracing::debug!(change = ?c, "overlay: applied"),
                    Err(e) => {
                        tracing::warn!(error = %e, "overlay: change failed, will retry");
                        errors.push(e.to_string());
                    }
                }
            }
            if !changes.is_empty() {
                tracing::info!(networks = want.networks.len(), changes = changes.len(), "overlay: kernel updated");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "overlay: cannot read the kernel's state, will retry");
            errors.push(e.to_string());
        }
    }
    let r = rules(&want, &shared.config);
    if force {
        shared.full_rules.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    if force || *crate::mesh::lock(&shared.applied_rules) != r {
        if let Err(e) = apply_rules(shared, &r).await {
            tracing::warn!(error = %e, "overlay: rules not updated, will retry");
            errors.push(e.to_string());
        }
        if let Err(e) = ensure_jumps(&shared.config).await {
            errors.push(e.to_string());
        }
    }
    sync_keys(shared, &want, &mut errors).await;
    let ok = errors.is_empty();
    *crate::mesh::lock(&shared.errors) = errors;
    ok
}

/// Starts the tunnel if it is not running.
async fn ensure_tunnel(shared: &Shared) -> Result<(), OverlayError> {
    if crate::mesh::lock(&shared.tunnel).is_some() {
        return Ok(());
    }
    let config = shared.config.tunnel_config()?;
    let tunnel = Tunnel::start(config).await.map_err(|e| OverlayError::Tunnel(e.to_string()))?;
    *crate::mesh::lock(&shared.tunnel) = Some(RunningTunnel { tunnel, keys: BTreeMap::new() });
    Ok(())
}

/// Installs the encrypted networks' keys in the tunnel (only those that
/// changed), removes the networks that left, and stops the tunnel when no
/// encrypted network is left (their VXLAN devices are gone by then).
async fn sync_keys(shared: &Shared, want: &Desired, errors: &mut Vec<String>) {
    if !want.networks.values().any(|n| n.encrypted) {
        let running = crate::mesh::lock(&shared.tunnel).take();
        if let Some(r) = running {
            match r.tunnel.stop().await {
                Ok(()) => tracing::info!("overlay: no encrypted network left: tunnel stopped"),
                Err(e) => errors.push(format!("overlay: stopping the tunnel: {e}")),
            }
        }
        return;
    }
    let mut guard = crate::mesh::lock(&shared.tunnel);
    let Some(r) = guard.as_mut() else { return };
    let wanted: BTreeMap<u32, &KeySet> =
        want.networks.iter().filter_map(|(vni, n)| n.keys.as_ref().map(|k| (*vni, k))).collect();
    for (vni, keys) in &wanted {
        if r.keys.get(vni) == Some(*keys) {
            continue;
        }
        match r.tunnel.set_keys(*vni, (*keys).clone()) {
            Ok(()) => {
                tracing::info!(vni, current = keys.current.id, previous = ?keys.previous.as_ref().map(|k| k.id), "overlay: tunnel keys set");
                r.keys.insert(*vni, (*keys).clone());
            }
            Err(e) => errors.push(format!("overlay: network with VNI {vni}: tunnel keys not set: {e}")),
        }
    }
    let gone: Vec<u32> = r.keys.keys().copied().filter(|v| !wanted.contains_key(v)).collect();
    for vni in gone {
        r.tunnel.remove_network(vni);
        r.keys.remove(&vni);
        tracing::info!(vni, "overlay: tunnel keys removed");
    }
}

async fn apply_rules(shared: &Shared, rules: &Rules) -> Result<(), OverlayError> {
    use std::sync::atomic::Ordering;
    let old = crate::mesh::lock(&shared.applied_rules).clone();
    let full = shared.full_rules.load(Ordering::SeqCst);
    let input = restore_input(&old, rules, full);
    if let Err(e) = run(&shared.config.iptables_restore, &["-w", "--noflush"], Some(input)).await {
        shared.full_rules.store(true, Ordering::SeqCst);
        return Err(e);
    }
    shared.full_rules.store(false, Ordering::SeqCst);
    *crate::mesh::lock(&shared.applied_rules) = rules.clone();
    Ok(())
}

/// Removes the jumps, then the plane's chains.
async fn teardown_rules(shared: &Shared) -> Result<(), OverlayError> {
    let config = &shared.config;
    for (table, builtin, chain) in jumps(config) {
        // Every copy (a crashed predecessor may have left one).
        while run(&config.iptables, &["-w", "-t", table, "-D", builtin, "-j", &chain], None).await.is_ok() {}
    }
    let mut old = crate::mesh::lock(&shared.applied_rules).clone();
    let base = rules(&Desired::default(), config);
    old.nat_chains.extend(base.nat_chains);
    old.filter_chains.extend(base.filter_chains);
    let input = restore_input(&old, &Rules::default(), true);
    run(&config.iptables_restore, &["-w", "--noflush"], Some(input)).await?;
    *crate::mesh::lock(&shared.applied_rules) = Rules::default();
    Ok(())
}

/// Removes the plane's links (and so their entries), then its rules.
async fn teardown(shared: &Shared) -> Result<(), OverlayError> {
    let mut first: Option<OverlayError> = None;
    match observe(&shared.handle).await {
        Ok(observed) => {
            let (changes, _) = diff(&Desired::default(), &observed, shared.config.underlay);
            let mut indices = indices(&observed);
            for c in &changes {
                if let Err(e) = apply_change(&shared.handle, &mut indices, c).await {
                    tracing::warn!(error = %e, "overlay: not removed at stop");
                    first.get_or_insert(e);
                }
            }
        }
        Err(e) => {
            first.get_or_insert(e);
        }
    }
    let running = crate::mesh::lock(&shared.tunnel).take();
    if let Some(r) = running
        && let Err(e) = r.tunnel.stop().await
    {
        first.get_or_insert(OverlayError::Tunnel(e.to_string()));
    }
    if let Err(e) = teardown_rules(shared).await {
        first.get_or_insert(e);
    }
    tracing::info!(underlay = %shared.config.underlay, "overlay: stopped");
    first.map_or(Ok(()), Err)
}

// ---------------------------------------------------------------------------
// Views from the store

/// Follows `store` and publishes node `node`'s [`OverlayView`]
/// ([`OverlayView::from_state`]) after every change of tasks, networks or
/// nodes (only when the view changed). The task ends when the store fails
/// or every receiver is gone.
pub fn follow_store(store: Arc<dyn Store>, node: NodeId) -> (watch::Receiver<OverlayView>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(OverlayView::default());
    let task = tokio::spawn(async move {
        let relevant = |c: &swarm_core::state::Change| {
            c.events
                .iter()
                .any(|e| matches!(e.object.kind(), ObjectKind::Task | ObjectKind::Network | ObjectKind::Node))
        };
        let publish = |state: &swarm_core::state::State| {
            let view = OverlayView::from_state(state, &node);
            tx.send_if_modified(|v| {
                if *v == view {
                    false
                } else {
                    *v = view;
                    true
                }
            });
        };
        let follow = swarm_core::store::follow_state(store.as_ref(), relevant, publish);
        let closed = tx.closed();
        tokio::select! {
            r = follow => if let Err(e) = r {
                tracing::warn!(error = %e, "overlay: stopped following the store");
            },
            _ = closed => {}
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_core::overlay::NetworkView;

    const ME: &str = "10.211.0.1";

    fn cfg() -> OverlayConfig {
        OverlayConfig::new(ME.parse().unwrap())
    }

    fn net(vni: u32, subnet: &str, gateway: &str, remote: &[(&str, &str)]) -> NetworkView {
        NetworkView {
            name: format!("n{vni}"),
            vni,
            subnet: subnet.into(),
            gateway: gateway.into(),
            remote: remote.iter().map(|(a, n)| (a.parse().unwrap(), n.parse().unwrap())).collect(),
            ..Default::default()
        }
    }

    fn view(nets: Vec<NetworkView>) -> OverlayView {
        OverlayView { networks: nets.into_iter().map(|n| (n.vni, n)).collect() }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// The kernel state the plane leaves after applying `d` (what `diff`
    /// should then find nothing to do about).
    fn converged(d: &Desired) -> Observed {
        let mut o = Observed::default();
        for (i, n) in d.networks.values().enumerate() {
            let mut b = ObservedLink::new(2 * i as u32 + 10, LinkKind::Bridge);
            b.ours = true;
            b.addrs.extend(n.gateway);
            o.links.insert(n.bridge.clone(), b);
            let mut v = ObservedLink::new(2 * i as u32 + 11, LinkKind::Vxlan);
            v.master = Some(n.bridge.clone());
            v.vxlan = Some(VxlanParams {
                id: n.vni,
                port: n.port,
                local: Some(ME.parse().unwrap()),
                learning: false,
                proxy: true,
            });
            for (a, dst) in &n.remote {
                v.fdb.insert(overlay_mac(*a), [*dst].into());
                v.neigh.insert(*a, (overlay_mac(*a), true));
            }
            o.links.insert(n.vxlan.clone(), v);
        }
        o
    }

    fn plan(v: &OverlayView, o: &Observed) -> Vec<Change> {
        let (d, problems) = desired(v, &cfg());
        assert!(problems.is_empty(), "{problems:?}");
        let (changes, problems) = diff(&d, o, ME.parse().unwrap());
        assert!(problems.is_empty(), "{problems:?}");
        changes
    }

    #[test]
    fn empty_kernel_gets_bridge_address_vxlan_and_entries() {
        let v = view(vec![net(5001, "10.210.1.0/24", "10.210.1.1", &[("10.210.1.3", "10.211.0.2")])]);
        let changes = plan(&v, &Observed::default());
        let mac = overlay_mac(ip("10.210.1.3"));
        assert_eq!(
            changes,
            vec![
                Change::AddBridge { name: "swbr5001".into() },
                Change::AddAddr { link: "swbr5001".into(), addr: ip("10.210.1.1"), prefix: 24 },
                Change::AddVxlan {
                    name: "swvx5001".into(),
                    vni: 5001,
                    port: 4789,
                    local: ME.parse().unwrap(),
                    mtu: None,
                    master: "swbr5001".into()
                },
                Change::SetFdb { vxlan: "swvx5001".into(), mac, dst: "10.211.0.2".parse().unwrap() },
                Change::SetNeigh { vxlan: "swvx5001".into(), ip: ip("10.210.1.3"), mac },
            ]
        );
    }

    #[test]
    fn converged_kernel_needs_nothing() {
        let v = view(vec![
            net(5001, "10.210.1.0/24", "10.210.1.1", &[("10.210.1.3", "10.211.0.2"), ("10.210.1.4", "10.211.0.3")]),
            net(5002, "10.210.2.0/24", "10.210.2.1", &[]),
        ]);
        let (d, _) = desired(&v, &cfg());
        assert_eq!(plan(&v, &converged(&d)), vec![]);
    }

    #[test]
    fn moved_task_replaces_its_forwarding_entry_only() {
        let before = view(vec![net(5001, "10.210.1.0/24", "10.210.1.1", &[("10.210.1.3", "10.211.0.2")])]);
        let after = view(vec![net(5001, "10.210.1.0/24", "10.210.1.1", &[("10.210.1.3", "10.211.0.3")])]);
        let (d, _) = desired(&before, &cfg());
        assert_eq!(
            plan(&after, &converged(&d)),
            vec![Change::SetFdb {
                vxlan: "swvx5001".into(),
                mac: overlay_mac(ip("10.210.1.3")),
                dst: "10.211.0.3".parse().unwrap()
            }]
        );
    }

    #[test]
    fn gone_task_and_gone_network_are_removed() {
        let before = view(vec![
            net(5001, "10.210.1.0/24", "10.210.1.1", &[("10.210.1.3", "10.211.0.2"), ("10.210.1.4", "10.211.0.2")]),
            net(5002, "10.210.2.0/24", "10.210.2.1", &[]),
        ]);
        let after = view(vec![net(5001, "10.210.1.0/24", "10.210.1.1", &[("10.210.1.3", "10.211.0.2")])]);
        let (d, _) = desired(&before, &cfg());
        let gone = ip("10.210.1.4");
        assert_eq!(
            plan(&after, &converged(&d)),
            vec![
                Change::DelLink { name: "swbr5002".into() },
                Change::DelLink { name: "swvx5002".into() },
                Change::DelFdb { vxlan: "swvx5001".into(), mac: overlay_mac(gone), dst: "10.211.0.2".parse().unwrap() },
                Change::DelNeigh { vxlan: "swvx5001".into(), ip: gone },
            ]
        );
    }

    #[test]
    fn a_runtimes_bridge_is_reused_and_never_deleted() {
        let v = view(vec![net(5001, "10.210.1.0/24", "10.210.1.1", &[])]);
        let (d, _) = desired(&v, &cfg());
        let mut o = converged(&d);
        let b = o.links.get_mut("swbr5001").unwrap();
        b.ours = false;
        b.addrs.insert((ip("10.210.1.77"), 24));
        // In use: its extra address is the runtime's business.
        assert_eq!(plan(&v, &o), vec![]);
        // Left: the VXLAN device goes, the bridge stays.
        assert_eq!(plan(&OverlayView::default(), &o), vec![Change::DelLink { name: "swvx5001".into() }]);
        // The plane's own bridge goes too.
        o.links.get_mut("swbr5001").unwrap().ours = true;
        assert_eq!(
            plan(&OverlayView::default(), &o),
            vec![Change::DelLink { name: "swbr5001".into() }, Change::DelLink { name: "swvx5001".into() }]
        );
    }

    #[test]
    fn tampering_is_repaired() {
        let v = view(vec![net(5001, "10.210.1.0/24", "10.210.1.1", &[("10.210.1.3", "10.211.0.2")])]);
        let (d, _) = desired(&v, &cfg());
        let mac = overlay_mac(ip("10.210.1.3"));
        // A deleted forwarding entry and a stale neighbour entry.
        let mut o = converged(&d);
        let vx = o.links.get_mut("swvx5001").unwrap();
        vx.fdb.clear();
        vx.neigh.insert(ip("10.210.1.3"), (mac, false));
        vx.up = false;
        vx.master = None;
        o.links.get_mut("swbr5001").unwrap().addrs.clear();
        assert_eq!(
            plan(&v, &o),
            vec![
                Change::AddAddr { link: "swbr5001".into(), addr: ip("10.210.1.1"), prefix: 24 },
                Change::SetMaster { name: "swvx5001".into(), master: "swbr5001".into() },
                Change::SetUp { name: "swvx5001".into() },
                Change::SetFdb { vxlan: "swvx5001".into(), mac, dst: "10.211.0.2".parse().unwrap() },
                Change::SetNeigh { vxlan: "swvx5001".into(), ip: ip("10.210.1.3"), mac },
            ]
        );
        // A deleted VXLAN device: recreated, with its entries.
        let mut o = converged(&d);
        o.links.remove("swvx5001");
        assert_eq!(plan(&v, &o).len(), 3);
        // A VXLAN device with the wrong settings is replaced.
        let mut o = converged(&d);
        o.links.get_mut("swvx5001").unwrap().vxlan.as_mut().unwrap().learning = true;
        let changes = plan(&v, &o);
        assert_eq!(changes[0], Change::DelLink { name: "swvx5001".into() });
        assert!(matches!(changes[1], Change::AddVxlan { .. }));
        assert_eq!(changes.len(), 4, "{changes:?}");
    }

    #[test]
    fn foreign_forwarding_entries_are_left_alone_and_extra_destinations_removed() {
        let v = view(vec![net(5001, "10.210.1.0/24", "10.210.1.1", &[("10.210.1.3", "10.211.0.2")])]);
        let (d, _) = desired(&v, &cfg());
        let mut o = converged(&d);
        let vx = o.links.get_mut("swvx5001").unwrap();
        vx.fdb.insert([0; 6], ["10.211.0.9".parse().unwrap()].into());
        let mac = overlay_mac(ip("10.210.1.3"));
        vx.fdb.get_mut(&mac).unwrap().insert("10.211.0.7".parse().unwrap());
        assert_eq!(
            plan(&v, &o),
            vec![Change::DelFdb { vxlan: "swvx5001".into(), mac, dst: "10.211.0.7".parse().unwrap() }]
        );
    }

    #[test]
    fn internal_and_encrypted_networks() {
        let mut n = net(5003, "10.210.3.0/24", "", &[]);
        n.internal = true;
        let mut e = net(5004, "10.210.4.0/24", "10.210.4.1", &[]);
        e.encrypted = true;
        let (d, problems) = desired(&view(vec![n, e]), &cfg());
        assert_eq!(d.networks[&5003].gateway, None);
        assert_eq!(d.networks[&5003].port, 4789);
        assert_eq!(d.networks[&5004].port, 4799);
        // Encrypted: the tunnel's MTU, and no keys yet is reported.
        assert_eq!(d.networks[&5004].mtu, Some(1382));
        assert_eq!(d.networks[&5003].mtu, None);
        assert!(d.networks[&5004].encrypted && d.networks[&5004].keys.is_none());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("no key yet"), "{problems:?}");
        let r = rules(&d, &cfg());
        assert!(
            r.filter.contains(&"-A SWARM-OVERLAY -i swbr5003 -m comment --comment \"overlay 5003\" -j DROP".into())
        );
        assert!(
            r.filter.contains(&"-A SWARM-OVERLAY -o swbr5003 -m comment --comment \"overlay 5003\" -j DROP".into())
        );
        assert_eq!(
            r.nat,
            vec![
                "-A SWARM-OVERLAY-POST -s 10.210.4.0/24 ! -o swbr+ -m comment --comment \"overlay 5004\" -j MASQUERADE"
            ]
        );
        // An internal network's bridge keeps no address of the plane's.
        let mut o = converged(&d);
        o.links.get_mut("swbr5003").unwrap().addrs.insert((ip("10.210.3.1"), 24));
        let (changes, _) = diff(&d, &o, ME.parse().unwrap());
        assert_eq!(
            changes,
            vec![
                Change::DelAddr { link: "swbr5003".into(), addr: ip("10.210.3.1"), prefix: 24 },
                // The encrypted network's device at 1500: lowered.
                Change::SetMtu { name: "swvx5004".into(), mtu: 1382 },
            ]
        );
    }

    #[test]
    fn uplinks_restrict_the_way_out() {
        let mut c = cfg();
        c.uplinks = vec!["lan0".into()];
        let (d, _) = desired(&view(vec![net(5001, "10.210.1.0/24", "10.210.1.1", &[])]), &c);
        let r = rules(&d, &c);
        let c5001 = "-m comment --comment \"overlay 5001\"";
        assert_eq!(
            r.filter,
            vec![
                format!("-A SWARM-OVERLAY -i swbr5001 -o swbr5001 {c5001} -j ACCEPT"),
                format!("-A SWARM-OVERLAY -i swbr5001 -o swbr+ {c5001} -j DROP"),
                format!("-A SWARM-OVERLAY -i swbr+ -o swbr5001 {c5001} -j DROP"),
                format!("-A SWARM-OVERLAY -i swbr5001 -o lan0 {c5001} -j ACCEPT"),
                format!("-A SWARM-OVERLAY -i swbr5001 {c5001} -j DROP"),
                format!("-A SWARM-OVERLAY -o swbr5001 -m conntrack --ctstate RELATED,ESTABLISHED {c5001} -j ACCEPT"),
            ]
        );
        assert_eq!(r.nat, vec![format!("-A SWARM-OVERLAY-POST -s 10.210.1.0/24 -o lan0 {c5001} -j MASQUERADE")]);
    }

    #[test]
    fn bad_views_are_reported_not_programmed() {
        let v = view(vec![
            net(5001, "not-a-subnet", "10.210.1.1", &[]),
            net(5002, "10.210.2.0/24", "10.210.9.1", &[("10.210.2.3", "fd00::1"), ("10.210.2.4", ME)]),
            net(0, "10.210.3.0/24", "", &[]),
        ]);
        let (d, problems) = desired(&v, &cfg());
        assert_eq!(d.networks.keys().copied().collect::<Vec<_>>(), vec![5002]);
        assert_eq!(d.networks[&5002].gateway, None);
        assert!(d.networks[&5002].remote.is_empty());
        assert_eq!(problems.len(), 5, "{problems:?}");
        // A swbr name taken by something that is not a bridge.
        let (d, _) = desired(&view(vec![net(5001, "10.210.1.0/24", "10.210.1.1", &[])]), &cfg());
        let mut o = Observed::default();
        o.links.insert("swbr5001".into(), ObservedLink::new(3, LinkKind::Other("dummy".into())));
        let (changes, problems) = diff(&d, &o, ME.parse().unwrap());
        assert!(changes.is_empty());
        assert!(problems[0].contains("not a bridge"), "{problems:?}");
    }

    #[test]
    fn config_is_checked() {
        assert!(check_config(&cfg()).is_ok());
        let mut c = cfg();
        c.chain_prefix = "bad prefix".into();
        assert!(check_config(&c).is_err());
        let mut c = cfg();
        c.uplinks = vec!["".into()];
        assert!(check_config(&c).is_err());
        let c = OverlayConfig::new("0.0.0.0".parse().unwrap());
        assert!(check_config(&c).is_err());
    }

    #[test]
    fn vxlan_mtu_is_set_when_configured() {
        let mut c = cfg();
        c.mtu = Some(1450);
        let v = view(vec![net(5001, "10.210.1.0/24", "10.210.1.1", &[])]);
        let (d, _) = desired(&v, &c);
        let o = converged(&d);
        let (changes, _) = diff(&d, &o, ME.parse().unwrap());
        assert_eq!(changes, vec![Change::SetMtu { name: "swvx5001".into(), mtu: 1450 }]);
        let (changes, _) = diff(&d, &Observed::default(), ME.parse().unwrap());
        assert!(changes.iter().any(|c| matches!(c, Change::AddVxlan { mtu: Some(1450), .. })), "{changes:?}");
        // Unset: whatever the kernel has is fine.
        let (d, _) = desired(&v, &cfg());
        assert_eq!(diff(&d, &o, ME.parse().unwrap()).0, vec![]);
    }

    #[test]
    fn plane_names() {
        assert!(plane_name("swbr5001") && plane_name("swvx4096"));
        assert!(!plane_name("swbr") && !plane_name("swbrx1") && !plane_name("eth0"));
    }

    fn model_key(id: u32, byte: u8, len: usize, current: bool) -> swarm_core::model::NetworkKey {
        swarm_core::model::NetworkKey {
            id,
            secret: swarm_core::model::SecretBytes(vec![byte; len]),
            created: swarm_core::time::Timestamp(u64::from(id)),
            current,
        }
    }

    #[test]
    fn key_sets_follow_the_views_two_step_rotation() {
        let mut n = net(5004, "10.210.4.0/24", "10.210.4.1", &[]);
        n.encrypted = true;
        n.name = "sec".into();
        let ids = |k: &KeySet| (k.current.id, k.previous.as_ref().map(|p| p.id));
        // One key.
        n.keys = vec![model_key(1, 0xa1, 32, true)];
        let k = key_set(&n).unwrap();
        assert_eq!((ids(&k), k.current.secret), ((1, None), [0xa1; 32]));
        // Step one: the new key accepted only.
        n.keys.push(model_key(2, 0xa2, 32, false));
        assert_eq!(ids(&key_set(&n).unwrap()), (1, Some(2)));
        // Step two: the new key current, the old one accepted.
        n.keys[0].current = false;
        n.keys[1].current = true;
        let k = key_set(&n).unwrap();
        assert_eq!((ids(&k), k.previous.unwrap().secret), ((2, Some(1)), [0xa1; 32]));
        // Nothing marked current: the oldest seals.
        n.keys[1].current = false;
        assert_eq!(ids(&key_set(&n).unwrap()), (1, Some(2)));
        // A bad key length is an error naming the network and the key, not the secret.
        n.keys = vec![model_key(7, 0x5e, 16, true)];
        let e = key_set(&n).unwrap_err();
        assert!(e.contains("\"sec\"") && e.contains("key 7") && e.contains("16 bytes"), "{e}");
        let (d, problems) = desired(&view(vec![n.clone()]), &cfg());
        assert!(d.networks[&5004].keys.is_none());
        assert_eq!(problems, vec![e]);
        // Debug of the desired state shows no secret.
        n.keys = vec![model_key(1, 0x5e, 32, true)];
        let (d, _) = desired(&view(vec![n]), &cfg());
        let text = format!("{d:?}");
        assert!(!text.contains("94") && text.contains("redacted"), "{text}");
        // An IPv6 underlay cannot carry encrypted networks.
        let mut n = net(5004, "10.210.4.0/24", "10.210.4.1", &[]);
        n.encrypted = true;
        let (d, problems) = desired(&view(vec![n]), &OverlayConfig::new("fd00::1".parse().unwrap()));
        assert!(d.networks.is_empty() && problems[0].contains("IPv4 underlay"), "{problems:?}");
    }

    #[test]
    fn the_tunnel_config_matches_the_plane() {
        let c = cfg();
        let t = c.tunnel_config().unwrap();
        assert_eq!((IpAddr::V4(t.local), t.encrypted_port), (c.underlay, c.encrypted_port));
        let mut c = cfg();
        c.tunnel = Some(TunnelConfig { underlay_mtu: 9000, ..TunnelConfig::new("10.211.0.9".parse().unwrap()) });
        assert!(matches!(check_config(&c), Err(OverlayError::Config { field: "tunnel", .. })));
        c.tunnel = Some(TunnelConfig { underlay_mtu: 9000, encrypted_port: 4800, ..TunnelConfig::new(ip(ME)) });
        assert!(matches!(check_config(&c), Err(OverlayError::Config { field: "tunnel", .. })));
        c.encrypted_port = 4800;
        assert!(check_config(&c).is_ok());
        assert_eq!(c.encrypted_mtu(), 9000 - 118);
        c.mtu = Some(1400);
        assert_eq!(c.encrypted_mtu(), 1400);
        assert!(OverlayConfig::new("fd00::1".parse().unwrap()).tunnel_config().is_err());
    }

    /// The runtimes lower a task's MTU on encrypted networks by the
    /// tunnel's overhead, from swarm-core's constants (they do not depend
    /// on swarm-net): those must be the tunnel's.
    #[test]
    fn the_runtimes_mtu_for_encrypted_endpoints_is_what_the_tunnel_carries() {
        use swarm_core::model::{ENCRYPTED_OVERHEAD, VXLAN_OVERHEAD};
        assert_eq!(ENCRYPTED_OVERHEAD, crate::tunnel::TUNNEL_OVERHEAD);
        assert_eq!(VXLAN_OVERHEAD, crate::tunnel::VXLAN_OVERHEAD);
        let ep = |encrypted| swarm_core::runtime::NetworkEndpoint {
            network: "n".into(),
            bridge: "swbr4096".into(),
            vni: 4096,
            subnet: "10.0.1.0/24".parse().unwrap(),
            address: "10.0.1.2".parse().unwrap(),
            mac: [0; 6],
            gateway: None,
            internal: false,
            encrypted,
            aliases: vec![],
        };
        // A runtime's default overlay MTU (1500-byte underlay less VXLAN).
        assert_eq!(ep(false).mtu(1450), 1450);
        assert_eq!(ep(true).mtu(1450), crate::tunnel::overlay_mtu(1500));
        assert_eq!(ep(true).mtu(0), crate::tunnel::overlay_mtu(1500));
        assert_eq!(ep(false).mtu(0), 0);
    }
}
