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
