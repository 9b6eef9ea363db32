//! Runs `swarmd` and `swarmctl` as separate OS processes on loopback
//! addresses, for the multi-process cluster tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const SWARMD: &str = env!("CARGO_BIN_EXE_swarmd");
pub const SWARMCTL: &str = env!("CARGO_BIN_EXE_swarmctl");

/// One swarmd process. Dropping it kills it (SIGKILL).
pub struct Daemon {
    pub name: String,
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub api: SocketAddr,
    pub raft: SocketAddr,
    pub node_id: String,
    pub lines: Vec<String>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("swarmd.sock")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A test's cluster directory and its address block (127.<block>.0.x).
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub block: u8,
    pub heartbeat: &'static str,
    /// `--runtime` of every node (default `sim`).
    pub runtime: &'static str,
}

impl Drop for Lab {
    /// When the test failed, shows the end of every daemon's log (the test
    /// harness prints it with the failure).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else { return };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!("----- {} (last {} lines) -----\n{}", path.display(), tail.len(), tail.join("\n"));
            }
        }
    }
}

pub struct Started {
    pub daemon: Daemon,
    pub worker_token: Option<String>,
    pub manager_token: Option<String>,
}

impl Lab {
    pub fn new(block: u8) -> Lab {
        Lab { dir: tempfile::tempdir().unwrap(), block, heartbeat: "1s", runtime: "sim" }
    }

