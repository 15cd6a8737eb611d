//! Frontend lookup and backend selection (random, or sticky with `sessionAffinity: ClientIP`).
use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use keel_common::{
    AffinityKey, AffinityValue, Backend, NODEPORT_MAX, NODEPORT_MIN, SCOPE_ADDR, SCOPE_NODEPORT,
    SVC_FLAG_AFFINITY, ServiceKey, ServiceValue,
};

use crate::maps::{KEEL_AFFINITY, KEEL_BACKENDS, KEEL_NODE_ADDRS, KEEL_SERVICES};

/// A frontend found for a destination: its slot-0 key and value.
#[derive(Clone, Copy)]
pub struct Frontend {
    pub key: ServiceKey,
    pub svc: ServiceValue,
}

#[inline(always)]
fn get_service(key: &ServiceKey) -> Option<ServiceValue> {
    // SAFETY: the value is copied out immediately; a concurrent update can at worst give us a
    // torn but in-range value, which selection below tolerates (it re-checks the backend).
    unsafe { KEEL_SERVICES.get(key).copied() }
}

/// Finds the frontend for `daddr:dport/proto` (all network byte order): an exact address match
/// (ClusterIP, external IP), else a NodePort when `daddr` is one of the node's addresses.
#[inline(always)]
pub fn lookup_frontend(daddr: u32, dport: u16, proto: u8) -> Option<Frontend> {
    let mut key = ServiceKey {
        addr: daddr,
        port: dport,
        proto,
        scope: SCOPE_ADDR,
        slot: 0,
        _pad: 0,
    };
    if let Some(svc) = get_service(&key) {
        return Some(Frontend { key, svc });
    }
    let host_port = u16::from_be(dport);
    if !(NODEPORT_MIN..=NODEPORT_MAX).contains(&host_port) {
        return None;
    }
    // SAFETY: read-only presence check.
    if unsafe { KEEL_NODE_ADDRS.get(&daddr) }.is_none() {
        return None;
    }
    key.addr = 0;
    key.scope = SCOPE_NODEPORT;
    get_service(&key).map(|svc| Frontend { key, svc })
}

#[inline(always)]
pub fn get_backend(id: u32) -> Option<Backend> {
    // SAFETY: copied out at once; see `get_service`.
    unsafe { KEEL_BACKENDS.get(&id).copied() }
}

/// Picks a backend for a new connection of `client` (a netns cookie or an address, per `kind`).
/// Returns `None` when the frontend has no backend (the caller rejects).
#[inline(always)]
pub fn select_backend(fe: &Frontend, client: u64, kind: u32) -> Option<(u32, Backend)> {
    let count = fe.svc.count as u32;
    if count == 0 {
        return None;
    }
    let sticky = fe.svc.flags & SVC_FLAG_AFFINITY != 0;
    let aff_key = AffinityKey {
        client,
        rev_nat: fe.svc.rev_nat,
        kind,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if sticky {
        // The agent deletes affinity entries whose backend left the frontend's slots, so a
        // fresh entry whose backend still exists is a valid choice.
        // SAFETY: copied out at once.
        if let Some(prev) = unsafe { KEEL_AFFINITY.get(&aff_key).copied() } {
            let timeout_ns = fe.svc.affinity_timeout_s as u64 * 1_000_000_000;
            if now.wrapping_sub(prev.last_used_ns) < timeout_ns {
                if let Some(b) = get_backend(prev.backend_id) {
                    let v = AffinityValue {
                        backend_id: prev.backend_id,
                        _pad: 0,
                        last_used_ns: now,
                    };
                    let _ = KEEL_AFFINITY.insert(&aff_key, &v, 0);
                    return Some((prev.backend_id, b));
                }
            }
        }
    }
    let slot = (unsafe { bpf_get_prandom_u32() } % count) + 1;
    let mut key = fe.key;
    key.slot = slot as u16;
    let id = get_service(&key)?.backend_id;
    let b = get_backend(id)?;
    if sticky {
        let v = AffinityValue {
            backend_id: id,
            _pad: 0,
            last_used_ns: now,
        };
        let _ = KEEL_AFFINITY.insert(&aff_key, &v, 0);
    }
    Some((id, b))
}
