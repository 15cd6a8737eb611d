//! The Service proxy: what replaces kube-proxy on a Keel node. It watches Services and
//! EndpointSlices through the API (kube-rs reflectors) and programs the eBPF datapath with the
//! whole desired state after each burst of changes (the datapath's planner writes only the
//! entries that changed). Pod devices are attached as the runtime creates them.
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;

use crate::datapath::{Datapath, DatapathConfig};

/// How long changes are gathered before the datapath is programmed.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// Settings of the proxy.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// bpffs directory for the pinned maps and links.
    pub pin_dir: PathBuf,
    pub node_name: String,
    /// cgroup v2 directory holding every pod (socket-level load balancing applies under it).
    pub cgroup: PathBuf,
    /// Node devices receiving NodePort traffic.
    pub node_devices: Vec<String>,
    /// The node's addresses (NodePorts answer on them).
    pub node_addresses: Vec<Ipv4Addr>,
}

/// A running proxy: the datapath, shared with the agent (which attaches pod devices).
#[derive(Clone)]
pub struct Proxy {
    datapath: Arc<Mutex<Datapath>>,
}

impl Proxy {
    /// Loads (or takes over) the datapath and attaches it to the pods' cgroup and the node
    /// devices.
    pub fn start(config: &ProxyConfig) -> Result<Proxy> {
        let mut datapath = Datapath::load(DatapathConfig {
            pin_dir: config.pin_dir.clone(),
            node_name: config.node_name.clone(),
        })
        .context("loading the eBPF datapath (run `cargo xtask build-ebpf` if it is missing)")?;
        std::fs::create_dir_all(&config.cgroup)
            .with_context(|| format!("creating the pods' cgroup {}", config.cgroup.display()))?;
        datapath.attach_cgroup(&config.cgroup)?;
        for device in &config.node_devices {
            datapath.attach_node_device(device)?;
        }
        datapath.set_node_addresses(&config.node_addresses)?;
        // Pod veths deleted while no agent ran left their pins behind.
        match datapath.prune_device_pins() {
            Ok(0) => {}
            Ok(n) => tracing::info!(pins = n, "removed the tc pins of devices that are gone"),
            Err(e) => tracing::warn!(error = %e, "pruning tc pins"),
        }
        Ok(Proxy {
            datapath: Arc::new(Mutex::new(datapath)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Datapath> {
        self.datapath.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches the per-packet program to a pod's host-side veth (NodePort replies and clients
    /// outside the cgroup).
    pub fn attach_pod_device(&self, ifname: &str) -> Result<()> {
        Ok(self.lock().attach_pod_device(ifname)?)
    }

    /// Forgets a pod's veth (it went away with the pod).
    pub fn detach_pod_device(&self, ifname: &str) {
        if let Err(e) = self.lock().detach_device(ifname) {
            tracing::debug!(ifname, error = %e, "detaching a pod device");
        }
    }

    /// Watches Services and EndpointSlices and keeps the datapath in sync, until the task is
    /// dropped.
    pub async fn run(&self, client: Client) -> Result<()> {
        let (services, services_writer) = reflector::store::<Service>();
        let (slices, slices_writer) = reflector::store::<EndpointSlice>();
        let changed = Arc::new(Notify::new());
        let services_stream = reflector(
            services_writer,
            watcher(
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .touched_objects()
        .for_each(|_| {
            changed.notify_one();
            async {}
        });
        let slices_stream = reflector(
            slices_writer,
            watcher(
                Api::<EndpointSlice>::all(client),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .touched_objects()
        .for_each(|_| {
            changed.notify_one();
            async {}
        });
        let programmer = async {
            services.wait_until_ready().await.ok();
            slices.wait_until_ready().await.ok();
            loop {
                tokio::time::sleep(DEBOUNCE).await;
                // The caches' own objects (Arcs), not copies: 10 000 Services would otherwise
                // be cloned on every sync.
                let all_services = services.state();
                let all_slices = slices.state();
                let datapath = self.datapath.clone();
                let result = tokio::task::spawn_blocking(move || {
                    datapath
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .sync(&all_services, &all_slices)
                        .map_err(anyhow::Error::from)
                })
                .await;
                match result {
                    Ok(Ok(stats)) => {
                        tracing::debug!(frontends = stats.frontends, "datapath programmed")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %format!("{e:#}"), "programming the datapath failed")
                    }
                    Err(e) => tracing::warn!(error = %e, "the datapath task failed"),
                }
                changed.notified().await;
            }
        };
        tokio::select! {
            _ = services_stream => {}
            _ = slices_stream => {}
            _ = programmer => {}
        }
        anyhow::bail!("the Service watches ended")
    }

    /// Removes the programs and maps (on `keel-agent cleanup`).
    pub fn teardown(self) -> Result<()> {
        match Arc::try_unwrap(self.datapath) {
            Ok(datapath) => Ok(datapath
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .teardown()?),
            Err(_) => anyhow::bail!("the datapath is still in use"),
        }
    }
}
