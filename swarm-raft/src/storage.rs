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
//! The newest entries are also kept in memory ([`Tail`], up to
//! [`TAIL_MAX_BYTES`] and [`TAIL_MAX_ENTRIES`]): raft asks for the term of
//! recent indexes and for recent entries (to send to followers, to apply)
//! many times per batch, and raft-engine reads each entry back from its
//! file, decompressing the whole block it was written in. Older entries
//! are read from disk. The bound is small on purpose: it only has to cover
//! what is in flight (appended, not yet acknowledged by every follower or
//! not yet applied), a fraction of a second of writes at full load.
//!
//! Snapshots: the metadata (index, term, membership) is a key/value of the
//! group, written in the same fsynced batch as the compaction it allows;
//! the state machine image is a file of its own,
//! `<dir>/snap/snapshot-<index>-<term>.json`, written (to a temporary name,
//! fsynced, renamed, directory fsynced) *before* the metadata naming it, so
//! a crash leaves either the old snapshot or the new one complete. The
//! image is not kept in memory: raft-engine holds its key/values in its
//! memtable and copies them through its write batches, so an image stored
//! there would sit in memory for good and pass through three more buffers
//! at every snapshot; a file is streamed from the encoder and read back only
//! when raft asks for it (to send to a follower that fell behind the log).
//! Logs written before snapshot files (image inline in the key/value) are
//! still read.
//!
//! Torn or corrupted tails: raft-engine checksums every record. Opened in
//! [`Recovery::TolerateTornTail`] (the default) a damaged *tail* is cut off
//! at the last intact record and reported in the log; a damaged record in
//! the middle of a file, or any damage in [`Recovery::Strict`] mode, makes
//! [`DiskStorage::open`] fail. Damaged records are never applied.

use crate::crypt::{Cipher, KeyFiles, SealingWriter};
use crate::error::RaftError;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use raft_engine::{Engine, LogBatch, MessageExt};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// The raft group id inside the engine (one group per manager).
const GROUP: u64 = 1;
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
const KEY_MANAGER_ID: &[u8] = b"manager_id";
/// The file name of the latest snapshot's image, when it is in a file.
const KEY_SNAPSHOT_FILE: &[u8] = b"snapshot_file";
/// Subdirectory of the log directory holding snapshot images.
const SNAP_DIR: &str = "snap";
/// Where the data keys live in a manager's raft directory (crate::crypt).
const KEYS_DIR: &str = "keys";
/// Index (and term) of the snapshot a new cluster starts from
/// ([`DiskStorage::bootstrap`]).
pub const BOOTSTRAP_INDEX: u64 = 1;
const SNAP_PREFIX: &str = "snapshot-";

fn snapshot_file_name(meta: &SnapshotMetadata) -> String {
    format!("{SNAP_PREFIX}{:020}-{:020}.json", meta.index, meta.term)
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> RaftError {
    move |source| RaftError::Io { what, source }
}

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
    /// The latest snapshot's metadata; its image stays in the engine.
    snapshot: SnapshotMetadata,
}

/// The in-memory tail keeps at most this many bytes of entry payload...
pub const TAIL_MAX_BYTES: usize = 4 << 20;
/// ... and at most this many entries.
pub const TAIL_MAX_ENTRIES: usize = 4_096;

/// The newest entries of the log as they were appended, contiguous and
/// ending at the last index: the same entries raft-engine holds for those
/// indexes (an append that overwrites a suffix overwrites it here too), so
/// reads of them need not go to disk. Entry payloads are reference-counted
/// `Bytes`: keeping and handing out copies copies no data.
#[derive(Default)]
struct Tail {
    entries: VecDeque<Entry>,
    bytes: usize,
    /// Appends staged ([`DiskStorage::stage`]) and not yet written to
    /// raft-engine: while there are any, the tail holds every entry not
    /// yet written (nothing is evicted) and its last index is the log's.
    staged: usize,
}

fn payload(e: &Entry) -> usize {
    e.data.len() + e.context.len() + 32
}

