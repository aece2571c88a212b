//! Connection tracking: the lifetime of flows, their confirmation, and how the two directions
//! of a flow keep each other alive, for every path (pod, external, hairpin; TC and XDP).
//!
//! - **Two tables.** A new flow's entries go to the unconfirmed table (`LB_FLOWS_NEW_*`). Once
//!   its client speaks again after a reply (the ACK that completes a TCP handshake, a UDP
//!   datagram after an answer), the flow moves to the confirmed table (`LB_FLOWS_*`). A flood
//!   of SYNs from spoofed sources, whose clients never answer the backend's SYN-ACK, only
//!   churns the unconfirmed table: established flows are never evicted by it.
//! - **Absolute expiry.** Every entry stores when it dies (`expires_ns`), so a value another CPU
//!   refreshed a moment ago can never read as expired.
//! - **Each direction refreshes its own entry.** The forward entry (client to service) is the
//!   truth about the flow and holds its state (`FLOW_F_*`); the reply side (a reply entry, or
//!   the SNAT entry of a flow SNATed to a backend on another node) refreshes itself and reports
//!   to the forward entry only what changes its state: the first reply, a FIN or RST, the first
//!   packet after a RST. When the forward entry's own expiry passes, its partner is asked
//!   before the flow is taken as dead, and the other way round, so replies far apart (or a
//!   silent client) never end a flow one direction keeps alive.
//! - **TCP.** Unconfirmed: [`conf::tcp_syn_ns`]; confirmed: [`conf::tcp_established_ns`]; a
//!   flow closed in both directions (FIN or RST from each side), or with a RST not yet followed
//!   by a packet of the same side, or reset before it was confirmed: [`conf::tcp_close_ns`].
//!   A segment other than a SYN never starts a new flow elsewhere: a flow whose entries expired
//!   but are still there keeps its backend for it (a new backend could only answer a RST).
//! - **SNAT ports** are in use while their flow lives, whatever the SNAT entry's own expiry.

use aya_ebpf::maps::LruHashMap;
use lb_ebpf::{
    FLOW_F_CLOSED, FLOW_F_CLOSED_FWD, FLOW_F_CLOSED_REV, FLOW_F_HAIRPIN, FLOW_F_REPLIED,
    FLOW_F_SNAT, FLOW_FORWARD, FLOW_REPLY, FlowKey, PROTO_TCP, SnatValue, stats,
};

use super::{
    conf,
    ext::{self, ExtFamily},
    family::{Family, FlowEntry, V4, V6},
    hairpin::HairpinFamily,
    maps::count,
    parse::Packet,
    tcp::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// Flow flag: a RST came from the client and no packet of the client since.
pub const FLOW_F_RST_FWD: u8 = 32;
/// Flow flag: a RST came from the backend and no packet of the backend since. On reply and
/// SNAT entries too: the forward entry knows of it.
pub const FLOW_F_RST_REV: u8 = 64;
/// Flow flag on SNAT entries: the flow is confirmed (its forward entry is in the confirmed
/// table).
pub const FLOW_F_CONFIRMED: u8 = 128;

/// The families the tracking is written for: every path's pieces.
pub trait Track: ExtFamily + HairpinFamily {}
impl Track for V4 {}
impl Track for V6 {}

/// The flow table of confirmed (`true`) or unconfirmed flows.
#[inline(always)]
pub fn table<F: Family>(confirmed: bool) -> &'static LruHashMap<FlowKey<F::Addr>, F::Flow> {
    if confirmed {
        F::flows()
    } else {
        F::new_flows()
    }
}

/// How long a flow in this state lives after its last packet.
#[inline(always)]
pub fn lifetime(proto: u8, confirmed: bool, flags: u8) -> u64 {
    if proto == PROTO_TCP {
        if flags & FLOW_F_CLOSED == FLOW_F_CLOSED || flags & (FLOW_F_RST_FWD | FLOW_F_RST_REV) != 0
        {
            conf::tcp_close_ns()
        } else if confirmed {
            conf::tcp_established_ns()
        } else {
            conf::tcp_syn_ns()
        }
    } else if confirmed {
        conf::udp_ns()
    } else {
        conf::udp_new_ns()
    }
}

