//! Benchmark of the raft store: committed transactions per second, commit
//! latency (p50/p99) and failover time after killing the leader.
//!
//! `cargo run --release --features raft --example raft_bench -- --managers 3 --clients 64 --seconds 10`
//!
//! Managers run in this process, talk over TCP on loopback and keep their
//! logs on disk (fsync per batch) in a temporary directory. Each client
//! commits one small transaction (create a node) at a time, round-robin over
//! the managers (followers forward to the leader). After the measured load
//! the leader is stopped and the time until a survivor commits again is the
//! failover time, measured from the moment the leader is told to stop
//! (default timing: 100 ms ticks, 1 s election timeout).
//!
//! fsync is the cost that matters, so the benchmark reports the file system
//! of the log directory (`log_fs`, from `/proc/self/mounts`) and refuses
//! tmpfs and ramfs, where fsync is free, unless `--allow-tmpfs` is given.
//! `--dir PATH` puts the logs under PATH (default: the system temp dir).
//!
//! `--tls` (needs the `raft-tls` feature) runs the same load over mutual
//! TLS 1.3: a cluster CA and one manager certificate per manager are
//! generated in memory before the measurement, and the JSON says
//! `"transport": "tcp-mtls"` instead of `"tcp-loopback"`:
//! `cargo run --release --features raft-tls --example raft_bench -- --tls`
//!
//! Load shape: by default every transaction creates a new node, so the
//! state grows with the number of commits. `--keys K` bounds it: each
//! client owns K / clients nodes, creates them on its first round and then
//! updates them in turn (an update carries the version the client last got
//! back), so the state holds K nodes however long the run. `etcd_bench
//! --keys K` puts the same key space; `entry_bytes` in the JSON is the size
//! of one transaction as it is replicated, the value size to give etcd.
//!
//! Memory: the managers, their drivers and the clients share this process,
//! so its resident set size is what is measured. Every `--sample-every`
//! seconds (default 10) a line `rss t=<s> mib=<MiB> commits=<n>` is
//! printed; the JSON reports `peak_rss_mib` (the kernel's high-water mark,
//! VmHWM), `baseline_rss_mib` (the process before the managers started:
//! the clients' own memory is their latency histograms, fixed size, about
//! 60 KiB each), the samples, and `rss_flat`: the largest sample of the
//! second half of the run at most 5 % above the largest of the first half.
//! `--watch-history N` overrides the changes each manager keeps for
//! resuming watchers (to measure what they cost).
//!
//! A soak run: `raft_bench --managers 3 --clients 64 --keys 10000 --seconds 600`.
//!
//! Prints one JSON object as the last line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use swarm::model::{Node, ObjectKind, Resources, Version};
use swarm::raft::{RaftStore, RaftStoreConfig, Role, TcpTransport, TcpTransportConfig};
use swarm::state::Transaction;
use swarm::store::{Store, StoreError};
use tokio::net::TcpListener;

mod bench_load;
use bench_load::Histogram;

struct Args {
    managers: u64,
    clients: usize,
    seconds: u64,
    dir: PathBuf,
    allow_tmpfs: bool,
    tls: bool,
    keys: usize,
    sample_every: u64,
    watch_history: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        managers: 3,
        clients: 64,
        seconds: 10,
        dir: std::env::temp_dir(),
        allow_tmpfs: false,
        tls: false,
        keys: 0,
        sample_every: 10,
        watch_history: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--allow-tmpfs" {
            a.allow_tmpfs = true;
            continue;
        }
        if flag == "--tls" {
            if !cfg!(feature = "raft-tls") {
                return Err("--tls needs the raft-tls feature (--features raft-tls)".into());
            }
            a.tls = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: std::num::ParseIntError| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--managers" => a.managers = value.parse().map_err(bad)?,
            "--clients" => a.clients = value.parse().map_err(bad)?,
            "--seconds" => a.seconds = value.parse().map_err(bad)?,
            "--dir" => a.dir = PathBuf::from(value),
            "--keys" => a.keys = value.parse().map_err(bad)?,
            "--sample-every" => a.sample_every = value.parse().map_err(bad)?,
            "--watch-history" => a.watch_history = Some(value.parse().map_err(bad)?),
            other => {
                return Err(format!(
                    "unknown flag {other} (use --managers, --clients, --seconds, --keys, --sample-every, \
                     --watch-history, --dir, --allow-tmpfs, --tls)"
                ));
            }
        }
    }
    if !(1..=7).contains(&a.managers) || a.clients == 0 || a.seconds == 0 || a.sample_every == 0 {
        return Err("--managers must be 1..7, --clients, --seconds and --sample-every positive".into());
    }
    if a.keys != 0 && a.keys < a.clients {
        return Err(format!("--keys {} must be 0 (a new node per transaction) or at least --clients", a.keys));
    }
    Ok(a)
}

