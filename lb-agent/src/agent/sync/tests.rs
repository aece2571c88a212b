//! The agent's central composition without root: a scripted source, the real plan and writer,
//! the in-memory maps.

use std::time::Duration;

use super::*;
use crate::{
    lbmap::memory::MemoryMaps,
    model::{
        EndpointSlice, IpFamily, Protocol, Service, ServiceType,
        testing::{EpExt as _, ep, frontend, slice_of, svc},
    },
    source::NodeState,
};

/// A source whose state the test sets; counts reads and can fail.
#[derive(Default)]
struct Scripted {
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    /// Changed since the last read.
    changed: bool,
    fail: bool,
    reads: usize,
}

impl Scripted {
    fn set(&mut self, services: Vec<Service>, slices: Vec<EndpointSlice>) {
        self.services = services;
        self.slices = slices;
        self.changed = true;
    }
}

impl SnapshotSource for Scripted {
    fn snapshot(&mut self, only_if_changed: bool) -> Result<Option<Snapshot>, SourceError> {
        self.reads += 1;
        if self.fail {
            return Err(SourceError::Read {
                path: "/scripted".into(),
                source: std::io::Error::other("injected"),
            });
        }
        if only_if_changed && !std::mem::take(&mut self.changed) {
            return Ok(None);
        }
        self.changed = false;
        Ok(Some(Snapshot {
            services: self.services.clone(),
            slices: self.slices.clone(),
            node: Some(NodeState {
                zone: None,
                eligible: true,
                internal_ips: Vec::new(),
            }),
            ..Snapshot::default()
        }))
    }
}

/// `web`: a NodePort service on 10.96.0.1, node port 30080, endpoints 10.0.0.1 (this node) and
/// 10.0.0.2.
fn web() -> (Service, EndpointSlice) {
    let mut web = svc("web", &["10.96.0.1"], &[("", 80, Protocol::Tcp)]);
    web.service_type = ServiceType::NodePort;
    web.ports[0].node_port = Some(30080);
    let slice = slice_of(
        "web-1",
        "web",
        IpFamily::V4,
        &[("", 8080, Protocol::Tcp)],
        vec![ep("10.0.0.1").local(), ep("10.0.0.2")],
    );
    (web, slice)
}

fn node(addresses: &[&str]) -> NodeFacts {
    NodeFacts {
        name: Some("n1".into()),
        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        ..NodeFacts::default()
    }
}

fn syncer(maps: MemoryMaps) -> (Syncer<MemoryMaps>, Health) {
    let health = Health::new(Duration::from_secs(10));
    (Syncer::new(Writer::new(maps, 100), health.clone()), health)
}

