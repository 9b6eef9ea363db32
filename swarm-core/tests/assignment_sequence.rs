//! Assignments carry a sequence (`applies_to` -> `results_in`): the
//! dispatcher numbers a session's messages one after the other, and an
//! agent that receives a message that does not follow the last one it
//! applied ends the session and starts again from a full set.

use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarm_core::agent::{Agent, AgentConfig};
use swarm_core::cluster::Cluster;
use swarm_core::dispatcher::*;
use swarm_core::manager::Manager;
use swarm_core::model::{NodeDescription, Platform, Resources, ServiceSpec};
use swarm_core::scheduler::FirstFit;
use swarm_core::sim::SimRuntime;
use swarm_core::store::MemStore;
use tokio::sync::mpsc;

#[tokio::test(start_paused = true)]
async fn a_sessions_messages_follow_one_another() {
    let store = Arc::new(MemStore::new());
    let manager = Manager::start(store.clone(), Box::new(FirstFit), Default::default());
    let d = manager.dispatcher();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let session = d
        .open_session(SessionRequest {
            node_id: "n1".into(),
            description: NodeDescription {
                hostname: "h1".into(),
                platform: Platform::new("linux", "amd64"),
                resources: Resources::new(4_000_000_000, 8 << 30),
                ..Default::default()
            },
            addr: "10.0.0.1".into(),
        })
        .await
        .unwrap();
    let mut stream = d.assignments(&session.session_id).await.unwrap();
    let first = stream.next().await.unwrap();
    assert!(first.full);
    assert_eq!((first.applies_to, first.results_in), (0, 1));
    Cluster::new(store.clone()).create_service(ServiceSpec::replicated("web", "nginx:1.27", 3)).await.unwrap();
    let mut last = first.results_in;
    let mut tasks = 0;
    while tasks < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap();
        assert!(!msg.full);
        assert_eq!(msg.applies_to, last, "each message follows the one before");
        assert_eq!(msg.results_in, last + 1);
        last = msg.results_in;
        tasks += msg.tasks.len();
    }
}

/// A dispatcher whose first session skips a message number; later
/// sessions are well-behaved. Counts sessions and full sets sent.
#[derive(Clone, Default)]
struct Skipping {
    sessions: Arc<Mutex<u32>>,
}

#[async_trait]
impl Dispatcher for Skipping {
    async fn open_session(&self, _req: SessionRequest) -> Result<SessionInfo, DispatchError> {
        let mut n = self.sessions.lock().unwrap();
        *n += 1;
        Ok(SessionInfo { session_id: format!("s{n}"), heartbeat_period: Duration::from_secs(5) })
    }
    async fn heartbeat(&self, _session_id: &str) -> Result<HeartbeatResponse, DispatchError> {
        Ok(HeartbeatResponse { heartbeat_period: Duration::from_secs(5) })
    }
    async fn update_task_status(&self, _: &str, _: Vec<TaskStatusUpdate>) -> Result<(), DispatchError> {
        Ok(())
    }
    async fn assignments(&self, session_id: &str) -> Result<AssignmentStream, DispatchError> {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Assignments { full: true, applies_to: 0, results_in: 1, ..Default::default() }).unwrap();
        if session_id == "s1" {
            // Message 2 was lost: this one applies to 2, not to 1.
            tx.send(Assignments { applies_to: 2, results_in: 3, ..Default::default() }).unwrap();
        } else {
            tx.send(Assignments { applies_to: 1, results_in: 2, ..Default::default() }).unwrap();
        }
        // Keep the stream open: the sender lives as long as the test.
        std::mem::forget(tx);
        Ok(AssignmentStream::new(rx))
    }
}

#[tokio::test(start_paused = true)]
async fn an_agent_that_sees_a_gap_starts_a_new_session_with_a_full_set() {
    let d = Skipping::default();
    let agent = Agent::new(
        AgentConfig { node_id: "n1".into(), description: NodeDescription::default(), addr: "10.0.0.1".into() },
        Arc::new(SimRuntime::new("n1")),
        Arc::new(d.clone()),
    );
    let run = tokio::spawn(agent.run());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(*d.sessions.lock().unwrap(), 2, "the gap ended the first session; the second has none");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(*d.sessions.lock().unwrap(), 2, "a well-numbered session is kept");
    run.abort();
}

/// A status the worker reported is not sent back to it (nothing there to
/// act on); a change the managers make to the task is, and the sequence
/// has no hole where the echo would have been.
#[tokio::test(start_paused = true)]
async fn a_workers_own_status_reports_are_not_echoed_back() {
    use swarm_core::model::{Object, TaskState, TaskStatus};
    use swarm_core::state::Transaction;
    use swarm_core::store::Store;
    let store = Arc::new(MemStore::new());
    let manager = Manager::start(store.clone(), Box::new(FirstFit), Default::default());
    let d = manager.dispatcher();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let req = SessionRequest {
        node_id: "n1".into(),
        description: NodeDescription { resources: Resources::new(4_000_000_000, 8 << 30), ..Default::default() },
        addr: "10.0.0.1".into(),
    };
    let session = d.open_session(req).await.unwrap();
    let mut stream = d.assignments(&session.session_id).await.unwrap();
    assert!(stream.next().await.unwrap().full);
    Cluster::new(store.clone()).create_service(ServiceSpec::replicated("web", "nginx:1.27", 1)).await.unwrap();
    let (assigned, last) = loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap();
        if let Some(t) = msg.tasks.into_iter().next() {
            break (t, msg.results_in);
        }
    };
    assert_eq!(assigned.status.state, TaskState::Assigned);
    let running = TaskStatus { state: TaskState::Running, message: "started".into(), ..Default::default() };
    let report = TaskStatusUpdate { task_id: assigned.id.clone(), status: running, networks: None };
    d.update_task_status(&session.session_id, vec![report]).await.unwrap();
    let stored = store.state().task(&assigned.id).unwrap().clone();
    assert_eq!(stored.status.state, TaskState::Running, "the report is committed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        tokio::time::timeout(Duration::from_secs(1), stream.next()).await.is_err(),
        "no message for a status the worker itself reported"
    );
    // The managers stop the task: that is sent, right after the last message.
    let mut stop = stored.as_ref().clone();
    stop.desired_state = TaskState::Shutdown;
    store.commit(Transaction::new().update(Object::Task(stop))).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap();
    assert_eq!(msg.applies_to, last, "no message was skipped in the sequence");
    let t = msg.tasks.iter().find(|t| t.id == assigned.id).expect("the stopped task is sent");
    assert_eq!((t.desired_state, t.status.state), (TaskState::Shutdown, TaskState::Running));
}
