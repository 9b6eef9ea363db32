//! Shared by the engine and cluster tests: finding the engine (or saying
//! loudly that the tests are skipped).
#![allow(dead_code)]

use std::time::Duration;
use swarm_runtime_docker::{DockerRuntime, DockerRuntimeOptions};

/// Label every test container carries, with the test's name prefix.
pub const TEST_LABEL: &str = "io.swarm-rs.test-run";

/// The engine's runtime; `None` (after a loud SKIPPED line) when there is
/// no engine, except with `CI=true`, where that is a failure.
pub async fn engine_runtime(opts: DockerRuntimeOptions) -> Option<DockerRuntime> {
    let ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
    let rt = match DockerRuntime::connect(opts) {
        Ok(rt) => rt,
        Err(e) if ci => panic!("CI=true and no docker engine: {e}"),
        Err(e) => {
            eprintln!(
                "\n!!!!! SKIPPED: no docker engine ({e}); these tests need one (they fail under CI=true) !!!!!\n"
            );
            return None;
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), rt.ping()).await {
        Ok(Ok(_)) => Some(rt),
        res if ci => panic!("CI=true and the docker engine does not answer: {res:?}"),
        res => {
            eprintln!("\n!!!!! SKIPPED: the docker engine does not answer ({res:?}); these tests need one !!!!!\n");
            None
        }
    }
}
