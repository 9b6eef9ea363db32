//! The embedded DNS server: answers `<service>`, `tasks.<service>` and the
//! aliases of a service's network attachments, like Swarm's resolver inside
//! each container, on [hickory-server](https://docs.rs/hickory-server).
//!
//! - `<service>` (or an alias): the service's virtual IP on the network the
//!   name is asked from (VIP mode), or the addresses of its endpoints (DNS
//!   round-robin mode).
//! - `tasks.<service>`: the addresses of every endpoint (a task RUNNING,
//!   healthy when checked, still wanted, on a node not down).
//! - Only A records: an AAAA (or other type) query for a known name gets an
//!   empty NOERROR answer; anything else gets NXDOMAIN (Swarm would forward
//!   it to the host's resolvers; we do not forward).
//!
//! Names are scoped by network, as in Swarm: the server looks up the asking
//! address among the task addresses and answers only for services attached
//! to a network that task is on, with addresses on those networks. A client
//! that is no task (the host, a test) gets [`DnsConfig::unknown_clients`]:
//! every network, or REFUSED.
//!
//! [`DnsTable`] is the pure part (built from a [`State`], or from one
//! overlay network's view with [`DnsTable::from_network_view`]);
//! [`DnsServer`] serves a table that [`DnsHandler::follow`] keeps in step
//! with a store. On nodes without a store, [`crate::overlay_dns`] runs one
//! server per overlay network on the network's gateway address, answering
//! from the node's overlay view.
//!
//! Malformed requests get FORMERR with the request's id: a bad label length,
//! a compression pointer that loops or points forward or past the end, a
//! name over 255 bytes, fewer records than the header promises, not exactly
//! one question, or bytes after the last record. A UDP datagram over 4,096
//! bytes is cut there by the receive buffer and so ends mid-record or with
//! extra bytes: FORMERR as well. Only a request with no header to answer
//! (under 12 bytes), or a well-formed response sent to the server (no
//! reflection), gets no answer; on TCP a zero-length message ends the
//! connection. Opcodes other than QUERY (NOTIFY, UPDATE, STATUS, ...) get
//! NOTIMP.

use crate::alloc::service_networks;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Message, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use swarm_core::discovery::is_endpoint;
use swarm_core::model::*;
use swarm_core::overlay::NetworkView;
use swarm_core::state::State;
use swarm_core::store::{Store, StoreError};

/// What to answer a client that is not a known task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UnknownClients {
    /// Answer as if it were on every network (an embedder on the host).
    #[default]
    AllNetworks,
    /// Answer REFUSED.
    Refuse,
}

/// DNS server settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// TTL of virtual IP answers (default 600 s, like Docker).
    pub vip_ttl: u32,
    /// TTL of task address answers (default 0: they change).
    pub task_ttl: u32,
    /// Clients that are no task.
    pub unknown_clients: UnknownClients,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig { vip_ttl: 600, task_ttl: 0, unknown_clients: UnknownClients::AllNetworks }
    }
}

/// One name on one network: a VIP, or task addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct NameEntry {
    addrs: Vec<Ipv4Addr>,
    vip: bool,
}

/// The answers, by network then name; and which networks each task
/// address is on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsTable {
    names: BTreeMap<String, BTreeMap<String, NameEntry>>,
    clients: BTreeMap<IpAddr, BTreeSet<String>>,
    /// Only clients in this subnet may ask (a network's own server).
    only_from: Option<ipnet::Ipv4Net>,
}

/// An answer from a [`DnsTable`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// These addresses (possibly none: the name exists but has no endpoint
    /// right now), with this TTL.
    Addrs(Vec<Ipv4Addr>, u32),
    /// No such name for this client.
    NxDomain,
    /// The client may not ask.
    Refused,
}

