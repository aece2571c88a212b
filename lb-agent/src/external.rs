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
        let policy = ExternalPolicy {
            local_only: info.external_policy_local,
            source_ranges: svc.load_balancer_source_ranges.clone(),
        };
        let state = FrontendState {
            service_port: spn.to_string(),
            backends: info.external_endpoints().to_vec(),
            local_backends: Vec::new(),
            external: Some(policy),
        };
        let of_family = |ip: &&IpAddr| IpFamily::of(ip) == spn.family;
        let node_ports = info.node_port.into_iter().flat_map(|np| {
            node_addrs
                .iter()
                .filter(of_family)
                .map(move |a| SocketAddr::new(*a, np))
        });
        let service_ips = info
            .external_ips
            .iter()
            .chain(&info.load_balancer_ips)
            .filter(of_family)
            .map(|ip| SocketAddr::new(*ip, info.port));
        for addr in node_ports.chain(service_ips) {
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
