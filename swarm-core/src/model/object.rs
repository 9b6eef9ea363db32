use super::{Cluster, Config, Meta, Network, Node, Secret, Service, Task, Volume};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The kinds of objects in the store.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    /// [`Node`].
    Node,
    /// [`Service`].
    Service,
    /// [`Task`].
    Task,
    /// [`Network`].
    Network,
    /// [`Volume`].
    Volume,
    /// [`Secret`].
    Secret,
    /// [`Config`].
    Config,
    /// [`Cluster`].
    Cluster,
}

impl ObjectKind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Node => "node",
            ObjectKind::Service => "service",
            ObjectKind::Task => "task",
            ObjectKind::Network => "network",
            ObjectKind::Volume => "volume",
            ObjectKind::Secret => "secret",
            ObjectKind::Config => "config",
            ObjectKind::Cluster => "cluster",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Any object in the store.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", content = "object", rename_all = "lowercase")]
#[allow(clippy::large_enum_variant)]
pub enum Object {
    /// A node.
    Node(Node),
    /// A service.
    Service(Service),
    /// A task.
    Task(Task),
    /// A network.
    Network(Network),
    /// A volume.
    Volume(Volume),
    /// A secret.
    Secret(Secret),
    /// A config.
    Config(Config),
    /// The cluster settings.
    Cluster(Cluster),
}

macro_rules! dispatch {
    ($self:expr, $o:ident => $e:expr) => {
        match $self {
            Object::Node($o) => $e,
            Object::Service($o) => $e,
            Object::Task($o) => $e,
            Object::Network($o) => $e,
            Object::Volume($o) => $e,
            Object::Secret($o) => $e,
            Object::Config($o) => $e,
            Object::Cluster($o) => $e,
        }
    };
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Node(_) => ObjectKind::Node,
            Object::Service(_) => ObjectKind::Service,
            Object::Task(_) => ObjectKind::Task,
            Object::Network(_) => ObjectKind::Network,
            Object::Volume(_) => ObjectKind::Volume,
            Object::Secret(_) => ObjectKind::Secret,
            Object::Config(_) => ObjectKind::Config,
            Object::Cluster(_) => ObjectKind::Cluster,
        }
    }

    /// The object's id as a string.
    pub fn id(&self) -> &str {
        dispatch!(self, o => o.id.as_str())
    }

    /// The object's meta.
    pub fn meta(&self) -> &Meta {
        dispatch!(self, o => &o.meta)
    }

    /// The object's meta, mutable.
    pub fn meta_mut(&mut self) -> &mut Meta {
        dispatch!(self, o => &mut o.meta)
    }

    /// The user-facing name, where the kind has one (tasks are named by
    /// [`Task::name`]; nodes by hostname).
    pub fn name(&self) -> String {
        match self {
            Object::Node(n) => n.description.hostname.clone(),
            Object::Service(s) => s.spec.name.clone(),
            Object::Task(t) => t.name(),
            Object::Network(n) => n.spec.name.clone(),
            Object::Volume(v) => v.spec.name.clone(),
            Object::Secret(s) => s.spec.name.clone(),
            Object::Config(c) => c.spec.name.clone(),
            Object::Cluster(c) => c.spec.name.clone(),
        }
    }

    /// The task inside, if this is one.
    pub fn as_task(&self) -> Option<&Task> {
        match self {
            Object::Task(t) => Some(t),
            _ => None,
        }
    }

    /// The service inside, if this is one.
    pub fn as_service(&self) -> Option<&Service> {
        match self {
            Object::Service(s) => Some(s),
            _ => None,
        }
    }

    /// The node inside, if this is one.
    pub fn as_node(&self) -> Option<&Node> {
        match self {
            Object::Node(n) => Some(n),
            _ => None,
        }
    }
}

macro_rules! from_obj {
    ($($t:ident),*) => {$(
        impl From<$t> for Object {
            fn from(o: $t) -> Self {
                Object::$t(o)
            }
        }
    )*};
}
from_obj!(Node, Service, Task, Network, Volume, Secret, Config, Cluster);
