//! `swarm-conformance`: one behavioural test suite for every
//! [`Runtime`] (SimRuntime, Docker, containerd).
//!
//! A backend plugs in through a [`Fixture`]: its runtime, a fresh handle on
//! the same engine (an agent that restarted), three kinds of task configs
//! (an HTTP server that stops on its stop signal, a task that exits with a
//! given code, a task that ignores its stop signal), and a way to read a
//! file as a task sees it (exec in the container on a real engine, the
//! simulated files on SimRuntime). The suite then
//! checks, through the trait only: create and health, crash (exit code) and
//! replace, the stop grace period, secrets and configs as files, cleanup,
//! and adoption by labels. Each check removes every container it created,
//! also when it fails, and returns a [`Failure`] naming what did not hold.
//!
//! Test support for the runtimes' own tests lives here too: [`skip`]
//! (a test that cannot run here says so) and, with feature `registry`,
//! `registry` (a Docker Registry v2 server to pull from).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use swarm_conformance::{SimFixture, run_all};
//! let fx = SimFixture::new();
//! run_all(&fx, "doc").await.unwrap();
//! # }
//! ```

#![warn(missing_docs)]

#[cfg(feature = "registry")]
pub mod registry;
pub mod skip;

use async_trait::async_trait;
use std::fmt;
use std::time::Duration;
use swarm_core::id::{ServiceId, TaskId};
use swarm_core::model::{HealthProbe, Labels, SecretBytes};
use swarm_core::runtime::*;
use swarm_core::sim::{Fault, FaultRule, SimRuntime};
use tokio::time::Instant;

/// Label the suite puts on everything it creates: the run id, so a run
/// only sees its own containers.
pub const RUN_LABEL: &str = "io.swarm-rs.conformance.run";

/// What a backend provides to the suite.
#[async_trait]
pub trait Fixture: Send + Sync {
    /// The runtime under test.
    type R: Runtime;
    /// The runtime.
    fn runtime(&self) -> &Self::R;
    /// A new handle on the same engine, as an agent that restarted opens.
    async fn reopen(&self) -> Self::R;
    /// A long-running task answering HTTP `GET /` with 2xx on
    /// [`Fixture::port`] at its address, that exits 0 soon after its stop
    /// signal.
    fn server(&self) -> ContainerConfig;
    /// The server's port.
    fn port(&self) -> u16;
    /// A task that exits with `code` on its own, within seconds.
    fn exits_with(&self, code: i32) -> ContainerConfig;
    /// A task that ignores its stop signal (only SIGKILL ends it).
    fn ignores_stop(&self) -> ContainerConfig;
    /// The file at `path` as the task of container `id` (running) sees it:
    /// content, owner, mode and the filesystem it is on. A real engine reads
    /// it through the runtime, from inside the container
    /// ([`read_file_by_exec`]); a simulation reports what the task would
    /// see.
    async fn read_file(&self, id: &str, path: &str) -> Result<SeenFile, String>;
    /// What the engine still holds of a removed container (snapshots,
    /// network namespaces, files, ...), one description per leftover.
    async fn leftovers(&self, id: &str) -> Vec<String>;
    /// How long to wait for something that should happen soon.
    fn patience(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// A file as a task sees it in its container.
#[derive(Clone, PartialEq, Eq)]
pub struct SeenFile {
    /// Content.
    pub data: Vec<u8>,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Permission bits, e.g. 0o444.
    pub mode: u32,
    /// Type of the filesystem it is on, e.g. `tmpfs`.
    pub fs_type: String,
}

impl fmt::Debug for SeenFile {
    // The content may be a secret: its length only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeenFile")
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("mode", &format_args!("{:#o}", self.mode))
            .field("fs_type", &self.fs_type)
            .finish()
    }
}

/// Reads a file from inside container `id` by exec: `cat PATH` for the
/// content, `stat_cmd` followed by the path for `UID GID MODE` (mode in
/// octal; e.g. busybox `stat -c "%u %g %a"`), and `cat /proc/mounts` for
/// the filesystem mounted at the path. For fixtures of real engines.
pub async fn read_file_by_exec<R: Runtime>(
    rt: &R,
    id: &str,
    path: &str,
    stat_cmd: &[&str],
    patience: Duration,
) -> Result<SeenFile, String> {
    let run = |cmd: Vec<String>| async move {
        let what = cmd.join(" ");
        let r = call(&format!("exec {what}"), rt.exec(id, &cmd, patience).await)?;
        ensure(r.exit_code == 0, || format!("exec {what}: exit {}: {}", r.exit_code, r.output))?;
        Ok::<String, String>(r.output)
    };
    let data = run(vec!["cat".into(), path.into()]).await?.into_bytes();
    let mut cmd: Vec<String> = stat_cmd.iter().map(|s| s.to_string()).collect();
    cmd.push(path.into());
    let stat = run(cmd).await?;
    let parts: Vec<&str> = stat.split_whitespace().collect();
    let (uid, gid, mode) = match parts.as_slice() {
        [u, g, m] => (u.parse().ok(), g.parse().ok(), u32::from_str_radix(m, 8).ok()),
        _ => (None, None, None),
    };
    let (Some(uid), Some(gid), Some(mode)) = (uid, gid, mode) else {
        return Err(format!("stat of {path} printed {stat:?}, want \"UID GID OCTAL-MODE\""));
    };
    let mounts = run(vec!["cat".into(), "/proc/mounts".into()]).await?;
    let fs_type = mounts
        .lines()
        .rfind(|l| l.split_whitespace().nth(1) == Some(path))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("")
        .to_string();
    Ok(SeenFile { data, uid, gid, mode, fs_type })
}

/// A check that did not hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The check.
    pub check: &'static str,
    /// What went wrong.
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conformance check {} failed: {}", self.check, self.detail)
    }
}

