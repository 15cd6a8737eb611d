//! Per-kind write rules, like the apiserver's registry strategies: what create and update
//! reset or keep, when `generation` moves, and the typed round trip that gives every stored
//! object the shape of its k8s-openapi type.
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::registry::Resource;
use super::status::{ApiError, ApiResult};

/// Decodes `obj` as the kind's k8s-openapi type and encodes it back: unknown fields are
/// dropped, types are checked, and the JSON is canonical. A type error is a 400 naming the field.
pub fn normalize(res: &Resource, mut obj: Value) -> ApiResult<Value> {
    quantities_to_strings(&mut obj, false);
    let result = match res.kind {
        "Namespace" => round_trip::<k8s_openapi::api::core::v1::Namespace>(obj),
        "Pod" => round_trip::<k8s_openapi::api::core::v1::Pod>(obj),
        "Service" => round_trip::<k8s_openapi::api::core::v1::Service>(obj),
        "Node" => round_trip::<k8s_openapi::api::core::v1::Node>(obj),
        "Event" => round_trip::<k8s_openapi::api::core::v1::Event>(obj),
        "ConfigMap" => round_trip::<k8s_openapi::api::core::v1::ConfigMap>(obj),
        "Secret" => round_trip::<k8s_openapi::api::core::v1::Secret>(obj),
        "Deployment" => round_trip::<k8s_openapi::api::apps::v1::Deployment>(obj),
        "ReplicaSet" => round_trip::<k8s_openapi::api::apps::v1::ReplicaSet>(obj),
        "EndpointSlice" => round_trip::<k8s_openapi::api::discovery::v1::EndpointSlice>(obj),
        "Lease" => round_trip::<k8s_openapi::api::coordination::v1::Lease>(obj),
        "Scale" => round_trip::<k8s_openapi::api::autoscaling::v1::Scale>(obj),
        "Binding" => round_trip::<k8s_openapi::api::core::v1::Binding>(obj),
        other => Err(format!("no type for kind {other}")),
    };
    result.map_err(|e| {
        ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {e}",
            kind = res.kind,
            v = res.version
        ))
    })
}

/// Same as [`normalize`] for the kinds that are not stored resources (Scale, Binding).
pub fn normalize_kind(kind: &str, version: &str, obj: Value) -> ApiResult<Value> {
    let result = match kind {
        "Scale" => round_trip::<k8s_openapi::api::autoscaling::v1::Scale>(obj),
        "Binding" => round_trip::<k8s_openapi::api::core::v1::Binding>(obj),
        "DeleteOptions" => {
            round_trip::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>(obj)
        }
        other => Err(format!("no type for kind {other}")),
    };
    result.map_err(|e| {
        ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {e}"
        ))
    })
}

fn round_trip<T: DeserializeOwned + Serialize>(obj: Value) -> Result<Value, String> {
    let typed: T = serde_path_to_error::deserialize(obj).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// Quantities may be written as JSON numbers (`cpu: 1` in YAML); the type wants strings.
fn quantities_to_strings(value: &mut Value, in_quantity_map: bool) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::Number(n) if in_quantity_map || key == "sizeLimit" => {
                        *child = Value::String(n.to_string())
                    }
                    _ => {
                        let quantity_map = matches!(
                            key.as_str(),
                            "limits"
                                | "requests"
                                | "capacity"
                                | "allocatable"
                                | "overhead"
                                | "hard"
                                | "used"
                        );
                        quantities_to_strings(child, quantity_map);
                    }
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| quantities_to_strings(v, false)),
        _ => {}
    }
}

/// Whether anything but metadata and status differs (what bumps `generation`).
pub fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Some(map) = v.as_object_mut() {
            map.remove("metadata");
            map.remove("status");
        }
        v
    };
    strip(old) != strip(new)
}

/// Resets what a create may not set, per kind (most kinds: status).
pub fn prepare_for_create(res: &Resource, obj: &mut Value) {
    match res.kind {
        // Nodes may be created with their status, like the real apiserver allows.
        "Node" => {}
        "Pod" => {
            obj["status"] = json!({"phase": "Pending"});
            let qos = pod_qos_class(obj);
            obj["status"]["qosClass"] = json!(qos);
        }
        "Namespace" => {
            obj["status"] = json!({"phase": "Active"});
            let finalizers = obj
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if !finalizers.iter().any(|f| f == "kubernetes") {
                let mut all = finalizers;
                all.push(json!("kubernetes"));
                obj["spec"] = json!({"finalizers": all});
            }
        }
        "Service" => {
            obj["status"] = json!({"loadBalancer": {}});
        }
        _ if res.has_status() => {
            if let Some(map) = obj.as_object_mut() {
                map.remove("status");
            }
        }
        _ => {}
    }
    if res.has_generation {
        obj["metadata"]["generation"] = json!(1);
    } else if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("generation");
    }
}

