//! The API client (kube-rs over rustls) built from a kubeconfig, and the few error checks the
//! agent makes on its replies.
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::env::ObjectSource;

/// How long a single (non-watch) request may take before the agent gives up on it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for the cluster of `kubeconfig` (its current context: server URL, CA, token or
/// client certificate).
pub async fn from_kubeconfig(kubeconfig: &Path) -> Result<Client> {
    let file = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", kubeconfig.display()))?;
    Client::try_from(config).context("building the API client")
}

/// The HTTP status of an API error reply, if the error is one.
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

pub fn is_not_found(e: &kube::Error) -> bool {
    status_code(e) == Some(404)
}

pub fn is_conflict(e: &kube::Error) -> bool {
    status_code(e) == Some(409)
}

pub fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists")
}

/// Runs an API call with [`REQUEST_TIMEOUT`].
pub async fn timed<T>(
    call: impl std::future::Future<Output = kube::Result<T>>,
) -> Result<T, ApiCallError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiCallError::Api(e)),
        Err(_) => Err(ApiCallError::Timeout),
    }
}

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiCallError {
    /// The server answered with an error, or the transport failed.
    #[error("{0}")]
    Api(#[from] kube::Error),
    /// No answer within [`REQUEST_TIMEOUT`].
    #[error("no answer from the API server within {REQUEST_TIMEOUT:?}")]
    Timeout,
}

impl ApiCallError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiCallError::Api(e) if is_not_found(e))
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, ApiCallError::Api(e) if is_conflict(e))
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, ApiCallError::Api(e) if is_already_exists(e))
    }
}

/// ConfigMaps and Secrets read from the API server.
pub struct ApiObjects {
    pub client: Client,
}

#[async_trait]
impl ObjectSource for ApiObjects {
    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        timed(api.get_opt(name))
            .await
            .map_err(|e| format!("reading configmap {namespace}/{name}: {e}"))
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, String> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        timed(api.get_opt(name))
            .await
            .map_err(|e| format!("reading secret {namespace}/{name}: {e}"))
    }
}
