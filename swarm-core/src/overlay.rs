//! What one node needs to know to join the cluster's overlay networks,
//! computed from the store: the node's [`OverlayView`].
//!
//! The view is pure data: [`OverlayView::from_state`] derives it from a
//! [`State`] (a manager, an embedded cluster, a test), the dispatcher can
//! carry it to workers that hold no store, and `swarm_net::overlay`
//! programs a node's bridges, VXLAN devices and forwarding entries from it.
//! Swarm learns the same facts over gossip (networkdb); here the store
//! already knows every attachment.
//!
//! ```
//! use swarm_core::overlay::OverlayView;
//! use swarm_core::state::State;
//! // No overlay network: nothing to join.
//! assert!(OverlayView::from_state(&State::default(), &"n1".into()).networks.is_empty());
//! ```

use crate::id::NodeId;
use crate::model::{Network, TaskState};
use crate::state::State;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

/// One node's overlay networks, by VNI.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OverlayView {
    /// The networks the node takes part in, by VNI.
    pub networks: BTreeMap<u32, NetworkView>,
}

/// One overlay network as a node sees it.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkView {
    /// The network's name.
    pub name: String,
    /// Its VXLAN identifier.
    pub vni: u32,
    /// Its subnet (CIDR).
    pub subnet: String,
    /// Its gateway (IP), the bridge's address on every node; empty when
    /// internal.
    pub gateway: String,
    /// No route outside the network.
    pub internal: bool,
    /// Traffic between nodes is encrypted.
    pub encrypted: bool,
    /// The routing mesh's network.
    pub ingress: bool,
    /// Addresses of this node's own tasks on the network.
    pub local: BTreeSet<Ipv4Addr>,
    /// Tasks on other nodes: address -> the underlay address of their node.
    pub remote: BTreeMap<Ipv4Addr, IpAddr>,
}

/// True while a task holds its place on its networks: assigned to a node
/// and neither finished nor told to stop. Its forwarding entries exist on
/// every node of the network exactly then.
pub fn holds_endpoint(state: TaskState, desired: TaskState) -> bool {
    state >= TaskState::Assigned && state <= TaskState::Running && desired <= TaskState::Running
}

impl OverlayView {
    /// The view of node `node`: every overlay network one of its tasks is
    /// attached to, plus the ingress network (every node serves the
    /// routing mesh), each with the node's own task addresses and every
    /// other node's. Tasks of nodes without a known address
    /// (`status.addr`) are left out: no node could reach them.
    pub fn from_state(state: &State, node: &NodeId) -> OverlayView {
        let overlays: BTreeMap<&str, &Network> = state
            .networks()
            .filter(|n| n.is_overlay() && n.vni.is_some() && n.subnet.is_some())
            .map(|n| (n.spec.name.as_str(), n.as_ref()))
            .collect();
        if overlays.is_empty() {
            return OverlayView::default();
        }
        let node_addr: BTreeMap<&NodeId, IpAddr> =
            state.nodes().filter_map(|n| n.status.addr.parse().ok().map(|a| (&n.id, a))).collect();
        let mut view = OverlayView::default();
        let mut joined: BTreeSet<u32> = BTreeSet::new();
        // Which networks this node joins: those of its tasks, and ingress.
        for n in overlays.values().filter(|n| n.spec.ingress) {
            joined.extend(n.vni);
        }
        for t in state.tasks_on_node(node) {
            if !holds_endpoint(t.status.state, t.desired_state) {
                continue;
            }
            for a in t.networks.iter().filter_map(|a| a.overlay.as_ref()) {
                joined.insert(a.vni);
            }
        }
        for n in overlays.values() {
            let Some(vni) = n.vni.filter(|v| joined.contains(v)) else { continue };
            view.networks.insert(
                vni,
                NetworkView {
                    name: n.spec.name.clone(),
                    vni,
                    subnet: n.subnet.clone().unwrap_or_default(),
                    gateway: if n.spec.internal { String::new() } else { n.gateway.clone().unwrap_or_default() },
                    internal: n.spec.internal,
                    encrypted: n.spec.is_encrypted(),
                    ingress: n.spec.ingress,
                    ..Default::default()
                },
            );
        }
        for t in state.tasks() {
            if !holds_endpoint(t.status.state, t.desired_state) {
                continue;
            }
            let Some(on) = t.node_id.as_ref() else { continue };
            for a in &t.networks {
                let Some(o) = a.overlay.as_ref() else { continue };
                let Some(nv) = view.networks.get_mut(&o.vni) else { continue };
                let Some(ip) = a.addresses.first().and_then(|s| s.parse::<Ipv4Addr>().ok()) else { continue };
                if on == node {
                    nv.local.insert(ip);
                } else if let Some(addr) = node_addr.get(on) {
                    nv.remote.insert(ip, *addr);
                }
            }
        }
        view
    }
}
