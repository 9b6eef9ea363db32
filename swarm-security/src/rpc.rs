//! The node API's wire: JSON messages in length-prefixed frames
//! ([`swarm_core::frame`]) over TLS 1.3, one listener per manager.
//!
//! Every manager serves one [`RpcServer`] listener. Its TLS configuration
//! ([`crate::tls::server_config_optional_client`]) verifies any client
//! certificate against the cluster CA and also admits clients without one
//! (a node that has not joined yet); each call reaches a [`Handler`] with
//! the [`Peer`] the handshake established, so that *authorization is the
//! handler's*: the dispatcher serves a node only as the node its
//! certificate names, the control API only managers and operators, and
//! anonymous peers may only fetch the CA certificate and send a CSR with a
//! join token.
//!
//! Calls are named `service.method` and routed by service
//! ([`Router`]). A call is unary (one JSON request, one JSON answer) or a
//! stream (one request, then items until the server ends it). A connection
//! carries one call at a time: unary calls share a client's connection
//! (one after another), and a stream takes a connection of its own for as
//! long as it lasts. Errors cross the wire as a [`Fault`], whose `detail`
//! carries a service's own typed error.
//!
//! ```text
//! client -> {"id":7,"method":"dispatcher.heartbeat","body":{...}}
//! server -> {"ok":{"id":7,"body":{...}}}                  unary answer
//! server -> {"item":{"id":7,"body":{...}}} ... {"end":{"id":7}}   stream
//! server -> {"err":{"id":7,"fault":{"code":"permission_denied",...}}}
//! ```
//!
//! Why framed JSON rather than gRPC: the messages are the serde types the
//! in-process traits already use, the frame codec already guards the raft
//! transport against oversized headers, and it keeps tonic, hyper and
//! prost out of the dependency tree. The price is that other languages
//! need this page to talk to a manager.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use swarm_core::frame::{FrameError, read_frame, write_frame};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::identity::NodeIdentity;
use crate::role::Role;

/// Largest message either side accepts (16 MiB).
pub const MAX_MESSAGE: usize = 16 << 20;

/// What kind of failure a [`Fault`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The call needs a certificate and the peer presented none.
    Unauthenticated,
    /// The peer's certificate does not allow this call.
    PermissionDenied,
    /// No such service or method.
    UnknownMethod,
    /// The request could not be read or is invalid.
    BadRequest,
    /// This manager does not lead; `redirect` names the one that does,
    /// when known.
    NotLeader,
    /// The server cannot serve now (shutting down, no quorum, ...).
    Unavailable,
    /// The service refused the call; `detail` carries its typed error.
    Service,
}

/// An error as it crosses the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Fault {
    /// The kind of failure.
    pub code: Code,
    /// A sentence for humans.
    pub message: String,
    /// For [`Code::NotLeader`]: the API address of the leader, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<String>,
    /// For [`Code::Service`]: the service's own error, serialized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

impl Fault {
    /// A fault with no redirect and no detail.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Fault { code, message: message.into(), redirect: None, detail: None }
    }

    /// A [`Code::Service`] fault carrying `detail` (serialized).
    pub fn service(message: impl Into<String>, detail: &impl Serialize) -> Self {
        Fault {
            code: Code::Service,
            message: message.into(),
            redirect: None,
            detail: serde_json::to_value(detail).ok(),
        }
    }

    /// The service error in `detail`, if it is one of `T`.
    pub fn detail_as<T: DeserializeOwned>(&self) -> Option<T> {
        self.detail.clone().and_then(|d| serde_json::from_value(d).ok())
    }
}

/// Who is calling: the address and, when the client presented a
/// certificate, the identity the handshake verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The client's address (`None` on the local Unix socket).
    pub addr: Option<SocketAddr>,
    /// The identity of the client's certificate; `None` for a client
    /// without one, and on the local socket.
    pub identity: Option<NodeIdentity>,
    /// True for a client of the manager's local Unix socket
    /// ([`RpcServer::serve_unix`]): a process of the manager's host
    /// allowed to open a root-only socket, trusted as an operator.
    pub local: bool,
}

