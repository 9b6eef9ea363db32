//! Pulling an image that is not in containerd's store from its registry,
//! over the Docker Registry HTTP API v2, into the content store.
//!
//! The reference is resolved the way Docker does (`docker.io` is served by
//! `registry-1.docker.io`, single-component names get `library/`). The
//! manifest is fetched with an `Accept` of the OCI and Docker schema2
//! manifest and index types; an index picks `linux/<this arch>`. The
//! index, manifest and config are checked against their sha256 digest and
//! size before anything is written; layers are streamed into the content
//! store, hashed on the way, and committed only when they match. Authentication: anonymous first;
//! on a 401 the `WWW-Authenticate` challenge says how: `Basic` (the
//! configured credentials) or `Bearer` (a token from the realm, asked with
//! the credentials when there are any). Registries on `localhost` and
//! `127.0.0.0/8`/`::1` are spoken to in plain HTTP (Docker's default
//! insecure registries), every other one over HTTPS (rustls, Mozilla's
//! roots from `webpki-roots` plus [`PullOptions::extra_roots_pem`]).
//!
//! Everything is written through containerd's content service under a
//! lease, children first with the `containerd.io/gc.ref.content.*` labels
//! on their parents, then the image record (images service); the lease is
//! deleted at the end. A failed pull deletes the lease synchronously, so
//! whatever it wrote is garbage collected, and aborts an open ingest.

use crate::engine::{Engine, is_not_found, status_err};
use crate::image::{Index, Manifest, hex, normalize, oci_arch};
use base64::Engine as _;
use bytes::Bytes;
use containerd_client::services::v1::{
    AbortRequest, CreateImageRequest, CreateRequest as LeaseCreateRequest, DeleteRequest as LeaseDeleteRequest, Image,
    InfoRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor;
use futures_util::StreamExt;
use http::header::{ACCEPT, AUTHORIZATION, HOST, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use swarm_core::image::ImageRef;
use swarm_core::runtime::RuntimeError;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ClientConfig;
use tracing::{debug, info, warn};

/// The manifest media types asked for, most wanted first.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Longest a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a small document (manifest, index, config, token) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for response headers or for the next piece of a body.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest manifest, index or token response accepted.
const MAX_DOCUMENT: usize = 4 << 20;
/// Largest image config accepted (held in memory; layers are streamed).
const MAX_CONFIG: usize = 16 << 20;
/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;
/// Bytes per content-service write message.
const WRITE_CHUNK: usize = 1 << 20;

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Credentials by registry, keyed the way references name it
/// (`docker.io`, `registry.example.com`, `127.0.0.1:5000`).
pub type Credentials = BTreeMap<String, RegistryCredentials>;

/// Where one image is pulled from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullTarget {
    /// The name containerd stores the image under (see [`normalize`]).
    pub name: String,
    /// The registry as the reference names it (the credentials key).
    pub registry: String,
    /// `scheme://host[:port]` of the API endpoint.
    pub endpoint: String,
    /// The repository path on the registry.
    pub repository: String,
    /// The tag or digest asked for.
    pub reference: String,
}

/// Whether `authority` (`host[:port]`) is a loopback registry, spoken to
/// in plain HTTP.
pub fn is_insecure(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(authority),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Resolves `image` to its registry endpoint, repository and reference.
pub fn target(image: &str) -> Result<PullTarget, RuntimeError> {
    let name = normalize(image)?;
    let r = ImageRef::parse(image).map_err(|e| RuntimeError::InvalidConfig(e.to_string()))?;
    let registry = r.registry.clone().unwrap_or_else(|| "docker.io".into());
    let docker_hub = registry == "docker.io" || registry == "index.docker.io";
    let repository = if docker_hub && !r.repository.contains('/') {
        format!("library/{}", r.repository)
    } else {
        r.repository.clone()
    };
    let host = if docker_hub { "registry-1.docker.io".to_string() } else { registry.clone() };
    let scheme = if is_insecure(&host) { "http" } else { "https" };
    let reference = r.digest.clone().or(r.tag.clone()).unwrap_or_else(|| "latest".into());
    Ok(PullTarget { name, registry, endpoint: format!("{scheme}://{host}"), repository, reference })
}

/// A `WWW-Authenticate` challenge: the scheme and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// `basic` or `bearer` (lowercased).
    pub scheme: String,
    /// Parameters (keys lowercased).
    pub params: HashMap<String, String>,
}

/// Parses `Bearer realm="..",service="..",scope=".."` (quoted or bare
/// values, commas inside quotes kept).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, mut rest) = match header.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r.trim_start()),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = HashMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => v.push(c),
                }
            }
            (v, &q[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, value);
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge { scheme: scheme.to_ascii_lowercase(), params })
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

