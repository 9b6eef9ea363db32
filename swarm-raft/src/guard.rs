//! The gate in front of `RawNode::step`: every raft message received from
//! another manager is checked here, and refused unless raft-rs can take it.
//!
//! raft-rs trusts its input: a message no honest peer sends can reach a
//! `fatal!` (a panic) inside `step` and kill the manager, e.g. an empty
//! `MsgPropose` ("stepped empty MsgProp"), an append whose entries conflict
//! with committed ones ("entry conflict with committed entry"), a
//! forwarded request carrying a term ("term should not be set when
//! sending"), a `MsgReadIndex` without its context entry (an index out of
//! bounds), an append anchored at log term 0 past the log's end
//! (`unstable.slice` out of bound), or a rejection hint of `u64::MAX` (an
//! overflow). [`check`] encodes what an honest raft-rs 0.7 peer running
//! swarm sends, per message type, and each rule names the panic it
//! prevents. Refused messages are logged by the driver with the sender and
//! the [`Rejection`], counted in `NodeStatus::rejected_messages`, and never
//! stepped: raft tolerates lost messages, so refusing is always safe.
//!
//! This is about malformed input from anyone, not about authenticating
//! peers: a well-formed message from an impostor still passes.

use crate::node::{ReqId, decode_snapshot};
use protobuf::{Message as _, UnknownFields};
use raft::prelude::{ConfChange, ConfChangeV2, ConfState, EntryType, Message, MessageType, Raft};
use raft::{Changer, ProgressTracker, StateRole, Storage};
use std::collections::HashSet;

/// Most entries one forwarded proposal may carry (swarm proposes one).
pub(crate) const MAX_PROPOSAL_ENTRIES: usize = 16;

/// How far ahead of this manager's term a message's term may be. Honest
/// terms grow by one per election; raft-rs adds to terms unchecked, so a
/// term near `u64::MAX` would overflow (a panic) at the next election.
pub(crate) const MAX_TERM_STEP: u64 = 1 << 32;

/// Largest log index a message may name (far beyond any real log; raft-rs
/// adds to indexes unchecked).
pub(crate) const MAX_INDEX: u64 = 1 << 62;

/// Why a received message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Rejection {
    /// The frame is not a protobuf raft message.
    #[error("undecodable frame: {0}")]
    Undecodable(String),
    /// The message (or a part of it) has a field this version does not know,
    /// e.g. a message type number beyond raft-rs 0.7's.
    #[error("unknown field {field} in {part}{}", value.map(|v| format!(" (value {v})")).unwrap_or_default())]
    UnknownField {
        /// Field number.
        field: u32,
        /// Which part of the message.
        part: &'static str,
        /// Its value when it is a number.
        value: Option<u64>,
    },
    /// A type raft-rs only uses inside one manager.
    #[error("{0:?} is local to a manager and never travels")]
    LocalOnly(MessageType),
    /// Addressed to another manager.
    #[error("addressed to manager {to}, this is manager {me}")]
    WrongRecipient {
        /// The `to` field.
        to: u64,
        /// This manager.
        me: u64,
    },
    /// The message names a sender other than the manager its connection
    /// is authenticated as.
    #[error("claims to come from manager {claimed} on the connection of manager {connection}")]
    Impersonation {
        /// The `from` field.
        claimed: u64,
        /// The manager the connection is authenticated as.
        connection: u64,
    },
    /// The sender id is 0 or this manager's own.
    #[error("sender id {0} is invalid (0 or this manager's own id)")]
    BadSender(u64),
    /// The term is missing, or present where raft-rs forbids it.
    #[error("{kind:?} with term {term}: {rule}")]
    Term {
        /// Message type.
        kind: MessageType,
        /// The term it carries.
        term: u64,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// Any other rule of the message's type.
    #[error("{kind:?}: {why}")]
    Invalid {
        /// Message type.
        kind: MessageType,
        /// What is wrong, with the values involved.
        why: String,
    },
}

fn invalid(kind: MessageType, why: String) -> Rejection {
    Rejection::Invalid { kind, why }
}

/// A message that may be stepped, and a reply to send first.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// The message to step (its commit index possibly lowered).
    pub msg: Message,
    /// A rejection to send to the leader, see [`admit`].
    pub nudge: Option<Message>,
}

/// The whole inbound path before `step`: [`check`], then one repair.
///
/// A heartbeat whose commit index is past this log's end happens after a
/// damaged log tail was cut: the leader still believes this manager holds
/// entries it lost (raft-rs would panic: "to_commit out of range"). The
/// commit index is lowered to the log's end, and a rejection is sent to the
/// leader: its progress for this manager sits in replicate state with a
/// match index this log no longer reaches, and raft-rs ignores ordinary
/// rejections at or below it; a rejection above any possible match index
/// moves it back to probing, which finds the real end of this log (the
/// hint) and resends from there.
pub(crate) fn admit<T: Storage>(r: &Raft<T>, mut msg: Message) -> Result<Admitted, Rejection> {
    check(r, &msg)?;
    let last = r.raft_log.last_index();
    let mut nudge = None;
    if msg.get_msg_type() == MessageType::MsgHeartbeat && msg.commit > last {
        tracing::warn!(
            id = r.id,
            peer = msg.from,
            commit = msg.commit,
            last,
            "leader's commit is past this log (tail was cut?); catching up"
        );
        msg.commit = last;
        let mut n = Message::default();
        n.set_msg_type(MessageType::MsgAppendResponse);
        n.to = msg.from;
        n.from = r.id;
        n.term = msg.term;
        n.reject = true;
        n.index = u64::MAX / 2;
        n.reject_hint = last;
        nudge = Some(n);
    }
    Ok(Admitted { msg, nudge })
}

