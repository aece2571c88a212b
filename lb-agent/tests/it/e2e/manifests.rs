//! End-to-end: pods in network namespaces reach ClusterIPs through the agent and its TC
//! programs, with real TCP and UDP servers and clients. Needs root; fails (never skips) without.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    cluster::{BACKENDS, SERVICE_PORTS, names},
    eventually, ip,
    manifests::service,
    sa,
    traffic::{
        TcpSession, tcp_request, udp_connected_request, udp_exchange, udp_request, udp_socket,
    },
};

use super::ManifestCluster;

#[test]
fn pod_reaches_ipv4_ipv6_and_dual_stack_cluster_ips_over_tcp_and_udp_spread_over_all_backends() {
    let c = ManifestCluster::new();
    c.write_service("v4only", &[ip("10.96.0.10")], &BACKENDS);
    c.write_service("v6only", &[ip("fd00:96::10")], &BACKENDS);
    c.write_service("dual", &[ip("10.96.0.20"), ip("fd00:96::20")], &BACKENDS);
    let _agent = c.start_agent();
    for vip in ["10.96.0.10", "fd00:96::10", "10.96.0.20", "fd00:96::20"] {
        let vip = ip(vip);
        assert_eq!(
            c.net.tcp_spread(vip, 60),
            names(&["b1", "b2", "b3"]),
            "TCP to {vip}"
        );
        assert_eq!(
            c.net.udp_spread(vip, 60),
            names(&["b1", "b2", "b3"]),
            "UDP to {vip}"
        );
    }
}

#[test]
fn every_packet_of_a_flow_reaches_the_same_backend() {
    let c = ManifestCluster::new();
    c.write_service("dual", &[ip("10.96.0.20"), ip("fd00:96::20")], &BACKENDS);
    let _agent = c.start_agent();
    for vip in [ip("10.96.0.20"), ip("fd00:96::20")] {
        let mut session = TcpSession::open(c.net.client(), sa(vip, 80)).unwrap();
        for _ in 0..20 {
            session.ping().unwrap();
        }
        let socket = udp_socket(c.net.client(), vip.is_ipv6()).unwrap();
        let first = udp_exchange(&socket, sa(vip, 53)).unwrap().0;
        for _ in 0..20 {
            assert_eq!(udp_exchange(&socket, sa(vip, 53)).unwrap().0, first);
        }
    }
}

#[test]
fn unready_endpoint_gets_no_traffic() {
    let c = ManifestCluster::new();
    let vips = [ip("10.96.0.30"), ip("fd00:96::30")];
    c.manifests
        .write("web.yaml", &service("web", &vips, SERVICE_PORTS))
        .unwrap();
    for v6 in [false, true] {
        let mut eps = c.net.ready_endpoints(v6, &["b1", "b2", "b3"]);
        eps[1].1 = false;
        c.write_slice("web", v6, &eps);
    }
    let _agent = c.start_agent();
    for vip in vips {
        assert_eq!(
            c.net.tcp_spread(vip, 60),
            names(&["b1", "b3"]),
            "TCP to {vip}"
        );
        assert_eq!(
            c.net.udp_spread(vip, 60),
            names(&["b1", "b3"]),
            "UDP to {vip}"
        );
    }
}

#[test]
fn a_service_without_any_ready_endpoint_refuses_connections_at_once() {
    let c = ManifestCluster::new();
    let vips = [ip("10.96.0.31"), ip("fd00:96::31")];
    c.manifests
        .write("empty.yaml", &service("empty", &vips, SERVICE_PORTS))
        .unwrap();
    for v6 in [false, true] {
        let eps: Vec<(IpAddr, bool)> = c
            .net
            .ready_endpoints(v6, &["b1", "b2"])
            .into_iter()
            .map(|(addr, _)| (addr, false))
            .collect();
        c.write_slice("empty", v6, &eps);
    }
    let _agent = c.start_agent();
    for vip in vips {
        let started = std::time::Instant::now();
        let err = tcp_request(c.net.client(), sa(vip, 80)).unwrap_err();
        assert!(
            format!("{err:#}").contains("refused"),
            "TCP to {vip} without endpoints: {err:#}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "refused at once, not after a timeout"
        );
    }
    // An endpoint turns ready: served from then on.
    for v6 in [false, true] {
        c.write_slice("empty", v6, &c.net.ready_endpoints(v6, &["b2"]));
    }
    for vip in vips {
        let mut last = None;
        let served = eventually(Duration::from_secs(2), || {
            last = Some(tcp_request(c.net.client(), sa(vip, 80)));
            matches!(last, Some(Ok(_)))
        });
        assert!(
            served,
            "{vip} still refused after its endpoint turned ready: {last:?}"
        );
        assert_eq!(last.unwrap().unwrap(), "b2");
    }
}

