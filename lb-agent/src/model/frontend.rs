//! The desired state: what the datapath should serve, as [`crate::plan`] computes it and
//! [`crate::lbmap::Writer`] programs it. Every decision (which endpoints, which are local, which
//! family, which source ranges, who owns a frontend) is already made here; the writer only
//! encodes.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use ipnet::IpNet;

use super::{IpFamily, NamespacedName, Protocol};

/// A service address the datapath answers on: address, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

impl Frontend {
    pub fn new(ip: IpAddr, port: u16, protocol: Protocol) -> Self {
        Self {
            addr: SocketAddr::new(ip, port),
            protocol,
        }
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.addr.ip())
    }
}

impl fmt::Display for Frontend {
    /// `10.96.0.10:53/UDP`, `[fd00::10]:53/UDP`: IPv6 always in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.protocol)
    }
}

/// One service port in one IP family: kube-proxy's `ServicePortName`, one per proxier family.
/// It owns the frontends it is served on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    /// The Service's `namespace/name`.
    pub service: NamespacedName,
    /// The port's name; empty for a single unnamed port.
    pub port: String,
    /// The port's protocol; with the name, what EndpointSlice ports are matched by.
    pub protocol: Protocol,
    /// The family of the cluster IP (and of the endpoints) this entry is for.
    pub family: IpFamily,
}

impl ServicePortName {
    /// `namespace/name:port`, the port part left out when unnamed: the port as a person names it
    /// (protocol and family are in the frontend next to it).
    pub fn short(&self) -> String {
        if self.port.is_empty() {
            self.service.to_string()
        } else {
            format!("{}:{}", self.service, self.port)
        }
    }
}

impl fmt::Display for ServicePortName {
    /// `namespace/name:port/PROTO (family)`, the port part left out when unnamed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ({})", self.short(), self.protocol, self.family)
    }
}

/// How a frontend is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    /// A cluster IP: traffic from pods and node processes, `internalTrafficPolicy`.
    ClusterIp,
    /// A node port on one of the node's addresses, `externalTrafficPolicy`.
    NodePort,
    /// A `spec.externalIPs` address, `externalTrafficPolicy`.
    ExternalIp,
    /// A load balancer ingress IP, `externalTrafficPolicy` and `loadBalancerSourceRanges`.
    LoadBalancer,
}

impl FrontendKind {
    /// Takes traffic from outside the node.
    pub fn is_external(self) -> bool {
        self != Self::ClusterIp
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::ExternalIp => "ExternalIP",
            Self::LoadBalancer => "LoadBalancer",
        })
    }
}

/// One backend of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: SocketAddr,
    /// Runs on this node: traffic from outside reaches it without SNAT.
    pub local: bool,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)?;
        if self.local {
            f.write_str(" (local)")?;
        }
        Ok(())
    }
}

/// Everything the datapath should serve on one frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendState {
    /// The service port that owns the frontend.
    pub owner: ServicePortName,
    pub kind: FrontendKind,
    /// Backends of the frontend's family, sorted by address and without duplicates.
    pub backends: Vec<Backend>,
    /// For an external frontend with `externalTrafficPolicy: Local`, what in-cluster clients
    /// (pods, node processes) get instead: every backend of the cluster, as kube-proxy
    /// short-circuits traffic from inside to external addresses. `None`: the same backends.
    pub internal_backends: Option<Vec<Backend>>,
    /// `externalTrafficPolicy: Local` on an external frontend: the backends are this node's
    /// only, the client address is kept, and traffic is dropped when there is none.
    pub local_only: bool,
    /// `loadBalancerSourceRanges` of the frontend's family, truncated, sorted and without
    /// duplicates; `None`: every source may connect. `Some` of an empty list: the service has
    /// ranges, none of this family, so no source of this family may connect.
    pub source_ranges: Option<Vec<IpNet>>,
    /// `sessionAffinity: ClientIP`: a client's new flows keep going to its last backend while
    /// its last new flow is younger than this many seconds.
    pub session_affinity: Option<u32>,
    /// The service port has no endpoint anywhere: connections are refused (kube-proxy's
    /// REJECT). Without backends but with this unset (endpoints exist, none in this frontend's
    /// scope), traffic is dropped.
    pub reject: bool,
}

