//! SimRuntime through the public `Runtime` API: every fault, whole-node
//! failure, kills from outside, label selection, logs, and the secret and
//! config files a task sees. Time is tokio's
//! paused clock, so delays are measured exactly and cost nothing.

use std::net::IpAddr;
use std::time::Duration;
use swarm_core::model::{HealthProbe, Labels, NetworkSpec, SecretBytes, VolumeSpec};
use swarm_core::runtime::{
    ContainerConfig, ContainerState, ExitStatus, FileMaterial, ProbeResult, Runtime, RuntimeError,
};
use swarm_core::sim::{Fault, FaultRule, SimRuntime};
use tokio::time::Instant;

fn cfg(image: &str, service: &str, task: &str) -> ContainerConfig {
    let mut c = ContainerConfig {
        name: format!("{service}.1.{task}"),
        service_name: service.into(),
        task_id: task.into(),
        ..Default::default()
    };
    c.spec.image = image.into();
    c.labels.insert("io.swarm-rs.service.name".into(), service.into());
    c.labels.insert("io.swarm-rs.task.id".into(), task.into());
    c
}

/// prepare + create + start; returns the container id.
async fn run(sim: &SimRuntime, c: &ContainerConfig) -> String {
    sim.prepare(c).await.unwrap();
    let id = sim.create(c).await.unwrap();
    sim.start(&id).await.unwrap();
    id
}

fn probe() -> HealthProbe {
    HealthProbe::Command(vec!["true".into()])
}

#[tokio::test(start_paused = true)]
async fn image_missing_for_one_prepare_then_present() {
    let sim = SimRuntime::with_index("n1", 1);
    sim.inject(FaultRule::new(Fault::ImageMissing).image("app:1").times(1));
    let c = cfg("app:1", "web", "t1");
    // Another image is not hit, and does not use up the rule.
    sim.prepare(&cfg("other:1", "web", "t0")).await.unwrap();
    match sim.prepare(&c).await {
        Err(RuntimeError::ImageNotFound { image, reason }) => {
            assert_eq!(image, "app:1");
            assert!(!reason.is_empty());
        }
        other => panic!("expected ImageNotFound, got {other:?}"),
    }
    sim.prepare(&c).await.expect("the rule hit only once");
    let id = sim.create(&c).await.unwrap();
    sim.start(&id).await.unwrap();
    assert_eq!(sim.running(), vec![id]);

    // remove_image makes an image absent for good.
    sim.remove_image("gone:2");
    for _ in 0..3 {
        let err = sim.prepare(&cfg("gone:2", "web", "t2")).await.unwrap_err();
        assert!(err.to_string().contains("gone:2"), "{err}");
    }
}

#[tokio::test(start_paused = true)]
async fn exit_after_ends_with_the_code_after_exactly_the_delay() {
    let sim = SimRuntime::with_index("n1", 2);
    sim.inject(FaultRule::new(Fault::ExitAfter { after: Duration::from_secs(42), code: 3 }).service("batch"));
    let c = cfg("job:1", "batch", "t1");
    let t0 = Instant::now();
    let id = run(&sim, &c).await;
    tokio::time::sleep(Duration::from_secs(41)).await;
    assert_eq!(sim.inspect(&id).await.unwrap().state, ContainerState::Running, "still running at 41 s");
    let exit = sim.wait(&id).await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_secs(42));
    assert_eq!(exit, ExitStatus { code: 3, error: None });
    let st = sim.inspect(&id).await.unwrap();
    assert_eq!((st.state, st.exit_code), (ContainerState::Exited, Some(3)));
    assert!(sim.running().is_empty());

    // A container of another service is not affected.
    let other = run(&sim, &cfg("job:1", "web", "t2")).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(sim.inspect(&other).await.unwrap().state, ContainerState::Running);
}

