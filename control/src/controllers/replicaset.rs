//! The ReplicaSet controller (Kubernetes' `pkg/controller/replicaset`): keeps `replicas` active
//! pods for each ReplicaSet, adopts matching orphans and releases pods that stop matching, and
//! writes the ReplicaSet's status.
//!
//! Like Kubernetes it keeps *expectations*: after creating or deleting pods it does not act on
//! the ReplicaSet again until the informer has seen those changes (or five minutes passed), so a
//! cache that lags behind its own writes never causes duplicate pods. A restarted controller
//! starts with no expectations and counts what the store holds, so it converges without
//! duplicates too.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use tokio::task::JoinSet;

use super::Context;
use super::runtime::{self, Change, WorkQueue, controller_of, selector_is_empty, selector_matches};
use crate::apiserver::storage::DeleteOptions;

/// At most this many pod creations or deletions per sync (Kubernetes' burstReplicas).
const BURST_REPLICAS: usize = 500;
/// Expectations older than this are ignored (a lost watch event must not wedge a ReplicaSet).
const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);
const WORKERS: usize = 4;

/// Pending creations and deletions per ReplicaSet key.
#[derive(Default)]
pub struct Expectations {
    inner: Mutex<HashMap<String, Expected>>,
}

struct Expected {
    adds: i64,
    /// Keys (`ns/name`) of pods whose deletion has not been seen yet.
    deletes: HashSet<String>,
    since: Instant,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Expected>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the controller may act on `key` (nothing pending, or pending for too long).
    pub fn satisfied(&self, key: &str) -> bool {
        match self.lock().get(key) {
            None => true,
            Some(e) => {
                (e.adds <= 0 && e.deletes.is_empty()) || e.since.elapsed() > EXPECTATIONS_TIMEOUT
            }
        }
    }

    pub fn expect(&self, key: &str, adds: i64, deletes: impl IntoIterator<Item = String>) {
        self.lock().insert(
            key.to_string(),
            Expected {
                adds,
                deletes: deletes.into_iter().collect(),
                since: Instant::now(),
            },
        );
    }

    pub fn creation_observed(&self, key: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.adds -= 1;
        }
    }

    pub fn deletion_observed(&self, key: &str, pod_key: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.deletes.remove(pod_key);
        }
    }

    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

struct Controller {
    ctx: Arc<Context>,
    queue: Arc<WorkQueue>,
    expectations: Expectations,
}

pub fn start(ctx: &Arc<Context>, tasks: &mut JoinSet<()>) {
    let controller = Arc::new(Controller {
        ctx: ctx.clone(),
        queue: WorkQueue::new(),
        expectations: Expectations::default(),
    });
    {
        let queue = controller.queue.clone();
        let c = controller.clone();
        ctx.replica_sets.on_change(move |change| match change {
            Change::Applied { new, .. } => queue.add(runtime::key_of(*new)),
            Change::Deleted(old) => {
                let key = runtime::key_of(*old);
                c.expectations.forget(&key);
                queue.add(key);
            }
        });
    }
    {
        let c = controller.clone();
        ctx.pods.on_change(move |change| c.pod_changed(change));
    }
    let c = controller.clone();
    runtime::spawn_workers(
        tasks,
        "replicaset",
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

/// Whether a pod counts towards its ReplicaSet (not terminating, not finished).
pub fn pod_is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// When the pod became Ready (None when it is not Ready).
pub fn pod_ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    if condition.status != "True" {
        return None;
    }
    Some(
        condition
            .last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
    )
}

pub fn pod_is_ready(pod: &Pod) -> bool {
    pod_ready_since(pod).is_some()
}

/// Whether a pod has been Ready for at least `min_ready_seconds` at `now`.
pub fn pod_is_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    match pod_ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(since) => since
            .checked_add(jiff::SignedDuration::from_secs(min_ready_seconds as i64))
            .is_ok_and(|t| t <= now),
    }
}

impl Controller {
    fn owner_key(&self, pod: &Pod) -> Option<String> {
        let owner = controller_of(&pod.metadata)?;
        if owner.kind != "ReplicaSet" {
            return None;
        }
        let ns = pod.metadata.namespace.as_deref();
        let rs = self.ctx.replica_sets.get(ns, &owner.name)?;
        (rs.metadata.uid.as_deref() == Some(owner.uid.as_str()))
            .then(|| runtime::key(ns, &owner.name))
    }

