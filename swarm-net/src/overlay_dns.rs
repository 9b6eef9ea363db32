//! Service discovery across nodes: one DNS server per overlay network on
//! each node, listening on the network's gateway address (UDP and TCP,
//! port 53), answering from the node's [`OverlayView`].
//!
//! The managers put each network's names in the view they send every node
//! of the network ([`NetworkView::names`]: `<service>`, aliases,
//! `tasks.<service>`), so a node answers without a store. The overlay plane
//! ([`crate::overlay`]) puts the gateway address on the network's bridge
//! `swbr<vni>`; the runtimes point their tasks' resolver at it. Until the
//! address exists the bind fails and is retried every
//! [`OverlayDnsConfig::retry`].
//!
//! - Scope: a server answers the names of its own network only, and only
//!   to clients of that network's subnet; a task of another network asking
//!   this gateway is REFUSED (the host routes between its bridges'
//!   addresses, so it could reach it).
//! - Nothing is forwarded: a name that is not the network's gets NXDOMAIN
//!   (as [`crate::dns`]; Docker's resolver would forward it to the host's
//!   servers).
//! - A new view is in force at once: tables are replaced in place, servers
//!   of networks that left the view (or whose gateway changed) are closed,
//!   new ones bound.
//! - Internal networks have no gateway address, so no server: their tasks
//!   have no name service (Docker answers on 127.0.0.11 inside each
//!   container's namespace; not done here).
//!
//! The sockets belong to the network namespace of the thread that binds
//! them: start the servers on a runtime whose threads live in the node's
//! namespace (as [`crate::overlay::Overlay::start`]).

use crate::dns::{DnsConfig, DnsError, DnsHandler, DnsServer, DnsTable, UnknownClients};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarm_core::overlay::{NetworkView, OverlayView};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Settings of the per-network servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayDnsConfig {
    /// Port on each gateway address (default 53).
    pub port: u16,
    /// Time between attempts to bind a server whose address is not there
    /// yet (default 250 ms).
    pub retry: Duration,
    /// TTLs ([`DnsConfig::unknown_clients`] is ignored: a network's server
    /// answers its subnet, see the [module docs](self)).
    pub dns: DnsConfig,
}

impl Default for OverlayDnsConfig {
    fn default() -> Self {
        OverlayDnsConfig { port: 53, retry: Duration::from_millis(250), dns: DnsConfig::default() }
    }
}

/// The servers of one node's overlay networks, following its view.
pub struct OverlayDns {
    task: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
    status: Arc<Mutex<Status>>,
}

/// What is served and what could not be, by VNI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Status {
    serving: BTreeMap<u32, SocketAddr>,
    errors: BTreeMap<u32, String>,
}

/// One running server.
struct Served {
    gateway: Ipv4Addr,
    server: DnsServer,
}

impl OverlayDns {
    /// Starts following `views` on the current runtime (see the [module
    /// docs](self) for the namespace). The last view stays served if the
    /// sender goes away.
    pub fn start(views: watch::Receiver<OverlayView>, config: OverlayDnsConfig) -> OverlayDns {
        let status = Arc::new(Mutex::new(Status::default()));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(views, config, status.clone(), stopped));
        OverlayDns { task: Some(task), stop: Some(stop), status }
    }

    /// The address each network (by VNI) is served on.
    pub fn serving(&self) -> BTreeMap<u32, SocketAddr> {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).serving.clone()
    }

    /// Why a network of the view is not served (yet), by VNI: the bind
    /// error (e.g. the gateway address is not on the bridge yet), retried.
    pub fn errors(&self) -> BTreeMap<u32, String> {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).errors.clone()
    }

    /// Closes every server.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "overlay dns: the server task failed");
            }
        }
    }
}

