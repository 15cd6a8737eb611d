//! The Deployment controller (Kubernetes' `pkg/controller/deployment`): one ReplicaSet per pod
//! template, rolled out with the `RollingUpdate` or `Recreate` strategy; proportional scaling
//! when the size changes mid-rollout; pause and resume; revision history; and the status,
//! conditions and annotations that `kubectl rollout status|history|undo|pause|resume|restart`
//! read and write.
//!
//! The logic follows `sync.go`, `rolling.go`, `recreate.go`, `progress.go` and
//! `util/deployment_util.go` step by step; the arithmetic is in pure functions (tested below),
//! the reconciler only reads the caches and writes through the client.
//!
//! Writes are compare-and-swap against the resourceVersion of the cached copy the decision was
//! made on, as Kubernetes' optimistic concurrency makes them: when the store holds a newer copy
//! the sync stops ([`Stale`]), and the informer event bringing that copy queues the deployment
//! again.
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use tokio::task::JoinSet;

use super::Context;
use super::events::Recorder;
use super::runtime::{self, Change, WorkQueue, controller_of, selector_is_empty, selector_matches};
use crate::apiserver::storage::DeleteOptions;

/// The revision of a ReplicaSet (and of its Deployment): the rollout sequence number.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// The earlier revisions a ReplicaSet served (set when a rollback reuses it).
pub const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";
/// The Deployment's replicas when the ReplicaSet was last sized.
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
/// The Deployment's replicas + maxSurge when the ReplicaSet was last sized.
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
/// The label (and selector term) that keeps each template's ReplicaSet apart.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";
const DEPRECATED_ROLLBACK_TO_ANNOTATION: &str = "deprecated.deployment.rollback.to";
/// The revision-history annotation keeps at most this many characters.
const MAX_REVISION_HISTORY_CHARS: usize = 2000;
/// The apps/v1 defaults (the API server applies them; these cover objects that escaped it).
const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 600;
const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;
const DEFAULT_MAX_SURGE_OR_UNAVAILABLE: &str = "25%";
/// The alphabet of `rand.SafeEncodeString` (no vowels, no confusable characters).
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
const WORKERS: usize = 4;

const ROLLING_UPDATE: &str = "RollingUpdate";
const RECREATE: &str = "Recreate";

// Condition types and reasons (deployment_util.go).
const AVAILABLE: &str = "Available";
const PROGRESSING: &str = "Progressing";
const REPLICA_FAILURE: &str = "ReplicaFailure";
const REPLICA_SET_UPDATED: &str = "ReplicaSetUpdated";
const FAILED_RS_CREATE: &str = "ReplicaSetCreateError";
const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
const TIMED_OUT: &str = "ProgressDeadlineExceeded";
const PAUSED: &str = "DeploymentPaused";
const RESUMED: &str = "DeploymentResumed";
const MINIMUM_REPLICAS_AVAILABLE: &str = "MinimumReplicasAvailable";
const MINIMUM_REPLICAS_UNAVAILABLE: &str = "MinimumReplicasUnavailable";

/// A write found the stored object newer than the cached copy the decision was made on. The
/// sync stops; the informer event that brings the newer copy queues the deployment again.
#[derive(Debug, thiserror::Error)]
#[error("{0} changed since it was cached")]
struct Stale(String);

/// How far [`Controller::get_all_replica_sets_and_sync_revision`] may go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// Find the new ReplicaSet, write nothing (a deployment being deleted).
    ReadOnly,
    /// Find it and sync its annotations and the Deployment's revision.
    Sync,
    /// As `Sync`, and create it when there is none.
    Create,
}

struct Controller {
    ctx: Arc<Context>,
    queue: Arc<WorkQueue>,
    events: Recorder,
}

pub fn start(ctx: &Arc<Context>, tasks: &mut JoinSet<()>) {
    let controller = Arc::new(Controller {
        ctx: ctx.clone(),
        queue: WorkQueue::new(),
        events: ctx.events.for_component("deployment-controller"),
    });
    {
        let queue = controller.queue.clone();
        ctx.deployments.on_change(move |change| {
            let d = match change {
                Change::Applied { new, .. } => *new,
                Change::Deleted(old) => *old,
            };
            queue.add(runtime::key_of(d));
        });
    }
    // The handlers hold the controller weakly: the workers own it, and the informers (owned by
    // the context the controller holds) must not keep it alive in a cycle.
    {
        let weak: Weak<Controller> = Arc::downgrade(&controller);
        ctx.replica_sets.on_change(move |change| {
            if let Some(c) = weak.upgrade() {
                c.replica_set_changed(change);
            }
        });
    }
    {
        let weak: Weak<Controller> = Arc::downgrade(&controller);
        ctx.pods.on_change(move |change| {
            if let (Change::Deleted(pod), Some(c)) = (change, weak.upgrade()) {
                c.pod_deleted(pod);
            }
        });
    }
    let c = controller.clone();
    runtime::spawn_workers(
        tasks,
        "deployment",
        controller.queue.clone(),
        WORKERS,
        move |key| {
            let c = c.clone();
            async move {
                c.ctx.wait_synced().await;
                match c.sync(&key).await {
                    Err(e) if e.is::<Stale>() => {
                        tracing::debug!(deployment = key, reason = %e, "sync stopped on a stale cache");
                        Ok(None)
                    }
                    other => other,
                }
            }
        },
    );
}

// ---- Event handlers ----------------------------------------------------------------------------

impl Controller {
    /// The Deployment a controller ownerReference points at, if it exists with that uid.
    fn controlling_deployment(&self, meta: &ObjectMeta) -> Option<Arc<Deployment>> {
        let owner = controller_of(meta)?;
        if owner.kind != "Deployment" {
            return None;
        }
        let d = self
            .ctx
            .deployments
            .get(meta.namespace.as_deref(), &owner.name)?;
        (d.metadata.uid.as_deref() == Some(owner.uid.as_str())).then_some(d)
    }

    fn enqueue_controller(&self, meta: &ObjectMeta) {
        if let Some(d) = self.controlling_deployment(meta) {
            self.queue.add(runtime::key_of(d.as_ref()));
        }
    }

    /// Deployments whose selector matches an orphan ReplicaSet (candidates for adopting it).
    fn enqueue_selecting(&self, rs: &ReplicaSet) {
        let Some(labels) = rs.metadata.labels.as_ref().filter(|l| !l.is_empty()) else {
            return;
        };
        let ns = rs.metadata.namespace.as_deref().unwrap_or("");
        for d in self.ctx.deployments.list_namespace(ns) {
            let Some(spec) = d.spec.as_ref() else {
                continue;
            };
            if !selector_is_empty(&spec.selector) && selector_matches(&spec.selector, Some(labels))
            {
                self.queue.add(runtime::key_of(d.as_ref()));
            }
        }
    }

    fn replica_set_changed(&self, change: &Change<'_, ReplicaSet>) {
        match change {
            Change::Applied { old: None, new } => {
                if new.metadata.deletion_timestamp.is_some()
                    || controller_of(&new.metadata).is_some()
                {
                    self.enqueue_controller(&new.metadata);
                } else {
                    self.enqueue_selecting(new);
                }
            }
            Change::Applied {
                old: Some(old),
                new,
            } => {
                if old.metadata.resource_version == new.metadata.resource_version {
                    return;
                }
                let old_owner = controller_of(&old.metadata);
                let new_owner = controller_of(&new.metadata);
                let owner_changed = old_owner != new_owner;
                if owner_changed && old_owner.is_some() {
                    self.enqueue_controller(&old.metadata);
                }
                if new_owner.is_some() {
                    self.enqueue_controller(&new.metadata);
                } else if owner_changed || old.metadata.labels != new.metadata.labels {
                    self.enqueue_selecting(new);
                }
            }
            Change::Deleted(old) => self.enqueue_controller(&old.metadata),
        }
    }

    /// A Recreate deployment waits for its old pods to go away: sync it when the last one does.
    fn pod_deleted(&self, pod: &Pod) {
        let Some(owner) = controller_of(&pod.metadata) else {
            return;
        };
        if owner.kind != "ReplicaSet" {
            return;
        }
        let ns = pod.metadata.namespace.as_deref();
        let Some(rs) = self.ctx.replica_sets.get(ns, &owner.name) else {
            return;
        };
        if rs.metadata.uid.as_deref() != Some(owner.uid.as_str()) {
            return;
        }
        let Some(d) = self.controlling_deployment(&rs.metadata) else {
            return;
        };
        if strategy_type(&d) != RECREATE {
            return;
        }
        let Some(spec) = d.spec.as_ref() else { return };
        let d_uid = d.metadata.uid.clone().unwrap_or_default();
        let ns = ns.unwrap_or("");
        let owned: HashSet<String> = self
            .ctx
            .replica_sets
            .list_namespace(ns)
            .iter()
            .filter(|rs| controller_of(&rs.metadata).is_some_and(|r| r.uid == d_uid))
            .filter_map(|rs| rs.metadata.uid.clone())
            .collect();
        let any_left = self.ctx.pods.list_namespace(ns).iter().any(|p| {
            selector_matches(&spec.selector, p.metadata.labels.as_ref())
                && controller_of(&p.metadata).is_some_and(|r| owned.contains(&r.uid))
        });
        if !any_left {
            self.queue.add(runtime::key_of(d.as_ref()));
        }
    }
}

// ---- The sync ----------------------------------------------------------------------------------

impl Controller {
    /// `syncDeployment`.
    async fn sync(&self, key: &str) -> anyhow::Result<Option<Duration>> {
        let Some(cached) = self.ctx.deployments.get_key(key) else {
            return Ok(None);
        };
        let mut d = (*cached).clone();
        let Some(spec) = d.spec.as_ref() else {
            tracing::warn!(deployment = key, "skipping a deployment without a spec");
            return Ok(None);
        };
        if selector_is_empty(&spec.selector) {
            self.events.warning(
                &d,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.",
            );
            let mut status = d.status.clone().unwrap_or_default();
            if status.observed_generation.unwrap_or(0) < d.metadata.generation.unwrap_or(0) {
                status.observed_generation = d.metadata.generation;
                self.write_status(&mut d, status).await?;
            }
            return Ok(None);
        }
        let template_labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref());
        if !selector_matches(&spec.selector, template_labels) {
            tracing::debug!(
                deployment = key,
                "skipping a deployment whose selector does not match its template"
            );
            return Ok(None);
        }

        let mut rs_list = self.claim_replica_sets(&d).await?;

        if d.metadata.deletion_timestamp.is_some() {
            let (new_rs, old) = self
                .get_all_replica_sets_and_sync_revision(&mut d, &mut rs_list, Lookup::ReadOnly)
                .await?;
            self.sync_deployment_status(&mut d, &all_of(&old, new_rs.as_ref()), new_rs.as_ref())
                .await?;
            return Ok(None);
        }

