//! Defaulting of API objects on create and update: the values Kubernetes' `SetDefaults_*`
//! functions (`pkg/apis/{core,apps,discovery}/v1/defaults.go`) fill in for the kinds Keel
//! serves, plus the few its create strategies and admission plugins add (a Namespace's
//! `kubernetes` finalizer, a Pod's priority, the not-ready/unreachable tolerations).
//!
//! Defaulting only fills absent (or `null`, or for strings empty) fields and never fails: a
//! field of the wrong JSON type is left alone for validation to report.
use base64::Engine;
use serde_json::{Map, Value, json};

/// Fills the defaults of an object of `kind` in place.
pub fn apply_defaults(kind: &str, obj: &mut Value) {
    let Some(obj) = obj.as_object_mut() else {
        return;
    };
    match kind {
        "Pod" => default_pod(obj),
        "Deployment" => default_deployment(obj),
        "ReplicaSet" => default_replica_set(obj),
        "Service" => default_service(obj),
        "Namespace" => default_namespace(obj),
        "Secret" => default_secret(obj),
        "EndpointSlice" => default_endpoint_slice(obj),
        "Node" => default_node(obj),
        _ => {}
    }
}

/// The `DefaultTolerationSeconds` admission plugin: a Pod tolerates `NoExecute` taints
/// `node.kubernetes.io/not-ready` and `node.kubernetes.io/unreachable` for `seconds` (300 in
/// Kubernetes) unless it already tolerates them. Run on create only.
pub fn default_tolerations(pod: &mut Value, seconds: i64) {
    let Some(spec) = pod.as_object_mut().and_then(|pod| child(pod, "spec")) else {
        return;
    };
    let tolerations = match spec.entry("tolerations").or_insert_with(|| json!([])) {
        value @ Value::Null => {
            *value = json!([]);
            value
        }
        value => value,
    };
    let Some(tolerations) = tolerations.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        // Tolerated already: the same key (or every key) with effect NoExecute or any effect.
        let tolerated = tolerations.iter().any(|t| {
            let t_key = t.get("key").and_then(Value::as_str).unwrap_or_default();
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or_default();
            let operator = t
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let key_matches = t_key == key || (t_key.is_empty() && operator == "Exists");
            key_matches && (effect.is_empty() || effect == "NoExecute")
        });
        if !tolerated {
            tolerations.push(json!({
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": seconds,
            }));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// The object at `key`, created empty when absent or null; `None` if it is another type.
fn child<'a>(map: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    let value = map.entry(key).or_insert_with(|| json!({}));
    if value.is_null() {
        *value = json!({});
    }
    value.as_object_mut()
}

/// The object at `key` if there is one (not created).
fn existing<'a>(map: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    map.get_mut(key).and_then(Value::as_object_mut)
}

/// The object elements of the list at `key`.
fn elements<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    map.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// Sets `key` unless it holds a value (`null` and `""` count as unset, as Go's zero values).
fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    match map.get(key) {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(_) => return,
    }
    map.insert(key.to_string(), value);
}

fn str_of<'a>(map: &'a Map<String, Value>, key: &str) -> &'a str {
    map.get(key).and_then(Value::as_str).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Pods and pod templates

fn default_pod(pod: &mut Map<String, Value>) {
    let Some(spec) = child(pod, "spec") else {
        return;
    };
    default_pod_spec(spec);
    // SetDefaults_Pod: only real Pods, not templates.
    for key in ["containers", "initContainers"] {
        for container in elements(spec, key) {
            requests_from_limits(container);
        }
    }
    set_default(spec, "enableServiceLinks", json!(true));
    if spec.get("hostNetwork") == Some(&json!(true)) {
        for key in ["containers", "initContainers"] {
            for port in elements(spec, key).flat_map(|c| elements(c, "ports")) {
                if port
                    .get("hostPort")
                    .is_none_or(|p| p.is_null() || p == &json!(0))
                    && let Some(container_port) = port.get("containerPort").cloned()
                {
                    port.insert("hostPort".into(), container_port);
                }
            }
        }
    }
    // The Priority admission plugin, with no default PriorityClass.
    set_default(spec, "priority", json!(0));
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
}

