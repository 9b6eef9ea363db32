//! The userspace AEAD tunnel of encrypted overlay networks.
//!
//! The kernel here has neither IPsec ESP algorithms nor WireGuard, so the
//! VXLAN traffic of encrypted networks is sealed in userspace:
//!
//! 1. The VXLAN devices of encrypted networks send to the peer node's
//!    underlay address on [`TunnelConfig::encrypted_port`] (4799).
//! 2. A policy-routing rule
//!    (`from <local> ipproto udp dport 4799 lookup <table>`) sends those
//!    kernel-generated UDP packets into a TUN device
//!    (`swtun0`), whose table holds a single `default dev swtun0` route.
//!    (Tested on 6.18: the rule matches the VXLAN driver's route lookup; no
//!    fwmark needed; a VXLAN device with or without `dev` is routed alike.)
//! 3. The tunnel reads each IP packet from the TUN device, takes the VNI
//!    from its VXLAN header, seals the whole packet with ChaCha20-Poly1305
//!    under that network's current key and sends the record over its own
//!    UDP socket (`<local>:4798`) to the same peer's tunnel.
//! 4. The peer opens it with the key the record names (current or
//!    previous), checks that it is a VXLAN packet of that network addressed
//!    to itself, and writes it into its TUN device; the kernel delivers it to
//!    its VXLAN socket. A second rule (`from <local> ipproto udp sport 4799
//!    lookup <table>`) makes the reverse path of such a packet the TUN
//!    device, so it passes rp_filter in any mode without changing it. Plain
//!    VXLAN to 4799 arriving on any other interface is dropped: by strict
//!    rp_filter (its reverse path is the TUN device) and in any case by an
//!    iptables rule (chain `SWARM-TUNNEL`, jumped to from INPUT).
//!
//! # Threads and batches
//!
//! Two OS threads move packets, one per direction, with blocking I/O
//! (`poll` on the descriptor and an eventfd that `stop` signals). Outbound
//! reads the TUN device until it is empty (up to 32 packets per wakeup),
//! seals each in place and sends the batch with one `sendmmsg`; runs of
//! same-size records to one peer go as one UDP GSO message
//! (`UDP_SEGMENT`). Inbound receives up to 32 buffers per `recvmmsg` with
//! `UDP_GRO` on, splits coalesced ones by the reported segment size, opens
//! each record in place and writes it into the device. Nothing is
//! allocated or locked per packet.
//!
//! # The record
//!
//! ```text
//!  0        1           4             8                16               24
//!  | ver=1  | VNI (24)  | key id (32) | salt (64)      | counter (64)   | ciphertext | tag (16) |
//! ```
//!
//! All integers big-endian. The 24-byte header is the AEAD's associated
//! data, so the VNI and the key id are authenticated. Every node of a
//! network holds the same network key, so a nonce built from a per-sender
//! counter alone could repeat across senders or restarts. Instead each
//! sender derives its own sealing key: `HKDF-SHA256(salt, network key,
//! "swarm-tunnel v1" | VNI | key id)`, with a fresh random 64-bit salt each
//! time it (re)installs a key, and the nonce is the 64-bit counter (padded
//! to 96 bits). A (key, nonce) pair repeats only if two salts collide
//! under one network key (2^-64 per pair of sender instances); the counter
//! never wraps (a new salt is drawn after 2^60 records).
//!
//! # Replay protection
//!
//! The receiver keeps a sliding window ([`ReplayWindow`], 2048 counters,
//! as RFC 6479 and WireGuard) per sender instance, i.e. per (VNI, key id,
//! salt). A counter above the highest seen is accepted and slides the
//! window; one inside the window is accepted once; one older than the
//! window is dropped. The window is updated only after the tag verified.
//! Gap: a record under a key still accepted can be replayed once to its
//! receiver after that receiver restarted or forgot the sender instance (it
//! keeps the 4096 most recent); key rotation bounds this.
//!
//! # Keys
//!
//! [`Tunnel::set_keys`] installs a network's [`KeySet`]: records are sealed
//! under `current` and accepted under `current` or `previous`. A loss-free
//! rotation is two steps over all nodes of the network: first each node
//! accepts the new key (`current: old, previous: Some(new)`), then each
//! sends with it (`current: new, previous: Some(old)`). Done in one step,
//! records sealed by an already rotated node are dropped (counted as
//! [`DropReason::UnknownKey`]) by a node not yet rotated, until it is.
//!
//! # MTU
//!
//! A sealed record adds [`TUNNEL_OVERHEAD`] (68) bytes to the VXLAN packet:
//! outer IPv4 (20), UDP (8), header (24), tag (16). The TUN device's MTU is
//! [`tun_mtu`] (underlay MTU - 68) and VXLAN itself adds 50 (IPv4 20, UDP
//! 8, VXLAN 8, Ethernet 14), so the overlay's MTU (the VXLAN device's, the
//! bridge's and the tasks' interfaces) must be at most [`overlay_mtu`]:
//! underlay MTU - 118, 1382 on a 1500 underlay. Larger frames make the
//! kernel fragment the VXLAN packet; fragments are dropped
//! ([`DropReason::Fragment`]).
//!
//! ```no_run
//! # async fn f() -> Result<(), swarm_net::tunnel::TunnelError> {
//! use swarm_net::tunnel::{KeySet, Tunnel, TunnelConfig};
//! let tunnel = Tunnel::start(TunnelConfig::new("10.221.0.1".parse().unwrap())).await?;
//! let keys = KeySet::generate()?; // on a manager; handed to every node of the network
//! tunnel.set_keys(6001, keys.clone())?;
//! let rotated = keys.rotated()?; // new current, old as previous
//! tunnel.set_keys(6001, rotated)?;
//! println!("{:?}", tunnel.stats());
//! tunnel.stop().await?;
//! # Ok(()) }
//! ```

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The record format's version byte.
pub const VERSION: u8 = 1;
/// Bytes of a record's header (version, VNI, key id, salt, counter).
pub const HEADER_LEN: usize = 24;
/// Bytes of the Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Bytes the tunnel adds to each VXLAN packet on the underlay: outer IPv4
/// and UDP headers, the record's header and tag.
pub const TUNNEL_OVERHEAD: u32 = 20 + 8 + HEADER_LEN as u32 + TAG_LEN as u32;
/// Bytes VXLAN adds to an inner IP packet: outer IPv4, UDP, VXLAN header
/// and the inner Ethernet header.
pub const VXLAN_OVERHEAD: u32 = 20 + 8 + 8 + 14;
/// A sender draws a new salt (a new derived key) after this many records
/// under one, so its counter never wraps.
pub const REKEY_AFTER: u64 = 1 << 60;
/// Counters the replay window spans.
pub const WINDOW: u64 = 2048;
/// Sender instances (salts) a receiver tracks at most; the least recently
/// used is forgotten first.
pub const MAX_PEERS: usize = 4096;

const HKDF_INFO: &[u8] = b"swarm-tunnel v1";
const WORDS: usize = (WINDOW / 64) as usize;
/// Room for any IP packet a TUN device or a UDP socket hands us.
const BUF_LEN: usize = 65_536 + HEADER_LEN + TAG_LEN;

/// The TUN device's MTU on an underlay of `underlay_mtu` bytes.
pub fn tun_mtu(underlay_mtu: u32) -> u32 {
    underlay_mtu.saturating_sub(20 + 8 + HEADER_LEN as u32 + TAG_LEN as u32)
}

/// The largest inner IP packet (the MTU of the VXLAN device, the bridge and
/// the tasks' interfaces) of an encrypted network on an underlay of
/// `underlay_mtu` bytes: 1382 for 1500.
pub fn overlay_mtu(underlay_mtu: u32) -> u32 {
    tun_mtu(underlay_mtu).saturating_sub(VXLAN_OVERHEAD)
}

