//! Typed writes for the controllers, through the same API layer as a client's requests (so
//! defaulting, validation, allocation and finalizer semantics apply), without HTTP.
use std::sync::Arc;

use k8s_openapi::Metadata;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::apiserver::registry::{self, Resource};
use crate::apiserver::request::Body;
use crate::apiserver::status::{ApiError, ApiResult};
use crate::apiserver::storage::{Api, DeleteOptions, UpdateKind, WriteOptions};

/// A typed handle on the API for controllers.
#[derive(Clone)]
pub struct Client {
    pub api: Arc<Api>,
}

fn resource_of<K: k8s_openapi::Resource>() -> ApiResult<&'static Resource> {
    registry::by_kind(K::KIND)
        .ok_or_else(|| ApiError::internal(format!("kind {} is not served", K::KIND)))
}

fn to_value<K: Serialize>(obj: &K) -> ApiResult<Value> {
    serde_json::to_value(obj).map_err(|e| ApiError::internal(format!("encoding an object: {e}")))
}

fn from_value<K: DeserializeOwned>(value: Value) -> ApiResult<K> {
    serde_json::from_value(value)
        .map_err(|e| ApiError::internal(format!("decoding an object: {e}")))
}

impl Client {
    pub fn new(api: Arc<Api>) -> Self {
        Client { api }
    }

    /// Reads one object from the store (not a cache).
    pub async fn get<K>(&self, namespace: Option<&str>, name: &str) -> ApiResult<K>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        let res = resource_of::<K>()?;
        from_value(self.api.get(res, namespace, name).await?)
    }

    /// Creates an object (the namespace comes from its metadata).
    pub async fn create<K>(&self, obj: &K) -> ApiResult<K>
    where
        K: k8s_openapi::Resource + Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned,
    {
        let res = resource_of::<K>()?;
        let namespace = obj.metadata().namespace.clone();
        let written = self
            .api
            .create(
                res,
                namespace.as_deref(),
                Body {
                    value: to_value(obj)?,
                    duplicates: vec![],
                },
                &WriteOptions::default(),
            )
            .await?;
        from_value(written.object)
    }

    /// Changes an object (or its `status` subresource) with `mutate`, retrying on concurrent
    /// writes. `mutate` returns false when there is nothing to change (then nothing is written
    /// and `Ok(None)` comes back).
    pub async fn update<K, F>(
        &self,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        mut mutate: F,
    ) -> ApiResult<Option<K>>
    where
        K: k8s_openapi::Resource + Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned,
        F: FnMut(&mut K) -> bool + Send,
    {
        let res = resource_of::<K>()?;
        let mut changed = true;
        let written = self
            .api
            .guaranteed_update(
                res,
                namespace,
                name,
                UpdateKind::Client(subresource),
                false,
                |current| {
                    let mut obj: K = from_value(current.clone())?;
                    changed = mutate(&mut obj);
                    if !changed {
                        return Ok(current.clone());
                    }
                    // No resourceVersion: concurrent writes are retried, not reported.
                    obj.metadata_mut().resource_version = None;
                    to_value(&obj)
                },
            )
            .await?;
        if !changed {
            return Ok(None);
        }
        Ok(Some(from_value(written)?))
    }

    /// Deletes an object; a missing object is not an error.
    pub async fn delete<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<()>
    where
        K: k8s_openapi::Resource,
    {
        let res = resource_of::<K>()?;
        match self.api.delete(res, namespace, name, opts).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes an object only if it still has this uid (a replacement with the same name is
    /// left alone).
    pub async fn delete_uid<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        uid: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<()>
    where
        K: k8s_openapi::Resource,
    {
        let opts = DeleteOptions {
            precondition_uid: Some(uid.to_string()),
            ..opts.clone()
        };
        match self.delete::<K>(namespace, name, &opts).await {
            Err(e) if e.code == 409 => Ok(()),
            other => other,
        }
    }

    /// Binds a pod to a node (`pods/binding`).
    pub async fn bind(&self, namespace: &str, pod: &str, node: &str) -> ApiResult<()> {
        let res = resource_of::<k8s_openapi::api::core::v1::Pod>()?;
        self.api.bind(res, Some(namespace), pod, node, false).await
    }
}
