//! Images already in containerd's store: resolving a reference to its
//! manifest, config and layer chain, and unpacking the layers into
//! snapshots when the image was imported without unpacking.
//!
//! The unpack is containerd's own recipe done through its services, under
//! a lease: for each layer whose chain id has no committed snapshot yet,
//! `snapshots.Prepare` on the parent chain, `diff.Apply` of the layer blob
//! onto the mounts, `snapshots.Commit` under the chain id. The image's
//! config blob then gets the `containerd.io/gc.ref.snapshot.<snapshotter>`
//! label so the garbage collector keeps the snapshots as long as the image.

use crate::engine::{Engine, is_not_found, status_err};
use crate::spec::ImageDefaults;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateRequest as LeaseCreateRequest, DeleteRequest as LeaseDeleteRequest, GetImageRequest,
    Info as ContentInfo, ReadContentRequest, UpdateRequest as ContentUpdateRequest,
};
use containerd_client::types::Descriptor;
use futures_util::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use swarm_core::image::ImageRef;
use swarm_core::runtime::RuntimeError;
use tracing::{debug, info};

/// An image resolved in the store.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedImage {
    /// The fully qualified name the store knows it by.
    pub name: String,
    /// How to run it.
    pub defaults: ImageDefaults,
    /// The chain id of each layer (the last one is the rootfs's parent).
    pub chain_ids: Vec<String>,
    /// The layer blobs.
    pub layers: Vec<Descriptor>,
    /// The config blob's digest.
    pub config_digest: String,
}

impl ResolvedImage {
    /// The snapshot a container's rootfs is prepared on.
    pub fn top_chain_id(&self) -> &str {
        self.chain_ids.last().map(String::as_str).unwrap_or("")
    }
}

/// The name containerd stores `image` under: `docker.io/library/` added to
/// short names and `:latest` when there is neither tag nor digest.
pub fn normalize(image: &str) -> Result<String, RuntimeError> {
    let r = ImageRef::parse(image).map_err(|e| RuntimeError::InvalidConfig(e.to_string()))?;
    let registry = r.registry.clone().unwrap_or_else(|| "docker.io".into());
    let repo = if registry == "docker.io" && !r.repository.contains('/') {
        format!("library/{}", r.repository)
    } else {
        r.repository.clone()
    };
    let mut out = format!("{registry}/{repo}");
    match (&r.tag, &r.digest) {
        (None, None) => out.push_str(":latest"),
        (t, d) => {
            if let Some(t) = t {
                out.push(':');
                out.push_str(t);
            }
            if let Some(d) = d {
                out.push('@');
                out.push_str(d);
            }
        }
    }
    Ok(out)
}

/// The chain ids of a list of layer diff ids (OCI image spec: chain(0) =
/// diff(0), chain(n) = sha256(chain(n-1) + " " + diff(n))).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => {
                let h = Sha256::digest(format!("{prev} {d}").as_bytes());
                format!("sha256:{}", hex(&h))
            }
        };
        out.push(next);
    }
    out
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// The OCI / Docker image JSON documents, shared with the registry pull.

/// An image index (OCI) or manifest list (Docker).
#[derive(Deserialize)]
pub(crate) struct Index {
    #[serde(default)]
    pub(crate) manifests: Vec<IndexEntry>,
}

/// One manifest of an index.
#[derive(Deserialize)]
pub(crate) struct IndexEntry {
    #[serde(rename = "mediaType", default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    #[serde(default)]
    pub(crate) size: i64,
    #[serde(default)]
    pub(crate) platform: Option<PlatformJson>,
}

/// The platform of an index entry.
#[derive(Deserialize)]
pub(crate) struct PlatformJson {
    #[serde(default)]
    pub(crate) os: String,
    #[serde(default)]
    pub(crate) architecture: String,
}

/// An image manifest: its config and layers.
#[derive(Deserialize)]
pub(crate) struct Manifest {
    #[serde(rename = "schemaVersion", default)]
    pub(crate) schema_version: u32,
    pub(crate) config: DescJson,
    #[serde(default)]
    pub(crate) layers: Vec<DescJson>,
}

/// A content descriptor.
#[derive(Deserialize)]
pub(crate) struct DescJson {
    #[serde(rename = "mediaType", default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    #[serde(default)]
    pub(crate) size: i64,
}

#[derive(Deserialize, Default)]
struct ImageConfigJson {
    #[serde(default)]
    config: Option<RunConfigJson>,
    rootfs: RootfsJson,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RunConfigJson {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize, Default)]
