//! VIP, subnet and published-port allocation.
//!
//! [`plan`] is a pure function over a [`State`]: it gives every network a
//! subnet (a /24 slice of the pool, unless the operator asked for one),
//! every overlay network a gateway and a VXLAN identifier, every VIP-mode
//! service one virtual IP per attached network, every NEW task one address
//! per overlay network it attaches to (IPAM, below), and every ingress port
//! without a number one from 30000-32767, like Swarm. It keeps
//! what the store already holds whenever that is still valid, so a restarted
//! allocator (or a new leader) reproduces the same allocations, and an
//! existing allocation is never taken away by a newer object. Objects are
//! processed oldest first (`meta.created_revision`, then id), so the outcome
//! does not depend on map order. A removed service simply stops holding its
//! addresses and ports: they are free for the next plan.
//!
//! [`Allocator`] is the controller: on the controller runtime
//! ([`Allocator::controller`], which a manager runs in place of its default
//! allocator) it plans on every service, network or new-task change,
//! commits the endpoint and subnet changes, and moves NEW tasks to PENDING
//! (the scheduler's input) once their service is allocated; tasks of a
//! service it cannot allocate stay NEW with the reason in their status.
//!
//! A service that publishes an ingress port another service already holds
//! keeps the rest of its endpoint but not that port, and the conflict is
//! reported ([`Allocator::errors`], a `tracing` warning). To reject such a
//! service before it is created, call [`check_ports`] (or
//! [`create_service_checked`]) instead of `Cluster::create_service`.
//!
//! Services with no network attachment are on the implicit network
//! [`DEFAULT_NETWORK`] (the agent reports their addresses under that name),
//! which always gets the first slice of the pool.
//!
//! # Overlay IPAM
//!
//! An overlay network ([`Network::is_overlay`]: driver `overlay`, or the
//! ingress network) gets its gateway (the spec's, else the subnet's first
//! host) and its VNI (the one requested with the
//! [`OPT_VXLANID_LIST`] option,
//! else the lowest free from [`FIRST_VNI`]), written with its subnet. Each
//! NEW task gets, per overlay network it attaches to (plus the ingress
//! network when its service publishes ingress ports), the lowest free host
//! of the network's `ip_range` (else its subnet), skipping the network and
//! broadcast addresses, the gateway, every VIP and every address held by
//! another task. The attachment ([`NetworkAttachment::overlay`]) is written
//! in the update that moves the task to PENDING
//! ([`TaskAllocation::Ready`]); a task's address is held from then until
//! the task reaches a terminal state (its container is gone) or leaves the
//! store, so a replacement never reuses the address of a container still
//! running. VIPs come from the same range and never collide with task
//! addresses, whichever came first. A task that finds no free address stays
//! NEW with the reason and is admitted once an address is released. Tasks
//! of a network whose allocation this very pass writes wait for the next
//! pass ([`TaskAllocation::Wait`]), so no task carries a VNI or subnet the
//! store does not hold yet.

use ipnet::Ipv4Net;
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use swarm_core::allocator::{Allocate, Allocation, TaskAllocation, TaskAllocator};
use swarm_core::cluster::{Cluster, ClusterError};
use swarm_core::controller::{self, RuntimeConfig};
use swarm_core::id::{NetworkId, ServiceId, TaskId};
use swarm_core::model::*;
use swarm_core::state::{State, Transaction};
use swarm_core::store::{Store, StoreError};
use swarm_core::validate::{OPT_VXLANID_LIST, requested_vni};
use tokio::sync::watch;

/// The network of services that attach to none.
pub const DEFAULT_NETWORK: &str = "default";

/// Where addresses and ports come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocatorConfig {
    /// The address pool networks get their subnets from (default 10.0.0.0/8).
    pub pool: Ipv4Net,
    /// Prefix length of each network's slice of the pool (default 24).
    pub slice_prefix: u8,
    /// Ports given to ingress ports published without a number
    /// (default 30000-32767).
    pub ingress_ports: RangeInclusive<u32>,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        AllocatorConfig {
            // 10.0.0.0/8 is a valid network: provably infallible.
            pool: Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 8).unwrap_or_default(),
            slice_prefix: 24,
            ingress_ports: 30000..=32767,
        }
    }
}

impl AllocatorConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), AllocError> {
        if self.slice_prefix < self.pool.prefix_len() || self.slice_prefix > 30 {
            return Err(AllocError::InvalidConfig(format!(
                "slice_prefix /{} must be between the pool's /{} and /30",
                self.slice_prefix,
                self.pool.prefix_len()
            )));
        }
        if self.ingress_ports.is_empty() || *self.ingress_ports.start() == 0 || *self.ingress_ports.end() > 65535 {
            return Err(AllocError::InvalidConfig(format!(
                "ingress port range {}-{} must be a non-empty part of 1-65535",
                self.ingress_ports.start(),
                self.ingress_ports.end()
            )));
        }
        Ok(())
    }
}

