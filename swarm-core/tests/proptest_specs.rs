//! Property tests over arbitrary specs and strings: validation never
//! panics and agrees with the per-field rules (limits on counts included);
//! a store either commits a spec or rejects it without changing anything;
//! the parsers never panic and what they accept prints back to itself.
//!
//! Each property runs half its cases on its fixed seed, then half on a
//! fresh one from `harness::test_seed` (printed; `SWARM_TEST_SEED=0x...`
//! replays it), so every run also explores new cases at the same cost.

use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, RngAlgorithm, RngSeed, TestCaseError, TestRunner};
use std::cell::Cell;
use swarm_core::constraint::Constraint;
use swarm_core::harness::test_seed;
use swarm_core::image::ImageRef;
use swarm_core::model::limits::MAX_TASKS_PER_SERVICE;
use swarm_core::model::*;
use swarm_core::state::{Transaction, TxError};
use swarm_core::store::{MemStore, Store, StoreError};
use swarm_core::time::SpecDuration;
use swarm_core::validate::validate_service_spec;

/// The runs of one property: `cases` in all, half on the `fixed` seed and
/// half on a fresh seed named after `name`.
fn runners(name: &str, cases: u32, fixed: u64) -> [TestRunner; 2] {
    let half = cases.div_ceil(2);
    [runner(half, fixed), runner(half, test_seed(name))]
}

fn runner(cases: u32, seed: u64) -> TestRunner {
    TestRunner::new(PtConfig {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..PtConfig::default()
    })
}

// ----------------------------------------------------------------- strategies

/// Mostly `good` (19 in 20), sometimes `bad`: each field of a spec is
/// usually valid so that whole specs are valid often enough to be stored.
fn mostly<T: std::fmt::Debug + Clone + 'static>(
    good: impl Strategy<Value = T> + 'static,
    bad: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    prop_oneof![19 => good, 1 => bad].boxed()
}

fn name() -> impl Strategy<Value = String> {
    mostly(
        prop_oneof![9 => "[a-z][a-z0-9-]{0,20}[a-z0-9]", 1 => Just("taken".to_string())],
        prop_oneof!["[a-zA-Z0-9_.-]{0,70}", any::<String>()],
    )
}

fn image() -> impl Strategy<Value = String> {
    let valid = (
        prop_oneof![Just(""), Just("registry.example.com/"), Just("localhost:5000/"), Just("10.0.0.1:5000/")],
        "[a-z0-9]{1,8}([._-][a-z0-9]{1,4})?(/[a-z0-9]{1,8})?",
        prop_oneof![Just(String::new()), "[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,10}".prop_map(|t| format!(":{t}"))],
        prop_oneof![3 => Just(String::new()), 1 => "[0-9a-f]{64}".prop_map(|h| format!("@sha256:{h}"))],
    )
        .prop_map(|(r, p, t, d)| format!("{r}{p}{t}{d}"));
    mostly(valid, prop_oneof![2 => "[a-zA-Z0-9:/@._-]{0,40}", 1 => any::<String>()])
}

fn duration() -> impl Strategy<Value = SpecDuration> {
    mostly(
        prop_oneof![Just(0), 0i64..120_000_000_000, 0i64..i64::MAX, Just(i64::MAX)].prop_map(SpecDuration),
        prop_oneof![-10_000_000_000i64..0, any::<i64>(), Just(i64::MIN), Just(-1)].prop_map(SpecDuration),
    )
}

