//! The multi-process cluster on a real runtime: `swarmd` nodes with
//! `--runtime docker` on this machine's Docker Engine (each worker tells
//! its containers apart by its node id label). Without an engine the test
//! is a recorded skip, and a failure under CI.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;
use support::{Lab, ctl, ctl_json, eventually};
use swarm_conformance::skip::skip;
use swarm_core::model::Labels;
use swarm_core::runtime::{ContainerState, Runtime, labels};
use swarm_runtime_docker::{DockerRuntime, DockerRuntimeOptions, fixture};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// The ids of the containers of node `node` that run.
fn running_on(rt: &DockerRuntime, node: &str) -> BTreeSet<String> {
    let mut sel = Labels::new();
    sel.insert(labels::NODE_ID.into(), node.into());
    block_on(rt.list(&sel)).unwrap().into_iter().filter(|c| c.state == ContainerState::Running).map(|c| c.id).collect()
}

fn all_of(rt: &DockerRuntime, node: &str) -> Vec<String> {
    let mut sel = Labels::new();
    sel.insert(labels::NODE_ID.into(), node.into());
    block_on(rt.list(&sel)).unwrap().into_iter().map(|c| c.id).collect()
}

/// Removes every container of `nodes` (also when the test failed).
struct Cleanup<'a> {
    rt: &'a DockerRuntime,
    nodes: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for n in &self.nodes {
            for id in all_of(self.rt, n) {
                let _ = block_on(self.rt.remove(&id));
            }
        }
    }
}

#[test]
fn a_worker_crash_on_docker_keeps_its_containers_then_cleans_up_the_stale_ones() {
    let rt = match DockerRuntime::connect(DockerRuntimeOptions::default()) {
        Ok(rt)
            if block_on(async { tokio::time::timeout(Duration::from_secs(5), rt.ping()).await })
                .is_ok_and(|r| r.is_ok()) =>
        {
            rt
        }
        Ok(_) => return skip("needs a Docker Engine that answers"),
        Err(e) => return skip(&format!("needs a Docker Engine: {e}")),
    };
    let image = block_on(fixture::ensure_test_image(rt.client())).expect("the test image");
    let mut lab = Lab::new(17);
    lab.runtime = "docker";
    let m1 = lab.init("m1", 1);
    let wt = m1.worker_token.clone().unwrap();
    let api = m1.daemon.api;
    let s1 = m1.daemon.socket();
    let _m1 = m1.daemon;
    let mut w1 = lab.join("w1", 2, &wt, api).daemon;
    let w2 = lab.join("w2", 3, &wt, api).daemon;
    let (w1_id, w2_id) = (w1.node_id.clone(), w2.node_id.clone());
    let _cleanup = Cleanup { rt: &rt, nodes: vec![_m1.node_id.clone(), w1_id.clone(), w2_id.clone()] };
    eventually(Duration::from_secs(30), "3 nodes ready", || {
        let n = ctl_json(&s1, &["node", "ls"]).ok()?;
        (n.as_array()?.iter().filter(|n| n["status"]["state"] == "ready").count() == 3).then_some(())
    });
    assert!(ctl(&s1, &["node", "update", "m1", "--availability", "drain"]).ok);
    let out = ctl(&s1, &["service", "create", "web", "--image", &image, "--replicas", "4"]);
    assert!(out.ok, "{}", out.stderr);
    eventually(Duration::from_secs(60), "4 containers running on the two workers", || {
        let (a, b) = (running_on(&rt, &w1_id), running_on(&rt, &w2_id));
        (a.len() + b.len() == 4 && !a.is_empty() && !b.is_empty()).then_some(())
    });
    let on_w1 = running_on(&rt, &w1_id);

    // The worker process crashes: its containers keep running.
    w1.kill();
    assert_eq!(running_on(&rt, &w1_id), on_w1, "a crashed agent leaves its containers running");
    // After the heartbeat grace its tasks are replaced on w2.
    eventually(Duration::from_secs(60), "4 containers running on w2", || {
        (running_on(&rt, &w2_id).len() == 4).then_some(())
    });
    // Restarted, w1 rejoins and removes the containers of tasks that are
    // no longer its own.
    let w1 = lab.restart("w1", 2).daemon;
    assert_eq!(w1.node_id, w1_id);
    eventually(Duration::from_secs(60), "w1's stale containers removed", || {
        all_of(&rt, &w1_id).is_empty().then_some(())
    });
    assert_eq!(running_on(&rt, &w2_id).len(), 4);

    // Removing the service removes its containers.
    assert!(ctl(&s1, &["service", "rm", "web"]).ok);
    eventually(Duration::from_secs(60), "no container left", || all_of(&rt, &w2_id).is_empty().then_some(()));
}
