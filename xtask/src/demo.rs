//! `cargo xtask demo`: Keel end to end on one machine, through stock kubectl.
//!
//! 1. An "outside" host: network namespace `keel-outside` joined to the node by the veth
//!    `keel-ext0` (198.51.100.1 on the node, 198.51.100.2 outside).
//! 2. `cargo xtask up --node-device keel-ext0`: keel-control and one keel-agent.
//! 3. `kubectl apply -f manifests/demo.yaml`: 3 echo servers, a ClusterIP and a NodePort Service,
//!    a busybox client pod; waits for the rollout.
//! 4. 300 requests from the client pod to the ClusterIP (socket-level eBPF load balancing),
//!    with their spread over the pods.
//! 5. A rolling update to a new version while the client keeps sending; failed requests counted.
//! 6. 30 requests from outside the node to the NodePort (per-packet eBPF load balancing).
//! 7. `cargo xtask down` and the outside host removed, on every path.
//!
//! A note on the client: Debian's static busybox `wget` crashes (SIGSEGV) when given `-T`, so
//! each request is bounded with busybox `timeout` instead.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cluster;

const OUTSIDE_NETNS: &str = "keel-outside";
const NODE_SIDE: &str = "keel-ext0";
const NODE_SIDE_ADDR: &str = "198.51.100.1";
const OUTSIDE_ADDR: &str = "198.51.100.2";
const NODE_PORT: u16 = 30080;

fn step(msg: &str) {
    eprintln!("\n==> {msg}");
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2; `cargo xtask setup` installs it)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn create_outside() -> Result<()> {
    remove_outside();
    ip(&["netns", "add", OUTSIDE_NETNS])?;
    ip(&[
        "link",
        "add",
        NODE_SIDE,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        OUTSIDE_NETNS,
    ])?;
    ip(&[
        "addr",
        "add",
        &format!("{NODE_SIDE_ADDR}/24"),
        "dev",
        NODE_SIDE,
    ])?;
    ip(&["link", "set", NODE_SIDE, "up"])?;
    let ns = |args: &[&str]| {
        let mut all = vec!["-n", OUTSIDE_NETNS];
        all.extend_from_slice(args);
        ip(&all)
    };
    ns(&["link", "set", "lo", "up"])?;
    ns(&["addr", "add", &format!("{OUTSIDE_ADDR}/24"), "dev", "eth0"])?;
    ns(&["link", "set", "eth0", "up"])?;
    ns(&["route", "add", "default", "via", NODE_SIDE_ADDR])?;
    Ok(())
}

