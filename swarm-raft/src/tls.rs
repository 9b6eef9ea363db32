//! Mutual TLS for the TCP transport (feature `tls`): raft between the
//! managers of one cluster only.
//!
//! A [`RaftTls`] is built from a manager's [`TlsCredentials`] (cluster CA
//! certificate, its own manager certificate and key, see `swarm-security`)
//! and the names of the managers: raft id → node id, the node id being the
//! certificate's CN. Given to [`TcpTransportConfig::with_tls`] it makes
//! every outbound connection a TLS 1.3 client; given to
//! [`TcpTransport::serve_tls`] it makes the listener a TLS 1.3 server that
//! asks for a client certificate and admits only managers of this cluster
//! (`PeerPolicy::managers`).
//!
//! How raft ids relate to certificates: the raft id stays a number chosen
//! by whoever forms the cluster; the certificate carries the node id. The
//! table given here says which node id each raft id belongs to, and both
//! sides hold the other to it:
//! - outbound, the transport dials the peer with its node id as the TLS
//!   server name (a SAN of every node certificate), so only the certificate
//!   of that node is accepted, and checks it is a manager of this cluster;
//! - inbound, after the handshake, the raft id a peer claims in its
//!   preamble must map to the node id of the certificate it presented;
//!   otherwise the connection is closed and counted
//!   ([`TlsRefusals::wrong_id`]).
//!
//! A raft id with no name in the table is neither dialled nor accepted.
//!
//! [`TcpTransportConfig::with_tls`]: crate::TcpTransportConfig::with_tls
//! [`TcpTransport::serve_tls`]: crate::TcpTransport::serve_tls

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use swarm_security::identity::NodeIdentity;
use swarm_security::role::Role;
use swarm_security::tls::{PeerPolicy, TlsCredentials, TlsError, client_config, identity_error, server_config};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

/// Why a TLS connection between managers was not made or was refused.
#[derive(Debug, thiserror::Error)]
pub enum RaftTlsError {
    /// The rustls configurations could not be built from the credentials.
    #[error("cannot build the raft TLS configuration: {0}")]
    Config(#[from] TlsError),
    /// The credentials are not a manager's.
    #[error("raft TLS needs a manager certificate, this one is for a {0}")]
    NotManager(Role),
    /// Reloaded credentials name another node or cluster.
    #[error("reloaded credentials are node {got_node} of cluster {got_cluster}, this manager is {node} of {cluster}")]
    OtherIdentity {
        /// This manager's node id.
        node: String,
        /// Its cluster.
        cluster: String,
        /// The node id in the new credentials.
        got_node: String,
        /// The cluster in the new credentials.
        got_cluster: String,
    },
    /// No node id is known for a raft id.
    #[error("no node id known for raft id {0}")]
    UnknownPeer(u64),
    /// A node id is not usable as a TLS server name.
    #[error("node id {0:?} is not a valid TLS server name")]
    ServerName(String),
    /// The TLS handshake failed (including a certificate the verifier
    /// refused).
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    /// The TLS handshake did not complete in time.
    #[error("TLS handshake not done within {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer's certificate could not be read after the handshake.
    #[error("cannot read the peer's identity: {0}")]
    PeerIdentity(TlsError),
    /// The peer's certificate is valid under the CA but not a manager of
    /// this cluster (outbound check).
    #[error("peer {node_id} is a {role} of cluster {cluster_id}, expected a manager of {expected}")]
    NotClusterManager {
        /// The peer's node id.
        node_id: String,
        /// The peer's role.
        role: Role,
        /// The peer's cluster.
        cluster_id: String,
        /// This cluster.
        expected: String,
    },
    /// The peer's certificate is valid but its node was removed from the
    /// cluster (the deny-list, [`RaftTls::set_deny_list`]).
    #[error("node {0} was removed from the cluster; its certificate is no longer accepted")]
    Removed(String),
}

/// Inbound connections a [`RaftTls`] listener refused, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsRefusals {
    /// The handshake failed before a certificate was judged: not TLS,
    /// TLS below 1.3, no client certificate, the client aborted, or it
    /// took longer than the hello timeout.
    pub handshake: u64,
    /// The client certificate is not valid under the cluster CA: another
    /// CA (another cluster), expired, not yet valid, bad signature.
    pub certificate: u64,
    /// The certificate is valid under the CA but its identity is not
    /// admitted: not a manager, or another cluster id.
    pub identity: u64,
    /// The certificate was admitted but the preamble claimed a raft id
    /// that does not map to the certificate's node id.
    pub wrong_id: u64,
}

/// Tells whether a node id is on the cluster's deny-list.
type Denied = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Mutual TLS settings for the raft TCP transport: the rustls client and
/// server configurations and the raft id → node id table.
pub struct RaftTls {
    configs: RwLock<(TlsConnector, TlsAcceptor)>,
    cluster_id: String,
    node_id: String,
    names: RwLock<HashMap<u64, String>>,
    denied: RwLock<Option<Denied>>,
    refused_handshake: AtomicU64,
    refused_certificate: AtomicU64,
    refused_identity: AtomicU64,
    refused_wrong_id: AtomicU64,
}

