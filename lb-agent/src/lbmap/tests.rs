use std::collections::BTreeMap;

use super::{memory::MemoryMaps, stable_slots, *};
use crate::model::{
    Backend, FrontendKind, FrontendState,
    testing::{cluster_ip_state, frontend as fe},
};

fn desired(entries: &[(&str, &[&str])]) -> BTreeMap<Frontend, FrontendState> {
    entries
        .iter()
        .map(|(f, backends)| (fe(f), cluster_ip_state(f, backends)))
        .collect()
}

fn addrs(maps: &MemoryMaps, f: &str) -> Vec<String> {
    let mut v: Vec<String> = maps
        .slot_backends(&fe(f))
        .iter()
        .map(|b| b.addr.to_string())
        .collect();
    v.sort();
    v
}

fn writer() -> Writer<MemoryMaps> {
    Writer::new(MemoryMaps::default(), 1000)
}

#[test]
fn programs_frontends_slots_and_backends_for_both_families() {
    let mut w = writer();
    let r = w.apply(&desired(&[
        ("10.96.0.1:80", &["10.0.0.1:8080", "10.0.0.2:8080"]),
        ("[fd00::1]:80", &["[fd01::1]:8080"]),
    ]));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.frontends_changed, 2);
    assert_eq!(
        addrs(w.maps(), "10.96.0.1:80"),
        ["10.0.0.1:8080", "10.0.0.2:8080"]
    );
    assert_eq!(addrs(w.maps(), "[fd00::1]:80"), ["[fd01::1]:8080"]);
    // 2 frontends + 3 slots, 3 backends.
    assert_eq!(w.maps().services.len(), 5);
    assert_eq!(w.maps().backends.len(), 3);
    let front = w.maps().services[&(fe("10.96.0.1:80"), 0)];
    assert_eq!(front.count, 2);
    assert_ne!(front.rev_nat_id, 0);
}

#[test]
fn applying_the_same_state_again_writes_nothing() {
    let mut w = writer();
    let d = desired(&[("10.96.0.1:80", &["10.0.0.1:8080"])]);
    w.apply(&d);
    let ops = w.maps().ops;
    let r = w.apply(&d);
    assert_eq!(r.frontends_changed, 0);
    assert_eq!(w.maps().ops, ops);
}

#[test]
fn changing_one_service_touches_only_its_entries() {
    let mut w = writer();
    w.apply(&desired(&[
        ("10.96.0.1:80", &["10.0.0.1:80", "10.0.0.2:80"]),
        ("10.96.0.2:80", &["10.0.0.3:80"]),
    ]));
    let before = w.maps().services.clone();
    let ops = w.maps().ops;
    w.apply(&desired(&[
        ("10.96.0.1:80", &["10.0.0.1:80", "10.0.0.2:80"]),
        ("10.96.0.2:80", &["10.0.0.3:80", "10.0.0.4:80"]),
    ]));
    // One backend, one slot, one frontend count.
    assert_eq!(w.maps().ops - ops, 3);
    for (key, value) in &before {
        if key.0 == fe("10.96.0.1:80") {
            assert_eq!(w.maps().services[key], *value);
        }
    }
}

#[test]
fn removing_a_backend_keeps_the_other_slots_in_place() {
    let mut w = writer();
    w.apply(&desired(&[(
        "10.96.0.1:80",
        &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
    )]));
    let slot3 = w.maps().services[&(fe("10.96.0.1:80"), 3)];
    let slot1 = w.maps().services[&(fe("10.96.0.1:80"), 1)];
    w.apply(&desired(&[(
        "10.96.0.1:80",
        &["10.0.0.1:80", "10.0.0.3:80"],
    )]));
    assert_eq!(
        addrs(w.maps(), "10.96.0.1:80"),
        ["10.0.0.1:80", "10.0.0.3:80"]
    );
    // Slot 2 (the removed backend) now holds what was in slot 3; slot 1 is untouched.
    assert_eq!(w.maps().services[&(fe("10.96.0.1:80"), 1)], slot1);
    assert_eq!(w.maps().services[&(fe("10.96.0.1:80"), 2)], slot3);
    assert!(!w.maps().services.contains_key(&(fe("10.96.0.1:80"), 3)));
    assert_eq!(w.maps().backends.len(), 2);
}

