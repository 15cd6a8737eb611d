//! Service ClusterIP and NodePort allocation, safe across API servers sharing one store.
//!
//! Every allocated ClusterIP and NodePort is also a claim key in the store,
//! `/allocations/clusterips/<ip>` or `/allocations/nodeports/<port>` (with etcd, under the
//! server's key prefix: `/keel/allocations/...`), created before the Service that uses it is
//! written, the way Kubernetes keeps IPAddress objects. The store's `create` is the arbiter:
//! when two API servers pick the same address, one of them gets `AlreadyExists` and picks
//! another (or, for an address the client asked for, answers "provided IP is already
//! allocated"). A claim names its Service (namespace, name, uid) and when it was made.
//!
//! Each server also keeps a set of what it knows to be taken, seeded at startup from the claims
//! and the stored Services and refreshed from the claims when the range looks full, so that it
//! rarely picks a taken address; the set is only a hint, the claims decide.
//!
//! Within a write, new claims are held in a [`Reservation`] and deleted if the write fails;
//! when a Service stops using an address (update or deletion), its claim is deleted. A dry run
//! checks the claims but makes none. A crash between a claim and the Service write leaves an
//! orphan claim: [`ServiceAllocator::repair`] deletes those once they are old enough.
//!
//! Like Kubernetes, a low static band of the range is left to explicitly requested IPs and
//! dynamic allocation prefers the upper part.
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use ipnet::Ipv4Net;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::registry;
use super::status::{ApiError, Cause, Subject};
use crate::store::{KeyValue, ListOptions, Store, StoreError};

/// The NodePort range.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Store keys of ClusterIP claims: this, then the address.
pub const CLUSTER_IP_CLAIMS: &str = "/allocations/clusterips/";
/// Store keys of NodePort claims: this, then the port.
pub const NODE_PORT_CLAIMS: &str = "/allocations/nodeports/";

/// One allocatable thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Slot {
    ClusterIp(u32),
    NodePort(u16),
}

impl Slot {
    /// The store key of the slot's claim.
    fn key(self) -> String {
        match self {
            Slot::ClusterIp(ip) => format!("{CLUSTER_IP_CLAIMS}{}", Ipv4Addr::from(ip)),
            Slot::NodePort(port) => format!("{NODE_PORT_CLAIMS}{port}"),
        }
    }

    /// The slot a claim key is for.
    fn of_key(key: &str) -> Option<Slot> {
        if let Some(ip) = key.strip_prefix(CLUSTER_IP_CLAIMS) {
            return ip
                .parse::<Ipv4Addr>()
                .ok()
                .map(|ip| Slot::ClusterIp(ip.into()));
        }
        key.strip_prefix(NODE_PORT_CLAIMS)?
            .parse()
            .ok()
            .map(Slot::NodePort)
    }
}

/// The value of a claim key: which Service holds the slot, and since when.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Claim {
    namespace: String,
    name: String,
    #[serde(default)]
    uid: String,
    /// RFC 3339.
    claimed_at: String,
}

impl Claim {
    /// A claim made now for `service`.
    fn for_service(service: &Value) -> Claim {
        Claim {
            namespace: meta(service, "namespace").to_string(),
            name: meta(service, "name").to_string(),
            uid: meta(service, "uid").to_string(),
            claimed_at: jiff::Timestamp::now().to_string(),
        }
    }

    fn decode(kv: &KeyValue) -> Option<Claim> {
        serde_json::from_slice(&kv.value).ok()
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Whether the claim was made for `service` (the same object, not one re-created under
    /// its name).
    fn held_by(&self, service: &Value) -> bool {
        self.namespace == meta(service, "namespace")
            && self.name == meta(service, "name")
            && (self.uid.is_empty() || self.uid == meta(service, "uid"))
    }

    /// Whether the claim was made at least `age` ago (or its time is unreadable).
    fn older_than(&self, age: Duration) -> bool {
        let Ok(at) = self.claimed_at.parse::<jiff::Timestamp>() else {
            return true;
        };
        let age = jiff::SignedDuration::try_from(age).unwrap_or(jiff::SignedDuration::MAX);
        jiff::Timestamp::now().duration_since(at) >= age
    }
}

/// What one write newly took: local marks and store claims, undone if the write fails.
#[derive(Debug, Default)]
pub struct Reservation {
    marked: Vec<Slot>,
    /// Claim keys this write created, with their revisions.
    claims: Vec<(String, i64)>,
}

/// Why a Service's ClusterIP or NodePorts could not be assigned.
#[derive(Debug)]
pub enum AssignError {
    /// Invalid or already allocated values, or a full range (422).
    Invalid(Vec<Cause>),
    /// The store failed while checking or making a claim.
    Store(StoreError),
}

impl AssignError {
    /// The error answered to the client.
    pub fn into_api_error(self, kind: &str, subject: Subject<'_>) -> ApiError {
        match self {
            AssignError::Invalid(causes) => ApiError::invalid(kind, subject, causes),
            AssignError::Store(e) => ApiError::from_store(e, subject),
        }
    }
}

/// What [`ServiceAllocator::repair`] did (claim keys).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Orphan claims deleted: no Service uses the slot and the claim was old enough.
    pub released: Vec<String>,
    /// Claims re-created for slots a Service uses but nothing claimed.
    pub restored: Vec<String>,
}

#[derive(Debug)]
struct Pool {
    /// Slots known to be taken (a hint: the claims in the store decide).
    used: HashSet<Slot>,
}

/// Hands out ClusterIPs from the service CIDR and NodePorts from 30000-32767.
#[derive(Debug)]
pub struct ServiceAllocator {
    cidr: Ipv4Net,
    pool: Mutex<Pool>,
}

/// How one write claims slots: in the store, for the Service being written, or (dry run) not
/// at all, only checking that nobody has.
struct Claimer<'a> {
    store: &'a dyn Store,
    claim: Vec<u8>,
    dry_run: bool,
}