impl Tail {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index)
    }

    fn get(&self, index: u64) -> Option<&Entry> {
        let first = self.first()?;
        let i = usize::try_from(index.checked_sub(first)?).ok()?;
        self.entries.get(i)
    }

    /// `[low, high)` if every one of them is here.
    fn range(&self, low: u64, high: u64) -> Option<Vec<Entry>> {
        let first = self.first()?;
        let last = first + self.entries.len() as u64 - 1;
        if low < first || high <= low || high - 1 > last {
            return None;
        }
        let (a, b) = ((low - first) as usize, (high - first) as usize);
        Some(self.entries.range(a..b).cloned().collect())
    }

    /// Records entries just written: they replace any at the same or
    /// later indexes, as in raft-engine.
    fn append(&mut self, new: &[Entry]) {
        let Some(head) = new.first() else { return };
        match self.first() {
            Some(first) if head.index >= first && head.index <= first + self.entries.len() as u64 => {
                let keep = (head.index - first) as usize;
                for e in self.entries.drain(keep..) {
                    self.bytes -= payload(&e);
                }
            }
            _ => self.clear(),
        }
        for e in new {
            if self.entries.back().is_some_and(|b| b.index + 1 != e.index) {
                // Not contiguous (never expected from raft): keep only
                // what can be vouched for.
                self.clear();
            }
            self.bytes += payload(e);
            self.entries.push_back(e.clone());
        }
        self.trim();
    }

    /// Evicts the oldest entries over the limits, unless writes are staged.
    fn trim(&mut self) {
        if self.staged > 0 {
            return;
        }
        while self.entries.len() > 1 && (self.bytes > TAIL_MAX_BYTES || self.entries.len() > TAIL_MAX_ENTRIES) {
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= payload(&e);
            }
        }
    }

    /// Forgets the entries below `index` (compacted).
    fn compact(&mut self, index: u64) {
        while self.entries.front().is_some_and(|e| e.index < index) {
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= payload(&e);
            }
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn last(&self) -> Option<u64> {
        self.entries.back().map(|e| e.index)
    }
}

/// The directory of a log's snapshot images, without the log: a helper
/// thread writing an image must not keep the engine (and its lock) alive
/// after the manager stopped.
#[derive(Clone, Debug)]
pub struct SnapshotDir(PathBuf, Arc<Cipher>);

/// Writes the image of the snapshot `meta` to its file in `dir` with
/// `write` (buffered), durably: a temporary file, fsynced, renamed, the
/// directory fsynced. The snapshot becomes the latest only with
/// [`DiskStorage::commit_snapshot`]. Any thread may call it.
pub fn write_snapshot_file(
    dir: &SnapshotDir,
    meta: &SnapshotMetadata,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<(), RaftError> {
    let (dir, cipher) = (&dir.0, dir.1.clone());
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let name = snapshot_file_name(meta);
    let (tmp, path) = (dir.join(format!("{name}.tmp")), dir.join(&name));
    let file = std::fs::File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    let mut w = std::io::BufWriter::with_capacity(256 << 10, file);
    {
        // Sealed as it is written (crate::crypt): no plaintext image on disk.
        let mut sealing = SealingWriter::new(&mut w, &cipher, meta.index, meta.term);
        write(&mut sealing)
            .and_then(|()| sealing.finish())
            .and_then(|()| w.flush())
            .map_err(io_err(format!("writing the snapshot image {}", tmp.display())))?;
    }
    let file = w.into_inner().map_err(|e| RaftError::Io {
        what: format!("writing the snapshot image {}", tmp.display()),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io_err(format!("syncing {}", tmp.display())))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(io_err(format!("renaming {} to {name}", tmp.display())))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("syncing the directory {}", dir.display())))?;
    Ok(())
}

