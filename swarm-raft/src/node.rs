//! The per-manager driver: one OS thread owns the `RawNode`, the durable
//! log and the ready loop.
//!
//! Everything raft-rs does for a manager happens on this thread: ticks,
//! stepping received messages, proposing, persisting (fsync) and applying.
//! Storage calls therefore block only this thread, never an async worker.
//! Requests from the async [`crate::RaftStore`] handle arrive on a channel
//! with a oneshot for the answer; the driver enforces every deadline, so a
//! caller always gets an answer in bounded time.
//!
//! Proposals on a follower are forwarded to the leader by raft-rs itself
//! (`MsgPropose`). Each proposal carries `(origin, incarnation, seq)` in
//! the entry context; every manager applies every committed entry to its
//! [`Replica`], and the origin manager answers its caller with the result
//! of its *own* apply. The state machine is deterministic, so a
//! transaction rejected there is rejected identically everywhere.

use crate::guard;
use crate::storage::{DiskStorage, write_snapshot_file};
use crate::transport::Transport;
use protobuf::Message as PbMessage;
use raft::prelude::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot, SnapshotMetadata,
};
use raft::{RawNode, ReadState, SnapshotStatus, StateRole, Storage};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarm_core::state::{Change, State, StateImage, Transaction};
use swarm_core::store::{Replica, StoreError};
use tokio::sync::oneshot;

/// A manager's role in raft.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Role {
    /// Follows a leader (or waits for one).
    #[default]
    Follower,
    /// Pre-candidate or candidate: an election is running.
    Candidate,
    /// The leader of its term.
    Leader,
}

/// What one manager knows about the cluster, published after each step of
/// its driver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// This manager's raft id.
    pub id: u64,
    /// The leader this manager follows, if it knows one.
    pub leader: Option<u64>,
    /// Current term.
    pub term: u64,
    /// This manager's role.
    pub role: Role,
    /// Highest index known committed.
    pub commit: u64,
    /// Highest index applied to the state machine.
    pub applied: u64,
    /// Index of the latest snapshot.
    pub snapshot_index: u64,
    /// First index still in the log.
    pub first_index: u64,
    /// Voting members (managers).
    pub voters: Vec<u64>,
    /// Non-voting members catching up.
    pub learners: Vec<u64>,
    /// True once this manager applied its own removal.
    pub removed: bool,
    /// True when the driver stopped.
    pub stopped: bool,
    /// Proposals proposed again since start (lost forward or leader change).
    pub reproposals: u64,
    /// Messages from other managers refused since start (undecodable, or
    /// failing the checks in front of raft; each one is logged).
    pub rejected_messages: u64,
    /// Frames dropped since start because the inbox was full.
    pub inbox_dropped: u64,
}

/// One membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Add a voting manager, or promote a learner.
    AddVoter(u64),
    /// Add a non-voting learner, or demote a voter to learner.
    AddLearner(u64),
    /// Remove a member.
    Remove(u64),
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Requests to the driver.
pub(crate) enum Input {
    /// A frame, with the manager its connection is authenticated as
    /// (when the transport knows it).
    Frame {
        frame: Vec<u8>,
        sender: Option<u64>,
    },
    Propose {
        tx: Box<Transaction>,
        reply: Reply<Arc<Change>>,
    },
    Read {
        reply: Reply<Arc<State>>,
    },
    Conf {
        changes: Vec<MemberChange>,
        reply: Reply<Vec<u64>>,
    },
    Transfer {
        to: u64,
        reply: Reply<()>,
    },
    Campaign,
    SnapshotBuilt {
        /// The snapshot whose image file was written, or why not.
        result: Result<SnapshotMetadata, String>,
        compact_to: u64,
    },
    /// The log writer wrote (and fsynced as needed) every Ready up to
    /// `number`, or failed.
    Persisted {
        number: u64,
        result: Result<(), String>,
    },
    Stop,
}

/// Work for the log writer thread, done in order.
enum Job {
    /// A Ready's entries and hard state (already staged in the storage),
    /// then the messages raft allows only once they are durable.
    Append { number: u64, entries: Vec<Entry>, hs: Option<HardState>, sync: bool, messages: Vec<Message> },
    /// Record a snapshot whose image file was written, and compact.
    CommitSnapshot { meta: SnapshotMetadata, compact_to: u64, done: Arc<std::sync::atomic::AtomicBool> },
    /// Answer once everything before is written.
    Barrier(std::sync::mpsc::Sender<()>),
}

