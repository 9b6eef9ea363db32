//! Runs the cluster_bench example at a tiny size so it does not rot: three
//! swarmd managers, five agents, twenty replicas, one agent vanishing, on
//! 127.40.0.x. Its last stdout line must be the JSON with every figure
//! present and sane.
//!
//! Needs the example built: `cargo test -p swarm-cli` (or `cargo test`)
//! without a target selection builds the examples; otherwise run `cargo
//! build -p swarm-cli --examples` first.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The example's binary, next to this test's (`target/<profile>/deps/`).
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("examples").join(name);
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; `cargo test -p swarm-cli` builds the examples, or `cargo build -p swarm-cli --examples`",
            bin.display()
        )
    });
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(format!("{name}.rs"));
    let changed = std::fs::metadata(&src).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
    assert!(changed <= built, "{} is older than {}: rebuild it", bin.display(), src.display());
    bin
}

#[test]
fn cluster_bench_runs_at_a_tiny_size() {
    let bin = example_binary("cluster_bench");
    let args = [
        "--agents",
        "5",
        "--replicas",
        "20",
        "--vanish",
        "1",
        "--heartbeat",
        "1s",
        "--window",
        "2s",
        "--poll",
        "100ms",
        "--block",
        "40",
        "--swarmd",
        env!("CARGO_BIN_EXE_swarmd"),
    ];
    let mut child =
        Command::new(&bin).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the example");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            // SIGINT: the example kills its managers.
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            std::thread::sleep(Duration::from_secs(2));
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("cluster_bench took over 90 s:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cluster_bench failed ({}):\n{stderr}", out.status);
    let last = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last:?}"));
    assert_eq!(v["agents"], 5, "{v}");
    assert_eq!(v["replicas"], 20, "{v}");
    assert_eq!(v["vanish"], 1, "{v}");
    for key in [
        "joins_per_s",
        "sessions_per_s",
        "all_ready_s",
        "window_s",
        "manager_cpu_ms_per_1000_heartbeats",
        "converge_s",
        "inprocess_converge_s",
        "converge_ratio",
        "down_s",
        "heal_s",
    ] {
        let x = v[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {v}"));
        assert!(x > 0.0 && x.is_finite(), "{key} = {x}: {v}");
    }
    assert_eq!(v["manager_cpu_s"].as_array().map(Vec::len), Some(3), "{v}");
    let (down, heal) = (v["down_s"].as_f64().unwrap_or(0.0), v["heal_s"].as_f64().unwrap_or(0.0));
    assert!(heal >= down, "{v}");
    // Noticed after the 3 x 1 s grace, counted from the last heartbeat.
    assert!(down >= 1.0, "{v}");
    assert!(v["heal_after_down_s"].as_f64().is_some_and(|x| x >= 0.0), "{v}");
    assert!(v["lost_tasks"].as_u64().is_some_and(|n| n >= 1), "{v}");
}
