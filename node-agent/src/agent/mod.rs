//! The kubelet part of keel-agent: registers the Node, keeps its Lease and status fresh, and
//! runs the pods bound to it through a [`Runtime`], reporting their status.
//!
//! Start-up ([`run_until`]):
//! 1. an API client from the kubeconfig ([`client`]);
//! 2. the Node registered (or adopted) NotReady, its Lease renewed every 10 s ([`node`],
//!    [`lease`]);
//! 3. the wait for the control plane's node IPAM to set `spec.podCIDR`;
//! 4. the runtime built by the caller's [`RuntimeFactory`] for that pod network — the
//!    factory runs once, inside the agent's tokio runtime, and may also start what needs the
//!    runtime (the streaming server, the datapath);
//! 5. the Node reported Ready, then the pod manager ([`pods`]) watches the node's pods and
//!    runs one worker per pod ([`worker`]), adopting what the runtime still runs from a
//!    previous agent and removing what belongs to pods that no longer exist.
//!
//! The pure parts are separate: [`env`] (environment resolution, `$(VAR)` expansion),
//! [`volumes`] (host directories for volumes), [`status`] (phase, conditions, container
//! statuses), [`probe`] (probe thresholds and runners), [`backoff`] (CrashLoopBackOff),
//! [`quantity`] (resource quantities), [`machine`] (the machine's facts).
//!
//! Stopping the agent leaves the pods running; the next agent adopts them.
pub mod backoff;
pub mod client;
pub mod env;
pub mod lease;
pub mod machine;
pub mod node;
pub mod pods;
pub mod probe;
pub mod quantity;
pub mod status;
pub mod status_writer;
pub mod volumes;
pub mod worker;

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use futures::future::BoxFuture;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::runtime::Runtime;
use node::{NodeFacts, Readiness};

/// The agent's configuration (the `keel-agent run` flags).
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The Node's name.
    pub node_name: String,
    /// Kubeconfig of the cluster (keel-control writes `<data-dir>/admin.kubeconfig`).
    pub kubeconfig: PathBuf,
    /// State, volumes, IPAM, container upper dirs.
    pub root_dir: PathBuf,
    /// Network namespace mounts, sockets.
    pub run_dir: PathBuf,
    /// Container logs (`<ns>_<pod>_<uid>/<container>/<restart>.log`).
    pub log_dir: PathBuf,
    /// The OCI image store.
    pub image_dir: PathBuf,
    /// cgroup (relative to each hierarchy's root) holding every pod.
    pub cgroup_parent: String,
    /// The address the Node reports (InternalIP); default: the first global IPv4 of the
    /// default-route device.
    pub node_ip: Option<Ipv4Addr>,
    /// Port of the agent's streaming endpoint (logs, exec), reported as the Node's
    /// `daemonEndpoints.kubeletEndpoint.port`.
    pub streaming_port: u16,
    /// `capacity.pods`.
    pub max_pods: u32,
}

/// Default `--root-dir`.
pub const DEFAULT_ROOT_DIR: &str = "/var/lib/keel/agent";
/// Default `--run-dir`.
pub const DEFAULT_RUN_DIR: &str = "/run/keel";
/// Default `--log-dir`.
pub const DEFAULT_LOG_DIR: &str = "/var/log/keel/pods";
/// Default `--image-dir`.
pub const DEFAULT_IMAGE_DIR: &str = "/var/lib/keel/images";
/// Default `--cgroup-parent`.
pub const DEFAULT_CGROUP_PARENT: &str = "keel";
/// Default `--streaming-port` (kubelet's port).
pub const DEFAULT_STREAMING_PORT: u16 = 10250;
/// Default `--max-pods` (kubelet's).
pub const DEFAULT_MAX_PODS: u32 = 110;

impl AgentConfig {
    /// The defaults for a node name and kubeconfig.
    pub fn new(node_name: impl Into<String>, kubeconfig: impl Into<PathBuf>) -> AgentConfig {
        AgentConfig {
            node_name: node_name.into(),
            kubeconfig: kubeconfig.into(),
            root_dir: DEFAULT_ROOT_DIR.into(),
            run_dir: DEFAULT_RUN_DIR.into(),
            log_dir: DEFAULT_LOG_DIR.into(),
            image_dir: DEFAULT_IMAGE_DIR.into(),
            cgroup_parent: DEFAULT_CGROUP_PARENT.into(),
            node_ip: None,
            streaming_port: DEFAULT_STREAMING_PORT,
            max_pods: DEFAULT_MAX_PODS,
        }
    }
}

/// What the runtime is built for: the node and its pod network.
#[derive(Clone, Debug)]
pub struct NodeNetwork {
    pub node_name: String,
    /// The node's address (InternalIP).
    pub node_ip: Ipv4Addr,
    /// The node's `spec.podCIDR`: pod IPs come from it, the first host address is the pods'
    /// gateway.
    pub pod_cidr: Ipv4Net,
}

