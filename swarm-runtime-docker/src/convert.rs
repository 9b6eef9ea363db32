//! Pure translations between the project's types and the Engine API's:
//! [`ContainerConfig`] to a create body, an inspect answer to a
//! [`ContainerStatus`], a stats sample to [`ContainerStats`].
//!
//! No I/O here, so every rule (which label wins, how a mount or a port is
//! spelled for the Engine, how CPU percent is computed) is unit-tested.

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, ContainerStatsResponse,
    ContainerSummaryStateEnum, EndpointSettings, HealthConfig, HostConfig, Mount as DockerMount, MountTmpfsOptions,
    MountType, NetworkingConfig, PortBinding,
};
use std::collections::HashMap;
use std::net::IpAddr;
use swarm_core::model::{HealthProbe, Labels, MountKind, NetworkAttachmentConfig, PortConfig, Protocol, PublishMode};
use swarm_core::runtime::{ContainerConfig, ContainerState, ContainerStats, ContainerStatus, RuntimeError, labels};

/// What [`create_body`] produced: the body, and the networks to connect
/// after create (API 1.41 takes one endpoint in the create call).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CreatePlan {
    pub body: ContainerCreateBody,
    pub extra_networks: Vec<(String, EndpointSettings)>,
}

fn invalid(msg: String) -> RuntimeError {
    RuntimeError::InvalidConfig(msg)
}

/// The labels a container gets: the spec's, then the config's, then the
/// project's own keys from the config's fields (these always win, so that
/// [`Runtime::list`](swarm_core::runtime::Runtime::list) finds the container again).
pub(crate) fn container_labels(cfg: &ContainerConfig) -> Labels {
    let mut l = cfg.spec.labels.clone();
    l.extend(cfg.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    l.insert(labels::MANAGED.into(), "true".into());
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            l.insert(k.into(), v.into());
        }
    };
    put(labels::TASK_ID, cfg.task_id.as_str());
    put(labels::TASK_NAME, &cfg.name);
    put(labels::SERVICE_ID, cfg.service_id.as_str());
    put(labels::SERVICE_NAME, &cfg.service_name);
    put(labels::NODE_ID, cfg.node_id.as_str());
    if let Some(s) = cfg.slot {
        l.insert(labels::SLOT.into(), s.to_string());
    }
    l
}

/// Endpoint settings for one attachment: the service name is always an
/// alias, followed by the attachment's own aliases.
fn endpoint(cfg: &ContainerConfig, att: &NetworkAttachmentConfig) -> EndpointSettings {
    let mut aliases = Vec::new();
    if !cfg.service_name.is_empty() {
        aliases.push(cfg.service_name.clone());
    }
    for a in &att.aliases {
        if !aliases.contains(a) {
            aliases.push(a.clone());
        }
    }
    EndpointSettings { aliases: Some(aliases), ..Default::default() }
}

/// The Engine's port key, e.g. `8080/tcp`.
fn port_key(port: u32, proto: Protocol) -> String {
    format!("{port}/{}", proto.as_str())
}

