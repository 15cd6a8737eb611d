//! The official Kubernetes Python client (`kubernetes` on PyPI, installed by `cargo xtask setup`
//! into `target/pyenv`) against a real keel-control: runs `tests/python/client_test.py`.
use std::{path::Path, process::Command, sync::mpsc, time::Duration};

use keel_control::Config;

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
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    let (tx, rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let running = keel_control::start(config)
                .await
                .expect("keel-control starts");
            tx.send(running.kubeconfig.clone()).unwrap();
            let _ = stop_rx.await;
            let _ = running.stop().await;
        });
    });
    let kubeconfig = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server ready");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/client_test.py");
    let out = Command::new(py)
        .arg(script)
        .arg(&kubeconfig)
        .output()
        .expect("python runs");
    let _ = stop_tx.send(());
    let _ = server.join();
    assert!(
        out.status.success(),
        "python client checks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
