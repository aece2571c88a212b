//! The Kubernetes e2e suite's service-proxy cases this agent used to fail, each a test named
//! after its case, with the case's string and thresholds in its doc comment. The cases that
//! need two nodes live with their topology in [`super::external`]:
//! `session_affinity_keeps_an_outside_client_on_one_backend_through_a_node_port` ("should have
//! session affinity work / timeout work / be able to switch for NodePort service") and
//! `pods_reach_local_policy_external_frontends_without_a_local_endpoint_within_source_ranges`
//! ("should work from pods", "should only allow access from service loadbalancer source
//! ranges"), both in XDP and TC mode; refusals without endpoints ("should be rejected when no
//! endpoints exist") in [`super::manifests`] (`a_service_without_any_ready_endpoint_refuses_*`,
//! `udp_to_a_service_without_any_endpoint_is_refused_at_once`) and [`super::sock`]; connected
//! UDP clients that recover after their backend is removed (conntrack.go's "should be able to
//! preserve UDP traffic when server pod cycles for a ClusterIP service", for sockets translated
//! at `connect()`, of node processes and pods) in [`super::sock`]
//! (`a_connected_udp_socket_of_a_removed_backend_is_closed_and_the_client_recovers`).

use std::{collections::BTreeSet, time::Duration};

use lb_tests::{
    cluster::BACKENDS,
    eventually, ip, sa,
    traffic::{tcp_request, udp_request},
};

use super::ManifestCluster;

/// e2e: "should have session affinity work for service with type clusterIP [LinuxOnly]
/// [Conformance]" (and networking.go's "should function for client IP based session
/// affinity: http/udp"): 15 consecutive requests from one pod reach one backend. Both
/// families, TCP and UDP.
#[test]
fn should_have_session_affinity_work_for_service_with_type_cluster_ip() {
    let c = ManifestCluster::new();
    let vips = [ip("10.96.0.64"), ip("fd00:96::64")];
    c.write_affine_service("sticky", &vips, &BACKENDS, Some(10_800));
    let _agent = c.start_agent();
    for vip in vips {
        assert_eq!(c.net.tcp_spread(vip, 15).len(), 1, "TCP to {vip}");
        assert_eq!(c.net.udp_spread(vip, 15).len(), 1, "UDP to {vip}");
    }
}

/// e2e: "should be able to switch session affinity for service with type clusterIP
/// [LinuxOnly] [Conformance]": ClientIP, then None (requests spread again), then ClientIP (15
/// in a row from one pod reach one backend). Both families, TCP and UDP.
#[test]
fn should_be_able_to_switch_session_affinity_for_service_with_type_cluster_ip() {
    let c = ManifestCluster::new();
    let vips = [ip("10.96.0.60"), ip("fd00:96::60")];
    c.write_affine_service("sticky", &vips, &BACKENDS, Some(10_800));
    let _agent = c.start_agent();
    for vip in vips {
        assert_eq!(c.net.tcp_spread(vip, 15).len(), 1, "TCP to {vip}");
    }
    c.write_affine_service("sticky", &vips, &BACKENDS, None);
    for vip in vips {
        assert!(
            eventually(Duration::from_secs(5), || c.net.tcp_spread(vip, 15).len()
                > 1),
            "TCP to {vip} still sticks with affinity switched off"
        );
        assert!(c.net.udp_spread(vip, 30).len() > 1, "UDP to {vip}");
    }
    c.write_affine_service("sticky", &vips, &BACKENDS, Some(10_800));
    for vip in vips {
        assert!(
            eventually(Duration::from_secs(5), || c.net.tcp_spread(vip, 15).len()
                == 1),
            "TCP to {vip} does not stick with affinity switched on again"
        );
        assert_eq!(c.net.udp_spread(vip, 15).len(), 1, "UDP to {vip}");
    }
}

/// e2e: "should have session affinity timeout work for service with type clusterIP
/// [LinuxOnly]": requests spaced more than `timeoutSeconds` apart reach other backends, while
/// back-to-back ones keep one.
#[test]
fn should_have_session_affinity_timeout_work_for_service_with_type_cluster_ip() {
    let c = ManifestCluster::new();
    let vips = [ip("10.96.0.61"), ip("fd00:96::61")];
    c.write_affine_service("brief", &vips, &BACKENDS, Some(1));
    let _agent = c.start_agent();
    let mut seen: Vec<BTreeSet<String>> = vec![BTreeSet::new(); vips.len()];
    for _ in 0..10 {
        for (vip, seen) in vips.iter().zip(&mut seen) {
            let burst = c.net.tcp_spread(*vip, 3);
            assert_eq!(burst.len(), 1, "back to back to {vip}: {burst:?}");
            seen.extend(burst);
        }
        std::thread::sleep(Duration::from_millis(1_300));
    }
    for (vip, seen) in vips.iter().zip(&seen) {
        // Ten choices made anew, all on one backend of three: about 1 in 20 000.
        assert!(
            seen.len() > 1,
            "{vip}: every request after the timeout on {seen:?}"
        );
    }
}

/// e2e: "should allow pods to hairpin back to themselves through services": the only backend
/// of a service reaches itself through the service's cluster IP on the TC path, over TCP and
/// UDP, both families, and sees the service address as the answer's source.
#[test]
fn should_allow_pods_to_hairpin_back_to_themselves_through_services() {
    let c = ManifestCluster::new();
    let vips = [ip("10.96.0.63"), ip("fd00:96::63")];
    c.write_service("itself", &vips, &["b1"]);
    let _agent = c.start_agent();
    let b1 = &c.net.topo.pod("b1").ns;
    for vip in vips {
        for _ in 0..3 {
            assert_eq!(tcp_request(b1, sa(vip, 80)).unwrap(), "b1", "TCP to {vip}");
            let (answer, from) = udp_request(b1, sa(vip, 53)).unwrap();
            assert_eq!(answer, "b1", "UDP to {vip}");
            assert_eq!(from, sa(vip, 53), "UDP answer from the service address");
        }
    }
}
