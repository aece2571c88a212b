//! This node's network devices, addresses and network namespace, as the agent sees them.

pub mod addrs;
pub mod devices;
pub mod netns;
pub mod rtnl;
pub mod sockets;
pub mod watch;
