//! `LeaderDispatcher`: every call goes to the dispatcher of the manager that
//! leads at that moment, a switch of leader between calls included, and
//! fails as unavailable while none leads.

use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use swarm_core::dispatcher::LeaderDispatcher;
use swarm_core::dispatcher::*;
use swarm_core::manager::{Manager, ManagerConfig};
use swarm_core::model::{NodeDescription, NodeState, Platform, Resources, TaskState, TaskStatus};
use swarm_core::scheduler::FirstFit;
use tokio::sync::{mpsc, watch};

mod common;
use common::{Led, led};

/// A dispatcher that records which calls reached it.
#[derive(Clone)]
struct Recorder {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn note(&self, call: &str) {
        self.log.lock().unwrap().push(format!("{}:{call}", self.name));
    }
}

#[async_trait]
impl Dispatcher for Recorder {
    async fn open_session(&self, req: SessionRequest) -> Result<SessionInfo, DispatchError> {
        self.note(&format!("open {}", req.node_id));
        Ok(SessionInfo { session_id: format!("{}-session", self.name), heartbeat_period: Default::default() })
    }
    async fn heartbeat(&self, session_id: &str) -> Result<HeartbeatResponse, DispatchError> {
        self.note(&format!("heartbeat {session_id}"));
        Ok(HeartbeatResponse { heartbeat_period: Default::default() })
    }
    async fn update_task_status(&self, session_id: &str, updates: Vec<TaskStatusUpdate>) -> Result<(), DispatchError> {
        self.note(&format!("status {session_id} {}", updates.len()));
        Ok(())
    }
    async fn assignments(&self, session_id: &str) -> Result<AssignmentStream, DispatchError> {
        self.note(&format!("assignments {session_id}"));
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Assignments { full: true, ..Default::default() }).unwrap();
        Ok(AssignmentStream::new(rx))
    }
}

fn request(node: &str) -> SessionRequest {
    SessionRequest {
        node_id: node.into(),
        description: NodeDescription {
            hostname: node.to_string(),
            platform: Platform::new("linux", "amd64"),
            resources: Resources::new(1_000_000_000, 1 << 30),
            engine_labels: Default::default(),
        },
        addr: "10.0.0.1".into(),
    }
}

fn update() -> TaskStatusUpdate {
    TaskStatusUpdate {
        task_id: "t1".into(),
        status: TaskStatus { state: TaskState::Running, ..Default::default() },
        networks: None,
    }
}

#[tokio::test]
async fn without_a_leader_every_call_is_unavailable() {
    let follow = LeaderDispatcher::new();
    assert!(follow.is_empty());
    let err = follow.heartbeat("s").await.unwrap_err();
    assert_eq!(err, DispatchError::Unavailable("no leader among 0 managers".into()));

    let log = Arc::new(Mutex::new(Vec::new()));
    let (_lead_a, a) = watch::channel(false);
    let (_lead_b, b) = watch::channel(false);
    follow.add(a, Recorder { name: "a", log: log.clone() });
    follow.add(b, Recorder { name: "b", log: log.clone() });
    assert_eq!(follow.leader(), None);
    for err in [
        follow.open_session(request("n1")).await.unwrap_err(),
        follow.heartbeat("s").await.unwrap_err(),
        follow.update_task_status("s", vec![update()]).await.unwrap_err(),
        follow.assignments("s").await.err().unwrap(),
    ] {
        assert_eq!(err, DispatchError::Unavailable("no leader among 2 managers".into()));
    }
    assert!(log.lock().unwrap().is_empty(), "no dispatcher was called: {:?}", log.lock().unwrap());
}

