//! The kernel programs, built by `build.rs` and embedded in the agent.

/// The eBPF object file (ELF) with every program and map of `lb-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
