//! The control API over the network: what `docker service|node|secret`
//! (or `swarmctl`) calls on a manager, served on the node API listener
//! ([`crate::rpc`]) as the service `control`.
//!
//! - [`ControlService`] serves a [`Cluster`] to **managers and operators**
//!   (their certificates, OU `manager` or `operator`) and to clients of the
//!   manager's **local Unix socket**. A worker certificate is refused with
//!   [`Code::PermissionDenied`] naming the node and its role; a client
//!   without a certificate with [`Code::Unauthenticated`].
//! - [`RemoteCluster`] is the calling side: the same methods as
//!   [`Cluster`], with the same names and arguments, returning
//!   [`ControlError`]. It can hold several managers and moves on to the
//!   next one when a manager is unreachable; any manager serves every call
//!   (writes on a follower are forwarded to the raft leader by the store).
//! - An operator gets a certificate through the local socket:
//!   [`RemoteCluster::issue_operator_cert`] sends a CSR and a name and gets
//!   back a certificate signed by the manager's CA (OU `operator`, client
//!   authentication only). Only the local socket may ask: having a shell as
//!   the manager's user on the manager's host is the proof.
//!
//! Methods of the `control` service:
//!
//! | method | body | answer | who |
//! |--------|------|--------|-----|
//! | `call` | a [`ControlRequest`] | a [`ControlReply`] | managers, operators, local socket |
//! | `events` | [`EventsRequest`] | stream of [`EventsItem`]: `watching`, then [`ClusterEvent`]s | managers, operators, local socket |
//! | `issue_operator_cert` | [`IssueOperatorCert`] | [`OperatorCert`] | local socket only |
//!
//! A refusal of the service itself travels as a [`Fault`] of code
//! [`Code::Service`] whose detail is the [`ControlError`]; the client gives
//! back that very error.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use swarm_core::cluster::Cluster;
//! use swarm_core::model::ServiceSpec;
//! use swarm_core::store::MemStore;
//! use swarm_security::control::{ControlError, ControlService, RemoteCluster};
//! use swarm_security::rpc::{RpcServer, Router};
//!
//! let cluster = Cluster::new(Arc::new(MemStore::new()));
//! let dir = tempfile::tempdir()?;
//! let socket = dir.path().join("swarm.sock");
//! let router = Router::new().route("control", Arc::new(ControlService::new(cluster.clone(), None)));
//! let server = tokio::spawn({
//!     let socket = socket.clone();
//!     async move { RpcServer::serve_unix(&socket, Arc::new(router)).await }
//! });
//! # // serve_unix binds afresh; wait until it does.
//! # while tokio::net::UnixStream::connect(&socket).await.is_err() { tokio::task::yield_now().await; }
//!
//! let remote = RemoteCluster::unix(&socket);
//! remote.create_service(ServiceSpec::replicated("web", "nginx:1.27", 2)).await?;
//! remote.scale("web", 3).await?;
//! assert_eq!(cluster.inspect_service("web").await?.spec.mode.replicas, Some(3));
//! let err = remote.scale("nope", 1).await.unwrap_err();
//! assert!(matches!(err, ControlError::NotFound { .. }), "{err}");
//! server.abort();
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rustls::ClientConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use swarm_core::cluster::{Cluster, ClusterError, ClusterEvent, QuorumLoss, ServiceStatus, TaskFilter};
use swarm_core::id::{ConfigId, NetworkId, SecretId, ServiceId, VolumeId};
use swarm_core::model::{
    Availability, ClusterSpec, Config, Network, NetworkSpec, Node, NodeRole, ObjectKind, Revision, Secret, SecretBytes,
    Service, ServiceSpec, Task, Volume, VolumeSpec,
};
use swarm_core::state::{Change, State, Transaction, TxError};
use swarm_core::store::{Store, StoreError, Watch};
use swarm_core::validate::{FieldError, ValidationError};
use tokio::sync::mpsc;

use crate::ca::ClusterCa;
use crate::role::Role;
use crate::rpc::{self, Code, Fault, Handler, Peer, Reloadable, Reply, RpcClient, RpcError, RpcStream};

/// The service name the control API is routed under.
pub const SERVICE: &str = "control";

/// How long a manager has to start an event stream (it answers at once).
const EVENTS_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`RemoteCluster::modify_service`] reads and writes again when
/// the service changed in between.
const MODIFY_ATTEMPTS: usize = 10;

/// One call of the control API: a [`Cluster`] method and its arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum ControlRequest {
    /// [`Cluster::create_service`].
    CreateService {
        /// The new service.
        spec: ServiceSpec,
    },
    /// [`Cluster::update_service`].
    UpdateService {
        /// Service name or id.
        name: String,
        /// Its new spec.
        spec: ServiceSpec,
    },
    /// [`Cluster::modify_service`] over the network: replace the spec by
    /// `spec` only if it is still `base` (the spec the client read and
    /// changed); otherwise [`ControlError::Conflict`] and the client reads
    /// again.
    ModifyService {
        /// Service name or id.
        name: String,
        /// The spec the change was made on.
        base: ServiceSpec,
        /// The changed spec.
        spec: ServiceSpec,
    },
    /// [`Cluster::force_update`].
    ForceUpdate {
        /// Service name or id.
        name: String,
    },
    /// [`Cluster::scale`].
    Scale {
        /// Service name or id.
        name: String,
        /// The replica count.
        replicas: u64,
    },
    /// [`Cluster::rollback_service`].
    RollbackService {
        /// Service name or id.
        name: String,
    },
    /// [`Cluster::pause_update`].
    PauseUpdate {
        /// Service name or id.
        name: String,
    },
    /// [`Cluster::resume_update`].
    ResumeUpdate {
        /// Service name or id.
        name: String,
    },
    /// [`Cluster::remove_service`].
    RemoveService {
        /// Service name or id.
        name: String,
    },
    /// [`Cluster::inspect_service`].
    InspectService {
        /// Service name or id.
        name: String,
    },
    /// [`Cluster::list_services`].
    ListServices,
    /// [`Cluster::service_status`].
    ServiceStatus {
        /// Service name or id.
        name: String,
    },
    /// [`Cluster::list_services_with_status`].
    ListServicesWithStatus,
    /// [`Cluster::list_tasks`].
    ListTasks {
        /// Which tasks.
        #[serde(default)]
        filter: TaskFilter,
    },
    /// [`Cluster::inspect_task`].
    InspectTask {
        /// Task id.
        id: String,
    },
    /// [`Cluster::list_nodes`].
    ListNodes,
    /// [`Cluster::inspect_node`].
    InspectNode {
        /// Node id or hostname.
        name: String,
    },
    /// [`Cluster::set_node_availability`].
    SetNodeAvailability {
        /// Node id or hostname.
        name: String,
        /// Active, pause or drain.
        availability: Availability,
    },
    /// [`Cluster::set_node_label`].
    SetNodeLabel {
        /// Node id or hostname.
        name: String,
        /// Label key.
        key: String,
        /// Its value; `None` removes the label.
        value: Option<String>,
    },
    /// [`Cluster::set_node_role`].
    SetNodeRole {
        /// Node id or hostname.
        name: String,
        /// Manager or worker.
        role: NodeRole,
    },
    /// [`Cluster::remove_node`].
    RemoveNode {
        /// Node id or hostname.
        name: String,
        /// Remove even while it runs tasks.
        force: bool,
    },
    /// [`Cluster::create_secret`].
    CreateSecret {
        /// Secret name.
        name: String,
        /// The secret (base64 on the wire).
        data: SecretBytes,
    },
    /// [`Cluster::create_config`].
    CreateConfig {
        /// Config name.
        name: String,
        /// The content (base64 on the wire).
        data: SecretBytes,
    },
    /// [`Cluster::create_network`].
    CreateNetwork {
        /// The network.
        spec: NetworkSpec,
    },
    /// [`Cluster::create_volume`].
    CreateVolume {
        /// The volume.
        spec: VolumeSpec,
    },
    /// [`Cluster::remove_object`].
    RemoveObject {
        /// Secret, config, network or volume.
        kind: ObjectKind,
        /// Its name.
        name: String,
    },
    /// Every secret, *without its data* (as `docker secret ls|inspect`).
    ListSecrets,
    /// Every config.
    ListConfigs,
    /// Every network.
    ListNetworks,
    /// Every volume.
    ListVolumes,
    /// [`Cluster::set_cluster_spec`].
    SetClusterSpec {
        /// The cluster settings.
        spec: ClusterSpec,
    },
    /// The cluster settings (the defaults when none were set).
    InspectClusterSpec,
}

