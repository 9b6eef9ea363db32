//! The one deterministic state machine every [`Store`](crate::store::Store)
//! runs: `State::apply(transaction) -> (State, Change)`.
//!
//! A [`Transaction`] is a list of [`Op`]s applied atomically: all of them or
//! none. Updates and deletes carry the version they read; a mismatch is a
//! [`TxError::VersionConflict`] and nothing changes. [`Op::UpdateTaskStatus`]
//! is a compact form of a task update that changes only its status (the
//! common write of a running cluster): a replicated log entry carries the
//! status instead of the whole task, and it applies and notifies exactly as
//! the full update would. The machine validates
//! specs, keeps names unique, checks references (a service's secrets,
//! configs and networks exist; a secret in use cannot be deleted) and
//! enforces the task state machine: `status.state` and `desired_state` only
//! move forward.
//!
//! [`State`] is a persistent map (imbl): cloning it is O(1), so a snapshot
//! costs nothing and readers never block writers. Apply is a pure function
//! of (state, transaction): given the same transactions in the same order,
//! every replica reaches the same state, which is what the raft store needs.
//!
//! ```
//! use swarm_core::model::{Node, Resources, Version};
//! use swarm_core::state::{State, Transaction};
//! let s0 = State::default();
//! let node = Node::ready("n1", "host1", Resources::default());
//! let (s1, change) = s0.apply(&Transaction::new().create(node)).unwrap();
//! assert_eq!(change.revision, 1);
//! let mut stale = s1.node(&"n1".into()).unwrap().as_ref().clone();
//! stale.meta.version = Version(0); // pretend we read an older version
//! assert!(s1.apply(&Transaction::new().update(stale)).is_err());
//! ```

use crate::id::*;
use crate::model::*;
use crate::time::Timestamp;
use crate::validate::{self, ValidationError};
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One operation of a transaction.
///
/// Encoded adjacently tagged, `{"op": "update", "arg": {...}}`, with the
/// tag written first, so a replica decodes the argument straight into its
/// type. (An internally tagged encoding, `{"op": "update", ...}`, made
/// serde buffer every field of every object before decoding it: a
/// follower spent twice as long decoding the replicated log.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", content = "arg", rename_all = "lowercase")]
#[allow(clippy::large_enum_variant)]
pub enum Op {
    /// Create an object; its id must be new.
    Create(Object),
    /// Replace an object; `meta.version` must be the version in the store.
    Update(Object),
    /// Delete an object; with `version`, only if it is still that version.
    Delete {
        /// Kind of the object.
        kind: ObjectKind,
        /// Its id.
        id: String,
        /// Expected version, if the caller wants the check.
        version: Option<Version>,
    },
    /// Replace what a node observed of a task, its `status` and (when
    /// given) its network attachments, and nothing else: applied exactly
    /// as an [`Op::Update`] of the stored task with these would be (same
    /// checks, version bump, timestamps and [`Action::Update`] event), but
    /// a log entry carries only the observation rather than the whole task
    /// and its spec. With `version`, only if the task is still that
    /// version.
    UpdateTaskStatus {
        /// The task.
        id: TaskId,
        /// Expected version, if the caller wants the check.
        version: Option<Version>,
        /// The new status.
        status: TaskStatus,
        /// New network attachments (addresses), if they changed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        networks: Option<Vec<NetworkAttachment>>,
    },
    /// Place a task: set its node and its status (the scheduler's
    /// decision), nothing else. Applied exactly as an [`Op::Update`] of the
    /// stored task with these would be; a log entry carries the decision
    /// rather than the whole task. With `version`, only if the task is
    /// still that version.
    AssignTask {
        /// The task.
        id: TaskId,
        /// Expected version, if the caller wants the check.
        version: Option<Version>,
        /// The node it goes to.
        node: NodeId,
        /// Its new status (ASSIGNED).
        status: TaskStatus,
    },
}

