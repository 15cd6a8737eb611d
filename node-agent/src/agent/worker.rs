//! The pod worker: one task per pod bound to the node, kubelet's `syncPod` simplified. Each
//! sync is level-triggered and idempotent: it compares the pod's spec with what the runtime
//! reports and acts —
//!
//! 1. sandbox (network namespace, address) created, or adopted after an agent restart;
//! 2. volumes set up on the host (configMap/secret projections refreshed every minute);
//! 3. init containers run one at a time to success, then the containers start; exited
//!    containers restart per `restartPolicy` with CrashLoopBackOff delays; a missing image
//!    waits in `ErrImagePull`/`ImagePullBackOff`, a missing ConfigMap or Secret in
//!    `CreateContainerConfigError`;
//! 4. probes run per running container (see [`super::probe`]); a liveness or startup failure
//!    restarts the container;
//! 5. the status is computed and handed to the pod's status writer.
//!
//! A pod that reaches Succeeded/Failed has its sandbox stopped. A pod with a
//! `deletionTimestamp` is terminated gracefully (preStop hooks, SIGTERM, SIGKILL after the
//! remaining grace), everything it had on the node is removed, and the pod is deleted from
//! the API with `gracePeriodSeconds=0` and a uid precondition, which completes its deletion.
//!
//! The worker wakes on pod updates, on container changes seen by the manager's relist, on
//! probe result changes, on back-off expiry, and every [`RESYNC_PERIOD`].
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{
    Container, HostIP, LifecycleHandler, Pod, PodCondition, PodIP, PodStatus, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::backoff::{self, Backoff};
use super::client::timed;
use super::env::{self, Lookups, ObjectSource, PodRuntimeInfo};
use super::probe::{self, Action, ContainerProbes, Outcome, ProbeEvent, ProbeKind};
use super::quantity::Quantity;
use super::status::{self, ContainerSnapshot, Waiting};
use super::status_writer;
use super::volumes::{self, HostVolume};
use crate::runtime::{
    self, ContainerConfig, ContainerId, ContainerState, Resources, Runtime, RuntimeError,
    SandboxConfig, SandboxId, SandboxState, SandboxStatus,
};

/// How often a pod is synced when nothing happens (also refreshes configMap/secret volumes).
pub const RESYNC_PERIOD: Duration = Duration::from_secs(60);
/// Delay before retrying after an error of the runtime or the API.
const RETRY: Duration = Duration::from_secs(1);
/// Delay before retrying a container whose configuration can't be made.
const CONFIG_RETRY: Duration = Duration::from_secs(5);
/// kubelet's default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECONDS: i64 = 30;
/// kubelet's minimum grace for a container whose preStop hook used up the pod's grace.
const MIN_GRACE: Duration = Duration::from_secs(2);

/// The node's allocatable resources (what downward API limits default to).
#[derive(Clone, Copy, Debug, Default)]
pub struct Allocatable {
    pub cpu_millis: i128,
    pub memory_bytes: i128,
    pub ephemeral_bytes: i128,
}

/// What every pod worker shares.
pub struct Shared {
    pub client: Client,
    pub runtime: Arc<dyn Runtime>,
    pub root_dir: PathBuf,
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    pub allocatable: Allocatable,
    pub objects: Arc<dyn ObjectSource>,
    /// Services, for the Service link environment variables.
    pub services: Store<Service>,
}

/// Messages from the pod manager.
#[derive(Debug)]
pub enum WorkerMsg {
    /// A new version of the pod.
    Update(Arc<Pod>),
    /// The pod is gone from the API (force-deleted); its last known version, if any.
    Removed(Option<Arc<Pod>>),
    /// The runtime's view of the pod's containers changed.
    Wake,
}

/// The manager's handle on a worker.
pub struct WorkerHandle {
    pub tx: mpsc::UnboundedSender<WorkerMsg>,
    pub task: JoinHandle<()>,
}

/// `name_namespace(uid)`, as kubelet names pods in messages.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.uid.as_deref().unwrap_or("")
    )
}

/// Starts a worker for `pod`; it sends the pod's uid on `done` when it has finished (the
/// pod is deleted and everything it had on the node removed).
pub fn spawn(
    shared: Arc<Shared>,
    pod: Arc<Pod>,
    done: mpsc::UnboundedSender<String>,
) -> WorkerHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let worker = PodWorker::new(shared, pod);
    let task = tokio::spawn(worker.run(rx, done));
    WorkerHandle { tx, task }
}

/// Attempts of one container name, newest first.
type Attempts = HashMap<String, Vec<runtime::ContainerStatus>>;

fn group(containers: Vec<runtime::ContainerStatus>) -> Attempts {
    let mut out: Attempts = HashMap::new();
    for c in containers {
        out.entry(c.name.clone()).or_default().push(c);
    }
    for list in out.values_mut() {
        list.sort_by(|a, b| {
            b.restart_count
                .cmp(&a.restart_count)
                .then(b.created_at.cmp(&a.created_at))
        });
    }
    out
}

fn is_exited(c: &runtime::ContainerStatus) -> bool {
    matches!(c.state, ContainerState::Exited | ContainerState::Unknown)
}

fn exit_code(c: &runtime::ContainerStatus) -> i32 {
    c.exit_code
        .unwrap_or(if c.state == ContainerState::Unknown {
            255
        } else {
            0
        })
}

/// Converts a wall-clock time to a tokio instant (now if it's past).
fn instant_at(at: SystemTime) -> Instant {
    let now = SystemTime::now();
    Instant::now() + at.duration_since(now).unwrap_or(Duration::ZERO)
}

fn quantity_of(c: &Container, which: &str, name: &str) -> Option<Quantity> {
    let resources = c.resources.as_ref()?;
    let list = match which {
        "limits" => resources.limits.as_ref(),
        _ => resources.requests.as_ref(),
    }?;
    Quantity::parse(&list.get(name)?.0).ok()
}

