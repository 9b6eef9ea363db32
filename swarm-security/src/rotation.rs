//! Root CA rotation (`swarmctl ca --rotate`, as `docker swarm ca
//! --rotate`), kept in the replicated store.
//!
//! 1. [`start_rotation`] makes a new root (or takes one the operator
//!    gives), has the current root cross-sign it, and records both in the
//!    Cluster object ([`CaRotation`]). From then on the CA signs every
//!    certificate with the new key and hands it out followed by the
//!    cross-signed certificate ([`signing_ca`]), and nodes are told to
//!    trust both roots ([`trust_bundle_pem`]).
//! 2. Every node learns of it from its heartbeat answers ([`CaHint`]:
//!    the digest of the roots to trust and of the root that signs now),
//!    fetches the two roots from a manager it already trusts, and renews
//!    its certificate at once; the CA records each node it issued a
//!    certificate to with the new key ([`CaRotation::renewed`]).
//!    Throughout, a node that still trusts only the old root verifies a
//!    new certificate through the cross-signed one, and a node that trusts
//!    both verifies an old certificate directly: the cluster keeps working.
//! 3. The leader's [`rotation_loop`] finishes the rotation once every node
//!    that is not down (nor removed) holds a new certificate
//!    ([`finish_if_done`]): the new root replaces the old one, which nodes
//!    drop from their trust with their next heartbeat, and the join tokens
//!    are re-pinned to the new root (same secrets, new digest: a token
//!    printed before the rotation is refused for its CA digest).
//!
//! A node that was down during the whole rotation still holds a
//! certificate of the old root, which nobody trusts once the rotation has
//! finished: it must join again (`swarmctl node rm`, then `swarmd join`).
//! Starting a rotation while one is in progress replaces it (the newest
//! root is cross-signed by the current one, and every node renews again).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use swarm_core::id::NodeId;
use swarm_core::model::{CaRotation, NodeState, SecretBytes};
use swarm_core::state::{State, Transaction};
use swarm_core::store::{Store, update_with_retry};

use crate::ca::{ClusterCa, DEFAULT_CA_VALIDITY};
use crate::castore::{CaStoreError, ExternalCa, cluster_ca, join_tokens};
use crate::tls::certs_from_pem;
use crate::token::{JoinTokens, ca_digest};

/// How many times a write is retried after a version conflict.
const ATTEMPTS: usize = 10;

/// What a manager tells every node with each heartbeat answer about the
/// CA, as digests (base-36 SHA-256, as join tokens carry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaHint {
    /// Digest of the root certificates nodes must trust now
    /// ([`bundle_digest`] of [`trust_bundle_pem`]).
    pub trust: String,
    /// Digest of the root whose key signs certificates now: a node whose
    /// certificate another key issued renews.
    pub signing_root: String,
}

/// Where a rotation stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationStatus {
    /// Whether a rotation is in progress.
    pub in_progress: bool,
    /// The root certificate that signs now (PEM): the new one during a
    /// rotation.
    pub signing_root_pem: String,
    /// Nodes holding a certificate of the new root (during a rotation).
    pub renewed: Vec<String>,
    /// Nodes the rotation still waits for: not down, not removed, without
    /// a certificate of the new root.
    pub pending: Vec<String>,
}

/// Digest of a PEM bundle of certificates: of their DER, in order.
pub fn bundle_digest(pem: &str) -> Result<String, CaStoreError> {
    let certs = certs_from_pem(pem, "CA certificate bundle")
        .map_err(|e| CaStoreError::Ca(crate::ca::CaError::BadCertificate(e.to_string())))?;
    let mut all = Vec::new();
    for c in &certs {
        all.extend_from_slice(c.as_ref());
    }
    Ok(ca_digest(&all))
}

fn rotation(state: &State) -> Option<&CaRotation> {
    state.cluster().and_then(|c| c.security.rotation.as_ref())
}

/// Whether a rotation is in progress in `state` (cheap: no walk over the
/// nodes, unlike [`status`]).
pub fn in_progress(state: &State) -> bool {
    rotation(state).is_some()
}