fn valid_constraint() -> impl Strategy<Value = String> {
    let op = prop_oneof![Just("=="), Just("!=")];
    let kv = prop_oneof![
        "[a-z0-9-]{1,10}".prop_map(|v| ("node.id".to_string(), v)),
        "[a-z0-9-]{1,10}".prop_map(|v| ("node.hostname".to_string(), v)),
        prop_oneof![Just("10.0.0.1"), Just("10.0.0.0/8"), Just("fd00::/64")].prop_map(|v| ("node.ip".into(), v.into())),
        prop_oneof![Just("manager"), Just("worker"), Just("Manager")].prop_map(|v| ("node.role".into(), v.into())),
        prop_oneof![Just("linux"), Just("windows")].prop_map(|v| ("node.platform.os".into(), v.into())),
        prop_oneof![Just("amd64"), Just("arm64"), Just("x86_64")].prop_map(|v| ("node.platform.arch".into(), v.into())),
        ("[a-z.]{1,8}", "[a-z0-9]{1,8}").prop_map(|(k, v)| (format!("node.labels.{k}"), v)),
        ("[a-z.]{1,8}", "[a-z0-9]{1,8}").prop_map(|(k, v)| (format!("engine.labels.{k}"), v)),
    ];
    (kv, op, prop_oneof![Just(""), Just(" ")]).prop_map(|((k, v), op, sp)| format!("{k}{sp}{op}{sp}{v}"))
}

fn constraint() -> impl Strategy<Value = String> {
    mostly(
        valid_constraint(),
        prop_oneof![2 => "(node|engine)\\.[a-z.]{0,12}(==|!=|=|<>)?[a-z0-9.=!/ ]{0,10}", 1 => any::<String>()],
    )
}

/// A task count: small, at the limit, or over it.
fn count() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => 0u64..5,
        1 => Just(MAX_TASKS_PER_SERVICE),
        1 => prop_oneof![Just(MAX_TASKS_PER_SERVICE + 1), Just(u64::MAX), MAX_TASKS_PER_SERVICE + 1..u64::MAX],
    ]
}

fn mode() -> impl Strategy<Value = ServiceMode> {
    let kind = prop_oneof![
        Just(ModeKind::Replicated),
        Just(ModeKind::Global),
        Just(ModeKind::ReplicatedJob),
        Just(ModeKind::GlobalJob)
    ];
    let any_mode = (kind, proptest::option::of(count()), proptest::option::of(count()), proptest::option::of(count()))
        .prop_map(|(kind, replicas, max_concurrent, total_completions)| ServiceMode {
            kind,
            replicas,
            max_concurrent,
            total_completions,
        });
    let shaped = prop_oneof![
        (0u64..10).prop_map(ServiceMode::replicated),
        Just(ServiceMode::global()),
        Just(ServiceMode::global_job()),
        (0u64..10, 1u64..4).prop_map(|(t, c)| ServiceMode::replicated_job(t, c)),
        Just(ServiceMode::default()),
    ];
    mostly(shaped, any_mode)
}

fn resources() -> impl Strategy<Value = ResourceRequirements> {
    let r = (prop_oneof![Just(0u64), 0u64..8_000_000_000], prop_oneof![Just(0u64), 0u64..(8u64 << 30)])
        .prop_map(|(c, m)| Resources::new(c, m));
    (r.clone(), r, any::<bool>()).prop_map(|(limits, mut reservations, clamp)| {
        if clamp && limits.memory_bytes > 0 {
            reservations.memory_bytes = reservations.memory_bytes.min(limits.memory_bytes);
        }
        if clamp && limits.nano_cpus > 0 {
            reservations.nano_cpus = reservations.nano_cpus.min(limits.nano_cpus);
        }
        ResourceRequirements { limits, reservations }
    })
}

fn port() -> impl Strategy<Value = PortConfig> {
    (
        mostly(1u32..65_536, 0u32..70_000),
        proptest::option::of(mostly(prop_oneof![1u32..65_536, 8000u32..8004], 0u32..70_000)),
        prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
        prop_oneof![Just(PublishMode::Ingress), Just(PublishMode::Host)],
    )
        .prop_map(|(target_port, published_port, protocol, publish_mode)| PortConfig {
            name: String::new(),
            protocol,
            target_port,
            published_port,
            publish_mode,
        })
}

