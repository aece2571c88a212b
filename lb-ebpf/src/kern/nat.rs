//! Checksum-correct rewriting of addresses and ports, for TC and XDP behind one trait.
//!
//! TC uses the csum helpers, which handle every `ip_summed` state the skb may be in (including
//! CHECKSUM_PARTIAL from veth, where only the pseudo-header part may be touched), which a
//! hand-written checksum update would get wrong. XDP frames have no skb and no checksum state:
//! their checksums are complete, and are updated incrementally by hand (RFC 1624).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM},
    helpers::bpf_csum_diff,
    programs::{TcContext, XdpContext},
};
use lb_ebpf::PROTO_UDP;

use super::{
    frame::{Frame, xdp_ptr},
    parse::Packet,
};

/// A packet whose addresses and ports can be rewritten with their checksums kept right.
pub trait Rewrite: Frame {
    /// Rewrites the source or destination port.
    fn rewrite_port<A>(&self, pkt: &Packet<A>, end: End, new: u16) -> Result<(), i64>;
    /// Rewrites an IPv4 address: IP header checksum and the L4 pseudo-header checksum.
    fn rewrite_v4_addr(&self, pkt: &Packet<[u8; 4]>, end: End, new: [u8; 4]) -> Result<(), i64>;
    /// Rewrites an IPv6 address: IPv6 has no header checksum, only the L4 pseudo-header one.
    fn rewrite_v6_addr(&self, pkt: &Packet<[u8; 16]>, end: End, new: [u8; 16]) -> Result<(), i64>;
}

impl Rewrite for TcContext {
    #[inline(always)]
    fn rewrite_port<A>(&self, pkt: &Packet<A>, end: End, new: u16) -> Result<(), i64> {
        rewrite_port(self, pkt, end, new)
    }
    #[inline(always)]
    fn rewrite_v4_addr(&self, pkt: &Packet<[u8; 4]>, end: End, new: [u8; 4]) -> Result<(), i64> {
        rewrite_v4_addr(self, pkt, end, new)
    }
    #[inline(always)]
    fn rewrite_v6_addr(&self, pkt: &Packet<[u8; 16]>, end: End, new: [u8; 16]) -> Result<(), i64> {
        rewrite_v6_addr(self, pkt, end, new)
    }
}

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

