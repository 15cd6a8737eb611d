//! Node lifecycle and node IPAM (Kubernetes' `nodelifecycle` and `nodeipam` controllers).
//!
//! - **IPAM**: every Node without `spec.podCIDR` gets the next free `/node_cidr_mask_size`
//!   block of the cluster CIDR (free blocks are those no Node holds).
//! - **Health**: a node's heartbeat is its Lease in `kube-node-lease` (or its Ready
//!   condition's heartbeat). Like Kubernetes, staleness is measured on this process's clock from
//!   when a new heartbeat was *observed*, so clock skew between machines does not matter. A node
//!   silent for `node_monitor_grace_period` (40 s) gets its conditions set to Unknown
//!   ("Kubelet stopped posting node status.") and the `node.kubernetes.io/unreachable`
//!   NoSchedule and NoExecute taints; a node reporting Ready=False gets the `not-ready` ones.
//!   Taints go away when the node is Ready again.
//! - **Eviction** (the NoExecute taint manager): a pod on a node with a NoExecute taint it does
//!   not tolerate is deleted at once; one it tolerates for `tolerationSeconds` is deleted when
//!   that time has passed since the taint was added (pods get 300 s by default from admission,
//!   `--default-toleration-seconds`). Its controller then replaces it on a healthy node.
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::task::JoinSet;

use super::Context;
use super::runtime::{self, Change, WorkQueue};
use super::scheduler::plugins::tolerates;
use crate::apiserver::storage::DeleteOptions;

pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// A node's health as the controller last saw it.
struct Health {
    /// The heartbeat last seen (lease renewTime, Ready condition heartbeat).
    heartbeat: String,
    /// When (on this process's clock) it was first seen.
    observed: Instant,
}

struct Controller {
    ctx: Arc<Context>,
    /// Nodes to check (taints, conditions, CIDR).
    nodes: Arc<WorkQueue>,
    /// Pods to check against their node's NoExecute taints.
    pods: Arc<WorkQueue>,
    health: Mutex<HashMap<String, Health>>,
    /// CIDRs handed out and not yet seen in the cache.
    reserved: Mutex<HashSet<Ipv4Net>>,
}

pub fn start(ctx: &Arc<Context>, tasks: &mut JoinSet<()>) {
    let controller = Arc::new(Controller {
        ctx: ctx.clone(),
        nodes: WorkQueue::new(),
        pods: WorkQueue::new(),
        health: Mutex::new(HashMap::new()),
        reserved: Mutex::new(HashSet::new()),
    });
    {
        let c = controller.clone();
        ctx.nodes.on_change(move |change| match change {
            Change::Applied { old, new } => {
                let name = new.metadata.name.clone().unwrap_or_default();
                c.nodes.add(name.clone());
                if old.is_none_or(|o| no_execute(o) != no_execute(new)) {
                    c.enqueue_pods_on(&name);
                }
            }
            Change::Deleted(old) => {
                let name = old.metadata.name.clone().unwrap_or_default();
                c.lock_health().remove(&name);
            }
        });
    }
    {
        let c = controller.clone();
        ctx.leases.on_change(move |change| {
            if let Change::Applied { new, .. } = change
                && new.metadata.namespace.as_deref() == Some(NODE_LEASE_NAMESPACE)
                && let Some(name) = &new.metadata.name
            {
                // A renewal of a node that is marked unhealthy: check it now.
                if c.ctx
                    .nodes
                    .get(None, name)
                    .is_some_and(|n| !node_ready(&n) || has_unreachable(&n))
                {
                    c.nodes.add(name.clone());
                }
            }
        });
    }
    {
        let c = controller.clone();
        ctx.pods.on_change(move |change| {
            if let Change::Applied { old, new } = change {
                let node = new
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default();
                let old_node = old
                    .and_then(|o| o.spec.as_ref().and_then(|s| s.node_name.clone()))
                    .unwrap_or_default();
                if !node.is_empty()
                    && node != old_node
                    && c.ctx
                        .nodes
                        .get(None, &node)
                        .is_some_and(|n| !no_execute(&n).is_empty())
                {
                    c.pods.add(runtime::key_of(*new));
                }
            }
        });
    }
    let c = controller.clone();
    runtime::spawn_workers(
        tasks,
        "node-lifecycle",
        controller.nodes.clone(),
        1,
        move |name| {
            let c = c.clone();
            async move {
                c.ctx.wait_synced().await;
                c.sync_node(&name).await
            }
        },
    );
    let c = controller.clone();
    runtime::spawn_workers(
        tasks,
        "taint-eviction",
        controller.pods.clone(),
        2,
        move |key| {
            let c = c.clone();
            async move {
                c.ctx.wait_synced().await;
                c.sync_pod(&key).await
            }
        },
    );
    // The monitor: every period, check every node's heartbeat.
    let c = controller.clone();
    tasks.spawn(async move {
        c.ctx.wait_synced().await;
        let mut tick = tokio::time::interval(c.ctx.config.node_monitor_period);
        loop {
            tick.tick().await;
            for node in c.ctx.nodes.list() {
                c.nodes.add(node.metadata.name.clone().unwrap_or_default());
            }
        }
    });
}

