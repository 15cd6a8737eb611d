//! Hollow nodes, like Kubernetes' kubemark: a fleet of fake kubelets that play the kubelet's
//! part of the API (register the Node, renew its Lease, report bound pods Running and finish
//! their graceful deletion) without running any container, over HTTPS through [`ApiClient`],
//! so it works against any keel-control, in-process or not.
//!
//! Built for scale (1 000 nodes and 10 000 pods from one process on 2 cores): a handful of
//! tasks, not one per node or pod. Two reflectors (pods bound to any node, and nodes) feed one
//! actor that owns all state and a timer heap (heartbeats spread over their period, start and
//! termination delays, retries); one writer runs the actor's requests with bounded
//! concurrency, heartbeats before pod writes.
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus,
    DaemonEndpoint, HostIP, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    ListMeta, MicroTime, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::jiff::Timestamp;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api_client::ApiClient;

/// The namespace of node heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// `leaseDurationSeconds` of the node Leases (kubelet's default).
pub const LEASE_DURATION_SECONDS: i32 = 40;
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
const MERGE_PATCH: &str = "application/merge-patch+json";
/// How long a watch request lasts before it is renewed (the server ends it).
const WATCH_SECONDS: u64 = 290;
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Page size of the reflectors' lists.
const LIST_LIMIT: usize = 500;

/// How the fleet's nodes look and behave.
#[derive(Clone, Debug)]
pub struct HollowOptions {
    /// `capacity` and `allocatable` cpu (default "4").
    pub cpu: String,
    /// `capacity` and `allocatable` memory (default "16Gi").
    pub memory: String,
    /// `capacity` and `allocatable` pods (default "110").
    pub pods: String,
    /// Labels added to every Node besides `kubernetes.io/hostname`, `kubernetes.io/os` and
    /// `kubernetes.io/arch`.
    pub labels: BTreeMap<String, String>,
    /// How often each node's Lease is renewed (kubelet: 10 s).
    pub heartbeat: Duration,
    /// How often each node's conditions get a new `lastHeartbeatTime` (kubelet: 1 min when
    /// nothing changed).
    pub status_period: Duration,
    /// Delay between seeing a pod bound to a node and reporting it Running.
    pub start_delay: Duration,
    /// Delay between seeing a pod's `deletionTimestamp` and deleting it for good.
    pub termination_delay: Duration,
    /// Requests in flight at once, all nodes together.
    pub max_in_flight: usize,
}

impl Default for HollowOptions {
    fn default() -> Self {
        HollowOptions {
            cpu: "4".into(),
            memory: "16Gi".into(),
            pods: "110".into(),
            labels: BTreeMap::new(),
            heartbeat: Duration::from_secs(10),
            status_period: Duration::from_secs(60),
            start_delay: Duration::ZERO,
            termination_delay: Duration::ZERO,
            max_in_flight: 32,
        }
    }
}

/// Counters of what the fleet wrote since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetStats {
    /// Lease renewals (and re-creations) that succeeded.
    pub leases_renewed: u64,
    /// Node status refreshes that succeeded.
    pub node_status_updates: u64,
    /// Pods reported Running for the first time.
    pub pods_started: u64,
    /// Pod status writes that succeeded (starts and readiness changes).
    pub pod_status_writes: u64,
    /// Pods whose deletion the fleet completed (`gracePeriodSeconds=0`).
    pub pods_deleted: u64,
    /// Requests that failed (transport errors, 5xx, unexpected replies); most are retried.
    pub write_errors: u64,
}

#[derive(Default)]
struct Counters {
    leases_renewed: AtomicU64,
    node_status_updates: AtomicU64,
    pods_started: AtomicU64,
    pod_status_writes: AtomicU64,
    pods_deleted: AtomicU64,
    write_errors: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> FleetStats {
        FleetStats {
            leases_renewed: self.leases_renewed.load(Ordering::Relaxed),
            node_status_updates: self.node_status_updates.load(Ordering::Relaxed),
            pods_started: self.pods_started.load(Ordering::Relaxed),
            pod_status_writes: self.pod_status_writes.load(Ordering::Relaxed),
            pods_deleted: self.pods_deleted.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
        }
    }
}

/// A running fleet of hollow nodes. Stop it with [`HollowFleet::stop`]; dropping it aborts
/// its tasks.
pub struct HollowFleet {
    nodes: Vec<String>,
    commands: mpsc::UnboundedSender<Command>,
    counters: Arc<Counters>,
    tasks: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl HollowFleet {
    /// Registers `nodes` (Node and Lease; an existing Node is adopted and marked Ready), then
    /// starts their heartbeats and pod handling. Fails when a node cannot be registered.
    pub async fn start(
        api: ApiClient,
        nodes: Vec<String>,
        opts: HollowOptions,
    ) -> Result<HollowFleet> {
        let mut seen = HashSet::new();
        if let Some(dup) = nodes.iter().find(|n| !seen.insert(n.as_str())) {
            bail!("node {dup} is listed twice");
        }
        let opts = Arc::new(HollowOptions {
            max_in_flight: opts.max_in_flight.max(1),
            ..opts
        });
        let registered: Vec<Result<String>> =
            futures::stream::iter(nodes.iter().enumerate().map(|(index, name)| {
                let api = api.clone();
                let opts = opts.clone();
                async move { register(&api, name, index, &opts).await }
            }))
            .buffered(opts.max_in_flight)
            .collect()
            .await;
        let mut uids = Vec::with_capacity(nodes.len());
        for (name, uid) in nodes.iter().zip(registered) {
            uids.push(uid.with_context(|| format!("registering hollow node {name}"))?);
        }

        let counters = Arc::new(Counters::default());
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (pods_tx, pods_rx) = mpsc::unbounded_channel();
        let (nodes_tx, nodes_rx) = mpsc::unbounded_channel();
        let (urgent_tx, urgent_rx) = mpsc::unbounded_channel();
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let (outcomes_tx, outcomes_rx) = mpsc::unbounded_channel();

        let writer = tokio::spawn(run_writer(
            api.clone(),
            urgent_rx,
            jobs_rx,
            outcomes_tx,
            counters.clone(),
            opts.max_in_flight,
        ));
        let pod_reflector = tokio::spawn(reflect(
            api.clone(),
            "/api/v1/pods".into(),
            "&fieldSelector=spec.nodeName%21%3D".into(),
            PodView::from_pod,
            pods_tx,
        ));
        let node_reflector = tokio::spawn(reflect(
            api.clone(),
            "/api/v1/nodes".into(),
            String::new(),
            NodeView::from_node,
            nodes_tx,
        ));
        let actor = Actor::new(&nodes, uids, opts, urgent_tx, jobs_tx, counters.clone());
        let actor = tokio::spawn(actor.run(commands_rx, pods_rx, nodes_rx, outcomes_rx));
        Ok(HollowFleet {
            nodes,
            commands,
            counters,
            tasks: vec![actor, pod_reflector, node_reflector],
            writer: Some(writer),
        })
    }

    /// The fleet's node names.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// What the fleet wrote so far.
    pub fn stats(&self) -> FleetStats {
        self.counters.snapshot()
    }

    /// Makes a pod bound to the fleet report `Ready`/`ContainersReady` and its containers'
    /// `ready` as `ready` (pods are ready by default). Applies to a pod seen later too.
    pub async fn set_ready(&self, namespace: &str, pod: &str, ready: bool) -> Result<()> {
        let key = PodKey {
            namespace: namespace.into(),
            name: pod.into(),
        };
        self.ask(|done| Command::SetReady { key, ready, done })
            .await
    }

    /// Kills a node's kubelet: no more Lease renewals, status refreshes or pod handling.
    pub async fn silence(&self, node: &str) -> Result<()> {
        self.set_alive(node, false).await
    }

    /// Brings a silenced node back: it renews its Lease and reports Ready at once, then
    /// handles its pods again.
    pub async fn revive(&self, node: &str) -> Result<()> {
        self.set_alive(node, true).await
    }

    async fn set_alive(&self, node: &str, alive: bool) -> Result<()> {
        let node = node.to_string();
        let known = self
            .ask(|done| Command::SetAlive {
                node: node.clone(),
                alive,
                done,
            })
            .await?;
        if !known {
            bail!("{node} is not a node of this fleet");
        }
        Ok(())
    }

    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (done, answer) = oneshot::channel();
        self.commands
            .send(command(done))
            .ok()
            .context("the hollow fleet has stopped")?;
        answer.await.context("the hollow fleet has stopped")
    }

