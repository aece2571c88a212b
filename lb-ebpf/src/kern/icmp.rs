//! Refusing a UDP datagram to a service port without endpoints the way kube-proxy's REJECT
//! rules do (`nf_send_unreach` -> `icmp_send`, `nf_send_unreach6` -> `icmpv6_send`): an ICMP
//! destination unreachable, port unreachable, from the service address the client sent to, which
//! makes the client's connected socket fail with ECONNREFUSED at once.
//!
//! The answer is built in the skb itself and sent back out of the device the datagram came in
//! on: the tail is cut to the part of the datagram that is quoted (`bpf_skb_change_tail`, which
//! also makes the skb linear and drops its GSO state, "intended for replies with control
//! messages"), room for the new IP and ICMP headers is opened after the Ethernet header
//! (`bpf_skb_adjust_room`, `BPF_ADJ_ROOM_MAC`), and the headers are written there.
//!
//! - Quoted: the invoking IP packet from its IP header on, as much as fits in 576 bytes for
//!   IPv4 (RFC 1812, 4.3.2.3; what Linux's `icmp_send` quotes; RFC 792 asks for at least the IP
//!   header and 8 bytes) and without the ICMPv6 packet exceeding the minimum IPv6 MTU of 1280
//!   bytes (RFC 4443, 2.4 (c) and 3.1).
//! - Never sent (the datagram is dropped): for a datagram to an Ethernet group address or an IP
//!   multicast or broadcast address, or from an address that does not name one host (RFC 1122,
//!   3.2.2; RFC 4443, 2.4 (e)). ICMP and fragments never get here: the parser only hands over
//!   TCP and UDP, and passes fragments on untouched.
//! - Checksums: computed from scratch over the new headers and the quoted bytes. The headers are
//!   stored with `BPF_F_RECOMPUTE_CSUM`, so an skb that stays CHECKSUM_COMPLETE (nothing was
//!   cut) keeps `skb->csum` in step: the room opened is zeros, which change no sum. A cut skb
//!   turns CHECKSUM_NONE (`__skb_trim_rcsum`), which needs nothing. A CHECKSUM_PARTIAL skb (a
//!   local socket's datagram) keeps its pending UDP checksum pointing into the quote, which
//!   [`settle_offload_seed`] makes harmless.

