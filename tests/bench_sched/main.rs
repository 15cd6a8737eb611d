//! `keel-bench-sched`: the scheduler and the Deployment controller of keel-control under a
//! kubemark-style load: N hollow nodes (fake kubelets over the API, see
//! [`keel_tests::hollow`]) and N pending pods.
//!
//! Phase 1, scheduling throughput: keel-control starts in this process with its controllers
//! off (embedded store in a temporary directory), the hollow fleet registers its nodes, 16
//! clients create the pending pods (no nodeName, small requests, spread over a few
//! namespaces); then the controllers start and a watch counts bindings until every pod is
//! bound. Throughput is pods over the time from the controllers' start to the last binding;
//! the time to the first binding shows what the caches' sync and the leader election cost.
//! The process's CPU time (getrusage) and the store's revisions written in that window say
//! what bounds the figure.
//!
//! Phase 2, rollout: the pods go, a 100-replica Deployment becomes fully available, then its
//! image changes and the time until the rollout is complete is measured exactly as
//! `kubectl rollout status` decides.
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use keel_control::controllers::ControllerConfig;
use keel_tests::api_client::{ApiClient, Backend, Cluster};
use keel_tests::hollow::{FleetStats, HollowFleet, HollowOptions};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// Concurrent clients creating the pending pods.
const CREATORS: usize = 16;
/// Namespaces the pending pods are spread over.
const NAMESPACES: usize = 4;
/// The rollout phase's namespace and Deployment.
const ROLLOUT_NAMESPACE: &str = "bench-rollout";
const DEPLOYMENT: &str = "web";
const REPLICAS: i64 = 100;
/// How often the rollout's Deployment is read while waiting.
const POLL: Duration = Duration::from_millis(50);
/// How often a wait prints where it is.
const REPORT_EVERY: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "keel-bench-sched",
    about = "Benchmark keel-control's scheduler and Deployment rollouts on hollow nodes"
)]
struct Cli {
    /// A shorter run: 200 nodes and 2 000 pods [full: 1 000 nodes, 10 000 pods].
    #[arg(long)]
    quick: bool,
    /// Write `{"nodes", "pods", "pods_per_s", "rollout_100_s"}` here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Hollow nodes (overrides --quick's).
    #[arg(long)]
    nodes: Option<usize>,
    /// Pending pods (overrides --quick's).
    #[arg(long)]
    pods: Option<usize>,
    /// Longest wait for any one phase (all pods bound, a Deployment available) before the run
    /// fails, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// When the run started, for the progress lines' timestamps.
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// A progress line on stderr, stamped with the seconds since the run started.
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!(
            "[{:6.1}s] {}",
            STARTED.get_or_init(Instant::now).elapsed().as_secs_f64(),
            format_args!($($arg)*)
        )
    };
}

/// The figures `--json` writes.
#[derive(Clone, Debug, Serialize)]
struct Figures {
    nodes: usize,
    pods: usize,
    pods_per_s: Option<f64>,
    rollout_100_s: Option<f64>,
}

/// Everything the table shows (`None`: not measured; the error was printed).
#[derive(Debug, Default)]
struct Report {
    nodes: usize,
    pods: usize,
    register_s: Option<f64>,
    create_s: Option<f64>,
    first_binding_s: Option<f64>,
    last_binding_s: Option<f64>,
    spread: Option<(usize, usize)>,
    cpu_s: Option<f64>,
    machine: Option<MachineCpu>,
    store_writes: Option<u64>,
    fleet_during: Option<FleetStats>,
    deploy_available_s: Option<f64>,
    rollout_s: Option<f64>,
}

