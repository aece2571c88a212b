//! The agent's integration tests in one target, in the shape of aya's `test/integration-test`:
//! packet tests of the kernel programs through BPF_PROG_TEST_RUN ([`packet`]), end-to-end tests
//! of the agent in network namespaces ([`e2e`]), the flow GC on real maps ([`gc`]) and the
//! validation of the repository's manifests ([`manifests_validate`]), with the helpers they
//! share in [`support`].
//!
//! The packet, GC and end-to-end tests need root and bpffs: without them they fail, never skip.
//! `cargo test -p lb-agent --test it` runs everything; a module path selects a part, e.g.
//! `cargo test -p lb-agent --test it packet::xdp`.

mod e2e;
mod gc;
mod manifests_validate;
mod packet;
mod support;
