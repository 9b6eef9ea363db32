//! Cluster-level scenarios on the real Docker Engine: swarm-core's manager
//! (orchestrators, scheduler loop, dispatcher) and two node agents, each
//! agent on its own `DockerRuntime` (both on this machine's engine, told
//! apart by the node label), driven through the `Cluster` API.
//!
//! Names: every service, network and node id starts with the test's
//! prefix (`swc<pid><test>`), containers carry the test label; everything is
//! removed afterwards, also on failure (agents are stopped first). Without
//! an engine: a recorded skip, or a failure under CI.

mod common;

use common::{TEST_LABEL, engine_runtime};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarm_core::agent::{Agent, AgentConfig};
use swarm_core::cluster::{Cluster, TaskFilter};
use swarm_core::dispatcher::{Dispatcher, LocalDispatcher};
use swarm_core::id::{NodeId, TaskId};
use swarm_core::manager::{Manager, ManagerConfig};
use swarm_core::model::*;
use swarm_core::runtime::{ContainerState, Runtime, labels};
use swarm_core::store::{MemStore, Store};
use swarm_core::time::SpecDuration;
use swarm_runtime_docker::{DockerRuntime, DockerRuntimeOptions, fixture};

/// A running two-node cluster on the engine.
struct World {
    rt: DockerRuntime,
    cluster: Cluster,
    image: String,
    prefix: String,
    nodes: Vec<String>,
    dispatcher: LocalDispatcher,
    agents: Mutex<Vec<Option<AgentProcess>>>,
}

/// A node agent in its own thread and tokio runtime, so that stopping it
/// ends every task it spawned, as a process exit does.
struct AgentProcess {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl AgentProcess {
    fn kill(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

impl World {
    /// Starts node `i`'s agent (0-based) on a fresh `DockerRuntime`,
    /// stopping the one running there first (an agent process restart).
    fn start_agent(&self, i: usize) {
        let mut agents = self.agents.lock().unwrap();
        if agents.len() <= i {
            agents.resize_with(i + 1, || None);
        }
        if let Some(a) = agents[i].take() {
            a.kill();
            self.dispatcher.drop_session(&NodeId::new(&self.nodes[i]));
        }
        let config = AgentConfig {
            node_id: NodeId::new(&self.nodes[i]),
            description: NodeDescription {
                hostname: format!("{}-host{i}", self.prefix),
                platform: Platform::new("linux", "amd64"),
                resources: Resources::new(4_000_000_000, 8 << 30),
                engine_labels: Labels::new(),
            },
            addr: "127.0.0.1".into(),
        };
        let dispatcher = Arc::new(self.dispatcher.clone()) as Arc<dyn Dispatcher>;
        let prefix = self.prefix.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            // One thread: once block_on returns, none of the agent's tasks
            // is polled again; dropping the runtime drops them all, as a
            // process exit would (no worker gets to stop its container).
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let _guard = rt.enter();
            let runtime = Arc::new(DockerRuntime::connect(secrets_on_shm(&prefix)).unwrap());
            let agent = Agent::new(config, runtime, dispatcher);
            rt.spawn(async move {
                let _ = agent.run().await;
            });
            let _ = rt.block_on(stopped);
            drop(_guard);
            drop(rt);
        });
        agents[i] = Some(AgentProcess { stop, thread });
    }

    fn stop_agents(&self) {
        let procs: Vec<_> = self.agents.lock().unwrap().iter_mut().filter_map(Option::take).collect();
        for p in procs {
            p.kill();
        }
    }

    fn service(&self, name: &str, replicas: u64) -> ServiceSpec {
        let mut s = ServiceSpec::replicated(format!("{}{name}", self.prefix), &self.image, replicas);
        let c = &mut s.task_template.container;
        c.labels.insert(TEST_LABEL.into(), self.prefix.clone());
        c.stop_grace_period = SpecDuration::from_secs(3);
        c.health_check = Some(HealthCheck {
            probe: HealthProbe::Http { port: fixture::PORT, path: "/health".into() },
            interval: SpecDuration::from_millis(300),
            timeout: SpecDuration::from_secs(1),
            retries: 2,
            ..Default::default()
        });
        s.task_template.restart_policy.delay = SpecDuration::from_millis(100);
        s
    }