impl DnsTable {
    /// Builds the table from `state`.
    pub fn from_state(state: &State) -> DnsTable {
        let mut t = DnsTable::default();
        // Any address of a task stands for the whole task: all its networks.
        for task in state.tasks().filter(|t| t.status.state <= TaskState::Running) {
            let nets: BTreeSet<String> = task.networks.iter().map(|n| n.network.clone()).collect();
            for n in &task.networks {
                for a in n.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                    t.clients.entry(a).or_default().extend(nets.iter().cloned());
                }
            }
        }
        for svc in state.services() {
            let Ok(networks) = service_networks(state, &svc.spec) else { continue };
            let endpoints: Vec<&Arc<Task>> =
                state.tasks_of_service(&svc.id).filter(|t| is_endpoint(t, state)).collect();
            for net in &networks {
                let tasks: Vec<Ipv4Addr> = endpoints
                    .iter()
                    .flat_map(|t| t.networks.iter().filter(|n| &n.network == net))
                    .flat_map(|n| n.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()))
                    .collect();
                let vip = svc.endpoint.virtual_ips.iter().find(|v| &v.network == net).and_then(|v| match v.addr {
                    IpAddr::V4(a) if svc.spec.endpoint_spec.mode == EndpointMode::Vip => Some(a),
                    _ => None,
                });
                let tasks = NameEntry { addrs: tasks, vip: false };
                let entry = match vip {
                    Some(vip) => NameEntry { addrs: vec![vip], vip: true },
                    None => tasks.clone(),
                };
                let names = t.names.entry(net.clone()).or_default();
                let aliases = svc
                    .spec
                    .networks
                    .iter()
                    .filter(|a| {
                        a.target == *net || state.network_by_name(net).is_some_and(|n| n.id.as_str() == a.target)
                    })
                    .flat_map(|a| a.aliases.iter());
                for name in std::iter::once(&svc.spec.name).chain(aliases) {
                    names.insert(name.to_ascii_lowercase(), entry.clone());
                }
                names.insert(format!("tasks.{}", svc.spec.name.to_ascii_lowercase()), tasks);
            }
        }
        t
    }

    /// The table of one overlay network from a node's view of it (its
    /// [`NetworkView::names`]), for a server that answers that network's
    /// names to the clients of that network's subnet (the server listening
    /// on the network's gateway, see [`crate::overlay_dns`]); other clients
    /// (a task of another network asking this gateway) are refused. No
    /// client is listed, so the handler must answer unknown clients
    /// ([`UnknownClients::AllNetworks`]).
    pub fn from_network_view(view: &NetworkView) -> DnsTable {
        let names = view
            .names
            .iter()
            .map(|(name, r)| (name.to_ascii_lowercase(), NameEntry { addrs: r.addrs.clone(), vip: r.vip }))
            .collect();
        DnsTable {
            names: BTreeMap::from([(view.name.clone(), names)]),
            clients: BTreeMap::new(),
            only_from: Some(view.subnet.parse().unwrap_or_else(|_| {
                tracing::warn!(network = %view.name, subnet = %view.subnet, "dns: bad subnet in the view: refusing every client");
                ipnet::Ipv4Net::from(Ipv4Addr::UNSPECIFIED)
            })),
        }
    }

    /// The A records for `name` (no trailing dot needed, any case) asked
    /// from `client`.
    pub fn lookup(&self, name: &str, client: IpAddr, config: &DnsConfig) -> Answer {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(subnet) = &self.only_from {
            match client {
                IpAddr::V4(a) if subnet.contains(&a) => {}
                _ => return Answer::Refused,
            }
        }
        let networks: Vec<&String> = match self.clients.get(&client) {
            Some(nets) => nets.iter().collect(),
            None if config.unknown_clients == UnknownClients::AllNetworks => self.names.keys().collect(),
            None => return Answer::Refused,
        };
        let mut found = false;
        let mut addrs = Vec::new();
        let mut ttl = config.task_ttl;
        for net in networks {
            let Some(e) = self.names.get(net).and_then(|m| m.get(&name)) else { continue };
            found = true;
            if e.vip {
                ttl = config.vip_ttl;
            }
            addrs.extend(e.addrs.iter().copied());
        }
        if !found {
            return Answer::NxDomain;
        }
        let mut seen = BTreeSet::new();
        addrs.retain(|a| seen.insert(*a));
        Answer::Addrs(addrs, ttl)
    }
}

/// The request handler: answers from the shared table.
#[derive(Clone)]
pub struct DnsHandler {
    table: Arc<RwLock<DnsTable>>,
    config: DnsConfig,
}

impl DnsHandler {
    /// A handler with an empty table.
    pub fn new(config: DnsConfig) -> Self {
        DnsHandler { table: Arc::default(), config }
    }

    /// Replaces the table with what `state` says.
    pub fn sync(&self, state: &State) {
        self.set_table(DnsTable::from_state(state));
    }

    /// Replaces the table.
    pub fn set_table(&self, table: DnsTable) {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = table;
    }

    /// Follows `store` until it fails, re-syncing on every change touching
    /// tasks, services, networks or nodes.
    pub async fn follow<S: Store + ?Sized>(&self, store: &S) -> Result<(), StoreError> {
        let relevant = |c: &swarm_core::state::Change| {
            c.events.iter().any(|e| {
                matches!(
                    e.object.kind(),
                    ObjectKind::Task | ObjectKind::Service | ObjectKind::Node | ObjectKind::Network
                )
            })
        };
        swarm_core::store::follow_state(store, relevant, |state| self.sync(state)).await
    }

