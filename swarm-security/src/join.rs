//! Joining a cluster and renewing a node certificate, on the node's side.
//!
//! [`join`] does what `docker swarm join --token ... ADDR` does:
//!
//! 1. It fetches the root CA certificate from the manager at `ADDR`
//!    (`ca.root_ca`) over TLS *without verifying the manager*: the node
//!    has nothing to verify it with yet. That connection uses a verifier
//!    of its own that accepts any server certificate (it still checks the
//!    handshake signature), for that one call only.
//! 2. It accepts the CA certificate only if its SHA-256 digest is the one
//!    in the token ([`crate::token::verify_ca`]): the token, obtained from
//!    an operator over a trusted channel, is where the trust comes from. A
//!    mismatch is [`JoinError::CaMismatch`] (another cluster, or someone in
//!    the middle).
//! 3. It makes a new key pair and CSR and sends them with the token
//!    (`ca.issue`) over TLS that now verifies the manager against that CA,
//!    with server name `swarm-manager`. The CA chooses the node id, the
//!    role and the cluster in the certificate.
//! 4. It writes `ca.crt`, then `node.key` and `node.crt` with
//!    [`NodeFiles`]: each atomically, mode 0600, in a 0700 directory
//!    (the CA certificate is public, but kept like the rest). The node
//!    certificate is written last: once it is there, the node has joined.
//!
//! A node that restarts loads what it has ([`JoinedNode::load`]) and, when
//! [`crate::renewal`] says it is due, calls [`renew`] with a client that
//! presents its current certificate: a new key and CSR, the same node id,
//! the role the managers now give it.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::SystemTime;
//! use swarm_core::store::{MemStore, Store};
//! use swarm_security::ca::NodeCsr;
//! use swarm_security::ca_service::CaService;
//! use swarm_security::castore::{self, DenyList, SecurityOptions};
//! use swarm_security::files::NodeFiles;
//! use swarm_security::role::Role;
//! use swarm_security::rpc::{Reloadable, Router, RpcServer, ServerLimits};
//! use swarm_security::tls::{server_config_optional_client, PeerPolicy, TlsCredentials};
//!
//! // A manager: the CA and tokens in its store, the `ca` service on its
//! // node API listener, removed nodes refused by the gate.
//! let store: Arc<dyn Store> = Arc::new(MemStore::new());
//! let (ca, tokens) = castore::init_security(&*store, "c1", SecurityOptions::default()).await?;
//! let csr = NodeCsr::generate("m1")?;
//! let cert = ca.sign_node_csr(csr.csr_pem(), "m1", Role::Manager, None, SystemTime::now())?;
//! let creds = TlsCredentials::from_pem(ca.cert_pem(), cert.cert_pem(), &csr.key_pem())?;
//! let (deny, _follower) = DenyList::start(store.clone()).await?;
//! let router = Router::new().route("ca", Arc::new(CaService::new(store.clone()))).gate(deny);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let tls = Reloadable::new(server_config_optional_client(&creds, PeerPolicy::nodes("c1"))?);
//! tokio::spawn(RpcServer::serve(listener, tls, Arc::new(router), ServerLimits::default()));
//!
//! // A new node, with the worker token and an empty directory.
//! let dir = tempfile::tempdir()?;
//! let files = NodeFiles::new(dir.path());
//! let node = swarm_security::join::join(addr, &tokens.worker().to_string(), Some(Role::Worker), &files).await?;
//! assert_eq!(node.role, Role::Worker);
//! assert_eq!(node.identity()?.cluster_id, "c1");
//! # Ok(()) }
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::ca::{CaError, NodeCsr};
use crate::ca_service::{CaRefusal, IssueRequest, IssueResponse, RenewRequest, RootCaResponse};
use crate::files::{FilesError, NodeFiles};
use crate::identity::{IdentityError, NodeIdentity};
use crate::role::Role;
use crate::rpc::{Reloadable, RpcClient, RpcError};
use crate::tls::{TlsCredentials, TlsError, anonymous_client_config};
use crate::token::{JoinToken, TokenError};

