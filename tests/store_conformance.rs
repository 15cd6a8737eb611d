//! Store conformance: one set of behavioural checks of the `Store` trait, run against both
//! backends (the embedded redb store and a real etcd), plus the embedded store's crash test.
//!
//! Each check is an `async fn(Arc<dyn Store>)`; the `conformance!` macro instantiates it once per
//! backend (`embedded::<check>` and `etcd::<check>`). Every etcd test starts its own etcd
//! (`/usr/bin/etcd`, Debian package `etcd-server`) on free 127.0.0.1 ports with a temporary data
//! directory, killed when the test ends, however it ends. None of these tests needs root.
//!
//! Time limits here only stop a broken test from hanging; no check depends on timing.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use keel_control::store::embedded::{EmbeddedOptions, EmbeddedStore};
use keel_control::store::{KeyValue, ListOptions, Store, StoreError, WatchEvent, WatchStream};
use keel_tests::etcd::EtcdServer;
use keel_tests::process;

/// Upper bound for any single wait (a watch event, etcd starting).
const PATIENCE: Duration = Duration::from_secs(30);

// ---- Backends --------------------------------------------------------------------------------

/// A store under test and whatever must live as long as it (data directory, etcd process).
struct Fixture {
    store: Arc<dyn Store>,
    // Dropped after `store`: fields drop in declaration order.
    _etcd: Option<EtcdServer>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn embedded() -> Fixture {
        let dir = temp_dir();
        let store = EmbeddedStore::open(dir.path()).expect("opening the embedded store");
        Fixture {
            store: Arc::new(store),
            _etcd: None,
            _dir: dir,
        }
    }

    async fn etcd() -> Fixture {
        let dir = temp_dir();
        let mut etcd = EtcdServer::start(dir.path()).expect("starting etcd");
        let store = etcd.connect("/keel").await.expect("connecting to etcd");
        Fixture {
            store: Arc::new(store),
            _etcd: Some(etcd),
            _dir: dir,
        }
    }
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("keel-store-test-")
        .tempdir()
        .expect("creating a temporary directory")
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let fixture = super::Fixture::embedded();
                    super::$check(fixture.store.clone()).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let fixture = super::Fixture::etcd().await;
                    super::$check(fixture.store.clone()).await;
                }
            )*
        }
    };
}

conformance!(
    create_get_update_delete,
    failed_writes_change_nothing,
    revisions_increase_with_every_write,
    list_is_sorted_and_prefix_isolated,
    list_pages_with_limit_and_start_after,
    list_at_a_past_revision,
    watch_from_a_past_revision_delivers_exactly_the_later_events,
    watch_from_now,
    watch_rejects_future_revisions,
    compaction_makes_old_revisions_unavailable,
    concurrent_writers_get_distinct_revisions,
    watch_is_gap_free_under_concurrent_writes,
);

// ---- Helpers ---------------------------------------------------------------------------------

fn opts(revision: i64, limit: usize, start_after: Option<&str>) -> ListOptions {
    ListOptions {
        revision,
        limit,
        start_after: start_after.map(str::to_string),
    }
}

async fn list_all(store: &Arc<dyn Store>, prefix: &str, revision: i64) -> Vec<KeyValue> {
    let list = store
        .list(prefix, opts(revision, 0, None))
        .await
        .unwrap_or_else(|e| panic!("list {prefix} at {revision}: {e}"));
    assert!(!list.more, "an unlimited list has nothing more");
    list.items
}

fn keys(items: &[KeyValue]) -> Vec<&str> {
    items.iter().map(|kv| kv.key.as_str()).collect()
}

fn pairs(items: &[KeyValue]) -> Vec<(&str, &[u8])> {
    items
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
        .collect()
}

