//! [`MapOps`] on the real BPF maps: the encodings of frontends, backends, source ranges, node
//! addresses and XDP devices as the kernel programs read them (`lb_ebpf`'s ABI).

use std::net::IpAddr;

use aya::{
    Ebpf,
    maps::{
        Array, DevMapHash, HashMap, MapData, MapError as AyaMapError, PerCpuArray, PerCpuValues,
        lpm_trie::{Key as LpmKey, LpmTrie},
        xdp::XdpMapError,
    },
};
use ipnet::IpNet;
use lb_ebpf::{
    AffinityMatchKey, BACKEND_F_LOCAL, Backend4, Backend6, Flow4Key, Flow4Value, Flow6Key,
    Flow6Value, SCOPE_DEFAULT, SCOPE_INTERNAL, SNAT_ADDR_SLOTS, Service4Key, Service6Key,
    ServiceCounters, ServiceKey, ServiceValue, Snat4Key, Snat4Value, Snat6Key, Snat6Value,
    SnatDevice, Sock4Key, Sock4Value, Sock6Key, Sock6Value, SourceRange, map_names, port_to_map,
};
use thiserror::Error;

use super::{BackendId, BackendKey, MapError, MapOps, Scope, Vip};
use crate::model::{IpFamily, Protocol};

/// The agent's handles on the pinned maps.
pub struct BpfMaps {
    services_v4: HashMap<MapData, Service4Key, ServiceValue>,
    services_v6: HashMap<MapData, Service6Key, ServiceValue>,
    backends_v4: HashMap<MapData, u32, Backend4>,
    backends_v6: HashMap<MapData, u32, Backend6>,
    flows_v4: HashMap<MapData, Flow4Key, Flow4Value>,
    flows_v6: HashMap<MapData, Flow6Key, Flow6Value>,
    new_flows_v4: HashMap<MapData, Flow4Key, Flow4Value>,
    new_flows_v6: HashMap<MapData, Flow6Key, Flow6Value>,
    snat_v4: HashMap<MapData, Snat4Key, Snat4Value>,
    snat_v6: HashMap<MapData, Snat6Key, Snat6Value>,
    source_ranges_v4: LpmTrie<MapData, SourceRange<[u8; 4]>, u8>,
    source_ranges_v6: LpmTrie<MapData, SourceRange<[u8; 16]>, u8>,
    node_addr_v4: Array<MapData, [u8; 4]>,
    node_addr_v6: Array<MapData, [u8; 16]>,
    snat_devices: HashMap<MapData, u32, SnatDevice>,
    service_stats: PerCpuArray<MapData, ServiceCounters>,
    xdp_devices: DevMapHash<MapData>,
    affinity_match: HashMap<MapData, AffinityMatchKey, u8>,
    sock_revnat_v4: HashMap<MapData, Sock4Key, Sock4Value>,
    sock_revnat_v6: HashMap<MapData, Sock6Key, Sock6Value>,
}

/// A map the agent needs could not be taken from the loaded object.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error("map {0} missing from the eBPF object")]
    Missing(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: AyaMapError,
    },
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, OpenError>
where
    T: TryFrom<aya::maps::Map, Error = AyaMapError>,
{
    let map = ebpf.take_map(name).ok_or(OpenError::Missing(name))?;
    T::try_from(map).map_err(|source| OpenError::Map { name, source })
}