/// Why joining or renewing failed. Each variant names what was wrong and,
/// for the network steps, which manager.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The token given to [`join`] does not parse.
    #[error("invalid join token: {0}")]
    Token(#[source] TokenError),
    /// The root CA certificate could not be fetched.
    #[error("cannot fetch the CA certificate from {addr}: {source}")]
    FetchCa {
        /// The manager.
        addr: String,
        /// The call's error.
        source: Box<RpcError>,
    },
    /// The manager answered something that is not a certificate.
    #[error("the CA certificate sent by {addr} is not a PEM certificate: {reason}")]
    BadCaCertificate {
        /// The manager.
        addr: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The CA certificate is not the one the token pins.
    #[error("the CA certificate at {addr} does not match the token's digest: wrong cluster or tampered connection")]
    CaMismatch {
        /// The manager.
        addr: String,
    },
    /// The CA refused the request, with its reason.
    #[error("{method} refused by {addr}: {refusal}")]
    Refused {
        /// The manager.
        addr: String,
        /// `ca.issue` or `ca.renew`.
        method: &'static str,
        /// The CA's reason.
        refusal: CaRefusal,
    },
    /// The call failed otherwise (connection, handshake, a fault that is
    /// not a CA refusal); the error names the manager and the call.
    #[error(transparent)]
    Rpc(Box<RpcError>),
    /// The certificate issued is not what was asked for.
    #[error("the certificate issued by {addr} is unusable: {reason}")]
    BadCertificate {
        /// The manager.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The node key or CSR could not be generated.
    #[error("cannot generate the node key and CSR: {0}")]
    Csr(#[source] CaError),
    /// A TLS configuration could not be built.
    #[error("TLS: {0}")]
    Tls(#[source] TlsError),
    /// The node's files could not be written or read.
    #[error("node files: {0}")]
    Files(#[source] FilesError),
}

impl JoinError {
    /// The CA's reason, when the CA refused (or the deny-list did).
    pub fn refusal(&self) -> Option<&CaRefusal> {
        match self {
            JoinError::Refused { refusal, .. } => Some(refusal),
            _ => None,
        }
    }
}

/// A node's credentials: what [`join`] and [`renew`] obtained, or what a
/// restarting node finds on disk. `Debug` hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinedNode {
    /// The node id (CN), chosen by the CA.
    pub node_id: String,
    /// The role (OU).
    pub role: Role,
    /// The root CA certificate, PEM.
    pub ca_cert_pem: String,
    /// The node certificate, PEM.
    pub cert_pem: String,
    /// The node key, PKCS#8 PEM.
    pub key_pem: String,
}

impl fmt::Debug for JoinedNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinedNode")
            .field("node_id", &self.node_id)
            .field("role", &self.role)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl JoinedNode {
    /// Reads a joined node's files back: `ca.crt`, `node.crt`, `node.key`
    /// (checked as [`NodeFiles::read`] does).
    pub fn load(files: &NodeFiles) -> Result<Self, JoinError> {
        let creds = files.read().map_err(JoinError::Files)?;
        let ca_cert_pem = files.read_ca_cert().map_err(JoinError::Files)?;
        let id = NodeIdentity::from_pem(&creds.cert_pem).map_err(|e| {
            JoinError::Files(FilesError::Invalid {
                path: files.cert_path(),
                what: "certificate",
                reason: e.to_string(),
            })
        })?;
        Ok(JoinedNode {
            node_id: id.node_id,
            role: id.role,
            ca_cert_pem,
            cert_pem: creds.cert_pem,
            key_pem: creds.key_pem,
        })
    }

    /// The identity in the certificate (with its validity, for
    /// [`crate::renewal::renewal_time_for`]).
    pub fn identity(&self) -> Result<NodeIdentity, IdentityError> {
        NodeIdentity::from_pem(&self.cert_pem)
    }

    /// The credentials for [`crate::tls::client_config`] and
    /// [`crate::tls::server_config`].
    pub fn tls_credentials(&self) -> Result<TlsCredentials, TlsError> {
        TlsCredentials::from_pem(&self.ca_cert_pem, &self.cert_pem, &self.key_pem)
    }
}

/// Accepts any server certificate; used only to fetch the CA certificate,
/// which is then checked against the token's digest. The handshake
/// signature is still verified (the server holds the key of what it shows).
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn unverified_client_config() -> Result<Arc<ClientConfig>, JoinError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| JoinError::Tls(TlsError::Rustls { what: "client protocol versions", source }))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Fetches the root CA certificate from the manager at `addr` without
/// verifying the manager, and returns it (PEM) only if `token` pins it.
pub async fn fetch_root_ca(addr: SocketAddr, token: &str) -> Result<String, JoinError> {
    let parsed = JoinToken::parse(token).map_err(JoinError::Token)?;
    let where_ = addr.to_string();
    let client = RpcClient::new(addr, Role::Manager.server_name(), Reloadable::new(unverified_client_config()?))
        .map_err(|source| JoinError::FetchCa { addr: where_.clone(), source: Box::new(source) })?;
    let answer: RootCaResponse = client
        .call("ca.root_ca", &serde_json::json!({}))
        .await
        .map_err(|source| JoinError::FetchCa { addr: where_.clone(), source: Box::new(source) })?;
    // During a CA rotation the manager shows two roots: only the one the
    // token pins is trusted (the other is learnt later, from a manager
    // this one verified).
    let certs = crate::tls::certs_from_pem(&answer.ca_cert_pem, "CA certificate")
        .map_err(|e| JoinError::BadCaCertificate { addr: where_.clone(), reason: e.to_string() })?;
    match certs.iter().find(|der| parsed.verify_ca(der).is_ok()) {
        Some(der) => Ok(crate::ca::pem_of(der)),
        None => {
            tracing::warn!(manager = %where_, "the CA certificate does not match the join token's digest");
            Err(JoinError::CaMismatch { addr: where_ })
        }
    }
}

/// Checks a bundle of root certificates a manager sent to an
/// authenticated node: every one a CA certificate of `cluster_id`.
fn check_roots(addr: &str, pem: &str, cluster_id: &str) -> Result<(), JoinError> {
    let bad = |reason: String| JoinError::BadCaCertificate { addr: addr.to_owned(), reason };
    let certs = crate::tls::certs_from_pem(pem, "CA certificate").map_err(|e| bad(e.to_string()))?;
    for der in &certs {
        let (_, x) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
        if !x.is_ca() {
            return Err(bad("a certificate in it is not a CA's".into()));
        }
        let org = x.subject().iter_organization().next().and_then(|o| o.as_str().ok());
        if org != Some(cluster_id) {
            return Err(bad(format!("a root in it is for cluster {org:?}, not {cluster_id:?}")));
        }
    }
    Ok(())
}

/// Fetches the root certificates to trust from the manager `client`
/// reaches (authenticated by the roots this node trusts now) and writes
/// them to `files` when they differ from what is there. Returns the new
/// bundle when it changed. What a node does when its heartbeat answers
/// say the roots changed (a CA rotation started or finished).
pub async fn refresh_roots(client: &RpcClient, files: &NodeFiles) -> Result<Option<String>, JoinError> {
    let current = JoinedNode::load(files)?;
    let cluster_id = current.identity().map_err(|e| JoinError::BadCertificate {
        addr: files.cert_path().display().to_string(),
        reason: e.to_string(),
    })?;
    let answer: RootCaResponse =
        client.call("ca.root_ca", &serde_json::json!({})).await.map_err(|e| rpc_error("ca.root_ca", e))?;
    check_roots(client.addr(), &answer.ca_cert_pem, &cluster_id.cluster_id)?;
    if answer.ca_cert_pem.trim() == current.ca_cert_pem.trim() {
        return Ok(None);
    }
    files.write_ca_cert(&answer.ca_cert_pem).map_err(JoinError::Files)?;
    tracing::info!(manager = %client.addr(), roots = answer.ca_cert_pem.matches("BEGIN CERTIFICATE").count(), "trusted root CAs updated");
    Ok(Some(answer.ca_cert_pem))
}

fn rpc_error(method: &'static str, e: RpcError) -> JoinError {
    match e.fault().and_then(|f| f.detail_as::<CaRefusal>()) {
        Some(refusal) => JoinError::Refused { addr: rpc_addr(&e), method, refusal },
        None => JoinError::Rpc(Box::new(e)),
    }
}

fn rpc_addr(e: &RpcError) -> String {
    match e {
        RpcError::Connect { addr, .. }
        | RpcError::Handshake { addr, .. }
        | RpcError::Transport { addr, .. }
        | RpcError::Timeout { addr, .. }
        | RpcError::Fault { addr, .. }
        | RpcError::Protocol { addr, .. } => addr.clone(),
    }
}

/// Which roots a node accepts with its new certificate.
enum Roots<'a> {
    /// Joining: only the root the token pinned (PEM), which the answer's
    /// bundle must contain.
    Pinned(&'a str),
    /// Renewing over mutual TLS: the manager's bundle, if every root in
    /// it is a CA of this cluster.
    FromManager { cluster_id: &'a str },
}

/// Checks that the certificate issued is for `key`'s node, in the role and
/// cluster expected, and writes the files. `ca.crt` goes first and
/// `node.crt` last.
fn accept(
    addr: &str,
    mut answer: IssueResponse,
    csr: &NodeCsr,
    roots: Roots<'_>,
    files: &NodeFiles,
) -> Result<JoinedNode, JoinError> {
    let bad = |reason: String| JoinError::BadCertificate { addr: addr.to_owned(), reason };
    let id = NodeIdentity::from_pem(&answer.cert_pem).map_err(|e| bad(e.to_string()))?;
    if id.node_id != answer.node_id || id.role != answer.role {
        return Err(bad(format!(
            "it names node {} ({}), the answer says {} ({})",
            id.node_id, id.role, answer.node_id, answer.role
        )));
    }
    match roots {
        Roots::Pinned(pinned) => {
            let pinned_der = CertificateDer::from_pem_slice(pinned.as_bytes()).map_err(|e| bad(e.to_string()))?;
            let offered =
                crate::tls::certs_from_pem(&answer.ca_cert_pem, "CA certificate").map_err(|e| bad(e.to_string()))?;
            if !offered.contains(&pinned_der) {
                return Err(bad("it comes with another CA certificate than the one trusted".into()));
            }
            answer.ca_cert_pem = pinned.to_owned();
        }
        Roots::FromManager { cluster_id } => check_roots(addr, &answer.ca_cert_pem, cluster_id)?,
    }
    let node = JoinedNode {
        node_id: answer.node_id,
        role: answer.role,
        ca_cert_pem: answer.ca_cert_pem,
        cert_pem: answer.cert_pem,
        key_pem: csr.key_pem(),
    };
    // It came from a manager the TLS handshake verified against this CA;
    // before anything is written it must carry our public key and load as
    // TLS credentials.
    if !carries_key(&node.cert_pem, &node.key_pem) {
        return Err(bad("it does not carry the public key of the CSR".into()));
    }
    node.tls_credentials().map_err(|e| bad(e.to_string()))?;
    files.write_ca_cert(&node.ca_cert_pem).map_err(JoinError::Files)?;
    files.write(&node.cert_pem, &node.key_pem).map_err(JoinError::Files)?;
    Ok(node)
}

fn carries_key(cert_pem: &str, key_pem: &str) -> bool {
    use rcgen::PublicKeyData;
    let Ok(key) = rcgen::KeyPair::from_pem(key_pem) else { return false };
    let Ok(der) = CertificateDer::from_pem_slice(cert_pem.as_bytes()) else { return false };
    x509_parser::parse_x509_certificate(&der)
        .is_ok_and(|(_, cert)| cert.public_key().subject_public_key.data.as_ref() == key.der_bytes())
}

/// Joins the cluster of the manager at `addr` with `token`, as `role`
/// (which must be the token's; `None`: whatever role the token gives),
/// and writes the node's files. See the [module docs](self).
pub async fn join(
    addr: SocketAddr,
    token: &str,
    role: Option<Role>,
    files: &NodeFiles,
) -> Result<JoinedNode, JoinError> {
    let ca_cert_pem = fetch_root_ca(addr, token).await?;
    let tls = anonymous_client_config(&ca_cert_pem).map_err(JoinError::Tls)?;
    let client = RpcClient::new(addr, Role::Manager.server_name(), Reloadable::new(tls))
        .map_err(|e| JoinError::Rpc(Box::new(e)))?;
    // The CA replaces the CSR's subject; the placeholder only makes it valid.
    let csr = NodeCsr::generate("joining-node").map_err(JoinError::Csr)?;
    let req = IssueRequest { token: token.trim().to_owned(), csr_pem: csr.csr_pem().to_owned(), role, node_id: None };
    let answer: IssueResponse = client.call("ca.issue", &req).await.map_err(|e| rpc_error("ca.issue", e))?;
    if let Some(role) = role
        && answer.role != role
    {
        return Err(JoinError::BadCertificate {
            addr: addr.to_string(),
            reason: format!("asked for the {role} role, got {}", answer.role),
        });
    }
    let node = accept(&addr.to_string(), answer, &csr, Roots::Pinned(&ca_cert_pem), files)?;
    tracing::info!(node_id = %node.node_id, role = %node.role, manager = %addr, "joined the cluster");
    Ok(node)
}

/// Renews the node certificate in `files` through `client` (which must
/// present that certificate, e.g. built from [`JoinedNode::tls_credentials`]
/// with [`crate::tls::client_config`]): a new key and CSR, the same node id;
/// the role is the one the managers now give the node. Rewrites the files
/// and returns the new credentials (rebuild TLS configurations from them).
pub async fn renew(client: &RpcClient, files: &NodeFiles) -> Result<JoinedNode, JoinError> {
    let current = JoinedNode::load(files)?;
    let csr = NodeCsr::generate(&current.node_id).map_err(JoinError::Csr)?;
    let answer: IssueResponse = client
        .call("ca.renew", &RenewRequest { csr_pem: csr.csr_pem().to_owned() })
        .await
        .map_err(|e| rpc_error("ca.renew", e))?;
    if answer.node_id != current.node_id {
        return Err(JoinError::BadCertificate {
            addr: client.addr().to_owned(),
            reason: format!("it is for node {}, not {}", answer.node_id, current.node_id),
        });
    }
    let from = current.role;
    let cluster_id = current
        .identity()
        .map_err(|e| JoinError::BadCertificate {
            addr: files.cert_path().display().to_string(),
            reason: e.to_string(),
        })?
        .cluster_id;
    let node = accept(client.addr(), answer, &csr, Roots::FromManager { cluster_id: &cluster_id }, files)?;
    tracing::info!(node_id = %node.node_id, %from, to = %node.role, manager = %client.addr(), "renewed the node certificate");
    Ok(node)
}