impl ControlRequest {
    /// The operation's name, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            ControlRequest::CreateService { .. } => "create_service",
            ControlRequest::UpdateService { .. } => "update_service",
            ControlRequest::ModifyService { .. } => "modify_service",
            ControlRequest::ForceUpdate { .. } => "force_update",
            ControlRequest::Scale { .. } => "scale",
            ControlRequest::RollbackService { .. } => "rollback_service",
            ControlRequest::PauseUpdate { .. } => "pause_update",
            ControlRequest::ResumeUpdate { .. } => "resume_update",
            ControlRequest::RemoveService { .. } => "remove_service",
            ControlRequest::InspectService { .. } => "inspect_service",
            ControlRequest::ListServices => "list_services",
            ControlRequest::ServiceStatus { .. } => "service_status",
            ControlRequest::ListServicesWithStatus => "list_services_with_status",
            ControlRequest::ListTasks { .. } => "list_tasks",
            ControlRequest::InspectTask { .. } => "inspect_task",
            ControlRequest::ListNodes => "list_nodes",
            ControlRequest::InspectNode { .. } => "inspect_node",
            ControlRequest::SetNodeAvailability { .. } => "set_node_availability",
            ControlRequest::SetNodeLabel { .. } => "set_node_label",
            ControlRequest::SetNodeRole { .. } => "set_node_role",
            ControlRequest::RemoveNode { .. } => "remove_node",
            ControlRequest::CreateSecret { .. } => "create_secret",
            ControlRequest::CreateConfig { .. } => "create_config",
            ControlRequest::CreateNetwork { .. } => "create_network",
            ControlRequest::CreateVolume { .. } => "create_volume",
            ControlRequest::RemoveObject { .. } => "remove_object",
            ControlRequest::ListSecrets => "list_secrets",
            ControlRequest::ListConfigs => "list_configs",
            ControlRequest::ListNetworks => "list_networks",
            ControlRequest::ListVolumes => "list_volumes",
            ControlRequest::SetClusterSpec { .. } => "set_cluster_spec",
            ControlRequest::InspectClusterSpec => "inspect_cluster_spec",
        }
    }

    /// True for the calls that only read.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            ControlRequest::InspectService { .. }
                | ControlRequest::ListServices
                | ControlRequest::ServiceStatus { .. }
                | ControlRequest::ListServicesWithStatus
                | ControlRequest::ListTasks { .. }
                | ControlRequest::InspectTask { .. }
                | ControlRequest::ListNodes
                | ControlRequest::InspectNode { .. }
                | ControlRequest::ListSecrets
                | ControlRequest::ListConfigs
                | ControlRequest::ListNetworks
                | ControlRequest::ListVolumes
                | ControlRequest::InspectClusterSpec
        )
    }
}

/// The answer to a [`ControlRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum ControlReply {
    /// The call changed what it should; nothing to return.
    Done,
    /// The id of a new service.
    ServiceId(ServiceId),
    /// The id of a new secret.
    SecretId(SecretId),
    /// The id of a new config.
    ConfigId(ConfigId),
    /// The id of a new network.
    NetworkId(NetworkId),
    /// The id of a new volume.
    VolumeId(VolumeId),
    /// One service.
    Service(Service),
    /// Services.
    Services(Vec<Service>),
    /// A service's task counts.
    ServiceStatus(ServiceStatus),
    /// Services with their task counts.
    ServicesWithStatus(Vec<(Service, ServiceStatus)>),
    /// One task.
    Task(Task),
    /// Tasks.
    Tasks(Vec<Task>),
    /// One node.
    Node(Node),
    /// Nodes.
    Nodes(Vec<Node>),
    /// Secrets, their data left out.
    Secrets(Vec<Secret>),
    /// Configs.
    Configs(Vec<Config>),
    /// Networks.
    Networks(Vec<Network>),
    /// Volumes.
    Volumes(Vec<Volume>),
    /// The cluster settings.
    ClusterSpec(ClusterSpec),
    /// A read answered from the manager's local replica because no quorum
    /// was reachable for a linearizable read: the last state this manager
    /// applied, which may miss writes committed elsewhere.
    /// [`RemoteCluster`]'s methods unwrap it and remember the reason
    /// ([`RemoteCluster::take_stale_read`]).
    Stale {
        /// Why the linearizable read failed (the store's no-quorum reason).
        reason: String,
        /// The revision of the local replica that answered.
        revision: Revision,
        /// The answer, from that replica.
        reply: Box<ControlReply>,
    },
}

impl ControlReply {
    fn kind(&self) -> &'static str {
        match self {
            ControlReply::Done => "done",
            ControlReply::ServiceId(_) => "service_id",
            ControlReply::SecretId(_) => "secret_id",
            ControlReply::ConfigId(_) => "config_id",
            ControlReply::NetworkId(_) => "network_id",
            ControlReply::VolumeId(_) => "volume_id",
            ControlReply::Service(_) => "service",
            ControlReply::Services(_) => "services",
            ControlReply::ServiceStatus(_) => "service_status",
            ControlReply::ServicesWithStatus(_) => "services_with_status",
            ControlReply::Task(_) => "task",
            ControlReply::Tasks(_) => "tasks",
            ControlReply::Node(_) => "node",
            ControlReply::Nodes(_) => "nodes",
            ControlReply::Secrets(_) => "secrets",
            ControlReply::Configs(_) => "configs",
            ControlReply::Networks(_) => "networks",
            ControlReply::Volumes(_) => "volumes",
            ControlReply::ClusterSpec(_) => "cluster_spec",
            ControlReply::Stale { .. } => "stale",
        }
    }
}

/// The body of the `events` method.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsRequest {
    /// Events after this revision; `None`: from now on.
    #[serde(default)]
    pub from: Option<Revision>,
}

/// An item of the `events` stream. The first is always
/// [`EventsItem::Watching`], sent as soon as the manager watches the store,
/// so that a refusal or a bad revision is reported at once and the caller
/// knows from when it sees every change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum EventsItem {
    /// The manager watches: every change after this revision follows.
    Watching {
        /// The revision the watch starts after.
        from: Revision,
    },
    /// One event.
    Event(ClusterEvent),
}

/// The body of the `issue_operator_cert` method.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueOperatorCert {
    /// The operator's name: the certificate's CN (1 to 64 characters of
    /// `[A-Za-z0-9._-]`).
    pub name: String,
    /// The operator's certificate request in PEM ([`crate::ca::NodeCsr`]);
    /// only its public key is used.
    pub csr_pem: String,
    /// Lifetime in seconds; `None`: the CA's default (90 days).
    #[serde(default)]
    pub lifetime_secs: Option<u64>,
}

/// An operator certificate, and the CA certificate to trust.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorCert {
    /// The operator's certificate (PEM): CN = name, OU = `operator`, O =
    /// cluster id; during a CA rotation followed by the new root
    /// cross-signed by the old one.
    pub cert_pem: String,
    /// The cluster's root CA certificates (PEM): two during a rotation.
    pub ca_cert_pem: String,
}

/// One problem with one field of a spec, as [`FieldError`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidField {
    /// Path to the field, e.g. `task_template.container.image`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn list_fields(errors: &[InvalidField]) -> String {
    errors.iter().map(|e| format!("{}: {}", e.field, e.reason)).collect::<Vec<_>>().join("; ")
}

