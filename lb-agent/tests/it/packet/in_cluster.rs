//! In-cluster clients of external frontends (kube-proxy's short-circuit): a pod reaching a node
//! port, external IP or load balancer IP with `externalTrafficPolicy: Local` gets every backend
//! of the cluster, even on a node without a local one, while clients outside still get the
//! local backends only; `loadBalancerSourceRanges` hold for pods too. Both families, TCP and
//! UDP, through the pod program.

use lb_agent::model::Protocol;
use lb_ebpf::stats;

use super::{LAN_CLIENT4, LAN_CLIENT6, TestResult, lb_with, sock};
use crate::support::{
    frame::{Packet, TCP_SYN, assert_frame_eq, verify_checksums},
    lb::{External, TC_ACT_SHOT, assert_drops},
};

/// Pod clients on this node.
const POD4: &str = "10.0.1.5:41000";
const POD6: &str = "[fd00:1::5]:41000";

#[test]
fn pods_reach_local_policy_external_frontends_through_every_backend_of_the_cluster() -> TestResult {
    for (frontend, remote, pod, outside) in [
        ("192.0.2.1:30070", "10.202.1.2:8080", POD4, LAN_CLIENT4),
        (
            "[2001:db8::1]:30070",
            "[fd00:202:1::2]:8080",
            POD6,
            LAN_CLIENT6,
        ),
    ] {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let what = format!("{protocol:?} to {frontend}");
            let packet = |from: &str| match protocol {
                Protocol::Tcp => Packet::tcp(sock(from), sock(frontend), TCP_SYN),
                _ => Packet::udp(sock(from), sock(frontend)),
            };
            // No local endpoint on this node: outside clients are dropped, pods are served.
            let mut lb = lb_with(&[External::node_port(frontend, protocol)
                .local_only()
                .in_cluster(&[remote])
                .build()])?;
            let input = packet(pod);
            let out = lb.ingress(&input.frame())?;
            assert_frame_eq(&out, &input.clone().to(sock(remote)).frame(), &what);
            verify_checksums(&out).map_err(anyhow::Error::msg)?;
            let (verdict, _) = lb.ext_ingress(&packet(outside).frame())?;
            assert_eq!(
                verdict, TC_ACT_SHOT,
                "{what} from outside: no local endpoint"
            );
            assert_drops(&lb, &[(stats::NO_ENDPOINT_DROPPED, 1)], &what);
        }
    }
    Ok(())
}

#[test]
fn load_balancer_source_ranges_hold_for_pods_too() -> TestResult {
    for (frontend, backend, allowed, denied) in [
        (
            "203.0.113.9:80",
            "10.202.1.2:8080",
            "10.0.1.5:41000",
            "10.0.9.5:41000",
        ),
        (
            "[2001:db8:9::9]:80",
            "[fd00:202:1::2]:8080",
            "[fd00:1::5]:41000",
            "[fd00:9::5]:41000",
        ),
    ] {
        let allowed_range = if frontend.starts_with('[') {
            "fd00:1::/64"
        } else {
            "10.0.1.0/24"
        };
        let mut lb = lb_with(&[External::load_balancer_ip(frontend, Protocol::Tcp)
            .remote(&[backend])
            .source_ranges(&[allowed_range])
            .build()])?;
        let input = Packet::tcp(sock(allowed), sock(frontend), TCP_SYN);
        let out = lb.ingress(&input.frame())?;
        assert_frame_eq(&out, &input.clone().to(sock(backend)).frame(), allowed);
        let (verdict, _) =
            lb.ingress_verdict(&Packet::tcp(sock(denied), sock(frontend), TCP_SYN).frame())?;
        assert_eq!(verdict, TC_ACT_SHOT, "{denied} is outside {allowed_range}");
        assert_drops(&lb, &[(stats::SOURCE_RANGE_DROPPED, 1)], frontend);
    }
    Ok(())
}