impl BpfMaps {
    /// Takes the agent's maps out of the loaded object (which keeps the rest, e.g. the flow
    /// and counter maps the programs use on their own). The maps are the pinned ones when an
    /// earlier run left them.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, OpenError> {
        Ok(Self {
            services_v4: take_map(ebpf, map_names::SERVICES_V4)?,
            services_v6: take_map(ebpf, map_names::SERVICES_V6)?,
            backends_v4: take_map(ebpf, map_names::BACKENDS_V4)?,
            backends_v6: take_map(ebpf, map_names::BACKENDS_V6)?,
            flows_v4: take_map(ebpf, map_names::FLOWS_V4)?,
            flows_v6: take_map(ebpf, map_names::FLOWS_V6)?,
            new_flows_v4: take_map(ebpf, map_names::FLOWS_NEW_V4)?,
            new_flows_v6: take_map(ebpf, map_names::FLOWS_NEW_V6)?,
            snat_v4: take_map(ebpf, map_names::SNAT_V4)?,
            snat_v6: take_map(ebpf, map_names::SNAT_V6)?,
            source_ranges_v4: take_map(ebpf, map_names::SOURCE_RANGES_V4)?,
            source_ranges_v6: take_map(ebpf, map_names::SOURCE_RANGES_V6)?,
            node_addr_v4: take_map(ebpf, map_names::NODE_ADDR_V4)?,
            node_addr_v6: take_map(ebpf, map_names::NODE_ADDR_V6)?,
            snat_devices: take_map(ebpf, map_names::SNAT_DEVICES)?,
            service_stats: take_map(ebpf, map_names::SERVICE_STATS)?,
            xdp_devices: take_map(ebpf, map_names::XDP_DEVICES)?,
            affinity_match: take_map(ebpf, map_names::AFFINITY_MATCH)?,
            sock_revnat_v4: take_map(ebpf, map_names::SOCK_REVNAT_V4)?,
            sock_revnat_v6: take_map(ebpf, map_names::SOCK_REVNAT_V6)?,
        })
    }

    /// Opens the maps an agent pinned under `pin_dir`, with or without a running agent: what
    /// `lb-agent list`, `flows` and `explain` read.
    pub fn from_pins(pin_dir: &std::path::Path) -> Result<Self, OpenError> {
        let open = |name: &'static str| {
            MapData::from_pin(pin_dir.join(name))
                .and_then(aya::maps::Map::from_map_data)
                .map_err(|source| OpenError::Map { name, source })
        };
        fn typed<T: TryFrom<aya::maps::Map, Error = AyaMapError>>(
            name: &'static str,
            map: Result<aya::maps::Map, OpenError>,
        ) -> Result<T, OpenError> {
            T::try_from(map?).map_err(|source| OpenError::Map { name, source })
        }
        macro_rules! pinned {
            ($name:expr) => {
                typed($name, open($name))?
            };
        }
        Ok(Self {
            services_v4: pinned!(map_names::SERVICES_V4),
            services_v6: pinned!(map_names::SERVICES_V6),
            backends_v4: pinned!(map_names::BACKENDS_V4),
            backends_v6: pinned!(map_names::BACKENDS_V6),
            flows_v4: pinned!(map_names::FLOWS_V4),
            flows_v6: pinned!(map_names::FLOWS_V6),
            new_flows_v4: pinned!(map_names::FLOWS_NEW_V4),
            new_flows_v6: pinned!(map_names::FLOWS_NEW_V6),
            snat_v4: pinned!(map_names::SNAT_V4),
            snat_v6: pinned!(map_names::SNAT_V6),
            source_ranges_v4: pinned!(map_names::SOURCE_RANGES_V4),
            source_ranges_v6: pinned!(map_names::SOURCE_RANGES_V6),
            node_addr_v4: pinned!(map_names::NODE_ADDR_V4),
            node_addr_v6: pinned!(map_names::NODE_ADDR_V6),
            snat_devices: pinned!(map_names::SNAT_DEVICES),
            service_stats: pinned!(map_names::SERVICE_STATS),
            xdp_devices: pinned!(map_names::XDP_DEVICES),
            affinity_match: pinned!(map_names::AFFINITY_MATCH),
            sock_revnat_v4: pinned!(map_names::SOCK_REVNAT_V4),
            sock_revnat_v6: pinned!(map_names::SOCK_REVNAT_V6),
        })
    }

    /// The node's default SNAT address of each family (slot 0), as the maps hold it (all
    /// zeros: none); the devices' own addresses are left out, as `lb-agent plan` has none.
    pub fn node_addrs(&self) -> crate::model::SnatAddrs {
        let v4 = self
            .node_addr_v4
            .get(&0, 0)
            .ok()
            .map(std::net::Ipv4Addr::from);
        let v6 = self
            .node_addr_v6
            .get(&0, 0)
            .ok()
            .map(std::net::Ipv6Addr::from);
        crate::model::SnatAddrs {
            v4: v4.filter(|a| !a.is_unspecified()),
            v6: v6.filter(|a| !a.is_unspecified()),
            devices: Default::default(),
        }
    }

    /// Every IPv4 flow entry (forward and reply) of both tables, confirmed first, for
    /// inspection and tests.
    pub fn flows_v4(&self) -> Vec<(Flow4Key, Flow4Value)> {
        let confirmed = self.flows_v4.iter().filter_map(Result::ok);
        confirmed
            .chain(self.new_flows_v4.iter().filter_map(Result::ok))
            .collect()
    }

    /// Every IPv6 flow entry of both tables, as [`BpfMaps::flows_v4`].
    pub fn flows_v6(&self) -> Vec<(Flow6Key, Flow6Value)> {
        let confirmed = self.flows_v6.iter().filter_map(Result::ok);
        confirmed
            .chain(self.new_flows_v6.iter().filter_map(Result::ok))
            .collect()
    }

    /// The IPv4 flow entries not confirmed yet.
    pub fn new_flows_v4(&self) -> Vec<(Flow4Key, Flow4Value)> {
        self.new_flows_v4.iter().filter_map(Result::ok).collect()
    }

    /// The IPv6 flow entries not confirmed yet.
    pub fn new_flows_v6(&self) -> Vec<(Flow6Key, Flow6Value)> {
        self.new_flows_v6.iter().filter_map(Result::ok).collect()
    }

    /// Every IPv4 SNAT entry.
    pub fn snat_v4(&self) -> Vec<(Snat4Key, Snat4Value)> {
        self.snat_v4.iter().filter_map(Result::ok).collect()
    }

    /// Every IPv6 SNAT entry.
    pub fn snat_v6(&self) -> Vec<(Snat6Key, Snat6Value)> {
        self.snat_v6.iter().filter_map(Result::ok).collect()
    }
}