/// Checks a message received from the network against what raft-rs can
/// step safely on `r`. See the [module docs](self).
pub(crate) fn check<T: Storage>(r: &Raft<T>, m: &Message) -> Result<(), Rejection> {
    check_unknown(m.get_unknown_fields(), "the message")?;
    for e in m.get_entries() {
        check_unknown(e.get_unknown_fields(), "an entry")?;
    }
    if m.has_snapshot() {
        let s = m.get_snapshot();
        check_unknown(s.get_unknown_fields(), "the snapshot")?;
        check_unknown(s.get_metadata().get_unknown_fields(), "the snapshot metadata")?;
        check_unknown(s.get_metadata().get_conf_state().get_unknown_fields(), "the snapshot membership")?;
    }
    let kind = m.get_msg_type();
    if raft::raw_node::is_local_msg(kind) {
        return Err(Rejection::LocalOnly(kind));
    }
    if m.to != r.id {
        return Err(Rejection::WrongRecipient { to: m.to, me: r.id });
    }
    if m.from == raft::INVALID_ID || m.from == r.id {
        return Err(Rejection::BadSender(m.from));
    }
    // raft-rs sends forwarded requests without a term and everything else
    // with one. A forwarded request with a term makes a follower panic when
    // it forwards it again ("term should not be set when sending"); a
    // message without a term is taken as local and skips every term check
    // (and trips debug assertions on candidates).
    let forwarded = matches!(kind, MessageType::MsgPropose | MessageType::MsgReadIndex);
    if forwarded && m.term != 0 {
        return Err(Rejection::Term { kind, term: m.term, rule: "forwarded requests carry no term" });
    }
    if !forwarded && m.term == 0 {
        return Err(Rejection::Term { kind, term: 0, rule: "messages between managers carry a term" });
    }
    if m.term > r.term.saturating_add(MAX_TERM_STEP) {
        return Err(invalid(
            kind,
            format!("term {} is more than 2^32 terms ahead of this manager's {}", m.term, r.term),
        ));
    }
    match kind {
        MessageType::MsgPropose => check_proposal(m),
        MessageType::MsgReadIndex => {
            // The leader reads `entries[0]` unchecked.
            let [e] = m.get_entries() else {
                return Err(invalid(kind, format!("needs exactly one entry (its context), has {}", m.entries.len())));
            };
            match ReqId::decode(&e.data) {
                Some(id) if id.origin() == m.from => Ok(()),
                Some(id) => {
                    Err(invalid(kind, format!("context of manager {} sent by manager {}", id.origin(), m.from)))
                }
                None => Err(invalid(kind, format!("context of {} bytes is not a request id", e.data.len()))),
            }
        }
        MessageType::MsgReadIndexResp => match m.get_entries() {
            [_] => Ok(()),
            es => Err(invalid(kind, format!("needs exactly one entry (the read's context), has {}", es.len()))),
        },
        // raft-rs answers appends and snapshots of an older term without
        // looking inside, and reads responses only in its own term: the
        // rules below apply where raft-rs would use the contents (so an
        // honest but stale message is not refused).
        MessageType::MsgAppend if m.term >= r.term => check_append(r, m),
        MessageType::MsgAppendResponse if m.term == r.term => check_append_response(r, m),
        MessageType::MsgSnapshot if m.term >= r.term => check_snapshot(m),
        MessageType::MsgTransferLeader if r.state != StateRole::Leader => {
            // A follower forwards it to the leader with its term set, and
            // raft-rs panics on that ("term should not be set when sending").
            Err(invalid(kind, "this manager does not lead; a leadership transfer request goes to the leader".into()))
        }
        _ => Ok(()),
    }
}

fn check_unknown(u: &UnknownFields, part: &'static str) -> Result<(), Rejection> {
    match u.iter().next() {
        None => Ok(()),
        Some((field, values)) => Err(Rejection::UnknownField { field, part, value: values.varint.first().copied() }),
    }
}

fn check_proposal(m: &Message) -> Result<(), Rejection> {
    let kind = MessageType::MsgPropose;
    let n = m.get_entries().len();
    if n == 0 {
        // raft-rs: fatal!("stepped empty MsgProp") on the leader.
        return Err(invalid(kind, "no entries (an empty proposal)".into()));
    }
    if n > MAX_PROPOSAL_ENTRIES {
        return Err(invalid(kind, format!("{n} entries, at most {MAX_PROPOSAL_ENTRIES} per proposal")));
    }
    for (i, e) in m.get_entries().iter().enumerate() {
        // Every swarm proposal carries (origin, incarnation, seq) of the
        // manager that proposed it, and it is that manager that sends it.
        match ReqId::decode(&e.context) {
            Some(id) if id.origin() == m.from => {}
            Some(id) => {
                return Err(invalid(
                    kind,
                    format!(
                        "entry {i} carries a request id of manager {} but comes from manager {}",
                        id.origin(),
                        m.from
                    ),
                ));
            }
            None => {
                return Err(invalid(
                    kind,
                    format!("entry {i} has a context of {} bytes, not a request id", e.context.len()),
                ));
            }
        }
        let decoded = match e.get_entry_type() {
            EntryType::EntryNormal if e.data.is_empty() => Err("no data".to_string()),
            EntryType::EntryNormal => Ok(()),
            EntryType::EntryConfChange => ConfChange::parse_from_bytes(&e.data).map(drop).map_err(|x| x.to_string()),
            EntryType::EntryConfChangeV2 => {
                ConfChangeV2::parse_from_bytes(&e.data).map(drop).map_err(|x| x.to_string())
            }
        };
        if let Err(why) = decoded {
            return Err(invalid(kind, format!("entry {i} ({:?}): {why}", e.get_entry_type())));
        }
    }
    Ok(())
}

