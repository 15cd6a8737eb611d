//! The filters and scores of kube-scheduler's default profile that Keel implements, as plain
//! functions over a pod (with its precomputed [`PodInfo`]) and a node's [`NodeInfo`].
//!
//! Filters, in kube's order: NodeUnschedulable, NodeName, TaintToleration (the Ready condition
//! counts as its taint), NodeAffinity (nodeSelector and required affinity), NodePorts,
//! NodeResourcesFit. Scores (0–100, weighted as kube's defaults): NodeResourcesFit
//! LeastAllocated ×1, NodeAffinity preferred terms ×2, TaintToleration PreferNoSchedule ×3,
//! default spreading by controller ×2.
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PreferredSchedulingTerm, Taint,
    Toleration,
};

use super::cache::{Cache, NodeInfo, PodResources, TAINT_UNSCHEDULABLE, owner_uid};

/// Why a node cannot run a pod, worded as kube-scheduler's plugins word it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason<'a> {
    Unschedulable,
    NodeName,
    Taint { key: &'a str, value: &'a str },
    NodeAffinity,
    NodePorts,
    TooManyPods,
    InsufficientCpu,
    InsufficientMemory,
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::NodeName => f.write_str("node(s) didn't match the requested node name"),
            Reason::Taint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Reason::NodeAffinity => {
                f.write_str("node(s) didn't match Pod's node affinity/selector")
            }
            Reason::NodePorts => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::InsufficientCpu => f.write_str("Insufficient cpu"),
            Reason::InsufficientMemory => f.write_str("Insufficient memory"),
        }
    }
}

/// The reasons one node was filtered out (one plugin's; NodeResourcesFit can give several).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reasons<'a>([Option<Reason<'a>>; 3]);

impl<'a> Reasons<'a> {
    fn one(reason: Reason<'a>) -> Self {
        Reasons([Some(reason), None, None])
    }

    fn push(&mut self, reason: Reason<'a>) {
        if let Some(slot) = self.0.iter_mut().find(|r| r.is_none()) {
            *slot = Some(reason);
        }
    }

    fn is_empty(&self) -> bool {
        self.0[0].is_none()
    }

    pub fn iter(&self) -> impl Iterator<Item = Reason<'a>> + '_ {
        self.0.iter().flatten().copied()
    }
}

/// What the filters and scores need from a pod, computed once per scheduling attempt.
pub struct PodInfo<'p> {
    pub pod: &'p Pod,
    pub resources: PodResources,
    /// The controller's interned id, when some node already counts pods of it.
    pub owner: Option<u32>,
    node_name: Option<&'p str>,
    tolerations: &'p [Toleration],
    node_selector: Option<&'p BTreeMap<String, String>>,
    required: Option<&'p NodeSelector>,
    preferred: &'p [PreferredSchedulingTerm],
    tolerates_unschedulable: bool,
}

impl<'p> PodInfo<'p> {
    pub fn new(pod: &'p Pod, cache: &Cache) -> PodInfo<'p> {
        let spec = pod.spec.as_ref();
        let node_affinity = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref());
        let tolerations = spec
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default();
        let cordon = Taint {
            key: TAINT_UNSCHEDULABLE.to_string(),
            effect: "NoSchedule".to_string(),
            ..Default::default()
        };
        PodInfo {
            pod,
            resources: PodResources::of(pod),
            owner: owner_uid(pod).and_then(|uid| cache.owner_id(uid)),
            node_name: spec
                .and_then(|s| s.node_name.as_deref())
                .filter(|n| !n.is_empty()),
            tolerations,
            node_selector: spec.and_then(|s| s.node_selector.as_ref()),
            required: node_affinity.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            }),
            preferred: node_affinity
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_deref()
                })
                .unwrap_or_default(),
            tolerates_unschedulable: tolerated(tolerations, &cordon),
        }
    }
}

// ---- Tolerations and node selectors ------------------------------------------------------------

