//! End-to-end, external traffic: a client on the LAN reaches NodePorts, load balancer IPs and
//! external IPs on two nodes, both families, with backends on the same node and on the other.
//! Every test runs twice: with the XDP program attached in native mode on the nodes' (veth) LAN
//! devices (`--datapath-mode xdp`, module `xdp`), and with the TC programs alone
//! (`--datapath-mode tc`, module `tc`).

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_tests::{
    agent::Agent,
    eventually,
    http::http_get,
    ip,
    manifests::{ManifestDir, ServiceSpec, endpoint_slice_on_nodes},
    require_root, sa,
    topology::{NODE_DEVICE, TwoNodes},
    traffic::{
        Server, TcpSession, tcp_request, tcp_server, tcp_whoami_server, udp_connected_request,
        udp_request, udp_server,
    },
};

use super::{AGENT, READY};

/// Which datapath serves the nodes' LAN devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Xdp,
    Tc,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::Tc => "tc",
        }
    }
}

/// Runs each test once per datapath mode.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        mod xdp {
            $(#[test] fn $name() { super::$name(super::Mode::Xdp) })*
        }
        mod tc {
            $(#[test] fn $name() { super::$name(super::Mode::Tc) })*
        }
    };
}

in_both_modes!(
    node_ports_serve_local_and_remote_backends_for_both_families_over_tcp_and_udp,
    an_ipv6_only_node_port_service_answers_on_the_nodes_ipv6_addresses_only,
    external_traffic_policy_local_keeps_the_client_and_health_check_follows_local_endpoints,
    load_balancer_and_external_ips_with_source_ranges_allowed_and_denied,
    ports_without_a_node_port_are_not_reachable_on_node_addresses,
    a_node_address_added_at_run_time_serves_node_ports_within_a_second,
    node_ports_of_a_service_without_endpoints_refuse_connections,
    session_affinity_keeps_an_outside_client_on_one_backend_through_a_node_port,
    pods_reach_local_policy_external_frontends_without_a_local_endpoint_within_source_ranges,
    restarting_an_agent_keeps_node_port_connections_and_swaps_its_programs_in_place,
    short_connections_to_a_backend_on_the_other_node_never_run_out_of_snat_ports,
    a_syn_flood_over_the_flow_tables_leaves_idle_connections_working,
    udp_answers_further_apart_than_the_udp_lifetime_still_reach_the_client,
);

/// Nodes `a` (pod `a1`) and `b` (pod `b1`), each pod serving TCP 8080 (answering with its name
/// and the client address it sees) and UDP 5353, an agent on each node.
struct Lan {
    net: TwoNodes,
    _servers: Vec<Server>,
    manifests: ManifestDir,
    agents: Vec<Agent>,
    mode: Mode,
}