/// TC: rewrites the source or destination port.
#[inline(always)]
fn rewrite_port<A>(ctx: &TcContext, pkt: &Packet<A>, end: End, new: u16) -> Result<(), i64> {
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

/// TC: rewrites an IPv4 address.
#[inline(always)]
fn rewrite_v4_addr(
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

/// TC: rewrites an IPv6 address.
#[inline(always)]
fn rewrite_v6_addr(
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

/// XDP: a 16-bit ones' complement checksum updated for words changing from `old` to `new`
/// (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`). Words are taken as they lie in memory: the
/// ones' complement sum does not depend on byte order (RFC 1071, 2(B)).
#[derive(Clone, Copy)]
struct CsumUpdate(u32);

impl CsumUpdate {
    #[inline(always)]
    fn new(check: u16) -> Self {
        Self(u32::from(!check))
    }
    #[inline(always)]
    fn replace(&mut self, old: u16, new: u16) {
        self.0 += u32::from(!old) + u32::from(new);
    }
    #[inline(always)]
    fn replace_bytes<const N: usize>(&mut self, old: &[u8; N], new: &[u8; N]) {
        let mut i = 0;
        while i + 1 < N {
            self.replace(
                u16::from_ne_bytes([old[i], old[i + 1]]),
                u16::from_ne_bytes([new[i], new[i + 1]]),
            );
            i += 2;
        }
    }
    #[inline(always)]
    fn finish(self) -> u16 {
        let mut sum = self.0;
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        !(sum as u16)
    }
}

/// XDP: updates the TCP/UDP checksum for words changing from `old` to `new`. A UDP checksum of
/// zero means "none" (IPv4) and stays zero; a computed zero is sent as 0xffff (RFC 768).
#[inline(always)]
fn xdp_l4_update<A, const N: usize>(
    ctx: &XdpContext,
    pkt: &Packet<A>,
    old: &[u8; N],
    new: &[u8; N],
) -> Result<(), i64> {
    let field = xdp_ptr::<u16>(ctx, pkt.l4_csum_off())?;
    // SAFETY: `xdp_ptr` checked the bounds; unaligned access as the frame has no alignment.
    let check = unsafe { core::ptr::read_unaligned(field) };
    if pkt.proto == PROTO_UDP && check == 0 {
        return Ok(());
    }
    let mut update = CsumUpdate::new(check);
    update.replace_bytes(old, new);
    let mut check = update.finish();
    if pkt.proto == PROTO_UDP && check == 0 {
        check = 0xffff;
    }
    // SAFETY: as above.
    unsafe { core::ptr::write_unaligned(field, check) };
    Ok(())
}

/// XDP: stores `new` at `off`.
#[inline(always)]
fn xdp_store<T: Copy>(ctx: &XdpContext, off: usize, new: &T) -> Result<(), i64> {
    let ptr = xdp_ptr::<T>(ctx, off)?;
    // SAFETY: `xdp_ptr` checked the bounds.
    unsafe { core::ptr::write_unaligned(ptr, *new) };
    Ok(())
}

/// Errors of the XDP rewrites as plain integers (0: done), as their subprograms return them.
#[inline(always)]
fn status(r: Result<(), i64>) -> i64 {
    match r {
        Ok(()) => 0,
        Err(e) => e,
    }
}

#[inline(always)]
fn result(status: i64) -> Result<(), i64> {
    if status == 0 { Ok(()) } else { Err(status) }
}

// The XDP rewrites are subprograms of their own: hand-written checksum updates take stack, and
// the translations that chain several of them would otherwise exceed the verifier's 512 bytes.

#[inline(never)]
fn xdp_port<A>(ctx: &XdpContext, pkt: &Packet<A>, end: End, new: u16) -> i64 {
    let (off, old) = match end {
        End::Source => (pkt.l4_off, pkt.sport),
        End::Destination => (pkt.l4_off + 2, pkt.dport),
    };
    if old == new {
        return 0;
    }
    status(
        xdp_l4_update(ctx, pkt, &old.to_ne_bytes(), &new.to_ne_bytes())
            .and_then(|()| xdp_store(ctx, off, &new)),
    )
}

#[inline(never)]
fn xdp_v4_addr(ctx: &XdpContext, pkt: &Packet<[u8; 4]>, end: End, new: &[u8; 4]) -> i64 {
    let (off, old) = match end {
        End::Source => (IPV4_SADDR_OFF, &pkt.saddr),
        End::Destination => (IPV4_DADDR_OFF, &pkt.daddr),
    };
    if old == new {
        return 0;
    }
    status((|| {
        let field = xdp_ptr::<u16>(ctx, pkt.l3_off + IPV4_CSUM_OFF)?;
        // SAFETY: `xdp_ptr` checked the bounds.
        let check = unsafe { core::ptr::read_unaligned(field) };
        let mut update = CsumUpdate::new(check);
        update.replace_bytes(old, new);
        // SAFETY: as above.
        unsafe { core::ptr::write_unaligned(field, update.finish()) };
        xdp_l4_update(ctx, pkt, old, new)?;
        xdp_store(ctx, pkt.l3_off + off, new)
    })())
}

#[inline(never)]
fn xdp_v6_addr(ctx: &XdpContext, pkt: &Packet<[u8; 16]>, end: End, new: &[u8; 16]) -> i64 {
    let (off, old) = match end {
        End::Source => (IPV6_SADDR_OFF, &pkt.saddr),
        End::Destination => (IPV6_DADDR_OFF, &pkt.daddr),
    };
    if old == new {
        return 0;
    }
    status(xdp_l4_update(ctx, pkt, old, new).and_then(|()| xdp_store(ctx, pkt.l3_off + off, new)))
}

impl Rewrite for XdpContext {
    #[inline(always)]
    fn rewrite_port<A>(&self, pkt: &Packet<A>, end: End, new: u16) -> Result<(), i64> {
        result(xdp_port(self, pkt, end, new))
    }

    #[inline(always)]
    fn rewrite_v4_addr(&self, pkt: &Packet<[u8; 4]>, end: End, new: [u8; 4]) -> Result<(), i64> {
        result(xdp_v4_addr(self, pkt, end, &new))
    }

    #[inline(always)]
    fn rewrite_v6_addr(&self, pkt: &Packet<[u8; 16]>, end: End, new: [u8; 16]) -> Result<(), i64> {
        result(xdp_v6_addr(self, pkt, end, &new))
    }
}
