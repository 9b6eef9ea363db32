//! The cluster's objects: nodes, services, tasks, networks, volumes,
//! secrets, configs and the cluster settings.
//!
//! Shapes and defaults follow Docker Swarm (SwarmKit's `api` package): an
//! object has an id, a [`Meta`] with its version, a user-owned `spec` and,
//! where the system reports something, a status. Every struct is plain serde
//! with a `Default` that gives Swarm's defaults.

mod cluster;
pub mod limits;
mod network;
mod node;
mod object;
mod resources;
mod secret;
mod service;
mod task;

pub use cluster::*;
pub use network::*;
pub use node::*;
pub use object::*;
pub use resources::*;
pub use secret::*;
pub use service::*;
pub use task::*;

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A store revision. Every committed transaction gets the next one.
pub type Revision = u64;

/// The version of one object: the revision of the transaction that last
/// wrote it. Updates carry the version they read (optimistic concurrency).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(pub u64);

/// Bookkeeping the store maintains on every object.
#[derive(Clone, PartialEq, Eq, Default, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Meta {
    /// Revision of the last write; set by the store.
    pub version: Version,
    /// Revision of the create; set by the store. Orders objects by age even
    /// when their timestamps are equal (as under a paused clock).
    pub created_revision: Revision,
    /// When the object was created; set by the store.
    pub created_at: Timestamp,
    /// When the object was last written; set by the store.
    pub updated_at: Timestamp,
}

/// Labels: free-form key/value metadata.
pub type Labels = BTreeMap<String, String>;