/// Why the tunnel could not start, stop or take keys.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The configuration is unusable.
    #[error("invalid tunnel configuration: {0}")]
    Config(String),
    /// A system call on the TUN device or a socket failed.
    #[error("{call} failed for {what}: {source}")]
    Sys {
        /// Which call.
        call: &'static str,
        /// On what.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// An `ip` or `iptables` command failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output or why it could not run.
        detail: String,
    },
    /// The system's random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// Deriving a sender's key failed.
    #[error("deriving a tunnel key failed")]
    Derive,
    /// The VNI does not fit 24 bits.
    #[error("VNI {0} does not fit in 24 bits")]
    Vni(u32),
}

/// One node's tunnel settings. Swarm's defaults, except `local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// The node's underlay address: the VXLAN devices' `local`, the tunnel
    /// socket's address, the only destination accepted in opened records.
    pub local: Ipv4Addr,
    /// The tunnel's UDP port (4798).
    pub tunnel_port: u16,
    /// The VXLAN destination port of encrypted networks (4799).
    pub encrypted_port: u16,
    /// The TUN device's name (`swtun0`).
    pub device: String,
    /// The routing table holding `default dev <device>` (4799).
    pub route_table: u32,
    /// The policy rule's priority (4799; below main's 32766).
    pub rule_priority: u32,
    /// The underlay's MTU (1500); the TUN device gets [`tun_mtu`] of it.
    pub underlay_mtu: u32,
    /// The iptables chain dropping plain VXLAN to `encrypted_port`
    /// (`SWARM-TUNNEL`), jumped to from INPUT.
    pub chain: String,
    /// The `ip` command.
    pub ip: PathBuf,
    /// The `iptables` command.
    pub iptables: PathBuf,
}

impl TunnelConfig {
    /// The defaults for a node whose underlay address is `local`.
    pub fn new(local: Ipv4Addr) -> TunnelConfig {
        TunnelConfig {
            local,
            tunnel_port: 4798,
            encrypted_port: 4799,
            device: "swtun0".into(),
            route_table: 4799,
            rule_priority: 4799,
            underlay_mtu: 1500,
            chain: "SWARM-TUNNEL".into(),
            ip: "ip".into(),
            iptables: "iptables".into(),
        }
    }

    fn check(&self) -> Result<(), TunnelError> {
        let bad = |m: String| Err(TunnelError::Config(m));
        if self.device.is_empty() || self.device.len() > 15 || !self.device.bytes().all(|b| b.is_ascii_graphic()) {
            return bad(format!("device name {:?} is not 1 to 15 visible characters", self.device));
        }
        if self.tunnel_port == 0 || self.encrypted_port == 0 || self.tunnel_port == self.encrypted_port {
            return bad(format!(
                "ports must be non-zero and differ: tunnel {} encrypted {}",
                self.tunnel_port, self.encrypted_port
            ));
        }
        if self.local.is_unspecified() || self.local.is_multicast() || self.local.is_broadcast() {
            return bad(format!("local address {} is not a unicast address", self.local));
        }
        if overlay_mtu(self.underlay_mtu) < 576 {
            return bad(format!("underlay MTU {} leaves an overlay MTU under 576", self.underlay_mtu));
        }
        if self.rule_priority == 0 || self.rule_priority >= 32766 {
            return bad(format!("rule priority {} must be in 1..32766 (before main)", self.rule_priority));
        }
        if matches!(self.route_table, 0 | 253..=255) {
            return bad(format!("route table {} is reserved", self.route_table));
        }
        if self.chain.is_empty() || self.chain.len() > 28 || self.chain.contains(char::is_whitespace) {
            return bad(format!("chain name {:?} is not 1 to 28 characters without spaces", self.chain));
        }
        Ok(())
    }
}

/// One key of a network: its id (named in each record) and the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct NetworkKey {
    /// Names the key within its network (in each record).
    pub id: u32,
    /// The ChaCha20-Poly1305 master key.
    pub secret: [u8; 32],
}

impl std::fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkKey").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

/// A network's keys: records are sealed under `current` and opened under
/// `current` or `previous` (kept for records in flight during a rotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySet {
    /// The key new records are sealed with.
    pub current: NetworkKey,
    /// Also accepted when opening, if any.
    pub previous: Option<NetworkKey>,
}

impl KeySet {
    /// A new key set: key id 1, a secret from the system's CSPRNG, no
    /// previous key.
    pub fn generate() -> Result<KeySet, TunnelError> {
        Ok(KeySet { current: NetworkKey { id: 1, secret: random()? }, previous: None })
    }

    /// The next key set of a rotation: a new secret with the next key id as
    /// current, this one's current as previous.
    pub fn rotated(&self) -> Result<KeySet, TunnelError> {
        let current = NetworkKey { id: self.current.id.wrapping_add(1), secret: random()? };
        Ok(KeySet { current, previous: Some(self.current.clone()) })
    }

    fn accepts(&self, id: u32) -> Option<&NetworkKey> {
        std::iter::once(&self.current).chain(self.previous.as_ref()).find(|k| k.id == id)
    }
}

fn random<const N: usize>() -> Result<[u8; N], TunnelError> {
    let mut out = [0u8; N];
    SystemRandom::new().fill(&mut out).map_err(|_| TunnelError::Random)?;
    Ok(out)
}

/// Why a packet or record was dropped; each is counted in
/// [`TunnelStats::dropped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Read from the TUN device but not an IPv4 UDP VXLAN packet to the
    /// encrypted port.
    NotVxlan,
    /// A fragment of a VXLAN packet (the overlay MTU is too large).
    Fragment,
    /// No key for the packet's VNI on this node (sending side).
    NoKey,
    /// A record too short or of another version.
    Malformed,
    /// A record naming a VNI or key id this node does not accept.
    UnknownKey,
    /// A record whose tag did not verify (forged, corrupted, wrong key).
    BadTag,
    /// A record already received, or older than the replay window.
    Replay,
    /// An authentic record whose content is not a VXLAN packet of the
    /// record's VNI addressed to this node.
    BadInner,
    /// Sending the record on the underlay failed.
    SendFailed,
    /// Writing the opened packet into the TUN device failed.
    TunWriteFailed,
}

impl DropReason {
    /// Every reason, in order.
    pub const ALL: [DropReason; 10] = [
        DropReason::NotVxlan,
        DropReason::Fragment,
        DropReason::NoKey,
        DropReason::Malformed,
        DropReason::UnknownKey,
        DropReason::BadTag,
        DropReason::Replay,
        DropReason::BadInner,
        DropReason::SendFailed,
        DropReason::TunWriteFailed,
    ];
}

/// What the tunnel did since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Records sealed and sent.
    pub sealed: u64,
    /// Records opened and written to the TUN device.
    pub opened: u64,
    /// Packets and records dropped, by reason (every reason present).
    pub dropped: BTreeMap<DropReason, u64>,
}

impl TunnelStats {
    /// Drops for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get(&reason).copied().unwrap_or(0)
    }
}

#[derive(Debug, Default)]
struct Counters {
    sealed: AtomicU64,
    opened: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
}

impl Counters {
    fn count_drop(&self, reason: DropReason) {
        self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> TunnelStats {
        TunnelStats {
            sealed: self.sealed.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
            dropped: DropReason::ALL.iter().map(|r| (*r, self.dropped[*r as usize].load(Ordering::Relaxed))).collect(),
        }
    }
}

/// A record's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The network.
    pub vni: u32,
    /// The network key's id.
    pub key_id: u32,
    /// The sender instance's salt.
    pub salt: [u8; 8],
    /// The sender's record counter under that salt.
    pub counter: u64,
}