/// The next change on a watch (progress notifications skipped); panics on an error or the end.
async fn next_change(stream: &mut WatchStream) -> WatchEvent {
    loop {
        match tokio::time::timeout(PATIENCE, stream.next()).await {
            Err(_) => panic!("no watch event within {PATIENCE:?}"),
            Ok(None) => panic!("the watch ended"),
            Ok(Some(Err(e))) => panic!("the watch failed: {e}"),
            Ok(Some(Ok(WatchEvent::Progress { .. }))) => continue,
            Ok(Some(Ok(event))) => return event,
        }
    }
}

/// A put event's key, value and prev value, or a delete's key and prev value, with its revision.
fn describe(event: &WatchEvent) -> (i64, String, String, Option<String>) {
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    match event {
        WatchEvent::Put { kv, prev } => (
            kv.mod_revision,
            format!("put {}", kv.key),
            text(&kv.value),
            prev.as_ref().map(|p| text(&p.value)),
        ),
        WatchEvent::Delete { prev, revision } => (
            *revision,
            format!("delete {}", prev.key),
            String::new(),
            Some(text(&prev.value)),
        ),
        WatchEvent::Progress { revision } => (*revision, "progress".into(), String::new(), None),
    }
}

/// Asserts that watching `prefix` after `after` fails with `Compacted`, either right away or
/// as the stream's first item (etcd may only learn it once the watch is set up).
async fn assert_watch_compacted(store: &Arc<dyn Store>, prefix: &str, after: i64) {
    match store.watch(prefix, after).await {
        Err(StoreError::Compacted { .. }) => {}
        Err(e) => panic!("watch after compacted revision {after}: expected Compacted, got {e}"),
        Ok(mut stream) => loop {
            match tokio::time::timeout(PATIENCE, stream.next()).await {
                Ok(Some(Ok(WatchEvent::Progress { .. }))) => continue,
                Ok(Some(Err(StoreError::Compacted { .. }))) => break,
                other => panic!(
                    "watch after compacted revision {after}: expected Compacted, got {other:?}"
                ),
            }
        },
    }
}

// ---- Checks ----------------------------------------------------------------------------------

async fn create_get_update_delete(store: Arc<dyn Store>) {
    let created = store
        .create("/pods/a", b"one".to_vec())
        .await
        .expect("create");
    assert!(created > 0);
    let kv = store.get("/pods/a").await.expect("get").expect("present");
    assert_eq!(
        kv,
        KeyValue {
            key: "/pods/a".into(),
            value: b"one".to_vec(),
            create_revision: created,
            mod_revision: created,
        }
    );
    assert!(matches!(
        store.create("/pods/a", b"again".to_vec()).await,
        Err(StoreError::AlreadyExists(key)) if key == "/pods/a"
    ));
    assert_eq!(store.get("/pods/missing").await.expect("get"), None);

    let updated = store
        .update("/pods/a", b"two".to_vec(), Some(created))
        .await
        .expect("update with the right revision");
    assert!(updated > created);
    let kv = store.get("/pods/a").await.expect("get").expect("present");
    assert_eq!((kv.create_revision, kv.mod_revision), (created, updated));
    assert_eq!(kv.value, b"two");

    match store
        .update("/pods/a", b"stale".to_vec(), Some(created))
        .await
    {
        Err(StoreError::Conflict {
            key,
            expected,
            found,
        }) => assert_eq!(
            (key.as_str(), expected, found),
            ("/pods/a", created, updated)
        ),
        other => panic!("stale update: expected Conflict, got {other:?}"),
    }
    let unconditional = store
        .update("/pods/a", b"three".to_vec(), None)
        .await
        .expect("unconditional update");
    assert!(unconditional > updated);

    match store.delete("/pods/a", Some(updated)).await {
        Err(StoreError::Conflict { found, .. }) => assert_eq!(found, unconditional),
        other => panic!("stale delete: expected Conflict, got {other:?}"),
    }
    let (prev, deleted) = store
        .delete("/pods/a", Some(unconditional))
        .await
        .expect("delete with the right revision");
    assert!(deleted > unconditional);
    assert_eq!(prev.value, b"three");
    assert_eq!(
        (prev.create_revision, prev.mod_revision),
        (created, unconditional)
    );
    assert_eq!(store.get("/pods/a").await.expect("get"), None);

    // Created again: a new life with a new create_revision.
    let recreated = store
        .create("/pods/a", b"four".to_vec())
        .await
        .expect("create after delete");
    assert!(recreated > deleted);
    let kv = store.get("/pods/a").await.expect("get").expect("present");
    assert_eq!(
        (kv.create_revision, kv.mod_revision),
        (recreated, recreated)
    );
    let (prev, _) = store
        .delete("/pods/a", None)
        .await
        .expect("unconditional delete");
    assert_eq!(prev.value, b"four");
}

