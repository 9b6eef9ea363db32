//! The `raft` service of the node API: how a manager that joined with a
//! manager token becomes a voter.
//!
//! The joining manager (holding a manager certificate from the CA) calls
//! `raft.join` with its raft id and addresses. The leader records them in
//! the manager's Node object (role manager, [`ManagerStatus`]), points its
//! own transport at the newcomer, and adds it as a voter; it answers the
//! members it knows so the newcomer can dial them. A follower answers
//! [`Code::NotLeader`] with the leader's API address: the caller retries
//! there. Calling again with the same raft id and a new address updates
//! the record (a manager whose address changed rejoins, moby/moby#41043).
//!
//! Identity is the caller's certificate: the node id recorded is its CN,
//! and only manager certificates are admitted. `raft.status` (leader,
//! term, voters, members; what `swarmctl node ls` shows) is also open to
//! operators and the local socket.

use crate::peers::{Member, leader_api_addr, members};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use swarm_core::cluster::{check_voter_removal, voter_reach};
use swarm_core::id::NodeId;
use swarm_core::model::{ManagerStatus, Node, NodeRole};
use swarm_core::state::Transaction;
use swarm_core::store::{Store, update_with_retry};
use swarm_raft::tls::RaftTls;
use swarm_raft::{RaftStore, TcpTransport};
use swarm_security::role::Role;
use swarm_security::rpc::{self, Code, Fault, Handler, Peer, Reply};

/// `raft.join`'s request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The caller's raft id (random, non-zero).
    pub raft_id: u64,
    /// `host:port` of the caller's raft listener.
    pub raft_addr: String,
    /// `host:port` of the caller's node API listener.
    pub api_addr: String,
}

/// `raft.join`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinReply {
    /// Every manager recorded, the caller included.
    pub members: Vec<Member>,
}

/// Records `node_id` in the store as a manager reached at `status`
/// (creating its Node object if needed; nothing written when it already
/// says so). Returns the raft id it had before when that was another one.
pub async fn record_manager(
    store: &RaftStore,
    node_id: &str,
    status: &ManagerStatus,
) -> Result<Option<u64>, swarm_core::store::StoreError> {
    let id = NodeId::new(node_id);
    let mut replaced = None;
    update_with_retry(store, 10, |state| {
        let mut node = match state.node(&id) {
            Some(n) => n.as_ref().clone(),
            None => Node { id: id.clone(), ..Default::default() },
        };
        replaced = node.manager.as_ref().map(|m| m.raft_id).filter(|r| *r != status.raft_id);
        if node.spec.role == NodeRole::Manager && node.manager.as_ref() == Some(status) {
            return None;
        }
        node.spec.role = NodeRole::Manager;
        node.manager = Some(status.clone());
        Some(if node.meta.version.0 == 0 { Transaction::new().create(node) } else { Transaction::new().update(node) })
    })
    .await?;
    Ok(replaced)
}

/// `raft.status`'s answer: the raft group as one manager sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// The raft id of the manager answering.
    pub raft_id: u64,
    /// The leader it follows, if it knows one.
    pub leader: Option<u64>,
    /// Its term.
    pub term: u64,
    /// The voters.
    pub voters: Vec<u64>,
    /// The managers recorded in the store.
    pub members: Vec<Member>,
}

/// The `raft` service. See the [module docs](self).
pub struct MembershipService {
    raft: RaftStore,
    transport: Arc<TcpTransport>,
    tls: Arc<RaftTls>,
}

impl MembershipService {
    /// The service of the manager owning `raft`, `transport` and `tls`.
    pub fn new(raft: RaftStore, transport: Arc<TcpTransport>, tls: Arc<RaftTls>) -> Self {
        MembershipService { raft, transport, tls }
    }

    async fn join(&self, node_id: &str, req: JoinRequest) -> Result<JoinReply, Fault> {
        if req.raft_id == 0 {
            return Err(Fault::new(Code::BadRequest, "raft.join: raft_id 0 is reserved by raft"));
        }
        let raft_addr: SocketAddr = req.raft_addr.parse().map_err(|e| {
            Fault::new(Code::BadRequest, format!("raft.join: raft_addr {:?} is not host:port: {e}", req.raft_addr))
        })?;
        req.api_addr.parse::<SocketAddr>().map_err(|e| {
            Fault::new(Code::BadRequest, format!("raft.join: api_addr {:?} is not host:port: {e}", req.api_addr))
        })?;
        if !*self.raft.leadership().borrow() {
            let mut f = Fault::new(Code::NotLeader, "raft.join: this manager does not lead; ask the leader");
            f.redirect = leader_api_addr(&self.raft);
            return Err(f);
        }
        let state = self.raft.stale_snapshot();
        if let Some(other) =
            members(&state).into_iter().find(|m| m.status.raft_id == req.raft_id && m.node_id != node_id)
        {
            return Err(Fault::new(
                Code::BadRequest,
                format!("raft.join: raft id {} is already manager {}'s; pick another", req.raft_id, other.node_id),
            ));
        }
        let status =
            ManagerStatus { raft_id: req.raft_id, raft_addr: req.raft_addr.clone(), api_addr: req.api_addr.clone() };
        let replaced = record_manager(&self.raft, node_id, &status)
            .await
            .map_err(|e| Fault::new(Code::Unavailable, format!("raft.join: recording manager {node_id}: {e}")))?;
        self.tls.set_name(req.raft_id, node_id.to_owned());
        self.transport.set_peer(req.raft_id, raft_addr);
        let voters = self.raft.status().voters;
        if let Some(old) = replaced
            && voters.contains(&old)
        {
            tracing::info!(
                node = node_id,
                old,
                new = req.raft_id,
                "a manager rejoined under a new raft id; removing the old one"
            );
            self.raft
                .remove(old)
                .await
                .map_err(|e| Fault::new(Code::Unavailable, format!("raft.join: removing old raft id {old}: {e}")))?;
        }
        if !voters.contains(&req.raft_id) {
            tracing::info!(node = node_id, raft_id = req.raft_id, addr = %raft_addr, "adding a manager to the raft group");
            self.raft.add_voter(req.raft_id).await.map_err(|e| {
                Fault::new(Code::Unavailable, format!("raft.join: adding raft id {} as a voter: {e}", req.raft_id))
            })?;
        }
        Ok(JoinReply { members: members(&self.raft.stale_snapshot()) })
    }
}