        self.check_paused_conditions(&mut d).await?;
        if is_paused(&d) {
            self.sync_scale(&mut d, &mut rs_list).await?;
            return Ok(None);
        }
        if self.is_scaling_event(&mut d, &mut rs_list).await? {
            self.sync_scale(&mut d, &mut rs_list).await?;
            return Ok(None);
        }
        match strategy_type(&d) {
            RECREATE => self.rollout_recreate(&mut d, &mut rs_list).await,
            ROLLING_UPDATE => self.rollout_rolling(&mut d, &mut rs_list).await,
            other => anyhow::bail!("unexpected deployment strategy type: {other}"),
        }
    }

    /// `getReplicaSetsForDeployment`: the ReplicaSets this deployment controls and still
    /// selects, after adopting matching orphans and releasing owned ones that stopped matching.
    async fn claim_replica_sets(&self, d: &Deployment) -> anyhow::Result<Vec<ReplicaSet>> {
        let ns = d.metadata.namespace.as_deref().unwrap_or("");
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let Some(spec) = d.spec.as_ref() else {
            return Ok(Vec::new());
        };
        let deleting = d.metadata.deletion_timestamp.is_some();
        let mut claimed = Vec::new();
        let mut adoption_checked = false;
        for rs in self.ctx.replica_sets.list_namespace(ns) {
            let matches = selector_matches(&spec.selector, rs.metadata.labels.as_ref());
            match controller_of(&rs.metadata) {
                Some(owner) if owner.uid == uid => {
                    if matches {
                        claimed.push((*rs).clone());
                    } else if !deleting {
                        self.release(&rs, &uid).await?;
                    }
                }
                Some(_) => {}
                None => {
                    if deleting || !matches || rs.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    if !adoption_checked {
                        self.recheck_before_adopting(d).await?;
                        adoption_checked = true;
                    }
                    if let Some(adopted) = self.adopt(d, &rs).await? {
                        claimed.push(adopted);
                    }
                }
            }
        }
        Ok(claimed)
    }

    /// Adoption needs a fresh read: a deployment deleted since it was cached adopts nothing.
    async fn recheck_before_adopting(&self, d: &Deployment) -> anyhow::Result<()> {
        let ns = d.metadata.namespace.as_deref();
        let name = d.metadata.name.as_deref().unwrap_or("");
        let fresh: Deployment = self.ctx.client.get(ns, name).await.map_err(|e| {
            anyhow::anyhow!(
                "re-reading deployment {name} before adopting: {}",
                e.message
            )
        })?;
        if fresh.metadata.uid != d.metadata.uid {
            anyhow::bail!(
                "original Deployment {}/{name} is gone: got uid {}, wanted {}",
                ns.unwrap_or(""),
                fresh.metadata.uid.unwrap_or_default(),
                d.metadata.uid.clone().unwrap_or_default()
            );
        }
        if let Some(at) = fresh.metadata.deletion_timestamp {
            anyhow::bail!(
                "{}/{name} has just been deleted at {}",
                ns.unwrap_or(""),
                at.0
            );
        }
        Ok(())
    }

    async fn adopt(&self, d: &Deployment, rs: &ReplicaSet) -> anyhow::Result<Option<ReplicaSet>> {
        let reference = controller_reference(d);
        let selector = d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        let rs_uid = rs.metadata.uid.clone();
        let name = rs.metadata.name.clone().unwrap_or_default();
        let result = self
            .ctx
            .client
            .update::<ReplicaSet, _>(rs.metadata.namespace.as_deref(), &name, None, |current| {
                // Still the same orphan, still matching.
                if current.metadata.uid != rs_uid
                    || controller_of(&current.metadata).is_some()
                    || current.metadata.deletion_timestamp.is_some()
                    || !selector_matches(&selector, current.metadata.labels.as_ref())
                {
                    return false;
                }
                current
                    .metadata
                    .owner_references
                    .get_or_insert_with(Vec::new)
                    .push(reference.clone());
                true
            })
            .await;
        match result {
            Ok(adopted) => Ok(adopted),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => anyhow::bail!("adopting replica set {name}: {}", e.message),
        }
    }

    async fn release(&self, rs: &ReplicaSet, uid: &str) -> anyhow::Result<()> {
        let name = rs.metadata.name.clone().unwrap_or_default();
        let rs_uid = rs.metadata.uid.clone();
        let result = self
            .ctx
            .client
            .update::<ReplicaSet, _>(rs.metadata.namespace.as_deref(), &name, None, |current| {
                if current.metadata.uid != rs_uid {
                    return false;
                }
                let Some(refs) = current.metadata.owner_references.as_mut() else {
                    return false;
                };
                let before = refs.len();
                refs.retain(|r| r.uid != uid);
                refs.len() != before
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => anyhow::bail!("releasing replica set {name}: {}", e.message),
        }
    }

    /// The pods of the deployment's ReplicaSets (any phase), by ReplicaSet uid.
    fn pod_map(&self, d: &Deployment, rs_list: &[ReplicaSet]) -> HashMap<String, Vec<Arc<Pod>>> {
        let mut map: HashMap<String, Vec<Arc<Pod>>> = rs_list
            .iter()
            .filter_map(|rs| rs.metadata.uid.clone())
            .map(|uid| (uid, Vec::new()))
            .collect();
        let Some(spec) = d.spec.as_ref() else {
            return map;
        };
        let ns = d.metadata.namespace.as_deref().unwrap_or("");
        for pod in self.ctx.pods.list_namespace(ns) {
            if !selector_matches(&spec.selector, pod.metadata.labels.as_ref()) {
                continue;
            }
            if let Some(owner) = controller_of(&pod.metadata)
                && let Some(pods) = map.get_mut(&owner.uid)
            {
                pods.push(pod.clone());
            }
        }
        map
    }

    /// `getAllReplicaSetsAndSyncRevision`: the new ReplicaSet (the one with the deployment's
    /// template; created when `lookup` is `Create`) and all the others. Writes to the new one
    /// replace it in `rs_list`.
    async fn get_all_replica_sets_and_sync_revision(
        &self,
        d: &mut Deployment,
        rs_list: &mut [ReplicaSet],
        lookup: Lookup,
    ) -> anyhow::Result<(Option<ReplicaSet>, Vec<ReplicaSet>)> {
        let new_index = find_new_replica_set(d, rs_list);
        let old: Vec<ReplicaSet> = rs_list
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != new_index)
            .map(|(_, rs)| rs.clone())
            .collect();
        let new_rs = self
            .get_new_replica_set(d, rs_list, new_index, &old, lookup)
            .await?;
        Ok((new_rs, old))
    }

    /// `getNewReplicaSet`.
    async fn get_new_replica_set(
        &self,
        d: &mut Deployment,
        rs_list: &mut [ReplicaSet],
        new_index: Option<usize>,
        old: &[ReplicaSet],
        lookup: Lookup,
    ) -> anyhow::Result<Option<ReplicaSet>> {
        let new_revision = (max_revision(old) + 1).to_string();
        if let Some(i) = new_index {
            let mut rs = rs_list[i].clone();
            if lookup == Lookup::ReadOnly {
                return Ok(Some(rs));
            }
            let annotations_updated =
                set_new_replica_set_annotations(d, &mut rs, &new_revision, true);
            let min_ready = d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let rs_spec = rs.spec.get_or_insert_with(Default::default);
            if annotations_updated
                || rs_spec.min_ready_seconds.unwrap_or(0) != min_ready.unwrap_or(0)
            {
                rs_spec.min_ready_seconds = min_ready;
                let updated = self.update_replica_set(&rs).await?;
                rs_list[i] = updated.clone();
                return Ok(Some(updated));
            }
            let revision = annotation(&rs.metadata, REVISION_ANNOTATION).unwrap_or_default();
            self.set_deployment_revision(d, &revision).await?;
            let status = d.status.clone().unwrap_or_default();
            if has_progress_deadline(d) && condition(&status, PROGRESSING).is_none() {
                let mut status = status;
                set_condition(
                    &mut status,
                    new_condition(
                        PROGRESSING,
                        "True",
                        FOUND_NEW_RS,
                        format!("Found new replica set {:?}", name_of(&rs.metadata)),
                        now(),
                    ),
                );
                self.write_status(d, status).await?;
            }
            return Ok(Some(rs));
        }
        if lookup != Lookup::Create {
            return Ok(None);
        }

        // No ReplicaSet has the template yet: create one.
        let Some(spec) = d.spec.as_ref() else {
            return Ok(None);
        };
        let collision_count = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = compute_hash(&spec.template, collision_count);
        let mut new_rs = new_replica_set(d, &hash);
        let replicas = new_rs_new_replicas(d, &all_of(old, Some(&new_rs)), &new_rs)?;
        new_rs.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
        set_new_replica_set_annotations(d, &mut new_rs, &new_revision, false);
        let name = name_of(&new_rs.metadata).to_string();
        let ns = d.metadata.namespace.clone();
        let (created, already_existed) = match self.ctx.client.create(&new_rs).await {
            Ok(created) => (created, false),
            Err(e) if e.code == 409 && e.reason == "AlreadyExists" => {
                let existing = match self.ctx.replica_sets.get(ns.as_deref(), &name) {
                    Some(rs) => (*rs).clone(),
                    None => self
                        .ctx
                        .client
                        .get::<ReplicaSet>(ns.as_deref(), &name)
                        .await
                        .map_err(|e| {
                            anyhow::anyhow!("reading replica set {name}: {}", e.message)
                        })?,
                };
                let ours = controller_of(&existing.metadata)
                    .is_some_and(|r| Some(r.uid.as_str()) == d.metadata.uid.as_deref());
                let same_template = equal_ignore_hash(
                    &spec.template,
                    &existing
                        .spec
                        .as_ref()
                        .and_then(|s| s.template.clone())
                        .unwrap_or_default(),
                );
                if ours && same_template {
                    (existing, true)
                } else {
                    // A hash collision: a different ReplicaSet has the name. Bump
                    // collisionCount so the next sync hashes to another name.
                    let mut status = d.status.clone().unwrap_or_default();
                    let bumped = status.collision_count.unwrap_or(0).saturating_add(1);
                    status.collision_count = Some(bumped);
                    self.write_status(d, status).await?;
                    anyhow::bail!(
                        "replica set {name} already exists with another template; collisionCount is now {bumped}"
                    );
                }
            }
            Err(e) if e.code == 403 && e.message.contains("is being terminated") => {
                anyhow::bail!("creating replica set {name}: {}", e.message);
            }
            Err(e) => {
                let message = format!("Failed to create new replica set {name:?}: {}", e.message);
                if has_progress_deadline(d) {
                    let mut status = d.status.clone().unwrap_or_default();
                    set_condition(
                        &mut status,
                        new_condition(
                            PROGRESSING,
                            "False",
                            FAILED_RS_CREATE,
                            message.clone(),
                            now(),
                        ),
                    );
                    // The creation failure is the error to report; this write is best effort.
                    let _ = self.write_status(d, status).await;
                }
                self.events.warning(d, FAILED_RS_CREATE, message.clone());
                anyhow::bail!(message);
            }
        };
        if !already_existed && replicas > 0 {
            self.events.normal(
                d,
                "ScalingReplicaSet",
                format!("Scaled up replica set {name} from 0 to {replicas}"),
            );
        }
        self.set_deployment_revision(d, &new_revision).await?;
        if !already_existed && has_progress_deadline(d) {
            let mut status = d.status.clone().unwrap_or_default();
            set_condition(
                &mut status,
                new_condition(
                    PROGRESSING,
                    "True",
                    NEW_RS_CREATED,
                    format!("Created new replica set {name:?}"),
                    now(),
                ),
            );
            self.write_status(d, status).await?;
        }
        Ok(Some(created))
    }

    /// `checkPausedConditions`: a paused deployment's Progressing condition says so, and a
    /// resumed one's too, so the time spent paused never counts towards the deadline.
    async fn check_paused_conditions(&self, d: &mut Deployment) -> anyhow::Result<()> {
        if let Some(status) = paused_status(d, now()) {
            self.write_status(d, status).await?;
        }
        Ok(())
    }

    /// `isScalingEvent`: an active ReplicaSet was sized for another `replicas`.
    async fn is_scaling_event(
        &self,
        d: &mut Deployment,
        rs_list: &mut [ReplicaSet],
    ) -> anyhow::Result<bool> {
        let (new_rs, old) = self
            .get_all_replica_sets_and_sync_revision(d, rs_list, Lookup::Sync)
            .await?;
        let desired = deployment_replicas(d);
        Ok(all_of(&old, new_rs.as_ref())
            .into_iter()
            .filter(|rs| rs_replicas(rs) > 0)
            .filter_map(|rs| int_annotation(&rs.metadata, DESIRED_REPLICAS_ANNOTATION))
            .any(|annotated| annotated != desired))
    }

    /// `sync`: scaling (proportional during a rollout) and, when paused, history cleanup; no
    /// rollout progress.
    async fn sync_scale(
        &self,
        d: &mut Deployment,
        rs_list: &mut [ReplicaSet],
    ) -> anyhow::Result<()> {
        let (new_rs, old) = self
            .get_all_replica_sets_and_sync_revision(d, rs_list, Lookup::Sync)
            .await?;
        self.scale(d, new_rs.as_ref(), &old).await?;
        if is_paused(d) {
            self.cleanup_deployment(d, &old).await?;
        }
        self.sync_deployment_status(d, &all_of(&old, new_rs.as_ref()), new_rs.as_ref())
            .await
    }

    async fn scale(
        &self,
        d: &Deployment,
        new_rs: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> anyhow::Result<()> {
        let plan = plan_scale(d, new_rs, old);
        for (rs, size) in plan.sizes {
            if plan.proportional {
                self.scale_replica_set(rs, size, d).await?;
            } else {
                self.scale_replica_set_and_record_event(rs, size, d).await?;
            }
        }
        Ok(())
    }

    /// `rolloutRolling`.
    async fn rollout_rolling(
        &self,
        d: &mut Deployment,
        rs_list: &mut [ReplicaSet],
    ) -> anyhow::Result<Option<Duration>> {
        let (new_rs, old) = self
            .get_all_replica_sets_and_sync_revision(d, rs_list, Lookup::Create)
            .await?;
        let new_rs =
            new_rs.ok_or_else(|| anyhow::anyhow!("the new replica set was not created"))?;

        // Scale up, if we can.
        if let Some(target) = reconcile_new_replica_set(d, &all_of(&old, Some(&new_rs)), &new_rs)? {
            let (scaled_up, _) = self
                .scale_replica_set_and_record_event(&new_rs, target, d)
                .await?;
            if scaled_up {
                return self
                    .sync_rollout_status(d, &all_of(&old, Some(&new_rs)), Some(&new_rs))
                    .await;
            }
        }

        // Scale down, if we can.
        let mut active_old: Vec<ReplicaSet> = old
            .iter()
            .filter(|rs| rs_replicas(rs) > 0)
            .cloned()
            .collect();
        let plan =
            plan_old_replica_sets_scale_down(d, &all_of(&old, Some(&new_rs)), &active_old, &new_rs);
        if !plan.is_empty() {
            for (i, size) in plan {
                let (_, updated) = self
                    .scale_replica_set_and_record_event(&active_old[i], size, d)
                    .await?;
                active_old[i] = updated;
            }
            return self
                .sync_rollout_status(d, &all_of(&old, Some(&new_rs)), Some(&new_rs))
                .await;
        }

        if deployment_complete(d, &d.status.clone().unwrap_or_default()) {
            self.cleanup_deployment(d, &old).await?;
        }
        self.sync_rollout_status(d, &all_of(&old, Some(&new_rs)), Some(&new_rs))
            .await
    }

    /// `rolloutRecreate`: old ReplicaSets to zero, wait for their pods to go, then the new one
    /// to full size.
    async fn rollout_recreate(
        &self,
        d: &mut Deployment,
        rs_list: &mut [ReplicaSet],
    ) -> anyhow::Result<Option<Duration>> {
        let pod_map = self.pod_map(d, rs_list);
        let (mut new_rs, mut old) = self
            .get_all_replica_sets_and_sync_revision(d, rs_list, Lookup::Sync)
            .await?;

        let mut scaled_down = false;
        for rs in old.iter_mut().filter(|rs| rs_replicas(rs) > 0) {
            let (scaled, updated) = self.scale_replica_set_and_record_event(rs, 0, d).await?;
            if scaled {
                *rs = updated;
                scaled_down = true;
            }
        }
        if scaled_down || old_pods_running(new_rs.as_ref(), &old, &pod_map) {
            return self
                .sync_rollout_status(d, &all_of(&old, new_rs.as_ref()), new_rs.as_ref())
                .await;
        }

        if new_rs.is_none() {
            (new_rs, old) = self
                .get_all_replica_sets_and_sync_revision(d, rs_list, Lookup::Create)
                .await?;
        }
        let new_rs =
            new_rs.ok_or_else(|| anyhow::anyhow!("the new replica set was not created"))?;
        self.scale_replica_set_and_record_event(&new_rs, deployment_replicas(d), d)
            .await?;

        if deployment_complete(d, &d.status.clone().unwrap_or_default()) {
            self.cleanup_deployment(d, &old).await?;
        }
        self.sync_rollout_status(d, &all_of(&old, Some(&new_rs)), Some(&new_rs))
            .await
    }

    /// `scaleReplicaSetAndRecordEvent`: resizes (and refreshes the replica annotations) only
    /// when the size differs.
    async fn scale_replica_set_and_record_event(
        &self,
        rs: &ReplicaSet,
        size: i32,
        d: &Deployment,
    ) -> anyhow::Result<(bool, ReplicaSet)> {
        if rs_replicas(rs) == size {
            return Ok((false, rs.clone()));
        }
        self.scale_replica_set(rs, size, d).await
    }

    /// `scaleReplicaSet`: sets the size and the desired/max replica annotations.
    async fn scale_replica_set(
        &self,
        rs: &ReplicaSet,
        size: i32,
        d: &Deployment,
    ) -> anyhow::Result<(bool, ReplicaSet)> {
        let from = rs_replicas(rs);
        let desired = deployment_replicas(d);
        let max = desired.saturating_add(max_surge(d));
        let resize = from != size;
        if !resize && !replicas_annotations_need_update(rs, desired, max) {
            return Ok((false, rs.clone()));
        }
        let mut copy = rs.clone();
        copy.spec.get_or_insert_with(Default::default).replicas = Some(size);
        set_replicas_annotations(&mut copy, desired, max);
        let updated = self.update_replica_set(&copy).await?;
        if resize {
            let direction = if from < size { "up" } else { "down" };
            self.events.normal(
                d,
                "ScalingReplicaSet",
                format!(
                    "Scaled {direction} replica set {} from {from} to {size}",
                    name_of(&rs.metadata)
                ),
            );
        }
        Ok((resize, updated))
    }

    /// `cleanupDeployment`: deletes the oldest scaled-down ReplicaSets beyond
    /// `revisionHistoryLimit`.
    async fn cleanup_deployment(&self, d: &Deployment, old: &[ReplicaSet]) -> anyhow::Result<()> {
        for rs in history_to_delete(d, old) {
            let name = name_of(&rs.metadata);
            let uid = rs.metadata.uid.as_deref().unwrap_or("");
            tracing::debug!(
                replicaset = name,
                "deleting an old replica set beyond the revision history limit"
            );
            self.ctx
                .client
                .delete_uid::<ReplicaSet>(
                    rs.metadata.namespace.as_deref(),
                    name,
                    uid,
                    &DeleteOptions::default(),
                )
                .await
                .map_err(|e| anyhow::anyhow!("deleting old replica set {name}: {}", e.message))?;
        }
        Ok(())
    }

    /// `syncDeploymentStatus`.
    async fn sync_deployment_status(
        &self,
        d: &mut Deployment,
        all: &[&ReplicaSet],
        new_rs: Option<&ReplicaSet>,
    ) -> anyhow::Result<()> {
        let status = calculate_status(d, all, new_rs, now());
        self.write_status(d, status).await
    }

    /// `syncRolloutStatus`: the status with the Progressing condition; an unchanged status of
    /// a rollout in flight comes back when its progress deadline passes.
    async fn sync_rollout_status(
        &self,
        d: &mut Deployment,
        all: &[&ReplicaSet],
        new_rs: Option<&ReplicaSet>,
    ) -> anyhow::Result<Option<Duration>> {
        let now = now();
        let status = rollout_status(d, all, new_rs, now);
        if d.status.clone().unwrap_or_default() == status {
            return Ok(requeue_stuck_deployment(d, &status, now));
        }
        self.write_status(d, status).await?;
        Ok(None)
    }

    // ---- Writes (compare-and-swap on the cached resourceVersion) -----------------------------

    /// Writes the deployment's status when it differs; `d` becomes the written object.
    async fn write_status(
        &self,
        d: &mut Deployment,
        status: DeploymentStatus,
    ) -> anyhow::Result<()> {
        if d.status.as_ref() == Some(&status) {
            return Ok(());
        }
        self.update_deployment(d, Some("status"), |current| {
            current.status = Some(status.clone());
        })
        .await
    }

    /// `SetDeploymentRevision`, written through the main resource (the status subresource
    /// keeps metadata as stored).
    async fn set_deployment_revision(
        &self,
        d: &mut Deployment,
        revision: &str,
    ) -> anyhow::Result<()> {
        if annotation(&d.metadata, REVISION_ANNOTATION).as_deref() == Some(revision) {
            return Ok(());
        }
        self.update_deployment(d, None, |current| {
            current
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(REVISION_ANNOTATION.to_string(), revision.to_string());
        })
        .await
    }

    async fn update_deployment(
        &self,
        d: &mut Deployment,
        subresource: Option<&str>,
        change: impl Fn(&mut Deployment) + Send + Sync,
    ) -> anyhow::Result<()> {
        let ns = d.metadata.namespace.clone();
        let name = name_of(&d.metadata).to_string();
        let uid = d.metadata.uid.clone();
        let expected = d.metadata.resource_version.clone();
        let mut stale = false;
        let result = self
            .ctx
            .client
            .update::<Deployment, _>(ns.as_deref(), &name, subresource, |current| {
                if current.metadata.uid != uid || current.metadata.resource_version != expected {
                    stale = true;
                    return false;
                }
                change(current);
                true
            })
            .await;
        match result {
            Ok(Some(written)) => {
                *d = written;
                Ok(())
            }
            Ok(None) if stale => Err(Stale(format!("deployment {name}")).into()),
            Ok(None) => Ok(()),
            Err(e) if e.code == 404 => Err(Stale(format!("deployment {name}")).into()),
            Err(e) => anyhow::bail!("updating deployment {name}: {}", e.message),
        }
    }

    /// Replaces a ReplicaSet (spec and metadata; its status is the ReplicaSet controller's)
    /// if the stored one is still the copy `rs` was made from.
    async fn update_replica_set(&self, rs: &ReplicaSet) -> anyhow::Result<ReplicaSet> {
        let name = name_of(&rs.metadata).to_string();
        let mut stale = false;
        let result = self
            .ctx
            .client
            .update::<ReplicaSet, _>(rs.metadata.namespace.as_deref(), &name, None, |current| {
                if current.metadata.uid != rs.metadata.uid
                    || current.metadata.resource_version != rs.metadata.resource_version
                {
                    stale = true;
                    return false;
                }
                *current = rs.clone();
                true
            })
            .await;
        match result {
            Ok(Some(written)) => Ok(written),
            Ok(None) if stale => Err(Stale(format!("replica set {name}")).into()),
            Ok(None) => Ok(rs.clone()),
            Err(e) if e.code == 404 => Err(Stale(format!("replica set {name}")).into()),
            Err(e) => anyhow::bail!("updating replica set {name}: {}", e.message),
        }
    }
}

