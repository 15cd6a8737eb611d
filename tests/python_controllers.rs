//! The controllers through the official Kubernetes Python client (`tests/python/controllers_test.py`)
//! against a real keel-control with two hollow nodes that finish pod deletions after 2 s (so
//! foreground deletion has dependents to wait for).
use std::path::Path;
use std::time::Duration;

use keel_tests::api_client::{Backend, Cluster};
use keel_tests::hollow::{HollowFleet, HollowOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_work_through_the_python_client() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let py = root.join("target/pyenv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run `cargo xtask setup` (it installs the kubernetes Python client there)",
        py.display()
    );
    let cluster = Cluster::start(Backend::Embedded)
        .await
        .expect("keel-control starts");
    let opts = HollowOptions {
        termination_delay: Duration::from_secs(2),
        ..Default::default()
    };
    let fleet = HollowFleet::start(cluster.api(), vec!["node-a".into(), "node-b".into()], opts)
        .await
        .expect("hollow nodes register");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/controllers_test.py");
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(py)
            .arg(script)
            .arg(&cluster.running().kubeconfig)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the python checks finish within 300 s")
    .expect("python runs");
    fleet.stop().await;
    cluster.stop().await;
    assert!(
        out.status.success(),
        "python controller checks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
