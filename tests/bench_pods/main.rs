//! `keel-bench-pods`: the node agent's pod start latency and memory, with the real agent
//! (`keel-agent run`: process runtime, eBPF Service datapath) against keel-control.
//!
//! The whole node lives in private namespaces made before anything starts: a network namespace
//! (`lo`, and `bench0`, one end of a veth pair, with `192.0.2.1/24` and the default route, so
//! the agent finds its default-route device and node IP) and a mount namespace whose mounts don't propagate to the
//! host. keel-control runs in this process (embedded store, controllers and scheduler on) on
//! 127.0.0.1; the agent is a child process with its own directories under a temporary
//! directory, its own cgroup parent (`keel-bench-pods-<pid>`) and pin directory
//! (`/sys/fs/bpf/keel-bench-pods-<pid>`).
//!
//! Phase 1, pod start: N pods (`keel.local/busybox:latest`, `sleep 100000`, no nodeName) are
//! created at a steady rate and the scheduler binds them. A watch records, per pod, when it
//! first shows `spec.nodeName` (bound) and when it first shows `status.phase: Running`, both
//! as the watch events' arrival times on one clock. The start latency is Running − bound.
//!
//! Phase 2, memory: the agent's VmRSS with the pods running; then M ClusterIP Services (port
//! 80 → 8080), Service j selecting the pod with label `slot=j % N`, so the EndpointSlice
//! controller makes M slices with one endpoint each. Once the agent has programmed them all
//! (counted in its pinned service map) and settled, its VmRSS is sampled for a few seconds.
//! The containers' monitors (`keel-agent shim`) are separate processes and are not counted.
//!
//! Everything is removed on every path: the pods are deleted through the API (the agent tears
//! their sandboxes down), the agent is stopped, and whatever is left (processes in the cgroup
//! parent, cgroups in every hierarchy, the pin directory, mounts, directories) is removed.
//! The namespaces go with the process. Should the benchmark be killed outright, the agent gets
//! SIGTERM (parent-death signal) and the next run sweeps what is left.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use futures::StreamExt;
use keel_common::{SCOPE_ADDR, ServiceKey, ServiceValue, map_names};
use keel_tests::api_client::{ApiClient, Backend, Cluster};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinSet;

/// The benchmark's namespace (pods and Services).
const NAMESPACE: &str = "bench-pods";
/// The node's name.
const NODE: &str = "bench-node";
const IMAGE: &str = "keel.local/busybox:latest";
/// The device carrying the node's address and default route (one end of a veth pair whose
/// other end, [`PEER`], is up with no address).
const DEVICE: &str = "bench0";
const PEER: &str = "bench1";
const NODE_ADDR: &str = "192.0.2.1/24";
/// The Services' port and the pods' target port.
const SERVICE_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
/// Concurrent clients creating the Services (and the pods with `--burst`).
const CREATORS: usize = 16;
/// Prefix of this benchmark's pin directory, cgroup parent and temporary directory, followed
/// by the process id (so leftovers of a killed run can be told apart and swept).
const RUN_PREFIX: &str = "keel-bench-pods-";
const BPFFS: &str = "/sys/fs/bpf";
/// The goal of issue 5 for the start latency's median.
const GOAL_P50_MS: f64 = 150.0;
/// How often a wait prints where it is.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// How long the agent gets to stop after SIGTERM before SIGKILL.
const AGENT_STOP: Duration = Duration::from_secs(15);
/// The agent's log filter: the pod manager's, workers' and status writers' debug lines carry
/// the per-pod steps.
const DEFAULT_AGENT_LOG_FILTER: &str = "info,keel_agent=debug";

#[derive(Parser)]
#[command(
    name = "keel-bench-pods",
    about = "Benchmark the node agent: pod start latency (bind → Running) and its memory with \
             many pods and Services (root)"
)]
struct Cli {
    /// A shorter run: 30 pods and 1 000 Services [full: 100 pods, 10 000 Services].
    #[arg(long)]
    quick: bool,
    /// Write `{"pod_start_p50_ms", "pod_start_p99_ms", "agent_rss_mb"}` here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Pods (overrides --quick's).
    #[arg(long)]
    pods: Option<usize>,
    /// Services (overrides --quick's).
    #[arg(long)]
    services: Option<usize>,
    /// Pods created per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Create every pod at once (16 clients) instead of at --rate.
    #[arg(long)]
    burst: bool,
    /// Longest wait for any one phase (node Ready, pods Running, Services programmed), seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Seconds to let the agent settle before sampling its memory (then sampled for as long).
    #[arg(long, default_value_t = 5)]
    settle: u64,
    /// The keel-agent binary (release) [default: keel-agent next to this binary].
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// An image store holding keel.local/busybox:latest [default: built into the temporary
    /// directory from /bin/busybox].
    #[arg(long)]
    image_dir: Option<PathBuf>,
    /// Keep the agent's log here [default: in the temporary directory, removed at the end].
    #[arg(long)]
    agent_log: Option<PathBuf>,
    /// RUST_LOG of the agent.
    #[arg(long, default_value = DEFAULT_AGENT_LOG_FILTER)]
    agent_log_filter: String,
    /// Write each pod's created/bound/Running times (Unix ms, watch arrival) here as CSV.
    #[arg(long)]
    trace: Option<PathBuf>,
}

/// When the run started, for the progress lines' timestamps.
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// A progress line on stderr, stamped with the seconds since the run started.
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!(
            "[{:6.1}s] {}",
            STARTED.get_or_init(Instant::now).elapsed().as_secs_f64(),
            format_args!($($arg)*)
        )
    };
}

/// The figures `--json` writes (issue 5's keys, nothing else).
#[derive(Clone, Debug, Serialize)]
struct Figures {
    pod_start_p50_ms: Option<f64>,
    pod_start_p99_ms: Option<f64>,
    agent_rss_mb: Option<f64>,
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Spread {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        Some(Spread {
            p50: percentile(&values, 50.0),
            p90: percentile(&values, 90.0),
            p99: percentile(&values, 99.0),
            max: values[values.len() - 1],
        })
    }
}

