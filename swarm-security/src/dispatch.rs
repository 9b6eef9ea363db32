//! The dispatcher over the network: [`DispatcherService`] serves a
//! manager's [`Dispatcher`] on the node API ([`crate::rpc`]), and
//! [`RemoteDispatcher`] is the [`Dispatcher`] a worker's unchanged
//! [`Agent`](swarm_core::agent::Agent) uses to reach it.
//!
//! # What is authenticated
//!
//! Identity comes from the client certificate the TLS handshake verified,
//! never from a message. Only manager and worker certificates of the
//! cluster may call; a client without a certificate is refused with
//! [`Code::Unauthenticated`]. A node opens a session only for itself: an
//! `open_session` whose `node_id` is not the certificate's CN is refused
//! with [`Code::PermissionDenied`]. The service remembers which node opened
//! each session id, and serves `heartbeat`, `update_task_status` and
//! `assignments` only to that node. A session id the caller's node did not
//! open on this manager, whether another node's or unknown, gets the same
//! answer ([`Code::PermissionDenied`], detail
//! [`DispatchError::InvalidSession`]): the answer does not tell whether
//! the session exists, and the worker opens a new session of its own. The
//! table keeps one session per node (a node's new session replaces its
//! old one), so it is bounded by the number of nodes.
//!
//! # Followers redirect
//!
//! Only the leader's dispatcher serves sessions (its node-health loop runs
//! only while it leads). A manager that does not lead answers every call
//! with [`Code::NotLeader`] and, when it knows the leader, the leader's API
//! address in [`Fault::redirect`]. Followers redirect rather than proxy:
//! a proxy would double the hops of every heartbeat and tie each worker's
//! session to two connections, while a redirect costs one extra round trip
//! per change of leader. An assignment stream served while the manager
//! leads ends with the same fault when it stops leading.
//!
//! # The manager list
//!
//! The answers to `open_session` and `heartbeat` carry the API addresses of
//! the cluster's managers ([`OpenSessionReply::managers`],
//! [`HeartbeatReply::managers`]). A [`RemoteDispatcher`] replaces its own
//! list with every non-empty one it receives, so a worker that joined
//! through one manager learns where to go when that one is gone.
//!
//! # Switching managers, with backoff
//!
//! A [`RemoteDispatcher`] talks to one manager at a time. When it cannot
//! reach it (connect, handshake, broken connection, timeout) or is told
//! [`Code::NotLeader`] or [`Code::Unavailable`], it switches: to the
//! redirect when one is given, else to the next manager of its list, and
//! retries the call there (at most a few managers per call). Consecutive
//! failures space the attempts out by a capped exponential [`Backoff`]
//! (100 ms doubling to 5 s by default, and never more than the heartbeat
//! period the managers gave), with jitter drawn from a generator
//! seeded by the OS or by [`RemoteDispatcher::with_seed`]; the first
//! redirect after a success is followed at once. Errors reach the agent as
//! [`DispatchError`]s: transport failures as
//! [`DispatchError::Unavailable`], the manager's own errors unchanged.
//! Sessions live in the leader's memory, so after a switch the new manager
//! answers the old session's calls with [`DispatchError::InvalidSession`]
//! and the agent opens a new session there.
//!
//! # Example
//!
//! A manager serving its dispatcher on loopback, and a worker's session
//! through it:
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::{Duration, SystemTime};
//! use swarm_core::dispatcher::{Dispatcher, SessionRequest};
//! use swarm_core::manager::Manager;
//! use swarm_core::scheduler::FirstFit;
//! use swarm_core::store::MemStore;
//! use swarm_security::ca::{ClusterCa, NodeCsr};
//! use swarm_security::dispatch::{DispatcherService, RemoteDispatcher, SERVICE};
//! use swarm_security::role::Role;
//! use swarm_security::rpc::{Reloadable, Router, RpcServer, ServerLimits};
//! use swarm_security::tls::{PeerPolicy, TlsCredentials, client_config, server_config_optional_client};
//!
//! let ca = ClusterCa::generate("c1", Duration::from_secs(86_400))?;
//! let creds = |node: &str, role| -> Result<TlsCredentials, Box<dyn std::error::Error>> {
//!     let csr = NodeCsr::generate(node)?;
//!     let cert = ca.sign_node_csr(csr.csr_pem(), node, role, None, SystemTime::now())?;
//!     Ok(TlsCredentials::from_pem(ca.cert_pem(), cert.cert_pem(), &csr.key_pem())?)
//! };
//!
//! // The manager: its dispatcher behind the node API listener.
//! let manager = Manager::start(Arc::new(MemStore::new()), Box::new(FirstFit), Default::default());
//! let (_leads, leadership) = tokio::sync::watch::channel(true);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?.to_string();
//! let service = DispatcherService::new(Arc::new(manager.dispatcher()), leadership)
//!     .with_managers({ let a = addr.clone(); move || vec![a.clone()] });
//! let router = Arc::new(Router::new().route(SERVICE, Arc::new(service)));
//! let tls = Reloadable::new(server_config_optional_client(&creds("m1", Role::Manager)?, PeerPolicy::nodes("c1"))?);
//! tokio::spawn(RpcServer::serve(listener, tls, router, ServerLimits::default()));
//!
//! // The worker: a session for the node its certificate names.
//! let remote = RemoteDispatcher::new(vec![addr.clone()], Reloadable::new(client_config(&creds("w1", Role::Worker)?)?));
//! let req = SessionRequest { node_id: "w1".into(), description: Default::default(), addr: "10.0.0.2".into() };
//! let session = remote.open_session(req).await?;
//! remote.heartbeat(&session.session_id).await?;
//! assert_eq!(remote.managers(), vec![addr]);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rustls::ClientConfig;
use serde::{Deserialize, Serialize};
use swarm_core::dispatcher::{
    AssignmentStream, Assignments, DispatchError, Dispatcher, HeartbeatResponse, SessionInfo, SessionRequest,
    TaskStatusUpdate,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::role::Role;
use crate::rotation::CaHint;
use crate::rpc::{self, Code, Fault, Handler, Peer, Reloadable, Reply, RpcClient, RpcError};

/// The service name of the dispatcher on the node API (`dispatcher.*`).
pub const SERVICE: &str = "dispatcher";

const OPEN_SESSION: &str = "dispatcher.open_session";
const HEARTBEAT: &str = "dispatcher.heartbeat";
const UPDATE_TASK_STATUS: &str = "dispatcher.update_task_status";
const ASSIGNMENTS: &str = "dispatcher.assignments";

/// Answer to `dispatcher.open_session` (whose request is a
/// [`SessionRequest`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenSessionReply {
    /// The session.
    pub info: SessionInfo,
    /// The API addresses of the cluster's managers, for the worker to
    /// reconnect to.
    pub managers: Vec<String>,
}

