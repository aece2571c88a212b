//! XDP fast path for external traffic: NodePorts, ExternalIPs and LoadBalancer IPs, handled in
//! the driver before the kernel allocates an skb.
//!
//! The decisions are the TC path's (`ext::decide`, the same maps), so a flow may move between the
//! two paths at any packet and still go to the same backend. XDP finishes what it can on its own:
//! - a backend on this node (or traffic policy Local): DNAT, then `XDP_PASS` to the kernel,
//!   which routes the packet to the pod;
//! - a backend on another node, and the replies coming back from it: the kernel's FIB gives the
//!   next hop's MAC address and the device, and the frame leaves at once (`XDP_TX` on the same
//!   device, a redirect through `LB_XDP_DEVICES` to another device that runs this program).
//!
//! Everything XDP cannot finish goes to the TC program on the same device untouched: a next hop
//! whose neighbour entry is not resolved yet (TC's `bpf_redirect_neigh` resolves it), a device
//! outside `LB_XDP_DEVICES`, a frame larger than the egress MTU, a frame XDP cannot parse. The
//! flow the decision recorded is then found and translated by TC. Refusals of a service port
//! without endpoints go to TC too, which answers them (see `decide`). So XDP never sends a packet
//! it cannot deliver, and nothing is translated twice: a packet either leaves XDP translated
//! (and no longer matches a service or a SNAT entry) or untouched.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use lb_ebpf::stats;

use super::{
    ext::{self, Decision, ExtFamily, NOT_A_REPLY},
    family::{V4, V6},
    flow::Track,
    frame::xdp_ptr,
    lb,
    maps::{LB_XDP_DEVICES, count, count_service_packet},
    nat::{End, Rewrite as _},
    parse::{ETH_P_IP, ETH_P_IPV6, Packet, eth_proto},
};

const XDP_PASS: u32 = xdp_action::XDP_PASS;
const XDP_DROP: u32 = xdp_action::XDP_DROP;
const XDP_TX: u32 = xdp_action::XDP_TX;

/// Offsets of the MAC addresses in the Ethernet header.
const ETH_DEST_OFF: usize = 0;
const ETH_SOURCE_OFF: usize = 6;

/// XDP on an external device.
///
/// As in TC, the work is split into subprograms per family and path (`#[inline(never)]`) that
/// return plain integers, to keep every stack frame chain within the verifier's 512 bytes.
#[inline(always)]
pub fn ext(ctx: &XdpContext) -> u32 {
    match eth_proto(ctx) {
        Ok(ETH_P_IP) => external::<V4>(ctx),
        Ok(ETH_P_IPV6) => external::<V6>(ctx),
        _ => XDP_PASS,
    }
}

#[inline(never)]
fn external<F: Track>(ctx: &XdpContext) -> u32 {
    let mut pkt = ext::empty_packet::<F>();
    if !ext::parse_into::<F, _>(ctx, &mut pkt) {
        return XDP_PASS;
    }
    match snat_reply::<F>(ctx, &pkt) {
        NOT_A_REPLY => forward::<F>(ctx, &pkt),
        verdict => verdict as u32,
    }
}

/// The frame's length in bytes.
#[inline(always)]
fn frame_len(ctx: &XdpContext) -> u32 {
    (ctx.data_end() - ctx.data()) as u32
}

/// Where a frame leaves: the egress device and the Ethernet addresses for the next hop.
struct Route {
    ifindex: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

impl Route {
    #[inline(always)]
    fn none() -> Self {
        Self {
            ifindex: 0,
            smac: [0; 6],
            dmac: [0; 6],
        }
    }
}

/// Finds the route of a frame from `src` to `dst` (after translation) into `out`, when XDP can
/// send it itself: the FIB has a resolved next hop, the frame fits the egress MTU, and the egress
/// device is this one or another in `LB_XDP_DEVICES`. `false`: leave the frame to the TC path.
///
/// A subprogram of its own, filling the caller's `Route`: the 64-byte lookup parameters would
/// otherwise crowd the callers' stack frames.
#[inline(never)]
fn find_route<F: ExtFamily>(
    ctx: &XdpContext,
    pkt: &Packet<F::Addr>,
    src: &F::Addr,
    dst: &F::Addr,
    out: &mut Route,
) -> bool {
    let mut params = ext::fib_params::<F>(ctx.ingress_ifindex() as u32, pkt.proto, src, dst);
    // The IP packet's length, so that the lookup refuses a next hop with a smaller MTU.
    params.__bindgen_anon_1.tot_len = (ctx.data_end() - ctx.data() - pkt.l3_off) as u16;
    // SAFETY: the helper reads and fills `params`, whose size is passed.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return false;
    }
    if params.ifindex != ctx.ingress_ifindex() as u32
        && LB_XDP_DEVICES.get(params.ifindex).is_none()
    {
        return false;
    }
    out.ifindex = params.ifindex;
    out.smac = params.smac;
    out.dmac = params.dmac;
    true
}

