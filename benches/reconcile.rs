//! Criterion benches of the control plane's two pure hot paths, on a
//! service of 10,000 replicas on 100 nodes:
//!
//! - `State::apply`: one transaction against the whole state (the store's
//!   state machine; every commit, on every manager, runs it): one task
//!   status update, and a batch of 100 task creations;
//! - `reconcile_service`: the orchestrator's decision for that service,
//!   at steady state (nothing to do: the common case, run on every change)
//!   and when 100 replicas are missing (scale-up by 100).
//!
//! Measured in CPU time of the benchmarking thread (see benches/common).
//!
//! ```text
//! cargo bench --bench reconcile
//! ```

#[macro_use]
mod common;

use common::ThreadCpu;
use criterion::{Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use swarm::id::IdGen;
use swarm::model::*;
use swarm::orchestrator::reconcile_service;
use swarm::state::{State, Transaction};
use swarm::time::Timestamp;

const REPLICAS: u64 = 10_000;
const NODES: u64 = 100;

fn task(slot: u64) -> Task {
    let mut t = Task {
        id: format!("t{slot}").into(),
        service_id: "s1".into(),
        service_name: "web".into(),
        slot: Some(slot),
        node_id: Some(format!("n{}", slot % NODES).into()),
        spec_version: 1,
        job_iteration: 1,
        desired_state: TaskState::Running,
        ..Default::default()
    };
    t.status.state = TaskState::Running;
    t
}

/// A service of `replicas` wanted and `running` tasks, on `NODES` nodes.
fn state(replicas: u64, running: u64) -> (State, Service) {
    let svc = Service {
        id: "s1".into(),
        spec: ServiceSpec::replicated("web", "nginx", replicas),
        spec_version: 1,
        job_iteration: 1,
        ..Default::default()
    };
    let mut tx = Transaction::new().create(svc);
    for n in 0..NODES {
        tx = tx.create(Node::ready(format!("n{n}"), format!("h{n}"), Resources::new(64_000_000_000, 1 << 40)));
    }
    for slot in 1..=running {
        tx = tx.create(task(slot));
    }
    let s = State::default().apply(&tx).expect("initial state").0;
    let svc = s.service(&"s1".into()).expect("service").as_ref().clone();
    (s, svc)
}

fn bench(c: &mut Criterion<ThreadCpu>) {
    let now = Timestamp(1_000_000_000_000);
    let (full, svc) = state(REPLICAS, REPLICAS);
    let (short, short_svc) = state(REPLICAS, REPLICAS - 100);

    let mut g = c.benchmark_group(format!("state_apply/{REPLICAS}tasks"));
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    let mut failed = full.task(&"t42".into()).expect("task").as_ref().clone();
    failed.status.state = TaskState::Failed;
    let one = Transaction::new().update(failed);
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_task_update", |b| b.iter(|| black_box(full.apply(black_box(&one)))));
    let batch = (REPLICAS + 1..=REPLICAS + 100).fold(Transaction::new(), |tx, slot| tx.create(task(slot)));
    g.throughput(Throughput::Elements(100));
    g.bench_function("create_100_tasks", |b| b.iter(|| black_box(full.apply(black_box(&batch)))));
    g.finish();

    let mut g = c.benchmark_group(format!("reconcile_service/{REPLICAS}replicas"));
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(REPLICAS));
    g.bench_function("steady", |b| {
        let mut ids = IdGen::seeded(1);
        b.iter(|| {
            let plan = reconcile_service(&full, &svc, now, &mut ids);
            assert!(plan.ops.is_empty(), "steady state has nothing to do");
            black_box(plan)
        })
    });
    g.bench_function("scale_up_100", |b| {
        let mut ids = IdGen::seeded(1);
        b.iter(|| {
            let plan = reconcile_service(&short, &short_svc, now, &mut ids);
            assert_eq!(plan.ops.len(), 100, "one new task per missing slot");
            black_box(plan)
        })
    });
    g.finish();
}

cpu_criterion_main!(bench);
