//! The embedded store: a single redb file in the data directory, with etcd's MVCC semantics.
//!
//! # Why redb
//!
//! redb is pure Rust (no C/C++ toolchain in the build), ACID, and keeps its data in
//! copy-on-write B-trees inside one file: a commit writes new pages and then flips the root with
//! an fsync, so a process killed at any moment reopens at the last acknowledged commit (after a
//! crash, opening walks the file once to rebuild its free-page list). Nothing runs in the
//! background (no LSM compaction), and readers see consistent snapshots without blocking the
//! writer. The alternatives: sled is beta and no
//! longer maintained; RocksDB needs a C++ build and brings background compaction and tuning we
//! don't need for a control-plane store of this size.
//!
//! # Tables
//!
//! - `kv`: key → current value (`create_revision`, `mod_revision`, bytes). Reads at the current
//!   revision (every `get`, nearly every `list`) are one B-tree lookup or range scan, with no
//!   version filtering.
//! - `log`: revision → the change made at that revision (key, new value for a put, and the
//!   previous value). It is the history: watches replay it, and a `list` at a past revision
//!   starts from `kv` and undoes the changes made after that revision (the first change to a key
//!   after revision R carries the key's state at R). Keeping the previous value in each entry
//!   makes both self-contained, at the cost of storing values twice in the history, which
//!   `compact` bounds.
//! - `meta`: the current revision, the compacted revision and the file format version.
//!
//! Keys are stored as bytes and values in a small bounds-checked encoding of our own (below),
//! so a damaged file yields [`StoreError::Backend`] rather than a panic in a decoder. A `list`
//! at a past revision costs a scan of the changes made since, which compaction keeps short;
//! the history grows until [`Store::compact`] is called, so the API server must compact
//! periodically (as kube-apiserver does).
//!
//! Each write (create, update, delete) checks its precondition, updates `kv`, appends to `log`
//! and bumps the revision. Writes are committed in groups: concurrent writers queue their
//! writes, and one of them applies everything queued (up to `MAX_BATCH`) in queue order in
//! one write transaction, each write checked against the state left by the ones before it and
//! given its own revision. The transaction is committed with redb's default durability (fsync
//! before `commit` returns) before any writer is answered, so every acknowledged write survives
//! `kill -9`, and one fsync serves a whole group instead of a single write.
//!
//! # Watches
//!
//! Live events go out through a [`tokio::sync::broadcast`] channel. Each group commits and
//! publishes its events while holding one writer lock, so the channel carries every revision
//! exactly once and in order. A watch subscribes under that lock too, which gives it the exact
//! revision from which the channel covers it: it replays the log up to (at least) that revision,
//! then takes live events, skipping those it already replayed. A watch from a past revision first
//! replays the log in chunks and subscribes only once it has caught up, so a long replay can't
//! overflow the channel. A watcher that falls behind the channel (more than
//! [`EmbeddedOptions::watch_buffer`] events) gets an error and its stream ends; it never skips
//! events silently.
//!
//! Blocking redb calls run on [`tokio::task::spawn_blocking`].
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Display;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::broadcast;

use super::{
    KeyValue, ListOptions, ListResult, Result, Store, StoreError, WatchEvent, WatchStream,
};

/// Name of the database file inside the data directory.
pub const FILE_NAME: &str = "store.redb";

/// Version of the table layout and encodings below, checked on open.
const FORMAT_VERSION: i64 = 1;

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("meta");

const META_REVISION: &[u8] = b"revision";
const META_COMPACTED: &[u8] = b"compacted";
const META_FORMAT: &[u8] = b"format";

/// How many log entries one replay step of a watch reads (in one read transaction).
const REPLAY_CHUNK: usize = 512;

/// Most writes one commit carries (group commit); later ones wait for the next commit.
const MAX_BATCH: usize = 256;

/// Tuning of an [`EmbeddedStore`].
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// How many live events a watcher may fall behind before its watch fails. The buffer is
    /// shared by all watchers and holds events for every key, so size it for the write rate;
    /// it keeps the last this-many events (with their values) in memory.
    pub watch_buffer: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions { watch_buffer: 1024 }
    }
}

/// The embedded backend: a redb database in a data directory. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// Held across each write transaction's commit and the publication of its events, so events
    /// go out in revision order and a new watcher can subscribe at a known revision.
    writer: Mutex<WriterState>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    /// Writes waiting for a commit (see [`Inner::write`]); never held while taking `writer`.
    queue: Mutex<WriteQueue>,
    /// Signalled when a commit ends: its writers have results, and the next may start.
    answered: Condvar,
}

