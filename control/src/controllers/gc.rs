//! Garbage collection (Kubernetes' `pkg/controller/garbagecollector`, `podgc`, and the event
//! TTL).
//!
//! The collector keeps a graph of every object's ownerReferences, from metadata-only informers
//! over every served resource (events excepted). It then does what Kubernetes does:
//! - **Background**: an object whose owners are all gone (checked against the store, not only
//!   the cache) is deleted; one with some owners gone loses the dangling references.
//! - **Foreground**: an owner with the `foregroundDeletion` finalizer has its dependents deleted
//!   (in foreground too), and the finalizer is removed once no dependent with
//!   `blockOwnerDeletion` is left; until then the owner stays, visible, with its
//!   deletionTimestamp.
//! - **Orphan**: an owner with the `orphan` finalizer has its reference removed from every
//!   dependent, then the finalizer removed.
//! - Other finalizers are left to whoever owns them; the API server deletes an object when its
//!   last finalizer goes.
//!
//! Besides: pods bound to a node that no longer exists are deleted (pod GC), events older than an
//! hour are deleted (the event TTL), and every minute Service IP/port claims left by a crashed API
//! server are repaired (`ServiceAllocator::repair`).
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::Context;
use super::runtime::{Change, Informer, PartialObjectMetadata, WorkQueue};
use crate::apiserver::registry::{self, Resource};
use crate::apiserver::storage::{DeleteOptions, UpdateKind};

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";
const WORKERS: usize = 4;
/// Events live this long (kube-apiserver's `--event-ttl`).
const EVENT_TTL: Duration = Duration::from_secs(3600);

/// One object in the ownership graph.
#[derive(Clone, Debug)]
struct Vertex {
    resource: &'static Resource,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    finalizers: Vec<String>,
    deleting: bool,
}

#[derive(Default)]
struct Graph {
    objects: HashMap<String, Vertex>,
    /// Owner uid -> dependent uids.
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    fn insert(&mut self, uid: String, vertex: Vertex) {
        self.remove(&uid);
        for owner in &vertex.owners {
            self.dependents
                .entry(owner.uid.clone())
                .or_default()
                .insert(uid.clone());
        }
        self.objects.insert(uid, vertex);
    }

    fn remove(&mut self, uid: &str) -> Option<Vertex> {
        let old = self.objects.remove(uid)?;
        for owner in &old.owners {
            if let Some(set) = self.dependents.get_mut(&owner.uid) {
                set.remove(uid);
                if set.is_empty() {
                    self.dependents.remove(&owner.uid);
                }
            }
        }
        Some(old)
    }

    fn dependents_of(&self, uid: &str) -> Vec<(String, Vertex)> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| Some((d.clone(), self.objects.get(d)?.clone())))
            .collect()
    }
}

struct Collector {
    ctx: Arc<Context>,
    queue: Arc<WorkQueue>,
    graph: Mutex<Graph>,
}

pub fn start(ctx: &Arc<Context>, tasks: &mut JoinSet<()>) {
    let collector = Arc::new(Collector {
        ctx: ctx.clone(),
        queue: WorkQueue::new(),
        graph: Mutex::new(Graph::default()),
    });
    let mut informers = Vec::new();
    for resource in registry::all() {
        if resource.kind == "Event" {
            continue;
        }
        let informer: Arc<Informer<PartialObjectMetadata>> = Informer::new(resource);
        let c = collector.clone();
        informer.on_change(move |change| c.observe(resource, change));
        informers.push(informer);
    }
    for informer in &informers {
        tasks.spawn(informer.clone().run(ctx.client.api.clone()));
    }
    let synced = Arc::new(informers);
    let c = collector.clone();
    super::runtime::spawn_workers(
        tasks,
        "garbage-collector",
        collector.queue.clone(),
        WORKERS,
        move |uid| {
            let c = c.clone();
            let synced = synced.clone();
            async move {
                for informer in synced.iter() {
                    informer.wait_synced().await;
                }
                c.ctx.wait_synced().await;
                c.process(&uid).await
            }
        },
    );
    let c = collector.clone();
    tasks.spawn(async move { c.housekeeping().await });
}

