//! Socket-level load balancing (east-west): cgroup sock_addr hooks rewrite the destination of
//! `connect()`/`sendmsg()` from a frontend to a backend once per connection (TCP, connected UDP)
//! or per datagram (unconnected UDP), so no packet is ever NATed. `recvmsg()` and
//! `getpeername()` translate the backend back, so the application sees the ClusterIP as its peer.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use keel_common::{AFFINITY_BY_NETNS, PROTO_TCP, PROTO_UDP, SockRevKey, SockRevValue};

use crate::{
    lb::{lookup_frontend, select_backend},
    maps::{KEEL_SOCK_RNAT, count_service},
};

/// Allow the syscall to proceed (the only verdict these hooks give: a frontend without backends
/// is left to the per-packet path, which answers with a TCP RST or ICMP port unreachable).
const ALLOW: i32 = 1;

#[inline(always)]
fn proto_of(sa: &bpf_sock_addr) -> Option<u8> {
    match sa.protocol as u8 {
        PROTO_TCP => Some(PROTO_TCP),
        PROTO_UDP => Some(PROTO_UDP),
        _ => None,
    }
}

/// connect4 and sendmsg4: frontend → backend.
#[inline(always)]
pub fn translate_destination(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel hands us a valid bpf_sock_addr for the duration of the program.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(proto) = proto_of(sa) else {
        return ALLOW;
    };
    let daddr = sa.user_ip4;
    let dport = sa.user_port as u16;
    let Some(fe) = lookup_frontend(daddr, dport, proto) else {
        return ALLOW;
    };
    // SAFETY: helper valid for sock_addr programs.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    let Some((_, backend)) = select_backend(&fe, netns, AFFINITY_BY_NETNS) else {
        return ALLOW;
    };
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockRevKey {
        cookie,
        addr: backend.addr,
        port: backend.port,
        _pad: 0,
    };
    let val = SockRevValue {
        addr: daddr,
        port: dport,
        _pad: 0,
        rev_nat: fe.svc.rev_nat,
    };
    let _ = KEEL_SOCK_RNAT.insert(&key, &val, 0);
    sa.user_ip4 = backend.addr;
    sa.user_port = backend.port as u32;
    count_service(fe.svc.rev_nat, |c| c.socket_lb += 1);
    ALLOW
}

/// recvmsg4 and getpeername4: backend → the frontend this socket asked for.
#[inline(always)]
pub fn restore_peer(ctx: &SockAddrContext) -> i32 {
    // SAFETY: as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    if proto_of(sa).is_none() {
        return ALLOW;
    }
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockRevKey {
        cookie,
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { KEEL_SOCK_RNAT.get(&key).copied() } {
        sa.user_ip4 = v.addr;
        sa.user_port = v.port as u32;
    }
    ALLOW
}
