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
//! Each network's view also carries its DNS names ([`NetworkView::names`]):
//! for every service attached to the network (its spec's `networks`),
//! `<service>` and each alias of that attachment resolve to the service's
//! virtual IP on the network (VIP mode, once allocated) or else to the
//! addresses of its endpoint tasks, and `tasks.<service>` to the addresses
//! of its endpoint tasks on the network (`discovery::is_endpoint`: running,
//! healthy when checked, desired running, node not down). A node's DNS
//! server answers from them (`swarm_net::overlay_dns`).
//!
//! ```
//! use swarm_core::overlay::OverlayView;
//! use swarm_core::state::State;
//! // No overlay network: nothing to join.
//! assert!(OverlayView::from_state(&State::default(), &"n1".into()).networks.is_empty());
//! ```

use crate::discovery::is_endpoint;
use crate::id::{NodeId, ServiceId};
use crate::model::{EndpointMode, Network, NetworkKey, NodeState, Object, Service, Task, TaskState};
use crate::state::{Action, Change, State};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// The network's DNS names (lowercase, no trailing dot): `<service>`,
    /// its aliases on this network and `tasks.<service>` of every service
    /// attached to it (see the [module docs](self)). The same on every node
    /// of the network.
    pub names: BTreeMap<String, NameRecord>,
}

/// What one DNS name of an overlay network resolves to.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NameRecord {
    /// The addresses, sorted, without duplicates (possibly none: the name
    /// exists but has no endpoint right now).
    pub addrs: Vec<Ipv4Addr>,
    /// `addrs` are virtual IPs (stable, so answered with a long TTL); false
    /// for task addresses.
    pub vip: bool,
}

