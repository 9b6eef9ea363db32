//! A node's identity, read from its certificate: CN = node id, OU = role,
//! O = cluster id, and the validity window. An operator certificate
//! ([`Role::Operator`]) reads the same way, its CN being the operator's
//! name.
//!
//! Identity is the certificate, never a field in a message: the
//! dispatcher and raft take it from the TLS peer certificate
//! ([`crate::tls::peer_identity`]) and [`NodeIdentity::check`] decides
//! whether that peer may be served.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use swarm_security::ca::{ClusterCa, NodeCsr};
//! use swarm_security::identity::{IdentityError, NodeIdentity};
//! use swarm_security::role::Role;
//!
//! let ca = ClusterCa::generate("c1", Duration::from_secs(86_400 * 365))?;
//! let csr = NodeCsr::generate("w1")?;
//! let now = SystemTime::now();
//! let cert = ca.sign_node_csr(csr.csr_pem(), "w1", Role::Worker, None, now)?;
//! let id = NodeIdentity::from_der(cert.cert_der())?;
//! assert!(matches!(
//!     id.check(now, "c1", &[Role::Manager]),
//!     Err(IdentityError::RoleNotAllowed { .. })
//! ));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::x509::X509Name;

use crate::role::Role;
use crate::time_conv::from_unix;

/// Why a certificate does not give an identity, or is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The bytes are not an X.509 certificate.
    #[error("cannot parse the certificate: {0}")]
    Parse(String),
    /// A subject field the identity needs is absent.
    #[error("the certificate subject has no {field}")]
    MissingField {
        /// `CN (node id)`, `OU (role)` or `O (cluster id)`.
        field: &'static str,
    },
    /// A subject field appears more than once, so the identity is ambiguous.
    #[error("the certificate subject has {count} values for {field}, expected one")]
    AmbiguousField {
        /// The field.
        field: &'static str,
        /// How many values it has.
        count: usize,
    },
    /// A subject field is not a readable string.
    #[error("the certificate subject's {field} is not a string")]
    UnreadableField {
        /// The field.
        field: &'static str,
    },
    /// The OU is none of `manager`, `worker` and `operator`.
    #[error("the certificate's role (OU) {0:?} is none of \"manager\", \"worker\" and \"operator\"")]
    UnknownRole(String),
    /// `now` is after the certificate's `not_after`.
    #[error("certificate of node {node_id} expired at {not_after:?} (now {now:?})")]
    Expired {
        /// The node.
        node_id: String,
        /// End of validity.
        not_after: SystemTime,
        /// The time of the check.
        now: SystemTime,
    },
    /// `now` is before the certificate's `not_before`.
    #[error("certificate of node {node_id} is not valid before {not_before:?} (now {now:?})")]
    NotYetValid {
        /// The node.
        node_id: String,
        /// Start of validity.
        not_before: SystemTime,
        /// The time of the check.
        now: SystemTime,
    },
    /// The certificate belongs to another cluster.
    #[error("certificate of node {node_id} belongs to cluster {found:?}, expected {expected:?}")]
    WrongCluster {
        /// The node.
        node_id: String,
        /// The cluster this side is in.
        expected: String,
        /// The certificate's O.
        found: String,
    },
    /// The role is not admitted here.
    #[error("node {node_id} has role {role}, this endpoint admits only {allowed:?}")]
    RoleNotAllowed {
        /// The node.
        node_id: String,
        /// Its role.
        role: Role,
        /// The roles admitted.
        allowed: Vec<Role>,
    },
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// CN.
    pub node_id: String,
    /// OU.
    pub role: Role,
    /// O.
    pub cluster_id: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

fn one<'a, I>(mut values: I, field: &'static str) -> Result<String, IdentityError>
where
    I: Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
{
    let first = values.next().ok_or(IdentityError::MissingField { field })?;
    let rest = values.count();
    if rest > 0 {
        return Err(IdentityError::AmbiguousField { field, count: rest + 1 });
    }
    let s = first.as_str().map_err(|_| IdentityError::UnreadableField { field })?;
    if s.is_empty() {
        return Err(IdentityError::MissingField { field });
    }
    Ok(s.to_owned())
}

fn from_subject(subject: &X509Name<'_>) -> Result<(String, Role, String), IdentityError> {
    let node_id = one(subject.iter_common_name(), "CN (node id)")?;
    let role = one(subject.iter_organizational_unit(), "OU (role)")?;
    let role = role.parse::<Role>().map_err(|e| IdentityError::UnknownRole(e.0))?;
    let cluster_id = one(subject.iter_organization(), "O (cluster id)")?;
    Ok((node_id, role, cluster_id))
}

