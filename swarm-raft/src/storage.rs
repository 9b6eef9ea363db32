//! The durable raft log: raft-rs' [`Storage`] on top of raft-engine.
//!
//! One raft-engine instance per manager, one raft group (id 1) in it. The
//! log entries live in raft-engine's append queue; the hard state and the
//! latest snapshot (metadata, membership and the state machine image) are
//! key/values of the same group, so one [`LogBatch`] written with `sync`
//! makes entries, hard state and snapshot durable together.
//!
//! Every method here blocks on disk: they are only called from the manager's
//! own driver thread (see `node`), never from async workers.
//!
//! Torn or corrupted tails: raft-engine checksums every record. Opened in
//! [`Recovery::TolerateTornTail`] (the default) a damaged *tail* is cut off
//! at the last intact record and reported in the log; a damaged record in
//! the middle of a file, or any damage in [`Recovery::Strict`] mode, makes
//! [`DiskStorage::open`] fail. Damaged records are never applied.

use crate::error::RaftError;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use raft_engine::{Engine, LogBatch, MessageExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The raft group id inside the engine (one group per manager).
const GROUP: u64 = 1;
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
const KEY_MANAGER_ID: &[u8] = b"manager_id";

/// How to treat a damaged log tail when opening.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Recovery {
    /// Cut a torn or corrupted tail at the last intact record (the normal
    /// result of a crash in the middle of a write); refuse damage elsewhere.
    #[default]
    TolerateTornTail,
    /// Refuse to open on any damage.
    Strict,
}

struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

#[derive(Default)]
struct Cached {
    hard_state: HardState,
    snapshot: Snapshot,
}

/// raft-rs [`Storage`] on raft-engine. Cheap to clone (shared engine).
#[derive(Clone)]
pub struct DiskStorage {
    engine: Arc<Engine>,
    id: u64,
    dir: PathBuf,
    cached: Arc<RwLock<Cached>>,
}

fn engine_err(dir: &Path, e: raft_engine::Error) -> RaftError {
    RaftError::Engine { dir: dir.display().to_string(), reason: e.to_string() }
}

