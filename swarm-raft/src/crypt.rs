//! Encryption at rest: every raft log entry's payload and every snapshot
//! image a manager writes is sealed with the manager's data key (issue 19).
//!
//! - AEAD: ChaCha20-Poly1305 (`ring`, already in the tree through rustls),
//!   a random 96-bit nonce per record. A record names its algorithm and
//!   key, so a later cipher or key can be added beside this one:
//!
//!   ```text
//!   "SWE1" | alg: u8 (1 = ChaCha20-Poly1305) | key id: u32 BE | nonce: 12 bytes | ciphertext + 16-byte tag
//!   ```
//!
//!   The associated data binds a record to its place: an entry's index and
//!   term, a snapshot chunk's index, term, number and whether it is the
//!   last. A record moved elsewhere, cut or altered does not open.
//! - Snapshot images are sealed in chunks of [`CHUNK`] bytes (streamed: no
//!   copy of the whole image), each `len: u32 BE | record`, after the
//!   header `"SWS1"`; a missing last chunk is an error, not a short image.
//! - Keys ([`KeyFiles`]): the data keys live in `<dir>/dek`, sealed with the
//!   key-encrypting key in `<dir>/kek` (mode 0600). Random 96-bit nonces
//!   stay safe for 2^32 records per key (NIST SP 800-38D's bound);
//!   rotating the data key starts a new count.
//!
//! An empty payload (raft's own empty entries) is written as it is: there
//! is nothing to hide and nothing to authenticate.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Marks a sealed record.
pub const RECORD_MAGIC: &[u8; 4] = b"SWE1";
/// Marks a sealed snapshot image.
pub const IMAGE_MAGIC: &[u8; 4] = b"SWS1";
/// Algorithm byte of ChaCha20-Poly1305.
pub const ALG_CHACHA20_POLY1305: u8 = 1;
/// Plaintext bytes per sealed snapshot chunk.
pub const CHUNK: usize = 256 << 10;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 4 + 1 + 4 + NONCE_LEN;
const KEY_LEN: usize = 32;
const KEK_FILE: &str = "kek";
const DEK_FILE: &str = "dek";
const DEK_AAD: &[u8] = b"swarm-raft data keys v1";

/// Why sealing or opening failed. Never carries key material or payload.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    /// A record does not open: altered, moved, cut, or sealed with a key
    /// this manager does not have.
    #[error("{what}: the record does not open ({why})")]
    Open {
        /// Which record.
        what: String,
        /// Why, without secrets.
        why: String,
    },
    /// The OS random source failed.
    #[error("the random source failed")]
    Random,
    /// A key file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// Which file and operation.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A key file holds something else than keys.
    #[error("{0}")]
    KeyFile(String),
}

/// A 256-bit key. Its bytes never appear in Debug output.
#[derive(Clone)]
pub struct Key([u8; KEY_LEN]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A new random key.
    pub fn generate() -> Result<Key, CryptError> {
        let mut k = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut k).map_err(|_| CryptError::Random)?;
        Ok(Key(k))
    }

    fn aead(&self) -> LessSafeKey {
        // A 32-byte key is always valid for ChaCha20-Poly1305.
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &self.0).unwrap_or_else(|_| unreachable!()))
    }
}

/// Seals with the current data key, opens with any key it holds.
#[derive(Clone)]
pub struct Cipher {
    current: u32,
    keys: BTreeMap<u32, LessSafeKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cipher").field("current", &self.current).field("keys", &self.keys.len()).finish()
    }
}

impl Cipher {
    /// A cipher with one key, `id`.
    pub fn new(id: u32, key: &Key) -> Cipher {
        Cipher { current: id, keys: BTreeMap::from([(id, key.aead())]), rng: SystemRandom::new() }
    }

    /// The id of the key new records are sealed with.
    pub fn current_key(&self) -> u32 {
        self.current
    }

    /// Seals `plain` bound to `aad`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CryptError::Random)?;
        let key = self.keys.get(&self.current).ok_or(CryptError::Random)?;
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(RECORD_MAGIC);
        out.push(ALG_CHACHA20_POLY1305);
        out.extend_from_slice(&self.current.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut out[HEADER_LEN..])
            .map_err(|_| CryptError::Random)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a record sealed by [`Cipher::seal`] with the same `aad`.
    /// `what` names the record in errors.
    pub fn open(&self, what: &dyn Fn() -> String, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptError> {
        let fail = |why: &str| CryptError::Open { what: what(), why: why.to_string() };
        if sealed.len() < HEADER_LEN + TAG_LEN || &sealed[..4] != RECORD_MAGIC {
            return Err(fail("not a sealed record"));
        }
        if sealed[4] != ALG_CHACHA20_POLY1305 {
            return Err(fail(&format!("unknown algorithm {}", sealed[4])));
        }
        let id = u32::from_be_bytes([sealed[5], sealed[6], sealed[7], sealed[8]]);
        let key = self.keys.get(&id).ok_or_else(|| fail(&format!("key {id} is not known to this manager")))?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[9..HEADER_LEN]);
        let mut buf = sealed[HEADER_LEN..].to_vec();
        let plain = key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
            .map_err(|_| fail("authentication failed"))?;
        let n = plain.len();
        buf.truncate(n);
        Ok(buf)
    }

