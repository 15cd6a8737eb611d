//! `keel-bench-api`: keel-control's API on the embedded store and on etcd, side by side, driven
//! over HTTPS like any client: the create rate with 16 concurrent clients, the latency of a full
//! list of 10 000 pods, and how long a create takes to reach 100 watchers (p50/p99).
//!
//! Each backend gets a fresh keel-control started in this process (the embedded store in a
//! temporary directory; etcd from `/usr/bin/etcd` with its own data directory on free ports).
//! Every figure comes from the real API: valid Pod objects in namespace `bench`, created with
//! POST, listed with GET, watched with `?watch=true`. Client and server share this process
//! and the machine's cores, as they would on a single-node cluster. Needs no root.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use keel_tests::api_client::{ApiClient, Backend, Cluster};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

const NAMESPACE: &str = "bench";
const PODS: &str = "/api/v1/namespaces/bench/pods";
/// Concurrent clients in the create phase.
const CREATORS: usize = 16;
/// Pods in the namespace when it is listed.
const LIST_PODS: usize = 10_000;
/// Concurrent watches in the watch phase.
const WATCHERS: usize = 100;
/// Pause between two watched creates, so deliveries of one don't queue behind the previous.
const WATCH_SPACING: Duration = Duration::from_millis(10);
/// Longest wait for any one step (a delivery, a watch to open) before the run fails.
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Parser)]
#[command(
    name = "keel-bench-api",
    about = "Benchmark keel-control's API on the embedded store and on etcd"
)]
struct Cli {
    /// A shorter run (about a minute or two): a 10 s create phase, 5 lists, 200 watched creates
    /// [full: 30 s, 9 lists, 500 watched creates]. The list still holds 10 000 pods.
    #[arg(long)]
    quick: bool,
    /// Write the results as JSON here (one row per store).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Stores to measure.
    #[arg(long, value_delimiter = ',', default_value = "embedded,etcd")]
    stores: Vec<Backend>,
}

/// How long each phase runs.
#[derive(Clone, Copy, Debug)]
struct Plan {
    create_phase: Duration,
    lists: usize,
    watched_creates: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                create_phase: Duration::from_secs(10),
                lists: 5,
                watched_creates: 200,
            }
        } else {
            Plan {
                create_phase: Duration::from_secs(30),
                lists: 9,
                watched_creates: 500,
            }
        }
    }
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

