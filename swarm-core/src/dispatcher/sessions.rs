//! The dispatcher's session table: which node holds which session, and
//! when each node was last heard from. A pure structure: every call takes
//! `now` (a [`Timestamp`] from tokio's clock in the dispatcher, any value in
//! tests), so the heartbeat and expiry rules are tested without a runtime.
//!
//! ```
//! use std::time::Duration;
//! use swarm_core::dispatcher::sessions::SessionTable;
//! use swarm_core::time::Timestamp;
//!
//! let grace = Duration::from_secs(15);
//! let t0 = Timestamp::EPOCH;
//! let mut table = SessionTable::default();
//! table.open("node-1".into(), "s1".into(), t0);
//! // A heartbeat within the grace keeps the node; silence past it does not.
//! assert!(table.heartbeat("s1", t0.plus(Duration::from_secs(10))).is_some());
//! assert!(table.silent(t0.plus(Duration::from_secs(20)), grace).is_empty());
//! assert_eq!(table.silent(t0.plus(Duration::from_secs(26)), grace), vec!["node-1".into()]);
//! ```

use crate::id::NodeId;
use crate::time::Timestamp;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Sessions by id and by node, and when each tracked node was last heard
/// from. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct SessionTable {
    by_session: HashMap<String, NodeId>,
    by_node: HashMap<NodeId, String>,
    last_seen: BTreeMap<NodeId, Timestamp>,
}

impl SessionTable {
    /// Opens `session` for `node` at `now`, replacing the node's previous
    /// session (returned: it is no longer valid).
    pub fn open(&mut self, node: NodeId, session: String, now: Timestamp) -> Option<String> {
        let old = self.by_node.insert(node.clone(), session.clone());
        if let Some(old) = &old {
            self.by_session.remove(old);
        }
        self.by_session.insert(session, node.clone());
        self.last_seen.insert(node, now);
        old
    }

    /// A heartbeat on `session` at `now`: the node it belongs to, or `None`
    /// for an unknown (expired, replaced, guessed) session.
    pub fn heartbeat(&mut self, session: &str, now: Timestamp) -> Option<NodeId> {
        let node = self.by_session.get(session)?.clone();
        self.last_seen.insert(node.clone(), now);
        Some(node)
    }

    /// The node holding `session`.
    pub fn node_of(&self, session: &str) -> Option<&NodeId> {
        self.by_session.get(session)
    }

    /// The session `node` holds.
    pub fn session_of(&self, node: &NodeId) -> Option<&str> {
        self.by_node.get(node).map(String::as_str)
    }

