//! cluster_bench: a networked cluster. Three `swarmd` manager processes
//! (sim runtime, raft over mutual TLS) on 127.<block>.0.1-3 and N worker
//! agents inside this process, each with its own node certificate and its
//! own mutual-TLS connection to the managers.
//!
//! ```text
//! cargo build -p swarm-cli --release --bins        # prerequisite: swarmd
//! cargo run -p swarm-cli --release --example cluster_bench -- \
//!     [--agents 1000] [--replicas 10000] [--vanish 100] [--heartbeat 5s] \
//!     [--block 30] [--window DURATION] [--join-concurrency 32] [--swarmd PATH] [--no-inprocess] [--trace]
//! ```
//!
//! `swarmd` is taken from next to this example (`target/<profile>/swarmd`,
//! the parent of `target/<profile>/examples/`) unless `--swarmd` names it;
//! the example does not build it. The last stdout line is one JSON object.
//!
//! What it does and measures, in order:
//!
//! 0. `inprocess_converge_s`: unless `--no-inprocess`, the in-process
//!    reference first, in this process before anything else runs: one
//!    MemStore, the manager's loops, the spread scheduler and N agents on
//!    SimRuntime on one thread, the same service of R replicas
//!    (converge_bench's set-up, without its checks, and on the real clock
//!    where converge_bench pauses it). The networked figure is judged
//!    against it as a ratio within one run.
//! 1. Starts `swarmd init` (m1) and joins m2 and m3 with the manager
//!    token. The managers' agents are drained so that tasks land only on
//!    the N agents, as in converge_bench.
//! 2. `sessions_per_s`: N agents join with the worker token (at most
//!    `--join-concurrency` at a time, round-robin over the three managers:
//!    CSR, `ca.issue`, certificate written) and each runs an `Agent` over a
//!    `RemoteDispatcher` (its own TLS client) with a `SimRuntime`.
//!    N / (seconds from the first join to N+3 nodes READY in a follower's
//!    `node ls`). `joins_per_s` is N / the seconds until the last
//!    certificate was obtained.
//! 3. `manager_cpu_ms_per_1000_heartbeats`: with every node READY and no
//!    service, the three managers' CPU (utime + stime from /proc/<pid>/stat)
//!    over a steady window (`--window`, default 2 heartbeat periods, at
//!    least 2 s), divided by the heartbeats expected in it: (N + 3) x
//!    window / period. It is everything the managers do while idle
//!    (heartbeats, raft ticks, the node-health loop), so an upper bound on
//!    the cost of a heartbeat.
//! 4. `converge_s`: one service of R replicas created through m1's local
//!    control socket (`RemoteCluster::unix`), until R of its tasks are
//!    RUNNING in a follower's store (the service's task counts,
//!    `RemoteCluster::service_status`, as `service ls` shows them, through
//!    the follower's socket, polled every `--converge-poll`, default 50 ms
//!    (250 ms before 2026-11-30, as `--poll` for the other phases); the
//!    follower is polled so the reads do not load the leader; before
//!    2026-11-30 this listed every task, `service ps`, which cost the
//!    follower about a second of CPU per converge). `converge_manager_cpu_s` and
//!    `converge_agents_cpu_s`: the CPU the three managers and this process
//!    (the agents and the polling) used meanwhile;
//!    `converge_cpu_by_manager_s`: the managers' share, m1 (the leader:
//!    it initialised the cluster) first.
//! 5. `heal_s`: V agents vanish at once: their tasks are aborted (no more
//!    heartbeats, connections dropped) and their SimRuntimes fail. Until R
//!    tasks RUNNING on the other nodes. `down_s`: until the managers have
//!    marked all V nodes DOWN (the heartbeat grace, 3 periods, plus the
//!    detection); `heal_after_down_s` = `heal_s - down_s`, the heal
//!    without the grace.
//!
//! `--trace` prints, at each poll of the converge, the seconds since the
//! service was created and how many of its tasks are in each state (on
//! stderr; a diagnostic, it changes no figure).
//!
//! The process raises its RLIMIT_NOFILE soft limit to the hard limit; the
//! managers inherit it. Children get SIGKILL on exit, on SIGINT/SIGTERM and
//! (PR_SET_PDEATHSIG) when this process dies.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use swarm_cli::args::Args;
use swarm_core::agent::{Agent, AgentConfig};
use swarm_core::cluster::TaskFilter;
use swarm_core::dispatcher::Dispatcher;
use swarm_core::model::*;
use swarm_core::runtime::Runtime;
use swarm_core::sim::SimRuntime;
use swarm_security::control::RemoteCluster;
use swarm_security::dispatch::RemoteDispatcher;
use swarm_security::files::NodeFiles;
use swarm_security::rpc::Reloadable;
use swarm_security::{join, tls};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The pids of the managers, killed on exit and on a signal.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn kill_children() {
    let pids: Vec<u32> = CHILDREN.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default();
    for pid in pids {
        // SAFETY: kill(2) on a child this process started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

struct Opts {
    agents: usize,
    replicas: u64,
    vanish: usize,
    heartbeat: Duration,
    window: Option<Duration>,
    poll: Duration,
    converge_poll: Duration,
    block: u8,
    join_concurrency: usize,
    swarmd: PathBuf,
    inprocess: bool,
    trace: bool,
}

fn duration(a: &mut Args, name: &str) -> Result<Option<Duration>, Error> {
    match a.value(name) {
        None => Ok(None),
        Some(v) => Ok(Some(humantime::parse_duration(&v).map_err(|e| format!("--{name} {v:?}: {e}"))?)),
    }
}

fn opts() -> Result<Opts, Error> {
    let mut a = Args::parse(std::env::args().skip(1), &["no-inprocess", "trace"])?;
    let swarmd = match a.value("swarmd") {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe()?;
            let profile = exe.parent().and_then(Path::parent).ok_or("cannot find target/<profile>/")?;
            profile.join("swarmd")
        }
    };
    let o = Opts {
        agents: a.parsed("agents")?.unwrap_or(1000),
        replicas: a.parsed("replicas")?.unwrap_or(10_000),
        vanish: a.parsed("vanish")?.unwrap_or(100),
        heartbeat: duration(&mut a, "heartbeat")?.unwrap_or(Duration::from_secs(5)),
        window: duration(&mut a, "window")?,
        poll: duration(&mut a, "poll")?.unwrap_or(Duration::from_millis(250)),
        converge_poll: duration(&mut a, "converge-poll")?.unwrap_or(Duration::from_millis(50)),
        block: a.parsed("block")?.unwrap_or(30),
        join_concurrency: a.parsed("join-concurrency")?.unwrap_or(32),
        inprocess: !a.switch("no-inprocess"),
        trace: a.switch("trace"),
        swarmd,
    };
    a.finish()?;
    if !o.swarmd.is_file() {
        return Err(format!(
            "{} not found: run `cargo build -p swarm-cli --release --bins` first (or pass --swarmd PATH)",
            o.swarmd.display()
        )
        .into());
    }
    if o.vanish >= o.agents {
        return Err("--vanish must be below --agents".into());
    }
    Ok(o)
}

/// Raises RLIMIT_NOFILE's soft limit to the hard one (children inherit it).
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// CPU seconds (utime + stime) of process `pid`.
fn cpu_s(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            let utime: f64 = after.get(11)?.parse().ok()?;
            let stime: f64 = after.get(12)?.parse().ok()?;
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
            Some((utime + stime) / hz)
        })
        .unwrap_or(0.0)
}

