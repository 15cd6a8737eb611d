//! `keel-agent`: the node agent binary (thin: parse flags, run).
//!
//! Today it has one mode, `keel-agent datapath`: load (or take over) the eBPF datapath, attach
//! it, program the Services and EndpointSlices of a manifest file, and keep it in sync with the
//! file until stopped. The cluster-driven agent (watching keel-control) builds on the same module.
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use keel_agent::{
    datapath::{DEFAULT_PIN_DIR, Datapath, DatapathConfig},
    manifest,
};
use tracing::{info, warn};

#[derive(Parser)]
#[command(name = "keel-agent", version, about = "Keel's node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the eBPF Service datapath from a manifest of Services and EndpointSlices.
    Datapath(DatapathArgs),
    /// Print the datapath's counters (drop reasons, per-frontend) from the pinned maps.
    Stats {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct DatapathArgs {
    /// Directory on bpffs for pinned maps and links.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// This node's name (endpoints' `nodeName`, for `Local` traffic policies).
    #[arg(long, default_value = "")]
    node_name: String,
    /// YAML/JSON file with Services and EndpointSlices; re-read when it changes.
    #[arg(long)]
    manifests: PathBuf,
    /// cgroup v2 directory whose processes get socket-level load balancing (repeatable).
    #[arg(long)]
    cgroup: Vec<PathBuf>,
    /// Network namespace (name under /run/netns) holding the devices below; default: ours.
    #[arg(long)]
    netns: Option<String>,
    /// Host side of a pod veth: per-packet load balancing of what leaves the pod (repeatable).
    #[arg(long)]
    pod_device: Vec<String>,
    /// Node device receiving NodePort traffic from outside (repeatable).
    #[arg(long)]
    node_device: Vec<String>,
    /// The node's addresses, where NodePorts answer (repeatable).
    #[arg(long)]
    node_address: Vec<Ipv4Addr>,
    /// Program once and exit (links and maps stay pinned and keep forwarding).
    #[arg(long)]
    once: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Datapath(args) => run_datapath(args),
        Command::Stats { pin_dir } => stats(pin_dir),
    };
    if let Err(e) = result {
        eprintln!("keel-agent: {e:#}");
        std::process::exit(1);
    }
}

fn read_manifest(path: &PathBuf) -> Result<manifest::DatapathObjects> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    manifest::parse(&text).with_context(|| format!("parsing {}", path.display()))
}

fn enter_netns(name: &str) -> Result<()> {
    let path = ["/run/netns", "/var/run/netns"]
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.exists())
        .with_context(|| format!("network namespace {name:?} not found under /run/netns"))?;
    let f = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    use std::os::fd::AsRawFd as _;
    // SAFETY: valid namespace fd; affects only this (single-threaded at this point) process.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering netns {name}"));
    }
    Ok(())
}

fn run_datapath(args: DatapathArgs) -> Result<()> {
    let objects = read_manifest(&args.manifests)?;
    let mut dp = Datapath::load(DatapathConfig {
        pin_dir: args.pin_dir.clone(),
        node_name: args.node_name.clone(),
    })
    .context("loading the datapath")?;
    for cg in &args.cgroup {
        dp.attach_cgroup(cg)?;
    }
    if let Some(ns) = &args.netns {
        enter_netns(ns)?;
    }
    for dev in &args.pod_device {
        dp.attach_pod_device(dev)?;
    }
    for dev in &args.node_device {
        dp.attach_node_device(dev)?;
    }
    dp.set_node_addresses(&args.node_address)?;
    let stats = dp.sync(&objects.services, &objects.slices)?;
    info!(
        took_over = dp.took_over(),
        frontends = stats.frontends,
        backends = stats.backends,
        writes = stats.writes,
        "datapath programmed"
    );
    // Tests and scripts wait for this line.
    println!(
        "ready frontends={} writes={}",
        stats.frontends, stats.writes
    );
    if args.once {
        return Ok(());
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let mtime = |p: &PathBuf| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    let mut seen = mtime(&args.manifests);
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        let now = mtime(&args.manifests);
        if now == seen {
            continue;
        }
        seen = now;
        match read_manifest(&args.manifests) {
            Ok(objects) => match dp.sync(&objects.services, &objects.slices) {
                Ok(s) => {
                    info!(frontends = s.frontends, writes = s.writes, "resynced");
                    println!("synced frontends={} writes={}", s.frontends, s.writes);
                }
                Err(e) => warn!("sync failed (will retry on the next change): {e}"),
            },
            Err(e) => warn!("{e:#}; keeping the programmed state"),
        }
    }
    info!("stopping; links and maps stay pinned and keep forwarding");
    Ok(())
}

fn stats(pin_dir: PathBuf) -> Result<()> {
    let dp = Datapath::load(DatapathConfig {
        pin_dir,
        node_name: String::new(),
    })?;
    let c = dp.counters()?;
    println!("drops:");
    for (reason, n) in &c.drops {
        println!("  {reason:<18} {n}");
    }
    println!("frontends:");
    for (fe, s) in &c.services {
        println!(
            "  {fe:<28} socket_lb={} packet_lb_flows={} packets={} rejected={}",
            s.socket_lb, s.packet_lb_flows, s.packets, s.rejected
        );
    }
    Ok(())
}