impl Drop for OverlayDns {
    fn drop(&mut self) {
        // Dropped without stop: the sockets close with the task.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The networks of `view` that get a server: gateway address -> view.
fn wanted(view: &OverlayView) -> BTreeMap<u32, (Ipv4Addr, &NetworkView)> {
    view.networks
        .iter()
        .filter(|(_, n)| !n.internal)
        .filter_map(|(vni, n)| match n.gateway.parse::<Ipv4Addr>() {
            Ok(gw) => Some((*vni, (gw, n))),
            Err(_) => {
                tracing::debug!(network = %n.name, gateway = %n.gateway, "overlay dns: no gateway address, no server");
                None
            }
        })
        .collect()
}

async fn run(
    mut views: watch::Receiver<OverlayView>,
    config: OverlayDnsConfig,
    status: Arc<Mutex<Status>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let dns = DnsConfig { unknown_clients: UnknownClients::AllNetworks, ..config.dns.clone() };
    let mut servers: BTreeMap<u32, Served> = BTreeMap::new();
    let mut open = true;
    loop {
        let view = views.borrow_and_update().clone();
        let want = wanted(&view);
        // Networks that left, or whose gateway changed: closed.
        let gone: Vec<u32> = servers
            .iter()
            .filter(|(vni, s)| want.get(vni).is_none_or(|(gw, _)| *gw != s.gateway))
            .map(|(vni, _)| *vni)
            .collect();
        for vni in gone {
            if let Some(s) = servers.remove(&vni) {
                tracing::info!(vni, addr = %s.server.local_addr(), "overlay dns: closing");
                s.server.shutdown().await;
            }
        }
        let mut errors = BTreeMap::new();
        for (vni, (gateway, net)) in &want {
            let table = DnsTable::from_network_view(net);
            if let Some(s) = servers.get(vni) {
                s.server.handler().set_table(table);
                continue;
            }
            let handler = DnsHandler::new(dns.clone());
            handler.set_table(table);
            let addr = SocketAddr::from((*gateway, config.port));
            match DnsServer::bind(addr, handler).await {
                Ok(server) => {
                    tracing::info!(vni, network = %net.name, %addr, "overlay dns: serving the network's names");
                    servers.insert(*vni, Served { gateway: *gateway, server });
                }
                Err(e) => {
                    let missing = matches!(&e, DnsError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrNotAvailable);
                    if missing {
                        tracing::debug!(vni, %addr, "overlay dns: the gateway address is not there yet; retrying");
                    } else {
                        tracing::warn!(vni, network = %net.name, error = %e, "overlay dns: cannot serve; retrying");
                    }
                    errors.insert(*vni, format!("network {:?} (VNI {vni}): {e}", net.name));
                }
            }
        }
        let pending = !errors.is_empty();
        {
            let mut st = status.lock().unwrap_or_else(|p| p.into_inner());
            st.serving = servers.iter().map(|(vni, s)| (*vni, s.server.local_addr())).collect();
            st.errors = errors;
        }
        tokio::select! {
            _ = &mut stopped => break,
            changed = views.changed(), if open => {
                if changed.is_err() {
                    // The sender is gone: keep serving the last view.
                    open = false;
                }
            }
            _ = tokio::time::sleep(config.retry), if pending => {}
        }
    }
    for (_, s) in std::mem::take(&mut servers) {
        s.server.shutdown().await;
    }
    let mut st = status.lock().unwrap_or_else(|p| p.into_inner());
    st.serving.clear();
    st.errors.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::Answer;
    use std::collections::BTreeMap;
    use swarm_core::overlay::NameRecord;

    fn net(name: &str, subnet: &str, gateway: &str, names: &[(&str, &[&str], bool)]) -> NetworkView {
        NetworkView {
            name: name.into(),
            subnet: subnet.into(),
            gateway: gateway.into(),
            internal: gateway.is_empty(),
            names: names
                .iter()
                .map(|(n, a, vip)| {
                    (n.to_string(), NameRecord { addrs: a.iter().map(|a| a.parse().unwrap()).collect(), vip: *vip })
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_networks_table_answers_its_names_to_its_subnet_only() {
        let v = net(
            "back",
            "10.9.0.0/24",
            "10.9.0.1",
            &[("web", &["10.9.0.100"], true), ("tasks.web", &["10.9.0.2", "10.9.0.3"], false)],
        );
        let t = DnsTable::from_network_view(&v);
        let cfg = DnsConfig::default();
        let me = "10.9.0.7".parse().unwrap();
        assert_eq!(t.lookup("WEB.", me, &cfg), Answer::Addrs(vec!["10.9.0.100".parse().unwrap()], cfg.vip_ttl));
        assert_eq!(
            t.lookup("tasks.web", me, &cfg),
            Answer::Addrs(vec!["10.9.0.2".parse().unwrap(), "10.9.0.3".parse().unwrap()], cfg.task_ttl)
        );
        assert_eq!(t.lookup("api", me, &cfg), Answer::NxDomain);
        assert_eq!(t.lookup("web", "10.8.0.7".parse().unwrap(), &cfg), Answer::Refused, "another subnet");
        assert_eq!(t.lookup("web", "::1".parse().unwrap(), &cfg), Answer::Refused);
        // A bad subnet in the view refuses everyone rather than answering all.
        let bad = DnsTable::from_network_view(&NetworkView { subnet: "nonsense".into(), ..v });
        assert_eq!(bad.lookup("web", me, &cfg), Answer::Refused);
    }

    #[test]
    fn internal_networks_and_networks_without_gateway_get_no_server() {
        let view = OverlayView {
            networks: BTreeMap::from([
                (1, net("a", "10.9.1.0/24", "10.9.1.1", &[])),
                (2, net("b", "10.9.2.0/24", "", &[])),
                (3, NetworkView { internal: false, ..net("c", "10.9.3.0/24", "", &[]) }),
            ]),
        };
        let w = wanted(&view);
        assert_eq!(w.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(w[&1].0, "10.9.1.1".parse::<Ipv4Addr>().unwrap());
    }

    /// Without root: a gateway address that is no local address is not
    /// served, and the error says so; it is retried.
    #[tokio::test]
    async fn an_absent_gateway_address_is_reported_and_retried() {
        let view = OverlayView { networks: BTreeMap::from([(7, net("a", "192.0.2.0/24", "192.0.2.1", &[]))]) };
        let (_tx, rx) = watch::channel(view);
        let dns = OverlayDns::start(rx, OverlayDnsConfig { port: 0, ..Default::default() });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while dns.errors().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "no error reported");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let e = &dns.errors()[&7];
        assert!(e.contains("\"a\"") && e.contains("192.0.2.1"), "{e}");
        assert!(dns.serving().is_empty());
        dns.stop().await;
    }
}
