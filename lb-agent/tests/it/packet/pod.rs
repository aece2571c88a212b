//! Packet tests of the pod TC programs (`lb_tc_pod_ingress`, DNAT, and `lb_tc_pod_egress`,
//! reverse NAT), both families.

use std::{
    collections::{BTreeSet, HashMap},
    fmt::Debug,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use super::TestResult;
use crate::support::{
    frame::{
        ETH_HLEN, ETH_P_IP, Ext, ICMP_MAX_LEN, IP_MF, IPV6_MIN_MTU, Packet, TCP_ACK, TCP_FIN,
        TCP_RST, TCP_SYN, Transport, arp_request, assert_frame_eq, ones_complement_sum,
        port_unreachable, pseudo_header, summary, verify_checksums,
    },
    lb::{Lb, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, assert_drops, rejecting},
};
use anyhow::Context as _;
use aya::programs::ProgramError;
use lb_agent::model::{Frontend, Protocol};
use lb_ebpf::{
    FLOW_F_CLOSED_FWD, FLOW_FORWARD, FLOW_REPLY, FlowKey, FlowValue, PROTO_TCP, PROTO_UDP,
    port_to_map, stats,
};

const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
const SERVICE4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const SERVICE4_OTHER: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const NOT_A_SERVICE4: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 3);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 5);
const SERVICE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
const NOT_A_SERVICE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 3);

const SERVICE_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
const CLIENT_PORT: u16 = 41_000;

fn sock(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn backend4(i: u8) -> SocketAddr {
    sock(Ipv4Addr::new(10, 0, 2, 10 + i), BACKEND_PORT)
}

fn backend6(i: u16) -> SocketAddr {
    sock(
        Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x10 + i),
        BACKEND_PORT,
    )
}

fn frontend(addr: SocketAddr, protocol: Protocol) -> Frontend {
    Frontend { addr, protocol }
}

/// A datapath serving one frontend.
fn serving(frontend: Frontend, backends: &[SocketAddr]) -> anyhow::Result<Lb> {
    let mut lb = Lb::load()?;
    lb.apply(&[(frontend, backends)])?;
    Ok(lb)
}

/// Runs `input` through the ingress program and returns the backend it was sent to, after
/// checking that the output is `input` with only its destination changed (byte for byte, fresh
/// checksums) and that every checksum of the output is valid.
fn dnat(lb: &mut Lb, input: &Packet) -> anyhow::Result<SocketAddr> {
    let out = lb.ingress(&input.frame())?;
    let to = summary(&out)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("parsing the output of {input:?}"))?
        .dst;
    assert_ne!(to, input.dst, "{input:?} was not translated");
    assert_frame_eq(
        &out,
        &input.clone().to(to).frame(),
        &format!("{} -> {} translated to {to}", input.src, input.dst),
    );
    verify_checksums(&out)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("checksums of {input:?} translated to {to}"))?;
    Ok(to)
}

