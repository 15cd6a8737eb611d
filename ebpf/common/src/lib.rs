//! Types shared by Keel's eBPF programs (`keel-ebpf`) and the node agent's datapath module.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding and no `bool`/`Option`, so both
//! sides agree on the layout byte for byte. Addresses and ports are stored in **network byte
//! order** exactly as they appear in packets and in `bpf_sock_addr`; the user-space side converts.
//!
//! The map model follows Cilium's: a service map keyed by (frontend address, port, protocol,
//! scope, slot) where slot 0 describes the service and slots 1..=N name backend ids; a backend
//! map; a reverse-NAT map; LRU conntrack; LRU session affinity.
#![no_std]

/// Names of the maps in the eBPF object. They are also the file names under the pin directory.
pub mod map_names {
    pub const SERVICES: &str = "KEEL_SERVICES";
    pub const BACKENDS: &str = "KEEL_BACKENDS";
    pub const REV_NAT: &str = "KEEL_REV_NAT";
    pub const CONNTRACK: &str = "KEEL_CT";
    pub const AFFINITY: &str = "KEEL_AFFINITY";
    pub const SOCK_REV_NAT: &str = "KEEL_SOCK_RNAT";
    pub const RETIRED_BACKENDS: &str = "KEEL_RETIRED";
    pub const NODE_ADDRS: &str = "KEEL_NODE_ADDRS";
    pub const DROPS: &str = "KEEL_DROPS";
    pub const SERVICE_COUNTERS: &str = "KEEL_SVC_STATS";
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    pub const CONNECT4: &str = "keel_connect4";
    pub const SENDMSG4: &str = "keel_sendmsg4";
    pub const RECVMSG4: &str = "keel_recvmsg4";
    pub const GETPEERNAME4: &str = "keel_getpeername4";
    /// tc ingress on the host side of a pod's veth (traffic leaving the pod).
    pub const FROM_POD: &str = "keel_from_pod";
    /// tc ingress on a node's external device (NodePort from outside).
    pub const FROM_NETDEV: &str = "keel_from_netdev";
}

/// Capacities of the maps. Hash maps that can be large are created with `BPF_F_NO_PREALLOC`,
/// so memory follows the number of entries, not these limits.
pub mod capacity {
    /// Frontends × (1 + backends): 100 000 services with 3 endpoints need 400 000.
    pub const SERVICES: u32 = 1 << 20;
    pub const BACKENDS: u32 = 1 << 20;
    pub const REV_NAT: u32 = 1 << 19;
    pub const CONNTRACK: u32 = 1 << 17;
    pub const AFFINITY: u32 = 1 << 16;
    pub const SOCK_REV_NAT: u32 = 1 << 17;
    pub const RETIRED_BACKENDS: u32 = 1 << 16;
    pub const NODE_ADDRS: u32 = 256;
    pub const SERVICE_COUNTERS: u32 = 1 << 19;
}

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Kubernetes' default NodePort range (`--service-node-port-range`).
pub const NODEPORT_MIN: u16 = 30000;
pub const NODEPORT_MAX: u16 = 32767;

/// Frontend scope: the key's address is matched exactly (ClusterIP, externalIPs, load-balancer IPs).
pub const SCOPE_ADDR: u8 = 0;
/// Frontend scope: NodePort. The key's address is 0; the packet's destination must be one of the
/// node's addresses (`KEEL_NODE_ADDRS`), so NodePorts answer on secondary addresses too.
pub const SCOPE_NODEPORT: u8 = 1;

/// Key of the service map: a frontend (address, port, protocol, scope) and a slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// IPv4 address, network byte order (0 for NodePort frontends).
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// `SCOPE_ADDR` or `SCOPE_NODEPORT`.
    pub scope: u8,
    /// 0 for the service entry, 1..=count for backend slots.
    pub slot: u16,
    pub _pad: u16,
}

/// Service flag: `sessionAffinity: ClientIP`.
pub const SVC_FLAG_AFFINITY: u16 = 1 << 0;
/// Service flag: traffic policy `Local` and no local endpoint: the frontend rejects.
pub const SVC_FLAG_NO_LOCAL: u16 = 1 << 1;

/// Value of the service map. Slot 0 uses `count`, `rev_nat`, `flags`, `affinity_timeout_s`;
/// backend slots use `backend_id` (and repeat `rev_nat`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    pub backend_id: u32,
    /// Number of backend slots new connections choose from (0: reject).
    pub count: u16,
    pub flags: u16,
    /// Reverse-NAT id of the frontend; also the key of its counters.
    pub rev_nat: u32,
    /// Session-affinity timeout in seconds (`sessionAffinityConfig.clientIP.timeoutSeconds`).
    pub affinity_timeout_s: u32,
}

/// Backend state: accepts new connections.
pub const BACKEND_ACTIVE: u8 = 0;
/// Backend state: terminating. Existing flows continue; it is in no slot unless it is serving and
/// the service has no ready endpoint (Kubernetes' ProxyTerminatingEndpoints).
pub const BACKEND_TERMINATING: u8 = 1;

/// Value of the backend map (key: backend id, `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub state: u8,
}

/// Value of the reverse-NAT map (key: rev_nat id, `u32`): the frontend a backend answers for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevNat {
    /// Frontend address, network byte order (0 for a NodePort: the node address the client used).
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
}

/// Key of the conntrack map: a packet's 5-tuple as seen on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Conntrack entry for the original direction: rewrite the destination to `backend_id`.
pub const CT_FORWARD: u8 = 0;
/// Conntrack entry for the reply direction: rewrite the source back to `orig_addr:orig_port`.
pub const CT_REPLY: u8 = 1;

