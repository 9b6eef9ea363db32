//! [`Cluster`]: the embedding API, the calls `docker service|node|secret`
//! make, on any [`Store`].
//!
//! Every call validates first (so a bad spec gets a precise error and
//! changes nothing), then commits one transaction, retrying on version
//! conflicts. Services and nodes are found by name or id.
//!
//! Updating a service bumps its spec version, and so rolls its tasks, only
//! when something the tasks run changed (the task template, networks or
//! ports); a label or the replica count does not restart anything.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::Arc;
//! use swarm_core::cluster::{Cluster, ClusterError};
//! use swarm_core::model::ServiceSpec;
//! use swarm_core::store::MemStore;
//!
//! let cluster = Cluster::new(Arc::new(MemStore::new()));
//! cluster.create_service(ServiceSpec::replicated("web", "nginx:1.27", 3)).await.unwrap();
//! cluster.scale("web", 5).await.unwrap();
//! assert_eq!(cluster.inspect_service("web").await.unwrap().spec.mode.replicas, Some(5));
//! // A bad spec is refused with the field named, and nothing changes.
//! let err = cluster.create_service(ServiceSpec::replicated("Bad Name", "nginx:1.27", 1)).await.unwrap_err();
//! assert!(matches!(err, ClusterError::Invalid(_)), "{err}");
//! assert!(err.to_string().contains("name"), "{err}");
//! assert_eq!(cluster.list_services().await.unwrap().len(), 1);
//! # }
//! ```

use crate::id::{ConfigId, IdGen, NetworkId, NodeId, SecretId, ServiceId, TaskId, VolumeId};
use crate::model::*;
use crate::state::{Action, State, Transaction};
use crate::store::{Store, StoreError, Watch, update_with_retry};
use crate::time::{self, Timestamp};
use crate::validate::{self, ValidationError};
use std::sync::{Arc, Mutex};

/// Why a cluster call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// No such object.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Kind.
        kind: ObjectKind,
        /// Name or id asked for.
        name: String,
    },
    /// The spec is invalid.
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    /// The node still runs tasks.
    #[error("node {node} still runs {tasks} task(s): drain it first or force the removal")]
    NodeHasTasks {
        /// The node.
        node: String,
        /// Tasks not yet stopped.
        tasks: usize,
    },
    /// A manager of a networked cluster (a raft member) cannot be removed
    /// as it is: it must be demoted first, as in Swarm.
    #[error("node {node} is a manager (raft id {raft_id}): demote it to a worker before removing it")]
    NodeIsManager {
        /// The node.
        node: String,
        /// Its raft id.
        raft_id: u64,
    },
    /// Demoting a manager would leave the raft group without a reachable
    /// quorum (or without managers); nothing changed.
    #[error("{0}")]
    WouldLoseQuorum(QuorumLoss),
    /// No previous spec to roll back to.
    #[error("service {0:?} has no previous spec to roll back to")]
    NoPreviousSpec(String),
    /// The operation does not apply to this service.
    #[error("service {service:?}: {reason}")]
    NotApplicable {
        /// The service.
        service: String,
        /// Why.
        reason: String,
    },
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which tasks [`Cluster::list_tasks`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TaskFilter {
    /// Only this service (name or id).
    pub service: Option<String>,
    /// Only this node (id or hostname).
    pub node: Option<String>,
    /// Only tasks the managers still want running (desired <= RUNNING).
    pub live_only: bool,
}

/// A service's task counts, as `docker service ls` shows them (the Engine
/// API's `ServiceStatus`, `GET /services?status=true`): computed by the
/// manager that answers, so a client learns them without listing every task.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceStatus {
    /// Tasks whose last reported state is RUNNING.
    pub running_tasks: u64,
    /// Tasks the managers want: the replica count for a replicated
    /// service, the concurrency for a replicated job, and for global
    /// services and jobs the tasks still wanted running (desired <= RUNNING).
    pub desired_tasks: u64,
    /// Tasks that completed (jobs).
    pub completed_tasks: u64,
}

/// Something that happened in the cluster, like a line of `docker events`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClusterEvent {
    /// Store revision.
    pub revision: Revision,
    /// When.
    pub timestamp: Timestamp,
    /// Object kind.
    pub kind: ObjectKind,
    /// Create, update or delete.
    pub action: Action,
    /// Object id.
    pub id: String,
    /// Object name.
    pub name: String,
    /// What changed, e.g. "RUNNING -> FAILED: task: non-zero exit (1)".
    pub detail: String,
}