struct Manager {
    name: String,
    child: Child,
    dir: PathBuf,
    api: SocketAddr,
    log: PathBuf,
}

impl Manager {
    fn socket(&self) -> PathBuf {
        self.dir.join("swarmd.sock")
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `swarmd <command> ...` and waits for its ready line; returns the
/// manager and the tokens it printed (init only).
fn spawn_manager(
    o: &Opts,
    root: &Path,
    name: &str,
    host: u8,
    command: &str,
    extra: &[String],
) -> Result<(Manager, Option<String>, Option<String>), Error> {
    let ip = std::net::Ipv4Addr::new(127, o.block, 0, host);
    let dir = root.join(name);
    let api = SocketAddr::from((ip, 4242));
    let mut args: Vec<String> = vec![command.into()];
    for (k, v) in [
        ("--state-dir", dir.display().to_string()),
        ("--listen-addr", api.to_string()),
        ("--raft-addr", SocketAddr::from((ip, 4243)).to_string()),
        ("--hostname", name.into()),
        ("--runtime", "sim".into()),
        ("--cpus", "4".into()),
        ("--memory", (8u64 << 30).to_string()),
    ] {
        args.push(k.into());
        args.push(v);
    }
    args.extend(extra.iter().cloned());
    let log = root.join(format!("{name}.log"));
    let log_file = std::fs::File::create(&log)?;
    let mut cmd = Command::new(&o.swarmd);
    cmd.args(&args)
        .env("RUST_LOG", std::env::var("SWARMD_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file));
    // SAFETY: only prctl(2), async-signal-safe, between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", o.swarmd.display()))?;
    if let Ok(mut c) = CHILDREN.lock() {
        c.push(child.id());
    }
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut m = Manager { name: name.into(), child, dir, api, log };
    let (mut worker, mut manager) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if let Some(t) = line.strip_prefix("worker token: ") {
                    worker = Some(t.to_owned());
                }
                if let Some(t) = line.strip_prefix("manager token: ") {
                    manager = Some(t.to_owned());
                }
                if line.starts_with("swarmd: ready ") {
                    return Ok((m, worker, manager));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(50)),
        }
        if let Ok(Some(st)) = m.child.try_wait() {
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            return Err(format!("swarmd {name} exited ({st}) before ready:\n{log}").into());
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            return Err(format!("swarmd {} not ready within 60 s:\n{log}", m.name).into());
        }
    }
}

/// The three managers, m1 first (it initialised the cluster).
fn start_managers(o: &Opts, root: &Path) -> Result<(Vec<Manager>, String), Error> {
    let hb = humantime::format_duration(o.heartbeat).to_string();
    let (m1, worker, manager) = spawn_manager(o, root, "m1", 1, "init", &["--heartbeat".into(), hb])?;
    let worker = worker.ok_or("init printed no worker token")?;
    let manager = manager.ok_or("init printed no manager token")?;
    let via = m1.api.to_string();
    let mut ms = vec![m1];
    for (name, host) in [("m2", 2), ("m3", 3)] {
        let (m, _, _) = spawn_manager(o, root, name, host, "join", &["--token".into(), manager.clone(), via.clone()])?;
        ms.push(m);
    }
    Ok((ms, worker))
}

/// Polls `f` every `every` until it returns `Some`, or fails after `within`.
async fn until<T, F, Fut>(every: Duration, within: Duration, what: &str, mut f: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("not within {within:?}: {what}").into());
        }
        tokio::time::sleep(every).await;
    }
}