impl Lan {
    fn new(mode: Mode, services: &[ServiceSpec<'_>], endpoints: &[(&str, &[&str])]) -> Self {
        require_root();
        let net = TwoNodes::new(&["a1"], &["b1"]).expect("topology");
        let mut servers = Vec::new();
        for (node, pod) in [("a", "a1"), ("b", "b1")] {
            let ns = &net.node(node).pod(pod).ns;
            servers.push(tcp_whoami_server(ns, pod, 8080).unwrap());
            servers.push(udp_server(ns, pod, 5353).unwrap());
            servers.push(tcp_server(ns, pod, 9090).unwrap());
        }
        let lan = Self {
            net,
            _servers: servers,
            manifests: ManifestDir::new().unwrap(),
            agents: Vec::new(),
            mode,
        };
        for svc in services {
            lan.manifests
                .write(&format!("{}.yaml", svc.name), &svc.to_yaml())
                .unwrap();
        }
        for (service, pods) in endpoints {
            lan.write_endpoints(service, pods);
        }
        lan
    }

    /// Endpoints of `service`: the named pods (`a1`, `b1`), both families.
    fn write_endpoints(&self, service: &str, pods: &[&str]) {
        for v6 in [false, true] {
            let eps: Vec<(IpAddr, bool, &str)> = pods
                .iter()
                .map(|p| {
                    let node = if p.starts_with('a') { "a" } else { "b" };
                    (self.net.node(node).pod(p).addr(v6), true, node)
                })
                .collect();
            let name = format!("{service}-{}", if v6 { "v6" } else { "v4" });
            let ports = [
                ("http", 8080, "TCP"),
                ("dns", 5353, "UDP"),
                ("echo", 9090, "TCP"),
            ];
            self.manifests
                .write(
                    &format!("{name}.yaml"),
                    &endpoint_slice_on_nodes(&name, service, &ports, &eps),
                )
                .unwrap();
        }
    }

    /// Starts an agent on each node and checks that the mode's programs are the ones attached.
    fn start_agents(&mut self) {
        self.start_agents_with(&[]);
    }

    /// [`Lan::start_agents`], with more arguments for both agents.
    fn start_agents_with(&mut self, args: &[&str]) {
        for node in ["a", "b"] {
            let mut agent = Agent::builder(AGENT, &self.net.node(node).ns)
                .node_name(node)
                .manifests(&self.manifests)
                .args(["--devices", NODE_DEVICE, "--datapath-mode", self.mode.arg()])
                .args(args.iter().copied())
                .start()
                .unwrap();
            agent.wait_healthy(&self.net.node(node).ns, READY).unwrap();
            let link = lb_tests::netns::run(self.net.node(node).ns.command("ip").args([
                "-details",
                "link",
                "show",
                NODE_DEVICE,
            ]))
            .unwrap();
            let link = String::from_utf8_lossy(&link.stdout).into_owned();
            match self.mode {
                // `xdp` alone would be generic (skb) mode; native mode shows as `xdpdrv` or,
                // with a single program, `prog/xdp` next to the plain `xdp` flag.
                Mode::Xdp => assert!(
                    link.contains("prog/xdp") && !link.contains("xdpgeneric"),
                    "node {node}: no native XDP program on {NODE_DEVICE}: {link}\n{}",
                    agent.logs()
                ),
                Mode::Tc => assert!(
                    !link.contains("prog/xdp"),
                    "node {node}: an XDP program on {NODE_DEVICE} in TC mode: {link}"
                ),
            }
            self.agents.push(agent);
        }
    }

    /// Both agents' counters, for failure messages.
    fn diagnose(&self) -> String {
        let mut out = String::new();
        for agent in &self.agents {
            if let Ok(o) = std::process::Command::new(AGENT)
                .args(["stats", "--bpffs"])
                .arg(&agent.pin_dir)
                .output()
            {
                out += &String::from_utf8_lossy(&o.stdout).replace('\n', " ");
                out += "\n";
            }
        }
        for node in &self.net.nodes {
            if let Ok(o) = node
                .ns
                .command("ethtool")
                .args(["-S", NODE_DEVICE])
                .output()
            {
                out += &format!(
                    "node {} {NODE_DEVICE}: {}\n",
                    node.name,
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
        }
        out
    }

    /// A counter of the agent on `node` (`lb-agent stats`).
    fn stat(&self, node: &str, name: &str) -> u64 {
        let agent = &self.agents[if node == "a" { 0 } else { 1 }];
        let out = lb_tests::netns::run(
            std::process::Command::new(AGENT)
                .args(["stats", "--bpffs"])
                .arg(&agent.pin_dir),
        )
        .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == name).then(|| v.parse().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("no counter {name} from lb-agent stats"))
    }

    /// `(pod, client address it saw)` of one TCP connection from the client.
    fn tcp(&self, addr: SocketAddr) -> anyhow::Result<(String, IpAddr)> {
        let line = tcp_request(&self.net.client, addr)?;
        let (pod, peer) = line
            .split_once(' ')
            .ok_or_else(|| anyhow::anyhow!("odd answer {line:?}"))?;
        Ok((pod.to_owned(), peer.parse()?))
    }
}

fn port<'a>(
    name: &'a str,
    port: u16,
    proto: &'a str,
    node_port: u16,
) -> (&'a str, u16, &'a str, Option<u16>) {
    (name, port, proto, Some(node_port))
}

fn node_ports_serve_local_and_remote_backends_for_both_families_over_tcp_and_udp(mode: Mode) {
    let svc = ServiceSpec {
        name: "np",
        service_type: "NodePort",
        cluster_ips: vec![ip("10.96.3.10"), ip("fd00:96::3:10")],
        ports: vec![
            port("http", 80, "TCP", 30080),
            port("dns", 53, "UDP", 30053),
        ],
        ..Default::default()
    };
    let mut lan = Lan::new(mode, &[svc], &[("np", &["a1", "b1"])]);
    lan.start_agents();
    for node in ["a", "b"] {
        for v6 in [false, true] {
            let node_addr = lan.net.node(node).addr(v6);
            let client = lan.net.client_addr(v6);
            let mut seen = BTreeSet::new();
            for _ in 0..40 {
                let (pod, peer) = lan
                    .tcp(sa(node_addr, 30080))
                    .unwrap_or_else(|e| panic!("{e:#}; counters:\n{}", lan.diagnose()));
                let local = pod.starts_with(node);
                // A local backend sees the client; one on the other node sees this node (SNAT).
                let expected_peer = if local { client } else { node_addr };
                assert_eq!(peer, expected_peer, "{pod} via {node_addr}");
                seen.insert(pod);
            }
            assert_eq!(seen.len(), 2, "both backends through {node_addr}: {seen:?}");
            let mut seen = BTreeSet::new();
            for _ in 0..40 {
                let (pod, from) = udp_request(&lan.net.client, sa(node_addr, 30053)).unwrap();
                assert_eq!(from, sa(node_addr, 30053), "UDP answer source");
                seen.insert(pod);
            }
            assert_eq!(
                seen.len(),
                2,
                "both UDP backends through {node_addr}: {seen:?}"
            );
        }
    }
    // Which datapath did the work: each node sent flows to the other's backend and their
    // replies; XDP does that itself once the next hop is resolved.
    for node in ["a", "b"] {
        let sent = lan.stat(node, "xdp_sent");
        match mode {
            Mode::Xdp => assert!(sent > 0, "node {node}: XDP sent no frame itself"),
            Mode::Tc => assert_eq!(sent, 0, "node {node}: XDP ran in TC mode"),
        }
    }
}

/// e2e: "should have session affinity work for NodePort service [LinuxOnly] [Conformance]":
/// 15 consecutive requests from one client through a node port reach one backend, whether
/// local or on the other node (SNAT), both families, TCP and UDP; without affinity the same
/// requests reach both.
fn session_affinity_keeps_an_outside_client_on_one_backend_through_a_node_port(mode: Mode) {
    let spec = |name, session_affinity, base: u16| ServiceSpec {
        name,
        service_type: "NodePort",
        cluster_ips: vec![ip("10.96.3.60"), ip("fd00:96::3:60")]
            .into_iter()
            .map(|a: IpAddr| match a {
                IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) + u32::from(base)).into()),
                IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) + u128::from(base)).into()),
            })
            .collect(),
        ports: vec![
            port("http", 80, "TCP", 30600 + base),
            port("dns", 53, "UDP", 30650 + base),
        ],
        session_affinity,
        ..Default::default()
    };
    let mut lan = Lan::new(
        mode,
        &[spec("sticky", Some(10_800), 0), spec("plain", None, 1)],
        &[("sticky", &["a1", "b1"]), ("plain", &["a1", "b1"])],
    );
    lan.start_agents();
    for v6 in [false, true] {
        let node_addr = lan.net.node("a").addr(v6);
        let tcp = |node_port| -> BTreeSet<String> {
            (0..15)
                .map(|_| {
                    lan.tcp(sa(node_addr, node_port))
                        .unwrap_or_else(|e| panic!("{e:#}; counters:\n{}", lan.diagnose()))
                        .0
                })
                .collect()
        };
        let udp = |node_port| -> BTreeSet<String> {
            (0..15)
                .map(|_| {
                    udp_request(&lan.net.client, sa(node_addr, node_port))
                        .unwrap()
                        .0
                })
                .collect()
        };
        assert_eq!(tcp(30600).len(), 1, "TCP with affinity via {node_addr}");
        assert_eq!(udp(30650).len(), 1, "UDP with affinity via {node_addr}");
        // Two backends, 15 requests on one by chance: 1 in 16 000.
        assert_eq!(tcp(30601).len(), 2, "TCP without affinity via {node_addr}");
        assert_eq!(udp(30651).len(), 2, "UDP without affinity via {node_addr}");
    }
    // e2e: "should be able to switch session affinity for NodePort service" and "should have
    // session affinity timeout work for NodePort service": switched off the requests spread,
    // with a 1 s timeout requests spaced further apart choose anew while bursts stick.
    let rewrite = |affinity| {
        lan.manifests
            .write("sticky.yaml", &spec("sticky", affinity, 0).to_yaml())
            .unwrap();
    };
    let node_addr = lan.net.node("a").addr(false);
    let tcp_spread = |n| -> BTreeSet<String> {
        (0..n)
            .map(|_| lan.tcp(sa(node_addr, 30600)).unwrap().0)
            .collect()
    };
    rewrite(None);
    assert!(
        eventually(Duration::from_secs(5), || tcp_spread(15).len() == 2),
        "affinity switched off, yet one backend"
    );
    rewrite(Some(1));
    assert!(
        eventually(Duration::from_secs(5), || tcp_spread(15).len() == 1),
        "affinity switched on again, yet two backends"
    );
    let mut seen = BTreeSet::new();
    for _ in 0..12 {
        let burst = tcp_spread(3);
        assert_eq!(burst.len(), 1, "back to back within the timeout: {burst:?}");
        seen.extend(burst);
        std::thread::sleep(Duration::from_millis(1_300));
    }
    // Twelve fresh choices between two backends all alike: 1 in 2048.
    assert_eq!(seen.len(), 2, "requests after the timeout all on {seen:?}");
}