async fn failed_writes_change_nothing(store: Arc<dyn Store>) {
    let rev = store.create("/k", b"v".to_vec()).await.expect("create");
    assert!(matches!(
        store.update("/absent", b"x".to_vec(), None).await,
        Err(StoreError::NotFound(key)) if key == "/absent"
    ));
    assert!(matches!(
        store.update("/absent", b"x".to_vec(), Some(rev)).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.delete("/absent", None).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.create("/k", b"w".to_vec()).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        store.update("/k", b"w".to_vec(), Some(rev + 100)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(store.current_revision().await.expect("revision"), rev);
    assert_eq!(store.get("/absent").await.expect("get"), None);
    let kv = store.get("/k").await.expect("get").expect("present");
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"v"[..], rev));
}

async fn revisions_increase_with_every_write(store: Arc<dyn Store>) {
    let mut last = store.current_revision().await.expect("revision");
    for i in 0..5 {
        let key = format!("/seq/{i}");
        let created = store.create(&key, vec![i]).await.expect("create");
        assert!(created > last, "create: {created} after {last}");
        let updated = store.update(&key, vec![i, i], None).await.expect("update");
        assert!(updated > created, "update: {updated} after {created}");
        last = updated;
        assert_eq!(store.current_revision().await.expect("revision"), last);
    }
    let (_, deleted) = store.delete("/seq/0", None).await.expect("delete");
    assert!(deleted > last);
    assert_eq!(store.current_revision().await.expect("revision"), deleted);
}

async fn list_is_sorted_and_prefix_isolated(store: Arc<dyn Store>) {
    for key in [
        "/pods/b",
        "/pods/a",
        "/podsx/a",
        "/pod",
        "/pods/c",
        "/services/a",
    ] {
        store
            .create(key, key.as_bytes().to_vec())
            .await
            .expect("create");
    }
    let current = store.current_revision().await.expect("revision");
    let list = store
        .list("/pods/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(keys(&list.items), ["/pods/a", "/pods/b", "/pods/c"]);
    assert_eq!(list.revision, current);
    assert!(!list.more);
    assert_eq!(
        pairs(&list.items)[0],
        ("/pods/a", &b"/pods/a"[..]),
        "values come back with their keys"
    );
    assert_eq!(
        keys(&list_all(&store, "/pods", 0).await),
        ["/pods/a", "/pods/b", "/pods/c", "/podsx/a"]
    );
    assert_eq!(
        keys(&list_all(&store, "", 0).await),
        [
            "/pod",
            "/pods/a",
            "/pods/b",
            "/pods/c",
            "/podsx/a",
            "/services/a"
        ]
    );
    assert!(list_all(&store, "/nodes/", 0).await.is_empty());
}

async fn list_pages_with_limit_and_start_after(store: Arc<dyn Store>) {
    let all: Vec<String> = (0..10).map(|i| format!("/items/{i:02}")).collect();
    for key in &all {
        store.create(key, b"v1".to_vec()).await.expect("create");
    }
    store
        .create("/itemsz", b"outside".to_vec())
        .await
        .expect("create");

    let first = store
        .list("/items/", opts(0, 4, None))
        .await
        .expect("first page");
    assert_eq!(
        keys(&first.items),
        all[..4].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(first.more);
    let at = first.revision;

    // Changes after the first page must not show in the later pages read at its revision.
    store
        .update("/items/05", b"v2".to_vec(), None)
        .await
        .expect("update");
    store.delete("/items/06", None).await.expect("delete");
    store
        .create("/items/055", b"new".to_vec())
        .await
        .expect("create");

    let mut seen = first.items.clone();
    let mut pages = 1;
    let mut more = first.more;
    while more {
        let after = seen.last().map(|kv| kv.key.clone());
        let page = store
            .list("/items/", opts(at, 4, after.as_deref()))
            .await
            .expect("next page");
        assert_eq!(page.revision, at);
        assert!(page.items.len() <= 4);
        more = page.more;
        seen.extend(page.items);
        pages += 1;
        assert!(pages <= 5, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(
        keys(&seen),
        all.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(seen.iter().all(|kv| kv.value == b"v1"));

    // At the current revision the changes are visible, and paging still covers everything once.
    let page = store
        .list("/items/", opts(0, 0, Some("/items/04")))
        .await
        .expect("list after a key");
    assert_eq!(
        keys(&page.items),
        [
            "/items/05",
            "/items/055",
            "/items/07",
            "/items/08",
            "/items/09"
        ]
    );
    // A start key before the prefix starts at the prefix.
    let page = store
        .list("/items/", opts(0, 2, Some("/a")))
        .await
        .expect("list after an earlier key");
    assert_eq!(keys(&page.items), ["/items/00", "/items/01"]);
    assert!(page.more);
    // An exact last page has nothing more.
    let page = store
        .list("/items/", opts(0, 2, Some("/items/08")))
        .await
        .expect("last page");
    assert_eq!(keys(&page.items), ["/items/09"]);
    assert!(!page.more);
}

async fn list_at_a_past_revision(store: Arc<dyn Store>) {
    let r1 = store
        .create("/p/a", b"a1".to_vec())
        .await
        .expect("create a");
    let r2 = store
        .create("/p/b", b"b1".to_vec())
        .await
        .expect("create b");
    let r3 = store
        .update("/p/a", b"a2".to_vec(), None)
        .await
        .expect("update a");
    let (_, r4) = store.delete("/p/b", None).await.expect("delete b");
    let r5 = store
        .create("/p/c", b"c1".to_vec())
        .await
        .expect("create c");
    store
        .create("/q/x", b"x".to_vec())
        .await
        .expect("create elsewhere");

    assert_eq!(
        pairs(&list_all(&store, "/p/", r1).await),
        [("/p/a", &b"a1"[..])]
    );
    assert_eq!(
        pairs(&list_all(&store, "/p/", r2).await),
        [("/p/a", &b"a1"[..]), ("/p/b", &b"b1"[..])]
    );
    let at_r3 = list_all(&store, "/p/", r3).await;
    assert_eq!(pairs(&at_r3), [("/p/a", &b"a2"[..]), ("/p/b", &b"b1"[..])]);
    assert_eq!(
        (at_r3[0].create_revision, at_r3[0].mod_revision),
        (r1, r3),
        "revisions as they were"
    );
    assert_eq!(
        pairs(&list_all(&store, "/p/", r4).await),
        [("/p/a", &b"a2"[..])]
    );
    assert_eq!(
        pairs(&list_all(&store, "/p/", r5).await),
        [("/p/a", &b"a2"[..]), ("/p/c", &b"c1"[..])]
    );
    let list = store.list("/p/", opts(r2, 0, None)).await.expect("list");
    assert_eq!(list.revision, r2);

    // Paging at a past revision.
    let page = store.list("/p/", opts(r2, 1, None)).await.expect("page 1");
    assert_eq!((keys(&page.items), page.more), (vec!["/p/a"], true));
    let page = store
        .list("/p/", opts(r2, 1, Some("/p/a")))
        .await
        .expect("page 2");
    assert_eq!((keys(&page.items), page.more), (vec!["/p/b"], false));

    let current = store.current_revision().await.expect("revision");
    assert!(matches!(
        store.list("/p/", opts(current + 10, 0, None)).await,
        Err(StoreError::FutureRevision { requested, .. }) if requested == current + 10
    ));
}

async fn watch_from_a_past_revision_delivers_exactly_the_later_events(store: Arc<dyn Store>) {
    let r1 = store.create("/w/a", b"a1".to_vec()).await.expect("create");
    let r2 = store.create("/w/b", b"b1".to_vec()).await.expect("create");
    let r3 = store
        .update("/w/a", b"a2".to_vec(), Some(r1))
        .await
        .expect("update");
    store
        .create("/elsewhere", b"x".to_vec())
        .await
        .expect("create");
    let (_, r5) = store.delete("/w/b", Some(r2)).await.expect("delete");
    let r6 = store.create("/w/c", b"c1".to_vec()).await.expect("create");

    let mut watch = store.watch("/w/", r2).await.expect("watch");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(describe(&next_change(&mut watch).await));
    }
    assert_eq!(
        got,
        [
            (r3, "put /w/a".into(), "a2".into(), Some("a1".into())),
            (r5, "delete /w/b".into(), String::new(), Some("b1".into())),
            (r6, "put /w/c".into(), "c1".into(), None),
        ]
    );
    // Nothing else was pending: the next event is the next write.
    let r7 = store
        .update("/w/c", b"c2".to_vec(), None)
        .await
        .expect("update");
    assert_eq!(
        describe(&next_change(&mut watch).await),
        (r7, "put /w/c".into(), "c2".into(), Some("c1".into()))
    );
    // The whole put event, for the record.
    let r8 = store.create("/w/d", b"d1".to_vec()).await.expect("create");
    assert_eq!(
        next_change(&mut watch).await,
        WatchEvent::Put {
            kv: KeyValue {
                key: "/w/d".into(),
                value: b"d1".to_vec(),
                create_revision: r8,
                mod_revision: r8,
            },
            prev: None,
        }
    );
}

async fn watch_from_now(store: Arc<dyn Store>) {
    let before = store
        .create("/n/old", b"old".to_vec())
        .await
        .expect("create");
    let mut watch = store.watch("/n/", 0).await.expect("watch");
    let mut same = store
        .watch("/n/", before)
        .await
        .expect("watch at the current revision");
    store.create("/other", b"x".to_vec()).await.expect("create");
    let r1 = store
        .update("/n/old", b"new".to_vec(), Some(before))
        .await
        .expect("update");
    let (prev, r2) = store.delete("/n/old", None).await.expect("delete");
    for watch in [&mut watch, &mut same] {
        assert_eq!(
            describe(&next_change(watch).await),
            (r1, "put /n/old".into(), "new".into(), Some("old".into()))
        );
        assert_eq!(
            next_change(watch).await,
            WatchEvent::Delete {
                prev: prev.clone(),
                revision: r2,
            }
        );
    }
    assert_eq!(prev.mod_revision, r1);
}

async fn watch_rejects_future_revisions(store: Arc<dyn Store>) {
    let current = store.create("/f", b"v".to_vec()).await.expect("create");
    match store.watch("/", current + 5).await {
        Err(StoreError::FutureRevision {
            requested,
            current: c,
        }) => {
            assert_eq!((requested, c), (current + 5, current))
        }
        Err(e) => panic!("expected FutureRevision, got {e}"),
        Ok(_) => panic!("expected FutureRevision, got a watch"),
    }
}

async fn compaction_makes_old_revisions_unavailable(store: Arc<dyn Store>) {
    let mut revs = Vec::new();
    for i in 0..5u8 {
        revs.push(
            store
                .create(&format!("/c/{i}"), vec![i])
                .await
                .expect("create"),
        );
    }
    let r6 = store
        .update("/c/0", b"changed".to_vec(), None)
        .await
        .expect("update");
    let compact_at = revs[2];
    store.compact(compact_at).await.expect("compact");

    for at in [revs[0], revs[1], compact_at] {
        match store.list("/c/", opts(at, 0, None)).await {
            Err(StoreError::Compacted { requested, .. }) => assert_eq!(requested, at),
            other => panic!("list at compacted revision {at}: expected Compacted, got {other:?}"),
        }
        assert_watch_compacted(&store, "/c/", at).await;
    }
    // Later history is intact.
    let after = list_all(&store, "/c/", revs[3]).await;
    assert_eq!(keys(&after), ["/c/0", "/c/1", "/c/2", "/c/3"]);
    assert_eq!(after[0].value, [0]);
    let mut watch = store
        .watch("/c/", revs[3])
        .await
        .expect("watch after the compaction");
    assert_eq!(describe(&next_change(&mut watch).await).0, revs[4]);
    assert_eq!(describe(&next_change(&mut watch).await).0, r6);
    // Current reads are unaffected.
    assert_eq!(list_all(&store, "/c/", 0).await.len(), 5);
    assert_eq!(
        store.get("/c/1").await.expect("get").map(|kv| kv.value),
        Some(vec![1])
    );
    // Compacting again at or below is a no-op; past the current revision is an error.
    store.compact(revs[1]).await.expect("compact below");
    store.compact(compact_at).await.expect("compact again");
    let current = store.current_revision().await.expect("revision");
    assert!(matches!(
        store.compact(current + 1).await,
        Err(StoreError::FutureRevision { .. })
    ));
    // Compacting everything still leaves the current state and new watches working.
    store.compact(current).await.expect("compact all");
    assert_eq!(list_all(&store, "/c/", 0).await.len(), 5);
    let mut watch = store.watch("/c/", 0).await.expect("watch from now");
    let r = store.create("/c/new", b"n".to_vec()).await.expect("create");
    assert_eq!(describe(&next_change(&mut watch).await).0, r);
}

async fn concurrent_writers_get_distinct_revisions(store: Arc<dyn Store>) {
    const TASKS: usize = 8;
    const EACH: usize = 50;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..EACH {
                let key = format!("/conc/{t}/{i:03}");
                let result = store.create(&key, key.clone().into_bytes()).await;
                revisions.push((key, result));
            }
            revisions
        }));
    }
    let mut by_revision = BTreeMap::new();
    for task in tasks {
        let mut last = 0;
        for (key, result) in task.await.expect("writer task") {
            let revision = result.unwrap_or_else(|e| panic!("create {key}: {e}"));
            assert!(revision > last, "one writer's revisions increase");
            last = revision;
            assert!(
                by_revision.insert(revision, key).is_none(),
                "revision {revision} given twice"
            );
        }
    }
    assert_eq!(by_revision.len(), TASKS * EACH);
    let items = list_all(&store, "/conc/", 0).await;
    assert_eq!(items.len(), TASKS * EACH, "nothing lost");
    for kv in &items {
        assert_eq!(by_revision.get(&kv.mod_revision), Some(&kv.key));
        assert_eq!(kv.value, kv.key.as_bytes());
    }
    let max = *by_revision.keys().last().expect("revisions");
    assert!(store.current_revision().await.expect("revision") >= max);
}

async fn watch_is_gap_free_under_concurrent_writes(store: Arc<dyn Store>) {
    const TASKS: usize = 4;
    const EACH: usize = 40;
    let start = store.create("/g/seed", b"s".to_vec()).await.expect("seed");
    let mut from_now = store.watch("/g/", 0).await.expect("watch from now");

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..EACH {
                let key = format!("/g/{t}/{i:03}");
                let rev = store.create(&key, b"v".to_vec()).await.expect("create");
                revisions.push(rev);
                // Some writes elsewhere, which watchers of /g/ must not see.
                if i % 4 == 0 {
                    store
                        .create(&format!("/h/{t}/{i}"), b"v".to_vec())
                        .await
                        .expect("create elsewhere");
                }
            }
            revisions
        }));
    }
    // A watch started from a past revision while the writers run: it must hand over from the
    // history to live events without losing or repeating any.
    let midway = loop {
        let current = store.current_revision().await.expect("revision");
        if current >= start + 20 {
            break start + 10;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let mut from_midway = store.watch("/g/", midway).await.expect("watch from midway");

    let mut written = BTreeSet::new();
    for task in tasks {
        written.extend(task.await.expect("writer task"));
    }
    assert_eq!(written.len(), TASKS * EACH);

    let mut seen = Vec::new();
    while seen.len() < written.len() {
        seen.push(describe(&next_change(&mut from_now).await).0);
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in revision order");
    assert_eq!(seen.iter().copied().collect::<BTreeSet<_>>(), written);

    let expected: Vec<i64> = written.iter().copied().filter(|&r| r > midway).collect();
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        seen.push(describe(&next_change(&mut from_midway).await).0);
    }
    assert_eq!(seen, expected);

    // And nothing more is pending on either: the next event is the next write.
    let next = store
        .create("/g/last", b"v".to_vec())
        .await
        .expect("create");
    assert_eq!(describe(&next_change(&mut from_now).await).0, next);
    assert_eq!(describe(&next_change(&mut from_midway).await).0, next);
}

// ---- Embedded only ---------------------------------------------------------------------------

/// A watcher that doesn't keep up gets an error, after an unbroken run of events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_slow_watcher_gets_an_error_not_a_gap() {
    let dir = temp_dir();
    let store =
        EmbeddedStore::open_with(dir.path(), EmbeddedOptions { watch_buffer: 8 }).expect("open");
    // A first write, so that revisions to watch again from are never 0 ("from now").
    let start = store.create("/seed", Vec::new()).await.expect("create");
    let mut watch = store.watch("/", 0).await.expect("watch");
    for i in 0..40 {
        store
            .create(&format!("/slow/{i:02}"), b"v".to_vec())
            .await
            .expect("create");
    }
    let mut last = start;
    loop {
        match tokio::time::timeout(PATIENCE, watch.next())
            .await
            .expect("watch answers")
        {
            Some(Ok(event)) => {
                assert_eq!(event.revision(), last + 1, "no gap before the error");
                last = event.revision();
            }
            Some(Err(StoreError::Backend(msg))) => {
                assert!(msg.contains("fell behind"), "{msg}");
                break;
            }
            Some(Err(e)) => panic!("unexpected error {e}"),
            None => panic!("the watch ended without an error"),
        }
    }
    assert!(
        last < start + 40,
        "some events were lost, so an error is due"
    );
    assert!(
        tokio::time::timeout(PATIENCE, watch.next())
            .await
            .expect("ends")
            .is_none(),
        "the stream ends after the error"
    );
    // Watching again from the last delivered revision replays the rest from the history.
    let mut again = store.watch("/", last).await.expect("watch again");
    for expected in last + 1..=start + 40 {
        assert_eq!(next_change(&mut again).await.revision(), expected);
    }
}