/// Whether a toleration tolerates a taint (kube's `Toleration.ToleratesTaint`): an empty effect
/// matches every effect, an empty key with `Exists` every taint.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    if let Some(key) = toleration.key.as_deref().filter(|k| !k.is_empty())
        && key != taint.key
    {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// Whether any of the tolerations tolerates the taint.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

fn requirement_matches(
    req: &NodeSelectorRequirement,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let value = labels.and_then(|l| l.get(&req.key));
    let values = req.values.as_deref().unwrap_or_default();
    let as_int = |s: &str| s.parse::<i64>().ok();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), [want]) = (value.and_then(|v| as_int(v)), values) else {
                return false;
            };
            let Some(want) = as_int(want) else {
                return false;
            };
            if req.operator == "Gt" {
                have > want
            } else {
                have < want
            }
        }
        _ => false,
    }
}

fn field_requirement_matches(req: &NodeSelectorRequirement, node_name: &str) -> bool {
    if req.key != "metadata.name" {
        return false;
    }
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => values.iter().any(|v| v == node_name),
        "NotIn" => !values.iter().any(|v| v == node_name),
        _ => false,
    }
}

/// Whether a node selector term matches a node: every expression and field requirement holds.
/// An empty term matches nothing, as in Kubernetes.
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.labels();
    expressions.iter().all(|r| requirement_matches(r, labels))
        && fields
            .iter()
            .all(|r| field_requirement_matches(r, &node.name))
}

// ---- Filters -----------------------------------------------------------------------------------

/// NodeUnschedulable: a cordoned node takes only pods tolerating its taint.
pub fn node_unschedulable(pod: &PodInfo, node: &NodeInfo) -> Option<Reason<'static>> {
    (node.unschedulable && !pod.tolerates_unschedulable).then_some(Reason::Unschedulable)
}

/// NodeName: a pod naming a node fits only there.
pub fn node_name(pod: &PodInfo, node: &NodeInfo) -> Option<Reason<'static>> {
    pod.node_name
        .is_some_and(|name| name != node.name)
        .then_some(Reason::NodeName)
}

/// TaintToleration: every NoSchedule and NoExecute taint must be tolerated; the first one that
/// is not is the reason.
pub fn taint_toleration<'n>(pod: &PodInfo, node: &'n NodeInfo) -> Option<Reason<'n>> {
    node.taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !tolerated(pod.tolerations, t))
        .map(|t| Reason::Taint {
            key: &t.key,
            value: t.value.as_deref().unwrap_or(""),
        })
}

/// NodeAffinity: the nodeSelector labels and one of the required terms must match.
pub fn node_affinity(pod: &PodInfo, node: &NodeInfo) -> Option<Reason<'static>> {
    if let Some(selector) = pod.node_selector {
        let labels = node.labels();
        if selector
            .iter()
            .any(|(k, v)| labels.and_then(|l| l.get(k)) != Some(v))
        {
            return Some(Reason::NodeAffinity);
        }
    }
    if let Some(required) = pod.required
        && !required
            .node_selector_terms
            .iter()
            .any(|term| term_matches(term, node))
    {
        return Some(Reason::NodeAffinity);
    }
    None
}

/// NodePorts: none of the pod's host ports may be taken on the node.
pub fn node_ports(pod: &PodInfo, node: &NodeInfo) -> Option<Reason<'static>> {
    pod.resources
        .ports
        .iter()
        .any(|want| node.ports.iter().any(|used| used.conflicts(want)))
        .then_some(Reason::NodePorts)
}

/// NodeResourcesFit: room for one more pod, and for what the pod requests of CPU and memory.
pub fn resources_fit(pod: &PodInfo, node: &NodeInfo) -> Reasons<'static> {
    let mut reasons = Reasons::default();
    if node.pod_count + 1 > node.allowed_pods {
        reasons.push(Reason::TooManyPods);
    }
    let want = pod.resources.requests;
    if want.milli_cpu > 0 && want.milli_cpu > node.allocatable.milli_cpu - node.requested.milli_cpu
    {
        reasons.push(Reason::InsufficientCpu);
    }
    if want.memory > 0 && want.memory > node.allocatable.memory - node.requested.memory {
        reasons.push(Reason::InsufficientMemory);
    }
    reasons
}

