//! `cargo xtask`: the project's build and run tasks.
//!
//! - `setup`: install what a fresh Debian 12 machine lacks (packages, bpf-linker); idempotent.
//! - `build-ebpf`: build the BPF object the node agent embeds.
//! - `test`: build the BPF object, then run the whole test suite.
//! - `bench`: run the datapath benchmark (direct vs iptables vs Keel); `bench api`: the API
//!   server benchmark (embedded store vs etcd).
//! - `bench sched`: the scheduler's throughput and a Deployment rollout on hollow nodes.
//! - `bench pods`: the node agent's pod start latency and memory (100 pods, 10 000 Services).
//! - `demo`: the local cluster demo (`demo --datapath`: the datapath alone).
//! - `up` / `down`: a local single-node cluster in the background.
//! - `images`: build the local OCI images (keel.local/busybox, keel.local/echo) the agent runs.
mod cluster;
mod demo;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Keel's build and run tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the Debian packages and bpf-linker the build, tests and benchmark need.
    Setup,
    /// Build the eBPF programs (release, with BTF) into target/bpf.
    BuildEbpf,
    /// Build the eBPF programs, then run every test (root-only tests skip when not root).
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmark the datapath against direct pod IPs and a kube-proxy iptables ruleset (root);
    /// `bench api [--quick] [--json PATH]`: the API server on the embedded store vs etcd.
    /// `bench sched [--quick] [--json PATH] [--nodes N] [--pods N]`: scheduling throughput and
    /// a 100-replica rollout on hollow nodes.
    /// `bench pods [--quick] [--json PATH] [--pods N] [--services N]` (root): the real agent's
    /// pod start latency (bind -> Running, p50/p99 over 100 pods) and its memory with 100 pods
    /// and 10 000 Services, in private namespaces.
    Bench {
        /// Arguments for keel-bench (`--quick`, `--json PATH`, `--chart PATH`, `--services 1,1000`),
        /// or `api` then arguments for keel-bench-api (`--quick`, `--json PATH`, `--stores etcd`).
        /// Or `sched` then arguments for keel-bench-sched (`--quick`, `--json PATH`, `--nodes N`,
        /// `--pods N`, `--timeout SECONDS`).
        /// Or `pods` then arguments for keel-bench-pods (`--quick`, `--json PATH`, `--pods N`,
        /// `--services N`, `--rate PODS_PER_S`, `--burst`, `--timeout SECONDS`, `--trace CSV`;
        /// the agent's log is kept in target/bench-pods/agent.log).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The demo (root): a local cluster (`up`), manifests/demo.yaml rolled out, requests to the
    /// ClusterIP from a pod and to the NodePort from outside, a rolling update under load, `down`.
    Demo {
        /// Instead: the datapath alone (issue 2's demo), backends in network namespaces behind
        /// the real eBPF datapath without the control plane.
        #[arg(long)]
        datapath: bool,
    },
    /// Start a local single-node cluster in the background (keel-control on 127.0.0.1:6443 with
    /// the embedded store, one keel-agent) and wait until the node is Ready; prints
    /// `export KUBECONFIG=...` last (root).
    Up {
        /// Extra node devices where NodePorts answer (besides the default-route device).
        #[arg(long)]
        node_device: Vec<String>,
    },
    /// Stop the local cluster and remove everything it created (root).
    Down,
    /// Build the local OCI images keel.local/busybox:latest and keel.local/echo:latest into the
    /// agent's image store (root for the default directory).
    Images {
        /// The image store (the agent's `--image-dir`).
        #[arg(long, default_value = "/var/lib/keel/images")]
        image_dir: PathBuf,
    },
}

/// Debian packages: the BPF toolchain (see ../shared/TOOLCHAIN.md and the README), and the
/// tools the tests and the benchmark drive.
const PACKAGES: &[&str] = &[
    // Debian's rustc 1.96 on LLVM 22 with a prebuilt `core` for bpfel-unknown-none.
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    // bpf-linker is built against LLVM 22 and needs it at run time.
    "llvm-22",
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    // Networking tools used by tests and the benchmark.
    "iproute2",
    "iptables",
    "nftables",
    "bpftool",
    "wrk",
    "iperf3",
    "nginx-light",
    // The benchmark chart; virtualenvs for the Python client tests.
    "python3-matplotlib",
    "python3-venv",
    // The store conformance tests run the etcd backend against a real etcd (and etcdctl helps
    // when debugging it).
    "etcd-server",
    "etcd-client",
    // etcd-client (the crate) compiles its protobuf definitions at build time.
    "protobuf-compiler",
    // /bin/busybox (static) for the keel.local/busybox image (`cargo xtask images`).
    "busybox-static",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_TARGET: &str = "bpfel-unknown-none";

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup(),
        Task::BuildEbpf => build_ebpf(),
        Task::Test { args } => test(&args),
        Task::Bench { args } => bench(&args),
        Task::Demo { datapath: false } => demo::demo(),
        Task::Demo { datapath: true } => datapath_demo(),
        Task::Images { image_dir } => images(&image_dir),
        Task::Up { node_device } => cluster::up(&node_device),
        Task::Down => cluster::down(),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status: ExitStatus = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

fn os_release() -> (String, String, String) {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    (get("ID"), get("VERSION_ID"), get("ID_LIKE"))
}

fn missing_packages() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

fn bpf_linker() -> PathBuf {
    let home = env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo")
        });
    home.join("bin/bpf-linker")
}

