//! The etcd store: the [`Store`] trait on a real etcd cluster through the `etcd-client` crate.
//!
//! Every store key lives at `prefix + key` in etcd (the prefix is used verbatim: with prefix
//! `/keel` the key `/pods/a` is `/keel/pods/a`). etcd already has the semantics the trait
//! describes, so each operation is one request:
//!
//! - `create`: a transaction "if `create_revision(key) == 0` then put";
//! - `update`/`delete`: "if `mod_revision(key) == expected` (or, without an expectation,
//!   `create_revision(key) > 0`) then put/delete, else get", the get telling `NotFound` from
//!   `Conflict`;
//! - `list`: a range `[prefix, prefix + 1)` (the prefix with its last byte incremented), at a
//!   revision, with a limit, starting just after the continue key;
//! - `watch`: a watch of the same range from `after + 1` with previous values; etcd's
//!   compaction notice becomes [`StoreError::Compacted`], progress notifications become
//!   [`WatchEvent::Progress`];
//! - `compact`: a physical compaction (it returns once the history is gone).
//!
//! etcd keeps the state *at* the compacted revision readable, while the trait says reads at or
//! before it fail; the store remembers the highest compacted revision it has seen (its own
//! compactions and those etcd reports) and refuses those reads itself.
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::proto::{PbKeyValue, PbTxnOpResponse};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Txn,
    TxnOp, TxnResponse, WatchOptions,
};

use super::{
    KeyValue, ListOptions, ListResult, Result, Store, StoreError, WatchEvent, WatchStream,
};

/// How long connecting to etcd may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one (non-watch) request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The etcd backend. Cheap to clone (shares the connection).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    /// The highest compacted revision this store knows of.
    compacted: Arc<AtomicI64>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Why an etcd request failed, where callers react differently.
enum Failure {
    /// etcd: "required revision has been compacted".
    Compacted,
    /// etcd: "required revision is a future revision".
    Future,
    Other(StoreError),
}

impl Failure {
    /// As a store error, for callers without a more precise mapping.
    fn into_error(self, what: &str) -> StoreError {
        match self {
            Failure::Compacted => StoreError::Backend(format!("etcd {what}: revision compacted")),
            Failure::Future => StoreError::Backend(format!("etcd {what}: future revision")),
            Failure::Other(e) => e,
        }
    }
}

fn classify(what: &str, e: etcd_client::Error) -> Failure {
    if let etcd_client::Error::GRpcStatus(status) = &e {
        if status
            .message()
            .contains("required revision has been compacted")
        {
            return Failure::Compacted;
        }
        if status
            .message()
            .contains("required revision is a future revision")
        {
            return Failure::Future;
        }
    }
    Failure::Other(StoreError::Backend(format!("etcd {what}: {e}")))
}

/// Runs one etcd request with a deadline.
async fn request<T>(
    what: &str,
    fut: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> std::result::Result<T, Failure> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(classify(what, e)),
        Err(_) => Err(Failure::Other(StoreError::Backend(format!(
            "etcd {what}: no answer within {REQUEST_TIMEOUT:?}"
        )))),
    }
}