impl std::error::Error for Failure {}

type Check = Result<(), String>;

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Check {
    if cond { Ok(()) } else { Err(what()) }
}

fn call<T>(what: &str, r: Result<T, RuntimeError>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Tracks the containers a check created, to remove them whatever happens.
struct Tracker<'a, F: Fixture> {
    fx: &'a F,
    run: String,
    check: &'static str,
    ids: Vec<String>,
    seq: u32,
}

impl<'a, F: Fixture> Tracker<'a, F> {
    fn new(fx: &'a F, run: &str, check: &'static str) -> Self {
        Tracker { fx, run: run.to_string(), check, ids: Vec::new(), seq: 0 }
    }

    /// Gives `cfg` a task identity and the run's labels.
    fn identify(&mut self, mut cfg: ContainerConfig, service: &str) -> ContainerConfig {
        self.seq += 1;
        let svc = format!("{}-{}", self.check.replace('_', "-"), service);
        cfg.service_name = svc.clone();
        cfg.service_id = ServiceId::from(format!("svc-{}-{svc}", self.run));
        cfg.task_id = TaskId::from(format!("task-{}-{svc}-{}", self.run, self.seq));
        cfg.slot = Some(u64::from(self.seq));
        cfg.name = format!("{svc}.{}.{}", self.seq, self.run);
        let mut labels = cfg.labels.clone();
        labels.insert(labels::MANAGED.into(), "true".into());
        labels.insert(labels::TASK_ID.into(), cfg.task_id.to_string());
        labels.insert(labels::TASK_NAME.into(), cfg.name.clone());
        labels.insert(labels::SERVICE_ID.into(), cfg.service_id.to_string());
        labels.insert(labels::SERVICE_NAME.into(), svc);
        labels.insert(labels::SLOT.into(), self.seq.to_string());
        labels.insert(RUN_LABEL.into(), self.run.clone());
        cfg.labels = labels;
        cfg
    }

    async fn create(&mut self, cfg: &ContainerConfig) -> Result<String, String> {
        let rt = self.fx.runtime();
        call("prepare", rt.prepare(cfg).await)?;
        let id = call("create", rt.create(cfg).await)?;
        self.ids.push(id.clone());
        Ok(id)
    }

