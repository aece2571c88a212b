//! Kernel programs of the load balancer. Built for `bpfel-unknown-none` by the agent's build
//! script; on the host this binary is an empty stub so that `cargo check --workspace` works.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod kern;

#[cfg(target_arch = "bpf")]
mod entry {
    use aya_ebpf::{
        macros::{cgroup_sock_addr, classifier, xdp},
        programs::{SockAddrContext, TcContext, XdpContext},
    };

    use crate::kern::{
        ext, lb,
        sock::{reverse4, reverse6, translate4, translate6},
        verdict, xdp as xdp_path,
    };

    /// TC ingress on a pod-facing device: packets leaving a pod. Translates service addresses to
    /// backends (DNAT).
    #[classifier]
    pub fn lb_tc_pod_ingress(ctx: TcContext) -> i32 {
        verdict(lb::pod_ingress(&ctx))
    }

    /// TC egress on a pod-facing device: packets entering a pod. Restores the service address as
    /// the source of replies (reverse NAT).
    #[classifier]
    pub fn lb_tc_pod_egress(ctx: TcContext) -> i32 {
        verdict(lb::pod_egress(&ctx))
    }

    /// TC ingress on an external device: NodePort, ExternalIP and LoadBalancer traffic. Replies
    /// are translated back by `lb_tc_pod_egress` attached to the same device's egress.
    #[classifier]
    pub fn lb_tc_ext_ingress(ctx: TcContext) -> i32 {
        verdict(ext::ext_ingress(&ctx))
    }

    /// XDP on an external device: the fast path for the same traffic as `lb_tc_ext_ingress`,
    /// which finishes whatever XDP leaves to it.
    #[xdp]
    pub fn lb_xdp_ext(ctx: XdpContext) -> u32 {
        xdp_path::ext(&ctx)
    }

    /// Node-originated traffic: `connect()` to a service address goes straight to a backend.
    #[cgroup_sock_addr(connect4)]
    pub fn lb_sock_connect4(ctx: SockAddrContext) -> i32 {
        translate4(&ctx)
    }

    #[cgroup_sock_addr(connect6)]
    pub fn lb_sock_connect6(ctx: SockAddrContext) -> i32 {
        translate6(&ctx)
    }

    /// Unconnected UDP datagrams to a service address go to a backend.
    #[cgroup_sock_addr(sendmsg4)]
    pub fn lb_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
        translate4(&ctx)
    }

    #[cgroup_sock_addr(sendmsg6)]
    pub fn lb_sock_sendmsg6(ctx: SockAddrContext) -> i32 {
        translate6(&ctx)
    }

    /// UDP answers from a backend read as coming from the service address.
    #[cgroup_sock_addr(recvmsg4)]
    pub fn lb_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
        reverse4(&ctx)
    }

    #[cgroup_sock_addr(recvmsg6)]
    pub fn lb_sock_recvmsg6(ctx: SockAddrContext) -> i32 {
        reverse6(&ctx)
    }

    /// A translated socket's peer reads as the service address.
    #[cgroup_sock_addr(getpeername4)]
    pub fn lb_sock_getpeername4(ctx: SockAddrContext) -> i32 {
        reverse4(&ctx)
    }

    #[cgroup_sock_addr(getpeername6)]
    pub fn lb_sock_getpeername6(ctx: SockAddrContext) -> i32 {
        reverse6(&ctx)
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual BSD/GPL\0";

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // The verifier rejects any program that could reach this.
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
