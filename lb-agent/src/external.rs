//! Frontends for traffic from outside the node: node ports on every node address, external IPs
//! and load balancer IPs, each with the backends `externalTrafficPolicy` chooses; and the
//! per-service health check node ports.

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use crate::{
    healthcheck::ServiceHealth,
    model::{
        EndpointSlice, ExternalPolicy, Frontend, FrontendState, IpFamily, Service, ServiceName,
        TrafficPolicy,
    },
    selection::Selection,
};

/// Addresses of endpoints that run on this node (their slices name it).
pub fn local_endpoint_ips(slices: &[EndpointSlice], node_name: Option<&str>) -> HashSet<IpAddr> {
    let Some(node) = node_name else {
        return HashSet::new();
    };
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.node_name.as_deref() == Some(node))
        .map(|e| e.addr)
        .collect()
}

/// Adds the external frontends of every service port to `frontends` (which holds the ClusterIP
/// ones), and marks every frontend's local backends. A frontend another service already serves
/// is reported in `problems`, never taken over.
pub fn add_external_frontends(
    sel: &Selection,
    services: &[Service],
    node_addrs: &[IpAddr],
    local_ips: &HashSet<IpAddr>,
    frontends: &mut BTreeMap<Frontend, FrontendState>,
    problems: &mut Vec<String>,
) {
    let by_name: BTreeMap<&ServiceName, &Service> = services.iter().map(|s| (&s.name, s)).collect();
    for (spn, info) in &sel.ports {
        if !info.externally_accessible() {
            continue;
        }
        let Some(svc) = by_name.get(&spn.service) else {
            continue;
        };
        // loadBalancerSourceRanges filter the load balancer IPs only; node ports and external
        // IPs take every source, as with kube-proxy (its firewall chains match the load
        // balancer IPs).
        let state = FrontendState {
            service_port: spn.to_string(),
            backends: info.external_endpoints().to_vec(),
            local_backends: Vec::new(),
            external: Some(ExternalPolicy {
                local_only: info.external_policy_local,
                source_ranges: Vec::new(),
            }),
            reject: !info.endpoints.has_any_endpoints,
        };
        let lb_state = FrontendState {
            external: Some(ExternalPolicy {
                local_only: info.external_policy_local,
                source_ranges: svc.load_balancer_source_ranges.clone(),
            }),
            ..state.clone()
        };
        let of_family = |ip: &&IpAddr| IpFamily::of(ip) == spn.family;
        let node_ports = info.node_port.into_iter().flat_map(|np| {
            node_addrs
                .iter()
                .filter(of_family)
                .map(move |a| SocketAddr::new(*a, np))
        });
        let external_ips = info
            .external_ips
            .iter()
            .filter(of_family)
            .map(|ip| SocketAddr::new(*ip, info.port));
        let load_balancer_ips = info
            .load_balancer_ips
            .iter()
            .filter(of_family)
            .map(|ip| (SocketAddr::new(*ip, info.port), &lb_state));
        for (addr, state) in node_ports
            .chain(external_ips)
            .map(|a| (a, &state))
            .chain(load_balancer_ips)
        {
            let frontend = Frontend {
                addr,
                protocol: spn.protocol,
            };
            if let Some(other) = frontends.get(&frontend) {
                if other.service_port != state.service_port {
                    problems.push(format!(
                        "service {}: {frontend} is already served for {}; skipped",
                        spn.service, other.service_port
                    ));
                }
                continue;
            }
            frontends.insert(frontend, state.clone());
        }
    }
    for state in frontends.values_mut() {
        state.local_backends = state
            .backends
            .iter()
            .filter(|b| local_ips.contains(&b.ip()))
            .copied()
            .collect();
    }
}

