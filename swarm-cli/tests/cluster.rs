//! A real multi-process cluster on loopback: `swarmd` managers and workers
//! as separate OS processes (sim runtime), driven with `swarmctl`.
//!
//! Each test has its own address block (127.<block>.0.x) and directory.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::{Lab, ctl, ctl_json, eventually};

fn running(socket: &std::path::Path, service: &str) -> Option<usize> {
    let tasks = ctl_json(socket, &["service", "ps", service]).ok()?;
    Some(tasks.as_array()?.iter().filter(|t| t["status"]["state"] == "running").count())
}

fn nodes(socket: &std::path::Path) -> Vec<Value> {
    ctl_json(socket, &["node", "ls"]).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
}

fn ready_nodes(socket: &std::path::Path) -> usize {
    nodes(socket).iter().filter(|n| n["status"]["state"] == "ready").count()
}

fn leader_name(socket: &std::path::Path) -> Option<String> {
    nodes(socket)
        .iter()
        .find(|n| n["manager_status"] == "leader")
        .and_then(|n| n["description"]["hostname"].as_str().map(str::to_owned))
}

#[test]
fn three_managers_and_two_workers_survive_the_leader_crash() {
    let lab = Lab::new(11);
    let m1 = lab.init("m1", 1);
    let wt = m1.worker_token.clone().expect("init prints the worker token");
    let mt = m1.manager_token.clone().expect("init prints the manager token");
    assert!(wt.starts_with("SWMTKN-1-") && mt.starts_with("SWMTKN-1-") && wt != mt);
    let mut daemons = vec![m1.daemon];
    for (i, name) in ["m2", "m3"].iter().enumerate() {
        daemons.push(lab.join(name, 2 + i as u8, &mt, daemons[0].api).daemon);
    }
    for (i, name) in ["w1", "w2"].iter().enumerate() {
        daemons.push(lab.join(name, 4 + i as u8, &wt, daemons[0].api).daemon);
    }
    let s1 = daemons[0].socket();
    eventually(Duration::from_secs(30), "5 nodes ready", || (ready_nodes(&s1) == 5).then_some(()));
    let managers: Vec<Value> = nodes(&s1).into_iter().filter(|n| n["spec"]["role"] == "manager").collect();
    assert_eq!(managers.len(), 3, "{managers:?}");

    let out = ctl(&s1, &["service", "create", "web", "--image", "busybox", "--replicas", "6"]);
    assert!(out.ok, "{}", out.stderr);
    eventually(Duration::from_secs(30), "6 replicas running", || (running(&s1, "web") == Some(6)).then_some(()));

    // SIGKILL the leader's process.
    let leader = eventually(Duration::from_secs(10), "a leader", || leader_name(&s1));
    let idx = daemons.iter().position(|d| d.name == leader).unwrap();
    daemons[idx].kill();
    let survivor = daemons.iter().find(|d| d.name.starts_with('m') && d.child.is_some()).unwrap().socket();

    // A new leader takes writes; the service converges at its new size.
    let new_leader =
        eventually(Duration::from_secs(30), "a new leader", || leader_name(&survivor).filter(|l| *l != leader));
    eventually(Duration::from_secs(30), "scale through a surviving manager", || {
        ctl(&survivor, &["service", "scale", "web=8"]).ok.then_some(())
    });
    eventually(Duration::from_secs(60), "8 replicas running after the crash", || {
        (running(&survivor, "web") == Some(8)).then_some(())
    });
    // The killed manager is down; the 4 others are ready.
    eventually(Duration::from_secs(30), "4 nodes ready", || (ready_nodes(&survivor) == 4).then_some(()));
    assert_ne!(new_leader, leader);
}

#[test]
fn joining_with_a_bad_token_is_refused_with_the_reason() {
    let lab = Lab::new(12);
    let m1 = lab.init("m1", 1);
    let wt = m1.worker_token.clone().unwrap();
    let api = m1.daemon.api;
    // Another cluster's token: its CA digest does not match.
    let other = Lab::new(13);
    let o1 = other.init("o1", 1);
    let foreign = o1.worker_token.clone().unwrap();
    let err = lab.try_join("w1", 2, &foreign, api).err().expect("refused");
    assert!(err.contains("digest"), "{err}");
    // Right CA, wrong secret.
    let mut forged = wt.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'a' { 'b' } else { 'a' });
    let err = lab.try_join("w2", 3, &forged, api).err().expect("refused");
    assert!(err.contains("not valid"), "{err}");
    // The real one works.
    lab.join("w3", 4, &wt, api);
}

