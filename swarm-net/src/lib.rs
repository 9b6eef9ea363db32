//! `swarm-net`: service discovery for swarm.
//!
//! - [`alloc`]: subnets, virtual IPs and ingress published ports, as a pure
//!   plan over the state and a controller writing it through the store.
//! - [`dns`]: an embedded DNS server (hickory-server) answering `<service>`
//!   and `tasks.<service>` on the networks of the asking task.
//! - [`mesh`]: the routing mesh: every node listens on every ingress port
//!   and forwards TCP and UDP to a healthy endpoint anywhere.
//!
//! See docs/swarm-net.md for the design and how it differs from Swarm.

#![warn(missing_docs)]

pub mod alloc;
pub mod dns;
pub mod mesh;
#[cfg(target_os = "linux")]
pub mod splice;