/// Runs the filters in order; the first that rejects the node gives the reasons.
pub fn filter<'n>(pod: &PodInfo, node: &'n NodeInfo) -> Result<(), Reasons<'n>> {
    let single = node_unschedulable(pod, node)
        .or_else(|| node_name(pod, node))
        .or_else(|| taint_toleration(pod, node))
        .or_else(|| node_affinity(pod, node))
        .or_else(|| node_ports(pod, node));
    if let Some(reason) = single {
        return Err(Reasons::one(reason));
    }
    let fit = resources_fit(pod, node);
    if fit.is_empty() { Ok(()) } else { Err(fit) }
}

// ---- Scores ------------------------------------------------------------------------------------

/// The highest score a plugin gives a node.
pub const MAX_NODE_SCORE: i64 = 100;

/// Plugin weights of kube's default profile.
pub const WEIGHT_LEAST_ALLOCATED: i64 = 1;
pub const WEIGHT_NODE_AFFINITY: i64 = 2;
pub const WEIGHT_TAINT_TOLERATION: i64 = 3;
pub const WEIGHT_SPREAD: i64 = 2;

fn least_requested(requested: i64, capacity: i64) -> i64 {
    if capacity <= 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_NODE_SCORE / capacity
}

/// NodeResourcesFit LeastAllocated: the share of CPU and memory left once the pod is on the
/// node (equal weights), from the requests with scoring defaults.
pub fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let want = pod.resources.non_zero;
    let used = node.non_zero_requested;
    let cpu = least_requested(used.milli_cpu + want.milli_cpu, node.allocatable.milli_cpu);
    let memory = least_requested(used.memory + want.memory, node.allocatable.memory);
    (cpu + memory) / 2
}

/// NodeAffinity (raw): the summed weights of the preferred terms the node matches.
pub fn preferred_affinity(pod: &PodInfo, node: &NodeInfo) -> i64 {
    pod.preferred
        .iter()
        .filter(|t| t.weight != 0 && term_matches(&t.preference, node))
        .map(|t| i64::from(t.weight))
        .sum()
}

/// TaintToleration (raw): how many PreferNoSchedule taints of the node the pod does not
/// tolerate (fewer is better).
pub fn intolerable_taints(pod: &PodInfo, node: &NodeInfo) -> i64 {
    node.taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|t| {
            !pod.tolerations.iter().any(|tol| {
                matches!(
                    tol.effect.as_deref(),
                    None | Some("") | Some("PreferNoSchedule")
                ) && tolerates(tol, t)
            })
        })
        .count() as i64
}

/// Default spreading (raw): how many pods of the pod's controller the node runs (fewer is
/// better).
pub fn owner_pods(pod: &PodInfo, node: &NodeInfo) -> i64 {
    pod.owner
        .map_or(0, |owner| i64::from(node.owner_count(owner)))
}

/// kube's `DefaultNormalizeScore`: scales raw scores to 0–100 by the highest (reversed when
/// lower raw is better).
pub fn normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max <= 0 {
        if reverse {
            scores.fill(MAX_NODE_SCORE);
        }
        return;
    }
    for score in scores.iter_mut() {
        let scaled = MAX_NODE_SCORE * *score / max;
        *score = if reverse {
            MAX_NODE_SCORE - scaled
        } else {
            scaled
        };
    }
}

/// PodTopologySpread's normalization of pod counts: the emptiest node scores 100, the fullest
/// proportionally less.
pub fn normalize_spread(scores: &mut [i64]) {
    let max = scores.iter().copied().max().unwrap_or(0);
    let min = scores.iter().copied().min().unwrap_or(0);
    for score in scores.iter_mut() {
        *score = if max == 0 {
            MAX_NODE_SCORE
        } else {
            MAX_NODE_SCORE * (max + min - *score) / max
        };
    }
}

// ---- The failure message -----------------------------------------------------------------------