#[tokio::test(start_paused = true)]
async fn exit_after_counts_from_each_start_not_from_the_first() {
    let sim = SimRuntime::with_index("n1", 3);
    sim.inject(FaultRule::new(Fault::ExitAfter { after: Duration::from_secs(10), code: 1 }));
    let id = run(&sim, &cfg("app", "web", "t1")).await;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    sim.stop(&id, Duration::from_secs(1)).await.unwrap();
    assert_eq!(sim.wait(&id).await.unwrap().code, 0);
    sim.start(&id).await.unwrap(); // restarted at t0 + 5 s
    tokio::time::sleep(Duration::from_secs(6)).await; // the first run's timer fired at t0 + 10 s
    assert_eq!(sim.inspect(&id).await.unwrap().state, ContainerState::Running, "a stale timer does nothing");
    let exit = sim.wait(&id).await.unwrap();
    assert_eq!(exit.code, 1);
    assert_eq!(t0.elapsed(), Duration::from_secs(15));
    assert_eq!(sim.starts(), 2);
}

#[tokio::test(start_paused = true)]
async fn start_fails_with_the_reason_and_the_container_exits() {
    let sim = SimRuntime::with_index("n1", 4);
    sim.inject(FaultRule::new(Fault::StartFails("no such file: /bin/app".into())).task("t1"));
    let c = cfg("app", "web", "t1");
    sim.prepare(&c).await.unwrap();
    let id = sim.create(&c).await.unwrap();
    match sim.start(&id).await {
        Err(RuntimeError::StartFailed { id: got, reason }) => {
            assert_eq!(got, id);
            assert_eq!(reason, "no such file: /bin/app");
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    let exit = sim.wait(&id).await.unwrap();
    assert_eq!(exit.code, 128);
    assert_eq!(exit.error.as_deref(), Some("no such file: /bin/app"));
    assert_eq!(sim.inspect(&id).await.unwrap().state, ContainerState::Exited);
    assert_eq!(sim.starts(), 0);
    // Only that task's container is hit.
    let ok = run(&sim, &cfg("app", "web", "t2")).await;
    assert_eq!(sim.running(), vec![ok]);
}

#[tokio::test(start_paused = true)]
async fn hang_on_stop_takes_exactly_the_grace_period_then_kills() {
    let sim = SimRuntime::with_index("n1", 5);
    sim.inject(FaultRule::new(Fault::HangOnStop).image("stubborn"));
    let hung = run(&sim, &cfg("stubborn", "web", "t1")).await;
    let polite = run(&sim, &cfg("polite", "web", "t2")).await;

    let t0 = Instant::now();
    sim.stop(&polite, Duration::from_secs(30)).await.unwrap();
    assert_eq!(t0.elapsed(), Duration::ZERO, "a container that obeys stops at once");
    assert_eq!(sim.wait(&polite).await.unwrap(), ExitStatus { code: 0, error: None });

    let t0 = Instant::now();
    let waiter = tokio::spawn({
        let sim = sim.clone();
        let id = hung.clone();
        async move { (sim.wait(&id).await, Instant::now()) }
    });
    sim.stop(&hung, Duration::from_secs(7)).await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_secs(7));
    let (exit, at) = waiter.await.unwrap();
    let exit = exit.unwrap();
    assert_eq!(exit.code, 137);
    assert!(exit.error.unwrap().contains("grace period"));
    assert_eq!(at - t0, Duration::from_secs(7), "the exit happens at the end of the grace period");

    // Stopping an exited container is a no-op.
    let t1 = Instant::now();
    sim.stop(&hung, Duration::from_secs(7)).await.unwrap();
    assert_eq!(t1.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn health_turns_bad_after_the_delay_from_start() {
    let sim = SimRuntime::with_index("n1", 6);
    sim.inject(FaultRule::new(Fault::UnhealthyAfter(Duration::from_secs(20))).service("web").times(1));
    let id = run(&sim, &cfg("app", "web", "t1")).await;
    let healthy_forever = run(&sim, &cfg("app", "web", "t2")).await; // the rule hit once only
    let timeout = Duration::from_secs(1);
    assert_eq!(sim.probe(&id, &probe(), timeout).await, ProbeResult::Healthy);
    tokio::time::sleep(Duration::from_millis(19_999)).await;
    assert_eq!(sim.probe(&id, &probe(), timeout).await, ProbeResult::Healthy, "healthy just before 20 s");
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(matches!(sim.probe(&id, &probe(), timeout).await, ProbeResult::Unhealthy(_)), "unhealthy at 20 s");
    assert_eq!(sim.probe(&healthy_forever, &probe(), timeout).await, ProbeResult::Healthy);
    // Every probe kind, and a stopped container is unhealthy.
    for p in [HealthProbe::Tcp { port: 80 }, HealthProbe::Http { port: 80, path: "/".into() }] {
        assert!(matches!(sim.probe(&id, &p, timeout).await, ProbeResult::Unhealthy(_)));
        assert_eq!(sim.probe(&healthy_forever, &p, timeout).await, ProbeResult::Healthy);
    }
    sim.stop(&healthy_forever, timeout).await.unwrap();
    assert!(matches!(sim.probe(&healthy_forever, &probe(), timeout).await, ProbeResult::Unhealthy(_)));
    assert!(matches!(sim.probe("nope", &probe(), timeout).await, ProbeResult::Unhealthy(_)));
}

#[tokio::test(start_paused = true)]
async fn slow_start_takes_the_given_time() {
    let sim = SimRuntime::with_index("n1", 7);
    sim.inject(FaultRule::new(Fault::SlowStart(Duration::from_secs(90))));
    let c = cfg("app", "web", "t1");
    sim.prepare(&c).await.unwrap();
    let id = sim.create(&c).await.unwrap();
    let t0 = Instant::now();
    sim.start(&id).await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_secs(90));
    assert_eq!(sim.running(), vec![id.clone()]);

    // A node failure during a slow start makes the start fail.
    let c2 = cfg("app", "web", "t2");
    let id2 = sim.create(&c2).await.unwrap();
    let starting = tokio::spawn({
        let sim = sim.clone();
        async move { sim.start(&id2).await }
    });
    tokio::time::sleep(Duration::from_secs(10)).await;
    sim.fail();
    assert!(matches!(starting.await.unwrap(), Err(RuntimeError::Unavailable(_))));
}

#[tokio::test(start_paused = true)]
async fn several_faults_combine_on_one_container() {
    let sim = SimRuntime::with_index("n1", 8);
    sim.inject(FaultRule::new(Fault::SlowStart(Duration::from_secs(2))).image("app"));
    sim.inject(FaultRule::new(Fault::ExitAfter { after: Duration::from_secs(5), code: 9 }).image("app"));
    let t0 = Instant::now();
    let id = run(&sim, &cfg("app", "web", "t1")).await;
    assert_eq!(t0.elapsed(), Duration::from_secs(2));
    assert_eq!(sim.wait(&id).await.unwrap().code, 9);
    assert_eq!(t0.elapsed(), Duration::from_secs(7));
    // clear_faults removes them all.
    sim.clear_faults();
    let t1 = Instant::now();
    let id = run(&sim, &cfg("app", "web", "t2")).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(t1.elapsed(), Duration::from_secs(60));
    assert_eq!(sim.inspect(&id).await.unwrap().state, ContainerState::Running);
}

#[tokio::test(start_paused = true)]
async fn a_failed_node_refuses_everything_until_it_recovers_empty() {
    let sim = SimRuntime::with_index("n1", 9);
    let c = cfg("app", "web", "t1");
    let id = run(&sim, &c).await;
    let waiter = tokio::spawn({
        let sim = sim.clone();
        let id = id.clone();
        async move { sim.wait(&id).await }
    });
    tokio::task::yield_now().await;
    assert!(!sim.is_failed());
    sim.fail();
    assert!(sim.is_failed());
    let exit = waiter.await.unwrap().unwrap();
    assert_eq!(exit.code, 137);
    assert_eq!(exit.error.as_deref(), Some("node failed"));

    let down = |r: Result<(), RuntimeError>, what: &str| {
        assert!(matches!(r, Err(RuntimeError::Unavailable(_))), "{what} on a failed node: {r:?}");
    };
    down(sim.prepare(&c).await, "prepare");
    down(sim.create(&c).await.map(|_| ()), "create");
    down(sim.start(&id).await, "start");
    down(sim.wait(&id).await.map(|_| ()), "wait");
    down(sim.stop(&id, Duration::from_secs(1)).await, "stop");
    down(sim.kill(&id).await, "kill");
    down(sim.remove(&id).await, "remove");
    down(sim.inspect(&id).await.map(|_| ()), "inspect");
    down(sim.list(&Labels::new()).await.map(|_| ()), "list");
    down(sim.logs(&id, None).await.map(|_| ()), "logs");
    down(sim.stats(&id).await.map(|_| ()), "stats");
    down(sim.exec(&id, &["true".into()], Duration::from_secs(1)).await.map(|_| ()), "exec");
    down(sim.ensure_network(&NetworkSpec { name: "net".into(), ..Default::default() }).await, "ensure_network");
    down(sim.ensure_volume(&VolumeSpec { name: "vol".into(), ..Default::default() }).await, "ensure_volume");
    assert!(matches!(sim.probe(&id, &probe(), Duration::from_secs(1)).await, ProbeResult::Unhealthy(_)));
    assert!(!sim.kill_from_outside(&id, 1));

    sim.recover();
    assert!(!sim.is_failed());
    assert_eq!(sim.container_count(), 0, "the engine comes back empty");
    assert!(matches!(sim.inspect(&id).await, Err(RuntimeError::NotFound(_))));
    let id2 = run(&sim, &c).await;
    assert_ne!(id2, id, "ids are not reused after a recovery");
    assert_eq!(sim.running(), vec![id2]);
}

#[tokio::test(start_paused = true)]
async fn kill_from_outside_exits_with_the_given_code() {
    let sim = SimRuntime::with_index("n1", 10);
    let id = run(&sim, &cfg("app", "web", "t1")).await;
    let other = run(&sim, &cfg("app", "web", "t2")).await;
    assert!(sim.kill_from_outside(&id, 143));
    let exit = sim.wait(&id).await.unwrap();
    assert_eq!(exit.code, 143);
    assert_eq!(exit.error.as_deref(), Some("killed from outside"));
    assert_eq!(sim.inspect(&id).await.unwrap().exit_code, Some(143));
    assert_eq!(sim.running(), vec![other.clone()]);
    assert!(!sim.kill_from_outside(&id, 1), "not running any more");
    assert!(!sim.kill_from_outside("nope", 1), "unknown container");
    // An ordinary kill is 137.
    sim.kill(&other).await.unwrap();
    assert_eq!(sim.wait(&other).await.unwrap().code, 137);
}

#[tokio::test(start_paused = true)]
async fn list_selects_by_every_label_of_the_selector() {
    let sim = SimRuntime::with_index("n1", 11);
    let a = run(&sim, &cfg("app", "web", "t1")).await;
    let b = run(&sim, &cfg("app", "web", "t2")).await;
    let c = run(&sim, &cfg("app", "api", "t3")).await;
    sim.stop(&b, Duration::from_secs(1)).await.unwrap();

    let sel =
        |pairs: &[(&str, &str)]| -> Labels { pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
    let ids = |v: Vec<swarm_core::runtime::ContainerSummary>| -> Vec<String> { v.into_iter().map(|s| s.id).collect() };

    assert_eq!(ids(sim.list(&Labels::new()).await.unwrap()), [a.clone(), b.clone(), c.clone()]);
    let web = sim.list(&sel(&[("io.swarm-rs.service.name", "web")])).await.unwrap();
    assert_eq!(ids(web.clone()), [a.clone(), b.clone()], "exited containers are listed too");
    assert_eq!(web[0].name, "web.1.t1");
    assert_eq!(web[0].state, ContainerState::Running);
    assert_eq!(web[1].state, ContainerState::Exited);
    assert_eq!(web[0].labels.get("io.swarm-rs.task.id").map(String::as_str), Some("t1"));
    assert_eq!(
        ids(sim.list(&sel(&[("io.swarm-rs.service.name", "web"), ("io.swarm-rs.task.id", "t2")])).await.unwrap()),
        vec![b.clone()]
    );
    assert!(
        sim.list(&sel(&[("io.swarm-rs.service.name", "web"), ("io.swarm-rs.task.id", "t3")])).await.unwrap().is_empty()
    );
    assert!(sim.list(&sel(&[("nope", "x")])).await.unwrap().is_empty());
    sim.remove(&a).await.unwrap();
    assert_eq!(ids(sim.list(&sel(&[("io.swarm-rs.service.name", "web")])).await.unwrap()), [b]);
    assert!(matches!(sim.remove(&a).await, Err(RuntimeError::NotFound(_))));
}

#[tokio::test(start_paused = true)]
async fn logs_tell_the_container_story_and_tail_works() {
    let sim = SimRuntime::with_index("n1", 12);
    let id = run(&sim, &cfg("app", "web", "t1")).await;
    sim.stop(&id, Duration::from_secs(1)).await.unwrap();
    let lines: Vec<String> = sim.logs(&id, None).await.unwrap().into_iter().map(|l| l.line).collect();
    assert_eq!(lines, ["created web.1.t1", "started", "received stop signal", "exited with code 0"]);
    let tail: Vec<String> = sim.logs(&id, Some(2)).await.unwrap().into_iter().map(|l| l.line).collect();
    assert_eq!(tail, ["received stop signal", "exited with code 0"]);
    assert_eq!(sim.logs(&id, Some(100)).await.unwrap().len(), 4);
    assert!(sim.logs(&id, Some(0)).await.unwrap().is_empty());
    assert!(matches!(sim.logs("nope", None).await, Err(RuntimeError::NotFound(_))));
}

#[tokio::test(start_paused = true)]
async fn inspect_stats_exec_and_addresses() {
    let sim = SimRuntime::with_index("n1", 13);
    let mut c = cfg("app", "web", "t1");
    c.resources.reservations.memory_bytes = 64 << 20;
    c.resources.limits.memory_bytes = 128 << 20;
    sim.prepare(&c).await.unwrap();
    let id = sim.create(&c).await.unwrap();
    assert_eq!(sim.inspect(&id).await.unwrap().state, ContainerState::Created);
    assert!(matches!(sim.exec(&id, &["ls".into()], Duration::from_secs(1)).await, Err(RuntimeError::Engine(_))));
    sim.start(&id).await.unwrap();
    let st = sim.inspect(&id).await.unwrap();
    assert_eq!(st.state, ContainerState::Running);
    assert_eq!(st.labels, c.labels);
    let id2 = run(&sim, &cfg("app", "web", "t2")).await;
    let a1 = st.addresses[0];
    let a2 = sim.inspect(&id2).await.unwrap().addresses[0];
    assert_ne!(a1, a2);
    for a in [a1, a2] {
        let IpAddr::V4(v4) = a else { panic!("IPv4 expected") };
        let o = v4.octets();
        assert_eq!((o[0], o[1] & 0x80), (10, 0x80), "{a} in 10.128.0.0/9");
        // Block 13 of /20s: 10.128.208.0/20.
        assert_eq!(u32::from(v4) >> 12, (0x0A80_0000u32 >> 12) + 13, "{a} in this node's /20");
    }
    let stats = sim.stats(&id).await.unwrap();
    assert_eq!((stats.memory_bytes, stats.memory_limit_bytes), (64 << 20, 128 << 20));
    let out = sim.exec(&id, &["echo".into(), "hi".into()], Duration::from_secs(1)).await.unwrap();
    assert_eq!(out.exit_code, 0);
    assert!(out.output.contains("echo hi"));
    assert_eq!(sim.name(), "sim");

    // prepare records the networks and named volumes; ensure/remove too.
    sim.ensure_network(&NetworkSpec { name: "backend".into(), ..Default::default() }).await.unwrap();
    sim.ensure_volume(&VolumeSpec { name: "data".into(), ..Default::default() }).await.unwrap();
    assert_eq!(sim.networks(), ["backend"]);
    assert_eq!(sim.volumes(), ["data"]);
    sim.remove_network("backend").await.unwrap();
    sim.remove_volume("data").await.unwrap();
    assert!(sim.networks().is_empty() && sim.volumes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_same_index_gives_the_same_addresses() {
    let a = SimRuntime::with_index("n1", 100);
    let b = SimRuntime::with_index("n1", 100);
    let ia = run(&a, &cfg("app", "web", "t1")).await;
    let ib = run(&b, &cfg("app", "web", "t1")).await;
    assert_eq!(ia, ib);
    assert_eq!(a.inspect(&ia).await.unwrap().addresses, b.inspect(&ib).await.unwrap().addresses);
}

fn file(name: &str, path: &str, data: &[u8]) -> FileMaterial {
    FileMaterial { name: name.into(), path: path.into(), data: SecretBytes(data.to_vec()), ..Default::default() }
}

#[tokio::test(start_paused = true)]
async fn a_container_holds_its_secret_and_config_files_as_given() {
    let sim = SimRuntime::with_index("n", 40);
    let mut c = cfg("app", "web", "t-files");
    c.secrets = vec![FileMaterial {
        uid: "1000".into(),
        gid: "1001".into(),
        mode: 0o400,
        ..file("pw", "/run/secrets/pw", b"hunter2")
    }];
    c.configs = vec![file("conf", "/etc/app.conf", b"a=1\n")];
    let id = run(&sim, &c).await;
    let files = sim.files(&id).unwrap();
    assert_eq!(files.len(), 2);
    let (s, k) = (&files[0], &files[1]);
    assert_eq!((s.path.as_str(), s.name.as_str(), s.data.0.as_slice()), ("/run/secrets/pw", "pw", &b"hunter2"[..]));
    assert_eq!((s.uid, s.gid, s.mode, s.fs_type), (1000, 1001, 0o400, "tmpfs"));
    assert_eq!((k.path.as_str(), k.data.0.as_slice()), ("/etc/app.conf", &b"a=1\n"[..]));
    assert_eq!((k.uid, k.gid, k.mode), (0, 0, 0o444), "unset owner and mode: root and 0444");
    sim.remove(&id).await.unwrap();
    assert!(matches!(sim.files(&id), Err(RuntimeError::NotFound(_))));
}

/// A change to a container config.
type Edit = Box<dyn Fn(&mut ContainerConfig)>;

#[tokio::test(start_paused = true)]
async fn bad_file_targets_and_owners_are_refused_at_create_and_use_up_no_fault() {
    let sim = SimRuntime::with_index("n", 41);
    sim.inject(FaultRule::new(Fault::LoseFileContent).times(1));
    let bad: Vec<(&str, Edit)> = vec![
        ("relative target", Box::new(|c| c.secrets = vec![file("a", "run/a", b"x")])),
        ("directory target", Box::new(|c| c.secrets = vec![file("a", "/run/a/", b"x")])),
        (
            "target used twice",
            Box::new(|c| {
                c.secrets = vec![file("a", "/x", b"1")];
                c.configs = vec![file("b", "/x", b"2")];
            }),
        ),
        (
            "uid not a number",
            Box::new(|c| c.secrets = vec![FileMaterial { uid: "root".into(), ..file("a", "/a", b"x") }]),
        ),
        (
            "gid not a number",
            Box::new(|c| c.configs = vec![FileMaterial { gid: "-1".into(), ..file("a", "/a", b"x") }]),
        ),
    ];
    for (what, set) in bad {
        let mut c = cfg("app", "web", "t-bad");
        set(&mut c);
        match sim.create(&c).await {
            Err(RuntimeError::InvalidConfig(msg)) => assert!(msg.contains('"'), "{what}: {msg}"),
            other => panic!("{what}: expected InvalidConfig, got {other:?}"),
        }
    }
    assert_eq!(sim.container_count(), 0);
    // The fault is still there for the next good container.
    let mut c = cfg("app", "web", "t-lossy");
    c.secrets = vec![file("a", "/run/secrets/a", b"x")];
    let id = run(&sim, &c).await;
    assert!(sim.files(&id).unwrap()[0].data.0.is_empty(), "LoseFileContent empties the file");
    let id2 = run(&sim, &c).await;
    assert_eq!(sim.files(&id2).unwrap()[0].data.0, b"x", "the fault hit one container only");
}
