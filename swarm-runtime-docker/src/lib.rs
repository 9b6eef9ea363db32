//! The Runtime on the Docker Engine API (bollard). Not built yet: tracked by issue 6.
//!
//! This crate holds nothing yet: it exists so the workspace has its final
//! shape. It exports no types, so nothing can mistake it for working code.
