//! In-memory [`MapOps`]: the maps as ordered maps, for testing the control plane without root.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_ebpf::{ServiceValue, SnatDevice};

use super::{BackendId, BackendKey, MapError, MapOps, Scope, Vip};
use crate::model::{Frontend, IpFamily};

/// The BPF maps' contents, kept in memory.
#[derive(Debug, Default)]
pub struct MemoryMaps {
    pub services: BTreeMap<(Frontend, u16), ServiceValue>,
    /// The in-cluster entries ([`Scope::Internal`]).
    pub internal: BTreeMap<(Frontend, u16), ServiceValue>,
    pub backends: BTreeMap<BackendId, BackendKey>,
    pub source_ranges: BTreeSet<(u16, ipnet::IpNet)>,
    /// The SNAT address per family (slot 0); a family never set is absent.
    pub node_addrs: BTreeMap<IpFamily, Option<IpAddr>>,
    /// SNAT address slots 1 and up that hold an address.
    pub snat_slots: BTreeMap<(IpFamily, u8), IpAddr>,
    /// Ifindex -> the SNAT slots of flows leaving through it.
    pub snat_devices: BTreeMap<u32, SnatDevice>,
    /// Reverse-NAT IDs whose traffic counters were zeroed, in order.
    pub counters_reset: Vec<u16>,
    /// Devices XDP may redirect to.
    pub xdp_devices: BTreeSet<u32>,
    /// (reverse-NAT ID, backend ID) pairs session affinity may use.
    pub affinity_matches: BTreeSet<(u16, BackendId)>,
    /// What the socket programs would have recorded: (cookie, backend, reverse-NAT ID).
    pub translated_sockets: Vec<(u64, std::net::SocketAddr, u16)>,
    /// Number of write and delete operations so far.
    pub ops: usize,
    /// Fail every operation after this many more have succeeded (for error-path tests).
    pub fail_after: Option<usize>,
}

impl MemoryMaps {
    fn step(&mut self) -> Result<(), MapError> {
        if let Some(n) = &mut self.fail_after {
            if *n == 0 {
                return Err(MapError::Injected);
            }
            *n -= 1;
        }
        self.ops += 1;
        Ok(())
    }

    fn scope_mut(&mut self, scope: Scope) -> &mut BTreeMap<(Frontend, u16), ServiceValue> {
        match scope {
            Scope::Default => &mut self.services,
            Scope::Internal => &mut self.internal,
        }
    }

    /// Backends a frontend's slots point at, in slot order.
    pub fn slot_backends(&self, frontend: &Frontend) -> Vec<BackendKey> {
        let count = self.services.get(&(*frontend, 0)).map_or(0, |v| v.count);
        (1..=count)
            .map(|slot| {
                let id = self.services[&(*frontend, slot)].backend_id;
                self.backends[&id]
            })
            .collect()
    }
}

impl std::fmt::Display for MemoryMaps {
    /// Every entry, one a line, in map order: what a golden test compares.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all = self
            .services
            .iter()
            .map(|(k, v)| (k, v, ""))
            .chain(self.internal.iter().map(|(k, v)| (k, v, " in-cluster")));
        for ((frontend, slot), value, scope) in all {
            if *slot == 0 {
                write!(
                    f,
                    "service {frontend}{scope} count={} rev_nat={} flags={}",
                    value.count,
                    value.rev_nat_id,
                    flag_names(value.flags)
                )?;
                if value.flags & lb_ebpf::SVC_F_AFFINITY != 0 {
                    write!(f, " affinity={}s", value.backend_id)?;
                }
                writeln!(f)?;
            } else {
                writeln!(
                    f,
                    "service {frontend}{scope} slot={slot} backend={}",
                    value.backend_id
                )?;
            }
        }
        for (id, backend) in &self.backends {
            let local = if backend.local { " local" } else { "" };
            writeln!(
                f,
                "backend {id} {}/{}{local}",
                backend.addr, backend.protocol
            )?;
        }
        for (rev_nat_id, range) in &self.source_ranges {
            writeln!(f, "source-range rev_nat={rev_nat_id} {range}")?;
        }
        for (family, addr) in &self.node_addrs {
            match addr {
                Some(addr) => writeln!(f, "node-addr {family} {addr}")?,
                None => writeln!(f, "node-addr {family} none")?,
            }
        }
        for ((family, slot), addr) in &self.snat_slots {
            writeln!(f, "snat-slot {family} {slot} {addr}")?;
        }
        for (ifindex, d) in &self.snat_devices {
            writeln!(f, "snat-device {ifindex} v4={} v6={}", d.slot_v4, d.slot_v6)?;
        }
        for ifindex in &self.xdp_devices {
            writeln!(f, "xdp-device {ifindex}")?;
        }
        for (rev_nat_id, backend_id) in &self.affinity_matches {
            writeln!(
                f,
                "affinity-match rev_nat={rev_nat_id} backend={backend_id}"
            )?;
        }
        Ok(())
    }
}

/// `lb_ebpf::SVC_F_*` by name, `|`-separated; `-` for none.
fn flag_names(flags: u8) -> String {
    let names: Vec<&str> = [
        (lb_ebpf::SVC_F_EXTERNAL, "external"),
        (lb_ebpf::SVC_F_LOCAL, "local"),
        (lb_ebpf::SVC_F_SOURCE_RANGES, "source-ranges"),
        (lb_ebpf::SVC_F_REJECT, "reject"),
        (lb_ebpf::SVC_F_AFFINITY, "affinity"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name)
    .collect();
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join("|")
    }
}

