//! keel-control started in-process for tests and benchmarks, over the embedded store (in a
//! temporary directory) or a private etcd, and an HTTPS client for its API that trusts the
//! generated CA, sends the admin token and decodes JSON replies and watch streams.
//!
//! The request helpers panic on transport failures: they are for tests, where that is the
//! failure to report. Code that must handle errors uses [`ApiClient::request`].
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use keel_control::store::Store;
use keel_control::store::embedded::EmbeddedStore;
use keel_control::{Config, Running};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::etcd::EtcdServer;

/// The `Accept` header kubectl sends for tables.
pub const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

/// How long one request may take before a test fails rather than hangs.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The store keel-control runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// redb in the cluster's temporary directory.
    Embedded,
    /// A private etcd (see [`crate::etcd`]) with a key prefix unique to the cluster.
    Etcd,
}

impl Backend {
    /// `embedded` or `etcd`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Etcd => "etcd",
        }
    }
}

/// A running keel-control (HTTPS on a free loopback port) and a client for it.
pub struct Cluster {
    /// The store the server runs on, for checks and compactions behind the API's back.
    pub store: Arc<dyn Store>,
    /// A client trusting the cluster's CA (add the token with [`Cluster::request`]).
    pub client: reqwest::Client,
    // Fields drop in declaration order: the server before etcd before the directory.
    running: Option<Running>,
    _etcd: Option<EtcdServer>,
    _dir: tempfile::TempDir,
}

/// The client, base URL and token: what authenticated requests need. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiClient {
    client: reqwest::Client,
    base_url: String,
    token: String,
}

impl ApiClient {
    /// A client for any keel-control (in-process or not): its URL (`https://host:port`), the
    /// CA (PEM) that signed its serving certificate, and a bearer token.
    pub fn new(base_url: &str, ca_pem: &str, token: &str) -> Result<ApiClient> {
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).context("parsing the CA")?;
        let client = reqwest::Client::builder()
            .add_root_certificate(ca)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("building the HTTPS client")?;
        Ok(ApiClient {
            client,
            base_url: base_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    /// A request to `path` (e.g. `/api/v1/pods`) carrying the admin token.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(&self.token)
    }
}

/// An API reply: status, headers, and the body as JSON (or a JSON string if it isn't JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Cluster {
    /// Starts keel-control on `backend` with the default configuration.
    pub async fn start(backend: Backend) -> Result<Cluster> {
        Cluster::start_with(backend, |_| {}).await
    }

    /// Starts keel-control on `backend`, letting `configure` adjust the configuration (the
    /// listen address, data directory and store are set here). With [`Backend::Etcd`], call
    /// it from a thread that outlives the cluster (see [`EtcdServer::start`]).
    pub async fn start_with(
        backend: Backend,
        configure: impl FnOnce(&mut Config),
    ) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("keel-api-test-")
            .tempdir()
            .context("creating a temporary directory")?;
        let (store, etcd): (Arc<dyn Store>, _) = match backend {
            Backend::Embedded => {
                let store =
                    EmbeddedStore::open(dir.path()).context("opening the embedded store")?;
                (Arc::new(store), None)
            }
            Backend::Etcd => {
                let mut etcd = EtcdServer::start(dir.path())?;
                let prefix = format!("/{}", crate::unique_name());
                let store = etcd.connect(&prefix).await?;
                (Arc::new(store), Some(etcd))
            }
        };
        let mut config = Config::new(dir.path());
        configure(&mut config);
        config.listen = "127.0.0.1:0".parse().expect("a valid address");
        let running = keel_control::server::start_with_store(config, store.clone())
            .await
            .context("starting keel-control")?;
        let ca = reqwest::Certificate::from_pem(running.ca_pem.as_bytes())
            .context("parsing the cluster CA")?;
        let client = reqwest::Client::builder()
            .add_root_certificate(ca)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("building the HTTPS client")?;
        Ok(Cluster {
            store,
            client,
            running: Some(running),
            _etcd: etcd,
            _dir: dir,
        })
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("the cluster is running")
    }

    /// The running server, mutable (e.g. to start its controllers late).
    pub fn running_mut(&mut self) -> &mut Running {
        self.running.as_mut().expect("the cluster is running")
    }

    /// The full URL of an API path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running().url)
    }

    /// A handle for making requests from spawned tasks (it doesn't keep the server alive).
    pub fn api(&self) -> ApiClient {
        ApiClient {
            client: self.client.clone(),
            base_url: self.running().url.clone(),
            token: self.running().token.clone(),
        }
    }

    /// A request to `path` carrying the admin token.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.api().request(method, path)
    }

    /// Sends a request with an optional `(content type, body)` and `Accept` header.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        accept: Option<&str>,
    ) -> Reply {
        let mut request = self.request(method, path);
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        if let Some((content_type, bytes)) = body {
            request = request.header("Content-Type", content_type).body(bytes);
        }
        let response = request.send().await.expect("request is answered");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(json_body(&body)), None)
            .await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.send(Method::PUT, path, Some(json_body(&body)), None)
            .await
    }

    pub async fn patch(&self, path: &str, content_type: &str, body: Value) -> Reply {
        let (_, bytes) = json_body(&body);
        self.send(Method::PATCH, path, Some((content_type, bytes)), None)
            .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None, None).await
    }

    /// Opens a watch and returns its first `count` events (or fewer if it ends or 10 s pass).
    pub async fn watch(&self, path: &str, count: usize) -> Vec<Value> {
        let response = self
            .request(Method::GET, path)
            .send()
            .await
            .expect("watch opens");
        assert_eq!(response.status(), StatusCode::OK, "watch {path}");
        let mut stream = response.bytes_stream();
        let mut buffer = Vec::new();
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while events.len() < count {
            let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(chunk))) => chunk,
                _ => break,
            };
            buffer.extend_from_slice(&chunk);
            while let Some(pos) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=pos).collect();
                events
                    .push(serde_json::from_slice(&line).expect("each watch line is a JSON event"));
            }
        }
        events
    }

    /// Watches `path` (a watch URL with a `resourceVersion`) again and again until the watch
    /// ends with an ERROR event (the version was compacted away), and returns that event.
    /// Panics after 30 s: it is for waiting on a background compaction.
    pub async fn wait_until_expired(&self, path: &str) -> Value {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let events = self.watch(&format!("{path}&timeoutSeconds=1"), 1).await;
            if let Some(event) = events.into_iter().find(|e| e["type"] == "ERROR") {
                return event;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} still watchable after {REQUEST_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server, checking that it stops cleanly.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("server stops cleanly");
        }
    }
}

