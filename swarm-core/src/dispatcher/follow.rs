//! [`LeaderDispatcher`]: the [`Dispatcher`] of whichever manager leads now,
//! for agents in a process that runs several managers.
//!
//! Every [`Manager`] has a dispatcher, but only the leader's serves
//! sessions for real: its node-health loop runs only while
//! [`Store::leadership`] is true. A `LeaderDispatcher` holds one
//! (leadership, dispatcher) pair per manager and forwards each call to the
//! dispatcher of the manager that leads at that moment. When none leads
//! (an election is under way) the call fails with
//! [`DispatchError::Unavailable`] and the agent retries; after a change of
//! leader the new leader does not know the old session, answers
//! [`DispatchError::InvalidSession`], and the agent opens a new one.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::sync::Arc;
//! use swarm_core::dispatcher::LeaderDispatcher;
//! use swarm_core::manager::{Manager, ManagerConfig};
//! use swarm_core::scheduler::FirstFit;
//! use swarm_core::store::{MemStore, Store};
//!
//! let store = Arc::new(MemStore::new());
//! let manager = Manager::start(store.clone(), Box::new(FirstFit), ManagerConfig::default());
//! let follow = LeaderDispatcher::new();
//! // One line per manager of the process (a MemStore always leads).
//! follow.add_manager(store.as_ref(), &manager);
//! assert_eq!(follow.leader(), Some(0));
//! // Agent::new(config, runtime, Arc::new(follow.clone())) follows the leader.
//! # }
//! ```
//!
//! [`Manager`]: crate::manager::Manager

use crate::dispatcher::{
    AssignmentStream, DispatchError, Dispatcher, HeartbeatResponse, SessionInfo, SessionRequest, TaskStatusUpdate,
};
use crate::manager::Manager;
use crate::store::Store;
use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// One manager as the [`LeaderDispatcher`] sees it.
struct Member {
    leadership: watch::Receiver<bool>,
    dispatcher: Arc<dyn Dispatcher>,
}

/// Forwards every [`Dispatcher`] call to the dispatcher of the manager that
/// leads now. Cheap to clone; clones share their managers. See the
/// [module docs](self).
#[derive(Clone, Default)]
pub struct LeaderDispatcher {
    members: Arc<Mutex<Vec<Member>>>,
}

impl std::fmt::Debug for LeaderDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderDispatcher").field("managers", &self.len()).field("leader", &self.leader()).finish()
    }
}

impl LeaderDispatcher {
    /// A dispatcher that knows no manager yet (every call fails until one
    /// is added).
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        // Critical sections push or read whole entries.
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a manager: `leadership` says whether it leads (its store's
    /// [`Store::leadership`]), `dispatcher` serves the calls while it does.
    /// Returns the manager's index (as [`LeaderDispatcher::leader`] reports it).
    pub fn add(&self, leadership: watch::Receiver<bool>, dispatcher: impl Dispatcher) -> usize {
        let mut members = self.lock();
        members.push(Member { leadership, dispatcher: Arc::new(dispatcher) });
        members.len() - 1
    }

    /// Adds `manager`, which runs on `store`: `add(store.leadership(),
    /// manager.dispatcher())`.
    pub fn add_manager(&self, store: &dyn Store, manager: &Manager) -> usize {
        self.add(store.leadership(), manager.dispatcher())
    }

    /// How many managers were added.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no manager was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index of the manager that leads now, if any. Should two say they
    /// lead (an old leader has not noticed yet that it lost its quorum), the
    /// first added wins; its calls fail and the agent retries.
    pub fn leader(&self) -> Option<usize> {
        self.lock().iter().position(|m| *m.leadership.borrow())
    }

    /// The leading manager's dispatcher, or why there is none.
    fn current(&self) -> Result<Arc<dyn Dispatcher>, DispatchError> {
        let members = self.lock();
        match members.iter().find(|m| *m.leadership.borrow()) {
            Some(m) => Ok(m.dispatcher.clone()),
            None => {
                tracing::debug!(managers = members.len(), "no manager leads: the call fails");
                Err(DispatchError::Unavailable(format!("no leader among {} managers", members.len())))
            }
        }
    }
}

#[async_trait]
impl Dispatcher for LeaderDispatcher {
    async fn open_session(&self, req: SessionRequest) -> Result<SessionInfo, DispatchError> {
        self.current()?.open_session(req).await
    }

    async fn heartbeat(&self, session_id: &str) -> Result<HeartbeatResponse, DispatchError> {
        self.current()?.heartbeat(session_id).await
    }

    async fn update_task_status(&self, session_id: &str, updates: Vec<TaskStatusUpdate>) -> Result<(), DispatchError> {
        self.current()?.update_task_status(session_id, updates).await
    }

    async fn assignments(&self, session_id: &str) -> Result<AssignmentStream, DispatchError> {
        self.current()?.assignments(session_id).await
    }
}
