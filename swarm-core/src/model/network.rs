use super::{Labels, Meta, SecretBytes};
use crate::id::{NetworkId, VolumeId};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A network tasks attach to.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Network {
    /// Network id.
    pub id: NetworkId,
    /// Store bookkeeping.
    pub meta: Meta,
    /// What the operator asked for.
    pub spec: NetworkSpec,
    /// The subnet allocated to it (CIDR), if the allocator gave one.
    pub subnet: Option<String>,
    /// The gateway address in `subnet` (IP, no prefix), allocated with it
    /// for overlay networks: the spec's, else the subnet's first host.
    pub gateway: Option<String>,
    /// The VXLAN network identifier of an overlay network (from
    /// [`FIRST_VNI`] up), allocated with its subnet.
    pub vni: Option<u32>,
    /// The encryption keys of an encrypted overlay network, oldest first
    /// (at most two once a rotation's first step ran), written by the
    /// managers' key controller (`swarm_net::netkeys`); empty for other
    /// networks. Every node with tasks on the network gets them in its
    /// overlay view. `Debug` never shows the secrets.
    pub keys: Vec<NetworkKey>,
}

/// One encryption key of an encrypted overlay network.
///
/// A rotation is two steps so no node drops a record sealed under a key it
/// does not know yet: a new key is first only *accepted* (`current: false`:
/// nodes open records under it but still seal under the current one), and
/// becomes *current* (nodes seal under it) a grace period later; the key it
/// replaces stays accepted until the next rotation drops it.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkKey {
    /// Names the key within its network (each sealed record carries it).
    pub id: u32,
    /// The 32-byte secret (from the OS CSPRNG); `Debug` redacts it.
    pub secret: SecretBytes,
    /// When the managers made it.
    pub created: Timestamp,
    /// Nodes seal under this key (exactly one key of a network is
    /// current); the others are accepted only.
    pub current: bool,
}

/// The first VXLAN network identifier the allocator gives (as Swarm: VNIs
/// below 4096 are left to VLAN-style uses).
pub const FIRST_VNI: u32 = 4096;

/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// The default UDP port of VXLAN (IANA).
pub const VXLAN_PORT: u16 = 4789;

/// Bytes VXLAN adds to a task's frame on the underlay (outer IPv4, UDP,
/// VXLAN header, inner Ethernet header).
pub const VXLAN_OVERHEAD: u32 = 50;

/// Bytes the encrypted networks' tunnel adds on top of VXLAN
/// (`swarm_net::tunnel`: outer IPv4 and UDP, its record header, the AEAD
/// tag): a task on an encrypted network needs an MTU this much lower.
pub const ENCRYPTED_OVERHEAD: u32 = 68;

impl Network {
    /// True for networks that span nodes (driver `overlay`, and the ingress
    /// network): the manager allocates their subnet, VNI and every task's
    /// address, and each node joins them with a bridge and a VXLAN device.
    pub fn is_overlay(&self) -> bool {
        self.spec.is_overlay()
    }
}

/// Name of the host bridge of overlay network `vni` on every node (the
/// runtimes attach containers to it, the overlay plane joins its VXLAN
/// device to it). Linux names are at most 15 bytes: `swbr` + 8 digits.
pub fn overlay_bridge_name(vni: u32) -> String {
    format!("swbr{vni}")
}

/// Name of the VXLAN device of overlay network `vni` on every node.
pub fn overlay_vxlan_name(vni: u32) -> String {
    format!("swvx{vni}")
}

/// The MAC address of a task's interface with IPv4 address `ip` on an
/// overlay network: locally administered, `02:42` then the four address
/// bytes (as Docker derives it). Derived, not stored: every node computes
/// the forwarding entries of remote tasks from their addresses alone.
pub fn overlay_mac(ip: std::net::Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// [`overlay_mac`] as text (`02:42:0a:00:01:02`).
pub fn overlay_mac_string(ip: std::net::Ipv4Addr) -> String {
    overlay_mac(ip).iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A network's spec.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkSpec {
    /// Name: a DNS label.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Driver name (e.g. "overlay", "bridge"); empty = the runtime's default.
    pub driver: String,
    /// Requested subnet (CIDR); empty = allocate from the pool.
    pub subnet: String,
    /// No route outside.
    pub internal: bool,
    /// Standalone containers may attach.
    pub attachable: bool,
    /// The routing mesh's network.
    pub ingress: bool,
    /// Gateway address (IP) in `subnet`, as `docker network create
    /// --gateway`; empty = the subnet's first host.
    pub gateway: String,
    /// The range (CIDR inside `subnet`) task addresses are taken from, as
    /// `docker network create --ip-range`; empty = the whole subnet.
    pub ip_range: String,
    /// Driver options, as `docker network create --opt`: `encrypted`
    /// (present, and not `false`) encrypts an overlay network's traffic
    /// between nodes.
    pub options: BTreeMap<String, String>,
}

/// The driver option that encrypts an overlay network (`--opt encrypted`).
pub const OPT_ENCRYPTED: &str = "encrypted";

impl NetworkSpec {
    /// True for driver `overlay` and for the ingress network.
    pub fn is_overlay(&self) -> bool {
        self.driver == "overlay" || self.ingress
    }

    /// True when the `encrypted` option is set (to anything but `false`).
    pub fn is_encrypted(&self) -> bool {
        self.options.get(OPT_ENCRYPTED).is_some_and(|v| v != "false")
    }
}

/// A named volume.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Volume {
    /// Volume id.
    pub id: VolumeId,
    /// Store bookkeeping.
    pub meta: Meta,
    /// What the operator asked for.
    pub spec: VolumeSpec,
}

/// A volume's spec.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct VolumeSpec {
    /// Name: a DNS label.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Driver; empty = "local".
    pub driver: String,
    /// Driver options.
    pub driver_opts: BTreeMap<String, String>,
}
