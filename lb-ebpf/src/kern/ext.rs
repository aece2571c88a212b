//! External traffic: NodePorts, ExternalIPs and LoadBalancer IPs reached through the node's
//! devices (TC ingress; the reverse translation of replies is the pod egress program, attached to
//! the external devices' egress too).
//!
//! - A backend on this node, or a service with externalTrafficPolicy Local: DNAT only, the client
//!   address is kept and the kernel delivers to the pod.
//! - A backend on another node: DNAT and SNAT to this node's address of the family on the
//!   device the kernel's FIB sends the flow out of ([`snat_slot_of`]), then out through the FIB
//!   (connected and routed next hops; no default route needed), since the kernel itself would
//!   drop a forwarded packet whose source is one of its own addresses.
//!   The backend's replies come back to this node and are translated back here.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect_neigh,
    },
    maps::{Array, HashMap, LpmTrie, lpm_trie::Key},
    programs::TcContext,
};
use lb_ebpf::{
    BACKEND_F_LOCAL, FLOW_REPLY, FlowKey, SCOPE_DEFAULT, SNAT_ATTEMPTS, SVC_F_EXTERNAL,
    SVC_F_LOCAL, SVC_F_SOURCE_RANGES, ServiceValue, SnatDevice, SnatValue, SourceRange,
    service_stats, stats,
};

use super::{
    conf,
    family::{V4, V6},
    flow::{self, Track},
    frame::Frame,
    lb::{self, Chosen},
    maps::{
        LB_NODE_ADDR_V4, LB_NODE_ADDR_V6, LB_SNAT_DEVICES, LB_SNAT_V4, LB_SNAT_V6,
        LB_SOURCE_RANGES_V4, LB_SOURCE_RANGES_V6, count, count_service, count_service_packet,
    },
    nat::{End, Rewrite},
    parse::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, Packet, Parsed, eth_proto, parse_v4, parse_v6},
    reject::{RejectFamily, reject},
    verdict,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `BPF_NOEXIST`: insert only if the key is not there.
const BPF_NOEXIST: u64 = 1;

/// Per-family pieces of the external path.
pub trait ExtFamily: RejectFamily {
    const AF: u8;
    /// The all-zero address.
    const UNSPECIFIED: Self::Addr;
    const PREFIX_BITS: u32;
    fn snat() -> &'static HashMap<FlowKey<Self::Addr>, SnatValue<Self::Addr>>;
    fn source_ranges() -> &'static LpmTrie<SourceRange<Self::Addr>, u8>;
    fn node_addr() -> &'static Array<Self::Addr>;
    /// The family's slot of a SNAT device entry.
    fn device_slot(device: &SnatDevice) -> u8;
    fn fill_fib(params: &mut bpf_fib_lookup, src: Self::Addr, dst: Self::Addr);
    fn is_unset(addr: &Self::Addr) -> bool;
    /// Parses a frame of this family; `None` for anything not translatable.
    fn parse<C: Frame>(ctx: &C) -> Result<Option<Packet<Self::Addr>>, i64>;
}

impl ExtFamily for V4 {
    const AF: u8 = AF_INET;
    const UNSPECIFIED: [u8; 4] = [0; 4];
    const PREFIX_BITS: u32 = 32;
    #[inline(always)]
    fn snat() -> &'static HashMap<FlowKey<[u8; 4]>, SnatValue<[u8; 4]>> {
        &LB_SNAT_V4
    }
    #[inline(always)]
    fn source_ranges() -> &'static LpmTrie<SourceRange<[u8; 4]>, u8> {
        &LB_SOURCE_RANGES_V4
    }
    #[inline(always)]
    fn node_addr() -> &'static Array<[u8; 4]> {
        &LB_NODE_ADDR_V4
    }
    #[inline(always)]
    fn device_slot(device: &SnatDevice) -> u8 {
        device.slot_v4
    }
    #[inline(always)]
    fn fill_fib(params: &mut bpf_fib_lookup, src: [u8; 4], dst: [u8; 4]) {
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    }
    #[inline(always)]
    fn is_unset(addr: &[u8; 4]) -> bool {
        *addr == [0; 4]
    }
    #[inline(always)]
    fn parse<C: Frame>(ctx: &C) -> Result<Option<Packet<[u8; 4]>>, i64> {
        match parse_v4(ctx, ETH_HLEN)? {
            Parsed::V4(pkt) => Ok(Some(pkt)),
            _ => Ok(None),
        }
    }
}

