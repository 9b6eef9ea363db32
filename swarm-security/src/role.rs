//! The role a certificate's holder plays in the cluster, as written in
//! the OU of its certificate: `manager` or `worker` for nodes, `operator`
//! for a person or tool driving the control API (`swarmctl`), which is
//! not a node and only ever acts as a TLS client.
//!
//! ```
//! use swarm_security::role::Role;
//!
//! assert_eq!("manager".parse::<Role>(), Ok(Role::Manager));
//! assert_eq!(Role::Worker.as_str(), "worker");
//! assert_eq!(Role::Manager.server_name(), "swarm-manager");
//! assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
//! ```

use std::fmt;
use std::str::FromStr;

/// A certificate holder's role; the certificate's OU carries
/// [`Role::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A manager: runs raft, the controllers, the dispatcher and the CA.
    Manager,
    /// A worker: runs tasks assigned by the dispatcher.
    Worker,
    /// An operator: not a node but a client of the control API (a person
    /// or tool such as `swarmctl`). Its certificate's CN is the operator's
    /// name; it is valid for client authentication only.
    Operator,
}

impl Role {
    /// The OU value: `manager`, `worker` or `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
            Role::Operator => "operator",
        }
    }

    /// The DNS name every certificate of this role carries as a subject
    /// alternative name (`swarm-manager`, `swarm-worker` or
    /// `swarm-operator`), used as the TLS server name when a node dials
    /// "any manager". An operator never serves, so its name only marks the
    /// certificate.
    pub fn server_name(self) -> &'static str {
        match self {
            Role::Manager => "swarm-manager",
            Role::Worker => "swarm-worker",
            Role::Operator => "swarm-operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was none of `manager`, `worker` and `operator`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected \"manager\", \"worker\" or \"operator\"")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "manager" => Ok(Role::Manager),
            "worker" => Ok(Role::Worker),
            "operator" => Ok(Role::Operator),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_others() {
        for role in [Role::Manager, Role::Worker, Role::Operator] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(role.to_string(), role.as_str());
        }
        assert_eq!("Manager".parse::<Role>(), Err(UnknownRole("Manager".to_owned())));
        assert_eq!("admin".parse::<Role>(), Err(UnknownRole("admin".to_owned())));
    }

    #[test]
    fn server_names_are_distinct() {
        assert_eq!(Role::Manager.server_name(), "swarm-manager");
        assert_eq!(Role::Worker.server_name(), "swarm-worker");
        assert_eq!(Role::Operator.server_name(), "swarm-operator");
    }
}