#[test]
fn shared_backends_keep_one_id_until_the_last_frontend_goes() {
    let mut w = writer();
    w.apply(&desired(&[
        ("10.96.0.1:80", &["10.0.0.1:80"]),
        ("10.96.0.2:80", &["10.0.0.1:80"]),
    ]));
    assert_eq!(w.maps().backends.len(), 1);
    let id1 = w.maps().services[&(fe("10.96.0.1:80"), 1)].backend_id;
    let id2 = w.maps().services[&(fe("10.96.0.2:80"), 1)].backend_id;
    assert_eq!(id1, id2);
    w.apply(&desired(&[("10.96.0.2:80", &["10.0.0.1:80"])]));
    assert_eq!(w.maps().backends.len(), 1);
    w.apply(&desired(&[]));
    assert!(w.maps().backends.is_empty());
    assert!(w.maps().services.is_empty());
}

#[test]
fn frontend_without_backends_has_count_zero() {
    let mut w = writer();
    w.apply(&desired(&[("10.96.0.1:80", &["10.0.0.1:80"])]));
    w.apply(&desired(&[("10.96.0.1:80", &[])]));
    assert_eq!(w.maps().services[&(fe("10.96.0.1:80"), 0)].count, 0);
    assert_eq!(w.maps().services.len(), 1);
    assert!(w.maps().backends.is_empty());
}

#[test]
fn a_failed_write_is_reported_and_repaired_by_the_next_apply() {
    let mut w = writer();
    let d = desired(&[
        ("10.96.0.1:80", &["10.0.0.1:80", "10.0.0.2:80"]),
        ("10.96.0.2:80", &["10.0.0.3:80"]),
    ]);
    w.maps_mut().fail_after = Some(2);
    let r = w.apply(&d);
    assert!(!r.errors.is_empty());
    assert!(r.errors[0].contains("10.96.0.1:80/TCP"), "{:?}", r.errors);
    w.maps_mut().fail_after = None;
    let r = w.apply(&d);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(
        addrs(w.maps(), "10.96.0.1:80"),
        ["10.0.0.1:80", "10.0.0.2:80"]
    );
    assert_eq!(addrs(w.maps(), "10.96.0.2:80"), ["10.0.0.3:80"]);
    assert_eq!(w.maps().backends.len(), 3);
}

#[test]
fn stable_slots_fill_holes_with_additions_then_with_the_tail() {
    assert_eq!(stable_slots(&[1, 2, 3], &[1, 3, 4]), [1, 4, 3]);
    assert_eq!(stable_slots(&[1, 2, 3, 4], &[1, 4]), [1, 4]);
    assert_eq!(stable_slots(&[1, 2, 3, 4], &[3]), [3]);
    assert_eq!(stable_slots(&[], &[5, 6]), [5, 6]);
    assert_eq!(stable_slots(&[5, 6], &[]), Vec::<u32>::new());
}

#[test]
fn sweep_removes_entries_left_by_an_earlier_run() {
    let mut earlier = writer();
    earlier.apply(&desired(&[
        ("10.96.0.1:80", &["10.0.0.1:80"]),
        ("10.96.0.2:80", &["10.0.0.2:80", "10.0.0.3:80"]),
    ]));
    let maps = std::mem::take(earlier.maps_mut());
    // The restarted agent only knows the first service now.
    let mut w = Writer::new(maps, 1000);
    w.apply(&desired(&[("10.96.0.1:80", &["10.0.0.1:80"])]));
    let removed = w.sweep().unwrap();
    assert!(removed >= 3, "removed {removed}");
    assert_eq!(addrs(w.maps(), "10.96.0.1:80"), ["10.0.0.1:80"]);
    assert!(
        w.maps()
            .services
            .keys()
            .all(|(f, _)| *f == fe("10.96.0.1:80"))
    );
    assert_eq!(w.maps().backends.len(), 1);
}