/// Answer to `dispatcher.heartbeat`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The dispatcher's answer.
    pub response: HeartbeatResponse,
    /// The API addresses of the cluster's managers.
    pub managers: Vec<String>,
    /// The node's role as the managers record it (`manager` | `worker`),
    /// when known: a node whose recorded role differs from its
    /// certificate's was promoted or demoted, and renews its certificate
    /// to take the new role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The roots to trust and the root that signs now, as digests: a node
    /// whose trusted roots or certificate differ refreshes them (a CA
    /// rotation started or finished; see [`crate::rotation`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaHint>,
}

/// Request of `dispatcher.heartbeat` and `dispatcher.assignments` (a
/// stream of [`Assignments`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionCall {
    /// The session, as `open_session` returned it.
    pub session_id: String,
}

/// Request of `dispatcher.update_task_status` (answered with `null`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The session, as `open_session` returned it.
    pub session_id: String,
    /// The task statuses.
    pub updates: Vec<TaskStatusUpdate>,
}

type LeaderAddr = Arc<dyn Fn() -> Option<String> + Send + Sync>;
type ManagerAddrs = Arc<dyn Fn() -> Vec<String> + Send + Sync>;
type Roles = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;
type CaHints = Arc<dyn Fn() -> Option<CaHint> + Send + Sync>;

