//! End-to-end: pods in network namespaces reach ClusterIPs through the agent and its TC
//! programs, with real TCP and UDP servers and clients. Needs root; fails (never skips) without.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::Agent,
    eventually,
    manifests::{ManifestDir, endpoint_slice, service},
    netns::Netns,
    require_root,
    topology::Topology,
    traffic::{
        Server, TcpSession, tcp_request, tcp_server, udp_exchange, udp_request, udp_server,
        udp_socket,
    },
};

const AGENT: &str = env!("CARGO_BIN_EXE_lb-agent");
const READY: Duration = Duration::from_secs(20);
const PORTS: &[(&str, u16, &str)] = &[("http", 80, "TCP"), ("dns", 53, "UDP")];
const TARGET_PORTS: &[(&str, u16, &str)] = &[("http", 8080, "TCP"), ("dns", 5353, "UDP")];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn family(v6: bool) -> &'static str {
    if v6 { "v6" } else { "v4" }
}

/// A node with one client pod and three backend pods serving TCP 8080 and UDP 5353.
struct Cluster {
    topo: Topology,
    _servers: Vec<Server>,
    manifests: ManifestDir,
}

impl Cluster {
    fn new() -> Self {
        require_root();
        let topo = Topology::new(&["client", "b1", "b2", "b3"]).expect("topology");
        let mut servers = Vec::new();
        for name in ["b1", "b2", "b3"] {
            let ns = &topo.pod(name).ns;
            servers.push(tcp_server(ns, name, 8080).expect("tcp server"));
            servers.push(udp_server(ns, name, 5353).expect("udp server"));
        }
        Self {
            topo,
            _servers: servers,
            manifests: ManifestDir::new().expect("manifest dir"),
        }
    }

    fn backend_eps(&self, v6: bool, names: &[&str]) -> Vec<(IpAddr, bool)> {
        names
            .iter()
            .map(|n| (self.topo.pod(n).addr(v6), true))
            .collect()
    }

    fn write_slice(&self, service: &str, v6: bool, eps: &[(IpAddr, bool)]) {
        let name = format!("{service}-{}", family(v6));
        self.manifests
            .write(
                &format!("{name}.yaml"),
                &endpoint_slice(&name, service, TARGET_PORTS, eps),
            )
            .unwrap();
    }

    /// Writes a service with slices for the families of `vips`, all three backends ready.
    fn write_service(&self, name: &str, vips: &[IpAddr]) {
        self.manifests
            .write(&format!("{name}.yaml"), &service(name, vips, PORTS))
            .unwrap();
        for vip in vips {
            let v6 = vip.is_ipv6();
            self.write_slice(name, v6, &self.backend_eps(v6, &["b1", "b2", "b3"]));
        }
    }

    fn start_agent(&self) -> Agent {
        let mut agent = Agent::builder(AGENT, &self.topo.node)
            .manifests(&self.manifests)
            .start()
            .expect("start agent");
        agent
            .wait_healthy(&self.topo.node, READY)
            .expect("agent healthy");
        agent
    }

    fn client(&self) -> &Netns {
        &self.topo.pod("client").ns
    }

    /// Backends answering `n` new TCP connections to `vip:80`.
    fn tcp_spread(&self, vip: IpAddr, n: usize) -> BTreeSet<String> {
        (0..n)
            .map(|_| tcp_request(self.client(), sa(vip, 80)).expect("tcp request"))
            .collect()
    }

