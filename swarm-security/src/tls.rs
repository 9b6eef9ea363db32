//! Mutual TLS 1.3 between nodes: rustls configurations built from the
//! cluster CA certificate and a node's certificate and key, and a client
//! certificate verifier that admits only this CA's nodes in the roles a
//! listener serves.
//!
//! - [`server_config`] asks every client for a certificate, verifies its
//!   chain to the cluster CA (signature, validity, client-auth usage) with
//!   rustls' WebPKI verifier, then reads the [`NodeIdentity`] from it and
//!   [checks](NodeIdentity::check) the cluster id and that the role is in
//!   the listener's [`PeerPolicy`] (raft: [`PeerPolicy::managers`];
//!   dispatcher: [`PeerPolicy::nodes`]; the node API listener, which also
//!   serves operators: [`PeerPolicy::api`]). A refusal carries an
//!   [`IdentityError`] that says why, and is logged.
//! - [`client_config`] presents the node's certificate and trusts only the
//!   cluster CA. Dial with [`Role::server_name`] (`swarm-manager`) as the
//!   server name to accept only a manager, or with the peer's node id to
//!   accept only that node: both are SANs of every node certificate.
//! - [`peer_identity`] gives the server the verified peer's identity after
//!   the handshake; identity comes from the certificate, never a message.
//!
//! Only TLS 1.3 is offered, with rustls' `ring` provider.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use swarm_security::ca::{ClusterCa, NodeCsr};
//! use swarm_security::tls::{client_config, server_config, PeerPolicy, TlsCredentials};
//! use swarm_security::role::Role;
//!
//! let ca = ClusterCa::generate("c1", Duration::from_secs(86_400))?;
//! let csr = NodeCsr::generate("m1")?;
//! let cert = ca.sign_node_csr(csr.csr_pem(), "m1", Role::Manager, None, SystemTime::now())?;
//! let creds = TlsCredentials::from_pem(ca.cert_pem(), cert.cert_pem(), &csr.key_pem())?;
//! let raft_listener = server_config(&creds, PeerPolicy::managers("c1"))?;
//! let dialer = client_config(&creds)?;
//! # let _ = (raft_listener, dialer);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::identity::{IdentityError, NodeIdentity};
use crate::role::Role;

/// Why a TLS configuration could not be built or a peer not identified.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM input could not be read.
    #[error("cannot read the {what} PEM: {reason}")]
    Pem {
        /// `CA certificate`, `node certificate` or `node key`.
        what: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// The node certificate does not carry an identity.
    #[error("the node certificate has no usable identity: {0}")]
    Identity(#[from] IdentityError),
    /// rustls refused the configuration.
    #[error("cannot build the TLS {what}: {source}")]
    Rustls {
        /// What was being built.
        what: &'static str,
        /// rustls' error.
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built.
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
}

/// Which peers a listener admits: members of one cluster in some roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    /// The cluster id peers must carry (O).
    pub cluster_id: String,
    /// The roles admitted (OU).
    pub allowed_roles: Vec<Role>,
}

impl PeerPolicy {
    /// Managers only (raft, CA signing of manager certificates).
    pub fn managers(cluster_id: &str) -> Self {
        PeerPolicy { cluster_id: cluster_id.to_owned(), allowed_roles: vec![Role::Manager] }
    }

    /// Managers and workers (the dispatcher).
    pub fn nodes(cluster_id: &str) -> Self {
        PeerPolicy { cluster_id: cluster_id.to_owned(), allowed_roles: vec![Role::Manager, Role::Worker] }
    }

    /// Managers, workers and operators: the node API listener
    /// ([`crate::rpc`]), whose handlers then restrict each service (the
    /// dispatcher to nodes, the control API to managers and operators).
    pub fn api(cluster_id: &str) -> Self {
        PeerPolicy {
            cluster_id: cluster_id.to_owned(),
            allowed_roles: vec![Role::Manager, Role::Worker, Role::Operator],
        }
    }
}

/// The cluster CA certificates a node trusts (one root, or two during a
/// CA rotation) and the node's certificate chain and key, ready for
/// rustls.
#[derive(Debug)]
pub struct TlsCredentials {
    ca_certs: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: NodeIdentity,
}

/// Every certificate in `pem`, in order; at least one.
pub fn certs_from_pem(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { what, reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { what, reason: "no certificate in it".into() });
    }
    Ok(certs)
}

/// A root store holding `certs`.
fn root_store(certs: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert.clone())
            .map_err(|source| TlsError::Rustls { what: "root store from the CA certificates", source })?;
    }
    Ok(Arc::new(roots))
}

impl TlsCredentials {
    /// From the PEM of the trusted CA certificates (one or more), the node
    /// certificate (followed by its intermediates, if any) and key.
    pub fn from_pem(ca_cert_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let ca_certs = certs_from_pem(ca_cert_pem, "CA certificate")?;
        let chain = certs_from_pem(cert_pem, "node certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::Pem { what: "node key", reason: e.to_string() })?;
        let identity = NodeIdentity::from_der(&chain[0])?;
        Ok(TlsCredentials { ca_certs, chain, key, identity })
    }

    /// The identity in this node's own certificate.
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        root_store(&self.ca_certs)
    }

    /// Whether this node's certificate was issued by the key of `root`
    /// (DER): it verifies against `root` alone, without intermediates.
    /// During a CA rotation a node whose certificate the old root issued
    /// answers `false` for the new root, and renews.
    pub fn issued_by(&self, root: &CertificateDer<'static>) -> bool {
        issued_by(&self.chain[0], self.identity.role, root)
    }
}

