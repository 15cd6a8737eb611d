//! The scheduling queue, as kube-scheduler's `PriorityQueue`: pending pods wait in an active
//! heap (higher `spec.priority` first, then oldest first); a pod no node can run waits in an
//! unschedulable set until something changes in the cluster (or a minute passes); a pod whose
//! attempt failed for another reason, or that was unschedulable when such a change came, waits
//! out a back-off (1 s doubling per attempt, at most 10 s). Pods with scheduling gates are
//! held until the gates are removed.
//!
//! The queue is plain data: time is passed in, so the moves are testable without waiting.
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

/// The back-off after a pod's first failed attempt.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// The longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long an unschedulable pod waits without any cluster change before it is tried again.
pub const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(60);

/// Where a queued pod is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Ready to be tried.
    Active,
    /// Waiting out its back-off.
    Backoff,
    /// Waiting for a cluster change.
    Unschedulable,
    /// Held by scheduling gates.
    Gated,
    /// Being scheduled or bound.
    InFlight,
}

struct Entry {
    pod: Arc<Pod>,
    place: Place,
    attempts: u32,
    last_attempt: Option<Instant>,
    /// Changes on every move, so stale heap and list items are recognized and skipped.
    version: u64,
}

/// A pod taken from the queue for a scheduling attempt.
#[derive(Debug)]
pub struct Popped {
    pub key: String,
    pub pod: Arc<Pod>,
    /// The scheduling cycle of this attempt (see [`SchedulingQueue::unschedulable`]).
    pub cycle: u64,
}

#[derive(PartialEq, Eq)]
struct ActiveItem {
    priority: i32,
    /// When the pod entered the queue (its creation for a first attempt), in ns since the epoch.
    since: i128,
    version: u64,
    key: String,
}

impl Ord for ActiveItem {
    /// The heap's greatest is the next to try: highest priority, then earliest, then first in.
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.since.cmp(&self.since))
            .then_with(|| other.version.cmp(&self.version))
    }
}

impl PartialOrd for ActiveItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The queue of pods waiting for a node.
pub struct SchedulingQueue {
    entries: HashMap<String, Entry>,
    active: BinaryHeap<ActiveItem>,
    backoff: BinaryHeap<Reverse<(Instant, u64, String)>>,
    /// Unschedulable pods in the order they became so: (since, version, key).
    unschedulable: VecDeque<(Instant, u64, String)>,
    next_version: u64,
    scheduling_cycle: u64,
    /// The scheduling cycle when the last cluster change came.
    move_request_cycle: u64,
    /// A reference point mapping `Instant`s to wall-clock time, for the active order.
    epoch: (Instant, i128),
}

fn has_gates(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| !g.is_empty())
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// Whether an update may change where a pod can run (not just its status).
fn spec_or_labels_changed(old: &Pod, new: &Pod) -> bool {
    old.spec != new.spec
        || old.metadata.labels != new.metadata.labels
        || old.metadata.annotations != new.metadata.annotations
}

/// How long a pod waits after its `attempts`-th failure.
pub fn backoff_duration(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    INITIAL_BACKOFF
        .saturating_mul(1u32 << doublings)
        .min(MAX_BACKOFF)
}

impl SchedulingQueue {
    pub fn new(now: Instant) -> SchedulingQueue {
        SchedulingQueue {
            entries: HashMap::new(),
            active: BinaryHeap::new(),
            backoff: BinaryHeap::new(),
            unschedulable: VecDeque::new(),
            next_version: 0,
            scheduling_cycle: 0,
            move_request_cycle: 0,
            epoch: (now, jiff::Timestamp::now().as_nanosecond()),
        }
    }

    fn wall(&self, now: Instant) -> i128 {
        self.epoch.1 + now.saturating_duration_since(self.epoch.0).as_nanos() as i128
    }

