use std::collections::HashSet;

use lb_ebpf::{FLOW_F_SNAT, PROTO_TCP, PROTO_UDP, port_to_map};

use super::*;

const SEC: u64 = 1_000_000_000;
/// The time of every judgement below, far from 0 so that expiries in the past are easy to write.
const NOW: u64 = 10_000 * SEC;
const PAST: u64 = NOW - 5 * SEC;
const FUTURE: u64 = NOW + 5 * SEC;

/// Addresses of a family for the tests: `n` names a host.
trait TestAddr: FlowAddr {
    fn host(n: u8) -> Self;
}

impl TestAddr for [u8; 4] {
    fn host(n: u8) -> Self {
        [10, 0, 0, n]
    }
}

impl TestAddr for [u8; 16] {
    fn host(n: u8) -> Self {
        let mut a = [0; 16];
        a[0] = 0xfd;
        a[15] = n;
        a
    }
}

const CLIENT: u8 = 1;
const SERVICE: u8 = 2;
const BACKEND: u8 = 3;
const NODE: u8 = 4;
const CLIENT_PORT: u16 = 40_000;
const SERVICE_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
const SNAT_PORT: u16 = 20_001;

fn key<A: TestAddr>(saddr: A, daddr: A, sport: u16, dport: u16, dir: u8) -> FlowKey<A> {
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

fn value<A: TestAddr, const PAD: usize>(
    nat_addr: A,
    nat_port: u16,
    expires_ns: u64,
) -> FlowValue<A, PAD> {
    FlowValue {
        nat_addr,
        nat_port: port_to_map(nat_port),
        rev_nat_id: 1,
        backend_id: 1,
        snat_port: 0,
        flags: 0,
        snat_slot: 0,
        _pad: [0; PAD],
        expires_ns,
    }
}

/// The forward entry of the client `client`'s flow to the service, sent to the backend.
fn forward<A: TestAddr, const PAD: usize>(
    client: u8,
    expires_ns: u64,
) -> (FlowKey<A>, FlowValue<A, PAD>) {
    (
        key(
            A::host(client),
            A::host(SERVICE),
            CLIENT_PORT,
            SERVICE_PORT,
            FLOW_FORWARD,
        ),
        value(A::host(BACKEND), BACKEND_PORT, expires_ns),
    )
}

/// The reply entry of the same flow: the backend's answer gets the service address back.
fn reply<A: TestAddr, const PAD: usize>(
    client: u8,
    expires_ns: u64,
) -> (FlowKey<A>, FlowValue<A, PAD>) {
    (
        key(
            A::host(BACKEND),
            A::host(client),
            BACKEND_PORT,
            CLIENT_PORT,
            FLOW_REPLY,
        ),
        value(A::host(SERVICE), SERVICE_PORT, expires_ns),
    )
}

/// A hairpin flow: the pod `pod` is its own backend. The forward key is the pod's packet to
/// the service; the reply key is the pod's answer to the hairpin address.
fn hairpin<A: TestAddr, const PAD: usize>(
    pod: u8,
    forward_expires: u64,
    reply_expires: u64,
) -> [(FlowKey<A>, FlowValue<A, PAD>); 2] {
    [
        (
            key(
                A::host(pod),
                A::host(SERVICE),
                CLIENT_PORT,
                SERVICE_PORT,
                FLOW_FORWARD,
            ),
            value(A::host(pod), BACKEND_PORT, forward_expires),
        ),
        (
            key(
                A::host(pod),
                A::HAIRPIN,
                BACKEND_PORT,
                CLIENT_PORT,
                FLOW_REPLY,
            ),
            value(A::host(SERVICE), SERVICE_PORT, reply_expires),
        ),
    ]
}

/// The SNAT entry of the client `client`'s flow, its reply from the backend to the node.
fn snat<A: TestAddr>(client: u8, expires_ns: u64) -> (FlowKey<A>, SnatValue<A>) {
    (
        key(
            A::host(BACKEND),
            A::host(NODE),
            BACKEND_PORT,
            SNAT_PORT + u16::from(client),
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
            expires_ns,
        },
    )
}

/// The forward entry of a SNATed flow (the backend on another node).
fn snat_forward<A: TestAddr, const PAD: usize>(
    client: u8,
    expires_ns: u64,
) -> (FlowKey<A>, FlowValue<A, PAD>) {
    let (key, mut value) = forward(client, expires_ns);
    value.snat_port = port_to_map(SNAT_PORT + u16::from(client));
    value.flags = FLOW_F_SNAT;
    (key, value)
}

/// Builds the maps from entries.
fn entries<A: TestAddr, const PAD: usize>(
    flows: &[(FlowKey<A>, FlowValue<A, PAD>)],
    new_flows: &[(FlowKey<A>, FlowValue<A, PAD>)],
    snat: &[(FlowKey<A>, SnatValue<A>)],
) -> Entries<A, PAD> {
    Entries {
        flows: flows.iter().copied().collect(),
        new_flows: new_flows.iter().copied().collect(),
        snat: snat.iter().copied().collect(),
    }
}

/// Garbage as sets, as the order of the keys means nothing.
fn judged<A: TestAddr, const PAD: usize>(entries: &Entries<A, PAD>) -> [HashSet<FlowKey<A>>; 3] {
    let garbage = garbage(NOW, entries);
    let set = |keys: Vec<FlowKey<A>>| {
        let n = keys.len();
        let set: HashSet<_> = keys.into_iter().collect();
        assert_eq!(set.len(), n, "a key listed twice");
        set
    };
    [
        set(garbage.flows),
        set(garbage.new_flows),
        set(garbage.snat),
    ]
}

fn keys<A: TestAddr, V>(entries: &[&(FlowKey<A>, V)]) -> HashSet<FlowKey<A>> {
    entries.iter().map(|(k, _)| *k).collect()
}

/// Runs a generic test body for both families.
macro_rules! both_families {
    ($($name:ident),* $(,)?) => {
        mod v4 {
            $(#[test] fn $name() { super::$name::<[u8; 4], { lb_ebpf::FLOW4_PAD }>() })*
        }
        mod v6 {
            $(#[test] fn $name() { super::$name::<[u8; 16], { lb_ebpf::FLOW6_PAD }>() })*
        }
    };
}

both_families!(
    dead_forward_entries_go_live_ones_stay,
    an_entry_is_dead_from_its_expiry_on,
    reply_stays_while_its_forward_entry_lives_even_with_its_cache_expired,
    reply_goes_with_its_dead_or_missing_forward_entry,
    reply_with_a_valid_cache_stays_without_its_forward_entry,
    hairpin_reply_is_matched_to_the_pod_as_client,
    snat_goes_when_its_forward_entry_is_missing_or_dead,
    snat_stays_while_its_forward_entry_lives_in_either_table,
    entries_of_no_known_direction_stay,
);

fn dead_forward_entries_go_live_ones_stay<A: TestAddr, const PAD: usize>() {
    let dead = forward::<A, PAD>(CLIENT, PAST);
    let live = forward::<A, PAD>(CLIENT + 10, FUTURE);
    let dead_new = forward::<A, PAD>(CLIENT + 20, PAST);
    let live_new = forward::<A, PAD>(CLIENT + 30, FUTURE);
    let [flows, new_flows, snat] = judged(&entries(&[dead, live], &[dead_new, live_new], &[]));
    assert_eq!(flows, keys(&[&dead]));
    assert_eq!(new_flows, keys(&[&dead_new]));
    assert!(snat.is_empty());
}

fn an_entry_is_dead_from_its_expiry_on<A: TestAddr, const PAD: usize>() {
    assert!(!alive(NOW, NOW), "expiring now: dead, as the kernel judges");
    assert!(alive(NOW + 1, NOW));
    let at_now = forward::<A, PAD>(CLIENT, NOW);
    let just_after = forward::<A, PAD>(CLIENT + 10, NOW + 1);
    let [flows, ..] = judged(&entries(&[at_now, just_after], &[], &[]));
    assert_eq!(flows, keys(&[&at_now]));
}

fn reply_stays_while_its_forward_entry_lives_even_with_its_cache_expired<
    A: TestAddr,
    const PAD: usize,
>() {
    // Confirmed: both entries in the confirmed table.
    let fwd = forward::<A, PAD>(CLIENT, FUTURE);
    let rep = reply::<A, PAD>(CLIENT, PAST);
    assert_eq!(reply_forward_key(&rep.0, &rep.1), fwd.0);
    // Unconfirmed: both in the unconfirmed table.
    let fwd_new = forward::<A, PAD>(CLIENT + 10, FUTURE);
    let rep_new = reply::<A, PAD>(CLIENT + 10, PAST);
    // Moving: the forward entry already confirmed, the reply entry not yet.
    let fwd_moved = forward::<A, PAD>(CLIENT + 20, FUTURE);
    let rep_behind = reply::<A, PAD>(CLIENT + 20, PAST);
    let judged = judged(&entries(
        &[fwd, rep, fwd_moved],
        &[fwd_new, rep_new, rep_behind],
        &[],
    ));
    assert_eq!(judged, [HashSet::new(), HashSet::new(), HashSet::new()]);
}

fn reply_goes_with_its_dead_or_missing_forward_entry<A: TestAddr, const PAD: usize>() {
    let dead_fwd = forward::<A, PAD>(CLIENT, PAST);
    let rep_of_dead = reply::<A, PAD>(CLIENT, PAST);
    let rep_of_missing = reply::<A, PAD>(CLIENT + 10, PAST);
    let dead_fwd_new = forward::<A, PAD>(CLIENT + 20, PAST);
    let rep_of_dead_new = reply::<A, PAD>(CLIENT + 20, PAST);
    let [flows, new_flows, _] = judged(&entries(
        &[dead_fwd, rep_of_dead, rep_of_missing],
        &[dead_fwd_new, rep_of_dead_new],
        &[],
    ));
    assert_eq!(flows, keys(&[&dead_fwd, &rep_of_dead, &rep_of_missing]));
    assert_eq!(new_flows, keys(&[&dead_fwd_new, &rep_of_dead_new]));
}

fn reply_with_a_valid_cache_stays_without_its_forward_entry<A: TestAddr, const PAD: usize>() {
    let dead_fwd = forward::<A, PAD>(CLIENT, PAST);
    let rep = reply::<A, PAD>(CLIENT, FUTURE);
    let rep_of_missing = reply::<A, PAD>(CLIENT + 10, FUTURE);
    let [flows, ..] = judged(&entries(&[dead_fwd, rep, rep_of_missing], &[], &[]));
    assert_eq!(flows, keys(&[&dead_fwd]));
}

fn hairpin_reply_is_matched_to_the_pod_as_client<A: TestAddr, const PAD: usize>() {
    let [fwd, rep] = hairpin::<A, PAD>(CLIENT, FUTURE, PAST);
    assert_eq!(
        reply_forward_key(&rep.0, &rep.1),
        fwd.0,
        "the hairpin reply's forward key has the pod, not the hairpin address, as client"
    );
    let [dead_fwd, dead_rep] = hairpin::<A, PAD>(CLIENT + 10, PAST, PAST);
    let [flows, ..] = judged(&entries(&[fwd, rep, dead_fwd, dead_rep], &[], &[]));
    assert_eq!(flows, keys(&[&dead_fwd, &dead_rep]));
}

fn snat_goes_when_its_forward_entry_is_missing_or_dead<A: TestAddr, const PAD: usize>() {
    let missing = snat::<A>(CLIENT, FUTURE);
    let dead_fwd = snat_forward::<A, PAD>(CLIENT + 10, PAST);
    let of_dead = snat::<A>(CLIENT + 10, FUTURE);
    let dead_fwd_new = snat_forward::<A, PAD>(CLIENT + 20, PAST);
    let of_dead_new = snat::<A>(CLIENT + 20, PAST);
    // The same tuple in the other protocol is another flow.
    let live_udp = {
        let (mut key, value) = snat_forward::<A, PAD>(CLIENT + 30, FUTURE);
        key.proto = PROTO_UDP;
        (key, value)
    };
    let of_tcp = snat::<A>(CLIENT + 30, FUTURE);
    let [flows, new_flows, snat] = judged(&entries(
        &[dead_fwd, live_udp],
        &[dead_fwd_new],
        &[missing, of_dead, of_dead_new, of_tcp],
    ));
    assert_eq!(snat, keys(&[&missing, &of_dead, &of_dead_new, &of_tcp]));
    assert_eq!(flows, keys(&[&dead_fwd]));
    assert_eq!(new_flows, keys(&[&dead_fwd_new]));
}

fn snat_stays_while_its_forward_entry_lives_in_either_table<A: TestAddr, const PAD: usize>() {
    let fwd = snat_forward::<A, PAD>(CLIENT, FUTURE);
    let entry = snat::<A>(CLIENT, PAST);
    assert_eq!(snat_forward_key(&entry.0, &entry.1), fwd.0);
    let fwd_new = snat_forward::<A, PAD>(CLIENT + 10, FUTURE);
    let entry_new = snat::<A>(CLIENT + 10, FUTURE);
    // A stale copy in the confirmed table does not hide the live one in the unconfirmed table.
    let stale = snat_forward::<A, PAD>(CLIENT + 10, PAST);
    let [flows, new_flows, snat] = judged(&entries(&[fwd, stale], &[fwd_new], &[entry, entry_new]));
    assert!(snat.is_empty());
    assert!(new_flows.is_empty());
    assert_eq!(flows, keys(&[&stale]));
}

fn entries_of_no_known_direction_stay<A: TestAddr, const PAD: usize>() {
    let (mut key, value) = forward::<A, PAD>(CLIENT, PAST);
    key.dir = 7;
    let [flows, ..] = judged(&entries(&[(key, value)], &[], &[]));
    assert!(flows.is_empty());
}
