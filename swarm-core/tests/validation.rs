//! Spec validation through the public API: one test per validation case of
//! issue 2 (point 3), each asserting the exact field path and that the
//! reason names the problem; a fully filled-in spec that validates; and the
//! serde shape of specs and durations.

use swarm_core::constraint::{Constraint, ConstraintError, ConstraintKey, ConstraintOp};
use swarm_core::model::*;
use swarm_core::state::{Transaction, TxError};
use swarm_core::store::{MemStore, Store, StoreError};
use swarm_core::time::SpecDuration;
use swarm_core::validate::{FieldError, ValidationError, validate_service_spec};

/// A minimal valid replicated service.
fn base() -> ServiceSpec {
    ServiceSpec::replicated("web", "nginx:1.27", 2)
}

/// Validates `spec`, expects exactly one problem and returns it.
fn only_error(spec: &ServiceSpec) -> FieldError {
    let err: ValidationError = validate_service_spec(spec).expect_err("the spec should be rejected");
    assert_eq!(err.errors.len(), 1, "expected exactly one problem, got {err}");
    assert_eq!(err.subject, format!("service {:?}", spec.name));
    err.errors[0].clone()
}

/// Asserts the single error is about `field` and its reason holds every
/// one of `words`; also that the Display of the whole error names both.
fn assert_one(spec: &ServiceSpec, field: &str, words: &[&str]) {
    let e = only_error(spec);
    assert_eq!(e.field, field, "wrong field for {spec:?}");
    for w in words {
        assert!(e.reason.contains(w), "reason {:?} of {field} should mention {w:?}", e.reason);
    }
    let shown = validate_service_spec(spec).unwrap_err().to_string();
    assert!(shown.contains(field), "{shown:?} should name {field}");
    assert!(shown.contains(&e.reason), "{shown:?} should hold the reason");
}

#[test]
fn the_base_spec_is_valid() {
    validate_service_spec(&base()).expect("base spec validates");
}

#[test]
fn replicas_on_a_global_service_is_rejected() {
    let mut spec = ServiceSpec::global("agent", "busybox");
    validate_service_spec(&spec).expect("global without replicas validates");
    spec.mode.replicas = Some(3);
    assert_one(&spec, "mode.replicas", &["replicas", "not allowed", "global service"]);
}

#[test]
fn replicas_on_the_job_modes_are_rejected() {
    let mut spec = base();
    spec.mode = ServiceMode::global_job();
    spec.mode.replicas = Some(1);
    assert_one(&spec, "mode.replicas", &["replicas", "global-job"]);

    spec.mode = ServiceMode::replicated_job(4, 2);
    validate_service_spec(&spec).expect("a replicated job validates");
    spec.mode.replicas = Some(1);
    assert_one(&spec, "mode.replicas", &["replicas", "replicated-job"]);
}

#[test]
fn job_fields_outside_a_replicated_job_are_rejected() {
    let mut spec = base();
    spec.mode.max_concurrent = Some(2);
    assert_one(&spec, "mode.max_concurrent", &["only for replicated-job", "replicated"]);
    let mut spec = base();
    spec.mode.total_completions = Some(2);
    assert_one(&spec, "mode.total_completions", &["only for replicated-job"]);
    let mut spec = base();
    spec.mode = ServiceMode::replicated_job(4, 0);
    assert_one(&spec, "mode.max_concurrent", &["at least 1"]);
}

fn port(target: u32, published: Option<u32>) -> PortConfig {
    PortConfig { target_port: target, published_port: published, ..Default::default() }
}

#[test]
fn published_port_zero_is_rejected() {
    let mut spec = base();
    spec.endpoint_spec.ports = vec![port(80, Some(8080)), port(443, Some(0))];
    assert_one(&spec, "endpoint_spec.ports[1].published_port", &["0 is not a port", "1-65535"]);
}

