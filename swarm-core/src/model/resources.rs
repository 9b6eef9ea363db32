use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A quantity of compute resources: CPU in billionths of a CPU, memory in
/// bytes, and generic (user-defined, discrete) resources such as GPUs.
#[derive(Clone, PartialEq, Eq, Default, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    /// CPU in units of 10^-9 CPUs (1 CPU = 1_000_000_000).
    pub nano_cpus: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Generic resources by kind, e.g. `{"gpu": 2}`.
    pub generic: BTreeMap<String, u64>,
}

impl Resources {
    /// `cpus` whole CPUs and `memory_bytes` of memory.
    pub fn new(nano_cpus: u64, memory_bytes: u64) -> Self {
        Self { nano_cpus, memory_bytes, generic: BTreeMap::new() }
    }

    /// Adds a generic resource.
    pub fn with_generic(mut self, kind: impl Into<String>, count: u64) -> Self {
        self.generic.insert(kind.into(), count);
        self
    }

    /// True when nothing is requested.
    pub fn is_zero(&self) -> bool {
        self.nano_cpus == 0 && self.memory_bytes == 0 && self.generic.values().all(|v| *v == 0)
    }

    /// Adds `other` to `self` (saturating).
    pub fn add(&mut self, other: &Resources) {
        self.nano_cpus = self.nano_cpus.saturating_add(other.nano_cpus);
        self.memory_bytes = self.memory_bytes.saturating_add(other.memory_bytes);
        for (k, v) in &other.generic {
            let e = self.generic.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }

    /// Subtracts `other` from `self` (saturating at zero).
    pub fn sub(&mut self, other: &Resources) {
        self.nano_cpus = self.nano_cpus.saturating_sub(other.nano_cpus);
        self.memory_bytes = self.memory_bytes.saturating_sub(other.memory_bytes);
        for (k, v) in &other.generic {
            if let Some(e) = self.generic.get_mut(k) {
                *e = e.saturating_sub(*v);
            }
        }
    }

    /// True when `request` fits in `self` on every resource.
    pub fn fits(&self, request: &Resources) -> bool {
        self.nano_cpus >= request.nano_cpus
            && self.memory_bytes >= request.memory_bytes
            && request.generic.iter().all(|(k, v)| *v == 0 || self.generic.get(k).copied().unwrap_or(0) >= *v)
    }
}

/// A task's resource requirements: what the scheduler reserves on a node,
/// and the limits the runtime enforces (0 means unlimited).
#[derive(Clone, PartialEq, Eq, Default, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourceRequirements {
    /// Hard limits enforced by the runtime; 0 = no limit.
    pub limits: Resources,
    /// Reserved on the node by the scheduler.
    pub reservations: Resources,
}

/// An operating system and CPU architecture, e.g. linux/amd64.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Platform {
    /// e.g. "linux".
    pub os: String,
    /// e.g. "amd64", "arm64".
    pub architecture: String,
}

impl Platform {
    /// A platform from its parts.
    pub fn new(os: impl Into<String>, architecture: impl Into<String>) -> Self {
        Self { os: os.into(), architecture: architecture.into() }
    }
}