/// Checks that `data` has `digest` (only sha256 is supported) and, when
/// `size` is known (> 0), that size.
pub fn verify(what: &str, data: &[u8], digest: &str, size: i64) -> Result<(), String> {
    if !digest.starts_with("sha256:") {
        return Err(format!("{what}: digest {digest} is not sha256 (the only algorithm supported)"));
    }
    if size > 0 && data.len() as u64 != size as u64 {
        return Err(format!("{what}: got {} bytes, the descriptor says {size}", data.len()));
    }
    let got = sha256_digest(data);
    if got != digest {
        return Err(format!("{what}: digest mismatch: expected {digest}, got {got}"));
    }
    Ok(())
}

/// One HTTP response, body read whole.
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// A response whose body is still to be read. Its connection is driven
/// by a task of its own, which ends with the connection (body read or
/// dropped).
type Open = http::Response<hyper::body::Incoming>;

async fn send<IO>(io: IO, req: Request<Empty<Bytes>>) -> Result<Open, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| format!("http handshake: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "registry connection ended with an error");
        }
    });
    sender.send_request(req).await.map_err(|e| format!("sending the request: {e}"))
}

/// One GET up to the response headers, no redirect handling.
async fn open_once(
    tls_config: &Arc<ClientConfig>,
    uri: &Uri,
    headers: &[(http::HeaderName, String)],
) -> Result<Open, String> {
    let host = uri.host().ok_or_else(|| format!("{uri} has no host"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        other => return Err(format!("{uri}: unsupported scheme {other:?}")),
    };
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut b = Request::get(path).header(HOST, authority).header("User-Agent", "swarm-rs-containerd");
    for (k, v) in headers {
        b = b.header(k, v);
    }
    let req = b.body(Empty::<Bytes>::new()).map_err(|e| format!("building the request for {uri}: {e}"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((bare, port)))
        .await
        .map_err(|_| format!("connecting to {host}:{port} timed out after {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let fut = async {
        if tls {
            let stream = crate::tls::connect(tls_config.clone(), bare, tcp).await?;
            send(stream, req).await
        } else {
            send(tcp, req).await
        }
    };
    tokio::time::timeout(IDLE_TIMEOUT, fut)
        .await
        .map_err(|_| format!("GET {uri}: no answer within {IDLE_TIMEOUT:?}"))?
}

/// Reads a whole (small) response body, at most `limit` bytes.
async fn read_all(resp: Open, limit: usize) -> Result<Resp, String> {
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(REQUEST_TIMEOUT, Limited::new(body, limit).collect())
        .await
        .map_err(|_| format!("reading the response body timed out after {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| format!("reading the response body: {e}"))?
        .to_bytes();
    Ok(Resp { status: parts.status, headers: parts.headers, body })
}

/// One GET with its body read whole, no redirect handling.
async fn get_once(
    tls_config: &Arc<ClientConfig>,
    uri: &Uri,
    headers: &[(http::HeaderName, String)],
    limit: usize,
) -> Result<Resp, String> {
    read_all(open_once(tls_config, uri, headers).await?, limit).await
}

/// A pull's HTTP session with one registry: the endpoint, the
/// credentials and the authorization obtained so far.
struct Session<'a> {
    tls: Arc<ClientConfig>,
    target: &'a PullTarget,
    creds: Option<&'a RegistryCredentials>,
    authorization: Option<String>,
}

impl Session<'_> {
    /// GET `path` on the registry (following redirects; the authorization
    /// goes only to the registry's own host), authenticating on a 401.
    async fn get(&mut self, path: &str, accept: Option<&str>, limit: usize) -> Result<Resp, String> {
        read_all(self.open(path, accept).await?, limit).await
    }

    /// Like [`Session::get`], the body left to read.
    async fn open(&mut self, path: &str, accept: Option<&str>) -> Result<Open, String> {
        let r = self.open_following(path, accept).await?;
        if r.status() != StatusCode::UNAUTHORIZED {
            return Ok(r);
        }
        let challenge = r
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .ok_or("the registry answered 401 without a WWW-Authenticate challenge")?
            .to_string();
        drop(r);
        self.authenticate(&challenge).await?;
        let r = self.open_following(path, accept).await?;
        if r.status() == StatusCode::UNAUTHORIZED {
            return Err(format!(
                "the registry refused the {} (401 after authenticating)",
                if self.creds.is_some() { "configured credentials" } else { "anonymous token" }
            ));
        }
        Ok(r)
    }

    /// GET the manifest `reference` (tag or digest) of the repository.
    async fn manifest(&mut self, reference: &str) -> Result<Resp, String> {
        let path = format!("/v2/{}/manifests/{reference}", self.target.repository);
        self.get(&path, Some(ACCEPT_MANIFESTS), MAX_DOCUMENT).await
    }

    async fn open_following(&self, path: &str, accept: Option<&str>) -> Result<Open, String> {
        let own: Uri = format!("{}{path}", self.target.endpoint).parse().map_err(|e| format!("bad url {path}: {e}"))?;
        let mut uri = own.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut headers = Vec::new();
            if let Some(a) = accept {
                headers.push((ACCEPT, a.to_string()));
            }
            if let (Some(auth), true) = (&self.authorization, uri.authority() == own.authority()) {
                headers.push((AUTHORIZATION, auth.clone()));
            }
            let r = open_once(&self.tls, &uri, &headers).await?;
            if !r.status().is_redirection() || r.status() == StatusCode::NOT_MODIFIED {
                return Ok(r);
            }
            let loc = r
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("redirect {} without a Location", r.status()))?
                .to_string();
            uri = if loc.starts_with('/') {
                let scheme = uri.scheme_str().unwrap_or("https");
                let auth = uri.authority().map(|a| a.as_str()).unwrap_or("");
                format!("{scheme}://{auth}{loc}").parse()
            } else {
                loc.parse()
            }
            .map_err(|e| format!("bad redirect location {loc:?}: {e}"))?;
            debug!(%uri, "following a registry redirect");
        }
        Err(format!("more than {MAX_REDIRECTS} redirects for {path}"))
    }

    fn basic(&self) -> Option<String> {
        self.creds.map(|c| {
            let raw = format!("{}:{}", c.username, c.password);
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
        })
    }

    async fn authenticate(&mut self, header: &str) -> Result<(), String> {
        let ch = parse_challenge(header).ok_or_else(|| format!("cannot parse the challenge {header:?}"))?;
        match ch.scheme.as_str() {
            "basic" => {
                let b = self.basic().ok_or_else(|| {
                    format!(
                        "the registry asks for basic auth and no credentials are configured for {}",
                        self.target.registry
                    )
                })?;
                self.authorization = Some(b);
                Ok(())
            }
            "bearer" => {
                let realm = ch.params.get("realm").ok_or("the Bearer challenge has no realm")?;
                let mut url = format!("{realm}{}", if realm.contains('?') { "&" } else { "?" });
                let mut q = Vec::new();
                if let Some(s) = ch.params.get("service") {
                    q.push(format!("service={}", query_escape(s)));
                }
                let scope = ch
                    .params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", self.target.repository));
                for s in scope.split(' ').filter(|s| !s.is_empty()) {
                    q.push(format!("scope={}", query_escape(s)));
                }
                url.push_str(&q.join("&"));
                let uri: Uri = url.parse().map_err(|e| format!("bad token realm {realm:?}: {e}"))?;
                let mut headers = Vec::new();
                if let Some(b) = self.basic() {
                    let plain = uri.scheme_str() == Some("http");
                    if plain && !uri.authority().is_some_and(|a| is_insecure(a.as_str())) {
                        return Err(format!("refusing to send credentials in plain HTTP to the token realm {realm}"));
                    }
                    headers.push((AUTHORIZATION, b));
                }
                let r = get_once(&self.tls, &uri, &headers, MAX_DOCUMENT)
                    .await
                    .map_err(|e| format!("token request: {e}"))?;
                if !r.status.is_success() {
                    return Err(format!(
                        "token request to {realm} answered {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body[..r.body.len().min(200)]).trim()
                    ));
                }
                #[derive(Deserialize)]
                struct Token {
                    #[serde(default)]
                    token: String,
                    #[serde(default)]
                    access_token: String,
                }
                let t: Token =
                    serde_json::from_slice(&r.body).map_err(|e| format!("cannot parse the token response: {e}"))?;
                let tok = if t.token.is_empty() { t.access_token } else { t.token };
                if tok.is_empty() {
                    return Err(format!("the token response from {realm} holds no token"));
                }
                self.authorization = Some(format!("Bearer {tok}"));
                Ok(())
            }
            other => Err(format!("unsupported authentication scheme {other:?}")),
        }
    }
}

fn is_index_type(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.index.v1+json"
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

/// A downloaded (and verified) blob to write, with the labels containerd's
/// garbage collector follows from it to its children.
#[derive(Clone, Debug)]
pub struct Blob {
    /// Its descriptor.
    pub desc: Descriptor,
    /// Its bytes.
    pub data: Bytes,
    /// `containerd.io/gc.ref.content.*` labels.
    pub labels: HashMap<String, String>,
}

/// Why a pull failed: the image, the step, the detail.
fn pull_err(image: &str, step: &str, detail: impl fmt::Display) -> RuntimeError {
    RuntimeError::Engine(format!("pulling image {image}: {step}: {detail}"))
}

/// Fetches and verifies the manifest (through the index if any) and the
/// config of `image`.
async fn download<'a>(
    image: &str,
    t: &'a PullTarget,
    creds: Option<&'a RegistryCredentials>,
    tls: Arc<ClientConfig>,
) -> Result<Downloaded<'a>, RuntimeError> {
    let mut s = Session { tls, target: t, creds, authorization: None };
    let repo = &t.repository;
    let step = format!("GET manifest {} from {}", t.reference, t.endpoint);
    let r = s.manifest(&t.reference).await.map_err(|e| {
        if e.starts_with("cannot connect") || e.starts_with("connecting") {
            RuntimeError::ImageNotFound {
                image: image.to_string(),
                reason: format!("{} is not in containerd's store and its registry is unreachable: {e}", t.name),
            }
        } else {
            pull_err(image, &step, e)
        }
    })?;
    if r.status == StatusCode::NOT_FOUND {
        return Err(RuntimeError::ImageNotFound {
            image: image.to_string(),
            reason: format!("registry {} has no manifest {} in {repo}", t.endpoint, t.reference),
        });
    }
    if !r.status.is_success() {
        return Err(pull_err(image, &step, format!("status {}", r.status)));
    }
    let top = manifest_desc(image, &step, &r, &t.reference)?;
    let mut docs = Vec::new();
    let mut manifest_bytes = r.body.clone();
    let mut chosen = top.clone();
    if is_index_type(&top.media_type) {
        let idx: Index = serde_json::from_slice(&r.body)
            .map_err(|e| pull_err(image, &step, format!("cannot parse the index: {e}")))?;
        let arch = oci_arch();
        let pick = idx
            .manifests
            .iter()
            .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch))
            .or_else(|| idx.manifests.iter().find(|m| m.platform.as_ref().is_some_and(|p| p.architecture == "amd64")))
            .ok_or_else(|| RuntimeError::ImageNotFound {
                image: image.to_string(),
                reason: format!("index {} lists no manifest for linux/{arch}", top.digest),
            })?;
        let step2 = format!("GET manifest {} (linux/{arch}) from {}", pick.digest, t.endpoint);
        let r2 = s.manifest(&pick.digest).await.map_err(|e| pull_err(image, &step2, e))?;
        if !r2.status.is_success() {
            return Err(pull_err(image, &step2, format!("status {}", r2.status)));
        }
        verify(&format!("manifest {}", pick.digest), &r2.body, &pick.digest, pick.size)
            .map_err(|e| pull_err(image, &step2, e))?;
        chosen = Descriptor {
            media_type: if pick.media_type.is_empty() { content_type(&r2) } else { pick.media_type.clone() },
            digest: pick.digest.clone(),
            size: r2.body.len() as i64,
            ..Default::default()
        };
        manifest_bytes = r2.body;
        let labels = idx
            .manifests
            .iter()
            .enumerate()
            .filter(|(_, m)| m.digest == pick.digest)
            .map(|(i, m)| (format!("containerd.io/gc.ref.content.m.{i}"), m.digest.clone()))
            .collect();
        docs.push(Blob { desc: top.clone(), data: r.body.clone(), labels });
    }
    let m: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|e| {
        pull_err(image, "parsing the manifest", format!("{} is not an image manifest: {e}", chosen.digest))
    })?;
    if m.schema_version != 2 {
        return Err(pull_err(
            image,
            "parsing the manifest",
            format!("schema version {} is not supported", m.schema_version),
        ));
    }
    let mut labels = HashMap::new();
    labels.insert("containerd.io/gc.ref.content.config".to_string(), m.config.digest.clone());
    for (i, l) in m.layers.iter().enumerate() {
        labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
    }
    let b = &m.config;
    let step = format!("GET config blob {}", b.digest);
    let r = s
        .get(&format!("/v2/{repo}/blobs/{}", b.digest), None, MAX_CONFIG)
        .await
        .map_err(|e| pull_err(image, &step, e))?;
    if !r.status.is_success() {
        return Err(pull_err(image, &step, format!("status {}", r.status)));
    }
    verify(&format!("config {}", b.digest), &r.body, &b.digest, b.size).map_err(|e| pull_err(image, &step, e))?;
    let config = Blob {
        desc: Descriptor {
            media_type: b.media_type.clone(),
            digest: b.digest.clone(),
            size: r.body.len() as i64,
            ..Default::default()
        },
        data: r.body,
        labels: HashMap::new(),
    };
    let layers = m
        .layers
        .iter()
        .map(|l| Descriptor {
            media_type: l.media_type.clone(),
            digest: l.digest.clone(),
            size: l.size,
            ..Default::default()
        })
        .collect();
    // Write order: config, manifest, index (the index is already in `docs`).
    let index = docs.pop();
    docs.push(config);
    docs.push(Blob { desc: chosen, data: manifest_bytes, labels });
    docs.extend(index);
    Ok(Downloaded { docs, layers, top, session: s })
}

