//! `cargo xtask up` / `down`: a local single-node cluster — keel-control (embedded store) and
//! one keel-agent (process runtime, eBPF datapath) running in the background.
//!
//! Everything lives in fixed places so `down` finds it: state under /var/lib/keel, logs under
//! /var/log/keel, pid files and network namespaces under /run/keel, cgroups under `keel`, BPF
//! pins under /sys/fs/bpf/keel.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::root;

const STATE: &str = "/var/lib/keel";
const LOGS: &str = "/var/log/keel";
const RUN: &str = "/run/keel";
const PIN_DIR: &str = "/sys/fs/bpf/keel";
const KUBECTL: &str = "/usr/bin/kubectl";
const LISTEN: &str = "127.0.0.1:6443";

/// The admin kubeconfig `up` prints.
pub fn kubeconfig() -> PathBuf {
    Path::new(STATE).join("control/admin.kubeconfig")
}

fn pid_file(name: &str) -> PathBuf {
    Path::new(RUN).join(format!("{name}.pid"))
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

fn running(name: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file(name))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    alive(pid).then_some(pid)
}

/// Starts `cmd` detached (own process group, output to `<LOGS>/<name>.log`), records its pid.
fn spawn_background(name: &str, cmd: &mut Command) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let log_path = Path::new(LOGS).join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let pid = child.id() as i32;
    std::fs::write(pid_file(name), pid.to_string())?;
    eprintln!(
        "xtask up: {name} started (pid {pid}, log {})",
        log_path.display()
    );
    Ok(pid)
}

pub fn kubectl(args: &[&str]) -> Command {
    let mut cmd = Command::new(KUBECTL);
    cmd.arg("--kubeconfig")
        .arg(kubeconfig())
        .args(args)
        .env_remove("KUBECONFIG");
    cmd
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what} (see the logs in {LOGS})");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_else(|_| "keel-node".into())
}

/// Whether keel-control or keel-agent of `up` is running.
pub fn is_up() -> bool {
    running("keel-control").is_some() || running("keel-agent").is_some()
}

/// `cargo xtask up [--node-device DEV]...`.
pub fn up(node_devices: &[String]) -> Result<()> {
    if !crate::is_root() {
        bail!("`cargo xtask up` runs pods (namespaces, cgroups, BPF): run it as root");
    }
    if !Path::new(KUBECTL).exists() {
        bail!("{KUBECTL} is missing: install kubectl (the machine image has it)");
    }
    if is_up() {
        bail!("a cluster is already up: `cargo xtask down` first");
    }
    crate::build_ebpf()?;
    let root = root();
    eprintln!("xtask up: building keel-control and keel-agent (release)");
    crate::build_node_bins()?;
    crate::images(Path::new(STATE).join("images").as_path())?;
    for dir in [STATE, LOGS, RUN] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    }
    let bin = root.join("target/release");
    spawn_background(
        "keel-control",
        Command::new(bin.join("keel-control"))
            .args(["--listen", LISTEN, "--data-dir"])
            .arg(Path::new(STATE).join("control")),
    )?;
    wait_for("keel-control to serve", Duration::from_secs(60), || {
        kubeconfig().exists()
            && kubectl(&["get", "--raw", "/readyz"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    })?;
    let mut agent = Command::new(bin.join("keel-agent"));
    agent
        .arg("run")
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .arg("--client-ca")
        .arg(Path::new(STATE).join("control/ca.crt"))
        .arg("--root-dir")
        .arg(Path::new(STATE).join("agent"))
        .arg("--image-dir")
        .arg(Path::new(STATE).join("images"))
        .args(["--pin-dir", PIN_DIR]);
    for dev in node_devices {
        agent.args(["--node-device", dev]);
    }
    spawn_background("keel-agent", &mut agent)?;
    let node = node_name();
    wait_for(
        &format!("node {node} to be Ready"),
        Duration::from_secs(120),
        || {
            kubectl(&[
                "wait",
                "--for=condition=Ready",
                &format!("node/{node}"),
                "--timeout=2s",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        },
    )?;
    eprintln!("xtask up: node {node} is Ready");
    println!("export KUBECONFIG={}", kubeconfig().display());
    Ok(())
}

fn stop(name: &str) {
    let Some(pid) = running(name) else { return };
    // SAFETY: plain kill(2) on a pid we started.
    unsafe { libc_kill(pid, 15) };
    let start = Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if alive(pid) {
        unsafe { libc_kill(pid, 9) };
    }
    let _ = std::fs::remove_file(pid_file(name));
    eprintln!("xtask down: {name} stopped");
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// `cargo xtask down`: deletes every workload (the agent tears their sandboxes down), stops
/// both processes, and removes what is left: container monitors, network namespaces, cgroups,
/// BPF pins, state.
pub fn down() -> Result<()> {
    if !crate::is_root() {
        bail!("`cargo xtask down` cleans up namespaces, cgroups and BPF pins: run it as root");
    }
    if running("keel-control").is_some() && running("keel-agent").is_some() {
        eprintln!("xtask down: deleting every workload");
        let _ = kubectl(&[
            "delete",
            "deployments,replicasets,pods",
            "--all",
            "--all-namespaces",
            "--grace-period=1",
            "--timeout=60s",
        ])
        .stdout(Stdio::null())
        .status();
    }
    stop("keel-agent");
    stop("keel-control");
    // Leftovers (a crashed agent, a failed up): container monitors and their processes.
    let agent_root = Path::new(STATE).join("agent");
    if let Ok(out) = Command::new("pkill")
        .args(["-9", "-f", "keel-agent shim"])
        .output()
    {
        let _ = out;
    }
    let netns = Path::new(RUN).join("netns");
    if let Ok(entries) = std::fs::read_dir(&netns) {
        for entry in entries.flatten() {
            let _ = Command::new("umount").arg("-l").arg(entry.path()).status();
        }
    }
    let _ = Command::new("umount").arg("-l").arg(&netns).status();
    // `keel` in every hierarchy: each cgroup v1 controller, the v2 `unified` mount, or the v2
    // root itself.
    let mut hierarchies = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        hierarchies.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for base in hierarchies {
        remove_cgroup_tree(&base.join("keel"));
    }
    let _ = std::fs::remove_dir_all(PIN_DIR);
    // Mounts under the agent's root (container root filesystems, tmpfs volumes).
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
        let prefix = agent_root.to_string_lossy().to_string();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
    for dir in [STATE, RUN] {
        let _ = std::fs::remove_dir_all(dir);
    }
    eprintln!("xtask down: done");
    Ok(())
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
