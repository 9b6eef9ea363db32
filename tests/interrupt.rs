//! Ctrl-C, for real: each test runs an example that starts containers
//! (the binary cargo built in `target/debug/examples/`), waits until
//! containers of its run exist on the engine, sends SIGINT or SIGTERM, and
//! checks that the example exits with 130 or 143 and that no container of
//! the run is left (nor, on containerd, a state directory or a snapshot).
//! The run is the one the example names at start
//! (`io.swarm-rs.example.run=<run>`), so containers of other tests on the
//! same engine do not count.
//!
//! `cargo test --all-features` builds the examples; `cargo test
//! --all-features --test interrupt` does not: run `cargo build
//! --all-features --examples` first. A missing or stale example binary
//! fails the test (it would test old code).

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use swarm::docker::{DockerRuntime, DockerRuntimeOptions};
use swarm::model::Labels;
use swarm::runtime::Runtime;
use swarm_conformance::skip::skip;
use tokio::time::Instant;

/// The label an example puts on every container of its run.
const RUN_LABEL: &str = "io.swarm-rs.example.run";

/// One example at a time: each starts many containers on two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The example's binary, next to this test's (`target/<profile>/deps/`).
/// Panics when it is missing or older than its source.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("examples").join(name);
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; `cargo test --all-features` builds the examples, or run `cargo build --all-features --examples`",
            bin.display()
        )
    });
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut sources = vec![src.join(format!("{name}.rs"))];
    sources.extend(std::fs::read_dir(src.join("support")).expect("examples/support").map(|e| e.expect("entry").path()));
    for s in sources {
        let changed = std::fs::metadata(&s).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
        assert!(
            changed <= built,
            "{} is older than {}: rebuild it (`cargo build --all-features --examples`)",
            bin.display(),
            s.display()
        );
    }
    bin
}