fn nanos(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Translates a config into the create call. `extra_mounts` are the
/// secret and config files (binds from the runtime's tmpfs). With
/// `docker_healthcheck`, a command probe also becomes the image-level
/// HEALTHCHECK (TCP/HTTP probes are left to the agent).
pub(crate) fn create_body(
    cfg: &ContainerConfig,
    extra_mounts: Vec<DockerMount>,
    docker_healthcheck: bool,
) -> Result<CreatePlan, RuntimeError> {
    let spec = &cfg.spec;
    let name_ok = cfg.name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && cfg.name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !name_ok {
        return Err(invalid(format!(
            "container name {:?} is not valid for docker: [a-zA-Z0-9][a-zA-Z0-9_.-]*",
            cfg.name
        )));
    }
    if spec.image.is_empty() {
        return Err(invalid(format!("container {:?}: the image is empty", cfg.name)));
    }
    if let Some(w) = &spec.workdir
        && !w.starts_with('/')
    {
        return Err(invalid(format!("container {:?}: workdir {w:?} is not an absolute path", cfg.name)));
    }
    let mut mounts = Vec::with_capacity(spec.mounts.len() + extra_mounts.len());
    for (i, m) in spec.mounts.iter().enumerate() {
        let at = format!("container {:?}: mount {i} ({:?})", cfg.name, m.target);
        if !m.target.starts_with('/') {
            return Err(invalid(format!("{at}: the target must be an absolute path")));
        }
        let mut dm = DockerMount { target: Some(m.target.clone()), read_only: Some(m.read_only), ..Default::default() };
        match m.kind {
            MountKind::Volume => {
                dm.typ = Some(MountType::VOLUME);
                if !m.source.is_empty() {
                    dm.source = Some(m.source.clone());
                }
            }
            MountKind::Bind => {
                if !m.source.starts_with('/') {
                    return Err(invalid(format!("{at}: bind source {:?} must be an absolute host path", m.source)));
                }
                dm.typ = Some(MountType::BIND);
                dm.source = Some(m.source.clone());
            }
            MountKind::Tmpfs => {
                if !m.source.is_empty() {
                    return Err(invalid(format!("{at}: a tmpfs mount takes no source (got {:?})", m.source)));
                }
                dm.typ = Some(MountType::TMPFS);
                if m.tmpfs_size_bytes > 0 {
                    let size = i64::try_from(m.tmpfs_size_bytes)
                        .map_err(|_| invalid(format!("{at}: tmpfs size {} is too large", m.tmpfs_size_bytes)))?;
                    dm.tmpfs_options = Some(MountTmpfsOptions { size_bytes: Some(size), ..Default::default() });
                }
            }
        }
        mounts.push(dm);
    }
    mounts.extend(extra_mounts);

    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &cfg.host_ports {
        let at = format!("container {:?}: port {}", cfg.name, p.target_port);
        if p.publish_mode != PublishMode::Host {
            return Err(invalid(format!(
                "{at}: only host-mode ports can be published by the docker runtime (ingress needs the routing mesh)"
            )));
        }
        if !(1..=65535).contains(&p.target_port) {
            return Err(invalid(format!("{at}: the target port must be in 1-65535")));
        }
        let host_port = match p.published_port {
            Some(pp) if (1..=65535).contains(&pp) => pp.to_string(),
            Some(pp) => return Err(invalid(format!("{at}: published port {pp} is not in 1-65535"))),
            None => String::new(), // the engine picks a free port
        };
        let key = port_key(p.target_port, p.protocol);
        exposed.push(key.clone());
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding { host_ip: None, host_port: Some(host_port) });
    }

    let limits = &cfg.resources.limits;
    let to_i64 = |v: u64, what: &str| {
        i64::try_from(v).map_err(|_| invalid(format!("container {:?}: {what} {v} is too large", cfg.name)))
    };
    let nz = |v: i64| (v > 0).then_some(v);
    let host_config = HostConfig {
        mounts: (!mounts.is_empty()).then_some(mounts),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        nano_cpus: nz(to_i64(limits.nano_cpus, "cpu limit")?),
        memory: nz(to_i64(limits.memory_bytes, "memory limit")?),
        memory_reservation: nz(to_i64(cfg.resources.reservations.memory_bytes, "memory reservation")?),
        network_mode: cfg.networks.first().map(|n| n.target.clone()),
        ..Default::default()
    };

    let mut endpoints = HashMap::new();
    let mut extra_networks = Vec::new();
    for (i, att) in cfg.networks.iter().enumerate() {
        if att.target.is_empty() {
            return Err(invalid(format!("container {:?}: network attachment {i} has no target", cfg.name)));
        }
        if i == 0 {
            endpoints.insert(att.target.clone(), endpoint(cfg, att));
        } else {
            extra_networks.push((att.target.clone(), endpoint(cfg, att)));
        }
    }

    let healthcheck = match (&spec.health_check, docker_healthcheck) {
        (Some(hc), true) => match &hc.probe {
            HealthProbe::Command(cmd) if !cmd.is_empty() => {
                let mut test = vec!["CMD".to_string()];
                test.extend(cmd.iter().cloned());
                Some(HealthConfig {
                    test: Some(test),
                    interval: Some(nanos(hc.interval.to_std())),
                    timeout: Some(nanos(hc.timeout.to_std())),
                    retries: Some(i64::from(hc.retries)),
                    start_period: Some(nanos(hc.start_period.to_std())),
                    ..Default::default()
                })
            }
            _ => None,
        },
        _ => None,
    };

    let labels: HashMap<String, String> = container_labels(cfg).into_iter().collect();
    let body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
        cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: (!spec.env.is_empty()).then(|| spec.env.clone()),
        working_dir: spec.workdir.clone(),
        user: spec.user.clone(),
        hostname: spec.hostname.clone(),
        labels: Some(labels),
        stop_signal: spec.stop_signal.clone(),
        stop_timeout: Some(i64::try_from(spec.effective_stop_grace().as_secs()).unwrap_or(i64::MAX)),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        healthcheck,
        host_config: Some(host_config),
        networking_config: (!endpoints.is_empty()).then_some(NetworkingConfig { endpoints_config: Some(endpoints) }),
        ..Default::default()
    };
    Ok(CreatePlan { body, extra_networks })
}