impl MapOps for MemoryMaps {
    fn put_backend(&mut self, id: BackendId, backend: &BackendKey) -> Result<(), MapError> {
        self.step()?;
        self.backends.insert(id, *backend);
        Ok(())
    }

    fn delete_backend(&mut self, id: BackendId, _family: IpFamily) -> Result<(), MapError> {
        self.step()?;
        self.backends.remove(&id);
        Ok(())
    }

    fn put_slot(&mut self, vip: &Vip, slot: u16, value: &ServiceValue) -> Result<(), MapError> {
        self.step()?;
        self.scope_mut(vip.scope)
            .insert((vip.frontend(), slot), *value);
        Ok(())
    }

    fn delete_slot(&mut self, vip: &Vip, slot: u16) -> Result<(), MapError> {
        self.step()?;
        self.scope_mut(vip.scope).remove(&(vip.frontend(), slot));
        Ok(())
    }

    fn set_snat_addr(
        &mut self,
        family: IpFamily,
        slot: u8,
        addr: Option<IpAddr>,
    ) -> Result<(), MapError> {
        self.step()?;
        match (slot, addr) {
            (0, _) => {
                self.node_addrs.insert(family, addr);
            }
            (_, Some(addr)) => {
                self.snat_slots.insert((family, slot), addr);
            }
            (_, None) => {
                self.snat_slots.remove(&(family, slot));
            }
        }
        Ok(())
    }

    fn list_snat_addrs(&self) -> Result<Vec<(IpFamily, u8, IpAddr)>, MapError> {
        let defaults = self
            .node_addrs
            .iter()
            .filter_map(|(family, addr)| addr.map(|a| (*family, 0, a)));
        Ok(defaults
            .chain(self.snat_slots.iter().map(|((f, s), a)| (*f, *s, *a)))
            .collect())
    }

    fn put_snat_device(&mut self, ifindex: u32, device: &SnatDevice) -> Result<(), MapError> {
        self.step()?;
        self.snat_devices.insert(ifindex, *device);
        Ok(())
    }

    fn delete_snat_device(&mut self, ifindex: u32) -> Result<(), MapError> {
        self.step()?;
        self.snat_devices.remove(&ifindex);
        Ok(())
    }

    fn reset_service_counters(&mut self, rev_nat_id: u16) -> Result<(), MapError> {
        self.step()?;
        self.counters_reset.push(rev_nat_id);
        Ok(())
    }

    fn list_snat_devices(&self) -> Result<Vec<(u32, SnatDevice)>, MapError> {
        Ok(self.snat_devices.iter().map(|(i, d)| (*i, *d)).collect())
    }

    fn put_xdp_device(&mut self, ifindex: u32) -> Result<(), MapError> {
        self.step()?;
        self.xdp_devices.insert(ifindex);
        Ok(())
    }

    fn delete_xdp_device(&mut self, ifindex: u32) -> Result<(), MapError> {
        self.step()?;
        self.xdp_devices.remove(&ifindex);
        Ok(())
    }

    fn put_affinity_match(
        &mut self,
        rev_nat_id: u16,
        backend_id: BackendId,
    ) -> Result<(), MapError> {
        self.step()?;
        self.affinity_matches.insert((rev_nat_id, backend_id));
        Ok(())
    }

    fn delete_affinity_match(
        &mut self,
        rev_nat_id: u16,
        backend_id: BackendId,
    ) -> Result<(), MapError> {
        self.step()?;
        self.affinity_matches.remove(&(rev_nat_id, backend_id));
        Ok(())
    }

    fn list_affinity_matches(&self) -> Result<Vec<(u16, BackendId)>, MapError> {
        Ok(self.affinity_matches.iter().copied().collect())
    }

    fn list_translated_sockets(&self) -> Result<Vec<(u64, std::net::SocketAddr, u16)>, MapError> {
        Ok(self.translated_sockets.clone())
    }

    fn put_source_range(&mut self, rev_nat_id: u16, range: &ipnet::IpNet) -> Result<(), MapError> {
        self.step()?;
        self.source_ranges.insert((rev_nat_id, *range));
        Ok(())
    }

    fn delete_source_range(
        &mut self,
        rev_nat_id: u16,
        range: &ipnet::IpNet,
    ) -> Result<(), MapError> {
        self.step()?;
        self.source_ranges.remove(&(rev_nat_id, *range));
        Ok(())
    }

    fn list_source_ranges(&self) -> Result<Vec<(u16, ipnet::IpNet)>, MapError> {
        Ok(self.source_ranges.iter().copied().collect())
    }

    fn list_slots(&self) -> Result<Vec<(Vip, u16, ServiceValue)>, MapError> {
        let scoped = |map: &BTreeMap<(Frontend, u16), ServiceValue>, scope| {
            map.iter()
                .map(move |((f, s), v)| (Vip::of(f, scope), *s, *v))
                .collect::<Vec<_>>()
        };
        let mut out = scoped(&self.services, Scope::Default);
        out.extend(scoped(&self.internal, Scope::Internal));
        Ok(out)
    }

    fn list_backends(&self) -> Result<Vec<(BackendId, IpFamily, Option<BackendKey>)>, MapError> {
        Ok(self
            .backends
            .iter()
            .map(|(id, b)| (*id, IpFamily::of(&b.addr.ip()), Some(*b)))
            .collect())
    }
}