fn invalid(field: &str, message: String) -> Cause {
    Cause {
        reason: "FieldValueInvalid".into(),
        message,
        field: field.into(),
    }
}

impl ServiceAllocator {
    pub fn new(cidr: Ipv4Net) -> Self {
        ServiceAllocator {
            cidr: cidr.trunc(),
            pool: Mutex::new(Pool {
                used: HashSet::new(),
            }),
        }
    }

    /// The first usable address, reserved for the `kubernetes` Service.
    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        // A panic while holding the lock can't leave the set inconsistent (single inserts).
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks what a stored Service uses as taken locally (no claims; see [`Self::load`]).
    pub fn seed(&self, service: &Value) {
        self.lock().used.extend(slots_of(service));
    }

    /// Startup: marks every claimed slot and everything the stored `services` use as taken,
    /// and claims what those Services use but nothing claims (data written before claims
    /// existed, or a claim lost since).
    pub async fn load(&self, store: &dyn Store, services: &[Value]) -> Result<(), StoreError> {
        let claims = list_claims(store).await?;
        let claimed: HashSet<Slot> = claims.iter().map(|(slot, _)| *slot).collect();
        let restored = claim_missing(store, &claimed, services).await?;
        if !restored.is_empty() {
            tracing::info!(claims = ?restored, "claimed the allocations of stored services");
        }
        self.lock().used.extend(claimed);
        for service in services {
            self.seed(service);
        }
        Ok(())
    }

