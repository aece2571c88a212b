//! Hairpin: a pod that connects to a service and is chosen as its own backend. Its packet,
//! translated to its own address, would reach it from its own address, which its stack drops
//! (a martian source). So the source becomes the family's hairpin address ([`HairpinFamily`],
//! Cilium's loopback trick), the pod answers that address through its default route, and
//! the answer comes back through the same program, which restores the service address. Both
//! directions go straight back out of the device they came in on (`bpf_redirect` to its
//! egress, Ethernet addresses swapped): no routing, so no reverse-path filter sees the hairpin
//! address.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_SHOT},
    helpers::bpf_redirect,
    programs::TcContext,
};
use lb_ebpf::{FLOW_F_HAIRPIN, FLOW_FORWARD, FLOW_REPLY, FlowKey, stats};

use super::{
    family::{Family, FlowEntry, V4, V6},
    flow::{self, Track},
    lb::{Chosen, flow_key},
    maps::count,
    nat::{End, Rewrite as _},
    parse::Packet,
};

/// Length of an Ethernet address.
const ETH_ALEN: usize = 6;

/// The source address a pod sees on a hairpinned connection.
pub trait HairpinFamily: Family {
    const HAIRPIN: Self::Addr;
}

impl HairpinFamily for V4 {
    /// Cilium's IPv4 loopback for the same purpose (link-local, never on a wire).
    const HAIRPIN: [u8; 4] = lb_ebpf::HAIRPIN_V4;
}

impl HairpinFamily for V6 {
    /// `100::42`, in the discard-only prefix 100::/64 (RFC 6666): never routed anywhere.
    const HAIRPIN: [u8; 16] = lb_ebpf::HAIRPIN_V6;
}

/// A new flow whose chosen backend is its own client: records it both ways and sends the
/// packet back to the pod from the hairpin address.
#[inline(always)]
pub fn start<F: HairpinFamily>(
    ctx: &TcContext,
    pkt: &Packet<F::Addr>,
    chosen: &Chosen<F::Addr>,
    now: u64,
) -> Result<i32, i64> {
    if !record::<F>(pkt, chosen, now) {
        // Without both entries the answer could not be turned back: better no connection.
        count(stats::FLOW_UPDATE_FAILED);
        return Ok(TC_ACT_SHOT);
    }
    count(stats::NEW_FLOWS);
    Ok(forward::<F>(
        ctx,
        pkt,
        &chosen.backend.addr,
        chosen.backend.port,
    ))
}

/// Records both directions of a hairpin flow; the reply entry first, as a reply can only exist
/// once the forward packet has left.
#[inline(always)]
fn record<F: HairpinFamily>(pkt: &Packet<F::Addr>, chosen: &Chosen<F::Addr>, now: u64) -> bool {
    record_reply::<F>(pkt, chosen, now) && record_forward::<F>(pkt, chosen, now)
}

/// The reply entry: the pod's answers to the hairpin address come from the service address.
/// Each entry is written by a subprogram of its own, for the stack: the pod program's frame and
/// both entries' keys and values do not fit in 512 bytes together.
#[inline(never)]
fn record_reply<F: HairpinFamily>(
    pkt: &Packet<F::Addr>,
    chosen: &Chosen<F::Addr>,
    now: u64,
) -> bool {
    let key = FlowKey {
        saddr: chosen.backend.addr,
        daddr: F::HAIRPIN,
        sport: chosen.backend.port,
        dport: pkt.sport,
        proto: pkt.proto,
        dir: FLOW_REPLY,
        _pad: [0; 2],
    };
    let value = F::Flow::new(
        pkt.daddr,
        pkt.dport,
        chosen.rev_nat_id,
        chosen.backend_id,
        now + flow::lifetime(pkt.proto, false, 0),
    );
    F::new_flows().insert(&key, &value, 0).is_ok()
}

/// The forward entry, marked as a hairpin flow.
#[inline(never)]
fn record_forward<F: HairpinFamily>(
    pkt: &Packet<F::Addr>,
    chosen: &Chosen<F::Addr>,
    now: u64,
) -> bool {
    let flags = flow::after(pkt, false, false, FLOW_F_HAIRPIN);
    let mut value = F::Flow::new(
        chosen.backend.addr,
        chosen.backend.port,
        chosen.rev_nat_id,
        chosen.backend_id,
        now + flow::lifetime(pkt.proto, false, flags),
    );
    value.set_flags(flags);
    F::new_flows()
        .insert(&flow_key::<F>(pkt, FLOW_FORWARD), &value, 0)
        .is_ok()
}

