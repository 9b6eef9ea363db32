//! The VIP data path: a per-node userspace proxy that makes every virtual
//! IP of every VIP-mode service reachable on the service's target ports and
//! forwards TCP connections (UDP flows) to the service's endpoints.
//!
//! This is the per-node userspace equivalent of Swarm's IPVS VIP: where
//! Swarm programs an IPVS virtual service for each VIP in every container's
//! namespace, a [`VipProxy`] binds `<vip>:<target port>` on the node and
//! reuses the routing mesh's proxy (round-robin or least-connections over
//! healthy endpoints, connect retry, drain on stop for the stop grace
//! period, splice or userspace copy; see [`crate::mesh`]). It follows a
//! [`Discovery`]: services, VIPs, ports and endpoints are applied on every
//! change; `dnsrr` services get nothing; a removed service's listeners close
//! (connection refused) and its open connections drain.
//!
//! A VIP must be a local address to be bound. A [`VipBinder`] makes it so:
//! [`IpAddrBinder`] adds `<vip>/32` to an interface (`ip addr add`, needs
//! root) and removes it when no longer needed; [`AlreadyLocal`] does nothing,
//! for VIPs that are local already, such as a pool inside 127.0.0.0/8, or
//! VIPs mapped there by [`VipConfig::translate_vip`] (always local on Linux,
//! no root needed).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::Arc;
//! use swarm_core::discovery::MemDiscovery;
//! use swarm_core::model::Protocol;
//! use swarm_net::vip::{AlreadyLocal, VipConfig, VipProxy};
//! // In a node: `discovery.follow(store)` keeps it in step with the store,
//! // and the allocator's pool is e.g. 127.64.0.0/16 (or use IpAddrBinder).
//! let discovery = MemDiscovery::new();
//! let config = VipConfig { default_ports: vec![(Protocol::Tcp, 8080)], ..Default::default() };
//! let proxy = VipProxy::start(Arc::new(discovery), Arc::new(AlreadyLocal), config);
//! assert!(proxy.listening().is_empty(), "no service yet");
//! proxy.stop().await;
//! # }
//! ```

use crate::mesh::{
    AddrMap, BackendStats, MeshConfig, Shared, bind_tcp, bind_udp, lock, read, serve_tcp, serve_udp, update_pools,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarm_core::discovery::{Discovery, ServiceEndpoints};
use swarm_core::model::{EndpointMode, Protocol};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A failure making a VIP local.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// The command could not be run at all.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it said.
        stderr: String,
    },
}

/// What [`VipBinder::bind`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// The address was added: [`VipBinder::unbind`] removes it later.
    Added,
    /// The address was local already: it is left as it is later.
    AlreadyLocal,
}

/// Makes a virtual IP a local address of the node (and undoes it).
#[async_trait::async_trait]
pub trait VipBinder: Send + Sync + 'static {
    /// Makes `addr` local.
    async fn bind(&self, addr: IpAddr) -> Result<Bound, VipError>;
    /// Removes `addr` (only called for addresses this binder [`Bound::Added`]).
    async fn unbind(&self, addr: IpAddr) -> Result<(), VipError>;
}

/// For VIPs that are local already (127.0.0.0/8 on Linux, or addresses
/// configured by hand): binds nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct AlreadyLocal;

#[async_trait::async_trait]
impl VipBinder for AlreadyLocal {
    async fn bind(&self, _addr: IpAddr) -> Result<Bound, VipError> {
        Ok(Bound::AlreadyLocal)
    }
    async fn unbind(&self, _addr: IpAddr) -> Result<(), VipError> {
        Ok(())
    }
}

/// Adds each VIP to an interface with `ip addr add <vip>/32 dev <iface>`
/// (`/128` for IPv6) and removes it with `ip addr del`. Needs root (or
/// CAP_NET_ADMIN) and iproute2. The interface must exist and be up: `lo`,
/// or a dummy one (`ip link add swarm-vip type dummy; ip link set swarm-vip
/// up`). An address that is already there is used and left in place.
#[derive(Clone, Debug)]
pub struct IpAddrBinder {
    /// The interface.
    pub iface: String,
}