impl Header {
    /// The 24 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = VERSION;
        h[1..4].copy_from_slice(&self.vni.to_be_bytes()[1..]);
        h[4..8].copy_from_slice(&self.key_id.to_be_bytes());
        h[8..16].copy_from_slice(&self.salt);
        h[16..24].copy_from_slice(&self.counter.to_be_bytes());
        h
    }

    /// Parses a record's header; `Malformed` when the record is shorter
    /// than a header and a tag or of another version.
    pub fn parse(record: &[u8]) -> Result<Header, DropReason> {
        if record.len() < HEADER_LEN + TAG_LEN || record[0] != VERSION {
            return Err(DropReason::Malformed);
        }
        let mut salt = [0u8; 8];
        salt.copy_from_slice(&record[8..16]);
        Ok(Header {
            vni: u32::from_be_bytes([0, record[1], record[2], record[3]]),
            key_id: u32::from_be_bytes([record[4], record[5], record[6], record[7]]),
            salt,
            counter: u64::from_be_bytes([
                record[16], record[17], record[18], record[19], record[20], record[21], record[22], record[23],
            ]),
        })
    }
}

/// The key a sender instance (salt) seals with under `key` for `vni`.
/// (Expanding 32 bytes is far below HKDF-SHA256's limit: it does not fail.)
fn derive(key: &NetworkKey, vni: u32, salt: &[u8; 8]) -> Result<LessSafeKey, ring::error::Unspecified> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&key.secret);
    let (vni, id) = (vni.to_be_bytes(), key.id.to_be_bytes());
    let info = [HKDF_INFO, &vni[..], &id[..]];
    prk.expand(&info, &CHACHA20_POLY1305).map(|okm| LessSafeKey::new(UnboundKey::from(okm)))
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// A VXLAN packet as read from the TUN device: where it goes and its VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanPacket {
    /// The outer source address.
    pub src: Ipv4Addr,
    /// The outer destination (the peer node's underlay address).
    pub dst: Ipv4Addr,
    /// The VXLAN network identifier.
    pub vni: u32,
}

/// Parses an IPv4 packet carrying VXLAN to `port`: `NotVxlan` if it is
/// anything else, `Fragment` if it is a fragment.
pub fn parse_vxlan(packet: &[u8], port: u16) -> Result<VxlanPacket, DropReason> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return Err(DropReason::NotVxlan);
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if ihl < 20 || total > packet.len() || total < ihl || packet[9] != libc::IPPROTO_UDP as u8 {
        return Err(DropReason::NotVxlan);
    }
    let frag = u16::from_be_bytes([packet[6], packet[7]]);
    if frag & 0x3fff != 0 {
        return Err(DropReason::Fragment);
    }
    let udp = &packet[ihl..total];
    if udp.len() < 8 + 8 + 14 || u16::from_be_bytes([udp[2], udp[3]]) != port {
        return Err(DropReason::NotVxlan);
    }
    let vxlan = &udp[8..16];
    if vxlan[0] & 0x08 == 0 {
        return Err(DropReason::NotVxlan);
    }
    let ip = |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
    Ok(VxlanPacket { src: ip(12), dst: ip(16), vni: u32::from_be_bytes([0, vxlan[4], vxlan[5], vxlan[6]]) })
}

struct SendKey {
    key: NetworkKey,
    salt: [u8; 8],
    counter: u64,
    sealing: LessSafeKey,
}

impl SendKey {
    fn new(key: &NetworkKey, vni: u32) -> Result<SendKey, TunnelError> {
        let salt = random()?;
        let sealing = derive(key, vni, &salt).map_err(|_| TunnelError::Derive)?;
        Ok(SendKey { key: key.clone(), salt, counter: 0, sealing })
    }
}

/// The sealing half, without I/O: the current key of each network, a salt
/// and a counter per key.
pub struct Sealer {
    port: u16,
    keys: HashMap<u32, SendKey>,
}

impl Sealer {
    /// A sealer for VXLAN packets to `encrypted_port`, with no keys.
    pub fn new(encrypted_port: u16) -> Sealer {
        Sealer { port: encrypted_port, keys: HashMap::new() }
    }

    /// Takes the networks' key sets: a network whose current key changed
    /// (or is new) gets a new salt, one that is gone loses its key.
    pub fn set_keys(&mut self, sets: &HashMap<u32, KeySet>) -> Result<(), TunnelError> {
        self.keys.retain(|vni, k| sets.get(vni).is_some_and(|s| s.current == k.key));
        for (vni, set) in sets {
            if !self.keys.contains_key(vni) {
                self.keys.insert(*vni, SendKey::new(&set.current, *vni)?);
            }
        }
        Ok(())
    }

    /// Seals the packet in `buf[HEADER_LEN..HEADER_LEN + len]` in place
    /// (`buf` must have `TAG_LEN` more bytes after it): the record is
    /// `buf[..returned length]`, to be sent to the returned peer address.
    pub fn seal_in_place(&mut self, buf: &mut [u8], len: usize) -> Result<(Ipv4Addr, usize), DropReason> {
        let end = HEADER_LEN + len;
        if buf.len() < end + TAG_LEN {
            return Err(DropReason::Malformed); // the caller's buffer, not the packet
        }
        let packet = parse_vxlan(&buf[HEADER_LEN..end], self.port)?;
        let key = self.keys.get_mut(&packet.vni).ok_or(DropReason::NoKey)?;
        if key.counter >= REKEY_AFTER {
            *key = SendKey::new(&key.key, packet.vni).map_err(|_| DropReason::NoKey)?;
        }
        let header = Header { vni: packet.vni, key_id: key.key.id, salt: key.salt, counter: key.counter };
        key.counter += 1;
        let (head, rest) = buf.split_at_mut(HEADER_LEN);
        head.copy_from_slice(&header.encode());
        let (body, tail) = rest.split_at_mut(len);
        let tag = key
            .sealing
            .seal_in_place_separate_tag(nonce(header.counter), Aad::from(&*head), body)
            // ring refuses only inputs beyond ChaCha20's 256 GiB.
            .map_err(|_| DropReason::Malformed)?;
        tail[..TAG_LEN].copy_from_slice(tag.as_ref());
        Ok((packet.dst, end + TAG_LEN))
    }

    /// Seals one packet into a new record (tests and tools; the tunnel
    /// seals in place).
    pub fn seal(&mut self, packet: &[u8]) -> Result<(Ipv4Addr, Vec<u8>), DropReason> {
        let mut buf = vec![0u8; HEADER_LEN + packet.len() + TAG_LEN];
        buf[HEADER_LEN..HEADER_LEN + packet.len()].copy_from_slice(packet);
        let (dst, n) = self.seal_in_place(&mut buf, packet.len())?;
        buf.truncate(n);
        Ok((dst, buf))
    }
}

/// Which counters of one sender instance were received: a sliding window
/// of [`WINDOW`] counters below the highest seen (RFC 6479's bitmap).
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    top: Option<u64>,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow { top: None, bits: [0; WORDS] }
    }
}

impl ReplayWindow {
    /// True when `counter` has not been seen and is not older than the
    /// window: a record with it may be opened.
    pub fn check(&self, counter: u64) -> bool {
        match self.top {
            None => true,
            Some(top) if counter > top => true,
            Some(top) if top - counter >= WINDOW => false,
            Some(_) => !self.bit(counter),
        }
    }

    /// Records `counter` as received (after its record authenticated);
    /// false, changing nothing, when [`check`](Self::check) refuses it.
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        match self.top {
            Some(top) if counter <= top => {}
            Some(top) if counter - top < WINDOW => {
                for c in top + 1..counter {
                    self.clear(c);
                }
                self.top = Some(counter);
            }
            _ => {
                self.bits = [0; WORDS];
                self.top = Some(counter);
            }
        }
        let (w, b) = Self::slot(counter);
        self.bits[w] |= 1 << b;
        true
    }

    fn slot(counter: u64) -> (usize, u64) {
        let i = counter % WINDOW;
        ((i / 64) as usize, i % 64)
    }

    fn bit(&self, counter: u64) -> bool {
        let (w, b) = Self::slot(counter);
        self.bits[w] & (1 << b) != 0
    }

    fn clear(&mut self, counter: u64) {
        let (w, b) = Self::slot(counter);
        self.bits[w] &= !(1 << b);
    }
}

