//! One node's network plane in one call: discovery following the store,
//! the embedded DNS server, and the data path for the routing mesh and the
//! service VIPs (userspace proxies or kernel rules).
//!
//! The allocator is not here: it writes the store, so it runs once per
//! cluster (on the leader), not per node; see [`crate::alloc::Allocator`].
//!
//! ```no_run
//! # async fn f(store: std::sync::Arc<dyn swarm_core::store::Store>) -> Result<(), swarm_net::node::NodeNetworkError> {
//! use swarm_net::node::{DataPath, NodeNetwork, NodeNetworkConfig};
//! let config = NodeNetworkConfig {
//!     dns: Some(("127.0.0.1:5353".parse().unwrap(), Default::default())),
//!     data_path: DataPath::auto(),
//! };
//! let net = NodeNetwork::start(store, config).await?;
//! // ... the node serves DNS, its published ports and its VIPs ...
//! net.stop().await?;
//! # Ok(()) }
//! ```

use crate::dns::{DnsConfig, DnsError, DnsHandler, DnsServer};
use crate::mesh::{Mesh, MeshConfig};
use crate::vip::{AlreadyLocal, VipBinder, VipConfig, VipProxy};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use swarm_core::discovery::{Discovery, MemDiscovery};
use swarm_core::store::Store;
use tokio::task::JoinHandle;

/// How the node carries mesh and VIP traffic.
#[derive(Clone)]
pub enum DataPath {
    /// The userspace proxies: [`Mesh`] for published ports and
    /// [`VipProxy`] for VIPs (no privileges).
    Userspace {
        /// Mesh settings.
        mesh: MeshConfig,
        /// VIP proxy settings.
        vip: VipConfig,
        /// How VIPs become local addresses.
        binder: Arc<dyn VipBinder>,
    },
    /// iptables NAT rules ([`crate::kernel::KernelMesh`]; Linux, root).
    #[cfg(target_os = "linux")]
    Kernel(crate::kernel::KernelConfig),
    /// None: discovery (and DNS) only.
    Off,
}

impl std::fmt::Debug for DataPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataPath::Userspace { mesh, .. } => write!(f, "Userspace({:?})", mesh.copy),
            #[cfg(target_os = "linux")]
            DataPath::Kernel(c) => write!(f, "Kernel({})", c.chain_prefix),
            DataPath::Off => f.write_str("Off"),
        }
    }
}

impl DataPath {
    /// The kernel path where it can run (Linux, root, `iptables` and
    /// `iptables-restore` present), else the userspace proxies with VIPs
    /// taken as already local.
    pub fn auto() -> DataPath {
        #[cfg(target_os = "linux")]
        {
            let config = crate::kernel::KernelConfig::default();
            if crate::kernel::available(&config).is_ok() {
                return DataPath::Kernel(config);
            }
        }
        DataPath::userspace()
    }

    /// The userspace proxies with default settings, VIPs taken as already
    /// local ([`AlreadyLocal`]).
    pub fn userspace() -> DataPath {
        DataPath::Userspace { mesh: MeshConfig::default(), vip: VipConfig::default(), binder: Arc::new(AlreadyLocal) }
    }
}

/// Settings of a [`NodeNetwork`].
#[derive(Clone, Debug)]
pub struct NodeNetworkConfig {
    /// Serve DNS on this address, with these settings.
    pub dns: Option<(SocketAddr, DnsConfig)>,
    /// The data path.
    pub data_path: DataPath,
}

impl Default for NodeNetworkConfig {
    fn default() -> Self {
        NodeNetworkConfig { dns: None, data_path: DataPath::auto() }
    }
}