impl fmt::Display for FrontendState {
    /// `ClusterIP default/web:http -> [10.0.0.1:8080, 10.0.0.2:8080 (local)]`, with the policy
    /// words that apply between the owner and the arrow.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.owner.short())?;
        if self.local_only {
            f.write_str(" local-only")?;
        }
        if let Some(ranges) = &self.source_ranges {
            let ranges: Vec<String> = ranges.iter().map(ToString::to_string).collect();
            write!(f, " source-ranges=[{}]", ranges.join(", "))?;
        }
        if let Some(timeout) = self.session_affinity {
            write!(f, " affinity={timeout}s")?;
        }
        if self.reject {
            return f.write_str(" -> reject");
        }
        let list = |backends: &[Backend]| {
            backends
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(f, " -> [{}]", list(&self.backends))?;
        if let Some(internal) = &self.internal_backends {
            write!(f, " in-cluster -> [{}]", list(internal))?;
        }
        Ok(())
    }
}

/// What one health check node port (`healthCheckNodePort`) reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealth {
    pub service: NamespacedName,
    /// Local ready endpoints (all ports and families of the service together).
    pub local_ready: usize,
}

/// The node's addresses that flows SNATed to other nodes' backends leave from: the default of
/// each family, and the address of each other external device the kernel may send such flows
/// out of (the datapath picks by the device of the FIB's route to the backend).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnatAddrs {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    /// Ifindex -> the device's own SNAT addresses, for devices that do not hold the default of
    /// a family and have an address of it; flows out of other devices leave from the default.
    pub devices: BTreeMap<u32, DeviceSnat>,
}

/// The SNAT addresses of flows leaving through one device, per family; `None`: the default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceSnat {
    /// The device's name, for the logs.
    pub name: String,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl DeviceSnat {
    pub fn get(&self, family: IpFamily) -> Option<IpAddr> {
        match family {
            IpFamily::V4 => self.v4.map(IpAddr::V4),
            IpFamily::V6 => self.v6.map(IpAddr::V6),
        }
    }
}

/// The usable addresses of one external device, in the kernel's order (IPv4's primary address
/// first): what the SNAT address of flows leaving through it is chosen from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceAddrs {
    pub ifindex: u32,
    pub name: String,
    pub addrs: Vec<IpAddr>,
}

/// Why a family's SNAT address is what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnatReason {
    /// The Node object's InternalIP of the family, an address node ports answer on.
    InternalIp,
    /// The first node port address of the family: the device scan's choice when it made one
    /// (the source of the kernel's default route, else the uplink's address; see
    /// [`crate::node::addrs`]), else the lowest.
    NodeAddress,
}

impl fmt::Display for SnatReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InternalIp => "the Node's InternalIP",
            Self::NodeAddress => "the devices' choice among the node port addresses",
        })
    }
}

/// Why each family's SNAT address of a [`SnatAddrs`] is what it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatReasons {
    pub v4: Option<SnatReason>,
    pub v6: Option<SnatReason>,
}

impl SnatReasons {
    pub fn get(&self, family: IpFamily) -> Option<SnatReason> {
        match family {
            IpFamily::V4 => self.v4,
            IpFamily::V6 => self.v6,
        }
    }
}

