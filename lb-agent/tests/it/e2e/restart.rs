//! Restarting the agent (killed, then started again) loses nothing: pinned links keep the
//! programs attached while no agent runs, pinned maps keep the flows, and the next run swaps its
//! programs in atomically and takes the maps over without rewriting them. A restart with other
//! map sizes copies the flows into maps of the new sizes; maps of another layout are recreated.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use aya::maps::{MapData, MapInfo};
use lb_agent::kernel::compat::{LAYOUT_FILE, STATE_LAYOUT};
use lb_ebpf::{Flow4Key, Flow4Value, map_names};
use lb_tests::{
    cluster::BACKENDS,
    traffic::{TcpSession, tcp_request, udp_request},
};

use super::ManifestCluster;

const RESTARTS: usize = 3;

#[test]
fn killing_and_restarting_the_agent_fails_no_request() {
    let c = ManifestCluster::new();
    let vips: [IpAddr; 2] = [
        "10.96.2.10".parse().unwrap(),
        "fd00:96::2:10".parse().unwrap(),
    ];
    c.write_service("web", &vips, &BACKENDS);
    let start = |pin_dir: Option<&Path>| {
        let mut agent = c.agent();
        if let Some(dir) = pin_dir {
            agent = agent.pin_dir(dir);
        }
        c.start(agent)
    };
    let first = start(None);
    let pin_dir = first.pin_dir.clone();
    let client = c.net.client();

    // Long-lived connections, one per family, pinged throughout.
    let mut sessions: Vec<TcpSession> = vips
        .iter()
        .map(|vip| TcpSession::open(client, SocketAddr::new(*vip, 80)).unwrap())
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut agent = first;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let vip = vips[i % 2];
                let result = if i % 4 < 2 {
                    tcp_request(client, SocketAddr::new(vip, 80)).map(|_| ())
                } else {
                    udp_request(client, SocketAddr::new(vip, 53)).and_then(|(_, from)| {
                        anyhow::ensure!(from == SocketAddr::new(vip, 53), "answer from {from}");
                        Ok(())
                    })
                };
                done.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = result {
                    failed.fetch_add(1, Ordering::Relaxed);
                    errors.lock().unwrap().push(format!("{vip}: {e:#}"));
                }
                i += 1;
            }
        });
        for _ in 0..RESTARTS {
            std::thread::sleep(Duration::from_millis(300));
            agent.kill().unwrap();
            // No agent at all for a while: the pinned programs and maps keep serving.
            std::thread::sleep(Duration::from_millis(500));
            let next = start(Some(&pin_dir));
            // The killed run's Drop must not remove the pin directory the next run uses.
            agent.keep_pin_dir();
            agent = next;
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
    });
    for s in &mut sessions {
        s.ping()
            .unwrap_or_else(|e| panic!("connection to {} lost: {e}", s.server));
    }
    let (done, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(done > 50, "only {done} requests ran");
    assert_eq!(
        failed,
        0,
        "{failed} of {done} requests failed: {:?}",
        errors.lock().unwrap()
    );
    drop(agent);
}

/// The ClusterIPs of [`ManifestCluster::write_service`]'s `web` service in these tests.
fn web_vips() -> [IpAddr; 2] {
    [
        "10.96.2.20".parse().unwrap(),
        "fd00:96::2:20".parse().unwrap(),
    ]
}

/// `max_entries` of the map pinned as `name` under `pin_dir`.
fn pinned_max_entries(pin_dir: &Path, name: &str) -> u32 {
    MapData::from_pin(pin_dir.join(name))
        .and_then(|map| map.info())
        .unwrap_or_else(|e| panic!("reading pinned map {name}: {e}"))
        .max_entries()
}

/// Sessions per family: a flow the new run did not find would go to a backend chosen anew,
/// one of three, so with four connections a lost flow table would show.
const SESSIONS: usize = 4;