/// The state of a container from its inspect status.
pub(crate) fn state_of(s: Option<ContainerStateStatusEnum>) -> ContainerState {
    match s {
        Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
        Some(ContainerStateStatusEnum::RUNNING)
        | Some(ContainerStateStatusEnum::PAUSED)
        | Some(ContainerStateStatusEnum::RESTARTING) => ContainerState::Running,
        Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => ContainerState::Exited,
        _ => ContainerState::Unknown,
    }
}

/// The state of a container from a list entry.
pub(crate) fn summary_state_of(s: Option<ContainerSummaryStateEnum>) -> ContainerState {
    match s {
        Some(ContainerSummaryStateEnum::CREATED) => ContainerState::Created,
        Some(ContainerSummaryStateEnum::RUNNING)
        | Some(ContainerSummaryStateEnum::PAUSED)
        | Some(ContainerSummaryStateEnum::RESTARTING) => ContainerState::Running,
        Some(ContainerSummaryStateEnum::EXITED) | Some(ContainerSummaryStateEnum::DEAD) => ContainerState::Exited,
        _ => ContainerState::Unknown,
    }
}

/// The observed status from an inspect answer. Addresses: the network of
/// the container's network mode first (its primary), then the others by name.
pub(crate) fn status_from_inspect(r: &ContainerInspectResponse) -> ContainerStatus {
    let st = r.state.as_ref();
    let state = state_of(st.and_then(|s| s.status));
    let exit_code = match state {
        ContainerState::Exited => st.and_then(|s| s.exit_code).map(|c| i32::try_from(c).unwrap_or(i32::MAX)),
        _ => None,
    };
    let mut error = st.and_then(|s| s.error.clone()).filter(|e| !e.is_empty());
    if st.and_then(|s| s.oom_killed) == Some(true) {
        error = Some(error.map_or_else(|| "OOM killed".to_string(), |e| format!("OOM killed: {e}")));
    }
    let primary = r.host_config.as_ref().and_then(|h| h.network_mode.clone()).unwrap_or_default();
    let ns = r.network_settings.as_ref();
    let mut nets: Vec<(&String, &EndpointSettings)> =
        ns.and_then(|n| n.networks.as_ref()).map(|m| m.iter().collect()).unwrap_or_default();
    nets.sort_by_key(|(name, _)| (**name != primary, (*name).clone()));
    let addresses: Vec<IpAddr> = nets
        .iter()
        .filter_map(|(_, e)| e.ip_address.as_deref().filter(|a| !a.is_empty()).and_then(|a| a.parse().ok()))
        .collect();
    let mut host_ports = Vec::new();
    if let Some(ports) = ns.and_then(|n| n.ports.as_ref()) {
        let mut keys: Vec<&String> = ports.keys().collect();
        keys.sort();
        for key in keys {
            let Some((port, proto)) = key.split_once('/') else { continue };
            let Ok(target_port) = port.parse::<u32>() else { continue };
            let protocol = if proto == "udp" { Protocol::Udp } else { Protocol::Tcp };
            for b in ports.get(key).and_then(|b| b.as_ref()).into_iter().flatten() {
                // The engine lists an IPv4 and an IPv6 binding for the same port.
                let published = b.host_port.as_deref().and_then(|p| p.parse::<u32>().ok());
                let pc = PortConfig {
                    name: String::new(),
                    protocol,
                    target_port,
                    published_port: published,
                    publish_mode: PublishMode::Host,
                };
                if published.is_some() && !host_ports.contains(&pc) {
                    host_ports.push(pc);
                }
            }
        }
    }
    ContainerStatus {
        id: r.id.clone().unwrap_or_default(),
        state,
        exit_code,
        error,
        addresses,
        labels: r.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default().into_iter().collect(),
        host_ports,
    }
}

