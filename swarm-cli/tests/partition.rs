//! A network partition of a real multi-process cluster (issue #16): the
//! leader and one worker are cut off from the other two managers and the
//! other worker.
//!
//! Hosts are network namespaces the test creates (`swp<pid>-1` .. `-5`),
//! each with a veth pair to a bridge in a sixth "switch" namespace
//! (`swp<pid>-sw`), so the host's own network is untouched; they get
//! 10.<x>.<y>.1..5/24 (x, y from the test's pid). Hosts 1..3 run the
//! managers m1 (`init`, `--heartbeat 1s`), m2 and m3 (`--runtime sim`,
//! drained), hosts 4 and 5 the workers w4 and w5 (`--runtime docker`, on
//! the host's Docker Engine, whose socket is a file and so reachable from
//! any namespace; their containers are told apart by the node-id label).
//! Each `swarmd` runs under `ip netns exec`; the test drives it through
//! its state directory's control socket (also a file), `swarmctl` and the
//! `raft.status` call.
//!
//! The partition is a set of iptables DROP rules in the two minority
//! namespaces (the leader's and w4's): INPUT from and OUTPUT to every
//! majority address. Packets vanish (no reset), as on a real partition;
//! established connections stall. Healing flushes those chains.
//!
//! The test asserts, each within a bound (the whole test stays under
//! [`BUDGET`]):
//! - the majority elects a new leader; the old leader steps down
//!   (check-quorum) although nobody can tell it so;
//! - writes through a majority manager work (the service is scaled from 4
//!   to 6 replicas) and the majority, once w4 misses its heartbeats, runs
//!   every replica on w5;
//! - w4's containers keep running all along the partition (the same ids
//!   as before it, checked when the majority has finished replacing them);
//! - after healing: all five nodes are ready, the old leader follows the
//!   new one, the service has exactly 6 running tasks and 6 running
//!   containers across both workers, and w4's containers, whose tasks
//!   were replaced (ORPHANED), are removed: the reaper deletes orphaned
//!   tasks once their node is ready again, and w4's agent removes the
//!   containers of tasks no longer assigned to it.
//!
//! It needs root (namespaces, veths, iptables), `ip`, `iptables` and a
//! Docker Engine: without them it is a recorded skip, and a failure under
//! CI. Namespaces, processes and containers are removed by Drop guards,
//! also when it fails.

mod support;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Daemon, Lab, ctl, ctl_json, eventually};
use swarm_cli::membership::RaftStatus;
use swarm_conformance::skip::skip;
use swarm_core::model::Labels;
use swarm_core::runtime::{ContainerState, Runtime, labels};
use swarm_runtime_docker::{DockerRuntime, DockerRuntimeOptions, fixture};
use swarm_security::rpc::RpcClient;

/// The whole test's time bound.
const BUDGET: Duration = Duration::from_secs(120);

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// Runs a command; its stderr on failure.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The test's hosts: namespaces `<prefix>-1..=n` wired to a bridge in
/// `<prefix>-sw`. Dropping it deletes every namespace (and so the veths
/// and the iptables rules in them).
struct Net {
    prefix: String,
    hosts: u8,
    subnet: [u8; 2],
    created: Vec<String>,
}