/// The log writer: writes Readies to raft-engine off the driver thread, so
/// the driver keeps stepping messages, forwarding proposals and sending
/// appends while an fsync runs (raft-rs's asynchronous Ready). Jobs
/// queued meanwhile are written together with one fsync (group commit).
/// Messages that must follow persistence (a follower's acknowledgements,
/// votes) are sent from here right after the fsync; the driver learns the
/// Readies are durable through [`Input::Persisted`].
fn log_writer(
    id: u64,
    storage: DiskStorage,
    transport: Arc<dyn Transport>,
    jobs: Receiver<Job>,
    back: std::sync::mpsc::Sender<Input>,
) {
    let mut queue: Vec<Job> = Vec::new();
    while let Ok(job) = jobs.recv() {
        queue.push(job);
        while let Ok(job) = jobs.try_recv() {
            queue.push(job);
        }
        // The last append of the group carries the fsync for all of them.
        let last_append = queue.iter().rposition(|j| matches!(j, Job::Append { .. }));
        let sync = queue.iter().any(|j| matches!(j, Job::Append { sync: true, .. }));
        let mut persisted = None;
        let mut messages = Vec::new();
        let mut failed = None;
        let (started, jobs_in_group) = (Instant::now(), queue.len());
        for (i, job) in queue.drain(..).enumerate() {
            match job {
                Job::Append { number, entries, hs, sync: _, messages: m } => {
                    if failed.is_some() {
                        continue;
                    }
                    let sync_now = sync && Some(i) == last_append;
                    match storage.write_staged(&entries, hs.as_ref(), sync_now) {
                        Ok(()) => {
                            persisted = Some(number);
                            messages.extend(m);
                        }
                        Err(e) => failed = Some((number, e.to_string())),
                    }
                }
                Job::CommitSnapshot { meta, compact_to, done } => {
                    let index = meta.index;
                    match storage.commit_snapshot(&meta, compact_to) {
                        Ok(()) => tracing::debug!(id, index, compact_to, "snapshot taken, log compacted"),
                        Err(e) => tracing::error!(id, index, error = %e, "saving a snapshot failed; the log is kept"),
                    }
                    done.store(false, std::sync::atomic::Ordering::Release);
                }
                Job::Barrier(done) => {
                    // Everything before it is written, but an fsync may be
                    // due: do it now.
                    if sync
                        && failed.is_none()
                        && let Err(e) = storage.sync()
                    {
                        failed = Some((persisted.unwrap_or(0), e.to_string()));
                    }
                    let _ = done.send(());
                }
            }
        }
        let took = started.elapsed();
        if took >= Phases::SLOW {
            tracing::debug!(
                target: "swarm_raft::stall",
                id,
                took_ms = took.as_secs_f64() * 1e3,
                jobs = jobs_in_group,
                sync,
                "slow log write"
            );
        }
        // The driver learns what is durable before any answer to these
        // messages can reach it (it handles its inputs in order).
        if let Some(number) = persisted {
            let _ = back.send(Input::Persisted { number, result: Ok(()) });
        }
        for m in messages {
            match m.write_to_bytes() {
                Ok(frame) => transport.send(m.to, frame),
                Err(e) => tracing::error!(id, to = m.to, error = %e, "cannot encode a raft message"),
            }
        }
        if let Some((number, e)) = failed {
            let _ = back.send(Input::Persisted { number, result: Err(e) });
            // Nothing more is written: the driver stops.
            while let Ok(job) = jobs.recv() {
                if let Job::Barrier(done) = job {
                    let _ = done.send(());
                }
            }
            return;
        }
    }
}

/// Driver settings derived from the store configuration.
#[derive(Clone, Debug)]
pub(crate) struct DriverConfig {
    pub tick: Duration,
    pub election: Duration,
    pub leader_wait: Duration,
    pub commit_timeout: Duration,
    pub snapshot_interval: u64,
    pub keep_entries: u64,
}

enum Req {
    Propose { tx: Box<Transaction>, reply: Reply<Arc<Change>> },
    Read { reply: Reply<Arc<State>> },
    Conf { changes: Vec<MemberChange>, reply: Reply<Vec<u64>> },
}

impl Req {
    fn fail(self, e: StoreError) {
        match self {
            Req::Propose { reply, .. } => drop(reply.send(Err(e))),
            Req::Read { reply } => drop(reply.send(Err(e))),
            Req::Conf { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

struct Waiting {
    req: Req,
    deadline: Instant,
}

struct PendingRead {
    reply: Reply<Arc<State>>,
    deadline: Instant,
    last_sent: Instant,
}

struct Transfer {
    to: u64,
    reply: Reply<()>,
    deadline: Instant,
}

/// A request id carried in entry contexts and read-index contexts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct ReqId {
    origin: u64,
    incarnation: u64,
    seq: u64,
}

impl ReqId {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24);
        v.extend_from_slice(&self.origin.to_be_bytes());
        v.extend_from_slice(&self.incarnation.to_be_bytes());
        v.extend_from_slice(&self.seq.to_be_bytes());
        v
    }

    pub fn decode(b: &[u8]) -> Option<ReqId> {
        if b.len() != 24 {
            return None;
        }
        let u = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        Some(ReqId { origin: u(0), incarnation: u(8), seq: u(16) })
    }

    /// The manager that made the request.
    pub fn origin(&self) -> u64 {
        self.origin
    }
}

/// The snapshot payload: the state machine image and the ids of the latest
/// applied proposals (so duplicates are skipped identically everywhere).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct SnapshotData {
    pub image: StateImage,
    #[serde(default)]
    pub applied_ids: Vec<ReqId>,
}

/// How many applied proposal ids every manager remembers to skip retried
/// duplicates. Retries happen within a commit timeout, so this is plenty.
const DEDUPE_WINDOW: usize = 1 << 16;

/// The ids of the latest applied proposals, in apply order (deterministic:
/// every manager applies the same entries in the same order).
#[derive(Default)]
pub(crate) struct Dedupe {
    order: VecDeque<ReqId>,
    set: HashSet<ReqId>,
}

impl Dedupe {
    pub fn from_ids(ids: Vec<ReqId>) -> Dedupe {
        let mut d = Dedupe::default();
        for id in ids {
            d.insert(id);
        }
        d
    }

    /// Records `id`; false if it was already applied.
    pub fn insert(&mut self, id: ReqId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > DEDUPE_WINDOW
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }

    pub fn ids(&self) -> Vec<ReqId> {
        self.order.iter().copied().collect()
    }
}

pub(crate) fn decode_snapshot(data: &[u8]) -> Result<(State, Dedupe), String> {
    if data.is_empty() {
        return Ok((State::default(), Dedupe::default()));
    }
    let d: SnapshotData = serde_json::from_slice(data).map_err(|e| format!("decoding snapshot data: {e}"))?;
    Ok((State::from_image(d.image), Dedupe::from_ids(d.applied_ids)))
}

struct PendingProposal {
    reply: Reply<Arc<Change>>,
    deadline: Instant,
    ctx: Vec<u8>,
    data: Vec<u8>,
    /// The transaction `data` encodes: this manager applies its own
    /// entries from it rather than decoding the bytes it just encoded.
    tx: Box<Transaction>,
    last_sent: Instant,
    leader: u64,
}

