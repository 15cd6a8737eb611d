//! The scheduler's cache: every node with what its pods request, counting both the pods the
//! informer shows bound and the pods the scheduler has placed ("assumed") whose binding it has
//! not seen yet. Pods are assumed before their binding is sent, confirmed when the informer
//! shows them bound, forgotten when the binding fails: the next cycle never double-books.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Node, Pod, Taint};

use super::resources::{self, Resources};
use crate::controllers::runtime::controller_of;

/// The host IP meaning every address.
const ANY_IP: &str = "0.0.0.0";

/// A host port a pod's container takes on its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

impl HostPort {
    /// Whether two pods asking for these ports cannot share a node (same port and protocol, on
    /// the same address or on every address).
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == ANY_IP || other.ip == ANY_IP)
    }
}

/// The host ports of a pod: its containers' and its sidecars' ports with a `hostPort`.
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let containers: Vec<&Container> = spec.containers.iter().chain(sidecars).collect();
    let mut ports = Vec::new();
    for port in containers.iter().flat_map(|c| c.ports.iter().flatten()) {
        let Some(host_port) = port.host_port.filter(|p| *p > 0) else {
            continue;
        };
        ports.push(HostPort {
            ip: port
                .host_ip
                .clone()
                .filter(|ip| !ip.is_empty())
                .unwrap_or_else(|| ANY_IP.to_string()),
            protocol: port
                .protocol
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "TCP".to_string()),
            port: host_port,
        });
    }
    ports
}

/// What a pod takes on its node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodResources {
    /// Requests, for the fit check.
    pub requests: Resources,
    /// Requests with defaults for missing ones, for scoring.
    pub non_zero: Resources,
    pub ports: Vec<HostPort>,
}

impl PodResources {
    pub fn of(pod: &Pod) -> PodResources {
        PodResources {
            requests: resources::fit_requests(pod),
            non_zero: resources::score_requests(pod),
            ports: host_ports(pod),
        }
    }
}

/// The not-ready taint (the node lifecycle controller's, and what a node without a Ready
/// condition effectively carries).
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The taint of a node whose Ready condition is Unknown.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint a cordoned node stands for.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// The taints a node effectively has for scheduling: its own, plus the NoSchedule taint of its
/// Ready condition when that is not True (kube's TaintNodesByCondition adds it; a node written
/// by someone else may not have it yet).
pub fn effective_taints(node: &Node) -> Vec<Taint> {
    let mut taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    let implied = match ready {
        Some("True") => None,
        Some("Unknown") => Some(TAINT_UNREACHABLE),
        _ => Some(TAINT_NOT_READY),
    };
    if let Some(key) = implied
        && !taints
            .iter()
            .any(|t| t.key == key && t.effect == "NoSchedule")
    {
        taints.push(Taint {
            key: key.to_string(),
            effect: "NoSchedule".to_string(),
            ..Default::default()
        });
    }
    taints
}

/// One node as the scheduler sees it: its scheduling-relevant fields (precomputed when the
/// node changes) and the sum of what its pods take.
#[derive(Debug)]
pub struct NodeInfo {
    pub name: String,
    /// `None` while pods are bound to a node the informer does not (or no longer) show.
    pub node: Option<Arc<Node>>,
    pub allocatable: Resources,
    pub allowed_pods: i64,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub requested: Resources,
    pub non_zero_requested: Resources,
    pub pod_count: i64,
    /// Host ports in use (one entry per pod port, so removing a pod removes its own).
    pub ports: Vec<HostPort>,
    /// Pods per controller (by interned owner id).
    owners: Vec<(u32, u32)>,
}