/// A flow's state after a packet of it: from the backend (`reverse`) or from the client.
#[inline(always)]
pub fn after<A>(pkt: &Packet<A>, reverse: bool, confirmed: bool, flags: u8) -> u8 {
    if pkt.proto != PROTO_TCP {
        return flags;
    }
    let (closed, rst) = if reverse {
        (FLOW_F_CLOSED_REV, FLOW_F_RST_REV)
    } else {
        (FLOW_F_CLOSED_FWD, FLOW_F_RST_FWD)
    };
    if pkt.tcp_flags & TCP_RST != 0 {
        // A reset before the handshake completed ends the flow; after it, only its side.
        if confirmed {
            flags | closed | rst
        } else {
            flags | FLOW_F_CLOSED | rst
        }
    } else if pkt.tcp_flags & TCP_FIN != 0 {
        (flags & !rst) | closed
    } else {
        flags & !rst
    }
}

/// Whether the packet opens a TCP connection (a SYN without ACK).
#[inline(always)]
pub fn is_syn<A>(pkt: &Packet<A>) -> bool {
    pkt.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Whether the packet is a TCP SYN-ACK.
#[inline(always)]
fn is_synack<A>(pkt: &Packet<A>) -> bool {
    pkt.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
}

/// Whether the packet belongs to a TCP connection under way: it can only be answered by the
/// backend that has the connection, so it never starts a flow elsewhere.
#[inline(always)]
fn is_segment<A>(pkt: &Packet<A>) -> bool {
    pkt.proto == PROTO_TCP && pkt.tcp_flags & TCP_SYN == 0
}

/// Whether a reply must tell the forward entry something: its first, a FIN or RST, the first
/// after a RST of the backend. `flags` are the reply side's.
#[inline(always)]
fn reports<A>(pkt: &Packet<A>, flags: u8) -> bool {
    flags & FLOW_F_REPLIED == 0
        || (pkt.proto == PROTO_TCP
            && (pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 || flags & FLOW_F_RST_REV != 0))
}

/// Forward flags the reply side mirrors, so that its own refreshes follow the flow's lifetime.
pub const MIRRORED: u8 = FLOW_F_CLOSED | FLOW_F_RST_FWD | FLOW_F_RST_REV;

/// The reply side's flags once the forward entry's are `forward`: replied, and the mirrored
/// state (its confirmation mark kept).
#[inline(always)]
fn reply_side_flags(own: u8, forward: u8) -> u8 {
    (own & FLOW_F_CONFIRMED) | FLOW_F_REPLIED | (forward & MIRRORED)
}

/// The forward key of a reply entry: its client is the reply's destination, or, for a hairpin
/// flow (the reply goes to the hairpin address), the pod that is its own backend.
#[inline(always)]
pub fn forward_of_reply<F: Track>(key: &FlowKey<F::Addr>, value: &F::Flow) -> FlowKey<F::Addr> {
    let client = if key.daddr == F::HAIRPIN {
        key.saddr
    } else {
        key.daddr
    };
    FlowKey {
        saddr: client,
        daddr: value.nat_addr(),
        sport: key.dport,
        dport: value.nat_port(),
        proto: key.proto,
        dir: FLOW_FORWARD,
        _pad: [0; 2],
    }
}

/// The reply key of a forward entry that is not SNATed.
#[inline(always)]
pub fn reply_of_forward<F: Track>(key: &FlowKey<F::Addr>, value: &F::Flow) -> FlowKey<F::Addr> {
    let client = if value.flags() & FLOW_F_HAIRPIN != 0 {
        F::HAIRPIN
    } else {
        key.saddr
    };
    FlowKey {
        saddr: value.nat_addr(),
        daddr: client,
        sport: value.nat_port(),
        dport: key.sport,
        proto: key.proto,
        dir: FLOW_REPLY,
        _pad: [0; 2],
    }
}

/// The SNAT key of a SNATed forward entry: the reply of its backend to this node's address.
#[inline(always)]
pub fn snat_of_forward<F: Track>(
    key: &FlowKey<F::Addr>,
    value: &F::Flow,
    node: F::Addr,
) -> FlowKey<F::Addr> {
    FlowKey {
        saddr: value.nat_addr(),
        daddr: node,
        sport: value.nat_port(),
        dport: value.snat_port(),
        proto: key.proto,
        dir: FLOW_REPLY,
        _pad: [0; 2],
    }
}

/// The forward key of a SNAT entry.
#[inline(always)]
pub fn forward_of_snat<F: Track>(
    key: &FlowKey<F::Addr>,
    value: &SnatValue<F::Addr>,
) -> FlowKey<F::Addr> {
    FlowKey {
        saddr: value.client_addr,
        daddr: value.service_addr,
        sport: value.client_port,
        dport: value.service_port,
        proto: key.proto,
        dir: FLOW_FORWARD,
        _pad: [0; 2],
    }
}

/// Whether a SNAT entry belongs to the flow of this forward entry.
#[inline(always)]
fn snat_is_of<F: Track>(snat: &SnatValue<F::Addr>, key: &FlowKey<F::Addr>) -> bool {
    snat.client_addr == key.saddr
        && snat.client_port == key.sport
        && snat.service_addr == key.daddr
        && snat.service_port == key.dport
}

/// Partner states, from [`partner`].
const PARTNER_GONE: u32 = 0;
const PARTNER_EXPIRED: u32 = 1;
const PARTNER_ALIVE: u32 = 2;

/// The state of the reply side of a forward entry: its reply entry (same table) or SNAT entry,
/// present and of this flow, and whether its own expiry is still ahead.
#[inline(never)]
fn partner<F: Track>(key: &FlowKey<F::Addr>, flow: &F::Flow, confirmed: bool, now: u64) -> u32 {
    let expires = if flow.flags() & FLOW_F_SNAT != 0 {
        let Some(node) = ext::snat_addr::<F>(flow.snat_slot()) else {
            return PARTNER_GONE;
        };
        // SAFETY: read-only copy of a map value.
        match unsafe { F::snat().get(&snat_of_forward::<F>(key, flow, node)) } {
            Some(snat) if snat_is_of::<F>(snat, key) => snat.expires_ns,
            _ => return PARTNER_GONE,
        }
    } else {
        // SAFETY: read-only copy of a map value.
        match unsafe { table::<F>(confirmed).get(&reply_of_forward::<F>(key, flow)) } {
            Some(reply) => reply.expires_ns(),
            None => return PARTNER_GONE,
        }
    };
    if now < expires {
        PARTNER_ALIVE
    } else {
        PARTNER_EXPIRED
    }
}

/// Gives the reply side of a forward entry the forward entry's expiry: when the flow closes,
/// so that a closed flow's reply entry or SNAT port is not held for the long lifetime it had.
#[inline(never)]
fn align_partner<F: Track>(key: &FlowKey<F::Addr>, flow: &F::Flow, confirmed: bool) {
    let expires = flow.expires_ns();
    let mirrored = flow.flags() & MIRRORED;
    if flow.flags() & FLOW_F_SNAT != 0 {
        let Some(node) = ext::snat_addr::<F>(flow.snat_slot()) else {
            return;
        };
        if let Some(snat) = F::snat().get_ptr_mut(&snat_of_forward::<F>(key, flow, node)) {
            // SAFETY: the map's pointer to this entry's value.
            let snat = unsafe { &mut *snat };
            if snat_is_of::<F>(snat, key) {
                snat.flags = (snat.flags & !MIRRORED) | mirrored;
                snat.expires_ns = expires;
            }
        }
    } else if let Some(reply) = table::<F>(confirmed).get_ptr_mut(&reply_of_forward::<F>(key, flow))
    {
        // SAFETY: the map's pointer to this entry's value.
        let reply = unsafe { &mut *reply };
        reply.set_flags((reply.flags() & !MIRRORED) | mirrored);
        reply.set_expires(expires);
    }
}

/// What the forward path needs of an established flow (the reply path: the address to
/// restore).
pub struct Hit<A> {
    pub addr: A,
    pub port: u16,
    pub snat_port: u16,
    pub snat_slot: u8,
    pub flags: u8,
    /// The flow's frontend, for its traffic counters.
    pub rev_nat_id: u16,
}

impl<A> Hit<A> {
    /// Nothing yet, for [`lookup`] or [`reply`] to fill.
    #[inline(always)]
    pub fn empty(addr: A) -> Self {
        Self {
            addr,
            port: 0,
            snat_port: 0,
            snat_slot: 0,
            flags: 0,
            rev_nat_id: 0,
        }
    }
}

/// The flow of a packet from the client, into `out`: [`established`], then [`confirm`] when
/// the packet confirms it. Whether there is one.
#[inline(always)]
pub fn lookup<F: Track>(pkt: &Packet<F::Addr>, out: &mut Hit<F::Addr>, now: u64) -> bool {
    match established::<F>(pkt, out, now) {
        MISS => false,
        found => {
            if found == HIT_UNCONFIRMED {
                confirm::<F>(pkt, now);
            }
            true
        }
    }
}

/// [`established`]'s results: no flow, a flow, a flow to confirm now ([`confirm`]).
pub const MISS: u32 = 0;
pub const HIT: u32 = 1;
pub const HIT_UNCONFIRMED: u32 = 2;

/// Whether a forward entry carries this packet, refreshing it: a live flow does (a SYN reusing
/// the tuple of a closing flow, and a UDP datagram or SYN whose backend is gone, start anew);
/// an expired one does when its partner still lives, or for a TCP segment of a connection under
/// way while its partner is still there.
#[inline(always)]
fn carries<F: Track>(
    key: &FlowKey<F::Addr>,
    flow: &mut F::Flow,
    pkt: &Packet<F::Addr>,
    confirmed: bool,
    now: u64,
) -> bool {
    let syn = is_syn(pkt);
    if syn && flow.flags() & FLOW_F_CLOSED != 0 {
        return false;
    }
    if !is_segment(pkt) && !backend_present::<F>(flow) {
        return false;
    }
    if now >= flow.expires_ns() {
        let wanted = if is_segment(pkt) {
            PARTNER_EXPIRED
        } else {
            PARTNER_ALIVE
        };
        if partner::<F>(key, flow, confirmed, now) < wanted {
            return false;
        }
    }
    let before = lifetime(pkt.proto, confirmed, flow.flags());
    let flags = after(pkt, false, confirmed, flow.flags());
    flow.set_flags(flags);
    let lifetime = lifetime(pkt.proto, confirmed, flags);
    flow.set_expires(now + lifetime);
    if lifetime < before {
        align_partner::<F>(key, flow, confirmed);
    }
    true
}

/// Removes a forward entry and its reply entry (a SNAT entry stays: without its flow its port
/// is free, and it is replaced or collected).
#[inline(never)]
fn retire<F: Track>(key: &FlowKey<F::Addr>, flow: &F::Flow, confirmed: bool) {
    if flow.flags() & FLOW_F_SNAT == 0 {
        let _ = table::<F>(confirmed).remove(&reply_of_forward::<F>(key, flow));
    }
    let _ = table::<F>(confirmed).remove(key);
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

/// The established flow of a packet from the client, refreshed, into `out`: [`HIT`], [`MISS`],
/// or [`HIT_UNCONFIRMED`] for an unconfirmed flow whose client speaks after a reply, which the
/// caller then confirms ([`confirm`], a separate call for the stack: the chain of frames
/// under the pod program's is short). A subprogram of its own, filling the caller's `out`.
#[inline(never)]
pub fn established<F: Track>(pkt: &Packet<F::Addr>, out: &mut Hit<F::Addr>, now: u64) -> u32 {
    let key = FlowKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        dir: FLOW_FORWARD,
        _pad: [0; 2],
    };
    let (flow, confirmed) = match F::flows().get_ptr_mut(&key) {
        Some(flow) => (flow, true),
        None => match F::new_flows().get_ptr_mut(&key) {
            Some(flow) => (flow, false),
            None => return MISS,
        },
    };
    // SAFETY: the LRU map's pointer to this entry's value; other CPUs may write the same
    // entry at once, which can only move its expiry forward or lose a flag bit another packet
    // sets again.
    let flow = unsafe { &mut *flow };
    if !carries::<F>(&key, flow, pkt, confirmed, now) {
        // The packet starts a new flow, recorded in the unconfirmed table: this one must go,
        // or its entries (in either table, looked up first) would catch the new flow's packets.
        retire::<F>(&key, flow, confirmed);
        return MISS;
    }
    out.addr = flow.nat_addr();
    out.port = flow.nat_port();
    out.snat_port = flow.snat_port();
    out.snat_slot = flow.snat_slot();
    out.flags = flow.flags();
    out.rev_nat_id = flow.rev_nat_id();
    if !confirmed && flow.flags() & (FLOW_F_REPLIED | MIRRORED) == FLOW_F_REPLIED && !is_syn(pkt) {
        return HIT_UNCONFIRMED;
    }
    HIT
}

/// Moves the unconfirmed flow of a packet from its client to the confirmed table: its forward
/// entry with the long lifetime, then its reply entry (or marks its SNAT entry confirmed),
/// then removes the old entries. A reply looked up meanwhile finds its entries in one table or
/// the other, the confirmed one first. On failure the flow stays unconfirmed, and is tried
/// again with its next packet. Entries are copied from map value to map value, never through
/// the stack, which is short under the pod program's frame.
#[inline(never)]
pub fn confirm<F: Track>(pkt: &Packet<F::Addr>, now: u64) {
    let key = FlowKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        dir: FLOW_FORWARD,
        _pad: [0; 2],
    };
    let Some(flow) = F::new_flows().get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: the map's pointer to this entry's value, as in `established`.
    let flow = unsafe { &mut *flow };
    let expires = now + lifetime(pkt.proto, true, flow.flags());
    flow.set_expires(expires);
    if F::flows().insert(&key, &*flow, 0).is_err() {
        count(stats::FLOW_UPDATE_FAILED);
        return;
    }
    if !confirm_partner::<F>(&key, flow, expires) {
        // Without its reply entry the flow cannot stay confirmed.
        let _ = F::flows().remove(&key);
        count(stats::FLOW_UPDATE_FAILED);
        return;
    }
    let _ = F::new_flows().remove(&key);
    count(stats::CONFIRMED);
}

