//! The agent's Node: registration (create, or adopt an existing Node of the same name), the
//! wait for the control plane's node IPAM to assign `spec.podCIDR`, and the status heartbeat
//! (conditions, capacity, addresses, `nodeInfo`) every minute or when readiness changes.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use super::client::{ApiCallError, timed};
use super::machine::MachineInfo;
use super::quantity::bytes_quantity;
use super::status;

/// `nodeInfo.kubeletVersion`.
pub const KUBELET_VERSION: &str = "v1.33.0-keel";
/// How often the node status is refreshed when nothing changes (kubelet's
/// `nodeStatusReportFrequency`).
pub const STATUS_PERIOD: Duration = Duration::from_secs(60);
/// Memory held back from allocatable (kubelet's default hard eviction `memory.available<100Mi`).
const MEMORY_EVICTION_BYTES: u64 = 100 << 20;
/// Share of the disk held back from allocatable (kubelet's `nodefs.available<10%`).
const DISK_EVICTION_PERCENT: u64 = 10;

/// Whether the node can run pods, as its Ready condition says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Runtime up, pod network configured.
    Ready,
    /// Not yet (or no longer): the reason's message.
    NotReady(String),
}

/// Everything the Node object reports.
#[derive(Clone, Debug)]
pub struct NodeFacts {
    pub name: String,
    pub machine: MachineInfo,
    pub node_ip: Ipv4Addr,
    pub hostname: String,
    pub streaming_port: u16,
    pub max_pods: u32,
    /// `containerRuntimeVersion` (empty until the runtime exists).
    pub runtime_version: String,
}

impl NodeFacts {
    /// `capacity`.
    pub fn capacity(&self) -> BTreeMap<String, Quantity> {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(self.machine.cpus.to_string())),
            (
                "memory".to_string(),
                bytes_quantity(self.machine.memory_bytes),
            ),
            ("pods".to_string(), Quantity(self.max_pods.to_string())),
            (
                "ephemeral-storage".to_string(),
                bytes_quantity(self.machine.ephemeral_storage_bytes),
            ),
            ("hugepages-1Gi".to_string(), Quantity("0".into())),
            ("hugepages-2Mi".to_string(), Quantity("0".into())),
        ])
    }

    /// `allocatable`: capacity less kubelet's default hard eviction thresholds.
    pub fn allocatable(&self) -> BTreeMap<String, Quantity> {
        let mut out = self.capacity();
        out.insert(
            "memory".into(),
            bytes_quantity(self.allocatable_memory_bytes()),
        );
        out.insert(
            "ephemeral-storage".into(),
            Quantity(self.allocatable_ephemeral_bytes().to_string()),
        );
        out
    }

    pub fn allocatable_memory_bytes(&self) -> u64 {
        self.machine
            .memory_bytes
            .saturating_sub(MEMORY_EVICTION_BYTES)
    }

    pub fn allocatable_ephemeral_bytes(&self) -> u64 {
        self.machine.ephemeral_storage_bytes / 100 * (100 - DISK_EVICTION_PERCENT)
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), self.name.clone()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("kubernetes.io/arch".to_string(), "amd64".to_string()),
            ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
            ("beta.kubernetes.io/arch".to_string(), "amd64".to_string()),
        ])
    }

    /// The node status to report; `previous` conditions keep their transition times.
    pub fn status(&self, readiness: &Readiness, previous: &[NodeCondition]) -> NodeStatus {
        let now = status::now();
        let ready = *readiness == Readiness::Ready;
        let mut conditions: Vec<NodeCondition> = [
            (
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available".to_string(),
            ),
            (
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure".to_string(),
            ),
            (
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available".to_string(),
            ),
            if ready {
                (
                    "NetworkUnavailable",
                    "False",
                    "KeelRoutesCreated",
                    "keel-agent routes the node's pod network".to_string(),
                )
            } else {
                (
                    "NetworkUnavailable",
                    "True",
                    "NoRouteCreated",
                    "keel-agent has not set up the pod network yet".to_string(),
                )
            },
            match readiness {
                Readiness::Ready => (
                    "Ready",
                    "True",
                    "KubeletReady",
                    "keel-agent is posting ready status".to_string(),
                ),
                Readiness::NotReady(message) => {
                    ("Ready", "False", "KubeletNotReady", message.clone())
                }
            },
        ]
        .into_iter()
        .map(|(kind, status, reason, message)| NodeCondition {
            type_: kind.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(now.clone()),
        })
        .collect();
        for c in &mut conditions {
            if let Some(p) = previous
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == c.status)
                && let Some(t) = &p.last_transition_time
            {
                c.last_transition_time = Some(t.clone());
            }
        }
        NodeStatus {
            capacity: Some(self.capacity()),
            allocatable: Some(self.allocatable()),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: self.node_ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: self.hostname.clone(),
                },
            ]),
            conditions: Some(conditions),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(self.streaming_port),
                }),
            }),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".into(),
                boot_id: self.machine.boot_id.clone(),
                container_runtime_version: self.runtime_version.clone(),
                kernel_version: self.machine.kernel_version.clone(),
                kube_proxy_version: String::new(),
                kubelet_version: KUBELET_VERSION.into(),
                machine_id: self.machine.machine_id.clone(),
                operating_system: "linux".into(),
                os_image: self.machine.os_image.clone(),
                system_uuid: self.machine.system_uuid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The Node object to create.
    pub fn node(&self, readiness: &Readiness) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(self.labels()),
                annotations: Some(BTreeMap::from([(
                    "node.alpha.kubernetes.io/ttl".to_string(),
                    "0".to_string(),
                )])),
                ..Default::default()
            },
            spec: None,
            status: Some(self.status(readiness, &[])),
        }
    }
}