/// The local log's term at `idx`, when the log still holds it.
fn local_term<T: Storage>(r: &Raft<T>, idx: u64) -> Option<u64> {
    let log = &r.raft_log;
    if idx < log.first_index().saturating_sub(1) || idx > log.last_index() {
        return None;
    }
    log.term(idx).ok()
}

fn check_append<T: Storage>(r: &Raft<T>, m: &Message) -> Result<(), Rejection> {
    let kind = MessageType::MsgAppend;
    let committed = r.raft_log.committed;
    if m.index > MAX_INDEX || m.commit > MAX_INDEX {
        return Err(invalid(kind, format!("index {} or commit {} is beyond any real log", m.index, m.commit)));
    }
    // Entries at committed indexes must be the committed ones (raft-rs:
    // fatal!("entry {} conflict with committed entry {}")).
    for e in m.get_entries() {
        if e.index <= committed
            && let Some(t) = local_term(r, e.index)
            && t != e.term
        {
            return Err(invalid(
                kind,
                format!(
                    "entry {} has term {}, but the committed entry {} here has term {t} (committed up to {committed})",
                    e.index, e.term, e.index
                ),
            ));
        }
    }
    if m.log_term > m.term {
        return Err(invalid(kind, format!("log term {} is above the message's term {}", m.log_term, m.term)));
    }
    if m.log_term == 0 && m.index != 0 {
        // raft-rs reads the term of an index outside the log as 0, so this
        // "matches" past the log's end and then slices out of bounds.
        return Err(invalid(kind, format!("log term 0 at index {} (only index 0 has term 0)", m.index)));
    }
    let mut prev_term = m.log_term;
    for (i, e) in m.get_entries().iter().enumerate() {
        let want = m.index.checked_add(1 + i as u64);
        if want != Some(e.index) {
            // Non-consecutive entries make raft-rs slice its log with
            // indexes it never checked.
            return Err(invalid(
                kind,
                format!("entry {i} has index {}, expected {want:?} (entries follow index {})", e.index, m.index),
            ));
        }
        if e.term < prev_term || e.term > m.term {
            return Err(invalid(
                kind,
                format!(
                    "entry {} has term {}: terms never go down in a log (previous {prev_term}) nor exceed the leader's {}",
                    e.index, e.term, m.term
                ),
            ));
        }
        prev_term = e.term;
    }
    // A leader of this term or a later one holds every committed entry, so
    // its log term at or after our commit index is at least the term of our
    // committed entry. A lower one would make raft-rs search for a conflict
    // below the start of the log (fatal!("term({}) must be valid")).
    if m.index >= committed
        && let Some(tc) = local_term(r, committed)
        && m.log_term < tc
    {
        return Err(invalid(
            kind,
            format!(
                "log term {} at index {} is below the term {tc} of this manager's committed index {committed}",
                m.log_term, m.index
            ),
        ));
    }
    Ok(())
}

fn check_append_response<T: Storage>(r: &Raft<T>, m: &Message) -> Result<(), Rejection> {
    let kind = MessageType::MsgAppendResponse;
    let last = r.raft_log.last_index();
    if m.request_snapshot != raft::INVALID_INDEX {
        return Err(invalid(kind, format!("requests a snapshot at {} (swarm never does)", m.request_snapshot)));
    }
    if m.reject {
        // The hint is at most the index the leader probed, which is in its
        // log; raft-rs computes `hint + 1` unchecked.
        if m.reject_hint > last {
            return Err(invalid(
                kind,
                format!("rejection hint {} is past this log's last index {last}", m.reject_hint),
            ));
        }
    } else if m.index > last {
        return Err(invalid(kind, format!("acknowledges index {} past this log's last index {last}", m.index)));
    }
    Ok(())
}

fn check_snapshot(m: &Message) -> Result<(), Rejection> {
    let kind = MessageType::MsgSnapshot;
    let snap = m.get_snapshot();
    let meta = snap.get_metadata();
    if meta.index == 0 || meta.term == 0 {
        return Err(invalid(kind, format!("empty snapshot (index {}, term {})", meta.index, meta.term)));
    }
    if meta.index > MAX_INDEX {
        return Err(invalid(kind, format!("snapshot index {} is beyond any real log", meta.index)));
    }
    if meta.term > m.term {
        return Err(invalid(kind, format!("snapshot term {} is above the message's term {}", meta.term, m.term)));
    }
    check_conf_state(meta.get_conf_state()).map_err(|why| invalid(kind, format!("membership: {why}")))?;
    // Installing a snapshot whose data does not decode stops the manager.
    decode_snapshot(&snap.data).map(drop).map_err(|why| invalid(kind, why))
}

