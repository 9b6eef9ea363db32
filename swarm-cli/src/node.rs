//! One node of a networked swarm, manager or worker: what `swarmd` runs.
//!
//! - [`SwarmNode::init`] makes the first manager of a new cluster: it
//!   creates the cluster CA and its own manager certificate, starts a
//!   one-voter raft group over mutual TLS, writes the CA and the join
//!   tokens into the replicated store, and serves the node API.
//! - [`SwarmNode::join`] joins with a token: it fetches and checks the CA,
//!   gets a certificate whose role the token decides, and then either
//!   becomes a raft voter (manager token: `raft.join` on the leader) or
//!   only runs an agent (worker token).
//! - [`SwarmNode::resume`] restarts a node from its state directory, with
//!   the identity, raft id and log it has.
//!
//! A manager serves one node API listener ([`swarm_security::rpc`]) with
//! the services `dispatcher` (agents; leader only, followers redirect),
//! `control` (the control API), `ca` (join, renewal, tokens) and `raft`
//! (membership), plus the control API on a local Unix socket (0600). Its
//! raft traffic goes over its own mutual-TLS listener admitting managers of
//! the cluster only. Every node, managers included, runs an agent that
//! reaches the leader's dispatcher over the network and follows it when
//! leadership moves.

use crate::membership::{JoinReply, JoinRequest, MembershipService};
use crate::peers;
use crate::state::{NodeRecord, StateDir, StateError};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use swarm_core::agent::{Agent, AgentConfig, AgentError};
use swarm_core::cluster::Cluster;
use swarm_core::manager::{Manager, ManagerConfig};
use swarm_core::model::{ClusterSpec, ManagerStatus, NodeDescription, NodeRole, Platform, Resources};
use swarm_core::runtime::Runtime;
use swarm_core::store::Store;
use swarm_core::time::SpecDuration;
use swarm_raft::tls::RaftTls;
use swarm_raft::{InboundLimits, RaftStore, RaftStoreConfig, TcpTransport, TcpTransportConfig};
use swarm_security::ca::{ClusterCa, DEFAULT_CA_VALIDITY, NodeCsr, SigningPolicy};
use swarm_security::ca_service::CaService;
use swarm_security::castore::{self, DenyList, ExternalCa, ExternalSignerConfig, SecurityOptions};
use swarm_security::control::ControlService;
use swarm_security::dispatch::{DispatcherService, RemoteDispatcher};
use swarm_security::external::ExternalSigner;
use swarm_security::join;
use swarm_security::role::Role;
use swarm_security::rotation;
use swarm_security::rpc::{Code, Reloadable, Router, RpcClient, RpcError, RpcServer, ServerLimits};
use swarm_security::tls::{self, PeerPolicy, TlsCredentials};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The state directory is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// `init` or `join` on a directory that already holds a node.
    #[error(
        "{dir} already holds node {node_id} of cluster {cluster_id}; start it with `swarmd run` or use another --state-dir"
    )]
    AlreadySetUp {
        /// The directory.
        dir: PathBuf,
        /// Its node.
        node_id: String,
        /// Its cluster.
        cluster_id: String,
    },
    /// `resume` on a directory without a node.
    #[error("{0} holds no node: run `swarmd init` or `swarmd join` first")]
    NotSetUp(PathBuf),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// Certificates, TLS or the CA failed.
    #[error("security: {0}")]
    Security(String),
    /// The raft store failed.
    #[error("raft: {0}")]
    Raft(String),
    /// Joining the cluster failed.
    #[error("joining through {addr}: {reason}")]
    Join {
        /// The manager asked.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The store refused a write.
    #[error("store: {0}")]
    Store(String),
}

fn sec(e: impl std::fmt::Display) -> NodeError {
    NodeError::Security(e.to_string())
}

/// How to run a node.
#[derive(Clone)]
pub struct NodeOptions {
    /// The state directory.
    pub state_dir: PathBuf,
    /// The node API listener (managers).
    pub listen_addr: SocketAddr,
    /// The raft listener (managers).
    pub raft_addr: SocketAddr,
    /// The IP other nodes reach this one at, when the listeners are bound
    /// to a wildcard address. Default: the listen address's IP.
    pub advertise_ip: Option<IpAddr>,
    /// The node's hostname.
    pub hostname: String,
    /// Its capacity (for the scheduler).
    pub resources: Resources,
    /// Where containers run.
    pub runtime: Arc<dyn Runtime>,
    /// Raft tick (election after 10 ticks).
    pub raft_tick: Duration,
    /// `init` only: the cluster's settings (heartbeat, ...).
    pub cluster_spec: ClusterSpec,
    /// `init` only: lifetime of node certificates (`None`: 90 days; below
    /// an hour only when `allow_short_certs`).
    pub cert_lifetime: Option<Duration>,
    /// Allow certificate lifetimes under an hour (tests); managers only.
    pub allow_short_certs: bool,
    /// `run` only, managers: start a new one-manager cluster from this
    /// manager's log after the others are lost for good (Swarm's
    /// `--force-new-cluster`).
    pub force_new_cluster: bool,
    /// `init` only: an external CA signs every certificate; its key is not
    /// in the store (docs/security.md, "External CA").
    pub external_ca: Option<ExternalSignerConfig>,
    /// Run the overlay data plane (`swarm_net::overlay`: bridges, VXLAN
    /// devices and forwarding entries of the node's overlay networks, and
    /// a DNS server per network on its gateway, `swarm_net::overlay_dns`,
    /// following the view the managers send), with the advertised IP as
    /// the VXLAN underlay address. Linux, root. Off: tasks on overlay
    /// networks get their addresses but no node joins the segments.
    pub overlay: bool,
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("state_dir", &self.state_dir)
            .field("listen_addr", &self.listen_addr)
            .field("raft_addr", &self.raft_addr)
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

impl NodeOptions {
    fn advertised(&self, addr: SocketAddr) -> SocketAddr {
        match self.advertise_ip {
            Some(ip) => SocketAddr::new(ip, addr.port()),
            None => addr,
        }
    }

