//! Object identifiers and a seedable generator for them.
//!
//! Every object kind has its own id type so a `TaskId` can never be passed
//! where a `NodeId` is expected. Ids are opaque strings; generated ones are
//! 25 lowercase alphanumerics, like Swarm's.
//!
//! ```
//! use swarm_core::id::{IdGen, TaskId};
//! let mut ids = IdGen::seeded(7);
//! let a: TaskId = ids.next_id();
//! let b: TaskId = IdGen::seeded(7).next_id();
//! assert_eq!(a, b); // same seed, same ids: tests are reproducible
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// Wraps an existing id.
            pub fn new(s: impl Into<String>) -> Self {
                Self(s.into())
            }
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// Identifies a [`Node`](crate::model::Node).
    NodeId
);
id_type!(
    /// Identifies a [`Service`](crate::model::Service).
    ServiceId
);
id_type!(
    /// Identifies a [`Task`](crate::model::Task).
    TaskId
);
id_type!(
    /// Identifies a [`Network`](crate::model::Network).
    NetworkId
);
id_type!(
    /// Identifies a [`Volume`](crate::model::Volume).
    VolumeId
);
id_type!(
    /// Identifies a [`Secret`](crate::model::Secret).
    SecretId
);
id_type!(
    /// Identifies a [`Config`](crate::model::Config).
    ConfigId
);
id_type!(
    /// Identifies the [`Cluster`](crate::model::Cluster) object.
    ClusterId
);

/// A small deterministic generator of ids (SplitMix64 underneath).
///
/// Seed it for reproducible tests; [`IdGen::from_entropy`] for production.
#[derive(Debug, Clone)]
pub struct IdGen {
    state: u64,
}

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

impl IdGen {
    /// A generator whose sequence depends only on `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for one run of a loop that may run again (a restarted
    /// controller, a new leader) with the same `seed`: `start` (the revision
    /// it starts at) is hashed into the seed, so runs starting at different
    /// revisions draw from unrelated parts of the sequence. (SplitMix64's
    /// state is a counter: seeds that differ by a multiple of its step give
    /// the same ids shifted, which a linear mix such as `seed ^ start * step`
    /// does, and two terms of leadership then created clashing task ids.)
    pub fn for_run(seed: u64, start: u64) -> Self {
        let mut mix = IdGen::seeded(start);
        Self { state: seed ^ mix.next_u64() }
    }

    /// A generator seeded from the process' hasher randomness and the clock.
    pub fn from_entropy() -> Self {
        use std::collections::hash_map::RandomState;
        use std::hash::{BuildHasher, Hasher};
        let mut h = RandomState::new().build_hasher();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        h.write_u64(nanos);
        Self { state: h.finish() }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A fresh 25-character id of any id type.
    pub fn next_id<T: From<String>>(&mut self) -> T {
        let mut s = String::with_capacity(25);
        let mut bits = self.next_u64();
        for i in 0..25 {
            if i == 12 {
                bits = self.next_u64();
            }
            s.push(ALPHABET[(bits % 36) as usize] as char);
            bits /= 36;
        }
        T::from(s)
    }
}

impl Default for IdGen {
    fn default() -> Self {
        Self::from_entropy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_at_nearby_revisions_share_no_ids() {
        // Two terms of leadership with the same seed, a few revisions apart:
        // with the old linear mix the second run repeated the first's ids.
        for seed in [0u64, 1, 7, u64::MAX] {
            for (a, b) in [(10u64, 12u64), (11, 13), (0, 1), (100, 164)] {
                let mut g1 = IdGen::for_run(seed, a);
                let ids1: std::collections::HashSet<String> = (0..2000).map(|_| g1.next_id()).collect();
                let mut g2 = IdGen::for_run(seed, b);
                let shared = (0..2000).map(|_| g2.next_id::<String>()).filter(|id| ids1.contains(id)).count();
                assert_eq!(shared, 0, "seed {seed}, revisions {a} and {b}");
            }
        }
    }

    #[test]
    fn ids_are_25_alnum_and_distinct() {
        let mut g = IdGen::seeded(1);
        let a: NodeId = g.next_id();
        let b: NodeId = g.next_id();
        assert_eq!(a.as_str().len(), 25);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