#[async_trait]
impl Handler for MembershipService {
    async fn call(&self, peer: &Peer, method: &str, body: rpc::Body) -> Result<Reply, Fault> {
        if method == "status" {
            if !peer.local {
                peer.require(&[Role::Manager, Role::Operator], "raft.status")?;
            }
            let st = self.raft.status();
            return Reply::unary(&RaftStatus {
                raft_id: st.id,
                leader: st.leader,
                term: st.term,
                voters: st.voters,
                members: members(&self.raft.stale_snapshot()),
            });
        }
        let id = peer.require(&[Role::Manager], "raft membership")?;
        match method {
            "join" => {
                let req: JoinRequest = rpc::body("raft.join", body)?;
                Reply::unary(&self.join(&id.node_id, req).await?)
            }
            other => Err(Fault::new(Code::UnknownMethod, format!("no method raft.{other}"))),
        }
    }
}

/// Makes the raft group follow the store, on the leader: a manager whose
/// Node object says `worker` (demoted) is removed from the voters (the
/// leader first hands leadership over when it is the one demoted, so the
/// cluster never waits on a leader that is leaving, moby/moby#34384) and
/// its manager status cleared; a voter whose Node object is gone is
/// removed. A demoted manager whose removal would leave the voters
/// without a reachable quorum (or without managers) stays a voter until
/// it would not ([`check_voter_removal`]; logged): the control API
/// already refuses such a demotion, but a manager may be lost after it
/// was accepted. Runs every `period` until the task is dropped.
pub async fn reconcile_loop(raft: RaftStore, period: std::time::Duration) {
    loop {
        tokio::time::sleep(period).await;
        if !*raft.leadership().borrow() {
            continue;
        }
        if let Err(e) = reconcile_once(&raft).await {
            tracing::warn!(error = %e, "raft membership: reconciling with the store failed; will retry");
        }
    }
}

/// One pass of [`reconcile_loop`]; returns what it changed.
pub async fn reconcile_once(raft: &RaftStore) -> Result<Vec<String>, swarm_core::store::StoreError> {
    let state = raft.stale_snapshot();
    let status = raft.status();
    let mut done = Vec::new();
    let recorded: std::collections::BTreeSet<u64> =
        state.nodes().filter_map(|n| n.manager.as_ref().map(|m| m.raft_id)).collect();
    for node in state.nodes().filter(|n| n.spec.role == NodeRole::Worker && n.manager.is_some()) {
        let Some(m) = &node.manager else { continue };
        if status.voters.contains(&m.raft_id) {
            // The control API refused a demotion that would lose the
            // reachable quorum; a manager lost since then makes this one
            // wait (SwarmKit's role manager waits the same way).
            if let Err(loss) = check_voter_removal(&voter_reach(&state, &status.voters), m.raft_id) {
                tracing::warn!(node = %node.id, reason = %loss, "raft membership: a demoted manager stays a voter for now");
                continue;
            }
            tracing::info!(node = %node.id, raft_id = m.raft_id, "raft membership: removing a demoted manager");
            raft.remove(m.raft_id).await?;
            done.push(format!("removed demoted manager {}", node.id));
        }
        let id = node.id.clone();
        update_with_retry(raft, 10, |state| {
            let n = state.node(&id)?;
            if n.spec.role != NodeRole::Worker || n.manager.is_none() {
                return None;
            }
            let mut n = n.as_ref().clone();
            n.manager = None;
            Some(Transaction::new().update(n))
        })
        .await?;
        // A demoted leader is no longer leader: the next pass runs on the new one.
        if !*raft.leadership().borrow() {
            return Ok(done);
        }
    }
    for v in status.voters.iter().filter(|v| **v != status.id && !recorded.contains(v)) {
        tracing::info!(raft_id = v, "raft membership: removing a voter whose node was removed");
        raft.remove(*v).await?;
        done.push(format!("removed voter {v}"));
    }
    Ok(done)
}