/// Whether raft-rs can restore this membership (it panics with "unable to
/// restore config" or "invalid restore" otherwise).
pub(crate) fn check_conf_state(cs: &ConfState) -> Result<(), String> {
    let lists: [(&str, &[u64]); 4] = [
        ("voters", cs.get_voters()),
        ("learners", cs.get_learners()),
        ("outgoing voters", cs.get_voters_outgoing()),
        ("next learners", cs.get_learners_next()),
    ];
    for (name, ids) in lists {
        let mut seen = HashSet::new();
        for &id in ids {
            if id == raft::INVALID_ID {
                return Err(format!("{name} contain id 0"));
            }
            if !seen.insert(id) {
                return Err(format!("{name} list manager {id} twice"));
            }
        }
    }
    if cs.get_voters().is_empty() {
        return Err("no voters".into());
    }
    let set = |v: &[u64]| v.iter().copied().collect::<HashSet<u64>>();
    let (voters, outgoing) = (set(cs.get_voters()), set(cs.get_voters_outgoing()));
    let (learners, next) = (set(cs.get_learners()), set(cs.get_learners_next()));
    if let Some(id) = learners.iter().find(|id| voters.contains(id) || outgoing.contains(id)) {
        return Err(format!("manager {id} is both a learner and a voter"));
    }
    if let Some(id) = next.iter().find(|id| !outgoing.contains(id) || voters.contains(id) || learners.contains(id)) {
        return Err(format!("manager {id} is a next learner but not only an outgoing voter"));
    }
    if outgoing.is_empty() && cs.auto_leave {
        return Err("auto_leave is set outside a joint configuration".into());
    }
    // Restore it the way raft-rs does (outgoing voters one by one, then the
    // incoming configuration, joint if there is an outgoing one) on a
    // scratch tracker, and compare.
    let single = |id: u64, t: raft::prelude::ConfChangeType| {
        let mut c = raft::prelude::ConfChangeSingle::default();
        c.node_id = id;
        c.set_change_type(t);
        c
    };
    use raft::prelude::ConfChangeType::{AddLearnerNode, AddNode, RemoveNode};
    let mut incoming: Vec<_> = cs.get_voters_outgoing().iter().map(|&id| single(id, RemoveNode)).collect();
    incoming.extend(cs.get_voters().iter().map(|&id| single(id, AddNode)));
    incoming.extend(cs.get_learners().iter().chain(cs.get_learners_next()).map(|&id| single(id, AddLearnerNode)));
    let mut tracker = ProgressTracker::new(1);
    let err = |e: raft::Error| e.to_string();
    if cs.get_voters_outgoing().is_empty() {
        for c in incoming {
            let (cfg, changes) = Changer::new(&tracker).simple(&[c]).map_err(err)?;
            tracker.apply_conf(cfg, changes, 1);
        }
    } else {
        for &id in cs.get_voters_outgoing() {
            let (cfg, changes) = Changer::new(&tracker).simple(&[single(id, AddNode)]).map_err(err)?;
            tracker.apply_conf(cfg, changes, 1);
        }
        let (cfg, changes) = Changer::new(&tracker).enter_joint(cs.auto_leave, &incoming).map_err(err)?;
        tracker.apply_conf(cfg, changes, 1);
    }
    let got = tracker.conf().to_conf_state();
    if sorted(&got) != sorted(cs) {
        return Err(format!("not a membership raft-rs can restore (it would become {got:?})"));
    }
    Ok(())
}

