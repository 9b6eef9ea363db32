//! An image as the test registry serves it: an image config and its
//! layers (tarballs, uncompressed or gzip), described by an OCI image
//! manifest or a Docker schema2 manifest, optionally behind an OCI index.
//! [`Image::files`] turns it into the documents and blobs a registry holds
//! under a repository, keyed by the path a client fetches them at.

use super::RegistryError;
use sha2::{Digest, Sha256};

/// The `sha256:<hex>` digest of `data`, as registries name content.
pub fn digest(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// Which manifest describes the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    /// `application/vnd.oci.image.manifest.v1+json`, OCI config and layer
    /// media types.
    Oci,
    /// `application/vnd.docker.distribution.manifest.v2+json`, Docker
    /// config and layer media types.
    DockerSchema2,
}

impl ManifestFormat {
    /// The media types of the manifest, the config and a layer
    /// (uncompressed or gzip).
    fn media_types(self, gzip: bool) -> (&'static str, &'static str, &'static str) {
        match (self, gzip) {
            (ManifestFormat::Oci, false) => (OCI_MANIFEST, OCI_CONFIG, "application/vnd.oci.image.layer.v1.tar"),
            (ManifestFormat::Oci, true) => (OCI_MANIFEST, OCI_CONFIG, "application/vnd.oci.image.layer.v1.tar+gzip"),
            (ManifestFormat::DockerSchema2, false) => {
                (DOCKER_MANIFEST, DOCKER_CONFIG, "application/vnd.docker.image.rootfs.diff.tar")
            }
            (ManifestFormat::DockerSchema2, true) => {
                (DOCKER_MANIFEST, DOCKER_CONFIG, "application/vnd.docker.image.rootfs.diff.tar.gzip")
            }
        }
    }
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const BLOB: &str = "application/octet-stream";

/// An image to load into a [`TestRegistry`](super::TestRegistry) with
/// [`push`](super::TestRegistry::push).
///
/// ```
/// use swarm_conformance::registry::{Image, ManifestFormat, digest};
/// let layer = b"a tarball".to_vec();
/// let config = format!(r#"{{"os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#, digest(&layer));
/// let image = Image::new(ManifestFormat::Oci, config.into_bytes(), vec![layer]).in_index("amd64");
/// let files = image.files("team/app", "1").unwrap();
/// assert!(files.manifest_digest.starts_with("sha256:"));
/// ```
#[derive(Debug, Clone)]
pub struct Image {
    format: ManifestFormat,
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
    index_arch: Option<String>,
    corrupt_layer: Option<usize>,
}

/// A document or blob the registry serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// Its `Content-Type`.
    pub content_type: String,
    /// Its digest: the digest of the bytes it should have (for a corrupted
    /// layer, not of the bytes served).
    pub digest: String,
    /// The bytes served.
    pub body: Vec<u8>,
}

/// What [`Image::files`] makes of an image under a repository and tag.
#[derive(Debug, Clone)]
pub struct ImageFiles {
    /// Path (`/v2/<repo>/manifests/<ref>` or `/v2/<repo>/blobs/<digest>`)
    /// to what is served there.
    pub files: Vec<(String, Served)>,
    /// The digest of the image manifest.
    pub manifest_digest: String,
    /// The digest of the index, when the tag names one.
    pub index_digest: Option<String>,
    /// The digest of the config blob.
    pub config_digest: String,
    /// The digests of the layers, in order.
    pub layer_digests: Vec<String>,
}

impl Image {
    /// An image of `config` (the image config JSON) and `layers`
    /// (tarballs, each gzip if it starts with the gzip magic), described by
    /// a `format` manifest that the tag names directly.
    pub fn new(format: ManifestFormat, config: Vec<u8>, layers: Vec<Vec<u8>>) -> Self {
        Image { format, config, layers, index_arch: None, corrupt_layer: None }
    }

    /// The tag names an OCI index instead, listing the manifest for
    /// `linux/<arch>` after an entry for another platform whose manifest
    /// the registry does not hold: a client that does not choose by
    /// platform fails.
    pub fn in_index(mut self, arch: &str) -> Self {
        self.index_arch = Some(arch.to_string());
        self
    }

    /// Layer `i` is served with one byte flipped: its bytes no longer match
    /// the digest the manifest gives.
    pub fn corrupt_layer(mut self, i: usize) -> Self {
        self.corrupt_layer = Some(i);
        self
    }

