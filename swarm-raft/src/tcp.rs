//! TCP transport: raft frames between managers over tokio TCP streams.
//!
//! Each frame is a 4-byte big-endian length followed by the bytes (a
//! protobuf raft message), read with [`crate::frame`]: memory grows with
//! the bytes that arrive, and frames over the maximum
//! ([`TcpTransportConfig::max_frame`], default [`MAX_FRAME`]) are refused
//! and the connection closed. One outbound connection per peer,
//! (re)connected lazily by a tokio task that drains a bounded queue:
//! [`Transport::send`] only enqueues, so the manager's driver thread never
//! blocks on the network. A full queue drops the frame (raft retransmits).
//!
//! Inbound, [`TcpTransport::serve_with`] bounds what others can hold open
//! ([`InboundLimits`]): connections in total and per peer id (further ones
//! are closed at once, with a warning), and the time a new connection may
//! take to say who it is. What arrives goes to the manager's [`Inbox`],
//! itself bounded, and each message is checked before raft sees it.
//!
//! Mutual TLS (feature `tls`, off by default): with a
//! [`RaftTls`](crate::tls::RaftTls) in [`TcpTransportConfig::with_tls`]
//! every outbound connection is a TLS 1.3 client presenting this
//! manager's certificate and expecting the certificate of the peer's node
//! id; [`TcpTransport::serve_tls`] accepts TLS 1.3 only, from managers of
//! this cluster, and holds each peer to the raft id its certificate maps
//! to (see [`crate::tls`]). The TLS handshake, like the preamble, must
//! finish within [`InboundLimits::hello_timeout`]. Without TLS the
//! transport is plaintext and unauthenticated.

use crate::frame::{FrameError, read_frame, write_frame};
use crate::transport::{Inbox, Transport};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

/// Default largest frame (64 MiB: snapshots travel as one frame).
pub const MAX_FRAME: usize = 64 << 20;

/// What one listening manager lets others hold open.
#[derive(Clone, Debug)]
pub struct InboundLimits {
    /// Open inbound connections at most; more are closed on accept.
    pub max_connections: usize,
    /// Open inbound connections per peer id (from its preamble) at most; a
    /// peer reconnecting while its old connection is still open needs 2.
    pub max_per_peer: usize,
    /// Time a new connection has to send its preamble before it is closed.
    pub hello_timeout: Duration,
    /// Largest frame accepted.
    pub max_frame: usize,
}

impl Default for InboundLimits {
    /// 64 connections, 4 per peer, 5 s for the preamble, [`MAX_FRAME`].
    fn default() -> Self {
        InboundLimits {
            max_connections: 64,
            max_per_peer: 4,
            hello_timeout: Duration::from_secs(5),
            max_frame: MAX_FRAME,
        }
    }
}

/// Settings of a [`TcpTransport`].
#[derive(Clone, Debug)]
pub struct TcpTransportConfig {
    /// This manager's raft id (sent first on every connection).
    pub id: u64,
    /// Peer addresses by raft id.
    pub peers: HashMap<u64, SocketAddr>,
    /// Frames queued per peer before new ones are dropped.
    pub queue: usize,
    /// Wait between reconnection attempts.
    pub reconnect: Duration,
    /// Largest frame sent; larger ones are dropped with a warning (the
    /// receiving side refuses frames over its own maximum).
    pub max_frame: usize,
    /// Mutual TLS on outbound connections; `None` (the default) is
    /// plaintext.
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<crate::tls::RaftTls>>,
}

