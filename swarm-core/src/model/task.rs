use super::{Meta, TaskSpec};
use crate::id::{NodeId, ServiceId, TaskId};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One scheduled unit of work: a container of a service, in a slot
/// (replicated) or on a node (global).
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Task {
    /// Task id.
    pub id: TaskId,
    /// Store bookkeeping.
    pub meta: Meta,
    /// The service it belongs to.
    pub service_id: ServiceId,
    /// The service's name when the task was created (for logs and names).
    pub service_name: String,
    /// Slot 1..N for replicated services and replicated jobs; `None` for
    /// global ones.
    pub slot: Option<u64>,
    /// The node: assigned by the scheduler, or fixed at creation for global
    /// services.
    pub node_id: Option<NodeId>,
    /// The task template this task runs (a copy taken at creation).
    pub spec: TaskSpec,
    /// The service's `spec_version` at creation.
    pub spec_version: u64,
    /// For jobs: which run of the job this task belongs to.
    pub job_iteration: u64,
    /// The service's endpoint spec at creation (ports to publish).
    pub endpoint: super::EndpointSpec,
    /// What the managers want the task to reach.
    pub desired_state: TaskState,
    /// What was last observed.
    pub status: TaskStatus,
    /// Addresses on the networks the task is attached to.
    pub networks: Vec<NetworkAttachment>,
}

impl Task {
    /// A short name like `web.3.abc123def456` (Swarm's container naming).
    pub fn name(&self) -> String {
        // The first 12 characters, cut on a character boundary: ids are
        // opaque strings and need not be ASCII.
        let id = self.id.as_str();
        let short = id.char_indices().nth(12).map_or(id, |(i, _)| &id[..i]);
        match (self.slot, &self.node_id) {
            (Some(slot), _) => format!("{}.{}.{}", self.service_name, slot, short),
            (None, Some(node)) => format!("{}.{}.{}", self.service_name, node, short),
            (None, None) => format!("{}.{}", self.service_name, short),
        }
    }

    /// True when the task is running (observed) and healthy if it has a
    /// health check: what makes it an endpoint and an updated task.
    pub fn is_running_and_healthy(&self) -> bool {
        self.status.state == TaskState::Running
            && (self.spec.container.health_check.is_none() || self.status.health == Some(HealthState::Healthy))
    }
}

/// The task life cycle. States only move forward; the managers own
/// NEW..ASSIGNED, the agent the rest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Created by an orchestrator.
    #[default]
    New,
    /// Waiting for the scheduler.
    Pending,
    /// Placed on a node.
    Assigned,
    /// The node's agent took it.
    Accepted,
    /// Pulling the image, creating networks, volumes.
    Preparing,
    /// Container created.
    Ready,
    /// Container starting.
    Starting,
    /// Container running.
    Running,
    /// Exited with code 0.
    Complete,
    /// Stopped because its desired state became shutdown.
    Shutdown,
    /// Exited non-zero, failed to start, or turned unhealthy.
    Failed,
    /// The node could not run it.
    Rejected,
    /// Its node was lost; its fate is unknown.
    Orphaned,
    /// Marked for removal; the agent removes the container, then the store
    /// object goes.
    Remove,
}

impl TaskState {
    /// All states in life-cycle order.
    pub const ALL: [TaskState; 14] = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Accepted,
        TaskState::Preparing,
        TaskState::Ready,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Complete,
        TaskState::Shutdown,
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Orphaned,
        TaskState::Remove,
    ];

    /// Upper-case name as Swarm prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "NEW",
            TaskState::Pending => "PENDING",
            TaskState::Assigned => "ASSIGNED",
            TaskState::Accepted => "ACCEPTED",
            TaskState::Preparing => "PREPARING",
            TaskState::Ready => "READY",
            TaskState::Starting => "STARTING",
            TaskState::Running => "RUNNING",
            TaskState::Complete => "COMPLETE",
            TaskState::Shutdown => "SHUTDOWN",
            TaskState::Failed => "FAILED",
            TaskState::Rejected => "REJECTED",
            TaskState::Orphaned => "ORPHANED",
            TaskState::Remove => "REMOVE",
        }
    }

    /// True past RUNNING: the task will never run again.
    pub fn is_terminal(self) -> bool {
        self > TaskState::Running
    }

    /// True when a move from `self` to `to` is legal: forward or staying.
    pub fn can_move_to(self, to: TaskState) -> bool {
        to >= self
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Container health as last probed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Within the start period, or not yet probed.
    Starting,
    /// Probes pass.
    Healthy,
    /// `retries` consecutive probes failed.
    Unhealthy,
}

/// The observed status of a task.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskStatus {
    /// Observed state.
    pub state: TaskState,
    /// When this status was observed.
    pub timestamp: Timestamp,
    /// Human-readable detail (e.g. the scheduler's explanation).
    pub message: String,
    /// Error, when the task failed or was rejected.
    pub err: Option<String>,
    /// Exit code once the container exited.
    pub exit_code: Option<i32>,
    /// The runtime's container id.
    pub container_id: Option<String>,
    /// Health, when the task has a health check.
    pub health: Option<HealthState>,
    /// Host-mode ports actually published.
    pub published_ports: Vec<super::PortConfig>,
    /// When the task reached RUNNING (kept through later states, so a
    /// failure can be dated relative to the start).
    pub started_at: Option<Timestamp>,
}

/// A task's addresses on one network.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkAttachment {
    /// Network name.
    pub network: String,
    /// Addresses (IP, no prefix) of the task on it.
    pub addresses: Vec<String>,
    /// On an overlay network, what the allocator gave (the task's address
    /// is then `addresses[0]`, set before the task is scheduled): enough
    /// for a node to plumb the task without reading the network object.
    /// `None` on node-local networks, where the runtime picks the address
    /// and the agent reports it.
    pub overlay: Option<OverlayAttachment>,
}

/// The network side of a task's overlay attachment (see
/// [`NetworkAttachment::overlay`]).
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OverlayAttachment {
    /// The network's id.
    pub network_id: crate::id::NetworkId,
    /// Its VXLAN network identifier.
    pub vni: u32,
    /// Its subnet (CIDR).
    pub subnet: String,
    /// Its gateway (IP); empty on internal networks, which have no route
    /// out.
    pub gateway: String,
    /// No route outside the network.
    pub internal: bool,
    /// Traffic between nodes is encrypted.
    pub encrypted: bool,
}