impl ExtFamily for V6 {
    const AF: u8 = AF_INET6;
    const UNSPECIFIED: [u8; 16] = [0; 16];
    const PREFIX_BITS: u32 = 128;
    #[inline(always)]
    fn snat() -> &'static HashMap<FlowKey<[u8; 16]>, SnatValue<[u8; 16]>> {
        &LB_SNAT_V6
    }
    #[inline(always)]
    fn source_ranges() -> &'static LpmTrie<SourceRange<[u8; 16]>, u8> {
        &LB_SOURCE_RANGES_V6
    }
    #[inline(always)]
    fn node_addr() -> &'static Array<[u8; 16]> {
        &LB_NODE_ADDR_V6
    }
    #[inline(always)]
    fn device_slot(device: &SnatDevice) -> u8 {
        device.slot_v6
    }
    #[inline(always)]
    fn fill_fib(params: &mut bpf_fib_lookup, src: [u8; 16], dst: [u8; 16]) {
        let mut i = 0;
        while i < 4 {
            let w = |a: &[u8; 16]| {
                u32::from_ne_bytes([a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]])
            };
            // SAFETY: writing plain integers into the union's IPv6 arm.
            unsafe {
                params.__bindgen_anon_3.ipv6_src[i] = w(&src);
                params.__bindgen_anon_4.ipv6_dst[i] = w(&dst);
            }
            i += 1;
        }
    }
    #[inline(always)]
    fn is_unset(addr: &[u8; 16]) -> bool {
        *addr == [0; 16]
    }
    #[inline(always)]
    fn parse<C: Frame>(ctx: &C) -> Result<Option<Packet<[u8; 16]>>, i64> {
        match parse_v6(ctx, ETH_HLEN)? {
            Parsed::V6(pkt) => Ok(Some(pkt)),
            _ => Ok(None),
        }
    }
}

/// TC ingress on an external device.
///
/// The work is split into BPF subprograms (`#[inline(never)]`), one per family and path, so that
/// no chain of stack frames exceeds the verifier's 512 bytes.
///
/// Subprograms return plain integers: the verifier refuses a returned pointer into the caller's
/// stack, which is how larger return values (`Result<i32, i64>`) would travel.
#[inline(always)]
pub fn ext_ingress(ctx: &TcContext) -> Result<i32, i64> {
    Ok(match eth_proto(ctx)? {
        ETH_P_IP => external::<V4>(ctx),
        ETH_P_IPV6 => external::<V6>(ctx),
        _ => TC_ACT_OK as i32,
    })
}

/// Returned by [`snat_reply`] for a packet that is not a reply of a SNATed flow.
pub const NOT_A_REPLY: i32 = i32::MIN;

#[inline(never)]
fn external<F: Track>(ctx: &TcContext) -> i32 {
    let mut pkt = empty_packet::<F>();
    if !parse_into::<F, _>(ctx, &mut pkt) {
        return TC_ACT_OK as i32;
    }
    match snat_reply::<F>(ctx, &pkt) {
        NOT_A_REPLY => verdict(ext_forward::<F>(ctx, &pkt)),
        verdict => verdict,
    }
}

/// A packet of family `F` with every field zero, for [`parse_into`] to fill.
#[inline(always)]
pub fn empty_packet<F: ExtFamily>() -> Packet<F::Addr> {
    Packet {
        saddr: F::UNSPECIFIED,
        daddr: F::UNSPECIFIED,
        sport: 0,
        dport: 0,
        proto: 0,
        tcp_flags: 0,
        l4_csum: 0,
        l3_off: 0,
        l4_off: 0,
    }
}

