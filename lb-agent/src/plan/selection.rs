//! Endpoint selection with kube-proxy's rules: from services and their slices to the endpoints
//! of every service port, per traffic policy scope, and to what each ClusterIP frontend serves.
//!
//! The rules, each with a table-driven test named after it below:
//! - slices of a service are merged, endpoints deduplicated by `ip:port` with a local copy
//!   winning a disagreement, and sorted (`pkg/proxy/endpointslicecache.go`);
//! - a service port (namespace/name, port name, protocol) takes its endpoints' port from the
//!   slice port of the same name and protocol;
//! - a family is served only where the service has a cluster IP of that family, from slices of
//!   that family;
//! - skipped services: headless (no cluster IP) and ExternalName (`pkg/proxy/util`);
//! - scopes: Cluster endpoints are needed when `internalTrafficPolicy` is Cluster or the port is
//!   externally accessible; Local endpoints when `internalTrafficPolicy` is Local, or
//!   `externalTrafficPolicy` is Local and the port is externally accessible
//!   (`pkg/proxy/serviceport.go`);
//! - Cluster set: ready endpoints after topology filtering, else serving and terminating ones
//!   from anywhere; Local set: local ready endpoints, else local serving and terminating ones;
//! - topology (`spec.trafficDistribution` and topology-aware routing produce the hints):
//!   PreferSameNode when every ready endpoint has node hints and one names this node, else
//!   PreferSameZone when every ready endpoint has zone hints and one names this node's zone
//!   (its `topology.kubernetes.io/zone` label), else no filtering; only the Cluster set is
//!   filtered (`pkg/proxy/topology.go`).
//!
//! Pure: no I/O, no clock.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;

use crate::model::{
    EndpointSlice, IpFamily, NamespacedName, Protocol, Service, ServiceHealth, ServicePort,
    ServicePortName, ServiceType, TrafficPolicy,
};

use super::Problem;

/// What selection needs to know about this node.
#[derive(Clone, Debug, Default)]
pub struct NodeContext {
    pub node_name: Option<String>,
    /// This Node's `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
}

/// The endpoints of one service port, per scope (kube-proxy's `CategorizeEndpoints`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortEndpoints {
    /// Endpoints for traffic under the Cluster policy, after topology filtering and the
    /// terminating fallback; `None` when the port never uses the Cluster policy.
    pub cluster: Option<Vec<SocketAddr>>,
    /// Local endpoints for traffic under the Local policy (ready, else serving and
    /// terminating); `None` when the port never uses the Local policy.
    pub local: Option<Vec<SocketAddr>>,
    /// Every endpoint of the port that runs on this node (its slice names this node), usable or
    /// not, sorted: the one place locality is decided.
    pub on_this_node: Vec<SocketAddr>,
    /// A usable endpoint exists somewhere in the cluster. With no endpoint at all the
    /// datapath rejects; with endpoints but none in the scope asked for, it drops.
    pub has_any_endpoints: bool,
    /// Local endpoints that are ready: what a health check node port reports (terminating
    /// ones do not count there, although traffic still goes to them).
    pub local_ready: usize,
}

impl PortEndpoints {
    /// Whether the endpoint runs on this node.
    pub fn is_local(&self, addr: &SocketAddr) -> bool {
        self.on_this_node.binary_search(addr).is_ok()
    }
}

/// Everything the datapath needs for one service port in one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortInfo {
    /// The Service's cluster IP of this family.
    pub cluster_ip: IpAddr,
    /// The service port number.
    pub port: u16,
    /// The node port, for NodePort and LoadBalancer services that have one.
    pub node_port: Option<u16>,
    /// External IPs of this family.
    pub external_ips: Vec<IpAddr>,
    /// Load balancer ingress IPs (VIP mode) of this family.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `loadBalancerSourceRanges` of this family, sorted and without duplicates; `None` when
    /// the service has none (of any family): every source may use the load balancer IPs.
    pub source_ranges: Option<Vec<IpNet>>,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// `externalTrafficPolicy: Local` on a service that can take external traffic.
    pub external_policy_local: bool,
    /// `sessionAffinity: ClientIP` with this timeout in seconds.
    pub session_affinity: Option<u32>,
    /// The endpoints of each scope.
    pub endpoints: PortEndpoints,
}

impl ServicePortInfo {
    /// Reachable other than through the cluster IP: a node port, external IPs or load balancer
    /// IPs of this family.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// The port ever sends traffic under the Cluster policy. External traffic with a Local
    /// policy still needs the Cluster set: traffic from inside the cluster to an external
    /// address is short-circuited to it.
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible()
    }

    /// The port ever sends traffic under the Local policy.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.external_policy_local && self.externally_accessible())
    }

    /// Endpoints for traffic to the cluster IP (`internalTrafficPolicy`).
    pub fn internal_endpoints(&self) -> &[SocketAddr] {
        let set = if self.internal_policy_local {
            &self.endpoints.local
        } else {
            &self.endpoints.cluster
        };
        set.as_deref().unwrap_or_default()
    }

    /// Endpoints for traffic from outside to a node port, external IP or load balancer IP
    /// (`externalTrafficPolicy`); none when the port takes no external traffic in this family.
    pub fn external_endpoints(&self) -> &[SocketAddr] {
        if !self.externally_accessible() {
            return &[];
        }
        let set = if self.external_policy_local {
            &self.endpoints.local
        } else {
            &self.endpoints.cluster
        };
        set.as_deref().unwrap_or_default()
    }
}

