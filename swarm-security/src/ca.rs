//! The cluster's root certificate authority, and the node side of a
//! certificate request.
//!
//! [`ClusterCa::generate`] makes a self-signed ECDSA P-256 root whose
//! subject is CN = `swarm-ca`, O = cluster id. Its certificate and key
//! serialise to PEM ([`ClusterCa::cert_pem`], [`ClusterCa::key_pem`]) for
//! the replicated store and load back with [`ClusterCa::from_pem`].
//! [`ClusterCa::sign_node_csr`] issues node certificates: the subject
//! (CN = node id, OU = role, O = cluster id), the validity and the
//! extensions are chosen by the CA; only the public key is taken from the
//! request, whose signature is checked first. A node makes its key pair
//! and request with [`NodeCsr::generate`]; its private key never leaves it.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use swarm_security::ca::{ClusterCa, NodeCsr};
//! use swarm_security::role::Role;
//!
//! let ca = ClusterCa::generate("c1", Duration::from_secs(86_400 * 365))?;
//! // What the store keeps, and what a new leader loads back:
//! let again = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem())?;
//! assert_eq!(again.cluster_id(), "c1");
//!
//! let csr = NodeCsr::generate("n1")?;
//! let issued = again.sign_node_csr(csr.csr_pem(), "n1", Role::Manager, None, SystemTime::now())?;
//! assert!(issued.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
    SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::role::Role;
use crate::time_conv::{from_unix, to_offset};

/// The CN of every cluster root certificate.
pub const CA_COMMON_NAME: &str = "swarm-ca";

/// Default validity of a new root CA: 20 years (Swarm's default).
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 86_400);

/// Default lifetime of a node certificate: 90 days (Swarm's default).
pub const DEFAULT_NODE_CERT_LIFETIME: Duration = Duration::from_secs(90 * 86_400);

/// The shortest node certificate lifetime a CA accepts by default: 1 hour
/// (Swarm's minimum). [`SigningPolicy::min_lifetime`] lowers it for tests.
pub const MIN_NODE_CERT_LIFETIME: Duration = Duration::from_secs(3_600);

/// How far back `not_before` is set from "now" to tolerate clock skew
/// between the CA and its nodes, by default.
pub const DEFAULT_BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Why the CA could not be made, loaded or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The cluster id is empty or not printable ASCII.
    #[error("invalid cluster id {0:?}: must be 1 to 64 characters of [A-Za-z0-9._-]")]
    InvalidClusterId(String),
    /// The node id is empty or not DNS-safe.
    #[error("invalid node id {0:?}: must be 1 to 64 characters of [A-Za-z0-9._-]")]
    InvalidNodeId(String),
    /// Generating a key or building/signing a certificate failed in rcgen.
    #[error("cannot {what}: {source}")]
    Rcgen {
        /// What was being done.
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// The CA certificate PEM could not be read.
    #[error("cannot load the CA certificate: {0}")]
    BadCertificate(String),
    /// The CA certificate is not a CA or has no cluster id.
    #[error("the certificate is not a swarm root CA: {0}")]
    NotACa(String),
    /// The key does not belong to the CA certificate.
    #[error("the CA key does not match the CA certificate's public key")]
    KeyMismatch,
    /// The certificate request could not be parsed or its signature is bad.
    #[error("cannot accept the certificate request: {0}")]
    BadCsr(rcgen::Error),
    /// The requested lifetime is shorter than the policy's minimum.
    #[error("certificate lifetime {requested:?} is shorter than the minimum {minimum:?}")]
    LifetimeTooShort {
        /// What was asked for.
        requested: Duration,
        /// The policy's minimum.
        minimum: Duration,
    },
    /// A time is outside what an X.509 certificate can express.
    #[error("time out of range for a certificate: {0}")]
    TimeOutOfRange(&'static str),
    /// The CA's own validity ends before `now`.
    #[error("the CA certificate has expired; it cannot issue certificates")]
    CaExpired,
    /// The OS random source failed.
    #[error("cannot read the OS random source: {0}")]
    Random(getrandom::Error),
}

/// Limits a CA applies when signing node certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningPolicy {
    /// Lifetime used when the caller asks for none (default 90 days).
    pub default_lifetime: Duration,
    /// Requests for shorter lifetimes are refused (default 1 hour). Tests
    /// lower this to seconds to watch certificates expire.
    pub min_lifetime: Duration,
    /// How far back `not_before` is placed from `now` (default 5 minutes).
    pub backdate: Duration,
}

