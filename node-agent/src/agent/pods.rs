//! The pod manager: watches the pods bound to this node (`fieldSelector=spec.nodeName=<node>`
//! through kube-rs' watcher), gives each pod uid its own worker (see [`super::worker`]),
//! relists the runtime's containers every second to wake the workers whose containers
//! changed (kubelet's PLEG), and after the first complete list removes what the runtime still
//! holds for pods that no longer exist (orphan cleanup after an agent restart). Pods that do
//! exist are adopted by their new worker without restarting their containers.
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::volumes;
use super::worker::{self, Shared, WorkerHandle, WorkerMsg};
use crate::runtime::SandboxId;

/// How often the runtime's containers are relisted to notice exits.
pub const RELIST_PERIOD: Duration = Duration::from_secs(1);

/// The running workers; dropping it stops them (the pods keep running).
#[derive(Default)]
struct Workers {
    by_uid: HashMap<String, WorkerHandle>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        for handle in self.by_uid.values() {
            handle.task.abort();
        }
    }
}

fn uid_of(pod: &Pod) -> Option<String> {
    pod.metadata.uid.clone().filter(|u| !u.is_empty())
}

struct Manager {
    shared: Arc<Shared>,
    workers: Workers,
    /// Uids whose worker finished (deleted and cleaned up): late events for them are ignored.
    finished: HashSet<String>,
    done_tx: mpsc::UnboundedSender<String>,
    /// Per sandbox, a fingerprint of its containers' states at the last relist.
    fingerprints: HashMap<SandboxId, u64>,
    /// Uids seen in the current (re)list, until its InitDone.
    listing: Option<HashSet<String>>,
    cleaned_orphans: bool,
}

impl Manager {
    fn dispatch(&mut self, pod: Pod) {
        let Some(uid) = uid_of(&pod) else { return };
        if self.finished.contains(&uid) {
            return;
        }
        let pod = Arc::new(pod);
        if let Some(handle) = self.workers.by_uid.get(&uid)
            && handle.tx.send(WorkerMsg::Update(pod.clone())).is_ok()
        {
            return;
        }
        debug!(pod = %worker::pod_key(&pod), "starting a pod worker");
        let handle = worker::spawn(self.shared.clone(), pod, self.done_tx.clone());
        self.workers.by_uid.insert(uid, handle);
    }

    fn removed(&mut self, pod: Pod) {
        let Some(uid) = uid_of(&pod) else { return };
        // The pod object is gone: no more events will come for this uid.
        if self.finished.remove(&uid) {
            return;
        }
        if let Some(handle) = self.workers.by_uid.get(&uid) {
            let _ = handle.tx.send(WorkerMsg::Removed(Some(Arc::new(pod))));
        }
    }

    fn worker_done(&mut self, uid: String) {
        if let Some(handle) = self.workers.by_uid.remove(&uid) {
            drop(handle);
        }
        self.finished.insert(uid);
    }

    fn event(&mut self, event: Event<Pod>) {
        match event {
            Event::Init => self.listing = Some(HashSet::new()),
            Event::InitApply(pod) => {
                if let (Some(listing), Some(uid)) = (self.listing.as_mut(), uid_of(&pod)) {
                    listing.insert(uid);
                }
                self.dispatch(pod);
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                // Pods that disappeared while the watch was down.
                let gone: Vec<String> = self
                    .workers
                    .by_uid
                    .keys()
                    .filter(|uid| !listed.contains(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    if let Some(handle) = self.workers.by_uid.get(&uid) {
                        let _ = handle.tx.send(WorkerMsg::Removed(None));
                    }
                }
                self.finished.retain(|uid| listed.contains(uid));
                if !self.cleaned_orphans {
                    self.cleaned_orphans = true;
                    tokio::spawn(clean_orphans(self.shared.clone(), listed));
                }
            }
            Event::Apply(pod) => self.dispatch(pod),
            Event::Delete(pod) => self.removed(pod),
        }
    }

    /// Wakes the workers whose containers changed since the last relist.
    async fn relist(&mut self) {
        let containers = match self.shared.runtime.list_containers(None).await {
            Ok(list) => list,
            Err(e) => {
                warn!("relisting containers: {e}");
                return;
            }
        };
        let mut by_sandbox: HashMap<SandboxId, Vec<(String, String, Option<i32>)>> = HashMap::new();
        for c in containers {
            by_sandbox.entry(c.sandbox.clone()).or_default().push((
                c.id.0.clone(),
                format!("{:?}", c.state),
                c.exit_code,
            ));
        }
        let mut fresh = HashMap::with_capacity(by_sandbox.len());
        for (sandbox, mut states) in by_sandbox {
            states.sort();
            let mut hasher = DefaultHasher::new();
            states.hash(&mut hasher);
            fresh.insert(sandbox, hasher.finish());
        }
        for (sandbox, fingerprint) in &fresh {
            if self.fingerprints.get(sandbox) != Some(fingerprint)
                && let Some(handle) = self.workers.by_uid.get(&sandbox.0)
            {
                let _ = handle.tx.send(WorkerMsg::Wake);
            }
        }
        self.fingerprints = fresh;
    }
}

/// Removes what the runtime holds for pods that are not in `listed` (the pods bound to this
/// node), and pod directories of pods it doesn't know at all.
async fn clean_orphans(shared: Arc<Shared>, listed: HashSet<String>) {
    let sandboxes = match shared.runtime.list_sandboxes().await {
        Ok(s) => s,
        Err(e) => {
            warn!("listing sandboxes for orphan cleanup: {e}");
            return;
        }
    };
    let mut known: HashSet<String> = listed.clone();
    for sandbox in sandboxes {
        let uid = sandbox.id.0.clone();
        known.insert(uid.clone());
        if listed.contains(&uid) {
            continue;
        }
        info!(
            pod = %format!("{}/{}", sandbox.config.namespace, sandbox.config.name),
            uid = %uid,
            "removing the sandbox of a pod that no longer exists"
        );
        if let Err(e) =
            worker::remove_orphan(shared.runtime.clone(), shared.root_dir.clone(), uid.clone())
                .await
        {
            warn!(uid = %uid, "orphan cleanup: {e}");
        }
    }
    for uid in volumes::pod_dirs(&shared.root_dir) {
        if known.contains(&uid) {
            continue;
        }
        let root = shared.root_dir.clone();
        let id = uid.clone();
        match tokio::task::spawn_blocking(move || volumes::teardown(&root, &id)).await {
            Ok(Ok(())) => info!(uid = %uid, "removed the directory of a pod that no longer exists"),
            Ok(Err(e)) => warn!(uid = %uid, "removing an orphaned pod directory: {e}"),
            Err(e) => warn!(uid = %uid, "removing an orphaned pod directory: {e}"),
        }
    }
}

/// Runs the pod manager until the task is dropped.
pub async fn run(shared: Arc<Shared>) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", shared.node_name));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut manager = Manager {
        shared,
        workers: Workers::default(),
        finished: HashSet::new(),
        done_tx,
        fingerprints: HashMap::new(),
        listing: None,
        cleaned_orphans: false,
    };
    let mut relist = tokio::time::interval(RELIST_PERIOD);
    relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => manager.event(event),
                Some(Err(e)) => warn!("watching pods: {e}"),
                None => {
                    warn!("the pod watch ended");
                    return;
                }
            },
            Some(uid) = done_rx.recv() => manager.worker_done(uid),
            _ = relist.tick() => manager.relist().await,
        }
    }
}