impl IpAddrBinder {
    /// A binder for `iface`.
    pub fn new(iface: impl Into<String>) -> Self {
        IpAddrBinder { iface: iface.into() }
    }

    async fn ip(&self, verb: &str, addr: IpAddr) -> Result<Result<(), (String, String, String)>, VipError> {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        let cidr = format!("{addr}/{prefix}");
        let args = ["addr", verb, cidr.as_str(), "dev", self.iface.as_str()];
        let command = format!("ip {}", args.join(" "));
        let out = tokio::process::Command::new("ip")
            .args(args)
            .output()
            .await
            .map_err(|source| VipError::Spawn { command: command.clone(), source })?;
        if out.status.success() {
            tracing::info!(%command, "vip: address changed");
            return Ok(Ok(()));
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Ok(Err((command, out.status.to_string(), stderr)))
    }
}

#[async_trait::async_trait]
impl VipBinder for IpAddrBinder {
    async fn bind(&self, addr: IpAddr) -> Result<Bound, VipError> {
        match self.ip("add", addr).await? {
            Ok(()) => Ok(Bound::Added),
            // iproute2: "RTNETLINK answers: File exists".
            Err((_, _, stderr)) if stderr.contains("File exists") => Ok(Bound::AlreadyLocal),
            Err((command, status, stderr)) => Err(VipError::Command { command, status, stderr }),
        }
    }
    async fn unbind(&self, addr: IpAddr) -> Result<(), VipError> {
        self.ip("del", addr).await?.map_err(|(command, status, stderr)| VipError::Command { command, status, stderr })
    }
}

/// VIP proxy settings for one node.
#[derive(Clone, Debug, Default)]
pub struct VipConfig {
    /// Balancing, copy mode, connect timeout and attempts, UDP flow idle
    /// time and task address translation, as for the mesh
    /// (`listen_ip` is not used).
    pub proxy: MeshConfig,
    /// Maps a VIP to the local address served for it (for tests and
    /// single-host setups: e.g. the pool onto 127.0.0.0/8); `None`: the
    /// VIP itself.
    pub translate_vip: Option<AddrMap>,
    /// Ports served for a service that declares no port (by name), since a
    /// VIP carries every port in Swarm but a userspace proxy must know what
    /// to listen on.
    pub service_ports: BTreeMap<String, Vec<(Protocol, u16)>>,
    /// Ports served for every other service that declares no port.
    pub default_ports: Vec<(Protocol, u16)>,
}

impl VipConfig {
    fn local(&self, vip: IpAddr) -> IpAddr {
        self.translate_vip.as_ref().map_or(vip, |m| (m.0)(vip))
    }
}

/// One `<vip>:<port>` served now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipListening {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The service.
    pub service: String,
    /// The network the VIP is on.
    pub network: String,
    /// The VIP (as allocated).
    pub vip: IpAddr,
    /// The bound address (the VIP, or its translation) and target port.
    pub addr: SocketAddr,
}

struct Entry {
    info: VipListening,
    task: JoinHandle<()>,
}

type Key = (Protocol, SocketAddr);

struct Inner {
    shared: Arc<Shared>,
    config: VipConfig,
    binder: Arc<dyn VipBinder>,
    listeners: Mutex<BTreeMap<Key, Entry>>,
    /// Local addresses in use, and whether the binder added them.
    addrs: Mutex<BTreeMap<IpAddr, Bound>>,
    errors: Mutex<BTreeMap<String, String>>,
    synced: watch::Sender<u64>,
}

/// A node's VIP data path. See the [module docs](self).
pub struct VipProxy {
    inner: Arc<Inner>,
    supervisor: JoinHandle<()>,
    discovery: Arc<dyn Discovery>,
    quit: watch::Sender<bool>,
}