/// [`confirm`]'s move of the reply side: the reply entry to the confirmed table, or the SNAT
/// entry marked confirmed; `false` when the reply entry could not be moved.
#[inline(never)]
fn confirm_partner<F: Track>(key: &FlowKey<F::Addr>, flow: &F::Flow, expires: u64) -> bool {
    if flow.flags() & FLOW_F_SNAT != 0 {
        if let Some(node) = ext::snat_addr::<F>(flow.snat_slot())
            && let Some(snat) = F::snat().get_ptr_mut(&snat_of_forward::<F>(key, flow, node))
        {
            // SAFETY: the map's pointer to this entry's value.
            let snat = unsafe { &mut *snat };
            if snat_is_of::<F>(snat, key) {
                snat.flags |= FLOW_F_CONFIRMED;
                snat.expires_ns = expires;
            }
        }
        return true;
    }
    let reply_key = reply_of_forward::<F>(key, flow);
    let Some(reply) = F::new_flows().get_ptr_mut(&reply_key) else {
        // Evicted, or moved by another CPU: the forward entry still works without it only if
        // it is there.
        // SAFETY: read-only look at a map value.
        return unsafe { F::flows().get(&reply_key) }.is_some();
    };
    // SAFETY: the map's pointer to this entry's value.
    let reply = unsafe { &mut *reply };
    reply.set_expires(expires);
    if F::flows().insert(&reply_key, &*reply, 0).is_err() {
        return false;
    }
    let _ = F::new_flows().remove(&reply_key);
    true
}