/// Builds the runtime once the pod network is known. Called once, inside the agent's tokio
/// runtime (so it may spawn tasks, e.g. a streaming server holding a clone of the runtime).
///
/// ```ignore
/// let factory: RuntimeFactory = Box::new(|network| Box::pin(async move {
///     let runtime = ProcessRuntime::new(ProcessConfig { pod_cidr: network.pod_cidr, .. }).await?;
///     Ok(Arc::new(runtime) as Arc<dyn Runtime>)
/// }));
/// ```
pub type RuntimeFactory =
    Box<dyn FnOnce(NodeNetwork) -> BoxFuture<'static, Result<Arc<dyn Runtime>>> + Send + 'static>;

/// Aborts the agent's background tasks when dropped.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: AgentConfig, runtime: RuntimeFactory) -> Result<()> {
    run_until(config, runtime, shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs the agent until `shutdown` completes. Pods keep running after it returns.
pub async fn run_until(
    config: AgentConfig,
    runtime_factory: RuntimeFactory,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    tokio::select! {
        result = serve(config, runtime_factory) => result,
        _ = shutdown => {
            info!("stopping; pods keep running");
            Ok(())
        }
    }
}

async fn serve(config: AgentConfig, runtime_factory: RuntimeFactory) -> Result<()> {
    let client = client::from_kubeconfig(&config.kubeconfig).await?;
    let root_dir = config.root_dir.clone();
    let machine = tokio::task::spawn_blocking(move || machine::MachineInfo::read(&root_dir))
        .await
        .context("reading the machine's facts")??;
    let node_ip = match config.node_ip {
        Some(ip) => ip,
        None => machine::default_node_ip()?,
    };
    let facts = NodeFacts {
        name: config.node_name.clone(),
        machine,
        node_ip,
        hostname: config.node_name.clone(),
        streaming_port: config.streaming_port,
        max_pods: config.max_pods,
        runtime_version: String::new(),
    };
    let not_ready = node::waiting_for_cidr_message();
    let node_ref = node::register(&client, &facts, &not_ready).await?;
    info!(node = %node_ref.name, ip = %node_ip, "node registered");

    let mut tasks = Tasks(Vec::new());
    let (node_ref_tx, node_ref_rx) = watch::channel(node_ref);
    tasks
        .0
        .push(tokio::spawn(lease::run(client.clone(), node_ref_rx)));
    let (facts_tx, facts_rx) = watch::channel(facts.clone());
    let (readiness_tx, readiness_rx) = watch::channel(not_ready);
    tasks.0.push(tokio::spawn(node::run_status(
        client.clone(),
        facts_rx,
        readiness_rx,
        node_ref_tx,
    )));

    let pod_cidr = node::wait_for_pod_cidr(&client, &config.node_name).await?;
    node::check_pod_cidr(pod_cidr)?;
    info!(%pod_cidr, "the node has its podCIDR");
    let network = NodeNetwork {
        node_name: config.node_name.clone(),
        node_ip,
        pod_cidr,
    };
    let runtime = match runtime_factory(network).await {
        Ok(r) => r,
        Err(e) => {
            readiness_tx.send_replace(Readiness::NotReady(format!(
                "container runtime is down: {e:#}"
            )));
            // Let the status task report it before giving up.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Err(e.context("starting the container runtime"));
        }
    };
    let mut ready_facts = facts.clone();
    ready_facts.runtime_version = runtime.version();
    facts_tx.send_replace(ready_facts.clone());
    readiness_tx.send_replace(Readiness::Ready);

    // Services, for the Service link environment variables of containers.
    let (services, writer) = reflector::store::<Service>();
    let service_events = reflector::reflector(
        writer,
        watcher::watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .boxed();
    tasks.0.push(tokio::spawn(async move {
        let mut events = service_events;
        while let Some(event) = events.next().await {
            if let Err(e) = event {
                warn!("watching services: {e}");
            }
        }
    }));
    if tokio::time::timeout(Duration::from_secs(5), services.wait_until_ready())
        .await
        .is_err()
    {
        warn!("services are not listed yet; containers started now get no Service variables");
    }

    let shared = Arc::new(worker::Shared {
        client: client.clone(),
        runtime,
        root_dir: config.root_dir.clone(),
        node_name: config.node_name.clone(),
        node_ip,
        allocatable: worker::Allocatable {
            cpu_millis: i128::from(ready_facts.machine.cpus) * 1000,
            memory_bytes: i128::from(ready_facts.allocatable_memory_bytes()),
            ephemeral_bytes: i128::from(ready_facts.allocatable_ephemeral_bytes()),
        },
        objects: Arc::new(client::ApiObjects {
            client: client.clone(),
        }),
        services,
    });
    info!(node = %config.node_name, "node ready; running pods");
    pods::run(shared).await;
    drop(tasks);
    anyhow::bail!("the pod watch ended")
}