/// Whether `cert` (a node certificate in `role`) was issued by the key of
/// `root`: it verifies against `root` alone, without intermediates, now.
pub fn issued_by(cert: &CertificateDer<'_>, role: Role, root: &CertificateDer<'static>) -> bool {
    let Ok(roots) = root_store(std::slice::from_ref(root)) else { return false };
    let Ok(verifier) = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider()).build() else {
        return false;
    };
    let Ok(name) = rustls_pki_types::ServerName::try_from(role.server_name()) else { return false };
    let now = UnixTime::now();
    rustls::client::danger::ServerCertVerifier::verify_server_cert(&*verifier, cert, &[], &name, &[], now).is_ok()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifies client certificates against the cluster CA, then checks the
/// identity they carry against a [`PeerPolicy`].
#[derive(Debug)]
pub struct NodeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    policy: PeerPolicy,
    mandatory: bool,
}

impl NodeClientVerifier {
    /// A verifier trusting `roots` only (the cluster CA), admitting peers
    /// per `policy`; for embedders that build their own rustls (or tonic)
    /// server configuration instead of [`server_config`].
    pub fn new(roots: Arc<RootCertStore>, policy: PeerPolicy) -> Result<Self, TlsError> {
        let inner = WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?;
        Ok(NodeClientVerifier { inner, policy, mandatory: true })
    }

    /// Like [`NodeClientVerifier::new`], but a client may also present no
    /// certificate at all (a node that has not joined yet, fetching the CA
    /// certificate or sending its CSR). A certificate that *is* presented
    /// must still pass every check; the listener's handlers decide what an
    /// anonymous peer may call.
    pub fn optional(roots: Arc<RootCertStore>, policy: PeerPolicy) -> Result<Self, TlsError> {
        let inner = WebPkiClientVerifier::builder_with_provider(roots, provider()).allow_unauthenticated().build()?;
        Ok(NodeClientVerifier { inner, policy, mandatory: false })
    }
}

fn unix_to_system(now: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(now.as_secs())
}

impl ClientCertVerifier for NodeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Err(e) = self.inner.verify_client_cert(end_entity, intermediates, now) {
            tracing::warn!(error = %e, "refused a client certificate not valid under the cluster CA");
            return Err(e);
        }
        let checked = NodeIdentity::from_der(end_entity).and_then(|id| {
            id.check(unix_to_system(now), &self.policy.cluster_id, &self.policy.allowed_roles).map(|()| id)
        });
        match checked {
            Ok(id) => {
                tracing::debug!(node_id = %id.node_id, role = %id.role, "admitted a peer");
                Ok(ClientCertVerified::assertion())
            }
            Err(e) => {
                tracing::warn!(error = %e, "refused a client certificate");
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e)))))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A TLS 1.3 server configuration presenting `creds` and requiring a
/// client certificate admitted by `policy`.
pub fn server_config(creds: &TlsCredentials, policy: PeerPolicy) -> Result<Arc<ServerConfig>, TlsError> {
    server_with(creds, NodeClientVerifier::new(creds.roots()?, policy)?)
}

/// A TLS 1.3 server configuration presenting `creds`, checking clients
/// with `verifier`.
fn server_with(creds: &TlsCredentials, verifier: NodeClientVerifier) -> Result<Arc<ServerConfig>, TlsError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls { what: "server protocol versions", source })?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(|source| TlsError::Rustls { what: "server certificate and key", source })?;
    Ok(Arc::new(config))
}

/// A TLS 1.3 server configuration presenting `creds` where a client
/// certificate, when presented, must be admitted by `policy`, and a client
/// may also come without one (see [`NodeClientVerifier::optional`]). The
/// node API listener uses it: joining nodes have no certificate yet.
pub fn server_config_optional_client(
    creds: &TlsCredentials,
    policy: PeerPolicy,
) -> Result<Arc<ServerConfig>, TlsError> {
    server_with(creds, NodeClientVerifier::optional(creds.roots()?, policy)?)
}

/// A TLS 1.3 client configuration trusting only the CA certificates in
/// `ca_cert_pem` and presenting no certificate: what a joining node uses
/// to send its CSR once it has checked the CA against its token.
pub fn anonymous_client_config(ca_cert_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = root_store(&certs_from_pem(ca_cert_pem, "CA certificate")?)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls { what: "client protocol versions", source })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A TLS 1.3 client configuration presenting `creds` and trusting only
/// the cluster CA.
pub fn client_config(creds: &TlsCredentials) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls { what: "client protocol versions", source })?
        .with_root_certificates(creds.roots()?)
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(|source| TlsError::Rustls { what: "client certificate and key", source })?;
    Ok(Arc::new(config))
}

/// The identity of the peer of an established connection, read from the
/// certificate it presented (already verified by the handshake).
pub fn peer_identity(conn: &rustls::CommonState) -> Result<NodeIdentity, TlsError> {
    let cert = conn.peer_certificates().and_then(|c| c.first()).ok_or(TlsError::NoPeerCertificate)?;
    Ok(NodeIdentity::from_der(cert)?)
}

/// The [`IdentityError`] inside a rustls error raised by
/// [`NodeClientVerifier`], if that is what it is.
pub fn identity_error(err: &rustls::Error) -> Option<&IdentityError> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<IdentityError>()
        }
        _ => None,
    }
}
