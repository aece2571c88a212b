//! The source-independent model: what a Service and its EndpointSlices mean to the proxy, with
//! no Kubernetes or BPF types. Both sources (manifest files, the Kubernetes API) end here, and
//! [`frontend`] holds the desired state the plan computes from it.

pub mod frontend;
#[cfg(test)]
pub(crate) mod testing;

pub use frontend::{
    Backend, DeviceAddrs, DeviceSnat, Frontend, FrontendKind, FrontendState, NodePortAddresses,
    ServiceHealth, ServicePortName, SnatAddrs, SnatReason, SnatReasons,
};

use std::{fmt, net::IpAddr};

/// `namespace/name` of an object (a Service, an EndpointSlice).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Transport protocols of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    /// Parses the Kubernetes spelling; a missing protocol means TCP.
    pub fn parse(s: Option<&str>) -> Result<Self, String> {
        match s {
            None | Some("TCP") => Ok(Self::Tcp),
            Some("UDP") => Ok(Self::Udp),
            Some("SCTP") => Ok(Self::Sctp),
            Some(other) => Err(format!(
                "unknown protocol {other:?} (want TCP, UDP or SCTP)"
            )),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// What kind of Service it is, as far as the proxy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

/// Traffic policy scope (`internalTrafficPolicy` / `externalTrafficPolicy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name; empty for a single unnamed port. EndpointSlice ports are matched by it.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub node_port: Option<u16>,
}

/// A Service as the proxy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: NamespacedName,
    pub service_type: ServiceType,
    /// Cluster IPs, at most one per family, primary first. Empty for headless services.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub internal_traffic_policy: TrafficPolicy,
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.healthCheckNodePort` (externalTrafficPolicy Local).
    pub health_check_node_port: Option<u16>,
    /// `spec.loadBalancerSourceRanges`: only these clients may use the external addresses.
    pub load_balancer_source_ranges: Vec<ipnet::IpNet>,
    /// `sessionAffinity: ClientIP`: its `sessionAffinityConfig.clientIP.timeoutSeconds`.
    pub session_affinity: Option<u32>,
}

/// A port of an EndpointSlice. Kubernetes has already resolved named target ports per pod, so a
/// service port finds its endpoints' port by name (and protocol).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `addresses[0]` of the endpoint; kube-proxy ignores the others.
    pub addr: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    /// Zones named by the `hints.forZones` of the endpoint.
    pub zone_hints: Vec<String>,
    /// Nodes named by the `hints.forNodes` of the endpoint.
    pub node_hints: Vec<String>,
}

/// An EndpointSlice as the proxy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    /// The slice's own `namespace/name`.
    pub name: NamespacedName,
    /// The service named by the slice's `kubernetes.io/service-name` label.
    pub service: NamespacedName,
    pub family: IpFamily,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

/// Kinds of objects the proxy reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    /// Cluster-scoped: its namespace is empty.
    Node,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Node => "Node",
        })
    }
}

/// `kind namespace/name` of an object (`kind name` when cluster-scoped), as problems name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}
