//! A controller of your own, run by the manager beside its built-in ones:
//! "every service labelled `example.one-per-zone=true` runs one replica per
//! zone" (a zone is a value of the node label `zone` among ready, active
//! nodes). The controller is the block between the two `----` rules: it
//! says which changes interest it and decides, as a pure function of the
//! state, what to write; the controller runtime lists, watches, commits,
//! retries and re-lists, and the manager runs it only while it leads.
//!
//! The rest runs it on the test harness (six simulated nodes in zones a, b
//! and c, paused time): the service goes to three replicas, one per zone;
//! a node in a new zone d joins and it goes to four; the two nodes of zone
//! c fail and it comes back to three.
//!
//! ```text
//! cargo run --example custom_controller
//! ```
//!
//! tests/custom_controller.rs runs [`demo`] and asserts every step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use swarm::controller::{Context, Controller, Interest, Plan};
use swarm::harness::{Harness, HarnessError};
use swarm::id::ServiceId;
use swarm::model::{Availability, NodeState, Object, PlacementPreference, ServiceSpec};
use swarm::placement::Pipeline;
use swarm::state::{Change, Op, State};

// ---- the controller ---------------------------------------------------------

/// The label that selects a service.
pub const SELECTOR: &str = "example.one-per-zone";

/// Keeps each selected service at one replica per zone.
pub struct OnePerZone;

fn selected(spec: &ServiceSpec) -> bool {
    spec.labels.get(SELECTOR).is_some_and(|v| v == "true")
}

/// The zones that can run tasks now.
pub fn zones(state: &State) -> BTreeSet<String> {
    state
        .nodes()
        .filter(|n| n.status.state == NodeState::Ready && n.spec.availability == Availability::Active)
        .filter_map(|n| n.spec.labels.get("zone").cloned())
        .collect()
}

impl Controller for OnePerZone {
    type Key = ServiceId;
    fn name(&self) -> &str {
        "one-per-zone"
    }
    fn keys(&self, state: &State) -> Vec<ServiceId> {
        state.services().filter(|s| selected(&s.spec)).map(|s| s.id.clone()).collect()
    }
    fn interest(&self, change: &Change) -> Interest<ServiceId> {
        let mut keys = Vec::new();
        for e in &change.events {
            match &e.object {
                Object::Node(_) => return Interest::Everything, // zones may have changed
                Object::Service(s) if selected(&s.spec) => keys.push(s.id.clone()),
                _ => {}
            }
        }
        Interest::Keys(keys)
    }
    fn reconcile(&mut self, cx: &mut Context<'_>, id: &ServiceId) -> Plan {
        let mut plan = Plan::default();
        let Some(svc) = cx.state.service(id).filter(|s| selected(&s.spec)) else { return plan };
        let want = zones(cx.state).len() as u64;
        if svc.spec.mode.replicas != Some(want) {
            let mut svc = svc.as_ref().clone();
            svc.spec.mode.replicas = Some(want); // scaling: no new spec version
            plan.ops.push(Op::Update(Object::Service(svc)));
        }
        plan
    }
}

// ---- running it on the harness --------------------------------------------

/// One step of the demo: what happened, the replica count, and how many
/// running tasks each zone has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What the step did.
    pub what: &'static str,
    /// The service's replica count after it.
    pub replicas: u64,
    /// Running tasks per zone after it.
    pub per_zone: BTreeMap<String, usize>,
}

fn step(h: &Harness, what: &'static str) -> Step {
    let s = h.state();
    let svc = s.service_by_name("edge").expect("the service exists");
    let mut per_zone = BTreeMap::new();
    for t in s.tasks_of_service(&svc.id).filter(|t| t.desired_state <= swarm::model::TaskState::Running) {
        if !t.is_running_and_healthy() {
            continue;
        }
        let zone = t.node_id.as_ref().and_then(|n| s.node(n)).and_then(|n| n.spec.labels.get("zone").cloned());
        *per_zone.entry(zone.unwrap_or_default()).or_default() += 1;
    }
    Step { what, replicas: svc.spec.mode.replicas.unwrap_or(0), per_zone }
}

/// Runs the scenario; needs tokio's paused clock (see `main`).
pub async fn demo() -> Result<Vec<Step>, HarnessError> {
    let mut builder = Harness::builder().nodes(6).scheduler(Pipeline::spread()).seed(5).controller(|| OnePerZone);
    for (i, zone) in ["a", "a", "b", "b", "c", "c"].into_iter().enumerate() {
        builder = builder.node_label(i, "zone", zone);
    }
    let mut h = builder.build().await?;
    let mut steps = Vec::new();
    let minute = Duration::from_secs(60);

    let mut spec = ServiceSpec::replicated("edge", "edge:1", 1);
    spec.labels.insert(SELECTOR.into(), "true".into());
    spec.task_template.placement.preferences = vec![PlacementPreference { spread: "node.labels.zone".into() }];
    h.cluster().create_service(spec).await?;
    h.wait_running("edge", 3, minute).await?;
    steps.push(step(&h, "created with 1 replica in 3 zones"));

    let d = h.add_node(swarm::model::Resources::new(4_000_000_000, 8 << 30)).await?;
    h.cluster().set_node_label(h.node_id(d).as_str(), "zone", Some("d")).await?;
    h.wait_running("edge", 4, minute).await?;
    steps.push(step(&h, "a node in zone d joined"));

    h.fail_node(4);
    h.fail_node(5);
    h.advance(h.heartbeat_grace()).await;
    h.wait_for("zone c gone and 3 replicas running", minute, |s| {
        !zones(s).contains("c") && swarm::harness::running_count(s, "edge") == 3
    })
    .await?;
    steps.push(step(&h, "both nodes of zone c failed"));
    h.shutdown();
    Ok(steps)
}

#[allow(dead_code)] // the test includes this file for `demo` only
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build()?;
    for s in rt.block_on(demo())? {
        println!("{:<36} replicas {}  running per zone {:?}", s.what, s.replicas, s.per_zone);
    }
    Ok(())
}
