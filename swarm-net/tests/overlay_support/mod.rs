//! Helpers shared by the overlay tests (`overlay_encrypted.rs`,
//! `tunnel.rs`): a verified byte stream with a marker and an AF_PACKET
//! capture of an interface in a namespace.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs `f` on `rt`'s worker threads (so in its namespace) and waits.
pub fn on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    rt.block_on(rt.spawn(f)).expect("task on the namespace runtime")
}

/// Polls `f` every 50 ms until it holds; fails after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A node's view made of `nets`.
pub fn view(nets: Vec<swarm_core::overlay::NetworkView>) -> swarm_core::overlay::OverlayView {
    swarm_core::overlay::OverlayView { networks: nets.into_iter().map(|n| (n.vni, n)).collect::<BTreeMap<_, _>>() }
}

/// 1 KiB block `i` of a stream: the marker, the index, filler.
pub fn block(i: u64, marker: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(1024);
    while b.len() + marker.len() + 8 <= 1024 {
        b.extend_from_slice(marker);
        b.extend_from_slice(&i.to_be_bytes());
    }
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while b.len() < 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.push(x as u8);
    }
    b
}

/// Serves one connection on `addr`: checks every byte against [`block`]
/// and answers the number of bytes that matched (8 bytes, big-endian)
/// once the peer closed its side, or at the first wrong byte.
pub async fn verifier(addr: SocketAddr, marker: Vec<u8>) -> tokio::task::JoinHandle<std::io::Result<u64>> {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let (mut good, mut i, mut expect, mut at) = (0u64, 0u64, block(0, &marker), 0usize);
        let mut buf = vec![0u8; 64 * 1024];
        'read: loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            for &byte in &buf[..n] {
                if byte != expect[at] {
                    break 'read;
                }
                good += 1;
                at += 1;
                if at == expect.len() {
                    i += 1;
                    expect = block(i, &marker);
                    at = 0;
                }
            }
        }
        s.write_all(&good.to_be_bytes()).await?;
        Ok(good)
    })
}

/// Sends blocks over `s` until `keep_going` is false (after `min` blocks),
/// then half-closes and returns (blocks sent, bytes the peer verified).
pub async fn send_blocks(
    mut s: tokio::net::TcpStream,
    marker: &[u8],
    min: u64,
    keep_going: impl Fn(u64) -> bool,
) -> (u64, u64) {
    let mut i = 0;
    while i < min || keep_going(i) {
        let mut chunk = Vec::with_capacity(64 * 1024);
        for _ in 0..64 {
            chunk.extend_from_slice(&block(i, marker));
            i += 1;
        }
        s.write_all(&chunk).await.expect("the stream stays open");
    }
    s.shutdown().await.unwrap();
    let mut good = [0u8; 8];
    s.read_exact(&mut good).await.expect("the verifier answers");
    (i, u64::from_be_bytes(good))
}

/// What an AF_PACKET socket on one interface of one namespace saw.
#[derive(Debug, Default)]
pub struct Captured {
    pub frames: usize,
    pub bytes: usize,
    /// Frames the kernel dropped because the socket's buffer was full.
    pub missed: u32,
    /// The largest frame.
    pub largest: usize,
    /// IPv4 fragments.
    pub fragments: usize,
    /// Frames containing the marker.
    pub with_marker: Vec<Vec<u8>>,
    /// IPv4 UDP frames by destination port.
    pub udp_to: BTreeMap<u16, usize>,
    /// UDP payloads to `record_port` addressed to `record_dst`.
    pub records_in: Vec<Vec<u8>>,
}

pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Captured>,
}

/// Starts capturing every frame on `dev` in namespace `ns`.
pub fn capture(ns: &str, dev: &'static str, marker: Vec<u8>, record_dst: Ipv4Addr) -> Capture {
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, path) = (stop.clone(), format!("/var/run/netns/{ns}"));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace file");
        // SAFETY: valid namespace fd; setns only moves this thread.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        let name = std::ffi::CString::new(dev).unwrap();
        // SAFETY: NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0, "no {dev} in {path}");
        // SAFETY: sockaddr_ll is plain data; zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: sll is a valid sockaddr_ll of `len` bytes.
        let r = unsafe { libc::bind(fd, &sll as *const libc::sockaddr_ll as *const libc::sockaddr, len) };
        assert_eq!(r, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
        let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        let size = std::mem::size_of::<libc::timeval>() as u32;
        // SAFETY: tv lives for the call.
        unsafe {
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), size)
        };
        let big: libc::c_int = 16 << 20;
        // SAFETY: big lives for the call.
        unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&big as *const i32).cast(), 4) };
        ready_tx.send(()).unwrap();
        let mut seen = Captured::default();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                // Told to stop and nothing queued for 100 ms: done.
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                continue;
            }
            let frame = &buf[..n as usize];
            seen.frames += 1;
            seen.bytes += frame.len();
            seen.largest = seen.largest.max(frame.len());
            if frame.len() > 21
                && frame[12..14] == [0x08, 0x00]
                && u16::from_be_bytes([frame[20], frame[21]]) & 0x3fff != 0
            {
                seen.fragments += 1;
            }
            if frame.windows(marker.len()).any(|w| w == marker) {
                seen.with_marker.push(frame.to_vec());
            }
            if frame.len() >= 14 + 28 && frame[12..14] == [0x08, 0x00] && frame[14 + 9] == 17 {
                let ihl = usize::from(frame[14] & 0x0f) * 4;
                let udp = &frame[14 + ihl..];
                let dport = u16::from_be_bytes([udp[2], udp[3]]);
                *seen.udp_to.entry(dport).or_default() += 1;
                let dst = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
                if dport == 4798 && dst == record_dst && seen.records_in.len() < 64 {
                    seen.records_in.push(udp[8..].to_vec());
                }
            }
        }
        // struct tpacket_stats { tp_packets, tp_drops }: PACKET_STATISTICS (6)
        // of SOL_PACKET (263).
        let mut st = [0u32; 2];
        let mut len = 8u32;
        // SAFETY: st has room for the 8 bytes the kernel writes.
        unsafe { libc::getsockopt(fd, 263, 6, st.as_mut_ptr().cast(), &mut len) };
        seen.missed = st[1];
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        seen
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("capture ready");
    Capture { stop, thread }
}

impl Capture {
    pub fn finish(self) -> Captured {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("capture thread")
    }
}
