//! `swarm-raft`: the swarm [`Store`] replicated by Raft consensus among the
//! managers (tikv raft-rs), durable on disk (raft-engine).
//!
//! Every manager runs a [`RaftStore`]: the same [`Store`] trait and the same
//! state machine ([`State::apply`]) as `MemStore`, with one
//! [`Replica`] per manager fed by committed log entries. Writes proposed on
//! any manager are forwarded to the leader; reads are linearizable by
//! default (ReadIndex, [`Store::snapshot`]) or stale and cheap
//! ([`RaftStore::stale_snapshot`]); watches work on every manager.
//!
//! | managers | quorum | failures tolerated |
//! |---|---|---|
//! | 1 | 1 | 0 |
//! | 3 | 2 | 1 |
//! | 5 | 3 | 2 |
//! | 7 | 4 | 3 |
//!
//! Design, recovery (force-new-cluster) and known gaps: `docs/swarm-raft.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use swarm_raft::{InProcNetwork, RaftStore, RaftStoreConfig};
//! use swarm_core::store::Store;
//! use swarm_core::state::Transaction;
//! use swarm_core::model::{Node, Resources};
//! let net = InProcNetwork::new(7);
//! let cfg = RaftStoreConfig::new(1, "/tmp/manager-1", vec![1]);
//! let store = RaftStore::open_async(cfg, net.transport(1)).await?;
//! net.register(1, store.inbox());
//! store.commit(Transaction::new().create(Node::ready("n1", "h1", Resources::default()))).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
#![allow(clippy::field_reassign_with_default)] // protobuf messages are built field by field

pub mod crypt;
mod error;
/// Length-prefixed frames (moved to [`swarm_core::frame`], shared with the node API).
pub use swarm_core::frame;
mod guard;
mod logger;
mod node;
mod storage;
mod tcp;
#[cfg(feature = "tls")]
pub mod tls;
mod transport;

pub use error::RaftError;
pub use node::{MemberChange, NodeStatus, Role};
pub use storage::Recovery;
pub use tcp::{InboundLimits, MAX_FRAME, TcpTransport, TcpTransportConfig};
pub use transport::{Faults, InProcNetwork, Inbox, SeededRng, Transport};

use async_trait::async_trait;
use node::{Driver, DriverConfig, Input};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use storage::DiskStorage;
use swarm_core::model::{RaftConfig, Revision};
use swarm_core::state::{Change, State, Transaction};
use swarm_core::store::{Replica, Store, StoreError, Watch};
use tokio::sync::oneshot;

/// Default number of change events a manager keeps for watchers that
/// resume ([`RaftStoreConfig::watch_history`]; counted in events, as
/// swarm-core's `Replica` counts them, the newest change always kept): a
/// tenth of the in-memory store's, because every manager keeps its own
/// (issue 17: in raft_bench, 100,000 one-event changes of updated nodes
/// held about 365 MB per manager).
pub const DEFAULT_WATCH_HISTORY: usize = 10_000;