/// Sends a translated frame on its route.
#[inline(always)]
fn transmit(ctx: &XdpContext, route: &Route) -> u32 {
    let (Ok(dest), Ok(source)) = (
        xdp_ptr::<[u8; 6]>(ctx, ETH_DEST_OFF),
        xdp_ptr::<[u8; 6]>(ctx, ETH_SOURCE_OFF),
    ) else {
        return XDP_DROP;
    };
    // SAFETY: `xdp_ptr` checked both fields lie inside the frame.
    unsafe {
        core::ptr::write_unaligned(dest, route.dmac);
        core::ptr::write_unaligned(source, route.smac);
    }
    count(stats::XDP_SENT);
    if route.ifindex == ctx.ingress_ifindex() as u32 {
        return XDP_TX;
    }
    // The device was in the map a moment ago; should it have left since, the translated frame
    // must not reach the stack (it would be mistaken for traffic of this node): drop it.
    match LB_XDP_DEVICES.redirect(route.ifindex, u64::from(XDP_DROP)) {
        Ok(action) | Err(action) => action,
    }
}

/// A backend on another node answering a flow SNATed to this node: [`NOT_A_REPLY`] when the
/// packet is not one.
#[inline(never)]
fn snat_reply<F: Track>(ctx: &XdpContext, pkt: &Packet<F::Addr>) -> i32 {
    // Refreshed here even when TC sends the reply: it refreshes it again, harmlessly.
    let Some(reply) = ext::snat_entry::<F>(pkt) else {
        return NOT_A_REPLY;
    };
    let mut route = Route::none();
    if !find_route::<F>(ctx, pkt, &reply.service, &reply.client, &mut route) {
        // TC finishes it.
        count(stats::XDP_TO_TC);
        return XDP_PASS as i32;
    }
    if rewrite_reply::<F>(ctx, pkt, &reply) != 0 {
        // Half rewritten: sending it on would mistranslate.
        return XDP_DROP as i32;
    }
    count(stats::REVERSED);
    count_service_packet(reply.rev_nat_id, frame_len(ctx));
    transmit(ctx, &route) as i32
}