fn sorted(cs: &ConfState) -> ConfState {
    let mut c = ConfState::default();
    let s = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    c.voters = s(cs.get_voters());
    c.learners = s(cs.get_learners());
    c.voters_outgoing = s(cs.get_voters_outgoing());
    c.learners_next = s(cs.get_learners_next());
    c.auto_leave = cs.auto_leave;
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::SnapshotData;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed, TestRunner};
    use protobuf::ProtobufEnum;
    use raft::prelude::{ConfChangeSingle, ConfChangeType, Entry, HardState, Snapshot};
    use raft::storage::MemStorage;
    use raft::{RawNode, ReadOnlyOption};
    use std::collections::{BTreeMap, VecDeque};

    fn logger() -> slog::Logger {
        slog::Logger::root(slog::Discard, slog::o!())
    }

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e
    }

    fn req_ctx(origin: u64, seq: u64) -> Vec<u8> {
        let mut v = origin.to_be_bytes().to_vec();
        v.extend_from_slice(&7u64.to_be_bytes());
        v.extend_from_slice(&seq.to_be_bytes());
        v
    }

    fn config(id: u64, applied: u64) -> raft::Config {
        raft::Config {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 16,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            ..Default::default()
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Role {
        Follower,
        Candidate,
        Leader,
    }

    /// Manager 1 of voters 1, 2, 3: log compacted to index 4 (term 2),
    /// entries 5..=10 (terms 2, 3, 3, 3, 3, 3), committed to 8, term 3.
    fn node(role: Role) -> RawNode<MemStorage> {
        let store = MemStorage::new_with_conf_state((vec![1, 2, 3], vec![]));
        {
            let mut w = store.wl();
            let mut snap = Snapshot::default();
            snap.mut_metadata().index = 4;
            snap.mut_metadata().term = 2;
            snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
            w.apply_snapshot(snap).unwrap();
            let terms = [2, 3, 3, 3, 3, 3];
            let ents: Vec<Entry> = terms.iter().enumerate().map(|(i, &t)| entry(5 + i as u64, t)).collect();
            w.append(&ents).unwrap();
            let mut hs = HardState::default();
            hs.term = 3;
            hs.commit = 8;
            w.set_hardstate(hs);
        }
        let mut raw = RawNode::new(&config(1, 8), store, &logger()).unwrap();
        match role {
            Role::Follower => raw.raft.become_follower(3, 2),
            Role::Candidate => raw.raft.become_candidate(),
            Role::Leader => {
                raw.raft.become_candidate();
                raw.raft.become_leader();
            }
        }
        drain(&mut raw);
        raw
    }

    /// One ready cycle on a memory log; returns the messages to send.
    fn drain(raw: &mut RawNode<MemStorage>) -> Vec<Message> {
        drain_reads(raw).0
    }

    /// [`drain`], also counting the reads that became ready.
    fn drain_reads(raw: &mut RawNode<MemStorage>) -> (Vec<Message>, usize) {
        let mut out = Vec::new();
        if !raw.has_ready() {
            return (out, 0);
        }
        let mut rd = raw.ready();
        let reads = rd.take_read_states().len();
        out.extend(rd.take_messages());
        if !rd.snapshot().is_empty() {
            raw.mut_store().wl().apply_snapshot(rd.snapshot().clone()).unwrap();
        }
        raw.mut_store().wl().append(rd.entries()).unwrap();
        if let Some(hs) = rd.hs() {
            raw.mut_store().wl().set_hardstate(hs.clone());
        }
        out.extend(rd.take_persisted_messages());
        let mut light = raw.advance(rd);
        if let Some(c) = light.commit_index() {
            raw.mut_store().wl().mut_hard_state().commit = c;
        }
        out.extend(light.take_messages());
        raw.advance_apply();
        (out, reads)
    }

    fn msg(kind: MessageType, from: u64, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.to = 1;
        m.from = from;
        m.term = term;
        m
    }

    #[test]
    fn an_empty_proposal_is_refused_and_would_panic_raft() {
        let m = msg(MessageType::MsgPropose, 2, 0);
        let raw = node(Role::Leader);
        let err = check(&raw.raft, &m).unwrap_err();
        assert_eq!(err.to_string(), "MsgPropose: no entries (an empty proposal)");
        // Without the check, raft-rs panics ("stepped empty MsgProp").
        let mut raw = node(Role::Leader);
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| raw.step(m)));
        assert!(stepped.is_err(), "raft-rs took an empty proposal without panicking");
    }

    #[test]
    fn an_append_conflicting_with_committed_entries_is_refused_and_would_panic_raft() {
        // From the leader of term 3: anchored at the commit index, with an
        // entry 6 of term 9 although 6 (term 3) is committed here.
        let mut m = msg(MessageType::MsgAppend, 2, 3);
        m.index = 8;
        m.log_term = 3;
        m.set_entries(vec![entry(6, 9)].into());
        let raw = node(Role::Follower);
        let err = check(&raw.raft, &m).unwrap_err();
        assert_eq!(
            err.to_string(),
            "MsgAppend: entry 6 has term 9, but the committed entry 6 here has term 3 (committed up to 8)"
        );
        let mut raw = node(Role::Follower);
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| raw.step(m)));
        assert!(stepped.is_err(), "raft-rs took a conflicting append without panicking");
    }

    /// On swarm's own log (raft-engine) after a compaction that keeps
    /// entries for slow followers, the term just before the first kept entry
    /// is gone; an append whose log term is below the committed term sends
    /// raft-rs' conflict search there, and it panics.
    #[test]
    fn a_log_term_below_the_committed_term_is_refused_and_would_panic_raft() {
        use crate::storage::{DiskStorage, Recovery};
        let tmp = tempfile::tempdir().unwrap();
        let store = DiskStorage::open(tmp.path(), Recovery::Strict, 1).unwrap();
        store.bootstrap(&[1, 2, 3]).unwrap();
        let terms = [1, 1, 2, 2, 2, 3, 3, 3, 3, 3];
        let ents: Vec<Entry> = terms.iter().enumerate().map(|(i, &t)| entry(1 + i as u64, t)).collect();
        let mut hs = HardState::default();
        hs.term = 3;
        hs.commit = 8;
        store.append(&ents, Some(&hs)).unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 8;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        store.save_snapshot(&snap, 6).unwrap();
        assert_eq!(store.bounds(), (6, 10));
        let mut m = msg(MessageType::MsgAppend, 2, 3);
        m.index = 9;
        m.log_term = 1;
        let raw = RawNode::new(&config(1, 8), store.clone(), &logger()).unwrap();
        assert_eq!(
            check(&raw.raft, &m).unwrap_err().to_string(),
            "MsgAppend: log term 1 at index 9 is below the term 3 of this manager's committed index 8"
        );
        let mut raw = RawNode::new(&config(1, 8), store, &logger()).unwrap();
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| raw.step(m)));
        assert!(stepped.is_err(), "raft-rs took the append without panicking");
    }

    #[test]
    fn each_rule_names_what_is_wrong() {
        let f = node(Role::Follower);
        let l = node(Role::Leader);
        let max_hint = format!("MsgAppendResponse: rejection hint {} is past this log's last index 11", u64::MAX);
        let cases: Vec<(&RawNode<MemStorage>, Message, &str)> = vec![
            (&f, msg(MessageType::MsgHup, 2, 3), "MsgHup is local to a manager and never travels"),
            (
                &f,
                {
                    let mut m = msg(MessageType::MsgHeartbeat, 2, 3);
                    m.to = 5;
                    m
                },
                "addressed to manager 5, this is manager 1",
            ),
            (&f, msg(MessageType::MsgHeartbeat, 1, 3), "sender id 1 is invalid (0 or this manager's own id)"),
            (
                &f,
                msg(MessageType::MsgHeartbeat, 2, 0),
                "MsgHeartbeat with term 0: messages between managers carry a term",
            ),
            (
                &f,
                {
                    let mut m = msg(MessageType::MsgPropose, 2, 3);
                    m.set_entries(vec![entry(0, 0)].into());
                    m
                },
                "MsgPropose with term 3: forwarded requests carry no term",
            ),
            (&l, msg(MessageType::MsgReadIndex, 2, 0), "MsgReadIndex: needs exactly one entry (its context), has 0"),
            (
                &l,
                {
                    let mut m = msg(MessageType::MsgPropose, 2, 0);
                    let mut e = entry(0, 0);
                    e.data = b"x".to_vec().into();
                    e.context = req_ctx(3, 1).into();
                    m.set_entries(vec![e].into());
                    m
                },
                "MsgPropose: entry 0 carries a request id of manager 3 but comes from manager 2",
            ),
            (
                &l,
                {
                    let mut m = msg(MessageType::MsgPropose, 2, 0);
                    let mut e = entry(0, 0);
                    e.context = req_ctx(2, 1).into();
                    m.set_entries(vec![e].into());
                    m
                },
                "MsgPropose: entry 0 (EntryNormal): no data",
            ),
            (
                &f,
                {
                    let mut m = msg(MessageType::MsgAppend, 2, 3);
                    m.index = 20;
                    m.log_term = 0;
                    m
                },
                "MsgAppend: log term 0 at index 20 (only index 0 has term 0)",
            ),
            (
                &f,
                {
                    let mut m = msg(MessageType::MsgAppend, 2, 3);
                    m.index = 10;
                    m.log_term = 3;
                    m.set_entries(vec![entry(12, 3)].into());
                    m
                },
                "MsgAppend: entry 0 has index 12, expected Some(11) (entries follow index 10)",
            ),
            (
                &f,
                {
                    let mut m = msg(MessageType::MsgAppend, 2, 3);
                    m.index = 9;
                    m.log_term = 1;
                    m
                },
                "MsgAppend: log term 1 at index 9 is below the term 3 of this manager's committed index 8",
            ),
            (
                &l,
                {
                    let mut m = msg(MessageType::MsgAppendResponse, 2, 4);
                    m.index = 99;
                    m
                },
                "MsgAppendResponse: acknowledges index 99 past this log's last index 11",
            ),
            (
                &l,
                {
                    let mut m = msg(MessageType::MsgAppendResponse, 2, 4);
                    m.reject = true;
                    m.reject_hint = u64::MAX;
                    m
                },
                &max_hint,
            ),
            (
                &f,
                msg(MessageType::MsgTransferLeader, 2, 3),
                "MsgTransferLeader: this manager does not lead; a leadership transfer request goes to the leader",
            ),
            (
                &f,
                {
                    let mut m = msg(MessageType::MsgSnapshot, 2, 3);
                    m.mut_snapshot().mut_metadata().index = 20;
                    m.mut_snapshot().mut_metadata().term = 3;
                    m.mut_snapshot().mut_metadata().mut_conf_state().voters = vec![1, 1];
                    m
                },
                "MsgSnapshot: membership: voters list manager 1 twice",
            ),
            (
                &f,
                {
                    let mut m = msg(MessageType::MsgSnapshot, 2, 3);
                    let md = m.mut_snapshot().mut_metadata();
                    md.index = 20;
                    md.term = 3;
                    md.mut_conf_state().voters = vec![1, 2];
                    md.mut_conf_state().learners = vec![2];
                    m
                },
                "MsgSnapshot: membership: manager 2 is both a learner and a voter",
            ),
        ];
        for (raw, m, want) in cases {
            let got = check(&raw.raft, &m).map_err(|e| e.to_string());
            assert_eq!(got, Err(want.to_string()), "{m:?}");
        }
        // A snapshot whose data is not a swarm state is refused.
        let mut m = msg(MessageType::MsgSnapshot, 2, 3);
        let md = m.mut_snapshot().mut_metadata();
        md.index = 20;
        md.term = 3;
        md.mut_conf_state().voters = vec![1, 2, 3];
        m.mut_snapshot().data = b"not json".to_vec().into();
        let err = check(&f.raft, &m).unwrap_err().to_string();
        assert!(err.starts_with("MsgSnapshot: decoding snapshot data: "), "{err}");
        // An unknown message type (19) does not decode (the driver refuses
        // the frame); an unknown field does, and is refused here.
        let mut bytes = msg(MessageType::MsgHeartbeat, 2, 3).write_to_bytes().unwrap();
        let mut unknown_type = bytes.clone();
        unknown_type.extend_from_slice(&[0x08, 19]);
        let err = Message::parse_from_bytes(&unknown_type).unwrap_err();
        assert_eq!(err.to_string(), "invalid enum value");
        bytes.extend_from_slice(&[0xf8, 0x01, 5]); // field 31, varint 5
        let m = Message::parse_from_bytes(&bytes).unwrap();
        assert_eq!(check(&f.raft, &m).unwrap_err().to_string(), "unknown field 31 in the message (value 5)");
        let mut m = msg(MessageType::MsgRequestVote, 2, 3 + (1 << 33));
        m.index = 10;
        assert_eq!(
            check(&f.raft, &m).unwrap_err().to_string(),
            format!("MsgRequestVote: term {} is more than 2^32 terms ahead of this manager's 3", 3 + (1u64 << 33))
        );
    }

    /// An in-memory cluster of honest raft-rs nodes whose every message goes
    /// through `check`: elections, forwarded proposals and reads, leadership
    /// transfer, a learner added and caught up by snapshot. Nothing honest
    /// may be refused.
    #[test]
    fn honest_traffic_is_never_refused() {
        let mut nodes: BTreeMap<u64, RawNode<MemStorage>> = BTreeMap::new();
        for id in 1..=3 {
            let store = MemStorage::new_with_conf_state((vec![1, 2, 3], vec![]));
            nodes.insert(id, RawNode::new(&config(id, 0), store, &logger()).unwrap());
        }
        let mut queue: VecDeque<Message> = VecDeque::new();
        let mut refused = Vec::new();
        let mut reads: BTreeMap<u64, usize> = BTreeMap::new();
        let mut pump = |nodes: &mut BTreeMap<u64, RawNode<MemStorage>>, queue: &mut VecDeque<Message>| {
            for _ in 0..500 {
                for (id, raw) in nodes.iter_mut() {
                    let (msgs, n) = drain_reads(raw);
                    queue.extend(msgs);
                    *reads.entry(*id).or_default() += n;
                }
                let Some(m) = queue.pop_front() else { return };
                let Some(to) = nodes.get_mut(&m.to) else { continue };
                match admit(&to.raft, m.clone()) {
                    Ok(a) => {
                        assert!(a.nudge.is_none(), "no log was cut here");
                        let _ = to.step(a.msg);
                    }
                    Err(e) => refused.push(format!("{e} in {m:?}")),
                }
            }
            panic!("the cluster did not settle within 500 messages");
        };
        nodes.get_mut(&1).unwrap().campaign().unwrap();
        pump(&mut nodes, &mut queue);
        assert_eq!(nodes[&1].raft.state, StateRole::Leader);
        for (seq, via) in [(1u64, 2u64), (2, 3), (3, 1)] {
            nodes.get_mut(&via).unwrap().propose(req_ctx(via, seq), b"tx".to_vec()).unwrap();
            pump(&mut nodes, &mut queue);
        }
        nodes.get_mut(&3).unwrap().read_index(req_ctx(3, 9));
        pump(&mut nodes, &mut queue);
        // Compact the leader's log, then add a learner: it gets a snapshot.
        let mut cc = ConfChangeV2::default();
        let mut single = ConfChangeSingle::default();
        single.set_change_type(ConfChangeType::AddLearnerNode);
        single.node_id = 4;
        cc.mut_changes().push(single);
        nodes.get_mut(&2).unwrap().propose_conf_change(req_ctx(2, 4), cc.clone()).unwrap();
        pump(&mut nodes, &mut queue);
        for raw in nodes.values_mut() {
            let committed = raw.raft.raft_log.committed;
            let mut applied = Vec::new();
            for e in raw.mut_store().entries(1, committed + 1, None, raft::GetEntriesContext::empty(false)).unwrap() {
                if e.get_entry_type() == EntryType::EntryConfChangeV2 {
                    applied.push(e.index);
                }
            }
            assert_eq!(applied.len(), 1);
            let cs = raw.apply_conf_change(&cc).unwrap();
            let idx = raw.raft.raft_log.committed;
            raw.mut_store().wl().set_conf_state(cs);
            raw.mut_store().wl().commit_to(idx).unwrap();
            raw.mut_store().wl().compact(idx).unwrap();
        }
        let store = MemStorage::new();
        nodes.insert(4, RawNode::new(&config(4, 0), store, &logger()).unwrap());
        for _ in 0..3 {
            for raw in nodes.values_mut() {
                raw.tick();
            }
            pump(&mut nodes, &mut queue);
        }
        assert!(nodes[&4].raft.raft_log.committed >= nodes[&1].raft.raft_log.committed - 1, "the learner caught up");
        // Leadership transfer asked on a follower, forwarded to the leader.
        nodes.get_mut(&2).unwrap().transfer_leader(3);
        pump(&mut nodes, &mut queue);
        assert_eq!(nodes[&3].raft.state, StateRole::Leader);
        assert_eq!(reads.get(&3), Some(&1), "the forwarded read was answered");
        assert!(refused.is_empty(), "honest messages refused:\n{}", refused.join("\n"));
    }

    fn arb_u64() -> impl Strategy<Value = u64> {
        prop_oneof![4 => 0u64..=12, 1 => Just(u64::MAX), 1 => Just(u64::MAX / 2), 1 => any::<u64>()]
    }

    fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(Vec::new()),
            proptest::collection::vec(any::<u8>(), 0..30),
            (0u64..=4, 0u64..4).prop_map(|(o, s)| req_ctx(o, s)),
            Just(
                serde_json::to_vec(&SnapshotData {
                    image: swarm_core::state::State::default().to_image(),
                    applied_ids: vec![]
                })
                .unwrap()
            ),
        ]
    }

    fn arb_ids() -> impl Strategy<Value = Vec<u64>> {
        proptest::collection::vec(0u64..=4, 0..4)
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (arb_u64(), 0u64..=6, 0i32..=2, arb_bytes(), arb_bytes()).prop_map(|(index, term, t, data, ctx)| {
            let mut e = entry(index, term);
            e.set_entry_type(EntryType::from_i32(t).unwrap_or(EntryType::EntryNormal));
            e.data = data.into();
            e.context = ctx.into();
            e
        })
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let head = (
            0i32..=18,
            prop_oneof![8 => Just(1u64), 1 => 0u64..=4],
            prop_oneof![8 => 2u64..=3, 1 => 0u64..=4],
            prop_oneof![6 => 2u64..=5, 1 => Just(0u64), 1 => arb_u64()],
            arb_u64(),
            prop_oneof![3 => 0u64..=5, 1 => arb_u64()],
            arb_u64(),
        );
        let body = (
            proptest::collection::vec(arb_entry(), 0..4),
            any::<bool>(),
            arb_u64(),
            prop_oneof![4 => Just(0u64), 1 => arb_u64()],
            arb_bytes(),
            // Most messages are made plausible (see below), the rest stay raw.
            prop_oneof![3 => Just(true), 1 => Just(false)],
        );
        let snap = proptest::option::of((
            arb_u64(),
            0u64..=6,
            arb_ids(),
            arb_ids(),
            arb_ids(),
            arb_ids(),
            any::<bool>(),
            arb_bytes(),
        ));
        (head, body, snap).prop_map(
            |((t, to, from, term, index, log_term, commit), (ents, reject, hint, rs, ctx, plausible), snap)| {
                let mut m = Message::default();
                m.set_msg_type(MessageType::from_i32(t).unwrap_or(MessageType::MsgHeartbeat));
                m.to = to;
                m.from = from;
                m.term = term;
                m.index = index;
                m.log_term = log_term;
                m.commit = commit;
                m.set_entries(ents.into());
                m.reject = reject;
                m.reject_hint = hint;
                m.request_snapshot = rs;
                m.context = ctx.into();
                if let Some((i, st, v, l, vo, ln, al, data)) = snap {
                    let s = m.mut_snapshot();
                    s.data = data.into();
                    let md = s.mut_metadata();
                    md.index = i;
                    md.term = st;
                    let cs = md.mut_conf_state();
                    cs.voters = v;
                    cs.learners = l;
                    cs.voters_outgoing = vo;
                    cs.learners_next = ln;
                    cs.auto_leave = al;
                }
                if plausible {
                    plausible_shape(&mut m);
                }
                m
            },
        )
    }

    /// Fixes the fields the first checks look at, so that the message gets
    /// deeper (into raft-rs) while its other values stay arbitrary.
    fn plausible_shape(m: &mut Message) {
        let kind = m.get_msg_type();
        if matches!(kind, MessageType::MsgPropose | MessageType::MsgReadIndex) {
            m.term = 0;
        } else if m.term == 0 {
            m.term = 3;
        }
        let from = m.from;
        for e in m.mut_entries().iter_mut() {
            e.context = req_ctx(from, e.index).into();
            if e.data.is_empty() {
                e.data = b"tx".to_vec().into();
            }
        }
        if kind == MessageType::MsgReadIndex {
            let mut e = Entry::default();
            e.data = req_ctx(from, 1).into();
            m.set_entries(vec![e].into());
        }
        if kind == MessageType::MsgAppend {
            m.log_term = m.log_term.min(m.term);
            let (index, term) = (m.index, m.term);
            let mut prev = m.log_term;
            for (i, e) in m.mut_entries().iter_mut().enumerate() {
                e.index = index.wrapping_add(1 + i as u64);
                e.term = e.term.clamp(prev, term.max(prev));
                prev = e.term;
            }
        }
    }

    /// Steps sequences of arbitrary messages through `check` into managers
    /// in each role, running a ready cycle after each: raft-rs must never
    /// panic on what `check` lets through.
    fn fuzz_step(seed: u64, cases: u32) {
        let config = Config { cases, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..Config::default() };
        let strategy = (0usize..3, proptest::collection::vec(arb_message(), 1..6));
        let (seen, stepped) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
        TestRunner::new(config)
            .run(&strategy, |(role, msgs)| {
                let role = [Role::Follower, Role::Candidate, Role::Leader][role];
                let mut raw = node(role);
                for m in msgs {
                    seen.set(seen.get() + 1);
                    if let Ok(a) = admit(&raw.raft, m) {
                        stepped.set(stepped.get() + 1);
                        let _ = raw.step(a.msg);
                        drain(&mut raw);
                    }
                }
                // Still a working raft: it ticks and can campaign.
                raw.tick();
                drain(&mut raw);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
        // The generator aims near the node's state: a good share of the
        // messages pass the checks and reach raft-rs.
        let (seen, stepped) = (seen.get(), stepped.get());
        eprintln!("seed {seed:#x}: {stepped} of {seen} messages stepped");
        assert!(stepped * 5 >= seen, "only {stepped} of {seen} messages reached raft-rs");
    }

    #[test]
    fn arbitrary_messages_never_panic_raft_fixed_seed() {
        fuzz_step(0x5eed_0001, 3000);
    }

    #[test]
    fn arbitrary_messages_never_panic_raft_fresh_seed() {
        fuzz_step(swarm_core::harness::test_seed("arbitrary_messages_never_panic_raft_fresh_seed"), 3000);
    }

    #[test]
    fn restorable_memberships_pass_and_others_are_named() {
        let cs = |v: Vec<u64>, l: Vec<u64>, vo: Vec<u64>, ln: Vec<u64>, al: bool| {
            let mut c = ConfState::default();
            c.voters = v;
            c.learners = l;
            c.voters_outgoing = vo;
            c.learners_next = ln;
            c.auto_leave = al;
            c
        };
        assert_eq!(check_conf_state(&cs(vec![1, 2, 3], vec![4], vec![], vec![], false)), Ok(()));
        // Joint: 3 is leaving the voters and becomes a learner.
        assert_eq!(check_conf_state(&cs(vec![1, 2], vec![], vec![1, 2, 3], vec![3], false)), Ok(()));
        assert_eq!(check_conf_state(&cs(vec![], vec![4], vec![], vec![], false)), Err("no voters".into()));
        assert_eq!(check_conf_state(&cs(vec![1, 0], vec![], vec![], vec![], false)), Err("voters contain id 0".into()));
        assert_eq!(
            check_conf_state(&cs(vec![1, 2], vec![], vec![], vec![], true)),
            Err("auto_leave is set outside a joint configuration".into())
        );
        assert_eq!(
            check_conf_state(&cs(vec![1, 2], vec![2], vec![], vec![], false)),
            Err("manager 2 is both a learner and a voter".into())
        );
        assert_eq!(
            check_conf_state(&cs(vec![1, 2], vec![], vec![1, 2], vec![3], false)),
            Err("manager 3 is a next learner but not only an outgoing voter".into())
        );
    }
}
