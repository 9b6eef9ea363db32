//! Pull with credentials, against a registry of our own: a minimal
//! Docker Registry HTTP API v2 server in the test (basic auth, one image
//! made of the fixture's rootfs as an OCI manifest, config and one
//! uncompressed layer), on 127.0.0.1, which the Engine treats as an
//! insecure (plain HTTP) registry by default.

mod common;

use common::{TEST_LABEL, engine_runtime};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use swarm_core::model::Labels;
use swarm_core::runtime::{Runtime, RuntimeError};
use swarm_runtime_docker::{DockerRuntime, DockerRuntimeOptions, fixture};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() { A[((n >> (18 - 6 * i)) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

/// What the registry serves: path -> (content type, body).
struct Registry {
    files: HashMap<String, (String, Vec<u8>)>,
    auth: String,
}

async fn serve_one(reg: Arc<Registry>, mut conn: tokio::net::TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        // The Engine tries TLS first; close at once so it falls back to HTTP
        // (else it waits for its TLS handshake timeout).
        if buf.first() == Some(&0x16) {
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.lines();
    let first: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let (method, path) = (first.first().copied().unwrap_or(""), first.get(1).copied().unwrap_or(""));
    let authorized = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| k.eq_ignore_ascii_case("authorization") && v.trim() == reg.auth)
    });
    let (status, headers, body): (&str, Vec<(String, String)>, Vec<u8>) = if !authorized {
        ("401 Unauthorized", vec![("WWW-Authenticate".into(), "Basic realm=\"swt\"".into())], b"{}".to_vec())
    } else if path == "/v2/" {
        ("200 OK", vec![("Content-Type".into(), "application/json".into())], b"{}".to_vec())
    } else if let Some((ct, data)) = reg.files.get(path) {
        (
            "200 OK",
            vec![("Content-Type".into(), ct.clone()), ("Docker-Content-Digest".into(), sha256(data))],
            data.clone(),
        )
    } else {
        (
            "404 Not Found",
            vec![("Content-Type".into(), "application/json".into())],
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#.to_vec(),
        )
    };
    let mut resp = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    resp.push_str("Docker-Distribution-API-Version: registry/2.0\r\n");
    for (k, v) in headers {
        resp.push_str(&format!("{k}: {v}\r\n"));
    }
    resp.push_str("\r\n");
    let _ = conn.write_all(resp.as_bytes()).await;
    if method != "HEAD" {
        let _ = conn.write_all(&body).await;
    }
    let _ = conn.shutdown().await;
}

/// Starts the registry with the fixture image as `repo:tag`; returns its address.
async fn start_registry(repo: &str, tag: &str, user: &str, pass: &str) -> SocketAddr {
    let layer = fixture::rootfs_tarball(&fixture::build_workload().expect("workload"));
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": ["/workload"], "Env": [format!("PORT={}", fixture::PORT)] },
        "rootfs": { "type": "layers", "diff_ids": [sha256(&layer)] },
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer), "size": layer.len() }],
    })
    .to_string()
    .into_bytes();
    let mut files = HashMap::new();
    let oct = "application/octet-stream".to_string();
    files.insert(format!("/v2/{repo}/blobs/{}", sha256(&layer)), (oct.clone(), layer));
    files.insert(format!("/v2/{repo}/blobs/{}", sha256(&config)), (oct, config));
    let mt = "application/vnd.oci.image.manifest.v1+json".to_string();
    files.insert(format!("/v2/{repo}/manifests/{}", sha256(&manifest)), (mt.clone(), manifest.clone()));
    files.insert(format!("/v2/{repo}/manifests/{tag}"), (mt, manifest));
    let reg = Arc::new(Registry { files, auth: format!("Basic {}", base64(format!("{user}:{pass}").as_bytes())) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve_one(reg.clone(), conn));
        }
    });
    addr
}

fn creds(registry: &str, user: &str, pass: &str) -> DockerRuntimeOptions {
    let mut o = DockerRuntimeOptions::default();
    o.registry_auth.insert(
        registry.to_string(),
        bollard::auth::DockerCredentials {
            username: Some(user.into()),
            password: Some(pass.into()),
            serveraddress: Some(registry.into()),
            ..Default::default()
        },
    );
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_pulls_with_the_registrys_credentials() {
    let Some(rt) = engine_runtime(DockerRuntimeOptions::default()).await else { return };
    let prefix = format!("swt-{}-pull", std::process::id());
    let repo = format!("{prefix}/workload");
    let addr = start_registry(&repo, "v1", "alice", "s3cret").await;
    let registry = addr.to_string();
    let image = format!("{registry}/{repo}:v1");
    let body = {
        let (rt, image, registry, prefix) = (rt.clone(), image.clone(), registry.clone(), prefix.clone());
        async move {
            let mut cfg = fixture::workload_config(&image, &format!("{prefix}-web.1"), "pulled-1");
            cfg.labels.insert(TEST_LABEL.into(), prefix.clone());
            // No credentials, then wrong ones: a clear ImageNotFound, nothing pulled.
            for opts in [DockerRuntimeOptions::default(), creds(&registry, "alice", "wrong")] {
                let bad = DockerRuntime::connect(opts).unwrap();
                match bad.prepare(&cfg).await {
                    Err(RuntimeError::ImageNotFound { reason, .. }) => {
                        assert!(reason.contains(&format!("pulling it from {registry} failed")), "{reason}");
                    }
                    other => panic!("expected ImageNotFound, got {other:?}"),
                }
            }
            assert!(rt.client().inspect_image(&image).await.is_err());
            // The right credentials: pulled, and it runs.
            let good = DockerRuntime::connect(creds(&registry, "alice", "s3cret")).unwrap();
            good.prepare(&cfg).await.expect("pull with credentials");
            let id = good.create(&cfg).await.unwrap();
            good.start(&id).await.unwrap();
            let ip = good.inspect(&id).await.unwrap().addresses[0];
            let mut answer = Err(String::new());
            for _ in 0..100 {
                answer = fixture::http_get(SocketAddr::new(ip, fixture::PORT), "/id", Duration::from_secs(2)).await;
                if answer.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(answer, Ok((200, "pulled-1".to_string())));
        }
    };
    let result = tokio::spawn(body).await;
    let mut sel = Labels::new();
    sel.insert(TEST_LABEL.into(), prefix.clone());
    for c in rt.list(&sel).await.unwrap_or_default() {
        let _ = rt.remove(&c.id).await;
    }
    let _ = rt.client().remove_image(&image, None::<bollard::query_parameters::RemoveImageOptions>, None).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}