/// Why a control call failed: [`ClusterError`]'s cases as they cross the
/// wire, and what can go wrong on the way ([`ControlError::Denied`],
/// [`ControlError::Transport`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum ControlError {
    /// No such object ([`ClusterError::NotFound`]).
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Kind.
        kind: ObjectKind,
        /// Name or id asked for.
        name: String,
    },
    /// The spec is invalid ([`ClusterError::Invalid`]); nothing changed.
    #[error("invalid {subject}: {}", list_fields(errors))]
    Invalid {
        /// What was validated, e.g. `service "web"`.
        subject: String,
        /// The problems, in field order.
        errors: Vec<InvalidField>,
    },
    /// The node still runs tasks ([`ClusterError::NodeHasTasks`]).
    #[error("node {node} still runs {tasks} task(s): drain it first or force the removal")]
    NodeHasTasks {
        /// The node.
        node: String,
        /// Tasks not yet stopped.
        tasks: u64,
    },
    /// A manager must be demoted before it is removed
    /// ([`ClusterError::NodeIsManager`]).
    #[error("node {node} is a manager (raft id {raft_id}): demote it to a worker before removing it")]
    NodeIsManager {
        /// The node.
        node: String,
        /// Its raft id.
        raft_id: u64,
    },
    /// Demoting the manager would leave the raft group without a
    /// reachable quorum ([`ClusterError::WouldLoseQuorum`]); nothing
    /// changed.
    #[error("{0}")]
    WouldLoseQuorum(QuorumLoss),
    /// No previous spec to roll back to ([`ClusterError::NoPreviousSpec`]).
    #[error("service {service:?} has no previous spec to roll back to")]
    NoPreviousSpec {
        /// The service.
        service: String,
    },
    /// The operation does not apply to this service
    /// ([`ClusterError::NotApplicable`]).
    #[error("service {service:?}: {reason}")]
    NotApplicable {
        /// The service.
        service: String,
        /// Why.
        reason: String,
    },
    /// A concurrent write won and the call gave up (a store version
    /// conflict, or a service changed during a remote `modify_service`).
    #[error("conflicting write: {message}")]
    Conflict {
        /// What conflicted.
        message: String,
    },
    /// No quorum of managers is reachable.
    #[error("no quorum: {message}")]
    NoQuorum {
        /// The store's reason.
        message: String,
    },
    /// The store cannot serve now (shutting down, not a member, ...).
    #[error("store unavailable: {message}")]
    Unavailable {
        /// The store's reason.
        message: String,
    },
    /// The write may or may not have been committed (the leader was lost
    /// after proposing it): read before trying again.
    #[error("commit outcome unknown: {message}")]
    Indeterminate {
        /// The store's reason.
        message: String,
    },
    /// Any other refusal of the store (a name in use, an object in use, a
    /// compacted revision, ...), in the store's words.
    #[error("{message}")]
    Store {
        /// The store's message.
        message: String,
    },
    /// The manager could not issue a certificate (it holds no CA key, the
    /// name or the request is not acceptable).
    #[error("cannot issue the certificate: {message}")]
    Certificate {
        /// Why.
        message: String,
    },
    /// The caller may not make this call: no certificate, a certificate of
    /// the wrong role, a call open only to the local socket, or a
    /// certificate the manager refused during the TLS handshake.
    #[error("permission denied: {message}")]
    Denied {
        /// The manager's (or the handshake's) reason.
        message: String,
    },
    /// No manager could be reached, the connection broke, no answer came
    /// in time, or the answer could not be read.
    #[error("{message}")]
    Transport {
        /// What failed, naming the manager.
        message: String,
    },
}

impl ControlError {
    /// True when this is an [`ControlError::Invalid`] with a problem in
    /// `field`.
    pub fn has_field(&self, field: &str) -> bool {
        matches!(self, ControlError::Invalid { errors, .. } if errors.iter().any(|e| e.field == field))
    }

    fn unexpected(method: &str, reply: &ControlReply) -> Self {
        ControlError::Transport { message: format!("{method}: unexpected answer of kind {}", reply.kind()) }
    }

    fn fault(&self) -> Fault {
        match self {
            ControlError::Denied { message } => Fault::new(Code::PermissionDenied, message.clone()),
            other => Fault::service(other.to_string(), other),
        }
    }
}

impl From<ValidationError> for ControlError {
    fn from(v: ValidationError) -> Self {
        ControlError::Invalid {
            subject: v.subject,
            errors: v.errors.into_iter().map(|e| InvalidField { field: e.field, reason: e.reason }).collect(),
        }
    }
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        if e.is_conflict() {
            return ControlError::Conflict { message: e.to_string() };
        }
        match e {
            StoreError::Rejected(TxError::Invalid(v)) => v.into(),
            StoreError::Rejected(TxError::NotFound { kind, id }) => ControlError::NotFound { kind, name: id },
            StoreError::NoQuorum(message) => ControlError::NoQuorum { message },
            StoreError::Unavailable(message) => ControlError::Unavailable { message },
            StoreError::Indeterminate(message) => ControlError::Indeterminate { message },
            other => ControlError::Store { message: other.to_string() },
        }
    }
}

impl From<ClusterError> for ControlError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::NotFound { kind, name } => ControlError::NotFound { kind, name },
            ClusterError::Invalid(v) => v.into(),
            ClusterError::NodeHasTasks { node, tasks } => {
                ControlError::NodeHasTasks { node, tasks: u64::try_from(tasks).unwrap_or(u64::MAX) }
            }
            ClusterError::NodeIsManager { node, raft_id } => ControlError::NodeIsManager { node, raft_id },
            ClusterError::WouldLoseQuorum(loss) => ControlError::WouldLoseQuorum(loss),
            ClusterError::NoPreviousSpec(service) => ControlError::NoPreviousSpec { service },
            ClusterError::NotApplicable { service, reason } => ControlError::NotApplicable { service, reason },
            ClusterError::Store(s) => s.into(),
        }
    }
}

/// The way back, for callers that handle [`ClusterError`] whether the
/// cluster is embedded or remote: the cases that mirror a
/// [`ClusterError`] become it; the others ([`ControlError::Conflict`],
/// [`ControlError::Store`], [`ControlError::Certificate`],
/// [`ControlError::Denied`], [`ControlError::Transport`]) have no
/// faithful counterpart and are given back unchanged.
impl TryFrom<ControlError> for ClusterError {
    type Error = ControlError;

    fn try_from(e: ControlError) -> Result<Self, ControlError> {
        Ok(match e {
            ControlError::NotFound { kind, name } => ClusterError::NotFound { kind, name },
            ControlError::Invalid { subject, errors } => ClusterError::Invalid(ValidationError {
                subject,
                errors: errors.into_iter().map(|e| FieldError { field: e.field, reason: e.reason }).collect(),
            }),
            ControlError::NodeHasTasks { node, tasks } => {
                ClusterError::NodeHasTasks { node, tasks: usize::try_from(tasks).unwrap_or(usize::MAX) }
            }
            ControlError::NodeIsManager { node, raft_id } => ClusterError::NodeIsManager { node, raft_id },
            ControlError::WouldLoseQuorum(loss) => ClusterError::WouldLoseQuorum(loss),
            ControlError::NoPreviousSpec { service } => ClusterError::NoPreviousSpec(service),
            ControlError::NotApplicable { service, reason } => ClusterError::NotApplicable { service, reason },
            ControlError::NoQuorum { message } => ClusterError::Store(StoreError::NoQuorum(message)),
            ControlError::Unavailable { message } => ClusterError::Store(StoreError::Unavailable(message)),
            ControlError::Indeterminate { message } => ClusterError::Store(StoreError::Indeterminate(message)),
            other => return Err(other),
        })
    }
}

impl From<RpcError> for ControlError {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::Fault { fault, addr, method } => {
                if let Some(err) = fault.detail_as::<ControlError>() {
                    return err;
                }
                match fault.code {
                    Code::Unauthenticated | Code::PermissionDenied => ControlError::Denied { message: fault.message },
                    Code::Unavailable => ControlError::Unavailable { message: fault.message },
                    _ => ControlError::Transport { message: format!("{method} refused by {addr}: {fault}") },
                }
            }
            e @ RpcError::Handshake { .. } => ControlError::Denied { message: e.to_string() },
            other => ControlError::Transport { message: other.to_string() },
        }
    }
}

/// A store's local replica frozen at one state, for reads only: what
/// [`ControlService::execute`] reads from when no quorum is reachable.
struct LocalReplica {
    state: Arc<State>,
    store: Arc<dyn Store>,
}

#[async_trait]
impl Store for LocalReplica {
    async fn commit(&self, _tx: Transaction) -> Result<Arc<Change>, StoreError> {
        Err(StoreError::Unavailable("the local replica answers reads only".into()))
    }

    async fn snapshot(&self) -> Result<Arc<State>, StoreError> {
        Ok(self.state.clone())
    }

