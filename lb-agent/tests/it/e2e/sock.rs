//! End-to-end, socket level: processes on the node (in the agent's cgroup) reach ClusterIPs of
//! both families over TCP and UDP with no route to them and no default route at all.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_tests::{
    agent::Agent,
    cluster::{BACKENDS, names},
    ip,
    probe::{Mode, Outcome, probe},
    sa,
    traffic::{tcp_request, udp_request},
};

use super::ManifestCluster;

/// The node with the premise of these tests checked: no default route of either family.
fn node_without_routes() -> ManifestCluster {
    let node = ManifestCluster::new();
    for family in ["-4", "-6"] {
        let out = node
            .net
            .node()
            .ip(&[family, "route", "show", "default"])
            .unwrap();
        assert!(out.stdout.is_empty(), "node has a default route");
    }
    node
}

/// Answers of `count` exchanges from a node process in the agent's cgroup; every one must
/// succeed and show the service address as peer (TCP, connected UDP) and source (UDP).
fn answers(
    node: &ManifestCluster,
    agent: &Agent,
    mode: Mode,
    addr: SocketAddr,
    count: usize,
) -> BTreeSet<String> {
    probe(node.net.node(), Some(&agent.cgroup), mode, addr, count)
        .unwrap()
        .into_iter()
        .map(|outcome| match outcome {
            Outcome::Answer { answer, peer, from } => {
                match mode {
                    Mode::Tcp => assert_eq!(peer, Some(addr), "getpeername() over TCP"),
                    Mode::Udp => assert_eq!(from, Some(addr), "recvfrom() source over UDP"),
                    Mode::UdpConnected => {
                        assert_eq!(peer, Some(addr), "getpeername() of a connected UDP socket");
                        assert_eq!(from, Some(addr), "recvfrom() source, connected UDP");
                    }
                }
                answer
            }
            Outcome::Error(e) => panic!("{mode:?} to {addr} failed: {e}"),
        })
        .collect()
}

#[test]
fn node_processes_reach_cluster_ips_of_both_families_without_any_route() {
    let node = node_without_routes();
    let vips = [
        ip("10.96.1.10"),
        ip("fd00:96::1:10"),
        ip("10.96.1.20"),
        ip("fd00:96::1:20"),
    ];
    node.write_service("v4", &vips[..1], &["b1", "b2", "b3"]);
    node.write_service("v6", &vips[1..2], &["b1", "b2", "b3"]);
    node.write_service("dual", &vips[2..], &["b1", "b2", "b3"]);

    // Without the agent the same requests fail before any packet leaves: no route.
    let cgroup = lb_tests::cgroup::TestCgroup::new().unwrap();
    for vip in vips {
        for (mode, port) in [(Mode::Tcp, 80), (Mode::Udp, 53)] {
            let outcome = probe(node.net.node(), Some(&cgroup), mode, sa(vip, port), 1).unwrap();
            assert!(
                matches!(&outcome[0], Outcome::Error(e) if e.contains("unreachable")),
                "{mode:?} to {vip} without the agent: {outcome:?}"
            );
        }
    }

    let agent = node.start_agent();
    let all = names(&["b1", "b2", "b3"]);
    for vip in vips {
        assert_eq!(
            answers(&node, &agent, Mode::Tcp, sa(vip, 80), 40),
            all,
            "TCP to {vip}"
        );
        assert_eq!(
            answers(&node, &agent, Mode::Udp, sa(vip, 53), 40),
            all,
            "UDP to {vip}"
        );
        assert_eq!(
            answers(&node, &agent, Mode::UdpConnected, sa(vip, 53), 40),
            all,
            "connected UDP to {vip}"
        );
    }
}

