//! The store: a revisioned key-value space with watch, behind one trait with two backends.
//!
//! - `embedded` (default): redb in `--data-dir`, MVCC revisions, crash-safe commits.
//! - `etcd`: a real etcd cluster through `etcd-client`, keys under a configurable prefix.
//!
//! Semantics follow etcd's, which is what the API server is written against:
//! - one cluster-wide revision counter, incremented by every successful write; a key's
//!   `create_revision` and `mod_revision` come from it (the API's `resourceVersion` is the
//!   `mod_revision`);
//! - `list` reads a consistent snapshot, optionally at a past revision, with a limit and a
//!   continue key;
//! - `watch` delivers every change to keys under a prefix with a revision greater than the
//!   starting one, in revision order, and fails with [`StoreError::Compacted`] when the
//!   revision was compacted away;
//! - writes are conditional on the caller's view of the key (`expected_mod_revision`).
pub mod embedded;
pub mod etcd;

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;

/// A stored key with its revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, as the caller wrote it (without any backend prefix).
    pub key: String,
    /// The stored bytes.
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: i64,
    /// Revision of the last write to the key.
    pub mod_revision: i64,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// Created or updated; `kv.create_revision == kv.mod_revision` for a creation.
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// Deleted at `revision`; `prev` is the last value.
    Delete { prev: KeyValue, revision: i64 },
    /// Nothing changed under the prefix up to `revision` (lets clients resume cheaply).
    Progress { revision: i64 },
}

impl WatchEvent {
    /// The revision of the change (for a progress event: the revision reached).
    pub fn revision(&self) -> i64 {
        match self {
            WatchEvent::Put { kv, .. } => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
            WatchEvent::Progress { revision } => *revision,
        }
    }
}

/// A page of a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListResult {
    /// The keys, sorted.
    pub items: Vec<KeyValue>,
    /// The revision the list was read at.
    pub revision: i64,
    /// Whether more keys follow (then continue from the last item's key, exclusive).
    pub more: bool,
}

/// Options of [`Store::list`].
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// Read at this revision (0: the current one). Older than the compacted revision: error.
    pub revision: i64,
    /// At most this many items (0: no limit).
    pub limit: usize,
    /// Start after this key (exclusive), for paging.
    pub start_after: Option<String>,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `create` of a key that exists.
    #[error("key {0} already exists")]
    AlreadyExists(String),
    /// The key does not exist.
    #[error("key {0} not found")]
    NotFound(String),
    /// The key's `mod_revision` is not the expected one (someone else wrote it).
    #[error("key {key} was modified (expected revision {expected}, found {found})")]
    Conflict {
        key: String,
        expected: i64,
        found: i64,
    },
    /// The requested revision was compacted away (the API answers 410 Gone).
    #[error("revision {requested} has been compacted (oldest available: {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    /// The requested revision is in the future.
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision { requested: i64, current: i64 },
    /// The backend failed (I/O, etcd unreachable, corruption).
    #[error("store backend: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The stream a watch returns: events in revision order, or one error then the end.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent>> + Send>>;

/// A revisioned key-value store with watch.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend this is ("embedded" or "etcd"), for logs and metrics.
    fn backend(&self) -> &'static str;

    /// The current revision.
    async fn current_revision(&self) -> Result<i64>;

    /// The key's current value.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Keys starting with `prefix`, sorted by key.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult>;

    /// Creates `key`; fails with `AlreadyExists` if it exists. Returns the new revision.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64>;

    /// Replaces `key`'s value. With `expected_mod_revision`, fails with `Conflict` unless the
    /// key's `mod_revision` matches; fails with `NotFound` if the key is absent.
    /// Returns the new revision.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Option<i64>,
    ) -> Result<i64>;

    /// Deletes `key` (conditionally, like `update`). Returns the deleted value and the revision
    /// of the deletion.
    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<i64>,
    ) -> Result<(KeyValue, i64)>;

    /// Watches keys under `prefix`, delivering every change with revision > `after_revision`
    /// (0: from now on).
    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream>;

    /// Forgets history up to and including `revision`: lists and watches at or before it fail
    /// with `Compacted`.
    async fn compact(&self, revision: i64) -> Result<()>;
}