/// Why something could not be allocated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The published port is held by another service.
    #[error("service {service:?}: published port {port}/{protocol} is already in use by service {owner:?}")]
    PortInUse {
        /// The service asking.
        service: String,
        /// The port.
        port: u32,
        /// "tcp" or "udp".
        protocol: &'static str,
        /// The service holding it.
        owner: String,
    },
    /// Every port of the ingress range is taken.
    #[error("service {service:?}: no free {protocol} port left in the ingress range {range}")]
    PortRangeExhausted {
        /// The service asking.
        service: String,
        /// "tcp" or "udp".
        protocol: &'static str,
        /// The range, as "30000-32767".
        range: String,
    },
    /// Every slice of the pool is taken.
    #[error("network {network:?}: no free /{prefix} left in the address pool {pool}")]
    PoolExhausted {
        /// The network asking.
        network: String,
        /// The pool.
        pool: Ipv4Net,
        /// Slice size.
        prefix: u8,
    },
    /// Every address of the network's subnet is taken.
    #[error("service {service:?}: no free virtual IP left in subnet {subnet} of network {network:?}")]
    SubnetExhausted {
        /// The service asking.
        service: String,
        /// The network.
        network: String,
        /// Its subnet.
        subnet: Ipv4Net,
    },
    /// The service attaches to a network that does not exist.
    #[error("service {service:?}: network {network:?} does not exist")]
    UnknownNetwork {
        /// The service.
        service: String,
        /// The target it names.
        network: String,
    },
    /// A requested subnet is not an IPv4 CIDR or overlaps another network's.
    #[error("network {network:?}: subnet {subnet:?} {reason}")]
    BadSubnet {
        /// The network.
        network: String,
        /// What it asked for.
        subnet: String,
        /// Why it cannot have it.
        reason: String,
    },
    /// A network's gateway, address range or requested VNI cannot be
    /// given (the network gets no allocation until it is fixed).
    #[error("network {network:?}: {field} {value:?} {reason}")]
    BadNetwork {
        /// The network.
        network: String,
        /// The spec field (`gateway`, `ip_range`, `options.<name>`).
        field: String,
        /// What it asked for.
        value: String,
        /// Why it cannot have it.
        reason: String,
    },
    /// Every VXLAN identifier is taken.
    #[error("network {network:?}: no free VXLAN identifier left ({first}-{last})")]
    VniExhausted {
        /// The network asking.
        network: String,
        /// The first VNI the allocator gives.
        first: u32,
        /// The last.
        last: u32,
    },
    /// Every address of an overlay network's range is held: its NEW tasks
    /// wait until one is released.
    #[error("network {network:?}: no free address in {range}")]
    AddressesExhausted {
        /// The network.
        network: String,
        /// The range addresses come from (`ip_range`, else the subnet).
        range: Ipv4Net,
    },
    /// The allocator settings are wrong.
    #[error("allocator settings: {0}")]
    InvalidConfig(String),
}

/// What [`plan`] decided: the writes to make and the errors found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Subnet of every network (including [`DEFAULT_NETWORK`]), by name.
    pub subnets: BTreeMap<String, Ipv4Net>,
    /// Networks whose stored allocation must change.
    pub network_updates: Vec<NetworkUpdate>,
    /// Services whose stored endpoint must change.
    pub service_updates: Vec<(ServiceId, Endpoint)>,
    /// What NEW tasks on overlay networks get (their attachments with
    /// addresses, or why they wait); tasks on no overlay network are not
    /// listed. Written by the controller with each task's move to PENDING.
    pub tasks: BTreeMap<TaskId, TaskAllocation>,
    /// What could not be allocated.
    pub errors: Vec<AllocError>,
}

/// A network's allocation as [`plan`] decided it (written to the
/// network's `subnet`, `gateway` and `vni`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkUpdate {
    /// The network.
    pub id: NetworkId,
    /// Its subnet (CIDR).
    pub subnet: String,
    /// Its gateway (overlay networks; others keep what they hold).
    pub gateway: Option<String>,
    /// Its VXLAN identifier (overlay networks; others keep what they hold).
    pub vni: Option<u32>,
}

impl Plan {
    /// True when no network or service needs writing (task admissions
    /// are not counted: the controller writes them).
    pub fn is_empty(&self) -> bool {
        self.network_updates.is_empty() && self.service_updates.is_empty()
    }

    /// The transaction carrying the network and service writes, against
    /// `state`'s versions.
    pub fn transaction(&self, state: &State) -> Option<Transaction> {
        let mut tx = Transaction::new();
        for u in &self.network_updates {
            if let Some(n) = state.network(&u.id) {
                let mut n = n.as_ref().clone();
                n.subnet = Some(u.subnet.clone());
                n.gateway = u.gateway.clone();
                n.vni = u.vni;
                tx = tx.update(n);
            }
        }
        for (id, ep) in &self.service_updates {
            if let Some(s) = state.service(id) {
                let mut s = s.as_ref().clone();
                s.endpoint = ep.clone();
                tx = tx.update(s);
            }
        }
        (!tx.is_empty()).then_some(tx)
    }
}

