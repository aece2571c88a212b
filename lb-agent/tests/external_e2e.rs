//! End-to-end, external traffic: a client on the LAN reaches NodePorts, load balancer IPs and
//! external IPs on two nodes, both families, with backends on the same node and on the other.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use lb_tests::{
    agent::Agent,
    manifests::{ManifestDir, ServiceSpec, endpoint_slice_on_nodes},
    require_root,
    topology::{NODE_DEVICE, POD_DEVICE_GLOB, TwoNodes},
    traffic::{Server, http_get, tcp_request, tcp_whoami_server, udp_request, udp_server},
};

const AGENT: &str = env!("CARGO_BIN_EXE_lb-agent");

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// Nodes `a` (pod `a1`) and `b` (pod `b1`), each pod serving TCP 8080 (answering with its name
/// and the client address it sees) and UDP 5353, an agent on each node.
struct Lan {
    net: TwoNodes,
    _servers: Vec<Server>,
    manifests: ManifestDir,
    agents: Vec<Agent>,
}

impl Lan {
    fn new(services: &[ServiceSpec<'_>], endpoints: &[(&str, &[&str])]) -> Self {
        require_root();
        let net = TwoNodes::new(&["a1"], &["b1"]).expect("topology");
        let mut servers = Vec::new();
        for (node, pod) in [("a", "a1"), ("b", "b1")] {
            let ns = &net.node(node).pod(pod).ns;
            servers.push(tcp_whoami_server(ns, pod, 8080).unwrap());
            servers.push(udp_server(ns, pod, 5353).unwrap());
        }
        let lan = Self {
            net,
            _servers: servers,
            manifests: ManifestDir::new().unwrap(),
            agents: Vec::new(),
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
            let ports = [("http", 8080, "TCP"), ("dns", 5353, "UDP")];
            self.manifests
                .write(
                    &format!("{name}.yaml"),
                    &endpoint_slice_on_nodes(&name, service, &ports, &eps),
                )
                .unwrap();
        }
    }

    fn start_agents(&mut self) {
        for node in ["a", "b"] {
            let mut agent = Agent::start_on_node(
                Path::new(AGENT),
                &self.net.node(node).ns,
                node,
                &self.manifests,
                POD_DEVICE_GLOB,
                &["--devices", NODE_DEVICE],
            )
            .unwrap();
            agent
                .wait_healthy(&self.net.node(node).ns, Duration::from_secs(20))
                .unwrap();
            self.agents.push(agent);
        }
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

#[test]
fn node_ports_serve_local_and_remote_backends_for_both_families_over_tcp_and_udp() {
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
    let mut lan = Lan::new(&[svc], &[("np", &["a1", "b1"])]);
    lan.start_agents();
    for node in ["a", "b"] {
        for v6 in [false, true] {
            let node_addr = lan.net.node(node).addr(v6);
            let client = lan.net.client_addr(v6);
            let mut seen = BTreeSet::new();
            for _ in 0..40 {
                let (pod, peer) = lan.tcp(sa(node_addr, 30080)).unwrap();
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
}

#[test]
fn external_traffic_policy_local_keeps_the_client_and_health_check_follows_local_endpoints() {
    let svc = ServiceSpec {
        name: "local",
        service_type: "NodePort",
        cluster_ips: vec![ip("10.96.3.20"), ip("fd00:96::3:20")],
        ports: vec![port("http", 80, "TCP", 30081)],
        external_traffic_local: true,
        health_check_node_port: Some(32081),
        ..Default::default()
    };
    let mut lan = Lan::new(&[svc], &[("local", &["a1"])]);
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
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (code, _) = http_get(&lan.net.client, sa(a, 32081), "/").unwrap();
        if code == 503 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {code} after the endpoint left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn load_balancer_and_external_ips_with_source_ranges_allowed_and_denied() {
    let allowed = ServiceSpec {
        name: "lb",
        service_type: "LoadBalancer",
        cluster_ips: vec![ip("10.96.3.30"), ip("fd00:96::3:30")],
        ports: vec![port("http", 80, "TCP", 30082)],
        load_balancer_ips: vec![ip("10.97.0.1"), ip("fd00:97::1")],
        source_ranges: vec!["10.250.0.100/32", "fd00:250::100/128"],
        ..Default::default()
    };
    let denied = ServiceSpec {
        name: "lbdeny",
        load_balancer_ips: vec![ip("10.97.0.2"), ip("fd00:97::2")],
        cluster_ips: vec![ip("10.96.3.31"), ip("fd00:96::3:31")],
        ports: vec![port("http", 80, "TCP", 30083)],
        source_ranges: vec!["198.51.100.0/24", "2001:db8::/32"],
        ..allowed.clone()
    };
    let external = ServiceSpec {
        name: "ext",
        service_type: "ClusterIP",
        cluster_ips: vec![ip("10.96.3.32"), ip("fd00:96::3:32")],
        ports: vec![("http", 80, "TCP", None)],
        external_ips: vec![ip("10.97.1.1"), ip("fd00:97:1::1")],
        ..Default::default()
    };
    let mut lan = Lan::new(
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
    }
}

#[test]
fn ports_without_a_node_port_are_not_reachable_on_node_addresses() {
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
    let mut lan = Lan::new(&[plain, np], &[("plain", &["a1"]), ("np", &["a1"])]);
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