async fn ready_nodes(c: &RemoteCluster) -> Option<usize> {
    let nodes = c.list_nodes().await.ok()?;
    Some(nodes.iter().filter(|n| n.status.state == NodeState::Ready).count())
}

/// Tasks of `web` RUNNING (and wanted running), not on `avoid`.
async fn running(c: &RemoteCluster, avoid: &HashSet<String>) -> Option<usize> {
    let filter = TaskFilter { service: Some("web".into()), node: None, live_only: true };
    let tasks = c.list_tasks(filter).await.ok()?;
    Some(
        tasks
            .iter()
            .filter(|t| t.status.state == TaskState::Running)
            .filter(|t| t.node_id.as_ref().is_none_or(|n| !avoid.contains(n.as_str())))
            .count(),
    )
}

/// `--trace`: the tasks of `web` by state, `t0` being the service's creation.
async fn trace_states(c: &RemoteCluster, t0: Instant) {
    let filter = TaskFilter { service: Some("web".into()), node: None, live_only: true };
    let at = t0.elapsed().as_secs_f64();
    if let Ok(tasks) = c.list_tasks(filter).await {
        let mut by: std::collections::BTreeMap<TaskState, usize> = Default::default();
        for t in &tasks {
            *by.entry(t.status.state).or_default() += 1;
        }
        let listed = t0.elapsed().as_secs_f64() - at;
        eprintln!("cluster_bench: trace {at:.2}s (listed in {listed:.2}s) {by:?}");
    }
}

