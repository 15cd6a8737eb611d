//! The backends: in each backend pod, nginx (one process, `worker_processes 1`, answering every
//! request with a tiny static body) and `iperf3 -s`, each with its own files in a temporary
//! directory. Everything is stopped and removed on drop.

use std::net::{SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keel_tests::netns::{Pod, run_in_netns};
use keel_tests::process::{Limits, ProcessGuard, spawn_in};

use crate::catalogue::{HTTP_PORT, IPERF_PORT};

const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Running backend servers; stopped and their files removed on drop.
pub struct Backends {
    // Field order is drop order: processes before their files.
    _servers: Vec<ProcessGuard>,
    _dir: tempfile::TempDir,
}

fn nginx_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    server {{
        listen {HTTP_PORT} backlog=4096;
        location / {{
            return 200 \"ok\\n\";
        }}
    }}
}}
"
    )
}

impl Backends {
    /// Starts nginx and iperf3 in each pod, returning once all of them accept connections.
    /// `probe_ns` is a namespace that routes to the pods (the node's).
    pub fn start(pods: &[&Pod], probe_ns: &str, cancel: &AtomicBool) -> Result<Backends> {
        let dir = tempfile::Builder::new()
            .prefix(&temp_prefix("backends"))
            .tempdir()
            .context("creating a temporary directory for the backends")?;
        let mut servers = Vec::new();
        for (i, pod) in pods.iter().enumerate() {
            let pod_dir: PathBuf = dir.path().join(format!("backend{i}"));
            std::fs::create_dir_all(&pod_dir)
                .with_context(|| format!("creating {}", pod_dir.display()))?;
            let conf = pod_dir.join("nginx.conf");
            std::fs::write(&conf, nginx_config(&pod_dir))
                .with_context(|| format!("writing {}", conf.display()))?;
            let mut nginx = Command::new("nginx");
            nginx
                .arg("-p")
                .arg(&pod_dir)
                .arg("-e")
                .arg(pod_dir.join("error.log"))
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut nginx = spawn_in(pod.netns(), None, nginx).context("starting nginx")?;
            let addr = SocketAddrV4::new(pod.ip(), HTTP_PORT);
            wait_accepting(&mut nginx, probe_ns, addr, cancel).with_context(|| {
                let log = std::fs::read_to_string(pod_dir.join("error.log")).unwrap_or_default();
                format!(
                    "nginx in {} did not start; error.log: {}",
                    pod.netns(),
                    log.trim()
                )
            })?;
            servers.push(nginx);

            let mut iperf = Command::new("iperf3");
            iperf
                .args(["-s", "-p", &IPERF_PORT.to_string(), "--forceflush"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            let mut iperf = spawn_in(pod.netns(), None, iperf).context("starting iperf3 -s")?;
            // Not probed with a connection: iperf3 would take it for a client and log an error.
            iperf
                .stdout_lines()?
                .wait_for(
                    |l| l.contains("Server listening"),
                    Limits::timeout(START_TIMEOUT).cancel_on(cancel),
                )
                .with_context(|| format!("iperf3 -s in {} did not start", pod.netns()))?;
            servers.push(iperf);
        }
        Ok(Backends {
            _servers: servers,
            _dir: dir,
        })
    }
}

/// Prefix of this run's temporary files: `keel-bench-<pid>-<what>-`.
pub fn temp_prefix(what: &str) -> String {
    format!("keel-bench-{}-{what}-", std::process::id())
}

/// Removes temporary files and directories of killed bench runs. Returns how many.
pub fn sweep_stale_temp_files() -> usize {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    entries
        .flatten()
        .take(100_000)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("keel-bench-")
                .and_then(|rest| rest.split('-').next()?.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .filter(|e| {
            let path = e.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).is_ok()
            } else {
                std::fs::remove_file(&path).is_ok()
            }
        })
        .count()
}

/// Waits until `addr` accepts TCP connections from `probe_ns`, failing early if the server exits.
fn wait_accepting(
    server: &mut ProcessGuard,
    probe_ns: &str,
    addr: SocketAddrV4,
    cancel: &AtomicBool,
) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = server.try_wait()? {
            bail!("exited ({status})");
        }
        let connected = run_in_netns(probe_ns, || {
            TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok()
        })?;
        if connected {
            return Ok(());
        }
        if Instant::now() >= deadline || cancel.load(std::sync::atomic::Ordering::Relaxed) {
            bail!("{addr} not accepting connections after {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