impl Net {
    fn new(hosts: u8) -> Result<Net, String> {
        let pid = std::process::id();
        let mut net = Net {
            prefix: format!("swp{pid}"),
            hosts,
            subnet: [10 + ((pid >> 8) % 240) as u8, (pid & 0xff) as u8],
            created: Vec::new(),
        };
        let sw = net.switch();
        net.add_ns(&sw)?;
        run("ip", &["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 1..=hosts {
            let ns = net.ns(i);
            net.add_ns(&ns)?;
            let port = format!("p{i}");
            run("ip", &["link", "add", &port, "netns", &sw, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            run("ip", &["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            run("ip", &["-n", &ns, "addr", "add", &format!("{}/24", net.ip(i)), "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn add_ns(&mut self, name: &str) -> Result<(), String> {
        run("ip", &["netns", "add", name])?;
        self.created.push(name.to_owned());
        Ok(())
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    fn ns(&self, host: u8) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn ip(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.subnet[0], self.subnet[1], host))
    }

    fn iptables(&self, host: u8, args: &[&str]) -> Result<(), String> {
        let ns = self.ns(host);
        let mut all = vec!["netns", "exec", &ns, "iptables", "-w"];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Cuts `minority` off from every other host: DROP rules in the
    /// minority's namespaces, both directions.
    fn isolate(&self, minority: &[u8]) -> Result<(), String> {
        for &m in minority {
            for other in (1..=self.hosts).filter(|h| !minority.contains(h)) {
                let addr = self.ip(other).to_string();
                self.iptables(m, &["-A", "INPUT", "-s", &addr, "-j", "DROP"])?;
                self.iptables(m, &["-A", "OUTPUT", "-d", &addr, "-j", "DROP"])?;
            }
        }
        Ok(())
    }

    /// Removes the partition's rules.
    fn heal(&self, minority: &[u8]) -> Result<(), String> {
        for &m in minority {
            self.iptables(m, &["-F", "INPUT"])?;
            self.iptables(m, &["-F", "OUTPUT"])?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            if let Err(e) = run("ip", &["netns", "del", ns]) {
                eprintln!("partition test cleanup: {e}");
            }
        }
    }
}

/// Removes every container of `nodes` (also when the test failed). Built
/// before the daemons, so dropped after them: no agent recreates anything.
struct Containers<'a> {
    rt: &'a DockerRuntime,
    nodes: Vec<String>,
}

impl Containers<'_> {
    fn of(&self, node: &str) -> Vec<swarm_core::runtime::ContainerSummary> {
        let mut sel = Labels::new();
        sel.insert(labels::NODE_ID.into(), node.into());
        block_on(self.rt.list(&sel)).unwrap()
    }

    /// The ids of `node`'s running containers of service `service`.
    fn running(&self, node: &str, service: &str) -> BTreeSet<String> {
        self.of(node)
            .into_iter()
            .filter(|c| c.state == ContainerState::Running)
            .filter(|c| c.labels.get(labels::SERVICE_NAME).is_some_and(|s| s == service))
            .map(|c| c.id)
            .collect()
    }
}

impl Drop for Containers<'_> {
    fn drop(&mut self) {
        for n in &self.nodes {
            let mut sel = Labels::new();
            sel.insert(labels::NODE_ID.into(), n.clone());
            for c in block_on(self.rt.list(&sel)).unwrap_or_default() {
                let _ = block_on(self.rt.remove(&c.id));
            }
        }
    }
}

/// `raft.status` on a manager's control socket (answered locally, no
/// quorum needed).
fn raft_status(socket: &Path) -> Option<RaftStatus> {
    block_on(async {
        let client = RpcClient::unix(socket);
        let call = client.call::<_, RaftStatus>("raft.status", &());
        tokio::time::timeout(Duration::from_secs(3), call).await.ok()?.ok()
    })
}

fn running_tasks(socket: &Path, service: &str) -> Option<usize> {
    let tasks = ctl_json(socket, &["service", "ps", service]).ok()?;
    Some(tasks.as_array()?.iter().filter(|t| t["status"]["state"] == "running").count())
}

/// The state (`ready`, `down`, ...) of each node by hostname, as `socket`'s
/// manager reads it.
fn node_states(socket: &Path) -> Option<Vec<(String, String)>> {
    let nodes = ctl_json(socket, &["node", "ls"]).ok()?;
    Some(
        nodes
            .as_array()?
            .iter()
            .map(|n| {
                let name = n["description"]["hostname"].as_str().unwrap_or_default().to_owned();
                (name, n["status"]["state"].as_str().unwrap_or_default().to_owned())
            })
            .collect(),
    )
}

/// The time left of the test's budget, at most `d`.
struct Budget(Instant);

impl Budget {
    fn at_most(&self, d: Duration) -> Duration {
        d.min(self.0.saturating_duration_since(Instant::now()))
    }
}

#[test]
fn a_partitioned_leader_steps_down_the_majority_goes_on_and_the_minority_reconciles_after_healing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("needs root: network namespaces, veths and iptables");
    }
    for tool in [["ip", "-V"], ["iptables", "-V"]] {
        if let Err(e) = run(tool[0], &tool[1..]) {
            return skip(&format!("needs {}: {e}", tool[0]));
        }
    }
    let rt = match DockerRuntime::connect(DockerRuntimeOptions::default()) {
        Ok(rt)
            if block_on(async { tokio::time::timeout(Duration::from_secs(5), rt.ping()).await })
                .is_ok_and(|r| r.is_ok()) =>
        {
            rt
        }
        Ok(_) => return skip("needs a Docker Engine that answers"),
        Err(e) => return skip(&format!("needs a Docker Engine: {e}")),
    };
    let budget = Budget(Instant::now() + BUDGET);
    let started = Instant::now();
    let image = block_on(fixture::ensure_test_image(rt.client())).expect("the test image");
    let net = match Net::new(5) {
        Ok(net) => net,
        Err(e) => return skip(&format!("needs network namespaces: {e}")),
    };
    let service = format!("part{}", std::process::id());
    let mut containers = Containers { rt: &rt, nodes: Vec::new() };
    let lab = Lab::new(0);

    // The cluster: m1..m3 on hosts 1..3, w4 and w5 on hosts 4 and 5.
    let m1 = lab
        .spawn_in(&net.ns(1), "m1", net.ip(1), "sim", &["init"], &["--heartbeat".into(), "1s".into()])
        .unwrap_or_else(|e| panic!("{e}"));
    let (wt, mt) = (m1.worker_token.clone().unwrap(), m1.manager_token.clone().unwrap());
    let via = m1.daemon.api.to_string();
    let mut daemons: Vec<Daemon> = vec![m1.daemon];
    for (host, name, token, runtime) in
        [(2, "m2", &mt, "sim"), (3, "m3", &mt, "sim"), (4, "w4", &wt, "docker"), (5, "w5", &wt, "docker")]
    {
        let d = lab
            .spawn_in(
                &net.ns(host),
                name,
                net.ip(host),
                runtime,
                &["join"],
                &["--token".into(), token.clone(), via.clone()],
            )
            .unwrap_or_else(|e| panic!("{e}"))
            .daemon;
        if runtime == "docker" {
            containers.nodes.push(d.node_id.clone());
        }
        daemons.push(d);
    }
    let (w4_id, w5_id) = (daemons[3].node_id.clone(), daemons[4].node_id.clone());
    let s1 = daemons[0].socket();
    eventually(budget.at_most(Duration::from_secs(30)), "5 nodes ready", || {
        let n = node_states(&s1)?;
        (n.iter().filter(|(_, s)| s == "ready").count() == 5).then_some(())
    });
    for m in ["m1", "m2", "m3"] {
        let out = ctl(&s1, &["node", "update", m, "--availability", "drain"]);
        assert!(out.ok, "drain {m}: {}", out.stderr);
    }
    let out = ctl(&s1, &["service", "create", &service, "--image", &image, "--replicas", "4"]);
    assert!(out.ok, "{}", out.stderr);
    eventually(budget.at_most(Duration::from_secs(60)), "4 containers running on the two workers", || {
        let (a, b) = (containers.running(&w4_id, &service), containers.running(&w5_id, &service));
        (a.len() + b.len() == 4 && !a.is_empty() && !b.is_empty()).then_some(())
    });
    eventually(budget.at_most(Duration::from_secs(30)), "4 running tasks", || {
        (running_tasks(&s1, &service) == Some(4)).then_some(())
    });

    // Who leads, and every manager's raft id.
    let managers: Vec<(usize, RaftStatus)> = (0..3)
        .map(|i| {
            let st = eventually(budget.at_most(Duration::from_secs(10)), "raft.status", || {
                raft_status(&daemons[i].socket()).filter(|s| s.leader.is_some())
            });
            (i, st)
        })
        .collect();
    let old_leader = managers[0].1.leader.unwrap();
    assert!(managers.iter().all(|(_, s)| s.leader == Some(old_leader)), "one leader: {managers:?}");
    let old = managers.iter().find(|(_, s)| s.raft_id == old_leader).expect("the leader is one of m1..m3").0;
    let majority: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let (old_socket, maj_socket) = (daemons[old].socket(), daemons[majority[0]].socket());
    let old_term = managers[old].1.term;
    let before = containers.running(&w4_id, &service);

    // The partition: the leader's host and w4's against the rest.
    let minority = [old as u8 + 1, 4];
    net.isolate(&minority).unwrap_or_else(|e| panic!("{e}"));
    let cut = Instant::now();

    // The majority elects another leader, in a later term, and the old
    // leader steps down on its own (check-quorum); each time is when the
    // test first saw it.
    let (mut new, mut elected, mut stepped_down) = (None, None, None);
    eventually(budget.at_most(Duration::from_secs(15)), "a new leader elected and the old one stepped down", || {
        if new.is_none() {
            let sts: Option<Vec<RaftStatus>> = majority.iter().map(|&i| raft_status(&daemons[i].socket())).collect();
            let sts = sts.unwrap_or_default();
            let l = sts.first().and_then(|s| s.leader).filter(|l| *l != old_leader);
            if let Some(l) = l
                && sts.iter().all(|s| s.leader == Some(l) && s.term > old_term)
            {
                (new, elected) = (Some(l), Some(cut.elapsed()));
            }
        }
        if stepped_down.is_none()
            && let Some(st) = raft_status(&old_socket)
            && st.leader != Some(st.raft_id)
        {
            stepped_down = Some(cut.elapsed());
        }
        (new.is_some() && stepped_down.is_some()).then_some(())
    });
    let (new, elected, stepped_down) = (new.unwrap(), elected.unwrap(), stepped_down.unwrap());

    // Writes through a majority manager work.
    eventually(budget.at_most(Duration::from_secs(15)), "scaling through a majority manager", || {
        ctl(&maj_socket, &["service", "scale", &format!("{service}=6")]).ok.then_some(())
    });
    // After w4's heartbeat grace the majority marks it down and runs
    // every replica on w5.
    eventually(budget.at_most(Duration::from_secs(30)), "the majority marks w4 down", || {
        node_states(&maj_socket)?.iter().any(|(n, s)| n == "w4" && s == "down").then_some(())
    });
    eventually(budget.at_most(Duration::from_secs(45)), "6 replicas running on w5", || {
        (containers.running(&w5_id, &service).len() == 6 && running_tasks(&maj_socket, &service) == Some(6))
            .then_some(())
    });
    // Meanwhile w4, cut off from every leader, keeps its containers.
    assert_eq!(containers.running(&w4_id, &service), before, "w4's containers run all along the partition");
    let old_st = raft_status(&old_socket).expect("the old leader answers locally");
    assert_ne!(old_st.leader, Some(old_st.raft_id), "the old leader stays a follower: {old_st:?}");
    let partitioned = cut.elapsed();

    // Heal, and everything reconciles.
    net.heal(&minority).unwrap_or_else(|e| panic!("{e}"));
    let healed = Instant::now();
    eventually(budget.at_most(Duration::from_secs(30)), "the old leader follows the new one", || {
        let st = raft_status(&old_socket)?;
        (st.leader == Some(new)).then_some(())
    });
    eventually(budget.at_most(Duration::from_secs(30)), "all 5 nodes ready again", || {
        let n = node_states(&maj_socket)?;
        (n.len() == 5 && n.iter().all(|(_, s)| s == "ready")).then_some(())
    });
    // The replaced tasks are ORPHANED; once w4 is ready again the reaper
    // deletes them, and w4's agent removes their containers (it removes
    // the containers of tasks no longer assigned to it).
    eventually(
        budget.at_most(Duration::from_secs(30)),
        "w4's orphaned tasks deleted, their containers removed",
        || {
            let tasks = ctl_json(&maj_socket, &["service", "ps", &service]).ok()?;
            let orphaned = tasks.as_array()?.iter().filter(|t| t["status"]["state"] == "orphaned").count();
            let on_w4: BTreeSet<String> = containers.of(&w4_id).into_iter().map(|c| c.id).collect();
            (orphaned == 0 && on_w4.is_disjoint(&before)).then_some(())
        },
    );
    eventually(budget.at_most(Duration::from_secs(30)), "exactly 6 replicas, as tasks and as containers", || {
        let tasks = running_tasks(&maj_socket, &service)?;
        let running = containers.running(&w4_id, &service).len() + containers.running(&w5_id, &service).len();
        (tasks == 6 && running == 6).then_some(())
    });
    // The old leader serves the same view (a linearizable read through it).
    eventually(budget.at_most(Duration::from_secs(15)), "6 running tasks through the old leader", || {
        (running_tasks(&old_socket, &service) == Some(6)).then_some(())
    });
    for &i in &majority {
        assert_eq!(raft_status(&daemons[i].socket()).and_then(|s| s.leader), Some(new), "the leader stayed");
    }
    eprintln!(
        "partition test: new leader after {elected:?}, old leader down after {stepped_down:?}, partition held \
         {partitioned:?}, reconciled {:?} after healing, {:?} in all",
        healed.elapsed(),
        started.elapsed()
    );
}
