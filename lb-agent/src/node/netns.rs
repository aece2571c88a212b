//! The agent's own network namespace, as the kernel programs see namespaces.

use std::os::fd::AsRawFd as _;

use nix::{
    libc,
    sys::socket::{AddressFamily, SockFlag, SockType, socket},
};

/// `SO_NETNS_COOKIE` (`asm-generic/socket.h`, Linux 5.14); the libc crate does not define it.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the agent's network namespace: what `bpf_get_netns_cookie` returns for
/// sockets of this namespace.
pub fn own_cookie() -> std::io::Result<u64> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `sock` is open for the whole call; the kernel writes at most `len` bytes, the
    // size of `cookie`, and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<u64>() || cookie == 0 {
        return Err(std::io::Error::other(format!(
            "SO_NETNS_COOKIE answered {len} bytes, cookie {cookie}"
        )));
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_stable_and_differs_in_another_namespace() {
        let here = own_cookie().unwrap();
        assert_eq!(own_cookie().unwrap(), here);
        lb_tests::require_root();
        let ns = lb_tests::netns::Netns::new("lbc").unwrap();
        let there = ns.run(own_cookie).unwrap().unwrap();
        assert_ne!(there, here);
    }
}