/// raft-rs [`Storage`] on raft-engine. Cheap to clone (shared engine).
#[derive(Clone)]
pub struct DiskStorage {
    engine: Arc<Engine>,
    id: u64,
    dir: PathBuf,
    cached: Arc<RwLock<Cached>>,
    /// Held while the latest snapshot changes or is read back: the log
    /// writer thread records snapshots while the driver may read one.
    snapshots: Arc<Mutex<()>>,
    tail: Arc<Mutex<Tail>>,
    /// Seals entry payloads and snapshot images on disk (crate::crypt).
    cipher: Arc<Cipher>,
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
        let snapshot = snapshot.get_metadata().clone();
        let cipher = Arc::new(open_keys(dir, &engine, &hard_state, &snapshot)?);
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
            tail: Arc::default(),
            snapshots: Arc::default(),
            cipher,
        };
        storage.remove_stale_snapshot_files(true);
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
        c.snapshot.get_conf_state() == &ConfState::default()
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

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        // Every change of the tail completes before the lock is released
        // (no call that can panic midway), so poison is safe to clear.
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> HardState {
        self.read().hard_state.clone()
    }

    /// The latest snapshot (metadata and state machine image), read from
    /// the engine: the caller holds the only other copy of the image.
    pub fn latest_snapshot(&self) -> Result<Snapshot, RaftError> {
        let _held = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        let meta = self.snapshot_metadata();
        let mut snap: Snapshot =
            self.engine.get_message(GROUP, KEY_SNAPSHOT).map_err(|e| engine_err(&self.dir, e))?.unwrap_or_default();
        if snap.get_metadata() != &meta {
            // Written under the driver's control only, together with the
            // cache: a mismatch is a bug, not a race.
            return Err(RaftError::Corrupt(format!(
                "the stored snapshot is at index {}, the cached metadata at {}",
                snap.get_metadata().index,
                meta.index
            )));
        }
        if let Some(name) = self.engine.get(GROUP, KEY_SNAPSHOT_FILE) {
            let expected = snapshot_file_name(&meta);
            if name != expected.as_bytes() {
                return Err(RaftError::Corrupt(format!(
                    "the snapshot at index {} names the image file {:?}, expected {expected}",
                    meta.index,
                    String::from_utf8_lossy(&name)
                )));
            }
            let path = self.snap_dir().join(&expected);
            let sealed =
                std::fs::read(&path).map_err(io_err(format!("reading the snapshot image {}", path.display())))?;
            let data = self
                .cipher
                .open_image(meta.index, meta.term, &sealed)
                .map_err(|e| RaftError::Corrupt(e.to_string()))?;
            snap.data = data.into();
        }
        Ok(snap)
    }

    fn snap_dir(&self) -> PathBuf {
        self.dir.join(SNAP_DIR)
    }

    /// Where [`write_snapshot_file`] puts the images of this log.
    pub fn snapshot_dir(&self) -> SnapshotDir {
        SnapshotDir(self.snap_dir(), self.cipher.clone())
    }

    fn write_snapshot_file(
        &self,
        meta: &SnapshotMetadata,
        write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<(), RaftError> {
        write_snapshot_file(&self.snapshot_dir(), meta, write)
    }

    /// Removes image files other than the latest snapshot's: older ones,
    /// and with `temporaries` the partial files of interrupted writes
    /// (only when no snapshot is being written: at open).
    fn remove_stale_snapshot_files(&self, temporaries: bool) {
        let dir = self.snap_dir();
        let current = snapshot_file_name(&self.snapshot_metadata());
        let Ok(list) = std::fs::read_dir(&dir) else { return };
        for f in list.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let stale = name.starts_with(SNAP_PREFIX)
                && name != current
                && (name.ends_with(".json") || temporaries && name.ends_with(".tmp"));
            if stale && let Err(e) = std::fs::remove_file(f.path()) {
                tracing::warn!(file = %f.path().display(), error = %e, "removing an old snapshot image failed");
            }
        }
    }

    /// Removes the image file of a snapshot that was written but will not
    /// become the latest (a newer one was installed meanwhile).
    pub fn discard_snapshot_file(&self, meta: &SnapshotMetadata) {
        if snapshot_file_name(meta) != snapshot_file_name(&self.snapshot_metadata()) {
            let path = self.snap_dir().join(snapshot_file_name(meta));
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "removing an unused snapshot image failed");
            }
        }
    }

    fn snapshot_metadata(&self) -> SnapshotMetadata {
        self.read().snapshot.clone()
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
        {
            let tail = self.tail();
            if tail.staged > 0
                && let Some(last) = tail.last()
            {
                return last.max(snap_index);
            }
        }
        self.engine.last_index(GROUP).unwrap_or(snap_index).max(snap_index)
    }

    /// Makes `entries` readable (raft reads them back to send appends and
    /// answer term queries) before they are written: the driver stages a
    /// Ready's entries, hands them to the log writer thread
    /// ([`crate::node`]), and raft learns they are durable only once that
    /// thread wrote and fsynced them ([`DiskStorage::write_staged`]).
    pub fn stage(&self, entries: &[Entry]) {
        let mut tail = self.tail();
        tail.staged += 1;
        tail.append(entries);
    }

    /// Fsyncs what was written.
    pub fn sync(&self) -> Result<(), RaftError> {
        self.engine.sync().map_err(|e| engine_err(&self.dir, e))
    }

    /// Writes a staged append (entries and/or hard state), fsynced if
    /// `sync`. Called once per [`DiskStorage::stage`], in the same order.
    pub fn write_staged(&self, entries: &[Entry], hs: Option<&HardState>, sync: bool) -> Result<(), RaftError> {
        let mut batch = LogBatch::default();
        if !entries.is_empty() {
            let sealed = self.seal_entries(entries)?;
            batch.add_entries::<EntryExt>(GROUP, &sealed).map_err(|e| engine_err(&self.dir, e))?;
        }
        if let Some(hs) = hs {
            batch.put_message(GROUP, KEY_HARD_STATE.to_vec(), hs).map_err(|e| engine_err(&self.dir, e))?;
        }
        let written = if batch.is_empty() {
            if sync { self.engine.sync() } else { Ok(()) }
        } else {
            self.engine.write(&mut batch, sync).map(|_| ())
        };
        let mut tail = self.tail();
        tail.staged = tail.staged.saturating_sub(1);
        if let Err(e) = written {
            // What is on disk now is not known: read it from there.
            tail.clear();
            return Err(engine_err(&self.dir, e));
        }
        tail.trim();
        drop(tail);
        if let Some(hs) = hs {
            self.write_cache().hard_state = hs.clone();
        }
        Ok(())
    }

    /// Writes the very first snapshot: membership `voters` (and the empty
    /// state) at index 1, term 1, with a hard state that commits it.
    ///
    /// Not at index 0: the log then starts at 2, so a manager that joins
    /// later with an empty log is sent this snapshot (or a newer one)
    /// before any entry, and learns the founders' membership. At index 0
    /// the founders' log would start at 1, a joiner could be sent entries
    /// alone, apply "add me" to an empty membership and believe itself
    /// the only voter (raft-rs's `MemStorage::initialize_with_conf_state`
    /// discusses the same choice).
    pub fn bootstrap(&self, voters: &[u64]) -> Result<(), RaftError> {
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = BOOTSTRAP_INDEX;
        meta.term = BOOTSTRAP_INDEX;
        meta.mut_conf_state().voters = voters.to_vec();
        let mut hs = HardState::default();
        hs.term = BOOTSTRAP_INDEX;
        hs.commit = BOOTSTRAP_INDEX;
        let mut batch = LogBatch::default();
        batch.put_message(GROUP, KEY_SNAPSHOT.to_vec(), &snap).map_err(|e| engine_err(&self.dir, e))?;
        batch.put_message(GROUP, KEY_HARD_STATE.to_vec(), &hs).map_err(|e| engine_err(&self.dir, e))?;
        self.engine.write(&mut batch, true).map_err(|e| engine_err(&self.dir, e))?;
        let mut c = self.write_cache();
        c.snapshot = snap.get_metadata().clone();
        c.hard_state = hs;
        Ok(())
    }

    /// Appends entries and/or a new hard state in one batch, fsynced when
    /// raft needs it durable: new entries, or a new term or vote. A hard
    /// state that only raises the commit index is written without fsync
    /// (as [`DiskStorage::note_commit`], and etcd's `mustSync`): the commit
    /// index can always be learned again from the leader, and `open`
    /// lowers a commit index past the log.
    pub fn append(&self, entries: &[Entry], hs: Option<&HardState>) -> Result<(), RaftError> {
        let sync = !entries.is_empty()
            || hs.is_some_and(|hs| {
                let old = &self.read().hard_state;
                hs.term != old.term || hs.vote != old.vote
            });
        self.write_append(entries, hs, sync)
    }

    /// Persists only a hard state, fsynced.
    pub fn put_hard_state(&self, hs: &HardState) -> Result<(), RaftError> {
        self.write_append(&[], Some(hs), true)
    }

    fn write_append(&self, entries: &[Entry], hs: Option<&HardState>, sync: bool) -> Result<(), RaftError> {
        let mut batch = LogBatch::default();
        if !entries.is_empty() {
            let sealed = self.seal_entries(entries)?;
            batch.add_entries::<EntryExt>(GROUP, &sealed).map_err(|e| engine_err(&self.dir, e))?;
        }
        if let Some(hs) = hs {
            batch.put_message(GROUP, KEY_HARD_STATE.to_vec(), hs).map_err(|e| engine_err(&self.dir, e))?;
        }
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.engine.write(&mut batch, sync) {
            // What is on disk now is not known: read it from there.
            self.tail().clear();
            return Err(engine_err(&self.dir, e));
        }
        self.tail().append(entries);
        if let Some(hs) = hs {
            self.write_cache().hard_state = hs.clone();
        }
        Ok(())
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
        self.read().snapshot.index
    }

    /// Installs a snapshot received from the leader: the whole log is
    /// replaced by it (one fsynced batch: clean, snapshot, hard state).
    pub fn install_snapshot(&self, snap: &Snapshot, hs: &HardState) -> Result<(), RaftError> {
        let meta = snap.get_metadata();
        self.write_snapshot_file(meta, |w| w.write_all(&snap.data))?;
        let _held = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = LogBatch::default();
        batch.add_command(GROUP, raft_engine::Command::Clean);
        batch
            .put(GROUP, KEY_MANAGER_ID.to_vec(), self.id.to_be_bytes().to_vec())
            .map_err(|e| engine_err(&self.dir, e))?;
        self.put_snapshot_meta(&mut batch, meta)?;
        batch.put_message(GROUP, KEY_HARD_STATE.to_vec(), hs).map_err(|e| engine_err(&self.dir, e))?;
        self.tail().clear();
        self.engine.write(&mut batch, true).map_err(|e| engine_err(&self.dir, e))?;
        {
            let mut c = self.write_cache();
            c.snapshot = meta.clone();
            c.hard_state = hs.clone();
        }
        self.remove_stale_snapshot_files(false);
        Ok(())
    }

    /// Adds the snapshot `meta` (image in its file) to `batch`.
    fn put_snapshot_meta(&self, batch: &mut LogBatch, meta: &SnapshotMetadata) -> Result<(), RaftError> {
        let mut head = Snapshot::default();
        head.set_metadata(meta.clone());
        batch.put_message(GROUP, KEY_SNAPSHOT.to_vec(), &head).map_err(|e| engine_err(&self.dir, e))?;
        batch
            .put(GROUP, KEY_SNAPSHOT_FILE.to_vec(), snapshot_file_name(meta).into_bytes())
            .map_err(|e| engine_err(&self.dir, e))?;
        Ok(())
    }

    /// Saves a snapshot taken locally at `meta.index` and compacts the log
    /// below `compact_to` (entries kept for slow followers stay): the image
    /// file, then [`DiskStorage::commit_snapshot`] (tests; the driver writes
    /// the file on a helper thread).
    #[cfg(test)]
    pub fn save_snapshot(&self, snap: &Snapshot, compact_to: u64) -> Result<(), RaftError> {
        self.write_snapshot_file(snap.get_metadata(), |w| w.write_all(&snap.data))?;
        self.commit_snapshot(snap.get_metadata(), compact_to)
    }

    /// Makes the snapshot `meta`, whose image file was written
    /// ([`DiskStorage::write_snapshot_file`]), the latest (fsynced), removes
    /// the older image and compacts the log below `compact_to` (entries
    /// kept for slow followers stay).
    pub fn commit_snapshot(&self, meta: &SnapshotMetadata, compact_to: u64) -> Result<(), RaftError> {
        let held = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = LogBatch::default();
        self.put_snapshot_meta(&mut batch, meta)?;
        self.engine.write(&mut batch, true).map_err(|e| engine_err(&self.dir, e))?;
        self.write_cache().snapshot = meta.clone();
        self.remove_stale_snapshot_files(false);
        drop(held);
        let first = self.engine.first_index(GROUP).unwrap_or(0);
        if compact_to > first {
            self.tail().compact(compact_to);
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
            self.fetch(low, high, None, &mut out).map_err(|e| RaftError::Corrupt(e.to_string()))?;
        }
        Ok(out)
    }

    /// The first and last index of the log.
    pub fn bounds(&self) -> (u64, u64) {
        (self.first(), self.last())
    }
}

