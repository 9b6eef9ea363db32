//! The security plane's state in the replicated store: the root CA, the
//! two join tokens, the node certificate lifetime and the deny-list of
//! removed nodes, all in the Cluster object's
//! [`security`](swarm_core::model::ClusterSecurity).
//!
//! [`init_security`] runs once, when the cluster is initialised: it makes
//! the root CA (or takes an external one), draws both join tokens and
//! writes them into the Cluster object, creating that object if needed.
//! Because the CA key lives in the store, every manager can load it
//! ([`cluster_ca`]) and sign; a new leader needs nothing else.
//! [`rotate_join_token`] draws a new secret for one role: the old token is
//! refused by every manager as soon as its replica has applied the write.
//! [`record_removed_node`] adds a node to the deny-list; [`DenyList`] is
//! the [`rpc::Gate`](crate::rpc::Gate) that refuses such a node's
//! certificate on the node API (SwarmKit calls these blacklisted
//! certificates: they stay valid under the CA until they expire).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use swarm_core::store::{MemStore, Store};
//! use swarm_security::castore::{self, SecurityOptions};
//! use swarm_security::role::Role;
//!
//! let store = MemStore::new();
//! let (ca, tokens) = castore::init_security(&store, "c1", SecurityOptions::default()).await?;
//! let state = store.snapshot().await?;
//! assert_eq!(castore::cluster_ca(&state)?.cert_pem(), ca.cert_pem());
//! assert_eq!(castore::join_tokens(&state)?, tokens);
//!
//! let rotated = castore::rotate_join_token(&store, Role::Worker).await?;
//! assert!(rotated.role_for(&tokens.worker().to_string()).is_err());
//! assert_eq!(rotated.manager(), tokens.manager());
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use swarm_core::id::{ClusterId, NodeId};
use swarm_core::model::{Cluster, ClusterSecurity, Meta, NodeRole, ObjectKind, Revision, SecretBytes};
use swarm_core::state::{Change, State, Transaction};
use swarm_core::store::{Store, StoreError, follow_state, update_with_retry};
use swarm_core::time::SpecDuration;

use crate::ca::{CaError, ClusterCa, DEFAULT_CA_VALIDITY};
use crate::role::Role;
use crate::rpc::{Code, Fault, Gate, Peer};
use crate::token::{JoinTokens, TokenError};
use rustls_pki_types::pem::PemObject;

/// How many times a write is retried after a version conflict.
const ATTEMPTS: usize = 10;