/// Which node opened which session on this manager: one session per
/// node, so the table is bounded by the number of nodes.
#[derive(Default)]
struct Owners {
    by_session: HashMap<String, String>,
    by_node: HashMap<String, String>,
}

impl Owners {
    fn opened(&mut self, node: &str, session_id: &str) {
        if let Some(old) = self.by_node.insert(node.to_owned(), session_id.to_owned()) {
            self.by_session.remove(&old);
        }
        self.by_session.insert(session_id.to_owned(), node.to_owned());
    }

    fn owner(&self, session_id: &str) -> Option<&str> {
        self.by_session.get(session_id).map(String::as_str)
    }

    fn forget(&mut self, session_id: &str) {
        let Some(node) = self.by_session.remove(session_id) else { return };
        if self.by_node.get(&node).map(String::as_str) == Some(session_id) {
            self.by_node.remove(&node);
        }
    }
}

/// The `dispatcher` service of the node API: serves a manager's
/// [`Dispatcher`] to the nodes whose certificates say who they are. See
/// the [module docs](self) for what it checks.
///
/// Route it with `Router::new().route(SERVICE, Arc::new(service))`.
pub struct DispatcherService {
    dispatcher: Arc<dyn Dispatcher>,
    leadership: watch::Receiver<bool>,
    leader_addr: LeaderAddr,
    managers: ManagerAddrs,
    roles: Roles,
    ca: CaHints,
    owners: Mutex<Owners>,
}

impl std::fmt::Debug for DispatcherService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherService")
            .field("leads", &*self.leadership.borrow())
            .field("sessions", &self.lock().by_session.len())
            .finish()
    }
}

impl DispatcherService {
    /// Serves `dispatcher` while `leadership` is true (the manager's
    /// [`Store::leadership`](swarm_core::store::Store::leadership)). It
    /// knows no leader address and no manager list until told with
    /// [`with_leader`](Self::with_leader) and
    /// [`with_managers`](Self::with_managers).
    pub fn new(dispatcher: Arc<dyn Dispatcher>, leadership: watch::Receiver<bool>) -> Self {
        DispatcherService {
            dispatcher,
            leadership,
            leader_addr: Arc::new(|| None),
            managers: Arc::new(Vec::new),
            roles: Arc::new(|_| None),
            ca: Arc::new(|| None),
            owners: Mutex::new(Owners::default()),
        }
    }

    /// Where the leader's API is, asked on every call refused because this
    /// manager does not lead (`None` while unknown, e.g. during an
    /// election).
    pub fn with_leader(mut self, leader_addr: impl Fn() -> Option<String> + Send + Sync + 'static) -> Self {
        self.leader_addr = Arc::new(leader_addr);
        self
    }

    /// The API addresses of the cluster's managers, asked for every
    /// `open_session` and `heartbeat` answer.
    pub fn with_managers(mut self, managers: impl Fn() -> Vec<String> + Send + Sync + 'static) -> Self {
        self.managers = Arc::new(managers);
        self
    }

    /// The role the managers record for a node (asked for every
    /// `heartbeat` answer; see [`HeartbeatReply::role`]).
    pub fn with_roles(mut self, roles: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        self.roles = Arc::new(roles);
        self
    }