/// Why a service programs nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// `clusterIP: None`, or no cluster IP at all.
    Headless,
    /// `type: ExternalName`: answered by DNS, not by the proxy.
    ExternalName,
}

/// One endpoint of one service port, after merging all slices of the service.
#[derive(Clone, Debug, PartialEq)]
struct Candidate {
    addr: SocketAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    is_local: bool,
    zone_hints: Vec<String>,
    node_hints: Vec<String>,
}

/// Every service port's endpoints, plus what could not be served and why.
#[derive(Debug, Default)]
pub struct Selection {
    /// Every service port per family, with both scopes' endpoints.
    pub ports: BTreeMap<ServicePortName, ServicePortInfo>,
    /// Services that program nothing, by rule.
    pub skipped: BTreeMap<NamespacedName, SkipReason>,
    /// The health check node ports of services with `externalTrafficPolicy: Local`, with the
    /// number of this node's ready endpoints (all ports and families of the service together).
    pub health_checks: BTreeMap<u16, ServiceHealth>,
    /// Ports that cannot be served.
    pub problems: Vec<Problem>,
}

/// Why a service is not proxied at all, if it is not.
pub fn skip_reason(svc: &Service) -> Option<SkipReason> {
    if svc.service_type == ServiceType::ExternalName {
        Some(SkipReason::ExternalName)
    } else if svc.cluster_ips.is_empty() {
        Some(SkipReason::Headless)
    } else {
        None
    }
}

fn of_family(ips: &[IpAddr], family: IpFamily) -> Vec<IpAddr> {
    ips.iter()
        .filter(|ip| IpFamily::of(ip) == family)
        .copied()
        .collect()
}

/// The source ranges of one family; `None` when the service has none at all.
fn ranges_of_family(ranges: &[IpNet], family: IpFamily) -> Option<Vec<IpNet>> {
    if ranges.is_empty() {
        return None;
    }
    let of_family: BTreeSet<IpNet> = ranges
        .iter()
        .filter(|n| IpFamily::of(&n.addr()) == family)
        .copied()
        .collect();
    Some(of_family.into_iter().collect())
}

/// Selects the endpoints of every service port from every service and slice known.
pub fn select(services: &[Service], slices: &[EndpointSlice], node: &NodeContext) -> Selection {
    let mut by_service: HashMap<&NamespacedName, Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        by_service.entry(&slice.service).or_default().push(slice);
    }
    let mut out = Selection::default();
    for svc in services {
        match skip_reason(svc) {
            Some(reason) => {
                out.skipped.insert(svc.name.clone(), reason);
            }
            None => {
                let slices = by_service.get(&svc.name).map(Vec::as_slice).unwrap_or(&[]);
                select_service(svc, slices, node, &mut out);
            }
        }
        if let Some(port) = svc.health_check_node_port
            && svc.external_traffic_policy == TrafficPolicy::Local
        {
            let local_ready = out
                .ports
                .iter()
                .filter(|(spn, _)| spn.service == svc.name)
                .map(|(_, info)| info.endpoints.local_ready)
                .max()
                .unwrap_or(0);
            out.health_checks.insert(
                port,
                ServiceHealth {
                    service: svc.name.clone(),
                    local_ready,
                },
            );
        }
    }
    out
}

/// The ports of one proxied service, both families.
fn select_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &NodeContext,
    out: &mut Selection,
) {
    // kube-proxy's ExternalPolicyLocal: only a service that takes external traffic has an
    // external policy at all.
    let takes_external = matches!(
        svc.service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    ) || !svc.external_ips.is_empty();
    let external_policy_local =
        takes_external && svc.external_traffic_policy == TrafficPolicy::Local;
    for port in &svc.ports {
        if port.protocol == Protocol::Sctp {
            out.problems.push(Problem::SctpPort {
                service: svc.name.clone(),
                port: port.name.clone(),
            });
            continue;
        }
        for ip in &svc.cluster_ips {
            let family = IpFamily::of(ip);
            let mut info = ServicePortInfo {
                cluster_ip: *ip,
                port: port.port,
                node_port: port.node_port,
                external_ips: of_family(&svc.external_ips, family),
                load_balancer_ips: of_family(&svc.load_balancer_ips, family),
                source_ranges: ranges_of_family(&svc.load_balancer_source_ranges, family),
                internal_policy_local: svc.internal_traffic_policy == TrafficPolicy::Local,
                external_policy_local,
                session_affinity: svc.session_affinity,
                endpoints: PortEndpoints::default(),
            };
            let candidates = merge(slices, family, port, node);
            info.endpoints = categorize(&candidates, &info, node);
            out.ports.insert(
                ServicePortName {
                    service: svc.name.clone(),
                    port: port.name.clone(),
                    protocol: port.protocol,
                    family,
                },
                info,
            );
        }
    }
}

