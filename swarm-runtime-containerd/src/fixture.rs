//! A test and benchmark fixture: a tiny image built here, imported into
//! containerd's store without a registry.
//!
//! The image has one layer holding Debian's static busybox
//! (`busybox-static`, `scripts/setup-deps.sh` installs it) with links for
//! the applets the tests use (`sh`, `sleep`, `httpd`, `nc`, `cat`, ...), a
//! `/www/index.html` for `httpd`, and `/etc/passwd`. It is written in the
//! `docker save` format (manifest.json, config, layer tar) and imported with
//! `ctr images import` into the runtime's namespace; with `unpack = false`
//! the layers stay blobs and the runtime unpacks them itself.

use crate::image::{hex, normalize, oci_arch};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// Where busybox comes from.
pub const BUSYBOX: &str = "/bin/busybox";

/// The applets linked into `/bin`.
pub const APPLETS: &[&str] = &[
    "sh", "sleep", "httpd", "nc", "cat", "echo", "true", "false", "ls", "mkdir", "grep", "ps", "kill", "env", "id",
    "wc", "head", "yes", "dd", "hostname", "ip", "wget", "mount", "stat",
];

/// The page `httpd -h /www` serves at `/`.
pub const INDEX_HTML: &str = "hello from swarm-runtime-containerd\n";

/// Why the fixture could not be built or imported.
#[derive(Debug, thiserror::Error)]
#[error("image fixture: {step}: {detail}")]
pub struct FixtureError {
    /// What was being done.
    pub step: String,
    /// What went wrong.
    pub detail: String,
}

fn ferr(step: &str, detail: impl std::fmt::Display) -> FixtureError {
    FixtureError { step: step.to_string(), detail: detail.to_string() }
}

async fn run(step: &str, cmd: &mut Command) -> Result<String, FixtureError> {
    let out = cmd.output().await.map_err(|e| ferr(step, e))?;
    if !out.status.success() {
        return Err(ferr(step, format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The busybox image's two blobs: an uncompressed layer tar and the
/// image config (for a registry of the tests' own, or an image tar).
#[derive(Clone, Debug)]
pub struct ImageParts {
    /// The layer (an uncompressed tar).
    pub layer: Vec<u8>,
    /// The image config JSON.
    pub config: Vec<u8>,
}

/// Builds the busybox image's layer and config.
pub async fn busybox_image() -> Result<ImageParts, FixtureError> {
    if !Path::new(BUSYBOX).exists() {
        return Err(ferr("finding busybox", format!("{BUSYBOX} is missing: run scripts/setup-deps.sh")));
    }
    let work: PathBuf = std::env::temp_dir().join(format!("swarm-ctd-fixture-{}", crate::token()));
    let r = parts_in(&work).await;
    let _ = tokio::fs::remove_dir_all(&work).await;
    r
}

/// Writes the image tar (docker save format) for `image` to `out`.
pub async fn build_busybox_tar(image: &str, out: &Path) -> Result<(), FixtureError> {
    let name = normalize(image).map_err(|e| ferr("naming the image", e))?;
    let parts = busybox_image().await?;
    let work: PathBuf = std::env::temp_dir().join(format!("swarm-ctd-fixture-{}", crate::token()));
    let r = pack_in(&work, &name, &parts, out).await;
    let _ = tokio::fs::remove_dir_all(&work).await;
    r
}

async fn parts_in(work: &Path) -> Result<ImageParts, FixtureError> {
    let io = |step: &'static str| move |e: std::io::Error| ferr(step, e);
    let root = work.join("rootfs");
    for d in ["bin", "etc", "www", "tmp", "proc", "sys", "dev", "run", "root"] {
        tokio::fs::create_dir_all(root.join(d)).await.map_err(io("creating the rootfs"))?;
    }
    tokio::fs::copy(BUSYBOX, root.join("bin/busybox")).await.map_err(io("copying busybox"))?;
    for a in APPLETS {
        tokio::fs::symlink("busybox", root.join("bin").join(a)).await.map_err(io("linking applets"))?;
    }
    tokio::fs::write(root.join("www/index.html"), INDEX_HTML).await.map_err(io("writing index.html"))?;
    tokio::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .await
    .map_err(io("writing /etc/passwd"))?;
    tokio::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")
        .await
        .map_err(io("writing /etc/group"))?;
    let layer = work.join("layer.tar");
    run(
        "packing the layer",
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "--mtime=@0", "--sort=name", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&layer)
            .arg("."),
    )
    .await?;
    let layer_bytes = tokio::fs::read(&layer).await.map_err(io("reading the layer"))?;
    let diff_id = format!("sha256:{}", hex(&Sha256::digest(&layer_bytes)));
    let config = serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let config_bytes = serde_json::to_vec(&config).map_err(|e| ferr("encoding the config", e))?;
    Ok(ImageParts { layer: layer_bytes, config: config_bytes })
}

async fn pack_in(work: &Path, name: &str, parts: &ImageParts, out: &Path) -> Result<(), FixtureError> {
    let io = |step: &'static str| move |e: std::io::Error| ferr(step, e);
    let config_name = format!("{}.json", hex(&Sha256::digest(&parts.config)));
    let layer_dir = hex(&Sha256::digest(&parts.layer));
    let pack = work.join("image");
    tokio::fs::create_dir_all(pack.join(&layer_dir)).await.map_err(io("creating the image dir"))?;
    tokio::fs::write(pack.join(&layer_dir).join("layer.tar"), &parts.layer).await.map_err(io("writing the layer"))?;
    tokio::fs::write(pack.join(&config_name), &parts.config).await.map_err(io("writing the config"))?;
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [name],
        "Layers": [format!("{layer_dir}/layer.tar")],
    }]);
    tokio::fs::write(pack.join("manifest.json"), manifest.to_string()).await.map_err(io("writing manifest.json"))?;
    run(
        "packing the image",
        Command::new("tar").arg("-C").arg(&pack).arg("-cf").arg(out).args([
            "manifest.json",
            &config_name,
            &format!("{layer_dir}/layer.tar"),
        ]),
    )
    .await?;
    Ok(())
}

/// Builds the busybox image and imports it as `image` into `namespace` of
/// the containerd at `address` (`unpack`: let `ctr` unpack it into
/// overlayfs snapshots, else leave that to the runtime).
pub async fn import_busybox(address: &Path, namespace: &str, image: &str, unpack: bool) -> Result<(), FixtureError> {
    let tar = std::env::temp_dir().join(format!("swarm-ctd-image-{}.tar", crate::token()));
    build_busybox_tar(image, &tar).await?;
    let mut cmd = Command::new("ctr");
    cmd.arg("--address").arg(address).args(["-n", namespace, "images", "import"]);
    if !unpack {
        cmd.arg("--no-unpack");
    }
    cmd.arg(&tar);
    let r = run("ctr images import", &mut cmd).await;
    let _ = tokio::fs::remove_file(&tar).await;
    r.map(|_| ())
}

/// Removes `image` from `namespace` (ignores an absent image).
pub async fn remove_image(address: &Path, namespace: &str, image: &str) -> Result<(), FixtureError> {
    let name = normalize(image).map_err(|e| ferr("naming the image", e))?;
    let mut cmd = Command::new("ctr");
    cmd.arg("--address").arg(address).args(["-n", namespace, "images", "rm", "--sync", &name]);
    match run("ctr images rm", &mut cmd).await {
        Ok(_) => Ok(()),
        Err(e) if e.detail.contains("not found") => Ok(()),
        Err(e) => Err(e),
    }
}
