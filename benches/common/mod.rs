//! Shared by the criterion benches: CPU time of the benchmarking thread
//! as the measurement (Linux `/proc/thread-self/schedstat`), not wall
//! time: the build machine is shared, and wall time there mostly measures
//! the other jobs. Where that file is missing, wall time is used.

use criterion::Throughput;
use criterion::measurement::{Measurement, ValueFormatter};
use std::time::{Duration, Instant};

/// CPU time of the current thread, or wall time where it is unavailable.
pub struct ThreadCpu;

fn now() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_else(|| START.get_or_init(Instant::now).elapsed())
}

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        now()
    }
    fn end(&self, start: Duration) -> Duration {
        now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

/// Nanoseconds shown as ms; throughput as elements per CPU second.
struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, _typical: f64, values: &mut [f64]) -> &'static str {
        values.iter_mut().for_each(|v| *v /= 1e6);
        "ms (cpu)"
    }
    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match t {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) | Throughput::Bits(n) => *n,
            Throughput::ElementsAndBytes { elements, .. } => *elements,
        } as f64;
        values.iter_mut().for_each(|v| *v = n * 1e9 / *v / 1e3);
        "Kelem/cpu-s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

/// `criterion_main!` for a bench function measured in [`ThreadCpu`]:
/// `cpu_criterion_main!(bench);` (with `#[macro_use] mod common;`).
macro_rules! cpu_criterion_main {
    ($bench:path) => {
        criterion::criterion_group! {
            name = benches;
            config = criterion::Criterion::default().with_measurement($crate::common::ThreadCpu);
            targets = $bench
        }
        criterion::criterion_main!(benches);
    };
}
