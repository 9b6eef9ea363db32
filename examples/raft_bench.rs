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
//! Prints one JSON object as the last line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm::model::{Node, Resources};
use swarm::raft::{RaftStore, RaftStoreConfig, Role, TcpTransport, TcpTransportConfig};
use swarm::state::Transaction;
use swarm::store::{Store, StoreError};
use tokio::net::TcpListener;

struct Args {
    managers: u64,
    clients: usize,
    seconds: u64,
    dir: PathBuf,
    allow_tmpfs: bool,
    tls: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a =
        Args { managers: 3, clients: 64, seconds: 10, dir: std::env::temp_dir(), allow_tmpfs: false, tls: false };
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
            other => {
                return Err(format!(
                    "unknown flag {other} (use --managers, --clients, --seconds, --dir, --allow-tmpfs, --tls)"
                ));
            }
        }
    }
    if !(1..=7).contains(&a.managers) || a.clients == 0 || a.seconds == 0 {
        return Err("--managers must be 1..7, --clients and --seconds positive".into());
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
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

fn tx(name: String) -> Transaction {
    Transaction::new().create(Node::ready(name.as_str(), "bench-host", Resources::default()))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
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
        let cfg = RaftStoreConfig::new(id, dir.join(format!("m{id}")), ids.clone());
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
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let stores = stores.clone();
        tasks.push(tokio::spawn(async move {
            let store = &stores[c % stores.len()];
            let (mut lat, mut errors, mut i) = (Vec::new(), 0u64, 0u64);
            while Instant::now() < deadline {
                let t = Instant::now();
                match store.commit(tx(format!("c{c}-{i}"))).await {
                    Ok(_) => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                    Err(e) => {
                        if errors == 0 {
                            eprintln!("client {c}: {e}");
                        }
                        errors += 1
                    }
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    let committed = lat.len();

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
        "p50_ms": percentile(&lat, 0.50),
        "p99_ms": percentile(&lat, 0.99),
        "max_ms": lat.last().copied().unwrap_or(f64::NAN),
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
