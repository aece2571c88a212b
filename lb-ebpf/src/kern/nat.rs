//! Checksum-correct rewriting of addresses and ports.
//!
//! The csum helpers handle every `ip_summed` state the skb may be in (including
//! CHECKSUM_PARTIAL from veth, where only the pseudo-header part may be touched), which a
//! hand-written checksum update would get wrong.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use lb_ebpf::PROTO_UDP;

use super::parse::Packet;

/// Offsets of the addresses inside the IPv4 and IPv6 headers.
const IPV4_CSUM_OFF: usize = 10;
const IPV4_SADDR_OFF: usize = 12;
const IPV4_DADDR_OFF: usize = 16;
const IPV6_SADDR_OFF: usize = 8;
const IPV6_DADDR_OFF: usize = 24;

/// Which end of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

/// Extra checksum flags: a UDP checksum of zero means "none" over IPv4 and must stay zero; a
/// computed zero must be written as 0xffff (RFC 768).
#[inline(always)]
fn l4_flags<A>(pkt: &Packet<A>) -> u64 {
    if pkt.proto == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    }
}

/// Rewrites the source or destination port.
#[inline(always)]
pub fn rewrite_port<A>(ctx: &TcContext, pkt: &Packet<A>, end: End, new: u16) -> Result<(), i64> {
    let (off, old) = match end {
        End::Source => (pkt.l4_off, pkt.sport),
        End::Destination => (pkt.l4_off + 2, pkt.dport),
    };
    if old == new {
        return Ok(());
    }
    // A UDP datagram without checksum has no field to absorb the port change, so on a
    // CHECKSUM_COMPLETE skb the store itself must bring `skb->csum` up to date (a no-op in every
    // other checksum state). With a checksum, the update below balances the change instead.
    let store_flags = if pkt.proto == PROTO_UDP && pkt.l4_csum == 0 {
        u64::from(BPF_F_RECOMPUTE_CSUM)
    } else {
        0
    };
    ctx.l4_csum_replace(
        pkt.l4_csum_off(),
        u64::from(old),
        u64::from(new),
        l4_flags(pkt) | 2,
    )?;
    ctx.store(off, &new, store_flags)
}

/// Rewrites an IPv4 address: IP header checksum and the L4 pseudo-header checksum.
#[inline(always)]
pub fn rewrite_v4_addr(
    ctx: &TcContext,
    pkt: &Packet<[u8; 4]>,
    end: End,
    new: [u8; 4],
) -> Result<(), i64> {
    let (off, old) = match end {
        End::Source => (IPV4_SADDR_OFF, pkt.saddr),
        End::Destination => (IPV4_DADDR_OFF, pkt.daddr),
    };
    if old == new {
        return Ok(());
    }
    let (old, new_raw) = (u32::from_ne_bytes(old), u32::from_ne_bytes(new));
    ctx.l3_csum_replace(
        pkt.l3_off + IPV4_CSUM_OFF,
        u64::from(old),
        u64::from(new_raw),
        4,
    )?;
    ctx.l4_csum_replace(
        pkt.l4_csum_off(),
        u64::from(old),
        u64::from(new_raw),
        u64::from(BPF_F_PSEUDO_HDR) | l4_flags(pkt) | 4,
    )?;
    ctx.store(pkt.l3_off + off, &new, 0)
}

/// Rewrites an IPv6 address: IPv6 has no header checksum, only the L4 pseudo-header one.
#[inline(always)]
pub fn rewrite_v6_addr(
    ctx: &TcContext,
    pkt: &Packet<[u8; 16]>,
    end: End,
    new: [u8; 16],
) -> Result<(), i64> {
    let (off, old) = match end {
        End::Source => (IPV6_SADDR_OFF, pkt.saddr),
        End::Destination => (IPV6_DADDR_OFF, pkt.daddr),
    };
    if old == new {
        return Ok(());
    }
    let mut from = words(old);
    let mut to = words(new);
    // SAFETY: both buffers are 16 bytes on this stack frame, as the sizes passed say.
    let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
    if diff < 0 {
        return Err(diff);
    }
    // Size 0 in the flags: `to` is a checksum difference rather than a 2- or 4-byte field.
    ctx.l4_csum_replace(
        pkt.l4_csum_off(),
        0,
        diff as u64,
        u64::from(BPF_F_PSEUDO_HDR) | l4_flags(pkt),
    )?;
    // On a CHECKSUM_COMPLETE skb the pseudo-header update above also takes the address change
    // out of `skb->csum`, as if an IPv4 header checksum had absorbed it; IPv6 has none, so the
    // store must put it back (a no-op in every other checksum state). BPF_F_IPV6 on the L4
    // update does the same, but only kernels with commit ead7f9b8de65 ("bpf: Fix L4 csum update
    // on IPv6 in CHECKSUM_COMPLETE", 6.16) accept it.
    ctx.store(pkt.l3_off + off, &new, u64::from(BPF_F_RECOMPUTE_CSUM))
}

#[inline(always)]
fn words(addr: [u8; 16]) -> [u32; 4] {
    let mut out = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        out[i] = u32::from_ne_bytes([
            addr[i * 4],
            addr[i * 4 + 1],
            addr[i * 4 + 2],
            addr[i * 4 + 3],
        ]);
        i += 1;
    }
    out
}
