//! Pure translations between the project's types and the Engine API's:
//! [`ContainerConfig`] to a create body, an inspect answer to a
//! [`ContainerStatus`], a stats sample to [`ContainerStats`].
//!
//! No I/O here, so every rule (which label wins, how a mount or a port is
//! spelled for the Engine, how CPU percent is computed) is unit-tested.

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, ContainerStatsResponse,
    ContainerSummaryStateEnum, EndpointIpamConfig, EndpointSettings, HealthConfig, HostConfig, Ipam, IpamConfig,
    Mount as DockerMount, MountTmpfsOptions, MountType, NetworkCreateRequest, NetworkInspect, NetworkingConfig,
    PortBinding,
};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use swarm_core::model::{HealthProbe, Labels, MountKind, NetworkAttachmentConfig, PortConfig, Protocol, PublishMode};
use swarm_core::runtime::{
    ContainerConfig, ContainerState, ContainerStats, ContainerStatus, NetworkEndpoint, RuntimeError, labels,
};

/// The Engine's bridge driver option naming the Linux bridge of a network.
pub(crate) const OPT_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
/// The Engine's driver option setting the MTU of the network's interfaces.
pub(crate) const OPT_MTU: &str = "com.docker.network.driver.mtu";
/// Label on the Engine networks made for overlay endpoints: the network's VNI.
pub const NETWORK_VNI_LABEL: &str = "io.swarm-rs.network.vni";

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

/// The Engine network behind an overlay endpoint (see [`endpoint_network`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndpointNetwork {
    /// The network's name (the Engine network's name).
    pub name: String,
    /// The Linux bridge (`swbr<vni>`).
    pub bridge: String,
    /// The VNI (a label only: the Engine knows nothing of VXLAN).
    pub vni: u32,
    /// The subnet, as the Engine spells it (`10.0.1.0/24`).
    pub subnet: String,
    /// The gateway the Engine's IPAM reserves and puts on the bridge.
    pub gateway: Ipv4Addr,
    /// No route outside the network.
    pub internal: bool,
}

/// The Engine network an endpoint needs, checked: a valid bridge name, the
/// address inside the subnet and not its network, broadcast or gateway
/// address. The gateway is the endpoint's; an internal network has none in
/// the endpoint, yet the Engine's IPAM always reserves one and puts it on
/// the bridge, so it gets the subnet's first host: the address the
/// manager's allocator reserves for the gateway of every overlay network
/// (unless the spec names another gateway; see docs/overlay.md, gaps).
pub(crate) fn endpoint_network(ep: &NetworkEndpoint) -> Result<EndpointNetwork, RuntimeError> {
    let at = format!("overlay endpoint on network {:?}", ep.network);
    if ep.network.is_empty() {
        return Err(invalid("an overlay endpoint has an empty network name".into()));
    }
    if ep.bridge.is_empty()
        || ep.bridge.len() > 15
        || !ep.bridge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid(format!("{at}: bridge name {:?} must be 1-15 of [A-Za-z0-9_-]", ep.bridge)));
    }
    let net = ep.subnet.trunc();
    if ep.subnet.prefix_len() > 30 {
        return Err(invalid(format!("{at}: subnet {net} is too small for a gateway and a task (/30 at most)")));
    }
    let first_host = Ipv4Addr::from(u32::from(net.network()) + 1);
    let gateway = ep.gateway.unwrap_or(first_host);
    if !net.contains(&ep.address) || ep.address == net.network() || ep.address == net.broadcast() {
        return Err(invalid(format!("{at}: address {} is not a host address of {net}", ep.address)));
    }
    if !net.contains(&gateway) {
        return Err(invalid(format!("{at}: gateway {gateway} is not in {net}")));
    }
    if ep.address == gateway {
        return Err(invalid(format!("{at}: address {} is the network's gateway on this engine", ep.address)));
    }
    Ok(EndpointNetwork {
        name: ep.network.clone(),
        bridge: ep.bridge.clone(),
        vni: ep.vni,
        subnet: net.to_string(),
        gateway,
        internal: ep.internal,
    })
}