struct Peer {
    key: NetworkKey,
    opening: LessSafeKey,
    window: ReplayWindow,
    used: u64,
}

/// The opening half, without I/O: the accepted keys of each network and a
/// derived key and replay window per sender instance.
pub struct Opener {
    local: Ipv4Addr,
    port: u16,
    sets: HashMap<u32, KeySet>,
    peers: HashMap<(u32, u32, [u8; 8]), Peer>,
    clock: u64,
}

impl Opener {
    /// An opener for VXLAN packets to `local`:`encrypted_port`, with no keys.
    pub fn new(local: Ipv4Addr, encrypted_port: u16) -> Opener {
        Opener { local, port: encrypted_port, sets: HashMap::new(), peers: HashMap::new(), clock: 0 }
    }

    /// Takes the networks' key sets; sender instances under a key no longer
    /// accepted are forgotten.
    pub fn set_keys(&mut self, sets: &HashMap<u32, KeySet>) {
        self.peers.retain(|(vni, id, _), p| sets.get(vni).and_then(|s| s.accepts(*id)) == Some(&p.key));
        self.sets = sets.clone();
    }

    /// Sender instances tracked.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    /// Opens a record in place; the inner VXLAN packet is the returned
    /// range of `record`.
    pub fn open_in_place(&mut self, record: &mut [u8]) -> Result<std::ops::Range<usize>, DropReason> {
        let header = Header::parse(record)?;
        let key = self.sets.get(&header.vni).and_then(|s| s.accepts(header.key_id)).ok_or(DropReason::UnknownKey)?;
        let id = (header.vni, header.key_id, header.salt);
        if self.peers.get(&id).is_some_and(|p| !p.window.check(header.counter)) {
            return Err(DropReason::Replay);
        }
        let (head, body) = record.split_at_mut(HEADER_LEN);
        let mut fresh = None;
        let opening = match self.peers.get(&id) {
            Some(p) => &p.opening,
            None => fresh.insert(derive(key, header.vni, &header.salt).map_err(|_| DropReason::UnknownKey)?),
        };
        let len = opening
            .open_in_place(nonce(header.counter), Aad::from(&*head), body)
            .map_err(|_| DropReason::BadTag)?
            .len();
        self.clock += 1;
        let peer = match self.peers.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let opening = match fresh {
                    Some(o) => o,
                    None => derive(key, header.vni, &header.salt).map_err(|_| DropReason::UnknownKey)?,
                };
                e.insert(Peer { key: key.clone(), opening, window: ReplayWindow::default(), used: 0 })
            }
        };
        peer.used = self.clock;
        peer.window.accept(header.counter);
        if self.peers.len() > MAX_PEERS {
            if let Some(oldest) = self.peers.iter().min_by_key(|(_, p)| p.used).map(|(k, _)| *k) {
                self.peers.remove(&oldest);
            }
        }
        let inner = HEADER_LEN..HEADER_LEN + len;
        match parse_vxlan(&record[inner.clone()], self.port) {
            Ok(p) if p.vni == header.vni && p.dst == self.local => Ok(inner),
            _ => Err(DropReason::BadInner),
        }
    }
}

/// The networks' key sets and a generation the data path polls.
#[derive(Default)]
struct KeyTable {
    generation: AtomicU64,
    sets: Mutex<HashMap<u32, KeySet>>,
}

