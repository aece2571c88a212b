//! Endpoint selection with kube-proxy's rules (`pkg/proxy/endpointslicecache.go`,
//! `pkg/proxy/topology.go`): from services and their slices to what each frontend serves.
//! Pure: no I/O, no clock, so every rule is a table-driven unit test.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use crate::model::{
    EndpointSlice, Frontend, FrontendState, IpFamily, Protocol, Service, ServiceName, ServicePort,
    TrafficPolicy,
};

/// What selection needs to know about this node.
#[derive(Clone, Debug, Default)]
pub struct NodeContext {
    pub node_name: Option<String>,
    /// This Node's `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
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

/// The desired datapath state, plus what could not be served and why.
#[derive(Debug, Default)]
pub struct Selection {
    pub frontends: BTreeMap<Frontend, FrontendState>,
    /// Messages naming the service (`namespace/name`) and the reason.
    pub problems: Vec<String>,
}

/// Builds the desired state from every service and slice known.
pub fn select(services: &[Service], slices: &[EndpointSlice], node: &NodeContext) -> Selection {
    let mut by_service: HashMap<&ServiceName, Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        by_service.entry(&slice.service).or_default().push(slice);
    }
    let mut services: Vec<&Service> = services.iter().filter(|s| s.is_proxied()).collect();
    // Deterministic winner when two services claim one frontend.
    services.sort_by(|a, b| a.name.cmp(&b.name));

    let mut out = Selection::default();
    let mut owners: HashMap<Frontend, &ServiceName> = HashMap::new();
    for svc in services {
        let slices = by_service.get(&svc.name).map(Vec::as_slice).unwrap_or(&[]);
        for port in &svc.ports {
            if port.protocol == Protocol::Sctp {
                out.problems.push(format!(
                    "service {}: port {:?} is SCTP, which the datapath does not translate; skipped",
                    svc.name, port.name
                ));
                continue;
            }
            for ip in &svc.cluster_ips {
                let family = IpFamily::of(ip);
                let frontend = Frontend {
                    addr: SocketAddr::new(*ip, port.port),
                    protocol: port.protocol,
                };
                if let Some(owner) = owners.get(&frontend) {
                    out.problems.push(format!(
                        "service {}: {frontend} is already served for service {owner}; skipped",
                        svc.name
                    ));
                    continue;
                }
                owners.insert(frontend, &svc.name);
                let candidates = merge(slices, family, port, node);
                let backends = choose(&candidates, svc.internal_traffic_policy, node);
                out.frontends.insert(
                    frontend,
                    FrontendState {
                        service_port: if port.name.is_empty() {
                            svc.name.to_string()
                        } else {
                            format!("{}:{}", svc.name, port.name)
                        },
                        backends,
                        ..Default::default()
                    },
                );
            }
        }
    }
    out
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
        for ep in &slice.endpoints {
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

/// Chooses the endpoints for ClusterIP traffic under `internalTrafficPolicy`.
fn choose(candidates: &[Candidate], policy: TrafficPolicy, node: &NodeContext) -> Vec<SocketAddr> {
    let chosen: Vec<&Candidate> = match policy {
        TrafficPolicy::Cluster => {
            let ready: Vec<&Candidate> = candidates.iter().filter(|c| c.ready).collect();
            if ready.is_empty() {
                fallback(candidates.iter())
            } else {
                topology_filter(ready, node)
            }
        }
        // Local policy ignores topology hints.
        TrafficPolicy::Local => {
            let local = candidates.iter().filter(|c| c.is_local);
            let ready: Vec<&Candidate> = local.clone().filter(|c| c.ready).collect();
            if ready.is_empty() {
                fallback(local)
            } else {
                ready
            }
        }
    };
    chosen.into_iter().map(|c| c.addr).collect()
}

/// With no ready endpoint, kube-proxy falls back to endpoints that are serving and terminating.
fn fallback<'a>(candidates: impl Iterator<Item = &'a Candidate>) -> Vec<&'a Candidate> {
    candidates.filter(|c| c.serving && c.terminating).collect()
}