/// The root certificates nodes must trust (PEM): the cluster's root, and
/// during a rotation the new root after it.
pub fn trust_bundle_pem(state: &State) -> Result<String, CaStoreError> {
    let current = crate::castore::ca_cert_pem(state)?;
    Ok(match rotation(state) {
        Some(r) => format!("{}{}", with_newline(current), with_newline(&r.new_cert_pem)),
        None => current.to_owned(),
    })
}

fn with_newline(pem: &str) -> String {
    if pem.ends_with('\n') { pem.to_owned() } else { format!("{pem}\n") }
}

/// The CA that signs now: the cluster's root, or during a rotation the
/// new root, which appends the cross-signed certificate to everything it
/// issues.
pub fn signing_ca(state: &State) -> Result<ClusterCa, CaStoreError> {
    match rotation(state) {
        Some(r) => {
            let key =
                String::from_utf8(r.new_key_pem.0.clone()).map_err(|_| CaStoreError::NotText { what: "new CA key" })?;
            Ok(ClusterCa::from_pem(&r.new_cert_pem, &key)?.with_intermediates(&r.cross_signed_pem))
        }
        None => cluster_ca(state),
    }
}

/// The PEM of the root that signs now.
pub fn signing_root_pem(state: &State) -> Result<&str, CaStoreError> {
    match rotation(state) {
        Some(r) => Ok(&r.new_cert_pem),
        None => crate::castore::ca_cert_pem(state),
    }
}

/// The hint for heartbeat answers; `None` without a CA in the store.
pub fn hint(state: &State) -> Option<CaHint> {
    let trust = bundle_digest(&trust_bundle_pem(state).ok()?).ok()?;
    let signing_root = bundle_digest(signing_root_pem(state).ok()?).ok()?;
    Some(CaHint { trust, signing_root })
}

/// [`hint`] computed once per Cluster object: heartbeat answers ask for
/// it on every heartbeat, and it changes only when the Cluster object
/// does (a rotation starts or finishes).
#[derive(Debug, Default)]
pub struct HintCache {
    last: std::sync::Mutex<Option<(Arc<swarm_core::model::Cluster>, Option<CaHint>)>>,
}

impl HintCache {
    /// The hint of `state`, from the cache while its Cluster object is the
    /// same one.
    pub fn get(&self, state: &State) -> Option<CaHint> {
        let cluster = state.cluster()?;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, h)) = last.as_ref()
            && Arc::ptr_eq(c, cluster)
        {
            return h.clone();
        }
        let h = hint(state);
        *last = Some((cluster.clone(), h.clone()));
        h
    }
}

/// Where the rotation of `state` stands.
pub fn status(state: &State) -> Result<RotationStatus, CaStoreError> {
    let signing_root_pem = signing_root_pem(state)?.to_owned();
    let Some(r) = rotation(state) else {
        return Ok(RotationStatus { in_progress: false, signing_root_pem, renewed: Vec::new(), pending: Vec::new() });
    };
    let removed: BTreeSet<&NodeId> =
        state.cluster().map(|c| c.security.removed_nodes.keys().collect()).unwrap_or_default();
    let pending = state
        .nodes()
        .filter(|n| !matches!(n.status.state, NodeState::Down | NodeState::Disconnected))
        .filter(|n| !removed.contains(&n.id) && !r.renewed.contains_key(&n.id))
        .map(|n| n.id.to_string())
        .collect();
    Ok(RotationStatus {
        in_progress: true,
        signing_root_pem,
        renewed: r.renewed.keys().map(|n| n.to_string()).collect(),
        pending,
    })
}