fn no_execute(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.effect == "NoExecute")
        .collect()
}

fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn node_ready(node: &Node) -> bool {
    condition(node, "Ready").is_some_and(|c| c.status == "True")
}

fn has_unreachable(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == UNREACHABLE_TAINT))
}

impl Controller {
    fn lock_health(&self) -> std::sync::MutexGuard<'_, HashMap<String, Health>> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enqueue_pods_on(&self, node: &str) {
        for pod in self.ctx.pods.list() {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node) {
                self.pods.add(runtime::key_of(pod.as_ref()));
            }
        }
    }

    /// The node's latest heartbeat and how long ago (on this clock) it was first seen.
    fn silence(&self, node: &Node) -> Duration {
        let name = node.metadata.name.clone().unwrap_or_default();
        let lease = self
            .ctx
            .leases
            .get(Some(NODE_LEASE_NAMESPACE), &name)
            .and_then(|l| {
                l.spec
                    .as_ref()?
                    .renew_time
                    .as_ref()
                    .map(|t| t.0.to_string())
            })
            .unwrap_or_default();
        let ready_heartbeat = condition(node, "Ready")
            .and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0.to_string()))
            .unwrap_or_default();
        let created = node
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        let heartbeat = format!("{lease}|{ready_heartbeat}|{created}");
        let mut health = self.lock_health();
        let entry = health.entry(name).or_insert_with(|| Health {
            heartbeat: heartbeat.clone(),
            observed: Instant::now(),
        });
        if entry.heartbeat != heartbeat {
            entry.heartbeat = heartbeat;
            entry.observed = Instant::now();
        }
        entry.observed.elapsed()
    }

    async fn sync_node(&self, name: &str) -> anyhow::Result<Option<Duration>> {
        let Some(node) = self.ctx.nodes.get(None, name) else {
            return Ok(None);
        };
        if node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .is_none_or(str::is_empty)
        {
            self.assign_cidr(&node).await?;
        }
        let grace = self.ctx.config.node_monitor_grace_period;
        let silent_for = self.silence(&node);
        let unreachable = silent_for >= grace;
        if unreachable {
            self.mark_unknown(&node).await?;
        }
        let ready = condition(&node, "Ready").map(|c| c.status.clone());
        let want = match (unreachable, ready.as_deref()) {
            (true, _) | (false, Some("Unknown")) => Some(UNREACHABLE_TAINT),
            (false, Some("False")) => Some(NOT_READY_TAINT),
            _ => None,
        };
        self.set_taints(&node, want).await?;
        Ok(None)
    }

    /// Sets every condition of a silent node to Unknown (once), with an event.
    async fn mark_unknown(&self, node: &Node) -> anyhow::Result<()> {
        if condition(node, "Ready").is_some_and(|c| c.status == "Unknown") {
            return Ok(());
        }
        let name = node.metadata.name.clone().unwrap_or_default();
        let now = Time(jiff::Timestamp::now());
        let result = self
            .ctx
            .client
            .update::<Node, _>(None, &name, Some("status"), |n| {
                let status = n.status.get_or_insert_with(Default::default);
                let conditions = status.conditions.get_or_insert_with(Vec::new);
                if !conditions.iter().any(|c| c.type_ == "Ready") {
                    conditions.push(NodeCondition {
                        type_: "Ready".into(),
                        ..Default::default()
                    });
                }
                let mut changed = false;
                for c in conditions.iter_mut() {
                    if c.status != "Unknown" {
                        c.status = "Unknown".into();
                        c.reason = Some("NodeStatusUnknown".into());
                        c.message = Some("Kubelet stopped posting node status.".into());
                        c.last_transition_time = Some(now.clone());
                        changed = true;
                    }
                }
                changed
            })
            .await;
        match result {
            Ok(Some(updated)) => {
                tracing::warn!(
                    node = name,
                    "node stopped posting status; marking it NotReady"
                );
                self.ctx.events.normal(
                    &updated,
                    "NodeNotReady",
                    format!("Node {name} status is now: NodeNotReady"),
                );
                for pod in self.ctx.pods.list() {
                    if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())
                    {
                        self.ctx
                            .events
                            .warning(pod.as_ref(), "NodeNotReady", "Node is not ready");
                    }
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => anyhow::bail!("marking node {name} unknown: {}", e.message),
        }
    }

    /// Keeps exactly the wanted condition taint (NoSchedule and NoExecute) on the node.
    async fn set_taints(&self, node: &Node, want: Option<&'static str>) -> anyhow::Result<()> {
        let current: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let managed = |t: &Taint| t.key == UNREACHABLE_TAINT || t.key == NOT_READY_TAINT;
        let has =
            |key: &str, effect: &str| current.iter().any(|t| t.key == key && t.effect == effect);
        let up_to_date = match want {
            Some(key) => {
                has(key, "NoSchedule")
                    && has(key, "NoExecute")
                    && current.iter().filter(|t| managed(t)).count() == 2
            }
            None => !current.iter().any(managed),
        };
        if up_to_date {
            return Ok(());
        }
        let name = node.metadata.name.clone().unwrap_or_default();
        let now = Time(jiff::Timestamp::now());
        let result = self
            .ctx
            .client
            .update::<Node, _>(None, &name, None, |n| {
                let spec = n.spec.get_or_insert_with(Default::default);
                let mut taints: Vec<Taint> = spec.taints.clone().unwrap_or_default();
                let before = taints.clone();
                taints.retain(|t| !managed(t) || Some(t.key.as_str()) == want);
                if let Some(key) = want {
                    for effect in ["NoSchedule", "NoExecute"] {
                        if !taints.iter().any(|t| t.key == key && t.effect == effect) {
                            taints.push(Taint {
                                key: key.into(),
                                effect: effect.into(),
                                time_added: (effect == "NoExecute").then(|| now.clone()),
                                value: None,
                            });
                        }
                    }
                }
                if taints == before {
                    return false;
                }
                spec.taints = (!taints.is_empty()).then_some(taints);
                true
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => anyhow::bail!("tainting node {name}: {}", e.message),
        }
    }

    async fn assign_cidr(&self, node: &Node) -> anyhow::Result<()> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let cidr = {
            let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
            let used: HashSet<Ipv4Net> = self
                .ctx
                .nodes
                .list()
                .iter()
                .filter_map(|n| n.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok())
                .collect();
            reserved.retain(|c| !used.contains(c));
            let Some(cidr) = next_free_cidr(
                self.ctx.config.cluster_cidr,
                self.ctx.config.node_cidr_mask_size,
                |c| used.contains(c) || reserved.contains(c),
            ) else {
                self.ctx.events.warning(
                    node,
                    "CIDRNotAvailable",
                    format!("Node {name} status is now: CIDRNotAvailable"),
                );
                anyhow::bail!(
                    "no pod CIDR left in {} for node {name}",
                    self.ctx.config.cluster_cidr
                );
            };
            reserved.insert(cidr);
            cidr
        };
        let text = cidr.to_string();
        let result = self
            .ctx
            .client
            .update::<Node, _>(None, &name, None, |n| {
                let spec = n.spec.get_or_insert_with(Default::default);
                if spec.pod_cidr.as_deref().is_some_and(|c| !c.is_empty()) {
                    return false;
                }
                spec.pod_cidr = Some(text.clone());
                spec.pod_cidrs = Some(vec![text.clone()]);
                true
            })
            .await;
        match result {
            Ok(Some(n)) => {
                self.ctx.events.normal(
                    &n,
                    "CIDRAssignmentSucceeded",
                    format!("Node {name} got pod CIDR {text}"),
                );
                Ok(())
            }
            Ok(None) => {
                self.reserved
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&cidr);
                Ok(())
            }
            Err(e) => {
                self.reserved
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&cidr);
                if e.code == 404 {
                    return Ok(());
                }
                anyhow::bail!("assigning a pod CIDR to {name}: {}", e.message)
            }
        }
    }

    /// Evicts a pod from a node with NoExecute taints it does not tolerate (now or later).
    async fn sync_pod(&self, key: &str) -> anyhow::Result<Option<Duration>> {
        let Some(pod) = self.ctx.pods.get_key(key) else {
            return Ok(None);
        };
        if pod.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let Some(node) = self.ctx.nodes.get(None, &node_name) else {
            return Ok(None);
        };
        let taints = no_execute(&node);
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        match eviction_delay(&taints, &tolerations, jiff::Timestamp::now()) {
            None => Ok(None),
            Some(delay) if !delay.is_zero() => Ok(Some(delay)),
            Some(_) => {
                let (ns, name) = runtime::split_key(key);
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                self.ctx.events.normal(
                    pod.as_ref(),
                    "TaintManagerEviction",
                    format!("Marking for deletion Pod {key}"),
                );
                self.ctx
                    .client
                    .delete_uid::<Pod>(ns, name, &uid, &DeleteOptions::default())
                    .await
                    .map_err(|e| anyhow::anyhow!("evicting pod {key}: {}", e.message))?;
                Ok(None)
            }
        }
    }
}

