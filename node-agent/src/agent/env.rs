//! A container's environment as kubelet makes it (`makeEnvironmentVariables`): `envFrom`
//! sources first (ConfigMaps and Secrets, with their prefix), then `env` in order (literal
//! values with `$(VAR)` expansion, `valueFrom` ConfigMap/Secret keys, downward API fields and
//! resources), then the Service link variables (`<SVC>_SERVICE_HOST`, ...) not already set.
//! `command` and `args` are expanded with the result.
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ObjectFieldSelector, Pod, ResourceFieldSelector, Secret, Service,
};

use super::quantity::{Quantity, QuantityError};

/// Why a container's environment (or a volume) could not be made; the message is what
/// kubelet reports in the `CreateContainerConfigError` waiting state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A referenced ConfigMap does not exist.
    #[error("configmap {0:?} not found")]
    ConfigMapNotFound(String),
    /// A referenced Secret does not exist.
    #[error("secret {0:?} not found")]
    SecretNotFound(String),
    /// A referenced key is missing from its ConfigMap.
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyMissing {
        namespace: String,
        name: String,
        key: String,
    },
    /// A referenced key is missing from its Secret.
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyMissing {
        namespace: String,
        name: String,
        key: String,
    },
    /// A downward API reference the agent does not support or that is malformed.
    #[error("{0}")]
    Unsupported(String),
    /// Reading a source from the API failed.
    #[error("{0}")]
    Api(String),
}

impl From<QuantityError> for ConfigError {
    fn from(e: QuantityError) -> Self {
        ConfigError::Unsupported(e.to_string())
    }
}

/// Where ConfigMaps and Secrets come from (the API server; a map in tests).
#[async_trait]
pub trait ObjectSource: Send + Sync {
    /// The ConfigMap, or `None` when it does not exist.
    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>, String>;
    /// The Secret, or `None` when it does not exist.
    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, String>;
}

/// ConfigMaps and Secrets read once per container start.
pub struct Lookups<'a> {
    source: &'a dyn ObjectSource,
    namespace: &'a str,
    config_maps: HashMap<String, Option<ConfigMap>>,
    secrets: HashMap<String, Option<Secret>>,
}

impl<'a> Lookups<'a> {
    pub fn new(source: &'a dyn ObjectSource, namespace: &'a str) -> Self {
        Lookups {
            source,
            namespace,
            config_maps: HashMap::new(),
            secrets: HashMap::new(),
        }
    }

    /// A ConfigMap's entries (`data` and UTF-8 `binaryData`), `None` when it does not exist.
    pub async fn config_map(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        if !self.config_maps.contains_key(name) {
            let cm = self
                .source
                .config_map(self.namespace, name)
                .await
                .map_err(ConfigError::Api)?;
            self.config_maps.insert(name.to_string(), cm);
        }
        Ok(self.config_maps[name].as_ref().map(config_map_entries))
    }

    /// A Secret's entries (`data`, plus `stringData` if a server left it), `None` when it does
    /// not exist.
    pub async fn secret(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        if !self.secrets.contains_key(name) {
            let secret = self
                .source
                .secret(self.namespace, name)
                .await
                .map_err(ConfigError::Api)?;
            self.secrets.insert(name.to_string(), secret);
        }
        Ok(self.secrets[name].as_ref().map(secret_entries))
    }
}