struct Worker {
    node_id: String,
    task: tokio::task::JoinHandle<()>,
    sim: SimRuntime,
}

/// Joins agent `i` with the worker token and starts its agent.
async fn start_agent(
    i: usize,
    root: PathBuf,
    via: SocketAddr,
    managers: Vec<String>,
    token: String,
) -> Result<Worker, Error> {
    let files = NodeFiles::new(root.join(format!("agent-{i:05}")));
    let joined = join::join(via, &token, None, &files).await.map_err(|e| format!("agent {i}: join: {e}"))?;
    let creds = joined.tls_credentials()?;
    let client = Reloadable::new(tls::client_config(&creds)?);
    let dispatcher: Arc<dyn Dispatcher> = Arc::new(RemoteDispatcher::new(managers, client));
    let sim = SimRuntime::with_index(format!("agent-{i:05}"), i as u32);
    let runtime: Arc<dyn Runtime> = Arc::new(sim.clone());
    let agent = Agent::new(
        AgentConfig {
            node_id: joined.node_id.clone().into(),
            description: NodeDescription {
                hostname: format!("agent-{i:05}"),
                platform: Platform::new("linux", "amd64"),
                resources: Resources::new(8_000_000_000, 32 << 30),
                engine_labels: Labels::new(),
            },
            addr: format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
        },
        runtime,
        dispatcher,
    );
    let task = tokio::spawn(async move {
        if let Err(e) = agent.run().await {
            tracing::warn!(error = %e, "agent stopped");
        }
    });
    Ok(Worker { node_id: joined.node_id, task, sim })
}

#[derive(Default)]
struct Report {
    agents: usize,
    replicas: u64,
    vanish: usize,
    heartbeat_s: f64,
    inprocess_converge_s: Option<f64>,
    joins_per_s: f64,
    sessions_per_s: f64,
    all_ready_s: f64,
    window_s: f64,
    manager_cpu_s: Vec<f64>,
    manager_cpu_ms_per_1000_heartbeats: f64,
    converge_s: f64,
    converge_manager_cpu_s: f64,
    converge_agents_cpu_s: f64,
    converge_cpu_by_manager_s: Vec<f64>,
    lost_tasks: usize,
    down_s: f64,
    heal_s: f64,
    heal_after_down_s: f64,
    nofile: u64,
}

