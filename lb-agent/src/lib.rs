//! The node agent of the eBPF service load balancer.
//!
//! Pipeline: source ([`manifest`], later the Kubernetes API) -> [`model`] (via [`convert`]) ->
//! [`selection`] (kube-proxy's endpoint rules) -> [`datapath`] writer -> kernel programs
//! ([`bpf`]).

pub mod agent;
pub mod bpf;
pub mod convert;
pub mod datapath;
pub mod devices;
pub mod ebpf_object;
pub mod health;
pub mod manifest;
pub mod model;
pub mod selection;