/// Every entry of a ConfigMap as bytes.
pub fn config_map_entries(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (k, v) in cm.binary_data.iter().flatten() {
        out.insert(k.clone(), v.0.clone());
    }
    for (k, v) in cm.data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

/// Every entry of a Secret as bytes.
pub fn secret_entries(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (k, v) in secret.data.iter().flatten() {
        out.insert(k.clone(), v.0.clone());
    }
    for (k, v) in secret.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

/// Expands `$(VAR)` references as Kubernetes does (`third_party/forked/golang/expansion`):
/// a defined name is replaced by its value, an undefined one is left as written, `$$` is a
/// literal `$`, and a `$` not starting a reference stays.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            let advance = match rest.as_bytes()[0] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest.find(')') {
                    Some(close) => {
                        let name = &rest[1..close];
                        match lookup(name) {
                            Some(value) => out.push_str(&value),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        close + 1
                    }
                    None => {
                        out.push_str("$(");
                        1
                    }
                },
                _ => {
                    // `$` followed by any other character: both are kept.
                    let ch = rest.chars().next().map_or(1, char::len_utf8);
                    out.push('$');
                    out.push_str(&rest[..ch]);
                    ch
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    if checkpoint < input.len() {
        out.push_str(&input[checkpoint..]);
    }
    out
}

/// An insertion-ordered environment where a later value replaces an earlier one in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Environment {
    vars: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl Environment {
    pub fn set(&mut self, name: &str, value: String) {
        match self.index.get(name) {
            Some(&i) => self.vars[i].1 = value,
            None => {
                self.index.insert(name.to_string(), self.vars.len());
                self.vars.push((name.to_string(), value));
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|&i| self.vars[i].1.as_str())
    }

    pub fn into_vec(self) -> Vec<(String, String)> {
        self.vars
    }

    pub fn as_slice(&self) -> &[(String, String)] {
        &self.vars
    }
}

/// What the downward API may report about the pod beyond its object.
#[derive(Clone, Debug, Default)]
pub struct PodRuntimeInfo {
    pub pod_ip: Option<Ipv4Addr>,
    pub host_ip: Option<Ipv4Addr>,
    /// The node's allocatable cpu and memory: what `limits.*` resource references report for a
    /// container without limits.
    pub node_allocatable_cpu_millis: i128,
    pub node_allocatable_memory_bytes: i128,
    pub node_allocatable_ephemeral_bytes: i128,
}

/// A `$(VAR)` expansion with the container's final environment.
pub fn expand_all(items: &[String], env: &[(String, String)]) -> Vec<String> {
    let map: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    items
        .iter()
        .map(|s| expand(s, |name| map.get(name).map(|v| v.to_string())))
        .collect()
}

/// The container's environment, resolved. `service_env` are the Service link variables
/// (see [`service_env`]).
pub async fn resolve(
    pod: &Pod,
    container: &Container,
    info: &PodRuntimeInfo,
    service_env: &[(String, String)],
    lookups: &mut Lookups<'_>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env = Environment::default();
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.as_deref().unwrap_or("");
        if let Some(cm) = &source.config_map_ref {
            let optional = cm.optional.unwrap_or(false);
            match lookups.config_map(&cm.name).await? {
                Some(entries) => {
                    for (k, v) in entries {
                        env.set(
                            &format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v).into_owned(),
                        );
                    }
                }
                None if optional => {}
                None => return Err(ConfigError::ConfigMapNotFound(cm.name.clone())),
            }
        } else if let Some(sec) = &source.secret_ref {
            let optional = sec.optional.unwrap_or(false);
            match lookups.secret(&sec.name).await? {
                Some(entries) => {
                    for (k, v) in entries {
                        env.set(
                            &format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v).into_owned(),
                        );
                    }
                }
                None if optional => {}
                None => return Err(ConfigError::SecretNotFound(sec.name.clone())),
            }
        }
    }
    let mut services: HashMap<&str, &str> = service_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for var in container.env.iter().flatten() {
        let value = var.value.as_deref().unwrap_or("");
        let resolved = if !value.is_empty() {
            expand(value, |name| {
                env.get(name)
                    .or_else(|| services.get(name).copied())
                    .map(str::to_string)
            })
        } else if let Some(from) = &var.value_from {
            if let Some(field) = &from.field_ref {
                field_value(field, pod, info)?
            } else if let Some(resource) = &from.resource_field_ref {
                resource_value(resource, pod, container, info)?
            } else if let Some(key_ref) = &from.config_map_key_ref {
                let optional = key_ref.optional.unwrap_or(false);
                match lookups.config_map(&key_ref.name).await? {
                    None if optional => continue,
                    None => return Err(ConfigError::ConfigMapNotFound(key_ref.name.clone())),
                    Some(entries) => match entries.get(&key_ref.key) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(ConfigError::ConfigMapKeyMissing {
                                namespace: namespace.to_string(),
                                name: key_ref.name.clone(),
                                key: key_ref.key.clone(),
                            });
                        }
                    },
                }
            } else if let Some(key_ref) = &from.secret_key_ref {
                let optional = key_ref.optional.unwrap_or(false);
                match lookups.secret(&key_ref.name).await? {
                    None if optional => continue,
                    None => return Err(ConfigError::SecretNotFound(key_ref.name.clone())),
                    Some(entries) => match entries.get(&key_ref.key) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(ConfigError::SecretKeyMissing {
                                namespace: namespace.to_string(),
                                name: key_ref.name.clone(),
                                key: key_ref.key.clone(),
                            });
                        }
                    },
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        services.remove(var.name.as_str());
        env.set(&var.name, resolved);
    }
    let mut rest: Vec<(&str, &str)> = services
        .into_iter()
        .filter(|(k, _)| env.get(k).is_none())
        .collect();
    rest.sort();
    for (k, v) in rest {
        env.set(k, v.to_string());
    }
    Ok(env.into_vec())
}