/// The committed revisions, as last published (the database holds the same values).
struct WriterState {
    revision: i64,
    compacted: i64,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `data_dir` (the directory is created if missing; the
    /// database is the file [`FILE_NAME`] inside it), with default options.
    ///
    /// Blocks on file I/O (and, after a crash, on redb's repair of the file): call it at startup
    /// or from a blocking context.
    pub fn open(data_dir: &Path) -> Result<EmbeddedStore> {
        Self::open_with(data_dir, EmbeddedOptions::default())
    }

    /// Like [`EmbeddedStore::open`], with explicit options.
    pub fn open_with(data_dir: &Path, options: EmbeddedOptions) -> Result<EmbeddedStore> {
        std::fs::create_dir_all(data_dir).map_err(backend(format!(
            "creating data directory {}",
            data_dir.display()
        )))?;
        let path = data_dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(backend(format!(
            "opening store database {}",
            path.display()
        )))?;
        let (revision, compacted) = initialize(&db)
            .map_err(|e| StoreError::Backend(format!("{}: {}", path.display(), strip(e))))?;
        let (events, _) = broadcast::channel(options.watch_buffer.max(1));
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                path,
                writer: Mutex::new(WriterState {
                    revision,
                    compacted,
                }),
                events,
                queue: Mutex::new(WriteQueue::default()),
                answered: Condvar::new(),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        run_blocking(move || f(&inner)).await
    }
}

/// Creates the tables of a new database, checks the format of an existing one, and reads the
/// current and compacted revisions.
fn initialize(db: &Database) -> Result<(i64, i64)> {
    let txn = db
        .begin_write()
        .map_err(backend("starting a write transaction"))?;
    let (revision, compacted) = {
        txn.open_table(KV).map_err(backend("opening table kv"))?;
        txn.open_table(LOG).map_err(backend("opening table log"))?;
        let mut meta = txn
            .open_table(META)
            .map_err(backend("opening table meta"))?;
        match read_meta(&meta, META_FORMAT)? {
            None => {
                meta.insert(META_FORMAT, FORMAT_VERSION.to_be_bytes().as_slice())
                    .map_err(backend("writing the format version"))?;
            }
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Backend(format!(
                    "store format version {other} is not supported (this build reads version {FORMAT_VERSION})"
                )));
            }
        }
        (
            read_meta(&meta, META_REVISION)?.unwrap_or(0),
            read_meta(&meta, META_COMPACTED)?.unwrap_or(0),
        )
    };
    txn.commit()
        .map_err(backend("committing the table setup"))?;
    Ok((revision, compacted))
}

/// A `StoreError::Backend` mapper that adds what was being done.
fn backend<E: Display>(context: impl Display) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Backend(format!("{context}: {e}"))
}

/// The message of a backend error without the variant's prefix (for re-wrapping).
fn strip(e: StoreError) -> String {
    match e {
        StoreError::Backend(msg) => msg,
        other => other.to_string(),
    }
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(backend("store worker thread"))?
}

fn read_meta(
    meta: &impl ReadableTable<&'static [u8], &'static [u8]>,
    name: &[u8],
) -> Result<Option<i64>> {
    let Some(value) = meta.get(name).map_err(backend(format_args!(
        "reading {}",
        String::from_utf8_lossy(name)
    )))?
    else {
        return Ok(None);
    };
    let bytes: [u8; 8] = value.value().try_into().map_err(|_| {
        StoreError::Backend(format!(
            "corrupt store: meta entry {} has {} bytes, expected 8",
            String::from_utf8_lossy(name),
            value.value().len()
        ))
    })?;
    Ok(Some(i64::from_be_bytes(bytes)))
}

