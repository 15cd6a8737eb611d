//! The scheduler: binds pending pods to nodes as kube-scheduler's default profile does.
//!
//! - [`queue`]: pending pods by priority and age, unschedulable pods waiting for a change,
//!   back-off after errors.
//! - [`cache`]: nodes and what the pods on them take, including pods placed but not yet seen
//!   bound ("assumed").
//! - [`plugins`]: the filters and scores, and kube-scheduler's failure message.
//! - [`cycle`]: one scheduling decision over the cache (no I/O).
//! - [`resources`]: quantities and pod requests.
//!
//! One task runs the cycles one pod after another; bindings go out concurrently (at most
//! [`MAX_BINDS_IN_FLIGHT`]) while the next pods are scheduled, which is safe because each
//! placed pod is assumed in the cache first. The informer handlers keep the cache current and
//! move unschedulable pods back to the queue when nodes or pods change.
pub mod cache;
pub mod cycle;
pub mod plugins;
pub mod queue;
pub mod resources;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::Context;
use super::events::Recorder;
use super::runtime::{Change, key_of};
use cache::Cache;
use cycle::{Outcome, Scratch};
use queue::{Popped, SchedulingQueue};

/// The scheduler's name: pods with this `spec.schedulerName` (or none) are ours.
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// How many bindings may be in flight at once: as many as the embedded store commits with
/// one fsync, so the cycle rarely waits for bindings when fsync is slow.
pub const MAX_BINDS_IN_FLIGHT: usize = 256;
/// How many PodScheduled condition writes may be in flight at once.
const MAX_STATUS_WRITES_IN_FLIGHT: usize = 16;
/// The cycle yields to other tasks after this many pods in a row.
const CYCLES_BETWEEN_YIELDS: u32 = 32;

/// Counters of the scheduler's work since the process started.
pub struct Metrics {
    scheduled: AtomicU64,
    failed_attempts: AtomicU64,
    bind_errors: AtomicU64,
}

/// A snapshot of [`METRICS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Pods bound to a node.
    pub scheduled: u64,
    /// Attempts that found no node for the pod.
    pub failed_attempts: u64,
    /// Bindings the API refused (the pod was bound elsewhere, deleted, ...).
    pub bind_errors: u64,
}

pub static METRICS: Metrics = Metrics {
    scheduled: AtomicU64::new(0),
    failed_attempts: AtomicU64::new(0),
    bind_errors: AtomicU64::new(0),
};

impl Metrics {
    pub fn stats(&self) -> Stats {
        Stats {
            scheduled: self.scheduled.load(Ordering::Relaxed),
            failed_attempts: self.failed_attempts.load(Ordering::Relaxed),
            bind_errors: self.bind_errors.load(Ordering::Relaxed),
        }
    }
}

/// Whether a pod is this scheduler's to place now: ours by name, not bound, not being deleted,
/// not finished.
pub fn needs_scheduling(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let ours = spec
        .and_then(|s| s.scheduler_name.as_deref())
        .is_none_or(|name| name.is_empty() || name == SCHEDULER_NAME);
    ours && !is_assigned(pod) && pod.metadata.deletion_timestamp.is_none() && !is_terminal(pod)
}

fn is_assigned(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether a node update may let pods run that could not before: a different allocatable,
/// labels, taints, cordon or Ready status (not a heartbeat).
pub fn node_change_may_help(old: &Node, new: &Node) -> bool {
    fn allocatable(node: &Node) -> Option<&BTreeMap<String, Quantity>> {
        node.status.as_ref().and_then(|s| s.allocatable.as_ref())
    }
    fn taints(node: &Node) -> Option<&Vec<Taint>> {
        node.spec.as_ref().and_then(|s| s.taints.as_ref())
    }
    fn unschedulable(node: &Node) -> bool {
        node.spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
    }
    fn ready(node: &Node) -> Option<&str> {
        node.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str())
    }
    allocatable(old) != allocatable(new)
        || old.metadata.labels != new.metadata.labels
        || taints(old) != taints(new)
        || unschedulable(old) != unschedulable(new)
        || ready(old) != ready(new)
}