/// kube-scheduler's message for a pod no node can run: `0/3 nodes are available: 1 Insufficient
/// cpu, 2 node(s) didn't match Pod's node affinity/selector.` — each reason with how many nodes
/// gave it, the entries sorted as text.
pub fn failure_message(node_count: usize, reasons: &BTreeMap<Reason<'_>, usize>) -> String {
    if node_count == 0 {
        return "no nodes available to schedule pods".to_string();
    }
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    if parts.is_empty() {
        return format!("0/{node_count} nodes are available.");
    }
    format!("0/{node_count} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Affinity, ContainerPort, NodeAffinity};

    use super::super::cache::tests::{node, pod};
    use super::*;

    fn info(name: &str, f: impl FnOnce(&mut k8s_openapi::api::core::v1::Node)) -> NodeInfo {
        let mut n = node(name, 4000, 8192);
        f(&mut n);
        let mut info = NodeInfo::new(name);
        info.set_node(Arc::new(n));
        info
    }

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: Some(value.into()).filter(|v: &String| !v.is_empty()),
            effect: effect.into(),
            ..Default::default()
        }
    }

    fn toleration(key: &str, operator: &str, value: &str, effect: &str) -> Toleration {
        let opt = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
        Toleration {
            key: opt(key),
            operator: opt(operator),
            value: opt(value),
            effect: opt(effect),
            ..Default::default()
        }
    }

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn with_required(mut p: Pod, terms: Vec<NodeSelectorTerm>) -> Pod {
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: terms,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    }

    fn labelled(labels: &[(&str, &str)]) -> NodeInfo {
        info("n1", |n| {
            let map = n.metadata.labels.get_or_insert_default();
            for (k, v) in labels {
                map.insert(k.to_string(), v.to_string());
            }
        })
    }

    #[test]
    fn cordoned_nodes_take_only_pods_tolerating_it() {
        let cache = Cache::default();
        let cordoned = info("n1", |n| {
            n.spec.as_mut().unwrap().unschedulable = Some(true)
        });
        let plain = pod("a", 0, 0, None);
        assert_eq!(
            node_unschedulable(&PodInfo::new(&plain, &cache), &cordoned),
            Some(Reason::Unschedulable)
        );
        let mut tolerant = plain.clone();
        tolerant.spec.as_mut().unwrap().tolerations = Some(vec![toleration(
            TAINT_UNSCHEDULABLE,
            "Exists",
            "",
            "NoSchedule",
        )]);
        assert_eq!(
            node_unschedulable(&PodInfo::new(&tolerant, &cache), &cordoned),
            None
        );
        assert_eq!(
            node_unschedulable(&PodInfo::new(&plain, &cache), &labelled(&[])),
            None
        );
    }

    #[test]
    fn node_name_must_match() {
        let cache = Cache::default();
        let mut p = pod("a", 0, 0, None);
        p.spec.as_mut().unwrap().node_name = Some("n2".into());
        assert_eq!(
            node_name(&PodInfo::new(&p, &cache), &labelled(&[])),
            Some(Reason::NodeName)
        );
        p.spec.as_mut().unwrap().node_name = Some("n1".into());
        assert_eq!(node_name(&PodInfo::new(&p, &cache), &labelled(&[])), None);
    }

    #[test]
    fn tolerations_match_taints_as_kubernetes_does() {
        let t = taint("dedicated", "gpu", "NoSchedule");
        assert!(tolerates(
            &toleration("dedicated", "Equal", "gpu", "NoSchedule"),
            &t
        ));
        assert!(tolerates(&toleration("dedicated", "", "gpu", ""), &t));
        assert!(!tolerates(
            &toleration("dedicated", "Equal", "cpu", "NoSchedule"),
            &t
        ));
        assert!(tolerates(&toleration("dedicated", "Exists", "", ""), &t));
        assert!(!tolerates(
            &toleration("dedicated", "Exists", "", "NoExecute"),
            &t
        ));
        assert!(tolerates(&toleration("", "Exists", "", ""), &t));
        assert!(!tolerates(&toleration("other", "Exists", "", ""), &t));
        assert!(!tolerates(&toleration("dedicated", "Gt", "gpu", ""), &t));
    }

    #[test]
    fn untolerated_no_schedule_and_no_execute_taints_filter() {
        let cache = Cache::default();
        let p = pod("a", 0, 0, None);
        let tainted = info("n1", |n| {
            n.spec.as_mut().unwrap().taints = Some(vec![
                taint("soft", "", "PreferNoSchedule"),
                taint("dedicated", "gpu", "NoExecute"),
            ])
        });
        assert_eq!(
            taint_toleration(&PodInfo::new(&p, &cache), &tainted),
            Some(Reason::Taint {
                key: "dedicated",
                value: "gpu"
            })
        );
        let mut tolerant = p.clone();
        tolerant.spec.as_mut().unwrap().tolerations =
            Some(vec![toleration("dedicated", "Equal", "gpu", "NoExecute")]);
        assert_eq!(
            taint_toleration(&PodInfo::new(&tolerant, &cache), &tainted),
            None
        );

        // A NotReady node carries the not-ready taint; default tolerations (NoExecute only)
        // do not let a pod on.
        let not_ready = info("n2", |n| {
            n.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into()
        });
        let mut defaults = p.clone();
        defaults.spec.as_mut().unwrap().tolerations = Some(vec![toleration(
            "node.kubernetes.io/not-ready",
            "Exists",
            "",
            "NoExecute",
        )]);
        let reason = taint_toleration(&PodInfo::new(&defaults, &cache), &not_ready);
        assert_eq!(
            reason.map(|r| r.to_string()).as_deref(),
            Some("node(s) had untolerated taint {node.kubernetes.io/not-ready: }")
        );
    }

    #[test]
    fn node_selector_and_required_affinity() {
        let cache = Cache::default();
        let node = labelled(&[("disk", "ssd"), ("gen", "5")]);
        let mut p = pod("a", 0, 0, None);
        p.spec.as_mut().unwrap().node_selector =
            Some(BTreeMap::from([("disk".into(), "ssd".into())]));
        assert_eq!(node_affinity(&PodInfo::new(&p, &cache), &node), None);
        p.spec.as_mut().unwrap().node_selector =
            Some(BTreeMap::from([("disk".into(), "hdd".into())]));
        assert_eq!(
            node_affinity(&PodInfo::new(&p, &cache), &node),
            Some(Reason::NodeAffinity)
        );

        let check = |expressions: Vec<NodeSelectorRequirement>| {
            let p = with_required(
                pod("a", 0, 0, None),
                vec![NodeSelectorTerm {
                    match_expressions: Some(expressions),
                    match_fields: None,
                }],
            );
            node_affinity(&PodInfo::new(&p, &cache), &node).is_none()
        };
        assert!(check(vec![req("disk", "In", &["ssd", "nvme"])]));
        assert!(!check(vec![req("disk", "In", &["hdd"])]));
        assert!(check(vec![req("disk", "NotIn", &["hdd"])]));
        assert!(check(vec![req("zone", "NotIn", &["a"])]));
        assert!(check(vec![req("disk", "Exists", &[])]));
        assert!(!check(vec![req("disk", "DoesNotExist", &[])]));
        assert!(check(vec![req("zone", "DoesNotExist", &[])]));
        assert!(check(vec![req("gen", "Gt", &["4"])]));
        assert!(!check(vec![req("gen", "Gt", &["5"])]));
        assert!(check(vec![req("gen", "Lt", &["6"])]));
        assert!(!check(vec![req("gen", "Lt", &["x"])]));
        assert!(!check(vec![req("disk", "Gt", &["1"])]));
        assert!(!check(vec![req("disk", "Near", &["ssd"])]));
        // All expressions of a term must hold.
        assert!(!check(vec![
            req("disk", "Exists", &[]),
            req("gen", "In", &["4"])
        ]));
        // An empty term matches nothing.
        assert!(!check(vec![]));

        // Terms are alternatives; matchFields selects by node name.
        let by_name = with_required(
            pod("a", 0, 0, None),
            vec![
                NodeSelectorTerm {
                    match_expressions: Some(vec![req("disk", "In", &["hdd"])]),
                    match_fields: None,
                },
                NodeSelectorTerm {
                    match_expressions: None,
                    match_fields: Some(vec![req("metadata.name", "In", &["n1"])]),
                },
            ],
        );
        assert_eq!(node_affinity(&PodInfo::new(&by_name, &cache), &node), None);
        let elsewhere = with_required(
            pod("a", 0, 0, None),
            vec![NodeSelectorTerm {
                match_expressions: None,
                match_fields: Some(vec![req("metadata.name", "NotIn", &["n1"])]),
            }],
        );
        assert_eq!(
            node_affinity(&PodInfo::new(&elsewhere, &cache), &node),
            Some(Reason::NodeAffinity)
        );
    }

    #[test]
    fn host_ports_in_use_filter() {
        let mut cache = Cache::default();
        cache.set_node(Arc::new(node("n1", 4000, 8192)));
        let with_port = |name: &str, port: i32| {
            let mut p = pod(name, 0, 0, None);
            p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
                container_port: 80,
                host_port: Some(port),
                ..Default::default()
            }]);
            p
        };
        let first = with_port("a", 8080);
        cache.assume("default/a", &first, "n1", PodResources::of(&first));
        let node = cache.node("n1").unwrap();
        let same = with_port("b", 8080);
        assert_eq!(
            node_ports(&PodInfo::new(&same, &cache), node),
            Some(Reason::NodePorts)
        );
        let other = with_port("c", 8081);
        assert_eq!(node_ports(&PodInfo::new(&other, &cache), node), None);
    }

    #[test]
    fn resources_fit_reports_each_shortage() {
        let mut cache = Cache::default();
        cache.set_node(Arc::new(node("n1", 1000, 1024)));
        let running = pod("a", 600, 512, None);
        cache.assume("default/a", &running, "n1", PodResources::of(&running));
        let n1 = cache.node("n1").unwrap();
        let fits = pod("b", 400, 512, None);
        assert!(resources_fit(&PodInfo::new(&fits, &cache), n1).is_empty());
        let too_big = pod("c", 500, 1024, None);
        let reasons: Vec<String> = resources_fit(&PodInfo::new(&too_big, &cache), n1)
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(reasons, ["Insufficient cpu", "Insufficient memory"]);
        // Requests of nothing always fit, until the pod count is reached.
        let empty = pod("d", 0, 0, None);
        assert!(resources_fit(&PodInfo::new(&empty, &cache), n1).is_empty());
        let mut full = NodeInfo::new("full");
        full.set_node(Arc::new(node("full", 1000, 1024)));
        full.allowed_pods = 0;
        assert_eq!(
            resources_fit(&PodInfo::new(&empty, &cache), &full)
                .iter()
                .collect::<Vec<_>>(),
            [Reason::TooManyPods]
        );
    }

    #[test]
    fn filters_stop_at_the_first_failing_plugin() {
        let cache = Cache::default();
        let cordoned = info("n1", |n| {
            n.spec.as_mut().unwrap().unschedulable = Some(true);
            n.spec.as_mut().unwrap().taints = Some(vec![taint("x", "", "NoSchedule")]);
        });
        let p = pod("a", 100_000, 0, None);
        let reasons: Vec<_> = filter(&PodInfo::new(&p, &cache), &cordoned)
            .unwrap_err()
            .iter()
            .collect();
        assert_eq!(reasons, [Reason::Unschedulable]);
    }

    #[test]
    fn least_allocated_prefers_the_emptier_node() {
        let mut cache = Cache::default();
        cache.set_node(Arc::new(node("busy", 4000, 4096)));
        cache.set_node(Arc::new(node("idle", 4000, 4096)));
        let running = pod("r", 2000, 2048, None);
        cache.assume("default/r", &running, "busy", PodResources::of(&running));
        let p = pod("a", 1000, 1024, None);
        let info = PodInfo::new(&p, &cache);
        // idle: (3000/4000 + 3072/4096) → 75; busy: (1000/4000, 1024/4096) → 25.
        assert_eq!(least_allocated(&info, cache.node("idle").unwrap()), 75);
        assert_eq!(least_allocated(&info, cache.node("busy").unwrap()), 25);
        // A pod asking for nothing counts as 100m and 200Mi.
        let best_effort = pod("b", 0, 0, None);
        let info = PodInfo::new(&best_effort, &cache);
        assert_eq!(
            least_allocated(&info, cache.node("idle").unwrap()),
            (3900 * 100 / 4000 + 3896 * 100 / 4096) / 2
        );
    }

    #[test]
    fn spreading_prefers_the_node_with_fewer_pods_of_the_controller() {
        let mut cache = Cache::default();
        for name in ["n1", "n2", "n3"] {
            cache.set_node(Arc::new(node(name, 4000, 8192)));
        }
        for (i, node) in ["n1", "n1", "n2"].iter().enumerate() {
            let p = pod(&format!("p{i}"), 0, 0, Some("rs-1"));
            cache.assume(&format!("default/p{i}"), &p, node, PodResources::of(&p));
        }
        let other = pod("o", 0, 0, Some("rs-2"));
        cache.assume("default/o", &other, "n3", PodResources::of(&other));
        let p = pod("new", 0, 0, Some("rs-1"));
        let info = PodInfo::new(&p, &cache);
        let mut raw: Vec<i64> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| owner_pods(&info, cache.node(n).unwrap()))
            .collect();
        assert_eq!(raw, [2, 1, 0]);
        normalize_spread(&mut raw);
        assert_eq!(raw, [0, 50, 100]);
        // A pod without a controller is indifferent.
        let lone = pod("lone", 0, 0, None);
        let mut raw: Vec<i64> = ["n1", "n2"]
            .iter()
            .map(|n| owner_pods(&PodInfo::new(&lone, &cache), cache.node(n).unwrap()))
            .collect();
        normalize_spread(&mut raw);
        assert_eq!(raw, [100, 100]);
    }

    #[test]
    fn preferred_affinity_and_prefer_no_schedule_scores() {
        let cache = Cache::default();
        let ssd = labelled(&[("disk", "ssd")]);
        let hdd = info("n2", |n| {
            n.metadata
                .labels
                .get_or_insert_default()
                .insert("disk".into(), "hdd".into());
            n.spec.as_mut().unwrap().taints = Some(vec![taint("soft", "", "PreferNoSchedule")]);
        });
        let mut p = pod("a", 0, 0, None);
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    PreferredSchedulingTerm {
                        weight: 80,
                        preference: NodeSelectorTerm {
                            match_expressions: Some(vec![req("disk", "In", &["ssd"])]),
                            match_fields: None,
                        },
                    },
                    PreferredSchedulingTerm {
                        weight: 20,
                        preference: NodeSelectorTerm {
                            match_expressions: Some(vec![req("disk", "Exists", &[])]),
                            match_fields: None,
                        },
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        });
        let info = PodInfo::new(&p, &cache);
        let mut affinity = vec![
            preferred_affinity(&info, &ssd),
            preferred_affinity(&info, &hdd),
        ];
        assert_eq!(affinity, [100, 20]);
        normalize(&mut affinity, false);
        assert_eq!(affinity, [100, 20]);

        let mut taints = vec![
            intolerable_taints(&info, &ssd),
            intolerable_taints(&info, &hdd),
        ];
        assert_eq!(taints, [0, 1]);
        normalize(&mut taints, true);
        assert_eq!(taints, [100, 0]);
        let mut tolerant = p.clone();
        tolerant.spec.as_mut().unwrap().tolerations =
            Some(vec![toleration("soft", "Exists", "", "")]);
        assert_eq!(
            intolerable_taints(&PodInfo::new(&tolerant, &cache), &hdd),
            0
        );
    }

    #[test]
    fn failure_message_counts_reasons_like_kube_scheduler() {
        let mut reasons = BTreeMap::new();
        reasons.insert(Reason::NodeAffinity, 2);
        reasons.insert(Reason::InsufficientCpu, 1);
        assert_eq!(
            failure_message(3, &reasons),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector."
        );
        reasons.insert(
            Reason::Taint {
                key: "node.kubernetes.io/not-ready",
                value: "",
            },
            1,
        );
        assert_eq!(
            failure_message(4, &reasons),
            "0/4 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, 2 node(s) didn't match Pod's node affinity/selector."
        );
        assert_eq!(
            failure_message(0, &BTreeMap::new()),
            "no nodes available to schedule pods"
        );
    }
}