/// A stream of [`ClusterEvent`]s.
pub struct EventStream {
    watch: Watch,
    buffered: std::collections::VecDeque<ClusterEvent>,
}

impl EventStream {
    /// The next event.
    pub async fn next(&mut self) -> Result<ClusterEvent, StoreError> {
        loop {
            if let Some(e) = self.buffered.pop_front() {
                return Ok(e);
            }
            let change = self.watch.next().await?;
            for ev in &change.events {
                self.buffered.push_back(ClusterEvent {
                    revision: change.revision,
                    timestamp: change.timestamp,
                    kind: ev.object.kind(),
                    action: ev.action,
                    id: ev.object.id().to_string(),
                    name: ev.object.name(),
                    detail: describe(&ev.object, ev.old.as_ref()),
                });
            }
        }
    }
}

fn describe(new: &Object, old: Option<&Object>) -> String {
    match (new, old) {
        (Object::Task(t), Some(Object::Task(o))) if t.status.state != o.status.state => {
            let why = t.status.err.clone().unwrap_or_else(|| t.status.message.clone());
            let node = t.node_id.as_ref().map(|n| format!(" on {n}")).unwrap_or_default();
            format!("{} -> {}{node}: {why}", o.status.state, t.status.state)
        }
        (Object::Task(t), Some(Object::Task(o))) if t.desired_state != o.desired_state => {
            format!("desired {} -> {}", o.desired_state, t.desired_state)
        }
        (Object::Task(t), _) => format!("{}: {}", t.status.state, t.status.message),
        (Object::Node(n), Some(Object::Node(o))) if n.status.state != o.status.state => {
            format!("{:?} -> {:?} {}", o.status.state, n.status.state, n.status.message)
        }
        (Object::Node(n), Some(Object::Node(o))) if n.spec.availability != o.spec.availability => {
            format!("availability {:?} -> {:?}", o.spec.availability, n.spec.availability)
        }
        (Object::Service(s), _) => match &s.update_status {
            Some(u) => format!("{:?}: {}", u.state, u.message),
            None => String::new(),
        },
        _ => String::new(),
    }
}

/// One raft voter as the demotion check ([`check_voter_removal`]) sees
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoterReach {
    /// Its raft id.
    pub raft_id: u64,
    /// Its node id (`raft id N` when no Node object records it).
    pub node: String,
    /// Whether it is heard from: its Node is READY (its agent heartbeats
    /// to the leader), what `node ls` shows as `reachable`.
    pub reachable: bool,
    /// Already on its way out (demoted, or no longer recorded) and not
    /// yet removed from the voters: not counted among those that remain.
    pub leaving: bool,
}

/// Why removing a voter was refused: the voters left would not form a
/// reachable quorum.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuorumLoss {
    /// The manager whose demotion was refused.
    pub node: String,
    /// Voters that would remain.
    pub remaining: u64,
    /// Of those, how many are reachable now.
    pub reachable: u64,
    /// The quorum of `remaining`.
    pub quorum: u64,
    /// The unreachable ones that would remain, by node id.
    pub unreachable: Vec<String>,
}

impl std::fmt::Display for QuorumLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.remaining == 0 {
            return write!(f, "node {} is the last manager: a cluster needs one; promote another first", self.node);
        }
        let plural = if self.reachable == 1 { "" } else { "s" };
        write!(
            f,
            "demoting node {} would leave {} reachable manager{plural} of {}: a quorum needs {}",
            self.node, self.reachable, self.remaining, self.quorum
        )?;
        if !self.unreachable.is_empty() {
            write!(f, " (unreachable: {})", self.unreachable.join(", "))?;
        }
        write!(f, "; bring the unreachable managers back, or demote them first")
    }
}

/// The raft `voters` as [`check_voter_removal`] sees them in `state`: each
/// one's node (the Node whose manager status has its raft id), whether it
/// is reachable (READY) and whether it is already leaving (its role is
/// worker: demoted, removal pending; or no Node records it: the
/// membership reconciler removes such voters).
pub fn voter_reach(state: &State, voters: &[u64]) -> Vec<VoterReach> {
    voters
        .iter()
        .map(|id| match state.nodes().find(|n| n.manager.as_ref().is_some_and(|m| m.raft_id == *id)) {
            Some(n) => VoterReach {
                raft_id: *id,
                node: n.id.to_string(),
                reachable: n.status.state == NodeState::Ready,
                leaving: n.spec.role == NodeRole::Worker,
            },
            None => VoterReach { raft_id: *id, node: format!("raft id {id}"), reachable: false, leaving: true },
        })
        .collect()
}

