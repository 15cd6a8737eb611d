//! The EndpointSlice controller (Kubernetes' `pkg/controller/endpointslice`): for every Service
//! with a selector, the pods it selects as endpoints, in slices of at most 100, owned by the
//! Service and labelled `kubernetes.io/service-name` and
//! `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io`. Services without
//! a selector are left to the user.
//!
//! - Endpoint conditions: `ready` (pod Ready and not terminating; always with
//!   `publishNotReadyAddresses`), `serving` (pod Ready), `terminating` (deletionTimestamp set).
//! - Ports: each Service port resolved against the pod (named target ports look up the
//!   container port); pods resolving differently land in different slices.
//! - Minimal churn: an endpoint stays in the slice that has it; changed endpoints are updated
//!   in place, new ones fill existing slices with room before a slice is created, and a slice
//!   is only written when its content changes.
//! - Like Kubernetes' endpointSliceTracker, the controller remembers what it wrote and waits
//!   for the cache to show it before acting on a Service again (no duplicate slices).
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::task::JoinSet;

use super::Context;
use super::replicaset::pod_is_ready;
use super::runtime::{self, Change, WorkQueue};
use crate::apiserver::storage::DeleteOptions;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Endpoints per slice (Kubernetes' default `--max-endpoints-per-slice`).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
const WORKERS: usize = 4;

struct Controller {
    ctx: Arc<Context>,
    queue: Arc<WorkQueue>,
    /// Per Service key: slices written and the resourceVersion written (None: deleted).
    written: Mutex<HashMap<String, HashMap<String, Option<i64>>>>,
}

pub fn start(ctx: &Arc<Context>, tasks: &mut JoinSet<()>) {
    let controller = Arc::new(Controller {
        ctx: ctx.clone(),
        queue: WorkQueue::new(),
        written: Mutex::new(HashMap::new()),
    });
    {
        let queue = controller.queue.clone();
        ctx.services.on_change(move |change| match change {
            Change::Applied { new, .. } => queue.add(runtime::key_of(*new)),
            Change::Deleted(old) => queue.add(runtime::key_of(*old)),
        });
    }
    {
        let c = controller.clone();
        ctx.pods.on_change(move |change| match change {
            Change::Applied { old, new } => {
                if let Some(old) = old
                    && !endpoint_relevant_change(old, new)
                {
                    return;
                }
                c.enqueue_services_of(new);
                if let Some(old) = old
                    && old.metadata.labels != new.metadata.labels
                {
                    c.enqueue_services_of(old);
                }
            }
            Change::Deleted(old) => c.enqueue_services_of(old),
        });
    }
    {
        let queue = controller.queue.clone();
        ctx.endpoint_slices.on_change(move |change| {
            let slice = match change {
                Change::Applied { new, .. } => *new,
                Change::Deleted(old) => *old,
            };
            if let Some(service) = managed_service(slice) {
                queue.add(runtime::key(slice.metadata.namespace.as_deref(), service));
            }
        });
    }
    let c = controller.clone();
    runtime::spawn_workers(
        tasks,
        "endpointslice",
        controller.queue.clone(),
        WORKERS,
        move |key| {
            let c = c.clone();
            async move {
                c.ctx.wait_synced().await;
                c.sync(&key).await
            }
        },
    );
}

/// The Service a slice belongs to, if this controller manages it.
fn managed_service(slice: &EndpointSlice) -> Option<&str> {
    let labels = slice.metadata.labels.as_ref()?;
    if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY) {
        return None;
    }
    labels.get(SERVICE_NAME_LABEL).map(String::as_str)
}

