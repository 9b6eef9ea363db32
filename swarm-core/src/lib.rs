//! `swarm-core`: the model, spec validation, the four traits and the
//! in-memory backends of an embeddable, Docker-Swarm-like orchestrator.
//!
//! - [`model`]: nodes, services, tasks, networks, volumes, secrets, configs,
//!   cluster settings, with Swarm's defaults.
//! - [`validate`]: precise, per-field spec errors.
//! - [`state`]: the one deterministic state machine (`apply(tx)`).
//! - The four traits: [`store::Store`], [`scheduler::Scheduler`],
//!   [`runtime::Runtime`], [`discovery::Discovery`].
//! - [`feasibility`]: the standard rules deciding whether a node can take
//!   a task, written once for [`scheduler::check_node`] and swarm-sched's
//!   filters.
//! - In-memory backends: [`store::MemStore`], [`discovery::MemDiscovery`],
//!   [`sim::SimRuntime`].

#![warn(missing_docs)]

pub mod agent;
pub mod allocator;
pub mod cluster;
pub mod constraint;
pub mod controller;
pub mod discovery;
pub mod dispatcher;
pub mod feasibility;
#[cfg(feature = "io")]
pub mod frame;
pub mod harness;
pub mod id;
pub mod image;
pub mod manager;
pub mod model;
pub mod orchestrator;
pub mod overlay;
pub mod runtime;
pub mod scheduler;
pub mod sim;
pub mod state;
pub mod store;
pub mod time;
pub mod validate;
