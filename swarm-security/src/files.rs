//! A node's certificate and key on disk, written atomically with owner-only
//! permissions.
//!
//! Each file is written to a temporary name in the same directory
//! (`.node.key.tmp`), flushed to disk (`fsync`), renamed over the real name
//! and the directory is flushed, so a crash leaves either the old or the
//! new file, never half of one. Files are created with mode `0600` and the
//! directory with `0700`. The key is written before the certificate; a
//! crash between the two renames leaves a new key beside the old
//! certificate, which [`NodeFiles::read`] detects
//! ([`FilesError::KeyMismatch`]) so the node asks for a new certificate
//! instead of presenting a pair that does not match.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use swarm_security::ca::{ClusterCa, NodeCsr};
//! use swarm_security::files::NodeFiles;
//! use swarm_security::role::Role;
//!
//! let dir = std::env::temp_dir().join(format!("swarm-security-doc-{}", std::process::id()));
//! let ca = ClusterCa::generate("c1", Duration::from_secs(86_400))?;
//! let csr = NodeCsr::generate("n1")?;
//! let cert = ca.sign_node_csr(csr.csr_pem(), "n1", Role::Worker, None, SystemTime::now())?;
//! let files = NodeFiles::new(&dir);
//! files.write(cert.cert_pem(), &csr.key_pem())?;
//! assert_eq!(files.read()?.cert_pem, cert.cert_pem());
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The certificate's file name.
pub const CERT_FILE: &str = "node.crt";
/// The key's file name.
pub const KEY_FILE: &str = "node.key";
/// The cluster root CA certificate's file name (written beside the node's
/// certificate when it joins; public, but kept 0600 like the rest).
pub const CA_FILE: &str = "ca.crt";

/// Why the files could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// An I/O operation failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key file can be read by others than its owner.
    #[error("{path} has mode {mode:o}; a node key must be 0600 (owner only)")]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// A file does not hold what it should.
    #[error("{path} is not a valid {what}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// The key does not belong to the certificate.
    #[error("the key in {key} does not match the certificate in {cert}")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
}

/// A certificate and its key as read from disk. `Debug` hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeCredentials {
    /// The node certificate, PEM.
    pub cert_pem: String,
    /// The node key, PKCS#8 PEM.
    pub key_pem: String,
}

impl fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCredentials").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

/// The directory holding a node's `node.crt` and `node.key`.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    dir: PathBuf,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FilesError {
    let path = path.to_owned();
    move |source| FilesError::Io { what, path, source }
}

fn tmp_name(name: &str) -> String {
    format!(".{name}.tmp")
}

impl NodeFiles {
    /// Files under `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        NodeFiles { dir: dir.into() }
    }

    /// The certificate's path.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }

    /// The key's path.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    /// The CA certificate's path.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join(CA_FILE)
    }

    fn create_dir(&self) -> Result<(), FilesError> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir).map_err(io("create directory", &self.dir))
    }

    /// Writes the key, then the certificate, each atomically with mode 0600.
    pub fn write(&self, cert_pem: &str, key_pem: &str) -> Result<(), FilesError> {
        self.create_dir()?;
        self.write_atomic(KEY_FILE, key_pem.as_bytes())?;
        self.write_atomic(CERT_FILE, cert_pem.as_bytes())?;
        tracing::debug!(dir = %self.dir.display(), "wrote node certificate and key");
        Ok(())
    }

    /// Writes the cluster's root CA certificate (`ca.crt`) atomically with
    /// mode 0600, checking first that it is a PEM X.509 certificate.
    pub fn write_ca_cert(&self, ca_cert_pem: &str) -> Result<(), FilesError> {
        let path = self.ca_cert_path();
        parse_cert(&path, ca_cert_pem)?;
        self.create_dir()?;
        self.write_atomic(CA_FILE, ca_cert_pem.as_bytes())
    }

    /// Reads the root CA certificate back (PEM), checking that it parses.
    pub fn read_ca_cert(&self) -> Result<String, FilesError> {
        let path = self.ca_cert_path();
        let pem = fs::read_to_string(&path).map_err(io("read", &path))?;
        parse_cert(&path, &pem)?;
        Ok(pem)
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), FilesError> {
        let tmp = self.dir.join(tmp_name(name));
        let target = self.dir.join(name);
        // A leftover from a crash may exist with any content or mode:
        // truncate it and force the mode before writing.
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        file.set_permissions(fs::Permissions::from_mode(0o600)).map_err(io("set permissions of", &tmp))?;
        file.write_all(bytes).map_err(io("write", &tmp))?;
        file.sync_all().map_err(io("sync", &tmp))?;
        drop(file);
        fs::rename(&tmp, &target).map_err(io("rename into place", &target))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io("sync directory", &self.dir))?;
        Ok(())
    }

    /// Reads both files back, checking the key's permissions, that both
    /// parse and that the key belongs to the certificate. Temporary files
    /// left by an interrupted write are ignored.
    pub fn read(&self) -> Result<NodeCredentials, FilesError> {
        let key_path = self.key_path();
        let cert_path = self.cert_path();
        let mode = fs::metadata(&key_path).map_err(io("stat", &key_path))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(FilesError::InsecurePermissions { path: key_path, mode });
        }
        let key_pem = fs::read_to_string(&key_path).map_err(io("read", &key_path))?;
        let cert_pem = fs::read_to_string(&cert_path).map_err(io("read", &cert_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| FilesError::Invalid {
            path: key_path.clone(),
            what: "private key",
            reason: e.to_string(),
        })?;
        let invalid_cert =
            |reason: String| FilesError::Invalid { path: cert_path.clone(), what: "certificate", reason };
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| invalid_cert(e.to_string()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| invalid_cert(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(FilesError::KeyMismatch { key: key_path, cert: cert_path });
        }
        Ok(NodeCredentials { cert_pem, key_pem })
    }
}