// ---- Accessors -----------------------------------------------------------------------------------

fn now() -> jiff::Timestamp {
    // Stored times have whole seconds; conditions made now compare equal once read back.
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)
}

fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

fn annotation(meta: &ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref().and_then(|a| a.get(key)).cloned()
}

/// An integer annotation (`getIntFromAnnotation`); unparsable values count as absent.
fn int_annotation(meta: &ObjectMeta, key: &str) -> Option<i32> {
    meta.annotations.as_ref()?.get(key)?.parse().ok()
}

/// `spec.replicas` of a Deployment (1 when unset, the API default).
fn deployment_replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// `spec.replicas` of a ReplicaSet (1 when unset, the API default).
fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

fn rs_ready(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

fn rs_available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn is_paused(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
}

fn strategy_type(d: &Deployment) -> &str {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .unwrap_or(ROLLING_UPDATE)
}

fn is_rolling_update(d: &Deployment) -> bool {
    strategy_type(d) == ROLLING_UPDATE
}

/// `maxSurge` and `maxUnavailable` as written (the apps/v1 default of 25% when unset).
fn rolling_parameters(d: &Deployment) -> (IntOrString, IntOrString) {
    let rolling = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let default = || IntOrString::String(DEFAULT_MAX_SURGE_OR_UNAVAILABLE.to_string());
    (
        rolling
            .and_then(|r| r.max_surge.clone())
            .unwrap_or_else(default),
        rolling
            .and_then(|r| r.max_unavailable.clone())
            .unwrap_or_else(default),
    )
}

fn progress_deadline_seconds(d: &Deployment) -> i32 {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS)
}

/// `HasProgressDeadline`: `progressDeadlineSeconds` of MaxInt32 means "never".
fn has_progress_deadline(d: &Deployment) -> bool {
    progress_deadline_seconds(d) != i32::MAX
}

fn revision_history_limit(d: &Deployment) -> i32 {
    d.spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(DEFAULT_REVISION_HISTORY_LIMIT)
}

fn controller_reference(d: &Deployment) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: name_of(&d.metadata).to_string(),
        uid: d.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The old ReplicaSets followed by the new one, as Kubernetes' `append(oldRSs, newRS)`.
fn all_of<'a>(old: &'a [ReplicaSet], new_rs: Option<&'a ReplicaSet>) -> Vec<&'a ReplicaSet> {
    old.iter().chain(new_rs).collect()
}

/// `ReplicaSetsByCreationTimestamp`: oldest first, then by name.
fn by_creation(rs: &ReplicaSet) -> (Option<jiff::Timestamp>, &str) {
    (
        rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
        name_of(&rs.metadata),
    )
}

// ---- Fenceposts ----------------------------------------------------------------------------------

/// `GetScaledValueFromIntOrPercent`: an integer as is, a percentage of `total` rounded up or
/// down.
pub fn scaled_value(value: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match value {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let Some(number) = s.strip_suffix('%') else {
                return Err(format!(
                    "invalid value for IntOrString: invalid type: string is not a percentage: {s:?}"
                ));
            };
            let percent: i64 = number
                .parse()
                .map_err(|e| format!("invalid value for IntOrString: invalid value {s:?}: {e}"))?;
            let scaled = percent as f64 * f64::from(total) / 100.0;
            let rounded = if round_up {
                scaled.ceil()
            } else {
                scaled.floor()
            };
            Ok(rounded as i32)
        }
    }
}

/// `ResolveFenceposts`: maxSurge (rounded up) and maxUnavailable (rounded down) for `desired`
/// replicas; when both come to zero, maxUnavailable is 1 so the rollout can move at all.
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32), String> {
    let zero = IntOrString::Int(0);
    let surge = scaled_value(max_surge.unwrap_or(&zero), desired, true)?;
    let mut unavailable = scaled_value(max_unavailable.unwrap_or(&zero), desired, false)?;
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    Ok((surge, unavailable))
}

/// `MaxSurge`: 0 for Recreate (and for invalid values, which validation rejects).
fn max_surge(d: &Deployment) -> i32 {
    if !is_rolling_update(d) {
        return 0;
    }
    let (surge, unavailable) = rolling_parameters(d);
    resolve_fenceposts(Some(&surge), Some(&unavailable), deployment_replicas(d))
        .map_or(0, |(surge, _)| surge)
}

/// `MaxUnavailable`: 0 for Recreate and for zero replicas, at most `replicas`.
fn max_unavailable(d: &Deployment) -> i32 {
    let replicas = deployment_replicas(d);
    if !is_rolling_update(d) || replicas == 0 {
        return 0;
    }
    let (surge, unavailable) = rolling_parameters(d);
    resolve_fenceposts(Some(&surge), Some(&unavailable), replicas)
        .map_or(0, |(_, unavailable)| unavailable.min(replicas))
}

// ---- Template hash ---------------------------------------------------------------------------------

/// The template as compared and hashed: without the `pod-template-hash` label, and without
/// empty values, so `[]`, `{}` and absent compare equal (as Kubernetes' semantic equality has
/// nil and empty equal) whichever way a copy went through the API.
fn template_value(template: &PodTemplateSpec) -> Value {
    let mut template = template.clone();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH_LABEL);
    }
    let mut value = serde_json::to_value(&template).unwrap_or(Value::Null);
    prune_empty(&mut value);
    value
}

/// Removes nulls and empty objects and arrays from objects; returns whether `value` is empty.
fn prune_empty(value: &mut Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => {
            map.retain(|_, v| !prune_empty(v));
            map.is_empty()
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                prune_empty(item);
            }
            items.is_empty()
        }
        _ => false,
    }
}

/// JSON with sorted keys: the bytes the hash is taken over.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(&Value::String(key.clone()), out);
                out.push(b':');
                write_canonical(&map[key.as_str()], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => {
            out.extend_from_slice(serde_json::to_string(scalar).unwrap_or_default().as_bytes())
        }
    }
}

/// FNV-1a, 32 bits (Go's `hash/fnv.New32a`).
fn fnv32a(bytes: &[u8], mut hash: u32) -> u32 {
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(16_777_619);
    }
    hash
}

const FNV32_OFFSET: u32 = 2_166_136_261;

/// `rand.SafeEncodeString`: each byte mapped into [`SAFE_ALPHABET`].
fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()] as char)
        .collect()
}

/// `controller.ComputeHash`: FNV-32a over the template (as [`template_value`], canonical
/// JSON) and the collision count, printed in decimal and safe-encoded: the `pod-template-hash`.
pub fn compute_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = Vec::new();
    write_canonical(&template_value(template), &mut bytes);
    let mut hash = fnv32a(&bytes, FNV32_OFFSET);
    if let Some(count) = collision_count {
        let mut extra = [0u8; 8];
        extra[..4].copy_from_slice(&(count as u32).to_le_bytes());
        hash = fnv32a(&extra, hash);
    }
    safe_encode(&hash.to_string())
}

/// `EqualIgnoreHash`: the templates are the same but for the `pod-template-hash` label.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    template_value(a) == template_value(b)
}

fn rs_template(rs: &ReplicaSet) -> PodTemplateSpec {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default()
}

/// `FindNewReplicaSet`: the oldest ReplicaSet with the deployment's template.
fn find_new_replica_set(d: &Deployment, rs_list: &[ReplicaSet]) -> Option<usize> {
    let template = &d.spec.as_ref()?.template;
    let mut order: Vec<usize> = (0..rs_list.len()).collect();
    order.sort_by(|a, b| by_creation(&rs_list[*a]).cmp(&by_creation(&rs_list[*b])));
    order
        .into_iter()
        .find(|i| equal_ignore_hash(&rs_template(&rs_list[*i]), template))
}

/// The ReplicaSet Kubernetes would create for the deployment's template (0 replicas, no
/// annotations yet).
fn new_replica_set(d: &Deployment, hash: &str) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let mut template = spec.template;
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(POD_TEMPLATE_HASH_LABEL.to_string(), hash.to_string());
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels = Some(labels.clone());
    let mut selector = spec.selector;
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH_LABEL.to_string(), hash.to_string());
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", name_of(&d.metadata))),
            namespace: d.metadata.namespace.clone(),
            owner_references: Some(vec![controller_reference(d)]),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(0),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

// ---- Revisions and annotations --------------------------------------------------------------------

/// `Revision`: the revision annotation (0 when absent).
fn revision(rs: &ReplicaSet) -> Result<i64, std::num::ParseIntError> {
    match rs
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION))
    {
        None => Ok(0),
        Some(v) => v.parse(),
    }
}

/// `MaxRevision`: the highest parsable revision.
fn max_revision(rss: &[ReplicaSet]) -> i64 {
    rss.iter()
        .filter_map(|rs| revision(rs).ok())
        .max()
        .unwrap_or(0)
        .max(0)
}

/// Annotations of a Deployment that its ReplicaSets do not get (`annotationsToSkip`).
fn skip_copy_annotation(key: &str) -> bool {
    matches!(
        key,
        LAST_APPLIED_ANNOTATION
            | REVISION_ANNOTATION
            | REVISION_HISTORY_ANNOTATION
            | DESIRED_REPLICAS_ANNOTATION
            | MAX_REPLICAS_ANNOTATION
            | DEPRECATED_ROLLBACK_TO_ANNOTATION
    )
}

/// `copyDeploymentAnnotationsToReplicaSet` (which is how `kubernetes.io/change-cause` reaches
/// the history).
fn copy_deployment_annotations(d: &Deployment, rs: &mut ReplicaSet) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (key, value) in d.metadata.annotations.iter().flatten() {
        if skip_copy_annotation(key) || annotations.get(key) == Some(value) {
            continue;
        }
        annotations.insert(key.clone(), value.clone());
        changed = true;
    }
    changed
}

/// `SetNewReplicaSetAnnotations`: copies the deployment's annotations, raises the revision to
/// `new_revision` (recording the replaced one in the revision history, as a rollback does) and,
/// for a ReplicaSet about to be created, sets the replica annotations. True when anything
/// changed.
fn set_new_replica_set_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: &str,
    exists: bool,
) -> bool {
    let mut changed = copy_deployment_annotations(d, rs);
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let old_revision = annotations.get(REVISION_ANNOTATION).cloned();
    let old = match old_revision.as_deref() {
        None | Some("") => 0,
        Some(s) => match s.parse::<i64>() {
            Ok(v) => v,
            Err(e) => {
                tracing::info!(replicaset = name_of(&rs.metadata), error = %e, "the replica set's revision is not a number");
                return false;
            }
        },
    };
    let Ok(new) = new_revision.parse::<i64>() else {
        return false;
    };
    if old < new {
        annotations.insert(REVISION_ANNOTATION.to_string(), new_revision.to_string());
        changed = true;
        if let Some(old_revision) = old_revision {
            let history = annotations
                .get(REVISION_HISTORY_ANNOTATION)
                .cloned()
                .unwrap_or_default();
            if let Some(updated) = append_revision_history(&history, &old_revision) {
                annotations.insert(REVISION_HISTORY_ANNOTATION.to_string(), updated);
            }
        }
    }
    if !exists {
        let desired = deployment_replicas(d);
        if set_replicas_annotations(rs, desired, desired.saturating_add(max_surge(d))) {
            changed = true;
        }
    }
    changed
}

/// The revision history with `revision` appended, dropping the oldest entries to stay within
/// [`MAX_REVISION_HISTORY_CHARS`]; None when even that cannot fit it.
fn append_revision_history(history: &str, revision: &str) -> Option<String> {
    if history.is_empty() {
        return Some(revision.to_string());
    }
    let entries: Vec<&str> = history.split(',').collect();
    let mut total = history.len() + revision.len() + 1;
    let mut start = 0;
    while total > MAX_REVISION_HISTORY_CHARS && start < entries.len() {
        total -= entries[start].len() + 1;
        start += 1;
    }
    if total > MAX_REVISION_HISTORY_CHARS {
        tracing::info!("not appending a revision: the revision history is at its length limit");
        return None;
    }
    let mut kept: Vec<&str> = entries[start..].to_vec();
    kept.push(revision);
    Some(kept.join(","))
}