fn bpf_linker_ok() -> bool {
    Command::new(bpf_linker())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}

fn setup() -> Result<()> {
    let (id, version, like) = os_release();
    let debian12 = id == "debian" && version == "12";
    if !debian12 {
        eprintln!(
            "xtask setup: this machine is {id} {version}; automatic setup supports Debian 12.\n\
             Install instead:\n\
             - a Rust toolchain that can build for {BPF_TARGET}: either Debian-style `rustc-web` +\n\
               `libstd-rust-web-dev-bpf` (prebuilt BPF core), or rustup nightly with the rust-src\n\
               component (`rustup toolchain install nightly --component rust-src`);\n\
             - LLVM 22 development files (llvm-22-dev, libpolly-22-dev, zlib and zstd dev packages);\n\
             - bpf-linker {BPF_LINKER_VERSION}: LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version {BPF_LINKER_VERSION} \\\n\
               --locked --no-default-features --features llvm-22;\n\
             - for tests and benchmarks: iproute2, iptables, bpftool, wrk, iperf3, nginx, python3 with matplotlib.\n\
             Then run `cargo xtask build-ebpf` (set KEEL_EBPF_TOOLCHAIN=nightly for the rustup route)."
        );
        if !like.split_whitespace().any(|l| l == "debian") && id != "debian" {
            bail!("unsupported distribution for automatic setup (see above for what to install)");
        }
        eprintln!("xtask setup: {id} is Debian-like; trying the Debian packages anyway");
    }
    let missing = missing_packages();
    if missing.is_empty() {
        eprintln!("xtask setup: Debian packages present");
    } else {
        if !is_root() {
            bail!(
                "missing Debian packages {missing:?}; run `cargo xtask setup` as root (it uses apt-get)"
            );
        }
        eprintln!("xtask setup: installing {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if bpf_linker_ok() {
        eprintln!("xtask setup: bpf-linker {BPF_LINKER_VERSION} present");
    } else {
        eprintln!(
            "xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        );
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            env::var("PATH").unwrap_or_default()
        );
        run(Command::new(cargo())
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env("PATH", path))?;
    }
    python_client()?;
    eprintln!("xtask setup: done");
    Ok(())
}

/// The official Kubernetes Python client, in a virtualenv under target/ (used by the API tests).
fn python_client() -> Result<()> {
    let venv = root().join("target/pyenv");
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import kubernetes"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        eprintln!("xtask setup: Python kubernetes client present");
        return Ok(());
    }
    eprintln!(
        "xtask setup: installing the Python kubernetes client into {}",
        venv.display()
    );
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "-q", "kubernetes>=37,<38"]))
}

fn build_ebpf() -> Result<()> {
    let root = root();
    let mut cmd = Command::new(cargo());
    cmd.current_dir(&root)
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", bpf_linker())
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    if env::var("KEEL_EBPF_TOOLCHAIN").as_deref() == Ok("nightly") {
        // The upstream aya route: rustup nightly with rust-src builds `core` for BPF itself.
        cmd.args(["+nightly", "build", "-Z", "build-std=core"]);
    } else {
        // Debian's rustc ships a prebuilt `core` for BPF; aya-ebpf needs nightly features,
        // which RUSTC_BOOTSTRAP unlocks on this stable compiler.
        if !Path::new("/usr/bin/rustc").exists() || !bpf_linker().exists() {
            bail!(
                "the BPF toolchain is missing: run `cargo xtask setup` (or see the README for other distributions)"
            );
        }
        cmd.env("RUSTC", "/usr/bin/rustc")
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["build", "--ignore-rust-version"]);
    }
    cmd.args([
        "--release",
        "--target",
        BPF_TARGET,
        "-p",
        "keel-ebpf",
        "--target-dir",
    ])
    .arg(root.join("target/bpf"));
    eprintln!("xtask: building the eBPF programs");
    run(&mut cmd)?;
    let object = root
        .join("target/bpf")
        .join(BPF_TARGET)
        .join("release/keel-datapath");
    if !object.exists() {
        bail!("the build finished but {} is missing", object.display());
    }
    eprintln!("xtask: built {}", object.display());
    Ok(())
}

