use super::{Labels, Meta};
use crate::id::{NetworkId, VolumeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A network tasks attach to.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Network {
    /// Network id.
    pub id: NetworkId,
    /// Store bookkeeping.
    pub meta: Meta,
    /// What the operator asked for.
    pub spec: NetworkSpec,
    /// The subnet allocated to it (CIDR), if the allocator gave one.
    pub subnet: Option<String>,
}

/// A network's spec.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkSpec {
    /// Name: a DNS label.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Driver name (e.g. "overlay", "bridge"); empty = the runtime's default.
    pub driver: String,
    /// Requested subnet (CIDR); empty = allocate from the pool.
    pub subnet: String,
    /// No route outside.
    pub internal: bool,
    /// Standalone containers may attach.
    pub attachable: bool,
    /// The routing mesh's network.
    pub ingress: bool,
}

/// A named volume.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Volume {
    /// Volume id.
    pub id: VolumeId,
    /// Store bookkeeping.
    pub meta: Meta,
    /// What the operator asked for.
    pub spec: VolumeSpec,
}

/// A volume's spec.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct VolumeSpec {
    /// Name: a DNS label.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Driver; empty = "local".
    pub driver: String,
    /// Driver options.
    pub driver_opts: BTreeMap<String, String>,
}
