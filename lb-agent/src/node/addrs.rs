//! The node's own addresses: where NodePorts answer, and the source of SNATed flows.
//!
//! The SNAT address of a family is the source the kernel programs give NodePort and load
//! balancer flows they send on to a backend on another node (`LB_NODE_ADDR_V4`/`_V6`). The
//! backend's node must route its replies back to it, so it is chosen as the kernel would choose
//! the source of this node's own traffic to other nodes, in this order:
//!
//! 1. the Node object's InternalIP of the family, when it is one of the node port addresses
//!    (decided by the plan, which alone sees the Node: [`crate::model::SnatAddrs::choose`]);
//! 2. the source the kernel picks for its route to [`ROUTE_PROBE_V4`] or [`ROUTE_PROBE_V6`]
//!    (`ip route get`: the route's `src`, else the kernel's source selection), when that
//!    address is on an external device;
//! 3. else the first address (in the kernel's order, where IPv4's primary address comes first)
//!    of the first external device that looks like an uplink: NICs before bonds, VLANs,
//!    macvlan, ipvlan and veth devices, each in ifindex order; never a bridge (docker0, cni0),
//!    kube-ipvs0, a dummy, overlay or tun device ([`super::devices::uplink`]);
//! 4. else, as before these rules, the lowest node port address of the family (the scan
//!    warns).
//!
//! Kube-proxy's MASQUERADE takes the preferred source of the egress route too; Cilium takes the
//! native device's address, its devices found from the default route and the node IP.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;

use super::{
    devices::{self, Link, Uplink},
    rtnl::Route,
};

/// Where the route probe of rule 2 asks for a route to. Nothing is sent there: it stands for
/// "anywhere beyond this node's networks", which the default route serves (Google's public
/// DNS, as `ip route get 8.8.8.8` is commonly asked).
pub const ROUTE_PROBE_V4: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);
/// The IPv6 counterpart of [`ROUTE_PROBE_V4`].
pub const ROUTE_PROBE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0x4860, 0x4860, 0, 0, 0, 0, 0x8888);

/// The route probe's destination of a family.
pub fn route_probe(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(ROUTE_PROBE_V6)
    } else {
        IpAddr::V4(ROUTE_PROBE_V4)
    }
}

/// An address of the node on one of its devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceAddr {
    pub device: String,
    /// The device's ifindex.
    pub ifindex: u32,
    pub addr: IpAddr,
    /// The device scan chose it as the SNAT address of its family ([`choose_snat`]); the node
    /// port addresses then list it first ([`nodeport_addresses`]). Never set by [`list`].
    pub snat: bool,
}

/// Why [`choose_snat`] chose an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnatReason {
    /// Rule 2: the kernel's source for its route to the probe, out of this device.
    Route { out_of: Option<String> },
    /// Rule 3: the first address of the first device of this kind.
    Uplink(Uplink),
}

/// The device scan's SNAT address of a family, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnatChoice {
    pub addr: IpAddr,
    pub device: String,
    pub reason: SnatReason,
}

impl fmt::Display for SnatChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let probe = route_probe(self.addr.is_ipv6());
        write!(f, "{} on {}: ", self.addr, self.device)?;
        match &self.reason {
            SnatReason::Route { out_of } => {
                write!(f, "the source the kernel picks for its route to {probe}")?;
                match out_of {
                    Some(dev) => write!(f, " (out of {dev})"),
                    None => Ok(()),
                }
            }
            SnatReason::Uplink(kind) => write!(
                f,
                "the first address of the first external device that is {kind} (the route to \
                 {probe}, if any, has no source on an external device)"
            ),
        }
    }
}

/// Rules 2 and 3 of the SNAT address (module documentation) for one family: `links` are the
/// namespace's devices, `external` tells the external ones, `addrs` are every address in the
/// kernel's order and `route` is the kernel's answer for [`route_probe`].
pub fn choose_snat(
    v6: bool,
    links: &[Link],
    external: impl Fn(&Link) -> bool,
    addrs: &[DeviceAddr],
    route: Option<&Route>,
) -> Option<SnatChoice> {
    let external: Vec<&Link> = links.iter().filter(|l| external(l)).collect();
    let on_external = |a: &&DeviceAddr| {
        a.addr.is_ipv6() == v6 && usable(&a.addr) && external.iter().any(|l| l.name == a.device)
    };
    if let Some(src) = route.and_then(|r| r.prefsrc)
        && let Some(a) = addrs.iter().filter(on_external).find(|a| a.addr == src)
    {
        let oif = route.and_then(|r| r.oif);
        return Some(SnatChoice {
            addr: a.addr,
            device: a.device.clone(),
            reason: SnatReason::Route {
                out_of: links
                    .iter()
                    .find(|l| Some(l.index) == oif)
                    .map(|l| l.name.clone()),
            },
        });
    }
    let mut uplinks: Vec<(Uplink, &Link)> = external
        .iter()
        .filter_map(|l| Some((devices::uplink(l)?, *l)))
        .collect();
    uplinks.sort_by_key(|(kind, l)| (*kind, l.index));
    uplinks.iter().find_map(|(kind, l)| {
        let a = addrs
            .iter()
            .filter(on_external)
            .find(|a| a.device == l.name)?;
        Some(SnatChoice {
            addr: a.addr,
            device: a.device.clone(),
            reason: SnatReason::Uplink(*kind),
        })
    })
}