impl KeyTable {
    fn snapshot(&self) -> HashMap<u32, KeySet> {
        match self.sets.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut HashMap<u32, KeySet>)) {
        match self.sets.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// A running tunnel: its TUN device, policy rule, route, iptables chain and
/// the two threads moving packets. Call [`stop`](Tunnel::stop) to remove
/// them; a later [`start`](Tunnel::start) removes leftovers of one that
/// was not stopped.
pub struct Tunnel {
    config: TunnelConfig,
    keys: Arc<KeyTable>,
    counters: Arc<Counters>,
    stop: Arc<OwnedFd>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Tunnel {
    /// Creates the TUN device (up, MTU [`tun_mtu`], IPv6 off), the route
    /// and the two policy rules (this node's UDP to `encrypted_port` into
    /// it; the reverse path of what it delivers), the iptables chain dropping plain
    /// VXLAN to `encrypted_port` from anywhere else, and the tunnel socket,
    /// then starts moving packets. The device, rules and socket are made in
    /// the calling thread's network namespace (the packet threads it starts
    /// inherit it): call it on a runtime whose threads are all in the
    /// node's namespace (tests: `NetNs::runtime`), and `stop` there too.
    pub async fn start(config: TunnelConfig) -> Result<Tunnel, TunnelError> {
        config.check()?;
        cleanup(&config).await;
        match Self::start_in(config.clone()).await {
            Ok(t) => Ok(t),
            Err(e) => {
                cleanup(&config).await;
                Err(e)
            }
        }
    }

    async fn start_in(config: TunnelConfig) -> Result<Tunnel, TunnelError> {
        let tun = open_tun(&config.device)?;
        let dev = config.device.as_str();
        let mtu = tun_mtu(config.underlay_mtu).to_string();
        // A longer queue than the default 500 absorbs a TCP window's burst
        // while the outbound thread seals the previous batch.
        let qlen = TUN_QUEUE.to_string();
        run(&config.ip, &["link", "set", "dev", dev, "mtu", &mtu, "txqueuelen", &qlen, "up"]).await?;
        if let Err(e) = sysctl(&format!("net/ipv6/conf/{dev}/disable_ipv6"), "1") {
            tracing::debug!(error = %e, "IPv6 not disabled on the tunnel device (no IPv6?)");
        }
        let (table, prio) = (config.route_table.to_string(), config.rule_priority.to_string());
        let (port, local) = (config.encrypted_port.to_string(), format!("{}/32", config.local));
        run(&config.ip, &["route", "replace", "default", "dev", dev, "table", &table]).await?;
        // Outbound: this node's VXLAN packets into the device. Inbound: the
        // reverse-path check of a packet written into the device (from the
        // peer's port P to our 4799) looks up the reverse flow (from us,
        // sport 4799, to P): the same table routes it through the device,
        // so the packet passes rp_filter, strict or loose, unchanged.
        for dir in ["dport", "sport"] {
            let rule =
                ["rule", "add", "priority", &prio, "from", &local, "ipproto", "udp", dir, &port, "lookup", &table];
            run(&config.ip, &rule).await?;
        }
        let ipt = &config.iptables;
        let chain = config.chain.as_str();
        run(ipt, &["-w", "-N", chain]).await?;
        run(ipt, &["-w", "-A", chain, "-p", "udp", "--dport", &port, "!", "-i", dev, "-j", "DROP"]).await?;
        run(ipt, &["-w", "-I", "INPUT", "-j", chain]).await?;

        let bind = SocketAddr::V4(SocketAddrV4::new(config.local, config.tunnel_port));
        let (socket, gso) = udp_socket(bind)?;
        let socket = Arc::new(socket);
        let tun = Arc::new(tun);
        let stop = Arc::new(eventfd()?);
        let keys = Arc::new(KeyTable::default());
        let counters = Arc::new(Counters::default());
        let path = Path {
            tun,
            socket,
            gso,
            stop: stop.clone(),
            config: config.clone(),
            keys: keys.clone(),
            counters: counters.clone(),
        };
        let mut threads = Vec::new();
        for (name, run) in [("swtun-out", outbound as fn(Path)), ("swtun-in", inbound as fn(Path))] {
            let p = path.clone();
            match std::thread::Builder::new().name(name.into()).spawn(move || run(p)) {
                Ok(t) => threads.push(t),
                Err(source) => {
                    signal(&stop);
                    return Err(TunnelError::Sys { call: "spawn", what: format!("thread {name}"), source });
                }
            }
        }
        tracing::info!(device = %config.device, local = %config.local, port = config.tunnel_port, "tunnel started");
        Ok(Tunnel { config, keys, counters, stop, threads })
    }

    /// Installs (or replaces) the keys of network `vni`: records are sealed
    /// under `keys.current` from the next packet on and opened under either
    /// key. The integrator calls this with what the managers hand out over
    /// the mutual-TLS session, on every node of the network.
    pub fn set_keys(&self, vni: u32, keys: KeySet) -> Result<(), TunnelError> {
        if vni >= 1 << 24 {
            return Err(TunnelError::Vni(vni));
        }
        self.keys.update(|m| {
            m.insert(vni, keys);
        });
        Ok(())
    }

    /// Forgets network `vni`'s keys: its packets are dropped both ways.
    pub fn remove_network(&self, vni: u32) {
        self.keys.update(|m| {
            m.remove(&vni);
        });
    }

    /// The counters since the start.
    pub fn stats(&self) -> TunnelStats {
        self.counters.snapshot()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &TunnelConfig {
        &self.config
    }

    /// Stops moving packets, then removes the TUN device, the rule, the
    /// route and the iptables chain. Reports the first removal that failed
    /// (after trying all).
    pub async fn stop(mut self) -> Result<(), TunnelError> {
        signal(&self.stop);
        let threads: Vec<_> = self.threads.drain(..).collect();
        // The threads see the signal at their next wait (at most one batch).
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        if let Err(e) = joined.await {
            tracing::warn!(error = %e, "tunnel threads not joined");
        }
        let result = remove(&self.config).await;
        tracing::info!(device = %self.config.device, "tunnel stopped");
        result
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        // Not stopped: the threads end (closing the device with the last
        // descriptor) without being waited for.
        signal(&self.stop);
    }
}

/// The TUN device's transmit queue (packets waiting to be sealed).
const TUN_QUEUE: u32 = 1000;
/// Packets read (or records received) per wakeup at most.
const BATCH: usize = 32;

/// What both packet threads share.
#[derive(Clone)]
struct Path {
    tun: Arc<OwnedFd>,
    socket: Arc<std::net::UdpSocket>,
    /// The socket takes UDP GSO sends (`UDP_SEGMENT`).
    gso: bool,
    stop: Arc<OwnedFd>,
    config: TunnelConfig,
    keys: Arc<KeyTable>,
    counters: Arc<Counters>,
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// An eventfd the threads poll next to their descriptor; written to stop.
fn eventfd() -> Result<OwnedFd, TunnelError> {
    // SAFETY: eventfd(2) takes plain integers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(sys("eventfd", "tunnel stop signal"));
    }
    // SAFETY: fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn signal(stop: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to an eventfd.
    let _ = unsafe { libc::write(stop.as_raw_fd(), one.as_ptr().cast(), one.len()) };
}

/// Waits until `fd` has `events`; false when the stop signal came (or
/// polling failed, which ends the thread).
fn wait(fd: std::os::fd::RawFd, events: libc::c_short, stop: &OwnedFd) -> bool {
    let mut fds = [
        libc::pollfd { fd, events, revents: 0 },
        libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: fds is a live array of two pollfd for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = errno();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %e, "tunnel poll failed; its thread stops");
            return false;
        }
        return fds[1].revents == 0;
    }
}

/// TUN device -> seal -> underlay: reads up to [`BATCH`] packets per
/// wakeup, seals each in place and sends them with one `sendmmsg`.
fn outbound(p: Path) {
    let mut sealer = Sealer::new(p.config.encrypted_port);
    let mut generation = u64::MAX;
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; BUF_LEN]).collect();
    let mut lens = [0usize; BATCH];
    let mut dsts = [Ipv4Addr::UNSPECIFIED; BATCH];
    loop {
        let g = p.keys.generation.load(Ordering::SeqCst);
        if g != generation {
            if let Err(e) = sealer.set_keys(&p.keys.snapshot()) {
                tracing::error!(error = %e, "tunnel keys not taken");
            } else {
                generation = g;
            }
        }
        let mut n = 0;
        let mut empty = false;
        while n < BATCH {
            let buf = &mut bufs[n];
            let room = &mut buf[HEADER_LEN..BUF_LEN - TAG_LEN];
            // SAFETY: room is valid for writes of its length for the call.
            let r = unsafe { libc::read(p.tun.as_raw_fd(), room.as_mut_ptr().cast(), room.len()) };
            if r < 0 {
                let e = errno();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock => {
                        empty = true;
                        break;
                    }
                    std::io::ErrorKind::Interrupted => continue,
                    _ => {
                        tracing::error!(error = %e, device = %p.config.device, "reading the tunnel device failed; tunnel outbound stops");
                        return;
                    }
                }
            }
            match sealer.seal_in_place(buf, r as usize) {
                Ok((peer, len)) => {
                    dsts[n] = peer;
                    lens[n] = len;
                    n += 1;
                }
                Err(reason) => {
                    tracing::trace!(?reason, "outbound packet dropped");
                    p.counters.count_drop(reason);
                }
            }
        }
        if n > 0 {
            send_batch(&p, &bufs, &lens[..n], &dsts[..n]);
        }
        if empty && !wait(p.tun.as_raw_fd(), libc::POLLIN, &p.stop) {
            return;
        }
        if !empty && is_signalled(&p.stop) {
            return;
        }
    }
}

fn is_signalled(stop: &OwnedFd) -> bool {
    let mut fds = [libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    // SAFETY: fds is a live array of one pollfd for the call.
    unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) != 0 }
}

fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    a.sin_family = libc::AF_INET as libc::sa_family_t;
    a.sin_port = port.to_be();
    a.sin_addr = libc::in_addr { s_addr: u32::from(ip).to_be() };
    a
}

/// Sends records `bufs[i][..lens[i]]` to `dsts[i]` with one `sendmmsg`
/// (as few as it takes): consecutive records to one peer of one size (the
/// last of a run may be shorter) go as one UDP GSO message (`UDP_SEGMENT`),
/// so the underlay carries them as one buffer until the peer's socket. A
/// message the socket refuses is counted (per record) and skipped.
fn send_batch(p: &Path, bufs: &[Vec<u8>], lens: &[usize], dsts: &[Ipv4Addr]) {
    let n = lens.len();
    let mut addrs: [libc::sockaddr_in; BATCH] = [sockaddr(Ipv4Addr::UNSPECIFIED, 0); BATCH];
    let mut iovs: [libc::iovec; BATCH] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH];
    let mut controls = [[0u64; 4]; BATCH];
    // SAFETY: mmsghdr is plain data; all-zero is a valid value.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut records = [0usize; BATCH];
    let mut m = 0;
    let mut i = 0;
    while i < n {
        // A run: same peer, same size, within UDP GSO's limits.
        let mut j = i + 1;
        let mut bytes = lens[i];
        while j < n
            && p.gso
            && dsts[j] == dsts[i]
            && lens[j] <= lens[i]
            && lens[j - 1] == lens[i]
            && j - i < UDP_MAX_SEGMENTS
            && bytes + lens[j] <= UDP_GSO_MAX
        {
            bytes += lens[j];
            j += 1;
        }
        for k in i..j {
            iovs[k] = libc::iovec { iov_base: bufs[k].as_ptr() as *mut libc::c_void, iov_len: lens[k] };
        }
        addrs[m] = sockaddr(dsts[i], p.config.tunnel_port);
        let h = &mut msgs[m].msg_hdr;
        h.msg_name = (&mut addrs[m] as *mut libc::sockaddr_in).cast();
        h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = j - i;
        if j - i > 1 {
            h.msg_control = controls[m].as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE only computes a size.
            h.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
            // SAFETY: the control buffer (32 bytes, aligned) holds one
            // cmsghdr with a u16 payload; h points at it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(h);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), lens[i] as u16);
            }
        }
        records[m] = j - i;
        m += 1;
        i = j;
    }
    let mut at = 0;
    while at < m {
        // SAFETY: msgs[at..m] point into addrs, iovs, controls and bufs,
        // all alive and unmoved for the call; the socket blocks when its
        // buffer is full (back pressure on the TUN queue).
        let r = unsafe { libc::sendmmsg(p.socket.as_raw_fd(), msgs[at..].as_mut_ptr(), (m - at) as u32, 0) };
        if r < 0 {
            let e = errno();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::debug!(error = %e, "sending tunnel records failed");
            for _ in 0..records[at] {
                p.counters.count_drop(DropReason::SendFailed);
            }
            at += 1;
        } else {
            let sent: usize = records[at..at + r as usize].iter().sum();
            p.counters.sealed.fetch_add(sent as u64, Ordering::Relaxed);
            at += r as usize;
        }
    }
}

