//! The routing mesh: on every node, for every port a service publishes in
//! ingress mode, a TCP and/or UDP listener forwarding each connection (UDP:
//! each client flow) to a healthy endpoint of the service, wherever it runs.
//!
//! A [`Mesh`] follows a [`Discovery`]: on each change it opens listeners
//! for new ingress ports, closes those no longer published, and replaces
//! each service's backend set. A backend that leaves the set (its task was
//! told to stop, failed, or its node went down) gets no new connection at
//! once; its open connections keep flowing for the service's stop grace
//! period, then are closed (if the task comes back meanwhile, the drain is
//! cancelled).
//!
//! Balancing is round-robin or least-connections (fewest open connections,
//! ties broken round-robin). A connect that fails or times out is retried
//! on another backend, so a client does not see a dead endpoint that
//! discovery has not removed yet (up to [`MeshConfig::connect_attempts`]).
//!
//! Bytes are moved with splice(2) on Linux ([`CopyMode::Splice`]: zero
//! copy through a pipe) or with `tokio::io::copy_bidirectional` and big
//! buffers ([`CopyMode::Userspace`]).
//!
//! Unlike Swarm, which programs IPVS in the kernel (and NATs to the
//! ingress network), this is a userspace proxy: the backend sees the mesh
//! as the client's address. See docs/swarm-net.md.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use swarm_core::discovery::{Discovery, ServiceEndpoints};
use swarm_core::id::TaskId;
use swarm_core::model::{Protocol, PublishMode};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How a backend is chosen for a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Balance {
    /// In turn.
    #[default]
    RoundRobin,
    /// The backend with the fewest open connections (ties in turn).
    LeastConnections,
}

/// How bytes are moved between the client and the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMode {
    /// splice(2) through a pipe (Linux; elsewhere falls back to
    /// `Userspace` with 256 KiB buffers).
    Splice,
    /// `tokio::io::copy_bidirectional_with_sizes` with this buffer size per
    /// direction.
    Userspace {
        /// Bytes per direction.
        buffer: usize,
    },
}

impl Default for CopyMode {
    fn default() -> Self {
        if cfg!(target_os = "linux") { CopyMode::Splice } else { CopyMode::Userspace { buffer: 256 * 1024 } }
    }
}

/// Routing mesh settings for one node.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// The address ingress ports are bound on (the node's address;
    /// `0.0.0.0` for all).
    pub listen_ip: IpAddr,
    /// Backend choice.
    pub balance: Balance,
    /// Byte moving.
    pub copy: CopyMode,
    /// Time a backend connect may take before the next backend is tried.
    pub connect_timeout: Duration,
    /// Backends tried per connection before the client is dropped.
    pub connect_attempts: usize,
    /// A UDP flow with no packet either way for this long is forgotten.
    pub udp_flow_idle: Duration,
    /// Maps a task address to the address the node reaches it at (for
    /// runtimes whose task addresses are not routable from the node, such
    /// as a simulated one); `None`: the task address itself.
    pub translate: Option<AddrMap>,
}

/// A task address -> reachable address function (see
/// [`MeshConfig::translate`]).
#[derive(Clone)]
pub struct AddrMap(pub Arc<dyn Fn(IpAddr) -> IpAddr + Send + Sync>);

impl std::fmt::Debug for AddrMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AddrMap(..)")
    }
}

impl MeshConfig {
    pub(crate) fn reach(&self, addr: IpAddr) -> IpAddr {
        self.translate.as_ref().map_or(addr, |m| (m.0)(addr))
    }
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            listen_ip: IpAddr::from([0, 0, 0, 0]),
            balance: Balance::default(),
            copy: CopyMode::default(),
            connect_timeout: Duration::from_secs(1),
            connect_attempts: 3,
            udp_flow_idle: Duration::from_secs(30),
            translate: None,
        }
    }
}

pub(crate) struct Backend {
    task_id: TaskId,
    addr: IpAddr,
    active: AtomicUsize,
    total: AtomicU64,
    /// true: close every connection now (drain over).
    close: watch::Sender<bool>,
}

impl Backend {
    fn new(task_id: TaskId, addr: IpAddr) -> Arc<Backend> {
        Arc::new(Backend {
            task_id,
            addr,
            active: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            close: watch::channel(false).0,
        })
    }
}

/// Counts an open connection on a backend while alive.
struct ActiveGuard(Arc<Backend>);