/// Settings of one manager's raft store.
#[derive(Clone, Debug)]
pub struct RaftStoreConfig {
    /// This manager's raft id (non-zero, unique in the cluster).
    pub id: u64,
    /// Directory of the durable log (raft-engine files).
    pub dir: PathBuf,
    /// The initial voters when bootstrapping a new cluster (every founding
    /// manager gets the same list). Empty: this manager joins an existing
    /// cluster and waits to be added ([`RaftStore::add_voter`]) and
    /// contacted by the leader. Ignored when the log already exists.
    pub initial_voters: Vec<u64>,
    /// Timing and snapshot settings (tick, heartbeat and election ticks,
    /// snapshot interval, entries kept for slow followers).
    pub raft: RaftConfig,
    /// Pre-vote (a partitioned manager does not disrupt the cluster when it
    /// returns). Default on.
    pub pre_vote: bool,
    /// Check-quorum (a leader that lost its quorum steps down). Default on.
    pub check_quorum: bool,
    /// How long a request waits for a leader before failing with
    /// [`StoreError::NoQuorum`]. Default: two election timeouts.
    pub leader_wait: Option<Duration>,
    /// How long a proposal may take to be applied before the caller gets
    /// [`StoreError::Indeterminate`]. Default: max(5 s, 5 election timeouts).
    pub commit_timeout: Option<Duration>,
    /// How to treat a damaged log tail when opening.
    pub recovery: Recovery,
    /// Change events kept for watchers that resume (per manager; the
    /// newest change is always kept whatever its size). Each event holds
    /// the object written (and, for an update, the previous version), so
    /// this bounds memory: about `watch_history` x twice the size of a
    /// changed object. A watcher resuming from further back gets
    /// [`StoreError::Compacted`] and lists again. Default
    /// [`DEFAULT_WATCH_HISTORY`].
    pub watch_history: usize,
    /// Frames from other managers that may wait for the driver; more are
    /// dropped (raft retransmits) and counted in
    /// [`NodeStatus::inbox_dropped`]. Default 4,096.
    pub inbox_frames: usize,
    /// Bytes of such frames that may wait (one frame is always accepted
    /// into an empty inbox). Default 128 MiB (twice the largest TCP frame).
    pub inbox_bytes: usize,
}

impl RaftStoreConfig {
    /// A configuration with etcd-like defaults: 100 ms ticks, heartbeat
    /// every tick, election after 10 ticks (1 s, randomised up to 2 s by
    /// raft), pre-vote and check-quorum on, snapshots every 10,000 entries.
    pub fn new(id: u64, dir: impl Into<PathBuf>, initial_voters: Vec<u64>) -> Self {
        RaftStoreConfig {
            id,
            dir: dir.into(),
            initial_voters,
            raft: RaftConfig::default(),
            pre_vote: true,
            check_quorum: true,
            leader_wait: None,
            commit_timeout: None,
            recovery: Recovery::default(),
            watch_history: DEFAULT_WATCH_HISTORY,
            inbox_frames: 4096,
            inbox_bytes: 2 * tcp::MAX_FRAME,
        }
    }

    /// Sets the tick length (heartbeat and election ticks stay as they are).
    pub fn with_tick(mut self, tick: Duration) -> Self {
        self.raft.tick = swarm_core::time::SpecDuration::from_nanos(tick.as_nanos() as i64);
        self
    }

    /// Sets the snapshot interval in entries.
    pub fn with_snapshot_interval(mut self, entries: u64, keep_for_slow_followers: u64) -> Self {
        self.raft.snapshot_interval = entries;
        self.raft.log_entries_for_slow_followers = keep_for_slow_followers;
        self
    }

    fn tick(&self) -> Duration {
        self.raft.tick.to_std()
    }

    fn election(&self) -> Duration {
        self.tick() * self.raft.election_tick
    }

    fn validate(&self) -> Result<(), RaftError> {
        if self.id == 0 {
            return Err(RaftError::Config("id: 0 is reserved by raft, use 1 or more".into()));
        }
        if self.tick().is_zero() {
            return Err(RaftError::Config("raft.tick: must be positive".into()));
        }
        if self.raft.heartbeat_tick == 0 || self.raft.election_tick <= self.raft.heartbeat_tick {
            return Err(RaftError::Config(format!(
                "raft.election_tick ({}) must be greater than raft.heartbeat_tick ({}) which must be positive",
                self.raft.election_tick, self.raft.heartbeat_tick
            )));
        }
        if self.inbox_frames == 0 || self.inbox_bytes == 0 {
            return Err(RaftError::Config(format!(
                "inbox_frames ({}) and inbox_bytes ({}) must be positive",
                self.inbox_frames, self.inbox_bytes
            )));
        }
        if self.raft.snapshot_interval == 0 {
            return Err(RaftError::Config("raft.snapshot_interval: must be positive".into()));
        }
        if !self.initial_voters.is_empty() && !self.initial_voters.contains(&self.id) {
            return Err(RaftError::Config(format!(
                "initial_voters {:?} must contain this manager's id {}",
                self.initial_voters, self.id
            )));
        }
        Ok(())
    }
}