struct RootfsJson {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// The architecture name OCI uses for this machine.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

fn is_index(media_type: &str) -> bool {
    media_type.contains("image.index") || media_type.contains("manifest.list")
}

/// Reads a whole blob from the content store.
pub async fn read_blob(engine: &Engine, digest: &str) -> Result<Vec<u8>, RuntimeError> {
    let op = format!("content.read {digest}");
    let mut stream = engine
        .content()
        .read(engine.req(ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 }))
        .await
        .map_err(|s| status_err(&op, "", s))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.map_err(|s| status_err(&op, "", s))?.data);
    }
    Ok(out)
}

fn parse<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, RuntimeError> {
    serde_json::from_slice(bytes).map_err(|e| RuntimeError::Engine(format!("cannot parse {what}: {e}")))
}

/// Finds `image` in the store of the engine's namespace.
pub async fn resolve(engine: &Engine, image: &str) -> Result<ResolvedImage, RuntimeError> {
    let name = normalize(image)?;
    let got = engine.images().get(engine.req(GetImageRequest { name: name.clone() })).await;
    let img = match got {
        Ok(r) => r.into_inner().image,
        Err(s) if is_not_found(&s) => None,
        Err(s) => return Err(status_err(&format!("images.get {name}"), "", s)),
    };
    let Some(target) = img.and_then(|i| i.target) else {
        return Err(RuntimeError::ImageNotFound {
            image: image.to_string(),
            reason: format!("{name} is not in containerd's store (namespace {})", engine.namespace()),
        });
    };
    let mut digest = target.digest.clone();
    let mut media_type = target.media_type.clone();
    // An index: pick this machine's platform (else the only/first entry).
    for _ in 0..2 {
        if !is_index(&media_type) {
            break;
        }
        let idx: Index = parse(&format!("index {digest} of {name}"), &read_blob(engine, &digest).await?)?;
        let pick = idx
            .manifests
            .iter()
            .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == oci_arch()))
            .or_else(|| idx.manifests.first())
            .ok_or_else(|| RuntimeError::ImageNotFound {
                image: image.to_string(),
                reason: format!("index {digest} lists no manifest"),
            })?;
        digest = pick.digest.clone();
        media_type = pick.media_type.clone();
    }
    let manifest: Manifest = parse(&format!("manifest {digest} of {name}"), &read_blob(engine, &digest).await?)?;
    let cfg_bytes = read_blob(engine, &manifest.config.digest).await?;
    let cfg: ImageConfigJson = parse(&format!("config {} of {name}", manifest.config.digest), &cfg_bytes)?;
    if cfg.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(RuntimeError::Engine(format!(
            "image {name}: config lists {} diff ids but the manifest {} layers",
            cfg.rootfs.diff_ids.len(),
            manifest.layers.len()
        )));
    }
    if manifest.layers.is_empty() {
        return Err(RuntimeError::InvalidConfig(format!("image {name} has no layers")));
    }
    let run = cfg.config.unwrap_or_default();
    Ok(ResolvedImage {
        name,
        defaults: ImageDefaults {
            env: run.env.unwrap_or_default(),
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            workdir: run.working_dir.unwrap_or_default(),
            user: run.user.unwrap_or_default(),
        },
        chain_ids: chain_ids(&cfg.rootfs.diff_ids),
        layers: manifest
            .layers
            .into_iter()
            .map(|l| Descriptor { media_type: l.media_type, digest: l.digest, size: l.size, ..Default::default() })
            .collect(),
        config_digest: manifest.config.digest,
    })
}

/// Whether the store of the engine's namespace has an image record for
/// `image` (its normalized name).
pub async fn image_exists(engine: &Engine, image: &str) -> Result<bool, RuntimeError> {
    let name = normalize(image)?;
    match engine.images().get(engine.req(GetImageRequest { name: name.clone() })).await {
        Ok(r) => Ok(r.into_inner().image.is_some()),
        Err(s) if is_not_found(&s) => Ok(false),
        Err(s) => Err(status_err(&format!("images.get {name}"), "", s)),
    }
}

async fn snapshot_exists(engine: &Engine, snapshotter: &str, key: &str) -> Result<bool, RuntimeError> {
    let r = engine
        .snapshots()
        .stat(engine.req(StatSnapshotRequest { snapshotter: snapshotter.into(), key: key.into() }))
        .await;
    match r {
        Ok(_) => Ok(true),
        Err(s) if is_not_found(&s) => Ok(false),
        Err(s) => Err(status_err(&format!("snapshots.stat {key}"), "", s)),
    }
}

