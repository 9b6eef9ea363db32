//! The `ca` service of the node API ([`crate::rpc`]): every manager serves
//! it, since the CA key is in the replicated store and any manager can
//! sign.
//!
//! | method | who | request -> answer |
//! |--------|-----|-------------------|
//! | `ca.root_ca` | anyone, even without a certificate | `{}` -> [`RootCaResponse`] |
//! | `ca.issue` | anyone with a join token | [`IssueRequest`] -> [`IssueResponse`] |
//! | `ca.renew` | a node of this cluster (its certificate) | [`RenewRequest`] -> [`IssueResponse`] |
//! | `ca.join_tokens` | managers, the local socket | `{}` -> [`JoinTokensResponse`] |
//! | `ca.rotate_join_token` | managers, the local socket | [`RotateRequest`] -> [`JoinTokensResponse`] |
//! | `ca.rotate` | managers, the local socket | [`RotateCaRequest`] -> [`RotationStatus`](crate::rotation::RotationStatus) |
//! | `ca.rotation` | managers, the local socket | `{}` -> [`RotationStatus`](crate::rotation::RotationStatus) |
//! | `ca.revoke_operator` | managers, the local socket | [`RevokeOperatorRequest`] -> `null` |
//!
//! `root_ca` answers the roots a node must trust: the cluster's root, and
//! during a CA rotation ([`crate::rotation`]) the new root after it.
//! During a rotation `issue` and `renew` sign with the new root's key, hand
//! the certificate out followed by the new root cross-signed by the old
//! one, and record the node as renewed in the store.
//!
//! `issue` checks the token against the store's current state: it must
//! parse, pin the current root CA (else [`CaRefusal::WrongCa`]), carry the
//! current worker or manager secret (compared in constant time; else
//! [`CaRefusal::InvalidSecret`], which is also what a rotated-away token
//! gets), and its role must be the role asked for
//! ([`CaRefusal::RoleMismatch`]). The CA then gives the node a fresh
//! random id (25 base-36 characters, as Swarm's) and signs the CSR:
//! CN = node id, OU = role, O = cluster id are the CA's, only the public
//! key comes from the CSR. The lifetime is the store's
//! `security.node_cert_lifetime` (0: 90 days).
//!
//! `renew` signs a CSR for the caller's own node id. The role is the one
//! its Node object gives (so a promotion or demotion takes effect at the
//! next renewal), or its current certificate's when it has no Node
//! object. A node on the deny-list is refused ([`CaRefusal::Removed`]).
//!
//! Refusals are [`Code::Service`] faults whose detail is a [`CaRefusal`]
//! ([`Fault::detail_as`]). Registering the node in the store is not this
//! service's business: the dispatcher does it when the node connects.

use std::sync::{Arc, Mutex};

use rustls_pki_types::pem::PemObject;
use std::time::SystemTime;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use swarm_core::state::State;
use swarm_core::store::Store;

use crate::ca::{CaError, ClusterCa, SigningPolicy};
use crate::castore::{self, CaStoreError};
use crate::identity::NodeIdentity;
use crate::role::Role;
use crate::rotation;
use crate::rpc::{Body, Code, Fault, Handler, Peer, Reply, body};
use crate::token::{JoinToken, TokenError};

/// The service's name on a [`Router`](crate::rpc::Router).
pub const SERVICE: &str = "ca";

/// Why the CA refused a request: the `detail` of its faults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum CaRefusal {
    /// The token does not parse.
    #[error("join token is malformed: {detail}")]
    MalformedToken {
        /// What is wrong with it.
        detail: String,
    },
    /// The token pins another root CA.
    #[error("token is for another CA")]
    WrongCa,
    /// The token's secret is neither the current worker nor manager one.
    #[error("token is not valid (rotated?)")]
    InvalidSecret,
    /// The role asked for is not the token's.
    #[error("the {token} token cannot join as {} {requested}", article(*requested))]
    RoleMismatch {
        /// The token's role.
        #[serde(with = "wire_role")]
        token: Role,
        /// The role asked for.
        #[serde(with = "wire_role")]
        requested: Role,
    },
    /// The node is on the deny-list.
    #[error("node {node_id} was removed from the cluster; its certificate is no longer accepted")]
    Removed {
        /// The node.
        node_id: String,
    },
    /// The certificate presented is of another cluster.
    #[error("the certificate of node {node_id} is for cluster {found:?}, this CA is for {expected:?}")]
    WrongCluster {
        /// The node.
        node_id: String,
        /// This CA's cluster.
        expected: String,
        /// The certificate's.
        found: String,
    },
    /// The CSR could not be used, or the CA could not sign.
    #[error("cannot issue the certificate: {detail}")]
    Signing {
        /// The CA's error.
        detail: String,
    },
}