async fn networked(o: &Opts, root: &Path, ms: &[Manager], worker_token: String, r: &mut Report) -> Result<(), Error> {
    let leader_ctl = RemoteCluster::unix(ms[0].socket());
    let follower = RemoteCluster::unix(ms[1].socket());
    let pids: Vec<u32> = ms.iter().map(|m| m.child.id()).collect();
    let total_cpu = || pids.iter().map(|p| cpu_s(*p)).sum::<f64>();
    let apis: Vec<String> = ms.iter().map(|m| m.api.to_string()).collect();
    until(o.poll, Duration::from_secs(60), "3 managers ready", || async {
        (ready_nodes(&follower).await? >= 3).then_some(())
    })
    .await?;
    for m in ms {
        leader_ctl.set_node_availability(&m.name, Availability::Drain).await?;
    }

    // Agents join and open sessions.
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(o.join_concurrency.max(1)));
    let mut joins = Vec::new();
    for i in 0..o.agents {
        let sem = sem.clone();
        let via: SocketAddr = ms[i % ms.len()].api;
        let mut managers = apis.clone();
        managers.rotate_left(i % ms.len());
        let (root, token) = (root.join("agents"), worker_token.clone());
        joins.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.map_err(|e| e.to_string())?;
            start_agent(i, root, via, managers, token).await.map_err(|e| e.to_string())
        }));
    }
    let mut workers = Vec::new();
    for j in joins {
        workers.push(j.await??);
    }
    let joined_s = t0.elapsed().as_secs_f64();
    let want = o.agents + ms.len();
    let within = Duration::from_secs(120 + o.agents as u64 / 5);
    until(o.poll, within, "all nodes ready", || async { (ready_nodes(&follower).await? == want).then_some(()) })
        .await?;
    r.all_ready_s = t0.elapsed().as_secs_f64();
    r.joins_per_s = o.agents as f64 / joined_s;
    r.sessions_per_s = o.agents as f64 / r.all_ready_s;
    eprintln!("cluster_bench: {} agents joined in {joined_s:.2}s, all ready at {:.2}s", o.agents, r.all_ready_s);

    // Steady window: heartbeats only.
    let window = o.window.unwrap_or((o.heartbeat * 2).max(Duration::from_secs(2)));
    // Let the joins' and sessions' work settle for one period first.
    tokio::time::sleep(o.heartbeat.min(Duration::from_secs(5))).await;
    let before: Vec<f64> = pids.iter().map(|p| cpu_s(*p)).collect();
    let w0 = Instant::now();
    tokio::time::sleep(window).await;
    let window_s = w0.elapsed().as_secs_f64();
    r.manager_cpu_s = pids.iter().zip(&before).map(|(p, b)| cpu_s(*p) - b).collect();
    r.window_s = window_s;
    let heartbeats = want as f64 * window_s / o.heartbeat.as_secs_f64();
    r.manager_cpu_ms_per_1000_heartbeats = r.manager_cpu_s.iter().sum::<f64>() * 1000.0 / heartbeats * 1000.0;

    // Converge.
    let mut spec = ServiceSpec::replicated("web", "nginx:1.27", o.replicas);
    spec.task_template.resources.reservations = Resources::new(10_000_000, 16 << 20);
    let c0 = total_cpu();
    let by0: Vec<f64> = pids.iter().map(|p| cpu_s(*p)).collect();
    let a0 = cpu_s(std::process::id());
    let t1 = Instant::now();
    // --trace: the containers running on the agents' runtimes, every 100 ms.
    let sims: Vec<SimRuntime> = if o.trace { workers.iter().map(|w| w.sim.clone()).collect() } else { Vec::new() };
    let sampler = tokio::spawn(async move {
        let mut last = 0;
        while !sims.is_empty() {
            let n: usize = sims.iter().map(|s| s.running().len()).sum();
            if n != last {
                eprintln!(
                    "cluster_bench: trace {:.2}s {n} containers running on the agents",
                    t1.elapsed().as_secs_f64()
                );
                last = n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    leader_ctl.create_service(spec).await?;
    let within = Duration::from_secs(120 + o.replicas / 50);
    until(o.converge_poll, within, "all replicas running", || async {
        if o.trace {
            trace_states(&follower, t1).await;
        }
        let st = follower.service_status("web").await.ok()?;
        (st.running_tasks == o.replicas).then_some(())
    })
    .await?;
    r.converge_s = t1.elapsed().as_secs_f64();
    sampler.abort();
    r.converge_manager_cpu_s = total_cpu() - c0;
    r.converge_cpu_by_manager_s = pids.iter().zip(&by0).map(|(p, b)| cpu_s(*p) - b).collect();
    r.converge_agents_cpu_s = cpu_s(std::process::id()) - a0;
    eprintln!("cluster_bench: {} replicas running after {:.2}s", o.replicas, r.converge_s);

    // Heal: V agents vanish.
    let gone: Vec<Worker> = workers.drain(..o.vanish).collect();
    let gone_ids: HashSet<String> = gone.iter().map(|w| w.node_id.clone()).collect();
    let filter = TaskFilter { service: Some("web".into()), node: None, live_only: true };
    r.lost_tasks = follower
        .list_tasks(filter)
        .await?
        .iter()
        .filter(|t| t.node_id.as_ref().is_some_and(|n| gone_ids.contains(n.as_str())))
        .count();
    let t2 = Instant::now();
    for w in &gone {
        w.task.abort();
        w.sim.fail();
    }
    let down_at: std::cell::Cell<Option<f64>> = std::cell::Cell::new(None);
    let within = Duration::from_secs(120) + o.heartbeat * 10;
    until(o.poll, within, "healed", || async {
        if down_at.get().is_none() {
            let nodes = follower.list_nodes().await.ok()?;
            let down =
                nodes.iter().filter(|n| gone_ids.contains(n.id.as_str()) && n.status.state == NodeState::Down).count();
            if down == gone_ids.len() {
                down_at.set(Some(t2.elapsed().as_secs_f64()));
            }
        }
        let healed = running(&follower, &gone_ids).await? as u64 == o.replicas;
        (healed && down_at.get().is_some()).then_some(())
    })
    .await?;
    r.heal_s = t2.elapsed().as_secs_f64();
    r.down_s = down_at.get().unwrap_or(r.heal_s);
    r.heal_after_down_s = r.heal_s - r.down_s;
    for w in workers {
        w.task.abort();
    }
    Ok(())
}

/// The in-process reference: converge_bench's set-up on one thread, timed
/// from the create to R tasks RUNNING. Unlike converge_bench the clock is
/// the real one (tokio's paused clock needs tokio's `test-util`, which the
/// workspace's release builds do not have): the scheduler's debounce and
/// the agents' waits take wall time here, as they do in the cluster.
fn inprocess(agents: usize, replicas: u64) -> Result<f64, Error> {
    use swarm_core::manager::{Manager, ManagerConfig};
    use swarm_core::store::{MemStore, Store};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let store = Arc::new(MemStore::new());
        let dyn_store: Arc<dyn Store> = store.clone();
        let manager = Manager::start(
            dyn_store.clone(),
            Box::new(swarm_sched::Pipeline::spread()),
            ManagerConfig { seed: Some(1), ..Default::default() },
        );
        let dispatcher: Arc<dyn Dispatcher> = Arc::new(manager.dispatcher());
        let mut tasks = Vec::new();
        for i in 0..agents {
            let runtime: Arc<dyn Runtime> = Arc::new(SimRuntime::with_index(format!("n{i}"), i as u32));
            let agent = Agent::new(
                AgentConfig {
                    node_id: format!("node-{i:05}").into(),
                    description: NodeDescription {
                        hostname: format!("host-{i}"),
                        platform: Platform::new("linux", "amd64"),
                        resources: Resources::new(8_000_000_000, 32 << 30),
                        engine_labels: Labels::new(),
                    },
                    addr: format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                },
                runtime,
                dispatcher.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let _ = agent.run().await;
            }));
        }
        let ready = |s: &swarm_core::state::State| s.nodes().filter(|n| n.status.state == NodeState::Ready).count();
        while ready(&store.state()) < agents {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cluster = swarm_core::cluster::Cluster::with_seed(dyn_store.clone(), 2);
        let mut spec = ServiceSpec::replicated("web", "nginx:1.27", replicas);
        spec.task_template.resources.reservations = Resources::new(10_000_000, 16 << 20);
        let t0 = Instant::now();
        cluster.create_service(spec).await?;
        let running = |s: &swarm_core::state::State| {
            s.tasks().filter(|t| t.desired_state <= TaskState::Running && t.status.state == TaskState::Running).count()
                as u64
        };
        // Checked every 10 ms: a walk over the tasks, small next to the work.
        while running(&store.state()) < replicas {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let s = t0.elapsed().as_secs_f64();
        manager.stop();
        for t in tasks {
            t.abort();
        }
        Ok(s)
    })
}

fn run() -> Result<Report, Error> {
    let o = opts()?;
    let mut r = Report {
        agents: o.agents,
        replicas: o.replicas,
        vanish: o.vanish,
        heartbeat_s: o.heartbeat.as_secs_f64(),
        nofile: raise_nofile(),
        ..Default::default()
    };
    if o.inprocess {
        let s = inprocess(o.agents, o.replicas)?;
        eprintln!("cluster_bench: in-process reference converged in {s:.3}s");
        r.inprocess_converge_s = Some(s);
    }
    let dir = tempfile::tempdir()?;
    // Managers are started from this (main) thread: PR_SET_PDEATHSIG fires
    // when the thread that forked exits.
    let (ms, worker_token) = start_managers(&o, dir.path())?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let res = rt.block_on(async {
        tokio::spawn(async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            eprintln!("cluster_bench: interrupted; killing the managers");
            kill_children();
            std::process::exit(130);
        });
        networked(&o, dir.path(), &ms, worker_token, &mut r).await
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    if let Err(e) = res {
        for m in &ms {
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!("--- {} log (last lines) ---", m.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        return Err(e);
    }
    drop(ms);
    Ok(r)
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let res = run();
    kill_children();
    let r = match res {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cluster_bench: {e}");
            std::process::exit(1);
        }
    };
    let ratio = r.inprocess_converge_s.map(|s| r.converge_s / s);
    let opt = |v: Option<f64>| v.map_or("null".to_owned(), |v| format!("{v:.3}"));
    println!(
        "agents={} replicas={} sessions/s={:.1} manager CPU per 1000 heartbeats={:.1} ms converge={:.2}s (in-process {}, ratio {}) heal={:.2}s (down after {:.2}s, then {:.2}s)",
        r.agents,
        r.replicas,
        r.sessions_per_s,
        r.manager_cpu_ms_per_1000_heartbeats,
        r.converge_s,
        opt(r.inprocess_converge_s),
        opt(ratio),
        r.heal_s,
        r.down_s,
        r.heal_after_down_s
    );
    let cpus: Vec<String> = r.manager_cpu_s.iter().map(|c| format!("{c:.2}")).collect();
    let conv: Vec<String> = r.converge_cpu_by_manager_s.iter().map(|c| format!("{c:.2}")).collect();
    println!(
        "{{\"agents\":{},\"replicas\":{},\"vanish\":{},\"heartbeat_s\":{:.3},\"joins_per_s\":{:.1},\"sessions_per_s\":{:.1},\"all_ready_s\":{:.3},\"window_s\":{:.2},\"manager_cpu_s\":[{}],\"manager_cpu_ms_per_1000_heartbeats\":{:.2},\"converge_s\":{:.3},\"converge_manager_cpu_s\":{:.2},\"converge_agents_cpu_s\":{:.2},\"converge_cpu_by_manager_s\":[{}],\"inprocess_converge_s\":{},\"converge_ratio\":{},\"lost_tasks\":{},\"down_s\":{:.3},\"heal_s\":{:.3},\"heal_after_down_s\":{:.3},\"nofile\":{}}}",
        r.agents,
        r.replicas,
        r.vanish,
        r.heartbeat_s,
        r.joins_per_s,
        r.sessions_per_s,
        r.all_ready_s,
        r.window_s,
        cpus.join(","),
        r.manager_cpu_ms_per_1000_heartbeats,
        r.converge_s,
        r.converge_manager_cpu_s,
        r.converge_agents_cpu_s,
        conv.join(","),
        opt(r.inprocess_converge_s),
        opt(ratio),
        r.lost_tasks,
        r.down_s,
        r.heal_s,
        r.heal_after_down_s,
        r.nofile
    );
}