fn health_check() -> impl Strategy<Value = Option<HealthCheck>> {
    let probe = mostly(
        prop_oneof![
            Just(HealthProbe::Command(vec!["true".into()])),
            (1u16..3).prop_map(|port| HealthProbe::Tcp { port }),
            (1u16..3, "/[a-z]{0,4}").prop_map(|(port, path)| HealthProbe::Http { port, path }),
        ],
        prop_oneof![
            Just(HealthProbe::Command(vec![])),
            (0u16..3).prop_map(|port| HealthProbe::Tcp { port }),
            (0u16..3, "/?[a-z]{0,4}").prop_map(|(port, path)| HealthProbe::Http { port, path }),
        ],
    );
    proptest::option::of((probe, duration(), duration(), duration(), 0u32..5).prop_map(
        |(probe, interval, timeout, start_period, retries)| HealthCheck {
            probe,
            interval,
            timeout,
            retries,
            start_period,
        },
    ))
}

fn update_config() -> impl Strategy<Value = UpdateConfig> {
    (
        mostly(0u64..4, count()),
        duration(),
        duration(),
        mostly(prop_oneof![Just(0.0f32), Just(0.5), Just(1.0)], prop_oneof![Just(1.5f32), Just(-0.1)]),
    )
        .prop_map(|(parallelism, delay, monitor, max_failure_ratio)| UpdateConfig {
            parallelism,
            delay,
            monitor,
            max_failure_ratio,
            ..Default::default()
        })
}

fn service_spec() -> impl Strategy<Value = ServiceSpec> {
    let container = (
        image(),
        health_check(),
        duration(),
        proptest::collection::vec(prop_oneof![8 => Just("db-pass"), 1 => Just("missing"), 1 => Just("bad name")], 0..2),
        proptest::collection::vec(prop_oneof![9 => Just("app.toml"), 1 => Just("nope")], 0..2),
        proptest::collection::vec(mostly("[A-Z][A-Z_]{0,4}=[a-z]{0,3}", "[A-Z_ ]{0,4}=[a-z]{0,3}"), 0..3),
    )
        .prop_map(|(image, health_check, stop_grace_period, secrets, configs, env)| ContainerSpec {
            image,
            health_check,
            stop_grace_period,
            secrets: secrets
                .into_iter()
                .map(|s| SecretReference { secret_name: s.into(), ..Default::default() })
                .collect(),
            configs: configs
                .into_iter()
                .map(|c| ConfigReference { config_name: c.into(), ..Default::default() })
                .collect(),
            env,
            ..Default::default()
        });
    let task = (container, resources(), duration(), duration(), proptest::collection::vec(constraint(), 0..4))
        .prop_map(|(container, resources, delay, window, constraints)| TaskSpec {
            container,
            resources,
            restart_policy: RestartPolicy { delay, window, ..Default::default() },
            placement: Placement { constraints, ..Default::default() },
            force_update: 0,
        });
    let endpoint = (
        prop_oneof![9 => Just(EndpointMode::Vip), 1 => Just(EndpointMode::Dnsrr)],
        proptest::collection::vec(port(), 0..4),
    )
        .prop_map(|(mode, ports)| EndpointSpec { mode, ports });
    let networks =
        proptest::collection::vec(prop_oneof![18 => Just("backend"), 1 => Just("nope"), 1 => Just("")], 0..2).prop_map(
            |v| {
                v.into_iter().map(|t| NetworkAttachmentConfig { target: t.into(), aliases: vec![] }).collect::<Vec<_>>()
            },
        );
    (name(), task, mode(), update_config(), update_config(), endpoint, networks).prop_map(
        |(name, task_template, mode, update_config, rollback_config, endpoint_spec, networks)| ServiceSpec {
            name,
            labels: Labels::new(),
            task_template,
            mode,
            update_config,
            rollback_config,
            endpoint_spec,
            networks,
        },
    )
}

// --------------------------------------------------------------- properties

