//! Keel's eBPF datapath: one object holding every program and map.
//!
//! - `sock`: cgroup sock_addr hooks (connect4, sendmsg4, recvmsg4, getpeername4), east-west
//!   load balancing at the socket layer.
//! - `tc`: per-packet load balancing with conntrack (pod veths and node devices).
//! - `lb`: frontend lookup and backend selection; `ct`: conntrack; `packet`: parsing and
//!   checksummed rewrites; `reject`: TCP RST / ICMP port unreachable; `maps`: every map.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod ct;
#[cfg(target_arch = "bpf")]
mod lb;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod reject;
#[cfg(target_arch = "bpf")]
mod sock;
#[cfg(target_arch = "bpf")]
mod tc;

#[cfg(target_arch = "bpf")]
mod entry {
    use aya_ebpf::{
        macros::{cgroup_sock_addr, classifier},
        programs::{SockAddrContext, TcContext},
    };

    #[cgroup_sock_addr(connect4)]
    pub fn keel_connect4(ctx: SockAddrContext) -> i32 {
        crate::sock::translate_destination(&ctx)
    }

    #[cgroup_sock_addr(sendmsg4)]
    pub fn keel_sendmsg4(ctx: SockAddrContext) -> i32 {
        crate::sock::translate_destination(&ctx)
    }

    #[cgroup_sock_addr(recvmsg4)]
    pub fn keel_recvmsg4(ctx: SockAddrContext) -> i32 {
        crate::sock::restore_peer(&ctx)
    }

    #[cgroup_sock_addr(getpeername4)]
    pub fn keel_getpeername4(ctx: SockAddrContext) -> i32 {
        crate::sock::restore_peer(&ctx)
    }

    /// tc ingress on the host side of a pod's veth: traffic leaving the pod.
    #[classifier]
    pub fn keel_from_pod(ctx: TcContext) -> i32 {
        crate::tc::handle(&ctx)
    }

    /// tc ingress on a node's external device: NodePort and external-IP traffic from outside.
    #[classifier]
    pub fn keel_from_netdev(ctx: TcContext) -> i32 {
        crate::tc::handle(&ctx)
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

/// On the host this crate builds to nothing useful: `cargo xtask build-ebpf` builds it for BPF.
#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("keel-ebpf is built for the BPF target: run `cargo xtask build-ebpf`");
}