#[test]
fn a_restarted_writer_adopts_the_maps_and_rewrites_nothing_that_is_still_right() {
    let d = desired(&[
        (
            "10.96.0.1:80",
            &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
        ),
        ("[fd00::1]:80", &["[fd01::1]:80"]),
        ("10.96.0.2:80", &["10.0.0.2:80"]),
    ]);
    let mut earlier = writer();
    earlier.apply(&desired(&[("10.96.0.9:80", &["10.0.0.9:80"])]));
    earlier.apply(&d);
    let before = earlier.maps().services.clone();
    let backends_before = earlier.maps().backends.clone();
    let mut maps = std::mem::take(earlier.maps_mut());
    maps.ops = 0;
    let mut w = Writer::new(maps, 1000);
    assert_eq!(w.adopt().unwrap(), 3);
    let r = w.apply(&d);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.frontends_changed, 0);
    assert_eq!(
        w.maps().ops,
        0,
        "a restart must not rewrite correct entries"
    );
    assert_eq!(w.sweep().unwrap(), 0);
    assert_eq!(w.maps().services, before);
    assert_eq!(w.maps().backends, backends_before);
    // New backends get IDs no adopted slot uses.
    w.apply(&desired(&[
        (
            "10.96.0.1:80",
            &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"],
        ),
        ("[fd00::1]:80", &["[fd01::1]:80"]),
        ("10.96.0.2:80", &["10.0.0.2:80"]),
    ]));
    let ids: std::collections::HashSet<u32> = w.maps().backends.keys().copied().collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(addrs(w.maps(), "10.96.0.2:80"), ["10.0.0.2:80"]);
    assert_eq!(
        addrs(w.maps(), "10.96.0.1:80"),
        ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]
    );
}

#[test]
fn inconsistent_frontends_are_not_adopted_and_get_repaired() {
    let d = desired(&[("10.96.0.1:80", &["10.0.0.1:80", "10.0.0.2:80"])]);
    let mut earlier = writer();
    earlier.apply(&d);
    let mut maps = std::mem::take(earlier.maps_mut());
    // A slot went missing (an earlier run stopped half way).
    maps.services.remove(&(fe("10.96.0.1:80"), 2));
    let mut w = Writer::new(maps, 1000);
    assert_eq!(w.adopt().unwrap(), 0);
    let r = w.apply(&d);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    w.sweep().unwrap();
    assert_eq!(
        addrs(w.maps(), "10.96.0.1:80"),
        ["10.0.0.1:80", "10.0.0.2:80"]
    );
    assert_eq!(w.maps().backends.len(), 2);
}

#[test]
fn a_frontend_without_any_endpoint_carries_the_reject_flag_until_one_comes() {
    let f = fe("10.96.0.1:80");
    let empty = FrontendState {
        reject: true,
        ..cluster_ip_state("web", &[])
    };
    let mut w = writer();
    w.apply(&BTreeMap::from([(f, empty)]));
    let head = w.maps().services[&(f, 0)];
    assert_eq!((head.count, head.flags), (0, lb_ebpf::SVC_F_REJECT));
    w.apply(&desired(&[("10.96.0.1:80", &["10.1.0.1:80"])]));
    let head = w.maps().services[&(f, 0)];
    assert_eq!(
        (head.count, head.flags),
        (1, 0),
        "served, no longer refused"
    );
}

