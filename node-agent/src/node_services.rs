//! What runs on a node beside the pod workers, started once the runtime exists: the streaming
//! endpoint (`kubectl logs`/`exec` through keel-control) and the Service proxy (the eBPF
//! datapath programmed from the API, attached to the pods' cgroup and to each pod's veth).
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};

use crate::proxy::{Proxy, ProxyConfig};
use crate::runtime::{ContainerState, Runtime};
use crate::streaming::{self, PodLookup, ServingCert, StreamContainer, StreamPod, StreamingConfig};

/// Settings of the node services.
#[derive(Clone, Debug)]
pub struct NodeServicesConfig {
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    pub kubeconfig: PathBuf,
    pub root_dir: PathBuf,
    /// The streaming endpoint's port and the CA of the control plane's client certificate
    /// (no CA: no streaming endpoint).
    pub streaming_port: u16,
    pub client_ca: Option<PathBuf>,
    /// The Service proxy (None: no datapath, e.g. without BPF).
    pub proxy: Option<ProxyConfig>,
}

/// Pods as the runtime knows them, for the streaming endpoint.
struct RuntimeLookup {
    runtime: Arc<dyn Runtime>,
}

#[async_trait]
impl PodLookup for RuntimeLookup {
    async fn pod(&self, namespace: &str, name: &str) -> Option<StreamPod> {
        let sandboxes = self.runtime.list_sandboxes().await.ok()?;
        let sandbox = sandboxes
            .into_iter()
            .filter(|s| s.config.namespace == namespace && s.config.name == name)
            .max_by_key(|s| s.created_at)?;
        let containers = self.runtime.list_containers(Some(&sandbox.id)).await.ok()?;
        // The latest attempt of each container name.
        let mut latest: Vec<StreamContainer> = Vec::new();
        for c in containers {
            match latest.iter_mut().find(|l| l.name == c.name) {
                Some(l) if l.restart_count >= c.restart_count => {}
                Some(l) => {
                    l.id = Some(c.id.clone());
                    l.restart_count = c.restart_count;
                }
                None => latest.push(StreamContainer {
                    name: c.name.clone(),
                    id: (c.state != ContainerState::Unknown).then(|| c.id.clone()),
                    restart_count: c.restart_count,
                }),
            }
        }
        Some(StreamPod {
            sandbox: sandbox.id,
            containers: latest,
        })
    }
}

/// Starts the streaming endpoint and the Service proxy for `runtime`; they run in background
/// tasks for the life of the process.
pub async fn start(config: NodeServicesConfig, runtime: Arc<dyn Runtime>) -> Result<()> {
    let kube_config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&config.kubeconfig)
            .with_context(|| format!("reading {}", config.kubeconfig.display()))?,
        &Default::default(),
    )
    .await
    .context("loading the kubeconfig")?;
    let client = kube::Client::try_from(kube_config).context("building the API client")?;

    if let Some(client_ca) = &config.client_ca {
        let mut streaming_config = StreamingConfig::new(config.streaming_port, client_ca);
        streaming_config.serving_cert = ServingCert::SelfSigned {
            dir: Some(config.root_dir.join("pki")),
            hosts: vec![config.node_ip.to_string(), config.node_name.clone()],
        };
        let server = streaming::serve(
            streaming_config,
            runtime.clone(),
            Arc::new(RuntimeLookup {
                runtime: runtime.clone(),
            }),
        )
        .await
        .context("starting the streaming endpoint")?;
        // keel-control pins the serving certificate from this annotation.
        let nodes: kube::Api<Node> = kube::Api::all(client.clone());
        let patch = serde_json::json!({"metadata": {"annotations": {
            streaming::SERVING_CERT_ANNOTATION: server.serving_cert_sha256(),
        }}});
        nodes
            .patch(
                &config.node_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .context("publishing the streaming certificate on the Node")?;
        tracing::info!(addr = %server.addr(), "streaming endpoint (logs, exec) started");
        // The server lives as long as the process.
        std::mem::forget(server);
    }

    if let Some(proxy_config) = &config.proxy {
        let proxy = Proxy::start(proxy_config)?;
        let runner = proxy.clone();
        let watch_client = client.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = runner.run(watch_client.clone()).await {
                    tracing::warn!(error = %format!("{e:#}"), "the Service proxy stopped; restarting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        // Attach the per-packet program to every pod veth as sandboxes come and go.
        tokio::spawn(async move {
            let mut attached: HashSet<String> = HashSet::new();
            loop {
                if let Ok(sandboxes) = runtime.list_sandboxes().await {
                    let now: HashSet<String> = sandboxes
                        .iter()
                        .filter_map(|s| s.host_veth.clone())
                        .collect();
                    for veth in now.difference(&attached.clone()) {
                        match proxy.attach_pod_device(veth) {
                            Ok(()) => {
                                attached.insert(veth.clone());
                            }
                            Err(e) => {
                                tracing::debug!(veth, error = %format!("{e:#}"), "attaching the datapath to a pod veth (retrying)")
                            }
                        }
                    }
                    for veth in attached.clone().difference(&now) {
                        proxy.detach_pod_device(veth);
                        attached.remove(veth);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        tracing::info!("Service proxy (eBPF datapath) started");
    }
    Ok(())
}