/// The registered Node: its name and uid (which changes if it is deleted and registered
/// again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRef {
    pub name: String,
    pub uid: String,
}

/// Creates the Node, or adopts an existing one (labels and status updated). Retries until
/// the API server answers.
pub async fn register(
    client: &Client,
    facts: &NodeFacts,
    readiness: &Readiness,
) -> Result<NodeRef> {
    let api: Api<Node> = Api::all(client.clone());
    let mut delay = Duration::from_millis(200);
    loop {
        match try_register(&api, facts, readiness).await {
            Ok(node) => return Ok(node),
            Err(e) if !transient(&e) => return Err(e.context("registering the node")),
            Err(e) => {
                warn!(
                    "registering node {}: {e:#}; retrying in {delay:?}",
                    facts.name
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(7));
            }
        }
    }
}

async fn try_register(
    api: &Api<Node>,
    facts: &NodeFacts,
    readiness: &Readiness,
) -> Result<NodeRef> {
    let node = facts.node(readiness);
    match timed(api.create(&PostParams::default(), &node)).await {
        Ok(created) => {
            info!(node = %facts.name, "registered the node");
            return node_ref(&created);
        }
        Err(e) if e.is_already_exists() || e.is_conflict() => {}
        Err(e) => return Err(e).context("creating the Node"),
    }
    // Already registered (an agent restart): adopt it.
    let existing = timed(api.get(&facts.name))
        .await
        .context("reading the Node")?;
    let patch = json!({"metadata": {"labels": facts.labels()}});
    timed(api.patch(&facts.name, &PatchParams::default(), &Patch::Merge(&patch)))
        .await
        .context("labelling the Node")?;
    let previous = existing
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let status = json!({"status": facts.status(readiness, &previous)});
    timed(api.patch_status(&facts.name, &PatchParams::default(), &Patch::Merge(&status)))
        .await
        .context("updating the Node status")?;
    info!(node = %facts.name, "adopted the existing node");
    node_ref(&existing)
}

/// Whether a registration error may go away by itself (server down or busy) rather than
/// needing the operator (bad credentials, rejected object).
fn transient(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<ApiCallError>() {
        Some(ApiCallError::Timeout) | None => true,
        Some(ApiCallError::Api(kube::Error::Api(status))) => {
            status.code >= 500 || status.code == 429 || status.code == 409
        }
        Some(ApiCallError::Api(_)) => true,
    }
}

fn node_ref(node: &Node) -> Result<NodeRef> {
    let uid = node.metadata.uid.clone().context("the Node has no uid")?;
    let name = node.metadata.name.clone().context("the Node has no name")?;
    Ok(NodeRef { name, uid })
}

/// The Node's `spec.podCIDR`, once the control plane's node IPAM has set it.
pub async fn wait_for_pod_cidr(client: &Client, name: &str) -> Result<Ipv4Net> {
    let api: Api<Node> = Api::all(client.clone());
    let started = tokio::time::Instant::now();
    let mut last_log = started;
    loop {
        match timed(api.get(name)).await {
            Ok(node) => {
                if let Some(cidr) = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
                    return cidr.parse::<Ipv4Net>().with_context(|| {
                        format!("the Node's podCIDR {cidr:?} is not an IPv4 CIDR")
                    });
                }
            }
            Err(e) => warn!("reading node {name}: {e}"),
        }
        if last_log.elapsed() > Duration::from_secs(10) {
            last_log = tokio::time::Instant::now();
            info!(
                waited = ?started.elapsed(),
                "waiting for the control plane to assign node {name} a podCIDR"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Refreshes the Node status every [`STATUS_PERIOD`] and whenever `readiness` changes;
/// registers the Node again if it was deleted (publishing its new uid on `node_ref`).
pub async fn run_status(
    client: Client,
    mut facts: watch::Receiver<NodeFacts>,
    mut readiness: watch::Receiver<Readiness>,
    node_ref: watch::Sender<NodeRef>,
) {
    let api: Api<Node> = Api::all(client.clone());
    let mut next = tokio::time::Instant::now() + STATUS_PERIOD;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            changed = readiness.changed() => if changed.is_err() { return },
            changed = facts.changed() => if changed.is_err() { return },
        }
        let facts_now = facts.borrow_and_update().clone();
        let readiness_now = readiness.borrow_and_update().clone();
        match post_status(&api, &facts_now, &readiness_now).await {
            Ok(()) => next = tokio::time::Instant::now() + STATUS_PERIOD,
            Err(StatusError::NodeGone) => {
                warn!(node = %facts_now.name, "the Node was deleted; registering it again");
                match try_register(&api, &facts_now, &readiness_now).await {
                    Ok(r) => {
                        node_ref.send_replace(r);
                        next = tokio::time::Instant::now() + STATUS_PERIOD;
                    }
                    Err(e) => {
                        warn!("registering node {}: {e:#}", facts_now.name);
                        next = tokio::time::Instant::now() + Duration::from_secs(1);
                    }
                }
            }
            Err(StatusError::Other(e)) => {
                warn!("updating node {} status: {e:#}", facts_now.name);
                next = tokio::time::Instant::now() + Duration::from_secs(2);
            }
        }
    }
}

enum StatusError {
    NodeGone,
    Other(anyhow::Error),
}

async fn post_status(
    api: &Api<Node>,
    facts: &NodeFacts,
    readiness: &Readiness,
) -> Result<(), StatusError> {
    let current = match timed(api.get(&facts.name)).await {
        Ok(node) => node,
        Err(e) if e.is_not_found() => return Err(StatusError::NodeGone),
        Err(e) => return Err(StatusError::Other(e.into())),
    };
    let previous = current
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let patch = json!({"status": facts.status(readiness, &previous)});
    match timed(api.patch_status(&facts.name, &PatchParams::default(), &Patch::Merge(&patch))).await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Err(StatusError::NodeGone),
        Err(e) => Err(StatusError::Other(e.into())),
    }
}