/// Merges the slices of one service for one port and family: ports matched by name and protocol,
/// endpoints deduplicated by `ip:port` (a local copy wins a disagreement), sorted.
fn merge(
    slices: &[&EndpointSlice],
    family: IpFamily,
    port: &ServicePort,
    node: &NodeContext,
) -> Vec<Candidate> {
    let mut merged: BTreeMap<SocketAddr, Candidate> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.family == family) {
        let Some(ep_port) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for ep in slice
            .endpoints
            .iter()
            .filter(|e| IpFamily::of(&e.addr) == family)
        {
            let addr = SocketAddr::new(ep.addr, ep_port.port);
            let is_local = node.node_name.is_some() && ep.node_name == node.node_name;
            let candidate = Candidate {
                addr,
                ready: ep.ready,
                serving: ep.serving,
                terminating: ep.terminating,
                is_local,
                zone_hints: ep.zone_hints.clone(),
                node_hints: ep.node_hints.clone(),
            };
            match merged.get(&addr) {
                Some(existing) if existing.is_local || !is_local => {}
                _ => {
                    merged.insert(addr, candidate);
                }
            }
        }
    }
    merged.into_values().collect()
}

/// Which hints filter the Cluster set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    Any,
    SameNode,
    SameZone,
}

/// Topology-aware routing: prefer the endpoints hinted for this node, then for this zone, but
/// only when every ready endpoint carries hints of that kind (otherwise hints are being rolled
/// out) and at least one is meant for us.
fn topology_mode(candidates: &[Candidate], node: &NodeContext) -> Topology {
    let ready: Vec<&Candidate> = candidates.iter().filter(|c| c.ready).collect();
    if ready.is_empty() {
        return Topology::Any;
    }
    let names =
        |hints: &[String], ours: &Option<String>| ours.as_ref().is_some_and(|o| hints.contains(o));
    if ready.iter().all(|c| !c.node_hints.is_empty())
        && ready.iter().any(|c| names(&c.node_hints, &node.node_name))
    {
        return Topology::SameNode;
    }
    if ready.iter().all(|c| !c.zone_hints.is_empty())
        && ready.iter().any(|c| names(&c.zone_hints, &node.zone))
    {
        return Topology::SameZone;
    }
    Topology::Any
}

fn addrs<'a>(it: impl Iterator<Item = &'a Candidate>) -> Vec<SocketAddr> {
    it.map(|c| c.addr).collect()
}

/// kube-proxy's `CategorizeEndpoints` for one service port.
fn categorize(
    candidates: &[Candidate],
    info: &ServicePortInfo,
    node: &NodeContext,
) -> PortEndpoints {
    let mut out = PortEndpoints {
        local_ready: candidates.iter().filter(|c| c.is_local && c.ready).count(),
        // Candidates are sorted by address.
        on_this_node: addrs(candidates.iter().filter(|c| c.is_local)),
        ..PortEndpoints::default()
    };
    if info.uses_cluster_endpoints() {
        let mode = topology_mode(candidates, node);
        let available = |c: &&Candidate| match mode {
            Topology::Any => true,
            Topology::SameNode => node
                .node_name
                .as_ref()
                .is_some_and(|n| c.node_hints.contains(n)),
            Topology::SameZone => node.zone.as_ref().is_some_and(|z| c.zone_hints.contains(z)),
        };
        let mut cluster = addrs(candidates.iter().filter(|c| c.ready).filter(available));
        // No ready endpoint anywhere (a topology mode is only chosen when one of ours is ready).
        if cluster.is_empty() {
            cluster = addrs(candidates.iter().filter(|c| c.serving && c.terminating));
        }
        out.has_any_endpoints = !cluster.is_empty();
        out.cluster = Some(cluster);
    }
    if info.uses_local_endpoints() {
        out.has_any_endpoints |= candidates
            .iter()
            .any(|c| c.ready || (c.serving && c.terminating));
        let local = candidates.iter().filter(|c| c.is_local);
        let mut chosen = addrs(local.clone().filter(|c| c.ready));
        if chosen.is_empty() {
            chosen = addrs(local.filter(|c| c.serving && c.terminating));
        }
        out.local = Some(chosen);
    }
    out
}

#[cfg(test)]
mod tests {
    //! One table-driven test per rule of the module documentation, named after the rule.

    use super::*;
    use crate::{
        model::{
            Endpoint, Frontend, FrontendState,
            testing::{EpExt as _, ep, name, slice_of, svc},
        },
        plan::frontends,
    };

    const TCP: Protocol = Protocol::Tcp;
    const UDP: Protocol = Protocol::Udp;

