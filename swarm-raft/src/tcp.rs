//! TCP transport: raft frames between managers over tokio TCP streams.
//!
//! Each frame is a 4-byte big-endian length followed by the bytes (a
//! protobuf raft message); frames over [`MAX_FRAME`] are refused. One
//! outbound connection per peer, (re)connected lazily by a tokio task that
//! drains a bounded queue: [`Transport::send`] only enqueues, so the
//! manager's driver thread never blocks on the network. A full queue drops
//! the frame (raft retransmits).
//!
//! Mutual TLS slots in later at two seams:
//! connecting and accepting go through [`connect_stream`] and the accept
//! loop, the only two places that see a raw `TcpStream`.

use crate::transport::{Inbox, Transport};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Largest frame accepted (64 MiB: snapshots travel as one frame).
pub const MAX_FRAME: usize = 64 << 20;

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
}

impl TcpTransportConfig {
    /// Defaults: queue 4,096 frames, reconnect every 100 ms.
    pub fn new(id: u64, peers: HashMap<u64, SocketAddr>) -> Self {
        TcpTransportConfig { id, peers, queue: 4096, reconnect: Duration::from_millis(100) }
    }
}

/// The TCP [`Transport`]. Create it inside a tokio runtime.
pub struct TcpTransport {
    cfg: TcpTransportConfig,
    peers: Mutex<HashMap<u64, mpsc::Sender<Vec<u8>>>>,
    runtime: tokio::runtime::Handle,
    dropped: std::sync::atomic::AtomicU64,
}

impl TcpTransport {
    /// A transport for `cfg.id`; no connection is made until a frame is sent.
    /// Must be called within a tokio runtime (its tasks run there).
    pub fn new(cfg: TcpTransportConfig) -> std::io::Result<Arc<TcpTransport>> {
        let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        Ok(Arc::new(TcpTransport { cfg, peers: Mutex::new(HashMap::new()), runtime, dropped: Default::default() }))
    }

    /// Frames dropped so far because a peer's queue was full or closed.
    pub fn dropped_frames(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
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
        self.runtime.spawn(sender_loop(cfg.id, id, addr, rx, cfg.reconnect));
        peers.insert(id, tx);
    }

    /// Accepts connections on `listener` and hands received frames to
    /// `inbox`, until the listener fails. Spawn it as a task.
    pub async fn serve(listener: TcpListener, inbox: Inbox) {
        loop {
            match listener.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let inbox = inbox.clone();
                    tokio::spawn(async move {
                        if let Err(e) = receive_loop(stream, inbox).await {
                            tracing::debug!(%addr, error = %e, "raft connection closed");
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
            self.runtime.spawn(sender_loop(self.cfg.id, to, addr, rx, self.cfg.reconnect));
            slot.insert(tx);
        }
        if let Some(q) = peers.get(&to)
            && q.try_send(frame).is_err()
        {
            self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::trace!(to, "raft send queue full or closed; frame dropped");
        }
    }
}

/// Opens a stream to a peer. The seam where a TLS connector will wrap the
/// TCP stream.
pub async fn connect_stream(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> std::io::Result<()> {
    if frame.len() > MAX_FRAME {
        return Err(std::io::Error::other(format!("frame of {} bytes exceeds {MAX_FRAME}", frame.len())));
    }
    w.write_u32(frame.len() as u32).await?;
    w.write_all(frame).await
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let len = r.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("incoming frame of {len} bytes exceeds {MAX_FRAME}")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn sender_loop(from: u64, to: u64, addr: SocketAddr, mut rx: mpsc::Receiver<Vec<u8>>, reconnect: Duration) {
    let mut pending: Option<Vec<u8>> = None;
    loop {
        let mut stream = match connect_stream(addr).await {
            Ok(s) => tokio::io::BufWriter::new(s),
            Err(e) => {
                tracing::trace!(to, %addr, error = %e, "connecting to raft peer failed");
                tokio::time::sleep(reconnect).await;
                // Drop what queued up meanwhile: raft resends what matters.
                while rx.try_recv().is_ok() {}
                if rx.is_closed() {
                    return;
                }
                continue;
            }
        };
        if write_frame(&mut stream, &from.to_be_bytes()).await.is_err() {
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
            let mut res = write_frame(&mut stream, &frame).await;
            // Batch whatever else is queued before flushing.
            while res.is_ok() {
                match rx.try_recv() {
                    Ok(f) => res = write_frame(&mut stream, &f).await,
                    Err(_) => break,
                }
            }
            if res.is_ok() {
                res = stream.flush().await;
            }
            if let Err(e) = res {
                tracing::debug!(to, %addr, error = %e, "raft connection lost; reconnecting");
                break;
            }
        }
    }
}

async fn receive_loop(stream: TcpStream, inbox: Inbox) -> std::io::Result<()> {
    let mut r = tokio::io::BufReader::new(stream);
    let hello = read_frame(&mut r).await?;
    if hello.len() != 8 {
        return Err(std::io::Error::other("bad raft connection preamble"));
    }
    loop {
        let frame = read_frame(&mut r).await?;
        inbox.deliver(frame);
    }
}
