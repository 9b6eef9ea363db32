//! `swarm-runtime-containerd`: the [`Runtime`](swarm_core::runtime::Runtime)
//! trait on containerd's gRPC API, through `containerd-client`.
//!
//! - [`ContainerdRuntime`]: tasks as containerd containers and tasks in a
//!   namespace of the project's own (never Docker's `moby`), rootfs from
//!   overlayfs snapshots of the image's layers, an OCI spec generated from
//!   the task ([`spec`]), a network namespace per task on a node bridge
//!   and on the `swbr<vni>` bridge of each overlay endpoint, with the
//!   manager's address and MAC, optionally in a given host namespace
//!   ([`net`]), host-mode published ports as DNAT rules ([`ports`]),
//!   secrets and configs on a tmpfs ([`files`]), stats from the
//!   task's cgroup metrics ([`metrics`]).
//! - [`pull`]: images missing from the store are pulled from their
//!   registry (Registry HTTP API v2; anonymous, basic or Bearer token
//!   auth; digests verified) into the content store, then unpacked.
//! - [`fixture`]: builds a tiny image (Debian's static busybox) and imports
//!   it with `ctr`, for tests and benchmarks without a registry.
//!
//! Design, set-up and known gaps: `docs/swarm-runtime-containerd.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), swarm_core::runtime::RuntimeError> {
//! use swarm_core::runtime::{ContainerConfig, Runtime};
//! use swarm_runtime_containerd::{ContainerdConfig, ContainerdRuntime};
//! let rt = ContainerdRuntime::connect(ContainerdConfig::new("swarm-rs")).await?;
//! let mut cfg = ContainerConfig { name: "web.1.x".into(), ..Default::default() };
//! cfg.spec.image = "docker.io/swarm-ctd/busybox:1".into();
//! cfg.spec.command = vec!["sleep".into(), "60".into()];
//! rt.prepare(&cfg).await?;
//! let id = rt.create(&cfg).await?;
//! rt.start(&id).await?;
//! println!("{:?}", rt.inspect(&id).await?.addresses);
//! rt.stop(&id, std::time::Duration::from_secs(10)).await?;
//! rt.remove(&id).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod engine;
pub mod files;
pub mod fixture;
pub mod image;
pub mod metrics;
pub mod net;
pub mod ports;
pub mod pull;
pub mod runtime;
pub mod spec;
mod tls;

pub use net::BridgeConfig;
pub use pull::{Credentials, PullOptions, RegistryCredentials};
pub use runtime::{ContainerdConfig, ContainerdRuntime, DEFAULT_OVERLAY_MTU, ExitEvent};

/// A short random-enough token (8 hex digits) naming one task's objects:
/// a hash of the process id, the time and a counter.
pub(crate) fn token() -> String {
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let h = Sha256::digest(format!("{}-{t}-{n}", std::process::id()).as_bytes());
    image::hex(&h[..4])
}