    async fn create_started(&mut self, cfg: &ContainerConfig) -> Result<String, String> {
        let id = self.create(cfg).await?;
        call("start", self.fx.runtime().start(&id).await)?;
        Ok(id)
    }

    fn forget(&mut self, id: &str) {
        self.ids.retain(|i| i != id);
    }

    async fn cleanup(&mut self) {
        let rt = self.fx.runtime();
        for id in std::mem::take(&mut self.ids) {
            match rt.remove(&id).await {
                Ok(()) | Err(RuntimeError::NotFound(_)) => {}
                Err(e) => tracing::warn!(id, error = %e, "conformance cleanup: remove failed"),
            }
        }
    }

    async fn finish(mut self, r: Check) -> Result<(), Failure> {
        self.cleanup().await;
        r.map_err(|detail| Failure { check: self.check, detail })
    }
}

async fn wait_state<R: Runtime>(
    rt: &R,
    id: &str,
    want: ContainerState,
    patience: Duration,
) -> Result<ContainerStatus, String> {
    let t0 = Instant::now();
    loop {
        let s = call("inspect", rt.inspect(id).await)?;
        if s.state == want {
            return Ok(s);
        }
        if t0.elapsed() > patience {
            return Err(format!("{id} is {:?}, wanted {want:?} within {patience:?}", s.state));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_healthy<R: Runtime>(rt: &R, id: &str, probe: &HealthProbe, patience: Duration) -> Check {
    let t0 = Instant::now();
    loop {
        match rt.probe(id, probe, Duration::from_secs(2)).await {
            ProbeResult::Healthy => return Ok(()),
            ProbeResult::Unhealthy(why) if t0.elapsed() > patience => {
                return Err(format!("{id} not healthy within {patience:?}: {why}"));
            }
            ProbeResult::Unhealthy(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Create, start, health: the task is Created then Running with an
/// address, its HTTP probe turns healthy, it stops on its stop signal well
/// within the grace period with exit code 0, and probes fail afterwards.
pub async fn create_and_health<F: Fixture>(fx: &F, run: &str) -> Result<(), Failure> {
    let mut t = Tracker::new(fx, run, "create_and_health");
    let r = async {
        let rt = fx.runtime();
        let cfg = t.identify(fx.server(), "web");
        let id = t.create(&cfg).await?;
        let s = call("inspect", rt.inspect(&id).await)?;
        ensure(s.state == ContainerState::Created, || format!("after create: state {:?}, want Created", s.state))?;
        ensure(s.labels.get(labels::TASK_ID) == Some(&cfg.task_id.to_string()), || "task id label missing".into())?;
        call("start", rt.start(&id).await)?;
        let s = wait_state(rt, &id, ContainerState::Running, fx.patience()).await?;
        ensure(!s.addresses.is_empty(), || "a running task has no address".into())?;
        let probe = HealthProbe::Http { port: fx.port(), path: "/".into() };
        wait_healthy(rt, &id, &probe, fx.patience()).await?;
        call("logs", rt.logs(&id, Some(10)).await)?;
        let grace = Duration::from_secs(20);
        let t0 = Instant::now();
        call("stop", rt.stop(&id, grace).await)?;
        let took = t0.elapsed();
        ensure(took < grace / 2, || format!("a task that handles its stop signal took {took:?} to stop"))?;
        let exit = call("wait", rt.wait(&id).await)?;
        ensure(exit.code == 0, || format!("stopped server exit code {}, want 0", exit.code))?;
        let s = call("inspect", rt.inspect(&id).await)?;
        ensure(s.state == ContainerState::Exited, || format!("after stop: {:?}", s.state))?;
        ensure(s.exit_code == Some(0), || format!("inspect exit code {:?}, want Some(0)", s.exit_code))?;
        match rt.probe(&id, &probe, Duration::from_secs(2)).await {
            ProbeResult::Unhealthy(_) => Ok(()),
            ProbeResult::Healthy => Err("a stopped task still probes healthy".into()),
        }
    }
    .await;
    t.finish(r).await
}

/// Crash and replace: a task that exits with 3 is seen to exit with 3
/// (wait and inspect); it is removed and a replacement from the same config
/// gets a new id and runs (and exits 3 in turn).
pub async fn crash_and_replace<F: Fixture>(fx: &F, run: &str) -> Result<(), Failure> {
    let mut t = Tracker::new(fx, run, "crash_and_replace");
    let r = async {
        let rt = fx.runtime();
        let cfg = t.identify(fx.exits_with(3), "crasher");
        let id = t.create_started(&cfg).await?;
        let exit = tokio::time::timeout(fx.patience(), rt.wait(&id))
            .await
            .map_err(|_| format!("{id} did not exit within {:?}", fx.patience()))?;
        let exit = call("wait", exit)?;
        ensure(exit.code == 3, || format!("exit code {}, want 3", exit.code))?;
        let s = call("inspect", rt.inspect(&id).await)?;
        ensure(s.state == ContainerState::Exited && s.exit_code == Some(3), || {
            format!("inspect after exit: {:?} code {:?}", s.state, s.exit_code)
        })?;
        call("remove", rt.remove(&id).await)?;
        t.forget(&id);
        let id2 = t.create_started(&cfg).await?;
        ensure(id2 != id, || "the replacement reused the crashed container's id".into())?;
        let exit = tokio::time::timeout(fx.patience(), rt.wait(&id2))
            .await
            .map_err(|_| format!("replacement {id2} did not exit within {:?}", fx.patience()))?;
        let exit = call("wait replacement", exit)?;
        ensure(exit.code == 3, || format!("replacement exit code {}, want 3", exit.code))
    }
    .await;
    t.finish(r).await
}

/// Stop grace: a task that ignores its stop signal is killed once the
/// grace period is over (not before), exit code 137.
pub async fn stop_grace<F: Fixture>(fx: &F, run: &str) -> Result<(), Failure> {
    let mut t = Tracker::new(fx, run, "stop_grace");
    let r = async {
        let rt = fx.runtime();
        let cfg = t.identify(fx.ignores_stop(), "stubborn");
        let id = t.create_started(&cfg).await?;
        wait_state(rt, &id, ContainerState::Running, fx.patience()).await?;
        let grace = Duration::from_secs(2);
        let t0 = Instant::now();
        call("stop", rt.stop(&id, grace).await)?;
        let took = t0.elapsed();
        ensure(took >= grace - Duration::from_millis(50), || {
            format!("killed after {took:?}, before the grace {grace:?}")
        })?;
        ensure(took < grace + fx.patience(), || format!("stop took {took:?}"))?;
        let exit = call("wait", rt.wait(&id).await)?;
        ensure(exit.code == 137, || format!("exit code {}, want 137 (SIGKILL)", exit.code))
    }
    .await;
    t.finish(r).await
}

/// Secrets and configs: a task with a secret (its own owner and mode) and
/// a config (default owner and mode) runs, and reads back from inside the
/// container, at their targets, exactly the bytes given, with the owner and
/// mode given (0:0 and 0o444 by default); the secret sits on a tmpfs.
pub async fn secrets<F: Fixture>(fx: &F, run: &str) -> Result<(), Failure> {
    let mut t = Tracker::new(fx, run, "secrets");
    let r = async {
        let rt = fx.runtime();
        let mut cfg = t.identify(fx.server(), "vault");
        let secret = format!("s3cr3t-value-{run}\n").into_bytes();
        let config = format!("mode=conformance\nrun={run}\n").into_bytes();
        cfg.secrets = vec![FileMaterial {
            name: "db-pass".into(),
            path: "/run/secrets/db-pass".into(),
            data: SecretBytes(secret.clone()),
            uid: "1000".into(),
            gid: "1001".into(),
            mode: 0o440,
        }];
        cfg.configs = vec![FileMaterial {
            name: "app-conf".into(),
            path: "/etc/app.conf".into(),
            data: SecretBytes(config.clone()),
            ..Default::default()
        }];
        let id = t.create_started(&cfg).await?;
        wait_state(rt, &id, ContainerState::Running, fx.patience()).await?;
        let want = [
            ("secret", "/run/secrets/db-pass", &secret, (1000, 1001, 0o440)),
            ("config", "/etc/app.conf", &config, (0, 0, 0o444)),
        ];
        for (kind, path, data, (uid, gid, mode)) in want {
            let seen = fx.read_file(&id, path).await.map_err(|e| format!("reading the {kind} {path}: {e}"))?;
            ensure(&seen.data == data, || {
                format!(
                    "the {kind} {path} holds {} bytes that are not the {} given{}",
                    seen.data.len(),
                    data.len(),
                    if seen.data.is_empty() { " (it is empty)" } else { "" }
                )
            })?;
            ensure((seen.uid, seen.gid, seen.mode) == (uid, gid, mode), || {
                format!(
                    "the {kind} {path} is {}:{} mode {:#o}, want {uid}:{gid} mode {mode:#o}",
                    seen.uid, seen.gid, seen.mode
                )
            })?;
            if kind == "secret" {
                ensure(seen.fs_type == "tmpfs", || format!("the secret is on {:?}, not on a tmpfs", seen.fs_type))?;
            }
        }
        Ok(())
    }
    .await;
    t.finish(r).await
}

/// Cleanup: after remove, the container is gone from inspect and list,
/// a second remove says NotFound, and the engine holds nothing of it.
pub async fn cleanup<F: Fixture>(fx: &F, run: &str) -> Result<(), Failure> {
    let mut t = Tracker::new(fx, run, "cleanup");
    let r = async {
        let rt = fx.runtime();
        let mut cfg = t.identify(fx.server(), "tidy");
        cfg.secrets = vec![FileMaterial {
            name: "tidy".into(),
            path: "/run/secrets/tidy".into(),
            data: SecretBytes(b"x".to_vec()),
            ..Default::default()
        }];
        let id = t.create_started(&cfg).await?;
        wait_state(rt, &id, ContainerState::Running, fx.patience()).await?;
        call("stop", rt.stop(&id, Duration::from_secs(10)).await)?;
        call("remove", rt.remove(&id).await)?;
        t.forget(&id);
        ensure(matches!(rt.inspect(&id).await, Err(RuntimeError::NotFound(_))), || "inspect after remove".into())?;
        ensure(matches!(rt.remove(&id).await, Err(RuntimeError::NotFound(_))), || "second remove".into())?;
        let mut sel = Labels::new();
        sel.insert(RUN_LABEL.into(), run.into());
        let listed = call("list", rt.list(&sel).await)?;
        ensure(!listed.iter().any(|c| c.id == id), || "list still shows the removed container".into())?;
        let left = fx.leftovers(&id).await;
        ensure(left.is_empty(), || format!("the engine still holds: {left:?}"))?;
        // A running container removed without a stop goes away too.
        let id2 = t.create_started(&cfg).await?;
        wait_state(rt, &id2, ContainerState::Running, fx.patience()).await?;
        call("remove running", rt.remove(&id2).await)?;
        t.forget(&id2);
        let left = fx.leftovers(&id2).await;
        ensure(left.is_empty(), || format!("after removing a running task the engine still holds: {left:?}"))
    }
    .await;
    t.finish(r).await
}

/// Adoption: a new runtime handle (an agent that restarted) lists the
/// run's containers by label with their state and labels, adopts one
/// (inspect, stop, wait work through the new handle) and removes the other.
pub async fn adoption<F: Fixture>(fx: &F, run: &str) -> Result<(), Failure> {
    let mut t = Tracker::new(fx, run, "adoption");
    let r = async {
        let a_cfg = t.identify(fx.server(), "adopt");
        let b_cfg = t.identify(fx.server(), "adopt");
        let a = t.create_started(&a_cfg).await?;
        let b = t.create_started(&b_cfg).await?;
        wait_state(fx.runtime(), &a, ContainerState::Running, fx.patience()).await?;
        wait_state(fx.runtime(), &b, ContainerState::Running, fx.patience()).await?;
        let rt2 = fx.reopen().await;
        let mut sel = Labels::new();
        sel.insert(RUN_LABEL.into(), run.into());
        sel.insert(labels::SERVICE_NAME.into(), a_cfg.service_name.clone());
        let found = call("list", rt2.list(&sel).await)?;
        let mut ids: Vec<&str> = found.iter().map(|c| c.id.as_str()).collect();
        ids.sort();
        let mut want = vec![a.as_str(), b.as_str()];
        want.sort();
        ensure(ids == want, || format!("list found {ids:?}, want {want:?}"))?;
        for c in &found {
            ensure(c.state == ContainerState::Running, || format!("{} listed as {:?}", c.id, c.state))?;
            let cfg = if c.id == a { &a_cfg } else { &b_cfg };
            ensure(c.labels.get(labels::TASK_ID) == Some(&cfg.task_id.to_string()), || {
                format!("{} lacks its task id label", c.id)
            })?;
        }
        let s = call("inspect adopted", rt2.inspect(&a).await)?;
        ensure(s.state == ContainerState::Running && !s.addresses.is_empty(), || format!("adopted: {s:?}"))?;
        call("stop adopted", rt2.stop(&a, Duration::from_secs(10)).await)?;
        let exit = call("wait adopted", rt2.wait(&a).await)?;
        ensure(exit.code == 0, || format!("adopted task exit {}", exit.code))?;
        call("remove orphan", rt2.remove(&b).await)?;
        t.forget(&b);
        let found = call("list again", rt2.list(&sel).await)?;
        ensure(found.len() == 1 && found[0].id == a, || format!("after removing the orphan: {found:?}"))
    }
    .await;
    t.finish(r).await
}

/// Every check in turn; the first failure stops the run (each check
/// cleans up after itself).
pub async fn run_all<F: Fixture>(fx: &F, run: &str) -> Result<(), Failure> {
    create_and_health(fx, run).await?;
    crash_and_replace(fx, run).await?;
    stop_grace(fx, run).await?;
    secrets(fx, run).await?;
    cleanup(fx, run).await?;
    adoption(fx, run).await?;
    Ok(())
}

/// The suite's fixture for [`SimRuntime`]: behaviours come from fault
/// rules on images named `sim-exit-<code>` and `sim-hang`.
#[derive(Clone, Debug)]
pub struct SimFixture {
    sim: SimRuntime,
}

impl SimFixture {
    /// A fresh simulated node.
    pub fn new() -> Self {
        SimFixture { sim: SimRuntime::new("conformance") }
    }

    /// The simulated node.
    pub fn sim(&self) -> &SimRuntime {
        &self.sim
    }
}

impl Default for SimFixture {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Fixture for SimFixture {
    type R = SimRuntime;
    fn runtime(&self) -> &SimRuntime {
        &self.sim
    }
    async fn reopen(&self) -> SimRuntime {
        // A clone shares the engine state, as a new client of the same
        // daemon would.
        self.sim.clone()
    }
    fn server(&self) -> ContainerConfig {
        let mut c = ContainerConfig::default();
        c.spec.image = "sim-server".into();
        c
    }
    fn port(&self) -> u16 {
        8080
    }
    fn exits_with(&self, code: i32) -> ContainerConfig {
        let image = format!("sim-exit-{code}");
        self.sim.inject(FaultRule::new(Fault::ExitAfter { after: Duration::from_secs(1), code }).image(&image));
        let mut c = ContainerConfig::default();
        c.spec.image = image;
        c
    }
    fn ignores_stop(&self) -> ContainerConfig {
        self.sim.inject(FaultRule::new(Fault::HangOnStop).image("sim-hang"));
        let mut c = ContainerConfig::default();
        c.spec.image = "sim-hang".into();
        c
    }
    async fn read_file(&self, id: &str, path: &str) -> Result<SeenFile, String> {
        let files = call("sim files", self.sim.files(id))?;
        let f = files.into_iter().find(|f| f.path == path).ok_or_else(|| format!("no file at {path}"))?;
        Ok(SeenFile { data: f.data.0, uid: f.uid, gid: f.gid, mode: f.mode, fs_type: f.fs_type.to_string() })
    }
    async fn leftovers(&self, id: &str) -> Vec<String> {
        if self.sim.running().iter().any(|r| r == id) {
            vec![format!("sim container {id} still running")]
        } else {
            vec![]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sim_passes_the_suite() {
        let fx = SimFixture::new();
        run_all(&fx, "sim").await.unwrap();
        assert_eq!(fx.sim().container_count(), 0, "the suite left containers behind");
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_runtime_fails_a_check() {
        // A sim whose tasks ignore the stop signal fails create_and_health
        // (the server must stop well within its grace period).
        let fx = SimFixture::new();
        fx.sim().inject(FaultRule::new(Fault::HangOnStop));
        let err = create_and_health(&fx, "broken").await.unwrap_err();
        assert_eq!(err.check, "create_and_health");
        assert!(err.detail.contains("to stop"), "{err}");
        assert_eq!(fx.sim().container_count(), 0, "a failing check must clean up");
    }

    #[tokio::test(start_paused = true)]
    async fn a_runtime_that_drops_file_content_fails_the_secrets_check() {
        let fx = SimFixture::new();
        fx.sim().inject(FaultRule::new(Fault::LoseFileContent));
        let err = secrets(&fx, "lossy").await.unwrap_err();
        assert_eq!(err.check, "secrets");
        assert!(err.detail.contains("/run/secrets/db-pass") && err.detail.contains("empty"), "{err}");
        assert_eq!(fx.sim().container_count(), 0, "a failing check must clean up");
    }

    #[tokio::test(start_paused = true)]
    async fn the_secrets_check_reads_the_content_the_task_was_given() {
        // The check reads back what it gave: a fixture that shows other
        // bytes (or other owners) fails it.
        struct Tampered(SimFixture, fn(&mut SeenFile));
        #[async_trait]
        impl Fixture for Tampered {
            type R = SimRuntime;
            fn runtime(&self) -> &SimRuntime {
                self.0.runtime()
            }
            async fn reopen(&self) -> SimRuntime {
                self.0.reopen().await
            }
            fn server(&self) -> ContainerConfig {
                self.0.server()
            }
            fn port(&self) -> u16 {
                self.0.port()
            }
            fn exits_with(&self, code: i32) -> ContainerConfig {
                self.0.exits_with(code)
            }
            fn ignores_stop(&self) -> ContainerConfig {
                self.0.ignores_stop()
            }
            async fn read_file(&self, id: &str, path: &str) -> Result<SeenFile, String> {
                let mut f = self.0.read_file(id, path).await?;
                (self.1)(&mut f);
                Ok(f)
            }
            async fn leftovers(&self, id: &str) -> Vec<String> {
                self.0.leftovers(id).await
            }
        }
        type Tamper = fn(&mut SeenFile);
        let cases: [(Tamper, &str); 4] = [
            (|f| f.data[0] ^= 1, "not the"),
            (|f| f.uid = 0, "want"),
            (|f| f.mode = 0o644, "mode"),
            (|f| f.fs_type = "ext4".into(), "tmpfs"),
        ];
        for (tamper, says) in cases {
            let err = secrets(&Tampered(SimFixture::new(), tamper), "tampered").await.unwrap_err();
            assert!(err.detail.contains(says), "{err}");
        }
        secrets(&Tampered(SimFixture::new(), |_| {}), "untouched").await.expect("the untouched sim passes");
    }
}