impl NodeInfo {
    pub fn new(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            node: None,
            allocatable: Resources::default(),
            allowed_pods: 0,
            taints: Vec::new(),
            unschedulable: false,
            requested: Resources::default(),
            non_zero_requested: Resources::default(),
            pod_count: 0,
            ports: Vec::new(),
            owners: Vec::new(),
        }
    }

    /// Takes the scheduling-relevant fields of a (new version of the) node.
    pub fn set_node(&mut self, node: Arc<Node>) {
        let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        self.allocatable = resources::resource_list(allocatable, Resources::default());
        self.allowed_pods = resources::allowed_pods(allocatable);
        self.taints = effective_taints(&node);
        self.unschedulable = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        self.node = Some(node);
    }

    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.node.as_ref().and_then(|n| n.metadata.labels.as_ref())
    }

    /// How many of the node's pods belong to this controller.
    pub fn owner_count(&self, owner: u32) -> u32 {
        self.owners
            .iter()
            .find(|(id, _)| *id == owner)
            .map_or(0, |(_, n)| *n)
    }

    fn add_pod(&mut self, pod: &PodResources, owner: Option<u32>) {
        self.requested.add(pod.requests);
        self.non_zero_requested.add(pod.non_zero);
        self.pod_count += 1;
        self.ports.extend(pod.ports.iter().cloned());
        if let Some(owner) = owner {
            match self.owners.iter_mut().find(|(id, _)| *id == owner) {
                Some((_, n)) => *n += 1,
                None => self.owners.push((owner, 1)),
            }
        }
    }

    fn remove_pod(&mut self, pod: &PodResources, owner: Option<u32>) {
        self.requested.sub(pod.requests);
        self.non_zero_requested.sub(pod.non_zero);
        self.pod_count -= 1;
        for port in &pod.ports {
            if let Some(i) = self.ports.iter().position(|p| p == port) {
                self.ports.swap_remove(i);
            }
        }
        if let Some(owner) = owner
            && let Some(i) = self.owners.iter().position(|(id, _)| *id == owner)
        {
            self.owners[i].1 -= 1;
            if self.owners[i].1 == 0 {
                self.owners.swap_remove(i);
            }
        }
    }
}

#[derive(Debug)]
struct CachedPod {
    uid: String,
    node: String,
    resources: PodResources,
    /// The controller's interned id and uid.
    owner: Option<(u32, String)>,
    assumed: bool,
}

/// Every node and every pod bound (or assumed) to one.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    pods: HashMap<String, CachedPod>,
    /// Controller uid -> (interned id, pods counted).
    owners: HashMap<String, (u32, usize)>,
    next_owner: u32,
    /// Nodes with a Node object (the others only hold pods).
    node_count: usize,
    /// Where the next scheduling cycle starts looking (an index into `nodes`).
    pub next_start: usize,
}

fn pod_uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or("")
}

/// The uid of a pod's controller (the owner the default spreading counts by).
pub fn owner_uid(pod: &Pod) -> Option<&str> {
    controller_of(&pod.metadata).map(|o| o.uid.as_str())
}

impl Cache {
    /// Every node entry, including those without a Node object (`node` is `None`; skip them).
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// How many nodes have a Node object.
    pub fn node_count(&self) -> usize {
        self.node_count
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    /// The position of a node in [`Cache::nodes`].
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    fn entry(&mut self, name: &str) -> usize {
        if let Some(i) = self.index.get(name) {
            return *i;
        }
        self.nodes.push(NodeInfo::new(name));
        let i = self.nodes.len() - 1;
        self.index.insert(name.to_string(), i);
        i
    }

    /// Adds or updates a node.
    pub fn set_node(&mut self, node: Arc<Node>) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        let i = self.entry(&name);
        if self.nodes[i].node.is_none() {
            self.node_count += 1;
        }
        self.nodes[i].set_node(node);
    }