fn write_meta(txn: &WriteTransaction, name: &[u8], value: i64) -> Result<()> {
    let mut meta = txn
        .open_table(META)
        .map_err(backend("opening table meta"))?;
    meta.insert(name, value.to_be_bytes().as_slice())
        .map_err(backend(format_args!(
            "writing {}",
            String::from_utf8_lossy(name)
        )))?;
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves no half-done state behind (a transaction is aborted
    // and the counters are only set after its commit; the queue changes in single steps), so a
    // poisoned lock is usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn log_key(revision: i64) -> Result<u64> {
    u64::try_from(revision).map_err(|_| StoreError::Backend(format!("invalid revision {revision}")))
}

fn log_revision(key: u64) -> Result<i64> {
    i64::try_from(key)
        .map_err(|_| StoreError::Backend(format!("corrupt store: log revision {key} out of range")))
}

// ---- Encodings -------------------------------------------------------------------------------
//
// A current value (`kv`): create_revision (i64 BE), mod_revision (i64 BE), the value bytes.
// A log entry: kind (1 put, 2 delete), key (u32 BE length + bytes), then
//   put:    create_revision, value (u32 length + bytes), prev flag (0/1) [+ prev state]
//   delete: prev state
// where a state is create_revision, mod_revision, value (u32 length + bytes).
// The entry's own revision is its `log` key.

const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;

fn encode_value(create_revision: i64, mod_revision: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create_revision.to_be_bytes());
    out.extend_from_slice(&mod_revision.to_be_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_value(key: &[u8], bytes: &[u8]) -> Result<KeyValue> {
    let key = decode_key(key)?;
    let mut r = Reader::new(bytes, "value");
    let create_revision = r.i64()?;
    let mod_revision = r.i64()?;
    Ok(KeyValue {
        key,
        value: r.rest().to_vec(),
        create_revision,
        mod_revision,
    })
}

fn decode_key(key: &[u8]) -> Result<String> {
    String::from_utf8(key.to_vec()).map_err(|_| {
        StoreError::Backend(format!(
            "corrupt store: key {:?} is not UTF-8",
            String::from_utf8_lossy(key)
        ))
    })
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| StoreError::Backend(format!("value of {} bytes is too large", bytes.len())))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn put_state(out: &mut Vec<u8>, kv: &KeyValue) -> Result<()> {
    out.extend_from_slice(&kv.create_revision.to_be_bytes());
    out.extend_from_slice(&kv.mod_revision.to_be_bytes());
    put_bytes(out, &kv.value)
}

fn encode_event(event: &WatchEvent) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match event {
        WatchEvent::Put { kv, prev } => {
            out.push(KIND_PUT);
            put_bytes(&mut out, kv.key.as_bytes())?;
            out.extend_from_slice(&kv.create_revision.to_be_bytes());
            put_bytes(&mut out, &kv.value)?;
            match prev {
                Some(prev) => {
                    out.push(1);
                    put_state(&mut out, prev)?;
                }
                None => out.push(0),
            }
        }
        WatchEvent::Delete { prev, .. } => {
            out.push(KIND_DELETE);
            put_bytes(&mut out, prev.key.as_bytes())?;
            put_state(&mut out, prev)?;
        }
        WatchEvent::Progress { .. } => {
            return Err(StoreError::Backend(
                "a progress event has no log entry".into(),
            ));
        }
    }
    Ok(out)
}

/// The key of a log entry, without decoding the rest (for prefix filtering).
fn event_key(bytes: &[u8]) -> Result<&[u8]> {
    let mut r = Reader::new(bytes, "log entry");
    r.u8()?;
    r.bytes()
}

fn decode_event(revision: i64, bytes: &[u8]) -> Result<WatchEvent> {
    let mut r = Reader::new(bytes, "log entry");
    let kind = r.u8()?;
    let key = decode_key(r.bytes()?)?;
    let state = |r: &mut Reader<'_>, key: &str| -> Result<KeyValue> {
        Ok(KeyValue {
            key: key.to_string(),
            create_revision: r.i64()?,
            mod_revision: r.i64()?,
            value: r.bytes()?.to_vec(),
        })
    };
    let event = match kind {
        KIND_PUT => {
            let create_revision = r.i64()?;
            let value = r.bytes()?.to_vec();
            let prev = match r.u8()? {
                0 => None,
                1 => Some(state(&mut r, &key)?),
                flag => return Err(r.corrupt(format_args!("previous-value flag {flag}"))),
            };
            WatchEvent::Put {
                kv: KeyValue {
                    key,
                    value,
                    create_revision,
                    mod_revision: revision,
                },
                prev,
            }
        }
        KIND_DELETE => WatchEvent::Delete {
            prev: state(&mut r, &key)?,
            revision,
        },
        kind => return Err(r.corrupt(format_args!("kind {kind}"))),
    };
    if !r.rest().is_empty() {
        return Err(r.corrupt("trailing bytes"));
    }
    Ok(event)
}

/// The key an event is about.
fn key_of(event: &WatchEvent) -> Option<&str> {
    match event {
        WatchEvent::Put { kv, .. } => Some(&kv.key),
        WatchEvent::Delete { prev, .. } => Some(&prev.key),
        WatchEvent::Progress { .. } => None,
    }
}