impl DiskStorage {
    /// `entries` with their payloads sealed, as they go to disk.
    fn seal_entries(&self, entries: &[Entry]) -> Result<Vec<Entry>, RaftError> {
        entries
            .iter()
            .map(|e| {
                let mut e = e.clone();
                if !e.data.is_empty() {
                    let sealed = self
                        .cipher
                        .seal(&Cipher::entry_aad(e.index, e.term), &e.data)
                        .map_err(|err| RaftError::Corrupt(format!("sealing log entry {}: {err}", e.index)))?;
                    e.data = sealed.into();
                }
                Ok(e)
            })
            .collect()
    }

    /// Reads entries `[low, high)` from the engine into `out`, opened.
    fn fetch(&self, low: u64, high: u64, max: Option<usize>, out: &mut Vec<Entry>) -> raft::Result<()> {
        let from = out.len();
        self.engine.fetch_entries_to::<EntryExt>(GROUP, low, high, max, out).map_err(store_err)?;
        for e in &mut out[from..] {
            if !e.data.is_empty() {
                let index = e.index;
                let plain = self
                    .cipher
                    .open(&|| format!("raft log entry {index}"), &Cipher::entry_aad(e.index, e.term), &e.data)
                    .map_err(|err| raft::Error::Store(StorageError::Other(Box::new(err))))?;
                e.data = plain.into();
            }
        }
        Ok(())
    }
}