fn io_err(op: &'static str, map: &'static str, e: AyaMapError) -> MapError {
    let source = match e {
        AyaMapError::SyscallError(s) => s.io_error,
        other => std::io::Error::other(other.to_string()),
    };
    MapError::Io { op, map, source }
}

/// Deleting an absent key is success: deletes are idempotent.
fn ignore_missing(r: Result<(), AyaMapError>) -> Result<(), AyaMapError> {
    match r {
        Err(AyaMapError::SyscallError(s)) if s.io_error.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        other => other,
    }
}

fn service_key<A>(addr: A, vip: &Vip, slot: u16) -> ServiceKey<A> {
    ServiceKey {
        addr,
        port: port_to_map(vip.addr.port()),
        slot,
        proto: vip.protocol.number(),
        scope: match vip.scope {
            Scope::Default => SCOPE_DEFAULT,
            Scope::Internal => SCOPE_INTERNAL,
        },
        _pad: [0; 2],
    }
}

impl MapOps for BpfMaps {
    fn set_snat_addr(
        &mut self,
        family: IpFamily,
        slot: u8,
        addr: Option<IpAddr>,
    ) -> Result<(), MapError> {
        let slot = u32::from(slot);
        match family {
            IpFamily::V4 => {
                let value = match addr {
                    Some(IpAddr::V4(a)) => a.octets(),
                    _ => [0; 4],
                };
                self.node_addr_v4
                    .set(slot, value, 0)
                    .map_err(|e| io_err("update", map_names::NODE_ADDR_V4, e))
            }
            IpFamily::V6 => {
                let value = match addr {
                    Some(IpAddr::V6(a)) => a.octets(),
                    _ => [0; 16],
                };
                self.node_addr_v6
                    .set(slot, value, 0)
                    .map_err(|e| io_err("update", map_names::NODE_ADDR_V6, e))
            }
        }
    }

    fn list_snat_addrs(&self) -> Result<Vec<(IpFamily, u8, IpAddr)>, MapError> {
        let mut out = Vec::new();
        for slot in 0..SNAT_ADDR_SLOTS {
            let v4 = self
                .node_addr_v4
                .get(&slot, 0)
                .map_err(|e| io_err("lookup", map_names::NODE_ADDR_V4, e))?;
            if v4 != [0; 4] {
                out.push((IpFamily::V4, slot as u8, IpAddr::from(v4)));
            }
            let v6 = self
                .node_addr_v6
                .get(&slot, 0)
                .map_err(|e| io_err("lookup", map_names::NODE_ADDR_V6, e))?;
            if v6 != [0; 16] {
                out.push((IpFamily::V6, slot as u8, IpAddr::from(v6)));
            }
        }
        Ok(out)
    }

