//! The user-space mirror of the datapath maps and the planner that turns a new [`Desired`] into
//! the few map writes that get the kernel there. Pure: ids are allocated deterministically
//! (lowest free, in sorted order) and nothing here touches the kernel.
//!
//! Ordering keeps every intermediate state consistent for packets in flight: backends are
//! written before the slots that name them, slots before the slot-0 count that exposes them,
//! and removals go the other way round.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::Ipv4Addr,
};

use keel_common::{
    BACKEND_ACTIVE, BACKEND_TERMINATING, Backend, BackendAddr, RevNat, SCOPE_ADDR, SCOPE_NODEPORT,
    SVC_FLAG_AFFINITY, SVC_FLAG_NO_LOCAL, ServiceKey, ServiceValue,
};

use super::translate::{Desired, Endpoint, Frontend, Proto, Scope};

/// One map write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutBackend(u32, Backend),
    DeleteBackend(u32),
    PutService(ServiceKey, ServiceValue),
    DeleteService(ServiceKey),
    PutRevNat(u32, RevNat),
    DeleteRevNat(u32),
    /// Forget a removed frontend's counters.
    DeleteCounters(u32),
    /// A UDP backend left frontend `rev_nat`: sockets connected to it move on their next send.
    Retire(BackendAddr, u32),
    /// The address is a backend again: stop redirecting it.
    Unretire(BackendAddr),
    /// Delete session-affinity entries of `rev_nat` that point at `backend_id`.
    PurgeAffinity {
        rev_nat: u32,
        backend_id: u32,
    },
}

impl MapOp {
    /// Whether this op is a single map-entry write (the rest scan a map).
    pub fn is_entry_write(&self) -> bool {
        !matches!(self, MapOp::PurgeAffinity { .. })
    }
}

/// What a frontend looks like in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedFrontend {
    pub rev_nat: u32,
    /// Backend ids in slot order (slot i+1 holds `slots[i]`).
    pub slots: Vec<u32>,
    /// Terminating backends kept for existing flows.
    pub lingering: Vec<u32>,
    pub flags: u16,
    pub affinity_timeout_s: u32,
    pub service: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ProgrammedBackend {
    id: u32,
    state: u8,
}

/// The mirror of what is in the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    frontends: BTreeMap<Frontend, ProgrammedFrontend>,
    backends: BTreeMap<Endpoint, ProgrammedBackend>,
    retired: BTreeSet<Endpoint>,
}

/// The result of planning: the ops, in order, and the state they lead to.
#[derive(Debug)]
pub struct Plan {
    pub ops: Vec<MapOp>,
    pub next: MapState,
}

pub fn service_key(fe: &Frontend, slot: u16) -> ServiceKey {
    ServiceKey {
        addr: u32::from_ne_bytes(fe.addr.octets()),
        port: fe.port.to_be(),
        proto: fe.proto.number(),
        scope: match fe.scope {
            Scope::Addr => SCOPE_ADDR,
            Scope::NodePort => SCOPE_NODEPORT,
        },
        slot,
        _pad: 0,
    }
}

pub fn frontend_of(key: &ServiceKey) -> Option<Frontend> {
    Some(Frontend {
        scope: match key.scope {
            SCOPE_ADDR => Scope::Addr,
            SCOPE_NODEPORT => Scope::NodePort,
            _ => return None,
        },
        addr: Ipv4Addr::from(key.addr.to_ne_bytes()),
        port: u16::from_be(key.port),
        proto: Proto::from_number(key.proto)?,
    })
}

pub fn backend_value(ep: &Endpoint, state: u8) -> Backend {
    Backend {
        addr: u32::from_ne_bytes(ep.addr.octets()),
        port: ep.port.to_be(),
        proto: ep.proto.number(),
        state,
    }
}

pub fn endpoint_of(b: &Backend) -> Option<Endpoint> {
    Some(Endpoint {
        addr: Ipv4Addr::from(b.addr.to_ne_bytes()),
        port: u16::from_be(b.port),
        proto: Proto::from_number(b.proto)?,
    })
}

fn backend_addr(ep: &Endpoint) -> BackendAddr {
    BackendAddr {
        addr: u32::from_ne_bytes(ep.addr.octets()),
        port: ep.port.to_be(),
        proto: ep.proto.number(),
        _pad: 0,
    }
}

fn rev_nat_value(fe: &Frontend) -> RevNat {
    let k = service_key(fe, 0);
    RevNat {
        addr: k.addr,
        port: k.port,
        proto: k.proto,
        scope: k.scope,
    }
}

