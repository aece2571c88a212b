//! Packet tests of `lb_xdp_ext`, the XDP fast path on the node's external devices, both
//! families: DNAT to local backends, what passes untouched, what is dropped by rule, and, in a
//! network namespace of the test's own with routes and neighbours, SNATed flows to other nodes
//! and their replies leaving by `XDP_TX` and redirect, and the hand-off to the TC path when the
//! next hop is not resolved.

use std::net::{IpAddr, SocketAddr};

use lb_agent::{
    kernel::{Attached, DatapathMode},
    model::{DeviceSnat, Frontend, Protocol, SnatAddrs},
};
use lb_ebpf::{FLOW_F_SNAT, stats};
use lb_tests::{ip, netns::Netns, require_root};

use super::{LAN_CLIENT4 as CLIENT4, LAN_CLIENT6 as CLIENT6, TestResult, lb_with, sock};
use crate::support::{
    frame::{
        Packet, TCP_ACK, TCP_SYN, Transport, assert_frame_eq, port_unreachable, summary,
        verify_checksums,
    },
    lb::{External, Lb, TC_ACT_REDIRECT, assert_drops},
};

/// `enum xdp_action` (`linux/bpf.h`).
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// A datapath serving `node_port` with one backend on another node, SNATing to `node`.
fn remote(node: &str, node_port: &str, backend: &str, protocol: Protocol) -> anyhow::Result<Lb> {
    let mut lb = lb_with(&[External::node_port(node_port, protocol)
        .remote(&[backend])
        .build()])?;
    lb.set_node_addr(ip(node))?;
    Ok(lb)
}

#[test]
fn node_port_to_a_local_backend_is_translated_and_passed_to_the_kernel_for_both_families()
-> TestResult {
    for (node_port, backend, client) in [
        ("192.0.2.1:30080", "10.201.1.2:8080", CLIENT4),
        ("[2001:db8::1]:30080", "[fd00:201:1::2]:8080", CLIENT6),
    ] {
        for (protocol, input) in [
            (
                Protocol::Tcp,
                Packet::tcp(sock(client), sock(node_port), TCP_SYN),
            ),
            (Protocol::Udp, Packet::udp(sock(client), sock(node_port))),
        ] {
            let mut lb = lb_with(&[External::node_port(node_port, protocol)
                .local(&[backend])
                .build()])?;
            let (verdict, out) = lb.xdp(&input.frame(), 0)?;
            assert_eq!(verdict, XDP_PASS, "{protocol:?} to {node_port}");
            // DNAT only: the client address is kept, the kernel delivers to the local pod.
            let expected = input.clone().to(sock(backend)).frame();
            assert_frame_eq(&out, &expected, node_port);
            verify_checksums(&out).map_err(anyhow::Error::msg)?;
            assert_eq!(lb.stat(stats::TRANSLATED), 1);
            // The next packet of the flow goes the same way.
            let (verdict, again) = lb.xdp(&input.frame(), 0)?;
            assert_eq!(verdict, XDP_PASS);
            assert_frame_eq(&again, &expected, "second packet of the flow");
        }
    }
    Ok(())
}

#[test]
fn udp_over_ipv4_without_a_checksum_keeps_none() -> TestResult {
    let (node_port, backend) = ("192.0.2.1:30053", "10.201.1.2:5353");
    let mut lb = lb_with(&[External::node_port(node_port, Protocol::Udp)
        .local(&[backend])
        .build()])?;
    let input = Packet::new(sock(CLIENT4), sock(node_port), Transport::UdpNoChecksum);
    let (verdict, out) = lb.xdp(&input.frame(), 0)?;
    assert_eq!(verdict, XDP_PASS);
    assert_frame_eq(&out, &input.to(sock(backend)).frame(), "zero UDP checksum");
    verify_checksums(&out).map_err(anyhow::Error::msg)?;
    Ok(())
}

