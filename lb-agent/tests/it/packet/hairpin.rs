//! Hairpin on the pod path: a pod chosen as its own backend gets its packets back from the
//! hairpin address, and its answers back from the service address, each sent straight back
//! into the pod (redirect to the device's egress, Ethernet addresses swapped). Both families,
//! TCP and UDP, every checksum computed independently.

use std::net::SocketAddr;

use lb_agent::model::{Frontend, Protocol};
use lb_ebpf::stats;

use super::{TestResult, sock};
use crate::support::{
    frame::{Packet, TCP_ACK, TCP_SYN, assert_frame_eq, macs_swapped, verify_checksums},
    lb::{Lb, TC_ACT_REDIRECT, cluster_ip},
};

/// The hairpin addresses of `kern/hairpin.rs`.
const HAIRPIN4: &str = "169.254.42.1";
const HAIRPIN6: &str = "100::42";

fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

#[test]
fn a_pod_that_is_its_own_backend_gets_its_connection_back_from_the_hairpin_address() -> TestResult {
    for (vip, pod, backend, hairpin) in [
        ("10.96.0.70:80", "10.0.1.5:41000", "10.0.1.5:8080", HAIRPIN4),
        (
            "[fd00:96::70]:80",
            "[fd00:1::5]:41000",
            "[fd00:1::5]:8080",
            HAIRPIN6,
        ),
    ] {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let what = format!("{protocol:?} {pod} -> {vip}");
            let (vip, pod, backend) = (sock(vip), sock(pod), sock(backend));
            let mut lb = Lb::load()?;
            lb.apply_states(&[cluster_ip(
                Frontend {
                    addr: vip,
                    protocol,
                },
                &[backend],
            )])?;
            let packet = |src, dst, flags| match protocol {
                Protocol::Tcp => Packet::tcp(src, dst, flags),
                _ => Packet::udp(src, dst),
            };
            let from_hairpin = at(hairpin, pod.port());
            for (n, flags) in [TCP_SYN, TCP_ACK].into_iter().enumerate() {
                let (verdict, out) = lb.ingress_verdict(&packet(pod, vip, flags).frame())?;
                assert_eq!(
                    verdict, TC_ACT_REDIRECT,
                    "{what}, packet {n}: back into the pod"
                );
                let expected = macs_swapped(packet(from_hairpin, backend, flags).frame());
                assert_frame_eq(&out, &expected, &format!("{what}, packet {n}"));
                verify_checksums(&out).map_err(anyhow::Error::msg)?;
            }
            // The pod answers the hairpin address; the answer comes from the service.
            let (verdict, out) =
                lb.ingress_verdict(&packet(backend, from_hairpin, TCP_ACK).frame())?;
            assert_eq!(verdict, TC_ACT_REDIRECT, "{what}: answer back into the pod");
            let expected = macs_swapped(packet(vip, pod, TCP_ACK).frame());
            assert_frame_eq(&out, &expected, &format!("{what}: answer"));
            verify_checksums(&out).map_err(anyhow::Error::msg)?;
            assert_eq!(lb.stat(stats::NEW_FLOWS), 1, "{what}: one flow");
            assert_eq!(lb.stat(stats::REVERSED), 1, "{what}");
            // Another pod's connection to the same service is not hairpinned.
            let other = sock(if vip.is_ipv4() {
                "10.0.1.9:41000"
            } else {
                "[fd00:1::9]:41000"
            });
            let out = lb.ingress(&packet(other, vip, TCP_SYN).frame())?;
            assert_frame_eq(&out, &packet(other, backend, TCP_SYN).frame(), &what);
        }
    }
    Ok(())
}