#[test]
fn dual_stack_sockets_reach_ipv4_cluster_ips_through_ipv4_mapped_addresses() {
    let node = node_without_routes();
    node.write_service("mapped", &[ip("10.96.1.30")], &["b1", "b2", "b3"]);
    // What an IPv6 socket without IPV6_V6ONLY (Java's default, for one) connects to.
    let mapped = IpAddr::V6(std::net::Ipv4Addr::new(10, 96, 1, 30).to_ipv6_mapped());
    let cgroup = lb_tests::cgroup::TestCgroup::new().unwrap();
    let outcome = probe(node.net.node(), Some(&cgroup), Mode::Tcp, sa(mapped, 80), 1).unwrap();
    assert!(
        matches!(&outcome[0], Outcome::Error(e) if e.contains("unreachable")),
        "TCP to {mapped} without the agent: {outcome:?}"
    );
    let agent = node.start_agent();
    let all = names(&["b1", "b2", "b3"]);
    for (mode, port) in [(Mode::Tcp, 80), (Mode::Udp, 53), (Mode::UdpConnected, 53)] {
        assert_eq!(
            answers(&node, &agent, mode, sa(mapped, port), 30),
            all,
            "{mode:?} to {mapped}"
        );
    }
    // Every translated connect() and unconnected sendmsg() is a new flow of the frontend: 30
    // connections, 30 connected sockets, and one datagram per unconnected exchange (more only
    // where the probe sent again after a loss).
    let new = service_counter_total(&agent.pin_dir, lb_ebpf::service_stats::NEW_FLOWS);
    assert!((90..=150).contains(&new), "{new} new flows counted");
}

#[test]
fn node_connections_to_a_service_without_endpoints_are_refused() {
    let node = node_without_routes();
    let vips = [ip("10.96.1.40"), ip("fd00:96::1:40")];
    node.write_service("empty", &vips, &[]);
    let agent = node.start_agent();
    for vip in vips {
        let outcome = probe(
            node.net.node(),
            Some(&agent.cgroup),
            Mode::Tcp,
            sa(vip, 80),
            1,
        )
        .unwrap();
        assert!(
            matches!(&outcome[0], Outcome::Error(e) if e.contains("refused")),
            "TCP to {vip} without endpoints: {outcome:?}"
        );
    }
    // Each refused call is counted once, on its frontend (the only ones of this agent).
    assert_eq!(
        service_counter_total(&agent.pin_dir, lb_ebpf::service_stats::REFUSED),
        2
    );
}

/// One traffic counter (`lb_ebpf::service_stats`) summed over every frontend of an agent.
fn service_counter_total(pin_dir: &std::path::Path, what: usize) -> u64 {
    let reader = lb_agent::kernel::ServiceCounterReader::open(pin_dir).unwrap();
    (0..=u16::MAX)
        .map(|id| reader.read(id).unwrap()[what])
        .sum()
}

#[test]
fn node_udp_to_a_service_without_endpoints_is_refused_at_connect_and_at_sendto() {
    let node = node_without_routes();
    let vips = [ip("10.96.1.41"), ip("fd00:96::1:41")];
    node.write_service("empty", &vips, &[]);
    let agent = node.start_agent();
    // The IPv4 service through an IPv6 socket too (IPv4-mapped address).
    let mapped = IpAddr::V6(std::net::Ipv4Addr::new(10, 96, 1, 41).to_ipv6_mapped());
    for vip in [vips[0], vips[1], mapped] {
        // A connected socket's connect() fails, as TCP's does; an unconnected one's sendto().
        // Without the refusal the call would go on untranslated: "Network is unreachable".
        for mode in [Mode::UdpConnected, Mode::Udp] {
            let outcome =
                probe(node.net.node(), Some(&agent.cgroup), mode, sa(vip, 53), 1).unwrap();
            assert!(
                matches!(&outcome[0], Outcome::Error(e) if e.contains("refused")),
                "{mode:?} to {vip} without endpoints: {outcome:?}"
            );
        }
    }
}

#[test]
fn only_processes_under_the_attached_cgroup_are_translated() {
    let node = node_without_routes();
    let vips = [ip("10.96.1.30"), ip("fd00:96::1:30")];
    node.write_service("web", &vips, &["b1", "b2", "b3"]);
    let agent = node.start_agent();
    let outside = lb_tests::cgroup::TestCgroup::new().unwrap();
    for vip in vips {
        assert!(!answers(&node, &agent, Mode::Tcp, sa(vip, 80), 3).is_empty());
        let outcome = probe(node.net.node(), Some(&outside), Mode::Tcp, sa(vip, 80), 1).unwrap();
        assert!(
            matches!(&outcome[0], Outcome::Error(e) if e.contains("unreachable")),
            "a process outside the agent's cgroup was translated: {outcome:?}"
        );
    }
}