impl TcpTransportConfig {
    /// Defaults: queue 4,096 frames, reconnect every 100 ms, frames up to
    /// [`MAX_FRAME`].
    pub fn new(id: u64, peers: HashMap<u64, SocketAddr>) -> Self {
        TcpTransportConfig {
            id,
            peers,
            queue: 4096,
            reconnect: Duration::from_millis(100),
            max_frame: MAX_FRAME,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Outbound connections over mutual TLS with `tls` (feature `tls`).
    /// Serve with [`TcpTransport::serve_tls`] and the same settings.
    #[cfg(feature = "tls")]
    pub fn with_tls(mut self, tls: Arc<crate::tls::RaftTls>) -> Self {
        self.tls = Some(tls);
        self
    }

    fn security(&self) -> Security {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return Security::Tls(tls.clone());
        }
        Security::Plain
    }
}

/// Plaintext or mutual TLS, for one side of a connection.
#[derive(Clone)]
enum Security {
    Plain,
    #[cfg(feature = "tls")]
    Tls(Arc<crate::tls::RaftTls>),
}

/// The TCP [`Transport`]. Create it inside a tokio runtime.
pub struct TcpTransport {
    cfg: TcpTransportConfig,
    peers: Mutex<HashMap<u64, mpsc::Sender<Vec<u8>>>>,
    runtime: tokio::runtime::Handle,
    dropped: AtomicU64,
}

impl TcpTransport {
    /// A transport for `cfg.id`; no connection is made until a frame is sent.
    /// Must be called within a tokio runtime (its tasks run there).
    pub fn new(cfg: TcpTransportConfig) -> std::io::Result<Arc<TcpTransport>> {
        let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        Ok(Arc::new(TcpTransport { cfg, peers: Mutex::new(HashMap::new()), runtime, dropped: Default::default() }))
    }

    /// Frames dropped so far because a peer's queue was full or closed, or
    /// the frame was over the maximum.
    pub fn dropped_frames(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn count_drop(&self, to: u64, why: &str) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // Every drop at trace, a warning at 1, 2, 4, 8... drops.
        if n.is_power_of_two() {
            tracing::warn!(to, dropped = n, "raft frame dropped: {why} (raft retransmits)");
        } else {
            tracing::trace!(to, dropped = n, "raft frame dropped: {why}");
        }
    }

    /// Adds or changes a peer's address (membership changes).
    pub fn set_peer(&self, id: u64, addr: SocketAddr) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.remove(&id);
        let mut cfg = self.cfg.clone();
        cfg.peers.insert(id, addr);
        // The sender task reads the address at spawn time; replacing the
        // queue restarts it with the new address.
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        self.runtime.spawn(sender_loop(cfg.id, id, addr, rx, cfg.reconnect, cfg.max_frame, cfg.security()));
        peers.insert(id, tx);
    }

    /// Accepts connections on `listener` and hands received frames to
    /// `inbox`, with the default [`InboundLimits`], until the listener
    /// fails. Spawn it as a task.
    pub async fn serve(listener: TcpListener, inbox: Inbox) {
        Self::serve_with(listener, inbox, InboundLimits::default()).await
    }

    /// [`TcpTransport::serve`] with explicit limits.
    pub async fn serve_with(listener: TcpListener, inbox: Inbox, limits: InboundLimits) {
        Self::serve_inner(listener, inbox, limits, Security::Plain).await
    }

    /// [`TcpTransport::serve_with`] over mutual TLS (feature `tls`): only
    /// TLS 1.3 clients presenting a manager certificate of this cluster
    /// are admitted, and each must claim, in its preamble, the raft id its
    /// certificate's node id maps to in `tls`. Refusals are logged and
    /// counted in [`RaftTls::refusals`](crate::tls::RaftTls::refusals).
    #[cfg(feature = "tls")]
    pub async fn serve_tls(listener: TcpListener, inbox: Inbox, limits: InboundLimits, tls: Arc<crate::tls::RaftTls>) {
        Self::serve_inner(listener, inbox, limits, Security::Tls(tls)).await
    }

