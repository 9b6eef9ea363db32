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
//! A report that changes only a task's status is written as an
//! [`Op::UpdateTaskStatus`](crate::state::Op::UpdateTaskStatus) at the
//! version read, so the replicated entry carries the status rather than the
//! whole task; one that also changes the task's networks is a full update.
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
use crate::model::Task;
use crate::state::{State, Transaction};
use crate::store::{Store, StoreError};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// At most this many task updates go into one write (a raft entry stays
/// around a megabyte); a report is never split, so one larger report is
/// written alone.
pub const MAX_UPDATES_PER_WRITE: usize = 1000;

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
    let mut changed: BTreeMap<&TaskId, Task> = BTreeMap::new();
    for r in reports {
        // The last report about a task in one call wins.
        let mut latest: BTreeMap<&TaskId, &TaskStatusUpdate> = BTreeMap::new();
        for u in &r.updates {
            latest.insert(&u.task_id, u);
        }
        for (id, u) in latest {
            let current = match changed.get(id) {
                Some(t) => t,
                None => match state.task(id) {
                    Some(t) => t.as_ref(),
                    None => continue,
                },
            };
            if current.node_id.as_ref() != Some(&r.node) {
                tracing::warn!(task = %id, node = %r.node, "status update for a task of another node ignored");
                continue;
            }
            if !current.status.state.can_move_to(u.status.state) {
                tracing::debug!(task = %id, from = %current.status.state, to = %u.status.state, "stale status ignored");
                continue;
            }
            let networks = u.networks.as_ref();
            if current.status == u.status && networks.is_none_or(|n| *n == current.networks) {
                continue;
            }
            let mut t = current.clone();
            t.status = u.status.clone();
            if let Some(n) = networks {
                t.networks = n.clone();
            }
            changed.insert(id, t);
        }
    }
    if changed.is_empty() {
        return None;
    }
    let mut tx = Transaction::new();
    for (id, t) in changed {
        // `changed` holds clones of the stored tasks (their version is the
        // stored one): a pure status change is written as a status-only
        // op, which replicates the status instead of the whole task.
        match state.task(id) {
            Some(stored) if stored.networks == t.networks => tx = tx.update_task_status(t.id, t.meta.version, t.status),
            _ => tx = tx.update(t),
        }
    }
    Some(tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NetworkAttachment, Object, Service, ServiceSpec, TaskState, TaskStatus};
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
    fn pure_status_changes_are_status_ops_and_the_rest_full_updates() {
        let s = state();
        let net = vec![NetworkAttachment { network: "backend".into(), addresses: vec!["10.0.0.2".into()] }];
        let reports = [
            report(
                "n1",
                vec![update("t1", TaskState::Running, None), update("t2", TaskState::Running, Some(net.clone()))],
            ),
            // The same networks as stored: still a pure status change.
            report("n1", vec![update("t3", TaskState::Running, Some(Vec::new()))]),
        ];
        let tx = transaction(&s, &reports).expect("the reports change something");
        let t1 = s.task(&"t1".into()).expect("t1");
        let t3 = s.task(&"t3".into()).expect("t3");
        let running = TaskStatus { state: TaskState::Running, ..Default::default() };
        let mut t2 = s.task(&"t2".into()).expect("t2").as_ref().clone();
        t2.status = running.clone();
        t2.networks = net;
        assert_eq!(
            tx.ops,
            vec![
                Op::UpdateTaskStatus { id: "t1".into(), version: Some(t1.meta.version), status: running.clone() },
                Op::Update(Object::Task(t2)),
                Op::UpdateTaskStatus { id: "t3".into(), version: Some(t3.meta.version), status: running },
            ]
        );
        let (after, _) = s.apply(&tx).expect("the write commits");
        assert!(after.tasks().all(|t| t.status.state == TaskState::Running));
    }
}