/// Independent statement of the DNS-label rule.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks `validate_service_spec` against the rules of issue 2, point 3.
fn check_validation(spec: &ServiceSpec) -> Result<bool, TestCaseError> {
    let res = validate_service_spec(spec);
    let has = |f: &str| res.as_ref().err().is_some_and(|e| e.has_field(f));
    if let Err(e) = &res {
        prop_assert!(!e.errors.is_empty());
        let shown = e.to_string();
        for fe in &e.errors {
            prop_assert!(!fe.field.is_empty() && !fe.reason.is_empty(), "{fe:?}");
            prop_assert!(shown.contains(&fe.field));
        }
    }
    prop_assert_eq!(has("name"), !is_dns_label(&spec.name), "name {:?}", spec.name);
    let m = &spec.mode;
    let over = |n: Option<u64>| n.is_some_and(|n| n > MAX_TASKS_PER_SERVICE);
    prop_assert_eq!(
        has("mode.replicas"),
        m.replicas.is_some() && m.kind != ModeKind::Replicated || over(m.replicas),
        "mode {:?}",
        m
    );
    if m.kind == ModeKind::ReplicatedJob {
        prop_assert_eq!(has("mode.max_concurrent"), m.max_concurrent == Some(0) || over(m.max_concurrent), "{:?}", m);
        prop_assert_eq!(has("mode.total_completions"), over(m.total_completions), "{:?}", m);
    } else {
        prop_assert_eq!(has("mode.max_concurrent"), m.max_concurrent.is_some(), "{:?}", m);
        prop_assert_eq!(has("mode.total_completions"), m.total_completions.is_some(), "{:?}", m);
    }
    for (f, u) in [("update_config", &spec.update_config), ("rollback_config", &spec.rollback_config)] {
        let field = format!("{f}.parallelism");
        prop_assert_eq!(has(&field), u.parallelism > MAX_TASKS_PER_SERVICE, "{} = {}", field, u.parallelism);
    }
    let img = &spec.task_template.container.image;
    prop_assert_eq!(has("task_template.container.image"), ImageRef::parse(img).is_err(), "image {:?}", img);
    for (i, c) in spec.task_template.placement.constraints.iter().enumerate() {
        let f = format!("task_template.placement.constraints[{i}]");
        prop_assert_eq!(has(&f), c.parse::<Constraint>().is_err(), "constraint {:?}", c);
    }
    let r = &spec.task_template.resources;
    prop_assert_eq!(
        has("task_template.resources.reservations.memory_bytes"),
        r.limits.memory_bytes > 0 && r.reservations.memory_bytes > r.limits.memory_bytes
    );
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in spec.endpoint_spec.ports.iter().enumerate() {
        let f = format!("endpoint_spec.ports[{i}].published_port");
        let expect = match p.published_port {
            None => false,
            Some(pp) if pp == 0 || pp > 65535 => true,
            Some(pp) => !seen.insert((p.protocol, pp)),
        };
        prop_assert_eq!(has(&f), expect, "port {} {:?}", i, p);
    }
    let c = &spec.task_template.container;
    let mut durations = vec![
        ("task_template.container.stop_grace_period", c.stop_grace_period),
        ("task_template.restart_policy.delay", spec.task_template.restart_policy.delay),
        ("task_template.restart_policy.window", spec.task_template.restart_policy.window),
        ("update_config.delay", spec.update_config.delay),
        ("update_config.monitor", spec.update_config.monitor),
        ("rollback_config.delay", spec.rollback_config.delay),
        ("rollback_config.monitor", spec.rollback_config.monitor),
    ];
    if let Some(h) = &c.health_check {
        durations.push(("task_template.container.health_check.interval", h.interval));
        durations.push(("task_template.container.health_check.timeout", h.timeout));
        durations.push(("task_template.container.health_check.start_period", h.start_period));
    }
    for (f, d) in durations {
        prop_assert_eq!(has(f), d.is_negative(), "{} = {}", f, d);
    }
    Ok(res.is_ok())
}

#[test]
fn arbitrary_specs_validate_or_name_their_problems_never_panic() {
    let (valid, invalid) = (Cell::new(0u32), Cell::new(0u32));
    for mut runner in
        runners("proptest_specs::arbitrary_specs_validate_or_name_their_problems_never_panic", 512, 0x5eed_0001)
    {
        runner
            .run(&service_spec(), |spec| {
                let counter = if check_validation(&spec)? { &valid } else { &invalid };
                counter.set(counter.get() + 1);
                Ok(())
            })
            .unwrap();
    }
    // The strategies reach both outcomes, so the property is not vacuous.
    let (valid, invalid) = (valid.get(), invalid.get());
    assert!(valid > 20 && invalid > 20, "valid {valid}, invalid {invalid}");
}

