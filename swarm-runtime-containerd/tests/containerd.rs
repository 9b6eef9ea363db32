//! Integration tests against the machine's real containerd: the shared
//! conformance suite (swarm-conformance) plus containerd-specific checks
//! (spec fields reach the process, cgroup limits, stats, exit events, the
//! runtime's own unpacking of an image imported without unpacking).
//!
//! Where containerd is not reachable every test records a skip (listed at the
//! end of `scripts/test.sh`), except under CI, where it fails.

use async_trait::async_trait;
use futures_util::StreamExt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use swarm_conformance::{Fixture, RUN_LABEL, SeenFile, read_file_by_exec};
use swarm_core::model::{Labels, Mount, MountKind, PortConfig, PublishMode};
use swarm_core::runtime::*;
use swarm_runtime_containerd::fixture::{INDEX_HTML, import_busybox, remove_image};
use swarm_runtime_containerd::{BridgeConfig, ContainerdConfig, ContainerdRuntime};
use tokio::sync::{OnceCell, RwLock};

const NS: &str = "swarm-rs-ctd-test";
const IMAGE: &str = "swarm-ctd-test/busybox:1";
const PORT: u16 = 8080;

fn test_config(namespace: &str) -> ContainerdConfig {
    let mut cfg = ContainerdConfig::new(namespace);
    cfg.bridge = BridgeConfig { name: "swctdtest0".into(), subnet: "10.214.0.0".parse().unwrap(), prefix: 22 };
    cfg.state_dir = PathBuf::from("/var/lib/swarm-rs-containerd-test").join(namespace);
    cfg
}

static IMPORTED: OnceCell<()> = OnceCell::const_new();

/// Tests run in parallel (read) except those that look at host-wide state
/// (write).
static GATE: RwLock<()> = RwLock::const_new(());

/// The runtime, or `None` (after a recorded skip) when containerd is not
/// reachable; panics instead under CI.
async fn connect(namespace: &str) -> Option<ContainerdRuntime> {
    let cfg = test_config(namespace);
    match ContainerdRuntime::connect(cfg).await {
        Ok(rt) => Some(rt),
        Err(e) => {
            swarm_conformance::skip::skip(&format!("needs containerd (set CONTAINERD_ADDRESS): {e}"));
            None
        }
    }
}

async fn runtime() -> Option<ContainerdRuntime> {
    let rt = connect(NS).await?;
    IMPORTED
        .get_or_init(|| async {
            import_busybox(&rt.config().address, NS, IMAGE, true).await.expect("importing the busybox fixture image");
        })
        .await;
    Some(rt)
}

struct CtdFixture {
    rt: ContainerdRuntime,
}

fn cfg_with(cmd: &[&str]) -> ContainerConfig {
    let mut c = ContainerConfig::default();
    c.spec.image = IMAGE.into();
    c.spec.command = cmd.iter().map(|s| s.to_string()).collect();
    c
}

fn server_cmd() -> Vec<&'static str> {
    vec!["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"]
}