/// Starts a rotation to `new` (a root made elsewhere, for the same
/// cluster), or to a root made here valid for `validity` (default 20
/// years). Replaces a rotation in progress. Returns the status after the
/// write.
pub async fn start_rotation<S: Store + ?Sized>(
    store: &S,
    new: Option<ExternalCa>,
    validity: Option<Duration>,
) -> Result<RotationStatus, CaStoreError> {
    let state = store.snapshot().await?;
    if let Some(external) = crate::castore::external_signer(&state)? {
        return Err(CaStoreError::KeyIsExternal {
            what: "a CA rotation (the current root cross-signs the new one)",
            url: external.url().to_owned(),
        });
    }
    let current = cluster_ca(&state)?;
    let successor = match new {
        Some(ext) => {
            let ca = ClusterCa::from_pem(&ext.cert_pem, &ext.key_pem)?;
            if ca.cluster_id() != current.cluster_id() {
                return Err(CaStoreError::ExternalCaCluster {
                    expected: current.cluster_id().to_owned(),
                    found: ca.cluster_id().to_owned(),
                });
            }
            if ca.cert_der() == current.cert_der() {
                return Err(CaStoreError::Ca(crate::ca::CaError::BadCertificate(
                    "the new root is the cluster's current root".into(),
                )));
            }
            ca
        }
        None => ClusterCa::generate(current.cluster_id(), validity.unwrap_or(DEFAULT_CA_VALIDITY))?,
    };
    let cross = current.cross_sign(&successor, SystemTime::now())?;
    let rotation = CaRotation {
        new_cert_pem: successor.cert_pem().to_owned(),
        new_key_pem: SecretBytes(successor.key_pem().into_bytes()),
        cross_signed_pem: cross.cert_pem().to_owned(),
        started: swarm_core::time::now(),
        renewed: Default::default(),
    };
    let mut refusal = None;
    update_with_retry(store, ATTEMPTS, |state| {
        refusal = None;
        match state.cluster() {
            // The root changed under us (another rotation finished): the
            // cross-signature would be by the wrong root.
            Some(c) if c.security.ca_cert_pem == current.cert_pem() => {
                let mut c = c.as_ref().clone();
                c.security.rotation = Some(rotation.clone());
                Some(Transaction::new().update(c))
            }
            Some(_) => {
                refusal = Some(CaStoreError::Ca(crate::ca::CaError::BadCertificate(
                    "the cluster's root changed while the rotation was being prepared; try again".into(),
                )));
                None
            }
            None => {
                refusal = Some(CaStoreError::NotInitialized);
                None
            }
        }
    })
    .await?;
    if let Some(e) = refusal {
        return Err(e);
    }
    tracing::info!(cluster_id = %current.cluster_id(), "CA rotation started: the new root signs from now on");
    status(&*store.snapshot().await?)
}

/// Records that the CA issued `node_id` a certificate with the key of the
/// rotation whose new root is `new_root_pem` (nothing if that rotation is
/// no longer in progress).
pub async fn record_renewed<S: Store + ?Sized>(
    store: &S,
    node_id: &str,
    new_root_pem: &str,
) -> Result<(), CaStoreError> {
    update_with_retry(store, ATTEMPTS, |state| {
        let c = state.cluster()?;
        let r = c.security.rotation.as_ref()?;
        if r.new_cert_pem != new_root_pem || r.renewed.contains_key(&NodeId::new(node_id)) {
            return None;
        }
        let mut c = c.as_ref().clone();
        if let Some(r) = c.security.rotation.as_mut() {
            r.renewed.insert(NodeId::new(node_id), swarm_core::time::now());
        }
        Some(Transaction::new().update(c))
    })
    .await?;
    Ok(())
}

