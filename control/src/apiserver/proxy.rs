//! The streaming subresources of pods, proxied to the node agent that runs the pod:
//! `pods/log` (plain text, streamed while `follow` lasts) and `pods/exec` (a WebSocket bridged
//! frame by frame to the agent's, the `v5`/`v4.channel.k8s.io` subprotocol passed through).
//!
//! The agent is found from the pod's `spec.nodeName`: the Node's InternalIP (else ExternalIP,
//! else Hostname) and `status.daemonEndpoints.kubeletEndpoint.Port` (10250 by default).
//! keel-control authenticates with its `kube-apiserver-kubelet-client` certificate (see
//! [`crate::pki`]). It checks the agent's serving certificate by the SHA-256 pin the agent
//! publishes in the Node's [`SERVING_CERT_ANNOTATION`] annotation (agents serve with a
//! self-signed certificate by default), or, without a matching pin, against the cluster CA
//! (for agents given a CA-signed certificate naming the node's address). Verification is never
//! skipped: an agent that matches neither is refused with a 502 saying why.
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Body as HttpBody;
use axum::http::header::{
    CONNECTION, CONTENT_TYPE, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::registry;
use super::request::Query;
use super::status::{ApiError, ApiResult, Details};
use super::storage::Api;

/// The Node annotation with the lowercase hex SHA-256 of its agent's serving certificate
/// (the agent's `keel_agent::streaming::SERVING_CERT_ANNOTATION`).
pub const SERVING_CERT_ANNOTATION: &str = "keel.dev/serving-cert-sha256";
/// The agent port when the Node doesn't publish one (the kubelet's).
pub const DEFAULT_AGENT_PORT: u16 = 10250;
/// How long connecting (TCP and TLS) to an agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The PodLogOptions passed on to the agent.
const LOG_OPTIONS: &[&str] = &[
    "follow",
    "previous",
    "tailLines",
    "timestamps",
    "sinceSeconds",
    "sinceTime",
    "limitBytes",
];
/// The PodExecOptions passed on to the agent.
const EXEC_OPTIONS: &[&str] = &["command", "stdin", "stdout", "stderr", "tty"];

/// Connects to node agents as the API server.
pub struct NodeClient {
    provider: Arc<CryptoProvider>,
    ca: Arc<WebPkiServerVerifier>,
    cert: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl NodeClient {
    /// A client trusting `ca_pem` (besides pins) and presenting `cert_pem`/`key_pem`.
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> anyhow::Result<NodeClient> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(cert.context("parsing the cluster CA")?)
                .context("adding the cluster CA")?;
        }
        let ca = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .context("building the agent certificate verifier")?;
        let cert = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("parsing the kubelet client certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .context("parsing the kubelet client key")?;
        Ok(NodeClient {
            provider,
            ca,
            cert,
            key,
        })
    }

    fn tls_config(&self, endpoint: &Endpoint) -> ApiResult<Arc<rustls::ClientConfig>> {
        let verifier = AgentVerifier {
            node: endpoint.node.clone(),
            pin: endpoint.pin,
            ca: self.ca.clone(),
            provider: self.provider.clone(),
        };
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ApiError::internal(format!("TLS protocol versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.cert.clone(), self.key.clone_key())
            .map_err(|e| ApiError::internal(format!("the kubelet client certificate: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Opens a TLS connection to the agent.
    async fn connect(&self, endpoint: &Endpoint) -> ApiResult<TlsStream<TcpStream>> {
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
        )
        .await
        .map_err(|_| endpoint.unreachable("connecting timed out"))?
        .map_err(|e| endpoint.unreachable(&format!("connecting: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let server_name = ServerName::try_from(endpoint.host.clone())
            .map_err(|e| endpoint.unreachable(&format!("invalid address: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(self.tls_config(endpoint)?);
        tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(server_name, tcp))
            .await
            .map_err(|_| endpoint.unreachable("the TLS handshake timed out"))?
            .map_err(|e| endpoint.unreachable(&format!("TLS handshake: {e}")))
    }

    /// One plain HTTP/1.1 request to the agent; the response body streams.
    async fn get(
        &self,
        endpoint: &Endpoint,
        path_and_query: &str,
    ) -> ApiResult<hyper::Response<hyper::body::Incoming>> {
        let tls = self.connect(endpoint).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| endpoint.unreachable(&format!("HTTP: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "agent connection ended with an error");
            }
        });
        let request = Request::get(path_and_query)
            .header(HOST, endpoint.authority())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| ApiError::internal(format!("building the agent request: {e}")))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| endpoint.unreachable(&format!("HTTP: {e}")))
    }
}

/// Accepts the agent's certificate if it is the one pinned on its Node, or else if the
/// cluster CA signed it for the address dialled.
#[derive(Debug)]
struct AgentVerifier {
    node: String,
    pin: Option<[u8; 32]>,
    ca: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AgentVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if self.pin == Some(digest) {
            return Ok(ServerCertVerified::assertion());
        }
        self.ca
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| {
                rustls::Error::General(format!(
                    "the agent's serving certificate is neither the one pinned in node {}'s \
                     {SERVING_CERT_ANNOTATION} annotation ({}) nor valid under the cluster CA ({e})",
                    self.node,
                    if self.pin.is_some() { "a different one is pinned" } else { "none is" },
                ))
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Where a node's agent listens, and what certificate it is pinned to.
#[derive(Clone, Debug)]
struct Endpoint {
    node: String,
    host: String,
    port: u16,
    pin: Option<[u8; 32]>,
}

impl Endpoint {
    fn authority(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }

    /// 502: the agent could not be reached (or refused keel-control).
    fn unreachable(&self, why: &str) -> ApiError {
        bad_gateway(format!(
            "the agent of node \"{}\" at {} is unreachable: {why}",
            self.node,
            self.authority()
        ))
    }
}

fn bad_gateway(message: String) -> ApiError {
    ApiError {
        code: 502,
        reason: "ServiceUnavailable",
        message,
        details: Box::new(Details::default()),
    }
}

/// The container a request is about and the agent to ask.
#[derive(Debug)]
struct Target {
    namespace: String,
    pod: String,
    container: String,
    endpoint: Endpoint,
}

fn names<'a>(pod: &'a Value, list: &str) -> Vec<&'a str> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

/// Picks the container like kube-apiserver does: the one named, else the only one.
fn pick_container(pod: &Value, name: &str, asked: Option<&str>) -> ApiResult<String> {
    let containers = names(pod, "containers");
    let init = names(pod, "initContainers");
    let ephemeral = names(pod, "ephemeralContainers");
    match asked.filter(|c| !c.is_empty()) {
        Some(asked) => {
            if containers
                .iter()
                .chain(&init)
                .chain(&ephemeral)
                .any(|c| *c == asked)
            {
                Ok(asked.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {asked} is not valid for pod {name}"
                )))
            }
        }
        None if containers.len() == 1 => Ok(containers[0].to_string()),
        None => {
            let mut message = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                message.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::bad_request(message))
        }
    }
}

/// The agent endpoint of a Node object.
fn endpoint_of(node_name: &str, node: &Value) -> ApiResult<Endpoint> {
    let addresses = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let address_of = |kind: &str| {
        addresses
            .iter()
            .find(|a| a.get("type").and_then(Value::as_str) == Some(kind))
            .and_then(|a| a.get("address").and_then(Value::as_str))
            .filter(|a| !a.is_empty())
            .map(str::to_string)
    };
    let host = address_of("InternalIP")
        .or_else(|| address_of("ExternalIP"))
        .or_else(|| address_of("Hostname"))
        .ok_or_else(|| {
            bad_gateway(format!(
                "node \"{node_name}\" has no address in status.addresses to reach its agent at"
            ))
        })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .filter(|p| (1..=u64::from(u16::MAX)).contains(p))
        .map(|p| p as u16)
        .unwrap_or(DEFAULT_AGENT_PORT);
    let pin = node
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(SERVING_CERT_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|hex| {
            let pin = parse_sha256(hex);
            if pin.is_none() {
                tracing::warn!(
                    node = node_name,
                    value = hex,
                    "ignoring a malformed {SERVING_CERT_ANNOTATION} annotation"
                );
            }
            pin
        });
    Ok(Endpoint {
        node: node_name.to_string(),
        host,
        port,
        pin,
    })
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Reads the pod and its node: the container and the agent endpoint.
async fn resolve(api: &Api, namespace: &str, name: &str, query: &Query) -> ApiResult<Target> {
    let pods = registry::by_kind("Pod").ok_or_else(|| ApiError::internal("pods are not served"))?;
    let nodes =
        registry::by_kind("Node").ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let pod = api.get(pods, Some(namespace), name).await?;
    let container = pick_container(&pod, name, query.get("container"))?;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!("pod {name} does not have a host assigned"))
        })?;
    let node = match api.get(nodes, None, node_name).await {
        Ok(node) => node,
        Err(e) if e.code == 404 => {
            return Err(bad_gateway(format!(
                "node \"{node_name}\" of pod {name} does not exist"
            )));
        }
        Err(e) => return Err(e),
    };
    Ok(Target {
        namespace: namespace.to_string(),
        pod: name.to_string(),
        container,
        endpoint: endpoint_of(node_name, &node)?,
    })
}

/// The agent path for `kind` (`containerLogs`, `exec`) with the options in `keys` passed on.
fn agent_path(kind: &str, target: &Target, query: &Query, keys: &[&str]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for key in keys {
        for value in query.all(key) {
            serializer.append_pair(key, value);
        }
    }
    let encoded = serializer.finish();
    let path = format!(
        "/{kind}/{}/{}/{}",
        target.namespace, target.pod, target.container
    );
    if encoded.is_empty() {
        path
    } else {
        format!("{path}?{encoded}")
    }
}

/// Maps a failure answered by the agent to the client's error: its `Status` as is, except
/// that a refusal of keel-control's own credentials is the server's problem (502), not the
/// client's.
fn agent_error(endpoint: &Endpoint, code: u16, body: &[u8]) -> ApiError {
    let status: Option<Value> = serde_json::from_slice(body)
        .ok()
        .filter(|v: &Value| v.get("kind").and_then(Value::as_str) == Some("Status"));
    let message = status
        .as_ref()
        .and_then(|s| s.get("message").and_then(Value::as_str))
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    if code == 401 || code == 403 {
        return endpoint.unreachable(&format!("it refused keel-control ({code}): {message}"));
    }
    let reason = match status
        .as_ref()
        .and_then(|s| s.get("reason").and_then(Value::as_str))
    {
        Some("BadRequest") => "BadRequest",
        Some("NotFound") => "NotFound",
        Some("MethodNotAllowed") => "MethodNotAllowed",
        _ if code == 400 => "BadRequest",
        _ if code == 404 => "NotFound",
        _ => "InternalError",
    };
    ApiError {
        code,
        reason,
        message,
        details: Box::new(Details::default()),
    }
}

/// `GET pods/{name}/log`.
pub async fn logs(
    api: &Api,
    client: &NodeClient,
    namespace: &str,
    name: &str,
    query: &Query,
) -> ApiResult<Response> {
    let target = resolve(api, namespace, name, query).await?;
    let path = agent_path("containerLogs", &target, query, LOG_OPTIONS);
    let response = client.get(&target.endpoint, &path).await?;
    let code = response.status();
    if !code.is_success() {
        let body = http_body_util::Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        return Err(agent_error(&target.endpoint, code.as_u16(), &body));
    }
    let mut out = Response::new(HttpBody::new(response.into_body()));
    out.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(out)
}

/// `GET|POST pods/{name}/exec`: a WebSocket bridged to the agent's.
#[allow(clippy::too_many_arguments)]
pub async fn exec(
    api: &Api,
    client: &NodeClient,
    method: &Method,
    namespace: &str,
    name: &str,
    query: &Query,
    headers: &HeaderMap,
    upgrade: Option<OnUpgrade>,
) -> ApiResult<Response> {
    if query.all("command").next().is_none() {
        return Err(ApiError::bad_request(
            "you must specify at least one command for the container",
        ));
    }
    if !["stdin", "stdout", "stderr"]
        .iter()
        .any(|s| query.flag(s).unwrap_or(false))
    {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    for flag in ["stdin", "stdout", "stderr", "tty"] {
        query.flag(flag)?;
    }
    let target = resolve(api, namespace, name, query).await?;
    let is_websocket = method == Method::GET
        && headers
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_websocket {
        // Most likely SPDY (kubectl's fallback after a failed WebSocket attempt): report an
        // unreachable agent as such, since that is why the WebSocket attempt failed.
        let health = client.get(&target.endpoint, "/healthz").await?;
        if !health.status().is_success() {
            let code = health.status().as_u16();
            let body = http_body_util::Limited::new(health.into_body(), 64 * 1024)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(agent_error(&target.endpoint, code, &body));
        }
        return Err(ApiError::bad_request(
            "exec is served over WebSocket only (subprotocols v5.channel.k8s.io, v4.channel.k8s.io): \
             SPDY is not supported; use kubectl 1.30 or newer",
        ));
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))?;
    let accept = derive_accept_key(key.as_bytes());
    let offered: Vec<&str> = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let upgrade = upgrade.ok_or_else(|| {
        ApiError::bad_request("this connection cannot be upgraded (HTTP/2?): use HTTP/1.1 for exec")
    })?;

    let path = agent_path("exec", &target, query, EXEC_OPTIONS);
    let endpoint = &target.endpoint;
    let tls = client.connect(endpoint).await?;
    let mut request = format!("wss://{}{path}", endpoint.authority())
        .into_client_request()
        .map_err(|e| ApiError::internal(format!("building the agent request: {e}")))?;
    if !offered.is_empty() {
        let value = HeaderValue::from_str(&offered.join(", "))
            .map_err(|_| ApiError::bad_request("malformed Sec-WebSocket-Protocol"))?;
        request.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, value);
    }
    let (agent, agent_response) = match tokio_tungstenite::client_async(request, tls).await {
        Ok(connected) => connected,
        Err(WsError::Http(response)) => {
            let code = response.status().as_u16();
            let body = response.body().clone().unwrap_or_default();
            return Err(agent_error(endpoint, code, &body));
        }
        Err(e) => return Err(endpoint.unreachable(&format!("WebSocket: {e}"))),
    };
    let protocol = agent_response
        .headers()
        .get(SEC_WEBSOCKET_PROTOCOL)
        .cloned();

    let (pod, node) = (target.pod.clone(), endpoint.node.clone());
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let client =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                bridge(client, agent).await;
                tracing::debug!(pod, node, "exec session ended");
            }
            Err(e) => tracing::debug!(pod, error = %e, "exec: the client's upgrade failed"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let out = response.headers_mut();
    out.insert(UPGRADE, HeaderValue::from_static("websocket"));
    out.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        out.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol {
        out.insert(SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    Ok(response)
}

/// Relays data messages both ways until either side closes (the close is passed on; pings
/// are answered on each hop).
async fn bridge<C, A>(client: WebSocketStream<C>, agent: WebSocketStream<A>)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut client_tx, mut client_rx) = client.split();
    let (mut agent_tx, mut agent_rx) = agent.split();
    let upstream = async move {
        while let Some(Ok(message)) = client_rx.next().await {
            match message {
                Message::Binary(_) | Message::Text(_) => {
                    if agent_tx.send(message).await.is_err() {
                        break;
                    }
                }
                Message::Close(frame) => {
                    let _ = agent_tx.send(Message::Close(frame)).await;
                    break;
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        let _ = agent_tx.close().await;
    };
    let downstream = async move {
        while let Some(Ok(message)) = agent_rx.next().await {
            match message {
                Message::Binary(_) | Message::Text(_) => {
                    if client_tx.send(message).await.is_err() {
                        break;
                    }
                }
                Message::Close(frame) => {
                    let _ = client_tx.send(Message::Close(frame)).await;
                    break;
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        let _ = client_tx.close().await;
    };
    let mut upstream = tokio::spawn(upstream);
    let mut downstream = tokio::spawn(downstream);
    // When one side is done the other gets a moment to finish its close handshake.
    let grace = Duration::from_secs(10);
    tokio::select! {
        _ = &mut upstream => {
            if tokio::time::timeout(grace, &mut downstream).await.is_err() {
                downstream.abort();
            }
        }
        _ = &mut downstream => {
            if tokio::time::timeout(grace, &mut upstream).await.is_err() {
                upstream.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(containers: &[&str], init: &[&str]) -> Value {
        let c: Vec<Value> = containers.iter().map(|n| json!({"name": n})).collect();
        let i: Vec<Value> = init.iter().map(|n| json!({"name": n})).collect();
        json!({"spec": {"containers": c, "initContainers": i}})
    }

    #[test]
    fn picks_the_container_like_kube_apiserver() {
        assert_eq!(pick_container(&pod(&["a"], &[]), "p", None).unwrap(), "a");
        assert_eq!(
            pick_container(&pod(&["a", "b"], &[]), "p", Some("b")).unwrap(),
            "b"
        );
        assert_eq!(
            pick_container(&pod(&["a"], &["setup"]), "p", Some("setup")).unwrap(),
            "setup"
        );
        let e = pick_container(&pod(&["a", "b"], &[]), "p", None).unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "a container name must be specified for pod p, choose one of: [a b]"
        );
        let e = pick_container(&pod(&["a", "b"], &["i"]), "p", Some("")).unwrap_err();
        assert!(
            e.message.ends_with("or one of the init containers: [i]"),
            "{}",
            e.message
        );
        let e = pick_container(&pod(&["a"], &[]), "p", Some("zz")).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "container zz is not valid for pod p")
        );
    }

    #[test]
    fn finds_the_agent_endpoint_of_a_node() {
        let pin = "ab".repeat(32);
        let node = json!({
            "metadata": {"annotations": {SERVING_CERT_ANNOTATION: pin}},
            "status": {
                "addresses": [
                    {"type": "Hostname", "address": "n1"},
                    {"type": "InternalIP", "address": "10.0.0.7"},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 12345}},
            },
        });
        let e = endpoint_of("n1", &node).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("10.0.0.7", 12345));
        assert_eq!(e.pin, Some([0xab; 32]));
        assert_eq!(e.authority(), "10.0.0.7:12345");
        let bare = json!({"status": {"addresses": [{"type": "Hostname", "address": "n2"}]}});
        let e = endpoint_of("n2", &bare).unwrap();
        assert_eq!((e.host.as_str(), e.port, e.pin), ("n2", 10250, None));
        let e = endpoint_of("n3", &json!({})).unwrap_err();
        assert_eq!(e.code, 502);
        assert!(parse_sha256("xyz").is_none());
        assert!(parse_sha256(&"g".repeat(64)).is_none());
    }

    #[test]
    fn passes_options_on_to_the_agent() {
        let target = Target {
            namespace: "ns".into(),
            pod: "p".into(),
            container: "c".into(),
            endpoint: Endpoint {
                node: "n".into(),
                host: "127.0.0.1".into(),
                port: 1,
                pin: None,
            },
        };
        let query = Query::parse(Some(
            "container=c&command=sh&command=-c&command=echo+a%26b&stdin=true&stdout=true&bogus=1",
        ));
        assert_eq!(
            agent_path("exec", &target, &query, EXEC_OPTIONS),
            "/exec/ns/p/c?command=sh&command=-c&command=echo+a%26b&stdin=true&stdout=true"
        );
        let query = Query::parse(Some("container=c&follow=true&tailLines=3"));
        assert_eq!(
            agent_path("containerLogs", &target, &query, LOG_OPTIONS),
            "/containerLogs/ns/p/c?follow=true&tailLines=3"
        );
    }

    #[test]
    fn agent_errors_keep_their_status_except_refusals() {
        let endpoint = Endpoint {
            node: "n".into(),
            host: "10.0.0.1".into(),
            port: 10250,
            pin: None,
        };
        let body = br#"{"kind":"Status","status":"Failure","reason":"BadRequest","message":"previous terminated container \"c\" in pod \"p\" not found","code":400}"#;
        let e = agent_error(&endpoint, 400, body);
        assert_eq!((e.code, e.reason), (400, "BadRequest"));
        assert!(e.message.starts_with("previous terminated container"));
        let e = agent_error(
            &endpoint,
            401,
            b"{\"kind\":\"Status\",\"message\":\"Unauthorized\"}",
        );
        assert_eq!(e.code, 502);
        assert!(e.message.contains("refused keel-control"), "{}", e.message);
        let e = agent_error(&endpoint, 500, b"boom");
        assert_eq!(
            (e.code, e.reason, e.message.as_str()),
            (500, "InternalError", "boom")
        );
    }
}
