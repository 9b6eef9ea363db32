//! Secrets and configs as files, kept in memory only.
//!
//! The Engine offers no way to put a file into a container's tmpfs mount
//! from outside: the archive upload (`PUT /containers/{id}/archive`, `docker
//! cp`) works on the daemon's view of the container's root filesystem, not
//! inside its mount namespace, so a file sent there lands in the writable
//! layer on disk, hidden under the tmpfs (checked on Engine 20.10: the file
//! is not visible in the container, whether created-not-started or running).
//! Env vars and labels show in `docker inspect`; an exec after start races
//! the entrypoint and needs a shell in the image.
//!
//! So this does what Docker Swarm's own executor does: the files live on a
//! tmpfs on the host (memory, never disk), one directory per container, and
//! each file is bind-mounted read-only at its target path. `docker inspect`
//! shows the bind's host path, never the content. The runtime mounts the
//! tmpfs itself when the directory is not one already (needs root, or mount
//! it beforehand), and deletes a container's directory when it removes the
//! container. It requires the agent to run on the Engine's host (same
//! filesystem), which is how a node agent is deployed anyway.

use bollard::models::{Mount as DockerMount, MountType};
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use swarm_core::runtime::{FileMaterial, RuntimeError};
use tracing::{debug, info};

const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Where secret files live on the host: a tmpfs directory.
#[derive(Debug, Clone)]
pub(crate) struct SecretStore {
    root: PathBuf,
    tmpfs_size_bytes: u64,
}

fn err(msg: String) -> RuntimeError {
    RuntimeError::Engine(msg)
}

/// True when `path` is on a tmpfs.
pub(crate) fn is_tmpfs(path: &Path) -> Result<bool, String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between libcs
    Ok(st.f_type as i64 == TMPFS_MAGIC)
}

/// A safe file-name part: letters, digits, `-`, `_`, `.`; others become `_`.
fn sanitize(s: &str) -> String {
    let out: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with('.') { format!("_{out}") } else { out }
}

fn parse_id(v: &str, what: &str, file: &str) -> Result<u32, RuntimeError> {
    if v.is_empty() {
        return Ok(0);
    }
    v.parse().map_err(|_| RuntimeError::InvalidConfig(format!("file {file:?}: {what} {v:?} must be a numeric id")))
}

impl SecretStore {
    pub(crate) fn new(root: PathBuf, tmpfs_size_bytes: u64) -> Self {
        SecretStore { root, tmpfs_size_bytes }
    }

    /// The host directory of a container's files.
    pub(crate) fn dir_of(&self, container_name: &str) -> PathBuf {
        self.root.join(sanitize(container_name.trim_start_matches('/')))
    }