impl std::fmt::Debug for RaftTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftTls")
            .field("node_id", &self.node_id)
            .field("cluster_id", &self.cluster_id)
            .field("refusals", &self.refusals())
            .finish_non_exhaustive()
    }
}

impl RaftTls {
    /// Settings presenting `creds` (which must hold a manager certificate)
    /// with `names` mapping each manager's raft id to its node id (the CN
    /// of its certificate). The listener admits managers of the cluster in
    /// `creds` only.
    pub fn new(creds: &TlsCredentials, names: HashMap<u64, String>) -> Result<Arc<RaftTls>, RaftTlsError> {
        let me = creds.identity();
        if me.role != Role::Manager {
            return Err(RaftTlsError::NotManager(me.role));
        }
        let server = server_config(creds, PeerPolicy::managers(&me.cluster_id))?;
        let client = client_config(creds)?;
        Ok(Arc::new(RaftTls {
            configs: RwLock::new((TlsConnector::from(client), TlsAcceptor::from(server))),
            cluster_id: me.cluster_id.clone(),
            node_id: me.node_id.clone(),
            names: RwLock::new(names),
            denied: RwLock::new(None),
            refused_handshake: AtomicU64::new(0),
            refused_certificate: AtomicU64::new(0),
            refused_identity: AtomicU64::new(0),
            refused_wrong_id: AtomicU64::new(0),
        }))
    }

    /// Presents `creds` on new connections from now on (after the node's
    /// certificate was renewed, or moved to a new CA). Connections already
    /// open keep their session. `creds` must be this manager's: same node
    /// id, cluster and role.
    pub fn reload(&self, creds: &TlsCredentials) -> Result<(), RaftTlsError> {
        let me = creds.identity();
        if me.role != Role::Manager {
            return Err(RaftTlsError::NotManager(me.role));
        }
        if me.node_id != self.node_id || me.cluster_id != self.cluster_id {
            return Err(RaftTlsError::OtherIdentity {
                node: self.node_id.clone(),
                cluster: self.cluster_id.clone(),
                got_node: me.node_id.clone(),
                got_cluster: me.cluster_id.clone(),
            });
        }
        let server = server_config(creds, PeerPolicy::managers(&me.cluster_id))?;
        let client = client_config(creds)?;
        *self.configs.write().unwrap_or_else(|p| p.into_inner()) =
            (TlsConnector::from(client), TlsAcceptor::from(server));
        Ok(())
    }

