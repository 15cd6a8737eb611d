//! `keel-agent`: the node agent binary (thin: parse flags, run).
//!
//! `keel-agent run` is the node agent (see [`keel_agent::agent`]): it registers the Node with
//! keel-control and runs the pods bound to it on the embedded process runtime.
//! `keel-agent datapath` loads (or takes over) the eBPF datapath, attaches it, programs the
//! Services and EndpointSlices of a manifest file, and keeps it in sync with the file until
//! stopped.
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use keel_agent::{
    agent::{self, AgentConfig, RuntimeFactory},
    datapath::{DEFAULT_PIN_DIR, Datapath, DatapathConfig},
    manifest,
    runtime::{
        Runtime,
        process::runtime::{ProcessConfig, ProcessRuntime},
    },
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
    /// Run the node agent: register the Node, run the pods bound to it, report their status.
    Run(RunArgs),
    /// Internal: the per-container monitor the process runtime starts (`shim <container dir>`).
    #[command(hide = true)]
    Shim { dir: PathBuf },
    /// Internal: write keel.local/busybox and keel.local/echo into an image store (run by
    /// `cargo xtask images`).
    #[command(hide = true)]
    Images {
        #[arg(long, default_value = keel_agent::runtime::process::images::DEFAULT_IMAGE_DIR)]
        image_dir: PathBuf,
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        /// The static keel-echo binary (the echo image is skipped without it).
        #[arg(long)]
        echo_binary: Option<PathBuf>,
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

#[derive(clap::Args)]
struct RunArgs {
    /// The Node's name (default: this machine's hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// Kubeconfig of the cluster (keel-control writes `<data-dir>/admin.kubeconfig`).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// State, volumes, IPAM and container upper dirs.
    #[arg(long, default_value = agent::DEFAULT_ROOT_DIR)]
    root_dir: PathBuf,
    /// Network namespace mounts and sockets.
    #[arg(long, default_value = agent::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Container logs.
    #[arg(long, default_value = agent::DEFAULT_LOG_DIR)]
    log_dir: PathBuf,
    /// The local OCI image store.
    #[arg(long, default_value = agent::DEFAULT_IMAGE_DIR)]
    image_dir: PathBuf,
    /// cgroup holding every pod (in each hierarchy).
    #[arg(long, default_value = agent::DEFAULT_CGROUP_PARENT)]
    cgroup_parent: String,
    /// The address the Node reports (default: the first global IPv4 of the default-route
    /// device).
    #[arg(long)]
    node_ip: Option<Ipv4Addr>,
    /// Port of the streaming endpoint (logs, exec) reported in the Node's daemonEndpoints.
    #[arg(long, default_value_t = agent::DEFAULT_STREAMING_PORT)]
    streaming_port: u16,
    /// The Node's pod capacity.
    #[arg(long, default_value_t = agent::DEFAULT_MAX_PODS)]
    max_pods: u32,
    /// CA of the control plane's client certificate (`<control data-dir>/ca.crt`): only it may
    /// use the streaming endpoint. Without it, `kubectl logs`/`exec` are not served.
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Program the eBPF Service datapath (`--datapath=false` leaves Services to someone else).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    datapath: bool,
    /// Directory on bpffs for the datapath's pinned maps and links.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Node devices where NodePorts answer traffic from outside (repeatable; default: the
    /// default-route device).
    #[arg(long)]
    node_device: Vec<String>,
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
        Command::Run(args) => run_agent(args),
        Command::Shim { dir } => std::process::exit(keel_agent::runtime::process::shim::main(&dir)),
        Command::Images {
            image_dir,
            busybox,
            echo_binary,
        } => keel_agent::runtime::process::images::build_keel_images(
            &image_dir,
            &busybox,
            echo_binary.as_deref(),
        )
        .map(drop)
        .map_err(anyhow::Error::from),
    };
    if let Err(e) = result {
        eprintln!("keel-agent: {e:#}");
        std::process::exit(1);
    }
}

fn run_agent(args: RunArgs) -> Result<()> {
    let node_name = args
        .node_name
        .unwrap_or_else(agent::machine::hostname)
        .to_lowercase();
    let config = AgentConfig {
        node_name,
        kubeconfig: args.kubeconfig,
        root_dir: args.root_dir,
        run_dir: args.run_dir,
        log_dir: args.log_dir,
        image_dir: args.image_dir,
        cgroup_parent: args.cgroup_parent,
        node_ip: args.node_ip,
        streaming_port: args.streaming_port,
        max_pods: args.max_pods,
    };
    let process = ProcessConfig {
        root_dir: config.root_dir.clone(),
        run_dir: config.run_dir.clone(),
        log_dir: config.log_dir.clone(),
        image_dir: config.image_dir.clone(),
        cgroup_parent: config.cgroup_parent.clone(),
        pod_cidr: ipnet::Ipv4Net::default(),
    };
    let services = (
        config.kubeconfig.clone(),
        config.root_dir.clone(),
        config.streaming_port,
        args.client_ca,
        args.datapath,
        args.pin_dir,
        args.node_device,
        config.cgroup_parent.clone(),
    );
    let factory: RuntimeFactory = Box::new(move |network| {
        Box::pin(async move {
            let runtime: Arc<dyn Runtime> = Arc::new(
                ProcessRuntime::new(ProcessConfig {
                    pod_cidr: network.pod_cidr,
                    ..process
                })
                .await?,
            );
            let (
                kubeconfig,
                root_dir,
                streaming_port,
                client_ca,
                datapath,
                pin_dir,
                mut node_devices,
                cgroup_parent,
            ) = services;
            if node_devices.is_empty()
                && let Some(dev) = default_route_device()
            {
                node_devices.push(dev);
            }
            let unified = if std::path::Path::new("/sys/fs/cgroup/unified").is_dir() {
                PathBuf::from("/sys/fs/cgroup/unified")
            } else {
                PathBuf::from("/sys/fs/cgroup")
            };
            let proxy = datapath.then(|| keel_agent::proxy::ProxyConfig {
                pin_dir,
                node_name: network.node_name.clone(),
                cgroup: unified.join(&cgroup_parent),
                node_addresses: node_addresses(network.node_ip, &node_devices),
                node_devices,
            });
            keel_agent::node_services::start(
                keel_agent::node_services::NodeServicesConfig {
                    node_name: network.node_name.clone(),
                    node_ip: network.node_ip,
                    kubeconfig,
                    root_dir,
                    streaming_port,
                    client_ca,
                    proxy,
                },
                runtime.clone(),
            )
            .await?;
            Ok(runtime)
        })
    });
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(agent::run(config, factory))
}

/// The device of the default IPv4 route (from /proc/net/route).
/// Where NodePorts answer: the node's IP and every IPv4 address of the node devices (as
/// kube-proxy does with an empty `nodePortAddresses`, limited to the devices Keel serves).
fn node_addresses(node_ip: std::net::Ipv4Addr, devices: &[String]) -> Vec<std::net::Ipv4Addr> {
    let mut out = vec![node_ip];
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            if !devices.contains(&a.interface_name) {
                continue;
            }
            if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
                let ip = sin.ip();
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    out
}

fn default_route_device() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    routes.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&"00000000")).then(|| fields[0].to_string())
    })
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
