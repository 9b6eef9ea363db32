//! The kernel data path: the routing mesh and service VIPs as iptables NAT
//! rules, so the bytes of a connection never leave the kernel.
//!
//! A [`KernelMesh`] follows a [`Discovery`] like the userspace
//! [`Mesh`](crate::mesh::Mesh) does, but instead of listening it programs
//! the node's `nat` table (the design of kube-proxy's iptables mode):
//!
//! - every port a service publishes in ingress mode, on every local address
//!   of the node, is DNAT-ed to `<endpoint>:<target port>`;
//! - every virtual IP of a VIP-mode service is DNAT-ed, whatever the port,
//!   to an endpoint (same port), so every port of the VIP works, as with
//!   Swarm's IPVS;
//! - endpoints are chosen round-robin per new connection (UDP: per flow):
//!   a chain of `-m statistic --mode nth` rules, rule `i` of `n` taking
//!   every `(n - i)`-th connection that reaches it, which is an exact
//!   rotation;
//! - connections it NATs carry a connmark; they are accepted in `FORWARD`
//!   (an endpoint on another node) and masqueraded on the way out (unless
//!   they leave through `lo`), so replies come back through this node, as
//!   with Swarm's ingress network;
//! - a target with no endpoint is rejected (TCP reset, ICMP port
//!   unreachable) instead of hanging.
//!
//! Each change is one `iptables-restore --noflush` transaction per table
//! (atomic: a packet sees the old rules or the new ones), rewriting only
//! this mesh's chains (named `<prefix>-...`). Removing an endpoint's rule
//! leaves the connections already tracked to it alone: new ones go
//! elsewhere at once, open ones (UDP: flows) drain for the service's stop
//! grace period; then the mesh ends their conntrack entries (`conntrack
//! -D`), so a UDP flow moves to another endpoint and a TCP connection gets
//! a reset instead of hanging on a task that is gone.
//!
//! What the userspace mesh has and this has not: least-connections (iptables
//! cannot count connections; IPVS could), connect retry on a dead endpoint
//! that discovery has not removed yet, per-backend counters, running without
//! privileges. Needs root (CAP_NET_ADMIN), the `iptables` and
//! `iptables-restore` commands and, for endpoints on other nodes,
//! `net.ipv4.ip_forward = 1` ([`KernelConfig::enable_forwarding`]). IPv4
//! only. Commands run in the network namespace of the thread that runs the
//! mesh's task (see [`crate::netns`] for tests). See docs/swarm-net.md.

use crate::mesh::AddrMap;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarm_core::discovery::{Discovery, ServiceEndpoints};
use swarm_core::model::{EndpointMode, Protocol, PublishMode};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Settings of a [`KernelMesh`].
#[derive(Clone, Debug)]
pub struct KernelConfig {
    /// Names of this mesh's chains start with `<prefix>-` (letters, digits,
    /// `_`, at most 16 characters). Two meshes in one namespace need two
    /// prefixes.
    pub chain_prefix: String,
    /// Program published ingress ports (the routing mesh).
    pub ingress: bool,
    /// Program service virtual IPs.
    pub vips: bool,
    /// Masquerade NATed connections leaving through an interface other than
    /// `lo` (the backend then sees this node as the client; without it,
    /// replies from another node's endpoint would not come back here).
    pub masquerade: bool,
    /// The connmark bit marking this mesh's connections.
    pub mark: u32,
    /// Write 1 to `/proc/sys/net/ipv4/ip_forward` at start (needed to reach
    /// endpoints on other nodes).
    pub enable_forwarding: bool,
    /// Maps a task address to the address this node reaches it at.
    pub translate: Option<AddrMap>,
    /// The `iptables` command.
    pub iptables: PathBuf,
    /// The `iptables-restore` command.
    pub iptables_restore: PathBuf,
    /// How long to wait before retrying a failed update when nothing
    /// changes meanwhile.
    pub retry: Duration,
    /// The `conntrack` command (conntrack-tools), used to end the mesh's
    /// tracked connections to an endpoint once it has been out of the
    /// rules for its service's stop grace period; `None`: never (they then
    /// live until conntrack forgets them: UDP 30-120 s, TCP when closed).
    pub conntrack: Option<PathBuf>,
    /// Rewrite every chain and check the jumps this often even when nothing
    /// changed, repairing rules someone else flushed or deleted (kube-proxy
    /// does the same); `None`: never.
    pub resync: Option<Duration>,
}

impl Default for KernelConfig {
    fn default() -> Self {
        KernelConfig {
            chain_prefix: "SWARM".into(),
            ingress: true,
            vips: true,
            masquerade: true,
            mark: 0x0020_0000,
            enable_forwarding: true,
            translate: None,
            iptables: "iptables".into(),
            iptables_restore: "iptables-restore".into(),
            retry: Duration::from_secs(1),
            conntrack: Some("conntrack".into()),
            resync: Some(Duration::from_secs(60)),
        }
    }
}

