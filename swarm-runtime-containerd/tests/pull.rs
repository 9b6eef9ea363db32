//! Pulls through a registry of the test's own: a minimal Docker Registry
//! HTTP API v2 server on 127.0.0.1 (plain HTTP, as for any loopback
//! registry) serving the busybox fixture image, with either the Bearer
//! token flow (credentials checked by the token endpoint, an OCI index,
//! blobs redirected to a storage path) or basic auth (a Docker schema2
//! manifest, reached as `localhost`). Each test pulls into a fresh
//! namespace, then runs a task from the pulled image. Also: a layer whose
//! bytes do not match its digest is rejected and leaves nothing behind;
//! wrong credentials give a clear error.
//!
//! Where containerd is not reachable every test records a skip (listed at the
//! end of `scripts/test.sh`), except under CI, where it fails.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use swarm_core::runtime::{ContainerConfig, Runtime, RuntimeError};
use swarm_runtime_containerd::engine::Engine;
use swarm_runtime_containerd::fixture::{busybox_image, remove_image};
use swarm_runtime_containerd::image::oci_arch;
use swarm_runtime_containerd::pull::{Blob, sha256_digest, store};
use swarm_runtime_containerd::{BridgeConfig, ContainerdConfig, ContainerdRuntime, RegistryCredentials};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const USER: &str = "puller";
const PASSWORD: &str = "s3cret";
const TOKEN: &str = "tok-123";
const REPO: &str = "team/busybox";

fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

#[derive(Clone, Copy, PartialEq)]
enum Auth {
    Anonymous,
    Basic,
    Bearer,
}