/// Records per UDP GSO message at most (the kernel's limit is 64 on older
/// kernels).
const UDP_MAX_SEGMENTS: usize = 64;
/// Bytes per UDP GSO message at most (one IPv4 datagram's payload).
const UDP_GSO_MAX: usize = 65_000;

/// Underlay -> open -> TUN device: receives up to [`BATCH`] records per
/// `recvmmsg`, opens each in place and writes it into the device.
fn inbound(p: Path) {
    let mut opener = Opener::new(p.config.local, p.config.encrypted_port);
    let mut generation = u64::MAX;
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; BUF_LEN]).collect();
    let mut iovs: Vec<libc::iovec> =
        bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
    // SAFETY: mmsghdr is plain data; all-zero is a valid value.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut controls = vec![[0u64; 8]; BATCH];
    for ((m, iov), c) in msgs.iter_mut().zip(iovs.iter_mut()).zip(controls.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
        m.msg_hdr.msg_control = c.as_mut_ptr().cast();
    }
    loop {
        for m in msgs.iter_mut() {
            m.msg_len = 0;
            m.msg_hdr.msg_flags = 0;
            m.msg_hdr.msg_controllen = 64;
        }
        // SAFETY: msgs point into iovs and bufs, alive and unmoved for the
        // call (the Vecs are never resized); no source addresses asked.
        let r = unsafe {
            libc::recvmmsg(
                p.socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = errno();
            match e.kind() {
                std::io::ErrorKind::WouldBlock => {
                    if !wait(p.socket.as_raw_fd(), libc::POLLIN, &p.stop) {
                        return;
                    }
                }
                std::io::ErrorKind::Interrupted => {}
                std::io::ErrorKind::ConnectionRefused => {
                    // An ICMP port unreachable for an earlier send (a peer
                    // without a tunnel): not this socket's failure.
                    tracing::debug!(error = %e, "tunnel peer unreachable");
                }
                _ => {
                    tracing::warn!(error = %e, "tunnel socket receive error");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    if is_signalled(&p.stop) {
                        return;
                    }
                }
            }
            continue;
        }
        let g = p.keys.generation.load(Ordering::SeqCst);
        if g != generation {
            opener.set_keys(&p.keys.snapshot());
            generation = g;
        }
        for (m, buf) in msgs.iter().zip(bufs.iter_mut()).take(r as usize) {
            let n = (m.msg_len as usize).min(buf.len());
            // Records the kernel coalesced (UDP_GRO) come back to back,
            // each `segment` bytes but the last.
            let segment = gro_segment(&m.msg_hdr).unwrap_or(n).max(1);
            for record in buf[..n].chunks_mut(segment) {
                open_and_write(&p, &mut opener, record);
            }
        }
        if is_signalled(&p.stop) {
            return;
        }
    }
}