fn store_err(e: raft_engine::Error) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl DiskStorage {
    /// Opens (or creates) the log of manager `id` in `dir`. Refuses a
    /// directory that holds another manager's log.
    pub fn open(dir: &Path, recovery: Recovery, id: u64) -> Result<DiskStorage, RaftError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| RaftError::Io { what: format!("creating {}", dir.display()), source: e })?;
        let cfg = raft_engine::Config {
            dir: dir.display().to_string(),
            recovery_mode: match recovery {
                Recovery::TolerateTornTail => raft_engine::RecoveryMode::TolerateTailCorruption,
                Recovery::Strict => raft_engine::RecoveryMode::AbsoluteConsistency,
            },
            target_file_size: raft_engine::ReadableSize::mb(32),
            ..Default::default()
        };
        // Open strictly first, to notice damage; then, if allowed, cut the
        // damaged tail (raft-engine's tail-tolerant recovery).
        let strict =
            raft_engine::Config { recovery_mode: raft_engine::RecoveryMode::AbsoluteConsistency, ..cfg.clone() };
        let engine = match Engine::open(strict) {
            Ok(engine) => engine,
            Err(e) if recovery == Recovery::TolerateTornTail => {
                tracing::warn!(dir = %dir.display(), error = %e, "raft log is damaged; cutting the damaged tail at the last intact record");
                Engine::open(cfg).map_err(|e| engine_err(dir, e))?
            }
            Err(e) => return Err(engine_err(dir, e)),
        };
        let hard_state: HardState =
            engine.get_message(GROUP, KEY_HARD_STATE).map_err(|e| engine_err(dir, e))?.unwrap_or_default();
        let snapshot: Snapshot =
            engine.get_message(GROUP, KEY_SNAPSHOT).map_err(|e| engine_err(dir, e))?.unwrap_or_default();
        match engine.get(GROUP, KEY_MANAGER_ID) {
            Some(v) if v.as_slice() != id.to_be_bytes().as_slice() => {
                let other = <[u8; 8]>::try_from(v.as_slice()).map(u64::from_be_bytes).unwrap_or(0);
                return Err(RaftError::Config(format!(
                    "{} holds the raft log of manager {other}, not of manager {id}",
                    dir.display()
                )));
            }
            Some(_) => {}
            None => {
                let mut batch = LogBatch::default();
                batch.put(GROUP, KEY_MANAGER_ID.to_vec(), id.to_be_bytes().to_vec()).map_err(|e| engine_err(dir, e))?;
                engine.write(&mut batch, true).map_err(|e| engine_err(dir, e))?;
            }
        }
        let storage = DiskStorage {
            engine: Arc::new(engine),
            id,
            dir: dir.to_path_buf(),
            cached: Arc::new(RwLock::new(Cached { hard_state, snapshot })),
        };
        let (first, last) = (storage.first(), storage.last());
        let hs = storage.hard_state();
        if hs.commit > last {
            // The hard state says entries up to `commit` were durable; some
            // are gone (a cut tail). Raft will fetch them again from the
            // leader, but this manager must not claim them as its own.
            tracing::warn!(dir = %dir.display(), commit = hs.commit, last, "raft log is shorter than its commit index (damaged tail was cut); lowering commit");
            let mut hs = hs;
            hs.commit = last.max(storage.snapshot_metadata().index);
            storage.put_hard_state(&hs)?;
        }
        tracing::debug!(dir = %dir.display(), first, last, term = storage.hard_state().term, "raft log opened");
        Ok(storage)
    }

    /// Whether this log has never been initialised (no membership, no state).
    pub fn is_blank(&self) -> bool {
        let c = self.read();
        c.snapshot.get_metadata().get_conf_state() == &ConfState::default()
            && c.hard_state == HardState::default()
            && self.engine.last_index(GROUP).is_none()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cached> {
        // The cache is replaced wholesale under the lock; poison cannot
        // leave it half-updated.
        self.cached.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, Cached> {
        self.cached.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> HardState {
        self.read().hard_state.clone()
    }

    /// The latest snapshot (metadata and state machine image).
    pub fn latest_snapshot(&self) -> Snapshot {
        self.read().snapshot.clone()
    }

    fn snapshot_metadata(&self) -> SnapshotMetadata {
        self.read().snapshot.get_metadata().clone()
    }

    fn first(&self) -> u64 {
        let snap_index = self.snapshot_metadata().index;
        match self.engine.first_index(GROUP) {
            Some(i) => i.min(snap_index + 1),
            None => snap_index + 1,
        }
    }

    fn last(&self) -> u64 {
        let snap_index = self.snapshot_metadata().index;
        self.engine.last_index(GROUP).unwrap_or(snap_index).max(snap_index)
    }

    /// Writes the very first snapshot: membership `voters` at index 0.
    pub fn bootstrap(&self, voters: &[u64]) -> Result<(), RaftError> {
        let mut snap = Snapshot::default();
        snap.mut_metadata().mut_conf_state().voters = voters.to_vec();
        let mut batch = LogBatch::default();
        batch.put_message(GROUP, KEY_SNAPSHOT.to_vec(), &snap).map_err(|e| engine_err(&self.dir, e))?;
        self.engine.write(&mut batch, true).map_err(|e| engine_err(&self.dir, e))?;
        self.write_cache().snapshot = snap;
        Ok(())
    }

    /// Appends entries and/or a new hard state, fsynced, in one batch.
    pub fn append(&self, entries: &[Entry], hs: Option<&HardState>) -> Result<(), RaftError> {
        let mut batch = LogBatch::default();
        if !entries.is_empty() {
            batch.add_entries::<EntryExt>(GROUP, entries).map_err(|e| engine_err(&self.dir, e))?;
        }
        if let Some(hs) = hs {
            batch.put_message(GROUP, KEY_HARD_STATE.to_vec(), hs).map_err(|e| engine_err(&self.dir, e))?;
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.engine.write(&mut batch, true).map_err(|e| engine_err(&self.dir, e))?;
        if let Some(hs) = hs {
            self.write_cache().hard_state = hs.clone();
        }
        Ok(())
    }

    /// Persists only a hard state, fsynced.
    pub fn put_hard_state(&self, hs: &HardState) -> Result<(), RaftError> {
        self.append(&[], Some(hs))
    }

    /// Records a higher commit index without fsync: the commit index can
    /// always be learned again from the leader, so losing this write only
    /// costs replay work (and `open` lowers a commit index past the log).
    pub fn note_commit(&self, hs: &HardState) -> Result<(), RaftError> {
        let mut batch = LogBatch::default();
        batch.put_message(GROUP, KEY_HARD_STATE.to_vec(), hs).map_err(|e| engine_err(&self.dir, e))?;
        self.engine.write(&mut batch, false).map_err(|e| engine_err(&self.dir, e))?;
        self.write_cache().hard_state = hs.clone();
        Ok(())
    }

    /// Index of the latest snapshot (without cloning its data).
    pub fn snapshot_index(&self) -> u64 {
        self.read().snapshot.get_metadata().index
    }

    /// Installs a snapshot received from the leader: the whole log is
    /// replaced by it (one fsynced batch: clean, snapshot, hard state).
    pub fn install_snapshot(&self, snap: &Snapshot, hs: &HardState) -> Result<(), RaftError> {
        let mut batch = LogBatch::default();
        batch.add_command(GROUP, raft_engine::Command::Clean);
        batch
            .put(GROUP, KEY_MANAGER_ID.to_vec(), self.id.to_be_bytes().to_vec())
            .map_err(|e| engine_err(&self.dir, e))?;
        batch.put_message(GROUP, KEY_SNAPSHOT.to_vec(), snap).map_err(|e| engine_err(&self.dir, e))?;
        batch.put_message(GROUP, KEY_HARD_STATE.to_vec(), hs).map_err(|e| engine_err(&self.dir, e))?;
        self.engine.write(&mut batch, true).map_err(|e| engine_err(&self.dir, e))?;
        let mut c = self.write_cache();
        c.snapshot = snap.clone();
        c.hard_state = hs.clone();
        Ok(())
    }

    /// Saves a snapshot taken locally at `meta.index` and compacts the log
    /// below `compact_to` (entries kept for slow followers stay).
    pub fn save_snapshot(&self, snap: &Snapshot, compact_to: u64) -> Result<(), RaftError> {
        let mut batch = LogBatch::default();
        batch.put_message(GROUP, KEY_SNAPSHOT.to_vec(), snap).map_err(|e| engine_err(&self.dir, e))?;
        self.engine.write(&mut batch, true).map_err(|e| engine_err(&self.dir, e))?;
        self.write_cache().snapshot = snap.clone();
        let first = self.engine.first_index(GROUP).unwrap_or(0);
        if compact_to > first {
            self.engine.compact_to(GROUP, compact_to);
            if let Err(e) = self.engine.purge_expired_files() {
                tracing::warn!(dir = %self.dir.display(), error = %e, "purging old raft log files failed");
            }
        }
        Ok(())
    }

    /// The entries in `[low, high)` (for offline tools).
    pub fn entries_between(&self, low: u64, high: u64) -> Result<Vec<Entry>, RaftError> {
        let mut out = Vec::new();
        if high > low {
            self.engine
                .fetch_entries_to::<EntryExt>(GROUP, low, high, None, &mut out)
                .map_err(|e| engine_err(&self.dir, e))?;
        }
        Ok(out)
    }

    /// The first and last index of the log.
    pub fn bounds(&self) -> (u64, u64) {
        (self.first(), self.last())
    }
}

impl Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let c = self.read();
        Ok(RaftState {
            hard_state: c.hard_state.clone(),
            conf_state: c.snapshot.get_metadata().get_conf_state().clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let (first, last) = (self.first(), self.last());
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        if high > low {
            let max = max_size.into().map(|m| m as usize);
            self.engine.fetch_entries_to::<EntryExt>(GROUP, low, high, max, &mut out).map_err(store_err)?;
            // raft-rs expects at least one entry even above the size limit.
            if out.is_empty() {
                self.engine.fetch_entries_to::<EntryExt>(GROUP, low, low + 1, None, &mut out).map_err(store_err)?;
            }
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let meta = self.snapshot_metadata();
        if idx == meta.index {
            return Ok(meta.term);
        }
        let (first, last) = (self.first(), self.last());
        if idx < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self.engine.get_entry::<EntryExt>(GROUP, idx).map_err(store_err)? {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let snap = self.latest_snapshot();
        if snap.get_metadata().index < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = vec![index as u8].into();
        e
    }

    #[test]
    fn entries_hard_state_and_snapshots_survive_reopening() {
        let tmp = tempfile::tempdir().unwrap();
        let s = DiskStorage::open(tmp.path(), Recovery::Strict, 1).unwrap();
        assert!(s.is_blank());
        s.bootstrap(&[1, 2, 3]).unwrap();
        let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1)).collect();
        let mut hs = HardState::default();
        hs.term = 1;
        hs.vote = 2;
        hs.commit = 8;
        s.append(&ents, Some(&hs)).unwrap();
        assert_eq!(s.bounds(), (1, 10));
        assert_eq!(s.term(5).unwrap(), 1);
        assert!(matches!(s.term(11), Err(raft::Error::Store(StorageError::Unavailable))));
        // A local snapshot at 8 keeping 3 entries before it.
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 8;
        snap.mut_metadata().term = 1;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        s.save_snapshot(&snap, 6).unwrap();
        assert_eq!(s.bounds(), (6, 10));
        assert!(matches!(s.term(5), Err(raft::Error::Store(StorageError::Compacted))));
        assert!(matches!(
            s.entries(4, 7, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        drop(s);
        let s = DiskStorage::open(tmp.path(), Recovery::Strict, 1).unwrap();
        assert_eq!(s.bounds(), (6, 10));
        assert_eq!(s.hard_state(), hs);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
        let got = s.entries(6, 11, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), vec![6, 7, 8, 9, 10]);
    }

    #[test]
    fn installing_a_snapshot_replaces_the_log_durably() {
        let tmp = tempfile::tempdir().unwrap();
        let s = DiskStorage::open(tmp.path(), Recovery::Strict, 1).unwrap();
        s.bootstrap(&[1]).unwrap();
        s.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>(), None).unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 20;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 4];
        snap.data = b"image".to_vec().into();
        let mut hs = HardState::default();
        hs.term = 3;
        hs.commit = 20;
        s.install_snapshot(&snap, &hs).unwrap();
        assert_eq!(s.bounds(), (21, 20));
        // New entries continue right after the snapshot.
        s.append(&[entry(21, 3)], None).unwrap();
        drop(s);
        let s = DiskStorage::open(tmp.path(), Recovery::Strict, 1).unwrap();
        assert_eq!(s.bounds(), (21, 21));
        assert_eq!(s.term(20).unwrap(), 3);
        assert_eq!(s.latest_snapshot().data.as_ref(), b"image");
        assert_eq!(s.hard_state().commit, 20);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 4]);
        drop(s);
        // The directory still says whose log it is.
        let err = DiskStorage::open(tmp.path(), Recovery::Strict, 2).err().unwrap();
        assert!(err.to_string().contains("holds the raft log of manager 1, not of manager 2"), "{err}");
    }
}