/// Parses a frame of family `F` into `out`; `false` for anything not translatable. A subprogram
/// of its own, so that the headers it copies out of the frame do not sit in the stack frame of
/// every later step.
#[inline(never)]
pub fn parse_into<F: ExtFamily, C: Frame>(ctx: &C, out: &mut Packet<F::Addr>) -> bool {
    match F::parse(ctx) {
        Ok(Some(pkt)) => {
            *out = pkt;
            true
        }
        _ => false,
    }
}

/// The addresses to restore on a reply of a flow SNATed to this node.
#[derive(Clone, Copy)]
pub struct SnatReply<A> {
    pub client: A,
    pub client_port: u16,
    pub service: A,
    pub service_port: u16,
    pub rev_nat_id: u16,
}

/// The SNAT entry of a backend on another node answering a flow SNATed to this node, if the
/// packet is such a reply of a live flow; refreshed ([`flow::snat_replied`]).
#[inline(always)]
pub fn snat_entry<F: Track>(pkt: &Packet<F::Addr>) -> Option<SnatReply<F::Addr>> {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let reply_key = lb::flow_key::<F>(pkt, FLOW_REPLY);
    let snat = F::snat().get_ptr_mut(&reply_key)?;
    // SAFETY: the map's pointer to this entry's value; see `flow::established` for concurrent
    // writers.
    let snat = unsafe { &mut *snat };
    if !flow::snat_replied::<F>(&reply_key, snat, pkt, now) {
        return None;
    }
    Some(SnatReply {
        client: snat.client_addr,
        client_port: snat.client_port,
        service: snat.service_addr,
        service_port: snat.service_port,
        rev_nat_id: snat.rev_nat_id,
    })
}

/// Rewrites a reply of a SNATed flow: from the service to the client.
#[inline(always)]
pub fn rewrite_reply<F: ExtFamily, C: Rewrite>(
    ctx: &C,
    pkt: &Packet<F::Addr>,
    reply: &SnatReply<F::Addr>,
) -> Result<(), i64> {
    ctx.rewrite_port(pkt, End::Source, reply.service_port)?;
    F::rewrite_addr(ctx, pkt, End::Source, reply.service)?;
    ctx.rewrite_port(pkt, End::Destination, reply.client_port)?;
    F::rewrite_addr(ctx, pkt, End::Destination, reply.client)
}

/// A backend on another node answering a flow SNATed to this node: [`NOT_A_REPLY`] when the
/// packet is not one.
#[inline(never)]
fn snat_reply<F: Track>(ctx: &TcContext, pkt: &Packet<F::Addr>) -> i32 {
    let Some(reply) = snat_entry::<F>(pkt) else {
        return NOT_A_REPLY;
    };
    if rewrite_reply::<F, _>(ctx, pkt, &reply).is_err() {
        // Half rewritten: sending it on would mistranslate.
        return TC_ACT_SHOT;
    }
    count(stats::REVERSED);
    count_service_packet(reply.rev_nat_id, ctx.len());
    redirect::<F>(ctx, pkt.proto, &reply.service, &reply.client)
}

/// Whether `frontend` admits `client`: no `loadBalancerSourceRanges`, or one of them holds it.
/// Checked for clients outside and inside the cluster alike, as kube-proxy does. A subprogram
/// of its own, for the callers' stack frames.
#[inline(never)]
pub fn source_allowed<F: ExtFamily>(frontend: &ServiceValue, client: &F::Addr) -> bool {
    if frontend.flags & SVC_F_SOURCE_RANGES == 0 {
        return true;
    }
    let key = Key::new(
        32 + F::PREFIX_BITS,
        SourceRange {
            rev_nat_id: frontend.rev_nat_id.to_be(),
            _pad: 0,
            addr: *client,
        },
    );
    F::source_ranges().get(&key).is_some()
}