/// The manager's data keys: loaded from `<dir>/keys`, or created with a
/// new log. A log written before encryption at rest is refused.
fn open_keys(dir: &Path, engine: &Engine, hs: &HardState, snapshot: &SnapshotMetadata) -> Result<Cipher, RaftError> {
    let files = KeyFiles::new(&dir.join(KEYS_DIR));
    let crypt =
        |e: crate::crypt::CryptError| RaftError::Config(format!("the raft log's keys in {}: {e}", dir.display()));
    if files.exist() {
        return files.load().map_err(crypt);
    }
    let blank = engine.last_index(GROUP).is_none() && *hs == HardState::default() && snapshot.index == 0;
    if !blank {
        return Err(RaftError::Config(format!(
            "{} holds a raft log without data keys (written before encryption at rest, or {KEYS_DIR}/ was lost): it cannot be read",
            dir.display()
        )));
    }
    files.create().map_err(crypt)
}

impl Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let c = self.read();
        Ok(RaftState { hard_state: c.hard_state.clone(), conf_state: c.snapshot.get_conf_state().clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        // The log writer thread compacts after recording a snapshot: a
        // read that lost that race reports the entries compacted.
        self.read_entries(low, high, max_size.into(), context)
            .map_err(|e| if low < self.first() { raft::Error::Store(StorageError::Compacted) } else { e })
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.read_term(idx)
            .map_err(|e| if idx < self.first() { raft::Error::Store(StorageError::Compacted) } else { e })
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot_metadata().index < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        self.latest_snapshot().map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))
    }
}

