//! Socket-level load balancing for traffic the node itself sends (cgroup sock_addr hooks).
//!
//! `connect()` and unconnected `sendmsg()` to a service address are rewritten to a backend before
//! the kernel looks up a route, so no route to the service address (and no default route) is
//! needed: the failure of kube-proxy's iptables/nftables modes on nodes without an IPv6 default
//! route (kubernetes#123120). `recvmsg()` and `getpeername()` show the service address again.
//! Such a socket's packets carry the backend address on the wire, so the TC programs never see a
//! service address to translate a second time.

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval},
    maps::LruHashMap,
    programs::SockAddrContext,
};
use lb_ebpf::{
    PROTO_TCP, PROTO_UDP, SVC_F_SOURCE_RANGES, ServiceValue, SockAffinityKey, SockKey, SockValue,
    service_stats, stats,
};

use super::{
    affinity,
    ext::{self, ExtFamily},
    family::{V4, V6},
    lb::{Chosen, frontend, in_cluster, pick_backend},
    maps::{LB_SOCK_AFFINITY, LB_SOCK_REVNAT_V4, LB_SOCK_REVNAT_V6, count, count_service},
};

/// The node's network namespace (`bpf_get_netns_cookie`), where the agent runs; set by the
/// agent when it loads the programs.
#[unsafe(no_mangle)]
static HOST_NETNS_COOKIE: u64 = 0;

/// 1 with `--socket-lb-scope host`: socket-level load balancing only in the node's namespace;
/// 0 (the default): in every namespace of the cgroup. Sockets of other namespaces (pods) then
/// connect to the service address itself, which service meshes, KubeVirt and Kata expect to
/// see, and the TC programs translate their packets.
#[unsafe(no_mangle)]
static HOST_ONLY: u8 = 0;

/// Whether the socket of `ctx` is in the node's network namespace.
#[inline(always)]
fn in_host(ctx: &SockAddrContext) -> bool {
    // SAFETY: a read of the program's own read-only global.
    let host = unsafe { core::ptr::read_volatile(&HOST_NETNS_COOKIE) };
    // SAFETY: the helper takes the program's own context.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) == host }
}

/// Whether sockets of the namespace of `ctx` are translated here; `host` is [`in_host`].
#[inline(always)]
fn in_scope(host: bool) -> bool {
    // SAFETY: a read of the program's own read-only global.
    host || unsafe { core::ptr::read_volatile(&HOST_ONLY) } == 0
}

/// [`sources`]: translate the call (no `loadBalancerSourceRanges`, or the node is inside them).
const SOURCES_TRANSLATE: u32 = 0;
/// [`sources`]: refuse the call (the node is outside the ranges).
const SOURCES_REFUSE: u32 = 1;
/// [`sources`]: leave the call untranslated, to the TC programs.
const SOURCES_TO_TC: u32 = 2;

/// What `loadBalancerSourceRanges` say about a socket's call to `frontend`. A pod's socket is
/// left untranslated: its packets leave the pod with its own address, and the TC program on
/// the pod's device checks that address against the ranges, as for a pod outside the cgroup.
/// A node process is judged by the node's address of the family, as kube-proxy judges traffic
/// from the node (its `allowFromNode`). A subprogram of its own, for the caller's stack frame.
#[inline(never)]
fn sources<F: ExtFamily>(frontend: &ServiceValue, host: bool) -> u32 {
    if frontend.flags & SVC_F_SOURCE_RANGES == 0 {
        return SOURCES_TRANSLATE;
    }
    if !host {
        return SOURCES_TO_TC;
    }
    // No address of the family: judged as the unspecified address, which only a range of
    // everything holds.
    let node = F::node_addr().get(0).copied().unwrap_or(F::UNSPECIFIED);
    if ext::source_allowed::<F>(frontend, &node) {
        SOURCES_TRANSLATE
    } else {
        SOURCES_REFUSE
    }
}