fn by_age<T>(items: impl Iterator<Item = T>, key: impl Fn(&T) -> (Revision, String)) -> Vec<T> {
    let mut v: Vec<T> = items.collect();
    v.sort_by_key(|x| key(x));
    v
}

/// The names of the networks `spec` attaches to (resolving ids), or the
/// error for a target that does not exist.
pub fn service_networks(state: &State, spec: &ServiceSpec) -> Result<Vec<String>, AllocError> {
    if spec.networks.is_empty() {
        return Ok(vec![DEFAULT_NETWORK.to_string()]);
    }
    spec.networks
        .iter()
        .map(|n| {
            if n.target == DEFAULT_NETWORK {
                return Ok(DEFAULT_NETWORK.to_string());
            }
            state
                .network_by_name(&n.target)
                .or_else(|| state.network(&NetworkId::new(n.target.clone())))
                .map(|net| net.spec.name.clone())
                .ok_or_else(|| AllocError::UnknownNetwork { service: spec.name.clone(), network: n.target.clone() })
        })
        .collect()
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The addresses of one network in one plan: where they come from, what
/// is reserved, what is held. `cursor` only moves forward while addresses
/// are taken, so a pass hands out n addresses in O(n + held), not O(n²).
struct Pool {
    name: String,
    subnet: Ipv4Net,
    /// Where VIPs and task addresses come from (`ip_range`, else `subnet`).
    range: Ipv4Net,
    gateway: Ipv4Addr,
    used: HashSet<u32>,
    /// Every candidate of `range` below it is reserved or used.
    cursor: u64,
    /// What a task's attachment carries (overlay networks only).
    overlay: Option<OverlayAttachment>,
    /// Its allocation is written by this very plan: its tasks wait.
    pending: bool,
}

impl Pool {
    fn new(name: String, subnet: Ipv4Net, range: Ipv4Net, gateway: Ipv4Addr) -> Pool {
        let cursor = u64::from(u32::from(range.network()));
        Pool { name, subnet, range, gateway, used: HashSet::new(), cursor, overlay: None, pending: false }
    }

    /// Not the subnet's network or broadcast address, nor the gateway, and
    /// in the range.
    fn usable(&self, a: Ipv4Addr) -> bool {
        self.range.contains(&a)
            && self.subnet.contains(&a)
            && a != self.subnet.network()
            && a != self.subnet.broadcast()
            && a != self.gateway
    }

    /// Takes `a` if it is usable and free.
    fn take(&mut self, a: Ipv4Addr) -> bool {
        self.usable(a) && self.used.insert(u32::from(a))
    }

    /// Takes the lowest free address.
    fn next(&mut self) -> Option<Ipv4Addr> {
        let end = u64::from(u32::from(self.range.broadcast()));
        while self.cursor <= end {
            let a = Ipv4Addr::from(self.cursor as u32);
            self.cursor += 1;
            if self.take(a) {
                return Some(a);
            }
        }
        None
    }

    fn release(&mut self, a: Ipv4Addr) {
        if self.used.remove(&u32::from(a)) {
            self.cursor = self.cursor.min(u64::from(u32::from(a)));
        }
    }
}

/// A network's gateway and address range from its spec (validated again
/// here: a network written behind the validation's back gets an error).
fn addressing(n: &Network, subnet: Ipv4Net) -> Result<(Ipv4Addr, Ipv4Net), AllocError> {
    let bad = |field: &str, value: &str, reason: String| AllocError::BadNetwork {
        network: n.spec.name.clone(),
        field: field.into(),
        value: value.into(),
        reason,
    };
    let gateway = if n.spec.gateway.is_empty() {
        Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
    } else {
        match n.spec.gateway.parse::<Ipv4Addr>() {
            Ok(g) if subnet.contains(&g) && g != subnet.network() && g != subnet.broadcast() => g,
            Ok(_) => {
                return Err(bad("gateway", &n.spec.gateway, format!("is not a host address of subnet {subnet}")));
            }
            Err(e) => return Err(bad("gateway", &n.spec.gateway, format!("is not an IPv4 address ({e})"))),
        }
    };
    let range = if n.spec.ip_range.is_empty() {
        subnet
    } else {
        match n.spec.ip_range.parse::<Ipv4Net>() {
            Ok(r) if subnet.contains(&r.trunc()) => r.trunc(),
            Ok(_) => return Err(bad("ip_range", &n.spec.ip_range, format!("is not inside subnet {subnet}"))),
            Err(e) => return Err(bad("ip_range", &n.spec.ip_range, format!("is not an IPv4 CIDR ({e})"))),
        }
    };
    Ok((gateway, range))
}

/// VNIs of the overlay networks, oldest network first: requested ones and
/// valid stored ones are kept (an older network's wins), the others get
/// the lowest free from [`FIRST_VNI`].
fn allocate_vnis(networks: &[&Arc<Network>], errors: &mut Vec<AllocError>) -> BTreeMap<NetworkId, u32> {
    let mut owner: BTreeMap<u32, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut failed = Vec::new();
    for n in networks.iter().filter(|n| n.is_overlay()) {
        let want = match requested_vni(&n.spec) {
            Err(why) => {
                errors.push(AllocError::BadNetwork {
                    network: n.spec.name.clone(),
                    field: format!("options.{OPT_VXLANID_LIST}"),
                    value: n.spec.options.get(OPT_VXLANID_LIST).cloned().unwrap_or_default(),
                    reason: why,
                });
                failed.push(n.id.clone());
                continue;
            }
            Ok(Some(v)) => match owner.get(&v) {
                Some(o) => {
                    errors.push(AllocError::BadNetwork {
                        network: n.spec.name.clone(),
                        field: format!("options.{OPT_VXLANID_LIST}"),
                        value: v.to_string(),
                        reason: format!("is the VNI of network {o:?}"),
                    });
                    failed.push(n.id.clone());
                    continue;
                }
                None => Some(v),
            },
            Ok(None) => n.vni.filter(|v| (1..=MAX_VNI).contains(v) && !owner.contains_key(v)),
        };
        if let Some(v) = want {
            owner.insert(v, n.spec.name.clone());
            out.insert(n.id.clone(), v);
        }
    }
    let mut next = FIRST_VNI;
    for n in networks.iter().filter(|n| n.is_overlay()) {
        if out.contains_key(&n.id) || failed.contains(&n.id) {
            continue;
        }
        while next <= MAX_VNI && owner.contains_key(&next) {
            next += 1;
        }
        if next > MAX_VNI {
            errors.push(AllocError::VniExhausted { network: n.spec.name.clone(), first: FIRST_VNI, last: MAX_VNI });
            continue;
        }
        owner.insert(next, n.spec.name.clone());
        out.insert(n.id.clone(), next);
    }
    out
}

/// Decides subnets, gateways, VNIs, VIPs, task addresses and published
/// ports for everything in `state`. See the [module docs](self).
pub fn plan(state: &State, cfg: &AllocatorConfig) -> Plan {
    let mut out = Plan::default();
    if let Err(e) = cfg.validate() {
        out.errors.push(e);
        return out;
    }
    let networks = by_age(state.networks(), |n| (n.meta.created_revision, n.id.to_string()));

    // Subnets: requested and valid stored ones, oldest network first (an
    // older network keeps what it has), then new slices.
    let mut slices = cfg.pool.subnets(cfg.slice_prefix).into_iter().flatten();
    let default_slice = slices.next();
    let mut taken: Vec<Ipv4Net> = default_slice.into_iter().collect();
    if let Some(d) = default_slice {
        out.subnets.insert(DEFAULT_NETWORK.to_string(), d);
    }
    let mut chosen: BTreeMap<NetworkId, Ipv4Net> = BTreeMap::new();
    for n in &networks {
        if n.spec.subnet.is_empty() {
            let kept = n.subnet.as_deref().and_then(|s| s.parse::<Ipv4Net>().ok()).filter(|net| {
                net.prefix_len() == cfg.slice_prefix
                    && cfg.pool.contains(net)
                    && *net == net.trunc()
                    && !taken.iter().any(|t| overlaps(t, net))
            });
            if let Some(net) = kept {
                taken.push(net);
                chosen.insert(n.id.clone(), net);
            }
            continue;
        }
        match n.spec.subnet.parse::<Ipv4Net>() {
            Ok(net) if taken.iter().any(|t| overlaps(t, &net)) => out.errors.push(AllocError::BadSubnet {
                network: n.spec.name.clone(),
                subnet: n.spec.subnet.clone(),
                reason: "overlaps another network's subnet".into(),
            }),
            Ok(net) => {
                taken.push(net.trunc());
                chosen.insert(n.id.clone(), net.trunc());
            }
            Err(e) => out.errors.push(AllocError::BadSubnet {
                network: n.spec.name.clone(),
                subnet: n.spec.subnet.clone(),
                reason: format!("is not an IPv4 CIDR ({e})"),
            }),
        }
    }
    for n in &networks {
        if chosen.contains_key(&n.id) || !n.spec.subnet.is_empty() {
            continue;
        }
        match slices.find(|s| !taken.iter().any(|t| overlaps(t, s))) {
            Some(net) => {
                taken.push(net);
                chosen.insert(n.id.clone(), net);
            }
            None => out.errors.push(AllocError::PoolExhausted {
                network: n.spec.name.clone(),
                pool: cfg.pool,
                prefix: cfg.slice_prefix,
            }),
        }
    }
    let vnis = allocate_vnis(&networks, &mut out.errors);

    // Each allocated network's pool of addresses.
    let mut pools: BTreeMap<String, Pool> = BTreeMap::new();
    if let Some(d) = default_slice {
        let gateway = Ipv4Addr::from(u32::from(d.network()).wrapping_add(1));
        pools.insert(DEFAULT_NETWORK.to_string(), Pool::new(DEFAULT_NETWORK.into(), d, d, gateway));
    }
    let mut names_by_id: BTreeMap<&NetworkId, &str> = BTreeMap::new();
    let mut ingress: Option<String> = None;
    for n in &networks {
        let Some(subnet) = chosen.get(&n.id).copied() else { continue };
        let (gateway, range) = match addressing(n, subnet) {
            Ok(a) => a,
            Err(e) => {
                out.errors.push(e);
                continue;
            }
        };
        let mut pool = Pool::new(n.spec.name.clone(), subnet, range, gateway);
        let update = if n.is_overlay() {
            let Some(vni) = vnis.get(&n.id).copied() else { continue };
            pool.overlay = Some(OverlayAttachment {
                network_id: n.id.clone(),
                vni,
                subnet: subnet.to_string(),
                gateway: if n.spec.internal { String::new() } else { gateway.to_string() },
                internal: n.spec.internal,
                encrypted: n.spec.is_encrypted(),
            });
            if n.spec.ingress && ingress.is_none() {
                ingress = Some(n.spec.name.clone());
            }
            NetworkUpdate {
                id: n.id.clone(),
                subnet: subnet.to_string(),
                gateway: Some(gateway.to_string()),
                vni: Some(vni),
            }
        } else {
            NetworkUpdate { id: n.id.clone(), subnet: subnet.to_string(), gateway: n.gateway.clone(), vni: n.vni }
        };
        if n.subnet.as_ref() != Some(&update.subnet) || n.gateway != update.gateway || n.vni != update.vni {
            pool.pending = true;
            out.network_updates.push(update);
        }
        out.subnets.insert(n.spec.name.clone(), subnet);
        names_by_id.insert(&n.id, n.spec.name.as_str());
        pools.insert(n.spec.name.clone(), pool);
    }
    let any_overlay = pools.values().any(|p| p.overlay.is_some());

    let services = by_age(state.services(), |s| (s.meta.created_revision, s.id.to_string()));
    let attached: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            service_networks(state, &s.spec).unwrap_or_else(|e| {
                out.errors.push(e);
                Vec::new()
            })
        })
        .collect();

    // NEW tasks that need an address on an overlay network.
    let needs_overlay = |t: &Task| {
        t.networks.iter().any(|a| state.network_by_name(&a.network).is_some_and(|n| n.is_overlay()))
            || (ingress.is_some() && t.endpoint.ports.iter().any(|p| p.publish_mode == PublishMode::Ingress))
    };
    let candidates: Vec<&Arc<Task>> = if any_overlay {
        state
            .tasks()
            .filter(|t| t.status.state == TaskState::New && t.desired_state <= TaskState::Running && needs_overlay(t))
            .collect()
    } else {
        Vec::new()
    };
    // A VIP-mode service without a valid stored VIP on an overlay network.
    let vip_needed = services.iter().zip(&attached).any(|(s, nets)| {
        s.spec.endpoint_spec.mode == EndpointMode::Vip
            && nets.iter().any(|n| {
                pools.get(n).is_some_and(|p| {
                    p.overlay.is_some()
                        && !s
                            .endpoint
                            .virtual_ips
                            .iter()
                            .any(|v| &v.network == n && matches!(v.addr, IpAddr::V4(a) if p.usable(a)))
                })
            })
    });
    // Addresses held by tasks admitted earlier (PENDING up to RUNNING, as
    // long as they are in the store): their containers may be running.
    // Only looked at when some address is to be given (a pass with nothing
    // to give stays as cheap as without overlay networks).
    if !candidates.is_empty() || vip_needed {
        for t in state.tasks() {
            if t.status.state == TaskState::New || t.status.state.is_terminal() {
                continue;
            }
            for a in &t.networks {
                let Some(o) = &a.overlay else { continue };
                let Some(pool) = names_by_id.get(&o.network_id).and_then(|name| pools.get_mut(*name)) else { continue };
                for ip in a.addresses.iter().filter_map(|s| s.parse::<Ipv4Addr>().ok()) {
                    if pool.subnet.contains(&ip) && !pool.used.insert(u32::from(ip)) {
                        tracing::warn!(network = %pool.name, address = %ip, task = %t.id, "address held by two tasks");
                    }
                }
            }
        }
    }

    // VIPs: keep valid stored ones, then give the lowest free address.
    let mut vips: Vec<BTreeMap<String, IpAddr>> = vec![BTreeMap::new(); services.len()];
    for (i, s) in services.iter().enumerate() {
        if s.spec.endpoint_spec.mode != EndpointMode::Vip {
            continue;
        }
        for net_name in &attached[i] {
            let Some(pool) = pools.get_mut(net_name) else { continue };
            let stored = s.endpoint.virtual_ips.iter().find(|v| &v.network == net_name);
            if let Some(VirtualIp { addr: IpAddr::V4(a), .. }) = stored
                && pool.take(*a)
            {
                vips[i].insert(net_name.clone(), IpAddr::V4(*a));
            }
        }
    }
    for (i, s) in services.iter().enumerate() {
        if s.spec.endpoint_spec.mode != EndpointMode::Vip {
            continue;
        }
        for net_name in &attached[i] {
            let Some(pool) = pools.get_mut(net_name) else { continue };
            if vips[i].contains_key(net_name) {
                continue;
            }
            match pool.next() {
                Some(a) => {
                    vips[i].insert(net_name.clone(), IpAddr::V4(a));
                }
                None => out.errors.push(AllocError::SubnetExhausted {
                    service: s.spec.name.clone(),
                    network: net_name.clone(),
                    subnet: pool.subnet,
                }),
            }
        }
    }

    // Ports: explicit ingress ports first (oldest service wins), then kept
    // automatic ones, then new automatic ones.
    let mut owners: BTreeMap<(Protocol, u32), String> = BTreeMap::new();
    let mut resolved: Vec<Vec<Option<PortConfig>>> =
        services.iter().map(|s| vec![None; s.spec.endpoint_spec.ports.len()]).collect();
    for (i, s) in services.iter().enumerate() {
        for (j, p) in s.spec.endpoint_spec.ports.iter().enumerate() {
            match (p.publish_mode, p.published_port) {
                (PublishMode::Host, _) => resolved[i][j] = Some(p.clone()),
                (PublishMode::Ingress, Some(port)) => match owners.get(&(p.protocol, port)) {
                    Some(owner) => out.errors.push(AllocError::PortInUse {
                        service: s.spec.name.clone(),
                        port,
                        protocol: p.protocol.as_str(),
                        owner: owner.clone(),
                    }),
                    None => {
                        owners.insert((p.protocol, port), s.spec.name.clone());
                        resolved[i][j] = Some(p.clone());
                    }
                },
                (PublishMode::Ingress, None) => {}
            }
        }
    }
    for (i, s) in services.iter().enumerate() {
        for (j, p) in s.spec.endpoint_spec.ports.iter().enumerate() {
            if resolved[i][j].is_some() || p.publish_mode != PublishMode::Ingress || p.published_port.is_some() {
                continue;
            }
            let stored = s.endpoint.ports.iter().find(|q| {
                q.publish_mode == PublishMode::Ingress
                    && q.protocol == p.protocol
                    && q.target_port == p.target_port
                    && q.name == p.name
            });
            if let Some(port) = stored.and_then(|q| q.published_port)
                && cfg.ingress_ports.contains(&port)
                && !owners.contains_key(&(p.protocol, port))
            {
                owners.insert((p.protocol, port), s.spec.name.clone());
                resolved[i][j] = Some(PortConfig { published_port: Some(port), ..p.clone() });
            }
        }
    }
    for (i, s) in services.iter().enumerate() {
        for (j, p) in s.spec.endpoint_spec.ports.iter().enumerate() {
            if resolved[i][j].is_some() || p.publish_mode != PublishMode::Ingress || p.published_port.is_some() {
                continue;
            }
            match cfg.ingress_ports.clone().find(|port| !owners.contains_key(&(p.protocol, *port))) {
                Some(port) => {
                    owners.insert((p.protocol, port), s.spec.name.clone());
                    resolved[i][j] = Some(PortConfig { published_port: Some(port), ..p.clone() });
                }
                None => out.errors.push(AllocError::PortRangeExhausted {
                    service: s.spec.name.clone(),
                    protocol: p.protocol.as_str(),
                    range: format!("{}-{}", cfg.ingress_ports.start(), cfg.ingress_ports.end()),
                }),
            }
        }
    }

    // Task addresses, oldest task first, for tasks of services that are
    // allocated (the others wait with their service's reason).
    if !candidates.is_empty() {
        let blocked = blocked_services(state, &out.errors);
        let mut candidates: Vec<&Arc<Task>> =
            candidates.into_iter().filter(|t| !blocked.contains_key(&t.service_id)).collect();
        candidates
            .sort_by(|a, b| (a.meta.created_revision, a.id.as_str()).cmp(&(b.meta.created_revision, b.id.as_str())));
        let mut exhausted: Vec<String> = Vec::new();
        for t in candidates {
            if let Some(a) = allocate_task(state, t, &mut pools, ingress.as_deref(), &mut exhausted, &mut out.errors) {
                out.tasks.insert(t.id.clone(), a);
            }
        }
    }

    for (i, s) in services.iter().enumerate() {
        let endpoint = Endpoint {
            ports: resolved[i].iter().flatten().cloned().collect(),
            virtual_ips: attached[i]
                .iter()
                .filter_map(|n| vips[i].get(n).map(|a| VirtualIp { network: n.clone(), addr: *a }))
                .collect(),
        };
        if endpoint != s.endpoint {
            out.service_updates.push((s.id.clone(), endpoint));
        }
    }
    out
}

