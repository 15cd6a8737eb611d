//! The controller runtime: informers (caches fed by the store's watch), a deduplicating work
//! queue with back-off, and workers running level-triggered reconcilers. The model is
//! client-go's (and kube-rs's `runtime`): a reconciler gets a key, reads the current state from
//! caches, and makes the world match; it is idempotent and may run any number of times.
//!
//! Informers read the store directly (the controllers run inside `keel-control`), so there is
//! no HTTP or TLS between a controller and the objects it watches; writes go through the API
//! layer ([`super::client`]) and get the same defaulting, validation and admission as a client's.
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::Metadata;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::apiserver::registry::Resource;
use crate::apiserver::storage::{Api, decode_kv};
use crate::store::{KeyValue, ListOptions, WatchEvent};

/// What an informer can cache: anything with object metadata. Every k8s-openapi type is one;
/// so is [`PartialObjectMetadata`] for controllers that only need metadata (the GC).
pub trait Object: DeserializeOwned + Send + Sync + 'static {
    fn meta(&self) -> &ObjectMeta;
}

impl<K> Object for K
where
    K: Metadata<Ty = ObjectMeta> + DeserializeOwned + Send + Sync + 'static,
{
    fn meta(&self) -> &ObjectMeta {
        self.metadata()
    }
}

/// An object's metadata alone (the rest of the stored object is skipped when decoding).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct PartialObjectMetadata {
    #[serde(default)]
    pub metadata: ObjectMeta,
}

impl Object for PartialObjectMetadata {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

/// An object's queue key: `namespace/name`, or `name` for cluster-scoped objects.
pub fn key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// Splits a queue key into namespace and name.
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, key),
    }
}

/// The queue key of an object.
pub fn key_of<K: Object>(obj: &K) -> String {
    let meta = obj.meta();
    key(
        meta.namespace.as_deref(),
        meta.name.as_deref().unwrap_or(""),
    )
}

/// A change an informer saw.
pub enum Change<'a, K> {
    /// Created (`old` is `None`) or updated.
    Applied { old: Option<&'a K>, new: &'a K },
    /// Deleted; the last known state.
    Deleted(&'a K),
}

