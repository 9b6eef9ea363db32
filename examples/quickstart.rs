//! Quickstart: an in-process cluster of three nodes converges a service,
//! replaces a crashed container and heals a node failure.
//!
//! With the `docker` feature (on by default) and a reachable Docker Engine,
//! the three nodes run real containers on that engine (a small static HTTP
//! server built on the spot and imported as an image: no registry needed),
//! and the quickstart asks every replica for its task id over HTTP.
//! Otherwise it runs on `SimRuntime` (simulated containers).
//! `SWARM_QUICKSTART=sim` forces the simulation.
//!
//! Ctrl-C (or SIGTERM) at any point removes the containers this run
//! started, says which, and exits with 130 (143); see
//! `support::interrupt`.
//!
//! `cargo run --example quickstart`

mod support;

use std::sync::Arc;
use std::time::Duration;
use support::interrupt::Interrupt;
use support::tracked::Tracked;
use swarm::agent::{Agent, AgentConfig};
use swarm::cluster::{Cluster, TaskFilter};
use swarm::dispatcher::Dispatcher;
use swarm::manager::{Manager, ManagerConfig};
use swarm::model::*;
use swarm::placement::Pipeline;
use swarm::runtime::Runtime;
use swarm::sim::SimRuntime;
use swarm::store::{MemStore, Store};
use swarm::time::SpecDuration;

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Node {
    id: String,
    agent: AbortOnDrop,
}

/// A spawned task that ends with its owner: on Ctrl-C the run is dropped,
/// and its agents and event printer stop with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where the containers run.
///
/// The runtimes are tracked by the run's [`Interrupt`]: what they create
/// is removed on Ctrl-C.
enum Backend {
    Sim(Vec<Tracked<SimRuntime>>),
    #[cfg(feature = "docker")]
    Docker {
        rt: Tracked<swarm::docker::DockerRuntime>,
        image: String,
    },
}

impl Backend {
    async fn pick(interrupt: &Interrupt) -> Backend {
        if std::env::var("SWARM_QUICKSTART").as_deref() != Ok("sim") {
            #[cfg(feature = "docker")]
            match docker_backend(interrupt).await {
                Ok(b) => return b,
                Err(e) => println!("(no usable Docker Engine: {e}; running on SimRuntime)\n"),
            }
        }
        Backend::Sim((1..=3).map(|i| interrupt.track(SimRuntime::with_index(format!("node-{i}"), i as u32))).collect())
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Sim(_) => "SimRuntime (simulated containers)",
            #[cfg(feature = "docker")]
            Backend::Docker { .. } => "the Docker Engine (real containers)",
        }
    }

    fn runtime(&self, i: usize) -> Arc<dyn Runtime> {
        match self {
            Backend::Sim(s) => Arc::new(s[i - 1].clone()),
            #[cfg(feature = "docker")]
            Backend::Docker { rt, .. } => Arc::new(rt.clone()),
        }
    }

    fn image(&self) -> String {
        match self {
            Backend::Sim(_) => "nginx:1.27".into(),
            #[cfg(feature = "docker")]
            Backend::Docker { image, .. } => image.clone(),
        }
    }

    /// Kills a container from outside the cluster (`docker kill`).
    async fn kill(&self, node: usize, container: &str) -> Result<(), Error> {
        match self {
            Backend::Sim(s) => {
                s[node - 1].inner().kill_from_outside(container, 137);
                Ok(())
            }
            #[cfg(feature = "docker")]
            Backend::Docker { rt, .. } => {
                // SIGKILL through the Engine, as `docker kill` does.
                rt.kill(container).await?;
                Ok(())
            }
        }
    }

    /// The node's engine fails: all its containers die.
    /// (Only this run's containers: `run_labels` selects them.)
    async fn fail_node(&self, node: usize, node_id: &str, run_labels: Labels) -> Result<(), Error> {
        match self {
            Backend::Sim(s) => {
                // A simulated node is this run's alone.
                s[node - 1].inner().fail();
                let _ = (node_id, run_labels);
                Ok(())
            }
            #[cfg(feature = "docker")]
            Backend::Docker { rt, .. } => {
                let mut sel = run_labels;
                sel.insert(swarm::runtime::labels::NODE_ID.into(), node_id.to_string());
                for c in rt.list(&sel).await? {
                    let _ = rt.kill(&c.id).await;
                    let _ = rt.remove(&c.id).await;
                }
                Ok(())
            }
        }
    }
}