/// The attachments of NEW task `t` with an address on each overlay
/// network (and on the ingress network if its service publishes ingress
/// ports), or why it waits; `None` for a task on no overlay network (it is
/// admitted as it is). Attachments to node-local networks are kept as
/// they are: the runtime picks those addresses.
fn allocate_task(
    state: &State,
    t: &Task,
    pools: &mut BTreeMap<String, Pool>,
    ingress: Option<&str>,
    exhausted: &mut Vec<String>,
    errors: &mut Vec<AllocError>,
) -> Option<TaskAllocation> {
    let resolve = |target: &str| state.network_by_name(target).map(|n| n.as_ref());
    let mut wanted: Vec<NetworkAttachment> = Vec::with_capacity(t.networks.len() + 1);
    if let Some(ing) = ingress {
        let publishes = t.endpoint.ports.iter().any(|p| p.publish_mode == PublishMode::Ingress);
        let listed = t.networks.iter().any(|a| resolve(&a.network).is_some_and(|n| n.spec.name == ing));
        if publishes && !listed {
            wanted.push(NetworkAttachment { network: ing.to_string(), ..Default::default() });
        }
    }
    wanted.extend(t.networks.iter().cloned());
    let mut out = Vec::with_capacity(wanted.len());
    let mut given: Vec<(String, Ipv4Addr)> = Vec::new();
    let mut outcome = None;
    for a in wanted {
        let Some(n) = resolve(&a.network).filter(|n| n.is_overlay()) else {
            out.push(a);
            continue;
        };
        let name = n.spec.name.clone();
        let Some(pool) = pools.get_mut(&name) else {
            outcome = Some(TaskAllocation::Blocked(format!("network {name:?} has no subnet and VNI allocated")));
            break;
        };
        if pool.pending {
            outcome = Some(TaskAllocation::Wait);
            break;
        }
        let Some(overlay) = pool.overlay.clone() else {
            outcome = Some(TaskAllocation::Blocked(format!("network {name:?} has no VNI allocated")));
            break;
        };
        match pool.next() {
            Some(ip) => {
                given.push((name.clone(), ip));
                out.push(NetworkAttachment { network: name, addresses: vec![ip.to_string()], overlay: Some(overlay) });
            }
            None => {
                let e = AllocError::AddressesExhausted { network: name.clone(), range: pool.range };
                outcome = Some(TaskAllocation::Blocked(e.to_string()));
                if !exhausted.contains(&name) {
                    exhausted.push(name);
                    errors.push(e);
                }
                break;
            }
        }
    }
    match outcome {
        Some(o) => {
            for (name, ip) in given {
                if let Some(p) = pools.get_mut(&name) {
                    p.release(ip);
                }
            }
            Some(o)
        }
        None if out.iter().any(|a| a.overlay.is_some()) => Some(TaskAllocation::Ready(out)),
        None => None,
    }
}