/// The nearest-rank percentile of sorted values (p99 of 100 values is the 99th).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The agent's memory at one moment (`/proc/<pid>/status`), in KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
    anon_kib: u64,
    file_kib: u64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Everything the table shows (`None`: not measured).
#[derive(Debug, Default)]
struct Report {
    pods: usize,
    services: usize,
    mode: String,
    node_ready_s: Option<f64>,
    create_to_bound: Option<Spread>,
    bound_to_running: Option<Spread>,
    create_to_running: Option<Spread>,
    pods_running_s: Option<f64>,
    rss_idle: Option<Memory>,
    rss_pods: Option<Memory>,
    services_created_s: Option<f64>,
    services_programmed_s: Option<f64>,
    agent_cpu_services_s: Option<f64>,
    rss_services: Option<Memory>,
    rss_services_samples: Vec<u64>,
    shims: Option<(usize, u64)>,
    load_before: String,
}

impl Report {
    fn figures(&self) -> Figures {
        Figures {
            pod_start_p50_ms: self.bound_to_running.map(|s| round2(s.p50)),
            pod_start_p99_ms: self.bound_to_running.map(|s| round2(s.p99)),
            agent_rss_mb: self.rss_services.map(|m| round2(mib(m.rss_kib))),
        }
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    STARTED.get_or_init(Instant::now);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "keel-bench-pods: needs root (network and mount namespaces, cgroups, BPF): run \
             `cargo xtask bench pods` as root"
        );
        return ExitCode::FAILURE;
    }
    // Before any thread exists: unshare(CLONE_NEWNS) refuses a multi-threaded process.
    if let Err(e) = isolate() {
        eprintln!("keel-bench-pods: {e:#}");
        return ExitCode::FAILURE;
    }
    let swept = sweep_stale();
    if !swept.is_empty() {
        progress!("removed leftovers of killed runs: {}", swept.join(", "));
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let mut node = match Node::new(&cli) {
        Ok(node) => node,
        Err(e) => {
            eprintln!("keel-bench-pods: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // keel-control's data directory (`Cluster` makes it in the temporary directory) goes under
    // the run's own, so nothing of a killed run is left outside what `sweep_stale` removes.
    let tmp = node.path("tmp");
    if let Err(e) = std::fs::create_dir_all(&tmp) {
        eprintln!("keel-bench-pods: creating {}: {e}", tmp.display());
        return ExitCode::FAILURE;
    }
    // SAFETY: no other thread exists yet (the async runtime is built below).
    unsafe { std::env::set_var("TMPDIR", &tmp) };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("keel-bench-pods: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(bench(&cli, &mut node));
    drop(runtime);
    let log = node.log_path.clone();
    let kept_log = cli.agent_log.is_some();
    // Removes whatever is left (also on a panic, through Drop).
    node.cleanup();
    let leftovers = node.leftovers();
    drop(node);
    if !leftovers.is_empty() {
        eprintln!(
            "keel-bench-pods: WARNING: left behind: {}",
            leftovers.join("; ")
        );
    } else {
        progress!("cleanup complete: nothing left (pin dir, cgroups, processes, mounts)");
    }
    if kept_log {
        println!("agent log: {}", log.display());
    }
    match result {
        Ok(true) if leftovers.is_empty() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("keel-bench-pods: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Moves this (still single-threaded) process into a new network namespace and a new mount
/// namespace (mounts propagate from the host, not to it), and gives the network namespace a
/// node-like setup: `lo` up, a device with the node address and the default route.
fn isolate() -> Result<()> {
    // SAFETY: unshare only changes this process's namespaces; no other thread exists yet.
    if unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET|CLONE_NEWNS)");
    }
    let root = c"/";
    // SAFETY: valid NUL-terminated strings; changes the propagation of our own mount namespace.
    if unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error()).context("making / a slave mount");
    }
    for args in [
        vec!["link", "set", "lo", "up"],
        // A veth pair (this kernel may lack the dummy driver); both ends stay here.
        vec!["link", "add", DEVICE, "type", "veth", "peer", "name", PEER],
        vec!["addr", "add", NODE_ADDR, "dev", DEVICE],
        vec!["link", "set", PEER, "up"],
        vec!["link", "set", DEVICE, "up"],
        vec!["route", "add", "default", "dev", DEVICE],
    ] {
        let out = Command::new("ip")
            .args(&args)
            .output()
            .context("running ip (iproute2)")?;
        if !out.status.success() {
            bail!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// The node's directories, cgroup parent, pin directory and agent process. `cleanup` (also
/// run on drop) removes all of it.
struct Node {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    pin_dir: PathBuf,
    cgroup_parent: String,
    image_dir: PathBuf,
    agent_bin: PathBuf,
    log_path: PathBuf,
    agent: Option<Child>,
    cleaned: bool,
}

impl Node {
    fn new(cli: &Cli) -> Result<Node> {
        let agent_bin = match &cli.agent_bin {
            Some(path) => path.clone(),
            None => std::env::current_exe()
                .context("finding this binary")?
                .with_file_name("keel-agent"),
        };
        if !agent_bin.is_file() {
            bail!(
                "{} is missing: build it with `cargo build --release -p keel-agent` (after \
                 `cargo xtask build-ebpf`), or run `cargo xtask bench pods`",
                agent_bin.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", run_name()))
            .tempdir()
            .context("creating a temporary directory")?;
        let root = dir.path().to_path_buf();
        let image_dir = match &cli.image_dir {
            Some(dir) => dir.clone(),
            None => {
                let images = root.join("images");
                keel_agent::runtime::process::images::build_busybox_image(&images)
                    .context("building keel.local/busybox (is busybox-static installed?)")?;
                images
            }
        };
        let log_path = cli
            .agent_log
            .clone()
            .unwrap_or_else(|| root.join("agent.log"));
        Ok(Node {
            dir: Some(dir),
            root,
            pin_dir: Path::new(BPFFS).join(run_name()),
            cgroup_parent: run_name(),
            image_dir,
            agent_bin,
            log_path,
            agent: None,
            cleaned: false,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Starts `keel-agent run` (its own process group: a Ctrl-C reaches the benchmark, which
    /// then tears the node down in order).
    fn start_agent(&mut self, kubeconfig: &Path, pods: usize, filter: &str) -> Result<u32> {
        if let Some(dir) = self.log_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let log = File::create(&self.log_path)
            .with_context(|| format!("creating {}", self.log_path.display()))?;
        let ca = kubeconfig.with_file_name("ca.crt");
        let mut cmd = Command::new(&self.agent_bin);
        // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                // Should this benchmark be killed outright, the agent stops too (the next run
                // sweeps the rest, see `sweep_stale`).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.arg("run")
            .args(["--node-name", NODE])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--client-ca")
            .arg(&ca)
            .arg("--root-dir")
            .arg(self.path("root"))
            .arg("--run-dir")
            .arg(self.path("run"))
            .arg("--log-dir")
            .arg(self.path("logs"))
            .arg("--image-dir")
            .arg(&self.image_dir)
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--max-pods")
            .arg((pods + 10).max(110).to_string())
            .env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.agent_bin.display()))?;
        let pid = child.id();
        self.agent = Some(child);
        Ok(pid)
    }

    fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// SIGTERM, then SIGKILL after [`AGENT_STOP`]; reaps it.
    fn stop_agent(&mut self) {
        let Some(mut child) = self.agent.take() else {
            return;
        };
        if let Ok(Some(status)) = child.try_wait() {
            progress!("the agent had already exited ({status})");
            return;
        }
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + AGENT_STOP;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        progress!("the agent did not stop within {AGENT_STOP:?}: SIGKILL");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The last lines of the agent's log (for errors).
    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the agent and removes everything the node made: processes in the cgroup parent,
    /// the cgroups in every hierarchy, the containers' monitors, mounts under the temporary
    /// directory, the pin directory, the directories. Idempotent.
    fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        self.stop_agent();
        // The containers' processes (and whatever else is in the pods' cgroups).
        if let Ok(cgroups) =
            keel_agent::runtime::process::cgroups::Cgroups::detect(&self.cgroup_parent)
            && let Err(e) = cgroups.remove(&self.cgroup_parent)
        {
            eprintln!("keel-bench-pods: cleanup: removing the cgroups: {e}");
        }
        for dir in cgroup_dirs(&self.cgroup_parent) {
            remove_cgroup_tree(&dir);
        }
        // The monitors exit once their container is gone; kill any that didn't.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let shims = shim_pids(&self.root);
            if shims.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for pid in shims {
                    // SAFETY: kill(2) on a monitor this benchmark's agent started.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(200));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) = keel_agent::runtime::process::network::unmount_netns_dir(&self.path("run"))
        {
            eprintln!("keel-bench-pods: cleanup: {e}");
        }
        unmount_under(&self.root);
        if self.pin_dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.pin_dir)
        {
            eprintln!(
                "keel-bench-pods: cleanup: removing {}: {e}",
                self.pin_dir.display()
            );
        }
        if let Some(dir) = self.dir.take()
            && let Err(e) = dir.close()
        {
            eprintln!(
                "keel-bench-pods: cleanup: removing {}: {e}",
                self.root.display()
            );
        }
    }

    /// What cleanup could not remove.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        if self.pin_dir.exists() {
            left.push(self.pin_dir.display().to_string());
        }
        for dir in cgroup_dirs(&self.cgroup_parent) {
            left.push(dir.display().to_string());
        }
        let shims = shim_pids(&self.root);
        if !shims.is_empty() {
            left.push(format!("container monitors {shims:?}"));
        }
        if self.root.exists() {
            left.push(self.root.display().to_string());
        }
        left
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// `keel-bench-pods-<pid>` of this process.
fn run_name() -> String {
    format!("{RUN_PREFIX}{}", std::process::id())
}

/// The pid in a name made by [`run_name`] (with or without a suffix), when that process is gone:
/// the name is a leftover of a killed run.
fn stale_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(RUN_PREFIX)?;
    let pid: u32 = rest.split('-').next()?.parse().ok()?;
    (pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
}

/// Removes what killed runs left (they could not clean up): the containers in their cgroups,
/// the cgroups, the containers' monitors, their temporary directories and pin directories.
/// Returns what was removed.
fn sweep_stale() -> Vec<String> {
    let mut swept = Vec::new();
    let names = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .and_then(stale_pid)
                            .is_some()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut bases = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        bases.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for base in bases {
        for dir in names(&base).into_iter().filter(|d| d.is_dir()) {
            remove_cgroup_tree(&dir);
            swept.push(dir.display().to_string());
        }
    }
    for dir in names(&std::env::temp_dir()) {
        for pid in shim_pids(&dir) {
            // SAFETY: kill(2) on a container monitor of a dead run of this benchmark.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        unmount_under(&dir);
        if std::fs::remove_dir_all(&dir).is_ok() {
            swept.push(dir.display().to_string());
        }
    }
    for dir in names(Path::new(BPFFS)) {
        if std::fs::remove_dir_all(&dir).is_ok() {
            swept.push(dir.display().to_string());
        }
    }
    swept
}

/// `<hierarchy>/<parent>` in every hierarchy where it exists (each v1 controller, the v2
/// `unified` mount, or the v2 root itself).
fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let mut bases = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        bases.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    bases
        .into_iter()
        .map(|b| b.join(parent))
        .filter(|d| d.is_dir())
        .collect()
}

/// Kills what is left in a cgroup tree (it is ours) and removes it, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) on a process in this benchmark's own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes whose command line is `… shim <dir under root>`: the containers' monitors the
/// agent started for this node.
fn shim_pids(root: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.len() >= 3
            && args[1] == b"shim"
            && Path::new(std::ffi::OsStr::from_bytes(args[2])).starts_with(root)
        {
            pids.push(pid);
        }
    }
    pids
}

/// Unmounts (lazily) every mount point under `root`, deepest first.
fn unmount_under(root: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for point in points {
        if let Ok(path) = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path; a failure is harmless here.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as `\ooo`.
fn unescape_mount_path(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let digit = |b: u8| u32::from(b - b'0');
            let value = digit(bytes[i + 1]) * 64 + digit(bytes[i + 2]) * 8 + digit(bytes[i + 3]);
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt as _;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// `/proc/<pid>/status`'s memory lines.
fn memory_of(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:").unwrap_or(0),
        anon_kib: field("RssAnon:").unwrap_or(0),
        file_kib: field("RssFile:").unwrap_or(0),
    })
}

/// A process's proportional set size (shared pages divided among their users), in KiB.
fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User plus system CPU time of a process (`/proc/<pid>/stat`).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) as f64 / ticks)
}

/// Whether a child process is still running (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next().map(|st| st != "Z"))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// `/proc/loadavg`'s three averages (a loaded machine makes the figures noisy).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// SIGINT and SIGTERM, caught for the whole run so the node is torn down in order.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("catching SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("catching SIGTERM")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Both phases, then the graceful part of the teardown; true when every figure was measured.
async fn bench(cli: &Cli, node: &mut Node) -> Result<bool> {
    let (default_pods, default_services) = if cli.quick {
        (30, 1_000)
    } else {
        (100, 10_000)
    };
    let pods = cli.pods.unwrap_or(default_pods);
    let services = cli.services.unwrap_or(default_services);
    if pods == 0 {
        bail!("--pods must be positive");
    }
    if !cli.rate.is_finite() || cli.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let mut signals = Signals::new()?;
    let mut report = Report {
        pods,
        services,
        mode: if cli.burst {
            format!("burst, {CREATORS} clients")
        } else {
            format!("{} pods/s", cli.rate)
        },
        load_before: load_average(),
        ..Report::default()
    };
    progress!(
        "keel-bench-pods: {pods} pods ({}), {services} Services; load average before: {}",
        report.mode,
        report.load_before
    );
    let cluster = Cluster::start_with(Backend::Embedded, |_| {})
        .await
        .context("starting keel-control")?;
    let api = cluster.api();
    let kubeconfig = cluster.running().kubeconfig.clone();
    progress!("keel-control serves at {}", cluster.running().url);

    let phases = run_phases(cli, node, &api, &kubeconfig, &mut report);
    let result = tokio::select! {
        result = phases => result,
        signal = signals.recv() => Err(anyhow!("interrupted by {signal}")),
    };
    if let Err(e) = &result {
        progress!("the run stopped early: {e:#}");
        if node.agent_pid().is_some() {
            eprintln!(
                "--- the agent's log, last lines:\n{}\n---",
                node.log_tail(30)
            );
        }
    }
    print!("{}", table(&report, cli.quick));
    let figures = report.figures();
    if let Some(path) = &cli.json {
        write_json(path, &figures)?;
        println!("wrote {}", path.display());
    }

    // The graceful part of the teardown: the agent removes the pods' sandboxes.
    if node.agent_pid().is_some_and(alive) {
        let teardown = delete_pods(&api, Duration::from_secs(120));
        tokio::select! {
            result = teardown => if let Err(e) = result {
                progress!("deleting the pods: {e:#}; removing what is left by force");
            },
            signal = signals.recv() => progress!("{signal} during teardown: removing what is left by force"),
        }
    }
    progress!("stopping the agent");
    node.stop_agent();
    cluster.stop().await;
    Ok(result.is_ok()
        && figures.pod_start_p50_ms.is_some()
        && figures.pod_start_p99_ms.is_some()
        && figures.agent_rss_mb.is_some())
}

async fn run_phases(
    cli: &Cli,
    node: &mut Node,
    api: &ApiClient,
    kubeconfig: &Path,
    report: &mut Report,
) -> Result<()> {
    let patience = Duration::from_secs(cli.timeout.max(1));
    let settle = Duration::from_secs(cli.settle);
    let pods = report.pods;

    // --- The node.
    let started = Instant::now();
    let agent = node.start_agent(kubeconfig, pods, &cli.agent_log_filter)?;
    progress!(
        "keel-agent started (pid {agent}, log {})",
        node.log_path.display()
    );
    let node_ip = wait_for("the node to be Ready", agent, patience, || async {
        let (status, node) = call(api, Method::GET, &format!("/api/v1/nodes/{NODE}"), None).await?;
        if status != StatusCode::OK {
            return Ok(None);
        }
        let ready = node["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        let ip = node["status"]["addresses"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
            .and_then(|a| a["address"].as_str())
            .unwrap_or("?")
            .to_string();
        Ok(ready.then_some(ip))
    })
    .await?;
    report.node_ready_s = Some(started.elapsed().as_secs_f64());
    progress!(
        "node {NODE} Ready ({node_ip} on {DEVICE}) {:.2?} after the agent started",
        started.elapsed()
    );
    create_namespace(api).await?;
    tokio::time::sleep(settle.min(Duration::from_secs(2))).await;
    report.rss_idle = memory_of(agent);

    // --- Phase 1: pod start latency.
    let list = get(api, &format!("/api/v1/namespaces/{NAMESPACE}/pods")).await?;
    let revision = list["metadata"]["resourceVersion"]
        .as_str()
        .context("the pod list has no resourceVersion")?
        .to_string();
    let tracker = Arc::new(Tracker::default());
    let watcher = tokio::spawn(watch_pods(api.clone(), revision, tracker.clone()));
    let result = async {
        progress!("creating {pods} pods ({})", report.mode);
        let started = Instant::now();
        create_pods(api, pods, cli.rate, cli.burst, &tracker).await?;
        progress!("{pods} pods created in {:.2?}", started.elapsed());
        wait_running(&tracker, pods, agent, started, patience).await?;
        report.pods_running_s = Some(started.elapsed().as_secs_f64());
        anyhow::Ok(())
    }
    .await;
    watcher.abort();
    let times = tracker.state.lock().expect("not poisoned").pods.clone();
    if let Some(path) = &cli.trace {
        write_trace(path, &times)?;
        progress!("wrote the per-pod times to {}", path.display());
    }
    result?;
    let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1000.0;
    let collect = |f: &dyn Fn(&PodTimes) -> Option<f64>| -> Vec<f64> {
        times.values().filter_map(f).collect()
    };
    report.create_to_bound = Spread::of(collect(&|t| Some(ms(t.created?, t.bound?))));
    report.bound_to_running = Spread::of(collect(&|t| Some(ms(t.bound?, t.running?))));
    report.create_to_running = Spread::of(collect(&|t| Some(ms(t.created?, t.running?))));
    if let Some(s) = report.bound_to_running {
        progress!(
            "all {pods} pods Running; bind -> Running p50 {:.0} ms, p99 {:.0} ms",
            s.p50,
            s.p99
        );
    }
    tokio::time::sleep(settle).await;
    report.rss_pods = memory_of(agent);

    // --- Phase 2: memory with Services.
    let services = report.services;
    if services > 0 {
        progress!("creating {services} Services with {CREATORS} clients");
        let cpu_before = cpu_seconds(agent);
        let started = Instant::now();
        create_services(api, services, pods).await?;
        report.services_created_s = Some(started.elapsed().as_secs_f64());
        progress!("{services} Services created in {:.2?}", started.elapsed());
        let pin_dir = node.pin_dir.clone();
        let mut last = (0, 0);
        let mut next_report = Instant::now() + REPORT_EVERY;
        loop {
            if !alive(agent) {
                bail!("the agent exited");
            }
            match programmed(&pin_dir) {
                Ok(count) => last = count,
                Err(e) => progress!("reading the pinned service map: {e:#}"),
            }
            if last.1 >= services {
                break;
            }
            if started.elapsed() >= patience {
                bail!(
                    "timed out after {patience:?}: {} of {services} Services programmed ({} \
                     with their endpoint)",
                    last.0,
                    last.1
                );
            }
            if Instant::now() >= next_report {
                progress!(
                    "{} of {services} Services programmed ({} with their endpoint)",
                    last.0,
                    last.1
                );
                next_report += REPORT_EVERY;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        report.services_programmed_s = Some(started.elapsed().as_secs_f64());
        report.agent_cpu_services_s = cpu_before
            .zip(cpu_seconds(agent))
            .map(|(before, after)| after - before);
        progress!(
            "all {services} Services programmed with their endpoint {:.2?} after the first \
             create; settling {settle:?}",
            started.elapsed()
        );
    }
    tokio::time::sleep(settle).await;
    // Sampled for as long as it settled (at least 2 s), every 500 ms: the median.
    let window = settle.max(Duration::from_secs(2));
    let deadline = Instant::now() + window;
    let mut samples = Vec::new();
    let mut latest = None;
    while Instant::now() < deadline {
        if let Some(memory) = memory_of(agent) {
            samples.push(memory.rss_kib);
            latest = Some(memory);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    samples.sort_unstable();
    if let (Some(mut memory), Some(median)) = (latest, samples.get(samples.len() / 2)) {
        memory.rss_kib = *median;
        report.rss_services = Some(memory);
    }
    report.rss_services_samples = samples;
    let shims = shim_pids(&node.root);
    let shim_kib: u64 = shims.iter().filter_map(|pid| pss_kib(*pid)).sum();
    report.shims = Some((shims.len(), shim_kib));
    if !alive(agent) {
        bail!("the agent exited");
    }
    Ok(())
}

/// Per-pod instants, each the arrival of the first watch event showing it.
#[derive(Clone, Debug, Default)]
struct PodTimes {
    /// Just before the create request was sent.
    created: Option<Instant>,
    created_wall: Option<SystemTime>,
    bound: Option<Instant>,
    bound_wall: Option<SystemTime>,
    running: Option<Instant>,
    running_wall: Option<SystemTime>,
    /// A terminal phase or a waiting reason seen instead of Running.
    problem: Option<String>,
}

#[derive(Default)]
struct Tracker {
    state: Mutex<TrackerState>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct TrackerState {
    pods: HashMap<String, PodTimes>,
    running: usize,
    error: Option<String>,
}

impl Tracker {
    fn created(&self, name: &str, at: Instant, wall: SystemTime) {
        let mut state = self.state.lock().expect("not poisoned");
        let times = state.pods.entry(name.to_string()).or_default();
        times.created = Some(at);
        times.created_wall = Some(wall);
    }

    /// Records what one watch event shows about a pod.
    fn observe(&self, pod: &Value, at: Instant, wall: SystemTime) {
        let Some(name) = pod["metadata"]["name"].as_str() else {
            return;
        };
        let mut state = self.state.lock().expect("not poisoned");
        let times = state.pods.entry(name.to_string()).or_default();
        let bound = pod["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        if bound && times.bound.is_none() {
            times.bound = Some(at);
            times.bound_wall = Some(wall);
        }
        let phase = pod["status"]["phase"].as_str().unwrap_or("");
        let mut newly_running = false;
        if phase == "Running" && times.running.is_none() {
            times.running = Some(at);
            times.running_wall = Some(wall);
            newly_running = true;
        }
        if matches!(phase, "Failed" | "Succeeded") {
            times.problem = Some(format!("phase {phase}"));
        } else if let Some(reason) =
            pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                .as_str()
                .filter(|r| *r != "ContainerCreating")
        {
            times.problem = Some(reason.to_string());
        }
        if newly_running {
            state.running += 1;
        }
    }
}

/// Watches the namespace's pods from `revision`, resuming after the watch ends.
async fn watch_pods(api: ApiClient, revision: String, tracker: Arc<Tracker>) {
    let mut from = revision;
    let mut failures = 0;
    loop {
        match watch_once(&api, &mut from, &tracker).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures >= 5 {
                    tracker.state.lock().expect("not poisoned").error = Some(format!("{e:#}"));
                    tracker.changed.notify_waiters();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn watch_once(api: &ApiClient, from: &mut String, tracker: &Tracker) -> Result<()> {
    let path = format!(
        "/api/v1/namespaces/{NAMESPACE}/pods?watch=true&allowWatchBookmarks=true&timeoutSeconds=1800&resourceVersion={from}"
    );
    let response = api
        .request(Method::GET, &path)
        .timeout(Duration::from_secs(1900))
        .send()
        .await
        .context("opening the pod watch")?;
    if response.status() != StatusCode::OK {
        bail!("opening the pod watch: {}", response.status());
    }
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("reading the pod watch")?;
        let arrived = Instant::now();
        let wall = SystemTime::now();
        buffer.extend_from_slice(&chunk);
        let mut start = 0;
        let mut seen = false;
        while let Some(len) = buffer[start..].iter().position(|b| *b == b'\n') {
            let event: Value = serde_json::from_slice(&buffer[start..start + len])
                .context("decoding a watch event")?;
            start += len + 1;
            let object = &event["object"];
            if let Some(version) = object["metadata"]["resourceVersion"].as_str() {
                *from = version.to_string();
            }
            match event["type"].as_str() {
                Some("ADDED" | "MODIFIED") => {
                    tracker.observe(object, arrived, wall);
                    seen = true;
                }
                Some("ERROR") => bail!("the pod watch ended with {object}"),
                _ => {}
            }
        }
        buffer.drain(..start);
        if seen {
            tracker.changed.notify_waiters();
        }
    }
    Ok(())
}

/// Waits until `pods` pods were seen Running.
async fn wait_running(
    tracker: &Tracker,
    pods: usize,
    agent: u32,
    started: Instant,
    patience: Duration,
) -> Result<()> {
    let deadline = started + patience;
    let mut next_report = Instant::now() + REPORT_EVERY;
    loop {
        let notified = tracker.changed.notified();
        {
            let state = tracker.state.lock().expect("not poisoned");
            if let Some(error) = &state.error {
                bail!("the pod watch failed: {error}");
            }
            if state.running >= pods {
                return Ok(());
            }
            let bound = state.pods.values().filter(|t| t.bound.is_some()).count();
            let mut problems: Vec<String> = state
                .pods
                .iter()
                .filter(|(_, t)| t.running.is_none())
                .filter_map(|(n, t)| t.problem.as_ref().map(|p| format!("{n}: {p}")))
                .collect();
            problems.sort();
            problems.truncate(5);
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "timed out after {patience:?}: {} of {pods} pods Running, {bound} bound{}",
                    state.running,
                    if problems.is_empty() {
                        String::new()
                    } else {
                        format!(" (e.g. {})", problems.join(", "))
                    }
                );
            }
            if !alive(agent) {
                bail!(
                    "the agent exited ({} of {pods} pods Running)",
                    state.running
                );
            }
            if now >= next_report {
                progress!(
                    "{} of {pods} pods Running, {bound} bound{}",
                    state.running,
                    if problems.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", problems.join(", "))
                    }
                );
                next_report += REPORT_EVERY;
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
    }
}

fn pod_name(i: usize) -> String {
    format!("pod-{i:04}")
}

/// A pod for the scheduler: no node, tiny requests, a label its Services select.
fn pod(i: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(i),
            "labels": {"app": "bench-pods", "slot": i.to_string()}
        },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "app",
                "image": IMAGE,
                "command": ["sleep", "100000"],
                "resources": {"requests": {"cpu": "1m", "memory": "4Mi"}}
            }]
        }
    })
}

/// Service `j` selects the pod of slot `j % pods`: one endpoint per slice.
fn service(j: usize, pods: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": format!("svc-{j:05}")},
        "spec": {
            "type": "ClusterIP",
            "selector": {"slot": (j % pods).to_string()},
            "ports": [{"name": "http", "protocol": "TCP", "port": SERVICE_PORT, "targetPort": TARGET_PORT}]
        }
    })
}

async fn create_one(api: &ApiClient, resource: &str, body: Value) -> Result<()> {
    let name = body["metadata"]["name"].as_str().unwrap_or("?").to_string();
    let path = format!("/api/v1/namespaces/{NAMESPACE}/{resource}");
    let (status, reply) = call(api, Method::POST, &path, Some(body)).await?;
    if status != StatusCode::CREATED {
        bail!("creating {resource}/{name}: {status}: {reply}");
    }
    Ok(())
}

/// Creates the pods: one every 1/rate s (each request on its own task, so a slow reply
/// doesn't delay the next), or all at once with [`CREATORS`] clients.
async fn create_pods(
    api: &ApiClient,
    count: usize,
    rate: f64,
    burst: bool,
    tracker: &Arc<Tracker>,
) -> Result<()> {
    let mut tasks = JoinSet::new();
    if burst {
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..CREATORS {
            let (api, next, tracker) = (api.clone(), next.clone(), tracker.clone());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return anyhow::Ok(());
                    }
                    tracker.created(&pod_name(i), Instant::now(), SystemTime::now());
                    create_one(&api, "pods", pod(i)).await?;
                }
            });
        }
    } else {
        let start = tokio::time::Instant::now();
        let interval = Duration::from_secs_f64(1.0 / rate);
        for i in 0..count {
            tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
            let (api, tracker) = (api.clone(), tracker.clone());
            tracker.created(&pod_name(i), Instant::now(), SystemTime::now());
            tasks.spawn(async move { create_one(&api, "pods", pod(i)).await });
            // Reap finished requests as we go (an error stops the run early).
            while let Some(done) = tasks.try_join_next() {
                done.context("a creating task panicked")??;
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a creating task panicked")??;
    }
    Ok(())
}

/// Creates the Services with [`CREATORS`] clients.
async fn create_services(api: &ApiClient, count: usize, pods: usize) -> Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..CREATORS {
        let (api, next) = (api.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                if j >= count {
                    return anyhow::Ok(());
                }
                create_one(&api, "services", service(j, pods)).await?;
            }
        });
    }
    let mut report = tokio::time::interval(REPORT_EVERY);
    report.tick().await;
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(done) => done.context("a creating task panicked")??,
                None => return Ok(()),
            },
            _ = report.tick() => progress!(
                "{} of {count} Services created",
                next.load(Ordering::Relaxed).min(count)
            ),
        }
    }
}