#[test]
fn cluster_ips_and_other_traffic_pass_untouched() -> TestResult {
    for (vip, backend, client, other) in [
        ("10.96.0.10:80", "10.201.1.2:8080", CLIENT4, "192.0.2.1:22"),
        (
            "[fd00:96::10]:80",
            "[fd00:201:1::2]:8080",
            CLIENT6,
            "[2001:db8::1]:22",
        ),
    ] {
        let mut lb = Lb::load()?;
        lb.apply(&[(
            Frontend {
                addr: sock(vip),
                protocol: Protocol::Tcp,
            },
            &[sock(backend)],
        )])?;
        for (frame, what) in [
            (
                Packet::tcp(sock(client), sock(vip), TCP_SYN).frame(),
                "a ClusterIP reached from outside",
            ),
            (
                Packet::tcp(sock(client), sock(other), TCP_SYN).frame(),
                "traffic to the node itself",
            ),
            (
                Packet::new(sock(client), sock(other), Transport::IcmpEcho).frame(),
                "an echo request",
            ),
        ] {
            let (verdict, out) = lb.xdp(&frame, 0)?;
            assert_eq!(verdict, XDP_PASS, "{what}");
            assert_frame_eq(&out, &frame, what);
        }
        assert_eq!(lb.stat(stats::TRANSLATED), 0);
    }
    Ok(())
}

#[test]
fn source_ranges_and_local_policy_without_endpoints_drop() -> TestResult {
    for (lb_ip, node_port, backend, inside, outside) in [
        (
            "203.0.113.10:443",
            "192.0.2.1:30081",
            "10.201.1.2:8443",
            "192.0.2.7:40000",
            "198.51.100.7:40000",
        ),
        (
            "[2001:db8:1::10]:443",
            "[2001:db8::1]:30081",
            "[fd00:201:1::2]:8443",
            "[2001:db8::7]:40000",
            "[2001:db9::7]:40000",
        ),
    ] {
        let mut lb = lb_with(&[
            External::load_balancer_ip(lb_ip, Protocol::Tcp)
                .local(&[backend])
                .source_ranges(&["192.0.2.0/24", "2001:db8::/32"])
                .build(),
            External::node_port(node_port, Protocol::Tcp)
                .local_only()
                .build(),
        ])?;
        let (verdict, _) = lb.xdp(&Packet::tcp(sock(inside), sock(lb_ip), TCP_SYN).frame(), 0)?;
        assert_eq!(verdict, XDP_PASS, "{inside} is inside the ranges");
        let (verdict, _) = lb.xdp(&Packet::tcp(sock(outside), sock(lb_ip), TCP_SYN).frame(), 0)?;
        assert_eq!(verdict, XDP_DROP, "{outside} is outside the ranges");
        assert_drops(&lb, &[(stats::SOURCE_RANGE_DROPPED, 1)], outside);
        // Endpoints exist on other nodes (so no refusal), none on this one.
        let (verdict, _) = lb.xdp(
            &Packet::tcp(sock(inside), sock(node_port), TCP_SYN).frame(),
            0,
        )?;
        assert_eq!(verdict, XDP_DROP, "{node_port}: no local endpoint");
        // One drop, one reason: not also counted as a packet without a backend.
        assert_drops(
            &lb,
            &[
                (stats::SOURCE_RANGE_DROPPED, 1),
                (stats::NO_ENDPOINT_DROPPED, 1),
            ],
            node_port,
        );
    }
    Ok(())
}