fn says_unschedulable(condition: &PodCondition, message: &str) -> bool {
    condition.status == "False"
        && condition.reason.as_deref() == Some("Unschedulable")
        && condition.message.as_deref() == Some(message)
}

/// Whether a pod's PodScheduled condition already reports it unschedulable with `message`.
pub fn marked_unschedulable(pod: &Pod, message: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
        .is_some_and(|c| says_unschedulable(c, message))
}

/// Sets a pod's PodScheduled condition to False/Unschedulable with `message`; false when it
/// already says so (or the pod was bound meanwhile).
pub fn mark_unschedulable(pod: &mut Pod, message: &str) -> bool {
    if is_assigned(pod) {
        return false;
    }
    let conditions = pod
        .status
        .get_or_insert_default()
        .conditions
        .get_or_insert_default();
    match conditions.iter_mut().find(|c| c.type_ == "PodScheduled") {
        Some(c) if says_unschedulable(c, message) => false,
        Some(c) => {
            if c.status != "False" {
                c.last_transition_time = Some(Time(jiff::Timestamp::now()));
                c.status = "False".into();
            }
            c.reason = Some("Unschedulable".into());
            c.message = Some(message.to_string());
            true
        }
        None => {
            conditions.push(PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some(message.to_string()),
                last_transition_time: Some(Time(jiff::Timestamp::now())),
                ..Default::default()
            });
            true
        }
    }
}

/// The queue and the cache, with what the informer handlers do to them.
pub struct State {
    queue: Mutex<SchedulingQueue>,
    cache: Mutex<Cache>,
    /// Told when a pod may have become active.
    wake: Notify,
}

impl Default for State {
    fn default() -> Self {
        State {
            queue: Mutex::new(SchedulingQueue::new(Instant::now())),
            cache: Mutex::new(Cache::default()),
            wake: Notify::new(),
        }
    }
}

impl State {
    pub fn queue(&self) -> MutexGuard<'_, SchedulingQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn move_all(&self, now: Instant) {
        self.queue().move_all(now);
        self.wake.notify_one();
    }

    /// A pod was added or updated; `shared` gives the informer's copy (to queue without
    /// cloning).
    pub fn pod_changed(&self, pod: &Pod, shared: impl FnOnce() -> Arc<Pod>, now: Instant) {
        let key = key_of(pod);
        if is_assigned(pod) {
            let freed = if is_terminal(pod) {
                // A finished pod no longer takes anything (kube-scheduler does not see them).
                self.cache().remove_pod(&key)
            } else {
                self.cache().observe_bound(&key, pod);
                false
            };
            self.queue().delete(&key);
            if freed {
                self.move_all(now);
            }
        } else if needs_scheduling(pod) {
            let assumed = self.cache().is_assumed(&key);
            let mut queue = self.queue();
            if assumed && queue.place(&key).is_none() {
                // Bound by us, the informer just has not shown it yet.
                return;
            }
            queue.add(&key, shared(), now);
            drop(queue);
            self.wake.notify_one();
        } else {
            self.queue().delete(&key);
        }
    }

    /// A pod was deleted: what it took on its node is free again.
    pub fn pod_deleted(&self, pod: &Pod, now: Instant) {
        let key = key_of(pod);
        self.queue().delete(&key);
        if self.cache().remove_pod(&key) {
            self.move_all(now);
        }
    }

    /// A node was added or updated.
    pub fn node_changed(&self, old: Option<&Node>, node: Arc<Node>, now: Instant) {
        let may_help = old.is_none_or(|old| node_change_may_help(old, &node));
        self.cache().set_node(node);
        if may_help {
            self.move_all(now);
        }
    }

    /// A node was deleted.
    pub fn node_deleted(&self, node: &Node) {
        if let Some(name) = node.metadata.name.as_deref() {
            self.cache().remove_node(name);
        }
    }
}

