//! Running the control plane: configuration, the store backend, credentials, the store's
//! periodic compaction, and the HTTPS server (rustls) with authentication, metrics, logs and
//! health endpoints in front of the API handlers.
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use ipnet::Ipv4Net;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::apiserver::allocator::ServiceAllocator;
use crate::apiserver::handlers::{self, Handler, RequestInfo};
use crate::apiserver::proxy::NodeClient;
use crate::apiserver::storage::Api;
use crate::apiserver::{discovery, namespaces, openapi};
use crate::controllers::{ControllerConfig, Controllers};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::embedded::EmbeddedStore;
use crate::store::etcd::EtcdStore;
use crate::{compactor, pki};

/// Which store backend to use.
#[derive(Clone, Debug)]
pub enum StoreBackend {
    /// redb in the data dir (`store.redb`).
    Embedded,
    /// An etcd cluster.
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
}

/// The control plane's configuration (the `keel-control` flags).
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub service_cidr: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
    pub store: StoreBackend,
    /// Serve plain HTTP (debugging only; the token is still required).
    pub insecure_http: bool,
    /// How often the store's history is compacted (see [`compactor`]); zero disables it.
    pub compaction_interval: Duration,
    /// The controllers and scheduler (run while this process holds the leader lease);
    /// `None` serves the API only.
    pub controllers: Option<ControllerConfig>,
    /// `tolerationSeconds` of the default not-ready/unreachable tolerations of new pods: how
    /// long pods stay on a failed node before eviction (Kubernetes' 300 s by default).
    pub default_toleration_seconds: i64,
}

impl Config {
    /// Defaults for a data dir: 127.0.0.1:6443, embedded store, Kubernetes' default CIDRs,
    /// compaction every 5 minutes.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 6443)),
            data_dir: data_dir.into(),
            service_cidr: "10.96.0.0/12".parse().expect("valid CIDR"),
            cluster_cidr: "10.244.0.0/16".parse().expect("valid CIDR"),
            store: StoreBackend::Embedded,
            insecure_http: false,
            compaction_interval: compactor::DEFAULT_INTERVAL,
            controllers: Some(ControllerConfig::new(
                "10.244.0.0/16".parse().expect("valid CIDR"),
            )),
            default_toleration_seconds: 300,
        }
    }
}

/// A running control plane.
pub struct Running {
    /// The bound address (the real port when listening on port 0).
    pub addr: SocketAddr,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// `DATA_DIR/admin.kubeconfig`.
    pub kubeconfig: PathBuf,
    /// The cluster CA (PEM) clients trust.
    pub ca_pem: String,
    /// The admin bearer token.
    pub token: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<()>>,
    compactor: Option<JoinHandle<()>>,
    controllers: Option<Controllers>,
    api: Arc<Api>,
    cluster_cidr: Ipv4Net,
}

impl Running {
    /// The API layer (for in-process tools: benchmarks, tests).
    pub fn api(&self) -> Arc<Api> {
        self.api.clone()
    }

    /// Starts the controllers now (for a server started with `controllers: None`, e.g. a
    /// benchmark that stores its pending pods first); no-op when they already run.
    pub fn start_controllers(&mut self, mut config: ControllerConfig) {
        if self.controllers.is_none() {
            config.cluster_cidr = self.cluster_cidr;
            self.controllers = Some(Controllers::spawn(self.api.clone(), config));
        }
    }

    /// Stops accepting, lets in-flight requests finish briefly, and waits for the server.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(compactor) = self.compactor.take() {
            compactor.abort();
            let _ = compactor.await;
        }
        if let Some(controllers) = self.controllers.take() {
            controllers.stop().await;
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.context("server task panicked")?
    }
}

struct AppState {
    handler: Handler,
    token: String,
    metrics: Metrics,
    store: Arc<dyn Store>,
}

async fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    Ok(match &config.store {
        StoreBackend::Embedded => {
            let dir = config.data_dir.clone();
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir))
                .await
                .context("opening the embedded store")??;
            Arc::new(store)
        }
        StoreBackend::Etcd { endpoints, prefix } => Arc::new(
            EtcdStore::connect(endpoints, prefix)
                .await
                .context("connecting to etcd")?,
        ),
    })
}

/// Starts the control plane on `config.listen` and returns once it accepts connections.
pub async fn start(config: Config) -> Result<Running> {
    let store = open_store(&config).await?;
    start_with_store(config, store).await
}

/// Like [`start`], with an already opened store.
pub async fn start_with_store(config: Config, store: Arc<dyn Store>) -> Result<Running> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let client_ip: IpAddr = if addr.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        addr.ip()
    };
    let scheme = if config.insecure_http {
        "http"
    } else {
        "https"
    };
    let host = match client_ip {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    let url = format!("{scheme}://{host}:{}", addr.port());

    let services = ServiceAllocator::new(config.service_cidr);
    let mut hosts = vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        client_ip.to_string(),
        services.first_ip().to_string(),
    ];
    hosts.extend(
        [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .map(String::from),
    );
    if !addr.ip().is_unspecified() {
        hosts.push(addr.ip().to_string());
    }
    if let Some(name) = pki::hostname() {
        hosts.push(name);
    }
    let credentials = pki::load_or_create(&config.data_dir, &hosts)?;
    let kubeconfig = pki::write_kubeconfig(&config.data_dir, &url, &credentials)?;

    let api = Api::new(store.clone(), services);
    api.set_default_toleration_seconds(config.default_toleration_seconds);
    let state_api = api.clone();
    api.bootstrap().await?;
    namespaces::resume(&api)
        .await
        .map_err(|e| anyhow::anyhow!("resuming namespace cleanup: {e}"))?;

    let api_handle = state_api.clone();
    let state = Arc::new(AppState {
        handler: Handler {
            api,
            server_address: format!("{host}:{}", addr.port()),
            nodes: Arc::new(NodeClient::new(
                &credentials.ca_pem,
                &credentials.kubelet_client_cert_pem,
                &credentials.kubelet_client_key_pem,
            )?),
        },
        token: credentials.admin_token.clone(),
        metrics: Metrics::default(),
        store: store.clone(),
    });
    let app = Router::new()
        .fallback(dispatch)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            authenticate_and_observe,
        ))
        .with_state(state);

    let tls = if config.insecure_http {
        None
    } else {
        Some(tls_acceptor(&credentials)?)
    };
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let task = tokio::spawn(serve(listener, app, tls, shutdown_rx));
    let compactor = compactor::spawn(store, config.compaction_interval);
    let controllers = config.controllers.clone().map(|mut controllers| {
        controllers.cluster_cidr = config.cluster_cidr;
        Controllers::spawn(api_handle.clone(), controllers)
    });
    tracing::info!(%url, data_dir = %config.data_dir.display(), "API server started");
    Ok(Running {
        addr,
        url,
        kubeconfig,
        ca_pem: credentials.ca_pem.clone(),
        token: credentials.admin_token.clone(),
        shutdown: Some(shutdown_tx),
        task,
        compactor,
        controllers,
        api: api_handle,
        cluster_cidr: config.cluster_cidr,
    })
}

/// Runs the control plane until `shutdown` resolves. Prints
/// `keel-control listening on <url>` on stdout once ready.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let running = start(config).await?;
    println!("keel-control listening on {}", running.url);
    println!("kubeconfig: {}", running.kubeconfig.display());
    shutdown.await;
    tracing::info!("shutting down");
    running.stop().await
}

