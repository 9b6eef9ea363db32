//! Network namespaces for tests and benchmarks: several "hosts" with their
//! own interfaces, addresses and iptables rules on one machine, so the
//! kernel mesh can be exercised for real without touching the machine's
//! own network.
//!
//! Linux only; creating namespaces and moving threads into them needs root
//! (CAP_SYS_ADMIN) and iproute2 (`ip`).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use swarm_net::netns::NetNs;
//! let node = NetNs::create("swarm-doc-node")?;
//! node.ip(&["addr", "add", "10.99.0.1/32", "dev", "lo"])?;
//! let rt = node.runtime()?; // its threads live in the namespace
//! let served = rt.spawn(async { tokio::net::TcpListener::bind("10.99.0.1:80").await.is_ok() }).await?;
//! assert!(served);
//! # Ok(()) }
//! ```

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {detail}")]
    Ip {
        /// Its arguments.
        args: String,
        /// Its error output, or why it could not run.
        detail: String,
    },
    /// A system call failed.
    #[error("{call} failed for namespace {name:?}: {source}")]
    Sys {
        /// Which call.
        call: &'static str,
        /// The namespace.
        name: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Runs `ip <args>`.
pub fn ip(args: &[&str]) -> Result<(), NetnsError> {
    ip_output(args).map(drop)
}

/// Runs `ip <args>` and returns its stdout.
fn ip_output(args: &[&str]) -> Result<String, NetnsError> {
    let fail = |detail: String| NetnsError::Ip { args: args.join(" "), detail };
    let out = Command::new("ip").args(args).output().map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// Ok when this process may create namespaces and run a kernel mesh in
/// them: [`crate::kernel::available`] with the default commands, and `ip`.
pub fn available() -> Result<(), String> {
    crate::kernel::available(&crate::kernel::KernelConfig::default())?;
    crate::kernel::answers(std::path::Path::new("ip"), "-V")
}

/// Moves the calling thread into a new, empty network namespace with `lo`
/// up. Threads and processes it starts afterwards are in it too; the other
/// threads of the process are not.
pub fn unshare_current_thread() -> Result<(), NetnsError> {
    // SAFETY: unshare only changes the calling thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let source = std::io::Error::last_os_error();
        return Err(NetnsError::Sys { call: "unshare(CLONE_NEWNET)", name: "(anonymous)".into(), source });
    }
    ip(&["link", "set", "lo", "up"])
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace `name` (replacing a leftover one of that name)
    /// with `lo` up.
    pub fn create(name: impl Into<String>) -> Result<NetNs, NetnsError> {
        let name = name.into();
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<(), NetnsError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `ip netns exec <name> <cmd> <args>` and returns its stdout.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<String, NetnsError> {
        let mut all = vec!["netns", "exec", self.name.as_str(), cmd];
        all.extend_from_slice(args);
        ip_output(&all)
    }

    /// Moves the calling thread into this namespace.
    pub fn enter_current_thread(&self) -> Result<(), NetnsError> {
        enter(&self.file()?, &self.name)
    }

    fn file(&self) -> Result<File, NetnsError> {
        File::open(format!("/var/run/netns/{}", self.name)).map_err(|source| NetnsError::Sys {
            call: "open",
            name: self.name.clone(),
            source,
        })
    }

    /// A tokio runtime (2 worker threads) whose every thread runs in this
    /// namespace: sockets opened and commands started by its tasks are
    /// the namespace's. Drop it outside an async context, or call
    /// `shutdown_background`.
    pub fn runtime(&self) -> Result<tokio::runtime::Runtime, NetnsError> {
        let file = Arc::new(self.file()?);
        let failed = Arc::new(AtomicBool::new(false));
        let (f, flag, name) = (file.clone(), failed.clone(), self.name.clone());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                if let Err(e) = enter(&f, &name) {
                    tracing::error!(error = %e, "runtime thread not moved into its namespace");
                    flag.store(true, Ordering::SeqCst);
                }
            })
            .build()
            .map_err(|source| NetnsError::Sys { call: "runtime build", name: self.name.clone(), source })?;
        if failed.load(Ordering::SeqCst) {
            rt.shutdown_background();
            let source = std::io::Error::other("setns failed on a runtime thread");
            return Err(NetnsError::Sys { call: "setns", name: self.name.clone(), source });
        }
        Ok(rt)
    }
}

fn enter(file: &File, name: &str) -> Result<(), NetnsError> {
    // SAFETY: the fd is a valid open namespace file for the call's duration;
    // setns only changes the calling thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let source = std::io::Error::last_os_error();
        return Err(NetnsError::Sys { call: "setns", name: name.to_string(), source });
    }
    Ok(())
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            tracing::warn!(error = %e, "network namespace not deleted");
        }
    }
}

/// Several "machines" on one Ethernet segment: a bridge in its own
/// namespace (`<prefix>-lan`), and one namespace per host (`<prefix>-<name>`)
/// plugged into it by a veth pair. Each host sees its end as `lan0`. The
/// namespaces go when the `Lan` and the hosts are dropped.
#[derive(Debug)]
pub struct Lan {
    bridge: NetNs,
    prefix: String,
}

impl Lan {
    /// The bridge `br0`, up, in the namespace `<prefix>-lan`.
    pub fn create(prefix: impl Into<String>) -> Result<Lan, NetnsError> {
        let prefix = prefix.into();
        let bridge = NetNs::create(format!("{prefix}-lan"))?;
        bridge.ip(&["link", "add", "br0", "type", "bridge"])?;
        bridge.ip(&["link", "set", "br0", "up"])?;
        Ok(Lan { bridge, prefix })
    }

    /// A new host namespace `<prefix>-<name>` whose `lan0` is plugged into
    /// the bridge, has the addresses `addrs` (CIDR, e.g. `10.77.0.1/24`)
    /// and is up. `<prefix><name>` names the bridge's end, so it must fit
    /// in an interface name (15 bytes).
    pub fn host(&self, name: &str, addrs: &[&str]) -> Result<NetNs, NetnsError> {
        let host = NetNs::create(format!("{}-{name}", self.prefix))?;
        let outer = format!("{}{name}", self.prefix);
        let (host_ns, lan_ns) = (host.name(), self.bridge.name());
        ip(&["link", "add", "lan0", "netns", host_ns, "type", "veth", "peer", "name", &outer, "netns", lan_ns])?;
        self.bridge.ip(&["link", "set", &outer, "master", "br0", "up"])?;
        for a in addrs {
            host.ip(&["addr", "add", a, "dev", "lan0"])?;
        }
        host.ip(&["link", "set", "lan0", "up"])?;
        Ok(host)
    }
}
