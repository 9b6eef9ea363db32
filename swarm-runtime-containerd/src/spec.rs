//! The OCI runtime spec of a task's container, generated from its
//! [`ContainerConfig`] and the image's config.
//!
//! Pure functions (no I/O) so they are tested with plain tables: process
//! (args, env, cwd, user, rlimits, capabilities), mounts (the usual
//! `/proc`, `/dev`, `/sys` set, then binds, volumes, tmpfs and the secret and
//! config files), namespaces (with the task's network namespace by path) and
//! cgroup limits for CPU and memory.

use serde_json::{Value, json};
use swarm_core::model::MountKind;
use swarm_core::runtime::{ContainerConfig, NetworkEndpoint, RuntimeError};

/// The `type_url` containerd expects on a container's spec.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// The `type_url` of an exec'd process spec.
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// The CFS period used for CPU limits, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The open-files limit tasks get by default (Docker's), when the host
/// allows it.
pub const NOFILE_LIMIT: u64 = 1_048_576;

/// [`NOFILE_LIMIT`], or this process's hard limit when that is lower (runc
/// cannot raise a task's limit above what containerd has).
pub fn default_nofile() -> u64 {
    let hard = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| {
        l.lines()
            .find(|x| x.starts_with("Max open files"))
            .and_then(|x| x.split_whitespace().nth(4).and_then(|h| h.parse::<u64>().ok()))
    });
    hard.map(|h| h.min(NOFILE_LIMIT)).unwrap_or(NOFILE_LIMIT)
}

/// Capabilities a task's process gets: Docker's default set.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// What the image says about how to run it (the `config` of an OCI image
/// config).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageDefaults {
    /// `Env`.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir`.
    pub workdir: String,
    /// `User`.
    pub user: String,
}

/// A file mounted read-only into the container from the host (secrets and
/// configs, which live on a tmpfs on the host).
#[derive(Clone, Debug, PartialEq)]
pub struct FileMount {
    /// Host path.
    pub source: String,
    /// Path in the container.
    pub target: String,
}

/// Everything the spec needs besides the config and the image.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpecContext {
    /// The container id (hostname when the config sets none).
    pub id: String,
    /// Path of the task's network namespace (`None`: the host's).
    pub netns_path: Option<String>,
    /// cgroup path, e.g. `/swarm-rs-containerd/<namespace>/<id>`.
    pub cgroups_path: String,
    /// Host directories of the config's volume mounts, in the order of the
    /// config's `Volume` mounts.
    pub volume_sources: Vec<String>,
    /// Secret and config files.
    pub files: Vec<FileMount>,
    /// `/etc/hosts` to mount, if any.
    pub hosts_file: Option<String>,
    /// `/etc/resolv.conf` to mount, if any (see [`resolv_conf`]).
    pub resolv_file: Option<String>,
    /// RLIMIT_NOFILE (soft and hard) of the process; 0 = [`NOFILE_LIMIT`].
    pub nofile: u64,
    /// The image's account files, for users given by name.
    pub accounts: Accounts,
}

/// The `/etc/resolv.conf` of a task with overlay endpoints: the DNS
/// server of its first non-internal network, which the node runs on that
/// network's gateway (`swarm_net::overlay_dns`), with `ndots:0` as Docker
/// writes for its embedded server (single-label service names are asked as
/// they are) and `search .`: no search domain (without a search line,
/// resolvers take the domain part of the hostname, and a task's hostname
/// is its dotted task name, so busybox's nslookup would only ask
/// `<name>.<task name's tail>`). `None` when the task has no endpoint with
/// a gateway (no overlay network, or only internal ones): the image's
/// file stays.
pub fn resolv_conf(endpoints: &[NetworkEndpoint]) -> Option<String> {
    let gateway = endpoints.iter().filter(|e| !e.internal).find_map(|e| e.gateway)?;
    Some(format!("nameserver {gateway}\nsearch .\noptions ndots:0\n"))
}

/// The process arguments, Docker's way: `command` replaces the entrypoint,
/// `args` replaces the image's `Cmd`.
pub fn process_args(config: &ContainerConfig, image: &ImageDefaults) -> Result<Vec<String>, RuntimeError> {
    let spec = &config.spec;
    let args: Vec<String> = if !spec.command.is_empty() {
        spec.command.iter().chain(spec.args.iter()).cloned().collect()
    } else {
        let tail = if spec.args.is_empty() { &image.cmd } else { &spec.args };
        image.entrypoint.iter().chain(tail.iter()).cloned().collect()
    };
    if args.is_empty() {
        return Err(RuntimeError::InvalidConfig(format!(
            "task {}: no command: the spec sets neither command nor args and image {:?} has no entrypoint or cmd",
            config.name, spec.image
        )));
    }
    Ok(args)
}