/// A container's cgroup limits.
pub fn container_resources(c: &Container) -> Resources {
    let cpu_limit = quantity_of(c, "limits", "cpu");
    let cpu_request = quantity_of(c, "requests", "cpu").or(cpu_limit);
    Resources {
        cpu_request_millis: cpu_request.and_then(|q| q.millis_u64()).filter(|v| *v > 0),
        cpu_limit_millis: cpu_limit.and_then(|q| q.millis_u64()).filter(|v| *v > 0),
        memory_limit_bytes: quantity_of(c, "limits", "memory")
            .and_then(|q| q.units_u64())
            .filter(|v| *v > 0),
        pids_limit: None,
    }
}

/// The pod's cgroup limits: the sum over its containers when every container has the limit.
pub fn pod_resources(pod: &Pod) -> Resources {
    let containers: Vec<Resources> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(container_resources)
        .collect();
    let sum_all = |f: fn(&Resources) -> Option<u64>| -> Option<u64> {
        let mut total: u64 = 0;
        for r in &containers {
            total = total.checked_add(f(r)?)?;
        }
        (!containers.is_empty()).then_some(total)
    };
    let requests: u64 = containers.iter().filter_map(|r| r.cpu_request_millis).sum();
    Resources {
        cpu_request_millis: (requests > 0).then_some(requests),
        cpu_limit_millis: sum_all(|r| r.cpu_limit_millis),
        memory_limit_bytes: sum_all(|r| r.memory_limit_bytes),
        pids_limit: None,
    }
}

/// Whether a container that exited with `code` is restarted under `policy`.
pub fn should_restart(policy: &str, code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    }
}

/// A lifecycle hook's action.
enum Hook {
    Probe(Action),
    Sleep(Duration),
}

fn hook(handler: &LifecycleHandler, container: &Container) -> Option<Hook> {
    if let Some(exec) = &handler.exec {
        return Some(Hook::Probe(Action::Exec(
            exec.command.clone().unwrap_or_default(),
        )));
    }
    if let Some(http) = &handler.http_get {
        return Some(Hook::Probe(probe::http_action(http, container)));
    }
    if let Some(tcp) = &handler.tcp_socket {
        return Some(Hook::Probe(
            match probe::resolve_port(&tcp.port, container) {
                Ok(port) => Action::Tcp {
                    host: tcp.host.clone(),
                    port,
                },
                Err(e) => Action::Unsupported(e),
            },
        ));
    }
    if let Some(sleep) = &handler.sleep {
        return Some(Hook::Sleep(Duration::from_secs(
            u64::try_from(sleep.seconds).unwrap_or(0),
        )));
    }
    None
}

/// Runs a hook within `timeout`; the error says why it failed.
async fn run_hook(
    hook: &Hook,
    runtime: &Arc<dyn Runtime>,
    container: &ContainerId,
    pod_ip: Option<Ipv4Addr>,
    timeout: Duration,
) -> Result<(), String> {
    match hook {
        Hook::Sleep(d) => {
            tokio::time::sleep((*d).min(timeout)).await;
            Ok(())
        }
        Hook::Probe(action) => {
            let timeout = timeout.max(Duration::from_secs(1));
            match tokio::time::timeout(
                timeout,
                probe::run_action(action, runtime, container, pod_ip, timeout),
            )
            .await
            {
                Ok((Outcome::Success, _)) => Ok(()),
                Ok((Outcome::Failure, message)) => Err(message),
                Err(_) => Err(format!("the hook did not finish within {timeout:?}")),
            }
        }
    }
}

struct PodWorker {
    shared: Arc<Shared>,
    uid: String,
    pod: Arc<Pod>,
    /// Gone from the API: clean up without deleting it.
    removed: bool,
    sandbox: Option<SandboxStatus>,
    /// The pod's IP as last known (kept for terminal pods whose sandbox is gone).
    pod_ip: Option<Ipv4Addr>,
    volumes: Option<HashMap<String, HostVolume>>,
    volumes_at: Instant,
    /// Restart back-off per container name; image pulls under `pull/<name>`.
    backoff: Backoff,
    /// When the last image pull of a container failed.
    pull_failed_at: HashMap<String, SystemTime>,
    /// Why a container can't run now (shown while it isn't running), by name.
    waiting: HashMap<String, Waiting>,
    /// The next attempt number per container name (attempts removed by the runtime are not
    /// reused).
    next_attempt: HashMap<String, u32>,
    ready: HashMap<ContainerId, bool>,
    started: HashMap<ContainerId, bool>,
    probes: HashMap<ContainerId, JoinHandle<()>>,
    probe_tx: mpsc::UnboundedSender<ProbeEvent>,
    probe_rx: mpsc::UnboundedReceiver<ProbeEvent>,
    /// The pod reached Succeeded/Failed: nothing restarts.
    terminal: Option<&'static str>,
    sandbox_stopped: bool,
    start_time: Time,
    conditions: Vec<PodCondition>,
    status_tx: watch::Sender<Option<PodStatus>>,
    status_task: Option<JoinHandle<()>>,
    wake_at: Option<Instant>,
    /// Termination: when it began and the grace it got.
    terminating: Option<(Instant, Duration)>,
    /// Last logged sync problem (logged once until it changes).
    last_problem: Option<String>,
}

impl Drop for PodWorker {
    fn drop(&mut self) {
        for task in self.probes.values() {
            task.abort();
        }
        if let Some(task) = &self.status_task {
            task.abort();
        }
    }
}