    async fn watch(&self, from: Revision) -> Result<Watch, StoreError> {
        self.store.watch(from).await
    }
}

/// The control API's [`Handler`]: serves a [`Cluster`] to managers,
/// operators and the local socket. See the [module docs](self).
pub struct ControlService {
    cluster: Cluster,
    ca: CaSource,
}

/// Where [`ControlService`] finds the CA that signs operator certificates.
#[derive(Clone)]
enum CaSource {
    None,
    Fixed(Arc<ClusterCa>),
    /// The CA in the replicated store ([`crate::castore`]), read at each
    /// request: any manager of a cluster whose CA key is in the store.
    Store,
}

impl std::fmt::Debug for ControlService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ca = match self.ca {
            CaSource::None => "none",
            CaSource::Fixed(_) => "fixed",
            CaSource::Store => "store",
        };
        f.debug_struct("ControlService").field("ca", &ca).finish()
    }
}

/// The roles whose certificates may call the control API.
const ALLOWED: [Role; 2] = [Role::Manager, Role::Operator];

fn who(peer: &Peer) -> String {
    match (&peer.identity, peer.local) {
        (_, true) => "the local socket".to_owned(),
        (Some(id), false) => format!("{} {}", id.role, id.node_id),
        (None, false) => match peer.addr {
            Some(a) => format!("an anonymous client at {a}"),
            None => "an anonymous client".to_owned(),
        },
    }
}

impl ControlService {
    /// Serves `cluster`. With `ca`, the local socket may also have
    /// operator certificates issued ([`RemoteCluster::issue_operator_cert`]);
    /// without, such calls are refused (this manager holds no CA key).
    pub fn new(cluster: Cluster, ca: Option<Arc<ClusterCa>>) -> Self {
        ControlService { cluster, ca: ca.map_or(CaSource::None, CaSource::Fixed) }
    }

    /// Serves `cluster`, issuing operator certificates with the CA kept in
    /// the cluster's store ([`crate::castore`]), as every manager of a
    /// networked cluster can.
    pub fn with_ca_from_store(cluster: Cluster) -> Self {
        ControlService { cluster, ca: CaSource::Store }
    }

    /// The cluster served.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Whether `peer` may use the control API at all.
    fn admit(peer: &Peer, what: &str) -> Result<(), Fault> {
        if peer.local {
            return Ok(());
        }
        peer.require(&ALLOWED, what).map(|_| ()).inspect_err(|f| {
            tracing::warn!(peer = %who(peer), reason = %f.message, "control API: call refused");
        })
    }

    /// Runs one request on the cluster, in process. No authorization
    /// here: the caller is trusted (the handler checks the peer first).
    ///
    /// A read that fails for want of a quorum ([`ControlError::NoQuorum`])
    /// is answered from the store's local replica
    /// ([`Store::local_snapshot`]) as a [`ControlReply::Stale`], so the
    /// last state stays visible while writes cannot be made.
    pub async fn execute(&self, req: ControlRequest) -> Result<ControlReply, ControlError> {
        let fallback = req.is_read().then(|| req.clone());
        match Self::execute_on(&self.cluster, req).await {
            Err(ControlError::NoQuorum { message }) => {
                let local = self.cluster.store().local_snapshot();
                let (Some(req), Some(state)) = (fallback, local) else {
                    return Err(ControlError::NoQuorum { message });
                };
                let revision = state.revision();
                tracing::warn!(op = req.op(), %revision, reason = %message, "control API: no quorum, answering a read from the local replica");
                let local = Cluster::new(Arc::new(LocalReplica { state, store: self.cluster.store().clone() }));
                let reply = Self::execute_on(&local, req).await?;
                Ok(ControlReply::Stale { reason: message, revision, reply: Box::new(reply) })
            }
            other => other,
        }
    }

    async fn execute_on(c: &Cluster, req: ControlRequest) -> Result<ControlReply, ControlError> {
        let done = |r: Result<(), ClusterError>| r.map(|()| ControlReply::Done).map_err(ControlError::from);
        match req {
            ControlRequest::CreateService { spec } => Ok(ControlReply::ServiceId(c.create_service(spec).await?)),
            ControlRequest::UpdateService { name, spec } => done(c.update_service(&name, spec).await),
            ControlRequest::ModifyService { name, base, spec } => {
                if c.inspect_service(&name).await?.spec != base {
                    return Err(ControlError::Conflict {
                        message: format!("service {name:?} changed since it was read"),
                    });
                }
                let mut stale = false;
                c.modify_service(&name, |current| {
                    stale = *current != base;
                    if !stale {
                        *current = spec.clone();
                    }
                })
                .await?;
                if stale {
                    return Err(ControlError::Conflict {
                        message: format!("service {name:?} changed since it was read"),
                    });
                }
                Ok(ControlReply::Done)
            }
            ControlRequest::ForceUpdate { name } => done(c.force_update(&name).await),
            ControlRequest::Scale { name, replicas } => done(c.scale(&name, replicas).await),
            ControlRequest::RollbackService { name } => done(c.rollback_service(&name).await),
            ControlRequest::PauseUpdate { name } => done(c.pause_update(&name).await),
            ControlRequest::ResumeUpdate { name } => done(c.resume_update(&name).await),
            ControlRequest::RemoveService { name } => done(c.remove_service(&name).await),
            ControlRequest::InspectService { name } => Ok(ControlReply::Service(c.inspect_service(&name).await?)),
            ControlRequest::ListServices => Ok(ControlReply::Services(c.list_services().await?)),
            ControlRequest::ServiceStatus { name } => Ok(ControlReply::ServiceStatus(c.service_status(&name).await?)),
            ControlRequest::ListServicesWithStatus => {
                Ok(ControlReply::ServicesWithStatus(c.list_services_with_status().await?))
            }
            ControlRequest::ListTasks { filter } => Ok(ControlReply::Tasks(c.list_tasks(filter).await?)),
            ControlRequest::InspectTask { id } => Ok(ControlReply::Task(c.inspect_task(&id).await?)),
            ControlRequest::ListNodes => Ok(ControlReply::Nodes(c.list_nodes().await?)),
            ControlRequest::InspectNode { name } => Ok(ControlReply::Node(c.inspect_node(&name).await?)),
            ControlRequest::SetNodeAvailability { name, availability } => {
                done(c.set_node_availability(&name, availability).await)
            }
            ControlRequest::SetNodeLabel { name, key, value } => {
                done(c.set_node_label(&name, &key, value.as_deref()).await)
            }
            ControlRequest::SetNodeRole { name, role } => done(c.set_node_role(&name, role).await),
            ControlRequest::RemoveNode { name, force } => {
                Self::remove_node_on(c, &name, force).await?;
                Ok(ControlReply::Done)
            }
            ControlRequest::CreateSecret { name, data } => {
                Ok(ControlReply::SecretId(c.create_secret(&name, data.0).await?))
            }
            ControlRequest::CreateConfig { name, data } => {
                Ok(ControlReply::ConfigId(c.create_config(&name, data.0).await?))
            }
            ControlRequest::CreateNetwork { spec } => Ok(ControlReply::NetworkId(c.create_network(spec).await?)),
            ControlRequest::CreateVolume { spec } => Ok(ControlReply::VolumeId(c.create_volume(spec).await?)),
            ControlRequest::RemoveObject { kind, name } => done(c.remove_object(kind, &name).await),
            ControlRequest::ListSecrets => {
                let state = c.store().snapshot().await?;
                Ok(ControlReply::Secrets(
                    state
                        .secrets()
                        .map(|s| {
                            let mut s = s.as_ref().clone();
                            s.spec.data = SecretBytes::default();
                            s
                        })
                        .collect(),
                ))
            }
            ControlRequest::ListConfigs => {
                let state = c.store().snapshot().await?;
                Ok(ControlReply::Configs(state.configs().map(|o| o.as_ref().clone()).collect()))
            }
            ControlRequest::ListNetworks => {
                let state = c.store().snapshot().await?;
                // An encrypted network's keys go only to the nodes on it
                // (in their overlay views), never to control clients.
                Ok(ControlReply::Networks(
                    state
                        .networks()
                        .map(|o| {
                            let mut n = o.as_ref().clone();
                            n.keys.clear();
                            n
                        })
                        .collect(),
                ))
            }
            ControlRequest::ListVolumes => {
                let state = c.store().snapshot().await?;
                Ok(ControlReply::Volumes(state.volumes().map(|o| o.as_ref().clone()).collect()))
            }
            ControlRequest::SetClusterSpec { spec } => done(c.set_cluster_spec(spec).await),
            ControlRequest::InspectClusterSpec => {
                Ok(ControlReply::ClusterSpec(c.store().snapshot().await?.cluster_spec()))
            }
        }
    }