#[test]
fn restarting_with_other_flow_table_sizes_keeps_established_connections() {
    let c = ManifestCluster::new();
    let vips = web_vips();
    c.write_service("web", &vips, &BACKENDS);
    let (flows, new_flows) = (8_192_u32, 4_096_u32);
    let first = c.start(c.agent().args([
        "--max-flows",
        &flows.to_string(),
        "--max-new-flows",
        &new_flows.to_string(),
    ]));
    let pin_dir = first.pin_dir.clone();
    for v in [map_names::FLOWS_V4, map_names::FLOWS_V6] {
        assert_eq!(pinned_max_entries(&pin_dir, v), flows);
    }
    for v in [map_names::FLOWS_NEW_V4, map_names::FLOWS_NEW_V6] {
        assert_eq!(pinned_max_entries(&pin_dir, v), new_flows);
    }
    let client = c.net.client();
    let mut sessions: Vec<TcpSession> = vips
        .iter()
        .flat_map(|vip| std::iter::repeat_n(SocketAddr::new(*vip, 80), SESSIONS))
        .map(|addr| TcpSession::open(client, addr).unwrap())
        .collect();
    // The client speaks after the backend's answer: the flows are confirmed.
    for s in &mut sessions {
        s.ping().unwrap();
    }

    let mut first = first;
    first.kill().unwrap();
    first.keep_pin_dir();
    let (flows, new_flows) = (flows * 4, new_flows / 2);
    let second = c.start(c.agent().pin_dir(&pin_dir).args([
        "--max-flows",
        &flows.to_string(),
        "--max-new-flows",
        &new_flows.to_string(),
    ]));
    for v in [map_names::FLOWS_V4, map_names::FLOWS_V6] {
        assert_eq!(pinned_max_entries(&pin_dir, v), flows, "{v}");
    }
    for v in [map_names::FLOWS_NEW_V4, map_names::FLOWS_NEW_V6] {
        assert_eq!(pinned_max_entries(&pin_dir, v), new_flows, "{v}");
    }
    let logs = second.logs();
    for v in [
        map_names::FLOWS_V4,
        map_names::FLOWS_V6,
        map_names::FLOWS_NEW_V4,
        map_names::FLOWS_NEW_V6,
    ] {
        assert!(
            logs.contains(&format!("migrated pinned map {v}: max_entries")),
            "no migration of {v} logged:\n{logs}"
        );
    }
    assert!(
        !logs.contains("recreating pinned map"),
        "same layout, yet maps were recreated:\n{logs}"
    );
    assert!(
        !pin_dir.join("migrating").exists(),
        "the old maps stay pinned aside"
    );
    for s in &mut sessions {
        s.ping().unwrap_or_else(|e| {
            panic!(
                "connection to {} lost across the resize: {e}; log:\n{logs}",
                s.server
            )
        });
    }
    // New connections go through too.
    for vip in vips {
        tcp_request(client, SocketAddr::new(vip, 80)).unwrap();
    }
    drop(second);
}

/// A pin directory made by the test before any agent runs, removed on drop.
struct OwnPinDir(PathBuf);

impl OwnPinDir {
    fn new() -> Self {
        let dir = Path::new("/sys/fs/bpf").join(lb_tests::unique_name("lbt-compat"));
        std::fs::create_dir_all(&dir).expect("creating a pin directory on bpffs (needs root)");
        Self(dir)
    }
}

