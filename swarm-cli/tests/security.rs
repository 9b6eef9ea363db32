//! The security plane of a real multi-process cluster on loopback (issue
//! #15): a removed node is shut out, short certificates are renewed while
//! everything keeps working, and a restarted manager keeps its identity.
//!
//! Each test has its own address block (127.<block>.0.x, blocks 50-69).

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};
use support::{Daemon, Lab, ctl, ctl_json, eventually};
use swarm_security::files::NodeFiles;
use swarm_security::join::{self, JoinedNode};
use swarm_security::role::Role;
use swarm_security::rpc::{Reloadable, RpcClient};
use swarm_security::tls::client_config;

fn nodes(socket: &Path) -> Vec<Value> {
    ctl_json(socket, &["node", "ls"]).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
}

fn ready_nodes(socket: &Path) -> usize {
    nodes(socket).iter().filter(|n| n["status"]["state"] == "ready").count()
}

fn running(socket: &Path, service: &str) -> Option<usize> {
    let tasks = ctl_json(socket, &["service", "ps", service]).ok()?;
    Some(tasks.as_array()?.iter().filter(|t| t["status"]["state"] == "running").count())
}

fn leader_name(socket: &Path) -> Option<String> {
    nodes(socket)
        .iter()
        .find(|n| n["manager_status"] == "leader")
        .and_then(|n| n["description"]["hostname"].as_str().map(str::to_owned))
}

fn certs(d: &Daemon) -> NodeFiles {
    NodeFiles::new(d.dir.join("certs"))
}

/// The `not_after` of the certificate in `d`'s state directory.
fn not_after(d: &Daemon) -> Option<SystemTime> {
    Some(JoinedNode::load(&certs(d)).ok()?.identity().ok()?.not_after)
}

fn record(d: &Daemon) -> Value {
    serde_json::from_str(&std::fs::read_to_string(d.dir.join("node.json")).unwrap()).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A client of `manager`'s node API presenting the certificate files of
/// `node` (as its process would).
fn client_of(node: &Daemon, manager: &Daemon) -> RpcClient {
    let creds = JoinedNode::load(&certs(node)).unwrap().tls_credentials().unwrap();
    RpcClient::new(manager.api, Role::Manager.server_name(), Reloadable::new(client_config(&creds).unwrap())).unwrap()
}

#[test]
fn a_removed_worker_is_refused_everywhere_and_the_others_keep_working() {
    let lab = Lab::new(50);
    let m1 = lab.init("m1", 1);
    let wt = m1.worker_token.clone().unwrap();
    let m1 = m1.daemon;
    let s1 = m1.socket();
    let mut w1 = lab.join("w1", 2, &wt, m1.api).daemon;
    let w2 = lab.join("w2", 3, &wt, m1.api).daemon;
    eventually(Duration::from_secs(30), "3 nodes ready", || (ready_nodes(&s1) == 3).then_some(()));
    assert!(ctl(&s1, &["service", "create", "web", "--image", "busybox", "--replicas", "4"]).ok);
    eventually(Duration::from_secs(30), "4 running", || (running(&s1, "web") == Some(4)).then_some(()));

    let out = ctl(&s1, &["node", "rm", "--force", &w1.node_id]);
    assert!(out.ok, "node rm: {}", out.stderr);
    let reason = format!("node {} was removed from the cluster", w1.node_id);

    // The worker process itself is refused with the reason (its heartbeat
    // or session on the node API).
    eventually(Duration::from_secs(30), "w1's log names the removal", || w1.log_text().contains(&reason).then_some(()));
    // ... its agent stops, and swarmd exits with an error saying why
    // instead of retrying forever.
    let status = eventually(Duration::from_secs(30), "w1's swarmd exits", || {
        w1.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    });
    assert!(!status.success(), "{status}");
    assert!(w1.log_text().contains("was removed from the cluster (swarmctl node rm)"), "{}", w1.log_text());
    // Its certificate files, used directly: a session call and a renewal
    // are refused with the reason.
    let rt = rt();
    let client = client_of(&w1, &m1);
    let err = rt
        .block_on(client.call::<_, Value>("dispatcher.heartbeat", &serde_json::json!({"node_id": w1.node_id})))
        .unwrap_err();
    assert!(err.to_string().contains(&reason), "{err}");
    let before = std::fs::read_to_string(certs(&w1).cert_path()).unwrap();
    let err = rt.block_on(join::renew(&client, &certs(&w1))).unwrap_err();
    assert!(err.to_string().contains(&reason), "{err}");
    assert_eq!(std::fs::read_to_string(certs(&w1).cert_path()).unwrap(), before, "no new certificate written");

    // w2's certificate still works; the removed node does not come back.
    let err = rt.block_on(join::renew(&client_of(&w2, &m1), &certs(&w2))).err();
    assert!(err.is_none(), "w2 renews: {err:?}");
    eventually(Duration::from_secs(30), "the service back at 4 on m1 and w2", || {
        (running(&s1, "web") == Some(4)).then_some(())
    });
    assert!(ctl(&s1, &["service", "scale", "web=5"]).ok);
    eventually(Duration::from_secs(30), "5 running", || (running(&s1, "web") == Some(5)).then_some(()));
    let left = nodes(&s1);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|n| n["id"] != w1.node_id.as_str() && n["status"]["state"] == "ready"), "{left:?}");
}

