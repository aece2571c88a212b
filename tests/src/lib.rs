//! Test harness for end-to-end tests: network namespaces joined by veth links, with both IP
//! families on every link, real TCP and UDP servers and clients inside them, and a runner for
//! the agent.
//!
//! Everything is created with names derived from the process ID and a counter, so parallel
//! tests and parallel runs never collide, and everything is removed on drop (also when a test
//! panics). Traffic only ever goes to addresses inside namespaces the harness created; nothing
//! is attached to, or routed in, the machine's own namespace.

pub mod agent;
#[cfg(feature = "apiserver")]
pub mod apiserver;
pub mod cgroup;
pub mod cluster;
pub mod http;
pub mod manifests;
pub mod netns;
pub mod probe;
pub mod rawbpf;
pub mod topology;
pub mod traffic;

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicU32, Ordering},
};

/// A name unique to this process and call: `{prefix}{pid}x{n}`, short enough for interface and
/// namespace names.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id())
}

/// Polls `f` every 20 ms until it returns true (then true) or `timeout` passes (then false).
pub fn eventually(timeout: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Fails the test unless it runs as root: network tests must never pass by skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (network namespaces, BPF); run the suite with `cargo xtask test` as root"
    );
}

/// An IP address written in a test; panics on a typo.
pub fn ip(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is not an IP address: {e}"))
}

/// `ip:port`.
pub fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}
