//! A [`Runtime`] wrapper that knows which creates and removes are still on
//! their way to the engine, so that an interrupted example can wait for
//! them before it removes what the run started.
//!
//! Dropping a future does not undo what the engine was already asked to
//! do: a Docker Engine finishes a container create whose client went away,
//! and a containerd create or remove cut short leaves a state directory, a
//! network namespace or a snapshot behind that no label names. So a
//! [`Tracked`] runtime runs each `create` and `remove` in a task of its own
//! (it completes even when the caller is dropped) that holds a permit of
//! the run's [`InFlight`] count. [`InFlight::drain`] refuses new creates
//! and removes and waits until the last permit is back: after it, every
//! container of the run is on the engine, whole, with its labels, and a
//! sweep by label finds them all. The other calls go straight through.

use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use swarm::model::{HealthProbe, Labels, NetworkSpec, VolumeSpec};
use swarm::runtime::{
    ContainerConfig, ContainerStats, ContainerStatus, ContainerSummary, ExecResult, ExitStatus, LogLine, ProbeResult,
    Runtime, RuntimeError,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// More creates and removes than a run ever has in flight at once.
const MAX_IN_FLIGHT: u32 = 1 << 20;

/// The creates and removes of a run that have not finished yet.
#[derive(Debug)]
pub struct InFlight {
    closed: AtomicBool,
    permits: Arc<Semaphore>,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight { closed: AtomicBool::new(false), permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT as usize)) }
    }
}

impl InFlight {
    /// A permit for one operation, or why it is refused (the run is being
    /// cleaned up).
    fn begin(&self, op: &'static str) -> Result<OwnedSemaphorePermit, RuntimeError> {
        let refused = || RuntimeError::Unavailable(format!("{op} refused: the run was interrupted"));
        if self.closed.load(Ordering::SeqCst) {
            return Err(refused());
        }
        // Once `drain` waits, it takes every free permit: this fails.
        self.permits.clone().try_acquire_owned().map_err(|_| refused())
    }

    /// Refuses new creates and removes from now on and waits, at most
    /// `budget`, for those in flight. True when none is left.
    pub async fn drain(&self, budget: Duration) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        let done = tokio::time::timeout(budget, self.permits.acquire_many(MAX_IN_FLIGHT)).await;
        let drained = matches!(done, Ok(Ok(_)));
        self.permits.close();
        drained
    }
}

/// A runtime whose creates and removes are counted in an [`InFlight`]
/// (see the module doc). Clones share the runtime and the count.
pub struct Tracked<R> {
    inner: Arc<R>,
    in_flight: Arc<InFlight>,
}

impl<R> Clone for Tracked<R> {
    fn clone(&self) -> Self {
        Tracked { inner: self.inner.clone(), in_flight: self.in_flight.clone() }
    }
}

impl<R: Runtime> Tracked<R> {
    /// Wraps `inner`; its creates and removes count in `in_flight`.
    pub fn new(inner: Arc<R>, in_flight: Arc<InFlight>) -> Self {
        Tracked { inner, in_flight }
    }

    /// The wrapped runtime (for what is not in the trait).
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// Runs `op` on the wrapped runtime in a task of its own holding a
    /// permit: it completes even if the caller is dropped.
    async fn detached<T, F, Fut>(&self, name: &'static str, op: F) -> Result<T, RuntimeError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<R>) -> Fut,
        Fut: Future<Output = Result<T, RuntimeError>> + Send + 'static,
    {
        let permit = self.in_flight.begin(name)?;
        let fut = op(self.inner.clone());
        tokio::spawn(async move {
            let r = fut.await;
            drop(permit);
            r
        })
        .await
        .map_err(|e| RuntimeError::Engine(format!("{name} task: {e}")))?
    }
}

#[async_trait]
impl<R: Runtime> Runtime for Tracked<R> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn prepare(&self, config: &ContainerConfig) -> Result<(), RuntimeError> {
        self.inner.prepare(config).await
    }

    async fn create(&self, config: &ContainerConfig) -> Result<String, RuntimeError> {
        let config = config.clone();
        self.detached("create", move |rt| async move { rt.create(&config).await }).await
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.inner.start(id).await
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus, RuntimeError> {
        self.inner.wait(id).await
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.inner.stop(id, grace).await
    }

    async fn kill(&self, id: &str) -> Result<(), RuntimeError> {
        self.inner.kill(id).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        self.detached("remove", move |rt| async move { rt.remove(&id).await }).await
    }

    async fn inspect(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        self.inner.inspect(id).await
    }

    async fn list(&self, selector: &Labels) -> Result<Vec<ContainerSummary>, RuntimeError> {
        self.inner.list(selector).await
    }

    async fn logs(&self, id: &str, tail: Option<usize>) -> Result<Vec<LogLine>, RuntimeError> {
        self.inner.logs(id, tail).await
    }

    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        self.inner.stats(id).await
    }

    async fn exec(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecResult, RuntimeError> {
        self.inner.exec(id, cmd, timeout).await
    }

    async fn ensure_network(&self, spec: &NetworkSpec) -> Result<(), RuntimeError> {
        self.inner.ensure_network(spec).await
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        self.inner.remove_network(name).await
    }

    async fn ensure_volume(&self, spec: &VolumeSpec) -> Result<(), RuntimeError> {
        self.inner.ensure_volume(spec).await
    }

    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        self.inner.remove_volume(name).await
    }

    async fn probe(&self, id: &str, probe: &HealthProbe, timeout: Duration) -> ProbeResult {
        self.inner.probe(id, probe, timeout).await
    }
}
