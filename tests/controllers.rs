//! The controllers and the scheduler against a real keel-control whose pods are brought to
//! Running/Ready by hollow nodes (`keel_tests::hollow`: heartbeats and pod status, no
//! containers), driven with stock kubectl and the HTTPS API:
//! - a Deployment rolls from image A to B under `kubectl rollout status`, never with more
//!   unavailable pods than `maxUnavailable` allows; `rollout history`, `undo`, `undo
//!   --to-revision`, `pause`/`resume` and `restart` behave as on Kubernetes;
//! - a silent node becomes NotReady and unreachable and its pods move to another node;
//! - an endpoint slice follows pod readiness;
//! - unschedulable pods report why, and are placed once a node fits;
//! - a restarted keel-control converges without duplicate pods;
//! - garbage collection in orphan mode; nodes get distinct pod CIDRs.
//!
//! Foreground deletion, replacement of deleted pods and scaling are driven by the official
//! Python client in `tests/python_controllers.rs`; leader failover in `tests/leader_election.rs`.
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use keel_tests::api_client::{Backend, Cluster};
use keel_tests::hollow::{HollowFleet, HollowOptions};
use serde_json::{Value, json};

const KUBECTL: &str = "/usr/bin/kubectl";

struct Kubectl {
    kubeconfig: PathBuf,
}

impl Kubectl {
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        assert!(
            std::path::Path::new(KUBECTL).exists(),
            "kubectl is not installed at {KUBECTL} (it is on the machine image)"
        );
        let mut cmd = tokio::process::Command::new(KUBECTL);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("kubectl starts");
        if let Some(text) = stdin {
            use tokio::io::AsyncWriteExt;
            let mut input = child.stdin.take().expect("stdin");
            input.write_all(text.as_bytes()).await.expect("write stdin");
        }
        tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
            .await
            .expect("kubectl finished within 180 s")
            .expect("kubectl ran")
    }

    async fn ok(&self, args: &[&str]) -> String {
        self.ok_stdin(args, None).await
    }

    async fn ok_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin).await;
        assert!(
            out.status.success(),
            "kubectl {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Polls `check` every 100 ms until it returns Some, or fails after `timeout` with `what`.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_cluster(configure: impl FnOnce(&mut keel_control::Config)) -> Cluster {
    Cluster::start_with(Backend::Embedded, configure)
        .await
        .expect("keel-control starts")
}

async fn fleet(cluster: &Cluster, nodes: &[&str], opts: HollowOptions) -> HollowFleet {
    HollowFleet::start(
        cluster.api(),
        nodes.iter().map(|s| s.to_string()).collect(),
        opts,
    )
    .await
    .expect("hollow nodes register")
}

fn kubectl(cluster: &Cluster) -> Kubectl {
    Kubectl {
        kubeconfig: cluster.running().kubeconfig.clone(),
    }
}