/// Lowest ids not in `used`, starting at 1 (0 means "none" in the maps).
fn allocator(used: impl Iterator<Item = u32>) -> impl FnMut() -> u32 {
    let used: BTreeSet<u32> = used.collect();
    let mut next = 1u32;
    move || {
        while used.contains(&next) {
            next += 1;
        }
        let id = next;
        next += 1;
        id
    }
}

impl MapState {
    pub fn frontends(&self) -> &BTreeMap<Frontend, ProgrammedFrontend> {
        &self.frontends
    }

    /// Number of backends in the backend map.
    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    /// Rebuilds the mirror from map contents read back from the kernel (agent restart).
    /// Entries that don't form a consistent frontend are left out; the next plan rewrites them.
    pub fn from_entries(
        services: impl IntoIterator<Item = (ServiceKey, ServiceValue)>,
        backends: impl IntoIterator<Item = (u32, Backend)>,
    ) -> MapState {
        let mut heads: BTreeMap<Frontend, ServiceValue> = BTreeMap::new();
        let mut slots: BTreeMap<Frontend, BTreeMap<u16, u32>> = BTreeMap::new();
        for (k, v) in services {
            let Some(fe) = frontend_of(&k) else { continue };
            if k.slot == 0 {
                heads.insert(fe, v);
            } else {
                slots.entry(fe).or_default().insert(k.slot, v.backend_id);
            }
        }
        let mut state = MapState::default();
        let mut by_id: BTreeMap<u32, Endpoint> = BTreeMap::new();
        for (id, b) in backends {
            if let Some(ep) = endpoint_of(&b) {
                by_id.insert(id, ep);
                state
                    .backends
                    .insert(ep, ProgrammedBackend { id, state: b.state });
            }
        }
        for (fe, head) in heads {
            let s = slots.remove(&fe).unwrap_or_default();
            let ids: Vec<u32> = (1..=head.count).map_while(|i| s.get(&i).copied()).collect();
            if ids.len() != head.count as usize || ids.iter().any(|id| !by_id.contains_key(id)) {
                continue;
            }
            state.frontends.insert(
                fe,
                ProgrammedFrontend {
                    rev_nat: head.rev_nat,
                    slots: ids,
                    lingering: Vec::new(),
                    flags: head.flags,
                    affinity_timeout_s: head.affinity_timeout_s,
                    service: String::new(),
                },
            );
        }
        state
    }