    fn description(&self) -> NodeDescription {
        NodeDescription {
            hostname: self.hostname.clone(),
            platform: Platform::new(std::env::consts::OS, std::env::consts::ARCH),
            resources: self.resources.clone(),
            engine_labels: Default::default(),
        }
    }
}

/// Aborts a task when dropped.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn spawn(f: impl std::future::Future<Output = ()> + Send + 'static) -> Task {
    Task(tokio::spawn(f))
}

/// What a node runs as a manager, on top of what every node runs.
struct ManagerParts {
    raft: RaftStore,
    raft_tls: Arc<RaftTls>,
    server_tls: Arc<Reloadable<rustls::ServerConfig>>,
    api_addr: SocketAddr,
    manager: Manager,
    tasks: Vec<Task>,
}

impl ManagerParts {
    /// Stops the manager's tasks and control loops, then its raft store.
    async fn stop(self, socket: &std::path::Path) {
        drop(self.tasks);
        drop(self.manager);
        self.raft.shutdown().await;
        let _ = std::fs::remove_file(socket);
    }
}

/// What the node's tasks share.
struct Shared {
    opts: NodeOptions,
    dir: StateDir,
    record: std::sync::Mutex<NodeRecord>,
    client: Arc<Reloadable<rustls::ClientConfig>>,
    manager: tokio::sync::Mutex<Option<ManagerParts>>,
    api_addr: std::sync::Mutex<Option<SocketAddr>>,
    /// Set when the managers said this node was removed.
    removed: tokio::sync::watch::Sender<Option<String>>,
    /// Held while the certificate files are being renewed: the periodic
    /// renewal and a CA rotation's must not interleave their writes.
    renewing: tokio::sync::Mutex<()>,
}

impl Shared {
    fn record(&self) -> NodeRecord {
        self.record.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_record(&self, record: NodeRecord) -> Result<(), NodeError> {
        self.dir.write_record(&record)?;
        *self.record.lock().unwrap_or_else(|p| p.into_inner()) = record;
        Ok(())
    }
}

/// A running node. See the [module docs](self). Dropping it stops its
/// tasks (its containers keep running); [`SwarmNode::shutdown`] also
/// stops the raft store cleanly.
///
/// A node follows the role the store gives it: a worker promoted
/// (`swarmctl node promote`) renews its certificate as a manager and joins
/// the raft group in place; a manager demoted (`node demote`) is removed
/// from the raft group by the leader, stops its manager parts and goes on
/// as a worker. Its agent, and so its tasks, keep running throughout.
pub struct SwarmNode {
    shared: Arc<Shared>,
    tasks: Vec<Task>,
}

impl std::fmt::Debug for SwarmNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmNode").field("record", &self.shared.record()).field("api_addr", &self.api_addr()).finish()
    }
}

/// How a manager starts.
enum Start {
    /// A new cluster (`init`).
    Init(Box<Bootstrap>),
    /// Joining through a manager, with our raft id and addresses.
    Join(SocketAddr, JoinRequest),
    /// From the state directory.
    Resume,
}

/// What `init` writes into a new cluster's store.
struct Bootstrap {
    cluster_id: String,
    security: SecurityOptions,
    spec: ClusterSpec,
}

/// The join tokens printed by `swarmd init`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    /// For workers.
    pub worker: String,
    /// For managers.
    pub manager: String,
}

fn random_u64() -> Result<u64, NodeError> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).map_err(|e| sec(format!("the OS random source failed: {e}")))?;
    Ok(u64::from_le_bytes(b))
}

fn random_raft_id() -> Result<u64, NodeError> {
    loop {
        let id = random_u64()? >> 1; // positive in JSON tools that read i64
        if id != 0 {
            return Ok(id);
        }
    }
}

/// A random id of 25 lowercase base-36 characters, as Swarm's.
pub fn random_id() -> Result<String, NodeError> {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut b = [0u8; 25];
    getrandom::getrandom(&mut b).map_err(|e| sec(format!("the OS random source failed: {e}")))?;
    // 252 = 7 * 36: reject bytes above to keep the draw uniform.
    let mut out = String::with_capacity(25);
    let mut i = 0;
    while out.len() < 25 {
        if i == b.len() {
            getrandom::getrandom(&mut b).map_err(|e| sec(format!("the OS random source failed: {e}")))?;
            i = 0;
        }
        let v = b[i];
        i += 1;
        if v < 252 {
            out.push(ALPHABET[(v % 36) as usize] as char);
        }
    }
    Ok(out)
}

impl SwarmNode {
    /// The node's record (id, role, cluster) as it is now.
    pub fn record(&self) -> NodeRecord {
        self.shared.record()
    }

    /// The node id.
    pub fn node_id(&self) -> String {
        self.shared.record().node_id
    }

    /// The raft store, while the node is a manager.
    pub async fn raft(&self) -> Option<RaftStore> {
        self.shared.manager.lock().await.as_ref().map(|m| m.raft.clone())
    }

