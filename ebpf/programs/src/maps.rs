//! Every map of the datapath, pinned by name under the agent's pin directory so a restarted agent
//! (and a newer program version) takes over the same state.
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use keel_common::{
    AffinityKey, AffinityValue, Backend, BackendAddr, CtEntry, CtKey, DropReason, Retired, RevNat,
    ServiceCounters, ServiceKey, ServiceValue, SockRevKey, SockRevValue, capacity,
};

#[map]
pub static KEEL_SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(capacity::SERVICES, BPF_F_NO_PREALLOC);

#[map]
pub static KEEL_BACKENDS: HashMap<u32, Backend> =
    HashMap::pinned(capacity::BACKENDS, BPF_F_NO_PREALLOC);

#[map]
pub static KEEL_REV_NAT: HashMap<u32, RevNat> =
    HashMap::pinned(capacity::REV_NAT, BPF_F_NO_PREALLOC);

#[map]
pub static KEEL_CT: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(capacity::CONNTRACK, 0);

#[map]
pub static KEEL_AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(capacity::AFFINITY, 0);

#[map]
pub static KEEL_SOCK_RNAT: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::pinned(capacity::SOCK_REV_NAT, 0);

#[map]
pub static KEEL_RETIRED: HashMap<BackendAddr, Retired> =
    HashMap::pinned(capacity::RETIRED_BACKENDS, BPF_F_NO_PREALLOC);

/// The node's own IPv4 addresses (network byte order → 0): where NodePorts answer.
#[map]
pub static KEEL_NODE_ADDRS: HashMap<u32, u32> = HashMap::pinned(capacity::NODE_ADDRS, 0);

#[map]
pub static KEEL_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(DropReason::COUNT, 0);

#[map]
pub static KEEL_SVC_STATS: PerCpuHashMap<u32, ServiceCounters> =
    PerCpuHashMap::pinned(capacity::SERVICE_COUNTERS, BPF_F_NO_PREALLOC);

#[inline(always)]
pub fn count_drop(reason: DropReason) {
    if let Some(c) = KEEL_DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

/// Adds to one of a frontend's counters, creating them on first use (the agent deletes them
/// with the frontend).
#[inline(always)]
pub fn count_service(rev_nat: u32, f: impl FnOnce(&mut ServiceCounters)) {
    if let Some(c) = KEEL_SVC_STATS.get_ptr_mut(rev_nat) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe { f(&mut *c) };
    } else {
        let mut c = ServiceCounters::default();
        f(&mut c);
        let _ = KEEL_SVC_STATS.insert(&rev_nat, &c, BPF_NOEXIST as u64);
    }
}