/// `SetReplicasAnnotations`; true when they changed.
fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (key, value) in [
        (DESIRED_REPLICAS_ANNOTATION, desired.to_string()),
        (MAX_REPLICAS_ANNOTATION, max.to_string()),
    ] {
        if annotations.get(key) != Some(&value) {
            annotations.insert(key.to_string(), value);
            changed = true;
        }
    }
    changed
}

fn replicas_annotations_need_update(rs: &ReplicaSet, desired: i32, max: i32) -> bool {
    annotation(&rs.metadata, DESIRED_REPLICAS_ANNOTATION) != Some(desired.to_string())
        || annotation(&rs.metadata, MAX_REPLICAS_ANNOTATION) != Some(max.to_string())
}

/// `cleanupDeployment`'s choice: the oldest (by revision) old ReplicaSets beyond the history
/// limit that are fully scaled down and observed so.
fn history_to_delete<'a>(d: &Deployment, old: &'a [ReplicaSet]) -> Vec<&'a ReplicaSet> {
    let limit = revision_history_limit(d);
    if limit == i32::MAX {
        return Vec::new();
    }
    let mut cleanable: Vec<&ReplicaSet> = old
        .iter()
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .collect();
    let excess = cleanable.len() as i64 - i64::from(limit);
    if excess <= 0 {
        return Vec::new();
    }
    // ReplicaSetsByRevision (a total order: unparsable revisions sort as 0).
    cleanable.sort_by(|a, b| {
        (revision(a).unwrap_or(0), by_creation(a)).cmp(&(revision(b).unwrap_or(0), by_creation(b)))
    });
    cleanable
        .into_iter()
        .take(excess as usize)
        .filter(|rs| {
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            rs_status_replicas(rs) == 0
                && rs_replicas(rs) == 0
                && rs.metadata.generation.unwrap_or(0) <= observed
        })
        .collect()
}

// ---- Rollout arithmetic -----------------------------------------------------------------------------

/// `NewRSNewReplicas`: the size of the new ReplicaSet in a rollout step.
fn new_rs_new_replicas(
    d: &Deployment,
    all: &[&ReplicaSet],
    new_rs: &ReplicaSet,
) -> anyhow::Result<i32> {
    let desired = deployment_replicas(d);
    match strategy_type(d) {
        ROLLING_UPDATE => {
            let (surge, _) = rolling_parameters(d);
            let surge = scaled_value(&surge, desired, true).map_err(anyhow::Error::msg)?;
            let current: i32 = all.iter().map(|rs| rs_replicas(rs)).sum();
            let max_total = desired.saturating_add(surge);
            if current >= max_total {
                return Ok(rs_replicas(new_rs));
            }
            let scale_up = (max_total - current).min(desired - rs_replicas(new_rs));
            Ok(rs_replicas(new_rs) + scale_up)
        }
        RECREATE => Ok(desired),
        other => anyhow::bail!("deployment type {other} isn't supported"),
    }
}

/// `reconcileNewReplicaSet`'s target for the new ReplicaSet, None when it is at size.
fn reconcile_new_replica_set(
    d: &Deployment,
    all: &[&ReplicaSet],
    new_rs: &ReplicaSet,
) -> anyhow::Result<Option<i32>> {
    let desired = deployment_replicas(d);
    let current = rs_replicas(new_rs);
    if current == desired {
        return Ok(None);
    }
    if current > desired {
        return Ok(Some(desired));
    }
    Ok(Some(new_rs_new_replicas(d, all, new_rs)?))
}

/// `reconcileOldReplicaSets` as a plan: the sizes to give `old_active[i]`, in order (one set
/// may appear twice: unhealthy replicas are cleaned up first, then available ones scaled down
/// while keeping `replicas - maxUnavailable` available).
fn plan_old_replica_sets_scale_down(
    d: &Deployment,
    all: &[&ReplicaSet],
    old_active: &[ReplicaSet],
    new_rs: &ReplicaSet,
) -> Vec<(usize, i32)> {
    let old_pods: i32 = old_active.iter().map(rs_replicas).sum();
    if old_pods == 0 {
        return Vec::new();
    }
    let all_pods: i32 = all.iter().map(|rs| rs_replicas(rs)).sum();
    let min_available = deployment_replicas(d) - max_unavailable(d);
    let new_unavailable = rs_replicas(new_rs) - rs_available(new_rs);
    // Not only maxUnavailable and the surge pods count, the new set's unavailable pods too:
    // they must not let old ones go.
    let max_scaled_down = all_pods - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Vec::new();
    }
    let mut sizes: Vec<i32> = old_active.iter().map(rs_replicas).collect();
    let Some(mut plan) = cleanup_unhealthy_replicas(old_active, &mut sizes, max_scaled_down) else {
        // More available than wanted (a scale-down not carried out yet): Kubernetes stops here
        // and looks again on the next sync.
        return Vec::new();
    };
    plan.extend(scale_down_old_replica_sets(
        d, old_active, &mut sizes, new_rs,
    ));
    plan
}

/// Oldest first (`ReplicaSetsByCreationTimestamp`), as indices into `sets`.
fn oldest_first(sets: &[ReplicaSet]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sets.len()).collect();
    order.sort_by(|a, b| by_creation(&sets[*a]).cmp(&by_creation(&sets[*b])));
    order
}

/// `cleanupUnhealthyReplicas`: scales old sets down by their unavailable replicas (oldest
/// first, at most `max_cleanup` in all), which adds no unavailability; `sizes` follow. None
/// when a set has more available replicas than its size.
fn cleanup_unhealthy_replicas(
    old: &[ReplicaSet],
    sizes: &mut [i32],
    max_cleanup: i32,
) -> Option<Vec<(usize, i32)>> {
    let mut plan = Vec::new();
    let mut cleaned = 0;
    for i in oldest_first(old) {
        if cleaned >= max_cleanup {
            break;
        }
        let available = rs_available(&old[i]);
        if sizes[i] == 0 || sizes[i] == available {
            continue;
        }
        let count = (max_cleanup - cleaned).min(sizes[i] - available);
        if count < 0 {
            return None;
        }
        sizes[i] -= count;
        cleaned += count;
        plan.push((i, sizes[i]));
    }
    Some(plan)
}

/// `scaleDownOldReplicaSetsForRollingUpdate`: scales old sets down (oldest first) by the
/// available replicas beyond `replicas - maxUnavailable`; `sizes` follow.
fn scale_down_old_replica_sets(
    d: &Deployment,
    old: &[ReplicaSet],
    sizes: &mut [i32],
    new_rs: &ReplicaSet,
) -> Vec<(usize, i32)> {
    let min_available = deployment_replicas(d) - max_unavailable(d);
    let available: i32 = old.iter().map(rs_available).sum::<i32>() + rs_available(new_rs);
    if available <= min_available {
        return Vec::new();
    }
    let wanted = available - min_available;
    let mut plan = Vec::new();
    let mut scaled = 0;
    for i in oldest_first(old) {
        if scaled >= wanted {
            break;
        }
        if sizes[i] == 0 {
            continue;
        }
        let count = sizes[i].min(wanted - scaled);
        sizes[i] -= count;
        scaled += count;
        plan.push((i, sizes[i]));
    }
    plan
}

/// `oldPodsRunning`: an old ReplicaSet still reports replicas, or one of its pods is not
/// finished.
fn old_pods_running(
    new_rs: Option<&ReplicaSet>,
    old: &[ReplicaSet],
    pod_map: &HashMap<String, Vec<Arc<Pod>>>,
) -> bool {
    if old.iter().map(rs_status_replicas).sum::<i32>() > 0 {
        return true;
    }
    let new_uid = new_rs.and_then(|rs| rs.metadata.uid.as_deref());
    pod_map
        .iter()
        .filter(|(uid, _)| Some(uid.as_str()) != new_uid)
        .flat_map(|(_, pods)| pods)
        .any(|pod| {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Failed" | "Succeeded"))
        })
}

/// `IsSaturated`: the new ReplicaSet holds all the desired replicas, all available.
fn is_saturated(d: &Deployment, rs: Option<&ReplicaSet>) -> bool {
    let Some(rs) = rs else { return false };
    let Some(desired) = int_annotation(&rs.metadata, DESIRED_REPLICAS_ANNOTATION) else {
        return false;
    };
    let replicas = deployment_replicas(d);
    rs_replicas(rs) == replicas && desired == replicas && rs_available(rs) == replicas
}

/// `FindActiveOrLatest`: the only active ReplicaSet, or the newest when none is active; None
/// when several are active.
fn find_active_or_latest<'a>(
    new_rs: Option<&'a ReplicaSet>,
    old: &'a [ReplicaSet],
) -> Option<&'a ReplicaSet> {
    if new_rs.is_none() && old.is_empty() {
        return None;
    }
    let mut newest_first: Vec<&ReplicaSet> = old.iter().collect();
    newest_first.sort_by(|a, b| by_creation(b).cmp(&by_creation(a)));
    let active: Vec<&ReplicaSet> = newest_first
        .iter()
        .copied()
        .chain(new_rs)
        .filter(|rs| rs_replicas(rs) > 0)
        .collect();
    match active.len() {
        0 => new_rs.or(newest_first.first().copied()),
        1 => Some(active[0]),
        _ => None,
    }
}

/// The resizes `scale` makes. `proportional` plans also refresh the replica annotations of
/// the sets whose size stays.
struct ScalePlan<'a> {
    sizes: Vec<(&'a ReplicaSet, i32)>,
    proportional: bool,
}

/// `scale`: a single active (or the latest) ReplicaSet takes the whole size; a saturated new
/// one sends the old ones to zero; otherwise (rolling update) the change is spread
/// proportionally over the active ReplicaSets.
fn plan_scale<'a>(
    d: &Deployment,
    new_rs: Option<&'a ReplicaSet>,
    old: &'a [ReplicaSet],
) -> ScalePlan<'a> {
    let desired = deployment_replicas(d);
    if let Some(rs) = find_active_or_latest(new_rs, old) {
        let sizes = if rs_replicas(rs) == desired {
            Vec::new()
        } else {
            vec![(rs, desired)]
        };
        return ScalePlan {
            sizes,
            proportional: false,
        };
    }
    if is_saturated(d, new_rs) {
        let sizes = old
            .iter()
            .filter(|rs| rs_replicas(rs) > 0)
            .map(|rs| (rs, 0))
            .collect();
        return ScalePlan {
            sizes,
            proportional: false,
        };
    }
    if !is_rolling_update(d) {
        return ScalePlan {
            sizes: Vec::new(),
            proportional: false,
        };
    }
    let active: Vec<&ReplicaSet> = all_of(old, new_rs)
        .into_iter()
        .filter(|rs| rs_replicas(rs) > 0)
        .collect();
    ScalePlan {
        sizes: proportional_sizes(d, active),
        proportional: true,
    }
}

/// The proportional part of `scale`: `replicas + maxSurge - current` spread over the active
/// ReplicaSets by their share (getReplicaSetFraction), biggest first (newest first among equals
/// when growing, oldest first when shrinking), the rounding leftover to the first.
fn proportional_sizes<'a>(
    d: &Deployment,
    mut active: Vec<&'a ReplicaSet>,
) -> Vec<(&'a ReplicaSet, i32)> {
    let desired = deployment_replicas(d);
    let total: i32 = active.iter().map(|rs| rs_replicas(rs)).sum();
    let allowed = if desired > 0 {
        desired.saturating_add(max_surge(d))
    } else {
        0
    };
    let to_add = allowed - total;
    if to_add > 0 {
        // ReplicaSetsBySizeNewer.
        active.sort_by(|a, b| {
            (Reverse(rs_replicas(a)), Reverse(by_creation(a)))
                .cmp(&(Reverse(rs_replicas(b)), Reverse(by_creation(b))))
        });
    } else if to_add < 0 {
        // ReplicaSetsBySizeOlder.
        active.sort_by(|a, b| {
            (Reverse(rs_replicas(a)), by_creation(a))
                .cmp(&(Reverse(rs_replicas(b)), by_creation(b)))
        });
    }
    let mut added = 0;
    let mut sizes: Vec<(&ReplicaSet, i32)> = Vec::with_capacity(active.len());
    for rs in active {
        if to_add != 0 {
            let proportion = get_proportion(rs, d, to_add, added);
            sizes.push((rs, rs_replicas(rs) + proportion));
            added += proportion;
        } else {
            sizes.push((rs, rs_replicas(rs)));
        }
    }
    if to_add != 0
        && let Some((_, first)) = sizes.first_mut()
    {
        *first = (*first + to_add - added).max(0);
    }
    sizes
}

/// `GetProportion`: this ReplicaSet's share of `to_add`, never beyond what is left of it.
fn get_proportion(rs: &ReplicaSet, d: &Deployment, to_add: i32, added: i32) -> i32 {
    if rs_replicas(rs) == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = get_replica_set_fraction(rs, d);
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

/// `getReplicaSetFraction`: the size change keeping this ReplicaSet's share of
/// `replicas + maxSurge` what it was of the size it was made for (its max-replicas annotation,
/// else the deployment's current replicas).
fn get_replica_set_fraction(rs: &ReplicaSet, d: &Deployment) -> i32 {
    let desired = deployment_replicas(d);
    if desired == 0 {
        return -rs_replicas(rs);
    }
    let deployment_size = desired.saturating_add(max_surge(d));
    let annotated = int_annotation(&rs.metadata, MAX_REPLICAS_ANNOTATION)
        .unwrap_or_else(|| d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0));
    if annotated <= 0 {
        // No base to estimate from (Kubernetes would divide by zero): no share; the
        // leftover goes to the largest ReplicaSet.
        return 0;
    }
    let size =
        (f64::from(rs_replicas(rs)) * f64::from(deployment_size) / f64::from(annotated)).round();
    size as i32 - rs_replicas(rs)
}

// ---- Status and conditions ------------------------------------------------------------------------

/// A count as the API writes it (`omitempty`: zero is absent).
fn count(n: i32) -> Option<i32> {
    (n != 0).then_some(n)
}

fn get(n: Option<i32>) -> i32 {
    n.unwrap_or(0)
}

fn condition<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
}

fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: impl Into<String>,
    now: jiff::Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.into()),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// `SetDeploymentCondition`: same status and reason keep the current condition; the same
/// status keeps its lastTransitionTime; the condition moves to the end.
fn set_condition(status: &mut DeploymentStatus, mut condition_: DeploymentCondition) {
    if let Some(current) = condition(status, &condition_.type_) {
        if current.status == condition_.status && current.reason == condition_.reason {
            return;
        }
        if current.status == condition_.status {
            condition_.last_transition_time = current.last_transition_time.clone();
        }
    }
    remove_condition(status, &condition_.type_.clone());
    status
        .conditions
        .get_or_insert_with(Vec::new)
        .push(condition_);
}

fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    let kept: Vec<DeploymentCondition> = status
        .conditions
        .take()
        .into_iter()
        .flatten()
        .filter(|c| c.type_ != type_)
        .collect();
    status.conditions = (!kept.is_empty()).then_some(kept);
}

