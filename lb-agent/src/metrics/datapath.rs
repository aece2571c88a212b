//! The datapath's metrics, read from the maps pinned under `--bpffs` at scrape time: the
//! kernel's counters (`LB_STATS`, summed over CPUs), and every pinned map's capacity and, for
//! the hash-like maps, its entries and pressure (entries / capacity, as Cilium's
//! `bpf_map_pressure`).
//!
//! Entries are counted by a key walk (one `BPF_MAP_GET_NEXT_KEY` per entry), except in the flow
//! and SNAT maps, which can hold a million entries: their counts are the ones the flow GC left
//! after its last run ([`super::Metrics::gc_ran`]), as it walks them anyway. So a scrape costs
//! about one system call per service, backend, source range and affinity entry, and none per
//! flow.

use std::{
    os::fd::AsFd as _,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, MapType};
use lb_ebpf::map_names;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use super::{FamilyLabels, GcEntries, MapLabels};
use crate::model::IpFamily;

/// The event label of `lb_datapath_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct EventLabels {
    event: String,
}

/// Reads the pinned maps at each scrape.
#[derive(Debug)]
pub struct DatapathCollector {
    pin_dir: PathBuf,
    gc: Arc<Mutex<GcEntries>>,
}

/// One pinned map as a scrape sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSize {
    pub name: String,
    pub capacity: u32,
    /// `None` for arrays (always full) and for the flow and SNAT maps before the first GC run.
    pub entries: Option<u64>,
}

/// The maps whose entries the flow GC counts.
const GC_COUNTED: [&str; 6] = [
    map_names::FLOWS_V4,
    map_names::FLOWS_NEW_V4,
    map_names::SNAT_V4,
    map_names::FLOWS_V6,
    map_names::FLOWS_NEW_V6,
    map_names::SNAT_V6,
];

fn hash_like(t: MapType) -> bool {
    matches!(
        t,
        MapType::Hash
            | MapType::LruHash
            | MapType::PerCpuHash
            | MapType::LruPerCpuHash
            | MapType::LpmTrie
            | MapType::DevMapHash
    )
}

impl DatapathCollector {
    pub fn new(pin_dir: PathBuf, gc: Arc<Mutex<GcEntries>>) -> Self {
        Self { pin_dir, gc }
    }

    /// Every map pinned directly under the pin directory (the links' folder and the layout
    /// file are not maps), sorted by name.
    pub fn map_sizes(&self) -> Vec<MapSize> {
        let gc = self
            .gc
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .live
            .clone();
        let Ok(dir) = std::fs::read_dir(&self.pin_dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in dir.flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            let Ok(map) = MapData::from_pin(&path) else {
                continue;
            };
            let Ok(info) = map.info() else { continue };
            let capacity = info.max_entries();
            let entries = if let Some(gc_name) = GC_COUNTED.iter().find(|n| **n == name) {
                gc.get(gc_name).copied()
            } else if info.map_type().is_ok_and(hash_like) {
                Some(crate::kernel::compat::count_entries(
                    map.fd().as_fd(),
                    info.key_size() as usize,
                    u64::from(capacity),
                ))
            } else {
                None
            };
            out.push(MapSize {
                name,
                capacity,
                entries,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // The agent's own pins: unreadable only in a broken set-up, which the sync loop reports.
        if let Ok(stats) = crate::kernel::read_stats(&self.pin_dir) {
            let mut family = encoder.encode_descriptor(
                "lb_datapath_events",
                "Datapath counters of the kernel programs, summed over CPUs (lb-agent stats)",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (name, value) in stats {
                let labels = EventLabels {
                    event: name.to_owned(),
                };
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        let sizes = self.map_sizes();
        let mut capacity = encoder.encode_descriptor(
            "lb_bpf_map_capacity",
            "Entries a pinned BPF map can hold (max_entries)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for m in &sizes {
            let labels = MapLabels {
                map: m.name.clone(),
            };
            ConstGauge::new(i64::from(m.capacity)).encode(capacity.encode_family(&labels)?)?;
        }
        let mut entries = encoder.encode_descriptor(
            "lb_bpf_map_entries",
            "Entries in a pinned hash-like BPF map (flow and SNAT maps: after the last flow GC)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for m in &sizes {
            if let Some(n) = m.entries {
                let labels = MapLabels {
                    map: m.name.clone(),
                };
                ConstGauge::new(n as i64).encode(entries.encode_family(&labels)?)?;
            }
        }
        let mut pressure = encoder.encode_descriptor(
            "lb_bpf_map_pressure",
            "Fill ratio of a pinned hash-like BPF map, entries / capacity (Cilium's bpf_map_pressure)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for m in &sizes {
            if let (Some(n), true) = (m.entries, m.capacity > 0) {
                let labels = MapLabels {
                    map: m.name.clone(),
                };
                ConstGauge::new(n as f64 / f64::from(m.capacity))
                    .encode(pressure.encode_family(&labels)?)?;
            }
        }
        let mut ports = encoder.encode_descriptor(
            "lb_snat_ports_in_use",
            "SNAT source ports held by live flows (SNAT map entries after the last flow GC)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (family, map) in [
            (IpFamily::V4, map_names::SNAT_V4),
            (IpFamily::V6, map_names::SNAT_V6),
        ] {
            if let Some(Some(n)) = sizes.iter().find(|m| m.name == map).map(|m| m.entries) {
                ConstGauge::new(n as i64)
                    .encode(ports.encode_family(&FamilyLabels::of(family))?)?;
            }
        }
        Ok(())
    }
}