/// What [`download`] fetched: the small documents (config, manifest, index
/// if any, verified, in write order), the layers still to stream, the
/// image's target, and the session (its authorization) to stream them.
struct Downloaded<'a> {
    docs: Vec<Blob>,
    layers: Vec<Descriptor>,
    top: Descriptor,
    session: Session<'a>,
}

fn content_type(r: &Resp) -> String {
    // Without parameters (`; charset=...`).
    let v = r.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    v.split(';').next().unwrap_or("").trim().to_string()
}

/// The descriptor of a fetched manifest or index: its digest checked
/// against the reference (when a digest) and `Docker-Content-Digest`.
fn manifest_desc(image: &str, step: &str, r: &Resp, reference: &str) -> Result<Descriptor, RuntimeError> {
    let got = sha256_digest(&r.body);
    if reference.contains(':') {
        verify("manifest", &r.body, reference, 0).map_err(|e| pull_err(image, step, e))?;
    }
    if let Some(h) = r.headers.get("Docker-Content-Digest").and_then(|v| v.to_str().ok())
        && h.starts_with("sha256:")
        && h != got
    {
        return Err(pull_err(image, step, format!("digest mismatch: Docker-Content-Digest {h}, body {got}")));
    }
    let mut media_type = content_type(r);
    if media_type.is_empty() || media_type == "application/json" {
        #[derive(Deserialize)]
        struct Probe {
            #[serde(rename = "mediaType", default)]
            media_type: String,
            #[serde(default)]
            manifests: Option<serde_json::Value>,
        }
        let p: Probe = serde_json::from_slice(&r.body).map_err(|e| pull_err(image, step, format!("not JSON: {e}")))?;
        media_type = if !p.media_type.is_empty() {
            p.media_type
        } else if p.manifests.is_some() {
            "application/vnd.oci.image.index.v1+json".into()
        } else {
            "application/vnd.oci.image.manifest.v1+json".into()
        };
    }
    Ok(Descriptor { media_type, digest: got, size: r.body.len() as i64, ..Default::default() })
}

