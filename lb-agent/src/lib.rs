//! The node agent of the eBPF service load balancer.
//!
//! Pipeline: [`source`] ([`manifest`] files or the Kubernetes API, [`k8s`]) -> [`model`] (via
//! [`convert`]) -> [`selection`] (kube-proxy's endpoint rules) -> [`datapath`] writer -> kernel
//! programs ([`bpf`]). External traffic: [`external`] frontends on [`nodeaddr`] addresses, and
//! [`healthcheck`] node ports.

pub mod agent;
pub mod bpf;
pub mod convert;
pub mod datapath;
pub mod devices;
pub mod ebpf_object;
pub mod external;
pub mod health;
pub mod healthcheck;
pub mod k8s;
pub mod manifest;
pub mod model;
pub mod nodeaddr;
pub mod selection;
pub mod source;