/// `calculateStatus`: the counts from the ReplicaSets and the Available condition.
fn calculate_status(
    d: &Deployment,
    all: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    now: jiff::Timestamp,
) -> DeploymentStatus {
    let available: i32 = all.iter().map(|rs| rs_available(rs)).sum();
    let total: i32 = all.iter().map(|rs| rs_replicas(rs)).sum();
    let unavailable = (total - available).max(0);
    let old = d.status.clone().unwrap_or_default();
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation.filter(|g| *g != 0),
        replicas: count(all.iter().map(|rs| rs_status_replicas(rs)).sum()),
        updated_replicas: count(new_rs.map_or(0, rs_status_replicas)),
        ready_replicas: count(all.iter().map(|rs| rs_ready(rs)).sum()),
        available_replicas: count(available),
        unavailable_replicas: count(unavailable),
        collision_count: old.collision_count,
        conditions: old.conditions.filter(|c| !c.is_empty()),
        terminating_replicas: None,
    };
    let minimum = deployment_replicas(d) - max_unavailable(d);
    let available_condition = if available >= minimum {
        new_condition(
            AVAILABLE,
            "True",
            MINIMUM_REPLICAS_AVAILABLE,
            "Deployment has minimum availability.",
            now,
        )
    } else {
        new_condition(
            AVAILABLE,
            "False",
            MINIMUM_REPLICAS_UNAVAILABLE,
            "Deployment does not have minimum availability.",
            now,
        )
    };
    set_condition(&mut status, available_condition);
    status
}

/// `DeploymentComplete`: all replicas updated and available, no old ones, the latest
/// generation observed.
fn deployment_complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let desired = deployment_replicas(d);
    get(status.updated_replicas) == desired
        && get(status.replicas) == desired
        && get(status.available_replicas) == desired
        && status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// `DeploymentProgressing`: new pods updated, ready or available, or old ones gone, since the
/// stored status.
fn deployment_progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let old_old = get(old.replicas) - get(old.updated_replicas);
    let new_old = get(new.replicas) - get(new.updated_replicas);
    get(new.updated_replicas) > get(old.updated_replicas)
        || new_old < old_old
        || get(new.ready_replicas) > get(old.ready_replicas)
        || get(new.available_replicas) > get(old.available_replicas)
}

/// When the Progressing condition's last update plus the deadline falls (None without a
/// condition to measure from).
fn progress_deadline(d: &Deployment, condition_: &DeploymentCondition) -> Option<jiff::Timestamp> {
    let from = condition_.last_update_time.as_ref()?.0;
    from.checked_add(jiff::SignedDuration::from_secs(i64::from(
        progress_deadline_seconds(d),
    )))
    .ok()
}

/// `DeploymentTimedOut`: no progress reported within `progressDeadlineSeconds`.
fn deployment_timed_out(d: &Deployment, new: &DeploymentStatus, now: jiff::Timestamp) -> bool {
    if !has_progress_deadline(d) {
        return false;
    }
    let Some(progressing) = condition(new, PROGRESSING) else {
        return false;
    };
    match progressing.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        // A condition without a time counts from the beginning of time, as in Go.
        _ => progress_deadline(d, progressing).is_none_or(|deadline| deadline < now),
    }
}

/// `syncRolloutStatus`'s status: [`calculate_status`] plus the Progressing condition
/// (complete, progressing, or timed out) and the ReplicaSets' ReplicaFailure.
fn rollout_status(
    d: &Deployment,
    all: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    now: jiff::Timestamp,
) -> DeploymentStatus {
    let mut status = calculate_status(d, all, new_rs, now);
    if !has_progress_deadline(d) {
        remove_condition(&mut status, PROGRESSING);
    }
    let old = d.status.clone().unwrap_or_default();
    let current = condition(&old, PROGRESSING);
    let already_complete = get(status.replicas) == get(status.updated_replicas)
        && current.is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
    if has_progress_deadline(d) && !already_complete {
        let subject = match new_rs {
            Some(rs) => format!("ReplicaSet {:?}", name_of(&rs.metadata)),
            None => format!("Deployment {:?}", name_of(&d.metadata)),
        };
        if deployment_complete(d, &status) {
            set_condition(
                &mut status,
                new_condition(
                    PROGRESSING,
                    "True",
                    NEW_RS_AVAILABLE,
                    format!("{subject} has successfully progressed."),
                    now,
                ),
            );
        } else if deployment_progressing(d, &status) {
            // Progress updates lastUpdateTime even with the same reason; lastTransitionTime
            // stays while the condition stays True.
            let mut progressing = new_condition(
                PROGRESSING,
                "True",
                REPLICA_SET_UPDATED,
                format!("{subject} is progressing."),
                now,
            );
            if let Some(current) = current {
                if current.status == "True" {
                    progressing.last_transition_time = current.last_transition_time.clone();
                }
                remove_condition(&mut status, PROGRESSING);
            }
            set_condition(&mut status, progressing);
        } else if deployment_timed_out(d, &status, now) {
            set_condition(
                &mut status,
                new_condition(
                    PROGRESSING,
                    "False",
                    TIMED_OUT,
                    format!("{subject} has timed out progressing."),
                    now,
                ),
            );
        }
    }
    match replica_failure(all, new_rs) {
        Some(failure) => set_condition(&mut status, failure),
        None => remove_condition(&mut status, REPLICA_FAILURE),
    }
    status
}

/// `getReplicaFailures`: the new ReplicaSet's ReplicaFailure condition, else an old one's.
fn replica_failure(
    all: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
) -> Option<DeploymentCondition> {
    let failure_of = |rs: &ReplicaSet| {
        rs.status
            .as_ref()?
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == REPLICA_FAILURE)
            .map(|c| DeploymentCondition {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                last_transition_time: c.last_transition_time.clone(),
                last_update_time: c.last_transition_time.clone(),
            })
    };
    new_rs
        .and_then(failure_of)
        .or_else(|| all.iter().find_map(|rs| failure_of(rs)))
}

/// `requeueStuckDeployment`: when a rollout in flight should be looked at again to notice its
/// deadline passing (a second after it, as Kubernetes).
fn requeue_stuck_deployment(
    d: &Deployment,
    new: &DeploymentStatus,
    now: jiff::Timestamp,
) -> Option<Duration> {
    let old = d.status.clone().unwrap_or_default();
    let current = condition(&old, PROGRESSING)?;
    if !has_progress_deadline(d)
        || deployment_complete(d, new)
        || current.reason.as_deref() == Some(TIMED_OUT)
    {
        return None;
    }
    let deadline = progress_deadline(d, current)?;
    let after = deadline.duration_since(now);
    let after = if after.is_negative() {
        Duration::ZERO
    } else {
        after.unsigned_abs()
    };
    Some(after + Duration::from_secs(1))
}