async fn blob_exists(engine: &Engine, digest: &str) -> Result<bool, tonic::Status> {
    match engine.content().info(engine.req(InfoRequest { digest: digest.to_string() })).await {
        Ok(_) => Ok(true),
        Err(s) if is_not_found(&s) => Ok(false),
        Err(s) => Err(s),
    }
}

/// Writes one verified blob through the content service under `lease`.
async fn write_blob(engine: &Engine, lease: &str, blob: &Blob) -> Result<(), String> {
    if blob_exists(engine, &blob.desc.digest).await.map_err(|s| format!("content.info: {}", s.message()))? {
        // Already there: only its labels may be missing.
        if !blob.labels.is_empty() {
            let info = containerd_client::services::v1::Info {
                digest: blob.desc.digest.clone(),
                labels: blob.labels.clone(),
                ..Default::default()
            };
            let paths = blob.labels.keys().map(|k| format!("labels.{k}")).collect();
            engine
                .content()
                .update(
                    engine
                        .req_leased(
                            containerd_client::services::v1::UpdateRequest {
                                info: Some(info),
                                update_mask: Some(prost_types::FieldMask { paths }),
                            },
                            lease,
                        )
                        .map_err(|e| e.to_string())?,
                )
                .await
                .map_err(|s| format!("content.update: {}", s.message()))?;
        }
        return Ok(());
    }
    let reference = format!("swarm-rs-pull-{}-{}", crate::token(), blob.desc.digest);
    let total = blob.data.len() as i64;
    let mut msgs = Vec::new();
    let mut offset = 0usize;
    for chunk in blob.data.chunks(WRITE_CHUNK) {
        msgs.push(WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: reference.clone(),
            total,
            expected: blob.desc.digest.clone(),
            offset: offset as i64,
            data: chunk.to_vec(),
            labels: HashMap::new(),
        });
        offset += chunk.len();
    }
    msgs.push(WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: reference.clone(),
        total,
        expected: blob.desc.digest.clone(),
        offset: offset as i64,
        data: Vec::new(),
        labels: blob.labels.clone(),
    });
    let n = msgs.len();
    let req = engine.req_leased(futures_util::stream::iter(msgs), lease).map_err(|e| e.to_string())?;
    let r = async {
        let mut resp =
            engine.content().write(req).await.map_err(|s| format!("content.write: {}", s.message()))?.into_inner();
        let mut seen = 0;
        while let Some(m) = resp.next().await {
            let m = m.map_err(|s| format!("content.write: {}", s.message()))?;
            seen += 1;
            if m.action == WriteAction::Commit as i32 && !m.digest.is_empty() && m.digest != blob.desc.digest {
                return Err(format!("content.write committed {} instead of {}", m.digest, blob.desc.digest));
            }
        }
        if seen < n {
            return Err(format!("content.write ended after {seen} of {n} answers"));
        }
        Ok(())
    }
    .await;
    if let Err(e) = &r {
        if blob_exists(engine, &blob.desc.digest).await.unwrap_or(false) && e.contains("already exists") {
            return Ok(());
        }
        let _ = engine.content().abort(engine.req(AbortRequest { r#ref: reference })).await;
    }
    r
}

/// How pulls authenticate and whom they trust.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullOptions {
    /// Credentials by registry.
    pub credentials: Credentials,
    /// Extra root certificates (PEM texts) trusted for HTTPS registries,
    /// next to Mozilla's (`webpki-roots`): a private registry's CA.
    pub extra_roots_pem: Vec<String>,
}

/// Pulls `image` from its registry into the engine's namespace (content
/// and image record; unpacking is the caller's). See the module docs.
pub async fn pull(engine: &Engine, image: &str, options: &PullOptions) -> Result<(), RuntimeError> {
    let t = target(image)?;
    let credentials = &options.credentials;
    let tls = crate::tls::client_config(&options.extra_roots_pem)
        .map_err(|e| RuntimeError::InvalidConfig(format!("pulling image {image}: {e}")))?;
    let creds = credentials
        .get(&t.registry)
        .or_else(|| if t.registry == "docker.io" { credentials.get("index.docker.io") } else { None });
    info!(image, name = %t.name, endpoint = %t.endpoint, repository = %t.repository, "pulling image");
    let mut d = download(image, &t, creds, tls).await?;
    let lease = lease_create(engine, image).await?;
    let r = async {
        for l in &d.layers {
            if blob_exists(engine, &l.digest).await.map_err(|s| status_err("content.info", &l.digest, s))? {
                debug!(image, digest = %l.digest, "layer already in the content store");
                continue;
            }
            let step = format!("GET layer blob {}", l.digest);
            let resp = d
                .session
                .open(&format!("/v2/{}/blobs/{}", t.repository, l.digest), None)
                .await
                .map_err(|e| pull_err(image, &step, e))?;
            if !resp.status().is_success() {
                return Err(pull_err(image, &step, format!("status {}", resp.status())));
            }
            write_stream(engine, &lease, l, resp)
                .await
                .map_err(|e| pull_err(image, &format!("streaming layer {} into the content store", l.digest), e))?;
            debug!(image, digest = %l.digest, bytes = l.size, "layer written and verified");
        }
        store_under(engine, &lease, image, &t.name, &d.docs, &d.top).await
    }
    .await;
    lease_end(engine, &lease, r.is_err()).await;
    r?;
    info!(image, name = %t.name, digest = %d.top.digest, layers = d.layers.len(), "image pulled");
    Ok(())
}

/// Creates the lease a pull or store writes under.
async fn lease_create(engine: &Engine, image: &str) -> Result<String, RuntimeError> {
    let lease = format!("swarm-rs-pull-{}", crate::token());
    let mut lease_labels = HashMap::new();
    // Expire on its own should this process die before deleting it.
    lease_labels.insert("containerd.io/gc.expire".to_string(), expire_in(Duration::from_secs(3600)));
    engine
        .leases()
        .create(engine.req(LeaseCreateRequest { id: lease.clone(), labels: lease_labels }))
        .await
        .map_err(|s| status_err(&format!("pulling image {image}: leases.create"), "", s))?;
    Ok(lease)
}

/// Deletes the lease: on success the image record holds everything; on
/// failure (`failed`) synchronously, so the collector takes what was written.
async fn lease_end(engine: &Engine, lease: &str, failed: bool) {
    let req = LeaseDeleteRequest { id: lease.to_string(), sync: failed };
    if let Err(s) = engine.leases().delete(engine.req(req)).await {
        warn!(lease, error = %s.message(), "cannot delete the pull lease (it expires in an hour)");
    }
}

/// Writes `blobs` (children before parents) through the content service
/// and creates the image record `name` targeting `top`, all under one
/// lease. On failure the lease is deleted synchronously, so nothing
/// written stays (an open ingest is aborted too).
pub async fn store(
    engine: &Engine,
    image: &str,
    name: &str,
    blobs: &[Blob],
    top: &Descriptor,
) -> Result<(), RuntimeError> {
    let lease = lease_create(engine, image).await?;
    let r = store_under(engine, &lease, image, name, blobs, top).await;
    lease_end(engine, &lease, r.is_err()).await;
    r
}

async fn store_under(
    engine: &Engine,
    lease: &str,
    image: &str,
    name: &str,
    blobs: &[Blob],
    top: &Descriptor,
) -> Result<(), RuntimeError> {
    for b in blobs {
        write_blob(engine, lease, b)
            .await
            .map_err(|e| pull_err(image, &format!("writing {} to the content store", b.desc.digest), e))?;
    }
    let img = Image { name: name.to_string(), target: Some(top.clone()), ..Default::default() };
    let req = engine.req_leased(CreateImageRequest { image: Some(img), ..Default::default() }, lease)?;
    match engine.images().create(req).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            warn!(image, name, "image record appeared during the pull; keeping it");
            Ok(())
        }
        Err(s) => Err(pull_err(image, &format!("images.create {name}"), s.message())),
    }
}

