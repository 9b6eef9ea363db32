//! Group commit of the workers' task status reports.
//!
//! Every [`Dispatcher::update_task_status`](super::Dispatcher::update_task_status)
//! call waits until its reports are committed, as before, but the reports
//! of all sessions that arrive while a write is in flight go into the next
//! write together: one snapshot and one transaction for many workers
//! instead of one each. With a replicated store each write is a raft
//! proposal (and a read-index round) that every manager encodes, logs and
//! applies, and a change every watcher of the store handles, so a burst of
//! reports from a thousand workers costs a few writes rather than
//! thousands. Nothing waits for a timer: an idle dispatcher writes a lone
//! report at once.
//!
//! Each report is checked against the state as the reports queued before
//! it in the same write leave it, exactly as if they had been committed one
//! by one: reports about tasks of another node, or that would move a task
//! backwards, are ignored. If the state machine rejects a write of several
//! reports, each report is written again on its own, so one worker's bad
//! report fails only that worker's call.
//!
//! Each task's reports become one
//! [`Op::UpdateTaskStatus`](crate::state::Op::UpdateTaskStatus) at the
//! version read: its newest status, and its network attachments when they
//! changed, so the replicated entry carries what the node observed rather
//! than the whole task (and building it copies no task).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::sync::Arc;
//! use swarm_core::dispatcher::{Dispatcher, LocalDispatcher, SessionRequest, TaskStatusUpdate};
//! use swarm_core::model::{Service, ServiceSpec, Task, TaskState, TaskStatus};
//! use swarm_core::state::Transaction;
//! use swarm_core::store::{MemStore, Store};
//!
//! let store = Arc::new(MemStore::new());
//! let d = LocalDispatcher::new(store.clone());
//! let svc = Service { id: "s".into(), spec: ServiceSpec::replicated("web", "nginx:1.27", 2), ..Default::default() };
//! store.commit(Transaction::new().create(svc)).await.unwrap();
//! let mut sessions = Vec::new();
//! for n in ["n1", "n2"] {
//!     let req = SessionRequest { node_id: n.into(), description: Default::default(), addr: "10.0.0.1".into() };
//!     sessions.push(d.open_session(req).await.unwrap().session_id);
//!     let id = format!("t-{n}");
//!     let mut t = Task { id: id.into(), service_id: "s".into(), slot: Some(1), node_id: Some(n.into()), ..Default::default() };
//!     t.status.state = TaskState::Assigned;
//!     store.commit(Transaction::new().create(t)).await.unwrap();
//! }
//! let before = store.state().revision();
//! let report = |n: &str| vec![TaskStatusUpdate {
//!     task_id: format!("t-{n}").into(),
//!     status: TaskStatus { state: TaskState::Running, ..Default::default() },
//!     networks: None,
//! }];
//! // Two workers report at the same time: one write commits both.
//! let (a, b) = tokio::join!(d.update_task_status(&sessions[0], report("n1")), d.update_task_status(&sessions[1], report("n2")));
//! a.unwrap();
//! b.unwrap();
//! assert_eq!(store.state().revision(), before + 1);
//! assert!(store.state().tasks().all(|t| t.status.state == TaskState::Running));
//! # }
//! ```

use super::{DispatchError, TaskStatusUpdate};
use crate::id::{NodeId, TaskId};
use crate::model::{NetworkAttachment, Task, TaskStatus};
use crate::state::{State, Transaction};
use crate::store::{Store, StoreError};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// At most this many task updates go into one write: a write is a compact
/// observation per task (about 300 bytes of JSON with a status message), so
/// a raft entry stays around a megabyte. A report is never split, so one
/// larger report is written alone. (With 1,000, a thousand workers' first
/// reports took a dozen writes one after the other, the longest step of a
/// networked deployment of 10,000 tasks.)
pub const MAX_UPDATES_PER_WRITE: usize = 4000;

/// How many times a write is tried again after a version conflict.
const ATTEMPTS: usize = 10;

/// One call's reports, and where its answer goes.
struct Report {
    node: NodeId,
    updates: Vec<TaskStatusUpdate>,
    done: oneshot::Sender<Result<(), DispatchError>>,
}

#[derive(Default)]
struct Queue {
    reports: VecDeque<Report>,
    /// A writer task is running (it drains the queue before it ends).
    writing: bool,
}