/// What a sock_addr program returns to let the call proceed.
pub const ALLOW: i32 = 1;
/// What it returns to fail the call, with the error set by `bpf_set_retval`.
const DENY: i32 = 0;
/// `ECONNREFUSED` and `EPERM` (`asm-generic/errno.h`).
const ECONNREFUSED: i32 = 111;
const EPERM: i32 = 1;

/// Per-family access to the address in a `bpf_sock_addr` and to the socket reverse map.
pub trait SockFamily: ExtFamily {
    type Key: Copy + 'static;
    fn user_addr(sa: &bpf_sock_addr) -> Self::Addr;
    fn set_user_addr(sa: &mut bpf_sock_addr, addr: Self::Addr);
    fn key(cookie: u64, addr: Self::Addr, port: u16) -> Self::Key;
    fn revnat() -> &'static LruHashMap<Self::Key, SockValue<Self::Addr>>;
}

impl SockFamily for V4 {
    type Key = lb_ebpf::Sock4Key;

    #[inline(always)]
    fn user_addr(sa: &bpf_sock_addr) -> [u8; 4] {
        sa.user_ip4.to_ne_bytes()
    }
    #[inline(always)]
    fn set_user_addr(sa: &mut bpf_sock_addr, addr: [u8; 4]) {
        sa.user_ip4 = u32::from_ne_bytes(addr);
    }
    #[inline(always)]
    fn key(cookie: u64, addr: [u8; 4], port: u16) -> Self::Key {
        SockKey {
            cookie,
            addr,
            port,
            _pad: [0; 2],
        }
    }
    #[inline(always)]
    fn revnat() -> &'static LruHashMap<Self::Key, SockValue<[u8; 4]>> {
        &LB_SOCK_REVNAT_V4
    }
}

impl SockFamily for V6 {
    type Key = lb_ebpf::Sock6Key;

    #[inline(always)]
    fn user_addr(sa: &bpf_sock_addr) -> [u8; 16] {
        // The verifier only allows 4-byte accesses to user_ip6, one word at a time.
        let mut out = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            // SAFETY: reading a field of the context the program was given.
            let word = unsafe { core::ptr::read_volatile(&sa.user_ip6[i]) }.to_ne_bytes();
            out[i * 4..i * 4 + 4].copy_from_slice(&word);
            i += 1;
        }
        out
    }
    #[inline(always)]
    fn set_user_addr(sa: &mut bpf_sock_addr, addr: [u8; 16]) {
        let mut i = 0;
        while i < 4 {
            let word = u32::from_ne_bytes([
                addr[i * 4],
                addr[i * 4 + 1],
                addr[i * 4 + 2],
                addr[i * 4 + 3],
            ]);
            // SAFETY: writing a field of the context the program was given.
            unsafe { core::ptr::write_volatile(&mut sa.user_ip6[i], word) };
            i += 1;
        }
    }
    #[inline(always)]
    fn key(cookie: u64, addr: [u8; 16], port: u16) -> Self::Key {
        SockKey {
            cookie,
            addr,
            port,
            _pad: [0; 6],
        }
    }
    #[inline(always)]
    fn revnat() -> &'static LruHashMap<Self::Key, SockValue<[u8; 16]>> {
        &LB_SOCK_REVNAT_V6
    }
}