/// Topology-aware routing: prefer the endpoints hinted for this node, then for this zone, but
/// only when every ready endpoint carries hints (otherwise hints are being rolled out).
fn topology_filter<'a>(ready: Vec<&'a Candidate>, node: &NodeContext) -> Vec<&'a Candidate> {
    if let Some(name) = &node.node_name
        && ready.iter().all(|c| !c.node_hints.is_empty())
        && ready.iter().any(|c| c.node_hints.contains(name))
    {
        return ready
            .into_iter()
            .filter(|c| c.node_hints.contains(name))
            .collect();
    }
    if let Some(zone) = &node.zone
        && ready.iter().all(|c| !c.zone_hints.is_empty())
        && ready.iter().any(|c| c.zone_hints.contains(zone))
    {
        return ready
            .into_iter()
            .filter(|c| c.zone_hints.contains(zone))
            .collect();
    }
    ready
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, EndpointPort, ServiceType};

    fn name(n: &str) -> ServiceName {
        ServiceName {
            namespace: "default".into(),
            name: n.into(),
        }
    }

    fn svc(n: &str, ips: &[&str], ports: &[(&str, u16, Protocol)]) -> Service {
        Service {
            name: name(n),
            service_type: ServiceType::ClusterIp,
            cluster_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            ports: ports
                .iter()
                .map(|(n, p, proto)| ServicePort {
                    name: (*n).into(),
                    port: *p,
                    protocol: *proto,
                    node_port: None,
                })
                .collect(),
            external_ips: vec![],
            load_balancer_ips: vec![],
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
        }
    }

    fn ep(addr: &str, ready: bool, serving: bool, terminating: bool, node: &str) -> Endpoint {
        Endpoint {
            addr: addr.parse().unwrap(),
            ready,
            serving,
            terminating,
            node_name: Some(node.into()),
            zone: None,
            zone_hints: vec![],
            node_hints: vec![],
        }
    }

    fn slice(
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
                .map(|(n, p, proto)| EndpointPort {
                    name: (*n).into(),
                    port: *p,
                    protocol: *proto,
                })
                .collect(),
            endpoints,
        }
    }

    fn fe(addr: &str, proto: Protocol) -> Frontend {
        Frontend {
            addr: addr.parse().unwrap(),
            protocol: proto,
        }
    }

    fn backends(sel: &Selection, f: &str, proto: Protocol) -> Vec<String> {
        sel.frontends[&fe(f, proto)]
            .backends
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn node() -> NodeContext {
        NodeContext {
            node_name: Some("n1".into()),
            zone: Some("z1".into()),
        }
    }

    #[test]
    fn ports_match_by_name_and_protocol() {
        let s = svc(
            "web",
            &["10.96.0.1"],
            &[("http", 80, Protocol::Tcp), ("dns", 53, Protocol::Udp)],
        );
        let sl = slice(
            "web-1",
            "web",
            IpFamily::V4,
            &[("http", 8080, Protocol::Tcp), ("dns", 5353, Protocol::Udp)],
            vec![ep("10.0.0.1", true, true, false, "n1")],
        );
        let sel = select(&[s], &[sl], &node());
        assert_eq!(
            backends(&sel, "10.96.0.1:80", Protocol::Tcp),
            ["10.0.0.1:8080"]
        );
        assert_eq!(
            backends(&sel, "10.96.0.1:53", Protocol::Udp),
            ["10.0.0.1:5353"]
        );
    }

    #[test]
    fn dual_stack_service_uses_the_slice_of_each_family() {
        let s = svc("web", &["10.96.0.1", "fd00::1"], &[("", 80, Protocol::Tcp)]);
        let v4 = slice(
            "a",
            "web",
            IpFamily::V4,
            &[("", 8080, Protocol::Tcp)],
            vec![ep("10.0.0.1", true, true, false, "n1")],
        );
        let v6 = slice(
            "b",
            "web",
            IpFamily::V6,
            &[("", 8080, Protocol::Tcp)],
            vec![ep("fd01::1", true, true, false, "n1")],
        );
        let sel = select(&[s], &[v4, v6], &node());
        assert_eq!(
            backends(&sel, "10.96.0.1:80", Protocol::Tcp),
            ["10.0.0.1:8080"]
        );
        // IPv6 endpoints are written with brackets wherever a person reads them.
        assert_eq!(
            backends(&sel, "[fd00::1]:80", Protocol::Tcp),
            ["[fd01::1]:8080"]
        );
    }

    #[test]
    fn family_without_cluster_ip_is_not_served() {
        let s = svc("web", &["10.96.0.1"], &[("", 80, Protocol::Tcp)]);
        let v6 = slice(
            "b",
            "web",
            IpFamily::V6,
            &[("", 8080, Protocol::Tcp)],
            vec![ep("fd01::1", true, true, false, "n1")],
        );
        let sel = select(&[s], &[v6], &node());
        assert_eq!(sel.frontends.len(), 1);
        assert!(backends(&sel, "10.96.0.1:80", Protocol::Tcp).is_empty());
    }

    #[test]
    fn unready_endpoints_get_no_traffic() {
        let s = svc("web", &["10.96.0.1"], &[("", 80, Protocol::Tcp)]);
        let sl = slice(
            "a",
            "web",
            IpFamily::V4,
            &[("", 80, Protocol::Tcp)],
            vec![
                ep("10.0.0.1", true, true, false, "n1"),
                ep("10.0.0.2", false, false, false, "n1"),
                ep("10.0.0.3", false, true, false, "n1"),
            ],
        );
        let sel = select(&[s], &[sl], &node());
        assert_eq!(
            backends(&sel, "10.96.0.1:80", Protocol::Tcp),
            ["10.0.0.1:80"]
        );
    }

    #[test]
    fn terminating_fallback_when_nothing_is_ready() {
        let s = svc("web", &["10.96.0.1"], &[("", 80, Protocol::Tcp)]);
        let sl = slice(
            "a",
            "web",
            IpFamily::V4,
            &[("", 80, Protocol::Tcp)],
            vec![
                ep("10.0.0.1", false, true, true, "n2"),
                ep("10.0.0.2", false, false, true, "n1"),
            ],
        );
        let sel = select(&[s], &[sl], &node());
        assert_eq!(
            backends(&sel, "10.96.0.1:80", Protocol::Tcp),
            ["10.0.0.1:80"]
        );
    }

    #[test]
    fn endpoints_are_merged_across_slices_and_deduplicated() {
        let s = svc("web", &["10.96.0.1"], &[("", 80, Protocol::Tcp)]);
        let a = slice(
            "a",
            "web",
            IpFamily::V4,
            &[("", 80, Protocol::Tcp)],
            vec![
                ep("10.0.0.2", true, true, false, "n2"),
                ep("10.0.0.1", true, true, false, "n2"),
            ],
        );
        let b = slice(
            "b",
            "web",
            IpFamily::V4,
            &[("", 80, Protocol::Tcp)],
            vec![
                ep("10.0.0.1", true, true, false, "n2"),
                ep("10.0.0.3", true, true, false, "n2"),
            ],
        );
        let sel = select(&[s], &[a, b], &node());
        assert_eq!(
            backends(&sel, "10.96.0.1:80", Protocol::Tcp),
            ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
        );
    }

    #[test]
    fn local_copy_wins_a_disagreement() {
        let s = Service {
            internal_traffic_policy: TrafficPolicy::Local,
            ..svc("web", &["10.96.0.1"], &[("", 80, Protocol::Tcp)])
        };
        let a = slice(
            "a",
            "web",
            IpFamily::V4,
            &[("", 80, Protocol::Tcp)],
            vec![ep("10.0.0.1", true, true, false, "n2")],
        );
        let b = slice(
            "b",
            "web",
            IpFamily::V4,
            &[("", 80, Protocol::Tcp)],
            vec![ep("10.0.0.1", true, true, false, "n1")],
        );
        let sel = select(&[s], &[a, b], &node());
        assert_eq!(
            backends(&sel, "10.96.0.1:80", Protocol::Tcp),
            ["10.0.0.1:80"]
        );
    }

    #[test]
    fn internal_traffic_policy_local_uses_only_local_endpoints() {
        let s = Service {
            internal_traffic_policy: TrafficPolicy::Local,
            ..svc("web", &["10.96.0.1"], &[("", 80, Protocol::Tcp)])
        };
        let sl = slice(
            "a",
            "web",
            IpFamily::V4,
            &[("", 80, Protocol::Tcp)],
            vec![
                ep("10.0.0.1", true, true, false, "n1"),
                ep("10.0.0.2", true, true, false, "n2"),
            ],
        );
        let sel = select(std::slice::from_ref(&s), std::slice::from_ref(&sl), &node());
        assert_eq!(
            backends(&sel, "10.96.0.1:80", Protocol::Tcp),
            ["10.0.0.1:80"]
        );
        let other = NodeContext {
            node_name: Some("n3".into()),
            zone: None,
        };
        assert!(backends(&select(&[s], &[sl], &other), "10.96.0.1:80", Protocol::Tcp).is_empty());
    }

    #[test]
    fn topology_prefers_same_zone_when_every_endpoint_has_hints() {
        let s = svc("web", &["10.96.0.1"], &[("", 80, Protocol::Tcp)]);
        let mut a = ep("10.0.0.1", true, true, false, "n2");
        a.zone_hints = vec!["z1".into()];
        let mut b = ep("10.0.0.2", true, true, false, "n3");
        b.zone_hints = vec!["z2".into()];
        let sl = slice(
            "a",
            "web",
            IpFamily::V4,
            &[("", 80, Protocol::Tcp)],
            vec![a.clone(), b],
        );
        let sel = select(std::slice::from_ref(&s), &[sl], &node());
        assert_eq!(
            backends(&sel, "10.96.0.1:80", Protocol::Tcp),
            ["10.0.0.1:80"]
        );
        // One endpoint without hints disables the filter.
        let c = ep("10.0.0.3", true, true, false, "n3");
        let sl = slice(
            "a",
            "web",
            IpFamily::V4,
            &[("", 80, Protocol::Tcp)],
            vec![a, c],
        );
        let sel = select(&[s], &[sl], &node());
        assert_eq!(backends(&sel, "10.96.0.1:80", Protocol::Tcp).len(), 2);
    }

    #[test]
    fn headless_and_external_name_program_nothing() {
        let headless = svc("h", &[], &[("", 80, Protocol::Tcp)]);
        let ext = Service {
            service_type: ServiceType::ExternalName,
            ..svc("e", &["10.96.0.9"], &[("", 80, Protocol::Tcp)])
        };
        let sel = select(&[headless, ext], &[], &node());
        assert!(sel.frontends.is_empty());
    }

    #[test]
    fn two_services_on_one_frontend_keep_the_first_and_report_the_second() {
        let a = svc("a", &["10.96.0.1"], &[("", 80, Protocol::Tcp)]);
        let b = svc("b", &["10.96.0.1"], &[("", 80, Protocol::Tcp)]);
        let sel = select(&[b, a], &[], &node());
        assert_eq!(
            sel.frontends[&fe("10.96.0.1:80", Protocol::Tcp)].service_port,
            "default/a"
        );
        assert_eq!(sel.problems.len(), 1);
        assert!(sel.problems[0].contains("default/b"), "{:?}", sel.problems);
    }

    #[test]
    fn sctp_ports_are_reported_not_served() {
        let s = svc("s", &["10.96.0.1"], &[("", 80, Protocol::Sctp)]);
        let sel = select(&[s], &[], &node());
        assert!(sel.frontends.is_empty());
        assert!(sel.problems[0].contains("SCTP"));
    }

    #[test]
    fn slices_of_other_services_are_ignored() {
        let s = svc("web", &["10.96.0.1"], &[("", 80, Protocol::Tcp)]);
        let sl = slice(
            "x",
            "other",
            IpFamily::V4,
            &[("", 80, Protocol::Tcp)],
            vec![ep("10.0.0.1", true, true, false, "n1")],
        );
        let sel = select(&[s], &[sl], &node());
        assert!(backends(&sel, "10.96.0.1:80", Protocol::Tcp).is_empty());
    }
}