/// Finishes the rotation if no node is pending: the new root becomes the
/// cluster's, the old one is dropped, the join tokens are re-pinned to the
/// new root. Returns the new tokens when it finished it.
pub async fn finish_if_done<S: Store + ?Sized>(store: &S) -> Result<Option<JoinTokens>, CaStoreError> {
    let mut outcome: Option<Result<JoinTokens, CaStoreError>> = None;
    update_with_retry(store, ATTEMPTS, |state| {
        outcome = None;
        let c = state.cluster()?;
        let r = c.security.rotation.as_ref()?;
        match status(state) {
            Ok(s) if s.pending.is_empty() => {}
            Ok(_) => return None,
            Err(e) => {
                outcome = Some(Err(e));
                return None;
            }
        }
        let new_root = match certs_from_pem(&r.new_cert_pem, "new root") {
            Ok(certs) => certs[0].clone(),
            Err(e) => {
                outcome = Some(Err(CaStoreError::Ca(crate::ca::CaError::BadCertificate(e.to_string()))));
                return None;
            }
        };
        let tokens = match join_tokens(state) {
            Ok(t) => t.repinned(&new_root),
            Err(e) => {
                outcome = Some(Err(e));
                return None;
            }
        };
        let mut c = c.as_ref().clone();
        let r = c.security.rotation.take()?;
        c.security.ca_cert_pem = r.new_cert_pem;
        c.security.ca_key_pem = r.new_key_pem;
        c.security.worker_token = SecretBytes(tokens.worker().to_string().into_bytes());
        c.security.manager_token = SecretBytes(tokens.manager().to_string().into_bytes());
        outcome = Some(Ok(tokens));
        Some(Transaction::new().update(c))
    })
    .await?;
    match outcome {
        Some(Ok(tokens)) => {
            tracing::info!(
                "CA rotation finished: every live node holds a certificate of the new root; the old root is dropped"
            );
            Ok(Some(tokens))
        }
        Some(Err(e)) => Err(e),
        None => Ok(None),
    }
}