fn join_ips(ip: Option<Ipv4Addr>) -> String {
    ip.map(|ip| ip.to_string()).unwrap_or_default()
}

/// `labels`/`annotations` as the downward API formats a whole map: `key="value"` lines,
/// sorted by key, values quoted as Go's `%q`.
pub fn format_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Splits `metadata.labels['key']` into (`metadata.labels`, `key`).
fn subscript(path: &str) -> Option<(&str, &str)> {
    let (base, rest) = path.split_once("['")?;
    let key = rest.strip_suffix("']")?;
    Some((base, key))
}

/// A downward API field (`fieldRef.fieldPath`).
pub fn field_value(
    field: &ObjectFieldSelector,
    pod: &Pod,
    info: &PodRuntimeInfo,
) -> Result<String, ConfigError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let path = field.field_path.as_str();
    if let Some((base, key)) = subscript(path) {
        let map = match base {
            "metadata.labels" => meta.labels.as_ref(),
            "metadata.annotations" => meta.annotations.as_ref(),
            _ => {
                return Err(ConfigError::Unsupported(format!(
                    "unsupported fieldPath: {path}"
                )));
            }
        };
        return Ok(map.and_then(|m| m.get(key)).cloned().unwrap_or_default());
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref().unwrap_or(&BTreeMap::new())),
        "metadata.annotations" => format_map(meta.annotations.as_ref().unwrap_or(&BTreeMap::new())),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => join_ips(info.pod_ip),
        "status.hostIP" | "status.hostIPs" => join_ips(info.host_ip),
        _ => {
            return Err(ConfigError::Unsupported(format!(
                "unsupported fieldPath: {path}"
            )));
        }
    })
}

/// A resource reference (`resourceFieldRef`), `ceil(value / divisor)` as kubelet computes it;
/// unset limits report the node's allocatable.
pub fn resource_value(
    selector: &ResourceFieldSelector,
    pod: &Pod,
    own: &Container,
    info: &PodRuntimeInfo,
) -> Result<String, ConfigError> {
    let container = match selector.container_name.as_deref() {
        None | Some("") => own,
        Some(name) => pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .find(|c| c.name == name)
            .ok_or_else(|| {
                ConfigError::Unsupported(format!("container {name} not found in the pod"))
            })?,
    };
    let resources = container.resources.as_ref();
    let get = |which: &str, name: &str| -> Result<Option<Quantity>, ConfigError> {
        let list = match which {
            "limits" => resources.and_then(|r| r.limits.as_ref()),
            _ => resources.and_then(|r| r.requests.as_ref()),
        };
        match list.and_then(|l| l.get(name)) {
            Some(q) => Ok(Some(Quantity::parse(&q.0)?)),
            None => Ok(None),
        }
    };
    let divisor = match &selector.divisor {
        Some(d) if !d.0.is_empty() => Quantity::parse(&d.0)?,
        _ => Quantity::parse("1")?,
    };
    let (which, name) = selector.resource.split_once('.').ok_or_else(|| {
        ConfigError::Unsupported(format!(
            "unsupported container resource: {}",
            selector.resource
        ))
    })?;
    if !matches!(which, "limits" | "requests") {
        return Err(ConfigError::Unsupported(format!(
            "unsupported container resource: {}",
            selector.resource
        )));
    }
    let ceil_div = |value: i128, divisor: i128| -> String {
        if divisor <= 0 {
            return value.to_string();
        }
        let q = value / divisor;
        let r = value % divisor;
        (if r > 0 { q + 1 } else { q }).to_string()
    };
    match name {
        "cpu" => {
            let value = match get(which, "cpu")? {
                Some(q) => q.millis(),
                None if which == "limits" => info.node_allocatable_cpu_millis,
                None => 0,
            };
            Ok(ceil_div(value, divisor.millis()))
        }
        "memory" | "ephemeral-storage" => {
            let value = match get(which, name)? {
                Some(q) => q.units(),
                None if which == "limits" && name == "memory" => info.node_allocatable_memory_bytes,
                None if which == "limits" => info.node_allocatable_ephemeral_bytes,
                None => 0,
            };
            Ok(ceil_div(value, divisor.units()))
        }
        _ => Err(ConfigError::Unsupported(format!(
            "unsupported container resource: {}",
            selector.resource
        ))),
    }
}