impl DiskStorage {
    fn read_entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let (first, last) = (self.first(), self.last());
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let tail_first = {
            let tail = self.tail();
            if let Some(mut out) = tail.range(low, high) {
                drop(tail);
                raft::util::limit_size(&mut out, max_size);
                return Ok(out);
            }
            tail.first()
        };
        let mut out = Vec::with_capacity((high - low) as usize);
        // Staged entries are only in the tail: read below it from the
        // engine, the rest from the tail.
        if let Some(tf) = tail_first
            && tf > low
            && high > tf
            && high > low
        {
            let max = max_size.map(|m| m as usize);
            self.fetch(low, tf, max, &mut out)?;
            if out.is_empty() {
                self.fetch(low, low + 1, None, &mut out)?;
            }
            if out.last().is_some_and(|e| e.index + 1 == tf)
                && let Some(rest) = self.tail().range(tf, high)
            {
                out.extend(rest);
            }
            raft::util::limit_size(&mut out, max_size);
            return Ok(out);
        }
        if high > low {
            let max = max_size.map(|m| m as usize);
            self.fetch(low, high, max, &mut out)?;
            // raft-rs expects at least one entry even above the size limit.
            if out.is_empty() {
                self.fetch(low, low + 1, None, &mut out)?;
            }
        }
        Ok(out)
    }

    fn read_term(&self, idx: u64) -> raft::Result<u64> {
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
        if let Some(e) = self.tail().get(idx) {
            return Ok(e.term);
        }
        match self.engine.get_entry::<EntryExt>(GROUP, idx).map_err(store_err)? {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
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
    fn staged_entries_are_readable_before_they_are_written() {
        let tmp = tempfile::tempdir().unwrap();
        let s = DiskStorage::open(tmp.path(), Recovery::Strict, 1).unwrap();
        let ctx = || GetEntriesContext::empty(false);
        s.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>(), None).unwrap();
        // Staged: 6..=8 readable, the last index is 8, nothing on disk yet.
        let staged: Vec<Entry> = (6..=8).map(|i| entry(i, 2)).collect();
        s.stage(&staged);
        assert_eq!(s.last_index().unwrap(), 8);
        assert_eq!(s.term(7).unwrap(), 2);
        let got = s.entries(1, 9, None, ctx()).unwrap();
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>());
        assert_eq!(s.engine.last_index(GROUP), Some(5));
        // A second staged append overwrites a staged suffix (a new leader).
        let over: Vec<Entry> = (7..=7).map(|i| entry(i, 3)).collect();
        s.stage(&over);
        assert_eq!(s.last_index().unwrap(), 7);
        assert_eq!(s.term(7).unwrap(), 3);
        // Written in order: the engine ends where the tail does.
        let mut hs = HardState::default();
        hs.term = 3;
        s.write_staged(&staged, Some(&hs), false).unwrap();
        s.write_staged(&over, None, true).unwrap();
        assert_eq!(s.engine.last_index(GROUP), Some(7));
        assert_eq!(s.last_index().unwrap(), 7);
        assert_eq!(s.term(7).unwrap(), 3);
        assert_eq!(s.hard_state().term, 3);
        drop(s);
        let s = DiskStorage::open(tmp.path(), Recovery::Strict, 1).unwrap();
        assert_eq!(s.last_index().unwrap(), 7);
        assert_eq!(s.term(6).unwrap(), 2);
        assert_eq!(s.term(7).unwrap(), 3);
        assert_eq!(s.hard_state().term, 3);
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

    fn entry_in_term(index: u64, term: u64, data: &[u8]) -> Entry {
        let mut e = entry(index, term);
        e.data = data.to_vec().into();
        e
    }

    /// What the log holds for `[low, high)`, read from the engine itself.
    fn on_disk(s: &DiskStorage, low: u64, high: u64) -> Vec<Entry> {
        s.entries_between(low, high).unwrap()
    }

    #[test]
    fn the_in_memory_tail_answers_as_the_disk_does_through_overwrites_and_compaction() {
        let tmp = tempfile::tempdir().unwrap();
        let s = DiskStorage::open(tmp.path(), Recovery::Strict, 1).unwrap();
        s.bootstrap(&[1]).unwrap();
        s.append(&(1..=10).map(|i| entry_in_term(i, 1, b"a")).collect::<Vec<_>>(), None).unwrap();
        // A new leader overwrites the suffix from 7 on.
        s.append(&(7..=8).map(|i| entry_in_term(i, 2, b"b")).collect::<Vec<_>>(), None).unwrap();
        assert_eq!(s.bounds(), (1, 8));
        let all = s.entries(1, 9, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(all, on_disk(&s, 1, 9));
        assert_eq!(all.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>()[5..], [(6, 1), (7, 2), (8, 2)]);
        for i in 1..=8 {
            assert_eq!(s.term(i).unwrap(), on_disk(&s, i, i + 1)[0].term, "term of {i}");
        }
        // The size limit: at least one entry, then as raft-rs counts.
        let one = s.entries(1, 9, Some(0), GetEntriesContext::empty(false)).unwrap();
        assert_eq!(one.len(), 1);
        // Compaction forgets the head in memory too.
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 6;
        snap.mut_metadata().term = 1;
        snap.mut_metadata().mut_conf_state().voters = vec![1];
        s.save_snapshot(&snap, 5).unwrap();
        assert!(matches!(
            s.entries(4, 6, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(s.entries(5, 9, None, GetEntriesContext::empty(false)).unwrap(), on_disk(&s, 5, 9));
        // After a reopen nothing is in memory: the same answers from disk.
        drop(s);
        let s = DiskStorage::open(tmp.path(), Recovery::Strict, 1).unwrap();
        assert_eq!(s.entries(5, 9, None, GetEntriesContext::empty(false)).unwrap(), all[4..]);
        assert_eq!(s.term(8).unwrap(), 2);
    }

    #[test]
    fn the_tail_keeps_the_newest_entries_within_its_bounds() {
        let mut t = Tail::default();
        t.append(&(1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>());
        assert_eq!(t.range(1, 4).map(|v| v.len()), Some(3));
        assert_eq!(t.range(2, 2), None);
        assert_eq!(t.range(0, 2), None);
        assert_eq!(t.range(3, 5), None);
        // A gap (never expected from raft) keeps only the new entries.
        t.append(&[entry(9, 2)]);
        assert_eq!((t.first(), t.entries.len()), (Some(9), 1));
        // Over the entry bound, the oldest go first.
        let many: Vec<Entry> = (10..10 + TAIL_MAX_ENTRIES as u64).map(|i| entry(i, 2)).collect();
        t.append(&many);
        assert_eq!(t.entries.len(), TAIL_MAX_ENTRIES);
        assert_eq!(t.first(), Some(10));
        assert_eq!(t.bytes, t.entries.iter().map(payload).sum::<usize>());
        t.compact(20);
        assert_eq!(t.first(), Some(20));
        assert_eq!(t.bytes, t.entries.iter().map(payload).sum::<usize>());
    }

    fn images(s: &DiskStorage) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(s.snap_dir())
            .map(|d| d.flatten().map(|f| f.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    fn snap_at(index: u64, data: &[u8]) -> Snapshot {
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = 1;
        snap.mut_metadata().mut_conf_state().voters = vec![1];
        snap.data = data.to_vec().into();
        snap
    }

    #[test]
    fn snapshot_images_live_in_files_one_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let s = DiskStorage::open(tmp.path(), Recovery::Strict, 1).unwrap();
        s.bootstrap(&[1]).unwrap();
        s.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>(), None).unwrap();
        s.save_snapshot(&snap_at(4, b"four"), 3).unwrap();
        s.save_snapshot(&snap_at(8, b"eight"), 6).unwrap();
        // Only the latest image is kept; the engine holds no image.
        assert_eq!(images(&s), vec![snapshot_file_name(snap_at(8, b"").get_metadata())]);
        let head: Snapshot = s.engine.get_message(GROUP, KEY_SNAPSHOT).unwrap().unwrap();
        assert!(head.data.is_empty());
        assert_eq!(s.latest_snapshot().unwrap().data.as_ref(), b"eight");
        assert_eq!(s.snapshot(8, 2).unwrap().data.as_ref(), b"eight");
        // An image written for a snapshot that does not become the latest
        // is discarded; a partial one (crash mid-write) is removed at open.
        let orphan = snap_at(6, b"six");
        s.write_snapshot_file(orphan.get_metadata(), |w| w.write_all(b"six")).unwrap();
        s.discard_snapshot_file(orphan.get_metadata());
        std::fs::write(s.snap_dir().join("snapshot-9.json.tmp"), b"partial").unwrap();
        drop(s);
        let s = DiskStorage::open(tmp.path(), Recovery::Strict, 1).unwrap();
        assert_eq!(images(&s).len(), 1);
        assert_eq!(s.latest_snapshot().unwrap().data.as_ref(), b"eight");
        // A lost image is an error, never an empty state.
        std::fs::remove_file(s.snap_dir().join(&images(&s)[0])).unwrap();
        assert!(s.latest_snapshot().is_err());
    }

    #[test]
    fn an_image_inline_in_the_engine_from_older_logs_is_still_read() {
        let tmp = tempfile::tempdir().unwrap();
        let s = DiskStorage::open(tmp.path(), Recovery::Strict, 1).unwrap();
        s.bootstrap(&[1]).unwrap();
        let mut batch = LogBatch::default();
        batch.put_message(GROUP, KEY_SNAPSHOT.to_vec(), &snap_at(5, b"inline")).unwrap();
        s.engine.write(&mut batch, true).unwrap();
        drop(s);
        let s = DiskStorage::open(tmp.path(), Recovery::Strict, 1).unwrap();
        assert_eq!(s.snapshot_index(), 5);
        assert_eq!(s.latest_snapshot().unwrap().data.as_ref(), b"inline");
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
        assert_eq!(s.latest_snapshot().unwrap().data.as_ref(), b"image");
        assert_eq!(s.hard_state().commit, 20);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 4]);
        drop(s);
        // The directory still says whose log it is.
        let err = DiskStorage::open(tmp.path(), Recovery::Strict, 2).err().unwrap();
        assert!(err.to_string().contains("holds the raft log of manager 1, not of manager 2"), "{err}");
    }
}
