//! `Manager::builder`: built-in and embedder controllers run only while the
//! store says this process leads, stop promptly when it does not, and stop
//! when the manager is dropped.

use std::sync::Arc;
use std::time::Duration;
use swarm_core::cluster::Cluster;
use swarm_core::manager::{Manager, ManagerConfig, ManagerError};
use swarm_core::model::{Node, Object, Resources, ServiceSpec, TaskState};
use swarm_core::state::{State, Transaction};
use swarm_core::store::{MemStore, Store};

mod common;
use common::{Led, led};

async fn add_node(store: &Led, i: usize) {
    store
        .inner
        .commit(Transaction::new().create(Node::ready(format!("n{i}"), "h", Resources::default())))
        .await
        .unwrap();
}

fn seen(store: &Led) -> usize {
    store.inner.state().nodes().filter(|n| n.spec.labels.contains_key("seen")).count()
}

fn live_tasks(store: &Led) -> usize {
    store.inner.state().tasks().filter(|t| t.desired_state <= TaskState::Running).count()
}

fn manager(store: &Arc<Led>) -> Manager {
    Manager::builder(store.clone())
        .scheduler(Box::new(common::LeastLoaded))
        .config(ManagerConfig { seed: Some(1), ..Default::default() })
        .controller(common::Labeler::default)
        .start()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn controllers_run_only_while_leading() {
    let store = led(false);
    let _m = manager(&store);
    let cluster = Cluster::with_seed(store.clone(), 2);
    add_node(&store, 0).await;
    cluster.create_service(ServiceSpec::replicated("web", "nginx:1.27", 2)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!((seen(&store), live_tasks(&store)), (0, 0), "a follower runs no controller");

    store.leader.send_replace(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(seen(&store), 1, "the embedder's controller runs once leading");
    assert_eq!(live_tasks(&store), 2, "and so does the orchestrator");

    store.leader.send_replace(false);
    tokio::time::sleep(Duration::from_millis(1)).await;
    add_node(&store, 1).await;
    cluster.scale("web", 4).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!((seen(&store), live_tasks(&store)), (1, 2), "stopped as soon as leadership was lost");

    store.leader.send_replace(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((seen(&store), live_tasks(&store)), (2, 4), "a new term starts from the store");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_manager_stops_its_controllers() {
    let store = led(true);
    let m = manager(&store);
    add_node(&store, 0).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(seen(&store), 1);
    drop(m);
    tokio::time::sleep(Duration::from_millis(1)).await;
    add_node(&store, 1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(seen(&store), 1, "nothing runs after the drop");
}

#[tokio::test(start_paused = true)]
async fn a_memstore_always_leads_and_a_builder_needs_a_scheduler() {
    let store = Arc::new(MemStore::new());
    assert!(*store.leadership().borrow());
    let err = Manager::builder(store).start().err().expect("no scheduler");
    assert!(matches!(err, ManagerError::NoScheduler));
    assert!(err.to_string().contains("no scheduler"), "{err}");
}

/// With the default allocator (nothing to allocate) tasks are created
/// PENDING in the orchestrator's transaction; with an allocator of the
/// embedder's they are created NEW and wait for it.
#[tokio::test(start_paused = true)]
async fn tasks_start_pending_with_the_default_allocator_and_new_with_another() {
    use swarm_core::allocator::{Allocate, Allocation, TaskAllocator};
    use swarm_core::state::Action;

    /// An allocation that blocks every service not labelled `ok`.
    struct Picky;
    impl Allocate for Picky {
        fn allocate(&mut self, state: &State) -> Allocation {
            let blocked = state
                .services()
                .filter(|s| !s.spec.labels.contains_key("ok"))
                .map(|s| (s.id.clone(), "not labelled ok".to_string()))
                .collect();
            Allocation { blocked, ..Default::default() }
        }
    }

    for custom in [false, true] {
        let store = Arc::new(MemStore::new());
        let mut watch = store.watch(0).await.unwrap();
        let mut b = Manager::builder(store.clone()).scheduler(Box::new(common::LeastLoaded));
        if custom {
            b = b.allocator(|| TaskAllocator(Picky));
        }
        let _m = b.start().unwrap();
        let cluster = Cluster::with_seed(store.clone(), 2);
        cluster.create_service(ServiceSpec::replicated("web", "nginx:1.27", 2)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut created = Vec::new();
        while let Some(Ok(c)) = watch.try_next() {
            for e in &c.events {
                if let (Action::Create, Object::Task(t)) = (e.action, &e.object) {
                    created.push(t.status.state);
                }
            }
        }
        let states: Vec<TaskState> = store.state().tasks().map(|t| t.status.state).collect();
        if custom {
            assert_eq!(created, vec![TaskState::New; 2]);
            assert_eq!(states, vec![TaskState::New; 2], "the embedder's allocator holds them");
            let t = store.state().tasks().next().unwrap().clone();
            assert_eq!(t.status.message, "allocation failed: not labelled ok");
        } else {
            assert_eq!(created, vec![TaskState::Pending; 2], "admitted in the creating transaction");
        }
    }
}

/// With `Admission::WithoutAllocation`, tasks that need nothing from the
/// allocator (no network, no port through the mesh) are created PENDING;
/// the others are created NEW and wait for it.
#[tokio::test(start_paused = true)]
async fn admission_without_allocation_admits_only_tasks_with_nothing_to_allocate() {
    use swarm_core::allocator::{Admission, Allocate, Allocation, TaskAllocator};
    use swarm_core::manager::ManagerConfig;
    use swarm_core::model::{NetworkAttachmentConfig, NetworkSpec, PortConfig, PublishMode};
    use swarm_core::state::Action;

    /// Blocks every service: only admission at creation lets a task run.
    struct Nothing;
    impl Allocate for Nothing {
        fn allocate(&mut self, state: &State) -> Allocation {
            let blocked = state.services().map(|s| (s.id.clone(), "held".to_string())).collect();
            Allocation { blocked, ..Default::default() }
        }
    }
    let store = Arc::new(MemStore::new());
    let mut watch = store.watch(0).await.unwrap();
    let _m = Manager::builder(store.clone())
        .scheduler(Box::new(common::LeastLoaded))
        .allocator(|| TaskAllocator(Nothing))
        .config(ManagerConfig { admission: Admission::WithoutAllocation, ..Default::default() })
        .start()
        .unwrap();
    let cluster = Cluster::with_seed(store.clone(), 3);
    cluster.create_network(NetworkSpec { name: "back".into(), ..Default::default() }).await.unwrap();
    cluster.create_service(ServiceSpec::replicated("plain", "nginx:1.27", 1)).await.unwrap();
    let mut on_net = ServiceSpec::replicated("netted", "nginx:1.27", 1);
    on_net.networks = vec![NetworkAttachmentConfig { target: "back".into(), aliases: vec![] }];
    cluster.create_service(on_net).await.unwrap();
    let mut published = ServiceSpec::replicated("published", "nginx:1.27", 1);
    published.endpoint_spec.ports = vec![PortConfig {
        target_port: 80,
        published_port: Some(8080),
        publish_mode: PublishMode::Ingress,
        ..Default::default()
    }];
    cluster.create_service(published).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut created = std::collections::BTreeMap::new();
    while let Some(Ok(c)) = watch.try_next() {
        for e in &c.events {
            if let (Action::Create, Object::Task(t)) = (e.action, &e.object) {
                created.insert(t.service_name.clone(), t.status.state);
            }
        }
    }
    assert_eq!(created.get("plain"), Some(&TaskState::Pending), "{created:?}");
    assert_eq!(created.get("netted"), Some(&TaskState::New), "{created:?}");
    assert_eq!(created.get("published"), Some(&TaskState::New), "{created:?}");
}