/// The health check node ports of services with `externalTrafficPolicy: Local`, with the
/// number of this node's ready endpoints (all ports and families of the service together).
pub fn health_checks(sel: &Selection, services: &[Service]) -> BTreeMap<u16, ServiceHealth> {
    let mut out = BTreeMap::new();
    for svc in services {
        let Some(port) = svc.health_check_node_port else {
            continue;
        };
        if svc.external_traffic_policy != TrafficPolicy::Local {
            continue;
        }
        let local_ready = sel
            .ports
            .iter()
            .filter(|(spn, _)| spn.service == svc.name)
            .map(|(_, info)| info.endpoints.local_ready)
            .max()
            .unwrap_or(0);
        out.insert(
            port,
            ServiceHealth {
                service: svc.name.clone(),
                local_ready,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Endpoint, EndpointPort, Protocol, ServicePort, ServiceType},
        selection::{NodeContext, select},
    };

    fn name(n: &str) -> ServiceName {
        ServiceName {
            namespace: "default".into(),
            name: n.into(),
        }
    }

    /// `lb`: a LoadBalancer service on 10.96.0.1, node port 30080, external IP 192.0.2.50, load
    /// balancer IP 203.0.113.1, source ranges 198.51.100.0/24; one endpoint.
    fn lb_service() -> (Service, EndpointSlice) {
        let svc = Service {
            name: name("lb"),
            service_type: ServiceType::LoadBalancer,
            cluster_ips: vec!["10.96.0.1".parse().unwrap()],
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                protocol: Protocol::Tcp,
                node_port: Some(30080),
            }],
            external_ips: vec!["192.0.2.50".parse().unwrap()],
            load_balancer_ips: vec!["203.0.113.1".parse().unwrap()],
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            load_balancer_source_ranges: vec!["198.51.100.0/24".parse().unwrap()],
        };
        let slice = EndpointSlice {
            name: name("lb-1"),
            service: name("lb"),
            family: IpFamily::V4,
            ports: vec![EndpointPort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Tcp,
            }],
            endpoints: vec![Endpoint {
                addr: "10.201.1.2".parse().unwrap(),
                ready: true,
                serving: true,
                terminating: false,
                node_name: Some("n1".into()),
                zone: None,
                zone_hints: vec![],
                node_hints: vec![],
            }],
        };
        (svc, slice)
    }

    #[test]
    fn source_ranges_filter_load_balancer_ips_only() {
        let (svc, slice) = lb_service();
        let services = [svc];
        let slices = [slice];
        let node = NodeContext {
            node_name: Some("n1".into()),
            zone: None,
        };
        let mut sel = select(&services, &slices, &node);
        let mut frontends = std::mem::take(&mut sel.frontends);
        let mut problems = Vec::new();
        add_external_frontends(
            &sel,
            &services,
            &["192.0.2.1".parse().unwrap()],
            &local_endpoint_ips(&slices, Some("n1")),
            &mut frontends,
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let ranges = |addr: &str| {
            let frontend = Frontend {
                addr: addr.parse().unwrap(),
                protocol: Protocol::Tcp,
            };
            let state = frontends
                .get(&frontend)
                .unwrap_or_else(|| panic!("{addr} is not programmed: {:?}", frontends.keys()));
            assert_eq!(
                state.local_backends.len(),
                1,
                "{addr}: the endpoint is local"
            );
            state
                .external
                .clone()
                .expect("an external frontend")
                .source_ranges
        };
        assert_eq!(
            ranges("203.0.113.1:80"),
            vec!["198.51.100.0/24".parse::<ipnet::IpNet>().unwrap()],
            "the load balancer IP is filtered"
        );
        assert!(ranges("192.0.2.1:30080").is_empty(), "the node port is not");
        assert!(ranges("192.0.2.50:80").is_empty(), "the external IP is not");
        let cluster_ip = frontends
            .get(&Frontend {
                addr: "10.96.0.1:80".parse().unwrap(),
                protocol: Protocol::Tcp,
            })
            .expect("the ClusterIP");
        assert!(cluster_ip.external.is_none(), "not served from outside");
    }
}
