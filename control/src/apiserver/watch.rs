//! WATCH: turns the store's change stream into Kubernetes watch events.
//!
//! A watch without a resourceVersion (or with `0`, or `sendInitialEvents=true`) first sends the
//! current matching objects as ADDED; otherwise it resumes after the given version. Selectors
//! are applied to both the old and the new object, so an object that stops matching is sent
//! as DELETED and one that starts matching as ADDED, like Kubernetes. A compacted version
//! ends the stream with an ERROR event carrying a 410 Expired Status.
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::registry::Resource;
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{ApiError, ApiResult, Subject};
use super::storage::{Api, ListParams, decode_kv};
use crate::store::{StoreError, WatchEvent};

/// One watch event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` or `ERROR`.
    pub kind: &'static str,
    pub object: Value,
}

/// Options of a WATCH.
#[derive(Clone, Debug, Default)]
pub struct WatchParams {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub resource_version: Option<String>,
    pub send_initial_events: Option<bool>,
    pub allow_bookmarks: bool,
    pub timeout: Option<Duration>,
}

/// The longest a watch runs when the client sets no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Starts a watch; events arrive on the returned channel until the timeout, a store error,
/// or the receiver is dropped.
pub async fn start(
    api: Arc<Api>,
    res: &'static Resource,
    ns: Option<String>,
    params: WatchParams,
) -> ApiResult<mpsc::Receiver<Event>> {
    let rv = params.resource_version.as_deref().unwrap_or("");
    let resume_from: Option<i64> = match rv {
        "" | "0" => None,
        v => Some(
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?,
        ),
    };
    let initial = params.send_initial_events.unwrap_or(resume_from.is_none());
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let timeout = params.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if tokio::time::timeout(
            timeout,
            run(&api, res, ns.as_deref(), &params, resume_from, initial, &tx),
        )
        .await
        .is_err()
        {
            tracing::debug!(resource = res.plural, "watch reached its timeout");
        }
    });
    Ok(rx)
}

fn error_event(err: &ApiError) -> Event {
    Event {
        kind: "ERROR",
        object: err.to_status(),
    }
}

fn bookmark(res: &Resource, revision: i64, initial_events_end: bool) -> Event {
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    Event {
        kind: "BOOKMARK",
        object: json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": metadata}),
    }
}