/// "a" or "an" before a role's name.
fn article(role: Role) -> &'static str {
    if role.as_str().starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" }
}

impl CaRefusal {
    fn fault(self) -> Fault {
        Fault::service(self.to_string(), &self)
    }
}

/// Serde for a [`Role`] as its OU text (`manager` | `worker`).
mod wire_role {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::role::Role;

    pub fn serialize<S: Serializer>(role: &Role, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(role.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Serde for an optional [`Role`] (absent or its OU text).
mod wire_opt_role {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::role::Role;

    pub fn serialize<S: Serializer>(role: &Option<Role>, s: S) -> Result<S::Ok, S::Error> {
        match role {
            Some(r) => s.serialize_some(r.as_str()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Role>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// The answer of `ca.root_ca`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootCaResponse {
    /// The root CA certificates to trust, PEM: one, or during a CA
    /// rotation the current root followed by the new one.
    pub ca_cert_pem: String,
}

/// The request of `ca.rotate`: rotate to a root made by the managers
/// (both fields empty) or to the one given (both set). `Debug` hides the
/// key.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateCaRequest {
    /// The new root certificate, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<String>,
    /// Its key, PKCS#8 PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
}

impl std::fmt::Debug for RotateCaRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateCaRequest")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The request of `ca.issue`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueRequest {
    /// The join token (`SWMTKN-1-...`).
    pub token: String,
    /// The node's certificate request, PEM.
    pub csr_pem: String,
    /// The role the node asks for, which must then be its token's; `None`
    /// takes the token's role (as `docker swarm join`: the token decides).
    #[serde(default, with = "wire_opt_role")]
    pub role: Option<Role>,
    /// The node id the node already has. Kept only when the caller
    /// presents a certificate of this cluster with that id; a new node
    /// gets a random id from the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

impl std::fmt::Debug for IssueRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssueRequest")
            .field("token", &"<redacted>")
            .field("role", &self.role)
            .field("node_id", &self.node_id)
            .finish()
    }
}

/// The answer of `ca.issue` and `ca.renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueResponse {
    /// The node id (the certificate's CN).
    pub node_id: String,
    /// The role (the certificate's OU).
    #[serde(with = "wire_role")]
    pub role: Role,
    /// The node certificate, PEM, followed by its intermediates (during a
    /// CA rotation: the new root cross-signed by the old one).
    pub cert_pem: String,
    /// The root CA certificates to trust, PEM (as `ca.root_ca` answers).
    pub ca_cert_pem: String,
}

/// The request of `ca.renew`: a CSR for the caller's own node id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// The certificate request, PEM.
    pub csr_pem: String,
}

/// The request of `ca.revoke_operator`: every certificate issued to the
/// operator `name` is refused from then on
/// ([`castore::revoke_operator`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeOperatorRequest {
    /// The operator's name (its certificates' CN).
    pub name: String,
}

/// The request of `ca.rotate_join_token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateRequest {
    /// Whose token to rotate.
    #[serde(with = "wire_role")]
    pub role: Role,
}

/// The answer of `ca.join_tokens` and `ca.rotate_join_token`. `Debug`
/// hides the secrets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokensResponse {
    /// The worker token.
    pub worker: String,
    /// The manager token.
    pub manager: String,
}

impl std::fmt::Debug for JoinTokensResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinTokensResponse").field("worker", &"<redacted>").field("manager", &"<redacted>").finish()
    }
}

/// The cluster's root certificate and id.
struct Root {
    der: rustls_pki_types::CertificateDer<'static>,
    cluster_id: String,
}

/// The `ca` service. See the [module docs](self).
pub struct CaService {
    store: Arc<dyn Store>,
    policy: SigningPolicy,
    /// The CAs loaded last (the current root, and the new one during a
    /// rotation), by certificate.
    loaded: Mutex<Vec<Arc<ClusterCa>>>,
}

impl std::fmt::Debug for CaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaService").field("policy", &self.policy).finish()
    }
}

fn store_fault(e: CaStoreError) -> Fault {
    tracing::warn!(error = %e, "CA service cannot serve");
    Fault::new(Code::Unavailable, e.to_string())
}