impl VipProxy {
    /// Starts following `discovery`, making VIPs local with `binder`.
    pub fn start(discovery: Arc<dyn Discovery>, binder: Arc<dyn VipBinder>, config: VipConfig) -> VipProxy {
        let inner = Arc::new(Inner {
            shared: Shared::new(config.proxy.clone()),
            config,
            binder,
            listeners: Mutex::default(),
            addrs: Mutex::default(),
            errors: Mutex::default(),
            synced: watch::channel(0).0,
        });
        let (i, d) = (inner.clone(), discovery.clone());
        let (quit, mut quit_rx) = watch::channel(false);
        // A sync is never cut in the middle (a binder call could add an
        // address nobody would remove): stop() asks and waits.
        let supervisor = tokio::spawn(async move {
            let mut rx = d.subscribe();
            loop {
                let revision = *rx.borrow_and_update();
                sync(&i, d.as_ref()).await;
                i.synced.send_replace(revision);
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    _ = quit_rx.wait_for(|q| *q) => return,
                }
            }
        });
        VipProxy { inner, supervisor, discovery, quit }
    }

    /// The `<vip>:<port>` served now.
    pub fn listening(&self) -> Vec<VipListening> {
        lock(&self.inner.listeners).values().map(|e| e.info.clone()).collect()
    }

    /// The bound address of `vip` (as allocated) for `port`, once served.
    pub fn addr(&self, protocol: Protocol, vip: IpAddr, port: u16) -> Option<SocketAddr> {
        let at = SocketAddr::new(self.inner.config.local(vip), port);
        lock(&self.inner.listeners).get(&(protocol, at)).map(|e| e.info.addr)
    }

    /// What could not be served (or made local), and why; retried on every
    /// change.
    pub fn errors(&self) -> Vec<String> {
        lock(&self.inner.errors).values().cloned().collect()
    }

    /// The backends of `service` (in the set, then draining).
    pub fn backends(&self, service: &str) -> Vec<BackendStats> {
        self.inner.shared.backends(service)
    }

    /// Waits until the proxy has applied the discovery state current at
    /// the call (or `timeout` passes); true if it did.
    pub async fn synced(&self, timeout: Duration) -> bool {
        let target = *self.discovery.subscribe().borrow();
        let mut rx = self.inner.synced.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n >= target)).await.is_ok_and(|r| r.is_ok())
    }

    /// Stops serving, closes every connection and removes the addresses
    /// the binder added. Dropping a `VipProxy` without calling this leaves
    /// it running.
    pub async fn stop(self) {
        self.quit.send_replace(true);
        if let Err(e) = self.supervisor.await {
            tracing::warn!(error = %e, "vip: supervisor ended abnormally");
        }
        let entries = std::mem::take(&mut *lock(&self.inner.listeners));
        for (_, e) in entries {
            e.task.abort();
            // Wait for the socket to be dropped: refused from now on.
            let _ = e.task.await;
        }
        self.inner.shared.close_all();
        let addrs = std::mem::take(&mut *lock(&self.inner.addrs));
        for (addr, bound) in addrs {
            if bound == Bound::Added
                && let Err(e) = self.inner.binder.unbind(addr).await
            {
                tracing::warn!(error = %e, %addr, "vip: cannot remove address");
            }
        }
    }
}

/// What should be served: (protocol, local addr:port) -> (service, network, vip).
fn wanted(config: &VipConfig, services: &[ServiceEndpoints]) -> BTreeMap<Key, (String, String, IpAddr)> {
    let mut out = BTreeMap::new();
    for se in services {
        let mut ports: BTreeSet<(Protocol, u16)> = BTreeSet::new();
        for p in &se.ports {
            match u16::try_from(p.target_port) {
                Ok(port) if port != 0 => {
                    ports.insert((p.protocol, port));
                }
                _ => tracing::warn!(service = %se.name, port = p.target_port, "vip: target port is not a port"),
            }
        }
        if se.ports.is_empty() {
            let extra = config.service_ports.get(&se.name).unwrap_or(&config.default_ports);
            ports.extend(extra.iter().copied());
        }
        for v in &se.virtual_ips {
            let local = config.local(v.addr);
            for (protocol, port) in &ports {
                out.insert((*protocol, SocketAddr::new(local, *port)), (se.name.clone(), v.network.clone(), v.addr));
            }
        }
    }
    out
}

