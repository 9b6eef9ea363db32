//! `swarm-cli`: the node composition shared by `swarmd` and `swarmctl`.
//!
//! A networked swarm node is a composition of the library crates, and all
//! of it lives here as a library so that a PaaS can embed the very node
//! `swarmd` runs:
//!
//! - [`state::StateDir`]: what a node keeps on disk (certificates, raft
//!   log, its record).
//! - [`membership`]: the `raft` service of the node API, through which a
//!   manager that joined with a manager token becomes a raft voter.
//! - [`peers`]: keeps every manager's raft transport in step with the
//!   managers recorded in the store.
//! - [`node::SwarmNode`]: one node, manager or worker: init, join, resume,
//!   shut down.
//! - [`args`]: the small command-line parser both programs use.
//!
//! See the README's three-node walk-through and docs/swarm-cli.md.

#![warn(missing_docs)]

pub mod args;
pub mod ctl;
pub mod membership;
pub mod node;
pub mod peers;
pub mod state;