impl ActiveGuard {
    fn new(b: &Arc<Backend>) -> ActiveGuard {
        b.active.fetch_add(1, Ordering::SeqCst);
        ActiveGuard(b.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
pub(crate) struct Pool {
    backends: RwLock<Vec<Arc<Backend>>>,
    next: AtomicUsize,
    grace: Mutex<Duration>,
}

impl Pool {
    fn pick(&self, balance: Balance, skip: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        let backends = self.backends.read().unwrap_or_else(|p| p.into_inner());
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = (0..n).map(|i| &backends[(start + i) % n]).filter(|b| !skip.iter().any(|s| Arc::ptr_eq(s, b)));
        let chosen = match balance {
            Balance::RoundRobin => candidates.into_iter().next(),
            Balance::LeastConnections => {
                let mut best: Option<&Arc<Backend>> = None;
                for b in candidates {
                    if best.is_none_or(|x| b.active.load(Ordering::SeqCst) < x.active.load(Ordering::SeqCst)) {
                        best = Some(b);
                    }
                }
                best
            }
        };
        chosen.cloned()
    }
}

/// One published port this node serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listening {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The published port.
    pub port: u32,
    /// The service.
    pub service: String,
    /// The port inside the tasks.
    pub target_port: u32,
    /// The bound address.
    pub addr: SocketAddr,
}

/// A backend's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendStats {
    /// The task.
    pub task_id: TaskId,
    /// Its address.
    pub addr: IpAddr,
    /// Connections (UDP flows) open now.
    pub active: usize,
    /// Connections (UDP flows) ever forwarded to it.
    pub total: u64,
    /// Out of the set, its connections draining.
    pub draining: bool,
}

/// A backend out of the set and the timer that closes its connections.
type Draining = (Arc<Backend>, JoinHandle<()>);

struct ListenerEntry {
    info: Listening,
    task: JoinHandle<()>,
}

pub(crate) struct Shared {
    pub(crate) config: MeshConfig,
    pub(crate) pools: RwLock<HashMap<String, Arc<Pool>>>,
    pub(crate) draining: Mutex<HashMap<(String, TaskId), Draining>>,
    listeners: Mutex<BTreeMap<(Protocol, u32), ListenerEntry>>,
    errors: Mutex<BTreeMap<(Protocol, u32), String>>,
    synced: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn new(config: MeshConfig) -> Arc<Shared> {
        Arc::new(Shared {
            config,
            pools: RwLock::default(),
            draining: Mutex::default(),
            listeners: Mutex::default(),
            errors: Mutex::default(),
            synced: watch::channel(0).0,
        })
    }

    /// The backends of `service` (in the set, then draining).
    pub(crate) fn backends(&self, service: &str) -> Vec<BackendStats> {
        let stats = |b: &Arc<Backend>, draining| BackendStats {
            task_id: b.task_id.clone(),
            addr: b.addr,
            active: b.active.load(Ordering::SeqCst),
            total: b.total.load(Ordering::SeqCst),
            draining,
        };
        let mut out: Vec<BackendStats> = read(&self.pools)
            .get(service)
            .map(|p| read(&p.backends).iter().map(|b| stats(b, false)).collect())
            .unwrap_or_default();
        out.extend(lock(&self.draining).iter().filter(|((s, _), _)| s == service).map(|(_, (b, _))| stats(b, true)));
        out
    }