async fn sync(inner: &Arc<Inner>, discovery: &dyn Discovery) {
    let services: Vec<ServiceEndpoints> = discovery
        .resolve_all()
        .into_iter()
        .filter(|s| s.mode == EndpointMode::Vip && !s.virtual_ips.is_empty())
        .collect();
    update_pools(&inner.shared, &services);
    let wanted = wanted(&inner.config, &services);

    // Close what is no longer wanted (or changed owner).
    let closed: Vec<JoinHandle<()>> = {
        let mut listeners = lock(&inner.listeners);
        let stale: Vec<Key> = listeners
            .iter()
            .filter(|(k, e)| {
                wanted.get(k).is_none_or(|(s, n, v)| (s, n, v) != (&e.info.service, &e.info.network, &e.info.vip))
            })
            .map(|(k, _)| *k)
            .collect();
        stale
            .into_iter()
            .filter_map(|k| listeners.remove(&k).map(|e| (k, e)))
            .map(|(k, e)| {
                tracing::info!(addr = %k.1, protocol = k.0.as_str(), service = %e.info.service, "vip: closed");
                e.task.abort();
                e.task
            })
            .collect()
    };
    // Wait for the sockets to be dropped (refused from now on, and the
    // address can be removed).
    for t in closed {
        let _ = t.await;
    }
    lock(&inner.errors).retain(|k, _| wanted.keys().any(|(p, a)| k == &key_name(*p, *a)));

    // Local addresses: release the unused, add the new.
    let needed: BTreeSet<IpAddr> = wanted.keys().map(|(_, a)| a.ip()).collect();
    let unused: Vec<(IpAddr, Bound)> = {
        let mut addrs = lock(&inner.addrs);
        let gone: Vec<IpAddr> = addrs.keys().filter(|a| !needed.contains(a)).copied().collect();
        gone.into_iter().filter_map(|a| addrs.remove(&a).map(|b| (a, b))).collect()
    };
    for (addr, bound) in unused {
        if bound == Bound::Added
            && let Err(e) = inner.binder.unbind(addr).await
        {
            tracing::warn!(error = %e, %addr, "vip: cannot remove address");
        }
    }
    let missing: Vec<IpAddr> = {
        let addrs = lock(&inner.addrs);
        needed.iter().filter(|a| !addrs.contains_key(a)).copied().collect()
    };
    let mut unbound: BTreeMap<IpAddr, String> = BTreeMap::new();
    for addr in missing {
        match inner.binder.bind(addr).await {
            Ok(b) => {
                lock(&inner.addrs).insert(addr, b);
            }
            Err(e) => {
                unbound.insert(addr, format!("cannot make {addr} local: {e}"));
            }
        }
    }

    // Open what is missing.
    let mut listeners = lock(&inner.listeners);
    let mut errors = lock(&inner.errors);
    for (key, (service, network, vip)) in wanted {
        if listeners.contains_key(&key) {
            continue;
        }
        let (protocol, at) = key;
        let name = key_name(protocol, at);
        if let Some(msg) = unbound.get(&at.ip()) {
            if errors.get(&name) != Some(msg) {
                tracing::warn!(error = %msg, %service, "vip: not served");
            }
            errors.insert(name, msg.clone());
            continue;
        }
        let Some(pool) = read(&inner.shared.pools).get(&service).cloned() else { continue };
        let port = u32::from(at.port());
        let shared = inner.shared.clone();
        let bound = match protocol {
            Protocol::Tcp => bind_tcp(at).map(|l| tokio::spawn(serve_tcp(shared, pool, l, port))),
            Protocol::Udp => bind_udp(at).map(|s| tokio::spawn(serve_udp(shared, pool, s, port))),
        };
        match bound {
            Ok(task) => {
                errors.remove(&name);
                tracing::info!(addr = %at, protocol = protocol.as_str(), %service, %vip, "vip: serving");
                listeners.insert(key, Entry { info: VipListening { protocol, service, network, vip, addr: at }, task });
            }
            Err(e) => {
                let msg = format!("cannot listen on {name} for service {service:?} (vip {vip}): {e}");
                if errors.get(&name) != Some(&msg) {
                    tracing::warn!(error = %msg, "vip: not served");
                }
                errors.insert(name, msg);
            }
        }
    }
}

fn key_name(protocol: Protocol, at: SocketAddr) -> String {
    format!("{at}/{}", protocol.as_str())
}