/// What containerd and the host still hold of container `id`.
async fn leftovers_of(rt: &ContainerdRuntime, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    let addr = rt.config().address.clone();
    let ns = rt.namespace().to_string();
    let ctr = |args: &[&str]| {
        let mut c = std::process::Command::new("ctr");
        c.arg("--address").arg(&addr).args(["-n", &ns]).args(args);
        c.output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    };
    if ctr(&["containers", "ls", "-q"]).lines().any(|l| l.trim() == id) {
        out.push(format!("container {id}"));
    }
    if ctr(&["tasks", "ls"]).lines().any(|l| l.split_whitespace().next() == Some(id)) {
        out.push(format!("task {id}"));
    }
    if ctr(&["snapshots", "--snapshotter", "overlayfs", "ls"]).lines().any(|l| l.split_whitespace().next() == Some(id))
    {
        out.push(format!("snapshot {id}"));
    }
    let token = id.rsplit('-').next().unwrap_or_default();
    if Path::new(&format!("/var/run/netns/swarm-ctd-{token}")).exists() {
        out.push(format!("netns swarm-ctd-{token}"));
    }
    let link = std::process::Command::new("ip").args(["link", "show", &format!("swv{token}")]).output();
    if link.map(|o| o.status.success()).unwrap_or(false) {
        out.push(format!("veth swv{token}"));
    }
    if swarm_runtime_containerd::ports::has_rules(None, token).await {
        out.push(format!("iptables rules swarm-ctd-{token}"));
    }
    let dir = rt.config().state_dir.join("containers").join(id);
    if dir.exists() {
        out.push(format!("state dir {}", dir.display()));
    }
    let ns = rt.namespace();
    if Path::new(&format!("/sys/fs/cgroup/memory/swarm-rs-containerd/{ns}/{id}")).exists() {
        out.push(format!("memory cgroup of {id}"));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if mounts.contains(&dir.display().to_string()) {
        out.push(format!("mount under {}", dir.display()));
    }
    out
}

#[async_trait]
impl Fixture for CtdFixture {
    type R = ContainerdRuntime;
    fn runtime(&self) -> &ContainerdRuntime {
        &self.rt
    }
    async fn reopen(&self) -> ContainerdRuntime {
        ContainerdRuntime::connect(self.rt.config().clone()).await.expect("reconnecting to containerd")
    }
    fn server(&self) -> ContainerConfig {
        cfg_with(&server_cmd())
    }
    fn port(&self) -> u16 {
        PORT
    }
    fn exits_with(&self, code: i32) -> ContainerConfig {
        cfg_with(&["sh", "-c", &format!("sleep 1; exit {code}")])
    }
    fn ignores_stop(&self) -> ContainerConfig {
        // PID 1 without a handler: the kernel drops SIGTERM.
        cfg_with(&["sleep", "3600"])
    }
    async fn read_file(&self, id: &str, path: &str) -> Result<SeenFile, String> {
        read_file_by_exec(&self.rt, id, path, &["stat", "-c", "%u %g %a"], self.patience()).await
    }
    async fn leftovers(&self, id: &str) -> Vec<String> {
        leftovers_of(&self.rt, id).await
    }
}

async fn fixture() -> Option<CtdFixture> {
    Some(CtdFixture { rt: runtime().await? })
}

/// Runs `body`, then removes every container labelled with `run`, even
/// when `body` panicked.
async fn with_sweep<F, Fut>(rt: Arc<ContainerdRuntime>, run: &str, body: F)
where
    F: FnOnce(Arc<ContainerdRuntime>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let r = tokio::spawn(body(rt.clone())).await;
    let mut sel = Labels::new();
    sel.insert(RUN_LABEL.into(), run.into());
    for c in rt.list(&sel).await.unwrap_or_default() {
        let _ = rt.remove(&c.id).await;
    }
    if let Err(e) = r {
        std::panic::resume_unwind(e.into_panic());
    }
}

fn labelled(mut c: ContainerConfig, run: &str, name: &str) -> ContainerConfig {
    c.name = format!("{name}.1.{run}");
    c.labels.insert(RUN_LABEL.into(), run.into());
    c.labels.insert(labels::MANAGED.into(), "true".into());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_create_and_health() {
    let Some(fx) = fixture().await else { return };
    let _gate = GATE.read().await;
    swarm_conformance::create_and_health(&fx, "ctd-health").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_crash_and_replace() {
    let Some(fx) = fixture().await else { return };
    let _gate = GATE.read().await;
    swarm_conformance::crash_and_replace(&fx, "ctd-crash").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_stop_grace() {
    let Some(fx) = fixture().await else { return };
    let _gate = GATE.read().await;
    swarm_conformance::stop_grace(&fx, "ctd-grace").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_secrets() {
    let Some(fx) = fixture().await else { return };
    let _gate = GATE.read().await;
    swarm_conformance::secrets(&fx, "ctd-secrets").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_cleanup() {
    let Some(fx) = fixture().await else { return };
    let _gate = GATE.read().await;
    swarm_conformance::cleanup(&fx, "ctd-cleanup").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_adoption() {
    let Some(fx) = fixture().await else { return };
    let _gate = GATE.read().await;
    swarm_conformance::adoption(&fx, "ctd-adopt").await.unwrap();
}

/// Args, env, cwd, user, tmpfs, logs on both streams, cgroup limits and
/// stats all reach the real task; the HTTP server answers at the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_fields_limits_logs_and_stats() {
    let Some(rt) = runtime().await else { return };
    let _gate = GATE.read().await;
    with_sweep(Arc::new(rt), "ctd-spec", |rt| async move {
        let mut c = labelled(
            cfg_with(&[
                "sh",
                "-c",
                "echo \"$GREETING $(id -u):$(id -g) $(pwd)\"; echo to-stderr >&2; \
                 httpd -f -p 8080 -h /www & while true; do sleep 1; done",
            ]),
            "ctd-spec",
            "spec",
        );
        c.spec.env = vec!["GREETING=hello".into()];
        c.spec.user = Some("1000:1001".into());
        c.spec.workdir = Some("/tmp".into());
        c.spec.mounts = vec![Mount {
            kind: MountKind::Tmpfs,
            target: "/scratch".into(),
            tmpfs_size_bytes: 1 << 20,
            ..Default::default()
        }];
        c.resources.limits.memory_bytes = 64 << 20;
        c.resources.limits.nano_cpus = 500_000_000;
        rt.prepare(&c).await.unwrap();
        let id = rt.create(&c).await.unwrap();
        rt.start(&id).await.unwrap();
        rt.start(&id).await.expect("starting a running task again is a no-op");
        let addr = rt.inspect(&id).await.unwrap().addresses[0];
        // The page, straight from the task's address.
        let mut body = String::new();
        for _ in 0..100 {
            if let Ok(b) = http_get(std::net::SocketAddr::new(addr, PORT)).await {
                body = b;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(body.ends_with(INDEX_HTML), "GET / answered {body:?}");
        let logs = rt.logs(&id, None).await.unwrap();
        assert!(logs.contains(&LogLine { stream: "stdout", line: "hello 1000:1001 /tmp".into() }), "{logs:?}");
        assert!(logs.contains(&LogLine { stream: "stderr", line: "to-stderr".into() }), "{logs:?}");
        assert_eq!(rt.logs(&id, Some(1)).await.unwrap().len(), 1);
        let mounts = rt.exec(&id, &["cat".into(), "/proc/mounts".into()], Duration::from_secs(10)).await.unwrap();
        assert!(mounts.output.lines().any(|l| l.starts_with("tmpfs /scratch tmpfs")), "{}", mounts.output);
        let nofile =
            rt.exec(&id, &["sh".into(), "-c".into(), "ulimit -n".into()], Duration::from_secs(10)).await.unwrap();
        assert_eq!(nofile.output.trim(), rt.config().nofile.to_string());
        let failing =
            rt.exec(&id, &["sh".into(), "-c".into(), "exit 4".into()], Duration::from_secs(10)).await.unwrap();
        assert_eq!(failing.exit_code, 4);
        let cg = format!("/sys/fs/cgroup/memory/swarm-rs-containerd/{NS}/{id}/memory.limit_in_bytes");
        if Path::new(&cg).exists() {
            assert_eq!(std::fs::read_to_string(&cg).unwrap().trim(), (64u64 << 20).to_string());
            let quota = format!("/sys/fs/cgroup/cpu/swarm-rs-containerd/{NS}/{id}/cpu.cfs_quota_us");
            assert_eq!(std::fs::read_to_string(&quota).unwrap().trim(), "50000");
        }
        let stats = rt.stats(&id).await.unwrap();
        assert_eq!(stats.memory_limit_bytes, 64 << 20, "{stats:?}");
        assert!(stats.memory_bytes > 0, "{stats:?}");
        assert!(stats.cpu_percent >= 0.0 && stats.cpu_percent < 400.0, "{stats:?}");
        rt.remove(&id).await.unwrap();
        // Users by name come from the image's /etc/passwd and /etc/group.
        let mut named = labelled(cfg_with(&["sh", "-c", "echo $(id -u):$(id -g)"]), "ctd-spec", "named");
        named.spec.user = Some("nobody".into());
        let id = rt.create(&named).await.unwrap();
        rt.start(&id).await.unwrap();
        assert_eq!(rt.wait(&id).await.unwrap().code, 0);
        let logs = rt.logs(&id, None).await.unwrap();
        assert_eq!(logs, vec![LogLine { stream: "stdout", line: "65534:65534".into() }]);
        rt.remove(&id).await.unwrap();
    })
    .await;
}

async fn http_get(addr: std::net::SocketAddr) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// The events service reports the task's exit with its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_events_come_from_the_events_service() {
    let Some(rt) = runtime().await else { return };
    let _gate = GATE.read().await;
    with_sweep(Arc::new(rt), "ctd-events", |rt| async move {
        let mut events = Box::pin(rt.exit_events().await.unwrap());
        let c = labelled(cfg_with(&["sh", "-c", "sleep 1; exit 5"]), "ctd-events", "ev");
        let id = rt.create(&c).await.unwrap();
        rt.start(&id).await.unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let e = events.next().await.expect("event stream ended");
                if e.id == id {
                    return e;
                }
            }
        })
        .await
        .expect("no exit event within 30 s");
        assert_eq!(ev.code, 5);
        rt.remove(&id).await.unwrap();
    })
    .await;
}

/// A create the runtime rejects leaves nothing behind (no container, no
/// network namespace, no address held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_creates_change_nothing() {
    let Some(rt) = runtime().await else { return };
    // Alone: it counts the host's network namespaces.
    let _gate = GATE.write().await;
    with_sweep(Arc::new(rt), "ctd-reject", |rt| async move {
        let mut sel = Labels::new();
        sel.insert(RUN_LABEL.into(), "ctd-reject".into());
        let netns_before = std::fs::read_dir("/var/run/netns").map(|d| d.count()).unwrap_or(0);
        let mut c = labelled(cfg_with(&["sleep", "10"]), "ctd-reject", "bad");
        c.spec.user = Some("www-data".into());
        assert!(matches!(rt.create(&c).await, Err(RuntimeError::InvalidConfig(_))));
        let mut c = labelled(cfg_with(&["/no/such/binary"]), "ctd-reject", "bad");
        let err = rt.create(&c).await.unwrap_err();
        assert!(matches!(err, RuntimeError::StartFailed { .. }), "{err:?}");
        c.spec.image = "swarm-ctd-test/absent:1".into();
        assert!(matches!(rt.prepare(&c).await, Err(RuntimeError::ImageNotFound { .. })));
        assert!(matches!(rt.create(&c).await, Err(RuntimeError::ImageNotFound { .. })));
        c.spec.image = IMAGE.into();
        // An ingress port is the routing mesh's business, not the runtime's.
        c.host_ports = vec![Default::default()];
        assert!(matches!(rt.create(&c).await, Err(RuntimeError::InvalidConfig(_))));
        assert!(rt.list(&sel).await.unwrap().is_empty());
        let netns_after = std::fs::read_dir("/var/run/netns").map(|d| d.count()).unwrap_or(0);
        assert_eq!(netns_before, netns_after, "a rejected create left a network namespace");
        assert!(matches!(rt.inspect("swarm-no-such-container").await, Err(RuntimeError::NotFound(_))));
    })
    .await;
}

/// An image imported without unpacking is unpacked by the runtime itself
/// (snapshots prepared, diff applied, committed), then runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_unpacks_an_image_imported_packed() {
    const UNPACK_NS: &str = "swarm-rs-ctd-test-unpack";
    let Some(rt) = connect(UNPACK_NS).await else { return };
    let _gate = GATE.read().await;
    let addr = rt.config().address.clone();
    remove_image(&addr, UNPACK_NS, IMAGE).await.unwrap();
    // Drop the layer snapshots a previous run may have left.
    let ls = std::process::Command::new("ctr")
        .arg("--address")
        .arg(&addr)
        .args(["-n", UNPACK_NS, "snapshots", "ls"])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&ls.stdout).lines().skip(1) {
        if let Some(key) = line.split_whitespace().next() {
            let _ = std::process::Command::new("ctr")
                .arg("--address")
                .arg(&addr)
                .args(["-n", UNPACK_NS, "snapshots", "rm", key])
                .output();
        }
    }
    import_busybox(&addr, UNPACK_NS, IMAGE, false).await.unwrap();
    with_sweep(Arc::new(rt), "ctd-unpack", |rt| async move {
        let c = labelled(cfg_with(&["sh", "-c", "exit 7"]), "ctd-unpack", "unpacked");
        rt.prepare(&c).await.unwrap();
        let id = rt.create(&c).await.unwrap();
        rt.start(&id).await.unwrap();
        assert_eq!(rt.wait(&id).await.unwrap().code, 7);
        rt.remove(&id).await.unwrap();
    })
    .await;
    remove_image(&addr, UNPACK_NS, IMAGE).await.unwrap();
}

/// Host-mode published ports: the server answers on the host's own
/// address at the published port; a second task cannot take the same
/// port; removing the task removes its rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_mode_ports_are_published() {
    let Some(rt) = runtime().await else { return };
    let _gate = GATE.read().await;
    with_sweep(Arc::new(rt), "ctd-ports", |rt| async move {
        let mut c = labelled(cfg_with(&server_cmd()), "ctd-ports", "published");
        let port = PortConfig {
            target_port: 8080,
            published_port: Some(18089),
            publish_mode: PublishMode::Host,
            ..Default::default()
        };
        let any = PortConfig {
            target_port: 8080,
            published_port: None,
            publish_mode: PublishMode::Host,
            ..Default::default()
        };
        c.host_ports = vec![port.clone(), any];
        let id = rt.create(&c).await.unwrap();
        rt.start(&id).await.unwrap();
        let s = rt.inspect(&id).await.unwrap();
        assert_eq!(s.host_ports.len(), 2, "{:?}", s.host_ports);
        assert_eq!(s.host_ports[0].published_port, Some(18089));
        let other = s.host_ports[1].published_port.unwrap();
        // The host's own (non-loopback) address: the bridge gateway.
        let host = std::net::IpAddr::V4(rt.config().bridge.gateway());
        for p in [18089u16, other as u16] {
            let mut body = String::new();
            for _ in 0..100 {
                if let Ok(b) = http_get(std::net::SocketAddr::new(host, p)).await {
                    body = b;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(body.ends_with(INDEX_HTML), "GET {host}:{p} answered {body:?}");
        }
        let mut clash = labelled(cfg_with(&server_cmd()), "ctd-ports", "clash");
        clash.host_ports = vec![port];
        let err = rt.create(&clash).await.unwrap_err();
        assert!(err.to_string().contains("already published"), "{err}");
        rt.remove(&id).await.unwrap();
        let left = leftovers_of(&rt, &id).await;
        assert!(left.is_empty(), "{left:?}");
        assert!(http_get(std::net::SocketAddr::new(host, 18089)).await.is_err(), "the port still answers");
    })
    .await;
}

/// An agent that died mid-way or a containerd that lost its containers
/// leaves host-side pieces; `remove_orphans` finds them by the state
/// directory and removes them, and leaves live tasks alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_removed() {
    let Some(rt) = runtime().await else { return };
    // Alone: in-flight creates of other tests would look like orphans.
    let _gate = GATE.write().await;
    with_sweep(Arc::new(rt), "ctd-orphans", |rt| async move {
        let live = rt.create(&labelled(cfg_with(&server_cmd()), "ctd-orphans", "live")).await.unwrap();
        let mut c = labelled(cfg_with(&server_cmd()), "ctd-orphans", "orphan");
        c.secrets = vec![FileMaterial {
            name: "s".into(),
            path: "/run/secrets/s".into(),
            data: swarm_core::model::SecretBytes(b"x".to_vec()),
            ..Default::default()
        }];
        c.host_ports = vec![PortConfig { target_port: 8080, publish_mode: PublishMode::Host, ..Default::default() }];
        let orphan = rt.create(&c).await.unwrap();
        rt.start(&orphan).await.unwrap();
        // containerd forgets the container behind the runtime's back.
        let ctr = |args: &[&str]| {
            std::process::Command::new("ctr")
                .arg("--address")
                .arg(&rt.config().address)
                .args(["-n", NS])
                .args(args)
                .output()
                .unwrap()
        };
        ctr(&["tasks", "kill", "-s", "SIGKILL", &orphan]);
        for _ in 0..50 {
            if ctr(&["tasks", "rm", &orphan]).status.success() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ctr(&["containers", "rm", &orphan]).status.success());
        assert!(!leftovers_of(&rt, &orphan).await.is_empty(), "the simulated crash left nothing to clean");
        let cleaned = rt.remove_orphans().await.unwrap();
        assert_eq!(cleaned, vec![orphan.clone()]);
        let left = leftovers_of(&rt, &orphan).await;
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(rt.inspect(&live).await.unwrap().state, ContainerState::Created);
        rt.remove(&live).await.unwrap();
    })
    .await;
}

/// Named volumes outlive their tasks and are shared; bind mounts show the
/// host directory; exec honours its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_binds_and_exec_timeout() {
    let Some(rt) = runtime().await else { return };
    let _gate = GATE.read().await;
    with_sweep(Arc::new(rt), "ctd-volumes", |rt| async move {
        let vol = "swarm-ctd-test-vol";
        let host_dir = std::env::temp_dir().join(format!("swarm-ctd-test-bind-{}", std::process::id()));
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::write(host_dir.join("from-host"), "bound\n").unwrap();
        let mounts = vec![
            Mount { kind: MountKind::Volume, source: vol.into(), target: "/data".into(), ..Default::default() },
            Mount {
                kind: MountKind::Bind,
                source: host_dir.display().to_string(),
                target: "/host".into(),
                read_only: true,
                ..Default::default()
            },
        ];
        let mut w = labelled(cfg_with(&["sh", "-c", "cat /host/from-host > /data/note"]), "ctd-volumes", "writer");
        w.spec.mounts = mounts.clone();
        rt.prepare(&w).await.unwrap();
        let id = rt.create(&w).await.unwrap();
        rt.start(&id).await.unwrap();
        assert_eq!(rt.wait(&id).await.unwrap().code, 0);
        rt.remove(&id).await.unwrap();
        let mut r = labelled(cfg_with(&["sleep", "3600"]), "ctd-volumes", "reader");
        r.spec.mounts = mounts;
        let id = rt.create(&r).await.unwrap();
        rt.start(&id).await.unwrap();
        let out = rt.exec(&id, &["cat".into(), "/data/note".into()], Duration::from_secs(10)).await.unwrap();
        assert_eq!(out.output, "bound\n");
        let ro = rt.exec(&id, &["sh".into(), "-c".into(), "echo x > /host/new".into()], Duration::from_secs(10)).await;
        assert_ne!(ro.unwrap().exit_code, 0, "a read-only bind was writable");
        let slow = rt.exec(&id, &["sleep".into(), "30".into()], Duration::from_millis(500)).await;
        assert!(matches!(slow, Err(RuntimeError::Timeout { .. })), "{slow:?}");
        rt.remove(&id).await.unwrap();
        rt.remove_volume(vol).await.unwrap();
        assert!(!rt.config().state_dir.join("volumes").join(vol).exists());
        std::fs::remove_dir_all(&host_dir).unwrap();
    })
    .await;
}