    /// The CA hint for every `heartbeat` answer (see [`HeartbeatReply::ca`];
    /// [`crate::rotation::hint`] of the manager's replica).
    pub fn with_ca_hint(mut self, hint: impl Fn() -> Option<CaHint> + Send + Sync + 'static) -> Self {
        self.ca = Arc::new(hint);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Owners> {
        // Every critical section leaves the two maps consistent.
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_leader(&self) -> Result<(), Fault> {
        if *self.leadership.borrow() { Ok(()) } else { Err(not_leader(&self.leader_addr)) }
    }

    /// The session is one `node` opened here; otherwise the same refusal
    /// whether it is another node's or unknown.
    fn check_owner(&self, node: &str, session_id: &str) -> Result<(), Fault> {
        match self.lock().owner(session_id) {
            Some(owner) if owner == node => return Ok(()),
            Some(owner) => {
                tracing::warn!(node, owner, "dispatcher: a node presented another node's session; refused")
            }
            None => tracing::debug!(node, "dispatcher: unknown session presented; refused"),
        }
        Err(Fault {
            code: Code::PermissionDenied,
            message: format!("node {node} has no session {session_id} on this manager; open a session"),
            redirect: None,
            detail: serde_json::to_value(DispatchError::InvalidSession(session_id.to_owned())).ok(),
        })
    }

    /// The dispatcher's error as a fault; a session the dispatcher does
    /// not know any more is forgotten here too.
    fn failed(&self, session_id: &str, e: DispatchError) -> Fault {
        if matches!(e, DispatchError::InvalidSession(_) | DispatchError::NodeRemoved(_)) {
            self.lock().forget(session_id);
        }
        Fault::service(e.to_string(), &e)
    }

    /// Forwards a session's assignments to the connection until the
    /// session ends, the client goes away, or this manager stops leading.
    fn forward(&self, mut stream: AssignmentStream) -> mpsc::Receiver<Result<rpc::Body, Fault>> {
        let (tx, rx) = mpsc::channel(16);
        let mut leadership = self.leadership.clone();
        let leader_addr = self.leader_addr.clone();
        tokio::spawn(async move {
            let mut watching = true;
            loop {
                tokio::select! {
                    msg = stream.next() => {
                        let Some(msg) = msg else { return };
                        let item = serde_json::value::to_raw_value(&msg)
                            .map_err(|e| Fault::new(Code::Service, format!("cannot encode assignments: {e}")));
                        let failed = item.is_err();
                        if tx.send(item).await.is_err() || failed {
                            return;
                        }
                    }
                    changed = leadership.changed(), if watching => match changed {
                        // The leadership can no longer change: keep serving.
                        Err(_) => watching = false,
                        Ok(()) => {
                            if !*leadership.borrow_and_update() {
                                let _ = tx.send(Err(not_leader(&leader_addr))).await;
                                return;
                            }
                        }
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        rx
    }
}

fn not_leader(leader_addr: &LeaderAddr) -> Fault {
    let leader = leader_addr().filter(|a| !a.is_empty());
    let message = match &leader {
        Some(a) => format!("this manager does not lead; the leader's API is at {a}"),
        None => "this manager does not lead and knows no leader now".to_owned(),
    };
    Fault { code: Code::NotLeader, message, redirect: leader, detail: None }
}

#[async_trait]
impl Handler for DispatcherService {
    async fn call(&self, peer: &Peer, method: &str, body: rpc::Body) -> Result<Reply, Fault> {
        let node = peer.require(&[Role::Manager, Role::Worker], "the dispatcher")?.node_id.clone();
        self.check_leader()?;
        match method {
            "open_session" => {
                let req: SessionRequest = rpc::body(method, body)?;
                if req.node_id.as_str() != node {
                    tracing::warn!(node, asked = %req.node_id, "dispatcher: session for another node refused");
                    return Err(Fault::new(
                        Code::PermissionDenied,
                        format!(
                            "node {node} cannot open a session for node {}: a node opens sessions only for the node its certificate names",
                            req.node_id
                        ),
                    ));
                }
                let info = self.dispatcher.open_session(req).await.map_err(|e| Fault::service(e.to_string(), &e))?;
                self.lock().opened(&node, &info.session_id);
                tracing::debug!(node, "dispatcher: session opened");
                Reply::unary(&OpenSessionReply { info, managers: (self.managers)() })
            }
            "heartbeat" => {
                let req: SessionCall = rpc::body(method, body)?;
                self.check_owner(&node, &req.session_id)?;
                let response =
                    self.dispatcher.heartbeat(&req.session_id).await.map_err(|e| self.failed(&req.session_id, e))?;
                Reply::unary(&HeartbeatReply {
                    response,
                    managers: (self.managers)(),
                    role: (self.roles)(&node),
                    ca: (self.ca)(),
                })
            }
            "update_task_status" => {
                let req: StatusReport = rpc::body(method, body)?;
                self.check_owner(&node, &req.session_id)?;
                self.dispatcher
                    .update_task_status(&req.session_id, req.updates)
                    .await
                    .map_err(|e| self.failed(&req.session_id, e))?;
                Reply::unary(&())
            }
            "assignments" => {
                let req: SessionCall = rpc::body(method, body)?;
                self.check_owner(&node, &req.session_id)?;
                let stream =
                    self.dispatcher.assignments(&req.session_id).await.map_err(|e| self.failed(&req.session_id, e))?;
                Ok(Reply::Stream(self.forward(stream)))
            }
            other => Err(Fault::new(Code::UnknownMethod, format!("the dispatcher has no method {other:?}"))),
        }
    }
}

/// Capped exponential backoff between attempts on failing managers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The wait ceiling after the first failure.
    pub initial: Duration,
    /// The largest wait ceiling.
    pub max: Duration,
}

impl Default for Backoff {
    /// 100 ms doubling to 5 s.
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(5) }
    }
}

impl Backoff {
    /// The wait ceiling after `failures` failures in a row: zero for none,
    /// `initial` for one, doubling with each further one, at most `max`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (failures - 1).min(20);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait after `failures` failures in a row, for a jitter `unit` in
    /// `[0, 1)`: half the ceiling plus up to half again, so that workers
    /// that lost the same manager do not all come back at once.
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(failures);
        let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.0 };
        ceiling / 2 + (ceiling / 2).mul_f64(unit)
    }
}

/// A small seedable generator (SplitMix64) for the jitter: no security
/// role, so a seed may be fixed.
#[derive(Debug)]
struct Jitter(u64);

impl Jitter {
    fn from_os() -> Self {
        let mut b = [0u8; 8];
        if let Err(e) = getrandom::getrandom(&mut b) {
            tracing::debug!(error = %e, "no OS randomness for the backoff jitter; using the clock");
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            b = nanos.to_le_bytes();
        }
        Jitter(u64::from_le_bytes(b))
    }

    /// A number in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Which manager a [`RemoteDispatcher`] talks to, and how patiently.
#[derive(Debug)]
struct Route {
    managers: Vec<String>,
    current: Option<String>,
    client: Option<(String, Arc<RpcClient>)>,
    failures: u32,
    not_before: Option<Instant>,
    jitter: Jitter,
    role: Option<String>,
    ca: Option<CaHint>,
    /// The heartbeat period the managers gave last: caps the backoff.
    heartbeat: Option<Duration>,
}

/// Most managers tried within one call.
const MAX_ATTEMPTS: usize = 8;

/// What to do about a failed call.
enum Failure {
    /// Go to another manager (the redirect, if any) and try again.
    Switch { redirect: Option<String> },
    /// The manager answered: give this to the caller.
    Answer(DispatchError),
}

impl Failure {
    fn of(e: &RpcError) -> Failure {
        if let Some(fault) = e.fault() {
            return match fault.code {
                Code::NotLeader => Failure::Switch { redirect: fault.redirect.clone().filter(|a| !a.is_empty()) },
                Code::Unavailable => Failure::Switch { redirect: None },
                _ => Failure::Answer(match fault.detail_as::<crate::ca_service::CaRefusal>() {
                    // The deny-list refused this node: it was removed, and
                    // the agent must stop rather than retry forever.
                    Some(crate::ca_service::CaRefusal::Removed { node_id }) => DispatchError::NodeRemoved(node_id),
                    _ => {
                        fault.detail_as::<DispatchError>().unwrap_or_else(|| DispatchError::Unavailable(e.to_string()))
                    }
                }),
            };
        }
        if e.is_unreachable() || matches!(e, RpcError::Handshake { .. }) {
            Failure::Switch { redirect: None }
        } else {
            Failure::Answer(DispatchError::Unavailable(e.to_string()))
        }
    }
}

/// The manager after `from` in `managers` (the first if `from` is not in
/// it; `from` itself if the list is empty).
fn next_after(managers: &[String], from: &str) -> String {
    match managers.iter().position(|m| m == from) {
        Some(i) => managers[(i + 1) % managers.len()].clone(),
        None => managers.first().cloned().unwrap_or_else(|| from.to_owned()),
    }
}

/// A [`Dispatcher`] on the managers' node API: what a worker's
/// [`Agent`](swarm_core::agent::Agent) uses when its managers are other
/// processes. See the [module docs](self) for how it picks a manager.
#[derive(Debug)]
pub struct RemoteDispatcher {
    tls: Arc<Reloadable<ClientConfig>>,
    backoff: Backoff,
    call_timeout: Duration,
    route: Mutex<Route>,
}

impl RemoteDispatcher {
    /// A dispatcher reaching the managers at `managers` (`host:port`,
    /// resolved on each connection), starting with the first, presenting
    /// and trusting what `tls` holds. Manager certificates are checked for
    /// the name `swarm-manager`.
    pub fn new(managers: Vec<String>, tls: Arc<Reloadable<ClientConfig>>) -> Self {
        let current = managers.first().cloned();
        RemoteDispatcher {
            tls,
            backoff: Backoff::default(),
            call_timeout: Duration::from_secs(10),
            route: Mutex::new(Route {
                managers,
                current,
                client: None,
                failures: 0,
                not_before: None,
                jitter: Jitter::from_os(),
                role: None,
                ca: None,
                heartbeat: None,
            }),
        }
    }

    /// Spaces attempts out by `backoff` instead of the default.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Draws the backoff jitter from a generator seeded with `seed`
    /// instead of the OS.
    pub fn with_seed(self, seed: u64) -> Self {
        self.lock().jitter = Jitter(seed);
        self
    }

    /// The time a unary call (and a stream's first message) may take on
    /// one manager before it counts as unreachable (default 10 s).
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Route> {
        // Every critical section leaves the route whole.
        self.route.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The manager the next call goes to.
    pub fn current_manager(&self) -> Option<String> {
        self.lock().current.clone()
    }

    /// The managers known now (the last list a manager sent, or the one
    /// given at construction).
    pub fn managers(&self) -> Vec<String> {
        self.lock().managers.clone()
    }

    /// The node's role as the managers last recorded it (from heartbeat
    /// answers; `None` before the first, or when the managers do not say).
    pub fn recorded_role(&self) -> Option<String> {
        self.lock().role.clone()
    }

    /// What the managers last said about the CA (from heartbeat answers;
    /// `None` before the first, or when the managers do not say).
    pub fn ca_hint(&self) -> Option<CaHint> {
        self.lock().ca.clone()
    }

    /// Adds managers to the list (those not already in it), e.g. the
    /// node's own API address once it became a manager, or the members a
    /// demoted manager knew: a node whose only known manager goes away
    /// between two heartbeats still has somewhere to go.
    pub fn add_managers(&self, managers: impl IntoIterator<Item = String>) {
        let mut route = self.lock();
        for m in managers {
            if !route.managers.contains(&m) {
                route.managers.push(m);
            }
        }
    }

    /// Replaces the manager list with a manager's answer (unless empty).
    fn learn(&self, managers: Vec<String>) {
        if managers.is_empty() {
            return;
        }
        let mut route = self.lock();
        if route.managers != managers {
            tracing::debug!(?managers, "dispatcher: manager list updated");
            route.managers = managers;
        }
    }

    /// The client of the current manager, made (and its address resolved)
    /// if needed. `Err` carries the address and why it cannot be used.
    async fn client(&self) -> Result<(String, Arc<RpcClient>), (String, String)> {
        let addr = {
            let route = self.lock();
            let Some(addr) = route.current.clone() else {
                return Err((String::new(), "no manager address is known".to_owned()));
            };
            if let Some((a, c)) = &route.client {
                if *a == addr {
                    return Ok((addr, c.clone()));
                }
            }
            addr
        };
        let resolved = tokio::net::lookup_host(addr.as_str())
            .await
            .map_err(|e| (addr.clone(), format!("cannot resolve {addr}: {e}")))?
            .next()
            .ok_or_else(|| (addr.clone(), format!("{addr} resolves to no address")))?;
        let client = RpcClient::new(resolved, Role::Manager.server_name(), self.tls.clone())
            .map_err(|e| (addr.clone(), e.to_string()))?
            .with_timeout(self.call_timeout);
        let client = Arc::new(client);
        let mut route = self.lock();
        if route.current.as_deref() == Some(addr.as_str()) {
            route.client = Some((addr.clone(), client.clone()));
        }
        Ok((addr, client))
    }

    /// Waits out the backoff of the failures so far.
    async fn wait_turn(&self) {
        let not_before = self.lock().not_before;
        if let Some(t) = not_before {
            tokio::time::sleep_until(t).await;
        }
    }

    fn reached(&self) {
        let mut route = self.lock();
        route.failures = 0;
        route.not_before = None;
    }

    /// Leaves `from` for `redirect` or the next manager, unless another
    /// call already left it.
    fn switch(&self, from: &str, redirect: Option<String>, why: &str) {
        let mut route = self.lock();
        if route.current.as_deref() != Some(from) {
            return;
        }
        let redirected = redirect.is_some();
        let to = redirect.unwrap_or_else(|| next_after(&route.managers, from));
        route.failures = route.failures.saturating_add(1);
        let delay = if redirected && route.failures == 1 {
            Duration::ZERO
        } else {
            let unit = route.jitter.unit();
            let delay = self.backoff.delay(route.failures, unit);
            // Never wait longer than a heartbeat period between attempts:
            // the managers declare a node down after a few missed
            // heartbeats, and a worker bouncing between managers during an
            // election must reach the new leader within that grace (Swarm
            // keeps its 8 s cap under its 15 s grace).
            match route.heartbeat {
                Some(period) if !period.is_zero() => delay.min(period),
                _ => delay,
            }
        };
        route.not_before = Some(Instant::now() + delay);
        tracing::info!(from, to = %to, ?delay, reason = why, "dispatcher: switching manager");
        route.current = Some(to);
        route.client = None;
    }

    /// Runs `op` on the current manager, switching managers as the
    /// [module docs](self) say.
    async fn with_manager<T, F, Fut>(&self, method: &str, op: F) -> Result<T, DispatchError>
    where
        F: Fn(Arc<RpcClient>) -> Fut,
        Fut: Future<Output = Result<T, RpcError>>,
    {
        let attempts = (self.lock().managers.len() + 2).min(MAX_ATTEMPTS);
        let mut last = String::new();
        for _ in 0..attempts {
            self.wait_turn().await;
            let (addr, client) = match self.client().await {
                Ok(c) => c,
                Err((addr, reason)) => {
                    self.switch(&addr, None, &reason);
                    last = reason;
                    continue;
                }
            };
            match op(client).await {
                Ok(v) => {
                    self.reached();
                    return Ok(v);
                }
                Err(e) => match Failure::of(&e) {
                    Failure::Switch { redirect } => {
                        last = e.to_string();
                        self.switch(&addr, redirect, &last);
                    }
                    Failure::Answer(err) => {
                        self.reached();
                        return Err(err);
                    }
                },
            }
        }
        tracing::warn!(method, error = %last, "dispatcher: no manager could serve the call");
        Err(DispatchError::Unavailable(format!("{method}: no manager could serve the call; last: {last}")))
    }
}

#[async_trait]
impl Dispatcher for RemoteDispatcher {
    async fn open_session(&self, req: SessionRequest) -> Result<SessionInfo, DispatchError> {
        let req = &req;
        let reply: OpenSessionReply =
            self.with_manager(OPEN_SESSION, |c| async move { c.call(OPEN_SESSION, req).await }).await?;
        self.learn(reply.managers);
        self.lock().heartbeat = Some(reply.info.heartbeat_period);
        Ok(reply.info)
    }

    async fn heartbeat(&self, session_id: &str) -> Result<HeartbeatResponse, DispatchError> {
        let req = &SessionCall { session_id: session_id.to_owned() };
        let reply: HeartbeatReply =
            self.with_manager(HEARTBEAT, |c| async move { c.call(HEARTBEAT, req).await }).await?;
        self.learn(reply.managers);
        {
            let mut route = self.lock();
            if let Some(role) = reply.role {
                route.role = Some(role);
            }
            if let Some(ca) = reply.ca {
                route.ca = Some(ca);
            }
            route.heartbeat = Some(reply.response.heartbeat_period);
        }
        Ok(reply.response)
    }

    async fn update_task_status(&self, session_id: &str, updates: Vec<TaskStatusUpdate>) -> Result<(), DispatchError> {
        let req = &StatusReport { session_id: session_id.to_owned(), updates };
        self.with_manager(UPDATE_TASK_STATUS, |c| async move { c.call::<_, ()>(UPDATE_TASK_STATUS, req).await }).await
    }

    async fn assignments(&self, session_id: &str) -> Result<AssignmentStream, DispatchError> {
        let req = &SessionCall { session_id: session_id.to_owned() };
        let timeout = self.call_timeout;
        // The first message (the full set) is awaited here, so that a
        // refusal reaches the caller as an error, not as an empty stream.
        let (mut stream, first) = self
            .with_manager(ASSIGNMENTS, |c| async move {
                let mut stream = c.stream::<_, Assignments>(ASSIGNMENTS, req).await?;
                match tokio::time::timeout(timeout, stream.next()).await {
                    Ok(first) => Ok((stream, first?)),
                    Err(_) => {
                        Err(RpcError::Timeout { addr: c.addr().to_owned(), method: ASSIGNMENTS.to_owned(), timeout })
                    }
                }
            })
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let Some(first) = first else {
            // Ended before its first message: an empty, ended stream.
            return Ok(AssignmentStream::new(rx));
        };
        let _ = tx.send(first);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    item = stream.next() => match item {
                        Ok(Some(msg)) => if tx.send(msg).is_err() { return },
                        Ok(None) => {
                            tracing::debug!("dispatcher: the manager ended the assignment stream");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "dispatcher: assignment stream failed");
                            return;
                        }
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(AssignmentStream::new(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::ZERO);
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(6), Duration::from_millis(3200));
        assert_eq!(b.ceiling(7), Duration::from_secs(5));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(5));
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(200));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(400));
        assert_eq!(b.delay(3, f64::NAN), Duration::from_millis(200));
    }

    #[test]
    fn jitter_is_seeded_and_in_range() {
        let (mut a, mut b) = (Jitter(7), Jitter(7));
        for _ in 0..1000 {
            let x = a.unit();
            assert_eq!(x, b.unit());
            assert!((0.0..1.0).contains(&x));
        }
    }

    #[test]
    fn next_manager_wraps_around() {
        let l = vec!["a:1".to_owned(), "b:1".to_owned()];
        assert_eq!(next_after(&l, "a:1"), "b:1");
        assert_eq!(next_after(&l, "b:1"), "a:1");
        assert_eq!(next_after(&l, "c:1"), "a:1");
        assert_eq!(next_after(&[], "c:1"), "c:1");
    }

    #[test]
    fn owners_keep_one_session_per_node() {
        let mut o = Owners::default();
        o.opened("n1", "s1");
        o.opened("n1", "s2");
        o.opened("n2", "s3");
        assert_eq!(o.owner("s1"), None);
        assert_eq!(o.owner("s2"), Some("n1"));
        assert_eq!(o.by_session.len(), 2);
        o.forget("s2");
        assert_eq!(o.owner("s2"), None);
        assert!(!o.by_node.contains_key("n1"));
        o.forget("s1"); // already replaced: n2 is untouched
        assert_eq!(o.owner("s3"), Some("n2"));
    }
}