    /// Stops every task: the actor first, then the writer once its requests in flight are
    /// answered (at most 10 s), then the reflectors.
    pub async fn stop(mut self) {
        let _ = self.commands.send(Command::Stop);
        let mut tasks = std::mem::take(&mut self.tasks).into_iter();
        if let Some(actor) = tasks.next() {
            let _ = actor.await;
        }
        if let Some(mut writer) = self.writer.take()
            && tokio::time::timeout(Duration::from_secs(10), &mut writer)
                .await
                .is_err()
        {
            writer.abort();
            let _ = writer.await;
        }
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for HollowFleet {
    fn drop(&mut self) {
        for task in self.tasks.iter().chain(self.writer.iter()) {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Objects the hollow kubelet writes.

/// The InternalIP of the node at `index`: 10.200.0.1, 10.200.0.2, … (never .0 or .255).
pub fn node_ip(index: usize) -> Ipv4Addr {
    let index = index as u32;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + (index / 254) * 256 + index % 254 + 1)
}

/// The /24 pod IPs come from while a node has no `spec.podCIDR`: 10.100.0.0/24 for node 0,
/// 10.100.1.0/24 for node 1, …
fn fake_pod_cidr(index: usize) -> Cidr {
    Cidr {
        network: u32::from(Ipv4Addr::new(10, 100, 0, 0)).wrapping_add((index as u32) << 8),
        prefix: 24,
    }
}

fn quantity(value: &str) -> Quantity {
    Quantity(value.to_string())
}

fn now() -> Timestamp {
    Timestamp::now()
}

/// The four conditions kubelet reports for a healthy node.
fn node_conditions(heartbeat: Timestamp, since: Timestamp) -> Vec<NodeCondition> {
    [
        (
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        (
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        (
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        (
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        ),
    ]
    .into_iter()
    .map(|(type_, status, reason, message)| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(heartbeat)),
        last_transition_time: Some(Time(since)),
    })
    .collect()
}

/// A hex digest of `parts`, for the fake ids kubelet would report.
fn digest(parts: &[&str]) -> String {
    let mut hash = sha2::Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    data_encoding::HEXLOWER.encode(&hash.finalize())
}

/// The Node a hollow kubelet registers.
pub fn node_object(name: &str, index: usize, opts: &HollowOptions) -> Node {
    let mut labels = opts.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), name.into());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", opts.cpu.as_str()),
        ("memory", opts.memory.as_str()),
        ("pods", opts.pods.as_str()),
        ("ephemeral-storage", "100Gi"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), quantity(v)))
    .collect();
    let id = digest(&["hollow-node", name]);
    let started = now();
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                "node.alpha.kubernetes.io/ttl".to_string(),
                "0".to_string(),
            )])),
            ..Default::default()
        },
        spec: None,
        status: Some(NodeStatus {
            capacity: Some(resources.clone()),
            allocatable: Some(resources),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: node_ip(index).to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.into(),
                },
            ]),
            conditions: Some(node_conditions(started, started)),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint { port: 10250 }),
            }),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".into(),
                boot_id: format!(
                    "{}-{}-{}-{}-{}",
                    &id[0..8],
                    &id[8..12],
                    &id[12..16],
                    &id[16..20],
                    &id[20..32]
                ),
                container_runtime_version: "hollow://1.0.0".into(),
                kernel_version: "hollow".into(),
                kube_proxy_version: "v1.33.0-hollow".into(),
                kubelet_version: "v1.33.0-hollow".into(),
                machine_id: id[32..64].to_string(),
                operating_system: "linux".into(),
                os_image: "Hollow Node".into(),
                system_uuid: format!(
                    "{}-{}-{}-{}-{}",
                    &id[32..40],
                    &id[40..44],
                    &id[44..48],
                    &id[48..52],
                    &id[52..64]
                ),
                ..Default::default()
            }),
            phase: Some("Running".into()),
            ..Default::default()
        }),
    }
}

/// The renewed part of a node Lease.
fn lease_spec(node: &str, renew: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(node.into()),
        lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
        renew_time: Some(MicroTime(renew)),
        ..Default::default()
    }
}

/// A node's Lease, owned by the Node (so it goes when the Node goes).
fn lease_object(node: &str, node_uid: &str, renew: Timestamp) -> Lease {
    let owner = (!node_uid.is_empty()).then(|| {
        vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node.into(),
            uid: node_uid.into(),
            ..Default::default()
        }]
    });
    Lease {
        metadata: ObjectMeta {
            name: Some(node.into()),
            namespace: Some(LEASE_NAMESPACE.into()),
            owner_references: owner,
            ..Default::default()
        },
        spec: Some(lease_spec(node, renew)),
    }
}

/// What the status of a started pod says.
struct PodReport<'a> {
    containers: &'a [(String, String)],
    init_containers: &'a [(String, String)],
    uid: &'a str,
    host_ip: Ipv4Addr,
    pod_ip: Ipv4Addr,
    started: Timestamp,
    ready: bool,
    ready_changed: Timestamp,
}

fn image_id(image: &str) -> String {
    let repository = image
        .rsplit_once('/')
        .map_or(image, |(_, last)| last)
        .split([':', '@'])
        .next()
        .unwrap_or(image);
    let prefix = image.len() - image.rsplit_once('/').map_or(image, |(_, l)| l).len();
    format!(
        "{}{repository}@sha256:{}",
        &image[..prefix],
        digest(&["image", image])
    )
}

