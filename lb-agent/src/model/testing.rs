//! Builders for model values in unit tests: one copy instead of one per test module.

use std::net::{IpAddr, SocketAddr};

use super::{
    Backend, Endpoint, EndpointPort, EndpointSlice, Frontend, FrontendKind, FrontendState,
    IpFamily, NamespacedName, Protocol, Service, ServicePort, ServicePortName, ServiceType,
    TrafficPolicy,
};

/// `default/{n}`.
pub fn name(n: &str) -> NamespacedName {
    named("default", n)
}

/// `{namespace}/{name}`.
pub fn named(namespace: &str, name: &str) -> NamespacedName {
    NamespacedName {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP literal")
}

pub fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

pub fn svc_port(name: &str, port: u16, protocol: Protocol, node_port: Option<u16>) -> ServicePort {
    ServicePort {
        name: name.to_owned(),
        port,
        protocol,
        node_port,
    }
}

pub fn ep_port(name: &str, port: u16, protocol: Protocol) -> EndpointPort {
    EndpointPort {
        name: name.to_owned(),
        port,
        protocol,
    }
}

/// A ready endpoint on `node` (if any) in `zone` (if any), without hints.
pub fn endpoint(addr: &str, node: Option<&str>, zone: Option<&str>) -> Endpoint {
    Endpoint {
        addr: ip(addr),
        ready: true,
        serving: true,
        terminating: false,
        node_name: node.map(str::to_owned),
        zone: zone.map(str::to_owned),
        zone_hints: vec![],
        node_hints: vec![],
    }
}

/// A ClusterIP service `default/{n}` on `ips` with ports (name, number, protocol).
pub fn svc(n: &str, ips: &[&str], ports: &[(&str, u16, Protocol)]) -> Service {
    Service {
        name: name(n),
        service_type: ServiceType::ClusterIp,
        cluster_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        ports: ports
            .iter()
            .map(|(n, p, proto)| svc_port(n, *p, *proto, None))
            .collect(),
        external_ips: vec![],
        load_balancer_ips: vec![],
        internal_traffic_policy: TrafficPolicy::Cluster,
        external_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        load_balancer_source_ranges: vec![],
        session_affinity: None,
    }
}

/// A ready endpoint on node `n2` (not this node, which the tests call `n1`).
pub fn ep(addr: &str) -> Endpoint {
    endpoint(addr, Some("n2"), None)
}

/// Builders for endpoint conditions, locality and hints.
pub trait EpExt {
    /// On this node, `n1`.
    fn local(self) -> Self;
    fn on(self, node: &str) -> Self;
    fn unready(self) -> Self;
    /// Terminating, still serving or not.
    fn terminating(self, serving: bool) -> Self;
    fn zones(self, zones: &[&str]) -> Self;
    fn for_nodes(self, nodes: &[&str]) -> Self;
}

impl EpExt for Endpoint {
    fn local(self) -> Self {
        self.on("n1")
    }
    fn on(mut self, node: &str) -> Self {
        self.node_name = Some(node.into());
        self
    }
    fn unready(mut self) -> Self {
        self.ready = false;
        self.serving = false;
        self
    }
    fn terminating(mut self, serving: bool) -> Self {
        self.ready = false;
        self.serving = serving;
        self.terminating = true;
        self
    }
    fn zones(mut self, zones: &[&str]) -> Self {
        self.zone_hints = zones.iter().map(|z| (*z).into()).collect();
        self
    }
    fn for_nodes(mut self, nodes: &[&str]) -> Self {
        self.node_hints = nodes.iter().map(|n| (*n).into()).collect();
        self
    }
}

/// A slice `default/{slice_name}` of service `default/{svc}`.
pub fn slice_of(
    slice_name: &str,
    svc: &str,
    family: IpFamily,
    ports: &[(&str, u16, Protocol)],
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    EndpointSlice {
        name: name(slice_name),
        service: name(svc),
        family,
        ports: ports
            .iter()
            .map(|(n, p, proto)| ep_port(n, *p, *proto))
            .collect(),
        endpoints,
    }
}

/// A TCP frontend, `10.96.0.1:80` or `[fd00::1]:80`.
pub fn frontend(addr: &str) -> Frontend {
    Frontend {
        addr: addr.parse().unwrap(),
        protocol: Protocol::Tcp,
    }
}

/// The unnamed TCP port of `default/{svc}` in `family`.
pub fn port_name(svc: &str, family: IpFamily) -> ServicePortName {
    ServicePortName {
        service: name(svc),
        port: String::new(),
        protocol: Protocol::Tcp,
        family,
    }
}

/// A ClusterIP frontend's state owned by `default/{owner}` in the family of the backends
/// (`ip:port`, none local).
pub fn cluster_ip_state(owner: &str, backends: &[&str]) -> FrontendState {
    let backends: Vec<SocketAddr> = backends.iter().map(|b| b.parse().unwrap()).collect();
    let family = backends
        .first()
        .map_or(IpFamily::V4, |b| IpFamily::of(&b.ip()));
    FrontendState {
        owner: port_name(owner, family),
        kind: FrontendKind::ClusterIp,
        backends: backends
            .into_iter()
            .map(|addr| Backend { addr, local: false })
            .collect(),
        internal_backends: None,
        local_only: false,
        source_ranges: None,
        session_affinity: None,
        reject: false,
    }
}