    /// Plans the writes that turn `self` into `desired`.
    pub fn plan(&self, desired: &Desired) -> Plan {
        let mut next = MapState::default();
        let mut ops_backends_put = Vec::new();
        let mut ops_revnat_put = Vec::new();
        let mut ops_slots = Vec::new();
        let mut ops_remove = Vec::new();
        let mut ops_purge = Vec::new();

        // Endpoint of each programmed backend id (a scan per lookup would make removing many
        // services quadratic).
        let ep_by_id: BTreeMap<u32, Endpoint> =
            self.backends.iter().map(|(ep, b)| (b.id, *ep)).collect();

        // Backends: every endpoint any frontend uses or keeps for its flows.
        let mut wanted: BTreeMap<Endpoint, u8> = BTreeMap::new();
        for spec in desired.frontends.values() {
            for ep in &spec.lingering {
                wanted.entry(*ep).or_insert(BACKEND_TERMINATING);
            }
            for ep in &spec.backends {
                wanted.insert(*ep, BACKEND_ACTIVE);
            }
        }
        // Ids still in the maps are never reused within one plan: a backend deleted by this
        // plan keeps its id until its delete has run.
        let mut new_backend_id = allocator(self.backends.values().map(|b| b.id));
        for (ep, state) in &wanted {
            let id = match self.backends.get(ep) {
                Some(b) => {
                    if b.state != *state {
                        ops_backends_put.push(MapOp::PutBackend(b.id, backend_value(ep, *state)));
                    }
                    b.id
                }
                None => {
                    let id = new_backend_id();
                    ops_backends_put.push(MapOp::PutBackend(id, backend_value(ep, *state)));
                    id
                }
            };
            next.backends
                .insert(*ep, ProgrammedBackend { id, state: *state });
        }
        let id_of = |ep: &Endpoint| next.backends[ep].id;

        // Frontends.
        let mut new_rev_nat = allocator(self.frontends.values().map(|p| p.rev_nat));
        for (fe, spec) in &desired.frontends {
            let prev = self.frontends.get(fe);
            let rev_nat = match prev {
                Some(p) => p.rev_nat,
                None => {
                    let id = new_rev_nat();
                    ops_revnat_put.push(MapOp::PutRevNat(id, rev_nat_value(fe)));
                    id
                }
            };
            let want: Vec<u32> = spec.backends.iter().map(id_of).collect();
            let prev_slots: &[u32] = prev.map(|p| p.slots.as_slice()).unwrap_or_default();
            let slots = stable_slots(prev_slots, &want);
            let mut flags = 0;
            if spec.affinity_timeout_s.is_some() {
                flags |= SVC_FLAG_AFFINITY;
            }
            if spec.no_local_backend {
                flags |= SVC_FLAG_NO_LOCAL;
            }
            let timeout = spec.affinity_timeout_s.unwrap_or(0);
            for (i, id) in slots.iter().enumerate() {
                if prev_slots.get(i) != Some(id) {
                    let v = ServiceValue {
                        backend_id: *id,
                        rev_nat,
                        ..Default::default()
                    };
                    ops_slots.push(MapOp::PutService(service_key(fe, i as u16 + 1), v));
                }
            }
            let head_changed = match prev {
                Some(p) => {
                    p.slots.len() != slots.len()
                        || p.flags != flags
                        || p.affinity_timeout_s != timeout
                }
                None => true,
            };
            if head_changed {
                let v = ServiceValue {
                    backend_id: 0,
                    count: slots.len() as u16,
                    flags,
                    rev_nat,
                    affinity_timeout_s: timeout,
                };
                ops_slots.push(MapOp::PutService(service_key(fe, 0), v));
            }
            for i in slots.len()..prev_slots.len() {
                ops_slots.push(MapOp::DeleteService(service_key(fe, i as u16 + 1)));
            }
            if let Some(p) = prev {
                for id in &p.slots {
                    if !slots.contains(id) {
                        if flags & SVC_FLAG_AFFINITY != 0 {
                            ops_purge.push(MapOp::PurgeAffinity {
                                rev_nat,
                                backend_id: *id,
                            });
                        }
                        // A UDP backend that is gone from the service entirely (not merely
                        // terminating): move its connected sockets elsewhere.
                        if let Some(ep) = ep_by_id.get(id)
                            && ep.proto == Proto::Udp
                            && !spec.lingering.contains(ep)
                            && !spec.backends.contains(ep)
                        {
                            ops_purge.push(MapOp::Retire(backend_addr(ep), rev_nat));
                            next.retired.insert(*ep);
                        }
                    }
                }
            }
            next.frontends.insert(
                *fe,
                ProgrammedFrontend {
                    rev_nat,
                    slots,
                    lingering: spec.lingering.iter().map(id_of).collect(),
                    flags,
                    affinity_timeout_s: timeout,
                    service: spec.service.clone(),
                },
            );
        }

        // Frontends that went away: head first, then slots, then reverse NAT and counters.
        for (fe, p) in &self.frontends {
            if desired.frontends.contains_key(fe) {
                continue;
            }
            ops_remove.push(MapOp::DeleteService(service_key(fe, 0)));
            for i in 0..p.slots.len() {
                ops_remove.push(MapOp::DeleteService(service_key(fe, i as u16 + 1)));
            }
            ops_remove.push(MapOp::DeleteRevNat(p.rev_nat));
            ops_remove.push(MapOp::DeleteCounters(p.rev_nat));
            for id in &p.slots {
                if let Some(ep) = ep_by_id.get(id)
                    && ep.proto == Proto::Udp
                    && !wanted.contains_key(ep)
                {
                    ops_purge.push(MapOp::Retire(backend_addr(ep), p.rev_nat));
                    next.retired.insert(*ep);
                }
            }
        }

        // Retired addresses stay retired until they become backends again.
        let mut ops_unretire = Vec::new();
        for ep in &self.retired {
            if wanted.contains_key(ep) {
                ops_unretire.push(MapOp::Unretire(backend_addr(ep)));
            } else {
                next.retired.insert(*ep);
            }
        }
        for ep in wanted.keys() {
            if next.retired.remove(ep) && !self.retired.contains(ep) {
                // Retired and re-added within one plan: nothing to write.
                ops_purge.retain(|op| !matches!(op, MapOp::Retire(a, _) if *a == backend_addr(ep)));
            }
        }

        // Backends no longer referenced go last.
        let mut ops_backends_delete = Vec::new();
        for (ep, b) in &self.backends {
            if !wanted.contains_key(ep) {
                ops_backends_delete.push(MapOp::DeleteBackend(b.id));
            }
        }

        let mut ops = ops_unretire;
        ops.extend(ops_backends_put);
        ops.extend(ops_revnat_put);
        ops.extend(ops_slots);
        ops.extend(ops_remove);
        ops.extend(ops_purge);
        ops.extend(ops_backends_delete);
        Plan { ops, next }
    }

