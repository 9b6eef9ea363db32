//! The test workload builds as a static binary on this machine and runs.

use swarm_runtime_docker::fixture;

#[test]
fn the_workload_builds_static_and_runs() {
    let bin = fixture::build_workload().expect("static build of the workload");
    let dir = std::env::temp_dir().join(format!("swt-{}-fixture", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("workload");
    std::fs::write(&path, &bin).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // `probe` against a closed port: runs, prints why, exits 1.
    let out = std::process::Command::new(&path).args(["probe", "1", "/health"]).output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("GET /health failed"), "{out:?}");
    // The rootfs tarball holds it as /workload.
    let tar = fixture::rootfs_tarball(&bin);
    assert_eq!(tar.len() % 512, 0);
    assert!(tar.windows(8).any(|w| w == b"workload"));
}
