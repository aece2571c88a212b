//! Kernel programs of the load balancer. Built for `bpfel-unknown-none` by the agent's build
//! script; on the host this binary is an empty stub so that `cargo check --workspace` works.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod kern;

#[cfg(target_arch = "bpf")]
mod entry {
    use aya_ebpf::{macros::classifier, programs::TcContext};

    use crate::kern::{lb, verdict};

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
