//! What a source hands the plan: every usable object, converted to the model, and what was wrong
//! with the others. Both sources build it; neither depends on the other.

use std::{net::IpAddr, sync::Arc};

use tokio::sync::Notify;

use crate::model::{EndpointSlice, Service};

/// "Something changed": a source wakes the agent, which then rebuilds from the whole current
/// state. Changes seen while a sync runs leave one wake-up behind, so none is lost and a burst
/// costs one sync.
pub type Changes = Arc<Notify>;

/// What the agent's own Node object says, when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    /// The `topology.kubernetes.io/zone` label, for topology hints.
    pub zone: Option<String>,
    /// False while the Node is being deleted: `/healthz` then fails so that load balancers
    /// drain the node first.
    pub eligible: bool,
    /// The Node's `InternalIP` addresses (`status.addresses`), in the Node's order: the SNAT
    /// address of their family when the node's devices hold them.
    pub internal_ips: Vec<IpAddr>,
}

/// Everything a source knows, converted to the model.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every usable Service.
    pub services: Vec<Service>,
    /// Every usable EndpointSlice (FQDN and unlabelled slices left out).
    pub slices: Vec<EndpointSlice>,
    /// Objects that could not be used: kind, namespace/name and reason. Reported every sync.
    pub problems: Vec<String>,
    /// Worth a look but used anyway; reported once per object version.
    pub warnings: Vec<String>,
    /// `None` when the source has no Node object for this node (manifest files without one).
    pub node: Option<NodeState>,
}