impl Default for SigningPolicy {
    fn default() -> Self {
        SigningPolicy {
            default_lifetime: DEFAULT_NODE_CERT_LIFETIME,
            min_lifetime: MIN_NODE_CERT_LIFETIME,
            backdate: DEFAULT_BACKDATE,
        }
    }
}

/// A node certificate just issued by the CA.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    der: CertificateDer<'static>,
    pem: String,
    chain_pem: String,
}

impl IssuedCert {
    /// The certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.der
    }
    /// The certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.pem
    }
    /// The certificate followed by the CA's intermediates (the certificate
    /// cross-signed by the old root during a CA rotation), PEM: what a
    /// node presents. The same as [`IssuedCert::cert_pem`] when the CA has
    /// none.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }
}

/// The cluster's root CA: its certificate, its key and a signing policy.
pub struct ClusterCa {
    cluster_id: String,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    not_after: SystemTime,
    issuer: Issuer<'static, KeyPair>,
    policy: SigningPolicy,
    /// PEM appended to every certificate issued (see
    /// [`ClusterCa::with_intermediates`]).
    intermediates_pem: String,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster_id", &self.cluster_id)
            .field("not_after", &self.not_after)
            .field("policy", &self.policy)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(CaError::Random)?;
    // Positive and without a leading zero byte, as DER integers want.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn rcgen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |source| CaError::Rcgen { what, source }
}

impl ClusterCa {
    /// Makes a new root CA for `cluster_id`, valid from now for `validity`
    /// ([`DEFAULT_CA_VALIDITY`] is Swarm's 20 years).
    pub fn generate(cluster_id: &str, validity: Duration) -> Result<Self, CaError> {
        Self::generate_at(cluster_id, validity, SystemTime::now())
    }

    /// [`ClusterCa::generate`] with an explicit "now".
    pub fn generate_at(cluster_id: &str, validity: Duration, now: SystemTime) -> Result<Self, CaError> {
        if !valid_id(cluster_id) {
            return Err(CaError::InvalidClusterId(cluster_id.to_owned()));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err("generate the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_COMMON_NAME);
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        let policy = SigningPolicy::default();
        params.not_before = now
            .checked_sub(policy.backdate.min(validity))
            .and_then(to_offset)
            .ok_or(CaError::TimeOutOfRange("CA not_before"))?;
        params.not_after =
            now.checked_add(validity).and_then(to_offset).ok_or(CaError::TimeOutOfRange("CA not_after"))?;
        params.serial_number = Some(random_serial()?);
        // Path length 0: the root signs node certificates, no intermediates.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).map_err(rcgen_err("self-sign the CA certificate"))?;
        tracing::info!(cluster_id, ?validity, "generated a new cluster root CA");
        Self::from_parts(cert.der().clone(), key)
    }

    /// Loads a CA from the PEM of its certificate and key (as kept in the
    /// store). Checks that the certificate is a CA with a cluster id and
    /// that the key belongs to it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CaError::BadCertificate(format!("not a PEM certificate: {e}")))?;
        let key = KeyPair::from_pem(key_pem).map_err(rcgen_err("read the CA key PEM"))?;
        Self::from_parts(der, key)
    }

    fn from_parts(der: CertificateDer<'static>, key: KeyPair) -> Result<Self, CaError> {
        let (cluster_id, not_after) = {
            let (_, x509) = x509_parser::parse_x509_certificate(&der)
                .map_err(|e| CaError::BadCertificate(format!("not an X.509 certificate: {e}")))?;
            if !x509.is_ca() {
                return Err(CaError::NotACa("basic constraints do not say CA".into()));
            }
            let mut orgs = x509.subject().iter_organization();
            let cluster_id = match (orgs.next().map(|a| a.as_str()), orgs.next()) {
                (Some(Ok(o)), None) => o.to_owned(),
                _ => {
                    return Err(CaError::NotACa("subject needs exactly one O (cluster id)".into()));
                }
            };
            if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
                return Err(CaError::KeyMismatch);
            }
            (cluster_id, from_unix(x509.validity().not_after.timestamp()))
        };
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(rcgen_err("read the CA certificate as an issuer"))?;
        let pem = pem_of(&der);
        Ok(ClusterCa {
            cluster_id,
            cert_der: der,
            cert_pem: pem,
            not_after,
            issuer,
            policy: SigningPolicy::default(),
            intermediates_pem: String::new(),
        })
    }

    /// The same CA, appending `pem` (certificates, e.g. this root
    /// cross-signed by the previous one during a rotation) to every
    /// certificate it issues ([`IssuedCert::chain_pem`]), so that peers
    /// trusting only the previous root can build a path to it.
    pub fn with_intermediates(mut self, pem: &str) -> Self {
        self.intermediates_pem = pem.to_owned();
        self
    }