/// [`ext::rewrite_reply`] in a subprogram of its own (stack frames, as above): 0, or -1 on a
/// failed rewrite.
#[inline(never)]
fn rewrite_reply<F: ExtFamily>(
    ctx: &XdpContext,
    pkt: &Packet<F::Addr>,
    reply: &ext::SnatReply<F::Addr>,
) -> i32 {
    match ext::rewrite_reply::<F, _>(ctx, pkt, reply) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

/// [`Decision`] as plain fields, every one always written: a subprogram fills it through a
/// pointer, and an enum store would write its unused payload from uninitialised registers, which
/// the verifier refuses.
struct Outcome<A> {
    kind: u32,
    backend: A,
    backend_port: u16,
    snat_port: u16,
    snat_slot: u8,
    rev_nat_id: u16,
}

const OUTCOME_PASS: u32 = 0;
const OUTCOME_DROP: u32 = 1;
const OUTCOME_TRANSLATE: u32 = 2;

/// Flows from outside towards a service.
#[inline(never)]
fn forward<F: Track>(ctx: &XdpContext, pkt: &Packet<F::Addr>) -> u32 {
    let mut outcome = Outcome {
        kind: OUTCOME_PASS,
        backend: pkt.daddr,
        backend_port: 0,
        snat_port: 0,
        snat_slot: 0,
        rev_nat_id: 0,
    };
    decide::<F>(ctx, pkt, &mut outcome);
    match outcome.kind {
        OUTCOME_DROP => XDP_DROP,
        OUTCOME_TRANSLATE if outcome.snat_port == 0 => {
            // A backend on this node: the kernel delivers the translated packet to the pod.
            count_service_packet(outcome.rev_nat_id, frame_len(ctx));
            local::<F>(ctx, pkt, &outcome.backend, outcome.backend_port)
        }
        OUTCOME_TRANSLATE => snat_forward::<F>(ctx, pkt, &outcome),
        _ => XDP_PASS,
    }
}

/// [`ext::decide`] in a subprogram of its own, filling the caller's [`Outcome`]: its map keys
/// and values would otherwise crowd the callers' stack frames.
#[inline(never)]
fn decide<F: Track>(ctx: &XdpContext, pkt: &Packet<F::Addr>, out: &mut Outcome<F::Addr>) {
    match ext::decide::<F, _>(ctx, ctx.ingress_ifindex() as u32, pkt) {
        // Refusals are answered by the TC program on the same device, which always runs on what
        // XDP passes: the TCP reset and the ICMP port unreachable (`reject`, `icmp`) are built
        // once, on the skb, where `bpf_skb_change_tail` and `bpf_skb_adjust_room` reshape any
        // frame (non-linear ones too) and keep its checksum state right. An XDP copy would need
        // headroom the driver may not give (`bpf_xdp_adjust_head`), a second checksum path,
        // and a second set of tests, for packets kube-proxy itself answers on its slow path
        // (netfilter's REJECT): XDP's gain is on translated flows, not on refusals. Counted once,
        // by TC.
        Decision::Pass | Decision::Reject { .. } => out.kind = OUTCOME_PASS,
        Decision::Drop => out.kind = OUTCOME_DROP,
        Decision::Translate {
            backend,
            backend_port,
            snat_port,
            snat_slot,
            rev_nat_id,
        } => {
            out.kind = OUTCOME_TRANSLATE;
            out.backend = backend;
            out.backend_port = backend_port;
            out.snat_port = snat_port;
            out.snat_slot = snat_slot;
            out.rev_nat_id = rev_nat_id;
        }
    }
}

/// DNAT to a backend on this node, then on to the kernel.
#[inline(never)]
fn local<F: ExtFamily>(
    ctx: &XdpContext,
    pkt: &Packet<F::Addr>,
    backend: &F::Addr,
    backend_port: u16,
) -> u32 {
    match lb::dnat::<F, _>(ctx, pkt, *backend, backend_port) {
        Ok(_) => XDP_PASS,
        Err(_) => XDP_DROP,
    }
}

/// A backend on another node: DNAT and SNAT to the flow's node address, then out to the next
/// hop.
#[inline(never)]
fn snat_forward<F: ExtFamily>(
    ctx: &XdpContext,
    pkt: &Packet<F::Addr>,
    outcome: &Outcome<F::Addr>,
) -> u32 {
    let Some(node) = ext::snat_addr::<F>(outcome.snat_slot) else {
        return XDP_PASS;
    };
    let mut route = Route::none();
    if !find_route::<F>(ctx, pkt, &node, &outcome.backend, &mut route) {
        // The flow is recorded: TC translates this packet the same way and sends it.
        count(stats::XDP_TO_TC);
        return XDP_PASS;
    }
    if rewrite_snat::<F>(ctx, pkt, outcome, &node) != 0 {
        return XDP_DROP;
    }
    count_service_packet(outcome.rev_nat_id, frame_len(ctx));
    transmit(ctx, &route)
}

/// DNAT to the backend and SNAT to `node` from the outcome's SNAT port: 0, or -1 on a failed
/// rewrite.
#[inline(never)]
fn rewrite_snat<F: ExtFamily>(
    ctx: &XdpContext,
    pkt: &Packet<F::Addr>,
    outcome: &Outcome<F::Addr>,
    node: &F::Addr,
) -> i32 {
    let rewritten = (|| {
        lb::dnat::<F, _>(ctx, pkt, outcome.backend, outcome.backend_port)?;
        ctx.rewrite_port(pkt, End::Source, outcome.snat_port)?;
        F::rewrite_addr(ctx, pkt, End::Source, *node)
    })();
    if rewritten.is_err() { -1 } else { 0 }
}