/// Whether the voter `removing` may leave the raft group: the voters that
/// remain (all but it and those already leaving) must keep a quorum among
/// the reachable ones, as SwarmKit's `CanRemoveMember` requires for a
/// demotion. Removing the last one is refused. Removing a raft id that is
/// not a voter loses nothing.
pub fn check_voter_removal(voters: &[VoterReach], removing: u64) -> Result<(), QuorumLoss> {
    let Some(target) = voters.iter().find(|v| v.raft_id == removing) else { return Ok(()) };
    let left: Vec<&VoterReach> = voters.iter().filter(|v| v.raft_id != removing && !v.leaving).collect();
    let quorum = left.len() / 2 + 1;
    let reachable = left.iter().filter(|v| v.reachable).count();
    if !left.is_empty() && reachable >= quorum {
        return Ok(());
    }
    Err(QuorumLoss {
        node: target.node.clone(),
        remaining: left.len() as u64,
        reachable: reachable as u64,
        quorum: quorum as u64,
        unreachable: left.iter().filter(|v| !v.reachable).map(|v| v.node.clone()).collect(),
    })
}

/// The raft group's voters, asked when a demotion is decided.
type Voters = Arc<dyn Fn() -> Vec<u64> + Send + Sync>;

/// The embedding API. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    store: Arc<dyn Store>,
    ids: Arc<Mutex<IdGen>>,
    voters: Option<Voters>,
}

fn task_affecting(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    a.task_template != b.task_template || a.networks != b.networks || a.endpoint_spec != b.endpoint_spec
}