impl Peer {
    /// The peer's identity if its role is one of `roles`; otherwise a
    /// [`Code::Unauthenticated`] (no certificate) or
    /// [`Code::PermissionDenied`] fault naming what was presented.
    ///
    /// The local socket's peer has no identity: handlers that admit
    /// operators check [`Peer::local`] first.
    pub fn require(&self, roles: &[Role], what: &str) -> Result<&NodeIdentity, Fault> {
        let Some(id) = &self.identity else {
            return Err(Fault::new(
                Code::Unauthenticated,
                format!("{what} needs a client certificate; none was presented"),
            ));
        };
        if !roles.contains(&id.role) {
            let allowed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            return Err(Fault::new(
                Code::PermissionDenied,
                format!(
                    "{what} is open to {} certificates; node {} presented a {} certificate",
                    allowed.join(" and "),
                    id.node_id,
                    id.role
                ),
            ));
        }
        Ok(id)
    }
}

/// A message body as it crosses the wire: JSON text, encoded once by the
/// sender and decoded once, straight into its type, by the receiver (no
/// intermediate [`Value`] tree on either side).
pub type Body = Box<RawValue>;

/// Encodes `v` as a [`Body`].
pub fn encode(v: &impl Serialize) -> Result<Body, Fault> {
    serde_json::value::to_raw_value(v).map_err(|e| Fault::new(Code::Service, format!("cannot encode the answer: {e}")))
}

/// What a handler answers.
pub enum Reply {
    /// One answer.
    Unary(Body),
    /// Items until the sender is dropped (the stream ends) or sends a
    /// fault (the stream fails). The server stops reading the receiver
    /// when the client goes away, which closes the channel. Items are
    /// encoded by the producer ([`encode`]).
    Stream(mpsc::Receiver<Result<Body, Fault>>),
}

impl Reply {
    /// A unary answer serialized from `v`.
    pub fn unary(v: &impl Serialize) -> Result<Reply, Fault> {
        encode(v).map(Reply::Unary)
    }
}

/// Reads a request body as `T`, or a [`Code::BadRequest`] fault naming
/// the method and what was wrong.
pub fn body<T: DeserializeOwned>(method: &str, body: impl AsRef<RawValue>) -> Result<T, Fault> {
    serde_json::from_str(body.as_ref().get())
        .map_err(|e| Fault::new(Code::BadRequest, format!("{method}: cannot read the request: {e}")))
}

fn null_body() -> Body {
    RawValue::NULL.to_owned()
}

/// One service of the node API (everything under `service.`).
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Serves `method` (the part after `service.`) for `peer`.
    async fn call(&self, peer: &Peer, method: &str, body: Body) -> Result<Reply, Fault>;
}

/// Decides, before any handler, whether a peer may call at all: the
/// deny-list of removed nodes is a gate (their certificates are still
/// valid under the CA until they expire).
pub trait Gate: Send + Sync + 'static {
    /// `Err` refuses every call of the peer with that fault.
    fn admit(&self, peer: &Peer) -> Result<(), Fault>;
}

/// Routes calls to handlers by service name.
#[derive(Clone, Default)]
pub struct Router {
    routes: HashMap<String, Arc<dyn Handler>>,
    gate: Option<Arc<dyn Gate>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.routes.keys().collect();
        names.sort();
        f.debug_struct("Router").field("services", &names).finish()
    }
}

impl Router {
    /// A router with no service.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `service.*` with `handler` (replacing any previous one).
    pub fn route(mut self, service: &str, handler: Arc<dyn Handler>) -> Self {
        self.routes.insert(service.to_owned(), handler);
        self
    }

    /// Checks every call with `gate` first.
    pub fn gate(mut self, gate: Arc<dyn Gate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Serves one call: the gate, then the service's handler.
    pub async fn dispatch(&self, peer: &Peer, method: &str, body: Body) -> Result<Reply, Fault> {
        if let Some(gate) = &self.gate {
            gate.admit(peer)?;
        }
        let (service, call) = method.split_once('.').ok_or_else(|| {
            Fault::new(Code::UnknownMethod, format!("method {method:?} is not of the form service.method"))
        })?;
        let handler = self
            .routes
            .get(service)
            .ok_or_else(|| Fault::new(Code::UnknownMethod, format!("no service {service:?} on this listener")))?;
        handler.call(peer, call, body).await
    }
}

/// A TLS configuration that can be replaced while in use (after a
/// certificate renewal or a CA rotation): new connections use the new one.
#[derive(Debug)]
pub struct Reloadable<T>(RwLock<Arc<T>>);

impl<T> Reloadable<T> {
    /// Holds `config`.
    pub fn new(config: Arc<T>) -> Arc<Self> {
        Arc::new(Reloadable(RwLock::new(config)))
    }