impl Drop for OwnPinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_pinned_map_of_another_value_size_is_recreated_and_the_agent_starts() {
    let c = ManifestCluster::new();
    let vips = web_vips();
    c.write_service("web", &vips, &BACKENDS);
    let pin_dir = OwnPinDir::new();
    // `LB_FLOWS_V4` as the current layout names it, but with 8-byte values.
    let wrong = aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32,
        size_of::<Flow4Key>() as u32,
        8,
        1024,
        0,
    );
    MapData::create(wrong, map_names::FLOWS_V4, None)
        .expect("creating a map (needs root)")
        .pin(pin_dir.0.join(map_names::FLOWS_V4))
        .unwrap();
    std::os::unix::fs::symlink(STATE_LAYOUT, pin_dir.0.join(LAYOUT_FILE)).unwrap();

    let agent = c.start(c.agent().pin_dir(&pin_dir.0));
    let logs = agent.logs();
    let expected = format!(
        "recreating pinned map {}: value size 8, this build wants {}; its entries are dropped",
        map_names::FLOWS_V4,
        size_of::<Flow4Value>()
    );
    assert!(logs.contains(&expected), "no {expected:?} in\n{logs}");
    let info = MapInfo::from_pin(pin_dir.0.join(map_names::FLOWS_V4)).unwrap();
    assert_eq!(info.value_size() as usize, size_of::<Flow4Value>());
    for vip in vips {
        tcp_request(c.net.client(), SocketAddr::new(vip, 80)).unwrap();
    }
    drop(agent);
}

#[test]
fn maps_pinned_without_a_layout_are_recreated() {
    let c = ManifestCluster::new();
    let vips = web_vips();
    c.write_service("web", &vips, &BACKENDS);
    let mut first = c.start_agent();
    let pin_dir = first.pin_dir.clone();
    assert_eq!(
        std::fs::read_link(pin_dir.join(LAYOUT_FILE)).unwrap(),
        Path::new(STATE_LAYOUT)
    );
    first.kill().unwrap();
    first.keep_pin_dir();
    // As an agent from before layout versions leaves its pin directory.
    std::fs::remove_file(pin_dir.join(LAYOUT_FILE)).unwrap();

    let second = c.start(c.agent().pin_dir(&pin_dir));
    let logs = second.logs();
    for name in [
        map_names::FLOWS_V4,
        map_names::SNAT_V6,
        map_names::SERVICES_V4,
    ] {
        let expected = format!("recreating pinned map {name}: the pin directory has no LAYOUT");
        assert!(logs.contains(&expected), "no {expected:?} in\n{logs}");
    }
    assert_eq!(
        std::fs::read_link(pin_dir.join(LAYOUT_FILE)).unwrap(),
        Path::new(STATE_LAYOUT)
    );
    for vip in vips {
        tcp_request(c.net.client(), SocketAddr::new(vip, 80)).unwrap();
    }
    drop(second);
}

