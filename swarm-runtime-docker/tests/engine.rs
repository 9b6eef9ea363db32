//! Integration tests against the real Docker Engine (`DOCKER_HOST` or
//! /var/run/docker.sock), with the self-built test workload image.
//!
//! Every test names its containers, networks and volumes with its own
//! prefix (`swt-<pid>-<test>`) and labels its containers with it, and cleans
//! all of them up afterwards, also when it fails. Without a reachable
//! engine each test records a skip (listed at the end of
//! `scripts/test.sh`), except under CI, where it fails.

use bollard::query_parameters::{
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use swarm_core::model::{
    HealthProbe, Labels, Mount, MountKind, NetworkAttachmentConfig, NetworkSpec, PortConfig, PublishMode, Resources,
    SecretBytes, VolumeSpec,
};
use swarm_core::runtime::{ContainerConfig, ContainerState, FileMaterial, ProbeResult, Runtime, RuntimeError, labels};
use swarm_runtime_docker::{ContainerEventKind, DockerRuntime, DockerRuntimeOptions, fixture};

mod common;
use common::{TEST_LABEL, engine_runtime};

/// One test's world: its runtime, image and name prefix.
#[derive(Clone)]
struct Scope {
    rt: DockerRuntime,
    image: String,
    prefix: String,
}

impl Scope {
    /// A workload config named `<prefix>-<service>.<slot>`, labelled for cleanup.
    fn workload(&self, service: &str, slot: u64) -> ContainerConfig {
        let name = format!("{}-{service}.{slot}", self.prefix);
        let task = format!("{}-{service}-task{slot}", self.prefix);
        let mut cfg = fixture::workload_config(&self.image, &name, &task);
        cfg.service_name = format!("{}-{service}", self.prefix);
        cfg.slot = Some(slot);
        cfg.labels.insert(TEST_LABEL.into(), self.prefix.clone());
        cfg
    }

    async fn run(&self, cfg: &ContainerConfig) -> String {
        self.rt.prepare(cfg).await.expect("prepare");
        let id = self.rt.create(cfg).await.expect("create");
        self.rt.start(&id).await.expect("start");
        id
    }

    async fn addr(&self, id: &str) -> SocketAddr {
        let st = self.rt.inspect(id).await.expect("inspect");
        assert_eq!(st.state, ContainerState::Running, "{st:?}");
        SocketAddr::new(*st.addresses.first().expect("the container has an address"), fixture::PORT)
    }
}

/// GET until it answers 2xx or `within` passes.
async fn get_ok(addr: SocketAddr, path: &str, within: Duration) -> String {
    let start = Instant::now();
    loop {
        match fixture::http_get(addr, path, Duration::from_secs(2)).await {
            Ok((200, body)) => return body,
            other if start.elapsed() > within => panic!("GET {path} on {addr}: {other:?} after {within:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Runs `body` in a scope, then removes everything the scope made (also on
/// panic), then re-raises the panic.
async fn scoped<F, Fut>(test: &str, opts: DockerRuntimeOptions, body: F)
where
    F: FnOnce(Scope) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let _ = tracing_subscriber::fmt().with_env_filter("swarm_runtime_docker=debug").with_test_writer().try_init();
    let Some(rt) = engine_runtime(opts).await else { return };
    let image = fixture::ensure_test_image(rt.client()).await.expect("test image");
    let prefix = format!("swt-{}-{test}", std::process::id());
    let scope = Scope { rt: rt.clone(), image, prefix: prefix.clone() };
    let result = tokio::spawn(body(scope)).await;
    cleanup(&rt, &prefix).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Removes the containers labelled with `prefix` and the networks and
/// volumes named with it.
async fn cleanup(rt: &DockerRuntime, prefix: &str) {
    let mut sel = Labels::new();
    sel.insert(TEST_LABEL.into(), prefix.into());
    for c in rt.list(&sel).await.unwrap_or_default() {
        let _ = rt.remove(&c.id).await;
    }
    let d = rt.client();
    let nets = d.list_networks(None::<bollard::query_parameters::ListNetworksOptions>).await.unwrap_or_default();
    for n in nets.into_iter().filter_map(|n| n.name).filter(|n| n.starts_with(prefix)) {
        let _ = rt.remove_network(&n).await;
    }
    let vols = d.list_volumes(None::<bollard::query_parameters::ListVolumesOptions>).await.ok();
    for v in vols.and_then(|v| v.volumes).unwrap_or_default().into_iter().filter(|v| v.name.starts_with(prefix)) {
        let _ = rt.remove_volume(&v.name).await;
    }
}

/// What is left on the engine with `prefix`: (containers, networks, volumes).
async fn leftovers(rt: &DockerRuntime, prefix: &str) -> (usize, usize, usize) {
    let d = rt.client();
    let mut f = HashMap::new();
    f.insert("label".to_string(), vec![format!("{TEST_LABEL}={prefix}")]);
    let cs = d.list_containers(Some(ListContainersOptionsBuilder::new().all(true).filters(&f).build())).await.unwrap();
    let ns = d.list_networks(None::<bollard::query_parameters::ListNetworksOptions>).await.unwrap();
    let vs = d.list_volumes(None::<bollard::query_parameters::ListVolumesOptions>).await.unwrap();
    (
        cs.len(),
        ns.iter().filter(|n| n.name.as_deref().is_some_and(|n| n.starts_with(prefix))).count(),
        vs.volumes.unwrap_or_default().iter().filter(|v| v.name.starts_with(prefix)).count(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_answers_http_and_runtime_calls_work() {
    scoped("http", DockerRuntimeOptions::default(), |s| async move {
        let mut cfg = s.workload("web", 1);
        cfg.host_ports = vec![PortConfig {
            target_port: u32::from(fixture::PORT),
            published_port: None,
            publish_mode: PublishMode::Host,
            ..Default::default()
        }];
        let id = s.run(&cfg).await;
        let addr = s.addr(&id).await;
        // Over the container address, as the agent's probes and peers see it.
        assert_eq!(get_ok(addr, "/id", Duration::from_secs(10)).await, cfg.task_id.as_str());
        // Over the host-mode published port.
        let st = s.rt.inspect(&id).await.unwrap();
        let hp = st.host_ports.first().expect("a published host port");
        assert_eq!(hp.target_port, u32::from(fixture::PORT));
        let host = SocketAddr::from(([127, 0, 0, 1], hp.published_port.unwrap() as u16));
        assert_eq!(get_ok(host, "/id", Duration::from_secs(10)).await, cfg.task_id.as_str());
        assert_eq!(st.labels[labels::TASK_ID], cfg.task_id.as_str());
        assert_eq!(st.labels[labels::SLOT], "1");

        let probe = HealthProbe::Http { port: fixture::PORT, path: "/health".into() };
        assert_eq!(s.rt.probe(&id, &probe, Duration::from_secs(2)).await, ProbeResult::Healthy);
        let cmd = vec!["/workload".to_string(), "probe".into(), fixture::PORT.to_string(), "/health".into()];
        let r = s.rt.exec(&id, &cmd, Duration::from_secs(10)).await.unwrap();
        assert_eq!(r.exit_code, 0, "{r:?}");

        let logs = s.rt.logs(&id, Some(10)).await.unwrap();
        assert!(logs.iter().any(|l| l.stream == "stdout" && l.line.contains("listening on 8080")), "{logs:?}");
        let stats = s.rt.stats(&id).await.unwrap();
        assert!(stats.memory_bytes > 0, "{stats:?}");
        assert!(stats.cpu_percent >= 0.0);

        // stop: SIGTERM, which the workload obeys at once (exit 0)
        let t = Instant::now();
        s.rt.stop(&id, Duration::from_secs(10)).await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(8), "stop waited {:?}", t.elapsed());
        let exit = s.rt.wait(&id).await.unwrap();
        assert_eq!(exit.code, 0, "{exit:?}");
        assert_eq!(s.rt.inspect(&id).await.unwrap().state, ContainerState::Exited);
        s.rt.remove(&id).await.unwrap();
        assert!(matches!(s.rt.inspect(&id).await, Err(RuntimeError::NotFound(_))));
        assert!(matches!(s.rt.remove(&id).await, Err(RuntimeError::NotFound(_))));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_from_outside_and_crash_are_seen_by_wait_and_events() {
    scoped("kill", DockerRuntimeOptions::default(), |s| async move {
        let mut events = Box::pin(s.rt.events());
        let a = s.run(&s.workload("victim", 1)).await;
        let b = s.run(&s.workload("crasher", 1)).await;
        let addr_a = s.addr(&a).await;
        let addr_b = s.addr(&b).await;
        get_ok(addr_a, "/health", Duration::from_secs(10)).await;
        get_ok(addr_b, "/health", Duration::from_secs(10)).await;
        let rt = s.rt.clone();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { rt.wait(&a2).await });
        // `docker kill`, from outside the runtime
        s.rt.client()
            .kill_container(&a, Some(KillContainerOptionsBuilder::new().signal("SIGKILL").build()))
            .await
            .unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("wait returns").unwrap().unwrap();
        assert_eq!(exit.code, 137, "{exit:?}");
        // a crash with its own exit code
        let _ = fixture::http_get(addr_b, "/crash?code=7", Duration::from_secs(2)).await;
        assert_eq!(s.rt.wait(&b).await.unwrap().code, 7);

        let mut exits = HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while exits.len() < 2 {
            let ev = tokio::time::timeout_at(deadline, events.next()).await.expect("events in time").unwrap().unwrap();
            if let ContainerEventKind::Exited { code } = ev.kind
                && (ev.id == a || ev.id == b)
            {
                exits.insert(ev.id.clone(), code);
            }
        }
        assert_eq!(exits[&a], 137);
        assert_eq!(exits[&b], 7);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_waits_the_grace_period_then_kills() {
    scoped("grace", DockerRuntimeOptions::default(), |s| async move {
        let mut cfg = s.workload("stubborn", 1);
        cfg.spec.env.push("IGNORE_SIGTERM=1".into());
        let id = s.run(&cfg).await;
        get_ok(s.addr(&id).await, "/health", Duration::from_secs(10)).await;
        let t = Instant::now();
        s.rt.stop(&id, Duration::from_secs(1)).await.unwrap();
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(10), "stop took {took:?}");
        assert_eq!(s.rt.wait(&id).await.unwrap().code, 137);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_is_detected_by_probes_and_docker_healthcheck() {
    let opts = DockerRuntimeOptions { docker_healthcheck: true, ..Default::default() };
    scoped("health", opts, |s| async move {
        let mut events = Box::pin(s.rt.events());
        let mut cfg = s.workload("sick", 1);
        let probe_cmd = vec!["/workload".to_string(), "probe".into(), fixture::PORT.to_string(), "/health".into()];
        cfg.spec.health_check = Some(swarm_core::model::HealthCheck {
            probe: HealthProbe::Command(probe_cmd.clone()),
            interval: swarm_core::time::SpecDuration::from_millis(200),
            timeout: swarm_core::time::SpecDuration::from_secs(2),
            retries: 1,
            ..Default::default()
        });
        let id = s.run(&cfg).await;
        let addr = s.addr(&id).await;
        get_ok(addr, "/health", Duration::from_secs(10)).await;
        let http = HealthProbe::Http { port: fixture::PORT, path: "/health".into() };
        let cmd = HealthProbe::Command(probe_cmd);
        let tcp = HealthProbe::Tcp { port: fixture::PORT };
        for p in [&http, &cmd, &tcp] {
            assert_eq!(s.rt.probe(&id, p, Duration::from_secs(5)).await, ProbeResult::Healthy, "{p:?}");
        }
        let (code, _) = fixture::http_get(addr, "/unhealthy", Duration::from_secs(2)).await.unwrap();
        assert_eq!(code, 200);
        for p in [&http, &cmd] {
            let r = s.rt.probe(&id, p, Duration::from_secs(5)).await;
            assert!(matches!(&r, ProbeResult::Unhealthy(why) if why.contains("503")), "{p:?}: {r:?}");
        }
        // The translated Docker HEALTHCHECK turns unhealthy too, seen on the event stream.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ev =
                tokio::time::timeout_at(deadline, events.next()).await.expect("health event in time").unwrap().unwrap();
            if ev.id == id && ev.kind == (ContainerEventKind::Health { healthy: false }) {
                break;
            }
        }
        // A stopped container's probe fails, it does not hang.
        s.rt.kill(&id).await.unwrap();
        s.rt.wait(&id).await.unwrap();
        assert!(matches!(s.rt.probe(&id, &tcp, Duration::from_secs(2)).await, ProbeResult::Unhealthy(_)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_files_on_tmpfs_and_absent_from_inspect() {
    // A secrets dir on disk: the runtime must mount a tmpfs there itself.
    let dir = std::env::temp_dir().join(format!("swt-{}-secrets", std::process::id()));
    let opts = DockerRuntimeOptions { secrets_dir: dir.clone(), ..Default::default() };
    let d2 = dir.clone();
    scoped("secret", opts, move |s| async move {
        let secret = format!("s3cr3t-{}", s.prefix);
        let mut cfg = s.workload("db", 1);
        cfg.secrets = vec![
            FileMaterial {
                name: "db_password".into(),
                path: "/run/secrets/db_password".into(),
                data: SecretBytes(secret.clone().into_bytes()),
                ..Default::default()
            },
            FileMaterial {
                name: "api_key".into(),
                path: "/etc/app/api.key".into(),
                data: SecretBytes(b"key-123".to_vec()),
                mode: 0o400,
                ..Default::default()
            },
        ];
        cfg.configs = vec![FileMaterial {
            name: "app.conf".into(),
            path: "/etc/app.conf".into(),
            data: SecretBytes(b"level=debug\n".to_vec()),
            ..Default::default()
        }];
        let id = s.run(&cfg).await;
        let addr = s.addr(&id).await;
        assert_eq!(get_ok(addr, "/file?path=/run/secrets/db_password", Duration::from_secs(10)).await, secret);
        assert_eq!(get_ok(addr, "/file?path=/etc/app/api.key", Duration::from_secs(5)).await, "key-123");
        assert_eq!(get_ok(addr, "/file?path=/etc/app.conf", Duration::from_secs(5)).await, "level=debug\n");
        // Not in `docker inspect` (nor env, labels, args).
        let raw = s.rt.client().inspect_container(&id, None).await.unwrap();
        let json = serde_json::to_string(&raw).unwrap();
        assert!(!json.contains(&secret), "the secret shows in docker inspect");
        assert!(!json.contains("key-123"));
        // In memory on the host: the directory is a tmpfs.
        let out = std::process::Command::new("stat").args(["-f", "-c", "%T"]).arg(&d2).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "tmpfs");
        // A second create with the same name is refused and leaves the first one's files alone.
        let e = s.rt.create(&cfg).await.unwrap_err();
        assert!(matches!(&e, RuntimeError::InvalidConfig(m) if m.contains("already in use")), "{e}");
        assert_eq!(get_ok(addr, "/file?path=/run/secrets/db_password", Duration::from_secs(5)).await, secret);
        assert_eq!(std::fs::read_dir(&d2).unwrap().count(), 1);
        s.rt.stop(&id, Duration::from_secs(5)).await.unwrap();
        s.rt.remove(&id).await.unwrap();
        let left: Vec<_> = std::fs::read_dir(&d2).unwrap().collect();
        assert!(left.is_empty(), "secret files left after remove: {left:?}");
        // Removed behind the runtime's back: the files stay until pruned.
        let mut other = s.workload("db", 2);
        other.secrets = cfg.secrets.clone();
        let other_id = s.rt.create(&other).await.unwrap();
        assert_eq!(std::fs::read_dir(&d2).unwrap().count(), 1);
        let rm = RemoveContainerOptionsBuilder::new().force(true).build();
        s.rt.client().remove_container(&other_id, Some(rm)).await.unwrap();
        assert_eq!(s.rt.prune_secret_files().await.unwrap(), vec![other.name.clone()]);
        assert_eq!(std::fs::read_dir(&d2).unwrap().count(), 0);
    })
    .await;
    // Unmount the tmpfs the runtime mounted for this test.
    let _ = std::process::Command::new("umount").arg(&dir).status();
    let _ = std::fs::remove_dir(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_a_shared_network_reach_each_other_by_name() {
    scoped("net", DockerRuntimeOptions::default(), |s| async move {
        let net = format!("{}-backend", s.prefix);
        let spec = NetworkSpec { name: net.clone(), ..Default::default() };
        s.rt.ensure_network(&spec).await.unwrap();
        s.rt.ensure_network(&spec).await.unwrap(); // idempotent
        // Concurrent ensures from two runtimes (two agents on one engine) make one network.
        let race = NetworkSpec { name: format!("{}-race", s.prefix), ..Default::default() };
        let rt2 = DockerRuntime::connect(DockerRuntimeOptions::default()).unwrap();
        let (a, b, c) = tokio::join!(s.rt.ensure_network(&race), rt2.ensure_network(&race), s.rt.ensure_network(&race));
        for r in [a, b, c] {
            r.unwrap();
        }
        let nets = s.rt.client().list_networks(None::<bollard::query_parameters::ListNetworksOptions>).await.unwrap();
        assert_eq!(nets.iter().filter(|n| n.name.as_deref() == Some(race.name.as_str())).count(), 1);
        // An overlay spec is a no-op (its containers' endpoints make it: tests/overlay.rs);
        // the ingress network needs the routing mesh.
        let ovl = NetworkSpec { name: format!("{}-ovl", s.prefix), driver: "overlay".into(), ..Default::default() };
        s.rt.ensure_network(&ovl).await.unwrap();
        assert!(s.rt.client().inspect_network(&ovl.name, None).await.is_err());
        let ing = NetworkSpec { name: format!("{}-ing", s.prefix), ingress: true, ..Default::default() };
        let e = s.rt.ensure_network(&ing).await.unwrap_err();
        assert!(matches!(e, RuntimeError::Unsupported { op: "ensure_network", .. }), "{e}");
        let attach =
            vec![NetworkAttachmentConfig { target: net.clone(), aliases: vec![format!("{}-alias", s.prefix)] }];
        let mut api = s.workload("api", 1);
        api.networks = attach.clone();
        let mut front = s.workload("front", 1);
        front.networks = attach;
        let api_id = s.run(&api).await;
        let front_id = s.run(&front).await;
        let front_addr = s.addr(&front_id).await;
        get_ok(s.addr(&api_id).await, "/health", Duration::from_secs(10)).await;
        // front reaches api by its service name, and by the extra alias.
        let path = format!("/fetch?host={}&port={}&path=/id", api.service_name, fixture::PORT);
        assert_eq!(get_ok(front_addr, &path, Duration::from_secs(10)).await, api.task_id.as_str());
        // Without a network the service name does not resolve: the alias is ours.
        let mut lonely = s.workload("lonely", 1);
        lonely.networks.clear();
        let lonely_id = s.run(&lonely).await;
        let lonely_addr = s.addr(&lonely_id).await;
        get_ok(lonely_addr, "/health", Duration::from_secs(10)).await;
        let r = fixture::http_get(lonely_addr, &path, Duration::from_secs(10)).await;
        assert!(matches!(&r, Ok((502, _))), "{r:?}");
        // A network in use cannot go; once the containers are gone it can, twice.
        assert!(s.rt.remove_network(&net).await.is_err());
        for id in [&api_id, &front_id, &lonely_id] {
            s.rt.remove(id).await.unwrap();
        }
        s.rt.remove_network(&net).await.unwrap();
        s.rt.remove_network(&net).await.unwrap();
        // prepare makes a missing network (a bridge), as it makes volumes
        let mut other = s.workload("other", 1);
        let other_net = format!("{}-made-by-prepare", s.prefix);
        other.networks = vec![NetworkAttachmentConfig { target: other_net.clone(), aliases: vec![] }];
        s.rt.prepare(&other).await.unwrap();
        let n = s.rt.client().inspect_network(&other_net, None).await.unwrap();
        assert_eq!(n.driver.as_deref(), Some("bridge"));
        assert_eq!(n.labels.unwrap_or_default().get(labels::MANAGED).map(String::as_str), Some("true"));
        s.rt.remove_network(&other_net).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_adopts_its_containers_by_label() {
    scoped("adopt", DockerRuntimeOptions::default(), |s| async move {
        let node = format!("{}-node", s.prefix);
        let mut ids = Vec::new();
        for slot in 1..=2 {
            let mut cfg = s.workload("keep", slot);
            cfg.node_id = node.clone().into();
            ids.push(s.run(&cfg).await);
        }
        // "Restart": a fresh runtime that knows nothing; the first one is not used again.
        let rt2 = DockerRuntime::connect(DockerRuntimeOptions::default()).unwrap();
        let mut sel = Labels::new();
        sel.insert(labels::NODE_ID.into(), node.clone());
        sel.insert(labels::MANAGED.into(), "true".into());
        let found = rt2.list(&sel).await.unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        let mut found_ids: Vec<_> = found.iter().map(|c| c.id.clone()).collect();
        found_ids.sort();
        ids.sort();
        assert_eq!(found_ids, ids);
        for c in &found {
            assert_eq!(c.state, ContainerState::Running);
            assert_eq!(c.labels[labels::SERVICE_NAME], format!("{}-keep", s.prefix));
            assert!(c.name.starts_with(&s.prefix));
        }
        // Adopt slot 1 (it still answers), remove slot 2.
        let keep = found.iter().find(|c| c.labels[labels::SLOT] == "1").unwrap();
        let st = rt2.inspect(&keep.id).await.unwrap();
        let addr = SocketAddr::new(st.addresses[0], fixture::PORT);
        assert_eq!(get_ok(addr, "/id", Duration::from_secs(10)).await, keep.labels[labels::TASK_ID]);
        let drop_it = found.iter().find(|c| c.labels[labels::SLOT] == "2").unwrap();
        rt2.remove(&drop_it.id).await.unwrap();
        assert_eq!(rt2.list(&sel).await.unwrap().len(), 1);
        // A selector that matches nothing lists nothing.
        sel.insert(labels::SLOT.into(), "99".into());
        assert!(rt2.list(&sel).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_limits_and_cleanup_leave_nothing_behind() {
    scoped("mounts", DockerRuntimeOptions::default(), |s| async move {
        let vol = format!("{}-data", s.prefix);
        let net = format!("{}-net", s.prefix);
        s.rt.ensure_volume(&VolumeSpec { name: vol.clone(), ..Default::default() }).await.unwrap();
        s.rt.ensure_volume(&VolumeSpec { name: vol.clone(), ..Default::default() }).await.unwrap();
        s.rt.ensure_network(&NetworkSpec { name: net.clone(), ..Default::default() }).await.unwrap();
        let bind_src = std::env::temp_dir().join(format!("{}-bind.txt", s.prefix));
        std::fs::write(&bind_src, "from the host").unwrap();
        let mut cfg = s.workload("store", 1);
        cfg.networks = vec![NetworkAttachmentConfig { target: net.clone(), aliases: vec![] }];
        cfg.spec.mounts = vec![
            Mount { kind: MountKind::Volume, source: vol.clone(), target: "/data".into(), ..Default::default() },
            Mount {
                kind: MountKind::Bind,
                source: bind_src.to_string_lossy().into_owned(),
                target: "/host.txt".into(),
                read_only: true,
                ..Default::default()
            },
            Mount {
                kind: MountKind::Tmpfs,
                target: "/scratch".into(),
                tmpfs_size_bytes: 1 << 20,
                ..Default::default()
            },
        ];
        cfg.resources.limits = Resources::new(250_000_000, 64 << 20);
        cfg.spec.workdir = Some("/tmp".into());
        let id = s.run(&cfg).await;
        let addr = s.addr(&id).await;
        assert_eq!(get_ok(addr, "/file?path=/host.txt", Duration::from_secs(10)).await, "from the host");
        let raw = s.rt.client().inspect_container(&id, None).await.unwrap();
        let hc = raw.host_config.unwrap();
        assert_eq!(hc.nano_cpus, Some(250_000_000));
        assert_eq!(hc.memory, Some(64 << 20));
        assert_eq!(raw.config.unwrap().working_dir.as_deref(), Some("/tmp"));
        let mounts = raw.mounts.unwrap();
        assert!(
            mounts.iter().any(|m| m.name.as_deref() == Some(vol.as_str()) && m.destination.as_deref() == Some("/data"))
        );
        assert!(mounts.iter().any(|m| m.destination.as_deref() == Some("/scratch")), "{mounts:?}");
        let stats = s.rt.stats(&id).await.unwrap();
        assert_eq!(stats.memory_limit_bytes, 64 << 20);

        s.rt.stop(&id, Duration::from_secs(5)).await.unwrap();
        s.rt.remove(&id).await.unwrap();
        s.rt.remove_network(&net).await.unwrap();
        s.rt.remove_volume(&vol).await.unwrap();
        s.rt.remove_volume(&vol).await.unwrap();
        let _ = std::fs::remove_file(&bind_src);
        assert_eq!(leftovers(&s.rt, &s.prefix).await, (0, 0, 0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_without_registry_is_a_clear_error() {
    scoped("noimage", DockerRuntimeOptions::default(), |s| async move {
        let mut cfg = s.workload("ghost", 1);
        cfg.spec.image = format!("{}-absent/image:1", s.prefix);
        match s.rt.prepare(&cfg).await {
            Err(RuntimeError::ImageNotFound { image, reason }) => {
                assert_eq!(image, cfg.spec.image);
                assert!(reason.contains("pulling it from docker.io failed"), "{reason}");
            }
            other => panic!("expected ImageNotFound, got {other:?}"),
        }
        match s.rt.create(&cfg).await {
            Err(RuntimeError::ImageNotFound { .. }) => {}
            other => panic!("expected ImageNotFound, got {other:?}"),
        }
        // a rejected create leaves nothing behind
        assert_eq!(leftovers(&s.rt, &s.prefix).await.0, 0);
        let rm = RemoveContainerOptionsBuilder::new().force(true).build();
        assert!(s.rt.client().remove_container(&cfg.name, Some(rm)).await.is_err());
    })
    .await;
}