/// The service address and port to restore on a reply, from the reply entry of its flow
/// (either table) into `out`; `false` when the packet is not a reply of a live flow. The
/// reply entry refreshes itself and reports to its forward entry what changes the flow's
/// state. A subprogram of its own, for the callers' stack frames.
#[inline(never)]
pub fn reply<F: Track>(pkt: &Packet<F::Addr>, out: &mut Hit<F::Addr>, now: u64) -> bool {
    let key = FlowKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        dir: FLOW_REPLY,
        _pad: [0; 2],
    };
    // A SYN-ACK answers a flow being set up: unconfirmed first. The backend sees one
    // connection per (client, backend) tuple, so a confirmed flow with the same reply key (the
    // client's port reused towards another service of the same backend) is over, and its reply
    // entry must not answer for the new flow; the new flow's takes its place when it is
    // confirmed, before the backend sends anything else.
    let (first, second) = if is_synack(pkt) {
        (false, true)
    } else {
        (true, false)
    };
    let (entry, confirmed) = match table::<F>(first).get_ptr_mut(&key) {
        Some(entry) => (entry, first),
        None => match table::<F>(second).get_ptr_mut(&key) {
            Some(entry) => (entry, second),
            None => return false,
        },
    };
    // SAFETY: as in `established`.
    let entry = unsafe { &mut *entry };
    if now >= entry.expires_ns() || reports(pkt, entry.flags()) {
        let forward = forward_of_reply::<F>(&key, entry);
        let mut flags = 0;
        let expires = report::<F>(&forward, pkt, confirmed, &mut flags, now);
        if expires == 0 {
            return false;
        }
        entry.set_flags(reply_side_flags(entry.flags(), flags));
        entry.set_expires(expires);
    } else {
        entry.set_expires(now + lifetime(pkt.proto, confirmed, entry.flags()));
    }
    out.addr = entry.nat_addr();
    out.port = entry.nat_port();
    out.rev_nat_id = entry.rev_nat_id();
    true
}

