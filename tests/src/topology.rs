//! A node namespace with pod namespaces attached by veth pairs, both families on every link.
//!
//! Pod `i` has `10.200.i.2/24` and `fd00:200:i::2/64` on its `eth0`, with default routes of both
//! families via the node side (`10.200.i.1`, `fd00:200:i::1`) of the veth, named `lbp{i}` in the
//! node namespace. The node forwards between pods and has only connected routes: no default
//! route of either family, and no route to any service address.

use anyhow::Context as _;
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
        let pod = create_pod(
            &self.node,
            name,
            i,
            &format!("10.200.{i}"),
            &format!("fd00:200:{i}"),
        )?;
        self.pods.push(pod);
        Ok(self.pods.last().expect("just pushed"))
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }
}

/// Creates pod `name` attached to `node` by the veth `lbp{index}`: the pod gets
/// `{v4_prefix}.2/24` and `{v6_prefix}::2/64`, the node side `.1` and `::1`, and the pod's default
/// routes of both families point at the node side.
fn create_pod(
    node: &Netns,
    name: &str,
    index: usize,
    v4_prefix: &str,
    v6_prefix: &str,
) -> anyhow::Result<Pod> {
    let ns = Netns::new("lbq")?;
    ns.sysctl(&[
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
    ])?;
    let host_device = format!("lbp{index}");
    let (v4, v6): (Ipv4Addr, Ipv6Addr) = (
        format!("{v4_prefix}.2").parse()?,
        format!("{v6_prefix}::2").parse()?,
    );
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
        &format!("{v4_prefix}.1/24"),
        "dev",
        &host_device,
    ])?;
    node.ip(&[
        "addr",
        "add",
        &format!("{v6_prefix}::1/64"),
        "dev",
        &host_device,
        "nodad",
    ])?;
    node.ip(&["link", "set", &host_device, "up"])?;
    ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
    ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["route", "add", "default", "via", &format!("{v4_prefix}.1")])?;
    ns.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &format!("{v6_prefix}::1"),
    ])?;
    Ok(Pod {
        name: name.to_owned(),
        ns,
        v4,
        v6,
        host_device,
    })
}

/// Name of each node's LAN device on the two-node topology (its external device).
pub const NODE_DEVICE: &str = "eth0";

/// A node of [`TwoNodes`]: its namespace, its LAN addresses and its pods.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub pods: Vec<Pod>,
}

impl Node {
    /// The node's LAN address of the given family.
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 { self.v6.into() } else { self.v4.into() }
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} on {}", self.name))
    }
}

/// Two nodes and an external client on one LAN (a bridge in a namespace of its own), both
/// families everywhere.
///
/// - LAN: `10.250.0.0/24`, `fd00:250::/64`; node `a` is `.1`/`::1`, node `b` `.2`/`::2`, the
///   client `.100`/`::100`. Each node's LAN device is [`NODE_DEVICE`].
/// - Node `a`'s pod `i` has `10.201.i.2`/`fd00:201:i::2`, node `b`'s `10.202.i.2`/`fd00:202:i::2`;
///   each node routes the other's pod ranges via the other's LAN address (connected next hops:
///   no default route anywhere).
/// - The client has only its LAN addresses: it reaches pods through node ports, external IPs
///   and load balancer IPs only, routed to node `a` by [`TwoNodes::route_from_client`].
#[derive(Debug)]
pub struct TwoNodes {
    pub client: Netns,
    pub client_v4: Ipv4Addr,
    pub client_v6: Ipv6Addr,
    pub nodes: Vec<Node>,
    pub lan: Netns,
    /// Links of the pass-through XDP program on the LAN side of every veth pair.
    _lan_xdp: Vec<std::os::fd::OwnedFd>,
}

