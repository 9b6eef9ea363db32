//! The harness itself: numbering, per-node sizes, the heartbeat grace and
//! the running count, as an embedder's tests rely on them.

use std::time::Duration;
use swarm_core::harness::Harness;
use swarm_core::model::{NodeState, Resources, ServiceSpec};
use swarm_core::scheduler::FirstFit;

#[tokio::test(start_paused = true)]
async fn nodes_are_numbered_from_zero_everywhere_and_can_differ_in_size() {
    let big = Resources::new(16_000_000_000, 64 << 30);
    let mut h = Harness::builder()
        .nodes(3)
        .node_resources_at(2, big.clone())
        .heartbeat(Duration::from_secs(1))
        .scheduler(FirstFit)
        .seed(3)
        .build()
        .await
        .unwrap();
    assert_eq!(h.heartbeat_grace(), Duration::from_secs(3), "1 s x 3 grace periods");
    let s = h.state();
    for i in 0..3 {
        let n = s.node(&h.node_id(i)).unwrap();
        assert_eq!(n.id.as_str(), format!("node-{i}"));
        assert_eq!(n.description.hostname, format!("host-{i}"));
    }
    assert_eq!(s.node(&h.node_id(2)).unwrap().description.resources, big);
    assert_ne!(s.node(&h.node_id(1)).unwrap().description.resources, big);

    h.cluster().create_service(ServiceSpec::replicated("web", "nginx:1.27", 2)).await.unwrap();
    h.wait_running("web", 2, Duration::from_secs(30)).await.unwrap();
    assert_eq!(h.running_count("web"), 2);

    // fail_node(1) fails node-1, and the grace is what the getter said.
    h.fail_node(1);
    h.advance(h.heartbeat_grace() + Duration::from_millis(500)).await;
    let s = h.state();
    assert_eq!(s.node(&"node-1".into()).unwrap().status.state, NodeState::Down);
    assert_eq!(
        s.node(&"node-0".into()).unwrap().status.state,
        NodeState::Ready,
        "{:?}",
        s.node(&"node-0".into()).unwrap().status
    );
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn the_default_grace_is_swarms_fifteen_seconds() {
    let h = Harness::builder().nodes(1).scheduler(FirstFit).build().await.unwrap();
    assert_eq!(h.heartbeat_grace(), Duration::from_secs(15));
    h.shutdown();
}
