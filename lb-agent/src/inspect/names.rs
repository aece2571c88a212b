//! The name map (`LB_NAMES`): what each programmed frontend entry is, in words, by reverse-NAT
//! ID (its kind and service port), and the health check node ports (their service and local
//! ready endpoints). The kernel programs never read it. The agent writes it after every sync
//! ([`NameWriter`]), so that `lb-agent list` can print what `lb-agent plan` prints from the
//! pinned maps alone, while the agent runs or after it stopped.
//!
//! Why a pinned map and not a file beside the pins: a BPF filesystem holds only pinned objects
//! and directories, no regular files; a file elsewhere would need a second path to agree on
//! and could outlive or predate the pins it describes. A pinned map goes with the other pins
//! (`lb-agent cleanup` removes it) and is read the same way.

use std::collections::{BTreeMap, HashMap};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError as AyaMapError};
use lb_ebpf::{
    FrontendName, NAME_KEY_HEALTH_CHECK, NAME_KIND_CLUSTER_IP, NAME_KIND_EXTERNAL_IP,
    NAME_KIND_HEALTH_CHECK, NAME_KIND_LOAD_BALANCER, NAME_KIND_NODE_PORT, NAME_TEXT_LEN, map_names,
};
use thiserror::Error;

use crate::{
    lbmap::Vip,
    model::{FrontendKind, IpFamily, NamespacedName},
    plan::Desired,
};

/// A name map operation failed, or a name does not fit.
#[derive(Debug, Error)]
pub enum NameError {
    #[error("{op} on map {}: {source}", map_names::NAMES)]
    Map {
        op: &'static str,
        #[source]
        source: AyaMapError,
    },
    #[error("map {} missing from the eBPF object", map_names::NAMES)]
    Missing,
    #[error(
        "service {service} port {port:?}: {len} bytes, more than the {NAME_TEXT_LEN} a name entry holds"
    )]
    TooLong {
        service: String,
        port: String,
        len: usize,
    },
}

/// What a name entry says, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Name {
    /// A frontend entry: its kind and service port.
    Frontend {
        kind: FrontendKind,
        service: NamespacedName,
        /// Empty for a single unnamed port.
        port: String,
        /// `None` in entries of builds before it.
        family: Option<IpFamily>,
    },
    /// A health check node port.
    HealthCheck {
        service: NamespacedName,
        local_ready: u32,
    },
}

fn kind_byte(kind: FrontendKind) -> u8 {
    match kind {
        FrontendKind::ClusterIp => NAME_KIND_CLUSTER_IP,
        FrontendKind::NodePort => NAME_KIND_NODE_PORT,
        FrontendKind::ExternalIp => NAME_KIND_EXTERNAL_IP,
        FrontendKind::LoadBalancer => NAME_KIND_LOAD_BALANCER,
    }
}

/// Encodes a name entry.
pub fn encode(name: &Name) -> Result<FrontendName, NameError> {
    let (kind, service, port, value, family) = match name {
        Name::Frontend {
            kind,
            service,
            port,
            family,
        } => (
            kind_byte(*kind),
            service,
            port.as_str(),
            0,
            match family {
                Some(IpFamily::V4) => 4,
                Some(IpFamily::V6) => 6,
                None => 0,
            },
        ),
        Name::HealthCheck {
            service,
            local_ready,
        } => (NAME_KIND_HEALTH_CHECK, service, "", *local_ready, 0),
    };
    let service_text = service.to_string();
    let len = service_text.len() + port.len();
    let too_long = || NameError::TooLong {
        service: service_text.clone(),
        port: port.to_owned(),
        len,
    };
    if len > NAME_TEXT_LEN {
        return Err(too_long());
    }
    let mut text = [0_u8; NAME_TEXT_LEN];
    text[..service_text.len()].copy_from_slice(service_text.as_bytes());
    text[service_text.len()..len].copy_from_slice(port.as_bytes());
    Ok(FrontendName {
        kind,
        service_len: u8::try_from(service_text.len()).map_err(|_| too_long())?,
        port_len: u8::try_from(port.len()).map_err(|_| too_long())?,
        family,
        value,
        text,
    })
}