type Handler<K> = Box<dyn Fn(&Change<'_, K>) + Send + Sync>;

/// An informer: a cache of every object of one resource, kept current by the store's watch,
/// and the handlers told of each change (after the cache has it).
pub struct Informer<K> {
    resource: &'static Resource,
    objects: RwLock<BTreeMap<(String, String), Arc<K>>>,
    handlers: RwLock<Vec<Handler<K>>>,
    synced: watch::Sender<bool>,
}

impl<K: Object> Informer<K> {
    pub fn new(resource: &'static Resource) -> Arc<Self> {
        Arc::new(Informer {
            resource,
            objects: RwLock::new(BTreeMap::new()),
            handlers: RwLock::new(Vec::new()),
            synced: watch::channel(false).0,
        })
    }

    /// Registers a handler (call before [`Informer::run`]). Handlers must be quick: they
    /// enqueue keys, nothing more.
    pub fn on_change(&self, handler: impl Fn(&Change<'_, K>) + Send + Sync + 'static) {
        self.handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(handler));
    }

    /// Drops every handler (they hold their controllers, which hold the informers: clearing
    /// them breaks that cycle when the controllers stop).
    pub fn clear_handlers(&self) {
        self.handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The cached object.
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        objects
            .get(&(namespace.unwrap_or("").to_string(), name.to_string()))
            .cloned()
    }

    /// The cached object with this queue key.
    pub fn get_key(&self, key: &str) -> Option<Arc<K>> {
        let (ns, name) = split_key(key);
        self.get(ns, name)
    }

    /// Every cached object.
    pub fn list(&self) -> Vec<Arc<K>> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        objects.values().cloned().collect()
    }

    /// The cached objects of one namespace.
    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        let from = (namespace.to_string(), String::new());
        objects
            .range(from..)
            .take_while(|((ns, _), _)| ns == namespace)
            .map(|(_, obj)| obj.clone())
            .collect()
    }

    /// How many objects are cached.
    pub fn len(&self) -> usize {
        self.objects.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first list has been loaded.
    pub fn has_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the first list has been loaded.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|synced| *synced).await;
    }

    fn notify(&self, change: &Change<'_, K>) {
        let handlers = self.handlers.read().unwrap_or_else(|e| e.into_inner());
        for handler in handlers.iter() {
            handler(change);
        }
    }

    fn decode(&self, kv: &KeyValue) -> Option<K> {
        let value = match decode_kv(kv) {
            Ok(value) => value,
            Err(e) => {
                tracing::warn!(key = kv.key, error = %e.message, "skipping an undecodable object");
                return None;
            }
        };
        match serde_json::from_value::<K>(value) {
            Ok(obj) => Some(obj),
            Err(e) => {
                tracing::warn!(key = kv.key, error = %e, "skipping an object that does not parse");
                None
            }
        }
    }

    fn apply(&self, obj: K) {
        let meta = obj.meta();
        let id = (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        let new = Arc::new(obj);
        let old = self
            .objects
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, new.clone());
        self.notify(&Change::Applied {
            old: old.as_deref(),
            new: &new,
        });
    }

    fn remove(&self, namespace: String, name: String) {
        let old = self
            .objects
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace, name));
        if let Some(old) = old {
            self.notify(&Change::Deleted(&old));
        }
    }

    /// Lists, then watches, forever: after a watch error (compaction, a lagging watcher, the
    /// store restarting) it lists again and reports the difference as changes.
    pub async fn run(self: Arc<Self>, api: Arc<Api>) {
        let prefix = self.resource.prefix(None);
        let mut delay = Duration::from_millis(100);
        loop {
            match self.list_and_watch(&api, &prefix).await {
                Ok(()) => delay = Duration::from_millis(100),
                Err(e) => {
                    tracing::debug!(resource = self.resource.plural, error = %e, "informer restarts");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn list_and_watch(&self, api: &Api, prefix: &str) -> anyhow::Result<()> {
        let mut seen = HashSet::new();
        let mut revision = 0;
        let mut start_after = None;
        loop {
            let page = api
                .store
                .list(
                    prefix,
                    ListOptions {
                        revision,
                        limit: 1000,
                        start_after: start_after.take(),
                    },
                )
                .await?;
            revision = page.revision;
            for kv in &page.items {
                if let Some(obj) = self.decode(kv) {
                    let meta = obj.meta();
                    seen.insert((
                        meta.namespace.clone().unwrap_or_default(),
                        meta.name.clone().unwrap_or_default(),
                    ));
                    self.apply(obj);
                }
            }
            match page.items.last() {
                Some(last) if page.more => start_after = Some(last.key.clone()),
                _ => break,
            }
        }
        let gone: Vec<(String, String)> = {
            let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
            objects
                .keys()
                .filter(|id| !seen.contains(*id))
                .cloned()
                .collect()
        };
        for (ns, name) in gone {
            self.remove(ns, name);
        }
        self.synced.send_replace(true);
        let mut events = api.store.watch(prefix, revision).await?;
        while let Some(event) = events.next().await {
            match event? {
                WatchEvent::Put { kv, .. } => {
                    if let Some(obj) = self.decode(&kv) {
                        self.apply(obj);
                    }
                }
                WatchEvent::Delete { prev, .. } => {
                    if let Some(obj) = self.decode(&prev) {
                        let meta = obj.meta();
                        self.remove(
                            meta.namespace.clone().unwrap_or_default(),
                            meta.name.clone().unwrap_or_default(),
                        );
                    }
                }
                WatchEvent::Progress { .. } => {}
            }
        }
        anyhow::bail!("the watch ended")
    }
}

// ---- Work queue ------------------------------------------------------------------------------

/// A work queue of keys, as client-go's rate-limited queue: a key queued twice before a worker
/// takes it is processed once; a key re-queued while a worker processes it is processed again
/// after; failed keys come back after an exponential back-off.
pub struct WorkQueue {
    inner: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Default)]
struct QueueState {
    queue: VecDeque<String>,
    /// Keys waiting in `queue` or to be re-queued when their processing ends.
    dirty: HashSet<String>,
    processing: HashSet<String>,
    failures: HashMap<String, u32>,
}

const BASE_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl WorkQueue {
    pub fn new() -> Arc<Self> {
        Arc::new(WorkQueue {
            inner: Mutex::new(QueueState::default()),
            ready: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a key (no-op when it is already waiting).
    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut state = self.state();
        if !state.dirty.insert(key.clone()) {
            return;
        }
        if !state.processing.contains(&key) {
            state.queue.push_back(key);
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Queues a key after a delay.
    pub fn add_after(self: &Arc<Self>, key: impl Into<String>, delay: Duration) {
        let key = key.into();
        if delay.is_zero() {
            self.add(key);
            return;
        }
        let queue = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(queue) = queue.upgrade() {
                queue.add(key);
            }
        });
    }

    /// Queues a key after its back-off (5 ms doubling per consecutive failure, at most 60 s).
    pub fn add_rate_limited(self: &Arc<Self>, key: impl Into<String>) {
        let key = key.into();
        let failures = {
            let mut state = self.state();
            let n = state.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let backoff = BASE_BACKOFF
            .saturating_mul(1u32 << (failures - 1).min(20))
            .min(MAX_BACKOFF);
        self.add_after(key, backoff);
    }

    /// Forgets a key's failures (after a success).
    pub fn forget(&self, key: &str) {
        self.state().failures.remove(key);
    }

    /// How many keys wait (not counting those being processed).
    pub fn len(&self) -> usize {
        self.state().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the next key, waiting for one; mark it [`WorkQueue::done`] afterwards.
    pub async fn next(&self) -> String {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.state();
                if let Some(key) = state.queue.pop_front() {
                    state.dirty.remove(&key);
                    state.processing.insert(key.clone());
                    return key;
                }
            }
            notified.await;
        }
    }

    /// Ends the processing of a key; if it was queued meanwhile it goes back in the queue.
    pub fn done(&self, key: &str) {
        let mut state = self.state();
        state.processing.remove(key);
        if state.dirty.contains(key) {
            state.queue.push_back(key.to_string());
            drop(state);
            self.ready.notify_one();
        }
    }
}

/// What a reconciler asks for after a successful pass.
pub type Requeue = Option<Duration>;

/// Spawns `workers` tasks that take keys from `queue` and run `reconcile` on them: an error
/// re-queues the key with back-off, `Ok(Some(d))` re-queues it after `d`.
pub fn spawn_workers<F, Fut>(
    tasks: &mut JoinSet<()>,
    name: &'static str,
    queue: Arc<WorkQueue>,
    workers: usize,
    reconcile: F,
) where
    F: Fn(String) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = anyhow::Result<Requeue>> + Send + 'static,
{
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let reconcile = reconcile.clone();
        tasks.spawn(async move {
            loop {
                let key = queue.next().await;
                let result = reconcile(key.clone()).await;
                match result {
                    Ok(requeue) => {
                        queue.forget(&key);
                        if let Some(delay) = requeue {
                            queue.add_after(key.clone(), delay);
                        }
                    }
                    Err(e) => {
                        tracing::info!(controller = name, key, error = %format!("{e:#}"), "reconcile failed; retrying");
                        queue.add_rate_limited(key.clone());
                    }
                }
                queue.done(&key);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_deduplicates_and_requeues_keys_added_while_processing() {
        let queue = WorkQueue::new();
        queue.add("a");
        queue.add("b");
        queue.add("a");
        assert_eq!(queue.len(), 2);
        let first = queue.next().await;
        assert_eq!(first, "a");
        queue.add("a"); // while processing: comes back after done
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.next().await, "b");
        queue.done("b");
        queue.done("a");
        assert_eq!(queue.next().await, "a");
        queue.done("a");
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn failed_keys_back_off_exponentially() {
        let queue = WorkQueue::new();
        for _ in 0..3 {
            queue.add_rate_limited("k");
        }
        // Three failures: the third comes back after 20 ms, all three collapse into one key.
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(queue.len(), 1);
        queue.forget("k");
        assert!(queue.state().failures.is_empty());
    }

    #[test]
    fn keys_split_back() {
        assert_eq!(split_key(&key(Some("ns"), "a")), (Some("ns"), "a"));
        assert_eq!(split_key(&key(None, "node-1")), (None, "node-1"));
    }
}

// ---- Selectors -------------------------------------------------------------------------------

/// Whether `labels` match a `LabelSelector` (matchLabels and matchExpressions In, NotIn,
/// Exists, DoesNotExist). An empty selector matches everything; an unknown operator nothing.
pub fn selector_matches(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> bool {
    let empty = std::collections::BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    if let Some(required) = &selector.match_labels
        && required.iter().any(|(k, v)| labels.get(k) != Some(v))
    {
        return false;
    }
    for req in selector.match_expressions.iter().flatten() {
        let value = labels.get(&req.key);
        let values = req.values.as_deref().unwrap_or(&[]);
        let ok = match req.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether a selector selects nothing at all (`{}` selects everything in Kubernetes' apps
/// controllers' eyes only when explicitly written; they refuse to act on it).
pub fn selector_is_empty(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> bool {
    selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty())
}

/// The controller ownerReference of an object, if any.
pub fn controller_of(
    meta: &ObjectMeta,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}