#[test]
fn a_restarted_manager_keeps_its_identity_and_rejoins_raft() {
    let lab = Lab::new(51);
    let m1 = lab.init("m1", 1);
    let mt = m1.manager_token.clone().unwrap();
    let m1 = m1.daemon;
    let s1 = m1.socket();
    let mut m2 = lab.join("m2", 2, &mt, m1.api).daemon;
    let _m3 = lab.join("m3", 3, &mt, m1.api).daemon;
    eventually(Duration::from_secs(30), "3 managers ready", || (ready_nodes(&s1) == 3).then_some(()));
    let (id, raft_id) = (m2.node_id.clone(), record(&m2)["raft_id"].clone());
    assert!(raft_id.as_u64().is_some(), "{raft_id}");

    // A crash, then `swarmd run` on the same state directory.
    m2.kill();
    eventually(Duration::from_secs(30), "m2 seen down", || {
        nodes(&s1).iter().any(|n| n["id"] == id.as_str() && n["status"]["state"] == "down").then_some(())
    });
    let m2 = lab.restart("m2", 2).daemon;
    assert_eq!(m2.node_id, id, "same node id after the restart");
    assert_eq!(record(&m2)["raft_id"], raft_id, "same raft id after the restart");
    let s2 = m2.socket();

    // It serves writes (forwarded to the leader over raft) and reads.
    eventually(Duration::from_secs(30), "a write through the restarted manager", || {
        ctl(&s2, &["service", "create", "web", "--image", "busybox", "--replicas", "2"]).ok.then_some(())
    });
    eventually(Duration::from_secs(30), "m1 sees the service", || (running(&s1, "web") == Some(2)).then_some(()));
    eventually(Duration::from_secs(30), "m2 reads it back", || (running(&s2, "web") == Some(2)).then_some(()));

    // Still three managers, each once, all ready; the restarted one with
    // its old id.
    eventually(Duration::from_secs(30), "3 distinct managers ready", || {
        let all = nodes(&s2);
        let managers: Vec<&Value> = all.iter().filter(|n| n["spec"]["role"] == "manager").collect();
        let mut ids: Vec<&str> = managers.iter().filter_map(|n| n["id"].as_str()).collect();
        ids.sort();
        ids.dedup();
        (all.len() == 3
            && ids.len() == 3
            && ids.contains(&id.as_str())
            && managers.iter().all(|n| n["status"]["state"] == "ready"))
        .then_some(())
    });
}