    fn put_snat_device(&mut self, ifindex: u32, device: &SnatDevice) -> Result<(), MapError> {
        self.snat_devices
            .insert(ifindex, *device, 0)
            .map_err(|e| io_err("insert", map_names::SNAT_DEVICES, e))
    }

    fn delete_snat_device(&mut self, ifindex: u32) -> Result<(), MapError> {
        ignore_missing(self.snat_devices.remove(&ifindex))
            .map_err(|e| io_err("delete", map_names::SNAT_DEVICES, e))
    }

    fn reset_service_counters(&mut self, rev_nat_id: u16) -> Result<(), MapError> {
        let failed = |source| MapError::Io {
            op: "update",
            map: map_names::SERVICE_STATS,
            source,
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| failed(e))?;
        let zeros =
            PerCpuValues::try_from(vec![ServiceCounters::default(); cpus]).map_err(failed)?;
        self.service_stats
            .set(u32::from(rev_nat_id), zeros, 0)
            .map_err(|e| io_err("update", map_names::SERVICE_STATS, e))
    }

    fn list_snat_devices(&self) -> Result<Vec<(u32, SnatDevice)>, MapError> {
        self.snat_devices
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| io_err("list", map_names::SNAT_DEVICES, e))
    }

    fn put_affinity_match(
        &mut self,
        rev_nat_id: u16,
        backend_id: BackendId,
    ) -> Result<(), MapError> {
        self.affinity_match
            .insert(match_key(rev_nat_id, backend_id), 1, 0)
            .map_err(|e| io_err("insert", map_names::AFFINITY_MATCH, e))
    }

    fn delete_affinity_match(
        &mut self,
        rev_nat_id: u16,
        backend_id: BackendId,
    ) -> Result<(), MapError> {
        ignore_missing(
            self.affinity_match
                .remove(&match_key(rev_nat_id, backend_id)),
        )
        .map_err(|e| io_err("delete", map_names::AFFINITY_MATCH, e))
    }

    fn list_affinity_matches(&self) -> Result<Vec<(u16, BackendId)>, MapError> {
        self.affinity_match
            .keys()
            .map(|key| {
                key.map(|k| (k.rev_nat_id, k.backend_id))
                    .map_err(|e| io_err("iterate", map_names::AFFINITY_MATCH, e))
            })
            .collect()
    }

    fn list_translated_sockets(&self) -> Result<Vec<(u64, std::net::SocketAddr, u16)>, MapError> {
        let mut out = Vec::new();
        for entry in self.sock_revnat_v4.iter() {
            let (key, value) =
                entry.map_err(|e| io_err("iterate", map_names::SOCK_REVNAT_V4, e))?;
            let backend =
                std::net::SocketAddr::new(IpAddr::from(key.addr), lb_ebpf::port_from_map(key.port));
            out.push((key.cookie, backend, value.rev_nat_id));
        }
        for entry in self.sock_revnat_v6.iter() {
            let (key, value) =
                entry.map_err(|e| io_err("iterate", map_names::SOCK_REVNAT_V6, e))?;
            let backend =
                std::net::SocketAddr::new(IpAddr::from(key.addr), lb_ebpf::port_from_map(key.port));
            out.push((key.cookie, backend, value.rev_nat_id));
        }
        Ok(out)
    }

    fn put_xdp_device(&mut self, ifindex: u32) -> Result<(), MapError> {
        let name = map_names::XDP_DEVICES;
        self.xdp_devices
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| match e {
                XdpMapError::MapError(e) => io_err("insert", name, e),
                other => MapError::Io {
                    op: "insert",
                    map: name,
                    source: std::io::Error::other(other.to_string()),
                },
            })
    }

    fn delete_xdp_device(&mut self, ifindex: u32) -> Result<(), MapError> {
        ignore_missing(self.xdp_devices.remove(ifindex))
            .map_err(|e| io_err("delete", map_names::XDP_DEVICES, e))
    }

    fn put_backend(&mut self, id: BackendId, backend: &BackendKey) -> Result<(), MapError> {
        let (port, proto) = (port_to_map(backend.addr.port()), backend.protocol.number());
        let flags = if backend.local { BACKEND_F_LOCAL } else { 0 };
        match backend.addr.ip() {
            IpAddr::V4(ip) => self
                .backends_v4
                .insert(
                    id,
                    Backend4 {
                        addr: ip.octets(),
                        port,
                        proto,
                        flags,
                    },
                    0,
                )
                .map_err(|e| io_err("insert", map_names::BACKENDS_V4, e)),
            IpAddr::V6(ip) => self
                .backends_v6
                .insert(
                    id,
                    Backend6 {
                        addr: ip.octets(),
                        port,
                        proto,
                        flags,
                    },
                    0,
                )
                .map_err(|e| io_err("insert", map_names::BACKENDS_V6, e)),
        }
    }

    fn delete_backend(&mut self, id: BackendId, family: IpFamily) -> Result<(), MapError> {
        match family {
            IpFamily::V4 => ignore_missing(self.backends_v4.remove(&id))
                .map_err(|e| io_err("delete", map_names::BACKENDS_V4, e)),
            IpFamily::V6 => ignore_missing(self.backends_v6.remove(&id))
                .map_err(|e| io_err("delete", map_names::BACKENDS_V6, e)),
        }
    }

    fn put_slot(
        &mut self,
        frontend: &Vip,
        slot: u16,
        value: &ServiceValue,
    ) -> Result<(), MapError> {
        match frontend.addr.ip() {
            IpAddr::V4(ip) => self
                .services_v4
                .insert(service_key(ip.octets(), frontend, slot), value, 0)
                .map_err(|e| io_err("insert", map_names::SERVICES_V4, e)),
            IpAddr::V6(ip) => self
                .services_v6
                .insert(service_key(ip.octets(), frontend, slot), value, 0)
                .map_err(|e| io_err("insert", map_names::SERVICES_V6, e)),
        }
    }

    fn delete_slot(&mut self, frontend: &Vip, slot: u16) -> Result<(), MapError> {
        match frontend.addr.ip() {
            IpAddr::V4(ip) => ignore_missing(self.services_v4.remove(&service_key(
                ip.octets(),
                frontend,
                slot,
            )))
            .map_err(|e| io_err("delete", map_names::SERVICES_V4, e)),
            IpAddr::V6(ip) => ignore_missing(self.services_v6.remove(&service_key(
                ip.octets(),
                frontend,
                slot,
            )))
            .map_err(|e| io_err("delete", map_names::SERVICES_V6, e)),
        }
    }

    fn put_source_range(&mut self, rev_nat_id: u16, range: &IpNet) -> Result<(), MapError> {
        match range {
            IpNet::V4(n) => self
                .source_ranges_v4
                .insert(
                    &range_key(rev_nat_id, n.prefix_len(), n.addr().octets()),
                    1,
                    0,
                )
                .map_err(|e| io_err("insert", map_names::SOURCE_RANGES_V4, e)),
            IpNet::V6(n) => self
                .source_ranges_v6
                .insert(
                    &range_key(rev_nat_id, n.prefix_len(), n.addr().octets()),
                    1,
                    0,
                )
                .map_err(|e| io_err("insert", map_names::SOURCE_RANGES_V6, e)),
        }
    }

    fn delete_source_range(&mut self, rev_nat_id: u16, range: &IpNet) -> Result<(), MapError> {
        match range {
            IpNet::V4(n) => ignore_missing(self.source_ranges_v4.remove(&range_key(
                rev_nat_id,
                n.prefix_len(),
                n.addr().octets(),
            )))
            .map_err(|e| io_err("delete", map_names::SOURCE_RANGES_V4, e)),
            IpNet::V6(n) => ignore_missing(self.source_ranges_v6.remove(&range_key(
                rev_nat_id,
                n.prefix_len(),
                n.addr().octets(),
            )))
            .map_err(|e| io_err("delete", map_names::SOURCE_RANGES_V6, e)),
        }
    }

    fn list_source_ranges(&self) -> Result<Vec<(u16, IpNet)>, MapError> {
        let mut out = Vec::new();
        for key in self.source_ranges_v4.keys() {
            let key = key.map_err(|e| io_err("iterate", map_names::SOURCE_RANGES_V4, e))?;
            let data = key.data();
            let prefix = key.prefix_len().saturating_sub(32) as u8;
            if let Ok(net) = ipnet::Ipv4Net::new(data.addr.into(), prefix) {
                out.push((u16::from_be(data.rev_nat_id), IpNet::V4(net)));
            }
        }
        for key in self.source_ranges_v6.keys() {
            let key = key.map_err(|e| io_err("iterate", map_names::SOURCE_RANGES_V6, e))?;
            let data = key.data();
            let prefix = key.prefix_len().saturating_sub(32) as u8;
            if let Ok(net) = ipnet::Ipv6Net::new(data.addr.into(), prefix) {
                out.push((u16::from_be(data.rev_nat_id), IpNet::V6(net)));
            }
        }
        Ok(out)
    }

    fn list_slots(&self) -> Result<Vec<(Vip, u16, ServiceValue)>, MapError> {
        let mut out = Vec::new();
        for entry in self.services_v4.iter() {
            let (key, value) = entry.map_err(|e| io_err("iterate", map_names::SERVICES_V4, e))?;
            if let Some(f) = frontend_of(IpAddr::from(key.addr), &key) {
                out.push((f, key.slot, value));
            }
        }
        for entry in self.services_v6.iter() {
            let (key, value) = entry.map_err(|e| io_err("iterate", map_names::SERVICES_V6, e))?;
            if let Some(f) = frontend_of(IpAddr::from(key.addr), &key) {
                out.push((f, key.slot, value));
            }
        }
        Ok(out)
    }

    fn list_backends(&self) -> Result<Vec<(BackendId, IpFamily, Option<BackendKey>)>, MapError> {
        let mut out = Vec::new();
        for entry in self.backends_v4.iter() {
            let (id, b) = entry.map_err(|e| io_err("iterate", map_names::BACKENDS_V4, e))?;
            let key = backend_key(IpAddr::from(b.addr), b.port, b.proto, b.flags);
            out.push((id, IpFamily::V4, key));
        }
        for entry in self.backends_v6.iter() {
            let (id, b) = entry.map_err(|e| io_err("iterate", map_names::BACKENDS_V6, e))?;
            let key = backend_key(IpAddr::from(b.addr), b.port, b.proto, b.flags);
            out.push((id, IpFamily::V6, key));
        }
        Ok(out)
    }
}