/// Bounds-checked decoding: bad bytes give `StoreError::Backend`, never a panic.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    fn corrupt(&self, detail: impl Display) -> StoreError {
        StoreError::Backend(format!("corrupt store: bad {} ({detail})", self.what))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(self.corrupt(format_args!("needs {n} more bytes, has {}", self.buf.len())));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn i64(&mut self) -> Result<i64> {
        let bytes = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(i64::from_be_bytes(array))
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.take(4)?;
        let mut array = [0u8; 4];
        array.copy_from_slice(len);
        let len = usize::try_from(u32::from_be_bytes(array)).map_err(|_| self.corrupt("length"))?;
        self.take(len)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

// ---- Writes ----------------------------------------------------------------------------------

/// A conditional write.
enum Write {
    Create(Vec<u8>),
    Update(Vec<u8>, Option<i64>),
    Delete(Option<i64>),
}

/// The change `write` makes at `revision` to a key whose current state is `existing`, or why
/// it may not be made (`AlreadyExists`, `NotFound`, `Conflict`).
fn event_of(
    key: &str,
    write: Write,
    existing: Option<KeyValue>,
    revision: i64,
) -> Result<WatchEvent> {
    let check = |expected: Option<i64>| -> Result<KeyValue> {
        let current = existing
            .clone()
            .ok_or_else(|| StoreError::NotFound(key.to_string()))?;
        match expected {
            Some(expected) if expected != current.mod_revision => Err(StoreError::Conflict {
                key: key.to_string(),
                expected,
                found: current.mod_revision,
            }),
            _ => Ok(current),
        }
    };
    Ok(match write {
        Write::Create(value) => {
            if existing.is_some() {
                return Err(StoreError::AlreadyExists(key.to_string()));
            }
            WatchEvent::Put {
                kv: KeyValue {
                    key: key.to_string(),
                    value,
                    create_revision: revision,
                    mod_revision: revision,
                },
                prev: None,
            }
        }
        Write::Update(value, expected) => {
            let prev = check(expected)?;
            WatchEvent::Put {
                kv: KeyValue {
                    key: key.to_string(),
                    value,
                    create_revision: prev.create_revision,
                    mod_revision: revision,
                },
                prev: Some(prev),
            }
        }
        Write::Delete(expected) => WatchEvent::Delete {
            prev: check(expected)?,
            revision,
        },
    })
}

/// A write waiting in the queue for a commit to carry it.
struct Queued {
    ticket: u64,
    key: String,
    write: Write,
}

/// The group-commit queue: writes wait here until one writer commits them together.
#[derive(Default)]
struct WriteQueue {
    /// Writes not yet taken by a commit, oldest first.
    waiting: VecDeque<Queued>,
    /// Results of finished writes, by ticket, until their writers take them.
    done: HashMap<u64, Result<WatchEvent>>,
    /// Whether a writer is committing a batch now.
    committing: bool,
    next_ticket: u64,
}

/// What a batch left in its transaction: each write's result, in queue order.
type Applied = Vec<Result<WatchEvent>>;

impl Inner {
    /// Queues one write and returns once a durable commit carried it (or it failed).
    ///
    /// Group commit: a writer that finds no commit in progress becomes the committer, takes
    /// up to [`MAX_BATCH`] queued writes and commits them in one transaction, so one fsync
    /// serves every writer that queued meanwhile. Writers that queue during a commit wait
    /// for it to end; one of them then commits the next batch.
    fn write(&self, key: &str, write: Write) -> Result<WatchEvent> {
        let mut queue = lock(&self.queue);
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.waiting.push_back(Queued {
            ticket,
            key: key.to_string(),
            write,
        });
        loop {
            if let Some(result) = queue.done.remove(&ticket) {
                return result;
            }
            if queue.committing {
                queue = self
                    .answered
                    .wait(queue)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            queue.committing = true;
            let take = queue.waiting.len().min(MAX_BATCH);
            let batch: Vec<Queued> = queue.waiting.drain(..take).collect();
            drop(queue);
            let tickets: Vec<u64> = batch.iter().map(|queued| queued.ticket).collect();
            // A panic must still end the commit, or the writers waiting for it would hang.
            let results =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.commit(batch)))
                    .unwrap_or_else(|_| {
                        let failed = || StoreError::Backend("the store's commit panicked".into());
                        tickets.iter().map(|_| Err(failed())).collect()
                    });
            queue = lock(&self.queue);
            queue.done.extend(tickets.into_iter().zip(results));
            queue.committing = false;
            self.answered.notify_all();
        }
    }

    /// Applies a batch in one durable transaction, then publishes its events in revision
    /// order. Returns each write's result, in batch order; if the transaction fails, every
    /// write of the batch gets the error.
    fn commit(&self, batch: Vec<Queued>) -> Applied {
        let count = batch.len();
        let mut state = lock(&self.writer);
        let committed = self.apply(batch).and_then(|(txn, results)| {
            if results.iter().any(Result::is_ok) {
                txn.commit()
                    .map_err(backend("committing a batch of writes"))?;
            }
            // Otherwise nothing was written: dropping the transaction aborts it.
            Ok(results)
        });
        let results = match committed {
            Ok(results) => results,
            Err(e) => {
                let message = strip(e);
                return (0..count)
                    .map(|_| Err(StoreError::Backend(message.clone())))
                    .collect();
            }
        };
        for event in results.iter().flatten() {
            state.revision = event.revision();
            // No receivers is fine: nobody watches.
            let _ = self.events.send(Arc::new(event.clone()));
        }
        results
    }

    /// Applies each write of the batch in queue order, in one write transaction: each is
    /// checked against the state left by the ones before it, and each that passes gets the
    /// next revision. A write that fails its check writes nothing and takes no revision.
    /// An error here (not a failed check) means the transaction is unusable.
    fn apply(&self, batch: Vec<Queued>) -> Result<(WriteTransaction, Applied)> {
        let txn = self
            .db
            .begin_write()
            .map_err(backend("starting a write transaction"))?;
        let mut results = Vec::with_capacity(batch.len());
        {
            let mut revision = {
                let meta = txn
                    .open_table(META)
                    .map_err(backend("opening table meta"))?;
                read_meta(&meta, META_REVISION)?.unwrap_or(0)
            };
            let mut kv = txn.open_table(KV).map_err(backend("opening table kv"))?;
            let mut log = txn.open_table(LOG).map_err(backend("opening table log"))?;
            for Queued { key, write, .. } in batch {
                let existing = kv
                    .get(key.as_bytes())
                    .map_err(backend(format_args!("reading key {key}")))?
                    .map(|bytes| decode_value(key.as_bytes(), bytes.value()));
                let event = match existing.transpose() {
                    Ok(existing) => event_of(&key, write, existing, revision + 1),
                    Err(e) => Err(e),
                };
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        results.push(Err(e));
                        continue;
                    }
                };
                revision += 1;
                match &event {
                    WatchEvent::Put { kv: new, .. } => {
                        let bytes = encode_value(new.create_revision, new.mod_revision, &new.value);
                        kv.insert(key.as_bytes(), bytes.as_slice())
                            .map_err(backend(format_args!("writing key {key}")))?;
                    }
                    _ => {
                        kv.remove(key.as_bytes())
                            .map_err(backend(format_args!("deleting key {key}")))?;
                    }
                }
                log.insert(log_key(revision)?, encode_event(&event)?.as_slice())
                    .map_err(backend(format_args!(
                        "appending revision {revision} to the log"
                    )))?;
                results.push(Ok(event));
            }
            drop((kv, log));
            write_meta(&txn, META_REVISION, revision)?;
        }
        Ok((txn, results))
    }

    fn compact(&self, revision: i64) -> Result<()> {
        let mut state = lock(&self.writer);
        if revision > state.revision {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current: state.revision,
            });
        }
        if revision <= state.compacted {
            return Ok(());
        }
        let txn = self
            .db
            .begin_write()
            .map_err(backend("starting a write transaction"))?;
        {
            let mut log = txn.open_table(LOG).map_err(backend("opening table log"))?;
            log.retain_in(..=log_key(revision)?, |_, _| false)
                .map_err(backend(format_args!(
                    "deleting history up to revision {revision}"
                )))?;
        }
        write_meta(&txn, META_COMPACTED, revision)?;
        txn.commit().map_err(backend(format_args!(
            "committing the compaction at revision {revision}"
        )))?;
        state.compacted = revision;
        Ok(())
    }
}