/// The registry: what it serves (path -> content type, body), how it
/// authenticates, and the request log.
struct Registry {
    files: HashMap<String, (String, Vec<u8>)>,
    auth: Auth,
    addr: SocketAddr,
    scheme: &'static str,
    log: Mutex<Vec<String>>,
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

fn response(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

impl Registry {
    fn answer(&self, path: &str, headers: &HashMap<String, String>) -> Vec<u8> {
        self.log.lock().unwrap().push(path.to_string());
        let authz = headers.get("authorization").cloned().unwrap_or_default();
        if let Some(query) = path.strip_prefix("/token?") {
            // The token endpoint: credentials required, scope checked.
            if authz != basic(USER, PASSWORD) {
                return response("401 Unauthorized", &[], b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}");
            }
            if !query.contains("scope=repository%3Ateam%2Fbusybox%3Apull") || !query.contains("service=test-registry") {
                return response("400 Bad Request", &[], b"bad scope or service");
            }
            return response(
                "200 OK",
                &[("Content-Type", "application/json".into())],
                format!("{{\"token\":\"{TOKEN}\"}}").as_bytes(),
            );
        }
        if let Some(digest) = path.strip_prefix("/storage/") {
            // Blob storage the registry redirects to: no auth.
            let key = format!("/v2/{REPO}/blobs/{digest}");
            return match self.files.get(&key) {
                Some((ct, body)) => response("200 OK", &[("Content-Type", ct.clone())], body),
                None => response("404 Not Found", &[], b""),
            };
        }
        let authorized = match self.auth {
            Auth::Anonymous => true,
            Auth::Basic => authz == basic(USER, PASSWORD),
            Auth::Bearer => authz == format!("Bearer {TOKEN}"),
        };
        if path.starts_with("/v2/") && !authorized {
            let challenge = match self.auth {
                Auth::Anonymous | Auth::Basic => "Basic realm=\"test\"".to_string(),
                Auth::Bearer => format!(
                    "Bearer realm=\"{}://{}/token\",service=\"test-registry\",scope=\"repository:{REPO}:pull\"",
                    self.scheme, self.addr
                ),
            };
            return response("401 Unauthorized", &[("WWW-Authenticate", challenge)], b"{\"errors\":[]}");
        }
        if self.auth == Auth::Bearer && path.contains("/blobs/") {
            let digest = path.rsplit('/').next().unwrap_or("");
            return response("307 Temporary Redirect", &[("Location", format!("/storage/{digest}"))], b"");
        }
        match self.files.get(path) {
            Some((ct, body)) => {
                let mut h = vec![("Content-Type", ct.clone())];
                if path.contains("/manifests/") {
                    h.push(("Docker-Content-Digest", sha256(body)));
                }
                response("200 OK", &h, body)
            }
            None => response("404 Not Found", &[], b"{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\"}]}"),
        }
    }
}

async fn serve_one<IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(reg: Arc<Registry>, mut conn: IO) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.lines();
    let first: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let path = first.get(1).copied().unwrap_or("").to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let out = reg.answer(&path, &headers);
    let _ = conn.write_all(&out).await;
    let _ = conn.shutdown().await;
}

/// What the fixture image looks like on the registry.
struct Served {
    files: HashMap<String, (String, Vec<u8>)>,
}

/// The busybox image as an OCI index + manifest (`oci`) or a Docker
/// schema2 manifest; `corrupt` serves a layer that does not match its
/// digest.
async fn image_files(oci: bool, corrupt: bool) -> Served {
    let parts = busybox_image().await.expect("building the busybox fixture image");
    let (m_type, c_type, l_type) = if oci {
        (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar",
        )
    } else {
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar",
        )
    };
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": m_type,
        "config": {"mediaType": c_type, "digest": sha256(&parts.config), "size": parts.config.len()},
        "layers": [{"mediaType": l_type, "digest": sha256(&parts.layer), "size": parts.layer.len()}],
    }))
    .unwrap();
    let mut files = HashMap::new();
    let blob = |d: &str| format!("/v2/{REPO}/blobs/{d}");
    let mut layer = parts.layer.clone();
    if corrupt {
        let i = layer.len() / 2;
        layer[i] ^= 0xff;
    }
    files.insert(blob(&sha256(&parts.layer)), ("application/octet-stream".to_string(), layer));
    files.insert(blob(&sha256(&parts.config)), ("application/octet-stream".to_string(), parts.config.clone()));
    files.insert(format!("/v2/{REPO}/manifests/{}", sha256(&manifest)), (m_type.to_string(), manifest.clone()));
    if oci {
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": m_type, "digest": format!("sha256:{}", "0".repeat(64)), "size": 10,
                 "platform": {"os": "linux", "architecture": "s390x"}},
                {"mediaType": m_type, "digest": sha256(&manifest), "size": manifest.len(),
                 "platform": {"os": "linux", "architecture": oci_arch()}},
            ],
        }))
        .unwrap();
        files.insert(format!("/v2/{REPO}/manifests/1"), ("application/vnd.oci.image.index.v1+json".into(), index));
    } else {
        files.insert(format!("/v2/{REPO}/manifests/1"), (m_type.to_string(), manifest));
    }
    Served { files }
}

async fn start_registry(served: Served, auth: Auth) -> Arc<Registry> {
    start_registry_on(served, auth, "127.0.0.1", None).await
}

/// The registry on `ip`, in HTTPS when `tls` is given.
async fn start_registry_on(served: Served, auth: Auth, ip: &str, tls: Option<TlsAcceptor>) -> Arc<Registry> {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let reg = Arc::new(Registry { files: served.files, auth, addr, scheme, log: Mutex::new(Vec::new()) });
    let r = reg.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let r = r.clone();
            match tls.clone() {
                None => drop(tokio::spawn(serve_one(r, conn))),
                Some(acceptor) => drop(tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(conn).await {
                        serve_one(r, stream).await;
                    }
                })),
            }
        }
    });
    reg
}

