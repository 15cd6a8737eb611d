//! Writes a pod's status to the API server, only when it changed, without blocking the pod
//! worker: the worker publishes each status it computes on a `watch` channel and this task
//! writes the newest one (a strategic merge patch of `/status` carrying the pod's uid as a
//! precondition), coalescing statuses computed while a write is in flight.
//!
//! The patch covers the fields kubelet owns: kubelet's conditions merge by type (others, such
//! as PodScheduled or readiness-gate conditions, are left alone) with absent fields nulled,
//! container statuses are replaced, and pod IPs no longer held are deleted.
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::client::timed;
use super::status::KUBELET_CONDITIONS;

/// Top-level status fields kubelet owns (others belong to the scheduler, resize, ...).
const OWNED: [&str; 12] = [
    "phase",
    "conditions",
    "message",
    "reason",
    "hostIP",
    "hostIPs",
    "podIP",
    "podIPs",
    "startTime",
    "initContainerStatuses",
    "containerStatuses",
    "qosClass",
];

/// The kubelet-owned part of a status, as JSON (for comparisons and patches).
pub fn owned(status: &PodStatus) -> Value {
    let full = serde_json::to_value(status).unwrap_or(Value::Null);
    let mut out = Map::new();
    if let Value::Object(map) = full {
        for (k, v) in map {
            if !OWNED.contains(&k.as_str()) {
                continue;
            }
            if k == "conditions" {
                let mut conditions: Vec<Value> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| {
                        c.get("type")
                            .and_then(Value::as_str)
                            .is_some_and(|t| KUBELET_CONDITIONS.contains(&t) || t == "PodScheduled")
                    })
                    .cloned()
                    .collect();
                conditions
                    .sort_by_key(|c| c.get("type").and_then(Value::as_str).map(str::to_string));
                out.insert(k, Value::Array(conditions));
                continue;
            }
            out.insert(k, v);
        }
    }
    Value::Object(out)
}

fn ips(owned: &Value, key: &str) -> Vec<String> {
    owned
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("ip").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// The strategic merge patch from the `previous` owned status (what the server has, as far
/// as we know) to `desired`.
pub fn patch(uid: &str, previous: Option<&Value>, desired: &Value) -> Value {
    let mut status = desired.as_object().cloned().unwrap_or_default();
    // Absent scalar fields and container status lists are removed; merged lists are not
    // (nulling `conditions` would drop other writers' conditions too).
    for key in OWNED {
        if !matches!(key, "conditions" | "podIPs" | "hostIPs") {
            status.entry(key.to_string()).or_insert(Value::Null);
        }
    }
    if let Some(Value::Array(conditions)) = status.get_mut("conditions") {
        for c in conditions.iter_mut() {
            if let Value::Object(map) = c {
                for field in ["reason", "message", "lastProbeTime"] {
                    map.entry(field.to_string()).or_insert(Value::Null);
                }
            }
        }
    }
    for key in ["podIPs", "hostIPs"] {
        let old = previous.map(|p| ips(p, key)).unwrap_or_default();
        let new = ips(desired, key);
        let gone: Vec<Value> = old
            .iter()
            .filter(|ip| !new.contains(ip))
            .map(|ip| json!({"ip": ip, "$patch": "delete"}))
            .collect();
        if gone.is_empty() {
            continue;
        }
        let mut list = desired
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        list.extend(gone);
        status.insert(key.to_string(), Value::Array(list));
    }
    json!({"metadata": {"uid": uid}, "status": status})
}

/// Writes the statuses published on `desired` for the pod until the sender is dropped or
/// the pod is gone. `current` is the status the server had when the worker started.
pub async fn run(
    client: Client,
    namespace: String,
    name: String,
    uid: String,
    current: Option<PodStatus>,
    mut desired: watch::Receiver<Option<PodStatus>>,
) {
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let mut written: Option<Value> = current.as_ref().map(owned);
    let mut retry = Duration::from_millis(200);
    loop {
        let next = desired.borrow_and_update().clone();
        if let Some(status) = next {
            let want = owned(&status);
            if written.as_ref() != Some(&want) {
                let body = patch(&uid, written.as_ref(), &want);
                match timed(api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Strategic(&body),
                ))
                .await
                {
                    Ok(_) => {
                        debug!(pod = %format!("{namespace}/{name}"), "wrote pod status");
                        written = Some(want);
                        retry = Duration::from_millis(200);
                    }
                    Err(e) if e.is_not_found() || e.is_conflict() => {
                        // Deleted, or replaced by a pod of the same name (uid mismatch).
                        debug!(pod = %format!("{namespace}/{name}"), "not writing status: {e}");
                        return;
                    }
                    Err(e) => {
                        warn!(pod = %format!("{namespace}/{name}"), "writing pod status: {e}; retrying in {retry:?}");
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(Duration::from_secs(10));
                        continue;
                    }
                }
            }
        }
        if desired.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodIP};

    fn status(ip: &str, ready: bool) -> PodStatus {
        PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            pod_ips: Some(vec![PodIP { ip: ip.into() }]),
            conditions: Some(vec![
                PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    reason: (!ready).then(|| "ContainersNotReady".to_string()),
                    ..Default::default()
                },
                PodCondition {
                    type_: "PodScheduled".into(),
                    status: "True".into(),
                    ..Default::default()
                },
            ]),
            nominated_node_name: Some("elsewhere".into()),
            ..Default::default()
        }
    }

    #[test]
    fn owned_part_leaves_other_writers_fields() {
        let o = owned(&status("10.0.0.5", true));
        assert!(o.get("nominatedNodeName").is_none());
        let types: Vec<&str> = o["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["PodScheduled", "Ready"]);
    }

    #[test]
    fn patch_nulls_what_went_away() {
        let before = owned(&status("10.0.0.5", false));
        let after = owned(&status("10.0.0.6", true));
        let p = patch("uid-1", Some(&before), &after);
        assert_eq!(p["metadata"]["uid"], "uid-1");
        let s = &p["status"];
        assert_eq!(s["conditions"][0]["reason"], Value::Null);
        assert!(
            s["conditions"][0]
                .as_object()
                .unwrap()
                .contains_key("reason")
        );
        assert_eq!(s["message"], Value::Null);
        assert_eq!(s["podIP"], "10.0.0.6");
        let ips = s["podIPs"].as_array().unwrap();
        assert_eq!(ips[0], json!({"ip": "10.0.0.6"}));
        assert_eq!(ips[1], json!({"ip": "10.0.0.5", "$patch": "delete"}));
        assert!(s.get("nominatedNodeName").is_none());
    }
}