/// A store holding what the generated specs may refer to, and a service
/// named "taken".
async fn seeded_store() -> MemStore {
    let store = MemStore::new();
    let tx = Transaction::new()
        .create(Secret {
            id: "sec1".into(),
            spec: SecretSpec { name: "db-pass".into(), data: SecretBytes(b"pw".to_vec()), ..Default::default() },
            ..Default::default()
        })
        .create(Config {
            id: "cfg1".into(),
            spec: ConfigSpec { name: "app.toml".into(), data: b"x".to_vec(), ..Default::default() },
            ..Default::default()
        })
        .create(Network {
            id: "net1".into(),
            spec: NetworkSpec { name: "backend".into(), ..Default::default() },
            ..Default::default()
        })
        .create(Service { id: "s0".into(), spec: ServiceSpec::replicated("taken", "nginx", 1), ..Default::default() });
    store.commit(tx).await.expect("seed commits");
    store
}

#[test]
fn committing_arbitrary_specs_succeeds_or_is_rejected_without_a_trace() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let outcomes = [Cell::new(0u32), Cell::new(0), Cell::new(0)]; // committed, invalid, other rejection
    let bump = |i: usize| outcomes[i].set(outcomes[i].get() + 1);
    for mut runner in
        runners("proptest_specs::committing_arbitrary_specs_succeeds_or_is_rejected_without_a_trace", 256, 0x5eed_0002)
    {
        runner
            .run(&service_spec(), |spec| {
                rt.block_on(async {
                    let store = seeded_store().await;
                    let before = store.state().to_image();
                    let valid = validate_service_spec(&spec);
                    let refs_ok = spec.task_template.container.secrets.iter().all(|s| s.secret_name == "db-pass")
                        && spec.task_template.container.configs.iter().all(|c| c.config_name == "app.toml")
                        && spec.networks.iter().all(|n| n.target == "backend");
                    let svc = Service { id: "new".into(), spec: spec.clone(), ..Default::default() };
                    match store.commit(Transaction::new().create(svc)).await {
                        Ok(change) => {
                            prop_assert!(valid.is_ok(), "an invalid spec was stored: {:?}", valid);
                            prop_assert!(refs_ok && spec.name != "taken");
                            prop_assert_eq!(change.revision, before.revision + 1);
                            let state = store.state();
                            prop_assert_eq!(state.revision(), before.revision + 1);
                            let stored = state.service(&"new".into()).expect("stored");
                            prop_assert_eq!(&stored.spec, &spec);
                            prop_assert_eq!(stored.meta.version, Version(change.revision));
                            prop_assert_eq!(
                                state.service_by_name(&spec.name).map(|s| s.id.to_string()),
                                Some("new".into())
                            );
                            bump(0);
                        }
                        Err(StoreError::Rejected(e)) => {
                            let after = store.state().to_image();
                            prop_assert_eq!(after.revision, before.revision, "the revision moved on a rejection");
                            prop_assert_eq!(&after, &before, "the objects changed on a rejection");
                            match (&valid, &e) {
                                (Err(v), TxError::Invalid(got)) => {
                                    prop_assert_eq!(v, got);
                                    bump(1);
                                }
                                (Err(v), other) => prop_assert!(false, "invalid spec ({v}) rejected for {other}"),
                                (Ok(()), TxError::NameInUse { name, .. }) => {
                                    prop_assert_eq!(name.as_str(), "taken");
                                    prop_assert_eq!(spec.name.as_str(), "taken");
                                    bump(2);
                                }
                                (Ok(()), TxError::MissingReference { .. }) => {
                                    prop_assert!(!refs_ok, "refused a spec whose references exist: {e}");
                                    bump(2);
                                }
                                (Ok(()), other) => prop_assert!(false, "valid spec rejected: {other}"),
                            }
                        }
                        Err(other) => prop_assert!(false, "not a rejection: {other}"),
                    }
                    Ok(())
                })
            })
            .unwrap();
    }
    let outcomes = outcomes.map(|c| c.get());
    assert!(outcomes.iter().all(|n| *n > 5), "committed / invalid / refused: {outcomes:?}");
}