/// The environment: the image's, overridden key by key by the spec's, with
/// a `PATH` and a `HOSTNAME`.
pub fn process_env(config: &ContainerConfig, image: &ImageDefaults, hostname: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut set = |kv: &str| {
        let key = kv.split_once('=').map(|(k, _)| k).unwrap_or(kv);
        match out.iter_mut().find(|e| e.split_once('=').map(|(k, _)| k).unwrap_or(e) == key) {
            Some(e) => *e = kv.to_string(),
            None => out.push(kv.to_string()),
        }
    };
    set("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    set(&format!("HOSTNAME={hostname}"));
    for e in image.env.iter().chain(config.spec.env.iter()) {
        set(e);
    }
    out
}

/// The image's account files (`/etc/passwd`, `/etc/group`), read from its
/// rootfs when the user is given by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Accounts {
    /// `/etc/passwd`, if the image has one.
    pub passwd: Option<String>,
    /// `/etc/group`, if the image has one.
    pub group: Option<String>,
}

/// The user string in force: the spec's, else the image's.
pub fn user_string<'a>(config: &'a ContainerConfig, image: &'a ImageDefaults) -> &'a str {
    config.spec.user.as_deref().filter(|u| !u.is_empty()).unwrap_or(&image.user)
}

/// True when the user names an account (not just numbers), so the image's
/// account files are needed.
pub fn user_needs_accounts(user: &str) -> bool {
    user.split(':').any(|p| !p.is_empty() && p.parse::<u32>().is_err())
}

/// Field `n` (0-based) of the line of a `name:x:...` file whose first field
/// is `name`.
fn lookup<'a>(file: Option<&'a str>, name: &str, n: usize) -> Option<&'a str> {
    file?.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.first() == Some(&name))?.get(n).copied()
}

/// The user and group ids, Docker's way: `user[:group]` from the spec, else
/// the image's; each part a number or a name looked up in the image's
/// `/etc/passwd` / `/etc/group`; without a group, the user's primary group
/// from `/etc/passwd` (0 when the uid has no entry). Empty means root.
pub fn process_user(
    config: &ContainerConfig,
    image: &ImageDefaults,
    accounts: &Accounts,
) -> Result<(u32, u32), RuntimeError> {
    let raw = user_string(config, image);
    if raw.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match raw.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (raw, None),
    };
    let missing = |what: &str, name: &str, file: &str| {
        RuntimeError::InvalidConfig(format!(
            "task {}: user {raw:?}: {what} {name:?} not found in the image's {file}",
            config.name
        ))
    };
    let passwd = accounts.passwd.as_deref();
    let (uid, primary) = match u.parse::<u32>() {
        Ok(uid) => {
            // The primary group of the first entry with this uid, if any.
            let gid = passwd.and_then(|p| {
                p.lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.get(2) == Some(&u))
                    .and_then(|f| f.get(3).and_then(|g| g.parse::<u32>().ok()))
            });
            (uid, gid.unwrap_or(0))
        }
        Err(_) if u == "root" && passwd.is_none() => (0, 0),
        Err(_) => {
            let uid = lookup(passwd, u, 2)
                .and_then(|x| x.parse::<u32>().ok())
                .ok_or_else(|| missing("user", u, "/etc/passwd"))?;
            let gid = lookup(passwd, u, 3).and_then(|x| x.parse::<u32>().ok()).unwrap_or(0);
            (uid, gid)
        }
    };
    let gid = match g {
        None | Some("") => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) if g == "root" && accounts.group.is_none() => 0,
            Err(_) => lookup(accounts.group.as_deref(), g, 2)
                .and_then(|x| x.parse::<u32>().ok())
                .ok_or_else(|| missing("group", g, "/etc/group"))?,
        },
    };
    Ok((uid, gid))
}

/// The hostname of the container.
pub fn hostname(config: &ContainerConfig, id: &str) -> String {
    match config.spec.hostname.as_deref() {
        Some(h) if !h.is_empty() => h.to_string(),
        _ => id.chars().take(63).collect(),
    }
}