/// What the external path does with a packet from outside.
pub enum Decision<A> {
    /// Not for a service served from outside: passed on untouched.
    Pass,
    /// Dropped by rule: outside the source ranges, no (local) endpoint, or no SNAT port.
    Drop,
    /// The service port has no endpoint anywhere: refused (a TCP reset, an ICMP port
    /// unreachable for UDP), as kube-proxy rejects; counted by whoever answers.
    Reject { rev_nat_id: u16 },
    /// To this backend; SNATed from `snat_port` (when it is not 0) of the node's SNAT address
    /// in `snat_slot` ([`snat_addr`]).
    Translate {
        backend: A,
        backend_port: u16,
        snat_port: u16,
        snat_slot: u8,
        rev_nat_id: u16,
    },
}

/// The decision for a packet from outside towards a service, shared by TC and XDP: the flow's
/// backend when it is established, else a new choice, recorded (with its SNAT entry) so that
/// every later packet of the flow, on either path, goes the same way. `ifindex`: the device
/// the packet came in on.
#[inline(always)]
pub fn decide<F: Track, C: EbpfContext>(
    ctx: &C,
    ifindex: u32,
    pkt: &Packet<F::Addr>,
) -> Decision<F::Addr> {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut hit = flow::Hit::empty(F::UNSPECIFIED);
    if flow::lookup::<F>(pkt, &mut hit, now) {
        return Decision::Translate {
            backend: hit.addr,
            backend_port: hit.port,
            snat_port: hit.snat_port,
            snat_slot: hit.snat_slot,
            rev_nat_id: hit.rev_nat_id,
        };
    }

    let Some(frontend) = lb::frontend::<F>(pkt.daddr, pkt.dport, pkt.proto) else {
        return Decision::Pass;
    };
    // ClusterIPs are not served from outside.
    if frontend.flags & SVC_F_EXTERNAL == 0 {
        return Decision::Pass;
    }
    if !source_allowed::<F>(&frontend, &pkt.saddr) {
        count(stats::SOURCE_RANGE_DROPPED);
        count_service(frontend.rev_nat_id, service_stats::DROPPED);
        return Decision::Drop;
    }
    if frontend.refuses() {
        return Decision::Reject {
            rev_nat_id: frontend.rev_nat_id,
        };
    }
    let Some(chosen) = lb::choose::<F>(pkt, &frontend, SCOPE_DEFAULT, now) else {
        // No endpoint (or, for Local, no local endpoint): drop rather than let the kernel
        // answer for a port it does not serve. The one count of this drop: not NO_BACKEND too.
        count(stats::NO_ENDPOINT_DROPPED);
        count_service(frontend.rev_nat_id, service_stats::DROPPED);
        return Decision::Drop;
    };
    let local = frontend.flags & SVC_F_LOCAL != 0 || chosen.backend.flags & BACKEND_F_LOCAL != 0;
    let mut snat_slot = 0;
    let mut snat_port = 0;
    if !local {
        snat_slot = snat_slot_of::<F>(ctx.as_ptr(), ifindex, pkt.proto, &chosen.backend.addr);
        match snat_port_of::<F>(pkt, &chosen, snat_slot, now) {
            Some(port) => snat_port = port,
            // Counted as `SNAT_NO_PORT`, or as `SNAT_FAILED` without a node address.
            None => {
                count_service(frontend.rev_nat_id, service_stats::DROPPED);
                return Decision::Drop;
            }
        }
    }
    lb::record_flow::<F>(pkt, &chosen, snat_port, snat_slot, now);
    count_service(chosen.rev_nat_id, service_stats::NEW_FLOWS);
    Decision::Translate {
        backend: chosen.backend.addr,
        backend_port: chosen.backend.port,
        snat_port,
        snat_slot,
        rev_nat_id: chosen.rev_nat_id,
    }
}

/// The node's SNAT address in `slot` ([`lb_ebpf::FlowValue::snat_slot`]): slot 0 is the node's
/// default SNAT address of the family, the others are those of other devices. `None` when the
/// slot is empty.
#[inline(always)]
pub fn snat_addr<F: ExtFamily>(slot: u8) -> Option<F::Addr> {
    let mut addr = F::UNSPECIFIED;
    snat_addr_into::<F>(u32::from(slot), &mut addr).then_some(addr)
}