pub(crate) struct Driver {
    pub id: u64,
    pub raw: RawNode<DiskStorage>,
    pub storage: DiskStorage,
    pub replica: Arc<Mutex<Replica>>,
    pub status: Arc<Mutex<NodeStatus>>,
    pub transport: Arc<dyn Transport>,
    pub cfg: DriverConfig,
    pub incarnation: u64,
    pub applied: u64,
    seq: u64,
    waiting: VecDeque<Waiting>,
    proposals: HashMap<u64, PendingProposal>,
    pub dedupe: Dedupe,
    confs: HashMap<u64, (Reply<Vec<u64>>, Instant)>,
    reads: HashMap<u64, PendingRead>,
    ready_reads: Vec<(u64, Reply<Arc<State>>)>,
    transfers: Vec<Transfer>,
    last_heard: HashMap<u64, Instant>,
    removed: bool,
    /// Take a snapshot at the next opportunity (membership changed: a new
    /// member only accepts a snapshot whose membership includes it).
    snapshot_now: bool,
    snapshot_building: bool,
    /// True while a snapshot waits for the log writer to record it.
    snapshot_queued: Arc<std::sync::atomic::AtomicBool>,
    reproposals: u64,
    rejected: u64,
    /// Frames queued in the input channel (shared with the [`crate::Inbox`]).
    pub inbox: Arc<InboxGauge>,
    /// This driver's own input channel (snapshot threads report back on it).
    pub self_tx: Option<std::sync::mpsc::Sender<Input>>,
    /// True while this manager leads (and is not stopped): the store's
    /// leadership signal.
    pub leading: Option<tokio::sync::watch::Sender<bool>>,
    /// Where the transport delivers this manager's frames: handed back to
    /// the transport when the driver stops ([`Transport::leave`]).
    pub own_inbox: Option<crate::Inbox>,
    /// Where the current loop iteration's time went (see [`Phases`]).
    phases: Phases,
    /// The log writer's queue (see [`log_writer`]), while it runs.
    writer: Option<std::sync::mpsc::Sender<Job>>,
    /// Why the log writer failed: the driver stops.
    write_failed: Option<String>,
}

/// Time spent in the phases of one driver loop iteration; an iteration
/// over [`Phases::SLOW`] is logged at debug level (target
/// `swarm_raft::stall`) with the breakdown, to find what delays commits.
#[derive(Default)]
struct Phases {
    inputs: usize,
    handle: Duration,
    apply: Duration,
    persist: Duration,
    snapshot: Duration,
}

impl Phases {
    const SLOW: Duration = Duration::from_millis(10);
}

/// How many frames (and bytes) wait in a manager's input channel, and how
/// many were dropped because it was full. The inbox adds, the driver
/// subtracts when it takes a frame.
#[derive(Debug, Default)]
pub(crate) struct InboxGauge {
    pub frames: std::sync::atomic::AtomicUsize,
    pub bytes: std::sync::atomic::AtomicUsize,
    pub dropped: std::sync::atomic::AtomicU64,
    pub max_frames: usize,
    pub max_bytes: usize,
}