fn match_key(rev_nat_id: u16, backend_id: BackendId) -> AffinityMatchKey {
    AffinityMatchKey {
        backend_id,
        rev_nat_id,
        _pad: [0; 2],
    }
}

/// The LPM key of a source range: 32 bits of rev-NAT ID and padding, then the prefix.
fn range_key<A>(rev_nat_id: u16, prefix_len: u8, addr: A) -> LpmKey<SourceRange<A>>
where
    SourceRange<A>: aya::Pod,
{
    LpmKey::new(
        32 + u32::from(prefix_len),
        SourceRange {
            rev_nat_id: rev_nat_id.to_be(),
            _pad: 0,
            addr,
        },
    )
}

fn protocol_of(proto: u8) -> Option<Protocol> {
    match proto {
        lb_ebpf::PROTO_TCP => Some(Protocol::Tcp),
        lb_ebpf::PROTO_UDP => Some(Protocol::Udp),
        _ => None,
    }
}

fn backend_key(addr: IpAddr, port: u16, proto: u8, flags: u8) -> Option<BackendKey> {
    Some(BackendKey {
        addr: std::net::SocketAddr::new(addr, lb_ebpf::port_from_map(port)),
        protocol: protocol_of(proto)?,
        local: flags & BACKEND_F_LOCAL != 0,
    })
}

/// The entry of a service key; `None` for protocols and scopes the agent does not program.
fn frontend_of<A>(addr: IpAddr, key: &ServiceKey<A>) -> Option<Vip> {
    let protocol = protocol_of(key.proto)?;
    let scope = match key.scope {
        SCOPE_DEFAULT => Scope::Default,
        SCOPE_INTERNAL => Scope::Internal,
        _ => return None,
    };
    Some(Vip {
        addr: std::net::SocketAddr::new(addr, lb_ebpf::port_from_map(key.port)),
        protocol,
        scope,
    })
}