/// Why the kernel mesh could not do something.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A setting is unusable.
    #[error("kernel mesh: bad setting {field}: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A command could not run or failed.
    #[error("kernel mesh: `{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output or why it could not start.
        detail: String,
    },
    /// Writing a sysctl failed.
    #[error("kernel mesh: cannot set {path}: {source}")]
    Sysctl {
        /// The /proc/sys path.
        path: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// The rules for one discovery state: what [`render`] computes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// Chains of the `nat` table (created, then filled by `nat`).
    pub nat_chains: BTreeSet<String>,
    /// `-A ...` lines for the `nat` table.
    pub nat: Vec<String>,
    /// Chains of the `filter` table.
    pub filter_chains: BTreeSet<String>,
    /// `-A ...` lines for the `filter` table.
    pub filter: Vec<String>,
    /// What could not be programmed, and why (e.g. an IPv6 VIP).
    pub skipped: Vec<String>,
}

/// Base chains and the built-in chains jumping to them: (table, built-in,
/// chain suffix).
const JUMPS: [(&str, &str, &str); 7] = [
    ("nat", "PREROUTING", "MESH"),
    ("nat", "OUTPUT", "MESH"),
    ("nat", "POSTROUTING", "POST"),
    ("filter", "FORWARD", "FORWARD"),
    ("filter", "INPUT", "REJECT"),
    ("filter", "FORWARD", "REJECT"),
    ("filter", "OUTPUT", "REJECT"),
];

/// Ok when this process can run a kernel mesh with `config`'s commands:
/// root, and `iptables` and `iptables-restore` that run. Otherwise why not.
pub fn available(config: &KernelConfig) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    answers(&config.iptables, "--version")?;
    answers(&config.iptables_restore, "--version")
}

/// Ok when `cmd arg` runs and succeeds.
pub(crate) fn answers(cmd: &std::path::Path, arg: &str) -> Result<(), String> {
    match std::process::Command::new(cmd).arg(arg).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("`{} {arg}` failed: {}", cmd.display(), String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("`{}` cannot run: {e}", cmd.display())),
    }
}

/// Checks a configuration.
pub fn check_config(config: &KernelConfig) -> Result<(), KernelError> {
    let p = &config.chain_prefix;
    if p.is_empty() || p.len() > 16 || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(KernelError::Config {
            field: "chain_prefix",
            reason: format!("{p:?} must be 1 to 16 letters, digits or '_'"),
        });
    }
    if config.mark == 0 {
        return Err(KernelError::Config { field: "mark", reason: "must have at least one bit set".into() });
    }
    Ok(())
}