/// Every address of every device of `links` in this network namespace (`getifaddrs(3)`);
/// the addresses of a device that appeared since `links` were listed are left for the next
/// scan.
pub fn list(links: &[Link]) -> std::io::Result<Vec<DeviceAddr>> {
    Ok(nix::ifaddrs::getifaddrs()?
        .filter_map(|ifa| {
            let ifindex = links.iter().find(|l| l.name == ifa.interface_name)?.index;
            let sa = ifa.address?;
            // Link-layer (AF_PACKET) entries carry no IP address.
            let addr = match (sa.as_sockaddr_in(), sa.as_sockaddr_in6()) {
                (Some(sin), _) => IpAddr::V4(sin.ip()),
                (_, Some(sin6)) => IpAddr::V6(sin6.ip()),
                _ => return None,
            };
            Some(DeviceAddr {
                device: ifa.interface_name,
                ifindex,
                addr,
                snat: false,
            })
        })
        .collect())
}

/// Link-local and loopback addresses never serve NodePorts (users report NodePorts bound to
/// link-local IPv6 addresses as broken).
pub fn usable(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local() && !a.is_unspecified(),
        IpAddr::V6(a) => {
            !a.is_loopback()
                && !a.is_unicast_link_local()
                && !a.is_unspecified()
                && a.to_ipv4_mapped().is_none()
        }
    }
}