#[test]
fn published_port_above_65535_is_rejected() {
    for bad in [65536u32, 70000, u32::MAX] {
        let mut spec = base();
        spec.endpoint_spec.ports = vec![port(80, Some(bad))];
        assert_one(&spec, "endpoint_spec.ports[0].published_port", &[&bad.to_string(), "is not a port", "1-65535"]);
    }
    // The bounds themselves are ports.
    let mut spec = base();
    spec.endpoint_spec.ports = vec![port(80, Some(1)), port(81, Some(65535))];
    validate_service_spec(&spec).expect("1 and 65535 are ports");
}

#[test]
fn target_port_out_of_range_is_rejected() {
    let mut spec = base();
    spec.endpoint_spec.ports = vec![port(0, None)];
    assert_one(&spec, "endpoint_spec.ports[0].target_port", &["0 is not a port"]);
    spec.endpoint_spec.ports = vec![port(65536, None)];
    assert_one(&spec, "endpoint_spec.ports[0].target_port", &["65536 is not a port"]);
}

#[test]
fn the_same_published_port_twice_is_rejected() {
    let mut spec = base();
    spec.endpoint_spec.ports = vec![port(80, Some(8080)), port(81, Some(9090)), port(82, Some(8080))];
    assert_one(&spec, "endpoint_spec.ports[2].published_port", &["8080/tcp", "published twice"]);

    // The same number on another protocol is another port.
    let mut spec = base();
    let mut udp = port(53, Some(5353));
    udp.protocol = Protocol::Udp;
    spec.endpoint_spec.ports = vec![port(53, Some(5353)), udp.clone()];
    validate_service_spec(&spec).expect("5353/tcp and 5353/udp are distinct");

    // ... but twice on udp is not.
    spec.endpoint_spec.ports.push(udp);
    assert_one(&spec, "endpoint_spec.ports[2].published_port", &["5353/udp", "published twice"]);
}

fn with_constraint(c: &str) -> ServiceSpec {
    let mut spec = base();
    spec.task_template.placement.constraints = vec!["node.role==worker".into(), c.into()];
    spec
}

const CONSTRAINT_FIELD: &str = "task_template.placement.constraints[1]";

#[test]
fn a_constraint_with_a_bad_operator_is_rejected() {
    for c in ["node.labels.zone=eu", "node.labels.zone>=eu", "node.hostname<>a", "node.id", "node.role = manager"] {
        assert_one(&with_constraint(c), CONSTRAINT_FIELD, &["has no operator", "== or !="]);
        assert_eq!(c.parse::<Constraint>(), Err(ConstraintError::NoOperator(c.to_string())));
    }
}

#[test]
fn a_constraint_with_an_unknown_key_is_rejected() {
    for (c, key) in [
        ("node.colour==red", "node.colour"),
        ("node.labels==x", "node.labels"),
        ("node.labels.==x", "node.labels."),
        ("engine.labels.==x", "engine.labels."),
        ("node.platform==linux", "node.platform"),
        ("labels.zone==eu", "labels.zone"),
        ("==eu", ""),
    ] {
        assert_one(&with_constraint(c), CONSTRAINT_FIELD, &["unknown key", &format!("{key:?}")]);
        assert!(matches!(c.parse::<Constraint>(), Err(ConstraintError::UnknownKey(s, k)) if s == c && k == key));
    }
}

