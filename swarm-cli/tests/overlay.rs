//! Overlay networks across hosts with swarmd (issue 18): two hosts as
//! network namespaces on one LAN, each running swarmd with the containerd
//! runtime and `--overlay`. The manager allocates the network's subnet,
//! VNI and each task's address; each node receives its overlay view with
//! its assignments and its data plane joins the VXLAN segment. A global
//! service on an overlay network has one task per host: the tasks reach
//! each other across the hosts by their allocated addresses, and a task
//! of another overlay network does not reach them. Service discovery
//! across nodes: each node's DNS server on the network's gateway answers
//! `swe2web` and `tasks.swe2web` (DNS round-robin: the task addresses on
//! both hosts) to the web tasks, whose resolv.conf points there; a GET by
//! the name (or the alias) of a service whose only task is on the other
//! host reaches it; the other network's task resolves none of the names.
//!
//! Needs root, iproute2, iptables and containerd: without them a recorded
//! skip, and a failure under CI. Names start with `swe2`; the namespaces,
//! the daemons and the containers are removed afterwards (Drop guards).

mod support;

use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;
use swarm_conformance::skip::skip;
use swarm_net::netns::{Lan, NetNs};

const IMAGE: &str = "swarm-e2e/busybox:1";
const CTD_NAMESPACE: &str = "swarm-rs";

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The service's tasks as `swarmctl service ps --format json` shows them.
fn tasks(socket: &std::path::Path, service: &str) -> Vec<Value> {
    ctl_json(socket, &["--format", "json", "service", "ps", service])
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// (task id, node id, address on `network`) of each running task.
fn running(socket: &std::path::Path, service: &str, network: &str) -> Vec<(String, String, String)> {
    tasks(socket, service)
        .iter()
        .filter(|t| t["status"]["state"] == "running")
        .filter_map(|t| {
            let addr = t["networks"].as_array()?.iter().find(|n| n["network"] == network)?["addresses"][0].as_str()?;
            Some((t["id"].as_str()?.to_owned(), t["node_id"].as_str()?.to_owned(), addr.to_owned()))
        })
        .collect()
}

/// `ctr` on the containerd swarmd uses, in its namespace.
fn ctr(args: &[&str]) -> Result<String, String> {
    let address = swarm_runtime_containerd::ContainerdConfig::default_address();
    let mut all = vec!["--address", address.to_str().unwrap_or_default(), "-n", CTD_NAMESPACE];
    all.extend(args);
    run("ctr", &all)
}

/// The containerd container of task `task` (its id holds the task name,
/// which holds the first 12 characters of the task id).
fn container_of(task: &str) -> Option<String> {
    let short: String = task.chars().take(12).collect();
    let list = ctr(&["containers", "ls", "-q"]).ok()?;
    list.lines().find(|c| c.contains(&short)).map(str::to_owned)
}

/// `GET /` on `addr:8080` (an address or a name) from inside container
/// `cid` (busybox nc).
fn fetch_from(cid: &str, addr: &str) -> Result<String, String> {
    exec_in(cid, &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {addr} 8080"))
}

/// Runs `script` with `sh -c` in container `cid`.
fn exec_in(cid: &str, script: &str) -> Result<String, String> {
    let exec_id = format!("swe2-{}", std::process::id());
    ctr(&["task", "exec", "--exec-id", &exec_id, cid, "sh", "-c", script])
}

/// The addresses busybox `nslookup NAME` prints in container `cid` (after
/// the server's own lines), or the error.
fn nslookup(cid: &str, name: &str) -> Result<Vec<String>, String> {
    let out = exec_in(cid, &format!("nslookup {name}"))?;
    let answers = out.split_once(&format!("Name:\t{name}")).map(|(_, a)| a).unwrap_or_default();
    let mut addrs: Vec<String> =
        answers.lines().filter_map(|l| l.strip_prefix("Address: ")).map(|a| a.trim().to_owned()).collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// Removes the test's services (and so their containers) and stops the
/// daemons, then removes through the runtime whatever of their tasks is
/// left (a failed test, a daemon stopped mid-removal): containers, their
/// network namespaces and veths, orphaned state. Also when the test fails.
struct Cleanup {
    socket: Option<std::path::PathBuf>,
    /// Each daemon with the network namespace of its host.
    daemons: Vec<(Daemon, String)>,
}

/// The containerd runtime of `daemon` (its namespace and state directory;
/// host side in `host_ns`), as swarmd made it.
async fn runtime_of(daemon: &Daemon, host_ns: &str) -> Option<swarm_runtime_containerd::ContainerdRuntime> {
    let cfg = swarm_runtime_containerd::ContainerdConfig {
        state_dir: daemon.dir.join("containerd"),
        host_netns: Some(format!("/run/netns/{host_ns}").into()),
        ..swarm_runtime_containerd::ContainerdConfig::new(CTD_NAMESPACE)
    };
    swarm_runtime_containerd::ContainerdRuntime::connect(cfg).await.ok()
}

/// The containers of node `node_id`.
async fn containers_of(rt: &swarm_runtime_containerd::ContainerdRuntime, node_id: &str) -> Vec<String> {
    use swarm_core::runtime::{Runtime, labels};
    let selector = swarm_core::model::Labels::from([(labels::NODE_ID.to_string(), node_id.to_string())]);
    rt.list(&selector).await.map(|l| l.into_iter().map(|c| c.id).collect()).unwrap_or_default()
}

impl Cleanup {
    async fn clean(&mut self) {
        use swarm_core::runtime::Runtime;
        let mut runtimes = Vec::new();
        for (d, ns) in &self.daemons {
            runtimes.extend(runtime_of(d, ns).await.map(|rt| (rt, d.node_id.clone(), d.dir.clone())));
        }
        if let Some(s) = &self.socket {
            for svc in ["swe2web", "swe2lone", "swe2api"] {
                let _ = ctl(s, &["service", "rm", svc]);
            }
            // The agents remove their containers (a container gone means
            // its network namespace and veths are gone too).
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let mut left = 0;
                for (rt, node, _) in &runtimes {
                    left += containers_of(rt, node).await.len();
                }
                if left == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        for (d, _) in &mut self.daemons {
            d.stop();
        }
        // What the daemons left (a failed test, a daemon stopped while
        // removing), removed as their runtimes would on their next start.
        for (rt, node, dir) in &runtimes {
            for id in containers_of(rt, node).await {
                let _ = rt.remove(&id).await;
            }
            if dir.join("containerd").join("containers").exists() {
                let _ = rt.remove_orphans().await;
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            rt.block_on(self.clean());
        }
    }
}

#[test]
fn tasks_on_an_overlay_network_reach_each_other_across_hosts() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("needs root: network namespaces, bridges, VXLAN and iptables");
    }
    for tool in [["ip", "-V"], ["iptables", "-V"], ["ctr", "--version"]] {
        if let Err(e) = run(tool[0], &tool[1..]) {
            return skip(&format!("needs {}: {e}", tool[0]));
        }
    }
    let address = swarm_runtime_containerd::ContainerdConfig::default_address();
    if !address.exists() {
        return skip(&format!("needs containerd (no socket at {})", address.display()));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(swarm_runtime_containerd::fixture::import_busybox(&address, CTD_NAMESPACE, IMAGE, true))
        .expect("the busybox image imported into containerd");

    let lan = match Lan::create("swe2") {
        Ok(l) => l,
        Err(e) => return skip(&format!("needs network namespaces: {e}")),
    };
    let hosts: Vec<NetNs> =
        [("h1", "10.252.0.1/24"), ("h2", "10.252.0.2/24")].iter().map(|(n, a)| lan.host(n, &[a]).unwrap()).collect();
    for h in &hosts {
        h.ip(&["link", "set", "lo", "up"]).unwrap();
        // Tasks' traffic is forwarded between their bridge and VXLAN.
        h.exec("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]).unwrap();
    }
    let ip = |i: u8| std::net::IpAddr::from([10, 252, 0, i]);
    let lab = Lab::new(0);
    let m1 = lab
        .spawn_in_net(
            hosts[0].name(),
            "m1",
            ip(1),
            "containerd",
            &["init"],
            &["--heartbeat".into(), "1s".into(), "--overlay".into()],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let token = m1.worker_token.clone().unwrap();
    let socket = m1.daemon.socket();
    let mut cleanup = Cleanup { socket: None, daemons: vec![(m1.daemon, hosts[0].name().to_string())] };
    let w2 = lab
        .spawn_in_net(
            hosts[1].name(),
            "w2",
            ip(2),
            "containerd",
            &["join"],
            &["--token".into(), token, "10.252.0.1:4242".into(), "--overlay".into()],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    cleanup.daemons.push((w2.daemon, hosts[1].name().to_string()));
    cleanup.socket = Some(socket.clone());
    eventually(Duration::from_secs(30), "2 nodes ready", || {
        (node_rows(&socket).iter().filter(|n| n["status"]["state"] == "ready").count() == 2).then_some(())
    });

    for (net, subnet) in [("swe2back", "10.253.1.0/24"), ("swe2other", "10.253.2.0/24")] {
        let out = ctl(&socket, &["network", "create", net, "--driver", "overlay", "--subnet", subnet]);
        assert!(out.ok, "network create {net}: {}", out.stderr);
    }
    let nets = ctl_json(&socket, &["--format", "json", "network", "ls"]).expect("network ls");
    let back = nets.as_array().unwrap().iter().find(|n| n["spec"]["name"] == "swe2back").expect("the network").clone();
    assert_eq!(back["subnet"], "10.253.1.0/24");
    assert!(back["vni"].as_u64().is_some_and(|v| v >= 4096), "a VNI from 4096: {back}");

    // Each task's page names its container (the hostname), so a GET by
    // name tells which task answered.
    let httpd = [
        "--command",
        "sh",
        "--command",
        "-c",
        "--command",
        "trap 'exit 0' TERM; mkdir -p /tmp/w; echo \"hello from $(hostname)\" > /tmp/w/index.html; httpd -f -p 8080 -h /tmp/w & wait",
    ];
    let mut args = vec!["service", "create", "swe2web", "--image", IMAGE, "--mode", "global", "--network", "swe2back"];
    args.extend(["--endpoint-mode", "dnsrr"]);
    args.extend(httpd);
    let out = ctl(&socket, &args);
    assert!(out.ok, "service create: {}", out.stderr);
    let mut args = vec!["service", "create", "swe2lone", "--image", IMAGE, "--network", "swe2other"];
    args.extend(["--constraint", "node.hostname==m1"]);
    args.extend(httpd);
    let out = ctl(&socket, &args);
    assert!(out.ok, "service create: {}", out.stderr);

    // Another service of the network, DNS round-robin, with an alias,
    // only on w2.
    let mut args = vec!["service", "create", "swe2api", "--image", IMAGE, "--network", "swe2back,alias=swe2db"];
    args.extend(["--endpoint-mode", "dnsrr", "--constraint", "node.hostname==w2"]);
    args.extend(httpd);
    let out = ctl(&socket, &args);
    assert!(out.ok, "service create: {}", out.stderr);

    let web = eventually(Duration::from_secs(90), "one web task running on each host", || {
        let r = running(&socket, "swe2web", "swe2back");
        if r.len() < 2 {
            for t in tasks(&socket, "swe2web") {
                eprintln!(
                    "DEBUG {} {} {} {}",
                    t["node_id"], t["status"]["state"], t["status"]["message"], t["status"]["err"]
                );
            }
        }
        (r.len() == 2 && r[0].1 != r[1].1).then_some(r)
    });
    for (_, _, addr) in &web {
        assert!(addr.starts_with("10.253.1."), "addresses from the network's subnet: {web:?}");
    }
    let lone = eventually(Duration::from_secs(60), "the other network's task running", || {
        running(&socket, "swe2lone", "swe2other").into_iter().next()
    });
    let api = eventually(Duration::from_secs(60), "the api task running", || {
        running(&socket, "swe2api", "swe2back").into_iter().next()
    });
    // Each web task reaches the other one, on the other host, by address.
    for (from, to) in [(&web[0], &web[1]), (&web[1], &web[0])] {
        let cid = eventually(Duration::from_secs(10), "the task's container", || container_of(&from.0));
        let answer = eventually(Duration::from_secs(20), "an answer across the overlay", || {
            fetch_from(&cid, &to.2).ok().filter(|a| a.contains("200 OK"))
        });
        assert!(answer.contains("hello"), "the page served by the task on the other host: {answer}");
    }
    // The other network's task does not reach them (same host or not).
    let cid = container_of(&lone.0).expect("the lone task's container");
    // (It does reach its own network: the exec and the server work.)
    let own = eventually(Duration::from_secs(20), "the lone task answers on its network", || {
        fetch_from(&cid, &lone.2).ok().filter(|a| a.contains("200 OK"))
    });
    assert!(own.contains("hello"), "{own}");
    for (_, _, addr) in &web {
        let r = fetch_from(&cid, addr);
        assert!(!r.as_ref().is_ok_and(|a| a.contains("200 OK")), "isolation: reached {addr} from swe2other: {r:?}");
    }

    // By name: each web task resolves the service (DNS round-robin) and
    // tasks.<service> to both tasks' addresses, from its node's DNS server
    // on the network's gateway.
    let started = Instant::now();
    let mut addrs: Vec<String> = web.iter().map(|w| w.2.clone()).collect();
    addrs.sort();
    let mut crossed = false;
    for from in &web {
        let cid = container_of(&from.0).expect("the web task's container");
        let resolv = exec_in(&cid, "cat /etc/resolv.conf").expect("resolv.conf");
        assert!(resolv.contains("nameserver 10.253.1.1"), "the network's gateway is the resolver: {resolv}");
        for name in ["swe2web", "tasks.swe2web"] {
            let got = eventually(Duration::from_secs(10), &format!("{name} resolves to both tasks"), || {
                nslookup(&cid, name).ok().filter(|a| *a == addrs)
            });
            assert_eq!(got, addrs);
        }
        // A GET by name reaches a web task (the client's resolver prefers
        // its own address among the answers, so it is the local one).
        let answer = eventually(Duration::from_secs(10), "an answer by name", || {
            fetch_from(&cid, "swe2web").ok().filter(|a| a.contains("200 OK"))
        });
        assert!(
            web.iter().any(|w| container_of(&w.0).is_some_and(|c| answer.contains(&c))),
            "the page names a web task's container: {answer}"
        );
        // swe2api's only task is on w2: by its name and its alias.
        let api_addr = vec![api.2.clone()];
        for name in ["swe2api", "swe2db"] {
            let got = eventually(Duration::from_secs(10), &format!("{name} resolves to the api task"), || {
                nslookup(&cid, name).ok().filter(|a| *a == api_addr)
            });
            assert_eq!(got, api_addr);
        }
        let answer = eventually(Duration::from_secs(10), "an answer from the api task by its alias", || {
            fetch_from(&cid, "swe2db").ok().filter(|a| a.contains("200 OK"))
        });
        let api_cid = container_of(&api.0).expect("the api task's container");
        assert!(answer.contains(&api_cid), "the api task's page: {answer}");
        crossed |= api.1 != from.1;
    }
    assert!(crossed, "a GET by name from the web task on m1 reached the api task on w2");
    // The other network's task cannot resolve the name (its resolver is its
    // own network's gateway) nor reach the service by it.
    let cid = container_of(&lone.0).expect("the lone task's container");
    for name in ["swe2web", "tasks.swe2web", "swe2api", "swe2db"] {
        let r = nslookup(&cid, name);
        assert!(r.as_ref().is_err() || r.as_ref().is_ok_and(|a| a.is_empty()), "{name} resolved from swe2other: {r:?}");
    }
    let r = fetch_from(&cid, "swe2web");
    assert!(!r.as_ref().is_ok_and(|a| a.contains("200 OK")), "reached swe2web by name from swe2other: {r:?}");
    eprintln!("name checks took {:?}", started.elapsed());
    drop(cleanup);
}
