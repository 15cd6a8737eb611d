//! `keel-demo` (run by `cargo xtask demo`): Keel's eBPF Service datapath on one node, end to end.
//!
//! Builds a node in a network namespace with three echo pods and a client pod, starts the real
//! `keel-agent datapath` process with `manifests/demo-datapath.yaml` plus an EndpointSlice for the
//! pods, then: 300 requests to the ClusterIP from the client pod (spread printed), a rolling
//! replacement of every pod while a client keeps sending (failed requests counted), and the
//! NodePort from outside the node. Everything is torn down at the end.
use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use keel_tests::{
    cgroup::Cgroup,
    netns::Topology,
    process::{Limits, ProcessGuard, spawn_in},
    servers::{AskOptions, Proto, Reply, ask, spawn_server},
};

const PORT: u16 = 8080;

fn step(msg: &str) {
    eprintln!("\n==> {msg}");
}

fn slice_yaml(pods: &[(Ipv4Addr, &str)]) -> String {
    let mut s = String::from(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: echo-1\n  namespace: default\n  labels: {kubernetes.io/service-name: echo}\naddressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\nendpoints:\n",
    );
    for (ip, cond) in pods {
        s.push_str(&format!(
            "- {{addresses: [{ip}], nodeName: demo-node, conditions: {cond}}}\n"
        ));
    }
    s
}

fn write_manifest(path: &Path, service: &str, pods: &[(Ipv4Addr, &str)]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{service}\n---\n{}", slice_yaml(pods)))?;
    std::fs::rename(&tmp, path)?; // atomic: the agent never reads half a file
    Ok(())
}

fn tally(replies: &[Reply]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for r in replies {
        *t.entry(match r {
            Ok(a) => a.name.clone(),
            Err(e) => format!("error: {e}"),
        })
        .or_insert(0) += 1;
    }
    t
}