impl PodWorker {
    fn new(shared: Arc<Shared>, pod: Arc<Pod>) -> PodWorker {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let api_status = pod.status.clone();
        let terminal = match api_status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Succeeded") => Some("Succeeded"),
            Some("Failed") => Some("Failed"),
            _ => None,
        };
        let mut ready = HashMap::new();
        let mut started = HashMap::new();
        // An adopted container keeps its readiness until a probe says otherwise.
        for cs in api_status.iter().flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        }) {
            if let Some(id) = cs
                .container_id
                .as_deref()
                .and_then(|id| id.strip_prefix(status::CONTAINER_ID_SCHEME))
            {
                let id = ContainerId(id.to_string());
                if cs.ready {
                    ready.insert(id.clone(), true);
                }
                if cs.started == Some(true) {
                    started.insert(id, true);
                }
            }
        }
        let pod_ip = api_status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let start_time = api_status
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .unwrap_or_else(status::now);
        let conditions = api_status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let (status_tx, status_rx) = watch::channel(None);
        let status_task = tokio::spawn(status_writer::run(
            shared.client.clone(),
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
            uid.clone(),
            api_status,
            status_rx,
        ));
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        PodWorker {
            shared,
            uid,
            pod,
            removed: false,
            sandbox: None,
            pod_ip,
            volumes: None,
            volumes_at: Instant::now(),
            backoff: Backoff::default(),
            pull_failed_at: HashMap::new(),
            waiting: HashMap::new(),
            next_attempt: HashMap::new(),
            ready,
            started,
            probes: HashMap::new(),
            probe_tx,
            probe_rx,
            terminal,
            sandbox_stopped: false,
            start_time,
            conditions,
            status_tx,
            status_task: Some(status_task),
            wake_at: None,
            terminating: None,
            last_problem: None,
        }
    }

    fn sandbox_id(&self) -> SandboxId {
        SandboxId(self.uid.clone())
    }

    fn name(&self) -> String {
        format!(
            "{}/{}",
            self.pod.metadata.namespace.as_deref().unwrap_or(""),
            self.pod.metadata.name.as_deref().unwrap_or("")
        )
    }

    fn grace(&self) -> Duration {
        let seconds = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(DEFAULT_GRACE_SECONDS);
        Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
    }

    fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    fn wake_in(&mut self, delay: Duration) {
        self.wake_at_instant(Instant::now() + delay);
    }

    fn wake_at_instant(&mut self, at: Instant) {
        self.wake_at = Some(match self.wake_at {
            Some(existing) => existing.min(at),
            None => at,
        });
    }

    /// Logs a sync problem once until it changes.
    fn problem(&mut self, message: String) {
        if self.last_problem.as_ref() != Some(&message) {
            warn!(pod = %self.name(), "{message}");
            self.last_problem = Some(message);
        }
    }

    fn handle(&mut self, msg: WorkerMsg) {
        match msg {
            WorkerMsg::Update(pod) => self.pod = pod,
            WorkerMsg::Removed(pod) => {
                if let Some(pod) = pod {
                    self.pod = pod;
                }
                self.removed = true;
            }
            WorkerMsg::Wake => {}
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<WorkerMsg>,
        done: mpsc::UnboundedSender<String>,
    ) {
        loop {
            self.wake_at = None;
            let deleting = self.removed || self.pod.metadata.deletion_timestamp.is_some();
            if deleting {
                if self.terminate().await {
                    break;
                }
            } else {
                self.sync().await;
            }
            let wake = self
                .wake_at
                .unwrap_or_else(|| Instant::now() + RESYNC_PERIOD);
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    // The agent is stopping: leave the pod running for the next agent.
                    None => return,
                },
                Some(event) = self.probe_rx.recv() => self.on_probe(event).await,
                _ = tokio::time::sleep_until(wake) => {}
            }
            while let Ok(msg) = rx.try_recv() {
                self.handle(msg);
            }
            while let Ok(event) = self.probe_rx.try_recv() {
                self.on_probe(event).await;
            }
        }
        // Let the last status write (if any) finish; the pod is gone anyway.
        if let Some(task) = self.status_task.take() {
            task.abort();
        }
        let _ = done.send(self.uid.clone());
    }

    // -----------------------------------------------------------------------------------
    // Sync.

    fn sandbox_config(&self) -> SandboxConfig {
        let meta = &self.pod.metadata;
        let name = meta.name.clone().unwrap_or_default();
        let host_network = self.host_network();
        let hostname = if host_network {
            // Like the kubelet: a hostNetwork pod sees the node's hostname.
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| self.shared.node_name.clone())
        } else {
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.hostname.clone())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| name.chars().take(63).collect())
        };
        SandboxConfig {
            uid: self.uid.clone(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name,
            hostname,
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            resources: pod_resources(&self.pod),
            host_network,
        }
    }

    fn host_network(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
    }

    /// The pod's sandbox, created (or adopted) if needed.
    async fn ensure_sandbox(&mut self) -> Result<SandboxStatus, String> {
        if let Some(s) = &self.sandbox
            && s.state == SandboxState::Ready
        {
            return Ok(s.clone());
        }
        let config = self.sandbox_config();
        let runtime = self.shared.runtime.clone();
        let mut sandbox = runtime
            .run_sandbox(&config)
            .await
            .map_err(|e| format!("creating the pod sandbox: {e}"))?;
        if sandbox.state != SandboxState::Ready {
            // A dead sandbox (e.g. after a reboot): start over with a new one, keeping the
            // containers' attempt numbers growing.
            info!(pod = %self.name(), "the pod sandbox is not ready; recreating it");
            let id = self.sandbox_id();
            if let Ok(list) = runtime.list_containers(Some(&id)).await {
                for c in list {
                    let next = self.next_attempt.entry(c.name.clone()).or_insert(0);
                    *next = (*next).max(c.restart_count + 1);
                    let _ = runtime.remove_container(&c.id).await;
                }
            }
            ignore_not_found(runtime.stop_sandbox(&id).await)
                .map_err(|e| format!("stopping the dead sandbox: {e}"))?;
            ignore_not_found(runtime.remove_sandbox(&id).await)
                .map_err(|e| format!("removing the dead sandbox: {e}"))?;
            sandbox = runtime
                .run_sandbox(&config)
                .await
                .map_err(|e| format!("creating the pod sandbox: {e}"))?;
        }
        if let Some(ip) = sandbox.ip {
            self.pod_ip = Some(ip);
        } else if sandbox.config.host_network {
            self.pod_ip = Some(self.shared.node_ip);
        }
        self.sandbox = Some(sandbox.clone());
        Ok(sandbox)
    }

    fn runtime_info(&self) -> PodRuntimeInfo {
        PodRuntimeInfo {
            pod_ip: self.pod_ip,
            host_ip: Some(self.shared.node_ip),
            node_allocatable_cpu_millis: self.shared.allocatable.cpu_millis,
            node_allocatable_memory_bytes: self.shared.allocatable.memory_bytes,
            node_allocatable_ephemeral_bytes: self.shared.allocatable.ephemeral_bytes,
        }
    }

    async fn ensure_volumes(&mut self) -> Result<(), String> {
        let due = self.volumes.is_none() || self.volumes_at.elapsed() >= RESYNC_PERIOD;
        if !due {
            return Ok(());
        }
        let namespace = self.pod.metadata.namespace.clone().unwrap_or_default();
        let objects = self.shared.objects.clone();
        let mut lookups = Lookups::new(objects.as_ref(), &namespace);
        let info = self.runtime_info();
        match volumes::setup(&self.shared.root_dir, &self.pod, &info, &mut lookups).await {
            Ok(v) => {
                self.volumes = Some(v);
                self.volumes_at = Instant::now();
                Ok(())
            }
            Err(e) if self.volumes.is_some() => {
                // Keep serving the last projection; try again later.
                self.problem(format!("refreshing volumes: {e}"));
                self.volumes_at = Instant::now();
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn service_env(&self) -> Vec<(String, String)> {
        let namespace = self.pod.metadata.namespace.as_deref().unwrap_or("default");
        let links = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.enable_service_links)
            .unwrap_or(true);
        let all = self.shared.services.state();
        let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
        for svc in &all {
            let ns = svc.metadata.namespace.as_deref().unwrap_or("");
            let name = svc.metadata.name.as_deref().unwrap_or("");
            if ns == "default" && name == "kubernetes" {
                chosen.entry(name.to_string()).or_insert(svc);
            } else if ns == namespace && links {
                chosen.insert(name.to_string(), svc);
            }
        }
        let list: Vec<&Service> = chosen.into_values().collect();
        env::service_env(&list)
    }

    /// Creates and starts attempt `attempt` of `container`; on failure records why it waits.
    async fn start_container(
        &mut self,
        container: &Container,
        attempt: u32,
        previous: &[runtime::ContainerStatus],
    ) {
        let name = container.name.clone();
        let now = SystemTime::now();
        let pull_key = format!("pull/{name}");
        if let Some(failed) = self.pull_failed_at.get(&name).copied()
            && self.backoff.in_backoff_since(&pull_key, failed, now)
        {
            self.waiting.insert(
                name.clone(),
                Waiting::new(
                    "ImagePullBackOff",
                    Some(format!(
                        "Back-off pulling image \"{}\"",
                        container.image.as_deref().unwrap_or("")
                    )),
                ),
            );
            let until = self.backoff.until(&pull_key, failed);
            self.wake_at_instant(instant_at(until));
            return;
        }
        let namespace = self.pod.metadata.namespace.clone().unwrap_or_default();
        let objects = self.shared.objects.clone();
        let mut lookups = Lookups::new(objects.as_ref(), &namespace);
        let info = self.runtime_info();
        let services = self.service_env();
        let env = match env::resolve(&self.pod, container, &info, &services, &mut lookups).await {
            Ok(env) => env,
            Err(e) => {
                self.waiting.insert(
                    name.clone(),
                    Waiting::new("CreateContainerConfigError", Some(e.to_string())),
                );
                self.wake_in(CONFIG_RETRY);
                return;
            }
        };
        let empty = HashMap::new();
        let mounts = match volumes::container_mounts(
            container,
            self.volumes.as_ref().unwrap_or(&empty),
            &env,
        ) {
            Ok(m) => m,
            Err(e) => {
                self.waiting.insert(
                    name.clone(),
                    Waiting::new("CreateContainerConfigError", Some(e)),
                );
                self.wake_in(CONFIG_RETRY);
                return;
            }
        };
        let command = env::expand_all(container.command.as_deref().unwrap_or(&[]), &env);
        let args = env::expand_all(container.args.as_deref().unwrap_or(&[]), &env);
        let labels = BTreeMap::from([
            (
                "io.kubernetes.pod.name".to_string(),
                self.pod.metadata.name.clone().unwrap_or_default(),
            ),
            ("io.kubernetes.pod.namespace".to_string(), namespace.clone()),
            ("io.kubernetes.pod.uid".to_string(), self.uid.clone()),
            ("io.kubernetes.container.name".to_string(), name.clone()),
        ]);
        let config = ContainerConfig {
            name: name.clone(),
            image: container.image.clone().unwrap_or_default(),
            command,
            args,
            env,
            working_dir: container.working_dir.clone().filter(|w| !w.is_empty()),
            mounts,
            resources: container_resources(container),
            stdin: container.stdin.unwrap_or(false),
            tty: container.tty.unwrap_or(false),
            restart_count: attempt,
            labels,
        };
        let runtime = self.shared.runtime.clone();
        let sandbox = self.sandbox_id();
        self.next_attempt.insert(name.clone(), attempt + 1);
        let id = match runtime.create_container(&sandbox, &config).await {
            Ok(id) => id,
            Err(RuntimeError::ImageNotFound { image, store }) => {
                let message = RuntimeError::ImageNotFound { image, store }.to_string();
                self.problem(format!("container {name}: {message}"));
                self.waiting
                    .insert(name.clone(), Waiting::new("ErrImagePull", Some(message)));
                self.backoff.next(&pull_key, now);
                self.pull_failed_at.insert(name.clone(), now);
                // Sync again soon to show ImagePullBackOff while the back-off runs.
                self.wake_in(RETRY);
                return;
            }
            Err(e) => {
                let key = format!("create/{name}");
                self.problem(format!("creating container {name}: {e}"));
                self.waiting.insert(
                    name.clone(),
                    Waiting::new("CreateContainerError", Some(e.to_string())),
                );
                self.backoff.next(&key, now);
                self.wake_at_instant(instant_at(self.backoff.until(&key, now)));
                return;
            }
        };
        self.pull_failed_at.remove(&name);
        self.backoff.reset(&pull_key);
        self.backoff.reset(&format!("create/{name}"));
        if let Err(e) = runtime.start_container(&id).await {
            self.problem(format!("starting container {name}: {e}"));
            let _ = runtime.remove_container(&id).await;
            self.waiting.insert(
                name.clone(),
                Waiting::new("RunContainerError", Some(e.to_string())),
            );
            self.backoff.next(&name, now);
            self.wake_at_instant(instant_at(self.backoff.until(&name, now)));
            return;
        }
        debug!(pod = %self.name(), container = %name, attempt, "started container");
        self.waiting.remove(&name);
        self.last_problem = None;
        // Keep one dead attempt (for lastState and `logs --previous`), remove older ones.
        for old in previous.iter().skip(1) {
            if is_exited(old) {
                let _ = runtime.remove_container(&old.id).await;
            }
        }
        if let Some(post_start) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
            .and_then(|h| hook(h, container))
        {
            let grace = self.grace();
            if let Err(message) = run_hook(&post_start, &runtime, &id, self.pod_ip, grace).await {
                warn!(pod = %self.name(), container = %name, "postStart hook failed: {message}");
                let _ = runtime.stop_container(&id, Duration::ZERO).await;
                self.waiting.insert(
                    name.clone(),
                    Waiting::new("PostStartHookError", Some(message)),
                );
            }
        }
    }

    /// Restarts an exited container now, or records that it waits in back-off.
    async fn restart(&mut self, container: &Container, attempts: &[runtime::ContainerStatus]) {
        let Some(latest) = attempts.first() else {
            return;
        };
        let name = container.name.clone();
        let now = SystemTime::now();
        let finished = latest.finished_at.unwrap_or(now);
        if self.backoff.in_backoff_since(&name, finished, now) {
            let delay = self.backoff.get(&name);
            self.waiting.insert(
                name.clone(),
                Waiting::new(
                    "CrashLoopBackOff",
                    Some(format!(
                        "back-off {} restarting failed container={} pod={}",
                        backoff::go_duration(delay),
                        name,
                        pod_key(&self.pod)
                    )),
                ),
            );
            self.wake_at_instant(instant_at(self.backoff.until(&name, finished)));
            return;
        }
        self.backoff.next(&name, finished);
        let attempt =
            (latest.restart_count + 1).max(self.next_attempt.get(&name).copied().unwrap_or(0));
        self.start_container(container, attempt, attempts).await;
    }

    /// Starts or restarts `container` as its attempts require; returns whether it is done
    /// (exited and not to be restarted).
    async fn drive(
        &mut self,
        container: &Container,
        attempts: &[runtime::ContainerStatus],
        policy: &str,
    ) -> bool {
        match attempts.first() {
            None => {
                let attempt = self.next_attempt.get(&container.name).copied().unwrap_or(0);
                self.start_container(container, attempt, attempts).await;
                false
            }
            Some(c) if c.state == ContainerState::Created => {
                // Created but never started (the agent stopped in between).
                if let Err(e) = self.shared.runtime.start_container(&c.id).await {
                    self.problem(format!("starting container {}: {e}", container.name));
                    let _ = self.shared.runtime.remove_container(&c.id).await;
                    self.wake_in(RETRY);
                }
                false
            }
            Some(c) if c.state == ContainerState::Running => false,
            Some(c) => {
                if should_restart(policy, exit_code(c)) {
                    self.restart(container, attempts).await;
                    false
                } else {
                    true
                }
            }
        }
    }

    async fn sync(&mut self) {
        let Some(spec) = self.pod.spec.clone() else {
            return;
        };
        let runtime = self.shared.runtime.clone();
        let sandbox_id = self.sandbox_id();
        if self.terminal.is_some() {
            if !self.sandbox_stopped {
                self.stop_probes();
                match runtime.stop_sandbox(&sandbox_id).await {
                    Ok(()) | Err(RuntimeError::NotFound(_)) => self.sandbox_stopped = true,
                    Err(e) => {
                        self.problem(format!("stopping the sandbox of a finished pod: {e}"));
                        self.wake_in(RETRY);
                    }
                }
            }
            let attempts = match runtime.list_containers(Some(&sandbox_id)).await {
                Ok(list) => group(list),
                Err(_) => Attempts::new(),
            };
            self.publish(&attempts, false);
            return;
        }
        if let Err(e) = self.ensure_sandbox().await {
            self.problem(e);
            self.publish(&Attempts::new(), false);
            self.wake_in(RETRY * 2);
            return;
        }
        if let Err(e) = self.ensure_volumes().await {
            self.problem(e);
            let attempts = match runtime.list_containers(Some(&sandbox_id)).await {
                Ok(list) => group(list),
                Err(_) => Attempts::new(),
            };
            self.publish(&attempts, true);
            self.wake_in(RETRY * 2);
            return;
        }
        let mut attempts = match runtime.list_containers(Some(&sandbox_id)).await {
            Ok(list) => group(list),
            Err(e) => {
                self.problem(format!("listing containers: {e}"));
                self.wake_in(RETRY);
                return;
            }
        };
        let policy = self.restart_policy().to_string();
        let empty: Vec<runtime::ContainerStatus> = Vec::new();
        // Init containers, in order, until one is not done.
        let regular_started = spec
            .containers
            .iter()
            .any(|c| attempts.get(&c.name).is_some_and(|a| !a.is_empty()));
        let mut initialized = true;
        let mut init_failed = false;
        for init in spec.init_containers.iter().flatten() {
            let list = attempts.get(&init.name).unwrap_or(&empty).clone();
            if status::is_sidecar(init) {
                // A sidecar runs for the pod's life; the next init container waits for it to
                // have started.
                self.drive(init, &list, "Always").await;
                let started = list.first().is_some_and(|c| {
                    c.state == ContainerState::Running && self.is_started(init, &c.id)
                });
                if !started && !regular_started {
                    initialized = false;
                    break;
                }
                continue;
            }
            if regular_started {
                continue;
            }
            match list.first() {
                Some(c) if is_exited(c) && exit_code(c) == 0 => continue,
                Some(c) if is_exited(c) && policy == "Never" => {
                    init_failed = true;
                    initialized = false;
                    break;
                }
                _ => {
                    // Not started, running, or failed and to be retried.
                    let init_policy = if policy == "Never" {
                        "Never"
                    } else {
                        "OnFailure"
                    };
                    self.drive(init, &list, init_policy).await;
                    initialized = false;
                    break;
                }
            }
        }
        if initialized {
            for container in &spec.containers {
                let list = attempts.get(&container.name).unwrap_or(&empty).clone();
                self.drive(container, &list, &policy).await;
            }
        }
        // Re-read what the actions changed.
        if let Ok(list) = runtime.list_containers(Some(&sandbox_id)).await {
            attempts = group(list);
        }
        self.ensure_probes(&spec, &attempts);
        let phase = self.publish(&attempts, true);
        if init_failed || matches!(phase, "Succeeded" | "Failed") {
            self.terminal = Some(if phase == "Succeeded" {
                "Succeeded"
            } else {
                "Failed"
            });
            info!(pod = %self.name(), phase = self.terminal.unwrap_or(""), "pod finished; stopping its sandbox");
            // Next loop: stop the sandbox.
            self.wake_in(Duration::ZERO);
        }
    }

    fn has_probe(container: &Container, kind: ProbeKind) -> bool {
        match kind {
            ProbeKind::Startup => container.startup_probe.is_some(),
            ProbeKind::Readiness => container.readiness_probe.is_some(),
            ProbeKind::Liveness => container.liveness_probe.is_some(),
        }
    }

    fn is_started(&self, container: &Container, id: &ContainerId) -> bool {
        !Self::has_probe(container, ProbeKind::Startup)
            || self.started.get(id).copied().unwrap_or(false)
    }

    fn is_ready(&self, container: &Container, id: &ContainerId) -> bool {
        if !self.is_started(container, id) {
            return false;
        }
        if Self::has_probe(container, ProbeKind::Readiness) {
            self.ready.get(id).copied().unwrap_or(false)
        } else {
            true
        }
    }

    /// Starts probe tasks for running containers with probes; stops those of containers
    /// that no longer run.
    fn ensure_probes(&mut self, spec: &k8s_openapi::api::core::v1::PodSpec, attempts: &Attempts) {
        let mut running: HashMap<ContainerId, (&Container, &runtime::ContainerStatus)> =
            HashMap::new();
        let probed = spec.containers.iter().chain(
            spec.init_containers
                .iter()
                .flatten()
                .filter(|c| status::is_sidecar(c)),
        );
        for container in probed {
            if let Some(c) = attempts.get(&container.name).and_then(|a| a.first())
                && c.state == ContainerState::Running
            {
                running.insert(c.id.clone(), (container, c));
            }
        }
        let stale: Vec<ContainerId> = self
            .probes
            .keys()
            .filter(|id| !running.contains_key(*id))
            .cloned()
            .collect();
        for id in stale {
            if let Some(task) = self.probes.remove(&id) {
                task.abort();
            }
        }
        self.ready.retain(|id, _| running.contains_key(id));
        self.started.retain(|id, _| running.contains_key(id));
        for (id, (container, c)) in running {
            if self.probes.contains_key(&id) {
                continue;
            }
            let (startup, readiness, liveness) = ContainerProbes::of(container);
            if startup.is_none() && readiness.is_none() && liveness.is_none() {
                continue;
            }
            let probes = ContainerProbes {
                container: id.clone(),
                startup,
                readiness,
                liveness,
                started_at: c.started_at.unwrap_or_else(SystemTime::now),
                already_started: self.started.get(&id).copied().unwrap_or(false),
                already_ready: self.ready.get(&id).copied().unwrap_or(false),
                pod_ip: self.pod_ip,
            };
            let task = tokio::spawn(probe::run(
                probes,
                self.shared.runtime.clone(),
                self.probe_tx.clone(),
            ));
            self.probes.insert(id, task);
        }
    }

    fn stop_probes(&mut self) {
        for (_, task) in self.probes.drain() {
            task.abort();
        }
    }

    async fn on_probe(&mut self, event: ProbeEvent) {
        if !self.probes.contains_key(&event.container) {
            return; // A stale result of a stopped container.
        }
        match (event.kind, event.outcome) {
            (ProbeKind::Readiness, outcome) => {
                self.ready
                    .insert(event.container, outcome == Outcome::Success);
            }
            (ProbeKind::Startup, Outcome::Success) => {
                self.started.insert(event.container, true);
            }
            (ProbeKind::Liveness, Outcome::Success) => {}
            (kind, Outcome::Failure) => {
                info!(
                    pod = %self.name(),
                    container = %event.container,
                    "container failed {} probe, will be restarted: {}",
                    kind.name().to_lowercase(),
                    event.message
                );
                if let Some(task) = self.probes.remove(&event.container) {
                    task.abort();
                }
                self.ready.remove(&event.container);
                let grace = self
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .unwrap_or(DEFAULT_GRACE_SECONDS);
                let grace = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
                if let Err(e) = self
                    .shared
                    .runtime
                    .stop_container(&event.container, grace)
                    .await
                {
                    self.problem(format!("stopping container {}: {e}", event.container));
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Status.

    /// `has_init`: the pod has init containers (containers not created yet then wait in
    /// `PodInitializing` rather than `ContainerCreating`, as kubelet shows them).
    fn snapshot(
        &self,
        container: &Container,
        attempts: &Attempts,
        has_init: bool,
    ) -> ContainerSnapshot {
        let list = attempts.get(&container.name);
        let current = list.and_then(|l| l.first()).cloned();
        let previous = list.and_then(|l| l.get(1)).cloned();
        let running = current
            .as_ref()
            .is_some_and(|c| c.state == ContainerState::Running);
        let mut waiting = self.waiting.get(&container.name).cloned();
        if waiting.is_none() && current.is_none() && has_init {
            waiting = Some(Waiting::new("PodInitializing", None));
        }
        let (ready, started) = match &current {
            Some(c) if running => (
                self.is_ready(container, &c.id),
                self.is_started(container, &c.id),
            ),
            _ => (false, false),
        };
        ContainerSnapshot {
            name: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            current,
            previous,
            waiting,
            ready,
            started,
        }
    }

    /// Computes the pod status and hands it to the status writer; returns the phase.
    fn publish(&mut self, attempts: &Attempts, sandbox_ready: bool) -> &'static str {
        let Some(spec) = self.pod.spec.clone() else {
            return "Pending";
        };
        let has_init = spec.init_containers.as_ref().is_some_and(|i| !i.is_empty());
        let init_statuses: Vec<_> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| status::container_status(&self.snapshot(c, attempts, has_init)))
            .collect();
        let statuses: Vec<_> = spec
            .containers
            .iter()
            .map(|c| status::container_status(&self.snapshot(c, attempts, has_init)))
            .collect();
        let phase = match self.terminal {
            Some(p) => p,
            None => status::phase(&spec, &init_statuses, &statuses, false),
        };
        let sandbox_ready = sandbox_ready
            && self.terminal.is_none()
            && self
                .sandbox
                .as_ref()
                .is_some_and(|s| s.state == SandboxState::Ready);
        let others: Vec<PodCondition> = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| !status::KUBELET_CONDITIONS.contains(&c.type_.as_str()))
            .collect();
        let mut conditions = status::conditions(
            &spec,
            phase,
            sandbox_ready,
            &init_statuses,
            &statuses,
            &others,
        );
        status::stamp_conditions(&mut conditions, &self.conditions, &status::now());
        self.conditions = conditions.clone();
        // A pod bound without the scheduler gets PodScheduled from the kubelet, as in
        // Kubernetes.
        match others.iter().find(|c| c.type_ == "PodScheduled") {
            Some(scheduled) => conditions.push(scheduled.clone()),
            None => conditions.push(PodCondition {
                type_: "PodScheduled".into(),
                status: "True".into(),
                last_transition_time: Some(self.start_time.clone()),
                ..Default::default()
            }),
        }
        let host_ip = self.shared.node_ip.to_string();
        let pod_ip = self.pod_ip.map(|ip| ip.to_string());
        let qos = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.qos_class.clone())
            .unwrap_or_else(|| status::qos_class(&spec).to_string());
        let pod_status = PodStatus {
            phase: Some(phase.to_string()),
            conditions: Some(conditions),
            host_ip: Some(host_ip.clone()),
            host_ips: Some(vec![HostIP { ip: host_ip }]),
            pod_ip: pod_ip.clone(),
            pod_ips: pod_ip.map(|ip| vec![PodIP { ip }]),
            start_time: Some(self.start_time.clone()),
            qos_class: Some(qos),
            container_statuses: Some(statuses),
            init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
            ..Default::default()
        };
        self.status_tx.send_replace(Some(pod_status));
        phase
    }

    // -----------------------------------------------------------------------------------
    // Termination.

    /// Stops and removes everything of the pod, then deletes it from the API. Returns true
    /// when done; false to be called again (after [`RETRY`]).
    async fn terminate(&mut self) -> bool {
        let (since, grace) = match self.terminating {
            Some(t) => t,
            None => {
                let t = (Instant::now(), self.grace());
                info!(pod = %self.name(), grace = ?t.1, "terminating pod");
                self.terminating = Some(t);
                t
            }
        };
        let deadline = since + grace;
        self.stop_probes();
        let runtime = self.shared.runtime.clone();
        let sandbox_id = self.sandbox_id();
        let containers = match runtime.list_containers(Some(&sandbox_id)).await {
            Ok(list) => list,
            Err(RuntimeError::NotFound(_)) => Vec::new(),
            Err(e) => {
                self.problem(format!("listing containers to stop: {e}"));
                self.wake_in(RETRY);
                return false;
            }
        };
        let spec = self.pod.spec.clone().unwrap_or_default();
        let pod_ip = self.pod_ip;
        let stops = containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .map(|c| {
                let runtime = runtime.clone();
                let pre_stop = spec
                    .containers
                    .iter()
                    .chain(spec.init_containers.iter().flatten())
                    .find(|s| s.name == c.name)
                    .and_then(|s| {
                        s.lifecycle
                            .as_ref()
                            .and_then(|l| l.pre_stop.as_ref())
                            .and_then(|h| hook(h, s))
                    });
                let id = c.id.clone();
                async move {
                    if let Some(pre_stop) = pre_stop {
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        if let Err(message) =
                            run_hook(&pre_stop, &runtime, &id, pod_ip, remaining).await
                        {
                            warn!(container = %id, "preStop hook failed: {message}");
                        }
                    }
                    let mut remaining = deadline.saturating_duration_since(Instant::now());
                    if grace > Duration::ZERO {
                        remaining = remaining.max(MIN_GRACE.min(grace));
                    }
                    ignore_not_found(runtime.stop_container(&id, remaining).await)
                        .map_err(|e| format!("stopping container {id}: {e}"))
                }
            });
        for result in futures::future::join_all(stops).await {
            if let Err(e) = result {
                self.problem(e);
                self.wake_in(RETRY);
                return false;
            }
        }
        if let Err(e) = ignore_not_found(runtime.stop_sandbox(&sandbox_id).await) {
            self.problem(format!("stopping the sandbox: {e}"));
            self.wake_in(RETRY);
            return false;
        }
        for c in &containers {
            if let Err(e) = ignore_not_found(runtime.remove_container(&c.id).await) {
                self.problem(format!("removing container {}: {e}", c.id));
                self.wake_in(RETRY);
                return false;
            }
        }
        if let Err(e) = ignore_not_found(runtime.remove_sandbox(&sandbox_id).await) {
            self.problem(format!("removing the sandbox: {e}"));
            self.wake_in(RETRY);
            return false;
        }
        let root = self.shared.root_dir.clone();
        let uid = self.uid.clone();
        match tokio::task::spawn_blocking(move || volumes::teardown(&root, &uid)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.problem(format!("removing the pod's volumes: {e}"));
                self.wake_in(RETRY);
                return false;
            }
            Err(e) => {
                self.problem(format!("removing the pod's volumes: {e}"));
                self.wake_in(RETRY);
                return false;
            }
        }
        if let Err(e) = ignore_not_found(runtime.remove_pod_logs(&sandbox_id).await) {
            self.problem(format!("removing the pod's logs: {e}"));
        }
        self.sandbox = None;
        if self.removed {
            info!(pod = %self.name(), "pod removed from the node");
            return true;
        }
        let api: Api<Pod> = Api::namespaced(
            self.shared.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        match timed(api.delete(&name, &params)).await {
            Ok(_) => {
                info!(pod = %self.name(), "pod terminated and deleted");
                true
            }
            Err(e) if e.is_not_found() || e.is_conflict() => true,
            Err(e) => {
                self.problem(format!("deleting the pod: {e}"));
                self.wake_in(RETRY);
                false
            }
        }
    }
}

fn ignore_not_found(r: runtime::Result<()>) -> runtime::Result<()> {
    match r {
        Err(RuntimeError::NotFound(_)) => Ok(()),
        other => other,
    }
}

/// Stops and removes a sandbox no pod owns any more (orphan cleanup), with its volumes and
/// logs.
pub async fn remove_orphan(
    runtime: Arc<dyn Runtime>,
    root_dir: PathBuf,
    uid: String,
) -> Result<(), String> {
    let id = SandboxId(uid.clone());
    let containers = match runtime.list_containers(Some(&id)).await {
        Ok(list) => list,
        Err(RuntimeError::NotFound(_)) => Vec::new(),
        Err(e) => return Err(format!("listing containers: {e}")),
    };
    ignore_not_found(runtime.stop_sandbox(&id).await)
        .map_err(|e| format!("stopping sandbox: {e}"))?;
    for c in containers {
        ignore_not_found(runtime.remove_container(&c.id).await)
            .map_err(|e| format!("removing container {}: {e}", c.id))?;
    }
    ignore_not_found(runtime.remove_sandbox(&id).await)
        .map_err(|e| format!("removing sandbox: {e}"))?;
    tokio::task::spawn_blocking(move || volumes::teardown(&root_dir, &uid))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("removing volumes: {e}"))?;
    ignore_not_found(runtime.remove_pod_logs(&id).await)
        .map_err(|e| format!("removing logs: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity as Q;

    fn with_resources(limits: &[(&str, &str)], requests: &[(&str, &str)]) -> Container {
        let map = |items: &[(&str, &str)]| {
            (!items.is_empty()).then(|| {
                items
                    .iter()
                    .map(|(k, v)| (k.to_string(), Q(v.to_string())))
                    .collect()
            })
        };
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                limits: map(limits),
                requests: map(requests),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn resources_become_cgroup_limits() {
        let c = with_resources(&[("cpu", "500m"), ("memory", "64Mi")], &[("cpu", "100m")]);
        assert_eq!(
            container_resources(&c),
            Resources {
                cpu_request_millis: Some(100),
                cpu_limit_millis: Some(500),
                memory_limit_bytes: Some(64 << 20),
                pids_limit: None,
            }
        );
        // Requests default to limits.
        let c = with_resources(&[("cpu", "2")], &[]);
        assert_eq!(container_resources(&c).cpu_request_millis, Some(2000));
        assert_eq!(
            container_resources(&with_resources(&[], &[])),
            Resources::default()
        );

        let pod = |containers: Vec<Container>| Pod {
            spec: Some(PodSpec {
                containers,
                ..Default::default()
            }),
            ..Default::default()
        };
        let limited = pod(vec![
            with_resources(&[("memory", "64Mi"), ("cpu", "1")], &[]),
            with_resources(&[("memory", "32Mi")], &[("cpu", "250m")]),
        ]);
        let r = pod_resources(&limited);
        assert_eq!(r.memory_limit_bytes, Some(96 << 20));
        assert_eq!(r.cpu_limit_millis, None, "one container has no cpu limit");
        assert_eq!(r.cpu_request_millis, Some(1250));
    }

    #[test]
    fn restart_policies() {
        assert!(should_restart("Always", 0));
        assert!(should_restart("Always", 1));
        assert!(!should_restart("OnFailure", 0));
        assert!(should_restart("OnFailure", 137));
        assert!(!should_restart("Never", 1));
    }

    #[test]
    fn attempts_sort_newest_first() {
        let c = |attempt: u32| runtime::ContainerStatus {
            id: ContainerId(format!("u-app-{attempt}")),
            sandbox: SandboxId("u".into()),
            name: "app".into(),
            image: String::new(),
            image_id: String::new(),
            state: ContainerState::Exited,
            restart_count: attempt,
            pid: None,
            created_at: SystemTime::UNIX_EPOCH,
            started_at: None,
            finished_at: None,
            exit_code: Some(1),
            reason: None,
            message: None,
            log_path: PathBuf::new(),
        };
        let grouped = group(vec![c(0), c(2), c(1)]);
        let order: Vec<u32> = grouped["app"].iter().map(|c| c.restart_count).collect();
        assert_eq!(order, [2, 1, 0]);
    }

    #[test]
    fn pod_keys_name_namespace_uid() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.namespace = Some("prod".into());
        pod.metadata.uid = Some("123".into());
        assert_eq!(pod_key(&pod), "web_prod(123)");
    }
}
