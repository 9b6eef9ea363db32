//! A test image built on this machine, for engines that cannot pull.
//!
//! The workload (`fixture/workload.rs`, also the crate's
//! `swarm-test-workload` binary) is a std-only HTTP server: `/health`,
//! `/id` (its `$TASK_ID`), `/unhealthy`, `/crash?code=N`, `/file?path=P`,
//! `/fetch?host=H&port=N&path=P`, `$DRAIN_MS` (serve on after SIGTERM),
//! and `workload probe PORT PATH` as a
//! health command. [`ensure_test_image`] compiles it with the local
//! `rustc` as one static binary (`-C target-feature=+crt-static`, glibc's
//! static libc; checked to have no ELF interpreter), packs it as the only
//! file of a rootfs tarball and imports that through the Engine
//! (`POST /images/create?fromSrc=-`, i.e. `docker import`). No registry, no
//! base image, no apt. The tag is a hash of the source, so an unchanged
//! workload is built and imported once per engine.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use swarm_runtime_docker::{DockerRuntime, DockerRuntimeOptions, fixture};
//! let rt = DockerRuntime::connect(DockerRuntimeOptions::default())?;
//! let image = fixture::ensure_test_image(rt.client()).await?;
//! let cfg = fixture::workload_config(&image, "demo-web.1", "task-1");
//! # let _ = cfg; Ok(()) }
//! ```

use crate::tarball::TarBuilder;
use bollard::Docker;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::TryStreamExt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use swarm_core::runtime::ContainerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

/// The workload's source, compiled into the image.
pub const WORKLOAD_SOURCE: &str = include_str!("../fixture/workload.rs");
/// Repository name of the test image.
pub const IMAGE_REPO: &str = "swarm-test-workload";
/// Port the workload listens on.
pub const PORT: u16 = 8080;

/// Why the test image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// rustc failed or is missing.
    #[error("compiling the test workload failed: {0}")]
    Compile(String),
    /// The binary is not static, so it would not run in an empty rootfs.
    #[error("the test workload binary is dynamically linked (it has an ELF interpreter); static glibc is needed")]
    NotStatic,
    /// The Engine refused the import.
    #[error("importing the test image {image:?} failed: {reason}")]
    Import {
        /// The image name.
        image: String,
        /// Detail.
        reason: String,
    },
}

/// FNV-1a, 64 bits: a stable hash (unlike std's) for the image tag.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The test image's name: `swarm-test-workload:<hash of the source>`.
pub fn image_name() -> String {
    format!("{IMAGE_REPO}:{:016x}", fnv1a(WORKLOAD_SOURCE.as_bytes()))
}

/// True when the ELF64 file has a `PT_INTERP` program header (dynamic).
fn has_interpreter(elf: &[u8]) -> Option<bool> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return None;
    }
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let phoff = usize::try_from(u64::from_le_bytes(elf.get(0x20..0x28)?.try_into().ok()?)).ok()?;
    let (entsize, num) = (u16_at(0x36)?, u16_at(0x38)?);
    for i in 0..num {
        let o = phoff + i * entsize;
        let ty = u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?);
        if ty == 3 {
            return Some(true);
        }
    }
    Some(false)
}

