//! The node's SNAT addresses in the maps. Each family has [`SNAT_ADDR_SLOTS`] slots
//! (`LB_NODE_ADDR_*`): slot 0 holds the default (the Node's InternalIP, else the devices'
//! choice), slots 1 and up the addresses of other external devices, and the device map
//! (`LB_SNAT_DEVICES`) names the slots of flows the FIB sends out of each such device.
//!
//! A flow keeps the slot it started with (`FlowValue::snat_slot`), so a slot never changes
//! address while its address is wanted: an address keeps its slot across syncs and restarts
//! ([`Writer::adopt`] reads the slots back), and a slot whose address went is cleared after the
//! device entries stopped naming it, and not handed out again in the same sync.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_ebpf::{SNAT_ADDR_SLOTS, SnatDevice};

use super::{MapError, MapOps, Writer};
use crate::model::{IpFamily, SnatAddrs};

/// What one [`Writer::set_snat`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SnatReport {
    /// The families whose default SNAT address changed.
    pub defaults: Vec<IpFamily>,
    /// Devices whose SNAT slots were written or removed.
    pub devices: Vec<u32>,
    /// Device addresses newly without a free slot (each reported once): flows out of their
    /// devices leave from the default of the family.
    pub no_slot: Vec<IpAddr>,
}

/// The SNAT slots and device entries as programmed.
#[derive(Debug, Default)]
pub(super) struct SnatState {
    /// The default per family last written; a family never written is absent (the maps may
    /// hold an earlier run's).
    pub defaults: BTreeMap<IpFamily, Option<IpAddr>>,
    /// (family, slot 1 and up) -> address.
    pub slots: BTreeMap<(IpFamily, u8), IpAddr>,
    pub devices: BTreeMap<u32, SnatDevice>,
    /// Wanted addresses that found no slot, reported already.
    pub unplaced: BTreeSet<IpAddr>,
}

impl<M: MapOps> Writer<M> {
    /// Writes the node's SNAT addresses where they differ from what was written: each family's
    /// default, the slots of the devices' own addresses, and the device entries naming them.
    pub fn set_snat(&mut self, wanted: &SnatAddrs) -> Result<SnatReport, MapError> {
        let mut report = SnatReport::default();
        for family in [IpFamily::V4, IpFamily::V6] {
            let want = wanted.get(family);
            if self.snat.defaults.get(&family) == Some(&want) {
                continue;
            }
            self.maps.set_snat_addr(family, 0, want)?;
            self.snat.defaults.insert(family, want);
            report.defaults.push(family);
        }
        let mut slot_of: BTreeMap<IpAddr, u8> = BTreeMap::new();
        let mut freed = Vec::new();
        let mut unplaced = BTreeSet::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            let addrs: BTreeSet<IpAddr> = wanted
                .devices
                .values()
                .filter_map(|d| d.get(family))
                .collect();
            for (&(f, slot), addr) in &self.snat.slots {
                if f != family {
                    continue;
                }
                if addrs.contains(addr) {
                    slot_of.insert(*addr, slot);
                } else {
                    freed.push((f, slot));
                }
            }
            for addr in addrs {
                if slot_of.contains_key(&addr) {
                    continue;
                }
                // Slots freed in this sync stay out of use until the next one.
                let free = (1..SNAT_ADDR_SLOTS as u8)
                    .find(|slot| !self.snat.slots.contains_key(&(family, *slot)));
                let Some(slot) = free else {
                    if !self.snat.unplaced.contains(&addr) {
                        report.no_slot.push(addr);
                    }
                    unplaced.insert(addr);
                    continue;
                };
                self.maps.set_snat_addr(family, slot, Some(addr))?;
                self.snat.slots.insert((family, slot), addr);
                slot_of.insert(addr, slot);
            }
        }
        self.snat.unplaced = unplaced;
        let slot = |addr: Option<IpAddr>| addr.and_then(|a| slot_of.get(&a).copied()).unwrap_or(0);
        let desired: BTreeMap<u32, SnatDevice> = wanted
            .devices
            .iter()
            .map(|(ifindex, d)| {
                let entry = SnatDevice {
                    slot_v4: slot(d.get(IpFamily::V4)),
                    slot_v6: slot(d.get(IpFamily::V6)),
                    _pad: [0; 2],
                };
                (*ifindex, entry)
            })
            .filter(|(_, entry)| *entry != SnatDevice::default())
            .collect();
        for (ifindex, entry) in &desired {
            if self.snat.devices.get(ifindex) != Some(entry) {
                self.maps.put_snat_device(*ifindex, entry)?;
                self.snat.devices.insert(*ifindex, *entry);
                report.devices.push(*ifindex);
            }
        }
        let gone: Vec<u32> = self
            .snat
            .devices
            .keys()
            .filter(|i| !desired.contains_key(i))
            .copied()
            .collect();
        for ifindex in gone {
            self.maps.delete_snat_device(ifindex)?;
            self.snat.devices.remove(&ifindex);
            report.devices.push(ifindex);
        }
        for (family, slot) in freed {
            self.maps.set_snat_addr(family, slot, None)?;
            self.snat.slots.remove(&(family, slot));
        }
        Ok(report)
    }

    /// The SNAT slot holding `addr`, if one does (0: the default of its family).
    pub fn snat_slot(&self, addr: IpAddr) -> Option<u8> {
        let family = IpFamily::of(&addr);
        if self.snat.defaults.get(&family) == Some(&Some(addr)) {
            return Some(0);
        }
        self.snat
            .slots
            .iter()
            .find(|((f, _), a)| *f == family && **a == addr)
            .map(|((_, slot), _)| *slot)
    }

    /// Takes over the slots and device entries an earlier run programmed, so that its flows
    /// keep their addresses.
    pub(super) fn adopt_snat(&mut self) -> Result<(), MapError> {
        self.snat.slots = self
            .maps
            .list_snat_addrs()?
            .into_iter()
            .filter(|(_, slot, _)| *slot != 0)
            .map(|(family, slot, addr)| ((family, slot), addr))
            .collect();
        self.snat.devices = self.maps.list_snat_devices()?.into_iter().collect();
        Ok(())
    }
}
