//! The agent's own network namespace, as the kernel programs see namespaces, and the other
//! network namespaces of this node (pods') it can find.

use std::{
    collections::HashSet,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

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

/// Where the container runtimes pin pods' network namespaces (containerd and CRI-O:
/// `/var/run/netns/cni-*`, `ip netns add`: `/run/netns/*`).
const PINNED_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// A network namespace's identity: its nsfs device and inode.
type NsId = (u64, u64);

fn ns_id(path: &Path) -> Option<NsId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// One path to each network namespace of this node that the agent can see, other than its
/// own: those pinned by the container runtime, and those of the processes in `/proc` (every
/// process of the node when the agent shares the host's PID namespace). A namespace found
/// twice is listed once.
pub fn others() -> Vec<PathBuf> {
    let mut seen: HashSet<NsId> = ns_id(Path::new("/proc/self/ns/net")).into_iter().collect();
    let mut found = Vec::new();
    let pinned = PINNED_DIRS
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()));
    let processes = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path().join("ns/net"));
    for path in pinned.chain(processes) {
        // A process that exited meanwhile, or a file in a pin directory that is no namespace
        // (entering it fails and is reported then).
        if let Some(id) = ns_id(&path)
            && seen.insert(id)
        {
            found.push(path);
        }
    }
    found
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

    /// A namespace pinned by `ip netns add`, and one held only by a process, are each listed
    /// once; the agent's own is not.
    #[test]
    fn other_namespaces_are_found_by_pin_and_by_process_once_each() {
        lb_tests::require_root();
        let pinned = lb_tests::netns::Netns::new("lbo").unwrap();
        let mut holder = std::process::Command::new("unshare")
            .args(["--net", "sleep", "30"])
            .spawn()
            .unwrap();
        let held = PathBuf::from(format!("/proc/{}/ns/net", holder.id()));
        // unshare enters the new namespace before it execs sleep.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while ns_id(&held) == ns_id(Path::new("/proc/self/ns/net")) {
            assert!(
                std::time::Instant::now() < deadline,
                "unshare never left our namespace"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let found: Vec<Option<NsId>> = others().iter().map(|p| ns_id(p)).collect();
        let wanted = [ns_id(&pinned.path()), ns_id(&held)];
        holder.kill().unwrap();
        holder.wait().unwrap();
        let own = ns_id(Path::new("/proc/self/ns/net"));
        assert!(!found.contains(&own), "our own namespace is listed");
        for id in wanted {
            assert!(id.is_some());
            assert_eq!(
                found.iter().filter(|f| **f == id).count(),
                1,
                "{id:?} in {found:?}"
            );
        }
    }
}