/// One store's figures (`None`: that phase failed; the error was printed).
#[derive(Clone, Debug, Serialize)]
struct Row {
    store: &'static str,
    creates_per_s: Option<f64>,
    list_10k_ms: Option<f64>,
    watch_p50_ms: Option<f64>,
    watch_p99_ms: Option<f64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("keel-bench-api: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // etcd is started from inside `block_on`, on this (the main) thread, which outlives it.
    match runtime.block_on(bench(&cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("keel-bench-api: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every store; true when every figure was measured.
async fn bench(cli: &Cli) -> Result<bool> {
    let mut stores = cli.stores.clone();
    stores.dedup();
    if stores.is_empty() {
        bail!("no store to measure");
    }
    let plan = Plan::new(cli.quick);
    progress!(
        "keel-bench-api: {} ({plan:?}); load average before: {}",
        if cli.quick { "quick" } else { "full" },
        load_average()
    );
    let mut rows = Vec::new();
    for backend in stores {
        rows.push(measure(backend, plan).await?);
    }
    print!("{}", table(&rows, cli.quick));
    println!("load average after: {}", load_average());
    if let Some(path) = &cli.json {
        write_json(path, &rows)?;
        println!("wrote {}", path.display());
    }
    Ok(rows.iter().all(|r| {
        r.creates_per_s.is_some()
            && r.list_10k_ms.is_some()
            && r.watch_p50_ms.is_some()
            && r.watch_p99_ms.is_some()
    }))
}

/// All phases on one store, on a fresh keel-control.
async fn measure(backend: Backend, plan: Plan) -> Result<Row> {
    let store = backend.name();
    progress!("{store}: starting keel-control");
    let cluster = Cluster::start(backend)
        .await
        .with_context(|| format!("starting keel-control on {store}"))?;
    let namespace = cluster
        .post(
            "/api/v1/namespaces",
            json!({"metadata": {"name": NAMESPACE}}),
        )
        .await;
    if namespace.status != StatusCode::CREATED {
        bail!(
            "{store}: creating namespace {NAMESPACE}: {} {}",
            namespace.status,
            namespace.body
        );
    }
    let api = cluster.api();
    let mut row = Row {
        store,
        creates_per_s: None,
        list_10k_ms: None,
        watch_p50_ms: None,
        watch_p99_ms: None,
    };

    // Creates: 16 clients for the phase's duration (or until the list's 10 000 pods exist).
    progress!(
        "{store}: creating pods with {CREATORS} clients for {:?}",
        plan.create_phase
    );
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + plan.create_phase;
    match create_pods(&api, &next, CREATORS, Some(deadline)).await {
        Ok((created, elapsed)) => {
            row.creates_per_s = Some(created as f64 / elapsed.as_secs_f64());
            progress!("{store}: {created} creates in {elapsed:.2?}");
        }
        Err(e) => progress!("{store}: create phase failed: {e:#}"),
    }

    // List: top the namespace up to 10 000 pods, then time full lists.
    let missing = LIST_PODS.saturating_sub(next.load(Ordering::Relaxed).min(LIST_PODS));
    progress!("{store}: creating the remaining {missing} of {LIST_PODS} pods");
    let filled = create_pods(&api, &next, CREATORS, None).await;
    match filled {
        Ok(_) => match time_lists(&api, plan.lists).await {
            Ok(ms) => {
                row.list_10k_ms = Some(ms);
                progress!("{store}: list of {LIST_PODS} pods: median {ms:.1} ms");
            }
            Err(e) => progress!("{store}: list phase failed: {e:#}"),
        },
        Err(e) => progress!("{store}: filling the namespace failed: {e:#}"),
    }

    // Watches: 100 watchers, creates one at a time.
    progress!(
        "{store}: {WATCHERS} watchers, {} creates one at a time",
        plan.watched_creates
    );
    match watch_latencies(&api, plan.watched_creates).await {
        Ok(mut delays) => {
            row.watch_p50_ms = percentile(&mut delays, 0.50);
            row.watch_p99_ms = percentile(&mut delays, 0.99);
            progress!(
                "{store}: {} deliveries, p50 {:.2} ms, p99 {:.2} ms",
                delays.len(),
                row.watch_p50_ms.unwrap_or(f64::NAN),
                row.watch_p99_ms.unwrap_or(f64::NAN)
            );
        }
        Err(e) => progress!("{store}: watch phase failed: {e:#}"),
    }

    cluster.stop().await;
    Ok(row)
}

/// A Pod as a user would write it (the API server adds defaults and status).
fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench", "tier": "load"}},
        "spec": {
            "containers": [{
                "name": "app",
                "image": "registry.k8s.io/pause:3.10",
                "ports": [{"containerPort": 8080}],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}
            }]
        }
    })
}

/// POSTs a pod; any answer but 201 Created is an error.
async fn create_pod(api: &ApiClient, name: &str) -> Result<()> {
    let body = serde_json::to_vec(&pod(name))?;
    let response = api
        .request(Method::POST, PODS)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("creating pod {name}"))?;
    let status = response.status();
    if status != StatusCode::CREATED {
        let text = response.text().await.unwrap_or_default();
        bail!("creating pod {name}: {status}: {text}");
    }
    // Read the reply, as a client does (the connection is reused only once it is drained).
    response.bytes().await.context("reading the created pod")?;
    Ok(())
}

/// `clients` tasks create pods `pod-00000`, `pod-00001`, … taking numbers from `next`, until
/// pod 9 999 exists or `deadline` passes. Returns how many they created and how long it took.
async fn create_pods(
    api: &ApiClient,
    next: &Arc<AtomicUsize>,
    clients: usize,
    deadline: Option<Instant>,
) -> Result<(usize, Duration)> {
    let started = Instant::now();
    // Dropping the set (on an error) stops the other clients.
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let api = api.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut created = 0usize;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= LIST_PODS {
                    break;
                }
                create_pod(&api, &format!("pod-{i:05}")).await?;
                created += 1;
            }
            anyhow::Ok(created)
        });
    }
    let mut created = 0;
    while let Some(done) = tasks.join_next().await {
        created += done.context("a creating task panicked")??;
    }
    Ok((created, started.elapsed()))
}