fn json_body(body: &Value) -> (&'static str, Vec<u8>) {
    let bytes = serde_json::to_vec(body).expect("a JSON value serializes");
    ("application/json", bytes)
}

/// A ConfigMap with `labels` and one data key.
pub fn configmap(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

/// An object's `metadata.resourceVersion`.
pub fn rv(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .to_string()
}

/// Asserts that `reply` is a failure `Status` with `code` and `reason`.
pub fn assert_status(reply: &Reply, code: u16, reason: &str) {
    assert_eq!(reply.status.as_u16(), code, "{}", reply.body);
    assert_eq!(reply.body["kind"], "Status", "{}", reply.body);
    assert_eq!(reply.body["code"], code, "{}", reply.body);
    assert_eq!(reply.body["reason"], reason, "{}", reply.body);
}

/// A keel-control (embedded store, temp data dir, 127.0.0.1:<free port>) on its own thread and
/// runtime, for tests that drive it from synchronous code with external clients (kubectl, the
/// Python client). Stopped and cleaned up on drop.
pub struct ServerThread {
    /// The admin kubeconfig written by the server.
    pub kubeconfig: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl ServerThread {
    /// Starts the server and returns once it serves.
    pub fn start() -> ServerThread {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = keel_control::Config::new(dir.path());
        config.listen = "127.0.0.1:0".parse().expect("address");
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let running = keel_control::start(config)
                    .await
                    .expect("keel-control starts");
                let _ = tx.send(running.kubeconfig.clone());
                let _ = stop_rx.await;
                let _ = running.stop().await;
            });
        });
        let kubeconfig = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("keel-control did not start within 30 s");
        ServerThread {
            kubeconfig,
            stop: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The API with the periodic compactor on a short interval (200 ms) over `backend`: an old
/// resourceVersion becomes 410 Expired for watch and exact-version list, while the latest stays
/// watchable however many ticks pass with nothing written.
pub async fn check_periodic_compaction(backend: Backend) {
    let cluster = Cluster::start_with(backend, |config| {
        config.compaction_interval = Duration::from_millis(200);
    })
    .await
    .expect("keel-control starts");
    let base = "/api/v1/namespaces/default/configmaps";
    let old = rv(&cluster.post(base, configmap("old", json!({}))).await.body);
    cluster.post(base, configmap("new", json!({}))).await;
    // The compactor runs in the background; a watcher resuming from `old` is told to relist.
    let expired = cluster
        .wait_until_expired(&format!("{base}?watch=true&resourceVersion={old}"))
        .await;
    assert_eq!(
        (
            expired["object"]["code"].as_u64(),
            expired["object"]["reason"].as_str()
        ),
        (Some(410), Some("Expired")),
        "{expired}"
    );
    assert_status(
        &cluster
            .get(&format!(
                "{base}?resourceVersion={old}&resourceVersionMatch=Exact"
            ))
            .await,
        410,
        "Expired",
    );
    // The relist's version stays watchable while nothing is written, however many ticks pass.
    let latest = rv(&cluster.get(base).await.body);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let events = cluster
        .watch(
            &format!("{base}?watch=true&resourceVersion={latest}&timeoutSeconds=1"),
            1,
        )
        .await;
    assert!(events.is_empty(), "{events:?}");
    cluster.stop().await;
}