/// The one long test: real time by nature.
#[test]
fn ten_second_certificates_are_renewed_and_keep_every_node_connected_for_a_minute() {
    let born = Instant::now();
    let lab = Lab::new(52);
    let short = ["--allow-short-certs".to_owned()];
    let init_args: Vec<String> =
        ["--heartbeat", "1s", "--cert-expiry", "10s", "--allow-short-certs"].iter().map(|s| s.to_string()).collect();
    let m1 = lab.spawn("m1", 1, &["init"], &init_args).unwrap_or_else(|e| panic!("{e}"));
    let (wt, mt) = (m1.worker_token.clone().unwrap(), m1.manager_token.clone().unwrap());
    let m1 = m1.daemon;
    let join_args = |token: &str| -> Vec<String> {
        let mut a = vec!["--token".to_owned(), token.to_owned(), m1.api.to_string()];
        a.extend(short.iter().cloned());
        a
    };
    let m2 = lab.spawn("m2", 2, &["join"], &join_args(&mt)).unwrap_or_else(|e| panic!("{e}")).daemon;
    let w1 = lab.spawn("w1", 3, &["join"], &join_args(&wt)).unwrap_or_else(|e| panic!("{e}")).daemon;
    let s1 = m1.socket();
    eventually(Duration::from_secs(30), "3 nodes ready", || (ready_nodes(&s1) == 3).then_some(()));
    for d in [&m1, &m2, &w1] {
        let left = not_after(d).unwrap().duration_since(SystemTime::now()).unwrap_or_default();
        assert!(left <= Duration::from_secs(10), "{}: a 10 s certificate, {left:?} left", d.name);
    }
    assert!(ctl(&s1, &["service", "create", "web", "--image", "busybox", "--replicas", "3"]).ok);
    eventually(Duration::from_secs(30), "3 running", || (running(&s1, "web") == Some(3)).then_some(()));
    let leader = eventually(Duration::from_secs(10), "a leader", || leader_name(&s1));
    let follower = if leader == "m1" { &m2 } else { &m1 };
    let sf = follower.socket();

    let mut seen: Vec<Vec<SystemTime>> = vec![Vec::new(); 3];
    let start = Instant::now();
    let mut round = 0;
    while start.elapsed() < Duration::from_secs(60) {
        round += 1;
        for (i, d) in [&m1, &m2, &w1].iter().enumerate() {
            if let Some(t) = not_after(d)
                && seen[i].last() != Some(&t)
            {
                seen[i].push(t);
            }
        }
        let all = nodes(&sf);
        assert!(
            all.len() == 3 && all.iter().all(|n| n["status"]["state"] == "ready"),
            "round {round} at {:?}: every node ready: {all:?}",
            start.elapsed()
        );
        assert_eq!(running(&sf, "web"), Some(3), "round {round} at {:?}: replicas", start.elapsed());
        // A write through the follower: forwarded to the leader over raft
        // (mutual TLS, certificates renewed on both ends).
        let name = format!("s{round}");
        let file = lab.dir.path().join(&name);
        std::fs::write(&file, name.as_bytes()).unwrap();
        let out = ctl(&sf, &["secret", "create", &name, &file.display().to_string()]);
        assert!(out.ok, "round {round} at {:?}: write through {}: {}", start.elapsed(), follower.name, out.stderr);
        std::thread::sleep(Duration::from_secs(2));
    }
    for (i, name) in ["m1", "m2", "w1"].iter().enumerate() {
        // 60 s of 10 s certificates renewed at 50-80 % of their life.
        assert!(seen[i].len() >= 6, "{name}: certificate rewritten {} times: {:?}", seen[i].len(), seen[i]);
        // ... and not more often than every 5 s (no renewal storm).
        assert!(seen[i].len() <= 14, "{name}: certificate rewritten {} times: {:?}", seen[i].len(), seen[i]);
        assert!(seen[i].windows(2).all(|w| w[0] < w[1]), "{name}: not_after advances");
    }
    for d in [&m1, &m2, &w1] {
        let log = d.log_text();
        let renewals = log.matches("node certificate renewed").count();
        let lived = born.elapsed();
        assert!(
            renewals >= 6 && renewals as u64 <= lived.as_secs() / 5 + 1,
            "{}: {renewals} renewals in at most {lived:?}:\n{log}",
            d.name
        );
    }
}