/// The end of the range of keys starting with `prefix` (etcd's "prefix + 1"): the prefix with
/// trailing 0xff bytes dropped and its last byte incremented; `[0]` (no end) if nothing is left.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// etcd rejects an empty key; the empty prefix starts at `\0` (the smallest key).
fn range_start(key: Vec<u8>) -> Vec<u8> {
    if key.is_empty() { vec![0] } else { key }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (e.g. `http://127.0.0.1:2379`) and checks
    /// that it answers. Keys are stored under `prefix` (e.g. `/keel`).
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<EtcdStore> {
        if endpoints.is_empty() {
            return Err(StoreError::Backend("no etcd endpoints given".into()));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let client =
            tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(endpoints, Some(options)))
                .await
                .map_err(|_| {
                    StoreError::Backend(format!(
                        "connecting to etcd at {}: no answer within {CONNECT_TIMEOUT:?}",
                        endpoints.join(",")
                    ))
                })?
                .map_err(|e| {
                    StoreError::Backend(format!(
                        "connecting to etcd at {}: {e}",
                        endpoints.join(",")
                    ))
                })?;
        let store = EtcdStore {
            client,
            prefix: prefix.to_string(),
            compacted: Arc::new(AtomicI64::new(0)),
        };
        store.current_revision().await.map_err(|e| {
            StoreError::Backend(format!(
                "etcd at {} does not answer: {e}",
                endpoints.join(",")
            ))
        })?;
        Ok(store)
    }

    /// The prefix under which this store keeps its keys.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(self.prefix.as_bytes());
        full.extend_from_slice(key.as_bytes());
        full
    }

    fn known_compacted(&self) -> i64 {
        self.compacted.load(Ordering::Relaxed)
    }

    fn learn_compacted(&self, revision: i64) {
        self.compacted.fetch_max(revision, Ordering::Relaxed);
    }

    /// The store's view of an etcd key-value pair.
    fn key_value(
        &self,
        key: &[u8],
        value: &[u8],
        create_revision: i64,
        mod_revision: i64,
    ) -> Result<KeyValue> {
        store_key_value(&self.prefix, key, value, create_revision, mod_revision)
    }

    fn pb_key_value(&self, kv: &PbKeyValue) -> Result<KeyValue> {
        self.key_value(&kv.key, &kv.value, kv.create_revision, kv.mod_revision)
    }

    /// A KV client without gRPC's 4 MiB response limit: an unpaged list of 10 000 pods is
    /// about 11 MB (kube-apiserver raises the limit too).
    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(usize::MAX)
    }

    async fn txn(&self, what: &str, txn: Txn) -> Result<TxnResponse> {
        let mut kv = self.kv();
        request(what, kv.txn(txn))
            .await
            .map_err(|f| f.into_error(what))
    }

    /// The key's current state, read by the `else` branch of a failed conditional write.
    fn else_get(&self, resp: &TxnResponse) -> Result<Option<KeyValue>> {
        match resp.0.responses.first().and_then(|op| op.response.as_ref()) {
            Some(PbTxnOpResponse::ResponseRange(range)) => range
                .kvs
                .first()
                .map(|kv| self.pb_key_value(kv))
                .transpose(),
            _ => Err(StoreError::Backend(
                "etcd transaction answered without the expected read".into(),
            )),
        }
    }

    /// The outcome of a failed conditional update/delete: `NotFound` or `Conflict`.
    fn precondition_failure(
        &self,
        key: &str,
        expected: Option<i64>,
        resp: &TxnResponse,
    ) -> StoreError {
        match self.else_get(resp) {
            Err(e) => e,
            Ok(None) => StoreError::NotFound(key.to_string()),
            Ok(Some(current)) => StoreError::Conflict {
                key: key.to_string(),
                expected: expected.unwrap_or(0),
                found: current.mod_revision,
            },
        }
    }

    /// The compare of a conditional update/delete.
    fn precondition(&self, full: &[u8], expected: Option<i64>) -> Compare {
        match expected {
            Some(revision) => Compare::mod_revision(full.to_vec(), CompareOp::Equal, revision),
            None => Compare::create_revision(full.to_vec(), CompareOp::Greater, 0),
        }
    }
}

fn store_key_value(
    prefix: &str,
    key: &[u8],
    value: &[u8],
    create_revision: i64,
    mod_revision: i64,
) -> Result<KeyValue> {
    let key = key.strip_prefix(prefix.as_bytes()).ok_or_else(|| {
        StoreError::Backend(format!(
            "etcd returned key {:?} outside the prefix {prefix:?}",
            String::from_utf8_lossy(key)
        ))
    })?;
    let key = String::from_utf8(key.to_vec()).map_err(|_| {
        StoreError::Backend(format!(
            "etcd key {:?} under {prefix:?} is not UTF-8",
            String::from_utf8_lossy(key)
        ))
    })?;
    Ok(KeyValue {
        key,
        value: value.to_vec(),
        create_revision,
        mod_revision,
    })
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>, what: &str) -> Result<i64> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Backend(format!("etcd {what}: response without a header")))
}

fn txn_revision(resp: &TxnResponse, what: &str) -> Result<i64> {
    resp.0
        .header
        .as_ref()
        .map(|h| h.revision)
        .ok_or_else(|| StoreError::Backend(format!("etcd {what}: response without a header")))
}

