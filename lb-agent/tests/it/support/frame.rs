//! Ethernet frames built by hand, and an RFC 1071 checksum written independently of the kernel:
//! the expected packets of the packet tests are built here from scratch, never derived from what
//! a program returned.

use std::net::{IpAddr, SocketAddr};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;

const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const ICMP_HLEN: usize = 8;
const ARP_LEN: usize = 28;
/// Every extension header these tests build is 8 bytes long (RFC 8200, section 4).
const EXT_HLEN: usize = 8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// IPv4 "more fragments" flag in the flags/fragment-offset field (RFC 791).
pub const IP_MF: u16 = 0x2000;
/// IPv4 "don't fragment" flag.
pub const IP_DF: u16 = 0x4000;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// What follows the IP header(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP with sequence number 0x0a0b0c0d, acknowledgement 0x01020304 when ACK is set (else
    /// 0), window 64240.
    Tcp {
        flags: u8,
    },
    /// TCP with every header field given.
    TcpWith {
        flags: u8,
        seq: u32,
        ack: u32,
        window: u16,
    },
    Udp,
    /// UDP over IPv4 without a checksum: zero means "none" (RFC 768).
    UdpNoChecksum,
    /// ICMP echo request over IPv4, ICMPv6 echo request over IPv6.
    IcmpEcho,
}

/// An IPv6 extension header placed before the transport header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    HopByHop,
    DestOpts,
    /// First fragment (offset 0); `more` sets the M flag.
    Fragment {
        more: bool,
    },
    /// A later fragment: offset 1480 bytes (in 8-byte units, 185), M flag set.
    LaterFragment,
}

/// A TCP, UDP or ICMP packet in an Ethernet frame. Every field not named here is fixed, so two
/// packets that differ only in addresses and ports differ only in those bytes and the checksums.
#[derive(Clone, Debug)]
pub struct Packet {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub transport: Transport,
    pub payload: Vec<u8>,
    /// IPv4 flags and fragment offset, host order.
    pub frag_off: u16,
    /// IPv4 options, a multiple of 4 bytes.
    pub ipv4_options: Vec<u8>,
    /// IPv6 extension headers, outermost first.
    pub ipv6_ext: Vec<Ext>,
}

impl Packet {
    pub fn new(src: SocketAddr, dst: SocketAddr, transport: Transport) -> Self {
        assert_eq!(
            src.is_ipv4(),
            dst.is_ipv4(),
            "{src} and {dst} are of different families"
        );
        let payload = match transport {
            Transport::Tcp { .. } | Transport::TcpWith { .. } => Vec::new(),
            // Odd length on purpose: the checksum then covers a padded last word.
            Transport::Udp | Transport::UdpNoChecksum => b"hello".to_vec(),
            Transport::IcmpEcho => b"pingpong".to_vec(),
        };
        Self {
            src,
            dst,
            transport,
            payload,
            frag_off: IP_DF,
            ipv4_options: Vec::new(),
            ipv6_ext: Vec::new(),
        }
    }

    pub fn tcp(src: SocketAddr, dst: SocketAddr, flags: u8) -> Self {
        Self::new(src, dst, Transport::Tcp { flags })
    }

    pub fn udp(src: SocketAddr, dst: SocketAddr) -> Self {
        Self::new(src, dst, Transport::Udp)
    }

    /// The same packet with another destination.
    pub fn to(mut self, dst: SocketAddr) -> Self {
        self.dst = dst;
        self
    }

    /// The same packet with another source.
    pub fn from(mut self, src: SocketAddr) -> Self {
        self.src = src;
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub fn frag_off(mut self, frag_off: u16) -> Self {
        self.frag_off = frag_off;
        self
    }

    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        assert_eq!(options.len() % 4, 0, "IPv4 options are 32-bit words");
        self.ipv4_options = options.to_vec();
        self
    }

    pub fn ext(mut self, ext: Ext) -> Self {
        self.ipv6_ext.push(ext);
        self
    }

    fn l4_proto(&self) -> u8 {
        match self.transport {
            Transport::Tcp { .. } | Transport::TcpWith { .. } => IPPROTO_TCP,
            Transport::Udp | Transport::UdpNoChecksum => IPPROTO_UDP,
            Transport::IcmpEcho if self.src.is_ipv4() => IPPROTO_ICMP,
            Transport::IcmpEcho => IPPROTO_ICMPV6,
        }
    }

