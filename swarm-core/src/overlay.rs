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
use crate::model::{Network, NetworkKey, Object, TaskState};
use crate::state::{Action, Change, State};
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
    /// The keys of an encrypted network (as the store holds them: oldest
    /// first, the one to seal under marked `current`, the others only
    /// accepted); empty for other networks. Only nodes taking part in the
    /// network get its view, so only they get its keys. `Debug` redacts
    /// the secrets.
    pub keys: Vec<NetworkKey>,
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
        Self::for_nodes(state, std::iter::once(node)).remove(node).unwrap_or_default()
    }

    /// [`OverlayView::from_state`] for several nodes in one pass over the
    /// tasks (the dispatcher computes every connected node's view after a
    /// change). Every node asked for has an entry.
    pub fn for_nodes<'a>(state: &State, nodes: impl IntoIterator<Item = &'a NodeId>) -> BTreeMap<NodeId, OverlayView> {
        let mut out: BTreeMap<NodeId, OverlayView> =
            nodes.into_iter().map(|n| (n.clone(), OverlayView::default())).collect();
        let overlays: BTreeMap<u32, &Network> = state
            .networks()
            .filter(|n| n.is_overlay() && n.subnet.is_some())
            .filter_map(|n| n.vni.map(|v| (v, n.as_ref())))
            .collect();
        if overlays.is_empty() || out.is_empty() {
            return out;
        }
        let node_addr: BTreeMap<&NodeId, IpAddr> =
            state.nodes().filter_map(|n| n.status.addr.parse().ok().map(|a| (&n.id, a))).collect();
        // Every endpoint of every overlay network: address -> its node.
        let mut endpoints: BTreeMap<u32, Vec<(Ipv4Addr, &NodeId)>> = BTreeMap::new();
        let mut joined: BTreeMap<&NodeId, BTreeSet<u32>> = BTreeMap::new();
        for t in state.tasks() {
            if !holds_endpoint(t.status.state, t.desired_state) {
                continue;
            }
            let Some(on) = t.node_id.as_ref() else { continue };
            for a in &t.networks {
                let Some(o) = a.overlay.as_ref().filter(|o| overlays.contains_key(&o.vni)) else { continue };
                let Some(ip) = a.addresses.first().and_then(|s| s.parse::<Ipv4Addr>().ok()) else { continue };
                endpoints.entry(o.vni).or_default().push((ip, on));
                joined.entry(on).or_default().insert(o.vni);
            }
        }
        let ingress: Vec<u32> = overlays.iter().filter(|(_, n)| n.spec.ingress).map(|(v, _)| *v).collect();
        for (node, view) in out.iter_mut() {
            let mut vnis: BTreeSet<u32> = joined.get(node).cloned().unwrap_or_default();
            vnis.extend(ingress.iter().copied());
            for vni in vnis {
                let Some(n) = overlays.get(&vni) else { continue };
                let mut nv = NetworkView {
                    name: n.spec.name.clone(),
                    vni,
                    subnet: n.subnet.clone().unwrap_or_default(),
                    gateway: if n.spec.internal { String::new() } else { n.gateway.clone().unwrap_or_default() },
                    internal: n.spec.internal,
                    encrypted: n.spec.is_encrypted(),
                    ingress: n.spec.ingress,
                    keys: if n.spec.is_encrypted() { n.keys.clone() } else { Vec::new() },
                    ..Default::default()
                };
                for (ip, on) in endpoints.get(&vni).into_iter().flatten() {
                    if *on == node {
                        nv.local.insert(*ip);
                    } else if let Some(addr) = node_addr.get(on) {
                        nv.remote.insert(*ip, *addr);
                    }
                }
                view.networks.insert(vni, nv);
            }
        }
        out
    }
}