fn frontends(syncer: &Syncer<MemoryMaps>) -> Vec<String> {
    let mut out: Vec<String> = syncer
        .writer()
        .maps()
        .services
        .keys()
        .filter(|(_, slot)| *slot == 0)
        .map(|(f, _)| f.to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn first_sync_programs_every_kind_and_removes_what_an_earlier_run_left() {
    // An earlier run's frontend that no service asks for any more.
    let mut earlier = Writer::new(MemoryMaps::default(), 100);
    let stale = crate::model::testing::cluster_ip_state("old", &["10.9.9.9:80"]);
    let report = earlier.apply(&[(frontend("10.99.0.1:80"), stale)].into_iter().collect());
    assert!(report.errors.is_empty());
    let (mut syncer, health) = syncer(earlier.into_maps());
    assert!(!health.snapshot().synced, "nothing programmed yet");

    let mut source = Scripted::default();
    let (svc, slice) = web();
    source.set(vec![svc], vec![slice]);
    let outcome = syncer.sync(&mut source, &node(&["192.0.2.1"]), false);
    assert!(outcome.ok && !outcome.skipped, "{outcome:?}");
    assert_eq!(
        frontends(&syncer),
        ["10.96.0.1:80/TCP", "192.0.2.1:30080/TCP"]
    );
    let maps = syncer.writer().maps();
    assert_eq!(
        maps.node_addrs.get(&IpFamily::V4),
        Some(&Some("192.0.2.1".parse().unwrap())),
        "the SNAT address goes through the writer"
    );
    assert_eq!(maps.node_addrs.get(&IpFamily::V6), Some(&None));
    let locals: Vec<bool> = maps
        .slot_backends(&frontend("192.0.2.1:30080"))
        .iter()
        .map(|b| b.local)
        .collect();
    assert_eq!(locals.iter().filter(|l| **l).count(), 1, "{locals:?}");
    assert!(health.snapshot().synced);
}

#[test]
fn a_periodic_resync_without_changes_rebuilds_and_writes_nothing() {
    let (mut syncer, _health) = syncer(MemoryMaps::default());
    let mut source = Scripted::default();
    let (svc, slice) = web();
    source.set(vec![svc], vec![slice]);
    let facts = node(&["192.0.2.1"]);
    assert!(syncer.sync(&mut source, &facts, false).ok);
    let ops = syncer.writer().maps().ops;
    let outcome = syncer.sync(&mut source, &facts, true);
    assert!(outcome.skipped, "{outcome:?}");
    assert_eq!(syncer.writer().maps().ops, ops);
    // A forced sync of the same state rebuilds, and still writes nothing.
    let outcome = syncer.sync(&mut source, &facts, false);
    assert_eq!(outcome.changed, 0);
    assert_eq!(syncer.writer().maps().ops, ops);
}

#[test]
fn a_failing_source_keeps_the_programmed_state() {
    let (mut syncer, health) = syncer(MemoryMaps::default());
    let mut source = Scripted::default();
    let (svc, slice) = web();
    source.set(vec![svc], vec![slice]);
    let facts = node(&[]);
    assert!(syncer.sync(&mut source, &facts, false).ok);
    let before = syncer.writer().maps().services.clone();
    source.fail = true;
    let outcome = syncer.sync(&mut source, &facts, false);
    assert!(!outcome.ok);
    assert_eq!(syncer.writer().maps().services, before);
    assert!(
        health.snapshot().synced,
        "a source outage is not a sync failure"
    );
    // The next periodic resync reads the whole state again rather than trusting "unchanged".
    source.fail = false;
    let outcome = syncer.sync(&mut source, &facts, true);
    assert!(!outcome.skipped && outcome.ok, "{outcome:?}");
}

#[test]
fn failed_writes_queue_health_and_are_repaired_by_the_next_sync() {
    let (mut syncer, health) = syncer(MemoryMaps::default());
    let mut source = Scripted::default();
    let (svc, slice) = web();
    source.set(vec![svc], vec![slice]);
    let facts = node(&["192.0.2.1"]);
    syncer.writer_mut().maps_mut().fail_after = Some(3);
    let outcome = syncer.sync(&mut source, &facts, false);
    assert!(!outcome.ok);
    assert!(!health.snapshot().synced);
    syncer.writer_mut().maps_mut().fail_after = None;
    // Periodic, but the last sync failed: it rebuilds.
    let outcome = syncer.sync(&mut source, &facts, true);
    assert!(outcome.ok && !outcome.skipped, "{outcome:?}");
    assert_eq!(
        frontends(&syncer),
        ["10.96.0.1:80/TCP", "192.0.2.1:30080/TCP"]
    );
    assert!(health.snapshot().synced);
}

#[test]
fn node_addresses_that_change_move_the_node_ports() {
    let (mut syncer, _health) = syncer(MemoryMaps::default());
    let mut source = Scripted::default();
    let (svc, slice) = web();
    source.set(vec![svc], vec![slice]);
    assert!(syncer.sync(&mut source, &node(&["192.0.2.1"]), false).ok);
    assert!(
        syncer
            .sync(&mut source, &node(&["192.0.2.7", "2001:db8::7"]), false)
            .ok
    );
    assert_eq!(
        frontends(&syncer),
        ["10.96.0.1:80/TCP", "192.0.2.7:30080/TCP"]
    );
    assert_eq!(
        syncer.writer().maps().node_addrs.get(&IpFamily::V6),
        Some(&Some("2001:db8::7".parse().unwrap()))
    );
}

#[test]
fn health_check_node_ports_follow_the_plan() {
    let (mut syncer, _health) = syncer(MemoryMaps::default());
    let mut source = Scripted::default();
    let (mut svc, slice) = web();
    svc.external_traffic_policy = crate::model::TrafficPolicy::Local;
    svc.health_check_node_port = Some(32000);
    source.set(vec![svc], vec![slice]);
    assert!(syncer.sync(&mut source, &node(&[]), false).ok);
    assert_eq!(syncer.health_checks()[&32000].local_ready, 1);
    source.set(vec![], vec![]);
    assert!(syncer.sync(&mut source, &node(&[]), false).ok);
    assert!(syncer.health_checks().is_empty());
    assert!(frontends(&syncer).is_empty());
}