/// Decodes the octal escapes (`\040` for a space) of a /proc/mounts field.
fn unescape_mount_field(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The file system type of the mount holding `dir` (the longest mount point
/// that is a prefix of its canonical path), from `/proc/self/mounts`.
fn filesystem_of(dir: &Path) -> Result<String, String> {
    let path = dir.canonicalize().map_err(|e| format!("resolving {}: {e}", dir.display()))?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|e| format!("reading /proc/self/mounts: {e}"))?;
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut fields = line.split(' ');
        let (Some(_source), Some(point), Some(fstype)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let point = PathBuf::from(unescape_mount_field(point));
        if path.starts_with(&point) {
            let depth = point.components().count();
            // Later lines win at equal depth: they are mounted over earlier ones.
            if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
                best = Some((depth, fstype.to_string()));
            }
        }
    }
    best.map(|(_, fs)| fs).ok_or_else(|| format!("no mount in /proc/self/mounts holds {}", path.display()))
}

/// In-memory PKI for `--tls`: one cluster CA, one manager certificate per
/// raft id (node id `m<id>`).
#[cfg(feature = "raft-tls")]
mod tls {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};
    use swarm::raft::tls::RaftTls;
    use swarm::security::ca::{ClusterCa, NodeCsr};
    use swarm::security::role::Role;
    use swarm::security::tls::TlsCredentials;

    pub fn manager_tls(ids: &[u64]) -> Result<HashMap<u64, Arc<RaftTls>>, Box<dyn std::error::Error>> {
        let ca = ClusterCa::generate("bench-cluster", Duration::from_secs(365 * 86_400))?;
        let names: HashMap<u64, String> = ids.iter().map(|&id| (id, format!("m{id}"))).collect();
        let mut out = HashMap::new();
        for (&id, name) in &names {
            let csr = NodeCsr::generate(name)?;
            let cert = ca.sign_node_csr(csr.csr_pem(), name, Role::Manager, None, SystemTime::now())?;
            let creds = TlsCredentials::from_pem(ca.cert_pem(), cert.cert_pem(), &csr.key_pem())?;
            out.insert(id, RaftTls::new(&creds, names.clone())?);
        }
        Ok(out)
    }
}

fn node(name: &str) -> Node {
    Node::ready(name, "bench-host", Resources::default())
}

fn tx(name: String) -> Transaction {
    Transaction::new().create(node(&name))
}

