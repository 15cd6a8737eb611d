//! IPv4/TCP/UDP parsing and header rewriting with incremental checksum updates.
//!
//! All reads go through `bpf_skb_load_bytes` (works on non-linear skbs and keeps the verifier
//! happy); all writes through `bpf_skb_store_bytes` plus the kernel's checksum helpers, which
//! also handle `CHECKSUM_PARTIAL` skbs from local sockets correctly.
use aya_ebpf::programs::TcContext;
use keel_common::{PROTO_TCP, PROTO_UDP};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SADDR_OFF: usize = ETH_HLEN + 12;
const IP_DADDR_OFF: usize = ETH_HLEN + 16;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

/// What parsing found.
pub enum Parsed {
    /// An IPv4 TCP or UDP packet we can load-balance.
    L4(Packet),
    /// Not ours: another ethertype or IP protocol, or a non-first fragment.
    Other,
    /// Headers that are shorter than they claim.
    Malformed,
    /// The first fragment of a fragmented datagram (ports known, rest of the datagram not).
    FirstFragment(Packet),
}

/// The fields of an IPv4 TCP/UDP packet the datapath uses. Addresses and ports are in network
/// byte order (raw, as on the wire).
#[derive(Clone, Copy)]
pub struct Packet {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    /// IP header length in bytes.
    pub ihl: usize,
    pub tot_len: u16,
}

impl Packet {
    #[inline(always)]
    pub fn l4_off(&self) -> usize {
        ETH_HLEN + self.ihl
    }

    #[inline(always)]
    fn l4_csum_off(&self) -> usize {
        self.l4_off() + if self.proto == PROTO_TCP { 16 } else { 6 }
    }

    #[inline(always)]
    fn l4_csum_flags(&self) -> u64 {
        // A UDP checksum of 0 means "none" and must stay 0; a computed 0 becomes 0xffff.
        if self.proto == PROTO_UDP {
            BPF_F_MARK_MANGLED_0
        } else {
            0
        }
    }
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Parsed {
    let Ok(eth_type) = ctx.load::<[u8; 2]>(12) else {
        return Parsed::Other;
    };
    if u16::from_be_bytes(eth_type) != ETH_P_IP {
        return Parsed::Other;
    }
    let Ok(ip) = ctx.load::<[u8; 20]>(ETH_HLEN) else {
        return Parsed::Malformed;
    };
    if ip[0] >> 4 != 4 {
        return Parsed::Malformed;
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes([ip[2], ip[3]]);
    if ihl < 20 || (tot_len as usize) < ihl || ctx.len() < (ETH_HLEN + tot_len as usize) as u32 {
        return Parsed::Malformed;
    }
    let proto = ip[9];
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Parsed::Other;
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x1fff != 0 {
        return Parsed::Other;
    }
    let l4_len = tot_len as usize - ihl;
    let mut p = Packet {
        saddr: u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
        daddr: u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
        sport: 0,
        dport: 0,
        proto,
        tcp_flags: 0,
        ihl,
        tot_len,
    };
    let l4_off = ETH_HLEN + ihl;
    if proto == PROTO_TCP {
        if l4_len < 20 {
            return Parsed::Malformed;
        }
        let Ok(tcp) = ctx.load::<[u8; 14]>(l4_off) else {
            return Parsed::Malformed;
        };
        p.sport = u16::from_ne_bytes([tcp[0], tcp[1]]);
        p.dport = u16::from_ne_bytes([tcp[2], tcp[3]]);
        p.tcp_flags = tcp[13];
        if ((tcp[12] >> 4) as usize) * 4 < 20 {
            return Parsed::Malformed;
        }
    } else {
        if l4_len < 8 {
            return Parsed::Malformed;
        }
        let Ok(udp) = ctx.load::<[u8; 4]>(l4_off) else {
            return Parsed::Malformed;
        };
        p.sport = u16::from_ne_bytes([udp[0], udp[1]]);
        p.dport = u16::from_ne_bytes([udp[2], udp[3]]);
    }
    if frag & 0x2000 != 0 {
        return Parsed::FirstFragment(p);
    }
    Parsed::L4(p)
}

/// Rewrites the destination address and port (DNAT), fixing the IP and L4 checksums.
#[inline(always)]
pub fn set_destination(ctx: &TcContext, p: &Packet, addr: u32, port: u16) -> Result<(), ()> {
    rewrite(ctx, p, IP_DADDR_OFF, 2, p.daddr, addr, p.dport, port)
}

/// Rewrites the source address and port (reverse NAT of a reply), fixing the checksums.
#[inline(always)]
pub fn set_source(ctx: &TcContext, p: &Packet, addr: u32, port: u16) -> Result<(), ()> {
    rewrite(ctx, p, IP_SADDR_OFF, 0, p.saddr, addr, p.sport, port)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rewrite(
    ctx: &TcContext,
    p: &Packet,
    addr_off: usize,
    port_rel_off: usize,
    old_addr: u32,
    new_addr: u32,
    old_port: u16,
    new_port: u16,
) -> Result<(), ()> {
    let csum_off = p.l4_csum_off();
    let flags = p.l4_csum_flags();
    if old_addr != new_addr {
        ctx.l4_csum_replace(
            csum_off,
            old_addr as u64,
            new_addr as u64,
            BPF_F_PSEUDO_HDR | flags | 4,
        )
        .map_err(|_| ())?;
        ctx.l3_csum_replace(IP_CSUM_OFF, old_addr as u64, new_addr as u64, 4)
            .map_err(|_| ())?;
        ctx.store(addr_off, &new_addr, 0).map_err(|_| ())?;
    }
    if old_port != new_port {
        ctx.l4_csum_replace(csum_off, old_port as u64, new_port as u64, flags | 2)
            .map_err(|_| ())?;
        ctx.store(p.l4_off() + port_rel_off, &new_port, 0)
            .map_err(|_| ())?;
    }
    Ok(())
}

/// Folds a 32-bit one's-complement sum from `bpf_csum_diff` into a checksum field value.
#[inline(always)]
pub fn fold(sum: i64) -> u16 {
    let mut s = sum as u64 & 0xffff_ffff;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}