    pub fn addr(&self, host: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, self.block, 0, host], port))
    }

    fn base_args(&self, name: &str, host: u8) -> Vec<String> {
        let dir = self.dir.path().join(name);
        vec![
            "--state-dir".into(),
            dir.display().to_string(),
            "--listen-addr".into(),
            self.addr(host, 4242).to_string(),
            "--raft-addr".into(),
            self.addr(host, 4243).to_string(),
            "--hostname".into(),
            name.into(),
            "--runtime".into(),
            self.runtime.into(),
            "--cpus".into(),
            "4".into(),
            "--memory".into(),
            (8u64 << 30).to_string(),
        ]
    }

    /// Starts `swarmd <args>` and waits for its ready line (or its exit).
    pub fn spawn(&self, name: &str, host: u8, command: &[&str], extra: &[String]) -> Result<Started, String> {
        let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        args.extend(self.base_args(name, host));
        args.extend(extra.iter().cloned());
        let (api, raft) = (self.addr(host, 4242), self.addr(host, 4243));
        self.launch(SWARMD, &args, name, api, raft, format!("swarmd {name}"))
    }

    /// Runs `program args` (swarmd, possibly behind `ip netns exec`) with
    /// its log in the lab's directory, and waits for its ready line (or
    /// its exit): the tokens `init` prints, and the node id.
    fn launch(
        &self,
        program: &str,
        args: &[String],
        name: &str,
        api: SocketAddr,
        raft: SocketAddr,
        what: String,
    ) -> Result<Started, String> {
        let log = self.dir.path().join(format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info,raft=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .map_err(|e| format!("{what}: {e}"))?;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut d = Daemon {
            name: name.into(),
            child: Some(child),
            dir: self.dir.path().join(name),
            api,
            raft,
            node_id: String::new(),
            lines: Vec::new(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut worker, mut manager) = (None, None);
        loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                if let Some(t) = line.strip_prefix("worker token: ") {
                    worker = Some(t.to_owned());
                }
                if let Some(t) = line.strip_prefix("manager token: ") {
                    manager = Some(t.to_owned());
                }
                let ready = line.starts_with("swarmd: ready ");
                if ready {
                    d.node_id =
                        line.split_whitespace().find_map(|w| w.strip_prefix("node=")).unwrap_or_default().to_owned();
                }
                d.lines.push(line);
                if ready {
                    return Ok(Started { daemon: d, worker_token: worker, manager_token: manager });
                }
            }
            if let Some(c) = d.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                d.child = None;
                return Err(format!("{what} exited ({st}) before ready:\n{}", d.log_text()));
            }
            if Instant::now() > deadline {
                return Err(format!("{what} not ready within 60 s:\n{}", d.log_text()));
            }
        }
    }

    pub fn init(&self, name: &str, host: u8) -> Started {
        let extra = vec!["--heartbeat".into(), self.heartbeat.into()];
        self.spawn(name, host, &["init"], &extra).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn join(&self, name: &str, host: u8, token: &str, via: SocketAddr) -> Started {
        self.try_join(name, host, token, via).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_join(&self, name: &str, host: u8, token: &str, via: SocketAddr) -> Result<Started, String> {
        let extra = vec!["--token".into(), token.into(), via.to_string()];
        self.spawn(name, host, &["join"], &extra)
    }

    pub fn restart(&self, name: &str, host: u8) -> Started {
        self.spawn(name, host, &["run"], &[]).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The result of one swarmctl run.
pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `swarmctl --socket <socket> <args>`.
pub fn ctl(socket: &Path, args: &[&str]) -> Out {
    let out = Command::new(SWARMCTL).arg("--socket").arg(socket).args(args).output().unwrap();
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs swarmctl with `--format json` and parses its output.
pub fn ctl_json(socket: &Path, args: &[&str]) -> Result<serde_json::Value, String> {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    let out = ctl(socket, &all);
    if !out.ok {
        return Err(out.stderr);
    }
    serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {}", out.stdout))
}

/// Polls `f` until it returns `Some` or `within` passes.
pub fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("not within {within:?}: {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// For tests/quorum.rs: swarmd with extra flags (e.g. a shorter --raft-tick).

impl Lab {
    /// `swarmd init` with extra flags after the usual ones.
    pub fn init_with(&self, name: &str, host: u8, extra: &[&str]) -> Started {
        let mut args = vec!["--heartbeat".to_owned(), self.heartbeat.to_owned()];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn(name, host, &["init"], &args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `swarmd join` with extra flags after the usual ones.
    pub fn join_with(&self, name: &str, host: u8, token: &str, via: SocketAddr, extra: &[&str]) -> Started {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(["--token".to_owned(), token.to_owned(), via.to_string()]);
        self.spawn(name, host, &["join"], &args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `swarmd run` on the node's state directory, with extra flags.
    pub fn restart_with(&self, name: &str, host: u8, extra: &[&str]) -> Started {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        self.spawn(name, host, &["run"], &args).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// `node ls` as JSON rows (empty when the call fails).
pub fn node_rows(socket: &Path) -> Vec<serde_json::Value> {
    ctl_json(socket, &["node", "ls"]).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
}

/// The hostname of the manager whose `manager_status` is `leader`.
pub fn leader_hostname(socket: &Path) -> Option<String> {
    node_rows(socket)
        .iter()
        .find(|n| n["manager_status"] == "leader")
        .and_then(|n| n["description"]["hostname"].as_str().map(str::to_owned))
}

impl Lab {
    /// Starts `swarmd <command> <node flags> <extra>` inside the network
    /// namespace `netns` (`ip netns exec`, which execs swarmd: the child's
    /// pid is swarmd's), listening on `ip` (node API :4242, raft :4243),
    /// with `--runtime runtime`; waits for its ready line (or its exit).
    /// `Lab::init` / `join` / `spawn` on loopback are unchanged.
    pub fn spawn_in(
        &self,
        netns: &str,
        name: &str,
        ip: std::net::IpAddr,
        runtime: &str,
        command: &[&str],
        extra: &[String],
    ) -> Result<Started, String> {
        let prefix: Vec<String> = ["netns", "exec", netns, SWARMD].iter().map(|s| s.to_string()).collect();
        self.spawn_with("ip", prefix, netns, name, ip, runtime, command, extra)
    }

    /// As [`Lab::spawn_in`], but swarmd enters only the network namespace
    /// (`nsenter --net`), not the mount namespace of its own that `ip
    /// netns exec` makes: what it mounts (a containerd task's network
    /// namespace) is then visible to containerd.
    pub fn spawn_in_net(
        &self,
        netns: &str,
        name: &str,
        ip: std::net::IpAddr,
        runtime: &str,
        command: &[&str],
        extra: &[String],
    ) -> Result<Started, String> {
        let prefix = vec![format!("--net=/run/netns/{netns}"), SWARMD.to_string()];
        self.spawn_with("nsenter", prefix, netns, name, ip, runtime, command, extra)
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_with(
        &self,
        program: &str,
        prefix: Vec<String>,
        netns: &str,
        name: &str,
        ip: std::net::IpAddr,
        runtime: &str,
        command: &[&str],
        extra: &[String],
    ) -> Result<Started, String> {
        let (api, raft) = (SocketAddr::new(ip, 4242), SocketAddr::new(ip, 4243));
        let dir = self.dir.path().join(name);
        let mut args = prefix;
        args.extend(command.iter().map(|s| s.to_string()));
        for (flag, value) in [
            ("--state-dir", dir.display().to_string()),
            ("--listen-addr", api.to_string()),
            ("--raft-addr", raft.to_string()),
            ("--hostname", name.to_owned()),
            ("--runtime", runtime.to_owned()),
            ("--cpus", "4".to_owned()),
            ("--memory", (8u64 << 30).to_string()),
        ] {
            args.push(flag.into());
            args.push(value);
        }
        args.extend(extra.iter().cloned());
        self.launch(program, &args, name, api, raft, format!("swarmd {name} (netns {netns})"))
    }
}