impl Collector {
    fn lock(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn observe(&self, resource: &'static Resource, change: &Change<'_, PartialObjectMetadata>) {
        match change {
            Change::Applied { old, new } => {
                let meta = &new.metadata;
                let Some(uid) = meta.uid.clone() else { return };
                let vertex = Vertex {
                    resource,
                    namespace: meta.namespace.clone().filter(|n| !n.is_empty()),
                    name: meta.name.clone().unwrap_or_default(),
                    owners: meta.owner_references.clone().unwrap_or_default(),
                    finalizers: meta.finalizers.clone().unwrap_or_default(),
                    deleting: meta.deletion_timestamp.is_some(),
                };
                let interesting = !vertex.owners.is_empty()
                    || (vertex.deleting
                        && vertex
                            .finalizers
                            .iter()
                            .any(|f| f == FOREGROUND || f == ORPHAN));
                let owners: Vec<String> = vertex.owners.iter().map(|o| o.uid.clone()).collect();
                let became_deleting =
                    vertex.deleting && old.is_none_or(|o| o.metadata.deletion_timestamp.is_none());
                self.lock().insert(uid.clone(), vertex);
                if interesting {
                    self.queue.add(uid);
                }
                // An owner waiting in foreground deletion rechecks when a dependent changes.
                if became_deleting
                    || old.is_none_or(|o| {
                        o.metadata.owner_references != new.metadata.owner_references
                    })
                {
                    for owner in owners {
                        self.queue.add(owner);
                    }
                }
                if let Some(old) = old {
                    for owner in old.metadata.owner_references.iter().flatten() {
                        self.queue.add(owner.uid.clone());
                    }
                }
            }
            Change::Deleted(old) => {
                let Some(uid) = old.metadata.uid.clone() else {
                    return;
                };
                let mut graph = self.lock();
                let removed = graph.remove(&uid);
                let dependents: Vec<String> = graph
                    .dependents
                    .get(&uid)
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect();
                drop(graph);
                for dependent in dependents {
                    self.queue.add(dependent);
                }
                for owner in removed.iter().flat_map(|v| v.owners.iter()) {
                    self.queue.add(owner.uid.clone());
                }
            }
        }
    }

    async fn process(&self, uid: &str) -> anyhow::Result<Option<Duration>> {
        let Some(vertex) = self.lock().objects.get(uid).cloned() else {
            return Ok(None);
        };
        if vertex.deleting && vertex.finalizers.iter().any(|f| f == ORPHAN) {
            return self.orphan_dependents(uid, &vertex).await;
        }
        if vertex.deleting && vertex.finalizers.iter().any(|f| f == FOREGROUND) {
            return self.delete_dependents(uid, &vertex).await;
        }
        if vertex.owners.is_empty() || vertex.deleting {
            return Ok(None);
        }
        // Classify the owners: alive, alive and deleting in foreground, or gone.
        let mut dangling = Vec::new();
        let mut waiting_foreground = false;
        for owner in &vertex.owners {
            match self.owner_state(&vertex, owner).await? {
                OwnerState::Gone => dangling.push(owner.uid.clone()),
                OwnerState::DeletingForeground => {
                    if owner.block_owner_deletion == Some(true) {
                        waiting_foreground = true;
                    }
                }
                OwnerState::Alive => {}
            }
        }
        if dangling.len() == vertex.owners.len() {
            tracing::debug!(
                kind = vertex.resource.kind,
                name = vertex.name,
                "deleting an object whose owners are gone"
            );
            self.delete(&vertex, uid, "Background").await?;
        } else if waiting_foreground && dangling.is_empty() {
            self.delete(&vertex, uid, "Foreground").await?;
        } else if !dangling.is_empty() {
            self.remove_owner_refs(&vertex, uid, &dangling).await?;
        }
        Ok(None)
    }

    async fn owner_state(
        &self,
        dependent: &Vertex,
        owner: &OwnerReference,
    ) -> anyhow::Result<OwnerState> {
        if let Some(v) = self.lock().objects.get(&owner.uid) {
            return Ok(
                if v.deleting && v.finalizers.iter().any(|f| f == FOREGROUND) {
                    OwnerState::DeletingForeground
                } else {
                    OwnerState::Alive
                },
            );
        }
        // Not in the graph: maybe the cache lags. Ask the store.
        let Some(resource) = registry::by_kind(&owner.kind) else {
            // An owner of a kind this server does not serve cannot exist here.
            return Ok(OwnerState::Gone);
        };
        let namespace = if resource.namespaced {
            dependent.namespace.as_deref()
        } else {
            None
        };
        match self
            .ctx
            .client
            .api
            .get(resource, namespace, &owner.name)
            .await
        {
            Ok(obj) => {
                if obj.pointer("/metadata/uid").and_then(Value::as_str) != Some(owner.uid.as_str())
                {
                    return Ok(OwnerState::Gone);
                }
                let deleting = obj
                    .pointer("/metadata/deletionTimestamp")
                    .is_some_and(|t| !t.is_null());
                let foreground = obj
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| f.iter().any(|f| f == FOREGROUND));
                Ok(if deleting && foreground {
                    OwnerState::DeletingForeground
                } else {
                    OwnerState::Alive
                })
            }
            Err(e) if e.code == 404 => Ok(OwnerState::Gone),
            Err(e) => anyhow::bail!(
                "looking up owner {}/{}: {}",
                owner.kind,
                owner.name,
                e.message
            ),
        }
    }

