//! The node heartbeat: the Lease `kube-node-lease/<node>` renewed every 10 s, created (owned
//! by the Node, so it goes with it) when missing, as kubelet's node lease controller does.
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::client::timed;
use super::node::NodeRef;

/// The namespace of node Leases.
pub const NAMESPACE: &str = "kube-node-lease";
/// `leaseDurationSeconds` (kubelet's default).
pub const DURATION_SECONDS: i32 = 40;
/// How often the Lease is renewed (a quarter of its duration, as kubelet).
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);

/// The renewed part of the Lease.
fn spec(node: &str) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(node.to_string()),
        lease_duration_seconds: Some(DURATION_SECONDS),
        renew_time: Some(MicroTime(Timestamp::now())),
        ..Default::default()
    }
}

/// The Lease object for a node.
pub fn lease(node: &NodeRef) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            namespace: Some(NAMESPACE.to_string()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node.name.clone(),
                uid: node.uid.clone(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(spec(&node.name)),
    }
}

/// Renews the node's Lease once: patch, or create when missing.
pub async fn renew(client: &Client, node: &NodeRef) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let patch = json!({"spec": spec(&node.name)});
    match timed(api.patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => {
            match timed(api.create(&PostParams::default(), &lease(node))).await {
                Ok(_) => Ok(()),
                // Someone created it meanwhile: the next renewal patches it.
                Err(e) if e.is_already_exists() => Ok(()),
                Err(e) => Err(anyhow::anyhow!("creating lease {}: {e}", node.name)),
            }
        }
        Err(e) => Err(anyhow::anyhow!("renewing lease {}: {e}", node.name)),
    }
}

/// Renews the Lease every [`RENEW_INTERVAL`] (retrying failures with a short back-off) until
/// the task is dropped.
pub async fn run(client: Client, node: watch::Receiver<NodeRef>) {
    let mut retry = Duration::from_millis(200);
    loop {
        let current = node.borrow().clone();
        match renew(&client, &current).await {
            Ok(()) => {
                debug!(node = %current.name, "renewed the node lease");
                retry = Duration::from_millis(200);
                tokio::time::sleep(RENEW_INTERVAL).await;
            }
            Err(e) => {
                warn!("{e:#}; retrying in {retry:?}");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(7));
            }
        }
    }
}