/// The copy behind a migration, on maps of the flow tables' key and value sizes: byte for
/// byte into a larger map, what fits into a smaller one, with the rest counted.
#[test]
fn copying_a_map_keeps_every_entry_that_fits_and_counts_the_rest() {
    use aya::maps::{HashMap, IterableMap as _, Map};
    use aya_obj::generated::bpf_map_type::{BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH};
    use lb_agent::kernel::compat::copy_map;

    type Entries = HashMap<MapData, [u8; 16], [u8; 24]>;
    lb_tests::require_root();
    let entry = |i: u32| {
        let mut key = [0_u8; 16];
        key[..4].copy_from_slice(&i.to_le_bytes());
        let mut value = [0xa5_u8; 24];
        value[..4].copy_from_slice(&(i * 7).to_be_bytes());
        (key, value)
    };
    const ENTRIES: u32 = 200;
    for map_type in [BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH] {
        let create = |max_entries| -> Entries {
            let def = aya_obj::Map::new_from_params(map_type as u32, 16, 24, max_entries, 0);
            let data = MapData::create(def, "lbt_copy", None).expect("creating a map (needs root)");
            Entries::try_from(Map::from_map_data(data).unwrap()).unwrap()
        };
        let mut from = create(256);
        for i in 0..ENTRIES {
            let (key, value) = entry(i);
            from.insert(key, value, 0).unwrap();
        }

        let larger = create(512);
        let copied = copy_map(from.map(), larger.map()).unwrap();
        assert_eq!(
            (copied.read, copied.present, copied.dropped()),
            (u64::from(ENTRIES), u64::from(ENTRIES), 0),
            "{map_type:?}"
        );
        assert!(copied.first_error.is_none(), "{:?}", copied.first_error);
        for i in 0..ENTRIES {
            let (key, value) = entry(i);
            assert_eq!(
                larger.get(&key, 0).unwrap(),
                value,
                "{map_type:?} entry {i}"
            );
        }
        // Copying again changes nothing: entries the target has are never written over.
        let again = copy_map(from.map(), larger.map()).unwrap();
        assert_eq!((again.read, again.present), (0, u64::from(ENTRIES)));

        let smaller = create(64);
        let copied = copy_map(from.map(), smaller.map()).unwrap();
        let present: Vec<_> = smaller.iter().map(Result::unwrap).collect();
        assert_eq!(copied.read, u64::from(ENTRIES), "{map_type:?}");
        assert_eq!(copied.present, present.len() as u64, "{map_type:?}");
        assert!(
            (1..=64).contains(&present.len()),
            "{map_type:?}: {} entries in a map of 64",
            present.len()
        );
        assert_eq!(copied.dropped(), copied.read - copied.present);
        if map_type == BPF_MAP_TYPE_HASH {
            // A full hash map refuses the rest (E2BIG); an LRU map evicts instead.
            assert_eq!(present.len(), 64);
            assert!(copied.first_error.is_some());
        }
        for (key, value) in present {
            let i = u32::from_le_bytes(key[..4].try_into().unwrap());
            assert_eq!((key, value), entry(i), "{map_type:?}");
        }
    }

    // Maps of other shapes are refused.
    let def = |map_type: aya_obj::generated::bpf_map_type, value_size| {
        MapData::create(
            aya_obj::Map::new_from_params(map_type as u32, 16, value_size, 8, 0),
            "lbt_copy",
            None,
        )
        .unwrap()
    };
    let hash = def(BPF_MAP_TYPE_HASH, 24);
    assert!(copy_map(&hash, &def(BPF_MAP_TYPE_LRU_HASH, 24)).is_err());
    assert!(copy_map(&hash, &def(BPF_MAP_TYPE_HASH, 8)).is_err());

    // An array's indices are copied over the new array's zeros (the node's SNAT address
    // slots, one then 32).
    let array = |max_entries| {
        let def = aya_obj::Map::new_from_params(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
            4,
            4,
            max_entries,
            0,
        );
        aya::maps::Array::<MapData, [u8; 4]>::try_from(
            Map::from_map_data(MapData::create(def, "lbt_copy", None).unwrap()).unwrap(),
        )
        .unwrap()
    };
    let mut one = array(1);
    one.set(0, [192, 0, 2, 1], 0).unwrap();
    let slots = array(32);
    let copied = copy_map(one.map(), slots.map()).unwrap();
    assert_eq!(copied.read, 1);
    assert_eq!(slots.get(&0, 0).unwrap(), [192, 0, 2, 1]);
    assert_eq!(slots.get(&1, 0).unwrap(), [0; 4]);
}

/// Loads the datapath's programs with flow tables of `max_flows` under `pin_dir`, as the
/// agent does (no device attached, no socket programs).
fn load_programs(pin_dir: &Path, max_flows: u32) -> lb_agent::kernel::Programs {
    use lb_agent::kernel::{LoadOptions, Programs, SocketLb};
    Programs::load(&LoadOptions {
        pin_dir: pin_dir.to_path_buf(),
        max_services: 1024,
        max_backends: 1024,
        max_flows,
        max_new_flows: 1024,
        max_snat: 1024,
        max_sockets: 1024,
        max_affinity: 1024,
        socket_lb: SocketLb::Off,
        socket_lb_scope: Default::default(),
        service_counters: Default::default(),
        timeouts: Default::default(),
        snat_ports: Default::default(),
    })
    .expect("loading the datapath (needs root and bpffs)")
}