#[test]
fn removing_a_backend_stops_new_node_connections_to_it() {
    let node = node_without_routes();
    let vips = [ip("10.96.1.40"), ip("fd00:96::1:40")];
    node.write_service("web", &vips, &["b1", "b2", "b3"]);
    let agent = node.start_agent();
    for vip in vips {
        assert_eq!(
            answers(&node, &agent, Mode::Tcp, sa(vip, 80), 30),
            names(&["b1", "b2", "b3"])
        );
    }
    node.write_service("web", &vips, &["b1", "b3"]);
    agent.wait_log("changed=4", Duration::from_secs(3)).unwrap();
    for vip in vips {
        assert_eq!(
            answers(&node, &agent, Mode::Tcp, sa(vip, 80), 30),
            names(&["b1", "b3"])
        );
        assert_eq!(
            answers(&node, &agent, Mode::Udp, sa(vip, 53), 30),
            names(&["b1", "b3"])
        );
    }
}

#[test]
fn pod_traffic_keeps_working_through_tc_with_socket_programs_attached() {
    let node = node_without_routes();
    let vips = [ip("10.96.1.50"), ip("fd00:96::1:50")];
    node.write_service("web", &vips, &["b1", "b2", "b3"]);
    let agent = node.start_agent();
    let client = node.net.client();
    for vip in vips {
        let via_tc: BTreeSet<String> = (0..30)
            .map(|_| tcp_request(client, sa(vip, 80)).unwrap())
            .collect();
        assert_eq!(via_tc, names(&["b1", "b2", "b3"]), "pod TCP to {vip}");
        let (name, from) = udp_request(client, sa(vip, 53)).unwrap();
        assert!(
            name.starts_with('b') && from == sa(vip, 53),
            "pod UDP to {vip}: {name} from {from}"
        );
        // Node and pod at once: the socket-translated flow is not translated again by TC.
        assert_eq!(
            answers(&node, &agent, Mode::Tcp, sa(vip, 80), 20),
            names(&["b1", "b2", "b3"])
        );
    }
}

#[test]
fn node_processes_reach_node_ports_on_the_nodes_own_addresses() {
    let node = node_without_routes();
    // A device holding the node's own addresses, as a host's uplink would (a veth: this kernel
    // has no dummy devices).
    let ns = node.net.node();
    ns.ip(&[
        "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p",
    ])
    .unwrap();
    ns.ip(&["link", "set", "uplink0p", "up"]).unwrap();
    ns.ip(&["addr", "add", "10.250.9.1/32", "dev", "uplink0"])
        .unwrap();
    ns.ip(&[
        "addr",
        "add",
        "fd00:250:9::1/128",
        "dev",
        "uplink0",
        "nodad",
    ])
    .unwrap();
    ns.ip(&["link", "set", "uplink0", "up"]).unwrap();
    let svc = lb_tests::manifests::ServiceSpec {
        name: "np",
        service_type: "NodePort",
        cluster_ips: vec![ip("10.96.1.60"), ip("fd00:96::1:60")],
        ports: vec![
            ("http", 80, "TCP", Some(30080)),
            ("dns", 53, "UDP", Some(30053)),
        ],
        ..Default::default()
    };
    node.manifests.write("np.yaml", &svc.to_yaml()).unwrap();
    for v6 in [false, true] {
        node.write_slice("np", v6, &node.net.ready_endpoints(v6, &BACKENDS));
    }
    let agent = node.start(node.agent().args(["--devices", "uplink0"]));
    let all = names(&["b1", "b2", "b3"]);
    for addr in [ip("10.250.9.1"), ip("fd00:250:9::1")] {
        assert_eq!(
            answers(&node, &agent, Mode::Tcp, sa(addr, 30080), 30),
            all,
            "TCP to {addr}"
        );
        assert_eq!(
            answers(&node, &agent, Mode::Udp, sa(addr, 30053), 30),
            all,
            "UDP to {addr}"
        );
    }
}

