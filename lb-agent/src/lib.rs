//! The node agent of the eBPF service load balancer.
//!
//! The pipeline, one folder a stage:
//! [`source`] (manifest files or the Kubernetes API, both ending in one [`source::Snapshot`] of
//! [`model`] objects) -> [`plan`] (pure: kube-proxy's endpoint rules and the external frontends,
//! the whole desired state) -> [`lbmap`] (diffs the desired state against the maps and writes
//! the difference through [`lbmap::MapOps`]) -> the kernel programs, which [`kernel`] loads,
//! pins and attaches to the devices [`node`] finds. [`health`] serves `/healthz`, `/livez` and
//! the per-service health check node ports; [`gc`] deletes dead flows and the SNAT entries of
//! dead flows from the kernel's maps; [`agent`] wires it all together and runs the loop.

pub mod agent;
pub mod config;
pub mod gc;
pub mod health;
pub mod inspect;
pub mod kernel;
pub mod lbmap;
pub mod metrics;
pub mod model;
pub mod node;
pub mod plan;
pub mod source;
