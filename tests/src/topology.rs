//! A node namespace with pod namespaces attached by veth pairs, both families on every link.
//!
//! Pod `i` has `10.200.i.2/24` and `fd00:200:i::2/64` on its `eth0`, with default routes of both
//! families via the node side (`10.200.i.1`, `fd00:200:i::1`) of the veth, named `lbp{i}` in the
//! node namespace. The node forwards between pods and has only connected routes: no default
//! route of either family, and no route to any service address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::netns::Netns;

/// Prefix of the node-side veth names, for `--pod-devices`.
pub const POD_DEVICE_GLOB: &str = "lbp*";

/// A pod: its namespace and addresses.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// Name of the node-side veth.
    pub host_device: String,
}

impl Pod {
    /// The pod's address of the given family.
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 { self.v6.into() } else { self.v4.into() }
    }
}

/// The node and its pods. Dropping it removes every namespace (and so every veth).
#[derive(Debug)]
pub struct Topology {
    pub pods: Vec<Pod>,
    pub node: Netns,
}

impl Topology {
    /// Creates the node and one pod per name.
    pub fn new(pod_names: &[&str]) -> anyhow::Result<Self> {
        let node = Netns::new("lbn")?;
        node.sysctl(&[
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            // No duplicate address detection: addresses (link-local ones too) are usable at once
            // instead of after a second or more of DAD, and no address here can be a duplicate.
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ])?;
        let mut topo = Self {
            pods: Vec::new(),
            node,
        };
        for name in pod_names {
            topo.add_pod(name)?;
        }
        Ok(topo)
    }

    /// Adds a pod; its device appears on the node while the agent may be running.
    pub fn add_pod(&mut self, name: &str) -> anyhow::Result<&Pod> {
        let i = self.pods.len() + 1;
        let ns = Netns::new("lbq")?;
        ns.sysctl(&[
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ])?;
        let host_device = format!("lbp{i}");
        let (v4, v6): (Ipv4Addr, Ipv6Addr) = (
            format!("10.200.{i}.2").parse()?,
            format!("fd00:200:{i}::2").parse()?,
        );
        let node = &self.node;
        node.ip(&[
            "link",
            "add",
            &host_device,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        node.ip(&[
            "addr",
            "add",
            &format!("10.200.{i}.1/24"),
            "dev",
            &host_device,
        ])?;
        node.ip(&[
            "addr",
            "add",
            &format!("fd00:200:{i}::1/64"),
            "dev",
            &host_device,
            "nodad",
        ])?;
        node.ip(&["link", "set", &host_device, "up"])?;
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
        ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "via", &format!("10.200.{i}.1")])?;
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("fd00:200:{i}::1"),
        ])?;
        self.pods.push(Pod {
            name: (*name).to_owned(),
            ns,
            v4,
            v6,
            host_device,
        });
        Ok(self.pods.last().expect("just pushed"))
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }
}
