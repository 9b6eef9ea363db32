//! What the load benchmarks `raft_bench` and `etcd_bench` share, so that the
//! two measure the same way: a latency histogram of fixed size (a soak run
//! of 10 minutes must not grow the process by the latencies it records),
//! resident set sizes read from `/proc`, and the RSS samples over time with
//! their summary. Each example takes it in with `mod bench_load;`.

// Each example uses part of it.
#![allow(dead_code)]

use std::time::Duration;

/// Values below this many microseconds have a bucket each.
const EXACT: u64 = 256;
/// Mantissa bits above `EXACT`: relative error below 1/128 (0.8 %).
const MANTISSA_BITS: u32 = 7;
const BUCKETS: usize = EXACT as usize + 57 * (1 << MANTISSA_BITS);

/// Latencies in microseconds, log-linear buckets (exact below 256 µs,
/// within 0.8 % above), with the exact maximum. Fixed size (about 60 KiB).
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; BUCKETS], total: 0, max_us: 0 }
    }
}

fn bucket(us: u64) -> usize {
    if us < EXACT {
        return us as usize;
    }
    let e = 63 - us.leading_zeros(); // >= 8
    let mantissa = (us >> (e - MANTISSA_BITS)) & ((1 << MANTISSA_BITS) - 1);
    EXACT as usize + (e - 8) as usize * (1 << MANTISSA_BITS) + mantissa as usize
}

/// The middle of bucket `i`, in microseconds.
fn value(i: usize) -> f64 {
    if i < EXACT as usize {
        return i as f64;
    }
    let j = i - EXACT as usize;
    let e = (j >> MANTISSA_BITS) as u32 + 8;
    let mantissa = (j & ((1 << MANTISSA_BITS) - 1)) as u64;
    let width = 1u64 << (e - MANTISSA_BITS);
    let low = (1u64 << e) + mantissa * width;
    low as f64 + width as f64 / 2.0
}

impl Histogram {
    /// Records one latency.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).min((1 << 62) - 1);
        self.counts[bucket(us).min(BUCKETS - 1)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `p` quantile (0..=1) in milliseconds; NaN when empty.
    pub fn quantile_ms(&self, p: f64) -> f64 {
        if self.total == 0 {
            return f64::NAN;
        }
        // The same rank as a sorted vector's `(len - 1) * p`, rounded.
        let rank = ((self.total - 1) as f64 * p).round() as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                return (value(i).min(self.max_us as f64)) / 1000.0;
            }
        }
        self.max_ms()
    }

    /// The largest latency in milliseconds (exact); NaN when empty.
    pub fn max_ms(&self) -> f64 {
        if self.total == 0 { f64::NAN } else { self.max_us as f64 / 1000.0 }
    }
}

/// A field in kB of `/proc/<pid>/status` ("self" for this process).
fn status_kb(pid: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Resident set size of a process in MiB (`VmRSS`).
pub fn rss_mib(pid: &str) -> Option<f64> {
    status_kb(pid, "VmRSS:").map(|kb| kb as f64 / 1024.0)
}

/// Peak resident set size of a process in MiB (`VmHWM`, kept by the kernel).
pub fn peak_rss_mib(pid: &str) -> Option<f64> {
    status_kb(pid, "VmHWM:").map(|kb| kb as f64 / 1024.0)
}

/// RSS samples taken every interval during the load (sum over the
/// processes measured).
#[derive(Default)]
pub struct RssSamples {
    /// (seconds since the load started, MiB).
    pub samples: Vec<(f64, f64)>,
}

impl RssSamples {
    /// Records a sample.
    pub fn push(&mut self, at_secs: f64, mib: f64) {
        self.samples.push((at_secs, mib));
    }

    /// Largest sample in the first and in the second half of the run
    /// (by time), and the second over the first: how much the RSS still
    /// grew once the load had run for a while. `None` with fewer than two
    /// samples.
    pub fn halves(&self, seconds: f64) -> Option<(f64, f64, f64)> {
        let first = self.samples.iter().filter(|(t, _)| *t <= seconds / 2.0).map(|s| s.1).fold(f64::NAN, f64::max);
        let second = self.samples.iter().filter(|(t, _)| *t > seconds / 2.0).map(|s| s.1).fold(f64::NAN, f64::max);
        if first.is_nan() || second.is_nan() {
            return None;
        }
        Some((first, second, second / first))
    }

    /// The samples as JSON pairs `[seconds, MiB]`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.samples
                .iter()
                .map(|(t, m)| serde_json::json!([(t * 10.0).round() / 10.0, (m * 10.0).round() / 10.0]))
                .collect(),
        )
    }
}

/// Second-half peak at most 5 % above the first half's: "flat".
pub const FLAT_TOLERANCE: f64 = 1.05;

/// While the load runs: every `every` from `started` until `deadline`,
/// reads the RSS (`read`, in MiB), records it and prints a line
/// `rss t=<s> mib=<MiB> commits=<n>`. Returns the samples.
pub async fn sample_rss(
    started: std::time::Instant,
    deadline: std::time::Instant,
    every: Duration,
    commits: &std::sync::atomic::AtomicU64,
    read: impl Fn() -> Option<f64>,
) -> RssSamples {
    let mut rss = RssSamples::default();
    let mut next = started + every;
    while next <= deadline {
        tokio::time::sleep_until(next.into()).await;
        let at = started.elapsed().as_secs_f64();
        if let Some(m) = read() {
            rss.push(at, m);
            println!("rss t={at:.0} mib={m:.1} commits={}", commits.load(std::sync::atomic::Ordering::Relaxed));
        }
        next += every;
    }
    rss
}

/// Waits for the clients and merges what they measured: latencies, errors.
pub async fn join_clients(
    tasks: Vec<tokio::task::JoinHandle<(Histogram, u64)>>,
) -> Result<(Histogram, u64), tokio::task::JoinError> {
    let mut lat = Histogram::default();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.merge(&l);
        errors += e;
    }
    Ok((lat, errors))
}