struct Inner {
    id: u64,
    input: mpsc::Sender<Input>,
    inbox: Inbox,
    replica: Arc<Mutex<Replica>>,
    status: Arc<Mutex<NodeStatus>>,
    leading: tokio::sync::watch::Receiver<bool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    election: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.input.send(Input::Stop);
    }
}

/// One manager's replicated store. Cheap to clone. See the [crate docs](crate).
#[derive(Clone)]
pub struct RaftStore {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections on these mutexes swap whole values.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The inbox of manager `id`: frames go to its driver through `tx`,
/// within the limits `gauge` keeps.
fn inbox_of(id: u64, tx: mpsc::Sender<Input>, gauge: Arc<node::InboxGauge>) -> Inbox {
    let tx = Mutex::new(tx);
    Inbox {
        deliver: Arc::new(move |sender: Option<u64>, frame: Vec<u8>| {
            let len = frame.len();
            if !gauge.admit(len) {
                let n = gauge.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                // Every drop at debug, a warning at 1, 2, 4, 8... drops.
                if n.is_power_of_two() {
                    tracing::warn!(id, dropped = n, bytes = len, "raft inbox full: dropping frames (raft retransmits)");
                } else {
                    tracing::debug!(id, dropped = n, bytes = len, "raft inbox full: frame dropped");
                }
                return;
            }
            if lock(&tx).send(Input::Frame { frame, sender }).is_err() {
                // The driver stopped: nobody will take the frame.
                gauge.release(len);
            }
        }),
    }
}

impl RaftStore {
    /// Opens (or creates) the manager's log in `cfg.dir`, rebuilds the state
    /// machine from the latest snapshot and the committed log, and starts the
    /// manager's driver thread. Blocks on disk: from async code use
    /// [`RaftStore::open_async`]. Frames for this manager must then be handed
    /// to [`RaftStore::inbox`].
    pub fn open(cfg: RaftStoreConfig, transport: Arc<dyn Transport>) -> Result<RaftStore, RaftError> {
        cfg.validate()?;
        let storage = DiskStorage::open(&cfg.dir, cfg.recovery, cfg.id)?;
        if storage.is_blank() {
            if cfg.initial_voters.is_empty() {
                tracing::info!(id = cfg.id, "empty log and no initial voters: waiting to be added to a cluster");
            } else {
                storage.bootstrap(&cfg.initial_voters)?;
                tracing::info!(id = cfg.id, voters = ?cfg.initial_voters, "bootstrapped a new cluster");
            }
        }
        let snap = storage.latest_snapshot()?;
        let applied = snap.get_metadata().index;
        let (state, dedupe) = node::decode_snapshot(&snap.data).map_err(RaftError::Corrupt)?;
        let replica = Replica::with_limits(state, cfg.watch_history, swarm_core::store::DEFAULT_WATCH_BUFFER);
        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.raft.election_tick as usize,
            heartbeat_tick: cfg.raft.heartbeat_tick as usize,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: cfg.check_quorum,
            pre_vote: cfg.pre_vote,
            read_only_option: raft::ReadOnlyOption::Safe,
            ..Default::default()
        };
        raft_cfg.validate()?;
        let logger = logger::raft_logger(cfg.id);
        let mut raw = raft::RawNode::new(&raft_cfg, storage.clone(), &logger)?;
        if raw.raft.prs().conf().to_conf_state().voters == [cfg.id] {
            // The only voter: no one to wait for, lead at once.
            raw.campaign()?;
        }
        let election = cfg.election();
        let dcfg = DriverConfig {
            tick: cfg.tick(),
            election,
            leader_wait: cfg.leader_wait.unwrap_or(election * 2),
            commit_timeout: cfg.commit_timeout.unwrap_or_else(|| (election * 5).max(Duration::from_secs(5))),
            snapshot_interval: cfg.raft.snapshot_interval,
            keep_entries: cfg.raft.log_entries_for_slow_followers,
        };
        let replica = Arc::new(Mutex::new(replica));
        let status = Arc::new(Mutex::new(NodeStatus { id: cfg.id, ..Default::default() }));
        let mut driver = Driver::new(cfg.id, raw, storage, replica.clone(), status.clone(), transport, dcfg, applied);
        driver.dedupe = dedupe;
        let gauge = Arc::new(node::InboxGauge {
            max_frames: cfg.inbox_frames,
            max_bytes: cfg.inbox_bytes,
            ..Default::default()
        });
        driver.inbox = gauge.clone();
        let (leading_tx, leading) = tokio::sync::watch::channel(false);
        driver.leading = Some(leading_tx);
        driver.publish(false);
        let (tx, rx) = mpsc::channel();
        driver.self_tx = Some(tx.clone());
        let inbox = inbox_of(cfg.id, tx.clone(), gauge.clone());
        driver.own_inbox = Some(inbox.clone());
        let thread = std::thread::Builder::new()
            .name(format!("raft-{}", cfg.id))
            .spawn(move || driver.run(rx))
            .map_err(|e| RaftError::Io { what: "starting the raft driver thread".into(), source: e })?;
        tracing::info!(id = cfg.id, dir = %cfg.dir.display(), applied, "raft manager started");
        Ok(RaftStore {
            inner: Arc::new(Inner {
                id: cfg.id,
                input: tx,
                inbox,
                replica,
                status,
                leading,
                thread: Mutex::new(Some(thread)),
                election,
            }),
        })
    }

