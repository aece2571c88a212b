//! Kubernetes API objects (k8s-openapi types) to the model. Shared by both sources; every error
//! is a reason a person can act on, and the caller adds which object it was.

use std::net::IpAddr;

use k8s_openapi::api::{
    core::v1::{Node, Service as K8sService},
    discovery::v1::EndpointSlice as K8sEndpointSlice,
};

use super::snapshot::NodeState;
use crate::model::{
    Endpoint, EndpointPort, EndpointSlice, IpFamily, NamespacedName, Protocol, Service,
    ServicePort, ServiceType, TrafficPolicy,
};

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The well-known zone label (`v1.LabelTopologyZone`), matched against zone hints.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The `status.addresses` type of the address other nodes reach this one at
/// (`v1.NodeInternalIP`).
pub const INTERNAL_IP: &str = "InternalIP";
/// Taint the cluster autoscaler puts on a node it is about to delete; kube-proxy counts such a
/// node as not eligible (`pkg/proxy/healthcheck/proxy_health.go`).
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Why an object cannot be used. Every message starts with the field it is about.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConvertError {
    message: String,
}

impl ConvertError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The field at fault: `metadata.name`, `spec.clusterIPs`, `spec.ports[1].nodePort`,
    /// `addressType`, ...
    pub fn field(&self) -> &str {
        self.message.split([' ', ':']).next().unwrap_or_default()
    }
}

impl From<String> for ConvertError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for ConvertError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// A [`ConvertError`] from a message in `format!` syntax.
macro_rules! invalid {
    ($($arg:tt)*) => {
        ConvertError::new(format!($($arg)*))
    };
}

/// A conversion result with the warnings met on the way.
#[derive(Debug)]
pub struct Converted<T> {
    pub value: T,
    pub warnings: Vec<String>,
}

impl<T> From<Option<Converted<T>>> for Converted<Option<T>> {
    /// An ignored object (`None`) converts to nothing, without warnings.
    fn from(converted: Option<Converted<T>>) -> Self {
        match converted {
            Some(c) => Self {
                value: Some(c.value),
                warnings: c.warnings,
            },
            None => Self {
                value: None,
                warnings: Vec::new(),
            },
        }
    }
}

fn object_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<NamespacedName, ConvertError> {
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("metadata.name is missing")?;
    Ok(NamespacedName {
        namespace: meta
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned()),
        name,
    })
}

fn parse_ip(field: &str, s: &str) -> Result<IpAddr, ConvertError> {
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("{field} {s:?} is not an IP address"))?;
    if is_ipv4_mapped(&ip) {
        return Err(invalid!(
            "{field} {s:?} is an IPv4-mapped IPv6 address; write the IPv4 address"
        ));
    }
    Ok(ip)
}

/// `::ffff:a.b.c.d`: Kubernetes counts it as IPv4 (Go's `To4`) and its validation rejects it
/// as an IPv6 address, so it is neither family here.
fn is_ipv4_mapped(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

fn parse_port(field: &str, port: i32) -> Result<u16, ConvertError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid!("{field} {port} is not a port number (1-65535)"))
}

fn parse_policy(field: &str, s: Option<&str>) -> Result<TrafficPolicy, ConvertError> {
    match s {
        None | Some("Cluster") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        Some(other) => Err(invalid!("{field} {other:?} is neither Cluster nor Local")),
    }
}

fn parse_family(s: &str) -> Result<IpFamily, String> {
    match s {
        "IPv4" => Ok(IpFamily::V4),
        "IPv6" => Ok(IpFamily::V6),
        other => Err(format!("IP family {other:?} is neither IPv4 nor IPv6")),
    }
}

