//! Leader election on a `coordination.k8s.io/v1` Lease (`kube-system/keel-control`), as
//! client-go's leaderelection package does it: the holder renews `renewTime` every
//! `retry_period`; a candidate takes the lease over once it has seen the same record unchanged
//! for `lease_duration` on its own clock (so clock skew between machines does not matter); the
//! takeover is a compare-and-swap on the store, so two candidates cannot both win. A leader that
//! cannot renew for `renew_deadline` steps down before anyone may take over.
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

use super::client::Client;

pub const LEASE_NAMESPACE: &str = "kube-system";
pub const LEASE_NAME: &str = "keel-control";

/// Timings of the election. Defaults: an 8 s lease renewed every 2 s, given up after 6 s without
/// a successful renewal: a dead leader is replaced within 8-12 s (the lease, plus up to two
/// retry periods for the candidate to first see the last renewal and to try again).
#[derive(Clone, Debug)]
pub struct Timings {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_duration: Duration::from_secs(8),
            renew_deadline: Duration::from_secs(6),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One candidate.
pub struct Elector {
    client: Client,
    identity: String,
    timings: Timings,
    /// The last record seen (holder, renewTime) and when it was first seen.
    observed: Option<(String, String, Instant)>,
}

impl Elector {
    pub fn new(client: Client, identity: String, timings: Timings) -> Self {
        Elector {
            client,
            identity,
            timings,
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Waits until this candidate holds the lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(identity = self.identity, "became the leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "leader election: lease not reachable"),
            }
            tokio::time::sleep(self.timings.retry_period).await;
        }
    }

    /// Renews the lease until a renewal fails for `renew_deadline`; returns then (the caller
    /// stops leading).
    pub async fn hold(&mut self) {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.timings.retry_period).await;
            match tokio::time::timeout(self.timings.retry_period, self.try_acquire_or_renew()).await
            {
                Ok(Ok(true)) => last_renewal = Instant::now(),
                Ok(Ok(false)) => {
                    tracing::warn!(
                        identity = self.identity,
                        "lost the lease to another candidate"
                    );
                    return;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "could not renew the lease"),
                Err(_) => tracing::warn!("renewing the lease timed out"),
            }
            if last_renewal.elapsed() >= self.timings.renew_deadline {
                tracing::warn!(
                    identity = self.identity,
                    "could not renew the lease in time; stepping down"
                );
                return;
            }
        }
    }

    /// Releases the lease (on a clean shutdown) so another candidate takes over at once.
    pub async fn release(&mut self) {
        let identity = self.identity.clone();
        let _ = self
            .client
            .update::<Lease, _>(Some(LEASE_NAMESPACE), LEASE_NAME, None, |lease| {
                let spec = lease.spec.get_or_insert_with(Default::default);
                if spec.holder_identity.as_deref() != Some(identity.as_str()) {
                    return false;
                }
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                true
            })
            .await;
    }

    async fn try_acquire_or_renew(&mut self) -> anyhow::Result<bool> {
        let now = MicroTime(jiff::Timestamp::now());
        let lease_seconds = self.timings.lease_duration.as_secs().max(1) as i32;
        let current = match self
            .client
            .get::<Lease>(Some(LEASE_NAMESPACE), LEASE_NAME)
            .await
        {
            Ok(lease) => lease,
            Err(e) if e.code == 404 => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEASE_NAME.into()),
                        namespace: Some(LEASE_NAMESPACE.into()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(lease_seconds),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                return match self.client.create(&lease).await {
                    Ok(_) => Ok(true),
                    Err(e) if e.code == 409 => Ok(false),
                    Err(e) => Err(anyhow::anyhow!("creating the lease: {}", e.message)),
                };
            }
            Err(e) => anyhow::bail!("reading the lease: {}", e.message),
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let renewed = spec
            .renew_time
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        let held_by_me = holder == self.identity;
        if !held_by_me && !holder.is_empty() {
            // Someone else holds it: take over only after seeing it unchanged for its duration.
            let duration = Duration::from_secs(
                spec.lease_duration_seconds.unwrap_or(lease_seconds).max(1) as u64,
            );
            match &self.observed {
                Some((h, r, since)) if *h == holder && *r == renewed => {
                    if since.elapsed() < duration {
                        return Ok(false);
                    }
                }
                _ => {
                    self.observed = Some((holder, renewed, Instant::now()));
                    return Ok(false);
                }
            }
        }
        let identity = self.identity.clone();
        let expected = (holder.clone(), renewed.clone());
        let written = self
            .client
            .update::<Lease, _>(Some(LEASE_NAMESPACE), LEASE_NAME, None, |lease| {
                let spec = lease.spec.get_or_insert_with(Default::default);
                let h = spec.holder_identity.clone().unwrap_or_default();
                let r = spec
                    .renew_time
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default();
                // Compare-and-swap: only if the lease is still what we decided on.
                if (h.clone(), r) != expected {
                    return false;
                }
                if h != identity {
                    spec.acquire_time = Some(now.clone());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.holder_identity = Some(identity.clone());
                spec.lease_duration_seconds = Some(lease_seconds);
                spec.renew_time = Some(now.clone());
                true
            })
            .await
            .map_err(|e| anyhow::anyhow!("writing the lease: {}", e.message))?;
        Ok(written.is_some())
    }
}