/// Why the security plane's state could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CaStoreError {
    /// [`init_security`] found a CA already in the store.
    #[error("the cluster already has a root CA; refusing to replace it")]
    AlreadyInitialized,
    /// The store holds no CA: [`init_security`] has not run.
    #[error("the cluster has no root CA yet: the security plane was not initialised")]
    NotInitialized,
    /// The Cluster object has another id than the one asked for.
    #[error("the cluster object has id {found:?}, not {expected:?}")]
    ClusterMismatch {
        /// The id asked for.
        expected: String,
        /// The Cluster object's id.
        found: String,
    },
    /// The CA could not be made, or the one in the store (or the external
    /// one given) could not be loaded.
    #[error("root CA: {0}")]
    Ca(#[from] CaError),
    /// The external CA names another cluster.
    #[error("the external CA certificate is for cluster {found:?}, not {expected:?}")]
    ExternalCaCluster {
        /// The cluster being initialised.
        expected: String,
        /// The CA certificate's O.
        found: String,
    },
    /// The external signing service's settings are not usable.
    #[error("external CA: {0}")]
    External(#[from] crate::external::ExternalCaError),
    /// The operation needs the CA key, which an external CA keeps.
    #[error("{what} needs the CA key, which the external CA at {url} keeps")]
    KeyIsExternal {
        /// What needed it.
        what: &'static str,
        /// The signer's URL.
        url: String,
    },
    /// A token could not be drawn, or those in the store do not parse.
    #[error("join tokens: {0}")]
    Token(#[from] TokenError),
    /// A secret in the store is not UTF-8 text.
    #[error("the {what} in the store is not UTF-8 text")]
    NotText {
        /// Which secret.
        what: &'static str,
    },
    /// The store refused or failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// A root CA made elsewhere, given as PEM (certificate and key). Its
/// subject's O is the cluster id.
#[derive(Clone)]
pub struct ExternalCa {
    /// The CA certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for ExternalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalCa").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

/// An external signing service holding the root key
/// ([`crate::external`]): only its root certificate goes into the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalSignerConfig {
    /// `http://host:port[/prefix]` of its CFSSL API.
    pub url: String,
    /// Its root certificate, PEM.
    pub cert_pem: String,
}

/// How [`init_security`] sets the plane up.
#[derive(Debug, Clone)]
pub struct SecurityOptions {
    /// Validity of a generated root CA (default 20 years).
    pub ca_validity: Duration,
    /// Use this CA instead of generating one.
    pub external_ca: Option<ExternalCa>,
    /// Have this signing service sign (the key stays with it); excludes
    /// `external_ca`.
    pub external_signer: Option<ExternalSignerConfig>,
    /// Lifetime of the node certificates the CA issues; `None` keeps the
    /// default (90 days).
    pub node_cert_lifetime: Option<Duration>,
}

impl Default for SecurityOptions {
    fn default() -> Self {
        SecurityOptions {
            ca_validity: DEFAULT_CA_VALIDITY,
            external_ca: None,
            external_signer: None,
            node_cert_lifetime: None,
        }
    }
}

fn text(bytes: &SecretBytes, what: &'static str) -> Result<String, CaStoreError> {
    String::from_utf8(bytes.0.clone()).map_err(|_| CaStoreError::NotText { what })
}

fn security(state: &State) -> Result<&ClusterSecurity, CaStoreError> {
    match state.cluster() {
        Some(c) if !c.security.ca_cert_pem.is_empty() => Ok(&c.security),
        _ => Err(CaStoreError::NotInitialized),
    }
}

/// Makes the root CA and both join tokens and writes them into the
/// Cluster object (created with the default spec if absent, with id
/// `cluster_id`). Refuses if a CA is already there, or if the Cluster
/// object has another id. Returns what it wrote.
pub async fn init_security<S: Store + ?Sized>(
    store: &S,
    cluster_id: &str,
    opts: SecurityOptions,
) -> Result<(ClusterCa, JoinTokens), CaStoreError> {
    if opts.external_signer.is_some() {
        return Err(CaStoreError::KeyIsExternal {
            what: "init_security (use init_security_external)",
            url: opts.external_signer.map(|e| e.url).unwrap_or_default(),
        });
    }
    let ca = match &opts.external_ca {
        Some(ext) => {
            let ca = ClusterCa::from_pem(&ext.cert_pem, &ext.key_pem)?;
            if ca.cluster_id() != cluster_id {
                return Err(CaStoreError::ExternalCaCluster {
                    expected: cluster_id.to_owned(),
                    found: ca.cluster_id().to_owned(),
                });
            }
            ca
        }
        None => ClusterCa::generate(cluster_id, opts.ca_validity)?,
    };
    let tokens = JoinTokens::generate(ca.cert_der())?;
    let security = ClusterSecurity {
        ca_cert_pem: ca.cert_pem().to_owned(),
        ca_key_pem: SecretBytes(ca.key_pem().into_bytes()),
        external_ca_url: String::new(),
        worker_token: SecretBytes(tokens.worker().to_string().into_bytes()),
        manager_token: SecretBytes(tokens.manager().to_string().into_bytes()),
        node_cert_lifetime: opts.node_cert_lifetime.map(SpecDuration::from).unwrap_or(SpecDuration::ZERO),
        removed_nodes: Default::default(),
        revoked_operators: Default::default(),
        rotation: None,
    };
    write_security(store, cluster_id, security).await?;
    tracing::info!(cluster_id, "security plane initialised: root CA and join tokens in the store");
    Ok((ca, tokens))
}

/// [`init_security`] with an external CA: only `ext`'s root certificate
/// and URL go into the store; the key stays with the signing service,
/// which signs every certificate ([`crate::external`]). Returns the join
/// tokens (pinned to that root).
pub async fn init_security_external<S: Store + ?Sized>(
    store: &S,
    cluster_id: &str,
    ext: ExternalSignerConfig,
    node_cert_lifetime: Option<Duration>,
) -> Result<JoinTokens, CaStoreError> {
    let signer = crate::external::ExternalSigner::new(&ext.url, &ext.cert_pem)?;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(ext.cert_pem.as_bytes())
        .map_err(|e| CaError::BadCertificate(format!("the external CA's root certificate: {e}")))?;
    let tokens = JoinTokens::generate(&der)?;
    let security = ClusterSecurity {
        ca_cert_pem: crate::ca::pem_of(&der),
        external_ca_url: signer.url().to_owned(),
        worker_token: SecretBytes(tokens.worker().to_string().into_bytes()),
        manager_token: SecretBytes(tokens.manager().to_string().into_bytes()),
        node_cert_lifetime: node_cert_lifetime.map(SpecDuration::from).unwrap_or(SpecDuration::ZERO),
        ..ClusterSecurity::default()
    };
    write_security(store, cluster_id, security).await?;
    tracing::info!(cluster_id, signer = %signer.url(), "security plane initialised with an external CA");
    Ok(tokens)
}

/// Writes a new security plane into the Cluster object (created if
/// absent), refusing when one is there or the object has another id.
async fn write_security<S: Store + ?Sized>(
    store: &S,
    cluster_id: &str,
    security: ClusterSecurity,
) -> Result<(), CaStoreError> {
    let mut refusal = None;
    update_with_retry(store, ATTEMPTS, |state| {
        refusal = None;
        match state.cluster() {
            Some(c) if !c.security.ca_cert_pem.is_empty() => {
                refusal = Some(CaStoreError::AlreadyInitialized);
                None
            }
            Some(c) if c.id.as_str() != cluster_id => {
                refusal =
                    Some(CaStoreError::ClusterMismatch { expected: cluster_id.to_owned(), found: c.id.to_string() });
                None
            }
            Some(c) => {
                let mut c = c.as_ref().clone();
                c.security = security.clone();
                Some(Transaction::new().update(c))
            }
            None => Some(Transaction::new().create(Cluster {
                id: ClusterId::new(cluster_id),
                meta: Meta::default(),
                spec: Default::default(),
                security: security.clone(),
            })),
        }
    })
    .await?;
    match refusal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The root CA kept in the store, loaded ([`ClusterCa::from_pem`]) with
/// the default signing policy.
pub fn cluster_ca(state: &State) -> Result<ClusterCa, CaStoreError> {
    let sec = security(state)?;
    if !sec.external_ca_url.is_empty() {
        return Err(CaStoreError::KeyIsExternal { what: "signing here", url: sec.external_ca_url.clone() });
    }
    let key = text(&sec.ca_key_pem, "CA key")?;
    Ok(ClusterCa::from_pem(&sec.ca_cert_pem, &key)?)
}

/// The external CA of `state`, if its key is not in the store.
pub fn external_signer(state: &State) -> Result<Option<crate::external::ExternalSigner>, CaStoreError> {
    let sec = security(state)?;
    if sec.external_ca_url.is_empty() {
        return Ok(None);
    }
    Ok(Some(crate::external::ExternalSigner::new(&sec.external_ca_url, &sec.ca_cert_pem)?))
}

/// The cluster id of `state` (its Cluster object's id).
pub fn cluster_id(state: &State) -> Result<String, CaStoreError> {
    security(state)?;
    Ok(state.cluster().map(|c| c.id.to_string()).unwrap_or_default())
}

/// The root CA certificate (PEM) kept in the store.
pub fn ca_cert_pem(state: &State) -> Result<&str, CaStoreError> {
    Ok(&security(state)?.ca_cert_pem)
}

/// The current join tokens.
pub fn join_tokens(state: &State) -> Result<JoinTokens, CaStoreError> {
    let sec = security(state)?;
    Ok(JoinTokens::parse(&text(&sec.worker_token, "worker token")?, &text(&sec.manager_token, "manager token")?)?)
}

/// The lifetime of node certificates set in the store; `None` means the
/// CA's default (the store keeps 0 for it).
pub fn node_cert_lifetime(state: &State) -> Option<Duration> {
    let d = state.cluster()?.security.node_cert_lifetime;
    if d.0 > 0 { Some(d.to_std()) } else { None }
}

/// Whether `node_id` is on the deny-list.
pub fn is_removed(state: &State, node_id: &str) -> bool {
    state.cluster().is_some_and(|c| c.security.removed_nodes.contains_key(node_id))
}

/// The role the store gives a node (its Node object's `spec.role`), if
/// the node has an object.
pub fn node_role(state: &State, node_id: &str) -> Option<Role> {
    state.node(&NodeId::new(node_id)).map(|n| match n.spec.role {
        NodeRole::Manager => Role::Manager,
        NodeRole::Worker => Role::Worker,
    })
}

/// Draws a new secret for `role`'s join token and stores it; the old
/// token is refused from the moment a manager's replica has applied the
/// write. Returns both tokens as they now are.
pub async fn rotate_join_token<S: Store + ?Sized>(store: &S, role: Role) -> Result<JoinTokens, CaStoreError> {
    let mut outcome: Option<Result<JoinTokens, CaStoreError>> = None;
    update_with_retry(store, ATTEMPTS, |state| {
        let rotated = join_tokens(state).and_then(|mut t| {
            t.rotate(role)?;
            Ok(t)
        });
        let tx = match (&rotated, state.cluster()) {
            (Ok(t), Some(c)) => {
                let mut c = c.as_ref().clone();
                c.security.worker_token = SecretBytes(t.worker().to_string().into_bytes());
                c.security.manager_token = SecretBytes(t.manager().to_string().into_bytes());
                Some(Transaction::new().update(c))
            }
            _ => None,
        };
        outcome = Some(rotated);
        tx
    })
    .await?;
    let tokens = outcome.unwrap_or(Err(CaStoreError::NotInitialized))?;
    tracing::info!(%role, "join token rotated in the store");
    Ok(tokens)
}

/// Adds `key` with the time to one of the security plane's deny maps
/// (`map` picks it), unless it is there. Returns the revision of the write
/// (or of the state that already had it) and whether it was added.
async fn add_denied<S, K>(
    store: &S,
    key: K,
    map: fn(&mut ClusterSecurity) -> &mut std::collections::BTreeMap<K, swarm_core::time::Timestamp>,
) -> Result<(Revision, bool), CaStoreError>
where
    S: Store + ?Sized,
    K: Ord + Clone + Send + Sync,
{
    let mut already: Option<Result<Revision, CaStoreError>> = None;
    let change = update_with_retry(store, ATTEMPTS, |state| {
        already = None;
        let Some(c) = state.cluster().filter(|c| !c.security.ca_cert_pem.is_empty()) else {
            already = Some(Err(CaStoreError::NotInitialized));
            return None;
        };
        let mut c = c.as_ref().clone();
        let entries = map(&mut c.security);
        if entries.contains_key(&key) {
            already = Some(Ok(state.revision()));
            return None;
        }
        entries.insert(key.clone(), swarm_core::time::now());
        Some(Transaction::new().update(c))
    })
    .await?;
    match (change, already) {
        (Some(change), _) => Ok((change.revision, true)),
        (None, Some(r)) => r.map(|rev| (rev, false)),
        (None, None) => Err(CaStoreError::NotInitialized),
    }
}

/// Puts `node_id` on the deny-list (with the time of the removal): its
/// certificate is refused by [`DenyList`] and the CA stops renewing it.
/// Returns the revision of the write (or of the state that already had
/// it), for [`DenyList::caught_up`].
pub async fn record_removed_node<S: Store + ?Sized>(store: &S, node_id: &str) -> Result<Revision, CaStoreError> {
    let (revision, added) = add_denied(store, NodeId::new(node_id), |s| &mut s.removed_nodes).await?;
    if added {
        tracing::info!(node_id, "node put on the deny-list: its certificate is refused from now on");
    }
    Ok(revision)
}

/// Whether operator `name`'s certificates are revoked.
pub fn is_revoked_operator(state: &State, name: &str) -> bool {
    state.cluster().is_some_and(|c| c.security.revoked_operators.contains_key(name))
}

/// Revokes every certificate issued to operator `name` (and refuses to
/// issue that name again): [`DenyList`] refuses them from the moment a
/// manager's replica has applied the write. Returns the revision of the
/// write (or of the state that already had it), for
/// [`DenyList::caught_up`].
pub async fn revoke_operator<S: Store + ?Sized>(store: &S, name: &str) -> Result<Revision, CaStoreError> {
    let (revision, added) = add_denied(store, name.to_owned(), |s| &mut s.revoked_operators).await?;
    if added {
        tracing::info!(operator = name, "operator certificates revoked: refused from now on");
    }
    Ok(revision)
}

/// The message a revoked operator's calls are refused with.
pub fn revoked_message(name: &str) -> String {
    format!("the certificates of operator {name} were revoked; they are no longer accepted")
}

/// The message a removed node's calls are refused with.
pub fn removed_message(node_id: &str) -> String {
    format!("node {node_id} was removed from the cluster; its certificate is no longer accepted")
}

/// The [`Gate`] refusing the certificates of removed nodes, with the
/// deny-list of the store's current state.
///
/// [`Gate::admit`] is synchronous, so the list is kept in memory and
/// follows the store ([`DenyList::start`]): a removal takes effect on a
/// manager once its replica has applied it, as every other write does.
/// Peers without a certificate pass (the handlers decide what they may
/// call).
#[derive(Debug)]
pub struct DenyList {
    removed: RwLock<Arc<BTreeSet<String>>>,
    revoked: RwLock<Arc<BTreeSet<String>>>,
    seen: tokio::sync::watch::Sender<Revision>,
}

impl Default for DenyList {
    fn default() -> Self {
        DenyList {
            removed: RwLock::new(Arc::default()),
            revoked: RwLock::new(Arc::default()),
            seen: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl DenyList {
    /// An empty list that follows nothing; [`DenyList::update`] fills it.
    pub fn new() -> Self {
        Self::default()
    }

    /// A list loaded from the store's current state and kept current by a
    /// task following the store (returned; abort it to stop following).
    pub async fn start(store: Arc<dyn Store>) -> Result<(Arc<Self>, tokio::task::JoinHandle<()>), StoreError> {
        let list = Arc::new(Self::new());
        list.update(&*store.snapshot().await?);
        let follower = list.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = follower.follow(&*store).await {
                tracing::error!(error = %e, "deny-list: cannot follow the store any more");
            }
        });
        Ok((list, task))
    }

    /// Follows the store, updating the list after each change of the
    /// Cluster object; returns only when the store fails.
    pub async fn follow<S: Store + ?Sized>(&self, store: &S) -> Result<(), StoreError> {
        let touches_cluster = |c: &Change| c.events.iter().any(|e| e.object.kind() == ObjectKind::Cluster);
        follow_state(store, touches_cluster, |state| self.update(state)).await
    }

    /// Replaces the list with `state`'s.
    pub fn update(&self, state: &State) {
        let ids: BTreeSet<String> = state
            .cluster()
            .map(|c| c.security.removed_nodes.keys().map(|id| id.to_string()).collect())
            .unwrap_or_default();
        let mut slot = self.removed.write().unwrap_or_else(|p| p.into_inner());
        if **slot != ids {
            tracing::debug!(removed = ids.len(), "deny-list updated");
            *slot = Arc::new(ids);
        }
        drop(slot);
        let names: BTreeSet<String> =
            state.cluster().map(|c| c.security.revoked_operators.keys().cloned().collect()).unwrap_or_default();
        let mut slot = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        if **slot != names {
            tracing::debug!(revoked = names.len(), "revoked operators updated");
            *slot = Arc::new(names);
        }
        drop(slot);
        self.seen.send_if_modified(|r| {
            let newer = state.revision() > *r;
            if newer {
                *r = state.revision();
            }
            newer
        });
    }

    /// Whether `node_id` is on the list.
    pub fn contains(&self, node_id: &str) -> bool {
        self.removed.read().unwrap_or_else(|p| p.into_inner()).contains(node_id)
    }

    /// Whether operator `name`'s certificates are revoked.
    pub fn revoked_operator(&self, name: &str) -> bool {
        self.revoked.read().unwrap_or_else(|p| p.into_inner()).contains(name)
    }

    /// Waits until the list reflects the state at `revision` or later; a
    /// following list sees only revisions that changed the Cluster object,
    /// such as the one [`record_removed_node`] returns.
    pub async fn caught_up(&self, revision: Revision) {
        let mut rx = self.seen.subscribe();
        // The sender lives as long as `self`: this cannot fail while we wait.
        let _ = rx.wait_for(|r| *r >= revision).await;
    }
}

impl Gate for DenyList {
    fn admit(&self, peer: &Peer) -> Result<(), Fault> {
        match &peer.identity {
            Some(id) if self.contains(&id.node_id) => {
                tracing::warn!(node_id = %id.node_id, peer = ?peer.addr, "refused a removed node's certificate");
                let refusal = crate::ca_service::CaRefusal::Removed { node_id: id.node_id.clone() };
                Err(Fault {
                    code: Code::PermissionDenied,
                    message: removed_message(&id.node_id),
                    redirect: None,
                    detail: serde_json::to_value(&refusal).ok(),
                })
            }
            Some(id) if id.role == Role::Operator && self.revoked_operator(&id.node_id) => {
                tracing::warn!(operator = %id.node_id, peer = ?peer.addr, "refused a revoked operator certificate");
                Err(Fault::new(Code::PermissionDenied, revoked_message(&id.node_id)))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_core::store::MemStore;

    #[tokio::test]
    async fn init_writes_once_and_keeps_the_cluster_spec() {
        let store = MemStore::new();
        let (ca, tokens) = init_security(&store, "c1", SecurityOptions::default()).await.unwrap();
        let state = store.snapshot().await.unwrap();
        let c = state.cluster().unwrap();
        assert_eq!(c.id.as_str(), "c1");
        assert_eq!(c.spec.name, "default");
        assert_eq!(cluster_ca(&state).unwrap().key_pem(), ca.key_pem());
        assert_eq!(join_tokens(&state).unwrap(), tokens);
        assert_eq!(node_cert_lifetime(&state), None);
        assert!(!format!("{c:?}").contains("PRIVATE KEY"), "Debug of the cluster hides the CA key");

        let again = init_security(&store, "c1", SecurityOptions::default()).await.unwrap_err();
        assert!(matches!(again, CaStoreError::AlreadyInitialized), "{again}");
        assert_eq!(cluster_ca(&store.snapshot().await.unwrap()).unwrap().cert_pem(), ca.cert_pem());
    }

    #[tokio::test]
    async fn an_external_ca_is_taken_as_given_and_must_name_the_cluster() {
        let ext = ClusterCa::generate("c1", Duration::from_secs(86_400)).unwrap();
        let opts = |ca: &ClusterCa| SecurityOptions {
            external_ca: Some(ExternalCa { cert_pem: ca.cert_pem().to_owned(), key_pem: ca.key_pem() }),
            node_cert_lifetime: Some(Duration::from_secs(7_200)),
            ..SecurityOptions::default()
        };
        let store = MemStore::new();
        let err = init_security(&store, "c2", opts(&ext)).await.unwrap_err();
        assert!(matches!(err, CaStoreError::ExternalCaCluster { .. }), "{err}");
        let (ca, _) = init_security(&store, "c1", opts(&ext)).await.unwrap();
        assert_eq!(ca.cert_pem(), ext.cert_pem());
        let state = store.snapshot().await.unwrap();
        assert_eq!(node_cert_lifetime(&state), Some(Duration::from_secs(7_200)));
    }

    #[tokio::test]
    async fn an_external_signer_keeps_the_key_out_of_the_store() {
        let root = ClusterCa::generate("anything", Duration::from_secs(86_400)).unwrap();
        let ext = ExternalSignerConfig { url: "http://127.0.0.1:8888".into(), cert_pem: root.cert_pem().to_owned() };
        let store = MemStore::new();
        let tokens = init_security_external(&store, "c1", ext, None).await.unwrap();
        let state = store.snapshot().await.unwrap();
        let sec = &state.cluster().unwrap().security;
        assert!(sec.ca_key_pem.0.is_empty(), "no key in the store");
        assert_eq!(sec.ca_cert_pem, root.cert_pem());
        assert_eq!(join_tokens(&state).unwrap(), tokens);
        tokens.worker().verify_ca(root.cert_der()).unwrap();
        assert_eq!(external_signer(&state).unwrap().unwrap().url(), "http://127.0.0.1:8888");
        assert_eq!(cluster_id(&state).unwrap(), "c1");
        let err = cluster_ca(&state).unwrap_err();
        assert!(matches!(err, CaStoreError::KeyIsExternal { .. }), "{err}");
        let err = crate::rotation::start_rotation(&store, None, None).await.unwrap_err();
        assert!(err.to_string().contains("a CA rotation"), "{err}");
        let https = ExternalSignerConfig { url: "https://127.0.0.1:8888".into(), cert_pem: root.cert_pem().to_owned() };
        let err = init_security_external(&MemStore::new(), "c1", https, None).await.unwrap_err();
        assert!(err.to_string().contains("https is not supported"), "{err}");
    }

    #[tokio::test]
    async fn an_existing_cluster_object_with_another_id_is_refused() {
        let store = MemStore::new();
        let c = Cluster { id: ClusterId::new("other"), ..Default::default() };
        store.commit(Transaction::new().create(c)).await.unwrap();
        let err = init_security(&store, "c1", SecurityOptions::default()).await.unwrap_err();
        assert!(matches!(err, CaStoreError::ClusterMismatch { .. }), "{err}");
        assert!(matches!(cluster_ca(&store.snapshot().await.unwrap()), Err(CaStoreError::NotInitialized)));
    }

    #[tokio::test]
    async fn rotation_and_removal_need_an_initialised_plane() {
        let store = MemStore::new();
        assert!(matches!(rotate_join_token(&store, Role::Worker).await, Err(CaStoreError::NotInitialized)));
        assert!(matches!(record_removed_node(&store, "n1").await, Err(CaStoreError::NotInitialized)));
    }

    #[tokio::test]
    async fn the_deny_list_follows_the_store() {
        let store = MemStore::new();
        init_security(&store, "c1", SecurityOptions::default()).await.unwrap();
        let (list, task) = DenyList::start(Arc::new(store.clone())).await.unwrap();
        assert!(!list.contains("n1"));
        let rev = record_removed_node(&store, "n1").await.unwrap();
        assert_eq!(record_removed_node(&store, "n1").await.unwrap(), rev, "recording twice changes nothing");
        list.caught_up(rev).await;
        assert!(list.contains("n1"));
        assert!(is_removed(&store.snapshot().await.unwrap(), "n1"));
        task.abort();
    }
}