    fn bump(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    /// Where a pod is, if queued.
    pub fn place(&self, key: &str) -> Option<Place> {
        self.entries.get(key).map(|e| e.place)
    }

    /// How many pods are queued (in any place).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn activate(&mut self, key: &str, now: Instant) {
        let version = self.bump();
        let wall = self.wall(now);
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        entry.place = Place::Active;
        entry.version = version;
        // A first attempt goes by creation time (FIFO by creation); a retry queues behind.
        let created = entry
            .pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_nanosecond());
        let since = match (entry.attempts, created) {
            (0, Some(created)) => created,
            _ => wall,
        };
        self.active.push(ActiveItem {
            priority: priority(&entry.pod),
            since,
            version,
            key: key.to_string(),
        });
    }

    fn backoff_until(entry: &Entry) -> Option<Instant> {
        let last = entry.last_attempt?;
        (entry.attempts > 0).then(|| last + backoff_duration(entry.attempts))
    }

    /// Into the back-off heap, or active at once when its back-off is over.
    fn back_off(&mut self, key: &str, now: Instant) {
        let version = self.bump();
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        match Self::backoff_until(entry).filter(|until| *until > now) {
            Some(until) => {
                entry.place = Place::Backoff;
                entry.version = version;
                self.backoff
                    .push(Reverse((until, version, key.to_string())));
            }
            None => self.activate(key, now),
        }
    }

    /// Adds a pending pod, or takes a newer version of a queued one. An unschedulable pod
    /// whose spec or labels changed is tried again.
    pub fn add(&mut self, key: &str, pod: Arc<Pod>, now: Instant) {
        let gated = has_gates(&pod);
        let Some(entry) = self.entries.get_mut(key) else {
            self.entries.insert(
                key.to_string(),
                Entry {
                    pod,
                    place: Place::Gated,
                    attempts: 0,
                    last_attempt: None,
                    version: 0,
                },
            );
            if !gated {
                self.activate(key, now);
            }
            return;
        };
        let old = std::mem::replace(&mut entry.pod, pod);
        match entry.place {
            Place::InFlight => {}
            _ if gated => entry.place = Place::Gated,
            Place::Gated => self.activate(key, now),
            Place::Unschedulable if spec_or_labels_changed(&old, &entry.pod) => {
                self.back_off(key, now)
            }
            Place::Active | Place::Backoff | Place::Unschedulable => {}
        }
    }

    /// Drops a pod (deleted, bound, or no longer this scheduler's).
    pub fn delete(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Takes the next pod to try, if any is active.
    pub fn pop(&mut self, now: Instant) -> Option<Popped> {
        while let Some(item) = self.active.pop() {
            let Some(entry) = self.entries.get_mut(&item.key) else {
                continue;
            };
            if entry.place != Place::Active || entry.version != item.version {
                continue;
            }
            self.scheduling_cycle += 1;
            entry.place = Place::InFlight;
            entry.attempts += 1;
            entry.last_attempt = Some(now);
            return Some(Popped {
                key: item.key,
                pod: entry.pod.clone(),
                cycle: self.scheduling_cycle,
            });
        }
        None
    }

    /// A pod no node could run in the attempt of `cycle`: it waits for a cluster change, or
    /// backs off if a change came while it was being tried (it may have missed it).
    pub fn unschedulable(&mut self, key: &str, cycle: u64, now: Instant) {
        if self.place(key) != Some(Place::InFlight) {
            return;
        }
        if self.move_request_cycle >= cycle {
            // A change came while the pod was being tried: it may have missed it.
            self.back_off(key, now);
            return;
        }
        let version = self.bump();
        if let Some(entry) = self.entries.get_mut(key) {
            entry.place = Place::Unschedulable;
            entry.version = version;
        }
        self.unschedulable
            .push_back((now, version, key.to_string()));
    }

    /// A pod whose attempt failed for another reason (its binding, an API error): it backs
    /// off. A pod no longer queued (its entry was dropped meanwhile) comes back as `pod`.
    pub fn retry(&mut self, key: &str, pod: Arc<Pod>, now: Instant) {
        match self.entries.get_mut(key) {
            Some(entry) => entry.pod = pod,
            None => {
                self.entries.insert(
                    key.to_string(),
                    Entry {
                        pod,
                        place: Place::InFlight,
                        attempts: 1,
                        last_attempt: Some(now),
                        version: 0,
                    },
                );
            }
        }
        self.back_off(key, now);
    }

    /// A pod's binding went through: it leaves the queue.
    pub fn done(&mut self, key: &str) {
        if self.place(key) == Some(Place::InFlight) {
            self.entries.remove(key);
        }
    }

    fn is_current(&self, key: &str, version: u64, place: Place) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| e.version == version && e.place == place)
    }

    /// Something changed that may let unschedulable pods run (a node came or changed, a pod
    /// went): they all go back to active (or to back-off if theirs is not over).
    pub fn move_all(&mut self, now: Instant) {
        self.move_request_cycle = self.scheduling_cycle;
        let waiting = std::mem::take(&mut self.unschedulable);
        for (_, version, key) in waiting {
            if self.is_current(&key, version, Place::Unschedulable) {
                self.back_off(&key, now);
            }
        }
    }

    /// Moves the pods whose back-off is over to active, and retries the pods unschedulable
    /// for a minute.
    pub fn flush(&mut self, now: Instant) {
        while let Some(Reverse((until, version, key))) = self.backoff.peek() {
            if *until > now {
                break;
            }
            let (version, key) = (*version, key.clone());
            self.backoff.pop();
            if self.is_current(&key, version, Place::Backoff) {
                self.activate(&key, now);
            }
        }
        while let Some((since, version, key)) = self.unschedulable.front() {
            let current = self.is_current(key, *version, Place::Unschedulable);
            if current && *since + UNSCHEDULABLE_RETRY > now {
                break;
            }
            let key = key.clone();
            self.unschedulable.pop_front();
            if current {
                self.back_off(&key, now);
            }
        }
    }

    /// When [`SchedulingQueue::flush`] may next have something to move.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let backoff = self.backoff.peek().map(|Reverse((until, _, _))| *until);
        let unschedulable = self
            .unschedulable
            .front()
            .map(|(since, _, _)| *since + UNSCHEDULABLE_RETRY);
        match (backoff, unschedulable) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSchedulingGate, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;

    fn pod(name: &str, created_s: i64, priority: Option<i32>) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                creation_timestamp: Some(Time(
                    jiff::Timestamp::from_second(1_700_000_000 + created_s).unwrap(),
                )),
                ..Default::default()
            },
            spec: Some(PodSpec {
                priority,
                ..Default::default()
            }),
            status: None,
        })
    }

    fn pop_key(queue: &mut SchedulingQueue, now: Instant) -> Option<String> {
        queue.pop(now).map(|p| p.key)
    }

    #[test]
    fn higher_priority_first_then_oldest_first() {
        let now = Instant::now();
        let mut queue = SchedulingQueue::new(now);
        queue.add("default/young", pod("young", 20, None), now);
        queue.add("default/old", pod("old", 10, None), now);
        queue.add("default/vip", pod("vip", 30, Some(1000)), now);
        queue.add("default/old", pod("old", 10, None), now); // an update: still one entry
        assert_eq!(pop_key(&mut queue, now).as_deref(), Some("default/vip"));
        assert_eq!(pop_key(&mut queue, now).as_deref(), Some("default/old"));
        assert_eq!(pop_key(&mut queue, now).as_deref(), Some("default/young"));
        assert_eq!(pop_key(&mut queue, now), None);
        assert_eq!(queue.len(), 3);
    }

    #[test]
    fn unschedulable_pods_come_back_on_a_cluster_change_after_their_backoff() {
        let t0 = Instant::now();
        let mut queue = SchedulingQueue::new(t0);
        queue.add("default/a", pod("a", 0, None), t0);
        let popped = queue.pop(t0).unwrap();
        queue.unschedulable("default/a", popped.cycle, t0);
        assert_eq!(queue.place("default/a"), Some(Place::Unschedulable));
        queue.flush(t0 + Duration::from_secs(5));
        assert_eq!(queue.place("default/a"), Some(Place::Unschedulable));

        // A change within the first back-off (1 s): backs off, then becomes active.
        queue.move_all(t0 + Duration::from_millis(500));
        assert_eq!(queue.place("default/a"), Some(Place::Backoff));
        assert_eq!(queue.next_wakeup(), Some(t0 + Duration::from_secs(1)));
        queue.flush(t0 + Duration::from_secs(1));
        assert_eq!(queue.place("default/a"), Some(Place::Active));

        // Second failure; a change after its back-off (2 s) makes it active at once.
        let t1 = t0 + Duration::from_secs(3);
        let popped = queue.pop(t1).unwrap();
        queue.unschedulable("default/a", popped.cycle, t1);
        queue.move_all(t1 + Duration::from_secs(3));
        assert_eq!(queue.place("default/a"), Some(Place::Active));
    }

    #[test]
    fn unschedulable_pods_are_retried_after_a_minute_without_changes() {
        let t0 = Instant::now();
        let mut queue = SchedulingQueue::new(t0);
        queue.add("default/a", pod("a", 0, None), t0);
        let popped = queue.pop(t0).unwrap();
        queue.unschedulable("default/a", popped.cycle, t0);
        assert_eq!(queue.next_wakeup(), Some(t0 + UNSCHEDULABLE_RETRY));
        queue.flush(t0 + UNSCHEDULABLE_RETRY - Duration::from_millis(1));
        assert_eq!(queue.place("default/a"), Some(Place::Unschedulable));
        queue.flush(t0 + UNSCHEDULABLE_RETRY);
        assert_eq!(queue.place("default/a"), Some(Place::Active));
    }

    #[test]
    fn a_change_during_the_attempt_is_not_missed() {
        let t0 = Instant::now();
        let mut queue = SchedulingQueue::new(t0);
        queue.add("default/a", pod("a", 0, None), t0);
        let popped = queue.pop(t0).unwrap();
        queue.move_all(t0); // a node came while the pod was being tried
        queue.unschedulable("default/a", popped.cycle, t0);
        assert_eq!(queue.place("default/a"), Some(Place::Backoff));
    }

    #[test]
    fn failed_bindings_back_off_doubling_up_to_ten_seconds() {
        assert_eq!(backoff_duration(1), Duration::from_secs(1));
        assert_eq!(backoff_duration(2), Duration::from_secs(2));
        assert_eq!(backoff_duration(4), Duration::from_secs(8));
        assert_eq!(backoff_duration(5), MAX_BACKOFF);
        assert_eq!(backoff_duration(500), MAX_BACKOFF);

        let t0 = Instant::now();
        let mut queue = SchedulingQueue::new(t0);
        queue.add("default/a", pod("a", 0, None), t0);
        queue.pop(t0).unwrap();
        queue.retry("default/a", pod("a", 0, None), t0);
        assert_eq!(queue.place("default/a"), Some(Place::Backoff));
        assert!(queue.pop(t0).is_none());
        queue.flush(t0 + Duration::from_secs(1));
        assert_eq!(
            pop_key(&mut queue, t0 + Duration::from_secs(1)).as_deref(),
            Some("default/a")
        );
        queue.done("default/a");
        assert!(queue.is_empty());
        // A pod whose entry went meanwhile comes back too.
        queue.retry("default/b", pod("b", 0, None), t0);
        assert_eq!(queue.place("default/b"), Some(Place::Backoff));
    }

    #[test]
    fn updates_move_unschedulable_pods_only_when_the_spec_changes() {
        let t0 = Instant::now();
        let mut queue = SchedulingQueue::new(t0);
        queue.add("default/a", pod("a", 0, None), t0);
        let popped = queue.pop(t0).unwrap();
        queue.unschedulable("default/a", popped.cycle, t0);
        let mut status_only = (*pod("a", 0, None)).clone();
        status_only.status = Some(Default::default());
        queue.add(
            "default/a",
            Arc::new(status_only),
            t0 + Duration::from_secs(2),
        );
        assert_eq!(queue.place("default/a"), Some(Place::Unschedulable));
        let mut relabelled = (*pod("a", 0, None)).clone();
        relabelled.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
        queue.add(
            "default/a",
            Arc::new(relabelled),
            t0 + Duration::from_secs(2),
        );
        assert_eq!(queue.place("default/a"), Some(Place::Active));
    }

    #[test]
    fn gated_pods_wait_until_their_gates_are_removed() {
        let t0 = Instant::now();
        let mut queue = SchedulingQueue::new(t0);
        let mut gated = (*pod("a", 0, None)).clone();
        gated.spec.as_mut().unwrap().scheduling_gates = Some(vec![PodSchedulingGate {
            name: "example.com/wait".into(),
        }]);
        queue.add("default/a", Arc::new(gated), t0);
        assert_eq!(queue.place("default/a"), Some(Place::Gated));
        assert!(queue.pop(t0).is_none());
        queue.add("default/a", pod("a", 0, None), t0);
        assert_eq!(pop_key(&mut queue, t0).as_deref(), Some("default/a"));
    }

    #[test]
    fn deleted_pods_are_skipped() {
        let t0 = Instant::now();
        let mut queue = SchedulingQueue::new(t0);
        queue.add("default/a", pod("a", 0, None), t0);
        queue.add("default/b", pod("b", 1, None), t0);
        queue.delete("default/a");
        assert_eq!(pop_key(&mut queue, t0).as_deref(), Some("default/b"));
        assert!(queue.pop(t0).is_none());
    }
}