    /// Closes every connection now (pools and drains).
    pub(crate) fn close_all(&self) {
        for (_, pool) in std::mem::take(&mut *write(&self.pools)) {
            for b in read(&pool.backends).iter() {
                b.close.send_replace(true);
            }
        }
        for (_, (b, t)) in std::mem::take(&mut *lock(&self.draining)) {
            t.abort();
            b.close.send_replace(true);
        }
    }
}

/// A node's routing mesh. See the [module docs](self).
pub struct Mesh {
    shared: Arc<Shared>,
    supervisor: JoinHandle<()>,
    discovery: Arc<dyn Discovery>,
}

impl Mesh {
    /// Starts following `discovery`.
    pub fn start(discovery: Arc<dyn Discovery>, config: MeshConfig) -> Mesh {
        let shared = Shared::new(config);
        let (s, d) = (shared.clone(), discovery.clone());
        let supervisor = tokio::spawn(async move {
            let mut rx = d.subscribe();
            loop {
                let revision = *rx.borrow_and_update();
                sync(&s, d.as_ref());
                s.synced.send_replace(revision);
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Mesh { shared, supervisor, discovery }
    }

    /// The ports served now.
    pub fn listening(&self) -> Vec<Listening> {
        lock(&self.shared.listeners).values().map(|l| l.info.clone()).collect()
    }

    /// Ports that could not be served, and why (retried on every change).
    pub fn errors(&self) -> Vec<(Protocol, u32, String)> {
        lock(&self.shared.errors).iter().map(|((p, port), e)| (*p, *port, e.clone())).collect()
    }

    /// The backends of `service` (in the set, then draining).
    pub fn backends(&self, service: &str) -> Vec<BackendStats> {
        self.shared.backends(service)
    }

    /// Waits until the mesh has applied the discovery state current at the
    /// call (or `timeout` passes); true if it did.
    pub async fn synced(&self, timeout: Duration) -> bool {
        let target = *self.discovery.subscribe().borrow();
        let mut rx = self.shared.synced.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n >= target)).await.is_ok_and(|r| r.is_ok())
    }

    /// The address a published port is served on, once it is.
    pub fn addr(&self, protocol: Protocol, port: u32) -> Option<SocketAddr> {
        lock(&self.shared.listeners).get(&(protocol, port)).map(|l| l.info.addr)
    }

    /// Stops every listener and closes every connection.
    pub fn stop(self) {
        self.supervisor.abort();
        for (_, l) in std::mem::take(&mut *lock(&self.shared.listeners)) {
            l.task.abort();
        }
        self.shared.close_all();
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
pub(crate) fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
pub(crate) fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

/// Applies discovery to pools and listeners.
fn sync(shared: &Arc<Shared>, discovery: &dyn Discovery) {
    let services = discovery.resolve_all();
    let mut wanted: BTreeMap<(Protocol, u32), (String, u32)> = BTreeMap::new();
    for se in &services {
        for p in se.ports.iter().filter(|p| p.publish_mode == PublishMode::Ingress) {
            if let Some(port) = p.published_port {
                wanted.insert((p.protocol, port), (se.name.clone(), p.target_port));
            }
        }
    }
    update_pools(shared, &services);

    // Listeners.
    let mut listeners = lock(&shared.listeners);
    let stale: Vec<(Protocol, u32)> = listeners
        .iter()
        .filter(|(k, l)| wanted.get(k) != Some(&(l.info.service.clone(), l.info.target_port)))
        .map(|(k, _)| *k)
        .collect();
    for k in stale {
        if let Some(l) = listeners.remove(&k) {
            tracing::info!(port = k.1, protocol = k.0.as_str(), service = %l.info.service, "mesh: port closed");
            l.task.abort();
        }
    }
    let mut errors = lock(&shared.errors);
    errors.retain(|k, _| wanted.contains_key(k));
    for (key, (service, target_port)) in wanted {
        if listeners.contains_key(&key) {
            continue;
        }
        let Some(pool) = read(&shared.pools).get(&service).cloned() else { continue };
        let (protocol, port) = key;
        let Ok(port16) = u16::try_from(port) else {
            errors.insert(key, format!("published port {port} is not a port"));
            continue;
        };
        let bind = SocketAddr::new(shared.config.listen_ip, port16);
        let bound = match protocol {
            Protocol::Tcp => bind_tcp(bind).map(|l| {
                let addr = l.local_addr().unwrap_or(bind);
                (addr, tokio::spawn(serve_tcp(shared.clone(), pool, l, target_port)))
            }),
            Protocol::Udp => bind_udp(bind).map(|s| {
                let addr = s.local_addr().unwrap_or(bind);
                (addr, tokio::spawn(serve_udp(shared.clone(), pool, s, target_port)))
            }),
        };
        match bound {
            Ok((addr, task)) => {
                errors.remove(&key);
                tracing::info!(%addr, protocol = protocol.as_str(), %service, "mesh: port open");
                listeners.insert(
                    key,
                    ListenerEntry { info: Listening { protocol, port, service, target_port, addr }, task },
                );
            }
            Err(e) => {
                let msg = format!("cannot listen on {bind}/{} for service {service:?}: {e}", protocol.as_str());
                if errors.get(&key) != Some(&msg) {
                    tracing::warn!(error = %msg, "mesh: port not served");
                }
                errors.insert(key, msg);
            }
        }
    }
}

/// Replaces each service's backend set; services not in `services` lose
/// their pool and their backends drain.
pub(crate) fn update_pools(shared: &Arc<Shared>, services: &[ServiceEndpoints]) {
    for se in services {
        update_pool(shared, se);
    }
    let gone: Vec<(String, Arc<Pool>)> = {
        let mut pools = write(&shared.pools);
        let names: Vec<String> = pools.keys().filter(|k| !services.iter().any(|s| &s.name == *k)).cloned().collect();
        names.into_iter().filter_map(|n| pools.remove(&n).map(|p| (n, p))).collect()
    };
    for (name, pool) in gone {
        let grace = *lock(&pool.grace);
        let old = std::mem::take(&mut *write(&pool.backends));
        for b in old {
            start_drain(shared, &name, b, grace);
        }
    }
}

pub(crate) fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    TcpListener::from_std(s.into())
}

pub(crate) fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = std::net::UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

fn update_pool(shared: &Arc<Shared>, se: &ServiceEndpoints) {
    let pool = write(&shared.pools).entry(se.name.clone()).or_default().clone();
    *lock(&pool.grace) = se.stop_grace_period;
    let mut backends = write(&pool.backends);
    let mut fresh = Vec::with_capacity(se.endpoints.len());
    for e in &se.endpoints {
        let kept = backends.iter().find(|b| b.task_id == e.task_id && b.addr == e.addr).cloned();
        let revived = || {
            let mut draining = lock(&shared.draining);
            match draining.get(&(se.name.clone(), e.task_id.clone())) {
                Some((b, _)) if b.addr == e.addr && !*b.close.borrow() => {
                    draining.remove(&(se.name.clone(), e.task_id.clone())).map(|(b, timer)| {
                        timer.abort();
                        tracing::debug!(service = %se.name, task = %e.task_id, "mesh: endpoint back, drain cancelled");
                        b
                    })
                }
                _ => None,
            }
        };
        fresh.push(kept.or_else(revived).unwrap_or_else(|| Backend::new(e.task_id.clone(), e.addr)));
    }
    let removed: Vec<Arc<Backend>> =
        backends.iter().filter(|b| !fresh.iter().any(|f| Arc::ptr_eq(f, b))).cloned().collect();
    *backends = fresh;
    drop(backends);
    for b in removed {
        start_drain(shared, &se.name, b, se.stop_grace_period);
    }
}

/// Out of the set: no new connection; open ones are closed after `grace`.
fn start_drain(shared: &Arc<Shared>, service: &str, b: Arc<Backend>, grace: Duration) {
    tracing::debug!(%service, task = %b.task_id, open = b.active.load(Ordering::SeqCst), ?grace, "mesh: draining");
    let key = (service.to_string(), b.task_id.clone());
    let s = shared.clone();
    let (b2, k2) = (b.clone(), key.clone());
    let timer = tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        b2.close.send_replace(true);
        let mut draining = lock(&s.draining);
        if draining.get(&k2).is_some_and(|(x, _)| Arc::ptr_eq(x, &b2)) {
            draining.remove(&k2);
        }
    });
    if let Some((_, old)) = lock(&shared.draining).insert(key, (b, timer)) {
        old.abort();
    }
}

pub(crate) async fn serve_tcp(shared: Arc<Shared>, pool: Arc<Pool>, listener: TcpListener, target_port: u32) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                let _ = client.set_nodelay(true);
                tokio::spawn(forward_tcp(shared.clone(), pool.clone(), client, target_port));
            }
            Err(e) => {
                // Out of fds and the like: back off a little.
                tracing::warn!(error = %e, "mesh: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn forward_tcp(shared: Arc<Shared>, pool: Arc<Pool>, client: TcpStream, target_port: u32) {
    let cfg = &shared.config;
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    for _ in 0..cfg.connect_attempts.max(1) {
        let Some(b) = pool.pick(cfg.balance, &tried) else { break };
        let guard = ActiveGuard::new(&b);
        let mut close = b.close.subscribe();
        if *close.borrow_and_update() {
            tried.push(b);
            continue;
        }
        let to = SocketAddr::new(cfg.reach(b.addr), target_port as u16);
        match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(to)).await {
            Ok(Ok(up)) => {
                let _ = up.set_nodelay(true);
                b.total.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    r = copy(cfg.copy, client, up) => {
                        if let Err(e) = r {
                            tracing::trace!(error = %e, backend = %to, "mesh: connection ended with an error");
                        }
                    }
                    _ = closed(&mut close) => {
                        tracing::debug!(backend = %to, "mesh: connection closed at the end of the drain");
                    }
                }
                drop(guard);
                return;
            }
            Ok(Err(e)) => tracing::debug!(error = %e, backend = %to, "mesh: connect failed, trying another backend"),
            Err(_) => tracing::debug!(backend = %to, "mesh: connect timed out, trying another backend"),
        }
        drop(guard);
        tried.push(b);
    }
    // Per client connection, so not louder than debug (a service with no
    // endpoint would flood the log).
    tracing::debug!(tried = tried.len(), "mesh: no backend accepted the connection; client closed");
}

