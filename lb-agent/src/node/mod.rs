//! This node's network devices and addresses, in the agent's own network namespace.

pub mod addrs;
pub mod devices;
pub mod watch;
