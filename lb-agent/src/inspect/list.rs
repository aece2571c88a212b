//! `lb-agent list`: the frontends the maps serve, rebuilt from the map entries and the name
//! map into the plan's own types ([`crate::plan::Desired`]), so the table is printed by the same
//! code as `lb-agent plan`'s and `diff <(lb-agent plan ...) <(lb-agent list ...)` is empty when
//! the maps hold the plan.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use ipnet::IpNet;
use lb_ebpf::{
    FrontendName, NAME_KEY_HEALTH_CHECK, SVC_F_AFFINITY, SVC_F_LOCAL, SVC_F_REJECT,
    SVC_F_SOURCE_RANGES, ServiceValue,
};

use super::names::{Name, decode};
use crate::{
    lbmap::{BackendId, BackendKey, MapError, MapOps, Scope, Vip},
    model::{
        Backend, Frontend, FrontendState, IpFamily, NamespacedName, ServiceHealth, ServicePortName,
        SnatAddrs,
    },
    plan::Desired,
};

/// Everything `list` reads from the maps.
#[derive(Clone, Debug, Default)]
pub struct MapContents {
    pub slots: Vec<(Vip, u16, ServiceValue)>,
    pub backends: Vec<(BackendId, IpFamily, Option<BackendKey>)>,
    pub source_ranges: Vec<(u16, IpNet)>,
    pub names: Vec<(u32, FrontendName)>,
    pub snat: SnatAddrs,
}

impl MapContents {
    /// Reads `maps` (the pinned ones, or memory in tests) with the name entries and SNAT
    /// addresses given.
    pub fn read<M: MapOps>(
        maps: &M,
        names: Vec<(u32, FrontendName)>,
        snat: SnatAddrs,
    ) -> Result<Self, MapError> {
        Ok(Self {
            slots: maps.list_slots()?,
            backends: maps.list_backends()?,
            source_ranges: maps.list_source_ranges()?,
            names,
            snat,
        })
    }
}

/// A frontend entry the maps hold but that cannot be shown as the plan would: no name entry
/// (maps of an agent before names were kept), or slots missing (an update caught halfway).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unlisted {
    pub frontend: Frontend,
    pub scope: Scope,
    pub rev_nat_id: u16,
    pub reason: String,
}

impl std::fmt::Display for Unlisted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scope = if self.scope == Scope::Internal {
            " (in-cluster)"
        } else {
            ""
        };
        write!(
            f,
            "{}{scope} rev_nat={}: {}",
            self.frontend, self.rev_nat_id, self.reason
        )
    }
}

/// The maps' content in the plan's types.
#[derive(Debug, Default)]
pub struct Listing {
    /// Frontends, health checks and SNAT addresses; no problems.
    pub desired: Desired,
    pub unlisted: Vec<Unlisted>,
}

/// One service map entry put together: its head and the backends of its slots.
struct Entry {
    head: ServiceValue,
    backends: Vec<Backend>,
}

impl Listing {
    /// Rebuilds the frontends from `contents`.
    pub fn of(contents: &MapContents) -> Self {
        let backends: HashMap<BackendId, BackendKey> = contents
            .backends
            .iter()
            .filter_map(|(id, _, key)| key.map(|k| (*id, k)))
            .collect();
        let mut slots: BTreeMap<Vip, BTreeMap<u16, ServiceValue>> = BTreeMap::new();
        for (vip, slot, value) in &contents.slots {
            slots.entry(*vip).or_default().insert(*slot, *value);
        }
        let names: HashMap<u32, Name> = contents
            .names
            .iter()
            .filter_map(|(k, v)| decode(v).map(|n| (*k, n)))
            .collect();
        let mut ranges: HashMap<u16, Vec<IpNet>> = HashMap::new();
        for (id, range) in &contents.source_ranges {
            ranges.entry(*id).or_default().push(*range);
        }
        let mut out = Self::default();
        let mut entries: BTreeMap<(Frontend, Scope), Entry> = BTreeMap::new();
        for (vip, slots) in &slots {
            let frontend = vip.frontend();
            let Some(head) = slots.get(&0) else {
                continue;
            };
            let mut list = Vec::with_capacity(usize::from(head.count));
            let mut missing = None;
            for slot in 1..=head.count {
                match slots.get(&slot).and_then(|v| backends.get(&v.backend_id)) {
                    Some(b) => list.push(Backend {
                        addr: b.addr,
                        local: b.local,
                    }),
                    None => missing = Some(slot),
                }
            }
            if let Some(slot) = missing {
                out.unlisted.push(Unlisted {
                    frontend,
                    scope: vip.scope,
                    rev_nat_id: head.rev_nat_id,
                    reason: format!("slot {slot} or its backend missing"),
                });
                continue;
            }
            list.sort();
            list.dedup();
            entries.insert(
                (frontend, vip.scope),
                Entry {
                    head: *head,
                    backends: list,
                },
            );
        }
        for ((frontend, scope), entry) in &entries {
            if *scope == Scope::Internal {
                continue;
            }
            let rev_nat_id = entry.head.rev_nat_id;
            let Some(Name::Frontend {
                kind,
                service,
                port,
                ..
            }) = names.get(&u32::from(rev_nat_id))
            else {
                out.unlisted.push(Unlisted {
                    frontend: *frontend,
                    scope: *scope,
                    rev_nat_id,
                    reason: "no name entry".into(),
                });
                continue;
            };
            let flags = entry.head.flags;
            let source_ranges = (flags & SVC_F_SOURCE_RANGES != 0).then(|| {
                let mut r = ranges.get(&rev_nat_id).cloned().unwrap_or_default();
                r.sort();
                r
            });
            let internal_backends = entries
                .get(&(*frontend, Scope::Internal))
                .map(|e| e.backends.clone());
            out.desired.frontends.insert(
                *frontend,
                FrontendState {
                    owner: ServicePortName {
                        service: service.clone(),
                        port: port.clone(),
                        protocol: frontend.protocol,
                        family: frontend.family(),
                    },
                    kind: *kind,
                    backends: entry.backends.clone(),
                    internal_backends,
                    local_only: flags & SVC_F_LOCAL != 0,
                    source_ranges,
                    session_affinity: (flags & SVC_F_AFFINITY != 0)
                        .then_some(entry.head.backend_id),
                    reject: flags & SVC_F_REJECT != 0,
                },
            );
        }
        for (key, name) in &names {
            if let (
                Some(port),
                Name::HealthCheck {
                    service,
                    local_ready,
                },
            ) = (key.checked_sub(NAME_KEY_HEALTH_CHECK), name)
                && let Ok(port) = u16::try_from(port)
            {
                out.desired.health_checks.insert(
                    port,
                    ServiceHealth {
                        service: service.clone(),
                        local_ready: *local_ready as usize,
                    },
                );
            }
        }
        out.desired.snat = contents.snat.clone();
        out
    }