    /// [`RaftStore::open`] on a blocking thread.
    pub async fn open_async(cfg: RaftStoreConfig, transport: Arc<dyn Transport>) -> Result<RaftStore, RaftError> {
        tokio::task::spawn_blocking(move || RaftStore::open(cfg, transport))
            .await
            .map_err(|e| RaftError::Io { what: "opening the raft store".into(), source: std::io::Error::other(e) })?
    }

    /// This manager's raft id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Where transports deliver frames for this manager. Never blocks: when
    /// [`RaftStoreConfig::inbox_frames`] frames or
    /// [`RaftStoreConfig::inbox_bytes`] bytes already wait, the frame is
    /// dropped, logged and counted ([`NodeStatus::inbox_dropped`]).
    ///
    /// Every call returns the same inbox: the transport forgets it when the
    /// manager stops ([`Transport::leave`]), so a stopped manager leaves an
    /// [`InProcNetwork`] on its own.
    pub fn inbox(&self) -> Inbox {
        self.inner.inbox.clone()
    }

    /// What this manager knows now (leader, term, membership, indexes).
    pub fn status(&self) -> NodeStatus {
        lock(&self.inner.status).clone()
    }

    /// The local state without asking the leader: cheap, but it may miss
    /// writes committed elsewhere that this manager has not applied yet
    /// (a follower behind, or a manager cut off from the leader). Use it for
    /// caches and dashboards, not to decide a write.
    pub fn stale_snapshot(&self) -> Arc<State> {
        lock(&self.inner.replica).state()
    }