/// When a pod with `tolerations` must leave a node with these NoExecute `taints`: `None`
/// never, `Some(ZERO)` now, `Some(d)` after `d` (the smallest tolerationSeconds left).
pub fn eviction_delay(
    taints: &[Taint],
    tolerations: &[Toleration],
    now: jiff::Timestamp,
) -> Option<Duration> {
    let mut delay: Option<Duration> = None;
    for taint in taints {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(Duration::ZERO);
        }
        // Forever if any matching toleration has no limit; else the smallest limit.
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let seconds = matching
            .iter()
            .filter_map(|t| t.toleration_seconds)
            .min()
            .unwrap_or(0)
            .max(0);
        let added = taint.time_added.as_ref().map(|t| t.0).unwrap_or(now);
        let deadline = added
            .checked_add(jiff::SignedDuration::from_secs(seconds))
            .unwrap_or(now);
        let left = if deadline > now {
            deadline.duration_since(now).unsigned_abs()
        } else {
            Duration::ZERO
        };
        delay = Some(delay.map_or(left, |d| d.min(left)));
    }
    delay
}

/// The first block of `cluster` with this prefix length that `taken` does not reject.
pub fn next_free_cidr(
    cluster: Ipv4Net,
    prefix: u8,
    taken: impl Fn(&Ipv4Net) -> bool,
) -> Option<Ipv4Net> {
    let prefix = prefix.max(cluster.prefix_len());
    let subnets = cluster.subnets(prefix).ok()?;
    subnets
        .into_iter()
        .find(|s| !taken(s) && s.network() != Ipv4Addr::UNSPECIFIED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, added: i64) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            time_added: Some(Time(jiff::Timestamp::from_second(added).unwrap())),
            value: None,
        }
    }

    fn tol(key: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: seconds,
            value: None,
        }
    }

    #[test]
    fn eviction_waits_for_the_smallest_toleration() {
        let now = jiff::Timestamp::from_second(1_000).unwrap();
        let taints = [taint(UNREACHABLE_TAINT, 900)];
        assert_eq!(eviction_delay(&taints, &[], now), Some(Duration::ZERO));
        assert_eq!(
            eviction_delay(&taints, &[tol(UNREACHABLE_TAINT, Some(300))], now),
            Some(Duration::from_secs(200))
        );
        assert_eq!(
            eviction_delay(&taints, &[tol(UNREACHABLE_TAINT, Some(50))], now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            eviction_delay(&taints, &[tol(UNREACHABLE_TAINT, None)], now),
            None
        );
        assert_eq!(eviction_delay(&[], &[], now), None);
        // An empty key with Exists tolerates everything.
        let all = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert_eq!(eviction_delay(&taints, &[all], now), None);
    }

    #[test]
    fn toleration_matching_follows_kubernetes() {
        let t = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let eq = |v: &str| Toleration {
            key: Some("k".into()),
            operator: Some("Equal".into()),
            value: Some(v.into()),
            ..Default::default()
        };
        assert!(tolerates(&eq("v"), &t));
        assert!(!tolerates(&eq("w"), &t));
        let wrong_effect = Toleration {
            effect: Some("NoExecute".into()),
            ..eq("v")
        };
        assert!(!tolerates(&wrong_effect, &t));
    }

    #[test]
    fn cidrs_are_distinct_blocks_of_the_cluster_range() {
        let cluster: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let first = next_free_cidr(cluster, 24, |_| false).unwrap();
        assert_eq!(first.to_string(), "10.244.0.0/24");
        let second = next_free_cidr(cluster, 24, |c| *c == first).unwrap();
        assert_eq!(second.to_string(), "10.244.1.0/24");
        let small: Ipv4Net = "10.0.0.0/23".parse().unwrap();
        assert!(next_free_cidr(small, 24, |_| true).is_none());
    }
}
