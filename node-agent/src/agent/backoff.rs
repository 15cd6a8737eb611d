//! Restart and image-pull back-off, as kubelet's `flowcontrol.Backoff`: per key, the delay
//! starts at 10 s and doubles up to 5 min; an entry untouched for twice the maximum (10 min,
//! e.g. a container that ran that long) starts over.
//!
//! Kubelet's use (`doBackOff`): when a container has to be restarted, the restart waits while
//! `in_backoff_since(finished_at)`; otherwise `next(finished_at)` records the restart and
//! grows the delay. So restarts happen after 0 s, 10 s, 20 s, 40 s, ... of the exits.
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// kubelet's initial container restart back-off.
pub const INITIAL: Duration = Duration::from_secs(10);
/// kubelet's maximum container restart back-off.
pub const MAX: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug)]
struct Entry {
    delay: Duration,
    last_update: SystemTime,
}

/// Back-off delays by key (a container name, or `pull/<container>`).
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    entries: HashMap<String, Entry>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(INITIAL, MAX)
    }
}

fn elapsed(from: SystemTime, to: SystemTime) -> Duration {
    to.duration_since(from).unwrap_or(Duration::ZERO)
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            entries: HashMap::new(),
        }
    }

    fn expired(&self, entry: &Entry, at: SystemTime) -> bool {
        elapsed(entry.last_update, at) > self.max * 2
    }

    /// The current delay of `key` (zero when it has none).
    pub fn get(&self, key: &str) -> Duration {
        self.entries.get(key).map_or(Duration::ZERO, |e| e.delay)
    }

    /// Records an event at `at` (e.g. a restart after an exit at `at`): starts or grows the
    /// delay.
    pub fn next(&mut self, key: &str, at: SystemTime) {
        let initial = self.initial;
        let max = self.max;
        let fresh = match self.entries.get(key) {
            None => true,
            Some(entry) => self.expired(entry, at),
        };
        let entry = self.entries.entry(key.to_string()).or_insert(Entry {
            delay: initial,
            last_update: at,
        });
        entry.delay = if fresh {
            initial
        } else {
            (entry.delay * 2).min(max)
        };
        entry.last_update = at;
    }

    /// Whether `now` is still within the delay that started at `since` (e.g. the exit).
    pub fn in_backoff_since(&self, key: &str, since: SystemTime, now: SystemTime) -> bool {
        match self.entries.get(key) {
            None => false,
            Some(entry) if self.expired(entry, now) => false,
            Some(entry) => elapsed(since, now) < entry.delay,
        }
    }

    /// When the delay that started at `since` ends.
    pub fn until(&self, key: &str, since: SystemTime) -> SystemTime {
        since + self.get(key)
    }

    /// Forgets a key.
    pub fn reset(&mut self, key: &str) {
        self.entries.remove(key);
    }
}

/// Formats a delay as Go's `time.Duration` does for whole seconds and minutes (`10s`,
/// `2m40s`, `5m0s`), as kubelet's back-off messages show it.
pub fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}h{}m{}s", secs / 3600, secs % 3600 / 60, secs % 60)
    } else if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    /// Simulates a container that exits right after each start; returns the restart times.
    fn crash_loop(exits: usize) -> Vec<u64> {
        let mut backoff = Backoff::default();
        let mut now = 0;
        let mut restarts = Vec::new();
        for _ in 0..exits {
            // The container exits at `now`; the agent checks every second until it may restart.
            let exited = now;
            while backoff.in_backoff_since("c", t(exited), t(now)) {
                now += 1;
            }
            backoff.next("c", t(exited));
            restarts.push(now);
            now += 1;
        }
        restarts
    }

    #[test]
    fn restarts_wait_10s_doubling_to_5min() {
        let restarts = crash_loop(9);
        let waits: Vec<u64> = restarts.windows(2).map(|w| w[1] - w[0] - 1).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(restarts[0], 0, "the first restart is immediate");
    }

    #[test]
    fn long_runs_reset_the_delay() {
        let mut backoff = Backoff::default();
        backoff.next("c", t(0));
        backoff.next("c", t(5));
        backoff.next("c", t(30));
        assert_eq!(backoff.get("c"), Duration::from_secs(40));
        // The container then ran for over 10 minutes before exiting.
        let exit = t(30 + 601);
        assert!(!backoff.in_backoff_since("c", exit, exit));
        backoff.next("c", exit);
        assert_eq!(backoff.get("c"), INITIAL);
    }

    #[test]
    fn keys_are_independent() {
        let mut backoff = Backoff::default();
        backoff.next("a", t(0));
        backoff.next("a", t(1));
        assert_eq!(backoff.get("a"), Duration::from_secs(20));
        assert_eq!(backoff.get("b"), Duration::ZERO);
        assert!(!backoff.in_backoff_since("b", t(1), t(1)));
        assert!(backoff.in_backoff_since("a", t(1), t(20)));
        assert!(!backoff.in_backoff_since("a", t(1), t(21)));
        assert_eq!(backoff.until("a", t(1)), t(21));
        backoff.reset("a");
        assert_eq!(backoff.get("a"), Duration::ZERO);
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_secs(160)), "2m40s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
    }
}