/// Streams one layer from the registry's response into the content store
/// (1 MiB messages), hashing it on the way: the commit is sent only when
/// the size and sha256 match the descriptor (containerd checks the digest
/// again); otherwise the ingest is aborted.
async fn write_stream(engine: &Engine, lease: &str, desc: &Descriptor, resp: Open) -> Result<(), String> {
    if !desc.digest.starts_with("sha256:") {
        return Err(format!("digest {} is not sha256 (the only algorithm supported)", desc.digest));
    }
    let reference = format!("swarm-rs-pull-{}-{}", crate::token(), desc.digest);
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(2);
    let outgoing = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let req = engine.req_leased(outgoing, lease).map_err(|e| e.to_string())?;
    let mut client = engine.content();
    let receive = async {
        let mut answers = client.write(req).await.map_err(|s| format!("content.write: {}", s.message()))?.into_inner();
        let mut committed = false;
        while let Some(m) = answers.next().await {
            let m = m.map_err(|s| format!("content.write: {}", s.message()))?;
            if m.action == WriteAction::Commit as i32 {
                if !m.digest.is_empty() && m.digest != desc.digest {
                    return Err(format!("content.write committed {} instead of {}", m.digest, desc.digest));
                }
                committed = true;
            }
        }
        Ok::<bool, String>(committed)
    };
    let msg = |action: WriteAction, offset: u64, data: Vec<u8>| WriteContentRequest {
        action: action as i32,
        r#ref: reference.clone(),
        total: desc.size,
        expected: desc.digest.clone(),
        offset: offset as i64,
        data,
        labels: HashMap::new(),
    };
    let feed = async move {
        let closed = |_| "the content service closed the write".to_string();
        let mut body = resp.into_body();
        let mut hasher = Sha256::new();
        let mut offset = 0u64;
        let mut buf = Vec::with_capacity(WRITE_CHUNK);
        loop {
            let frame = tokio::time::timeout(IDLE_TIMEOUT, body.frame())
                .await
                .map_err(|_| format!("the registry sent nothing for {IDLE_TIMEOUT:?}"))?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| format!("reading the blob: {e}"))?;
            let Ok(data) = frame.into_data() else { continue };
            hasher.update(&data);
            buf.extend_from_slice(&data);
            if desc.size > 0 && offset + buf.len() as u64 > desc.size as u64 {
                return Err(format!("the registry sent more than the descriptor's {} bytes", desc.size));
            }
            if buf.len() >= WRITE_CHUNK {
                let n = buf.len() as u64;
                tx.send(msg(WriteAction::Write, offset, std::mem::take(&mut buf))).await.map_err(closed)?;
                offset += n;
            }
        }
        if !buf.is_empty() {
            let n = buf.len() as u64;
            tx.send(msg(WriteAction::Write, offset, buf)).await.map_err(closed)?;
            offset += n;
        }
        if desc.size > 0 && offset != desc.size as u64 {
            return Err(format!("got {offset} bytes, the descriptor says {}", desc.size));
        }
        let got = format!("sha256:{}", hex(&hasher.finalize()));
        if got != desc.digest {
            return Err(format!("digest mismatch: expected {}, got {got}", desc.digest));
        }
        tx.send(msg(WriteAction::Commit, offset, Vec::new())).await.map_err(closed)?;
        Ok(())
    };
    let (fed, received) = tokio::join!(feed, receive);
    let r = match (fed, received) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(false)) => Err("content.write ended without confirming the commit".to_string()),
        (Ok(()), Ok(true)) => Ok(()),
    };
    if r.is_err() {
        let _ = engine.content().abort(engine.req(AbortRequest { r#ref: reference })).await;
    }
    r
}

/// RFC 3339 time `d` from now (UTC), for `containerd.io/gc.expire`.
fn expire_in(d: Duration) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|n| n.as_secs())
        .unwrap_or(0)
        .saturating_add(d.as_secs());
    rfc3339(secs)
}