/// The group-commit writer of a dispatcher. See the [module docs](self).
#[derive(Clone)]
pub(crate) struct StatusWriter {
    store: Arc<dyn Store>,
    queue: Arc<Mutex<Queue>>,
}

impl StatusWriter {
    pub fn new(store: Arc<dyn Store>) -> Self {
        StatusWriter { store, queue: Arc::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Critical sections only move reports in and out of the queue.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `node`'s reports and waits until a write committed them (or
    /// failed). Starts a writer task when none is running.
    pub async fn submit(&self, node: NodeId, updates: Vec<TaskStatusUpdate>) -> Result<(), DispatchError> {
        let (done, answer) = oneshot::channel();
        let start = {
            let mut q = self.lock();
            q.reports.push_back(Report { node, updates, done });
            !std::mem::replace(&mut q.writing, true)
        };
        if start {
            // A task of its own: a caller that gives up waiting (a dropped
            // connection) does not stop the writes of the others.
            tokio::spawn(self.clone().drain());
        }
        answer.await.map_err(|_| DispatchError::Unavailable("the status writer stopped before answering".into()))?
    }

    /// Writes queued reports, a batch at a time, until the queue is empty.
    async fn drain(self) {
        let mut guard = Writing { writer: self.clone(), finished: false };
        loop {
            let batch = {
                let mut q = self.lock();
                let mut batch = Vec::new();
                let mut n = 0;
                while let Some(r) = q.reports.front() {
                    if !batch.is_empty() && n + r.updates.len() > MAX_UPDATES_PER_WRITE {
                        break;
                    }
                    n += r.updates.len();
                    batch.extend(q.reports.pop_front());
                }
                if batch.is_empty() {
                    q.writing = false;
                    guard.finished = true;
                    break;
                }
                batch
            };
            self.write(batch).await;
        }
    }

    async fn write(&self, batch: Vec<Report>) {
        let result = commit(self.store.as_ref(), &batch).await;
        if let Err(StoreError::Rejected(e)) = &result
            && batch.len() > 1
        {
            tracing::debug!(error = %e, reports = batch.len(), "a write of several status reports was rejected; writing them one by one");
            for r in batch {
                let result = commit(self.store.as_ref(), std::slice::from_ref(&r)).await;
                let _ = r.done.send(result.map_err(DispatchError::from));
            }
            return;
        }
        tracing::trace!(reports = batch.len(), "status reports written");
        for r in batch {
            let _ = r.done.send(result.clone().map_err(DispatchError::from));
        }
    }
}

/// Resets the queue when a writer task ends early (its runtime shut down,
/// or a panic): the reports still queued are answered with an error rather
/// than left waiting, and the next report starts a new writer.
struct Writing {
    writer: StatusWriter,
    /// The writer emptied the queue and ended normally.
    finished: bool,
}

impl Drop for Writing {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let reports = {
            let mut q = self.writer.lock();
            q.writing = false;
            std::mem::take(&mut q.reports)
        };
        for r in reports {
            let _ = r.done.send(Err(DispatchError::Unavailable("the status writer stopped".into())));
        }
    }
}

async fn commit(store: &dyn Store, reports: &[Report]) -> Result<(), StoreError> {
    crate::store::update_with_retry(store, ATTEMPTS, |state| transaction(state, reports)).await.map(|_| ())
}

/// The transaction that applies `reports` in order to `state`, or `None`
/// when none of them changes anything.
fn transaction(state: &State, reports: &[Report]) -> Option<Transaction> {
    // What the reports say of each task so far: its stored version, the
    // newest status and network attachments (no copy of the task itself).
    let mut changed: BTreeMap<&TaskId, Observed<'_>> = BTreeMap::new();
    for r in reports {
        let mut latest: BTreeMap<&TaskId, &TaskStatusUpdate> = BTreeMap::new();
        for u in &r.updates {
            latest.insert(&u.task_id, u);
        }
        for (id, u) in latest {
            let Some(stored) = state.task(id) else { continue };
            let stored = stored.as_ref();
            let (status, networks) = match changed.get(id) {
                Some(o) => (&o.status, o.networks.as_ref().unwrap_or(&stored.networks)),
                None => (&stored.status, &stored.networks),
            };
            if stored.node_id.as_ref() != Some(&r.node) {
                tracing::warn!(task = %id, node = %r.node, "status update for a task of another node ignored");
                continue;
            }
            if !status.state.can_move_to(u.status.state) {
                tracing::debug!(task = %id, from = %status.state, to = %u.status.state, "stale status ignored");
                continue;
            }
            if *status == u.status && u.networks.as_ref().is_none_or(|n| n == networks) {
                continue;
            }
            let networks = match &u.networks {
                Some(n) => Some(n.clone()),
                None => changed.get(id).and_then(|o| o.networks.clone()),
            };
            changed.insert(id, Observed { stored, status: u.status.clone(), networks });
        }
    }
    if changed.is_empty() {
        return None;
    }
    let mut tx = Transaction::new();
    for (id, o) in changed {
        // Networks go in only when they differ from the stored ones.
        let networks = o.networks.filter(|n| *n != o.stored.networks);
        tx = tx.update_task_observed(id.clone(), o.stored.meta.version, o.status, networks);
    }
    Some(tx)
}

/// A task's observed state as the reports of one write leave it.
struct Observed<'a> {
    stored: &'a Task,
    status: TaskStatus,
    networks: Option<Vec<NetworkAttachment>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Service, ServiceSpec, TaskState};
    use crate::state::Op;

    fn report(node: &str, updates: Vec<TaskStatusUpdate>) -> Report {
        Report { node: node.into(), updates, done: oneshot::channel().0 }
    }

    fn update(task: &str, state: TaskState, networks: Option<Vec<NetworkAttachment>>) -> TaskStatusUpdate {
        TaskStatusUpdate { task_id: task.into(), status: TaskStatus { state, ..Default::default() }, networks }
    }

    fn state() -> State {
        let svc =
            Service { id: "s".into(), spec: ServiceSpec::replicated("web", "nginx:1.27", 3), ..Default::default() };
        let node = crate::model::Node::ready("n1", "host1", Default::default());
        let mut tx = Transaction::new().create(node).create(svc);
        for i in 1..=3 {
            let mut t =
                Task { id: format!("t{i}").into(), service_id: "s".into(), slot: Some(i), ..Default::default() };
            t.node_id = Some("n1".into());
            t.status.state = TaskState::Assigned;
            tx = tx.create(t);
        }
        State::default().apply(&tx).expect("the fixture commits").0
    }

    #[test]
    fn reports_become_compact_observation_ops() {
        let s = state();
        let net =
            vec![NetworkAttachment { network: "backend".into(), addresses: vec!["10.0.0.2".into()], overlay: None }];
        let reports = [
            report(
                "n1",
                vec![update("t1", TaskState::Running, None), update("t2", TaskState::Running, Some(net.clone()))],
            ),
            // Networks equal to the stored ones (none) are not written.
            report("n1", vec![update("t3", TaskState::Running, Some(Vec::new()))]),
        ];
        let tx = transaction(&s, &reports).expect("the reports change something");
        let version = |id: &str| Some(s.task(&id.into()).expect("task").meta.version);
        let running = TaskStatus { state: TaskState::Running, ..Default::default() };
        let op = |id: &str, networks| Op::UpdateTaskStatus {
            id: id.into(),
            version: version(id),
            status: running.clone(),
            networks,
        };
        assert_eq!(tx.ops, vec![op("t1", None), op("t2", Some(net.clone())), op("t3", None)]);
        let (after, _) = s.apply(&tx).expect("the write commits");
        assert!(after.tasks().all(|t| t.status.state == TaskState::Running));
        assert_eq!(after.task(&"t2".into()).expect("t2").networks, net);
    }

    #[test]
    fn a_later_report_in_the_same_write_keeps_earlier_networks() {
        let s = state();
        let net =
            vec![NetworkAttachment { network: "backend".into(), addresses: vec!["10.0.0.2".into()], overlay: None }];
        let reports = [
            report("n1", vec![update("t1", TaskState::Starting, Some(net.clone()))]),
            report("n1", vec![update("t1", TaskState::Running, None)]),
            // Another node's report on t1 is ignored.
            report("n2", vec![update("t1", TaskState::Failed, None)]),
        ];
        let tx = transaction(&s, &reports).expect("the reports change something");
        let (after, _) = s.apply(&tx).expect("the write commits");
        let t1 = after.task(&"t1".into()).expect("t1");
        assert_eq!((t1.status.state, &t1.networks), (TaskState::Running, &net));
        assert_eq!(tx.ops.len(), 1);
    }
}