/// The rules for `services` (pure: no command runs).
pub fn render(services: &[ServiceEndpoints], config: &KernelConfig) -> Rules {
    let pre = &config.chain_prefix;
    let (mesh, post, reject, forward) =
        (format!("{pre}-MESH"), format!("{pre}-POST"), format!("{pre}-REJECT"), format!("{pre}-FORWARD"));
    let mark = format!("0x{:x}/0x{:x}", config.mark, config.mark);
    let mut r = Rules::default();
    r.nat_chains.extend([mesh.clone(), post.clone()]);
    r.filter_chains.extend([reject.clone(), forward.clone()]);
    if config.masquerade {
        r.nat.push(format!("-A {post} -m connmark --mark {mark} ! -o lo -j MASQUERADE"));
    }
    r.filter.push(format!("-A {forward} -m connmark --mark {mark} -j ACCEPT"));

    let mut by_name: Vec<&ServiceEndpoints> = services.iter().collect();
    by_name.sort_by(|a, b| a.name.cmp(&b.name));
    for se in by_name {
        let mut endpoints: Vec<Ipv4Addr> = Vec::new();
        for e in &se.endpoints {
            let addr = config.translate.as_ref().map_or(e.addr, |m| (m.0)(e.addr));
            match addr {
                IpAddr::V4(a) => endpoints.push(a),
                IpAddr::V6(a) => r.skipped.push(format!(
                    "service {:?}: endpoint {a} of task {} is IPv6 (the kernel mesh is IPv4 only)",
                    se.name, e.task_id
                )),
            }
        }
        if config.vips && se.mode == EndpointMode::Vip {
            for vip in &se.virtual_ips {
                let IpAddr::V4(v) = vip.addr else {
                    r.skipped.push(format!("service {:?}: VIP {} is IPv6 (IPv4 only)", se.name, vip.addr));
                    continue;
                };
                if endpoints.is_empty() {
                    r.filter.push(format!("-A {reject} -d {v}/32 -p tcp -j REJECT --reject-with tcp-reset"));
                    r.filter.push(format!("-A {reject} -d {v}/32 -j REJECT"));
                    continue;
                }
                let chain = format!("{pre}-V{:08X}", u32::from(v));
                if !r.nat_chains.insert(chain.clone()) {
                    r.skipped.push(format!("service {:?}: VIP {v} is also another service's", se.name));
                    continue;
                }
                r.nat
                    .push(format!("-A {mesh} -d {v}/32 -m comment --comment \"{} vip\" -j {chain}", comment(&se.name)));
                balance(&mut r.nat, &chain, &mark, "", endpoints.iter().map(|a| a.to_string()));
            }
        }
        if config.ingress {
            for p in se.ports.iter().filter(|p| p.publish_mode == PublishMode::Ingress) {
                let Some(published) = p.published_port else { continue };
                let pr = p.protocol.as_str();
                // Validation keeps these in range; one bad line would fail
                // the whole transaction, so never emit one.
                if !(1..=65535).contains(&published) || !(1..=65535).contains(&p.target_port) {
                    r.skipped.push(format!(
                        "service {:?}: port {published}->{}/{pr} is not a port pair (1-65535)",
                        se.name, p.target_port
                    ));
                    continue;
                }
                if endpoints.is_empty() {
                    let with = if p.protocol == Protocol::Tcp { " --reject-with tcp-reset" } else { "" };
                    r.filter.push(format!(
                        "-A {reject} -p {pr} --dport {published} -m addrtype --dst-type LOCAL -j REJECT{with}"
                    ));
                    continue;
                }
                let chain = format!("{pre}-I{}{published}", if p.protocol == Protocol::Tcp { 'T' } else { 'U' });
                if !r.nat_chains.insert(chain.clone()) {
                    r.skipped.push(format!("service {:?}: port {published}/{pr} is also another service's", se.name));
                    continue;
                }
                r.nat.push(format!(
                    "-A {mesh} -p {pr} --dport {published} -m addrtype --dst-type LOCAL -m comment --comment \"{} {published}/{pr}\" -j {chain}",
                    comment(&se.name)
                ));
                let matches = format!(" -p {pr}");
                balance(
                    &mut r.nat,
                    &chain,
                    &mark,
                    &matches,
                    endpoints.iter().map(|a| format!("{a}:{}", p.target_port)),
                );
            }
        }
    }
    r
}

/// Service names are DNS labels; keep the comment safe whatever they are.
fn comment(name: &str) -> String {
    name.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).take(64).collect()
}

/// Marks the connection, then DNATs it to one of `targets` in rotation.
/// `matches` go in every DNAT rule (iptables wants `-p` to rewrite a port).
fn balance(
    out: &mut Vec<String>,
    chain: &str,
    mark: &str,
    matches: &str,
    targets: impl ExactSizeIterator<Item = String>,
) {
    out.push(format!("-A {chain} -j CONNMARK --set-xmark {mark}"));
    let n = targets.len();
    for (i, t) in targets.enumerate() {
        let every = n - i;
        if every > 1 {
            out.push(format!(
                "-A {chain}{matches} -m statistic --mode nth --every {every} --packet 0 -j DNAT --to-destination {t}"
            ));
        } else {
            out.push(format!("-A {chain}{matches} -j DNAT --to-destination {t}"));
        }
    }
}

/// The `iptables-restore --noflush` input that replaces `old` (the rules in
/// force) by `new`. Only what changed is written: a chain of `new` is
/// declared (which creates or flushes it) and filled only when it is new or
/// its lines differ from `old`'s, or always with `full`; a chain only in
/// `old` is flushed and deleted. Unchanged chains are not touched, so an
/// endpoint change in a large cluster rewrites a few chains, not all of
/// them (and the other chains keep their rotation counters).
pub fn restore_input(old: &Rules, new: &Rules, full: bool) -> String {
    let mut s = String::new();
    for (table, old_chains, new_chains, old_rules, new_rules) in [
        ("nat", &old.nat_chains, &new.nat_chains, &old.nat, &new.nat),
        ("filter", &old.filter_chains, &new.filter_chains, &old.filter, &new.filter),
    ] {
        let (before, after) = (by_chain(old_rules), by_chain(new_rules));
        let changed: Vec<&String> = new_chains
            .iter()
            .filter(|c| full || !old_chains.contains(*c) || before.get(c.as_str()) != after.get(c.as_str()))
            .collect();
        let _ = writeln!(s, "*{table}");
        for c in changed.iter().copied().chain(old_chains.difference(new_chains)) {
            let _ = writeln!(s, ":{c} - [0:0]");
        }
        for c in &changed {
            for rule in after.get(c.as_str()).into_iter().flatten() {
                let _ = writeln!(s, "{rule}");
            }
        }
        for c in old_chains.difference(new_chains) {
            let _ = writeln!(s, "-X {c}");
        }
        let _ = writeln!(s, "COMMIT");
    }
    s
}