    /// The transport header and payload, checksum included.
    fn l4(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        let csum_off = match self.transport {
            Transport::Tcp { .. } | Transport::TcpWith { .. } => {
                let (flags, seq, ack, window) = match self.transport {
                    Transport::TcpWith {
                        flags,
                        seq,
                        ack,
                        window,
                    } => (flags, seq, ack, window),
                    Transport::Tcp { flags } => {
                        let ack = if flags & TCP_ACK != 0 { 0x0102_0304 } else { 0 };
                        (flags, 0x0a0b_0c0d, ack, 64240)
                    }
                    _ => unreachable!(),
                };
                l4.extend(self.src.port().to_be_bytes());
                l4.extend(self.dst.port().to_be_bytes());
                l4.extend(seq.to_be_bytes());
                l4.extend(ack.to_be_bytes());
                l4.push(((TCP_HLEN / 4) as u8) << 4);
                l4.push(flags);
                l4.extend(window.to_be_bytes());
                l4.extend([0, 0]); // checksum
                l4.extend([0, 0]); // urgent pointer
                16
            }
            Transport::Udp | Transport::UdpNoChecksum => {
                l4.extend(self.src.port().to_be_bytes());
                l4.extend(self.dst.port().to_be_bytes());
                l4.extend(((UDP_HLEN + self.payload.len()) as u16).to_be_bytes());
                l4.extend([0, 0]);
                6
            }
            Transport::IcmpEcho => {
                let kind = if self.src.is_ipv4() { 8 } else { 128 };
                l4.extend([kind, 0, 0, 0]);
                l4.extend(0x4242_u16.to_be_bytes()); // identifier
                l4.extend(7_u16.to_be_bytes()); // sequence
                2
            }
        };
        l4.extend(&self.payload);
        let csum = match (self.transport, self.src.ip(), self.dst.ip()) {
            (Transport::UdpNoChecksum, IpAddr::V4(_), _) => 0,
            (Transport::UdpNoChecksum, IpAddr::V6(_), _) => {
                panic!("a zero UDP checksum is only valid over IPv4")
            }
            // ICMPv4 covers only its own message.
            (Transport::IcmpEcho, IpAddr::V4(_), _) => checksum(&l4),
            (transport, src, dst) => {
                let c = checksum(
                    &[
                        pseudo_header(src, dst, self.l4_proto(), l4.len()),
                        l4.clone(),
                    ]
                    .concat(),
                );
                // A computed zero is sent as all ones: zero means "no checksum" (RFC 768).
                if c == 0 && matches!(transport, Transport::Udp) {
                    0xffff
                } else {
                    c
                }
            }
        };
        l4[csum_off..csum_off + 2].copy_from_slice(&csum.to_be_bytes());
        l4
    }

    /// The Ethernet frame, every checksum computed from scratch.
    pub fn frame(&self) -> Vec<u8> {
        let l4 = self.l4();
        let mut frame = Vec::new();
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend(eth_header(ETH_P_IP));
                let hlen = IPV4_HLEN + self.ipv4_options.len();
                let mut ip = Vec::with_capacity(hlen);
                ip.push(0x40 | (hlen / 4) as u8);
                ip.push(0); // DSCP/ECN
                ip.extend(((hlen + l4.len()) as u16).to_be_bytes());
                ip.extend(0x1c46_u16.to_be_bytes()); // identification
                ip.extend(self.frag_off.to_be_bytes());
                ip.push(64); // TTL
                ip.push(self.l4_proto());
                ip.extend([0, 0]);
                ip.extend(src.octets());
                ip.extend(dst.octets());
                ip.extend(&self.ipv4_options);
                let csum = checksum(&ip);
                ip[10..12].copy_from_slice(&csum.to_be_bytes());
                frame.extend(ip);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame.extend(eth_header(ETH_P_IPV6));
                let first = self
                    .ipv6_ext
                    .first()
                    .map_or(self.l4_proto(), |e| ext_number(*e));
                // Version 6, traffic class 0, flow label 0xbeef5.
                frame.extend([0x60, 0x0b, 0xee, 0xf5]);
                let payload_len = self.ipv6_ext.len() * EXT_HLEN + l4.len();
                frame.extend((payload_len as u16).to_be_bytes());
                frame.push(first);
                frame.push(64); // hop limit
                frame.extend(src.octets());
                frame.extend(dst.octets());
                for (i, ext) in self.ipv6_ext.iter().enumerate() {
                    let next = self
                        .ipv6_ext
                        .get(i + 1)
                        .map_or(self.l4_proto(), |e| ext_number(*e));
                    frame.extend(match ext {
                        // One PadN option filling the header (RFC 8200, section 4.2).
                        Ext::HopByHop | Ext::DestOpts => [next, 0, 1, 4, 0, 0, 0, 0],
                        Ext::Fragment { more } => {
                            [next, 0, 0, u8::from(*more), 0xde, 0xad, 0xbe, 0xef]
                        }
                        // Offset 185 << 3 | M.
                        Ext::LaterFragment => [next, 0, 0x05, 0xc9, 0xde, 0xad, 0xbe, 0xef],
                    });
                }
            }
            _ => panic!("{} and {} are of different families", self.src, self.dst),
        }
        frame.extend(l4);
        frame
    }
}