/// `checkPausedConditions`' new status, None when nothing changes: Progressing becomes
/// Unknown/DeploymentPaused while paused and Unknown/DeploymentResumed after (a timed-out
/// deployment keeps its condition).
fn paused_status(d: &Deployment, now: jiff::Timestamp) -> Option<DeploymentStatus> {
    if !has_progress_deadline(d) {
        return None;
    }
    let mut status = d.status.clone().unwrap_or_default();
    let reason = condition(&status, PROGRESSING).and_then(|c| c.reason.clone());
    if reason.as_deref() == Some(TIMED_OUT) {
        return None;
    }
    let paused_condition_exists = reason.as_deref() == Some(PAUSED);
    let paused = is_paused(d);
    let condition_ = if paused && !paused_condition_exists {
        new_condition(PROGRESSING, "Unknown", PAUSED, "Deployment is paused", now)
    } else if !paused && paused_condition_exists {
        new_condition(
            PROGRESSING,
            "Unknown",
            RESUMED,
            "Deployment is resumed",
            now,
        )
    } else {
        return None;
    };
    set_condition(&mut status, condition_);
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DeploymentSpec, DeploymentStrategy, ReplicaSetCondition, ReplicaSetStatus,
        RollingUpdateDeployment,
    };
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn int(n: i32) -> IntOrString {
        IntOrString::Int(n)
    }

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.to_string())
    }

    fn ts(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    /// A rolling deployment as Kubernetes' tests build it (maxSurge and maxUnavailable 0
    /// unless given).
    fn deployment(
        replicas: i32,
        surge: Option<IntOrString>,
        unavailable: Option<IntOrString>,
    ) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("foo".into()),
                namespace: Some("default".into()),
                uid: Some("uid-foo".into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
                    ..Default::default()
                },
                strategy: Some(DeploymentStrategy {
                    type_: Some(ROLLING_UPDATE.into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(surge.unwrap_or(int(0))),
                        max_unavailable: Some(unavailable.unwrap_or(int(0))),
                    }),
                }),
                template: template("nginx:1"),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn rs(name: &str, replicas: i32, available: i32, created: i64) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                creation_timestamp: Some(Time(ts(created))),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                template: Some(template("nginx:1")),
                ..Default::default()
            }),
            status: Some(ReplicaSetStatus {
                replicas,
                available_replicas: Some(available),
                ready_replicas: Some(available),
                observed_generation: Some(1),
                ..Default::default()
            }),
        }
    }

    fn with_annotations(mut rs: ReplicaSet, pairs: &[(&str, &str)]) -> ReplicaSet {
        let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
        for (k, v) in pairs {
            annotations.insert(k.to_string(), v.to_string());
        }
        rs
    }

    /// Sets the replica annotations as the deployment `sized_for` left them.
    fn sized_for(mut rs: ReplicaSet, sized_for: &Deployment) -> ReplicaSet {
        let desired = deployment_replicas(sized_for);
        set_replicas_annotations(&mut rs, desired, desired + max_surge(sized_for));
        rs
    }

    fn recreate(mut d: Deployment) -> Deployment {
        d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
            type_: Some(RECREATE.into()),
            rolling_update: None,
        });
        d
    }

    // ---- Fenceposts -------------------------------------------------------------------------

    #[test]
    fn percentages_round_surge_up_and_unavailable_down() {
        assert_eq!(scaled_value(&pct("25%"), 10, true), Ok(3));
        assert_eq!(scaled_value(&pct("25%"), 10, false), Ok(2));
        assert_eq!(scaled_value(&pct("25%"), 3, true), Ok(1));
        assert_eq!(scaled_value(&pct("25%"), 3, false), Ok(0));
        assert_eq!(scaled_value(&pct("100%"), 7, false), Ok(7));
        assert_eq!(scaled_value(&int(4), 100, true), Ok(4));
        assert!(scaled_value(&pct("5"), 10, true).is_err());
        assert!(scaled_value(&pct("oops%"), 10, true).is_err());
    }

    #[test]
    fn fenceposts_as_kubernetes_resolves_them() {
        // deployment_util_test.go TestResolveFenceposts.
        let cases = [
            (Some(pct("0%")), Some(pct("0%")), 0, (0, 1)),
            (Some(pct("39%")), Some(pct("39%")), 10, (4, 3)),
            (None, Some(pct("39%")), 10, (0, 3)),
            (Some(pct("39%")), None, 10, (4, 0)),
            (None, None, 10, (0, 1)),
        ];
        for (surge, unavailable, desired, expected) in cases {
            assert_eq!(
                resolve_fenceposts(surge.as_ref(), unavailable.as_ref(), desired),
                Ok(expected),
                "surge {surge:?} unavailable {unavailable:?} desired {desired}"
            );
        }
        assert!(resolve_fenceposts(Some(&pct("oops")), None, 10).is_err());
        assert!(resolve_fenceposts(Some(&pct("55%")), Some(&pct("urg")), 10).is_err());
    }

    #[test]
    fn surge_and_unavailable_of_a_deployment() {
        let d = deployment(3, Some(pct("25%")), Some(pct("25%")));
        assert_eq!((max_surge(&d), max_unavailable(&d)), (1, 0));
        let d = deployment(10, Some(pct("25%")), Some(pct("25%")));
        assert_eq!((max_surge(&d), max_unavailable(&d)), (3, 2));
        // Both zero: one may be unavailable; never more than the replicas.
        let d = deployment(10, None, None);
        assert_eq!((max_surge(&d), max_unavailable(&d)), (0, 1));
        let d = deployment(2, Some(int(0)), Some(int(5)));
        assert_eq!(max_unavailable(&d), 2);
        // Recreate has neither.
        let d = recreate(deployment(10, None, None));
        assert_eq!((max_surge(&d), max_unavailable(&d)), (0, 0));
        // Unset rollingUpdate is the apps/v1 default of 25% each.
        let mut d = deployment(4, None, None);
        d.spec.as_mut().unwrap().strategy = None;
        assert_eq!((max_surge(&d), max_unavailable(&d)), (1, 1));
    }

    // ---- Rolling update ---------------------------------------------------------------------

    #[test]
    fn new_replica_set_scales_within_surge() {
        // rolling_test.go TestDeploymentController_reconcileNewReplicaSet:
        // (replicas, maxSurge, old, new) -> new size, None when no scaling.
        let cases = [
            (10, 0, 10, 0, None),
            (10, 2, 10, 0, Some(2)),
            (10, 2, 5, 0, Some(7)),
            (10, 2, 10, 2, None),
            (10, 2, 2, 11, Some(10)),
        ];
        for (replicas, surge, old_size, new_size, expected) in cases {
            let d = deployment(replicas, Some(int(surge)), Some(int(0)));
            let new_rs = rs("foo-v2", new_size, 0, 2);
            let old_rs = rs("foo-v1", old_size, old_size, 1);
            let all = vec![&new_rs, &old_rs];
            let target = reconcile_new_replica_set(&d, &all, &new_rs)
                .unwrap()
                .filter(|t| *t != new_size);
            assert_eq!(
                target, expected,
                "replicas {replicas} surge {surge} old {old_size} new {new_size}"
            );
        }
    }

    /// The sizes of `old` after applying a scale-down plan.
    fn apply(old: &[ReplicaSet], plan: &[(usize, i32)]) -> Vec<i32> {
        let mut sizes: Vec<i32> = old.iter().map(rs_replicas).collect();
        for (i, size) in plan {
            sizes[*i] = *size;
        }
        sizes
    }

    #[test]
    fn old_replica_sets_scale_down_keeps_minimum_available() {
        // rolling_test.go TestDeploymentController_reconcileOldReplicaSets:
        // (replicas, maxUnavailable, old size, new size, old available, new available) ->
        // old size after, None when nothing scales.
        let cases = [
            (10, 0, 10, 0, 10, 0, Some(9)),
            (10, 2, 10, 0, 10, 0, Some(8)),
            // Unhealthy old replicas are cleaned up.
            (10, 2, 10, 0, 8, 0, Some(8)),
            // One unhealthy cleaned up, one ready scaled down.
            (10, 2, 10, 0, 9, 0, Some(8)),
            // Unavailable new pods do not make old ones go.
            (10, 2, 8, 2, 8, 0, None),
        ];
        for (replicas, unavailable, old_size, new_size, old_available, new_available, expected) in
            cases
        {
            let d = deployment(replicas, Some(int(0)), Some(int(unavailable)));
            let new_rs = rs("foo-new", new_size, new_available, 2);
            let old = vec![rs("foo-old", old_size, old_available, 1)];
            let all = all_of(&old, Some(&new_rs));
            let plan = plan_old_replica_sets_scale_down(&d, &all, &old, &new_rs);
            let result = (!plan.is_empty()).then(|| apply(&old, &plan)[0]);
            assert_eq!(
                result, expected,
                "case {replicas}/{unavailable}/{old_size}/{new_size}/{old_available}"
            );
        }
    }

    #[test]
    fn unhealthy_replicas_are_cleaned_up_first_within_the_budget() {
        // rolling_test.go TestDeploymentController_cleanupUnhealthyReplicas:
        // (old size, available, max cleanup) -> cleaned up.
        for (old_size, available, max_cleanup, expected) in
            [(10, 8, 1, 1), (10, 8, 3, 2), (10, 8, 0, 0), (10, 10, 3, 0)]
        {
            let old = vec![rs("foo-v2", old_size, available, 1)];
            let mut sizes = vec![old_size];
            let plan = cleanup_unhealthy_replicas(&old, &mut sizes, max_cleanup).unwrap();
            assert_eq!(
                old_size - sizes[0],
                expected,
                "{old_size}/{available}/{max_cleanup}"
            );
            assert_eq!(plan.is_empty(), expected == 0);
        }
        // More available than the size: Kubernetes reports an error and scales nothing.
        let old = vec![rs("foo-v2", 2, 3, 1)];
        assert_eq!(cleanup_unhealthy_replicas(&old, &mut [2], 5), None);
    }

    #[test]
    fn scale_down_for_rolling_update_needs_available_pods() {
        // rolling_test.go TestDeploymentController_scaleDownOldReplicaSetsForRollingUpdate:
        // (replicas, maxUnavailable, available, old size) -> old size after, None when no
        // scaling.
        let cases = [
            (10, 0, 10, 10, Some(9)),
            (10, 2, 10, 10, Some(8)),
            (10, 2, 8, 10, None),
            (10, 2, 10, 0, None),
            (10, 2, 1, 10, None),
        ];
        for (replicas, unavailable, available, old_size, expected) in cases {
            let d = deployment(replicas, Some(int(0)), Some(int(unavailable)));
            let new_rs = rs("foo-new", 0, 0, 2);
            let old = vec![rs("foo-v2", old_size, available, 1)];
            let mut sizes = vec![old_size];
            let plan = scale_down_old_replica_sets(&d, &old, &mut sizes, &new_rs);
            let result = (!plan.is_empty()).then_some(sizes[0]);
            assert_eq!(
                result, expected,
                "case {replicas}/{unavailable}/{available}/{old_size}"
            );
        }
    }

    #[test]
    fn oldest_old_replica_sets_scale_down_first() {
        let d = deployment(6, Some(int(0)), Some(int(3)));
        let new_rs = rs("foo-v3", 0, 0, 3);
        let old = vec![rs("foo-v2", 3, 3, 2), rs("foo-v1", 3, 3, 1)];
        let plan =
            plan_old_replica_sets_scale_down(&d, &all_of(&old, Some(&new_rs)), &old, &new_rs);
        assert_eq!(plan, vec![(1, 0)]);
    }

    #[test]
    fn a_rolling_update_converges_within_its_bounds() {
        // 3 replicas, 25%/25%: surge 1, unavailable 0. Simulate every pod becoming available
        // at once and check no step goes beyond 4 pods or below 3 available.
        let d = deployment(3, Some(pct("25%")), Some(pct("25%")));
        let mut old = vec![rs("foo-v1", 3, 3, 1)];
        let mut new_rs = rs("foo-v2", 0, 0, 2);
        for _ in 0..20 {
            let all = all_of(&old, Some(&new_rs));
            if let Some(target) = reconcile_new_replica_set(&d, &all, &new_rs).unwrap()
                && target != rs_replicas(&new_rs)
            {
                new_rs = rs("foo-v2", target, target, 2);
            } else {
                let active: Vec<ReplicaSet> =
                    old.iter().filter(|r| rs_replicas(r) > 0).cloned().collect();
                let plan = plan_old_replica_sets_scale_down(
                    &d,
                    &all_of(&active, Some(&new_rs)),
                    &active,
                    &new_rs,
                );
                if plan.is_empty() {
                    break;
                }
                let sizes = apply(&active, &plan);
                old = vec![rs("foo-v1", sizes[0], sizes[0], 1)];
            }
            let total = rs_replicas(&new_rs) + rs_replicas(&old[0]);
            let available = rs_available(&new_rs) + rs_available(&old[0]);
            assert!(total <= 4, "surged past maxSurge: {total}");
            assert!(available >= 3, "dropped below minAvailable: {available}");
        }
        assert_eq!((rs_replicas(&new_rs), rs_replicas(&old[0])), (3, 0));
    }

    // ---- Proportional scaling ---------------------------------------------------------------

    /// sync_test.go TestScale: (deployment now, deployment the sets were sized for, new set,
    /// old sets) -> sizes after, in the order given.
    fn scaled(
        d: &Deployment,
        new_rs: Option<ReplicaSet>,
        old: Vec<ReplicaSet>,
    ) -> (Option<i32>, Vec<i32>) {
        let plan = plan_scale(d, new_rs.as_ref(), &old);
        let size_of = |rs: &ReplicaSet| {
            plan.sizes
                .iter()
                .find(|(p, _)| p.metadata.name == rs.metadata.name)
                .map_or(rs_replicas(rs), |(_, size)| *size)
        };
        (
            new_rs.as_ref().map(size_of),
            old.iter().map(size_of).collect(),
        )
    }

    /// A TestScale case: name, the deployment now, the deployment the sets were sized for,
    /// the new set, the old sets, the new set's size after and the old sets' sizes after.
    type ScaleCase = (
        &'static str,
        Deployment,
        Deployment,
        Option<ReplicaSet>,
        Vec<ReplicaSet>,
        Option<i32>,
        Vec<i32>,
    );

    #[test]
    fn proportional_scaling_as_kubernetes_does() {
        let was = |replicas| deployment(replicas, None, None);
        let new_ts = 3;
        let old_ts = 2;
        let older_ts = 1;
        let cases: Vec<ScaleCase> = vec![
            (
                "10 -> 12",
                was(12),
                was(10),
                Some(rs("foo-v1", 10, 10, new_ts)),
                vec![],
                Some(12),
                vec![],
            ),
            (
                "10 -> 5",
                was(5),
                was(10),
                Some(rs("foo-v1", 10, 10, new_ts)),
                vec![],
                Some(5),
                vec![],
            ),
            (
                "5 -> 10",
                was(10),
                was(5),
                Some(rs("foo-v2", 2, 2, new_ts)),
                vec![rs("foo-v1", 3, 3, old_ts)],
                Some(4),
                vec![6],
            ),
            (
                "5 -> 3",
                was(3),
                was(5),
                Some(rs("foo-v2", 2, 2, new_ts)),
                vec![rs("foo-v1", 3, 3, old_ts)],
                Some(1),
                vec![2],
            ),
            (
                "9 -> 4",
                was(4),
                was(9),
                Some(rs("foo-v2", 8, 8, new_ts)),
                vec![rs("foo-v1", 1, 1, old_ts)],
                Some(4),
                vec![0],
            ),
            (
                "7 -> 10",
                was(10),
                was(7),
                Some(rs("foo-v3", 2, 2, new_ts)),
                vec![rs("foo-v2", 3, 3, old_ts), rs("foo-v1", 2, 2, older_ts)],
                Some(3),
                vec![4, 3],
            ),
            (
                "13 -> 8",
                was(8),
                was(13),
                Some(rs("foo-v3", 2, 2, new_ts)),
                vec![rs("foo-v2", 8, 8, old_ts), rs("foo-v1", 3, 3, older_ts)],
                Some(1),
                vec![5, 2],
            ),
            (
                "leftover 3 -> 4 goes to the newest",
                was(4),
                was(3),
                Some(rs("foo-v3", 1, 1, new_ts)),
                vec![rs("foo-v2", 1, 1, old_ts), rs("foo-v1", 1, 1, older_ts)],
                Some(2),
                vec![1, 1],
            ),
            (
                "leftover 3 -> 2 comes from the oldest",
                was(2),
                was(3),
                Some(rs("foo-v3", 1, 1, new_ts)),
                vec![rs("foo-v2", 1, 1, old_ts), rs("foo-v1", 1, 1, older_ts)],
                Some(1),
                vec![1, 0],
            ),
            (
                "no new set 4 -> 5",
                was(5),
                was(4),
                None,
                vec![rs("foo-v2", 2, 2, old_ts), rs("foo-v1", 2, 2, older_ts)],
                None,
                vec![3, 2],
            ),
            (
                "6 -> 0",
                was(0),
                was(6),
                Some(rs("foo-v3", 3, 3, new_ts)),
                vec![rs("foo-v2", 2, 2, old_ts), rs("foo-v1", 1, 1, older_ts)],
                Some(0),
                vec![0, 0],
            ),
            (
                "0 -> 6 scales the new set",
                was(6),
                was(6),
                Some(rs("foo-v3", 0, 0, new_ts)),
                vec![rs("foo-v2", 0, 0, old_ts), rs("foo-v1", 0, 0, older_ts)],
                Some(6),
                vec![0, 0],
            ),
            (
                "surge pods",
                deployment(20, Some(int(2)), None),
                deployment(10, Some(int(2)), None),
                Some(rs("foo-v2", 6, 6, new_ts)),
                vec![rs("foo-v1", 6, 6, old_ts)],
                Some(11),
                vec![11],
            ),
            (
                "surge and size change",
                deployment(50, Some(int(6)), None),
                deployment(10, Some(int(3)), None),
                Some(rs("foo-v2", 5, 5, new_ts)),
                vec![rs("foo-v1", 8, 8, old_ts)],
                Some(22),
                vec![34],
            ),
            (
                "saturated but broken new set leaves old pods",
                deployment(2, Some(int(1)), Some(int(1))),
                deployment(2, Some(int(1)), Some(int(1))),
                Some(rs("foo-v2", 2, 0, new_ts)),
                vec![rs("foo-v1", 1, 1, old_ts)],
                Some(2),
                vec![1],
            ),
        ];
        for (name, d, before, new_rs, old, expected_new, expected_old) in cases {
            let new_rs = new_rs.map(|r| sized_for(r, &before));
            let old = old.into_iter().map(|r| sized_for(r, &before)).collect();
            assert_eq!(
                scaled(&d, new_rs, old),
                (expected_new, expected_old),
                "{name}"
            );
        }
    }

    #[test]
    fn a_saturated_new_replica_set_scales_old_ones_to_zero() {
        let d = deployment(3, Some(int(1)), None);
        let new_rs = sized_for(rs("foo-v2", 3, 3, 2), &d);
        let old = vec![sized_for(rs("foo-v1", 1, 1, 1), &d)];
        assert_eq!(scaled(&d, Some(new_rs), old), (Some(3), vec![0]));
    }

    #[test]
    fn proportional_scaling_refreshes_annotations_of_unchanged_sets() {
        let d = deployment(5, None, None);
        let before = deployment(5, None, None);
        let new_rs = with_annotations(
            sized_for(rs("foo-v3", 2, 2, 3), &before),
            &[(DESIRED_REPLICAS_ANNOTATION, "3")],
        );
        let old = vec![
            sized_for(rs("foo-v2", 2, 2, 2), &before),
            sized_for(rs("foo-v1", 1, 1, 1), &before),
        ];
        let plan = plan_scale(&d, Some(&new_rs), &old);
        assert!(plan.proportional);
        assert_eq!(plan.sizes.len(), 3, "every active set is visited");
    }

    #[test]
    fn scaling_events_are_told_from_the_desired_annotation() {
        let d = deployment(5, None, None);
        let sized = sized_for(rs("foo-v1", 3, 3, 1), &deployment(3, None, None));
        assert_eq!(
            int_annotation(&sized.metadata, DESIRED_REPLICAS_ANNOTATION),
            Some(3)
        );
        assert_ne!(
            int_annotation(&sized.metadata, DESIRED_REPLICAS_ANNOTATION),
            Some(deployment_replicas(&d))
        );
        let broken = with_annotations(
            rs("foo-v1", 3, 3, 1),
            &[(DESIRED_REPLICAS_ANNOTATION, "three")],
        );
        assert_eq!(
            int_annotation(&broken.metadata, DESIRED_REPLICAS_ANNOTATION),
            None
        );
    }

    // ---- Template hash ----------------------------------------------------------------------

    #[test]
    fn template_hash_is_stable_and_safe_encoded() {
        let a = compute_hash(&template("nginx:1"), None);
        assert_eq!(a, compute_hash(&template("nginx:1"), None));
        // Pinned: the hash must not change between releases (it names ReplicaSets).
        assert_eq!(a, "75f67448f4");
        assert!(a.bytes().all(|b| SAFE_ALPHABET.contains(&b)), "{a}");
        assert!(!a.is_empty() && a.len() <= 10);
        assert_ne!(a, compute_hash(&template("nginx:2"), None));
        let with_count = compute_hash(&template("nginx:1"), Some(1));
        assert_ne!(a, with_count);
        assert_ne!(with_count, compute_hash(&template("nginx:1"), Some(2)));
        assert!(with_count.bytes().all(|b| SAFE_ALPHABET.contains(&b)));
    }

    #[test]
    fn template_hash_ignores_the_hash_label_and_empty_values() {
        let plain = template("nginx:1");
        let mut labelled = plain.clone();
        labelled
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(POD_TEMPLATE_HASH_LABEL.into(), "abc".into());
        assert_eq!(compute_hash(&plain, None), compute_hash(&labelled, None));
        assert!(equal_ignore_hash(&plain, &labelled));
        let mut with_empties = plain.clone();
        with_empties.metadata.as_mut().unwrap().annotations = Some(BTreeMap::new());
        with_empties.spec.as_mut().unwrap().volumes = Some(vec![]);
        assert_eq!(
            compute_hash(&plain, None),
            compute_hash(&with_empties, None)
        );
        assert!(equal_ignore_hash(&plain, &with_empties));
        let mut restarted = plain.clone();
        restarted.metadata.as_mut().unwrap().annotations = Some(BTreeMap::from([(
            "kubectl.kubernetes.io/restartedAt".to_string(),
            "2024-01-01T00:00:00Z".to_string(),
        )]));
        assert!(!equal_ignore_hash(&plain, &restarted));
        assert_ne!(compute_hash(&plain, None), compute_hash(&restarted, None));
    }

    #[test]
    fn safe_encoding_matches_kubernetes() {
        // rand.SafeEncodeString maps each byte modulo the 27-letter alphabet.
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
        assert_eq!(fnv32a(b"", FNV32_OFFSET), 2_166_136_261);
        assert_eq!(fnv32a(b"a", FNV32_OFFSET), 0xe40c292c);
    }

    #[test]
    fn new_replica_set_carries_the_hash_everywhere() {
        let d = deployment(3, None, None);
        let hash = compute_hash(&d.spec.as_ref().unwrap().template, None);
        let new_rs = new_replica_set(&d, &hash);
        assert_eq!(
            new_rs.metadata.name.as_deref(),
            Some(format!("foo-{hash}").as_str())
        );
        let spec = new_rs.spec.as_ref().unwrap();
        assert_eq!(
            spec.selector.match_labels.as_ref().unwrap()[POD_TEMPLATE_HASH_LABEL],
            hash
        );
        assert_eq!(spec.selector.match_labels.as_ref().unwrap()["app"], "web");
        let template_labels = spec
            .template
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert_eq!(template_labels[POD_TEMPLATE_HASH_LABEL], hash);
        assert_eq!(
            new_rs.metadata.labels.as_ref().unwrap()[POD_TEMPLATE_HASH_LABEL],
            hash
        );
        let owner = &new_rs.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                owner.api_version.as_str(),
                owner.kind.as_str(),
                owner.uid.as_str()
            ),
            ("apps/v1", "Deployment", "uid-foo")
        );
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
        // The created set is the deployment's new set.
        let list = vec![rs("foo-old", 1, 1, 1), new_rs.clone()];
        let mut changed = d.clone();
        changed.spec.as_mut().unwrap().template = template("nginx:2");
        assert_eq!(find_new_replica_set(&changed, &list), None);
        let mut list = list;
        list[0].spec.as_mut().unwrap().template = Some(template("nginx:0"));
        assert_eq!(find_new_replica_set(&d, &list), Some(1));
    }

    // ---- Revisions --------------------------------------------------------------------------

    #[test]
    fn a_new_replica_set_gets_the_next_revision_and_the_deployment_annotations() {
        let mut d = deployment(3, Some(int(1)), None);
        d.metadata.annotations = Some(BTreeMap::from([
            (
                "kubernetes.io/change-cause".to_string(),
                "kubectl set image".to_string(),
            ),
            (LAST_APPLIED_ANNOTATION.to_string(), "{}".to_string()),
            (REVISION_ANNOTATION.to_string(), "7".to_string()),
            ("team".to_string(), "a".to_string()),
        ]));
        let old = vec![
            with_annotations(rs("foo-a", 0, 0, 1), &[(REVISION_ANNOTATION, "2")]),
            with_annotations(rs("foo-b", 0, 0, 2), &[(REVISION_ANNOTATION, "x")]),
            rs("foo-c", 0, 0, 3),
        ];
        assert_eq!(max_revision(&old), 2);
        let mut new_rs = new_replica_set(&d, "h");
        assert!(set_new_replica_set_annotations(&d, &mut new_rs, "3", false));
        let annotations = new_rs.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[REVISION_ANNOTATION], "3");
        assert_eq!(
            annotations["kubernetes.io/change-cause"],
            "kubectl set image"
        );
        assert_eq!(annotations["team"], "a");
        assert!(!annotations.contains_key(LAST_APPLIED_ANNOTATION));
        assert!(!annotations.contains_key(REVISION_HISTORY_ANNOTATION));
        assert_eq!(annotations[DESIRED_REPLICAS_ANNOTATION], "3");
        assert_eq!(annotations[MAX_REPLICAS_ANNOTATION], "4");
        // Synced again: nothing changes.
        assert!(!set_new_replica_set_annotations(&d, &mut new_rs, "3", true));
        // A lower revision never replaces a higher one.
        assert!(!set_new_replica_set_annotations(&d, &mut new_rs, "2", true));
        assert_eq!(
            new_rs.metadata.annotations.as_ref().unwrap()[REVISION_ANNOTATION],
            "3"
        );
    }

    #[test]
    fn rolling_back_to_an_old_replica_set_moves_its_revision_into_the_history() {
        let d = deployment(3, None, None);
        let mut back = with_annotations(rs("foo-a", 0, 0, 1), &[(REVISION_ANNOTATION, "1")]);
        assert!(set_new_replica_set_annotations(&d, &mut back, "3", true));
        let annotations = back.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[REVISION_ANNOTATION], "3");
        assert_eq!(annotations[REVISION_HISTORY_ANNOTATION], "1");
        // Existing sets do not get the replica annotations from this path.
        assert!(!annotations.contains_key(DESIRED_REPLICAS_ANNOTATION));
        assert!(set_new_replica_set_annotations(&d, &mut back, "5", true));
        assert_eq!(
            back.metadata.annotations.as_ref().unwrap()[REVISION_HISTORY_ANNOTATION],
            "1,3"
        );
    }

    #[test]
    fn revision_history_stays_within_its_length_limit() {
        let long: Vec<String> = (0..500).map(|i| i.to_string()).collect();
        let history = long.join(",");
        assert!(history.len() < MAX_REVISION_HISTORY_CHARS);
        let updated = append_revision_history(&history, "12345").unwrap();
        assert!(updated.len() <= MAX_REVISION_HISTORY_CHARS);
        assert!(updated.ends_with(",12345"));
        let huge = "9".repeat(MAX_REVISION_HISTORY_CHARS + 10);
        assert_eq!(append_revision_history(&huge, "1").as_deref(), Some("1"));
        assert_eq!(append_revision_history("", "4").as_deref(), Some("4"));
    }

    // ---- History cleanup --------------------------------------------------------------------

    #[test]
    fn history_cleanup_deletes_the_oldest_scaled_down_sets_beyond_the_limit() {
        // sync_test.go TestDeploymentController_cleanupDeployment.
        let zeroed = |name: &str, spec: i32, status: i32, revision: &str| {
            let mut r = with_annotations(rs(name, spec, 0, 1), &[(REVISION_ANNOTATION, revision)]);
            r.status.as_mut().unwrap().replicas = status;
            r
        };
        let limit = |n: i32| {
            let mut d = deployment(1, None, None);
            d.spec.as_mut().unwrap().revision_history_limit = Some(n);
            d
        };
        let names = |v: Vec<&ReplicaSet>| {
            v.into_iter()
                .map(|r| name_of(&r.metadata).to_string())
                .collect::<Vec<_>>()
        };

        let old = vec![
            zeroed("foo-3", 0, 0, "3"),
            zeroed("foo-1", 0, 0, "1"),
            zeroed("foo-2", 0, 0, "2"),
        ];
        assert_eq!(
            names(history_to_delete(&limit(1), &old)),
            ["foo-1", "foo-2"]
        );

        let old = vec![
            zeroed("foo-1", 0, 0, "1"),
            zeroed("foo-2", 0, 1, "2"),
            zeroed("foo-3", 1, 0, "3"),
            zeroed("foo-4", 1, 1, "4"),
        ];
        assert_eq!(names(history_to_delete(&limit(0), &old)), ["foo-1"]);

        let old = vec![zeroed("foo-1", 1, 1, "1"), zeroed("foo-2", 1, 1, "2")];
        assert!(history_to_delete(&limit(0), &old).is_empty());

        let mut deleting = zeroed("foo-1", 0, 0, "1");
        deleting.metadata.deletion_timestamp = Some(Time(ts(0)));
        assert!(history_to_delete(&limit(0), &[deleting]).is_empty());

        let old = vec![
            zeroed("foo-1", 0, 0, "1"),
            zeroed("foo-2", 0, 0, "2"),
            zeroed("foo-3", 0, 0, "3"),
        ];
        assert!(history_to_delete(&limit(i32::MAX), &old).is_empty());

        // Not yet observed by the ReplicaSet controller: kept.
        let mut unobserved = zeroed("foo-1", 0, 0, "1");
        unobserved.metadata.generation = Some(2);
        assert!(history_to_delete(&limit(0), &[unobserved]).is_empty());

        // The default limit is 10.
        let mut d = deployment(1, None, None);
        d.spec.as_mut().unwrap().revision_history_limit = None;
        let old: Vec<ReplicaSet> = (1..=12)
            .map(|i| zeroed(&format!("foo-{i}"), 0, 0, &i.to_string()))
            .collect();
        assert_eq!(names(history_to_delete(&d, &old)), ["foo-1", "foo-2"]);
    }

    // ---- Recreate ---------------------------------------------------------------------------

    #[test]
    fn recreate_waits_for_old_pods() {
        let new_rs = rs("foo-v2", 0, 0, 2);
        let mut old = vec![rs("foo-v1", 0, 0, 1)];
        let pod = |phase: &str| {
            Arc::new(Pod {
                status: Some(k8s_openapi::api::core::v1::PodStatus {
                    phase: Some(phase.into()),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let mut pods = HashMap::from([
            ("uid-foo-v1".to_string(), vec![pod("Running")]),
            ("uid-foo-v2".to_string(), vec![]),
        ]);
        assert!(old_pods_running(Some(&new_rs), &old, &pods));
        pods.insert("uid-foo-v1".into(), vec![pod("Succeeded"), pod("Failed")]);
        assert!(!old_pods_running(Some(&new_rs), &old, &pods));
        pods.insert("uid-foo-v2".into(), vec![pod("Running")]);
        assert!(
            !old_pods_running(Some(&new_rs), &old, &pods),
            "new pods do not count"
        );
        old[0].status.as_mut().unwrap().replicas = 1;
        assert!(
            old_pods_running(Some(&new_rs), &old, &pods),
            "the old set still reports replicas"
        );
        let d = recreate(deployment(4, None, None));
        assert_eq!(new_rs_new_replicas(&d, &[&new_rs], &new_rs).unwrap(), 4);
    }

    // ---- Status and conditions --------------------------------------------------------------

    fn progressing(status: &DeploymentStatus) -> (String, String) {
        let c = condition(status, PROGRESSING).expect("a Progressing condition");
        (c.status.clone(), c.reason.clone().unwrap_or_default())
    }

    #[test]
    fn status_counts_come_from_the_replica_sets() {
        let d = deployment(3, Some(int(1)), Some(int(0)));
        let new_rs = rs("foo-v2", 2, 1, 2);
        let old = vec![rs("foo-v1", 2, 2, 1)];
        let status = calculate_status(&d, &all_of(&old, Some(&new_rs)), Some(&new_rs), ts(0));
        assert_eq!(status.replicas, Some(4));
        assert_eq!(status.updated_replicas, Some(2));
        assert_eq!(status.ready_replicas, Some(3));
        assert_eq!(status.available_replicas, Some(3));
        assert_eq!(status.unavailable_replicas, Some(1));
        assert_eq!(status.observed_generation, Some(1));
        let available = condition(&status, AVAILABLE).unwrap();
        assert_eq!(
            (available.status.as_str(), available.reason.as_deref()),
            ("True", Some(MINIMUM_REPLICAS_AVAILABLE))
        );
        // Zeroes are left out, as the API's omitempty does.
        let empty = calculate_status(&d, &[], None, ts(0));
        assert_eq!((empty.replicas, empty.unavailable_replicas), (None, None));
        let available = condition(&empty, AVAILABLE).unwrap();
        assert_eq!(
            (available.status.as_str(), available.reason.as_deref()),
            ("False", Some(MINIMUM_REPLICAS_UNAVAILABLE))
        );
    }

    #[test]
    fn conditions_keep_transition_times_while_their_status_holds() {
        let mut status = DeploymentStatus::default();
        set_condition(
            &mut status,
            new_condition(AVAILABLE, "False", MINIMUM_REPLICAS_UNAVAILABLE, "m", ts(0)),
        );
        set_condition(
            &mut status,
            new_condition(PROGRESSING, "True", NEW_RS_CREATED, "m", ts(1)),
        );
        // Same status and reason: unchanged.
        set_condition(
            &mut status,
            new_condition(PROGRESSING, "True", NEW_RS_CREATED, "other", ts(5)),
        );
        let p = condition(&status, PROGRESSING).unwrap();
        assert_eq!(
            (p.last_update_time.clone(), p.message.as_deref()),
            (Some(Time(ts(1))), Some("m"))
        );
        // Same status, new reason: lastTransitionTime kept, condition moved last.
        set_condition(
            &mut status,
            new_condition(PROGRESSING, "True", REPLICA_SET_UPDATED, "m", ts(10)),
        );
        let p = condition(&status, PROGRESSING).unwrap();
        assert_eq!(p.last_transition_time, Some(Time(ts(1))));
        assert_eq!(p.last_update_time, Some(Time(ts(10))));
        // New status: a transition.
        set_condition(
            &mut status,
            new_condition(AVAILABLE, "True", MINIMUM_REPLICAS_AVAILABLE, "m", ts(20)),
        );
        let a = condition(&status, AVAILABLE).unwrap();
        assert_eq!(a.last_transition_time, Some(Time(ts(20))));
        let order: Vec<&str> = status
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(order, [PROGRESSING, AVAILABLE]);
        remove_condition(&mut status, PROGRESSING);
        remove_condition(&mut status, AVAILABLE);
        assert_eq!(status.conditions, None);
    }

    /// A deployment whose stored status is what the controller last wrote.
    fn with_status(mut d: Deployment, status: DeploymentStatus) -> Deployment {
        d.status = Some(status);
        d
    }

    #[test]
    fn rollout_progress_completion_and_deadline() {
        let d = deployment(3, Some(int(1)), Some(int(0)));
        // Created: the new set has nothing yet.
        let mut created = DeploymentStatus::default();
        set_condition(
            &mut created,
            new_condition(
                PROGRESSING,
                "True",
                NEW_RS_CREATED,
                "Created new replica set \"foo-h\"",
                ts(0),
            ),
        );
        let d = with_status(d, created);
        let new_rs = rs("foo-h", 3, 0, 1);
        let new_rs = {
            let mut r = new_rs;
            r.status.as_mut().unwrap().replicas = 0;
            r
        };
        let status = rollout_status(&d, &[&new_rs], Some(&new_rs), ts(10));
        assert_eq!(progressing(&status), ("True".into(), NEW_RS_CREATED.into()));
        // Nothing moves: come back a second after the deadline.
        let d = with_status(d, status);
        assert_eq!(
            requeue_stuck_deployment(&d, &d.status.clone().unwrap(), ts(10)),
            Some(Duration::from_secs(591))
        );

        // Pods appear: progressing, lastUpdateTime moves, lastTransitionTime stays.
        let mut moving = rs("foo-h", 3, 1, 1);
        moving.status.as_mut().unwrap().replicas = 2;
        let status = rollout_status(&d, &[&moving], Some(&moving), ts(100));
        assert_eq!(
            progressing(&status),
            ("True".into(), REPLICA_SET_UPDATED.into())
        );
        let p = condition(&status, PROGRESSING).unwrap();
        assert_eq!(
            (p.last_transition_time.clone(), p.last_update_time.clone()),
            (Some(Time(ts(0))), Some(Time(ts(100))))
        );
        assert_eq!(
            p.message.as_deref(),
            Some("ReplicaSet \"foo-h\" is progressing.")
        );
        let d = with_status(d, status);

        // No progress for longer than the deadline: timed out.
        let status = rollout_status(&d, &[&moving], Some(&moving), ts(100 + 601));
        assert_eq!(progressing(&status), ("False".into(), TIMED_OUT.into()));
        assert_eq!(
            condition(&status, PROGRESSING).unwrap().message.as_deref(),
            Some("ReplicaSet \"foo-h\" has timed out progressing.")
        );
        let timed_out = with_status(d.clone(), status);
        assert_eq!(
            requeue_stuck_deployment(&timed_out, &timed_out.status.clone().unwrap(), ts(800)),
            None
        );

        // All available: complete, and it stays complete.
        let done = rs("foo-h", 3, 3, 1);
        let status = rollout_status(&d, &[&done], Some(&done), ts(200));
        assert_eq!(
            progressing(&status),
            ("True".into(), NEW_RS_AVAILABLE.into())
        );
        assert!(deployment_complete(&d, &status));
        let d = with_status(d, status.clone());
        assert_eq!(rollout_status(&d, &[&done], Some(&done), ts(5000)), status);
        assert_eq!(requeue_stuck_deployment(&d, &status, ts(5000)), None);
    }

    #[test]
    fn a_newer_generation_is_not_complete_until_observed() {
        let mut d = deployment(1, None, None);
        let status = DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(1),
            updated_replicas: Some(1),
            available_replicas: Some(1),
            ..Default::default()
        };
        assert!(deployment_complete(&d, &status));
        d.metadata.generation = Some(2);
        assert!(!deployment_complete(&d, &status));
    }

    #[test]
    fn pausing_and_resuming_mark_the_progressing_condition() {
        let mut d = deployment(3, None, None);
        d.spec.as_mut().unwrap().paused = Some(true);
        let paused = paused_status(&d, ts(0)).expect("a paused condition");
        assert_eq!(progressing(&paused), ("Unknown".into(), PAUSED.into()));
        let mut d = with_status(d, paused);
        assert_eq!(paused_status(&d, ts(5)), None, "already marked");
        d.spec.as_mut().unwrap().paused = Some(false);
        let resumed = paused_status(&d, ts(10)).expect("a resumed condition");
        assert_eq!(progressing(&resumed), ("Unknown".into(), RESUMED.into()));
        // The deadline counts from the resume.
        let c = condition(&resumed, PROGRESSING).unwrap();
        assert_eq!(c.last_update_time, Some(Time(ts(10))));
        assert_eq!(c.last_transition_time, Some(Time(ts(0))));
        // A timed-out deployment keeps its condition.
        let mut timed_out = DeploymentStatus::default();
        set_condition(
            &mut timed_out,
            new_condition(PROGRESSING, "False", TIMED_OUT, "m", ts(0)),
        );
        let mut d = with_status(deployment(3, None, None), timed_out);
        d.spec.as_mut().unwrap().paused = Some(true);
        assert_eq!(paused_status(&d, ts(1)), None);
        // Without a deadline there is no Progressing condition to keep.
        d.spec.as_mut().unwrap().progress_deadline_seconds = Some(i32::MAX);
        d.status = None;
        assert_eq!(paused_status(&d, ts(1)), None);
        let status = rollout_status(&d, &[], None, ts(1));
        assert!(condition(&status, PROGRESSING).is_none());
    }

    #[test]
    fn replica_failures_are_reported_on_the_deployment() {
        let d = deployment(1, None, None);
        let mut failing = rs("foo-v2", 1, 0, 2);
        failing.status.as_mut().unwrap().conditions = Some(vec![ReplicaSetCondition {
            type_: REPLICA_FAILURE.into(),
            status: "True".into(),
            reason: Some("FailedCreate".into()),
            message: Some("quota exceeded".into()),
            last_transition_time: Some(Time(ts(3))),
        }]);
        let status = rollout_status(&d, &[&failing], Some(&failing), ts(5));
        let failure = condition(&status, REPLICA_FAILURE).unwrap();
        assert_eq!(failure.message.as_deref(), Some("quota exceeded"));
        assert_eq!(failure.last_update_time, Some(Time(ts(3))));
        let d = with_status(d, status);
        let healthy = rs("foo-v2", 1, 1, 2);
        let status = rollout_status(&d, &[&healthy], Some(&healthy), ts(6));
        assert!(condition(&status, REPLICA_FAILURE).is_none());
    }

    #[test]
    fn active_or_latest_replica_set() {
        let old = vec![rs("foo-v1", 0, 0, 1), rs("foo-v2", 0, 0, 2)];
        let new_rs = rs("foo-v3", 0, 0, 3);
        let name = |r: Option<&ReplicaSet>| r.map(|r| name_of(&r.metadata).to_string());
        assert_eq!(
            name(find_active_or_latest(Some(&new_rs), &old)),
            Some("foo-v3".into())
        );
        assert_eq!(
            name(find_active_or_latest(None, &old)),
            Some("foo-v2".into())
        );
        let old = vec![rs("foo-v1", 2, 2, 1), rs("foo-v2", 0, 0, 2)];
        assert_eq!(
            name(find_active_or_latest(Some(&new_rs), &old)),
            Some("foo-v1".into())
        );
        let new_rs = rs("foo-v3", 1, 0, 3);
        assert_eq!(name(find_active_or_latest(Some(&new_rs), &old)), None);
        assert_eq!(name(find_active_or_latest(None, &[])), None);
    }
}

/// The controller driven through the API layer and the informers, with the ReplicaSet
/// controller's part (status) played by the test: every ReplicaSet's pods are instantly
/// available when [`settle`] runs.
#[cfg(test)]
mod through_the_api {
    use super::*;
    use crate::apiserver::allocator::ServiceAllocator;
    use crate::apiserver::registry;
    use crate::apiserver::storage::{Api, ListParams};
    use crate::controllers::ControllerConfig;
    use crate::store::embedded::EmbeddedStore;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, ReplicaSetStatus};
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    struct World {
        ctx: Arc<Context>,
        _tasks: JoinSet<()>,
        _dir: tempfile::TempDir,
    }

    async fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let api = Api::new(
            Arc::new(store),
            ServiceAllocator::new("10.96.0.0/12".parse().unwrap()),
        );
        api.bootstrap().await.unwrap();
        let ctx = Context::new(api, ControllerConfig::new("10.244.0.0/16".parse().unwrap()));
        let mut tasks = JoinSet::new();
        start(&ctx, &mut tasks);
        ctx.run_informers(&mut tasks);
        World {
            ctx,
            _tasks: tasks,
            _dir: dir,
        }
    }

    fn pod_template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    fn web(replicas: i32, strategy: &str) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
                    ..Default::default()
                },
                strategy: Some(DeploymentStrategy {
                    type_: Some(strategy.into()),
                    rolling_update: None,
                }),
                template: pod_template("nginx:1"),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// Plays the ReplicaSet controller: every ReplicaSet's pods exist and are available.
    async fn settle(ctx: &Context) {
        for rs in ctx.replica_sets.list() {
            let want = rs_replicas(&rs);
            let status = rs.status.clone().unwrap_or_default();
            if status.replicas == want
                && status.available_replicas == Some(want)
                && status.observed_generation == rs.metadata.generation
            {
                continue;
            }
            let _ = ctx
                .client
                .update::<ReplicaSet, _>(
                    rs.metadata.namespace.as_deref(),
                    name_of(&rs.metadata),
                    Some("status"),
                    |current| {
                        let want = rs_replicas(current);
                        current.status = Some(ReplicaSetStatus {
                            replicas: want,
                            ready_replicas: Some(want),
                            available_replicas: Some(want),
                            fully_labeled_replicas: Some(want),
                            observed_generation: current.metadata.generation,
                            ..Default::default()
                        });
                        true
                    },
                )
                .await;
        }
    }

    /// Polls (settling the ReplicaSets when asked) until `done` holds, for at most 10 s.
    async fn until(ctx: &Context, settle_sets: bool, what: &str, done: impl Fn(&Context) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if settle_sets {
                settle(ctx).await;
            }
            if done(ctx) {
                return;
            }
            if std::time::Instant::now() > deadline {
                let d = ctx.deployments.get(Some("default"), "web");
                let sets: Vec<_> = owned(ctx)
                    .iter()
                    .map(|rs| {
                        (
                            name_of(&rs.metadata).to_string(),
                            rs_replicas(rs),
                            rs.metadata.annotations.clone(),
                        )
                    })
                    .collect();
                panic!("timed out waiting for {what}: deployment {d:#?}, replica sets {sets:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn deployment_now(ctx: &Context) -> Arc<Deployment> {
        ctx.deployments
            .get(Some("default"), "web")
            .expect("the deployment")
    }

    /// The deployment's ReplicaSets, by revision.
    fn owned(ctx: &Context) -> Vec<Arc<ReplicaSet>> {
        let mut sets: Vec<Arc<ReplicaSet>> = ctx
            .replica_sets
            .list_namespace("default")
            .into_iter()
            .filter(|rs| {
                controller_of(&rs.metadata)
                    .is_some_and(|r| r.kind == "Deployment" && r.name == "web")
            })
            .collect();
        sets.sort_by_key(|rs| revision(rs).unwrap_or(0));
        sets
    }

    /// What `kubectl rollout status` checks.
    fn rolled_out(ctx: &Context) -> bool {
        let Some(d) = ctx.deployments.get(Some("default"), "web") else {
            return false;
        };
        let status = d.status.clone().unwrap_or_default();
        let replicas = deployment_replicas(&d);
        status.observed_generation >= d.metadata.generation
            && get(status.updated_replicas) == replicas
            && get(status.replicas) == get(status.updated_replicas)
            && get(status.available_replicas) == get(status.updated_replicas)
            && condition(&status, PROGRESSING).and_then(|c| c.reason.as_deref())
                == Some(NEW_RS_AVAILABLE)
    }

    fn sizes(ctx: &Context) -> Vec<(String, i32)> {
        owned(ctx)
            .iter()
            .map(|rs| (revision(rs).unwrap_or(0).to_string(), rs_replicas(rs)))
            .collect()
    }

    async fn change(ctx: &Context, f: impl Fn(&mut Deployment) + Send + Sync) {
        ctx.client
            .update::<Deployment, _>(Some("default"), "web", None, |d| {
                f(d);
                true
            })
            .await
            .unwrap();
    }

    async fn event_messages(ctx: &Context) -> Vec<String> {
        let events = registry::by_kind("Event").unwrap();
        let (items, _, _) = ctx
            .client
            .api
            .list_items(events, Some("default"), &ListParams::default())
            .await
            .unwrap();
        items
            .iter()
            .filter(|e| e["reason"] == "ScalingReplicaSet")
            .filter_map(|e| e["message"].as_str().map(str::to_string))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rolling_update_rollback_and_history() {
        let w = world().await;
        let ctx = &w.ctx;
        ctx.client.create(&web(3, ROLLING_UPDATE)).await.unwrap();

        // The first ReplicaSet gets the whole size at once.
        until(ctx, false, "the first replica set", |ctx| {
            sizes(ctx) == [("1".to_string(), 3)]
        })
        .await;
        let first = owned(ctx)[0].clone();
        // The hash of the template as stored (defaulted by the API server).
        let stored: Deployment = ctx.client.get(Some("default"), "web").await.unwrap();
        let hash = compute_hash(&stored.spec.unwrap().template, None);
        assert_eq!(name_of(&first.metadata), format!("web-{hash}"));
        let annotations = first.metadata.annotations.clone().unwrap();
        assert_eq!(annotations[DESIRED_REPLICAS_ANNOTATION], "3");
        assert_eq!(annotations[MAX_REPLICAS_ANNOTATION], "4");
        assert_eq!(
            first.metadata.labels.as_ref().unwrap()[POD_TEMPLATE_HASH_LABEL],
            hash
        );
        until(ctx, true, "the first rollout", rolled_out).await;
        let d = deployment_now(ctx);
        assert_eq!(
            annotation(&d.metadata, REVISION_ANNOTATION).as_deref(),
            Some("1")
        );
        let status = d.status.clone().unwrap();
        assert_eq!(
            condition(&status, AVAILABLE).map(|c| (c.status.as_str(), c.reason.as_deref())),
            Some(("True", Some(MINIMUM_REPLICAS_AVAILABLE)))
        );
        assert_eq!(status.unavailable_replicas, None);

        // A new image: one surge pod first (25% of 3 rounds up to 1), none unavailable.
        change(ctx, |d| {
            d.spec.as_mut().unwrap().template = pod_template("nginx:2");
            d.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert("kubernetes.io/change-cause".into(), "image nginx:2".into());
        })
        .await;
        until(ctx, false, "the surge step", |ctx| {
            sizes(ctx) == [("1".to_string(), 3), ("2".to_string(), 1)]
        })
        .await;
        until(ctx, true, "the second rollout", |ctx| {
            rolled_out(ctx) && sizes(ctx) == [("1".to_string(), 0), ("2".to_string(), 3)]
        })
        .await;
        let second = owned(ctx)[1].clone();
        assert_eq!(
            annotation(&second.metadata, "kubernetes.io/change-cause").as_deref(),
            Some("image nginx:2")
        );
        assert_eq!(
            annotation(&deployment_now(ctx).metadata, REVISION_ANNOTATION).as_deref(),
            Some("2")
        );

        // `kubectl rollout undo`: the old template comes back; its ReplicaSet becomes revision 3.
        let mut previous = rs_template(&first);
        previous
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .remove(POD_TEMPLATE_HASH_LABEL);
        change(ctx, |d| {
            d.spec.as_mut().unwrap().template = previous.clone()
        })
        .await;
        until(ctx, true, "the rollback", |ctx| {
            rolled_out(ctx) && sizes(ctx) == [("2".to_string(), 0), ("3".to_string(), 3)]
        })
        .await;
        let back = owned(ctx)[1].clone();
        assert_eq!(
            back.metadata.uid, first.metadata.uid,
            "the old replica set is reused"
        );
        assert_eq!(
            annotation(&back.metadata, REVISION_HISTORY_ANNOTATION).as_deref(),
            Some("1")
        );
        assert_eq!(
            annotation(&deployment_now(ctx).metadata, REVISION_ANNOTATION).as_deref(),
            Some("3")
        );

        // No history kept: the scaled-down ReplicaSet goes.
        change(ctx, |d| {
            d.spec.as_mut().unwrap().revision_history_limit = Some(0)
        })
        .await;
        until(ctx, true, "the history cleanup", |ctx| {
            sizes(ctx) == [("3".to_string(), 3)]
        })
        .await;

        let messages = event_messages(ctx).await;
        let second_name = name_of(&second.metadata);
        for expected in [
            format!("Scaled up replica set web-{hash} from 0 to 3"),
            format!("Scaled up replica set {second_name} from 0 to 1"),
            format!("Scaled down replica set web-{hash} from 3 to 2"),
        ] {
            assert!(
                messages.contains(&expected),
                "no event {expected:?} in {messages:#?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn paused_deployments_scale_but_do_not_roll_out() {
        let w = world().await;
        let ctx = &w.ctx;
        ctx.client.create(&web(2, ROLLING_UPDATE)).await.unwrap();
        until(ctx, true, "the first rollout", rolled_out).await;

        change(ctx, |d| d.spec.as_mut().unwrap().paused = Some(true)).await;
        until(ctx, false, "the paused condition", |ctx| {
            let status = deployment_now(ctx).status.clone().unwrap_or_default();
            condition(&status, PROGRESSING).map(|c| (c.status.clone(), c.reason.clone()))
                == Some(("Unknown".into(), Some(PAUSED.into())))
        })
        .await;
        change(ctx, |d| {
            let spec = d.spec.as_mut().unwrap();
            spec.template = pod_template("nginx:2");
            spec.replicas = Some(4);
        })
        .await;
        until(ctx, true, "the paused scale-up", |ctx| {
            sizes(ctx) == [("1".to_string(), 4)]
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(owned(ctx).len(), 1, "no new replica set while paused");

        change(ctx, |d| d.spec.as_mut().unwrap().paused = Some(false)).await;
        until(ctx, true, "the resumed rollout", |ctx| {
            rolled_out(ctx) && sizes(ctx) == [("1".to_string(), 0), ("2".to_string(), 4)]
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recreate_scales_old_down_before_new_up() {
        let w = world().await;
        let ctx = &w.ctx;
        ctx.client.create(&web(3, RECREATE)).await.unwrap();
        until(ctx, true, "the first rollout", rolled_out).await;

        change(ctx, |d| {
            d.spec.as_mut().unwrap().template = pod_template("nginx:2")
        })
        .await;
        until(ctx, false, "the old set scaled down", |ctx| {
            sizes(ctx) == [("1".to_string(), 0)]
        })
        .await;
        assert_eq!(owned(ctx).len(), 1, "no new replica set while old pods run");
        until(ctx, true, "the recreate rollout", |ctx| {
            rolled_out(ctx) && sizes(ctx) == [("1".to_string(), 0), ("2".to_string(), 3)]
        })
        .await;
    }
}
