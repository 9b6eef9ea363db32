//! What the examples share. Each example takes it in with `mod support;`
//! (cargo does not build a directory without a `main.rs` as an example).
//!
//! - [`interrupt`]: Ctrl-C (SIGINT) and SIGTERM remove the containers the
//!   run started, then the example exits with 130 or 143, as a shell says.
//! - [`tracked`]: the runtime wrapper that lets the cleanup know when no
//!   create or remove is still on its way to the engine.

// Each example uses part of it.
#![allow(dead_code)]

pub mod interrupt;
pub mod tracked;