#[cfg(feature = "docker")]
async fn docker_backend(interrupt: &Interrupt) -> Result<Backend, Error> {
    use swarm::docker::{DockerRuntime, DockerRuntimeOptions, fixture};
    let rt = DockerRuntime::connect(DockerRuntimeOptions::default())?;
    let version = tokio::time::timeout(Duration::from_secs(3), rt.ping()).await.map_err(|_| "ping timed out")??;
    println!("Docker Engine {version} reachable: building and importing the test workload image...");
    let image = fixture::ensure_test_image(rt.client()).await?;
    println!("image {image} ready\n");
    Ok(Backend::Docker { rt: interrupt.track(rt), image })
}

/// Asks each replica for its task id over HTTP (real containers only).
async fn ask_replicas(backend: &Backend, tasks: &[Task]) {
    #[cfg(feature = "docker")]
    if let Backend::Docker { .. } = backend {
        for t in tasks {
            let Some(addr) = t.networks.first().and_then(|n| n.addresses.first()).and_then(|a| a.parse().ok()) else {
                continue;
            };
            let sock = std::net::SocketAddr::new(addr, swarm::docker::fixture::PORT);
            match swarm::docker::fixture::http_get(sock, "/id", Duration::from_secs(2)).await {
                Ok((code, body)) => println!("  GET http://{sock}/id -> {code} {}", body.trim()),
                Err(e) => println!("  GET http://{sock}/id failed: {e}"),
            }
        }
    }
    let _ = (backend, tasks);
}

fn start_agent(i: usize, runtime: Arc<dyn Runtime>, dispatcher: Arc<dyn Dispatcher>) -> AbortOnDrop {
    let agent = Agent::new(
        AgentConfig {
            node_id: format!("node-{i}").into(),
            description: NodeDescription {
                hostname: format!("host-{i}"),
                platform: Platform::new("linux", "amd64"),
                resources: Resources::new(2_000_000_000, 2 << 30),
                engine_labels: Labels::new(),
            },
            addr: format!("127.0.0.{}", i + 1),
        },
        runtime,
        dispatcher,
    );
    AbortOnDrop(tokio::spawn(async move {
        let _ = agent.run().await;
    }))
}

async fn wait_running(cluster: &Cluster, service: &str, n: usize, limit: Duration) -> Result<Vec<Task>, Error> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let tasks = cluster
            .list_tasks(TaskFilter { service: Some(service.into()), live_only: true, ..Default::default() })
            .await?;
        let running: Vec<Task> = tasks.into_iter().filter(|t| t.is_running_and_healthy()).collect();
        if running.len() == n {
            return Ok(running);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{service}: {} of {n} running after {limit:?}", running.len()).into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_tasks(title: &str, tasks: &[Task]) {
    println!("\n{title}");
    println!("  {:<24} {:<8} {:<10} {:<8}", "TASK", "NODE", "STATE", "SINCE");
    for t in tasks {
        println!(
            "  {:<24} {:<8} {:<10} {}",
            t.name().chars().take(24).collect::<String>(),
            t.node_id.as_ref().map(|n| n.to_string()).unwrap_or_default(),
            t.status.state,
            t.status.timestamp
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into())).init();
    let interrupt = Interrupt::install("quickstart")?;
    interrupt.guard(run(&interrupt)).await
}