async fn pods(cluster: &Cluster, ns: &str, selector: &str) -> Vec<Value> {
    let reply = cluster
        .get(&format!(
            "/api/v1/namespaces/{ns}/pods?labelSelector={selector}"
        ))
        .await;
    reply.body["items"].as_array().cloned().unwrap_or_default()
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn terminating(pod: &Value) -> bool {
    !pod["metadata"]["deletionTimestamp"].is_null()
}

fn image(pod: &Value) -> String {
    pod["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 4
  selector:
    matchLabels: {app: web}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 1}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: app
        image: keel.local/echo:a
        resources:
          requests: {cpu: 100m, memory: 64Mi}
"#;

/// Watches the Deployment's pods and records the fewest Ready, non-terminating pods seen once
/// the rollout first became fully available.
struct AvailabilityMonitor {
    min_available: Arc<Mutex<Option<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AvailabilityMonitor {
    async fn start(cluster: &Cluster, selector: &str) -> AvailabilityMonitor {
        let api = cluster.api();
        let list = cluster
            .get(&format!(
                "/api/v1/namespaces/default/pods?labelSelector={selector}"
            ))
            .await;
        let rv = list.body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0")
            .to_string();
        let mut state: BTreeMap<String, Value> = list.body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    p.clone(),
                )
            })
            .collect();
        let min_available = Arc::new(Mutex::new(None::<usize>));
        let record = min_available.clone();
        let path = format!(
            "/api/v1/namespaces/default/pods?watch=true&labelSelector={selector}&resourceVersion={rv}"
        );
        let task = tokio::spawn(async move {
            let response = api
                .request(reqwest::Method::GET, &path)
                .send()
                .await
                .expect("watch starts");
            let mut bytes = response.bytes_stream();
            let mut buf = Vec::new();
            let count = |state: &BTreeMap<String, Value>| {
                state
                    .values()
                    .filter(|p| is_ready(p) && !terminating(p))
                    .count()
            };
            *record.lock().unwrap() = Some(count(&state));
            while let Some(Ok(chunk)) = bytes.next().await {
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    let name = event["object"]["metadata"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    match event["type"].as_str() {
                        Some("ADDED" | "MODIFIED") => {
                            state.insert(name, event["object"].clone());
                        }
                        Some("DELETED") => {
                            state.remove(&name);
                        }
                        _ => continue,
                    }
                    let now = count(&state);
                    let mut min = record.lock().unwrap();
                    *min = Some(min.map_or(now, |m| m.min(now)));
                }
            }
        });
        AvailabilityMonitor {
            min_available,
            task,
        }
    }

    fn min(&self) -> usize {
        self.min_available.lock().unwrap().unwrap_or(0)
    }
}

impl Drop for AvailabilityMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn images_of(cluster: &Cluster) -> HashSet<String> {
    pods(cluster, "default", "app=web")
        .await
        .iter()
        .filter(|p| !terminating(p))
        .map(image)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rollouts_and_rollbacks_behave_as_on_kubernetes() {
    let cluster = start_cluster(|_| {}).await;
    let opts = HollowOptions {
        start_delay: Duration::from_millis(200),
        termination_delay: Duration::from_millis(200),
        ..Default::default()
    };
    let nodes = fleet(&cluster, &["node-a", "node-b"], opts).await;
    let k = kubectl(&cluster);
    k.ok_stdin(&["apply", "-f", "-"], Some(DEPLOYMENT)).await;
    let status = k
        .ok(&["rollout", "status", "deployment/web", "--timeout=120s"])
        .await;
    assert!(status.contains("successfully rolled out"), "{status}");
    let ready = pods(&cluster, "default", "app=web").await;
    assert_eq!(ready.iter().filter(|p| is_ready(p)).count(), 4);
    // The scheduler spread the four pods over both nodes.
    let on_a = ready
        .iter()
        .filter(|p| p["spec"]["nodeName"] == "node-a")
        .count();
    assert_eq!(on_a, 2, "pods should spread evenly over two nodes");

    // A -> B while watching availability: never below replicas - maxUnavailable = 3.
    let monitor = AvailabilityMonitor::start(&cluster, "app=web").await;
    k.ok(&["set", "image", "deployment/web", "app=keel.local/echo:b"])
        .await;
    let status = k
        .ok(&["rollout", "status", "deployment/web", "--timeout=120s"])
        .await;
    assert!(status.contains("successfully rolled out"), "{status}");
    assert_eq!(
        images_of(&cluster).await,
        HashSet::from(["keel.local/echo:b".to_string()])
    );
    assert!(
        monitor.min() >= 3,
        "availability fell to {} during the rollout (maxUnavailable 1 of 4)",
        monitor.min()
    );
    drop(monitor);

    let history = k.ok(&["rollout", "history", "deployment/web"]).await;
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    let rs = cluster
        .get("/apis/apps/v1/namespaces/default/replicasets")
        .await;
    let hashes: Vec<String> = rs.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["metadata"]["labels"]["pod-template-hash"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(hashes.len(), 2);
    for item in rs.body["items"].as_array().unwrap() {
        let name = item["metadata"]["name"].as_str().unwrap();
        let hash = item["metadata"]["labels"]["pod-template-hash"]
            .as_str()
            .unwrap();
        assert_eq!(name, format!("web-{hash}"));
    }

    // undo brings A back as revision 3.
    k.ok(&["rollout", "undo", "deployment/web"]).await;
    k.ok(&["rollout", "status", "deployment/web", "--timeout=120s"])
        .await;
    assert_eq!(
        images_of(&cluster).await,
        HashSet::from(["keel.local/echo:a".to_string()])
    );
    let history = k.ok(&["rollout", "history", "deployment/web"]).await;
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["2", "3"], "{history}");

    // undo --to-revision=2 brings B back.
    k.ok(&["rollout", "undo", "deployment/web", "--to-revision=2"])
        .await;
    k.ok(&["rollout", "status", "deployment/web", "--timeout=120s"])
        .await;
    assert_eq!(
        images_of(&cluster).await,
        HashSet::from(["keel.local/echo:b".to_string()])
    );

    // pause: a template change does not roll; resume: it does.
    k.ok(&["rollout", "pause", "deployment/web"]).await;
    k.ok(&["set", "image", "deployment/web", "app=keel.local/echo:c"])
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        images_of(&cluster).await,
        HashSet::from(["keel.local/echo:b".to_string()])
    );
    let paused = cluster
        .get("/apis/apps/v1/namespaces/default/deployments/web")
        .await;
    let progressing = paused.body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .cloned()
        .unwrap();
    assert_eq!(progressing["reason"], "DeploymentPaused", "{progressing}");
    k.ok(&["rollout", "resume", "deployment/web"]).await;
    k.ok(&["rollout", "status", "deployment/web", "--timeout=120s"])
        .await;
    assert_eq!(
        images_of(&cluster).await,
        HashSet::from(["keel.local/echo:c".to_string()])
    );