impl Report {
    fn pods_per_s(&self) -> Option<f64> {
        self.last_binding_s
            .filter(|s| *s > 0.0)
            .map(|s| self.pods as f64 / s)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("keel-bench-sched: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(&cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("keel-bench-sched: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs both phases; true when every figure was measured.
async fn bench(cli: &Cli) -> Result<bool> {
    let (default_nodes, default_pods) = if cli.quick {
        (200, 2_000)
    } else {
        (1_000, 10_000)
    };
    let nodes = cli.nodes.unwrap_or(default_nodes);
    let pods = cli.pods.unwrap_or(default_pods);
    if nodes == 0 || pods == 0 {
        bail!("--nodes and --pods must be positive");
    }
    let patience = Duration::from_secs(cli.timeout.max(1));
    progress!(
        "keel-bench-sched: {nodes} hollow nodes, {pods} pending pods; load average before: {}",
        load_average()
    );
    let mut report = Report {
        nodes,
        pods,
        ..Report::default()
    };
    let mut cluster = Cluster::start_with(Backend::Embedded, |config| config.controllers = None)
        .await
        .context("starting keel-control")?;
    let api = cluster.api();

    let started = Instant::now();
    let names: Vec<String> = (0..nodes).map(|i| format!("hollow-{i:04}")).collect();
    let fleet = HollowFleet::start(api.clone(), names, HollowOptions::default())
        .await
        .context("starting the hollow fleet")?;
    report.register_s = Some(started.elapsed().as_secs_f64());
    progress!(
        "{nodes} hollow nodes registered in {:.2?}",
        started.elapsed()
    );

    let result = run_phases(&mut cluster, &api, &fleet, &mut report, patience).await;
    if let Err(e) = &result {
        progress!("the run stopped early: {e:#}");
    }
    print!("{}", table(&report, cli.quick));
    println!("hollow fleet: {:?}", fleet.stats());
    println!("load average after: {}", load_average());
    let figures = Figures {
        nodes,
        pods,
        pods_per_s: report.pods_per_s(),
        rollout_100_s: report.rollout_s,
    };
    if let Some(path) = &cli.json {
        write_json(path, &figures)?;
        println!("wrote {}", path.display());
    }
    fleet.stop().await;
    cluster.stop().await;
    Ok(result.is_ok() && figures.pods_per_s.is_some() && figures.rollout_100_s.is_some())
}

async fn run_phases(
    cluster: &mut Cluster,
    api: &ApiClient,
    fleet: &HollowFleet,
    report: &mut Report,
    patience: Duration,
) -> Result<()> {
    let pods = report.pods;
    for ns in 0..NAMESPACES {
        create_namespace(api, &pod_namespace(ns)).await?;
    }
    create_namespace(api, ROLLOUT_NAMESPACE).await?;

    // Pending pods.
    progress!("creating {pods} pending pods with {CREATORS} clients");
    let started = Instant::now();
    create_pods(api, pods).await?;
    let elapsed = started.elapsed();
    report.create_s = Some(elapsed.as_secs_f64());
    progress!(
        "{pods} pods created in {elapsed:.2?} ({:.0}/s)",
        pods as f64 / elapsed.as_secs_f64()
    );
    let (stored, revision) = count_pods(api, "").await?;
    if stored != pods {
        bail!("{stored} pods are stored, not {pods}");
    }

    // Scheduling: watch bindings from the current revision, then start the controllers.
    let bindings = Arc::new(Bindings::default());
    let watcher = tokio::spawn(watch_bindings(api.clone(), revision, bindings.clone()));
    let cpu_before = cpu_time();
    let machine_before = machine_ticks();
    let fleet_before = fleet.stats();
    let revision_before = store_revision(api).await?;
    progress!("starting the controllers and the scheduler");
    let started = Instant::now();
    cluster
        .running_mut()
        .start_controllers(ControllerConfig::new(
            "10.244.0.0/16".parse().context("the cluster CIDR")?,
        ));
    let waited = wait_bound(&bindings, pods, started, patience).await;
    let cpu = cpu_time().saturating_sub(cpu_before);
    let machine_after = machine_ticks();
    let revision_after = store_revision(api).await;
    let fleet_after = fleet.stats();
    watcher.abort();
    let (first, last) = waited?;
    report.first_binding_s = Some(first.duration_since(started).as_secs_f64());
    report.last_binding_s = Some(last.duration_since(started).as_secs_f64());
    report.cpu_s = Some(cpu.as_secs_f64());
    report.machine = machine_before
        .zip(machine_after)
        .and_then(|(before, after)| MachineCpu::between(before, after));
    report.store_writes = revision_after
        .ok()
        .map(|after| after.saturating_sub(revision_before));
    report.fleet_during = Some(diff(fleet_after, fleet_before));
    progress!(
        "all {pods} pods bound {:.2?} after the controllers started ({:.0} pods/s)",
        last.duration_since(started),
        report.pods_per_s().unwrap_or(0.0)
    );
    report.spread = Some(spread(api, fleet.nodes()).await?);

    // Rollout.
    // One deletecollection per namespace, all at once (each deletes its pods one by one).
    progress!("deleting the {pods} pods");
    let started = Instant::now();
    futures::future::try_join_all((0..NAMESPACES).map(|ns| async move {
        let namespace = pod_namespace(ns);
        let path = format!("/api/v1/namespaces/{namespace}/pods?gracePeriodSeconds=0");
        let (status, body) = call(api, Method::DELETE, &path, None).await?;
        if status != StatusCode::OK {
            bail!("deleting the pods of {namespace}: {status}: {body}");
        }
        anyhow::Ok(())
    }))
    .await?;
    wait_for("the pods to be deleted", patience, || async {
        let page = get(api, "/api/v1/pods?limit=1").await?;
        Ok(page["items"].as_array().is_none_or(Vec::is_empty))
    })
    .await?;
    progress!("{pods} pods deleted in {:.2?}", started.elapsed());

    progress!("creating Deployment {DEPLOYMENT} ({REPLICAS} replicas)");
    let started = Instant::now();
    let deployments = format!("/apis/apps/v1/namespaces/{ROLLOUT_NAMESPACE}/deployments");
    let (status, body) = call(
        api,
        Method::POST,
        &deployments,
        Some(("application/json", deployment("keel.local/echo:v1"))),
    )
    .await?;
    if status != StatusCode::CREATED {
        bail!("creating the deployment: {status}: {body}");
    }
    let path = format!("{deployments}/{DEPLOYMENT}");
    wait_for("the deployment to be available", patience, || async {
        Ok(fully_available(&get(api, &path).await?))
    })
    .await?;
    report.deploy_available_s = Some(started.elapsed().as_secs_f64());
    progress!(
        "{REPLICAS} replicas available in {:.2?}; rolling to v2",
        started.elapsed()
    );

    let started = Instant::now();
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "keel.local/echo:v2"}
    ]}}}});
    let (status, body) = call(
        api,
        Method::PATCH,
        &path,
        Some(("application/strategic-merge-patch+json", patch)),
    )
    .await?;
    if status != StatusCode::OK {
        bail!("patching the deployment's image: {status}: {body}");
    }
    wait_for("the rollout to complete", patience, || async {
        rollout_complete(&get(api, &path).await?)
    })
    .await?;
    report.rollout_s = Some(started.elapsed().as_secs_f64());
    progress!("rollout complete in {:.2?}", started.elapsed());
    Ok(())
}

