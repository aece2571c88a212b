//! Packet tests of `lb_tc_ext_ingress`, the TC program on the node's external devices: node
//! ports, external IPs and load balancer IPs, both families. (The SNAT path to other nodes'
//! backends needs a FIB to route with; the two-node end-to-end tests in [`crate::e2e::external`]
//! cover it.)

use std::net::SocketAddr;

use anyhow::Context as _;
use lb_agent::model::{Frontend, Protocol};
use lb_ebpf::stats;

use super::{LAN_CLIENT4 as CLIENT4, LAN_CLIENT6 as CLIENT6, TestResult, lb_with, sock};
use crate::support::{
    frame::{
        Packet, TCP_ACK, TCP_RST, TCP_SYN, assert_frame_eq, port_unreachable, summary,
        verify_checksums,
    },
    lb::{External, Lb, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, assert_drops},
};

#[test]
fn node_port_to_a_local_backend_is_translated_with_valid_checksums_for_both_families() -> TestResult
{
    for (node_port, backend, client) in [
        ("192.0.2.1:30080", "10.201.1.2:8080", CLIENT4),
        ("[2001:db8::1]:30080", "[fd00:201:1::2]:8080", CLIENT6),
    ] {
        let mut lb = lb_with(&[External::node_port(node_port, Protocol::Tcp)
            .local(&[backend])
            .build()])?;
        let input = Packet::tcp(sock(client), sock(node_port), TCP_SYN);
        let (verdict, out) = lb.ext_ingress(&input.frame())?;
        assert_eq!(verdict, TC_ACT_OK, "{node_port}");
        // DNAT only: the client address is kept, the kernel delivers to the local pod.
        assert_frame_eq(&out, &input.clone().to(sock(backend)).frame(), node_port);
        verify_checksums(&out).map_err(anyhow::Error::msg)?;
        assert_eq!(lb.stat(stats::TRANSLATED), 1);
    }
    Ok(())
}

#[test]
fn cluster_ips_are_not_served_from_outside() -> TestResult {
    for (vip, backend, client) in [
        ("10.96.0.10:80", "10.201.1.2:8080", CLIENT4),
        ("[fd00:96::10]:80", "[fd00:201:1::2]:8080", CLIENT6),
    ] {
        let mut lb = Lb::load()?;
        lb.apply(&[(
            Frontend {
                addr: sock(vip),
                protocol: Protocol::Tcp,
            },
            &[sock(backend)],
        )])?;
        let frame = Packet::tcp(sock(client), sock(vip), TCP_SYN).frame();
        let (verdict, out) = lb.ext_ingress(&frame)?;
        assert_eq!(verdict, TC_ACT_OK);
        assert_frame_eq(
            &out,
            &frame,
            "a ClusterIP reached from outside passes untouched",
        );
    }
    Ok(())
}

#[test]
fn source_ranges_let_listed_clients_in_and_drop_the_others() -> TestResult {
    for (lb_ip, backend, inside, outside, ranges) in [
        (
            "203.0.113.10:443",
            "10.201.1.2:8443",
            "192.0.2.7:40000",
            "198.51.100.7:40000",
            ["192.0.2.0/24", "2001:db8::/32"],
        ),
        (
            "[2001:db8:1::10]:443",
            "[fd00:201:1::2]:8443",
            "[2001:db8::7]:40000",
            "[2001:db9::7]:40000",
            ["192.0.2.0/24", "2001:db8::/32"],
        ),
    ] {
        let mut lb = lb_with(&[External::load_balancer_ip(lb_ip, Protocol::Tcp)
            .local(&[backend])
            .source_ranges(&ranges)
            .build()])?;
        let allowed = Packet::tcp(sock(inside), sock(lb_ip), TCP_SYN);
        let (verdict, out) = lb.ext_ingress(&allowed.frame())?;
        assert_eq!(verdict, TC_ACT_OK, "{inside} is inside the ranges");
        let to = summary(&out)
            .map_err(anyhow::Error::msg)
            .context("output")?
            .dst;
        assert_eq!(to, sock(backend));
        let denied = Packet::tcp(sock(outside), sock(lb_ip), TCP_SYN);
        let (verdict, _) = lb.ext_ingress(&denied.frame())?;
        assert_eq!(verdict, TC_ACT_SHOT, "{outside} is outside the ranges");
        assert_drops(&lb, &[(stats::SOURCE_RANGE_DROPPED, 1)], outside);
    }
    Ok(())
}

#[test]
fn local_policy_without_local_endpoints_drops_and_counts_once() -> TestResult {
    for (node_port, client) in [
        ("192.0.2.1:30081", CLIENT4),
        ("[2001:db8::1]:30081", CLIENT6),
    ] {
        let mut lb = lb_with(&[External::node_port(node_port, Protocol::Tcp)
            .local_only()
            .build()])?;
        let frame = Packet::tcp(sock(client), sock(node_port), TCP_SYN).frame();
        let (verdict, _) = lb.ext_ingress(&frame)?;
        assert_eq!(verdict, TC_ACT_SHOT, "{node_port}: no local endpoint");
        // One drop, one reason: not also counted as a pod packet without a backend.
        assert_drops(&lb, &[(stats::NO_ENDPOINT_DROPPED, 1)], node_port);
        assert_eq!(lb.stat(stats::TRANSLATED), 0);
    }
    Ok(())
}

