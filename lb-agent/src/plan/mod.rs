//! The desired state, computed in one place: from a source's [`Snapshot`] and what the agent
//! knows of its node to every frontend the datapath should serve (of every kind), the health
//! check node ports, the node's SNAT addresses and the problems found on the way. The agent,
//! `lb-agent plan` and the tests all call [`plan`].
//!
//! Each decision has one owner here: endpoints and their locality in [`selection`] (kube-proxy's
//! rules), families and source ranges in [`selection`] too, and which service port owns a
//! frontend in [`frontends`], where ClusterIPs are claimed before external addresses and services
//! in name order, so the winner of a conflict never depends on input order.
//!
//! Pure: no I/O, no clock.

pub mod external;
pub mod selection;

use std::{collections::BTreeMap, fmt, net::IpAddr};

use crate::{
    model::{
        Backend, DeviceAddrs, Frontend, FrontendKind, FrontendState, NamespacedName,
        NodePortAddresses, ServiceHealth, ServicePortName, SnatAddrs, SnatReasons,
    },
    source::Snapshot,
};

use self::selection::{NodeContext, ServicePortInfo};

/// What the plan needs to know about this node besides the snapshot.
#[derive(Clone, Debug, Default)]
pub struct NodeFacts {
    /// This node's name: endpoints on it are local, and topology hints name it.
    pub name: Option<String>,
    /// The addresses node ports answer on (usable addresses of the external devices, within
    /// `--nodeport-addresses`): the device scan's SNAT choice of each family first, then the
    /// others sorted. The first of each family is the SNAT address unless the Node's InternalIP
    /// of the family is among them ([`SnatAddrs::choose`]).
    pub addresses: Vec<IpAddr>,
    /// The external devices the programs run on, with their usable addresses: the SNAT
    /// address of flows leaving through each ([`SnatAddrs::choose`]).
    pub devices: Vec<DeviceAddrs>,
    /// `--nodeport-addresses`: with `primary`, `addresses` holds every usable address and the
    /// plan keeps the Node's primary ones (and those in the ranges) for node ports.
    pub nodeport: NodePortAddresses,
}

/// Something in the input that cannot be served as asked; everything else is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Problem {
    /// An SCTP port: the datapath translates TCP and UDP only.
    SctpPort {
        service: NamespacedName,
        port: String,
    },
    /// A frontend that another service port claimed first.
    FrontendTaken {
        frontend: Frontend,
        by: ServicePortName,
        wanted_by: ServicePortName,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SctpPort { service, port } => write!(
                f,
                "service {service}: port {port:?} is SCTP, which the datapath does not translate; \
                 skipped"
            ),
            Self::FrontendTaken {
                frontend,
                by,
                wanted_by,
            } => write!(
                f,
                "service {}: {frontend} is already served for service {}; skipped",
                wanted_by.service,
                by.short()
            ),
        }
    }
}

/// Everything the datapath should hold, and what could not be served.
#[derive(Debug, Default)]
pub struct Desired {
    /// Every frontend of every kind.
    pub frontends: BTreeMap<Frontend, FrontendState>,
    /// Health check node port -> what it reports.
    pub health_checks: BTreeMap<u16, ServiceHealth>,
    pub snat: SnatAddrs,
    /// Why each family's SNAT address is what it is.
    pub snat_reasons: SnatReasons,
    /// Problems of the plan itself; the snapshot's own problems are not repeated here.
    pub problems: Vec<Problem>,
    /// The node addresses node ports answer on.
    pub nodeport_addresses: Vec<IpAddr>,
}

impl fmt::Display for Desired {
    /// What `lb-agent plan` prints: one line per frontend (`FRONTEND KIND SERVICE-PORT
    /// [local-only] [source-ranges=[..]] -> [BACKENDS]` or `-> reject`), then one per health
    /// check node port and the SNAT addresses. Problems are not part of it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (frontend, state) in &self.frontends {
            writeln!(f, "{frontend} {state}")?;
        }
        for (port, check) in &self.health_checks {
            writeln!(
                f,
                "health-check-node-port {port} {} local-ready={}",
                check.service, check.local_ready
            )?;
        }
        for (family, addr) in [
            ("IPv4", self.snat.v4.map(IpAddr::V4)),
            ("IPv6", self.snat.v6.map(IpAddr::V6)),
        ] {
            if let Some(addr) = addr {
                writeln!(f, "snat {family} {addr}")?;
            }
        }
        Ok(())
    }
}

/// The desired state for `snapshot` on this node.
pub fn plan(snapshot: &Snapshot, node: &NodeFacts) -> Desired {
    let context = NodeContext {
        node_name: node.name.clone(),
        zone: snapshot.node.as_ref().and_then(|n| n.zone.clone()),
    };
    let sel = selection::select(&snapshot.services, &snapshot.slices, &context);
    let internal_ips = snapshot
        .node
        .as_ref()
        .map_or(&[][..], |n| n.internal_ips.as_slice());
    let nodeport_addresses = node.nodeport.select(&node.addresses, internal_ips);
    let (frontends, mut problems) = frontends(&sel.ports, &nodeport_addresses);
    problems.splice(0..0, sel.problems);
    let (snat, snat_reasons) = SnatAddrs::choose(&node.addresses, internal_ips, &node.devices);
    Desired {
        frontends,
        health_checks: sel.health_checks,
        snat,
        snat_reasons,
        problems,
        nodeport_addresses,
    }
}

/// The frontends of every service port: its cluster IP, then (for ports reachable from
/// outside) its node ports on `node_addrs`, external IPs and load balancer IPs. The first claim
/// of a frontend wins: every cluster IP before any external address, service ports in name
/// order; a later claim is a [`Problem::FrontendTaken`].
pub fn frontends(
    ports: &BTreeMap<ServicePortName, ServicePortInfo>,
    node_addrs: &[IpAddr],
) -> (BTreeMap<Frontend, FrontendState>, Vec<Problem>) {
    let mut out: BTreeMap<Frontend, FrontendState> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut claim = |frontend: Frontend, state: FrontendState| {
        if let Some(other) = out.get(&frontend) {
            if other.owner != state.owner {
                problems.push(Problem::FrontendTaken {
                    frontend,
                    by: other.owner.clone(),
                    wanted_by: state.owner,
                });
            }
            return;
        }
        out.insert(frontend, state);
    };
    for (spn, info) in ports {
        let frontend = Frontend::new(info.cluster_ip, info.port, spn.protocol);
        claim(frontend, cluster_ip_state(spn, info));
    }
    for (spn, info) in ports {
        for (frontend, state) in external::frontends(spn, info, node_addrs) {
            claim(frontend, state);
        }
    }
    (out, problems)
}

/// The backends of a frontend, each marked local or not.
fn backends(info: &ServicePortInfo, endpoints: &[std::net::SocketAddr]) -> Vec<Backend> {
    endpoints
        .iter()
        .map(|addr| Backend {
            addr: *addr,
            local: info.endpoints.is_local(addr),
        })
        .collect()
}

fn cluster_ip_state(spn: &ServicePortName, info: &ServicePortInfo) -> FrontendState {
    FrontendState {
        owner: spn.clone(),
        kind: FrontendKind::ClusterIp,
        backends: backends(info, info.internal_endpoints()),
        internal_backends: None,
        local_only: false,
        source_ranges: None,
        session_affinity: info.session_affinity,
        reject: !info.endpoints.has_any_endpoints,
    }
}

#[cfg(test)]
mod tests;