/// e2e: "… should work from pods" and "… should only allow access from service loadbalancer
/// source ranges" (from pods): a pod on a node without the service's endpoint reaches its load
/// balancer IP and node port although `externalTrafficPolicy` is Local (kube-proxy's
/// short-circuit to every endpoint), keeping its own address, but only from inside
/// `loadBalancerSourceRanges`. Both families, TCP and UDP.
fn pods_reach_local_policy_external_frontends_without_a_local_endpoint_within_source_ranges(
    mode: Mode,
) {
    let spec = |name, lb: [&str; 2], ranges: Vec<&'static str>, base: u16| ServiceSpec {
        name,
        service_type: "LoadBalancer",
        cluster_ips: vec![
            ip(&format!("10.96.3.{}", 70 + base)),
            ip(&format!("fd00:96::3:{}", 70 + base)),
        ],
        ports: vec![
            port("http", 80, "TCP", 30700 + base),
            port("dns", 53, "UDP", 30750 + base),
        ],
        external_traffic_local: true,
        load_balancer_ips: lb.iter().map(|a| ip(a)).collect(),
        source_ranges: ranges,
        ..Default::default()
    };
    let mut lan = Lan::new(
        mode,
        &[
            spec(
                "esipp",
                ["10.97.0.7", "fd00:97::7"],
                // Pod a1 only, as the e2e test's acceptPod/32.
                vec!["10.201.1.2/32", "fd00:201:1::2/128"],
                0,
            ),
            spec(
                "esippdeny",
                ["10.97.0.8", "fd00:97::8"],
                vec!["198.51.100.0/24", "2001:db8::/32"],
                1,
            ),
        ],
        &[("esipp", &["b1"]), ("esippdeny", &["b1"])],
    );
    lan.start_agents();
    let a1 = &lan.net.node("a").pod("a1").ns;
    for v6 in [false, true] {
        let pod_addr = lan.net.node("a").pod("a1").addr(v6);
        let (lb, denied) = if v6 {
            (ip("fd00:97::7"), ip("fd00:97::8"))
        } else {
            (ip("10.97.0.7"), ip("10.97.0.8"))
        };
        let node_addr = lan.net.node("a").addr(v6);
        for addr in [sa(lb, 80), sa(node_addr, 30700)] {
            let line = tcp_request(a1, addr)
                .unwrap_or_else(|e| panic!("{e:#}; a1 -> {addr}; counters:\n{}", lan.diagnose()));
            let (pod, peer) = line.split_once(' ').unwrap();
            assert_eq!(pod, "b1", "a1 -> {addr}: the only endpoint, on node b");
            assert_eq!(
                peer.parse::<IpAddr>().unwrap(),
                pod_addr,
                "a1 -> {addr}: client kept"
            );
        }
        let (pod, _) = udp_request(a1, sa(lb, 53)).unwrap();
        assert_eq!(pod, "b1", "UDP a1 -> {lb}");
        assert!(
            tcp_request(a1, sa(denied, 80)).is_err(),
            "a1 -> {denied}: outside the source ranges"
        );
    }
}

