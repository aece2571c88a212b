//! Socket-level load balancing for traffic the node itself sends (cgroup sock_addr hooks).
//!
//! `connect()` and unconnected `sendmsg()` to a service address are rewritten to a backend before
//! the kernel looks up a route, so no route to the service address (and no default route) is
//! needed: the failure of kube-proxy's iptables/nftables modes on nodes without an IPv6 default
//! route (kubernetes#123120). `recvmsg()` and `getpeername()` show the service address again.
//! Such a socket's packets carry the backend address on the wire, so the TC programs never see a
//! service address to translate a second time.

use aya_ebpf::{
    EbpfContext, bindings::bpf_sock_addr, helpers::bpf_get_socket_cookie, maps::LruHashMap,
    programs::SockAddrContext,
};
use lb_ebpf::{PROTO_TCP, PROTO_UDP, SockKey, SockValue};

use super::{
    family::{Family, V4, V6},
    lb::{Chosen, choose_backend},
    maps::{LB_SOCK_REVNAT_V4, LB_SOCK_REVNAT_V6},
};

/// What a sock_addr program returns to let the call proceed. The programs never refuse a call.
pub const ALLOW: i32 = 1;

/// Per-family access to the address in a `bpf_sock_addr` and to the socket reverse map.
pub trait SockFamily: Family {
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

/// `connect()` of TCP and UDP sockets and unconnected UDP `sendmsg()`.
#[inline(always)]
pub fn translate<F: SockFamily>(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel hands the program a valid context for its whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = match sa.protocol {
        p if p == u32::from(PROTO_TCP) => PROTO_TCP,
        p if p == u32::from(PROTO_UDP) => PROTO_UDP,
        _ => return ALLOW,
    };
    let (addr, port) = (F::user_addr(sa), sa.user_port as u16);
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(Chosen {
        rev_nat_id,
        backend,
        ..
    }) = choose_backend::<F>(addr, port, proto, pick_for(cookie))
    else {
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
    F::set_user_addr(sa, backend.addr);
    sa.user_port = u32::from(backend.port);
    ALLOW
}

/// `recvmsg()` and `getpeername()`: a backend address this socket was sent to reads as the
/// service address.
#[inline(always)]
pub fn reverse<F: SockFamily>(ctx: &SockAddrContext) -> i32 {
    // SAFETY: see `translate`.
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: see `translate`.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = F::key(cookie, F::user_addr(sa), sa.user_port as u16);
    // SAFETY: read-only copy of a map value.
    if let Some(service) = unsafe { F::revnat().get(&key) }.copied() {
        F::set_user_addr(sa, service.addr);
        sa.user_port = u32::from(service.port);
    }
    ALLOW
}