/// True when `change` can change some node's [`OverlayView`]: an overlay
/// network changed, a node (its address) changed or left, or a task with
/// an overlay attachment started or stopped holding its endpoint, moved,
/// or changed attachments.
pub fn overlay_relevant(change: &Change) -> bool {
    let holds = |t: &crate::model::Task| {
        holds_endpoint(t.status.state, t.desired_state) && t.networks.iter().any(|a| a.overlay.is_some())
    };
    change.events.iter().any(|e| match (&e.object, &e.old) {
        (Object::Network(n), _) => n.is_overlay() || matches!(&e.old, Some(Object::Network(o)) if o.is_overlay()),
        (Object::Node(n), Some(Object::Node(o))) => n.status.addr != o.status.addr || e.action == Action::Delete,
        (Object::Node(_), None) => e.action == Action::Delete,
        (Object::Task(t), Some(Object::Task(o))) => {
            (holds(t) || holds(o)) && (holds(t) != holds(o) || t.node_id != o.node_id || t.networks != o.networks)
        }
        // A create, or a delete (the object is the deleted task).
        (Object::Task(t), _) => holds(t),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::state::Transaction;

    fn overlay_task(id: &str, node: &str, addr: &str, state: TaskState) -> Task {
        Task {
            id: id.into(),
            service_id: "s".into(),
            node_id: Some(node.into()),
            desired_state: TaskState::Running,
            status: TaskStatus { state, ..Default::default() },
            networks: vec![NetworkAttachment {
                network: "back".into(),
                addresses: vec![addr.into()],
                overlay: Some(OverlayAttachment { vni: 4096, subnet: "10.1.0.0/24".into(), ..Default::default() }),
            }],
            ..Default::default()
        }
    }

    fn state() -> State {
        let net = Network {
            id: "net".into(),
            spec: NetworkSpec { name: "back".into(), driver: "overlay".into(), internal: true, ..Default::default() },
            subnet: Some("10.1.0.0/24".into()),
            gateway: Some("10.1.0.1".into()),
            vni: Some(4096),
            ..Default::default()
        };
        let mut n1 = Node::ready("n1", "h1", Resources::default());
        n1.status.addr = "192.168.1.1".into();
        let mut n2 = Node::ready("n2", "h2", Resources::default());
        n2.status.addr = "192.168.1.2".into();
        // n3 has no address: nobody can reach its tasks.
        let n3 = Node::ready("n3", "h3", Resources::default());
        let svc = Service { id: "s".into(), spec: ServiceSpec::replicated("web", "i:1", 4), ..Default::default() };
        let tx = Transaction::new()
            .create(net)
            .create(n1)
            .create(n2)
            .create(n3)
            .create(svc)
            .create(overlay_task("a", "n1", "10.1.0.2", TaskState::Running))
            .create(overlay_task("b", "n2", "10.1.0.3", TaskState::Assigned))
            .create(overlay_task("c", "n3", "10.1.0.4", TaskState::Running))
            .create(overlay_task("d", "n2", "10.1.0.5", TaskState::Failed))
            .create(overlay_task("e", "n2", "10.1.0.6", TaskState::Pending));
        State::default().apply(&tx).expect("valid state").0
    }

    #[test]
    fn views_hold_live_endpoints_of_reachable_nodes() {
        let s = state();
        let v = OverlayView::from_state(&s, &"n1".into());
        let back = &v.networks[&4096];
        assert!(back.internal);
        assert_eq!(back.gateway, "", "an internal network has no gateway");
        assert_eq!(back.local, BTreeSet::from(["10.1.0.2".parse().unwrap()]));
        // b (ASSIGNED on n2) only: c's node has no address, d failed, e is
        // not assigned yet.
        assert_eq!(back.remote, BTreeMap::from([("10.1.0.3".parse().unwrap(), "192.168.1.2".parse().unwrap())]));
        // All nodes at once give the same views as one at a time.
        let ids: Vec<NodeId> = ["n1", "n2", "n3", "n4"].iter().map(|n| NodeId::from(*n)).collect();
        let all = OverlayView::for_nodes(&s, &ids);
        for id in &ids {
            assert_eq!(all[id], OverlayView::from_state(&s, id), "{id}");
        }
        assert!(all[&NodeId::from("n4")].networks.is_empty(), "a node without tasks joins nothing");
    }

    #[test]
    fn only_changes_that_move_endpoints_are_relevant() {
        let s = state();
        let t = |id: &str| s.task(&id.into()).expect("task").as_ref().clone();
        let apply = |tx: Transaction| s.apply(&tx).expect("valid").1;
        // A RUNNING report of an ASSIGNED task: same endpoint.
        let mut b = t("b");
        b.status.state = TaskState::Running;
        assert!(!overlay_relevant(&apply(Transaction::new().update(b))));
        // Told to stop: the endpoint goes.
        let mut a = t("a");
        a.desired_state = TaskState::Shutdown;
        assert!(overlay_relevant(&apply(Transaction::new().update(a))));
        // A pending task being assigned: the endpoint comes.
        let mut e = t("e");
        e.status.state = TaskState::Assigned;
        assert!(overlay_relevant(&apply(Transaction::new().update(e))));
        // A node's address changes.
        let mut n = s.node(&"n2".into()).expect("node").as_ref().clone();
        n.status.addr = "192.168.1.22".into();
        assert!(overlay_relevant(&apply(Transaction::new().update(n))));
        // A heartbeat-like node change does not matter.
        let mut n = s.node(&"n2".into()).expect("node").as_ref().clone();
        n.status.message = "hello".into();
        assert!(!overlay_relevant(&apply(Transaction::new().update(n))));
    }

    #[test]
    fn keys_go_only_to_nodes_on_an_encrypted_network_and_never_show_in_debug() {
        let s = state();
        let marker = b"SWEN-SECRET-MARKER-0123456789abc".to_vec();
        let key = |id: u32, current: bool| NetworkKey {
            id,
            secret: SecretBytes(marker.clone()),
            created: crate::time::Timestamp(id as u64),
            current,
        };
        let mut net = s.network(&"net".into()).expect("network").as_ref().clone();
        net.keys = vec![key(1, true), key(2, false)];
        // Not encrypted: the keys (there only by mistake) are not handed out.
        let (plain, _) = s.apply(&Transaction::new().update(net.clone())).expect("valid");
        assert!(OverlayView::from_state(&plain, &"n1".into()).networks[&4096].keys.is_empty());
        net.spec.options.insert(OPT_ENCRYPTED.into(), "".into());
        let (enc, change) = s.apply(&Transaction::new().update(net.clone())).expect("valid");
        assert!(overlay_relevant(&change), "new keys change the views");
        let v = OverlayView::from_state(&enc, &"n1".into());
        assert_eq!(v.networks[&4096].keys, net.keys, "a node with a task on the network gets its keys");
        assert!(v.networks[&4096].encrypted);
        let ids: Vec<NodeId> = ["n1", "n4"].iter().map(|n| NodeId::from(*n)).collect();
        assert!(OverlayView::for_nodes(&enc, &ids)[&ids[1]].networks.is_empty(), "no task there: no keys");
        let shown = String::from_utf8_lossy(&marker).to_string();
        for text in
            [format!("{v:?}"), format!("{v:#?}"), format!("{net:?}"), format!("{:?}", enc.network(&"net".into()))]
        {
            assert!(!text.contains(&shown), "a secret in Debug output: {text}");
            assert!(text.contains("redacted"), "{text}");
        }
    }
}