use aya_ebpf::{
    bindings::{BPF_F_RECOMPUTE_CSUM, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::{bpf_csum_diff, bpf_skb_change_tail, bpf_skb_load_bytes},
    programs::TcContext,
};
use lb_ebpf::PROTO_UDP;

use super::{
    family::{Family, V4, V6},
    frame::OUT_OF_BOUNDS,
    parse::Packet,
    reject::RejectFamily,
};

/// Length of an Ethernet address, and the group (multicast/broadcast) bit of its first byte.
const ETH_ALEN: usize = 6;
const ETH_GROUP_BIT: u8 = 0x01;

const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const ICMP_HLEN: usize = 8;
const UDP_HLEN: usize = 8;
const UDP_LEN_OFF: usize = 4;
const UDP_CSUM_OFF: usize = 6;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// ICMP destination unreachable, port unreachable (RFC 792).
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
/// ICMPv6 destination unreachable, port unreachable (RFC 4443, 3.1).
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PORT_UNREACH: u8 = 4;

/// TTL and hop limit of the answer: Linux's default (`net.ipv4.ip_default_ttl`,
/// `net.ipv6.conf.*.hop_limit`).
const TTL: u8 = 64;
/// IPv4 type of service of an ICMP error: precedence "internetwork control" (RFC 1812,
/// 4.3.2.5), as Linux's `icmp_send` sets it.
const TOS_INTERNETCONTROL: u8 = 0xc0;
/// IPv4 "don't fragment": the answer is an atomic datagram, whose identification may be 0
/// (RFC 6864, 4.1); it is never larger than the 576 bytes every host accepts.
const IP_DF: u16 = 0x4000;

/// The largest IPv4 datagram an ICMP error may be (RFC 1812, 4.3.2.3).
const ICMP_MAX_LEN: usize = 576;
/// The minimum IPv6 MTU, which an ICMPv6 error must not exceed (RFC 4443, 2.4 (c)).
const IPV6_MIN_MTU: usize = 1280;

/// Bytes summed per `bpf_csum_diff` call over the quoted data (a multiple of 4, as the helper
/// takes), and enough calls for the longest quote.
const CHUNK: usize = 64;
const MAX_CHUNKS: usize = (IPV6_MIN_MTU - IPV6_HLEN - ICMP_HLEN) / CHUNK + 1;

/// Returned when a datagram is not one to answer.
const NOT_ANSWERED: i64 = 1;

/// A ones' complement sum (RFC 1071) of 16-bit words taken as they lie in memory, as the
/// kernel's `csum_partial` sums them, not yet folded: the sum does not depend on byte order
/// (RFC 1071, 2(B)), so storing the folded result as it lies in memory gives the field in
/// network order.
#[derive(Clone, Copy)]
pub struct Sum(u64);

impl Sum {
    pub const ZERO: Self = Self(0);

    #[inline(always)]
    fn add(self, words: u64) -> Self {
        Self(self.0 + words)
    }

    #[inline(always)]
    fn add_bytes<const N: usize>(self, bytes: &[u8; N]) -> Self {
        let mut sum = self.0;
        let mut i = 0;
        while i + 1 < N {
            sum += u64::from(u16::from_ne_bytes([bytes[i], bytes[i + 1]]));
            i += 2;
        }
        if N % 2 == 1 {
            sum += u64::from(u16::from_ne_bytes([bytes[N - 1], 0]));
        }
        Self(sum)
    }

    /// The sum folded to 16 bits with end-around carry: 0 only for a sum of zeros.
    #[inline(always)]
    fn fold(self) -> u16 {
        let mut sum = self.0;
        let mut i = 0;
        while i < 4 {
            sum = (sum & 0xffff) + (sum >> 16);
            i += 1;
        }
        sum as u16
    }
}

/// Per-family parts of the answer.
pub trait Unreachable: Family {
    /// The outer IP header and the ICMP header, as written in front of the quoted packet.
    type Headers: Copy;
    /// Their length: the room opened after the Ethernet header.
    const HEADERS_LEN: usize;
    /// The most bytes of the invoking packet the answer quotes.
    const MAX_QUOTE: usize;
    /// Whether a datagram from `saddr` to `daddr` may be answered with an ICMP error: the
    /// source names one host, the destination is no multicast or broadcast address.
    fn may_answer(saddr: &Self::Addr, daddr: &Self::Addr) -> bool;
    /// The sum of the UDP pseudo-header of a datagram from `saddr` to `daddr`.
    fn udp_pseudo_header(saddr: &Self::Addr, daddr: &Self::Addr, udp_len: u16) -> Sum;
    /// The headers answering `pkt`, quoting `quote` bytes whose sum is `quoted`: from the
    /// service address to the client, every checksum computed.
    fn headers(pkt: &Packet<Self::Addr>, quote: usize, quoted: Sum) -> Self::Headers;
}

impl Unreachable for V4 {
    type Headers = [u8; IPV4_HLEN + ICMP_HLEN];
    const HEADERS_LEN: usize = IPV4_HLEN + ICMP_HLEN;
    const MAX_QUOTE: usize = ICMP_MAX_LEN - IPV4_HLEN - ICMP_HLEN;

    #[inline(always)]
    fn may_answer(saddr: &[u8; 4], daddr: &[u8; 4]) -> bool {
        // Sources: not "this network" (0/8), loopback (127/8), multicast, class E or the
        // limited broadcast (224/3 and up). Destinations: not multicast, class E or broadcast.
        !matches!(saddr[0], 0 | 127 | 224..=255) && daddr[0] < 224
    }

    #[inline(always)]
    fn udp_pseudo_header(saddr: &[u8; 4], daddr: &[u8; 4], udp_len: u16) -> Sum {
        Sum::ZERO
            .add_bytes(saddr)
            .add_bytes(daddr)
            .add_bytes(&[0, PROTO_UDP])
            .add_bytes(&udp_len.to_be_bytes())
    }

    #[inline(always)]
    fn headers(pkt: &Packet<[u8; 4]>, quote: usize, quoted: Sum) -> Self::Headers {
        let [len_hi, len_lo] = ((IPV4_HLEN + ICMP_HLEN + quote) as u16).to_be_bytes();
        let [df_hi, df_lo] = IP_DF.to_be_bytes();
        let (s, d) = (pkt.daddr, pkt.saddr);
        let mut h = [
            0x45,
            TOS_INTERNETCONTROL,
            len_hi,
            len_lo,
            0,
            0,
            df_hi,
            df_lo,
            TTL,
            IPPROTO_ICMP,
            0,
            0,
            s[0],
            s[1],
            s[2],
            s[3],
            d[0],
            d[1],
            d[2],
            d[3],
            ICMP_DEST_UNREACH,
            ICMP_PORT_UNREACH,
            0,
            0,
            // Unused (RFC 792); no RFC 4884 length: the quote is not padded for extensions.
            0,
            0,
            0,
            0,
        ];
        let ip: [u8; IPV4_HLEN] = [
            h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9], 0, 0, h[12], h[13], h[14],
            h[15], h[16], h[17], h[18], h[19],
        ];
        let [c0, c1] = (!Sum::ZERO.add_bytes(&ip).fold()).to_ne_bytes();
        h[10] = c0;
        h[11] = c1;
        // ICMP's checksum covers the ICMP message alone, no pseudo-header.
        let icmp = [h[20], h[21], 0, 0, 0, 0, 0, 0];
        let [c0, c1] = (!quoted.add_bytes(&icmp).fold()).to_ne_bytes();
        h[22] = c0;
        h[23] = c1;
        h
    }
}