impl PodReport<'_> {
    /// The merge patch for `/status`: a Running pod, `metadata.uid` as a precondition.
    fn patch(&self) -> Value {
        let started = Time(self.started);
        let ready = if self.ready { "True" } else { "False" };
        let condition = |type_: &str, status: &str, since: Timestamp| PodCondition {
            type_: type_.into(),
            status: status.into(),
            last_transition_time: Some(Time(since)),
            ..Default::default()
        };
        let container_id = |name: &str| format!("containerd://{}", digest(&[self.uid, name]));
        let containers = self
            .containers
            .iter()
            .map(|(name, image)| ContainerStatus {
                name: name.clone(),
                image: image.clone(),
                image_id: image_id(image),
                container_id: Some(container_id(name)),
                ready: self.ready,
                started: Some(true),
                restart_count: 0,
                state: Some(ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(started.clone()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let init_containers: Vec<ContainerStatus> = self
            .init_containers
            .iter()
            .map(|(name, image)| ContainerStatus {
                name: name.clone(),
                image: image.clone(),
                image_id: image_id(image),
                container_id: Some(container_id(name)),
                ready: true,
                started: Some(false),
                restart_count: 0,
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 0,
                        reason: Some("Completed".into()),
                        started_at: Some(started.clone()),
                        finished_at: Some(started.clone()),
                        container_id: Some(container_id(name)),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let status = PodStatus {
            phase: Some("Running".into()),
            host_ip: Some(self.host_ip.to_string()),
            host_ips: Some(vec![HostIP {
                ip: self.host_ip.to_string(),
            }]),
            pod_ip: Some(self.pod_ip.to_string()),
            pod_ips: Some(vec![PodIP {
                ip: self.pod_ip.to_string(),
            }]),
            start_time: Some(started.clone()),
            conditions: Some(vec![
                condition("PodReadyToStartContainers", "True", self.started),
                condition("Initialized", "True", self.started),
                condition("Ready", ready, self.ready_changed),
                condition("ContainersReady", ready, self.ready_changed),
                condition("PodScheduled", "True", self.started),
            ]),
            container_statuses: Some(containers),
            init_container_statuses: (!init_containers.is_empty()).then_some(init_containers),
            ..Default::default()
        };
        json!({"metadata": {"uid": self.uid}, "status": status})
    }
}

/// Registers one node: creates its Node (or adopts an existing one, marking it Ready) and
/// its Lease. Returns the Node's uid.
async fn register(
    api: &ApiClient,
    name: &str,
    index: usize,
    opts: &HollowOptions,
) -> Result<String> {
    let node = node_object(name, index, opts);
    let body = serde_json::to_vec(&node)?;
    let (status, reply) =
        retrying(|| call(api, Method::POST, "/api/v1/nodes", None, Some(body.clone()))).await?;
    let uid = match status {
        StatusCode::CREATED | StatusCode::OK => reply,
        StatusCode::CONFLICT => {
            // Already registered (an earlier fleet, a restart): adopt it, as kubelet does.
            let patch = serde_json::to_vec(&json!({"status": node.status}))?;
            let path = format!("/api/v1/nodes/{name}/status");
            let (status, reply) = retrying(|| {
                call(
                    api,
                    Method::PATCH,
                    &path,
                    Some(MERGE_PATCH),
                    Some(patch.clone()),
                )
            })
            .await?;
            if status != StatusCode::OK {
                bail!("updating the existing node's status: {status}: {reply}");
            }
            reply
        }
        _ => bail!("creating the node: {status}: {reply}"),
    };
    let uid = uid["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let lease = serde_json::to_vec(&lease_object(name, &uid, now()))?;
    let (status, reply) =
        retrying(|| call(api, Method::POST, LEASES, None, Some(lease.clone()))).await?;
    match status {
        StatusCode::CREATED | StatusCode::OK => {}
        StatusCode::CONFLICT => {
            let patch = serde_json::to_vec(&json!({"spec": lease_spec(name, now())}))?;
            let path = format!("{LEASES}/{name}");
            let (status, reply) = retrying(|| {
                call(
                    api,
                    Method::PATCH,
                    &path,
                    Some(MERGE_PATCH),
                    Some(patch.clone()),
                )
            })
            .await?;
            if status != StatusCode::OK {
                bail!("renewing the existing lease: {status}: {reply}");
            }
        }
        _ => bail!("creating the lease: {status}: {reply}"),
    }
    Ok(uid)
}

// ---------------------------------------------------------------------------------------
// Requests.

/// Sends a request; the reply's status and body (JSON, or `null` when it isn't JSON).
async fn call(
    api: &ApiClient,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Value)> {
    let mut request = api.request(method.clone(), path);
    if let Some(body) = body {
        request = request
            .header("Content-Type", content_type.unwrap_or("application/json"))
            .body(body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {path}"))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .with_context(|| format!("reading the reply to {method} {path}"))?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// Whether a reply says "try again later".
fn transient(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// `attempt` up to 5 times while it fails in transport or with a transient status.
async fn retrying<F, Fut>(mut attempt: F) -> Result<(StatusCode, Value)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(StatusCode, Value)>>,
{
    let mut backoff = MIN_BACKOFF;
    let mut tries = 0;
    loop {
        tries += 1;
        let result = attempt().await;
        let retry = match &result {
            Ok((status, _)) => transient(*status),
            Err(_) => true,
        };
        if !retry || tries >= 5 {
            return result;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Work for the writer.
enum Job {
    /// Renew a node's Lease (create it when missing).
    Lease {
        node: usize,
        name: String,
        uid: String,
    },
    /// New heartbeat times on a node's conditions.
    NodeStatus {
        node: usize,
        name: String,
        patch: Vec<u8>,
    },
    /// Merge-patch a pod's status.
    PodStatus { key: PodKey, patch: Vec<u8> },
    /// Delete a pod for good (`gracePeriodSeconds=0`, uid precondition).
    PodDelete { key: PodKey, uid: String },
}

/// How a pod write ended.
enum WriteResult {
    /// Written; the pod as the server returned it (when it could be read).
    Done(Option<Box<PodView>>),
    /// The pod is gone (404), or was replaced (uid precondition failed on delete).
    Gone,
    /// Worth another try later.
    Retry,
    /// Refused for good (e.g. 422): retrying would fail again.
    Refused,
}

/// What the writer tells the actor.
enum Outcome {
    Lease { node: usize },
    NodeStatus { node: usize },
    PodStatus { key: PodKey, result: WriteResult },
    PodDelete { key: PodKey, result: WriteResult },
}

/// Runs jobs with at most `max_in_flight` requests at once, `urgent` ones (heartbeats) first.
async fn run_writer(
    api: ApiClient,
    urgent: mpsc::UnboundedReceiver<Job>,
    jobs: mpsc::UnboundedReceiver<Job>,
    outcomes: mpsc::UnboundedSender<Outcome>,
    counters: Arc<Counters>,
    max_in_flight: usize,
) {
    let queue = futures::stream::unfold((urgent, jobs), |(mut urgent, mut jobs)| async move {
        let job = tokio::select! {
            biased;
            Some(job) = urgent.recv() => Some(job),
            Some(job) = jobs.recv() => Some(job),
            else => None,
        };
        job.map(|job| (job, (urgent, jobs)))
    });
    queue
        .for_each_concurrent(max_in_flight, |job| {
            let api = api.clone();
            let outcomes = outcomes.clone();
            let counters = counters.clone();
            async move {
                let outcome = execute(&api, job, &counters).await;
                let _ = outcomes.send(outcome);
            }
        })
        .await;
}

/// One job's requests.
async fn execute(api: &ApiClient, job: Job, counters: &Counters) -> Outcome {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Counters::bump(&counters.write_errors);
        tracing::debug!("hollow fleet: {what}: {e}");
    };
    match job {
        Job::Lease { node, name, uid } => {
            let path = format!("{LEASES}/{name}");
            let patch = json!({"spec": lease_spec(&name, now())}).to_string();
            match call(
                api,
                Method::PATCH,
                &path,
                Some(MERGE_PATCH),
                Some(patch.into_bytes()),
            )
            .await
            {
                Ok((StatusCode::OK, _)) => Counters::bump(&counters.leases_renewed),
                Ok((StatusCode::NOT_FOUND, _)) => {
                    // Deleted behind our back: kubelet's lease controller creates it again.
                    let lease = json!(lease_object(&name, &uid, now())).to_string();
                    match call(api, Method::POST, LEASES, None, Some(lease.into_bytes())).await {
                        Ok((StatusCode::CREATED, _)) => Counters::bump(&counters.leases_renewed),
                        Ok((status, body)) => failed(
                            &format!("creating lease {name}"),
                            &format!("{status}: {body}"),
                        ),
                        Err(e) => failed(&format!("creating lease {name}"), &format!("{e:#}")),
                    }
                }
                Ok((status, body)) => failed(
                    &format!("renewing lease {name}"),
                    &format!("{status}: {body}"),
                ),
                Err(e) => failed(&format!("renewing lease {name}"), &format!("{e:#}")),
            }
            Outcome::Lease { node }
        }
        Job::NodeStatus { node, name, patch } => {
            let path = format!("/api/v1/nodes/{name}/status");
            match call(api, Method::PATCH, &path, Some(MERGE_PATCH), Some(patch)).await {
                Ok((StatusCode::OK, _)) => Counters::bump(&counters.node_status_updates),
                Ok((status, body)) => failed(
                    &format!("updating node {name}"),
                    &format!("{status}: {body}"),
                ),
                Err(e) => failed(&format!("updating node {name}"), &format!("{e:#}")),
            }
            Outcome::NodeStatus { node }
        }
        Job::PodStatus { key, patch } => {
            let path = format!(
                "/api/v1/namespaces/{}/pods/{}/status",
                key.namespace, key.name
            );
            let result = match call(api, Method::PATCH, &path, Some(MERGE_PATCH), Some(patch)).await
            {
                Ok((StatusCode::OK, body)) => {
                    Counters::bump(&counters.pod_status_writes);
                    let view = serde_json::from_value::<Pod>(body)
                        .ok()
                        .and_then(PodView::from_pod)
                        .map(Box::new);
                    WriteResult::Done(view)
                }
                Ok((StatusCode::NOT_FOUND, _)) => WriteResult::Gone,
                // A conflict here is a failed uid precondition (the pod was replaced): the
                // watch brings the new pod, and the retry uses its uid.
                Ok((status, body)) if status == StatusCode::CONFLICT || transient(status) => {
                    failed(
                        &format!("reporting pod {key}"),
                        &format!("{status}: {body}"),
                    );
                    WriteResult::Retry
                }
                Ok((status, body)) => {
                    Counters::bump(&counters.write_errors);
                    tracing::warn!("hollow fleet: reporting pod {key}: {status}: {body}");
                    WriteResult::Refused
                }
                Err(e) => {
                    failed(&format!("reporting pod {key}"), &format!("{e:#}"));
                    WriteResult::Retry
                }
            };
            Outcome::PodStatus { key, result }
        }
        Job::PodDelete { key, uid } => {
            let path = format!("/api/v1/namespaces/{}/pods/{}", key.namespace, key.name);
            let options = json!({
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": uid},
            })
            .to_string();
            let result =
                match call(api, Method::DELETE, &path, None, Some(options.into_bytes())).await {
                    Ok((StatusCode::OK | StatusCode::ACCEPTED, _)) => {
                        Counters::bump(&counters.pods_deleted);
                        WriteResult::Done(None)
                    }
                    Ok((StatusCode::NOT_FOUND | StatusCode::CONFLICT, _)) => WriteResult::Gone,
                    Ok((status, body)) if transient(status) => {
                        failed(&format!("deleting pod {key}"), &format!("{status}: {body}"));
                        WriteResult::Retry
                    }
                    Ok((status, body)) => {
                        Counters::bump(&counters.write_errors);
                        tracing::warn!("hollow fleet: deleting pod {key}: {status}: {body}");
                        WriteResult::Refused
                    }
                    Err(e) => {
                        failed(&format!("deleting pod {key}"), &format!("{e:#}"));
                        WriteResult::Retry
                    }
                };
            Outcome::PodDelete { key, result }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reflectors: list, then watch from the list's version; resume after a watch ends, list
// again after a 410.

/// What a reflector delivers.
enum Feed<V> {
    /// A full list: everything not in it is gone.
    Sync(Vec<V>),
    Upsert(V),
    Delete(V),
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<Value>,
}

#[derive(Deserialize)]
struct TypedEvent<K> {
    #[serde(rename = "type")]
    kind: String,
    object: K,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    object: Value,
}

/// How one watch request ended.
enum WatchEnd {
    /// The server closed it (its timeout): resume from the last version.
    Closed,
    /// 410: the version is gone, list again.
    Expired,
    /// Nobody listens any more.
    Stopped,
}

async fn reflect<K, V>(
    api: ApiClient,
    path: String,
    query: String,
    view: fn(K) -> Option<V>,
    tx: mpsc::UnboundedSender<Feed<V>>,
) where
    K: DeserializeOwned + k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    let mut version: Option<String> = None;
    let mut backoff = MIN_BACKOFF;
    loop {
        if tx.is_closed() {
            return;
        }
        let mut from = match version.take() {
            Some(v) => v,
            None => match list_all(&api, &path, &query, view).await {
                Ok((items, v)) => {
                    if tx.send(Feed::Sync(items)).is_err() {
                        return;
                    }
                    v
                }
                Err(e) => {
                    tracing::warn!("hollow fleet: listing {path}: {e:#}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        match watch_from(&api, &path, &query, &mut from, view, &tx).await {
            Ok(WatchEnd::Closed) => {
                version = Some(from);
                backoff = MIN_BACKOFF;
            }
            Ok(WatchEnd::Expired) => backoff = MIN_BACKOFF,
            Ok(WatchEnd::Stopped) => return,
            Err((e, resumable)) => {
                tracing::warn!("hollow fleet: watching {path}: {e:#}");
                if resumable {
                    version = Some(from);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Lists every page; the items (malformed ones skipped) and the list's resourceVersion.
async fn list_all<K: DeserializeOwned, V>(
    api: &ApiClient,
    path: &str,
    query: &str,
    view: fn(K) -> Option<V>,
) -> Result<(Vec<V>, String)> {
    let mut items = Vec::new();
    let mut version = None;
    let mut token = String::new();
    loop {
        let mut url = format!("{path}?limit={LIST_LIMIT}{query}");
        if !token.is_empty() {
            url.push_str(&format!("&continue={}", url_escape(&token)));
        }
        let response = api
            .request(Method::GET, &url)
            .header("Accept", "application/json")
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let bytes = response.bytes().await.context("reading the list")?;
        if status != StatusCode::OK {
            bail!(
                "GET {url}: {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            );
        }
        let page: Page = serde_json::from_slice(&bytes).context("decoding the list")?;
        if version.is_none() {
            version = page.metadata.resource_version.clone();
        }
        for item in page.items {
            match serde_json::from_value::<K>(item) {
                Ok(object) => items.extend(view(object)),
                Err(e) => tracing::warn!("hollow fleet: skipping a malformed item of {path}: {e}"),
            }
        }
        match page.metadata.continue_ {
            Some(next) if !next.is_empty() => token = next,
            _ => break,
        }
    }
    Ok((items, version.context("the list has no resourceVersion")?))
}

fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One watch request from `from`, which follows the events. An error says whether the watch
/// may resume from `from` (it broke mid-stream) or should list again (it didn't open).
async fn watch_from<K, V>(
    api: &ApiClient,
    path: &str,
    query: &str,
    from: &mut String,
    view: fn(K) -> Option<V>,
    tx: &mpsc::UnboundedSender<Feed<V>>,
) -> Result<WatchEnd, (anyhow::Error, bool)>
where
    K: DeserializeOwned + k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    let url = format!(
        "{path}?watch=true&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={from}{query}"
    );
    let response = api
        .request(Method::GET, &url)
        .timeout(Duration::from_secs(WATCH_SECONDS + 60))
        .send()
        .await
        .map_err(|e| (anyhow::Error::from(e).context(format!("GET {url}")), true))?;
    match response.status() {
        StatusCode::OK => {}
        StatusCode::GONE => return Ok(WatchEnd::Expired),
        status => return Err((anyhow::anyhow!("GET {url}: {status}"), false)),
    }
    let mut stream = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| (anyhow::Error::from(e).context("reading a watch"), true))?;
        buffer.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(len) = buffer[start..].iter().position(|b| *b == b'\n') {
            let line = &buffer[start..start + len];
            start += len + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match event_of::<K, V>(line, from, view) {
                Ok(Some(feed)) => {
                    if tx.send(feed).is_err() {
                        return Ok(WatchEnd::Stopped);
                    }
                }
                Ok(None) => {}
                Err(end) => return end,
            }
        }
        buffer.drain(..start);
    }
    Ok(WatchEnd::Closed)
}

/// Decodes one watch line, moving `from` forward. `Err` ends the watch.
#[allow(clippy::type_complexity)]
fn event_of<K, V>(
    line: &[u8],
    from: &mut String,
    view: fn(K) -> Option<V>,
) -> Result<Option<Feed<V>>, Result<WatchEnd, (anyhow::Error, bool)>>
where
    K: DeserializeOwned + k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    if let Ok(event) = serde_json::from_slice::<TypedEvent<K>>(line) {
        if let Some(version) = event.object.metadata().resource_version.as_ref() {
            from.clone_from(version);
        }
        return Ok(match event.kind.as_str() {
            "ADDED" | "MODIFIED" => view(event.object).map(Feed::Upsert),
            "DELETED" => view(event.object).map(Feed::Delete),
            _ => None,
        });
    }
    let event: RawEvent = match serde_json::from_slice(line) {
        Ok(event) => event,
        Err(e) => {
            return Err(Err((
                anyhow::Error::from(e).context("decoding a watch event"),
                true,
            )));
        }
    };
    match event.kind.as_str() {
        "ERROR" => {
            if event.object["code"].as_u64() == Some(410) {
                Err(Ok(WatchEnd::Expired))
            } else {
                Err(Err((
                    anyhow::anyhow!("the watch ended with {}", event.object),
                    false,
                )))
            }
        }
        _ => {
            // A malformed object: skip it, but keep its version.
            if let Some(version) = event.object["metadata"]["resourceVersion"].as_str() {
                *from = version.to_string();
            }
            tracing::warn!(
                "hollow fleet: skipping a malformed {} event: {}",
                event.kind,
                event.object["metadata"]
            );
            Ok(None)
        }
    }
}

// ---------------------------------------------------------------------------------------
// The actor.

/// A pod's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PodKey {
    namespace: String,
    name: String,
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the fleet needs of a pod bound to a node.
#[derive(Clone, Debug, PartialEq)]
struct PodView {
    key: PodKey,
    uid: String,
    node: String,
    version: u64,
    deleting: bool,
    phase: Option<String>,
    pod_ip: Option<String>,
    ready: Option<bool>,
    start_time: Option<Timestamp>,
    containers: Vec<(String, String)>,
    init_containers: Vec<(String, String)>,
}

impl PodView {
    fn from_pod(pod: Pod) -> Option<PodView> {
        let meta = pod.metadata;
        let spec = pod.spec?;
        let node = spec.node_name.filter(|n| !n.is_empty())?;
        let status = pod.status.unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status == "True");
        let images = |containers: Vec<k8s_openapi::api::core::v1::Container>| {
            containers
                .into_iter()
                .map(|c| (c.name, c.image.unwrap_or_default()))
                .collect()
        };
        Some(PodView {
            key: PodKey {
                namespace: meta.namespace?,
                name: meta.name?,
            },
            uid: meta.uid?,
            node,
            version: meta
                .resource_version
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            deleting: meta.deletion_timestamp.is_some(),
            phase: status.phase,
            pod_ip: status.pod_ip.filter(|ip| !ip.is_empty()),
            ready,
            start_time: status.start_time.map(|t| t.0),
            containers: images(spec.containers),
            init_containers: images(spec.init_containers.unwrap_or_default()),
        })
    }
}

/// What the fleet needs of a Node.
#[derive(Clone, Debug, PartialEq)]
struct NodeView {
    name: String,
    pod_cidr: Option<String>,
}

impl NodeView {
    fn from_node(node: Node) -> Option<NodeView> {
        Some(NodeView {
            name: node.metadata.name?,
            pod_cidr: node.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty()),
        })
    }
}

/// An IPv4 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cidr {
    network: u32,
    prefix: u8,
}

impl Cidr {
    fn parse(text: &str) -> Option<Cidr> {
        let (address, prefix) = text.split_once('/')?;
        let address: Ipv4Addr = address.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        if prefix > 30 {
            return None;
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Some(Cidr {
            network: u32::from(address) & mask,
            prefix,
        })
    }

    /// Addresses pods may get: all but the network, the gateway (.1) and the broadcast.
    fn pod_addresses(self) -> u32 {
        (1u32 << (32 - u32::from(self.prefix))).saturating_sub(3)
    }

    fn pod_address(self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 2 + offset)
    }
}

struct NodeState {
    name: String,
    uid: String,
    ip: Ipv4Addr,
    pod_cidr: Option<Cidr>,
    fake_cidr: Cidr,
    used: HashSet<Ipv4Addr>,
    cursor: u32,
    silenced: bool,
    lease_busy: bool,
    status_busy: bool,
    /// `lastTransitionTime` of its conditions: registration, or the last revival.
    ready_since: Timestamp,
}

impl NodeState {
    /// A free pod IP from the node's podCIDR (or its fake range while it has none).
    fn allocate(&mut self) -> Option<Ipv4Addr> {
        let cidr = self.pod_cidr.unwrap_or(self.fake_cidr);
        let size = cidr.pod_addresses();
        for _ in 0..size {
            let ip = cidr.pod_address(self.cursor % size);
            self.cursor = (self.cursor + 1) % size;
            if self.used.insert(ip) {
                return Some(ip);
            }
        }
        None
    }
}

struct PodState {
    uid: String,
    node: usize,
    containers: Vec<(String, String)>,
    init_containers: Vec<(String, String)>,
    /// The latest version seen, from the watch or a write's reply.
    observed: PodView,
    ip: Option<Ipv4Addr>,
    started_at: Option<Timestamp>,
    ready: bool,
    ready_changed: Option<Timestamp>,
    start_scheduled: bool,
    started: bool,
    /// Whether a status write of ours succeeded (the pod was reported Running).
    reported: bool,
    delete_scheduled: bool,
    delete_done: bool,
    writing: bool,
    /// The version our last status write produced: older events don't trigger a rewrite.
    written_version: u64,
    backoff: Duration,
}

enum Command {
    SetReady {
        key: PodKey,
        ready: bool,
        done: oneshot::Sender<()>,
    },
    SetAlive {
        node: String,
        alive: bool,
        done: oneshot::Sender<bool>,
    },
    Stop,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Timer {
    Lease(usize),
    NodeStatus(usize),
    PodStart(PodKey, String),
    PodDelete(PodKey, String),
    PodRetry(PodKey, String),
}

/// A timer in the heap, ordered by when it fires (then by insertion).
struct Due {
    at: Instant,
    seq: u64,
    timer: Timer,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Reverse<Due>>,
    seq: u64,
}

impl Timers {
    fn add(&mut self, at: Instant, timer: Timer) {
        self.seq += 1;
        self.heap.push(Reverse(Due {
            at,
            seq: self.seq,
            timer,
        }));
    }

    fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(d)| d.at)
    }

    /// The next timer due at `now`, with when it was due.
    fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        if self.next_at()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(d)| (d.at, d.timer))
    }
}

struct Actor {
    opts: Arc<HollowOptions>,
    nodes: Vec<NodeState>,
    by_name: HashMap<String, usize>,
    pods: HashMap<PodKey, PodState>,
    /// Readiness asked for pods not seen yet.
    ready_overrides: HashMap<PodKey, bool>,
    timers: Timers,
    urgent: mpsc::UnboundedSender<Job>,
    jobs: mpsc::UnboundedSender<Job>,
    counters: Arc<Counters>,
}

impl Actor {
    fn new(
        names: &[String],
        uids: Vec<String>,
        opts: Arc<HollowOptions>,
        urgent: mpsc::UnboundedSender<Job>,
        jobs: mpsc::UnboundedSender<Job>,
        counters: Arc<Counters>,
    ) -> Actor {
        let registered = now();
        let start = Instant::now();
        let count = names.len().max(1) as u32;
        let mut timers = Timers::default();
        let mut nodes = Vec::with_capacity(names.len());
        for (index, (name, uid)) in names.iter().zip(uids).enumerate() {
            // Spread the heartbeats over their periods, as independent kubelets would be.
            let share = |period: Duration| period * (index as u32 + 1) / count;
            timers.add(start + share(opts.heartbeat), Timer::Lease(index));
            timers.add(
                start + opts.status_period + share(opts.status_period),
                Timer::NodeStatus(index),
            );
            nodes.push(NodeState {
                name: name.clone(),
                uid,
                ip: node_ip(index),
                pod_cidr: None,
                fake_cidr: fake_pod_cidr(index),
                used: HashSet::new(),
                cursor: 0,
                silenced: false,
                lease_busy: false,
                status_busy: false,
                ready_since: registered,
            });
        }
        let by_name = names.iter().cloned().zip(0..).collect();
        Actor {
            opts,
            nodes,
            by_name,
            pods: HashMap::new(),
            ready_overrides: HashMap::new(),
            timers,
            urgent,
            jobs,
            counters,
        }
    }

    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut pods: mpsc::UnboundedReceiver<Feed<PodView>>,
        mut nodes: mpsc::UnboundedReceiver<Feed<NodeView>>,
        mut outcomes: mpsc::UnboundedReceiver<Outcome>,
    ) {
        loop {
            let next = self.timers.next_at();
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    None | Some(Command::Stop) => return,
                    Some(command) => self.command(command),
                },
                Some(outcome) = outcomes.recv() => self.outcome(outcome),
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    self.fire_due();
                }
                Some(feed) = nodes.recv() => self.node_feed(feed),
                Some(feed) = pods.recv() => self.pod_feed(feed),
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::SetReady { key, ready, done } => {
                match self.pods.get_mut(&key) {
                    Some(pod) => {
                        if pod.ready != ready {
                            pod.ready = ready;
                            pod.ready_changed = Some(now());
                            // What we wrote last is no longer what we report.
                            pod.written_version = 0;
                        }
                        self.evaluate(&key);
                    }
                    None => {
                        self.ready_overrides.insert(key, ready);
                    }
                }
                let _ = done.send(());
            }
            Command::SetAlive { node, alive, done } => {
                let Some(&index) = self.by_name.get(&node) else {
                    let _ = done.send(false);
                    return;
                };
                let was_silenced = self.nodes[index].silenced;
                self.nodes[index].silenced = !alive;
                if alive && was_silenced {
                    // A restarted kubelet: heartbeat now, then look at every pod again.
                    self.nodes[index].ready_since = now();
                    self.renew_lease(index);
                    self.refresh_status(index);
                    let keys: Vec<PodKey> = self
                        .pods
                        .iter()
                        .filter(|(_, p)| p.node == index)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in keys {
                        self.evaluate(&key);
                    }
                }
                let _ = done.send(true);
            }
            Command::Stop => {}
        }
    }

    fn fire_due(&mut self) {
        let now = Instant::now();
        while let Some((at, timer)) = self.timers.pop_due(now) {
            match timer {
                Timer::Lease(index) => {
                    self.timers
                        .add(next_tick(at, self.opts.heartbeat, now), Timer::Lease(index));
                    self.renew_lease(index);
                }
                Timer::NodeStatus(index) => {
                    self.timers.add(
                        next_tick(at, self.opts.status_period, now),
                        Timer::NodeStatus(index),
                    );
                    self.refresh_status(index);
                }
                Timer::PodStart(key, uid) => self.start_pod(&key, &uid),
                Timer::PodDelete(key, uid) => self.delete_pod(&key, &uid),
                Timer::PodRetry(key, uid) => {
                    if self.pods.get(&key).is_some_and(|p| p.uid == uid) {
                        self.evaluate(&key);
                    }
                }
            }
        }
    }

    fn renew_lease(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if node.silenced || node.lease_busy {
            return;
        }
        node.lease_busy = true;
        let _ = self.urgent.send(Job::Lease {
            node: index,
            name: node.name.clone(),
            uid: node.uid.clone(),
        });
    }

    fn refresh_status(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if node.silenced || node.status_busy {
            return;
        }
        node.status_busy = true;
        let patch = json!({"status": {"conditions": node_conditions(now(), node.ready_since)}});
        let _ = self.urgent.send(Job::NodeStatus {
            node: index,
            name: node.name.clone(),
            patch: patch.to_string().into_bytes(),
        });
    }

    fn node_feed(&mut self, feed: Feed<NodeView>) {
        match feed {
            Feed::Sync(views) => views.into_iter().for_each(|v| self.node_seen(v)),
            Feed::Upsert(view) => self.node_seen(view),
            Feed::Delete(_) => {}
        }
    }

    fn node_seen(&mut self, view: NodeView) {
        if let Some(&index) = self.by_name.get(&view.name) {
            self.nodes[index].pod_cidr = view.pod_cidr.as_deref().and_then(Cidr::parse);
        }
    }

    fn pod_feed(&mut self, feed: Feed<PodView>) {
        match feed {
            Feed::Sync(views) => {
                let listed: HashSet<PodKey> = views.iter().map(|v| v.key.clone()).collect();
                let gone: Vec<PodKey> = self
                    .pods
                    .keys()
                    .filter(|k| !listed.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.forget(&key);
                }
                views.into_iter().for_each(|v| self.pod_seen(v));
            }
            Feed::Upsert(view) => self.pod_seen(view),
            Feed::Delete(view) => {
                if self.pods.get(&view.key).is_some_and(|p| p.uid == view.uid) {
                    self.forget(&view.key);
                }
            }
        }
    }

    fn forget(&mut self, key: &PodKey) {
        if let Some(pod) = self.pods.remove(key)
            && let Some(ip) = pod.ip
        {
            self.nodes[pod.node].used.remove(&ip);
        }
    }

    fn pod_seen(&mut self, view: PodView) {
        let Some(&node) = self.by_name.get(&view.node) else {
            self.forget(&view.key);
            return;
        };
        let replaced = self
            .pods
            .get(&view.key)
            .is_some_and(|p| p.uid != view.uid || p.node != node);
        if replaced {
            self.forget(&view.key);
        }
        let key = view.key.clone();
        match self.pods.get_mut(&key) {
            Some(pod) => {
                if view.version >= pod.observed.version {
                    pod.observed = view;
                }
            }
            None => {
                let mut pod = PodState {
                    uid: view.uid.clone(),
                    node,
                    containers: view.containers.clone(),
                    init_containers: view.init_containers.clone(),
                    ip: None,
                    started_at: None,
                    ready: self.ready_overrides.remove(&key).unwrap_or(true),
                    ready_changed: None,
                    start_scheduled: false,
                    started: false,
                    reported: false,
                    delete_scheduled: false,
                    delete_done: false,
                    writing: false,
                    written_version: 0,
                    backoff: MIN_BACKOFF,
                    observed: view,
                };
                // A pod already running (an earlier fleet started it): adopt its address.
                let running_ip = (pod.observed.phase.as_deref() == Some("Running"))
                    .then(|| pod.observed.pod_ip.as_deref()?.parse::<Ipv4Addr>().ok())
                    .flatten();
                if let Some(ip) = running_ip {
                    self.nodes[node].used.insert(ip);
                    pod.ip = Some(ip);
                    pod.started_at = Some(pod.observed.start_time.unwrap_or_else(now));
                    pod.start_scheduled = true;
                    pod.started = true;
                    pod.reported = true;
                }
                self.pods.insert(key.clone(), pod);
            }
        }
        self.evaluate(&key);
    }

    /// Makes the pod's next step happen: delete it when it is terminating, start it when
    /// it is new, rewrite its status when the stored one isn't what this kubelet reports.
    fn evaluate(&mut self, key: &PodKey) {
        let Some(pod) = self.pods.get_mut(key) else {
            return;
        };
        if self.nodes[pod.node].silenced {
            return;
        }
        let at = Instant::now();
        if pod.observed.deleting {
            if !pod.delete_scheduled && !pod.delete_done {
                pod.delete_scheduled = true;
                self.timers.add(
                    at + self.opts.termination_delay,
                    Timer::PodDelete(key.clone(), pod.uid.clone()),
                );
            }
            return;
        }
        if !pod.start_scheduled {
            pod.start_scheduled = true;
            self.timers.add(
                at + self.opts.start_delay,
                Timer::PodStart(key.clone(), pod.uid.clone()),
            );
            return;
        }
        if !pod.started || pod.writing {
            return;
        }
        let reported = pod.observed.phase.as_deref() == Some("Running")
            && pod.observed.pod_ip == pod.ip.map(|ip| ip.to_string())
            && pod.observed.ready == Some(pod.ready);
        if reported || pod.observed.version <= pod.written_version {
            return;
        }
        self.write_status(key);
    }

    fn start_pod(&mut self, key: &PodKey, uid: &str) {
        let Some(pod) = self.pods.get_mut(key).filter(|p| p.uid == uid) else {
            return;
        };
        let node = &mut self.nodes[pod.node];
        if node.silenced {
            // A dead kubelet starts nothing; revival looks at the pod again.
            pod.start_scheduled = false;
            return;
        }
        if pod.observed.deleting {
            self.evaluate(key);
            return;
        }
        if pod.ip.is_none() {
            pod.ip = node.allocate();
        }
        if pod.ip.is_none() {
            tracing::warn!(
                "hollow fleet: node {} has no free pod IP for {key}",
                node.name
            );
            pod.start_scheduled = false;
            return;
        }
        let started = now();
        pod.started_at.get_or_insert(started);
        pod.ready_changed.get_or_insert(started);
        pod.started = true;
        self.evaluate(key);
    }

    fn write_status(&mut self, key: &PodKey) {
        let Some(pod) = self.pods.get_mut(key) else {
            return;
        };
        let (Some(pod_ip), Some(started)) = (pod.ip, pod.started_at) else {
            return;
        };
        let report = PodReport {
            containers: &pod.containers,
            init_containers: &pod.init_containers,
            uid: &pod.uid,
            host_ip: self.nodes[pod.node].ip,
            pod_ip,
            started,
            ready: pod.ready,
            ready_changed: pod.ready_changed.unwrap_or(started),
        };
        let patch = report.patch().to_string().into_bytes();
        pod.writing = true;
        let _ = self.jobs.send(Job::PodStatus {
            key: key.clone(),
            patch,
        });
    }

    fn delete_pod(&mut self, key: &PodKey, uid: &str) {
        let Some(pod) = self.pods.get_mut(key).filter(|p| p.uid == uid) else {
            return;
        };
        pod.delete_scheduled = false;
        if self.nodes[pod.node].silenced || pod.delete_done {
            return;
        }
        pod.delete_done = true;
        let _ = self.jobs.send(Job::PodDelete {
            key: key.clone(),
            uid: uid.to_string(),
        });
    }

    fn outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Lease { node } => self.nodes[node].lease_busy = false,
            Outcome::NodeStatus { node } => self.nodes[node].status_busy = false,
            Outcome::PodStatus { key, result } => {
                let Some(pod) = self.pods.get_mut(&key) else {
                    return;
                };
                pod.writing = false;
                match result {
                    WriteResult::Done(view) => {
                        pod.backoff = MIN_BACKOFF;
                        if !pod.reported {
                            pod.reported = true;
                            Counters::bump(&self.counters.pods_started);
                        }
                        if let Some(view) = view.filter(|v| v.uid == pod.uid) {
                            pod.written_version = pod.written_version.max(view.version);
                            if view.version >= pod.observed.version {
                                pod.observed = *view;
                            }
                        }
                        self.evaluate(&key);
                    }
                    WriteResult::Retry => self.retry_later(&key),
                    WriteResult::Gone | WriteResult::Refused => {}
                }
            }
            Outcome::PodDelete { key, result } => {
                if let WriteResult::Retry = result {
                    if let Some(pod) = self.pods.get_mut(&key) {
                        pod.delete_done = false;
                    }
                    self.retry_later(&key);
                }
            }
        }
    }

    fn retry_later(&mut self, key: &PodKey) {
        let Some(pod) = self.pods.get_mut(key) else {
            return;
        };
        let delay = pod.backoff;
        pod.backoff = (pod.backoff * 2).min(MAX_BACKOFF);
        // A rewrite is due whatever version the watch shows.
        pod.written_version = 0;
        self.timers.add(
            Instant::now() + delay,
            Timer::PodRetry(key.clone(), pod.uid.clone()),
        );
    }
}

/// When a periodic timer due at `at` fires next: a period later, or a period from now when
/// the fleet fell behind (so a stall doesn't cause a burst).
fn next_tick(at: Instant, period: Duration, now: Instant) -> Instant {
    let next = at + period;
    if next <= now { now + period } else { next }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ips_are_unique_and_skip_network_and_broadcast() {
        let ips: HashSet<Ipv4Addr> = (0..2000).map(node_ip).collect();
        assert_eq!(ips.len(), 2000);
        assert_eq!(node_ip(0), Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(node_ip(253), Ipv4Addr::new(10, 200, 0, 254));
        assert_eq!(node_ip(254), Ipv4Addr::new(10, 200, 1, 1));
        assert!(
            ips.iter()
                .all(|ip| ip.octets()[3] != 0 && ip.octets()[3] != 255)
        );
    }

    #[test]
    fn pod_ips_come_from_the_pod_cidr_and_are_reused_when_freed() {
        let mut node = NodeState {
            name: "n".into(),
            uid: String::new(),
            ip: node_ip(0),
            pod_cidr: Cidr::parse("10.244.3.0/31"),
            fake_cidr: fake_pod_cidr(1),
            used: HashSet::new(),
            cursor: 0,
            silenced: false,
            lease_busy: false,
            status_busy: false,
            ready_since: now(),
        };
        assert_eq!(node.pod_cidr, None, "a /31 leaves no pod address");
        node.pod_cidr = Cidr::parse("10.244.3.0/29");
        let ips: Vec<_> = std::iter::from_fn(|| node.allocate()).collect();
        assert_eq!(
            ips,
            (2..=6)
                .map(|i| Ipv4Addr::new(10, 244, 3, i))
                .collect::<Vec<_>>()
        );
        node.used.remove(&Ipv4Addr::new(10, 244, 3, 4));
        assert_eq!(node.allocate(), Some(Ipv4Addr::new(10, 244, 3, 4)));
        assert_eq!(node.allocate(), None);
        // Without a podCIDR, addresses come from the node's fake range.
        node.pod_cidr = None;
        let fake = node.allocate().unwrap().octets();
        assert_eq!(fake[..3], [10, 100, 1]);
        assert!((2..=254).contains(&fake[3]));
        assert_eq!(
            Cidr::parse("10.244.3.7/24").unwrap().network,
            u32::from(Ipv4Addr::new(10, 244, 3, 0))
        );
        assert_eq!(Cidr::parse("nonsense"), None);
    }

    #[test]
    fn the_node_looks_like_a_kubelet_registered_it() {
        let opts = HollowOptions::default();
        let node = serde_json::to_value(node_object("hollow-7", 7, &opts)).unwrap();
        assert_eq!(
            node["metadata"]["labels"]["kubernetes.io/hostname"],
            "hollow-7"
        );
        assert_eq!(node["metadata"]["labels"]["kubernetes.io/os"], "linux");
        let status = &node["status"];
        assert_eq!(status["capacity"]["cpu"], "4");
        assert_eq!(status["allocatable"]["memory"], "16Gi");
        assert_eq!(status["allocatable"]["pods"], "110");
        assert_eq!(
            status["addresses"],
            json!([{"type": "InternalIP", "address": "10.200.0.8"}, {"type": "Hostname", "address": "hollow-7"}])
        );
        let conditions = status["conditions"].as_array().unwrap();
        let by_type = |t: &str| conditions.iter().find(|c| c["type"] == t).unwrap();
        assert_eq!(by_type("Ready")["status"], "True");
        assert_eq!(by_type("Ready")["reason"], "KubeletReady");
        for t in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
            assert_eq!(by_type(t)["status"], "False");
        }
        assert_eq!(status["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
        assert_eq!(status["nodeInfo"]["osImage"], "Hollow Node");
        assert_eq!(status["nodeInfo"]["systemUUID"].as_str().unwrap().len(), 36);
    }

    #[test]
    fn the_lease_renews_with_microseconds() {
        let at: Timestamp = "2025-01-02T03:04:05.123456789Z".parse().unwrap();
        let lease = serde_json::to_value(lease_object("n1", "u1", at)).unwrap();
        assert_eq!(lease["metadata"]["namespace"], LEASE_NAMESPACE);
        assert_eq!(lease["metadata"]["ownerReferences"][0]["kind"], "Node");
        assert_eq!(lease["spec"]["holderIdentity"], "n1");
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
        assert_eq!(lease["spec"]["renewTime"], "2025-01-02T03:04:05.123456Z");
        let orphan = serde_json::to_value(lease_object("n1", "", at)).unwrap();
        assert!(orphan["metadata"].get("ownerReferences").is_none());
    }

    #[test]
    fn a_started_pod_reports_running_with_its_readiness() {
        let at: Timestamp = "2025-01-02T03:04:05Z".parse().unwrap();
        let later: Timestamp = "2025-01-02T03:05:00Z".parse().unwrap();
        let containers = vec![("app".to_string(), "keel.local/echo:v1".to_string())];
        let init = vec![("setup".to_string(), "busybox".to_string())];
        let report = PodReport {
            containers: &containers,
            init_containers: &init,
            uid: "uid-1",
            host_ip: Ipv4Addr::new(10, 200, 0, 1),
            pod_ip: Ipv4Addr::new(10, 244, 0, 2),
            started: at,
            ready: false,
            ready_changed: later,
        };
        let patch = report.patch();
        assert_eq!(patch["metadata"]["uid"], "uid-1");
        let status = &patch["status"];
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["hostIP"], "10.200.0.1");
        assert_eq!(status["podIP"], "10.244.0.2");
        assert_eq!(status["podIPs"], json!([{"ip": "10.244.0.2"}]));
        assert_eq!(status["startTime"], "2025-01-02T03:04:05Z");
        let condition = |t: &str| {
            status["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .unwrap()
                .clone()
        };
        assert_eq!(condition("Ready")["status"], "False");
        assert_eq!(
            condition("Ready")["lastTransitionTime"],
            "2025-01-02T03:05:00Z"
        );
        assert_eq!(condition("ContainersReady")["status"], "False");
        assert_eq!(condition("Initialized")["status"], "True");
        assert_eq!(condition("PodScheduled")["status"], "True");
        assert_eq!(condition("PodReadyToStartContainers")["status"], "True");
        let container = &status["containerStatuses"][0];
        assert_eq!(container["name"], "app");
        assert_eq!(container["ready"], false);
        assert_eq!(container["started"], true);
        assert_eq!(container["restartCount"], 0);
        assert_eq!(
            container["state"]["running"]["startedAt"],
            "2025-01-02T03:04:05Z"
        );
        assert!(
            container["imageID"]
                .as_str()
                .unwrap()
                .starts_with("keel.local/echo@sha256:")
        );
        assert_eq!(
            status["initContainerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
        // The patch is a valid PodStatus.
        serde_json::from_value::<PodStatus>(status.clone()).unwrap();
    }

    #[test]
    fn image_ids_keep_the_repository() {
        assert!(image_id("nginx:1.27").starts_with("nginx@sha256:"));
        assert!(
            image_id("registry.k8s.io/pause:3.10").starts_with("registry.k8s.io/pause@sha256:")
        );
        assert!(image_id("localhost:5000/app").starts_with("localhost:5000/app@sha256:"));
    }

    #[test]
    fn pod_views_need_a_node() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "d", "uid": "u", "resourceVersion": "42",
                         "deletionTimestamp": "2025-01-02T03:04:05Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let view = PodView::from_pod(pod.clone()).unwrap();
        assert_eq!(view.key.to_string(), "d/p");
        assert_eq!(
            (view.version, view.deleting, view.ready),
            (42, true, Some(true))
        );
        assert_eq!(view.containers, vec![("c".to_string(), "i".to_string())]);
        let mut unbound = pod;
        unbound.spec.as_mut().unwrap().node_name = Some(String::new());
        assert_eq!(PodView::from_pod(unbound), None);
    }

    #[test]
    fn watch_lines_move_the_version_and_410_relists() {
        let mut from = "1".to_string();
        let view = NodeView::from_node;
        let line = br#"{"type":"MODIFIED","object":{"kind":"Node","apiVersion":"v1","metadata":{"name":"n","resourceVersion":"7"},"spec":{"podCIDR":"10.244.1.0/24"}}}"#;
        match event_of(line, &mut from, view) {
            Ok(Some(Feed::Upsert(node))) => {
                assert_eq!(node.pod_cidr.as_deref(), Some("10.244.1.0/24"))
            }
            _ => panic!("an upsert"),
        }
        assert_eq!(from, "7");
        let bookmark = br#"{"type":"BOOKMARK","object":{"kind":"Node","apiVersion":"v1","metadata":{"resourceVersion":"9"}}}"#;
        assert!(matches!(event_of(bookmark, &mut from, view), Ok(None)));
        assert_eq!(from, "9");
        let expired = br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","code":410,"reason":"Expired"}}"#;
        assert!(matches!(
            event_of(expired, &mut from, view),
            Err(Ok(WatchEnd::Expired))
        ));
        assert!(matches!(
            event_of(b"not json", &mut from, view),
            Err(Err(_))
        ));
    }

    #[test]
    fn timers_fire_in_order_and_periodic_ones_do_not_burst() {
        let start = Instant::now();
        let mut timers = Timers::default();
        timers.add(start + Duration::from_secs(2), Timer::Lease(2));
        timers.add(start + Duration::from_secs(1), Timer::Lease(1));
        timers.add(start + Duration::from_secs(1), Timer::NodeStatus(1));
        assert_eq!(timers.pop_due(start), None);
        let due = start + Duration::from_secs(1);
        assert_eq!(timers.pop_due(due).map(|t| t.1), Some(Timer::Lease(1)));
        assert_eq!(timers.pop_due(due).map(|t| t.1), Some(Timer::NodeStatus(1)));
        assert_eq!(timers.pop_due(due), None);
        let period = Duration::from_secs(10);
        assert_eq!(
            next_tick(start, period, start + Duration::from_secs(3)),
            start + period
        );
        let late = start + Duration::from_secs(25);
        assert_eq!(next_tick(start, period, late), late + period);
    }

    fn view(name: &str, node: &str, version: u64) -> PodView {
        PodView {
            key: PodKey {
                namespace: "d".into(),
                name: name.into(),
            },
            uid: format!("uid-{name}"),
            node: node.into(),
            version,
            deleting: false,
            phase: Some("Pending".into()),
            pod_ip: None,
            ready: None,
            start_time: None,
            containers: vec![("app".into(), "keel.local/echo:v1".into())],
            init_containers: Vec::new(),
        }
    }

    fn pod_jobs(jobs: &mut mpsc::UnboundedReceiver<Job>) -> Vec<String> {
        std::iter::from_fn(|| jobs.try_recv().ok())
            .map(|job| match job {
                Job::PodStatus { key, patch } => {
                    let patch: Value = serde_json::from_slice(&patch).unwrap();
                    let ready = &patch["status"]["containerStatuses"][0]["ready"];
                    format!("status {key} ready={ready}")
                }
                Job::PodDelete { key, uid } => format!("delete {key} {uid}"),
                Job::Lease { name, .. } => format!("lease {name}"),
                Job::NodeStatus { name, .. } => format!("node {name}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn the_actor_starts_reports_and_deletes_pods_once() {
        let (urgent, _urgent_rx) = mpsc::unbounded_channel();
        let (jobs, mut jobs_rx) = mpsc::unbounded_channel();
        let names = vec!["n0".to_string(), "n1".to_string()];
        let mut actor = Actor::new(
            &names,
            vec!["u0".into(), "u1".into()],
            Arc::new(HollowOptions::default()),
            urgent,
            jobs,
            Arc::new(Counters::default()),
        );
        // Pods on other nodes are not ours.
        actor.pod_seen(view("elsewhere", "real-node", 1));
        // A new pod starts once its (zero) delay passes: one status write.
        actor.pod_seen(view("p", "n0", 2));
        assert!(pod_jobs(&mut jobs_rx).is_empty());
        actor.fire_due();
        assert_eq!(pod_jobs(&mut jobs_rx), ["status d/p ready=true"]);
        // Events while the write is in flight, and older than its result, change nothing.
        actor.pod_seen(view("p", "n0", 3));
        let key = view("p", "n0", 0).key;
        let mut written = view("p", "n0", 5);
        written.phase = Some("Running".into());
        written.pod_ip = actor.pods[&key].ip.map(|ip| ip.to_string());
        written.ready = Some(true);
        actor.outcome(Outcome::PodStatus {
            key: key.clone(),
            result: WriteResult::Done(Some(Box::new(written.clone()))),
        });
        actor.pod_seen(view("p", "n0", 4));
        assert!(pod_jobs(&mut jobs_rx).is_empty());
        assert_eq!(actor.counters.snapshot().pods_started, 1);
        // Someone else resets the status later: the kubelet reports again.
        actor.pod_seen(view("p", "n0", 6));
        assert_eq!(pod_jobs(&mut jobs_rx), ["status d/p ready=true"]);
        written.version = 7;
        actor.outcome(Outcome::PodStatus {
            key: key.clone(),
            result: WriteResult::Done(Some(Box::new(written.clone()))),
        });
        // Readiness changes are written even though nothing newer was observed.
        let (done, _) = oneshot::channel();
        actor.command(Command::SetReady {
            key: key.clone(),
            ready: false,
            done,
        });
        assert_eq!(pod_jobs(&mut jobs_rx), ["status d/p ready=false"]);
        // A deletion is confirmed once, with the pod's uid.
        let mut deleting = written.clone();
        deleting.version = 8;
        deleting.deleting = true;
        actor.outcome(Outcome::PodStatus {
            key: key.clone(),
            result: WriteResult::Gone,
        });
        actor.pod_seen(deleting.clone());
        actor.fire_due();
        deleting.version = 9;
        actor.pod_seen(deleting.clone());
        actor.fire_due();
        assert_eq!(pod_jobs(&mut jobs_rx), ["delete d/p uid-p"]);
        actor.pod_feed(Feed::Delete(deleting));
        assert!(!actor.pods.contains_key(&key));
        assert!(actor.nodes[0].used.is_empty(), "the pod IP is released");
        // A silenced node neither starts nor deletes pods; revived, it does.
        let (done, _) = oneshot::channel();
        actor.command(Command::SetAlive {
            node: "n1".into(),
            alive: false,
            done,
        });
        actor.pod_seen(view("q", "n1", 10));
        actor.fire_due();
        assert!(pod_jobs(&mut jobs_rx).is_empty());
        let (done, _) = oneshot::channel();
        actor.command(Command::SetAlive {
            node: "n1".into(),
            alive: true,
            done,
        });
        actor.fire_due();
        assert_eq!(pod_jobs(&mut jobs_rx), ["status d/q ready=true"]);
        // A relist without a pod forgets it.
        actor.pod_feed(Feed::Sync(Vec::new()));
        assert!(actor.pods.is_empty());
    }

    #[test]
    fn continue_tokens_are_escaped() {
        assert_eq!(url_escape("a+b/c=="), "a%2Bb%2Fc%3D%3D");
    }
}
