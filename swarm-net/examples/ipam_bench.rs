//! Times the allocator's pass ([`swarm_net::alloc::plan`] and the task
//! admission) on a big state: `--tasks N` (default 100000) tasks of 100
//! services on one overlay network, then on a node-local network for
//! comparison.
//!
//! ```text
//! cargo run --release -p swarm-net --example ipam_bench -- --tasks 100000
//! ```

use std::time::Instant;
use swarm_core::allocator::{Allocation, admit_new_tasks};
use swarm_core::id::TaskId;
use swarm_core::model::*;
use swarm_core::state::{State, Transaction};
use swarm_core::time::Timestamp;
use swarm_net::alloc::{AllocatorConfig, blocked_services, plan};

fn state(tasks: usize, driver: &str, admitted: bool) -> State {
    let mut tx = Transaction::new().create(Network {
        id: "n1".into(),
        spec: NetworkSpec {
            name: "big".into(),
            driver: driver.into(),
            subnet: "10.128.0.0/14".into(),
            ..Default::default()
        },
        ..Default::default()
    });
    let services = 100;
    for s in 0..services {
        let mut spec = ServiceSpec::replicated(format!("svc{s}"), "nginx:1.27", 0);
        spec.networks = vec![NetworkAttachmentConfig { target: "big".into(), aliases: vec![] }];
        tx = tx.create(Service { id: format!("s{s}").into(), spec, ..Default::default() });
    }
    let (mut st, _) = State::default().apply(&tx).expect("setup");
    // Allocate the network first, as a running cluster has.
    let p = plan(&st, &AllocatorConfig::default());
    if let Some(tx) = p.transaction(&st) {
        st = st.apply(&tx).expect("network").0;
    }
    let mut tx = Transaction::new();
    for i in 0..tasks {
        let s = i % services;
        tx = tx.create(Task {
            id: TaskId::new(format!("t{i:07}")),
            service_id: format!("s{s}").into(),
            service_name: format!("svc{s}"),
            slot: Some(i as u64),
            networks: vec![NetworkAttachment { network: "big".into(), ..Default::default() }],
            desired_state: TaskState::Running,
            status: TaskStatus { state: TaskState::New, ..Default::default() },
            ..Default::default()
        });
    }
    st = st.apply(&tx).expect("tasks").0;
    if admitted {
        st = pass(&st).0;
    }
    st
}

/// One pass as the controller runs it; returns the state after and the
/// time the pass took (plan + admission, not the commit).
fn pass(st: &State) -> (State, std::time::Duration) {
    let t0 = Instant::now();
    let p = plan(st, &AllocatorConfig::default());
    let alloc = Allocation {
        ops: p.transaction(st).map(|tx| tx.ops).unwrap_or_default(),
        blocked: blocked_services(st, &p.errors),
        tasks: p.tasks,
    };
    let mut ops = alloc.ops.clone();
    ops.extend(admit_new_tasks(st, &alloc, Timestamp(1)));
    let took = t0.elapsed();
    if ops.is_empty() {
        return (st.clone(), took);
    }
    (st.apply(&Transaction { ops, timestamp: None }).expect("commit").0, took)
}

fn add_new(st: &State, from: usize, n: usize) -> State {
    let mut tx = Transaction::new();
    for i in from..from + n {
        tx = tx.create(Task {
            id: TaskId::new(format!("t{i:07}")),
            service_id: "s0".into(),
            service_name: "svc0".into(),
            slot: Some(i as u64),
            networks: vec![NetworkAttachment { network: "big".into(), ..Default::default() }],
            desired_state: TaskState::Running,
            status: TaskStatus { state: TaskState::New, ..Default::default() },
            ..Default::default()
        });
    }
    st.apply(&tx).expect("new tasks").0
}

fn main() {
    let mut tasks = 100_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--tasks" {
            tasks = args.next().and_then(|v| v.parse().ok()).unwrap_or(tasks);
        }
    }
    for driver in ["overlay", "bridge"] {
        let st = state(tasks, driver, false);
        let (after, first) = pass(&st);
        let admitted = after.tasks().filter(|t| t.status.state == TaskState::Pending).count();
        println!("{driver}: first pass over {tasks} NEW tasks: {first:?} ({admitted} admitted)");
        let idle = (0..5).map(|_| pass(&after).1).min().unwrap_or_default();
        let t0 = Instant::now();
        let p = plan(&after, &AllocatorConfig::default());
        let plan_only = t0.elapsed();
        println!(
            "{driver}: pass with nothing NEW over {tasks} tasks: {idle:?} (best of 5; plan alone {plan_only:?}, {} writes)",
            p.network_updates.len() + p.service_updates.len() + p.tasks.len()
        );
        let more = add_new(&after, tasks, 1000);
        let steady = (0..5).map(|_| pass(&more).1).min().unwrap_or_default();
        let (done, _) = pass(&more);
        let admitted = done.tasks().filter(|t| t.status.state == TaskState::Pending).count() - tasks;
        println!("{driver}: pass with 1000 NEW next to {tasks} admitted: {steady:?} (best of 5; {admitted} admitted)");
    }
}