/// Operations applied atomically, in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    /// The operations.
    pub ops: Vec<Op>,
    /// Wall-clock time stamped on the objects. Stores fill it in when the
    /// caller leaves it `None`, before replicating, so every replica stamps
    /// the same time.
    pub timestamp: Option<Timestamp>,
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a create.
    pub fn create(mut self, o: impl Into<Object>) -> Self {
        self.ops.push(Op::Create(o.into()));
        self
    }
    /// Adds an update.
    pub fn update(mut self, o: impl Into<Object>) -> Self {
        self.ops.push(Op::Update(o.into()));
        self
    }
    /// Adds a delete with a version check.
    pub fn delete(mut self, kind: ObjectKind, id: impl Into<String>, version: Version) -> Self {
        self.ops.push(Op::Delete { kind, id: id.into(), version: Some(version) });
        self
    }
    /// Adds a delete without a version check.
    pub fn delete_any(mut self, kind: ObjectKind, id: impl Into<String>) -> Self {
        self.ops.push(Op::Delete { kind, id: id.into(), version: None });
        self
    }
    /// Adds a status-only update of a task with a version check (see
    /// [`Op::UpdateTaskStatus`]).
    pub fn update_task_status(mut self, id: TaskId, version: Version, status: TaskStatus) -> Self {
        self.ops.push(Op::UpdateTaskStatus { id, version: Some(version), status, networks: None });
        self
    }
    /// Adds an update of a task's status and network attachments with a
    /// version check (see [`Op::UpdateTaskStatus`]).
    pub fn update_task_observed(
        mut self,
        id: TaskId,
        version: Version,
        status: TaskStatus,
        networks: Option<Vec<NetworkAttachment>>,
    ) -> Self {
        self.ops.push(Op::UpdateTaskStatus { id, version: Some(version), status, networks });
        self
    }
    /// Adds an operation.
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// What happened to one object.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// It was created.
    Create,
    /// It was updated.
    Update,
    /// It was deleted.
    Delete,
}

/// One object's change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Create, update or delete.
    pub action: Action,
    /// The object after the change (before it, for a delete).
    pub object: Object,
    /// The object before an update.
    pub old: Option<Object>,
}

/// Everything one committed transaction changed, under one revision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The revision the transaction produced.
    pub revision: Revision,
    /// Its timestamp.
    pub timestamp: Timestamp,
    /// One event per operation, in order.
    pub events: Vec<Event>,
}

/// Why a transaction was rejected. A rejected transaction changes nothing.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TxError {
    /// The transaction has no operations.
    #[error("the transaction has no operations")]
    Empty,
    /// The object changed since the caller read it.
    #[error(
        "version conflict on {kind} {id}: the write is based on version {expected} but the store has version {actual}"
    )]
    VersionConflict {
        /// Kind.
        kind: ObjectKind,
        /// Id.
        id: String,
        /// Version the caller read.
        expected: u64,
        /// Version in the store.
        actual: u64,
    },
    /// No such object.
    #[error("{kind} {id} not found")]
    NotFound {
        /// Kind.
        kind: ObjectKind,
        /// Id.
        id: String,
    },
    /// The id is taken.
    #[error("{kind} {id} already exists")]
    AlreadyExists {
        /// Kind.
        kind: ObjectKind,
        /// Id.
        id: String,
    },
    /// The object has no id.
    #[error("{kind} has an empty id")]
    EmptyId {
        /// Kind.
        kind: ObjectKind,
    },
    /// The name is taken by another object of the same kind.
    #[error("{kind} name {name:?} is already used by {kind} {id}")]
    NameInUse {
        /// Kind.
        kind: ObjectKind,
        /// Name.
        name: String,
        /// The object holding it.
        id: String,
    },
    /// The spec did not validate.
    #[error("{0}")]
    Invalid(ValidationError),
    /// A task's state would move backwards.
    #[error("task {task}: illegal transition of {field} from {from} to {to} (task states only move forward)")]
    IllegalTransition {
        /// The task.
        task: String,
        /// `status.state` or `desired_state`.
        field: &'static str,
        /// Current state.
        from: TaskState,
        /// Requested state.
        to: TaskState,
    },
    /// The object refers to something that does not exist.
    #[error("{kind} {name:?} refers to {ref_kind} {ref_name:?}, which does not exist")]
    MissingReference {
        /// Kind of the referring object.
        kind: ObjectKind,
        /// Its name or id.
        name: String,
        /// Kind referred to.
        ref_kind: ObjectKind,
        /// Name or id referred to.
        ref_name: String,
    },
    /// The object is still used.
    #[error("{kind} {name:?} is in use by {}", users.join(", "))]
    InUse {
        /// Kind.
        kind: ObjectKind,
        /// Name.
        name: String,
        /// Who uses it.
        users: Vec<String>,
    },
    /// A field that may not change was changed.
    #[error("{kind} {id}: {field} cannot be changed")]
    Immutable {
        /// Kind.
        kind: ObjectKind,
        /// Id.
        id: String,
        /// The field.
        field: &'static str,
    },
}

