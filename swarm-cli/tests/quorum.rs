//! Raft quorum, live: managers as separate `swarmd` processes (sim
//! runtime) on loopback, killed with SIGKILL and restarted.
//!
//! - `quorum_of_N_managers`: Swarm's table (managers : quorum : failures
//!   tolerated = 1:1:0, 2:2:0, 3:2:1, 4:3:1, 5:3:2, 6:4:2, 7:4:3). Losing
//!   floor((n-1)/2) managers keeps writes working; one more and writes fail
//!   with "no quorum" while reads still show the last state, marked stale;
//!   restarting the lost managers restores writes.
//! - `leader_sigkill_under_client_load_is_linearizable`: clients write
//!   unique secrets and list them on every manager's local socket while the
//!   leader is killed; the history is checked for linearizability
//!   ([`swarm_core::harness::linearizability`]), the new leader's delay is
//!   bounded, workers re-attach and their tasks keep running untouched.
//!
//! Address blocks 21-27 and 30 (tests/cluster.rs uses 11-14).

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Daemon, Lab, ctl, ctl_json, eventually, leader_hostname, node_rows};
use swarm_core::harness::linearizability::{MAX_ELEMENTS, Op, OpKind, linearizable};
use swarm_core::model::SecretBytes;
use swarm_security::control::{ControlError, ControlReply, ControlRequest, RemoteCluster};

/// A shorter raft tick than the default 100 ms: elections after 500 ms,
/// a request without a leader fails after 1 s.
const TICK: [&str; 2] = ["--raft-tick", "50ms"];

fn ready_managers(socket: &Path) -> usize {
    node_rows(socket).iter().filter(|n| n["spec"]["role"] == "manager" && n["status"]["state"] == "ready").count()
}

/// The replicas `service ls` shows for `name`, and swarmctl's stderr.
fn replicas_seen(socket: &Path, name: &str) -> Result<(u64, String), String> {
    let out = ctl(socket, &["--format", "json", "service", "ls"]);
    if !out.ok {
        return Err(out.stderr);
    }
    let services: Value = serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {}", out.stdout))?;
    let s = services
        .as_array()
        .and_then(|a| a.iter().find(|s| s["spec"]["name"] == name))
        .ok_or_else(|| format!("no service {name} in {}", out.stdout))?;
    let replicas = s["spec"]["mode"]["replicas"].as_u64().ok_or_else(|| format!("no replicas in {s}"))?;
    Ok((replicas, out.stderr))
}

/// `n` managers m1..mn on hosts 1..n, all ready and with a leader.
fn start_managers(lab: &Lab, n: usize) -> Vec<Daemon> {
    let m1 = lab.init_with("m1", 1, &TICK);
    let token = m1.manager_token.clone().expect("init prints the manager token");
    let mut ds = vec![m1.daemon];
    for i in 2..=n {
        let api = ds[0].api;
        ds.push(lab.join_with(&format!("m{i}"), i as u8, &token, api, &TICK).daemon);
    }
    let s1 = ds[0].socket();
    eventually(Duration::from_secs(60), &format!("{n} managers ready with a leader"), || {
        (ready_managers(&s1) == n && leader_hostname(&s1).is_some()).then_some(())
    });
    ds
}

/// Kills `name` (SIGKILL) and returns its host number.
fn kill(ds: &mut [Daemon], name: &str) -> u8 {
    let i = ds.iter().position(|d| d.name == name).expect("a manager of the test");
    ds[i].kill();
    (i + 1) as u8
}