/// Decodes a name entry; `None` for one this agent did not write (unknown kind, bad lengths or
/// text).
pub fn decode(entry: &FrontendName) -> Option<Name> {
    let (s, p) = (usize::from(entry.service_len), usize::from(entry.port_len));
    let service = std::str::from_utf8(entry.text.get(..s)?).ok()?;
    let port = std::str::from_utf8(entry.text.get(s..s + p)?).ok()?;
    let (namespace, name) = service.split_once('/')?;
    let service = NamespacedName {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    let kind = match entry.kind {
        NAME_KIND_CLUSTER_IP => FrontendKind::ClusterIp,
        NAME_KIND_NODE_PORT => FrontendKind::NodePort,
        NAME_KIND_EXTERNAL_IP => FrontendKind::ExternalIp,
        NAME_KIND_LOAD_BALANCER => FrontendKind::LoadBalancer,
        NAME_KIND_HEALTH_CHECK => {
            return Some(Name::HealthCheck {
                service,
                local_ready: entry.value,
            });
        }
        _ => return None,
    };
    let family = match entry.family {
        4 => Some(IpFamily::V4),
        6 => Some(IpFamily::V6),
        _ => None,
    };
    Some(Name::Frontend {
        kind,
        service,
        port: port.to_owned(),
        family,
    })
}

/// Where name entries are kept: the pinned map, or memory in tests.
pub trait NameStore: Send {
    fn put(&mut self, key: u32, value: &FrontendName) -> Result<(), NameError>;
    /// Deleting an absent entry succeeds.
    fn delete(&mut self, key: u32) -> Result<(), NameError>;
    fn list(&self) -> Result<Vec<(u32, FrontendName)>, NameError>;
}

/// The pinned `LB_NAMES` map.
pub struct BpfNames(BpfHashMap<MapData, u32, FrontendName>);

impl BpfNames {
    /// Takes the map out of the loaded object (the pinned one when an earlier run left it).
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, NameError> {
        let map = ebpf.take_map(map_names::NAMES).ok_or(NameError::Missing)?;
        BpfHashMap::try_from(map)
            .map(Self)
            .map_err(|source| NameError::Map { op: "open", source })
    }

    /// Opens the map an agent pinned under `pin_dir`.
    pub fn from_pin(pin_dir: &std::path::Path) -> Result<Self, NameError> {
        MapData::from_pin(pin_dir.join(map_names::NAMES))
            .and_then(aya::maps::Map::from_map_data)
            .and_then(BpfHashMap::try_from)
            .map(Self)
            .map_err(|source| NameError::Map { op: "open", source })
    }
}

impl NameStore for BpfNames {
    fn put(&mut self, key: u32, value: &FrontendName) -> Result<(), NameError> {
        self.0
            .insert(key, value, 0)
            .map_err(|source| NameError::Map {
                op: "insert",
                source,
            })
    }

    fn delete(&mut self, key: u32) -> Result<(), NameError> {
        match self.0.remove(&key) {
            Err(AyaMapError::SyscallError(s))
                if s.io_error.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            other => other.map_err(|source| NameError::Map {
                op: "delete",
                source,
            }),
        }
    }

    fn list(&self) -> Result<Vec<(u32, FrontendName)>, NameError> {
        self.0
            .iter()
            .map(|e| {
                e.map_err(|source| NameError::Map {
                    op: "iterate",
                    source,
                })
            })
            .collect()
    }
}

/// Name entries in memory, for tests.
#[derive(Clone, Debug, Default)]
pub struct MemoryNames(pub BTreeMap<u32, FrontendName>);

impl NameStore for MemoryNames {
    fn put(&mut self, key: u32, value: &FrontendName) -> Result<(), NameError> {
        self.0.insert(key, *value);
        Ok(())
    }

    fn delete(&mut self, key: u32) -> Result<(), NameError> {
        self.0.remove(&key);
        Ok(())
    }

    fn list(&self) -> Result<Vec<(u32, FrontendName)>, NameError> {
        Ok(self.0.iter().map(|(k, v)| (*k, *v)).collect())
    }
}

/// Keeps the name map equal to the programmed frontends and the plan's health checks, writing
/// only entries that changed.
pub struct NameWriter {
    store: Box<dyn NameStore>,
    /// What the map holds, as far as this writer knows; `None` until read once (an earlier
    /// run's entries are taken over, and the stale ones deleted, at the first update).
    written: Option<HashMap<u32, FrontendName>>,
}

impl NameWriter {
    pub fn new(store: impl NameStore + 'static) -> Self {
        Self {
            store: Box::new(store),
            written: None,
        }
    }

    /// The entries now in the store.
    pub fn store(&self) -> &dyn NameStore {
        self.store.as_ref()
    }

    /// Names every entry of `programmed` (service map entry, reverse-NAT ID) whose frontend is
    /// in `desired`, and every health check node port of `desired`. An entry that failed is
    /// retried by the next update. Returns the entries written or deleted.
    pub fn update<'a>(
        &mut self,
        desired: &Desired,
        programmed: impl Iterator<Item = (&'a Vip, u16)>,
    ) -> Result<usize, NameError> {
        let mut wanted: HashMap<u32, FrontendName> = HashMap::new();
        let mut first_error = None;
        for (vip, rev_nat_id) in programmed {
            let Some(state) = desired.frontends.get(&vip.frontend()) else {
                continue;
            };
            let name = Name::Frontend {
                kind: state.kind,
                service: state.owner.service.clone(),
                port: state.owner.port.clone(),
                family: Some(state.owner.family),
            };
            match encode(&name) {
                Ok(entry) => {
                    wanted.insert(u32::from(rev_nat_id), entry);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        for (port, check) in &desired.health_checks {
            let name = Name::HealthCheck {
                service: check.service.clone(),
                local_ready: u32::try_from(check.local_ready).unwrap_or(u32::MAX),
            };
            match encode(&name) {
                Ok(entry) => {
                    wanted.insert(NAME_KEY_HEALTH_CHECK + u32::from(*port), entry);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let written = match &mut self.written {
            Some(w) => w,
            None => self
                .written
                .insert(self.store.list()?.into_iter().collect()),
        };
        let mut changes = 0;
        for (key, entry) in &wanted {
            if written.get(key) != Some(entry) {
                self.store.put(*key, entry)?;
                written.insert(*key, *entry);
                changes += 1;
            }
        }
        let stale: Vec<u32> = written
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in stale {
            self.store.delete(key)?;
            written.remove(&key);
            changes += 1;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(changes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nn(ns: &str, name: &str) -> NamespacedName {
        NamespacedName {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn names_round_trip_at_the_longest_kubernetes_allows() {
        let long = "a".repeat(63);
        for name in [
            Name::Frontend {
                kind: FrontendKind::LoadBalancer,
                service: nn(&long, &long),
                port: "p".repeat(15),
                family: Some(IpFamily::V6),
            },
            Name::Frontend {
                kind: FrontendKind::ClusterIp,
                service: nn("default", "web"),
                port: String::new(),
                family: Some(IpFamily::V4),
            },
            Name::HealthCheck {
                service: nn("kube-system", "dns"),
                local_ready: 3,
            },
        ] {
            let entry = encode(&name).unwrap();
            assert_eq!(decode(&entry), Some(name));
        }
    }

    #[test]
    fn a_name_too_long_is_refused_naming_the_service() {
        let err = encode(&Name::Frontend {
            kind: FrontendKind::NodePort,
            service: nn(&"n".repeat(150), "svc"),
            port: "http".into(),
            family: None,
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("/svc") && err.contains("\"http\""), "{err}");
    }

    #[test]
    fn an_entry_of_an_unknown_kind_or_with_bad_lengths_is_not_decoded() {
        let mut entry = encode(&Name::HealthCheck {
            service: nn("a", "b"),
            local_ready: 1,
        })
        .unwrap();
        entry.kind = 99;
        assert_eq!(decode(&entry), None);
        entry.kind = NAME_KIND_CLUSTER_IP;
        entry.service_len = 200;
        assert_eq!(decode(&entry), None);
    }
}