fn pod_namespace(index: usize) -> String {
    format!("bench-{index}")
}

/// A pending pod as a user would write it: no node, small requests, no owner.
fn pending_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {
            "containers": [{
                "name": "app",
                "image": "keel.local/echo:v1",
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}
            }]
        }
    })
}

fn deployment(image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": DEPLOYMENT}},
            "template": {
                "metadata": {"labels": {"app": DEPLOYMENT}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": image,
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}
                }]}
            }
        }
    })
}

/// Sends a request with an optional `(content type, JSON body)`; the status and JSON reply.
async fn call(
    api: &ApiClient,
    method: Method,
    path: &str,
    body: Option<(&str, Value)>,
) -> Result<(StatusCode, Value)> {
    let mut request = api.request(method.clone(), path);
    if let Some((content_type, body)) = body {
        request = request
            .header("Content-Type", content_type)
            .body(serde_json::to_vec(&body)?);
    }
    // A deletecollection of thousands of pods on a busy machine takes minutes.
    let response = request
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .with_context(|| format!("{method} {path}"))?;
    let status = response.status();
    let bytes = response.bytes().await.context("reading the reply")?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// GETs an object; anything but 200 is an error.
async fn get(api: &ApiClient, path: &str) -> Result<Value> {
    let (status, body) = call(api, Method::GET, path, None).await?;
    if status != StatusCode::OK {
        bail!("GET {path}: {status}: {body}");
    }
    Ok(body)
}

async fn create_namespace(api: &ApiClient, name: &str) -> Result<()> {
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    let (status, reply) = call(
        api,
        Method::POST,
        "/api/v1/namespaces",
        Some(("application/json", body)),
    )
    .await?;
    if status != StatusCode::CREATED {
        bail!("creating namespace {name}: {status}: {reply}");
    }
    Ok(())
}

/// 16 clients create pods `pod-00000` … spread round-robin over the namespaces.
async fn create_pods(api: &ApiClient, count: usize) -> Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    // Dropping the set (on an error) stops the other clients.
    let mut tasks = JoinSet::new();
    for _ in 0..CREATORS {
        let api = api.clone();
        let next = next.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                let name = format!("pod-{i:05}");
                let path = format!("/api/v1/namespaces/{}/pods", pod_namespace(i % NAMESPACES));
                let (status, body) = call(
                    &api,
                    Method::POST,
                    &path,
                    Some(("application/json", pending_pod(&name))),
                )
                .await?;
                if status != StatusCode::CREATED {
                    bail!("creating pod {name}: {status}: {body}");
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a creating task panicked")??;
    }
    Ok(())
}

/// Lists every pod (with `selector` as an extra query, e.g. `&fieldSelector=…`); how many
/// there are and the list's revision.
async fn list_pods(api: &ApiClient, selector: &str) -> Result<(Vec<Value>, u64)> {
    let mut items = Vec::new();
    let mut revision = None;
    let mut token: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/pods?limit=2000{selector}");
        if let Some(token) = &token {
            path.push_str("&continue=");
            path.push_str(&url_escape(token));
        }
        let mut page = get(api, &path).await?;
        if revision.is_none() {
            revision = page["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse().ok());
        }
        if let Some(page_items) = page["items"].as_array_mut() {
            items.append(page_items);
        }
        match page["metadata"]["continue"].as_str() {
            Some(next) if !next.is_empty() => token = Some(next.to_string()),
            _ => break,
        }
    }
    Ok((
        items,
        revision.context("the pod list has no resourceVersion")?,
    ))
}

async fn count_pods(api: &ApiClient, selector: &str) -> Result<(usize, u64)> {
    let (items, revision) = list_pods(api, selector).await?;
    Ok((items.len(), revision))
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

/// The store's current revision (a list's resourceVersion): its difference over a window is
/// the number of writes in it (creates, updates and deletes of every kind).
async fn store_revision(api: &ApiClient) -> Result<u64> {
    let list = get(api, "/api/v1/namespaces/default/configmaps?limit=1").await?;
    list["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .context("the list has no resourceVersion")
}

/// Bindings seen by the watch: distinct pods, and when the first and the last arrived.
#[derive(Default)]
struct Bindings {
    state: Mutex<BindingState>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct BindingState {
    bound: HashSet<String>,
    first: Option<Instant>,
    last: Option<Instant>,
    error: Option<String>,
}

/// Watches pods with a node from `revision`: each ADDED is a binding (a pod starting to match
/// `spec.nodeName!=`). Resumes from the last version seen when the watch ends.
async fn watch_bindings(api: ApiClient, revision: u64, bindings: Arc<Bindings>) {
    let mut from = revision.to_string();
    let mut failures = 0;
    loop {
        match watch_once(&api, &mut from, &bindings).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures >= 5 {
                    bindings.state.lock().expect("not poisoned").error = Some(format!("{e:#}"));
                    bindings.changed.notify_waiters();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn watch_once(api: &ApiClient, from: &mut String, bindings: &Bindings) -> Result<()> {
    let path = format!(
        "/api/v1/pods?watch=true&allowWatchBookmarks=true&timeoutSeconds=1800&resourceVersion={from}&fieldSelector=spec.nodeName%21%3D"
    );
    let response = api
        .request(Method::GET, &path)
        .timeout(Duration::from_secs(1900))
        .send()
        .await
        .context("opening the binding watch")?;
    if response.status() != StatusCode::OK {
        bail!("opening the binding watch: {}", response.status());
    }
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("reading the binding watch")?;
        let arrived = Instant::now();
        buffer.extend_from_slice(&chunk);
        let mut start = 0;
        let mut added = Vec::new();
        while let Some(len) = buffer[start..].iter().position(|b| *b == b'\n') {
            let event: Value = serde_json::from_slice(&buffer[start..start + len])
                .context("decoding a watch event")?;
            start += len + 1;
            let metadata = &event["object"]["metadata"];
            if let Some(version) = metadata["resourceVersion"].as_str() {
                *from = version.to_string();
            }
            match event["type"].as_str() {
                Some("ADDED") => added.push(format!(
                    "{}/{}",
                    metadata["namespace"].as_str().unwrap_or_default(),
                    metadata["name"].as_str().unwrap_or_default()
                )),
                Some("ERROR") => bail!("the binding watch ended with {}", event["object"]),
                _ => {}
            }
        }
        buffer.drain(..start);
        if !added.is_empty() {
            let mut state = bindings.state.lock().expect("not poisoned");
            state.first.get_or_insert(arrived);
            let before = state.bound.len();
            state.bound.extend(added);
            if state.bound.len() > before {
                state.last = Some(arrived);
            }
            drop(state);
            bindings.changed.notify_waiters();
        }
    }
    Ok(())
}

/// Waits until `pods` pods are bound; when the first and the last binding arrived.
async fn wait_bound(
    bindings: &Bindings,
    pods: usize,
    started: Instant,
    patience: Duration,
) -> Result<(Instant, Instant)> {
    let deadline = started + patience;
    let mut next_report = started + REPORT_EVERY;
    loop {
        let notified = bindings.changed.notified();
        {
            let state = bindings.state.lock().expect("not poisoned");
            if let Some(error) = &state.error {
                bail!("the binding watch failed: {error}");
            }
            if state.bound.len() >= pods
                && let (Some(first), Some(last)) = (state.first, state.last)
            {
                return Ok((first, last));
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "timed out after {patience:?}: {} of {pods} pods bound{}",
                    state.bound.len(),
                    if state.bound.is_empty() {
                        " (none: is the scheduler in keel-control's controllers \
                         (control/src/controllers/scheduler.rs) running?)"
                    } else {
                        ""
                    }
                );
            }
            if now >= next_report {
                progress!("{} of {pods} pods bound", state.bound.len());
                next_report += REPORT_EVERY;
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
    }
}

/// Polls `done` until it is true; an error after `patience`, naming `what`.
async fn wait_for<F, Fut>(what: &str, patience: Duration, mut done: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let started = Instant::now();
    let mut next_report = started + REPORT_EVERY;
    let mut last_error = None;
    loop {
        match done().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if started.elapsed() >= patience {
            let hint = last_error
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default();
            bail!(
                "timed out after {patience:?} waiting for {what}{hint}: are keel-control's \
                 controllers (control/src/controllers/) running?"
            );
        }
        if Instant::now() >= next_report {
            progress!("still waiting for {what}");
            next_report += REPORT_EVERY;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn int(value: &Value) -> i64 {
    value.as_i64().unwrap_or(0)
}

/// Every replica updated and available, and the status is about the current spec.
fn fully_available(deployment: &Value) -> bool {
    let status = &deployment["status"];
    int(&status["observedGeneration"]) >= int(&deployment["metadata"]["generation"])
        && int(&status["availableReplicas"]) == REPLICAS
        && int(&status["updatedReplicas"]) == REPLICAS
}

/// `kubectl rollout status`'s verdict (DeploymentStatusViewer): done once the controller saw
/// the latest generation, every replica is updated, no old replica is left, and every updated
/// one is available. An exceeded progress deadline is an error.
fn rollout_complete(deployment: &Value) -> Result<bool> {
    let status = &deployment["status"];
    if int(&deployment["metadata"]["generation"]) > int(&status["observedGeneration"]) {
        return Ok(false);
    }
    let progressing = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Progressing"));
    if progressing.is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded") {
        bail!("deployment {DEPLOYMENT} exceeded its progress deadline");
    }
    let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
    let updated = int(&status["updatedReplicas"]);
    Ok(updated >= replicas
        && int(&status["replicas"]) <= updated
        && int(&status["availableReplicas"]) >= updated)
}

/// The fewest and the most pods on one node (nodes with none count).
async fn spread(api: &ApiClient, nodes: &[String]) -> Result<(usize, usize)> {
    let (items, _) = list_pods(api, "&fieldSelector=spec.nodeName%21%3D").await?;
    let mut per_node: BTreeMap<&str, usize> = nodes.iter().map(|n| (n.as_str(), 0)).collect();
    for pod in &items {
        if let Some(count) = pod["spec"]["nodeName"]
            .as_str()
            .and_then(|n| per_node.get_mut(n))
        {
            *count += 1;
        }
    }
    let min = per_node.values().copied().min().unwrap_or(0);
    let max = per_node.values().copied().max().unwrap_or(0);
    Ok((min, max))
}

/// User plus system CPU time of this process so far.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the buffer we own; it is read only on success.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return Duration::ZERO;
        }
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// `/proc/stat`'s first line: CPU ticks of the whole machine (busy, iowait, total).
fn machine_ticks() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| t.parse().unwrap_or(0))
        .collect();
    if ticks.len() < 5 {
        return None;
    }
    let total: u64 = ticks.iter().sum();
    let (idle, iowait) = (ticks[3], ticks[4]);
    Some((total - idle - iowait, iowait, total))
}

/// How busy the whole machine's CPUs were over a window (this process and everything else).
#[derive(Clone, Copy, Debug)]
struct MachineCpu {
    busy: f64,
    iowait: f64,
}

impl MachineCpu {
    fn between(before: (u64, u64, u64), after: (u64, u64, u64)) -> Option<MachineCpu> {
        let total = after.2.checked_sub(before.2).filter(|t| *t > 0)? as f64;
        Some(MachineCpu {
            busy: after.0.saturating_sub(before.0) as f64 / total,
            iowait: after.1.saturating_sub(before.1) as f64 / total,
        })
    }
}

fn diff(after: FleetStats, before: FleetStats) -> FleetStats {
    FleetStats {
        leases_renewed: after.leases_renewed - before.leases_renewed,
        node_status_updates: after.node_status_updates - before.node_status_updates,
        pods_started: after.pods_started - before.pods_started,
        pod_status_writes: after.pod_status_writes - before.pod_status_writes,
        pods_deleted: after.pods_deleted - before.pods_deleted,
        write_errors: after.write_errors - before.write_errors,
    }
}

/// `/proc/loadavg`'s three averages (a loaded machine makes the figures noisy).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The results as a table, with what bounds the scheduling figure.
fn table(report: &Report, quick: bool) -> String {
    let seconds = |v: Option<f64>| v.map_or("failed".to_string(), |v| format!("{v:.2} s"));
    let mut rows: Vec<(String, String)> = vec![
        (
            "hollow nodes / pending pods".into(),
            format!("{} / {}", report.nodes, report.pods),
        ),
        (
            "nodes registered (Node + Lease)".into(),
            seconds(report.register_s),
        ),
        (
            format!("pods created ({CREATORS} clients)"),
            report.create_s.map_or("failed".into(), |s| {
                format!("{s:.2} s ({:.0}/s)", report.pods as f64 / s)
            }),
        ),
        (
            "controllers start -> first binding".into(),
            seconds(report.first_binding_s),
        ),
        (
            "controllers start -> last binding".into(),
            seconds(report.last_binding_s),
        ),
        (
            "scheduling throughput".into(),
            report
                .pods_per_s()
                .map_or("failed".into(), |v| format!("{v:.0} pods/s (goal >= 1000)")),
        ),
        (
            "spread: pods per node".into(),
            report
                .spread
                .map_or("-".into(), |(min, max)| format!("min {min}, max {max}")),
        ),
    ];
    if let (Some(cpu), Some(wall)) = (report.cpu_s, report.last_binding_s) {
        rows.push((
            "process CPU while scheduling".into(),
            format!(
                "{cpu:.2} s = {:.2} of {} cores",
                cpu / wall.max(1e-9),
                cores()
            ),
        ));
    }
    if let Some(machine) = report.machine {
        rows.push((
            "machine CPU while scheduling".into(),
            format!(
                "{:.0}% busy, {:.0}% iowait (all processes; load average {})",
                machine.busy * 100.0,
                machine.iowait * 100.0,
                load_average()
            ),
        ));
    }
    if let (Some(writes), Some(wall)) = (report.store_writes, report.last_binding_s) {
        let fleet = report.fleet_during.unwrap_or_default();
        let hollow = fleet.leases_renewed + fleet.node_status_updates + fleet.pod_status_writes;
        rows.push((
            "store writes while scheduling".into(),
            format!(
                "{writes} ({:.0}/s): {} bindings, {hollow} by hollow kubelets, {} other",
                writes as f64 / wall.max(1e-9),
                report.pods,
                writes.saturating_sub(report.pods as u64 + hollow)
            ),
        ));
    }
    rows.push((
        format!("deployment {REPLICAS} replicas available"),
        seconds(report.deploy_available_s),
    ));
    rows.push((
        "rollout v1 -> v2 complete".into(),
        seconds(report.rollout_s),
    ));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nkeel-control scheduler benchmark{}",
        if quick { " (quick)" } else { "" }
    );
    for (label, value) in rows {
        let _ = writeln!(out, "{label:<36}{value}");
    }
    if let Some(bound) = bound_by(report) {
        let _ = writeln!(out, "bounded by: {bound}");
    }
    out.push_str(
        "throughput: pods / time from the controllers' start to the last binding (watch receipt);\n\
         rollout: from the image patch until `kubectl rollout status` would say done\n",
    );
    out
}

/// What limits the scheduling figure: the machine's CPUs, the store's write rate (compared
/// with what 16 concurrent creates reached), or else the scheduler's own pace.
fn bound_by(report: &Report) -> Option<String> {
    let (cpu, wall) = (report.cpu_s?, report.last_binding_s?);
    let used = cpu / wall.max(1e-9);
    let cores = cores() as f64;
    let busy = report.machine.map(|m| m.busy);
    let writes_per_s = report.store_writes.map(|w| w as f64 / wall.max(1e-9));
    let creates_per_s = report.create_s.map(|s| report.pods as f64 / s.max(1e-9));
    if busy.is_some_and(|b| b >= 0.9) || used >= 0.9 * cores {
        return Some(format!(
            "CPU: the machine's {cores:.0} cores were {:.0}% busy; this process (API server, \
             store, controllers, scheduler, hollow kubelets, the watch) used {used:.2} of them, \
             other processes the rest",
            busy.unwrap_or(used / cores) * 100.0
        ));
    }
    if let (Some(writes), Some(creates)) = (writes_per_s, creates_per_s)
        && writes >= 0.8 * creates
    {
        return Some(format!(
            "the store's write rate: {writes:.0} writes/s while scheduling, about what \
             {CREATORS} concurrent creates reached ({creates:.0}/s); each binding is one store \
             write, next to the hollow kubelets' status writes"
        ));
    }
    Some(format!(
        "neither CPU ({used:.2} of {cores:.0} cores) nor the store ({:.0} writes/s, {CREATORS} \
         concurrent creates reached {:.0}/s): the scheduler's own pace (bindings in flight)",
        writes_per_s.unwrap_or(0.0),
        creates_per_s.unwrap_or(0.0)
    ))
}

fn write_json(path: &Path, figures: &Figures) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(figures)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment_status(generation: i64, status: Value) -> Value {
        json!({"metadata": {"generation": generation}, "spec": {"replicas": 100}, "status": status})
    }

    #[test]
    fn rollout_status_follows_kubectl() {
        let done = json!({"observedGeneration": 2, "replicas": 100, "updatedReplicas": 100, "availableReplicas": 100});
        assert!(rollout_complete(&deployment_status(2, done.clone())).unwrap());
        // The controller hasn't seen the new template yet.
        assert!(!rollout_complete(&deployment_status(3, done)).unwrap());
        // Old replicas still terminating.
        let old_left = json!({"observedGeneration": 2, "replicas": 110, "updatedReplicas": 100, "availableReplicas": 100});
        assert!(!rollout_complete(&deployment_status(2, old_left)).unwrap());
        // Updated replicas not yet available.
        let unavailable = json!({"observedGeneration": 2, "replicas": 100, "updatedReplicas": 100, "availableReplicas": 90});
        assert!(!rollout_complete(&deployment_status(2, unavailable)).unwrap());
        let partial = json!({"observedGeneration": 2, "replicas": 100, "updatedReplicas": 75, "availableReplicas": 100});
        assert!(!rollout_complete(&deployment_status(2, partial)).unwrap());
        let stuck = json!({"observedGeneration": 2, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]});
        assert!(rollout_complete(&deployment_status(2, stuck)).is_err());
    }

    #[test]
    fn availability_needs_the_current_generation() {
        let status =
            json!({"observedGeneration": 1, "availableReplicas": 100, "updatedReplicas": 100});
        assert!(fully_available(&deployment_status(1, status.clone())));
        assert!(!fully_available(&deployment_status(2, status)));
    }

    #[test]
    fn the_json_has_the_documented_keys() {
        let figures = Figures {
            nodes: 1000,
            pods: 10000,
            pods_per_s: Some(1234.5),
            rollout_100_s: None,
        };
        assert_eq!(
            serde_json::to_value(&figures).unwrap(),
            json!({"nodes": 1000, "pods": 10000, "pods_per_s": 1234.5, "rollout_100_s": null})
        );
    }
}
