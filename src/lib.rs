//! `swarm`: Docker Swarm mode re-thought as crates an application links.
//!
//! This facade re-exports [`swarm_core`] (the model, the four traits, the
//! in-memory backends and the test harness) at its root, and the other
//! crates as modules behind cargo features (`sched` is the former name of
//! `placement`, kept as an alias):
//!
//! | feature      | module        | crate                      |
//! |--------------|---------------|----------------------------|
//! | `placement`  | [`placement`] | `swarm-sched` (default): the built-in schedulers; [`scheduler`] is the trait they implement |
//! | `raft`       | `raft`        | `swarm-raft`               |
//! | `docker`     | `docker`      | `swarm-runtime-docker`     |
//! | `containerd` | `containerd`  | `swarm-runtime-containerd` |
//! | `net`        | `net`         | `swarm-net`                |
//! | `security`   | `security`    | `swarm-security`           |
//! | `raft-tls`   | `raft::tls`   | `swarm-raft` with its `tls` feature (implies `raft` and `security`): mutual TLS between managers |

pub use swarm_core::*;

#[cfg(feature = "placement")]
pub use swarm_sched as placement;

#[cfg(feature = "raft")]
pub use swarm_raft as raft;

#[cfg(feature = "docker")]
pub use swarm_runtime_docker as docker;

#[cfg(feature = "containerd")]
pub use swarm_runtime_containerd as containerd;

#[cfg(feature = "net")]
pub use swarm_net as net;

#[cfg(feature = "security")]
pub use swarm_security as security;

/// The README's code, compiled by `cargo test --doc` so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
