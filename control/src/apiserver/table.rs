//! Server-side printing: the `meta.k8s.io` Table form `kubectl get` asks for, with the
//! usual columns per kind (priority 1 columns are the `-o wide` ones).
use serde_json::{Value, json};

use super::registry::Resource;
use super::selectors::LabelSelector;

/// What each row carries in `object` (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    /// `PartialObjectMetadata` (the default).
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("") | Some("Metadata") => Ok(IncludeObject::Metadata),
            Some("None") => Ok(IncludeObject::None),
            Some("Object") => Ok(IncludeObject::Object),
            Some(other) => Err(format!(
                "includeObject must be one of None, Metadata, Object, got {other:?}"
            )),
        }
    }
}

struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    priority: u8,
    description: &'static str,
}

const fn col(name: &'static str, priority: u8, description: &'static str) -> Column {
    Column {
        name,
        kind: "string",
        format: "",
        priority,
        description,
    }
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically.",
};
const AGE: Column = col(
    "Age",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

fn columns(kind: &str) -> Vec<Column> {
    match kind {
        "Pod" => vec![
            NAME,
            col(
                "Ready",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            AGE,
            col(
                "IP",
                1,
                "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            ),
            col(
                "Node",
                1,
                "NodeName is a request to schedule this pod onto a specific node.",
            ),
            col(
                "Nominated Node",
                1,
                "nominatedNodeName is set when this pod preempts other pods on the node.",
            ),
            col(
                "Readiness Gates",
                1,
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        "Deployment" => vec![
            NAME,
            col("Ready", 0, "Number of the pod with ready state"),
            col(
                "Up-to-date",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            col(
                "Available",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            AGE,
            col("Containers", 1, "Names of each container in the template."),
            col(
                "Images",
                1,
                "Images referenced by each container in the template.",
            ),
            col(
                "Selector",
                1,
                "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
            ),
        ],
        "ReplicaSet" => vec![
            NAME,
            col("Desired", 0, "Replicas is the number of desired replicas."),
            col(
                "Current",
                0,
                "Replicas is the most recently oberved number of replicas.",
            ),
            col(
                "Ready",
                0,
                "The number of ready replicas for this replica set.",
            ),
            AGE,
            col("Containers", 1, "Names of each container in the template."),
            col(
                "Images",
                1,
                "Images referenced by each container in the template.",
            ),
            col(
                "Selector",
                1,
                "Selector is a label query over pods that should match the replica count.",
            ),
        ],
        "Service" => vec![
            NAME,
            col("Type", 0, "type determines how the Service is exposed."),
            col(
                "Cluster-IP",
                0,
                "clusterIP is the IP address of the service and is usually assigned randomly.",
            ),
            col(
                "External-IP",
                0,
                "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
            ),
            col(
                "Port(s)",
                0,
                "The list of ports that are exposed by this service.",
            ),
            AGE,
            col(
                "Selector",
                1,
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        "Node" => vec![
            NAME,
            col("Status", 0, "The status of the node"),
            col("Roles", 0, "The roles of the node"),
            AGE,
            col("Version", 0, "Kubelet Version reported by the node."),
            col(
                "Internal-IP",
                1,
                "List of addresses reachable to the node. Queried from cloud provider, if available.",
            ),
            col(
                "External-IP",
                1,
                "List of addresses reachable to the node. Queried from cloud provider, if available.",
            ),
            col(
                "OS-Image",
                1,
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            ),
            col(
                "Kernel-Version",
                1,
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            ),
            col(
                "Container-Runtime",
                1,
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            ),
        ],
        "Namespace" => vec![NAME, col("Status", 0, "The status of the namespace"), AGE],
        "Event" => vec![
            col(
                "Last Seen",
                0,
                "Time when last occurrence of this event was recorded.",
            ),
            col(
                "Type",
                0,
                "Type of this event (Normal, Warning), new types could be added in the future.",
            ),
            col(
                "Reason",
                0,
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            col("Object", 0, "The object that this event is about."),
            col(
                "Subobject",
                1,
                "The subobject (for example a container) the event is about.",
            ),
            col(
                "Source",
                1,
                "The component reporting this event. Should be a short machine understandable string.",
            ),
            col(
                "Message",
                0,
                "A human-readable description of the status of this operation.",
            ),
            col(
                "First Seen",
                1,
                "The time at which the event was first recorded.",
            ),
            Column {
                name: "Count",
                kind: "integer",
                format: "",
                priority: 1,
                description: "The number of times this event has occurred.",
            },
            Column {
                name: "Name",
                kind: "string",
                format: "name",
                priority: 1,
                description: NAME.description,
            },
        ],
        "ConfigMap" => vec![
            NAME,
            Column {
                name: "Data",
                kind: "integer",
                format: "",
                priority: 0,
                description: "Number of keys in the config map.",
            },
            AGE,
        ],
        "Secret" => vec![
            NAME,
            col("Type", 0, "The type of the secret"),
            Column {
                name: "Data",
                kind: "integer",
                format: "",
                priority: 0,
                description: "The number of keys in the secret.",
            },
            AGE,
        ],
        "EndpointSlice" => vec![
            NAME,
            col(
                "AddressType",
                0,
                "addressType specifies the type of address carried by this EndpointSlice.",
            ),
            col(
                "Ports",
                0,
                "ports specifies the list of network ports exposed by each endpoint in this slice.",
            ),
            col(
                "Endpoints",
                0,
                "endpoints is a list of unique endpoints in this slice.",
            ),
            AGE,
        ],
        "Lease" => vec![NAME, col("Holder", 0, "The holder of the lease"), AGE],
        _ => vec![NAME, AGE],
    }
}

fn s<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn i(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(value: &str) -> String {
    if value.is_empty() {
        "<none>".to_string()
    } else {
        value.to_string()
    }
}

fn arr<'a>(obj: &'a Value, pointer: &str) -> &'a [Value] {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// `kubectl`'s human age: `45s`, `3m20s`, `5h`, `3d4h`, `2y`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// The age of a timestamp field, or `<unknown>`.
fn age(timestamp: &str) -> String {
    match timestamp.parse::<jiff::Timestamp>() {
        Ok(t) => human_duration(jiff::Timestamp::now().as_second() - t.as_second()),
        Err(_) => "<unknown>".into(),
    }
}

fn object_age(obj: &Value) -> String {
    age(s(obj, "/metadata/creationTimestamp"))
}

fn template_containers(obj: &Value) -> (String, String) {
    let containers = arr(obj, "/spec/template/spec/containers");
    let names: Vec<&str> = containers.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

fn selector_string(obj: &Value) -> String {
    match obj.pointer("/spec/selector") {
        Some(sel) => match LabelSelector::from_object(sel) {
            Ok(sel) if !sel.is_empty() => sel.to_string(),
            _ => "<none>".into(),
        },
        None => "<none>".into(),
    }
}

fn pod_status(pod: &Value) -> String {
    let mut reason = s(pod, "/status/phase").to_string();
    if !s(pod, "/status/reason").is_empty() {
        reason = s(pod, "/status/reason").to_string();
    }
    let mut initializing = false;
    let init_total = arr(pod, "/spec/initContainers").len();
    for (idx, c) in arr(pod, "/status/initContainerStatuses").iter().enumerate() {
        let terminated_ok = c
            .pointer("/state/terminated")
            .is_some_and(|t| i(t, "/exitCode") == 0);
        if terminated_ok {
            continue;
        }
        if c.pointer("/state/running").is_some() && c.get("started") == Some(&json!(true)) {
            continue;
        }
        initializing = true;
        reason = if let Some(t) = c.pointer("/state/terminated") {
            if !s(t, "/reason").is_empty() {
                format!("Init:{}", s(t, "/reason"))
            } else {
                format!("Init:ExitCode:{}", i(t, "/exitCode"))
            }
        } else if !s(c, "/state/waiting/reason").is_empty()
            && s(c, "/state/waiting/reason") != "PodInitializing"
        {
            format!("Init:{}", s(c, "/state/waiting/reason"))
        } else {
            format!("Init:{idx}/{init_total}")
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in arr(pod, "/status/containerStatuses").iter().rev() {
            if !s(c, "/state/waiting/reason").is_empty() {
                reason = s(c, "/state/waiting/reason").to_string();
            } else if let Some(t) = c.pointer("/state/terminated") {
                reason = if !s(t, "/reason").is_empty() {
                    s(t, "/reason").to_string()
                } else if i(t, "/signal") != 0 {
                    format!("Signal:{}", i(t, "/signal"))
                } else {
                    format!("ExitCode:{}", i(t, "/exitCode"))
                };
            } else if c.get("ready") == Some(&json!(true)) && c.pointer("/state/running").is_some()
            {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            let ready = arr(pod, "/status/conditions")
                .iter()
                .any(|c| s(c, "/type") == "Ready" && s(c, "/status") == "True");
            reason = if ready {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        reason = if s(pod, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    reason
}

fn pod_restarts(pod: &Value) -> String {
    let statuses = arr(pod, "/status/containerStatuses");
    let restarts: i64 = statuses.iter().map(|c| i(c, "/restartCount")).sum();
    let last = statuses
        .iter()
        .filter_map(|c| {
            c.pointer("/lastState/terminated/finishedAt")
                .and_then(Value::as_str)
        })
        .max();
    match last {
        Some(t) if restarts > 0 => format!("{restarts} ({} ago)", age(t)),
        _ => restarts.to_string(),
    }
}

fn service_ports(svc: &Value) -> String {
    let ports: Vec<String> = arr(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let proto = if s(p, "/protocol").is_empty() {
                "TCP"
            } else {
                s(p, "/protocol")
            };
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(node_port) if node_port != 0 => {
                    format!("{}:{node_port}/{proto}", i(p, "/port"))
                }
                _ => format!("{}/{proto}", i(p, "/port")),
            }
        })
        .collect();
    if ports.is_empty() {
        "<none>".into()
    } else {
        ports.join(",")
    }
}

fn service_external_ip(svc: &Value) -> String {
    let external: Vec<String> = arr(svc, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    match s(svc, "/spec/type") {
        "ExternalName" => s(svc, "/spec/externalName").to_string(),
        "LoadBalancer" => {
            let mut ips: Vec<String> = arr(svc, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| {
                    if !s(i, "/ip").is_empty() {
                        s(i, "/ip").to_string()
                    } else {
                        s(i, "/hostname").to_string()
                    }
                })
                .collect();
            ips.extend(external);
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        _ => {
            if external.is_empty() {
                "<none>".into()
            } else {
                external.join(",")
            }
        }
    }
}

fn node_status(node: &Value) -> String {
    let ready = arr(node, "/status/conditions")
        .iter()
        .find(|c| s(c, "/type") == "Ready");
    let mut status = match ready.map(|c| s(c, "/status")) {
        // As kubectl's printer: any status but True (False, Unknown) is NotReady; only a
        // missing Ready condition is Unknown.
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if node.pointer("/spec/unschedulable") == Some(&json!(true)) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn node_roles(node: &Value) -> String {
    let mut roles: Vec<String> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| {
                    if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                        Some(role.to_string())
                    } else if k == "kubernetes.io/role" {
                        v.as_str().map(str::to_string)
                    } else {
                        None
                    }
                })
                .filter(|r| !r.is_empty())
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

fn node_address(node: &Value, kind: &str) -> String {
    or_none(
        arr(node, "/status/addresses")
            .iter()
            .find(|a| s(a, "/type") == kind)
            .map(|a| s(a, "/address"))
            .unwrap_or(""),
    )
}

fn endpoint_slice_ports(slice: &Value) -> String {
    let ports = arr(slice, "/ports");
    if ports.is_empty() {
        return "<unset>".into();
    }
    ports
        .iter()
        .map(|p| {
            p.get("port")
                .and_then(Value::as_i64)
                .map(|n| n.to_string())
                .unwrap_or_else(|| "<unset>".into())
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn endpoint_slice_endpoints(slice: &Value) -> String {
    let addresses: Vec<&str> = arr(slice, "/endpoints")
        .iter()
        .flat_map(|e| arr(e, "/addresses").iter().filter_map(Value::as_str))
        .collect();
    if addresses.is_empty() {
        return "<unset>".into();
    }
    let shown = addresses
        .iter()
        .take(3)
        .copied()
        .collect::<Vec<_>>()
        .join(",");
    if addresses.len() > 3 {
        format!("{shown} + {} more...", addresses.len() - 3)
    } else {
        shown
    }
}

fn cells(kind: &str, obj: &Value) -> Vec<Value> {
    let name = json!(s(obj, "/metadata/name"));
    match kind {
        "Pod" => {
            let total = arr(obj, "/spec/containers").len();
            let ready = arr(obj, "/status/containerStatuses")
                .iter()
                .filter(|c| c.get("ready") == Some(&json!(true)))
                .count();
            let gates = arr(obj, "/spec/readinessGates");
            let gates = if gates.is_empty() {
                "<none>".to_string()
            } else {
                let conditions = arr(obj, "/status/conditions");
                let true_gates = gates
                    .iter()
                    .filter(|g| {
                        conditions.iter().any(|c| {
                            s(c, "/type") == s(g, "/conditionType") && s(c, "/status") == "True"
                        })
                    })
                    .count();
                format!("{true_gates}/{}", gates.len())
            };
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(obj)),
                json!(pod_restarts(obj)),
                json!(object_age(obj)),
                json!(or_none(s(obj, "/status/podIP"))),
                json!(or_none(s(obj, "/spec/nodeName"))),
                json!(or_none(s(obj, "/status/nominatedNodeName"))),
                json!(gates),
            ]
        }
        "Deployment" => {
            let (containers, images) = template_containers(obj);
            let desired = obj
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            vec![
                name,
                json!(format!("{}/{desired}", i(obj, "/status/readyReplicas"))),
                json!(i(obj, "/status/updatedReplicas")),
                json!(i(obj, "/status/availableReplicas")),
                json!(object_age(obj)),
                json!(containers),
                json!(images),
                json!(selector_string(obj)),
            ]
        }
        "ReplicaSet" => {
            let (containers, images) = template_containers(obj);
            vec![
                name,
                json!(
                    obj.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                ),
                json!(i(obj, "/status/replicas")),
                json!(i(obj, "/status/readyReplicas")),
                json!(object_age(obj)),
                json!(containers),
                json!(images),
                json!(selector_string(obj)),
            ]
        }
        "Service" => {
            let selector = obj
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .filter(|m| !m.is_empty())
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                json!(if s(obj, "/spec/type").is_empty() {
                    "ClusterIP"
                } else {
                    s(obj, "/spec/type")
                }),
                json!(or_none(s(obj, "/spec/clusterIP"))),
                json!(service_external_ip(obj)),
                json!(service_ports(obj)),
                json!(object_age(obj)),
                json!(selector),
            ]
        }
        "Node" => vec![
            name,
            json!(node_status(obj)),
            json!(node_roles(obj)),
            json!(object_age(obj)),
            json!(s(obj, "/status/nodeInfo/kubeletVersion")),
            json!(node_address(obj, "InternalIP")),
            json!(node_address(obj, "ExternalIP")),
            json!(or_none(s(obj, "/status/nodeInfo/osImage"))),
            json!(or_none(s(obj, "/status/nodeInfo/kernelVersion"))),
            json!(or_none(s(obj, "/status/nodeInfo/containerRuntimeVersion"))),
        ],
        "Namespace" => vec![name, json!(s(obj, "/status/phase")), json!(object_age(obj))],
        "Event" => {
            let last_seen = [
                s(obj, "/lastTimestamp"),
                s(obj, "/eventTime"),
                s(obj, "/series/lastObservedTime"),
                s(obj, "/firstTimestamp"),
                s(obj, "/metadata/creationTimestamp"),
            ]
            .into_iter()
            .find(|t| !t.is_empty())
            .unwrap_or("");
            let first_seen = [
                s(obj, "/firstTimestamp"),
                s(obj, "/eventTime"),
                s(obj, "/metadata/creationTimestamp"),
            ]
            .into_iter()
            .find(|t| !t.is_empty())
            .unwrap_or("");
            let involved = format!(
                "{}/{}",
                s(obj, "/involvedObject/kind").to_lowercase(),
                s(obj, "/involvedObject/name")
            );
            let source = [s(obj, "/source/component"), s(obj, "/reportingComponent")]
                .into_iter()
                .find(|t| !t.is_empty())
                .unwrap_or("");
            let count = obj
                .get("count")
                .and_then(Value::as_i64)
                .or_else(|| obj.pointer("/series/count").and_then(Value::as_i64))
                .unwrap_or(1);
            vec![
                json!(age(last_seen)),
                json!(s(obj, "/type")),
                json!(s(obj, "/reason")),
                json!(involved),
                json!(s(obj, "/involvedObject/fieldPath")),
                json!(source),
                json!(s(obj, "/message").trim()),
                json!(age(first_seen)),
                json!(count),
                name,
            ]
        }
        "ConfigMap" => {
            let count = obj
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + obj
                    .get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![name, json!(count), json!(object_age(obj))]
        }
        "Secret" => {
            let count = obj
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
            vec![
                name,
                json!(s(obj, "/type")),
                json!(count),
                json!(object_age(obj)),
            ]
        }
        "EndpointSlice" => vec![
            name,
            json!(s(obj, "/addressType")),
            json!(endpoint_slice_ports(obj)),
            json!(endpoint_slice_endpoints(obj)),
            json!(object_age(obj)),
        ],
        "Lease" => vec![
            name,
            json!(or_none(s(obj, "/spec/holderIdentity"))),
            json!(object_age(obj)),
        ],
        _ => vec![name, json!(object_age(obj))],
    }
}

/// The `PartialObjectMetadata` of an object.
pub fn partial_metadata(obj: &Value, version: &str) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": format!("meta.k8s.io/{version}"), "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))})
}

/// A Table of `items`. `list_metadata` is the list's (resourceVersion, continue); column
/// definitions are left out for the events of a watch after the first.
pub fn table(
    res: &Resource,
    items: &[Value],
    include: IncludeObject,
    version: &str,
    with_columns: bool,
    list_metadata: Value,
) -> Value {
    let definitions: Vec<Value> = if with_columns {
        columns(res.kind)
            .iter()
            .map(|c| json!({"name": c.name, "type": c.kind, "format": c.format, "description": c.description, "priority": c.priority}))
            .collect()
    } else {
        Vec::new()
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|obj| {
            let mut row = json!({"cells": cells(res.kind, obj)});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => row["object"] = partial_metadata(obj, version),
                IncludeObject::Object => row["object"] = obj.clone(),
            }
            row
        })
        .collect();
    json!({"kind": "Table", "apiVersion": format!("meta.k8s.io/{version}"), "metadata": list_metadata, "columnDefinitions": definitions, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::find;

    #[test]
    fn human_durations_match_kubectl() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (200, "3m20s"),
            (600, "10m"),
            (3 * 3600 + 120, "3h2m"),
            (10 * 3600, "10h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (30 * 86400, "30d"),
            (800 * 86400, "2y70d"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn pod_rows_show_readiness_status_and_node() {
        let pods = find("", "v1", "pods").unwrap();
        let pod = json!({
            "metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 1, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        let t = table(pods, &[pod], IncludeObject::Metadata, "v1", true, json!({}));
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "1");
        assert_eq!(cells[5], "10.244.0.5");
        assert_eq!(cells[6], "n1");
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 9);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn service_rows_show_ports_and_ips() {
        let svc = find("", "v1", "services").unwrap();
        let obj = json!({"metadata": {"name": "np"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.9", "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}], "selector": {"app": "web"}}});
        let t = table(svc, &[obj], IncludeObject::None, "v1", false, json!({}));
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "NodePort");
        assert_eq!(cells[2], "10.96.0.9");
        assert_eq!(cells[3], "<none>");
        assert_eq!(cells[4], "80:30080/TCP");
        assert_eq!(cells[6], "app=web");
        assert!(t["rows"][0].get("object").is_none());
        assert!(t["columnDefinitions"].as_array().unwrap().is_empty());
    }
}