fn ext_number(ext: Ext) -> u8 {
    match ext {
        Ext::HopByHop => IPPROTO_HOPOPTS,
        Ext::DestOpts => IPPROTO_DSTOPTS,
        Ext::Fragment { .. } | Ext::LaterFragment => IPPROTO_FRAGMENT,
    }
}

fn eth_header(ethertype: u16) -> Vec<u8> {
    [
        &GATEWAY_MAC[..],
        &CLIENT_MAC[..],
        &ethertype.to_be_bytes()[..],
    ]
    .concat()
}

/// An ARP request (RFC 826) asking for `target`.
/// `frame` with its Ethernet source and destination swapped: what a program sends back out of
/// the device the frame came in on.
pub fn macs_swapped(mut frame: Vec<u8>) -> Vec<u8> {
    let (dst, src) = (frame[0..6].to_vec(), frame[6..12].to_vec());
    frame[0..6].copy_from_slice(&src);
    frame[6..12].copy_from_slice(&dst);
    frame
}

pub fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut frame = [
        &[0xff; 6][..],
        &CLIENT_MAC[..],
        &ETH_P_ARP.to_be_bytes()[..],
    ]
    .concat();
    frame.extend(1_u16.to_be_bytes()); // hardware type: Ethernet
    frame.extend(ETH_P_IP.to_be_bytes());
    frame.extend([6, 4]);
    frame.extend(1_u16.to_be_bytes()); // request
    frame.extend(CLIENT_MAC);
    frame.extend(sender);
    frame.extend([0; 6]);
    frame.extend(target);
    assert_eq!(frame.len(), ETH_HLEN + ARP_LEN);
    frame
}

/// The TCP/UDP pseudo-header: RFC 793/768 for IPv4, RFC 8200 section 8.1 for IPv6.
pub fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, l4_len: usize) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = [s.octets(), d.octets()].concat();
            p.extend([0, proto]);
            p.extend((l4_len as u16).to_be_bytes());
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = [s.octets(), d.octets()].concat();
            p.extend((l4_len as u32).to_be_bytes());
            p.extend([0, 0, 0, proto]);
            p
        }
        _ => panic!("{src} and {dst} are of different families"),
    }
}