/// The whole cluster state at one revision.
#[derive(Clone, Default, Debug)]
pub struct State {
    revision: Revision,
    nodes: OrdMap<NodeId, Arc<Node>>,
    services: OrdMap<ServiceId, Arc<Service>>,
    tasks: OrdMap<TaskId, Arc<Task>>,
    networks: OrdMap<NetworkId, Arc<Network>>,
    volumes: OrdMap<VolumeId, Arc<Volume>>,
    secrets: OrdMap<SecretId, Arc<Secret>>,
    configs: OrdMap<ConfigId, Arc<Config>>,
    clusters: OrdMap<ClusterId, Arc<Cluster>>,
    tasks_by_service: OrdMap<ServiceId, OrdSet<TaskId>>,
    tasks_by_node: OrdMap<NodeId, OrdSet<TaskId>>,
    service_names: OrdMap<String, ServiceId>,
    network_names: OrdMap<String, NetworkId>,
    volume_names: OrdMap<String, VolumeId>,
    secret_names: OrdMap<String, SecretId>,
    config_names: OrdMap<String, ConfigId>,
}

/// A serializable image of a [`State`] (for raft snapshots and backups).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateImage {
    /// Revision of the state.
    pub revision: Revision,
    /// Every object.
    pub objects: Vec<Object>,
}

macro_rules! getters {
    ($one:ident, $all:ident, $field:ident, $id:ty, $t:ty) => {
        /// One object by id.
        pub fn $one(&self, id: &$id) -> Option<&Arc<$t>> {
            self.$field.get(id)
        }
        /// All objects of the kind, ordered by id.
        pub fn $all(&self) -> impl Iterator<Item = &Arc<$t>> + '_ {
            self.$field.values()
        }
    };
}

impl State {
    /// The revision of the last transaction applied.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    getters!(node, nodes, nodes, NodeId, Node);
    getters!(service, services, services, ServiceId, Service);
    getters!(task, tasks, tasks, TaskId, Task);
    getters!(network, networks, networks, NetworkId, Network);
    getters!(volume, volumes, volumes, VolumeId, Volume);
    getters!(secret, secrets, secrets, SecretId, Secret);
    getters!(config, configs, configs, ConfigId, Config);

