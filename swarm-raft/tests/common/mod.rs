//! Test harness: a cluster of raft managers on an in-process network, each
//! with its own on-disk log in a temporary directory.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm_core::model::{Node, Resources};
use swarm_core::state::{Change, Transaction};
use swarm_core::store::{Store, StoreError};
use swarm_raft::{InProcNetwork, RaftStore, RaftStoreConfig, Role};

/// Test tick: 10 ms, so an election timeout is 100 ms (to 200 ms).
pub const TICK: Duration = Duration::from_millis(10);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub struct Cluster {
    pub net: InProcNetwork,
    pub tmp: tempfile::TempDir,
    pub ids: Vec<u64>,
    pub stores: BTreeMap<u64, RaftStore>,
    pub tweak: Arc<dyn Fn(RaftStoreConfig) -> RaftStoreConfig + Send + Sync>,
}

impl Cluster {
    pub async fn start(n: u64, seed: u64) -> Cluster {
        Self::start_with(n, seed, |c| c).await
    }

    pub async fn start_with(
        n: u64,
        seed: u64,
        tweak: impl Fn(RaftStoreConfig) -> RaftStoreConfig + Send + Sync + 'static,
    ) -> Cluster {
        init_tracing();
        let mut c = Cluster {
            net: InProcNetwork::new(seed),
            tmp: tempfile::tempdir().expect("tempdir"),
            ids: (1..=n).collect(),
            stores: BTreeMap::new(),
            tweak: Arc::new(tweak),
        };
        for id in 1..=n {
            c.open(id, c.ids.clone()).await;
        }
        c
    }

    pub fn dir(&self, id: u64) -> PathBuf {
        self.tmp.path().join(format!("m{id}"))
    }

    pub fn config(&self, id: u64, voters: Vec<u64>) -> RaftStoreConfig {
        let mut cfg = RaftStoreConfig::new(id, self.dir(id), voters).with_tick(TICK);
        cfg.commit_timeout = Some(Duration::from_secs(1));
        (self.tweak)(cfg)
    }

    pub async fn open(&mut self, id: u64, voters: Vec<u64>) -> RaftStore {
        let cfg = self.config(id, voters);
        let s = RaftStore::open_async(cfg, self.net.transport(id)).await.expect("open manager");
        self.net.register(id, s.inbox());
        self.stores.insert(id, s.clone());
        if !self.ids.contains(&id) {
            self.ids.push(id);
        }
        s
    }

    pub async fn restart(&mut self, id: u64) -> RaftStore {
        self.open(id, self.ids.clone()).await
    }

    /// Stops a manager (like a crash: the driver stops, the log is closed).
    pub async fn stop(&mut self, id: u64) {
        self.net.unregister(id);
        if let Some(s) = self.stores.remove(&id) {
            s.shutdown().await;
        }
    }

    pub fn store(&self, id: u64) -> &RaftStore {
        &self.stores[&id]
    }

    pub fn any(&self) -> &RaftStore {
        self.stores.values().next().expect("a running manager")
    }

    /// The leader most running managers agree on, waiting for one.
    pub async fn leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            for s in self.stores.values() {
                let st = s.status();
                if st.role == Role::Leader {
                    return st.id;
                }
            }
            assert!(Instant::now() < deadline, "no leader elected within {within:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until every running manager applied the same revision.
    pub async fn converge(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let revs: Vec<u64> = self.stores.values().map(|s| s.stale_snapshot().revision()).collect();
            if revs.windows(2).all(|w| w[0] == w[1]) {
                return revs[0];
            }
            assert!(Instant::now() < deadline, "managers did not converge within {within:?}: {revs:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<u64> = self.stores.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
        self.net.close();
    }
}

pub fn node_tx(name: &str) -> Transaction {
    Transaction::new().create(Node::ready(name, format!("host-{name}"), Resources::default()))
}

/// Commits, retrying while the cluster elects a leader (NoQuorum only: an
/// indeterminate outcome is returned to the caller).
pub async fn commit_retry(store: &RaftStore, tx: Transaction, within: Duration) -> Result<Arc<Change>, StoreError> {
    let deadline = Instant::now() + within;
    loop {
        match store.commit(tx.clone()).await {
            Err(StoreError::NoQuorum(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

/// A linearizable read, retrying while the cluster elects a leader.
pub async fn read_retry(store: &RaftStore, within: Duration) -> Arc<swarm_core::state::State> {
    let deadline = Instant::now() + within;
    loop {
        match store.snapshot().await {
            Ok(s) => return s,
            Err(e) => {
                assert!(Instant::now() < deadline, "no linearizable read within {within:?}: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// One loopback listener per raft id (on a free port), and the address map
/// a `TcpTransportConfig` takes.
pub async fn bind_loopback(
    ids: &[u64],
) -> (Vec<tokio::net::TcpListener>, std::collections::HashMap<u64, std::net::SocketAddr>) {
    let mut listeners = Vec::new();
    let mut addrs = std::collections::HashMap::new();
    for &id in ids {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        addrs.insert(id, l.local_addr().expect("addr"));
        listeners.push(l);
    }
    (listeners, addrs)
}