/// A confirmed flow entry of the IPv4 table, told apart by `i`.
fn flow_entry(i: u8) -> (Flow4Key, Flow4Value) {
    let key = Flow4Key {
        saddr: [198, 51, 100, i],
        daddr: [10, 96, 0, 1],
        sport: 40_000_u16.to_be(),
        dport: 80_u16.to_be(),
        proto: lb_ebpf::PROTO_TCP,
        dir: lb_ebpf::FLOW_FORWARD,
        _pad: [0; 2],
    };
    let value = Flow4Value {
        nat_addr: [10, 200, 0, i],
        nat_port: 8080_u16.to_be(),
        rev_nat_id: 1,
        backend_id: u32::from(i),
        snat_port: 0,
        flags: 0,
        snat_slot: 0,
        _pad: [0; lb_ebpf::FLOW4_PAD],
        expires_ns: u64::MAX,
    };
    (key, value)
}

fn flow_table(path: &Path) -> aya::maps::HashMap<MapData, Flow4Key, Flow4Value> {
    let map = aya::maps::Map::LruHashMap(MapData::from_pin(path).expect("opening a pinned map"));
    aya::maps::HashMap::try_from(map).expect("a flow table")
}

/// Flows the old programs start between a migration's copy and the new programs taking over
/// (they still serve with the old maps) reach the new maps too: the old maps are copied once
/// more when the new programs are on every device, never over what the new programs wrote.
/// A run that dies before that leaves the old maps for the next run, which copies them first.
#[test]
fn flows_started_during_a_migration_reach_the_new_tables() {
    lb_tests::require_root();
    let pin_dir = OwnPinDir::new();
    let table = pin_dir.0.join(map_names::FLOWS_V4);
    let draining = pin_dir.0.join("draining").join(map_names::FLOWS_V4);
    drop(load_programs(&pin_dir.0, 2048));
    let (k1, v1) = flow_entry(1);
    flow_table(&table).insert(k1, v1, 0).unwrap();

    // The next run copies the table into one of another size; the old one stays until the
    // new programs take over, and the old programs keep writing it.
    let mut second = load_programs(&pin_dir.0, 4096);
    assert_eq!(pinned_max_entries(&pin_dir.0, map_names::FLOWS_V4), 4096);
    assert_eq!(
        flow_table(&table).get(&k1, 0).unwrap(),
        v1,
        "the first copy"
    );
    let (k2, v2) = flow_entry(2);
    flow_table(&draining)
        .insert(k2, v2, 0)
        .expect("the old table is still pinned for the old programs");
    // The new programs' own flows are not written over.
    let (k1_new, mut v1_new) = flow_entry(1);
    v1_new.backend_id = 99;
    flow_table(&table).insert(k1_new, v1_new, 0).unwrap();
    let mut old_v1 = v1;
    old_v1.backend_id = 42;
    flow_table(&draining).insert(k1, old_v1, 0).unwrap();
    second.finish_migrations();
    let new = flow_table(&table);
    assert_eq!(new.get(&k2, 0).unwrap(), v2, "the old programs' new flow");
    assert_eq!(
        new.get(&k1, 0).unwrap(),
        v1_new,
        "the new programs' entry stays"
    );
    assert!(!draining.exists(), "the old table is unpinned");
    assert!(!pin_dir.0.join("draining").exists());
    drop(second);

    // A run that dies between its load and the takeover: the next run finds the old table
    // and copies what it holds before anything else.
    let third = load_programs(&pin_dir.0, 2048);
    let (k3, v3) = flow_entry(3);
    flow_table(&draining).insert(k3, v3, 0).unwrap();
    drop(third);
    let mut fourth = load_programs(&pin_dir.0, 2048);
    assert!(!draining.exists(), "the leftover is drained at the start");
    let entries: Vec<Flow4Key> = flow_table(&table).keys().map(Result::unwrap).collect();
    for k in [k1, k2, k3] {
        assert!(entries.contains(&k), "{k:?} missing from {entries:?}");
    }
    fourth.finish_migrations();
}
