//! The agent's streaming server (the kubelet's port 10250 role): container logs and
//! interactive exec, for the control plane only, which proxies `kubectl logs` and
//! `kubectl exec` to it.
//!
//! - [`cri_log`]: CRI log records: parsing, joining partial lines, tail, since, timestamps.
//! - `logs`: `GET /containerLogs/{namespace}/{pod}/{container}` (`follow`, `previous`,
//!   `tailLines`, `timestamps`, `sinceSeconds`, `sinceTime`, `limitBytes`).
//! - [`channel`]: the `v5.channel.k8s.io` / `v4.channel.k8s.io` WebSocket framing.
//! - `exec`: `GET /exec/{namespace}/{pod}/{container}?command=..&stdin=1&stdout=1&stderr=1&tty=1`
//!   upgraded to a WebSocket.
//! - [`tls`]: the serving certificate and client-certificate authentication.
//!
//! Trust, both ways:
//! - Clients must present a certificate signed by the cluster CA (`--client-ca`, keel-control's
//!   `ca.crt`) whose common name is in [`StreamingConfig::authorized_clients`] (keel-control's
//!   `kube-apiserver-kubelet-client`): no certificate → 401, another name → 403, a certificate
//!   the CA did not sign → the TLS handshake fails.
//! - The control plane checks the agent's serving certificate by its SHA-256, which the agent
//!   publishes in its Node's [`SERVING_CERT_ANNOTATION`] annotation (a self-signed certificate
//!   pinned through the API, which only authenticated clients write), or, for a certificate
//!   signed by the cluster CA ([`ServingCert::Files`]), by the CA.
//!
//! The exec contract with the runtime: [`crate::runtime::ExecSession::pid`] must be a child of
//! the agent process (the server reaps it with `waitpid` to learn the exit code), so nothing
//! else in the agent may reap with `waitpid(-1)`.
pub mod channel;
pub mod cri_log;
mod exec;
mod http;
mod logs;
pub mod tls;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::runtime::{ContainerId, Runtime, SandboxId};

/// The Node annotation carrying the lowercase hex SHA-256 of the agent's serving certificate
/// (DER), which the control plane pins when it connects.
pub const SERVING_CERT_ANNOTATION: &str = "keel.dev/serving-cert-sha256";

/// The default port (the kubelet's).
pub const DEFAULT_PORT: u16 = 10250;

/// The common name of the control plane's client certificate.
pub const CONTROL_PLANE_CLIENT: &str = "kube-apiserver-kubelet-client";

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum ServingCert {
    /// PEM files (e.g. a certificate signed by the cluster CA for the node's addresses).
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed certificate for `hosts` (node addresses and names), kept in `dir` so it
    /// (and its pin) survives restarts; `None` makes a new one on every start.
    SelfSigned {
        dir: Option<PathBuf>,
        hosts: Vec<String>,
    },
}

/// The streaming server's settings (the agent's `--streaming-port`, `--client-ca`, ...).
#[derive(Clone, Debug)]
pub struct StreamingConfig {
    /// Where to listen (`0.0.0.0:10250` by default; port 0 picks a free port).
    pub listen: SocketAddr,
    /// The CA (PEM) that signs the control plane's client certificate.
    pub client_ca: PathBuf,
    pub serving_cert: ServingCert,
    /// Client certificate common names allowed in.
    pub authorized_clients: Vec<String>,
}

impl StreamingConfig {
    /// Listens on `0.0.0.0:<port>` with a self-signed certificate (not kept), trusting
    /// `client_ca` for keel-control's client certificate.
    pub fn new(port: u16, client_ca: impl Into<PathBuf>) -> Self {
        StreamingConfig {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            client_ca: client_ca.into(),
            serving_cert: ServingCert::SelfSigned {
                dir: None,
                hosts: Vec::new(),
            },
            authorized_clients: vec![CONTROL_PLANE_CLIENT.to_string()],
        }
    }
}

/// A pod as the streaming server needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamPod {
    /// Its sandbox (the pod's uid), which with a container name and attempt names the log file
    /// ([`Runtime::log_path`]).
    pub sandbox: SandboxId,
    /// Its containers (init containers too).
    pub containers: Vec<StreamContainer>,
}

/// One container of a [`StreamPod`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamContainer {
    pub name: String,
    /// The current attempt's container, once created (`None` while waiting to start).
    pub id: Option<ContainerId>,
    /// The current attempt (0 first): its log is `<restart_count>.log`, `previous` reads
    /// `<restart_count - 1>.log`.
    pub restart_count: u32,
}

/// How the streaming server finds a pod's containers (the agent core implements it from its
/// pod state).
#[async_trait]
pub trait PodLookup: Send + Sync + 'static {
    /// The pod `namespace/name` if it runs on this node.
    async fn pod(&self, namespace: &str, name: &str) -> Option<StreamPod>;
}

/// Errors starting the streaming server.
#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    /// The listen address could not be bound.
    #[error("binding the streaming server to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A certificate or key could not be read, parsed or generated.
    #[error("streaming server certificate: {0}")]
    Certificate(String),
    /// The TLS configuration was refused.
    #[error("streaming server TLS: {0}")]
    Tls(String),
}

/// A running streaming server.
pub struct StreamingServer {
    addr: SocketAddr,
    cert_pem: String,
    cert_sha256: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl StreamingServer {
    /// The bound address (the real port when listening on port 0): the Node's
    /// `status.daemonEndpoints.kubeletEndpoint.Port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The serving certificate (PEM).
    pub fn serving_cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The value of the Node's [`SERVING_CERT_ANNOTATION`].
    pub fn serving_cert_sha256(&self) -> &str {
        &self.cert_sha256
    }

    /// Stops accepting and ends every open connection (running exec processes are left to
    /// the runtime).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for StreamingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds and starts serving; returns once the server accepts connections.
pub async fn serve(
    config: StreamingConfig,
    runtime: Arc<dyn Runtime>,
    lookup: Arc<dyn PodLookup>,
) -> Result<StreamingServer, StreamingError> {
    let tls = tls::setup(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StreamingError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StreamingError::Bind {
            addr: config.listen,
            source,
        })?;
    let shared = Arc::new(http::Shared {
        runtime,
        lookup,
        authorized_clients: config.authorized_clients.clone(),
    });
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let task = tokio::spawn(http::accept_loop(
        listener,
        tls.acceptor,
        shared,
        shutdown_rx,
    ));
    tracing::info!(%addr, cert_sha256 = %tls.cert_sha256, "streaming server listening");
    Ok(StreamingServer {
        addr,
        cert_pem: tls.cert_pem,
        cert_sha256: tls.cert_sha256,
        shutdown: Some(shutdown_tx),
        task,
    })
}