impl Cluster {
    /// A cluster handle over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Cluster { store, ids: Arc::new(Mutex::new(IdGen::from_entropy())), voters: None }
    }

    /// Like [`Cluster::new`] with reproducible ids.
    pub fn with_seed(store: Arc<dyn Store>, seed: u64) -> Self {
        Cluster { store, ids: Arc::new(Mutex::new(IdGen::seeded(seed))), voters: None }
    }

    /// The same cluster, told the raft group's voters (`voters` is asked
    /// at each demotion): demoting a manager that is a voter is then
    /// refused ([`ClusterError::WouldLoseQuorum`]) when the voters left
    /// would not keep a reachable quorum ([`check_voter_removal`]).
    /// Without it (an in-process cluster has no raft group) demotions are
    /// not checked.
    pub fn with_voters(mut self, voters: impl Fn() -> Vec<u64> + Send + Sync + 'static) -> Self {
        self.voters = Some(Arc::new(voters));
        self
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn next_id<T: From<String>>(&self) -> T {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).next_id()
    }

    async fn state(&self) -> Result<Arc<State>, ClusterError> {
        Ok(self.store.snapshot().await?)
    }

    /// Reads a snapshot, lets `build` make a transaction (or refuse with an
    /// error, or find nothing to do) and commits it, again from a fresh
    /// snapshot on a version conflict.
    async fn write<F>(&self, mut build: F) -> Result<(), ClusterError>
    where
        F: FnMut(&State) -> Result<Option<Transaction>, ClusterError> + Send,
    {
        let mut refused = None;
        update_with_retry(self.store.as_ref(), 10, |state| match build(state) {
            Ok(tx) => tx,
            Err(e) => {
                refused = Some(e);
                None
            }
        })
        .await?;
        refused.map_or(Ok(()), Err)
    }

    fn find_service(state: &State, name: &str) -> Result<Service, ClusterError> {
        state
            .service_by_name(name)
            .or_else(|| state.service(&ServiceId::new(name)))
            .map(|s| s.as_ref().clone())
            .ok_or_else(|| ClusterError::NotFound { kind: ObjectKind::Service, name: name.to_string() })
    }

    fn find_node(state: &State, name: &str) -> Result<Node, ClusterError> {
        state
            .node(&NodeId::new(name))
            .or_else(|| state.nodes().find(|n| n.description.hostname == name))
            .map(|n| n.as_ref().clone())
            .ok_or_else(|| ClusterError::NotFound { kind: ObjectKind::Node, name: name.to_string() })
    }

    /// Creates the cluster settings object (or replaces its spec).
    pub async fn set_cluster_spec(&self, spec: ClusterSpec) -> Result<(), ClusterError> {
        validate::validate_cluster_spec(&spec)?;
        let id: crate::id::ClusterId = self.next_id();
        update_with_retry(self.store.as_ref(), 10, |state| match state.cluster() {
            Some(c) => {
                let mut c = c.as_ref().clone();
                c.spec = spec.clone();
                Some(Transaction::new().update(c))
            }
            None => Some(Transaction::new().create(Cluster_ {
                id: id.clone(),
                meta: Meta::default(),
                spec: spec.clone(),
                security: Default::default(),
            })),
        })
        .await?;
        Ok(())
    }

    /// Creates a service; returns its id.
    pub async fn create_service(&self, spec: ServiceSpec) -> Result<ServiceId, ClusterError> {
        validate::validate_service_spec(&spec)?;
        let id: ServiceId = self.next_id();
        let svc = Service { id: id.clone(), spec, spec_version: 1, job_iteration: 1, ..Default::default() };
        self.store.commit(Transaction::new().create(svc)).await?;
        tracing::info!(service = %id, "service created");
        Ok(id)
    }

    /// Replaces a service's spec. Tasks are rolled (spec version bumped, a
    /// rolling update started) only if the task template, networks or
    /// ports changed; a job runs again.
    pub async fn update_service(&self, name: &str, spec: ServiceSpec) -> Result<(), ClusterError> {
        validate::validate_service_spec(&spec)?;
        self.change_spec(name, |_| Ok(spec.clone())).await
    }

    /// Lets `f` change a service's current spec and stores the result, as
    /// [`Cluster::update_service`] does. `f` works on the spec read in the
    /// same transaction (it runs again if a concurrent write wins), so no
    /// other change to the service is lost.
    pub async fn modify_service(
        &self,
        name: &str,
        mut f: impl FnMut(&mut ServiceSpec) + Send,
    ) -> Result<(), ClusterError> {
        self.change_spec(name, |svc| {
            let mut spec = svc.spec.clone();
            f(&mut spec);
            Ok(spec)
        })
        .await
    }

    /// The one place a service's spec changes: `next` derives the new spec
    /// from the stored service; the spec version and update status follow.
    async fn change_spec(
        &self,
        name: &str,
        mut next: impl FnMut(&Service) -> Result<ServiceSpec, ClusterError> + Send,
    ) -> Result<(), ClusterError> {
        let now = time::now();
        self.write(|state| {
            let mut svc = Self::find_service(state, name)?;
            let spec = next(&svc)?;
            validate::validate_service_spec(&spec)?;
            if task_affecting(&svc.spec, &spec) {
                svc.previous_spec = Some(Box::new(svc.spec.clone()));
                svc.spec_version += 1;
                if spec.mode.is_job() {
                    svc.job_iteration += 1;
                }
                svc.update_status = Some(UpdateStatus {
                    state: UpdateState::Updating,
                    started_at: Some(now),
                    completed_at: None,
                    message: "update in progress".into(),
                });
            }
            svc.spec = spec;
            Ok(Some(Transaction::new().update(svc)))
        })
        .await
    }

    /// Forces a rolling restart with an unchanged spec. The counter wraps
    /// at `u64::MAX`: what matters is that it changes.
    pub async fn force_update(&self, name: &str) -> Result<(), ClusterError> {
        self.modify_service(name, |s| s.task_template.force_update = s.task_template.force_update.wrapping_add(1)).await
    }

    /// Sets the replica count of a replicated service.
    pub async fn scale(&self, name: &str, replicas: u64) -> Result<(), ClusterError> {
        self.change_spec(name, |svc| {
            if svc.spec.mode.kind != ModeKind::Replicated {
                return Err(ClusterError::NotApplicable {
                    service: svc.spec.name.clone(),
                    reason: "only replicated services can be scaled".into(),
                });
            }
            let mut spec = svc.spec.clone();
            spec.mode.replicas = Some(replicas);
            Ok(spec)
        })
        .await
    }

    /// Rolls a service back to its previous spec by hand.
    pub async fn rollback_service(&self, name: &str) -> Result<(), ClusterError> {
        let now = time::now();
        self.write(|state| {
            let mut svc = Self::find_service(state, name)?;
            let prev = svc.previous_spec.take().ok_or_else(|| ClusterError::NoPreviousSpec(name.to_string()))?;
            let cur = std::mem::replace(&mut svc.spec, *prev);
            svc.previous_spec = Some(Box::new(cur));
            svc.spec_version += 1;
            svc.update_status = Some(UpdateStatus {
                state: UpdateState::RollbackStarted,
                started_at: Some(now),
                completed_at: None,
                message: "manually requested rollback".into(),
            });
            Ok(Some(Transaction::new().update(svc)))
        })
        .await
    }

    /// Moves a service's update status along the first of `moves` whose
    /// `from` state it is in.
    async fn move_update(&self, name: &str, moves: &[(UpdateState, UpdateState, &str)]) -> Result<(), ClusterError> {
        self.write(|state| {
            let mut svc = Self::find_service(state, name)?;
            let current = svc.update_status.as_ref().map(|u| u.state);
            let Some((_, to, msg)) = moves.iter().find(|(from, _, _)| Some(*from) == current) else {
                let wanted: Vec<UpdateState> = moves.iter().map(|m| m.0).collect();
                return Err(ClusterError::NotApplicable {
                    service: name.to_string(),
                    reason: format!("its update is in state {current:?}, not one of {wanted:?}"),
                });
            };
            if let Some(st) = svc.update_status.as_mut() {
                st.state = *to;
                st.message = msg.to_string();
            }
            Ok(Some(Transaction::new().update(svc)))
        })
        .await
    }

    /// Pauses a rolling update (or rollback).
    pub async fn pause_update(&self, name: &str) -> Result<(), ClusterError> {
        self.move_update(
            name,
            &[
                (UpdateState::Updating, UpdateState::Paused, "update paused by hand"),
                (UpdateState::RollbackStarted, UpdateState::RollbackPaused, "rollback paused by hand"),
            ],
        )
        .await
    }

    /// Resumes a paused update (or rollback).
    pub async fn resume_update(&self, name: &str) -> Result<(), ClusterError> {
        self.move_update(
            name,
            &[
                (UpdateState::Paused, UpdateState::Updating, "update resumed"),
                (UpdateState::RollbackPaused, UpdateState::RollbackStarted, "rollback resumed"),
            ],
        )
        .await
    }

    /// Removes a service; its tasks are stopped and removed.
    pub async fn remove_service(&self, name: &str) -> Result<(), ClusterError> {
        self.write(|state| {
            let svc = Self::find_service(state, name)?;
            let mut tx = Transaction::new().delete(ObjectKind::Service, svc.id.to_string(), svc.meta.version);
            for t in state.tasks_of_service(&svc.id) {
                if t.desired_state < TaskState::Remove {
                    let mut t = t.as_ref().clone();
                    t.desired_state = TaskState::Remove;
                    tx = tx.update(t);
                }
            }
            Ok(Some(tx))
        })
        .await
    }

    /// A service by name or id.
    pub async fn inspect_service(&self, name: &str) -> Result<Service, ClusterError> {
        Self::find_service(&*self.state().await?, name)
    }

    /// Every service.
    pub async fn list_services(&self) -> Result<Vec<Service>, ClusterError> {
        Ok(self.state().await?.services().map(|s| s.as_ref().clone()).collect())
    }

    /// The task counts of a service by name or id, as `docker service ls`
    /// shows them.
    pub async fn service_status(&self, name: &str) -> Result<ServiceStatus, ClusterError> {
        let state = self.state().await?;
        let service = Self::find_service(&state, name)?;
        Ok(Self::status_of(&state, &service))
    }

    /// Every service with its task counts (`docker service ls`).
    pub async fn list_services_with_status(&self) -> Result<Vec<(Service, ServiceStatus)>, ClusterError> {
        let state = self.state().await?;
        Ok(state
            .services()
            .map(|s| {
                let status = Self::status_of(&state, s);
                (s.as_ref().clone(), status)
            })
            .collect())
    }

    fn status_of(state: &State, service: &Service) -> ServiceStatus {
        let mut st = ServiceStatus::default();
        let mut live = 0;
        for t in state.tasks_of_service(&service.id) {
            match t.status.state {
                TaskState::Running => st.running_tasks += 1,
                TaskState::Complete => st.completed_tasks += 1,
                _ => {}
            }
            if t.desired_state <= TaskState::Running {
                live += 1;
            }
        }
        st.desired_tasks = match service.spec.mode.kind {
            ModeKind::Replicated => service.spec.mode.replicas(),
            ModeKind::ReplicatedJob => service.spec.mode.max_concurrent(),
            _ => live,
        };
        st
    }

    /// Tasks, filtered.
    pub async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<Task>, ClusterError> {
        let state = self.state().await?;
        let svc = match &filter.service {
            Some(n) => Some(Self::find_service(&state, n)?.id),
            None => None,
        };
        let node = match &filter.node {
            Some(n) => Some(Self::find_node(&state, n)?.id),
            None => None,
        };
        let mut out: Vec<Task> = state
            .tasks()
            .filter(|t| svc.as_ref().is_none_or(|s| &t.service_id == s))
            .filter(|t| node.as_ref().is_none_or(|n| t.node_id.as_ref() == Some(n)))
            .filter(|t| !filter.live_only || t.desired_state <= TaskState::Running)
            .map(|t| t.as_ref().clone())
            .collect();
        out.sort_by(|a, b| {
            (&a.service_name, a.slot, a.meta.created_revision).cmp(&(&b.service_name, b.slot, b.meta.created_revision))
        });
        Ok(out)
    }

    /// One task.
    pub async fn inspect_task(&self, id: &str) -> Result<Task, ClusterError> {
        self.state()
            .await?
            .task(&TaskId::new(id))
            .map(|t| t.as_ref().clone())
            .ok_or_else(|| ClusterError::NotFound { kind: ObjectKind::Task, name: id.to_string() })
    }

    /// Every node.
    pub async fn list_nodes(&self) -> Result<Vec<Node>, ClusterError> {
        Ok(self.state().await?.nodes().map(|n| n.as_ref().clone()).collect())
    }

    /// A node by id or hostname.
    pub async fn inspect_node(&self, name: &str) -> Result<Node, ClusterError> {
        Self::find_node(&*self.state().await?, name)
    }

    async fn modify_node(&self, name: &str, f: impl Fn(&mut Node) + Send + Sync) -> Result<(), ClusterError> {
        self.write(|state| {
            let mut n = Self::find_node(state, name)?;
            f(&mut n);
            Ok(Some(Transaction::new().update(n)))
        })
        .await
    }

    /// Sets a node's availability: active, pause or drain.
    pub async fn set_node_availability(&self, name: &str, availability: Availability) -> Result<(), ClusterError> {
        self.modify_node(name, |n| n.spec.availability = availability).await
    }

    /// Sets (or with `None` removes) a node label.
    pub async fn set_node_label(&self, name: &str, key: &str, value: Option<&str>) -> Result<(), ClusterError> {
        self.modify_node(name, |n| match value {
            Some(v) => {
                n.spec.labels.insert(key.to_string(), v.to_string());
            }
            None => {
                n.spec.labels.remove(key);
            }
        })
        .await
    }

    /// Sets a node's role. Demoting a manager that is a raft voter is
    /// refused when the voters left would not keep a reachable quorum
    /// (with [`Cluster::with_voters`]; see [`check_voter_removal`]).
    pub async fn set_node_role(&self, name: &str, role: NodeRole) -> Result<(), ClusterError> {
        let voters = match (&self.voters, role) {
            (Some(voters), NodeRole::Worker) => Some(voters()),
            _ => None,
        };
        self.write(|state| {
            let mut n = Self::find_node(state, name)?;
            if let (Some(voters), Some(m)) = (&voters, &n.manager)
                && n.spec.role == NodeRole::Manager
            {
                check_voter_removal(&voter_reach(state, voters), m.raft_id).map_err(ClusterError::WouldLoseQuorum)?;
            }
            n.spec.role = role;
            Ok(Some(Transaction::new().update(n)))
        })
        .await
    }

    /// Removes a node. Refused while it still runs tasks (not yet in a
    /// terminal state) unless `force`; with `force`, its tasks are orphaned
    /// and replaced elsewhere.
    pub async fn remove_node(&self, name: &str, force: bool) -> Result<(), ClusterError> {
        let now = time::now();
        self.write(|state| {
            let node = Self::find_node(state, name)?;
            if let Some(m) = &node.manager {
                return Err(ClusterError::NodeIsManager { node: node.id.to_string(), raft_id: m.raft_id });
            }
            let running: Vec<&Arc<Task>> =
                state.tasks_on_node(&node.id).filter(|t| !t.status.state.is_terminal()).collect();
            if !running.is_empty() && !force {
                return Err(ClusterError::NodeHasTasks { node: node.id.to_string(), tasks: running.len() });
            }
            let mut tx = Transaction::new();
            for t in running {
                let mut t = t.as_ref().clone();
                t.status.state = TaskState::Orphaned;
                t.status.message = "node removed".into();
                t.status.timestamp = now;
                if t.desired_state < TaskState::Shutdown {
                    t.desired_state = TaskState::Shutdown;
                }
                tx = tx.update(t);
            }
            Ok(Some(tx.delete(ObjectKind::Node, node.id.to_string(), node.meta.version)))
        })
        .await
    }

    /// Creates a secret.
    pub async fn create_secret(&self, name: &str, data: Vec<u8>) -> Result<SecretId, ClusterError> {
        let spec = SecretSpec { name: name.into(), data: SecretBytes(data), ..Default::default() };
        validate::validate_secret_spec(&spec)?;
        let id: SecretId = self.next_id();
        self.store.commit(Transaction::new().create(Secret { id: id.clone(), spec, ..Default::default() })).await?;
        Ok(id)
    }

    /// Creates a config.
    pub async fn create_config(&self, name: &str, data: Vec<u8>) -> Result<ConfigId, ClusterError> {
        let spec = ConfigSpec { name: name.into(), data, ..Default::default() };
        validate::validate_config_spec(&spec)?;
        let id: ConfigId = self.next_id();
        self.store.commit(Transaction::new().create(Config { id: id.clone(), spec, ..Default::default() })).await?;
        Ok(id)
    }

    /// Creates a network.
    pub async fn create_network(&self, spec: NetworkSpec) -> Result<NetworkId, ClusterError> {
        validate::validate_network_spec(&spec)?;
        validate::validate_network_in(&*self.state().await?, &spec)?;
        let id: NetworkId = self.next_id();
        self.store.commit(Transaction::new().create(Network { id: id.clone(), spec, ..Default::default() })).await?;
        Ok(id)
    }

    /// Creates a volume.
    pub async fn create_volume(&self, spec: VolumeSpec) -> Result<VolumeId, ClusterError> {
        validate::validate_volume_spec(&spec)?;
        let id: VolumeId = self.next_id();
        self.store.commit(Transaction::new().create(Volume { id: id.clone(), spec, ..Default::default() })).await?;
        Ok(id)
    }

    /// Removes a secret, config, network or volume by name (refused while a
    /// service uses it).
    pub async fn remove_object(&self, kind: ObjectKind, name: &str) -> Result<(), ClusterError> {
        let state = self.state().await?;
        let found = match kind {
            ObjectKind::Secret => state.secret_by_name(name).map(|o| (o.id.to_string(), o.meta.version)),
            ObjectKind::Config => state.config_by_name(name).map(|o| (o.id.to_string(), o.meta.version)),
            ObjectKind::Network => state.network_by_name(name).map(|o| (o.id.to_string(), o.meta.version)),
            ObjectKind::Volume => state.volume_by_name(name).map(|o| (o.id.to_string(), o.meta.version)),
            _ => None,
        };
        let (id, version) = found.ok_or_else(|| ClusterError::NotFound { kind, name: name.to_string() })?;
        self.store.commit(Transaction::new().delete(kind, id, version)).await?;
        Ok(())
    }

    /// Events from now on.
    pub async fn events(&self) -> Result<EventStream, ClusterError> {
        let rev = self.state().await?.revision();
        self.events_since(rev).await
    }

    /// Events after revision `from`.
    pub async fn events_since(&self, from: Revision) -> Result<EventStream, ClusterError> {
        Ok(EventStream { watch: self.store.watch(from).await?, buffered: Default::default() })
    }
}