impl Unreachable for V6 {
    type Headers = [u8; IPV6_HLEN + ICMP_HLEN];
    const HEADERS_LEN: usize = IPV6_HLEN + ICMP_HLEN;
    const MAX_QUOTE: usize = IPV6_MIN_MTU - IPV6_HLEN - ICMP_HLEN;

    #[inline(always)]
    fn may_answer(saddr: &[u8; 16], daddr: &[u8; 16]) -> bool {
        let unspecified = *saddr == [0; 16];
        let mut loopback = [0; 16];
        loopback[15] = 1;
        // ff00::/8 is multicast (RFC 4291, 2.7); IPv6 has no broadcast.
        !unspecified && *saddr != loopback && saddr[0] != 0xff && daddr[0] != 0xff
    }

    #[inline(always)]
    fn udp_pseudo_header(saddr: &[u8; 16], daddr: &[u8; 16], udp_len: u16) -> Sum {
        let [hi, lo] = udp_len.to_be_bytes();
        Sum::ZERO
            .add_bytes(saddr)
            .add_bytes(daddr)
            .add_bytes(&[0, 0, hi, lo, 0, 0, 0, PROTO_UDP])
    }

    #[inline(always)]
    fn headers(pkt: &Packet<[u8; 16]>, quote: usize, quoted: Sum) -> Self::Headers {
        let icmp_len = ICMP_HLEN + quote;
        let [len_hi, len_lo] = (icmp_len as u16).to_be_bytes();
        let mut h = [0u8; IPV6_HLEN + ICMP_HLEN];
        // Version 6, traffic class 0, flow label 0, as Linux's `icmpv6_send` by default.
        h[0] = 0x60;
        h[4] = len_hi;
        h[5] = len_lo;
        h[6] = IPPROTO_ICMPV6;
        h[7] = TTL;
        let mut i = 0;
        while i < 16 {
            h[8 + i] = pkt.daddr[i];
            h[24 + i] = pkt.saddr[i];
            i += 1;
        }
        h[40] = ICMPV6_DEST_UNREACH;
        h[41] = ICMPV6_PORT_UNREACH;
        // ICMPv6's checksum covers its pseudo-header too (RFC 4443, 2.3; RFC 8200, 8.1): the
        // addresses, the upper-layer length as 32 bits and the next header.
        let sum = quoted
            .add_bytes(&pkt.daddr)
            .add_bytes(&pkt.saddr)
            .add_bytes(&[0, 0, len_hi, len_lo, 0, 0, 0, IPPROTO_ICMPV6])
            .add_bytes(&[h[40], h[41], 0, 0, 0, 0, 0, 0]);
        let [c0, c1] = (!sum.fold()).to_ne_bytes();
        h[42] = c0;
        h[43] = c1;
        h
    }
}

