//! Zero-copy TCP proxying with splice(2) on Linux: bytes go socket -> pipe
//! -> socket inside the kernel, never through a userspace buffer.
//!
//! Each direction owns a pipe. It fills the (empty) pipe from the source
//! with one `splice`, then empties it into the destination, so an `EAGAIN`
//! always means "the socket is not ready" and is handed to tokio's
//! readiness through `try_io`. End of stream shuts the destination's write
//! side down (half-close), as `tokio::io::copy_bidirectional` does.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The pipe size asked for once a transfer turns out to be bulk.
const PIPE_SIZE: usize = 1 << 20;

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Start with the default size (64 KiB): a big pipe costs memory
        // and time per connection; `grow` enlarges it for bulk transfers.
        let size = 64 * 1024;
        Ok(Pipe { read, write, size })
    }
}

impl Pipe {
    /// Asks for a [`PIPE_SIZE`] pipe (refused above pipe-max-size: then the
    /// size stays).
    fn grow(&mut self) {
        // SAFETY: F_SETPIPE_SZ on an open pipe fd; no memory is passed.
        let set = unsafe { libc::fcntl(self.write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
        if set > 0 {
            self.size = set as usize;
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both fds are open for the whole call (owned by objects the
    // caller borrows); null offsets are what splice expects for pipes and
    // sockets; no userspace memory is involved.
    let r = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

async fn one_way(src: &TcpStream, dst: &TcpStream) -> io::Result<u64> {
    let mut pipe = Pipe::new()?;
    let mut total = 0u64;
    let mut grown = false;
    loop {
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || splice(src.as_raw_fd(), pipe.write.as_raw_fd(), pipe.size)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // The peer finished sending: pass the half-close on.
            let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || splice(pipe.read.as_raw_fd(), dst.as_raw_fd(), left)) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
        // Past 256 KiB this is a bulk transfer: move more per call.
        if !grown && total >= 256 * 1024 {
            pipe.grow();
            grown = true;
        }
    }
}

/// Proxies `a` <-> `b` until both directions end; returns the bytes moved
/// a -> b and b -> a.
pub async fn splice_bidirectional(a: &TcpStream, b: &TcpStream) -> io::Result<(u64, u64)> {
    tokio::try_join!(one_way(a, b), one_way(b, a))
}
