//! `swarm-net`: service discovery for swarm.
//!
//! - [`alloc`]: subnets, virtual IPs and ingress published ports, as a pure
//!   plan over the state and a controller writing it through the store.
//! - [`dns`]: an embedded DNS server (hickory-server) answering `<service>`
//!   and `tasks.<service>` on the networks of the asking task.
//! - [`mesh`]: the routing mesh: every node listens on every ingress port
//!   and forwards TCP and UDP to a healthy endpoint anywhere.
//! - [`kernel`] (Linux): the same two data paths as iptables NAT rules
//!   (kube-proxy's iptables mode; Swarm uses IPVS): no userspace hop.
//! - [`netkeys`]: the managers' keys of encrypted overlay networks: a
//!   leader-only controller making and rotating them in the store.
//! - [`netns`] (Linux): network namespaces for tests and benchmarks.
//! - [`overlay`] (Linux): the node's overlay data plane: bridges, VXLAN
//!   devices, forwarding and neighbour entries (netlink) and isolation rules
//!   following the node's `OverlayView`.
//! - [`overlay_dns`]: service discovery across nodes: a DNS server per
//!   overlay network on its gateway address, answering the network's names
//!   from the node's `OverlayView`.
//! - [`node`]: one node's plane in one call: discovery, DNS and the data
//!   path (userspace or kernel).
//! - [`tunnel`] (Linux): the userspace ChaCha20-Poly1305 tunnel carrying
//!   the VXLAN traffic of encrypted overlay networks between nodes.
//! - [`workload`]: synthetic discovery states for benchmarks.
//! - [`vip`]: the VIP data path: each node serves every service VIP on the
//!   service's target ports with the mesh's proxy (the userspace
//!   equivalent of Swarm's IPVS VIP).
//!
//! See docs/swarm-net.md for the design and how it differs from Swarm.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::Arc;
//! use swarm_core::cluster::Cluster;
//! use swarm_core::model::{PortConfig, ServiceSpec};
//! use swarm_core::store::{MemStore, Store};
//! use swarm_net::alloc::{plan, AllocatorConfig};
//! let store = Arc::new(MemStore::new());
//! let cluster = Cluster::new(store.clone() as Arc<dyn Store>);
//! let mut spec = ServiceSpec::replicated("web", "nginx:1.27", 2);
//! spec.endpoint_spec.ports = vec![PortConfig { target_port: 80, ..Default::default() }];
//! cluster.create_service(spec).await.unwrap();
//! let p = plan(&store.state(), &AllocatorConfig::default());
//! let (_, endpoint) = &p.service_updates[0];
//! assert_eq!(endpoint.virtual_ips[0].addr.to_string(), "10.0.0.2");
//! assert_eq!(endpoint.ports[0].published_port, Some(30000));
//! # }
//! ```

#![warn(missing_docs)]

pub mod alloc;
pub mod dns;
#[cfg(target_os = "linux")]
pub mod kernel;
pub mod mesh;
pub mod netkeys;
#[cfg(target_os = "linux")]
pub mod netns;
pub mod node;
#[cfg(target_os = "linux")]
pub mod overlay;
pub mod overlay_dns;
#[cfg(target_os = "linux")]
pub mod splice;
#[cfg(target_os = "linux")]
pub mod tunnel;
pub mod vip;
pub mod workload;