/// Turns a UDP datagram into the ICMP port unreachable answering it, ready to be sent back out
/// of the device it came in on; `false` when it is none to answer (or the skb could not be
/// rewritten): the caller drops it then.
///
/// The steps are subprograms called one after the other from this small one, so that the
/// stack frames of the headers, the summing buffer and the reshaping never add up.
#[inline(never)]
pub fn unreachable<F: RejectFamily>(ctx: &TcContext, pkt: &Packet<F::Addr>) -> bool {
    let mut plan = Plan {
        quote: 0,
        udp_at: 0,
        seeded: false,
    };
    if prepare::<F>(ctx, pkt, &mut plan) != 0 {
        return false;
    }
    let quote_off = pkt.l3_off + F::HEADERS_LEN;
    if plan.seeded
        && settle_offload_seed(
            ctx,
            quote_off + plan.udp_at,
            plan.quote - plan.udp_at,
            pkt.l4_csum,
        )
        .is_err()
    {
        return false;
    }
    match sum_of(ctx, quote_off, plan.quote) {
        Ok(quoted) => write_headers::<F>(ctx, pkt, plan.quote, quoted) == 0,
        Err(_) => false,
    }
}

/// What [`prepare`] found: the bytes of the invoking packet quoted, where its UDP header starts
/// in them, and whether its checksum field holds an offload seed.
struct Plan {
    quote: usize,
    udp_at: usize,
    seeded: bool,
}

/// Checks the datagram may be answered, then reshapes the skb: cut after the quote, room for
/// the headers after the Ethernet header. 0, or what failed.
#[inline(never)]
fn prepare<F: RejectFamily>(ctx: &TcContext, pkt: &Packet<F::Addr>, plan: &mut Plan) -> i64 {
    let Ok(dest) = ctx.load::<u8>(0) else {
        return OUT_OF_BOUNDS;
    };
    if pkt.proto != PROTO_UDP || dest & ETH_GROUP_BIT != 0 || !F::may_answer(&pkt.saddr, &pkt.daddr)
    {
        return NOT_ANSWERED;
    }
    let l3 = pkt.l3_off;
    // What the IP header claims, within what the frame holds (Ethernet padding excluded).
    let Ok(ip_end) = F::ip_end(ctx, pkt) else {
        return OUT_OF_BOUNDS;
    };
    let quote = ip_end
        .min(ctx.len() as usize)
        .saturating_sub(l3)
        .min(F::MAX_QUOTE);
    let udp_at = pkt.l4_off - l3;
    let Ok(udp_len) = ctx.load::<u16>(pkt.l4_off + UDP_LEN_OFF) else {
        return OUT_OF_BOUNDS;
    };
    let seed = F::udp_pseudo_header(&pkt.saddr, &pkt.daddr, u16::from_be(udp_len)).fold();
    plan.seeded = quote >= udp_at + UDP_HLEN && pkt.l4_csum == seed;
    plan.quote = quote;
    plan.udp_at = udp_at;
    // SAFETY: the skb of a TC program; the helper checks the new length.
    let rc = unsafe { bpf_skb_change_tail(ctx.skb.skb, (l3 + quote) as u32, 0) };
    if rc != 0 {
        return rc;
    }
    match ctx.adjust_room(F::HEADERS_LEN as i32, BPF_ADJ_ROOM_MAC, 0) {
        Ok(()) => 0,
        Err(e) => e,
    }
}

/// Writes the IP and ICMP headers into the room [`prepare`] opened and swaps the Ethernet
/// addresses. 0, or what failed.
#[inline(never)]
fn write_headers<F: RejectFamily>(
    ctx: &TcContext,
    pkt: &Packet<F::Addr>,
    quote: usize,
    quoted: Sum,
) -> i64 {
    let headers = F::headers(pkt, quote, quoted);
    let stored = ctx
        .store(pkt.l3_off, &headers, u64::from(BPF_F_RECOMPUTE_CSUM))
        .and_then(|()| {
            // The room was opened after the Ethernet header: it is still in front.
            let macs: [[u8; ETH_ALEN]; 2] = ctx.load(0)?;
            ctx.store(0, &[macs[1], macs[0]], 0)
        });
    match stored {
        Ok(()) => 0,
        Err(e) => e,
    }
}

