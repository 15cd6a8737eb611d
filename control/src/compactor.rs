//! Periodic compaction of the store's history, like kube-apiserver's etcd compactor.
//!
//! Every interval the compactor reads the current revision and compacts the history up to the
//! revision it read at the previous tick. A revision therefore stays available for at least one
//! interval after it was superseded: long enough for a watcher that lost its connection to
//! resume, while the history (and, on the embedded store, the cost of a list at a past
//! revision) stays bounded. Older versions get 410 Expired and clients relist.
//!
//! The trait's `compact(r)` makes `r` itself unavailable, while etcd's compaction (what
//! kube-apiserver relies on) keeps the state *at* `r` readable. The compactor calls
//! `compact(r - 1)`, so a client holding the revision read at the previous tick, which is
//! the latest one when nothing was written since, can still watch from it.
//!
//! Several API servers on one etcd each compact on their own; that is harmless (compacting to an
//! older revision than etcd already has is a no-op).
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::store::Store;

/// kube-apiserver's default `--etcd-compaction-interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Starts compacting `store` every `interval`; `None` when `interval` is zero (disabled).
/// The task runs until it is aborted.
pub fn spawn(store: Arc<dyn Store>, interval: Duration) -> Option<JoinHandle<()>> {
    if interval.is_zero() {
        tracing::info!("store compaction disabled");
        return None;
    }
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        backend = store.backend(),
        "compacting the store's history periodically"
    );
    Some(tokio::spawn(run(store, interval)))
}

async fn run(store: Arc<dyn Store>, interval: Duration) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    // A slow compaction (or a stalled backend) must not cause a burst of catch-up ticks.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut compactor = Compactor::default();
    loop {
        ticker.tick().await;
        compactor.tick(store.as_ref()).await;
    }
}

/// The compactor's memory between ticks.
#[derive(Debug, Default)]
struct Compactor {
    /// The revision read at the previous tick.
    previous: Option<i64>,
    /// The revision last compacted to (nothing to do until there is history past it).
    compacted: i64,
}

impl Compactor {
    /// One tick: compact to the previous tick's revision, then remember the current one.
    async fn tick(&mut self, store: &dyn Store) {
        let current = match store.current_revision().await {
            Ok(revision) => revision,
            Err(e) => {
                tracing::warn!(error = %e, "compaction skipped: reading the current revision failed");
                return;
            }
        };
        if let Some(target) = self.previous.map(|r| r - 1)
            && target > self.compacted
        {
            let started = Instant::now();
            match store.compact(target).await {
                Ok(()) => {
                    self.compacted = target;
                    tracing::info!(
                        revision = target,
                        current,
                        backend = store.backend(),
                        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                        "compacted the store's history"
                    );
                }
                // Retried at the next tick, with that tick's target.
                Err(e) => tracing::warn!(revision = target, error = %e, "compaction failed"),
            }
        }
        self.previous = Some(current);
    }
}

/// Parses a compaction interval: `0` (disabled) or a duration like `5m`, `90s`, `200ms`,
/// `1h30m` or Go's `5m0s`.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let signed: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("invalid duration {text:?} (e.g. 5m, 30s, 200ms, 0): {e}"))?;
    Duration::try_from(signed).map_err(|_| format!("the interval {text:?} is negative"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{ListOptions, StoreError};

    fn at(revision: i64) -> ListOptions {
        ListOptions {
            revision,
            ..Default::default()
        }
    }

    #[test]
    fn intervals_parse_like_the_flag_documents() {
        for (text, want) in [
            ("0", Duration::ZERO),
            ("5m", Duration::from_secs(300)),
            ("5m0s", Duration::from_secs(300)),
            ("90s", Duration::from_secs(90)),
            ("200ms", Duration::from_millis(200)),
            ("1h30m", Duration::from_secs(5400)),
        ] {
            assert_eq!(parse_interval(text), Ok(want), "{text}");
        }
        assert!(parse_interval("soon").is_err());
        assert!(parse_interval("-5m").is_err());
    }

    #[tokio::test]
    async fn each_tick_compacts_to_the_previous_ticks_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let first = store.create("/a", b"1".to_vec()).await.unwrap();
        let second = store.create("/b", b"2".to_vec()).await.unwrap();
        let mut compactor = Compactor::default();

        // The first tick only remembers where the history stands.
        compactor.tick(&store).await;
        assert!(store.list("/", at(first)).await.is_ok());

        // Quiet since: the revision read last time stays readable and watchable.
        compactor.tick(&store).await;
        assert!(matches!(
            store.list("/", at(first)).await,
            Err(StoreError::Compacted { .. })
        ));
        assert!(store.list("/", at(second)).await.is_ok());
        assert!(store.watch("/", second).await.is_ok());

        // Writes since the last tick survive this tick and go at the next one.
        let third = store.create("/c", b"3".to_vec()).await.unwrap();
        compactor.tick(&store).await;
        assert!(store.list("/", at(second)).await.is_ok());
        compactor.tick(&store).await;
        assert!(matches!(
            store.watch("/", second).await.err(),
            Some(StoreError::Compacted { .. })
        ));
        assert!(store.watch("/", third).await.is_ok());
    }
}