/// Converts a Service.
///
/// `raw` is the object as it was read, used only to spot fields the typed API no longer has
/// (the pre-1.20 alpha `spec.ipFamily`). `require_cluster_ip` is set by the manifest source,
/// where no API server allocates addresses.
pub fn service(
    svc: &K8sService,
    raw: Option<&serde_json::Value>,
    require_cluster_ip: bool,
) -> Result<Converted<Service>, ConvertError> {
    let name = object_name(&svc.metadata)?;
    let mut warnings = Vec::new();
    if let Some(old) = raw
        .and_then(|r| r.pointer("/spec/ipFamily"))
        .filter(|v| !v.is_null())
    {
        warnings.push(format!(
            "spec.ipFamily ({old}) is the pre-1.20 alpha field and is ignored; use spec.ipFamilies \
             (with spec.ipFamilyPolicy) instead"
        ));
    }
    let spec = svc.spec.as_ref().ok_or("spec is missing")?;
    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        Some(other) => return Err(invalid!("spec.type {other:?} is not a Service type")),
    };

    // clusterIPs is authoritative when set; clusterIP must then equal its first entry.
    let mut ip_strings: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        (_, Some(ip)) if !ip.is_empty() => vec![ip.as_str()],
        _ => Vec::new(),
    };
    if let (Some(ip), Some(first)) = (&spec.cluster_ip, ip_strings.first())
        && !ip.is_empty()
        && ip != first
    {
        return Err(invalid!(
            "spec.clusterIP {ip:?} differs from spec.clusterIPs[0] {first:?}"
        ));
    }
    let headless = ip_strings.first().is_some_and(|ip| *ip == "None");
    if headless {
        if ip_strings.len() > 1 {
            return Err("spec.clusterIPs: \"None\" (headless) must be the only entry".into());
        }
        ip_strings.clear();
    }
    let mut cluster_ips = Vec::new();
    for s in ip_strings {
        let ip = parse_ip("spec.clusterIPs entry", s)?;
        if cluster_ips
            .iter()
            .any(|c| IpFamily::of(c) == IpFamily::of(&ip))
        {
            return Err(invalid!(
                "spec.clusterIPs has two {} addresses; at most one per family",
                IpFamily::of(&ip)
            ));
        }
        cluster_ips.push(ip);
    }
    if let Some(families) = &spec.ip_families {
        let families = families
            .iter()
            .map(|f| parse_family(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("spec.ipFamilies: {e}"))?;
        for (i, ip) in cluster_ips.iter().enumerate() {
            if let Some(f) = families.get(i)
                && *f != IpFamily::of(ip)
            {
                return Err(invalid!(
                    "spec.clusterIPs[{i}] {ip} is not of family spec.ipFamilies[{i}] {f}"
                ));
            }
        }
    }
    if let Some(policy) = spec.ip_family_policy.as_deref()
        && !matches!(
            policy,
            "SingleStack" | "PreferDualStack" | "RequireDualStack"
        )
    {
        return Err(invalid!(
            "spec.ipFamilyPolicy {policy:?} is not SingleStack, PreferDualStack or RequireDualStack"
        ));
    }
    if require_cluster_ip
        && !headless
        && cluster_ips.is_empty()
        && service_type != ServiceType::ExternalName
    {
        return Err(
            "spec.clusterIP/spec.clusterIPs is missing: without an API server nothing allocates \
             one, so write the address into the manifest (or clusterIP: None for a headless service)"
                .into(),
        );
    }

    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let protocol =
            Protocol::parse(p.protocol.as_deref()).map_err(|e| format!("spec.ports[{i}]: {e}"))?;
        let port = parse_port(&format!("spec.ports[{i}].port"), p.port)?;
        let node_port = p
            .node_port
            .map(|np| parse_port(&format!("spec.ports[{i}].nodePort"), np))
            .transpose()?;
        let name = p.name.clone().unwrap_or_default();
        if ports
            .iter()
            .any(|q: &ServicePort| q.name == name && q.protocol == protocol)
        {
            return Err(invalid!(
                "spec.ports[{i}]: port name {name:?} with protocol {protocol} is used twice"
            ));
        }
        ports.push(ServicePort {
            name,
            port,
            protocol,
            node_port,
        });
    }

    let external_ips = spec
        .external_ips
        .iter()
        .flatten()
        .map(|s| parse_ip("spec.externalIPs entry", s))
        .collect::<Result<_, _>>()?;
    let load_balancer_ips = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        // kube-proxy serves only ingress IPs in VIP mode; with ipMode Proxy the load balancer
        // delivers to the node itself (KEP-1860, pkg/proxy/serviceport.go).
        .filter(|ing| ing.ip_mode.as_deref().is_none_or(|m| m == "VIP"))
        .filter_map(|ing| ing.ip.as_deref())
        .map(|s| parse_ip("status.loadBalancer.ingress ip", s))
        .collect::<Result<_, _>>()?;

    Ok(Converted {
        value: Service {
            name,
            service_type,
            cluster_ips,
            ports,
            external_ips,
            load_balancer_ips,
            internal_traffic_policy: parse_policy(
                "spec.internalTrafficPolicy",
                spec.internal_traffic_policy.as_deref(),
            )?,
            external_traffic_policy: parse_policy(
                "spec.externalTrafficPolicy",
                spec.external_traffic_policy.as_deref(),
            )?,
            health_check_node_port: spec
                .health_check_node_port
                .map(|p| parse_port("spec.healthCheckNodePort", p))
                .transpose()?,
            load_balancer_source_ranges: spec
                .load_balancer_source_ranges
                .iter()
                .flatten()
                .map(|r| {
                    r.trim()
                        .parse::<ipnet::IpNet>()
                        .map(|n| n.trunc())
                        .map_err(|_| {
                            format!("spec.loadBalancerSourceRanges entry {r:?} is not a CIDR")
                        })
                })
                .collect::<Result<_, _>>()?,
            session_affinity: session_affinity(spec)?,
        },
        warnings,
    })
}