    async fn serve_inner(listener: TcpListener, inbox: Inbox, limits: InboundLimits, security: Security) {
        let open = Arc::new(Semaphore::new(limits.max_connections));
        let per_peer: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
        let limits = Arc::new(limits);
        loop {
            match listener.accept().await {
                Ok((stream, addr)) => {
                    let Ok(permit) = open.clone().try_acquire_owned() else {
                        tracing::warn!(%addr, max = limits.max_connections, "refusing a raft connection: too many open");
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let (inbox, limits, per_peer) = (inbox.clone(), limits.clone(), per_peer.clone());
                    let security = security.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        let res = match security {
                            Security::Plain => receive_loop(stream, inbox, &limits, &per_peer, |_| Ok(())).await,
                            #[cfg(feature = "tls")]
                            Security::Tls(tls) => match tls.accept(stream, limits.hello_timeout).await {
                                Ok((stream, peer)) => {
                                    let check = |claimed| tls.check_claim(claimed, &peer);
                                    receive_loop(stream, inbox, &limits, &per_peer, check).await
                                }
                                Err(e) => Err(Refused::Tls(crate::tls::refusal_reason(&e))),
                            },
                        };
                        match res {
                            // A connection lost or cut mid-frame is routine.
                            Err(ref e @ Refused::Frame(ref f)) if !matches!(f, FrameError::TooLarge { .. }) => {
                                tracing::debug!(%addr, reason = %e, "raft connection closed")
                            }
                            Err(e) => tracing::warn!(%addr, reason = %e, "closed a raft connection"),
                            Ok(()) => {}
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a raft connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Transport for TcpTransport {
    fn send(&self, to: u64, frame: Vec<u8>) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let std::collections::hash_map::Entry::Vacant(slot) = peers.entry(to) {
            let Some(&addr) = self.cfg.peers.get(&to) else {
                tracing::debug!(to, "no address for raft peer; frame dropped");
                return;
            };
            let (tx, rx) = mpsc::channel(self.cfg.queue.max(1));
            let security = self.cfg.security();
            self.runtime.spawn(sender_loop(
                self.cfg.id,
                to,
                addr,
                rx,
                self.cfg.reconnect,
                self.cfg.max_frame,
                security,
            ));
            slot.insert(tx);
        }
        if frame.len() > self.cfg.max_frame {
            drop(peers);
            let why = format!("{} bytes exceed the maximum frame of {} bytes", frame.len(), self.cfg.max_frame);
            return self.count_drop(to, &why);
        }
        if let Some(q) = peers.get(&to)
            && q.try_send(frame).is_err()
        {
            drop(peers);
            self.count_drop(to, "send queue full or closed");
        }
    }
}

/// Opens a TCP stream to a peer (without TLS).
pub async fn connect_stream(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// The writing half of an outbound connection, plaintext or TLS.
type Wire = Pin<Box<dyn AsyncWrite + Send>>;

/// Why an outbound connection could not be opened.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    /// TCP connect failed: the peer is down or unreachable (routine).
    #[error("connect: {0}")]
    Tcp(std::io::Error),
    /// The TLS handshake or the peer's identity was refused: a
    /// configuration or identity problem worth a warning.
    #[cfg(feature = "tls")]
    #[error(transparent)]
    Tls(crate::tls::RaftTlsError),
}

impl OpenError {
    fn worth_a_warning(&self) -> bool {
        match self {
            OpenError::Tcp(_) => false,
            #[cfg(feature = "tls")]
            OpenError::Tls(_) => true,
        }
    }
}

/// Opens a connection to raft peer `to` at `addr`, with TLS if asked.
async fn open(to: u64, addr: SocketAddr, security: &Security) -> Result<Wire, OpenError> {
    let tcp = connect_stream(addr).await.map_err(OpenError::Tcp)?;
    match security {
        Security::Plain => {
            let _ = to;
            Ok(Box::pin(tcp))
        }
        #[cfg(feature = "tls")]
        Security::Tls(tls) => match tls.connect(to, tcp).await {
            Ok(s) => Ok(Box::pin(s)),
            Err(e) => Err(OpenError::Tls(e)),
        },
    }
}

async fn sender_loop(
    from: u64,
    to: u64,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
    reconnect: Duration,
    max_frame: usize,
    security: Security,
) {
    let mut pending: Option<Vec<u8>> = None;
    // A TLS refusal is warned once per streak of failures, not every retry
    // (a peer that is down is routine: trace).
    let mut tls_failing = false;
    loop {
        let mut stream = match open(to, addr, &security).await {
            Ok(s) => {
                tls_failing = false;
                tokio::io::BufWriter::new(s)
            }
            Err(e) => {
                if e.worth_a_warning() && !tls_failing {
                    tls_failing = true;
                    tracing::warn!(to, %addr, error = %e, "TLS connection to raft peer refused; retrying quietly");
                } else {
                    tracing::trace!(to, %addr, error = %e, "connecting to raft peer failed");
                }
                tokio::time::sleep(reconnect).await;
                // Drop what queued up meanwhile: raft resends what matters.
                while rx.try_recv().is_ok() {}
                if rx.is_closed() {
                    return;
                }
                continue;
            }
        };
        let hello = async {
            write_frame(&mut stream, &from.to_be_bytes(), 8).await?;
            stream.flush().await.map_err(FrameError::Io)
        };
        if let Err(e) = hello.await {
            tracing::debug!(to, %addr, error = %e, "sending the raft preamble failed; reconnecting");
            tokio::time::sleep(reconnect).await;
            continue;
        }
        loop {
            let frame = match pending.take() {
                Some(f) => f,
                None => match rx.recv().await {
                    Some(f) => f,
                    None => return,
                },
            };
            let mut res = write_frame(&mut stream, &frame, max_frame).await;
            // Batch whatever else is queued before flushing.
            while res.is_ok() {
                match rx.try_recv() {
                    Ok(f) => res = write_frame(&mut stream, &f, max_frame).await,
                    Err(_) => break,
                }
            }
            if res.is_ok() {
                res = stream.flush().await.map_err(FrameError::Io);
            }
            if let Err(e) = res {
                tracing::debug!(to, %addr, error = %e, "raft connection lost; reconnecting");
                break;
            }
        }
    }
}

/// Why an inbound connection was closed.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("bad preamble: {0}")]
    Hello(String),
    #[cfg(feature = "tls")]
    #[error("{0}")]
    Tls(String),
    #[error("peer refused: {0}")]
    WrongPeer(String),
    #[error("manager {peer} already has {open} connections open (at most {max})")]
    PeerLimit { peer: u64, open: usize, max: usize },
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// One open inbound connection of a peer, counted while it lives.
struct PeerSlot<'a> {
    peer: u64,
    counts: &'a Mutex<HashMap<u64, usize>>,
}

impl Drop for PeerSlot<'_> {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&self.peer);
            }
        }
    }
}

/// Reads the preamble, lets `check` accept or refuse the claimed raft id
/// (TLS: against the certificate), then delivers frames until the end.
async fn receive_loop<S: AsyncRead + Unpin>(
    stream: S,
    inbox: Inbox,
    limits: &InboundLimits,
    per_peer: &Mutex<HashMap<u64, usize>>,
    check: impl FnOnce(u64) -> Result<(), String>,
) -> Result<(), Refused> {
    let mut r = tokio::io::BufReader::new(stream);
    let hello = match tokio::time::timeout(limits.hello_timeout, read_frame(&mut r, 8)).await {
        Err(_) => return Err(Refused::Hello(format!("none within {:?}", limits.hello_timeout))),
        Ok(Err(FrameError::TooLarge { len, .. })) => {
            return Err(Refused::Hello(format!("{len} bytes, expected an 8-byte manager id")));
        }
        Ok(h) => h?,
    };
    let Ok(id) = <[u8; 8]>::try_from(hello.as_slice()).map(u64::from_be_bytes) else {
        return Err(Refused::Hello(format!("{} bytes, expected an 8-byte manager id", hello.len())));
    };
    check(id).map_err(Refused::WrongPeer)?;
    let _slot = {
        let mut c = per_peer.lock().unwrap_or_else(|p| p.into_inner());
        let open = c.entry(id).or_insert(0);
        if *open >= limits.max_per_peer {
            return Err(Refused::PeerLimit { peer: id, open: *open, max: limits.max_per_peer });
        }
        *open += 1;
        PeerSlot { peer: id, counts: per_peer }
    };
    loop {
        match read_frame(&mut r, limits.max_frame).await {
            Ok(frame) => inbox.deliver_from(id, frame),
            Err(FrameError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}