    /// The associated data of the raft log entry at `index`, `term`.
    pub fn entry_aad(index: u64, term: u64) -> [u8; 17] {
        let mut a = [0u8; 17];
        a[0] = b'E';
        a[1..9].copy_from_slice(&index.to_be_bytes());
        a[9..].copy_from_slice(&term.to_be_bytes());
        a
    }

    fn chunk_aad(index: u64, term: u64, n: u64, last: bool) -> [u8; 26] {
        let mut a = [0u8; 26];
        a[0] = b'S';
        a[1..9].copy_from_slice(&index.to_be_bytes());
        a[9..17].copy_from_slice(&term.to_be_bytes());
        a[17..25].copy_from_slice(&n.to_be_bytes());
        a[25] = u8::from(last);
        a
    }

    /// Opens a whole sealed snapshot image of the snapshot at `index`,
    /// `term` (see [`SealingWriter`]).
    pub fn open_image(&self, index: u64, term: u64, sealed: &[u8]) -> Result<Vec<u8>, CryptError> {
        let what = || format!("snapshot image at index {index}");
        let fail = |why: &str| CryptError::Open { what: what(), why: why.to_string() };
        let rest = sealed.strip_prefix(IMAGE_MAGIC).ok_or_else(|| fail("not a sealed image"))?;
        let mut out = Vec::with_capacity(rest.len());
        let (mut at, mut n, mut ended) = (0usize, 0u64, false);
        while at < rest.len() {
            if ended {
                return Err(fail("bytes after the last chunk"));
            }
            let len_bytes: [u8; 4] = rest.get(at..at + 4).and_then(|b| b.try_into().ok()).ok_or_else(|| fail("cut"))?;
            let len = u32::from_be_bytes(len_bytes) as usize;
            let rec = rest.get(at + 4..at + 4 + len).ok_or_else(|| fail("cut"))?;
            // The writer marks the last chunk; try it as not last first.
            let chunk = match self.open(&what, &Self::chunk_aad(index, term, n, false), rec) {
                Ok(c) => c,
                Err(_) => {
                    ended = true;
                    self.open(&what, &Self::chunk_aad(index, term, n, true), rec)?
                }
            };
            out.extend_from_slice(&chunk);
            at += 4 + len;
            n += 1;
        }
        if !ended {
            return Err(fail("the last chunk is missing"));
        }
        Ok(out)
    }
}

/// Seals a snapshot image as it is written, chunk by chunk; call
/// [`SealingWriter::finish`] to write the last chunk.
pub struct SealingWriter<'a> {
    inner: &'a mut dyn Write,
    cipher: &'a Cipher,
    index: u64,
    term: u64,
    n: u64,
    buf: Vec<u8>,
    started: bool,
}

impl<'a> SealingWriter<'a> {
    /// A writer of the image of the snapshot at `index`, `term` into `inner`.
    pub fn new(inner: &'a mut dyn Write, cipher: &'a Cipher, index: u64, term: u64) -> Self {
        SealingWriter { inner, cipher, index, term, n: 0, buf: Vec::with_capacity(CHUNK), started: false }
    }

    fn emit(&mut self, last: bool) -> std::io::Result<()> {
        if !self.started {
            self.inner.write_all(IMAGE_MAGIC)?;
            self.started = true;
        }
        let aad = Cipher::chunk_aad(self.index, self.term, self.n, last);
        let rec = self.cipher.seal(&aad, &self.buf).map_err(std::io::Error::other)?;
        let len = u32::try_from(rec.len()).map_err(std::io::Error::other)?;
        self.inner.write_all(&len.to_be_bytes())?;
        self.inner.write_all(&rec)?;
        self.buf.clear();
        self.n += 1;
        Ok(())
    }

    /// Seals what is left as the last chunk.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.emit(true)?;
        self.inner.flush()
    }
}