/// A packet of an established hairpin flow, from the pod to the service: to the pod itself,
/// from the hairpin address. A subprogram with a plain integer result, as [`rewrite`].
#[inline(never)]
pub fn forward<F: HairpinFamily>(
    ctx: &TcContext,
    pkt: &Packet<F::Addr>,
    backend: &F::Addr,
    backend_port: u16,
) -> i32 {
    if !rewrite::<F>(ctx, pkt, End::Destination, backend, backend_port)
        || !rewrite_addr::<F>(ctx, pkt, End::Source, &F::HAIRPIN)
    {
        // Half rewritten: sending it on would mistranslate.
        return TC_ACT_SHOT;
    }
    count(stats::TRANSLATED);
    back_out(ctx).unwrap_or(TC_ACT_SHOT)
}

/// Rewrites one end's address and port; `false` when a helper failed. Subprograms of their
/// own, for the stack (see [`record`]); they return a plain integer, as BPF calls take at
/// most five argument registers and a `Result` would need a sixth for its return slot.
#[inline(never)]
fn rewrite<F: Family>(
    ctx: &TcContext,
    pkt: &Packet<F::Addr>,
    end: End,
    addr: &F::Addr,
    port: u16,
) -> bool {
    ctx.rewrite_port(pkt, end, port).is_ok() && F::rewrite_addr(ctx, pkt, end, *addr).is_ok()
}

/// Rewrites one end's address; `false` when a helper failed.
#[inline(never)]
fn rewrite_addr<F: Family>(
    ctx: &TcContext,
    pkt: &Packet<F::Addr>,
    end: End,
    addr: &F::Addr,
) -> bool {
    F::rewrite_addr(ctx, pkt, end, *addr).is_ok()
}

/// The pod's answer to the hairpin address, if this packet is one: from the service address,
/// back to the pod. `None` when the packet is not a hairpin answer.
#[inline(always)]
pub fn answer<F: Track>(ctx: &TcContext, pkt: &Packet<F::Addr>, now: u64) -> Option<i32> {
    match turn_back::<F>(ctx, pkt, now) {
        NOT_AN_ANSWER => None,
        action => Some(action),
    }
}

/// What [`turn_back`] returns for a packet to the hairpin address that answers no flow.
const NOT_AN_ANSWER: i32 = -1;

/// [`answer`]'s work, a subprogram of its own so that the pod program's frame stays small; a
/// plain integer result, as [`rewrite`]'s.
#[inline(never)]
fn turn_back<F: Track>(ctx: &TcContext, pkt: &Packet<F::Addr>, now: u64) -> i32 {
    if pkt.daddr != F::HAIRPIN {
        return NOT_AN_ANSWER;
    }
    let Some((service, service_port)) = answered::<F>(pkt, now) else {
        return NOT_AN_ANSWER;
    };
    let client = pkt.saddr;
    let rewritten = rewrite::<F>(ctx, pkt, End::Source, &service, service_port)
        && rewrite_addr::<F>(ctx, pkt, End::Destination, &client);
    if !rewritten {
        // Half rewritten: sending it on would mistranslate.
        return TC_ACT_SHOT;
    }
    count(stats::REVERSED);
    back_out(ctx).unwrap_or(TC_ACT_SHOT)
}

/// The service address and port of the hairpin flow `pkt` answers, its entry refreshed
/// ([`flow::reply`]).
#[inline(always)]
fn answered<F: Track>(pkt: &Packet<F::Addr>, now: u64) -> Option<(F::Addr, u16)> {
    let mut hit = flow::Hit::empty(F::HAIRPIN);
    flow::reply::<F>(pkt, &mut hit, now).then_some((hit.addr, hit.port))
}

/// Sends the packet back into the pod it came from: the device's egress, Ethernet addresses
/// swapped (the frame came from the pod to the node's side).
#[inline(always)]
fn back_out(ctx: &TcContext) -> Result<i32, i64> {
    let macs: [[u8; ETH_ALEN]; 2] = ctx.load(0)?;
    ctx.store(0, &[macs[1], macs[0]], 0)?;
    count(stats::REDIRECTED);
    // SAFETY: the skb of a TC program; redirecting to its own device's egress.
    let ifindex = unsafe { (*(ctx.skb.skb as *const __sk_buff)).ifindex };
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}