impl TwoNodes {
    /// Creates the LAN, the client, and nodes `a` and `b` with the named pods.
    pub fn new(pods_a: &[&str], pods_b: &[&str]) -> anyhow::Result<Self> {
        let lan = Netns::new("lbl")?;
        lan.ip(&["link", "add", "br0", "type", "bridge"])?;
        lan.ip(&["link", "set", "br0", "up"])?;
        let attach = |ns: &Netns, port: &str, v4: &str, v6: &str| -> anyhow::Result<()> {
            lan.ip(&[
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                NODE_DEVICE,
                "netns",
                ns.name(),
            ])?;
            lan.ip(&["link", "set", port, "master", "br0"])?;
            lan.ip(&["link", "set", port, "up"])?;
            ns.ip(&["addr", "add", v4, "dev", NODE_DEVICE])?;
            ns.ip(&["addr", "add", v6, "dev", NODE_DEVICE, "nodad"])?;
            ns.ip(&["link", "set", NODE_DEVICE, "up"])?;
            // What crosses the LAN carries full checksums, as on a real wire: a veth would
            // otherwise hand on packets whose checksum is still to be computed
            // (CHECKSUM_PARTIAL), which an XDP program forwarding them cannot complete.
            crate::netns::run(ns.command("ethtool").args(["-K", NODE_DEVICE, "tx", "off"]))?;
            Ok(())
        };
        let no_dad = [
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ];
        lan.sysctl(&no_dad)?;
        let client = Netns::new("lbc")?;
        client.sysctl(&no_dad)?;
        attach(&client, "lanc", "10.250.0.100/24", "fd00:250::100/64")?;
        let mut nodes = Vec::new();
        for (i, (name, pods)) in [("a", pods_a), ("b", pods_b)].into_iter().enumerate() {
            let n = i + 1;
            let ns = Netns::new("lbn")?;
            ns.sysctl(&[
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                no_dad[0],
                no_dad[1],
            ])?;
            attach(
                &ns,
                &format!("lan{n}"),
                &format!("10.250.0.{n}/24"),
                &format!("fd00:250::{n}/64"),
            )?;
            let mut node = Node {
                name: name.to_owned(),
                ns,
                v4: format!("10.250.0.{n}").parse()?,
                v6: format!("fd00:250::{n}").parse()?,
                pods: Vec::new(),
            };
            for (j, pod) in pods.iter().enumerate() {
                let j = j + 1;
                let pod = create_pod(
                    &node.ns,
                    pod,
                    j,
                    &format!("10.20{n}.{j}"),
                    &format!("fd00:20{n}:{j}"),
                )?;
                node.pods.push(pod);
            }
            nodes.push(node);
        }
        // Each node reaches the other's pods through the other's LAN address.
        for (this, other_n) in [(0, 2), (1, 1)] {
            let ns = &nodes[this].ns;
            ns.ip(&[
                "route",
                "add",
                &format!("10.20{other_n}.0.0/16"),
                "via",
                &format!("10.250.0.{other_n}"),
            ])?;
            ns.ip(&[
                "-6",
                "route",
                "add",
                &format!("fd00:20{other_n}::/32"),
                "via",
                &format!("fd00:250::{other_n}"),
            ])?;
        }
        // A node's XDP program sends frames back out of its LAN device (XDP_TX); a veth takes
        // them only into a peer that runs an XDP program itself, as a NIC would take them into
        // its TX ring. The bridge side gets a pass-through one.
        let pass = crate::rawbpf::load_return_program(
            crate::rawbpf::BPF_PROG_TYPE_XDP,
            crate::rawbpf::XDP_PASS,
            "lan_xdp_pass",
        )
        .context("loading a pass-through XDP program")?;
        let lan_xdp = lan.run(|| {
            ["lanc", "lan1", "lan2"]
                .into_iter()
                .map(|port| {
                    let name = std::ffi::CString::new(port)?;
                    // SAFETY: a NUL-terminated name.
                    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
                    crate::rawbpf::attach_xdp(&pass, ifindex)
                        .with_context(|| format!("attaching XDP to {port} (ifindex {ifindex})"))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })??;
        Ok(Self {
            client,
            client_v4: "10.250.0.100".parse()?,
            client_v6: "fd00:250::100".parse()?,
            nodes,
            lan,
            _lan_xdp: lan_xdp,
        })
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Routes `addr` (an external IP or load balancer IP) from the client to node `node`.
    pub fn route_from_client(&self, addr: IpAddr, node: &str) -> anyhow::Result<()> {
        let via = self.node(node).addr(addr.is_ipv6());
        let prefix = if addr.is_ipv6() { 128 } else { 32 };
        self.client.ip(&[
            "route",
            "add",
            &format!("{addr}/{prefix}"),
            "via",
            &via.to_string(),
        ])?;
        Ok(())
    }

    /// The client's address of the given family.
    pub fn client_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            self.client_v6.into()
        } else {
            self.client_v4.into()
        }
    }
}
