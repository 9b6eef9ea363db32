//! Placement constraints: `node.labels.zone==eu`, `node.role!=manager`,
//! `node.ip==10.0.0.0/8`.
//!
//! Keys: `node.id`, `node.hostname`, `node.ip` (an address or a CIDR),
//! `node.role`, `node.platform.os`, `node.platform.arch`, `node.labels.<k>`,
//! `engine.labels.<k>`. Operators `==` and `!=`. Values compare
//! case-insensitively, as in Swarm. A constraint on a label the node lacks
//! fails with `==` and holds with `!=`.
//!
//! ```
//! use swarm_core::constraint::Constraint;
//! use swarm_core::model::{Node, Resources};
//! let c: Constraint = "node.labels.zone==eu".parse().unwrap();
//! let mut node = Node::ready("n1", "host1", Resources::default());
//! assert!(!c.matches(&node));
//! node.spec.labels.insert("zone".into(), "eu".into());
//! assert!(c.matches(&node));
//! assert!("node.labels.zone=eu".parse::<Constraint>().is_err());
//! ```

use crate::model::Node;
use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// What a constraint looks at.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum ConstraintKey {
    /// `node.id`
    NodeId,
    /// `node.hostname`
    NodeHostname,
    /// `node.ip`
    NodeIp,
    /// `node.role`
    NodeRole,
    /// `node.platform.os`
    PlatformOs,
    /// `node.platform.arch`
    PlatformArch,
    /// `node.labels.<key>`
    NodeLabel(String),
    /// `engine.labels.<key>`
    EngineLabel(String),
}

impl fmt::Display for ConstraintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConstraintKey::NodeId => f.write_str("node.id"),
            ConstraintKey::NodeHostname => f.write_str("node.hostname"),
            ConstraintKey::NodeIp => f.write_str("node.ip"),
            ConstraintKey::NodeRole => f.write_str("node.role"),
            ConstraintKey::PlatformOs => f.write_str("node.platform.os"),
            ConstraintKey::PlatformArch => f.write_str("node.platform.arch"),
            ConstraintKey::NodeLabel(k) => write!(f, "node.labels.{k}"),
            ConstraintKey::EngineLabel(k) => write!(f, "engine.labels.{k}"),
        }
    }
}

/// `==` or `!=`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum ConstraintOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

/// A parsed placement constraint.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Constraint {
    /// The key.
    pub key: ConstraintKey,
    /// The operator.
    pub op: ConstraintOp,
    /// The value to compare with.
    pub value: String,
}

/// Why a constraint did not parse.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum ConstraintError {
    /// Neither `==` nor `!=` found.
    #[error("constraint {0:?} has no operator: use == or !=")]
    NoOperator(String),
    /// The key is not one of the known keys.
    #[error(
        "constraint {0:?} has an unknown key {1:?}: expected node.id, node.hostname, node.ip, node.role, node.platform.os, node.platform.arch, node.labels.<key> or engine.labels.<key>"
    )]
    UnknownKey(String, String),
    /// Nothing after the operator.
    #[error("constraint {0:?} has an empty value")]
    EmptyValue(String),
    /// `node.ip` with a value that is neither an address nor a CIDR.
    #[error("constraint {0:?}: node.ip needs an IP address or a CIDR, got {1:?}")]
    BadIp(String, String),
    /// `node.role` with a value other than manager or worker.
    #[error("constraint {0:?}: node.role must be manager or worker, got {1:?}")]
    BadRole(String, String),
    /// An invalid character in the value.
    #[error("constraint {0:?}: the value contains an operator character")]
    BadValue(String),
}

impl FromStr for Constraint {
    type Err = ConstraintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, op, value) = if let Some(i) = s.find("==") {
            (&s[..i], ConstraintOp::Eq, &s[i + 2..])
        } else if let Some(i) = s.find("!=") {
            (&s[..i], ConstraintOp::Ne, &s[i + 2..])
        } else {
            return Err(ConstraintError::NoOperator(s.to_string()));
        };
        let key_s = key.trim();
        let value = value.trim();
        if value.is_empty() {
            return Err(ConstraintError::EmptyValue(s.to_string()));
        }
        if value.contains('=') || value.contains('!') {
            return Err(ConstraintError::BadValue(s.to_string()));
        }
        let lower = key_s.to_ascii_lowercase();
        let key = match lower.as_str() {
            "node.id" => ConstraintKey::NodeId,
            "node.hostname" => ConstraintKey::NodeHostname,
            "node.ip" => ConstraintKey::NodeIp,
            "node.role" => ConstraintKey::NodeRole,
            "node.platform.os" => ConstraintKey::PlatformOs,
            "node.platform.arch" => ConstraintKey::PlatformArch,
            _ => {
                if let Some(k) = key_s.strip_prefix("node.labels.").filter(|k| valid_label_key(k)) {
                    ConstraintKey::NodeLabel(k.to_string())
                } else if let Some(k) = key_s.strip_prefix("engine.labels.").filter(|k| valid_label_key(k)) {
                    ConstraintKey::EngineLabel(k.to_string())
                } else {
                    return Err(ConstraintError::UnknownKey(s.to_string(), key_s.to_string()));
                }
            }
        };
        match key {
            ConstraintKey::NodeIp if parse_ip_or_net(value).is_none() => {
                return Err(ConstraintError::BadIp(s.to_string(), value.to_string()));
            }
            ConstraintKey::NodeRole
                if !value.eq_ignore_ascii_case("manager") && !value.eq_ignore_ascii_case("worker") =>
            {
                return Err(ConstraintError::BadRole(s.to_string(), value.to_string()));
            }
            _ => {}
        }
        Ok(Constraint { key, op, value: value.to_string() })
    }
}

