//! The whole node end to end, as `keel-agent run` wires it: keel-control (in-process, on
//! 127.0.0.1) and the agent with the real process runtime, the streaming endpoint and the
//! Service proxy (the eBPF datapath attached to the pods' cgroup v2 subtree, to every pod veth
//! and to a node device).
//!
//! - `datapath_driven_by_the_agent`: a Deployment of echo pods behind a ClusterIP Service is
//!   reached from a client pod (socket level, through the runtime's exec) and from the client
//!   pod's network namespace outside the cgroup (per packet); the maps follow scaling to zero
//!   and the Service's deletion.
//! - `thousand_pods_leave_nothing_behind`: 1 000 pods created and deleted (all at once, or in
//!   waves of `KEEL_E2E_WAVE` pods on a smaller machine) leave no process, namespace, veth,
//!   address, cgroup, mount, state file or BPF pin behind.
//! - `kubectl_logs_and_exec_against_the_real_agent`: stock kubectl's `logs` (`--previous`,
//!   `-f`) and `exec` (exit codes, stderr, stdin) against real containers.
//!
//! Root-only (network namespaces, cgroups, mounts, BPF): skipped with a message otherwise.
//! Each test runs its node inside a private network namespace owned by the test's thread, with
//! its own directories, cgroup parent and BPF pin directory, all removed on every path. The
//! eBPF object must have been built (`cargo xtask build-ebpf`, which the test suite runs
//! first); the static keel-echo binary is built like `cargo xtask images` does when missing.
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuHashMap};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keel_agent::agent::{self, AgentConfig, RuntimeFactory};
use keel_agent::datapath::state::{endpoint_of, frontend_of};
use keel_agent::datapath::translate::{Endpoint, Frontend, Proto, Scope};
use keel_agent::node_services::{self, NodeServicesConfig};
use keel_agent::proxy::ProxyConfig;
use keel_agent::runtime::process::cgroups::Cgroups;
use keel_agent::runtime::process::images::{build_busybox_image, build_echo_image};
use keel_agent::runtime::process::network::unmount_netns_dir;
use keel_agent::runtime::process::runtime::{ProcessConfig, ProcessRuntime, mounted_under};
use keel_agent::runtime::{ContainerId, Runtime};
use keel_common::{Backend, RevNat, ServiceCounters, ServiceKey, ServiceValue, map_names};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const NODE: &str = "e2e-node";
const BUSYBOX: &str = "keel.local/busybox:latest";
const ECHO: &str = "keel.local/echo:latest";
/// The node device NodePorts answer on, made in the private namespace, and its veth peer.
const NODE_DEVICE: &str = "e2enode0";
const NODE_DEVICE_PEER: &str = "e2enode1";
const NODE_DEVICE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
/// The agent's streaming port (the kubelet's; free in a private namespace).
const STREAMING_PORT: u16 = 10250;

fn runnable(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {test}: needs root (CI runs as root)");
        return false;
    }
    if !Path::new("/bin/busybox").exists() {
        eprintln!("SKIP {test}: /bin/busybox is missing (busybox-static: cargo xtask setup)");
        return false;
    }
    true
}

/// Logs of the agent and keel-control on stderr when `RUST_LOG` is set.
fn init_tracing() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// Runs `test` on a thread of its own inside a new network namespace (gone with the thread),
/// on a multi-threaded runtime whose threads inherit the namespace. Processes started from
/// it (kubectl) inherit the namespace too.
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
            let result = runtime.block_on(async {
                loopback_up().await?;
                test().await
            });
            // The agent's background tasks (proxy, streaming) end with the runtime.
            runtime.shutdown_timeout(Duration::from_secs(10));
            result
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

