//! `swarm-runtime-docker`: the [`Runtime`](swarm_core::runtime::Runtime)
//! on the Docker Engine API, through bollard.
//!
//! - [`DockerRuntime`]: images (present, or pulled with credentials),
//!   containers with the project's labels, limits, mounts, networks (the
//!   service name as alias), overlay endpoints (a bridge network per overlay
//!   network on its `swbr<vni>` bridge, the manager's address and MAC:
//!   [`DockerRuntime::ensure_endpoint_network`]), host-mode ports; stop with grace then kill,
//!   inspect, list by labels (agent restart: adopt or remove), logs, stats,
//!   exec, health probes (the agent's, see [`swarm_core::runtime::default_probe`]),
//!   networks and named volumes, and the Engine's event stream
//!   ([`DockerRuntime::events`]).
//! - Secrets and configs as files on a host tmpfs, bind-mounted read-only:
//!   never on disk, never in `docker inspect` (see the `secrets` module docs
//!   in the source for why not the archive upload or an exec).
//! - [`fixture`]: a static test workload image built and imported on the
//!   machine, for engines that cannot reach a registry.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use swarm_core::runtime::Runtime;
//! use swarm_runtime_docker::{DockerRuntime, DockerRuntimeOptions, fixture};
//! let rt = DockerRuntime::connect(DockerRuntimeOptions::default())?;
//! let image = fixture::ensure_test_image(rt.client()).await?;
//! let cfg = fixture::workload_config(&image, "demo.1.x", "x");
//! rt.prepare(&cfg).await?;
//! let id = rt.create(&cfg).await?;
//! rt.start(&id).await?;
//! let addr = rt.inspect(&id).await?.addresses[0];
//! rt.stop(&id, Duration::from_secs(5)).await?;
//! rt.remove(&id).await?;
//! # let _ = addr; Ok(()) }
//! ```

#![warn(missing_docs)]

mod convert;
pub mod events;
pub mod fixture;
mod runtime;
mod secrets;
pub mod tarball;

pub use convert::NETWORK_VNI_LABEL;
pub use events::{ContainerEvent, ContainerEventKind};
pub use runtime::{DEFAULT_OVERLAY_MTU, DockerRuntime, DockerRuntimeOptions};
