//! The [`Discovery`] trait: service name -> endpoints, and
//! [`MemDiscovery`], which follows a [`Store`].
//!
//! An endpoint is a task that is RUNNING and, when it has a health check,
//! healthy, whose desired state is still RUNNING (a task told to stop gets
//! no new clients) and whose node is not down. [`endpoints_from_state`] is
//! the pure rule; [`MemDiscovery::follow`] keeps a `MemDiscovery` in step
//! with a store by watching it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use swarm_core::discovery::{Discovery, MemDiscovery};
//! use swarm_core::harness::Harness;
//! use swarm_core::model::ServiceSpec;
//! use swarm_core::scheduler::FirstFit;
//!
//! let h = Harness::builder().nodes(2).scheduler(FirstFit).build().await.unwrap();
//! let discovery = MemDiscovery::new();
//! let (d, store) = (discovery.clone(), h.store().clone());
//! tokio::spawn(async move { d.follow(store.as_ref()).await });
//! h.cluster().create_service(ServiceSpec::replicated("api", "api:1", 2)).await.unwrap();
//! h.wait_running("api", 2, Duration::from_secs(30)).await.unwrap();
//! tokio::time::sleep(Duration::from_millis(10)).await;
//! let api = discovery.resolve("api").unwrap();
//! assert_eq!(api.endpoints.len(), 2); // the tasks' addresses, by slot
//! # }
//! ```

use crate::id::{NodeId, ServiceId, TaskId};
use crate::model::*;
use crate::state::State;
use crate::store::{Store, StoreError};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// One reachable task of a service.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Endpoint {
    /// The task.
    pub task_id: TaskId,
    /// Its node.
    pub node_id: Option<NodeId>,
    /// Its slot.
    pub slot: Option<u64>,
    /// Its address.
    pub addr: IpAddr,
}

/// A service's endpoints.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ServiceEndpoints {
    /// The service.
    pub service_id: ServiceId,
    /// Its name.
    pub name: String,
    /// VIP or DNS round-robin.
    pub mode: EndpointMode,
    /// Virtual IPs (VIP mode, once allocated).
    pub virtual_ips: Vec<VirtualIp>,
    /// Ports, published ports resolved.
    pub ports: Vec<PortConfig>,
    /// Running and healthy tasks, ordered by slot then id.
    pub endpoints: Vec<Endpoint>,
    /// How long a task told to stop keeps running before it is killed
    /// (the task template's stop grace period): how long a load balancer
    /// may let its open connections drain.
    pub stop_grace_period: std::time::Duration,
    /// Store revision this was computed at.
    pub revision: Revision,
}

/// Resolves services to endpoints. See the [module docs](self).
pub trait Discovery: Send + Sync + 'static {
    /// The endpoints of a service by name.
    fn resolve(&self, service: &str) -> Option<ServiceEndpoints>;
    /// Names of all known services.
    fn services(&self) -> Vec<String>;
    /// A receiver that changes (to the store revision) whenever any
    /// service's endpoints change.
    fn subscribe(&self) -> watch::Receiver<Revision>;
    /// The endpoints of every known service (what a load balancer
    /// programs on each change).
    fn resolve_all(&self) -> Vec<ServiceEndpoints> {
        self.services().iter().filter_map(|n| self.resolve(n)).collect()
    }
}

/// True when `task` should receive traffic.
pub fn is_endpoint(task: &Task, state: &State) -> bool {
    task.is_running_and_healthy()
        && task.desired_state <= TaskState::Running
        && task.node_id.as_ref().and_then(|n| state.node(n)).is_none_or(|n| n.status.state != NodeState::Down)
}

/// The endpoints of one service in `state`.
pub fn service_endpoints(state: &State, service: &Service) -> ServiceEndpoints {
    let mut endpoints: Vec<Endpoint> = state
        .tasks_of_service(&service.id)
        .filter(|t| is_endpoint(t, state))
        .filter_map(|t| {
            let addr = t.networks.iter().flat_map(|n| n.addresses.iter()).find_map(|a| a.parse::<IpAddr>().ok())?;
            Some(Endpoint { task_id: t.id.clone(), node_id: t.node_id.clone(), slot: t.slot, addr })
        })
        .collect();
    endpoints.sort_by(|a, b| a.slot.cmp(&b.slot).then(a.task_id.cmp(&b.task_id)));
    ServiceEndpoints {
        service_id: service.id.clone(),
        name: service.spec.name.clone(),
        mode: service.spec.endpoint_spec.mode,
        virtual_ips: service.endpoint.virtual_ips.clone(),
        ports: if service.endpoint.ports.is_empty() {
            service.spec.endpoint_spec.ports.clone()
        } else {
            service.endpoint.ports.clone()
        },
        endpoints,
        stop_grace_period: service.spec.task_template.container.effective_stop_grace(),
        revision: state.revision(),
    }
}

/// Every service's endpoints in `state`, by service name.
pub fn endpoints_from_state(state: &State) -> BTreeMap<String, ServiceEndpoints> {
    state.services().map(|s| (s.spec.name.clone(), service_endpoints(state, s))).collect()
}

/// In-memory discovery.
#[derive(Clone)]
pub struct MemDiscovery {
    table: Arc<RwLock<BTreeMap<String, ServiceEndpoints>>>,
    changed: Arc<watch::Sender<Revision>>,
}

impl Default for MemDiscovery {
    fn default() -> Self {
        MemDiscovery { table: Arc::default(), changed: Arc::new(watch::channel(0).0) }
    }
}

impl MemDiscovery {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the table with what `state` says; notifies subscribers if
    /// anything changed.
    pub fn sync(&self, state: &State) {
        let mut fresh = endpoints_from_state(state);
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        // Ignore the revision when comparing, so unrelated writes do not wake
        // every subscriber.
        let same = table.len() == fresh.len()
            && table.iter().all(|(k, v)| {
                fresh.get(k).is_some_and(|f| ServiceEndpoints { revision: v.revision, ..f.clone() } == *v)
            });
        if same {
            return;
        }
        std::mem::swap(&mut *table, &mut fresh);
        drop(table);
        self.changed.send_replace(state.revision());
    }

    /// Follows `store` until it fails: snapshot, then re-sync on every
    /// change touching tasks, services or nodes. Re-lists after a lagged
    /// watch.
    pub async fn follow<S: Store + ?Sized>(&self, store: &S) -> Result<(), StoreError> {
        let relevant = |c: &crate::state::Change| {
            c.events
                .iter()
                .any(|e| matches!(e.object.kind(), ObjectKind::Task | ObjectKind::Service | ObjectKind::Node))
        };
        crate::store::follow_state(store, relevant, |state| self.sync(state)).await
    }
}

impl Discovery for MemDiscovery {
    fn resolve(&self, service: &str) -> Option<ServiceEndpoints> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).get(service).cloned()
    }

    fn services(&self) -> Vec<String> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    fn subscribe(&self) -> watch::Receiver<Revision> {
        self.changed.subscribe()
    }
}