fn an_ipv6_only_node_port_service_answers_on_the_nodes_ipv6_addresses_only(mode: Mode) {
    let svc = ServiceSpec {
        name: "np6",
        service_type: "NodePort",
        cluster_ips: vec![ip("fd00:96::3:50")],
        ports: vec![
            port("http", 80, "TCP", 30085),
            port("dns", 53, "UDP", 30086),
        ],
        ..Default::default()
    };
    let mut lan = Lan::new(mode, &[svc], &[("np6", &["a1", "b1"])]);
    lan.start_agents();
    for node in ["a", "b"] {
        let v6 = lan.net.node(node).addr(true);
        let seen: BTreeSet<String> = (0..30).map(|_| lan.tcp(sa(v6, 30085)).unwrap().0).collect();
        assert_eq!(seen.len(), 2, "both backends through {v6}: {seen:?}");
        let mut seen = BTreeSet::new();
        for _ in 0..20 {
            let (pod, from) = udp_request(&lan.net.client, sa(v6, 30086)).unwrap();
            assert_eq!(from, sa(v6, 30086), "UDP answer source");
            seen.insert(pod);
        }
        assert_eq!(seen.len(), 2, "both UDP backends through {v6}: {seen:?}");
        let v4 = lan.net.node(node).addr(false);
        let err = lan.tcp(sa(v4, 30085)).unwrap_err();
        assert!(
            format!("{err:#}").contains("refused"),
            "{v4}:30085: an IPv6-only service has no IPv4 node port: {err:#}"
        );
    }
}