use crate::model::Cluster as Cluster_;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn voter(raft_id: u64, node: &str, reachable: bool) -> VoterReach {
        VoterReach { raft_id, node: node.into(), reachable, leaving: false }
    }

    #[test]
    fn a_demotion_must_leave_a_reachable_quorum() {
        let all_up = [voter(1, "m1", true), voter(2, "m2", true), voter(3, "m3", true)];
        assert_eq!(check_voter_removal(&all_up, 2), Ok(()));
        // m3 unreachable: demoting m2 leaves m1 alone reachable of two.
        let m3_down = [voter(1, "m1", true), voter(2, "m2", true), voter(3, "m3", false)];
        let loss = check_voter_removal(&m3_down, 2).unwrap_err();
        assert_eq!(
            loss,
            QuorumLoss { node: "m2".into(), remaining: 2, reachable: 1, quorum: 2, unreachable: vec!["m3".into()] }
        );
        assert_eq!(
            loss.to_string(),
            "demoting node m2 would leave 1 reachable manager of 2: a quorum needs 2 (unreachable: m3); \
             bring the unreachable managers back, or demote them first"
        );
        // Demoting the unreachable one is fine: two reachable of two remain.
        assert_eq!(check_voter_removal(&m3_down, 3), Ok(()));
        // A raft id that is not a voter loses nothing.
        assert_eq!(check_voter_removal(&m3_down, 9), Ok(()));
    }

    #[test]
    fn the_last_manager_cannot_be_demoted() {
        let loss = check_voter_removal(&[voter(1, "m1", true)], 1).unwrap_err();
        assert_eq!(loss.remaining, 0);
        assert!(loss.to_string().starts_with("node m1 is the last manager"), "{loss}");
        // Nor the last one that is not already leaving.
        let mut leaving = voter(1, "m1", true);
        leaving.leaving = true;
        let loss = check_voter_removal(&[leaving, voter(2, "m2", true)], 2).unwrap_err();
        assert_eq!((loss.node.as_str(), loss.remaining), ("m2", 0));
    }

    #[test]
    fn voters_already_leaving_do_not_count_among_those_left() {
        // m3 demoted, its removal pending: demoting m2 leaves m1 alone.
        let mut m3 = voter(3, "m3", true);
        m3.leaving = true;
        assert_eq!(check_voter_removal(&[voter(1, "m1", true), voter(2, "m2", true), m3.clone()], 2), Ok(()));
        // With m1 unreachable, it would leave nobody reachable.
        let loss = check_voter_removal(&[voter(1, "m1", false), voter(2, "m2", true), m3], 2).unwrap_err();
        assert_eq!((loss.remaining, loss.reachable, loss.quorum), (1, 0, 1));
    }

    #[test]
    fn swarms_quorum_table_decides_every_size() {
        // n voters, k of the others unreachable: demoting a reachable one
        // is allowed while n - 1 - k >= quorum(n - 1).
        for n in 1..=7u64 {
            for k in 0..n {
                let voters: Vec<VoterReach> =
                    (1..=n).map(|i| voter(i, &format!("m{i}"), i == 1 || i > k + 1)).collect();
                let (left, quorum) = (n - 1, (n - 1) / 2 + 1);
                let allowed = left > 0 && left - k >= quorum;
                assert_eq!(check_voter_removal(&voters, 1).is_ok(), allowed, "{n} voters, {k} unreachable");
            }
        }
    }

    fn manager(id: &str, raft_id: u64, state: NodeState) -> Node {
        let mut n = Node::ready(id, id, Resources::default());
        n.spec.role = NodeRole::Manager;
        n.status.state = state;
        n.manager = Some(ManagerStatus { raft_id, raft_addr: String::new(), api_addr: String::new() });
        n
    }

    #[tokio::test]
    async fn a_refused_demotion_changes_nothing() {
        let store = Arc::new(MemStore::new());
        let mut tx = Transaction::new();
        for (id, raft_id, state) in
            [("m1", 1, NodeState::Ready), ("m2", 2, NodeState::Ready), ("m3", 3, NodeState::Down)]
        {
            tx = tx.create(manager(id, raft_id, state));
        }
        store.commit(tx).await.unwrap();
        let cluster = Cluster::new(store.clone()).with_voters(|| vec![1, 2, 3]);
        let before = store.state();
        let err = cluster.set_node_role("m2", NodeRole::Worker).await.unwrap_err();
        assert!(matches!(&err, ClusterError::WouldLoseQuorum(l) if l.reachable == 1 && l.remaining == 2), "{err}");
        assert_eq!(store.state().revision(), before.revision(), "nothing written");
        // Promoting, or demoting the unreachable one, is not checked / allowed.
        cluster.set_node_role("m1", NodeRole::Manager).await.unwrap();
        cluster.set_node_role("m3", NodeRole::Worker).await.unwrap();
        // Without the voters (an in-process cluster) nothing is checked.
        Cluster::new(store.clone()).set_node_role("m2", NodeRole::Worker).await.unwrap();
        assert_eq!(store.state().node(&NodeId::new("m2")).unwrap().spec.role, NodeRole::Worker);
    }
}
