//! The [`Store`] trait: the desired and observed state of the cluster, and
//! [`MemStore`], its in-memory implementation.
//!
//! Writes are [`Transaction`]s committed atomically, in one order. Reads are
//! [`State`] snapshots at a revision (cheap: the state is persistent).
//! [`Store::watch`] streams the [`Change`]s after a revision, so a
//! controller lists (snapshot at revision R) then watches from R with no
//! gap and no repeat.
//!
//! [`Replica`] holds the state, a bounded history of changes and the
//! watchers. `MemStore` is a `Replica` behind a mutex; the raft store feeds
//! committed entries to a `Replica` on every manager. Both run the same
//! [`State::apply`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use swarm_core::model::{Node, Resources};
//! use swarm_core::state::Transaction;
//! use swarm_core::store::{MemStore, Store};
//! let store = MemStore::new();
//! let mut watch = store.watch(0).await.unwrap();
//! store.commit(Transaction::new().create(Node::ready("n1", "h1", Resources::default()))).await.unwrap();
//! let change = watch.next().await.unwrap();
//! assert_eq!(change.revision, 1);
//! assert!(store.snapshot().await.unwrap().node(&"n1".into()).is_some());
//! # }
//! ```

use crate::model::Revision;
use crate::state::{Change, State, Transaction, TxError};
use crate::time;
use async_trait::async_trait;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The transaction was rejected by the state machine; nothing changed.
    #[error("transaction rejected: {0}")]
    Rejected(#[from] TxError),
    /// The requested revision is older than the retained history.
    #[error(
        "revision {requested} is compacted (oldest watchable is {oldest}): take a new snapshot and watch from its revision"
    )]
    Compacted {
        /// Revision asked for.
        requested: Revision,
        /// Oldest revision still watchable.
        oldest: Revision,
    },
    /// The requested revision is in the future.
    #[error("revision {requested} is ahead of the store (at {current})")]
    FutureRevision {
        /// Revision asked for.
        requested: Revision,
        /// Current revision.
        current: Revision,
    },
    /// A watcher fell too far behind and missed changes.
    #[error("watch fell behind after revision {last_seen} and missed changes: take a new snapshot and watch again")]
    Lagged {
        /// Last revision the watcher saw.
        last_seen: Revision,
    },
    /// No quorum of managers is reachable (replicated stores).
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The store cannot serve the call now (shutting down, not a member...).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The outcome is unknown (e.g. the leader was lost after proposing).
    #[error("commit outcome unknown: {0}")]
    Indeterminate(String),
}

impl StoreError {
    /// True for a version conflict (read again and retry).
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Rejected(TxError::VersionConflict { .. }))
    }
}

/// The cluster's state store. See the [module docs](self).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Commits a transaction atomically; returns what changed.
    async fn commit(&self, tx: Transaction) -> Result<Arc<Change>, StoreError>;

    /// A consistent snapshot of the whole state, at its revision.
    async fn snapshot(&self) -> Result<Arc<State>, StoreError>;

    /// The changes after `from` (exclusive), in order, then live ones.
    async fn watch(&self, from: Revision) -> Result<Watch, StoreError>;

    /// The state this process holds now, without the quorum check
    /// [`Store::snapshot`] makes: a replicated store's local replica, which
    /// may miss writes committed elsewhere. For reads that must still
    /// answer when no quorum is reachable, clearly marked as stale. The
    /// default (a store whose snapshot never needs a quorum) has none.
    fn local_snapshot(&self) -> Option<Arc<State>> {
        None
    }

    /// Whether this process may run the leader-only control loops now,
    /// and each change of that. The default (a store in one process, as
    /// [`MemStore`]) always leads; a replicated store reports whether its
    /// node is the leader. [`Manager`](crate::manager::Manager) runs its
    /// controllers only while this is true.
    fn leadership(&self) -> tokio::sync::watch::Receiver<bool> {
        // The sender is dropped: the value stays true for good.
        tokio::sync::watch::channel(true).1
    }
}

/// A stream of committed changes. Obtain one with [`Store::watch`].
pub struct Watch {
    backlog: VecDeque<Arc<Change>>,
    live: broadcast::Receiver<Arc<Change>>,
    last: Revision,
}

impl Watch {
    /// Builds a watch from a backlog and a live receiver subscribed at the
    /// same moment; `last` is the revision the caller already has.
    pub fn new(backlog: VecDeque<Arc<Change>>, live: broadcast::Receiver<Arc<Change>>, last: Revision) -> Self {
        Watch { backlog, live, last }
    }

    /// The last revision handed out.
    pub fn revision(&self) -> Revision {
        self.last
    }

