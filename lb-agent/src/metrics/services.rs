//! Per-service traffic, from the kernel's per-frontend counters (`LB_SERVICE_STATS`, by
//! reverse-NAT ID) named by `LB_NAMES`, read at scrape time: `lb_service_<counter>_total` with
//! the labels `namespace`, `service`, `port` and `ip_family`, summed over the service port's
//! frontends of the family (cluster IP, node ports, external and load balancer IPs).
//!
//! A frontend that goes takes its counts with it, so a sum may go down: Prometheus reads that
//! as a counter reset, as it does for a restarted process. What `--service-counters` leaves
//! out stays 0.

use std::{collections::BTreeMap, path::PathBuf};

use lb_ebpf::service_stats;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter},
};

use super::family_name;
use crate::{
    inspect::names::{BpfNames, Name, NameStore as _, decode},
    kernel::ServiceCounterReader,
    model::IpFamily,
};

/// The labels of a service port's traffic.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ServiceLabels {
    pub namespace: String,
    pub service: String,
    pub port: String,
    pub ip_family: String,
}

/// Sums the counters of every named frontend per service port and family: `names` are the
/// name entries (reverse-NAT ID -> name), `read` the counters of one ID.
pub fn per_service<E>(
    names: impl IntoIterator<Item = (u32, Name)>,
    mut read: impl FnMut(u16) -> Result<[u64; service_stats::COUNT], E>,
) -> BTreeMap<ServiceLabels, [u64; service_stats::COUNT]> {
    let mut out: BTreeMap<ServiceLabels, [u64; service_stats::COUNT]> = BTreeMap::new();
    for (key, name) in names {
        let (
            Ok(rev_nat_id),
            Name::Frontend {
                service,
                port,
                family,
                ..
            },
        ) = (u16::try_from(key), name)
        else {
            continue;
        };
        let Ok(counts) = read(rev_nat_id) else {
            continue;
        };
        let labels = ServiceLabels {
            namespace: service.namespace,
            service: service.name,
            port,
            ip_family: family.map_or("", |f: IpFamily| family_name(f)).to_owned(),
        };
        let sum = out.entry(labels).or_default();
        for (total, n) in sum.iter_mut().zip(counts) {
            *total = total.wrapping_add(n);
        }
    }
    out
}

/// The metric families [`ServiceCollector`] writes, as a scrape names them, in the order of
/// [`service_stats::NAMES`]: for checking what dashboards and alert rules refer to without
/// pinned maps to read (`lb-agent/tests/observability.rs`). A test below keeps it equal to
/// what a scrape writes.
pub const METRIC_NAMES: [&str; service_stats::COUNT] = [
    "lb_service_new_flows_total",
    "lb_service_packets_total",
    "lb_service_bytes_total",
    "lb_service_refused_total",
    "lb_service_dropped_total",
];

/// Reads the per-service traffic at each scrape.
#[derive(Debug)]
pub struct ServiceCollector {
    pub pin_dir: PathBuf,
}

