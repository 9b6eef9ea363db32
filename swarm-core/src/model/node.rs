use super::{Labels, Meta, Platform, Resources};
use crate::id::NodeId;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// A machine in the cluster: a manager or a worker.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Node {
    /// Node id.
    pub id: NodeId,
    /// Store bookkeeping.
    pub meta: Meta,
    /// What the operator wants of the node.
    pub spec: NodeSpec,
    /// What the node reports about itself.
    pub description: NodeDescription,
    /// What the managers observe about the node.
    pub status: NodeStatus,
    /// For a manager of a networked cluster: its raft id and the addresses
    /// the other nodes reach it at. `None` for workers and for managers of
    /// an in-process cluster.
    pub manager: Option<ManagerStatus>,
}

/// Where a manager is reached, recorded in its Node object so that every
/// manager can find its raft peers and every worker the managers.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ManagerStatus {
    /// The manager's raft id (random, non-zero, unique in the cluster).
    pub raft_id: u64,
    /// `host:port` of its raft listener.
    pub raft_addr: String,
    /// `host:port` of its node API listener (dispatcher, control API, join).
    pub api_addr: String,
}

/// The operator-owned part of a node.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeSpec {
    /// Manager or worker.
    pub role: NodeRole,
    /// Whether the node takes new tasks (active), keeps its tasks but takes
    /// no new ones (pause), or has its tasks moved away (drain).
    pub availability: Availability,
    /// Operator labels, matched by `node.labels.*` constraints.
    pub labels: Labels,
}

/// What a node reports: hostname, platform, capacity, engine labels.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeDescription {
    /// Host name.
    pub hostname: String,
    /// OS and architecture.
    pub platform: Platform,
    /// Total capacity.
    pub resources: Resources,
    /// Labels of the container engine, matched by `engine.labels.*`.
    pub engine_labels: Labels,
}

/// Manager or worker.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Runs tasks only.
    #[default]
    Worker,
    /// Takes part in the raft group (and also runs tasks unless drained).
    Manager,
}

impl NodeRole {
    /// "worker" or "manager".
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Worker => "worker",
            NodeRole::Manager => "manager",
        }
    }
}

/// Whether a node takes tasks.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// Takes new tasks.
    #[default]
    Active,
    /// Keeps running tasks, takes no new ones.
    Pause,
    /// Its tasks are shut down and rescheduled elsewhere.
    Drain,
}

/// The managers' view of a node's health.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Not heard from yet.
    #[default]
    Unknown,
    /// Missed its heartbeats; its tasks are rescheduled.
    Down,
    /// Heartbeating and able to run tasks.
    Ready,
    /// Told to go away (e.g. removed or demoted while connected).
    Disconnected,
}

/// Observed node status.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeStatus {
    /// Ready, down or unknown.
    pub state: NodeState,
    /// Why it is in that state.
    pub message: String,
    /// The address other nodes reach it at (IP, no port), matched by
    /// `node.ip` constraints.
    pub addr: String,
    /// Last heartbeat the managers received.
    pub last_heartbeat: Option<Timestamp>,
}

impl Node {
    /// A ready, active worker named `hostname` with `resources`, on
    /// linux/amd64. Convenient for tests and simulations.
    pub fn ready(id: impl Into<NodeId>, hostname: impl Into<String>, resources: Resources) -> Self {
        Node {
            id: id.into(),
            meta: Meta::default(),
            spec: NodeSpec::default(),
            description: NodeDescription {
                hostname: hostname.into(),
                platform: Platform::new("linux", "amd64"),
                resources,
                engine_labels: Labels::new(),
            },
            status: NodeStatus { state: NodeState::Ready, ..Default::default() },
            manager: None,
        }
    }

    /// True when the node is ready and active (it may receive new tasks):
    /// it passes [`Rule::Ready`](crate::feasibility::Rule::Ready).
    pub fn is_schedulable(&self) -> bool {
        crate::feasibility::check_ready(self).is_ok()
    }
}