/// Why the node network could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeNetworkError {
    /// The DNS server could not start.
    #[error("node network: {0}")]
    Dns(#[from] DnsError),
    /// The kernel data path failed.
    #[cfg(target_os = "linux")]
    #[error("node network: {0}")]
    Kernel(#[from] crate::kernel::KernelError),
}

enum Path {
    Userspace(Mesh, VipProxy),
    #[cfg(target_os = "linux")]
    Kernel(crate::kernel::KernelMesh),
    Off,
}

/// A node's running network plane. See the [module docs](self).
pub struct NodeNetwork {
    discovery: MemDiscovery,
    followers: Vec<JoinHandle<()>>,
    dns: Option<DnsServer>,
    path: Path,
}

impl NodeNetwork {
    /// Starts following `store`: discovery, then DNS (if configured), then
    /// the data path. On failure whatever had started is stopped.
    pub async fn start(store: Arc<dyn Store>, config: NodeNetworkConfig) -> Result<NodeNetwork, NodeNetworkError> {
        let discovery = MemDiscovery::new();
        let mut followers = Vec::new();
        let (d, s) = (discovery.clone(), store.clone());
        followers.push(tokio::spawn(async move {
            if let Err(e) = d.follow(s.as_ref()).await {
                tracing::warn!(error = %e, "node network: discovery stopped following the store");
            }
        }));
        let dns = match config.dns {
            Some((addr, dns_config)) => {
                let handler = DnsHandler::new(dns_config);
                let server = match DnsServer::bind(addr, handler.clone()).await {
                    Ok(s) => s,
                    Err(e) => {
                        followers.iter().for_each(JoinHandle::abort);
                        return Err(e.into());
                    }
                };
                let s = store.clone();
                followers.push(tokio::spawn(async move {
                    if let Err(e) = handler.follow(s.as_ref()).await {
                        tracing::warn!(error = %e, "node network: DNS stopped following the store");
                    }
                }));
                Some(server)
            }
            None => None,
        };
        let shared: Arc<dyn Discovery> = Arc::new(discovery.clone());
        let path = match config.data_path {
            DataPath::Userspace { mesh, vip, binder } => {
                Path::Userspace(Mesh::start(shared.clone(), mesh), VipProxy::start(shared, binder, vip))
            }
            #[cfg(target_os = "linux")]
            DataPath::Kernel(k) => match crate::kernel::KernelMesh::start(shared, k).await {
                Ok(m) => Path::Kernel(m),
                Err(e) => {
                    followers.iter().for_each(JoinHandle::abort);
                    if let Some(d) = dns {
                        d.shutdown().await;
                    }
                    return Err(e.into());
                }
            },
            DataPath::Off => Path::Off,
        };
        tracing::info!(dns = ?dns.as_ref().map(DnsServer::local_addr), "node network: started");
        Ok(NodeNetwork { discovery, followers, dns, path })
    }

    /// The node's discovery (what the data path and any other consumer
    /// follow).
    pub fn discovery(&self) -> &MemDiscovery {
        &self.discovery
    }

    /// Where DNS is served, when it is.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns.as_ref().map(DnsServer::local_addr)
    }

    /// What the data path could not do now (ports, VIPs, rules).
    pub fn errors(&self) -> Vec<String> {
        match &self.path {
            Path::Userspace(mesh, vip) => mesh
                .errors()
                .into_iter()
                .map(|(p, port, e)| format!("mesh {port}/{}: {e}", p.as_str()))
                .chain(vip.errors())
                .collect(),
            #[cfg(target_os = "linux")]
            Path::Kernel(k) => k.errors(),
            Path::Off => Vec::new(),
        }
    }

    /// Waits until the data path has applied the discovery state current
    /// at the call (or `timeout` passes); true if it has.
    pub async fn synced(&self, timeout: Duration) -> bool {
        match &self.path {
            Path::Userspace(mesh, vip) => mesh.synced(timeout).await && vip.synced(timeout).await,
            #[cfg(target_os = "linux")]
            Path::Kernel(k) => k.synced(timeout).await,
            Path::Off => true,
        }
    }

    /// Stops everything: the data path (listeners closed, or rules
    /// removed), DNS, the followers.
    pub async fn stop(self) -> Result<(), NodeNetworkError> {
        for f in &self.followers {
            f.abort();
        }
        let result = match self.path {
            Path::Userspace(mesh, vip) => {
                mesh.stop();
                vip.stop().await;
                Ok(())
            }
            #[cfg(target_os = "linux")]
            Path::Kernel(k) => k.stop().await.map_err(NodeNetworkError::from),
            Path::Off => Ok(()),
        };
        if let Some(d) = self.dns {
            d.shutdown().await;
        }
        result
    }
}