/// Requests not given default to the limits.
fn requests_from_limits(container: &mut Map<String, Value>) {
    let Some(resources) = existing(container, "resources") else {
        return;
    };
    let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() else {
        return;
    };
    let Some(requests) = child(resources, "requests") else {
        return;
    };
    for (name, quantity) in limits {
        requests.entry(name).or_insert(quantity);
    }
}

/// `SetDefaults_PodSpec` and everything under it: shared by Pods and pod templates.
fn default_pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        for container in elements(spec, key) {
            default_container(container);
        }
    }
    for volume in elements(spec, "volumes") {
        default_volume(volume);
    }
}

fn default_container(container: &mut Map<String, Value>) {
    let policy = image_pull_policy(str_of(container, "image"));
    set_default(container, "imagePullPolicy", json!(policy));
    set_default(
        container,
        "terminationMessagePath",
        json!("/dev/termination-log"),
    );
    set_default(container, "terminationMessagePolicy", json!("File"));
    set_default(container, "resources", json!({}));
    for port in elements(container, "ports") {
        set_default(port, "protocol", json!("TCP"));
    }
    for var in elements(container, "env") {
        if let Some(field_ref) =
            existing(var, "valueFrom").and_then(|from| existing(from, "fieldRef"))
        {
            set_default(field_ref, "apiVersion", json!("v1"));
        }
    }
    for key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(probe) = existing(container, key) {
            set_default(probe, "timeoutSeconds", json!(1));
            set_default(probe, "periodSeconds", json!(10));
            set_default(probe, "successThreshold", json!(1));
            set_default(probe, "failureThreshold", json!(3));
            default_http_get(probe);
        }
    }
    if let Some(lifecycle) = existing(container, "lifecycle") {
        for key in ["postStart", "preStop"] {
            if let Some(handler) = existing(lifecycle, key) {
                default_http_get(handler);
            }
        }
    }
}

fn default_http_get(handler: &mut Map<String, Value>) {
    if let Some(http_get) = existing(handler, "httpGet") {
        set_default(http_get, "path", json!("/"));
        set_default(http_get, "scheme", json!("HTTP"));
    }
}

/// `Always` for `:latest` or untagged images, `IfNotPresent` for other tags and digests.
fn image_pull_policy(image: &str) -> &'static str {
    let (name, digest) = match image.split_once('@') {
        Some((name, _)) => (name, true),
        None => (image, false),
    };
    // A `:` before the last `/` is a registry port, not a tag.
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.split_once(':').map(|(_, tag)| tag) {
        Some("latest") => "Always",
        Some(_) => "IfNotPresent",
        None if digest => "IfNotPresent",
        None => "Always",
    }
}

/// Mode 0644, the default of projected files.
const DEFAULT_FILE_MODE: i64 = 0o644;

fn default_volume(volume: &mut Map<String, Value>) {
    if volume
        .iter()
        .all(|(key, value)| key == "name" || value.is_null())
    {
        volume.insert("emptyDir".into(), json!({}));
    }
    for key in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(source) = existing(volume, key) {
            set_default(source, "defaultMode", json!(DEFAULT_FILE_MODE));
        }
    }
    if let Some(host_path) = existing(volume, "hostPath")
        && host_path.get("type").is_none_or(Value::is_null)
    {
        host_path.insert("type".into(), json!(""));
    }
    if let Some(downward) = existing(volume, "downwardAPI") {
        for item in elements(downward, "items") {
            if let Some(field_ref) = existing(item, "fieldRef") {
                set_default(field_ref, "apiVersion", json!("v1"));
            }
        }
    }
}

