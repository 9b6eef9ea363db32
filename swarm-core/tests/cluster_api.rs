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
