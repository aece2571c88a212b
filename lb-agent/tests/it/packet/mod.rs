//! Packet tests through BPF_PROG_TEST_RUN, katran-style: a frame built by hand goes in, and the
//! frame that comes out is compared byte for byte with an expected frame built independently,
//! whose checksums are computed from scratch (RFC 1071), never patched.
//!
//! Services are programmed through the agent's real writer. Each test loads its own datapath
//! ([`crate::support::lb::Lb`]) with maps pinned in a directory of its own. Needs root and
//! bpffs: a test that cannot load the programs fails, it never skips.

mod ext;
mod pod;
mod xdp;
