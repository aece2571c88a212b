//! End-to-end tests: the agent binary runs in network namespaces built by `lb-tests`, and real
//! TCP and UDP clients reach services through it. Need root; fail (never skip) without.
//!
//! - [`manifests`]: pods reach ClusterIPs, the services read from manifest files.
//! - [`k8s`]: the same with the Kubernetes source and a test API server.
//! - [`external`]: node ports, external and load balancer IPs on two nodes, XDP and TC modes.
//! - [`sock`]: processes on the node, translated by the socket programs.
//! - [`restart`]: killing and restarting the agent fails no request.

mod external;
mod k8s;
mod manifests;
mod restart;
mod sock;
