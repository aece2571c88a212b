//! Per-frontend traffic counters (`LB_SERVICE_STATS`, `lb_ebpf::service_stats`): every path
//! counts each new flow, translated packet (both directions, with its bytes), refusal and drop
//! of a frontend exactly once, for both families: the pod programs, the external TC program
//! and XDP (a frame XDP leaves to TC is counted by TC alone).

use std::net::SocketAddr;

use lb_agent::model::{Frontend, Protocol};
use lb_ebpf::service_stats::{BYTES, DROPPED, NEW_FLOWS, PACKETS, REFUSED};

use super::{LAN_CLIENT4, LAN_CLIENT6, TestResult, lb_with, sock};
use crate::support::{
    frame::{Packet, TCP_ACK, TCP_SYN},
    lb::{External, Lb, cluster_ip, rejecting},
};

/// The counters expected after `packets` translated packets of `bytes` in all, `new` new
/// flows, `refused` refusals and `dropped` drops.
fn counts(new: u64, packets: u64, bytes: u64, refused: u64, dropped: u64) -> [u64; 5] {
    let mut c = [0; 5];
    c[NEW_FLOWS] = new;
    c[PACKETS] = packets;
    c[BYTES] = bytes;
    c[REFUSED] = refused;
    c[DROPPED] = dropped;
    c
}

fn len(frame: &[u8]) -> u64 {
    frame.len() as u64
}

#[test]
fn pod_flows_count_new_flows_packets_both_ways_and_refusals() -> TestResult {
    for (service, backend, client, refusing) in [
        (
            "10.96.0.10:80",
            "10.200.1.2:8080",
            "10.200.9.9:40000",
            "10.96.0.11:80",
        ),
        (
            "[fd00:96::10]:80",
            "[fd00:200:1::2]:8080",
            "[fd00:200:9::9]:40000",
            "[fd00:96::11]:80",
        ),
    ] {
        let (service, backend, client) = (sock(service), sock(backend), sock(client));
        let mut lb = Lb::load()?;
        lb.apply_states(&[
            cluster_ip(
                Frontend {
                    addr: service,
                    protocol: Protocol::Tcp,
                },
                &[backend],
            ),
            rejecting(Frontend {
                addr: sock(refusing),
                protocol: Protocol::Tcp,
            }),
        ])?;
        let syn = Packet::tcp(client, service, TCP_SYN).frame();
        lb.ingress(&syn)?;
        let syn_ack = Packet::tcp(backend, client, TCP_SYN | TCP_ACK).frame();
        lb.egress(&syn_ack)?;
        let ack = Packet::tcp(client, service, TCP_ACK)
            .payload(b"GET /")
            .frame();
        lb.ingress(&ack)?;
        assert_eq!(
            lb.service_counters(service, Protocol::Tcp)?,
            counts(1, 3, len(&syn) + len(&syn_ack) + len(&ack), 0, 0),
            "{service}"
        );
        // Untranslated traffic of the node is nobody's.
        let elsewhere = SocketAddr::new(backend.ip(), 9);
        let other = Packet::tcp(client, elsewhere, TCP_SYN).frame();
        lb.ingress(&other)?;
        assert_eq!(lb.service_counters(service, Protocol::Tcp)?[PACKETS], 3);

        let refused = Packet::tcp(client, sock(refusing), TCP_SYN).frame();
        lb.ingress_verdict(&refused)?;
        assert_eq!(
            lb.service_counters(sock(refusing), Protocol::Tcp)?,
            counts(0, 0, 0, 1, 0),
            "{refusing}"
        );
    }
    Ok(())
}