/// Finishes rotations on the leader: every `period`, while `store` says
/// this manager leads, [`finish_if_done`]. Runs until aborted.
pub async fn rotation_loop(store: Arc<dyn Store>, period: Duration) {
    let leadership = store.leadership();
    loop {
        tokio::time::sleep(period).await;
        if !*leadership.borrow() {
            continue;
        }
        let in_progress = store.local_snapshot().is_some_and(|s| self::in_progress(&s));
        if !in_progress {
            continue;
        }
        if let Err(e) = finish_if_done(&*store).await {
            tracing::debug!(error = %e, "CA rotation: cannot check or finish now");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::castore::{SecurityOptions, init_security};
    use swarm_core::model::{Node, NodeStatus};
    use swarm_core::store::MemStore;

    async fn with_nodes(ids: &[(&str, NodeState)]) -> MemStore {
        let store = MemStore::new();
        init_security(&store, "c1", SecurityOptions::default()).await.unwrap();
        let mut tx = Transaction::new();
        for (id, st) in ids {
            tx = tx.create(Node {
                id: NodeId::new(*id),
                status: NodeStatus { state: *st, ..Default::default() },
                ..Default::default()
            });
        }
        if !tx.is_empty() {
            store.commit(tx).await.unwrap();
        }
        store
    }

    #[tokio::test]
    async fn a_rotation_signs_with_the_new_root_and_finishes_when_every_live_node_renewed() {
        let store = with_nodes(&[("a", NodeState::Ready), ("b", NodeState::Ready), ("gone", NodeState::Down)]).await;
        let before = store.snapshot().await.unwrap();
        let old_root = crate::castore::ca_cert_pem(&before).unwrap().to_owned();
        let old_tokens = join_tokens(&before).unwrap();
        let old_hint = hint(&before).unwrap();
        assert_eq!(old_hint.trust, old_hint.signing_root, "one root: trusted and signing");

        let st = start_rotation(&store, None, None).await.unwrap();
        assert!(st.in_progress);
        assert_eq!(st.pending, ["a", "b"], "down nodes are not waited for");
        let during = store.snapshot().await.unwrap();
        let bundle = trust_bundle_pem(&during).unwrap();
        assert_eq!(certs_from_pem(&bundle, "b").unwrap().len(), 2);
        assert!(bundle.starts_with(&old_root));
        let h = hint(&during).unwrap();
        assert_ne!(h.trust, old_hint.trust);
        assert_ne!(h.signing_root, old_hint.signing_root);
        assert_eq!(h.signing_root, bundle_digest(&st.signing_root_pem).unwrap());
        let signer = signing_ca(&during).unwrap();
        assert_eq!(signer.cert_pem(), st.signing_root_pem);
        assert_eq!(crate::castore::ca_cert_pem(&during).unwrap(), old_root, "the old root stays until the end");

        assert_eq!(finish_if_done(&store).await.unwrap(), None, "a and b still hold old certificates");
        record_renewed(&store, "a", &st.signing_root_pem).await.unwrap();
        record_renewed(&store, "a", "-----another rotation-----").await.unwrap();
        assert_eq!(status(&store.snapshot().await.unwrap()).unwrap().pending, ["b"]);
        assert_eq!(finish_if_done(&store).await.unwrap(), None);
        record_renewed(&store, "b", &st.signing_root_pem).await.unwrap();
        let tokens = finish_if_done(&store).await.unwrap().expect("finished");

        let after = store.snapshot().await.unwrap();
        assert_eq!(crate::castore::ca_cert_pem(&after).unwrap(), st.signing_root_pem);
        assert_eq!(cluster_ca(&after).unwrap().key_pem(), signer.key_pem());
        assert!(!status(&after).unwrap().in_progress);
        assert_eq!(trust_bundle_pem(&after).unwrap(), st.signing_root_pem, "the old root is dropped");
        assert_eq!(join_tokens(&after).unwrap(), tokens);
        assert!(tokens.worker().secret_matches(old_tokens.worker()), "same secrets");
        assert_ne!(tokens.worker().ca_digest(), old_tokens.worker().ca_digest(), "pinned to the new root");
        assert!(tokens.role_for(&old_tokens.worker().to_string()).is_err(), "an old token is refused");
        assert_eq!(finish_if_done(&store).await.unwrap(), None, "nothing left to finish");
    }

    #[tokio::test]
    async fn an_external_root_must_be_of_the_cluster_and_new() {
        let store = with_nodes(&[]).await;
        let state = store.snapshot().await.unwrap();
        let current = cluster_ca(&state).unwrap();
        let same = ExternalCa { cert_pem: current.cert_pem().to_owned(), key_pem: current.key_pem() };
        assert!(start_rotation(&store, Some(same), None).await.is_err());
        let other = ClusterCa::generate("c2", Duration::from_secs(86_400)).unwrap();
        let foreign = ExternalCa { cert_pem: other.cert_pem().to_owned(), key_pem: other.key_pem() };
        let err = start_rotation(&store, Some(foreign), None).await.unwrap_err();
        assert!(matches!(err, CaStoreError::ExternalCaCluster { .. }), "{err}");
        assert!(rotation(&store.snapshot().await.unwrap()).is_none(), "a refused rotation changes nothing");

        let mine = ClusterCa::generate("c1", Duration::from_secs(86_400)).unwrap();
        let given = ExternalCa { cert_pem: mine.cert_pem().to_owned(), key_pem: mine.key_pem() };
        let st = start_rotation(&store, Some(given), None).await.unwrap();
        assert_eq!(st.signing_root_pem, mine.cert_pem());
        // No node: it finishes at once.
        assert!(finish_if_done(&store).await.unwrap().is_some());
        assert_eq!(crate::castore::ca_cert_pem(&store.snapshot().await.unwrap()).unwrap(), mine.cert_pem());
    }

    #[tokio::test]
    async fn the_hint_cache_follows_the_cluster_object() {
        let store = with_nodes(&[("a", NodeState::Ready)]).await;
        let cache = HintCache::default();
        let before = store.snapshot().await.unwrap();
        assert_eq!(cache.get(&before), hint(&before));
        assert!(!in_progress(&before));
        start_rotation(&store, None, None).await.unwrap();
        let during = store.snapshot().await.unwrap();
        assert!(in_progress(&during));
        assert_eq!(cache.get(&during), hint(&during));
        assert_ne!(cache.get(&during), cache.get(&before));
    }

    #[tokio::test]
    async fn a_new_rotation_replaces_one_in_progress() {
        let store = with_nodes(&[("a", NodeState::Ready)]).await;
        let first = start_rotation(&store, None, None).await.unwrap();
        record_renewed(&store, "a", &first.signing_root_pem).await.unwrap();
        let second = start_rotation(&store, None, None).await.unwrap();
        assert_ne!(first.signing_root_pem, second.signing_root_pem);
        assert_eq!(second.pending, ["a"], "renewals onto the first new root no longer count");
    }
}