/// [`snat_addr`] in a subprogram, into `out`: inlined into the TC path, the IPv6 address test
/// crashes LLVM's BPF backend (post-RA pseudo instruction expansion, LLVM 22).
#[inline(never)]
fn snat_addr_into<F: ExtFamily>(slot: u32, out: &mut F::Addr) -> bool {
    match F::node_addr().get(slot) {
        Some(addr) if !F::is_unset(addr) => {
            *out = *addr;
            true
        }
        _ => false,
    }
}

/// The SNAT address slot of a new flow to `backend`: the one of the device the kernel's FIB
/// sends the flow out of ([`SnatDevice`], the agent's choice of that device's address), so that
/// the backend's node sees the address of the network the flow arrives from, as a routed
/// MASQUERADE would give it. Slot 0 (the node's default SNAT address) for a device without an
/// entry (the device of the default address has none), an empty slot, or no route. Looked up
/// once per flow: the flow keeps its slot. A subprogram of its own, for the 64-byte lookup
/// parameters.
#[inline(never)]
fn snat_slot_of<F: ExtFamily>(ctx: *mut c_void, ifindex: u32, proto: u8, backend: &F::Addr) -> u8 {
    let mut params = fib_params::<F>(ifindex, proto, &F::UNSPECIFIED, backend);
    // SAFETY: the helper reads and fills `params`, whose size is passed.
    let rc = unsafe {
        fib_lookup(
            ctx,
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    // An unresolved neighbour still names the device.
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) && rc != i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return 0;
    }
    // SAFETY: read-only look at a map value.
    let Some(device) = (unsafe { LB_SNAT_DEVICES.get(&params.ifindex) }) else {
        return 0;
    };
    let slot = F::device_slot(device);
    if snat_addr::<F>(slot).is_some() {
        slot
    } else {
        0
    }
}

/// Flows from outside towards a service.
#[inline(never)]
fn ext_forward<F: Track>(ctx: &TcContext, pkt: &Packet<F::Addr>) -> Result<i32, i64> {
    // SAFETY: the skb of a TC program.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    match decide::<F, _>(ctx, ifindex, pkt) {
        Decision::Pass => Ok(TC_ACT_OK as i32),
        Decision::Drop => Ok(TC_ACT_SHOT),
        Decision::Reject { rev_nat_id } => {
            count_service(rev_nat_id, service_stats::REFUSED);
            Ok(reject::<F>(ctx, pkt))
        }
        Decision::Translate {
            backend,
            backend_port,
            snat_port,
            snat_slot,
            rev_nat_id,
        } => {
            count_service_packet(rev_nat_id, ctx.len());
            translate::<F>(ctx, pkt, backend, backend_port, snat_port, snat_slot)
        }
    }
}

