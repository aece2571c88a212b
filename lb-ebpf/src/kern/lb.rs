//! The load-balancing decision and connection tracking, written once for both families.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use lb_ebpf::{
    AffinityKey, Backend, FLOW_F_HAIRPIN, FLOW_FORWARD, FLOW_REPLY, FlowKey, SCOPE_DEFAULT,
    SCOPE_INTERNAL, SVC_F_EXTERNAL, SVC_F_LOCAL, ServiceKey, ServiceValue, service_stats, stats,
};

use super::{
    affinity, ext,
    family::{Family, FlowEntry, V4, V6},
    flow::{self, Track},
    hairpin,
    maps::{count, count_service, count_service_packet},
    nat::{End, Rewrite},
    parse::{Packet, Parsed, parse},
    reject::reject,
};

/// Packets leaving a pod: translate a service destination to a backend.
#[inline(always)]
pub fn pod_ingress(ctx: &TcContext) -> Result<i32, i64> {
    match parse(ctx)? {
        Parsed::V4(pkt) => forward::<V4>(ctx, &pkt),
        Parsed::V6(pkt) => forward::<V6>(ctx, &pkt),
        Parsed::Other => Ok(TC_ACT_OK as i32),
    }
}

/// Packets entering a pod: restore the service address as the source of replies.
#[inline(always)]
pub fn pod_egress(ctx: &TcContext) -> Result<i32, i64> {
    match parse(ctx)? {
        Parsed::V4(pkt) => reply::<V4>(ctx, &pkt),
        Parsed::V6(pkt) => reply::<V6>(ctx, &pkt),
        Parsed::Other => Ok(TC_ACT_OK as i32),
    }
}

#[inline(always)]
pub fn flow_key<F: Family>(pkt: &Packet<F::Addr>, dir: u8) -> FlowKey<F::Addr> {
    FlowKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        dir,
        _pad: [0; 2],
    }
}

/// Records a new flow, unconfirmed ([`flow`]). Without SNAT, a reply entry lets the reverse
/// translation restore the service address; with SNAT (`snat_port != 0`, from the SNAT address
/// in `snat_slot`) the caller has recorded the SNAT entry instead. Each entry is written by a subprogram of its own, called
/// from here one after the other: the chain of frames under the pod program's is short.
#[inline(always)]
pub fn record_flow<F: Track>(
    pkt: &Packet<F::Addr>,
    chosen: &Chosen<F::Addr>,
    snat_port: u16,
    snat_slot: u8,
    now: u64,
) {
    let flags = flow::after(pkt, false, false, 0);
    let expires = now + flow::lifetime(pkt.proto, false, flags);
    // The reply entry goes first: a reply can only exist once the forward packet has left.
    let recorded = (snat_port != 0 || record_reply::<F>(pkt, chosen, expires))
        && record_forward::<F>(pkt, chosen, snat_port, snat_slot, expires);
    if recorded {
        count(stats::NEW_FLOWS);
    } else {
        count(stats::FLOW_UPDATE_FAILED);
    }
}

/// The forward entry of a new flow; `false` when it could not be written.
#[inline(never)]
fn record_forward<F: Track>(
    pkt: &Packet<F::Addr>,
    chosen: &Chosen<F::Addr>,
    snat_port: u16,
    snat_slot: u8,
    expires: u64,
) -> bool {
    let mut fwd = F::Flow::new(
        chosen.backend.addr,
        chosen.backend.port,
        chosen.rev_nat_id,
        chosen.backend_id,
        expires,
    );
    if snat_port != 0 {
        fwd.set_snat(snat_port, snat_slot);
    }
    fwd.set_flags(fwd.flags() | flow::after(pkt, false, false, 0));
    F::new_flows()
        .insert(&flow_key::<F>(pkt, FLOW_FORWARD), &fwd, 0)
        .is_ok()
}

