//! The programs' settings: read-only globals the agent sets when it loads the object
//! (`lb_ebpf::global_names`), read with `read_volatile` so the compiler never folds the defaults
//! in.

use lb_ebpf::{
    DEFAULT_SNAT_PORT_MAX, DEFAULT_SNAT_PORT_MIN, FLOW_TCP_CLOSE_NS, FLOW_TCP_LIFETIME_NS,
    FLOW_TCP_SYN_NS, FLOW_UDP_LIFETIME_NS, FLOW_UDP_NEW_NS,
};

#[unsafe(no_mangle)]
static LB_TCP_ESTABLISHED_NS: u64 = FLOW_TCP_LIFETIME_NS;
#[unsafe(no_mangle)]
static LB_TCP_SYN_NS: u64 = FLOW_TCP_SYN_NS;
#[unsafe(no_mangle)]
static LB_TCP_CLOSE_NS: u64 = FLOW_TCP_CLOSE_NS;
#[unsafe(no_mangle)]
static LB_UDP_NS: u64 = FLOW_UDP_LIFETIME_NS;
#[unsafe(no_mangle)]
static LB_UDP_NEW_NS: u64 = FLOW_UDP_NEW_NS;
#[unsafe(no_mangle)]
static LB_SNAT_PORT_MIN: u32 = DEFAULT_SNAT_PORT_MIN as u32;
#[unsafe(no_mangle)]
static LB_SNAT_PORT_MAX: u32 = DEFAULT_SNAT_PORT_MAX as u32;

#[unsafe(no_mangle)]
static LB_SERVICE_COUNTERS: u8 = lb_ebpf::service_stats::LEVEL_FLOWS;

#[inline(always)]
fn read<T: Copy>(global: &T) -> T {
    // SAFETY: a read of one of the program's own read-only globals.
    unsafe { core::ptr::read_volatile(global) }
}

#[inline(always)]
pub fn tcp_established_ns() -> u64 {
    read(&LB_TCP_ESTABLISHED_NS)
}
#[inline(always)]
pub fn tcp_syn_ns() -> u64 {
    read(&LB_TCP_SYN_NS)
}
#[inline(always)]
pub fn tcp_close_ns() -> u64 {
    read(&LB_TCP_CLOSE_NS)
}
#[inline(always)]
pub fn udp_ns() -> u64 {
    read(&LB_UDP_NS)
}
#[inline(always)]
pub fn udp_new_ns() -> u64 {
    read(&LB_UDP_NEW_NS)
}
/// What the per-frontend traffic counters count (`lb_ebpf::service_stats::LEVEL_*`).
#[inline(always)]
pub fn service_counters() -> u8 {
    read(&LB_SERVICE_COUNTERS)
}
/// The SNAT port range, inclusive, host byte order.
#[inline(always)]
pub fn snat_ports() -> (u32, u32) {
    (read(&LB_SNAT_PORT_MIN), read(&LB_SNAT_PORT_MAX))
}