    /// Ports of a slice: name, number, protocol.
    type Ports = &'static [(&'static str, u16, Protocol)];
    /// Expected endpoints, `ip:port`.
    type Addrs = &'static [&'static str];

    /// The usual service of these tests: `web`, 10.96.0.1 and fd00::1, one unnamed TCP port 80.
    fn web() -> Service {
        svc("web", &["10.96.0.1", "fd00::1"], &[("", 80, TCP)])
    }

    /// A slice of `web` with one unnamed TCP port 8080; the family follows the first endpoint.
    fn slice(slice_name: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
        let family = endpoints
            .first()
            .map_or(IpFamily::V4, |e| IpFamily::of(&e.addr));
        slice_of(slice_name, "web", family, &[("", 8080, TCP)], endpoints)
    }

    fn node() -> NodeContext {
        NodeContext {
            node_name: Some("n1".into()),
            zone: Some("z1".into()),
        }
    }

    fn port_name(svc: &str, port: &str, protocol: Protocol, family: IpFamily) -> ServicePortName {
        ServicePortName {
            service: name(svc),
            port: port.into(),
            protocol,
            family,
        }
    }

    fn strings(addrs: &[SocketAddr]) -> Vec<String> {
        addrs.iter().map(ToString::to_string).collect()
    }

    /// The port `web` unnamed TCP of the given family.
    fn web_port(sel: &Selection, family: IpFamily) -> &ServicePortInfo {
        &sel.ports[&port_name("web", "", TCP, family)]
    }

    /// The frontends the plan makes of a selection, no node addresses.
    fn frontends_of(sel: &Selection) -> BTreeMap<Frontend, FrontendState> {
        frontends(&sel.ports, &[]).0
    }

    fn frontend_backends(sel: &Selection, frontend: &str, protocol: Protocol) -> Vec<String> {
        let fe = Frontend {
            addr: frontend.parse().unwrap(),
            protocol,
        };
        frontends_of(sel)[&fe]
            .backends
            .iter()
            .map(|b| b.addr.to_string())
            .collect()
    }

    /// Checks the Cluster and Local sets (`None`: the scope is not used) of `web`'s IPv4 port.
    struct Case {
        rule: &'static str,
        service: Service,
        slices: Vec<EndpointSlice>,
        node: NodeContext,
        cluster: Option<&'static [&'static str]>,
        local: Option<&'static [&'static str]>,
    }

    fn check(cases: Vec<Case>) {
        for c in cases {
            let sel = select(std::slice::from_ref(&c.service), &c.slices, &c.node);
            let info = web_port(&sel, IpFamily::V4);
            let cluster = info.endpoints.cluster.as_deref().map(strings);
            let local = info.endpoints.local.as_deref().map(strings);
            let want = |w: Option<&[&str]>| w.map(|w| w.iter().map(|s| s.to_string()).collect());
            assert_eq!(cluster, want(c.cluster), "{}: Cluster set", c.rule);
            assert_eq!(local, want(c.local), "{}: Local set", c.rule);
            // The ClusterIP frontend serves the set of its internal policy.
            assert_eq!(
                frontend_backends(&sel, "10.96.0.1:80", TCP),
                strings(info.internal_endpoints()),
                "{}: frontend",
                c.rule
            );
            assert!(info.local_set_is_on_this_node(), "{}: locality", c.rule);
        }
    }

    impl ServicePortInfo {
        /// Every endpoint of the Local set runs on this node.
        fn local_set_is_on_this_node(&self) -> bool {
            self.endpoints
                .local
                .iter()
                .flatten()
                .all(|a| self.endpoints.is_local(a))
        }
    }

    fn local_itp(s: Service) -> Service {
        Service {
            internal_traffic_policy: TrafficPolicy::Local,
            ..s
        }
    }

    #[test]
    fn rule_slices_are_merged_deduplicated_and_sorted() {
        check(vec![
            Case {
                rule: "endpoints of every slice of the service, sorted",
                service: web(),
                slices: vec![
                    slice("a", vec![ep("10.0.0.3"), ep("10.0.0.1")]),
                    slice("b", vec![ep("10.0.0.2")]),
                ],
                node: node(),
                cluster: Some(&["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]),
                local: None,
            },
            Case {
                rule: "an endpoint in two slices (moving between them) counts once",
                service: web(),
                slices: vec![
                    slice("a", vec![ep("10.0.0.1"), ep("10.0.0.2")]),
                    slice("b", vec![ep("10.0.0.2"), ep("10.0.0.3")]),
                ],
                node: node(),
                cluster: Some(&["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]),
                local: None,
            },
            Case {
                rule: "slices of other services are ignored",
                service: web(),
                slices: vec![slice_of(
                    "x",
                    "other",
                    IpFamily::V4,
                    &[("", 8080, TCP)],
                    vec![ep("10.0.0.9")],
                )],
                node: node(),
                cluster: Some(&[]),
                local: None,
            },
            Case {
                rule: "no slice at all",
                service: web(),
                slices: vec![],
                node: node(),
                cluster: Some(&[]),
                local: None,
            },
        ]);
    }

    #[test]
    fn rule_a_local_copy_wins_a_disagreement() {
        check(vec![
            Case {
                rule: "remote copy first, local copy second",
                service: local_itp(web()),
                slices: vec![
                    slice("a", vec![ep("10.0.0.1")]),
                    slice("b", vec![ep("10.0.0.1").local()]),
                ],
                node: node(),
                cluster: None,
                local: Some(&["10.0.0.1:8080"]),
            },
            Case {
                rule: "local copy first, remote copy second",
                service: local_itp(web()),
                slices: vec![
                    slice("a", vec![ep("10.0.0.1").local()]),
                    slice("b", vec![ep("10.0.0.1")]),
                ],
                node: node(),
                cluster: None,
                local: Some(&["10.0.0.1:8080"]),
            },
        ]);
    }

    #[test]
    fn rule_ports_match_by_name_and_protocol() {
        let two_ports = svc(
            "web",
            &["10.96.0.1"],
            &[("http", 80, TCP), ("dns", 53, UDP)],
        );
        let cases: &[(&str, Ports, Addrs, Addrs)] = &[
            (
                "both ports by name",
                &[("http", 8080, TCP), ("dns", 5353, UDP)],
                &["10.0.0.1:8080"],
                &["10.0.0.1:5353"],
            ),
            (
                "same name, other protocol: no match",
                &[("http", 8080, UDP), ("dns", 5353, TCP)],
                &[],
                &[],
            ),
            (
                "a port missing from the slice",
                &[("http", 8080, TCP)],
                &["10.0.0.1:8080"],
                &[],
            ),
            (
                "unnamed slice port does not match a named one",
                &[("", 8080, TCP)],
                &[],
                &[],
            ),
        ];
        for (rule, slice_ports, http, dns) in cases {
            let sl = slice_of("a", "web", IpFamily::V4, slice_ports, vec![ep("10.0.0.1")]);
            let sel = select(std::slice::from_ref(&two_ports), &[sl], &node());
            assert_eq!(
                frontend_backends(&sel, "10.96.0.1:80", TCP),
                *http,
                "{rule}: http"
            );
            assert_eq!(
                frontend_backends(&sel, "10.96.0.1:53", UDP),
                *dns,
                "{rule}: dns"
            );
            let info = &sel.ports[&port_name("web", "dns", UDP, IpFamily::V4)];
            assert_eq!(strings(info.internal_endpoints()), *dns, "{rule}: dns port");
        }
    }

    #[test]
    fn rule_one_family_per_cluster_ip() {
        let v4 = || slice("a", vec![ep("10.0.0.1")]);
        let v6 = || slice("b", vec![ep("fd01::1")]);
        // (rule, service, slices, IPv4 backends, IPv6 backends if the family is served)
        type Row = (
            &'static str,
            Service,
            Vec<EndpointSlice>,
            Addrs,
            Option<Addrs>,
        );
        let cases: Vec<Row> = vec![
            (
                "dual-stack: each family from its own slices",
                web(),
                vec![v4(), v6()],
                &["10.0.0.1:8080"],
                Some(&["[fd01::1]:8080"]),
            ),
            (
                "IPv4-only service: IPv6 slices are not served",
                svc("web", &["10.96.0.1"], &[("", 80, TCP)]),
                vec![v4(), v6()],
                &["10.0.0.1:8080"],
                None,
            ),
            (
                "a family without slices has no endpoints",
                web(),
                vec![v4()],
                &["10.0.0.1:8080"],
                Some(&[]),
            ),
        ];
        for (rule, service, slices, want_v4, want_v6) in cases {
            let sel = select(std::slice::from_ref(&service), &slices, &node());
            assert_eq!(
                frontend_backends(&sel, "10.96.0.1:80", TCP),
                want_v4,
                "{rule}"
            );
            let v6_port = sel.ports.get(&port_name("web", "", TCP, IpFamily::V6));
            match want_v6 {
                Some(want) => {
                    // IPv6 endpoints are written with brackets wherever a person reads them.
                    assert_eq!(frontend_backends(&sel, "[fd00::1]:80", TCP), want, "{rule}");
                    assert!(v6_port.is_some(), "{rule}");
                }
                None => {
                    assert!(v6_port.is_none(), "{rule}");
                    assert_eq!(frontends_of(&sel).len(), 1, "{rule}");
                }
            }
        }
    }

    #[test]
    fn rule_skipped_services() {
        let cases: Vec<(&str, Service, Option<SkipReason>)> = vec![
            (
                "headless (no cluster IP)",
                svc("h", &[], &[("", 80, TCP)]),
                Some(SkipReason::Headless),
            ),
            (
                "ExternalName, even with a cluster IP left over",
                Service {
                    service_type: ServiceType::ExternalName,
                    ..svc("e", &["10.96.0.9"], &[("", 80, TCP)])
                },
                Some(SkipReason::ExternalName),
            ),
            (
                "ClusterIP",
                svc("c", &["10.96.0.9"], &[("", 80, TCP)]),
                None,
            ),
            (
                "NodePort",
                Service {
                    service_type: ServiceType::NodePort,
                    ..svc("n", &["10.96.0.9"], &[("", 80, TCP)])
                },
                None,
            ),
        ];
        for (rule, service, want) in cases {
            let slices = [slice_of(
                "s",
                &service.name.name,
                IpFamily::V4,
                &[("", 8080, TCP)],
                vec![ep("10.0.0.1")],
            )];
            let sel = select(std::slice::from_ref(&service), &slices, &node());
            assert_eq!(skip_reason(&service), want, "{rule}");
            assert_eq!(sel.skipped.get(&service.name).copied(), want, "{rule}");
            assert_eq!(frontends_of(&sel).is_empty(), want.is_some(), "{rule}");
            assert_eq!(sel.ports.is_empty(), want.is_some(), "{rule}");
        }
    }

    #[test]
    fn rule_only_ready_endpoints_are_used() {
        check(vec![
            Case {
                rule: "not ready and not serving: no traffic",
                service: web(),
                slices: vec![slice("a", vec![ep("10.0.0.1"), ep("10.0.0.2").unready()])],
                node: node(),
                cluster: Some(&["10.0.0.1:8080"]),
                local: None,
            },
            Case {
                rule: "serving but not ready (and not terminating): no traffic",
                service: web(),
                slices: vec![slice(
                    "a",
                    vec![
                        ep("10.0.0.1"),
                        Endpoint {
                            ready: false,
                            ..ep("10.0.0.2")
                        },
                    ],
                )],
                node: node(),
                cluster: Some(&["10.0.0.1:8080"]),
                local: None,
            },
            Case {
                rule: "terminating endpoints are not used while some are ready",
                service: web(),
                slices: vec![slice(
                    "a",
                    vec![ep("10.0.0.1"), ep("10.0.0.2").terminating(true)],
                )],
                node: node(),
                cluster: Some(&["10.0.0.1:8080"]),
                local: None,
            },
        ]);
    }

    #[test]
    fn rule_terminating_fallback() {
        check(vec![
            Case {
                rule: "Cluster: nothing ready, serving+terminating from anywhere",
                service: web(),
                slices: vec![slice(
                    "a",
                    vec![
                        ep("10.0.0.1").terminating(true),
                        ep("10.0.0.2").terminating(false),
                        ep("10.0.0.3").unready(),
                        ep("10.0.0.4").terminating(true).local(),
                    ],
                )],
                node: node(),
                cluster: Some(&["10.0.0.1:8080", "10.0.0.4:8080"]),
                local: None,
            },
            Case {
                rule: "Local: no local ready endpoint, local serving+terminating ones",
                service: local_itp(web()),
                slices: vec![slice(
                    "a",
                    vec![
                        ep("10.0.0.1"),
                        ep("10.0.0.2").terminating(true).local(),
                        ep("10.0.0.3").terminating(false).local(),
                    ],
                )],
                node: node(),
                cluster: None,
                local: Some(&["10.0.0.2:8080"]),
            },
            Case {
                rule: "Local: a local ready endpoint beats local terminating ones",
                service: local_itp(web()),
                slices: vec![slice(
                    "a",
                    vec![
                        ep("10.0.0.1").local(),
                        ep("10.0.0.2").terminating(true).local(),
                    ],
                )],
                node: node(),
                cluster: None,
                local: Some(&["10.0.0.1:8080"]),
            },
        ]);
    }

    #[test]
    fn rule_internal_traffic_policy() {
        let eps = || {
            vec![slice(
                "a",
                vec![
                    ep("10.0.0.1").local(),
                    ep("10.0.0.2"),
                    ep("10.0.0.3").on("n3"),
                ],
            )]
        };
        check(vec![
            Case {
                rule: "Cluster: every ready endpoint",
                service: web(),
                slices: eps(),
                node: node(),
                cluster: Some(&["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]),
                local: None,
            },
            Case {
                rule: "Local: only this node's endpoints",
                service: local_itp(web()),
                slices: eps(),
                node: node(),
                cluster: None,
                local: Some(&["10.0.0.1:8080"]),
            },
            Case {
                rule: "Local on a node without endpoints: none (the datapath drops)",
                service: local_itp(web()),
                slices: eps(),
                node: NodeContext {
                    node_name: Some("n9".into()),
                    zone: None,
                },
                cluster: None,
                local: Some(&[]),
            },
            Case {
                rule: "Local without a node name: nothing is local",
                service: local_itp(web()),
                slices: eps(),
                node: NodeContext::default(),
                cluster: None,
                local: Some(&[]),
            },
        ]);
    }

    #[test]
    fn rule_external_traffic_policy_scopes() {
        let eps = || vec![slice("a", vec![ep("10.0.0.1").local(), ep("10.0.0.2")])];
        let both: &[&str] = &["10.0.0.1:8080", "10.0.0.2:8080"];
        let local: &[&str] = &["10.0.0.1:8080"];
        let node_port = |s: Service, etp: TrafficPolicy| {
            let mut s = Service {
                service_type: ServiceType::NodePort,
                external_traffic_policy: etp,
                health_check_node_port: None,
                load_balancer_source_ranges: vec![],
                session_affinity: None,
                ..s
            };
            s.ports[0].node_port = Some(30080);
            s
        };
        // (rule, service, Cluster set, Local set, endpoints for external traffic)
        type Row = (&'static str, Service, Option<Addrs>, Option<Addrs>, Addrs);
        let cases: Vec<Row> = vec![
            (
                "ClusterIP with externalTrafficPolicy Local: no external traffic, Cluster only",
                Service {
                    external_traffic_policy: TrafficPolicy::Local,
                    health_check_node_port: None,
                    load_balancer_source_ranges: vec![],
                    session_affinity: None,
                    ..web()
                },
                Some(both),
                None,
                &[],
            ),
            (
                "NodePort, Cluster: Cluster only",
                node_port(web(), TrafficPolicy::Cluster),
                Some(both),
                None,
                both,
            ),
            (
                "NodePort, Local: both sets (Cluster for short-circuited internal traffic)",
                node_port(web(), TrafficPolicy::Local),
                Some(both),
                Some(local),
                local,
            ),
            (
                "NodePort, Cluster, internal Local: both sets",
                node_port(local_itp(web()), TrafficPolicy::Cluster),
                Some(both),
                Some(local),
                both,
            ),
            (
                "ClusterIP with external IPs, Local: both sets",
                Service {
                    external_ips: vec!["192.0.2.1".parse().unwrap()],
                    external_traffic_policy: TrafficPolicy::Local,
                    health_check_node_port: None,
                    load_balancer_source_ranges: vec![],
                    session_affinity: None,
                    ..web()
                },
                Some(both),
                Some(local),
                local,
            ),
            (
                "LoadBalancer IPs of the other family only: no external IPv4 traffic, Cluster only",
                Service {
                    service_type: ServiceType::LoadBalancer,
                    load_balancer_ips: vec!["2001:db8::1".parse().unwrap()],
                    external_traffic_policy: TrafficPolicy::Local,
                    health_check_node_port: None,
                    load_balancer_source_ranges: vec![],
                    session_affinity: None,
                    ..web()
                },
                Some(both),
                None,
                &[],
            ),
            (
                "LoadBalancer with an IPv4 ingress IP, Local: both sets",
                Service {
                    service_type: ServiceType::LoadBalancer,
                    load_balancer_ips: vec!["192.0.2.1".parse().unwrap()],
                    external_traffic_policy: TrafficPolicy::Local,
                    health_check_node_port: None,
                    load_balancer_source_ranges: vec![],
                    session_affinity: None,
                    ..web()
                },
                Some(both),
                Some(local),
                local,
            ),
        ];
        for (rule, service, cluster, want_local, external) in cases {
            let sel = select(std::slice::from_ref(&service), &eps(), &node());
            let info = web_port(&sel, IpFamily::V4);
            let want = |w: Option<&[&str]>| w.map(|w| w.iter().map(|s| s.to_string()).collect());
            assert_eq!(
                info.endpoints.cluster.as_deref().map(strings),
                want(cluster),
                "{rule}"
            );
            assert_eq!(
                info.endpoints.local.as_deref().map(strings),
                want(want_local),
                "{rule}"
            );
            assert_eq!(
                strings(info.external_endpoints()),
                *external,
                "{rule}: external"
            );
            assert!(info.local_set_is_on_this_node(), "{rule}");
        }
    }

    #[test]
    fn rule_topology_hints() {
        let z = |a: &str, zones: &[&str]| ep(a).zones(zones);
        check(vec![
            Case {
                rule: "PreferSameZone: every ready endpoint hinted, one for our zone",
                service: web(),
                slices: vec![slice(
                    "a",
                    vec![
                        z("10.0.0.1", &["z1"]),
                        z("10.0.0.2", &["z2"]),
                        z("10.0.0.3", &["z1", "z2"]),
                    ],
                )],
                node: node(),
                cluster: Some(&["10.0.0.1:8080", "10.0.0.3:8080"]),
                local: None,
            },
            Case {
                rule: "an endpoint without hints disables zone filtering",
                service: web(),
                slices: vec![slice("a", vec![z("10.0.0.1", &["z1"]), ep("10.0.0.2")])],
                node: node(),
                cluster: Some(&["10.0.0.1:8080", "10.0.0.2:8080"]),
                local: None,
            },
            Case {
                rule: "no endpoint hinted for our zone: no filtering",
                service: web(),
                slices: vec![slice(
                    "a",
                    vec![z("10.0.0.1", &["z2"]), z("10.0.0.2", &["z3"])],
                )],
                node: node(),
                cluster: Some(&["10.0.0.1:8080", "10.0.0.2:8080"]),
                local: None,
            },
            Case {
                rule: "the node has no zone label: no filtering",
                service: web(),
                slices: vec![slice(
                    "a",
                    vec![z("10.0.0.1", &["z1"]), z("10.0.0.2", &["z2"])],
                )],
                node: NodeContext {
                    node_name: Some("n1".into()),
                    zone: None,
                },
                cluster: Some(&["10.0.0.1:8080", "10.0.0.2:8080"]),
                local: None,
            },
            Case {
                rule: "hints of unready endpoints do not count",
                service: web(),
                slices: vec![slice(
                    "a",
                    vec![
                        z("10.0.0.1", &["z1"]),
                        z("10.0.0.2", &["z2"]),
                        ep("10.0.0.3").unready(),
                    ],
                )],
                node: node(),
                cluster: Some(&["10.0.0.1:8080"]),
                local: None,
            },
            Case {
                rule: "PreferSameNode: every ready endpoint has node hints, one for this node",
                service: web(),
                slices: vec![slice(
                    "a",
                    vec![
                        ep("10.0.0.1").local().for_nodes(&["n1"]).zones(&["z1"]),
                        ep("10.0.0.2").for_nodes(&["n2"]).zones(&["z1"]),
                    ],
                )],
                node: node(),
                cluster: Some(&["10.0.0.1:8080"]),
                local: None,
            },
            Case {
                rule: "node hints for other nodes only: fall back to zone hints",
                service: web(),
                slices: vec![slice(
                    "a",
                    vec![
                        ep("10.0.0.1").for_nodes(&["n2"]).zones(&["z1"]),
                        ep("10.0.0.2").for_nodes(&["n3"]).zones(&["z2"]),
                    ],
                )],
                node: node(),
                cluster: Some(&["10.0.0.1:8080"]),
                local: None,
            },
            Case {
                rule: "Local policy ignores hints",
                service: local_itp(web()),
                slices: vec![slice(
                    "a",
                    vec![
                        ep("10.0.0.1").local().zones(&["z2"]),
                        z("10.0.0.2", &["z1"]),
                    ],
                )],
                node: node(),
                cluster: None,
                local: Some(&["10.0.0.1:8080"]),
            },
            Case {
                rule: "the terminating fallback ignores hints",
                service: web(),
                slices: vec![slice(
                    "a",
                    vec![
                        ep("10.0.0.1").terminating(true).zones(&["z2"]),
                        ep("10.0.0.2").terminating(true).zones(&["z1"]),
                    ],
                )],
                node: node(),
                cluster: Some(&["10.0.0.1:8080", "10.0.0.2:8080"]),
                local: None,
            },
        ]);
    }

    #[test]
    fn rule_any_endpoints_and_local_ready_count() {
        let node_port_local = || {
            let mut s = Service {
                service_type: ServiceType::NodePort,
                external_traffic_policy: TrafficPolicy::Local,
                health_check_node_port: None,
                load_balancer_source_ranges: vec![],
                session_affinity: None,
                ..web()
            };
            s.ports[0].node_port = Some(30080);
            s
        };
        // (rule, service, endpoints, has any endpoints, local ready)
        let cases: Vec<(&str, Service, Vec<Endpoint>, bool, usize)> = vec![
            ("no endpoints: reject", web(), vec![], false, 0),
            (
                "only unready endpoints: reject",
                web(),
                vec![ep("10.0.0.1").unready()],
                false,
                0,
            ),
            (
                "only terminating serving ones: still served",
                web(),
                vec![ep("10.0.0.1").terminating(true)],
                true,
                0,
            ),
            (
                "Local with remote endpoints only: endpoints exist (drop, not reject)",
                local_itp(web()),
                vec![ep("10.0.0.1")],
                true,
                0,
            ),
            (
                "local ready endpoints are counted for health checks",
                node_port_local(),
                vec![
                    ep("10.0.0.1").local(),
                    ep("10.0.0.2").local(),
                    ep("10.0.0.3"),
                ],
                true,
                2,
            ),
            (
                "local terminating endpoints do not count as ready",
                node_port_local(),
                vec![ep("10.0.0.1").local().terminating(true)],
                true,
                0,
            ),
        ];
        for (rule, service, eps, any, local_ready) in cases {
            let sel = select(std::slice::from_ref(&service), &[slice("a", eps)], &node());
            let info = web_port(&sel, IpFamily::V4);
            assert_eq!(info.endpoints.has_any_endpoints, any, "{rule}");
            assert_eq!(info.endpoints.local_ready, local_ready, "{rule}");
        }
    }

    #[test]
    fn rule_one_service_per_frontend() {
        let a = svc("a", &["10.96.0.1"], &[("", 80, TCP)]);
        let b = svc("b", &["10.96.0.1"], &[("", 80, TCP)]);
        let sel = select(&[b, a], &[], &node());
        let fe = Frontend {
            addr: "10.96.0.1:80".parse().unwrap(),
            protocol: TCP,
        };
        let (frontends, problems) = frontends(&sel.ports, &[]);
        assert_eq!(frontends[&fe].owner.short(), "default/a");
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].to_string().contains("default/b"),
            "{problems:?}"
        );
    }

    #[test]
    fn rule_sctp_ports_are_reported_not_served() {
        let s = svc("s", &["10.96.0.1"], &[("", 80, Protocol::Sctp)]);
        let sel = select(&[s], &[], &node());
        assert!(frontends_of(&sel).is_empty());
        assert!(sel.ports.is_empty());
        assert!(sel.problems[0].to_string().contains("SCTP"));
    }

    #[test]
    fn service_port_names_read_well() {
        assert_eq!(
            port_name("web", "http", TCP, IpFamily::V6).to_string(),
            "default/web:http/TCP (IPv6)"
        );
        assert_eq!(
            port_name("web", "", UDP, IpFamily::V4).to_string(),
            "default/web/UDP (IPv4)"
        );
    }
}