/// TCP flow saw FIN or RST: the entry lives only `CT_CLOSING_TIMEOUT_NS` more.
pub const CT_FLAG_CLOSING: u8 = 1 << 0;
/// The client addressed one of the node's own addresses (NodePort): the reply's new source is
/// local, so the kernel would drop it as a martian if routed; it is redirected out directly.
pub const CT_FLAG_NODE_FRONTEND: u8 = 1 << 1;

/// Value of the conntrack map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    /// Forward entries: the chosen backend.
    pub backend_id: u32,
    pub rev_nat: u32,
    /// Reply entries: the address and port the client originally sent to.
    pub orig_addr: u32,
    pub orig_port: u16,
    /// `CT_FORWARD` or `CT_REPLY`.
    pub kind: u8,
    pub flags: u8,
    /// `bpf_ktime_get_ns()` after which the entry is stale.
    pub expires_ns: u64,
}

pub const CT_TCP_TIMEOUT_NS: u64 = 6 * 3600 * 1_000_000_000;
pub const CT_TCP_SYN_TIMEOUT_NS: u64 = 60 * 1_000_000_000;
pub const CT_CLOSING_TIMEOUT_NS: u64 = 10 * 1_000_000_000;
pub const CT_UDP_TIMEOUT_NS: u64 = 60 * 1_000_000_000;

/// Affinity key kinds: by network-namespace cookie (socket level: one pod) or client IPv4.
pub const AFFINITY_BY_NETNS: u32 = 0;
pub const AFFINITY_BY_ADDR: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffinityKey {
    /// Netns cookie, or the client address (network byte order) in the low 32 bits.
    pub client: u64,
    pub rev_nat: u32,
    pub kind: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    pub last_used_ns: u64,
}

/// Key of the socket reverse-NAT map: which frontend a socket's backend address stands for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockRevKey {
    pub cookie: u64,
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevValue {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
    pub rev_nat: u32,
}

/// Key of the retired-backend map: a backend address that left a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BackendAddr {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// A backend that left a service: UDP sockets still connected to it (socket-level load balancing
/// fixed their peer at `connect()`) are moved to a live backend of `rev_nat` on their next send.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Retired {
    pub rev_nat: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` clock; the entry is ignored after `RETIRED_TTL_NS`.
    pub retired_ns: u64,
}

pub const RETIRED_TTL_NS: u64 = 300 * 1_000_000_000;

/// Per-frontend counters (per-CPU; user space sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceCounters {
    /// Connections (TCP) and datagrams/connects (UDP) balanced at the socket layer.
    pub socket_lb: u64,
    /// Flows balanced per packet (tc), counted at flow creation.
    pub packet_lb_flows: u64,
    /// Packets rewritten by the per-packet path (both directions).
    pub packets: u64,
    /// Connections rejected because the frontend had no backend.
    pub rejected: u64,
}

/// Why a packet or connection was rejected or dropped. One enum for the eBPF programs and user
/// space; its value indexes the per-CPU `KEEL_DROPS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The service has no ready or serving endpoint: rejected (TCP RST / ICMP port unreachable).
    NoBackend = 0,
    /// `externalTrafficPolicy`/`internalTrafficPolicy: Local` with no endpoint on this node: rejected.
    NoLocalBackend = 1,
    /// Headers shorter than they claim (truncated or bogus IHL/length): dropped if addressed to a
    /// service, otherwise passed untouched for the kernel to judge.
    Malformed = 2,
    /// A non-first IP fragment addressed to a service frontend: dropped (ports unknown).
    Fragment = 3,
    /// Building the reject reply failed: dropped.
    RejectFailed = 4,
    /// A header rewrite or checksum helper failed: dropped.
    RewriteFailed = 5,
}

impl DropReason {
    pub const COUNT: u32 = 6;
    pub const ALL: [DropReason; Self::COUNT as usize] = [
        DropReason::NoBackend,
        DropReason::NoLocalBackend,
        DropReason::Malformed,
        DropReason::Fragment,
        DropReason::RejectFailed,
        DropReason::RewriteFailed,
    ];

    /// A stable, Prometheus-friendly name.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::NoBackend => "no_backend",
            DropReason::NoLocalBackend => "no_local_backend",
            DropReason::Malformed => "malformed",
            DropReason::Fragment => "fragment",
            DropReason::RejectFailed => "reject_failed",
            DropReason::RewriteFailed => "rewrite_failed",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, made only of integers, with explicit padding
    // fields, so every byte pattern is a valid value and there are no implicit padding bytes.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for RevNat {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for SockRevKey {}
    unsafe impl aya::Pod for SockRevValue {}
    unsafe impl aya::Pod for BackendAddr {}
    unsafe impl aya::Pod for Retired {}
    unsafe impl aya::Pod for ServiceCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 12);
        assert_eq!(size_of::<ServiceValue>(), 16);
        assert_eq!(size_of::<Backend>(), 8);
        assert_eq!(size_of::<RevNat>(), 8);
        assert_eq!(size_of::<CtKey>(), 16);
        assert_eq!(size_of::<CtEntry>(), 24);
        assert_eq!(size_of::<AffinityKey>(), 16);
        assert_eq!(size_of::<AffinityValue>(), 16);
        assert_eq!(size_of::<SockRevKey>(), 16);
        assert_eq!(size_of::<SockRevValue>(), 12);
        assert_eq!(size_of::<BackendAddr>(), 8);
        assert_eq!(size_of::<Retired>(), 16);
        assert_eq!(size_of::<ServiceCounters>(), 32);
    }

    #[test]
    fn drop_reasons_index_densely() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32);
        }
    }
}
