//! Session ids are credentials: a worker presents one on every call. They
//! must come from the OS random source, not from the manager's seed, so
//! that two managers started with the same seed (every reproducible test,
//! or an operator who pins one) do not hand out the same, guessable ids.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use swarm_core::dispatcher::{DispatchError, Dispatcher, LocalDispatcher, SessionRequest, new_session_id};
use swarm_core::id::{IdGen, NodeId};
use swarm_core::manager::{Manager, ManagerConfig};
use swarm_core::model::{NodeDescription, Platform};
use swarm_core::store::{MemStore, Store};

fn request(node: &str) -> SessionRequest {
    SessionRequest {
        node_id: NodeId::new(node),
        description: NodeDescription {
            hostname: node.into(),
            platform: Platform::new("linux", "amd64"),
            ..Default::default()
        },
        addr: "10.0.0.1".into(),
    }
}

fn manager(seed: u64) -> Manager {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    Manager::start(store, Box::new(common::LeastLoaded), ManagerConfig { seed: Some(seed), ..Default::default() })
}

#[tokio::test(start_paused = true)]
async fn two_managers_with_the_same_seed_hand_out_different_session_ids() {
    let (a, b) = (manager(7), manager(7));
    let sa = a.dispatcher().open_session(request("n1")).await.unwrap().session_id;
    let sb = b.dispatcher().open_session(request("n1")).await.unwrap().session_id;
    assert_ne!(sa, sb, "same seed, same node, same call: the session ids must still differ");
    // Nor is either what the seeded id generator would give for that seed
    // (the derivation used before: the seed xor a constant).
    for derived in [7u64, 7 ^ 0xD15A_7C4E] {
        let guess: String = IdGen::seeded(derived).next_id();
        assert_ne!(sa, guess);
        assert_ne!(sb, guess);
    }
    a.stop();
    b.stop();
}

#[tokio::test(start_paused = true)]
async fn session_ids_are_128_random_bits_and_never_repeat() {
    let d = LocalDispatcher::new(Arc::new(MemStore::new()));
    let mut seen = BTreeSet::new();
    for i in 0..200 {
        let id = d.open_session(request(&format!("n{}", i % 5))).await.unwrap().session_id;
        assert_eq!(id.len(), 32, "{id:?}: 16 bytes as hex");
        assert!(id.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{id:?}");
        assert!(seen.insert(id.clone()), "session id {id} handed out twice");
    }
    // Random ids vary from their first digit: 800 leading digits cover all
    // sixteen (a counter or a timestamp prefix would not).
    let digits: BTreeSet<char> = seen.iter().flat_map(|s| s.chars().take(4)).collect();
    assert_eq!(digits.len(), 16, "digits seen in id prefixes: {digits:?}");
    let fresh = new_session_id().unwrap();
    assert!(!seen.contains(&fresh));
}

#[tokio::test(start_paused = true)]
async fn a_guessed_session_id_is_refused() {
    let m = manager(42);
    let d = m.dispatcher();
    let real = d.open_session(request("n1")).await.unwrap().session_id;
    d.heartbeat(&real).await.expect("the real session heartbeats");
    let guesses: Vec<String> = vec![
        IdGen::seeded(42).next_id(),
        IdGen::seeded(42 ^ 0xD15A_7C4E).next_id(),
        "0".repeat(32),
        real.chars().rev().collect(),
    ];
    for g in guesses {
        assert_ne!(g, real);
        assert_eq!(d.heartbeat(&g).await, Err(DispatchError::InvalidSession(g.clone())));
    }
    m.stop();
}

/// The dispatcher checks for silent nodes every half heartbeat period. When
/// the cluster's period is lowered, the checks follow at once: a node that
/// goes silent is down within the new grace, not the old one.
#[tokio::test(start_paused = true)]
async fn a_lowered_heartbeat_period_takes_effect_for_node_health_at_once() {
    use swarm_core::cluster::Cluster;
    use swarm_core::model::{ClusterSpec, NodeState};
    use swarm_core::time::SpecDuration;
    use tokio::time::{Duration, Instant};

    let store = Arc::new(MemStore::new());
    let cluster = Cluster::with_seed(store.clone(), 1);
    let mut spec = ClusterSpec::default();
    spec.dispatcher.heartbeat_period = SpecDuration::from_secs(3600);
    cluster.set_cluster_spec(spec.clone()).await.unwrap();
    let d = LocalDispatcher::new(store.clone());
    let runner = tokio::spawn({
        let d = d.clone();
        async move { d.run().await }
    });
    // Node health is a controller of its own (the manager runs both).
    let health = tokio::spawn(swarm_core::controller::run(
        store.clone(),
        d.node_health(),
        swarm_core::controller::RuntimeConfig::default(),
    ));
    tokio::task::yield_now().await;
    d.open_session(request("n1")).await.unwrap();
    // Let the router's first (hour-long) check interval start.
    tokio::time::sleep(Duration::from_secs(1)).await;
    spec.dispatcher.heartbeat_period = SpecDuration::from_secs(1);
    cluster.set_cluster_spec(spec).await.unwrap();
    // n1 never heartbeats: down after 3 periods of 1 s, checked every 0.5 s.
    let t0 = Instant::now();
    while store.state().node(&NodeId::new("n1")).unwrap().status.state != NodeState::Down {
        assert!(t0.elapsed() < Duration::from_secs(10), "n1 still not down after {:?}", t0.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    runner.abort();
    health.abort();
}