/// Times `count` full lists of the namespace (10 000 pods, JSON, no limit); the median in ms.
async fn time_lists(api: &ApiClient, count: usize) -> Result<f64> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let response = api
            .request(Method::GET, PODS)
            .header("Accept", "application/json")
            .send()
            .await
            .context("listing pods")?;
        let status = response.status();
        let body = response.bytes().await.context("reading the pod list")?;
        let elapsed = started.elapsed();
        if status != StatusCode::OK {
            bail!(
                "listing pods: {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(500)])
            );
        }
        let list: Value = serde_json::from_slice(&body).context("decoding the pod list")?;
        let items = list["items"].as_array().map_or(0, Vec::len);
        if items != LIST_PODS {
            bail!("the list has {items} pods, not {LIST_PODS}");
        }
        samples.push(elapsed.as_secs_f64() * 1000.0);
    }
    percentile(&mut samples, 0.5).context("no list was timed")
}

/// What a watcher saw: a pod's name and when the chunk carrying it arrived.
type Delivery = Result<(String, Instant)>;

/// Opens 100 watches, then creates pods one at a time, each after the previous reached every
/// watcher. Returns every delivery's delay (ms) from the start of its create request.
async fn watch_latencies(api: &ApiClient, creates: usize) -> Result<Vec<f64>> {
    let list = api
        .request(Method::GET, &format!("{PODS}?limit=1"))
        .send()
        .await
        .context("listing pods")?;
    let list: Value = list.json().await.context("decoding the pod list")?;
    let revision = list["metadata"]["resourceVersion"]
        .as_str()
        .context("the list has no resourceVersion")?
        .to_string();
    let (tx, mut deliveries) = mpsc::unbounded_channel::<Delivery>();
    let (ready_tx, mut ready) = mpsc::unbounded_channel::<()>();
    // Dropping the set stops the watchers, however this function ends.
    let mut watchers = JoinSet::new();
    for _ in 0..WATCHERS {
        let request = api
            .request(
                Method::GET,
                &format!("{PODS}?watch=true&resourceVersion={revision}&timeoutSeconds=1800"),
            )
            // The client's timeout covers whole responses; a watch lasts the phase.
            .timeout(Duration::from_secs(1800));
        watchers.spawn(watch(request, tx.clone(), ready_tx.clone()));
    }
    drop((tx, ready_tx));
    for _ in 0..WATCHERS {
        tokio::time::timeout(PATIENCE, ready.recv())
            .await
            .context("the watches did not open in time")?
            .context("a watcher stopped before its watch opened")?;
    }
    // A first create that every watcher must see: after it, all are streaming live.
    let warmup = "watch-warmup";
    create_pod(api, warmup).await?;
    collect(&mut deliveries, warmup).await?;

    let mut delays = Vec::with_capacity(creates * WATCHERS);
    for i in 0..creates {
        let name = format!("watch-{i:05}");
        let started = Instant::now();
        create_pod(api, &name).await?;
        for seen in collect(&mut deliveries, &name).await? {
            delays.push(seen.saturating_duration_since(started).as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(WATCH_SPACING).await;
    }
    Ok(delays)
}

/// Waits until every watcher delivered `name`; the arrival times.
async fn collect(
    deliveries: &mut mpsc::UnboundedReceiver<Delivery>,
    name: &str,
) -> Result<Vec<Instant>> {
    let mut seen = Vec::with_capacity(WATCHERS);
    while seen.len() < WATCHERS {
        let delivery = tokio::time::timeout(PATIENCE, deliveries.recv())
            .await
            .with_context(|| {
                format!(
                    "only {} of {WATCHERS} watchers saw {name} within {PATIENCE:?}",
                    seen.len()
                )
            })?
            .context("every watcher stopped")?;
        let (delivered, at) = delivery?;
        if delivered == name {
            seen.push(at);
        }
    }
    Ok(seen)
}

/// One watcher: reports readiness once the watch answered, then every ADDED pod's name with
/// the arrival time of the chunk that completed its line (or the error that ended it).
async fn watch(
    request: reqwest::RequestBuilder,
    deliveries: mpsc::UnboundedSender<Delivery>,
    ready: mpsc::UnboundedSender<()>,
) {
    if let Err(e) = stream_events(request, &deliveries, ready).await {
        let _ = deliveries.send(Err(e));
    }
}

async fn stream_events(
    request: reqwest::RequestBuilder,
    deliveries: &mpsc::UnboundedSender<Delivery>,
    ready: mpsc::UnboundedSender<()>,
) -> Result<()> {
    let response = request.send().await.context("opening a watch")?;
    if response.status() != StatusCode::OK {
        bail!("opening a watch: {}", response.status());
    }
    let _ = ready.send(());
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("reading a watch")?;
        let arrived = Instant::now();
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let event: Value = serde_json::from_slice(&line).context("decoding a watch event")?;
            match event["type"].as_str() {
                Some("ADDED") => {
                    let name = event["object"]["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    if deliveries.send(Ok((name, arrived))).is_err() {
                        return Ok(());
                    }
                }
                Some("ERROR") => bail!("the watch ended with {}", event["object"]),
                _ => {}
            }
        }
    }
    bail!("the watch ended early")
}

