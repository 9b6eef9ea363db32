//! `swarm-sched`: task placement for swarm, as a pipeline anyone can extend.
//!
//! A [`Pipeline`] is a list of [`Filter`]s (can this node take the task?)
//! and a [`Scorer`] (how good is it?), behind swarm-core's
//! [`Scheduler`](swarm_core::scheduler::Scheduler) trait. Built in:
//!
//! | scheduler         | scorer                | rule                                                          |
//! |-------------------|-----------------------|---------------------------------------------------------------|
//! | `spread`          | [`Spread`]            | Swarm's: fewest tasks of the service, then fewest in total    |
//! | `binpack`         | [`BestFit`]           | nodes in use, largest machine then least capacity left; then largest empty node |
//! | `most-allocated`  | [`MostAllocated`]     | nodes in use, largest machine then Kubernetes' MostAllocated; then largest empty |
//! | `least-allocated` | [`LeastAllocated`]    | Kubernetes' LeastAllocated (spread by load)                   |
//!
//! Every scheduler honours the standard filters (ready and active, fixed
//! node, constraints, platform, resources, host ports, max replicas, in
//! SwarmKit's order), spread preferences as a hierarchy, batches grouped
//! by service and spec version (the bin-packing ones schedule scarce
//! groups first, then the largest tasks first, see [`GroupOrder`]), and explains
//! unschedulable tasks with failures counted per filter. Node indexes
//! ([`index`]: label sets, and the nodes in each scorer's rank order) keep
//! 100,000 tasks onto 10,000 nodes well under a second on one core, also
//! when nearly every service has its own task shape.
//!
//! [`workload`] generates the placement benchmark's inputs, reads CSV
//! traces and computes its metrics (nodes used, lower bound, skew,
//! fragmentation); [`bound`] is the lower bound on nodes used;
//! [`reference`](mod@reference) is the offline first-fit-decreasing packer the benchmark
//! compares nodes used with.

#![warn(missing_docs)]

pub mod batch;
pub mod bound;
pub mod filter;
pub mod index;
pub mod pipeline;
pub mod reference;
pub mod score;
pub mod workload;

pub use filter::{Filter, standard_filters};
pub use pipeline::{GroupOrder, Pipeline, PipelineError};
pub use score::{BestFit, LeastAllocated, MostAllocated, RankKey, Scorer, Spread};
