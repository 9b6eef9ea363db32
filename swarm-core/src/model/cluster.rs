use super::{Meta, SecretBytes};
use crate::id::{ClusterId, NodeId};
use crate::time::SpecDuration;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Cluster-wide settings. There is one Cluster object, named "default".
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Cluster {
    /// Cluster id.
    pub id: ClusterId,
    /// Store bookkeeping.
    pub meta: Meta,
    /// Settings.
    pub spec: ClusterSpec,
    /// The security plane's state: CA, join tokens, removed nodes. Empty
    /// for a cluster without one (in-process clusters).
    pub security: ClusterSecurity,
}

/// The replicated state of a cluster's security plane (written by
/// `swarm-security`; see docs/security.md). The CA key and the tokens are
/// [`SecretBytes`]: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterSecurity {
    /// PEM of the root CA certificate nodes trust.
    pub ca_cert_pem: String,
    /// PEM of the root CA's signing key (empty with an external CA).
    pub ca_key_pem: SecretBytes,
    /// With an external CA (whose key is not in the store): the URL of its
    /// signing service (CFSSL's API). Empty otherwise.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub external_ca_url: String,
    /// The worker join token (`SWMTKN-1-...`).
    pub worker_token: SecretBytes,
    /// The manager join token.
    pub manager_token: SecretBytes,
    /// Lifetime of the node certificates the CA issues (0: the default,
    /// 90 days).
    pub node_cert_lifetime: SpecDuration,
    /// Removed nodes, whose certificates are refused from then on, with
    /// the time the removal was recorded.
    pub removed_nodes: BTreeMap<NodeId, Timestamp>,
    /// Revoked operator names (`swarmctl operator-cert --revoke`), with the
    /// time of the revocation: every certificate issued to that name is
    /// refused from then on, and the name is not issued again.
    pub revoked_operators: BTreeMap<String, Timestamp>,
    /// A root CA rotation in progress (`swarmctl ca --rotate`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<CaRotation>,
}

/// A root CA rotation in progress: the new root, its key, and the new
/// root's certificate signed by the old root (the cross-signed
/// certificate that lets nodes still trusting only the old root verify
/// certificates the new key issued). The CA signs with the new key from
/// the start of the rotation; once every live node holds a certificate
/// issued by it (`renewed`), the new root replaces the old one.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CaRotation {
    /// PEM of the new root CA certificate.
    pub new_cert_pem: String,
    /// PEM of the new root CA's signing key.
    pub new_key_pem: SecretBytes,
    /// PEM of the new root's public key and subject certified by the old
    /// root.
    pub cross_signed_pem: String,
    /// When the rotation started.
    pub started: Timestamp,
    /// Nodes that hold a certificate issued by the new key, with when it
    /// was issued.
    pub renewed: BTreeMap<NodeId, Timestamp>,
}

/// Cluster settings, with Swarm's defaults.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterSpec {
    /// Name ("default").
    pub name: String,
    /// Orchestration settings.
    pub orchestration: OrchestrationConfig,
    /// Heartbeats.
    pub dispatcher: DispatcherConfig,
    /// Raft timing and snapshots.
    pub raft: RaftConfig,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            name: "default".into(),
            orchestration: OrchestrationConfig::default(),
            dispatcher: DispatcherConfig::default(),
            raft: RaftConfig::default(),
        }
    }
}

/// Orchestration settings.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct OrchestrationConfig {
    /// Old tasks kept per slot (or per node for global services). Default 5.
    pub task_history_limit: u64,
}

impl Default for OrchestrationConfig {
    fn default() -> Self {
        OrchestrationConfig { task_history_limit: 5 }
    }
}

/// Heartbeat settings.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct DispatcherConfig {
    /// How often agents heartbeat. Default 5 s.
    pub heartbeat_period: SpecDuration,
    /// Missed periods before a node is declared down. Default 3.
    pub grace_periods: u32,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig { heartbeat_period: SpecDuration::from_secs(5), grace_periods: 3 }
    }
}

impl DispatcherConfig {
    /// How long a node may stay silent before it is down (saturating: a
    /// spec that skipped validation cannot make this overflow).
    pub fn grace(&self) -> std::time::Duration {
        self.heartbeat_period.to_std().saturating_mul(self.grace_periods.max(1))
    }
}

/// Raft settings. Timing defaults are etcd-like (100 ms heartbeat, 1 s
/// election timeout) rather than Swarm's 10 s, so failover is fast.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct RaftConfig {
    /// Log entries between snapshots. Default 10,000 (Swarm's).
    pub snapshot_interval: u64,
    /// Old snapshots kept. Default 0.
    pub keep_old_snapshots: u64,
    /// Entries kept after a snapshot for slow followers. Default 500.
    pub log_entries_for_slow_followers: u64,
    /// Length of one raft tick. Default 100 ms.
    pub tick: SpecDuration,
    /// Ticks between leader heartbeats. Default 1.
    pub heartbeat_tick: u32,
    /// Ticks before a follower starts an election. Default 10.
    pub election_tick: u32,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            snapshot_interval: 10_000,
            keep_old_snapshots: 0,
            log_entries_for_slow_followers: 500,
            tick: SpecDuration::from_millis(100),
            heartbeat_tick: 1,
            election_tick: 10,
        }
    }
}
