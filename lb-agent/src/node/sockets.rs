//! Closing the node's connected UDP sockets whose backend went away, through the kernel's
//! socket diagnostics (`NETLINK_SOCK_DIAG`, `SOCK_DESTROY`, as `ss -K` does; Linux 4.5+ with
//! `CONFIG_INET_DIAG_DESTROY`). A destroyed UDP socket is disconnected: a blocked receive
//! fails with `ECONNABORTED`, a send with `EDESTADDRREQ`; the application reconnects and gets
//! a live backend: what Cilium does with `bpf_sock_destroy`.
//!
//! A diagnostics socket reaches the sockets of the network namespace it was made in, so the
//! sockets of pods are reached from a thread that enters each pod's namespace in turn
//! (`setns`, which needs `CAP_SYS_ADMIN`), as Cilium does for its socket iterator.

use std::{collections::HashSet, io, os::fd::AsRawFd as _, path::PathBuf};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

/// `SOCK_DIAG_BY_FAMILY` and `SOCK_DESTROY` (`linux/sock_diag.h`).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
/// `linux/netlink.h`.
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req_v2` and `struct inet_diag_msg` (`linux/inet_diag.h`).
const REQ_LEN: usize = 56;
const MSG_LEN: usize = 72;
/// Offset of `struct inet_diag_sockid` in `struct inet_diag_msg`.
const SOCKID_OFF_IN_MSG: usize = 4;
const SOCKID_LEN: usize = 48;
/// Offset of `idiag_cookie` in `struct inet_diag_sockid`.
const COOKIE_OFF: usize = 40;
const IPPROTO_UDP: u8 = 17;

/// Which family's sockets.
#[derive(Clone, Copy, Debug)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn af(self) -> u8 {
        match self {
            Self::V4 => nix::libc::AF_INET as u8,
            Self::V6 => nix::libc::AF_INET6 as u8,
        }
    }
}

/// A `SOCK_DIAG` request for UDP sockets of `family`: every socket (`NLM_F_DUMP`) or the one
/// `sockid` names.
fn request(kind: u16, flags: u16, family: Family, sockid: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + REQ_LEN;
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    msg.extend_from_slice(&0u32.to_ne_bytes()); // to the kernel
    msg.push(family.af());
    msg.push(IPPROTO_UDP);
    msg.push(0); // no extensions
    msg.push(0);
    msg.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    msg.extend_from_slice(sockid);
    msg
}

/// Opens a socket-diagnostics netlink socket.
fn diag_socket() -> io::Result<std::os::fd::OwnedFd> {
    Ok(socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?)
}

fn send(fd: &std::os::fd::OwnedFd, msg: &[u8]) -> io::Result<()> {
    sendto(
        fd.as_raw_fd(),
        msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    Ok(())
}

/// Every message of one netlink answer (a dump ends with `NLMSG_DONE`, an ack is one
/// `NLMSG_ERROR`), passed to `each` as (type, payload); stops at the end of the answer.
fn answers(
    fd: &std::os::fd::OwnedFd,
    mut each: impl FnMut(u16, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        let mut off = 0;
        while off + NLMSG_HDRLEN <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
            let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            if len < NLMSG_HDRLEN || off + len > n {
                return Err(io::Error::other("truncated netlink message"));
            }
            let payload = &buf[off + NLMSG_HDRLEN..off + len];
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = payload
                        .get(..4)
                        .map_or(0, |e| i32::from_ne_bytes(e.try_into().unwrap_or_default()));
                    return if errno == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-errno))
                    };
                }
                _ => each(kind, payload)?,
            }
            // Messages are 4-byte aligned (NLMSG_ALIGN).
            off += (len + 3) & !3;
        }
    }
}

/// Destroys the UDP sockets of `family` in this thread's network namespace whose cookie
/// (`bpf_get_socket_cookie`, `SO_COOKIE`) is in `cookies`; returns the cookies it destroyed.
/// Sockets that closed meanwhile are no error.
pub fn destroy_udp(family: Family, cookies: &HashSet<u64>) -> io::Result<HashSet<u64>> {
    let mut destroyed = HashSet::new();
    if cookies.is_empty() {
        return Ok(destroyed);
    }
    let fd = diag_socket()?;
    send(
        &fd,
        &request(SOCK_DIAG_BY_FAMILY, NLM_F_DUMP, family, &[0; SOCKID_LEN]),
    )?;
    let mut found: Vec<(u64, [u8; SOCKID_LEN])> = Vec::new();
    answers(&fd, |kind, payload| {
        if kind == SOCK_DIAG_BY_FAMILY && payload.len() >= MSG_LEN {
            let id: [u8; SOCKID_LEN] = payload[SOCKID_OFF_IN_MSG..SOCKID_OFF_IN_MSG + SOCKID_LEN]
                .try_into()
                .unwrap_or([0; SOCKID_LEN]);
            let lo = u32::from_ne_bytes(
                id[COOKIE_OFF..COOKIE_OFF + 4]
                    .try_into()
                    .unwrap_or_default(),
            );
            let hi = u32::from_ne_bytes(
                id[COOKIE_OFF + 4..COOKIE_OFF + 8]
                    .try_into()
                    .unwrap_or_default(),
            );
            let cookie = u64::from(hi) << 32 | u64::from(lo);
            if cookies.contains(&cookie) {
                found.push((cookie, id));
            }
        }
        Ok(())
    })?;
    for (cookie, id) in found {
        send(&fd, &request(SOCK_DESTROY, NLM_F_ACK, family, &id))?;
        match answers(&fd, |_, _| Ok(())) {
            Ok(()) => {
                destroyed.insert(cookie);
            }
            // Closed meanwhile.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(destroyed)
}

/// Destroys the sockets named in `cookies` of both families in this thread's network
/// namespace, removing the destroyed ones from `cookies`; returns how many.
fn destroy_both(cookies: &mut HashSet<u64>) -> io::Result<usize> {
    let mut n = 0;
    for family in [Family::V4, Family::V6] {
        let destroyed = destroy_udp(family, cookies)?;
        n += destroyed.len();
        cookies.retain(|c| !destroyed.contains(c));
    }
    Ok(n)
}

/// What one [`UdpCloser::close`] did.
#[derive(Debug, Default)]
pub struct Closed {
    /// Sockets destroyed in the agent's own network namespace.
    pub own: usize,
    /// Sockets destroyed in other namespaces (pods').
    pub others: usize,
    /// Namespaces searched besides the agent's own.
    pub namespaces: usize,
    /// Namespaces that could not be entered or searched, with the reason.
    pub failed: Vec<(PathBuf, io::Error)>,
}

/// Closes connected UDP sockets by cookie wherever on the node they are. The agent's own
/// namespace is searched every time (one dump per family); the others only for cookies not
/// searched for before, so a socket that closed by itself costs one search of the node, not
/// one per sync.
#[derive(Debug, Default)]
pub struct UdpCloser {
    /// Cookies searched for in every namespace and not found: still stale, nothing to close.
    searched: HashSet<u64>,
}

impl UdpCloser {
    /// Destroys the UDP sockets whose cookie is in `stale`; TCP sockets are never touched.
    pub fn close(&mut self, stale: &HashSet<u64>) -> io::Result<Closed> {
        let mut closed = Closed::default();
        let mut left = stale.clone();
        closed.own = destroy_both(&mut left)?;
        self.searched.retain(|c| left.contains(c));
        left.retain(|c| !self.searched.contains(c));
        if left.is_empty() {
            return Ok(closed);
        }
        let namespaces = super::netns::others();
        closed.namespaces = namespaces.len();
        std::thread::scope(|s| {
            s.spawn(|| {
                for path in namespaces {
                    if left.is_empty() {
                        break;
                    }
                    let entered = std::fs::File::open(&path).and_then(|ns| {
                        rustix::thread::move_into_link_name_space(
                            std::os::fd::AsFd::as_fd(&ns),
                            Some(rustix::thread::LinkNameSpaceType::Network),
                        )
                        .map_err(io::Error::from)
                    });
                    match entered.and_then(|()| destroy_both(&mut left)) {
                        Ok(n) => closed.others += n,
                        // A process that exited meanwhile.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => closed.failed.push((path, e)),
                    }
                }
            });
        });
        // What is left was looked for everywhere: its socket is gone (or out of reach).
        self.searched.extend(left);
        Ok(closed)
    }
}

#[cfg(test)]
mod tests {
    use std::{net::UdpSocket, os::fd::AsFd as _, time::Duration};

    use super::*;

    /// A connected UDP socket of this process, destroyed by its cookie: its next receive fails
    /// with ECONNABORTED. Another socket, not named, is left alone.
    #[test]
    fn a_named_udp_socket_is_destroyed_and_reports_econnaborted_others_stay() {
        lb_tests::require_root();
        for (bind, peer, family) in [
            ("127.0.0.1:0", "127.0.0.1:9", Family::V4),
            ("[::1]:0", "[::1]:9", Family::V6),
        ] {
            let victim = UdpSocket::bind(bind).unwrap();
            victim.connect(peer).unwrap();
            let bystander = UdpSocket::bind(bind).unwrap();
            bystander.connect(peer).unwrap();
            let cookie = rustix::net::sockopt::socket_cookie(victim.as_fd()).unwrap();
            let destroyed = destroy_udp(family, &HashSet::from([cookie])).unwrap();
            assert_eq!(destroyed, HashSet::from([cookie]), "{family:?}");
            victim
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let err = victim.recv(&mut [0; 16]).unwrap_err();
            assert_eq!(
                err.raw_os_error(),
                Some(nix::libc::ECONNABORTED),
                "{family:?}: {err}"
            );
            bystander
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let err = bystander.recv(&mut [0; 16]).unwrap_err();
            assert!(
                matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "{family:?}: the bystander got {err}"
            );
        }
    }

    /// A connected UDP socket in another network namespace (a pod's), of either family, is
    /// found there and destroyed; a cookie that names no socket is searched for once.
    #[test]
    fn a_socket_in_another_namespace_is_destroyed_and_a_gone_one_is_searched_for_once() {
        lb_tests::require_root();
        let ns = lb_tests::netns::Netns::new("lbk").unwrap();
        for (bind, peer) in [("127.0.0.1:0", "127.0.0.1:9"), ("[::1]:0", "[::1]:9")] {
            let victim = ns
                .run(|| {
                    let s = UdpSocket::bind(bind).unwrap();
                    s.connect(peer).unwrap();
                    s
                })
                .unwrap();
            let cookie = rustix::net::sockopt::socket_cookie(victim.as_fd()).unwrap();
            let gone = u64::MAX - 1;
            let mut closer = UdpCloser::default();
            let closed = closer.close(&HashSet::from([cookie, gone])).unwrap();
            assert_eq!((closed.own, closed.others), (0, 1), "{bind}: {closed:?}");
            assert!(
                closed.namespaces >= 1 && closed.failed.is_empty(),
                "{closed:?}"
            );
            victim
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let err = victim.recv(&mut [0; 16]).unwrap_err();
            assert_eq!(
                err.raw_os_error(),
                Some(nix::libc::ECONNABORTED),
                "{bind}: {err}"
            );
            // The cookie that named nothing is not looked for in other namespaces again.
            let again = closer.close(&HashSet::from([gone])).unwrap();
            assert_eq!(again.namespaces, 0, "{again:?}");
        }
    }
}