#[test]
fn arbitrary_text_never_panics_the_constraint_parser() {
    let s = prop_oneof![any::<String>(), constraint(), "[a-z.]{0,16}(==|!=)[ -~]{0,12}"];
    for mut runner in runners("proptest_specs::arbitrary_text_never_panics_the_constraint_parser#1", 2000, 0x5eed_0003)
    {
        runner
            .run(&s, |s| {
                if let Ok(c) = s.parse::<Constraint>() {
                    let again = c.to_string().parse::<Constraint>();
                    prop_assert_eq!(again.as_ref(), Ok(&c), "{:?} prints as {:?}", s, c.to_string());
                }
                Ok(())
            })
            .unwrap();
    }
    for mut runner in runners("proptest_specs::arbitrary_text_never_panics_the_constraint_parser#2", 200, 0x5eed_0004) {
        runner
            .run(&valid_constraint(), |s| {
                prop_assert!(s.parse::<Constraint>().is_ok(), "{:?} should parse", s);
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn arbitrary_text_never_panics_the_image_parser() {
    let s = prop_oneof![any::<String>(), image(), "[ -~]{0,40}"];
    for mut runner in runners("proptest_specs::arbitrary_text_never_panics_the_image_parser", 2000, 0x5eed_0005) {
        runner
            .run(&s, |s| {
                if let Ok(r) = ImageRef::parse(&s) {
                    prop_assert_eq!(r.to_string(), s.clone(), "an accepted reference prints back as given");
                    prop_assert!(!r.repository.is_empty());
                }
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn arbitrary_text_never_panics_the_duration_parser() {
    let s = prop_oneof![any::<String>(), "-?[0-9]{1,20}(ns|us|ms|s|m|h|d)?([0-9]{1,3}(ms|s))?", "[ -~]{0,16}"];
    for mut runner in runners("proptest_specs::arbitrary_text_never_panics_the_duration_parser", 2000, 0x5eed_0006) {
        runner
            .run(&s, |s| {
                if let Ok(d) = SpecDuration::parse(&s) {
                    prop_assert_eq!(SpecDuration::parse(&d.to_string()), Ok(d), "{:?} prints as {}", s, d);
                }
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn every_duration_survives_json() {
    for mut runner in runners("proptest_specs::every_duration_survives_json", 2000, 0x5eed_0007) {
        runner
            .run(&duration(), |d| {
                let json = serde_json::to_string(&d).unwrap();
                let back: Result<SpecDuration, _> = serde_json::from_str(&json);
                prop_assert_eq!(back.as_ref().ok(), Some(&d), "{} -> {} -> {:?}", d.0, json, back);
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn arbitrary_specs_survive_json() {
    for mut runner in runners("proptest_specs::arbitrary_specs_survive_json", 256, 0x5eed_0008) {
        runner
            .run(&service_spec(), |spec| {
                let json = serde_json::to_string(&spec).unwrap();
                let back: ServiceSpec = serde_json::from_str(&json).unwrap();
                prop_assert_eq!(back, spec);
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn task_names_never_panic_on_arbitrary_ids() {
    let ids = prop_oneof![any::<String>(), "[a-zé]{0,20}", "[a-z0-9]{25}"];
    for mut runner in runners("proptest_specs::task_names_never_panic_on_arbitrary_ids", 1000, 0x5eed_0009) {
        runner
            .run(&(ids.clone(), proptest::option::of(1u64..10)), |(id, slot)| {
                let task = Task { id: id.clone().into(), service_name: "web".into(), slot, ..Default::default() };
                let name = task.name();
                prop_assert!(name.starts_with("web."));
                // At most the first 12 characters of the id, cut on a character.
                let short: String = id.chars().take(12).collect();
                prop_assert_eq!(name, format!("web.{}{}", slot.map(|s| format!("{s}.")).unwrap_or_default(), short));
                Ok(())
            })
            .unwrap();
    }
}