    /// Refuses, from now on, connections in both directions with a peer
    /// whose node id `denied` names: the cluster's deny-list of removed
    /// nodes (`swarm_security::castore::DenyList::contains`). A removed
    /// manager's certificate stays valid under the CA until it expires;
    /// this is what shuts it out of raft. Counted as an identity refusal.
    pub fn set_deny_list(&self, denied: impl Fn(&str) -> bool + Send + Sync + 'static) {
        *self.denied.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(denied));
    }

    fn check_denied(&self, node_id: &str) -> Result<(), RaftTlsError> {
        let denied = self.denied.read().unwrap_or_else(|p| p.into_inner()).clone();
        match denied {
            Some(f) if f(node_id) => Err(RaftTlsError::Removed(node_id.to_owned())),
            _ => Ok(()),
        }
    }

    /// This manager's node id (its certificate's CN).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The cluster id of this manager's certificate.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Records (or changes) the node id of raft id `raft_id`; call it when a
    /// manager joins, before it connects.
    pub fn set_name(&self, raft_id: u64, node_id: impl Into<String>) {
        self.names.write().unwrap_or_else(|p| p.into_inner()).insert(raft_id, node_id.into());
    }

    /// Forgets raft id `raft_id`: it is no longer dialled or accepted.
    pub fn remove_name(&self, raft_id: u64) {
        self.names.write().unwrap_or_else(|p| p.into_inner()).remove(&raft_id);
    }

    /// The node id recorded for `raft_id`.
    pub fn name_of(&self, raft_id: u64) -> Option<String> {
        self.names.read().unwrap_or_else(|p| p.into_inner()).get(&raft_id).cloned()
    }

    /// Inbound connections refused so far, by reason.
    pub fn refusals(&self) -> TlsRefusals {
        TlsRefusals {
            handshake: self.refused_handshake.load(Ordering::Relaxed),
            certificate: self.refused_certificate.load(Ordering::Relaxed),
            identity: self.refused_identity.load(Ordering::Relaxed),
            wrong_id: self.refused_wrong_id.load(Ordering::Relaxed),
        }
    }

    /// Client handshake with raft peer `to` over `stream`: the server must
    /// present the certificate of `to`'s node id, a manager of this
    /// cluster.
    pub(crate) async fn connect(
        &self,
        to: u64,
        stream: TcpStream,
    ) -> Result<client::TlsStream<TcpStream>, RaftTlsError> {
        let node_id = self.name_of(to).ok_or(RaftTlsError::UnknownPeer(to))?;
        self.check_denied(&node_id)?;
        let name = ServerName::try_from(node_id.clone()).map_err(|_| RaftTlsError::ServerName(node_id))?;
        let connector = self.configs.read().unwrap_or_else(|p| p.into_inner()).0.clone();
        let tls = connector.connect(name, stream).await.map_err(RaftTlsError::Handshake)?;
        let peer = swarm_security::tls::peer_identity(tls.get_ref().1).map_err(RaftTlsError::PeerIdentity)?;
        if peer.role != Role::Manager || peer.cluster_id != self.cluster_id {
            return Err(RaftTlsError::NotClusterManager {
                node_id: peer.node_id,
                role: peer.role,
                cluster_id: peer.cluster_id,
                expected: self.cluster_id.clone(),
            });
        }
        Ok(tls)
    }

    /// Server handshake over an accepted `stream`; the verifier admits
    /// managers of this cluster only. Failures are counted.
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        within: Duration,
    ) -> Result<(server::TlsStream<TcpStream>, NodeIdentity), RaftTlsError> {
        let handshake = async {
            let acceptor = self.configs.read().unwrap_or_else(|p| p.into_inner()).1.clone();
            let tls = acceptor.accept(stream).await.map_err(RaftTlsError::Handshake)?;
            let peer = swarm_security::tls::peer_identity(tls.get_ref().1).map_err(RaftTlsError::PeerIdentity)?;
            self.check_denied(&peer.node_id)?;
            Ok((tls, peer))
        };
        let res = match tokio::time::timeout(within, handshake).await {
            Ok(res) => res,
            Err(_) => Err(RaftTlsError::HandshakeTimeout(within)),
        };
        if let Err(e) = &res {
            let counter = match refusal_kind(e) {
                Refusal::Identity => &self.refused_identity,
                Refusal::Certificate => &self.refused_certificate,
                Refusal::Handshake => &self.refused_handshake,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    /// Checks that `claimed` (a preamble's raft id) is the raft id of
    /// `peer`'s node id; counts a mismatch.
    pub(crate) fn check_claim(&self, claimed: u64, peer: &NodeIdentity) -> Result<(), String> {
        match self.name_of(claimed) {
            Some(name) if name == peer.node_id => Ok(()),
            other => {
                self.refused_wrong_id.fetch_add(1, Ordering::Relaxed);
                Err(match other {
                    Some(name) => {
                        format!("claims raft id {claimed} (node {name}) with the certificate of node {}", peer.node_id)
                    }
                    None => format!("claims raft id {claimed}, unknown, with the certificate of node {}", peer.node_id),
                })
            }
        }
    }
}

enum Refusal {
    Handshake,
    Certificate,
    Identity,
}

/// The rustls error behind a failed handshake, if any.
fn rustls_error(err: &RaftTlsError) -> Option<&tokio_rustls::rustls::Error> {
    match err {
        RaftTlsError::Handshake(io) => io.get_ref().and_then(|e| e.downcast_ref::<tokio_rustls::rustls::Error>()),
        _ => None,
    }
}

fn refusal_kind(err: &RaftTlsError) -> Refusal {
    if matches!(err, RaftTlsError::Removed(_)) {
        return Refusal::Identity;
    }
    match rustls_error(err) {
        Some(e) if identity_error(e).is_some() => Refusal::Identity,
        Some(tokio_rustls::rustls::Error::InvalidCertificate(_)) => Refusal::Certificate,
        _ => Refusal::Handshake,
    }
}

/// Why a handshake failed, for logs: the identity error when the
/// certificate verifier raised one, else the TLS error.
pub(crate) fn refusal_reason(err: &RaftTlsError) -> String {
    match rustls_error(err) {
        Some(e) => match identity_error(e) {
            Some(id) => format!("certificate refused: {id}"),
            None => format!("TLS handshake failed: {e}"),
        },
        None => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_security::ca::{ClusterCa, NodeCsr};

    #[tokio::test]
    async fn a_removed_manager_is_not_dialled() {
        let ca = ClusterCa::generate("c1", Duration::from_secs(86_400)).unwrap();
        let csr = NodeCsr::generate("m1").unwrap();
        let cert = ca.sign_node_csr(csr.csr_pem(), "m1", Role::Manager, None, std::time::SystemTime::now()).unwrap();
        let creds = TlsCredentials::from_pem(ca.cert_pem(), cert.cert_pem(), &csr.key_pem()).unwrap();
        let tls = RaftTls::new(&creds, HashMap::from([(2, "m2".to_owned())])).unwrap();
        tls.set_deny_list(|node| node == "m2");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let err = tls.connect(2, stream).await.unwrap_err();
        assert!(matches!(&err, RaftTlsError::Removed(n) if n == "m2"), "{err}");
        assert_eq!(err.to_string(), "node m2 was removed from the cluster; its certificate is no longer accepted");
    }
}