    async fn ask<T>(&self, make: impl FnOnce(node::Reply<T>) -> Input) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .input
            .send(make(tx))
            .map_err(|_| StoreError::Unavailable(format!("manager {} is stopped", self.inner.id)))?;
        rx.await.map_err(|_| StoreError::Unavailable(format!("manager {} stopped before answering", self.inner.id)))?
    }

    /// Applies membership changes in one ConfChangeV2 (prefer one change at a
    /// time: raft-rs refuses a change while another is pending). Returns the
    /// voters after the change. Removing or demoting the current leader first
    /// transfers leadership to another voter (see [`RaftStore::remove`]).
    pub async fn change_membership(&self, changes: Vec<MemberChange>) -> Result<Vec<u64>, StoreError> {
        if changes.is_empty() {
            return Err(StoreError::Unavailable("membership change: no change given".into()));
        }
        for c in &changes {
            let target = match c {
                MemberChange::Remove(id) | MemberChange::AddLearner(id) => *id,
                MemberChange::AddVoter(_) => continue,
            };
            self.move_leadership_away_from(target).await?;
        }
        self.ask(|reply| Input::Conf { changes, reply }).await
    }

    /// Adds a voting manager (or promotes a learner).
    pub async fn add_voter(&self, id: u64) -> Result<Vec<u64>, StoreError> {
        self.change_membership(vec![MemberChange::AddVoter(id)]).await
    }

    /// Adds a learner: it receives the log but does not vote. Promote it
    /// with [`RaftStore::add_voter`] once it caught up.
    pub async fn add_learner(&self, id: u64) -> Result<Vec<u64>, StoreError> {
        self.change_membership(vec![MemberChange::AddLearner(id)]).await
    }

    /// Demotes a voter to learner (moving leadership away first if needed).
    pub async fn demote(&self, id: u64) -> Result<Vec<u64>, StoreError> {
        self.change_membership(vec![MemberChange::AddLearner(id)]).await
    }

    /// Removes a member. If it is the current leader, leadership is first
    /// transferred to another voter and the removal is proposed through the
    /// new leader, so the cluster never depends on a leader that is leaving
    /// (the failure of moby/moby#34384).
    pub async fn remove(&self, id: u64) -> Result<Vec<u64>, StoreError> {
        self.change_membership(vec![MemberChange::Remove(id)]).await
    }

    async fn move_leadership_away_from(&self, leaving: u64) -> Result<(), StoreError> {
        let st = self.status();
        if st.leader != Some(leaving) {
            return Ok(());
        }
        let Some(&to) = st.voters.iter().find(|&&v| v != leaving) else {
            return Err(StoreError::Unavailable(format!(
                "cannot remove or demote manager {leaving}: it is the only voter"
            )));
        };
        tracing::info!(leaving, to, "moving leadership before removing or demoting the leader");
        self.transfer_leadership(to).await?;
        // Wait until this manager sees a leader other than the leaving one.
        let deadline = tokio::time::Instant::now() + self.inner.election * 3;
        loop {
            let st = self.status();
            if st.leader.is_some() && st.leader != Some(leaving) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(format!("leadership did not move away from manager {leaving}")));
            }
            tokio::time::sleep(self.inner.election / 10).await;
        }
    }

    /// Transfers leadership to manager `to` (works from any manager; the
    /// request is forwarded to the leader). Waits until `to` leads.
    pub async fn transfer_leadership(&self, to: u64) -> Result<(), StoreError> {
        self.ask(|reply| Input::Transfer { to, reply }).await
    }

    /// Starts an election on this manager now (tests, operators).
    pub fn campaign(&self) {
        let _ = self.inner.input.send(Input::Campaign);
    }

    /// Stops the driver and closes the log, waiting for the thread to end.
    /// The manager leaves its transport ([`Transport::leave`]): an
    /// [`InProcNetwork`] no longer delivers to it. Dropping the last handle
    /// stops the driver too, without waiting. Blocking: call it from a blocking context or use [`RaftStore::shutdown`].
    pub fn stop(&self) {
        let _ = self.inner.input.send(Input::Stop);
        if let Some(t) = lock(&self.inner.thread).take()
            && t.join().is_err()
        {
            tracing::error!(id = self.inner.id, "the raft driver thread panicked");
        }
    }

    /// [`RaftStore::stop`] on a blocking thread.
    pub async fn shutdown(&self) {
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.stop()).await;
    }

    /// Offline recovery of a cluster that lost its quorum for good, like
    /// Swarm's `--force-new-cluster`: rewrites the log in `dir` (of one
    /// surviving manager, which must be stopped) so that it holds a
    /// snapshot of every entry it knows committed, with this manager as
    /// the only voter. Open it normally afterwards; it elects itself and
    /// other managers can be added again with empty directories.
    pub fn force_new_cluster(dir: &Path, id: u64) -> Result<u64, RaftError> {
        use protobuf::Message as _;
        let storage = DiskStorage::open(dir, Recovery::TolerateTornTail, id)?;
        let snap = storage.latest_snapshot()?;
        let (mut state, mut dedupe) = node::decode_snapshot(&snap.data).map_err(RaftError::Corrupt)?;
        let hs = storage.hard_state();
        let (_, last) = storage.bounds();
        let commit = hs.commit.min(last);
        let from = snap.get_metadata().index + 1;
        let mut term = snap.get_metadata().term;
        for e in storage.entries_between(from, commit + 1)? {
            term = e.term;
            if e.get_entry_type() != raft::prelude::EntryType::EntryNormal || e.data.is_empty() {
                continue;
            }
            if let Some(r) = node::ReqId::decode(&e.context)
                && !dedupe.insert(r)
            {
                continue;
            }
            match serde_json::from_slice::<Transaction>(&e.data) {
                Ok(tx) => {
                    if let Ok((next, _)) = state.apply(&tx) {
                        state = next;
                    }
                }
                Err(err) => tracing::error!(index = e.index, error = %err, "skipping an undecodable entry"),
            }
        }
        let index = commit.max(snap.get_metadata().index);
        let mut new_snap = raft::prelude::Snapshot::default();
        new_snap.data = serde_json::to_vec(&node::SnapshotData { image: state.to_image(), applied_ids: dedupe.ids() })
            .map_err(|e| RaftError::Corrupt(format!("encoding the snapshot: {e}")))?
            .into();
        new_snap.mut_metadata().index = index;
        new_snap.mut_metadata().term = term;
        new_snap.mut_metadata().mut_conf_state().voters = vec![id];
        let mut new_hs = raft::prelude::HardState::default();
        new_hs.term = hs.term.max(term);
        new_hs.commit = index;
        let _ = new_snap.compute_size();
        storage.install_snapshot(&new_snap, &new_hs)?;
        tracing::warn!(dir = %dir.display(), id, index, revision = state.revision(), "forced a new single-manager cluster");
        Ok(index)
    }
}