fn random_node_id() -> Result<String, Fault> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| Fault::new(Code::Unavailable, format!("cannot read the OS random source: {e}")))?;
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut n = u128::from_be_bytes(bytes);
    let mut id = String::with_capacity(25);
    // 36^25 > 2^128: 25 digits hold any 128-bit value.
    for _ in 0..25 {
        id.push(char::from(DIGITS[(n % 36) as usize]));
        n /= 36;
    }
    Ok(id)
}

/// Only managers, and the local socket's operators, see or rotate tokens.
/// The role is compared by name so that an `operator` certificate is
/// admitted as well once that role exists.
fn require_manager<'p>(peer: &'p Peer, what: &str, cluster_id: &str) -> Result<Option<&'p NodeIdentity>, Fault> {
    if peer.local {
        return Ok(None);
    }
    let id = peer.identity.as_ref().ok_or_else(|| {
        Fault::new(Code::Unauthenticated, format!("{what} needs a manager certificate; none was presented"))
    })?;
    if !matches!(id.role.as_str(), "manager" | "operator") {
        return Err(Fault::new(
            Code::PermissionDenied,
            format!("{what} is open to managers; node {} presented a {} certificate", id.node_id, id.role),
        ));
    }
    same_cluster(id, cluster_id)?;
    Ok(Some(id))
}

fn same_cluster(id: &NodeIdentity, cluster_id: &str) -> Result<(), Fault> {
    if id.cluster_id != cluster_id {
        let refusal = CaRefusal::WrongCluster {
            node_id: id.node_id.clone(),
            expected: cluster_id.to_owned(),
            found: id.cluster_id.clone(),
        };
        return Err(Fault { code: Code::PermissionDenied, ..refusal.fault() });
    }
    Ok(())
}

fn tokens_response(t: &crate::token::JoinTokens) -> JoinTokensResponse {
    JoinTokensResponse { worker: t.worker().to_string(), manager: t.manager().to_string() }
}

impl CaService {
    /// The service for the CA in `store`, signing with the default policy
    /// (node certificates at least 1 hour).
    pub fn new(store: Arc<dyn Store>) -> Self {
        CaService { store, policy: SigningPolicy::default(), loaded: Mutex::new(Vec::new()) }
    }

    /// Signs with `policy` (tests lower `min_lifetime` to seconds).
    pub fn with_policy(mut self, policy: SigningPolicy) -> Self {
        self.policy = policy;
        self
    }

    async fn state(&self) -> Result<Arc<State>, Fault> {
        self.store.snapshot().await.map_err(|e| store_fault(e.into()))
    }