/// The node's external device: one end of a veth pair (this kernel has no dummy driver)
/// with an address, in the private namespace.
async fn add_node_device() -> Result<()> {
    let (connection, handle, _) = rtnetlink::new_connection().context("netlink")?;
    let task = tokio::spawn(connection);
    let result = async {
        handle
            .link()
            .add(
                rtnetlink::LinkVeth::new(NODE_DEVICE, NODE_DEVICE_PEER)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .context("creating the node device")?;
        for name in [NODE_DEVICE, NODE_DEVICE_PEER] {
            let index = if_index(name).with_context(|| format!("{name}'s index"))?;
            handle
                .link()
                .set(rtnetlink::LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .with_context(|| format!("setting {name} up"))?;
        }
        let index = if_index(NODE_DEVICE).context("the node device's index")?;
        handle
            .address()
            .add(index, NODE_DEVICE_ADDR.into(), 24)
            .execute()
            .await
            .context("addressing the node device")
    }
    .await;
    task.abort();
    result
}

/// An interface's index in the calling thread's network namespace.
fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// The calling thread's network namespace inode (the datapath names tc pins with it).
fn netns_inode() -> Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// Interfaces of the calling thread's network namespace.
fn interfaces() -> Vec<String> {
    std::fs::read_to_string("/proc/thread-self/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_string()))
        .collect()
}

/// One test's node: its directories, cgroup parent and BPF pin directory. Dropped after the
/// test's runtime is gone, it removes everything (processes killed through the cgroups,
/// namespaces unmounted, pins removed, directories deleted).
struct TestNode {
    dir: tempfile::TempDir,
    cgroup_parent: String,
    pin_dir: PathBuf,
}

impl TestNode {
    fn new(test: &str) -> Result<TestNode> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("keel-e2e-{test}-"))
            .tempdir()?;
        let unique = format!("keel-e2e-{}-{test}", std::process::id());
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&unique);
        let _ = std::fs::remove_dir_all(&pin_dir);
        Ok(TestNode {
            dir,
            cgroup_parent: unique,
            pin_dir,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn agent_config(&self, kubeconfig: &Path, max_pods: u32) -> AgentConfig {
        let mut config = AgentConfig::new(NODE, kubeconfig);
        config.root_dir = self.path("root");
        config.run_dir = self.path("run");
        config.log_dir = self.path("logs");
        config.image_dir = self.path("images");
        config.cgroup_parent = self.cgroup_parent.clone();
        config.node_ip = Some(Ipv4Addr::LOCALHOST);
        config.streaming_port = STREAMING_PORT;
        config.max_pods = max_pods;
        config
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Ok(cgroups) = Cgroups::detect(&self.cgroup_parent)
            && let Err(e) = cgroups.remove(&self.cgroup_parent)
        {
            eprintln!("warning: cleanup: cgroup {}: {e}", self.cgroup_parent);
        }
        if let Err(e) = unmount_netns_dir(&self.path("run")) {
            eprintln!("warning: cleanup: {e}");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.pin_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("warning: cleanup: {}: {e}", self.pin_dir.display());
        }
    }
}

type RuntimeSlot = Arc<Mutex<Option<Arc<dyn Runtime>>>>;

/// What `keel-agent run` builds (see its `main.rs`): the process runtime (shim: the
/// keel-agent binary), then the streaming endpoint and the Service proxy beside it.
fn factory(
    node: &TestNode,
    config: &AgentConfig,
    client_ca: PathBuf,
    slot: RuntimeSlot,
) -> RuntimeFactory {
    let process = ProcessConfig {
        root_dir: config.root_dir.clone(),
        run_dir: config.run_dir.clone(),
        log_dir: config.log_dir.clone(),
        image_dir: config.image_dir.clone(),
        cgroup_parent: config.cgroup_parent.clone(),
        pod_cidr: ipnet::Ipv4Net::default(),
    };
    let kubeconfig = config.kubeconfig.clone();
    let root_dir = config.root_dir.clone();
    let streaming_port = config.streaming_port;
    let pin_dir = node.pin_dir.clone();
    Box::new(move |network| {
        Box::pin(async move {
            let runtime = ProcessRuntime::new(ProcessConfig {
                pod_cidr: network.pod_cidr,
                ..process
            })
            .await?
            .with_shim_binary(env!("CARGO_BIN_EXE_keel-agent"));
            let cgroup = runtime
                .unified_cgroup()
                .context("no cgroup v2 hierarchy for the socket programs")?;
            let runtime: Arc<dyn Runtime> = Arc::new(runtime);
            node_services::start(
                NodeServicesConfig {
                    node_name: network.node_name.clone(),
                    node_ip: network.node_ip,
                    kubeconfig,
                    root_dir,
                    streaming_port,
                    client_ca: Some(client_ca),
                    proxy: Some(ProxyConfig {
                        pin_dir,
                        node_name: network.node_name.clone(),
                        cgroup,
                        node_devices: vec![NODE_DEVICE.to_string()],
                        node_addresses: vec![network.node_ip, NODE_DEVICE_ADDR],
                    }),
                },
                runtime.clone(),
            )
            .await?;
            *slot.lock().expect("runtime slot") = Some(runtime.clone());
            Ok(runtime)
        })
    })
}

/// keel-control and an agent with its node services, both in this test's namespace.
struct Cluster {
    control: keel_control::Running,
    client: kube::Client,
    stop_agent: Option<tokio::sync::oneshot::Sender<()>>,
    agent: tokio::task::JoinHandle<Result<()>>,
    runtime: Arc<dyn Runtime>,
}

impl Cluster {
    /// Starts both and waits for the node to be Ready. `node_cidr_mask` sizes the node's
    /// podCIDR (the node IPAM's `/24` holds 253 pods).
    async fn start(node: &TestNode, max_pods: u32, node_cidr_mask: u8) -> Result<Cluster> {
        add_node_device().await?;
        let mut config = keel_control::Config::new(node.path("control"));
        config.listen = "127.0.0.1:0".parse()?;
        if let Some(controllers) = config.controllers.as_mut() {
            controllers.node_cidr_mask_size = node_cidr_mask;
        }
        let control = keel_control::start(config).await?;
        match Cluster::start_agent(node, control, max_pods).await {
            Ok(cluster) => Ok(cluster),
            Err((control, e)) => {
                let _ = control.stop().await;
                Err(e)
            }
        }
    }

    async fn start_agent(
        node: &TestNode,
        control: keel_control::Running,
        max_pods: u32,
    ) -> Result<Cluster, (keel_control::Running, anyhow::Error)> {
        let setup = async {
            let client_ca = node.path("control-ca.crt");
            std::fs::write(&client_ca, &control.ca_pem)?;
            let client = agent::client::from_kubeconfig(&control.kubeconfig).await?;
            let config = node.agent_config(&control.kubeconfig, max_pods);
            let slot: RuntimeSlot = Arc::default();
            let factory = factory(node, &config, client_ca, slot.clone());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let mut agent = tokio::spawn(agent::run_until(config, factory, async move {
                let _ = stopped.await;
            }));
            // Ready, with the streaming certificate published (node services started).
            let nodes: Api<Node> = Api::all(client.clone());
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if agent.is_finished() {
                    let what = "the agent stopped before its node was Ready";
                    return match (&mut agent).await.context("agent task")? {
                        Ok(()) => Err(anyhow::anyhow!(what)),
                        Err(e) => Err(e.context(what)),
                    };
                }
                let ready = nodes.get_opt(NODE).await?.is_some_and(|n| {
                    let ready = n
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| {
                            c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                    let pinned = n.metadata.annotations.as_ref().is_some_and(|a| {
                        a.contains_key(keel_agent::streaming::SERVING_CERT_ANNOTATION)
                    });
                    ready && pinned
                });
                if ready {
                    break;
                }
                if Instant::now() > deadline {
                    agent.abort();
                    bail!("the node did not turn Ready within 60 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let runtime = slot.lock().expect("runtime slot").clone();
            let runtime = runtime.context("the agent has no runtime")?;
            Ok((client, stop, agent, runtime))
        }
        .await;
        match setup {
            Ok((client, stop, agent, runtime)) => Ok(Cluster {
                control,
                client,
                stop_agent: Some(stop),
                agent,
                runtime,
            }),
            Err(e) => Err((control, e)),
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Stops the agent (the pods keep running: the node's cleanup kills them) and keel-control.
    async fn stop(mut self) {
        if let Some(stop) = self.stop_agent.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(Duration::from_secs(10), &mut self.agent).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("warning: the agent ended with: {e:#}"),
            Ok(Err(e)) => eprintln!("warning: the agent task: {e}"),
            Err(_) => {
                eprintln!("warning: the agent did not stop within 10 s");
                self.agent.abort();
            }
        }
        if let Err(e) = self.control.stop().await {
            eprintln!("warning: stopping keel-control: {e:#}");
        }
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
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

/// The runtime's id of a running container, from the pod's status (`keel://<id>`).
fn running_container_id(pod: &Pod, name: &str) -> Option<ContainerId> {
    let status = container_status(pod, name)?;
    status.state.as_ref()?.running.as_ref()?;
    let id = status.container_id.as_deref()?.strip_prefix("keel://")?;
    Some(ContainerId(id.to_string()))
}

async fn create<K>(api: &Api<K>, manifest: serde_json::Value) -> Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(manifest)?;
    Ok(api.create(&PostParams::default(), &object).await?)
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

async fn wait_no_pods(pods: &Api<Pod>, selector: &str, timeout: Duration) -> Result<()> {
    eventually(
        &format!("the pods {selector} to be gone"),
        timeout,
        || async {
            let left = pods.list(&ListParams::default().labels(selector)).await?;
            Ok(left.items.is_empty().then_some(()))
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------
// The datapath's pinned maps and links, read the way the kernel holds them.

/// What the datapath's maps hold.
#[derive(Debug, Default)]
struct Maps {
    /// Each frontend's head (slot 0) and the endpoints of its slots, in slot order.
    frontends: BTreeMap<Frontend, (ServiceValue, Vec<Endpoint>)>,
    backends: BTreeMap<u32, Endpoint>,
    rev_nat: BTreeMap<u32, RevNat>,
}

impl Maps {
    fn frontend(&self, ip: Ipv4Addr, port: u16) -> Option<&(ServiceValue, Vec<Endpoint>)> {
        self.frontends.get(&Frontend {
            scope: Scope::Addr,
            addr: ip,
            port,
            proto: Proto::Tcp,
        })
    }

    fn backend_endpoints(&self) -> BTreeSet<Endpoint> {
        self.backends.values().copied().collect()
    }
}

fn pinned_map(pin_dir: &Path, name: &str) -> Result<Map> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("{}", path.display()))
}

fn read_maps(pin_dir: &Path) -> Result<Maps> {
    let services: BpfHashMap<MapData, ServiceKey, ServiceValue> =
        pinned_map(pin_dir, map_names::SERVICES)?.try_into()?;
    let backends: BpfHashMap<MapData, u32, Backend> =
        pinned_map(pin_dir, map_names::BACKENDS)?.try_into()?;
    let rev_nat: BpfHashMap<MapData, u32, RevNat> =
        pinned_map(pin_dir, map_names::REV_NAT)?.try_into()?;
    let mut maps = Maps::default();
    for entry in backends.iter() {
        let (id, backend) = entry?;
        maps.backends
            .insert(id, endpoint_of(&backend).context("a backend's protocol")?);
    }
    for entry in rev_nat.iter() {
        let (id, value) = entry?;
        maps.rev_nat.insert(id, value);
    }
    let mut heads = BTreeMap::new();
    let mut slots: BTreeMap<Frontend, BTreeMap<u16, u32>> = BTreeMap::new();
    for entry in services.iter() {
        let (key, value) = entry?;
        let frontend = frontend_of(&key).context("a frontend's scope or protocol")?;
        if key.slot == 0 {
            heads.insert(frontend, value);
        } else {
            slots
                .entry(frontend)
                .or_default()
                .insert(key.slot, value.backend_id);
        }
    }
    for (frontend, head) in heads {
        let ids = slots.remove(&frontend).unwrap_or_default();
        let endpoints = (1..=head.count)
            .map(|slot| {
                let id = ids
                    .get(&slot)
                    .with_context(|| format!("{frontend}: slot {slot}"))?;
                maps.backends
                    .get(id)
                    .copied()
                    .with_context(|| format!("{frontend}: backend {id}"))
            })
            .collect::<Result<Vec<_>>>()?;
        maps.frontends.insert(frontend, (head, endpoints));
    }
    Ok(maps)
}

/// A frontend's counters, summed over CPUs.
fn service_counters(pin_dir: &Path, rev_nat: u32) -> Result<ServiceCounters> {
    let counters: PerCpuHashMap<MapData, u32, ServiceCounters> =
        pinned_map(pin_dir, map_names::SERVICE_COUNTERS)?.try_into()?;
    let mut sum = ServiceCounters::default();
    let per_cpu = match counters.get(&rev_nat, 0) {
        Ok(v) => v,
        // No traffic yet.
        Err(aya::maps::MapError::KeyNotFound) => return Ok(sum),
        Err(e) => return Err(e.into()),
    };
    for c in per_cpu.iter() {
        sum.socket_lb += c.socket_lb;
        sum.packet_lb_flows += c.packet_lb_flows;
        sum.packets += c.packets;
        sum.rejected += c.rejected;
    }
    Ok(sum)
}

/// The pinned links (`cg-<cgroup inode>-<program>`, `tc-<netns inode>-<ifindex>-ingress`).
fn pinned_links(pin_dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(pin_dir.join("links"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The tc pin of an interface of this namespace.
fn tc_pin(ifname: &str) -> Result<String> {
    let index = if_index(ifname).with_context(|| format!("no interface {ifname}"))?;
    Ok(format!("tc-{}-{index}-ingress", netns_inode()?))
}

/// The links a node without pods keeps: the socket programs on the pods' cgroup and the
/// NodePort program on the node device.
fn node_links(node: &TestNode) -> Result<BTreeSet<String>> {
    let cgroup = Cgroups::detect(&node.cgroup_parent)?
        .unified_parent()
        .context("no cgroup v2 hierarchy")?;
    let inode = std::fs::metadata(&cgroup)?.ino();
    let mut links: BTreeSet<String> = [
        keel_common::program_names::CONNECT4,
        keel_common::program_names::SENDMSG4,
        keel_common::program_names::RECVMSG4,
        keel_common::program_names::GETPEERNAME4,
    ]
    .iter()
    .map(|p| format!("cg-{inode}-{p}"))
    .collect();
    links.insert(tc_pin(NODE_DEVICE)?);
    Ok(links)
}

// ---------------------------------------------------------------------------------------
// 1. The datapath, programmed by the agent from the API.

/// The static keel-echo binary `cargo xtask images` builds, built the same way if missing.
fn echo_binary() -> Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the workspace")?
        .to_path_buf();
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let target_dir = workspace.join("target/images");
    let binary = target_dir.join(&triple).join("release/keel-echo");
    if binary.exists() {
        return Ok(binary);
    }
    eprintln!(
        "building keel-echo (static, release) into {}",
        target_dir.display()
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(&workspace)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=debuginfo",
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["build", "--release", "-p", "keel-echo", "--target", &triple])
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .context("running cargo build -p keel-echo")?;
    ensure!(status.success(), "building keel-echo failed ({status})");
    ensure!(binary.exists(), "{} was not built", binary.display());
    Ok(binary)
}

#[test]
fn datapath_driven_by_the_agent() {
    if !runnable("datapath_driven_by_the_agent") {
        return;
    }
    init_tracing();
    let echo = echo_binary().expect("the static keel-echo binary");
    let node = TestNode::new("datapath").expect("test node");
    build_busybox_image(&node.path("images")).expect("the busybox image");
    build_echo_image(&node.path("images"), &echo).expect("the echo image");
    let started = Instant::now();
    in_private_netns(|| async {
        let cluster = Cluster::start(&node, agent::DEFAULT_MAX_PODS, 24).await?;
        let result = datapath_scenario(&node, &cluster).await;
        cluster.stop().await;
        result
    })
    .expect("scenario");
    eprintln!("datapath_driven_by_the_agent: {:?}", started.elapsed());
}

/// `wget` in the client container (through the runtime's exec, so in the pod's cgroups:
/// socket-level load balancing applies). Debian's static busybox `wget` crashes with `-T`,
/// so the exec's own timeout bounds it.
async fn wget(
    runtime: &Arc<dyn Runtime>,
    client: &ContainerId,
    url: &str,
) -> Result<(i32, String, String)> {
    let command: Vec<String> = ["wget", "-q", "-O-", url]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = runtime
        .exec_sync(client, &command, Duration::from_secs(10))
        .await
        .with_context(|| format!("exec wget {url}"))?;
    Ok((
        out.exit_code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `GET /` to `addr` from a thread inside the network namespace `netns` (and in this
/// process's cgroup, outside the pods' one: only the per-packet program can balance it).
fn http_get_from_netns(netns: &Path, addr: SocketAddr) -> Result<String> {
    let netns = std::fs::File::open(netns).with_context(|| format!("{}", netns.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<String> {
            // SAFETY: setns on a valid namespace fd; it only moves this short-lived thread.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .with_context(|| format!("connecting to {addr}"))?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            conn.write_all(b"GET / HTTP/1.0\r\nHost: e2e\r\n\r\n")?;
            let mut reply = String::new();
            conn.read_to_string(&mut reply)?;
            let (head, body) = reply.split_once("\r\n\r\n").context("no HTTP head")?;
            ensure!(
                head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
                "{head}"
            );
            Ok(body.trim().to_string())
        })
        .join()
        .unwrap_or_else(|_| bail!("the client thread panicked"))
    })
}

async fn datapath_scenario(node: &TestNode, cluster: &Cluster) -> Result<()> {
    let client = cluster.client.clone();
    let pods = cluster.pods();
    let runtime = &cluster.runtime;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");

    // The node's own links are in place before any pod.
    let base_links = node_links(node)?;
    assert_eq!(pinned_links(&node.pin_dir), base_links);

    create(
        &deployments,
        json!({
            "metadata": {"name": "echo"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "echo"}},
                "template": {
                    "metadata": {"labels": {"app": "echo"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 5,
                        "containers": [{
                            "name": "echo",
                            "image": ECHO,
                            "env": [
                                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                                {"name": "PORT", "value": "8080"}
                            ],
                            "ports": [{"containerPort": 8080}],
                            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
                        }]
                    }
                }
            }
        }),
    )
    .await?;
    let service = create(
        &services,
        json!({
            "metadata": {"name": "echo"},
            "spec": {
                "selector": {"app": "echo"},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}]
            }
        }),
    )
    .await?;
    let cluster_ip: Ipv4Addr = service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .context("clusterIP")?
        .parse()?;
    create(
        &pods,
        json!({
            "metadata": {"name": "client"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "client", "image": BUSYBOX, "command": ["sleep", "100000"]}]
            }
        }),
    )
    .await?;

    // --- Three ready echo pods, their endpoints, and the frontend with three backends.
    let echo_pods = eventually("3 ready echo pods", Duration::from_secs(90), || async {
        let list = pods.list(&ListParams::default().labels("app=echo")).await?;
        let ready: Vec<Pod> = list.items.into_iter().filter(is_ready).collect();
        Ok((ready.len() == 3).then_some(ready))
    })
    .await?;
    let names: BTreeSet<String> = echo_pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let expected: BTreeSet<Endpoint> = echo_pods
        .iter()
        .map(|p| -> Result<Endpoint> {
            let ip = p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .context("podIP")?;
            Ok(Endpoint {
                addr: ip.parse()?,
                port: 8080,
                proto: Proto::Tcp,
            })
        })
        .collect::<Result<_>>()?;
    eventually("3 ready endpoints", Duration::from_secs(30), || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=echo"))
            .await?;
        let ready = list
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .count();
        Ok((ready == 3).then_some(()))
    })
    .await?;
    let (head, _) = eventually(
        "the ClusterIP frontend with the 3 pods as backends",
        Duration::from_secs(30),
        || async {
            let maps = read_maps(&node.pin_dir)?;
            Ok(maps.frontend(cluster_ip, 80).and_then(|(head, slots)| {
                let got: BTreeSet<Endpoint> = slots.iter().copied().collect();
                (got == expected && slots.len() == 3).then_some((*head, slots.clone()))
            }))
        },
    )
    .await?;
    let maps = read_maps(&node.pin_dir)?;
    assert!(
        maps.rev_nat.contains_key(&head.rev_nat),
        "reverse NAT entry"
    );
    assert!(expected.is_subset(&maps.backend_endpoints()));

    // --- Every pod veth carries the per-packet program.
    let client_pod = wait_pod(&pods, "client", "Running", Duration::from_secs(60), |p| {
        running_container_id(p, "client").is_some()
    })
    .await?;
    let client_id = running_container_id(&client_pod, "client").context("client container")?;
    let sandboxes = runtime.list_sandboxes().await?;
    assert_eq!(sandboxes.len(), 4, "3 echo pods and the client");
    let mut pod_links = BTreeSet::new();
    for sandbox in &sandboxes {
        pod_links.insert(tc_pin(sandbox.host_veth.as_deref().context("host veth")?)?);
    }
    eventually(
        "a tc link on every pod veth",
        Duration::from_secs(10),
        || async {
            let links = pinned_links(&node.pin_dir);
            Ok((links == &base_links | &pod_links).then_some(()))
        },
    )
    .await?;

    // --- Socket level: wget from the client container to the ClusterIP.
    let url = format!("http://{cluster_ip}:80/");
    let before = service_counters(&node.pin_dir, head.rev_nat)?;
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..30 {
        let (code, stdout, stderr) = wget(runtime, &client_id, &url).await?;
        ensure!(code == 0, "wget {url}: exit {code}: {stderr}");
        let name = stdout.trim().to_string();
        ensure!(names.contains(&name), "{name:?} is not one of {names:?}");
        *answered.entry(name).or_default() += 1;
    }
    eprintln!("ClusterIP from the client pod (socket level): {answered:?}");
    assert!(
        answered.len() > 1,
        "one pod answered everything: {answered:?}"
    );
    let after = service_counters(&node.pin_dir, head.rev_nat)?;
    assert!(
        after.socket_lb - before.socket_lb >= 30,
        "the socket programs balanced the connections: {before:?} → {after:?}"
    );

    // --- Per packet: the client pod's namespace, outside the pods' cgroup.
    let client_sandbox = sandboxes
        .iter()
        .find(|s| s.config.name == "client")
        .context("client sandbox")?;
    let netns = client_sandbox.netns.clone();
    let vip = SocketAddr::from((cluster_ip, 80));
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..10 {
        let netns = netns.clone();
        let name = tokio::task::spawn_blocking(move || http_get_from_netns(&netns, vip)).await??;
        ensure!(names.contains(&name), "{name:?} is not one of {names:?}");
        *answered.entry(name).or_default() += 1;
    }
    eprintln!(
        "ClusterIP from the client's namespace outside its cgroup (per packet): {answered:?}"
    );
    let per_packet = service_counters(&node.pin_dir, head.rev_nat)?;
    assert!(
        per_packet.packet_lb_flows - after.packet_lb_flows >= 10,
        "the pod veth's program balanced the flows: {after:?} → {per_packet:?}"
    );
    assert_eq!(per_packet.socket_lb, after.socket_lb, "outside the cgroup");

    // --- Scaled to zero: the backends leave the maps and the ClusterIP rejects.
    deployments
        .patch(
            "echo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await?;
    wait_no_pods(&pods, "app=echo", Duration::from_secs(60)).await?;
    eventually(
        "the backends to leave the maps",
        Duration::from_secs(30),
        || async {
            let maps = read_maps(&node.pin_dir)?;
            let empty = maps
                .frontend(cluster_ip, 80)
                .is_some_and(|(h, s)| h.count == 0 && s.is_empty());
            let gone = maps.backend_endpoints().is_disjoint(&expected);
            Ok((empty && gone).then_some(()))
        },
    )
    .await?;
    let (code, _, stderr) = wget(runtime, &client_id, &url).await?;
    assert_ne!(code, 0, "no backend: the connection fails");
    assert!(
        stderr.contains("refused"),
        "rejected, not dropped: {stderr}"
    );
    let client_link = tc_pin(client_sandbox.host_veth.as_deref().context("veth")?)?;
    eventually(
        "the echo pods' tc links to go",
        Duration::from_secs(10),
        || async {
            let mut want = base_links.clone();
            want.insert(client_link.clone());
            Ok((pinned_links(&node.pin_dir) == want).then_some(()))
        },
    )
    .await
    .with_context(|| format!("links: {:?}", pinned_links(&node.pin_dir)))?;

    // --- The Service deleted: its frontend and reverse NAT entry go.
    services.delete("echo", &DeleteParams::default()).await?;
    eventually(
        "the ClusterIP to leave the maps",
        Duration::from_secs(30),
        || async {
            let maps = read_maps(&node.pin_dir)?;
            let gone = maps.frontends.keys().all(|f| f.addr != cluster_ip)
                && !maps.rev_nat.contains_key(&head.rev_nat);
            Ok(gone.then_some(()))
        },
    )
    .await?;

    // --- The client deleted: only the node's own links are left.
    pods.delete("client", &DeleteParams::default()).await?;
    eventually(
        "the client to be deleted",
        Duration::from_secs(30),
        || async { Ok(pods.get_opt("client").await?.is_none().then_some(())) },
    )
    .await?;
    eventually("only the node's links", Duration::from_secs(10), || async {
        Ok((pinned_links(&node.pin_dir) == base_links).then_some(()))
    })
    .await
    .with_context(|| format!("links: {:?}", pinned_links(&node.pin_dir)))?;
    assert!(runtime.list_sandboxes().await?.is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 2. A thousand pods, and nothing left once they are gone.

const THOUSAND: usize = 1000;

#[test]
fn thousand_pods_leave_nothing_behind() {
    if !runnable("thousand_pods_leave_nothing_behind") {
        return;
    }
    init_tracing();
    let wave: usize = std::env::var("KEEL_E2E_WAVE")
        .ok()
        .and_then(|w| w.parse().ok())
        .filter(|w| *w > 0)
        .unwrap_or(THOUSAND);
    let node = TestNode::new("thousand").expect("test node");
    build_busybox_image(&node.path("images")).expect("the busybox image");
    let started = Instant::now();
    in_private_netns(|| async {
        // A /21 podCIDR (2 045 pod addresses) and room for every pod of a wave.
        let cluster = Cluster::start(&node, THOUSAND as u32 + 10, 21).await?;
        let result = thousand_scenario(&node, &cluster, wave).await;
        cluster.stop().await;
        result
    })
    .expect("scenario");
    eprintln!(
        "thousand_pods_leave_nothing_behind: {:?} in total",
        started.elapsed()
    );
}

fn sleeper(name: &str, wave: usize) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "labels": {"e2e-wave": wave.to_string()}},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "sleep",
                "image": BUSYBOX,
                "command": ["sleep", "100000"],
                "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}}
            }]
        }
    })
}

/// Processes belonging to this node: shims (their command line names a container directory
/// of the node) and anything in the node's cgroups.
fn node_processes(node: &TestNode) -> Vec<String> {
    let dir = node.dir.path().to_string_lossy().into_owned();
    let cgroup = format!("/{}", node.cgroup_parent);
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cgroups = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        let in_cgroup = cgroups.lines().any(|l| {
            l.split(':')
                .nth(2)
                .is_some_and(|p| p == cgroup || p.starts_with(&format!("{cgroup}/")))
        });
        if cmdline.contains(&dir) || in_cgroup {
            found.push(format!("{pid} {cmdline}"));
        }
    }
    found
}

/// Entries of a directory the runtime keeps (it must exist, so an empty list means
/// something).
fn entries(dir: &Path) -> Result<Vec<String>> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

/// What the node holds for its pods, found the way an operator would look.
#[derive(Debug, Default)]
struct Footprint {
    processes: Vec<String>,
    /// Mounted namespaces under `<run_dir>/netns`.
    netns: Vec<String>,
    /// Host veths (`keel` + 8 hex digits) in the node's namespace.
    veths: Vec<String>,
    /// Address claims (and interrupted claims) under `<root_dir>/ipam`.
    addresses: Vec<String>,
    /// Child cgroups of the node's cgroup parent, in every hierarchy (v1 and v2).
    cgroups: Vec<PathBuf>,
    /// Mounts under the node's directories beyond those of an empty node.
    mounts: Vec<PathBuf>,
    /// Sandbox and container records, pod directories and pod log directories.
    files: Vec<String>,
    /// Pinned links beyond the node's own (the pod veths' tc links).
    links: Vec<String>,
}

impl Footprint {
    fn take(
        node: &TestNode,
        cgroups: &Cgroups,
        base_mounts: &[PathBuf],
        base_links: &BTreeSet<String>,
    ) -> Result<Footprint> {
        let mut cgroup_children = Vec::new();
        for h in cgroups.hierarchies() {
            let parent = h.mount.join(&node.cgroup_parent);
            for e in std::fs::read_dir(&parent)
                .with_context(|| format!("{}", parent.display()))?
                .flatten()
            {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    cgroup_children.push(e.path());
                }
            }
        }
        let mut files = Vec::new();
        for dir in ["root/containers", "root/sandboxes", "logs"] {
            files.extend(
                entries(&node.path(dir))?
                    .into_iter()
                    .map(|e| format!("{dir}/{e}")),
            );
        }
        // Pod directories (volumes) exist only for pods that had some.
        let pods_dir = node.path("root/pods");
        if pods_dir.exists() {
            files.extend(
                entries(&pods_dir)?
                    .into_iter()
                    .map(|e| format!("root/pods/{e}")),
            );
        }
        Ok(Footprint {
            processes: node_processes(node),
            netns: entries(&node.path("run/netns"))?,
            veths: interfaces()
                .into_iter()
                .filter(|i| i.len() == 12 && i.starts_with("keel"))
                .collect(),
            addresses: entries(&node.path("root/ipam"))?
                .into_iter()
                .filter(|e| e.parse::<Ipv4Addr>().is_ok() || e.starts_with(".tmp-"))
                .collect(),
            cgroups: cgroup_children,
            mounts: mounted_under(node.dir.path())
                .into_iter()
                .filter(|m| !base_mounts.contains(m))
                .collect(),
            files,
            links: pinned_links(&node.pin_dir)
                .difference(base_links)
                .cloned()
                .collect(),
        })
    }

    fn is_empty(&self) -> bool {
        self.processes.is_empty()
            && self.netns.is_empty()
            && self.veths.is_empty()
            && self.addresses.is_empty()
            && self.cgroups.is_empty()
            && self.mounts.is_empty()
            && self.files.is_empty()
            && self.links.is_empty()
    }

    /// Counts, for messages.
    fn summary(&self) -> String {
        format!(
            "{} processes, {} netns, {} veths, {} addresses, {} cgroups, {} mounts, {} files, \
             {} tc links",
            self.processes.len(),
            self.netns.len(),
            self.veths.len(),
            self.addresses.len(),
            self.cgroups.len(),
            self.mounts.len(),
            self.files.len(),
            self.links.len()
        )
    }
}

async fn thousand_scenario(node: &TestNode, cluster: &Cluster, wave: usize) -> Result<()> {
    let pods = cluster.pods();
    let runtime = &cluster.runtime;
    let base_links = node_links(node)?;
    let base_mounts = mounted_under(node.dir.path());
    let cgroups = Cgroups::detect(&node.cgroup_parent)?;
    let footprint = || Footprint::take(node, &cgroups, &base_mounts, &base_links);
    let before = footprint()?;
    ensure!(before.is_empty(), "a new node holds {before:#?}");
    let waves = THOUSAND.div_ceil(wave);
    let mut created = 0;
    for w in 0..waves {
        let count = wave.min(THOUSAND - created);
        let selector = format!("e2e-wave={w}");
        let t0 = Instant::now();
        let names: Vec<String> = (created..created + count)
            .map(|i| format!("sleep-{i:04}"))
            .collect();
        let results: Vec<Result<Pod>> = futures::stream::iter(names.iter().map(|name| {
            let pods = pods.clone();
            let manifest = sleeper(name, w);
            async move { create(&pods, manifest).await }
        }))
        .buffer_unordered(16)
        .collect()
        .await;
        for r in results {
            r?;
        }
        created += count;
        let t_created = t0.elapsed();
        eventually(
            &format!("the {count} pods of wave {w} to run"),
            Duration::from_secs(240),
            || async {
                let list = pods.list(&ListParams::default().labels(&selector)).await?;
                let running = list.items.iter().filter(|p| phase(p) == "Running").count();
                Ok((running == count).then_some(()))
            },
        )
        .await?;
        let t_running = t0.elapsed();
        // What the pods hold while they run (so that the checks below can see it).
        let sandboxes = runtime.list_sandboxes().await?.len();
        ensure!(sandboxes == count, "{sandboxes} sandboxes for {count} pods");
        let running = eventually(
            &format!("a tc link on each of the {count} pod veths"),
            Duration::from_secs(60),
            || async {
                let f = footprint()?;
                Ok((f.links.len() == count).then_some(f))
            },
        )
        .await?;
        ensure!(
            running.netns.len() == count
                && running.veths.len() == count
                && running.addresses.len() == count
                // A shim and the container's process per pod.
                && running.processes.len() >= 2 * count
                // The pod's cgroup in each hierarchy.
                && running.cgroups.len() == count * cgroups.hierarchies().len(),
            "{count} running pods hold {}",
            running.summary()
        );
        pods.delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&selector),
        )
        .await?;
        wait_no_pods(&pods, &selector, Duration::from_secs(240)).await?;
        eprintln!(
            "wave {w}: {count} pods created in {t_created:.1?}, all running at {t_running:.1?}, \
             all deleted at {:.1?}; while running: {}",
            t0.elapsed(),
            running.summary()
        );
    }
    ensure!(created == THOUSAND);

    // --- Nothing is left (the last shims exit a moment after their container).
    ensure!(runtime.list_sandboxes().await?.is_empty(), "sandboxes left");
    ensure!(
        runtime.list_containers(None).await?.is_empty(),
        "containers left"
    );
    let emptied = eventually(
        "the node to hold nothing",
        Duration::from_secs(10),
        || async { Ok(footprint()?.is_empty().then_some(())) },
    )
    .await;
    if let Err(e) = emptied {
        bail!("{e:#}; left behind: {:#?}", footprint()?);
    }

    // The datapath holds no backend in the pod network.
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let pod_cidr: ipnet::Ipv4Net = nodes
        .get(NODE)
        .await?
        .spec
        .and_then(|s| s.pod_cidr)
        .context("podCIDR")?
        .parse()?;
    let maps = read_maps(&node.pin_dir)?;
    let pod_backends: Vec<&Endpoint> = maps
        .backends
        .values()
        .filter(|e| pod_cidr.contains(&e.addr))
        .collect();
    ensure!(
        pod_backends.is_empty(),
        "pod backends left: {pod_backends:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3. kubectl logs and exec, through keel-control, against real containers.

fn kubectl_bin() -> &'static str {
    assert!(
        Path::new("/usr/bin/kubectl").exists(),
        "kubectl is not installed at /usr/bin/kubectl (it is on the machine image; install kubectl to run this test)"
    );
    "/usr/bin/kubectl"
}

struct Kubectl {
    kubeconfig: PathBuf,
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    /// kubectl, started from this namespace's threads: it reaches keel-control on 127.0.0.1.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(kubectl_bin());
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=30s")
            .args(args)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Outcome> {
        let mut c = self.command(args);
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().context("starting kubectl")?;
        if let Some(text) = stdin {
            let mut input = child.stdin.take().context("kubectl's stdin")?;
            tokio::io::AsyncWriteExt::write_all(&mut input, text.as_bytes()).await?;
        }
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .with_context(|| format!("kubectl {args:?} did not finish within 60 s"))??;
        Ok(Outcome {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    async fn ok(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.run(args, stdin).await?;
        ensure!(
            out.code == Some(0),
            "kubectl {args:?} failed ({:?}): {}\nstdout: {}",
            out.code,
            out.stderr,
            out.stdout
        );
        Ok(out.stdout)
    }
}

fn sorted_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines
}

#[test]
fn kubectl_logs_and_exec_against_the_real_agent() {
    if !runnable("kubectl_logs_and_exec_against_the_real_agent") {
        return;
    }
    init_tracing();
    kubectl_bin();
    let node = TestNode::new("kubectl").expect("test node");
    build_busybox_image(&node.path("images")).expect("the busybox image");
    let started = Instant::now();
    in_private_netns(|| async {
        let cluster = Cluster::start(&node, agent::DEFAULT_MAX_PODS, 24).await?;
        let result = kubectl_scenario(&cluster).await;
        cluster.stop().await;
        result
    })
    .expect("scenario");
    eprintln!(
        "kubectl_logs_and_exec_against_the_real_agent: {:?}",
        started.elapsed()
    );
}

async fn kubectl_scenario(cluster: &Cluster) -> Result<()> {
    let pods = cluster.pods();
    let kubectl = Kubectl {
        kubeconfig: cluster.control.kubeconfig.clone(),
    };
    // `chatty` fails its first run, then ticks until told to stop (a file in its emptyDir)
    // and completes. `shell` just runs.
    create(
        &pods,
        json!({
            "metadata": {"name": "chatty"},
            "spec": {
                "restartPolicy": "OnFailure",
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "main",
                    "image": BUSYBOX,
                    "command": ["sh", "-c", concat!(
                        "if [ ! -e /data/ran ]; then touch /data/ran; echo first-out; echo first-err >&2; exit 1; fi; ",
                        "echo second-out; echo second-err >&2; i=0; ",
                        "while [ ! -e /data/stop ]; do echo tick $i; i=$((i+1)); sleep 0.1; done; echo done"
                    )],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                }],
                "volumes": [{"name": "data", "emptyDir": {}}]
            }
        }),
    )
    .await?;
    create(
        &pods,
        json!({
            "metadata": {"name": "shell"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": BUSYBOX, "command": ["sleep", "100000"]}]
            }
        }),
    )
    .await?;

    // --- exec: stdout, stderr and the exit code apart; stdin; inside the container.
    wait_pod(&pods, "shell", "Running", Duration::from_secs(60), |p| {
        running_container_id(p, "main").is_some()
    })
    .await?;
    let out = kubectl
        .run(
            &[
                "exec",
                "shell",
                "--",
                "sh",
                "-c",
                "echo hi; echo err >&2; exit 3",
            ],
            None,
        )
        .await?;
    assert_eq!(out.code, Some(3), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "hi\n");
    assert!(out.stderr.starts_with("err\n"), "{}", out.stderr);
    assert!(
        out.stderr.contains("command terminated with exit code 3"),
        "{}",
        out.stderr
    );
    assert_eq!(
        kubectl
            .ok(
                &["exec", "-i", "shell", "--", "cat"],
                Some("hello\nworld\n")
            )
            .await?,
        "hello\nworld\n"
    );
    // `exec -it`: kubectl needs a terminal of its own for -t, so it runs under script(1); the
    // command sees a pty with the size kubectl sent on the resize channel.
    let cmdline = format!(
        "stty rows 33 cols 111; {} --kubeconfig {} exec -it shell -- sh -c 'sleep 1; tty; stty -a | head -1; exit 4'",
        kubectl_bin(),
        kubectl.kubeconfig.display()
    );
    let mut script = tokio::process::Command::new("script");
    script
        .args(["-qec", &cmdline, "/dev/null"])
        .env_remove("KUBECONFIG")
        // A pipe kept open (an EOF on script's stdin would end kubectl's stdin at once).
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut child = script.spawn().context("running script(1)")?;
    let stdin = child.stdin.take();
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .context("kubectl exec -it did not finish within 60 s")?
        .context("running script(1)")?;
    drop(stdin);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("/dev/pts/"),
        "a terminal in the container: {text:?}"
    );
    assert!(
        text.contains("rows 33; columns 111"),
        "the terminal size arrived: {text:?}"
    );
    assert_eq!(out.status.code(), Some(4), "exit code through -t: {text:?}");
    assert_eq!(
        kubectl
            .ok(
                &[
                    "exec",
                    "shell",
                    "--",
                    "sh",
                    "-c",
                    "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo"
                ],
                None
            )
            .await?,
        "shell\nsleep 100000 \n",
        "in the container's UTS and PID namespaces"
    );

    // --- logs of a restarted container: the current attempt, the previous one, and a follow
    // that ends by itself when the container exits.
    wait_pod(
        &pods,
        "chatty",
        "running its second attempt",
        Duration::from_secs(60),
        |p| {
            container_status(p, "main").is_some_and(|c| c.restart_count == 1)
                && running_container_id(p, "main").is_some()
        },
    )
    .await?;
    let previous = kubectl.ok(&["logs", "chatty", "--previous"], None).await?;
    assert_eq!(
        sorted_lines(&previous),
        ["first-err", "first-out"],
        "{previous:?}"
    );

    let mut follow = kubectl
        .command(&["logs", "-f", "chatty"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kubectl logs -f")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        follow.stdout.take().context("stdout")?,
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    // Lines keep coming while the container runs.
    while !seen.iter().any(|l: &String| l == "tick 5") {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .context("lines arrive while following")??
            .context("the follow stays open while the container runs")?;
        seen.push(line);
    }
    kubectl
        .ok(&["exec", "chatty", "--", "touch", "/data/stop"], None)
        .await?;
    while let Some(line) = tokio::time::timeout_at(deadline.into(), lines.next_line())
        .await
        .context("kubectl logs -f ends once the container has exited")??
    {
        seen.push(line);
    }
    let status = tokio::time::timeout_at(deadline.into(), follow.wait())
        .await
        .context("kubectl logs -f exits")??;
    assert!(status.success(), "{status}");
    assert_eq!(seen.last().map(String::as_str), Some("done"), "{seen:?}");

    // The whole current attempt: as followed, every line once.
    let current = kubectl.ok(&["logs", "chatty"], None).await?;
    let current: Vec<&str> = current.lines().collect();
    assert_eq!(current, seen, "kubectl logs and the follow agree");
    assert!(current.contains(&"second-out") && current.contains(&"second-err"));
    let ticks: Vec<&str> = current
        .iter()
        .copied()
        .filter(|l| l.starts_with("tick "))
        .collect();
    let expected: Vec<String> = (0..ticks.len()).map(|i| format!("tick {i}")).collect();
    assert_eq!(ticks, expected, "in order, none lost");
    assert_eq!(
        kubectl.ok(&["logs", "chatty", "--tail=2"], None).await?,
        format!("{}\ndone\n", ticks.last().context("ticks")?)
    );

    let chatty = wait_pod(&pods, "chatty", "Succeeded", Duration::from_secs(30), |p| {
        phase(p) == "Succeeded"
    })
    .await?;
    let cs = container_status(&chatty, "main").context("chatty status")?;
    assert_eq!(cs.restart_count, 1);

    for name in ["chatty", "shell"] {
        pods.delete(name, &DeleteParams::default()).await?;
    }
    eventually(
        "the pods to be deleted",
        Duration::from_secs(30),
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
    Ok(())
}
