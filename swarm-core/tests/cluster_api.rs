//! The embedding API's read-modify-write calls lose no concurrent change
//! and refuse what does not apply without changing anything.

use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use swarm_core::cluster::{Cluster, ClusterError};
use swarm_core::model::{ModeKind, Revision, ServiceSpec};
use swarm_core::state::{Change, State, Transaction};
use swarm_core::store::{MemStore, Store, StoreError, Watch};

/// A store where another writer changes the service just before the
/// first commit: the caller's transaction then conflicts and is rebuilt.
struct Interfering {
    inner: MemStore,
    armed: AtomicBool,
}

#[async_trait]
impl Store for Interfering {
    async fn commit(&self, tx: Transaction) -> Result<Arc<Change>, StoreError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            let state = self.inner.state();
            let mut svc = state.service_by_name("web").expect("web").as_ref().clone();
            svc.spec.labels.insert("other-writer".into(), "yes".into());
            self.inner.commit(Transaction::new().update(svc)).await?;
        }
        self.inner.commit(tx).await
    }
    async fn snapshot(&self) -> Result<Arc<State>, StoreError> {
        self.inner.snapshot().await
    }
    async fn watch(&self, from: Revision) -> Result<Watch, StoreError> {
        self.inner.watch(from).await
    }
}

#[tokio::test]
async fn modify_service_keeps_a_concurrent_change() {
    let store = Arc::new(Interfering { inner: MemStore::new(), armed: AtomicBool::new(false) });
    let cluster = Cluster::with_seed(store.clone(), 1);
    cluster.create_service(ServiceSpec::replicated("web", "nginx:1.27", 1)).await.unwrap();
    store.armed.store(true, Ordering::SeqCst);
    cluster.modify_service("web", |s| s.task_template.container.env.push("MODE=fast".into())).await.unwrap();
    store.armed.store(true, Ordering::SeqCst);
    cluster.scale("web", 7).await.unwrap();
    let svc = cluster.inspect_service("web").await.unwrap();
    assert_eq!(svc.spec.labels.get("other-writer").map(String::as_str), Some("yes"), "the other write survived");
    assert_eq!(svc.spec.task_template.container.env, vec!["MODE=fast".to_string()]);
    assert_eq!(svc.spec.mode.replicas, Some(7));
    assert_eq!(svc.spec_version, 2, "only the env change rolls tasks");
}

#[tokio::test]
async fn scaling_a_global_service_is_refused_and_changes_nothing() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let cluster = Cluster::with_seed(store.clone(), 1);
    cluster.create_service(ServiceSpec::global("agent", "monitor:1")).await.unwrap();
    let before = store.snapshot().await.unwrap().revision();
    let err = cluster.scale("agent", 3).await.unwrap_err();
    assert!(matches!(err, ClusterError::NotApplicable { .. }), "{err}");
    assert!(err.to_string().contains("only replicated services can be scaled"), "{err}");
    assert_eq!(store.snapshot().await.unwrap().revision(), before);
    assert_eq!(cluster.inspect_service("agent").await.unwrap().spec.mode.kind, ModeKind::Global);
}

#[tokio::test]
async fn service_status_counts_tasks_as_service_ls_shows_them() {
    use swarm_core::id::TaskId;
    use swarm_core::model::{Task, TaskState};
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let cluster = Cluster::with_seed(store.clone(), 1);
    let web = cluster.create_service(ServiceSpec::replicated("web", "nginx:1.27", 3)).await.unwrap();
    let mut batch = ServiceSpec::replicated("batch", "busybox", 0);
    batch.mode = swarm_core::model::ServiceMode::replicated_job(4, 2);
    let job = cluster.create_service(batch).await.unwrap();
    let task = |id: &str, service: &swarm_core::id::ServiceId, state: TaskState, desired: TaskState| {
        let mut t =
            Task { id: TaskId::new(id), service_id: service.clone(), desired_state: desired, ..Default::default() };
        t.status.state = state;
        t
    };
    let mut tx = Transaction::new();
    for t in [
        task("w1", &web, TaskState::Running, TaskState::Running),
        task("w2", &web, TaskState::Running, TaskState::Running),
        task("w3", &web, TaskState::Pending, TaskState::Running),
        // An old task being shut down still counts while it runs, as in Docker.
        task("w0", &web, TaskState::Failed, TaskState::Shutdown),
        task("b1", &job, TaskState::Complete, TaskState::Complete),
        task("b2", &job, TaskState::Running, TaskState::Complete),
    ] {
        tx = tx.create(t);
    }
    store.commit(tx).await.unwrap();
    let st = cluster.service_status("web").await.unwrap();
    assert_eq!((st.running_tasks, st.desired_tasks, st.completed_tasks), (2, 3, 0));
    let st = cluster.service_status(job.as_str()).await.unwrap();
    assert_eq!((st.running_tasks, st.desired_tasks, st.completed_tasks), (1, 2, 1), "a job's concurrency is desired");
    let all = cluster.list_services_with_status().await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().any(|(s, st)| s.spec.name == "web" && st.running_tasks == 2));
    assert!(matches!(cluster.service_status("nope").await, Err(ClusterError::NotFound { .. })));
}