    /// The next change. Errors with [`StoreError::Lagged`] if the watcher
    /// fell behind, or [`StoreError::Unavailable`] when the store is gone.
    pub async fn next(&mut self) -> Result<Arc<Change>, StoreError> {
        loop {
            let change = match self.backlog.pop_front() {
                Some(c) => c,
                None => match self.live.recv().await {
                    Ok(c) => c,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Err(StoreError::Lagged { last_seen: self.last });
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(StoreError::Unavailable("the store was closed".into()));
                    }
                },
            };
            if change.revision <= self.last {
                continue; // already delivered through the backlog
            }
            if change.revision != self.last + 1 {
                return Err(StoreError::Lagged { last_seen: self.last });
            }
            self.last = change.revision;
            return Ok(change);
        }
    }

    /// A change if one is ready now, without waiting.
    pub fn try_next(&mut self) -> Option<Result<Arc<Change>, StoreError>> {
        loop {
            let change = match self.backlog.pop_front() {
                Some(c) => c,
                None => match self.live.try_recv() {
                    Ok(c) => c,
                    Err(broadcast::error::TryRecvError::Empty) => return None,
                    Err(broadcast::error::TryRecvError::Lagged(_)) => {
                        return Some(Err(StoreError::Lagged { last_seen: self.last }));
                    }
                    Err(broadcast::error::TryRecvError::Closed) => {
                        return Some(Err(StoreError::Unavailable("the store was closed".into())));
                    }
                },
            };
            if change.revision <= self.last {
                continue;
            }
            if change.revision != self.last + 1 {
                return Some(Err(StoreError::Lagged { last_seen: self.last }));
            }
            self.last = change.revision;
            return Some(Ok(change));
        }
    }
}

/// Default size of the history kept for watchers that resume, in events
/// (objects changed): a change of n operations counts n. Counted in events,
/// not changes, so that the history's memory is bounded: a change may hold
/// up to `max_tx_ops` objects (1,000 by default), and 100,000 changes of
/// task creates and updates held 2-3 KB per task event (converge_bench at
/// 100,000 replicas kept every event of the run, about 600 MB).
pub const DEFAULT_HISTORY: usize = 100_000;
/// Default capacity of the live channel before a slow watcher lags.
pub const DEFAULT_WATCH_BUFFER: usize = 1 << 16;

/// One copy of the state machine with its change history and watchers.
pub struct Replica {
    state: Arc<State>,
    history: VecDeque<Arc<Change>>,
    /// Events in `history`.
    history_events: usize,
    history_limit: usize,
    live: broadcast::Sender<Arc<Change>>,
}

impl Default for Replica {
    fn default() -> Self {
        Self::new(State::default())
    }
}

impl Replica {
    /// A replica starting from `state`.
    pub fn new(state: State) -> Self {
        Self::with_limits(state, DEFAULT_HISTORY, DEFAULT_WATCH_BUFFER)
    }

    /// A replica with explicit history length (in events, see
    /// [`DEFAULT_HISTORY`]; the last change is always kept) and watch buffer.
    pub fn with_limits(state: State, history_limit: usize, watch_buffer: usize) -> Self {
        let (live, _) = broadcast::channel(watch_buffer.max(16));
        Replica {
            state: Arc::new(state),
            history: VecDeque::new(),
            history_events: 0,
            history_limit: history_limit.max(1),
            live,
        }
    }

    /// The current state.
    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Applies a transaction; on success publishes the change to watchers.
    pub fn apply(&mut self, tx: &Transaction) -> Result<Arc<Change>, TxError> {
        let (next, change) = self.state.apply(tx)?;
        let change = Arc::new(change);
        self.state = Arc::new(next);
        self.history_events += change.events.len();
        self.history.push_back(change.clone());
        while self.history_events > self.history_limit && self.history.len() > 1 {
            if let Some(old) = self.history.pop_front() {
                self.history_events -= old.events.len();
            }
        }
        let _ = self.live.send(change.clone());
        Ok(change)
    }

    /// Replaces the whole state (e.g. installing a raft snapshot). Watchers
    /// of older revisions will get [`StoreError::Compacted`] when they
    /// resume; live ones lag and re-list.
    pub fn restore(&mut self, state: State) {
        self.state = Arc::new(state);
        self.history.clear();
        self.history_events = 0;
        // Keep the live channel (and its configured capacity): a live
        // watcher sees the jump in revisions at the next change and gets
        // `Lagged`. A new channel would close its receiver, which reads as
        // "the store is gone" instead of "re-list".
    }