#[test]
fn udp_to_a_service_without_any_endpoint_is_refused_at_once() {
    let c = ManifestCluster::new();
    let vips = [ip("10.96.0.32"), ip("fd00:96::32")];
    c.write_service("empty", &vips, &[]);
    let _agent = c.start_agent();
    for vip in vips {
        // The pod's datagram is answered by the TC program on its veth with a port unreachable,
        // which fails the connected socket's receive; dropped, it would time out instead.
        let started = Instant::now();
        let err = udp_connected_request(c.net.client(), sa(vip, 53)).unwrap_err();
        assert!(
            format!("{err:#}").contains("refused"),
            "UDP to {vip} without endpoints: {err:#}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "refused at once, not after a timeout"
        );
    }
    // An endpoint comes: served from then on.
    c.write_service("empty", &vips, &["b3"]);
    for vip in vips {
        let mut last = None;
        let served = eventually(Duration::from_secs(2), || {
            last = Some(udp_connected_request(c.net.client(), sa(vip, 53)));
            matches!(last, Some(Ok(_)))
        });
        assert!(
            served,
            "{vip} still refused after an endpoint came: {last:?}"
        );
        assert_eq!(last.unwrap().unwrap(), "b3");
    }
}

#[test]
fn removing_a_backend_stops_new_flows_to_it_within_a_second_while_other_flows_continue() {
    let c = ManifestCluster::new();
    let vips = [ip("10.96.0.40"), ip("fd00:96::40")];
    c.write_service("web", &vips, &BACKENDS);
    let _agent = c.start_agent();
    // Established connections, at least one to each backend, per family.
    let mut sessions = Vec::new();
    for vip in vips {
        let mut seen = BTreeSet::new();
        while seen.len() < 3 {
            let s = TcpSession::open(c.net.client(), sa(vip, 80)).unwrap();
            seen.insert(s.server.clone());
            sessions.push(s);
        }
    }
    for v6 in [false, true] {
        c.write_slice("web", v6, &c.net.ready_endpoints(v6, &["b1", "b3"]));
    }
    let changed = Instant::now();
    for vip in vips {
        let left = Duration::from_secs(1).saturating_sub(changed.elapsed());
        assert!(
            eventually(left, || !c.net.tcp_spread(vip, 5).contains("b2")),
            "b2 still gets new flows to {vip} a second after its removal"
        );
    }
    for vip in vips {
        assert_eq!(
            c.net.tcp_spread(vip, 30),
            names(&["b1", "b3"]),
            "TCP to {vip}"
        );
        assert_eq!(
            c.net.udp_spread(vip, 30),
            names(&["b1", "b3"]),
            "UDP to {vip}"
        );
    }
    // Connections to the remaining backends were never disturbed.
    for s in sessions.iter_mut().filter(|s| s.server != "b2") {
        s.ping()
            .unwrap_or_else(|e| panic!("connection to {} broke: {e}", s.server));
    }
}

#[test]
fn deleting_the_service_stops_translation() {
    let c = ManifestCluster::new();
    let vips = [ip("10.96.0.50"), ip("fd00:96::50")];
    c.write_service("gone", &vips, &BACKENDS);
    let _agent = c.start_agent();
    for vip in vips {
        tcp_request(c.net.client(), sa(vip, 80)).unwrap();
        udp_request(c.net.client(), sa(vip, 53)).unwrap();
    }
    c.manifests.remove("gone.yaml").unwrap();
    for vip in vips {
        assert!(
            eventually(Duration::from_secs(3), || tcp_request(
                c.net.client(),
                sa(vip, 80)
            )
            .is_err()),
            "{vip}:80 still answers after the service was deleted"
        );
        assert!(udp_request(c.net.client(), sa(vip, 53)).is_err());
    }
}