/// The nearest-rank percentile `p` (0..=1) of `samples` (sorted in place); `None` when empty.
fn percentile(samples: &mut [f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let rank = (p * samples.len() as f64).ceil() as usize;
    Some(samples[rank.clamp(1, samples.len()) - 1])
}

/// `/proc/loadavg`'s three averages (a loaded machine makes the figures noisy).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Reads one figure of a row.
type Figure = fn(&Row) -> Option<f64>;

/// The results as a table: one column per store, and etcd's figures over the embedded
/// store's when both ran.
fn table(rows: &[Row], quick: bool) -> String {
    let metrics: [(&str, Figure); 4] = [
        ("creates/s (16 clients)", |r| r.creates_per_s),
        ("list 10 000 pods, median ms", |r| r.list_10k_ms),
        ("watch delivery p50 ms (100 w.)", |r| r.watch_p50_ms),
        ("watch delivery p99 ms (100 w.)", |r| r.watch_p99_ms),
    ];
    let ratio = rows.len() == 2;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nkeel-control API benchmark{}",
        if quick { " (quick)" } else { "" }
    );
    let _ = write!(out, "{:<32}", "metric");
    for row in rows {
        let _ = write!(out, "{:>12}", row.store);
    }
    if ratio {
        let _ = write!(
            out,
            "{:>18}",
            format!("{}/{}", rows[1].store, rows[0].store)
        );
    }
    out.push('\n');
    for (label, get) in metrics {
        let _ = write!(out, "{label:<32}");
        for row in rows {
            let cell = get(row).map_or("failed".to_string(), |v| format!("{v:.1}"));
            let _ = write!(out, "{cell:>12}");
        }
        if ratio {
            let cell = match (get(&rows[0]), get(&rows[1])) {
                (Some(a), Some(b)) if a > 0.0 => format!("{:.2}x", b / a),
                _ => "-".to_string(),
            };
            let _ = write!(out, "{cell:>18}");
        }
        out.push('\n');
    }
    out.push_str(
        "watch delivery: from the start of the create request to each watcher's receipt\n",
    );
    out
}

fn write_json(path: &Path, rows: &[Row]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(rows)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples: Vec<f64> = (1..=100).map(f64::from).rev().collect();
        assert_eq!(percentile(&mut samples, 0.5), Some(50.0));
        assert_eq!(percentile(&mut samples, 0.99), Some(99.0));
        assert_eq!(percentile(&mut samples, 1.0), Some(100.0));
        assert_eq!(percentile(&mut [7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&mut [], 0.5), None);
    }
}
