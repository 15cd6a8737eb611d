//! Namespace lifecycle: deleting a namespace marks it Terminating, deletes everything in it
//! (through the normal delete path, so finalizers and graceful pod termination are honoured),
//! then removes the namespace. The system namespaces cannot be deleted.
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::registry::{self, RESOURCES, Resource};
use super::status::{ApiError, ApiResult};
use super::storage::{Api, DeleteOptions, ListParams, SYSTEM_NAMESPACES, UpdateKind, now, subject};

/// How often a terminating namespace re-checks what is left in it.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

fn namespaces() -> &'static Resource {
    registry::find("", "v1", "namespaces").expect("namespaces are registered")
}

/// DELETE of a namespace: 403 for system namespaces, otherwise Terminating + cleanup.
pub async fn delete(api: &Arc<Api>, name: &str, opts: &DeleteOptions) -> ApiResult<Value> {
    let res = namespaces();
    if SYSTEM_NAMESPACES.contains(&name) {
        // Kubernetes answers 403 Forbidden for the namespaces it keeps.
        return Err(ApiError::forbidden(
            subject(res, name),
            "this namespace may not be deleted",
        ));
    }
    let current = api.get(res, None, name).await?;
    if let Some(uid) = opts.precondition_uid.as_deref().filter(|u| !u.is_empty())
        && current.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid)
    {
        return Err(ApiError::conflict(
            subject(res, name),
            "Precondition failed: UID in precondition does not match",
        ));
    }
    if opts.dry_run {
        return Ok(current);
    }
    let marked = api
        .guaranteed_update(res, None, name, UpdateKind::Internal, false, |ns| {
            let mut next = ns.clone();
            if next
                .pointer("/metadata/deletionTimestamp")
                .is_none_or(Value::is_null)
            {
                next["metadata"]["deletionTimestamp"] = json!(now());
                next["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            }
            next["status"]["phase"] = json!("Terminating");
            Ok(next)
        })
        .await?;
    spawn_finalizer(api.clone(), name.to_string());
    Ok(marked)
}

/// Resumes the cleanup of namespaces that were terminating when the server stopped.
pub async fn resume(api: &Arc<Api>) -> ApiResult<()> {
    let (items, _, _) = api
        .list_items(namespaces(), None, &ListParams::default())
        .await?;
    for ns in items {
        if ns
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|t| !t.is_null())
            && let Some(name) = ns.pointer("/metadata/name").and_then(Value::as_str)
        {
            spawn_finalizer(api.clone(), name.to_string());
        }
    }
    Ok(())
}

fn spawn_finalizer(api: Arc<Api>, name: String) {
    if !api.claim_namespace_cleanup(&name) {
        return;
    }
    tokio::spawn(async move {
        loop {
            match sweep(&api, &name).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) if e.code == 404 => break,
                Err(e) => {
                    tracing::warn!(namespace = %name, error = %e, "namespace cleanup failed; retrying")
                }
            }
            tokio::time::sleep(SWEEP_INTERVAL).await;
        }
        api.release_namespace_cleanup(&name);
        tracing::info!(namespace = %name, "namespace deleted");
    });
}

/// One pass: deletes what is left; when nothing is, removes the namespace. Returns whether
/// the namespace is gone.
async fn sweep(api: &Arc<Api>, name: &str) -> ApiResult<bool> {
    let mut remaining = 0usize;
    let background = DeleteOptions {
        propagation_policy: Some("Background".into()),
        ..Default::default()
    };
    for res in RESOURCES.iter().filter(|r| r.namespaced) {
        let (items, _, _) = api
            .list_items(res, Some(name), &ListParams::default())
            .await?;
        for item in items {
            remaining += 1;
            let already = item
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|t| !t.is_null());
            if already {
                continue;
            }
            let object = item
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match api.delete(res, Some(name), object, &background).await {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    if remaining > 0 {
        return Ok(false);
    }
    // Everything is gone: drop our finalizer; the namespace goes once no finalizer is left.
    let res = namespaces();
    let ns = api
        .guaranteed_update(res, None, name, UpdateKind::Internal, false, |ns| {
            let mut next = ns.clone();
            let finalizers: Vec<Value> = next
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let kept: Vec<Value> = finalizers
                .into_iter()
                .filter(|f| f != "kubernetes")
                .collect();
            next["spec"]["finalizers"] = json!(kept);
            Ok(next)
        })
        .await?;
    let metadata_finalizers = ns
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    if metadata_finalizers {
        return Ok(false);
    }
    match api.delete(res, None, name, &DeleteOptions::default()).await {
        Ok(_) => Ok(true),
        Err(e) if e.code == 404 => Ok(true),
        Err(e) => Err(e),
    }
}