#[test]
fn external_frontends_carry_flags_source_ranges_and_local_backends() {
    let f = fe("10.0.0.5:30080");
    let state = |local_only: bool, ranges: &[&str]| FrontendState {
        kind: FrontendKind::LoadBalancer,
        backends: vec![
            Backend {
                addr: "10.1.0.1:80".parse().unwrap(),
                local: true,
            },
            Backend {
                addr: "10.2.0.1:80".parse().unwrap(),
                local: false,
            },
        ],
        local_only,
        // The plan has already kept the frontend's family only.
        source_ranges: Some(ranges.iter().map(|r| r.parse().unwrap()).collect()),
        ..cluster_ip_state("web", &[])
    };
    let mut w = writer();
    w.apply(&BTreeMap::from([(f, state(false, &["192.0.2.0/24"]))]));
    let head = w.maps().services[&(f, 0)];
    assert_eq!(
        head.flags,
        lb_ebpf::SVC_F_EXTERNAL | lb_ebpf::SVC_F_SOURCE_RANGES
    );
    let ranges: Vec<String> = w
        .maps()
        .source_ranges
        .iter()
        .map(|(_, n)| n.to_string())
        .collect();
    assert_eq!(ranges, ["192.0.2.0/24"]);
    let local: Vec<bool> = w.maps().backends.values().map(|b| b.local).collect();
    assert_eq!(local, [true, false]);

    // Policy changes alone rewrite the frontend entry and the ranges, nothing else.
    let ops = w.maps().ops;
    w.apply(&BTreeMap::from([(f, state(true, &["198.51.100.0/24"]))]));
    assert_eq!(
        w.maps().ops - ops,
        3,
        "one range added, the head, one range removed"
    );
    assert_eq!(
        w.maps().services[&(f, 0)].flags,
        lb_ebpf::SVC_F_EXTERNAL | lb_ebpf::SVC_F_LOCAL | lb_ebpf::SVC_F_SOURCE_RANGES
    );
    let ranges: Vec<String> = w
        .maps()
        .source_ranges
        .iter()
        .map(|(_, n)| n.to_string())
        .collect();
    assert_eq!(ranges, ["198.51.100.0/24"]);

    // A restarted writer adopts flags and ranges and rewrites nothing.
    let maps = std::mem::take(w.maps_mut());
    let mut again = Writer::new(maps, 1000);
    assert_eq!(again.adopt().unwrap(), 1);
    let ops = again.maps().ops;
    again.apply(&BTreeMap::from([(f, state(true, &["198.51.100.0/24"]))]));
    assert_eq!(again.maps().ops, ops);
    assert_eq!(again.sweep().unwrap(), 0);

    // Removing the frontend removes its ranges.
    again.apply(&BTreeMap::new());
    assert!(again.maps().source_ranges.is_empty());
    assert!(again.maps().services.is_empty());
}

#[test]
fn sweep_repairs_entries_changed_or_deleted_behind_the_writer() {
    let d = desired(&[("10.96.0.1:80", &["10.0.0.1:80", "10.0.0.2:80"])]);
    let mut w = writer();
    w.apply(&d);
    let good_services = w.maps().services.clone();
    let good_backends = w.maps().backends.clone();
    // Someone rewrites a slot, deletes the frontend entry and changes a backend.
    let maps = w.maps_mut();
    maps.services
        .get_mut(&(fe("10.96.0.1:80"), 1))
        .unwrap()
        .backend_id = 999;
    maps.services.remove(&(fe("10.96.0.1:80"), 0));
    let first = *maps.backends.keys().next().unwrap();
    maps.backends.get_mut(&first).unwrap().addr = "10.9.9.9:80".parse().unwrap();
    assert_eq!(w.sweep().unwrap(), 3);
    assert_eq!(w.maps().services, good_services);
    assert_eq!(w.maps().backends, good_backends);
    assert_eq!(w.sweep().unwrap(), 0, "nothing left to repair");
}

#[test]
fn session_affinity_sets_the_timeout_and_a_match_per_backend_and_follows_every_change() {
    let f = fe("10.96.0.1:80");
    let state = |timeout: Option<u32>, backends: &[&str]| FrontendState {
        session_affinity: timeout,
        ..cluster_ip_state("web", backends)
    };
    let mut w = writer();
    let two = ["10.1.0.1:80", "10.1.0.2:80"];
    w.apply(&BTreeMap::from([(f, state(Some(30), &two))]));
    let head = w.maps().services[&(f, 0)];
    assert_eq!(head.flags, lb_ebpf::SVC_F_AFFINITY);
    assert_eq!(
        head.backend_id, 30,
        "the timeout rides in the frontend entry"
    );
    let matched = |w: &Writer<MemoryMaps>| -> Vec<String> {
        w.maps()
            .affinity_matches
            .iter()
            .map(|(rev, id)| format!("{rev}:{}", w.maps().backends[id].addr))
            .collect()
    };
    assert_eq!(matched(&w), ["1:10.1.0.1:80", "1:10.1.0.2:80"]);

    // A backend that goes loses its match; a timeout change rewrites only the frontend entry.
    w.apply(&BTreeMap::from([(f, state(Some(30), &two[..1]))]));
    assert_eq!(matched(&w), ["1:10.1.0.1:80"]);
    let ops = w.maps().ops;
    w.apply(&BTreeMap::from([(f, state(Some(60), &two[..1]))]));
    assert_eq!(w.maps().ops - ops, 1);
    assert_eq!(w.maps().services[&(f, 0)].backend_id, 60);

    // A restarted writer adopts the timeout and writes nothing.
    let maps = std::mem::take(w.maps_mut());
    let mut again = Writer::new(maps, 1000);
    assert_eq!(again.adopt().unwrap(), 1);
    let ops = again.maps().ops;
    again.apply(&BTreeMap::from([(f, state(Some(60), &two[..1]))]));
    assert_eq!(again.maps().ops, ops);
    assert_eq!(again.sweep().unwrap(), 0);

    // Drift: a lost match is written again, a stray one goes.
    again.maps_mut().affinity_matches.clear();
    again.maps_mut().affinity_matches.insert((9, 9));
    assert_eq!(again.sweep().unwrap(), 2);
    assert_eq!(matched(&again), ["1:10.1.0.1:80"]);

    // Affinity off: flag, timeout and matches go; so they do with the frontend.
    again.apply(&BTreeMap::from([(f, state(None, &two))]));
    let head = again.maps().services[&(f, 0)];
    assert_eq!((head.flags, head.backend_id), (0, 0));
    assert!(again.maps().affinity_matches.is_empty());
    again.apply(&BTreeMap::from([(f, state(Some(5), &two))]));
    assert_eq!(again.maps().affinity_matches.len(), 2);
    again.apply(&BTreeMap::new());
    assert!(again.maps().affinity_matches.is_empty());
    assert!(again.maps().services.is_empty());
}