    /// Certifies `successor`'s subject and public key with this root: the
    /// cross-signed certificate of a CA rotation. It is a CA certificate
    /// (path length 0) valid while both roots are. A node that trusts only
    /// this root verifies a certificate issued by `successor` through it.
    pub fn cross_sign(&self, successor: &ClusterCa, now: SystemTime) -> Result<IssuedCert, CaError> {
        if successor.cluster_id != self.cluster_id {
            return Err(CaError::NotACa(format!(
                "the new root is for cluster {:?}, this root for {:?}",
                successor.cluster_id, self.cluster_id
            )));
        }
        if now >= self.not_after {
            return Err(CaError::CaExpired);
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_COMMON_NAME);
        dn.push(DnType::OrganizationName, successor.cluster_id.as_str());
        params.distinguished_name = dn;
        params.not_before = now
            .checked_sub(self.policy.backdate)
            .and_then(to_offset)
            .ok_or(CaError::TimeOutOfRange("cross-signed not_before"))?;
        params.not_after = to_offset(successor.not_after.min(self.not_after))
            .ok_or(CaError::TimeOutOfRange("cross-signed not_after"))?;
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert =
            params.signed_by(successor.issuer.key(), &self.issuer).map_err(rcgen_err("cross-sign the new root"))?;
        tracing::info!(cluster_id = %self.cluster_id, "cross-signed the new root CA with the current one");
        let der = cert.der().clone();
        let pem = pem_of(&der);
        Ok(IssuedCert { chain_pem: pem.clone(), pem, der })
    }

    /// The same CA with another signing policy.
    pub fn with_policy(mut self, policy: SigningPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The signing policy in force.
    pub fn policy(&self) -> &SigningPolicy {
        &self.policy
    }

    /// The cluster id (the certificate's O).
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The root certificate in DER (what nodes trust, what tokens digest).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The root certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key in PKCS#8 PEM. This is the cluster's most
    /// sensitive secret: keep it in the (encrypted) store only.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// When the root certificate stops being valid.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Issues a certificate for `node_id` in `role` from a PEM certificate
    /// request. The subject, SANs, validity and usages come from the CA;
    /// only the request's public key is used, after its signature has been
    /// checked. `lifetime` defaults to the policy's (90 days), must not be
    /// shorter than [`SigningPolicy::min_lifetime`], and is cut to the
    /// CA's own expiry.
    ///
    /// With [`Role::Operator`], `node_id` is the operator's name (same
    /// rules as a node id) and the certificate is valid for client
    /// authentication only: an operator calls the control API, it never
    /// serves.
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        lifetime: Option<Duration>,
        now: SystemTime,
    ) -> Result<IssuedCert, CaError> {
        if !valid_id(node_id) {
            return Err(CaError::InvalidNodeId(node_id.to_owned()));
        }
        let lifetime = lifetime.unwrap_or(self.policy.default_lifetime);
        if lifetime < self.policy.min_lifetime {
            return Err(CaError::LifetimeTooShort { requested: lifetime, minimum: self.policy.min_lifetime });
        }
        if now >= self.not_after {
            return Err(CaError::CaExpired);
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(CaError::BadCsr)?;

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(DnType::OrganizationalUnitName, role.as_str());
        dn.push(DnType::OrganizationName, self.cluster_id.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::DnsName(node_id.try_into().map_err(rcgen_err("use the node id as a DNS name"))?),
            SanType::DnsName(role.server_name().try_into().map_err(rcgen_err("use the role as a DNS name"))?),
        ];
        let mut not_after = now.checked_add(lifetime).ok_or(CaError::TimeOutOfRange("node not_after"))?;
        if not_after > self.not_after {
            tracing::warn!(node_id, "node certificate lifetime cut to the CA certificate's expiry");
            not_after = self.not_after;
        }
        params.not_before = now
            .checked_sub(self.policy.backdate)
            .and_then(to_offset)
            .ok_or(CaError::TimeOutOfRange("node not_before"))?;
        params.not_after = to_offset(not_after).ok_or(CaError::TimeOutOfRange("node not_after"))?;
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // An operator only ever dials a manager: its certificate cannot
        // serve TLS.
        params.extended_key_usages = match role {
            Role::Operator => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Role::Manager | Role::Worker => {
                vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
            }
        };
        params.use_authority_key_identifier_extension = true;

        let request = CertificateSigningRequestParams { params, public_key: csr.public_key };
        let cert = request.signed_by(&self.issuer).map_err(rcgen_err("sign the node certificate"))?;
        tracing::info!(node_id, %role, cluster_id = %self.cluster_id, "issued a node certificate");
        let der = cert.der().clone();
        let pem = pem_of(&der);
        let chain_pem = format!("{pem}{}", self.intermediates_pem);
        Ok(IssuedCert { pem, der, chain_pem })
    }
}

pub(crate) fn pem_of(der: &CertificateDer<'_>) -> String {
    const LINE: usize = 64;
    let b64 = base64_encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(LINE) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A node's new key pair and its certificate request (CN = node id). The
/// key stays with the node; only [`NodeCsr::csr_pem`] goes to the CA.
pub struct NodeCsr {
    key: KeyPair,
    csr_pem: String,
}

impl fmt::Debug for NodeCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCsr").field("csr_pem", &self.csr_pem).field("key", &"<redacted>").finish()
    }
}