#[inline(always)]
fn forward<F: Track>(ctx: &TcContext, pkt: &Packet<F::Addr>) -> Result<i32, i64> {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut hit = flow::Hit::empty(F::UNSPECIFIED);
    if flow::lookup::<F>(pkt, &mut hit, now) {
        count_service_packet(hit.rev_nat_id, ctx.len());
        if hit.flags & FLOW_F_HAIRPIN != 0 {
            return Ok(hairpin::forward::<F>(ctx, pkt, &hit.addr, hit.port));
        }
        return dnat::<F, _>(ctx, pkt, hit.addr, hit.port);
    }
    if let Some(action) = hairpin::answer::<F>(ctx, pkt, now) {
        return Ok(action);
    }
    let Some(frontend) = frontend::<F>(pkt.daddr, pkt.dport, pkt.proto) else {
        return Ok(TC_ACT_OK as i32);
    };
    let (frontend, scope) = in_cluster::<F>(pkt.daddr, pkt.dport, pkt.proto, frontend);
    if !ext::source_allowed::<F>(&frontend, &pkt.saddr) {
        count(stats::SOURCE_RANGE_DROPPED);
        count_service(frontend.rev_nat_id, service_stats::DROPPED);
        return Ok(TC_ACT_SHOT);
    }
    // No endpoint anywhere: refused, as kube-proxy rejects (counted as such by `reject`).
    if frontend.refuses() {
        count_service(frontend.rev_nat_id, service_stats::REFUSED);
        return Ok(reject::<F>(ctx, pkt));
    }
    // Endpoints, but none in this frontend's scope (internalTrafficPolicy Local): dropped, as
    // kube-proxy drops.
    if frontend.count == 0 {
        count(stats::NO_BACKEND);
        count_service(frontend.rev_nat_id, service_stats::DROPPED);
        return Ok(TC_ACT_SHOT);
    }
    let Some(chosen) = choose::<F>(pkt, &frontend, scope, now) else {
        // A slot or its backend missing (an update applied halfway): passed on untouched.
        count(stats::NO_BACKEND);
        return Ok(TC_ACT_OK as i32);
    };
    count_service(chosen.rev_nat_id, service_stats::NEW_FLOWS);
    count_service_packet(chosen.rev_nat_id, ctx.len());
    // The pod is its own backend: its packet must not come back from its own address.
    if chosen.backend.addr == pkt.saddr {
        return hairpin::start::<F>(ctx, pkt, &chosen, now);
    }
    record_flow::<F>(pkt, &chosen, 0, 0, now);
    dnat::<F, _>(ctx, pkt, chosen.backend.addr, chosen.backend.port)
}

/// The reply entry of a new flow that is not SNATed: the backend's answers to the client come
/// from the service address. A subprogram of its own, for the stack (see [`record_flow`]).
#[inline(never)]
fn record_reply<F: Track>(pkt: &Packet<F::Addr>, chosen: &Chosen<F::Addr>, expires: u64) -> bool {
    let key = FlowKey {
        saddr: chosen.backend.addr,
        daddr: pkt.saddr,
        sport: chosen.backend.port,
        dport: pkt.sport,
        proto: pkt.proto,
        dir: FLOW_REPLY,
        _pad: [0; 2],
    };
    let rev = F::Flow::new(
        pkt.daddr,
        pkt.dport,
        chosen.rev_nat_id,
        chosen.backend_id,
        expires,
    );
    F::new_flows().insert(&key, &rev, 0).is_ok()
}

/// A backend chosen for a service.
pub struct Chosen<A> {
    pub rev_nat_id: u16,
    pub backend_id: u32,
    pub backend: Backend<A>,
}

/// The frontend entry of the service `(addr, port, proto)`, if it is one.
#[inline(always)]
pub fn frontend<F: Family>(addr: F::Addr, port: u16, proto: u8) -> Option<ServiceValue> {
    entry::<F>(addr, port, proto, 0, SCOPE_DEFAULT)
}

#[inline(always)]
fn entry<F: Family>(
    addr: F::Addr,
    port: u16,
    proto: u8,
    slot: u16,
    scope: u8,
) -> Option<ServiceValue> {
    let key = ServiceKey {
        addr,
        port,
        slot,
        proto,
        scope,
        _pad: [0; 2],
    };
    // SAFETY: read-only copy of a map value.
    unsafe { F::services().get(&key) }.copied()
}