/// Spreads sockets over slots: sequential cookies mixed so neighbours land apart. One socket
/// keeps its backend for every datagram while the backends stay the same.
#[inline(always)]
fn pick_for(cookie: u64) -> u32 {
    (cookie.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32
}

/// The IPv4 address in an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, RFC 4291 2.5.5.2).
#[inline(always)]
fn v4_mapped(addr: &[u8; 16]) -> Option<[u8; 4]> {
    let prefix = [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    if addr[..12] == prefix {
        Some([addr[12], addr[13], addr[14], addr[15]])
    } else {
        None
    }
}

/// `::ffff:a.b.c.d`.
#[inline(always)]
fn to_v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// How the address of a `bpf_sock_addr` maps to a service family `L`: read it as an `L`
/// address, and write an `L` address back.
trait SockAddrView<L: SockFamily> {
    fn get(sa: &bpf_sock_addr) -> Option<L::Addr>;
    fn set(sa: &mut bpf_sock_addr, addr: L::Addr);
}

/// The socket's own family.
struct Native;

impl<F: SockFamily> SockAddrView<F> for Native {
    #[inline(always)]
    fn get(sa: &bpf_sock_addr) -> Option<F::Addr> {
        Some(F::user_addr(sa))
    }
    #[inline(always)]
    fn set(sa: &mut bpf_sock_addr, addr: F::Addr) {
        F::set_user_addr(sa, addr);
    }
}

/// An IPv6 socket talking IPv4 through IPv4-mapped addresses: a dual-stack socket (no
/// `IPV6_V6ONLY`, as Java and many runtimes open by default) connecting to `::ffff:10.96.0.10`.
/// The kernel sends IPv4 for it without running the IPv4 hooks, so the IPv6 hooks translate
/// with the IPv4 services.
struct Mapped;

impl SockAddrView<V4> for Mapped {
    #[inline(always)]
    fn get(sa: &bpf_sock_addr) -> Option<[u8; 4]> {
        v4_mapped(&V6::user_addr(sa))
    }
    #[inline(always)]
    fn set(sa: &mut bpf_sock_addr, addr: [u8; 4]) {
        V6::set_user_addr(sa, to_v4_mapped(addr));
    }
}

/// `connect()` of TCP and UDP sockets and unconnected UDP `sendmsg()`, IPv4 hooks.
#[inline(always)]
pub fn translate4(ctx: &SockAddrContext) -> i32 {
    translate::<V4, Native>(ctx)
}

/// The same, IPv6 hooks: IPv6 services, and IPv4 ones through IPv4-mapped addresses.
#[inline(always)]
pub fn translate6(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel hands the program a valid context for its whole run.
    let sa = unsafe { &*ctx.sock_addr };
    if v4_mapped(&V6::user_addr(sa)).is_some() {
        translate::<V4, Mapped>(ctx)
    } else {
        translate::<V6, Native>(ctx)
    }
}

/// `recvmsg()` and `getpeername()`, IPv4 hooks.
#[inline(always)]
pub fn reverse4(ctx: &SockAddrContext) -> i32 {
    reverse::<V4, Native>(ctx)
}

/// The same, IPv6 hooks, IPv4-mapped addresses included.
#[inline(always)]
pub fn reverse6(ctx: &SockAddrContext) -> i32 {
    // SAFETY: see `translate6`.
    let sa = unsafe { &*ctx.sock_addr };
    if v4_mapped(&V6::user_addr(sa)).is_some() {
        reverse::<V4, Mapped>(ctx)
    } else {
        reverse::<V6, Native>(ctx)
    }
}

#[inline(always)]
fn translate<F: SockFamily, View: SockAddrView<F>>(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel hands the program a valid context for its whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = match sa.protocol {
        p if p == u32::from(PROTO_TCP) => PROTO_TCP,
        p if p == u32::from(PROTO_UDP) => PROTO_UDP,
        _ => return ALLOW,
    };
    let Some(addr) = View::get(sa) else {
        return ALLOW;
    };
    let host = in_host(ctx);
    if !in_scope(host) {
        return ALLOW;
    }
    let port = sa.user_port as u16;
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(frontend) = frontend::<F>(addr, port, proto) else {
        return ALLOW;
    };
    // The node's processes are in-cluster clients of external frontends too.
    let (frontend, scope) = in_cluster::<F>(addr, port, proto, frontend);
    match sources::<F>(&frontend, host) {
        SOURCES_TRANSLATE => {}
        SOURCES_REFUSE => {
            // Dropped by kube-proxy's rules, so the call would time out; failing it at once
            // says why ("operation not permitted").
            count(stats::SOURCE_RANGE_DROPPED);
            count_service(frontend.rev_nat_id, service_stats::DROPPED);
            // SAFETY: plain helper call, as below.
            unsafe { bpf_set_retval(-EPERM) };
            return DENY;
        }
        _ => return ALLOW,
    }
    if frontend.refuses() {
        // No endpoint anywhere: the call fails at once with "connection refused", as kube-proxy's
        // REJECT rules make the kernel answer (a reset for a SYN, an ICMP port unreachable for a
        // datagram). TCP and UDP `connect()` return ECONNREFUSED; so do unconnected UDP
        // `sendmsg()`/`sendto()`: `udp_sendmsg` and `udpv6_sendmsg` return the hook's error as
        // is, and `bpf_set_retval` replaces the EPERM a denying sock_addr program would cause
        // ("bpf: Add cgroup helpers bpf_{get,set}_retval to get/set syscall return value",
        // Linux 5.18).
        // Where a UDP socket was connected while the service still had endpoints, its datagrams
        // go to that backend and are never seen here. No packet leaves, so no TC program counts
        // it: counted here.
        count(stats::REJECTED);
        count_service(frontend.rev_nat_id, service_stats::REFUSED);
        // SAFETY: plain helper call; the kernel returns the value to the caller of connect() or
        // sendmsg().
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return DENY;
    }
    let Some(Chosen {
        rev_nat_id,
        backend,
        ..
    }) = choose::<F>(ctx, addr, port, proto, &frontend, scope, cookie)
    else {
        count(stats::NO_BACKEND);
        return ALLOW;
    };
    let value = SockValue {
        addr,
        port,
        rev_nat_id,
    };
    // Without the reverse entry, getpeername()/recvmsg() would show the backend: better not to
    // translate at all then, and leave the packet to the TC programs.
    if F::revnat()
        .insert(&F::key(cookie, backend.addr, backend.port), &value, 0)
        .is_err()
    {
        return ALLOW;
    }
    View::set(sa, backend.addr);
    sa.user_port = u32::from(backend.port);
    count_service(rev_nat_id, service_stats::NEW_FLOWS);
    ALLOW
}

/// The backend for a socket: the one session affinity keeps for the socket's network namespace,
/// else the socket's own pick (then remembered when the frontend has affinity).
#[inline(always)]
fn choose<F: SockFamily>(
    ctx: &SockAddrContext,
    addr: F::Addr,
    port: u16,
    proto: u8,
    frontend: &ServiceValue,
    scope: u8,
    cookie: u64,
) -> Option<Chosen<F::Addr>> {
    if frontend.affinity_timeout_ns().is_none() {
        return pick_backend::<F>(addr, port, proto, frontend, scope, pick_for(cookie));
    }
    // SAFETY: helpers taking the program's own context, or none.
    let (netns_cookie, now) = unsafe { (bpf_get_netns_cookie(ctx.as_ptr()), bpf_ktime_get_ns()) };
    let key = SockAffinityKey {
        netns_cookie,
        rev_nat_id: frontend.rev_nat_id,
        family: F::NUMBER,
        _pad: [0; 5],
    };
    let chosen = match affinity::remembered::<F, _>(&LB_SOCK_AFFINITY, &key, frontend, now) {
        Some(chosen) => chosen,
        None => pick_backend::<F>(addr, port, proto, frontend, scope, pick_for(cookie))?,
    };
    affinity::remember(&LB_SOCK_AFFINITY, &key, frontend, chosen.backend_id, now);
    Some(chosen)
}

/// A backend address this socket was sent to reads as the service address.
#[inline(always)]
fn reverse<F: SockFamily, View: SockAddrView<F>>(ctx: &SockAddrContext) -> i32 {
    // SAFETY: see `translate`.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(addr) = View::get(sa) else {
        return ALLOW;
    };
    // SAFETY: see `translate`.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = F::key(cookie, addr, sa.user_port as u16);
    // SAFETY: read-only copy of a map value.
    if let Some(service) = unsafe { F::revnat().get(&key) }.copied() {
        View::set(sa, service.addr);
        sa.user_port = u32::from(service.port);
    }
    ALLOW
}
