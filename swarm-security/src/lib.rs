//! `swarm-security`: the security plane of a swarm cluster.
//!
//! A cluster has one root certificate authority ([`ca::ClusterCa`]). Every
//! node holds a certificate issued by it whose subject *is* the node's
//! identity: CN = node id, OU = role (`manager` | `worker`), O = cluster id
//! ([`identity::NodeIdentity`]); an operator's certificate (OU `operator`)
//! lets a person or tool call the control API ([`control`]). A new node
//! proves it may join with a join token ([`token::JoinToken`]) that also
//! pins the CA certificate it must trust. Nodes keep their certificate and key on disk
//! ([`files::NodeFiles`]), renew them at a random point of their lifetime
//! ([`renewal::renewal_time`]) and talk to each other over mutual TLS 1.3
//! ([`tls`]), where a listener admits only the roles it was built for.
//!
//! The crate uses rustls with the `ring` provider, rcgen and x509-parser;
//! there is no OpenSSL. See `docs/security.md` for what is wired and what
//! is not yet.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use swarm_security::ca::{ClusterCa, NodeCsr};
//! use swarm_security::identity::NodeIdentity;
//! use swarm_security::role::Role;
//!
//! let ca = ClusterCa::generate("cluster-1", Duration::from_secs(365 * 86_400))?;
//! let csr = NodeCsr::generate("node-1")?;
//! let now = SystemTime::now();
//! let issued = ca.sign_node_csr(csr.csr_pem(), "node-1", Role::Worker, None, now)?;
//! let id = NodeIdentity::from_pem(issued.cert_pem())?;
//! id.check(now, "cluster-1", &[Role::Worker, Role::Manager])?;
//! assert_eq!(id.node_id, "node-1");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod ca;
pub mod ca_service;
pub mod castore;
pub mod control;
pub mod dispatch;
pub mod external;
pub mod files;
pub mod identity;
pub mod join;
pub mod renewal;
pub mod role;
pub mod rotation;
// `RpcError::Fault` carries the server's whole `Fault` (136 bytes of
// error); boxing it would change a type other modules match on.
#[allow(clippy::result_large_err)]
pub mod rpc;
mod time_conv;
pub mod tls;
pub mod token;