/// Session affinity on the socket path: the node's processes (one network namespace, one
/// client) keep reaching one backend with `sessionAffinity: ClientIP`, over TCP and connected
/// UDP, both families.
#[test]
fn node_processes_keep_one_backend_with_session_affinity() {
    let node = node_without_routes();
    let vips = [ip("10.96.1.60"), ip("fd00:96::1:60")];
    node.write_affine_service("sticky", &vips, &BACKENDS, Some(10_800));
    let agent = node.start_agent();
    for vip in vips {
        for (mode, port) in [(Mode::Tcp, 80), (Mode::UdpConnected, 53)] {
            let got = answers(&node, &agent, mode, sa(vip, port), 15);
            assert_eq!(got.len(), 1, "{mode:?} to {vip}: {got:?}");
        }
    }
}

/// A datapath counter of `agent`, read with `lb-agent stats`.
fn stat(agent: &Agent, name: &str) -> u64 {
    let out = std::process::Command::new(super::AGENT)
        .args(["stats", "--bpffs"])
        .arg(&agent.pin_dir)
        .output()
        .expect("lb-agent stats");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no counter {name} in {out:?}"))
}

/// `--socket-lb-scope host` leaves the sockets of pods (other network namespaces in the
/// agent's cgroup) to the TC programs, which translate their packets: the pod's connections
/// still work and show the service address, and the TC counter grows by one per connection;
/// node processes are still translated at `connect()`. With `all`, pods' sockets are
/// translated at `connect()` too and the TC programs see nothing to translate. Both families.
#[test]
fn socket_lb_scope_host_leaves_pods_to_the_tc_programs_and_keeps_node_processes() {
    for (scope, pods_via_tc) in [("all", false), ("host", true)] {
        let node = node_without_routes();
        let vips = [ip("10.96.1.70"), ip("fd00:96::1:70")];
        node.write_service("scoped", &vips, &BACKENDS);
        let agent = node.start(node.agent().args(["--socket-lb-scope", scope]));
        for vip in vips {
            let addr = sa(vip, 80);
            let before = stat(&agent, "translated");
            let outcomes =
                probe(node.net.client(), Some(&agent.cgroup), Mode::Tcp, addr, 15).unwrap();
            for outcome in &outcomes {
                match outcome {
                    Outcome::Answer { peer, .. } => {
                        assert_eq!(*peer, Some(addr), "{scope}: a pod's getpeername()")
                    }
                    Outcome::Error(e) => panic!("{scope}: pod to {addr}: {e}"),
                }
            }
            let by_tc = stat(&agent, "translated") - before;
            if pods_via_tc {
                assert!(
                    by_tc >= 15,
                    "{scope}: {by_tc} packets translated by TC for {addr}"
                );
            } else {
                assert_eq!(by_tc, 0, "{scope}: TC translated pod packets for {addr}");
            }
            let before = stat(&agent, "translated");
            // `answers` fails on any error and checks getpeername().
            answers(&node, &agent, Mode::Tcp, addr, 5);
            assert_eq!(
                stat(&agent, "translated"),
                before,
                "{scope}: node processes are translated at connect(), not by TC"
            );
        }
    }
}

/// A client that keeps one connected UDP socket, as a DNS resolver or statsd client does, and
/// makes a new one only when its socket fails: one line per exchange, `answer=NAME` or
/// `error=ERRNO`, for `seconds`.
const KEEP_CONNECTED: &str = r#"
import errno, socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
def connect():
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(0.3)
    s.connect((host, port))
    return s
s = connect()
end = time.time() + seconds
while time.time() < end:
    try:
        s.send(b'hello')
        print('answer=%s' % s.recv(2048).decode(), flush=True)
    except socket.timeout:
        print('error=timeout', flush=True)
    except OSError as e:
        print('error=%d' % e.errno, flush=True)
        s.close()
        s = connect()
    time.sleep(0.05)
"#;