/// A datagram sent by a local socket through a device with checksum offload (a pod's veth) is
/// CHECKSUM_PARTIAL: its UDP checksum field holds only the pseudo-header sum (the "seed"), and
/// the skb keeps pointing the offload (`csum_start`, `csum_offset`) at that field, now inside the
/// quote. Should a device on the way complete it (`skb_checksum_help`, or hardware), it would
/// overwrite the quoted field with the complement of the sum of the quoted UDP bytes and break
/// the ICMP checksum. A BPF program can neither see `ip_summed` nor move `csum_start`; so the
/// field is set to the value that completing leaves as it is, whichever way the skb then goes:
/// `X = ~(R + X)`, R the sum of the other quoted UDP bytes, that is `2X = ~R` in ones'
/// complement arithmetic, where doubling is a rotation left by one bit and halving one right.
/// Receivers do not check a quoted checksum (Linux's `__udp4_lib_err`/`__udp6_lib_err` read the
/// ports alone).
///
/// A complete checksum that happens to equal the seed (one datagram in 65536) is settled the
/// same way: the only cost is a quoted checksum that differs from the one sent.
#[inline(always)]
fn settle_offload_seed(
    ctx: &TcContext,
    udp_off: usize,
    udp_quoted: usize,
    seed: u16,
) -> Result<(), i64> {
    let with_seed = sum_of(ctx, udp_off, udp_quoted)?;
    // Take the seed out: adding its complement subtracts it (RFC 1624).
    let rest = with_seed.add(u64::from(!seed)).fold();
    let mut settled = (!rest).rotate_right(1);
    if settled == 0 {
        // The same value in ones' complement; 0 would read as "no checksum" over IPv4.
        settled = 0xffff;
    }
    ctx.store(
        udp_off + UDP_CSUM_OFF,
        &settled,
        u64::from(BPF_F_RECOMPUTE_CSUM),
    )
}

/// The sum of `len` bytes of the skb from `off`, an even offset from where the sum that adds
/// them starts (so their words line up).
///
/// Read through `bpf_skb_load_bytes` into a buffer on the stack, which is summed by
/// `bpf_csum_diff`: checks of packet pointers with a variable offset that LLVM keeps in a form
/// the verifier follows are more fragile than the copy, on a path that is not a fast one. A
/// subprogram of its own, for the buffer's stack.
#[inline(never)]
fn sum_frame(ctx: &TcContext, off: usize, len: usize, out: &mut Sum) -> i64 {
    let mut buf = [0u32; CHUNK / 4];
    let mut sum = Sum::ZERO;
    let mut done = 0;
    let mut chunks = 0;
    while chunks < MAX_CHUNKS && done + CHUNK <= len {
        // SAFETY: the helper writes at most the buffer's size, which is passed.
        let rc = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                (off + done) as u32,
                buf.as_mut_ptr().cast(),
                CHUNK as u32,
            )
        };
        if rc != 0 {
            return rc;
        }
        // SAFETY: as above; the helper only reads the buffer.
        let s =
            unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, buf.as_mut_ptr(), CHUNK as u32, 0) };
        if s < 0 {
            return s;
        }
        sum = sum.add(s as u64);
        done += CHUNK;
        chunks += 1;
    }
    let mut words = 0;
    while words < CHUNK / 2 && done + 2 <= len {
        let Ok(word) = ctx.load::<[u8; 2]>(off + done) else {
            return OUT_OF_BOUNDS;
        };
        sum = sum.add_bytes(&word);
        done += 2;
        words += 1;
    }
    if done < len {
        let Ok(last) = ctx.load::<u8>(off + done) else {
            return OUT_OF_BOUNDS;
        };
        sum = sum.add_bytes(&[last]);
    }
    *out = sum;
    0
}

#[inline(always)]
fn sum_of(ctx: &TcContext, off: usize, len: usize) -> Result<Sum, i64> {
    let mut sum = Sum::ZERO;
    match sum_frame(ctx, off, len, &mut sum) {
        0 => Ok(sum),
        e => Err(e),
    }
}