    /// A CA loaded once per root certificate (`pem`) by `load`.
    fn cached(
        &self,
        pem: &str,
        load: impl FnOnce() -> Result<ClusterCa, CaStoreError>,
    ) -> Result<Arc<ClusterCa>, Fault> {
        let mut slot = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ca) = slot.iter().find(|ca| ca.cert_pem() == pem) {
            return Ok(ca.clone());
        }
        let ca = Arc::new(load().map_err(store_fault)?.with_policy(self.policy.clone()));
        slot.insert(0, ca.clone());
        slot.truncate(2);
        Ok(ca)
    }

    /// The cluster's root certificate in `state` (what join tokens pin)
    /// and its cluster id; with or without the key in the store.
    fn ca(&self, state: &State) -> Result<Root, Fault> {
        let pem = castore::ca_cert_pem(state).map_err(store_fault)?;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| Fault::new(Code::Unavailable, format!("the root certificate in the store: {e}")))?;
        Ok(Root { der, cluster_id: castore::cluster_id(state).map_err(store_fault)? })
    }

    /// The CA that signs in `state`: the new root during a rotation.
    fn signer(&self, state: &State) -> Result<Arc<ClusterCa>, Fault> {
        let pem = rotation::signing_root_pem(state).map_err(store_fault)?;
        self.cached(pem, || rotation::signing_ca(state))
    }

    async fn sign(&self, state: &State, csr_pem: &str, node_id: &str, role: Role) -> Result<Reply, Fault> {
        if let Some(external) = castore::external_signer(state).map_err(store_fault)? {
            let cluster_id = castore::cluster_id(state).map_err(store_fault)?;
            let cert_pem = external.sign(csr_pem, node_id, role, &cluster_id).await.map_err(|e| {
                tracing::warn!(node_id, error = %e, "the external CA did not issue");
                match e {
                    crate::external::ExternalCaError::Refused { .. } => {
                        CaRefusal::Signing { detail: e.to_string() }.fault()
                    }
                    other => Fault::new(Code::Unavailable, format!("cannot issue the certificate: {other}")),
                }
            })?;
            return Reply::unary(&IssueResponse {
                node_id: node_id.to_owned(),
                role,
                cert_pem,
                ca_cert_pem: rotation::trust_bundle_pem(state).map_err(store_fault)?,
            });
        }
        let ca = self.signer(state)?;
        let lifetime = castore::node_cert_lifetime(state);
        let issued = ca.sign_node_csr(csr_pem, node_id, role, lifetime, SystemTime::now()).map_err(|e| {
            tracing::warn!(node_id, error = %e, "CA refused to sign");
            match e {
                CaError::BadCsr(_) | CaError::LifetimeTooShort { .. } | CaError::CaExpired => {
                    CaRefusal::Signing { detail: e.to_string() }.fault()
                }
                other => Fault::new(Code::Unavailable, format!("cannot issue the certificate: {other}")),
            }
        })?;
        if rotation::in_progress(state) {
            // The rotation waits for this record; without it the node,
            // which now holds a new certificate, would never be counted.
            rotation::record_renewed(&*self.store, node_id, ca.cert_pem()).await.map_err(store_fault)?;
            tracing::info!(node_id, "CA rotation: node holds a certificate of the new root");
        }
        Reply::unary(&IssueResponse {
            node_id: node_id.to_owned(),
            role,
            cert_pem: issued.chain_pem().to_owned(),
            ca_cert_pem: rotation::trust_bundle_pem(state).map_err(store_fault)?,
        })
    }

    async fn issue(&self, peer: &Peer, req: IssueRequest) -> Result<Reply, Fault> {
        let state = self.state().await?;
        let ca = self.ca(&state)?;
        let refuse = |r: CaRefusal| {
            tracing::warn!(peer = ?peer.addr, reason = %r, "refused a join");
            r.fault()
        };
        let token =
            JoinToken::parse(&req.token).map_err(|e| refuse(CaRefusal::MalformedToken { detail: e.to_string() }))?;
        if token.verify_ca(&ca.der).is_err() {
            return Err(refuse(CaRefusal::WrongCa));
        }
        let tokens = castore::join_tokens(&state).map_err(store_fault)?;
        let token_role = tokens.role_for(&req.token).map_err(|e| match e {
            TokenError::CaMismatch => refuse(CaRefusal::WrongCa),
            TokenError::NoMatch => refuse(CaRefusal::InvalidSecret),
            other => refuse(CaRefusal::MalformedToken { detail: other.to_string() }),
        })?;
        if let Some(requested) = req.role
            && token_role != requested
        {
            return Err(refuse(CaRefusal::RoleMismatch { token: token_role, requested }));
        }
        // A node keeps its id only if its certificate proves it is that node.
        let node_id = match (&peer.identity, &req.node_id) {
            (Some(id), Some(asked)) if &id.node_id == asked && id.cluster_id == ca.cluster_id => {
                if castore::is_removed(&state, asked) {
                    return Err(refuse(CaRefusal::Removed { node_id: asked.clone() }));
                }
                asked.clone()
            }
            _ => random_node_id()?,
        };
        let reply = self.sign(&state, &req.csr_pem, &node_id, token_role).await?;
        tracing::info!(node_id, role = %token_role, peer = ?peer.addr, "node joined with a join token");
        Ok(reply)
    }

    async fn renew(&self, peer: &Peer, req: RenewRequest) -> Result<Reply, Fault> {
        let id = peer.require(&[Role::Manager, Role::Worker], "ca.renew")?;
        let state = self.state().await?;
        let ca = self.ca(&state)?;
        same_cluster(id, &ca.cluster_id)?;
        if castore::is_removed(&state, &id.node_id) {
            tracing::warn!(node_id = %id.node_id, "refused to renew a removed node's certificate");
            let refusal = CaRefusal::Removed { node_id: id.node_id.clone() };
            return Err(Fault { code: Code::PermissionDenied, ..refusal.fault() });
        }
        let role = castore::node_role(&state, &id.node_id).unwrap_or(id.role);
        if role != id.role {
            tracing::info!(node_id = %id.node_id, from = %id.role, to = %role, "renewal changes the node's role");
        }
        self.sign(&state, &req.csr_pem, &id.node_id, role).await
    }

    async fn rotate(&self, peer: &Peer, req: RotateCaRequest) -> Result<Reply, Fault> {
        let state = self.state().await?;
        let ca = self.ca(&state)?;
        let who = require_manager(peer, "ca.rotate", &ca.cluster_id)?;
        let given = match (req.cert_pem, req.key_pem) {
            (Some(cert_pem), Some(key_pem)) => Some(castore::ExternalCa { cert_pem, key_pem }),
            (None, None) => None,
            _ => {
                return Err(Fault::new(
                    Code::BadRequest,
                    "ca.rotate: give both the new root's certificate and its key, or neither",
                ));
            }
        };
        let status = rotation::start_rotation(&*self.store, given, None).await.map_err(|e| match e {
            CaStoreError::Store(_) | CaStoreError::NotInitialized => store_fault(e),
            other => Fault::new(Code::BadRequest, format!("ca.rotate: {other}")),
        })?;
        tracing::info!(by = ?who.map(|i| &i.node_id), pending = status.pending.len(), "CA rotation started");
        Reply::unary(&status)
    }
}

