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