fn external_traffic_policy_local_keeps_the_client_and_health_check_follows_local_endpoints(
    mode: Mode,
) {
    let svc = ServiceSpec {
        name: "local",
        service_type: "NodePort",
        cluster_ips: vec![ip("10.96.3.20"), ip("fd00:96::3:20")],
        ports: vec![port("http", 80, "TCP", 30081)],
        external_traffic_local: true,
        health_check_node_port: Some(32081),
        ..Default::default()
    };
    let mut lan = Lan::new(mode, &[svc], &[("local", &["a1"])]);
    lan.start_agents();
    for v6 in [false, true] {
        let (a, b) = (lan.net.node("a").addr(v6), lan.net.node("b").addr(v6));
        for _ in 0..10 {
            assert_eq!(
                lan.tcp(sa(a, 30081)).unwrap(),
                ("a1".to_owned(), lan.net.client_addr(v6)),
                "the client address is preserved"
            );
        }
        assert!(
            lan.tcp(sa(b, 30081)).is_err(),
            "node b has no local endpoint: dropped"
        );
        let (code, body) = http_get(&lan.net.client, sa(a, 32081), "/healthz").unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(r#""localEndpoints":1"#), "{body}");
        let (code, body) = http_get(&lan.net.client, sa(b, 32081), "/").unwrap();
        assert_eq!(code, 503, "{body}");
    }
    // The local endpoint goes away: 200 -> 503.
    lan.write_endpoints("local", &["b1"]);
    let a = lan.net.node("a").addr(false);
    let mut code = 0;
    let turned = eventually(Duration::from_secs(5), || {
        code = http_get(&lan.net.client, sa(a, 32081), "/").unwrap().0;
        code == 503
    });
    assert!(turned, "still {code} after the endpoint left");
}

fn load_balancer_and_external_ips_with_source_ranges_allowed_and_denied(mode: Mode) {
    let allowed = ServiceSpec {
        name: "lb",
        service_type: "LoadBalancer",
        cluster_ips: vec![ip("10.96.3.30"), ip("fd00:96::3:30")],
        ports: vec![
            port("http", 80, "TCP", 30082),
            port("dns", 53, "UDP", 30087),
        ],
        load_balancer_ips: vec![ip("10.97.0.1"), ip("fd00:97::1")],
        source_ranges: vec!["10.250.0.100/32", "fd00:250::100/128"],
        ..Default::default()
    };
    let denied = ServiceSpec {
        name: "lbdeny",
        load_balancer_ips: vec![ip("10.97.0.2"), ip("fd00:97::2")],
        cluster_ips: vec![ip("10.96.3.31"), ip("fd00:96::3:31")],
        ports: vec![
            port("http", 80, "TCP", 30083),
            port("dns", 53, "UDP", 30088),
        ],
        source_ranges: vec!["198.51.100.0/24", "2001:db8::/32"],
        ..allowed.clone()
    };
    let external = ServiceSpec {
        name: "ext",
        service_type: "ClusterIP",
        cluster_ips: vec![ip("10.96.3.32"), ip("fd00:96::3:32")],
        ports: vec![("http", 80, "TCP", None), ("dns", 53, "UDP", None)],
        external_ips: vec![ip("10.97.1.1"), ip("fd00:97:1::1")],
        ..Default::default()
    };
    let mut lan = Lan::new(
        mode,
        &[allowed, denied, external],
        &[
            ("lb", &["a1", "b1"]),
            ("lbdeny", &["a1", "b1"]),
            ("ext", &["a1", "b1"]),
        ],
    );
    for addr in [
        "10.97.0.1",
        "fd00:97::1",
        "10.97.0.2",
        "fd00:97::2",
        "10.97.1.1",
        "fd00:97:1::1",
    ] {
        lan.net.route_from_client(ip(addr), "a").unwrap();
    }
    lan.start_agents();
    for (allowed, denied, external) in [
        ("10.97.0.1", "10.97.0.2", "10.97.1.1"),
        ("fd00:97::1", "fd00:97::2", "fd00:97:1::1"),
    ] {
        let seen: BTreeSet<String> = (0..30)
            .map(|_| lan.tcp(sa(ip(allowed), 80)).unwrap().0)
            .collect();
        assert_eq!(seen.len(), 2, "load balancer IP {allowed}: {seen:?}");
        assert!(
            lan.tcp(sa(ip(denied), 80)).is_err(),
            "{denied}: the client is outside loadBalancerSourceRanges"
        );
        let seen: BTreeSet<String> = (0..30)
            .map(|_| lan.tcp(sa(ip(external), 80)).unwrap().0)
            .collect();
        assert_eq!(seen.len(), 2, "external IP {external}: {seen:?}");
        for addr in [allowed, external] {
            let mut seen = BTreeSet::new();
            for _ in 0..20 {
                let (pod, from) = udp_request(&lan.net.client, sa(ip(addr), 53)).unwrap();
                assert_eq!(from, sa(ip(addr), 53), "UDP answer source");
                seen.insert(pod);
            }
            assert_eq!(seen.len(), 2, "UDP through {addr}: {seen:?}");
        }
        assert!(
            udp_request(&lan.net.client, sa(ip(denied), 53)).is_err(),
            "{denied}: UDP from outside loadBalancerSourceRanges"
        );
    }
    // The source ranges filter the load balancer IPs only: the denied service's node port
    // answers the same client (as kube-proxy's).
    let node_port = sa(lan.net.node("a").addr(false), 30083);
    assert!(
        lan.tcp(node_port).is_ok(),
        "{node_port}: loadBalancerSourceRanges do not apply to node ports"
    );
}

fn ports_without_a_node_port_are_not_reachable_on_node_addresses(mode: Mode) {
    let plain = ServiceSpec {
        name: "plain",
        service_type: "ClusterIP",
        cluster_ips: vec![ip("10.96.3.40"), ip("fd00:96::3:40")],
        ports: vec![("http", 80, "TCP", None)],
        ..Default::default()
    };
    let np = ServiceSpec {
        name: "np",
        service_type: "NodePort",
        cluster_ips: vec![ip("10.96.3.41"), ip("fd00:96::3:41")],
        ports: vec![port("http", 81, "TCP", 30084)],
        ..Default::default()
    };
    let mut lan = Lan::new(mode, &[plain, np], &[("plain", &["a1"]), ("np", &["a1"])]);
    lan.start_agents();
    for v6 in [false, true] {
        let a = lan.net.node("a").addr(v6);
        assert!(lan.tcp(sa(a, 30084)).is_ok(), "the node port answers");
        for port in [80, 81, 8080] {
            let err = lan.tcp(sa(a, port)).unwrap_err();
            assert!(
                format!("{err:#}").contains("refused"),
                "{a}:{port} is not a node port: {err:#}"
            );
        }
    }
}

fn a_node_address_added_at_run_time_serves_node_ports_within_a_second(mode: Mode) {
    let svc = ServiceSpec {
        name: "np",
        service_type: "NodePort",
        cluster_ips: vec![ip("10.96.3.60"), ip("fd00:96::3:60")],
        ports: vec![port("http", 80, "TCP", 30089)],
        ..Default::default()
    };
    let mut lan = Lan::new(mode, &[svc], &[("np", &["a1"])]);
    lan.start_agents();
    for (added, prefix) in [("10.250.0.11", "/24"), ("fd00:250::11", "/64")] {
        let added = ip(added);
        let target = sa(added, 30089);
        let mut args = vec!["addr", "add"];
        let cidr = format!("{added}{prefix}");
        args.extend([cidr.as_str(), "dev", NODE_DEVICE]);
        if added.is_ipv6() {
            args.push("nodad");
        }
        lan.net.node("a").ns.ip(&args).unwrap();
        let mut last = None;
        let served = eventually(Duration::from_secs(1), || {
            last = Some(lan.tcp(target));
            matches!(last, Some(Ok(_)))
        });
        assert!(
            served,
            "{target} still not served a second after the address came: {last:?}"
        );
        assert_eq!(last.unwrap().unwrap().0, "a1");
    }
}

fn node_ports_of_a_service_without_endpoints_refuse_connections(mode: Mode) {
    let svc = ServiceSpec {
        name: "empty",
        service_type: "NodePort",
        cluster_ips: vec![ip("10.96.3.70"), ip("fd00:96::3:70")],
        ports: vec![
            port("http", 80, "TCP", 30090),
            port("dns", 53, "UDP", 30093),
        ],
        ..Default::default()
    };
    let mut lan = Lan::new(mode, &[svc], &[("empty", &[])]);
    lan.start_agents();
    for node in ["a", "b"] {
        for v6 in [false, true] {
            let target = sa(lan.net.node(node).addr(v6), 30090);
            let err = lan.tcp(target).unwrap_err();
            assert!(
                format!("{err:#}").contains("refused"),
                "{target} without endpoints: {err:#}"
            );
            // UDP: a port unreachable from the node port's address fails the client's
            // connected socket (in XDP mode too: XDP leaves the refusal to TC).
            let target = sa(lan.net.node(node).addr(v6), 30093);
            let err = udp_connected_request(&lan.net.client, target).unwrap_err();
            assert!(
                format!("{err:#}").contains("refused"),
                "UDP to {target} without endpoints: {err:#}"
            );
        }
    }
    assert!(lan.stat("a", "rejected") >= 4, "node a refused them itself");
}

fn restarting_an_agent_keeps_node_port_connections_and_swaps_its_programs_in_place(mode: Mode) {
    let svc = ServiceSpec {
        name: "rs",
        service_type: "NodePort",
        cluster_ips: vec![ip("10.96.3.80"), ip("fd00:96::3:80")],
        ports: vec![
            port("http", 80, "TCP", 30091),
            port("echo", 9090, "TCP", 30092),
        ],
        ..Default::default()
    };
    let mut lan = Lan::new(mode, &[svc], &[("rs", &["a1", "b1"])]);
    lan.start_agents();
    // Connections through node a to its own pod and, SNATed, to node b's.
    let mut sessions = Vec::new();
    for v6 in [false, true] {
        let target = sa(lan.net.node("a").addr(v6), 30092);
        let mut seen = BTreeSet::new();
        while seen.len() < 2 {
            let session = TcpSession::open(&lan.net.client, target).unwrap();
            seen.insert(session.server.clone());
            sessions.push(session);
        }
    }
    let check = |lan: &Lan, sessions: &mut Vec<TcpSession>, when: &str| {
        for s in sessions.iter_mut() {
            s.ping()
                .unwrap_or_else(|e| panic!("{when}: connection to {} broke: {e:#}", s.server));
        }
        for v6 in [false, true] {
            let target = sa(lan.net.node("a").addr(v6), 30091);
            let seen: BTreeSet<String> = (0..20)
                .map(|_| {
                    lan.tcp(target)
                        .unwrap_or_else(|e| panic!("{when}: {target}: {e:#}"))
                        .0
                })
                .collect();
            assert_eq!(seen.len(), 2, "{when}: both backends through {target}");
        }
    };
    lan.agents[0].kill().unwrap();
    check(&lan, &mut sessions, "agent a down");
    lan.agents[0].restart().unwrap();
    lan.agents[0]
        .wait_healthy(&lan.net.node("a").ns, READY)
        .unwrap();
    check(&lan, &mut sessions, "agent a restarted");
    let link = lb_tests::netns::run(lan.net.node("a").ns.command("ip").args([
        "-details",
        "link",
        "show",
        NODE_DEVICE,
    ]))
    .unwrap();
    let link = String::from_utf8_lossy(&link.stdout).into_owned();
    assert_eq!(
        link.contains("prog/xdp"),
        mode == Mode::Xdp,
        "after the restart: {link}"
    );
}

/// A node port service whose only endpoint is pod `b1` on node `b` (TCP "echo" 9090 on node
/// port `node_port`, UDP "dns" 5353 on `node_port + 1`).
fn remote_only(name: &'static str, v4: &str, v6: &str, node_port: u16) -> ServiceSpec<'static> {
    ServiceSpec {
        name,
        service_type: "NodePort",
        cluster_ips: vec![ip(v4), ip(v6)],
        ports: vec![
            port("echo", 90, "TCP", node_port),
            port("dns", 53, "UDP", node_port + 1),
        ],
        ..Default::default()
    }
}

/// Short TCP connections from `sources` (addresses of the client, used in turn) to `addr`,
/// from 16 threads at once: connect, read the greeting, close first (so the backend keeps no
/// TIME_WAIT). Returns the failures, each with its reason.
fn short_connections(lan: &Lan, sources: &[IpAddr], addr: SocketAddr, count: usize) -> Vec<String> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, socket,
    };
    use std::io::Read as _;
    const THREADS: usize = 16;
    let one = |i: usize| -> anyhow::Result<()> {
        let source = sources[i % sources.len()];
        let family = if addr.is_ipv6() {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrStorage::from(SocketAddr::new(source, 0)),
        )?;
        connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrStorage::from(addr),
        )?;
        let mut stream = std::net::TcpStream::from(fd);
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut greeting = [0_u8; 3];
        stream.read_exact(&mut greeting)?;
        anyhow::ensure!(&greeting == b"b1\n", "greeting {greeting:?}");
        Ok(())
    };
    lan.net
        .client
        .run(|| {
            // Threads made here share this thread's network namespace.
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..THREADS)
                    .map(|t| {
                        s.spawn(move || {
                            (t..count)
                                .step_by(THREADS)
                                .filter_map(|i| {
                                    one(i).err().map(|e| format!("connection {i}: {e:#}"))
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| w.join().unwrap())
                    .collect()
            })
        })
        .unwrap()
}

/// Review finding 1: short connections through a node port whose only backend is on the other
/// node, each SNATed to a port of node `a`, 25 000 per family from 64 client addresses and 16
/// threads, many more than the SNAT port range holds (`--snat-ports` 5 000 ports here, closed
/// connections' ports free after `--tcp-close-timeout 1s`): every one succeeds, and no new
/// flow ever found its ports all taken. The close lifetime is shortened so that the test stays
/// short: the default range and lifetime sustain 1 000 new connections per second and
/// backend, this one 5 000.
fn short_connections_to_a_backend_on_the_other_node_never_run_out_of_snat_ports(mode: Mode) {
    const CONNECTIONS: usize = 25_000;
    let mut lan = Lan::new(
        mode,
        &[remote_only("short", "10.96.3.90", "fd00:96::3:90", 30094)],
        &[("short", &["b1"])],
    );
    let sources: Vec<Vec<IpAddr>> = [false, true]
        .iter()
        .map(|&v6| {
            (0..64u16)
                .map(|i| {
                    let addr = if v6 {
                        format!("fd00:250::1:{:x}", i + 1)
                    } else {
                        format!("10.250.0.{}", 101 + i)
                    };
                    let prefix = if v6 { "/64" } else { "/24" };
                    let mut args = vec!["addr", "add"];
                    let full = format!("{addr}{prefix}");
                    args.push(&full);
                    args.extend(["dev", NODE_DEVICE]);
                    if v6 {
                        args.push("nodad");
                    }
                    lan.net.client.ip(&args).unwrap();
                    ip(&addr)
                })
                .collect()
        })
        .collect();
    lan.start_agents_with(&["--snat-ports", "20000-24999", "--tcp-close-timeout", "1s"]);
    for (v6, sources) in [false, true].into_iter().zip(&sources) {
        let addr = sa(lan.net.node("a").addr(v6), 30094);
        let failures = short_connections(&lan, sources, addr, CONNECTIONS);
        assert!(
            failures.is_empty(),
            "{addr}: {} of {CONNECTIONS} failed, first {:?}; counters:\n{}",
            failures.len(),
            &failures[..failures.len().min(3)],
            lan.diagnose()
        );
    }
    let stats = lan.diagnose();
    let counts: Vec<&str> = stats
        .split("snat_no_port ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(
        counts.len() == 2 && counts.iter().all(|c| *c == "0"),
        "a port ran out: {stats}"
    );
}

/// The Ethernet addresses of the LAN hop from the client's device to node `a`'s: (to, from).
fn lan_macs(lan: &Lan) -> ([u8; 6], [u8; 6]) {
    let mac = |ns: &lb_tests::netns::Netns| -> [u8; 6] {
        let out = ns.ip(&["-o", "link", "show", NODE_DEVICE]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let hex = text
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC in {text}"))
            .to_owned();
        let mut mac = [0_u8; 6];
        for (i, part) in hex.split(':').enumerate().take(6) {
            mac[i] = u8::from_str_radix(part, 16).unwrap();
        }
        mac
    };
    (mac(&lan.net.node("a").ns), mac(&lan.net.client))
}

/// A frame for the LAN hop `macs` ([`lan_macs`]).
fn on_the_lan(macs: ([u8; 6], [u8; 6]), packet: &crate::support::frame::Packet) -> Vec<u8> {
    let mut frame = packet.frame();
    frame[0..6].copy_from_slice(&macs.0);
    frame[6..12].copy_from_slice(&macs.1);
    frame
}

/// Sends raw frames out of the client's LAN device (`AF_PACKET`).
fn send_raw(lan: &Lan, frames: &[Vec<u8>]) {
    lan.net
        .client
        .run(|| {
            let name = std::ffi::CString::new(NODE_DEVICE).unwrap();
            // SAFETY: plain socket calls on a socket of our own; the address structure is
            // zeroed and filled before use, and every frame outlives its sendto.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
                assert!(
                    fd >= 0,
                    "AF_PACKET socket: {}",
                    std::io::Error::last_os_error()
                );
                let mut to: libc::sockaddr_ll = std::mem::zeroed();
                to.sll_family = libc::AF_PACKET as u16;
                to.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
                to.sll_halen = 6;
                for frame in frames {
                    to.sll_addr[..6].copy_from_slice(&frame[0..6]);
                    // A full transmit queue (ENOBUFS) drains in a moment: wait and send again.
                    let mut tries = 0;
                    loop {
                        let rc = libc::sendto(
                            fd,
                            frame.as_ptr().cast(),
                            frame.len(),
                            0,
                            (&raw const to).cast(),
                            std::mem::size_of::<libc::sockaddr_ll>() as u32,
                        );
                        if rc >= 0 {
                            break;
                        }
                        let e = std::io::Error::last_os_error();
                        tries += 1;
                        assert!(
                            e.raw_os_error() == Some(libc::ENOBUFS) && tries < 1_000,
                            "sendto: {e}"
                        );
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                libc::close(fd);
            }
        })
        .unwrap();
}

/// Review finding 4: SYNs from spoofed sources to a node port, several times more than both
/// flow tables hold (`--max-flows` and `--max-new-flows` 1 024 here), while an idle TCP
/// connection and an idle UDP flow through the same node port (to the backend on the other
/// node, SNATed) are open: both still work afterwards, on the same backend connection. Both
/// families.
fn a_syn_flood_over_the_flow_tables_leaves_idle_connections_working(mode: Mode) {
    use crate::support::frame::{Packet, TCP_SYN};
    const FLOOD: u32 = 6_000;
    let mut lan = Lan::new(
        mode,
        &[remote_only("flooded", "10.96.3.91", "fd00:96::3:91", 30096)],
        &[("flooded", &["b1"])],
    );
    lan.start_agents_with(&["--max-flows", "1024", "--max-new-flows", "1024"]);
    for v6 in [false, true] {
        let node = lan.net.node("a").addr(v6);
        let (tcp, udp) = (sa(node, 30096), sa(node, 30097));
        let mut session = TcpSession::open(&lan.net.client, tcp).unwrap();
        session.ping().unwrap();
        let socket = lan
            .net
            .client
            .run(|| {
                let bind = if v6 { "[::]:0" } else { "0.0.0.0:0" };
                let s = std::net::UdpSocket::bind(bind).unwrap();
                s.connect(udp).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s
            })
            .unwrap();
        let exchange = |what: &str| {
            socket.send(b"hello").unwrap();
            let mut buf = [0_u8; 64];
            let n = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("{udp} {what}: {e}; counters:\n{}", lan.diagnose()));
            assert_eq!(&buf[..n], b"b1", "{udp} {what}");
        };
        exchange("first");
        exchange("second");

        let macs = lan_macs(&lan);
        let frames: Vec<Vec<u8>> = (0..FLOOD)
            .map(|i| {
                let src = if v6 {
                    IpAddr::V6(std::net::Ipv6Addr::from(
                        0x2001_0db8_0018_0000_0000_0000_0000_0000_u128 + u128::from(i),
                    ))
                } else {
                    IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000 + i))
                };
                on_the_lan(macs, &Packet::tcp(SocketAddr::new(src, 1024), tcp, TCP_SYN))
            })
            .collect();
        send_raw(&lan, &frames);
        // Let the node work through the flood.
        std::thread::sleep(Duration::from_millis(500));
        let stats = lan.diagnose();
        session.ping().unwrap_or_else(|e| {
            panic!("{tcp}: the idle connection after the flood: {e:#}\n{stats}")
        });
        exchange("after the flood");
    }
}

