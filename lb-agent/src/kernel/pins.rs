//! What the agent leaves pinned, read or removed without a running agent: `lb-agent stats` and
//! `lb-agent cleanup`.

use std::{borrow::Borrow, path::Path};

use aya::maps::{MapData, PerCpuArray};
use lb_ebpf::map_names;

use super::KernelError;

/// A counter of `lb_ebpf::stats`, summed over CPUs; 0 when it cannot be read.
pub fn counter<T: Borrow<MapData>>(stats: &PerCpuArray<T, u64>, index: u32) -> u64 {
    stats
        .get(&index, 0)
        .map(|values| values.iter().sum())
        .unwrap_or(0)
}

/// The datapath's counters (`lb_ebpf::stats`), summed over CPUs, read from the maps an agent
/// pinned under `pin_dir`; it need not be running.
pub fn read_stats(pin_dir: &Path) -> Result<Vec<(&'static str, u64)>, KernelError> {
    let name = map_names::STATS;
    let data = MapData::from_pin(pin_dir.join(name))
        .map_err(|source| KernelError::Map { name, source })?;
    let stats: PerCpuArray<MapData, u64> = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
        .map_err(|source| KernelError::Map { name, source })?;
    Ok(lb_ebpf::stats::NAMES
        .iter()
        .map(|&(index, label)| (label, counter(&stats, index)))
        .collect())
}

/// Removes everything the agent left under `pin_dir`: pinned links (which detaches the
/// programs) and pinned maps. `lb-agent cleanup` runs this when uninstalling.
pub fn cleanup(pin_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(pin_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Reads the per-frontend traffic counters (`lb_ebpf::service_stats`) from the maps an agent
/// pinned, summed over CPUs.
pub struct ServiceCounterReader {
    map: PerCpuArray<MapData, lb_ebpf::ServiceCounters>,
}

impl ServiceCounterReader {
    /// Opens `LB_SERVICE_STATS` under `pin_dir`; the agent need not be running.
    pub fn open(pin_dir: &Path) -> Result<Self, KernelError> {
        let name = map_names::SERVICE_STATS;
        let data = MapData::from_pin(pin_dir.join(name))
            .map_err(|source| KernelError::Map { name, source })?;
        let map = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
            .map_err(|source| KernelError::Map { name, source })?;
        Ok(Self { map })
    }

    /// The counters of the frontend `rev_nat_id`, summed over CPUs (indices of
    /// `lb_ebpf::service_stats`).
    pub fn read(
        &self,
        rev_nat_id: u16,
    ) -> Result<[u64; lb_ebpf::service_stats::COUNT], KernelError> {
        let values =
            self.map
                .get(&u32::from(rev_nat_id), 0)
                .map_err(|source| KernelError::Map {
                    name: map_names::SERVICE_STATS,
                    source,
                })?;
        let mut sum = [0_u64; lb_ebpf::service_stats::COUNT];
        for cpu in values.iter() {
            for (total, n) in sum.iter_mut().zip(cpu.counts) {
                *total = total.wrapping_add(n);
            }
        }
        Ok(sum)
    }
}