/// The segment size of a coalesced receive (`UDP_GRO` control message).
fn gro_segment(h: &libc::msghdr) -> Option<usize> {
    // SAFETY: h was filled by recvmmsg; the CMSG macros walk its control
    // buffer within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(v).ok().filter(|v| *v > 0);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// Opens one record and writes its packet into the TUN device, counting.
fn open_and_write(p: &Path, opener: &mut Opener, record: &mut [u8]) {
    match opener.open_in_place(record) {
        Ok(inner) => {
            let packet = &record[inner];
            // SAFETY: packet is valid for reads of its length.
            let w = unsafe { libc::write(p.tun.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
            if w < 0 {
                tracing::debug!(error = %errno(), "writing to the tunnel device failed");
                p.counters.count_drop(DropReason::TunWriteFailed);
            } else {
                p.counters.opened.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(reason) => {
            tracing::trace!(?reason, "inbound record dropped");
            p.counters.count_drop(reason);
        }
    }
}

fn sys(call: &'static str, what: &str) -> TunnelError {
    TunnelError::Sys { call, what: what.to_string(), source: std::io::Error::last_os_error() }
}

/// Opens `/dev/net/tun` and attaches the TUN device `name` (IFF_TUN,
/// IFF_NO_PI), nonblocking.
fn open_tun(name: &str) -> Result<OwnedFd, TunnelError> {
    // SAFETY: a plain open(2) of a NUL-terminated path.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(sys("open /dev/net/tun", name));
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which lives for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut libc::ifreq) } < 0 {
        return Err(sys("ioctl(TUNSETIFF)", name));
    }
    Ok(fd)
}

/// The tunnel socket, blocking (sends wait for room; receives pass
/// `MSG_DONTWAIT` and poll).
fn udp_socket(bind: SocketAddr) -> Result<(std::net::UdpSocket, bool), TunnelError> {
    let err = |call, source| TunnelError::Sys { call, what: format!("tunnel socket {bind}"), source };
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .map_err(|e| err("socket", e))?;
    // Bursts of a TCP window arrive at once: room for them (capped by
    // net.core.rmem_max / wmem_max).
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&bind.into()).map_err(|e| err("bind", e))?;
    // Runs of records received as one buffer (split by the control
    // message's segment size), and sent as one (UDP_SEGMENT; Linux 4.18+).
    let on: libc::c_int = 1;
    let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let fd = s.as_raw_fd();
    // SAFETY: setsockopt reads one int, which lives for the call.
    let gro = unsafe { libc::setsockopt(fd, libc::SOL_UDP, libc::UDP_GRO, (&on as *const libc::c_int).cast(), size) };
    if gro < 0 {
        tracing::debug!(error = %errno(), "no UDP GRO on the tunnel socket");
    }
    let probe: libc::c_int = 0;
    // SAFETY: as above; a zero UDP_SEGMENT only probes the option.
    let gso =
        unsafe { libc::setsockopt(fd, libc::SOL_UDP, libc::UDP_SEGMENT, (&probe as *const libc::c_int).cast(), size) }
            == 0;
    Ok((s.into(), gso))
}

/// Writes `value` to `/proc/sys/<key>` of the calling thread's namespace.
fn sysctl(key: &str, value: &str) -> Result<(), TunnelError> {
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).map_err(|source| TunnelError::Sys { call: "write", what: path, source })
}

/// Removes what `start` sets up, reporting the first failure.
async fn remove(config: &TunnelConfig) -> Result<(), TunnelError> {
    let mut first = None;
    let mut note = |r: Result<(), TunnelError>| {
        if let Err(e) = r {
            tracing::warn!(error = %e, "tunnel cleanup step failed");
            first.get_or_insert(e);
        }
    };
    let (table, prio) = (config.route_table.to_string(), config.rule_priority.to_string());
    for _ in 0..2 {
        note(run(&config.ip, &["rule", "del", "priority", &prio, "lookup", &table]).await);
    }
    note(run(&config.ip, &["route", "flush", "table", &table]).await);
    let (ipt, chain) = (&config.iptables, config.chain.as_str());
    note(run(ipt, &["-w", "-D", "INPUT", "-j", chain]).await);
    note(run(ipt, &["-w", "-F", chain]).await);
    note(run(ipt, &["-w", "-X", chain]).await);
    // The device went with its file descriptor (it is not persistent);
    // one left by another process is deleted.
    if run(&config.ip, &["link", "show", "dev", &config.device]).await.is_ok() {
        note(run(&config.ip, &["link", "del", "dev", &config.device]).await);
    }
    first.map_or(Ok(()), Err)
}

/// Removes leftovers of an earlier tunnel with this configuration, quietly.
async fn cleanup(config: &TunnelConfig) {
    let (table, prio) = (config.route_table.to_string(), config.rule_priority.to_string());
    while run(&config.ip, &["rule", "del", "priority", &prio, "lookup", &table]).await.is_ok() {}
    let _ = run(&config.ip, &["route", "flush", "table", &table]).await;
    let (ipt, chain) = (&config.iptables, config.chain.as_str());
    while run(ipt, &["-w", "-D", "INPUT", "-j", chain]).await.is_ok() {}
    let _ = run(ipt, &["-w", "-F", chain]).await;
    let _ = run(ipt, &["-w", "-X", chain]).await;
    if run(&config.ip, &["link", "show", "dev", &config.device]).await.is_ok() {
        let _ = run(&config.ip, &["link", "del", "dev", &config.device]).await;
    }
}

async fn run(cmd: &std::path::Path, args: &[&str]) -> Result<(), TunnelError> {
    let line = || format!("{} {}", cmd.display(), args.join(" "));
    let out = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| TunnelError::Command { command: line(), detail: e.to_string() })?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(TunnelError::Command { command: line(), detail: format!("{err} ({})", out.status) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORT: u16 = 4799;

    /// An IPv4/UDP/VXLAN packet from `src` to `dst` for `vni`, carrying a
    /// 14-byte Ethernet header and `payload`.
    fn vxlan(src: [u8; 4], dst: [u8; 4], vni: u32, payload: &[u8]) -> Vec<u8> {
        let total = 20 + 8 + 8 + 14 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&PORT.to_be_bytes());
        p[24..26].copy_from_slice(&((total - 20) as u16).to_be_bytes());
        p[28] = 0x08;
        p[32..35].copy_from_slice(&vni.to_be_bytes()[1..]);
        p[50..].copy_from_slice(payload);
        p
    }

    fn key(id: u32, byte: u8) -> NetworkKey {
        NetworkKey { id, secret: [byte; 32] }
    }

    fn sets(entries: &[(u32, KeySet)]) -> HashMap<u32, KeySet> {
        entries.iter().cloned().collect()
    }

    const A: [u8; 4] = [10, 221, 0, 1];
    const B: [u8; 4] = [10, 221, 0, 2];

    fn pair(keys: &HashMap<u32, KeySet>) -> (Sealer, Opener) {
        let mut s = Sealer::new(PORT);
        s.set_keys(keys).unwrap();
        let mut o = Opener::new(Ipv4Addr::from(B), PORT);
        o.set_keys(keys);
        (s, o)
    }

    #[test]
    fn a_record_round_trips_with_an_authenticated_header() {
        let keys = sets(&[(6001, KeySet { current: key(7, 1), previous: None })]);
        let (mut s, mut o) = pair(&keys);
        let packet = vxlan(A, B, 6001, b"hello overlay");
        let (dst, mut record) = s.seal(&packet).unwrap();
        assert_eq!(dst, Ipv4Addr::from(B));
        assert_eq!(record.len(), packet.len() + HEADER_LEN + TAG_LEN);
        let h = Header::parse(&record).unwrap();
        assert_eq!((h.vni, h.key_id, h.counter), (6001, 7, 0));
        assert_eq!(Header::parse(&h.encode()[..]).err(), Some(DropReason::Malformed), "no room for a tag");
        assert!(!record.windows(13).any(|w| w == b"hello overlay"), "the payload is not in clear");
        let mut copy = record.clone();
        let inner = o.open_in_place(&mut copy).unwrap();
        assert_eq!(&copy[inner], &packet[..]);

        // Every header byte is authenticated: changing any (except making
        // it unparsable or naming another key) fails the tag.
        for at in 0..HEADER_LEN {
            let mut bad = record.clone();
            bad[at] ^= 0x01;
            let r = o.open_in_place(&mut bad);
            assert!(
                matches!(r, Err(DropReason::BadTag | DropReason::Malformed | DropReason::UnknownKey)),
                "header byte {at} flipped: {r:?}"
            );
        }
        // And the body (a fresh record: this one's counter was received).
        assert_eq!(o.open_in_place(&mut record), Err(DropReason::Replay));
        let (_, mut record) = s.seal(&packet).unwrap();
        record[HEADER_LEN + 30] ^= 0x80;
        assert_eq!(o.open_in_place(&mut record), Err(DropReason::BadTag));
    }

    #[test]
    fn malformed_unknown_and_wrong_network_records_are_refused() {
        let k = KeySet { current: key(1, 9), previous: None };
        let keys = sets(&[(6001, k.clone()), (6002, KeySet { current: key(1, 10), previous: None })]);
        let (mut s, mut o) = pair(&keys);
        assert_eq!(o.open_in_place(&mut [1u8; 39]), Err(DropReason::Malformed));
        let (_, mut rec) = s.seal(&vxlan(A, B, 6001, b"x")).unwrap();
        rec[0] = 2;
        assert_eq!(o.open_in_place(&mut rec), Err(DropReason::Malformed));

        // A receiver without the network's key.
        let mut stranger = Opener::new(Ipv4Addr::from(B), PORT);
        stranger.set_keys(&sets(&[(6002, keys[&6002].clone())]));
        let (_, mut rec) = s.seal(&vxlan(A, B, 6001, b"x")).unwrap();
        assert_eq!(stranger.open_in_place(&mut rec), Err(DropReason::UnknownKey));

        // A key holder of 6001 cannot inject into 6002: the record is
        // authentic under 6001 but carries a 6002 VXLAN packet.
        let mut evil = Sealer::new(PORT);
        evil.set_keys(&sets(&[(6002, k.clone())])).unwrap();
        let (_, mut rec) = evil.seal(&vxlan(A, B, 6002, b"x")).unwrap();
        rec[1..4].copy_from_slice(&6001u32.to_be_bytes()[1..]);
        assert_eq!(o.open_in_place(&mut rec), Err(DropReason::BadTag), "the VNI is bound into the key and AAD");
        // Sealed under 6001's key for 6001, but not addressed to this node.
        let (_, mut rec) = s.seal(&vxlan(A, [10, 221, 0, 9], 6001, b"x")).unwrap();
        assert_eq!(o.open_in_place(&mut rec), Err(DropReason::BadInner));

        // No key for a VNI when sealing; not VXLAN at all; a fragment.
        assert_eq!(s.seal(&vxlan(A, B, 6003, b"x")).err(), Some(DropReason::NoKey));
        let mut p = vxlan(A, B, 6001, b"x");
        p[22..24].copy_from_slice(&4789u16.to_be_bytes());
        assert_eq!(s.seal(&p).err(), Some(DropReason::NotVxlan));
        assert_eq!(s.seal(&[0x60; 60]).err(), Some(DropReason::NotVxlan));
        let mut p = vxlan(A, B, 6001, b"x");
        p[6] = 0x20; // more fragments
        assert_eq!(s.seal(&p).err(), Some(DropReason::Fragment));
    }

    #[test]
    fn nonces_never_repeat_across_records_key_changes_and_senders() {
        let k = KeySet { current: key(1, 3), previous: None };
        let keys = sets(&[(6001, k.clone())]);
        let mut seen = std::collections::HashSet::new();
        let packet = vxlan(A, B, 6001, b"n");
        // Two senders with the same network key, each re-installing the
        // same key set (as a resync would) and after a restart (new Sealer).
        for _restart in 0..3 {
            for _sender in 0..2 {
                let mut s = Sealer::new(PORT);
                s.set_keys(&keys).unwrap();
                for round in 0..3 {
                    for _ in 0..1000 {
                        let (_, rec) = s.seal(&packet).unwrap();
                        let h = Header::parse(&rec).unwrap();
                        assert!(seen.insert((h.salt, h.counter)), "nonce (salt, counter) repeated");
                    }
                    s.set_keys(&keys).unwrap(); // same key: same salt, counter goes on
                    if round == 1 {
                        s.set_keys(&HashMap::new()).unwrap(); // removed, then back: new salt
                        s.set_keys(&keys).unwrap();
                    }
                }
            }
        }
        assert_eq!(seen.len(), 3 * 2 * 3 * 1000);
        let salts: std::collections::HashSet<_> = seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(salts.len(), 3 * 2 * 2, "a salt per sender instance and key installation");
    }

    #[test]
    fn a_sender_at_the_rekey_limit_draws_a_new_salt() {
        let keys = sets(&[(6001, KeySet { current: key(1, 3), previous: None })]);
        let (mut s, mut o) = pair(&keys);
        let packet = vxlan(A, B, 6001, b"n");
        let (_, first) = s.seal(&packet).unwrap();
        if let Some(k) = s.keys.get_mut(&6001) {
            k.counter = REKEY_AFTER;
        }
        let (_, mut next) = s.seal(&packet).unwrap();
        let (h1, h2) = (Header::parse(&first).unwrap(), Header::parse(&next).unwrap());
        assert_ne!(h1.salt, h2.salt);
        assert_eq!(h2.counter, 0);
        assert!(o.open_in_place(&mut next).is_ok());
    }

    #[test]
    fn the_replay_window_accepts_each_counter_once_and_nothing_too_old() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(5));
        assert!(!w.accept(5), "a duplicate");
        assert!(w.accept(3), "late but inside the window");
        assert!(!w.accept(3));
        assert!(w.accept(4000));
        assert!(!w.check(4000 - WINDOW), "just outside the window");
        assert!(w.check(4000 - WINDOW + 1), "just inside");
        assert!(!w.accept(5), "far too old");
        // Slots reused after sliding are clear again: every counter of the
        // window after a jump is accepted once.
        assert!(w.accept(4000 + WINDOW + 10));
        for c in (4000 + 11)..(4000 + WINDOW + 10) {
            assert!(w.accept(c), "counter {c}");
            assert!(!w.accept(c), "counter {c} twice");
        }
        // Out-of-order delivery within the window, checked against a model.
        let mut w = ReplayWindow::default();
        let mut model = std::collections::BTreeSet::new();
        let mut x: u64 = 12345;
        let mut top = 0u64;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let c = (top + 64).saturating_sub((x >> 33) % 2500);
            let fresh = !model.contains(&c) && (c + WINDOW > top || model.is_empty());
            assert_eq!(w.accept(c), fresh, "counter {c} (top {top})");
            if fresh {
                model.insert(c);
                top = top.max(c);
            }
        }
    }

    #[test]
    fn replayed_records_are_dropped_and_the_window_moves_only_on_authentic_ones() {
        let keys = sets(&[(6001, KeySet { current: key(1, 4), previous: None })]);
        let (mut s, mut o) = pair(&keys);
        let packet = vxlan(A, B, 6001, b"r");
        let recs: Vec<Vec<u8>> = (0..4).map(|_| s.seal(&packet).unwrap().1).collect();
        let mut r2 = recs[2].clone();
        assert!(o.open_in_place(&mut r2).is_ok());
        let mut again = recs[2].clone();
        assert_eq!(o.open_in_place(&mut again), Err(DropReason::Replay));
        // A forged record with a high counter for the same sender instance
        // fails its tag and does not slide the window.
        let mut forged = recs[3].clone();
        forged[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(o.open_in_place(&mut forged), Err(DropReason::BadTag));
        for i in [0, 1, 3] {
            let mut r = recs[i].clone();
            assert!(o.open_in_place(&mut r).is_ok(), "record {i}");
        }
        assert_eq!(o.peers(), 1);
    }

    #[test]
    fn rotation_opens_under_current_and_previous_and_forgets_older_keys() {
        let old = KeySet { current: key(1, 5), previous: None };
        let new = KeySet { current: key(2, 6), previous: Some(key(1, 5)) };
        let (mut s_old, _) = pair(&sets(&[(6001, old.clone())]));
        let (mut s_new, mut o) = pair(&sets(&[(6001, new.clone())]));
        let packet = vxlan(A, B, 6001, b"k");
        let (_, mut r_old) = s_old.seal(&packet).unwrap();
        let (_, mut r_new) = s_new.seal(&packet).unwrap();
        assert_eq!(Header::parse(&r_new).unwrap().key_id, 2);
        assert!(o.open_in_place(&mut r_old.clone()).is_ok(), "previous key still accepted");
        assert!(o.open_in_place(&mut r_new.clone()).is_ok());
        assert_eq!(o.peers(), 2);
        o.set_keys(&sets(&[(6001, KeySet { current: key(2, 6), previous: None })]));
        assert_eq!(o.peers(), 1, "the old key's sender instance is forgotten");
        assert_eq!(o.open_in_place(&mut r_old), Err(DropReason::UnknownKey));
        // Same key id, other secret (a key replaced under its id): the
        // cached sender instance is forgotten, not used with the old secret.
        o.set_keys(&sets(&[(6001, KeySet { current: key(2, 7), previous: None })]));
        assert_eq!(o.peers(), 0);
        assert_eq!(o.open_in_place(&mut r_new), Err(DropReason::BadTag));
    }

    #[test]
    fn generated_keys_are_random_and_rotation_chains_ids() {
        let a = KeySet::generate().unwrap();
        let b = KeySet::generate().unwrap();
        assert_ne!(a.current.secret, b.current.secret);
        assert_ne!(a.current.secret, [0; 32]);
        let r = a.rotated().unwrap();
        assert_eq!(r.current.id, a.current.id + 1);
        assert_eq!(r.previous.as_ref(), Some(&a.current));
        assert_ne!(r.current.secret, a.current.secret);
        assert!(format!("{:?}", a.current).contains("<redacted>"));
    }

    #[test]
    fn mtus_account_for_vxlan_and_the_tunnel() {
        assert_eq!(TUNNEL_OVERHEAD, 68);
        assert_eq!(tun_mtu(1500), 1432);
        assert_eq!(overlay_mtu(1500), 1382);
        assert_eq!(overlay_mtu(9000), 8882);
        let mut c = TunnelConfig::new("10.221.0.1".parse().unwrap());
        assert!(c.check().is_ok());
        c.tunnel_port = 4799;
        assert!(matches!(c.check(), Err(TunnelError::Config(_))));
        let mut c = TunnelConfig::new("10.221.0.1".parse().unwrap());
        c.device = "a-name-much-too-long".into();
        assert!(c.check().is_err());
        let mut c = TunnelConfig::new("10.221.0.1".parse().unwrap());
        c.underlay_mtu = 600;
        assert!(c.check().is_err());
    }
}