    /// [`Cluster::remove_node`], then, when the cluster has a security
    /// plane (a CA in the store), the node's id on the deny-list
    /// ([`crate::castore::record_removed_node`]): its certificate is
    /// refused from then on and never renewed. A cluster without one (an
    /// in-process cluster) only loses the Node object.
    async fn remove_node_on(c: &Cluster, name: &str, force: bool) -> Result<(), ControlError> {
        let id = c.inspect_node(name).await?.id.to_string();
        c.remove_node(name, force).await?;
        let state = c.store().snapshot().await?;
        if crate::castore::ca_cert_pem(&state).is_err() {
            return Ok(());
        }
        crate::castore::record_removed_node(c.store().as_ref(), &id).await.map_err(|e| {
            tracing::error!(node_id = %id, error = %e, "node removed but not put on the deny-list");
            ControlError::Unavailable {
                message: format!("node {id} was removed but its certificate could not be put on the deny-list: {e}"),
            }
        })?;
        tracing::info!(node_id = %id, "control API: node removed and its certificate revoked");
        Ok(())
    }

    async fn events(&self, from: Option<Revision>) -> Result<Reply, ControlError> {
        let from = match from {
            Some(rev) => rev,
            None => self.cluster.store().snapshot().await?.revision(),
        };
        let mut stream = self.cluster.events_since(from).await?;
        let (tx, rx) = mpsc::channel::<Result<rpc::Body, Fault>>(64);
        let watching = serde_json::value::to_raw_value(&EventsItem::Watching { from })
            .map_err(|e| ControlError::Transport { message: format!("cannot encode the stream's start: {e}") })?;
        // The channel is new and has room: this cannot fail.
        let _ = tx.try_send(Ok(watching));
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    () = tx.closed() => return,
                    next = stream.next() => next,
                };
                let item = match next {
                    Ok(ev) => serde_json::value::to_raw_value(&EventsItem::Event(ev))
                        .map_err(|e| Fault::new(Code::Service, format!("cannot encode an event: {e}"))),
                    Err(e) => Err(ControlError::from(e).fault()),
                };
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Reply::Stream(rx))
    }

    async fn issue(&self, req: IssueOperatorCert) -> Result<OperatorCert, ControlError> {
        let mut roots = None;
        let ca = match &self.ca {
            CaSource::Fixed(ca) => ca.clone(),
            CaSource::Store => {
                // During a CA rotation: the new root signs, and the
                // operator trusts both roots.
                let state = self.cluster.store().snapshot().await?;
                if crate::castore::is_revoked_operator(&state, &req.name) {
                    return Err(ControlError::Certificate {
                        message: format!(
                            "the certificates of operator {} were revoked; a revoked name is not issued again",
                            req.name
                        ),
                    });
                }
                let unusable = |e: crate::castore::CaStoreError| ControlError::Certificate {
                    message: format!("the cluster's CA is not usable from the store: {e}"),
                };
                if let Some(external) = crate::castore::external_signer(&state).map_err(unusable)? {
                    let cluster_id = crate::castore::cluster_id(&state).map_err(unusable)?;
                    let cert_pem = external
                        .sign(&req.csr_pem, &req.name, Role::Operator, &cluster_id)
                        .await
                        .map_err(|e| ControlError::Certificate { message: e.to_string() })?;
                    tracing::info!(operator = %req.name, "control API: the external CA issued an operator certificate");
                    let ca_cert_pem = crate::rotation::trust_bundle_pem(&state).map_err(unusable)?;
                    return Ok(OperatorCert { cert_pem, ca_cert_pem });
                }
                roots = Some(crate::rotation::trust_bundle_pem(&state).map_err(unusable)?);
                Arc::new(crate::rotation::signing_ca(&state).map_err(unusable)?)
            }
            CaSource::None => {
                return Err(ControlError::Certificate {
                    message: "this manager holds no CA key (an external CA, or a manager that is not the CA signer)"
                        .into(),
                });
            }
        };
        let lifetime = req.lifetime_secs.map(Duration::from_secs);
        let issued = ca
            .sign_node_csr(&req.csr_pem, &req.name, Role::Operator, lifetime, SystemTime::now())
            .map_err(|e| ControlError::Certificate { message: e.to_string() })?;
        tracing::info!(operator = %req.name, "control API: issued an operator certificate to the local socket");
        let ca_cert_pem = roots.unwrap_or_else(|| ca.cert_pem().to_owned());
        Ok(OperatorCert { cert_pem: issued.chain_pem().to_owned(), ca_cert_pem })
    }
}

#[async_trait]
impl Handler for ControlService {
    async fn call(&self, peer: &Peer, method: &str, body: rpc::Body) -> Result<Reply, Fault> {
        match method {
            "call" => {
                Self::admit(peer, "the control API")?;
                let req: ControlRequest = rpc::body("control.call", body)?;
                let op = req.op();
                if req.is_read() {
                    tracing::debug!(peer = %who(peer), op, "control API call");
                } else {
                    tracing::info!(peer = %who(peer), op, "control API call");
                }
                match self.execute(req).await {
                    Ok(reply) => Reply::unary(&reply),
                    Err(e) => {
                        tracing::debug!(peer = %who(peer), op, error = %e, "control API call failed");
                        Err(e.fault())
                    }
                }
            }
            "events" => {
                Self::admit(peer, "the control API")?;
                let req: EventsRequest = rpc::body("control.events", body)?;
                self.events(req.from).await.map_err(|e| e.fault())
            }
            "issue_operator_cert" => {
                if !peer.local {
                    tracing::warn!(peer = %who(peer), "control API: refused to issue an operator certificate over the network");
                    return Err(Fault::new(
                        Code::PermissionDenied,
                        format!(
                            "issue_operator_cert is open to the manager's local socket only; {} called over the network",
                            who(peer)
                        ),
                    ));
                }
                let req: IssueOperatorCert = rpc::body("control.issue_operator_cert", body)?;
                let cert = self.issue(req).await.map_err(|e| e.fault())?;
                Reply::unary(&cert)
            }
            other => Err(Fault::new(Code::UnknownMethod, format!("the control service has no method {other:?}"))),
        }
    }
}

/// A stream of cluster events from a manager ([`RemoteCluster::events`]).
pub struct RemoteEventStream {
    inner: RpcStream<EventsItem>,
    from: Revision,
    last: Option<Revision>,
}

impl std::fmt::Debug for RemoteEventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEventStream").field("last", &self.last).finish()
    }
}

impl RemoteEventStream {
    /// The next event. The manager ending the stream (it shut down, or the
    /// connection broke) is a [`ControlError::Transport`]: resume with
    /// [`RemoteCluster::events_since`] from [`RemoteEventStream::last_revision`].
    pub async fn next(&mut self) -> Result<ClusterEvent, ControlError> {
        loop {
            match self.inner.next().await? {
                Some(EventsItem::Event(ev)) => {
                    self.last = Some(ev.revision);
                    return Ok(ev);
                }
                Some(EventsItem::Watching { .. }) => continue,
                None => return Err(ControlError::Transport { message: "the manager ended the event stream".into() }),
            }
        }
    }

    /// The revision the stream started after: every change after it is
    /// delivered.
    pub fn from_revision(&self) -> Revision {
        self.from
    }

    /// The revision of the last event returned, if any.
    pub fn last_revision(&self) -> Option<Revision> {
        self.last
    }
}

/// A [`Cluster`] on the other side of the network: the same methods,
/// served by a manager's [`ControlService`]. See the [module docs](self).
///
/// With several managers, a call that cannot reach one (no connection,
/// a broken connection, no answer in time: [`RpcError::is_unreachable`])
/// is sent to the next, and the one that answered is used first from
/// then on. A write whose connection broke after it was sent may have been
/// applied by the first manager; sending it again then fails the way a
/// repeated call would (e.g. a service name already in use).
#[derive(Debug)]
pub struct RemoteCluster {
    managers: Vec<RpcClient>,
    current: AtomicUsize,
    stale: std::sync::Mutex<Option<String>>,
}