    /// Makes sure the root is a tmpfs, mounting one if needed. Never falls
    /// back to disk.
    fn ensure_tmpfs(&self) -> Result<(), RuntimeError> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| err(format!("create secrets directory {}: {e}", self.root.display())))?;
        let _ = std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700));
        if is_tmpfs(&self.root).map_err(|e| err(format!("statfs {}: {e}", self.root.display())))? {
            return Ok(());
        }
        use std::os::unix::ffi::OsStrExt;
        let target = std::ffi::CString::new(self.root.as_os_str().as_bytes())
            .map_err(|e| err(format!("secrets directory {}: {e}", self.root.display())))?;
        let data = std::ffi::CString::new(format!("mode=0700,size={}", self.tmpfs_size_bytes))
            .map_err(|e| err(e.to_string()))?;
        // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
        let rc = unsafe {
            libc::mount(
                c"swarm-rs-secrets".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOEXEC | libc::MS_NOSUID | libc::MS_NODEV,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(RuntimeError::Unsupported {
                runtime: "docker",
                op: "secrets",
                detail: format!(
                    "secrets are kept on a tmpfs and {} is not one; mounting a tmpfs there failed ({e}): \
                     run the agent as root or mount a tmpfs there first",
                    self.root.display()
                ),
            });
        }
        info!(dir = %self.root.display(), "mounted the secrets tmpfs");
        Ok(())
    }

    /// Writes a container's secrets and configs into its tmpfs directory and
    /// returns the read-only bind mounts that expose them. An empty list
    /// writes nothing and needs no tmpfs.
    pub(crate) fn materialise(
        &self,
        container_name: &str,
        files: &[&FileMaterial],
    ) -> Result<Vec<DockerMount>, RuntimeError> {
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let mut targets = BTreeSet::new();
        for f in files {
            if !f.path.starts_with('/') || f.path.ends_with('/') {
                return Err(RuntimeError::InvalidConfig(format!(
                    "secret/config {:?}: target {:?} must be an absolute file path",
                    f.name, f.path
                )));
            }
            if !targets.insert(f.path.as_str()) {
                return Err(RuntimeError::InvalidConfig(format!(
                    "secret/config {:?}: target {:?} is used twice",
                    f.name, f.path
                )));
            }
            parse_id(&f.uid, "uid", &f.path)?;
            parse_id(&f.gid, "gid", &f.path)?;
        }
        self.ensure_tmpfs()?;
        let dir = self.dir_of(container_name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| err(format!("clear {}: {e}", dir.display())))?;
        }
        std::fs::create_dir(&dir).map_err(|e| err(format!("create {}: {e}", dir.display())))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err(format!("chmod {}: {e}", dir.display())))?;
        let result = self.write_files(&dir, files);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    fn write_files(&self, dir: &Path, files: &[&FileMaterial]) -> Result<Vec<DockerMount>, RuntimeError> {
        let mut mounts = Vec::with_capacity(files.len());
        for (i, f) in files.iter().enumerate() {
            let host = dir.join(format!("{i}-{}", sanitize(&f.name)));
            std::fs::write(&host, &f.data.0).map_err(|e| err(format!("write {}: {e}", host.display())))?;
            let mode = if f.mode == 0 { 0o444 } else { f.mode & 0o7777 };
            std::fs::set_permissions(&host, std::fs::Permissions::from_mode(mode))
                .map_err(|e| err(format!("chmod {}: {e}", host.display())))?;
            let (uid, gid) = (parse_id(&f.uid, "uid", &f.path)?, parse_id(&f.gid, "gid", &f.path)?);
            std::os::unix::fs::chown(&host, Some(uid), Some(gid))
                .map_err(|e| err(format!("chown {}: {e}", host.display())))?;
            debug!(file = %f.path, bytes = f.data.0.len(), "materialised a secret/config file on tmpfs");
            mounts.push(DockerMount {
                target: Some(f.path.clone()),
                source: Some(host.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            });
        }
        Ok(mounts)
    }

    /// The container names that have a directory of files.
    pub(crate) fn container_dirs(&self) -> Result<Vec<String>, RuntimeError> {
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(err(format!("read {}: {e}", self.root.display()))),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| err(format!("read {}: {e}", self.root.display())))?;
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes a container's files (idempotent).
    pub(crate) fn remove(&self, container_name: &str) -> Result<(), RuntimeError> {
        let dir = self.dir_of(container_name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(format!("remove {}: {e}", dir.display()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_core::model::SecretBytes;

    #[test]
    fn sanitize_keeps_names_safe() {
        assert_eq!(sanitize("web.1.abc"), "web.1.abc");
        assert_eq!(sanitize("../x/y"), "_.._x_y");
        assert_eq!(sanitize(""), "_");
    }

    #[test]
    fn bad_targets_are_rejected_before_anything_is_written() {
        let store = SecretStore::new(PathBuf::from("/nonexistent/never-created"), 1 << 20);
        let f = FileMaterial {
            name: "s".into(),
            path: "rel/path".into(),
            data: SecretBytes(b"x".to_vec()),
            ..Default::default()
        };
        let e = store.materialise("c", &[&f]).unwrap_err().to_string();
        assert!(e.contains("absolute file path"), "{e}");
        let f = FileMaterial { name: "s".into(), path: "/a".into(), uid: "bob".into(), ..Default::default() };
        let e = store.materialise("c", &[&f]).unwrap_err().to_string();
        assert!(e.contains("numeric id"), "{e}");
        assert!(!Path::new("/nonexistent/never-created").exists());
    }

    #[test]
    fn statfs_recognises_a_tmpfs() {
        if Path::new("/dev/shm").exists() {
            assert_eq!(is_tmpfs(Path::new("/dev/shm")), Ok(true));
        }
        assert!(is_tmpfs(Path::new("/nonexistent/x")).is_err());
    }
}
