//! The per-packet path (tc ingress): conntracked DNAT to a backend and reverse SNAT of replies,
//! for traffic the socket hooks can't cover: NodePort from outside the node, and pod traffic
//! that bypassed them. Also moves UDP flows off retired backends and rejects frontends without
//! backends.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_ns, bpf_redirect_neigh},
    programs::TcContext,
};
use keel_common::{
    AFFINITY_BY_ADDR, BackendAddr, CT_FLAG_NODE_FRONTEND, CT_FORWARD, DropReason, PROTO_UDP,
    RETIRED_TTL_NS, SCOPE_NODEPORT, SVC_FLAG_NO_LOCAL, ServiceKey,
};

use crate::{
    ct,
    lb::{Frontend, get_backend, lookup_frontend, select_backend},
    maps::{KEEL_RETIRED, KEEL_REV_NAT, KEEL_SERVICES, count_drop, count_service},
    packet::{Packet, Parsed, parse, set_destination, set_source},
    reject::reject,
};

const PASS: i32 = TC_ACT_OK as i32;
const DROP: i32 = TC_ACT_SHOT as i32;

#[inline(always)]
fn drop(reason: DropReason) -> i32 {
    count_drop(reason);
    DROP
}

/// Entry logic shared by the pod-veth and the node-device programs.
#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    let p = match parse(ctx) {
        Parsed::L4(p) => p,
        Parsed::Other => return PASS,
        Parsed::Malformed => {
            // Not ours to judge: the kernel validates and drops it. Counted for visibility.
            count_drop(DropReason::Malformed);
            return PASS;
        }
        Parsed::FirstFragment(p) => {
            if lookup_frontend(p.daddr, p.dport, p.proto).is_some() {
                // We could translate this fragment but not the ones after it.
                return drop(DropReason::Fragment);
            }
            return PASS;
        }
    };

    if let Some(e) = ct::lookup(&p) {
        if e.kind == CT_FORWARD {
            if let Some(b) = get_backend(e.backend_id) {
                return nat(ctx, &p, e.rev_nat, |ctx, p| {
                    set_destination(ctx, p, b.addr, b.port)
                });
            }
            // The backend is gone: balance the packet afresh below (UDP keeps working; a TCP
            // peer gets a RST from the new backend, as it would from a restarted one).
            ct::forget(&p);
        } else {
            let verdict = nat(ctx, &p, e.rev_nat, |ctx, p| {
                set_source(ctx, p, e.orig_addr, e.orig_port)
            });
            if verdict == PASS && e.flags & CT_FLAG_NODE_FRONTEND != 0 {
                return redirect_routed(ctx, &p, e.orig_addr);
            }
            return verdict;
        }
    }

    if let Some(fe) = lookup_frontend(p.daddr, p.dport, p.proto) {
        return new_flow(ctx, &p, &fe);
    }
    if p.proto == PROTO_UDP {
        if let Some(fe) = retired_frontend(&p) {
            return new_flow(ctx, &p, &fe);
        }
    }
    PASS
}

#[inline(always)]
fn nat(
    ctx: &TcContext,
    p: &Packet,
    rev_nat: u32,
    rewrite: impl FnOnce(&TcContext, &Packet) -> Result<(), ()>,
) -> i32 {
    if rewrite(ctx, p).is_err() {
        return drop(DropReason::RewriteFailed);
    }
    count_service(rev_nat, |c| c.packets += 1);
    PASS
}

#[inline(always)]
fn new_flow(ctx: &TcContext, p: &Packet, fe: &Frontend) -> i32 {
    let Some((id, b)) = select_backend(fe, p.saddr as u64, AFFINITY_BY_ADDR) else {
        let reason = if fe.svc.flags & SVC_FLAG_NO_LOCAL != 0 {
            DropReason::NoLocalBackend
        } else {
            DropReason::NoBackend
        };
        count_drop(reason);
        count_service(fe.svc.rev_nat, |c| c.rejected += 1);
        return match reject(ctx, p) {
            Ok(Some(verdict)) => verdict,
            Ok(None) => DROP,
            Err(()) => drop(DropReason::RejectFailed),
        };
    };
    let flags = if fe.key.scope == SCOPE_NODEPORT {
        CT_FLAG_NODE_FRONTEND
    } else {
        0
    };
    ct::create(p, id, b.addr, b.port, fe.svc.rev_nat, flags);
    count_service(fe.svc.rev_nat, |c| c.packet_lb_flows += 1);
    nat(ctx, p, fe.svc.rev_nat, |ctx, p| {
        set_destination(ctx, p, b.addr, b.port)
    })
}

/// A UDP datagram to a backend that recently left its service (a connected socket that the
/// socket hooks pinned to it): the frontend it stood for, to pick a live backend from.
#[inline(always)]
fn retired_frontend(p: &Packet) -> Option<Frontend> {
    let key = BackendAddr {
        addr: p.daddr,
        port: p.dport,
        proto: p.proto,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    let r = unsafe { KEEL_RETIRED.get(&key).copied() }?;
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(r.retired_ns) > RETIRED_TTL_NS {
        return None;
    }
    // SAFETY: copied out at once.
    let fe = unsafe { KEEL_REV_NAT.get(&r.rev_nat).copied() }?;
    let key = ServiceKey {
        addr: fe.addr,
        port: fe.port,
        proto: fe.proto,
        scope: fe.scope,
        slot: 0,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    let svc = unsafe { KEEL_SERVICES.get(&key).copied() }?;
    Some(Frontend { key, svc })
}

const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;

/// Sends a reverse-NATed reply whose new source is one of the node's own addresses straight to
/// its egress device (FIB lookup + neighbour resolution), as Cilium does: handed to the stack,
/// a forwarded packet with a local source address is dropped as a martian.
#[inline(always)]
fn redirect_routed(ctx: &TcContext, p: &Packet, new_src: u32) -> i32 {
    // SAFETY: plain-old-data kernel struct; all-zero is its documented initial state.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = p.proto;
    params.__bindgen_anon_1.tot_len = p.tot_len;
    // SAFETY: reading our own skb's metadata.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    params.__bindgen_anon_3.ipv4_src = new_src;
    params.__bindgen_anon_4.ipv4_dst = p.daddr;
    // SAFETY: params is a valid, fully initialised bpf_fib_lookup on our stack.
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH {
        return PASS;
    }
    // SAFETY: helper call; the kernel resolves the next hop's MAC itself.
    unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}