/// `-A <chain> ...` lines grouped by chain, in order.
fn by_chain(rules: &[String]) -> BTreeMap<&str, Vec<&str>> {
    let mut m: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in rules {
        let chain = r.split_whitespace().nth(1).unwrap_or_default();
        m.entry(chain).or_default().push(r);
    }
    m
}

struct Shared {
    config: KernelConfig,
    applied: Mutex<Rules>,
    errors: Mutex<Vec<String>>,
    /// The last failure to end a drained endpoint's connections.
    drain_error: Mutex<Option<String>>,
    /// Rewrite every chain on the next update (after a failure: what is in
    /// force may not be what `applied` says).
    full: std::sync::atomic::AtomicBool,
    synced: watch::Sender<u64>,
}

/// The endpoint addresses the rules send traffic to, with the longest stop
/// grace period among the services they serve.
fn endpoint_addrs(services: &[ServiceEndpoints], config: &KernelConfig) -> BTreeMap<Ipv4Addr, Duration> {
    let mut out: BTreeMap<Ipv4Addr, Duration> = BTreeMap::new();
    for se in services {
        let vip = config.vips && se.mode == EndpointMode::Vip && !se.virtual_ips.is_empty();
        let ingress = config.ingress
            && se.ports.iter().any(|p| p.publish_mode == PublishMode::Ingress && p.published_port.is_some());
        if !vip && !ingress {
            continue;
        }
        for e in &se.endpoints {
            if let IpAddr::V4(a) = config.translate.as_ref().map_or(e.addr, |m| (m.0)(e.addr)) {
                let g = out.entry(a).or_default();
                *g = (*g).max(se.stop_grace_period);
            }
        }
    }
    out
}

/// Endpoints that left the rules, and when their drain ends.
#[derive(Debug, Default)]
struct Drains {
    live: BTreeMap<Ipv4Addr, Duration>,
    due: BTreeMap<Ipv4Addr, Instant>,
}

impl Drains {
    /// The rules now send traffic to `live`: an address that left starts
    /// draining for its grace period; one that came back stops draining.
    fn update(&mut self, live: BTreeMap<Ipv4Addr, Duration>, now: Instant) {
        for (a, grace) in &self.live {
            if !live.contains_key(a) {
                self.due.entry(*a).or_insert(now + *grace);
            }
        }
        self.due.retain(|a, _| !live.contains_key(a));
        self.live = live;
    }

    /// Removes and returns the addresses whose drain is over.
    fn take_due(&mut self, now: Instant) -> Vec<Ipv4Addr> {
        let over: Vec<Ipv4Addr> = self.due.iter().filter(|(_, t)| **t <= now).map(|(a, _)| *a).collect();
        for a in &over {
            self.due.remove(a);
        }
        over
    }

    fn next(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }
}

/// Ends the mesh's tracked connections to `addr` (those carrying the
/// connmark, whose reply comes from `addr`).
async fn end_connections(shared: &Shared, addr: Ipv4Addr) {
    let Some(cmd) = &shared.config.conntrack else { return };
    let (a, mark) = (addr.to_string(), format!("0x{:x}/0x{:x}", shared.config.mark, shared.config.mark));
    let result = run(cmd, &["-D", "--mark", &mark, "-r", &a], None).await;
    let error = match result {
        Ok(()) => None,
        // Exit status 1 with nothing deleted: there was nothing to end.
        Err(KernelError::Command { ref detail, .. }) if detail.contains("0 flow entries") => None,
        Err(e) => Some(e.to_string()),
    };
    match &error {
        None => tracing::debug!(%addr, "kernel mesh: drain over, tracked connections ended"),
        Some(e) => tracing::warn!(%addr, error = %e, "kernel mesh: cannot end a drained endpoint's connections"),
    }
    *crate::mesh::lock(&shared.drain_error) = error;
}

/// A node's kernel routing mesh and VIPs. See the [module docs](self).
pub struct KernelMesh {
    shared: Arc<Shared>,
    discovery: Arc<dyn Discovery>,
    stop: Option<oneshot::Sender<()>>,
    supervisor: JoinHandle<()>,
}

