//! The Store replicated with tikv raft-rs. Not built yet: tracked by issue 8.
//!
//! This crate holds nothing yet: it exists so the workspace has its final
//! shape. It exports no types, so nothing can mistake it for working code.
