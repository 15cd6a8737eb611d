//! The streaming server's HTTP layer: TLS accept, client authorization, routing, and the
//! Kubernetes `Status` errors every failure is answered with.
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::tls::{self, ClientIdentity};
use super::{PodLookup, exec, logs};
use crate::runtime::Runtime;

/// What every request handler shares.
pub(crate) struct Shared {
    pub runtime: Arc<dyn Runtime>,
    pub lookup: Arc<dyn PodLookup>,
    pub authorized_clients: Vec<String>,
}

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A streamed response body fed by a channel (ends when the sender is dropped).
pub(crate) struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A `Status` failure response, as the API server would write it.
pub(crate) fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Response<Body> {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message.into(),
        "reason": reason,
        "code": code.as_u16(),
    });
    let mut response = Response::new(full(serde_json::to_vec(&body).unwrap_or_default()));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn bad_request(message: impl Into<String>) -> Response<Body> {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

pub(crate) fn not_found(message: impl Into<String>) -> Response<Body> {
    status(StatusCode::NOT_FOUND, "NotFound", message)
}

/// The query string as ordered key/value pairs.
#[derive(Clone, Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        Query(
            query
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// A boolean (`1`/`true`, `0`/`false`, absent: false); anything else is an error message.
    pub fn flag(&self, key: &str) -> Result<bool, String> {
        match self.get(key) {
            None | Some("") | Some("0") | Some("false") | Some("False") => Ok(false),
            Some("1") | Some("true") | Some("True") => Ok(true),
            Some(other) => Err(format!(
                "invalid value for {key}: {other:?} is not a boolean"
            )),
        }
    }

    /// An integer, if given; malformed values are an error message.
    pub fn int(&self, key: &str) -> Result<Option<i64>, String> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("invalid value for {key}: {v:?} is not an integer")),
        }
    }
}

/// Accepts connections until `shutdown`; each connection is served on its own task.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "streaming server: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        connections.spawn(async move {
            let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "streaming server: TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "streaming server: TLS handshake timed out");
                    return;
                }
            };
            let identity = tls::client_identity(stream.get_ref().1);
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                let identity = identity.clone();
                async move { Ok::<_, Infallible>(route(shared, identity, request).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await
            {
                tracing::debug!(%peer, error = %e, "streaming connection ended with an error");
            }
        });
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Authorizes and dispatches one request.
async fn route(
    shared: Arc<Shared>,
    identity: Option<ClientIdentity>,
    request: Request<Incoming>,
) -> Response<Body> {
    let Some(identity) = identity else {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized: the streaming server requires a client certificate signed by the cluster CA",
        );
    };
    if !shared.authorized_clients.contains(&identity.common_name) {
        tracing::info!(client = %identity.common_name, "streaming server: client refused");
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "Forbidden: user \"{}\" may not use the node's streaming endpoints",
                identity.common_name
            ),
        );
    }
    let path = request.uri().path().to_string();
    let query = Query::parse(request.uri().query());
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => {
            let mut response = Response::new(full("ok"));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            response
        }
        (&Method::GET, ["containerLogs", ns, pod, container]) => {
            logs::container_logs(&shared, ns, pod, container, &query).await
        }
        (&Method::GET | &Method::POST, ["exec", ns, pod, container]) => {
            let target = exec::Target {
                namespace: ns.to_string(),
                pod: pod.to_string(),
                container: container.to_string(),
            };
            exec::exec(shared.clone(), request, target, &query)
        }
        (_, ["containerLogs", ..] | ["exec", ..] | ["healthz"]) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not allowed on {path}"),
        ),
        _ => not_found(format!("{path} is not served here")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decodes_repeated_and_escaped_values() {
        let q = Query::parse(Some(
            "command=sh&command=-c&command=echo+hi%3Bexit+3&tty=1&x=maybe",
        ));
        assert_eq!(q.all("command"), vec!["sh", "-c", "echo hi;exit 3"]);
        assert_eq!(q.flag("tty"), Ok(true));
        assert_eq!(q.flag("stdin"), Ok(false));
        assert!(q.flag("x").is_err());
        assert_eq!(
            Query::parse(Some("tailLines=10")).int("tailLines"),
            Ok(Some(10))
        );
        assert!(
            Query::parse(Some("tailLines=ten"))
                .int("tailLines")
                .is_err()
        );
    }
}