/// XDP leaves refusals, TCP and UDP, to the TC program on the same device, which always runs on
/// what XDP passes: the answer is built once, on the skb (see `xdp::decide`).
#[test]
fn refusals_are_left_to_tc_and_counted_there_not_in_xdp() -> TestResult {
    for (node_port, client) in [
        ("192.0.2.1:30082", CLIENT4),
        ("[2001:db8::1]:30082", CLIENT6),
    ] {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let mut lb = lb_with(&[External::node_port(node_port, protocol).rejecting().build()])?;
            let frame = match protocol {
                Protocol::Tcp => Packet::tcp(sock(client), sock(node_port), TCP_SYN),
                _ => Packet::udp(sock(client), sock(node_port)),
            }
            .frame();
            let what = format!("{protocol:?} to {node_port}");
            let (verdict, out) = lb.xdp(&frame, 0)?;
            assert_eq!(verdict, XDP_PASS, "{what}: TC answers");
            assert_frame_eq(&out, &frame, &what);
            // TC counts the refusal when it answers; counting it here too would count it twice.
            assert_drops(&lb, &[], &what);
            // And TC does answer what XDP passed.
            let (verdict, out) = lb.ext_ingress(&out)?;
            assert_eq!(verdict, TC_ACT_REDIRECT, "{what}: TC sends the answer back");
            if protocol == Protocol::Udp {
                assert_frame_eq(&out, &port_unreachable(&frame), &what);
            }
            verify_checksums(&out).map_err(anyhow::Error::msg)?;
            assert_drops(&lb, &[(stats::REJECTED, 1)], &what);
        }
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
        let mut lb = lb_with(&[External::node_port(node_port, Protocol::Tcp)
            .remote(&[backend])
            .build()])?;
        let (verdict, _) = lb.xdp(
            &Packet::tcp(sock(client), sock(node_port), TCP_SYN).frame(),
            0,
        )?;
        assert_eq!(verdict, XDP_DROP, "{node_port}: no SNAT address");
        assert_drops(&lb, &[(stats::SNAT_FAILED, 1)], node_port);
        assert_eq!(
            lb.stat(stats::NEW_FLOWS),
            0,
            "{node_port}: no flow recorded"
        );
    }
    Ok(())
}

/// This node's MAC address on the LAN device of [`Lan`].
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
/// The other node's, the next hop towards its pods.
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];
/// The client's.
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xcc];
/// The next hop behind the second device `y0`.
const Y_PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xdd];

