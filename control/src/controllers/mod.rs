//! The controllers and the scheduler, run by the elected leader among the `keel-control`
//! processes sharing a store.
//!
//! - [`runtime`]: informers (watch-fed caches), the work queue, the worker loop.
//! - [`client`]: typed writes through the API layer; [`events`]: the event recorder.
//! - [`leader`]: leader election on a Lease.
//! - [`replicaset`], [`deployment`], [`endpointslice`], [`gc`] (ownerReferences, finalizers,
//!   orphaned pods, old events), [`nodes`] (node lifecycle and node IPAM), [`scheduler`].
//!
//! Every controller is level-triggered: handlers on the shared informers only queue keys, and a
//! reconciler reads the caches and makes the store match. A new leader (or a restarted process)
//! starts from fresh caches and converges from whatever is stored.
pub mod client;
pub mod deployment;
pub mod endpointslice;
pub mod events;
pub mod gc;
pub mod leader;
pub mod nodes;
pub mod replicaset;
pub mod runtime;
pub mod scheduler;

use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::task::{JoinHandle, JoinSet};

use crate::apiserver::registry;
use crate::apiserver::storage::Api;
use client::Client;
use events::Recorder;
use runtime::Informer;

/// Settings of the controllers (the `keel-control` flags that concern them).
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// This process's name in the leader election (hostname and a random suffix by default).
    pub identity: String,
    pub leader: leader::Timings,
    /// Node pod CIDRs are carved from this range.
    pub cluster_cidr: Ipv4Net,
    /// The prefix length of each node's pod CIDR.
    pub node_cidr_mask_size: u8,
    /// A node whose Lease has not been renewed for this long becomes NotReady (Unknown).
    pub node_monitor_grace_period: Duration,
    /// How often node health is checked.
    pub node_monitor_period: Duration,
}

impl ControllerConfig {
    pub fn new(cluster_cidr: Ipv4Net) -> Self {
        let host = crate::pki::hostname().unwrap_or_else(|| "keel-control".into());
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        ControllerConfig {
            identity: format!("{host}_{}", &suffix[..8]),
            leader: leader::Timings::default(),
            cluster_cidr,
            node_cidr_mask_size: 24,
            node_monitor_grace_period: Duration::from_secs(40),
            node_monitor_period: Duration::from_secs(5),
        }
    }
}

/// What every controller shares: the client, the event recorder and the informers.
pub struct Context {
    pub client: Client,
    pub config: ControllerConfig,
    pub events: Recorder,
    pub pods: Arc<Informer<Pod>>,
    pub nodes: Arc<Informer<Node>>,
    pub services: Arc<Informer<Service>>,
    pub endpoint_slices: Arc<Informer<EndpointSlice>>,
    pub replica_sets: Arc<Informer<ReplicaSet>>,
    pub deployments: Arc<Informer<Deployment>>,
    pub leases: Arc<Informer<Lease>>,
    /// The event writer, awaited when the controllers stop (it holds the store).
    events_writer: std::sync::Mutex<Option<JoinHandle<()>>>,
}

fn resource(kind: &str) -> &'static registry::Resource {
    registry::by_kind(kind).unwrap_or_else(|| panic!("kind {kind} is registered"))
}

impl Context {
    fn new(api: Arc<Api>, config: ControllerConfig) -> Arc<Self> {
        let client = Client::new(api);
        let (events, writer) = Recorder::spawn(
            client.clone(),
            "keel-control",
            Some(config.identity.clone()),
        );
        Arc::new(Context {
            client,
            config,
            events,
            pods: Informer::new(resource("Pod")),
            nodes: Informer::new(resource("Node")),
            services: Informer::new(resource("Service")),
            endpoint_slices: Informer::new(resource("EndpointSlice")),
            replica_sets: Informer::new(resource("ReplicaSet")),
            deployments: Informer::new(resource("Deployment")),
            leases: Informer::new(resource("Lease")),
            events_writer: std::sync::Mutex::new(Some(writer)),
        })
    }

    /// Waits until every shared informer has loaded its first list.
    pub async fn wait_synced(&self) {
        self.pods.wait_synced().await;
        self.nodes.wait_synced().await;
        self.services.wait_synced().await;
        self.endpoint_slices.wait_synced().await;
        self.replica_sets.wait_synced().await;
        self.deployments.wait_synced().await;
        self.leases.wait_synced().await;
    }

    /// Breaks the handler cycles (informer -> handler -> controller -> context -> informer) so
    /// that everything the controllers held, the store included, is freed.
    fn shutdown(&self) {
        self.pods.clear_handlers();
        self.nodes.clear_handlers();
        self.services.clear_handlers();
        self.endpoint_slices.clear_handlers();
        self.replica_sets.clear_handlers();
        self.deployments.clear_handlers();
        self.leases.clear_handlers();
    }

    fn run_informers(self: &Arc<Self>, tasks: &mut JoinSet<()>) {
        let api = self.client.api.clone();
        tasks.spawn(self.pods.clone().run(api.clone()));
        tasks.spawn(self.nodes.clone().run(api.clone()));
        tasks.spawn(self.services.clone().run(api.clone()));
        tasks.spawn(self.endpoint_slices.clone().run(api.clone()));
        tasks.spawn(self.replica_sets.clone().run(api.clone()));
        tasks.spawn(self.deployments.clone().run(api.clone()));
        tasks.spawn(self.leases.clone().run(api));
    }
}

/// Starts every controller and the scheduler on fresh informers; they stop when `tasks` is
/// dropped.
pub fn start_all(api: Arc<Api>, config: ControllerConfig, tasks: &mut JoinSet<()>) -> Arc<Context> {
    let ctx = Context::new(api, config);
    // Controllers register their handlers before the informers deliver anything.
    replicaset::start(&ctx, tasks);
    deployment::start(&ctx, tasks);
    endpointslice::start(&ctx, tasks);
    gc::start(&ctx, tasks);
    nodes::start(&ctx, tasks);
    scheduler::start(&ctx, tasks);
    ctx.run_informers(tasks);
    ctx
}

/// The controllers of one `keel-control`: a leader-election loop that runs them while this
/// process leads.
pub struct Controllers {
    task: JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Controllers {
    /// Campaigns for the lease and runs the controllers while holding it.
    pub fn spawn(api: Arc<Api>, config: ControllerConfig) -> Controllers {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut elector = leader::Elector::new(
                Client::new(api.clone()),
                config.identity.clone(),
                config.leader.clone(),
            );
            loop {
                tokio::select! {
                    _ = elector.acquire() => {}
                    _ = &mut stopped => return,
                }
                let mut tasks = JoinSet::new();
                let ctx = start_all(api.clone(), config.clone(), &mut tasks);
                let stop_now = tokio::select! {
                    _ = elector.hold() => false,
                    _ = &mut stopped => true,
                };
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                // Let the event writer drain and drop its handle on the store.
                ctx.shutdown();
                let writer = ctx
                    .events_writer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                drop(ctx);
                if let Some(writer) = writer
                    && tokio::time::timeout(Duration::from_secs(5), writer)
                        .await
                        .is_err()
                {
                    tracing::warn!("the event writer did not finish within 5 s");
                }
                if stop_now {
                    elector.release().await;
                    return;
                }
                tracing::warn!(
                    identity = elector.identity(),
                    "stopped leading; controllers stopped"
                );
            }
        });
        Controllers { task, stop }
    }

    /// Stops the controllers and hands the lease over.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