impl NodeIdentity {
    /// Reads the identity of a DER certificate. It does not verify the
    /// signature: that is the TLS verifier's job ([`crate::tls`]).
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
        let (node_id, role, cluster_id) = from_subject(cert.subject())?;
        Ok(NodeIdentity {
            node_id,
            role,
            cluster_id,
            not_before: from_unix(cert.validity().not_before.timestamp()),
            not_after: from_unix(cert.validity().not_after.timestamp()),
        })
    }

    /// Reads the identity of the first certificate of a PEM text.
    pub fn from_pem(pem: &str) -> Result<Self, IdentityError> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| IdentityError::Parse(format!("not a PEM certificate: {e}")))?;
        Self::from_der(&der)
    }

    /// Whether this identity may be served at `now` by a member of
    /// `expected_cluster` on an endpoint admitting `allowed_roles`. Checks
    /// validity first, then cluster, then role.
    pub fn check(&self, now: SystemTime, expected_cluster: &str, allowed_roles: &[Role]) -> Result<(), IdentityError> {
        if now < self.not_before {
            return Err(IdentityError::NotYetValid { node_id: self.node_id.clone(), not_before: self.not_before, now });
        }
        if now > self.not_after {
            return Err(IdentityError::Expired { node_id: self.node_id.clone(), not_after: self.not_after, now });
        }
        if self.cluster_id != expected_cluster {
            return Err(IdentityError::WrongCluster {
                node_id: self.node_id.clone(),
                expected: expected_cluster.to_owned(),
                found: self.cluster_id.clone(),
            });
        }
        if !allowed_roles.contains(&self.role) {
            return Err(IdentityError::RoleNotAllowed {
                node_id: self.node_id.clone(),
                role: self.role,
                allowed: allowed_roles.to_vec(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
    use std::time::Duration;
    use x509_parser::prelude::FromDer;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A self-signed certificate with the given subject fields, valid
    /// 1000..2000 s after the epoch.
    fn cert_with(fields: &[(DnType, &str)]) -> Vec<u8> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for (ty, v) in fields {
            dn.push(ty.clone(), *v);
        }
        params.distinguished_name = dn;
        params.not_before = time::OffsetDateTime::from_unix_timestamp(1000).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(2000).unwrap();
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn good() -> NodeIdentity {
        NodeIdentity::from_der(&cert_with(&[
            (DnType::CommonName, "n1"),
            (DnType::OrganizationalUnitName, "manager"),
            (DnType::OrganizationName, "c1"),
        ]))
        .unwrap()
    }

    /// DER of an X.501 Name: one RDN per (last arc of 2.5.4.x, UTF-8 value).
    fn name_der(attrs: &[(u8, &str)]) -> Vec<u8> {
        fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut v = vec![tag, u8::try_from(body.len()).unwrap()];
            v.extend_from_slice(body);
            v
        }
        let mut rdns = Vec::new();
        for (arc, value) in attrs {
            let mut atv = tlv(0x06, &[0x55, 0x04, *arc]);
            atv.extend(tlv(0x0c, value.as_bytes()));
            rdns.extend(tlv(0x31, &tlv(0x30, &atv)));
        }
        tlv(0x30, &rdns)
    }

    #[test]
    fn reads_all_fields() {
        assert_eq!(
            good(),
            NodeIdentity {
                node_id: "n1".into(),
                role: Role::Manager,
                cluster_id: "c1".into(),
                not_before: at(1000),
                not_after: at(2000),
            }
        );
    }

    #[test]
    fn missing_ambiguous_and_unknown_fields_are_errors() {
        let no_ou = cert_with(&[(DnType::CommonName, "n"), (DnType::OrganizationName, "c")]);
        assert_eq!(NodeIdentity::from_der(&no_ou), Err(IdentityError::MissingField { field: "OU (role)" }));
        let no_cn = cert_with(&[(DnType::OrganizationalUnitName, "worker"), (DnType::OrganizationName, "c")]);
        assert_eq!(NodeIdentity::from_der(&no_cn), Err(IdentityError::MissingField { field: "CN (node id)" }));
        // rcgen cannot repeat a subject field, so this Name is built by hand.
        let two_o = name_der(&[(3, "n"), (11, "worker"), (10, "c"), (10, "d")]);
        let (_, name) = X509Name::from_der(&two_o).unwrap();
        assert_eq!(from_subject(&name), Err(IdentityError::AmbiguousField { field: "O (cluster id)", count: 2 }));
        let odd_role = cert_with(&[
            (DnType::CommonName, "n"),
            (DnType::OrganizationalUnitName, "admin"),
            (DnType::OrganizationName, "c"),
        ]);
        assert_eq!(NodeIdentity::from_der(&odd_role), Err(IdentityError::UnknownRole("admin".into())));
        assert!(matches!(NodeIdentity::from_der(b"not a cert"), Err(IdentityError::Parse(_))));
    }

    #[test]
    fn check_distinguishes_each_failure() {
        let id = good();
        assert_eq!(id.check(at(1500), "c1", &[Role::Manager]), Ok(()));
        assert_eq!(id.check(at(1000), "c1", &[Role::Manager]), Ok(()));
        assert_eq!(id.check(at(2000), "c1", &[Role::Manager]), Ok(()));
        assert!(matches!(id.check(at(2001), "c1", &[Role::Manager]), Err(IdentityError::Expired { .. })));
        assert!(matches!(id.check(at(999), "c1", &[Role::Manager]), Err(IdentityError::NotYetValid { .. })));
        assert!(matches!(id.check(at(1500), "c2", &[Role::Manager]), Err(IdentityError::WrongCluster { .. })));
        let err = id.check(at(1500), "c1", &[Role::Worker]).unwrap_err();
        assert!(matches!(err, IdentityError::RoleNotAllowed { .. }));
        assert_eq!(err.to_string(), "node n1 has role manager, this endpoint admits only [Worker]");
    }
}