macro_rules! expect_reply {
    ($method:expr, $reply:expr, $pat:pat => $out:expr) => {
        match $reply {
            $pat => Ok($out),
            other => Err(ControlError::unexpected($method, &other)),
        }
    };
}

impl RemoteCluster {
    /// A client of one manager (TLS with a manager or operator certificate,
    /// or the local socket).
    pub fn new(client: RpcClient) -> Self {
        RemoteCluster { managers: vec![client], current: AtomicUsize::new(0), stale: Default::default() }
    }

    /// A client of several managers, tried in order when one is
    /// unreachable. [`ControlError::Transport`] if `clients` is empty.
    pub fn with_failover(clients: Vec<RpcClient>) -> Result<Self, ControlError> {
        if clients.is_empty() {
            return Err(ControlError::Transport { message: "no manager address given".into() });
        }
        Ok(RemoteCluster { managers: clients, current: AtomicUsize::new(0), stale: Default::default() })
    }

    /// A client of the managers at `addrs` over TLS, presenting the
    /// certificate in `tls` ([`crate::tls::client_config`]) and accepting
    /// only manager certificates (server name `swarm-manager`).
    pub fn connect(addrs: &[SocketAddr], tls: Arc<Reloadable<ClientConfig>>) -> Result<Self, ControlError> {
        let mut clients = Vec::with_capacity(addrs.len());
        for addr in addrs {
            clients.push(RpcClient::new(*addr, Role::Manager.server_name(), tls.clone())?);
        }
        Self::with_failover(clients)
    }