#[test]
fn a_killed_worker_loses_its_tasks_and_rejoins_when_restarted() {
    let lab = Lab::new(14);
    let m1 = lab.init("m1", 1);
    let wt = m1.worker_token.clone().unwrap();
    let api = m1.daemon.api;
    let s1 = m1.daemon.socket();
    let _m1 = m1.daemon;
    let mut w1 = lab.join("w1", 2, &wt, api).daemon;
    let _w2 = lab.join("w2", 3, &wt, api).daemon;
    eventually(Duration::from_secs(30), "3 nodes ready", || (ready_nodes(&s1) == 3).then_some(()));
    // Keep the manager free of tasks so the workers carry them.
    assert!(ctl(&s1, &["node", "update", "m1", "--availability", "drain"]).ok);
    assert!(ctl(&s1, &["service", "create", "web", "--image", "busybox", "--replicas", "4"]).ok);
    eventually(Duration::from_secs(30), "4 running", || (running(&s1, "web") == Some(4)).then_some(()));

    let w1_id = w1.node_id.clone();
    w1.kill();
    // After the heartbeat grace (1 s * 3) w1 is down and its tasks run on w2.
    eventually(Duration::from_secs(30), "w1 down", || {
        nodes(&s1).iter().any(|n| n["description"]["hostname"] == "w1" && n["status"]["state"] == "down").then_some(())
    });
    eventually(Duration::from_secs(30), "4 running on w2", || {
        let tasks = ctl_json(&s1, &["service", "ps", "web"]).ok()?;
        let on_w2 = tasks.as_array()?.iter().filter(|t| t["status"]["state"] == "running").count();
        (on_w2 == 4).then_some(())
    });

    // Restarted on its state directory, it rejoins with its certificate.
    let w1 = lab.restart("w1", 2);
    assert_eq!(w1.daemon.node_id, w1_id, "same identity after the restart");
    eventually(Duration::from_secs(30), "3 nodes ready again", || (ready_nodes(&s1) == 3).then_some(()));
}

#[test]
fn force_new_cluster_recovers_a_cluster_that_lost_its_quorum() {
    let lab = Lab::new(15);
    let m1 = lab.init("m1", 1);
    let mt = m1.manager_token.clone().unwrap();
    let api = m1.daemon.api;
    let mut m1 = m1.daemon;
    let mut m2 = lab.join("m2", 2, &mt, api).daemon;
    let mut m3 = lab.join("m3", 3, &mt, api).daemon;
    let s1 = m1.socket();
    eventually(Duration::from_secs(30), "3 managers ready", || (ready_nodes(&s1) == 3).then_some(()));
    assert!(ctl(&s1, &["service", "create", "kept", "--image", "busybox", "--replicas", "2"]).ok);
    // Two of three managers are lost for good: no quorum.
    m2.kill();
    m3.kill();
    let out = eventually(Duration::from_secs(30), "writes refused without a quorum", || {
        let out = ctl(&s1, &["service", "create", "lost", "--image", "busybox"]);
        (!out.ok).then_some(out)
    });
    assert!(out.stderr.contains("quorum"), "{}", out.stderr);
    // The survivor forms a new cluster from its log.
    assert!(m1.stop().is_some());
    let m1 = lab.spawn("m1", 1, &["run"], &["--force-new-cluster".into()]).unwrap_or_else(|e| panic!("{e}")).daemon;
    let s1 = m1.socket();
    eventually(Duration::from_secs(30), "writes work again", || {
        ctl(&s1, &["service", "create", "after", "--image", "busybox"]).ok.then_some(())
    });
    let services = ctl_json(&s1, &["service", "ls"]).unwrap();
    let names: Vec<&str> = services.as_array().unwrap().iter().filter_map(|s| s["spec"]["name"].as_str()).collect();
    assert!(names.contains(&"kept") && names.contains(&"after"), "{names:?}");
    // A new manager joins the recovered cluster.
    let m4 = lab.join("m4", 4, &mt, m1.api).daemon;
    eventually(Duration::from_secs(30), "m4 is a voter", || {
        nodes(&s1)
            .iter()
            .any(|n| n["description"]["hostname"] == "m4" && n["manager_status"] == "reachable")
            .then_some(())
    });
    drop(m4);
}