#[async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn current_revision(&self) -> Result<i64> {
        let mut kv = self.kv();
        let key = range_start(self.full_key(""));
        let resp = request(
            "reading the revision",
            kv.get(key, Some(GetOptions::new().with_count_only())),
        )
        .await
        .map_err(|f| f.into_error("reading the revision"))?;
        revision_of(resp.header(), "reading the revision")
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let what = format!("get {key}");
        let mut kv = self.kv();
        let resp = request(&what, kv.get(self.full_key(key), None))
            .await
            .map_err(|f| f.into_error(&what))?;
        resp.kvs()
            .first()
            .map(|kv| {
                self.key_value(
                    kv.key(),
                    kv.value(),
                    kv.create_revision(),
                    kv.mod_revision(),
                )
            })
            .transpose()
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        let compacted = self.known_compacted();
        if opts.revision < 0 || (opts.revision > 0 && opts.revision <= compacted) {
            return Err(StoreError::Compacted {
                requested: opts.revision,
                compacted,
            });
        }
        let what = format!("list {prefix}");
        let full_prefix = self.full_key(prefix);
        let end = prefix_end(&full_prefix);
        let mut start = full_prefix.clone();
        if let Some(after) = &opts.start_after {
            let after = self.full_key(after);
            if after >= start {
                start = after;
                // The smallest key after `after`.
                start.push(0);
            }
        }
        let mut options = GetOptions::new().with_range(end);
        if opts.revision > 0 {
            options = options.with_revision(opts.revision);
        }
        if opts.limit > 0 {
            let limit = i64::try_from(opts.limit).unwrap_or(i64::MAX);
            options = options.with_limit(limit);
        }
        let mut kv = self.kv();
        let resp = match request(&what, kv.get(range_start(start), Some(options))).await {
            Ok(resp) => resp,
            Err(Failure::Compacted) => {
                return Err(StoreError::Compacted {
                    requested: opts.revision,
                    compacted: self.known_compacted().max(opts.revision),
                });
            }
            Err(Failure::Future) => {
                return Err(StoreError::FutureRevision {
                    requested: opts.revision,
                    current: self.current_revision().await?,
                });
            }
            Err(Failure::Other(e)) => return Err(e),
        };
        let items = resp
            .kvs()
            .iter()
            .map(|kv| {
                self.key_value(
                    kv.key(),
                    kv.value(),
                    kv.create_revision(),
                    kv.mod_revision(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let revision = match opts.revision {
            0 => revision_of(resp.header(), &what)?,
            r => r,
        };
        Ok(ListResult {
            items,
            revision,
            more: resp.more(),
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64> {
        let what = format!("create {key}");
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full, value, None)]);
        let resp = self.txn(&what, txn).await?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists(key.to_string()));
        }
        txn_revision(&resp, &what)
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Option<i64>,
    ) -> Result<i64> {
        let what = format!("update {key}");
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([self.precondition(&full, expected_mod_revision)])
            .and_then([TxnOp::put(full.clone(), value, None)])
            .or_else([TxnOp::get(full, None)]);
        let resp = self.txn(&what, txn).await?;
        if !resp.succeeded() {
            return Err(self.precondition_failure(key, expected_mod_revision, &resp));
        }
        txn_revision(&resp, &what)
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<i64>,
    ) -> Result<(KeyValue, i64)> {
        let what = format!("delete {key}");
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([self.precondition(&full, expected_mod_revision)])
            .and_then([TxnOp::delete(
                full.clone(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full, None)]);
        let resp = self.txn(&what, txn).await?;
        if !resp.succeeded() {
            return Err(self.precondition_failure(key, expected_mod_revision, &resp));
        }
        let revision = txn_revision(&resp, &what)?;
        let prev = match resp.0.responses.first().and_then(|op| op.response.as_ref()) {
            Some(PbTxnOpResponse::ResponseDeleteRange(deleted)) => {
                deleted.prev_kvs.first().map(|kv| self.pb_key_value(kv))
            }
            _ => None,
        };
        match prev {
            Some(prev) => Ok((prev?, revision)),
            None => Err(StoreError::Backend(format!(
                "etcd {what}: the deletion returned no previous value"
            ))),
        }
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream> {
        let current = self.current_revision().await?;
        if after_revision > current {
            return Err(StoreError::FutureRevision {
                requested: after_revision,
                current,
            });
        }
        let compacted = self.known_compacted();
        if after_revision < 0 || (after_revision != 0 && after_revision <= compacted) {
            return Err(StoreError::Compacted {
                requested: after_revision,
                compacted,
            });
        }
        // "From now" is from the revision read above, so no write after this call is missed
        // while etcd sets the watch up.
        let after = if after_revision == 0 {
            current
        } else {
            after_revision
        };
        let full_prefix = self.full_key(prefix);
        let options = WatchOptions::new()
            .with_range(prefix_end(&full_prefix))
            .with_start_revision(after + 1)
            .with_prev_key()
            .with_progress_notify();
        let what = format!("watch {prefix}");
        let mut client = self
            .client
            .watch_client()
            .max_decoding_message_size(usize::MAX);
        let stream = request(&what, client.watch(range_start(full_prefix), Some(options)))
            .await
            .map_err(|f| f.into_error(&what))?;
        let watch = EtcdWatch {
            stream,
            store: self.clone(),
            prefix: prefix.to_string(),
            after,
            pending: VecDeque::new(),
            finished: false,
        };
        Ok(Box::pin(futures::stream::unfold(
            watch,
            |mut watch| async move {
                let item = watch.next().await?;
                Some((item, watch))
            },
        )))
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        if revision <= self.known_compacted() {
            return Ok(());
        }
        let what = format!("compact at revision {revision}");
        let mut kv = self.kv();
        match request(
            &what,
            kv.compact(revision, Some(CompactionOptions::new().with_physical())),
        )
        .await
        {
            Ok(_) => {
                self.learn_compacted(revision);
                Ok(())
            }
            // Already compacted further by someone else: nothing left to do.
            Err(Failure::Compacted) => Ok(()),
            Err(Failure::Future) => Err(StoreError::FutureRevision {
                requested: revision,
                current: self.current_revision().await?,
            }),
            Err(Failure::Other(e)) => Err(e),
        }
    }
}

/// One watch on etcd, turned into store events.
struct EtcdWatch {
    stream: etcd_client::WatchStream,
    store: EtcdStore,
    prefix: String,
    /// The revision the watch started after.
    after: i64,
    pending: VecDeque<Result<WatchEvent>>,
    finished: bool,
}

impl EtcdWatch {
    async fn next(&mut self) -> Option<Result<WatchEvent>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                if item.is_err() {
                    self.finished = true;
                    self.pending.clear();
                }
                return Some(item);
            }
            if self.finished {
                return None;
            }
            let failure = |msg: String| {
                Err(StoreError::Backend(format!(
                    "etcd watch of {:?}: {msg}",
                    self.prefix
                )))
            };
            match self.stream.message().await {
                Ok(Some(resp)) => self.absorb(resp),
                Ok(None) => self
                    .pending
                    .push_back(failure("etcd ended the watch".into())),
                Err(e) => self.pending.push_back(failure(e.to_string())),
            }
        }
    }

    /// Turns one watch response into pending events (or an error).
    fn absorb(&mut self, resp: etcd_client::WatchResponse) {
        if resp.compact_revision() > 0 {
            self.store.learn_compacted(resp.compact_revision());
            self.pending.push_back(Err(StoreError::Compacted {
                requested: self.after,
                compacted: resp.compact_revision(),
            }));
            return;
        }
        if resp.canceled() {
            self.pending.push_back(Err(StoreError::Backend(format!(
                "etcd cancelled the watch of {:?}: {}",
                self.prefix,
                resp.cancel_reason()
            ))));
            return;
        }
        if resp.events().is_empty() {
            if !resp.created()
                && let Some(header) = resp.header()
            {
                self.pending.push_back(Ok(WatchEvent::Progress {
                    revision: header.revision(),
                }));
            }
            return;
        }
        for event in resp.events() {
            let event = self.convert(&event.0);
            let failed = event.is_err();
            self.pending.push_back(event);
            if failed {
                return;
            }
        }
    }

    fn convert(&self, event: &etcd_client::proto::PbEvent) -> Result<WatchEvent> {
        let kv = event
            .kv
            .as_ref()
            .ok_or_else(|| StoreError::Backend("etcd sent a watch event without a key".into()))?;
        let prev = event
            .prev_kv
            .as_ref()
            .map(|kv| self.store.pb_key_value(kv))
            .transpose()?;
        match event.r#type {
            0 => Ok(WatchEvent::Put {
                kv: self.store.pb_key_value(kv)?,
                prev,
            }),
            1 => {
                let prev = match prev {
                    Some(prev) => prev,
                    // etcd keeps the last version of every key through compactions, so this
                    // should not happen; deliver the deletion with what is known.
                    None => {
                        let deleted = self.store.pb_key_value(kv)?;
                        tracing::warn!(key = %deleted.key, revision = kv.mod_revision, "etcd sent a deletion without the previous value");
                        KeyValue {
                            value: Vec::new(),
                            create_revision: 0,
                            mod_revision: 0,
                            ..deleted
                        }
                    }
                };
                Ok(WatchEvent::Delete {
                    prev,
                    revision: kv.mod_revision,
                })
            }
            other => Err(StoreError::Backend(format!(
                "etcd sent a watch event of unknown type {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/keel/pods/"), b"/keel/pods0".to_vec());
        assert_eq!(prefix_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn keys_outside_the_prefix_or_not_utf8_are_errors() {
        assert!(store_key_value("/keel", b"/other/a", b"", 1, 1).is_err());
        assert!(store_key_value("/keel", b"/keel/\xff", b"", 1, 1).is_err());
        let kv = store_key_value("/keel", b"/keel/a", b"v", 1, 2).expect("in prefix");
        assert_eq!(kv.key, "/a");
    }
}