/// Connected UDP to a removed backend: a connected socket, translated at `connect()`, of a node
/// process (the agent's network namespace) and of a pod (`--socket-lb-scope all`, another
/// namespace), is closed by the agent once its backend leaves the service: the application
/// sees ECONNABORTED or EDESTADDRREQ and reconnects to a live backend, while the removed
/// backend's pod still runs and would otherwise keep answering it. Removing a backend the
/// socket does not use leaves it alone. Both families.
#[test]
fn a_connected_udp_socket_of_a_removed_backend_is_closed_and_the_client_recovers() {
    use std::io::BufRead as _;
    let node = node_without_routes();
    let clients = [
        (
            "node",
            node.net.node(),
            [ip("10.96.1.80"), ip("fd00:96::1:80")],
        ),
        (
            "pod",
            node.net.client(),
            [ip("10.96.1.81"), ip("fd00:96::1:81")],
        ),
    ];
    for (client, _, vips) in &clients {
        node.write_service(&format!("dns-{client}"), vips, &BACKENDS);
    }
    let agent = node.start_agent();
    let closed = [libc::ECONNABORTED, libc::EDESTADDRREQ].map(|e| format!("error={e}"));
    for (client, ns, vips) in clients {
        let service = format!("dns-{client}");
        for vip in vips {
            let v6 = vip.is_ipv6();
            let mut child = lb_tests::probe::python_in(
                ns,
                Some(&agent.cgroup),
                KEEP_CONNECTED,
                &[vip.to_string(), "53".into(), "7".into()],
            )
            .unwrap()
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
            let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
            let mut next = || lines.next().unwrap().unwrap();
            let first = next();
            let first = first
                .strip_prefix("answer=")
                .unwrap_or_else(|| panic!("{client} {vip}: first exchange: {first}"))
                .to_owned();
            // Another backend leaves: the socket is left alone and keeps its backend.
            let bystander = BACKENDS.iter().copied().find(|b| *b != first).unwrap();
            let two: Vec<&str> = BACKENDS
                .iter()
                .copied()
                .filter(|b| *b != bystander)
                .collect();
            node.write_slice(&service, v6, &node.net.ready_endpoints(v6, &two));
            // Twice the time the agent takes to see a file change and sync.
            for _ in 0..20 {
                let line = next();
                assert_eq!(
                    line,
                    format!("answer={first}"),
                    "{client} {vip}: after {bystander}, not its backend, was removed"
                );
            }
            // The client's backend leaves the service; its pod keeps running.
            let rest: Vec<&str> = two.iter().copied().filter(|b| *b != first).collect();
            node.write_slice(&service, v6, &node.net.ready_endpoints(v6, &rest));
            let after: Vec<String> = lines.map(Result::unwrap).collect();
            assert!(child.wait().unwrap().success());
            // A blocked receive reports ECONNABORTED; a send after the close EDESTADDRREQ, as
            // the destroyed socket is no longer connected.
            let aborted = after
                .iter()
                .position(|l| closed.contains(l))
                .unwrap_or_else(|| {
                    panic!("{client} {vip}: the socket of {first} was never closed: {after:?}")
                });
            let recovered = &after[aborted + 1..];
            assert!(
                recovered.iter().any(|l| l.starts_with("answer=")),
                "{client} {vip}: no answer after reconnecting: {after:?}"
            );
            assert!(
                !recovered.contains(&format!("answer={first}")),
                "{client} {vip}: {first} answered after it was removed: {after:?}"
            );
        }
    }
}