/// The full OCI runtime spec as JSON.
pub fn build_spec(config: &ContainerConfig, image: &ImageDefaults, ctx: &SpecContext) -> Result<Value, RuntimeError> {
    let args = process_args(config, image)?;
    let host = hostname(config, &ctx.id);
    let env = process_env(config, image, &host);
    let (uid, gid) = process_user(config, image, &ctx.accounts)?;
    let cwd = match config.spec.workdir.as_deref() {
        Some(w) if !w.is_empty() => w.to_string(),
        _ if !image.workdir.is_empty() => image.workdir.clone(),
        _ => "/".to_string(),
    };
    if !cwd.starts_with('/') {
        return Err(RuntimeError::InvalidConfig(format!(
            "task {}: working directory {cwd:?} is not absolute",
            config.name
        )));
    }
    let caps: Vec<&str> = DEFAULT_CAPS.to_vec();
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    if let Some(h) = &ctx.hosts_file {
        mounts.push(json!({"destination": "/etc/hosts", "type": "bind", "source": h, "options": ["rbind", "ro"]}));
    }
    if let Some(r) = &ctx.resolv_file {
        mounts
            .push(json!({"destination": "/etc/resolv.conf", "type": "bind", "source": r, "options": ["rbind", "ro"]}));
    }
    let mut volumes = ctx.volume_sources.iter();
    for (i, m) in config.spec.mounts.iter().enumerate() {
        if !m.target.starts_with('/') {
            return Err(RuntimeError::InvalidConfig(format!(
                "task {}: mounts[{i}]: target {:?} is not an absolute path",
                config.name, m.target
            )));
        }
        let rw = if m.read_only { "ro" } else { "rw" };
        match m.kind {
            MountKind::Bind => {
                if !m.source.starts_with('/') {
                    return Err(RuntimeError::InvalidConfig(format!(
                        "task {}: mounts[{i}]: bind source {:?} is not an absolute host path",
                        config.name, m.source
                    )));
                }
                mounts.push(json!({"destination": m.target, "type": "bind", "source": m.source,
                                   "options": ["rbind", rw]}));
            }
            MountKind::Volume => {
                let Some(src) = volumes.next() else {
                    return Err(RuntimeError::InvalidConfig(format!(
                        "task {}: mounts[{i}]: no host directory for the volume",
                        config.name
                    )));
                };
                mounts.push(json!({"destination": m.target, "type": "bind", "source": src,
                                   "options": ["rbind", rw]}));
            }
            MountKind::Tmpfs => {
                let mut opts = vec!["nosuid".to_string(), "nodev".to_string(), "mode=1777".to_string()];
                if m.tmpfs_size_bytes > 0 {
                    opts.push(format!("size={}", m.tmpfs_size_bytes));
                }
                if m.read_only {
                    opts.push("ro".into());
                }
                mounts.push(json!({"destination": m.target, "type": "tmpfs", "source": "tmpfs", "options": opts}));
            }
        }
    }
    for f in &ctx.files {
        mounts.push(json!({"destination": f.target, "type": "bind", "source": f.source,
                           "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
    }
    let mut namespaces =
        vec![json!({"type": "pid"}), json!({"type": "ipc"}), json!({"type": "uts"}), json!({"type": "mount"})];
    if let Some(p) = &ctx.netns_path {
        namespaces.push(json!({"type": "network", "path": p}));
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    let limits = &config.resources.limits;
    if limits.memory_bytes > 0 {
        let limit = i64::try_from(limits.memory_bytes).map_err(|_| {
            RuntimeError::InvalidConfig(format!(
                "task {}: memory limit {} is too large",
                config.name, limits.memory_bytes
            ))
        })?;
        resources["memory"] = json!({"limit": limit});
    }
    if limits.nano_cpus > 0 {
        let quota = cpu_quota(limits.nano_cpus);
        resources["cpu"] = json!({"quota": quota, "period": CPU_PERIOD_US});
    }
    let nofile = if ctx.nofile == 0 { NOFILE_LIMIT } else { ctx.nofile };
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": false
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": host,
        "mounts": mounts,
        "linux": {
            "resources": resources,
            "cgroupsPath": ctx.cgroups_path,
            "namespaces": namespaces,
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                            "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    }))
}

/// CFS quota (µs per [`CPU_PERIOD_US`]) for a limit in nano-CPUs; at least
/// 1000 µs, the kernel's minimum.
pub fn cpu_quota(nano_cpus: u64) -> i64 {
    let q = (nano_cpus as u128 * CPU_PERIOD_US as u128 / 1_000_000_000) as i64;
    q.max(1000)
}

/// A signal number from a name (`SIGTERM`, `TERM`) or a number (`15`).
pub fn parse_signal(s: &str) -> Result<u32, RuntimeError> {
    if let Ok(n) = s.parse::<u32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let name = s.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let n = match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        "STOP" => 19,
        "WINCH" => 28,
        "PWR" => 30,
        _ => return Err(RuntimeError::InvalidConfig(format!("stop signal {s:?} is not a known signal"))),
    };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_core::model::{Mount, NetworkAttachment};

    fn cfg() -> ContainerConfig {
        let mut c = ContainerConfig { name: "web.1.abc".into(), ..Default::default() };
        c.spec.image = "busybox".into();
        c
    }

    fn img() -> ImageDefaults {
        ImageDefaults {
            env: vec!["PATH=/bin".into(), "A=image".into()],
            entrypoint: vec!["/bin/entry".into()],
            cmd: vec!["serve".into()],
            workdir: "/srv".into(),
            user: String::new(),
        }
    }

    #[test]
    fn args_follow_docker_rules() {
        let mut c = cfg();
        assert_eq!(process_args(&c, &img()).unwrap(), vec!["/bin/entry", "serve"]);
        c.spec.args = vec!["other".into()];
        assert_eq!(process_args(&c, &img()).unwrap(), vec!["/bin/entry", "other"]);
        c.spec.command = vec!["sh".into(), "-c".into()];
        assert_eq!(process_args(&c, &img()).unwrap(), vec!["sh", "-c", "other"]);
        let c = cfg();
        let err = process_args(&c, &ImageDefaults::default()).unwrap_err();
        assert!(err.to_string().contains("no command"), "{err}");
    }

    #[test]
    fn env_overrides_by_key() {
        let mut c = cfg();
        c.spec.env = vec!["A=spec".into(), "B=1".into()];
        let env = process_env(&c, &img(), "h");
        assert_eq!(env, vec!["PATH=/bin", "HOSTNAME=h", "A=spec", "B=1"]);
    }

    #[test]
    fn users_resolve_docker_style() {
        let mut c = cfg();
        let none = Accounts::default();
        assert_eq!(process_user(&c, &img(), &none).unwrap(), (0, 0));
        c.spec.user = Some("1000".into());
        assert_eq!(process_user(&c, &img(), &none).unwrap(), (1000, 0));
        c.spec.user = Some("1000:50".into());
        assert_eq!(process_user(&c, &img(), &none).unwrap(), (1000, 50));
        c.spec.user = Some("root".into());
        assert_eq!(process_user(&c, &img(), &none).unwrap(), (0, 0));
        c.spec.user = Some("www-data".into());
        let err = process_user(&c, &img(), &none).unwrap_err();
        assert!(err.to_string().contains("www-data") && err.to_string().contains("/etc/passwd"), "{err}");
        let acc = Accounts {
            passwd: Some(
                "root:x:0:0::/root:/bin/sh\nwww-data:x:33:34::/var/www:/bin/false\napp:x:1000:1000::/:/bin/sh\n".into(),
            ),
            group: Some("root:x:0:\nstaff:x:50:\n".into()),
        };
        c.spec.user = Some("www-data".into());
        assert_eq!(process_user(&c, &img(), &acc).unwrap(), (33, 34));
        c.spec.user = Some("www-data:staff".into());
        assert_eq!(process_user(&c, &img(), &acc).unwrap(), (33, 50));
        c.spec.user = Some("1000".into());
        assert_eq!(process_user(&c, &img(), &acc).unwrap(), (1000, 1000));
        c.spec.user = Some("app:nogroup".into());
        assert!(process_user(&c, &img(), &acc).unwrap_err().to_string().contains("group \"nogroup\""));
        assert!(user_needs_accounts("app") && user_needs_accounts("1:staff") && !user_needs_accounts("1:2"));
        assert!(!user_needs_accounts(""));
    }

    #[test]
    fn spec_carries_limits_mounts_and_netns() {
        let mut c = cfg();
        c.resources.limits.nano_cpus = 500_000_000;
        c.resources.limits.memory_bytes = 64 << 20;
        c.spec.workdir = Some("/work".into());
        c.spec.mounts = vec![
            Mount {
                kind: MountKind::Tmpfs,
                target: "/scratch".into(),
                tmpfs_size_bytes: 1 << 20,
                ..Default::default()
            },
            Mount {
                kind: MountKind::Bind,
                source: "/etc".into(),
                target: "/host-etc".into(),
                read_only: true,
                ..Default::default()
            },
            Mount { kind: MountKind::Volume, source: "data".into(), target: "/data".into(), ..Default::default() },
        ];
        let ctx = SpecContext {
            id: "web-1".into(),
            netns_path: Some("/var/run/netns/x".into()),
            cgroups_path: "/swarm-rs-ns/web-1".into(),
            volume_sources: vec!["/var/lib/v/data".into()],
            files: vec![FileMount { source: "/run/s/f0".into(), target: "/run/secrets/db".into() }],
            hosts_file: None,
            resolv_file: Some("/state/web-1/resolv.conf".into()),
            nofile: 4096,
            accounts: Accounts::default(),
        };
        let s = build_spec(&c, &img(), &ctx).unwrap();
        assert_eq!(s["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(s["linux"]["resources"]["cpu"]["period"], 100_000);
        assert_eq!(s["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(s["process"]["cwd"], "/work");
        assert_eq!(s["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
        assert_eq!(s["process"]["rlimits"][0]["hard"], 4096);
        assert_eq!(s["hostname"], "web-1");
        let ns = s["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.iter().any(|n| n["type"] == "network" && n["path"] == "/var/run/netns/x"));
        let mounts = s["mounts"].as_array().unwrap();
        let find = |d: &str| mounts.iter().find(|m| m["destination"] == d).cloned().unwrap();
        assert_eq!(find("/scratch")["type"], "tmpfs");
        assert!(find("/scratch")["options"].as_array().unwrap().contains(&json!("size=1048576")));
        assert_eq!(find("/host-etc")["options"], json!(["rbind", "ro"]));
        assert_eq!(find("/data")["source"], "/var/lib/v/data");
        assert_eq!(find("/run/secrets/db")["source"], "/run/s/f0");
        assert_eq!(find("/etc/resolv.conf")["source"], "/state/web-1/resolv.conf");
        assert_eq!(find("/etc/resolv.conf")["options"], json!(["rbind", "ro"]));
    }

    #[test]
    fn resolv_conf_names_the_first_non_internal_networks_gateway() {
        let ep = |net: &str, addr: &str, gateway: Option<&str>| {
            let a = NetworkAttachment {
                network: net.into(),
                addresses: vec![addr.into()],
                overlay: Some(swarm_core::model::OverlayAttachment {
                    vni: 4100,
                    subnet: format!("{}.0/24", addr.rsplit_once('.').unwrap().0),
                    gateway: gateway.unwrap_or_default().into(),
                    internal: gateway.is_none(),
                    ..Default::default()
                }),
            };
            NetworkEndpoint::from_attachment(&a, vec![]).unwrap().unwrap()
        };
        assert_eq!(resolv_conf(&[]), None, "no overlay network: the image's file");
        let internal = ep("secret", "10.9.1.2", None);
        assert_eq!(resolv_conf(std::slice::from_ref(&internal)), None, "internal only: no server to ask");
        let front = ep("front", "10.9.2.2", Some("10.9.2.1"));
        let back = ep("back", "10.9.3.2", Some("10.9.3.1"));
        assert_eq!(
            resolv_conf(&[internal, front, back]).as_deref(),
            Some("nameserver 10.9.2.1\nsearch .\noptions ndots:0\n")
        );
    }

    #[test]
    fn bad_mounts_are_rejected_with_their_index() {
        let mut c = cfg();
        c.spec.mounts =
            vec![Mount { kind: MountKind::Bind, source: "rel".into(), target: "/x".into(), ..Default::default() }];
        let err = build_spec(&c, &img(), &SpecContext::default()).unwrap_err();
        assert!(err.to_string().contains("mounts[0]"), "{err}");
    }

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("int").unwrap(), 2);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("SIGNOPE").is_err());
        assert_eq!(cpu_quota(1), 1000);
        assert_eq!(cpu_quota(2_000_000_000), 200_000);
    }
}