#[async_trait]
impl Store for RaftStore {
    /// Proposes the transaction (forwarded to the leader) and waits until
    /// this manager applied it. The timestamp is fixed here, before
    /// proposing, so every manager applies the same time.
    async fn commit(&self, mut tx: Transaction) -> Result<Arc<Change>, StoreError> {
        if tx.timestamp.is_none() {
            tx.timestamp = Some(swarm_core::time::now());
        }
        self.ask(|reply| Input::Propose { tx: Box::new(tx), reply }).await
    }

    /// A linearizable snapshot (ReadIndex): the leader confirms it still
    /// leads with a quorum, then this manager waits until it applied up to
    /// the leader's commit index.
    async fn snapshot(&self) -> Result<Arc<State>, StoreError> {
        self.ask(|reply| Input::Read { reply }).await
    }

    async fn watch(&self, from: Revision) -> Result<Watch, StoreError> {
        lock(&self.inner.replica).watch(from)
    }

    /// This manager's replica as applied so far ([`RaftStore::stale_snapshot`]).
    fn local_snapshot(&self) -> Option<Arc<State>> {
        Some(self.stale_snapshot())
    }

    /// True while this manager is the raft leader (and not stopped): a
    /// `Manager` on this store runs its controllers only then.
    fn leadership(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.leading.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_etcd_like() {
        let cfg = RaftStoreConfig::new(1, "/tmp/unused", vec![1, 2, 3]);
        assert_eq!(cfg.tick(), Duration::from_millis(100));
        assert_eq!(cfg.raft.heartbeat_tick, 1);
        assert_eq!(cfg.election(), Duration::from_secs(1));
        assert!(cfg.pre_vote && cfg.check_quorum);
        assert_eq!(cfg.raft.snapshot_interval, 10_000);
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn invalid_configurations_are_refused_with_the_field_named() {
        let ok = RaftStoreConfig::new(1, "/tmp/unused", vec![1, 2, 3]);
        let mut c = ok.clone();
        c.id = 0;
        assert!(c.validate().unwrap_err().to_string().contains("id: 0 is reserved"));
        let mut c = ok.clone();
        c.raft.election_tick = 1;
        assert!(c.validate().unwrap_err().to_string().contains("raft.election_tick (1)"));
        let mut c = ok.clone();
        c.initial_voters = vec![2, 3];
        assert!(c.validate().unwrap_err().to_string().contains("must contain this manager's id 1"));
        let c = ok.with_tick(Duration::ZERO);
        assert!(c.validate().unwrap_err().to_string().contains("raft.tick"));
    }
}