/// `loadBalancerSourceRanges` for clients in the agent's cgroup. A node process is judged by
/// the node's address, as kube-proxy judges traffic from the node: it reaches a load balancer IP
/// whose ranges hold that address, and its `connect()` fails with EPERM to one whose ranges do
/// not. A pod's `connect()` (`--socket-lb-scope all`) is left to the TC program on its device,
/// which judges the pod's own address: answered from inside the ranges (translated by TC, the
/// service address as peer), dropped from outside them. Both families.
#[test]
fn load_balancer_source_ranges_hold_for_node_processes_and_pods_in_the_cgroup() {
    let node = node_without_routes();
    // The node's own address, what the agent judges node processes by.
    let node_addrs = [ip("192.0.2.10"), ip("2001:db8::10")];
    let n = node.net.node();
    // A device of the node's own, as an uplink; its peer stays without an address.
    n.ip(&[
        "link", "add", "lbd0", "type", "veth", "peer", "name", "lbd1",
    ])
    .unwrap();
    for dev in ["lbd0", "lbd1"] {
        n.ip(&["link", "set", dev, "up"]).unwrap();
    }
    for a in node_addrs {
        n.ip(&[
            "addr",
            "add",
            &format!("{a}/{}", if a.is_ipv6() { 128 } else { 32 }),
            "dev",
            "lbd0",
        ])
        .unwrap();
    }
    let pod = [0, 1].map(|v6| node.net.topo.pod(lb_tests::cluster::CLIENT).addr(v6 == 1));
    let ranged = |name: &str, vips: [IpAddr; 2], lbs: [IpAddr; 2], ranges: &[String]| {
        let yaml = lb_tests::manifests::service(name, &vips, lb_tests::cluster::SERVICE_PORTS)
            .replacen(
                "type: ClusterIP\n",
                &format!(
                    "type: LoadBalancer\n  loadBalancerSourceRanges: [{}]\n",
                    ranges.join(", ")
                ),
                1,
            )
            .replace(
                "status:\n  loadBalancer: {}\n",
                &format!(
                    "status:\n  loadBalancer:\n    ingress:\n    - ip: \"{}\"\n    - ip: \"{}\"\n",
                    lbs[0], lbs[1]
                ),
            );
        node.manifests
            .write(&format!("{name}.yaml"), &yaml)
            .unwrap();
        for v6 in [false, true] {
            node.write_slice(name, v6, &node.net.ready_endpoints(v6, &BACKENDS));
        }
    };
    let inside = [ip("10.97.1.1"), ip("fd00:97::1:1")];
    let outside = [ip("10.97.1.2"), ip("fd00:97::1:2")];
    let host_ranges = |a: IpAddr| format!("\"{a}/{}\"", if a.is_ipv6() { 128 } else { 32 });
    ranged(
        "inside",
        [ip("10.96.1.91"), ip("fd00:96::1:91")],
        inside,
        &[node_addrs[0], node_addrs[1], pod[0], pod[1]].map(host_ranges),
    );
    ranged(
        "outside",
        [ip("10.96.1.92"), ip("fd00:96::1:92")],
        outside,
        &[
            "\"198.51.100.0/24\"".into(),
            "\"2001:db8:ffff::/48\"".into(),
        ],
    );
    let agent = node.start_agent();
    for v6 in [false, true] {
        let (inside, outside) = (
            sa(inside[usize::from(v6)], 80),
            sa(outside[usize::from(v6)], 80),
        );
        // `answers` fails on any error and checks getpeername().
        assert!(!answers(&node, &agent, Mode::Tcp, inside, 5).is_empty());
        let before = stat(&agent, "source_range_dropped");
        let refused = probe(n, Some(&agent.cgroup), Mode::Tcp, outside, 1).unwrap();
        assert!(
            matches!(&refused[..], [Outcome::Error(e)] if e.contains("not permitted")),
            "node -> {outside}: {refused:?}"
        );
        assert_eq!(
            stat(&agent, "source_range_dropped"),
            before + 1,
            "node -> {outside}"
        );

        let client = node.net.client();
        let before = stat(&agent, "translated");
        let outcomes = probe(client, Some(&agent.cgroup), Mode::Tcp, inside, 5).unwrap();
        for outcome in &outcomes {
            assert!(
                matches!(outcome, Outcome::Answer { peer: Some(p), .. } if *p == inside),
                "pod -> {inside}: {outcome:?}"
            );
        }
        assert!(
            stat(&agent, "translated") >= before + 5,
            "pod -> {inside}: not through TC"
        );
        let before = stat(&agent, "source_range_dropped");
        let dropped = probe(client, Some(&agent.cgroup), Mode::Tcp, outside, 1).unwrap();
        assert!(
            matches!(&dropped[..], [Outcome::Error(_)]),
            "pod -> {outside}: {dropped:?}"
        );
        assert!(
            stat(&agent, "source_range_dropped") > before,
            "pod -> {outside}"
        );
    }
}