    /// ReplicaSets in the pod's namespace whose selector matches it (adoption candidates).
    fn matching_sets(&self, pod: &Pod) -> Vec<String> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        self.ctx
            .replica_sets
            .list_namespace(ns)
            .into_iter()
            .filter(|rs| {
                rs.spec.as_ref().is_some_and(|spec| {
                    !selector_is_empty(&spec.selector)
                        && selector_matches(&spec.selector, pod.metadata.labels.as_ref())
                })
            })
            .map(|rs| runtime::key_of(rs.as_ref()))
            .collect()
    }

    fn pod_changed(&self, change: &Change<'_, Pod>) {
        match change {
            Change::Applied { old: None, new } => {
                if new.metadata.deletion_timestamp.is_some() {
                    // A restart saw a terminating pod: treat it as already deleted.
                    if let Some(key) = self.owner_key(new) {
                        self.expectations
                            .deletion_observed(&key, &runtime::key_of(*new));
                        self.queue.add(key);
                    }
                    return;
                }
                match self.owner_key(new) {
                    Some(key) => {
                        self.expectations.creation_observed(&key);
                        self.queue.add(key);
                    }
                    None if controller_of(&new.metadata).is_none() => {
                        for key in self.matching_sets(new) {
                            self.queue.add(key);
                        }
                    }
                    None => {}
                }
            }
            Change::Applied {
                old: Some(old),
                new,
            } => {
                if old.metadata.resource_version == new.metadata.resource_version {
                    return;
                }
                let pod_key = runtime::key_of(*new);
                let owner = self.owner_key(new);
                if new.metadata.deletion_timestamp.is_some()
                    && old.metadata.deletion_timestamp.is_none()
                    && let Some(key) = &owner
                {
                    self.expectations.deletion_observed(key, &pod_key);
                }
                let old_owner = controller_of(&old.metadata).map(|r| r.uid.clone());
                let new_owner = controller_of(&new.metadata).map(|r| r.uid.clone());
                if old_owner != new_owner
                    && let Some(key) = self.owner_key(old)
                {
                    self.queue.add(key);
                }
                match owner {
                    Some(key) => {
                        // Becoming ready: availability follows after minReadySeconds.
                        if !pod_is_ready(old)
                            && pod_is_ready(new)
                            && let Some(rs) = self.ctx.replica_sets.get_key(&key)
                        {
                            let min_ready = rs
                                .spec
                                .as_ref()
                                .and_then(|s| s.min_ready_seconds)
                                .unwrap_or(0);
                            if min_ready > 0 {
                                self.queue.add_after(
                                    key.clone(),
                                    Duration::from_secs(min_ready as u64 + 1),
                                );
                            }
                        }
                        self.queue.add(key);
                    }
                    None if new_owner.is_none() => {
                        if old.metadata.labels != new.metadata.labels || old_owner.is_some() {
                            for key in self.matching_sets(new) {
                                self.queue.add(key);
                            }
                        }
                    }
                    None => {}
                }
            }
            Change::Deleted(old) => {
                if let Some(key) = self.owner_key(old) {
                    self.expectations
                        .deletion_observed(&key, &runtime::key_of(*old));
                    self.queue.add(key);
                }
            }
        }
    }

    async fn sync(&self, key: &str) -> anyhow::Result<Option<Duration>> {
        let Some(rs) = self.ctx.replica_sets.get_key(key) else {
            self.expectations.forget(key);
            return Ok(None);
        };
        let Some(spec) = rs.spec.clone() else {
            return Ok(None);
        };
        if selector_is_empty(&spec.selector) {
            tracing::warn!(
                replicaset = key,
                "ignoring a ReplicaSet with an empty selector"
            );
            return Ok(None);
        }
        let namespace = rs.metadata.namespace.clone().unwrap_or_default();
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        let being_deleted = rs.metadata.deletion_timestamp.is_some();

        // Claim: owned pods that still match, plus matching orphans (adopted).
        let mut owned: Vec<Arc<Pod>> = Vec::new();
        for pod in self.ctx.pods.list_namespace(&namespace) {
            let matches = selector_matches(&spec.selector, pod.metadata.labels.as_ref());
            match controller_of(&pod.metadata) {
                Some(owner) if owner.uid == uid => {
                    if matches {
                        owned.push(pod);
                    } else if pod.metadata.deletion_timestamp.is_none() {
                        self.release(&pod, &uid).await?;
                    }
                }
                None if matches && !being_deleted && pod.metadata.deletion_timestamp.is_none() => {
                    if let Some(adopted) = self.adopt(&rs, &pod).await? {
                        owned.push(Arc::new(adopted));
                    }
                }
                _ => {}
            }
        }
        let active: Vec<Arc<Pod>> = owned.iter().filter(|p| pod_is_active(p)).cloned().collect();

        let mut failure = None;
        if self.expectations.satisfied(key) && !being_deleted {
            failure = self.manage_replicas(key, &rs, &active).await.err();
        }

        let requeue = self
            .update_status(&rs, &owned, &active, failure.as_ref())
            .await?;
        match failure {
            Some(e) => Err(e),
            None => Ok(requeue),
        }
    }

    async fn manage_replicas(
        &self,
        key: &str,
        rs: &ReplicaSet,
        active: &[Arc<Pod>],
    ) -> anyhow::Result<()> {
        let wanted = rs
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1)
            .max(0) as usize;
        if active.len() < wanted {
            let count = (wanted - active.len()).min(BURST_REPLICAS);
            self.expectations.expect(key, count as i64, []);
            let pod = pod_from_template(rs);
            // Slow start, as Kubernetes: batches of 1, 2, 4... so a failing template fails once.
            let mut created = 0;
            let mut batch = 1;
            while created < count {
                let n = batch.min(count - created);
                let results =
                    futures::future::join_all((0..n).map(|_| self.ctx.client.create(&pod))).await;
                let mut failed = None;
                for result in results {
                    match result {
                        Ok(p) => {
                            let name = p.metadata.name.clone().unwrap_or_default();
                            self.ctx.events.normal(
                                rs,
                                "SuccessfulCreate",
                                format!("Created pod: {name}"),
                            );
                        }
                        Err(e) => {
                            self.expectations.creation_observed(key);
                            failed = Some(e);
                        }
                    }
                }
                created += n;
                if let Some(e) = failed {
                    // The creations that were never tried are not expected either.
                    for _ in created..count {
                        self.expectations.creation_observed(key);
                    }
                    self.ctx.events.warning(
                        rs,
                        "FailedCreate",
                        format!("Error creating: {}", e.message),
                    );
                    anyhow::bail!("creating pods: {}", e.message);
                }
                batch *= 2;
            }
        } else if active.len() > wanted {
            let count = (active.len() - wanted).min(BURST_REPLICAS);
            let victims = pods_to_delete(active, count);
            self.expectations
                .expect(key, 0, victims.iter().map(|p| runtime::key_of(p.as_ref())));
            let results = futures::future::join_all(victims.iter().map(|pod| {
                let ns = pod.metadata.namespace.clone();
                let name = pod.metadata.name.clone().unwrap_or_default();
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                async move {
                    let result = self
                        .ctx
                        .client
                        .delete_uid::<Pod>(ns.as_deref(), &name, &uid, &DeleteOptions::default())
                        .await;
                    (ns, name, result)
                }
            }))
            .await;
            let mut failed = None;
            for (ns, name, result) in results {
                match result {
                    Ok(()) => self.ctx.events.normal(
                        rs,
                        "SuccessfulDelete",
                        format!("Deleted pod: {name}"),
                    ),
                    Err(e) => {
                        self.expectations
                            .deletion_observed(key, &runtime::key(ns.as_deref(), &name));
                        failed = Some(e);
                    }
                }
            }
            if let Some(e) = failed {
                self.ctx.events.warning(
                    rs,
                    "FailedDelete",
                    format!("Error deleting: {}", e.message),
                );
                anyhow::bail!("deleting pods: {}", e.message);
            }
        }
        Ok(())
    }

    async fn adopt(&self, rs: &ReplicaSet, pod: &Pod) -> anyhow::Result<Option<Pod>> {
        let reference = owner_reference(rs);
        let rs_uid = reference.uid.clone();
        let labels = rs
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        let pod_uid = pod.metadata.uid.clone();
        let result = self
            .ctx
            .client
            .update::<Pod, _>(
                pod.metadata.namespace.as_deref(),
                pod.metadata.name.as_deref().unwrap_or(""),
                None,
                |p| {
                    // Re-check on the fresh copy: still an orphan, still matching, same pod.
                    if p.metadata.uid != pod_uid
                        || controller_of(&p.metadata).is_some()
                        || p.metadata.deletion_timestamp.is_some()
                        || !selector_matches(&labels, p.metadata.labels.as_ref())
                    {
                        return false;
                    }
                    p.metadata
                        .owner_references
                        .get_or_insert_with(Vec::new)
                        .push(reference.clone());
                    true
                },
            )
            .await;
        match result {
            Ok(adopted) => {
                if adopted.is_some() {
                    tracing::debug!(pod = ?pod.metadata.name, replicaset = rs_uid, "adopted an orphan pod");
                }
                Ok(adopted)
            }
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => anyhow::bail!("adopting pod {:?}: {}", pod.metadata.name, e.message),
        }
    }

    async fn release(&self, pod: &Pod, uid: &str) -> anyhow::Result<()> {
        let result = self
            .ctx
            .client
            .update::<Pod, _>(
                pod.metadata.namespace.as_deref(),
                pod.metadata.name.as_deref().unwrap_or(""),
                None,
                |p| {
                    let Some(refs) = p.metadata.owner_references.as_mut() else {
                        return false;
                    };
                    let before = refs.len();
                    refs.retain(|r| r.uid != uid);
                    refs.len() != before
                },
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => anyhow::bail!("releasing pod {:?}: {}", pod.metadata.name, e.message),
        }
    }

    async fn update_status(
        &self,
        rs: &ReplicaSet,
        owned: &[Arc<Pod>],
        active: &[Arc<Pod>],
        failure: Option<&anyhow::Error>,
    ) -> anyhow::Result<Option<Duration>> {
        let spec = rs.spec.clone().unwrap_or_default();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let now = jiff::Timestamp::now();
        let template_labels = template_labels(rs);
        let mut status = ReplicaSetStatus {
            replicas: active.len() as i32,
            observed_generation: rs.metadata.generation,
            ..Default::default()
        };
        let mut ready = 0;
        let mut available = 0;
        let mut fully_labeled = 0;
        let mut requeue = None;
        for pod in active {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            if template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
            {
                fully_labeled += 1;
            }
            if let Some(since) = pod_ready_since(pod) {
                ready += 1;
                if pod_is_available(pod, min_ready, now) {
                    available += 1;
                } else if let Ok(at) =
                    since.checked_add(jiff::SignedDuration::from_secs(min_ready as i64))
                {
                    let wait = at.duration_since(now).unsigned_abs() + Duration::from_millis(100);
                    requeue = Some(requeue.map_or(wait, |r: Duration| r.min(wait)));
                }
            }
        }
        status.ready_replicas = Some(ready);
        status.available_replicas = Some(available);
        status.fully_labeled_replicas = Some(fully_labeled);
        let terminating = owned
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
            .count();
        if terminating > 0 {
            status.terminating_replicas = Some(terminating as i32);
        }
        let old = rs.status.clone().unwrap_or_default();
        let mut conditions: Vec<ReplicaSetCondition> = old.conditions.clone().unwrap_or_default();
        match failure {
            Some(e) => {
                let message = format!("{e:#}");
                if !conditions
                    .iter()
                    .any(|c| c.type_ == "ReplicaFailure" && c.message.as_deref() == Some(&message))
                {
                    conditions.retain(|c| c.type_ != "ReplicaFailure");
                    conditions.push(ReplicaSetCondition {
                        type_: "ReplicaFailure".into(),
                        status: "True".into(),
                        reason: Some("FailedCreate".into()),
                        message: Some(message),
                        last_transition_time: Some(Time(now)),
                    });
                }
            }
            None => conditions.retain(|c| c.type_ != "ReplicaFailure"),
        }
        status.conditions = (!conditions.is_empty()).then_some(conditions);
        if same_status(&old, &status) {
            return Ok(requeue);
        }
        let ns = rs.metadata.namespace.clone();
        let name = rs.metadata.name.clone().unwrap_or_default();
        let uid = rs.metadata.uid.clone();
        let result = self
            .ctx
            .client
            .update::<ReplicaSet, _>(ns.as_deref(), &name, Some("status"), |current| {
                if current.metadata.uid != uid {
                    return false;
                }
                current.status = Some(status.clone());
                true
            })
            .await;
        match result {
            Ok(_) => Ok(requeue),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => anyhow::bail!("updating the status of {name}: {}", e.message),
        }
    }
}