    /// A watch of the changes after `from`.
    pub fn watch(&self, from: Revision) -> Result<Watch, StoreError> {
        let current = self.state.revision();
        if from > current {
            return Err(StoreError::FutureRevision { requested: from, current });
        }
        let oldest_kept = self.history.front().map(|c| c.revision).unwrap_or(current + 1);
        if from < current && from + 1 < oldest_kept {
            return Err(StoreError::Compacted { requested: from, oldest: oldest_kept.saturating_sub(1) });
        }
        let backlog: VecDeque<_> = self.history.iter().filter(|c| c.revision > from).cloned().collect();
        Ok(Watch::new(backlog, self.live.subscribe(), from))
    }
}

/// The in-memory store: a [`Replica`] behind a mutex.
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<Replica>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with explicit history length (in events) and watch
    /// buffer.
    pub fn with_limits(history: usize, watch_buffer: usize) -> Self {
        MemStore { inner: Arc::new(Mutex::new(Replica::with_limits(State::default(), history, watch_buffer))) }
    }

    /// The current state, without going through the async trait.
    pub fn state(&self) -> Arc<State> {
        self.lock().state()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Replica> {
        // A panic while holding the lock cannot leave a half-applied
        // transaction (apply swaps an Arc at the end), so poison is safe to
        // clear.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Store for MemStore {
    async fn commit(&self, mut tx: Transaction) -> Result<Arc<Change>, StoreError> {
        if tx.timestamp.is_none() {
            tx.timestamp = Some(time::now());
        }
        let change = self.lock().apply(&tx)?;
        tracing::trace!(revision = change.revision, ops = change.events.len(), "committed");
        Ok(change)
    }

    async fn snapshot(&self) -> Result<Arc<State>, StoreError> {
        Ok(self.state())
    }

    async fn watch(&self, from: Revision) -> Result<Watch, StoreError> {
        self.lock().watch(from)
    }
}

/// Reads a snapshot, builds a transaction from it and commits, retrying on
/// version conflicts (up to `attempts` times). `build` returning `None`
/// means there is nothing to write.
pub async fn update_with_retry<S, F>(
    store: &S,
    attempts: usize,
    mut build: F,
) -> Result<Option<Arc<Change>>, StoreError>
where
    S: Store + ?Sized,
    F: FnMut(&State) -> Option<Transaction> + Send,
{
    let mut last = None;
    for _ in 0..attempts.max(1) {
        let state = store.snapshot().await?;
        let Some(tx) = build(&state) else { return Ok(None) };
        match store.commit(tx).await {
            Ok(c) => return Ok(Some(c)),
            Err(e) if e.is_conflict() => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| StoreError::Unavailable("no attempt made".into())))
}

/// List-then-watch, the way every follower of the store needs it: calls
/// `on_state` with a snapshot, then with a fresh snapshot after every change
/// for which `relevant` says yes (a burst of changes gives one call). A
/// watch that lagged or was compacted re-lists. Returns only when the store
/// fails otherwise.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::{Arc, Mutex};
/// use swarm_core::model::{Node, ObjectKind, Resources};
/// use swarm_core::state::Transaction;
/// use swarm_core::store::{MemStore, Store, follow_state};
/// let store = MemStore::new();
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let (s, out) = (store.clone(), seen.clone());
/// tokio::spawn(async move {
///     let touches_nodes = |c: &swarm_core::state::Change| c.events.iter().any(|e| e.object.kind() == ObjectKind::Node);
///     follow_state(&s, touches_nodes, |state| out.lock().unwrap().push(state.nodes().count())).await
/// });
/// tokio::task::yield_now().await;
/// store.commit(Transaction::new().create(Node::ready("n1", "h1", Resources::default()))).await.unwrap();
/// for _ in 0..10 { tokio::task::yield_now().await; }
/// assert_eq!(*seen.lock().unwrap(), vec![0, 1]);
/// # }
/// ```
pub async fn follow_state<S, P, F>(store: &S, mut relevant: P, mut on_state: F) -> Result<(), StoreError>
where
    S: Store + ?Sized,
    P: FnMut(&Change) -> bool,
    F: FnMut(&State),
{
    loop {
        let state = store.snapshot().await?;
        on_state(&state);
        let mut watch = store.watch(state.revision()).await?;
        'watching: loop {
            let mut wanted = false;
            let first = watch.next().await;
            let mut next = Some(first);
            while let Some(r) = next.take() {
                match r {
                    Ok(change) => wanted |= relevant(&change),
                    Err(StoreError::Lagged { .. } | StoreError::Compacted { .. }) => break 'watching,
                    Err(e) => return Err(e),
                }
                next = watch.try_next();
            }
            if wanted {
                on_state(&*store.snapshot().await?);
            }
        }
    }
}
