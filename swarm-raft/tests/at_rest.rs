//! Encryption at rest (issue 19): nothing a manager writes under its raft
//! directory (log files, snapshot images, key files) holds a secret's
//! value, in plain, base64 or hex; and the log still reads back after a
//! restart.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;
use swarm_core::model::{Secret, SecretBytes, SecretSpec};
use swarm_core::state::Transaction;

/// Every file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The forms a value could take on disk: as it is, base64 (as serde
/// writes SecretBytes), hex in both cases.
fn forms(value: &[u8]) -> Vec<(String, Vec<u8>)> {
    let b64 = serde_json::to_string(&SecretBytes(value.to_vec())).expect("encode");
    let b64 = b64.trim_matches('"').trim_end_matches('=').to_string();
    let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        ("plain".into(), value.to_vec()),
        ("base64".into(), b64.into_bytes()),
        ("hex".into(), hex.clone().into_bytes()),
        ("HEX".into(), hex.to_uppercase().into_bytes()),
    ]
}

fn hits(dir: &Path, value: &[u8]) -> Vec<String> {
    let mut all = Vec::new();
    files(dir, &mut all);
    assert!(!all.is_empty(), "no file under {}", dir.display());
    let mut found = Vec::new();
    for f in &all {
        let bytes = std::fs::read(f).expect("read file");
        for (form, needle) in forms(value) {
            if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                found.push(format!("{} ({form})", f.display()));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_value_reaches_a_managers_disk() {
    // Snapshots every 50 entries: the secret is in the log and in images.
    let mut c = Cluster::start_with(3, 37, |cfg| cfg.with_snapshot_interval(50, 10)).await;
    c.leader(Duration::from_secs(5)).await;
    let marker = b"marker-7f3a9c2e-d41b-4e0f-a1c5-secret-value".to_vec();
    let secret = Secret {
        id: "sec1".into(),
        spec: SecretSpec { name: "db-password".into(), data: SecretBytes(marker.clone()), ..Default::default() },
        ..Default::default()
    };
    commit_retry(c.any(), Transaction::new().create(secret), Duration::from_secs(5)).await.expect("secret");
    for i in 0..200 {
        commit_retry(c.any(), node_tx(&format!("n{i}")), Duration::from_secs(5)).await.expect("write");
    }
    c.converge(Duration::from_secs(5)).await;
    for id in 1..=3 {
        assert!(c.store(id).status().snapshot_index > 50, "manager {id} took a snapshot");
    }
    // The test can see the marker when it is there: the known plaintext
    // forms of a value are found in a file that holds them.
    let probe = c.tmp.path().join("probe");
    std::fs::create_dir_all(&probe).unwrap();
    std::fs::write(probe.join("p"), &forms(&marker)[1].1).unwrap();
    assert_eq!(hits(&probe, &marker).len(), 1, "the scan finds a base64 copy");
    std::fs::remove_dir_all(&probe).unwrap();

    // Stopped (logs closed, everything flushed): no copy on disk.
    for id in 1..=3 {
        c.stop(id).await;
    }
    let found = hits(c.tmp.path(), &marker);
    assert!(found.is_empty(), "the secret's value is on disk: {found:?}");

    // Restarted, the managers read their logs and images back.
    for id in 1..=3 {
        c.restart(id).await;
    }
    let st = read_retry(c.store(1), Duration::from_secs(5)).await;
    let s = st.secret(&"sec1".into()).expect("the secret survives a restart");
    assert_eq!(s.spec.data, SecretBytes(marker));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_without_its_keys_is_refused_with_the_reason() {
    let mut c = Cluster::start(1, 38).await;
    c.leader(Duration::from_secs(5)).await;
    commit_retry(c.any(), node_tx("a"), Duration::from_secs(5)).await.expect("write");
    c.stop(1).await;
    std::fs::remove_dir_all(c.dir(1).join("keys")).expect("remove the keys");
    let err = swarm_raft::RaftStore::open_async(c.config(1, vec![1]), c.net.transport(1))
        .await
        .err()
        .expect("a log without keys does not open");
    let msg = err.to_string();
    assert!(msg.contains("without data keys"), "{msg}");
    assert!(msg.contains(&c.dir(1).display().to_string()), "the directory is named: {msg}");
}