impl NodeCsr {
    /// Generates an ECDSA P-256 key pair and a request for `node_id`.
    pub fn generate(node_id: &str) -> Result<Self, CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        params.distinguished_name = dn;
        Self::from_params(params)
    }

    /// A request built from arbitrary parameters: what a misbehaving node
    /// could send (tests use it to show the CA ignores the subject).
    pub fn from_params(params: CertificateParams) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err("generate the node key"))?;
        let csr = params.serialize_request(&key).map_err(rcgen_err("build the certificate request"))?;
        let csr_pem = csr.pem().map_err(rcgen_err("encode the request as PEM"))?;
        Ok(NodeCsr { key, csr_pem })
    }

    /// The request in PEM, for the CA.
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// The node's private key in PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeIdentity;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn generated_ca_round_trips_through_pem() {
        let ca = ClusterCa::generate_at("cl-1", DEFAULT_CA_VALIDITY, at(NOW)).unwrap();
        let loaded = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(loaded.cluster_id(), "cl-1");
        assert_eq!(loaded.cert_der(), ca.cert_der());
        assert_eq!(loaded.not_after(), at(NOW) + DEFAULT_CA_VALIDITY);
        let (_, x) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        assert!(x.is_ca());
        assert_eq!(x.subject().iter_common_name().next().unwrap().as_str().unwrap(), CA_COMMON_NAME);
    }

    #[test]
    fn from_pem_refuses_a_foreign_key() {
        let a = ClusterCa::generate_at("a", DEFAULT_CA_VALIDITY, at(NOW)).unwrap();
        let b = ClusterCa::generate_at("b", DEFAULT_CA_VALIDITY, at(NOW)).unwrap();
        let err = ClusterCa::from_pem(a.cert_pem(), &b.key_pem()).unwrap_err();
        assert!(matches!(err, CaError::KeyMismatch), "{err}");
    }

    #[test]
    fn from_pem_refuses_a_node_certificate() {
        let ca = ClusterCa::generate_at("a", DEFAULT_CA_VALIDITY, at(NOW)).unwrap();
        let csr = NodeCsr::generate("n").unwrap();
        let cert = ca.sign_node_csr(csr.csr_pem(), "n", Role::Worker, None, at(NOW)).unwrap();
        let err = ClusterCa::from_pem(cert.cert_pem(), &csr.key_pem()).unwrap_err();
        assert!(matches!(err, CaError::NotACa(_)), "{err}");
    }

    #[test]
    fn subject_comes_from_the_ca_not_the_csr() {
        let ca = ClusterCa::generate_at("cl-1", DEFAULT_CA_VALIDITY, at(NOW)).unwrap();
        let mut params = CertificateParams::new(vec!["other".to_owned()]).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "other");
        dn.push(DnType::OrganizationalUnitName, "manager");
        dn.push(DnType::OrganizationName, "evil-cluster");
        params.distinguished_name = dn;
        let csr = NodeCsr::from_params(params).unwrap();
        let cert = ca.sign_node_csr(csr.csr_pem(), "node-a", Role::Worker, None, at(NOW)).unwrap();
        let id = NodeIdentity::from_der(cert.cert_der()).unwrap();
        assert_eq!(id.node_id, "node-a");
        assert_eq!(id.role, Role::Worker);
        assert_eq!(id.cluster_id, "cl-1");
        let (_, x) = x509_parser::parse_x509_certificate(cert.cert_der()).unwrap();
        let sans: Vec<String> =
            x.subject_alternative_name().unwrap().unwrap().value.general_names.iter().map(|n| n.to_string()).collect();
        assert_eq!(sans, ["DNSName(node-a)", "DNSName(swarm-worker)"]);
    }

    #[test]
    fn operator_certificates_are_client_only() {
        let ca = ClusterCa::generate_at("cl-1", DEFAULT_CA_VALIDITY, at(NOW)).unwrap();
        let csr = NodeCsr::generate("alice").unwrap();
        let cert = ca.sign_node_csr(csr.csr_pem(), "alice", Role::Operator, None, at(NOW)).unwrap();
        let id = NodeIdentity::from_der(cert.cert_der()).unwrap();
        assert_eq!((id.node_id.as_str(), id.role, id.cluster_id.as_str()), ("alice", Role::Operator, "cl-1"));
        let (_, x) = x509_parser::parse_x509_certificate(cert.cert_der()).unwrap();
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth);
        assert!(!eku.server_auth);
        let sans: Vec<String> =
            x.subject_alternative_name().unwrap().unwrap().value.general_names.iter().map(|n| n.to_string()).collect();
        assert_eq!(sans, ["DNSName(alice)", "DNSName(swarm-operator)"]);
        // Node certificates still serve.
        let node = ca.sign_node_csr(csr.csr_pem(), "m1", Role::Manager, None, at(NOW)).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(node.cert_der()).unwrap();
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && eku.server_auth);
    }

    #[test]
    fn lifetime_defaults_to_90_days_and_respects_the_minimum() {
        let ca = ClusterCa::generate_at("c", DEFAULT_CA_VALIDITY, at(NOW)).unwrap();
        let csr = NodeCsr::generate("n").unwrap();
        let cert = ca.sign_node_csr(csr.csr_pem(), "n", Role::Worker, None, at(NOW)).unwrap();
        let id = NodeIdentity::from_der(cert.cert_der()).unwrap();
        assert_eq!(id.not_after, at(NOW) + DEFAULT_NODE_CERT_LIFETIME);
        assert_eq!(id.not_before, at(NOW) - DEFAULT_BACKDATE);

        let err = ca
            .sign_node_csr(csr.csr_pem(), "n", Role::Worker, Some(Duration::from_secs(59 * 60)), at(NOW))
            .unwrap_err();
        assert!(matches!(err, CaError::LifetimeTooShort { .. }), "{err}");

        let test_ca = ca.with_policy(SigningPolicy {
            min_lifetime: Duration::from_secs(1),
            backdate: Duration::ZERO,
            ..SigningPolicy::default()
        });
        let short =
            test_ca.sign_node_csr(csr.csr_pem(), "n", Role::Worker, Some(Duration::from_secs(5)), at(NOW)).unwrap();
        let id = NodeIdentity::from_der(short.cert_der()).unwrap();
        assert_eq!(id.not_after, at(NOW + 5));
    }

    #[test]
    fn lifetime_is_cut_to_the_ca_expiry_and_an_expired_ca_refuses() {
        let ca = ClusterCa::generate_at("c", Duration::from_secs(10 * 86_400), at(NOW)).unwrap();
        let csr = NodeCsr::generate("n").unwrap();
        let cert = ca.sign_node_csr(csr.csr_pem(), "n", Role::Manager, None, at(NOW)).unwrap();
        let id = NodeIdentity::from_der(cert.cert_der()).unwrap();
        assert_eq!(id.not_after, ca.not_after());
        let err = ca.sign_node_csr(csr.csr_pem(), "n", Role::Manager, None, ca.not_after()).unwrap_err();
        assert!(matches!(err, CaError::CaExpired), "{err}");
    }

    #[test]
    fn bad_ids_and_bad_csrs_are_refused() {
        assert!(matches!(ClusterCa::generate_at("", DEFAULT_CA_VALIDITY, at(NOW)), Err(CaError::InvalidClusterId(_))));
        let ca = ClusterCa::generate_at("c", DEFAULT_CA_VALIDITY, at(NOW)).unwrap();
        let csr = NodeCsr::generate("n").unwrap();
        assert!(matches!(
            ca.sign_node_csr(csr.csr_pem(), "a b", Role::Worker, None, at(NOW)),
            Err(CaError::InvalidNodeId(_))
        ));
        assert!(matches!(
            ca.sign_node_csr(csr.csr_pem(), "n", Role::Worker, Some(Duration::MAX), at(NOW)),
            Err(CaError::TimeOutOfRange(_))
        ));
        // A request whose signature does not verify (one byte flipped).
        let mut der = pem_body(csr.csr_pem());
        let last = der.len() - 1;
        der[last] ^= 1;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64_encode(&der)
        );
        assert!(matches!(ca.sign_node_csr(&tampered, "n", Role::Worker, None, at(NOW)), Err(CaError::BadCsr(_))));
    }

    fn pem_body(pem: &str) -> Vec<u8> {
        use rustls_pki_types::CertificateSigningRequestDer;
        CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap().as_ref().to_vec()
    }

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }
}
