//! Errors of the raft store's own operations (opening, membership, tools).
//! Store calls ([`swarm_core::store::Store`]) return
//! [`swarm_core::store::StoreError`].

use swarm_core::store::StoreError;

/// Why opening, configuring or administering a raft store failed.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// The raft log engine failed (open, read or write).
    #[error("raft log engine in {dir} failed: {reason}")]
    Engine {
        /// Log directory.
        dir: String,
        /// What the engine said.
        reason: String,
    },
    /// A file system operation failed.
    #[error("{what} failed: {source}")]
    Io {
        /// The operation.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// raft-rs refused an operation.
    #[error("raft refused the operation: {0}")]
    Raft(#[from] raft::Error),
    /// The configuration is invalid.
    #[error("invalid raft store configuration: {0}")]
    Config(String),
    /// Persistent data could not be decoded.
    #[error("corrupt raft data: {0}")]
    Corrupt(String),
    /// A store-level failure (no quorum, unavailable, timeout).
    #[error(transparent)]
    Store(#[from] StoreError),
}