impl KernelMesh {
    /// Creates the chains and their jumps, then follows `discovery`. Fails
    /// (and leaves nothing behind) when the configuration is bad or
    /// iptables cannot be used (not root, command missing).
    pub async fn start(discovery: Arc<dyn Discovery>, config: KernelConfig) -> Result<KernelMesh, KernelError> {
        check_config(&config)?;
        if config.enable_forwarding {
            const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
            std::fs::write(PATH, "1").map_err(|source| KernelError::Sysctl { path: PATH, source })?;
        }
        let shared = Arc::new(Shared {
            config,
            applied: Mutex::new(Rules::default()),
            errors: Mutex::new(Vec::new()),
            drain_error: Mutex::new(None),
            full: std::sync::atomic::AtomicBool::new(true),
            synced: watch::channel(0).0,
        });
        let base = render(&[], &shared.config);
        if let Err(e) = apply(&shared, &base).await {
            let _ = teardown(&shared).await;
            return Err(e);
        }
        if let Err(e) = ensure_jumps(&shared.config).await {
            let _ = teardown(&shared).await;
            return Err(e);
        }
        let (stop_tx, mut stop_rx) = oneshot::channel();
        let (s, d) = (shared.clone(), discovery.clone());
        let supervisor = tokio::spawn(async move {
            let mut rx = d.subscribe();
            let mut drains = Drains::default();
            let resync = s.config.resync;
            let mut resync_at = resync.map(|p| Instant::now() + p);
            let mut force = false;
            // Render and apply only when discovery changed, an update
            // failed or the resync is due: not when only a drain ends.
            let (mut dirty, mut ok) = (true, true);
            loop {
                if std::mem::take(&mut dirty) {
                    let revision = *rx.borrow_and_update();
                    let services = d.resolve_all();
                    ok = sync(&s, &services, std::mem::take(&mut force)).await;
                    if ok {
                        s.synced.send_replace(revision);
                        drains.update(endpoint_addrs(&services, &s.config), Instant::now());
                    }
                }
                for addr in drains.take_due(Instant::now()) {
                    end_connections(&s, addr).await;
                }
                let next = drains.next();
                tokio::select! {
                    _ = &mut stop_rx => return,
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        dirty = true;
                    }
                    _ = tokio::time::sleep(s.config.retry), if !ok => dirty = true,
                    _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {}
                    _ = tokio::time::sleep_until(resync_at.unwrap_or_else(Instant::now)), if resync_at.is_some() => {
                        force = true;
                        dirty = true;
                        resync_at = resync.map(|p| Instant::now() + p);
                    }
                }
            }
        });
        Ok(KernelMesh { shared, discovery, stop: Some(stop_tx), supervisor })
    }

    /// The rules in force now.
    pub fn rules(&self) -> Rules {
        crate::mesh::lock(&self.shared.applied).clone()
    }

    /// What the last update could not do (failed command, skipped
    /// targets), and the last failure to end a drained endpoint's
    /// connections.
    pub fn errors(&self) -> Vec<String> {
        let mut e = crate::mesh::lock(&self.shared.errors).clone();
        e.extend(crate::mesh::lock(&self.shared.drain_error).clone());
        e
    }

    /// Waits until the rules match the discovery state current at the call
    /// (or `timeout` passes); true if they do.
    pub async fn synced(&self, timeout: Duration) -> bool {
        let target = *self.discovery.subscribe().borrow();
        let mut rx = self.shared.synced.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n >= target)).await.is_ok_and(|r| r.is_ok())
    }

    /// Stops following discovery and removes every rule and chain of this
    /// mesh (connections already tracked keep their translation).
    pub async fn stop(mut self) -> Result<(), KernelError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.supervisor).await;
        teardown(&self.shared).await
    }
}

impl Drop for KernelMesh {
    fn drop(&mut self) {
        if self.stop.is_some() {
            // Dropped without `stop`: the rules stay (they keep serving)
            // but nothing updates them any more.
            tracing::warn!(prefix = %self.shared.config.chain_prefix, "kernel mesh dropped without stop: its rules stay in place, no longer updated");
            self.supervisor.abort();
        }
    }
}