#[test]
fn a_manager_restarted_at_a_new_address_rejoins() {
    let lab = Lab::new(16);
    let m1 = lab.init("m1", 1);
    let mt = m1.manager_token.clone().unwrap();
    let api = m1.daemon.api;
    let _m1 = m1.daemon;
    let _m2 = lab.join("m2", 2, &mt, api).daemon;
    let mut m3 = lab.join("m3", 3, &mt, api).daemon;
    let id = m3.node_id.clone();
    let s1 = _m1.socket();
    eventually(Duration::from_secs(30), "3 managers ready", || (ready_nodes(&s1) == 3).then_some(()));
    assert!(m3.stop().is_some());
    // Same state directory, another address (host 13 instead of 3).
    let m3 = lab.spawn("m3", 13, &["run"], &[]).unwrap_or_else(|e| panic!("{e}")).daemon;
    assert_eq!(m3.node_id, id);
    let s3 = m3.socket();
    eventually(Duration::from_secs(30), "the store has m3's new address", || {
        nodes(&s1)
            .iter()
            .any(|n| n["id"] == id.as_str() && n["manager"]["raft_addr"] == m3.raft.to_string())
            .then_some(())
    });
    // m3 serves writes (forwarded to the leader) and reads at its new address.
    eventually(Duration::from_secs(30), "a write through m3", || {
        ctl(&s3, &["service", "create", "moved", "--image", "busybox"]).ok.then_some(())
    });
    eventually(Duration::from_secs(30), "m3 reachable again", || {
        nodes(&s1).iter().any(|n| n["id"] == id.as_str() && n["manager_status"] != "unreachable").then_some(())
    });
}

fn standing(socket: &std::path::Path, host: &str) -> Option<String> {
    nodes(socket)
        .into_iter()
        .find(|n| n["description"]["hostname"] == host)
        .map(|n| n["manager_status"].as_str().unwrap_or("").to_owned())
}