/// RFC 3339 UTC time of `secs` since the Unix epoch.
fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_docker() {
        let t = target("busybox").unwrap();
        assert_eq!(t.endpoint, "https://registry-1.docker.io");
        assert_eq!(t.repository, "library/busybox");
        assert_eq!(t.reference, "latest");
        assert_eq!(t.registry, "docker.io");
        assert_eq!(t.name, "docker.io/library/busybox:latest");
        let t = target("127.0.0.1:5000/team/app:1").unwrap();
        assert_eq!(t.endpoint, "http://127.0.0.1:5000");
        assert_eq!(t.repository, "team/app");
        assert_eq!(t.reference, "1");
        let t = target("localhost:5000/app").unwrap();
        assert_eq!((t.endpoint.as_str(), t.repository.as_str()), ("http://localhost:5000", "app"));
        let d = format!("sha256:{}", "a".repeat(64));
        let t = target(&format!("ghcr.io/o/r:1@{d}")).unwrap();
        assert_eq!((t.endpoint.as_str(), t.reference.as_str()), ("https://ghcr.io", d.as_str()));
        assert!(is_insecure("[::1]:5000"));
        assert!(!is_insecure("10.0.0.1:5000"));
    }

    #[test]
    fn challenges_parse() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!((c.scheme.as_str(), c.params["realm"].as_str()), ("basic", "Registry Realm"));
        assert_eq!(parse_challenge("Bearer realm=x, service=y").unwrap().params["service"], "y");
        assert!(parse_challenge("").is_none());
        assert!(parse_challenge(r#"Bearer realm="open"#).is_none());
    }

    #[test]
    fn digests_are_verified() {
        let d = sha256_digest(b"abc");
        assert!(verify("x", b"abc", &d, 3).is_ok());
        assert!(verify("x", b"abd", &d, 3).unwrap_err().contains("digest mismatch"));
        assert!(verify("x", b"abc", &d, 4).unwrap_err().contains("descriptor says 4"));
        assert!(verify("x", b"abc", "sha512:00", 0).unwrap_err().contains("not sha256"));
        assert_eq!(query_escape("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
        let credentials = RegistryCredentials { username: "u".into(), password: "secret".into() };
        assert!(!format!("{credentials:?}").contains("secret"));
    }

    #[test]
    fn expiry_is_rfc3339() {
        let e = expire_in(Duration::ZERO);
        assert_eq!(e.len(), 20, "{e}");
        assert!(e.starts_with("20") && e.ends_with('Z') && e.as_bytes()[10] == b'T', "{e}");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