// ---- Reads -----------------------------------------------------------------------------------

fn get(inner: &Inner, key: &str) -> Result<Option<KeyValue>> {
    let txn = inner
        .db
        .begin_read()
        .map_err(backend("starting a read transaction"))?;
    let kv = txn.open_table(KV).map_err(backend("opening table kv"))?;
    match kv
        .get(key.as_bytes())
        .map_err(backend(format_args!("reading key {key}")))?
    {
        Some(bytes) => Ok(Some(decode_value(key.as_bytes(), bytes.value())?)),
        None => Ok(None),
    }
}

fn current_revision(inner: &Inner) -> Result<i64> {
    let txn = inner
        .db
        .begin_read()
        .map_err(backend("starting a read transaction"))?;
    let meta = txn
        .open_table(META)
        .map_err(backend("opening table meta"))?;
    Ok(read_meta(&meta, META_REVISION)?.unwrap_or(0))
}

fn list(inner: &Inner, prefix: &str, opts: &ListOptions) -> Result<ListResult> {
    let txn = inner
        .db
        .begin_read()
        .map_err(backend("starting a read transaction"))?;
    let (current, compacted) = {
        let meta = txn
            .open_table(META)
            .map_err(backend("opening table meta"))?;
        (
            read_meta(&meta, META_REVISION)?.unwrap_or(0),
            read_meta(&meta, META_COMPACTED)?.unwrap_or(0),
        )
    };
    let revision = match opts.revision {
        0 => current,
        r if r > current => {
            return Err(StoreError::FutureRevision {
                requested: r,
                current,
            });
        }
        r if r <= compacted || r < 0 => {
            return Err(StoreError::Compacted {
                requested: r,
                compacted,
            });
        }
        r => r,
    };
    let prefix = prefix.as_bytes();
    let lower = match &opts.start_after {
        Some(after) if after.as_bytes() >= prefix => Bound::Excluded(after.as_bytes()),
        _ => Bound::Included(prefix),
    };
    let in_range = |key: &[u8]| -> bool {
        key.starts_with(prefix)
            && match lower {
                Bound::Excluded(after) => key > after,
                _ => true,
            }
    };

    // Keys changed after `revision`, with their state at `revision` (None: absent then).
    let mut then: BTreeMap<Vec<u8>, Option<KeyValue>> = BTreeMap::new();
    if revision < current {
        let log = txn.open_table(LOG).map_err(backend("opening table log"))?;
        let range = log
            .range(log_key(revision + 1)?..=log_key(current)?)
            .map_err(backend("reading the log"))?;
        for entry in range {
            let (rev, bytes) = entry.map_err(backend("reading the log"))?;
            let bytes = bytes.value();
            let key = event_key(bytes)?;
            if !in_range(key) || then.contains_key(key) {
                continue;
            }
            let before = match decode_event(log_revision(rev.value())?, bytes)? {
                WatchEvent::Put { prev, .. } => prev,
                WatchEvent::Delete { prev, .. } => Some(prev),
                WatchEvent::Progress { .. } => None,
            };
            then.insert(key.to_vec(), before);
        }
    }

    let kv = txn.open_table(KV).map_err(backend("opening table kv"))?;
    let mut now = kv
        .range::<&[u8]>((lower, Bound::Unbounded))
        .map_err(backend("reading keys"))?;
    let mut next_now = || -> Result<Option<KeyValue>> {
        match now.next() {
            None => Ok(None),
            Some(entry) => {
                let (key, value) = entry.map_err(backend("reading keys"))?;
                if !key.value().starts_with(prefix) {
                    return Ok(None);
                }
                decode_value(key.value(), value.value()).map(Some)
            }
        }
    };

    // Merge the current keys with the changed ones, in key order; a changed key's state at
    // `revision` replaces its current state.
    let mut items = Vec::new();
    let mut more = false;
    let mut head = next_now()?;
    let mut changed = then.into_iter().peekable();
    loop {
        let from_changed = match (&head, changed.peek()) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some(kv), Some((key, _))) => key.as_slice() <= kv.key.as_bytes(),
        };
        let item = if from_changed {
            let Some((key, state)) = changed.next() else {
                break;
            };
            if head
                .as_ref()
                .is_some_and(|kv| kv.key.as_bytes() == key.as_slice())
            {
                head = next_now()?;
            }
            state
        } else {
            let item = head.take();
            head = next_now()?;
            item
        };
        if let Some(item) = item {
            if opts.limit > 0 && items.len() == opts.limit {
                more = true;
                break;
            }
            items.push(item);
        }
    }
    Ok(ListResult {
        items,
        revision,
        more,
    })
}

