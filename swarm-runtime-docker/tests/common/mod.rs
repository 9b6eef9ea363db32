//! Shared by the engine and cluster tests: finding the engine (or recording
//! that the tests are skipped: see `swarm_conformance::skip`).
#![allow(dead_code)]

use std::time::Duration;
use swarm_conformance::skip::skip;
use swarm_runtime_docker::{DockerRuntime, DockerRuntimeOptions};

/// Label every test container carries, with the test's name prefix.
pub const TEST_LABEL: &str = "io.swarm-rs.test-run";

/// The engine's runtime; `None` (after a recorded skip) when there is no
/// engine, except under CI, where that is a failure.
pub async fn engine_runtime(opts: DockerRuntimeOptions) -> Option<DockerRuntime> {
    let rt = match DockerRuntime::connect(opts) {
        Ok(rt) => rt,
        Err(e) => {
            skip(&format!("needs a Docker Engine: {e}"));
            return None;
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), rt.ping()).await {
        Ok(Ok(_)) => Some(rt),
        res => {
            skip(&format!("needs a Docker Engine that answers: {res:?}"));
            None
        }
    }
}
