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
//!
//! [`MemberCache`] holds the same members for the dispatcher's answers,
//! which carry them on every heartbeat: it follows the store's Node
//! changes instead of walking every node per answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarm_core::model::{ManagerStatus, Node, NodeRole, Object};
use swarm_core::state::{Action, Change, State};
use swarm_core::store::{Store, StoreError};
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

/// `node` as a member: a node of role manager with a manager status.
fn member_of(node: &Node) -> Option<Member> {
    if node.spec.role != NodeRole::Manager {
        return None;
    }
    node.manager.clone().map(|status| Member { node_id: node.id.to_string(), status })
}

/// The managers recorded in `state` (nodes of role manager with a manager
/// status), by node id. Walks every node: for answers on a hot path use a
/// [`MemberCache`].
pub fn members(state: &State) -> Vec<Member> {
    let mut out: Vec<Member> = state.nodes().filter_map(|n| member_of(n)).collect();
    out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    out
}

/// The managers recorded in a store, kept current by following the
/// store's changes: what every dispatcher heartbeat answer carries, read
/// in O(managers) instead of a walk over every node.
///
/// [`MemberCache::follow`] lists the members once from the local replica,
/// then applies each change to a Node object as it comes (a node that
/// becomes, stops being or is no longer recorded as a manager); a watch
/// that lagged or was compacted lists again, and so does a replica that
/// moved on without a change reaching the watch (a raft snapshot
/// installed: the watch would only notice at the next change). Until
/// `follow` runs, it holds the members of the state it was made from.
#[derive(Clone, Debug)]
pub struct MemberCache {
    members: Arc<Mutex<Arc<Vec<Member>>>>,
}

impl MemberCache {
    /// A cache holding the members of `state`.
    pub fn new(state: &State) -> Self {
        MemberCache { members: Arc::new(Mutex::new(Arc::new(members(state)))) }
    }

    /// The members now, by node id (as [`members`] would list them).
    pub fn get(&self) -> Arc<Vec<Member>> {
        self.lock().clone()
    }