/// The running scheduler.
struct Scheduler {
    ctx: Arc<Context>,
    state: State,
    events: Recorder,
    binds: Arc<Semaphore>,
    status_writes: Arc<Semaphore>,
}

/// Registers the scheduler's informer handlers and spawns its scheduling loop.
pub fn start(ctx: &Arc<Context>, tasks: &mut JoinSet<()>) {
    let scheduler = Arc::new(Scheduler {
        ctx: ctx.clone(),
        state: State::default(),
        events: ctx.events.for_component(SCHEDULER_NAME),
        binds: Arc::new(Semaphore::new(MAX_BINDS_IN_FLIGHT)),
        status_writes: Arc::new(Semaphore::new(MAX_STATUS_WRITES_IN_FLIGHT)),
    });
    // Weak references: the handlers live in the informers, which outlive the scheduler task.
    let weak = Arc::downgrade(&scheduler);
    let pods = Arc::downgrade(&ctx.pods);
    ctx.pods.on_change(move |change| {
        let Some(scheduler) = weak.upgrade() else {
            return;
        };
        let now = Instant::now();
        match change {
            Change::Applied { new, .. } => {
                let shared = || {
                    let meta = &new.metadata;
                    pods.upgrade()
                        .and_then(|informer| {
                            informer.get(
                                meta.namespace.as_deref(),
                                meta.name.as_deref().unwrap_or(""),
                            )
                        })
                        .filter(|cached| std::ptr::eq(cached.as_ref(), *new))
                        .unwrap_or_else(|| Arc::new((*new).clone()))
                };
                scheduler.state.pod_changed(new, shared, now);
            }
            Change::Deleted(old) => scheduler.state.pod_deleted(old, now),
        }
    });
    let weak = Arc::downgrade(&scheduler);
    let nodes = Arc::downgrade(&ctx.nodes);
    ctx.nodes.on_change(move |change| {
        let Some(scheduler) = weak.upgrade() else {
            return;
        };
        match change {
            Change::Applied { old, new } => {
                let shared = nodes
                    .upgrade()
                    .and_then(|informer| {
                        informer.get(None, new.metadata.name.as_deref().unwrap_or(""))
                    })
                    .filter(|cached| std::ptr::eq(cached.as_ref(), *new))
                    .unwrap_or_else(|| Arc::new((*new).clone()));
                scheduler.state.node_changed(*old, shared, Instant::now());
            }
            Change::Deleted(old) => scheduler.state.node_deleted(old),
        }
    });
    tasks.spawn(scheduler.run());
}

impl Scheduler {
    async fn run(self: Arc<Self>) {
        // Every bound pod must be counted before the first decision.
        self.ctx.pods.wait_synced().await;
        self.ctx.nodes.wait_synced().await;
        tracing::info!(
            nodes = self.state.cache().node_count(),
            pending = self.state.queue().len(),
            "scheduler started"
        );
        let mut rng = StdRng::from_os_rng();
        let mut scratch = Scratch::default();
        // Bindings and status writes; dropped (aborted) with this task.
        let mut background = JoinSet::new();
        let mut in_a_row = 0;
        loop {
            let popped = self.next_pod().await;
            while background.try_join_next().is_some() {}
            let Some(pod) = self.current(&popped) else {
                self.state.queue().delete(&popped.key);
                continue;
            };
            let Ok(permit) = self.binds.clone().acquire_owned().await else {
                return;
            };
            let outcome = cycle::schedule_one(
                &mut self.state.cache(),
                &popped.key,
                &pod,
                &mut scratch,
                &mut rng,
            );
            match outcome {
                Outcome::Assumed(node) => {
                    background.spawn(self.clone().bind(popped.key, pod, node, permit));
                }
                Outcome::Unschedulable(message) => {
                    drop(permit);
                    METRICS.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    self.state
                        .queue()
                        .unschedulable(&popped.key, popped.cycle, Instant::now());
                    self.report_unschedulable(&pod, message, &mut background);
                }
            }
            in_a_row += 1;
            if in_a_row >= CYCLES_BETWEEN_YIELDS {
                in_a_row = 0;
                tokio::task::yield_now().await;
            }
        }
    }

