//! Connection tracking for the per-packet path: an LRU map holding, for each translated flow, a
//! forward entry (client → frontend ⇒ backend id) and a reply entry (backend → client ⇒ restore
//! the frontend as source). Entries expire by time; TCP FIN/RST shortens their life.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use keel_common::{
    CT_CLOSING_TIMEOUT_NS, CT_FLAG_CLOSING, CT_FORWARD, CT_REPLY, CT_TCP_SYN_TIMEOUT_NS,
    CT_TCP_TIMEOUT_NS, CT_UDP_TIMEOUT_NS, CtEntry, CtKey, PROTO_TCP,
};

use crate::{
    maps::KEEL_CT,
    packet::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

#[inline(always)]
pub fn key_of(p: &Packet) -> CtKey {
    CtKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn lifetime(p: &Packet, flags: u8) -> u64 {
    if p.proto != PROTO_TCP {
        CT_UDP_TIMEOUT_NS
    } else if flags & CT_FLAG_CLOSING != 0 {
        CT_CLOSING_TIMEOUT_NS
    } else if p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        CT_TCP_SYN_TIMEOUT_NS
    } else {
        CT_TCP_TIMEOUT_NS
    }
}

/// Looks up the packet's flow and refreshes it. Returns a copy of the entry if it is live.
#[inline(always)]
pub fn lookup(p: &Packet) -> Option<CtEntry> {
    let key = key_of(p);
    let e = KEEL_CT.get_ptr_mut(&key)?;
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: LRU map values stay valid for the program's run; races with other CPUs only
    // affect the timestamp and flags, which are advisory.
    let entry = unsafe { &mut *e };
    if entry.expires_ns < now {
        let _ = KEEL_CT.remove(&key);
        return None;
    }
    if p.proto == PROTO_TCP && p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        entry.flags |= CT_FLAG_CLOSING;
    }
    entry.expires_ns = now + lifetime(p, entry.flags);
    Some(*entry)
}

/// Records a new translated flow: `p` (client → frontend) now goes to `baddr:bport`.
#[inline(always)]
pub fn create(p: &Packet, backend_id: u32, baddr: u32, bport: u16, rev_nat: u32, flags: u8) {
    let now = unsafe { bpf_ktime_get_ns() };
    let expires_ns = now + lifetime(p, 0);
    let fwd = CtEntry {
        backend_id,
        rev_nat,
        orig_addr: p.daddr,
        orig_port: p.dport,
        kind: CT_FORWARD,
        flags,
        expires_ns,
    };
    let reply_key = CtKey {
        saddr: baddr,
        daddr: p.saddr,
        sport: bport,
        dport: p.sport,
        proto: p.proto,
        _pad: [0; 3],
    };
    let reply = CtEntry {
        kind: CT_REPLY,
        ..fwd
    };
    let _ = KEEL_CT.insert(&reply_key, &reply, 0);
    let _ = KEEL_CT.insert(&key_of(p), &fwd, 0);
}

/// Forgets a flow whose backend disappeared so the next packet is balanced afresh.
#[inline(always)]
pub fn forget(p: &Packet) {
    let _ = KEEL_CT.remove(&key_of(p));
}
