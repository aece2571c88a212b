//! The load-balancing decision and connection tracking, written once for both families.

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use aya_log_ebpf::warn;
use lb_ebpf::{
    AffinityKey, Backend, FLOW_F_CLOSED_FWD, FLOW_F_HAIRPIN, FLOW_FORWARD, FLOW_REPLY,
    FLOW_TCP_CLOSE_NS, FLOW_TCP_LIFETIME_NS, FLOW_UDP_LIFETIME_NS, FlowKey, PROTO_TCP,
    SCOPE_DEFAULT, SCOPE_INTERNAL, SVC_F_EXTERNAL, SVC_F_LOCAL, ServiceKey, ServiceValue, stats,
};

use super::{
    affinity,
    ext::{self, ExtFamily},
    family::{Family, FlowEntry, V4, V6},
    hairpin::{self, HairpinFamily},
    maps::count,
    nat::{End, Rewrite},
    parse::{Packet, Parsed, parse},
    reject::reject,
    tcp::{TCP_ACK, TCP_SYN, closing_flag},
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

/// Whether an entry may still carry packets of the same connection: its last packet is within
/// the lifetime of the protocol (and of a closing TCP connection).
#[inline(always)]
pub fn within_lifetime(proto: u8, closing: bool, expires_ns: u64, now: u64) -> bool {
    let lifetime = if proto != PROTO_TCP {
        FLOW_UDP_LIFETIME_NS
    } else if closing {
        FLOW_TCP_CLOSE_NS
    } else {
        FLOW_TCP_LIFETIME_NS
    };
    now.wrapping_sub(expires_ns) < lifetime
}

#[inline(always)]
fn is_live<F: Family>(flow: &F::Flow, proto: u8, now: u64) -> bool {
    within_lifetime(
        proto,
        flow.flags() & FLOW_F_CLOSED_FWD != 0,
        flow.expires_ns(),
        now,
    )
}

/// Whether the backend a flow points at is still programmed at the same address.
#[inline(always)]
fn backend_present<F: Family>(flow: &F::Flow) -> bool {
    // SAFETY: read-only copy of a map value.
    match unsafe { F::backends().get(&flow.backend_id()) } {
        Some(b) => b.addr == flow.nat_addr() && b.port == flow.nat_port(),
        None => false,
    }
}

/// The established flow of this packet, when it may carry it: `(backend address, backend port,
/// SNAT port, flow flags)`. The flow's timestamp is refreshed.
#[inline(always)]
pub fn established<F: Family>(pkt: &Packet<F::Addr>, now: u64) -> Option<(F::Addr, u16, u16, u8)> {
    let key = flow_key::<F>(pkt, FLOW_FORWARD);
    let flow = F::flows().get_ptr_mut(&key)?;
    // SAFETY: the LRU map hands out a pointer to this entry's value; concurrent updates of the
    // same flow from two CPUs only race on the timestamp and flags, which is harmless.
    let flow = unsafe { &mut *flow };
    let new_connection = pkt.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // A TCP SYN may reuse the 4-tuple of a finished connection, and a UDP flow follows its
    // backend's removal at once (kube-proxy clears UDP conntrack entries for the same reason).
    let reusable = is_live::<F>(flow, pkt.proto, now)
        && !(new_connection && flow.flags() & FLOW_F_CLOSED_FWD != 0)
        && ((pkt.proto == PROTO_TCP && !new_connection) || backend_present::<F>(flow));
    if !reusable {
        return None;
    }
    flow.touch(now, closing_flag(pkt));
    Some((
        flow.nat_addr(),
        flow.nat_port(),
        flow.snat_port(),
        flow.flags(),
    ))
}

/// Records a new flow. Without SNAT, a reply entry lets the reverse translation restore the
/// service address; with SNAT (`snat_port != 0`) the caller records the SNAT entry instead.
/// A subprogram of its own: its keys and values would otherwise crowd the callers' stack frames.
#[inline(never)]
pub fn record_flow<F: Family, C: EbpfContext>(
    ctx: &C,
    pkt: &Packet<F::Addr>,
    chosen: &Chosen<F::Addr>,
    snat_port: u16,
    now: u64,
) {
    let backend = &chosen.backend;
    let mut fwd = F::Flow::new(
        backend.addr,
        backend.port,
        chosen.rev_nat_id,
        chosen.backend_id,
        now,
    );
    fwd.set_snat(snat_port);
    fwd.touch(now, closing_flag(pkt));
    let reply_ok = snat_port != 0 || {
        let reply_key = FlowKey {
            saddr: backend.addr,
            daddr: pkt.saddr,
            sport: backend.port,
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
            now,
        );
        // The reply entry goes first: a reply can only exist once the forward packet has left.
        F::flows().insert(&reply_key, &rev, 0).is_ok()
    };
    let key = flow_key::<F>(pkt, FLOW_FORWARD);
    if !reply_ok || F::flows().insert(&key, &fwd, 0).is_err() {
        count(stats::FLOW_UPDATE_FAILED);
        warn!(
            ctx,
            "flow table update failed; packet translated without a flow entry"
        );
    } else {
        count(stats::NEW_FLOWS);
    }
}

#[inline(always)]
fn forward<F: ExtFamily + HairpinFamily>(
    ctx: &TcContext,
    pkt: &Packet<F::Addr>,
) -> Result<i32, i64> {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some((addr, port, _, flags)) = established::<F>(pkt, now) {
        if flags & FLOW_F_HAIRPIN != 0 {
            return Ok(hairpin::forward::<F>(ctx, pkt, &addr, port));
        }
        return dnat::<F, _>(ctx, pkt, addr, port);
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
        return Ok(TC_ACT_SHOT);
    }
    // No endpoint anywhere: refused, as kube-proxy rejects (counted as such by `reject`).
    if frontend.refuses() {
        return Ok(reject::<F>(ctx, pkt));
    }
    // Endpoints, but none in this frontend's scope (internalTrafficPolicy Local): dropped, as
    // kube-proxy drops.
    if frontend.count == 0 {
        count(stats::NO_BACKEND);
        return Ok(TC_ACT_SHOT);
    }
    let Some(chosen) = choose::<F>(pkt, &frontend, scope, now) else {
        // A slot or its backend missing (an update applied halfway): passed on untouched.
        count(stats::NO_BACKEND);
        return Ok(TC_ACT_OK as i32);
    };
    // The pod is its own backend: its packet must not come back from its own address.
    if chosen.backend.addr == pkt.saddr {
        return hairpin::start::<F>(ctx, pkt, &chosen, now);
    }
    record_flow::<F, _>(ctx, pkt, &chosen, 0, now);
    dnat::<F, _>(ctx, pkt, chosen.backend.addr, chosen.backend.port)
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
fn reply<F: Family>(ctx: &TcContext, pkt: &Packet<F::Addr>) -> Result<i32, i64> {
    let key = flow_key::<F>(pkt, FLOW_REPLY);
    let Some(flow) = F::flows().get_ptr_mut(&key) else {
        return Ok(TC_ACT_OK as i32);
    };
    // SAFETY: see `forward`.
    let flow = unsafe { &mut *flow };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if !is_live::<F>(flow, pkt.proto, now) {
        return Ok(TC_ACT_OK as i32);
    }
    flow.touch(now, closing_flag(pkt));
    let (addr, port) = (flow.nat_addr(), flow.nat_port());
    ctx.rewrite_port(pkt, End::Source, port)?;
    F::rewrite_addr(ctx, pkt, End::Source, addr)?;
    count(stats::REVERSED);
    Ok(TC_ACT_OK as i32)
}