/// Data, revisions and history survive closing and reopening the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_reopens_with_data_and_history() {
    let dir = temp_dir();
    let (r1, r2, r3) = {
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let r1 = store.create("/a", b"1".to_vec()).await.expect("create");
        let r2 = store
            .update("/a", b"2".to_vec(), None)
            .await
            .expect("update");
        let r3 = store.create("/b", b"3".to_vec()).await.expect("create");
        store.compact(r1).await.expect("compact");
        (r1, r2, r3)
    };
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).expect("reopen"));
    assert_eq!(store.current_revision().await.expect("revision"), r3);
    assert_eq!(
        pairs(&list_all(&store, "/", 0).await),
        [("/a", &b"2"[..]), ("/b", &b"3"[..])]
    );
    assert_eq!(pairs(&list_all(&store, "/", r2).await), [("/a", &b"2"[..])]);
    assert!(matches!(
        store.list("/", opts(r1, 0, None)).await,
        Err(StoreError::Compacted { .. })
    ));
    let mut watch = store.watch("/", r2).await.expect("watch");
    assert_eq!(next_change(&mut watch).await.revision(), r3);
    let r4 = store.create("/c", b"4".to_vec()).await.expect("create");
    assert_eq!(r4, r3 + 1);
    assert_eq!(next_change(&mut watch).await.revision(), r4);
}