fn remove_outside() {
    let quiet = |args: &[&str]| {
        let _ = Command::new("ip")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    quiet(&["link", "del", NODE_SIDE]);
    quiet(&["netns", "del", OUTSIDE_NETNS]);
}

/// `kubectl ARGS`, output captured; fails with kubectl's message.
fn kubectl_out(args: &[&str]) -> Result<String> {
    let out = cluster::kubectl(args).output().context("running kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl ARGS` with its output shown.
fn kubectl_show(args: &[&str]) -> Result<()> {
    let status = cluster::kubectl(args).status().context("running kubectl")?;
    if !status.success() {
        bail!("kubectl {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// A shell loop for the busybox client: `n` requests (or until /tmp/stop exists when `n` is
/// 0), printing one line per request: `OK <pod>` or `FAIL <reason>`.
fn request_loop(wget: &str, url: &str, n: usize) -> String {
    let cond = if n == 0 {
        "[ ! -f /tmp/stop ]".to_string()
    } else {
        format!("[ $i -lt {n} ]")
    };
    format!(
        "rm -f /tmp/stop; i=0; while {cond}; do \
           if out=$(timeout 5 {wget} -q -O- {url} 2>&1); then echo \"OK $out\"; \
           else echo \"FAIL $(echo $out | tr '\\n' ' ')\"; fi; i=$((i+1)); done"
    )
}

#[derive(Default)]
struct Tally {
    by_pod: BTreeMap<String, usize>,
    failed: Vec<String>,
}

impl Tally {
    fn add(&mut self, line: &str) {
        if let Some(pod) = line.strip_prefix("OK ") {
            *self.by_pod.entry(pod.trim().to_string()).or_insert(0) += 1;
        } else if let Some(reason) = line.strip_prefix("FAIL") {
            self.failed.push(reason.trim().to_string());
        }
    }

    fn ok(&self) -> usize {
        self.by_pod.values().sum()
    }

    fn print(&self) {
        let total = self.ok() + self.failed.len();
        for (pod, n) in &self.by_pod {
            let share = 100.0 * *n as f64 / total.max(1) as f64;
            let bar = "#".repeat((share / 2.0).round() as usize);
            eprintln!("    {pod:<28} {n:>5}  {share:>5.1}%  {bar}");
        }
        if !self.failed.is_empty() {
            eprintln!("    failed: {}", self.failed.len());
            for reason in self.failed.iter().take(5) {
                eprintln!("      {reason}");
            }
        }
    }
}

fn tally(output: &str) -> Tally {
    let mut t = Tally::default();
    for line in output.lines() {
        t.add(line);
    }
    t
}

/// `cargo xtask demo`.
pub fn demo() -> Result<()> {
    if !crate::is_root() {
        bail!("the demo runs pods (namespaces, cgroups, BPF): run it as root");
    }
    if cluster::is_up() {
        bail!("a cluster is already up (`cargo xtask up`): `cargo xtask down` first");
    }
    let started = Instant::now();
    step(&format!(
        "an outside host: network namespace {OUTSIDE_NETNS} ({OUTSIDE_ADDR}), joined to the node by {NODE_SIDE} ({NODE_SIDE_ADDR})"
    ));
    let result = create_outside().and_then(|()| {
        step("cargo xtask up: building and starting keel-control and keel-agent");
        cluster::up(&[NODE_SIDE.to_string()])?;
        scenario()
    });
    step("tearing down: cargo xtask down");
    let down = cluster::down();
    remove_outside();
    result?;
    down?;
    eprintln!(
        "\n==> demo finished in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn scenario() -> Result<()> {
    let manifest = crate::root().join("manifests/demo.yaml");
    step(&format!(
        "kubectl apply -f {}",
        manifest
            .strip_prefix(crate::root())
            .unwrap_or(&manifest)
            .display()
    ));
    kubectl_show(&["apply", "-f", &manifest.to_string_lossy()])?;
    step("waiting for the rollout (kubectl rollout status deployment/echo)");
    let t = Instant::now();
    kubectl_show(&["rollout", "status", "deployment/echo", "--timeout=180s"])?;
    kubectl_show(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=120s",
    ])?;
    eprintln!("    ready in {:.1} s", t.elapsed().as_secs_f64());
    kubectl_show(&["get", "pods,services", "-o", "wide"])?;

    let cluster_ip = kubectl_out(&["get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}"])?;
    let cluster_ip = cluster_ip.trim();
    let url = format!("http://{cluster_ip}:80/");

    step(&format!(
        "300 requests from pod/client to the ClusterIP {url} (socket-level eBPF load balancing)"
    ));
    let t = Instant::now();
    let out = kubectl_out(&[
        "exec",
        "client",
        "--",
        "sh",
        "-c",
        &request_loop("wget", &url, 300),
    ])?;
    let spread = tally(&out);
    eprintln!(
        "    {} answered, {} failed, in {:.2} s; spread over the pods:",
        spread.ok(),
        spread.failed.len(),
        t.elapsed().as_secs_f64()
    );
    spread.print();
    if spread.ok() != 300 {
        bail!(
            "{} of 300 requests to the ClusterIP failed",
            300 - spread.ok()
        );
    }
    if spread.by_pod.len() < 2 {
        bail!("every request went to one pod: the Service is not load-balanced");
    }

    step(
        "rolling update to a new version (kubectl set env deployment/echo VERSION=v2) while the client keeps sending",
    );
    let mut client = cluster::kubectl(&[
        "exec",
        "client",
        "--",
        "sh",
        "-c",
        &request_loop("wget", &url, 0),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .context("starting the client loop")?;
    let stdout = client.stdout.take().context("client stdout")?;
    let reader = std::thread::spawn(move || {
        let mut t = Tally::default();
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            t.add(&line);
        }
        t
    });
    // Let the client get going before the update.
    std::thread::sleep(Duration::from_secs(1));
    let rollout = kubectl_show(&["set", "env", "deployment/echo", "VERSION=v2"])
        .and_then(|()| kubectl_show(&["rollout", "status", "deployment/echo", "--timeout=180s"]));
    // Old pods keep serving for a moment after SIGTERM; keep sending until they are gone.
    let wait_old = wait_until(Duration::from_secs(60), || {
        kubectl_out(&["get", "pods", "-l", "app=echo", "--no-headers"])
            .map(|o| o.lines().count() == 3 && !o.contains("Terminating"))
            .unwrap_or(false)
    });
    std::thread::sleep(Duration::from_secs(1));
    let stopped = kubectl_out(&["exec", "client", "--", "touch", "/tmp/stop"]);
    let exited = wait_until(Duration::from_secs(15), || {
        client.try_wait().ok().flatten().is_some()
    });
    if exited.is_err() {
        let _ = client.kill();
    }
    let _ = client.wait();
    let during = reader
        .join()
        .map_err(|_| anyhow::anyhow!("client reader panicked"))?;
    rollout?;
    wait_old?;
    stopped?;
    eprintln!(
        "    during the update: {} requests answered, {} failed (goal: 0)",
        during.ok(),
        during.failed.len()
    );
    during.print();
    kubectl_show(&["get", "pods", "-o", "wide"])?;

    let node_ip = kubectl_out(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={.items[0].status.addresses[?(@.type==\"InternalIP\")].address}",
    ])?;
    let node_ip = node_ip.trim().to_string();
    step(&format!(
        "30 requests from outside the node ({OUTSIDE_NETNS}, {OUTSIDE_ADDR}) to the NodePort {node_ip}:{NODE_PORT} (per-packet eBPF load balancing on {NODE_SIDE})"
    ));
    let out = Command::new("ip")
        .args(["netns", "exec", OUTSIDE_NETNS, "busybox", "sh", "-c"])
        .arg(request_loop(
            "busybox wget",
            &format!("http://{node_ip}:{NODE_PORT}/"),
            30,
        ))
        .current_dir(Path::new("/"))
        .output()
        .context("running the outside client")?;
    let outside = tally(&String::from_utf8_lossy(&out.stdout));
    eprintln!(
        "    {} answered, {} failed; spread over the pods:",
        outside.ok(),
        outside.failed.len()
    );
    outside.print();
    if outside.ok() != 30 {
        bail!(
            "{} of 30 requests to the NodePort failed",
            30 - outside.ok()
        );
    }

    // NodePorts answer on every address of the node devices too (kube-proxy's default).
    let url = format!("http://{NODE_SIDE_ADDR}:{NODE_PORT}/");
    let out = Command::new("ip")
        .args(["netns", "exec", OUTSIDE_NETNS, "busybox", "sh", "-c"])
        .arg(request_loop("busybox wget", &url, 10))
        .current_dir(Path::new("/"))
        .output()
        .context("running the outside client")?;
    let side = tally(&String::from_utf8_lossy(&out.stdout));
    eprintln!(
        "    and {url} (the address of {NODE_SIDE}): {} of 10 answered, by {} pods",
        side.ok(),
        side.by_pod.len()
    );
    if side.ok() != 10 {
        bail!("{} of 10 requests to {url} failed", 10 - side.ok());
    }

    step("summary");
    eprintln!(
        "    ClusterIP: 300/300 answered by {} pods; rolling update: {} failed of {}; NodePort from outside: 30/30 answered by {} pods",
        spread.by_pod.len(),
        during.failed.len(),
        during.ok() + during.failed.len(),
        outside.by_pod.len()
    );
    Ok(())
}

fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}