/// Renders and applies `services`; records errors. True when applied.
/// `force` (the periodic resync): rewrite every chain and check the jumps
/// even if the rules did not change.
async fn sync(shared: &Shared, services: &[ServiceEndpoints], force: bool) -> bool {
    let rules = render(services, &shared.config);
    let mut errors = rules.skipped.clone();
    if force {
        shared.full.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let same = !force && *crate::mesh::lock(&shared.applied) == rules;
    let ok = if same {
        true
    } else {
        match apply(shared, &rules).await {
            Ok(()) => {
                tracing::info!(
                    nat_rules = rules.nat.len(),
                    chains = rules.nat_chains.len(),
                    "kernel mesh: rules updated"
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "kernel mesh: update failed, will retry");
                errors.push(e.to_string());
                // The jumps may be what is missing (someone flushed them).
                if let Err(e) = ensure_jumps(&shared.config).await {
                    errors.push(e.to_string());
                }
                false
            }
        }
    };
    // After the rewrite, so that chains someone deleted exist again.
    if force && ok {
        if let Err(e) = ensure_jumps(&shared.config).await {
            errors.push(e.to_string());
        }
    }
    for s in &rules.skipped {
        tracing::debug!(reason = %s, "kernel mesh: not programmed");
    }
    *crate::mesh::lock(&shared.errors) = errors;
    ok
}

async fn apply(shared: &Shared, rules: &Rules) -> Result<(), KernelError> {
    use std::sync::atomic::Ordering;
    let old = crate::mesh::lock(&shared.applied).clone();
    let full = shared.full.load(Ordering::SeqCst);
    let input = restore_input(&old, rules, full);
    if let Err(e) = run(&shared.config.iptables_restore, &["-w", "--noflush"], Some(input)).await {
        shared.full.store(true, Ordering::SeqCst);
        return Err(e);
    }
    shared.full.store(false, Ordering::SeqCst);
    *crate::mesh::lock(&shared.applied) = rules.clone();
    Ok(())
}

/// Inserts each base chain's jump at the top of its built-in chain unless
/// it is there already.
async fn ensure_jumps(config: &KernelConfig) -> Result<(), KernelError> {
    for (table, builtin, suffix) in JUMPS {
        let chain = format!("{}-{suffix}", config.chain_prefix);
        let check = ["-w", "-t", table, "-C", builtin, "-j", &chain];
        if run(&config.iptables, &check, None).await.is_err() {
            run(&config.iptables, &["-w", "-t", table, "-I", builtin, "1", "-j", &chain], None).await?;
        }
    }
    Ok(())
}

/// Removes the jumps, then every chain this mesh made.
async fn teardown(shared: &Shared) -> Result<(), KernelError> {
    let config = &shared.config;
    for (table, builtin, suffix) in JUMPS {
        let chain = format!("{}-{suffix}", config.chain_prefix);
        // Delete every copy (a crashed predecessor may have left one).
        while run(&config.iptables, &["-w", "-t", table, "-D", builtin, "-j", &chain], None).await.is_ok() {}
    }
    let mut old = crate::mesh::lock(&shared.applied).clone();
    let base = render(&[], config);
    old.nat_chains.extend(base.nat_chains);
    old.filter_chains.extend(base.filter_chains);
    let input = restore_input(&old, &Rules::default(), true);
    run(&config.iptables_restore, &["-w", "--noflush"], Some(input)).await?;
    *crate::mesh::lock(&shared.applied) = Rules::default();
    Ok(())
}

async fn run(cmd: &std::path::Path, args: &[&str], stdin: Option<String>) -> Result<(), KernelError> {
    use tokio::io::AsyncWriteExt;
    let line = || format!("{} {}", cmd.display(), args.join(" "));
    let mut c = tokio::process::Command::new(cmd);
    c.args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
    c.stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() });
    let mut child = c.spawn().map_err(|e| KernelError::Command { command: line(), detail: e.to_string() })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| KernelError::Command { command: line(), detail: format!("writing its input: {e}") })?;
    }
    let out =
        child.wait_with_output().await.map_err(|e| KernelError::Command { command: line(), detail: e.to_string() })?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(KernelError::Command { command: line(), detail: format!("{} ({})", err, out.status) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_core::discovery::Endpoint;
    use swarm_core::model::{PortConfig, VirtualIp};

    fn svc(name: &str, endpoints: &[&str], vip: Option<&str>, ports: &[(Protocol, u32, u32)]) -> ServiceEndpoints {
        ServiceEndpoints {
            service_id: name.into(),
            name: name.into(),
            mode: EndpointMode::Vip,
            virtual_ips: vip
                .map(|v| VirtualIp { network: "default".into(), addr: v.parse().unwrap() })
                .into_iter()
                .collect(),
            ports: ports
                .iter()
                .map(|(protocol, target, published)| PortConfig {
                    protocol: *protocol,
                    target_port: *target,
                    published_port: Some(*published),
                    ..Default::default()
                })
                .collect(),
            endpoints: endpoints
                .iter()
                .enumerate()
                .map(|(i, a)| Endpoint {
                    task_id: format!("{name}-{i}").into(),
                    node_id: None,
                    slot: Some(i as u64 + 1),
                    addr: a.parse().unwrap(),
                })
                .collect(),
            stop_grace_period: Duration::from_secs(10),
            revision: 1,
        }
    }

    #[test]
    fn three_endpoints_rotate_with_nth_rules_and_the_vip_keeps_the_port() {
        let s = svc("web", &["10.0.1.2", "10.0.1.3", "10.0.1.4"], Some("10.0.0.2"), &[(Protocol::Tcp, 80, 30000)]);
        let r = render(&[s], &KernelConfig::default());
        let want = [
            "-A SWARM-POST -m connmark --mark 0x200000/0x200000 ! -o lo -j MASQUERADE",
            "-A SWARM-MESH -d 10.0.0.2/32 -m comment --comment \"web vip\" -j SWARM-V0A000002",
            "-A SWARM-V0A000002 -j CONNMARK --set-xmark 0x200000/0x200000",
            "-A SWARM-V0A000002 -m statistic --mode nth --every 3 --packet 0 -j DNAT --to-destination 10.0.1.2",
            "-A SWARM-V0A000002 -m statistic --mode nth --every 2 --packet 0 -j DNAT --to-destination 10.0.1.3",
            "-A SWARM-V0A000002 -j DNAT --to-destination 10.0.1.4",
            "-A SWARM-MESH -p tcp --dport 30000 -m addrtype --dst-type LOCAL -m comment --comment \"web 30000/tcp\" -j SWARM-IT30000",
            "-A SWARM-IT30000 -j CONNMARK --set-xmark 0x200000/0x200000",
            "-A SWARM-IT30000 -p tcp -m statistic --mode nth --every 3 --packet 0 -j DNAT --to-destination 10.0.1.2:80",
            "-A SWARM-IT30000 -p tcp -m statistic --mode nth --every 2 --packet 0 -j DNAT --to-destination 10.0.1.3:80",
            "-A SWARM-IT30000 -p tcp -j DNAT --to-destination 10.0.1.4:80",
        ];
        assert_eq!(r.nat, want);
        assert_eq!(
            r.nat_chains.iter().map(String::as_str).collect::<Vec<_>>(),
            ["SWARM-IT30000", "SWARM-MESH", "SWARM-POST", "SWARM-V0A000002"]
        );
        assert_eq!(r.filter, ["-A SWARM-FORWARD -m connmark --mark 0x200000/0x200000 -j ACCEPT"]);
        assert!(r.skipped.is_empty());
    }

    #[test]
    fn no_endpoint_rejects_and_udp_gets_its_own_chain() {
        let empty = svc("idle", &[], Some("10.0.0.9"), &[(Protocol::Udp, 53, 30053)]);
        let dns = svc("dns", &["10.0.1.7"], None, &[(Protocol::Udp, 53, 30054)]);
        let r = render(&[empty, dns], &KernelConfig { masquerade: false, ..Default::default() });
        assert_eq!(
            r.filter[1..],
            [
                "-A SWARM-REJECT -d 10.0.0.9/32 -p tcp -j REJECT --reject-with tcp-reset",
                "-A SWARM-REJECT -d 10.0.0.9/32 -j REJECT",
                "-A SWARM-REJECT -p udp --dport 30053 -m addrtype --dst-type LOCAL -j REJECT",
            ]
        );
        assert!(r.nat.contains(&"-A SWARM-IU30054 -p udp -j DNAT --to-destination 10.0.1.7:53".to_string()));
        assert!(!r.nat.iter().any(|l| l.contains("MASQUERADE")));
    }

    #[test]
    fn ipv6_is_reported_not_programmed_and_a_second_claim_on_a_port_is_skipped() {
        let a = svc("a", &["fd00::2", "10.0.1.2"], Some("fd00::1"), &[(Protocol::Tcp, 80, 30000)]);
        let b = svc("b", &["10.0.1.3"], None, &[(Protocol::Tcp, 80, 30000)]);
        let r = render(&[b, a], &KernelConfig::default());
        assert_eq!(r.skipped.len(), 3, "{:?}", r.skipped);
        assert!(r.skipped[0].contains("fd00::2") && r.skipped[1].contains("VIP fd00::1"));
        assert!(r.skipped[2].contains("service \"b\": port 30000/tcp"));
        let bad = svc("bad", &["10.0.1.4"], None, &[(Protocol::Tcp, 80, 70000)]);
        let out_of_range = render(&[bad], &KernelConfig::default());
        assert!(out_of_range.skipped[0].contains("70000->80/tcp is not a port pair"), "{:?}", out_of_range.skipped);
        assert!(!out_of_range.nat.iter().any(|l| l.contains("70000")));
        assert!(r.nat.contains(&"-A SWARM-IT30000 -p tcp -j DNAT --to-destination 10.0.1.2:80".to_string()));
    }

    #[test]
    fn restore_input_flushes_new_chains_and_deletes_old_ones() {
        let cfg = KernelConfig::default();
        let old = render(&[svc("a", &["10.0.1.2"], Some("10.0.0.2"), &[])], &cfg);
        let new = render(&[], &cfg);
        let input = restore_input(&old, &new, false);
        assert_eq!(
            input, "*nat\n:SWARM-MESH - [0:0]\n:SWARM-V0A000002 - [0:0]\n-X SWARM-V0A000002\nCOMMIT\n*filter\nCOMMIT\n",
            "only the dispatch chain changed (it loses its jump) and the VIP chain goes"
        );
        let full = restore_input(&old, &new, true);
        assert_eq!(
            full,
            "*nat\n:SWARM-MESH - [0:0]\n:SWARM-POST - [0:0]\n:SWARM-V0A000002 - [0:0]\n\
             -A SWARM-POST -m connmark --mark 0x200000/0x200000 ! -o lo -j MASQUERADE\n-X SWARM-V0A000002\nCOMMIT\n\
             *filter\n:SWARM-FORWARD - [0:0]\n:SWARM-REJECT - [0:0]\n\
             -A SWARM-FORWARD -m connmark --mark 0x200000/0x200000 -j ACCEPT\nCOMMIT\n"
        );
    }

    #[test]
    fn an_endpoint_change_rewrites_only_its_service_chain() {
        let cfg = KernelConfig::default();
        let a = svc("a", &["10.0.1.2", "10.0.1.3"], Some("10.0.0.2"), &[(Protocol::Tcp, 80, 30000)]);
        let b = svc("b", &["10.0.2.2"], Some("10.0.0.3"), &[]);
        let mut b2 = b.clone();
        b2.endpoints[0].addr = "10.0.2.9".parse().unwrap();
        let (old, new) = (render(&[a.clone(), b], &cfg), render(&[a, b2], &cfg));
        assert_eq!(
            restore_input(&old, &new, false),
            "*nat\n:SWARM-V0A000003 - [0:0]\n\
             -A SWARM-V0A000003 -j CONNMARK --set-xmark 0x200000/0x200000\n\
             -A SWARM-V0A000003 -j DNAT --to-destination 10.0.2.9\nCOMMIT\n*filter\nCOMMIT\n"
        );
    }

    #[test]
    fn an_endpoint_that_leaves_drains_for_its_grace_and_one_that_returns_does_not() {
        let t0 = Instant::now();
        let a: Ipv4Addr = "10.0.1.2".parse().unwrap();
        let b: Ipv4Addr = "10.0.1.3".parse().unwrap();
        let mut d = Drains::default();
        d.update([(a, Duration::from_secs(10)), (b, Duration::from_secs(2))].into(), t0);
        assert_eq!(d.next(), None);
        d.update([(a, Duration::from_secs(10))].into(), t0 + Duration::from_secs(1));
        assert_eq!(d.next(), Some(t0 + Duration::from_secs(3)));
        assert!(d.take_due(t0 + Duration::from_secs(2)).is_empty());
        // b comes back before the end of its drain: nothing to end.
        d.update([(a, Duration::from_secs(10)), (b, Duration::from_secs(2))].into(), t0 + Duration::from_secs(2));
        assert_eq!(d.next(), None);
        // Both leave; b's drain ends first, a's later; a second update
        // does not restart a running drain.
        d.update(BTreeMap::new(), t0 + Duration::from_secs(4));
        d.update(BTreeMap::new(), t0 + Duration::from_secs(5));
        assert_eq!(d.take_due(t0 + Duration::from_secs(6)), vec![b]);
        assert_eq!(d.take_due(t0 + Duration::from_secs(14)), vec![a]);
        assert_eq!(d.next(), None);
    }

    #[test]
    fn endpoint_addrs_keep_the_longest_grace_and_skip_unserved_services() {
        let mut a = svc("a", &["10.0.1.2"], Some("10.0.0.2"), &[]);
        a.stop_grace_period = Duration::from_secs(30);
        let b = svc("b", &["10.0.1.2", "10.0.1.3"], None, &[(Protocol::Tcp, 80, 30000)]);
        let idle = svc("idle", &["10.0.1.9"], None, &[]);
        let m = endpoint_addrs(&[a, b, idle], &KernelConfig::default());
        let want: BTreeMap<Ipv4Addr, Duration> = [
            ("10.0.1.2".parse().unwrap(), Duration::from_secs(30)),
            ("10.0.1.3".parse().unwrap(), Duration::from_secs(10)),
        ]
        .into();
        assert_eq!(m, want);
    }

    #[test]
    fn bad_prefixes_and_marks_are_named() {
        for p in ["", "WAY-TOO-LONG-PREFIX-X", "a b"] {
            let e = check_config(&KernelConfig { chain_prefix: p.into(), ..Default::default() }).unwrap_err();
            assert!(e.to_string().contains("chain_prefix"), "{e}");
        }
        let e = check_config(&KernelConfig { mark: 0, ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("mark"), "{e}");
    }
}