impl NameRecord {
    /// Adds `other`'s addresses (two services sharing an alias answer with
    /// both); the record stays a VIP record only if both were.
    fn merge(&mut self, other: NameRecord) {
        self.addrs.extend(other.addrs);
        self.addrs.sort_unstable();
        self.addrs.dedup();
        self.vip &= other.vip;
    }
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
        // Every endpoint of every overlay network: address -> its node; and
        // the addresses of each service's endpoint tasks (for its names).
        let mut endpoints: BTreeMap<u32, Vec<(Ipv4Addr, &NodeId)>> = BTreeMap::new();
        let mut joined: BTreeMap<&NodeId, BTreeSet<u32>> = BTreeMap::new();
        let mut serving: HashMap<(u32, &ServiceId), Vec<Ipv4Addr>> = HashMap::new();
        for t in state.tasks() {
            if !holds_endpoint(t.status.state, t.desired_state) {
                continue;
            }
            let Some(on) = t.node_id.as_ref() else { continue };
            let mut endpoint = None;
            for a in &t.networks {
                let Some(o) = a.overlay.as_ref().filter(|o| overlays.contains_key(&o.vni)) else { continue };
                let Some(ip) = a.addresses.first().and_then(|s| s.parse::<Ipv4Addr>().ok()) else { continue };
                endpoints.entry(o.vni).or_default().push((ip, on));
                joined.entry(on).or_default().insert(o.vni);
                if *endpoint.get_or_insert_with(|| is_endpoint(t, state)) {
                    serving.entry((o.vni, &t.service_id)).or_default().push(ip);
                }
            }
        }
        let names = names(state, &overlays, serving);
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
                    names: names.get(&vni).cloned().unwrap_or_default(),
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

/// The DNS names of every overlay network (by VNI) from the services
/// attached to it and `serving`: the addresses of each service's endpoint
/// tasks on each network. Linear in the services' attachments and
/// `serving`.
fn names<'a>(
    state: &'a State,
    overlays: &BTreeMap<u32, &Network>,
    mut serving: HashMap<(u32, &'a ServiceId), Vec<Ipv4Addr>>,
) -> BTreeMap<u32, BTreeMap<String, NameRecord>> {
    let mut out: BTreeMap<u32, BTreeMap<String, NameRecord>> = BTreeMap::new();
    // A service's attachment names its network by name or by id.
    let mut target: HashMap<&str, u32> = HashMap::new();
    for (vni, n) in overlays.iter().filter(|(_, n)| !n.spec.ingress) {
        target.insert(n.spec.name.as_str(), *vni);
        target.insert(n.id.as_str(), *vni);
    }
    for svc in state.services().filter(|s| !s.spec.networks.is_empty()) {
        let service = svc.spec.name.to_ascii_lowercase();
        for att in &svc.spec.networks {
            let Some(&vni) = target.get(att.target.as_str()) else { continue };
            let Some(net) = overlays.get(&vni) else { continue };
            let mut tasks = serving.remove(&(vni, &svc.id)).unwrap_or_default();
            tasks.sort_unstable();
            tasks.dedup();
            let tasks = NameRecord { addrs: tasks, vip: false };
            let main = match service_vip(svc, net) {
                Some(vip) => NameRecord { addrs: vec![vip], vip: true },
                None => tasks.clone(),
            };
            let names = out.entry(vni).or_default();
            let mut add = |name: String, record: NameRecord| match names.get_mut(&name) {
                Some(r) => r.merge(record),
                None => {
                    names.insert(name, record);
                }
            };
            for alias in att.aliases.iter().filter(|a| !a.is_empty()) {
                add(alias.trim_end_matches('.').to_ascii_lowercase(), main.clone());
            }
            add(format!("tasks.{service}"), tasks);
            add(service.clone(), main);
        }
    }
    out
}

/// The virtual IP of `svc` on `net`, in VIP mode once allocated.
fn service_vip(svc: &Service, net: &Network) -> Option<Ipv4Addr> {
    if svc.spec.endpoint_spec.mode != EndpointMode::Vip {
        return None;
    }
    svc.endpoint.virtual_ips.iter().find(|v| v.network == net.spec.name || v.network == net.id.as_str()).and_then(|v| {
        match v.addr {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    })
}

/// True when `change` can change some node's [`OverlayView`]: an overlay
/// network changed; a node (its address) changed, left, went down or came
/// back; a task with an overlay attachment started or stopped holding its
/// endpoint, became or ceased to be a service endpoint (RUNNING, healthy,
/// told to stop), moved, or changed attachments; a service attached to
/// networks was created, removed, or changed its name, attachments
/// (aliases), endpoint mode or virtual IPs.
pub fn overlay_relevant(change: &Change) -> bool {
    let on_overlay = |t: &Task| t.networks.iter().any(|a| a.overlay.is_some());
    let holds = |t: &Task| holds_endpoint(t.status.state, t.desired_state) && on_overlay(t);
    // `discovery::is_endpoint` without the node part (node events below).
    let serves = |t: &Task| holds(t) && t.is_running_and_healthy();
    let named = |s: &Service| !s.spec.networks.is_empty();
    let down = |n: &crate::model::Node| n.status.state == NodeState::Down;
    change.events.iter().any(|e| match (&e.object, &e.old) {
        (Object::Network(n), _) => n.is_overlay() || matches!(&e.old, Some(Object::Network(o)) if o.is_overlay()),
        (Object::Node(n), Some(Object::Node(o))) => {
            n.status.addr != o.status.addr || down(n) != down(o) || e.action == Action::Delete
        }
        (Object::Node(_), None) => e.action == Action::Delete,
        (Object::Task(t), Some(Object::Task(o))) => {
            (holds(t) || holds(o))
                && (holds(t) != holds(o)
                    || serves(t) != serves(o)
                    || t.node_id != o.node_id
                    || t.networks != o.networks)
        }
        // A create, or a delete (the object is the deleted task).
        (Object::Task(t), _) => holds(t),
        (Object::Service(s), Some(Object::Service(o))) => {
            (named(s) || named(o))
                && (s.spec.name != o.spec.name
                    || s.spec.networks != o.spec.networks
                    || s.spec.endpoint_spec.mode != o.spec.endpoint_spec.mode
                    || s.endpoint.virtual_ips != o.endpoint.virtual_ips)
        }
        // A create, or a delete (the object is the deleted service).
        (Object::Service(s), None) => named(s),
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
        let mut svc = Service { id: "s".into(), spec: ServiceSpec::replicated("web", "i:1", 4), ..Default::default() };
        svc.spec.networks = vec![NetworkAttachmentConfig { target: "back".into(), aliases: vec!["WWW".into()] }];
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
        // A RUNNING report of an ASSIGNED task: same forwarding entry, but
        // the task becomes a service endpoint (its names change).
        let mut b = t("b");
        b.status.state = TaskState::Running;
        assert!(overlay_relevant(&apply(Transaction::new().update(b))));
        // A running task's report that changes nothing of the above.
        let mut a = t("a");
        a.status.message = "still running".into();
        assert!(!overlay_relevant(&apply(Transaction::new().update(a))));
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

    fn record(addrs: &[&str], vip: bool) -> NameRecord {
        NameRecord { addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(), vip }
    }

    #[test]
    fn names_resolve_services_aliases_and_endpoint_tasks() {
        let s = state();
        let names = |s: &State| OverlayView::from_state(s, &"n1".into()).networks[&4096].names.clone();
        // a and c are endpoints (c's node has no address, but it is up);
        // b is not running yet, d failed, e is not assigned. No VIP yet:
        // the service name resolves to the tasks.
        let tasks = record(&["10.1.0.2", "10.1.0.4"], false);
        assert_eq!(
            names(&s),
            BTreeMap::from([
                ("web".to_string(), tasks.clone()),
                ("www".to_string(), tasks.clone()),
                ("tasks.web".to_string(), tasks.clone()),
            ])
        );
        // Every node of the network gets the same names.
        let n2 = OverlayView::from_state(&s, &"n2".into());
        assert_eq!(n2.networks[&4096].names, names(&s));

        // A VIP: the name and its alias resolve to it, tasks.<service> to
        // the tasks.
        let mut svc = s.service(&"s".into()).expect("service").as_ref().clone();
        svc.endpoint.virtual_ips = vec![VirtualIp { network: "back".into(), addr: "10.1.0.200".parse().unwrap() }];
        let (vip, change) = s.apply(&Transaction::new().update(svc.clone())).expect("valid");
        assert!(overlay_relevant(&change), "a new VIP changes the names");
        let n = names(&vip);
        assert_eq!(n["web"], record(&["10.1.0.200"], true));
        assert_eq!(n["www"], record(&["10.1.0.200"], true));
        assert_eq!(n["tasks.web"], tasks);
        // DNS round-robin: the VIP is not used.
        let mut svc = vip.service(&"s".into()).expect("service").as_ref().clone();
        svc.spec.endpoint_spec.mode = EndpointMode::Dnsrr;
        let (rr, change) = vip.apply(&Transaction::new().update(svc)).expect("valid");
        assert!(overlay_relevant(&change));
        assert_eq!(names(&rr)["web"], tasks);

        // c's node goes down: c is no endpoint any more.
        let mut n3 = s.node(&"n3".into()).expect("node").as_ref().clone();
        n3.status.state = NodeState::Down;
        let (down, change) = s.apply(&Transaction::new().update(n3)).expect("valid");
        assert!(overlay_relevant(&change), "a node going down changes the names");
        assert_eq!(names(&down)["tasks.web"], record(&["10.1.0.2"], false));

        // A task that fails its health check is no endpoint.
        let mut a = s.task(&"a".into()).expect("task").as_ref().clone();
        a.spec.container.health_check = Some(HealthCheck::default());
        a.status.health = Some(HealthState::Unhealthy);
        let (sick, change) = s.apply(&Transaction::new().update(a)).expect("valid");
        assert!(overlay_relevant(&change), "an unhealthy task changes the names");
        assert_eq!(names(&sick)["tasks.web"], record(&["10.1.0.4"], false));

        // A second service attached by the network's id, sharing the alias:
        // both answer for it; its own names have no endpoint yet.
        let mut api = Service { id: "s2".into(), spec: ServiceSpec::replicated("Api", "i:1", 1), ..Default::default() };
        api.spec.networks = vec![NetworkAttachmentConfig { target: "net".into(), aliases: vec!["www".into()] }];
        let (two, change) = s.apply(&Transaction::new().create(api.clone())).expect("valid");
        assert!(overlay_relevant(&change), "a service attached to networks brings names");
        let n = names(&two);
        assert_eq!(n["api"], record(&[], false));
        assert_eq!(n["tasks.api"], record(&[], false));
        assert_eq!(n["www"], tasks, "the shared alias answers with both services' addresses");
        let mut t = overlay_task("f", "n2", "10.1.0.9", TaskState::Running);
        t.service_id = "s2".into();
        let (two, _) = two.apply(&Transaction::new().create(t)).expect("valid");
        assert_eq!(names(&two)["www"], record(&["10.1.0.2", "10.1.0.4", "10.1.0.9"], false));
        assert_eq!(names(&two)["api"], record(&["10.1.0.9"], false));

        // A service without networks has no names; its changes do not matter.
        let mut plain = Service { id: "s3".into(), spec: ServiceSpec::replicated("x", "i:1", 1), ..Default::default() };
        let (with_plain, change) = s.apply(&Transaction::new().create(plain.clone())).expect("valid");
        assert!(!overlay_relevant(&change));
        assert!(!names(&with_plain).contains_key("x"));
        plain = with_plain.service(&"s3".into()).expect("service").as_ref().clone();
        plain.spec.labels.insert("k".into(), "v".into());
        assert!(!overlay_relevant(&with_plain.apply(&Transaction::new().update(plain)).expect("valid").1));
        // Nor does a label on an attached service; an alias does.
        let mut svc = s.service(&"s".into()).expect("service").as_ref().clone();
        svc.spec.labels.insert("k".into(), "v".into());
        assert!(!overlay_relevant(&s.apply(&Transaction::new().update(svc.clone())).expect("valid").1));
        svc.spec.networks[0].aliases.push("w3".into());
        let (more, change) = s.apply(&Transaction::new().update(svc)).expect("valid");
        assert!(overlay_relevant(&change));
        assert_eq!(names(&more)["w3"], tasks);
        // Removing the service removes its names.
        let (gone, change) = s.apply(&Transaction::new().delete_any(ObjectKind::Service, "s")).expect("valid");
        assert!(overlay_relevant(&change));
        assert!(names(&gone).is_empty());
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