    /// The documents and blobs of the image as repository `repo` holds it
    /// under `tag`: config and layer blobs, the manifest by digest, the
    /// index by digest (if any), and the tag.
    pub fn files(&self, repo: &str, tag: &str) -> Result<ImageFiles, RegistryError> {
        let gzip = |l: &[u8]| l.starts_with(&[0x1f, 0x8b]);
        let (m_type, c_type, _) = self.format.media_types(false);
        let config_digest = digest(&self.config);
        let layer_digests: Vec<String> = self.layers.iter().map(|l| digest(l)).collect();
        let layers: Vec<serde_json::Value> = self
            .layers
            .iter()
            .zip(&layer_digests)
            .map(|(l, d)| {
                let l_type = self.format.media_types(gzip(l)).2;
                serde_json::json!({ "mediaType": l_type, "digest": d, "size": l.len() })
            })
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": m_type,
            "config": { "mediaType": c_type, "digest": config_digest, "size": self.config.len() },
            "layers": layers,
        }))?;
        let manifest_digest = digest(&manifest);
        let doc = |content_type: &str, body: &[u8]| Served {
            content_type: content_type.to_string(),
            digest: digest(body),
            body: body.to_vec(),
        };
        let blob_path = |d: &str| format!("/v2/{repo}/blobs/{d}");
        let manifest_path = |r: &str| format!("/v2/{repo}/manifests/{r}");
        let mut files = vec![(blob_path(&config_digest), doc(BLOB, &self.config))];
        for (i, (layer, d)) in self.layers.iter().zip(&layer_digests).enumerate() {
            let mut body = layer.clone();
            if self.corrupt_layer == Some(i)
                && let Some(b) = body.get_mut(layer.len() / 2)
            {
                *b ^= 0xff;
            }
            files.push((blob_path(d), Served { content_type: BLOB.into(), digest: d.clone(), body }));
        }
        files.push((manifest_path(&manifest_digest), doc(m_type, &manifest)));
        let mut index_digest = None;
        match &self.index_arch {
            None => files.push((manifest_path(tag), doc(m_type, &manifest))),
            Some(arch) => {
                let other = if arch == "s390x" { "ppc64le" } else { "s390x" };
                let index = serde_json::to_vec(&serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": OCI_INDEX,
                    "manifests": [
                        { "mediaType": m_type, "digest": format!("sha256:{}", "0".repeat(64)), "size": 10,
                          "platform": { "os": "linux", "architecture": other } },
                        { "mediaType": m_type, "digest": manifest_digest, "size": manifest.len(),
                          "platform": { "os": "linux", "architecture": arch } },
                    ],
                }))?;
                let d = digest(&index);
                files.push((manifest_path(&d), doc(OCI_INDEX, &index)));
                files.push((manifest_path(tag), doc(OCI_INDEX, &index)));
                index_digest = Some(d);
            }
        }
        Ok(ImageFiles { files, manifest_digest, index_digest, config_digest, layer_digests })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(f: &'a ImageFiles, path: &str) -> &'a Served {
        &f.files.iter().find(|(p, _)| p == path).unwrap_or_else(|| panic!("no {path}")).1
    }

    #[test]
    fn a_docker_schema2_image_is_its_blobs_its_manifest_and_the_tag() {
        let img =
            Image::new(ManifestFormat::DockerSchema2, b"{}".to_vec(), vec![b"plain".to_vec(), vec![0x1f, 0x8b, 1]]);
        let f = img.files("a/b", "v1").unwrap();
        assert_eq!(f.files.len(), 5);
        let tag = find(&f, "/v2/a/b/manifests/v1");
        assert_eq!(tag, find(&f, &format!("/v2/a/b/manifests/{}", f.manifest_digest)));
        assert_eq!((tag.content_type.as_str(), tag.digest.as_str()), (DOCKER_MANIFEST, f.manifest_digest.as_str()));
        let m: serde_json::Value = serde_json::from_slice(&tag.body).unwrap();
        assert_eq!(m["config"]["digest"], f.config_digest.as_str());
        assert_eq!(m["layers"][0]["mediaType"], "application/vnd.docker.image.rootfs.diff.tar");
        assert_eq!(m["layers"][1]["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.gzip");
        assert_eq!(m["layers"][1]["size"], 3);
        assert_eq!(find(&f, &format!("/v2/a/b/blobs/{}", f.layer_digests[0])).body, b"plain");
        assert!(f.index_digest.is_none());
    }

    #[test]
    fn an_indexed_image_with_a_corrupt_layer() {
        let img =
            Image::new(ManifestFormat::Oci, b"{}".to_vec(), vec![b"layer".to_vec()]).in_index("arm64").corrupt_layer(0);
        let f = img.files("r", "1").unwrap();
        let tag = find(&f, "/v2/r/manifests/1");
        assert_eq!(tag.content_type, OCI_INDEX);
        assert_eq!(Some(&tag.digest), f.index_digest.as_ref());
        let ix: serde_json::Value = serde_json::from_slice(&tag.body).unwrap();
        assert_eq!(ix["manifests"][0]["platform"]["architecture"], "s390x");
        assert_eq!(ix["manifests"][1]["platform"]["architecture"], "arm64");
        assert_eq!(ix["manifests"][1]["digest"], f.manifest_digest.as_str());
        let layer = find(&f, &format!("/v2/r/blobs/{}", f.layer_digests[0]));
        assert_eq!(layer.digest, digest(b"layer"));
        assert_ne!(digest(&layer.body), layer.digest, "the layer should be corrupt");
        assert_eq!(layer.body.len(), 5);
    }
}
