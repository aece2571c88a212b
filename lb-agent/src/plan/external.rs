//! Frontends for traffic from outside the node: node ports on every node address, external IPs
//! and load balancer IPs, each with the backends `externalTrafficPolicy` chooses.

use std::net::IpAddr;

use crate::model::{Frontend, FrontendKind, FrontendState, IpFamily, ServicePortName};

use super::selection::ServicePortInfo;

/// The external frontends of one service port in its family: node ports on `node_addrs` of the
/// family, external IPs and load balancer IPs (already of the family). Only the load balancer
/// IPs check `loadBalancerSourceRanges`; node ports and external IPs take every source, as with
/// kube-proxy (its firewall chains match the load balancer IPs).
pub fn frontends<'a>(
    spn: &'a ServicePortName,
    info: &'a ServicePortInfo,
    node_addrs: &'a [IpAddr],
) -> impl Iterator<Item = (Frontend, FrontendState)> + 'a {
    let state = move |kind: FrontendKind| FrontendState {
        owner: spn.clone(),
        kind,
        backends: super::backends(info, info.external_endpoints()),
        internal_backends: info
            .external_policy_local
            .then(|| super::backends(info, info.endpoints.cluster.as_deref().unwrap_or_default())),
        local_only: info.external_policy_local,
        source_ranges: match kind {
            FrontendKind::LoadBalancer => info.source_ranges.clone(),
            _ => None,
        },
        session_affinity: info.session_affinity,
        reject: !info.endpoints.has_any_endpoints,
    };
    let node_ports = info.node_port.into_iter().flat_map(move |np| {
        node_addrs
            .iter()
            .filter(move |a| IpFamily::of(a) == spn.family)
            .map(move |a| (*a, np, FrontendKind::NodePort))
    });
    let external_ips = info
        .external_ips
        .iter()
        .map(|ip| (*ip, info.port, FrontendKind::ExternalIp));
    let load_balancer_ips = info
        .load_balancer_ips
        .iter()
        .map(|ip| (*ip, info.port, FrontendKind::LoadBalancer));
    node_ports
        .chain(external_ips)
        .chain(load_balancer_ips)
        .map(move |(ip, port, kind)| (Frontend::new(ip, port, spn.protocol), state(kind)))
}