    /// The members' API addresses, by node id.
    pub fn api_addrs(&self) -> Vec<String> {
        self.get().iter().map(|m| m.status.api_addr.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<Vec<Member>>> {
        // The critical sections only swap or clone an Arc.
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, index: &BTreeMap<String, Member>) {
        let now: Vec<Member> = index.values().cloned().collect();
        let mut slot = self.lock();
        if **slot != now {
            tracing::debug!(managers = now.len(), "manager list updated");
            *slot = Arc::new(now);
        }
    }

    /// Keeps the cache in step with `store` until the task is dropped.
    pub async fn follow<S: Store + ?Sized>(self, store: &S) {
        loop {
            match self.follow_once(store).await {
                Ok(()) => tracing::debug!("manager list: listing the members again"),
                Err(e) => {
                    tracing::debug!(error = %e, "manager list: following the store failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Lists, then follows until a re-list is needed (`Ok`) or the store
    /// fails (`Err`).
    async fn follow_once<S: Store + ?Sized>(&self, store: &S) -> Result<(), StoreError> {
        let state = local_state(store).await?;
        let mut index: BTreeMap<String, Member> =
            state.nodes().filter_map(|n| member_of(n)).map(|m| (m.node_id.clone(), m)).collect();
        self.publish(&index);
        let mut watch = store.watch(state.revision()).await?;
        let mut check = tokio::time::interval(Duration::from_secs(1));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let change = tokio::select! {
                change = watch.next() => Some(change),
                _ = check.tick() => None,
            };
            let mut changes = Vec::new();
            match change {
                Some(c) => changes.push(c),
                None => {
                    // Everything up to the replica's revision is in the
                    // watch by now (a change is published as it is
                    // applied); if it still ends before, the replica was
                    // replaced without a change.
                    let at = local_state(store).await?.revision();
                    while let Some(c) = watch.try_next() {
                        changes.push(c);
                    }
                    if changes.iter().all(Result::is_ok) && watch.revision() < at {
                        return Ok(());
                    }
                }
            }
            let mut changed = false;
            for c in changes {
                match c {
                    Ok(c) => changed |= apply_change(&mut index, &c),
                    Err(StoreError::Lagged { .. } | StoreError::Compacted { .. }) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            if changed {
                self.publish(&index);
            }
        }
    }
}

/// The store's local state: a replicated store's replica as applied (no
/// quorum needed), or its snapshot.
async fn local_state<S: Store + ?Sized>(store: &S) -> Result<Arc<State>, StoreError> {
    match store.local_snapshot() {
        Some(s) => Ok(s),
        None => store.snapshot().await,
    }
}

/// Applies `change`'s Node events to `index`; true if it changed.
fn apply_change(index: &mut BTreeMap<String, Member>, change: &Change) -> bool {
    let mut changed = false;
    for ev in &change.events {
        let Object::Node(node) = &ev.object else { continue };
        let now = if ev.action == Action::Delete { None } else { member_of(node) };
        changed |= match now {
            Some(m) => index.insert(node.id.to_string(), m.clone()).as_ref() != Some(&m),
            None => index.remove(node.id.as_str()).is_some(),
        };
    }
    changed
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

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use swarm_core::model::{NodeState, Resources};
    use swarm_core::model::{ObjectKind, Revision};
    use swarm_core::state::Transaction;
    use swarm_core::store::{Replica, Watch};

    /// A store on one replica that a test can replace wholesale, as a raft
    /// snapshot install does.
    #[derive(Clone, Default)]
    struct ReplicaStore(Arc<Mutex<Replica>>);

    impl ReplicaStore {
        fn lock(&self) -> std::sync::MutexGuard<'_, Replica> {
            self.0.lock().unwrap()
        }
    }

    #[async_trait]
    impl Store for ReplicaStore {
        async fn commit(&self, tx: Transaction) -> Result<Arc<Change>, StoreError> {
            self.lock().apply(&tx).map_err(StoreError::Rejected)
        }
        async fn snapshot(&self) -> Result<Arc<State>, StoreError> {
            Ok(self.lock().state())
        }
        async fn watch(&self, from: Revision) -> Result<Watch, StoreError> {
            self.lock().watch(from)
        }
        fn local_snapshot(&self) -> Option<Arc<State>> {
            Some(self.lock().state())
        }
    }

    fn node(id: &str, role: NodeRole, raft_id: Option<u64>) -> Node {
        let mut n = Node::ready(id, id, Resources::default());
        n.spec.role = role;
        n.manager = raft_id.map(|r| ManagerStatus {
            raft_id: r,
            raft_addr: format!("127.0.0.{r}:4243"),
            api_addr: format!("127.0.0.{r}:4242"),
        });
        n
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn addrs(c: &MemberCache) -> Vec<String> {
        c.api_addrs()
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_follows_node_changes_as_a_walk_would_see_them() {
        let store = ReplicaStore::default();
        store.commit(Transaction::new().create(node("m1", NodeRole::Manager, Some(1)))).await.unwrap();
        let cache = MemberCache::new(&store.lock().state());
        assert_eq!(addrs(&cache), ["127.0.0.1:4242"], "filled from the state it was made from");
        let (c, s) = (cache.clone(), store.clone());
        let task = tokio::spawn(async move { c.follow(&s).await });
        settle().await;
        let check = |what: &str| {
            let walked = members(&store.lock().state());
            assert_eq!(*cache.get(), walked, "{what}");
        };

        // A manager recorded after the cache was made (as raft.join does
        // once the leader runs): the case a cache filled once would miss.
        store.commit(Transaction::new().create(node("m2", NodeRole::Manager, Some(2)))).await.unwrap();
        store.commit(Transaction::new().create(node("w1", NodeRole::Worker, None))).await.unwrap();
        settle().await;
        check("m2 joined, w1 is no manager");
        assert_eq!(addrs(&cache), ["127.0.0.1:4242", "127.0.0.2:4242"]);

        // Promoted: a manager once it has a manager status.
        let current = |id: &str| store.lock().state().node(&id.into()).unwrap().as_ref().clone();
        let mut w1 = current("w1");
        w1.spec.role = NodeRole::Manager;
        store.commit(Transaction::new().update(w1)).await.unwrap();
        settle().await;
        check("w1 promoted, not yet a raft member");
        assert_eq!(cache.get().len(), 2);
        let mut w1 = current("w1");
        w1.manager = node("w1", NodeRole::Manager, Some(3)).manager;
        store.commit(Transaction::new().update(w1)).await.unwrap();
        settle().await;
        check("w1 a member");
        assert_eq!(cache.get().len(), 3);

        // Demoted (role worker, status still there), then a status change
        // of another node: neither lists m1.
        let mut m1 = current("m1");
        m1.spec.role = NodeRole::Worker;
        store.commit(Transaction::new().update(m1)).await.unwrap();
        let mut m2 = current("m2");
        m2.status.state = NodeState::Down;
        store.commit(Transaction::new().update(m2)).await.unwrap();
        settle().await;
        check("m1 demoted");
        assert_eq!(addrs(&cache), ["127.0.0.2:4242", "127.0.0.3:4242"]);

        // Removed.
        let m2 = current("m2");
        store.commit(Transaction::new().delete(ObjectKind::Node, "m2", m2.meta.version)).await.unwrap();
        settle().await;
        check("m2 removed");
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_replaced_without_a_change_is_listed_again() {
        let store = ReplicaStore::default();
        store.commit(Transaction::new().create(node("m1", NodeRole::Manager, Some(1)))).await.unwrap();
        let cache = MemberCache::new(&store.lock().state());
        let (c, s) = (cache.clone(), store.clone());
        let task = tokio::spawn(async move { c.follow(&s).await });
        settle().await;
        // A raft snapshot from a leader that recorded two more managers.
        let mut other = Replica::default();
        for (id, r) in [("m1", 1), ("m2", 2), ("m3", 3)] {
            other.apply(&Transaction::new().create(node(id, NodeRole::Manager, Some(r)))).unwrap();
        }
        store.lock().restore(other.state().as_ref().clone());
        settle().await;
        assert_eq!(cache.get().len(), 1, "no change reached the watch yet");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        settle().await;
        assert_eq!(*cache.get(), members(&store.lock().state()), "listed again within the 1 s check");
        assert_eq!(cache.get().len(), 3);
        task.abort();
    }
}
