//! Pulls through a registry of the test's own: swarm-conformance's test
//! registry, a Docker Registry HTTP API v2 server on 127.0.0.1 (plain HTTP,
//! as for any loopback registry) serving the busybox fixture image, with either the Bearer
//! token flow (credentials checked by the token endpoint, an OCI index,
//! blobs redirected to a storage path) or basic auth (a Docker schema2
//! manifest, reached as `localhost`). Each test pulls into a fresh
//! namespace, then runs a task from the pulled image. Also: a layer whose
//! bytes do not match its digest is rejected and leaves nothing behind;
//! wrong credentials give a clear error.
//!
//! Where containerd is not reachable every test records a skip (listed at the
//! end of `scripts/test.sh`), except under CI, where it fails.

use std::collections::HashMap;
use std::path::PathBuf;
use swarm_conformance::registry::{Auth, Image, ManifestFormat, TestCa, TestRegistry};
use swarm_core::runtime::{ContainerConfig, Runtime, RuntimeError};
use swarm_runtime_containerd::engine::Engine;
use swarm_runtime_containerd::fixture::{busybox_image, remove_image};
use swarm_runtime_containerd::image::oci_arch;
use swarm_runtime_containerd::pull::{Blob, sha256_digest, store};
use swarm_runtime_containerd::{BridgeConfig, ContainerdConfig, ContainerdRuntime, RegistryCredentials};

const USER: &str = "puller";
const PASSWORD: &str = "s3cret";
const TOKEN: &str = "tok-123";
const REPO: &str = "team/busybox";

/// The busybox image as an OCI index + manifest (`oci`) or a Docker
/// schema2 manifest; `corrupt` serves a layer that does not match its
/// digest.
async fn image(oci: bool, corrupt: bool) -> Image {
    let parts = busybox_image().await.expect("building the busybox fixture image");
    let format = if oci { ManifestFormat::Oci } else { ManifestFormat::DockerSchema2 };
    let mut image = Image::new(format, parts.config.clone(), vec![parts.layer.clone()]);
    if oci {
        image = image.in_index(oci_arch());
    }
    if corrupt {
        image = image.corrupt_layer(0);
    }
    image
}

/// The Bearer token flow, as Docker Hub: the token endpoint takes
/// `USER`/`PASSWORD` and hands out `TOKEN`.
fn bearer() -> Auth {
    Auth::bearer(USER, PASSWORD, TOKEN, "test-registry")
}

/// The registry on 127.0.0.1 with `image` as `REPO:1`.
async fn start_registry(image: Image, auth: Auth) -> TestRegistry {
    let reg = TestRegistry::start(auth).await.expect("starting the test registry");
    reg.push(REPO, "1", &image).expect("loading the image");
    reg
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
    let reg = start_registry(image(true, false).await, bearer()).await;
    let image = format!("{}/{REPO}:1", reg.addr());
    let Some(rt) = runtime("swarm-rs-ctd-test-pull-bearer", &image, Some(PASSWORD)).await else { return };
    rt.prepare(&config(&image, &["true"])).await.unwrap();
    let log = reg.requests();
    assert!(log.iter().any(|p| p.starts_with("/token?")), "no token request: {log:?}");
    assert!(log.iter().any(|p| p.starts_with("/storage/")), "blob redirect not followed: {log:?}");
    assert!(ctr(&rt, &["images", "ls", "-q"]).lines().any(|l| l == image), "image record missing");
    assert!(!ctr(&rt, &["leases", "ls"]).contains("swarm-rs-pull"), "pull lease left behind");
    run_from(&rt, &image).await;
    // Concurrent prepares of the same image (replicas) pull it once.
    remove_image(&rt.config().address, rt.namespace(), &image).await.unwrap();
    let tag_fetches = || reg.requests().iter().filter(|p| p.ends_with("/manifests/1")).count();
    let before = tag_fetches();
    let c = config(&image, &["true"]);
    let all = futures_util::future::join_all((0..4).map(|_| rt.prepare(&c))).await;
    assert!(all.iter().all(|r| r.is_ok()), "{all:?}");
    // The tag is fetched twice by one pull: anonymously (401), then with the token.
    assert_eq!(tag_fetches() - before, 2, "{:?}", reg.requests());
    // A second prepare finds it in the store: no registry traffic.
    let before = reg.requests().len();
    rt.prepare(&config(&image, &["true"])).await.unwrap();
    assert_eq!(reg.requests().len(), before);
    remove_image(&rt.config().address, rt.namespace(), &image).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_with_basic_auth_a_docker_schema2_manifest_and_runs_it() {
    let reg = start_registry(image(false, false).await, Auth::basic(USER, PASSWORD)).await;
    let image = format!("localhost:{}/{REPO}:1", reg.addr().port());
    let Some(rt) = runtime("swarm-rs-ctd-test-pull-basic", &image, Some(PASSWORD)).await else { return };
    rt.prepare(&config(&image, &["true"])).await.unwrap();
    assert!(!reg.requests().iter().any(|p| p.starts_with("/token")));
    run_from(&rt, &image).await;
    remove_image(&rt.config().address, rt.namespace(), &image).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_not_matching_its_digest_is_rejected_and_nothing_stays() {
    let reg = start_registry(image(true, true).await, bearer()).await;
    let image = format!("{}/{REPO}:1", reg.addr());
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
    let reg = start_registry(image(false, false).await, bearer()).await;
    let image = format!("{}/{REPO}:1", reg.addr());
    let Some(rt) = runtime("swarm-rs-ctd-test-pull-denied", &image, Some("wrong")).await else { return };
    let err = rt.prepare(&config(&image, &["true"])).await.unwrap_err().to_string();
    assert!(err.contains(&image) && err.contains("token request") && err.contains("401"), "{err}");
    assert!(ctr(&rt, &["images", "ls", "-q"]).trim().is_empty());
    let missing = format!("{}/{REPO}:2", reg.addr());
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
    let reg = start_registry(image(true, false).await, Auth::Anonymous).await;
    let image = format!("{}/{REPO}:1", reg.addr());
    let Some(rt) = runtime("swarm-rs-ctd-test-pull-anon", &image, None).await else { return };
    rt.prepare(&config(&image, &["true"])).await.unwrap();
    assert!(ctr(&rt, &["images", "ls", "-q"]).lines().any(|l| l == image), "image record missing");
    let log = reg.requests();
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
    let ca = TestCa::for_ip(GATEWAY.parse().unwrap()).expect("the test CA (needs openssl)");
    let reg = TestRegistry::start_https(GATEWAY.parse().unwrap(), bearer(), &ca).await.unwrap();
    reg.push(REPO, "1", &image(true, false).await).unwrap();
    let image = format!("{}/{REPO}:1", reg.addr());
    let untrusted = runtime(ns, &image, Some(PASSWORD)).await.unwrap();
    let err = untrusted.prepare(&config(&image, &["true"])).await.unwrap_err().to_string();
    assert!(err.contains("tls handshake") && err.contains(&image), "{err}");
    let rt = runtime_with(ns, &image, Some(PASSWORD), vec![ca.ca_pem().to_string()]).await.unwrap();
    rt.prepare(&config(&image, &["true"])).await.unwrap();
    let log = reg.requests();
    assert!(log.iter().any(|p| p.starts_with("/token?")), "{log:?}");
    run_from(&rt, &image).await;
    remove_image(&rt.config().address, rt.namespace(), &image).await.unwrap();
}