    async fn delete(&self, vertex: &Vertex, uid: &str, policy: &str) -> anyhow::Result<()> {
        let opts = DeleteOptions {
            propagation_policy: Some(policy.to_string()),
            precondition_uid: Some(uid.to_string()),
            ..Default::default()
        };
        match self
            .ctx
            .client
            .api
            .delete(
                vertex.resource,
                vertex.namespace.as_deref(),
                &vertex.name,
                &opts,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => anyhow::bail!(
                "deleting {} {}: {}",
                vertex.resource.kind,
                vertex.name,
                e.message
            ),
        }
    }

    /// Edits an object's metadata through the API (retrying on conflicts).
    async fn edit_meta<F>(&self, vertex: &Vertex, uid: &str, mut edit: F) -> anyhow::Result<()>
    where
        F: FnMut(&mut serde_json::Map<String, Value>) -> bool + Send,
    {
        let result = self
            .ctx
            .client
            .api
            .guaranteed_update(
                vertex.resource,
                vertex.namespace.as_deref(),
                &vertex.name,
                UpdateKind::Internal,
                false,
                |current| {
                    let mut next = current.clone();
                    if next.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
                        return Ok(current.clone());
                    }
                    if let Some(meta) = next.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.remove("resourceVersion");
                        if !edit(meta) {
                            return Ok(current.clone());
                        }
                    }
                    Ok(next)
                },
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => anyhow::bail!(
                "updating {} {}: {}",
                vertex.resource.kind,
                vertex.name,
                e.message
            ),
        }
    }

    async fn remove_owner_refs(
        &self,
        vertex: &Vertex,
        uid: &str,
        owners: &[String],
    ) -> anyhow::Result<()> {
        self.edit_meta(vertex, uid, |meta| {
            let Some(refs) = meta
                .get_mut("ownerReferences")
                .and_then(Value::as_array_mut)
            else {
                return false;
            };
            let before = refs.len();
            refs.retain(|r| {
                !r.get("uid")
                    .and_then(Value::as_str)
                    .is_some_and(|u| owners.iter().any(|o| o == u))
            });
            let changed = refs.len() != before;
            if refs.is_empty() {
                meta.remove("ownerReferences");
            }
            changed
        })
        .await
    }

    async fn remove_finalizer(
        &self,
        vertex: &Vertex,
        uid: &str,
        finalizer: &str,
    ) -> anyhow::Result<()> {
        self.edit_meta(vertex, uid, |meta| {
            let Some(list) = meta.get_mut("finalizers").and_then(Value::as_array_mut) else {
                return false;
            };
            let before = list.len();
            list.retain(|f| f != finalizer);
            let changed = list.len() != before;
            if list.is_empty() {
                meta.insert("finalizers".into(), json!([]));
            }
            changed
        })
        .await
    }

    async fn orphan_dependents(
        &self,
        uid: &str,
        vertex: &Vertex,
    ) -> anyhow::Result<Option<Duration>> {
        let dependents = self.lock().dependents_of(uid);
        for (dep_uid, dep) in dependents {
            self.remove_owner_refs(&dep, &dep_uid, &[uid.to_string()])
                .await?;
        }
        self.remove_finalizer(vertex, uid, ORPHAN).await?;
        Ok(None)
    }

    async fn delete_dependents(
        &self,
        uid: &str,
        vertex: &Vertex,
    ) -> anyhow::Result<Option<Duration>> {
        let dependents = self.lock().dependents_of(uid);
        let mut blocking = 0;
        for (dep_uid, dep) in &dependents {
            let blocks = dep
                .owners
                .iter()
                .any(|o| o.uid == uid && o.block_owner_deletion == Some(true));
            if blocks {
                blocking += 1;
            }
            if !dep.deleting {
                self.delete(dep, dep_uid, "Foreground").await?;
            }
        }
        if blocking == 0 {
            self.remove_finalizer(vertex, uid, FOREGROUND).await?;
            return Ok(None);
        }
        // Dependents' deletions re-queue this owner; check again now and then anyway.
        Ok(Some(Duration::from_secs(5)))
    }

    /// Pod GC, the event TTL and the allocation repair, on timers.
    async fn housekeeping(&self) {
        self.ctx.wait_synced().await;
        let mut tick = tokio::time::interval(Duration::from_secs(20));
        let mut missing_before: HashSet<String> = HashSet::new();
        let mut rounds: u64 = 0;
        loop {
            tick.tick().await;
            rounds += 1;
            missing_before = self.collect_orphaned_pods(&missing_before).await;
            if rounds % 3 == 1 {
                // Claims of Service IPs/ports left by an API server that crashed mid-write.
                let api = &self.ctx.client.api;
                match api
                    .services
                    .repair(api.store.as_ref(), Duration::from_secs(60))
                    .await
                {
                    Ok(repaired) => tracing::debug!(?repaired, "service allocations repaired"),
                    Err(e) => tracing::warn!(error = %e, "repairing service allocations failed"),
                }
            }
            if rounds % 15 == 1 {
                self.expire_events().await;
            }
        }
    }

    /// Deletes pods bound to nodes that do not exist, once a node has been missing on two
    /// consecutive rounds (a quarantine against cache lag). Returns this round's missing set.
    async fn collect_orphaned_pods(&self, missing_before: &HashSet<String>) -> HashSet<String> {
        let mut missing = HashSet::new();
        for pod in self.ctx.pods.list() {
            let Some(node) = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty())
            else {
                continue;
            };
            if self.ctx.nodes.get(None, &node).is_some() {
                continue;
            }
            let key = super::runtime::key_of(pod.as_ref());
            if missing_before.contains(&key) {
                let ns = pod.metadata.namespace.as_deref();
                let name = pod.metadata.name.clone().unwrap_or_default();
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                tracing::info!(
                    pod = key,
                    node,
                    "deleting a pod bound to a node that no longer exists"
                );
                let opts = DeleteOptions {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                };
                if let Err(e) = self
                    .ctx
                    .client
                    .delete_uid::<k8s_openapi::api::core::v1::Pod>(ns, &name, &uid, &opts)
                    .await
                {
                    tracing::debug!(pod = key, error = %e.message, "pod GC failed");
                }
            } else {
                missing.insert(key);
            }
        }
        missing
    }

    /// Deletes events last seen more than [`EVENT_TTL`] ago.
    async fn expire_events(&self) {
        let Some(events) = registry::by_kind("Event") else {
            return;
        };
        let params = crate::apiserver::storage::ListParams::default();
        let Ok((items, _, _)) = self.ctx.client.api.list_items(events, None, &params).await else {
            return;
        };
        let cutoff =
            jiff::Timestamp::now() - jiff::SignedDuration::from_secs(EVENT_TTL.as_secs() as i64);
        for event in items {
            let last = [
                "/lastTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find_map(|p| event.pointer(p).and_then(Value::as_str))
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
            if last.is_some_and(|t| t < cutoff) {
                let ns = event.pointer("/metadata/namespace").and_then(Value::as_str);
                let name = event
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let _ = self
                    .ctx
                    .client
                    .api
                    .delete(events, ns, name, &DeleteOptions::default())
                    .await;
            }
        }
    }
}

enum OwnerState {
    Alive,
    DeletingForeground,
    Gone,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vertex(owners: &[&str]) -> Vertex {
        Vertex {
            resource: registry::by_kind("Pod").unwrap(),
            namespace: Some("ns".into()),
            name: "p".into(),
            owners: owners
                .iter()
                .map(|u| OwnerReference {
                    uid: u.to_string(),
                    kind: "ReplicaSet".into(),
                    name: format!("rs-{u}"),
                    api_version: "apps/v1".into(),
                    ..Default::default()
                })
                .collect(),
            finalizers: vec![],
            deleting: false,
        }
    }

    #[test]
    fn graph_tracks_dependents_through_updates_and_removals() {
        let mut g = Graph::default();
        g.insert("p1".into(), vertex(&["rs1"]));
        g.insert("p2".into(), vertex(&["rs1", "rs2"]));
        assert_eq!(g.dependents_of("rs1").len(), 2);
        g.insert("p2".into(), vertex(&["rs2"]));
        assert_eq!(g.dependents_of("rs1").len(), 1);
        g.remove("p1");
        assert!(g.dependents_of("rs1").is_empty());
        assert!(!g.dependents.contains_key("rs1"));
        assert_eq!(g.dependents_of("rs2").len(), 1);
    }
}