fn same_status(a: &ReplicaSetStatus, b: &ReplicaSetStatus) -> bool {
    let n = |v: Option<i32>| v.unwrap_or(0);
    a.replicas == b.replicas
        && n(a.ready_replicas) == n(b.ready_replicas)
        && n(a.available_replicas) == n(b.available_replicas)
        && n(a.fully_labeled_replicas) == n(b.fully_labeled_replicas)
        && n(a.terminating_replicas) == n(b.terminating_replicas)
        && a.observed_generation == b.observed_generation
        && a.conditions.as_ref().is_none_or(|c| c.is_empty())
            == b.conditions.as_ref().is_none_or(|c| c.is_empty())
        && a.conditions
            .iter()
            .flatten()
            .map(|c| (&c.type_, &c.message))
            .eq(b
                .conditions
                .iter()
                .flatten()
                .map(|c| (&c.type_, &c.message)))
}

/// The controller ownerReference pointing at a ReplicaSet.
pub fn owner_reference(rs: &ReplicaSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: rs.metadata.name.clone().unwrap_or_default(),
        uid: rs.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A new pod from the ReplicaSet's template, named `<rs>-<random>` by the API server.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.metadata.name.as_deref().unwrap_or("pod"))),
            namespace: rs.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner_reference(rs)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// The pods to delete when scaling down, best candidates first (Kubernetes' ActivePods
/// ordering): unscheduled before scheduled, pending before unknown before running, not ready
/// before ready, ready for less time before longer, more restarts before fewer, younger
/// before older.
pub fn pods_to_delete(active: &[Arc<Pod>], count: usize) -> Vec<Arc<Pod>> {
    let mut pods: Vec<Arc<Pod>> = active.to_vec();
    pods.sort_by_cached_key(|pod| deletion_rank(pod));
    pods.truncate(count);
    pods
}

type Rank = (
    u8,
    u8,
    u8,
    std::cmp::Reverse<i64>,
    std::cmp::Reverse<i32>,
    std::cmp::Reverse<i64>,
);

fn deletion_rank(pod: &Pod) -> Rank {
    let assigned = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    let ready_since = pod_ready_since(pod);
    let restarts: i32 = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0);
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0);
    (
        assigned as u8,
        phase,
        ready_since.is_some() as u8,
        // Ready for less time first: later transition times first.
        std::cmp::Reverse(ready_since.map(|t| t.as_second()).unwrap_or(0)),
        std::cmp::Reverse(restarts),
        std::cmp::Reverse(created),
    )
}