    // restart: same image, new pods.
    let before: HashSet<String> = pods(&cluster, "default", "app=web")
        .await
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    k.ok(&["rollout", "restart", "deployment/web"]).await;
    k.ok(&["rollout", "status", "deployment/web", "--timeout=120s"])
        .await;
    let after: Vec<Value> = pods(&cluster, "default", "app=web")
        .await
        .into_iter()
        .filter(|p| !terminating(p))
        .collect();
    assert_eq!(after.len(), 4);
    assert!(
        after
            .iter()
            .all(|p| !before.contains(p["metadata"]["name"].as_str().unwrap())),
        "restart replaced every pod"
    );

    // describe shows the controllers' events.
    let described = k.ok(&["describe", "deployment", "web"]).await;
    assert!(described.contains("ScalingReplicaSet"), "{described}");
    let described = k
        .ok(&[
            "describe",
            "pod",
            after[0]["metadata"]["name"].as_str().unwrap(),
        ])
        .await;
    assert!(
        described.contains("Scheduled") && described.contains("Successfully assigned"),
        "{described}"
    );

    nodes.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_marked_unreachable_and_its_pods_move() {
    let cluster = start_cluster(|config| {
        let controllers = config.controllers.as_mut().expect("controllers on");
        controllers.node_monitor_grace_period = Duration::from_secs(3);
        controllers.node_monitor_period = Duration::from_millis(500);
        config.default_toleration_seconds = 2;
    })
    .await;
    let opts = HollowOptions {
        heartbeat: Duration::from_millis(500),
        ..Default::default()
    };
    let nodes = fleet(&cluster, &["node-a", "node-b"], opts).await;
    // Distinct pod CIDRs from the cluster CIDR.
    let cidrs: Vec<String> = eventually(
        Duration::from_secs(30),
        "both nodes get a pod CIDR",
        || async {
            let list = cluster.get("/api/v1/nodes").await;
            let cidrs: Vec<String> = list.body["items"]
                .as_array()?
                .iter()
                .filter_map(|n| n["spec"]["podCIDR"].as_str().map(str::to_string))
                .collect();
            (cidrs.len() == 2).then_some(cidrs)
        },
    )
    .await;
    assert_ne!(cidrs[0], cidrs[1]);
    assert!(
        cidrs
            .iter()
            .all(|c| c.starts_with("10.244.") && c.ends_with("/24")),
        "{cidrs:?}"
    );

    let k = kubectl(&cluster);
    k.ok_stdin(&["apply", "-f", "-"], Some(DEPLOYMENT)).await;
    k.ok(&["rollout", "status", "deployment/web", "--timeout=120s"])
        .await;
    let on_a = pods(&cluster, "default", "app=web")
        .await
        .iter()
        .filter(|p| p["spec"]["nodeName"] == "node-a")
        .count();
    assert!(on_a > 0, "some pods run on node-a");

    nodes.silence("node-a").await.expect("silence node-a");
    let node = eventually(
        Duration::from_secs(30),
        "node-a becomes NotReady (Unknown) and unreachable",
        || async {
            let node = cluster.get("/api/v1/nodes/node-a").await.body;
            let ready = node["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")?
                .clone();
            let tainted = node["spec"]["taints"].as_array().is_some_and(|t| {
                t.iter().any(|t| {
                    t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute"
                })
            });
            (ready["status"] == "Unknown" && tainted).then_some(node)
        },
    )
    .await;
    assert_eq!(
        node["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()["reason"],
        "NodeStatusUnknown"
    );
    // After the 2 s toleration the pods on node-a are evicted and replaced on node-b.
    eventually(
        Duration::from_secs(60),
        "4 ready pods on node-b",
        || async {
            let live: Vec<Value> = pods(&cluster, "default", "app=web")
                .await
                .into_iter()
                .filter(|p| !terminating(p))
                .collect();
            (live.len() == 4
                && live
                    .iter()
                    .all(|p| p["spec"]["nodeName"] == "node-b" && is_ready(p)))
            .then_some(())
        },
    )
    .await;
    let nodes_out = k.ok(&["get", "nodes"]).await;
    assert!(
        nodes_out
            .lines()
            .any(|l| l.starts_with("node-a") && l.contains("NotReady")),
        "{nodes_out}"
    );
    let events = k
        .ok(&["get", "events", "--field-selector", "reason=NodeNotReady"])
        .await;
    assert!(events.contains("NodeNotReady"), "{events}");

    // Back: the taint goes.
    nodes.revive("node-a").await.expect("revive node-a");
    eventually(
        Duration::from_secs(30),
        "node-a loses its unreachable taint",
        || async {
            let node = cluster.get("/api/v1/nodes/node-a").await.body;
            let tainted = node["spec"]["taints"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|t| t["key"] == "node.kubernetes.io/unreachable")
            });
            (!tainted).then_some(())
        },
    )
    .await;
    nodes.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_follow_pod_readiness() {
    let cluster = start_cluster(|_| {}).await;
    let nodes = fleet(&cluster, &["node-a"], HollowOptions::default()).await;
    let k = kubectl(&cluster);
    k.ok_stdin(&["apply", "-f", "-"], Some(DEPLOYMENT)).await;
    k.ok_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n"),
    )
    .await;
    k.ok(&["rollout", "status", "deployment/web", "--timeout=120s"])
        .await;
    let slice_path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io/service-name=web";
    let ready_endpoints = |want: usize| {
        let cluster = &cluster;
        async move {
            let list = cluster.get(slice_path).await.body;
            let items = list["items"].as_array()?.clone();
            let endpoints: Vec<Value> = items
                .iter()
                .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
                .collect();
            let ready = endpoints
                .iter()
                .filter(|e| e["conditions"]["ready"] == true)
                .count();
            (items.len() == 1 && endpoints.len() == 4 && ready == want).then_some(items[0].clone())
        }
    };
    let slice = eventually(
        Duration::from_secs(30),
        "a slice with 4 ready endpoints",
        || ready_endpoints(4),
    )
    .await;
    assert_eq!(slice["ports"][0]["port"], 8080);
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
    assert!(
        slice["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["nodeName"] == "node-a" && e["targetRef"]["kind"] == "Pod")
    );
    let slice_name = slice["metadata"]["name"].as_str().unwrap().to_string();

    let pod = pods(&cluster, "default", "app=web").await[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    nodes
        .set_ready("default", &pod, false)
        .await
        .expect("pod made unready");
    let slice = eventually(
        Duration::from_secs(30),
        "the unready pod's endpoint is not ready",
        || ready_endpoints(3),
    )
    .await;
    assert_eq!(
        slice["metadata"]["name"],
        slice_name.as_str(),
        "the same slice is updated in place"
    );
    let unready = slice["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["targetRef"]["name"] == pod.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (
            unready["conditions"]["ready"].clone(),
            unready["conditions"]["serving"].clone()
        ),
        (json!(false), json!(false))
    );
    nodes
        .set_ready("default", &pod, true)
        .await
        .expect("pod made ready");
    eventually(Duration::from_secs(30), "all 4 ready again", || {
        ready_endpoints(4)
    })
    .await;

    // Scaling to 0 leaves one empty slice; deleting the Service removes it.
    k.ok(&["scale", "deployment/web", "--replicas=0"]).await;
    eventually(Duration::from_secs(30), "an empty slice", || async {
        let list = cluster.get(slice_path).await.body;
        let items = list["items"].as_array()?.clone();
        (items.len() == 1
            && items[0]["endpoints"]
                .as_array()
                .is_none_or(|e| e.is_empty()))
        .then_some(())
    })
    .await;
    k.ok(&["delete", "service", "web"]).await;
    eventually(Duration::from_secs(30), "no slices left", || async {
        let list = cluster.get(slice_path).await.body;
        list["items"].as_array()?.is_empty().then_some(())
    })
    .await;
    nodes.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_pods_say_why_and_are_placed_when_a_node_fits() {
    let cluster = start_cluster(|_| {}).await;
    let nodes = fleet(&cluster, &["node-a", "node-b"], HollowOptions::default()).await;
    let k = kubectl(&cluster);
    let pod = r#"
apiVersion: v1
kind: Pod
metadata: {name: picky, namespace: default}
spec:
  nodeSelector: {disk: ssd}
  containers:
  - name: app
    image: keel.local/echo:a
"#;
    k.ok_stdin(&["apply", "-f", "-"], Some(pod)).await;
    let big = r#"
apiVersion: v1
kind: Pod
metadata: {name: big, namespace: default}
spec:
  containers:
  - name: app
    image: keel.local/echo:a
    resources:
      requests: {cpu: "64"}
"#;
    k.ok_stdin(&["apply", "-f", "-"], Some(big)).await;
    let condition = |name: &'static str| {
        let cluster = &cluster;
        async move {
            let pod = cluster
                .get(&format!("/api/v1/namespaces/default/pods/{name}"))
                .await
                .body;
            let c = pod["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "PodScheduled")?
                .clone();
            (c["status"] == "False").then_some(c)
        }
    };
    let picky = eventually(Duration::from_secs(30), "picky is unschedulable", || {
        condition("picky")
    })
    .await;
    assert_eq!(picky["reason"], "Unschedulable");
    let message = picky["message"].as_str().unwrap();
    assert!(
        message.starts_with("0/2 nodes are available")
            && message.contains("node affinity/selector"),
        "{message}"
    );
    let big = eventually(Duration::from_secs(30), "big is unschedulable", || {
        condition("big")
    })
    .await;
    assert!(
        big["message"]
            .as_str()
            .unwrap()
            .contains("Insufficient cpu"),
        "{big}"
    );
    let described = k.ok(&["describe", "pod", "picky"]).await;
    assert!(described.contains("FailedScheduling"), "{described}");

    // A node that fits appears (a label change): the pod is retried and placed there.
    k.ok(&["label", "node", "node-b", "disk=ssd"]).await;
    eventually(Duration::from_secs(30), "picky runs on node-b", || async {
        let pod = cluster
            .get("/api/v1/namespaces/default/pods/picky")
            .await
            .body;
        (pod["spec"]["nodeName"] == "node-b" && is_ready(&pod)).then_some(())
    })
    .await;
    let pod = cluster
        .get("/api/v1/namespaces/default/pods/big")
        .await
        .body;
    assert!(pod["spec"]["nodeName"].is_null(), "big still does not fit");
    nodes.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_deletion_keeps_pods_and_a_restart_makes_no_duplicates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = || {
        let mut c = keel_control::Config::new(dir.path());
        c.listen = "127.0.0.1:0".parse().unwrap();
        c
    };
    let running = keel_control::start(config())
        .await
        .expect("keel-control starts");
    let cluster_api = |running: &keel_control::Running| {
        let ca = reqwest::Certificate::from_pem(running.ca_pem.as_bytes()).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .unwrap();
        (client, running.url.clone(), running.token.clone())
    };
    let (client, url, token) = cluster_api(&running);
    let get = |path: String| {
        let client = client.clone();
        let token = token.clone();
        async move {
            client
                .get(path)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let rs = json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "keep", "namespace": "default"},
        "spec": {"replicas": 5, "selector": {"matchLabels": {"app": "keep"}},
                 "template": {"metadata": {"labels": {"app": "keep"}}, "spec": {"containers": [{"name": "c", "image": "keel.local/busybox:latest"}]}}}
    });
    let created = client
        .post(format!("{url}/apis/apps/v1/namespaces/default/replicasets"))
        .bearer_auth(&token)
        .json(&rs)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let pods_path = format!("{url}/api/v1/namespaces/default/pods?labelSelector=app=keep");
    eventually(Duration::from_secs(30), "5 pods", || async {
        (get(pods_path.clone()).await["items"].as_array()?.len() == 5).then_some(())
    })
    .await;
    // Restart on the same store: still 5, never more.
    running.stop().await.expect("stops");
    let running = keel_control::start(config())
        .await
        .expect("keel-control restarts");
    let (client, url, token) = cluster_api(&running);
    let get = |path: String| {
        let client = client.clone();
        let token = token.clone();
        async move {
            client
                .get(path)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let pods_path = format!("{url}/api/v1/namespaces/default/pods?labelSelector=app=keep");
    let rs_path = format!("{url}/apis/apps/v1/namespaces/default/replicasets/keep");
    eventually(
        Duration::from_secs(30),
        "the new leader observes the ReplicaSet",
        || async { (get(rs_path.clone()).await["status"]["replicas"] == 5).then_some(()) },
    )
    .await;
    for _ in 0..20 {
        assert_eq!(
            get(pods_path.clone()).await["items"]
                .as_array()
                .unwrap()
                .len(),
            5,
            "no duplicate pods after a restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Orphan: the ReplicaSet goes, its pods stay, without the owner reference.
    let deleted = client
        .delete(rs_path.clone())
        .bearer_auth(&token)
        .json(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Orphan"}))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());
    eventually(
        Duration::from_secs(30),
        "the ReplicaSet is gone",
        || async { (get(rs_path.clone()).await["code"] == 404).then_some(()) },
    )
    .await;
    let left = get(pods_path.clone()).await;
    let left = left["items"].as_array().unwrap();
    assert_eq!(left.len(), 5);
    assert!(
        left.iter().all(|p| p["metadata"]["ownerReferences"]
            .as_array()
            .is_none_or(|r| r.is_empty())),
        "pods were orphaned"
    );
    running.stop().await.expect("stops");
}
