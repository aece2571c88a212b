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

/// The metric families [`DatapathCollector`] writes, as a scrape names them (a counter with its
/// `_total`): for checking what dashboards and alert rules refer to without pinned maps to read
/// (`lb-agent/tests/observability.rs`). A test below keeps it equal to what a scrape writes.
pub const METRIC_NAMES: [&str; 5] = [
    "lb_datapath_events_total",
    "lb_bpf_map_capacity",
    "lb_bpf_map_entries",
    "lb_bpf_map_pressure",
    "lb_snat_ports_in_use",
];

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

#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeSet;

    use aya_obj::generated::bpf_map_type::{BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_PERCPU_ARRAY};
    use prometheus_client::registry::Registry;

    use super::*;

    /// A BPF filesystem of the test's own (a mount of its own in a temporary directory, so no
    /// other test or agent sees its pins), unmounted and removed on drop.
    pub(in crate::metrics) struct PinDir(pub PathBuf);

    impl PinDir {
        pub(in crate::metrics) fn new() -> Self {
            lb_tests::require_root();
            let dir = std::env::temp_dir().join(lb_tests::unique_name("lbt-metrics"));
            std::fs::create_dir_all(&dir).expect("creating a temporary directory");
            rustix::mount::mount("bpf", &dir, "bpf", rustix::mount::MountFlags::empty(), None)
                .unwrap_or_else(|e| panic!("mounting a BPF filesystem on {}: {e}", dir.display()));
            Self(dir)
        }

        /// Creates a map and pins it here as `name`.
        pub(in crate::metrics) fn pin(
            &self,
            name: &str,
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
        ) {
            let def = aya_obj::Map::new_from_params(map_type, key_size, value_size, max_entries, 0);
            MapData::create(def, name, None)
                .unwrap_or_else(|e| panic!("creating map {name}: {e}"))
                .pin(self.0.join(name))
                .unwrap_or_else(|e| panic!("pinning map {name}: {e}"));
        }
    }

    impl Drop for PinDir {
        fn drop(&mut self) {
            // Unmounting drops the pins, and with them the maps.
            let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    /// The families of a text exposition (its `# TYPE` lines) and those with a sample.
    pub(in crate::metrics) fn families(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
        let typed = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        let sampled = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_owned)
            .collect();
        (typed, sampled)
    }

    pub(in crate::metrics) fn scrape(collector: impl Collector) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn metric_names_are_the_families_a_scrape_of_pinned_maps_writes() {
        let dir = PinDir::new();
        dir.pin(
            map_names::STATS,
            BPF_MAP_TYPE_PERCPU_ARRAY as u32,
            4,
            8,
            lb_ebpf::stats::COUNT,
        );
        // Counted by the flow GC, not walked: the SNAT ports in use come from its count.
        dir.pin(map_names::SNAT_V4, BPF_MAP_TYPE_HASH as u32, 16, 24, 64);
        let gc = GcEntries {
            live: [(map_names::SNAT_V4, 16)].into(),
        };
        let text = scrape(DatapathCollector::new(
            dir.0.clone(),
            Arc::new(Mutex::new(gc)),
        ));

        let (typed, sampled) = families(&text);
        let names: BTreeSet<String> = METRIC_NAMES.iter().map(|n| (*n).to_owned()).collect();
        assert_eq!(typed, names, "{text}");
        assert_eq!(sampled, names, "every family has a sample: {text}");
        assert!(
            text.contains("lb_bpf_map_pressure{map=\"LB_SNAT_V4\"} 0.25"),
            "{text}"
        );
        assert!(
            text.contains("lb_snat_ports_in_use{ip_family=\"IPv4\"} 16"),
            "{text}"
        );
    }
}