#[test]
fn a_node_ip_constraint_needs_an_address_or_cidr() {
    for (c, v) in
        [("node.ip==banana", "banana"), ("node.ip!=10.0.0.0/33", "10.0.0.0/33"), ("node.ip==300.1.1.1", "300.1.1.1")]
    {
        assert_one(&with_constraint(c), CONSTRAINT_FIELD, &["node.ip needs an IP address or a CIDR", v]);
    }
    for ok in ["node.ip==10.1.2.3", "node.ip!=10.0.0.0/8", "node.ip==fd00::1", "node.ip==fd00::/64"] {
        validate_service_spec(&with_constraint(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn a_node_role_constraint_must_name_a_role() {
    for (c, v) in [("node.role==boss", "boss"), ("node.role!=leader", "leader")] {
        assert_one(&with_constraint(c), CONSTRAINT_FIELD, &["node.role must be manager or worker", v]);
    }
    for ok in ["node.role==manager", "node.role!=worker", "node.role==MANAGER"] {
        validate_service_spec(&with_constraint(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn a_constraint_with_an_empty_or_operator_value_is_rejected() {
    assert_one(&with_constraint("node.id=="), CONSTRAINT_FIELD, &["empty value"]);
    assert_one(&with_constraint("node.hostname!=  "), CONSTRAINT_FIELD, &["empty value"]);
    assert_one(&with_constraint("node.id==a==b"), CONSTRAINT_FIELD, &["operator character"]);
    assert_one(&with_constraint("node.id==a!=b"), CONSTRAINT_FIELD, &["operator character"]);
}

#[test]
fn every_valid_key_parses_with_both_operators() {
    let cases: [(&str, &str, ConstraintKey); 8] = [
        ("node.id", "abc123", ConstraintKey::NodeId),
        ("node.hostname", "host-1", ConstraintKey::NodeHostname),
        ("node.ip", "10.0.0.0/8", ConstraintKey::NodeIp),
        ("node.role", "manager", ConstraintKey::NodeRole),
        ("node.platform.os", "linux", ConstraintKey::PlatformOs),
        ("node.platform.arch", "arm64", ConstraintKey::PlatformArch),
        ("node.labels.zone", "eu-west", ConstraintKey::NodeLabel("zone".into())),
        ("engine.labels.storage.kind", "ssd", ConstraintKey::EngineLabel("storage.kind".into())),
    ];
    for (key, value, want_key) in cases {
        for (op_s, op) in [("==", ConstraintOp::Eq), ("!=", ConstraintOp::Ne)] {
            let text = format!("{key}{op_s}{value}");
            let c: Constraint = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(c, Constraint { key: want_key.clone(), op, value: value.to_string() }, "{text}");
            assert_eq!(c.to_string(), text, "Display gives back the text");
            // Spaces around the operator are allowed.
            let spaced = format!("{key} {op_s} {value}");
            assert_eq!(spaced.parse::<Constraint>().as_ref(), Ok(&c), "{spaced}");
            validate_service_spec(&with_constraint(&text)).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }
}

#[test]
fn memory_reservation_above_the_limit_is_rejected() {
    let mut spec = base();
    spec.task_template.resources.limits.memory_bytes = 256 << 20;
    spec.task_template.resources.reservations.memory_bytes = 512 << 20;
    assert_one(
        &spec,
        "task_template.resources.reservations.memory_bytes",
        &["above the limit", &(512u64 << 20).to_string(), &(256u64 << 20).to_string()],
    );
    // Equal is fine; no limit (0) means unlimited.
    spec.task_template.resources.reservations.memory_bytes = 256 << 20;
    validate_service_spec(&spec).expect("reservation == limit validates");
    spec.task_template.resources.limits.memory_bytes = 0;
    spec.task_template.resources.reservations.memory_bytes = 1 << 40;
    validate_service_spec(&spec).expect("no limit validates");
}

#[test]
fn cpu_reservation_above_the_limit_is_rejected() {
    let mut spec = base();
    spec.task_template.resources.limits.nano_cpus = 500_000_000;
    spec.task_template.resources.reservations.nano_cpus = 2_000_000_000;
    assert_one(&spec, "task_template.resources.reservations.nano_cpus", &["above the limit"]);
}

#[test]
fn a_name_that_is_not_a_dns_label_is_rejected() {
    let long = "a".repeat(64);
    for (name, words) in [
        ("", &["is empty", "DNS label"][..]),
        ("-web", &["starts or ends with '-'"][..]),
        ("web-", &["starts or ends with '-'"][..]),
        ("web_app", &["contains '_'", "DNS label"][..]),
        ("web.app", &["contains '.'"][..]),
        ("web app", &["contains ' '"][..]),
        ("wéb", &["contains 'é'"][..]),
        (long.as_str(), &["longer than 63"][..]),
    ] {
        let mut spec = base();
        spec.name = name.to_string();
        assert_one(&spec, "name", words);
    }
    for ok in ["a", "web-1", "0web", &"a".repeat(63)] {
        let mut spec = base();
        spec.name = ok.to_string();
        validate_service_spec(&spec).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn a_network_alias_that_is_not_a_dns_label_is_rejected() {
    let mut spec = base();
    spec.networks =
        vec![NetworkAttachmentConfig { target: "backend".into(), aliases: vec!["ok".into(), "no_t".into()] }];
    assert_one(&spec, "networks[0].aliases[1]", &["contains '_'"]);
}

#[test]
fn an_image_reference_that_does_not_parse_is_rejected() {
    for (image, words) in [
        ("", &["is empty"][..]),
        ("Nginx", &["\"Nginx\"", "lowercase"][..]),
        ("nginx:", &["tag after ':' is empty"][..]),
        ("nginx:-x", &["must start with a letter, digit or '_'"][..]),
        ("a//b", &["empty path component"][..]),
        ("a..b", &["misplaced separator"][..]),
        ("app@sha256:xyz", &["32 hex digits"][..]),
        ("app@md5", &["no algorithm"][..]),
        ("reg.example.com:99999/app", &["registry port", "99999"][..]),
        ("app:tag with space", &["may only hold"][..]),
    ] {
        let mut spec = base();
        spec.task_template.container.image = image.to_string();
        let mut all = vec!["is invalid"];
        all.extend_from_slice(words);
        assert_one(&spec, "task_template.container.image", &all);
    }
    for ok in ["nginx", "library/nginx:1.27-alpine", "localhost:5000/a/b_c__d-e.f:v1", "10.0.0.1:5000/app:2"] {
        let mut spec = base();
        spec.task_template.container.image = ok.to_string();
        validate_service_spec(&spec).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

/// Every duration field of a service spec with a setter.
#[allow(clippy::type_complexity)]
fn duration_fields() -> Vec<(&'static str, Box<dyn Fn(&mut ServiceSpec, SpecDuration)>)> {
    fn hc(s: &mut ServiceSpec) -> &mut HealthCheck {
        s.task_template.container.health_check.get_or_insert_with(HealthCheck::default)
    }
    vec![
        ("task_template.container.stop_grace_period", Box::new(|s, d| s.task_template.container.stop_grace_period = d)),
        ("task_template.container.health_check.interval", Box::new(|s, d| hc(s).interval = d)),
        ("task_template.container.health_check.timeout", Box::new(|s, d| hc(s).timeout = d)),
        ("task_template.container.health_check.start_period", Box::new(|s, d| hc(s).start_period = d)),
        ("task_template.restart_policy.delay", Box::new(|s, d| s.task_template.restart_policy.delay = d)),
        ("task_template.restart_policy.window", Box::new(|s, d| s.task_template.restart_policy.window = d)),
        ("update_config.delay", Box::new(|s, d| s.update_config.delay = d)),
        ("update_config.monitor", Box::new(|s, d| s.update_config.monitor = d)),
        ("rollback_config.delay", Box::new(|s, d| s.rollback_config.delay = d)),
        ("rollback_config.monitor", Box::new(|s, d| s.rollback_config.monitor = d)),
    ]
}

#[test]
fn a_negative_duration_is_rejected_in_every_duration_field() {
    for (field, set) in duration_fields() {
        for d in [SpecDuration::from_nanos(-1), SpecDuration::from_secs(-5), SpecDuration(i64::MIN)] {
            let mut spec = base();
            set(&mut spec, d);
            assert_one(&spec, field, &["is negative", &d.to_string()]);
        }
        let mut spec = base();
        set(&mut spec, SpecDuration::ZERO);
        validate_service_spec(&spec).unwrap_or_else(|e| panic!("{field} = 0: {e}"));
        set(&mut spec, SpecDuration::from_secs(3600));
        validate_service_spec(&spec).unwrap_or_else(|e| panic!("{field} = 1h: {e}"));
    }
}

#[test]
fn a_negative_duration_from_json_is_rejected_by_field() {
    let spec: ServiceSpec = serde_json::from_str(
        r#"{"name":"web","task_template":{"container":{"image":"nginx","stop_grace_period":"-2s"}}}"#,
    )
    .expect("a negative duration deserializes so that validation can name it");
    assert_eq!(spec.task_template.container.stop_grace_period, SpecDuration::from_secs(-2));
    assert_one(&spec, "task_template.container.stop_grace_period", &["-2s is negative"]);
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let mut spec = ServiceSpec::global("bad_name", "Bad:");
    spec.mode.replicas = Some(2);
    spec.endpoint_spec.ports = vec![port(80, Some(0)), port(81, Some(8080)), port(82, Some(8080))];
    spec.task_template.placement.constraints = vec!["node.colour==red".into()];
    spec.task_template.resources.limits.memory_bytes = 1;
    spec.task_template.resources.reservations.memory_bytes = 2;
    spec.update_config.monitor = SpecDuration::from_secs(-1);
    let err = validate_service_spec(&spec).unwrap_err();
    let fields: Vec<&str> = err.errors.iter().map(|e| e.field.as_str()).collect();
    for f in [
        "name",
        "task_template.container.image",
        "task_template.resources.reservations.memory_bytes",
        "task_template.placement.constraints[0]",
        "mode.replicas",
        "update_config.monitor",
        "endpoint_spec.ports[0].published_port",
        "endpoint_spec.ports[2].published_port",
    ] {
        assert!(err.has_field(f), "{f} missing from {fields:?}");
    }
    assert_eq!(err.errors.len(), 8, "{fields:?}");
}

/// A spec with every field set to something meaningful.
fn full_spec() -> ServiceSpec {
    let mut labels = Labels::new();
    labels.insert("team".into(), "payments".into());
    ServiceSpec {
        name: "payments-api".into(),
        labels: labels.clone(),
        task_template: TaskSpec {
            container: ContainerSpec {
                image: "registry.example.com:5000/team/api:2.1".into(),
                command: vec!["/bin/api".into()],
                args: vec!["--port".into(), "8080".into()],
                env: vec!["RUST_LOG=info".into(), "EMPTY=".into()],
                workdir: Some("/srv".into()),
                user: Some("1000:1000".into()),
                hostname: Some("api".into()),
                labels: labels.clone(),
                mounts: vec![
                    Mount {
                        kind: MountKind::Volume,
                        source: "data".into(),
                        target: "/data".into(),
                        ..Default::default()
                    },
                    Mount {
                        kind: MountKind::Bind,
                        source: "/etc/ssl".into(),
                        target: "/etc/ssl".into(),
                        read_only: true,
                        ..Default::default()
                    },
                    Mount {
                        kind: MountKind::Tmpfs,
                        target: "/tmp".into(),
                        tmpfs_size_bytes: 1 << 20,
                        ..Default::default()
                    },
                ],
                secrets: vec![SecretReference { secret_name: "db-password".into(), target: FileTarget::default() }],
                configs: vec![ConfigReference {
                    config_name: "api-config".into(),
                    target: FileTarget { name: "/etc/api.toml".into(), uid: "0".into(), gid: "0".into(), mode: 0o440 },
                }],
                health_check: Some(HealthCheck {
                    probe: HealthProbe::Http { port: 8080, path: "/health".into() },
                    interval: SpecDuration::from_secs(10),
                    timeout: SpecDuration::from_secs(2),
                    retries: 5,
                    start_period: SpecDuration::from_secs(30),
                }),
                stop_grace_period: SpecDuration::from_secs(20),
                stop_signal: Some("SIGINT".into()),
            },
            resources: ResourceRequirements {
                limits: Resources::new(2_000_000_000, 1 << 30),
                reservations: Resources::new(500_000_000, 256 << 20).with_generic("gpu", 1),
            },
            restart_policy: RestartPolicy {
                condition: RestartCondition::OnFailure,
                delay: SpecDuration::from_millis(1500),
                max_attempts: 3,
                window: SpecDuration::from_secs(120),
            },
            placement: Placement {
                constraints: vec![
                    "node.id!=abc".into(),
                    "node.hostname!=build-1".into(),
                    "node.ip==10.0.0.0/8".into(),
                    "node.role==worker".into(),
                    "node.platform.os==linux".into(),
                    "node.platform.arch==amd64".into(),
                    "node.labels.zone==eu".into(),
                    "engine.labels.disk!=hdd".into(),
                ],
                preferences: vec![PlacementPreference { spread: "node.labels.rack".into() }],
                max_replicas: 2,
                platforms: vec![Platform::new("linux", "amd64"), Platform::new("linux", "arm64")],
            },
            force_update: 1,
        },
        mode: ServiceMode::replicated(3),
        update_config: UpdateConfig {
            parallelism: 2,
            delay: SpecDuration::from_secs(10),
            failure_action: FailureAction::Rollback,
            monitor: SpecDuration::from_secs(30),
            max_failure_ratio: 0.25,
            order: UpdateOrder::StartFirst,
        },
        rollback_config: UpdateConfig {
            parallelism: 0,
            delay: SpecDuration::ZERO,
            failure_action: FailureAction::Continue,
            monitor: SpecDuration::from_secs(5),
            max_failure_ratio: 1.0,
            order: UpdateOrder::StopFirst,
        },
        endpoint_spec: EndpointSpec {
            mode: EndpointMode::Vip,
            ports: vec![
                PortConfig {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    target_port: 8080,
                    published_port: Some(80),
                    publish_mode: PublishMode::Ingress,
                },
                PortConfig {
                    name: "metrics".into(),
                    protocol: Protocol::Udp,
                    target_port: 9100,
                    published_port: Some(9100),
                    publish_mode: PublishMode::Host,
                },
                PortConfig { target_port: 8443, ..Default::default() },
            ],
        },
        networks: vec![NetworkAttachmentConfig { target: "backend".into(), aliases: vec!["api".into()] }],
    }
}

#[test]
fn a_spec_with_everything_filled_in_validates() {
    validate_service_spec(&full_spec()).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn a_store_refuses_an_invalid_spec_naming_the_field_and_keeps_a_valid_one() {
    let store = MemStore::new();
    let mut bad = Service { id: "s1".into(), spec: base(), ..Default::default() };
    bad.spec.endpoint_spec.ports = vec![port(80, Some(70000))];
    match store.commit(Transaction::new().create(bad)).await {
        Err(StoreError::Rejected(TxError::Invalid(v))) => {
            assert_eq!(v.errors.len(), 1);
            assert_eq!(v.errors[0].field, "endpoint_spec.ports[0].published_port");
        }
        other => panic!("expected an invalid-spec rejection, got {other:?}"),
    }
    assert_eq!(store.state().revision(), 0, "a rejected transaction changes nothing");

    // The full spec, once what it refers to exists, is stored as given.
    let secret = Secret {
        id: "sec1".into(),
        spec: SecretSpec { name: "db-password".into(), data: SecretBytes(b"pw".to_vec()), ..Default::default() },
        ..Default::default()
    };
    let config = Config {
        id: "cfg1".into(),
        spec: ConfigSpec { name: "api-config".into(), data: b"x=1".to_vec(), ..Default::default() },
        ..Default::default()
    };
    let network = Network {
        id: "net1".into(),
        spec: NetworkSpec { name: "backend".into(), ..Default::default() },
        subnet: None,
        ..Default::default()
    };
    let svc = Service { id: "s2".into(), spec: full_spec(), ..Default::default() };
    let change = store
        .commit(Transaction::new().create(secret).create(config).create(network).create(svc))
        .await
        .expect("the full spec commits");
    assert_eq!(change.revision, 1);
    let state = store.state();
    assert_eq!(state.service(&"s2".into()).unwrap().spec, full_spec());
}

#[test]
fn a_full_spec_round_trips_through_json() {
    let spec = full_spec();
    let json = serde_json::to_string_pretty(&spec).unwrap();
    let back: ServiceSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
    // Durations are written as human strings, enums in their documented case.
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["task_template"]["container"]["stop_grace_period"], "20s");
    assert_eq!(v["task_template"]["restart_policy"]["delay"], "1s500ms");
    assert_eq!(v["task_template"]["restart_policy"]["condition"], "on-failure");
    assert_eq!(v["mode"]["kind"], "replicated");
    assert_eq!(v["update_config"]["order"], "start-first");
    assert_eq!(v["endpoint_spec"]["ports"][1]["publish_mode"], "host");
    assert_eq!(v["endpoint_spec"]["ports"][1]["protocol"], "udp");

    // A whole Service object (with the store's bookkeeping) too.
    let svc = Service {
        id: "s1".into(),
        meta: Meta { version: Version(7), ..Default::default() },
        spec: spec.clone(),
        spec_version: 3,
        previous_spec: Some(Box::new(base())),
        ..Default::default()
    };
    let back: Service = serde_json::from_str(&serde_json::to_string(&svc).unwrap()).unwrap();
    assert_eq!(back, svc);
}

#[test]
fn omitted_fields_take_swarms_defaults() {
    let spec: ServiceSpec =
        serde_json::from_str(r#"{"name":"web","task_template":{"container":{"image":"nginx"}}}"#).unwrap();
    assert_eq!(spec.mode.kind, ModeKind::Replicated);
    assert_eq!(spec.mode.replicas(), 1);
    assert_eq!(spec.task_template.restart_policy, RestartPolicy::default());
    assert_eq!(spec.task_template.restart_policy.delay, SpecDuration::from_secs(5));
    assert_eq!(spec.update_config.parallelism, 1);
    assert_eq!(spec.update_config.monitor, SpecDuration::from_secs(5));
    assert_eq!(spec.task_template.container.effective_stop_grace(), std::time::Duration::from_secs(10));
    validate_service_spec(&spec).expect("defaults validate");
}

#[test]
fn durations_deserialize_from_text_and_from_integer_nanos() {
    #[derive(serde::Deserialize)]
    struct W {
        d: SpecDuration,
    }
    let parse = |json: &str| serde_json::from_str::<W>(json).map(|w| w.d);
    assert_eq!(parse(r#"{"d":"5s"}"#).unwrap(), SpecDuration::from_secs(5));
    assert_eq!(parse(r#"{"d":"1m30s"}"#).unwrap(), SpecDuration::from_secs(90));
    assert_eq!(parse(r#"{"d":"250ms"}"#).unwrap(), SpecDuration::from_millis(250));
    assert_eq!(parse(r#"{"d":"-2s"}"#).unwrap(), SpecDuration::from_secs(-2));
    assert_eq!(parse(r#"{"d":5000000000}"#).unwrap(), SpecDuration::from_secs(5));
    assert_eq!(parse(r#"{"d":-1}"#).unwrap(), SpecDuration::from_nanos(-1));
    assert_eq!(parse(r#"{"d":0}"#).unwrap(), SpecDuration::ZERO);
    assert_eq!(parse(r#"{"d":"7"}"#).unwrap(), SpecDuration::from_nanos(7), "a string of digits is nanoseconds");
    let err = parse(r#"{"d":"soon"}"#).unwrap_err().to_string();
    assert!(err.contains("invalid duration") && err.contains("soon"), "{err}");
    assert!(parse(r#"{"d":1.5}"#).is_err(), "a float is neither nanos nor text");

    // Serialization writes the text form, which reads back to the same value.
    for d in [SpecDuration::ZERO, SpecDuration::from_secs(5), SpecDuration::from_millis(-1500), SpecDuration(1)] {
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.starts_with('"'), "{json}");
        assert_eq!(serde_json::from_str::<SpecDuration>(&json).unwrap(), d, "{json}");
    }
    assert_eq!(serde_json::to_string(&SpecDuration::from_secs(5)).unwrap(), r#""5s""#);
    // The extremes too (the most negative one used to fail as "too large").
    for d in [SpecDuration(i64::MIN), SpecDuration(i64::MAX), SpecDuration(i64::MIN + 1)] {
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<SpecDuration>(&json).unwrap(), d, "{json}");
    }

    // Inside a spec, both forms work for the same field.
    let a: ContainerSpec = serde_json::from_str(r#"{"image":"x","stop_grace_period":"5s"}"#).unwrap();
    let b: ContainerSpec = serde_json::from_str(r#"{"image":"x","stop_grace_period":5000000000}"#).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.stop_grace_period, SpecDuration::from_secs(5));
}