    /// Nodes with an open session.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.by_node.keys()
    }

    /// Ends `node`'s session (its connection dropped, or it was declared
    /// down); returns the session id. The node stays tracked until
    /// [`SessionTable::forget`].
    pub fn close(&mut self, node: &NodeId) -> Option<String> {
        let session = self.by_node.remove(node)?;
        self.by_session.remove(&session);
        Some(session)
    }

    /// Starts tracking `node` (believed up) at `now` unless it already is:
    /// a node that was ready before this dispatcher started gets a whole
    /// grace period from then, as Swarm gives after a leader change.
    pub fn track(&mut self, node: &NodeId, now: Timestamp) {
        self.last_seen.entry(node.clone()).or_insert(now);
    }

    /// Gives every tracked node a whole grace from `now` (a dispatcher that
    /// starts leading has heard from no one yet: silence before its term
    /// does not count).
    pub fn grant_grace(&mut self, now: Timestamp) {
        for seen in self.last_seen.values_mut() {
            *seen = (*seen).max(now);
        }
    }

    /// Stops tracking `node` (down, removed) and ends its session.
    pub fn forget(&mut self, node: &NodeId) {
        self.close(node);
        self.last_seen.remove(node);
    }

    /// Tracked nodes not heard from for more than `grace` at `now`, in id
    /// order. Nothing changes: asking twice gives the same answer.
    pub fn silent(&self, now: Timestamp, grace: Duration) -> Vec<NodeId> {
        self.last_seen.iter().filter(|(_, seen)| now.since(**seen) > grace).map(|(n, _)| n.clone()).collect()
    }

    /// When the first tracked node that is not silent yet at `now` will be:
    /// the time to look again.
    pub fn next_expiry(&self, now: Timestamp, grace: Duration) -> Option<Timestamp> {
        self.last_seen
            .values()
            .filter(|seen| now.since(**seen) <= grace)
            .map(|seen| seen.plus(grace).plus(Duration::from_nanos(1)))
            .min()
    }

    /// When `node` was last heard from, if tracked.
    pub fn last_seen(&self, node: &NodeId) -> Option<Timestamp> {
        self.last_seen.get(node).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(15);

    fn at(secs: u64) -> Timestamp {
        Timestamp::EPOCH.plus(Duration::from_secs(secs))
    }

    #[test]
    fn a_new_session_replaces_the_old_one_of_the_node() {
        let mut t = SessionTable::default();
        assert_eq!(t.open("n1".into(), "a".into(), at(0)), None);
        assert_eq!(t.open("n1".into(), "b".into(), at(1)), Some("a".into()));
        assert_eq!(t.heartbeat("a", at(2)), None, "the replaced session is dead");
        assert_eq!(t.heartbeat("b", at(2)), Some("n1".into()));
        assert_eq!(t.session_of(&"n1".into()), Some("b"));
        assert_eq!(t.nodes().count(), 1);
    }

    #[test]
    fn silence_past_the_grace_and_not_before() {
        let mut t = SessionTable::default();
        t.open("n1".into(), "a".into(), at(0));
        t.open("n2".into(), "b".into(), at(0));
        t.heartbeat("b", at(10));
        assert!(t.silent(at(15), GRACE).is_empty(), "exactly the grace is not past it");
        assert_eq!(t.silent(at(16), GRACE), vec![NodeId::from("n1")]);
        assert_eq!(t.silent(at(16), GRACE), vec![NodeId::from("n1")], "asking does not change it");
        assert_eq!(t.silent(at(26), GRACE), vec![NodeId::from("n1"), NodeId::from("n2")]);
    }

    #[test]
    fn the_next_expiry_is_the_earliest_live_node_past_its_grace() {
        let mut t = SessionTable::default();
        assert_eq!(t.next_expiry(at(0), GRACE), None);
        t.open("n1".into(), "a".into(), at(0));
        t.open("n2".into(), "b".into(), at(5));
        let first = t.next_expiry(at(1), GRACE).unwrap();
        assert!(first > at(15) && first < at(16), "{first:?}");
        assert!(t.silent(first, GRACE) == vec![NodeId::from("n1")]);
        // n1 already silent: the next one to look at is n2.
        let next = t.next_expiry(at(16), GRACE).unwrap();
        assert!(next > at(20) && next < at(21), "{next:?}");
    }

    #[test]
    fn tracking_gives_a_ready_node_a_whole_grace_once() {
        let mut t = SessionTable::default();
        t.track(&"n1".into(), at(100));
        t.track(&"n1".into(), at(110)); // already tracked: unchanged
        assert_eq!(t.last_seen(&"n1".into()), Some(at(100)));
        assert!(t.silent(at(115), GRACE).is_empty());
        assert_eq!(t.silent(at(116), GRACE), vec![NodeId::from("n1")]);
        t.forget(&"n1".into());
        assert!(t.silent(at(200), GRACE).is_empty());
        assert_eq!(t.last_seen(&"n1".into()), None);
    }

    #[test]
    fn a_new_term_grants_every_node_a_whole_grace() {
        let mut t = SessionTable::default();
        t.open("n1".into(), "a".into(), at(0));
        t.open("n2".into(), "b".into(), at(50));
        t.grant_grace(at(40));
        assert_eq!(t.last_seen(&"n1".into()), Some(at(40)), "silence before the term does not count");
        assert_eq!(t.last_seen(&"n2".into()), Some(at(50)), "a later heartbeat is kept");
        assert!(t.silent(at(55), GRACE).is_empty());
    }

    #[test]
    fn closing_ends_the_session_but_keeps_the_clock() {
        let mut t = SessionTable::default();
        t.open("n1".into(), "a".into(), at(0));
        assert_eq!(t.close(&"n1".into()), Some("a".into()));
        assert_eq!(t.heartbeat("a", at(1)), None);
        assert_eq!(t.silent(at(16), GRACE), vec![NodeId::from("n1")], "a dropped connection still expires");
    }
}