    /// Waits for the next pod to try.
    async fn next_pod(&self) -> Popped {
        loop {
            let wakeup = {
                let mut queue = self.state.queue();
                let now = Instant::now();
                queue.flush(now);
                if let Some(popped) = queue.pop(now) {
                    return popped;
                }
                queue.next_wakeup()
            };
            let wait = wakeup
                .map(|at| at.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            tokio::select! {
                _ = self.state.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The informer's current version of a popped pod, if it still needs scheduling.
    fn current(&self, popped: &Popped) -> Option<Arc<Pod>> {
        let meta = &popped.pod.metadata;
        let pod = self.ctx.pods.get(
            meta.namespace.as_deref(),
            meta.name.as_deref().unwrap_or(""),
        )?;
        needs_scheduling(&pod).then_some(pod)
    }

    async fn bind(
        self: Arc<Self>,
        key: String,
        pod: Arc<Pod>,
        node: String,
        _permit: OwnedSemaphorePermit,
    ) {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or("");
        match self.ctx.client.bind(namespace, name, &node).await {
            Ok(()) => {
                METRICS.scheduled.fetch_add(1, Ordering::Relaxed);
                self.events.normal(
                    &*pod,
                    "Scheduled",
                    format!("Successfully assigned {namespace}/{name} to {node}"),
                );
                self.state.queue().done(&key);
            }
            Err(e) => {
                METRICS.bind_errors.fetch_add(1, Ordering::Relaxed);
                tracing::info!(pod = key, node, code = e.code, error = %e.message, "binding failed");
                let uid = pod.metadata.uid.as_deref().unwrap_or("");
                self.state.cache().forget(&key, uid);
                let still_pending = self
                    .ctx
                    .pods
                    .get(Some(namespace), name)
                    .filter(|p| needs_scheduling(p));
                let mut queue = self.state.queue();
                match still_pending {
                    Some(current) => queue.retry(&key, current, Instant::now()),
                    None => queue.delete(&key),
                }
                drop(queue);
                self.state.wake.notify_one();
            }
        }
    }

    /// Tells the user why a pod waits: a FailedScheduling event, and the PodScheduled
    /// condition (written only when it changes).
    fn report_unschedulable(&self, pod: &Arc<Pod>, message: String, background: &mut JoinSet<()>) {
        tracing::debug!(pod = key_of(pod.as_ref()), message, "unschedulable");
        self.events
            .warning(pod.as_ref(), "FailedScheduling", message.clone());
        if marked_unschedulable(pod, &message) {
            return;
        }
        let client = self.ctx.client.clone();
        let permits = self.status_writes.clone();
        let pod = pod.clone();
        background.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let uid = pod.metadata.uid.clone();
            let result = client
                .update::<Pod, _>(
                    pod.metadata.namespace.as_deref(),
                    pod.metadata.name.as_deref().unwrap_or(""),
                    Some("status"),
                    |current| current.metadata.uid == uid && mark_unschedulable(current, &message),
                )
                .await;
            match result {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => tracing::info!(pod = key_of(pod.as_ref()), error = %e.message, "could not set PodScheduled"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::cache::tests::{bound, node, pod};
    use super::queue::Place;
    use super::*;

    fn pending(state: &State, name: &str, now: Instant) -> Popped {
        let p = Arc::new(pod(name, 100, 0, None));
        state.pod_changed(&p, || p.clone(), now);
        state.queue().pop(now).expect("queued")
    }

    #[test]
    fn node_events_move_unschedulable_pods_back() {
        let state = State::default();
        let t0 = Instant::now();
        let popped = pending(&state, "a", t0);
        state.queue().unschedulable(&popped.key, popped.cycle, t0);
        let later = t0 + Duration::from_secs(2);

        let n = node("n1", 1000, 1024);
        state.node_changed(None, Arc::new(n.clone()), later);
        assert_eq!(state.queue().place("default/a"), Some(Place::Active));
        let popped = state.queue().pop(later).unwrap();
        state
            .queue()
            .unschedulable(&popped.key, popped.cycle, later);

        // A heartbeat does not help.
        let mut heartbeat = n.clone();
        heartbeat
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .last_heartbeat_time = Some(Time(jiff::Timestamp::now()));
        let much_later = later + Duration::from_secs(20);
        state.node_changed(Some(&n), Arc::new(heartbeat.clone()), much_later);
        assert_eq!(state.queue().place("default/a"), Some(Place::Unschedulable));

        // More allocatable does.
        let mut bigger = heartbeat.clone();
        bigger
            .status
            .as_mut()
            .unwrap()
            .allocatable
            .as_mut()
            .unwrap()
            .insert("cpu".into(), Quantity("8".into()));
        state.node_changed(Some(&heartbeat), Arc::new(bigger), much_later);
        assert_eq!(state.queue().place("default/a"), Some(Place::Active));
        assert_eq!(
            state.cache().node("n1").unwrap().allocatable.milli_cpu,
            8000
        );
    }

    #[test]
    fn pods_going_away_free_room_and_move_unschedulable_pods_back() {
        let state = State::default();
        let t0 = Instant::now();
        state.node_changed(None, Arc::new(node("n1", 1000, 1024)), t0);
        let running = bound(pod("running", 900, 0, None), "n1");
        state.pod_changed(&running, || Arc::new(running.clone()), t0);
        assert_eq!(state.cache().node("n1").unwrap().requested.milli_cpu, 900);
        let popped = pending(&state, "a", t0);
        state.queue().unschedulable(&popped.key, popped.cycle, t0);

        // The running pod finishes: its requests no longer count and the waiting pod moves.
        let mut finished = running.clone();
        finished.status.get_or_insert_default().phase = Some("Succeeded".into());
        let later = t0 + Duration::from_secs(2);
        state.pod_changed(&finished, || Arc::new(finished.clone()), later);
        assert_eq!(state.cache().node("n1").unwrap().requested.milli_cpu, 0);
        assert_eq!(state.queue().place("default/a"), Some(Place::Active));
        state.pod_deleted(&finished, later);
    }

    #[test]
    fn only_our_unbound_live_pods_are_queued() {
        let state = State::default();
        let t0 = Instant::now();
        let mut other = pod("other", 0, 0, None);
        other.spec.as_mut().unwrap().scheduler_name = Some("my-scheduler".into());
        state.pod_changed(&other, || Arc::new(other.clone()), t0);
        let mut deleting = pod("deleting", 0, 0, None);
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        state.pod_changed(&deleting, || Arc::new(deleting.clone()), t0);
        let mut named = pod("named", 0, 0, None);
        named.spec.as_mut().unwrap().scheduler_name = Some(SCHEDULER_NAME.into());
        state.pod_changed(&named, || Arc::new(named.clone()), t0);
        assert_eq!(state.queue().len(), 1);
        assert_eq!(state.queue().place("default/named"), Some(Place::Active));
        // Seen bound: leaves the queue, counted in the cache.
        let named_bound = bound(named, "n1");
        state.pod_changed(&named_bound, || Arc::new(named_bound.clone()), t0);
        assert!(state.queue().is_empty());
        assert_eq!(state.cache().pod_node("default/named"), Some("n1"));
    }

    #[test]
    fn the_unschedulable_condition_is_written_once() {
        let mut p = pod("a", 0, 0, None);
        assert!(mark_unschedulable(
            &mut p,
            "0/1 nodes are available: 1 Insufficient cpu."
        ));
        assert!(!mark_unschedulable(
            &mut p,
            "0/1 nodes are available: 1 Insufficient cpu."
        ));
        let conditions = p.status.as_ref().unwrap().conditions.as_ref().unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].type_, "PodScheduled");
        assert_eq!(conditions[0].status, "False");
        assert_eq!(conditions[0].reason.as_deref(), Some("Unschedulable"));
        assert!(mark_unschedulable(
            &mut p,
            "no nodes available to schedule pods"
        ));
        assert_eq!(
            p.status.as_ref().unwrap().conditions.as_ref().unwrap()[0]
                .message
                .as_deref(),
            Some("no nodes available to schedule pods")
        );
        let mut bound_meanwhile = bound(pod("b", 0, 0, None), "n1");
        assert!(!mark_unschedulable(&mut bound_meanwhile, "x"));
    }
}

#[cfg(test)]
mod api_tests {
    use std::collections::BTreeMap;

    use super::cache::tests::{node, pod};
    use super::*;
    use crate::apiserver::allocator::ServiceAllocator;
    use crate::apiserver::storage::Api;
    use crate::controllers::ControllerConfig;
    use crate::store::embedded::EmbeddedStore;

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

    /// Registers a Ready node (status written through the status subresource).
    async fn add_node(ctx: &Context, node: Node) {
        let name = node.metadata.name.clone().unwrap();
        let status = node.status.clone();
        ctx.client.create(&node).await.unwrap();
        ctx.client
            .update::<Node, _>(None, &name, Some("status"), |n| {
                n.status = status.clone();
                true
            })
            .await
            .unwrap();
    }

    async fn add_pod(ctx: &Context, mut pod: Pod) {
        pod.metadata.uid = None;
        pod.metadata.owner_references = None;
        pod.spec.as_mut().unwrap().containers[0].image = Some("keel.local/echo:a".into());
        ctx.client.create(&pod).await.unwrap();
    }

    async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        for _ in 0..1000 {
            if let Some(value) = check() {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}");
    }

    fn node_of(ctx: &Context, name: &str) -> Option<String> {
        ctx.pods
            .get(Some("default"), name)?
            .spec
            .as_ref()?
            .node_name
            .clone()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pods_are_bound_through_the_api_and_unschedulable_ones_say_why() {
        let world = world().await;
        let ctx = &world.ctx;
        add_node(ctx, node("n1", 2000, 4096)).await;
        add_node(ctx, node("n2", 2000, 4096)).await;
        for i in 0..4 {
            add_pod(ctx, pod(&format!("web-{i}"), 500, 256, None)).await;
        }
        let placed = eventually("four pods bound", || {
            (0..4)
                .map(|i| node_of(ctx, &format!("web-{i}")))
                .collect::<Option<Vec<String>>>()
        })
        .await;
        // Least-allocated spreads them two and two.
        assert_eq!(
            placed.iter().filter(|n| *n == "n1").count(),
            2,
            "{placed:?}"
        );

        let mut picky = pod("picky", 100, 0, None);
        picky.spec.as_mut().unwrap().node_selector =
            Some(BTreeMap::from([("disk".to_string(), "ssd".to_string())]));
        add_pod(ctx, picky).await;
        let message = eventually("picky marked unschedulable", || {
            let pod = ctx.pods.get(Some("default"), "picky")?;
            let condition = pod
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "PodScheduled")?
                .clone();
            (condition.status == "False").then_some(condition.message?)
        })
        .await;
        assert_eq!(
            message,
            "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
        );

        // Labelling a node lets it run there.
        ctx.client
            .update::<Node, _>(None, "n2", None, |n| {
                n.metadata
                    .labels
                    .get_or_insert_default()
                    .insert("disk".into(), "ssd".into());
                true
            })
            .await
            .unwrap();
        let placed = eventually("picky bound", || node_of(ctx, "picky")).await;
        assert_eq!(placed, "n2");
        assert!(METRICS.stats().scheduled >= 5);
    }
}