/// Runs `frame` through a program and checks it came out unchanged.
fn assert_untouched(out: anyhow::Result<Vec<u8>>, frame: &[u8], what: &str) -> TestResult {
    let out = out.with_context(|| format!("running the program on {what}"))?;
    assert_frame_eq(&out, frame, &format!("{what} must pass untouched"));
    Ok(())
}

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`.
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

/// An address and port as the flow maps hold them.
type MapEnd<A> = (A, u16);

fn map_end<A>(addr: A, port: u16) -> MapEnd<A> {
    (addr, port_to_map(port))
}

/// The forward and reply entries of one flow, looked up by their exact keys.
fn flow_pair<A: Copy + PartialEq + Debug, const PAD: usize>(
    flows: &[(FlowKey<A>, FlowValue<A, PAD>)],
    proto: u8,
    client: MapEnd<A>,
    service: MapEnd<A>,
    backend: MapEnd<A>,
) -> anyhow::Result<(FlowValue<A, PAD>, FlowValue<A, PAD>)> {
    let forward = FlowKey {
        saddr: client.0,
        daddr: service.0,
        sport: client.1,
        dport: service.1,
        proto,
        dir: FLOW_FORWARD,
        _pad: [0; 2],
    };
    let reply = FlowKey {
        saddr: backend.0,
        daddr: client.0,
        sport: backend.1,
        dport: client.1,
        proto,
        dir: FLOW_REPLY,
        _pad: [0; 2],
    };
    let find = |key: FlowKey<A>| {
        flows
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .with_context(|| format!("no flow entry {key:?} in {flows:#?}"))
    };
    Ok((find(forward)?, find(reply)?))
}

/// Checks that the flow maps hold exactly the two entries of one new flow, each with the right
/// translation, the same backend and service IDs, no flags and the same expiry ahead.
fn assert_one_flow<A: Copy + PartialEq + Debug, const PAD: usize>(
    flows: &[(FlowKey<A>, FlowValue<A, PAD>)],
    proto: u8,
    client: MapEnd<A>,
    service: MapEnd<A>,
    backend: MapEnd<A>,
) -> TestResult {
    assert_eq!(
        flows.len(),
        2,
        "one forward and one reply entry: {flows:#?}"
    );
    let (forward, reply) = flow_pair(flows, proto, client, service, backend)?;
    let now = monotonic_ns();
    // Exhaustive: a new field of the flow value must be checked here too.
    let FlowValue {
        nat_addr,
        nat_port,
        rev_nat_id,
        backend_id,
        snat_port,
        flags,
        snat_slot,
        _pad: pad,
        expires_ns,
    } = forward;
    assert_eq!((nat_addr, nat_port), backend, "forward entry: the backend");
    assert_ne!(rev_nat_id, 0, "forward entry: service ID");
    assert_ne!(backend_id, 0, "forward entry: backend ID");
    assert_eq!(flags, 0, "forward entry: flags");
    assert_eq!((snat_port, snat_slot), (0, 0), "forward entry: not SNATed");
    assert_eq!(pad, [0; PAD], "forward entry: padding");
    assert!(
        expires_ns > now,
        "forward entry: expires {expires_ns}, now {now}"
    );
    let FlowValue {
        nat_addr: reply_addr,
        nat_port: reply_port,
        rev_nat_id: reply_rev_nat_id,
        backend_id: reply_backend_id,
        snat_port: reply_snat_port,
        flags: reply_flags,
        snat_slot: reply_snat_slot,
        _pad: reply_pad,
        expires_ns: reply_expires_ns,
    } = reply;
    assert_eq!(
        (reply_addr, reply_port),
        service,
        "reply entry: the service"
    );
    assert_eq!(reply_rev_nat_id, rev_nat_id, "reply entry: service ID");
    assert_eq!(reply_backend_id, backend_id, "reply entry: backend ID");
    assert_eq!(reply_flags, 0, "reply entry: flags");
    assert_eq!(
        (reply_snat_port, reply_snat_slot),
        (0, 0),
        "reply entry: not SNATed"
    );
    assert_eq!(reply_pad, [0; PAD], "reply entry: padding");
    assert_eq!(
        reply_expires_ns, expires_ns,
        "reply entry: the flow's expiry"
    );
    Ok(())
}

fn assert_counters(lb: &Lb, expected: &[(u32, u64)]) {
    for &(index, value) in expected {
        assert_eq!(lb.stat(index), value, "counter {index}");
    }
}

// --- Translation of service traffic -------------------------------------------------------------

#[test]
fn ipv4_tcp_syn_to_a_cluster_ip_goes_to_its_backend() -> TestResult {
    let service = sock(SERVICE4, SERVICE_PORT);
    let mut lb = serving(frontend(service, Protocol::Tcp), &[backend4(1)])?;
    let client = sock(CLIENT4, CLIENT_PORT);

    let to = dnat(&mut lb, &Packet::tcp(client, service, TCP_SYN))?;

    assert_eq!(to, backend4(1));
    assert_one_flow(
        &lb.maps().flows_v4(),
        PROTO_TCP,
        map_end(CLIENT4.octets(), CLIENT_PORT),
        map_end(SERVICE4.octets(), SERVICE_PORT),
        map_end([10, 0, 2, 11], BACKEND_PORT),
    )?;
    assert_counters(
        &lb,
        &[
            (stats::TRANSLATED, 1),
            (stats::NEW_FLOWS, 1),
            (stats::NO_BACKEND, 0),
            (stats::FLOW_UPDATE_FAILED, 0),
        ],
    );
    Ok(())
}

#[test]
fn ipv4_udp_to_a_cluster_ip_goes_to_its_backend() -> TestResult {
    let service = sock(SERVICE4, 53);
    let backend = sock(Ipv4Addr::new(10, 0, 2, 53), 5353);
    let mut lb = serving(frontend(service, Protocol::Udp), &[backend])?;
    let client = sock(CLIENT4, CLIENT_PORT);

    assert_eq!(dnat(&mut lb, &Packet::udp(client, service))?, backend);
    assert_one_flow(
        &lb.maps().flows_v4(),
        PROTO_UDP,
        map_end(CLIENT4.octets(), CLIENT_PORT),
        map_end(SERVICE4.octets(), 53),
        map_end([10, 0, 2, 53], 5353),
    )?;
    assert_counters(&lb, &[(stats::TRANSLATED, 1), (stats::NEW_FLOWS, 1)]);
    Ok(())
}

#[test]
fn ipv4_udp_without_checksum_is_translated_and_keeps_a_zero_checksum() -> TestResult {
    let service = sock(SERVICE4, 53);
    let backend = sock(Ipv4Addr::new(10, 0, 2, 53), 5353);
    let mut lb = serving(frontend(service, Protocol::Udp), &[backend])?;
    let input = Packet::new(
        sock(CLIENT4, CLIENT_PORT),
        service,
        Transport::UdpNoChecksum,
    );

    let out = lb.ingress(&input.frame())?;

    // The expected frame is built with a zero checksum too (RFC 768: zero means "none").
    assert_frame_eq(
        &out,
        &input.clone().to(backend).frame(),
        "UDP without checksum",
    );
    let udp_csum = ETH_HLEN + 20 + 6;
    assert_eq!(
        out[udp_csum..udp_csum + 2],
        [0, 0],
        "UDP checksum stays zero"
    );
    verify_checksums(&out).map_err(anyhow::Error::msg)?;
    assert_counters(&lb, &[(stats::TRANSLATED, 1)]);
    Ok(())
}

#[test]
fn ipv4_with_options_is_translated_past_the_options() -> TestResult {
    let service = sock(SERVICE4, SERVICE_PORT);
    let mut lb = serving(frontend(service, Protocol::Tcp), &[backend4(1)])?;
    // Three no-operation options and an end-of-options byte: IHL 6.
    let input = Packet::tcp(sock(CLIENT4, CLIENT_PORT), service, TCP_SYN)
        .ipv4_options(&[1, 1, 1, 0])
        .payload(b"data after the options");

    assert_eq!(dnat(&mut lb, &input)?, backend4(1));
    Ok(())
}

#[test]
fn ipv6_tcp_syn_to_a_cluster_ip_goes_to_its_backend() -> TestResult {
    let service = sock(SERVICE6, SERVICE_PORT);
    let mut lb = serving(frontend(service, Protocol::Tcp), &[backend6(1)])?;
    let client = sock(CLIENT6, CLIENT_PORT);

    assert_eq!(
        dnat(&mut lb, &Packet::tcp(client, service, TCP_SYN))?,
        backend6(1)
    );
    let backend_ip = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x11);
    assert_one_flow(
        &lb.maps().flows_v6(),
        PROTO_TCP,
        map_end(CLIENT6.octets(), CLIENT_PORT),
        map_end(SERVICE6.octets(), SERVICE_PORT),
        map_end(backend_ip.octets(), BACKEND_PORT),
    )?;
    assert!(lb.maps().flows_v4().is_empty(), "no IPv4 flow");
    assert_counters(&lb, &[(stats::TRANSLATED, 1), (stats::NEW_FLOWS, 1)]);
    Ok(())
}

#[test]
fn ipv6_udp_to_a_cluster_ip_goes_to_its_backend() -> TestResult {
    let service = sock(SERVICE6, 53);
    let backend = sock(Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x53), 5353);
    let mut lb = serving(frontend(service, Protocol::Udp), &[backend])?;
    let client = sock(CLIENT6, CLIENT_PORT);

    assert_eq!(dnat(&mut lb, &Packet::udp(client, service))?, backend);
    assert_one_flow(
        &lb.maps().flows_v6(),
        PROTO_UDP,
        map_end(CLIENT6.octets(), CLIENT_PORT),
        map_end(SERVICE6.octets(), 53),
        map_end(Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x53).octets(), 5353),
    )?;
    Ok(())
}

#[test]
fn ipv6_hop_by_hop_header_before_tcp_is_walked() -> TestResult {
    let service = sock(SERVICE6, SERVICE_PORT);
    let mut lb = serving(frontend(service, Protocol::Tcp), &[backend6(1)])?;
    let input = Packet::tcp(sock(CLIENT6, CLIENT_PORT), service, TCP_SYN).ext(Ext::HopByHop);

    assert_eq!(dnat(&mut lb, &input)?, backend6(1));
    Ok(())
}

#[test]
fn ipv6_destination_options_before_udp_are_walked() -> TestResult {
    let service = sock(SERVICE6, 53);
    let backend = sock(Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x53), 5353);
    let mut lb = serving(frontend(service, Protocol::Udp), &[backend])?;
    let input = Packet::udp(sock(CLIENT6, CLIENT_PORT), service).ext(Ext::DestOpts);

    assert_eq!(dnat(&mut lb, &input)?, backend);
    Ok(())
}

#[test]
fn ipv6_chain_of_extension_headers_before_tcp_is_walked() -> TestResult {
    let service = sock(SERVICE6, SERVICE_PORT);
    let mut lb = serving(frontend(service, Protocol::Tcp), &[backend6(1)])?;
    let input = Packet::tcp(sock(CLIENT6, CLIENT_PORT), service, TCP_SYN)
        .ext(Ext::HopByHop)
        .ext(Ext::DestOpts)
        .ext(Ext::DestOpts)
        .ext(Ext::DestOpts)
        .payload(b"odd-length payload!");

    assert_eq!(dnat(&mut lb, &input)?, backend6(1));
    assert_counters(&lb, &[(stats::UNPARSED_EXT_HEADERS, 0)]);
    Ok(())
}

#[test]
fn ipv6_with_more_extension_headers_than_walked_is_untouched_and_counted() -> TestResult {
    let service = sock(SERVICE6, SERVICE_PORT);
    let mut lb = serving(frontend(service, Protocol::Tcp), &[backend6(1)])?;
    let mut input = Packet::tcp(sock(CLIENT6, CLIENT_PORT), service, TCP_SYN).ext(Ext::HopByHop);
    for _ in 0..4 {
        input = input.ext(Ext::DestOpts);
    }
    let frame = input.frame();

    assert_untouched(lb.ingress(&frame), &frame, "five extension headers")?;
    assert_counters(
        &lb,
        &[(stats::UNPARSED_EXT_HEADERS, 1), (stats::TRANSLATED, 0)],
    );
    Ok(())
}

// --- Reverse translation of replies -------------------------------------------------------------

/// A request, the backend's reply and the client's next packet.
fn exchange(
    service: SocketAddr,
    protocol: Protocol,
    client: SocketAddr,
    backend: SocketAddr,
) -> (Packet, Packet, Packet) {
    match protocol {
        Protocol::Tcp => (
            Packet::tcp(client, service, TCP_SYN),
            Packet::tcp(backend, client, TCP_SYN | TCP_ACK),
            Packet::tcp(client, service, TCP_ACK).payload(b"GET / HTTP/1.1\r\n"),
        ),
        _ => (
            Packet::udp(client, service),
            Packet::udp(backend, client).payload(b"an answer"),
            Packet::udp(client, service).payload(b"another question"),
        ),
    }
}

/// A request goes out through ingress, its reply comes back through egress: the reply must come
/// from the service address and port, byte for byte, with fresh checksums.
fn reply_is_reverse_translated(
    service: SocketAddr,
    protocol: Protocol,
    client: SocketAddr,
    backend: SocketAddr,
) -> TestResult {
    let mut lb = serving(frontend(service, protocol), &[backend])?;
    let (request, reply, next) = exchange(service, protocol, client, backend);
    assert_eq!(dnat(&mut lb, &request)?, backend);

    let out = lb.egress(&reply.frame())?;

    assert_frame_eq(
        &out,
        &reply.clone().from(service).frame(),
        &format!("reply from {backend} to {client}"),
    );
    verify_checksums(&out).map_err(anyhow::Error::msg)?;
    assert_eq!(
        dnat(&mut lb, &next)?,
        backend,
        "the next packet uses the flow"
    );
    assert_counters(
        &lb,
        &[
            (stats::REVERSED, 1),
            (stats::TRANSLATED, 2),
            (stats::NEW_FLOWS, 1),
        ],
    );
    Ok(())
}

#[test]
fn ipv4_tcp_reply_comes_from_the_service() -> TestResult {
    reply_is_reverse_translated(
        sock(SERVICE4, SERVICE_PORT),
        Protocol::Tcp,
        sock(CLIENT4, CLIENT_PORT),
        backend4(1),
    )
}

#[test]
fn ipv4_udp_reply_comes_from_the_service() -> TestResult {
    reply_is_reverse_translated(
        sock(SERVICE4, 53),
        Protocol::Udp,
        sock(CLIENT4, CLIENT_PORT),
        sock(Ipv4Addr::new(10, 0, 2, 53), 5353),
    )
}

#[test]
fn ipv6_tcp_reply_comes_from_the_service() -> TestResult {
    reply_is_reverse_translated(
        sock(SERVICE6, SERVICE_PORT),
        Protocol::Tcp,
        sock(CLIENT6, CLIENT_PORT),
        backend6(1),
    )
}

#[test]
fn ipv6_udp_reply_comes_from_the_service() -> TestResult {
    reply_is_reverse_translated(
        sock(SERVICE6, 53),
        Protocol::Udp,
        sock(CLIENT6, CLIENT_PORT),
        sock(Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x53), 5353),
    )
}

// --- skb->csum of CHECKSUM_COMPLETE packets ----------------------------------------------------

/// Both translations on skbs in the CHECKSUM_COMPLETE state (packets from a NIC that checksums in
/// hardware): besides the packet, `skb->csum` must still match it, or the stack logs "hw csum
/// failure" and verifies the packet in software. The kernel checks this after the run.
fn checksum_complete_stays_consistent(
    service: SocketAddr,
    protocol: Protocol,
    client: SocketAddr,
    backend: SocketAddr,
) -> TestResult {
    let mut lb = serving(frontend(service, protocol), &[backend])?;
    let (request, reply, _) = exchange(service, protocol, client, backend);

    let out = lb.ingress_checksum_complete(&request.frame())?;
    assert_frame_eq(&out, &request.clone().to(backend).frame(), "request");
    let out = lb.egress_checksum_complete(&reply.frame())?;
    assert_frame_eq(&out, &reply.clone().from(service).frame(), "reply");
    assert_counters(&lb, &[(stats::TRANSLATED, 1), (stats::REVERSED, 1)]);
    Ok(())
}

#[test]
fn ipv4_tcp_translation_keeps_checksum_complete_consistent() -> TestResult {
    checksum_complete_stays_consistent(
        sock(SERVICE4, SERVICE_PORT),
        Protocol::Tcp,
        sock(CLIENT4, CLIENT_PORT),
        backend4(1),
    )
}

#[test]
fn ipv4_udp_translation_keeps_checksum_complete_consistent() -> TestResult {
    checksum_complete_stays_consistent(
        sock(SERVICE4, 53),
        Protocol::Udp,
        sock(CLIENT4, CLIENT_PORT),
        sock(Ipv4Addr::new(10, 0, 2, 53), 5353),
    )
}

#[test]
fn ipv6_tcp_translation_keeps_checksum_complete_consistent() -> TestResult {
    checksum_complete_stays_consistent(
        sock(SERVICE6, SERVICE_PORT),
        Protocol::Tcp,
        sock(CLIENT6, CLIENT_PORT),
        backend6(1),
    )
}

#[test]
fn ipv6_udp_translation_keeps_checksum_complete_consistent() -> TestResult {
    checksum_complete_stays_consistent(
        sock(SERVICE6, 53),
        Protocol::Udp,
        sock(CLIENT6, CLIENT_PORT),
        sock(Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x53), 5353),
    )
}

/// Without a UDP checksum nothing in the packet balances the port change: `skb->csum` must follow
/// it.
#[test]
fn ipv4_udp_without_checksum_keeps_checksum_complete_consistent() -> TestResult {
    let service = sock(SERVICE4, 53);
    let backend = sock(Ipv4Addr::new(10, 0, 2, 53), 5353);
    let client = sock(CLIENT4, CLIENT_PORT);
    let mut lb = serving(frontend(service, Protocol::Udp), &[backend])?;
    let request = Packet::new(client, service, Transport::UdpNoChecksum);
    let reply = Packet::new(backend, client, Transport::UdpNoChecksum).payload(b"an answer");

    let out = lb.ingress_checksum_complete(&request.frame())?;
    assert_frame_eq(&out, &request.clone().to(backend).frame(), "request");
    let out = lb.egress_checksum_complete(&reply.frame())?;
    assert_frame_eq(&out, &reply.clone().from(service).frame(), "reply");
    Ok(())
}

#[test]
fn ipv6_extension_headers_keep_checksum_complete_consistent() -> TestResult {
    let service = sock(SERVICE6, SERVICE_PORT);
    let mut lb = serving(frontend(service, Protocol::Tcp), &[backend6(1)])?;
    let request = Packet::tcp(sock(CLIENT6, CLIENT_PORT), service, TCP_SYN)
        .ext(Ext::HopByHop)
        .ext(Ext::DestOpts);

    let out = lb.ingress_checksum_complete(&request.frame())?;
    assert_frame_eq(&out, &request.clone().to(backend6(1)).frame(), "request");
    Ok(())
}

#[test]
fn egress_without_a_flow_is_untouched() -> TestResult {
    let service = sock(SERVICE4, SERVICE_PORT);
    let mut lb = serving(frontend(service, Protocol::Tcp), &[backend4(1)])?;
    let client = sock(CLIENT4, CLIENT_PORT);
    assert_eq!(
        dnat(&mut lb, &Packet::tcp(client, service, TCP_SYN))?,
        backend4(1)
    );

    let cases = [
        (
            "reply from the backend to another client port",
            Packet::tcp(
                backend4(1),
                sock(CLIENT4, CLIENT_PORT + 1),
                TCP_SYN | TCP_ACK,
            ),
        ),
        (
            "packet from the backend's address but another port",
            Packet::tcp(sock(Ipv4Addr::new(10, 0, 2, 11), 9090), client, TCP_ACK),
        ),
        (
            "UDP with the tuple of the TCP flow",
            Packet::udp(backend4(1), client),
        ),
        (
            "the request itself, seen on egress",
            Packet::tcp(client, service, TCP_SYN),
        ),
    ];
    for (what, packet) in cases {
        let frame = packet.frame();
        assert_untouched(lb.egress(&frame), &frame, what)?;
    }
    assert_counters(&lb, &[(stats::REVERSED, 0)]);
    Ok(())
}

// --- Traffic that is not ours --------------------------------------------------------------------

#[test]
fn non_service_traffic_is_untouched() -> TestResult {
    let service4 = sock(SERVICE4, SERVICE_PORT);
    let service6 = sock(SERVICE6, SERVICE_PORT);
    let mut lb = Lb::load()?;
    lb.apply(&[
        (frontend(service4, Protocol::Tcp), &[backend4(1)]),
        (frontend(service6, Protocol::Tcp), &[backend6(1)]),
    ])?;
    let client4 = sock(CLIENT4, CLIENT_PORT);
    let client6 = sock(CLIENT6, CLIENT_PORT);

    let cases = [
        (
            "IPv4 TCP to an address that is no service",
            Packet::tcp(client4, sock(NOT_A_SERVICE4, SERVICE_PORT), TCP_SYN).frame(),
        ),
        (
            "IPv4 TCP to another port of the service address",
            Packet::tcp(client4, sock(SERVICE4, 443), TCP_SYN).frame(),
        ),
        (
            "IPv4 UDP to a TCP-only service port",
            Packet::udp(client4, service4).frame(),
        ),
        (
            "ICMP echo to the service address",
            Packet::new(sock(CLIENT4, 0), sock(SERVICE4, 0), Transport::IcmpEcho).frame(),
        ),
        (
            "ARP request for the service address",
            arp_request(CLIENT4.octets(), SERVICE4.octets()),
        ),
        (
            "IPv6 TCP to an address that is no service",
            Packet::tcp(client6, sock(NOT_A_SERVICE6, SERVICE_PORT), TCP_SYN).frame(),
        ),
        (
            "IPv6 TCP to another port of the service address",
            Packet::tcp(client6, sock(SERVICE6, 443), TCP_SYN).frame(),
        ),
        (
            "IPv6 UDP to a TCP-only service port",
            Packet::udp(client6, service6).frame(),
        ),
        (
            "ICMPv6 echo to the service address",
            Packet::new(sock(CLIENT6, 0), sock(SERVICE6, 0), Transport::IcmpEcho).frame(),
        ),
    ];
    for (what, frame) in cases {
        // The fixture itself must be well formed, or "untouched" would prove little.
        if !what.starts_with("ARP") {
            verify_checksums(&frame)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("fixture {what}"))?;
        }
        assert_untouched(lb.ingress(&frame), &frame, what)?;
    }
    assert!(lb.maps().flows_v4().is_empty(), "no IPv4 flow");
    assert!(lb.maps().flows_v6().is_empty(), "no IPv6 flow");
    assert_counters(
        &lb,
        &[
            (stats::TRANSLATED, 0),
            (stats::NEW_FLOWS, 0),
            (stats::NO_BACKEND, 0),
        ],
    );
    Ok(())
}

#[test]
fn ipv4_fragments_to_a_service_are_untouched_and_counted() -> TestResult {
    let service = sock(SERVICE4, SERVICE_PORT);
    let mut lb = serving(frontend(service, Protocol::Tcp), &[backend4(1)])?;
    let syn = Packet::tcp(sock(CLIENT4, CLIENT_PORT), service, TCP_SYN).payload(&[0x5a; 32]);

    let cases = [
        (
            "first fragment (MF set, offset 0)",
            syn.clone().frag_off(IP_MF),
        ),
        (
            "middle fragment (MF set, offset 1480)",
            syn.clone().frag_off(IP_MF | 185),
        ),
        ("last fragment (offset 1480)", syn.clone().frag_off(185)),
    ];
    for (n, (what, packet)) in cases.into_iter().enumerate() {
        let frame = packet.frame();
        assert_untouched(lb.ingress(&frame), &frame, what)?;
        assert_eq!(lb.stat(stats::FRAGMENTS), n as u64 + 1, "{what} is counted");
    }
    assert!(lb.maps().flows_v4().is_empty(), "no flow");
    assert_counters(&lb, &[(stats::TRANSLATED, 0)]);
    Ok(())
}

#[test]
fn ipv6_fragment_header_to_a_service_is_untouched_and_counted() -> TestResult {
    let service = sock(SERVICE6, SERVICE_PORT);
    let mut lb = serving(frontend(service, Protocol::Tcp), &[backend6(1)])?;
    let syn = Packet::tcp(sock(CLIENT6, CLIENT_PORT), service, TCP_SYN).payload(&[0x5a; 32]);

    let cases = [
        (
            "fragment header before TCP",
            syn.clone().ext(Ext::Fragment { more: true }),
        ),
        (
            "atomic fragment (RFC 6946) before TCP",
            syn.clone().ext(Ext::Fragment { more: false }),
        ),
        (
            "fragment header after a hop-by-hop header",
            syn.clone()
                .ext(Ext::HopByHop)
                .ext(Ext::Fragment { more: true }),
        ),
    ];
    for (n, (what, packet)) in cases.into_iter().enumerate() {
        let frame = packet.frame();
        assert_untouched(lb.ingress(&frame), &frame, what)?;
        assert_eq!(lb.stat(stats::FRAGMENTS), n as u64 + 1, "{what} is counted");
    }
    assert!(lb.maps().flows_v6().is_empty(), "no flow");
    assert_counters(&lb, &[(stats::TRANSLATED, 0)]);
    Ok(())
}

/// Whether a test run failed because the kernel refused the input frame (EINVAL) before running
/// the program.
fn refused_by_kernel(result: &anyhow::Result<Vec<u8>>) -> bool {
    let Err(e) = result else {
        return false;
    };
    matches!(
        e.downcast_ref::<ProgramError>(),
        Some(ProgramError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::EINVAL)
    )
}

#[test]
fn frames_cut_inside_the_ip_header_are_untouched_or_never_reach_the_programs() -> TestResult {
    let service4 = sock(SERVICE4, SERVICE_PORT);
    let service6 = sock(SERVICE6, SERVICE_PORT);
    let mut lb = Lb::load()?;
    lb.apply(&[
        (frontend(service4, Protocol::Tcp), &[backend4(1)]),
        (frontend(service6, Protocol::Tcp), &[backend6(1)]),
    ])?;
    let syn4 = Packet::tcp(sock(CLIENT4, CLIENT_PORT), service4, TCP_SYN).frame();
    let syn6 = Packet::tcp(sock(CLIENT6, CLIENT_PORT), service6, TCP_SYN).frame();
    let cases = [
        ("Ethernet header only, IPv4 ethertype", &syn4[..ETH_HLEN]),
        ("Ethernet header only, IPv6 ethertype", &syn6[..ETH_HLEN]),
        ("IPv4 header cut short", &syn4[..ETH_HLEN + 10]),
        ("IPv6 header cut short", &syn6[..ETH_HLEN + 20]),
    ];

    for (what, frame) in cases {
        for (program, out) in [("ingress", lb.ingress(frame)), ("egress", lb.egress(frame))] {
            // Linux 6.18 refuses IP frames shorter than their fixed IP header with EINVAL before
            // any program runs; a kernel that lets them through must see them pass untouched.
            if !refused_by_kernel(&out) {
                assert_untouched(out, frame, &format!("{what} ({program})"))?;
            }
        }
    }
    assert!(lb.maps().flows_v4().is_empty(), "no IPv4 flow");
    assert!(lb.maps().flows_v6().is_empty(), "no IPv6 flow");
    assert_counters(&lb, &[(stats::TRANSLATED, 0), (stats::REVERSED, 0)]);
    Ok(())
}

#[test]
fn frames_cut_after_the_ip_header_are_untouched() -> TestResult {
    let service4 = sock(SERVICE4, SERVICE_PORT);
    let service6 = sock(SERVICE6, SERVICE_PORT);
    let udp_service4 = sock(SERVICE4, 53);
    let mut lb = Lb::load()?;
    lb.apply(&[
        (frontend(service4, Protocol::Tcp), &[backend4(1)]),
        (frontend(service6, Protocol::Tcp), &[backend6(1)]),
        (frontend(udp_service4, Protocol::Udp), &[backend4(1)]),
    ])?;
    let syn4 = Packet::tcp(sock(CLIENT4, CLIENT_PORT), service4, TCP_SYN).frame();
    let syn6 = Packet::tcp(sock(CLIENT6, CLIENT_PORT), service6, TCP_SYN).frame();
    let hop6 = Packet::tcp(sock(CLIENT6, CLIENT_PORT), service6, TCP_SYN)
        .ext(Ext::HopByHop)
        .frame();
    let udp4 = Packet::udp(sock(CLIENT4, CLIENT_PORT), udp_service4).frame();
    let mut ihl_past_the_end = syn4[..ETH_HLEN + 20].to_vec();
    ihl_past_the_end[ETH_HLEN] = 0x4f; // IHL 15: 60 bytes of header in a 20-byte packet
    let (ip4, ip6) = (ETH_HLEN + 20, ETH_HLEN + 40);
    let cases: [(&str, &[u8]); 7] = [
        (
            "ARP ethertype, Ethernet header only",
            &arp_request(CLIENT4.octets(), SERVICE4.octets())[..ETH_HLEN],
        ),
        (
            "IPv4 header whose IHL runs past the frame",
            &ihl_past_the_end,
        ),
        ("IPv4 TCP header cut after the ports", &syn4[..ip4 + 4]),
        ("IPv4 TCP header cut before the checksum", &syn4[..ip4 + 14]),
        ("IPv4 UDP header cut after the ports", &udp4[..ip4 + 4]),
        ("IPv6 TCP header cut after the ports", &syn6[..ip6 + 4]),
        ("IPv6 hop-by-hop header cut short", &hop6[..ip6 + 1]),
    ];

    for (what, frame) in cases {
        assert_untouched(lb.ingress(frame), frame, &format!("{what} (ingress)"))?;
        assert_untouched(lb.egress(frame), frame, &format!("{what} (egress)"))?;
    }
    assert!(
        lb.maps().flows_v4().is_empty(),
        "no IPv4 flow: {:#?}",
        lb.maps().flows_v4()
    );
    assert!(
        lb.maps().flows_v6().is_empty(),
        "no IPv6 flow: {:#?}",
        lb.maps().flows_v6()
    );
    assert_counters(
        &lb,
        &[
            (stats::TRANSLATED, 0),
            (stats::REVERSED, 0),
            (stats::NEW_FLOWS, 0),
        ],
    );
    Ok(())
}

// --- Backend selection and flow affinity ---------------------------------------------------------

#[test]
fn new_flows_spread_over_every_backend() -> TestResult {
    const FLOWS: u16 = 400;
    let service = sock(SERVICE4, SERVICE_PORT);
    let backends: Vec<SocketAddr> = (1..=4).map(backend4).collect();
    let mut lb = serving(frontend(service, Protocol::Tcp), &backends)?;

    let mut per_backend: HashMap<SocketAddr, usize> = HashMap::new();
    for sport in 20_000..20_000 + FLOWS {
        let syn = Packet::tcp(sock(CLIENT4, sport), service, TCP_SYN);
        *per_backend.entry(dnat(&mut lb, &syn)?).or_default() += 1;
    }

    let reached: BTreeSet<SocketAddr> = per_backend.keys().copied().collect();
    let expected: BTreeSet<SocketAddr> = backends.iter().copied().collect();
    // With a uniform choice, missing one of 4 backends in 400 flows has probability ~1e-49.
    assert_eq!(reached, expected, "backends reached: {per_backend:?}");
    assert_counters(
        &lb,
        &[
            (stats::NEW_FLOWS, u64::from(FLOWS)),
            (stats::FLOW_UPDATE_FAILED, 0),
        ],
    );
    assert_eq!(lb.maps().flows_v4().len(), 2 * usize::from(FLOWS));
    Ok(())
}

#[test]
fn packets_of_one_flow_stay_with_its_backend() -> TestResult {
    let service = sock(SERVICE4, SERVICE_PORT);
    let backends: Vec<SocketAddr> = (1..=4).map(backend4).collect();
    let mut lb = serving(frontend(service, Protocol::Tcp), &backends)?;

    for sport in 30_000..30_020 {
        let client = sock(CLIENT4, sport);
        let chosen = dnat(&mut lb, &Packet::tcp(client, service, TCP_SYN))?;
        for i in 0..10_u8 {
            let ack = Packet::tcp(client, service, TCP_ACK).payload(&[i; 10]);
            assert_eq!(
                dnat(&mut lb, &ack)?,
                chosen,
                "packet {i} of the flow from {client}"
            );
        }
    }
    assert_counters(&lb, &[(stats::NEW_FLOWS, 20), (stats::TRANSLATED, 20 * 11)]);
    Ok(())
}

#[test]
fn service_without_endpoints_in_its_scope_drops_and_counts_once_for_both_families() -> TestResult {
    // Endpoints exist, none in this frontend's scope (internalTrafficPolicy Local without a
    // local one): kube-proxy drops.
    for (service, client) in [
        (sock(SERVICE4, SERVICE_PORT), sock(CLIENT4, CLIENT_PORT)),
        (sock(SERVICE6, SERVICE_PORT), sock(CLIENT6, CLIENT_PORT)),
    ] {
        let mut lb = serving(frontend(service, Protocol::Tcp), &[])?;
        let frame = Packet::tcp(client, service, TCP_SYN).frame();
        let (verdict, _) = lb.ingress_verdict(&frame)?;
        assert_eq!(
            verdict, TC_ACT_SHOT,
            "SYN to {service} without backends in scope"
        );
        assert_drops(&lb, &[(stats::NO_BACKEND, 1)], &service.to_string());
        assert_counters(&lb, &[(stats::TRANSLATED, 0), (stats::NEW_FLOWS, 0)]);
        assert!(lb.maps().flows_v4().is_empty(), "no IPv4 flow");
        assert!(lb.maps().flows_v6().is_empty(), "no IPv6 flow");
    }
    Ok(())
}

/// `frame` with its Ethernet source and destination swapped: the way back to the sender.
fn reversed_macs(mut frame: Vec<u8>) -> Vec<u8> {
    let (dst, src) = (frame[0..6].to_vec(), frame[6..12].to_vec());
    frame[0..6].copy_from_slice(&src);
    frame[6..12].copy_from_slice(&dst);
    frame
}

#[test]
fn connections_to_a_service_without_any_endpoint_are_reset_from_the_service_for_both_families()
-> TestResult {
    for (service, client) in [
        (sock(SERVICE4, SERVICE_PORT), sock(CLIENT4, CLIENT_PORT)),
        (sock(SERVICE6, SERVICE_PORT), sock(CLIENT6, CLIENT_PORT)),
    ] {
        let mut lb = Lb::load()?;
        lb.apply_states(&[
            rejecting(frontend(service, Protocol::Tcp)),
            rejecting(frontend(service, Protocol::Udp)),
        ])?;
        // A SYN (sequence 0x0a0b0c0d, no ACK): RST+ACK acknowledging it, sequence 0.
        let syn = Packet::tcp(client, service, TCP_SYN).frame();
        let (verdict, out) = lb.ingress_verdict(&syn)?;
        assert_eq!(
            verdict, TC_ACT_REDIRECT,
            "{service}: sent back to the client"
        );
        let reset = Transport::TcpWith {
            flags: TCP_RST | TCP_ACK,
            seq: 0,
            ack: 0x0a0b_0c0e,
            window: 0,
        };
        let expected = reversed_macs(Packet::new(service, client, reset).frame());
        assert_frame_eq(&out, &expected, &format!("reset for the SYN to {service}"));
        verify_checksums(&out).map_err(anyhow::Error::msg)?;
        // A segment with ACK (acknowledging 0x01020304) and no data: RST with that sequence.
        let ack = Packet::tcp(client, service, TCP_ACK).frame();
        let (verdict, out) = lb.ingress_verdict(&ack)?;
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let reset = Transport::TcpWith {
            flags: TCP_RST,
            seq: 0x0102_0304,
            ack: 0,
            window: 0,
        };
        let expected = reversed_macs(Packet::new(service, client, reset).frame());
        assert_frame_eq(&out, &expected, &format!("reset for the ACK to {service}"));
        verify_checksums(&out).map_err(anyhow::Error::msg)?;
        // Data and resets are dropped.
        for frame in [
            Packet::tcp(client, service, TCP_ACK)
                .payload(b"GET /")
                .frame(),
            Packet::tcp(client, service, TCP_RST).frame(),
        ] {
            let (verdict, _) = lb.ingress_verdict(&frame)?;
            assert_eq!(verdict, TC_ACT_SHOT);
        }
        // Four refusals, each counted once: as refused, not also as without a backend.
        assert_drops(&lb, &[(stats::REJECTED, 4)], &service.to_string());
        assert_eq!(lb.stat(stats::TRANSLATED), 0);
    }
    Ok(())
}

/// Runs a UDP datagram to a refusing frontend through the ingress program and checks the answer
/// is sent back (a redirect) and is, byte for byte, the port unreachable built independently by
/// [`port_unreachable`] from `expected_from` (the frame whose IP packet the answer quotes), with
/// every checksum valid.
fn assert_port_unreachable(
    (verdict, out): (u32, Vec<u8>),
    expected_from: &[u8],
    what: &str,
) -> TestResult {
    assert_eq!(verdict, TC_ACT_REDIRECT, "{what}: sent back to the client");
    let expected = port_unreachable(expected_from);
    assert_frame_eq(&out, &expected, what);
    // Said once more on its own: what follows the new IP and ICMP headers is the invoking IP
    // packet's first bytes, as many as fit, unchanged.
    let (headers, limit) = if out[12..14] == ETH_P_IP.to_be_bytes() {
        (20 + 8, ICMP_MAX_LEN)
    } else {
        (40 + 8, IPV6_MIN_MTU)
    };
    let quoted = &out[ETH_HLEN + headers..];
    let invoking = &expected_from[ETH_HLEN..];
    assert_eq!(
        quoted.len(),
        invoking.len().min(limit - headers),
        "{what}: quote length"
    );
    assert_eq!(quoted, &invoking[..quoted.len()], "{what}: quoted bytes");
    verify_checksums(&out)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("checksums of the answer to {what}"))?;
    Ok(())
}

/// The datagrams each family's answer is checked on: short and odd-length, empty, long enough to
/// be cut (the answer quotes at most 548 bytes of an IPv4 packet and 1232 of an IPv6 one), with
/// IPv4 options and without a UDP checksum, with IPv6 extension headers.
fn refused_datagrams(client: SocketAddr, service: SocketAddr) -> Vec<(&'static str, Packet)> {
    let udp = Packet::udp(client, service);
    let mut cases = vec![
        ("a 5-byte datagram", udp.clone()),
        ("an empty datagram", udp.clone().payload(b"")),
        ("a 1000-byte datagram", udp.clone().payload(&[0xa5; 1000])),
        ("a 1401-byte datagram", udp.clone().payload(&[0x5a; 1401])),
    ];
    if client.is_ipv4() {
        cases.push((
            "a datagram with IPv4 options",
            udp.clone().ipv4_options(&[1, 1, 1, 0]),
        ));
        cases.push((
            "a datagram without UDP checksum",
            Packet::new(client, service, Transport::UdpNoChecksum),
        ));
    } else {
        cases.push((
            "a datagram after two extension headers",
            udp.clone().ext(Ext::HopByHop).ext(Ext::DestOpts),
        ));
    }
    cases
}

#[test]
fn udp_to_a_service_without_any_endpoint_is_answered_with_port_unreachable_for_both_families()
-> TestResult {
    for (service, client) in [
        (sock(SERVICE4, 53), sock(CLIENT4, CLIENT_PORT)),
        (sock(SERVICE6, 53), sock(CLIENT6, CLIENT_PORT)),
    ] {
        let mut lb = Lb::load()?;
        lb.apply_states(&[rejecting(frontend(service, Protocol::Udp))])?;
        let cases = refused_datagrams(client, service);
        for (what, datagram) in &cases {
            let what = format!("{what} to {service}");
            let frame = datagram.frame();
            assert_port_unreachable(lb.ingress_verdict(&frame)?, &frame, &what)?;
        }
        // Ethernet padding after the IP packet is not quoted.
        let padded = [Packet::udp(client, service).frame(), vec![0; 20]].concat();
        assert_port_unreachable(
            lb.ingress_verdict(&padded)?,
            &Packet::udp(client, service).frame(),
            &format!("a padded frame to {service}"),
        )?;
        // Each datagram refused once, counted once.
        assert_drops(
            &lb,
            &[(stats::REJECTED, cases.len() as u64 + 1)],
            &service.to_string(),
        );
        assert_eq!(lb.stat(stats::TRANSLATED), 0);
        assert!(lb.maps().flows_v4().is_empty() && lb.maps().flows_v6().is_empty());
    }
    Ok(())
}

/// A datagram that is not cut (the whole IP packet is quoted) leaves the skb CHECKSUM_COMPLETE:
/// `skb->csum` must then cover the new headers too. (A cut skb turns CHECKSUM_NONE, whose
/// `skb->csum` the kernel no longer reads; BPF_PROG_TEST_RUN would compare it all the same.)
#[test]
fn port_unreachable_keeps_checksum_complete_consistent_for_both_families() -> TestResult {
    for (service, client) in [
        (sock(SERVICE4, 53), sock(CLIENT4, CLIENT_PORT)),
        (sock(SERVICE6, 53), sock(CLIENT6, CLIENT_PORT)),
    ] {
        let mut lb = Lb::load()?;
        lb.apply_states(&[rejecting(frontend(service, Protocol::Udp))])?;
        for datagram in [
            Packet::udp(client, service),
            Packet::udp(client, service).payload(&[0x33; 501]),
        ] {
            let frame = datagram.frame();
            assert_port_unreachable(
                lb.ingress_checksum_complete_verdict(&frame)?,
                &frame,
                &format!("CHECKSUM_COMPLETE datagram to {service}"),
            )?;
        }
    }
    Ok(())
}

#[test]
fn icmp_and_fragments_to_a_refusing_service_address_are_never_answered() -> TestResult {
    for (service, client) in [
        (sock(SERVICE4, 53), sock(CLIENT4, CLIENT_PORT)),
        (sock(SERVICE6, 53), sock(CLIENT6, CLIENT_PORT)),
    ] {
        let mut lb = Lb::load()?;
        lb.apply_states(&[
            rejecting(frontend(service, Protocol::Udp)),
            rejecting(frontend(sock(service.ip(), SERVICE_PORT), Protocol::Tcp)),
        ])?;
        let udp = Packet::udp(client, service).payload(&[0x42; 64]);
        let mut cases = vec![
            // ICMP has no port: it matches no frontend, and ICMP is never answered with ICMP.
            (
                "an ICMP echo request",
                Packet::new(client, service, Transport::IcmpEcho),
            ),
        ];
        if client.is_ipv4() {
            cases.push(("a later fragment", udp.clone().frag_off(185)));
            cases.push(("a middle fragment", udp.clone().frag_off(IP_MF | 185)));
            cases.push(("a first fragment", udp.clone().frag_off(IP_MF)));
        } else {
            cases.push(("a later fragment", udp.clone().ext(Ext::LaterFragment)));
            cases.push((
                "a first fragment",
                udp.clone().ext(Ext::Fragment { more: true }),
            ));
        }
        for (what, packet) in cases {
            let frame = packet.frame();
            let (verdict, out) = lb.ingress_verdict(&frame)?;
            // Fragments carry no port (but the first): passed on untouched, as every fragment
            // is, by rule, and never refused.
            assert_eq!(verdict, TC_ACT_OK, "{what} to {service}: not answered");
            assert_frame_eq(&out, &frame, &format!("{what} to {service} is untouched"));
        }
        assert_drops(&lb, &[], &service.to_string());
    }
    Ok(())
}

#[test]
fn datagrams_an_icmp_error_must_not_answer_are_dropped_and_counted_once() -> TestResult {
    let multicast4 = sock(Ipv4Addr::new(239, 1, 2, 3), 53);
    let broadcast4 = sock(Ipv4Addr::BROADCAST, 53);
    let multicast6 = sock("ff05::53".parse::<Ipv6Addr>()?, 53);
    let service4 = sock(SERVICE4, 53);
    let service6 = sock(SERVICE6, 53);
    let mut lb = Lb::load()?;
    lb.apply_states(&[
        rejecting(frontend(service4, Protocol::Udp)),
        rejecting(frontend(service6, Protocol::Udp)),
        rejecting(frontend(multicast4, Protocol::Udp)),
        rejecting(frontend(broadcast4, Protocol::Udp)),
        rejecting(frontend(multicast6, Protocol::Udp)),
    ])?;
    let to_group_mac = |mut frame: Vec<u8>| {
        frame[0..6].copy_from_slice(&[0xff; 6]);
        frame
    };
    let (client4, client6) = (sock(CLIENT4, CLIENT_PORT), sock(CLIENT6, CLIENT_PORT));
    let cases = [
        (
            "to the Ethernet broadcast address (IPv4)",
            to_group_mac(Packet::udp(client4, service4).frame()),
        ),
        (
            "to the Ethernet broadcast address (IPv6)",
            to_group_mac(Packet::udp(client6, service6).frame()),
        ),
        (
            "to an IPv4 multicast group",
            Packet::udp(client4, multicast4).frame(),
        ),
        (
            "to the IPv4 broadcast address",
            Packet::udp(client4, broadcast4).frame(),
        ),
        (
            "to an IPv6 multicast group",
            Packet::udp(client6, multicast6).frame(),
        ),
        (
            "from 0.0.0.0",
            Packet::udp(sock(Ipv4Addr::UNSPECIFIED, 68), service4).frame(),
        ),
        (
            "from an IPv4 multicast address",
            Packet::udp(sock(Ipv4Addr::new(224, 0, 0, 9), 520), service4).frame(),
        ),
        (
            "from ::",
            Packet::udp(sock(Ipv6Addr::UNSPECIFIED, 546), service6).frame(),
        ),
        (
            "from an IPv6 multicast address",
            Packet::udp(sock("ff02::1".parse::<Ipv6Addr>()?, 521), service6).frame(),
        ),
    ];
    for (what, frame) in &cases {
        let (verdict, _) = lb.ingress_verdict(frame)?;
        assert_eq!(
            verdict, TC_ACT_SHOT,
            "a datagram {what}: dropped, not answered"
        );
    }
    // Refused all the same, once each.
    assert_drops(
        &lb,
        &[(stats::REJECTED, cases.len() as u64)],
        "not answered",
    );
    Ok(())
}

/// The UDP checksum a device completing a CHECKSUM_PARTIAL skb writes over `udp` (from its
/// start to the end of the skb): `skb_checksum_help`, the complement of the sum, 0 sent as
/// 0xffff.
fn offload_completion(udp: &[u8]) -> u16 {
    match !ones_complement_sum(udp) {
        0 => 0xffff,
        c => c,
    }
}

/// A datagram from a pod's socket (checksum offload: the UDP checksum field holds the
/// pseudo-header sum, and the kernel would complete it later) is quoted with that field set so
/// that a completion of the answer, by a device on its way, changes nothing: the answer's ICMP
/// checksum holds whether the quoted UDP checksum gets completed or not.
#[test]
fn a_datagram_with_an_offload_seed_is_quoted_so_that_completing_it_keeps_the_answer_valid()
-> TestResult {
    for (service, client) in [
        (sock(SERVICE4, 53), sock(CLIENT4, CLIENT_PORT)),
        (sock(SERVICE6, 53), sock(CLIENT6, CLIENT_PORT)),
    ] {
        let mut lb = Lb::load()?;
        lb.apply_states(&[rejecting(frontend(service, Protocol::Udp))])?;
        for payload in [&b"hello"[..], &[0x77; 1300][..]] {
            let datagram = Packet::udp(client, service).payload(payload);
            let mut frame = datagram.frame();
            let udp_at = ETH_HLEN + if client.is_ipv4() { 20 } else { 40 };
            let udp_len = datagram.payload.len() + 8;
            // What the sending kernel leaves in the field: the folded pseudo-header sum.
            let seed = ones_complement_sum(&pseudo_header(
                client.ip(),
                service.ip(),
                PROTO_UDP,
                udp_len,
            ));
            frame[udp_at + 6..udp_at + 8].copy_from_slice(&seed.to_be_bytes());
            let (verdict, out) = lb.ingress_verdict(&frame)?;
            let what = format!("{}-byte seeded datagram to {service}", payload.len());
            assert_eq!(verdict, TC_ACT_REDIRECT, "{what}");
            // The quoted field, found independently: the one value a completion leaves as it is.
            let quoted_udp_at = udp_at + if client.is_ipv4() { 28 } else { 48 };
            let mut answer_udp = out[quoted_udp_at..].to_vec();
            let settled = (1..=0xffff_u16)
                .find(|&x| {
                    answer_udp[6..8].copy_from_slice(&x.to_be_bytes());
                    offload_completion(&answer_udp) == x
                })
                .context("no fixed point")?;
            let mut expected_from = frame.clone();
            expected_from[udp_at + 6..udp_at + 8].copy_from_slice(&settled.to_be_bytes());
            assert_port_unreachable((verdict, out.clone()), &expected_from, &what)?;
            // Completing the quoted UDP checksum, as a device may, leaves the answer valid.
            let mut completed = out.clone();
            let field = quoted_udp_at + 6;
            let value = offload_completion(&completed[quoted_udp_at..]);
            completed[field..field + 2].copy_from_slice(&value.to_be_bytes());
            assert_frame_eq(&completed, &out, &format!("{what}, completed"));
            verify_checksums(&completed).map_err(anyhow::Error::msg)?;
        }
    }
    Ok(())
}

/// The forward entry of the flow from `client` to `service`.
fn forward_entry(lb: &Lb, client: SocketAddr, service: SocketAddr) -> lb_ebpf::Flow4Value {
    let (IpAddr::V4(c), IpAddr::V4(s)) = (client.ip(), service.ip()) else {
        panic!("IPv4 only");
    };
    let key = FlowKey {
        saddr: c.octets(),
        daddr: s.octets(),
        sport: port_to_map(client.port()),
        dport: port_to_map(service.port()),
        proto: PROTO_TCP,
        dir: FLOW_FORWARD,
        _pad: [0; 2],
    };
    lb.maps()
        .flows_v4()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no forward entry {key:?}"))
}

#[test]
fn syn_reusing_the_tuple_of_a_closed_flow_chooses_again() -> TestResult {
    let service = sock(SERVICE4, SERVICE_PORT);
    let other = sock(SERVICE4_OTHER, SERVICE_PORT);
    let (a, b) = (backend4(1), backend4(2));
    let mut lb = Lb::load()?;
    lb.apply(&[
        (frontend(service, Protocol::Tcp), &[a]),
        (frontend(other, Protocol::Tcp), &[a]),
    ])?;
    let client = sock(CLIENT4, CLIENT_PORT);
    let syn = Packet::tcp(client, service, TCP_SYN);
    assert_eq!(dnat(&mut lb, &syn)?, a);

    // The service moves to B; A stays programmed (another service uses it), so the open flow
    // still has a live backend: only its closing may send the next SYN elsewhere.
    lb.apply(&[
        (frontend(service, Protocol::Tcp), &[b]),
        (frontend(other, Protocol::Tcp), &[a]),
    ])?;
    assert_eq!(
        dnat(&mut lb, &syn)?,
        a,
        "a retransmitted SYN of an open flow keeps its backend"
    );
    assert_eq!(dnat(&mut lb, &Packet::tcp(client, service, TCP_ACK))?, a);
    assert_eq!(
        dnat(&mut lb, &Packet::tcp(client, service, TCP_FIN | TCP_ACK))?,
        a,
        "the FIN still goes to the flow's backend"
    );
    let closing = forward_entry(&lb, client, service);
    assert_eq!(
        closing.flags & FLOW_F_CLOSED_FWD,
        FLOW_F_CLOSED_FWD,
        "{closing:?}"
    );
    assert_eq!(
        dnat(&mut lb, &Packet::tcp(client, service, TCP_ACK))?,
        a,
        "the last ACK of the closing flow still goes to its backend"
    );

    assert_eq!(
        dnat(&mut lb, &syn)?,
        b,
        "a SYN on the tuple of a closing flow is a new connection"
    );
    let reopened = forward_entry(&lb, client, service);
    assert_eq!((reopened.nat_addr, reopened.flags), ([10, 0, 2, 12], 0));
    assert_counters(&lb, &[(stats::NEW_FLOWS, 2)]);
    Ok(())
}

/// Sends one new flow after another from `client_ip` until one goes to `wanted`; returns the
/// client address of that flow.
fn flow_to(
    lb: &mut Lb,
    client_ip: Ipv4Addr,
    ports: std::ops::Range<u16>,
    first: impl Fn(SocketAddr) -> Packet,
    wanted: SocketAddr,
) -> anyhow::Result<SocketAddr> {
    for port in ports {
        let client = sock(client_ip, port);
        if dnat(lb, &first(client))? == wanted {
            return Ok(client);
        }
    }
    anyhow::bail!("no flow went to {wanted}")
}

#[test]
fn udp_flow_to_a_removed_backend_moves_to_a_remaining_one() -> TestResult {
    let service = sock(SERVICE4, 53);
    let a = sock(Ipv4Addr::new(10, 0, 2, 53), 5353);
    let b = sock(Ipv4Addr::new(10, 0, 2, 54), 5353);
    let mut lb = serving(frontend(service, Protocol::Udp), &[a, b])?;
    let datagram = |client| Packet::udp(client, service);
    let to_b = flow_to(&mut lb, CLIENT4, 30_000..30_200, datagram, b)?;
    let to_a = flow_to(&mut lb, CLIENT4, 31_000..31_200, datagram, a)?;
    assert_eq!(dnat(&mut lb, &datagram(to_b))?, b, "the flow sticks to B");

    lb.apply(&[(frontend(service, Protocol::Udp), &[a])])?;

    assert_eq!(
        dnat(&mut lb, &datagram(to_b))?,
        a,
        "B is gone: the flow moves"
    );
    assert_eq!(dnat(&mut lb, &datagram(to_b))?, a, "and stays on A");
    assert_eq!(dnat(&mut lb, &datagram(to_a))?, a, "the flow to A is kept");
    Ok(())
}

#[test]
fn established_tcp_flow_keeps_a_removed_backend() -> TestResult {
    let service = sock(SERVICE4, SERVICE_PORT);
    let (a, b) = (backend4(1), backend4(2));
    let mut lb = serving(frontend(service, Protocol::Tcp), &[a, b])?;
    let syn = |client| Packet::tcp(client, service, TCP_SYN);
    let to_b = flow_to(&mut lb, CLIENT4, 30_000..30_200, syn, b)?;

    lb.apply(&[(frontend(service, Protocol::Tcp), &[a])])?;

    // As with kube-proxy, which clears conntrack entries of removed endpoints for UDP only: an
    // established TCP connection keeps its backend, new connections follow the service.
    assert_eq!(
        dnat(&mut lb, &Packet::tcp(to_b, service, TCP_ACK))?,
        b,
        "the established flow keeps B"
    );
    assert_eq!(
        dnat(&mut lb, &syn(sock(CLIENT4, 40_000)))?,
        a,
        "new flows use the remaining backend"
    );
    Ok(())
}
