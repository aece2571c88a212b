//! Refusing connections to a service port without any endpoint, as kube-proxy's REJECT rules do:
//! the client learns at once ("connection refused") instead of waiting for a timeout.
//!
//! A UDP datagram is answered with an ICMP port unreachable ([`super::icmp`]). A TCP segment is
//! turned into the reset the service address would answer with (RFC 9293,
//! 3.10.7.1: "If the incoming segment has an ACK field, the reset takes its sequence number from
//! the ACK field of the segment, otherwise the reset has sequence number zero and the ACK field
//! is set to the sum of the sequence number and segment length of the incoming segment") and
//! sent back out of the device it came in on. Only words change in place: the addresses and
//! ports are swapped, which leaves every checksum as it is, and sequence numbers, flags and
//! window go through `bpf_l4_csum_replace`, which is right in every checksum state of the skb.
//! Segments carrying data and resets are dropped, as are datagrams an ICMP error must not answer.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_SHOT},
    helpers::bpf_redirect,
    programs::TcContext,
};
use lb_ebpf::{PROTO_TCP, PROTO_UDP, stats};

use super::{
    frame::Frame,
    icmp::{self, Unreachable},
    maps::count,
    parse::Packet,
    tcp::{
        TCP_ACK, TCP_ACK_OFF, TCP_DOFF_OFF, TCP_FIN, TCP_HLEN_MIN, TCP_RST, TCP_SEQ_OFF, TCP_SYN,
        TCP_URG_OFF, TCP_WINDOW_OFF,
    },
};

/// Length of an Ethernet address.
const ETH_ALEN: usize = 6;

/// Per-family facts the answers need: where the IP payload ends and where the addresses sit, and
/// the ICMP answer's own.
pub trait RejectFamily: Unreachable {
    /// Offsets of the source and destination addresses from the start of the IP header.
    const SADDR_OFF: usize;
    /// The offset, from the frame's start, of the end of the IP packet.
    fn ip_end<C: Frame>(ctx: &C, pkt: &Packet<Self::Addr>) -> Result<usize, i64>;
}

impl RejectFamily for super::family::V4 {
    const SADDR_OFF: usize = 12;
    #[inline(always)]
    fn ip_end<C: Frame>(ctx: &C, pkt: &Packet<[u8; 4]>) -> Result<usize, i64> {
        let total = u16::from_be(ctx.load::<u16>(pkt.l3_off + 2)?);
        Ok(pkt.l3_off + usize::from(total))
    }
}

impl RejectFamily for super::family::V6 {
    const SADDR_OFF: usize = 8;
    #[inline(always)]
    fn ip_end<C: Frame>(ctx: &C, pkt: &Packet<[u8; 16]>) -> Result<usize, i64> {
        let payload = u16::from_be(ctx.load::<u16>(pkt.l3_off + 4)?);
        Ok(pkt.l3_off + 40 + usize::from(payload))
    }
}