fn main() {
    if let Err(e) = run() {
        eprintln!("keel-demo: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let agent_bin = PathBuf::from(
        std::env::var("KEEL_AGENT_BIN")
            .context("KEEL_AGENT_BIN not set (run `cargo xtask demo`)")?,
    );
    let testsrv =
        PathBuf::from(std::env::var("KEEL_TESTSRV_BIN").context("KEEL_TESTSRV_BIN not set")?);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let service = std::fs::read_to_string(root.join("manifests/demo-datapath.yaml"))
        .context("reading manifests/demo-datapath.yaml")?;

    step(
        "building the node: a node namespace, 6 pod namespaces (1 client, 3 echo pods, 2 spares for the rollout), an outside host",
    );
    let topo = Topology::builder().pods(6).outside(true).build()?;
    let client_ns = topo.pod(0).netns().to_string();
    let pods_cgroup = Arc::new(Cgroup::create()?);
    let mut servers: BTreeMap<usize, ProcessGuard> = BTreeMap::new();
    for i in 1..=3 {
        let p = topo.pod(i);
        servers.insert(
            i,
            spawn_server(
                &testsrv,
                p.netns(),
                Proto::Http,
                SocketAddrV4::new(p.ip(), PORT),
                &format!("echo-{i}"),
            )?,
        );
        eprintln!("    pod echo-{i} at {}:{PORT}", p.ip());
    }

    step("starting keel-agent: loads the eBPF programs, attaches them, programs the Service");
    let work = tempdir()?;
    let manifest = work.join("demo.yaml");
    let ready = |ids: &[usize]| -> Vec<(Ipv4Addr, &'static str)> {
        ids.iter()
            .map(|i| (topo.pod(*i).ip(), "{ready: true}"))
            .collect()
    };
    write_manifest(&manifest, &service, &ready(&[1, 2, 3]))?;
    let pin_dir = format!("/sys/fs/bpf/keel-demo-{}", std::process::id());
    let mut cmd = Command::new(&agent_bin);
    cmd.args([
        "datapath",
        "--pin-dir",
        &pin_dir,
        "--node-name",
        "demo-node",
        "--manifests",
    ])
    .arg(&manifest);
    cmd.arg("--cgroup").arg(pods_cgroup.path());
    for v in topo.host_veths() {
        cmd.args(["--pod-device", v]);
    }
    let ext = topo.node_external_device().context("outside link")?;
    let node_addr = topo.node_external_addr().context("outside link")?;
    cmd.args([
        "--node-device",
        ext,
        "--node-address",
        &node_addr.to_string(),
    ]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut agent = spawn_in(topo.node_netns(), None, cmd)?;
    let lines = agent.stdout_lines()?;
    lines
        .wait_for(
            |l| l.starts_with("ready"),
            Limits::timeout(Duration::from_secs(20)),
        )
        .context("keel-agent did not get ready")?;
    let _cleanup = PinCleanup(PathBuf::from(&pin_dir));

    let vip = SocketAddrV4::new("10.96.0.100".parse()?, 80);
    step(&format!(
        "300 requests from the client pod to the ClusterIP {vip} (socket-level load balancing)"
    ));
    let replies = ask(
        &testsrv,
        &client_ns,
        Some(&pods_cgroup),
        Proto::Http,
        vip,
        AskOptions {
            count: 300,
            ..Default::default()
        },
    )?;
    for (name, n) in tally(&replies) {
        eprintln!("    {name:<10} {n:>4} {}", "#".repeat(n / 5));
    }
    if replies.iter().any(|r| r.is_err()) {
        bail!("some requests to the ClusterIP failed");
    }

    step("rolling update: each echo pod is replaced by a new one while a client keeps sending");
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, sent, failed, testsrv, ns) = (
            stop.clone(),
            sent.clone(),
            failed.clone(),
            testsrv.clone(),
            client_ns.clone(),
        );
        let cg = pods_cgroup.clone();
        std::thread::spawn(move || -> Result<()> {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let r = ask(
                    &testsrv,
                    &ns,
                    Some(&cg),
                    Proto::Http,
                    vip,
                    AskOptions {
                        count: 20,
                        ..Default::default()
                    },
                )?;
                sent.fetch_add(r.len(), Ordering::SeqCst);
                failed.fetch_add(r.iter().filter(|r| r.is_err()).count(), Ordering::SeqCst);
            }
            Ok(())
        })
    };
    // Replace echo-1 → echo-4, echo-2 → echo-5, echo-3 → echo-1 (restarted), like maxSurge 1 /
    // maxUnavailable 0: start the new pod, mark it ready, mark the old one terminating, stop it.
    let plan = [(1usize, 4usize), (2, 5), (3, 1)];
    let mut live: Vec<usize> = vec![1, 2, 3];
    for (old, new) in plan {
        let p = topo.pod(new);
        servers.insert(
            new + 10,
            spawn_server(
                &testsrv,
                p.netns(),
                Proto::Http,
                SocketAddrV4::new(p.ip(), PORT),
                &format!("echo-{new}-v2"),
            )?,
        );
        live.push(new);
        write_manifest(&manifest, &service, &ready(&live))?;
        std::thread::sleep(Duration::from_millis(700));
        let mut eps: Vec<(Ipv4Addr, &str)> = live
            .iter()
            .filter(|i| **i != old)
            .map(|i| (topo.pod(*i).ip(), "{ready: true}"))
            .collect();
        eps.push((
            topo.pod(old).ip(),
            "{ready: false, serving: true, terminating: true}",
        ));
        write_manifest(&manifest, &service, &eps)?;
        std::thread::sleep(Duration::from_millis(700));
        live.retain(|i| *i != old);
        write_manifest(&manifest, &service, &ready(&live))?;
        std::thread::sleep(Duration::from_millis(500));
        servers.remove(&old);
        eprintln!(
            "    replaced echo-{old} with echo-{new}-v2 ({} requests so far, {} failed)",
            sent.load(Ordering::SeqCst),
            failed.load(Ordering::SeqCst)
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    load.join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    eprintln!(
        "    {} requests during the rollout, {} failed",
        sent.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst)
    );

    let outside = topo.outside_netns().context("outside")?.to_string();
    let np = SocketAddrV4::new(node_addr, 30080);
    step(&format!(
        "30 requests from outside the node to the NodePort {np} (per-packet load balancing)"
    ));
    let replies = ask(
        &testsrv,
        &outside,
        None,
        Proto::Http,
        np,
        AskOptions {
            count: 30,
            ..Default::default()
        },
    )?;
    for (name, n) in tally(&replies) {
        eprintln!("    {name:<10} {n:>4}");
    }

    step("datapath counters (keel-agent stats)");
    let out = Command::new(&agent_bin)
        .args(["stats", "--pin-dir", &pin_dir])
        .output()?;
    std::io::stderr().write_all(&out.stdout)?;

    step("tearing down");
    drop(agent);
    let failed_total =
        failed.load(Ordering::SeqCst) + replies.iter().filter(|r| r.is_err()).count();
    if failed_total > 0 {
        bail!("{failed_total} requests failed");
    }
    eprintln!("demo finished: 0 failed requests");
    Ok(())
}

/// Removes the demo's pinned maps and links (detaching the programs) on every exit path.
struct PinCleanup(PathBuf);

impl Drop for PinCleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("keel-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
