//! What the examples share. Each example takes it in with `mod support;`
//! (cargo does not build a directory without a `main.rs` as an example).
//!
//! - [`interrupt`]: Ctrl-C (SIGINT) and SIGTERM remove the containers the
//!   run started, then the example exits with 130 or 143, as a shell says.
//! - [`tracked`]: the runtime wrapper that lets the cleanup know when no
//!   create or remove is still on its way to the engine.
//!
//! It lives with the examples rather than in a library crate: an embedder's
//! process has its own shutdown, and what it would take from here (a label
//! per run on every container, creates counted until they finish, a sweep
//! by label through [`Runtime::list`](swarm::runtime::Runtime::list)) is a
//! few lines over the `Runtime` trait.

// Each example uses part of it.
#![allow(dead_code)]

pub mod interrupt;
pub mod tracked;