// ---- Watches ---------------------------------------------------------------------------------

/// One watch: replays the log, then follows the live channel.
struct Watcher {
    inner: Weak<Inner>,
    prefix: String,
    /// Every event with a revision up to here has been delivered (or didn't match the prefix).
    last: i64,
    /// The live channel and the revision it was subscribed at: it carries every event after it.
    live: Option<(broadcast::Receiver<Arc<WatchEvent>>, i64)>,
    pending: VecDeque<WatchEvent>,
    finished: bool,
}

/// What one replay step read.
struct Replayed {
    events: Vec<WatchEvent>,
    last: i64,
    at_end: bool,
}

impl Watcher {
    async fn next(&mut self) -> Option<Result<WatchEvent>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
            let result = match &self.live {
                Some((_, subscribed_at)) if self.last >= *subscribed_at => self.receive().await,
                _ => self.replay().await,
            };
            match result {
                Ok(Some(event)) => return Some(Ok(event)),
                Ok(None) => {}
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
        }
    }

    /// Reads the next chunk of the log into `pending`; once the log is exhausted, subscribes to
    /// the live channel (replay then continues up to the subscription revision, if needed).
    async fn replay(&mut self) -> Result<Option<WatchEvent>> {
        let inner = self.inner.upgrade().ok_or_else(closed)?;
        let (prefix, last) = (self.prefix.clone(), self.last);
        let replayed = run_blocking(move || read_log(&inner, &prefix, last)).await?;
        self.pending.extend(replayed.events);
        self.last = replayed.last;
        if replayed.at_end && self.live.is_none() {
            let inner = self.inner.upgrade().ok_or_else(closed)?;
            self.live = Some(run_blocking(move || Ok(subscribe(&inner))).await?);
        }
        Ok(None)
    }

    /// Takes the next live event; `None` when it was already replayed or is outside the prefix.
    async fn receive(&mut self) -> Result<Option<WatchEvent>> {
        let Some((rx, _)) = &mut self.live else {
            return Ok(None);
        };
        match rx.recv().await {
            Ok(event) => {
                let revision = event.revision();
                if revision <= self.last {
                    return Ok(None);
                }
                if revision != self.last + 1 {
                    return Err(StoreError::Backend(format!(
                        "watch of {:?} missed revisions {}..{} (store write failure?)",
                        self.prefix,
                        self.last + 1,
                        revision - 1
                    )));
                }
                self.last = revision;
                if key_of(&event).is_some_and(|key| key.starts_with(&self.prefix)) {
                    Ok(Some(Arc::unwrap_or_clone(event)))
                } else {
                    Ok(None)
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => Err(StoreError::Backend(format!(
                "watch of {:?} fell behind by {n} events after revision {}; watch again from there",
                self.prefix, self.last
            ))),
            Err(broadcast::error::RecvError::Closed) => Err(closed()),
        }
    }
}

fn closed() -> StoreError {
    StoreError::Backend("the store was closed".into())
}

/// Subscribes to the live channel; returns it with the revision it carries events after.
fn subscribe(inner: &Inner) -> (broadcast::Receiver<Arc<WatchEvent>>, i64) {
    let state = lock(&inner.writer);
    (inner.events.subscribe(), state.revision)
}

/// Reads up to [`REPLAY_CHUNK`] log entries after `last`, keeping those under `prefix`.
fn read_log(inner: &Inner, prefix: &str, last: i64) -> Result<Replayed> {
    let txn = inner
        .db
        .begin_read()
        .map_err(backend("starting a read transaction"))?;
    let compacted = {
        let meta = txn
            .open_table(META)
            .map_err(backend("opening table meta"))?;
        read_meta(&meta, META_COMPACTED)?.unwrap_or(0)
    };
    if last < compacted {
        return Err(StoreError::Compacted {
            requested: last,
            compacted,
        });
    }
    let log = txn.open_table(LOG).map_err(backend("opening table log"))?;
    let range = log
        .range(log_key(last + 1)?..)
        .map_err(backend("reading the log"))?;
    let mut replayed = Replayed {
        events: Vec::new(),
        last,
        at_end: true,
    };
    for (n, entry) in range.enumerate() {
        if n == REPLAY_CHUNK {
            replayed.at_end = false;
            break;
        }
        let (rev, bytes) = entry.map_err(backend("reading the log"))?;
        let revision = log_revision(rev.value())?;
        if revision != replayed.last + 1 {
            return Err(StoreError::Backend(format!(
                "corrupt store: log jumps from revision {} to {revision}",
                replayed.last
            )));
        }
        replayed.last = revision;
        if event_key(bytes.value())?.starts_with(prefix.as_bytes()) {
            replayed.events.push(decode_event(revision, bytes.value())?);
        }
    }
    Ok(replayed)
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn current_revision(&self) -> Result<i64> {
        self.blocking(current_revision).await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        self.blocking(move |inner| get(inner, &key)).await
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| list(inner, &prefix, &opts))
            .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64> {
        let key = key.to_string();
        let event = self
            .blocking(move |inner| inner.write(&key, Write::Create(value)))
            .await?;
        Ok(event.revision())
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Option<i64>,
    ) -> Result<i64> {
        let key = key.to_string();
        let event = self
            .blocking(move |inner| inner.write(&key, Write::Update(value, expected_mod_revision)))
            .await?;
        Ok(event.revision())
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<i64>,
    ) -> Result<(KeyValue, i64)> {
        let key = key.to_string();
        let event = self
            .blocking(move |inner| inner.write(&key, Write::Delete(expected_mod_revision)))
            .await?;
        match event {
            WatchEvent::Delete { prev, revision } => Ok((prev, revision)),
            other => Err(StoreError::Backend(format!(
                "delete produced a non-delete event at revision {}",
                other.revision()
            ))),
        }
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream> {
        // Subscribe first: the channel then covers every revision after `current`.
        let (rx, current, compacted) = self
            .blocking(|inner| {
                let state = lock(&inner.writer);
                Ok((inner.events.subscribe(), state.revision, state.compacted))
            })
            .await?;
        if after_revision > current {
            return Err(StoreError::FutureRevision {
                requested: after_revision,
                current,
            });
        }
        if after_revision != 0 && after_revision <= compacted {
            return Err(StoreError::Compacted {
                requested: after_revision,
                compacted,
            });
        }
        let from_now = after_revision == 0 || after_revision == current;
        let watcher = Watcher {
            inner: Arc::downgrade(&self.inner),
            prefix: prefix.to_string(),
            last: if from_now { current } else { after_revision },
            // A replay may take long: subscribe again once it has caught up rather than let
            // this subscription overflow meanwhile.
            live: from_now.then_some((rx, current)),
            pending: VecDeque::new(),
            finished: false,
        };
        Ok(Box::pin(futures::stream::unfold(
            watcher,
            |mut watcher| async move {
                let item = watcher.next().await?;
                Some((item, watcher))
            },
        )))
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        self.blocking(move |inner| inner.compact(revision)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &[u8], create: i64, modified: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.to_vec(),
            create_revision: create,
            mod_revision: modified,
        }
    }

    /// The handoff from replay to live events when the channel already holds events the replay
    /// also read (writes landed between the end of a replay and the subscription, and the
    /// catch-up replay read past the subscription revision): each event comes exactly once.
    #[tokio::test]
    async fn handoff_skips_live_events_already_replayed() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        for key in ["/a", "/b", "/c"] {
            store.create(key, Vec::new()).await.expect("create");
        }
        let (rx, subscribed_at) = subscribe(&store.inner);
        assert_eq!(subscribed_at, 3);
        for key in ["/d", "/e"] {
            store.create(key, Vec::new()).await.expect("create");
        }
        let mut watcher = Watcher {
            inner: Arc::downgrade(&store.inner),
            prefix: "/".into(),
            last: 1,
            live: Some((rx, subscribed_at)),
            pending: VecDeque::new(),
            finished: false,
        };
        let mut next = async || match watcher.next().await {
            Some(Ok(event)) => event.revision(),
            other => panic!("expected an event, got {other:?}"),
        };
        for expected in 2..=5 {
            assert_eq!(next().await, expected);
        }
        store.create("/f", Vec::new()).await.expect("create");
        assert_eq!(next().await, 6);
    }

    /// 64 concurrent writes, some bound to fail: each gets the result its precondition calls
    /// for, the successful ones get dense, unique revisions, a watch sees them all in revision
    /// order, and they are all there after reopening.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_commit_in_groups_with_their_own_results() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        for i in 0..8 {
            store
                .create(&format!("/old{i}"), b"v1".to_vec())
                .await
                .expect("create");
        }
        let mut watch = store.watch("/", 0).await.expect("watch");

        #[derive(Debug, PartialEq)]
        enum Outcome {
            Written(i64),
            AlreadyExists,
            Conflict,
            NotFound,
        }
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64 {
            let store = store.clone();
            tasks.spawn(async move {
                let result = match i {
                    // New keys: all succeed.
                    0..32 => store.create(&format!("/new{i}"), b"n".to_vec()).await,
                    // Existing keys: all fail.
                    32..40 => store.create(&format!("/old{}", i - 32), Vec::new()).await,
                    // Two updates per key from the same view: one wins, one conflicts.
                    40..56 => {
                        let key = format!("/old{}", (i - 40) / 2);
                        let seen = (i - 40) / 2 + 1;
                        store.update(&key, b"v2".to_vec(), Some(seen)).await
                    }
                    // Absent keys: all fail.
                    56..60 => store
                        .delete(&format!("/missing{i}"), None)
                        .await
                        .map(|d| d.1),
                    _ => {
                        store
                            .update(&format!("/missing{i}"), Vec::new(), None)
                            .await
                    }
                };
                let outcome = match result {
                    Ok(revision) => Outcome::Written(revision),
                    Err(StoreError::AlreadyExists(_)) => Outcome::AlreadyExists,
                    Err(StoreError::Conflict { .. }) => Outcome::Conflict,
                    Err(StoreError::NotFound(_)) => Outcome::NotFound,
                    Err(e) => panic!("write {i}: {e}"),
                };
                (i, outcome)
            });
        }
        let mut outcomes: Vec<(i64, Outcome)> = tasks.join_all().await;
        outcomes.sort_by_key(|(i, _)| *i);

        let mut revisions = Vec::new();
        for (i, outcome) in &outcomes {
            match (i, outcome) {
                (0..32, Outcome::Written(revision)) => revisions.push(*revision),
                (32..40, Outcome::AlreadyExists) | (56..64, Outcome::NotFound) => {}
                (40..56, _) => {}
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        for pair in outcomes[40..56].chunks(2) {
            match (&pair[0].1, &pair[1].1) {
                (Outcome::Written(won), Outcome::Conflict)
                | (Outcome::Conflict, Outcome::Written(won)) => revisions.push(*won),
                other => panic!("updates {} and {}: {other:?}", pair[0].0, pair[1].0),
            }
        }
        revisions.sort_unstable();
        assert_eq!(revisions, (9..=48).collect::<Vec<_>>(), "dense and unique");

        let mut seen = Vec::new();
        while seen.len() < 40 {
            match futures::StreamExt::next(&mut watch).await {
                Some(Ok(event)) => seen.push(event.revision()),
                other => panic!("watch ended: {other:?}"),
            }
        }
        assert_eq!(seen, (9..=48).collect::<Vec<_>>(), "in revision order");

        drop((watch, store));
        let store = EmbeddedStore::open(dir.path()).expect("reopen");
        assert_eq!(store.current_revision().await.expect("revision"), 48);
        for i in 0..8 {
            let old = store
                .get(&format!("/old{i}"))
                .await
                .expect("get")
                .expect("present");
            assert_eq!(old.value, b"v2");
        }
    }

    /// Within one batch, each write sees the ones before it, and failed ones take no revision.
    #[test]
    fn a_batch_checks_each_write_against_the_earlier_ones() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let batch = [
            ("/a", Write::Create(b"1".to_vec())),
            ("/a", Write::Create(b"again".to_vec())),
            ("/a", Write::Update(b"2".to_vec(), Some(1))),
            ("/a", Write::Delete(Some(1))),
            ("/b", Write::Delete(None)),
            ("/a", Write::Delete(Some(2))),
        ];
        let results = store.inner.commit(
            batch
                .into_iter()
                .enumerate()
                .map(|(ticket, (key, write))| Queued {
                    ticket: ticket as u64,
                    key: key.into(),
                    write,
                })
                .collect(),
        );
        let summary: Vec<String> = results
            .iter()
            .map(|r| match r {
                Ok(event) => format!("ok {}", event.revision()),
                Err(StoreError::AlreadyExists(_)) => "exists".into(),
                Err(StoreError::Conflict { found, .. }) => format!("conflict {found}"),
                Err(StoreError::NotFound(_)) => "not found".into(),
                Err(e) => e.to_string(),
            })
            .collect();
        assert_eq!(
            summary,
            ["ok 1", "exists", "ok 2", "conflict 2", "not found", "ok 3"]
        );
        assert_eq!(lock(&store.inner.writer).revision, 3);
    }

    #[test]
    fn events_round_trip() {
        let events = [
            WatchEvent::Put {
                kv: kv("/a", b"one", 3, 3),
                prev: None,
            },
            WatchEvent::Put {
                kv: kv("/a", b"two", 3, 4),
                prev: Some(kv("/a", b"one", 3, 3)),
            },
            WatchEvent::Delete {
                prev: kv("/a", b"", 3, 4),
                revision: 5,
            },
        ];
        for event in events {
            let bytes = encode_event(&event).expect("encode");
            assert_eq!(event_key(&bytes).expect("key"), b"/a");
            assert_eq!(
                decode_event(event.revision(), &bytes).expect("decode"),
                event
            );
        }
    }

    #[test]
    fn corrupt_bytes_are_errors_not_panics() {
        let good = encode_event(&WatchEvent::Put {
            kv: kv("/key", b"value", 1, 2),
            prev: Some(kv("/key", b"old", 1, 1)),
        })
        .expect("encode");
        for len in 0..good.len() {
            assert!(matches!(
                decode_event(2, &good[..len]),
                Err(StoreError::Backend(_))
            ));
        }
        let mut bad_kind = good.clone();
        bad_kind[0] = 9;
        assert!(matches!(
            decode_event(2, &bad_kind),
            Err(StoreError::Backend(_))
        ));
        let mut huge_len = good.clone();
        huge_len[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode_event(2, &huge_len),
            Err(StoreError::Backend(_))
        ));
        assert!(matches!(
            decode_value(b"/k", &[0; 7]),
            Err(StoreError::Backend(_))
        ));
        assert!(matches!(
            decode_value(&[0xff, 0xfe], &[0; 16]),
            Err(StoreError::Backend(_))
        ));
    }
}