#[test]
fn malformed_manifests_are_reported_and_leave_existing_services_working() {
    let c = ManifestCluster::new();
    let vips = [ip("10.96.0.60"), ip("fd00:96::60")];
    c.write_service("good", &vips, &BACKENDS);
    let agent = c.start_agent();
    c.manifests
        .write(
            "broken.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: [unclosed\n",
        )
        .unwrap();
    c.manifests
        .write(
            "noip.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: noip\n  namespace: default\n\
             spec:\n  ports:\n  - port: 80\n",
        )
        .unwrap();
    agent
        .wait_log("broken.yaml", Duration::from_secs(3))
        .unwrap();
    let logs = agent
        .wait_log("Service default/noip", Duration::from_secs(3))
        .unwrap();
    assert!(logs.contains("clusterIP"), "{logs}");
    // Break the good service's own file: its last good version stays programmed.
    let broken = service("good", &vips, SERVICE_PORTS).replace("10.96.0.60", "10.96.0.999");
    c.manifests.write("good.yaml", &broken).unwrap();
    agent
        .wait_log("keeping its last good version", Duration::from_secs(3))
        .unwrap();
    for vip in vips {
        assert_eq!(
            c.net.tcp_spread(vip, 30),
            names(&["b1", "b2", "b3"]),
            "TCP to {vip}"
        );
        assert_eq!(
            c.net.udp_spread(vip, 30),
            names(&["b1", "b2", "b3"]),
            "UDP to {vip}"
        );
    }
}

#[test]
fn non_service_traffic_passes_untouched_and_pods_added_later_are_served() {
    let mut c = ManifestCluster::new();
    let vips = [ip("10.96.0.70"), ip("fd00:96::70")];
    c.write_service("web", &vips, &BACKENDS);
    let agent = c.start_agent();
    // Direct pod-to-pod traffic is not translated.
    for v6 in [false, true] {
        let b1 = c.net.topo.pod("b1").addr(v6);
        assert_eq!(tcp_request(c.net.client(), sa(b1, 8080)).unwrap(), "b1");
        let (name, from) = udp_request(c.net.client(), sa(b1, 5353)).unwrap();
        assert_eq!((name.as_str(), from), ("b1", sa(b1, 5353)));
    }
    // A pod created after the agent started gets the programs within a scan interval.
    let device = c.net.topo.add_pod("late").unwrap().host_device.clone();
    agent
        .wait_log(
            &format!("attached to pod device {device}"),
            Duration::from_secs(5),
        )
        .unwrap();
    let late = &c.net.topo.pod("late").ns;
    for vip in vips {
        let seen: BTreeSet<String> = (0..30)
            .map(|_| tcp_request(late, sa(vip, 80)).unwrap())
            .collect();
        assert_eq!(
            seen,
            names(&["b1", "b2", "b3"]),
            "TCP to {vip} from the new pod"
        );
    }
}

#[test]
fn two_agents_with_different_pin_directories_do_not_disturb_each_other() {
    // Same service address on two nodes, different backends: each agent serves its own.
    let a = ManifestCluster::new();
    let b = ManifestCluster::new();
    let vips = [ip("10.96.0.80"), ip("fd00:96::80")];
    a.write_service("web", &vips, &BACKENDS);
    b.write_service("web", &vips, &["b3"]);
    let mut agent_a = a.start_agent();
    let agent_b = b.start_agent();
    assert_ne!(agent_a.pin_dir, agent_b.pin_dir);
    for vip in vips {
        assert_eq!(
            a.net.tcp_spread(vip, 30),
            names(&["b1", "b2", "b3"]),
            "node a, {vip}"
        );
        assert_eq!(b.net.tcp_spread(vip, 30), names(&["b3"]), "node b, {vip}");
    }
    // Stopping one agent leaves the other's programs and maps alone.
    agent_a.stop().unwrap();
    for vip in vips {
        assert_eq!(
            b.net.tcp_spread(vip, 20),
            names(&["b3"]),
            "node b after a stopped, {vip}"
        );
        assert_eq!(
            b.net.udp_spread(vip, 20),
            names(&["b3"]),
            "node b after a stopped, {vip}"
        );
    }
}

#[test]
fn restarted_agent_reuses_pinned_maps_and_established_connections_continue() {
    let c = ManifestCluster::new();
    let vips = [ip("10.96.0.90"), ip("fd00:96::90")];
    c.write_service("web", &vips, &BACKENDS);
    let mut first = c.start_agent();
    let mut sessions: Vec<TcpSession> = vips
        .iter()
        .map(|vip| TcpSession::open(c.net.client(), sa(*vip, 80)).unwrap())
        .collect();
    first.stop().unwrap();
    // The next run uses the same pin directory: its flow table still knows the connections.
    let _second = c.start(c.agent().pin_dir(&first.pin_dir));
    for s in &mut sessions {
        s.ping()
            .unwrap_or_else(|e| panic!("connection to {} lost over the restart: {e}", s.server));
    }
    for vip in vips {
        assert_eq!(
            c.net.tcp_spread(vip, 30),
            names(&["b1", "b2", "b3"]),
            "TCP to {vip}"
        );
    }
}