/// Whether a pod update can change endpoints (labels, IP, readiness, deletion, node, ports).
fn endpoint_relevant_change(old: &Pod, new: &Pod) -> bool {
    old.metadata.labels != new.metadata.labels
        || old.metadata.deletion_timestamp != new.metadata.deletion_timestamp
        || pod_is_ready(old) != pod_is_ready(new)
        || old.status.as_ref().map(|s| (&s.pod_ip, &s.phase))
            != new.status.as_ref().map(|s| (&s.pod_ip, &s.phase))
        || old.spec.as_ref().map(|s| &s.node_name) != new.spec.as_ref().map(|s| &s.node_name)
}

fn service_selects(service: &Service, pod: &Pod) -> bool {
    let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    if selector.is_empty() {
        return false;
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Controller {
    fn enqueue_services_of(&self, pod: &Pod) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        for service in self.ctx.services.list_namespace(ns) {
            if service_selects(&service, pod) {
                self.queue.add(runtime::key_of(service.as_ref()));
            }
        }
    }

    fn lock_written(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Option<i64>>>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the cache shows every write this controller made for the Service.
    fn cache_current(&self, key: &str, namespace: &str) -> bool {
        let mut written = self.lock_written();
        let Some(slices) = written.get_mut(key) else {
            return true;
        };
        slices.retain(|name, rv| {
            let cached = self.ctx.endpoint_slices.get(Some(namespace), name);
            let cached_rv = cached
                .as_ref()
                .and_then(|s| s.metadata.resource_version.as_deref())
                .and_then(|v| v.parse::<i64>().ok());
            match rv {
                None => cached.is_some(),
                Some(rv) => cached_rv.is_none_or(|c| c < *rv),
            }
        });
        let current = slices.is_empty();
        if current {
            written.remove(key);
        }
        current
    }

    fn remember(&self, key: &str, slice: &str, rv: Option<i64>) {
        self.lock_written()
            .entry(key.to_string())
            .or_default()
            .insert(slice.to_string(), rv);
    }

    async fn sync(&self, key: &str) -> anyhow::Result<Option<Duration>> {
        let (ns, name) = runtime::split_key(key);
        let namespace = ns.unwrap_or("").to_string();
        if !self.cache_current(key, &namespace) {
            return Ok(Some(Duration::from_millis(50)));
        }
        let existing: Vec<Arc<EndpointSlice>> = self
            .ctx
            .endpoint_slices
            .list_namespace(&namespace)
            .into_iter()
            .filter(|s| managed_service(s) == Some(name))
            .collect();
        let service = self.ctx.services.get(ns, name);
        let selector_set = service
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.selector.as_ref())
            .is_some_and(|s| !s.is_empty());
        let Some(service) =
            service.filter(|s| selector_set && s.metadata.deletion_timestamp.is_none())
        else {
            // No Service (or no selector): the slices we made go (the GC would, too).
            for slice in existing {
                self.delete_slice(key, &slice).await?;
            }
            return Ok(None);
        };
        let pods: Vec<Arc<Pod>> = self
            .ctx
            .pods
            .list_namespace(&namespace)
            .into_iter()
            .filter(|p| service_selects(&service, p))
            .collect();
        let desired = desired_endpoints(&service, &pods);
        let plan = plan_slices(&desired, &existing);
        let owner = owner_reference(&service);
        for slice in plan.delete {
            self.delete_slice(key, &slice).await?;
        }
        for (slice, ports, endpoints) in plan.update {
            let slice_name = slice.metadata.name.clone().unwrap_or_default();
            let uid = slice.metadata.uid.clone();
            let written = self
                .ctx
                .client
                .update::<EndpointSlice, _>(ns, &slice_name, None, |current| {
                    if current.metadata.uid != uid {
                        return false;
                    }
                    current.ports = ports.clone();
                    current.endpoints = endpoints.clone();
                    true
                })
                .await;
            match written {
                Ok(Some(s)) => self.remember(key, &slice_name, rv_of(&s)),
                Ok(None) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => anyhow::bail!("updating endpoint slice {slice_name}: {}", e.message),
            }
        }
        for (ports, endpoints) in plan.create {
            let slice = EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{name}-")),
                    namespace: Some(namespace.clone()),
                    labels: Some(slice_labels(&service)),
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints,
                ports,
            };
            match self.ctx.client.create(&slice).await {
                Ok(s) => self.remember(key, s.metadata.name.as_deref().unwrap_or(""), rv_of(&s)),
                Err(e) => anyhow::bail!("creating an endpoint slice for {key}: {}", e.message),
            }
        }
        Ok(None)
    }

    async fn delete_slice(&self, key: &str, slice: &EndpointSlice) -> anyhow::Result<()> {
        let name = slice.metadata.name.clone().unwrap_or_default();
        let uid = slice.metadata.uid.clone().unwrap_or_default();
        self.ctx
            .client
            .delete_uid::<EndpointSlice>(
                slice.metadata.namespace.as_deref(),
                &name,
                &uid,
                &DeleteOptions::default(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("deleting endpoint slice {name}: {}", e.message))?;
        self.remember(key, &name, None);
        Ok(())
    }
}

fn rv_of(slice: &EndpointSlice) -> Option<i64> {
    slice
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
}

fn slice_labels(service: &Service) -> BTreeMap<String, String> {
    // Kubernetes copies the Service's labels, then sets its own two.
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    labels.remove("service.kubernetes.io/headless");
    labels.insert(
        SERVICE_NAME_LABEL.into(),
        service.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels
}

fn owner_reference(service: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: service.metadata.name.clone().unwrap_or_default(),
        uid: service.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A set of resolved ports, the grouping key of slices.
type Ports = Option<Vec<EndpointPort>>;

/// The endpoints the Service should have, grouped by their resolved ports.
pub fn desired_endpoints(service: &Service, pods: &[Arc<Pod>]) -> Vec<(Ports, Endpoint)> {
    let spec = service.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let mut out = Vec::new();
    for pod in pods {
        let status = pod.status.clone().unwrap_or_default();
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(ip) = status
            .pod_ip
            .clone()
            .filter(|ip| !ip.is_empty() && !ip.contains(':'))
        else {
            continue;
        };
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ready = pod_is_ready(pod);
        let ports = resolve_ports(spec.ports.as_deref().unwrap_or(&[]), pod);
        let endpoint = Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(publish_not_ready || (ready && !terminating)),
                serving: Some(publish_not_ready || ready),
                terminating: Some(terminating),
            }),
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        out.push((ports, endpoint));
    }
    out.sort_by(|a, b| a.1.addresses.cmp(&b.1.addresses));
    out
}

/// The Service's ports resolved for one pod: a named targetPort is looked up in the pod's
/// containers (a pod without it gets no such port, as in Kubernetes).
pub fn resolve_ports(ports: &[ServicePort], pod: &Pod) -> Ports {
    let mut out = Vec::new();
    for port in ports {
        let number = match &port.target_port {
            None => Some(port.port),
            Some(IntOrString::Int(n)) => Some(*n),
            Some(IntOrString::String(name)) => match name.parse::<i32>() {
                Ok(n) => Some(n),
                Err(_) => find_named_port(pod, name, port.protocol.as_deref().unwrap_or("TCP")),
            },
        };
        if let Some(number) = number {
            out.push(EndpointPort {
                name: Some(port.name.clone().unwrap_or_default()),
                port: Some(number),
                protocol: Some(port.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: port.app_protocol.clone(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Some(out)
}

fn find_named_port(pod: &Pod, name: &str, protocol: &str) -> Option<i32> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name) && p.protocol.as_deref().unwrap_or("TCP") == protocol
        })
        .map(|p| p.container_port)
}

/// What to write to reach the desired endpoints from the existing slices.
#[derive(Default)]
pub struct Plan {
    pub create: Vec<(Ports, Vec<Endpoint>)>,
    pub update: Vec<(Arc<EndpointSlice>, Ports, Vec<Endpoint>)>,
    pub delete: Vec<Arc<EndpointSlice>>,
}

fn endpoint_id(e: &Endpoint) -> String {
    e.target_ref
        .as_ref()
        .and_then(|r| r.uid.clone())
        .unwrap_or_else(|| e.addresses.join(","))
}

fn ports_key(ports: &Ports) -> String {
    serde_json::to_string(ports).unwrap_or_default()
}

/// Plans slices with minimal churn (see the module docs).
pub fn plan_slices(desired: &[(Ports, Endpoint)], existing: &[Arc<EndpointSlice>]) -> Plan {
    let mut plan = Plan::default();
    // Desired endpoints by ports key, then by id.
    let mut wanted: BTreeMap<String, (Ports, BTreeMap<String, Endpoint>)> = BTreeMap::new();
    for (ports, endpoint) in desired {
        wanted
            .entry(ports_key(ports))
            .or_insert_with(|| (ports.clone(), BTreeMap::new()))
            .1
            .insert(endpoint_id(endpoint), endpoint.clone());
    }
    // Pass 1: keep or update endpoints where they are; note each slice's new content.
    struct Kept {
        slice: Arc<EndpointSlice>,
        key: String,
        endpoints: Vec<Endpoint>,
        changed: bool,
    }
    let mut kept: Vec<Kept> = Vec::new();
    for slice in existing {
        let key = ports_key(&slice.ports);
        let mut endpoints = Vec::new();
        let mut changed = false;
        let group = wanted.get_mut(&key);
        match group {
            Some((_, remaining)) => {
                for endpoint in &slice.endpoints {
                    match remaining.remove(&endpoint_id(endpoint)) {
                        Some(want) => {
                            if want != *endpoint {
                                changed = true;
                            }
                            endpoints.push(want);
                        }
                        None => changed = true,
                    }
                }
            }
            None => changed = !slice.endpoints.is_empty(),
        }
        kept.push(Kept {
            slice: slice.clone(),
            key,
            endpoints,
            changed,
        });
    }
    // Pass 2: fill slices with room (ones already changing first), then create new ones.
    kept.sort_by_key(|k| !k.changed);
    for (key, (ports, remaining)) in wanted.iter_mut() {
        let mut rest: Vec<Endpoint> = std::mem::take(remaining).into_values().collect();
        for k in kept.iter_mut().filter(|k| &k.key == key) {
            while k.endpoints.len() < MAX_ENDPOINTS_PER_SLICE && !rest.is_empty() {
                k.endpoints.push(rest.remove(0));
                k.changed = true;
            }
        }
        for chunk in rest.chunks(MAX_ENDPOINTS_PER_SLICE) {
            plan.create.push((ports.clone(), chunk.to_vec()));
        }
    }
    // Slices left empty go, except one placeholder when the Service has no endpoints at all.
    let total: usize = kept.iter().map(|k| k.endpoints.len()).sum::<usize>()
        + plan.create.iter().map(|c| c.1.len()).sum::<usize>();
    let mut placeholder_kept = false;
    for k in kept {
        if k.endpoints.is_empty() {
            if total == 0 && !placeholder_kept {
                placeholder_kept = true;
                if !k.slice.endpoints.is_empty()
                    || k.slice.ports.as_ref().is_some_and(|p| !p.is_empty())
                {
                    plan.update.push((k.slice, None, vec![]));
                }
            } else {
                plan.delete.push(k.slice);
            }
        } else if k.changed {
            let ports = wanted
                .get(&k.key)
                .map(|(p, _)| p.clone())
                .unwrap_or_else(|| k.slice.ports.clone());
            plan.update.push((k.slice, ports, k.endpoints));
        }
    }
    if total == 0 && !placeholder_kept {
        plan.create.push((None, vec![]));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServiceSpec,
    };

    fn pod(name: &str, ip: &str, ready: bool) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: 8080,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    fn service() -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("svc".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_string(), "web".to_string())].into()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(IntOrString::String("http".into())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn slice(name: &str, plan: (Ports, Vec<Endpoint>)) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            ports: plan.0,
            endpoints: plan.1,
        })
    }

    #[test]
    fn named_target_ports_resolve_and_conditions_follow_readiness() {
        let desired = desired_endpoints(
            &service(),
            &[pod("a", "10.0.0.1", true), pod("b", "10.0.0.2", false)],
        );
        assert_eq!(desired.len(), 2);
        let port = &desired[0].0.as_ref().unwrap()[0];
        assert_eq!(
            (port.port, port.name.as_deref()),
            (Some(8080), Some("http"))
        );
        let cond = |i: usize| desired[i].1.conditions.clone().unwrap();
        assert_eq!(
            (cond(0).ready, cond(0).serving, cond(0).terminating),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!((cond(1).ready, cond(1).serving), (Some(false), Some(false)));
        assert_eq!(desired[0].1.node_name.as_deref(), Some("n1"));
    }

    #[test]
    fn slices_hold_at_most_100_endpoints() {
        let pods: Vec<Arc<Pod>> = (0..250)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.0.{}.{}", i / 200, i % 200 + 1),
                    true,
                )
            })
            .collect();
        let plan = plan_slices(&desired_endpoints(&service(), &pods), &[]);
        let sizes: Vec<usize> = plan.create.iter().map(|c| c.1.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
    }

    #[test]
    fn a_readiness_change_rewrites_only_the_slice_holding_the_pod() {
        let pods: Vec<Arc<Pod>> = (0..150)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.0.{}.{}", i / 200, i % 200 + 1),
                    true,
                )
            })
            .collect();
        let first = plan_slices(&desired_endpoints(&service(), &pods), &[]);
        let existing: Vec<Arc<EndpointSlice>> = first
            .create
            .into_iter()
            .enumerate()
            .map(|(i, c)| slice(&format!("s{i}"), c))
            .collect();
        let in_second = existing[1].endpoints[0]
            .target_ref
            .as_ref()
            .unwrap()
            .name
            .clone()
            .unwrap();
        let mut changed = pods.clone();
        let idx = changed
            .iter()
            .position(|p| p.metadata.name.as_deref() == Some(in_second.as_str()))
            .unwrap();
        changed[idx] = pod(
            &in_second,
            changed[idx]
                .status
                .as_ref()
                .unwrap()
                .pod_ip
                .as_deref()
                .unwrap(),
            false,
        );
        let plan = plan_slices(&desired_endpoints(&service(), &changed), &existing);
        assert!(plan.create.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.update.len(), 1);
        assert_eq!(plan.update[0].0.metadata.name.as_deref(), Some("s1"));
        // Unchanged state plans nothing.
        let again = plan_slices(&desired_endpoints(&service(), &pods), &existing);
        assert!(again.create.is_empty() && again.update.is_empty() && again.delete.is_empty());
    }

    #[test]
    fn new_endpoints_fill_existing_room_and_empty_services_keep_a_placeholder() {
        let pods: Vec<Arc<Pod>> = (0..10)
            .map(|i| pod(&format!("p{i}"), &format!("10.0.0.{}", i + 1), true))
            .collect();
        let existing = vec![slice(
            "s0",
            plan_slices(&desired_endpoints(&service(), &pods[..5]), &[])
                .create
                .remove(0),
        )];
        let plan = plan_slices(&desired_endpoints(&service(), &pods), &existing);
        assert!(plan.create.is_empty());
        assert_eq!(plan.update[0].2.len(), 10);
        let emptied = plan_slices(&[], &existing);
        assert!(emptied.delete.is_empty() && emptied.create.is_empty());
        assert_eq!(emptied.update[0].2.len(), 0);
        assert_eq!(plan_slices(&[], &[]).create.len(), 1);
    }
}