impl Collector for ServiceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // The agent's own pins: unreadable only in a broken set-up, which the sync reports.
        let (Ok(names), Ok(reader)) = (
            BpfNames::from_pin(&self.pin_dir),
            ServiceCounterReader::open(&self.pin_dir),
        ) else {
            return Ok(());
        };
        let Ok(entries) = names.list() else {
            return Ok(());
        };
        let named = entries
            .into_iter()
            .filter_map(|(key, entry)| decode(&entry).map(|name| (key, name)));
        let sums = per_service(named, |id| reader.read(id));
        for (index, stem) in service_stats::NAMES {
            let help = match index {
                service_stats::NEW_FLOWS => {
                    "New flows (connections, UDP flows, translated socket calls) of a service port"
                }
                service_stats::PACKETS => {
                    "Packets of a service port translated by the TC and XDP programs, both ways \
                     (--service-counters packets)"
                }
                service_stats::BYTES => {
                    "Bytes of those packets, L2 frame length (--service-counters packets)"
                }
                service_stats::REFUSED => {
                    "Refusals of a service port without any endpoint (reset, port unreachable, \
                     failed call)"
                }
                _ => {
                    "Packets and calls of a service port dropped by rule (source ranges, no \
                     endpoint in scope, no SNAT port)"
                }
            };
            let name = format!("lb_service_{stem}");
            let mut family = encoder.encode_descriptor(&name, help, None, MetricType::Counter)?;
            for (labels, counts) in &sums {
                ConstCounter::new(counts[index]).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FrontendKind, NamespacedName};

    fn frontend(kind: FrontendKind, name: &str, port: &str, family: IpFamily) -> Name {
        Name::Frontend {
            kind,
            service: NamespacedName {
                namespace: "default".into(),
                name: name.into(),
            },
            port: port.into(),
            family: Some(family),
        }
    }

    #[test]
    fn metric_names_are_the_families_a_scrape_of_pinned_maps_writes() {
        use aya_obj::generated::bpf_map_type::{BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_PERCPU_ARRAY};
        use lb_ebpf::map_names;

        use crate::{inspect::names::encode, metrics::datapath::tests as support};

        let dir = support::PinDir::new();
        let value_size = |size: usize| u32::try_from(size).unwrap();
        dir.pin(
            map_names::NAMES,
            BPF_MAP_TYPE_HASH as u32,
            4,
            value_size(size_of::<lb_ebpf::FrontendName>()),
            8,
        );
        dir.pin(
            map_names::SERVICE_STATS,
            BPF_MAP_TYPE_PERCPU_ARRAY as u32,
            4,
            value_size(size_of::<lb_ebpf::ServiceCounters>()),
            8,
        );
        let web = frontend(FrontendKind::ClusterIp, "web", "http", IpFamily::V4);
        BpfNames::from_pin(&dir.0)
            .unwrap()
            .put(1, &encode(&web).unwrap())
            .unwrap();
        let text = support::scrape(ServiceCollector {
            pin_dir: dir.0.clone(),
        });

        let (typed, sampled) = support::families(&text);
        let names: std::collections::BTreeSet<String> =
            METRIC_NAMES.iter().map(|n| (*n).to_owned()).collect();
        assert_eq!(typed, names, "{text}");
        assert_eq!(sampled, names, "every family has a sample: {text}");
        assert!(
            text.contains(
                "lb_service_new_flows_total{namespace=\"default\",service=\"web\",port=\"http\",ip_family=\"IPv4\"} 0"
            ),
            "{text}"
        );
    }

    #[test]
    fn frontends_of_a_service_port_and_family_add_up_health_checks_do_not_count() {
        let names = vec![
            (
                1,
                frontend(FrontendKind::ClusterIp, "web", "http", IpFamily::V4),
            ),
            (
                2,
                frontend(FrontendKind::NodePort, "web", "http", IpFamily::V4),
            ),
            (
                3,
                frontend(FrontendKind::ClusterIp, "web", "http", IpFamily::V6),
            ),
            (
                4,
                frontend(FrontendKind::ClusterIp, "dns", "", IpFamily::V4),
            ),
            (
                0x1_0000 + 30_000,
                Name::HealthCheck {
                    service: NamespacedName {
                        namespace: "default".into(),
                        name: "web".into(),
                    },
                    local_ready: 1,
                },
            ),
        ];
        let sums = per_service(names, |id| {
            Ok::<_, ()>([u64::from(id), 10 * u64::from(id), 0, 0, u64::from(id == 4)])
        });
        let get = |name: &str, port: &str, family: &str| {
            sums[&ServiceLabels {
                namespace: "default".into(),
                service: name.into(),
                port: port.into(),
                ip_family: family.into(),
            }]
        };
        assert_eq!(sums.len(), 3, "{sums:?}");
        assert_eq!(get("web", "http", "IPv4"), [3, 30, 0, 0, 0]);
        assert_eq!(get("web", "http", "IPv6"), [3, 30, 0, 0, 0]);
        assert_eq!(get("dns", "", "IPv4"), [4, 40, 0, 0, 1]);
    }
}