#[test]
fn external_flows_count_in_tc_and_xdp_once_and_drops_by_rule() -> TestResult {
    for (node_port, lb_ip, backend, client) in [
        (
            "192.0.2.1:30080",
            "203.0.113.1:80",
            "10.201.1.2:8080",
            LAN_CLIENT4,
        ),
        (
            "[2001:db8::1]:30080",
            "[2001:db8:113::1]:80",
            "[fd00:201:1::2]:8080",
            LAN_CLIENT6,
        ),
    ] {
        let mut lb = lb_with(&[
            External::node_port(node_port, Protocol::Udp)
                .local(&[backend])
                .build(),
            External::load_balancer_ip(lb_ip, Protocol::Udp)
                .local(&[backend])
                .source_ranges(&["198.51.100.0/24", "2001:db8:51::/48"])
                .build(),
        ])?;
        let (node_port, lb_ip, client) = (sock(node_port), sock(lb_ip), sock(client));
        // TC: a new flow, then a second datagram of it.
        let first = Packet::udp(client, node_port).payload(b"one").frame();
        lb.ext_ingress(&first)?;
        lb.ext_ingress(&first)?;
        // XDP translates the next one itself (a local backend: XDP_PASS after DNAT); TC then
        // sees a packet already translated, and counts nothing.
        let (_, translated) = lb.xdp(&first, 0)?;
        lb.ext_ingress(&translated)?;
        // A flow XDP starts.
        let other: SocketAddr = SocketAddr::new(client.ip(), client.port() + 1);
        let second = Packet::udp(other, node_port).payload(b"two!").frame();
        lb.xdp(&second, 0)?;
        assert_eq!(
            lb.service_counters(node_port, Protocol::Udp)?,
            counts(2, 4, 3 * len(&first) + len(&second), 0, 0),
            "{node_port}"
        );
        // Outside the source ranges: dropped, by XDP or by TC, once each.
        let outside = Packet::udp(client, lb_ip).frame();
        lb.xdp(&outside, 0)?;
        lb.ext_ingress(&outside)?;
        assert_eq!(
            lb.service_counters(lb_ip, Protocol::Udp)?,
            counts(0, 0, 0, 0, 2),
            "{lb_ip}"
        );
    }
    Ok(())
}

#[test]
fn external_refusals_are_counted_by_tc_not_by_the_xdp_that_leaves_them_to_it() -> TestResult {
    for (node_port, client) in [
        ("192.0.2.1:30081", LAN_CLIENT4),
        ("[2001:db8::1]:30081", LAN_CLIENT6),
    ] {
        let mut lb = lb_with(&[External::node_port(node_port, Protocol::Tcp)
            .rejecting()
            .build()])?;
        let syn = Packet::tcp(sock(client), sock(node_port), TCP_SYN).frame();
        // XDP leaves it untouched to TC, which answers it.
        let (_, passed) = lb.xdp(&syn, 0)?;
        lb.ext_ingress(&passed)?;
        assert_eq!(
            lb.service_counters(sock(node_port), Protocol::Tcp)?,
            counts(0, 0, 0, 1, 0),
            "{node_port}"
        );
    }
    Ok(())
}

/// `--service-counters flows` (the default) counts new flows and refusals but no packets;
/// `off` counts nothing.
#[test]
fn the_counter_level_decides_what_is_counted() -> TestResult {
    use lb_agent::kernel::ServiceCounterLevel;
    let service = sock("10.96.0.12:80");
    let refusing = sock("10.96.0.13:80");
    for (level, expected) in [
        (
            ServiceCounterLevel::Flows,
            (counts(1, 0, 0, 0, 0), counts(0, 0, 0, 1, 0)),
        ),
        (
            ServiceCounterLevel::Off,
            (counts(0, 0, 0, 0, 0), counts(0, 0, 0, 0, 0)),
        ),
    ] {
        let mut lb = Lb::load_counting(level)?;
        lb.apply_states(&[
            cluster_ip(
                Frontend {
                    addr: service,
                    protocol: Protocol::Tcp,
                },
                &[sock("10.200.1.2:8080")],
            ),
            rejecting(Frontend {
                addr: refusing,
                protocol: Protocol::Tcp,
            }),
        ])?;
        let client = sock("10.200.9.9:40000");
        lb.ingress(&Packet::tcp(client, service, TCP_SYN).frame())?;
        lb.ingress(&Packet::tcp(client, service, TCP_ACK).frame())?;
        lb.ingress_verdict(&Packet::tcp(client, refusing, TCP_SYN).frame())?;
        assert_eq!(
            (
                lb.service_counters(service, Protocol::Tcp)?,
                lb.service_counters(refusing, Protocol::Tcp)?
            ),
            expected,
            "{level:?}"
        );
    }
    Ok(())
}