fn quorum_table(n: usize, block: u8) {
    let started = Instant::now();
    let tolerated = (n - 1) / 2;
    let quorum = n / 2 + 1;
    assert_eq!(n - tolerated, quorum, "Swarm's table: {n} managers, quorum {quorum}, {tolerated} tolerated");
    let lab = Lab::new(block);
    let mut ds = start_managers(&lab, n);
    let s1 = ds[0].socket();
    let out = ctl(&s1, &["service", "create", "web", "--image", "busybox", "--replicas", "0"]);
    assert!(out.ok, "{}", out.stderr);
    let setup = started.elapsed();

    // Lose `tolerated` managers, the leader first.
    let leader = leader_hostname(&s1).expect("a leader");
    let mut lost: Vec<String> = Vec::new();
    if tolerated > 0 {
        lost.push(leader.clone());
    }
    for d in ds.iter().rev() {
        if lost.len() >= tolerated {
            break;
        }
        if !lost.contains(&d.name) && d.name != "m1" {
            lost.push(d.name.clone());
        }
    }
    let mut hosts: BTreeMap<String, u8> = BTreeMap::new();
    for name in &lost {
        hosts.insert(name.clone(), kill(&mut ds, name));
    }
    let survivor = ds.iter().find(|d| d.child.is_some()).expect("a survivor").socket();
    // Writes still work through a survivor (after an election if the
    // leader was among the lost).
    eventually(Duration::from_secs(30), &format!("a write with {tolerated} of {n} managers lost"), || {
        ctl(&survivor, &["service", "scale", "web=1"]).ok.then_some(())
    });
    let (replicas, warn) = replicas_seen(&survivor, "web").expect("service ls with a quorum");
    assert_eq!(replicas, 1);
    assert!(!warn.contains("stale read"), "a read with a quorum is not stale: {warn}");

    // One more: no quorum.
    let next = ds
        .iter()
        .rev()
        .find(|d| d.child.is_some() && (n == 1 || d.socket() != survivor))
        .map(|d| d.name.clone())
        .expect("a manager to kill");
    hosts.insert(next.clone(), kill(&mut ds, &next));
    if n == 1 {
        // Nobody is left to ask: swarmctl says the manager is unreachable.
        let out = ctl(&survivor, &["service", "scale", "web=2"]);
        assert!(!out.ok && out.stderr.contains("swarmd.sock"), "{}", out.stderr);
    } else {
        let err = eventually(Duration::from_secs(30), "writes refused for want of a quorum", || {
            let out = ctl(&survivor, &["service", "scale", "web=2"]);
            assert!(!out.ok, "a write succeeded with {} of {n} managers lost", tolerated + 1);
            out.stderr.contains("no quorum").then_some(out.stderr)
        });
        assert!(err.starts_with("swarmctl: no quorum: manager "), "{err}");
        // The write's own read of the state, or its proposal, is what
        // fails; either way the store's reason reaches swarmctl intact.
        assert!(err.contains("a quorum is"), "{err}");
        // Reads answer with the last state, marked stale.
        let (replicas, warn) = replicas_seen(&survivor, "web").expect("service ls without a quorum");
        assert_eq!(replicas, 1, "the last state");
        assert!(warn.contains("swarmctl: warning: stale read: no quorum"), "{warn}");
        let out = ctl(&survivor, &["--format", "json", "node", "ls"]);
        assert!(out.ok, "node ls without a quorum: {}", out.stderr);
        let rows: Value = serde_json::from_str(&out.stdout).expect("node ls JSON");
        assert_eq!(rows.as_array().map(Vec::len), Some(n), "{rows}");
        assert!(out.stderr.contains("stale read: no quorum"), "{}", out.stderr);
    }
    let no_quorum = started.elapsed();

    // Restart the lost managers on their state directories: writes again.
    for (name, host) in &hosts {
        let restarted = lab.restart_with(name, *host, &TICK).daemon;
        let i = ds.iter().position(|d| &d.name == name).expect("known manager");
        ds[i] = restarted;
    }
    let survivor = ds[0].socket();
    eventually(Duration::from_secs(30), "a write after the restarts", || {
        ctl(&survivor, &["service", "scale", "web=3"]).ok.then_some(())
    });
    let (replicas, warn) = replicas_seen(&survivor, "web").expect("service ls after the restarts");
    assert_eq!(replicas, 3);
    assert!(!warn.contains("stale read"), "{warn}");
    eprintln!(
        "quorum {n} managers: setup {:.1}s, no-quorum phase at {:.1}s, restored at {:.1}s",
        setup.as_secs_f64(),
        no_quorum.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn quorum_of_1_manager() {
    quorum_table(1, 21);
}

#[test]
fn quorum_of_2_managers() {
    quorum_table(2, 22);
}

#[test]
fn quorum_of_3_managers() {
    quorum_table(3, 23);
}

#[test]
fn quorum_of_4_managers() {
    quorum_table(4, 24);
}

#[test]
fn quorum_of_5_managers() {
    quorum_table(5, 25);
}

#[test]
fn quorum_of_6_managers() {
    quorum_table(6, 26);
}

#[test]
fn quorum_of_7_managers() {
    quorum_table(7, 27);
}

// ---------------------------------------------------------------------------
// The leader killed under client load.

/// The history the clients record, in microseconds since the start.
#[derive(Default)]
struct History {
    ops: Vec<Op>,
    stale_reads: usize,
    failed_writes: usize,
    unknown_writes: usize,
}

struct Clients {
    sockets: Vec<PathBuf>,
    dead: Mutex<Option<usize>>,
    next_bit: AtomicU32,
    stop: AtomicBool,
    start: Instant,
    history: Mutex<History>,
}

impl Clients {
    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn socket(&self, turn: usize) -> PathBuf {
        let dead = *self.dead.lock().unwrap();
        let alive: Vec<&PathBuf> =
            self.sockets.iter().enumerate().filter(|(i, _)| Some(*i) != dead).map(|x| x.1).collect();
        alive[turn % alive.len()].clone()
    }
}

const SECRET_PREFIX: &str = "lin-";

fn bits_of(reply: &ControlReply) -> Option<u128> {
    let ControlReply::Secrets(secrets) = reply else { return None };
    let mut bits = 0u128;
    for s in secrets {
        if let Some(bit) = s.spec.name.strip_prefix(SECRET_PREFIX).and_then(|b| b.parse::<u32>().ok()) {
            bits |= 1u128.checked_shl(bit)?;
        }
    }
    Some(bits)
}

async fn client(c: Arc<Clients>, me: usize) {
    let mut turn = me;
    while !c.stop.load(Ordering::SeqCst) {
        turn += 1;
        let remote = RemoteCluster::unix(c.socket(turn));
        let write = turn % 2 == 0;
        let bit = if write { c.next_bit.fetch_add(1, Ordering::SeqCst) } else { 0 };
        if write && bit < MAX_ELEMENTS - 8 {
            let req = ControlRequest::CreateSecret {
                name: format!("{SECRET_PREFIX}{bit}"),
                data: SecretBytes(bit.to_le_bytes().to_vec()),
            };
            let call = c.now();
            let res = tokio::time::timeout(Duration::from_secs(15), remote.request(&req)).await;
            let ret = c.now();
            let mut h = c.history.lock().unwrap();
            match res {
                Ok(Ok(ControlReply::SecretId(_))) => h.ops.push(Op { call, ret: Some(ret), kind: OpKind::Add(bit) }),
                // The store says nothing was written: leave it out (if it
                // ever shows up, the check fails).
                Ok(Err(ControlError::NoQuorum { .. })) => h.failed_writes += 1,
                // Anything else may have been applied: outcome unknown.
                _ => {
                    h.unknown_writes += 1;
                    h.ops.push(Op { call, ret: None, kind: OpKind::Add(bit) })
                }
            }
        } else {
            let call = c.now();
            let res = tokio::time::timeout(Duration::from_secs(15), remote.request(&ControlRequest::ListSecrets)).await;
            let ret = c.now();
            let mut h = c.history.lock().unwrap();
            match res {
                Ok(Ok(ControlReply::Stale { .. })) => h.stale_reads += 1,
                Ok(Ok(reply)) => {
                    let bits = bits_of(&reply).expect("a list of secrets");
                    h.ops.push(Op { call, ret: Some(ret), kind: OpKind::Read(bits) });
                }
                // A failed read has no effect.
                _ => {}
            }
        }
        drop(remote);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
}

fn running_tasks(socket: &Path, service: &str) -> Option<BTreeMap<String, String>> {
    let tasks = ctl_json(socket, &["service", "ps", service]).ok()?;
    Some(
        tasks
            .as_array()?
            .iter()
            .filter(|t| t["status"]["state"] == "running")
            .map(|t| {
                (t["id"].as_str().unwrap_or_default().to_owned(), t["node_id"].as_str().unwrap_or_default().to_owned())
            })
            .collect(),
    )
}

#[test]
fn leader_sigkill_under_client_load_is_linearizable() {
    let mut lab = Lab::new(31);
    // The 1 s heartbeat of the other tests (grace 3 s): the workers must
    // reach the new leader within it. They did not always before the
    // dispatcher client's backoff was capped by the heartbeat period (it
    // could wait up to 5 s between attempts while bouncing between
    // managers during the election, and the new leader then marked both
    // workers down and replaced their tasks).
    lab.heartbeat = "1s";
    let m1 = lab.init("m1", 1);
    let (mt, wt) = (m1.manager_token.clone().unwrap(), m1.worker_token.clone().unwrap());
    let mut ds = vec![m1.daemon];
    for (i, name) in ["m2", "m3"].iter().enumerate() {
        let api = ds[0].api;
        ds.push(lab.join(name, 2 + i as u8, &mt, api).daemon);
    }
    for (i, name) in ["w1", "w2"].iter().enumerate() {
        let api = ds[0].api;
        ds.push(lab.join(name, 4 + i as u8, &wt, api).daemon);
    }
    let s1 = ds[0].socket();
    eventually(Duration::from_secs(60), "5 nodes ready", || {
        (node_rows(&s1).iter().filter(|n| n["status"]["state"] == "ready").count() == 5).then_some(())
    });
    // Tasks on the workers only.
    for m in ["m1", "m2", "m3"] {
        let out = ctl(&s1, &["node", "update", m, "--availability", "drain"]);
        assert!(out.ok, "{}", out.stderr);
    }
    let out = ctl(&s1, &["service", "create", "web", "--image", "busybox", "--replicas", "4"]);
    assert!(out.ok, "{}", out.stderr);
    let before =
        eventually(Duration::from_secs(30), "4 tasks running", || running_tasks(&s1, "web").filter(|t| t.len() == 4));
    let worker_ids: Vec<String> = ds[3..].iter().map(|d| d.node_id.clone()).collect();
    assert!(before.values().all(|n| worker_ids.contains(n)), "tasks on the workers only: {before:?}");

    let leader = eventually(Duration::from_secs(10), "a leader", || leader_hostname(&s1));
    let leader_idx = ds.iter().position(|d| d.name == leader).unwrap();

    let clients = Arc::new(Clients {
        sockets: ds[..3].iter().map(Daemon::socket).collect(),
        dead: Mutex::new(None),
        next_bit: AtomicU32::new(0),
        stop: AtomicBool::new(false),
        start: Instant::now(),
        history: Mutex::new(History::default()),
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let handles: Vec<_> = (0..4).map(|i| rt.spawn(client(clients.clone(), i))).collect();

    // Let the clients run, then kill the leader mid-run.
    let acked = |c: &Clients| c.history.lock().unwrap().ops.iter().filter(|o| o.ret.is_some()).count();
    eventually(Duration::from_secs(20), "clients under way", || (acked(&clients) >= 40).then_some(()));
    let killed_at = clients.now();
    ds[leader_idx].kill();
    *clients.dead.lock().unwrap() = Some(leader_idx);

    // Run until writes succeed again for a while (or the elements run out).
    let recovered = eventually(Duration::from_secs(30), "a write acknowledged after the kill", || {
        let h = clients.history.lock().unwrap();
        h.ops
            .iter()
            .filter(|o| o.call >= killed_at && matches!(o.kind, OpKind::Add(_)))
            .filter_map(|o| o.ret)
            .min()
            .map(|ret| Duration::from_micros(ret - killed_at))
    });
    std::thread::sleep(Duration::from_secs(2));
    clients.stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for h in handles {
            h.await.unwrap();
        }
    });
    // A last read through a survivor closes the history.
    let survivor = clients.socket(0);
    let last = rt.block_on(async {
        let call = clients.now();
        let reply = RemoteCluster::unix(&survivor).request(&ControlRequest::ListSecrets).await.unwrap();
        Op { call, ret: Some(clients.now()), kind: OpKind::Read(bits_of(&reply).expect("not stale")) }
    });
    let mut h = std::mem::take(&mut *clients.history.lock().unwrap());
    h.ops.push(last);
    let writes = h.ops.iter().filter(|o| matches!(o.kind, OpKind::Add(_)) && o.ret.is_some()).count();
    let reads = h.ops.iter().filter(|o| matches!(o.kind, OpKind::Read(_))).count();
    let after = h.ops.iter().filter(|o| o.call > killed_at && o.ret.is_some()).count();
    eprintln!(
        "leader {leader} killed at {:.2}s: first write acknowledged {:.2}s later; {writes} writes acknowledged, \
         {} unknown, {} refused (no quorum); {reads} linearizable reads, {} stale; {after} ops acknowledged after the kill",
        killed_at as f64 / 1e6,
        recovered.as_secs_f64(),
        h.unknown_writes,
        h.failed_writes,
        h.stale_reads
    );
    assert!(writes >= 10 && reads >= 10 && after >= 5, "too little happened to check anything");
    assert!(recovered < Duration::from_secs(10), "a new leader took writes only after {recovered:?}");
    let checked = Instant::now();
    assert!(linearizable(&h.ops), "history is not linearizable:\n{:#?}", h.ops);
    eprintln!("linearizability check: {} ops in {:?}", h.ops.len(), checked.elapsed());

    // A new leader, the killed one down, the workers ready (re-attached to
    // the new leader's dispatcher: they would be down after the grace of 3
    // heartbeats otherwise).
    let new_leader =
        eventually(Duration::from_secs(30), "a new leader", || leader_hostname(&survivor).filter(|l| *l != leader));
    eventually(Duration::from_secs(30), "workers ready and the old leader down", || {
        let rows = node_rows(&survivor);
        let state = |name: &str| {
            rows.iter().find(|n| n["description"]["hostname"] == name).map(|n| n["status"]["state"].clone())
        };
        (state(&leader) == Some("down".into())
            && state("w1") == Some("ready".into())
            && state("w2") == Some("ready".into()))
        .then_some(())
    });
    // The workers' tasks: the same ids still running on the same nodes.
    let after_kill = running_tasks(&survivor, "web").expect("service ps");
    assert_eq!(after_kill, before, "tasks of the surviving workers untouched (new leader {new_leader})");
}