    async fn tasks(&self, svc: &str) -> Vec<Task> {
        let f = TaskFilter { service: Some(svc.into()), ..Default::default() };
        self.cluster.list_tasks(f).await.unwrap()
    }

    /// Tasks a load balancer would send to: desired and observed RUNNING,
    /// and healthy.
    async fn serving(&self, svc: &str) -> Vec<Task> {
        self.tasks(svc)
            .await
            .into_iter()
            .filter(|t| {
                t.desired_state == TaskState::Running
                    && t.status.state == TaskState::Running
                    && t.status.health == Some(HealthState::Healthy)
            })
            .collect()
    }

    async fn wait_serving(&self, svc: &str, n: usize, ok: impl Fn(&[Task]) -> bool, within: Duration) -> Vec<Task> {
        let start = Instant::now();
        loop {
            let s = self.serving(svc).await;
            if s.len() == n && ok(&s) {
                return s;
            }
            if start.elapsed() > within {
                let all: Vec<_> = self
                    .tasks(svc)
                    .await
                    .iter()
                    .map(|t| (t.name(), t.desired_state, t.status.state, t.status.health, t.status.err.clone()))
                    .collect();
                panic!("{svc}: {} serving, want {n} (and the condition) after {within:?}: {all:#?}", s.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runtime options keeping secret files in /dev/shm (already a tmpfs), in
/// a directory of the test's own, removed afterwards.
fn secrets_on_shm(prefix: &str) -> DockerRuntimeOptions {
    DockerRuntimeOptions { secrets_dir: format!("/dev/shm/{prefix}-secrets").into(), ..Default::default() }
}

/// The address the agent reported for a task.
fn addr(t: &Task) -> SocketAddr {
    let a: IpAddr = t.networks[0].addresses[0].parse().unwrap();
    SocketAddr::new(a, fixture::PORT)
}

/// Starts a manager and two agents, runs `body`, then stops the agents and
/// removes everything named or labelled with the prefix, then re-raises a
/// panic of the body.
async fn scoped<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Arc<World>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let _ = tracing_subscriber::fmt().with_env_filter("swarm_core=info").with_test_writer().try_init();
    let Some(rt) = engine_runtime(DockerRuntimeOptions::default()).await else { return };
    let image = fixture::ensure_test_image(rt.client()).await.expect("test image");
    let prefix = format!("swc{}{test}", std::process::id());
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let cluster = Cluster::with_seed(store.clone(), 11);
    cluster.set_cluster_spec(ClusterSpec::default()).await.unwrap();
    let manager = Manager::start(
        store,
        Box::new(swarm_sched::Pipeline::spread()),
        ManagerConfig { seed: Some(11), ..Default::default() },
    );
    let nodes = (1..=2).map(|i| format!("{prefix}-node{i}")).collect();
    let world = Arc::new(World {
        rt: rt.clone(),
        cluster,
        image,
        prefix: prefix.clone(),
        nodes,
        dispatcher: manager.dispatcher(),
        agents: Mutex::new(Vec::new()),
    });
    world.start_agent(0);
    world.start_agent(1);
    let result = tokio::spawn(body(world.clone())).await;
    manager.stop();
    world.stop_agents();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut sel = Labels::new();
    sel.insert(TEST_LABEL.into(), prefix.clone());
    for c in rt.list(&sel).await.unwrap_or_default() {
        let _ = rt.remove(&c.id).await;
    }
    let nets = rt.client().list_networks(None::<bollard::query_parameters::ListNetworksOptions>).await;
    for n in nets.unwrap_or_default().into_iter().filter_map(|n| n.name).filter(|n| n.starts_with(&prefix)) {
        let _ = rt.remove_network(&n).await;
    }
    drop(world);
    let _ = std::fs::remove_dir_all(secrets_on_shm(&prefix).secrets_dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_service_answers_heals_drains_and_cleans_up() {
    scoped("heal", |w| async move {
        let spec = w.service("web", 3);
        let svc = spec.name.clone();
        w.cluster.create_service(spec).await.unwrap();
        let tasks = w.wait_serving(&svc, 3, |_| true, Duration::from_secs(60)).await;
        // All three replicas answer over HTTP, spread over both nodes.
        for t in &tasks {
            let (code, body) = fixture::http_get(addr(t), "/health", Duration::from_secs(2)).await.unwrap();
            assert_eq!((code, body.as_str()), (200, "ok"));
        }
        let nodes: std::collections::BTreeSet<_> = tasks.iter().map(|t| t.node_id.clone()).collect();
        assert_eq!(nodes.len(), 2);

        // `docker kill` from outside: the task fails and is replaced.
        let victim = tasks[0].clone();
        let cid = victim.status.container_id.clone().unwrap();
        w.rt.client().kill_container(&cid, None::<bollard::query_parameters::KillContainerOptions>).await.unwrap();
        w.wait_serving(&svc, 3, |s| s.iter().all(|t| t.id != victim.id), Duration::from_secs(60)).await;
        let dead = w.tasks(&svc).await.into_iter().find(|t| t.id == victim.id).unwrap();
        // FAILED either way; whether the agent saw the exit (137) or its
        // health probe of the dead container first depends on timing.
        assert_eq!(dead.status.state, TaskState::Failed, "{dead:?}");
        match dead.status.exit_code {
            Some(code) => assert_eq!(code, 137, "{:?}", dead.status),
            None => assert!(dead.status.err.as_deref().is_some_and(|e| e.contains("unhealthy")), "{:?}", dead.status),
        }

        // A failing health check: the task is stopped and replaced.
        let sick = w.serving(&svc).await[0].clone();
        fixture::http_get(addr(&sick), "/unhealthy", Duration::from_secs(2)).await.unwrap();
        w.wait_serving(&svc, 3, |s| s.iter().all(|t| t.id != sick.id), Duration::from_secs(60)).await;
        let sick_now = w.tasks(&svc).await.into_iter().find(|t| t.id == sick.id).unwrap();
        assert_ne!(sick_now.desired_state, TaskState::Running);

        // Drain node 1: its tasks move to node 2, its containers stop.
        let n1 = w.nodes[0].clone();
        w.cluster.set_node_availability(&n1, Availability::Drain).await.unwrap();
        let on_n1 = |s: &[Task]| s.iter().all(|t| t.node_id.as_ref().map(|n| n.as_str()) != Some(n1.as_str()));
        w.wait_serving(&svc, 3, on_n1, Duration::from_secs(60)).await;
        let mut sel = Labels::new();
        sel.insert(labels::NODE_ID.into(), n1.clone());
        let start = Instant::now();
        while w.rt.list(&sel).await.unwrap().iter().any(|c| c.state == ContainerState::Running) {
            assert!(start.elapsed() < Duration::from_secs(30), "node 1 still runs containers after the drain");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Removing the service removes every container.
        w.cluster.remove_service(&svc).await.unwrap();
        let mut sel = Labels::new();
        sel.insert(labels::SERVICE_NAME.into(), svc.clone());
        let start = Instant::now();
        while !w.rt.list(&sel).await.unwrap().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(60), "containers left after the service was removed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_first_rolling_update_fails_no_request() {
    scoped("roll", |w| async move {
        let mut spec = w.service("api", 2);
        // The replicas drain for a second after SIGTERM, as a real server
        // does while the load balancer stops sending to it.
        spec.task_template.container.env.push("DRAIN_MS=1000".into());
        spec.update_config.order = UpdateOrder::StartFirst;
        spec.update_config.parallelism = 1;
        spec.update_config.monitor = SpecDuration::from_millis(500);
        let svc = spec.name.clone();
        w.cluster.create_service(spec).await.unwrap();
        let before = w.wait_serving(&svc, 2, |_| true, Duration::from_secs(60)).await;

        // A client that sends to the serving tasks, round robin, as a load balancer would.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client = {
            let (w, svc, stop) = (w.clone(), svc.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed, mut i) = (0u32, Vec::new(), 0usize);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let serving = w.serving(&svc).await;
                    if let Some(t) = serving.get(i % serving.len().max(1)) {
                        match fixture::http_get(addr(t), "/health", Duration::from_secs(2)).await {
                            Ok((200, _)) => ok += 1,
                            other => failed.push((t.name(), other)),
                        }
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (ok, failed)
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        w.cluster.modify_service(&svc, |s| s.task_template.container.env.push("VERSION=2".into())).await.unwrap();
        let old: Vec<TaskId> = before.iter().map(|t| t.id.clone()).collect();
        w.wait_serving(&svc, 2, |s| s.iter().all(|t| !old.contains(&t.id)), Duration::from_secs(90)).await;
        let start = Instant::now();
        loop {
            let st = w.cluster.inspect_service(&svc).await.unwrap().update_status.map(|u| u.state);
            if st == Some(UpdateState::Completed) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "update not completed: {st:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (ok, failed) = client.await.unwrap();
        assert!(ok > 20, "only {ok} requests went through");
        assert!(failed.is_empty(), "{} failed requests (of {}): {failed:?}", failed.len(), ok as usize + failed.len());
        // The new tasks run the new spec.
        for t in w.serving(&svc).await {
            assert!(t.spec.container.env.contains(&"VERSION=2".to_string()));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_share_a_network_by_name_and_read_their_secret() {
    scoped("net", |w| async move {
        let net = format!("{}-backend", w.prefix);
        w.cluster.create_network(NetworkSpec { name: net.clone(), ..Default::default() }).await.unwrap();
        let secret = format!("{}-pw", w.prefix);
        w.cluster.create_secret(&secret, b"hunter2-cluster".to_vec()).await.unwrap();
        let mut api = w.service("api", 2);
        api.networks = vec![NetworkAttachmentConfig { target: net.clone(), aliases: vec![] }];
        api.task_template.container.secrets =
            vec![SecretReference { secret_name: secret.clone(), target: FileTarget::default() }];
        let mut front = w.service("front", 1);
        front.networks = api.networks.clone();
        let (api_name, front_name) = (api.name.clone(), front.name.clone());
        w.cluster.create_service(api).await.unwrap();
        w.cluster.create_service(front).await.unwrap();
        let apis = w.wait_serving(&api_name, 2, |_| true, Duration::from_secs(60)).await;
        let fronts = w.wait_serving(&front_name, 1, |_| true, Duration::from_secs(60)).await;
        // front reaches api by the service name, on the shared network.
        let path = format!("/fetch?host={api_name}&port={}&path=/health", fixture::PORT);
        let (code, body) = fixture::http_get(addr(&fronts[0]), &path, Duration::from_secs(5)).await.unwrap();
        assert_eq!((code, body.as_str()), (200, "ok"));
        // The secret is a file in every api replica, and not in inspect.
        for t in &apis {
            let p = format!("/file?path=/run/secrets/{secret}");
            let (code, body) = fixture::http_get(addr(t), &p, Duration::from_secs(5)).await.unwrap();
            assert_eq!((code, body.as_str()), (200, "hunter2-cluster"));
            let raw = w.rt.client().inspect_container(t.status.container_id.as_deref().unwrap(), None).await.unwrap();
            assert!(!serde_json::to_string(&raw).unwrap().contains("hunter2-cluster"));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_readopts_its_running_containers() {
    scoped("adopt", |w| async move {
        let spec = w.service("keep", 2);
        let svc = spec.name.clone();
        w.cluster.create_service(spec).await.unwrap();
        let before = w.wait_serving(&svc, 2, |_| true, Duration::from_secs(60)).await;
        let containers: Vec<_> = before.iter().map(|t| t.status.container_id.clone().unwrap()).collect();
        // Restart both agents, each on a new DockerRuntime that knows nothing.
        w.start_agent(0);
        w.start_agent(1);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = w.wait_serving(&svc, 2, |_| true, Duration::from_secs(30)).await;
        // Same tasks, same containers: adopted, not replaced.
        let mut ids: Vec<_> = after.iter().map(|t| (t.id.clone(), t.status.container_id.clone().unwrap())).collect();
        let mut want: Vec<_> = before.iter().map(|t| t.id.clone()).zip(containers).collect();
        ids.sort();
        want.sort();
        let all: Vec<_> = w
            .tasks(&svc)
            .await
            .iter()
            .map(|t| {
                (
                    t.name(),
                    t.desired_state,
                    t.status.state,
                    t.status.message.clone(),
                    t.status.err.clone(),
                    t.status.exit_code,
                )
            })
            .collect();
        assert_eq!(ids, want, "{all:#?}");
        for t in &after {
            let (code, _) = fixture::http_get(addr(t), "/health", Duration::from_secs(2)).await.unwrap();
            assert_eq!(code, 200);
        }
        // The adopted containers are still watched: a kill is noticed and replaced.
        let victim = after[0].clone();
        w.rt.kill(victim.status.container_id.as_deref().unwrap()).await.unwrap();
        w.wait_serving(&svc, 2, |s| s.iter().all(|t| t.id != victim.id), Duration::from_secs(60)).await;
    })
    .await;
}
