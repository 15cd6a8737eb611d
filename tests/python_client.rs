//! The official Kubernetes Python client (`kubernetes` on PyPI, installed by `cargo xtask setup`
//! into `target/pyenv`) against a real keel-control: runs `tests/python/client_test.py`.
use std::{path::Path, process::Command};

use keel_tests::api_client::ServerThread;

fn python() -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let py = root.join("target/pyenv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run `cargo xtask setup` (it installs the kubernetes Python client there)",
        py.display()
    );
    py
}

#[test]
fn the_official_python_client_works() {
    let py = python();
    let server = ServerThread::start();
    let kubeconfig = server.kubeconfig.clone();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/client_test.py");
    let out = Command::new(py)
        .arg(script)
        .arg(&kubeconfig)
        .output()
        .expect("python runs");
    drop(server);
    assert!(
        out.status.success(),
        "python client checks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