impl InboxGauge {
    /// Reserves room for a frame of `len` bytes; false when the inbox is full.
    pub fn admit(&self, len: usize) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        if self.frames.fetch_add(1, SeqCst) >= self.max_frames {
            self.frames.fetch_sub(1, SeqCst);
            return false;
        }
        let before = self.bytes.fetch_add(len, SeqCst);
        // One frame always fits in an empty inbox (a frame is at most the
        // transport's maximum, the byte budget at least that).
        if before > 0 && before + len > self.max_bytes {
            self.bytes.fetch_sub(len, SeqCst);
            self.frames.fetch_sub(1, SeqCst);
            return false;
        }
        true
    }

    /// Gives back a frame's room (the driver took it).
    pub fn release(&self, len: usize) {
        use std::sync::atomic::Ordering::SeqCst;
        self.frames.fetch_sub(1, SeqCst);
        self.bytes.fetch_sub(len, SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section on these mutexes swaps whole values.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        raw: RawNode<DiskStorage>,
        storage: DiskStorage,
        replica: Arc<Mutex<Replica>>,
        status: Arc<Mutex<NodeStatus>>,
        transport: Arc<dyn Transport>,
        cfg: DriverConfig,
        applied: u64,
    ) -> Driver {
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ id.rotate_left(32);
        Driver {
            id,
            raw,
            storage,
            replica,
            status,
            transport,
            cfg,
            incarnation,
            applied,
            seq: 0,
            waiting: VecDeque::new(),
            proposals: HashMap::new(),
            dedupe: Dedupe::default(),
            confs: HashMap::new(),
            reads: HashMap::new(),
            ready_reads: Vec::new(),
            transfers: Vec::new(),
            last_heard: HashMap::new(),
            removed: false,
            snapshot_now: false,
            snapshot_building: false,
            snapshot_queued: Arc::default(),
            reproposals: 0,
            rejected: 0,
            inbox: Arc::default(),
            self_tx: None,
            leading: None,
            own_inbox: None,
            phases: Phases::default(),
            writer: None,
            write_failed: None,
        }
    }

    fn next_id(&mut self) -> ReqId {
        self.seq += 1;
        ReqId { origin: self.id, incarnation: self.incarnation, seq: self.seq }
    }

    /// Runs until [`Input::Stop`] or until every sender is gone.
    pub fn run(mut self, rx: Receiver<Input>) {
        let mut writer_thread = None;
        if let Some(back) = self.self_tx.clone() {
            let (jobs_tx, jobs) = std::sync::mpsc::channel();
            let (id, storage, transport) = (self.id, self.storage.clone(), self.transport.clone());
            match std::thread::Builder::new()
                .name(format!("raft-{id}-log"))
                .spawn(move || log_writer(id, storage, transport, jobs, back))
            {
                Ok(t) => {
                    self.writer = Some(jobs_tx);
                    writer_thread = Some(t);
                }
                Err(e) => tracing::warn!(id, error = %e, "cannot start the log writer thread; writing on the driver"),
            }
        }
        let mut next_tick = Instant::now() + self.cfg.tick;
        self.publish(false);
        let mut batch: Vec<Input> = Vec::new();
        'outer: loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(input) => batch.push(input),
                Err(RecvTimeoutError::Timeout) => {}
            }
            let mut stop = false;
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok(Input::Stop) => {
                        stop = true;
                        break;
                    }
                    Ok(input) => batch.push(input),
                    Err(_) => break,
                }
            }
            // Messages from peers first: requests in the same batch then see
            // the freshest view of who is reachable (after a stall of this
            // thread, peers' heartbeats wait in the queue). The log
            // writer's reports stay in order with the frames: an answer to
            // a message sent after an fsync comes after the report of it.
            let started = Instant::now();
            self.phases = Phases { inputs: batch.len(), ..Phases::default() };
            let (frames, requests): (Vec<Input>, Vec<Input>) =
                batch.drain(..).partition(|i| matches!(i, Input::Frame { .. } | Input::Persisted { .. }));
            for input in frames.into_iter().chain(requests) {
                self.handle(input);
            }
            self.phases.handle = started.elapsed();
            if stop {
                break 'outer;
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick += self.cfg.tick;
                if next_tick < now {
                    next_tick = now + self.cfg.tick;
                }
                self.on_tick(now);
            }
            self.retry_waiting();
            if let Err(e) = self.on_ready() {
                tracing::error!(id = self.id, error = %e, "raft manager stops: persisting or applying failed");
                self.fail_all(StoreError::Unavailable(format!(
                    "manager {} stopped after a storage failure: {e}",
                    self.id
                )));
                break;
            }
            self.publish(false);
            let took = started.elapsed();
            if took >= Phases::SLOW {
                let p = &self.phases;
                tracing::debug!(
                    target: "swarm_raft::stall",
                    id = self.id,
                    took_ms = took.as_secs_f64() * 1e3,
                    inputs = p.inputs,
                    handle_ms = p.handle.as_secs_f64() * 1e3,
                    apply_ms = p.apply.as_secs_f64() * 1e3,
                    persist_ms = p.persist.as_secs_f64() * 1e3,
                    snapshot_ms = p.snapshot.as_secs_f64() * 1e3,
                    "slow driver loop iteration"
                );
            }
        }
        // The writer finishes what is queued (nothing is acknowledged that
        // was not written) and lets go of the engine.
        self.writer = None;
        if let Some(t) = writer_thread {
            let _ = t.join();
        }
        self.fail_all(StoreError::Unavailable(format!("manager {} is stopped", self.id)));
        self.publish(true);
        if let Some(inbox) = self.own_inbox.take() {
            self.transport.leave(&inbox);
        }
        tracing::debug!(id = self.id, "raft driver stopped");
    }

    fn fail_all(&mut self, e: StoreError) {
        for w in self.waiting.drain(..) {
            w.req.fail(e.clone());
        }
        for (_, p) in self.proposals.drain() {
            let _ = p
                .reply
                .send(Err(StoreError::Indeterminate(format!("{e}; the write may or may not have been committed"))));
        }
        for (_, (r, _)) in self.confs.drain() {
            let _ = r.send(Err(StoreError::Indeterminate(format!("{e}; the membership change may or may not apply"))));
        }
        for (_, r) in self.reads.drain() {
            let _ = r.reply.send(Err(e.clone()));
        }
        for (_, r) in self.ready_reads.drain(..) {
            let _ = r.send(Err(e.clone()));
        }
        for t in self.transfers.drain(..) {
            let _ = t.reply.send(Err(e.clone()));
        }
    }

    pub fn publish(&self, stopped: bool) {
        let r = &self.raw.raft;
        let conf = r.prs().conf().to_conf_state();
        let (first, _) = self.storage.bounds();
        let s = NodeStatus {
            id: self.id,
            leader: (r.leader_id != raft::INVALID_ID).then_some(r.leader_id),
            term: r.term,
            role: match r.state {
                StateRole::Leader => Role::Leader,
                StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
                StateRole::Follower => Role::Follower,
            },
            commit: r.raft_log.committed,
            applied: self.applied,
            snapshot_index: self.storage.snapshot_index(),
            first_index: first,
            voters: conf.voters.clone(),
            learners: conf.learners.clone(),
            removed: self.removed,
            stopped,
            reproposals: self.reproposals,
            rejected_messages: self.rejected,
            inbox_dropped: self.inbox.dropped.load(std::sync::atomic::Ordering::Relaxed),
        };
        if let Some(leading) = &self.leading {
            let now = s.role == Role::Leader && !stopped;
            leading.send_if_modified(|was| std::mem::replace(was, now) != now);
        }
        *lock(&self.status) = s;
    }

    fn handle(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Frame { frame, sender } => {
                self.inbox.release(frame.len());
                let msg = match Message::parse_from_bytes(&frame) {
                    Ok(m) => m,
                    Err(e) => {
                        self.rejected += 1;
                        let why = guard::Rejection::Undecodable(e.to_string());
                        tracing::warn!(id = self.id, bytes = frame.len(), reason = %why, "refused a raft frame");
                        return;
                    }
                };
                let from = msg.from;
                let kind = msg.get_msg_type();
                if let Some(sender) = sender
                    && sender != from
                {
                    self.rejected += 1;
                    let why = guard::Rejection::Impersonation { claimed: from, connection: sender };
                    tracing::warn!(id = self.id, peer = sender, kind = ?kind, reason = %why, "refused a raft message");
                    return;
                }
                let admitted = match guard::admit(&self.raw.raft, msg) {
                    Ok(a) => a,
                    Err(why) => {
                        self.rejected += 1;
                        tracing::warn!(id = self.id, peer = from, kind = ?kind, reason = %why, "refused a raft message");
                        return;
                    }
                };
                self.last_heard.insert(from, now);
                if let Some(nudge) = admitted.nudge {
                    self.send(vec![nudge]);
                }
                if let Err(e) = self.raw.step(admitted.msg) {
                    tracing::trace!(id = self.id, error = %e, "raft refused a message");
                }
            }
            Input::Propose { tx, reply } => self.submit(Req::Propose { tx, reply }, now + self.cfg.leader_wait),
            Input::Read { reply } => self.submit(Req::Read { reply }, now + self.cfg.leader_wait),
            Input::Conf { changes, reply } => self.submit(Req::Conf { changes, reply }, now + self.cfg.leader_wait),
            Input::Transfer { to, reply } => {
                if self.raw.raft.leader_id == to {
                    let _ = reply.send(Ok(()));
                    return;
                }
                self.raw.transfer_leader(to);
                self.transfers.push(Transfer { to, reply, deadline: now + self.cfg.election * 3 });
            }
            Input::Campaign => {
                if let Err(e) = self.raw.campaign() {
                    tracing::debug!(id = self.id, error = %e, "campaign refused");
                }
            }
            Input::Persisted { number, result } => match result {
                Ok(()) => self.raw.on_persist_ready(number),
                Err(e) => self.write_failed = Some(e),
            },
            Input::SnapshotBuilt { result, compact_to } => {
                let t = Instant::now();
                self.on_snapshot_built(result, compact_to);
                self.phases.snapshot += t.elapsed();
            }
            Input::Stop => {}
        }
    }

    fn voters_text(&self) -> String {
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let n = conf.voters.len();
        format!("voters {:?}, a quorum is {} of {}", conf.voters, n / 2 + 1, n)
    }

    /// Whether this manager (as leader) heard from a quorum of voters
    /// within one election timeout.
    fn quorum_active(&self) -> bool {
        let now = Instant::now();
        let mut active: HashSet<u64> = self
            .last_heard
            .iter()
            .filter(|(_, t)| now.duration_since(**t) <= self.cfg.election)
            .map(|(id, _)| *id)
            .collect();
        active.insert(self.id);
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let majority_of = |set: &[u64]| {
            set.is_empty() || set.iter().filter(|v| active.contains(v)).count() >= raft::majority(set.len())
        };
        majority_of(&conf.voters) && majority_of(&conf.voters_outgoing)
    }

    fn no_quorum(&self, why: &str) -> StoreError {
        StoreError::NoQuorum(format!("manager {}: {why} ({})", self.id, self.voters_text()))
    }

    fn submit(&mut self, req: Req, deadline: Instant) {
        if self.removed {
            req.fail(StoreError::Unavailable(format!("manager {} was removed from the cluster", self.id)));
            return;
        }
        let leader = self.raw.raft.leader_id;
        let now = Instant::now();
        if leader == raft::INVALID_ID || self.raw.raft.lead_transferee.is_some() {
            if now >= deadline {
                let waited = self.cfg.leader_wait;
                req.fail(self.no_quorum(&format!(
                    "no leader elected within {waited:?}: fewer than a quorum of managers are reachable; nothing was written"
                )));
            } else {
                self.waiting.push_back(Waiting { req, deadline });
            }
            return;
        }
        if leader == self.id && !self.quorum_active() {
            let now = Instant::now();
            let mut heard: Vec<(u64, Duration)> =
                self.last_heard.iter().map(|(id, t)| (*id, now.duration_since(*t))).collect();
            heard.sort();
            req.fail(self.no_quorum(&format!(
                "this leader has not heard from a quorum of voters within the election timeout (last heard: {heard:?}); nothing was written"
            )));
            return;
        }
        let id = self.next_id();
        match req {
            Req::Propose { tx, reply } => {
                let data = match serde_json::to_vec(&*tx) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ =
                            reply.send(Err(StoreError::Unavailable(format!("encoding the transaction failed: {e}"))));
                        return;
                    }
                };
                match self.raw.propose(id.encode(), data.clone()) {
                    Ok(()) => {
                        let p = PendingProposal {
                            reply,
                            deadline: now + self.cfg.commit_timeout,
                            ctx: id.encode(),
                            data,
                            tx,
                            last_sent: now,
                            leader,
                        };
                        self.proposals.insert(id.seq, p);
                    }
                    Err(raft::Error::ProposalDropped) => {
                        self.waiting.push_back(Waiting { req: Req::Propose { tx, reply }, deadline })
                    }
                    Err(e) => {
                        let _ = reply.send(Err(StoreError::Unavailable(format!("raft refused the proposal: {e}"))));
                    }
                }
            }
            Req::Read { reply } => {
                self.raw.read_index(id.encode());
                self.reads.insert(id.seq, PendingRead { reply, deadline: now + self.cfg.leader_wait, last_sent: now });
            }
            Req::Conf { changes, reply } => {
                let cc = build_conf_change(&changes);
                match self.raw.propose_conf_change(id.encode(), cc) {
                    Ok(()) => {
                        self.confs.insert(id.seq, (reply, now + self.cfg.commit_timeout));
                    }
                    Err(raft::Error::ProposalDropped) => {
                        self.waiting.push_back(Waiting { req: Req::Conf { changes, reply }, deadline })
                    }
                    Err(e) => {
                        let _ = reply
                            .send(Err(StoreError::Unavailable(format!("raft refused the membership change: {e}"))));
                    }
                }
            }
        }
    }

    fn retry_waiting(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let now = Instant::now();
        let has_leader = self.raw.raft.leader_id != raft::INVALID_ID && self.raw.raft.lead_transferee.is_none();
        let mut keep = VecDeque::new();
        for w in std::mem::take(&mut self.waiting) {
            if has_leader || now >= w.deadline {
                self.submit(w.req, w.deadline);
            } else {
                keep.push_back(w);
            }
        }
        keep.extend(std::mem::take(&mut self.waiting));
        self.waiting = keep;
    }

    fn on_tick(&mut self, now: Instant) {
        let leader = self.raw.raft.leader_id;
        let quorum_lost = leader == raft::INVALID_ID || (leader == self.id && !self.quorum_active());
        let timeout = self.cfg.commit_timeout;
        let expired: Vec<u64> = self.proposals.iter().filter(|(_, p)| now >= p.deadline).map(|(k, _)| *k).collect();
        for k in expired {
            if let Some(p) = self.proposals.remove(&k) {
                let why =
                    if quorum_lost { "and no quorum is reachable now" } else { "(leader change or lost message)" };
                let _ = p.reply.send(Err(StoreError::Indeterminate(format!(
                    "manager {}: write not applied within {timeout:?} {why}; it may still commit later",
                    self.id
                ))));
            }
        }
        let expired: Vec<u64> = self.confs.iter().filter(|(_, (_, d))| now >= *d).map(|(k, _)| *k).collect();
        for k in expired {
            if let Some((r, _)) = self.confs.remove(&k) {
                let _ = r.send(Err(StoreError::Indeterminate(format!(
                    "manager {}: membership change not applied within {timeout:?} (another change pending, leader change or no quorum); check the membership",
                    self.id
                ))));
            }
        }
        // Proposals not applied after an election timeout, or whose leader
        // changed, are proposed again with the same id: the forwarded
        // message or the old leader's log entry may be lost. Applying skips
        // the duplicates (see `Dedupe`).
        if !quorum_lost && self.raw.raft.lead_transferee.is_none() {
            let retry: Vec<u64> = self
                .proposals
                .iter()
                .filter(|(_, p)| p.leader != leader || now.duration_since(p.last_sent) >= self.cfg.election)
                .map(|(k, _)| *k)
                .collect();
            for k in retry {
                let Some(p) = self.proposals.get_mut(&k) else { continue };
                p.last_sent = now;
                p.leader = leader;
                let (ctx, data) = (p.ctx.clone(), p.data.clone());
                self.reproposals += 1;
                if let Err(e) = self.raw.propose(ctx, data) {
                    tracing::trace!(id = self.id, error = %e, "re-proposing failed; will retry");
                }
            }
        }
        // Reads: give up at the deadline, re-ask the leader every election
        // timeout (the forwarded request or its answer may have been lost).
        let mut expired = Vec::new();
        let mut resend = Vec::new();
        for (k, r) in &self.reads {
            if now >= r.deadline {
                expired.push(*k);
            } else if now.duration_since(r.last_sent) >= self.cfg.election / 2 {
                resend.push(*k);
            }
        }
        for k in expired {
            if let Some(r) = self.reads.remove(&k) {
                let _ = r.reply.send(Err(self.no_quorum("read not confirmed by a quorum in time (linearizable read)")));
            }
        }
        for k in resend {
            if let Some(r) = self.reads.get_mut(&k) {
                r.last_sent = now;
                let id = ReqId { origin: self.id, incarnation: self.incarnation, seq: k };
                self.raw.read_index(id.encode());
            }
        }
        let mut keep = Vec::new();
        for t in self.transfers.drain(..) {
            if self.raw.raft.leader_id == t.to {
                let _ = t.reply.send(Ok(()));
            } else if now >= t.deadline {
                let _ = t.reply.send(Err(StoreError::Unavailable(format!(
                    "leadership transfer to manager {} did not complete (leader is {:?})",
                    t.to,
                    (self.raw.raft.leader_id != 0).then_some(self.raw.raft.leader_id)
                ))));
            } else {
                keep.push(t);
            }
        }
        self.transfers = keep;
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            match m.write_to_bytes() {
                Ok(frame) => self.transport.send(to, frame),
                Err(e) => tracing::error!(id = self.id, to, error = %e, "cannot encode a raft message"),
            }
            if is_snapshot {
                // The transport is best effort: report the snapshot as sent.
                // If it was lost, the follower rejects the next append and
                // the leader sends the snapshot again.
                self.raw.report_snapshot(to, SnapshotStatus::Finish);
            }
        }
    }

    fn on_ready(&mut self) -> Result<(), String> {
        if let Some(e) = &self.write_failed {
            return Err(e.clone());
        }
        if !self.raw.has_ready() {
            self.answer_reads();
            return Ok(());
        }
        let mut rd = self.raw.ready();
        self.send(rd.take_messages());
        if rd.snapshot().is_empty()
            && let Some(writer) = self.writer.clone()
        {
            return self.on_ready_async(rd, &writer);
        }
        // A snapshot from the leader (or no writer thread): persist here,
        // after everything the writer has queued.
        self.drain_writer();
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            let mut hs = rd.hs().cloned().unwrap_or_else(|| self.storage.hard_state());
            hs.commit = hs.commit.max(snap.get_metadata().index);
            self.install_snapshot(&snap, &hs)?;
        }
        self.apply_ready(&mut rd)?;
        let t = Instant::now();
        self.storage.append(rd.entries(), rd.hs()).map_err(|e| e.to_string())?;
        self.phases.persist += t.elapsed();
        self.send(rd.take_persisted_messages());
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            let mut hs: HardState = self.storage.hard_state();
            if commit > hs.commit {
                hs.commit = commit;
                self.storage.note_commit(&hs).map_err(|e| e.to_string())?;
            }
        }
        self.send(light.take_messages());
        let t = Instant::now();
        self.apply_entries(light.take_committed_entries())?;
        self.phases.apply += t.elapsed();
        self.finish_ready()
    }

    /// The end of every Ready: applied, reads answered, snapshot if due.
    fn finish_ready(&mut self) -> Result<(), String> {
        self.raw.advance_apply();
        self.answer_reads();
        let t = Instant::now();
        self.maybe_snapshot()?;
        self.phases.snapshot += t.elapsed();
        Ok(())
    }

    /// Applies a Ready's committed entries and answers its reads.
    fn apply_ready(&mut self, rd: &mut raft::Ready) -> Result<(), String> {
        let t = Instant::now();
        self.apply_entries(rd.take_committed_entries())?;
        self.phases.apply += t.elapsed();
        for rs in rd.take_read_states() {
            self.on_read_state(rs);
        }
        Ok(())
    }

    /// The usual Ready: applied and answered here, persisted by the log
    /// writer while this thread goes on.
    fn on_ready_async(&mut self, mut rd: raft::Ready, writer: &std::sync::mpsc::Sender<Job>) -> Result<(), String> {
        self.apply_ready(&mut rd)?;
        let t = Instant::now();
        let number = rd.number();
        let entries = rd.take_entries();
        let hs = rd.hs().cloned();
        let sync = rd.must_sync();
        let messages = rd.take_persisted_messages();
        if !entries.is_empty() || hs.is_some() || !messages.is_empty() {
            self.storage.stage(&entries);
            if writer.send(Job::Append { number, entries, hs, sync, messages }).is_err() {
                return Err("the log writer thread stopped".into());
            }
        }
        self.raw.advance_append_async(rd);
        self.phases.persist += t.elapsed();
        self.finish_ready()
    }

    /// Waits until the log writer wrote everything queued.
    fn drain_writer(&mut self) {
        let Some(writer) = &self.writer else { return };
        let (done, wait) = std::sync::mpsc::channel();
        if writer.send(Job::Barrier(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    fn install_snapshot(&mut self, snap: &Snapshot, hs: &HardState) -> Result<(), String> {
        let meta = snap.get_metadata();
        let (state, dedupe) = decode_snapshot(&snap.data)?;
        self.storage.install_snapshot(snap, hs).map_err(|e| e.to_string())?;
        lock(&self.replica).restore(state);
        self.dedupe = dedupe;
        self.applied = meta.index;
        self.update_removed(meta.get_conf_state());
        tracing::info!(id = self.id, index = meta.index, term = meta.term, "installed a snapshot from the leader");
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if !e.data.is_empty() {
                        self.apply_tx(&e);
                    }
                }
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    cc.merge_from_bytes(&e.data).map_err(|err| format!("decoding conf change {}: {err}", e.index))?;
                    let mut single = raft::prelude::ConfChangeSingle::default();
                    single.set_change_type(cc.get_change_type());
                    single.node_id = cc.node_id;
                    let mut v2 = ConfChangeV2::default();
                    v2.mut_changes().push(single);
                    self.apply_conf(&e, v2);
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = ConfChangeV2::default();
                    cc.merge_from_bytes(&e.data).map_err(|err| format!("decoding conf change {}: {err}", e.index))?;
                    self.apply_conf(&e, cc);
                }
            }
            self.applied = e.index;
        }
        Ok(())
    }

    fn apply_tx(&mut self, e: &Entry) {
        let req = ReqId::decode(&e.context);
        if let Some(r) = req
            && !self.dedupe.insert(r)
        {
            tracing::trace!(id = self.id, index = e.index, "skipping a retried duplicate proposal");
            return;
        }
        let origin = req.filter(|r| r.origin == self.id && r.incarnation == self.incarnation);
        // An entry this manager proposed (in this incarnation) carries the
        // bytes of a transaction it still holds: apply that one. Every
        // other manager decodes the same bytes into an equal transaction
        // (serde_json round-trips every type of the model; debug builds
        // check it on every such entry).
        let own = origin.and_then(|r| self.proposals.remove(&r.seq));
        let result = match own.as_ref() {
            Some(p) => {
                #[cfg(debug_assertions)]
                if let Ok(decoded) = serde_json::from_slice::<Transaction>(&e.data) {
                    debug_assert_eq!(decoded, *p.tx, "log entry {} does not decode to what was proposed", e.index);
                }
                lock(&self.replica).apply(&p.tx).map_err(StoreError::Rejected)
            }
            None => match serde_json::from_slice::<Transaction>(&e.data) {
                Ok(tx) => lock(&self.replica).apply(&tx).map_err(StoreError::Rejected),
                Err(err) => {
                    // Same bytes on every manager: skipped identically everywhere.
                    tracing::error!(id = self.id, index = e.index, error = %err, "skipping an undecodable log entry");
                    Err(StoreError::Unavailable(format!("log entry {} could not be decoded: {err}", e.index)))
                }
            },
        };
        if let Some(p) = own {
            let _ = p.reply.send(result);
        }
    }

    fn apply_conf(&mut self, e: &Entry, cc: ConfChangeV2) {
        let origin = ReqId::decode(&e.context).filter(|r| r.origin == self.id && r.incarnation == self.incarnation);
        let result = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => {
                tracing::info!(id = self.id, index = e.index, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
                // A voter just added counts as heard now: like a new
                // leader under check-quorum, it gets an election timeout
                // to answer before the leader counts it as lost (without
                // this, a two-voter group refuses reads and writes until
                // the newcomer's first answer).
                let now = Instant::now();
                for v in cs.voters.iter().filter(|v| **v != self.id) {
                    self.last_heard.entry(*v).or_insert(now);
                }
                self.update_removed(&cs);
                self.snapshot_now = true;
                Ok(cs.voters.clone())
            }
            Err(err) => {
                tracing::warn!(id = self.id, index = e.index, error = %err, "membership change refused");
                Err(StoreError::Unavailable(format!("membership change refused: {err}")))
            }
        };
        if let Some(r) = origin
            && let Some((reply, _)) = self.confs.remove(&r.seq)
        {
            let _ = reply.send(result);
        }
    }

    fn update_removed(&mut self, cs: &ConfState) {
        let member = cs.voters.contains(&self.id)
            || cs.learners.contains(&self.id)
            || cs.voters_outgoing.contains(&self.id)
            || cs.learners_next.contains(&self.id);
        let was = self.removed;
        self.removed = !member && cs != &ConfState::default();
        if self.removed && !was {
            tracing::info!(id = self.id, "this manager was removed from the cluster");
            for w in std::mem::take(&mut self.waiting) {
                w.req.fail(StoreError::Unavailable(format!("manager {} was removed from the cluster", self.id)));
            }
        }
    }

    fn on_read_state(&mut self, rs: ReadState) {
        let Some(id) = ReqId::decode(&rs.request_ctx) else { return };
        if id.origin != self.id || id.incarnation != self.incarnation {
            return;
        }
        if let Some(r) = self.reads.remove(&id.seq) {
            self.ready_reads.push((rs.index, r.reply));
        }
    }

    fn answer_reads(&mut self) {
        if self.ready_reads.is_empty() {
            return;
        }
        let applied = self.applied;
        let state = lock(&self.replica).state();
        let mut keep = Vec::new();
        for (index, reply) in self.ready_reads.drain(..) {
            if index <= applied {
                let _ = reply.send(Ok(state.clone()));
            } else {
                keep.push((index, reply));
            }
        }
        self.ready_reads = keep;
    }

    fn maybe_snapshot(&mut self) -> Result<(), String> {
        let last_snap = self.storage.snapshot_index();
        // One at a time: building, or recorded by the log writer (which
        // removes older image files when it records one).
        if self.snapshot_building || self.snapshot_queued.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let interval = self.cfg.snapshot_interval.max(1);
        // Past twice the interval a manager snapshots whatever the slot (a
        // batch of entries may have stepped over its slot).
        let due = self.applied >= last_snap + interval
            && (self.in_snapshot_slot(interval) || self.applied >= last_snap + 2 * interval);
        if !(due || self.snapshot_now && self.applied > last_snap) {
            return Ok(());
        }
        self.snapshot_now = false;
        let index = self.applied;
        let term = self.raw.store().term(index).map_err(|e| format!("term of applied index {index}: {e}"))?;
        let mut meta = raft::prelude::SnapshotMetadata::default();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        let compact_to = (index + 1).saturating_sub(self.cfg.keep_entries);
        // The state is persistent (cloning the Arc is O(1)): encode it on a
        // helper thread so a large state does not stall heartbeats; the
        // driver writes the result when it comes back.
        let state = lock(&self.replica).state();
        let applied_ids = self.dedupe.ids();
        let Some(back) = self.self_tx.clone() else { return Ok(()) };
        let id = self.id;
        // The directory only: the thread must not keep the engine open.
        let snap_dir = self.storage.snapshot_dir();
        let spawned = std::thread::Builder::new().name(format!("raft-{id}-snapshot")).spawn(move || {
            // Streamed to the image file: no buffer of the whole encoding.
            let data = SnapshotData { image: state.to_image(), applied_ids };
            let result = write_snapshot_file(&snap_dir, &meta, |w| {
                serde_json::to_writer(w, &data).map_err(std::io::Error::from)
            })
            .map(|()| meta)
            .map_err(|e| format!("writing the snapshot at index {index}: {e}"));
            drop(data);
            let _ = back.send(Input::SnapshotBuilt { result, compact_to });
        });
        match spawned {
            Ok(_) => self.snapshot_building = true,
            Err(e) => tracing::warn!(id, error = %e, "cannot start the snapshot thread; will retry"),
        }
        Ok(())
    }

    /// Whether the applied index is in this manager's turn to snapshot.
    /// Managers apply the same entries, so without turns every one would
    /// write its snapshot at the same index, at the same moment: on one
    /// disk, or merely at once, that stalls a quorum's fsyncs together
    /// (the worst commit latencies of raft_bench). The index space is cut
    /// in slots of `interval / voters` entries, taken in turn by the
    /// voters in id order; a manager whose snapshot is due waits for its
    /// slot (at most one interval), so the snapshots of a quorum never
    /// start together. A membership change still snapshots at once.
    fn in_snapshot_slot(&self, interval: u64) -> bool {
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let mut voters = conf.voters;
        voters.sort_unstable();
        let n = voters.len() as u64;
        let Some(rank) = voters.iter().position(|v| *v == self.id) else { return true };
        let slot = interval / n.max(1);
        if n < 2 || slot == 0 {
            return true;
        }
        (self.applied / slot) % n == rank as u64
    }

    fn on_snapshot_built(&mut self, result: Result<SnapshotMetadata, String>, compact_to: u64) {
        self.snapshot_building = false;
        let meta = match result {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(id = self.id, error = %e, "building a snapshot failed; the log is kept");
                return;
            }
        };
        let (index, term) = (meta.index, meta.term);
        if index <= self.storage.snapshot_index() {
            // A newer snapshot was installed from the leader meanwhile.
            self.storage.discard_snapshot_file(&meta);
            return;
        }
        if let Some(writer) = &self.writer {
            self.snapshot_queued.store(true, std::sync::atomic::Ordering::Release);
            let done = self.snapshot_queued.clone();
            if writer.send(Job::CommitSnapshot { meta: meta.clone(), compact_to, done }).is_ok() {
                return;
            }
            self.snapshot_queued.store(false, std::sync::atomic::Ordering::Release);
        }
        match self.storage.commit_snapshot(&meta, compact_to) {
            Ok(()) => tracing::debug!(id = self.id, index, term, compact_to, "snapshot taken, log compacted"),
            Err(e) => tracing::error!(id = self.id, index, error = %e, "saving a snapshot failed; the log is kept"),
        }
    }
}

/// Builds a ConfChangeV2 (raft-rs does not re-export a helper).
pub(crate) fn build_conf_change(changes: &[MemberChange]) -> ConfChangeV2 {
    use raft::prelude::{ConfChangeSingle, ConfChangeType};
    let mut cc = ConfChangeV2::default();
    for c in changes {
        let mut s = ConfChangeSingle::default();
        let (t, id) = match *c {
            MemberChange::AddVoter(id) => (ConfChangeType::AddNode, id),
            MemberChange::AddLearner(id) => (ConfChangeType::AddLearnerNode, id),
            MemberChange::Remove(id) => (ConfChangeType::RemoveNode, id),
        };
        s.set_change_type(t);
        s.node_id = id;
        cc.mut_changes().push(s);
    }
    cc
}