/// Finds a free source port of this node's address towards the backend and records the SNAT
/// entry the replies will find: ports of the configured range ([`conf::snat_ports`]), each try
/// a random one (ports tried in order from a random start cluster: with 80 % of the range in
/// use, 2 connections in 8 000 found no port in 64 tries; random tries fail with 0.8^64). A
/// port is free when no entry holds it or its entry's flow is dead
/// ([`flow::snat_in_use`]); entries are inserted with `BPF_NOEXIST`, so two CPUs never hand one
/// port to two flows. `None` (counted) when every port tried is in use.
#[inline(never)]
fn snat_port_of<F: Track>(
    pkt: &Packet<F::Addr>,
    chosen: &Chosen<F::Addr>,
    slot: u8,
    now: u64,
) -> Option<u16> {
    let Some(node) = snat_addr::<F>(slot) else {
        count(stats::SNAT_FAILED);
        return None;
    };
    let flags = flow::after(pkt, false, false, 0);
    let value = SnatValue {
        client_addr: pkt.saddr,
        service_addr: pkt.daddr,
        client_port: pkt.sport,
        service_port: pkt.dport,
        flags: flags & flow::MIRRORED,
        _pad: 0,
        rev_nat_id: chosen.rev_nat_id,
        expires_ns: now + flow::lifetime(pkt.proto, false, flags),
    };
    let (min, max) = conf::snat_ports();
    let span = max.saturating_sub(min).saturating_add(1);
    if span == 0 || max > 65_535 {
        // Unreachable with the agent's checks; a branch the compiler sees spares the division
        // its panic path, which the verifier would refuse.
        count(stats::SNAT_NO_PORT);
        return None;
    }
    let mut key = FlowKey {
        saddr: chosen.backend.addr,
        daddr: node,
        sport: chosen.backend.port,
        dport: 0,
        proto: pkt.proto,
        dir: FLOW_REPLY,
        _pad: [0; 2],
    };
    for _ in 0..SNAT_ATTEMPTS {
        // SAFETY: helper without arguments.
        let port = min + unsafe { bpf_get_prandom_u32() } % span;
        key.dport = (port as u16).to_be();
        if let Some(existing) = F::snat().get_ptr(&key) {
            // SAFETY: read-only look at a map value.
            if flow::snat_in_use::<F>(&key, unsafe { &*existing }, now) {
                continue;
            }
            // Its flow is dead: the port is free again. Another CPU may take it first; the
            // insert below then fails and the next port is tried.
            let _ = F::snat().remove(&key);
        }
        if F::snat().insert(&key, &value, BPF_NOEXIST).is_ok() {
            return Some(key.dport);
        }
    }
    count(stats::SNAT_NO_PORT);
    None
}

/// DNAT to the backend, SNAT when the flow is SNATed; packets of SNATed flows leave by FIB.
#[inline(always)]
fn translate<F: ExtFamily>(
    ctx: &TcContext,
    pkt: &Packet<F::Addr>,
    backend: F::Addr,
    backend_port: u16,
    snat_port: u16,
    snat_slot: u8,
) -> Result<i32, i64> {
    lb::dnat::<F, _>(ctx, pkt, backend, backend_port)?;
    if snat_port == 0 {
        return Ok(TC_ACT_OK as i32);
    }
    let Some(node) = snat_addr::<F>(snat_slot) else {
        count(stats::SNAT_FAILED);
        return Ok(TC_ACT_SHOT);
    };
    ctx.rewrite_port(pkt, End::Source, snat_port)?;
    F::rewrite_addr(ctx, pkt, End::Source, node)?;
    Ok(redirect::<F>(ctx, pkt.proto, &node, &backend))
}

/// FIB lookup parameters for a packet of `proto` from `src` to `dst` that came in on `ifindex`
/// (a forwarding lookup, as the kernel makes for a routed packet).
#[inline(always)]
pub fn fib_params<F: ExtFamily>(
    ifindex: u32,
    proto: u8,
    src: &F::Addr,
    dst: &F::Addr,
) -> bpf_fib_lookup {
    // SAFETY: an all-zero bpf_fib_lookup is a valid value.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = F::AF;
    params.l4_protocol = proto;
    params.ifindex = ifindex;
    F::fill_fib(&mut params, *src, *dst);
    params
}

/// Sends a rewritten packet out through the FIB: the kernel's routing table finds the device
/// and the neighbour layer the next hop's address.
#[inline(never)]
fn redirect<F: ExtFamily>(ctx: &TcContext, proto: u8, src: &F::Addr, dst: &F::Addr) -> i32 {
    // SAFETY: the skb of a TC program.
    let mut params = fib_params::<F>(unsafe { (*ctx.skb.skb).ingress_ifindex }, proto, src, dst);
    // SAFETY: the helper reads and fills `params`, whose size is passed.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) && rc != i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        count(stats::SNAT_FAILED);
        return TC_ACT_SHOT;
    }
    count(stats::REDIRECTED);
    // SAFETY: no neighbour parameters: the kernel resolves the next hop itself.
    unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}