/// Merges an update into the stored object: server-owned metadata is kept, the status
/// subresource changes only status, the main resource only the rest.
pub fn prepare_for_update(res: &Resource, subresource: Option<&str>, new: &mut Value, old: &Value) {
    // Server-owned metadata always comes from the stored object.
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
        "name",
        "selfLink",
    ] {
        match old["metadata"].get(field) {
            Some(v) => new["metadata"][field] = v.clone(),
            None => {
                if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove(field);
                }
            }
        }
    }
    match subresource {
        Some("status") => {
            // Only status changes; everything else stays as stored.
            let status = new.get("status").cloned();
            *new = old.clone();
            match status {
                Some(status) => new["status"] = status,
                None => {
                    if let Some(map) = new.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
        }
        _ => {
            if res.has_status() {
                match old.get("status") {
                    Some(status) => new["status"] = status.clone(),
                    None => {
                        if let Some(map) = new.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
            }
            if res.kind == "Namespace" {
                // spec.finalizers changes only through the finalize subresource.
                if subresource == Some("finalize") {
                    let status = old.get("status").cloned();
                    if let Some(status) = status {
                        new["status"] = status;
                    }
                } else if let Some(spec) = old.get("spec") {
                    new["spec"] = spec.clone();
                }
            }
            if res.has_generation && spec_changed(old, new) {
                let generation = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                new["metadata"]["generation"] = json!(generation + 1);
            }
        }
    }
}

/// `Guaranteed`, `Burstable` or `BestEffort`, from the containers' requests and limits.
fn pod_qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod.pointer(&format!("/spec/{k}")).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any_set = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any_set = true;
        }
        for resource in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(resource));
            let request = requests.and_then(|r| r.get(resource)).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if !any_set {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Whether a DELETE answers with the deleted object (pods and services) or a Status.
pub fn returns_deleted_object(res: &Resource) -> bool {
    matches!(res.kind, "Pod" | "Service")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::find;

    #[test]
    fn normalize_drops_unknown_fields_and_checks_types() {
        let deploy = find("apps", "v1", "deployments").unwrap();
        let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 2, "foo": 1, "selector": {}, "template": {}}});
        let out = normalize(deploy, obj).unwrap();
        assert!(out["spec"].get("foo").is_none());
        assert_eq!(out["spec"]["replicas"], 2);
        let bad = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": "two"}});
        let err = normalize(deploy, bad).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("spec.replicas"), "{}", err.message);
    }

    #[test]
    fn numeric_quantities_become_strings() {
        let pods = find("", "v1", "pods").unwrap();
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": 1, "memory": "1Gi"}}}]}});
        let out = normalize(pods, obj).unwrap();
        assert_eq!(
            out["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "1"
        );
    }

    #[test]
    fn status_subresource_changes_only_status() {
        let deploy = find("apps", "v1", "deployments").unwrap();
        let old = json!({"metadata": {"name": "d", "generation": 3, "uid": "u"}, "spec": {"replicas": 1}, "status": {"replicas": 0}});
        let mut new = json!({"metadata": {"name": "d", "generation": 9}, "spec": {"replicas": 5}, "status": {"replicas": 1}});
        prepare_for_update(deploy, Some("status"), &mut new, &old);
        assert_eq!(new["spec"]["replicas"], 1);
        assert_eq!(new["status"]["replicas"], 1);
        assert_eq!(new["metadata"]["generation"], 3);

        let mut main =
            json!({"metadata": {"name": "d"}, "spec": {"replicas": 5}, "status": {"replicas": 7}});
        prepare_for_update(deploy, None, &mut main, &old);
        assert_eq!(main["status"]["replicas"], 0);
        assert_eq!(main["metadata"]["generation"], 4);
        assert_eq!(main["metadata"]["uid"], "u");

        let mut labels_only =
            json!({"metadata": {"name": "d", "labels": {"a": "b"}}, "spec": {"replicas": 1}});
        prepare_for_update(deploy, None, &mut labels_only, &old);
        assert_eq!(labels_only["metadata"]["generation"], 3);
    }

    #[test]
    fn pod_create_resets_status_with_qos() {
        let pods = find("", "v1", "pods").unwrap();
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running"}});
        prepare_for_create(pods, &mut pod);
        assert_eq!(
            pod["status"],
            json!({"phase": "Pending", "qosClass": "BestEffort"})
        );
        assert_eq!(pod["metadata"]["generation"], 1);
    }
}
