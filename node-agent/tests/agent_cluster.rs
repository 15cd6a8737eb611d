//! The agent against a real keel-control, with the real process runtime: a node registers and
//! turns Ready, pods run (env from ConfigMaps, Secrets and the downward API, volumes, probes,
//! init containers), crash-looping and missing-image containers report kubelet's reasons,
//! deletion is graceful (preStop) and leaves nothing behind, and a restarted agent adopts its
//! running pods without restarting them and removes the sandboxes of pods deleted meanwhile.
//!
//! Root-only (network namespaces, cgroups, mounts): skipped with a message otherwise. The
//! whole node (keel-control on 127.0.0.1 and the agent) runs inside a private network
//! namespace owned by the test's thread, with its own directories and cgroup parent, all
//! removed on every path.
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use keel_agent::agent::{self, AgentConfig, RuntimeFactory};
use keel_agent::runtime::process::cgroups::Cgroups;
use keel_agent::runtime::process::images::build_busybox_image;
use keel_agent::runtime::process::network::unmount_netns_dir;
use keel_agent::runtime::process::runtime::{ProcessConfig, ProcessRuntime};
use keel_agent::runtime::{Runtime, SandboxId};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODE: &str = "agent-test-node";
const BUSYBOX: &str = "keel.local/busybox:latest";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `test` on a thread of its own inside a new network namespace (gone with the thread),
/// on a multi-threaded runtime whose threads inherit the namespace.
fn in_private_netns<F, Fut>(test: F) -> Result<()>
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = Result<()>>,
{
    std::thread::scope(|s| {
        let thread = s.spawn(|| -> Result<()> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .context("unshare(CLONE_NEWNET)")?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("building the runtime")?;
            runtime.block_on(async {
                loopback_up().await?;
                test().await
            })
        });
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

async fn loopback_up() -> Result<()> {
    let (connection, handle, _) = rtnetlink::new_connection().context("netlink")?;
    let task = tokio::spawn(connection);
    let result = handle
        .link()
        .set(rtnetlink::LinkUnspec::new_with_index(1).up().build())
        .execute()
        .await
        .context("setting lo up");
    task.abort();
    result
}

/// The node's directories and cgroup parent; removes everything when dropped (processes
/// killed through the cgroups, namespaces unmounted, directories deleted).
struct NodeDirs {
    dir: tempfile::TempDir,
    cgroup_parent: String,
}

impl NodeDirs {
    fn new() -> Result<NodeDirs> {
        let dir = tempfile::Builder::new()
            .prefix("keel-agent-test-")
            .tempdir()?;
        let cgroup_parent = format!("keel-agent-test-{}", std::process::id());
        Ok(NodeDirs { dir, cgroup_parent })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn agent_config(&self, kubeconfig: &Path) -> AgentConfig {
        let mut config = AgentConfig::new(NODE, kubeconfig);
        config.root_dir = self.path("root");
        config.run_dir = self.path("run");
        config.log_dir = self.path("logs");
        config.image_dir = self.path("images");
        config.cgroup_parent = self.cgroup_parent.clone();
        config.node_ip = Some(Ipv4Addr::LOCALHOST);
        config
    }
}

impl Drop for NodeDirs {
    fn drop(&mut self) {
        if let Ok(cgroups) = Cgroups::detect(&self.cgroup_parent)
            && let Err(e) = cgroups.remove(&self.cgroup_parent)
        {
            eprintln!(
                "warning: cleanup: removing cgroup {}: {e}",
                self.cgroup_parent
            );
        }
        if let Err(e) = unmount_netns_dir(&self.path("run")) {
            eprintln!("warning: cleanup: {e}");
        }
    }
}

/// A factory building the process runtime (shim: the keel-agent binary) and keeping a handle
/// on it for the test's checks.
fn factory(config: &AgentConfig, slot: Arc<Mutex<Option<Arc<dyn Runtime>>>>) -> RuntimeFactory {
    let process = ProcessConfig {
        root_dir: config.root_dir.clone(),
        run_dir: config.run_dir.clone(),
        log_dir: config.log_dir.clone(),
        image_dir: config.image_dir.clone(),
        cgroup_parent: config.cgroup_parent.clone(),
        pod_cidr: ipnet::Ipv4Net::default(),
    };
    Box::new(move |network| {
        Box::pin(async move {
            let runtime = ProcessRuntime::new(ProcessConfig {
                pod_cidr: network.pod_cidr,
                ..process
            })
            .await?
            .with_shim_binary(env!("CARGO_BIN_EXE_keel-agent"));
            let runtime: Arc<dyn Runtime> = Arc::new(runtime);
            *slot.lock().expect("runtime slot") = Some(runtime.clone());
            Ok(runtime)
        })
    })
}

/// A running agent.
struct RunningAgent {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
    runtime: Arc<Mutex<Option<Arc<dyn Runtime>>>>,
}

impl RunningAgent {
    fn start(config: AgentConfig) -> RunningAgent {
        let slot = Arc::new(Mutex::new(None));
        let factory = factory(&config, slot.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(agent::run_until(config, factory, async move {
            let _ = stopped.await;
        }));
        RunningAgent {
            stop: Some(stop),
            task,
            runtime: slot,
        }
    }

    fn runtime(&self) -> Result<Arc<dyn Runtime>> {
        self.runtime
            .lock()
            .expect("runtime slot")
            .clone()
            .context("the agent has no runtime yet")
    }

    async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.context("agent task")?
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_pod(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    timeout: Duration,
    predicate: impl Fn(&Pod) -> bool,
) -> Result<Pod> {
    let last = Mutex::new(None::<Pod>);
    let result = eventually(&format!("pod {name}: {what}"), timeout, || async {
        let pod = pods.get(name).await?;
        let ok = predicate(&pod);
        *last.lock().expect("last") = Some(pod.clone());
        Ok(ok.then_some(pod))
    })
    .await;
    result.with_context(|| {
        let status = last
            .lock()
            .expect("last")
            .as_ref()
            .and_then(|p| serde_json::to_string_pretty(&p.status).ok())
            .unwrap_or_default();
        format!("last status: {status}")
    })
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn condition(pod: &Pod, kind: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

fn container_status<'a>(
    pod: &'a Pod,
    name: &str,
) -> Option<&'a k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == name)
}

fn waiting_reason(pod: &Pod, name: &str) -> Option<String> {
    container_status(pod, name)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

async fn create(pods: &Api<Pod>, manifest: serde_json::Value) -> Result<Pod> {
    let pod: Pod = serde_json::from_value(manifest)?;
    Ok(pods.create(&PostParams::default(), &pod).await?)
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// `GET path` from the pod's HTTP server; the body.
async fn http_get(ip: &str, port: u16, path: &str) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect((ip, port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok(body)
}

async fn sandboxes(runtime: &Arc<dyn Runtime>) -> Result<Vec<String>> {
    Ok(runtime
        .list_sandboxes()
        .await?
        .into_iter()
        .map(|s| s.id.0)
        .collect())
}

#[test]
fn agent_runs_pods_for_keel_control() {
    if !is_root() {
        eprintln!("SKIP agent_runs_pods_for_keel_control: needs root (CI runs as root)");
        return;
    }
    if !Path::new("/bin/busybox").exists() {
        eprintln!("SKIP agent_runs_pods_for_keel_control: /bin/busybox missing (busybox-static)");
        return;
    }
    in_private_netns(scenario).expect("scenario");
}

async fn scenario() -> Result<()> {
    let dirs = NodeDirs::new()?;
    build_busybox_image(&dirs.path("images")).context("building the busybox image")?;
    let mut control = keel_control::Config::new(dirs.path("control"));
    control.listen = "127.0.0.1:0".parse()?;
    let control = keel_control::start(control).await?;
    let result = run_scenario(&dirs, &control.kubeconfig).await;
    control.stop().await?;
    result
}

async fn run_scenario(dirs: &NodeDirs, kubeconfig: &Path) -> Result<()> {
    let client = agent::client::from_kubeconfig(kubeconfig).await?;
    let config = dirs.agent_config(kubeconfig);
    let agent = RunningAgent::start(config.clone());

    // --- The Node registers, gets a podCIDR, turns Ready; its Lease is renewed.
    let nodes: Api<Node> = Api::all(client.clone());
    let node = eventually("the node to be Ready", Duration::from_secs(30), || async {
        let node = nodes.get_opt(NODE).await?;
        Ok(node.filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        }))
    })
    .await?;
    let status = node.status.clone().unwrap_or_default();
    let info = status.node_info.clone().unwrap_or_default();
    assert_eq!(info.kubelet_version, "v1.33.0-keel");
    assert_eq!(info.operating_system, "linux");
    assert!(!info.container_runtime_version.is_empty());
    assert!(!info.boot_id.is_empty());
    assert_eq!(
        status.capacity.as_ref().map(|c| c["pods"].0.as_str()),
        Some("110")
    );
    assert!(
        status
            .allocatable
            .as_ref()
            .is_some_and(|a| a.contains_key("memory"))
    );
    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/hostname").map(String::as_str),
        Some(NODE)
    );
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    let addresses = status.addresses.clone().unwrap_or_default();
    assert!(
        addresses
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1")
    );
    let pod_cidr: ipnet::Ipv4Net = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.clone())
        .context("podCIDR")?
        .parse()?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = leases.get(NODE).await?;
    let spec = lease.spec.clone().unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some(NODE));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    assert_eq!(
        lease
            .metadata
            .owner_references
            .as_ref()
            .map(|o| o[0].kind.as_str()),
        Some("Node")
    );

    // --- Sources for env and volumes.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "app-config"},
                "data": {"GREETING": "hello", "app.conf": "mode=fast\n"}
            }))?,
        )
        .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "app-secret"},
                "stringData": {"password": "hunter2"}
            }))?,
        )
        .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let host_dir = dirs.path("host");

    // --- A web server: env, volumes, probes, preStop.
    create(
        &pods,
        json!({
            "metadata": {"name": "web"},
            "spec": {
                "nodeName": NODE,
                "terminationGracePeriodSeconds": 10,
                "containers": [{
                    "name": "web",
                    "image": BUSYBOX,
                    "command": ["sh", "-c", "echo \"$MSG $POD_NAME $PASSWORD $(cat /config/app.conf)\" > /data/env; exec httpd -f -p 8080 -h /data"],
                    "env": [
                        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "GREETING"}}},
                        {"name": "MSG", "value": "$(GREETING) world"},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "password"}}}
                    ],
                    "volumeMounts": [
                        {"name": "data", "mountPath": "/data"},
                        {"name": "config", "mountPath": "/config"},
                        {"name": "host", "mountPath": "/host"}
                    ],
                    "readinessProbe": {"httpGet": {"path": "/env", "port": 8080}, "periodSeconds": 1},
                    "livenessProbe": {"exec": {"command": ["cat", "/data/env"]}, "periodSeconds": 1},
                    "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo bye > /host/prestop"]}}}
                }],
                "volumes": [
                    {"name": "data", "emptyDir": {}},
                    {"name": "config", "configMap": {"name": "app-config"}},
                    {"name": "host", "hostPath": {"path": host_dir.to_string_lossy(), "type": "DirectoryOrCreate"}}
                ]
            }
        }),
    )
    .await?;
    let web = wait_pod(
        &pods,
        "web",
        "Running and Ready",
        Duration::from_secs(60),
        |p| phase(p) == "Running" && condition(p, "Ready").as_deref() == Some("True"),
    )
    .await?;
    let status = web.status.clone().unwrap_or_default();
    let pod_ip: Ipv4Addr = status.pod_ip.clone().context("podIP")?.parse()?;
    assert!(pod_cidr.contains(&pod_ip), "{pod_ip} in {pod_cidr}");
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(status.start_time.is_some());
    assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
    for kind in [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
        "PodScheduled",
    ] {
        assert_eq!(condition(&web, kind).as_deref(), Some("True"), "{kind}");
    }
    let cs = container_status(&web, "web").context("web status")?;
    assert!(cs.ready);
    assert_eq!(cs.started, Some(true));
    assert_eq!(cs.restart_count, 0);
    assert!(
        cs.container_id
            .as_deref()
            .is_some_and(|id| id.starts_with("keel://"))
    );
    assert!(cs.state.as_ref().is_some_and(|s| s.running.is_some()));
    let body = http_get(&pod_ip.to_string(), 8080, "/env").await?;
    assert_eq!(body.trim(), "hello world web hunter2 mode=fast");

    // --- A crash loop, a missing image, an init container job, a failing job, a steady pod.
    create(
        &pods,
        json!({
            "metadata": {"name": "crash"},
            "spec": {"nodeName": NODE, "containers": [{"name": "crash", "image": BUSYBOX, "command": ["sh", "-c", "echo boom; exit 3"]}]}
        }),
    )
    .await?;
    create(
        &pods,
        json!({
            "metadata": {"name": "missing"},
            "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "keel.local/nope:latest"}]}
        }),
    )
    .await?;
    create(
        &pods,
        json!({
            "metadata": {"name": "job"},
            "spec": {
                "nodeName": NODE,
                "restartPolicy": "Never",
                "initContainers": [{"name": "prepare", "image": BUSYBOX, "command": ["sh", "-c", "echo ready > /work/flag"], "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
                "containers": [{"name": "main", "image": BUSYBOX, "command": ["sh", "-c", "test \"$(cat /work/flag)\" = ready"], "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
                "volumes": [{"name": "work", "emptyDir": {}}]
            }
        }),
    )
    .await?;
    create(
        &pods,
        json!({
            "metadata": {"name": "failing"},
            "spec": {"nodeName": NODE, "restartPolicy": "Never", "containers": [{"name": "main", "image": BUSYBOX, "command": ["sh", "-c", "exit 7"]}]}
        }),
    )
    .await?;
    let steady = create(
        &pods,
        json!({
            "metadata": {"name": "steady"},
            "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 5, "containers": [{"name": "main", "image": BUSYBOX, "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]}]}
        }),
    )
    .await?;

    let crash = wait_pod(
        &pods,
        "crash",
        "CrashLoopBackOff",
        Duration::from_secs(30),
        |p| waiting_reason(p, "crash").as_deref() == Some("CrashLoopBackOff"),
    )
    .await?;
    let cs = container_status(&crash, "crash").context("crash status")?;
    assert!(cs.restart_count >= 1, "restartCount {}", cs.restart_count);
    let last = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .context("lastState.terminated")?;
    assert_eq!(last.exit_code, 3);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    let message = cs
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.message.clone())
        .unwrap_or_default();
    assert!(
        message.starts_with("back-off 10s restarting failed container=crash pod=crash_default("),
        "{message}"
    );
    assert_eq!(phase(&crash), "Running");

    let missing = wait_pod(
        &pods,
        "missing",
        "ImagePullBackOff",
        Duration::from_secs(30),
        |p| waiting_reason(p, "app").as_deref() == Some("ImagePullBackOff"),
    )
    .await?;
    assert_eq!(phase(&missing), "Pending");

    let job = wait_pod(&pods, "job", "Succeeded", Duration::from_secs(30), |p| {
        phase(p) == "Succeeded"
    })
    .await?;
    let init = job
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|s| s.first())
        .context("init status")?;
    let done = init
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .context("init terminated")?;
    assert_eq!(
        (done.exit_code, done.reason.as_deref()),
        (0, Some("Completed"))
    );
    assert_eq!(condition(&job, "Initialized").as_deref(), Some("True"));
    assert_eq!(condition(&job, "Ready").as_deref(), Some("False"));

    let failing = wait_pod(&pods, "failing", "Failed", Duration::from_secs(30), |p| {
        phase(p) == "Failed"
    })
    .await?;
    let term = container_status(&failing, "main")
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .context("terminated")?;
    assert_eq!(term.exit_code, 7);

    wait_pod(&pods, "steady", "Running", Duration::from_secs(30), |p| {
        phase(p) == "Running"
    })
    .await?;

    // --- Graceful deletion: preStop runs, the pod goes from the API, nothing is left.
    let runtime = agent.runtime()?;
    let web_uid = uid(&web);
    pods.delete("web", &DeleteParams::default()).await?;
    eventually("web to be deleted", Duration::from_secs(30), || async {
        Ok(pods.get_opt("web").await?.is_none().then_some(()))
    })
    .await?;
    assert_eq!(
        std::fs::read_to_string(host_dir.join("prestop"))?.trim(),
        "bye"
    );
    assert!(!sandboxes(&runtime).await?.contains(&web_uid));
    assert!(
        runtime
            .list_containers(Some(&SandboxId(web_uid.clone())))
            .await
            .unwrap_or_default()
            .is_empty()
    );
    assert!(!dirs.path("root").join("pods").join(&web_uid).exists());

    // --- Restart: the agent stops; meanwhile `crash` is force-deleted. The next agent adopts
    // `steady` without restarting it and removes what `crash` left.
    let before = container_status(&pods.get("steady").await?, "main")
        .and_then(|c| c.container_id.clone())
        .context("steady container id")?;
    let crash_uid = uid(&crash);
    agent.stop().await?;
    pods.delete(
        "crash",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    assert!(
        sandboxes(&runtime).await?.contains(&crash_uid),
        "crash is still on the node"
    );
    let agent = RunningAgent::start(config.clone());
    eventually(
        "the crash sandbox to be removed",
        Duration::from_secs(30),
        || {
            let runtime = runtime.clone();
            let crash_uid = crash_uid.clone();
            async move { Ok((!sandboxes(&runtime).await?.contains(&crash_uid)).then_some(())) }
        },
    )
    .await?;
    // Give the new agent time to act on `steady`: it would have restarted it by now if it
    // hadn't adopted it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let adopted = pods.get("steady").await?;
    assert_eq!(phase(&adopted), "Running");
    let cs = container_status(&adopted, "main").context("steady status")?;
    assert_eq!(cs.container_id.as_ref(), Some(&before), "not restarted");
    assert_eq!(cs.restart_count, 0);
    assert_eq!(uid(&adopted), uid(&steady));

    // --- Everything deleted: the API and the node are empty.
    let names: Vec<String> = pods
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    for name in &names {
        pods.delete(name, &DeleteParams::default()).await?;
    }
    eventually(
        "every pod to be deleted",
        Duration::from_secs(60),
        || async {
            Ok(pods
                .list(&Default::default())
                .await?
                .items
                .is_empty()
                .then_some(()))
        },
    )
    .await?;
    let runtime = agent.runtime()?;
    assert_eq!(sandboxes(&runtime).await?, Vec::<String>::new());
    assert!(runtime.list_containers(None).await?.is_empty());
    let left: Vec<_> = std::fs::read_dir(dirs.path("root").join("pods"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "pod directories left: {left:?}");
    agent.stop().await?;
    Ok(())
}