/// A namespace standing for this node: LAN device `x0` (192.0.2.1/24, 2001:db8::1/64) with the
/// client (.100) and the other node (.2) as resolved neighbours, the other node's pods
/// (10.202.0.0/16, fd00:202::/32) routed via it, 10.203.0.0/16 and fd00:203::/32 via a next hop
/// (.3) without a neighbour entry, and a second device `y0` towards 10.204.0.0/16 and
/// fd00:204::/32. Only connected and routed next hops: no default route.
struct Lan {
    ns: Netns,
    x0: u32,
    y0: u32,
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Lan {
    fn new() -> anyhow::Result<Self> {
        let ns = Netns::new("lbx")?;
        ns.sysctl(&[
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ])?;
        for (dev, peer) in [("x0", "x1"), ("y0", "y1")] {
            ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", peer])?;
            ns.ip(&["link", "set", peer, "up"])?;
        }
        ns.ip(&["link", "set", "x0", "address", &mac(NODE_MAC)])?;
        for dev in ["x0", "y0"] {
            ns.ip(&["link", "set", dev, "up"])?;
        }
        for args in [
            &["addr", "add", "192.0.2.1/24", "dev", "x0"][..],
            &["addr", "add", "2001:db8::1/64", "dev", "x0", "nodad"],
            &["addr", "add", "198.51.100.1/24", "dev", "y0"],
            &["addr", "add", "2001:db8:4::1/64", "dev", "y0", "nodad"],
            &["route", "add", "10.202.0.0/16", "via", "192.0.2.2"],
            &["-6", "route", "add", "fd00:202::/32", "via", "2001:db8::2"],
            &["route", "add", "10.203.0.0/16", "via", "192.0.2.3"],
            &["-6", "route", "add", "fd00:203::/32", "via", "2001:db8::3"],
            &["route", "add", "10.204.0.0/16", "via", "198.51.100.2"],
            &[
                "-6",
                "route",
                "add",
                "fd00:204::/32",
                "via",
                "2001:db8:4::2",
            ],
        ] {
            ns.ip(args)?;
        }
        for (addr, lladdr, dev) in [
            ("192.0.2.2", PEER_MAC, "x0"),
            ("2001:db8::2", PEER_MAC, "x0"),
            ("192.0.2.100", CLIENT_MAC, "x0"),
            ("2001:db8::100", CLIENT_MAC, "x0"),
            ("198.51.100.2", Y_PEER_MAC, "y0"),
            ("2001:db8:4::2", Y_PEER_MAC, "y0"),
        ] {
            ns.ip(&[
                "neigh",
                "add",
                addr,
                "lladdr",
                &mac(lladdr),
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
        }
        let index = |dev: &'static str| {
            ns.run(move || {
                let name = std::ffi::CString::new(dev).unwrap();
                // SAFETY: a NUL-terminated name.
                unsafe { libc::if_nametoindex(name.as_ptr()) }
            })
        };
        let (x0, y0) = (index("x0")?, index("y0")?);
        anyhow::ensure!(x0 != 0 && y0 != 0, "x0 or y0 has no ifindex");
        Ok(Self { ns, x0, y0 })
    }

    /// Runs the XDP program on a frame received on `x0`.
    fn xdp(&self, lb: &mut Lb, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        let x0 = self.x0;
        self.ns.run(|| lb.xdp(frame, x0))?
    }
}

/// `frame` with the Ethernet addresses of a hop from `src` to `dst`.
fn with_macs(mut frame: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}

#[test]
fn flows_to_another_nodes_backend_and_their_replies_leave_by_xdp_tx_for_both_families() -> TestResult
{
    require_root();
    let lan = Lan::new()?;
    for (node, node_port, backend, client, protocol) in [
        (
            "192.0.2.1",
            "192.0.2.1:30080",
            "10.202.1.2:8080",
            CLIENT4,
            Protocol::Tcp,
        ),
        (
            "192.0.2.1",
            "192.0.2.1:30053",
            "10.202.1.2:5353",
            CLIENT4,
            Protocol::Udp,
        ),
        (
            "2001:db8::1",
            "[2001:db8::1]:30080",
            "[fd00:202:1::2]:8080",
            CLIENT6,
            Protocol::Tcp,
        ),
        (
            "2001:db8::1",
            "[2001:db8::1]:30053",
            "[fd00:202:1::2]:5353",
            CLIENT6,
            Protocol::Udp,
        ),
    ] {
        let what = format!("{protocol:?} {client} -> {node_port} -> {backend}");
        let mut lb = remote(node, node_port, backend, protocol)?;
        let packet = |src: &str, dst: &str, flags: u8| match protocol {
            Protocol::Tcp => Packet::tcp(sock(src), sock(dst), flags),
            _ => Packet::udp(sock(src), sock(dst)),
        };
        let (verdict, out) = lan.xdp(&mut lb, &packet(client, node_port, TCP_SYN).frame())?;
        assert_eq!(verdict, XDP_TX, "{what}: out of the device it came in on");
        // A port of the SNAT range, never the client's own (it may be a host's ephemeral port).
        let snat = SocketAddr::new(ip(node), lb.snat_port(sock(backend)));
        let expected = with_macs(
            packet(&snat.to_string(), backend, TCP_SYN).frame(),
            PEER_MAC,
            NODE_MAC,
        );
        assert_frame_eq(&out, &expected, &what);
        verify_checksums(&out).map_err(anyhow::Error::msg)?;

        let (verdict, out) = lan.xdp(
            &mut lb,
            &packet(backend, &snat.to_string(), TCP_SYN | TCP_ACK).frame(),
        )?;
        assert_eq!(verdict, XDP_TX, "{what}: the reply");
        let expected = with_macs(
            packet(node_port, client, TCP_SYN | TCP_ACK).frame(),
            CLIENT_MAC,
            NODE_MAC,
        );
        assert_frame_eq(&out, &expected, &format!("{what}, reply"));
        verify_checksums(&out).map_err(anyhow::Error::msg)?;
        assert_eq!(lb.stat(stats::REVERSED), 1, "{what}");
        assert_eq!(lb.stat(stats::XDP_SENT), 2, "{what}: both sent by XDP");
        // The frontend's counters: one new flow, its packet and the SNATed reply.
        let counters = lb.service_counters(sock(node_port), protocol)?;
        assert_eq!(
            (
                counters[lb_ebpf::service_stats::NEW_FLOWS],
                counters[lb_ebpf::service_stats::PACKETS]
            ),
            (1, 2),
            "{what}"
        );
        assert_eq!(lb.stat(stats::XDP_TO_TC), 0, "{what}");
    }
    Ok(())
}

#[test]
fn an_unresolved_next_hop_leaves_the_packet_untouched_to_tc_with_its_flow_recorded() -> TestResult {
    require_root();
    let lan = Lan::new()?;
    for (node, node_port, backend, client) in [
        ("192.0.2.1", "192.0.2.1:30080", "10.203.1.2:8080", CLIENT4),
        (
            "2001:db8::1",
            "[2001:db8::1]:30080",
            "[fd00:203:1::2]:8080",
            CLIENT6,
        ),
    ] {
        let mut lb = remote(node, node_port, backend, Protocol::Tcp)?;
        let frame = Packet::tcp(sock(client), sock(node_port), TCP_SYN).frame();
        let (verdict, out) = lan.xdp(&mut lb, &frame)?;
        assert_eq!(
            verdict, XDP_PASS,
            "{node_port}: no neighbour entry for the next hop"
        );
        assert_frame_eq(&out, &frame, "left to TC untouched");
        assert_eq!(lb.stat(stats::TRANSLATED), 0);
        assert_eq!(lb.stat(stats::XDP_TO_TC), 1);
        assert_eq!(lb.stat(stats::NEW_FLOWS), 1, "the flow TC will find");
        let backend = sock(backend);
        let snat_flows = match backend.ip() {
            IpAddr::V4(ip) => lb
                .maps()
                .flows_v4()
                .into_iter()
                .filter(|(_, v)| v.nat_addr == ip.octets() && v.flags & FLOW_F_SNAT != 0)
                .count(),
            IpAddr::V6(ip) => lb
                .maps()
                .flows_v6()
                .into_iter()
                .filter(|(_, v)| v.nat_addr == ip.octets() && v.flags & FLOW_F_SNAT != 0)
                .count(),
        };
        assert_eq!(snat_flows, 1, "a SNATed flow to {backend}");
    }
    Ok(())
}

#[test]
fn another_egress_device_is_used_only_when_it_runs_xdp() -> TestResult {
    require_root();
    let lan = Lan::new()?;
    for (node, node_port, backend, client) in [
        ("192.0.2.1", "192.0.2.1:30080", "10.204.1.2:8080", CLIENT4),
        (
            "2001:db8::1",
            "[2001:db8::1]:30080",
            "[fd00:204:1::2]:8080",
            CLIENT6,
        ),
    ] {
        let mut lb = remote(node, node_port, backend, Protocol::Tcp)?;
        let first = Packet::tcp(sock(client), sock(node_port), TCP_SYN).frame();
        let (verdict, out) = lan.xdp(&mut lb, &first)?;
        assert_eq!(verdict, XDP_PASS, "y0 runs no XDP program: TC sends it");
        assert_frame_eq(&out, &first, "untouched");

        // With the programs on y0, XDP redirects the flow's packets there itself.
        let y0 = lan.y0;
        let attached = lan
            .ns
            .run(|| lb.attach_ext_device("y0", y0, DatapathMode::Xdp))??;
        assert_eq!(attached, Attached::Xdp, "XDP attaches natively on veth");
        let next = Packet::tcp(sock(client), sock(node_port), TCP_ACK);
        let (verdict, out) = lan.xdp(&mut lb, &next.frame())?;
        assert_eq!(verdict, XDP_REDIRECT, "{node_port} -> {backend} through y0");
        let snat = SocketAddr::new(ip(node), lb.snat_port(sock(backend)));
        let expected = with_macs(
            Packet::tcp(snat, sock(backend), TCP_ACK).frame(),
            Y_PEER_MAC,
            lan.ns.run(|| device_mac("y0"))??,
        );
        assert_frame_eq(&out, &expected, "redirected to y0");
        verify_checksums(&out).map_err(anyhow::Error::msg)?;
        lan.ns.run(|| lb.detach_ext_device("y0", y0))?;
    }
    Ok(())
}

/// The node's SNAT addresses: `node` by default, `device_addr` for flows out of `device`.
fn snat_with_device(node: &str, device: u32, device_addr: &str) -> SnatAddrs {
    let mut snat = SnatAddrs::default();
    let mut own = DeviceSnat::default();
    match (ip(node), ip(device_addr)) {
        (IpAddr::V4(n), IpAddr::V4(d)) => {
            snat.v4 = Some(n);
            own.v4 = Some(d);
        }
        (IpAddr::V6(n), IpAddr::V6(d)) => {
            snat.v6 = Some(n);
            own.v6 = Some(d);
        }
        _ => panic!("{node} and {device_addr} are of different families"),
    }
    snat.devices.insert(device, own);
    snat
}

/// A flow the FIB sends out of another device (`y0`) leaves from that device's address (the
/// agent's SNAT device entry), whether XDP or TC starts it and whichever sends it; the
/// backend's replies to that address are reversed; a flow out of the default's device keeps
/// the default address.
#[test]
fn flows_out_of_another_device_leave_from_its_address_in_xdp_and_tc() -> TestResult {
    require_root();
    let lan = Lan::new()?;
    let (x0, y0) = (lan.x0, lan.y0);
    for (node, y_addr, via_y, via_x, client) in [
        (
            "192.0.2.1",
            "198.51.100.1",
            "10.204.1.2:8080",
            "10.202.1.2:8080",
            "192.0.2.100",
        ),
        (
            "2001:db8::1",
            "2001:db8:4::1",
            "[fd00:204:1::2]:8080",
            "[fd00:202:1::2]:8080",
            "2001:db8::100",
        ),
    ] {
        let port_y = SocketAddr::new(ip(node), 30080);
        let port_x = SocketAddr::new(ip(node), 30081);
        let mut lb = lb_with(&[
            External::node_port(&port_y.to_string(), Protocol::Tcp)
                .remote(&[via_y])
                .build(),
            External::node_port(&port_x.to_string(), Protocol::Tcp)
                .remote(&[via_x])
                .build(),
        ])?;
        lb.set_snat(&snat_with_device(node, y0, y_addr))?;
        let client_at = |port: u16| SocketAddr::new(ip(client), port);
        let what = format!("{port_y} -> {via_y} out of y0");

        // Started by XDP: y0 runs no XDP program, so XDP records the flow and TC sends it.
        let syn = Packet::tcp(client_at(40_001), port_y, TCP_SYN).frame();
        let (verdict, _) = lan.xdp(&mut lb, &syn)?;
        assert_eq!(verdict, XDP_PASS, "{what}: left to TC");
        let (verdict, out) = lan.ns.run(|| lb.ext_ingress_on(&syn, x0))??;
        assert_eq!(verdict, TC_ACT_REDIRECT, "{what}");
        let snat = SocketAddr::new(ip(y_addr), lb.snat_port(sock(via_y)));
        let expected = Packet::tcp(snat, sock(via_y), TCP_SYN).frame();
        assert_frame_eq(&out, &expected, &format!("{what}, XDP's flow sent by TC"));
        verify_checksums(&out).map_err(anyhow::Error::msg)?;
        // The reply to y0's address goes back to the client from the node port.
        let reply = Packet::tcp(sock(via_y), snat, TCP_SYN | TCP_ACK).frame();
        let (verdict, out) = lan.xdp(&mut lb, &reply)?;
        assert_eq!(verdict, XDP_TX, "{what}: the reply");
        let expected = with_macs(
            Packet::tcp(port_y, client_at(40_001), TCP_SYN | TCP_ACK).frame(),
            CLIENT_MAC,
            NODE_MAC,
        );
        assert_frame_eq(&out, &expected, &format!("{what}, reply"));

        // Started by TC alone.
        let syn = Packet::tcp(client_at(40_002), port_y, TCP_SYN).frame();
        let (verdict, out) = lan.ns.run(|| lb.ext_ingress_on(&syn, x0))??;
        assert_eq!(verdict, TC_ACT_REDIRECT, "{what}");
        let translated = summary(&out).map_err(anyhow::Error::msg)?;
        assert_eq!(translated.src.ip(), ip(y_addr), "{what}: TC's own flow");
        assert_eq!(translated.dst, sock(via_y));

        // Sent by XDP itself once y0 runs it.
        let attached = lan
            .ns
            .run(|| lb.attach_ext_device("y0", y0, DatapathMode::Xdp))??;
        assert_eq!(attached, Attached::Xdp);
        let syn = Packet::tcp(client_at(40_003), port_y, TCP_SYN).frame();
        let (verdict, out) = lan.xdp(&mut lb, &syn)?;
        assert_eq!(verdict, XDP_REDIRECT, "{what}");
        let translated = summary(&out).map_err(anyhow::Error::msg)?;
        assert_eq!(translated.src.ip(), ip(y_addr), "{what}: XDP's own flow");
        verify_checksums(&out).map_err(anyhow::Error::msg)?;
        lan.ns.run(|| lb.detach_ext_device("y0", y0))?;

        // Out of x0, which holds the default: the default address.
        let syn = Packet::tcp(client_at(40_004), port_x, TCP_SYN).frame();
        let (verdict, out) = lan.xdp(&mut lb, &syn)?;
        assert_eq!(verdict, XDP_TX, "{port_x} -> {via_x}");
        let translated = summary(&out).map_err(anyhow::Error::msg)?;
        assert_eq!(translated.src.ip(), ip(node), "{port_x}: the default");
        assert_eq!(lb.stat(stats::SNAT_FAILED), 0);
    }
    Ok(())
}

/// The MAC address of a device of the calling thread's namespace.
fn device_mac(dev: &str) -> anyhow::Result<[u8; 6]> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show", dev])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no MAC address in {text:?}"))?;
    let mut mac = [0_u8; 6];
    for (i, part) in hex.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