/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// The longest timeout the API server accepts (one day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// `spec.sessionAffinity` and its timeout: `None` without affinity.
fn session_affinity(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
) -> Result<Option<u32>, ConvertError> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => Ok(None),
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT)),
                Some(t) if (1..=i64::from(MAX_AFFINITY_TIMEOUT)).contains(&i64::from(t)) => {
                    Ok(Some(t as u32))
                }
                Some(t) => Err(invalid!(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds {t} is not between 1 \
                     and {MAX_AFFINITY_TIMEOUT}"
                )),
            }
        }
        Some(other) => Err(invalid!(
            "spec.sessionAffinity {other:?} is neither None nor ClientIP"
        )),
    }
}

/// Converts an EndpointSlice. `Ok(None)` for slices the proxy ignores: addressType FQDN, or no
/// `kubernetes.io/service-name` label.
pub fn endpoint_slice(
    slice: &K8sEndpointSlice,
) -> Result<Option<Converted<EndpointSlice>>, ConvertError> {
    let name = object_name(&slice.metadata)?;
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        "FQDN" => return Ok(None),
        other => return Err(invalid!("addressType {other:?} is not IPv4, IPv6 or FQDN")),
    };
    let Some(service) = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|s| !s.is_empty())
    else {
        return Ok(None);
    };
    let mut warnings = Vec::new();
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        // kube-proxy skips ports without a number and port 0.
        let Some(port) = p.port.filter(|p| *p != 0) else {
            warnings.push(format!("ports[{i}] has no port number; skipped"));
            continue;
        };
        let port = parse_port(&format!("ports[{i}].port"), port)?;
        let protocol =
            Protocol::parse(p.protocol.as_deref()).map_err(|e| format!("ports[{i}]: {e}"))?;
        ports.push(EndpointPort {
            name: p.name.clone().unwrap_or_default(),
            port,
            protocol,
        });
    }
    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.iter().flatten().enumerate() {
        let Some(first) = ep.addresses.first() else {
            warnings.push(format!("endpoints[{i}] has no address; skipped"));
            continue;
        };
        let addr = match first.parse::<IpAddr>() {
            Ok(addr) if IpFamily::of(&addr) == family && !is_ipv4_mapped(&addr) => addr,
            Ok(addr) => {
                warnings.push(format!(
                    "endpoints[{i}] address {addr} is not {family} like the slice; skipped"
                ));
                continue;
            }
            Err(_) => {
                warnings.push(format!(
                    "endpoints[{i}] address {first:?} is not an IP address; skipped"
                ));
                continue;
            }
        };
        let conditions = ep.conditions.as_ref();
        let hints = ep.hints.as_ref();
        endpoints.push(Endpoint {
            addr,
            ready: conditions.and_then(|c| c.ready).unwrap_or(true),
            serving: conditions.and_then(|c| c.serving).unwrap_or(true),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            node_name: ep.node_name.clone(),
            zone: ep.zone.clone(),
            zone_hints: hints
                .and_then(|h| h.for_zones.as_ref())
                .into_iter()
                .flatten()
                .map(|z| z.name.clone())
                .collect(),
            node_hints: hints
                .and_then(|h| h.for_nodes.as_ref())
                .into_iter()
                .flatten()
                .map(|n| n.name.clone())
                .collect(),
        });
    }
    Ok(Some(Converted {
        value: EndpointSlice {
            service: NamespacedName {
                namespace: name.namespace.clone(),
                name: service.clone(),
            },
            name,
            family,
            ports,
            endpoints,
        },
        warnings,
    }))
}

/// What the agent takes from its own Node object: its zone, whether it is eligible for traffic
/// (not being deleted, not tainted for deletion) and its InternalIPs.
pub fn node_state(node: &Node) -> NodeState {
    let being_deleted = node.metadata.deletion_timestamp.is_some();
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    NodeState {
        zone: node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL))
            .filter(|z| !z.is_empty())
            .cloned(),
        eligible: !being_deleted && !tainted,
        internal_ips: internal_ips(node),
    }
}

/// The Node's InternalIP addresses in its order; any that does not parse is left out (the API
/// server does not validate them).
fn internal_ips(node: &Node) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == INTERNAL_IP)
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests;