/// Every write the store acknowledged survives `kill -9` of the writing process.
#[test]
fn embedded_acknowledged_writes_survive_kill_9() {
    use std::os::unix::process::ExitStatusExt;

    let dir = temp_dir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel-storetool"));
    cmd.arg("fill")
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--prefix")
        .arg("/durability/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = process::spawn(cmd).expect("starting keel-storetool");
    let lines = child.stdout_lines().expect("storetool output");
    let mut acked = Vec::new();
    let parse = |line: String| -> (String, i64) {
        let mut words = line.split_whitespace();
        match (
            words.next(),
            words.next(),
            words.next().map(str::parse::<i64>),
        ) {
            (Some("ACK"), Some(key), Some(Ok(revision))) => (key.to_string(), revision),
            _ => panic!("unexpected storetool output {line:?}"),
        }
    };
    while acked.len() < 150 {
        let line = lines
            .next_within(PATIENCE)
            .expect("keel-storetool stopped acknowledging writes");
        acked.push(parse(line));
    }
    child.kill();
    let status = child.try_wait().expect("status").expect("killed");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "killed mid-stream, not exited"
    );
    // Lines printed before the kill are acknowledged too.
    while let Some(line) = lines.next_within(Duration::from_secs(5)) {
        acked.push(parse(line));
    }

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = EmbeddedStore::open(dir.path()).expect("reopening after kill -9");
        for (key, revision) in &acked {
            let kv =
                store.get(key).await.expect("get").unwrap_or_else(|| {
                    panic!("acknowledged write {key} (revision {revision}) lost")
                });
            assert_eq!(
                (kv.mod_revision, kv.value.as_slice()),
                (*revision, key.as_bytes())
            );
        }
        let last = acked.last().expect("acks").1;
        let current = store.current_revision().await.expect("revision");
        assert!(
            current == last || current == last + 1,
            "revision {current} after ack {last}"
        );
        // The store keeps working after the crash.
        let next = store
            .create("/after-crash", Vec::new())
            .await
            .expect("create");
        assert_eq!(next, current + 1);
    });
}

// ---- etcd only -------------------------------------------------------------------------------

/// Two stores with different prefixes on one etcd don't see each other's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stores_with_different_prefixes_are_isolated() {
    let dir = temp_dir();
    let mut etcd = EtcdServer::start(dir.path()).expect("starting etcd");
    let one: Arc<dyn Store> = Arc::new(etcd.connect("/one").await.expect("connecting"));
    let two: Arc<dyn Store> = Arc::new(etcd.connect("/two").await.expect("connecting"));
    let mut watch_two = two.watch("", 0).await.expect("watch");
    one.create("/k", b"1".to_vec())
        .await
        .expect("create in one");
    assert_eq!(two.get("/k").await.expect("get"), None);
    assert!(list_all(&two, "", 0).await.is_empty());
    assert_eq!(keys(&list_all(&one, "", 0).await), ["/k"]);
    let r = two
        .create("/k", b"2".to_vec())
        .await
        .expect("create in two");
    assert_eq!(
        describe(&next_change(&mut watch_two).await),
        (r, "put /k".into(), "2".into(), None)
    );
}
