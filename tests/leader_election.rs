//! High availability: two `keel-control` processes share one etcd; both serve the API, one
//! leads (Lease `kube-system/keel-control`) and runs the controllers. The leader is killed with
//! SIGKILL (no lease release); the other takes over within 15 s and its controllers act.
//!
//! Runs the real binaries: `target/<profile>/keel-control` (built by `cargo xtask test`; set
//! `KEEL_CONTROL_BIN` to use another) and Debian's etcd.
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_tests::etcd::EtcdServer;
use keel_tests::process::{self, ProcessGuard};
use serde_json::{Value, json};

fn control_bin() -> PathBuf {
    if let Ok(path) = std::env::var("KEEL_CONTROL_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/leader_election-HASH -> target/<profile>/keel-control
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("keel-control");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p keel-control` (`cargo xtask test` does) or set KEEL_CONTROL_BIN",
        bin.display()
    );
    bin
}

struct ControlPlane {
    identity: String,
    url: String,
    process: ProcessGuard,
}

fn start_control(etcd: &str, data_dir: &std::path::Path, identity: &str) -> ControlPlane {
    let mut cmd = Command::new(control_bin());
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--store",
        "etcd",
        "--etcd-endpoints",
        etcd,
        "--etcd-prefix",
        "/keel-ha",
    ])
    .arg("--data-dir")
    .arg(data_dir)
    .args(["--leader-identity", identity])
    .env("RUST_LOG", "warn,keel_control::controllers::leader=info")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut process = process::spawn(cmd).expect("keel-control starts");
    let lines = process.stdout_lines().expect("stdout");
    let mut url = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while url.is_none() && Instant::now() < deadline {
        if let Some(line) = lines.next_within(Duration::from_secs(1))
            && let Some(rest) = line.strip_prefix("keel-control listening on ")
        {
            url = Some(rest.trim().to_string());
        }
    }
    // Keep draining stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || while lines.next_within(Duration::from_secs(3600)).is_some() {});
    ControlPlane {
        identity: identity.to_string(),
        url: url.expect("keel-control printed its URL within 60 s"),
        process,
    }
}

struct Api {
    client: reqwest::Client,
    token: String,
}

impl Api {
    async fn get(&self, base: &str, path: &str) -> Option<Value> {
        let reply = self
            .client
            .get(format!("{base}{path}"))
            .bearer_auth(&self.token)
            .send()
            .await
            .ok()?;
        reply.json().await.ok()
    }

    async fn send(
        &self,
        method: reqwest::Method,
        base: &str,
        path: &str,
        body: Value,
        content_type: &str,
    ) -> reqwest::StatusCode {
        self.client
            .request(method, format!("{base}{path}"))
            .bearer_auth(&self.token)
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .expect("request")
            .status()
    }

    async fn holder(&self, base: &str) -> Option<String> {
        let lease = self
            .get(
                base,
                "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/keel-control",
            )
            .await?;
        lease["spec"]["holderIdentity"].as_str().map(str::to_string)
    }

    async fn pod_count(&self, base: &str) -> usize {
        self.get(base, "/api/v1/namespaces/default/pods?labelSelector=app=ha")
            .await
            .and_then(|l| {
                l["items"].as_array().map(|i| {
                    i.iter()
                        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                        .count()
                })
            })
            .unwrap_or(0)
    }
}

async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "current_thread")]
async fn the_leader_fails_over_within_15_seconds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut etcd = EtcdServer::start(dir.path()).expect("etcd starts");
    etcd.connect("/keel-ha").await.expect("etcd answers");
    let data = dir.path().join("control");
    // The first process creates the CA and token; the second reuses them from the same dir.
    let a = start_control(etcd.endpoint(), &data, "cp-a");
    let b = start_control(etcd.endpoint(), &data, "cp-b");
    let token = std::fs::read_to_string(data.join("admin.token"))
        .or_else(|_| {
            let kubeconfig = std::fs::read_to_string(data.join("admin.kubeconfig"))?;
            let token = kubeconfig
                .lines()
                .find_map(|l| l.trim().strip_prefix("token: "))
                .unwrap_or("")
                .trim_matches('"')
                .to_string();
            Ok::<_, std::io::Error>(token)
        })
        .expect("admin token");
    let ca = std::fs::read(data.join("ca.crt")).expect("CA certificate");
    let api = Api {
        client: reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA"))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client"),
        token: token.trim().to_string(),
    };
    let mut planes = vec![a, b];
    // One of them leads.
    wait_until(Duration::from_secs(30), "a leader", || async {
        api.holder(&planes[0].url).await.is_some()
    })
    .await;
    let leader_id = api
        .holder(&planes[1].url)
        .await
        .expect("both servers see the lease");
    let leader = planes
        .iter()
        .position(|p| p.identity == leader_id)
        .expect("the holder is one of ours");
    let survivor = 1 - leader;

    // The controllers work, whichever server takes the write.
    let rs = json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "ha", "namespace": "default"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "ha"}},
                 "template": {"metadata": {"labels": {"app": "ha"}}, "spec": {"containers": [{"name": "c", "image": "keel.local/busybox:latest"}]}}}
    });
    let created = api
        .send(
            reqwest::Method::POST,
            &planes[survivor].url,
            "/apis/apps/v1/namespaces/default/replicasets",
            rs,
            "application/json",
        )
        .await;
    assert_eq!(created, 201);
    let survivor_url = planes[survivor].url.clone();
    wait_until(
        Duration::from_secs(30),
        "2 pods from the leader's ReplicaSet controller",
        || async { api.pod_count(&survivor_url).await == 2 },
    )
    .await;

    // Kill the leader without letting it release the lease.
    planes[leader].process.kill();
    let took = wait_until(
        Duration::from_secs(30),
        "the survivor takes the lease",
        || async {
            api.holder(&survivor_url).await.as_deref() == Some(planes[survivor].identity.as_str())
        },
    )
    .await;
    eprintln!("failover took {took:?}");
    assert!(
        took <= Duration::from_secs(15),
        "failover took {took:?}, more than 15 s"
    );
    // The new leader's controllers act.
    let scaled = api
        .send(
            reqwest::Method::PATCH,
            &survivor_url,
            "/apis/apps/v1/namespaces/default/replicasets/ha",
            json!({"spec": {"replicas": 4}}),
            "application/merge-patch+json",
        )
        .await;
    assert_eq!(scaled, 200);
    wait_until(
        Duration::from_secs(30),
        "4 pods after the failover",
        || async { api.pod_count(&survivor_url).await == 4 },
    )
    .await;
    drop(planes);
    drop(etcd);
}