    /// Deletes orphan claims: those for a slot no stored Service uses, made at least
    /// `older_than` ago (younger ones may belong to a write in progress, which claims before
    /// it writes its Service). Also re-creates the claims of slots a Service uses but nothing
    /// claims. A crash between a claim and its Service write, or a failed release, leaves
    /// such orphans; the leader's controllers call this periodically (every minute, with an
    /// age of a minute or more), e.g. `api.services.repair(api.store.as_ref(), age)`.
    ///
    /// Claims are listed before Services, so a claim whose Service is being created is either
    /// young or its Service is seen; a write that stalls longer than `older_than` between its
    /// claim and its Service could lose its claim, which is why the age should be generous.
    pub async fn repair(
        &self,
        store: &dyn Store,
        older_than: Duration,
    ) -> Result<Repaired, StoreError> {
        let claims = list_claims(store).await?;
        let services = list_services(store).await?;
        let in_use: HashSet<Slot> = services.iter().flat_map(slots_of).collect();
        let mut repaired = Repaired::default();
        for (slot, kv) in &claims {
            if in_use.contains(slot) {
                continue;
            }
            if Claim::decode(kv).is_some_and(|claim| !claim.older_than(older_than)) {
                continue;
            }
            match store.delete(&kv.key, Some(kv.mod_revision)).await {
                Ok(_) => {
                    self.lock().used.remove(slot);
                    repaired.released.push(kv.key.clone());
                }
                // Changed or released meanwhile: the next pass looks again.
                Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let claimed: HashSet<Slot> = claims.iter().map(|(slot, _)| *slot).collect();
        repaired.restored = claim_missing(store, &claimed, &services).await?;
        if !repaired.released.is_empty() || !repaired.restored.is_empty() {
            tracing::info!(released = ?repaired.released, restored = ?repaired.restored, "repaired service allocations");
        }
        Ok(repaired)
    }

    /// Whether an address may be allocated (inside the range, not network or broadcast).
    fn in_range(&self, ip: u32) -> bool {
        let network = u32::from(self.cidr.network());
        let broadcast = u32::from(self.cidr.broadcast());
        ip > network && ip < broadcast
    }

    /// Fills in and claims the Service's ClusterIP and NodePorts. `old` is the stored
    /// Service on update (its allocations are kept when the new object leaves them empty).
    /// The Service's metadata (namespace, name, uid) must be final: the claims name it.
    /// With `dry_run`, checks the claims without making any.
    pub async fn assign(
        &self,
        store: &dyn Store,
        service: &mut Value,
        old: Option<&Value>,
        dry_run: bool,
        reservation: &mut Reservation,
    ) -> Result<(), AssignError> {
        let claimer = Claimer {
            store,
            claim: Claim::for_service(service).encode(),
            dry_run,
        };
        let mut causes = Vec::new();
        let result = self
            .assign_all(&claimer, service, old, reservation, &mut causes)
            .await;
        let error = match result {
            Ok(()) if causes.is_empty() => return Ok(()),
            Ok(()) => AssignError::Invalid(causes),
            Err(e) => AssignError::Store(e),
        };
        self.rollback(store, std::mem::take(reservation)).await;
        Err(error)
    }

    async fn assign_all(
        &self,
        claimer: &Claimer<'_>,
        service: &mut Value,
        old: Option<&Value>,
        reservation: &mut Reservation,
        causes: &mut Vec<Cause>,
    ) -> Result<(), StoreError> {
        let service_type = service
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        if service.get("spec").is_none_or(|s| !s.is_object()) {
            service["spec"] = json!({});
        }
        if service_type == "ExternalName" {
            // ExternalName Services have no ClusterIP.
            if let Some(spec) = service["spec"].as_object_mut() {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
        } else {
            self.assign_cluster_ip(claimer, service, old, reservation, causes)
                .await?;
        }
        self.assign_node_ports(claimer, service, &service_type, old, reservation, causes)
            .await
    }

    async fn assign_cluster_ip(
        &self,
        claimer: &Claimer<'_>,
        service: &mut Value,
        old: Option<&Value>,
        reservation: &mut Reservation,
        causes: &mut Vec<Cause>,
    ) -> Result<(), StoreError> {
        let requested = service
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let requested = if requested.is_empty() {
            service
                .pointer("/spec/clusterIPs/0")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        } else {
            requested
        };
        let old_ip = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ip = if !old_ip.is_empty() {
            if !requested.is_empty() && requested != old_ip {
                causes.push(invalid(
                    "spec.clusterIPs[0]",
                    format!("Invalid value: \"{requested}\": may not change once set"),
                ));
                return Ok(());
            }
            old_ip
        } else if requested == "None" {
            "None".to_string()
        } else if requested.is_empty() {
            match self
                .allocate(claimer, reservation, |a, pool| a.pick_ip(pool))
                .await?
            {
                Some(Slot::ClusterIp(ip)) => Ipv4Addr::from(ip).to_string(),
                _ => {
                    causes.push(invalid(
                        "spec.clusterIPs",
                        format!("failed to allocate IP: range is full ({})", self.cidr),
                    ));
                    return Ok(());
                }
            }
        } else {
            match requested.parse::<Ipv4Addr>() {
                Err(_) => {
                    causes.push(invalid("spec.clusterIPs[0]", format!("Invalid value: \"{requested}\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")));
                    return Ok(());
                }
                Ok(ip) if !self.in_range(u32::from(ip)) => {
                    causes.push(invalid(
                        "spec.clusterIPs",
                        format!("Invalid value: [\"{requested}\"]: failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is {}", self.cidr),
                    ));
                    return Ok(());
                }
                Ok(ip) => {
                    if !self
                        .claim(claimer, Slot::ClusterIp(ip.into()), reservation)
                        .await?
                    {
                        causes.push(invalid("spec.clusterIPs", format!("Invalid value: [\"{requested}\"]: failed to allocate IP {requested}: provided IP is already allocated")));
                        return Ok(());
                    }
                    requested
                }
            }
        };
        let spec = &mut service["spec"];
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
        if ip != "None" || spec.get("ipFamilies").is_none() {
            spec["ipFamilies"] = json!(["IPv4"]);
        }
        if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
            spec["ipFamilyPolicy"] = json!("SingleStack");
        }
        Ok(())
    }

    /// A locally free address, marked taken (dynamic band first, then the static band).
    fn pick_ip(&self, pool: &mut Pool) -> Option<Slot> {
        let network = u32::from(self.cidr.network());
        let size = u32::from(self.cidr.broadcast()) - network + 1;
        let static_band = (size / 16).clamp(16, 256).min(size / 2);
        let mut rng = rand::rng();
        for (lo, hi) in [
            (network + static_band, network + size - 2),
            (network + 1, network + static_band),
        ] {
            if lo > hi {
                continue;
            }
            let span = hi - lo + 1;
            let start = rng.random_range(0..span);
            for i in 0..span {
                let ip = lo + (start + i) % span;
                if self.in_range(ip) && pool.used.insert(Slot::ClusterIp(ip)) {
                    return Some(Slot::ClusterIp(ip));
                }
            }
        }
        None
    }

    /// A locally free NodePort, marked taken.
    fn pick_port(&self, pool: &mut Pool) -> Option<Slot> {
        let span = (NODE_PORT_RANGE.end() - NODE_PORT_RANGE.start()) as u32 + 1;
        let start = rand::rng().random_range(0..span);
        for i in 0..span {
            let port = NODE_PORT_RANGE.start() + ((start + i) % span) as u16;
            if pool.used.insert(Slot::NodePort(port)) {
                return Some(Slot::NodePort(port));
            }
        }
        None
    }

    /// Picks a free slot with `pick` and claims it, until a claim succeeds. When nothing
    /// looks free, rereads the claims once (other servers may have released slots) before
    /// giving up with `None`.
    async fn allocate(
        &self,
        claimer: &Claimer<'_>,
        reservation: &mut Reservation,
        pick: impl Fn(&Self, &mut Pool) -> Option<Slot>,
    ) -> Result<Option<Slot>, StoreError> {
        let mut reread = false;
        loop {
            let picked = pick(self, &mut self.lock());
            let Some(slot) = picked else {
                if reread {
                    return Ok(None);
                }
                self.reread_claims(claimer.store).await?;
                reread = true;
                continue;
            };
            match self.claim(claimer, slot, reservation).await {
                Ok(true) => return Ok(Some(slot)),
                // Taken elsewhere: it stays marked, pick another.
                Ok(false) => {}
                Err(e) => {
                    self.lock().used.remove(&slot);
                    return Err(e);
                }
            }
        }
    }

    /// Claims `slot` for the write (in a dry run, checks that nobody has): true if it is now
    /// the write's. Either way the slot ends up marked taken locally.
    async fn claim(
        &self,
        claimer: &Claimer<'_>,
        slot: Slot,
        reservation: &mut Reservation,
    ) -> Result<bool, StoreError> {
        let key = slot.key();
        let won = if claimer.dry_run {
            claimer.store.get(&key).await?.is_none()
        } else {
            match claimer.store.create(&key, claimer.claim.clone()).await {
                Ok(revision) => {
                    reservation.claims.push((key, revision));
                    true
                }
                Err(StoreError::AlreadyExists(_)) => false,
                Err(e) => return Err(e),
            }
        };
        self.lock().used.insert(slot);
        if won {
            reservation.marked.push(slot);
        }
        Ok(won)
    }

    /// Replaces the local set with the slots claimed in the store.
    async fn reread_claims(&self, store: &dyn Store) -> Result<(), StoreError> {
        let claimed = list_claims(store).await?;
        self.lock().used = claimed.into_iter().map(|(slot, _)| slot).collect();
        Ok(())
    }

    async fn assign_node_ports(
        &self,
        claimer: &Claimer<'_>,
        service: &mut Value,
        service_type: &str,
        old: Option<&Value>,
        reservation: &mut Reservation,
        causes: &mut Vec<Cause>,
    ) -> Result<(), StoreError> {
        let wants_node_ports = matches!(service_type, "NodePort" | "LoadBalancer");
        let old_ports: Vec<(i64, String, u16)> = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .map(|ports| {
                ports
                    .iter()
                    .filter_map(|p| {
                        let node_port = p.get("nodePort").and_then(Value::as_u64)? as u16;
                        Some((
                            p.get("port").and_then(Value::as_i64).unwrap_or(0),
                            protocol_of(p),
                            node_port,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let old_set: HashSet<u16> = old_ports.iter().map(|(_, _, n)| *n).collect();
        let Some(ports) = service
            .pointer_mut("/spec/ports")
            .and_then(Value::as_array_mut)
        else {
            return Ok(());
        };
        let mut taken_here: HashSet<u16> = HashSet::new();
        for (i, port) in ports.iter_mut().enumerate() {
            let field = format!("spec.ports[{i}].nodePort");
            let requested = port
                .get("nodePort")
                .and_then(Value::as_i64)
                .filter(|n| *n != 0);
            if !wants_node_ports {
                if let Some(n) = requested {
                    causes.push(invalid(
                        &field,
                        format!(
                            "Invalid value: {n}: may not be used when `type` is '{service_type}'"
                        ),
                    ));
                }
                continue;
            }
            let node_port = match requested {
                Some(n) => {
                    let Some(n) = u16::try_from(n)
                        .ok()
                        .filter(|n| NODE_PORT_RANGE.contains(n))
                    else {
                        causes.push(invalid(&field, format!("Invalid value: {n}: provided port is not in the valid range. The range of valid ports is 30000-32767")));
                        continue;
                    };
                    if !old_set.contains(&n)
                        && !taken_here.contains(&n)
                        && !self.claim(claimer, Slot::NodePort(n), reservation).await?
                    {
                        causes.push(invalid(
                            &field,
                            format!("Invalid value: {n}: provided port is already allocated"),
                        ));
                        continue;
                    }
                    n
                }
                None => {
                    let key = (
                        port.get("port").and_then(Value::as_i64).unwrap_or(0),
                        protocol_of(port),
                    );
                    match old_ports
                        .iter()
                        .find(|(p, proto, _)| (*p, proto.clone()) == key)
                    {
                        Some((_, _, n)) => *n,
                        None => match self
                            .allocate(claimer, reservation, |a, pool| a.pick_port(pool))
                            .await?
                        {
                            Some(Slot::NodePort(n)) => n,
                            _ => {
                                causes.push(invalid(
                                    &field,
                                    "failed to allocate a nodePort: range is full".into(),
                                ));
                                continue;
                            }
                        },
                    }
                }
            };
            taken_here.insert(node_port);
            port["nodePort"] = json!(node_port);
        }
        Ok(())
    }

    /// Undoes a failed (or dry-run) write's allocations: deletes its claims, then unmarks.
    pub async fn rollback(&self, store: &dyn Store, reservation: Reservation) {
        for (key, revision) in reservation.claims {
            match store.delete(&key, Some(revision)).await {
                Ok(_) | Err(StoreError::NotFound(_) | StoreError::Conflict { .. }) => {}
                Err(e) => {
                    tracing::warn!(key, error = %e, "could not delete a claim after a failed write; repair will")
                }
            }
        }
        let mut pool = self.lock();
        for slot in reservation.marked {
            pool.used.remove(&slot);
        }
    }

    /// Releases what `old` used and `new` (the Service after the write; `None` if deleted)
    /// doesn't: deletes `old`'s claims on them. A claim held by another Service is left alone;
    /// one that can't be deleted now is left to [`Self::repair`].
    pub async fn release_unused(&self, store: &dyn Store, old: &Value, new: Option<&Value>) {
        let kept: HashSet<Slot> = new.map(slots_of).unwrap_or_default().into_iter().collect();
        for slot in slots_of(old) {
            if kept.contains(&slot) {
                continue;
            }
            let key = slot.key();
            let released = match store.get(&key).await {
                Ok(Some(kv)) if Claim::decode(&kv).is_some_and(|c| c.held_by(old)) => {
                    match store.delete(&key, Some(kv.mod_revision)).await {
                        Ok(_) | Err(StoreError::NotFound(_)) => true,
                        Err(e) => {
                            tracing::warn!(key, error = %e, "could not release a claim; repair will");
                            false
                        }
                    }
                }
                Ok(Some(_)) => false,
                Ok(None) => true,
                Err(e) => {
                    tracing::warn!(key, error = %e, "could not release a claim; repair will");
                    false
                }
            };
            if released {
                self.lock().used.remove(&slot);
            }
        }
    }
}

/// Every claim in the store, with the slot it is for.
async fn list_claims(store: &dyn Store) -> Result<Vec<(Slot, KeyValue)>, StoreError> {
    let mut claims = Vec::new();
    for prefix in [CLUSTER_IP_CLAIMS, NODE_PORT_CLAIMS] {
        let listed = store.list(prefix, ListOptions::default()).await?;
        claims.extend(
            listed
                .items
                .into_iter()
                .filter_map(|kv| Some((Slot::of_key(&kv.key)?, kv))),
        );
    }
    Ok(claims)
}

/// Every stored Service.
async fn list_services(store: &dyn Store) -> Result<Vec<Value>, StoreError> {
    let services = registry::find("", "v1", "services")
        .ok_or_else(|| StoreError::Backend("services are not registered".into()))?;
    let listed = store
        .list(&services.prefix(None), ListOptions::default())
        .await?;
    Ok(listed
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// Claims, for the Service using it, each slot `services` use that is not in `claimed`.
/// Returns the keys claimed; a slot claimed meanwhile is skipped.
async fn claim_missing(
    store: &dyn Store,
    claimed: &HashSet<Slot>,
    services: &[Value],
) -> Result<Vec<String>, StoreError> {
    let mut missing: HashMap<Slot, &Value> = HashMap::new();
    for service in services {
        for slot in slots_of(service) {
            if !claimed.contains(&slot) {
                missing.entry(slot).or_insert(service);
            }
        }
    }
    let mut restored = Vec::new();
    for (slot, service) in missing {
        let key = slot.key();
        match store
            .create(&key, Claim::for_service(service).encode())
            .await
        {
            Ok(_) => restored.push(key),
            Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    restored.sort();
    Ok(restored)
}

fn meta<'a>(service: &'a Value, field: &str) -> &'a str {
    service
        .get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The slots a Service uses.
fn slots_of(service: &Value) -> Vec<Slot> {
    let ips = cluster_ips(service)
        .into_iter()
        .filter_map(|ip| ip.parse::<Ipv4Addr>().ok())
        .map(|ip| Slot::ClusterIp(ip.into()));
    let ports = node_ports(service).into_iter().map(Slot::NodePort);
    let mut slots: Vec<Slot> = ips.chain(ports).collect();
    let mut seen = HashSet::new();
    slots.retain(|slot| seen.insert(*slot));
    slots
}

fn protocol_of(port: &Value) -> String {
    port.get("protocol")
        .and_then(Value::as_str)
        .unwrap_or("TCP")
        .to_string()
}

fn cluster_ips(service: &Value) -> Vec<String> {
    let mut ips: Vec<String> = service
        .pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if let Some(ip) = service.pointer("/spec/clusterIP").and_then(Value::as_str)
        && !ips.iter().any(|i| i == ip)
    {
        ips.push(ip.to_string());
    }
    ips.retain(|ip| !ip.is_empty() && ip != "None");
    ips
}

fn node_ports(service: &Value) -> Vec<u16> {
    service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
                .filter_map(|n| u16::try_from(n).ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::apiserver::request::Body;
    use crate::apiserver::storage::{Api, DeleteOptions, WriteOptions};
    use crate::store::embedded::EmbeddedStore;

    fn allocator() -> ServiceAllocator {
        ServiceAllocator::new("10.96.0.0/12".parse().unwrap())
    }

    fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        (dir, Arc::new(store))
    }

    /// A Service body with metadata, as the API hands it to the allocator.
    fn service(name: &str, spec: Value) -> Value {
        json!({"metadata": {"namespace": "default", "name": name, "uid": format!("uid-{name}")}, "spec": spec})
    }

    async fn claim_keys(store: &dyn Store) -> Vec<String> {
        let claims = list_claims(store).await.expect("claims");
        claims.into_iter().map(|(_, kv)| kv.key).collect()
    }

    async fn assign(
        a: &ServiceAllocator,
        store: &dyn Store,
        svc: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), AssignError> {
        a.assign(store, svc, old, false, &mut Reservation::default())
            .await
    }

    fn message(result: Result<(), AssignError>) -> String {
        match result {
            Err(AssignError::Invalid(causes)) => causes[0].message.clone(),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn allocates_a_free_ip_in_range_and_honours_requests() {
        let (_dir, store) = store();
        let store = store.as_ref();
        let a = allocator();
        let mut svc = service("a", json!({"ports": [{"port": 80}]}));
        assign(&a, store, &mut svc, None).await.unwrap();
        let ip: Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!("10.96.0.0/12".parse::<Ipv4Net>().unwrap().contains(&ip));
        assert_eq!(svc["spec"]["clusterIPs"], json!([ip.to_string()]));
        assert_eq!(
            claim_keys(store).await,
            [format!("{CLUSTER_IP_CLAIMS}{ip}")]
        );

        let mut wanted = service("b", json!({"clusterIP": "10.96.0.10"}));
        assign(&a, store, &mut wanted, None).await.unwrap();
        assert_eq!(wanted["spec"]["clusterIP"], "10.96.0.10");
        let mut again = service("c", json!({"clusterIP": "10.96.0.10"}));
        let taken = assign(&a, store, &mut again, None).await;
        assert!(message(taken).contains("provided IP is already allocated"));
        let mut outside = service("c", json!({"clusterIP": "192.168.0.1"}));
        let outside = assign(&a, store, &mut outside, None).await;
        assert!(message(outside).contains("not in the valid range"));

        // Freed on delete: the IP can be requested again.
        a.release_unused(store, &wanted, None).await;
        assign(&a, store, &mut again, None).await.unwrap();
    }

    #[tokio::test]
    async fn node_ports_are_allocated_kept_and_checked() {
        let (_dir, store) = store();
        let store = store.as_ref();
        let a = allocator();
        let mut svc = service(
            "a",
            json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 81, "nodePort": 30080}]}),
        );
        assign(&a, store, &mut svc, None).await.unwrap();
        let auto = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
        assert!(NODE_PORT_RANGE.contains(&auto));
        assert_eq!(svc["spec"]["ports"][1]["nodePort"], 30080);

        // An update without nodePorts keeps the old ones and the ClusterIP.
        let mut update = service(
            "a",
            json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 81}]}),
        );
        assign(&a, store, &mut update, Some(&svc)).await.unwrap();
        assert_eq!(update["spec"]["ports"][0]["nodePort"], auto);
        assert_eq!(update["spec"]["clusterIP"], svc["spec"]["clusterIP"]);

        let mut clash = service(
            "b",
            json!({"type": "NodePort", "ports": [{"port": 1, "nodePort": 30080}]}),
        );
        let clash = assign(&a, store, &mut clash, None).await;
        assert!(message(clash).contains("provided port is already allocated"));
        let mut out = service(
            "b",
            json!({"type": "NodePort", "ports": [{"port": 1, "nodePort": 80}]}),
        );
        assert!(assign(&a, store, &mut out, None).await.is_err());
        // The failed assignments returned their ClusterIPs: nothing leaked, locally or in
        // the store (one IP and two ports, all service a's).
        assert_eq!(a.lock().used.len(), 3);
        assert_eq!(claim_keys(store).await.len(), 3);

        // Switching to ClusterIP releases the node ports.
        let mut cluster_ip = service("a", json!({"type": "ClusterIP", "ports": [{"port": 80}]}));
        assign(&a, store, &mut cluster_ip, Some(&update))
            .await
            .unwrap();
        a.release_unused(store, &update, Some(&cluster_ip)).await;
        assert_eq!(
            claim_keys(store).await,
            [format!(
                "{CLUSTER_IP_CLAIMS}{}",
                svc["spec"]["clusterIP"].as_str().unwrap()
            )]
        );
    }

    #[tokio::test]
    async fn dry_runs_check_claims_but_make_none() {
        let (_dir, store) = store();
        let store = store.as_ref();
        let a = allocator();
        let mut taken = service("a", json!({"clusterIP": "10.96.0.10"}));
        assign(&a, store, &mut taken, None).await.unwrap();
        let mut dry = service(
            "b",
            json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 81, "nodePort": 30001}]}),
        );
        let mut reservation = Reservation::default();
        a.assign(store, &mut dry, None, true, &mut reservation)
            .await
            .unwrap();
        assert!(dry["spec"]["clusterIP"].is_string());
        a.rollback(store, reservation).await;
        assert_eq!(claim_keys(store).await.len(), 1);
        assert_eq!(a.lock().used.len(), 1);
        let mut clash = service("c", json!({"clusterIP": "10.96.0.10"}));
        let result = a
            .assign(store, &mut clash, None, true, &mut Reservation::default())
            .await;
        assert!(message(result).contains("already allocated"));
    }

    /// A release deletes only the releasing Service's claim, not one a re-created Service of
    /// the same name holds.
    #[tokio::test]
    async fn releases_only_the_owners_claims() {
        let (_dir, store) = store();
        let store = store.as_ref();
        let a = allocator();
        let mut first = service("a", json!({"clusterIP": "10.96.0.10"}));
        assign(&a, store, &mut first, None).await.unwrap();
        store
            .delete(
                &Slot::ClusterIp(u32::from(Ipv4Addr::new(10, 96, 0, 10))).key(),
                None,
            )
            .await
            .unwrap();
        let mut second = service("a", json!({"clusterIP": "10.96.0.10"}));
        second["metadata"]["uid"] = json!("another");
        assign(&a, store, &mut second, None).await.unwrap();
        a.release_unused(store, &first, None).await;
        assert_eq!(claim_keys(store).await.len(), 1);
    }

    #[tokio::test]
    async fn loading_marks_claims_and_services_and_claims_what_services_use() {
        let (_dir, store) = store();
        let store = store.as_ref();
        let other = allocator();
        let mut claimed = service("claimed", json!({"clusterIP": "10.96.0.30"}));
        assign(&other, store, &mut claimed, None).await.unwrap();

        let a = allocator();
        let unclaimed = service(
            "old",
            json!({"clusterIP": "10.96.0.20", "ports": [{"nodePort": 30001}]}),
        );
        a.load(store, std::slice::from_ref(&unclaimed))
            .await
            .unwrap();
        assert_eq!(
            claim_keys(store).await,
            [
                format!("{CLUSTER_IP_CLAIMS}10.96.0.20"),
                format!("{CLUSTER_IP_CLAIMS}10.96.0.30"),
                format!("{NODE_PORT_CLAIMS}30001"),
            ]
        );
        assert_eq!(a.lock().used.len(), 3);
        for ip in ["10.96.0.20", "10.96.0.30"] {
            let mut svc = service("new", json!({"clusterIP": ip}));
            assert!(assign(&a, store, &mut svc, None).await.is_err());
        }
        let mut np = service(
            "new",
            json!({"type": "NodePort", "ports": [{"port": 1, "nodePort": 30001}]}),
        );
        assert!(assign(&a, store, &mut np, None).await.is_err());
    }

    /// Two servers allocating concurrently from one small range: every address goes to one
    /// Service only, the range fills completely (each server rereads the claims when it
    /// looks full), and a specific port asked for on both servers goes to one of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_allocators_on_one_store_never_hand_out_the_same_slot() {
        let (_dir, store) = store();
        // 62 usable addresses.
        let servers = [
            Arc::new(ServiceAllocator::new("10.0.0.0/26".parse().unwrap())),
            Arc::new(ServiceAllocator::new("10.0.0.0/26".parse().unwrap())),
        ];
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..62 {
            let (a, store) = (servers[i % 2].clone(), store.clone());
            tasks.spawn(async move {
                let wanted = 30000 + (i / 2) as u16;
                let mut svc = service(
                    &format!("s{i}"),
                    json!({"type": "NodePort", "ports": [{"port": 81, "nodePort": wanted}]}),
                );
                let result = a
                    .assign(
                        store.as_ref(),
                        &mut svc,
                        None,
                        false,
                        &mut Reservation::default(),
                    )
                    .await;
                (svc, result)
            });
        }
        let mut ips = HashSet::new();
        let mut ports = HashSet::new();
        let mut lost_ports = 0;
        for (svc, result) in tasks.join_all().await {
            match result {
                Ok(()) => {
                    assert!(ips.insert(svc["spec"]["clusterIP"].as_str().unwrap().to_string()));
                    for port in node_ports(&svc) {
                        assert!(ports.insert(port), "port {port} handed out twice");
                    }
                }
                Err(AssignError::Invalid(causes)) => {
                    assert!(
                        causes[0]
                            .message
                            .contains("provided port is already allocated")
                    );
                    lost_ports += 1;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        // Each requested port was asked for twice (once per server): one request lost.
        assert_eq!(lost_ports, 31);
        // The IPs of the losers went back: the rest of the range is still free for 31 more.
        for i in 0..31 {
            let mut svc = service(&format!("more{i}"), json!({"ports": [{"port": 80}]}));
            assign(&servers[i % 2], store.as_ref(), &mut svc, None)
                .await
                .unwrap();
            assert!(ips.insert(svc["spec"]["clusterIP"].as_str().unwrap().to_string()));
        }
        assert_eq!(ips.len(), 62);
        let mut full = service("full", json!({"ports": [{"port": 80}]}));
        let full = assign(&servers[0], store.as_ref(), &mut full, None).await;
        assert!(message(full).contains("range is full"));
        assert_eq!(claim_keys(store.as_ref()).await.len(), 62 + ports.len());
    }

    async fn api(store: &Arc<dyn Store>) -> Arc<Api> {
        let api = Api::new(
            store.clone(),
            ServiceAllocator::new("10.0.0.0/24".parse().unwrap()),
        );
        api.bootstrap().await.expect("bootstrap");
        api
    }

    fn body(value: Value) -> Body {
        Body {
            value,
            duplicates: vec![],
        }
    }

    /// Two API servers on one store create Services concurrently: no ClusterIP or NodePort
    /// is used twice, every allocation has exactly one claim naming its Service, and
    /// deleting the Services (on either server) releases the claims.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_api_servers_on_one_store_allocate_without_duplicates() {
        let (_dir, store) = store();
        let servers = [api(&store).await, api(&store).await];
        let services = registry::find("", "v1", "services").unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..80 {
            let api = servers[i % 2].clone();
            tasks.spawn(async move {
                let svc = json!({"metadata": {"name": format!("s{i}")}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
                api.create(services, Some("default"), body(svc), &WriteOptions::default())
                    .await
                    .map(|written| written.object)
            });
        }
        for created in tasks.join_all().await {
            created.expect("create");
        }
        let (listed, _, _) = servers[0]
            .list_items(services, None, &Default::default())
            .await
            .unwrap();
        assert_eq!(listed.len(), 81, "80 and default/kubernetes");
        let mut owners = HashMap::new();
        for svc in &listed {
            for slot in slots_of(svc) {
                let owner = format!("{}/{}", meta(svc, "namespace"), meta(svc, "name"));
                assert!(owners.insert(slot, owner).is_none(), "{slot:?} used twice");
            }
        }
        let claims = list_claims(store.as_ref()).await.unwrap();
        assert_eq!(claims.len(), owners.len());
        for (slot, kv) in &claims {
            let claim = Claim::decode(kv).unwrap();
            assert_eq!(owners[slot], format!("{}/{}", claim.namespace, claim.name));
        }

        // A dry run leaves no claim.
        let dry = WriteOptions {
            dry_run: true,
            ..Default::default()
        };
        let svc = json!({"metadata": {"name": "dry"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        servers[1]
            .create(services, Some("default"), body(svc), &dry)
            .await
            .unwrap();
        assert_eq!(claim_keys(store.as_ref()).await.len(), owners.len());

        for i in 0..80 {
            servers[(i + 1) % 2]
                .delete(
                    services,
                    Some("default"),
                    &format!("s{i}"),
                    &DeleteOptions::default(),
                )
                .await
                .unwrap();
        }
        assert_eq!(
            claim_keys(store.as_ref()).await,
            [format!("{CLUSTER_IP_CLAIMS}10.0.0.1")]
        );
    }

    #[tokio::test]
    async fn repair_releases_old_orphans_and_restores_missing_claims() {
        let (_dir, store) = store();
        let api = api(&store).await;
        let store = store.as_ref();
        let services = registry::find("", "v1", "services").unwrap();
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        let web = api
            .create(
                services,
                Some("default"),
                body(svc),
                &WriteOptions::default(),
            )
            .await
            .unwrap()
            .object;
        let web_ip = Slot::ClusterIp(
            web["spec"]["clusterIP"]
                .as_str()
                .unwrap()
                .parse::<Ipv4Addr>()
                .unwrap()
                .into(),
        );
        let web_port = Slot::NodePort(node_ports(&web)[0]);

        let long_ago = |name: &str| {
            let mut claim = Claim::for_service(&service(name, json!({})));
            claim.claimed_at = "2020-01-01T00:00:00Z".into();
            claim.encode()
        };
        let ip = |last: u8| Slot::ClusterIp(u32::from(Ipv4Addr::new(10, 0, 0, last)));
        // Orphans: a Service that was never written, one that no longer uses the slot.
        store
            .create(&ip(200).key(), long_ago("crashed"))
            .await
            .unwrap();
        store
            .create(&Slot::NodePort(31000).key(), long_ago("web"))
            .await
            .unwrap();
        // Too young to tell from a write in progress.
        store
            .create(
                &ip(201).key(),
                Claim::for_service(&service("writing", json!({}))).encode(),
            )
            .await
            .unwrap();
        // Unreadable: no age, treated as old.
        store
            .create(&ip(202).key(), b"junk".to_vec())
            .await
            .unwrap();
        // A claim lost while its Service still uses the port.
        store.delete(&web_port.key(), None).await.unwrap();

        let repaired = api
            .services
            .repair(store, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            repaired,
            Repaired {
                released: vec![ip(200).key(), ip(202).key(), Slot::NodePort(31000).key()],
                restored: vec![web_port.key()],
            }
        );
        let mut expected = vec![ip(1).key(), ip(201).key(), web_ip.key(), web_port.key()];
        expected.sort();
        assert_eq!(claim_keys(store).await, expected);
        // Nothing left to do.
        assert_eq!(
            api.services
                .repair(store, Duration::from_secs(60))
                .await
                .unwrap(),
            Repaired::default()
        );
    }
}