    /// The answer for `name` asked from `client`.
    pub fn lookup(&self, name: &str, client: IpAddr) -> Answer {
        self.table.read().unwrap_or_else(|p| p.into_inner()).lookup(name, client, &self.config)
    }
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = true;
        meta.recursion_available = false;
        let trailing = trailing_bytes(request.as_slice());
        let (code, records) = match request.request_info() {
            _ if request.metadata.op_code != OpCode::Query => {
                tracing::debug!(op = ?request.metadata.op_code, "dns: opcode not implemented");
                (ResponseCode::NotImp, Vec::new())
            }
            _ if trailing > 0 => {
                tracing::debug!(bytes = trailing, "dns: bad request: bytes after the last record");
                (ResponseCode::FormErr, Vec::new())
            }
            Err(e) => {
                tracing::debug!(error = %e, "dns: bad request");
                (ResponseCode::FormErr, Vec::new())
            }
            Ok(info) => {
                let qname = info.query.name().to_string();
                let qtype = info.query.query_type();
                match self.lookup(&qname, info.src.ip()) {
                    Answer::NxDomain => (ResponseCode::NXDomain, Vec::new()),
                    Answer::Refused => (ResponseCode::Refused, Vec::new()),
                    Answer::Addrs(addrs, ttl) => {
                        let records = if matches!(qtype, RecordType::A | RecordType::ANY) {
                            let name = Name::from(info.query.name().clone());
                            addrs.iter().map(|a| Record::from_rdata(name.clone(), ttl, RData::A(A(*a)))).collect()
                        } else {
                            Vec::new()
                        };
                        (ResponseCode::NoError, records)
                    }
                }
            }
        };
        meta.response_code = code;
        let msg = builder.build(meta, records.iter(), [], [], []);
        match response.send_response(msg).await {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(error = %e, "dns: sending the response failed");
                let mut meta = Metadata::response_from_request(&request.metadata);
                meta.response_code = ResponseCode::ServFail;
                hickory_server::proto::op::Header { metadata: meta, counts: Default::default() }.into()
            }
        }
    }
}

/// How many bytes of `raw` follow the message it starts with (0 when it
/// is exactly one message; hickory's own parse ignores such a tail, which
/// is also how a datagram cut by the receive buffer can look).
fn trailing_bytes(raw: &[u8]) -> usize {
    let mut decoder = BinDecoder::new(raw);
    match Message::read(&mut decoder) {
        Ok(_) => decoder.len(),
        // Hickory parsed it before calling the handler; if this parse
        // disagrees, the handler's own checks decide.
        Err(_) => 0,
    }
}

/// Why the DNS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Binding a socket failed.
    #[error("dns: cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running DNS server (UDP and TCP on one address).
pub struct DnsServer {
    server: hickory_server::Server<DnsHandler>,
    handler: DnsHandler,
    addr: SocketAddr,
}

impl DnsServer {
    /// Binds UDP and TCP on `addr` (port 0: any free port, the same for
    /// both when possible) and serves `handler`'s table.
    pub async fn bind(addr: SocketAddr, handler: DnsHandler) -> Result<DnsServer, DnsError> {
        // With port 0 the UDP port is picked first; the same TCP port may be
        // taken by someone else, then pick again (a few times).
        let attempts = if addr.port() == 0 { 16 } else { 1 };
        let mut last = None;
        let mut pair = None;
        for _ in 0..attempts {
            let udp = tokio::net::UdpSocket::bind(addr).await.map_err(|source| DnsError::Bind { addr, source })?;
            let at = udp.local_addr().map_err(|source| DnsError::Bind { addr, source })?;
            match tokio::net::TcpListener::bind(at).await {
                Ok(tcp) => {
                    pair = Some((udp, tcp, at));
                    break;
                }
                Err(source) => last = Some(DnsError::Bind { addr: at, source }),
            }
        }
        let Some((udp, tcp, addr)) = pair else {
            return Err(last.unwrap_or_else(|| DnsError::Bind { addr, source: std::io::ErrorKind::AddrInUse.into() }));
        };
        let mut server = hickory_server::Server::new(handler.clone());
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
        tracing::info!(%addr, "dns: serving");
        Ok(DnsServer { server, handler, addr })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The handler (to sync or follow a store).
    pub fn handler(&self) -> &DnsHandler {
        &self.handler
    }

    /// Stops serving.
    pub async fn shutdown(mut self) {
        if let Err(e) = self.server.shutdown_gracefully().await {
            tracing::debug!(error = %e, "dns: shutdown");
        }
    }
}