    /// The configuration now.
    pub fn get(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the configuration for new connections.
    pub fn set(&self, config: Arc<T>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = config;
    }
}

#[derive(Serialize, Deserialize)]
struct Request {
    id: u64,
    method: String,
    #[serde(default = "null_body")]
    body: Body,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Response {
    Ok { id: u64, body: Body },
    Item { id: u64, body: Body },
    End { id: u64 },
    Err { id: u64, fault: Fault },
}

/// Limits of a listener.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits { max_connections: 8192, handshake_timeout: Duration::from_secs(10) }
    }
}

/// The listener side. See the [module docs](self).
#[derive(Debug)]
pub struct RpcServer;

impl RpcServer {
    /// Accepts connections on `listener` until the task is dropped or
    /// aborted, serving each with `router`. Dropping or aborting it also
    /// ends the connections it accepted (streams included): a manager that
    /// stops serving is gone for its clients, which then go elsewhere.
    pub async fn serve(
        listener: TcpListener,
        tls: Arc<Reloadable<ServerConfig>>,
        router: Arc<Router>,
        limits: ServerLimits,
    ) {
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        // Owned by this future: dropping it aborts every connection task.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let (tcp, addr) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "node API: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.get());
            let router = router.clone();
            let handshake = limits.handshake_timeout;
            connections.spawn(async move {
                let _permit = permit;
                let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::warn!(peer = %addr, error = %e, "node API: TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(peer = %addr, "node API: TLS handshake timed out");
                        return;
                    }
                };
                let identity = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| NodeIdentity::from_der(c).ok());
                let peer = Peer { addr: Some(addr), identity, local: false };
                if let Err(e) = serve_connection(tls, &peer, &router).await {
                    tracing::debug!(peer = %addr, error = %e, "node API connection ended");
                }
            });
        }
    }
}

impl RpcServer {
    /// Serves the manager's local Unix socket: no TLS, every client is a
    /// local operator ([`Peer::local`]). The socket file is created with
    /// mode 0600 (owner only; run the manager as root for a root-only
    /// socket), replacing a stale one. Runs until the task is dropped.
    pub async fn serve_unix(path: &std::path::Path, router: Arc<Router>) -> std::io::Result<()> {
        let listener = bind_unix(path)?;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "local socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let router = router.clone();
            tokio::spawn(async move {
                let peer = Peer { addr: None, identity: None, local: true };
                if let Err(e) = serve_connection(stream, &peer, &router).await {
                    tracing::debug!(error = %e, "local socket connection ended");
                }
            });
        }
    }
}

/// Binds a Unix socket readable and writable by its owner only.
pub fn bind_unix(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Bind under a temporary name, make it owner-only, then rename it into
    // place: nobody can connect to `path` before it is 0600 (a client
    // connecting right after bind would otherwise be queued, and later
    // accepted, while the mode is still the umask's).
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

async fn send<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, r: &Response) -> Result<(), FrameError> {
    let bytes = serde_json::to_vec(r).map_err(|e| FrameError::Io(std::io::Error::other(e)))?;
    write_frame(w, &bytes, MAX_MESSAGE).await?;
    w.flush().await?;
    Ok(())
}

