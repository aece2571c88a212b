//! Header parsing, written once for TC and XDP over [`Frame`].

use lb_ebpf::{PROTO_TCP, PROTO_UDP, stats};

use super::{
    frame::Frame,
    maps::count,
    tcp::{TCP_CSUM_OFF, TCP_FLAGS_OFF},
};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;

const IPV6_HLEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers walked before giving up (Cilium walks the same number).
const MAX_EXT_HEADERS: usize = 4;

/// IPv4 "more fragments" flag and fragment offset bits, host order.
const IP_MF_OFFSET_MASK: u16 = 0x3fff;

const UDP_CSUM_OFF: usize = 6;

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: [u8; 4],
    daddr: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Hdr {
    vtc_flow: [u8; 4],
    payload_len: u16,
    nexthdr: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// A TCP or UDP packet the load balancer may translate.
#[derive(Clone, Copy)]
pub struct Packet<A> {
    pub saddr: A,
    pub daddr: A,
    /// Network byte order, as on the wire.
    pub sport: u16,
    /// Network byte order, as on the wire.
    pub dport: u16,
    pub proto: u8,
    /// TCP flags byte; 0 for UDP.
    pub tcp_flags: u8,
    /// The TCP or UDP checksum field as read (0 on UDP over IPv4 means "no checksum").
    pub l4_csum: u16,
    /// Offset of the IP header.
    pub l3_off: usize,
    /// Offset of the TCP or UDP header.
    pub l4_off: usize,
}

impl<A> Packet<A> {
    /// Offset of the TCP or UDP checksum.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        self.l4_off
            + if self.proto == PROTO_TCP {
                TCP_CSUM_OFF
            } else {
                UDP_CSUM_OFF
            }
    }
}

/// Result of parsing: a translatable packet of either family, or anything else.
pub enum Parsed {
    V4(Packet<[u8; 4]>),
    V6(Packet<[u8; 16]>),
    /// Not TCP/UDP over IP, a fragment, or headers we do not walk: passed on untouched.
    Other,
}

#[inline(always)]
pub fn parse<C: Frame>(ctx: &C) -> Result<Parsed, i64> {
    match eth_proto(ctx)? {
        ETH_P_IP => parse_v4(ctx, ETH_HLEN),
        ETH_P_IPV6 => parse_v6(ctx, ETH_HLEN),
        _ => Ok(Parsed::Other),
    }
}

/// The Ethernet protocol of the frame, host order.
#[inline(always)]
pub fn eth_proto<C: Frame>(ctx: &C) -> Result<u16, i64> {
    Ok(u16::from_be(ctx.load::<u16>(12)?))
}

#[inline(always)]
pub fn parse_v4<C: Frame>(ctx: &C, l3_off: usize) -> Result<Parsed, i64> {
    let ip: Ipv4Hdr = ctx.load(l3_off)?;
    let ihl = usize::from(ip.ver_ihl & 0x0f) * 4;
    if ip.ver_ihl >> 4 != 4 || ihl < core::mem::size_of::<Ipv4Hdr>() {
        return Ok(Parsed::Other);
    }
    if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
        return Ok(Parsed::Other);
    }
    // Only the first fragment carries ports; translating it alone would split the datagram
    // between two destinations, so fragments are left alone by rule.
    if u16::from_be(ip.frag_off) & IP_MF_OFFSET_MASK != 0 {
        count(stats::FRAGMENTS);
        return Ok(Parsed::Other);
    }
    let l4_off = l3_off + ihl;
    let (sport, dport, tcp_flags, l4_csum) = load_l4(ctx, ip.proto, l4_off)?;
    Ok(Parsed::V4(Packet {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport,
        dport,
        proto: ip.proto,
        tcp_flags,
        l4_csum,
        l3_off,
        l4_off,
    }))
}

#[inline(always)]
pub fn parse_v6<C: Frame>(ctx: &C, l3_off: usize) -> Result<Parsed, i64> {
    let ip: Ipv6Hdr = ctx.load(l3_off)?;
    if ip.vtc_flow[0] >> 4 != 6 {
        return Ok(Parsed::Other);
    }
    let mut nexthdr = ip.nexthdr;
    let mut off = l3_off + IPV6_HLEN;
    for _ in 0..MAX_EXT_HEADERS {
        match nexthdr {
            PROTO_TCP | PROTO_UDP => break,
            NEXTHDR_HOP | NEXTHDR_DEST => {
                let [next, len]: [u8; 2] = ctx.load(off)?;
                nexthdr = next;
                off += (usize::from(len) + 1) * 8;
            }
            NEXTHDR_ROUTING => {
                let [next, len, _kind, segments_left]: [u8; 4] = ctx.load(off)?;
                // With segments left, the destination address is only the next hop.
                if segments_left != 0 {
                    return Ok(Parsed::Other);
                }
                nexthdr = next;
                off += (usize::from(len) + 1) * 8;
            }
            NEXTHDR_AUTH => {
                let [next, len]: [u8; 2] = ctx.load(off)?;
                nexthdr = next;
                off += (usize::from(len) + 2) * 4;
            }
            NEXTHDR_FRAGMENT => {
                count(stats::FRAGMENTS);
                return Ok(Parsed::Other);
            }
            _ => return Ok(Parsed::Other),
        }
    }
    if nexthdr != PROTO_TCP && nexthdr != PROTO_UDP {
        count(stats::UNPARSED_EXT_HEADERS);
        return Ok(Parsed::Other);
    }
    let (sport, dport, tcp_flags, l4_csum) = load_l4(ctx, nexthdr, off)?;
    Ok(Parsed::V6(Packet {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport,
        dport,
        proto: nexthdr,
        tcp_flags,
        l4_csum,
        l3_off,
        l4_off: off,
    }))
}

#[inline(always)]
fn load_l4<C: Frame>(ctx: &C, proto: u8, l4_off: usize) -> Result<(u16, u16, u8, u16), i64> {
    let [sport, dport]: [u16; 2] = ctx.load(l4_off)?;
    let (tcp_flags, csum_off) = if proto == PROTO_TCP {
        (ctx.load::<u8>(l4_off + TCP_FLAGS_OFF)?, TCP_CSUM_OFF)
    } else {
        (0, UDP_CSUM_OFF)
    };
    // The checksum is the last byte a translation rewrites: a header cut before it must fail
    // here, before a flow is recorded for a packet the rewrite would then leave untranslated.
    let l4_csum = ctx.load::<u16>(l4_off + csum_off)?;
    Ok((sport, dport, tcp_flags, l4_csum))
}