/// A task over its memory limit is OOM-killed: 137 with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kills_are_reported() {
    let Some(rt) = runtime().await else { return };
    let _gate = GATE.read().await;
    with_sweep(Arc::new(rt), "ctd-oom", |rt| async move {
        // dd's 256 MiB buffer does not fit in 16 MiB.
        let mut c = labelled(cfg_with(&["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"]), "ctd-oom", "hog");
        c.resources.limits.memory_bytes = 16 << 20;
        let id = rt.create(&c).await.unwrap();
        rt.start(&id).await.unwrap();
        let exit = rt.wait(&id).await.unwrap();
        assert_eq!(exit.code, 137, "{exit:?}");
        assert!(exit.error.as_deref().is_some_and(|e| e.contains("OOM")), "{exit:?}");
        let s = rt.inspect(&id).await.unwrap();
        assert!(s.error.as_deref().is_some_and(|e| e.contains("OOM")), "{s:?}");
        rt.remove(&id).await.unwrap();
    })
    .await;
}

/// A socket that does not exist is `Unavailable`, at once.
#[tokio::test]
async fn unreachable_socket_is_unavailable() {
    let mut cfg = test_config(NS);
    cfg.address = PathBuf::from("/nonexistent/containerd.sock");
    let err = ContainerdRuntime::connect(cfg).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Unavailable(_)), "{err:?}");
    let mut cfg = test_config("moby");
    cfg.address = PathBuf::from("/nonexistent/containerd.sock");
    assert!(matches!(ContainerdRuntime::connect(cfg).await, Err(RuntimeError::InvalidConfig(_))));
}