async fn serve_connection<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
    peer: &Peer,
    router: &Router,
) -> Result<(), FrameError> {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    loop {
        let frame = match read_frame(&mut r, MAX_MESSAGE).await {
            Ok(f) => f,
            Err(FrameError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        let req: Request = match serde_json::from_slice(&frame) {
            Ok(r) => r,
            Err(e) => {
                let fault = Fault::new(Code::BadRequest, format!("not a request: {e}"));
                send(&mut w, &Response::Err { id: 0, fault }).await?;
                return Ok(());
            }
        };
        let id = req.id;
        match router.dispatch(peer, &req.method, req.body).await {
            Ok(Reply::Unary(body)) => send(&mut w, &Response::Ok { id, body }).await?,
            Err(fault) => send(&mut w, &Response::Err { id, fault }).await?,
            Ok(Reply::Stream(mut rx)) => {
                // The connection is the stream's until it ends. A client
                // that closes its side ends it: watch for that while
                // waiting for items.
                let mut probe = [0u8; 1];
                loop {
                    tokio::select! {
                        item = rx.recv() => match item {
                            Some(Ok(body)) => send(&mut w, &Response::Item { id, body }).await?,
                            Some(Err(fault)) => { send(&mut w, &Response::Err { id, fault }).await?; return Ok(()) }
                            None => { send(&mut w, &Response::End { id }).await?; return Ok(()) }
                        },
                        n = tokio::io::AsyncReadExt::read(&mut r, &mut probe) => {
                            // Nothing is sent on a stream's connection after
                            // the request: data or EOF both end it.
                            let _ = n;
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

/// Why a call failed, on the client's side.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// No TCP connection could be made.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The server (`host:port`, or the local socket's path).
        addr: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed: a certificate was refused (by either
    /// side), or the server is not who it should be.
    #[error("TLS handshake with {addr} failed: {reason}")]
    Handshake {
        /// The server (`host:port`, or the local socket's path).
        addr: String,
        /// rustls' reason (e.g. "received fatal alert: CertificateExpired").
        reason: String,
    },
    /// The connection failed or closed during the call (the server may or
    /// may not have acted on it).
    #[error("connection to {addr} failed during {method}: {reason}")]
    Transport {
        /// The server (`host:port`, or the local socket's path).
        addr: String,
        /// The call.
        method: String,
        /// Why.
        reason: String,
    },
    /// No answer within the call's timeout.
    #[error("{method} on {addr} got no answer within {timeout:?}")]
    Timeout {
        /// The server (`host:port`, or the local socket's path).
        addr: String,
        /// The call.
        method: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The server answered with a fault.
    #[error("{method} refused by {addr}: {fault}")]
    Fault {
        /// The server (`host:port`, or the local socket's path).
        addr: String,
        /// The call.
        method: String,
        /// The server's fault.
        fault: Fault,
    },
    /// The answer could not be read.
    #[error("{method}: unreadable answer from {addr}: {reason}")]
    Protocol {
        /// The server (`host:port`, or the local socket's path).
        addr: String,
        /// The call.
        method: String,
        /// Why.
        reason: String,
    },
}

impl RpcError {
    /// The server's fault, when the server answered with one.
    pub fn fault(&self) -> Option<&Fault> {
        match self {
            RpcError::Fault { fault, .. } => Some(fault),
            _ => None,
        }
    }

    /// True when the server could not be reached or the connection broke:
    /// another manager may do.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RpcError::Connect { .. } | RpcError::Transport { .. } | RpcError::Timeout { .. })
    }
}

struct Conn {
    r: BufReader<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    w: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
}

enum Endpoint {
    Tls { addr: SocketAddr, server_name: ServerName<'static>, tls: Arc<Reloadable<ClientConfig>> },
    Unix(std::path::PathBuf),
}

/// The calling side: one server, one connection for unary calls (made on
/// first use, made again after a failure) and one per stream.
pub struct RpcClient {
    endpoint: Endpoint,
    addr: String,
    conn: tokio::sync::Mutex<Option<Conn>>,
    next_id: AtomicU64,
    timeout: Duration,
    connect_timeout: Duration,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient").field("addr", &self.addr).finish()
    }
}

/// A TLS 1.3 client verifies the server during the handshake, but
/// learns that the server refused *its* certificate only on the first
/// read. This turns such a failure into a [`RpcError::Handshake`].
fn classify(addr: &str, method: &str, e: FrameError) -> RpcError {
    let reason = e.to_string();
    if reason.contains("alert") || reason.contains("certificate") {
        RpcError::Handshake { addr: addr.to_owned(), reason }
    } else {
        RpcError::Transport { addr: addr.to_owned(), method: method.to_owned(), reason }
    }
}

/// Items of a streaming call.
pub struct RpcStream<T> {
    conn: Conn,
    id: u64,
    addr: String,
    method: String,
    done: bool,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> RpcStream<T> {
    /// The next item; `Ok(None)` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<T>, RpcError> {
        if self.done {
            return Ok(None);
        }
        let frame = read_frame(&mut self.conn.r, MAX_MESSAGE).await.map_err(|e| {
            self.done = true;
            classify(&self.addr, &self.method, e)
        })?;
        let resp: Response = serde_json::from_slice(&frame).map_err(|e| {
            self.done = true;
            RpcError::Protocol { addr: self.addr.clone(), method: self.method.clone(), reason: e.to_string() }
        })?;
        match resp {
            Response::Item { id, body } if id == self.id => serde_json::from_str(body.get()).map(Some).map_err(|e| {
                RpcError::Protocol { addr: self.addr.clone(), method: self.method.clone(), reason: e.to_string() }
            }),
            Response::End { id } if id == self.id => {
                self.done = true;
                Ok(None)
            }
            Response::Err { fault, .. } => {
                self.done = true;
                Err(RpcError::Fault { addr: self.addr.clone(), method: self.method.clone(), fault })
            }
            _ => {
                self.done = true;
                Err(RpcError::Protocol {
                    addr: self.addr.clone(),
                    method: self.method.clone(),
                    reason: "unexpected message".into(),
                })
            }
        }
    }
}

impl RpcClient {
    /// A client of the server at `addr`, which must present a certificate
    /// valid for `server_name` under `tls`'s roots (managers: `swarm-manager`).
    // RpcError is returned once per call, never in a hot loop: its size
    // does not matter, and boxing a variant would change the public enum.
    #[allow(clippy::result_large_err)]
    pub fn new(addr: SocketAddr, server_name: &str, tls: Arc<Reloadable<ClientConfig>>) -> Result<Self, RpcError> {
        let server_name = ServerName::try_from(server_name.to_owned()).map_err(|e| RpcError::Connect {
            addr: addr.to_string(),
            reason: format!("invalid server name {server_name:?}: {e}"),
        })?;
        Ok(Self::with_endpoint(Endpoint::Tls { addr, server_name, tls }, addr.to_string()))
    }

    /// A client of a manager's local Unix socket ([`RpcServer::serve_unix`]).
    pub fn unix(path: impl Into<std::path::PathBuf>) -> Self {
        let path = path.into();
        let addr = path.display().to_string();
        Self::with_endpoint(Endpoint::Unix(path), addr)
    }

    fn with_endpoint(endpoint: Endpoint, addr: String) -> Self {
        RpcClient {
            endpoint,
            addr,
            conn: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// Sets the time a unary call (connection included) may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The server's address (`host:port` or the socket's path).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn connect(&self) -> Result<Conn, RpcError> {
        let addr = || self.addr.clone();
        let wait = self.connect_timeout;
        let (addr_, server_name, tls) = match &self.endpoint {
            Endpoint::Unix(path) => {
                let s = tokio::time::timeout(wait, tokio::net::UnixStream::connect(path))
                    .await
                    .map_err(|_| RpcError::Connect { addr: addr(), reason: format!("no answer within {wait:?}") })?
                    .map_err(|e| RpcError::Connect { addr: addr(), reason: e.to_string() })?;
                let (r, w) = tokio::io::split(s);
                return Ok(Conn { r: BufReader::new(Box::new(r)), w: Box::new(w) });
            }
            Endpoint::Tls { addr, server_name, tls } => (*addr, server_name, tls),
        };
        let tcp = tokio::time::timeout(wait, TcpStream::connect(addr_))
            .await
            .map_err(|_| RpcError::Connect { addr: addr(), reason: format!("no answer within {wait:?}") })?
            .map_err(|e| RpcError::Connect { addr: addr(), reason: e.to_string() })?;
        let _ = tcp.set_nodelay(true);
        let connector = TlsConnector::from(tls.get());
        let tls = tokio::time::timeout(wait, connector.connect(server_name.clone(), tcp))
            .await
            .map_err(|_| RpcError::Handshake { addr: addr(), reason: format!("not complete within {wait:?}") })?
            .map_err(|e| RpcError::Handshake { addr: addr(), reason: e.to_string() })?;
        let (r, w) = tokio::io::split(tls);
        Ok(Conn { r: BufReader::new(Box::new(r)), w: Box::new(w) })
    }

    fn classify(&self, method: &str, e: FrameError) -> RpcError {
        classify(&self.addr, method, e)
    }

    /// Writes a request frame. A server that refused the client's
    /// certificate sends an alert and closes, so the write itself may fail
    /// (broken pipe, reset) before the alert has been read: on a failed
    /// write, the alert is looked for on the read side first.
    async fn send_request(&self, conn: &mut Conn, method: &str, bytes: &[u8]) -> Result<(), RpcError> {
        let sent = async {
            write_frame(&mut conn.w, bytes, MAX_MESSAGE).await?;
            conn.w.flush().await?;
            Ok::<(), FrameError>(())
        }
        .await;
        let Err(e) = sent else { return Ok(()) };
        if let Ok(Err(read_err)) =
            tokio::time::timeout(self.connect_timeout, read_frame(&mut conn.r, MAX_MESSAGE)).await
        {
            if let refused @ RpcError::Handshake { .. } = self.classify(method, read_err) {
                return Err(refused);
            }
        }
        Err(self.classify(method, e))
    }

    async fn exchange(&self, conn: &mut Conn, method: &str, req: &Request) -> Result<Response, RpcError> {
        let bytes = serde_json::to_vec(req).map_err(|e| RpcError::Protocol {
            addr: self.addr.clone(),
            method: method.to_owned(),
            reason: e.to_string(),
        })?;
        self.send_request(conn, method, &bytes).await?;
        let frame = read_frame(&mut conn.r, MAX_MESSAGE).await.map_err(|e| self.classify(method, e))?;
        serde_json::from_slice(&frame).map_err(|e| RpcError::Protocol {
            addr: self.addr.clone(),
            method: method.to_owned(),
            reason: e.to_string(),
        })
    }

    // RpcError is returned once per call, never in a hot loop: its size
    // does not matter, and boxing a variant would change the public enum.
    #[allow(clippy::result_large_err)]
    fn request(&self, method: &str, req: &impl Serialize) -> Result<Request, RpcError> {
        let body = serde_json::value::to_raw_value(req).map_err(|e| RpcError::Protocol {
            addr: self.addr.clone(),
            method: method.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Request { id: self.next_id.fetch_add(1, Ordering::Relaxed), method: method.to_owned(), body })
    }

    /// A unary call.
    pub async fn call<Q: Serialize, R: DeserializeOwned>(&self, method: &str, req: &Q) -> Result<R, RpcError> {
        let request = self.request(method, req)?;
        let fut = async {
            let mut slot = self.conn.lock().await;
            if slot.is_none() {
                *slot = Some(self.connect().await?);
            }
            let conn = slot.as_mut().expect("connected above");
            let resp = self.exchange(conn, method, &request).await;
            if resp.is_err() {
                *slot = None;
            }
            resp
        };
        let resp = match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r?,
            Err(_) => {
                // The connection may hold a late answer: start afresh.
                if let Ok(mut slot) = self.conn.try_lock() {
                    *slot = None;
                }
                return Err(RpcError::Timeout {
                    addr: self.addr.clone(),
                    method: method.to_owned(),
                    timeout: self.timeout,
                });
            }
        };
        match resp {
            Response::Ok { id, body } if id == request.id => serde_json::from_str(body.get()).map_err(|e| {
                RpcError::Protocol { addr: self.addr.clone(), method: method.to_owned(), reason: e.to_string() }
            }),
            Response::Err { fault, .. } => {
                Err(RpcError::Fault { addr: self.addr.clone(), method: method.to_owned(), fault })
            }
            _ => {
                *self.conn.lock().await = None;
                Err(RpcError::Protocol {
                    addr: self.addr.clone(),
                    method: method.to_owned(),
                    reason: "unexpected message".into(),
                })
            }
        }
    }

    /// A streaming call, on a connection of its own. This returns once
    /// the request is sent: a fault the server answers, even at once,
    /// comes from the first [`RpcStream::next`]. A service that wants
    /// refusals reported before the caller waits for items sends a first
    /// item at once (the control API's `events` does).
    pub async fn stream<Q: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        req: &Q,
    ) -> Result<RpcStream<T>, RpcError> {
        let request = self.request(method, req)?;
        let mut conn = tokio::time::timeout(self.timeout, self.connect()).await.map_err(|_| RpcError::Timeout {
            addr: self.addr.clone(),
            method: method.to_owned(),
            timeout: self.timeout,
        })??;
        let bytes = serde_json::to_vec(&request).map_err(|e| RpcError::Protocol {
            addr: self.addr.clone(),
            method: method.to_owned(),
            reason: e.to_string(),
        })?;
        self.send_request(&mut conn, method, &bytes).await?;
        Ok(RpcStream {
            conn,
            id: request.id,
            addr: self.addr.clone(),
            method: method.to_owned(),
            done: false,
            _t: std::marker::PhantomData,
        })
    }
}