#[test]
fn sockets_sent_to_a_backend_their_frontend_lost_are_stale_others_are_not() {
    let mut w = writer();
    w.apply(&desired(&[(
        "10.96.0.1:53",
        &["10.1.0.1:53", "10.1.0.2:53"],
    )]));
    let rev_nat_id = w.maps().services[&(fe("10.96.0.1:53"), 0)].rev_nat_id;
    w.maps_mut().translated_sockets = vec![
        (1, "10.1.0.1:53".parse().unwrap(), rev_nat_id),
        (2, "10.1.0.2:53".parse().unwrap(), rev_nat_id),
        // A frontend that is gone.
        (3, "10.1.0.1:53".parse().unwrap(), rev_nat_id + 1),
    ];
    assert_eq!(w.stale_sockets().unwrap(), HashSet::from([3]));
    w.apply(&desired(&[("10.96.0.1:53", &["10.1.0.1:53"])]));
    assert_eq!(w.stale_sockets().unwrap(), HashSet::from([2, 3]));
}

mod snat {
    use std::net::IpAddr;

    use lb_ebpf::{SNAT_ADDR_SLOTS, SnatDevice};

    use super::writer;
    use crate::model::{DeviceSnat, SnatAddrs};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn wanted(devices: &[(u32, Option<&str>, Option<&str>)]) -> SnatAddrs {
        SnatAddrs {
            v4: Some("192.168.10.21".parse().unwrap()),
            v6: Some("2001:db8::21".parse().unwrap()),
            devices: devices
                .iter()
                .map(|(i, v4, v6)| {
                    let snat = DeviceSnat {
                        name: format!("eth{i}"),
                        v4: v4.map(|a| a.parse().unwrap()),
                        v6: v6.map(|a| a.parse().unwrap()),
                    };
                    (*i, snat)
                })
                .collect(),
        }
    }

    fn device(slot_v4: u8, slot_v6: u8) -> SnatDevice {
        SnatDevice {
            slot_v4,
            slot_v6,
            _pad: [0; 2],
        }
    }