fn valid_label_key(k: &str) -> bool {
    !k.is_empty() && !k.chars().any(|c| c.is_whitespace())
}

fn parse_ip_or_net(v: &str) -> Option<IpNet> {
    if let Ok(net) = v.parse::<IpNet>() {
        return Some(net);
    }
    v.parse::<IpAddr>().ok().map(IpNet::from)
}

/// Normalises architecture names (`x86_64` = `amd64`, `aarch64` = `arm64`).
pub fn normalize_arch(a: &str) -> String {
    match a.to_ascii_lowercase().as_str() {
        "x86_64" | "x86-64" | "amd64" => "amd64".into(),
        "aarch64" | "arm64" => "arm64".into(),
        "i386" | "i686" | "386" => "386".into(),
        other => other.to_string(),
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            ConstraintOp::Eq => "==",
            ConstraintOp::Ne => "!=",
        };
        write!(f, "{}{}{}", self.key, op, self.value)
    }
}

impl Constraint {
    /// Parses a list, stopping at the first error.
    pub fn parse_all<S: AsRef<str>>(list: &[S]) -> Result<Vec<Constraint>, ConstraintError> {
        list.iter().map(|s| s.as_ref().parse()).collect()
    }

    /// True when `node` satisfies the constraint.
    pub fn matches(&self, node: &Node) -> bool {
        let equal = match &self.key {
            ConstraintKey::NodeId => Some(node.id.as_str().eq_ignore_ascii_case(&self.value)),
            ConstraintKey::NodeHostname => Some(node.description.hostname.eq_ignore_ascii_case(&self.value)),
            ConstraintKey::NodeRole => Some(node.spec.role.as_str().eq_ignore_ascii_case(&self.value)),
            ConstraintKey::PlatformOs => Some(node.description.platform.os.eq_ignore_ascii_case(&self.value)),
            ConstraintKey::PlatformArch => {
                Some(normalize_arch(&node.description.platform.architecture) == normalize_arch(&self.value))
            }
            ConstraintKey::NodeIp => {
                let net = parse_ip_or_net(&self.value);
                let addr = node.status.addr.parse::<IpAddr>().ok();
                match (net, addr) {
                    (Some(net), Some(addr)) => Some(net.contains(&addr)),
                    _ => None,
                }
            }
            ConstraintKey::NodeLabel(k) => node.spec.labels.get(k).map(|v| v.eq_ignore_ascii_case(&self.value)),
            ConstraintKey::EngineLabel(k) => {
                node.description.engine_labels.get(k).map(|v| v.eq_ignore_ascii_case(&self.value))
            }
        };
        match (self.op, equal) {
            (ConstraintOp::Eq, Some(e)) => e,
            (ConstraintOp::Eq, None) => false,
            (ConstraintOp::Ne, Some(e)) => !e,
            (ConstraintOp::Ne, None) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeRole, Resources};

    fn node() -> Node {
        let mut n = Node::ready("abc", "host-1", Resources::default());
        n.status.addr = "10.1.2.3".into();
        n.spec.labels.insert("zone".into(), "eu".into());
        n.description.engine_labels.insert("disk".into(), "ssd".into());
        n.description.platform.architecture = "x86_64".into();
        n
    }

    #[test]
    fn every_key_matches() {
        let n = node();
        for (c, want) in [
            ("node.id==abc", true),
            ("node.hostname==HOST-1", true),
            ("node.hostname!=host-1", false),
            ("node.ip==10.1.0.0/16", true),
            ("node.ip==10.2.0.0/16", false),
            ("node.ip!=10.1.2.3", false),
            ("node.role==worker", true),
            ("node.role!=manager", true),
            ("node.platform.os==linux", true),
            ("node.platform.arch==amd64", true),
            ("node.labels.zone==eu", true),
            ("node.labels.zone!=eu", false),
            ("node.labels.rack==r1", false),
            ("node.labels.rack!=r1", true),
            ("engine.labels.disk==ssd", true),
        ] {
            let parsed: Constraint = c.parse().unwrap();
            assert_eq!(parsed.matches(&n), want, "{c}");
            assert_eq!(parsed.to_string().to_lowercase(), c.to_lowercase());
        }
        let mut m = node();
        m.spec.role = NodeRole::Manager;
        assert!("node.role==manager".parse::<Constraint>().unwrap().matches(&m));
    }

    #[test]
    fn bad_constraints_are_explained() {
        assert!(matches!("node.labels.zone=eu".parse::<Constraint>(), Err(ConstraintError::NoOperator(_))));
        assert!(matches!("node.colour==red".parse::<Constraint>(), Err(ConstraintError::UnknownKey(..))));
        assert!(matches!("node.labels.==x".parse::<Constraint>(), Err(ConstraintError::UnknownKey(..))));
        assert!(matches!("node.id==".parse::<Constraint>(), Err(ConstraintError::EmptyValue(_))));
        assert!(matches!("node.ip==banana".parse::<Constraint>(), Err(ConstraintError::BadIp(..))));
        assert!(matches!("node.role==boss".parse::<Constraint>(), Err(ConstraintError::BadRole(..))));
        assert!(matches!("node.id==a==b".parse::<Constraint>(), Err(ConstraintError::BadValue(_))));
    }
}