    /// The node API address, while the node is a manager.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        *self.shared.api_addr.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when the managers removed this node from the cluster
    /// (`swarmctl node rm`): its certificate is refused from then on and
    /// its agent stopped. Its containers are left as they are.
    pub async fn removed(&self) -> String {
        let mut rx = self.shared.removed.subscribe();
        loop {
            if let Some(node) = rx.borrow_and_update().clone() {
                return node;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops the node: its tasks, then (managers) the raft store. Its
    /// containers keep running, as Swarm's do when the daemon stops.
    pub async fn shutdown(mut self) {
        self.tasks.clear();
        if let Some(m) = self.shared.manager.lock().await.take() {
            m.stop(&self.shared.dir.socket()).await;
        }
    }

    /// Creates a new cluster with this node as its first manager. Returns
    /// the node and the join tokens.
    pub async fn init(opts: NodeOptions) -> Result<(SwarmNode, Tokens), NodeError> {
        let dir = StateDir::new(&opts.state_dir);
        refuse_existing(&dir)?;
        dir.create()?;
        let cluster_id = random_id()?;
        let node_id = random_id()?;
        let raft_id = random_raft_id()?;
        let mut policy = signing_policy(&opts);
        if let Some(l) = opts.cert_lifetime {
            policy.default_lifetime = l;
        }
        let csr = NodeCsr::generate(&node_id).map_err(sec)?;
        let files = dir.certs();
        // The first manager's certificate, by the CA made here or by the
        // external one.
        let security = match &opts.external_ca {
            Some(ext) => {
                let signer = ExternalSigner::new(&ext.url, &ext.cert_pem).map_err(sec)?;
                let cert_pem = signer.sign(csr.csr_pem(), &node_id, Role::Manager, &cluster_id).await.map_err(sec)?;
                files.write_ca_cert(&ext.cert_pem).map_err(sec)?;
                files.write(&cert_pem, &csr.key_pem()).map_err(sec)?;
                SecurityOptions {
                    external_signer: Some(ext.clone()),
                    node_cert_lifetime: opts.cert_lifetime,
                    ..SecurityOptions::default()
                }
            }
            None => {
                let ca =
                    ClusterCa::generate(&cluster_id, DEFAULT_CA_VALIDITY).map_err(sec)?.with_policy(policy.clone());
                let cert =
                    ca.sign_node_csr(csr.csr_pem(), &node_id, Role::Manager, None, SystemTime::now()).map_err(sec)?;
                files.write_ca_cert(ca.cert_pem()).map_err(sec)?;
                files.write(cert.cert_pem(), &csr.key_pem()).map_err(sec)?;
                SecurityOptions {
                    ca_validity: DEFAULT_CA_VALIDITY,
                    external_ca: Some(ExternalCa { cert_pem: ca.cert_pem().to_owned(), key_pem: ca.key_pem() }),
                    external_signer: None,
                    node_cert_lifetime: opts.cert_lifetime,
                }
            }
        };
        let mut record = NodeRecord {
            node_id: node_id.clone(),
            cluster_id: cluster_id.clone(),
            role: Role::Manager.as_str().into(),
            raft_id: Some(raft_id),
            managers: vec![opts.advertised(opts.listen_addr).to_string()],
            advertised: None,
        };
        dir.write_record(&record)?;
        let bootstrap = Bootstrap { cluster_id: cluster_id.clone(), security, spec: opts.cluster_spec.clone() };
        let (parts, tokens) =
            manager_parts(&opts, &dir, &mut record, vec![raft_id], Start::Init(Box::new(bootstrap))).await?;
        let tokens = tokens.ok_or_else(|| NodeError::Store("the join tokens were not created".into()))?;
        let node = Self::assemble(opts, dir, record, Some(parts))?;
        tracing::info!(node = %node_id, cluster = %cluster_id, "cluster initialised");
        Ok((node, tokens))
    }

    /// Joins the cluster of the manager at `remote` with `token`.
    pub async fn join(opts: NodeOptions, remote: SocketAddr, token: &str) -> Result<SwarmNode, NodeError> {
        let dir = StateDir::new(&opts.state_dir);
        refuse_existing(&dir)?;
        dir.create()?;
        let joined = join::join(remote, token, None, &dir.certs())
            .await
            .map_err(|e| NodeError::Join { addr: remote.to_string(), reason: e.to_string() })?;
        let role = joined.role;
        let identity = joined.identity().map_err(sec)?;
        let mut record = NodeRecord {
            node_id: joined.node_id.clone(),
            cluster_id: identity.cluster_id.clone(),
            role: role.as_str().into(),
            raft_id: None,
            managers: vec![remote.to_string()],
            advertised: None,
        };
        if role != Role::Manager {
            dir.write_record(&record)?;
            return Self::assemble(opts, dir, record, None);
        }
        let raft_id = random_raft_id()?;
        record.raft_id = Some(raft_id);
        dir.write_record(&record)?;
        let req = JoinRequest {
            raft_id,
            raft_addr: opts.advertised(opts.raft_addr).to_string(),
            api_addr: opts.advertised(opts.listen_addr).to_string(),
        };
        let (parts, _) = manager_parts(&opts, &dir, &mut record, Vec::new(), Start::Join(remote, req)).await?;
        Self::assemble(opts, dir, record, Some(parts))
    }

    /// Restarts the node recorded in `opts.state_dir`.
    pub async fn resume(opts: NodeOptions) -> Result<SwarmNode, NodeError> {
        let dir = StateDir::new(&opts.state_dir);
        let mut record = dir.read_record()?.ok_or_else(|| NodeError::NotSetUp(opts.state_dir.clone()))?;
        if record.role == Role::Manager.as_str() {
            let (parts, _) = manager_parts(&opts, &dir, &mut record, Vec::new(), Start::Resume).await?;
            Self::assemble(opts, dir, record, Some(parts))
        } else {
            Self::assemble(opts, dir, record, None)
        }
    }

    /// What every node runs: the agent, the certificate renewal and the
    /// role watcher; plus the manager parts when it is a manager.
    fn assemble(
        opts: NodeOptions,
        dir: StateDir,
        record: NodeRecord,
        parts: Option<ManagerParts>,
    ) -> Result<SwarmNode, NodeError> {
        let creds = load_creds(&dir)?;
        let client = Reloadable::new(tls::client_config(&creds).map_err(sec)?);
        let mut managers = record.managers.clone();
        if let Some(p) = &parts {
            managers.retain(|m| *m != opts.advertised(p.api_addr).to_string());
            managers.insert(0, opts.advertised(p.api_addr).to_string());
        }
        let api_addr = parts.as_ref().map(|p| p.api_addr);
        let shared = Arc::new(Shared {
            opts,
            dir,
            record: std::sync::Mutex::new(record),
            client,
            manager: tokio::sync::Mutex::new(parts),
            api_addr: std::sync::Mutex::new(api_addr),
            removed: tokio::sync::watch::channel(None).0,
            renewing: tokio::sync::Mutex::new(()),
        });
        let (agent, dispatcher) = start_agent(&shared, managers)?;
        let known_managers = |shared: Arc<Shared>, dispatcher: Arc<RemoteDispatcher>| {
            move || {
                let mut all: Vec<String> = Vec::new();
                if let Some(own) = *shared.api_addr.lock().unwrap_or_else(|p| p.into_inner()) {
                    all.push(shared.opts.advertised(own).to_string());
                }
                all.extend(dispatcher.managers());
                all.dedup();
                all
            }
        };
        let renewal = spawn(renewal_loop(shared.clone(), known_managers(shared.clone(), dispatcher.clone())));
        let ca = spawn(ca_loop(shared.clone(), dispatcher.clone(), known_managers(shared.clone(), dispatcher.clone())));
        let roles = spawn(role_loop(shared.clone(), dispatcher));
        Ok(SwarmNode { shared, tasks: vec![agent, renewal, ca, roles] })
    }
}

/// Starts what a manager runs on top of every node's parts: the raft
/// transport and store, the control loops, the node API listener and the
/// local socket. `record` gets the addresses advertised.
async fn manager_parts(
    opts: &NodeOptions,
    dir: &StateDir,
    record: &mut NodeRecord,
    initial_voters: Vec<u64>,
    start: Start,
) -> Result<(ManagerParts, Option<Tokens>), NodeError> {
    let raft_id = record.raft_id.ok_or_else(|| NodeError::Raft("the node record has no raft id".into()))?;
    let creds = load_creds(dir)?;
    let mut names = HashMap::new();
    names.insert(raft_id, record.node_id.clone());
    let raft_tls = RaftTls::new(&creds, names).map_err(sec)?;
    let mut tcfg = TcpTransportConfig::new(raft_id, HashMap::new()).with_tls(raft_tls.clone());
    tcfg.reconnect = Duration::from_millis(200);
    let transport = TcpTransport::new(tcfg).map_err(|e| NodeError::Raft(e.to_string()))?;
    let raft_listener = TcpListener::bind(opts.raft_addr).await.map_err(|source| NodeError::Bind {
        addr: opts.raft_addr,
        what: "raft",
        source,
    })?;
    let api_listener = TcpListener::bind(opts.listen_addr).await.map_err(|source| NodeError::Bind {
        addr: opts.listen_addr,
        what: "node API",
        source,
    })?;
    let api_addr = api_listener.local_addr().map_err(|source| NodeError::Bind {
        addr: opts.listen_addr,
        what: "node API",
        source,
    })?;
    if opts.force_new_cluster {
        if !matches!(start, Start::Resume) {
            return Err(NodeError::Raft("--force-new-cluster applies to `swarmd run` (an existing manager)".into()));
        }
        let dir = dir.raft_dir();
        let at = tokio::task::spawn_blocking(move || RaftStore::force_new_cluster(&dir, raft_id))
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?
            .map_err(|e| NodeError::Raft(format!("--force-new-cluster: {e}")))?;
        tracing::warn!(raft_id, index = at, "forced a new cluster: this manager is now the only voter");
    }
    let cfg = RaftStoreConfig::new(raft_id, dir.raft_dir(), initial_voters).with_tick(opts.raft_tick);
    let raft = RaftStore::open_async(cfg, transport.clone()).await.map_err(|e| NodeError::Raft(e.to_string()))?;
    let mut tasks = Vec::new();
    tasks.push(spawn(TcpTransport::serve_tls(raft_listener, raft.inbox(), InboundLimits::default(), raft_tls.clone())));
    tasks.push(spawn(peers::sync_loop(raft.clone(), transport.clone(), raft_tls.clone(), Duration::from_millis(500))));

    let store: Arc<dyn Store> = Arc::new(raft.clone());
    // A new cluster's CA, tokens and settings are in the store before
    // anything (the control loops, the agent) reads them.
    let mut tokens = None;
    match start {
        Start::Init(b) => {
            wait_leader(&raft, Duration::from_secs(30)).await?;
            let t = match b.security.external_signer {
                Some(ext) => castore::init_security_external(&raft, &b.cluster_id, ext, b.security.node_cert_lifetime)
                    .await
                    .map_err(sec)?,
                None => castore::init_security(&raft, &b.cluster_id, b.security).await.map_err(sec)?.1,
            };
            tokens = Some(Tokens { worker: t.worker().to_string(), manager: t.manager().to_string() });
            Cluster::new(store.clone()).set_cluster_spec(b.spec).await.map_err(|e| NodeError::Store(e.to_string()))?;
        }
        Start::Join(remote, req) => {
            // Our raft listener runs: ask the leader to add us, then
            // point our transport at the members until our replica
            // holds them.
            let client = Reloadable::new(tls::client_config(&creds).map_err(sec)?);
            let reply = raft_join(remote, &client, &req).await?;
            peers::apply(&reply.members, &[], raft_id, &transport, &raft_tls);
            tracing::info!(node = %record.node_id, members = reply.members.len(), "joined the raft group");
        }
        Start::Resume => {
            // Restarted with other addresses: tell the leader, through
            // the managers we knew, before the others look for us at
            // the old ones.
            let now = (opts.advertised(opts.raft_addr).to_string(), opts.advertised(opts.listen_addr).to_string());
            if let Some(before) = &record.advertised
                && *before != now
            {
                let req = JoinRequest { raft_id, raft_addr: now.0.clone(), api_addr: now.1.clone() };
                let client = Reloadable::new(tls::client_config(&creds).map_err(sec)?);
                let mut done = false;
                for m in record.managers.iter().filter(|m| **m != before.1 && **m != now.1) {
                    let Ok(addr) = m.parse::<SocketAddr>() else { continue };
                    match raft_join(addr, &client, &req).await {
                        Ok(reply) => {
                            peers::apply(&reply.members, &[], raft_id, &transport, &raft_tls);
                            done = true;
                            break;
                        }
                        Err(e) => tracing::warn!(manager = %m, error = %e, "telling the new address"),
                    }
                }
                tracing::info!(from = ?before, to = ?now, told = done, "this manager's addresses changed");
            }
        }
    }
    record.advertised =
        Some((opts.advertised(opts.raft_addr).to_string(), opts.advertised(opts.listen_addr).to_string()));
    dir.write_record(record)?;
    // The deny-list starts from the local replica (what this manager's
    // log holds, no quorum needed: a manager restarting with the rest
    // of the cluster down must still start) and follows the store.
    let deny_list = Arc::new(DenyList::new());
    deny_list.update(&raft.stale_snapshot());
    // Raft refuses a removed node's certificate too (a removed manager's
    // stays valid under the CA until it expires).
    let denied = deny_list.clone();
    raft_tls.set_deny_list(move |node| denied.contains(node));
    let (following, follow_store) = (deny_list.clone(), store.clone());
    tasks.push(spawn(async move {
        loop {
            if let Err(e) = following.follow(follow_store.as_ref()).await {
                tracing::debug!(error = %e, "following the deny-list; retrying");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }));
    // swarm-net's allocator: subnets, VIPs, published ports, and every
    // task's addresses on its overlay networks (docs/overlay.md, IPAM).
    // Tasks with nothing to allocate are created PENDING at once.
    let allocator = swarm_net::alloc::Allocator::new(store.clone(), swarm_net::alloc::AllocatorConfig::default())
        .map_err(|e| NodeError::Raft(format!("the network allocator: {e}")))?;
    let keys = swarm_net::netkeys::NetworkKeys::new(swarm_net::netkeys::NetKeysConfig::default())
        .map_err(|e| NodeError::Raft(format!("the network key controller: {e}")))?;
    let manager = Manager::builder(store.clone())
        .scheduler(Box::new(swarm_sched::Pipeline::spread()))
        .allocator(move || allocator.controller())
        // Keys of encrypted overlay networks: made, rotated every 12 h,
        // sent only to nodes with tasks on the network (docs/overlay.md).
        .controller(move || keys.clone())
        .config(ManagerConfig { admission: swarm_core::allocator::Admission::WithoutAllocation, ..Default::default() })
        .start()
        .map_err(|e| NodeError::Raft(format!("starting the control loops: {e}")))?;

    let leader_raft = raft.clone();
    let leader_addr = move || peers::leader_api_addr(&leader_raft);
    // Every heartbeat answer carries the managers: read from a cache that
    // follows the store's Node changes, not a walk over every node.
    let member_cache = peers::MemberCache::new(&raft.stale_snapshot());
    let (following, follow_raft) = (member_cache.clone(), raft.clone());
    tasks.push(spawn(async move { following.follow(&follow_raft).await }));
    let managers = move || member_cache.api_addrs();
    let roles_raft = raft.clone();
    let roles = move |node: &str| {
        roles_raft.stale_snapshot().node(&swarm_core::id::NodeId::new(node)).map(|n| n.spec.role.as_str().to_owned())
    };
    let (hint_raft, hints) = (raft.clone(), rotation::HintCache::default());
    let dispatcher = DispatcherService::new(Arc::new(manager.dispatcher()), store.leadership())
        .with_leader(leader_addr)
        .with_managers(managers)
        .with_roles(roles)
        .with_ca_hint(move || hints.get(&hint_raft.stale_snapshot()));
    let voters_raft = raft.clone();
    let cluster = Cluster::new(store.clone()).with_voters(move || voters_raft.status().voters);
    let router = Arc::new(
        Router::new()
            .route("dispatcher", Arc::new(dispatcher))
            .route("control", Arc::new(ControlService::with_ca_from_store(cluster.clone())))
            .route("ca", Arc::new(CaService::new(store.clone()).with_policy(signing_policy(opts))))
            .route("raft", Arc::new(MembershipService::new(raft.clone(), transport.clone(), raft_tls.clone())))
            .gate(deny_list),
    );
    let server_tls =
        Reloadable::new(tls::server_config_optional_client(&creds, PeerPolicy::api(&record.cluster_id)).map_err(sec)?);
    tasks.push(spawn(RpcServer::serve(api_listener, server_tls.clone(), router.clone(), ServerLimits::default())));
    let socket = dir.socket();
    let local = router.clone();
    tasks.push(spawn(async move {
        if let Err(e) = RpcServer::serve_unix(&socket, local).await {
            tracing::error!(path = %socket.display(), error = %e, "cannot serve the local control socket");
        }
    }));
    tasks.push(spawn(record_self(raft.clone(), record.clone(), opts.clone())));
    tasks.push(spawn(crate::membership::reconcile_loop(raft.clone(), Duration::from_millis(500))));
    tasks.push(spawn(rotation::rotation_loop(store.clone(), Duration::from_millis(500))));

    tracing::info!(node = %record.node_id, raft_id, api = %api_addr, raft = %opts.raft_addr, "manager started");
    let parts = ManagerParts { raft, raft_tls, server_tls, api_addr, manager, tasks };
    Ok((parts, tokens))
}

/// The CA's signing policy on this manager: Swarm's, or with lifetimes
/// down to a second when short certificates are allowed (tests).
fn signing_policy(opts: &NodeOptions) -> SigningPolicy {
    let mut policy = SigningPolicy::default();
    if opts.allow_short_certs {
        policy.min_lifetime = Duration::from_secs(1);
    }
    policy
}

fn refuse_existing(dir: &StateDir) -> Result<(), NodeError> {
    if let Some(r) = dir.read_record()? {
        return Err(NodeError::AlreadySetUp {
            dir: dir.root().to_owned(),
            node_id: r.node_id,
            cluster_id: r.cluster_id,
        });
    }
    Ok(())
}

fn load_creds(dir: &StateDir) -> Result<TlsCredentials, NodeError> {
    let files = dir.certs().read().map_err(sec)?;
    let ca = dir.certs().read_ca_cert().map_err(sec)?;
    TlsCredentials::from_pem(&ca, &files.cert_pem, &files.key_pem).map_err(sec)
}

async fn wait_leader(raft: &RaftStore, within: Duration) -> Result<(), NodeError> {
    let mut lead = raft.leadership();
    tokio::time::timeout(within, async {
        while !*lead.borrow_and_update() {
            if lead.changed().await.is_err() {
                return;
            }
        }
    })
    .await
    .map_err(|_| NodeError::Raft(format!("this manager did not become leader within {within:?}")))
}

/// Keeps this manager's own Node object recording its role and addresses
/// (written once the store accepts writes; again if it changes).
async fn record_self(raft: RaftStore, record: NodeRecord, opts: NodeOptions) {
    let Some(raft_id) = record.raft_id else { return };
    let status = ManagerStatus {
        raft_id,
        raft_addr: opts.advertised(opts.raft_addr).to_string(),
        api_addr: opts.advertised(opts.listen_addr).to_string(),
    };
    loop {
        let res = crate::membership::record_manager(&raft, &record.node_id, &status).await;
        match res {
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(error = %e, "recording this manager in the store; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn start_agent(shared: &Arc<Shared>, managers: Vec<String>) -> Result<(Task, Arc<RemoteDispatcher>), NodeError> {
    let (opts, record) = (&shared.opts, shared.record());
    let dispatcher = Arc::new(RemoteDispatcher::new(managers, shared.client.clone()));
    let agent = Agent::new(
        AgentConfig {
            node_id: record.node_id.clone().into(),
            description: opts.description(),
            addr: opts.advertised(opts.listen_addr).ip().to_string(),
        },
        opts.runtime.clone(),
        dispatcher.clone(),
    );
    let plane = opts.overlay.then(|| {
        let views = agent.overlay();
        let cfg = swarm_net::overlay::OverlayConfig::new(opts.advertised(opts.listen_addr).ip());
        run_overlay(views, cfg)
    });
    let removed = shared.clone();
    let task = spawn(async move {
        // The plane lives as long as the agent: both stop with this task
        // (the kernel state stays, like the containers).
        let _plane = plane.map(spawn);
        match agent.run().await {
            Ok(()) => tracing::info!("agent stopped"),
            Err(AgentError::Removed(node)) => {
                tracing::warn!(%node, "the managers removed this node from the cluster; its agent stopped");
                removed.removed.send_replace(Some(node));
            }
        }
    });
    Ok((task, dispatcher))
}

/// Runs the overlay data plane on `views` until aborted, retrying its
/// start (netlink or iptables may not be usable yet), and the networks'
/// DNS servers on their gateways (`swarm_net::overlay_dns`, port 53).
async fn run_overlay(
    views: tokio::sync::watch::Receiver<swarm_core::overlay::OverlayView>,
    cfg: swarm_net::overlay::OverlayConfig,
) {
    // Closed when this task is aborted (dropped with it).
    let _dns = swarm_net::overlay_dns::OverlayDns::start(views.clone(), Default::default());
    loop {
        match swarm_net::overlay::Overlay::start(views.clone(), cfg.clone()).await {
            Ok(plane) => {
                tracing::info!(underlay = %cfg.underlay, "overlay data plane started");
                // Held until this task is aborted with the agent.
                std::future::pending::<()>().await;
                drop(plane);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the overlay data plane; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// Presents `creds` on every new connection from now on: the node API
/// client, and on a manager its listener and raft. A manager whose new
/// certificate is a worker's (it was demoted) keeps its manager parts'
/// configurations until they stop.
async fn reload_tls(shared: &Shared, creds: &TlsCredentials) -> Result<(), NodeError> {
    shared.client.set(tls::client_config(creds).map_err(sec)?);
    let record = shared.record();
    if let Some(parts) = shared.manager.lock().await.as_ref() {
        if creds.identity().role == Role::Manager {
            parts
                .server_tls
                .set(tls::server_config_optional_client(creds, PeerPolicy::api(&record.cluster_id)).map_err(sec)?);
            parts.raft_tls.reload(creds).map_err(sec)?;
        } else {
            tracing::info!("the renewed certificate is not a manager's: the manager parts keep the previous one");
        }
    }
    Ok(())
}

/// Renews the node certificate at a random point between 50 % and 80 % of
/// its lifetime (Swarm's window; the lifetime counted from when the node
/// received it), through any manager that answers, and reloads every TLS
/// user. A failed attempt is retried every few seconds until one
/// succeeds. A node restarted with a certificate past its renewal time
/// renews at once.
async fn renewal_loop(shared: Arc<Shared>, managers: impl Fn() -> Vec<String> + Send + 'static) {
    use rand_core::OsRng;
    let files = shared.dir.certs();
    loop {
        let identity = match join::JoinedNode::load(&files)
            .map_err(|e| e.to_string())
            .and_then(|n| n.identity().map_err(|e| e.to_string()))
        {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, "cannot read this node's certificate; renewal stopped");
                return;
            }
        };
        // The window is measured from when this node got the certificate
        // (the file's modification time), not from `not_before`: the CA
        // backdates `not_before` (clock skew), which for a short lifetime
        // would put the whole window in the past and renew in a loop.
        let received = std::fs::metadata(files.cert_path()).and_then(|m| m.modified()).ok();
        let start = received.map_or(identity.not_before, |r| r.max(identity.not_before));
        let at = swarm_security::renewal::renewal_time(start, identity.not_after, &mut OsRng);
        if let Ok(wait) = at.duration_since(SystemTime::now()) {
            tracing::debug!(?wait, not_after = ?identity.not_after, "next certificate renewal");
            tokio::time::sleep(wait).await;
        }
        renew_until_done(&shared, &managers()).await;
    }
}

/// Renews now, retrying until a manager answers.
async fn renew_until_done(shared: &Shared, managers: &[String]) -> Role {
    let mut attempt = 0u32;
    loop {
        match renew_once(shared, managers).await {
            Ok(role) => return role,
            Err(e) => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "certificate renewal failed; retrying");
                tokio::time::sleep(Duration::from_secs(u64::from(attempt.min(5)))).await;
            }
        }
    }
}

/// One renewal through the first manager that answers; returns the role
/// of the new certificate (the store's, which changes on promotion and
/// demotion).
async fn renew_once(shared: &Shared, managers: &[String]) -> Result<Role, NodeError> {
    let _files_held = shared.renewing.lock().await;
    let files = shared.dir.certs();
    let mut last = NodeError::Security("no manager known to renew the certificate with".into());
    for m in managers {
        let Ok(addr) = m.parse::<SocketAddr>() else { continue };
        let rpc = RpcClient::new(addr, Role::Manager.server_name(), shared.client.clone()).map_err(sec)?;
        match join::renew(&rpc, &files).await {
            Ok(node) => {
                let creds = node.tls_credentials().map_err(sec)?;
                reload_tls(shared, &creds).await?;
                tracing::info!(manager = %m, role = %node.role, not_after = ?creds.identity().not_after, "node certificate renewed");
                return Ok(node.role);
            }
            Err(e) => last = sec(format!("renewing through {m}: {e}")),
        }
    }
    Err(last)
}

/// Follows the cluster's CA as heartbeat answers describe it
/// ([`rotation::CaHint`]): when the roots to trust change (a CA rotation
/// started or finished), fetches them from a manager this node trusts
/// and reloads every TLS user; when the root that signs is not the one
/// that issued this node's certificate, renews at once.
async fn ca_loop(
    shared: Arc<Shared>,
    dispatcher: Arc<RemoteDispatcher>,
    managers: impl Fn() -> Vec<String> + Send + 'static,
) {
    // The hint last seen settled: the files are read again only when the
    // managers' hint changes (or until it is settled).
    let mut settled: Option<rotation::CaHint> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(hint) = dispatcher.ca_hint() else { continue };
        if settled.as_ref() == Some(&hint) {
            continue;
        }
        match follow_ca(&shared, &hint, &managers()).await {
            Ok(true) => settled = Some(hint),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the cluster's CA now; will retry");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Brings this node's roots and certificate in line with `hint`; `true`
/// once they are (`false`: the manager answered roots that do not match
/// the hint yet, try again).
async fn follow_ca(shared: &Shared, hint: &rotation::CaHint, managers: &[String]) -> Result<bool, NodeError> {
    let files = shared.dir.certs();
    let node = join::JoinedNode::load(&files).map_err(sec)?;
    if rotation::bundle_digest(&node.ca_cert_pem).map_err(sec)? != hint.trust {
        let mut last = NodeError::Security("no manager known to fetch the root CAs from".into());
        let mut done = false;
        for m in managers {
            let Ok(addr) = m.parse::<SocketAddr>() else { continue };
            let rpc = RpcClient::new(addr, Role::Manager.server_name(), shared.client.clone()).map_err(sec)?;
            let _files_held = shared.renewing.lock().await;
            match join::refresh_roots(&rpc, &files).await {
                Ok(changed) => {
                    if changed.is_some() {
                        let creds = join::JoinedNode::load(&files)
                            .and_then(|n| n.tls_credentials().map_err(join::JoinError::Tls));
                        reload_tls(shared, &creds.map_err(sec)?).await?;
                    }
                    done = true;
                    break;
                }
                Err(e) => last = sec(format!("fetching the root CAs from {m}: {e}")),
            }
        }
        if !done {
            return Err(last);
        }
    }
    let node = join::JoinedNode::load(&files).map_err(sec)?;
    let creds = node.tls_credentials().map_err(sec)?;
    let roots = swarm_security::tls::certs_from_pem(&node.ca_cert_pem, "CA certificate").map_err(sec)?;
    // The signing root is among ours once the refresh above caught up
    // with the manager that sent the hint.
    let Some(signing) = roots.iter().find(|r| swarm_security::token::ca_digest(r) == hint.signing_root) else {
        return Ok(false);
    };
    if !creds.issued_by(signing) {
        tracing::info!("the cluster's CA signs with another root (a CA rotation): renewing the certificate now");
        renew_until_done(shared, managers).await;
    }
    Ok(rotation::bundle_digest(&node.ca_cert_pem).map_err(sec)? == hint.trust)
}

/// Follows the role the store gives this node (reported with every
/// heartbeat answer): a worker recorded as a manager is promoted in
/// place; a manager removed from the raft group (demoted) stops its
/// manager parts and goes on as a worker.
async fn role_loop(shared: Arc<Shared>, dispatcher: Arc<RemoteDispatcher>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let removed = match shared.manager.lock().await.as_ref() {
            Some(p) => p.raft.status().removed,
            None => false,
        };
        if removed {
            demote(&shared, &dispatcher).await;
            continue;
        }
        let is_manager = shared.manager.lock().await.is_some();
        if !is_manager && dispatcher.recorded_role().as_deref() == Some(NodeRole::Manager.as_str()) {
            if let Err(e) = promote(&shared, &dispatcher).await {
                tracing::warn!(error = %e, "promotion to manager failed; will retry");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// This manager was removed from the raft group: stop being one.
async fn demote(shared: &Shared, dispatcher: &RemoteDispatcher) {
    let Some(parts) = shared.manager.lock().await.take() else { return };
    // Our agent may know no other manager yet (the list comes with
    // heartbeats): give it the ones our replica knows.
    let own = parts.api_addr.to_string();
    dispatcher.add_managers(
        peers::members(&parts.raft.stale_snapshot()).into_iter().map(|m| m.status.api_addr).filter(|a| *a != own),
    );
    tracing::info!(
        "this manager was removed from the raft group (demoted): stopping the manager parts, going on as a worker"
    );
    *shared.api_addr.lock().unwrap_or_else(|p| p.into_inner()) = None;
    parts.stop(&shared.dir.socket()).await;
    let mut record = shared.record();
    record.role = Role::Worker.as_str().into();
    record.raft_id = None;
    record.advertised = None;
    if let Err(e) = shared.set_record(record) {
        tracing::error!(error = %e, "cannot record the demotion");
    }
    // The raft log of a removed member is of no further use.
    let _ = std::fs::remove_dir_all(shared.dir.raft_dir());
}

/// The store says this worker is a manager: renew as one, then join the
/// raft group through the manager the agent talks to.
async fn promote(shared: &Arc<Shared>, dispatcher: &RemoteDispatcher) -> Result<(), NodeError> {
    let managers = dispatcher.managers();
    tracing::info!("this node was promoted: renewing its certificate as a manager");
    let role = renew_until_done(shared, &managers).await;
    if role != Role::Manager {
        return Err(NodeError::Security(format!("the renewed certificate is a {role}'s, not a manager's")));
    }
    let via = dispatcher
        .current_manager()
        .or_else(|| managers.first().cloned())
        .and_then(|m| m.parse::<SocketAddr>().ok())
        .ok_or_else(|| NodeError::Join { addr: "-".into(), reason: "no manager known to join through".into() })?;
    let mut record = shared.record();
    let raft_id = random_raft_id()?;
    record.role = Role::Manager.as_str().into();
    record.raft_id = Some(raft_id);
    let _ = std::fs::remove_dir_all(shared.dir.raft_dir());
    let opts = &shared.opts;
    let req = JoinRequest {
        raft_id,
        raft_addr: opts.advertised(opts.raft_addr).to_string(),
        api_addr: opts.advertised(opts.listen_addr).to_string(),
    };
    let (parts, _) = manager_parts(opts, &shared.dir, &mut record, Vec::new(), Start::Join(via, req)).await?;
    *shared.api_addr.lock().unwrap_or_else(|p| p.into_inner()) = Some(parts.api_addr);
    dispatcher.add_managers([opts.advertised(parts.api_addr).to_string()]);
    *shared.manager.lock().await = Some(parts);
    shared.set_record(record)?;
    tracing::info!("promoted: this node is now a manager");
    Ok(())
}

/// Calls `raft.join` on `remote`, following redirects to the leader.
async fn raft_join(
    remote: SocketAddr,
    client: &Arc<Reloadable<rustls::ClientConfig>>,
    req: &JoinRequest,
) -> Result<JoinReply, NodeError> {
    let mut addr = remote;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rpc = RpcClient::new(addr, Role::Manager.server_name(), client.clone())
            .map_err(|e| NodeError::Join { addr: addr.to_string(), reason: e.to_string() })?;
        let err = match rpc.call::<_, JoinReply>("raft.join", req).await {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(NodeError::Join { addr: addr.to_string(), reason: err.to_string() });
        }
        match &err {
            RpcError::Fault { fault, .. } if fault.code == Code::NotLeader => {
                if let Some(next) = fault.redirect.as_deref().and_then(|r| r.parse().ok()) {
                    addr = next;
                    continue;
                }
            }
            RpcError::Fault { fault, .. } if fault.code != Code::Unavailable => {
                return Err(NodeError::Join { addr: addr.to_string(), reason: err.to_string() });
            }
            _ => {}
        }
        tracing::debug!(error = %err, "raft.join: retrying");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The default capacity a node reports: its CPUs and memory as the OS
/// sees them.
pub fn host_resources() -> Resources {
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
    // SAFETY: sysconf has no preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let memory = if pages > 0 && page > 0 { pages as u64 * page as u64 } else { 0 };
    Resources::new(cpus * 1_000_000_000, memory)
}

/// Default raft tick for `swarmd` (election after 10 ticks: 1 to 2 s).
pub const DEFAULT_RAFT_TICK: Duration = Duration::from_millis(100);

/// A cluster spec whose agents heartbeat every `period`.
pub fn spec_with_heartbeat(period: Duration) -> ClusterSpec {
    let mut spec = ClusterSpec::default();
    spec.dispatcher.heartbeat_period = SpecDuration::from_nanos(period.as_nanos() as i64);
    spec
}