    /// The cluster settings object, if one was created.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.clusters.values().next()
    }

    /// The cluster settings, or the defaults when no Cluster object exists.
    pub fn cluster_spec(&self) -> ClusterSpec {
        self.cluster().map(|c| c.spec.clone()).unwrap_or_default()
    }

    /// Numbers of objects: nodes, services, tasks.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.nodes.len(), self.services.len(), self.tasks.len())
    }

    /// A service by name.
    pub fn service_by_name(&self, name: &str) -> Option<&Arc<Service>> {
        self.service_names.get(name).and_then(|id| self.services.get(id))
    }
    /// A network by name or id.
    pub fn network_by_name(&self, name: &str) -> Option<&Arc<Network>> {
        self.network_names.get(name).and_then(|id| self.networks.get(id)).or_else(|| self.networks.get(name))
    }
    /// A volume by name or id.
    pub fn volume_by_name(&self, name: &str) -> Option<&Arc<Volume>> {
        self.volume_names.get(name).and_then(|id| self.volumes.get(id)).or_else(|| self.volumes.get(name))
    }
    /// A secret by name or id.
    pub fn secret_by_name(&self, name: &str) -> Option<&Arc<Secret>> {
        self.secret_names.get(name).and_then(|id| self.secrets.get(id)).or_else(|| self.secrets.get(name))
    }
    /// A config by name or id.
    pub fn config_by_name(&self, name: &str) -> Option<&Arc<Config>> {
        self.config_names.get(name).and_then(|id| self.configs.get(id)).or_else(|| self.configs.get(name))
    }

    /// The tasks of a service (every state), ordered by id.
    pub fn tasks_of_service<'a>(&'a self, id: &ServiceId) -> impl Iterator<Item = &'a Arc<Task>> + 'a {
        self.tasks_by_service.get(id).into_iter().flat_map(move |set| set.iter().filter_map(move |t| self.tasks.get(t)))
    }

    /// The tasks assigned to a node (every state), ordered by id.
    pub fn tasks_on_node<'a>(&'a self, id: &NodeId) -> impl Iterator<Item = &'a Arc<Task>> + 'a {
        self.tasks_by_node.get(id).into_iter().flat_map(move |set| set.iter().filter_map(move |t| self.tasks.get(t)))
    }

    /// Any object by kind and id.
    pub fn get(&self, kind: ObjectKind, id: &str) -> Option<Object> {
        Some(match kind {
            ObjectKind::Node => Object::Node(self.nodes.get(id)?.as_ref().clone()),
            ObjectKind::Service => Object::Service(self.services.get(id)?.as_ref().clone()),
            ObjectKind::Task => Object::Task(self.tasks.get(id)?.as_ref().clone()),
            ObjectKind::Network => Object::Network(self.networks.get(id)?.as_ref().clone()),
            ObjectKind::Volume => Object::Volume(self.volumes.get(id)?.as_ref().clone()),
            ObjectKind::Secret => Object::Secret(self.secrets.get(id)?.as_ref().clone()),
            ObjectKind::Config => Object::Config(self.configs.get(id)?.as_ref().clone()),
            ObjectKind::Cluster => Object::Cluster(self.clusters.get(id)?.as_ref().clone()),
        })
    }

    fn version_of(&self, kind: ObjectKind, id: &str) -> Option<Version> {
        Some(match kind {
            ObjectKind::Node => self.nodes.get(id)?.meta.version,
            ObjectKind::Service => self.services.get(id)?.meta.version,
            ObjectKind::Task => self.tasks.get(id)?.meta.version,
            ObjectKind::Network => self.networks.get(id)?.meta.version,
            ObjectKind::Volume => self.volumes.get(id)?.meta.version,
            ObjectKind::Secret => self.secrets.get(id)?.meta.version,
            ObjectKind::Config => self.configs.get(id)?.meta.version,
            ObjectKind::Cluster => self.clusters.get(id)?.meta.version,
        })
    }

    /// Every object, for a snapshot.
    pub fn to_image(&self) -> StateImage {
        let mut objects = Vec::new();
        objects.extend(self.clusters.values().map(|o| Object::Cluster(o.as_ref().clone())));
        objects.extend(self.nodes.values().map(|o| Object::Node(o.as_ref().clone())));
        objects.extend(self.networks.values().map(|o| Object::Network(o.as_ref().clone())));
        objects.extend(self.volumes.values().map(|o| Object::Volume(o.as_ref().clone())));
        objects.extend(self.secrets.values().map(|o| Object::Secret(o.as_ref().clone())));
        objects.extend(self.configs.values().map(|o| Object::Config(o.as_ref().clone())));
        objects.extend(self.services.values().map(|o| Object::Service(o.as_ref().clone())));
        objects.extend(self.tasks.values().map(|o| Object::Task(o.as_ref().clone())));
        StateImage { revision: self.revision, objects }
    }

    /// Rebuilds a state (and its indexes) from an image.
    pub fn from_image(image: StateImage) -> State {
        let mut s = State { revision: image.revision, ..Default::default() };
        for o in image.objects {
            s.put(o);
        }
        s
    }

    /// Applies a transaction at revision `self.revision() + 1`. On success
    /// returns the new state and what changed; on error, `self` is intact
    /// and the error says which operation was refused and why.
    pub fn apply(&self, tx: &Transaction) -> Result<(State, Change), TxError> {
        if tx.ops.is_empty() {
            return Err(TxError::Empty);
        }
        let mut next = self.clone();
        next.revision = self.revision + 1;
        let ts = tx.timestamp.unwrap_or_default();
        let mut events = Vec::with_capacity(tx.ops.len());
        for op in &tx.ops {
            events.push(next.apply_op(op, ts)?);
        }
        let change = Change { revision: next.revision, timestamp: ts, events };
        Ok((next, change))
    }

    fn apply_op(&mut self, op: &Op, ts: Timestamp) -> Result<Event, TxError> {
        let version = Version(self.revision);
        match op {
            Op::Create(obj) => {
                let kind = obj.kind();
                let id = obj.id().to_string();
                if id.is_empty() {
                    return Err(TxError::EmptyId { kind });
                }
                if self.version_of(kind, &id).is_some() {
                    return Err(TxError::AlreadyExists { kind, id });
                }
                self.check(obj, None)?;
                let mut obj = obj.clone();
                *obj.meta_mut() = Meta { version, created_revision: version.0, created_at: ts, updated_at: ts };
                self.put(obj.clone());
                Ok(Event { action: Action::Create, object: obj, old: None })
            }
            Op::Update(obj) => {
                let kind = obj.kind();
                let id = obj.id().to_string();
                let old = self.get(kind, &id).ok_or_else(|| TxError::NotFound { kind, id: id.clone() })?;
                let (expected, actual) = (obj.meta().version, old.meta().version);
                if expected != actual {
                    return Err(TxError::VersionConflict { kind, id, expected: expected.0, actual: actual.0 });
                }
                self.replace(obj.clone(), old, version, ts)
            }
            Op::AssignTask { id, version: want, node, status } => {
                // The full update this op stands for: the stored task, at
                // its stored version, placed on `node` with the new status.
                let old = self.task_at(id, *want)?;
                let mut task = old.as_ref().clone();
                task.node_id = Some(node.clone());
                task.status = status.clone();
                let old = Object::Task(old.as_ref().clone());
                self.replace(Object::Task(task), old, version, ts)
            }
            Op::UpdateTaskStatus { id, version: want, status, networks } => {
                let old = self.task_at(id, *want)?;
                // The full update this op stands for: the stored task, at
                // its stored version, with the new status (and networks).
                let mut task = old.as_ref().clone();
                task.status = status.clone();
                if let Some(n) = networks {
                    task.networks = n.clone();
                }
                let old = Object::Task(old.as_ref().clone());
                self.replace(Object::Task(task), old, version, ts)
            }
            Op::Delete { kind, id, version: want } => {
                let kind = *kind;
                let old = self.get(kind, id).ok_or_else(|| TxError::NotFound { kind, id: id.clone() })?;
                if let Some(want) = want {
                    if *want != old.meta().version {
                        return Err(TxError::VersionConflict {
                            kind,
                            id: id.clone(),
                            expected: want.0,
                            actual: old.meta().version.0,
                        });
                    }
                }
                self.check_delete(&old)?;
                self.remove(&old);
                Ok(Event { action: Action::Delete, object: old, old: None })
            }
        }
    }

    /// The stored task `id`, at version `want` when one is given: what a
    /// compact task operation applies to.
    fn task_at(&self, id: &TaskId, want: Option<Version>) -> Result<Arc<Task>, TxError> {
        let kind = ObjectKind::Task;
        let task = self.tasks.get(id).ok_or_else(|| TxError::NotFound { kind, id: id.to_string() })?;
        let actual = task.meta.version;
        match want {
            Some(want) if want != actual => {
                Err(TxError::VersionConflict { kind, id: id.to_string(), expected: want.0, actual: actual.0 })
            }
            _ => Ok(task.clone()),
        }
    }

    /// The rest of an update once its version check passed: `obj` replaces
    /// `old` after the integrity checks, stamped with the new `version` and
    /// `ts`.
    fn replace(&mut self, mut obj: Object, old: Object, version: Version, ts: Timestamp) -> Result<Event, TxError> {
        self.check(&obj, Some(&old))?;
        *obj.meta_mut() = Meta {
            version,
            created_revision: old.meta().created_revision,
            created_at: old.meta().created_at,
            updated_at: ts,
        };
        self.swap(&old, obj.clone());
        Ok(Event { action: Action::Update, object: obj, old: Some(old) })
    }

    /// Validation and integrity checks for a create (`old` = None) or an
    /// update.
    fn check(&self, obj: &Object, old: Option<&Object>) -> Result<(), TxError> {
        let kind = obj.kind();
        let name_taken = |names: Option<&str>, name: &str| -> Result<(), TxError> {
            match names {
                Some(holder) if holder != obj.id() => {
                    Err(TxError::NameInUse { kind, name: name.to_string(), id: holder.to_string() })
                }
                _ => Ok(()),
            }
        };
        match obj {
            Object::Node(n) => validate::validate_node(n).map_err(TxError::Invalid),
            Object::Service(s) => {
                validate::validate_service_spec(&s.spec).map_err(TxError::Invalid)?;
                name_taken(self.service_names.get(&s.spec.name).map(|i| i.as_str()), &s.spec.name)?;
                self.check_service_refs(s)
            }
            Object::Task(t) => self.check_task(t, old.and_then(Object::as_task)),
            Object::Network(n) => {
                validate::validate_network_spec(&n.spec).map_err(TxError::Invalid)?;
                name_taken(self.network_names.get(&n.spec.name).map(|i| i.as_str()), &n.spec.name)
            }
            Object::Volume(v) => {
                validate::validate_volume_spec(&v.spec).map_err(TxError::Invalid)?;
                name_taken(self.volume_names.get(&v.spec.name).map(|i| i.as_str()), &v.spec.name)
            }
            Object::Secret(s) => {
                validate::validate_secret_spec(&s.spec).map_err(TxError::Invalid)?;
                name_taken(self.secret_names.get(&s.spec.name).map(|i| i.as_str()), &s.spec.name)?;
                if let Some(Object::Secret(o)) = old {
                    if o.spec.data != s.spec.data {
                        return Err(TxError::Immutable { kind, id: s.id.to_string(), field: "spec.data" });
                    }
                    if o.spec.name != s.spec.name {
                        return Err(TxError::Immutable { kind, id: s.id.to_string(), field: "spec.name" });
                    }
                }
                Ok(())
            }
            Object::Config(c) => {
                validate::validate_config_spec(&c.spec).map_err(TxError::Invalid)?;
                name_taken(self.config_names.get(&c.spec.name).map(|i| i.as_str()), &c.spec.name)?;
                if let Some(Object::Config(o)) = old {
                    if o.spec.data != c.spec.data {
                        return Err(TxError::Immutable { kind, id: c.id.to_string(), field: "spec.data" });
                    }
                    if o.spec.name != c.spec.name {
                        return Err(TxError::Immutable { kind, id: c.id.to_string(), field: "spec.name" });
                    }
                }
                Ok(())
            }
            Object::Cluster(c) => {
                validate::validate_cluster_spec(&c.spec).map_err(TxError::Invalid)?;
                match self.clusters.keys().next() {
                    Some(existing) if existing != &c.id => {
                        Err(TxError::AlreadyExists { kind, id: format!("{existing} (there is one cluster object)") })
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    fn check_service_refs(&self, s: &Service) -> Result<(), TxError> {
        let missing = |ref_kind, ref_name: &str| TxError::MissingReference {
            kind: ObjectKind::Service,
            name: s.spec.name.clone(),
            ref_kind,
            ref_name: ref_name.to_string(),
        };
        let c = &s.spec.task_template.container;
        for r in &c.secrets {
            if self.secret_by_name(&r.secret_name).is_none() {
                return Err(missing(ObjectKind::Secret, &r.secret_name));
            }
        }
        for r in &c.configs {
            if self.config_by_name(&r.config_name).is_none() {
                return Err(missing(ObjectKind::Config, &r.config_name));
            }
        }
        for n in &s.spec.networks {
            if self.network_by_name(&n.target).is_none() {
                return Err(missing(ObjectKind::Network, &n.target));
            }
        }
        Ok(())
    }

    fn check_task(&self, t: &Task, old: Option<&Task>) -> Result<(), TxError> {
        let kind = ObjectKind::Task;
        match old {
            None => {
                if !self.services.contains_key(&t.service_id) {
                    return Err(TxError::MissingReference {
                        kind,
                        name: t.id.to_string(),
                        ref_kind: ObjectKind::Service,
                        ref_name: t.service_id.to_string(),
                    });
                }
            }
            Some(old) => {
                if old.service_id != t.service_id {
                    return Err(TxError::Immutable { kind, id: t.id.to_string(), field: "service_id" });
                }
                if old.slot != t.slot {
                    return Err(TxError::Immutable { kind, id: t.id.to_string(), field: "slot" });
                }
                if !old.status.state.can_move_to(t.status.state) {
                    return Err(TxError::IllegalTransition {
                        task: t.id.to_string(),
                        field: "status.state",
                        from: old.status.state,
                        to: t.status.state,
                    });
                }
                if !old.desired_state.can_move_to(t.desired_state) {
                    return Err(TxError::IllegalTransition {
                        task: t.id.to_string(),
                        field: "desired_state",
                        from: old.desired_state,
                        to: t.desired_state,
                    });
                }
                if old.node_id.is_some() && old.node_id != t.node_id {
                    return Err(TxError::Immutable { kind, id: t.id.to_string(), field: "node_id (once assigned)" });
                }
            }
        }
        if let Some(n) = &t.node_id {
            let newly = old.is_none_or(|o| o.node_id.as_ref() != Some(n));
            if newly && !self.nodes.contains_key(n) {
                return Err(TxError::MissingReference {
                    kind,
                    name: t.id.to_string(),
                    ref_kind: ObjectKind::Node,
                    ref_name: n.to_string(),
                });
            }
        }
        Ok(())
    }

    fn check_delete(&self, obj: &Object) -> Result<(), TxError> {
        let users = |pred: &dyn Fn(&Service) -> bool| -> Vec<String> {
            self.services.values().filter(|s| pred(s)).map(|s| format!("service {}", s.spec.name)).collect()
        };
        let (kind, name, users) = match obj {
            Object::Secret(sec) => {
                let n = &sec.spec.name;
                let id = sec.id.as_str();
                (
                    ObjectKind::Secret,
                    n.clone(),
                    users(&|s: &Service| {
                        s.spec
                            .task_template
                            .container
                            .secrets
                            .iter()
                            .any(|r| &r.secret_name == n || r.secret_name == id)
                    }),
                )
            }
            Object::Config(cfg) => {
                let n = &cfg.spec.name;
                let id = cfg.id.as_str();
                (
                    ObjectKind::Config,
                    n.clone(),
                    users(&|s: &Service| {
                        s.spec
                            .task_template
                            .container
                            .configs
                            .iter()
                            .any(|r| &r.config_name == n || r.config_name == id)
                    }),
                )
            }
            Object::Network(net) => {
                let n = &net.spec.name;
                let id = net.id.as_str();
                (
                    ObjectKind::Network,
                    n.clone(),
                    users(&|s: &Service| s.spec.networks.iter().any(|a| &a.target == n || a.target == id)),
                )
            }
            Object::Volume(vol) => {
                let n = &vol.spec.name;
                (
                    ObjectKind::Volume,
                    n.clone(),
                    users(&|s: &Service| {
                        s.spec
                            .task_template
                            .container
                            .mounts
                            .iter()
                            .any(|m| m.kind == MountKind::Volume && &m.source == n)
                    }),
                )
            }
            _ => return Ok(()),
        };
        if users.is_empty() { Ok(()) } else { Err(TxError::InUse { kind, name, users }) }
    }

    fn put(&mut self, obj: Object) {
        match obj {
            Object::Node(n) => {
                self.nodes.insert(n.id.clone(), Arc::new(n));
            }
            Object::Service(s) => {
                self.service_names.insert(s.spec.name.clone(), s.id.clone());
                self.services.insert(s.id.clone(), Arc::new(s));
            }
            Object::Task(t) => {
                self.tasks_by_service.entry(t.service_id.clone()).or_default().insert(t.id.clone());
                if let Some(n) = &t.node_id {
                    self.tasks_by_node.entry(n.clone()).or_default().insert(t.id.clone());
                }
                self.tasks.insert(t.id.clone(), Arc::new(t));
            }
            Object::Network(n) => {
                self.network_names.insert(n.spec.name.clone(), n.id.clone());
                self.networks.insert(n.id.clone(), Arc::new(n));
            }
            Object::Volume(v) => {
                self.volume_names.insert(v.spec.name.clone(), v.id.clone());
                self.volumes.insert(v.id.clone(), Arc::new(v));
            }
            Object::Secret(s) => {
                self.secret_names.insert(s.spec.name.clone(), s.id.clone());
                self.secrets.insert(s.id.clone(), Arc::new(s));
            }
            Object::Config(c) => {
                self.config_names.insert(c.spec.name.clone(), c.id.clone());
                self.configs.insert(c.id.clone(), Arc::new(c));
            }
            Object::Cluster(c) => {
                self.clusters.insert(c.id.clone(), Arc::new(c));
            }
        }
    }

    /// Replaces the stored `old` by `new` (same kind and id). A task's
    /// indexes change only where its service or node did: a status update
    /// then costs one map insert, not a removal and a re-insertion in the
    /// task map and in both per-service and per-node sets (which, for a
    /// service of 100,000 tasks, copied paths of the large sets twice).
    fn swap(&mut self, old: &Object, new: Object) {
        match (old, new) {
            (Object::Task(o), Object::Task(t)) => {
                if o.service_id != t.service_id {
                    unindex(&mut self.tasks_by_service, &o.service_id, &o.id);
                    self.tasks_by_service.entry(t.service_id.clone()).or_default().insert(t.id.clone());
                }
                if o.node_id != t.node_id {
                    if let Some(n) = &o.node_id {
                        unindex(&mut self.tasks_by_node, n, &o.id);
                    }
                    if let Some(n) = &t.node_id {
                        self.tasks_by_node.entry(n.clone()).or_default().insert(t.id.clone());
                    }
                }
                if o.id != t.id {
                    self.tasks.remove(&o.id);
                }
                self.tasks.insert(t.id.clone(), Arc::new(t));
            }
            (old, new) => {
                self.remove(old);
                self.put(new);
            }
        }
    }

    fn remove(&mut self, obj: &Object) {
        match obj {
            Object::Node(n) => {
                self.nodes.remove(&n.id);
            }
            Object::Service(s) => {
                self.service_names.remove(&s.spec.name);
                self.services.remove(&s.id);
            }
            Object::Task(t) => {
                unindex(&mut self.tasks_by_service, &t.service_id, &t.id);
                if let Some(n) = &t.node_id {
                    unindex(&mut self.tasks_by_node, n, &t.id);
                }
                self.tasks.remove(&t.id);
            }
            Object::Network(n) => {
                self.network_names.remove(&n.spec.name);
                self.networks.remove(&n.id);
            }
            Object::Volume(v) => {
                self.volume_names.remove(&v.spec.name);
                self.volumes.remove(&v.id);
            }
            Object::Secret(s) => {
                self.secret_names.remove(&s.spec.name);
                self.secrets.remove(&s.id);
            }
            Object::Config(c) => {
                self.config_names.remove(&c.spec.name);
                self.configs.remove(&c.id);
            }
            Object::Cluster(c) => {
                self.clusters.remove(&c.id);
            }
        }
    }
}

/// Removes `task` from the set of `key`, and the set when it is empty.
fn unindex<K: Ord + Clone>(idx: &mut OrdMap<K, OrdSet<TaskId>>, key: &K, task: &TaskId) {
    let empty = match idx.get_mut(key) {
        Some(set) => {
            set.remove(task);
            set.is_empty()
        }
        None => false,
    };
    if empty {
        idx.remove(key);
    }
}
