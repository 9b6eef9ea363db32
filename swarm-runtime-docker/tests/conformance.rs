//! The shared behavioural suite (`swarm-conformance`) against the real
//! Docker Engine: the same checks SimRuntime and containerd pass.

mod common;

use async_trait::async_trait;
use common::engine_runtime;
use std::time::Duration;
use swarm_conformance::{Fixture, SeenFile, read_file_by_exec, run_all};
use swarm_core::runtime::{ContainerConfig, Runtime, RuntimeError};
use swarm_runtime_docker::{DockerRuntime, DockerRuntimeOptions, fixture};

struct DockerFixture {
    rt: DockerRuntime,
    image: String,
}

impl DockerFixture {
    fn cfg(&self, env: &[&str]) -> ContainerConfig {
        let mut c = fixture::workload_config(&self.image, "conformance.1.x", "conformance-task");
        c.spec.env.extend(env.iter().map(|e| e.to_string()));
        c
    }
}

#[async_trait]
impl Fixture for DockerFixture {
    type R = DockerRuntime;
    fn runtime(&self) -> &DockerRuntime {
        &self.rt
    }
    async fn reopen(&self) -> DockerRuntime {
        DockerRuntime::connect(self.rt.options().clone()).expect("reconnecting to the docker engine")
    }
    fn server(&self) -> ContainerConfig {
        self.cfg(&[])
    }
    fn port(&self) -> u16 {
        fixture::PORT
    }
    fn exits_with(&self, code: i32) -> ContainerConfig {
        self.cfg(&["EXIT_AFTER_MS=500", &format!("EXIT_CODE={code}")])
    }
    fn ignores_stop(&self) -> ContainerConfig {
        self.cfg(&["IGNORE_SIGTERM=1"])
    }
    async fn read_file(&self, id: &str, path: &str) -> Result<SeenFile, String> {
        // The image's /workload prints `UID GID MODE` when called as
        // `workload stat PATH`; its /bin/cat is the same binary.
        read_file_by_exec(&self.rt, id, path, &["/workload", "stat"], self.patience()).await
    }
    async fn leftovers(&self, id: &str) -> Vec<String> {
        match self.rt.inspect(id).await {
            Err(RuntimeError::NotFound(_)) => Vec::new(),
            Ok(s) => vec![format!("container {id} still exists ({:?})", s.state)],
            Err(e) => vec![format!("cannot tell whether container {id} is gone: {e}")],
        }
    }
    fn patience(&self) -> Duration {
        Duration::from_secs(60)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_runtime_suite_passes_on_docker() {
    let Some(rt) = engine_runtime(DockerRuntimeOptions::default()).await else { return };
    let image = fixture::ensure_test_image(rt.client()).await.expect("test image");
    let fx = DockerFixture { rt, image };
    let run = format!("docker-{}", std::process::id());
    if let Err(f) = run_all(&fx, &run).await {
        panic!("{f}");
    }
}