#[test]
fn external_connections_to_a_service_without_any_endpoint_are_reset_and_counted_once() -> TestResult
{
    for (node_port, client) in [
        ("192.0.2.1:30082", CLIENT4),
        ("[2001:db8::1]:30082", CLIENT6),
    ] {
        let mut lb = lb_with(&[External::node_port(node_port, Protocol::Tcp)
            .rejecting()
            .build()])?;
        let (verdict, out) =
            lb.ext_ingress(&Packet::tcp(sock(client), sock(node_port), TCP_SYN).frame())?;
        assert_eq!(verdict, TC_ACT_REDIRECT, "{node_port}: reset sent back");
        let reset = summary(&out).map_err(anyhow::Error::msg)?;
        assert_eq!(
            (reset.src, reset.dst),
            (sock(node_port), sock(client)),
            "{node_port}"
        );
        verify_checksums(&out).map_err(anyhow::Error::msg)?;
        // A reset is answered with nothing: dropped, and counted as refused all the same.
        let (verdict, _) =
            lb.ext_ingress(&Packet::tcp(sock(client), sock(node_port), TCP_RST).frame())?;
        assert_eq!(verdict, TC_ACT_SHOT, "{node_port}: RST");
        assert_drops(&lb, &[(stats::REJECTED, 2)], node_port);
    }
    Ok(())
}

#[test]
fn external_udp_to_a_service_without_any_endpoint_is_answered_with_port_unreachable() -> TestResult
{
    for (node_port, client) in [
        ("192.0.2.1:30082", CLIENT4),
        ("[2001:db8::1]:30082", CLIENT6),
    ] {
        let mut lb = lb_with(&[External::node_port(node_port, Protocol::Udp)
            .rejecting()
            .build()])?;
        let datagrams = [
            Packet::udp(sock(client), sock(node_port)),
            Packet::udp(sock(client), sock(node_port)).payload(&[0x99; 1400]),
        ];
        for (n, datagram) in datagrams.iter().enumerate() {
            let frame = datagram.frame();
            // From a NIC the skb may be CHECKSUM_COMPLETE; the first datagram is quoted whole,
            // so its skb stays so, and the kernel checks `skb->csum` after the run.
            let (verdict, out) = if n == 0 {
                lb.ext_ingress_checksum_complete(&frame)?
            } else {
                lb.ext_ingress(&frame)?
            };
            assert_eq!(verdict, TC_ACT_REDIRECT, "{node_port}: answer sent back");
            assert_frame_eq(
                &out,
                &port_unreachable(&frame),
                &format!("port unreachable from {node_port}"),
            );
            verify_checksums(&out).map_err(anyhow::Error::msg)?;
        }
        assert_drops(&lb, &[(stats::REJECTED, 2)], node_port);
        assert_eq!(lb.stat(stats::TRANSLATED), 0);
    }
    Ok(())
}

#[test]
fn a_backend_on_another_node_without_a_node_address_to_snat_to_drops_and_counts_once() -> TestResult
{
    for (node_port, backend, client) in [
        ("192.0.2.1:30083", "10.202.1.2:8080", CLIENT4),
        ("[2001:db8::1]:30083", "[fd00:202:1::2]:8080", CLIENT6),
    ] {
        // Not local: the flow would be SNATed to this node's address, which is not set.
        let mut lb = lb_with(&[External::node_port(node_port, Protocol::Tcp)
            .remote(&[backend])
            .build()])?;
        let (verdict, _) =
            lb.ext_ingress(&Packet::tcp(sock(client), sock(node_port), TCP_SYN).frame())?;
        assert_eq!(verdict, TC_ACT_SHOT, "{node_port}: no SNAT address");
        assert_drops(&lb, &[(stats::SNAT_FAILED, 1)], node_port);
        assert_eq!(
            lb.stat(stats::NEW_FLOWS),
            0,
            "{node_port}: no flow recorded"
        );
    }
    Ok(())
}

#[test]
fn established_external_flows_keep_their_backend() -> TestResult {
    let backends = ["10.201.1.2:8080", "10.201.2.2:8080", "10.201.3.2:8080"];
    let mut lb = lb_with(&[External::node_port("192.0.2.1:30080", Protocol::Tcp)
        .local(&backends)
        .build()])?;
    for port in 40000..40020u16 {
        let client = SocketAddr::new("192.0.2.100".parse()?, port);
        let syn = Packet::tcp(client, sock("192.0.2.1:30080"), TCP_SYN);
        let first = summary(&lb.ext_ingress(&syn.frame())?.1)
            .map_err(anyhow::Error::msg)?
            .dst;
        for _ in 0..5 {
            let ack = Packet::tcp(client, sock("192.0.2.1:30080"), TCP_ACK);
            let again = summary(&lb.ext_ingress(&ack.frame())?.1)
                .map_err(anyhow::Error::msg)?
                .dst;
            assert_eq!(again, first, "flow from {client}");
        }
    }
    Ok(())
}