    /// Keeps only what `filter` selects.
    pub fn filter(&mut self, filter: &Filter) {
        self.desired
            .frontends
            .retain(|frontend, state| filter.frontend(frontend, &state.owner.service));
        self.desired
            .health_checks
            .retain(|_, check| filter.service.as_ref().is_none_or(|s| *s == check.service));
        if filter.family == Some(IpFamily::V6) {
            self.desired.snat.v4 = None;
        }
        if filter.family == Some(IpFamily::V4) {
            self.desired.snat.v6 = None;
        }
        self.unlisted
            .retain(|u| filter.family.is_none_or(|f| u.frontend.family() == f));
    }

    /// The listing as JSON: one object per frontend, with its backends and flags.
    pub fn to_json(&self) -> serde_json::Value {
        let backends = |list: &[Backend]| -> Vec<serde_json::Value> {
            list.iter()
                .map(|b| serde_json::json!({ "address": b.addr.to_string(), "local": b.local }))
                .collect()
        };
        let frontends: Vec<serde_json::Value> = self
            .desired
            .frontends
            .iter()
            .map(|(frontend, s)| {
                serde_json::json!({
                    "frontend": frontend.to_string(),
                    "address": frontend.addr.ip().to_string(),
                    "port": frontend.addr.port(),
                    "protocol": frontend.protocol.to_string(),
                    "family": crate::metrics::family_name(frontend.family()),
                    "kind": s.kind.to_string(),
                    "namespace": s.owner.service.namespace,
                    "service": s.owner.service.name,
                    "portName": s.owner.port,
                    "localOnly": s.local_only,
                    "sourceRanges": s.source_ranges.as_ref().map(|r| r.iter().map(ToString::to_string).collect::<Vec<_>>()),
                    "sessionAffinitySeconds": s.session_affinity,
                    "reject": s.reject,
                    "backends": backends(&s.backends),
                    "inClusterBackends": s.internal_backends.as_deref().map(backends),
                })
            })
            .collect();
        let checks: Vec<serde_json::Value> = self
            .desired
            .health_checks
            .iter()
            .map(|(port, c)| {
                serde_json::json!({
                    "port": port,
                    "namespace": c.service.namespace,
                    "service": c.service.name,
                    "localReady": c.local_ready,
                })
            })
            .collect();
        serde_json::json!({
            "frontends": frontends,
            "healthCheckNodePorts": checks,
            "snat": {
                "IPv4": self.desired.snat.v4.map(|a| a.to_string()),
                "IPv6": self.desired.snat.v6.map(|a| a.to_string()),
            },
            "unlisted": self.unlisted.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    }
}

/// `--service NS/NAME` and `--family 4|6`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub service: Option<NamespacedName>,
    pub family: Option<IpFamily>,
}

impl Filter {
    fn frontend(&self, frontend: &Frontend, service: &NamespacedName) -> bool {
        self.service.as_ref().is_none_or(|s| s == service)
            && self.family.is_none_or(|f| frontend.family() == f)
    }

    /// Whether a backend address belongs to the selected family.
    pub fn family_of(&self, addr: &SocketAddr) -> bool {
        self.family.is_none_or(|f| IpFamily::of(&addr.ip()) == f)
    }
}

/// Parses `--service NS/NAME`.
pub fn parse_service(s: &str) -> Result<NamespacedName, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(NamespacedName {
                namespace: ns.to_owned(),
                name: name.to_owned(),
            })
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

/// Parses `--family 4|6`.
pub fn parse_family(s: &str) -> Result<IpFamily, String> {
    match s {
        "4" | "ipv4" | "IPv4" => Ok(IpFamily::V4),
        "6" | "ipv6" | "IPv6" => Ok(IpFamily::V6),
        _ => Err(format!("{s:?} is not 4 or 6")),
    }
}

#[cfg(test)]
mod tests;
