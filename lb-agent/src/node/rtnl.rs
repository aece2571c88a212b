//! The two rtnetlink questions (`rtnetlink(7)`) the device scan asks the kernel: every link of
//! this network namespace with its hardware type, kind and parent device (`ip -d link`), and the
//! route and source address the kernel picks towards a destination (`ip route get`), which
//! sends nothing. Blocking, one socket per question, asked of the calling thread's network
//! namespace (sysfs would show the namespace of whoever mounted it instead).
//!
//! Messages are built and read as bytes in native order; no `unsafe`.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, OwnedFd},
};

use nix::{
    errno::Errno,
    libc,
    sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
        socket,
    },
};

/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct ifinfomsg)`.
const IFINFOMSG_LEN: usize = 16;
/// `sizeof(struct rtmsg)`.
const RTMSG_LEN: usize = 12;
/// `sizeof(struct rtattr)`.
const RTA_HDRLEN: usize = 4;
/// Netlink aligns messages and attributes to 4 bytes (`NLMSG_ALIGNTO`, `RTA_ALIGNTO`).
const ALIGN: usize = 4;
/// Receive buffer. The kernel sizes dump datagrams after the reader's buffer up to 32 KiB
/// (`netlink_dump`, `max_recvmsg_len`); twice that leaves room for one oversized link.
const RECV_BUFFER: usize = 64 * 1024;
/// A dump the kernel marks inconsistent (`NLM_F_DUMP_INTR`: links changed meanwhile) is asked
/// for up to this many times in all; the last answer is taken as it is (the change that
/// interrupted it wakes another scan).
const DUMP_RETRIES: usize = 3;

const NLM_F_REQUEST: u16 = libc::NLM_F_REQUEST as u16;
const NLM_F_DUMP: u16 = libc::NLM_F_DUMP as u16;
const NLM_F_DUMP_INTR: u16 = libc::NLM_F_DUMP_INTR as u16;
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
const NLA_TYPE_MASK: u16 = libc::NLA_TYPE_MASK as u16;

/// A link (network device) as rtnetlink describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Hardware type (`ifi_type`, an `ARPHRD_*` value; `/sys/class/net/<dev>/type`): 1 is
    /// Ethernet, 772 loopback, 65534 a device without link-layer header (tun, wireguard).
    pub link_type: u16,
    /// The driver's rtnetlink kind (`IFLA_INFO_KIND`: `veth`, `bridge`, `vxlan`, `dummy`...);
    /// `None` for drivers without one, which hardware NICs are.
    pub kind: Option<String>,
    /// The bus device behind the link (`IFLA_PARENT_DEV_NAME`, the `/sys/class/net/<dev>/device`
    /// link: a PCI address, `virtio0`...); `None` for software devices.
    pub parent: Option<String>,
    /// The ifindex of the bridge or bond the link is enslaved to (`IFLA_MASTER`).
    pub master: Option<u32>,
}

/// The kernel's answer to `ip route get DESTINATION`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The output device (`RTA_OIF`).
    pub oif: Option<u32>,
    /// The source address the kernel would give a packet of this node to the destination
    /// (`RTA_PREFSRC`: the route's `src`, or the kernel's source selection).
    pub prefsrc: Option<IpAddr>,
}

/// A netlink socket of the calling thread's network namespace.
fn open() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?)
}

/// One request message: header, fixed part and attributes.
fn request(kind: u16, flags: u16, fixed: &[u8], attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut msg = vec![0u8; NLMSG_HDRLEN];
    msg.extend_from_slice(fixed);
    for (kind, payload) in attrs {
        let len = RTA_HDRLEN + payload.len();
        msg.extend_from_slice(&(len as u16).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(payload);
        msg.resize(msg.len().next_multiple_of(ALIGN), 0);
    }
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
    msg[4..6].copy_from_slice(&kind.to_ne_bytes());
    msg[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    // Sequence 1, port 0: one question per socket, the kernel fills in our port.
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// One received message: type, flags and what follows the header.
struct Message<'a> {
    kind: u16,
    flags: u16,
    payload: &'a [u8],
}

/// The messages of one datagram; a malformed length ends the walk with an error.
fn messages(mut buf: &[u8]) -> io::Result<Vec<Message<'_>>> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed netlink message");
        let len = u32_at(buf, 0).ok_or_else(bad)? as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(bad());
        }
        out.push(Message {
            kind: u16_at(buf, 4).ok_or_else(bad)?,
            flags: u16_at(buf, 6).ok_or_else(bad)?,
            payload: &buf[NLMSG_HDRLEN..len],
        });
        buf = buf.get(len.next_multiple_of(ALIGN)..).unwrap_or_default();
    }
    Ok(out)
}

/// The error of an `NLMSG_ERROR` message, `None` for an acknowledgement (error 0).
fn error_of(payload: &[u8]) -> Option<io::Error> {
    let code = i32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?);
    (code != 0).then(|| io::Error::from_raw_os_error(-code))
}

/// The attributes in `b`, type (flags masked off) and payload; a malformed one ends the list.
fn attributes(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, 0)?);
        let kind = u16_at(b, 2)? & NLA_TYPE_MASK;
        if len < RTA_HDRLEN || len > b.len() {
            return None;
        }
        let payload = &b[RTA_HDRLEN..len];
        b = b.get(len.next_multiple_of(ALIGN)..).unwrap_or_default();
        Some((kind, payload))
    })
}

/// A NUL-terminated string attribute.
fn string(payload: &[u8]) -> String {
    let end = payload
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(payload.len());
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

fn address(family: u8, payload: &[u8]) -> Option<IpAddr> {
    match i32::from(family) {
        libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(payload).ok()?,
        ))),
        libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(payload).ok()?,
        ))),
        _ => None,
    }
}

/// Decodes an `RTM_NEWLINK` message.
pub fn parse_link(payload: &[u8]) -> Option<Link> {
    let link_type = u16_at(payload, 2)?;
    let index = u32_at(payload, 4)?;
    let mut link = Link {
        index,
        name: String::new(),
        link_type,
        kind: None,
        parent: None,
        master: None,
    };
    for (kind, value) in attributes(payload.get(IFINFOMSG_LEN..)?) {
        match kind {
            libc::IFLA_IFNAME => link.name = string(value),
            libc::IFLA_MASTER => link.master = u32_at(value, 0).filter(|&m| m != 0),
            libc::IFLA_PARENT_DEV_NAME => link.parent = Some(string(value)),
            libc::IFLA_LINKINFO => {
                link.kind = attributes(value)
                    .find(|(k, _)| *k == libc::IFLA_INFO_KIND)
                    .map(|(_, v)| string(v));
            }
            _ => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}

/// Decodes an `RTM_NEWROUTE` answer; `None` unless it is a unicast route.
pub fn parse_route(payload: &[u8]) -> Option<Route> {
    let family = *payload.first()?;
    if *payload.get(7)? != libc::RTN_UNICAST {
        return None;
    }
    let mut route = Route {
        oif: None,
        prefsrc: None,
    };
    for (kind, value) in attributes(payload.get(RTMSG_LEN..)?) {
        match kind {
            libc::RTA_OIF => route.oif = u32_at(value, 0),
            libc::RTA_PREFSRC => route.prefsrc = address(family, value),
            _ => {}
        }
    }
    Some(route)
}

/// Sends `msg` to the kernel and hands every answer message to `each` until the kernel is done:
/// `NLMSG_DONE` for a dump, the first answer otherwise. Returns whether the dump was marked
/// inconsistent.
fn exchange(msg: &[u8], dump: bool, mut each: impl FnMut(&Message<'_>)) -> io::Result<bool> {
    let fd = open()?;
    sendto(
        fd.as_raw_fd(),
        msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut interrupted = false;
    loop {
        let n = loop {
            match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Err(Errno::EINTR) => continue,
                other => break other?,
            }
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "netlink socket closed before the answer ended",
            ));
        }
        for m in messages(&buf[..n])? {
            interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
            match m.kind {
                NLMSG_DONE => return Ok(interrupted),
                NLMSG_ERROR => match error_of(m.payload) {
                    Some(e) => return Err(e),
                    None if !dump => return Ok(interrupted),
                    None => {}
                },
                _ => {
                    each(&m);
                    if !dump {
                        return Ok(interrupted);
                    }
                }
            }
        }
    }
}

/// Every link of the calling thread's network namespace (`RTM_GETLINK` dump), in ifindex order.
pub fn links() -> io::Result<Vec<Link>> {
    // struct ifinfomsg, all zero: every family, every link.
    let msg = request(libc::RTM_GETLINK, NLM_F_DUMP, &[0; IFINFOMSG_LEN], &[]);
    let mut out = Vec::new();
    for attempt in 1..=DUMP_RETRIES {
        out.clear();
        let interrupted = exchange(&msg, true, |m| {
            if m.kind == libc::RTM_NEWLINK
                && let Some(link) = parse_link(m.payload)
            {
                out.push(link);
            }
        })?;
        if !interrupted || attempt == DUMP_RETRIES {
            break;
        }
    }
    out.sort_by_key(|l| l.index);
    Ok(out)
}

/// The route the kernel would use from this node to `dst` (`RTM_GETROUTE`, as `ip route get`);
/// `None` when there is none (the destination is unreachable).
pub fn route_to(dst: IpAddr) -> io::Result<Option<Route>> {
    let (family, bytes): (i32, Vec<u8>) = match dst {
        IpAddr::V4(a) => (libc::AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6, a.octets().to_vec()),
    };
    // struct rtmsg: family, dst_len (a host route), then zeros; RTA_DST the destination.
    let mut rtmsg = [0u8; RTMSG_LEN];
    rtmsg[0] = family as u8;
    rtmsg[1] = (bytes.len() * 8) as u8;
    let msg = request(libc::RTM_GETROUTE, 0, &rtmsg, &[(libc::RTA_DST, &bytes)]);
    let mut route = None;
    let answer = exchange(&msg, false, |m| {
        if m.kind == libc::RTM_NEWROUTE {
            route = parse_route(m.payload);
        }
    });
    match answer {
        Ok(_) => Ok(route),
        Err(e)
            if matches!(
                e.raw_os_error().map(Errno::from_raw),
                Some(
                    Errno::ENETUNREACH
                        | Errno::EHOSTUNREACH
                        | Errno::EACCES
                        | Errno::EPERM
                        | Errno::EINVAL
                )
            ) =>
        {
            // No route, or an unreachable (EHOSTUNREACH), prohibit (EACCES) or blackhole
            // (EINVAL, `fib_props` in net/ipv4/fib_semantics.c) one: no source to take.
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attribute as the kernel lays it out.
    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = ((RTA_HDRLEN + payload.len()) as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(a.len().next_multiple_of(ALIGN), 0);
        a
    }

    #[test]
    fn requests_carry_their_length_type_flags_and_aligned_attributes() {
        let msg = request(
            libc::RTM_GETROUTE,
            0,
            &[0; RTMSG_LEN],
            &[(libc::RTA_DST, &[8, 8, 8, 8])],
        );
        assert_eq!(msg.len(), NLMSG_HDRLEN + RTMSG_LEN + 8);
        assert_eq!(u32_at(&msg, 0), Some(msg.len() as u32));
        assert_eq!(u16_at(&msg, 4), Some(libc::RTM_GETROUTE));
        assert_eq!(u16_at(&msg, 6), Some(NLM_F_REQUEST));
        let attrs: Vec<_> = attributes(&msg[NLMSG_HDRLEN + RTMSG_LEN..]).collect();
        assert_eq!(attrs, [(libc::RTA_DST, &[8u8, 8, 8, 8][..])]);
    }

    #[test]
    fn links_are_decoded_with_type_kind_parent_and_master() {
        let mut payload = vec![0u8; IFINFOMSG_LEN];
        payload[2..4].copy_from_slice(&1u16.to_ne_bytes());
        payload[4..8].copy_from_slice(&7u32.to_ne_bytes());
        payload.extend(attr(libc::IFLA_IFNAME, b"eth0\0"));
        payload.extend(attr(libc::IFLA_MASTER, &3u32.to_ne_bytes()));
        payload.extend(attr(libc::IFLA_PARENT_DEV_NAME, b"0000:00:03.0\0"));
        // Nested, with NLA_F_NESTED set as the kernel sets it.
        let info = attr(libc::IFLA_INFO_KIND, b"vlan\0");
        payload.extend(attr(libc::IFLA_LINKINFO | 0x8000, &info));
        let link = parse_link(&payload).unwrap();
        assert_eq!(
            link,
            Link {
                index: 7,
                name: "eth0".into(),
                link_type: 1,
                kind: Some("vlan".into()),
                parent: Some("0000:00:03.0".into()),
                master: Some(3),
            }
        );
        // A truncated attribute ends the list without reading past it.
        let mut cut = payload[..IFINFOMSG_LEN].to_vec();
        cut.extend(&attr(libc::IFLA_IFNAME, b"eth0\0")[..4]);
        assert_eq!(parse_link(&cut), None);
    }

    #[test]
    fn routes_give_their_device_and_preferred_source() {
        let mut payload = vec![0u8; RTMSG_LEN];
        payload[0] = libc::AF_INET as u8;
        payload[7] = libc::RTN_UNICAST;
        payload.extend(attr(libc::RTA_OIF, &2u32.to_ne_bytes()));
        payload.extend(attr(libc::RTA_PREFSRC, &[192, 168, 10, 21]));
        assert_eq!(
            parse_route(&payload),
            Some(Route {
                oif: Some(2),
                prefsrc: Some("192.168.10.21".parse().unwrap()),
            })
        );
        payload[7] = libc::RTN_UNREACHABLE;
        assert_eq!(parse_route(&payload), None);
    }

    #[test]
    fn errors_and_acknowledgements() {
        assert_eq!(error_of(&0i32.to_ne_bytes()).map(|e| e.kind()), None);
        let e = error_of(&(-libc::ENETUNREACH).to_ne_bytes()).unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::ENETUNREACH));
        let mut two = request(1, 0, &[], &[]);
        two.extend(request(2, 0, &[0; 4], &[]));
        let kinds: Vec<u16> = messages(&two).unwrap().iter().map(|m| m.kind).collect();
        assert_eq!(kinds, [1, 2]);
        two[0] = 200;
        assert!(messages(&two).is_err());
    }

    #[test]
    fn unreachable_prohibited_and_blackholed_destinations_have_no_route() {
        lb_tests::require_root();
        let ns = lb_tests::netns::Netns::new("lbrt").unwrap();
        let dsts: [IpAddr; 2] = ["8.8.8.8".parse().unwrap(), "2001:db8::8".parse().unwrap()];
        let routes = || {
            ns.run(|| dsts.map(|d| route_to(d).map_err(|e| e.to_string())))
                .unwrap()
        };
        assert_eq!(routes(), [Ok(None), Ok(None)], "no route at all");
        for kind in ["blackhole", "prohibit", "unreachable"] {
            ns.ip(&["route", "replace", kind, "default"]).unwrap();
            ns.ip(&["-6", "route", "replace", kind, "default"]).unwrap();
            assert_eq!(routes(), [Ok(None), Ok(None)], "{kind}");
        }
    }

    #[test]
    fn this_namespace_has_a_loopback_link() {
        let links = links().unwrap();
        let lo = links.iter().find(|l| l.name == "lo").expect("lo");
        assert_eq!(lo.link_type, libc::ARPHRD_LOOPBACK);
        assert!(links.windows(2).all(|w| w[0].index < w[1].index));
    }
}