fn tls_acceptor(credentials: &pki::Credentials) -> Result<tokio_rustls::TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(credentials.server_cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .context("parsing the serving certificate")?;
    let key = PrivateKeyDer::from_pem_slice(credentials.server_key_pem.as_bytes())
        .context("parsing the serving key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("TLS serving certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: oneshot::Receiver<()>,
) -> Result<()> {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    // Connection tasks, so that a stop ends them all (they hold the API and its store).
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        connections.spawn(async move {
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(stream)) => {
                            watcher
                                .watch(
                                    builder
                                        .serve_connection_with_upgrades(
                                            TokioIo::new(stream),
                                            service,
                                        )
                                        .into_owned(),
                                )
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => {
                    watcher
                        .watch(
                            builder
                                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                                .into_owned(),
                        )
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Watches never finish by themselves: give requests a moment, then drop the rest.
    if tokio::time::timeout(Duration::from_secs(2), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("closing connections still open after the grace period");
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Paths served without a token (like Kubernetes' system:public-info-viewer).
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/version" | "/version/" | "/healthz" | "/livez" | "/readyz"
    ) || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
}

/// Constant-time comparison of the presented token.
fn token_matches(presented: &str, expected: &str) -> bool {
    presented.len() == expected.len()
        && presented
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn authenticate_and_observe(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let authorized = is_public(&path)
        || request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| token_matches(t.trim(), &state.token));
    let response = if authorized {
        next.run(request).await
    } else {
        handlers::unauthorized()
    };
    let code = response.status().as_u16();
    let (verb, resource) = match response.extensions().get::<RequestInfo>() {
        Some(info) => (info.verb, info.resource.clone()),
        None => (
            if method == Method::GET {
                "GET"
            } else {
                "OTHER"
            },
            String::new(),
        ),
    };
    let elapsed = started.elapsed();
    state
        .metrics
        .observe(verb, &resource, code, elapsed.as_secs_f64());
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    if code >= 500 {
        tracing::warn!(%method, %path, verb, resource, code, latency_ms, "request failed");
    } else if matches!(verb, "GET" | "LIST" | "WATCH") {
        tracing::debug!(%method, %path, verb, resource, code, latency_ms, "request");
    } else {
        tracing::info!(%method, %path, verb, resource, code, latency_ms, "request");
    }
    response
}

fn text(code: StatusCode, body: &'static str) -> Response {
    (
        code,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

async fn dispatch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path();
    match path {
        "/healthz" | "/livez" => text(StatusCode::OK, "ok"),
        "/readyz" => match state.store.current_revision().await {
            Ok(_) => text(StatusCode::OK, "ok"),
            Err(e) => {
                tracing::warn!(error = %e, "readiness check: store unavailable");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "[-]store failed: unavailable\nreadyz check failed",
                )
            }
        },
        "/version" | "/version/" => axum::Json(discovery::version()).into_response(),
        "/metrics" => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            state.metrics.encode(),
        )
            .into_response(),
        "/openapi/v3" | "/openapi/v3/" => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            openapi::root(),
        )
            .into_response(),
        p if p.starts_with("/openapi/v3/") => {
            match openapi::group_version(&p["/openapi/v3/".len()..]) {
                Some((doc, hash)) => {
                    let immutable = parts
                        .uri
                        .query()
                        .is_some_and(|q| q.contains(&format!("hash={hash}")));
                    let cache = if immutable {
                        "public, immutable"
                    } else {
                        "no-cache, private"
                    };
                    (
                        StatusCode::OK,
                        [
                            (header::CONTENT_TYPE, "application/json"),
                            (header::CACHE_CONTROL, cache),
                            (header::ETAG, &format!("\"{hash}\"")),
                        ],
                        doc,
                    )
                        .into_response()
                }
                None => handlers::not_found(),
            }
        }
        p if p == "/api" || p == "/apis" || p.starts_with("/api/") || p.starts_with("/apis/") => {
            state
                .handler
                .handle(
                    parts.method,
                    &parts.uri,
                    &parts.headers,
                    Body::new(body),
                    parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
                )
                .await
        }
        _ => handlers::not_found(),
    }
}