/// The benchmark's frontends in the agent's pinned service map (ClusterIP, TCP port 80):
/// how many, and how many have a backend slot (their endpoint is programmed).
fn programmed(pin_dir: &Path) -> Result<(usize, usize)> {
    let path = pin_dir.join(map_names::SERVICES);
    if !path.exists() {
        return Ok((0, 0));
    }
    let data = aya::maps::MapData::from_pin(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let map: aya::maps::HashMap<_, ServiceKey, ServiceValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data))
            .context("the service map's type")?;
    let (mut frontends, mut with_backend) = (0, 0);
    for entry in map.iter() {
        // An entry deleted between two reads of the iteration: skip it.
        let Ok((key, value)) = entry else { continue };
        if key.slot == 0 && key.scope == SCOPE_ADDR && u16::from_be(key.port) == SERVICE_PORT {
            frontends += 1;
            if value.count > 0 {
                with_backend += 1;
            }
        }
    }
    Ok((frontends, with_backend))
}

/// Deletes the pods (their grace period: 1 s) and waits until the API has none left: the agent
/// deletes each pod once it has removed its sandbox.
async fn delete_pods(api: &ApiClient, patience: Duration) -> Result<()> {
    progress!("deleting the pods (the agent tears their sandboxes down)");
    let started = Instant::now();
    let path = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    let (status, body) = call(api, Method::DELETE, &path, None).await?;
    if status != StatusCode::OK {
        bail!("deleting the pods: {status}: {body}");
    }
    loop {
        let list = get(api, &format!("{path}?limit=1")).await?;
        if list["items"].as_array().is_none_or(Vec::is_empty) {
            progress!("the pods are gone ({:.2?})", started.elapsed());
            return Ok(());
        }
        if started.elapsed() >= patience {
            bail!("pods still there after {patience:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create_namespace(api: &ApiClient) -> Result<()> {
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
    let (status, reply) = call(api, Method::POST, "/api/v1/namespaces", Some(body)).await?;
    if status != StatusCode::CREATED {
        bail!("creating namespace {NAMESPACE}: {status}: {reply}");
    }
    Ok(())
}

/// Sends a request with an optional JSON body; the status and the JSON reply.
async fn call(
    api: &ApiClient,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<(StatusCode, Value)> {
    let mut request = api.request(method.clone(), path);
    if let Some(body) = body {
        request = request
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&body)?);
    }
    let response = request
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .with_context(|| format!("{method} {path}"))?;
    let status = response.status();
    let bytes = response.bytes().await.context("reading the reply")?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

async fn get(api: &ApiClient, path: &str) -> Result<Value> {
    let (status, body) = call(api, Method::GET, path, None).await?;
    if status != StatusCode::OK {
        bail!("GET {path}: {status}: {body}");
    }
    Ok(body)
}

/// Polls `check` until it yields a value; an error after `patience` or if the agent exits.
async fn wait_for<T, F, Fut>(what: &str, agent: u32, patience: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let started = Instant::now();
    let mut next_report = started + REPORT_EVERY;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if !alive(agent) {
            bail!("the agent exited while waiting for {what}");
        }
        if started.elapsed() >= patience {
            let hint = last_error
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default();
            bail!("timed out after {patience:?} waiting for {what}{hint}");
        }
        if Instant::now() >= next_report {
            progress!("still waiting for {what}");
            next_report += REPORT_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn unix_ms(t: Option<SystemTime>) -> String {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| format!("{:.3}", d.as_secs_f64() * 1000.0))
        .unwrap_or_default()
}

fn write_trace(path: &Path, times: &HashMap<String, PodTimes>) -> Result<()> {
    let mut names: Vec<&String> = times.keys().collect();
    names.sort();
    let mut out = String::from("pod,created_unix_ms,bound_unix_ms,running_unix_ms\n");
    for name in names {
        let t = &times[name];
        let _ = writeln!(
            out,
            "{name},{},{},{}",
            unix_ms(t.created_wall),
            unix_ms(t.bound_wall),
            unix_ms(t.running_wall)
        );
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// The results as a table.
fn table(report: &Report, quick: bool) -> String {
    let spread = |s: Option<Spread>| {
        s.map_or("failed".to_string(), |s| {
            format!(
                "p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                s.p50, s.p90, s.p99, s.max
            )
        })
    };
    let memory = |m: Option<Memory>| {
        m.map_or("failed".to_string(), |m| {
            format!(
                "{:.1} MiB (anon {:.1}, file {:.1}; peak VmHWM {:.1})",
                mib(m.rss_kib),
                mib(m.anon_kib),
                mib(m.file_kib),
                mib(m.hwm_kib)
            )
        })
    };
    let seconds = |v: Option<f64>| v.map_or("failed".to_string(), |v| format!("{v:.2} s"));
    let mut rows: Vec<(String, String)> = vec![
        (
            "pods / Services".into(),
            format!("{} ({}) / {}", report.pods, report.mode, report.services),
        ),
        (
            "agent start -> node Ready".into(),
            seconds(report.node_ready_s),
        ),
        (
            "pod start: bind -> Running".into(),
            spread(report.bound_to_running),
        ),
        (
            "  create -> bind (scheduler)".into(),
            spread(report.create_to_bound),
        ),
        (
            "  create -> Running".into(),
            spread(report.create_to_running),
        ),
        (
            "first create -> all Running".into(),
            seconds(report.pods_running_s),
        ),
        (
            format!("goal p50 <= {GOAL_P50_MS:.0} ms"),
            report.bound_to_running.map_or("-".into(), |s| {
                format!(
                    "{} (ratio {:.2})",
                    if s.p50 <= GOAL_P50_MS {
                        "met"
                    } else {
                        "not met"
                    },
                    s.p50 / GOAL_P50_MS
                )
            }),
        ),
        (
            "agent RSS, node Ready, no pods".into(),
            memory(report.rss_idle),
        ),
        (
            format!("agent RSS, {} pods", report.pods),
            memory(report.rss_pods),
        ),
    ];
    if report.services > 0 {
        rows.push((
            format!("{} Services created", report.services),
            seconds(report.services_created_s),
        ));
        rows.push((
            "  programmed (with endpoints)".into(),
            report.services_programmed_s.map_or("failed".into(), |s| {
                format!(
                    "{s:.2} s after the first create{}",
                    report
                        .agent_cpu_services_s
                        .map(|c| format!("; agent CPU {c:.2} s"))
                        .unwrap_or_default()
                )
            }),
        ));
    }
    rows.push((
        format!(
            "agent RSS, {} pods + {} Services",
            report.pods, report.services
        ),
        memory(report.rss_services),
    ));
    if let (Some(first), Some(last)) = (
        report.rss_services_samples.first(),
        report.rss_services_samples.last(),
    ) {
        rows.push((
            "  samples (median reported)".into(),
            format!(
                "{} over the window, {:.1} .. {:.1} MiB",
                report.rss_services_samples.len(),
                mib(*first),
                mib(*last)
            ),
        ));
    }
    if let Some((count, kib)) = report.shims {
        rows.push((
            "container monitors (not counted)".into(),
            format!(
                "{count} `keel-agent shim` processes, {:.1} MiB PSS in all",
                mib(kib)
            ),
        ));
    }
    rows.push(("load average before".into(), report.load_before.clone()));
    rows.push(("load average after".into(), load_average()));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nkeel-agent pod start and memory benchmark{}",
        if quick { " (quick)" } else { "" }
    );
    for (label, value) in rows {
        let _ = writeln!(out, "{label:<40}{value}");
    }
    out.push_str(
        "pod start: from the watch event showing spec.nodeName to the one showing phase \
         Running (arrival times, one clock);\nagent RSS: VmRSS of the keel-agent process \
         (median of samples after it settled); the containers' monitors are separate \
         processes,\nand the BPF maps are kernel memory: neither is counted\n",
    );
    out
}

fn write_json(path: &Path, figures: &Figures) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(figures)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_has_exactly_the_documented_keys() {
        let figures = Figures {
            pod_start_p50_ms: Some(120.5),
            pod_start_p99_ms: Some(410.25),
            agent_rss_mb: Some(61.3),
        };
        let value = serde_json::to_value(&figures).unwrap();
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["agent_rss_mb", "pod_start_p50_ms", "pod_start_p99_ms"]
        );
        assert_eq!(
            value,
            json!({"pod_start_p50_ms": 120.5, "pod_start_p99_ms": 410.25, "agent_rss_mb": 61.3})
        );
        assert!(value.as_object().unwrap().values().all(Value::is_number));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Spread::of(values).unwrap();
        assert_eq!((s.p50, s.p90, s.p99, s.max), (50.0, 90.0, 99.0, 100.0));
        let s = Spread::of(vec![7.0]).unwrap();
        assert_eq!((s.p50, s.p99, s.max), (7.0, 7.0, 7.0));
        let s = Spread::of(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.p50, s.p99), (2.0, 3.0));
        assert!(Spread::of(Vec::new()).is_none());
    }

    #[test]
    fn the_tracker_keeps_the_first_bind_and_running() {
        let tracker = Tracker::default();
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let pending =
            json!({"metadata": {"name": "p"}, "spec": {}, "status": {"phase": "Pending"}});
        let bound = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n"}, "status": {"phase": "Pending"}});
        let running = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n"}, "status": {"phase": "Running"}});
        tracker.observe(&pending, t0, wall);
        tracker.observe(&bound, t0 + Duration::from_millis(10), wall);
        tracker.observe(&bound, t0 + Duration::from_millis(20), wall);
        tracker.observe(&running, t0 + Duration::from_millis(100), wall);
        tracker.observe(&running, t0 + Duration::from_millis(200), wall);
        let state = tracker.state.lock().unwrap();
        let times = &state.pods["p"];
        assert_eq!(times.bound, Some(t0 + Duration::from_millis(10)));
        assert_eq!(times.running, Some(t0 + Duration::from_millis(100)));
        assert_eq!(state.running, 1);
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path(r"/tmp/a\040b/c"),
            PathBuf::from("/tmp/a b/c")
        );
        assert_eq!(unescape_mount_path("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn only_names_of_dead_runs_are_stale() {
        // Beyond the kernel's pid_max: no such process.
        assert_eq!(stale_pid("keel-bench-pods-999999999"), Some(999_999_999));
        assert_eq!(
            stale_pid("keel-bench-pods-999999999-AbC123"),
            Some(999_999_999)
        );
        assert_eq!(stale_pid(&run_name()), None);
        assert_eq!(stale_pid(&format!("{}-x", run_name())), None);
        // pid 1 is alive; the datapath benchmark's names are not ours.
        assert_eq!(stale_pid("keel-bench-pods-1"), None);
        assert_eq!(stale_pid("keel-bench-999999999"), None);
        assert_eq!(stale_pid("keel-bench-pods-x"), None);
    }

    #[test]
    fn services_select_one_pod_each() {
        let s = service(1234, 100);
        assert_eq!(s["spec"]["selector"], json!({"slot": "34"}));
        assert_eq!(s["metadata"]["name"], "svc-01234");
        assert_eq!(pod(34)["metadata"]["labels"]["slot"], "34");
    }
}