#[test]
fn workers_are_promoted_and_the_leader_demoted_in_place() {
    let lab = Lab::new(18);
    let m1 = lab.init("m1", 1);
    let wt = m1.worker_token.clone().unwrap();
    let api = m1.daemon.api;
    let s1 = m1.daemon.socket();
    let _m1 = m1.daemon;
    let w1 = lab.join("w1", 2, &wt, api).daemon;
    let _w2 = lab.join("w2", 3, &wt, api).daemon;
    eventually(Duration::from_secs(30), "3 nodes ready", || (ready_nodes(&s1) == 3).then_some(()));
    assert!(ctl(&s1, &["service", "create", "web", "--image", "busybox", "--replicas", "3"]).ok);
    eventually(Duration::from_secs(30), "3 running", || (running(&s1, "web") == Some(3)).then_some(()));
    let before = ctl_json(&s1, &["service", "ps", "web"]).unwrap();

    // Promote both workers: they renew as managers and join raft in place.
    for w in ["w1", "w2"] {
        let out = ctl(&s1, &["node", "promote", w]);
        assert!(out.ok, "{}", out.stderr);
    }
    for w in ["w1", "w2"] {
        eventually(Duration::from_secs(60), &format!("{w} a voter"), || {
            (standing(&s1, w).as_deref() == Some("reachable")).then_some(())
        });
    }
    // A manager cannot be removed as it is.
    let out = ctl(&s1, &["node", "rm", "--force", "w2"]);
    assert!(!out.ok && out.stderr.contains("demote"), "{}", out.stderr);

    // Demote the leader: leadership moves first, then m1 leaves raft and
    // goes on as a worker.
    let s2 = w1.socket();
    assert!(ctl(&s1, &["node", "demote", "m1"]).ok);
    eventually(Duration::from_secs(60), "m1 no longer a manager", || {
        let n = nodes(&s2).into_iter().find(|n| n["description"]["hostname"] == "m1")?;
        (n["manager"].is_null() && n["spec"]["role"] == "worker" && n["status"]["state"] == "ready").then_some(())
    });
    eventually(Duration::from_secs(30), "a leader among the promoted", || {
        let l = leader_name(&s2)?;
        (l == "w1" || l == "w2").then_some(())
    });
    // Writes work through the promoted managers; the tasks never moved.
    eventually(Duration::from_secs(30), "scale through w1", || {
        ctl(&s2, &["service", "scale", "web=4"]).ok.then_some(())
    });
    eventually(Duration::from_secs(30), "4 running", || (running(&s2, "web") == Some(4)).then_some(()));
    let after = ctl_json(&s2, &["service", "ps", "web"]).unwrap();
    let ids = |v: &Value| -> std::collections::BTreeSet<String> {
        v.as_array()
            .unwrap()
            .iter()
            .filter(|t| t["status"]["state"] == "running")
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(ids(&before).is_subset(&ids(&after)), "the original tasks kept running through the role changes");
}

fn node_row(socket: &std::path::Path, host: &str) -> Option<Value> {
    nodes(socket).into_iter().find(|n| n["description"]["hostname"] == host)
}

#[test]
fn a_demotion_that_would_lose_the_reachable_quorum_is_refused() {
    let lab = Lab::new(33);
    let m1 = lab.init("m1", 1);
    let mt = m1.manager_token.clone().unwrap();
    let api = m1.daemon.api;
    let s1 = m1.daemon.socket();
    let _m1 = m1.daemon;
    let m2 = lab.join("m2", 2, &mt, api).daemon;
    let mut m3 = lab.join("m3", 3, &mt, api).daemon;
    let (m2_id, m3_id) = (m2.node_id.clone(), m3.node_id.clone());
    eventually(Duration::from_secs(30), "3 managers, each leader or reachable", || {
        let up = ["m1", "m2", "m3"]
            .iter()
            .filter(|h| matches!(standing(&s1, h).as_deref(), Some("leader" | "reachable")))
            .count();
        (up == 3).then_some(())
    });

    // m3 stops; once its heartbeats are missed it is unreachable.
    assert!(m3.stop().is_some());
    eventually(Duration::from_secs(30), "m3 down and unreachable", || {
        let n = node_row(&s1, "m3")?;
        (n["status"]["state"] == "down" && n["manager_status"] == "unreachable").then_some(())
    });
    let before = node_row(&s1, "m2").unwrap();
    let out = ctl(&s1, &["node", "demote", "m2"]);
    assert!(!out.ok, "demoting m2 with m3 down must be refused: {}", out.stdout);
    let why =
        format!("demoting node {m2_id} would leave 1 reachable manager of 2: a quorum needs 2 (unreachable: {m3_id})");
    assert!(out.stderr.contains(&why), "{}", out.stderr);
    // Nothing changed: m2 is still a manager and a voter.
    let after = node_row(&s1, "m2").unwrap();
    assert_eq!(after["spec"], before["spec"]);
    assert_eq!(after["manager"], before["manager"]);
    assert_eq!(after["spec"]["role"], "manager");
    assert!(matches!(standing(&s1, "m2").as_deref(), Some("leader" | "reachable")), "{after}");
    // The quorum that is left still takes writes.
    assert!(ctl(&s1, &["service", "create", "still", "--image", "busybox"]).ok);

    // With all three up, the same demotion goes through: m2 leaves raft
    // and goes on as a worker.
    let _m3 = lab.restart("m3", 3).daemon;
    eventually(Duration::from_secs(30), "m3 reachable again", || {
        (standing(&s1, "m3").as_deref() == Some("reachable")).then_some(())
    });
    let out = ctl(&s1, &["node", "demote", "m2"]);
    assert!(out.ok, "{}", out.stderr);
    eventually(Duration::from_secs(60), "m2 a worker, out of raft", || {
        let n = node_row(&s1, "m2")?;
        (n["spec"]["role"] == "worker" && n["manager"].is_null() && n["status"]["state"] == "ready").then_some(())
    });
    drop(m2);
}
