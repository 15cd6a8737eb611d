//! The hollow node fleet against an in-process keel-control (API only, no controllers): nodes
//! register and heartbeat, a pod bound to a hollow node runs and becomes ready, its graceful
//! deletion completes, and a silenced node stops renewing its Lease until revived.
use std::future::Future;
use std::time::Duration;

use keel_tests::api_client::{Backend, Cluster};
use keel_tests::hollow::{HollowFleet, HollowOptions};
use serde_json::{Value, json};

/// Longest wait for anything the fleet does (it acts within a heartbeat; CI may be slow).
const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `probe` until it returns `Some`, panicking with `what` after [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn condition<'a>(obj: &'a Value, type_: &str) -> &'a Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

async fn renew_time(cluster: &Cluster, node: &str) -> String {
    let lease = cluster
        .get(&format!(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"
        ))
        .await;
    assert_eq!(lease.status, 200, "{}", lease.body);
    lease.body["spec"]["renewTime"]
        .as_str()
        .expect("renewTime")
        .to_string()
}

async fn pod(cluster: &Cluster, name: &str) -> Value {
    cluster
        .get(&format!("/api/v1/namespaces/default/pods/{name}"))
        .await
        .body
}

fn bound_pod(name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "keel.local/echo:v1"}]
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hollow_nodes_register_heartbeat_run_pods_and_die() {
    let cluster = Cluster::start_with(Backend::Embedded, |config| config.controllers = None)
        .await
        .expect("keel-control starts");
    let opts = HollowOptions {
        heartbeat: Duration::from_millis(300),
        status_period: Duration::from_millis(1500),
        ..HollowOptions::default()
    };
    let nodes = vec!["hollow-a".to_string(), "hollow-b".to_string()];
    let fleet = HollowFleet::start(cluster.api(), nodes.clone(), opts)
        .await
        .expect("the fleet starts");

    // Registered Nodes and Leases.
    let list = cluster.get("/api/v1/nodes").await;
    let names: Vec<&str> = list.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["hollow-a", "hollow-b"]);
    let node = cluster.get("/api/v1/nodes/hollow-a").await.body;
    assert_eq!(condition(&node, "Ready")["status"], "True", "{node}");
    assert_eq!(condition(&node, "Ready")["reason"], "KubeletReady");
    assert_eq!(condition(&node, "MemoryPressure")["status"], "False");
    assert_eq!(node["status"]["allocatable"]["cpu"], "4");
    assert_eq!(
        node["status"]["addresses"][0],
        json!({"type": "InternalIP", "address": "10.200.0.1"})
    );
    assert_eq!(
        node["metadata"]["labels"]["kubernetes.io/hostname"],
        "hollow-a"
    );

    // Leases renew; node conditions get new heartbeat times (seconds precision).
    for name in &nodes {
        let first = renew_time(&cluster, name).await;
        assert_eq!(first.len(), "2025-01-01T00:00:00.000000Z".len(), "{first}");
        eventually("a lease renewal", || async {
            (renew_time(&cluster, name).await != first).then_some(())
        })
        .await;
    }
    let beat = condition(&node, "Ready")["lastHeartbeatTime"].clone();
    eventually("a node status heartbeat", || async {
        let node = cluster.get("/api/v1/nodes/hollow-a").await.body;
        (condition(&node, "Ready")["lastHeartbeatTime"] != beat).then_some(())
    })
    .await;

    // A pod bound to a hollow node runs and becomes ready.
    let created = cluster
        .post(
            "/api/v1/namespaces/default/pods",
            bound_pod("web", "hollow-a"),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let running = eventually("the pod to run", || async {
        let pod = pod(&cluster, "web").await;
        (pod["status"]["phase"] == "Running" && condition(&pod, "Ready")["status"] == "True")
            .then_some(pod)
    })
    .await;
    let status = &running["status"];
    assert_eq!(status["hostIP"], "10.200.0.1");
    let ip = status["podIP"].as_str().expect("a podIP").to_string();
    assert_eq!(status["podIPs"], json!([{"ip": ip}]));
    assert!(status["startTime"].is_string(), "{status}");
    assert_eq!(condition(&running, "ContainersReady")["status"], "True");
    let container = &status["containerStatuses"][0];
    assert_eq!(container["ready"], true);
    assert_eq!(container["image"], "keel.local/echo:v1");
    assert!(container["state"]["running"]["startedAt"].is_string());

    // Readiness follows the test's say.
    fleet
        .set_ready("default", "web", false)
        .await
        .expect("set_ready");
    eventually("the pod to be unready", || async {
        let pod = pod(&cluster, "web").await;
        (condition(&pod, "Ready")["status"] == "False"
            && pod["status"]["containerStatuses"][0]["ready"] == false)
            .then_some(())
    })
    .await;
    fleet
        .set_ready("default", "web", true)
        .await
        .expect("set_ready");
    eventually("the pod to be ready again", || async {
        let pod = pod(&cluster, "web").await;
        (condition(&pod, "Ready")["status"] == "True").then_some(())
    })
    .await;
    assert_eq!(pod(&cluster, "web").await["status"]["podIP"], ip.as_str());

    // A graceful deletion (30 s by default) completes as soon as the kubelet confirms it.
    let deleted = cluster.delete("/api/v1/namespaces/default/pods/web").await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert!(
        deleted.body["metadata"]["deletionTimestamp"].is_string(),
        "{}",
        deleted.body
    );
    eventually("the pod to be gone", || async {
        let reply = cluster.get("/api/v1/namespaces/default/pods/web").await;
        (reply.status == 404).then_some(())
    })
    .await;

    // A silenced node stops renewing its lease and starts no pod; revived, it does both.
    fleet.silence("hollow-b").await.expect("silence");
    // A renewal already in flight may still land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frozen = renew_time(&cluster, "hollow-b").await;
    let alive = renew_time(&cluster, "hollow-a").await;
    let created = cluster
        .post(
            "/api/v1/namespaces/default/pods",
            bound_pod("late", "hollow-b"),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    eventually("the live node to renew", || async {
        (renew_time(&cluster, "hollow-a").await != alive).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(renew_time(&cluster, "hollow-b").await, frozen);
    assert_eq!(pod(&cluster, "late").await["status"]["phase"], "Pending");
    assert!(fleet.silence("no-such-node").await.is_err());

    fleet.revive("hollow-b").await.expect("revive");
    eventually("the revived node to renew", || async {
        (renew_time(&cluster, "hollow-b").await != frozen).then_some(())
    })
    .await;
    eventually("the revived node to start its pod", || async {
        (pod(&cluster, "late").await["status"]["phase"] == "Running").then_some(())
    })
    .await;

    let stats = fleet.stats();
    assert!(stats.leases_renewed >= 4, "{stats:?}");
    assert_eq!(stats.pods_started, 2, "{stats:?}");
    assert_eq!(stats.pods_deleted, 1, "{stats:?}");
    fleet.stop().await;
    cluster.stop().await;
}