async fn copy(mode: CopyMode, mut client: TcpStream, mut up: TcpStream) -> std::io::Result<()> {
    match mode {
        #[cfg(target_os = "linux")]
        CopyMode::Splice => crate::splice::splice_bidirectional(&client, &up).await.map(|_| ()),
        #[cfg(not(target_os = "linux"))]
        CopyMode::Splice => {
            tokio::io::copy_bidirectional_with_sizes(&mut client, &mut up, 256 * 1024, 256 * 1024).await.map(|_| ())
        }
        CopyMode::Userspace { buffer } => {
            tokio::io::copy_bidirectional_with_sizes(&mut client, &mut up, buffer, buffer).await.map(|_| ())
        }
    }
}

struct Flow {
    up: Arc<UdpSocket>,
    last: Arc<Mutex<Instant>>,
}

pub(crate) async fn serve_udp(shared: Arc<Shared>, pool: Arc<Pool>, sock: UdpSocket, target_port: u32) {
    let sock = Arc::new(sock);
    let flows: Arc<Mutex<HashMap<SocketAddr, Flow>>> = Arc::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, client) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "mesh: udp receive failed");
                continue;
            }
        };
        let existing = lock(&flows).get(&client).map(|f| {
            touch(&f.last);
            f.up.clone()
        });
        let up = match existing {
            Some(up) => up,
            None => match open_flow(&shared, &pool, &sock, &flows, client, target_port).await {
                Some(up) => up,
                None => continue,
            },
        };
        if let Err(e) = up.send(&buf[..n]).await {
            tracing::debug!(error = %e, %client, "mesh: udp forward failed");
        }
    }
}