fn parse_cert(path: &Path, pem: &str) -> Result<(), FilesError> {
    let invalid = |reason: String| FilesError::Invalid { path: path.to_owned(), what: "certificate", reason };
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| invalid(e.to_string()))?;
    x509_parser::parse_x509_certificate(&der).map_err(|e| invalid(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{ClusterCa, NodeCsr};
    use crate::role::Role;
    use std::time::{Duration, SystemTime};

    fn issue(ca: &ClusterCa, node: &str) -> (String, String) {
        let csr = NodeCsr::generate(node).unwrap();
        let cert = ca.sign_node_csr(csr.csr_pem(), node, Role::Worker, None, SystemTime::now()).unwrap();
        (cert.cert_pem().to_owned(), csr.key_pem())
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_owner_only_files_and_reads_them_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let ca = ClusterCa::generate("c", Duration::from_secs(86_400)).unwrap();
        let (cert, key) = issue(&ca, "n");
        let files = NodeFiles::new(&dir);
        files.write(&cert, &key).unwrap();
        assert_eq!(mode(&files.key_path()), 0o600);
        assert_eq!(mode(&files.cert_path()), 0o600);
        assert_eq!(mode(&dir), 0o700);
        let back = files.read().unwrap();
        assert_eq!(back.cert_pem, cert);
        assert_eq!(back.key_pem, key);
        assert!(!format!("{back:?}").contains("PRIVATE KEY"));

        // A renewal replaces both.
        let (cert2, key2) = issue(&ca, "n");
        files.write(&cert2, &key2).unwrap();
        assert_eq!(files.read().unwrap().key_pem, key2);
        let names: Vec<_> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
    }

    #[test]
    fn a_crash_mid_write_leaves_the_old_key_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("c", Duration::from_secs(86_400)).unwrap();
        let (cert, key) = issue(&ca, "n");
        let files = NodeFiles::new(tmp.path());
        files.write(&cert, &key).unwrap();

        // What a crash during the next write leaves: half a key in the
        // temporary file, world-readable.
        let leftover = tmp.path().join(tmp_name(KEY_FILE));
        fs::write(&leftover, &key[..key.len() / 2]).unwrap();
        fs::set_permissions(&leftover, fs::Permissions::from_mode(0o644)).unwrap();

        let back = files.read().unwrap();
        assert_eq!(back.key_pem, key, "the real key is untouched");

        // The next write reuses the temporary name and ends clean.
        let (cert2, key2) = issue(&ca, "n");
        files.write(&cert2, &key2).unwrap();
        assert!(!leftover.exists());
        assert_eq!(files.read().unwrap().key_pem, key2);
        assert_eq!(mode(&files.key_path()), 0o600);
    }

    #[test]
    fn a_crash_between_the_renames_is_detected_as_a_mismatch() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("c", Duration::from_secs(86_400)).unwrap();
        let (cert, key) = issue(&ca, "n");
        let files = NodeFiles::new(tmp.path());
        files.write(&cert, &key).unwrap();
        let (_, key2) = issue(&ca, "n");
        files.write_atomic(KEY_FILE, key2.as_bytes()).unwrap();
        assert!(matches!(files.read(), Err(FilesError::KeyMismatch { .. })));
    }

    #[test]
    fn a_readable_key_and_missing_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let files = NodeFiles::new(tmp.path());
        let err = files.read().unwrap_err();
        assert!(err.to_string().starts_with("cannot stat "), "{err}");

        let ca = ClusterCa::generate("c", Duration::from_secs(86_400)).unwrap();
        let (cert, key) = issue(&ca, "n");
        files.write(&cert, &key).unwrap();
        fs::set_permissions(files.key_path(), fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(files.read(), Err(FilesError::InsecurePermissions { mode: 0o640, .. })));
    }

    #[test]
    fn the_ca_certificate_is_written_beside_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let files = NodeFiles::new(&dir);
        let ca = ClusterCa::generate("c", Duration::from_secs(86_400)).unwrap();
        files.write_ca_cert(ca.cert_pem()).unwrap();
        assert_eq!(mode(&files.ca_cert_path()), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(files.read_ca_cert().unwrap(), ca.cert_pem());
        let err = files.write_ca_cert("not a certificate").unwrap_err();
        assert!(matches!(err, FilesError::Invalid { what: "certificate", .. }), "{err}");
        assert_eq!(files.read_ca_cert().unwrap(), ca.cert_pem(), "a bad write changes nothing");
    }
}