fn test(args: &[String]) -> Result<()> {
    build_ebpf()?;
    if !is_root() {
        eprintln!("xtask test: not root: tests that need root (BPF, namespaces) will print SKIP");
    }
    // The leader-election test runs real keel-control processes next to the test binaries.
    run(Command::new(cargo()).current_dir(root()).args([
        "build",
        "-p",
        "keel-control",
        "--bin",
        "keel-control",
    ]))?;
    run(Command::new(cargo())
        .current_dir(root())
        .args(["test", "--workspace"])
        .args(args))
}

/// `cargo run --release -p keel-tests --bin <bin> -- ...`: the benchmark binaries.
fn bench_bin(bin: &str) -> Command {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root()).args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "keel-tests",
        "--bin",
        bin,
        "--",
    ]);
    cmd
}

fn bench(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        // The API benchmark runs keel-control and etcd as an ordinary user: no BPF, no root.
        Some("api") => return run(bench_bin("keel-bench-api").args(&args[1..])),
        // The scheduler benchmark runs keel-control and hollow nodes in one process: no root.
        Some("sched") => return run(bench_bin("keel-bench-sched").args(&args[1..])),
        _ => {}
    }
    if args.first().map(String::as_str) == Some("pods") {
        // The real agent (process runtime, eBPF datapath) in private namespaces: root. It runs
        // the release keel-agent with the eBPF object built in, and keel.local/busybox from an
        // image store of the benchmark's own (not the one `up` uses).
        if !is_root() {
            bail!("`bench pods` runs the node agent (namespaces, cgroups, BPF): run it as root");
        }
        build_ebpf()?;
        let root = root();
        let image_dir = root.join("target/bench-images");
        // Builds keel-control and keel-agent (release) too.
        images(&image_dir)?;
        return run(bench_bin("keel-bench-pods")
            .arg("--agent-bin")
            .arg(root.join("target/release/keel-agent"))
            .arg("--image-dir")
            .arg(&image_dir)
            .arg("--agent-log")
            .arg(root.join("target/bench-pods/agent.log"))
            .args(&args[1..]));
    }
    build_ebpf()?;
    if !is_root() {
        bail!("the benchmark builds network namespaces and loads BPF programs: run it as root");
    }
    run(bench_bin("keel-bench").args(args))
}

fn datapath_demo() -> Result<()> {
    build_ebpf()?;
    if !is_root() {
        bail!("the demo builds network namespaces and loads BPF programs: run it as root");
    }
    let root = root();
    run(Command::new(cargo()).current_dir(&root).args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "keel-agent",
        "-p",
        "keel-tests",
        "--bins",
    ]))?;
    let bin = root.join("target/release");
    run(Command::new(bin.join("keel-demo"))
        .env("KEEL_AGENT_BIN", bin.join("keel-agent"))
        .env("KEEL_TESTSRV_BIN", bin.join("keel-testsrv")))
}

/// Builds keel-control and keel-agent (release) in one cargo invocation. `up` and `images`
/// both use exactly this, so the second finds everything built (building the agent alone would
/// resolve features differently and compile it again).
fn build_node_bins() -> Result<()> {
    run(Command::new(cargo()).current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "keel-control",
        "--bin",
        "keel-control",
        "-p",
        "keel-agent",
        "--bin",
        "keel-agent",
    ]))
}

/// `cargo xtask images`: keel.local/busybox:latest from Debian's static busybox and
/// keel.local/echo:latest from `keel-echo` built as a static binary, written as OCI image
/// layouts by `keel-agent images` (the agent's own image code). Idempotent.
fn images(image_dir: &Path) -> Result<()> {
    if !Path::new("/bin/busybox").exists() {
        bail!("/bin/busybox is missing: install busybox-static (`cargo xtask setup`)");
    }
    if let Err(e) = std::fs::create_dir_all(image_dir) {
        bail!(
            "cannot create the image store {}: {e} (the default needs root; or pass --image-dir)",
            image_dir.display()
        );
    }
    let root = root();
    let triple = format!("{}-unknown-linux-gnu", env::consts::ARCH);
    // Its own target dir: different RUSTFLAGS must not invalidate the workspace's build.
    let target_dir = root.join("target/images");
    eprintln!("xtask images: building keel-echo (static, release)");
    run(Command::new(cargo())
        .current_dir(&root)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=debuginfo",
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["build", "--release", "-p", "keel-echo", "--target", &triple])
        .arg("--target-dir")
        .arg(&target_dir))?;
    let echo = target_dir.join(&triple).join("release/keel-echo");
    eprintln!("xtask images: building keel-agent (release), which writes the image layouts");
    build_node_bins()?;
    run(Command::new(root.join("target/release/keel-agent"))
        .arg("images")
        .arg("--image-dir")
        .arg(image_dir)
        .arg("--echo-binary")
        .arg(&echo))?;
    eprintln!("xtask images: done ({})", image_dir.display());
    Ok(())
}