/// A running example, its stdout and stderr collected as they come.
struct Example {
    name: &'static str,
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Example {
    fn start(name: &'static str, env: &[(&str, &str)]) -> Example {
        let mut child = Command::new(example_binary(name))
            .envs(env.iter().copied())
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for stream in [Box::new(stdout) as Box<dyn std::io::Read + Send>, Box::new(stderr)] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = output.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        Example { name, child, output }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until the output holds `needle`.
    async fn wait_output(&mut self, needle: &str, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while !self.output().contains(needle) {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("{} exited ({st}) before printing {needle:?}", self.name));
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not print {needle:?} within {limit:?}", self.name));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The run's name, as the example prints it at start.
    async fn run(&mut self) -> Result<String, String> {
        let key = format!("{RUN_LABEL}=");
        self.wait_output(&key, Duration::from_secs(30)).await?;
        let out = self.output();
        let at = out.find(&key).map(|i| i + key.len()).unwrap_or(out.len());
        let run: String = out[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).collect();
        if run.is_empty() { Err(format!("no run name after {key:?}")) } else { Ok(run) }
    }

    fn signal(&self, sig: libc::c_int) -> Result<(), String> {
        let pid = libc::pid_t::try_from(self.child.id()).map_err(|e| e.to_string())?;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(format!("kill {pid}: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    async fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return Ok(st),
                Ok(None) if Instant::now() > deadline => {
                    return Err(format!("{} still running after {limit:?}", self.name));
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => return Err(format!("waiting for {}: {e}", self.name)),
            }
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s} (it did not handle it)"),
        _ => format!("{st}"),
    }
}

/// Where the containers live, seen from the test.
trait Engine {
    /// Names of the run's containers.
    async fn containers(&self, run: &str) -> Result<Vec<String>, String>;
    /// Removes what a failed test left (best effort).
    async fn remove_run(&self, run: &str);
    /// What else of the run the engine holds once its containers are gone.
    async fn leftovers(&self, _run: &str) -> Vec<String> {
        Vec::new()
    }
}

fn selector(run: &str) -> Labels {
    Labels::from([(RUN_LABEL.to_string(), run.to_string())])
}

async fn remove_all<R: Runtime>(rt: &R, run: &str) {
    for c in rt.list(&selector(run)).await.unwrap_or_default() {
        let _ = rt.remove(&c.id).await;
    }
}

struct Docker(DockerRuntime);

impl Engine for Docker {
    async fn containers(&self, run: &str) -> Result<Vec<String>, String> {
        let list = self.0.list(&selector(run)).await.map_err(|e| e.to_string())?;
        Ok(list.into_iter().map(|c| c.name).collect())
    }
    async fn remove_run(&self, run: &str) {
        remove_all(&self.0, run).await;
    }
}

/// The Docker Engine, or `None` after a recorded skip.
async fn docker() -> Option<Docker> {
    let rt = match DockerRuntime::connect(DockerRuntimeOptions::default()) {
        Ok(rt) => rt,
        Err(e) => {
            skip(&format!("needs a Docker Engine: {e}"));
            return None;
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), rt.ping()).await {
        Ok(Ok(_)) => Some(Docker(rt)),
        r => {
            skip(&format!("needs a Docker Engine that answers: {r:?}"));
            None
        }
    }
}

/// When to send the signal.
struct When {
    /// The output holds this first ("" for no condition).
    after_output: &'static str,
    /// Then at least this many containers of the run exist.
    containers: usize,
    /// Send the signal a second time as soon as the example says it is
    /// cleaning up (a double press; `timeout` also signals twice).
    twice: bool,
}

/// Runs `example`, signals it at `when`, and checks its exit status and
/// that nothing of its run is left on `engine`.
async fn interrupt<E: Engine>(
    engine: &E,
    example: &'static str,
    env: &[(&str, &str)],
    when: When,
    sig: libc::c_int,
    want_status: i32,
) {
    let _one_at_a_time = SERIAL.lock().await;
    let mut ex = Example::start(example, env);
    let run = match ex.run().await {
        Ok(run) => run,
        Err(e) => panic!("{e}; output:\n{}", ex.output()),
    };
    let result = signal_and_check(engine, &mut ex, &run, when, sig, want_status).await;
    drop(ex);
    engine.remove_run(&run).await;
    if let Err(e) = result {
        panic!("{e}");
    }
}

async fn signal_and_check<E: Engine>(
    engine: &E,
    ex: &mut Example,
    run: &str,
    when: When,
    sig: libc::c_int,
    want_status: i32,
) -> Result<(), String> {
    let with_output = |e: String, ex: &Example| format!("{e}; {} output:\n{}", ex.name, ex.output());
    if !when.after_output.is_empty() {
        ex.wait_output(when.after_output, Duration::from_secs(120)).await.map_err(|e| with_output(e, ex))?;
    }
    // The first run builds the workload image: give it time.
    let deadline = Instant::now() + Duration::from_secs(180);
    let seen = loop {
        let names = engine.containers(run).await?;
        if names.len() >= when.containers {
            break names;
        }
        if let Ok(Some(st)) = ex.child.try_wait() {
            return Err(with_output(format!("exited ({st}) before {} containers existed", when.containers), ex));
        }
        if Instant::now() > deadline {
            return Err(with_output(format!("{} of {} containers after 180 s", names.len(), when.containers), ex));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ex.signal(sig)?;
    if when.twice {
        ex.wait_output("removing the containers this run started", Duration::from_secs(10))
            .await
            .map_err(|e| with_output(e, ex))?;
        ex.signal(sig)?;
    }
    let status = ex.wait_exit(Duration::from_secs(60)).await.map_err(|e| with_output(e, ex))?;
    let left = engine.containers(run).await?;
    let leftovers = engine.leftovers(run).await;
    let out = ex.output();
    let mut wrong = Vec::new();
    if status.code() != Some(want_status) {
        wrong.push(format!("{}, want exit status {want_status}", describe(status)));
    }
    if !left.is_empty() {
        wrong.push(format!("containers of the run left: {left:?}"));
    }
    if !leftovers.is_empty() {
        wrong.push(format!("other leftovers: {leftovers:?}"));
    }
    if !wrong.is_empty() {
        return Err(format!(
            "{} signalled ({sig}) with {} containers of the run on the engine ({seen:?}): {}; output:\n{out}",
            ex.name,
            seen.len(),
            wrong.join("; ")
        ));
    }
    // It says what it removed.
    if !out.contains("  removed ") {
        return Err(format!("{} did not say what it removed; output:\n{out}", ex.name));
    }
    eprintln!("{} with {} containers of the run ({seen:?}), then signal {sig}; output:\n{out}", ex.name, seen.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_removes_its_containers_on_sigint_mid_deploy() {
    let Some(docker) = docker().await else { return };
    // Two of the six replicas exist: the others are on their way.
    let when = When { after_output: "", containers: 2, twice: false };
    interrupt(&docker, "quickstart", &[], when, libc::SIGINT, 130).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_removes_its_containers_on_sigterm_once_converged() {
    let Some(docker) = docker().await else { return };
    let when = When { after_output: "service web converged", containers: 6, twice: false };
    interrupt(&docker, "quickstart", &[], when, libc::SIGTERM, 143).await;
}

/// Without a signal: the run ends with status 0 and nothing of it is left
/// (the quickstart removes its service; what the agents had no time to
/// remove, the end of the run does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_run_to_the_end_leaves_nothing() {
    let Some(docker) = docker().await else { return };
    let _one_at_a_time = SERIAL.lock().await;
    let mut ex = Example::start("quickstart", &[]);
    let run = match ex.run().await {
        Ok(run) => run,
        Err(e) => panic!("{e}; output:\n{}", ex.output()),
    };
    let status = ex.wait_exit(Duration::from_secs(300)).await;
    let left = docker.containers(&run).await;
    let out = ex.output();
    drop(ex);
    docker.remove_run(&run).await;
    let status = status.unwrap_or_else(|e| panic!("{e}; output:\n{out}"));
    assert_eq!(status.code(), Some(0), "{}; output:\n{out}", describe(status));
    assert_eq!(left, Ok(vec![]), "containers of the run left; output:\n{out}");
    assert!(out.contains("\ndone\n"), "the quickstart did not get to its end; output:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_finishes_its_cleanup_when_sigint_comes_twice() {
    let Some(docker) = docker().await else { return };
    let when = When { after_output: "service web converged", containers: 6, twice: true };
    interrupt(&docker, "quickstart", &[], when, libc::SIGINT, 130).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_bench_removes_its_containers_on_sigint_in_the_service_phase() {
    let Some(docker) = docker().await else { return };
    // The first containers are those of the service (manager and agent).
    let when = When { after_output: "", containers: 1, twice: false };
    interrupt(&docker, "docker_bench", &[("BENCH_RUNS", "1")], when, libc::SIGINT, 130).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_bench_removes_its_containers_on_sigterm_in_the_runtime_phase() {
    let Some(docker) = docker().await else { return };
    // After the 1-replica service round, the runtime round creates its
    // container straight through the runtime.
    let when = When { after_output: "service replicas=1 run=0", containers: 1, twice: false };
    interrupt(&docker, "docker_bench", &[("BENCH_RUNS", "1")], when, libc::SIGTERM, 143).await;
}

#[cfg(feature = "containerd")]
mod containerd {
    use super::*;
    use swarm::containerd::{ContainerdConfig, ContainerdRuntime};

    /// containerd_bench's namespace.
    const NS: &str = "swarm-rs-bench";

    struct Containerd {
        rt: ContainerdRuntime,
        cfg: ContainerdConfig,
    }

    impl Engine for Containerd {
        async fn containers(&self, run: &str) -> Result<Vec<String>, String> {
            let list = self.rt.list(&selector(run)).await.map_err(|e| e.to_string())?;
            Ok(list.into_iter().map(|c| c.id).collect())
        }
        /// Also what a create cut short left: the namespace is the
        /// example's own and the example is gone, so no create in it is in
        /// progress.
        async fn remove_run(&self, run: &str) {
            remove_all(&self.rt, run).await;
            if let Err(e) = self.rt.remove_orphans().await {
                eprintln!("removing the orphans in {NS}: {e}");
            }
        }
        /// State directories and snapshots: the example names its tasks
        /// after the run, and containerd ids start with the name.
        async fn leftovers(&self, run: &str) -> Vec<String> {
            let mut out = Vec::new();
            let dir = self.cfg.state_dir.join("containers");
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_name().to_string_lossy().starts_with(run) {
                        out.push(format!("state dir {}", e.path().display()));
                    }
                }
            }
            let ls = Command::new("ctr")
                .arg("--address")
                .arg(&self.cfg.address)
                .args(["-n", NS, "snapshots", "--snapshotter", &self.cfg.snapshotter, "ls"])
                .output();
            match ls {
                Ok(o) if o.status.success() => {
                    for l in String::from_utf8_lossy(&o.stdout).lines() {
                        if l.split_whitespace().next().is_some_and(|k| k.starts_with(run)) {
                            out.push(format!("snapshot {l}"));
                        }
                    }
                }
                Ok(o) => out.push(format!("ctr snapshots ls failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
                Err(e) => out.push(format!("ctr snapshots ls could not run: {e}")),
            }
            out
        }
    }

    async fn containerd() -> Option<Containerd> {
        let cfg = ContainerdConfig::new(NS);
        match ContainerdRuntime::connect(cfg.clone()).await {
            Ok(rt) => Some(Containerd { rt, cfg }),
            Err(e) => {
                skip(&format!("needs containerd (set CONTAINERD_ADDRESS) and root: {e}"));
                None
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn containerd_bench_removes_its_tasks_on_sigint_mid_create() {
        let Some(ctd) = containerd().await else { return };
        // Five tasks at once exist only in a round of ten or fifty, while
        // the others are being created.
        let when = When { after_output: "", containers: 5, twice: false };
        interrupt(&ctd, "containerd_bench", &[], when, libc::SIGINT, 130).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn containerd_bench_removes_its_tasks_on_sigterm() {
        let Some(ctd) = containerd().await else { return };
        let when = When { after_output: "", containers: 1, twice: false };
        interrupt(&ctd, "containerd_bench", &[], when, libc::SIGTERM, 143).await;
    }
}