/// A CA and a server certificate for `ip` signed by it (openssl CLI):
/// the CA's PEM and the server's acceptor.
fn test_pki(ip: &str) -> (String, TlsAcceptor) {
    let dir = std::env::temp_dir().join(format!("swarm-ctd-pki-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sh = |args: &[&str]| {
        let out = std::process::Command::new("openssl").current_dir(&dir).args(args).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    sh(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=swarm test ca", "-days", "2"],
    ]
    .concat());
    sh(&[&["req"][..], &ec, &["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", &format!("/CN={ip}")]].concat());
    std::fs::write(
        dir.join("ext"),
        format!("subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    sh(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let leaf = CertificateDer::from_pem_file(dir.join("leaf.pem")).unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf], key)
        .unwrap();
    (ca, TlsAcceptor::from(Arc::new(cfg)))
}

/// The runtime on a fresh namespace (its image removed), or `None` after
/// a recorded skip when containerd is not reachable (a panic under CI).
async fn runtime(namespace: &str, image: &str, password: Option<&str>) -> Option<ContainerdRuntime> {
    runtime_with(namespace, image, password, Vec::new()).await
}

async fn runtime_with(
    namespace: &str,
    image: &str,
    password: Option<&str>,
    roots: Vec<String>,
) -> Option<ContainerdRuntime> {
    let mut cfg = ContainerdConfig::new(namespace);
    cfg.registry.extra_roots_pem = roots;
    cfg.bridge = BridgeConfig { name: "swctdtest0".into(), subnet: "10.214.0.0".parse().unwrap(), prefix: 22 };
    cfg.state_dir = PathBuf::from("/var/lib/swarm-rs-containerd-test").join(namespace);
    let registry = image.split('/').next().unwrap().to_string();
    if let Some(password) = password {
        cfg.registry
            .credentials
            .insert(registry, RegistryCredentials { username: USER.into(), password: password.into() });
    }
    match ContainerdRuntime::connect(cfg).await {
        Ok(rt) => {
            remove_image(&rt.config().address, namespace, image).await.unwrap();
            Some(rt)
        }
        Err(e) => {
            swarm_conformance::skip::skip(&format!("needs containerd (set CONTAINERD_ADDRESS): {e}"));
            None
        }
    }
}

fn ctr(rt: &ContainerdRuntime, args: &[&str]) -> String {
    let out = std::process::Command::new("ctr")
        .arg("--address")
        .arg(&rt.config().address)
        .args(["-n", rt.namespace()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn config(image: &str, cmd: &[&str]) -> ContainerConfig {
    let mut c = ContainerConfig { name: "pulled.1.x".into(), ..Default::default() };
    c.spec.image = image.into();
    c.spec.command = cmd.iter().map(|s| s.to_string()).collect();
    c
}

/// Runs a task from the pulled image and checks its output and exit code.
async fn run_from(rt: &ContainerdRuntime, image: &str) {
    let c = config(image, &["sh", "-c", "echo pulled-and-running; cat /www/index.html; exit 3"]);
    let id = rt.create(&c).await.unwrap();
    rt.start(&id).await.unwrap();
    let code = rt.wait(&id).await.unwrap().code;
    let logs = rt.logs(&id, None).await.unwrap();
    rt.remove(&id).await.unwrap();
    assert_eq!(code, 3);
    let text: Vec<String> = logs.iter().map(|l| l.line.clone()).collect();
    assert!(text.iter().any(|l| l.contains("pulled-and-running")), "{text:?}");
    assert!(text.iter().any(|l| l.contains("hello from swarm-runtime-containerd")), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_with_a_bearer_token_from_an_oci_index_and_runs_it() {
    let reg = start_registry(image_files(true, false).await, Auth::Bearer).await;
    let image = format!("{}/{REPO}:1", reg.addr);
    let Some(rt) = runtime("swarm-rs-ctd-test-pull-bearer", &image, Some(PASSWORD)).await else { return };
    rt.prepare(&config(&image, &["true"])).await.unwrap();
    let log = reg.log.lock().unwrap().clone();
    assert!(log.iter().any(|p| p.starts_with("/token?")), "no token request: {log:?}");
    assert!(log.iter().any(|p| p.starts_with("/storage/")), "blob redirect not followed: {log:?}");
    assert!(ctr(&rt, &["images", "ls", "-q"]).lines().any(|l| l == image), "image record missing");
    assert!(!ctr(&rt, &["leases", "ls"]).contains("swarm-rs-pull"), "pull lease left behind");
    run_from(&rt, &image).await;
    // Concurrent prepares of the same image (replicas) pull it once.
    remove_image(&rt.config().address, rt.namespace(), &image).await.unwrap();
    let tag_fetches = || reg.log.lock().unwrap().iter().filter(|p| p.ends_with("/manifests/1")).count();
    let before = tag_fetches();
    let c = config(&image, &["true"]);
    let all = futures_util::future::join_all((0..4).map(|_| rt.prepare(&c))).await;
    assert!(all.iter().all(|r| r.is_ok()), "{all:?}");
    // The tag is fetched twice by one pull: anonymously (401), then with the token.
    assert_eq!(tag_fetches() - before, 2, "{:?}", reg.log.lock().unwrap());
    // A second prepare finds it in the store: no registry traffic.
    let before = reg.log.lock().unwrap().len();
    rt.prepare(&config(&image, &["true"])).await.unwrap();
    assert_eq!(reg.log.lock().unwrap().len(), before);
    remove_image(&rt.config().address, rt.namespace(), &image).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_with_basic_auth_a_docker_schema2_manifest_and_runs_it() {
    let reg = start_registry(image_files(false, false).await, Auth::Basic).await;
    let image = format!("localhost:{}/{REPO}:1", reg.addr.port());
    let Some(rt) = runtime("swarm-rs-ctd-test-pull-basic", &image, Some(PASSWORD)).await else { return };
    rt.prepare(&config(&image, &["true"])).await.unwrap();
    assert!(!reg.log.lock().unwrap().iter().any(|p| p.starts_with("/token")));
    run_from(&rt, &image).await;
    remove_image(&rt.config().address, rt.namespace(), &image).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_not_matching_its_digest_is_rejected_and_nothing_stays() {
    let reg = start_registry(image_files(true, true).await, Auth::Bearer).await;
    let image = format!("{}/{REPO}:1", reg.addr);
    let Some(rt) = runtime("swarm-rs-ctd-test-pull-bad", &image, Some(PASSWORD)).await else { return };
    let err = rt.prepare(&config(&image, &["true"])).await.unwrap_err().to_string();
    eprintln!("pull error: {err}");
    assert!(err.contains("digest mismatch") && err.contains(&image) && err.contains("layer"), "{err}");
    assert!(ctr(&rt, &["images", "ls", "-q"]).trim().is_empty(), "an image record was left");
    assert!(ctr(&rt, &["content", "ls", "-q"]).trim().is_empty(), "content was left");
    assert!(!ctr(&rt, &["leases", "ls"]).contains("swarm-rs-pull"), "pull lease left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_missing_tags_give_clear_errors() {
    let reg = start_registry(image_files(false, false).await, Auth::Bearer).await;
    let image = format!("{}/{REPO}:1", reg.addr);
    let Some(rt) = runtime("swarm-rs-ctd-test-pull-denied", &image, Some("wrong")).await else { return };
    let err = rt.prepare(&config(&image, &["true"])).await.unwrap_err().to_string();
    assert!(err.contains(&image) && err.contains("token request") && err.contains("401"), "{err}");
    assert!(ctr(&rt, &["images", "ls", "-q"]).trim().is_empty());
    let missing = format!("{}/{REPO}:2", reg.addr);
    let rt = runtime("swarm-rs-ctd-test-pull-denied", &missing, Some(PASSWORD)).await.unwrap();
    match rt.prepare(&config(&missing, &["true"])).await {
        Err(RuntimeError::ImageNotFound { reason, .. }) => assert!(reason.contains("no manifest 2"), "{reason}"),
        other => panic!("expected ImageNotFound, got {other:?}"),
    }
    // Nothing listens: the registry is unreachable.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = format!("{}/{REPO}:1", closed.local_addr().unwrap());
    drop(closed);
    match rt.prepare(&config(&gone, &["true"])).await {
        Err(RuntimeError::ImageNotFound { reason, .. }) => assert!(reason.contains("unreachable"), "{reason}"),
        other => panic!("expected ImageNotFound, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_anonymously() {
    let reg = start_registry(image_files(true, false).await, Auth::Anonymous).await;
    let image = format!("{}/{REPO}:1", reg.addr);
    let Some(rt) = runtime("swarm-rs-ctd-test-pull-anon", &image, None).await else { return };
    rt.prepare(&config(&image, &["true"])).await.unwrap();
    assert!(ctr(&rt, &["images", "ls", "-q"]).lines().any(|l| l == image), "image record missing");
    let log = reg.log.lock().unwrap().clone();
    assert!(!log.iter().any(|p| p.starts_with("/token")), "{log:?}");
    remove_image(&rt.config().address, rt.namespace(), &image).await.unwrap();
}

/// A write that fails half-way (the second blob's bytes do not match its
/// descriptor, so containerd refuses the commit) leaves neither the first
/// blob, nor an image record, nor the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failing_half_way_leaves_nothing() {
    let ns = "swarm-rs-ctd-test-pull-half";
    let image = "127.0.0.1:1/team/half:1";
    let Some(rt) = runtime(ns, image, None).await else { return };
    let engine = Engine::connect(&rt.config().address, ns).await.unwrap();
    let good = bytes::Bytes::from(format!("first blob {}", std::process::id()));
    let bad_claim = sha256_digest(b"something else entirely");
    let blob = |data: bytes::Bytes, digest: String| Blob {
        desc: containerd_client::types::Descriptor {
            media_type: "application/octet-stream".into(),
            size: data.len() as i64,
            digest,
            ..Default::default()
        },
        data,
        labels: HashMap::new(),
    };
    let blobs = vec![blob(good.clone(), sha256_digest(&good)), blob(bytes::Bytes::from_static(b"other"), bad_claim)];
    let top = blobs[0].desc.clone();
    let err = store(&engine, image, "127.0.0.1:1/team/half:1", &blobs, &top).await.unwrap_err().to_string();
    eprintln!("store error: {err}");
    assert!(err.contains(image) && err.contains("writing"), "{err}");
    assert!(ctr(&rt, &["images", "ls", "-q"]).trim().is_empty(), "an image record was left");
    assert!(ctr(&rt, &["content", "ls", "-q"]).trim().is_empty(), "content was left");
    assert!(!ctr(&rt, &["leases", "ls"]).contains("swarm-rs-pull"), "pull lease left behind");
}

/// A registry that is not on loopback is spoken to in HTTPS: the test's
/// registry on the test bridge's gateway address with a certificate from a
/// CA of the test's own. Trusted through `extra_roots_pem` the pull works
/// (Bearer flow, index) and a task runs; without it the handshake fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_over_https_from_a_registry_off_loopback() {
    const GATEWAY: &str = "10.214.0.1";
    let ns = "swarm-rs-ctd-test-pull-https";
    // Connecting creates the test bridge (and its address) first.
    let probe = format!("{GATEWAY}:1/{REPO}:1");
    let Some(_) = runtime(ns, &probe, None).await else { return };
    let (ca, acceptor) = test_pki(GATEWAY);
    let reg = start_registry_on(image_files(true, false).await, Auth::Bearer, GATEWAY, Some(acceptor)).await;
    let image = format!("{}/{REPO}:1", reg.addr);
    let untrusted = runtime(ns, &image, Some(PASSWORD)).await.unwrap();
    let err = untrusted.prepare(&config(&image, &["true"])).await.unwrap_err().to_string();
    assert!(err.contains("tls handshake") && err.contains(&image), "{err}");
    let rt = runtime_with(ns, &image, Some(PASSWORD), vec![ca]).await.unwrap();
    rt.prepare(&config(&image, &["true"])).await.unwrap();
    let log = reg.log.lock().unwrap().clone();
    assert!(log.iter().any(|p| p.starts_with("/token?")), "{log:?}");
    run_from(&rt, &image).await;
    remove_image(&rt.config().address, rt.namespace(), &image).await.unwrap();
}
