//! Packet tests through BPF_PROG_TEST_RUN, katran-style: a frame built by hand goes in, and the
//! frame that comes out is compared byte for byte with an expected frame built independently,
//! whose checksums are computed from scratch (RFC 1071), never patched.
//!
//! Services are programmed through the agent's real writer. Each test loads its own datapath
//! ([`crate::support::lb::Lb`]) with maps pinned in a directory of its own. Needs root and
//! bpffs: a test that cannot load the programs fails, it never skips.

mod affinity;
mod counters;
mod ext;
mod hairpin;
mod in_cluster;
mod pod;
mod state;
mod xdp;

use std::net::SocketAddr;

use lb_agent::model::{Frontend, FrontendState};

use crate::support::lb::Lb;

type TestResult = anyhow::Result<()>;

/// Client addresses on the node's LAN, for the programs on external devices.
const LAN_CLIENT4: &str = "192.0.2.100:40000";
const LAN_CLIENT6: &str = "[2001:db8::100]:40000";

/// An address and port written in a test.
fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A datapath serving `states`.
fn lb_with(states: &[(Frontend, FrontendState)]) -> anyhow::Result<Lb> {
    let mut lb = Lb::load()?;
    lb.apply_states(states)?;
    Ok(lb)
}