/// Labels of a ReplicaSet's pods that matter for status (`fullyLabeledReplicas`).
pub fn template_labels(rs: &ReplicaSet) -> BTreeMap<String, String> {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};

    fn pod(
        name: &str,
        node: Option<&str>,
        phase: &str,
        ready_at: Option<i64>,
        created: i64,
    ) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(jiff::Timestamp::from_second(created).unwrap())),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(str::to_string),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready_at.map(|t| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(jiff::Timestamp::from_second(t).unwrap())),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn scale_down_prefers_unscheduled_then_not_ready_then_younger() {
        let pods = vec![
            pod("old-ready", Some("n1"), "Running", Some(100), 10),
            pod("young-ready", Some("n1"), "Running", Some(200), 20),
            pod("not-ready", Some("n1"), "Running", None, 5),
            pod("unscheduled", None, "Pending", None, 1),
        ];
        let order: Vec<String> = pods_to_delete(&pods, 4)
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            order,
            ["unscheduled", "not-ready", "young-ready", "old-ready"]
        );
        assert_eq!(pods_to_delete(&pods, 1).len(), 1);
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let p = pod("p", Some("n"), "Running", Some(1000), 1);
        let at = |s| jiff::Timestamp::from_second(s).unwrap();
        assert!(pod_is_available(&p, 0, at(1000)));
        assert!(!pod_is_available(&p, 10, at(1005)));
        assert!(pod_is_available(&p, 10, at(1010)));
        assert!(!pod_is_available(
            &pod("q", None, "Pending", None, 1),
            0,
            at(2000)
        ));
    }

    #[test]
    fn expectations_block_until_observed_or_expired() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/rs"));
        e.expect("ns/rs", 2, ["ns/a".to_string()]);
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        e.creation_observed("ns/rs");
        assert!(!e.satisfied("ns/rs"));
        e.deletion_observed("ns/rs", "ns/a");
        assert!(e.satisfied("ns/rs"));
    }

    #[test]
    fn template_pods_are_owned_and_generated() {
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web-abc".into()),
                namespace: Some("ns".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let p = pod_from_template(&rs);
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        let owner = &p.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.uid.as_str(), owner.controller), ("u1", Some(true)));
    }
}
