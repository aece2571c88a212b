//! The flow GC on the real pinned maps of a loaded datapath. Entries of every kind, dead and
//! alive, are written into the flow tables and SNAT maps of both families; one collector run
//! must delete exactly the dead ones. Needs root and bpffs: it fails, never skips, when the
//! datapath cannot load.

use std::{collections::HashSet, fmt::Debug, hash::Hash, path::Path};

use anyhow::Context as _;
use aya::{
    Pod,
    maps::{HashMap, Map, MapData},
};
use lb_agent::gc::{self, Collector, Counts, FamilyReport};
use lb_ebpf::{
    FLOW_F_HAIRPIN, FLOW_F_SNAT, FLOW_FORWARD, FLOW_REPLY, FLOW4_PAD, FLOW6_PAD, FlowKey,
    FlowValue, PROTO_TCP, PROTO_UDP, SnatValue, map_names, port_to_map,
};

use crate::support::lb::Lb;

/// Dead and live entries are an hour away from now, so the run's own clock reading cannot
/// change what is dead.
const HOUR_NS: u64 = 3600 * 1_000_000_000;

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`, read apart from the collector's own.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A family's addresses for the test: `n` names a host; and its hairpin address (the kernel's
/// `HairpinFamily::HAIRPIN`).
trait Family: Copy + Eq + Hash + Debug + 'static {
    const HAIRPIN: Self;
    const FLOWS: &'static str;
    const NEW_FLOWS: &'static str;
    const SNAT: &'static str;
    fn host(n: u8) -> Self;
}

impl Family for [u8; 4] {
    const HAIRPIN: Self = [169, 254, 42, 1];
    const FLOWS: &'static str = map_names::FLOWS_V4;
    const NEW_FLOWS: &'static str = map_names::FLOWS_NEW_V4;
    const SNAT: &'static str = map_names::SNAT_V4;
    fn host(n: u8) -> Self {
        [10, 1, 0, n]
    }
}

impl Family for [u8; 16] {
    const HAIRPIN: Self = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42];
    const FLOWS: &'static str = map_names::FLOWS_V6;
    const NEW_FLOWS: &'static str = map_names::FLOWS_NEW_V6;
    const SNAT: &'static str = map_names::SNAT_V6;
    fn host(n: u8) -> Self {
        let mut a = [0; 16];
        a[0] = 0xfd;
        a[15] = n;
        a
    }
}

const SERVICE: u8 = 200;
const BACKEND: u8 = 201;
const NODE: u8 = 202;
const SERVICE_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
const CLIENT_PORT: u16 = 40_000;

/// A pinned map of the datapath, opened apart from the collector.
fn open<K: Pod, V: Pod>(pin_dir: &Path, name: &str) -> anyhow::Result<HashMap<MapData, K, V>> {
    let data = MapData::from_pin(pin_dir.join(name)).with_context(|| format!("opening {name}"))?;
    Ok(HashMap::try_from(Map::from_map_data(data)?)?)
}

fn keys<K: Pod + Eq + Hash, V: Pod>(map: &HashMap<MapData, K, V>) -> anyhow::Result<HashSet<K>> {
    Ok(map.keys().collect::<Result<_, _>>()?)
}

fn key<A: Family>(saddr: A, daddr: A, sport: u16, dport: u16, dir: u8) -> FlowKey<A> {
    FlowKey {
        saddr,
        daddr,
        sport: port_to_map(sport),
        dport: port_to_map(dport),
        proto: PROTO_TCP,
        dir,
        _pad: [0; 2],
    }
}

fn value<A: Family, const PAD: usize>(
    nat_addr: A,
    nat_port: u16,
    flags: u8,
    expires_ns: u64,
) -> FlowValue<A, PAD> {
    FlowValue {
        nat_addr,
        nat_port: port_to_map(nat_port),
        rev_nat_id: 7,
        backend_id: 3,
        snat_port: 0,
        flags,
        snat_slot: 0,
        _pad: [0; PAD],
        expires_ns,
    }
}

/// Client `client`'s flow to the service, sent to the backend: its forward and reply entries.
type Entry<A, const PAD: usize> = (FlowKey<A>, FlowValue<A, PAD>);

fn flow<A: Family, const PAD: usize>(
    client: u8,
    forward_expires: u64,
    reply_expires: u64,
) -> [Entry<A, PAD>; 2] {
    [
        (
            key(
                A::host(client),
                A::host(SERVICE),
                CLIENT_PORT,
                SERVICE_PORT,
                FLOW_FORWARD,
            ),
            value(A::host(BACKEND), BACKEND_PORT, 0, forward_expires),
        ),
        (
            key(
                A::host(BACKEND),
                A::host(client),
                BACKEND_PORT,
                CLIENT_PORT,
                FLOW_REPLY,
            ),
            value(A::host(SERVICE), SERVICE_PORT, 0, reply_expires),
        ),
    ]
}

/// Pod `pod`'s hairpin flow (its own backend): forward and reply entries, the reply keyed to
/// the hairpin address.
fn hairpin<A: Family, const PAD: usize>(
    pod: u8,
    forward_expires: u64,
    reply_expires: u64,
) -> [Entry<A, PAD>; 2] {
    [
        (
            key(
                A::host(pod),
                A::host(SERVICE),
                CLIENT_PORT,
                SERVICE_PORT,
                FLOW_FORWARD,
            ),
            value(A::host(pod), BACKEND_PORT, FLOW_F_HAIRPIN, forward_expires),
        ),
        (
            key(
                A::host(pod),
                A::HAIRPIN,
                BACKEND_PORT,
                CLIENT_PORT,
                FLOW_REPLY,
            ),
            value(A::host(SERVICE), SERVICE_PORT, 0, reply_expires),
        ),
    ]
}

/// Client `client`'s SNATed flow (the backend on another node): its forward entry and its SNAT
/// entry.
fn snated<A: Family, const PAD: usize>(
    client: u8,
    forward_expires: u64,
    snat_expires: u64,
) -> (Entry<A, PAD>, (FlowKey<A>, SnatValue<A>)) {
    let snat_port = 20_000 + u16::from(client);
    let mut forward = value(A::host(BACKEND), BACKEND_PORT, FLOW_F_SNAT, forward_expires);
    forward.snat_port = port_to_map(snat_port);
    (
        (
            key(
                A::host(client),
                A::host(SERVICE),
                CLIENT_PORT,
                SERVICE_PORT,
                FLOW_FORWARD,
            ),
            forward,
        ),
        (
            key(
                A::host(BACKEND),
                A::host(NODE),
                BACKEND_PORT,
                snat_port,
                FLOW_REPLY,
            ),
            SnatValue {
                client_addr: A::host(client),
                service_addr: A::host(SERVICE),
                client_port: port_to_map(CLIENT_PORT),
                service_port: port_to_map(SERVICE_PORT),
                flags: 0,
                _pad: 0,
                rev_nat_id: 0,
                expires_ns: snat_expires,
            },
        ),
    )
}

/// What one family's maps should hold after the run, and what the run should report.
struct Expected<A> {
    flows: HashSet<FlowKey<A>>,
    new_flows: HashSet<FlowKey<A>>,
    snat: HashSet<FlowKey<A>>,
    report: FamilyReport,
}

/// Writes entries of every kind into one family's maps; returns the keys that must survive.
fn populate<A: Family, const PAD: usize>(pin_dir: &Path, now: u64) -> anyhow::Result<Expected<A>>
where
    FlowKey<A>: Pod,
    FlowValue<A, PAD>: Pod,
    SnatValue<A>: Pod,
{
    let (dead, live) = (now.saturating_sub(HOUR_NS), now + HOUR_NS);
    let mut flows = open::<FlowKey<A>, FlowValue<A, PAD>>(pin_dir, A::FLOWS)?;
    let mut new_flows = open::<FlowKey<A>, FlowValue<A, PAD>>(pin_dir, A::NEW_FLOWS)?;
    let mut snat = open::<FlowKey<A>, SnatValue<A>>(pin_dir, A::SNAT)?;

    // The confirmed table.
    let [live_fwd, reply_of_live] = flow::<A, PAD>(1, live, dead);
    let [dead_fwd, reply_of_dead] = flow::<A, PAD>(2, dead, dead);
    let [_, reply_of_missing] = flow::<A, PAD>(3, dead, dead);
    let [_, cached_reply_of_missing] = flow::<A, PAD>(4, dead, live);
    let [hairpin_fwd, hairpin_reply] = hairpin::<A, PAD>(5, live, dead);
    let [dead_hairpin_fwd, dead_hairpin_reply] = hairpin::<A, PAD>(6, dead, dead);
    // The unconfirmed table.
    let [new_live_fwd, new_reply_of_live] = flow::<A, PAD>(11, live, dead);
    let [new_dead_fwd, new_reply_of_dead] = flow::<A, PAD>(12, dead, dead);
    // SNATed flows: forward entries in either table, SNAT entries.
    let (_, snat_of_missing) = snated::<A, PAD>(21, dead, live);
    let (snat_dead_fwd, snat_of_dead) = snated::<A, PAD>(22, dead, live);
    let (snat_live_fwd, snat_of_live) = snated::<A, PAD>(23, live, dead);
    let (snat_new_live_fwd, snat_of_new_live) = snated::<A, PAD>(24, live, dead);
    let (mut udp_live_fwd, snat_of_other_proto) = snated::<A, PAD>(25, live, live);
    udp_live_fwd.0.proto = PROTO_UDP;

    let kept_flows = [
        live_fwd,
        reply_of_live,
        cached_reply_of_missing,
        hairpin_fwd,
        hairpin_reply,
        snat_live_fwd,
        udp_live_fwd,
    ];
    let gone_flows = [
        dead_fwd,
        reply_of_dead,
        reply_of_missing,
        dead_hairpin_fwd,
        dead_hairpin_reply,
        snat_dead_fwd,
    ];
    let kept_new = [new_live_fwd, new_reply_of_live, snat_new_live_fwd];
    let gone_new = [new_dead_fwd, new_reply_of_dead];
    let kept_snat = [snat_of_live, snat_of_new_live];
    let gone_snat = [snat_of_missing, snat_of_dead, snat_of_other_proto];

    for (k, v) in kept_flows.iter().chain(&gone_flows) {
        flows.insert(k, v, 0).context("writing a flow entry")?;
    }
    for (k, v) in kept_new.iter().chain(&gone_new) {
        new_flows.insert(k, v, 0).context("writing a flow entry")?;
    }
    for (k, v) in kept_snat.iter().chain(&gone_snat) {
        snat.insert(k, v, 0).context("writing a SNAT entry")?;
    }
    let counts = |kept: usize, gone: usize| Counts {
        scanned: kept + gone,
        collected: gone,
        incomplete: false,
    };
    Ok(Expected {
        flows: kept_flows.iter().map(|(k, _)| *k).collect(),
        new_flows: kept_new.iter().map(|(k, _)| *k).collect(),
        snat: kept_snat.iter().map(|(k, _)| *k).collect(),
        report: FamilyReport {
            flows: counts(kept_flows.len(), gone_flows.len()),
            new_flows: counts(kept_new.len(), gone_new.len()),
            snat: counts(kept_snat.len(), gone_snat.len()),
        },
    })
}

/// Asserts that one family's maps hold exactly the expected keys.
fn assert_left<A: Family, const PAD: usize>(
    pin_dir: &Path,
    expected: &Expected<A>,
) -> anyhow::Result<()>
where
    FlowKey<A>: Pod,
    FlowValue<A, PAD>: Pod,
    SnatValue<A>: Pod,
{
    let flows = open::<FlowKey<A>, FlowValue<A, PAD>>(pin_dir, A::FLOWS)?;
    let new_flows = open::<FlowKey<A>, FlowValue<A, PAD>>(pin_dir, A::NEW_FLOWS)?;
    let snat = open::<FlowKey<A>, SnatValue<A>>(pin_dir, A::SNAT)?;
    assert_eq!(keys(&flows)?, expected.flows, "{}", A::FLOWS);
    assert_eq!(keys(&new_flows)?, expected.new_flows, "{}", A::NEW_FLOWS);
    assert_eq!(keys(&snat)?, expected.snat, "{}", A::SNAT);
    Ok(())
}

#[test]
fn collects_exactly_the_dead_entries_of_both_families() -> anyhow::Result<()> {
    let lb = Lb::load()?;
    let pin_dir = lb.pin_dir();
    let now = monotonic_ns();
    let v4 = populate::<[u8; 4], FLOW4_PAD>(pin_dir, now)?;
    let v6 = populate::<[u8; 16], FLOW6_PAD>(pin_dir, now)?;

    let mut collector = Collector::open(pin_dir).context("opening the collector")?;
    let report = collector.run().context("the first run")?;
    assert_eq!(report.v4, v4.report, "IPv4 report: {report}");
    assert_eq!(report.v6, v6.report, "IPv6 report: {report}");
    assert_left::<[u8; 4], FLOW4_PAD>(pin_dir, &v4)?;
    assert_left::<[u8; 16], FLOW6_PAD>(pin_dir, &v6)?;

    let again = collector.run().context("the second run")?;
    assert_eq!(
        again.total().collected,
        0,
        "nothing left to collect: {again}"
    );
    assert_eq!(
        again.total().scanned,
        report.total().scanned - report.total().collected
    );
    Ok(())
}

#[test]
fn opening_fails_without_the_maps() {
    let missing = Path::new("/sys/fs/bpf/lb-test-no-such-dir");
    assert!(Collector::open(missing).is_err());
}

/// The entries of [`collection_spares_what_changed_since_the_scan`] for one family, written
/// before the scan.
struct Changing<A: Family, const PAD: usize> {
    /// Dead at the scan, refreshed by "a CPU" before the collection.
    refreshed: Entry<A, PAD>,
    /// A reply whose forward entry is dead at the scan and refreshed before the collection.
    reply_of_refreshed: Entry<A, PAD>,
    /// A SNAT entry without forward entry at the scan; the flow is recorded before the
    /// collection (in the unconfirmed table).
    snat_of_late_flow: (FlowKey<A>, SnatValue<A>),
    late_flow: Entry<A, PAD>,
    /// Dead at the scan, and deleted by the kernel before the collection.
    vanished: Entry<A, PAD>,
    /// Dead at the scan and left alone: collected.
    dead: Entry<A, PAD>,
}

impl<A: Family, const PAD: usize> Changing<A, PAD>
where
    FlowKey<A>: Pod,
    FlowValue<A, PAD>: Pod,
    SnatValue<A>: Pod,
{
    fn write(pin_dir: &Path, now: u64) -> anyhow::Result<Self> {
        let dead = now.saturating_sub(HOUR_NS);
        let [refreshed, reply_of_refreshed] = flow::<A, PAD>(31, dead, dead);
        let (late_flow, snat_of_late_flow) = snated::<A, PAD>(32, now + HOUR_NS, dead);
        let [vanished, _] = flow::<A, PAD>(33, dead, dead);
        let [dead_fwd, _] = flow::<A, PAD>(34, dead, dead);
        let mut flows = open::<FlowKey<A>, FlowValue<A, PAD>>(pin_dir, A::FLOWS)?;
        let mut snat = open::<FlowKey<A>, SnatValue<A>>(pin_dir, A::SNAT)?;
        for (k, v) in [refreshed, reply_of_refreshed, vanished, dead_fwd] {
            flows.insert(k, v, 0)?;
        }
        snat.insert(snat_of_late_flow.0, snat_of_late_flow.1, 0)?;
        Ok(Self {
            refreshed,
            reply_of_refreshed,
            snat_of_late_flow,
            late_flow,
            vanished,
            dead: dead_fwd,
        })
    }

    /// What the kernel does between the scan and the collection.
    fn change(&self, pin_dir: &Path, now: u64) -> anyhow::Result<()> {
        let mut flows = open::<FlowKey<A>, FlowValue<A, PAD>>(pin_dir, A::FLOWS)?;
        let mut new_flows = open::<FlowKey<A>, FlowValue<A, PAD>>(pin_dir, A::NEW_FLOWS)?;
        let (key, mut value) = self.refreshed;
        value.expires_ns = now + HOUR_NS;
        flows.insert(key, value, 0)?;
        new_flows.insert(self.late_flow.0, self.late_flow.1, 0)?;
        flows.remove(&self.vanished.0)?;
        Ok(())
    }

    fn assert_left(&self, pin_dir: &Path) -> anyhow::Result<()> {
        let flows = keys(&open::<FlowKey<A>, FlowValue<A, PAD>>(pin_dir, A::FLOWS)?)?;
        let snat = keys(&open::<FlowKey<A>, SnatValue<A>>(pin_dir, A::SNAT)?)?;
        assert!(
            !flows.contains(&self.dead.0),
            "{}: the dead entry",
            A::FLOWS
        );
        let want: HashSet<_> = [self.refreshed.0, self.reply_of_refreshed.0].into();
        assert_eq!(flows, want, "{}", A::FLOWS);
        assert_eq!(snat, [self.snat_of_late_flow.0].into(), "{}", A::SNAT);
        Ok(())
    }
}

/// The collection reads every candidate again: what a CPU refreshed or recorded since the scan
/// stays, and what the kernel deleted meanwhile is no error.
#[test]
fn collection_spares_what_changed_since_the_scan() -> anyhow::Result<()> {
    let lb = Lb::load()?;
    let pin_dir = lb.pin_dir();
    let now = monotonic_ns();
    let v4 = Changing::<[u8; 4], FLOW4_PAD>::write(pin_dir, now)?;
    let v6 = Changing::<[u8; 16], FLOW6_PAD>::write(pin_dir, now)?;

    let mut collector = Collector::open(pin_dir)?;
    let candidates = collector.scan(gc::monotonic_now_ns())?;
    assert_eq!(
        candidates.len(),
        2 * 5,
        "every entry is a candidate at the scan"
    );
    v4.change(pin_dir, now)?;
    v6.change(pin_dir, now)?;
    let report = collector.collect(candidates)?;

    assert_eq!(
        report.total().collected,
        2,
        "only the untouched dead entries: {report}"
    );
    v4.assert_left(pin_dir)?;
    v6.assert_left(pin_dir)?;
    Ok(())
}
