//! Events (`core/v1` Event objects) for the transitions users look for, written in the
//! background so a controller never waits on them. Repeats of the same (object, type, reason,
//! message) within ten minutes bump `count` and `lastTimestamp` of the first event, as
//! client-go's recorder aggregates them; `kubectl describe` shows them. Old events are removed by
//! [`super::gc`] after an hour, like the API server's event TTL.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::{Metadata, Resource};
use tokio::sync::mpsc;

use super::client::Client;

/// How long repeats of an event are folded into it.
const AGGREGATION_WINDOW: Duration = Duration::from_secs(600);

struct Pending {
    component: &'static str,
    object: ObjectReference,
    type_: &'static str,
    reason: &'static str,
    message: String,
}

/// Records events on behalf of one component (e.g. `replicaset-controller`).
#[derive(Clone)]
pub struct Recorder {
    component: &'static str,
    tx: mpsc::Sender<Pending>,
}

/// A reference to an object, as events and ownerReferences carry it.
pub fn reference<K: Resource + Metadata<Ty = ObjectMeta>>(obj: &K) -> ObjectReference {
    let meta = obj.metadata();
    ObjectReference {
        api_version: Some(K::API_VERSION.to_string()),
        kind: Some(K::KIND.to_string()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        field_path: None,
    }
}

impl Recorder {
    /// A recorder writing through `client`, and its writer task, which ends (after writing
    /// what is queued) once every clone of the recorder is dropped.
    pub fn spawn(
        client: Client,
        component: &'static str,
        host: Option<String>,
    ) -> (Recorder, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(4096);
        let writer = tokio::spawn(write_events(client, host, rx));
        (Recorder { component, tx }, writer)
    }

    /// A recorder for another component sharing this one's writer.
    pub fn for_component(&self, component: &'static str) -> Recorder {
        Recorder {
            component,
            tx: self.tx.clone(),
        }
    }

    pub fn component(&self) -> &'static str {
        self.component
    }

    /// A `Normal` event.
    pub fn normal<K>(&self, obj: &K, reason: &'static str, message: impl Into<String>)
    where
        K: Resource + Metadata<Ty = ObjectMeta>,
    {
        self.record(reference(obj), "Normal", reason, message.into());
    }

    /// A `Warning` event.
    pub fn warning<K>(&self, obj: &K, reason: &'static str, message: impl Into<String>)
    where
        K: Resource + Metadata<Ty = ObjectMeta>,
    {
        self.record(reference(obj), "Warning", reason, message.into());
    }

    /// An event about a referenced object. Dropped (with a log line) when the writer is
    /// behind by thousands of events, as client-go's recorder does.
    pub fn record(
        &self,
        mut object: ObjectReference,
        type_: &'static str,
        reason: &'static str,
        message: String,
    ) {
        object.resource_version = None;
        let pending = Pending {
            component: self.component,
            object,
            type_,
            reason,
            message,
        };
        if self.tx.try_send(pending).is_err() {
            tracing::debug!(
                component = self.component,
                reason,
                "event dropped: writer is behind"
            );
        }
    }
}

type AggregateKey = (String, &'static str, &'static str, String);

async fn write_events(client: Client, host: Option<String>, mut rx: mpsc::Receiver<Pending>) {
    // (object uid, type, reason, message) -> (event namespace, event name, first seen)
    let mut recent: HashMap<AggregateKey, (String, String, Instant)> = HashMap::new();
    while let Some(pending) = rx.recv().await {
        let namespace = pending
            .object
            .namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let uid = pending.object.uid.clone().unwrap_or_default();
        let key = (uid, pending.type_, pending.reason, pending.message.clone());
        let now = Time(jiff::Timestamp::now());
        if let Some((ns, name, since)) = recent.get(&key)
            && since.elapsed() < AGGREGATION_WINDOW
        {
            let bumped = client
                .update::<Event, _>(Some(ns), name, None, |event| {
                    event.count = Some(event.count.unwrap_or(1) + 1);
                    event.last_timestamp = Some(now.clone());
                    true
                })
                .await;
            if bumped.is_ok() {
                continue;
            }
        }
        if recent.len() > 4096 {
            recent.retain(|_, (_, _, since)| since.elapsed() < AGGREGATION_WINDOW);
        }
        let object_name = pending.object.name.clone().unwrap_or_default();
        let name = format!(
            "{object_name}.{:x}",
            jiff::Timestamp::now().as_nanosecond() as u64
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: pending.object,
            reason: Some(pending.reason.to_string()),
            message: Some(pending.message),
            type_: Some(pending.type_.to_string()),
            source: Some(EventSource {
                component: Some(pending.component.to_string()),
                host: host.clone(),
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some(pending.component.to_string()),
            reporting_instance: host.clone(),
            ..Default::default()
        };
        match client.create(&event).await {
            Ok(_) => {
                recent.insert(key, (namespace, name, Instant::now()));
            }
            Err(e) => tracing::debug!(error = %e.message, "could not write an event"),
        }
    }
}