fn default_template(spec: &mut Map<String, Value>) {
    if let Some(pod_spec) =
        existing(spec, "template").and_then(|template| existing(template, "spec"))
    {
        default_pod_spec(pod_spec);
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads

fn default_deployment(deployment: &mut Map<String, Value>) {
    let Some(spec) = child(deployment, "spec") else {
        return;
    };
    set_default(spec, "replicas", json!(1));
    if let Some(strategy) = child(spec, "strategy") {
        set_default(strategy, "type", json!("RollingUpdate"));
        if str_of(strategy, "type") == "RollingUpdate"
            && let Some(rolling) = child(strategy, "rollingUpdate")
        {
            set_default(rolling, "maxUnavailable", json!("25%"));
            set_default(rolling, "maxSurge", json!("25%"));
        }
    }
    set_default(spec, "revisionHistoryLimit", json!(10));
    set_default(spec, "progressDeadlineSeconds", json!(600));
    default_template(spec);
}

fn default_replica_set(replica_set: &mut Map<String, Value>) {
    let Some(spec) = child(replica_set, "spec") else {
        return;
    };
    set_default(spec, "replicas", json!(1));
    default_template(spec);
}

// ---------------------------------------------------------------------------------------------
// Services and endpoints

fn default_service(service: &mut Map<String, Value>) {
    let Some(spec) = child(service, "spec") else {
        return;
    };
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    match str_of(spec, "sessionAffinity") {
        "None" => {
            spec.remove("sessionAffinityConfig");
        }
        "ClientIP" => {
            let timeout = spec
                .get("sessionAffinityConfig")
                .and_then(|c| c.pointer("/clientIP/timeoutSeconds"))
                .filter(|t| !t.is_null());
            if timeout.is_none() {
                spec.insert(
                    "sessionAffinityConfig".into(),
                    json!({"clientIP": {"timeoutSeconds": 10800}}),
                );
            }
        }
        _ => {}
    }
    for port in elements(spec, "ports") {
        set_default(port, "protocol", json!("TCP"));
        let target_unset = match port.get("targetPort") {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(Value::Number(n)) => n.as_i64() == Some(0),
            Some(_) => false,
        };
        if target_unset && let Some(number) = port.get("port").cloned() {
            port.insert("targetPort".into(), number);
        }
    }
    let kind = str_of(spec, "type").to_string();
    let has_external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|ips| !ips.is_empty());
    let externally_accessible = matches!(kind.as_str(), "NodePort" | "LoadBalancer")
        || (kind == "ClusterIP" && has_external_ips);
    if externally_accessible {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if matches!(kind.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
        // Keel's service network is single-stack IPv4.
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
        if spec
            .get("ipFamilies")
            .is_none_or(|f| f.is_null() || f.as_array().is_some_and(Vec::is_empty))
        {
            spec.insert("ipFamilies".into(), json!(["IPv4"]));
        }
    }
    if kind == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if let Some(status) = child(service, "status") {
        set_default(status, "loadBalancer", json!({}));
    }
}

fn default_endpoint_slice(slice: &mut Map<String, Value>) {
    for port in elements(slice, "ports") {
        if port.get("name").is_none_or(Value::is_null) {
            port.insert("name".into(), json!(""));
        }
        set_default(port, "protocol", json!("TCP"));
    }
}

// ---------------------------------------------------------------------------------------------
// Namespaces, Secrets, Nodes

fn default_namespace(namespace: &mut Map<String, Value>) {
    let name = namespace
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !name.is_empty()
        && let Some(labels) = child(namespace, "metadata").and_then(|meta| child(meta, "labels"))
    {
        labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    }
    if let Some(spec) = child(namespace, "spec") {
        set_default(spec, "finalizers", json!(["kubernetes"]));
    }
    if let Some(status) = child(namespace, "status") {
        set_default(status, "phase", json!("Active"));
    }
}

/// `type: Opaque`, and `stringData` folded into `data` (base64, overriding `data`'s keys) as
/// Kubernetes does when it decodes a Secret: `stringData` is never stored.
fn default_secret(secret: &mut Map<String, Value>) {
    set_default(secret, "type", json!("Opaque"));
    let string_data = match secret.get("stringData") {
        Some(Value::Object(map)) => map.clone(),
        Some(Value::Null) => Map::new(),
        // Not an object: leave it for validation to report.
        Some(_) => return,
        None => return,
    };
    if string_data.values().any(|v| !v.is_string()) {
        return;
    }
    secret.remove("stringData");
    if string_data.is_empty() {
        return;
    }
    let Some(data) = child(secret, "data") else {
        return;
    };
    for (key, value) in string_data {
        let text = value.as_str().unwrap_or_default();
        data.insert(
            key,
            json!(base64::engine::general_purpose::STANDARD.encode(text)),
        );
    }
}

/// `status.allocatable` defaults to `status.capacity`.
fn default_node(node: &mut Map<String, Value>) {
    let Some(status) = existing(node, "status") else {
        return;
    };
    if status.get("allocatable").is_none_or(Value::is_null)
        && let Some(capacity) = status.get("capacity").filter(|c| c.is_object()).cloned()
    {
        status.insert("allocatable".into(), capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaulted(kind: &str, mut obj: Value) -> Value {
        apply_defaults(kind, &mut obj);
        obj
    }

    #[test]
    fn pod_defaults() {
        let pod = defaulted(
            "Pod",
            json!({"metadata": {"name": "p"}, "spec": {
                "containers": [{
                    "name": "web", "image": "nginx",
                    "ports": [{"containerPort": 80}],
                    "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}},
                    "livenessProbe": {"httpGet": {"port": 80}},
                    "readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 5}
                }],
                "initContainers": [{"name": "init", "image": "busybox:1.36"}]
            }}),
        );
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["securityContext"], json!({}));
        assert_eq!(spec["enableServiceLinks"], true);
        assert_eq!(spec["priority"], 0);
        assert_eq!(spec["preemptionPolicy"], "PreemptLowerPriority");
        let web = &spec["containers"][0];
        assert_eq!(web["imagePullPolicy"], "Always");
        assert_eq!(web["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(web["terminationMessagePolicy"], "File");
        assert_eq!(web["ports"][0]["protocol"], "TCP");
        assert_eq!(web["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
        assert_eq!(
            web["resources"]["requests"],
            json!({"cpu": "500m", "memory": "1Gi"})
        );
        assert_eq!(
            web["livenessProbe"],
            json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
        );
        assert_eq!(web["readinessProbe"]["periodSeconds"], 5);
        let init = &spec["initContainers"][0];
        assert_eq!(init["imagePullPolicy"], "IfNotPresent");
        assert_eq!(init["resources"], json!({}));
        assert!(
            spec.get("tolerations").is_none(),
            "tolerations are the admission step's job"
        );
    }

    #[test]
    fn given_values_are_kept() {
        let pod = defaulted(
            "Pod",
            json!({"spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0, "enableServiceLinks": false,
                "containers": [{"name": "c", "image": "x:latest", "imagePullPolicy": "Never", "ports": [{"containerPort": 53, "protocol": "UDP"}]}]}}),
        );
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 0);
        assert_eq!(pod["spec"]["enableServiceLinks"], false);
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Never");
        assert_eq!(pod["spec"]["containers"][0]["ports"][0]["protocol"], "UDP");
        // Defaulting twice changes nothing.
        assert_eq!(defaulted("Pod", pod.clone()), pod);
    }

    #[test]
    fn image_pull_policies() {
        assert_eq!(image_pull_policy("nginx"), "Always");
        assert_eq!(image_pull_policy("nginx:latest"), "Always");
        assert_eq!(image_pull_policy("nginx:1.27"), "IfNotPresent");
        assert_eq!(image_pull_policy("registry:5000/team/app"), "Always");
        assert_eq!(
            image_pull_policy("registry:5000/team/app:v2"),
            "IfNotPresent"
        );
        assert_eq!(image_pull_policy("nginx@sha256:abcd"), "IfNotPresent");
        assert_eq!(image_pull_policy("nginx:latest@sha256:abcd"), "Always");
    }

    #[test]
    fn host_network_ports_and_volumes() {
        let pod = defaulted(
            "Pod",
            json!({"spec": {"hostNetwork": true,
                "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 8080}, {"containerPort": 9090, "hostPort": 9091}]}],
                "volumes": [{"name": "scratch"}, {"name": "cfg", "configMap": {"name": "cm"}}, {"name": "s", "secret": {"secretName": "s", "defaultMode": 256}},
                    {"name": "h", "hostPath": {"path": "/var/log"}}]}}),
        );
        let ports = &pod["spec"]["containers"][0]["ports"];
        assert_eq!(ports[0]["hostPort"], 8080);
        assert_eq!(ports[1]["hostPort"], 9091);
        let volumes = &pod["spec"]["volumes"];
        assert_eq!(volumes[0], json!({"name": "scratch", "emptyDir": {}}));
        assert_eq!(volumes[1]["configMap"]["defaultMode"], 420);
        assert_eq!(volumes[2]["secret"]["defaultMode"], 256);
        assert_eq!(volumes[3]["hostPath"]["type"], "");
    }

    #[test]
    fn default_tolerations_added_once() {
        let mut pod = json!({"spec": {"containers": [{"name": "c", "image": "x"}]}});
        default_tolerations(&mut pod, 300);
        default_tolerations(&mut pod, 300);
        assert_eq!(
            pod["spec"]["tolerations"],
            json!([
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ])
        );
        let mut pod = json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10}]}});
        default_tolerations(&mut pod, 300);
        let tolerations = pod["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(tolerations.len(), 2);
        assert_eq!(tolerations[0]["tolerationSeconds"], 10);
        let mut pod = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        default_tolerations(&mut pod, 300);
        assert_eq!(
            pod["spec"]["tolerations"].as_array().unwrap().len(),
            1,
            "tolerates everything already"
        );
    }

    #[test]
    fn deployment_defaults() {
        let deployment = defaulted(
            "Deployment",
            json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "d"}},
                "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}}}),
        );
        let spec = &deployment["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        assert!(spec.get("minReadySeconds").is_none());
        let template = &spec["template"]["spec"];
        assert_eq!(template["restartPolicy"], "Always");
        assert_eq!(template["containers"][0]["imagePullPolicy"], "IfNotPresent");
        // Pod-only defaults stay out of templates, as in Kubernetes.
        assert!(template.get("enableServiceLinks").is_none());
        assert!(template.get("priority").is_none());

        let recreate = defaulted(
            "Deployment",
            json!({"spec": {"replicas": 0, "strategy": {"type": "Recreate"}}}),
        );
        assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(recreate["spec"]["replicas"], 0);
        let partial = defaulted(
            "Deployment",
            json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": 1}}}}),
        );
        assert_eq!(
            partial["spec"]["strategy"]["rollingUpdate"],
            json!({"maxSurge": 1, "maxUnavailable": "25%"})
        );
    }

    #[test]
    fn replica_set_defaults() {
        let rs = defaulted(
            "ReplicaSet",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}}),
        );
        assert_eq!(rs["spec"]["replicas"], 1);
        assert_eq!(rs["spec"]["template"]["spec"]["dnsPolicy"], "ClusterFirst");
        assert!(rs["spec"].get("revisionHistoryLimit").is_none());
    }

    #[test]
    fn service_defaults() {
        let svc = defaulted(
            "Service",
            json!({"spec": {"selector": {"app": "web"}, "ports": [{"port": 80}, {"port": 443, "targetPort": "https"}]}}),
        );
        let spec = &svc["spec"];
        assert_eq!(spec["type"], "ClusterIP");
        assert_eq!(spec["sessionAffinity"], "None");
        assert_eq!(
            spec["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        assert_eq!(spec["ports"][1]["targetPort"], "https");
        assert_eq!(spec["internalTrafficPolicy"], "Cluster");
        assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
        assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
        assert!(spec.get("externalTrafficPolicy").is_none());
        assert!(spec.get("allocateLoadBalancerNodePorts").is_none());
        assert_eq!(svc["status"], json!({"loadBalancer": {}}));

        let lb = defaulted(
            "Service",
            json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}], "sessionAffinity": "ClientIP"}}),
        );
        assert_eq!(lb["spec"]["externalTrafficPolicy"], "Cluster");
        assert_eq!(lb["spec"]["allocateLoadBalancerNodePorts"], true);
        assert_eq!(
            lb["spec"]["sessionAffinityConfig"],
            json!({"clientIP": {"timeoutSeconds": 10800}})
        );

        let node_port = defaulted(
            "Service",
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80}], "externalTrafficPolicy": "Local",
            "sessionAffinity": "None", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 5}}}}),
        );
        assert_eq!(node_port["spec"]["externalTrafficPolicy"], "Local");
        assert!(node_port["spec"].get("sessionAffinityConfig").is_none());

        let external = defaulted(
            "Service",
            json!({"spec": {"type": "ExternalName", "externalName": "db.example.com"}}),
        );
        assert!(external["spec"].get("ipFamilies").is_none());
        assert!(external["spec"].get("internalTrafficPolicy").is_none());

        let with_external_ips = defaulted(
            "Service",
            json!({"spec": {"externalIPs": ["192.0.2.1"], "ports": [{"port": 80}]}}),
        );
        assert_eq!(
            with_external_ips["spec"]["externalTrafficPolicy"],
            "Cluster"
        );
    }

    #[test]
    fn namespace_defaults() {
        let ns = defaulted(
            "Namespace",
            json!({"metadata": {"name": "team-a", "labels": {"x": "y"}}}),
        );
        assert_eq!(
            ns["metadata"]["labels"],
            json!({"x": "y", "kubernetes.io/metadata.name": "team-a"})
        );
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(ns["status"]["phase"], "Active");
        let terminating = defaulted(
            "Namespace",
            json!({"metadata": {"name": "b"}, "spec": {"finalizers": []}, "status": {"phase": "Terminating"}}),
        );
        assert_eq!(terminating["spec"]["finalizers"], json!([]));
        assert_eq!(terminating["status"]["phase"], "Terminating");
    }

    #[test]
    fn secret_defaults() {
        let secret = defaulted(
            "Secret",
            json!({"metadata": {"name": "s"}, "data": {"a": "eA==", "b": "eQ=="}, "stringData": {"b": "hello", "c": "wörld"}}),
        );
        assert_eq!(secret["type"], "Opaque");
        assert!(secret.get("stringData").is_none());
        assert_eq!(
            secret["data"],
            json!({"a": "eA==", "b": "aGVsbG8=", "c": "d8O2cmxk"})
        );
        let tls = defaulted(
            "Secret",
            json!({"type": "kubernetes.io/tls", "stringData": {"tls.crt": "c"}}),
        );
        assert_eq!(tls["type"], "kubernetes.io/tls");
        assert_eq!(tls["data"], json!({"tls.crt": "Yw=="}));
        let odd = defaulted("Secret", json!({"stringData": "nope"}));
        assert_eq!(odd["stringData"], "nope");
    }

    #[test]
    fn endpoint_slice_and_node_defaults() {
        let slice = defaulted(
            "EndpointSlice",
            json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}], "ports": [{"port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}),
        );
        assert_eq!(
            slice["ports"],
            json!([{"name": "", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}])
        );
        assert_eq!(slice["endpoints"], json!([{"addresses": ["10.0.0.1"]}]));

        let node = defaulted(
            "Node",
            json!({"metadata": {"name": "n"}, "status": {"capacity": {"cpu": "2", "pods": "110"}}}),
        );
        assert_eq!(
            node["status"]["allocatable"],
            json!({"cpu": "2", "pods": "110"})
        );
        let node = defaulted(
            "Node",
            json!({"status": {"capacity": {"cpu": "2"}, "allocatable": {"cpu": "1900m"}}}),
        );
        assert_eq!(node["status"]["allocatable"], json!({"cpu": "1900m"}));
    }

    #[test]
    fn other_kinds_and_non_objects_untouched() {
        let cm = json!({"metadata": {"name": "c"}, "data": {"a": "b"}});
        assert_eq!(defaulted("ConfigMap", cm.clone()), cm);
        assert_eq!(
            defaulted("Pod", json!("not an object")),
            json!("not an object")
        );
        let odd = defaulted("Pod", json!({"spec": {"containers": "nope"}}));
        assert_eq!(odd["spec"]["containers"], "nope");
    }
}
