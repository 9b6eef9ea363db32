//! The Runtime on containerd's gRPC API. Not built yet: tracked by issue 9.
//!
//! This crate holds nothing yet: it exists so the workspace has its final
//! shape. It exports no types, so nothing can mistake it for working code.