    /// Removes a node; pods still bound to it keep being counted until they go.
    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.get(name).copied() else {
            return;
        };
        if self.nodes[i].node.take().is_some() {
            self.node_count -= 1;
        }
        self.drop_if_unused(i);
    }

    fn drop_if_unused(&mut self, i: usize) {
        if self.nodes[i].node.is_some() || self.nodes[i].pod_count > 0 {
            return;
        }
        let gone = self.nodes.swap_remove(i);
        self.index.remove(&gone.name);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
    }

    /// The interned id of a controller, if any pod of it is counted.
    pub fn owner_id(&self, uid: &str) -> Option<u32> {
        self.owners.get(uid).map(|(id, _)| *id)
    }

    fn intern_owner(&mut self, uid: &str) -> u32 {
        if let Some((id, refs)) = self.owners.get_mut(uid) {
            *refs += 1;
            return *id;
        }
        let id = self.next_owner;
        self.next_owner = self.next_owner.wrapping_add(1);
        self.owners.insert(uid.to_string(), (id, 1));
        id
    }

    fn release_owner(&mut self, uid: &str) {
        if let Some((_, refs)) = self.owners.get_mut(uid) {
            *refs -= 1;
            if *refs == 0 {
                self.owners.remove(uid);
            }
        }
    }

    /// Counts a pod on a node (replacing what was counted for the same key).
    pub fn add_pod(
        &mut self,
        key: &str,
        pod: &Pod,
        node: &str,
        resources: PodResources,
        assumed: bool,
    ) {
        self.remove_pod(key);
        let owner = owner_uid(pod).map(|uid| (self.intern_owner(uid), uid.to_string()));
        let i = self.entry(node);
        self.nodes[i].add_pod(&resources, owner.as_ref().map(|(id, _)| *id));
        self.pods.insert(
            key.to_string(),
            CachedPod {
                uid: pod_uid(pod).to_string(),
                node: node.to_string(),
                resources,
                owner,
                assumed,
            },
        );
    }

    /// Counts a pod the scheduler placed before its binding is seen.
    pub fn assume(&mut self, key: &str, pod: &Pod, node: &str, resources: PodResources) {
        self.add_pod(key, pod, node, resources, true);
    }

    /// Records a pod the informer shows bound: confirms an assumption, or counts it.
    pub fn observe_bound(&mut self, key: &str, pod: &Pod) {
        let Some(node) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
        else {
            return;
        };
        if let Some(cached) = self.pods.get_mut(key)
            && cached.uid == pod_uid(pod)
            && cached.node == node
        {
            cached.assumed = false;
            return;
        }
        self.add_pod(key, pod, node, PodResources::of(pod), false);
    }

    /// Stops counting a pod; true if it was counted.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        let Some(cached) = self.pods.remove(key) else {
            return false;
        };
        if let Some(i) = self.index.get(&cached.node).copied() {
            let owner = cached.owner.as_ref().map(|(id, _)| *id);
            self.nodes[i].remove_pod(&cached.resources, owner);
            self.drop_if_unused(i);
        }
        if let Some((_, uid)) = &cached.owner {
            self.release_owner(uid);
        }
        true
    }

    /// Drops an assumption whose binding failed (a pod the informer has since shown bound,
    /// or a replacement with another uid, stays).
    pub fn forget(&mut self, key: &str, uid: &str) -> bool {
        match self.pods.get(key) {
            Some(cached) if cached.assumed && cached.uid == uid => self.remove_pod(key),
            _ => false,
        }
    }

    /// Whether a pod is assumed (placed, binding not seen yet).
    pub fn is_assumed(&self, key: &str) -> bool {
        self.pods.get(key).is_some_and(|p| p.assumed)
    }

    /// The node a pod is counted on.
    pub fn pod_node(&self, key: &str) -> Option<&str> {
        self.pods.get(key).map(|p| p.node.as_str())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerPort, NodeCondition, NodeSpec, NodeStatus, PodSpec, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    use super::*;

    /// A Ready node with this much allocatable CPU (millicores) and memory (MiB), and 110 pods.
    pub fn node(name: &str, milli_cpu: i64, memory_mib: i64) -> Node {
        let mut allocatable = BTreeMap::new();
        allocatable.insert("cpu".to_string(), Quantity(format!("{milli_cpu}m")));
        allocatable.insert("memory".to_string(), Quantity(format!("{memory_mib}Mi")));
        allocatable.insert("pods".to_string(), Quantity("110".into()));
        Node {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/hostname".to_string(),
                    name.to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(allocatable),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    /// A pending pod asking for this CPU (millicores) and memory (MiB), owned by `owner`.
    pub fn pod(name: &str, milli_cpu: i64, memory_mib: i64, owner: Option<&str>) -> Pod {
        let mut requests = BTreeMap::new();
        if milli_cpu > 0 {
            requests.insert("cpu".to_string(), Quantity(format!("{milli_cpu}m")));
        }
        if memory_mib > 0 {
            requests.insert("memory".to_string(), Quantity(format!("{memory_mib}Mi")));
        }
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                owner_references: owner.map(|uid| {
                    vec![OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: "ReplicaSet".into(),
                        name: "rs".into(),
                        uid: uid.to_string(),
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some(requests),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        }
    }

    pub fn bound(mut pod: Pod, node: &str) -> Pod {
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some(node.to_string());
        }
        pod
    }

    #[test]
    fn assumed_pods_count_until_forgotten_and_confirmation_keeps_them() {
        let mut cache = Cache::default();
        cache.set_node(Arc::new(node("n1", 4000, 8192)));
        let p = pod("a", 500, 256, Some("rs-1"));
        cache.assume("default/a", &p, "n1", PodResources::of(&p));
        let n1 = cache.node("n1").unwrap();
        assert_eq!(n1.requested.milli_cpu, 500);
        assert_eq!(n1.pod_count, 1);
        assert_eq!(n1.owner_count(cache.owner_id("rs-1").unwrap()), 1);

        // A failed binding forgets the assumption.
        assert!(cache.forget("default/a", "uid-a"));
        assert_eq!(cache.node("n1").unwrap().requested.milli_cpu, 0);
        assert_eq!(cache.owner_id("rs-1"), None);

        // Assumed, then seen bound: counted once, no longer assumed, not forgettable.
        cache.assume("default/a", &p, "n1", PodResources::of(&p));
        cache.observe_bound("default/a", &bound(p.clone(), "n1"));
        assert!(!cache.is_assumed("default/a"));
        assert!(!cache.forget("default/a", "uid-a"));
        assert_eq!(cache.node("n1").unwrap().pod_count, 1);

        // Bound elsewhere than assumed: moves.
        cache.set_node(Arc::new(node("n2", 4000, 8192)));
        cache.observe_bound("default/a", &bound(p, "n2"));
        assert_eq!(cache.node("n1").unwrap().pod_count, 0);
        assert_eq!(cache.node("n2").unwrap().pod_count, 1);
        assert!(cache.remove_pod("default/a"));
        assert_eq!(cache.node("n2").unwrap().requested, Resources::default());
    }

    #[test]
    fn pods_on_unknown_nodes_are_kept_until_they_go() {
        let mut cache = Cache::default();
        let p = bound(pod("a", 100, 0, None), "ghost");
        cache.observe_bound("default/a", &p);
        assert_eq!(cache.node_count(), 0);
        assert_eq!(cache.node("ghost").unwrap().pod_count, 1);
        cache.set_node(Arc::new(node("ghost", 1000, 1024)));
        assert_eq!(cache.node_count(), 1);
        assert_eq!(cache.node("ghost").unwrap().requested.milli_cpu, 100);
        cache.remove_node("ghost");
        assert_eq!(cache.node_count(), 0);
        assert!(cache.node("ghost").is_some());
        cache.remove_pod("default/a");
        assert!(cache.node("ghost").is_none());
    }

    #[test]
    fn removing_a_node_keeps_the_index_of_the_others() {
        let mut cache = Cache::default();
        for name in ["a", "b", "c"] {
            cache.set_node(Arc::new(node(name, 1000, 1024)));
        }
        cache.remove_node("a");
        assert_eq!(cache.node("c").unwrap().name, "c");
        assert_eq!(cache.node("b").unwrap().name, "b");
        assert_eq!(cache.nodes().len(), 2);
    }

    #[test]
    fn host_ports_default_to_every_address_and_tcp() {
        let mut p = pod("a", 0, 0, None);
        p.spec.as_mut().unwrap().containers[0].ports = Some(vec![
            ContainerPort {
                container_port: 80,
                host_port: Some(8080),
                ..Default::default()
            },
            ContainerPort {
                container_port: 53,
                ..Default::default()
            },
        ]);
        let ports = host_ports(&p);
        assert_eq!(
            ports,
            vec![HostPort {
                ip: "0.0.0.0".into(),
                protocol: "TCP".into(),
                port: 8080
            }]
        );
        let specific = HostPort {
            ip: "10.0.0.1".into(),
            protocol: "TCP".into(),
            port: 8080,
        };
        assert!(ports[0].conflicts(&specific));
        let udp = HostPort {
            protocol: "UDP".into(),
            ..specific.clone()
        };
        assert!(!specific.conflicts(&udp));
        let other_ip = HostPort {
            ip: "10.0.0.2".into(),
            ..specific.clone()
        };
        assert!(!specific.conflicts(&other_ip));
    }

    #[test]
    fn not_ready_nodes_carry_the_condition_taint() {
        let mut n = node("n", 1000, 1024);
        assert!(effective_taints(&n).is_empty());
        n.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "Unknown".into();
        let taints = effective_taints(&n);
        assert_eq!(taints.len(), 1);
        assert_eq!(taints[0].key, TAINT_UNREACHABLE);
        n.status.as_mut().unwrap().conditions = None;
        assert_eq!(effective_taints(&n)[0].key, TAINT_NOT_READY);
        // Already tainted by the lifecycle controller: not doubled.
        n.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: TAINT_NOT_READY.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]);
        assert_eq!(effective_taints(&n).len(), 1);
    }
}