async fn run(
    api: &Api,
    res: &Resource,
    ns: Option<&str>,
    params: &WatchParams,
    resume_from: Option<i64>,
    initial: bool,
    tx: &mpsc::Sender<Event>,
) {
    let matches =
        |obj: &Value| params.labels.matches_object(obj) && params.fields.matches_object(obj);
    let mut revision = match resume_from {
        Some(rv) if !initial => rv,
        _ => {
            let list = ListParams {
                labels: params.labels.clone(),
                fields: params.fields.clone(),
                ..Default::default()
            };
            match api.list_items(res, ns, &list).await {
                Ok((items, revision, _)) => {
                    for object in items {
                        if tx
                            .send(Event {
                                kind: "ADDED",
                                object,
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    if params.allow_bookmarks
                        && params.send_initial_events == Some(true)
                        && tx.send(bookmark(res, revision, true)).await.is_err()
                    {
                        return;
                    }
                    revision
                }
                Err(e) => {
                    let _ = tx.send(error_event(&e)).await;
                    return;
                }
            }
        }
    };
    let mut stream = match api.store.watch(&res.prefix(ns), revision).await {
        Ok(stream) => stream,
        Err(e) => {
            let _ = tx.send(error_event(&watch_error(e))).await;
            return;
        }
    };
    let mut ticker = tokio::time::interval(api.bookmark_interval());
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = ticker.tick() => {
                if params.allow_bookmarks && revision > 0 && tx.send(bookmark(res, revision, false)).await.is_err() {
                    return;
                }
            }
            next = stream.next() => {
                let event = match next {
                    None => return,
                    Some(Err(e)) => {
                        let _ = tx.send(error_event(&watch_error(e))).await;
                        return;
                    }
                    Some(Ok(event)) => event,
                };
                revision = revision.max(event.revision());
                let out = match translate(&event, &matches) {
                    Ok(Some(out)) => out,
                    Ok(None) => {
                        if let WatchEvent::Progress { revision } = event
                            && params.allow_bookmarks && tx.send(bookmark(res, revision, false)).await.is_err() {
                                return;
                            }
                        continue;
                    }
                    Err(e) => {
                        let _ = tx.send(error_event(&e)).await;
                        return;
                    }
                };
                if tx.send(out).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Maps a store watch error; a compacted revision is the 410 clients relist on.
fn watch_error(err: StoreError) -> ApiError {
    match err {
        StoreError::Compacted {
            requested,
            compacted,
        } => ApiError::expired(format!(
            "too old resource version: {requested} ({compacted})"
        )),
        other => ApiError::from_store(other, Subject::default()),
    }
}

/// The API event for a store event, given the selector (`None`: not visible).
fn translate(event: &WatchEvent, matches: &dyn Fn(&Value) -> bool) -> ApiResult<Option<Event>> {
    match event {
        WatchEvent::Put { kv, prev } => {
            let object = decode_kv(kv)?;
            let now_matches = matches(&object);
            let was_visible = match prev {
                Some(prev) => matches(&decode_kv(prev)?),
                None => false,
            };
            let kind = match (was_visible, now_matches) {
                (false, true) => "ADDED",
                (true, true) => "MODIFIED",
                (true, false) => "DELETED",
                (false, false) => return Ok(None),
            };
            Ok(Some(Event { kind, object }))
        }
        WatchEvent::Delete { prev, revision } => {
            let mut object = decode_kv(prev)?;
            if !matches(&object) {
                return Ok(None);
            }
            object["metadata"]["resourceVersion"] = json!(revision.to_string());
            Ok(Some(Event {
                kind: "DELETED",
                object,
            }))
        }
        WatchEvent::Progress { .. } => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyValue;

    fn kv(value: Value, create: i64, modified: i64) -> KeyValue {
        KeyValue {
            key: "/registry/core/pods/d/p".into(),
            value: serde_json::to_vec(&value).unwrap(),
            create_revision: create,
            mod_revision: modified,
        }
    }

    #[test]
    fn objects_leaving_the_selector_are_deleted() {
        let selector = LabelSelector::parse("app=web").unwrap();
        let matches = |o: &Value| selector.matches_object(o);
        let web = json!({"metadata": {"name": "p", "labels": {"app": "web"}}});
        let other = json!({"metadata": {"name": "p", "labels": {"app": "db"}}});
        let added = WatchEvent::Put {
            kv: kv(web.clone(), 2, 2),
            prev: None,
        };
        assert_eq!(translate(&added, &matches).unwrap().unwrap().kind, "ADDED");
        let modified = WatchEvent::Put {
            kv: kv(web.clone(), 2, 3),
            prev: Some(kv(web.clone(), 2, 2)),
        };
        assert_eq!(
            translate(&modified, &matches).unwrap().unwrap().kind,
            "MODIFIED"
        );
        let left = WatchEvent::Put {
            kv: kv(other.clone(), 2, 4),
            prev: Some(kv(web.clone(), 2, 3)),
        };
        assert_eq!(translate(&left, &matches).unwrap().unwrap().kind, "DELETED");
        let back = WatchEvent::Put {
            kv: kv(web.clone(), 2, 5),
            prev: Some(kv(other.clone(), 2, 4)),
        };
        assert_eq!(translate(&back, &matches).unwrap().unwrap().kind, "ADDED");
        let invisible = WatchEvent::Put {
            kv: kv(other.clone(), 2, 6),
            prev: Some(kv(other, 2, 4)),
        };
        assert!(translate(&invisible, &matches).unwrap().is_none());
        let deleted = WatchEvent::Delete {
            prev: kv(web, 2, 5),
            revision: 7,
        };
        let event = translate(&deleted, &matches).unwrap().unwrap();
        assert_eq!(
            (
                event.kind,
                event.object["metadata"]["resourceVersion"].as_str()
            ),
            ("DELETED", Some("7"))
        );
    }
}