/// One's-complement sum of 16-bit big-endian words, an odd last byte padded with zero
/// (RFC 1071, section 4.1), folded to 16 bits.
pub fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data` (with its checksum field zeroed).
fn checksum(data: &[u8]) -> u16 {
    !ones_complement_sum(data)
}

/// The largest IPv4 datagram an ICMP error may be (RFC 1812, 4.3.2.3; what Linux's `icmp_send`
/// quotes up to).
pub const ICMP_MAX_LEN: usize = 576;
/// The largest ICMPv6 error: the minimum IPv6 MTU (RFC 4443, 2.4 (c)).
pub const IPV6_MIN_MTU: usize = 1280;

/// The ICMP error a service address answers an invoking UDP datagram `frame` with, built from
/// the RFCs: destination unreachable, port unreachable (IPv4 type 3 code 3, RFC 792; ICMPv6
/// type 1 code 4, RFC 4443 3.1), quoting the invoking IP packet (Ethernet padding excluded) as
/// far as the answer stays within 576 bytes (IPv4) or 1280 bytes (IPv6); from the invoking
/// packet's destination to its source, TTL / hop limit 64; IPv4 with type of service 0xc0
/// (precedence "internetwork control", RFC 1812 4.3.2.5), DF and identification 0 (an atomic
/// datagram, RFC 6864); ICMPv6 with traffic class and flow label 0; the Ethernet addresses
/// swapped; every checksum computed here from scratch.
pub fn port_unreachable(frame: &[u8]) -> Vec<u8> {
    let ip = &frame[ETH_HLEN..];
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let mut out = [&frame[6..12], &frame[0..6], &frame[12..ETH_HLEN]].concat();
    match ethertype {
        ETH_P_IP => {
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let quoted = &ip[..total
                .min(ip.len())
                .min(ICMP_MAX_LEN - IPV4_HLEN - ICMP_HLEN)];
            let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
            icmp.extend(quoted);
            let csum = checksum(&icmp);
            icmp[2..4].copy_from_slice(&csum.to_be_bytes());
            let mut header = vec![0x45, 0xc0];
            header.extend(((IPV4_HLEN + icmp.len()) as u16).to_be_bytes());
            header.extend([0, 0]); // identification
            header.extend(IP_DF.to_be_bytes());
            header.extend([64, IPPROTO_ICMP, 0, 0]);
            header.extend(&ip[16..20]);
            header.extend(&ip[12..16]);
            let csum = checksum(&header);
            header[10..12].copy_from_slice(&csum.to_be_bytes());
            out.extend(header);
            out.extend(icmp);
        }
        ETH_P_IPV6 => {
            let total = IPV6_HLEN + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let quoted = &ip[..total
                .min(ip.len())
                .min(IPV6_MIN_MTU - IPV6_HLEN - ICMP_HLEN)];
            let (src, dst) = (&ip[24..40], &ip[8..24]);
            let mut icmp = vec![1, 4, 0, 0, 0, 0, 0, 0];
            icmp.extend(quoted);
            let addr = |a: &[u8]| IpAddr::from(<[u8; 16]>::try_from(a).expect("16 bytes"));
            let csum = checksum(
                &[
                    pseudo_header(addr(src), addr(dst), IPPROTO_ICMPV6, icmp.len()),
                    icmp.clone(),
                ]
                .concat(),
            );
            icmp[2..4].copy_from_slice(&csum.to_be_bytes());
            out.extend([0x60, 0, 0, 0]);
            out.extend((icmp.len() as u16).to_be_bytes());
            out.extend([IPPROTO_ICMPV6, 64]);
            out.extend(src);
            out.extend(dst);
            out.extend(icmp);
        }
        other => panic!("ethertype {other:#06x} is not IP"),
    }
    out
}

/// What the independent parser found in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
}

/// Headers of an IP packet as located by [`locate`].
struct Located<'a> {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    /// The IPv4 header, `None` for IPv6.
    ipv4_header: Option<&'a [u8]>,
    /// Transport header and payload; `None` for a fragment.
    l4: Option<&'a [u8]>,
}

fn locate(frame: &[u8]) -> Result<Located<'_>, String> {
    let ethertype = u16::from_be_bytes(
        frame
            .get(12..ETH_HLEN)
            .ok_or("shorter than an Ethernet header")?
            .try_into()
            .map_err(|_| "Ethernet header")?,
    );
    let ip = &frame[ETH_HLEN..];
    match ethertype {
        ETH_P_IP => {
            let ihl = usize::from(*ip.first().ok_or("no IPv4 header")? & 0x0f) * 4;
            if ip.len() < ihl || ihl < IPV4_HLEN {
                return Err(format!("IPv4 header of {} bytes, IHL {ihl}", ip.len()));
            }
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
            let addr =
                |at: usize| IpAddr::from(<[u8; 4]>::try_from(&ip[at..at + 4]).unwrap_or_default());
            Ok(Located {
                src: addr(12),
                dst: addr(16),
                proto: ip[9],
                ipv4_header: Some(&ip[..ihl]),
                l4: (frag == 0).then(|| ip.get(ihl..total.min(ip.len())).unwrap_or_default()),
            })
        }
        ETH_P_IPV6 => {
            if ip.len() < IPV6_HLEN {
                return Err(format!("IPv6 header of {} bytes", ip.len()));
            }
            let addr = |at: usize| {
                IpAddr::from(<[u8; 16]>::try_from(&ip[at..at + 16]).unwrap_or_default())
            };
            let (mut next, mut off, mut fragment) = (ip[6], IPV6_HLEN, false);
            while matches!(
                next,
                IPPROTO_HOPOPTS | IPPROTO_DSTOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT
            ) {
                let hdr = ip.get(off..off + 2).ok_or("truncated extension header")?;
                fragment |= next == IPPROTO_FRAGMENT;
                let len = if next == IPPROTO_FRAGMENT {
                    EXT_HLEN
                } else {
                    (usize::from(hdr[1]) + 1) * 8
                };
                next = hdr[0];
                off += len;
            }
            Ok(Located {
                src: addr(8),
                dst: addr(24),
                proto: next,
                ipv4_header: None,
                l4: (!fragment).then(|| ip.get(off..).unwrap_or_default()),
            })
        }
        other => Err(format!("ethertype {other:#06x} is not IP")),
    }
}

/// Addresses, ports and protocol of a TCP or UDP frame, read without the kernel's help.
pub fn summary(frame: &[u8]) -> Result<Summary, String> {
    let loc = locate(frame)?;
    let l4 = loc.l4.ok_or("a fragment has no ports")?;
    if l4.len() < 4 {
        return Err("no ports".into());
    }
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    Ok(Summary {
        src: SocketAddr::new(loc.src, port(0)),
        dst: SocketAddr::new(loc.dst, port(2)),
        proto: loc.proto,
    })
}

/// Checks the IPv4 header checksum and the TCP/UDP/ICMP checksum of a frame: summing a
/// correctly checksummed range, checksum included, gives 0xffff (RFC 1071). A zero UDP checksum
/// over IPv4 is accepted as "none".
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let loc = locate(frame)?;
    if let Some(header) = loc.ipv4_header {
        let sum = ones_complement_sum(header);
        if sum != 0xffff {
            return Err(format!("IPv4 header checksum is wrong (sum {sum:#06x})"));
        }
    }
    let Some(l4) = loc.l4 else {
        return Ok(());
    };
    let (name, min_len, csum_off) = match loc.proto {
        IPPROTO_TCP => ("TCP", TCP_HLEN, 16),
        IPPROTO_UDP => ("UDP", UDP_HLEN, 6),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => ("ICMP", ICMP_HLEN, 2),
        other => return Err(format!("no checksum rule for protocol {other}")),
    };
    if l4.len() < min_len {
        return Err(format!("{name} header of {} bytes", l4.len()));
    }
    let stored = u16::from_be_bytes([l4[csum_off], l4[csum_off + 1]]);
    if loc.proto == IPPROTO_UDP && stored == 0 {
        return match loc.src {
            IpAddr::V4(_) => Ok(()),
            IpAddr::V6(_) => Err("zero UDP checksum over IPv6".into()),
        };
    }
    let covered = if loc.proto == IPPROTO_ICMP {
        l4.to_vec()
    } else {
        [
            pseudo_header(loc.src, loc.dst, loc.proto, l4.len()),
            l4.to_vec(),
        ]
        .concat()
    };
    let sum = ones_complement_sum(&covered);
    if sum != 0xffff {
        return Err(format!(
            "{name} checksum {stored:#06x} is wrong (sum {sum:#06x})"
        ));
    }
    Ok(())
}

/// Panics with the differing offsets and both frames in hex when `actual != expected`.
#[track_caller]
pub fn assert_frame_eq(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let differing: Vec<usize> = (0..actual.len().max(expected.len()))
        .filter(|&i| actual.get(i) != expected.get(i))
        .collect();
    panic!(
        "{what}: output differs from the expected frame at offsets {differing:?} \
         (lengths {} and {})\n  actual:   {}\n  expected: {}",
        actual.len(),
        expected.len(),
        hex(actual),
        hex(expected),
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(4)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of RFC 1071, section 3: the sum of these words is 0xddf2.
    #[test]
    fn ones_complement_sum_matches_rfc_1071() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(ones_complement_sum(&data), 0xddf2);
    }

    /// A captured IPv4 header whose checksum field holds 0xb861.
    #[test]
    fn ipv4_header_checksum_of_a_known_header() {
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&header), 0xb861);
        header[10..12].copy_from_slice(&0xb861_u16.to_be_bytes());
        assert_eq!(ones_complement_sum(&header), 0xffff);
    }
}