async fn open_flow(
    shared: &Arc<Shared>,
    pool: &Arc<Pool>,
    sock: &Arc<UdpSocket>,
    flows: &Arc<Mutex<HashMap<SocketAddr, Flow>>>,
    client: SocketAddr,
    target_port: u32,
) -> Option<Arc<UdpSocket>> {
    let Some(b) = pool.pick(shared.config.balance, &[]) else {
        tracing::debug!(%client, "mesh: udp packet dropped, no endpoint");
        return None;
    };
    let to = SocketAddr::new(shared.config.reach(b.addr), target_port as u16);
    let local: SocketAddr = if to.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let up = match UdpSocket::bind(local).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "mesh: udp flow socket");
            return None;
        }
    };
    if let Err(e) = up.connect(to).await {
        tracing::debug!(error = %e, backend = %to, "mesh: udp connect");
        return None;
    }
    let up = Arc::new(up);
    let last = Arc::new(Mutex::new(Instant::now()));
    lock(flows).insert(client, Flow { up: up.clone(), last: last.clone() });
    b.total.fetch_add(1, Ordering::Relaxed);
    let guard = ActiveGuard::new(&b);
    let (up2, sock, flows, idle) = (up.clone(), sock.clone(), flows.clone(), shared.config.udp_flow_idle);
    let mut close = b.close.subscribe();
    tokio::spawn(async move {
        let _guard = guard;
        let mut buf = vec![0u8; 65536];
        loop {
            let deadline = Instant::now() + idle.saturating_sub(idle_for(&last));
            tokio::select! {
                r = up2.recv(&mut buf) => match r {
                    Ok(n) => {
                        touch(&last);
                        let _ = sock.send_to(&buf[..n], client).await;
                    }
                    Err(e) => { tracing::debug!(error = %e, "mesh: udp reply"); break; }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if idle_for(&last) >= idle { break; }
                }
                _ = closed(&mut close) => break,
            }
        }
        let mut flows = lock(&flows);
        if flows.get(&client).is_some_and(|f| Arc::ptr_eq(&f.up, &up2)) {
            flows.remove(&client);
        }
    });
    Some(up)
}

fn touch(last: &Mutex<Instant>) {
    *lock(last) = Instant::now();
}

fn idle_for(last: &Mutex<Instant>) -> Duration {
    let at = *lock(last);
    Instant::now().saturating_duration_since(at)
}

/// Resolves once the backend's drain is over (or the mesh is gone).
async fn closed(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|c| *c).await;
}