/// Answers a packet to a service port without endpoints, sent back out of the device it came in
/// on: a reset for TCP, an ICMP port unreachable for UDP; a drop for what gets no answer.
/// Counted as `REJECTED`, once, answered or not.
///
/// The answers are subprograms of their own below this small one: their stack frames then
/// never add up along one call chain.
#[inline(never)]
pub fn reject<F: RejectFamily>(ctx: &TcContext, pkt: &Packet<F::Addr>) -> i32 {
    count(stats::REJECTED);
    let answered = match pkt.proto {
        PROTO_TCP => tcp_reset::<F>(ctx, pkt),
        PROTO_UDP => icmp::unreachable::<F>(ctx, pkt),
        _ => false,
    };
    if !answered {
        // Not a packet to answer, or one half rewritten: never let it on.
        return TC_ACT_SHOT;
    }
    // SAFETY: the skb of a TC program; redirecting to its own device's egress.
    let ifindex = unsafe { (*(ctx.skb.skb as *const __sk_buff)).ifindex };
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// [`reset`] as a subprogram: `true` when the segment was turned into its reset.
#[inline(never)]
fn tcp_reset<F: RejectFamily>(ctx: &TcContext, pkt: &Packet<F::Addr>) -> bool {
    matches!(reset::<F>(ctx, pkt), Ok(true))
}

/// Rewrites a TCP segment into the reset answering it; `false` when it is none to answer.
#[inline(always)]
fn reset<F: RejectFamily>(ctx: &TcContext, pkt: &Packet<F::Addr>) -> Result<bool, i64> {
    if pkt.tcp_flags & TCP_RST != 0 {
        return Ok(false);
    }
    let doff = usize::from(ctx.load::<u8>(pkt.l4_off + TCP_DOFF_OFF)? >> 4) * 4;
    let data_len = F::ip_end(ctx, pkt)?.saturating_sub(pkt.l4_off + doff);
    if doff < TCP_HLEN_MIN || data_len != 0 {
        return Ok(false);
    }
    let seq = u32::from_be(ctx.load::<u32>(pkt.l4_off + TCP_SEQ_OFF)?);
    let ack = ctx.load::<u32>(pkt.l4_off + TCP_ACK_OFF)?;
    let (new_seq, new_ack, new_flags) = if pkt.tcp_flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        let len = u32::from(pkt.tcp_flags & TCP_SYN != 0) + u32::from(pkt.tcp_flags & TCP_FIN != 0);
        (0, seq.wrapping_add(len).to_be(), TCP_RST | TCP_ACK)
    };
    let csum_off = pkt.l4_csum_off();
    replace_u32(
        ctx,
        csum_off,
        pkt.l4_off + TCP_SEQ_OFF,
        seq.to_be(),
        new_seq,
    )?;
    replace_u32(ctx, csum_off, pkt.l4_off + TCP_ACK_OFF, ack, new_ack)?;
    let flags_word_off = pkt.l4_off + TCP_DOFF_OFF;
    let old_word = ctx.load::<[u8; 2]>(flags_word_off)?;
    let new_word = [old_word[0], new_flags];
    replace_u16(ctx, csum_off, flags_word_off, old_word, new_word)?;
    let window_off = pkt.l4_off + TCP_WINDOW_OFF;
    replace_u16(ctx, csum_off, window_off, ctx.load(window_off)?, [0, 0])?;
    let urg_off = pkt.l4_off + TCP_URG_OFF;
    replace_u16(ctx, csum_off, urg_off, ctx.load(urg_off)?, [0, 0])?;
    // Swaps change no checksum: the sums over both fields stay the same.
    ctx.store(pkt.l4_off, &[pkt.dport, pkt.sport], 0)?;
    ctx.store(pkt.l3_off + F::SADDR_OFF, &pkt.daddr, 0)?;
    ctx.store(
        pkt.l3_off + F::SADDR_OFF + core::mem::size_of::<F::Addr>(),
        &pkt.saddr,
        0,
    )?;
    let macs: [[u8; ETH_ALEN]; 2] = ctx.load(0)?;
    ctx.store(0, &[macs[1], macs[0]], 0)?;
    Ok(true)
}

#[inline(always)]
fn replace_u32(
    ctx: &TcContext,
    csum_off: usize,
    off: usize,
    old: u32,
    new: u32,
) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    ctx.l4_csum_replace(csum_off, u64::from(old), u64::from(new), 4)?;
    ctx.store(off, &new, 0)
}

#[inline(always)]
fn replace_u16(
    ctx: &TcContext,
    csum_off: usize,
    off: usize,
    old: [u8; 2],
    new: [u8; 2],
) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    let (o, n) = (u16::from_ne_bytes(old), u16::from_ne_bytes(new));
    ctx.l4_csum_replace(csum_off, u64::from(o), u64::from(n), 2)?;
    ctx.store(off, &new, 0)
}
