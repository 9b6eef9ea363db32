//! Skips that show: a test that cannot run here (no Docker Engine, no
//! containerd, not root) says so where the test command's output shows it,
//! and fails under CI.
//!
//! `cargo test` hides what a passing test printed, so an `eprintln!` and an
//! early `return` look like `ok`. [`skip`] instead
//! - under CI (`CI=true` or `CI=1`) panics: there every test must run;
//! - elsewhere prints a loud line and appends `binary::test: reason` to the
//!   file named by `SWARM_SKIP_LOG`; `scripts/test.sh` sets it, reads it
//!   back after `cargo test` and prints every skipped test at the end of
//!   its output.
//!
//! ```
//! fn docker_reachable() -> Result<(), String> { Err("no socket".into()) }
//! # let skip = |r: &str| swarm_conformance::skip::record(false, None, "doc", r).unwrap();
//! if let Err(why) = docker_reachable() {
//!     skip(&format!("needs a Docker Engine: {why}"));
//!     return;
//! }
//! ```

use std::io::Write;
use std::path::Path;

/// Environment variable naming the file where skips are recorded.
pub const SKIP_LOG_ENV: &str = "SWARM_SKIP_LOG";

/// True when the environment says this is a CI run (`CI=true` or `CI=1`,
/// any case), where skipping is a failure.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| is_ci_value(&v))
}

fn is_ci_value(v: &str) -> bool {
    let v = v.trim();
    v.eq_ignore_ascii_case("true") || v == "1"
}

/// The running test's name, `binary::module::test`: libtest runs each test
/// on a thread named after it; the binary is the test executable's name
/// without cargo's hash suffix.
pub fn current_test() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|stem| match stem.rsplit_once('-') {
            Some((name, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
            _ => stem,
        })
        .unwrap_or_else(|| "test".into());
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or("unnamed test");
    format!("{binary}::{test}")
}

/// Marks the running test as skipped because of `reason` (what it needs
/// and why that is missing). Panics under CI; otherwise prints and records
/// the skip (see the module doc). The caller returns right after.
pub fn skip(reason: &str) {
    let log = std::env::var_os(SKIP_LOG_ENV);
    if let Err(e) = record(ci(), log.as_deref().map(Path::new), &current_test(), reason) {
        panic!("{e}");
    }
}

/// What [`skip`] does, with the environment passed in: `Err` (the message
/// to fail with) under CI; otherwise the loud line is printed and, with a
/// log file, `test: reason` appended to it.
pub fn record(ci: bool, log: Option<&Path>, test: &str, reason: &str) -> Result<(), String> {
    let reason = reason.replace('\n', " ");
    if ci {
        return Err(format!("{test} cannot run here and CI forbids skipping: {reason}"));
    }
    eprintln!("\n!!!!! SKIPPED {test}: {reason} !!!!!\n");
    if let Some(path) = log {
        let line = format!("{test}: {reason}\n");
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            return Err(format!(
                "{test} skipped ({reason}) and the skip could not be recorded in {}: {e}",
                path.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_values() {
        for v in ["true", "TRUE", "True", "1", " true\n"] {
            assert!(is_ci_value(v), "{v:?} means CI");
        }
        for v in ["", "0", "false", "yes", "no"] {
            assert!(!is_ci_value(v), "{v:?} does not mean CI");
        }
    }

    #[test]
    fn under_ci_a_skip_is_an_error_that_names_the_test_and_reason() {
        let err = record(true, None, "engine::runs", "no docker engine").unwrap_err();
        assert!(err.contains("engine::runs") && err.contains("no docker engine"), "{err}");
    }

    #[test]
    fn outside_ci_a_skip_is_appended_to_the_log() {
        let dir = std::env::temp_dir().join(format!("swarm-skip-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skips");
        let _ = std::fs::remove_file(&log);
        record(false, Some(&log), "a::one", "needs root").unwrap();
        record(false, Some(&log), "b::two", "needs\ncontainerd").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "a::one: needs root\nb::two: needs containerd\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_log_is_an_error() {
        let err = record(false, Some(Path::new("/nonexistent-dir/x/skips")), "t", "r").unwrap_err();
        assert!(err.contains("could not be recorded"), "{err}");
    }

    #[test]
    fn the_current_test_is_named_after_its_thread() {
        let name = current_test();
        assert!(name.ends_with("skip::tests::the_current_test_is_named_after_its_thread"), "{name}");
        assert!(name.starts_with("swarm_conformance::"), "{name}");
    }
}