#[test]
fn frames_cut_anywhere_pass_untouched() -> TestResult {
    for (node_port, backend, client) in [
        ("192.0.2.1:30080", "10.201.1.2:8080", CLIENT4),
        ("[2001:db8::1]:30080", "[fd00:201:1::2]:8080", CLIENT6),
    ] {
        let mut lb = lb_with(&[External::node_port(node_port, Protocol::Tcp)
            .local(&[backend])
            .build()])?;
        let whole = Packet::tcp(sock(client), sock(node_port), TCP_SYN).frame();
        // Every length up to the TCP checksum's last byte: the headers a translation needs are
        // not all there, so nothing may change (BPF_PROG_TEST_RUN wants an Ethernet header).
        let csum_end = whole.len() - 2;
        for len in 14..csum_end {
            let cut = &whole[..len];
            let (verdict, out) = lb.xdp(cut, 0)?;
            assert_eq!(verdict, XDP_PASS, "{node_port}: frame cut at {len} bytes");
            assert_frame_eq(&out, cut, &format!("frame cut at {len} bytes"));
        }
        assert_eq!(lb.stat(stats::TRANSLATED), 0, "{node_port}");
        assert_eq!(
            lb.stat(stats::NEW_FLOWS),
            0,
            "{node_port}: no flow for a cut frame"
        );
    }
    Ok(())
}
