//! Secrets and configs as files on a tmpfs: each task gets a small tmpfs
//! of its own on the host (mode 0700, sized to its files), the files are
//! written there with their owner and mode, and each is bind-mounted
//! read-only at its path in the container. The bytes never touch a disk;
//! removing the task unmounts the tmpfs.

use crate::spec::FileMount;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use swarm_core::runtime::{FileMaterial, RuntimeError};
use tokio::process::Command;
use tracing::debug;

/// Writes `files` into a fresh tmpfs mounted at `dir`; returns their mounts.
/// Nothing is mounted when `files` is empty. On failure, unmounts.
pub async fn materialize(dir: &Path, files: &[&FileMaterial]) -> Result<Vec<FileMount>, RuntimeError> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    for (i, f) in files.iter().enumerate() {
        if !f.path.starts_with('/') || f.path.split('/').any(|c| c == "..") {
            return Err(RuntimeError::InvalidConfig(format!(
                "secret/config {:?} (#{i}): path {:?} must be absolute without '..'",
                f.name, f.path
            )));
        }
    }
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| RuntimeError::Engine(format!("cannot create {}: {e}", dir.display())))?;
    let total: usize = files.iter().map(|f| f.data.0.len() + 4096).sum();
    let size = total + 64 * 1024;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700,nosuid,nodev,noexec"), "swarm-rs-files"])
        .arg(dir)
        .output()
        .await
        .map_err(|e| RuntimeError::Engine(format!("running mount for {}: {e}", dir.display())))?;
    if !out.status.success() {
        return Err(RuntimeError::Engine(format!(
            "cannot mount a tmpfs at {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    match write_all(dir, files).await {
        Ok(m) => Ok(m),
        Err(e) => {
            unmount(dir).await;
            Err(e)
        }
    }
}

async fn write_all(dir: &Path, files: &[&FileMaterial]) -> Result<Vec<FileMount>, RuntimeError> {
    let mut mounts = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let host: PathBuf = dir.join(format!("f{i}"));
        let what = |e: std::io::Error| RuntimeError::Engine(format!("writing {:?} to {}: {e}", f.name, host.display()));
        tokio::fs::write(&host, &f.data.0).await.map_err(what)?;
        let mode = if f.mode == 0 { 0o444 } else { f.mode & 0o7777 };
        tokio::fs::set_permissions(&host, std::fs::Permissions::from_mode(mode)).await.map_err(what)?;
        let id = |s: &str, which: &str| -> Result<u32, RuntimeError> {
            if s.is_empty() {
                return Ok(0);
            }
            s.parse::<u32>().map_err(|_| {
                RuntimeError::InvalidConfig(format!("secret/config {:?}: {which} {s:?} is not numeric", f.name))
            })
        };
        let (uid, gid) = (id(&f.uid, "uid")?, id(&f.gid, "gid")?);
        std::os::unix::fs::chown(&host, Some(uid), Some(gid)).map_err(what)?;
        mounts.push(FileMount { source: host.display().to_string(), target: f.path.clone() });
    }
    Ok(mounts)
}

/// Unmounts the tmpfs at `dir` if one is there (idempotent).
pub async fn unmount(dir: &Path) {
    if !is_mountpoint(dir) {
        return;
    }
    match Command::new("umount").arg(dir).output().await {
        Ok(o) if o.status.success() => {}
        Ok(o) => debug!(dir = %dir.display(), stderr = %String::from_utf8_lossy(&o.stderr).trim(), "umount failed"),
        Err(e) => debug!(dir = %dir.display(), error = %e, "cannot run umount"),
    }
}

/// True when `dir` is a mount point (per `/proc/self/mountinfo`).
pub fn is_mountpoint(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = dir.display().to_string();
    info.lines().any(|l| l.split_whitespace().nth(4) == Some(want.as_str()))
}
