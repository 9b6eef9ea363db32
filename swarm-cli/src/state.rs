//! What a node keeps in its state directory:
//!
//! ```text
//! <state-dir>/node.json      the node's record (id, role, cluster, raft id, managers)
//! <state-dir>/certs/         ca.crt, node.key, node.crt (0600, atomic; swarm_security::files)
//! <state-dir>/raft/          the raft log (managers)
//! <state-dir>/swarmd.sock    the control API's local socket (managers; 0600)
//! ```
//!
//! A node restarted on the same directory resumes with what it has: the
//! same identity (certificate), the same raft id and log.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use swarm_security::files::NodeFiles;

/// The node's record (`node.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node id (the CN of its certificate).
    pub node_id: String,
    /// The cluster id (the O of its certificate).
    pub cluster_id: String,
    /// `manager` or `worker`, as last joined.
    pub role: String,
    /// The raft id (managers).
    #[serde(default)]
    pub raft_id: Option<u64>,
    /// API addresses of the managers last known, tried first at restart.
    #[serde(default)]
    pub managers: Vec<String>,
    /// The raft and API addresses this manager last advertised: a
    /// manager restarted with other addresses tells the leader
    /// (moby/moby#41043).
    #[serde(default)]
    pub advertised: Option<(String, String)>,
}

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file could not be read or written.
    #[error("state directory {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `node.json` is not a node record.
    #[error("{path} is not a node record: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A node's state directory. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The directory `root` (created when the node starts).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The certificate files.
    pub fn certs(&self) -> NodeFiles {
        NodeFiles::new(self.root.join("certs"))
    }

    /// The raft log directory.
    pub fn raft_dir(&self) -> PathBuf {
        self.root.join("raft")
    }

    /// The local control socket.
    pub fn socket(&self) -> PathBuf {
        self.root.join("swarmd.sock")
    }

    fn record_path(&self) -> PathBuf {
        self.root.join("node.json")
    }

    /// Creates the directory (mode 0700).
    pub fn create(&self) -> Result<(), StateError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| StateError::Io { path: self.root.clone(), source };
        std::fs::create_dir_all(&self.root).map_err(io)?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700)).map_err(io)
    }

    /// The record, if the node was set up before.
    pub fn read_record(&self) -> Result<Option<NodeRecord>, StateError> {
        let path = self.record_path();
        match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice(&b).map(Some).map_err(|e| StateError::Corrupt { path, reason: e.to_string() })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Writes the record atomically (temporary file, fsync, rename).
    pub fn write_record(&self, record: &NodeRecord) -> Result<(), StateError> {
        use std::io::Write;
        let path = self.record_path();
        let tmp = self.root.join(".node.json.tmp");
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| StateError::Corrupt { path: path.clone(), reason: e.to_string() })?;
        let io = |source| StateError::Io { path: path.clone(), source };
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::new(dir.path().join("n1"));
        s.create().unwrap();
        assert_eq!(s.read_record().unwrap(), None);
        let r = NodeRecord {
            node_id: "abc".into(),
            cluster_id: "c".into(),
            role: "manager".into(),
            raft_id: Some(7),
            managers: vec!["127.0.0.1:4242".into()],
            advertised: None,
        };
        s.write_record(&r).unwrap();
        assert_eq!(s.read_record().unwrap(), Some(r));
        std::fs::write(dir.path().join("n1/node.json"), b"{").unwrap();
        let err = s.read_record().unwrap_err().to_string();
        assert!(err.contains("node.json is not a node record"), "{err}");
    }
}
