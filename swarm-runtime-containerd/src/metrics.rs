//! Decoding the task metrics containerd returns (`tasks.Metrics`): the
//! cgroup v1 or v2 `Metrics` messages of containerd's cgroups library,
//! declared here with only the CPU and memory fields this runtime reads
//! (protobuf skips the rest).

use prost::Message;
use swarm_core::runtime::RuntimeError;

/// Type URL of cgroup v1 metrics.
pub const V1_TYPE: &str = "io.containerd.cgroups.v1.Metrics";
/// Type URL of cgroup v2 metrics.
pub const V2_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

#[derive(Clone, PartialEq, Message)]
struct V1Metrics {
    #[prost(message, optional, tag = "3")]
    cpu: Option<V1Cpu>,
    #[prost(message, optional, tag = "4")]
    memory: Option<V1Memory>,
}

#[derive(Clone, PartialEq, Message)]
struct V1Cpu {
    #[prost(message, optional, tag = "1")]
    usage: Option<V1CpuUsage>,
}

#[derive(Clone, PartialEq, Message)]
struct V1CpuUsage {
    #[prost(uint64, tag = "1")]
    total: u64,
}

#[derive(Clone, PartialEq, Message)]
struct V1Memory {
    #[prost(uint64, tag = "30")]
    total_inactive_file: u64,
    #[prost(message, optional, tag = "33")]
    usage: Option<V1MemoryEntry>,
}

#[derive(Clone, PartialEq, Message)]
struct V1MemoryEntry {
    #[prost(uint64, tag = "1")]
    limit: u64,
    #[prost(uint64, tag = "2")]
    usage: u64,
}

#[derive(Clone, PartialEq, Message)]
struct V2Metrics {
    #[prost(message, optional, tag = "2")]
    cpu: Option<V2Cpu>,
    #[prost(message, optional, tag = "4")]
    memory: Option<V2Memory>,
}

#[derive(Clone, PartialEq, Message)]
struct V2Cpu {
    #[prost(uint64, tag = "1")]
    usage_usec: u64,
}

#[derive(Clone, PartialEq, Message)]
struct V2Memory {
    #[prost(uint64, tag = "13")]
    inactive_file: u64,
    #[prost(uint64, tag = "32")]
    usage: u64,
    #[prost(uint64, tag = "33")]
    usage_limit: u64,
}

/// One sample of a task's cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Sample {
    /// CPU time used since the start, nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use (without inactive file cache), bytes.
    pub memory_bytes: u64,
    /// Memory limit, bytes (0 = none).
    pub memory_limit_bytes: u64,
}

/// Limits at or above this are "no limit" (the kernel's is near 2^63).
const NO_LIMIT: u64 = 1 << 60;

/// Decodes a metric's `Any`.
pub fn decode(type_url: &str, value: &[u8]) -> Result<Sample, RuntimeError> {
    let bad = |e: prost::DecodeError| RuntimeError::Engine(format!("cannot decode task metrics {type_url}: {e}"));
    let limit = |l: u64| if l >= NO_LIMIT { 0 } else { l };
    match type_url.trim_start_matches('/') {
        V1_TYPE => {
            let m = V1Metrics::decode(value).map_err(bad)?;
            let mem = m.memory.unwrap_or_default();
            let usage = mem.usage.unwrap_or_default();
            Ok(Sample {
                cpu_ns: m.cpu.and_then(|c| c.usage).map(|u| u.total).unwrap_or(0),
                memory_bytes: usage.usage.saturating_sub(mem.total_inactive_file),
                memory_limit_bytes: limit(usage.limit),
            })
        }
        V2_TYPE => {
            let m = V2Metrics::decode(value).map_err(bad)?;
            let mem = m.memory.unwrap_or_default();
            Ok(Sample {
                cpu_ns: m.cpu.map(|c| c.usage_usec.saturating_mul(1000)).unwrap_or(0),
                memory_bytes: mem.usage.saturating_sub(mem.inactive_file),
                memory_limit_bytes: limit(mem.usage_limit),
            })
        }
        other => Err(RuntimeError::Unsupported {
            runtime: "containerd",
            op: "stats",
            detail: format!("task metrics of type {other:?} are not decoded (cgroup v1 and v2 are)"),
        }),
    }
}

/// CPU use in percent of one CPU between two samples `elapsed_ns` apart.
pub fn cpu_percent(before: u64, after: u64, elapsed_ns: u64) -> f64 {
    if elapsed_ns == 0 {
        return 0.0;
    }
    after.saturating_sub(before) as f64 * 100.0 / elapsed_ns as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_decode() {
        let v1 = V1Metrics {
            cpu: Some(V1Cpu { usage: Some(V1CpuUsage { total: 5_000 }) }),
            memory: Some(V1Memory {
                total_inactive_file: 100,
                usage: Some(V1MemoryEntry { limit: u64::MAX / 2, usage: 1100 }),
            }),
        };
        let s = decode(V1_TYPE, &v1.encode_to_vec()).unwrap();
        assert_eq!(s, Sample { cpu_ns: 5_000, memory_bytes: 1000, memory_limit_bytes: 0 });
        let v2 = V2Metrics {
            cpu: Some(V2Cpu { usage_usec: 7 }),
            memory: Some(V2Memory { inactive_file: 0, usage: 42, usage_limit: 1 << 20 }),
        };
        let s = decode(V2_TYPE, &v2.encode_to_vec()).unwrap();
        assert_eq!(s, Sample { cpu_ns: 7_000, memory_bytes: 42, memory_limit_bytes: 1 << 20 });
        assert!(matches!(decode("x.Other", &[]), Err(RuntimeError::Unsupported { .. })));
        assert_eq!(cpu_percent(0, 50, 100), 50.0);
    }
}