/// What an in-cluster client (a pod, a node process) gets of `frontend`: for an external
/// frontend with `externalTrafficPolicy: Local`, its internal entry with every backend of the
/// cluster (kube-proxy's short-circuit), when the agent programmed one; else the frontend
/// itself. Returns the entry and its scope.
#[inline(always)]
pub fn in_cluster<F: Family>(
    addr: F::Addr,
    port: u16,
    proto: u8,
    frontend: ServiceValue,
) -> (ServiceValue, u8) {
    const EXTERNAL_LOCAL: u8 = SVC_F_EXTERNAL | SVC_F_LOCAL;
    if frontend.flags & EXTERNAL_LOCAL == EXTERNAL_LOCAL
        && let Some(internal) = entry::<F>(addr, port, proto, 0, SCOPE_INTERNAL)
    {
        return (internal, SCOPE_INTERNAL);
    }
    (frontend, SCOPE_DEFAULT)
}

/// The backend of a new flow from the packet's source: the one session affinity keeps for it,
/// else a random one (then remembered when the frontend has affinity). Shared by the pod and
/// external paths, TC and XDP. A subprogram of its own: its keys would otherwise crowd the
/// callers' stack frames.
#[inline(never)]
pub fn choose<F: Family>(
    pkt: &Packet<F::Addr>,
    frontend: &ServiceValue,
    scope: u8,
    now: u64,
) -> Option<Chosen<F::Addr>> {
    if frontend.affinity_timeout_ns().is_none() {
        // SAFETY: helper without arguments.
        let pick = unsafe { bpf_get_prandom_u32() };
        return pick_backend::<F>(pkt.daddr, pkt.dport, pkt.proto, frontend, scope, pick);
    }
    let key = AffinityKey {
        client: pkt.saddr,
        rev_nat_id: frontend.rev_nat_id,
        _pad: [0; 2],
    };
    let chosen = match affinity::remembered::<F, _>(F::affinity(), &key, frontend, now) {
        Some(chosen) => chosen,
        None => {
            // SAFETY: helper without arguments.
            let pick = unsafe { bpf_get_prandom_u32() };
            pick_backend::<F>(pkt.daddr, pkt.dport, pkt.proto, frontend, scope, pick)?
        }
    };
    affinity::remember(F::affinity(), &key, frontend, chosen.backend_id, now);
    Some(chosen)
}

/// Picks the backend in slot `1 + pick % count` of a frontend; `None` when it has no usable
/// backend. Shared by the TC and socket programs, so both balance alike. Not counted here: each
/// caller counts the packet once, under the reason only it knows (a pod's or node process's
/// packet without backend, an external packet dropped without endpoint).
#[inline(always)]
pub fn pick_backend<F: Family>(
    addr: F::Addr,
    port: u16,
    proto: u8,
    frontend: &ServiceValue,
    scope: u8,
    pick: u32,
) -> Option<Chosen<F::Addr>> {
    if frontend.count == 0 {
        return None;
    }
    let slot = (pick % u32::from(frontend.count)) as u16 + 1;
    entry::<F>(addr, port, proto, slot, scope).and_then(|slot| {
        // SAFETY: read-only copy of a map value.
        let backend = unsafe { F::backends().get(&slot.backend_id) }.copied()?;
        Some(Chosen {
            rev_nat_id: frontend.rev_nat_id,
            backend_id: slot.backend_id,
            backend,
        })
    })
}

/// Rewrites the destination to a backend.
#[inline(always)]
pub fn dnat<F: Family, C: Rewrite>(
    ctx: &C,
    pkt: &Packet<F::Addr>,
    addr: F::Addr,
    port: u16,
) -> Result<i32, i64> {
    ctx.rewrite_port(pkt, End::Destination, port)?;
    F::rewrite_addr(ctx, pkt, End::Destination, addr)?;
    count(stats::TRANSLATED);
    Ok(TC_ACT_OK as i32)
}

#[inline(always)]
fn reply<F: Track>(ctx: &TcContext, pkt: &Packet<F::Addr>) -> Result<i32, i64> {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut hit = flow::Hit::empty(F::UNSPECIFIED);
    if !flow::reply::<F>(pkt, &mut hit, now) {
        return Ok(TC_ACT_OK as i32);
    }
    count_service_packet(hit.rev_nat_id, ctx.len());
    ctx.rewrite_port(pkt, End::Source, hit.port)?;
    F::rewrite_addr(ctx, pkt, End::Source, hit.addr)?;
    count(stats::REVERSED);
    Ok(TC_ACT_OK as i32)
}
