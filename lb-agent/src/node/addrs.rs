//! The node's own addresses: where NodePorts answer, and the source of SNATed flows.

use std::net::IpAddr;

use ipnet::IpNet;

/// An address of the node on one of its devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceAddr {
    pub device: String,
    pub addr: IpAddr,
}

/// Every address of every device in this network namespace (`getifaddrs(3)`).
pub fn list() -> std::io::Result<Vec<DeviceAddr>> {
    Ok(nix::ifaddrs::getifaddrs()?
        .filter_map(|ifa| {
            let sa = ifa.address?;
            // Link-layer (AF_PACKET) entries carry no IP address.
            let addr = match (sa.as_sockaddr_in(), sa.as_sockaddr_in6()) {
                (Some(sin), _) => IpAddr::V4(sin.ip()),
                (_, Some(sin6)) => IpAddr::V6(sin6.ip()),
                _ => return None,
            };
            Some(DeviceAddr {
                device: ifa.interface_name,
                addr,
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
/// `--nodeport-addresses` CIDRs when any are given (as kube-proxy's flag), sorted.
pub fn nodeport_addresses(
    all: &[DeviceAddr],
    is_device: impl Fn(&str) -> bool,
    cidrs: &[IpNet],
) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = all
        .iter()
        .filter(|a| is_device(&a.device) && usable(&a.addr))
        .filter(|a| cidrs.is_empty() || cidrs.iter().any(|c| c.contains(&a.addr)))
        .map(|a| a.addr)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The source address for SNATed flows of a family: the first NodePort address of it.
pub fn snat_address(addrs: &[IpAddr], v6: bool) -> Option<IpAddr> {
    addrs.iter().find(|a| a.is_ipv6() == v6).copied()
}

/// Parses `--nodeport-addresses`: comma-separated CIDRs.
pub fn parse_cidrs(list: &str) -> Result<Vec<IpNet>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .map(|n| n.trunc())
                .map_err(|_| format!("{s:?} is not a CIDR such as 10.0.0.0/8 or fd00::/64"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn da(device: &str, addr: &str) -> DeviceAddr {
        DeviceAddr {
            device: device.into(),
            addr: addr.parse().unwrap(),
        }
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
        let restricted = nodeport_addresses(
            &all,
            devices,
            &parse_cidrs("10.0.0.0/8, 2001:db8::/32").unwrap(),
        );
        assert_eq!(restricted.len(), 2);
        assert_eq!(
            snat_address(&got, true),
            Some("2001:db8::5".parse().unwrap())
        );
        assert_eq!(snat_address(&got, false), Some("10.0.0.5".parse().unwrap()));
    }

    #[test]
    fn bad_cidrs_are_rejected_by_name() {
        let e = parse_cidrs("10.0.0.0/8,banana").unwrap_err();
        assert!(e.contains("banana"), "{e}");
        assert_eq!(
            parse_cidrs("10.1.2.3/8").unwrap()[0].to_string(),
            "10.0.0.0/8"
        );
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
        let all = ns.run(list).unwrap().unwrap();
        for want in [da("lba0", "10.1.2.3"), da("lba0", "fd00::1:2")] {
            assert!(all.contains(&want), "{want:?} not in {all:?}");
        }
        assert!(all.iter().all(|a| a.device != "lba1"), "{all:?}");
    }

    #[test]
    fn lists_this_namespace_loopback() {
        let all = list().unwrap();
        assert!(
            all.iter().any(|a| a.device == "lo" && a.addr.is_loopback()),
            "{all:?}"
        );
    }
}