    #[test]
    fn device_addresses_take_stable_slots_and_a_removed_one_is_cleared_after_its_device() {
        let mut w = writer();
        let report = w
            .set_snat(&wanted(&[
                (3, Some("10.20.0.6"), None),
                (4, Some("10.30.0.1"), Some("fd00:30::1")),
            ]))
            .unwrap();
        assert_eq!(report.devices, vec![3, 4]);
        let maps = w.maps();
        assert_eq!(
            maps.node_addrs[&crate::model::IpFamily::V4],
            Some(ip("192.168.10.21"))
        );
        assert_eq!(maps.snat_devices[&3], device(1, 0));
        assert_eq!(maps.snat_devices[&4], device(2, 1));
        assert_eq!(w.snat_slot(ip("10.20.0.6")), Some(1));
        assert_eq!(w.snat_slot(ip("10.30.0.1")), Some(2));
        assert_eq!(w.snat_slot(ip("fd00:30::1")), Some(1));
        assert_eq!(w.snat_slot(ip("192.168.10.21")), Some(0));

        // Device 3 goes: its slot is cleared, device 4 keeps its slots, and a new device does
        // not get the slot freed in the same sync.
        let ops = w.maps().ops;
        let report = w
            .set_snat(&wanted(&[
                (4, Some("10.30.0.1"), Some("fd00:30::1")),
                (5, Some("10.40.0.1"), None),
            ]))
            .unwrap();
        assert_eq!(report.devices, vec![5, 3]);
        assert_eq!(w.maps().snat_devices.get(&3), None);
        assert_eq!(w.maps().snat_devices[&4], device(2, 1));
        assert_eq!(w.maps().snat_devices[&5], device(3, 0));
        assert_eq!(w.snat_slot(ip("10.20.0.6")), None);
        // Slot 3 written, device 5 put, device 3 deleted, slot 1 cleared.
        assert_eq!(w.maps().ops - ops, 4);

        // Unchanged: nothing written.
        let ops = w.maps().ops;
        let report = w
            .set_snat(&wanted(&[
                (4, Some("10.30.0.1"), Some("fd00:30::1")),
                (5, Some("10.40.0.1"), None),
            ]))
            .unwrap();
        assert_eq!(report, Default::default());
        assert_eq!(w.maps().ops, ops);
    }

    #[test]
    fn a_restarted_writer_keeps_the_slots_an_earlier_run_gave() {
        let mut w = writer();
        let want = wanted(&[(3, Some("10.20.0.6"), None), (4, Some("10.30.0.1"), None)]);
        w.set_snat(&want).unwrap();
        let mut again = super::Writer::new(w.into_maps(), 1000);
        again.adopt().unwrap();
        // Device 3 is gone by now; device 4's address must stay in slot 2.
        let want = wanted(&[(4, Some("10.30.0.1"), None), (6, Some("10.50.0.1"), None)]);
        again.set_snat(&want).unwrap();
        assert_eq!(again.snat_slot(ip("10.30.0.1")), Some(2));
        assert_eq!(again.maps().snat_devices[&4], device(2, 0));
        assert_eq!(again.maps().snat_devices[&6], device(3, 0));
        assert_eq!(again.maps().snat_devices.get(&3), None);
    }

    #[test]
    fn addresses_beyond_the_slots_use_the_default_and_are_reported_once() {
        let mut w = writer();
        let extra = SNAT_ADDR_SLOTS as usize + 2;
        let addrs: Vec<String> = (0..extra).map(|i| format!("10.60.{i}.1")).collect();
        let devices: Vec<(u32, Option<&str>, Option<&str>)> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (10 + i as u32, Some(a.as_str()), None))
            .collect();
        let report = w.set_snat(&wanted(&devices)).unwrap();
        assert_eq!(report.no_slot.len(), 3, "{report:?}");
        assert_eq!(w.maps().snat_slots.len(), SNAT_ADDR_SLOTS as usize - 1);
        let unplaced = report.no_slot[0];
        let ifindex = 10 + addrs.iter().position(|a| ip(a) == unplaced).unwrap() as u32;
        assert_eq!(
            w.maps().snat_devices.get(&ifindex),
            None,
            "slot 0: no entry"
        );
        let again = w.set_snat(&wanted(&devices)).unwrap();
        assert!(again.no_slot.is_empty(), "{again:?}");
    }
}

#[test]
fn a_reverse_nat_id_given_to_a_new_frontend_starts_its_counters_from_zero() {
    let mut w = writer();
    w.apply(&desired(&[("10.96.0.1:80", &["10.0.0.1:8080"])]));
    let first = w.maps().counters_reset.clone();
    assert_eq!(first.len(), 1, "{first:?}");
    // Unchanged: no reset.
    w.apply(&desired(&[("10.96.0.1:80", &["10.0.0.2:8080"])]));
    assert_eq!(w.maps().counters_reset, first);
    // Removed, and another frontend takes its ID: reset again.
    w.apply(&desired(&[("10.96.0.2:80", &["10.0.0.1:8080"])]));
    assert_eq!(w.maps().counters_reset, vec![first[0], first[0]]);
}