impl Write for SealingWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.emit(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The key files of one manager's raft directory.
pub struct KeyFiles {
    dir: PathBuf,
}

impl KeyFiles {
    /// The key files in `dir`.
    pub fn new(dir: &Path) -> KeyFiles {
        KeyFiles { dir: dir.to_path_buf() }
    }

    /// Whether the data keys exist.
    pub fn exist(&self) -> bool {
        self.dir.join(DEK_FILE).exists()
    }

    /// Creates a key-encrypting key and a first data key (id 1).
    pub fn create(&self) -> Result<Cipher, CryptError> {
        let kek = Key::generate()?;
        let dek = Key::generate()?;
        write_private(&self.dir.join(KEK_FILE), &kek.0)?;
        let mut plain = Vec::with_capacity(8 + KEY_LEN);
        plain.extend_from_slice(&1u32.to_be_bytes());
        plain.extend_from_slice(&dek.0);
        let sealed = Cipher::new(0, &kek).seal(DEK_AAD, &plain)?;
        write_private(&self.dir.join(DEK_FILE), &sealed)?;
        Ok(Cipher::new(1, &dek))
    }

    /// Loads the data keys, unwrapped with the key-encrypting key.
    pub fn load(&self) -> Result<Cipher, CryptError> {
        let kek_path = self.dir.join(KEK_FILE);
        let kek = std::fs::read(&kek_path)
            .map_err(|source| CryptError::Io { what: format!("reading {}", kek_path.display()), source })?;
        let kek: [u8; KEY_LEN] = kek
            .try_into()
            .map_err(|_| CryptError::KeyFile(format!("{} does not hold a 32-byte key", kek_path.display())))?;
        let dek_path = self.dir.join(DEK_FILE);
        let sealed = std::fs::read(&dek_path)
            .map_err(|source| CryptError::Io { what: format!("reading {}", dek_path.display()), source })?;
        let plain = Cipher::new(0, &Key(kek)).open(&|| dek_path.display().to_string(), DEK_AAD, &sealed)?;
        if plain.len() < 4 + KEY_LEN || (plain.len() - 4) % KEY_LEN != 0 {
            return Err(CryptError::KeyFile(format!("{} holds no data key", dek_path.display())));
        }
        let current = u32::from_be_bytes([plain[0], plain[1], plain[2], plain[3]]);
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&plain[4..4 + KEY_LEN]);
        Ok(Cipher::new(current, &Key(key)))
    }
}

/// Writes `data` to `path` readable by the owner only, durably (temporary
/// file, fsync, rename, directory fsync).
fn write_private(path: &Path, data: &[u8]) -> Result<(), CryptError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what: String| move |source| CryptError::Io { what, source };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("creating {}", tmp.display())))?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming {}", tmp.display())))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(format!("syncing {}", dir.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> Cipher {
        Cipher::new(7, &Key::generate().unwrap())
    }

    #[test]
    fn records_open_only_in_their_place_and_untouched() {
        let c = cipher();
        let what = || "entry".to_string();
        let sealed = c.seal(&Cipher::entry_aad(5, 2), b"secret payload").unwrap();
        assert_eq!(&sealed[..4], RECORD_MAGIC);
        assert!(!sealed.windows(6).any(|w| w == b"secret"), "no plaintext in the record");
        assert_eq!(c.open(&what, &Cipher::entry_aad(5, 2), &sealed).unwrap(), b"secret payload");
        // Another place, an altered byte, a cut record, another key: refused.
        assert!(c.open(&what, &Cipher::entry_aad(6, 2), &sealed).is_err());
        assert!(c.open(&what, &Cipher::entry_aad(5, 3), &sealed).is_err());
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(c.open(&what, &Cipher::entry_aad(5, 2), &bad).is_err());
        assert!(c.open(&what, &Cipher::entry_aad(5, 2), &sealed[..sealed.len() - 1]).is_err());
        let err = cipher().open(&what, &Cipher::entry_aad(5, 2), &sealed).unwrap_err().to_string();
        assert!(err.contains("authentication failed"), "{err}");
        // Two seals of one payload differ (fresh nonces).
        assert_ne!(sealed, c.seal(&Cipher::entry_aad(5, 2), b"secret payload").unwrap());
    }

    fn sealed_image(c: &Cipher, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = SealingWriter::new(&mut out, c, 10, 3);
        w.write_all(data).unwrap();
        w.finish().unwrap();
        out
    }

    #[test]
    fn images_are_sealed_in_chunks_and_refused_when_cut() {
        let c = cipher();
        for size in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let sealed = sealed_image(&c, &data);
            assert_eq!(c.open_image(10, 3, &sealed).unwrap(), data, "size {size}");
            assert!(c.open_image(11, 3, &sealed).is_err(), "another snapshot's place");
            if size > CHUNK {
                // Without its last chunk the image is refused, not short.
                let first = 4 + 4 + u32::from_be_bytes(sealed[4..8].try_into().unwrap()) as usize;
                let err = c.open_image(10, 3, &sealed[..first]).unwrap_err().to_string();
                assert!(err.contains("last chunk is missing"), "{err}");
            }
        }
    }

    #[test]
    fn key_files_round_trip_and_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = KeyFiles::new(dir.path());
        assert!(!files.exist());
        let c = files.create().unwrap();
        assert!(files.exist());
        let loaded = files.load().unwrap();
        let sealed = c.seal(b"x", b"payload").unwrap();
        assert_eq!(loaded.open(&|| "x".into(), b"x", &sealed).unwrap(), b"payload");
        for f in [KEK_FILE, DEK_FILE] {
            let mode = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        // A damaged data-key file is refused with the file named.
        std::fs::write(dir.path().join(DEK_FILE), b"garbage").unwrap();
        let err = files.load().unwrap_err().to_string();
        assert!(err.contains("dek"), "{err}");
        assert!(format!("{:?}", Key::generate().unwrap()) == "Key(..)");
    }
}