impl SnatAddrs {
    /// Each family's SNAT address: the first of `internal_ips` (the Node's InternalIPs) of the
    /// family that is one of the node port `addresses`, else the first of the family among
    /// `addresses`, which lists the device scan's choice first. An InternalIP that is no node
    /// port address (on a device the programs are not on, or outside `--nodeport-addresses`) is
    /// passed over: the node may not own it.
    ///
    /// Each of `devices` that does not hold the default of a family gets its first address of
    /// the family (in the kernel's order, as the kernel's own source selection takes it):
    /// a backend reached through that device's network sees the flow come from it.
    pub fn choose(
        addresses: &[IpAddr],
        internal_ips: &[IpAddr],
        devices: &[DeviceAddrs],
    ) -> (Self, SnatReasons) {
        let pick = |v6: bool| {
            let family = |a: &&IpAddr| a.is_ipv6() == v6;
            internal_ips
                .iter()
                .filter(family)
                .find(|a| addresses.contains(a))
                .map(|a| (*a, SnatReason::InternalIp))
                .or_else(|| {
                    addresses
                        .iter()
                        .find(family)
                        .map(|a| (*a, SnatReason::NodeAddress))
                })
        };
        let (mut addrs, mut reasons) = (Self::default(), SnatReasons::default());
        if let Some((IpAddr::V4(a), why)) = pick(false) {
            addrs.v4 = Some(a);
            reasons.v4 = Some(why);
        }
        if let Some((IpAddr::V6(a), why)) = pick(true) {
            addrs.v6 = Some(a);
            reasons.v6 = Some(why);
        }
        for device in devices {
            let own = |family: IpFamily| {
                if addrs.get(family).is_some_and(|d| device.addrs.contains(&d)) {
                    return None;
                }
                device
                    .addrs
                    .iter()
                    .find(|a| IpFamily::of(a) == family)
                    .copied()
            };
            let snat = DeviceSnat {
                name: device.name.clone(),
                v4: match own(IpFamily::V4) {
                    Some(IpAddr::V4(a)) => Some(a),
                    _ => None,
                },
                v6: match own(IpFamily::V6) {
                    Some(IpAddr::V6(a)) => Some(a),
                    _ => None,
                },
            };
            if snat.v4.is_some() || snat.v6.is_some() {
                addrs.devices.insert(device.ifindex, snat);
            }
        }
        (addrs, reasons)
    }

    pub fn get(&self, family: IpFamily) -> Option<IpAddr> {
        match family {
            IpFamily::V4 => self.v4.map(IpAddr::V4),
            IpFamily::V6 => self.v6.map(IpAddr::V6),
        }
    }
}

/// `--nodeport-addresses` (kube-proxy's `nodePortAddresses`): which node addresses node ports
/// answer on. Empty, or `all`: every usable address of the external devices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePortAddresses {
    /// Addresses inside these ranges.
    pub cidrs: Vec<IpNet>,
    /// The keyword `primary`: the Node object's first InternalIP of each family too (kube-proxy's
    /// "primary IPs"); of a family the Node has none of, the node port address SNAT would take.
    pub primary: bool,
}

