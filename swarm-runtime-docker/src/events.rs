//! The Engine's event stream, narrowed to this project's containers and
//! to what an agent acts on: starts, exits (with the exit code), OOM kills,
//! health transitions and removals.
//!
//! [`Runtime::wait`](swarm_core::runtime::Runtime::wait) is the per-container
//! way to learn of an exit; the stream is the node-wide one (one connection
//! for every container), which an agent uses to notice exits and health
//! changes of containers it is not waiting on, e.g. after a restart.

use crate::runtime::map_err;
use bollard::Docker;
use bollard::models::{EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::EventsOptionsBuilder;
use futures_util::{Stream, StreamExt};
use std::collections::HashMap;
use swarm_core::model::Labels;
use swarm_core::runtime::{RuntimeError, labels};

/// What happened to a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerEventKind {
    /// It started.
    Started,
    /// Its process exited with this code.
    Exited {
        /// Exit code (137 after SIGKILL).
        code: i32,
    },
    /// The kernel's OOM killer hit it (an `Exited` follows).
    OomKilled,
    /// Its Docker HEALTHCHECK changed: `true` healthy, `false` unhealthy.
    Health {
        /// The new health.
        healthy: bool,
    },
    /// It was removed.
    Removed,
}

/// One event about one of the project's containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    /// Container id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// The task id label, when present.
    pub task_id: Option<String>,
    /// What happened.
    pub kind: ContainerEventKind,
    /// The container's labels (as the Engine reports them with the event).
    pub labels: Labels,
}

/// Maps one Engine event; `None` for events the agent has no use for.
pub(crate) fn map_event(ev: EventMessage) -> Option<ContainerEvent> {
    if ev.typ != Some(EventMessageTypeEnum::CONTAINER) {
        return None;
    }
    let action = ev.action.unwrap_or_default();
    let actor = ev.actor.unwrap_or_default();
    let attrs = actor.attributes.unwrap_or_default();
    let kind = match action.as_str() {
        "start" => ContainerEventKind::Started,
        "die" => ContainerEventKind::Exited { code: attrs.get("exitCode").and_then(|c| c.parse().ok()).unwrap_or(-1) },
        "oom" => ContainerEventKind::OomKilled,
        "destroy" => ContainerEventKind::Removed,
        "health_status: healthy" => ContainerEventKind::Health { healthy: true },
        "health_status: unhealthy" => ContainerEventKind::Health { healthy: false },
        _ => return None,
    };
    // Attributes are the container's labels plus a few of the engine's own.
    let name = attrs.get("name").cloned().unwrap_or_default();
    let labels: Labels =
        attrs.into_iter().filter(|(k, _)| !matches!(k.as_str(), "name" | "image" | "exitCode")).collect();
    Some(ContainerEvent {
        id: actor.id.unwrap_or_default(),
        name,
        task_id: labels.get(labels::TASK_ID).cloned(),
        kind,
        labels,
    })
}

/// The filtered stream (see [`crate::DockerRuntime::events`]): events from
/// the moment of this call on.
pub(crate) fn event_stream(
    docker: &Docker,
) -> impl Stream<Item = Result<ContainerEvent, RuntimeError>> + Send + 'static {
    let mut filters: HashMap<String, Vec<String>> = HashMap::new();
    filters.insert("type".into(), vec!["container".into()]);
    filters.insert("label".into(), vec![format!("{}=true", labels::MANAGED)]);
    // The request goes out on the stream's first poll; `since` = now makes
    // the engine replay what happened between this call and that poll.
    // (Host clock vs engine clock: the same machine for a node agent.)
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let since = format!("{}.{:09}", now.as_secs(), now.subsec_nanos());
    let opts = EventsOptionsBuilder::new().since(&since).filters(&filters).build();
    docker.events(Some(opts)).filter_map(|r| async move {
        match r {
            Ok(ev) => map_event(ev).map(Ok),
            Err(e) => Some(Err(map_err("events", "engine", e))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EventActor;

    fn ev(action: &str, attrs: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some("c1".into()),
                attributes: Some(attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn maps_exits_and_health() {
        let e = map_event(ev("die", &[("exitCode", "137"), ("name", "web.1"), (labels::TASK_ID, "t1")])).unwrap();
        assert_eq!(e.kind, ContainerEventKind::Exited { code: 137 });
        assert_eq!(e.name, "web.1");
        assert_eq!(e.task_id.as_deref(), Some("t1"));
        assert!(!e.labels.contains_key("exitCode"));
        let e = map_event(ev("health_status: unhealthy", &[])).unwrap();
        assert_eq!(e.kind, ContainerEventKind::Health { healthy: false });
        assert!(map_event(ev("exec_start: ls", &[])).is_none());
        let mut net = ev("start", &[]);
        net.typ = Some(EventMessageTypeEnum::NETWORK);
        assert!(map_event(net).is_none());
    }
}