    /// Backends answering `n` new UDP flows to `vip:53`; checks every answer comes from the VIP.
    fn udp_spread(&self, vip: IpAddr, n: usize) -> BTreeSet<String> {
        (0..n)
            .map(|_| {
                let (name, from) = udp_request(self.client(), sa(vip, 53)).expect("udp request");
                assert_eq!(
                    from,
                    sa(vip, 53),
                    "UDP answer must come from the service address"
                );
                name
            })
            .collect()
    }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn pod_reaches_ipv4_ipv6_and_dual_stack_cluster_ips_over_tcp_and_udp_spread_over_all_backends() {
    let c = Cluster::new();
    c.write_service("v4only", &[ip("10.96.0.10")]);
    c.write_service("v6only", &[ip("fd00:96::10")]);
    c.write_service("dual", &[ip("10.96.0.20"), ip("fd00:96::20")]);
    let _agent = c.start_agent();
    for vip in ["10.96.0.10", "fd00:96::10", "10.96.0.20", "fd00:96::20"] {
        let vip = ip(vip);
        assert_eq!(
            c.tcp_spread(vip, 60),
            names(&["b1", "b2", "b3"]),
            "TCP to {vip}"
        );
        assert_eq!(
            c.udp_spread(vip, 60),
            names(&["b1", "b2", "b3"]),
            "UDP to {vip}"
        );
    }
}

#[test]
fn every_packet_of_a_flow_reaches_the_same_backend() {
    let c = Cluster::new();
    c.write_service("dual", &[ip("10.96.0.20"), ip("fd00:96::20")]);
    let _agent = c.start_agent();
    for vip in [ip("10.96.0.20"), ip("fd00:96::20")] {
        let mut session = TcpSession::open(c.client(), sa(vip, 80)).unwrap();
        for _ in 0..20 {
            session.ping().unwrap();
        }
        let socket = udp_socket(c.client(), vip.is_ipv6()).unwrap();
        let first = udp_exchange(&socket, sa(vip, 53)).unwrap().0;
        for _ in 0..20 {
            assert_eq!(udp_exchange(&socket, sa(vip, 53)).unwrap().0, first);
        }
    }
}

#[test]
fn unready_endpoint_gets_no_traffic() {
    let c = Cluster::new();
    let vips = [ip("10.96.0.30"), ip("fd00:96::30")];
    c.manifests
        .write("web.yaml", &service("web", &vips, PORTS))
        .unwrap();
    for v6 in [false, true] {
        let mut eps = c.backend_eps(v6, &["b1", "b2", "b3"]);
        eps[1].1 = false;
        c.write_slice("web", v6, &eps);
    }
    let _agent = c.start_agent();
    for vip in vips {
        assert_eq!(c.tcp_spread(vip, 60), names(&["b1", "b3"]), "TCP to {vip}");
        assert_eq!(c.udp_spread(vip, 60), names(&["b1", "b3"]), "UDP to {vip}");
    }
}

#[test]
fn a_service_without_any_ready_endpoint_refuses_connections_at_once() {
    let c = Cluster::new();
    let vips = [ip("10.96.0.31"), ip("fd00:96::31")];
    c.manifests
        .write("empty.yaml", &service("empty", &vips, PORTS))
        .unwrap();
    for v6 in [false, true] {
        let eps: Vec<(IpAddr, bool)> = c
            .backend_eps(v6, &["b1", "b2"])
            .into_iter()
            .map(|(addr, _)| (addr, false))
            .collect();
        c.write_slice("empty", v6, &eps);
    }
    let _agent = c.start_agent();
    for vip in vips {
        let started = std::time::Instant::now();
        let err = tcp_request(c.client(), sa(vip, 80)).unwrap_err();
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
        c.write_slice("empty", v6, &c.backend_eps(v6, &["b2"]));
    }
    for vip in vips {
        let mut last = None;
        let served = eventually(Duration::from_secs(2), || {
            last = Some(tcp_request(c.client(), sa(vip, 80)));
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
fn removing_a_backend_stops_new_flows_to_it_within_a_second_while_other_flows_continue() {
    let c = Cluster::new();
    let vips = [ip("10.96.0.40"), ip("fd00:96::40")];
    c.write_service("web", &vips);
    let _agent = c.start_agent();
    // Established connections, at least one to each backend, per family.
    let mut sessions = Vec::new();
    for vip in vips {
        let mut seen = BTreeSet::new();
        while seen.len() < 3 {
            let s = TcpSession::open(c.client(), sa(vip, 80)).unwrap();
            seen.insert(s.server.clone());
            sessions.push(s);
        }
    }
    for v6 in [false, true] {
        c.write_slice("web", v6, &c.backend_eps(v6, &["b1", "b3"]));
    }
    let changed = Instant::now();
    for vip in vips {
        let left = Duration::from_secs(1).saturating_sub(changed.elapsed());
        assert!(
            eventually(left, || !c.tcp_spread(vip, 5).contains("b2")),
            "b2 still gets new flows to {vip} a second after its removal"
        );
    }
    for vip in vips {
        assert_eq!(c.tcp_spread(vip, 30), names(&["b1", "b3"]), "TCP to {vip}");
        assert_eq!(c.udp_spread(vip, 30), names(&["b1", "b3"]), "UDP to {vip}");
    }
    // Connections to the remaining backends were never disturbed.
    for s in sessions.iter_mut().filter(|s| s.server != "b2") {
        s.ping()
            .unwrap_or_else(|e| panic!("connection to {} broke: {e}", s.server));
    }
}

#[test]
fn deleting_the_service_stops_translation() {
    let c = Cluster::new();
    let vips = [ip("10.96.0.50"), ip("fd00:96::50")];
    c.write_service("gone", &vips);
    let _agent = c.start_agent();
    for vip in vips {
        tcp_request(c.client(), sa(vip, 80)).unwrap();
        udp_request(c.client(), sa(vip, 53)).unwrap();
    }
    c.manifests.remove("gone.yaml").unwrap();
    for vip in vips {
        assert!(
            eventually(Duration::from_secs(3), || tcp_request(
                c.client(),
                sa(vip, 80)
            )
            .is_err()),
            "{vip}:80 still answers after the service was deleted"
        );
        assert!(udp_request(c.client(), sa(vip, 53)).is_err());
    }
}

#[test]
fn malformed_manifests_are_reported_and_leave_existing_services_working() {
    let c = Cluster::new();
    let vips = [ip("10.96.0.60"), ip("fd00:96::60")];
    c.write_service("good", &vips);
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
    let broken = service("good", &vips, PORTS).replace("10.96.0.60", "10.96.0.999");
    c.manifests.write("good.yaml", &broken).unwrap();
    agent
        .wait_log("keeping its last good version", Duration::from_secs(3))
        .unwrap();
    for vip in vips {
        assert_eq!(
            c.tcp_spread(vip, 30),
            names(&["b1", "b2", "b3"]),
            "TCP to {vip}"
        );
        assert_eq!(
            c.udp_spread(vip, 30),
            names(&["b1", "b2", "b3"]),
            "UDP to {vip}"
        );
    }
}

#[test]
fn non_service_traffic_passes_untouched_and_pods_added_later_are_served() {
    let mut c = Cluster::new();
    let vips = [ip("10.96.0.70"), ip("fd00:96::70")];
    c.write_service("web", &vips);
    let agent = c.start_agent();
    // Direct pod-to-pod traffic is not translated.
    for v6 in [false, true] {
        let b1 = c.topo.pod("b1").addr(v6);
        assert_eq!(tcp_request(c.client(), sa(b1, 8080)).unwrap(), "b1");
        let (name, from) = udp_request(c.client(), sa(b1, 5353)).unwrap();
        assert_eq!((name.as_str(), from), ("b1", sa(b1, 5353)));
    }
    // A pod created after the agent started gets the programs within a scan interval.
    let device = c.topo.add_pod("late").unwrap().host_device.clone();
    agent
        .wait_log(
            &format!("attached to pod device {device}"),
            Duration::from_secs(5),
        )
        .unwrap();
    let late = &c.topo.pod("late").ns;
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
    let a = Cluster::new();
    let b = Cluster::new();
    let vips = [ip("10.96.0.80"), ip("fd00:96::80")];
    a.write_service("web", &vips);
    b.manifests
        .write("web.yaml", &service("web", &vips, PORTS))
        .unwrap();
    for v6 in [false, true] {
        b.write_slice("web", v6, &b.backend_eps(v6, &["b3"]));
    }
    let mut agent_a = a.start_agent();
    let agent_b = b.start_agent();
    assert_ne!(agent_a.pin_dir, agent_b.pin_dir);
    for vip in vips {
        assert_eq!(
            a.tcp_spread(vip, 30),
            names(&["b1", "b2", "b3"]),
            "node a, {vip}"
        );
        assert_eq!(b.tcp_spread(vip, 30), names(&["b3"]), "node b, {vip}");
    }
    // Stopping one agent leaves the other's programs and maps alone.
    agent_a.stop().unwrap();
    for vip in vips {
        assert_eq!(
            b.tcp_spread(vip, 20),
            names(&["b3"]),
            "node b after a stopped, {vip}"
        );
        assert_eq!(
            b.udp_spread(vip, 20),
            names(&["b3"]),
            "node b after a stopped, {vip}"
        );
    }
}

#[test]
fn restarted_agent_reuses_pinned_maps_and_established_connections_continue() {
    let c = Cluster::new();
    let vips = [ip("10.96.0.90"), ip("fd00:96::90")];
    c.write_service("web", &vips);
    let mut first = c.start_agent();
    let mut sessions: Vec<TcpSession> = vips
        .iter()
        .map(|vip| TcpSession::open(c.client(), sa(*vip, 80)).unwrap())
        .collect();
    first.stop().unwrap();
    // The next run uses the same pin directory: its flow table still knows the connections.
    let mut second = Agent::builder(AGENT, &c.topo.node)
        .manifests(&c.manifests)
        .pin_dir(&first.pin_dir)
        .start()
        .unwrap();
    second.wait_healthy(&c.topo.node, READY).unwrap();
    for s in &mut sessions {
        s.ping()
            .unwrap_or_else(|e| panic!("connection to {} lost over the restart: {e}", s.server));
    }
    for vip in vips {
        assert_eq!(
            c.tcp_spread(vip, 30),
            names(&["b1", "b2", "b3"]),
            "TCP to {vip}"
        );
    }
}