#[tokio::test]
async fn every_call_goes_to_the_leader_of_the_moment() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (lead_a, a) = watch::channel(true);
    let (lead_b, b) = watch::channel(false);
    let follow = LeaderDispatcher::new();
    assert_eq!(follow.add(a, Recorder { name: "a", log: log.clone() }), 0);
    assert_eq!(follow.add(b, Recorder { name: "b", log: log.clone() }), 1);
    // Clones share the managers: an agent holds one, the test another.
    let agent_side = follow.clone();
    assert_eq!(agent_side.leader(), Some(0));

    let info = agent_side.open_session(request("n1")).await.unwrap();
    assert_eq!(info.session_id, "a-session");
    agent_side.heartbeat(&info.session_id).await.unwrap();
    agent_side.update_task_status(&info.session_id, vec![update(), update()]).await.unwrap();
    let mut stream = agent_side.assignments(&info.session_id).await.unwrap();
    assert_eq!(stream.next().await.map(|a| a.full), Some(true), "the leader's stream is handed over");

    // The leader changes between two calls.
    lead_a.send_replace(false);
    lead_b.send_replace(true);
    assert_eq!(follow.leader(), Some(1));
    agent_side.heartbeat(&info.session_id).await.unwrap();
    let info = agent_side.open_session(request("n1")).await.unwrap();
    assert_eq!(info.session_id, "b-session");
    agent_side.assignments(&info.session_id).await.unwrap();
    agent_side.update_task_status(&info.session_id, vec![update()]).await.unwrap();

    // Both claim to lead (an old leader that has not noticed): the first added.
    lead_a.send_replace(true);
    agent_side.heartbeat("x").await.unwrap();
    // None leads, then b again.
    lead_a.send_replace(false);
    lead_b.send_replace(false);
    assert!(matches!(agent_side.heartbeat("x").await, Err(DispatchError::Unavailable(_))));
    lead_b.send_replace(true);
    agent_side.heartbeat("y").await.unwrap();

    assert_eq!(
        *log.lock().unwrap(),
        vec![
            "a:open n1",
            "a:heartbeat a-session",
            "a:status a-session 2",
            "a:assignments a-session",
            "b:heartbeat a-session",
            "b:open n1",
            "b:assignments b-session",
            "b:status b-session 1",
            "a:heartbeat x",
            "b:heartbeat y",
        ]
    );
}

fn manager(store: &Arc<Led>) -> Manager {
    Manager::builder(store.clone())
        .scheduler(Box::new(FirstFit))
        .config(ManagerConfig { seed: Some(1), ..Default::default() })
        .start()
        .unwrap()
}

fn ready(store: &Led, node: &str) -> bool {
    store.inner.state().node(&node.into()).is_some_and(|n| n.status.state == NodeState::Ready)
}

#[tokio::test(start_paused = true)]
async fn sessions_follow_the_leading_manager() {
    let (one, two) = (led(true), led(false));
    let (m1, m2) = (manager(&one), manager(&two));
    let follow = LeaderDispatcher::new();
    follow.add_manager(one.as_ref(), &m1);
    follow.add_manager(two.as_ref(), &m2);
    assert_eq!(follow.len(), 2);

    let first = follow.open_session(request("n1")).await.unwrap();
    assert!(ready(&one, "n1") && !ready(&two, "n1"), "the node registered with the leader, manager one");
    follow.heartbeat(&first.session_id).await.unwrap();

    one.leader.send_replace(false);
    two.leader.send_replace(true);
    assert_eq!(
        follow.heartbeat(&first.session_id).await,
        Err(DispatchError::InvalidSession(first.session_id.clone())),
        "the new leader does not know the old session: the agent opens a new one"
    );
    let second = follow.open_session(request("n1")).await.unwrap();
    assert_ne!(second.session_id, first.session_id);
    assert!(ready(&two, "n1"), "the node registered with the new leader, manager two");
    follow.heartbeat(&second.session_id).await.unwrap();

    two.leader.send_replace(false);
    assert!(
        matches!(follow.heartbeat(&second.session_id).await, Err(DispatchError::Unavailable(m)) if m.contains("no leader"))
    );
}