/// Tells the forward entry `key` (in the confirmed or unconfirmed table) of a reply: its new
/// expiry, which the reply side takes over, and its new flags into `flags`; 0 when the flow is
/// gone, or expired and the reply is not a TCP segment of it. A subprogram of its own, as
/// above, with a plain integer result (an `Option` would take a sixth argument register).
#[inline(never)]
pub fn report<F: Track>(
    key: &FlowKey<F::Addr>,
    pkt: &Packet<F::Addr>,
    confirmed: bool,
    flags: &mut u8,
    now: u64,
) -> u64 {
    let Some(flow) = table::<F>(confirmed).get_ptr_mut(key) else {
        return 0;
    };
    // SAFETY: as in `established`.
    let flow = unsafe { &mut *flow };
    if now >= flow.expires_ns() && !is_segment(pkt) {
        return 0;
    }
    let new = after(pkt, true, confirmed, flow.flags()) | FLOW_F_REPLIED;
    flow.set_flags(new);
    *flags = new;
    let expires = now + lifetime(pkt.proto, confirmed, new);
    flow.set_expires(expires);
    expires
}

/// Whether the SNAT entry `key` belongs to a live flow: its own expiry is ahead, or its
/// forward entry is there, of this port, and alive. A port whose flow is gone may be taken.
#[inline(never)]
pub fn snat_in_use<F: Track>(key: &FlowKey<F::Addr>, snat: &SnatValue<F::Addr>, now: u64) -> bool {
    if now < snat.expires_ns {
        return true;
    }
    let forward = forward_of_snat::<F>(key, snat);
    // SAFETY: read-only copy of a map value.
    let flow = unsafe { table::<F>(snat.flags & FLOW_F_CONFIRMED != 0).get(&forward) };
    match flow {
        Some(flow) => {
            flow.flags() & FLOW_F_SNAT != 0
                && flow.snat_port() == key.dport
                && flow.nat_addr() == key.saddr
                && now < flow.expires_ns()
        }
        None => false,
    }
}

/// The reply side's work for a reply of a SNATed flow, its SNAT entry `snat` found: refreshes
/// it, reporting to the forward entry when needed; `false` when the flow is gone.
#[inline(never)]
pub fn snat_replied<F: Track>(
    key: &FlowKey<F::Addr>,
    snat: &mut SnatValue<F::Addr>,
    pkt: &Packet<F::Addr>,
    now: u64,
) -> bool {
    let confirmed = snat.flags & FLOW_F_CONFIRMED != 0;
    if now >= snat.expires_ns || reports(pkt, snat.flags) {
        let forward = forward_of_snat::<F>(key, snat);
        let mut flags = 0;
        let expires = report::<F>(&forward, pkt, confirmed, &mut flags, now);
        if expires == 0 {
            return false;
        }
        snat.flags = reply_side_flags(snat.flags, flags);
        snat.expires_ns = expires;
    } else {
        snat.expires_ns = now + lifetime(pkt.proto, confirmed, snat.flags);
    }
    true
}