#[async_trait]
impl Handler for CaService {
    async fn call(&self, peer: &Peer, method: &str, request: Body) -> Result<Reply, Fault> {
        match method {
            "root_ca" => {
                let state = self.state().await?;
                let ca_cert_pem = rotation::trust_bundle_pem(&state).map_err(store_fault)?;
                Reply::unary(&RootCaResponse { ca_cert_pem })
            }
            "rotate" => self.rotate(peer, body("ca.rotate", request)?).await,
            "revoke_operator" => {
                let req: RevokeOperatorRequest = body("ca.revoke_operator", request)?;
                let state = self.state().await?;
                let ca = self.ca(&state)?;
                let who = require_manager(peer, "ca.revoke_operator", &ca.cluster_id)?;
                if req.name.is_empty() {
                    return Err(Fault::new(Code::BadRequest, "ca.revoke_operator: the operator name is empty"));
                }
                castore::revoke_operator(&*self.store, &req.name).await.map_err(store_fault)?;
                tracing::info!(operator = %req.name, by = ?who.map(|i| &i.node_id), "operator certificates revoked");
                Reply::unary(&())
            }
            "rotation" => {
                let state = self.state().await?;
                let ca = self.ca(&state)?;
                require_manager(peer, "ca.rotation", &ca.cluster_id)?;
                Reply::unary(&rotation::status(&state).map_err(store_fault)?)
            }
            "issue" => self.issue(peer, body("ca.issue", request)?).await,
            "renew" => self.renew(peer, body("ca.renew", request)?).await,
            "join_tokens" => {
                let state = self.state().await?;
                let ca = self.ca(&state)?;
                require_manager(peer, "ca.join_tokens", &ca.cluster_id)?;
                let tokens = castore::join_tokens(&state).map_err(store_fault)?;
                Reply::unary(&tokens_response(&tokens))
            }
            "rotate_join_token" => {
                let req: RotateRequest = body("ca.rotate_join_token", request)?;
                let state = self.state().await?;
                let ca = self.ca(&state)?;
                let who = require_manager(peer, "ca.rotate_join_token", &ca.cluster_id)?;
                let tokens = castore::rotate_join_token(&*self.store, req.role).await.map_err(|e| match e {
                    // A role without a join token (operators, once they exist).
                    CaStoreError::Token(e) => Fault::new(Code::BadRequest, format!("ca.rotate_join_token: {e}")),
                    other => store_fault(other),
                })?;
                tracing::info!(role = %req.role, by = ?who.map(|i| &i.node_id), "join token rotated");
                Reply::unary(&tokens_response(&tokens))
            }
            other => Err(Fault::new(Code::UnknownMethod, format!("the ca service has no method {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_look_like_swarms() {
        let a = random_node_id().unwrap();
        assert_eq!(a.len(), 25);
        assert!(a.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
        assert_ne!(a, random_node_id().unwrap());
    }

    #[test]
    fn refusals_cross_the_wire_with_their_reason() {
        let r = CaRefusal::RoleMismatch { token: Role::Worker, requested: Role::Manager };
        let fault = r.clone().fault();
        assert_eq!(fault.message, "the worker token cannot join as a manager");
        assert_eq!(fault.detail_as::<CaRefusal>(), Some(r));
        let json = serde_json::to_value(CaRefusal::WrongCa).unwrap();
        assert_eq!(json, serde_json::json!({"reason": "wrong_ca"}));
    }
}
