//! Keeps a manager's raft transport in step with the managers recorded in
//! the store.
//!
//! Every manager's Node object carries its [`ManagerStatus`] (raft id,
//! raft address, API address). Each manager reads them from its replica
//! and tells its raft transport where each peer is and its TLS layer which
//! node id (certificate CN) each raft id must present. A manager that
//! rejoins from another address (moby/moby#41043) updates its record, and
//! every other manager redials it there. A manager that is no longer
//! recorded (demoted) loses its name: its certificate is no longer
//! admitted on the raft port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use swarm_core::model::{ManagerStatus, NodeRole};
use swarm_core::state::State;
use swarm_raft::tls::RaftTls;
use swarm_raft::{RaftStore, TcpTransport};

/// One manager as recorded in the store.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// Its node id.
    pub node_id: String,
    /// Where it is reached.
    #[serde(flatten)]
    pub status: ManagerStatus,
}

/// The managers recorded in `state` (nodes of role manager with a manager
/// status), by node id.
pub fn members(state: &State) -> Vec<Member> {
    let mut out: Vec<Member> = state
        .nodes()
        .filter(|n| n.spec.role == NodeRole::Manager)
        .filter_map(|n| n.manager.clone().map(|status| Member { node_id: n.id.to_string(), status }))
        .collect();
    out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    out
}

/// The API address of the manager `raft` follows as leader, if known.
pub fn leader_api_addr(raft: &RaftStore) -> Option<String> {
    let leader = raft.status().leader?;
    members(&raft.stale_snapshot()).into_iter().find(|m| m.status.raft_id == leader).map(|m| m.status.api_addr)
}

/// Points the transport and TLS layer at every member but `me` whose
/// record differs from `previous`. Returns how many peers it set.
pub fn apply(members: &[Member], previous: &[Member], me: u64, transport: &TcpTransport, tls: &RaftTls) -> usize {
    let mut n = 0;
    for m in members.iter().filter(|m| m.status.raft_id != me && !previous.contains(m)) {
        match m.status.raft_addr.parse::<SocketAddr>() {
            Ok(addr) => {
                if tls.name_of(m.status.raft_id).as_deref() != Some(m.node_id.as_str()) {
                    tls.set_name(m.status.raft_id, m.node_id.clone());
                }
                transport.set_peer(m.status.raft_id, addr);
                n += 1;
            }
            Err(e) => {
                tracing::warn!(node = %m.node_id, addr = %m.status.raft_addr, error = %e, "a manager's raft address is not host:port")
            }
        }
    }
    n
}

/// Applies the store's members every `period` until the task is dropped.
pub async fn sync_loop(raft: RaftStore, transport: Arc<TcpTransport>, tls: Arc<RaftTls>, period: Duration) {
    let me = raft.id();
    let mut last: Vec<Member> = Vec::new();
    loop {
        let now = members(&raft.stale_snapshot());
        if now != last {
            // A manager no longer recorded (demoted, removed) is no longer
            // admitted on the raft port: its raft id loses its name.
            for gone in last
                .iter()
                .filter(|m| m.status.raft_id != me && !now.iter().any(|n| n.status.raft_id == m.status.raft_id))
            {
                tls.remove_name(gone.status.raft_id);
                tracing::info!(node = %gone.node_id, raft_id = gone.status.raft_id, "raft peer forgotten: no longer a manager");
            }
            let n = apply(&now, &last, me, &transport, &tls);
            tracing::debug!(peers = n, "raft peers updated from the store");
            last = now;
        }
        tokio::time::sleep(period).await;
    }
}