/// Checks that `spec`'s explicitly published ingress ports are free in
/// `state` (ignoring the service named like `spec`, for updates).
pub fn check_ports(state: &State, spec: &ServiceSpec) -> Result<(), AllocError> {
    for p in &spec.endpoint_spec.ports {
        let (PublishMode::Ingress, Some(port)) = (p.publish_mode, p.published_port) else { continue };
        for other in state.services().filter(|s| s.spec.name != spec.name) {
            let held = other.spec.endpoint_spec.ports.iter().chain(other.endpoint.ports.iter()).any(|q| {
                q.publish_mode == PublishMode::Ingress && q.protocol == p.protocol && q.published_port == Some(port)
            });
            if held {
                return Err(AllocError::PortInUse {
                    service: spec.name.clone(),
                    port,
                    protocol: p.protocol.as_str(),
                    owner: other.spec.name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Why [`create_service_checked`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// A port is taken.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// The cluster refused.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// [`Cluster::create_service`] after [`check_ports`]: a service whose
/// published port is taken is rejected and nothing is written. (Two
/// concurrent creates may still both pass the check; the allocator then
/// gives the port to the older service and reports the other.)
pub async fn create_service_checked(cluster: &Cluster, spec: ServiceSpec) -> Result<ServiceId, CreateError> {
    let state = cluster.store().snapshot().await.map_err(ClusterError::from)?;
    check_ports(&state, &spec)?;
    Ok(cluster.create_service(spec).await?)
}

/// The allocation controller. See the [module docs](self).
pub struct Allocator {
    store: Arc<dyn Store>,
    config: AllocatorConfig,
    errors: Arc<watch::Sender<Vec<AllocError>>>,
}

impl Allocator {
    /// An allocator writing to `store`.
    pub fn new(store: Arc<dyn Store>, config: AllocatorConfig) -> Result<Self, AllocError> {
        config.validate()?;
        Ok(Allocator { store, config, errors: Arc::new(watch::channel(Vec::new()).0) })
    }

    /// The errors of the latest plan (empty when everything is allocated).
    pub fn errors(&self) -> watch::Receiver<Vec<AllocError>> {
        self.errors.subscribe()
    }

    /// The allocator as a controller for the manager
    /// (`Manager::builder(..).allocator(move || allocator.controller())`):
    /// it allocates, then admits NEW tasks to scheduling, except those of
    /// services it could not allocate, which stay NEW with the reason.
    /// Its errors are reported through [`Allocator::errors`].
    pub fn controller(&self) -> TaskAllocator<NetworkAllocation> {
        TaskAllocator(NetworkAllocation { config: self.config.clone(), errors: self.errors.clone() })
    }

    /// Plans once and commits the result, retrying on version conflicts.
    /// Returns the plan that was committed (or found empty).
    pub async fn reconcile(&self) -> Result<Plan, StoreError> {
        let mut attempts = 0;
        loop {
            let state = self.store.snapshot().await?;
            let p = plan(&state, &self.config);
            report(&self.errors, &p.errors);
            let Some(tx) = p.transaction(&state) else { return Ok(p) };
            match self.store.commit(tx).await {
                Ok(change) => {
                    tracing::debug!(
                        revision = change.revision,
                        services = p.service_updates.len(),
                        networks = p.network_updates.len(),
                        "allocated endpoints"
                    );
                    return Ok(p);
                }
                Err(e) if e.is_conflict() && attempts < 100 => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs the allocation controller on its own (without a manager) until
    /// the task is aborted: allocate, then again after every change to a
    /// service or a network, and admit NEW tasks.
    pub async fn run(&self) {
        controller::run(self.store.clone(), self.controller(), RuntimeConfig::default()).await
    }
}

fn report(errors: &watch::Sender<Vec<AllocError>>, new: &[AllocError]) {
    errors.send_if_modified(|old| {
        if old.as_slice() == new {
            return false;
        }
        for e in new.iter().filter(|e| !old.contains(e)) {
            tracing::warn!(error = %e, "allocation failed");
        }
        *old = new.to_vec();
        true
    });
}

/// Services whose tasks must wait for an allocation: the service an error
/// names, or every service attached to the network it names.
pub fn blocked_services(state: &State, errors: &[AllocError]) -> BTreeMap<ServiceId, String> {
    let mut out = BTreeMap::new();
    for e in errors {
        match e {
            AllocError::PortInUse { service, .. }
            | AllocError::PortRangeExhausted { service, .. }
            | AllocError::SubnetExhausted { service, .. }
            | AllocError::UnknownNetwork { service, .. } => {
                if let Some(svc) = state.service_by_name(service) {
                    out.entry(svc.id.clone()).or_insert_with(|| e.to_string());
                }
            }
            AllocError::PoolExhausted { network, .. }
            | AllocError::BadSubnet { network, .. }
            | AllocError::BadNetwork { network, .. }
            | AllocError::VniExhausted { network, .. } => {
                let id = state.networks().find(|n| &n.spec.name == network).map(|n| n.id.to_string());
                for svc in state.services() {
                    let attached =
                        svc.spec.networks.iter().any(|a| &a.target == network || Some(&a.target) == id.as_ref())
                            || (svc.spec.networks.is_empty() && network == DEFAULT_NETWORK);
                    if attached {
                        out.entry(svc.id.clone()).or_insert_with(|| e.to_string());
                    }
                }
            }
            // Tasks wait one by one (TaskAllocation::Blocked), not the
            // whole service: some of its tasks may hold addresses already.
            AllocError::AddressesExhausted { .. } | AllocError::InvalidConfig(_) => {}
        }
    }
    out
}

/// swarm-net's allocation pass (subnets, VNIs, VIPs, task addresses,
/// published ports), run by
/// the core's allocator controller; made by [`Allocator::controller`].
pub struct NetworkAllocation {
    config: AllocatorConfig,
    errors: Arc<watch::Sender<Vec<AllocError>>>,
}

impl NetworkAllocation {
    /// The pass on its own, for a [`TaskAllocator`] of the embedder's (or
    /// a test); its errors go nowhere but the `tracing` warnings.
    pub fn new(config: AllocatorConfig) -> Result<Self, AllocError> {
        config.validate()?;
        Ok(NetworkAllocation { config, errors: Arc::new(watch::channel(Vec::new()).0) })
    }
}

impl Allocate for NetworkAllocation {
    fn allocate(&mut self, state: &State) -> Allocation {
        let p = plan(state, &self.config);
        report(&self.errors, &p.errors);
        Allocation {
            ops: p.transaction(state).map(|tx| tx.ops).unwrap_or_default(),
            blocked: blocked_services(state, &p.errors),
            tasks: p.tasks,
        }
    }
}