/// Makes sure every layer of `img` is a committed snapshot on
/// `snapshotter`, unpacking the missing ones.
pub async fn ensure_unpacked(engine: &Engine, snapshotter: &str, img: &ResolvedImage) -> Result<(), RuntimeError> {
    if snapshot_exists(engine, snapshotter, img.top_chain_id()).await? {
        return Ok(());
    }
    let lease = format!("swarm-rs-unpack-{}", crate::token());
    engine
        .leases()
        .create(engine.req(LeaseCreateRequest { id: lease.clone(), ..Default::default() }))
        .await
        .map_err(|s| status_err("leases.create", "", s))?;
    let r = unpack(engine, snapshotter, img, &lease).await;
    if let Err(s) = engine.leases().delete(engine.req(LeaseDeleteRequest { id: lease.clone(), sync: false })).await {
        debug!(lease, error = %s, "cannot delete the unpack lease");
    }
    r
}

async fn unpack(engine: &Engine, snapshotter: &str, img: &ResolvedImage, lease: &str) -> Result<(), RuntimeError> {
    info!(image = %img.name, layers = img.layers.len(), "unpacking image into {snapshotter} snapshots");
    for (i, (layer, chain)) in img.layers.iter().zip(&img.chain_ids).enumerate() {
        if snapshot_exists(engine, snapshotter, chain).await? {
            continue;
        }
        let parent = if i == 0 { String::new() } else { img.chain_ids[i - 1].clone() };
        let key = format!("swarm-rs-extract-{}-{i}", crate::token());
        let mounts = engine
            .snapshots()
            .prepare(engine.req_leased(
                PrepareSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    key: key.clone(),
                    parent,
                    ..Default::default()
                },
                lease,
            )?)
            .await
            .map_err(|s| status_err(&format!("snapshots.prepare {key}"), "", s))?
            .into_inner()
            .mounts;
        let applied = engine
            .diff()
            .apply(engine.req_leased(ApplyRequest { diff: Some(layer.clone()), mounts, ..Default::default() }, lease)?)
            .await;
        let committed = match applied {
            Ok(_) => engine
                .snapshots()
                .commit(engine.req_leased(
                    CommitSnapshotRequest {
                        snapshotter: snapshotter.into(),
                        name: chain.clone(),
                        key: key.clone(),
                        ..Default::default()
                    },
                    lease,
                )?)
                .await
                .map(|_| ())
                .map_err(|s| status_err(&format!("snapshots.commit {chain}"), "", s)),
            Err(s) => Err(status_err(&format!("diff.apply {} of {}", layer.digest, img.name), "", s)),
        };
        if let Err(e) = committed {
            let _ = engine
                .snapshots()
                .remove(engine.req(RemoveSnapshotRequest { snapshotter: snapshotter.into(), key }))
                .await;
            // Another unpack may have committed the same chain meanwhile.
            if snapshot_exists(engine, snapshotter, chain).await? {
                continue;
            }
            return Err(e);
        }
    }
    // Keep the snapshots alive as long as the image's config blob.
    let label = format!("containerd.io/gc.ref.snapshot.{snapshotter}");
    let info = ContentInfo {
        digest: img.config_digest.clone(),
        labels: [(label.clone(), img.top_chain_id().to_string())].into_iter().collect(),
        ..Default::default()
    };
    engine
        .content()
        .update(engine.req_leased(
            ContentUpdateRequest {
                info: Some(info),
                update_mask: Some(prost_types::FieldMask { paths: vec![format!("labels.{label}")] }),
            },
            lease,
        )?)
        .await
        .map_err(|s| status_err(&format!("content.update {}", img.config_digest), "", s))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_like_containerd() {
        assert_eq!(normalize("busybox").unwrap(), "docker.io/library/busybox:latest");
        assert_eq!(normalize("team/app:1").unwrap(), "docker.io/team/app:1");
        assert_eq!(normalize("registry:5000/app").unwrap(), "registry:5000/app:latest");
        assert!(normalize("Bad/Upper").is_err());
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let d = vec!["sha256:aaa".to_string(), "sha256:bbb".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:aaa");
        let want = format!("sha256:{}", hex(&Sha256::digest(b"sha256:aaa sha256:bbb")));
        assert_eq!(c[1], want);
        assert!(chain_ids(&[]).is_empty());
    }
}
