//! Rejecting a connection to a frontend without backends, the way kube-proxy's REJECT does, so
//! clients fail fast instead of timing out: a TCP segment becomes a RST sent back to the sender,
//! a UDP datagram becomes an ICMP port unreachable. Both are built in place and redirected out of
//! the interface the packet came in on.
use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, bpf_adj_room_mode::BPF_ADJ_ROOM_NET},
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use keel_common::PROTO_TCP;

use crate::packet::{ETH_HLEN, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, fold};

const IP_HLEN: usize = 20;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const PROTO_ICMP: u8 = 1;

/// Turns the packet into its rejection and returns the tc verdict (`TC_ACT_REDIRECT`), or
/// `Err(())` when it can't (the caller drops and counts `RejectFailed`), or `Ok(None)` when the
/// packet must not be answered (a RST is never answered with a RST).
#[inline(always)]
pub fn reject(ctx: &TcContext, p: &Packet) -> Result<Option<i32>, ()> {
    if p.ihl != IP_HLEN {
        return Err(());
    }
    if p.proto == PROTO_TCP {
        if p.tcp_flags & TCP_RST != 0 {
            return Ok(None);
        }
        tcp_rst(ctx, p)?;
    } else {
        icmp_port_unreachable(ctx, p)?;
    }
    swap_macs(ctx)?;
    // SAFETY: plain helper call with this skb's own interface.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let verdict = unsafe { bpf_redirect(ifindex, 0) } as i32;
    if verdict != TC_ACT_REDIRECT as i32 {
        return Err(());
    }
    Ok(Some(verdict))
}

#[inline(always)]
fn swap_macs(ctx: &TcContext) -> Result<(), ()> {
    let macs: [u8; 12] = ctx.load(0).map_err(|_| ())?;
    let swapped = [
        macs[6], macs[7], macs[8], macs[9], macs[10], macs[11], macs[0], macs[1], macs[2], macs[3],
        macs[4], macs[5],
    ];
    ctx.store(0, &swapped, 0).map_err(|_| ())
}

/// A fresh 20-byte IPv4 header from `src` to `dst` with a correct checksum.
#[inline(always)]
fn ip_header(src: u32, dst: u32, proto: u8, tot_len: u16) -> [u8; 20] {
    let s = src.to_ne_bytes();
    let d = dst.to_ne_bytes();
    let l = tot_len.to_be_bytes();
    let mut h = [
        0x45, 0, l[0], l[1], 0, 0, 0x40, 0, 64, proto, 0, 0, s[0], s[1], s[2], s[3], d[0], d[1],
        d[2], d[3],
    ];
    let c = csum(&h).to_ne_bytes();
    h[10] = c[0];
    h[11] = c[1];
    h
}

#[inline(always)]
fn csum<const N: usize>(buf: &[u8; N]) -> u16 {
    // SAFETY: `buf` is N readable bytes on the stack; N is a multiple of 4 at every call site.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            buf.as_ptr() as *mut u32,
            N as u32,
            0,
        )
    };
    fold(sum)
}

#[inline(always)]
fn tcp_rst(ctx: &TcContext, p: &Packet) -> Result<(), ()> {
    let tcp: [u8; 20] = ctx.load(p.l4_off()).map_err(|_| ())?;
    let data_off = ((tcp[12] >> 4) as u32) * 4;
    let payload = (p.tot_len as u32).saturating_sub(IP_HLEN as u32 + data_off);
    let in_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let in_ack = [tcp[8], tcp[9], tcp[10], tcp[11]];
    // RFC 9293 3.10.7.1: answer an ACK with seq = its ack; otherwise RST|ACK acking what it sent.
    let (seq, ack, flags) = if p.tcp_flags & TCP_ACK != 0 {
        (in_ack, [0u8; 4], TCP_RST)
    } else {
        let mut n = payload;
        if p.tcp_flags & TCP_SYN != 0 {
            n += 1;
        }
        if p.tcp_flags & TCP_FIN != 0 {
            n += 1;
        }
        (
            [0u8; 4],
            in_seq.wrapping_add(n).to_be_bytes(),
            TCP_RST | TCP_ACK,
        )
    };
    // Pseudo header (12 bytes) followed by the new TCP header (20 bytes).
    let s = p.daddr.to_ne_bytes();
    let d = p.saddr.to_ne_bytes();
    let mut seg = [
        s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3], 0, PROTO_TCP, 0, 20, // pseudo header
        tcp[2], tcp[3], tcp[0], tcp[1], // ports swapped
        seq[0], seq[1], seq[2], seq[3], ack[0], ack[1], ack[2], ack[3], 0x50, flags, 0,
        0, // window 0
        0, 0, 0, 0, // checksum, urgent pointer
    ];
    let c = csum(&seg).to_ne_bytes();
    seg[28] = c[0];
    seg[29] = c[1];
    let ip = ip_header(p.daddr, p.saddr, PROTO_TCP, 40);
    // SAFETY: helper on our own skb; shrinks (or keeps) the packet to exactly IP + TCP headers.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + 40) as u32, 0) } != 0 {
        return Err(());
    }
    ctx.store(ETH_HLEN, &ip, 0).map_err(|_| ())?;
    let mut tcp_out = [0u8; 20];
    let mut i = 0;
    while i < 20 {
        tcp_out[i] = seg[12 + i];
        i += 1;
    }
    ctx.store(ETH_HLEN + IP_HLEN, &tcp_out, 0).map_err(|_| ())
}

#[inline(always)]
fn icmp_port_unreachable(ctx: &TcContext, p: &Packet) -> Result<(), ()> {
    let orig_ip: [u8; 20] = ctx.load(ETH_HLEN).map_err(|_| ())?;
    let orig_l4: [u8; 8] = ctx.load(ETH_HLEN + IP_HLEN).map_err(|_| ())?;
    // ICMP header + the offending IP header + the first 8 bytes of its payload (RFC 792).
    let mut icmp = [0u8; 36];
    icmp[0] = ICMP_DEST_UNREACH;
    icmp[1] = ICMP_PORT_UNREACH;
    let mut i = 0;
    while i < 20 {
        icmp[8 + i] = orig_ip[i];
        i += 1;
    }
    let mut j = 0;
    while j < 8 {
        icmp[28 + j] = orig_l4[j];
        j += 1;
    }
    let c = csum(&icmp).to_ne_bytes();
    icmp[2] = c[0];
    icmp[3] = c[1];
    // Make room for the ICMP header and the quoted IP header between our IP header and the UDP
    // header (which becomes the quoted 8 bytes), then cut everything after it.
    ctx.adjust_room(28, BPF_ADJ_ROOM_NET, 0).map_err(|_| ())?;
    let total = ETH_HLEN + IP_HLEN + 36;
    // SAFETY: helper on our own skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, total as u32, 0) } != 0 {
        return Err(());
    }
    let ip = ip_header(p.daddr, p.saddr, PROTO_ICMP, (IP_HLEN + 36) as u16);
    ctx.store(ETH_HLEN, &ip, 0).map_err(|_| ())?;
    ctx.store(ETH_HLEN + IP_HLEN, &icmp, 0).map_err(|_| ())
}
