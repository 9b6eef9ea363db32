//! Pull with credentials, against a registry of our own: swarm-conformance's
//! test registry (a Docker Registry HTTP API v2 server in the test process,
//! basic auth, one image made of the fixture's rootfs as an OCI manifest,
//! config and one uncompressed layer), on 127.0.0.1, which the Engine
//! treats as an insecure (plain HTTP) registry by default.

mod common;

use common::{TEST_LABEL, engine_runtime};
use std::net::SocketAddr;
use std::time::Duration;
use swarm_conformance::registry::{Auth, Image, ManifestFormat, TestRegistry, digest};
use swarm_core::model::Labels;
use swarm_core::runtime::{Runtime, RuntimeError};
use swarm_runtime_docker::{DockerRuntime, DockerRuntimeOptions, fixture};

/// Starts the registry with the fixture image as `repo:tag` (an OCI
/// manifest, its config and one uncompressed layer: the workload's rootfs).
async fn start_registry(repo: &str, tag: &str, user: &str, pass: &str) -> TestRegistry {
    let layer = fixture::rootfs_tarball(&fixture::build_workload().expect("workload"));
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": ["/workload"], "Env": [format!("PORT={}", fixture::PORT)] },
        "rootfs": { "type": "layers", "diff_ids": [digest(&layer)] },
    })
    .to_string()
    .into_bytes();
    let reg = TestRegistry::start(Auth::basic(user, pass)).await.expect("starting the test registry");
    reg.push(repo, tag, &Image::new(ManifestFormat::Oci, config, vec![layer])).expect("loading the image");
    reg
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
    let reg = start_registry(&repo, "v1", "alice", "s3cret").await;
    let registry = reg.addr().to_string();
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