/// A Service name as an environment variable prefix (`my-svc` → `MY_SVC`).
fn env_name(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// The Service link variables kubelet gives a pod (`envvars.FromServices`): for each Service
/// with a cluster IP, `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT`, one
/// `<NAME>_SERVICE_PORT_<PORT NAME>` per named port, and Docker link variables
/// (`<NAME>_PORT`, `<NAME>_PORT_<port>_<PROTO>`, `..._PROTO`, `..._PORT`, `..._ADDR`).
pub fn service_env(services: &[&Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for service in services {
        let Some(spec) = &service.spec else { continue };
        let Some(ip) = spec.cluster_ip.as_deref() else {
            continue;
        };
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let ports = spec.ports.as_deref().unwrap_or(&[]);
        let Some(first) = ports.first() else { continue };
        let prefix = env_name(service.metadata.name.as_deref().unwrap_or(""));
        out.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        for port in ports {
            if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!("{prefix}_SERVICE_PORT_{}", env_name(name)),
                    port.port.to_string(),
                ));
            }
        }
        for (i, port) in ports.iter().enumerate() {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            let lower = protocol.to_ascii_lowercase();
            let url = format!("{lower}://{ip}:{}", port.port);
            if i == 0 {
                out.push((format!("{prefix}_PORT"), url.clone()));
            }
            let port_prefix = format!(
                "{prefix}_PORT_{}_{}",
                port.port,
                protocol.to_ascii_uppercase()
            );
            out.push((port_prefix.clone(), url));
            out.push((format!("{port_prefix}_PROTO"), lower));
            out.push((format!("{port_prefix}_PORT"), port.port.to_string()));
            out.push((format!("{port_prefix}_ADDR"), ip.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource, PodSpec,
        ResourceRequirements, SecretEnvSource, SecretKeySelector, ServicePort, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity as Q;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::sync::Mutex;

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let vars = [("VAR_A", "A"), ("VAR_B", "B"), ("EMPTY", "")];
        let cases = [
            ("$(VAR_A)", "A"),
            ("___$(VAR_A)___", "___A___"),
            ("$(VAR_A)$(VAR_B)", "AB"),
            ("$(VAR_A)-$(VAR_C)", "A-$(VAR_C)"),
            ("$$(VAR_A)", "$(VAR_A)"),
            ("$$$(VAR_A)", "$A"),
            ("$$$$(VAR_A)", "$$(VAR_A)"),
            ("$(VAR_A", "$(VAR_A"),
            ("$VAR_A", "$VAR_A"),
            ("$", "$"),
            ("a$", "a$"),
            ("$(EMPTY)x", "x"),
            ("$()", "$()"),
            ("no refs", "no refs"),
            ("$(VAR_A)$", "A$"),
            ("é$(VAR_A)ü$é", "éAü$é"),
            ("$$", "$"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, lookup(&vars)), want, "input {input:?}");
        }
    }

    #[derive(Default)]
    struct Objects {
        config_maps: Vec<ConfigMap>,
        secrets: Vec<Secret>,
        reads: Mutex<usize>,
    }

    #[async_trait]
    impl ObjectSource for Objects {
        async fn config_map(&self, ns: &str, name: &str) -> Result<Option<ConfigMap>, String> {
            *self.reads.lock().unwrap() += 1;
            Ok(self
                .config_maps
                .iter()
                .find(|c| {
                    c.metadata.name.as_deref() == Some(name)
                        && c.metadata.namespace.as_deref() == Some(ns)
                })
                .cloned())
        }
        async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, String> {
            Ok(self
                .secrets
                .iter()
                .find(|c| {
                    c.metadata.name.as_deref() == Some(name)
                        && c.metadata.namespace.as_deref() == Some(ns)
                })
                .cloned())
        }
    }

    fn meta(ns: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        }
    }

    fn objects() -> Objects {
        Objects {
            config_maps: vec![ConfigMap {
                metadata: meta("ns", "cfg"),
                data: Some(BTreeMap::from([
                    ("MODE".to_string(), "fast".to_string()),
                    ("LEVEL".to_string(), "3".to_string()),
                ])),
                ..Default::default()
            }],
            secrets: vec![Secret {
                metadata: meta("ns", "creds"),
                data: Some(BTreeMap::from([(
                    "password".to_string(),
                    ByteString(b"hunter2".to_vec()),
                )])),
                ..Default::default()
            }],
            reads: Mutex::new(0),
        }
    }

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn var_from(name: &str, from: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(from),
        }
    }

    fn field(path: &str) -> EnvVarSource {
        EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: path.into(),
            }),
            ..Default::default()
        }
    }

    fn pod_with(container: Container) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some("web-1".into()),
                uid: Some("uid-1".into()),
                labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-a".into()),
                service_account_name: Some("default".into()),
                containers: vec![container],
                ..Default::default()
            }),
            status: None,
        }
    }

    fn info() -> PodRuntimeInfo {
        PodRuntimeInfo {
            pod_ip: Some(Ipv4Addr::new(10, 244, 0, 5)),
            host_ip: Some(Ipv4Addr::new(192, 168, 1, 10)),
            node_allocatable_cpu_millis: 2000,
            node_allocatable_memory_bytes: 8 << 30,
            node_allocatable_ephemeral_bytes: 100 << 30,
        }
    }

    async fn resolve_for(
        container: Container,
        services: &[(String, String)],
    ) -> Result<Vec<(String, String)>, ConfigError> {
        let objects = objects();
        let pod = pod_with(container.clone());
        let mut lookups = Lookups::new(&objects, "ns");
        resolve(&pod, &container, &info(), services, &mut lookups).await
    }

    fn get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn env_sources_resolve_in_kubelet_order() {
        let container = Container {
            name: "app".into(),
            env_from: Some(vec![
                EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource {
                        name: "cfg".into(),
                        optional: None,
                    }),
                    prefix: Some("CFG_".into()),
                    secret_ref: None,
                },
                EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: "creds".into(),
                        optional: None,
                    }),
                    ..Default::default()
                },
                EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource {
                        name: "absent".into(),
                        optional: Some(true),
                    }),
                    ..Default::default()
                },
            ]),
            env: Some(vec![
                var("GREETING", "hello $(POD_NAME) in $(CFG_MODE) mode"),
                var_from("POD_NAME", field("metadata.name")),
                var(
                    "AFTER",
                    "$(POD_NAME)/$(password)/$$(LITERAL)/$(KUBERNETES_SERVICE_HOST)",
                ),
                var_from("NS", field("metadata.namespace")),
                var_from("UID", field("metadata.uid")),
                var_from("POD_IP", field("status.podIP")),
                var_from("HOST_IP", field("status.hostIP")),
                var_from("NODE", field("spec.nodeName")),
                var_from("SA", field("spec.serviceAccountName")),
                var_from("APP", field("metadata.labels['app']")),
                var_from(
                    "LEVEL",
                    EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "cfg".into(),
                            key: "LEVEL".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                var_from(
                    "PASS",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "creds".into(),
                            key: "password".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                var_from(
                    "MAYBE",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "creds".into(),
                            key: "absent".into(),
                            optional: Some(true),
                        }),
                        ..Default::default()
                    },
                ),
                var("CFG_MODE", "overridden"),
                var("KUBERNETES_SERVICE_PORT", "own"),
            ]),
            ..Default::default()
        };
        let services = vec![
            (
                "KUBERNETES_SERVICE_HOST".to_string(),
                "10.96.0.1".to_string(),
            ),
            ("KUBERNETES_SERVICE_PORT".to_string(), "443".to_string()),
        ];
        let env = resolve_for(container, &services).await.unwrap();
        // A reference to a variable declared later stays unexpanded.
        assert_eq!(
            get(&env, "GREETING"),
            Some("hello $(POD_NAME) in fast mode")
        );
        assert_eq!(
            get(&env, "AFTER"),
            Some("web-1/hunter2/$(LITERAL)/10.96.0.1")
        );
        assert_eq!(get(&env, "NS"), Some("ns"));
        assert_eq!(get(&env, "UID"), Some("uid-1"));
        assert_eq!(get(&env, "POD_IP"), Some("10.244.0.5"));
        assert_eq!(get(&env, "HOST_IP"), Some("192.168.1.10"));
        assert_eq!(get(&env, "NODE"), Some("node-a"));
        assert_eq!(get(&env, "SA"), Some("default"));
        assert_eq!(get(&env, "APP"), Some("web"));
        assert_eq!(get(&env, "LEVEL"), Some("3"));
        assert_eq!(get(&env, "PASS"), Some("hunter2"));
        assert_eq!(get(&env, "MAYBE"), None);
        assert_eq!(get(&env, "CFG_LEVEL"), Some("3"));
        // `env` overrides `envFrom`, in place.
        assert_eq!(get(&env, "CFG_MODE"), Some("overridden"));
        assert_eq!(env[0].0, "CFG_LEVEL");
        // The container's own variable wins over the Service variable of the same name.
        assert_eq!(get(&env, "KUBERNETES_SERVICE_PORT"), Some("own"));
        assert_eq!(get(&env, "KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(
            env.iter()
                .filter(|(k, _)| k == "KUBERNETES_SERVICE_PORT")
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn missing_sources_fail_with_kubelets_messages() {
        let missing_cm = Container {
            name: "app".into(),
            env: Some(vec![var_from(
                "X",
                EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: "nope".into(),
                        key: "k".into(),
                        optional: None,
                    }),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        };
        let err = resolve_for(missing_cm, &[]).await.unwrap_err();
        assert_eq!(err.to_string(), "configmap \"nope\" not found");

        let missing_key = Container {
            name: "app".into(),
            env: Some(vec![var_from(
                "X",
                EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "creds".into(),
                        key: "user".into(),
                        optional: None,
                    }),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        };
        let err = resolve_for(missing_key, &[]).await.unwrap_err();
        assert_eq!(err.to_string(), "couldn't find key user in Secret ns/creds");

        let missing_secret = Container {
            name: "app".into(),
            env_from: Some(vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: "gone".into(),
                    optional: Some(false),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let err = resolve_for(missing_secret, &[]).await.unwrap_err();
        assert_eq!(err.to_string(), "secret \"gone\" not found");

        let bad_field = Container {
            name: "app".into(),
            env: Some(vec![var_from("X", field("spec.nope"))]),
            ..Default::default()
        };
        assert!(resolve_for(bad_field, &[]).await.is_err());
    }

    #[tokio::test]
    async fn sources_are_read_once_per_resolution() {
        let objects = objects();
        let container = Container {
            name: "app".into(),
            env: Some(
                ["MODE", "LEVEL", "MODE"]
                    .iter()
                    .map(|k| {
                        var_from(
                            k,
                            EnvVarSource {
                                config_map_key_ref: Some(ConfigMapKeySelector {
                                    name: "cfg".into(),
                                    key: k.to_string(),
                                    optional: None,
                                }),
                                ..Default::default()
                            },
                        )
                    })
                    .collect(),
            ),
            ..Default::default()
        };
        let pod = pod_with(container.clone());
        let mut lookups = Lookups::new(&objects, "ns");
        resolve(&pod, &container, &info(), &[], &mut lookups)
            .await
            .unwrap();
        assert_eq!(*objects.reads.lock().unwrap(), 1);
    }

    fn resources(limits: &[(&str, &str)], requests: &[(&str, &str)]) -> ResourceRequirements {
        let map = |items: &[(&str, &str)]| {
            (!items.is_empty()).then(|| {
                items
                    .iter()
                    .map(|(k, v)| (k.to_string(), Q(v.to_string())))
                    .collect()
            })
        };
        ResourceRequirements {
            limits: map(limits),
            requests: map(requests),
            ..Default::default()
        }
    }

    fn resource_ref(resource: &str, divisor: Option<&str>) -> ResourceFieldSelector {
        ResourceFieldSelector {
            container_name: None,
            divisor: divisor.map(|d| Q(d.into())),
            resource: resource.into(),
        }
    }

    #[test]
    fn resource_references_round_up_by_divisor() {
        let container = Container {
            name: "app".into(),
            resources: Some(resources(
                &[("cpu", "1500m"), ("memory", "129Mi")],
                &[("cpu", "250m")],
            )),
            ..Default::default()
        };
        let pod = pod_with(container.clone());
        let value = |r: &str, d: Option<&str>| {
            resource_value(&resource_ref(r, d), &pod, &container, &info()).unwrap()
        };
        assert_eq!(value("limits.cpu", None), "2");
        assert_eq!(value("limits.cpu", Some("1m")), "1500");
        assert_eq!(value("requests.cpu", Some("1m")), "250");
        assert_eq!(value("requests.cpu", None), "1");
        assert_eq!(value("limits.memory", None), (129u64 << 20).to_string());
        assert_eq!(value("limits.memory", Some("1Mi")), "129");
        assert_eq!(value("limits.memory", Some("1Gi")), "1");
        assert_eq!(value("requests.memory", None), "0");

        // Without limits: the node's allocatable.
        let bare = Container {
            name: "bare".into(),
            ..Default::default()
        };
        let pod = pod_with(bare.clone());
        let value = |r: &str, d: Option<&str>| {
            resource_value(&resource_ref(r, d), &pod, &bare, &info()).unwrap()
        };
        assert_eq!(value("limits.cpu", None), "2");
        assert_eq!(value("limits.memory", Some("1Gi")), "8");
        assert!(resource_value(&resource_ref("limits.gpu", None), &pod, &bare, &info()).is_err());
    }

    #[test]
    fn downward_maps_are_formatted_like_kubelet() {
        let map = BTreeMap::from([
            ("b".to_string(), "two \"quoted\"".to_string()),
            ("a".to_string(), "one".to_string()),
        ]);
        assert_eq!(format_map(&map), "a=\"one\"\nb=\"two \\\"quoted\\\"\"");
    }

    #[test]
    fn service_links_match_kubelet() {
        let service = Service {
            metadata: meta("ns", "my-svc"),
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.3.4".into()),
                ports: Some(vec![
                    ServicePort {
                        name: Some("http".into()),
                        port: 80,
                        ..Default::default()
                    },
                    ServicePort {
                        name: Some("dns-udp".into()),
                        port: 53,
                        protocol: Some("UDP".into()),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            status: None,
        };
        let headless = Service {
            metadata: meta("ns", "headless"),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                ports: Some(vec![ServicePort {
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        };
        let env = service_env(&[&service, &headless]);
        let want = [
            ("MY_SVC_SERVICE_HOST", "10.96.3.4"),
            ("MY_SVC_SERVICE_PORT", "80"),
            ("MY_SVC_SERVICE_PORT_HTTP", "80"),
            ("MY_SVC_SERVICE_PORT_DNS_UDP", "53"),
            ("MY_SVC_PORT", "tcp://10.96.3.4:80"),
            ("MY_SVC_PORT_80_TCP", "tcp://10.96.3.4:80"),
            ("MY_SVC_PORT_80_TCP_PROTO", "tcp"),
            ("MY_SVC_PORT_80_TCP_PORT", "80"),
            ("MY_SVC_PORT_80_TCP_ADDR", "10.96.3.4"),
            ("MY_SVC_PORT_53_UDP", "udp://10.96.3.4:53"),
            ("MY_SVC_PORT_53_UDP_PROTO", "udp"),
            ("MY_SVC_PORT_53_UDP_PORT", "53"),
            ("MY_SVC_PORT_53_UDP_ADDR", "10.96.3.4"),
        ];
        let got: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn command_and_args_expand_with_the_final_env() {
        let env = vec![("PORT".to_string(), "8080".to_string())];
        let args = vec!["--port=$(PORT)".to_string(), "$(MISSING)".to_string()];
        assert_eq!(expand_all(&args, &env), ["--port=8080", "$(MISSING)"]);
    }
}