/// Task ids of `service`'s running tasks, sorted.
fn running_ids(socket: &Path, service: &str) -> Vec<String> {
    let tasks = ctl_json(socket, &["service", "ps", service]).ok();
    let mut ids: Vec<String> = tasks
        .and_then(|t| t.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|t| t["status"]["state"] == "running")
        .filter_map(|t| t["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// The root certificates in `d`'s `ca.crt`, DER.
fn trusted_roots(d: &Daemon) -> Vec<Vec<u8>> {
    let pem = certs(d).read_ca_cert().unwrap();
    swarm_security::tls::certs_from_pem(&pem, "ca.crt").unwrap().iter().map(|c| c.as_ref().to_vec()).collect()
}

/// Whether `d`'s node certificate was issued by the root `root` (DER).
fn issued_by(d: &Daemon, root: &[u8]) -> bool {
    let creds = JoinedNode::load(&certs(d)).and_then(|n| n.tls_credentials().map_err(join::JoinError::Tls));
    creds.is_ok_and(|c| c.issued_by(&rustls::pki_types::CertificateDer::from(root.to_vec())))
}

#[test]
fn a_ca_rotation_with_three_managers_and_two_workers_keeps_every_service_running_and_every_node_connected() {
    let lab = Lab::new(53);
    let m1 = lab.init("m1", 1);
    let (wt, mt) = (m1.worker_token.clone().unwrap(), m1.manager_token.clone().unwrap());
    let m1 = m1.daemon;
    let s1 = m1.socket();
    let m2 = lab.join("m2", 2, &mt, m1.api).daemon;
    let m3 = lab.join("m3", 3, &mt, m1.api).daemon;
    let w1 = lab.join("w1", 4, &wt, m1.api).daemon;
    let w2 = lab.join("w2", 5, &wt, m1.api).daemon;
    let all = [&m1, &m2, &m3, &w1, &w2];
    eventually(Duration::from_secs(30), "5 nodes ready", || (ready_nodes(&s1) == 5).then_some(()));
    assert!(ctl(&s1, &["service", "create", "web", "--image", "busybox", "--replicas", "6"]).ok);
    let tasks = eventually(Duration::from_secs(30), "6 running", || {
        let ids = running_ids(&s1, "web");
        (ids.len() == 6).then_some(ids)
    });
    let old_root = trusted_roots(&m1);
    assert_eq!(old_root.len(), 1);
    for d in all {
        assert!(issued_by(d, &old_root[0]), "{}: issued by the first root", d.name);
    }
    // A copy of w1's credentials of the old root, to try once it is dropped.
    let before = lab.dir.path().join("w1-old-certs");
    std::fs::create_dir_all(&before).unwrap();
    for f in ["ca.crt", "node.crt", "node.key"] {
        std::fs::copy(certs(&w1).cert_path().with_file_name(f), before.join(f)).unwrap();
    }

    let out = ctl(&s1, &["ca", "--rotate", "--detach"]);
    assert!(out.ok, "ca --rotate: {}", out.stderr);
    assert!(out.stdout.contains("CA rotation started: 5 node(s) to renew"), "{}", out.stdout);

    // Until the rotation finishes: every node stays ready, the service's
    // tasks are the same six, and writes keep working.
    let started = Instant::now();
    let mut polls = 0;
    let new_root = loop {
        polls += 1;
        let status = ctl_json(&s1, &["ca"]).unwrap_or_else(|e| panic!("swarmctl ca: {e}"));
        assert_eq!(ready_nodes(&s1), 5, "every node connected during the rotation: {status}");
        assert_eq!(running_ids(&s1, "web"), tasks, "the service's tasks untouched during the rotation");
        if status["rotation"]["in_progress"] == false {
            break status["rotation"]["signing_root_pem"].as_str().unwrap().to_owned();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "rotation not finished in 60 s: {status}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(polls > 1, "the rotation was observed in progress at least once");
    let new_root = swarm_security::tls::certs_from_pem(&new_root, "new root").unwrap()[0].as_ref().to_vec();
    assert_ne!(new_root, old_root[0]);

    // Every node renewed onto the new root and, with its next heartbeats,
    // trusts only it.
    for d in all {
        assert!(issued_by(d, &new_root), "{}: renewed onto the new root", d.name);
        eventually(Duration::from_secs(20), &format!("{} trusts only the new root", d.name), || {
            (trusted_roots(d) == [new_root.clone()]).then_some(())
        });
        assert_eq!(JoinedNode::load(&certs(d)).unwrap().node_id, d.node_id, "{}: same identity", d.name);
    }
    assert_eq!(ready_nodes(&s1), 5);
    assert_eq!(running_ids(&s1, "web"), tasks);
    assert!(ctl(&s1, &["service", "scale", "web=8"]).ok);
    eventually(Duration::from_secs(30), "8 running after the rotation", || {
        (running(&s1, "web") == Some(8)).then_some(())
    });

    // The old root is gone: w1's old credentials are refused.
    let rt = rt();
    let old = JoinedNode::load(&NodeFiles::new(&before)).unwrap().tls_credentials().unwrap();
    let old_client =
        RpcClient::new(m1.api, Role::Manager.server_name(), Reloadable::new(client_config(&old).unwrap())).unwrap();
    let err = rt.block_on(old_client.call::<_, Value>("ca.rotation", &serde_json::json!({}))).unwrap_err();
    assert!(err.to_string().contains("TLS handshake"), "{err}");
    eventually(Duration::from_secs(5), "m1 logs why it refused the old certificate", || {
        m1.log_text().contains("refused a client certificate not valid under the cluster CA").then_some(())
    });

    // The join tokens were re-pinned to the new root: the old one is
    // refused for its CA digest, the new one (same secret) joins.
    let refused =
        lab.try_join("w3", 6, &wt, m1.api).err().unwrap_or_else(|| panic!("the pre-rotation token is refused"));
    assert!(refused.contains("digest"), "{refused}");
    let new_wt = ctl(&s1, &["join-token", "worker", "--quiet"]).stdout.trim().to_owned();
    assert_ne!(new_wt, wt);
    assert_eq!(new_wt.rsplit('-').next(), wt.rsplit('-').next(), "same secret");
    let w4 = lab.join("w4", 7, &new_wt, m1.api).daemon;
    eventually(Duration::from_secs(30), "6 nodes ready", || (ready_nodes(&s1) == 6).then_some(()));
    assert!(issued_by(&w4, &new_root));
}

/// `cfssl serve` on `addr` with the root `ca` (its key given to cfssl
/// only), killed on drop.
struct Cfssl(std::process::Child);

impl Drop for Cfssl {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cfssl_serve(dir: &Path, ca: &swarm_security::ca::ClusterCa, ip: &str, port: u16) -> Cfssl {
    std::fs::write(dir.join("root.pem"), ca.cert_pem()).unwrap();
    std::fs::write(dir.join("root-key.pem"), ca.key_pem()).unwrap();
    let config = r#"{"signing":{"default":{"expiry":"2160h","usages":["signing","digital signature","server auth","client auth"]}}}"#;
    std::fs::write(dir.join("cfssl.json"), config).unwrap();
    let log = std::fs::File::create(dir.join("cfssl.log")).unwrap();
    let child = std::process::Command::new("cfssl")
        .args(["serve", "-address", ip, "-port", &port.to_string(), "-loglevel", "1"])
        .arg("-ca")
        .arg(dir.join("root.pem"))
        .arg("-ca-key")
        .arg(dir.join("root-key.pem"))
        .arg("-config")
        .arg(dir.join("cfssl.json"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let server = Cfssl(child);
    eventually(Duration::from_secs(20), "cfssl serve listening", || {
        std::net::TcpStream::connect((ip, port)).ok().map(|_| ())
    });
    server
}

#[test]
fn an_external_ca_signs_every_certificate_and_its_key_stays_out_of_the_cluster() {
    if std::process::Command::new("cfssl").arg("version").output().is_err() {
        swarm_conformance::skip::skip("needs cfssl (Debian's golang-cfssl; scripts/setup-deps.sh installs it)");
        return;
    }
    let lab = Lab::new(54);
    let root = swarm_security::ca::ClusterCa::generate("external-root", Duration::from_secs(365 * 86_400)).unwrap();
    let cfssl = cfssl_serve(lab.dir.path(), &root, "127.54.0.9", 8888);
    let root_path = lab.dir.path().join("root.pem");
    let url = "http://127.54.0.9:8888";
    let m1 = lab.init_with("m1", 1, &["--external-ca", url, "--external-ca-cert", root_path.to_str().unwrap()]);
    let (wt, mt) = (m1.worker_token.clone().unwrap(), m1.manager_token.clone().unwrap());
    let m1 = m1.daemon;
    let s1 = m1.socket();
    let m2 = lab.join("m2", 2, &mt, m1.api).daemon;
    let w1 = lab.join("w1", 3, &wt, m1.api).daemon;
    eventually(Duration::from_secs(30), "3 nodes ready", || (ready_nodes(&s1) == 3).then_some(()));
    assert!(ctl(&s1, &["service", "create", "web", "--image", "busybox", "--replicas", "3"]).ok);
    eventually(Duration::from_secs(30), "3 running", || (running(&s1, "web") == Some(3)).then_some(()));
    // Every node trusts the external root and holds a certificate its key
    // signed, with the identity the managers chose.
    let root_der = root.cert_der().as_ref().to_vec();
    for d in [&m1, &m2, &w1] {
        assert_eq!(trusted_roots(d), std::slice::from_ref(&root_der), "{}", d.name);
        assert!(issued_by(d, &root_der), "{}: issued by the external CA", d.name);
        let id = JoinedNode::load(&certs(d)).unwrap().identity().unwrap();
        assert_eq!(id.node_id, d.node_id);
    }
    assert!(m1.log_text().contains("the external CA issued a node certificate"), "{}", m1.log_text());
    // The managers cannot rotate a root they hold no key of.
    let out = ctl(&s1, &["ca", "--rotate"]);
    assert!(!out.ok && out.stderr.contains("keeps"), "{} {}", out.stdout, out.stderr);

    // The signer gone: a join fails naming it; the cluster goes on.
    drop(cfssl);
    let err = lab.try_join("w2", 4, &wt, m1.api).err().unwrap_or_else(|| panic!("a join without the signer"));
    assert!(err.contains("external CA at http://127.54.0.9:8888"), "{err}");
    assert!(ctl(&s1, &["service", "scale", "web=4"]).ok);
    eventually(Duration::from_secs(30), "4 running", || (running(&s1, "web") == Some(4)).then_some(()));
}
