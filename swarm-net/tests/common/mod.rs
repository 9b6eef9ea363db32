//! Shared test helpers: a fake cluster in a store.
#![allow(dead_code)]

use std::sync::Arc;
use swarm_core::cluster::Cluster;
use swarm_core::id::TaskId;
use swarm_core::model::*;
use swarm_core::state::Transaction;
use swarm_core::store::{MemStore, Store};

/// A store with `nodes` ready nodes (node-1..) and the cluster API on it.
pub async fn fake_cluster(nodes: usize) -> (Arc<MemStore>, Cluster) {
    let store = Arc::new(MemStore::new());
    let cluster = Cluster::with_seed(store.clone() as Arc<dyn Store>, 5);
    for i in 1..=nodes {
        let n = Node::ready(format!("node-{i}"), format!("host-{i}"), Resources::new(4_000_000_000, 8 << 30));
        store.commit(Transaction::new().create(n)).await.expect("node");
    }
    (store, cluster)
}

/// Puts a RUNNING task of `service` in slot `slot` on `node`, with the
/// given (network, address) attachments, straight into the store.
pub async fn add_task(store: &MemStore, service: &str, node: &str, slot: u64, addrs: &[(&str, &str)]) -> TaskId {
    let state = store.state();
    let svc = state.service_by_name(service).expect("service");
    let id = TaskId::new(format!("{service}-{slot}-{}", state.revision()));
    let mut networks: Vec<NetworkAttachment> = Vec::new();
    for (net, addr) in addrs {
        match networks.iter_mut().find(|n| n.network == *net) {
            Some(n) => n.addresses.push(addr.to_string()),
            None => networks.push(NetworkAttachment {
                network: net.to_string(),
                addresses: vec![addr.to_string()],
                overlay: None,
            }),
        }
    }
    let task = Task {
        id: id.clone(),
        service_id: svc.id.clone(),
        service_name: service.to_string(),
        slot: Some(slot),
        node_id: Some(node.into()),
        spec: svc.spec.task_template.clone(),
        desired_state: TaskState::Running,
        status: TaskStatus { state: TaskState::Running, ..Default::default() },
        networks,
        ..Default::default()
    };
    store.commit(Transaction::new().create(task)).await.expect("task");
    id
}

/// Sets a task's desired state (e.g. SHUTDOWN: told to stop).
pub async fn set_desired(store: &MemStore, id: &TaskId, desired: TaskState) {
    let mut t = store.state().task(id).expect("task").as_ref().clone();
    t.desired_state = desired;
    store.commit(Transaction::new().update(t)).await.expect("update task");
}

/// Marks a node down.
pub async fn node_down(store: &MemStore, node: &str) {
    let mut n = store.state().node(&node.into()).expect("node").as_ref().clone();
    n.status.state = NodeState::Down;
    store.commit(Transaction::new().update(n)).await.expect("update node");
}

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// A real TCP backend on loopback: on each connection it sends its id
/// (one byte), then echoes until the client closes. Stopping it closes the
/// listener and every open connection (a container being killed).
pub struct TcpBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    closing: watch::Sender<bool>,
}

impl TcpBackend {
    /// Starts one on `ip:port` with `id`.
    pub async fn start(ip: &str, port: u16, id: u8) -> TcpBackend {
        let listener = tokio::net::TcpListener::bind(format!("{ip}:{port}")).await.expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = watch::channel(false);
        let mut rx1 = rx.clone();
        let (closing, mut closing_rx) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = listener.accept() => {
                        let Ok((mut s, _)) = r else { continue };
                        let mut rx = rx.clone();
                        tokio::spawn(async move {
                            let _ = s.set_nodelay(true);
                            let echo = async {
                                s.write_all(&[id]).await?;
                                let mut buf = vec![0u8; 64 * 1024];
                                loop {
                                    let n = s.read(&mut buf).await?;
                                    if n == 0 { return Ok::<_, std::io::Error>(()); }
                                    s.write_all(&buf[..n]).await?;
                                }
                            };
                            tokio::select! { _ = echo => {}, _ = rx.wait_for(|s| *s) => {} }
                        });
                    }
                    _ = rx1.wait_for(|s| *s) => return,
                    _ = closing_rx.wait_for(|s| *s) => return,
                }
            }
        });
        TcpBackend { addr, stop, closing }
    }

    /// Shuts it down as a server does on SIGTERM: the listener closes (new
    /// connections are refused) and open connections run to their end.
    pub fn stop_gracefully(&self) {
        self.closing.send_replace(true);
    }

    /// Kills it: listener and connections closed.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

/// One request through `addr`: connect, read the backend id, echo 4
/// bytes, close. Returns the backend id.
pub async fn ping(addr: SocketAddr) -> std::io::Result<u8> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let mut id = [0u8; 1];
        s.read_exact(&mut id).await?;
        s.write_all(b"ping").await?;
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await?;
        if &back != b"ping" {
            return Err(std::io::Error::other("bad echo"));
        }
        Ok(id[0])
    };
    tokio::time::timeout(Duration::from_secs(5), work).await.map_err(|_| std::io::Error::other("timed out"))?
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The A records for `name`; empty while the server does not know it yet
/// (NXDOMAIN before its first sync).
pub async fn resolve(server: SocketAddr, name: &str) -> Vec<std::net::Ipv4Addr> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut q = hickory_proto::op::Message::query();
    q.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::from_ascii(name).unwrap(),
        hickory_proto::rr::RecordType::A,
    ));
    sock.send_to(&q.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf)).await.unwrap().unwrap();
    let m = hickory_proto::op::Message::from_vec(&buf[..n]).unwrap();
    if m.metadata.response_code == hickory_proto::op::ResponseCode::NXDomain {
        return Vec::new();
    }
    assert_eq!(m.metadata.response_code, hickory_proto::op::ResponseCode::NoError);
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// A real UDP backend on `ip:port`: answers each datagram with its `id`
/// then the datagram.
pub async fn udp_backend(ip: &str, port: u16, id: u8) {
    let sock = tokio::net::UdpSocket::bind((ip, port)).await.expect("bind udp backend");
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let mut reply = vec![id];
            reply.extend_from_slice(&buf[..n]);
            let _ = sock.send_to(&reply, from).await;
        }
    });
}

/// The A records for `name`, asked again every 10 ms (for up to 2 s) while
/// the server does not know it yet.
pub async fn resolve_eventually(server: SocketAddr, name: &str) -> Vec<std::net::Ipv4Addr> {
    for _ in 0..200 {
        let answer = resolve(server, name).await;
        if !answer.is_empty() {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Vec::new()
}