/// The readiness message before the runtime is up.
pub fn waiting_for_cidr_message() -> Readiness {
    Readiness::NotReady(
        "container runtime network not ready: waiting for the node's podCIDR".to_string(),
    )
}

/// Fails on a podCIDR that leaves no room for pods (the gateway takes the first address).
pub fn check_pod_cidr(cidr: Ipv4Net) -> Result<()> {
    if cidr.prefix_len() > 30 {
        bail!("podCIDR {cidr} is too small for pods");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn condition_time<'a>(status: &'a NodeStatus, kind: &str) -> Option<&'a Time> {
        status
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == kind)?
            .last_transition_time
            .as_ref()
    }

    fn facts() -> NodeFacts {
        NodeFacts {
            name: "node-a".into(),
            machine: MachineInfo {
                cpus: 2,
                memory_bytes: 24 << 30,
                ephemeral_storage_bytes: 100 << 30,
                machine_id: "m".into(),
                system_uuid: "u".into(),
                boot_id: "b".into(),
                kernel_version: "6.18.0".into(),
                os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            },
            node_ip: Ipv4Addr::new(192, 168, 1, 10),
            hostname: "node-a".into(),
            streaming_port: 10250,
            max_pods: 110,
            runtime_version: "keel-process://0.1.0".into(),
        }
    }

    #[test]
    fn capacity_and_allocatable() {
        let f = facts();
        let cap = f.capacity();
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(cap["memory"].0, format!("{}Ki", 24u64 << 20));
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(cap["ephemeral-storage"].0, format!("{}Ki", 100u64 << 20));
        let alloc = f.allocatable();
        assert_eq!(
            alloc["memory"].0,
            format!("{}Ki", (24u64 << 20) - 100 * 1024)
        );
        assert_eq!(
            alloc["ephemeral-storage"].0,
            ((100u64 << 30) / 100 * 90).to_string()
        );
        assert_eq!(alloc["cpu"].0, "2");
    }

    #[test]
    fn status_reports_readiness_and_keeps_transition_times() {
        let f = facts();
        let not_ready = f.status(&waiting_for_cidr_message(), &[]);
        let ready_cond = |s: &NodeStatus| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Ready")
                .cloned()
                .unwrap()
        };
        assert_eq!(ready_cond(&not_ready).status, "False");
        assert_eq!(
            ready_cond(&not_ready).reason.as_deref(),
            Some("KubeletNotReady")
        );

        let mut old = not_ready.conditions.clone().unwrap();
        let past = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
        for c in &mut old {
            c.last_transition_time = Some(past.clone());
        }
        let ready = f.status(&Readiness::Ready, &old);
        let r = ready_cond(&ready);
        assert_eq!(r.status, "True");
        assert_eq!(
            r.message.as_deref(),
            Some("keel-agent is posting ready status")
        );
        assert_ne!(
            condition_time(&ready, "Ready"),
            Some(&past),
            "Ready flipped"
        );
        assert_eq!(
            condition_time(&ready, "MemoryPressure"),
            Some(&past),
            "unchanged"
        );
        let info = ready.node_info.unwrap();
        assert_eq!(info.kubelet_version, "v1.33.0-keel");
        assert_eq!(info.container_runtime_version, "keel-process://0.1.0");
        assert_eq!(info.kube_proxy_version, "");
        assert_eq!(
            ready
                .daemon_endpoints
                .unwrap()
                .kubelet_endpoint
                .unwrap()
                .port,
            10250
        );
        let addresses = ready.addresses.unwrap();
        assert_eq!(addresses[0].type_, "InternalIP");
        assert_eq!(addresses[0].address, "192.168.1.10");
        assert_eq!(addresses[1].type_, "Hostname");
    }
}
