//! `keel-control`: the control-plane binary (thin: parse flags, run the library).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use ipnet::Ipv4Net;
use keel_control::controllers::ControllerConfig;
use keel_control::{Config, StoreBackend};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StoreKind {
    Embedded,
    Etcd,
}

/// Keel's control plane: a Kubernetes-compatible API server over an embedded store or etcd.
#[derive(Debug, Parser)]
#[command(name = "keel-control", version)]
struct Args {
    /// Address to serve the API on (port 0 picks a free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Directory for the store, the CA, the serving certificate, the admin token and admin.kubeconfig.
    #[arg(long, default_value = "/var/lib/keel")]
    data_dir: PathBuf,
    /// CIDR Service ClusterIPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: Ipv4Net,
    /// CIDR pod IPs come from (node pod CIDRs are carved from it).
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: Ipv4Net,
    /// Store backend.
    #[arg(long, value_enum, default_value = "embedded")]
    store: StoreKind,
    /// etcd endpoints (comma-separated), for --store etcd.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Key prefix in etcd, for --store etcd.
    #[arg(long, default_value = "/keel")]
    etcd_prefix: String,
    /// Serve plain HTTP instead of HTTPS (debugging only; the admin token is still required).
    #[arg(long)]
    insecure_http: bool,
    /// How often to compact the store's history to the revision seen one interval earlier
    /// (e.g. 5m, 90s, 200ms; 0 disables compaction).
    #[arg(long, default_value = "5m", value_parser = keel_control::compactor::parse_interval)]
    compaction_interval: Duration,
    /// Run the controllers and the scheduler (while this process holds the leader lease in
    /// kube-system/keel-control); `--controllers=false` serves the API only.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    controllers: bool,
    /// A node whose heartbeat Lease is older than this becomes NotReady and unreachable.
    #[arg(long, default_value = "40s", value_parser = keel_control::compactor::parse_interval)]
    node_monitor_grace_period: Duration,
    /// How long a leader's lease lasts without renewal; a dead leader is replaced after about
    /// this plus one retry period (2 s).
    #[arg(long, default_value = "8s", value_parser = keel_control::compactor::parse_interval)]
    leader_lease_duration: Duration,
    /// Seconds new pods tolerate the not-ready and unreachable taints of their node (the
    /// default tolerations every pod gets): how long pods stay on a failed node.
    #[arg(long, default_value_t = 300)]
    default_toleration_seconds: i64,
    /// This process's name in the leader election (default: hostname and a random suffix).
    #[arg(long)]
    leader_identity: Option<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let store = match args.store {
        StoreKind::Embedded => StoreBackend::Embedded,
        StoreKind::Etcd => {
            if args.etcd_endpoints.is_empty() {
                anyhow::bail!("--store etcd needs --etcd-endpoints");
            }
            StoreBackend::Etcd {
                endpoints: args.etcd_endpoints,
                prefix: args.etcd_prefix,
            }
        }
    };
    let config = Config {
        listen: args.listen,
        data_dir: args.data_dir,
        service_cidr: args.service_cidr,
        cluster_cidr: args.cluster_cidr,
        store,
        insecure_http: args.insecure_http,
        compaction_interval: args.compaction_interval,
        default_toleration_seconds: args.default_toleration_seconds,
        controllers: args.controllers.then(|| {
            let mut controllers = ControllerConfig::new(args.cluster_cidr);
            if let Some(identity) = args.leader_identity.clone() {
                controllers.identity = identity;
            }
            controllers.node_monitor_grace_period = args.node_monitor_grace_period;
            controllers.leader.lease_duration =
                args.leader_lease_duration.max(Duration::from_secs(2));
            controllers.leader.renew_deadline = controllers.leader.lease_duration * 3 / 4;
            controllers
        }),
    };
    keel_control::run(config, shutdown_signal()).await
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