/// Review finding 8 (c): a UDP server that answers less often than the UDP lifetime, while its
/// client keeps sending: the late answer still reaches the client from the node port (its
/// connected socket takes nothing else), whether the backend is on this node or behind SNAT on
/// the other. Short lifetimes through flags (`--udp-timeout 2s`) keep the test short; both
/// families.
fn udp_answers_further_apart_than_the_udp_lifetime_still_reach_the_client(mode: Mode) {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    const LATE: Duration = Duration::from_millis(3_500);
    let svc = ServiceSpec {
        name: "slow",
        service_type: "NodePort",
        cluster_ips: vec![ip("10.96.3.92"), ip("fd00:96::3:92")],
        ports: vec![port("slow", 70, "UDP", 30098)],
        ..Default::default()
    };
    let mut lan = Lan::new(mode, &[svc], &[]);
    // Pods a1 (local to node a) and b1 (remote): a server on 7000 that answers the first
    // datagram of each client at once and once more `LATE` later, and nothing else.
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    for (node, pod) in [("a", "a1"), ("b", "b1")] {
        let socket = lan
            .net
            .node(node)
            .pod(pod)
            .ns
            .run(|| std::net::UdpSocket::bind("[::]:7000"))
            .unwrap()
            .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = stop.clone();
        let late_answer = format!("late {pod}");
        servers.push(std::thread::spawn(move || {
            let mut pending: Vec<(SocketAddr, std::time::Instant)> = Vec::new();
            let mut buf = [0_u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf)
                    && &buf[..n] == b"start"
                {
                    let _ = socket.send_to(b"first", from);
                    pending.push((from, std::time::Instant::now() + LATE));
                }
                pending.retain(|(to, at)| {
                    if std::time::Instant::now() < *at {
                        return true;
                    }
                    let _ = socket.send_to(late_answer.as_bytes(), to);
                    false
                });
            }
        }));
    }
    for (v6, slice) in [(false, "slow-v4"), (true, "slow-v6")] {
        let eps: Vec<(IpAddr, bool, &str)> = [("a", "a1"), ("b", "b1")]
            .iter()
            .map(|(node, pod)| (lan.net.node(node).pod(pod).addr(v6), true, *node))
            .collect();
        lan.manifests
            .write(
                &format!("{slice}.yaml"),
                &endpoint_slice_on_nodes(slice, "slow", &[("slow", 7000, "UDP")], &eps),
            )
            .unwrap();
    }
    lan.start_agents_with(&["--udp-timeout", "2s", "--udp-unreplied-timeout", "1s"]);
    for v6 in [false, true] {
        let addr = sa(lan.net.node("a").addr(v6), 30098);
        let mut seen = BTreeSet::new();
        // New flows until both backends were chosen, the remote one (SNAT) among them.
        for attempt in 0..24 {
            if seen.len() == 2 {
                break;
            }
            let socket = lan
                .net
                .client
                .run(|| {
                    let s =
                        std::net::UdpSocket::bind(if v6 { "[::]:0" } else { "0.0.0.0:0" }).unwrap();
                    s.connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(400)))
                        .unwrap();
                    s
                })
                .unwrap();
            socket.send(b"start").unwrap();
            let mut buf = [0_u8; 64];
            let n = socket.recv(&mut buf).expect("the first answer");
            assert_eq!(&buf[..n], b"first");
            // Keep the flow alive from the client's side; the answer comes later than the
            // UDP lifetime after the first.
            let deadline = std::time::Instant::now() + LATE + Duration::from_secs(2);
            let late = loop {
                socket.send(b"keep").unwrap();
                match socket.recv(&mut buf) {
                    Ok(n) => break Some(buf[..n].to_vec()),
                    Err(_) if std::time::Instant::now() < deadline => {}
                    Err(_) => break None,
                }
            };
            let late = late.map(|l| String::from_utf8_lossy(&l).into_owned());
            let pod = late
                .as_deref()
                .and_then(|l| l.strip_prefix("late "))
                .unwrap_or_else(|| {
                    panic!(
                        "{addr}, flow {attempt}: no late answer ({late:?}); counters:\n{}",
                        lan.diagnose()
                    )
                })
                .to_owned();
            seen.insert(pod);
        }
        assert_eq!(
            seen.len(),
            2,
            "{addr}: both backends answered late: {seen:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().unwrap();
    }
}