/// The create call of an endpoint's Engine network: driver bridge on the
/// endpoint's bridge, its subnet and gateway, `internal`, the project's
/// label and the VNI, and the MTU (0: the Engine's default).
pub(crate) fn endpoint_network_request(n: &EndpointNetwork, mtu: u32) -> NetworkCreateRequest {
    let mut options = HashMap::from([(OPT_BRIDGE_NAME.to_string(), n.bridge.clone())]);
    if mtu > 0 {
        options.insert(OPT_MTU.into(), mtu.to_string());
    }
    let labels = HashMap::from([
        (labels::MANAGED.to_string(), "true".to_string()),
        (NETWORK_VNI_LABEL.to_string(), n.vni.to_string()),
    ]);
    NetworkCreateRequest {
        name: n.name.clone(),
        driver: Some("bridge".into()),
        internal: Some(n.internal),
        attachable: Some(true),
        ipam: Some(Ipam {
            config: Some(vec![IpamConfig {
                subnet: Some(n.subnet.clone()),
                gateway: Some(n.gateway.to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        options: Some(options),
        labels: Some(labels),
        ..Default::default()
    }
}

/// How an existing Engine network differs from what the endpoint needs
/// (driver, bridge, subnet, gateway, internal); `None` when it fits.
pub(crate) fn endpoint_network_mismatch(n: &EndpointNetwork, found: &NetworkInspect) -> Option<String> {
    let mut diffs = Vec::new();
    let driver = found.driver.as_deref().unwrap_or_default();
    if driver != "bridge" {
        diffs.push(format!("driver {driver:?} (not \"bridge\")"));
    }
    let bridge = found.options.as_ref().and_then(|o| o.get(OPT_BRIDGE_NAME)).map(String::as_str).unwrap_or_default();
    if bridge != n.bridge {
        diffs.push(format!("bridge {bridge:?} (not {:?})", n.bridge));
    }
    let cfg = found.ipam.as_ref().and_then(|i| i.config.as_ref()).and_then(|c| c.first());
    let subnet = cfg.and_then(|c| c.subnet.as_deref()).unwrap_or_default();
    if subnet != n.subnet {
        diffs.push(format!("subnet {subnet:?} (not {:?})", n.subnet));
    }
    let gateway = cfg.and_then(|c| c.gateway.as_deref()).unwrap_or_default();
    if gateway != n.gateway.to_string() {
        diffs.push(format!("gateway {gateway:?} (not \"{}\")", n.gateway));
    }
    let internal = found.internal.unwrap_or(false);
    if internal != n.internal {
        diffs.push(format!("internal {internal} (not {})", n.internal));
    }
    (!diffs.is_empty()).then(|| diffs.join(", "))
}

/// `aa:bb:..` of a MAC.
fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Endpoint settings for an overlay endpoint: exactly its address and
/// MAC; the service name, then the endpoint's aliases.
fn overlay_endpoint(cfg: &ContainerConfig, ep: &NetworkEndpoint) -> EndpointSettings {
    let att = NetworkAttachmentConfig { target: ep.network.clone(), aliases: ep.aliases.clone() };
    EndpointSettings {
        ipam_config: Some(EndpointIpamConfig { ipv4_address: Some(ep.address.to_string()), ..Default::default() }),
        mac_address: Some(mac_string(&ep.mac)),
        ..endpoint(cfg, &att)
    }
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
    let mut host_config = HostConfig {
        mounts: (!mounts.is_empty()).then_some(mounts),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        nano_cpus: nz(to_i64(limits.nano_cpus, "cpu limit")?),
        memory: nz(to_i64(limits.memory_bytes, "memory limit")?),
        memory_reservation: nz(to_i64(cfg.resources.reservations.memory_bytes, "memory reservation")?),
        ..Default::default()
    };

    // On overlay networks: the node's DNS server of the first non-internal
    // one (`swarm_net::overlay_dns`, on the network's gateway). The Engine's
    // embedded resolver (127.0.0.11) answers the names it knows itself and
    // forwards the others there.
    if let Some(gw) = cfg.endpoints.iter().filter(|e| !e.internal).find_map(|e| e.gateway) {
        host_config.dns = Some(vec![gw.to_string()]);
    }

    // Overlay endpoints first (the first is the primary network), then the
    // node-local networks; API 1.41 takes one in the create call.
    let mut all: Vec<(String, EndpointSettings)> = Vec::new();
    for ep in &cfg.endpoints {
        endpoint_network(ep).map_err(|e| invalid(format!("container {:?}: {e}", cfg.name)))?;
        all.push((ep.network.clone(), overlay_endpoint(cfg, ep)));
    }
    for (i, att) in cfg.networks.iter().enumerate() {
        if att.target.is_empty() {
            return Err(invalid(format!("container {:?}: network attachment {i} has no target", cfg.name)));
        }
        all.push((att.target.clone(), endpoint(cfg, att)));
    }
    for (i, (name, _)) in all.iter().enumerate() {
        if all[..i].iter().any(|(n, _)| n == name) {
            return Err(invalid(format!("container {:?}: network {name:?} is attached twice", cfg.name)));
        }
    }
    let mut all = all.into_iter();
    let mut endpoints = HashMap::new();
    if let Some((name, ep)) = all.next() {
        host_config.network_mode = Some(name.clone());
        endpoints.insert(name, ep);
    }
    let extra_networks: Vec<(String, EndpointSettings)> = all.collect();

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

    fn overlay_ep(network: &str, vni: u32, subnet: &str, address: &str, internal: bool) -> NetworkEndpoint {
        let subnet: ipnet::Ipv4Net = subnet.parse().unwrap();
        let address: Ipv4Addr = address.parse().unwrap();
        NetworkEndpoint {
            network: network.into(),
            bridge: swarm_core::model::overlay_bridge_name(vni),
            vni,
            subnet,
            address,
            mac: swarm_core::model::overlay_mac(address),
            gateway: (!internal).then(|| Ipv4Addr::from(u32::from(subnet.network()) + 1)),
            internal,
            encrypted: false,
            aliases: vec!["web".into(), "www".into()],
        }
    }

    #[test]
    fn overlay_endpoints_come_first_with_their_address_and_mac() {
        let mut c = cfg();
        c.endpoints = vec![
            overlay_ep("ovl-a", 4100, "10.0.1.0/24", "10.0.1.5", false),
            overlay_ep("ovl-b", 4101, "10.0.2.0/24", "10.0.2.9", true),
        ];
        c.networks = vec![NetworkAttachmentConfig { target: "local".into(), aliases: vec![] }];
        let plan = create_body(&c, vec![], false).unwrap();
        let h = plan.body.host_config.as_ref().unwrap();
        assert_eq!(h.network_mode.as_deref(), Some("ovl-a"));
        let eps = plan.body.networking_config.as_ref().unwrap().endpoints_config.as_ref().unwrap();
        assert_eq!(eps.len(), 1);
        let a = &eps["ovl-a"];
        assert_eq!(a.ipam_config.as_ref().unwrap().ipv4_address.as_deref(), Some("10.0.1.5"));
        assert_eq!(a.mac_address.as_deref(), Some("02:42:0a:00:01:05"));
        // The service name once, then the endpoint's other aliases.
        assert_eq!(a.aliases.as_deref(), Some(&["web".to_string(), "www".to_string()][..]));
        let names: Vec<&str> = plan.extra_networks.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["ovl-b", "local"]);
        let b = &plan.extra_networks[0].1;
        assert_eq!(b.ipam_config.as_ref().unwrap().ipv4_address.as_deref(), Some("10.0.2.9"));
        assert_eq!(b.mac_address.as_deref(), Some("02:42:0a:00:02:09"));
        assert!(plan.extra_networks[1].1.ipam_config.is_none());
        // The first non-internal network's gateway is the DNS server.
        assert_eq!(h.dns.as_deref(), Some(&["10.0.1.1".to_string()][..]));
        c.endpoints.reverse();
        let plan = create_body(&c, vec![], false).unwrap();
        assert_eq!(plan.body.host_config.unwrap().dns.as_deref(), Some(&["10.0.1.1".to_string()][..]));
        c.endpoints.retain(|e| e.internal);
        let plan = create_body(&c, vec![], false).unwrap();
        assert_eq!(plan.body.host_config.unwrap().dns, None, "internal only: no server");
    }

    #[test]
    fn bad_overlay_endpoints_are_rejected() {
        let cases = [
            (overlay_ep("n", 4100, "10.0.1.0/24", "10.0.1.1", false), "gateway"),
            (overlay_ep("n", 4100, "10.0.1.0/24", "10.0.1.1", true), "gateway"),
            (overlay_ep("n", 4100, "10.0.1.0/24", "10.0.1.255", false), "not a host address"),
            (
                NetworkEndpoint {
                    bridge: "a-bridge-name-too-long".into(),
                    ..overlay_ep("n", 4100, "10.0.1.0/24", "10.0.1.2", false)
                },
                "bridge name",
            ),
            (overlay_ep("", 4100, "10.0.1.0/24", "10.0.1.2", false), "empty network name"),
        ];
        for (ep, want) in cases {
            let mut c = cfg();
            c.endpoints = vec![ep.clone()];
            let e = create_body(&c, vec![], false).unwrap_err().to_string();
            assert!(e.contains(want), "{ep:?}: {e}");
        }
        let mut c = cfg();
        c.endpoints = vec![overlay_ep("n", 4100, "10.0.1.0/24", "10.0.1.2", false)];
        c.networks = vec![NetworkAttachmentConfig { target: "n".into(), aliases: vec![] }];
        let e = create_body(&c, vec![], false).unwrap_err().to_string();
        assert!(e.contains("attached twice"), "{e}");
    }

    #[test]
    fn endpoint_networks_are_created_and_compared() {
        let ep = overlay_ep("ovl", 4100, "10.0.1.0/24", "10.0.1.5", true);
        let n = endpoint_network(&ep).unwrap();
        // Internal: the engine still needs a gateway; the subnet's first host.
        assert_eq!(n.gateway, Ipv4Addr::new(10, 0, 1, 1));
        let req = endpoint_network_request(&n, 1450);
        assert_eq!(req.name, "ovl");
        assert_eq!(req.driver.as_deref(), Some("bridge"));
        assert_eq!(req.internal, Some(true));
        let opts = req.options.clone().unwrap();
        assert_eq!(opts[OPT_BRIDGE_NAME], "swbr4100");
        assert_eq!(opts[OPT_MTU], "1450");
        assert_eq!(req.labels.as_ref().unwrap()[NETWORK_VNI_LABEL], "4100");
        let ipam = &req.ipam.as_ref().unwrap().config.as_ref().unwrap()[0];
        assert_eq!((ipam.subnet.as_deref(), ipam.gateway.as_deref()), (Some("10.0.1.0/24"), Some("10.0.1.1")));
        assert!(!endpoint_network_request(&n, 0).options.unwrap().contains_key(OPT_MTU));
        let same = NetworkInspect {
            driver: req.driver.clone(),
            options: req.options.clone(),
            ipam: req.ipam.clone(),
            internal: Some(true),
            ..Default::default()
        };
        assert_eq!(endpoint_network_mismatch(&n, &same), None);
        let other = endpoint_network(&overlay_ep("ovl", 4200, "10.0.9.0/24", "10.0.9.5", false)).unwrap();
        let d = endpoint_network_mismatch(&other, &same).unwrap();
        for want in ["bridge \"swbr4100\"", "subnet \"10.0.1.0/24\"", "gateway", "internal true"] {
            assert!(d.contains(want), "{want}: {d}");
        }
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