/// One client's next transaction. Unbounded (`per_client == 0`): a new
/// node. Bounded: the `i % per_client`-th of its own nodes, created on the
/// first round and updated (at the version last committed) after.
fn next_tx(c: usize, i: u64, per_client: usize, versions: &[Option<Version>]) -> Transaction {
    if per_client == 0 {
        return tx(format!("c{c}-{i}"));
    }
    let k = (i % per_client as u64) as usize;
    let mut n = node(&format!("c{c}-k{k}"));
    match versions[k] {
        None => Transaction::new().create(n),
        Some(v) => {
            n.meta.version = v;
            Transaction::new().update(n)
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    // RUST_LOG=swarm_raft::stall=debug shows the drivers' slow iterations.
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    let baseline_rss_mib = bench_load::rss_mib("self").unwrap_or(f64::NAN);
    let dir = args.dir.join(format!("swarm-raft-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating the log directory {}: {e}", dir.display()))?;
    let log_fs = match filesystem_of(&dir) {
        Ok(fs) => fs,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
    };
    if matches!(log_fs.as_str(), "tmpfs" | "ramfs") && !args.allow_tmpfs {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!(
            "the log directory {} is on {log_fs}, where fsync costs nothing: the figures would not be \
             comparable; use --dir on a disk-backed file system, or --allow-tmpfs to measure anyway",
            args.dir.display()
        )
        .into());
    }
    let ids: Vec<u64> = (1..=args.managers).collect();
    let mut listeners = Vec::new();
    let mut addrs = HashMap::new();
    for &id in &ids {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        addrs.insert(id, l.local_addr()?);
        listeners.push(l);
    }
    let mut stores = Vec::new();
    let mut servers = Vec::new();
    let mut transports = Vec::new();
    #[cfg(feature = "raft-tls")]
    let tls = if args.tls { Some(tls::manager_tls(&ids)?) } else { None };
    for (&id, listener) in ids.iter().zip(listeners) {
        #[allow(unused_mut)]
        let mut tcfg = TcpTransportConfig::new(id, addrs.clone());
        #[cfg(feature = "raft-tls")]
        let my_tls = tls.as_ref().and_then(|t| t.get(&id).cloned());
        #[cfg(feature = "raft-tls")]
        if let Some(t) = &my_tls {
            tcfg = tcfg.with_tls(t.clone());
        }
        let transport = TcpTransport::new(tcfg)?;
        transports.push(transport.clone());
        let mut cfg = RaftStoreConfig::new(id, dir.join(format!("m{id}")), ids.clone());
        if let Some(h) = args.watch_history {
            cfg.watch_history = h;
        }
        let store = RaftStore::open_async(cfg, transport).await?;
        #[cfg(feature = "raft-tls")]
        if let Some(t) = my_tls {
            let limits = swarm::raft::InboundLimits::default();
            servers.push(tokio::spawn(TcpTransport::serve_tls(listener, store.inbox(), limits, t)));
            stores.push(store);
            continue;
        }
        servers.push(tokio::spawn(TcpTransport::serve(listener, store.inbox())));
        stores.push(store);
    }
    // Wait for a leader and one committed write.
    let warm = Instant::now();
    loop {
        match stores[0].commit(tx("warmup".into())).await {
            Ok(_) => break,
            Err(e) if warm.elapsed() < Duration::from_secs(30) => {
                eprintln!("waiting for a leader: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let stores = Arc::new(stores);
    let per_client = args.keys / args.clients;
    let entry_bytes = serde_json::to_vec(&next_tx(0, 0, per_client, &[Some(Version(1_000_000))]))?.len();
    let commits = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let stores = stores.clone();
        let commits = commits.clone();
        tasks.push(tokio::spawn(async move {
            let store = &stores[c % stores.len()];
            let (mut lat, mut errors, mut i) = (Histogram::default(), 0u64, 0u64);
            let mut versions: Vec<Option<Version>> = vec![None; per_client];
            while Instant::now() < deadline {
                let t = Instant::now();
                match store.commit(next_tx(c, i, per_client, &versions)).await {
                    Ok(change) => {
                        lat.record(t.elapsed());
                        commits.fetch_add(1, Ordering::Relaxed);
                        if per_client > 0
                            && let Some(e) = change.events.first()
                        {
                            versions[(i % per_client as u64) as usize] = Some(e.object.meta().version);
                        }
                        i += 1;
                    }
                    Err(e) => {
                        if errors == 0 {
                            eprintln!("client {c}: {e}");
                        }
                        errors += 1;
                        if per_client == 0 {
                            i += 1;
                        } else {
                            // Unknown outcome: learn the node's version (or
                            // that it is absent) before the next write.
                            let k = (i % per_client as u64) as usize;
                            if let Ok(snap) = store.snapshot().await {
                                versions[k] =
                                    snap.get(ObjectKind::Node, &format!("c{c}-k{k}")).map(|o| o.meta().version);
                            }
                        }
                    }
                }
            }
            (lat, errors)
        }));
    }
    // RSS of this process every `sample_every` seconds while the load runs.
    let every = Duration::from_secs(args.sample_every);
    let rss = bench_load::sample_rss(started, deadline, every, &commits, || bench_load::rss_mib("self")).await;
    let (lat, errors) = bench_load::join_clients(tasks).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let committed = lat.count();
    let peak_rss_mib = bench_load::peak_rss_mib("self").unwrap_or(f64::NAN);
    let halves = rss.halves(args.seconds as f64);

    let reproposals: u64 = stores.iter().map(|s| s.status().reproposals).sum();
    // Failover: stop the leader, time until a survivor commits.
    let failover_ms = if args.managers >= 3 {
        let leader = stores.iter().position(|s| s.status().role == Role::Leader).ok_or("no leader after the load")?;
        // The clock starts when the leader is told to stop, not once its
        // shutdown finished: the outage begins with the stop request.
        let t = Instant::now();
        stores[leader].shutdown().await;
        servers[leader].abort();
        let survivor = &stores[(leader + 1) % stores.len()];
        loop {
            match survivor.commit(tx("after-failover".into())).await {
                Ok(_) => break Some(t.elapsed().as_secs_f64() * 1000.0),
                Err(StoreError::NoQuorum(_) | StoreError::Indeterminate(_))
                    if t.elapsed() < Duration::from_secs(30) => {}
                Err(e) => return Err(e.into()),
            }
        }
    } else {
        None
    };
    for s in stores.iter() {
        s.shutdown().await;
    }
    for s in servers {
        s.abort();
    }
    let _ = std::fs::remove_dir_all(&dir);
    let out = serde_json::json!({
        "bench": "raft_bench",
        "managers": args.managers,
        "clients": args.clients,
        "seconds": args.seconds,
        "committed": committed,
        "errors": errors,
        "tx_per_sec": committed as f64 / elapsed,
        "keys": if args.keys == 0 { serde_json::Value::from("unbounded") } else { (per_client * args.clients).into() },
        "entry_bytes": entry_bytes,
        "p50_ms": lat.quantile_ms(0.50),
        "p99_ms": lat.quantile_ms(0.99),
        "max_ms": lat.max_ms(),
        "peak_rss_mib": peak_rss_mib,
        "baseline_rss_mib": baseline_rss_mib,
        "rss_first_half_max_mib": halves.map(|h| h.0),
        "rss_second_half_max_mib": halves.map(|h| h.1),
        "rss_flat": halves.map(|h| h.2 <= bench_load::FLAT_TOLERANCE),
        "rss_samples_mib": rss.json(),
        "rss_of": "the whole bench process: all managers and the clients",
        "failover_ms": failover_ms,
        "reproposals": reproposals,
        "dropped_frames": transports.iter().map(|t| t.dropped_frames()).sum::<u64>(),
        "transport": if args.tls { "tcp-mtls" } else { "tcp-loopback" },
        "log": "raft-engine, fsync per batch",
        "log_fs": log_fs,
    });
    println!("{out}");
    Ok(())
}