    /// A client of a manager's local Unix socket.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self::new(RpcClient::unix(path))
    }

    /// The managers' addresses, in the order they are tried.
    pub fn managers(&self) -> Vec<String> {
        self.managers.iter().map(|c| c.addr().to_owned()).collect()
    }

    /// Runs `f` on each manager in turn, from the last one that answered,
    /// while they are unreachable.
    async fn on_any<'a, T, F, Fut>(&'a self, f: F) -> Result<T, ControlError>
    where
        F: Fn(&'a RpcClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, RpcError>>,
    {
        let n = self.managers.len();
        let start = self.current.load(Ordering::Relaxed) % n.max(1);
        let mut last = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let client = &self.managers[idx];
            match f(client).await {
                Ok(v) => {
                    if idx != start {
                        self.current.store(idx, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Err(e) if e.is_unreachable() => {
                    tracing::warn!(manager = %client.addr(), error = %e, "control API: manager unreachable");
                    last = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(match last {
            Some(e) if n == 1 => e.into(),
            Some(e) => ControlError::Transport { message: format!("no manager of {n} reachable; last: {e}") },
            None => ControlError::Transport { message: "no manager address given".into() },
        })
    }

    async fn unary<Q: Serialize + Sync, R: DeserializeOwned>(&self, method: &str, req: &Q) -> Result<R, ControlError> {
        self.on_any(|c| c.call::<Q, R>(method, req)).await
    }

    /// Sends one request and returns the answer, whatever its kind.
    pub async fn request(&self, req: &ControlRequest) -> Result<ControlReply, ControlError> {
        self.unary("control.call", req).await
    }

    /// Sends one request; a [`ControlReply::Stale`] answer is unwrapped
    /// and its reason kept for [`RemoteCluster::take_stale_read`].
    async fn answer(&self, req: &ControlRequest) -> Result<ControlReply, ControlError> {
        match self.request(req).await? {
            ControlReply::Stale { reason, revision, reply } => {
                tracing::warn!(op = req.op(), %revision, %reason, "control API: stale read (no quorum)");
                *self.stale.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("{reason} (local replica at revision {revision})"));
                Ok(*reply)
            }
            reply => Ok(reply),
        }
    }

    /// Whether an answer since the last call came from a manager's local
    /// replica because no quorum was reachable ([`ControlReply::Stale`]):
    /// the reason, or `None` when every read was linearizable. Taking it
    /// clears it.
    pub fn take_stale_read(&self) -> Option<String> {
        self.stale.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    async fn done(&self, req: ControlRequest) -> Result<(), ControlError> {
        let op = req.op();
        expect_reply!(op, self.answer(&req).await?, ControlReply::Done => ())
    }

    /// Creates a service; returns its id.
    pub async fn create_service(&self, spec: ServiceSpec) -> Result<ServiceId, ControlError> {
        let r = self.answer(&ControlRequest::CreateService { spec }).await?;
        expect_reply!("create_service", r, ControlReply::ServiceId(id) => id)
    }

    /// Replaces a service's spec ([`Cluster::update_service`]).
    pub async fn update_service(&self, name: &str, spec: ServiceSpec) -> Result<(), ControlError> {
        self.done(ControlRequest::UpdateService { name: name.into(), spec }).await
    }

    /// Lets `f` change a service's current spec ([`Cluster::modify_service`]):
    /// reads the spec, applies `f`, and stores the result only if the spec
    /// did not change in between; otherwise reads again and runs `f` again
    /// (up to 10 times), so no concurrent change is lost.
    pub async fn modify_service(
        &self,
        name: &str,
        mut f: impl FnMut(&mut ServiceSpec) + Send,
    ) -> Result<(), ControlError> {
        for _ in 0..MODIFY_ATTEMPTS {
            let base = self.inspect_service(name).await?.spec;
            let mut spec = base.clone();
            f(&mut spec);
            match self.done(ControlRequest::ModifyService { name: name.into(), base, spec }).await {
                Err(ControlError::Conflict { .. }) => continue,
                other => return other,
            }
        }
        Err(ControlError::Conflict {
            message: format!("service {name:?} changed {MODIFY_ATTEMPTS} times while being modified; gave up"),
        })
    }

    /// Forces a rolling restart with an unchanged spec.
    pub async fn force_update(&self, name: &str) -> Result<(), ControlError> {
        self.done(ControlRequest::ForceUpdate { name: name.into() }).await
    }

    /// Sets the replica count of a replicated service.
    pub async fn scale(&self, name: &str, replicas: u64) -> Result<(), ControlError> {
        self.done(ControlRequest::Scale { name: name.into(), replicas }).await
    }

    /// Rolls a service back to its previous spec.
    pub async fn rollback_service(&self, name: &str) -> Result<(), ControlError> {
        self.done(ControlRequest::RollbackService { name: name.into() }).await
    }

    /// Pauses a rolling update (or rollback).
    pub async fn pause_update(&self, name: &str) -> Result<(), ControlError> {
        self.done(ControlRequest::PauseUpdate { name: name.into() }).await
    }

    /// Resumes a paused update (or rollback).
    pub async fn resume_update(&self, name: &str) -> Result<(), ControlError> {
        self.done(ControlRequest::ResumeUpdate { name: name.into() }).await
    }

    /// Removes a service; its tasks are stopped and removed.
    pub async fn remove_service(&self, name: &str) -> Result<(), ControlError> {
        self.done(ControlRequest::RemoveService { name: name.into() }).await
    }

    /// A service by name or id.
    pub async fn inspect_service(&self, name: &str) -> Result<Service, ControlError> {
        let r = self.answer(&ControlRequest::InspectService { name: name.into() }).await?;
        expect_reply!("inspect_service", r, ControlReply::Service(s) => s)
    }

    /// Every service.
    pub async fn list_services(&self) -> Result<Vec<Service>, ControlError> {
        let r = self.answer(&ControlRequest::ListServices).await?;
        expect_reply!("list_services", r, ControlReply::Services(s) => s)
    }

    /// A service's task counts (`docker service ls`'s REPLICAS).
    pub async fn service_status(&self, name: &str) -> Result<ServiceStatus, ControlError> {
        let r = self.answer(&ControlRequest::ServiceStatus { name: name.into() }).await?;
        expect_reply!("service_status", r, ControlReply::ServiceStatus(s) => s)
    }

    /// Every service with its task counts.
    pub async fn list_services_with_status(&self) -> Result<Vec<(Service, ServiceStatus)>, ControlError> {
        let r = self.answer(&ControlRequest::ListServicesWithStatus).await?;
        expect_reply!("list_services_with_status", r, ControlReply::ServicesWithStatus(s) => s)
    }

    /// Tasks, filtered.
    pub async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<Task>, ControlError> {
        let r = self.answer(&ControlRequest::ListTasks { filter }).await?;
        expect_reply!("list_tasks", r, ControlReply::Tasks(t) => t)
    }

    /// One task.
    pub async fn inspect_task(&self, id: &str) -> Result<Task, ControlError> {
        let r = self.answer(&ControlRequest::InspectTask { id: id.into() }).await?;
        expect_reply!("inspect_task", r, ControlReply::Task(t) => t)
    }

    /// Every node.
    pub async fn list_nodes(&self) -> Result<Vec<Node>, ControlError> {
        let r = self.answer(&ControlRequest::ListNodes).await?;
        expect_reply!("list_nodes", r, ControlReply::Nodes(n) => n)
    }

    /// A node by id or hostname.
    pub async fn inspect_node(&self, name: &str) -> Result<Node, ControlError> {
        let r = self.answer(&ControlRequest::InspectNode { name: name.into() }).await?;
        expect_reply!("inspect_node", r, ControlReply::Node(n) => n)
    }

    /// Sets a node's availability: active, pause or drain.
    pub async fn set_node_availability(&self, name: &str, availability: Availability) -> Result<(), ControlError> {
        self.done(ControlRequest::SetNodeAvailability { name: name.into(), availability }).await
    }

    /// Sets (or with `None` removes) a node label.
    pub async fn set_node_label(&self, name: &str, key: &str, value: Option<&str>) -> Result<(), ControlError> {
        self.done(ControlRequest::SetNodeLabel { name: name.into(), key: key.into(), value: value.map(str::to_owned) })
            .await
    }

    /// Sets a node's role.
    pub async fn set_node_role(&self, name: &str, role: NodeRole) -> Result<(), ControlError> {
        self.done(ControlRequest::SetNodeRole { name: name.into(), role }).await
    }

    /// Removes a node (refused while it runs tasks unless `force`).
    pub async fn remove_node(&self, name: &str, force: bool) -> Result<(), ControlError> {
        self.done(ControlRequest::RemoveNode { name: name.into(), force }).await
    }

    /// Creates a secret.
    pub async fn create_secret(&self, name: &str, data: Vec<u8>) -> Result<SecretId, ControlError> {
        let r = self.answer(&ControlRequest::CreateSecret { name: name.into(), data: SecretBytes(data) }).await?;
        expect_reply!("create_secret", r, ControlReply::SecretId(id) => id)
    }

    /// Creates a config.
    pub async fn create_config(&self, name: &str, data: Vec<u8>) -> Result<ConfigId, ControlError> {
        let r = self.answer(&ControlRequest::CreateConfig { name: name.into(), data: SecretBytes(data) }).await?;
        expect_reply!("create_config", r, ControlReply::ConfigId(id) => id)
    }

    /// Creates a network.
    pub async fn create_network(&self, spec: NetworkSpec) -> Result<NetworkId, ControlError> {
        let r = self.answer(&ControlRequest::CreateNetwork { spec }).await?;
        expect_reply!("create_network", r, ControlReply::NetworkId(id) => id)
    }

    /// Creates a volume.
    pub async fn create_volume(&self, spec: VolumeSpec) -> Result<VolumeId, ControlError> {
        let r = self.answer(&ControlRequest::CreateVolume { spec }).await?;
        expect_reply!("create_volume", r, ControlReply::VolumeId(id) => id)
    }

    /// Removes a secret, config, network or volume by name.
    pub async fn remove_object(&self, kind: ObjectKind, name: &str) -> Result<(), ControlError> {
        self.done(ControlRequest::RemoveObject { kind, name: name.into() }).await
    }

    /// Every secret, without its data.
    pub async fn list_secrets(&self) -> Result<Vec<Secret>, ControlError> {
        let r = self.answer(&ControlRequest::ListSecrets).await?;
        expect_reply!("list_secrets", r, ControlReply::Secrets(s) => s)
    }

    /// Every config.
    pub async fn list_configs(&self) -> Result<Vec<Config>, ControlError> {
        let r = self.answer(&ControlRequest::ListConfigs).await?;
        expect_reply!("list_configs", r, ControlReply::Configs(c) => c)
    }

    /// Every network.
    pub async fn list_networks(&self) -> Result<Vec<Network>, ControlError> {
        let r = self.answer(&ControlRequest::ListNetworks).await?;
        expect_reply!("list_networks", r, ControlReply::Networks(n) => n)
    }

    /// Every volume.
    pub async fn list_volumes(&self) -> Result<Vec<Volume>, ControlError> {
        let r = self.answer(&ControlRequest::ListVolumes).await?;
        expect_reply!("list_volumes", r, ControlReply::Volumes(v) => v)
    }

    /// Creates the cluster settings object (or replaces its spec).
    pub async fn set_cluster_spec(&self, spec: ClusterSpec) -> Result<(), ControlError> {
        self.done(ControlRequest::SetClusterSpec { spec }).await
    }

    /// The cluster settings (the defaults when none were set).
    pub async fn cluster_spec(&self) -> Result<ClusterSpec, ControlError> {
        let r = self.answer(&ControlRequest::InspectClusterSpec).await?;
        expect_reply!("inspect_cluster_spec", r, ControlReply::ClusterSpec(s) => s)
    }

    /// Events from now on.
    pub async fn events(&self) -> Result<RemoteEventStream, ControlError> {
        self.open_events(None).await
    }

    /// Events after revision `from`.
    pub async fn events_since(&self, from: Revision) -> Result<RemoteEventStream, ControlError> {
        self.open_events(Some(from)).await
    }

    async fn open_events(&self, from: Option<Revision>) -> Result<RemoteEventStream, ControlError> {
        let req = EventsRequest { from };
        self.on_any(|c| async {
            let mut inner = c.stream::<EventsRequest, EventsItem>("control.events", &req).await?;
            // The first item says the manager watches (or why it refused).
            let first =
                tokio::time::timeout(EVENTS_START_TIMEOUT, inner.next()).await.map_err(|_| RpcError::Timeout {
                    addr: c.addr().to_owned(),
                    method: "control.events".into(),
                    timeout: EVENTS_START_TIMEOUT,
                })??;
            Ok((inner, first))
        })
        .await
        .and_then(|(inner, first)| match first {
            Some(EventsItem::Watching { from }) => Ok(RemoteEventStream { inner, from, last: None }),
            Some(EventsItem::Event(_)) | None => Err(ControlError::Transport {
                message: "control.events: the manager did not start the stream with its revision".into(),
            }),
        })
    }

    /// Has the manager's CA issue an operator certificate for `name` from
    /// the PEM request `csr_pem` ([`crate::ca::NodeCsr`]). Only a client of
    /// the manager's local socket may ask ([`ControlError::Denied`]
    /// otherwise); a manager without the CA key refuses with
    /// [`ControlError::Certificate`].
    pub async fn issue_operator_cert(
        &self,
        name: &str,
        csr_pem: &str,
        lifetime: Option<Duration>,
    ) -> Result<OperatorCert, ControlError> {
        let req = IssueOperatorCert {
            name: name.to_owned(),
            csr_pem: csr_pem.to_owned(),
            lifetime_secs: lifetime.map(|d| d.as_secs()),
        };
        self.unary("control.issue_operator_cert", &req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_errors() -> Vec<ClusterError> {
        vec![
            ClusterError::NotFound { kind: ObjectKind::Node, name: "n1".into() },
            ClusterError::Invalid(ValidationError {
                subject: "service \"Bad Name\"".into(),
                errors: vec![
                    FieldError { field: "name".into(), reason: "must be lower case".into() },
                    FieldError { field: "mode.replicas".into(), reason: "too many".into() },
                ],
            }),
            ClusterError::NodeHasTasks { node: "n1".into(), tasks: 3 },
            ClusterError::NodeIsManager { node: "m1".into(), raft_id: 7 },
            ClusterError::WouldLoseQuorum(QuorumLoss {
                node: "m2".into(),
                remaining: 2,
                reachable: 1,
                quorum: 2,
                unreachable: vec!["m3".into()],
            }),
            ClusterError::NoPreviousSpec("web".into()),
            ClusterError::NotApplicable {
                service: "web".into(),
                reason: "only replicated services can be scaled".into(),
            },
            ClusterError::Store(StoreError::NoQuorum("2 of 3 managers unreachable".into())),
            ClusterError::Store(StoreError::Unavailable("shutting down".into())),
            ClusterError::Store(StoreError::Indeterminate("leader lost".into())),
        ]
    }

    #[test]
    fn cluster_errors_cross_the_wire_with_the_same_words_and_come_back() {
        for ce in cluster_errors() {
            let wire = ControlError::from(ce.clone());
            assert_eq!(wire.to_string(), ce.to_string());
            let json = serde_json::to_value(&wire).unwrap();
            let read: ControlError = serde_json::from_value(json).unwrap();
            assert_eq!(read, wire);
            let back = ClusterError::try_from(read).unwrap();
            assert_eq!(back.to_string(), ce.to_string());
        }
    }

    #[test]
    fn store_refusals_keep_their_meaning() {
        let conflict = StoreError::Rejected(TxError::VersionConflict {
            kind: ObjectKind::Service,
            id: "s1".into(),
            expected: 1,
            actual: 2,
        });
        assert!(matches!(ControlError::from(conflict), ControlError::Conflict { .. }));
        let gone = StoreError::Rejected(TxError::NotFound { kind: ObjectKind::Secret, id: "x".into() });
        assert_eq!(ControlError::from(gone), ControlError::NotFound { kind: ObjectKind::Secret, name: "x".into() });
        let taken =
            StoreError::Rejected(TxError::NameInUse { kind: ObjectKind::Service, name: "web".into(), id: "s1".into() });
        let wire = ControlError::from(taken.clone());
        assert_eq!(wire, ControlError::Store { message: taken.to_string() });
        assert!(ClusterError::try_from(wire).is_err(), "no faithful ClusterError for it");
    }

    #[test]
    fn faults_become_control_errors() {
        let err = ControlError::NodeHasTasks { node: "n1".into(), tasks: 2 };
        let rpc = |fault| RpcError::Fault { addr: "m1:4242".into(), method: "control.call".into(), fault };
        assert_eq!(ControlError::from(rpc(err.fault())), err);
        let denied = Fault::new(Code::PermissionDenied, "node w1 presented a worker certificate");
        assert_eq!(
            ControlError::from(rpc(denied)),
            ControlError::Denied { message: "node w1 presented a worker certificate".into() }
        );
        let anon = Fault::new(Code::Unauthenticated, "no certificate");
        assert!(matches!(ControlError::from(rpc(anon)), ControlError::Denied { .. }));
        let odd = Fault::new(Code::UnknownMethod, "no service \"control\"");
        let e = ControlError::from(rpc(odd));
        assert!(matches!(&e, ControlError::Transport { message } if message.contains("m1:4242")), "{e:?}");
        let hs = RpcError::Handshake { addr: "m1:4242".into(), reason: "received fatal alert".into() };
        assert!(matches!(ControlError::from(hs), ControlError::Denied { .. }));
        let down = RpcError::Connect { addr: "m1:4242".into(), reason: "refused".into() };
        assert!(matches!(ControlError::from(down), ControlError::Transport { .. }));
    }

    #[test]
    fn requests_and_replies_are_tagged_json() {
        let req = ControlRequest::Scale { name: "web".into(), replicas: 4 };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            serde_json::json!({"op": "scale", "name": "web", "replicas": 4})
        );
        let secret = ControlRequest::CreateSecret { name: "pw".into(), data: SecretBytes(b"hunter2".to_vec()) };
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert_eq!(serde_json::to_value(ControlReply::Done).unwrap(), serde_json::json!({"kind": "done"}));
        for req in
            [ControlRequest::ListServices, req, secret, ControlRequest::ListTasks { filter: TaskFilter::default() }]
        {
            let back: ControlRequest = serde_json::from_value(serde_json::to_value(&req).unwrap()).unwrap();
            assert_eq!(back, req);
        }
    }

    /// A store that has lost its quorum: linearizable reads and writes
    /// fail, its local replica still holds the last state.
    struct Cut(swarm_core::store::MemStore);

    #[async_trait]
    impl Store for Cut {
        async fn commit(&self, _tx: Transaction) -> Result<Arc<Change>, StoreError> {
            Err(StoreError::NoQuorum("no leader elected within 1s".into()))
        }
        async fn snapshot(&self) -> Result<Arc<State>, StoreError> {
            Err(StoreError::NoQuorum("read not confirmed by a quorum in time".into()))
        }
        async fn watch(&self, from: Revision) -> Result<Watch, StoreError> {
            self.0.watch(from).await
        }
        fn local_snapshot(&self) -> Option<Arc<State>> {
            Some(self.0.state())
        }
    }

    #[tokio::test]
    async fn networks_are_listed_without_their_encryption_keys() {
        let mem = swarm_core::store::MemStore::new();
        let mut n = Network {
            id: "enc".into(),
            spec: NetworkSpec { name: "enc".into(), driver: "overlay".into(), ..Default::default() },
            ..Default::default()
        };
        n.spec.options.insert("encrypted".into(), String::new());
        n.keys = vec![swarm_core::model::NetworkKey {
            id: 1,
            secret: SecretBytes(vec![7; 32]),
            created: Default::default(),
            current: true,
        }];
        mem.commit(swarm_core::state::Transaction::new().create(n)).await.unwrap();
        let svc = ControlService::new(Cluster::new(Arc::new(mem)), None);
        match svc.execute(ControlRequest::ListNetworks).await.unwrap() {
            ControlReply::Networks(ns) => {
                assert_eq!(ns.len(), 1);
                assert!(ns[0].keys.is_empty(), "keys handed to a control client");
            }
            other => panic!("expected networks, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn reads_without_a_quorum_answer_the_local_replica_marked_stale() {
        let mem = swarm_core::store::MemStore::new();
        Cluster::new(Arc::new(mem.clone()))
            .create_service(ServiceSpec::replicated("web", "nginx:1.27", 2))
            .await
            .unwrap();
        let svc = ControlService::new(Cluster::new(Arc::new(Cut(mem))), None);
        match svc.execute(ControlRequest::ListServices).await.unwrap() {
            ControlReply::Stale { reason, reply, .. } => {
                assert!(reason.contains("quorum"), "{reason}");
                assert!(matches!(*reply, ControlReply::Services(ref s) if s.len() == 1 && s[0].spec.name == "web"));
            }
            other => panic!("expected a stale answer, got {other:?}"),
        }
        // Writes fail with the store's reason; nothing falls back.
        let err = svc.execute(ControlRequest::Scale { name: "web".into(), replicas: 3 }).await.unwrap_err();
        assert!(matches!(err, ControlError::NoQuorum { .. }), "{err}");
        assert!(err.to_string().starts_with("no quorum: "), "{err}");
        // A store without a local replica (MemStore) never answers stale.
        let fresh = ControlService::new(Cluster::new(Arc::new(swarm_core::store::MemStore::new())), None);
        assert!(matches!(fresh.execute(ControlRequest::ListServices).await.unwrap(), ControlReply::Services(_)));
    }

    #[tokio::test]
    async fn remote_cluster_unwraps_stale_answers_and_keeps_the_reason() {
        let mem = swarm_core::store::MemStore::new();
        Cluster::new(Arc::new(mem.clone()))
            .create_service(ServiceSpec::replicated("web", "nginx:1.27", 2))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("control.sock");
        let svc = ControlService::new(Cluster::new(Arc::new(Cut(mem))), None);
        let router = crate::rpc::Router::new().route("control", Arc::new(svc));
        let server = tokio::spawn({
            let socket = socket.clone();
            async move { crate::rpc::RpcServer::serve_unix(&socket, Arc::new(router)).await }
        });
        while tokio::net::UnixStream::connect(&socket).await.is_err() {
            tokio::task::yield_now().await;
        }
        let remote = RemoteCluster::unix(&socket);
        assert_eq!(remote.take_stale_read(), None);
        let services = remote.list_services().await.unwrap();
        assert_eq!(services.len(), 1);
        let why = remote.take_stale_read().expect("the stale answer is reported");
        assert!(why.contains("read not confirmed by a quorum") && why.contains("revision"), "{why}");
        assert_eq!(remote.take_stale_read(), None, "taking it clears it");
        server.abort();
    }
}