    /// A readable dump of every map entry this state implies, sorted: what the golden tests
    /// compare.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let ep_of: BTreeMap<u32, (&Endpoint, u8)> = self
            .backends
            .iter()
            .map(|(ep, b)| (b.id, (ep, b.state)))
            .collect();
        out.push_str("services:\n");
        for (fe, p) in &self.frontends {
            let mut flags = Vec::new();
            if p.flags & SVC_FLAG_AFFINITY != 0 {
                flags.push(format!("affinity={}s", p.affinity_timeout_s));
            }
            if p.flags & SVC_FLAG_NO_LOCAL != 0 {
                flags.push("no-local-backend".to_string());
            }
            let _ = writeln!(
                out,
                "  {fe} slot=0 count={} rev_nat={}{}{}",
                p.slots.len(),
                p.rev_nat,
                if flags.is_empty() { "" } else { " " },
                flags.join(" ")
            );
            for (i, id) in p.slots.iter().enumerate() {
                let _ = writeln!(out, "  {fe} slot={} backend={id}", i + 1);
            }
        }
        out.push_str("backends:\n");
        for (id, (ep, state)) in &ep_of {
            let s = if *state == BACKEND_ACTIVE {
                "active"
            } else {
                "terminating"
            };
            let _ = writeln!(out, "  {id} {ep} {s}");
        }
        out.push_str("rev_nat:\n");
        let mut rn: Vec<(u32, &Frontend)> = self
            .frontends
            .iter()
            .map(|(fe, p)| (p.rev_nat, fe))
            .collect();
        rn.sort();
        for (id, fe) in rn {
            let _ = writeln!(out, "  {id} {fe}");
        }
        if !self.retired.is_empty() {
            out.push_str("retired:\n");
            for ep in &self.retired {
                let _ = writeln!(out, "  {ep}");
            }
        }
        out
    }
}

/// New slot order for `want`, moving as few existing slots as possible: backends that stay keep
/// their slot, newcomers fill the holes, then the tail is compacted into remaining holes.
fn stable_slots(prev: &[u32], want: &[u32]) -> Vec<u32> {
    let want_set: BTreeSet<u32> = want.iter().copied().collect();
    let mut slots: Vec<Option<u32>> = prev
        .iter()
        .map(|id| want_set.contains(id).then_some(*id))
        .collect();
    let kept: BTreeSet<u32> = slots.iter().flatten().copied().collect();
    let mut newcomers = want.iter().filter(|id| !kept.contains(id)).copied();
    for s in slots.iter_mut() {
        if s.is_none()
            && let Some(id) = newcomers.next()
        {
            *s = Some(id);
        }
    }
    slots.extend(newcomers.map(Some));
    // Compact: move tail entries into holes.
    let mut i = 0;
    while i < slots.len() {
        if slots[i].is_none() {
            while matches!(slots.last(), Some(None)) {
                slots.pop();
            }
            if i < slots.len() {
                let last = slots.pop().flatten();
                slots[i] = last;
            }
        }
        i += 1;
    }
    slots.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_slots_keeps_positions() {
        assert_eq!(stable_slots(&[], &[1, 2, 3]), vec![1, 2, 3]);
        assert_eq!(stable_slots(&[1, 2, 3], &[1, 3]), vec![1, 3]);
        assert_eq!(stable_slots(&[1, 2, 3], &[1, 2]), vec![1, 2]);
        assert_eq!(stable_slots(&[1, 2, 3], &[1, 3, 4]), vec![1, 4, 3]);
        assert_eq!(stable_slots(&[1, 2, 3, 4], &[4]), vec![4]);
        assert_eq!(stable_slots(&[1, 2, 3], &[]), Vec::<u32>::new());
        assert_eq!(stable_slots(&[1, 2, 3], &[3, 2, 1, 5]), vec![1, 2, 3, 5]);
    }
}
