//! The role a node plays in the cluster, as written in the OU of its
//! certificate: `manager` or `worker`.
//!
//! ```
//! use swarm_security::role::Role;
//!
//! assert_eq!("manager".parse::<Role>(), Ok(Role::Manager));
//! assert_eq!(Role::Worker.as_str(), "worker");
//! assert_eq!(Role::Manager.server_name(), "swarm-manager");
//! ```

use std::fmt;
use std::str::FromStr;

/// A node's role; the certificate's OU carries [`Role::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A manager: runs raft, the controllers, the dispatcher and the CA.
    Manager,
    /// A worker: runs tasks assigned by the dispatcher.
    Worker,
}

impl Role {
    /// The OU value: `manager` or `worker`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }

    /// The DNS name every certificate of this role carries as a subject
    /// alternative name (`swarm-manager` or `swarm-worker`), used as the
    /// TLS server name when a node dials "any manager".
    pub fn server_name(self) -> &'static str {
        match self {
            Role::Manager => "swarm-manager",
            Role::Worker => "swarm-worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was neither `manager` nor `worker`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected \"manager\" or \"worker\"")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "manager" => Ok(Role::Manager),
            "worker" => Ok(Role::Worker),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_others() {
        for role in [Role::Manager, Role::Worker] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert_eq!("Manager".parse::<Role>(), Err(UnknownRole("Manager".to_owned())));
    }
}