impl NodePortAddresses {
    /// Parses a comma-separated list of CIDRs and the keywords `primary`, `all` (`0.0.0.0/0`
    /// and `::/0`) and `localhost`, which is refused: node ports never answer on loopback
    /// (kube-proxy serves them there only in iptables mode, for IPv4).
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match s {
                "primary" => out.primary = true,
                "all" => out.cidrs.extend(
                    ["0.0.0.0/0", "::/0"].map(|c| c.parse::<IpNet>().expect("a valid CIDR")),
                ),
                "localhost" => {
                    return Err(
                        "localhost: node ports are never served on loopback addresses".into(),
                    );
                }
                _ => out
                    .cidrs
                    .push(s.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| {
                        format!(
                            "{s:?} is neither a CIDR such as 10.0.0.0/8 or fd00::/64 nor `primary` \
                         or `all`"
                        )
                    })?),
            }
        }
        out.cidrs.sort();
        out.cidrs.dedup();
        Ok(out)
    }

    /// Whether node ports answer on fewer than every address (and health check node ports
    /// listen on those only, as kube-proxy's).
    pub fn is_restricted(&self) -> bool {
        let all = |v6: bool| {
            self.cidrs
                .iter()
                .any(|c| c.prefix_len() == 0 && c.addr().is_ipv6() == v6)
        };
        !(all(false) && all(true)) && (self.primary || !self.cidrs.is_empty())
    }

    /// The ranges the device scan keeps node port addresses in: none (every address) with
    /// `primary`, whose addresses only the plan knows (it sees the Node): it narrows them with
    /// [`NodePortAddresses::select`].
    pub fn scan_cidrs(&self) -> &[IpNet] {
        if self.primary { &[] } else { &self.cidrs }
    }

    /// Node port addresses among `addrs` (the scan's, in its order) given the Node's
    /// `internal_ips`: with `primary`, those inside the ranges and each family's primary one.
    pub fn select(&self, addrs: &[IpAddr], internal_ips: &[IpAddr]) -> Vec<IpAddr> {
        if !self.primary {
            return addrs.to_vec();
        }
        let primary = |v6: bool| {
            match internal_ips.iter().find(|a| a.is_ipv6() == v6) {
                Some(ip) => Some(*ip),
                // The first of the family in the scan's order is SNAT's choice.
                None => addrs.iter().find(|a| a.is_ipv6() == v6).copied(),
            }
        };
        let primaries = [primary(false), primary(true)];
        addrs
            .iter()
            .filter(|a| primaries.contains(&Some(**a)) || self.cidrs.iter().any(|c| c.contains(*a)))
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn nodeport_addresses_parse_cidrs_and_kube_proxys_keywords() {
        let parsed = NodePortAddresses::parse(" 10.0.0.1/8 , fd00::/64,primary").unwrap();
        assert!(parsed.primary);
        let truncated = NodePortAddresses::parse("10.1.2.3/8").unwrap();
        assert_eq!(truncated.cidrs[0].to_string(), "10.0.0.0/8");
        assert_eq!(
            parsed.cidrs,
            ["10.0.0.0/8".parse().unwrap(), "fd00::/64".parse().unwrap()]
        );
        assert!(parsed.is_restricted());
        assert_eq!(
            parsed.scan_cidrs(),
            &[] as &[IpNet],
            "primary: the plan narrows"
        );

        let all = NodePortAddresses::parse("all").unwrap();
        assert!(!all.is_restricted(), "both families' /0");
        assert!(
            NodePortAddresses::parse("0.0.0.0/0")
                .unwrap()
                .is_restricted()
        );
        assert!(!NodePortAddresses::parse("").unwrap().is_restricted());
        assert!(
            NodePortAddresses::parse("10.0.0.0/8")
                .unwrap()
                .is_restricted()
        );

        for (bad, says) in [
            ("localhost", "loopback"),
            ("10.0.0.0/33", "neither a CIDR"),
            ("10.0.0.0/8,banana", "\"banana\""),
            ("primery", "`primary`"),
        ] {
            let err = NodePortAddresses::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn primary_is_each_familys_first_internal_ip_else_the_scans_first() {
        let scan = ips(&["192.168.1.5", "10.0.0.5", "2001:db8::5", "2001:db8::6"]);
        let primary = NodePortAddresses::parse("primary").unwrap();
        assert_eq!(
            primary.select(&scan, &ips(&["10.0.0.5", "2001:db8::6", "10.0.0.9"])),
            ips(&["10.0.0.5", "2001:db8::6"])
        );
        assert_eq!(
            primary.select(&scan, &ips(&["10.0.0.5"])),
            ips(&["10.0.0.5", "2001:db8::5"]),
            "no IPv6 InternalIP: the scan's first IPv6 address"
        );
        // An InternalIP the node's devices do not hold serves nothing.
        assert_eq!(
            primary.select(&scan, &ips(&["172.16.0.1"])),
            ips(&["2001:db8::5"])
        );
        let with_range = NodePortAddresses::parse("primary,192.168.0.0/16").unwrap();
        assert_eq!(
            with_range.select(&scan, &ips(&["10.0.0.5"])),
            ips(&["192.168.1.5", "10.0.0.5", "2001:db8::5"])
        );
        assert_eq!(NodePortAddresses::default().select(&scan, &[]), scan);
    }
}