/// Compiles the workload into a static binary and returns its bytes.
pub fn build_workload() -> Result<Vec<u8>, FixtureError> {
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "swarm-test-workload-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| FixtureError::Compile(format!("create {}: {e}", dir.display())))?;
    let result = (|| {
        let src = dir.join("workload.rs");
        let out = dir.join("workload");
        std::fs::write(&src, WORKLOAD_SOURCE).map_err(|e| FixtureError::Compile(format!("write source: {e}")))?;
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let o = std::process::Command::new(&rustc)
            .args(["--edition", "2024", "-O", "-C", "target-feature=+crt-static", "-C", "strip=symbols", "-o"])
            .arg(&out)
            .arg(&src)
            .output()
            .map_err(|e| FixtureError::Compile(format!("run {rustc}: {e}")))?;
        if !o.status.success() {
            return Err(FixtureError::Compile(String::from_utf8_lossy(&o.stderr).into_owned()));
        }
        let bin = std::fs::read(&out).map_err(|e| FixtureError::Compile(format!("read binary: {e}")))?;
        match has_interpreter(&bin) {
            Some(false) => Ok(bin),
            Some(true) => Err(FixtureError::NotStatic),
            None => Err(FixtureError::Compile("the output is not an ELF64 binary".into())),
        }
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The rootfs tarball: `/workload`, `/bin/cat` (the same binary, which
/// prints files when called as `cat`), and empty `/etc`, `/tmp`, `/run`.
pub fn rootfs_tarball(binary: &[u8]) -> Vec<u8> {
    let mut t = TarBuilder::new();
    // Fixed, short, relative paths: these cannot fail.
    for (d, mode) in [("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("run", 0o755)] {
        let _ = t.dir(d, mode);
    }
    let _ = t.file("workload", 0o755, binary);
    let _ = t.file("bin/cat", 0o755, binary);
    t.finish()
}

static BUILD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Makes sure the test image is on the Engine (building and importing it
/// when missing) and returns its name.
pub async fn ensure_test_image(docker: &Docker) -> Result<String, FixtureError> {
    let image = image_name();
    let _guard = BUILD_LOCK.lock().await;
    if docker.inspect_image(&image).await.is_ok() {
        return Ok(image);
    }
    info!(%image, "building the test workload image");
    let bin = tokio::task::spawn_blocking(build_workload)
        .await
        .map_err(|e| FixtureError::Compile(format!("build task: {e}")))??;
    let tar = rootfs_tarball(&bin);
    let (repo, tag) = image.split_once(':').unwrap_or((&image, "latest"));
    let opts = CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo(repo)
        .tag(tag)
        .changes(vec![
            r#"ENTRYPOINT ["/workload"]"#.to_string(),
            format!("EXPOSE {PORT}/tcp"),
            format!("ENV PORT={PORT}"),
        ])
        .build();
    docker
        .create_image(Some(opts), Some(bollard::body_full(bytes::Bytes::from(tar))), None)
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| FixtureError::Import { image: image.clone(), reason: e.to_string() })?;
    docker
        .inspect_image(&image)
        .await
        .map_err(|e| FixtureError::Import { image: image.clone(), reason: format!("not present after import: {e}") })?;
    Ok(image)
}

/// A container config running the workload as task `task_id`, named
/// `name` (the service name is the part before the first '.').
pub fn workload_config(image: &str, name: &str, task_id: &str) -> ContainerConfig {
    let service = name.split('.').next().unwrap_or(name).to_string();
    let mut cfg = ContainerConfig {
        name: name.to_string(),
        task_id: task_id.into(),
        service_id: format!("svc-{service}").into(),
        service_name: service,
        node_id: "local".into(),
        ..Default::default()
    };
    cfg.spec.image = image.to_string();
    cfg.spec.env = vec![format!("TASK_ID={task_id}")];
    cfg
}

/// A small HTTP/1.0 GET (for tests): status and body.
pub async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let run = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| format!("write to {addr}: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| format!("read from {addr}: {e}"))?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("not an HTTP answer")?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((code, body))
    };
    tokio::time::timeout(timeout, run).await.map_err(|_| format!("GET {path} on {addr} timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_name_is_stable_and_content_addressed() {
        assert_eq!(image_name(), image_name());
        assert!(image_name().starts_with("swarm-test-workload:"));
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }

    #[test]
    fn elf_interpreter_detection() {
        assert_eq!(has_interpreter(b"not an elf"), None);
        // This test binary: built without crt-static, so dynamically linked.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(has_interpreter(&me), Some(true));
    }
}