/// CPU percent and memory from a stats sample that carries the previous
/// sample (`precpu_stats`), computed as the Docker CLI does: the
/// container's share of the host's CPU time between the two samples, times
/// the number of CPUs; memory without the page cache.
pub(crate) fn stats_from_sample(s: &ContainerStatsResponse) -> ContainerStats {
    let cpu = s.cpu_stats.as_ref();
    let pre = s.precpu_stats.as_ref();
    let total = |c: Option<&bollard::models::ContainerCpuStats>| {
        c.and_then(|c| c.cpu_usage.as_ref()).and_then(|u| u.total_usage).unwrap_or(0)
    };
    let system = |c: Option<&bollard::models::ContainerCpuStats>| c.and_then(|c| c.system_cpu_usage).unwrap_or(0);
    let cpu_delta = total(cpu).saturating_sub(total(pre)) as f64;
    let sys_delta = system(cpu).saturating_sub(system(pre)) as f64;
    let cpus = cpu
        .and_then(|c| c.online_cpus.filter(|n| *n > 0).map(f64::from))
        .or_else(|| {
            cpu.and_then(|c| c.cpu_usage.as_ref()).and_then(|u| u.percpu_usage.as_ref()).map(|v| v.len() as f64)
        })
        .unwrap_or(1.0);
    let cpu_percent = if sys_delta > 0.0 && cpu_delta > 0.0 { cpu_delta / sys_delta * cpus * 100.0 } else { 0.0 };
    let mem = s.memory_stats.as_ref();
    let usage = mem.and_then(|m| m.usage).unwrap_or(0);
    let cache = mem
        .and_then(|m| m.stats.as_ref())
        .and_then(|st| st.get("total_inactive_file").or_else(|| st.get("inactive_file")).copied())
        .filter(|c| *c < usage)
        .unwrap_or(0);
    let limit = mem.and_then(|m| m.limit).unwrap_or(0);
    ContainerStats {
        cpu_percent,
        memory_bytes: usage - cache,
        // The engine reports the host's memory as the "limit" of an unlimited container.
        memory_limit_bytes: limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats, ContainerState as DState};
    use swarm_core::model::{HealthCheck, Mount, Resources};
    use swarm_core::time::SpecDuration;

    fn cfg() -> ContainerConfig {
        let mut c = ContainerConfig {
            name: "web.1.abc".into(),
            task_id: "abc".into(),
            service_id: "svc1".into(),
            service_name: "web".into(),
            slot: Some(1),
            node_id: "node1".into(),
            ..Default::default()
        };
        c.spec.image = "img:1".into();
        c
    }

    #[test]
    fn project_labels_win_over_spec_labels() {
        let mut c = cfg();
        c.spec.labels.insert("team".into(), "a".into());
        c.spec.labels.insert(labels::TASK_ID.into(), "forged".into());
        let l = container_labels(&c);
        assert_eq!(l["team"], "a");
        assert_eq!(l[labels::TASK_ID], "abc");
        assert_eq!(l[labels::SLOT], "1");
        assert_eq!(l[labels::MANAGED], "true");
        assert_eq!(l[labels::SERVICE_NAME], "web");
        assert_eq!(l[labels::NODE_ID], "node1");
    }

    #[test]
    fn create_body_translates_the_spec() {
        let mut c = cfg();
        c.spec.command = vec!["/bin/app".into()];
        c.spec.args = vec!["--port".into(), "80".into()];
        c.spec.env = vec!["A=1".into()];
        c.spec.workdir = Some("/srv".into());
        c.spec.user = Some("1000:1000".into());
        c.spec.mounts = vec![
            Mount { kind: MountKind::Volume, source: "data".into(), target: "/data".into(), ..Default::default() },
            Mount {
                kind: MountKind::Bind,
                source: "/etc/hosts".into(),
                target: "/h".into(),
                read_only: true,
                ..Default::default()
            },
            Mount { kind: MountKind::Tmpfs, target: "/tmp".into(), tmpfs_size_bytes: 1 << 20, ..Default::default() },
        ];
        c.resources.limits = Resources::new(500_000_000, 64 << 20);
        c.networks = vec![
            NetworkAttachmentConfig { target: "front".into(), aliases: vec!["www".into()] },
            NetworkAttachmentConfig { target: "back".into(), aliases: vec![] },
        ];
        c.host_ports = vec![PortConfig {
            target_port: 80,
            published_port: Some(8080),
            publish_mode: PublishMode::Host,
            ..Default::default()
        }];
        let plan = create_body(&c, vec![], false).unwrap();
        let b = &plan.body;
        assert_eq!(b.entrypoint.as_deref(), Some(&["/bin/app".to_string()][..]));
        assert_eq!(b.cmd.as_ref().unwrap().len(), 2);
        assert_eq!(b.working_dir.as_deref(), Some("/srv"));
        assert_eq!(b.user.as_deref(), Some("1000:1000"));
        assert_eq!(b.stop_timeout, Some(10));
        let h = b.host_config.as_ref().unwrap();
        assert_eq!(h.nano_cpus, Some(500_000_000));
        assert_eq!(h.memory, Some(64 << 20));
        assert_eq!(h.network_mode.as_deref(), Some("front"));
        let m = h.mounts.as_ref().unwrap();
        assert_eq!(m[0].typ, Some(MountType::VOLUME));
        assert_eq!(m[1].read_only, Some(true));
        assert_eq!(m[2].tmpfs_options.as_ref().unwrap().size_bytes, Some(1 << 20));
        let pb = &h.port_bindings.as_ref().unwrap()["80/tcp"];
        assert_eq!(pb.as_ref().unwrap()[0].host_port.as_deref(), Some("8080"));
        assert_eq!(b.exposed_ports.as_deref(), Some(&["80/tcp".to_string()][..]));
        let ep = &b.networking_config.as_ref().unwrap().endpoints_config.as_ref().unwrap()["front"];
        assert_eq!(ep.aliases.as_deref(), Some(&["web".to_string(), "www".to_string()][..]));
        assert_eq!(plan.extra_networks.len(), 1);
        assert_eq!(plan.extra_networks[0].0, "back");
        assert!(b.healthcheck.is_none());
    }

    #[test]
    fn bad_configs_are_rejected_with_where() {
        let mut c = cfg();
        c.spec.mounts =
            vec![Mount { kind: MountKind::Bind, source: "rel".into(), target: "/x".into(), ..Default::default() }];
        let e = create_body(&c, vec![], false).unwrap_err().to_string();
        assert!(e.contains("mount 0") && e.contains("absolute host path"), "{e}");
        let mut c = cfg();
        c.host_ports = vec![PortConfig { target_port: 80, ..Default::default() }];
        let e = create_body(&c, vec![], false).unwrap_err().to_string();
        assert!(e.contains("host-mode"), "{e}");
        let mut c = cfg();
        c.spec.image.clear();
        assert!(matches!(create_body(&c, vec![], false), Err(RuntimeError::InvalidConfig(_))));
        for bad in ["", "-x", "a/b", "a b"] {
            let mut c = cfg();
            c.name = bad.into();
            let e = create_body(&c, vec![], false).unwrap_err().to_string();
            assert!(e.contains("not valid for docker"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn command_probe_becomes_a_docker_healthcheck_only_when_asked() {
        let mut c = cfg();
        c.spec.health_check = Some(HealthCheck {
            probe: HealthProbe::Command(vec!["/probe".into()]),
            interval: SpecDuration::from_secs(2),
            ..Default::default()
        });
        assert!(create_body(&c, vec![], false).unwrap().body.healthcheck.is_none());
        let hc = create_body(&c, vec![], true).unwrap().body.healthcheck.unwrap();
        assert_eq!(hc.test.unwrap(), vec!["CMD".to_string(), "/probe".to_string()]);
        assert_eq!(hc.interval, Some(2_000_000_000));
        c.spec.health_check.as_mut().unwrap().probe = HealthProbe::Tcp { port: 80 };
        assert!(create_body(&c, vec![], true).unwrap().body.healthcheck.is_none());
    }

    #[test]
    fn inspect_orders_addresses_primary_first_and_reports_exit() {
        let mut nets = HashMap::new();
        for (n, ip) in [("a-net", "10.0.0.2"), ("z-net", "10.1.0.2")] {
            nets.insert(n.to_string(), EndpointSettings { ip_address: Some(ip.into()), ..Default::default() });
        }
        let r = ContainerInspectResponse {
            id: Some("c1".into()),
            state: Some(DState {
                status: Some(ContainerStateStatusEnum::EXITED),
                exit_code: Some(137),
                oom_killed: Some(true),
                ..Default::default()
            }),
            host_config: Some(HostConfig { network_mode: Some("z-net".into()), ..Default::default() }),
            network_settings: Some(bollard::models::NetworkSettings { networks: Some(nets), ..Default::default() }),
            ..Default::default()
        };
        let s = status_from_inspect(&r);
        assert_eq!(s.state, ContainerState::Exited);
        assert_eq!(s.exit_code, Some(137));
        assert_eq!(s.error.as_deref(), Some("OOM killed"));
        assert_eq!(s.addresses, vec!["10.1.0.2".parse::<IpAddr>().unwrap(), "10.0.0.2".parse().unwrap()]);
    }

    #[test]
    fn cpu_percent_as_the_cli_computes_it() {
        let cpu = |total, system| ContainerCpuStats {
            cpu_usage: Some(ContainerCpuUsage { total_usage: Some(total), ..Default::default() }),
            system_cpu_usage: Some(system),
            online_cpus: Some(2),
            ..Default::default()
        };
        let s = ContainerStatsResponse {
            cpu_stats: Some(cpu(1_500, 20_000)),
            precpu_stats: Some(cpu(500, 10_000)),
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(1000),
                limit: Some(4000),
                stats: Some(HashMap::from([("total_inactive_file".to_string(), 100)])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let st = stats_from_sample(&s);
        assert!((st.cpu_percent - 20.0).abs() < 1e-9, "{}", st.cpu_percent);
        assert_eq!(st.memory_bytes, 900);
        assert_eq!(st.memory_limit_bytes, 4000);
    }
}