/// The addresses NodePorts answer on: usable addresses of the given devices, restricted to
/// `--nodeport-addresses` CIDRs when any are given (as kube-proxy's flag). The SNAT address of
/// each family ([`DeviceAddr::snat`]) comes first, when it is one of them; the others follow
/// sorted. The first of each family is what the plan falls back to for SNAT.
pub fn nodeport_addresses(
    all: &[DeviceAddr],
    is_device: impl Fn(&str) -> bool,
    cidrs: &[IpNet],
) -> Vec<IpAddr> {
    let eligible: Vec<&DeviceAddr> = all
        .iter()
        .filter(|a| is_device(&a.device) && usable(&a.addr))
        .filter(|a| cidrs.is_empty() || cidrs.iter().any(|c| c.contains(&a.addr)))
        .collect();
    let mut first: Vec<IpAddr> = Vec::new();
    for a in eligible.iter().filter(|a| a.snat) {
        if !first.iter().any(|f| f.is_ipv6() == a.addr.is_ipv6()) {
            first.push(a.addr);
        }
    }
    first.sort();
    let mut rest: Vec<IpAddr> = eligible
        .iter()
        .map(|a| a.addr)
        .filter(|a| !first.contains(a))
        .collect();
    rest.sort();
    rest.dedup();
    first.extend(rest);
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &str) -> Vec<IpNet> {
        crate::model::NodePortAddresses::parse(list).unwrap().cidrs
    }

    fn da(device: &str, addr: &str) -> DeviceAddr {
        DeviceAddr {
            device: device.into(),
            ifindex: 0,
            addr: addr.parse().unwrap(),
            snat: false,
        }
    }

    /// A link as rtnetlink would list it: Ethernet unless `link_type` says otherwise.
    fn link(index: u32, name: &str, kind: Option<&str>, parent: Option<&str>) -> Link {
        Link {
            index,
            name: name.into(),
            link_type: nix::libc::ARPHRD_ETHER,
            kind: kind.map(Into::into),
            parent: parent.map(Into::into),
            master: None,
        }
    }

    fn route(oif: u32, prefsrc: &str) -> Route {
        Route {
            oif: Some(oif),
            prefsrc: Some(prefsrc.parse().unwrap()),
        }
    }

    /// A node with a NIC and docker's bridge, both external (no `--devices`), plus a pod veth.
    fn docker_node() -> (Vec<Link>, Vec<DeviceAddr>) {
        let links = vec![
            link(1, "lo", None, None),
            link(2, "eth0", None, Some("0000:00:03.0")),
            link(3, "docker0", Some("bridge"), None),
            link(4, "kube-ipvs0", Some("dummy"), None),
            link(5, "lxc1", Some("veth"), None),
        ];
        let addrs = vec![
            da("lo", "127.0.0.1"),
            da("eth0", "192.168.10.21"),
            da("eth0", "192.168.10.99"),
            da("docker0", "172.17.0.1"),
            da("kube-ipvs0", "10.96.0.1"),
            da("lxc1", "10.0.0.1"),
            da("eth0", "2001:db8::21"),
            da("eth0", "fe80::21"),
        ];
        (links, addrs)
    }

    fn not_lo_or_pod(l: &Link) -> bool {
        l.name != "lo" && l.name != "lxc1"
    }

    fn chosen(choice: Option<SnatChoice>) -> Option<(String, String)> {
        choice.map(|c| (c.addr.to_string(), c.device))
    }

    #[test]
    fn snat_takes_the_default_routes_source_not_the_lowest_address_of_any_device() {
        let (links, addrs) = docker_node();
        let via_eth0 = route(2, "192.168.10.21");
        let got = choose_snat(false, &links, not_lo_or_pod, &addrs, Some(&via_eth0)).unwrap();
        assert_eq!(
            (got.addr.to_string(), got.device.as_str()),
            ("192.168.10.21".into(), "eth0")
        );
        assert_eq!(
            got.reason,
            SnatReason::Route {
                out_of: Some("eth0".into())
            }
        );
        // The kernel's `src` wins over the primary address when a route sets one.
        let src = route(2, "192.168.10.99");
        assert_eq!(
            chosen(choose_snat(
                false,
                &links,
                not_lo_or_pod,
                &addrs,
                Some(&src)
            )),
            Some(("192.168.10.99".into(), "eth0".into()))
        );
        let v6 = route(2, "2001:db8::21");
        assert_eq!(
            chosen(choose_snat(true, &links, not_lo_or_pod, &addrs, Some(&v6))),
            Some(("2001:db8::21".into(), "eth0".into()))
        );
    }

    #[test]
    fn without_a_route_snat_takes_the_nic_never_a_bridge_or_kube_ipvs0() {
        let (links, addrs) = docker_node();
        let got = choose_snat(false, &links, not_lo_or_pod, &addrs, None).unwrap();
        assert_eq!(
            (got.addr.to_string(), got.reason),
            ("192.168.10.21".into(), SnatReason::Uplink(Uplink::Physical))
        );
        // Only a bridge and kube-ipvs0 left: nothing qualifies.
        let no_nic = |l: &Link| not_lo_or_pod(l) && l.name != "eth0";
        assert_eq!(choose_snat(false, &links, no_nic, &addrs, None), None);
        // The kernel's route stands even out of a bridge: a host whose uplink is a bridge
        // enslaving the NIC routes this way, and replies come back to that address.
        let via_bridge = route(3, "172.17.0.1");
        assert_eq!(
            chosen(choose_snat(
                false,
                &links,
                no_nic,
                &addrs,
                Some(&via_bridge)
            )),
            Some(("172.17.0.1".into(), "docker0".into()))
        );
        // A route whose source is on a device that is not external does not count.
        let lxc = route(5, "10.0.0.1");
        assert_eq!(
            chosen(choose_snat(
                false,
                &links,
                not_lo_or_pod,
                &addrs,
                Some(&lxc)
            )),
            Some(("192.168.10.21".into(), "eth0".into())),
            "a pod device is not external: rule 3 applies"
        );
        // IPv6: the link-local address never serves.
        let v6_only_ll = [da("eth0", "fe80::21")];
        assert_eq!(
            choose_snat(true, &links, not_lo_or_pod, &v6_only_ll, None),
            None
        );
    }

    #[test]
    fn uplinks_rank_nics_before_bonds_and_veths_each_in_ifindex_order() {
        let links = vec![
            link(2, "veth0", Some("veth"), None),
            link(3, "bond0", Some("bond"), None),
            link(4, "eth1", None, Some("0000:00:04.0")),
            link(5, "eth0", None, Some("0000:00:03.0")),
            link(6, "flannel.1", Some("vxlan"), None),
            link(7, "cni0", Some("bridge"), None),
        ];
        let addrs = [
            da("cni0", "10.0.0.1"),
            da("flannel.1", "10.0.0.0"),
            da("veth0", "10.1.0.2"),
            da("bond0", "10.2.0.2"),
            da("eth0", "10.3.0.2"),
            da("eth1", "10.4.0.2"),
        ];
        let all = |_: &Link| true;
        assert_eq!(
            chosen(choose_snat(false, &links, all, &addrs, None)),
            Some(("10.4.0.2".into(), "eth1".into())),
            "the NIC of the lowest ifindex"
        );
        let no_nics = |l: &Link| l.parent.is_none();
        assert_eq!(
            chosen(choose_snat(false, &links, no_nics, &addrs, None)),
            Some(("10.1.0.2".into(), "veth0".into()))
        );
        let overlays_only = |l: &Link| l.name == "cni0" || l.name == "flannel.1";
        assert_eq!(
            choose_snat(false, &links, overlays_only, &addrs, None),
            None
        );
        // A NIC without an address of the family is passed over.
        assert_eq!(
            chosen(choose_snat(false, &links, all, &addrs[..5], None)),
            Some(("10.3.0.2".into(), "eth0".into()))
        );
    }

    #[test]
    fn the_snat_address_comes_first_among_the_node_port_addresses() {
        let (_, mut addrs) = docker_node();
        let external = |d: &str| d != "lo" && d != "lxc1";
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            nodeport_addresses(&addrs, external, &[]),
            [
                ip("10.96.0.1"),
                ip("172.17.0.1"),
                ip("192.168.10.21"),
                ip("192.168.10.99"),
                ip("2001:db8::21")
            ],
            "sorted when nothing is marked"
        );
        addrs[2].snat = true;
        addrs[6].snat = true;
        assert_eq!(
            nodeport_addresses(&addrs, external, &[]),
            [
                ip("192.168.10.99"),
                ip("2001:db8::21"),
                ip("10.96.0.1"),
                ip("172.17.0.1"),
                ip("192.168.10.21"),
            ]
        );
        // Outside `--nodeport-addresses`, the mark does not make it a node port address.
        let cidrs = cidrs("172.16.0.0/12");
        assert_eq!(
            nodeport_addresses(&addrs, external, &cidrs),
            [ip("172.17.0.1")]
        );
    }

    #[test]
    fn nodeports_use_every_usable_address_of_both_families_on_the_devices() {
        let all = [
            da("eth0", "10.0.0.5"),
            da("eth0", "fe80::1"),
            da("eth0", "2001:db8::5"),
            da("eth1", "192.168.1.5"),
            da("lo", "127.0.0.1"),
            da("lo", "::1"),
            da("eth0", "169.254.3.3"),
            da("lbp1", "10.200.1.1"),
        ];
        let devices = |d: &str| d.starts_with("eth");
        let got = nodeport_addresses(&all, devices, &[]);
        let want: Vec<IpAddr> = ["10.0.0.5", "192.168.1.5", "2001:db8::5"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        let restricted = nodeport_addresses(&all, devices, &cidrs("10.0.0.0/8, 2001:db8::/32"));
        assert_eq!(restricted.len(), 2);
    }

    #[test]
    fn lists_both_families_exactly_in_a_namespace() {
        lb_tests::require_root();
        let ns = lb_tests::netns::Netns::new("lbadr").unwrap();
        ns.ip(&[
            "link", "add", "lba0", "type", "veth", "peer", "name", "lba1",
        ])
        .unwrap();
        ns.ip(&["addr", "add", "10.1.2.3/24", "dev", "lba0"])
            .unwrap();
        ns.ip(&["addr", "add", "fd00::1:2/64", "dev", "lba0", "nodad"])
            .unwrap();
        let (links, all) = ns
            .run(|| {
                let links = super::super::devices::links()?;
                let all = list(&links)?;
                std::io::Result::Ok((links, all))
            })
            .unwrap()
            .unwrap();
        let lba0 = links.iter().find(|l| l.name == "lba0").unwrap().index;
        for want in [da("lba0", "10.1.2.3"), da("lba0", "fd00::1:2")] {
            let want = DeviceAddr {
                ifindex: lba0,
                ..want
            };
            assert!(all.contains(&want), "{want:?} not in {all:?}");
        }
        assert!(all.iter().all(|a| a.device != "lba1"), "{all:?}");
    }

    #[test]
    fn lists_this_namespace_loopback() {
        let all = list(&super::super::devices::links().unwrap()).unwrap();
        assert!(
            all.iter().any(|a| a.device == "lo" && a.addr.is_loopback()),
            "{all:?}"
        );
    }
}