async fn run(interrupt: &Interrupt) -> Result<(), Error> {
    let backend = Backend::pick(interrupt).await;
    println!("swarm quickstart: 3 nodes on {}, a manager with the spread scheduler\n", backend.name());

    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let cluster = Cluster::new(store.clone());
    // A short heartbeat so the node failure below is noticed in ~3 s.
    let mut settings = ClusterSpec::default();
    settings.dispatcher.heartbeat_period = SpecDuration::from_secs(1);
    cluster.set_cluster_spec(settings).await?;
    let manager = Manager::start(store.clone(), Box::new(Pipeline::spread()), ManagerConfig::default());
    let dispatcher: Arc<dyn Dispatcher> = Arc::new(manager.dispatcher());

    let mut nodes = Vec::new();
    for i in 1..=3 {
        let agent = start_agent(i, backend.runtime(i), dispatcher.clone());
        nodes.push(Node { id: format!("node-{i}"), agent });
    }

    // Print what happens, like `docker events`.
    let mut events = cluster.events().await?;
    let _printer = AbortOnDrop(tokio::spawn(async move {
        while let Ok(e) = events.next().await {
            if e.kind == ObjectKind::Task && (e.detail.contains("->") || e.detail.starts_with("PENDING")) {
                println!("  event  task {:<22} {}", e.name.chars().take(22).collect::<String>(), e.detail);
            } else if e.kind == ObjectKind::Node && !e.detail.is_empty() {
                println!("  event  node {:<22} {}", e.name, e.detail);
            }
        }
    }));

    // 1. Deploy a service and watch it converge.
    let mut spec = ServiceSpec::replicated("web", backend.image(), 6);
    spec.task_template.restart_policy.delay = SpecDuration::from_secs(1);
    spec.task_template.resources.reservations = Resources::new(100_000_000, 64 << 20);
    spec.task_template.container.stop_grace_period = SpecDuration::from_secs(2);
    // The run's label: Ctrl-C removes the containers that carry it.
    spec.task_template.container.labels.extend(interrupt.run_labels());
    // Swarm's templates: each container learns its own task id.
    spec.task_template.container.env.push("TASK_ID={{.Task.Name}}".into());
    spec.task_template.container.health_check = Some(HealthCheck {
        probe: HealthProbe::Http { port: 8080, path: "/health".into() },
        interval: SpecDuration::from_millis(500),
        timeout: SpecDuration::from_secs(1),
        retries: 2,
        start_period: SpecDuration::ZERO,
    });
    println!("1. create service web with 6 replicas");
    cluster.create_service(spec).await?;
    let tasks = wait_running(&cluster, "web", 6, Duration::from_secs(60)).await?;
    print_tasks("service web converged (running and healthy):", &tasks);
    ask_replicas(&backend, &tasks).await;

    // 2. A container crashes: the task fails and is replaced.
    let victim = &tasks[0];
    let node = nodes
        .iter()
        .position(|n| Some(n.id.as_str()) == victim.node_id.as_ref().map(|n| n.as_str()))
        .ok_or("no node")?;
    let container = victim.status.container_id.clone().ok_or("no container")?;
    println!("\n2. kill container of {} on {} from outside (exit 137)", victim.name(), nodes[node].id);
    backend.kill(node + 1, &container).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tasks = wait_running(&cluster, "web", 6, Duration::from_secs(60)).await?;
    print_tasks("the crashed replica was replaced:", &tasks);

    // 3. A whole node fails: its tasks are rescheduled on the others.
    let lost = nodes.pop().ok_or("no node")?;
    println!("\n3. node {} fails (engine gone, no more heartbeats)", lost.id);
    drop(lost.agent); // aborts the node's agent
    tokio::time::sleep(Duration::from_millis(10)).await;
    backend.fail_node(3, &lost.id, interrupt.run_labels()).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let healed = loop {
        let tasks = wait_running(&cluster, "web", 6, Duration::from_secs(60)).await?;
        if tasks.iter().all(|t| t.node_id.as_ref().map(|n| n.as_str()) != Some(lost.id.as_str())) {
            break tasks;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    print_tasks(&format!("healed: 6 replicas on the {} remaining nodes:", nodes.len()), &healed);
    for n in cluster.list_nodes().await? {
        println!("  node {:<8} {:?} {}", n.id, n.status.state, n.status.message);
    }
    ask_replicas(&backend, &healed).await;

    // 4. Clean up: removing the service stops and removes its containers.
    println!("\n4. remove service web");
    cluster.remove_service("web").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while cluster.list_tasks(TaskFilter::default()).await?.iter().any(|t| t.service_name == "web") {
        if tokio::time::Instant::now() > deadline {
            return Err("tasks of web still present after 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give the agents a moment to remove the containers of deleted tasks.
    tokio::time::sleep(Duration::from_millis(500)).await;
    manager.stop();
    drop(nodes); // aborts the agents
    println!("\ndone");
    Ok(())
}
