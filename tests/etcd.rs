//! A private etcd for tests and benchmarks: `/usr/bin/etcd` (Debian package `etcd-server`) on
//! free loopback ports with its data directory under a caller-chosen directory, killed when
//! its handle drops. None of it needs root.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keel_control::store::etcd::EtcdStore;

use crate::process::{self, ProcessGuard};

/// The etcd binary these fixtures run.
pub const ETCD: &str = "/usr/bin/etcd";

/// How long etcd may take to answer after starting.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// A running etcd; SIGKILLed when dropped.
#[derive(Debug)]
pub struct EtcdServer {
    process: ProcessGuard,
    endpoint: String,
    log: PathBuf,
}

impl EtcdServer {
    /// Starts etcd with its data (`DIR/etcd`) and log (`DIR/etcd.log`) under `dir`. Call it
    /// from a thread that outlives the server (a test's own thread, a benchmark's main
    /// thread): the child dies with the thread that started it.
    pub fn start(dir: &Path) -> Result<EtcdServer> {
        if !Path::new(ETCD).exists() {
            bail!(
                "{ETCD} not found: install the Debian package `etcd-server` \
                 (`apt-get install etcd-server`; `cargo xtask setup` installs it)"
            );
        }
        let [client_port, peer_port] = free_ports()?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = dir.join("etcd.log");
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("creating the etcd log {}", log.display()))?;
        let mut cmd = Command::new(ETCD);
        cmd.arg("--name=keel-test")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=keel-test={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let process = process::spawn(cmd).context("starting etcd")?;
        Ok(EtcdServer {
            process,
            endpoint: client,
            log,
        })
    }

    /// The client URL (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Connects a store with `prefix`, waiting until etcd answers (or failing with its log when
    /// it exits or takes too long).
    pub async fn connect(&mut self, prefix: &str) -> Result<EtcdStore> {
        let deadline = Instant::now() + STARTUP_PATIENCE;
        loop {
            let error = match EtcdStore::connect(std::slice::from_ref(&self.endpoint), prefix).await
            {
                Ok(store) => return Ok(store),
                Err(e) => e,
            };
            let exited = self.process.try_wait().context("checking on etcd")?;
            if exited.is_some() || Instant::now() >= deadline {
                bail!(
                    "etcd at {} did not answer ({error}; exit status {exited:?}); its log:\n{}",
                    self.endpoint,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Two distinct free loopback ports (bound together, so they differ, then released).
fn free_ports() -> Result<[u16; 2]> {
    let a = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok([a.local_addr()?.port(), b.local_addr()?.port()])
}
