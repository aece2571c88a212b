//! The plan as a whole: every kind of frontend, ownership, locality, health checks and SNAT
//! addresses. Endpoint rules have their own table in `selection`.

use super::*;
use crate::{
    model::{
        DeviceSnat, EndpointSlice, IpFamily, Protocol, Service, ServiceType, SnatReason,
        TrafficPolicy,
        testing::{EpExt as _, ep, frontend, name, slice_of, svc},
    },
    source::{NodeState, Snapshot},
};

fn snapshot(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Snapshot {
    Snapshot {
        services,
        slices,
        node: Some(NodeState {
            zone: None,
            eligible: true,
            internal_ips: Vec::new(),
        }),
        ..Snapshot::default()
    }
}

fn on_node(addresses: &[&str]) -> NodeFacts {
    NodeFacts {
        name: Some("n1".into()),
        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        ..NodeFacts::default()
    }
}

/// `lb`: a LoadBalancer service on 10.96.0.1, node port 30080, external IP 192.0.2.50, load
/// balancer IP 203.0.113.1, source ranges 198.51.100.0/24 and 2001:db8::/32; one endpoint, on
/// this node.
fn lb_service() -> (Service, EndpointSlice) {
    let mut svc = svc("lb", &["10.96.0.1"], &[("http", 80, Protocol::Tcp)]);
    svc.service_type = ServiceType::LoadBalancer;
    svc.ports[0].node_port = Some(30080);
    svc.external_ips = vec!["192.0.2.50".parse().unwrap()];
    svc.load_balancer_ips = vec!["203.0.113.1".parse().unwrap()];
    svc.load_balancer_source_ranges = vec![
        "2001:db8::/32".parse().unwrap(),
        "198.51.100.0/24".parse().unwrap(),
    ];
    let slice = slice_of(
        "lb-1",
        "lb",
        IpFamily::V4,
        &[("http", 8080, Protocol::Tcp)],
        vec![ep("10.201.1.2").local()],
    );
    (svc, slice)
}

#[test]
fn source_ranges_filter_load_balancer_ips_only() {
    let (svc, slice) = lb_service();
    let desired = plan(&snapshot(vec![svc], vec![slice]), &on_node(&["192.0.2.1"]));
    assert!(desired.problems.is_empty(), "{:?}", desired.problems);
    let state = |addr: &str| {
        let state = desired
            .frontends
            .get(&frontend(addr))
            .unwrap_or_else(|| panic!("{addr} is not programmed: {:?}", desired.frontends.keys()));
        assert!(
            state.backends.iter().all(|b| b.local),
            "{addr}: the endpoint is local"
        );
        state
    };
    assert_eq!(
        state("203.0.113.1:80").source_ranges,
        Some(vec!["198.51.100.0/24".parse().unwrap()]),
        "the load balancer IP is filtered, by the ranges of its family"
    );
    assert_eq!(state("203.0.113.1:80").kind, FrontendKind::LoadBalancer);
    assert_eq!(
        state("192.0.2.1:30080").source_ranges,
        None,
        "the node port is not"
    );
    assert_eq!(state("192.0.2.1:30080").kind, FrontendKind::NodePort);
    assert_eq!(
        state("192.0.2.50:80").source_ranges,
        None,
        "the external IP is not"
    );
    assert_eq!(state("192.0.2.50:80").kind, FrontendKind::ExternalIp);
    let cluster_ip = state("10.96.0.1:80");
    assert_eq!(
        cluster_ip.kind,
        FrontendKind::ClusterIp,
        "not served from outside"
    );
    assert_eq!(cluster_ip.owner.short(), "default/lb:http");
}

#[test]
fn node_ports_answer_on_the_node_addresses_of_their_own_family() {
    let mut web = svc("web", &["10.96.0.1", "fd00::1"], &[("", 80, Protocol::Tcp)]);
    web.service_type = ServiceType::NodePort;
    web.ports[0].node_port = Some(30080);
    let slices = vec![
        slice_of(
            "web-4",
            "web",
            IpFamily::V4,
            &[("", 8080, Protocol::Tcp)],
            vec![ep("10.0.0.1")],
        ),
        slice_of(
            "web-6",
            "web",
            IpFamily::V6,
            &[("", 8080, Protocol::Tcp)],
            vec![ep("fd01::1")],
        ),
    ];
    let desired = plan(
        &snapshot(vec![web], slices),
        &on_node(&["192.0.2.1", "192.0.2.2", "2001:db8::1"]),
    );
    let keys: Vec<String> = desired.frontends.keys().map(ToString::to_string).collect();
    assert_eq!(
        keys,
        [
            "10.96.0.1:80/TCP",
            "192.0.2.1:30080/TCP",
            "192.0.2.2:30080/TCP",
            "[2001:db8::1]:30080/TCP",
            "[fd00::1]:80/TCP",
        ]
    );
    let v6 = &desired.frontends[&frontend("[2001:db8::1]:30080")];
    assert_eq!(v6.backends.len(), 1);
    assert_eq!(v6.backends[0].addr, "[fd01::1]:8080".parse().unwrap());
    assert!(!v6.backends[0].local);
    assert_eq!(v6.owner.family, IpFamily::V6);
    assert_eq!(
        desired.snat,
        SnatAddrs {
            v4: Some("192.0.2.1".parse().unwrap()),
            v6: Some("2001:db8::1".parse().unwrap()),
            devices: Default::default(),
        }
    );
}

#[test]
fn a_cluster_ip_wins_over_an_external_address_whatever_the_order() {
    // `b`'s external IP is `a`'s cluster IP: `a` keeps it, although `b` sorts... after `a`; and
    // with the names swapped, the ClusterIP still wins.
    for (first, second) in [("a", "b"), ("b", "a")] {
        let owner = svc(first, &["10.96.0.1"], &[("", 80, Protocol::Tcp)]);
        let mut claimer = svc(second, &["10.96.0.2"], &[("", 80, Protocol::Tcp)]);
        claimer.external_ips = vec!["10.96.0.1".parse().unwrap()];
        let desired = plan(&snapshot(vec![claimer, owner], vec![]), &on_node(&[]));
        let state = &desired.frontends[&frontend("10.96.0.1:80")];
        assert_eq!(state.kind, FrontendKind::ClusterIp);
        assert_eq!(state.owner.service, name(first));
        assert_eq!(desired.problems.len(), 1, "{:?}", desired.problems);
        assert!(
            matches!(&desired.problems[0], Problem::FrontendTaken { wanted_by, .. } if wanted_by.service == name(second)),
            "{:?}",
            desired.problems
        );
    }
}

#[test]
fn local_policy_serves_local_endpoints_outside_and_all_inside() {
    let mut web = svc("web", &["10.96.0.1"], &[("", 80, Protocol::Tcp)]);
    web.service_type = ServiceType::NodePort;
    web.ports[0].node_port = Some(30080);
    web.external_traffic_policy = TrafficPolicy::Local;
    web.health_check_node_port = Some(32000);
    let slices = vec![slice_of(
        "web-1",
        "web",
        IpFamily::V4,
        &[("", 8080, Protocol::Tcp)],
        vec![ep("10.0.0.1").local(), ep("10.0.0.2")],
    )];
    let desired = plan(&snapshot(vec![web], slices), &on_node(&["192.0.2.1"]));
    let node_port = &desired.frontends[&frontend("192.0.2.1:30080")];
    assert!(node_port.local_only);
    assert_eq!(node_port.backends.len(), 1);
    assert!(node_port.backends[0].local);
    let cluster_ip = &desired.frontends[&frontend("10.96.0.1:80")];
    assert!(!cluster_ip.local_only);
    let marks: Vec<bool> = cluster_ip.backends.iter().map(|b| b.local).collect();
    assert_eq!(
        marks,
        [true, false],
        "locality is marked on ClusterIP backends too"
    );
    assert_eq!(desired.health_checks.len(), 1);
    assert_eq!(desired.health_checks[&32000].local_ready, 1);
    assert_eq!(desired.health_checks[&32000].service, name("web"));
}

#[test]
fn ranges_of_the_other_family_only_close_the_load_balancer_ip() {
    let (mut svc, slice) = lb_service();
    svc.load_balancer_source_ranges = vec!["2001:db8::/32".parse().unwrap()];
    let desired = plan(&snapshot(vec![svc], vec![slice]), &on_node(&[]));
    assert_eq!(
        desired.frontends[&frontend("203.0.113.1:80")].source_ranges,
        Some(vec![]),
        "ranges given, none of IPv4: no IPv4 source may connect"
    );
}

#[test]
fn without_endpoints_frontends_refuse() {
    let (svc, _) = lb_service();
    let desired = plan(&snapshot(vec![svc], vec![]), &on_node(&["192.0.2.1"]));
    assert_eq!(desired.frontends.len(), 4);
    assert!(
        desired
            .frontends
            .values()
            .all(|s| s.reject && s.backends.is_empty())
    );
}

#[test]
fn snat_prefers_the_nodes_internal_ip_when_the_node_holds_it() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // The device scan listed eth0's 192.168.10.21 first; docker0's 172.17.0.1 sorts lower.
    let node = on_node(&[
        "192.168.10.21",
        "172.17.0.1",
        "192.168.20.5",
        "2001:db8::21",
    ]);
    let mut snap = snapshot(vec![], vec![]);
    let desired = plan(&snap, &node);
    assert_eq!(desired.snat.get(IpFamily::V4), Some(ip("192.168.10.21")));
    assert_eq!(
        desired.snat_reasons.get(IpFamily::V4),
        Some(SnatReason::NodeAddress)
    );
    // A second network the Node names as its InternalIP wins, per family.
    snap.node.as_mut().unwrap().internal_ips = vec![ip("192.168.20.5"), ip("2001:db8::99")];
    let desired = plan(&snap, &node);
    assert_eq!(
        (
            desired.snat.get(IpFamily::V4),
            desired.snat_reasons.get(IpFamily::V4)
        ),
        (Some(ip("192.168.20.5")), Some(SnatReason::InternalIp))
    );
    assert_eq!(
        (
            desired.snat.get(IpFamily::V6),
            desired.snat_reasons.get(IpFamily::V6)
        ),
        (Some(ip("2001:db8::21")), Some(SnatReason::NodeAddress)),
        "an InternalIP the node does not hold is passed over"
    );
    // No node port address of a family: no SNAT address, whatever the Node says.
    let desired = plan(&snap, &on_node(&[]));
    assert_eq!(desired.snat, SnatAddrs::default());
    assert_eq!(desired.snat_reasons, SnatReasons::default());
}

#[test]
fn each_other_device_gets_its_own_snat_address_the_default_devices_none() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let device = |ifindex: u32, name: &str, addrs: &[&str]| DeviceAddrs {
        ifindex,
        name: name.into(),
        addrs: addrs.iter().map(|a| ip(a)).collect(),
    };
    let mut node = on_node(&["192.168.10.21", "10.20.0.5", "10.20.0.6", "2001:db8::21"]);
    node.devices = vec![
        device(2, "eth0", &["192.168.10.21", "2001:db8::21"]),
        // The kernel's order: 10.20.0.6 is the primary address, listed first.
        device(3, "eth1", &["10.20.0.6", "10.20.0.5"]),
        device(4, "eth2", &["fd00:20::7"]),
    ];
    let desired = plan(&snapshot(vec![], vec![]), &node);
    assert_eq!(desired.snat.get(IpFamily::V4), Some(ip("192.168.10.21")));
    assert_eq!(
        desired.snat.devices,
        BTreeMap::from([
            (
                3,
                DeviceSnat {
                    name: "eth1".into(),
                    v4: Some("10.20.0.6".parse().unwrap()),
                    v6: None,
                }
            ),
            (
                4,
                DeviceSnat {
                    name: "eth2".into(),
                    v4: None,
                    v6: Some("fd00:20::7".parse().unwrap()),
                }
            ),
        ]),
        "eth0 holds both defaults: no entry; eth1 has no IPv6 address, eth2 no IPv4 one"
    );
}

#[test]
fn nodeport_addresses_primary_keeps_the_nodes_internal_ip_and_the_ranges() {
    let (svc, slice) = lb_service();
    let node_ports = |desired: &Desired| -> Vec<String> {
        desired
            .frontends
            .iter()
            .filter(|(_, s)| s.kind == FrontendKind::NodePort)
            .map(|(f, _)| f.to_string())
            .collect()
    };
    let mut snap = snapshot(vec![svc], vec![slice]);
    snap.node.as_mut().unwrap().internal_ips = vec!["192.168.10.21".parse().unwrap()];
    let mut node = on_node(&["192.168.10.21", "172.17.0.1", "10.0.0.5"]);
    node.nodeport = NodePortAddresses::parse("primary").unwrap();
    let desired = plan(&snap, &node);
    assert_eq!(node_ports(&desired), ["192.168.10.21:30080/TCP"]);
    assert_eq!(desired.nodeport_addresses, [ip("192.168.10.21")]);
    // The SNAT choice still sees every address.
    assert_eq!(desired.snat.get(IpFamily::V4), Some(ip("192.168.10.21")));

    node.nodeport = NodePortAddresses::parse("10.0.0.0/8, primary").unwrap();
    let desired = plan(&snap, &node);
    assert_eq!(
        node_ports(&desired),
        ["10.0.0.5:30080/TCP", "192.168.10.21:30080/TCP"]
    );

    // No InternalIP known (manifests without a Node): the scan's first address, SNAT's.
    snap.node.as_mut().unwrap().internal_ips.clear();
    node.nodeport = NodePortAddresses::parse("primary").unwrap();
    assert_eq!(node_ports(&plan(&snap, &node)), ["192.168.10.21:30080/TCP"]);

    // Without the keyword the plan keeps what the scan gave it.
    node.nodeport = NodePortAddresses::default();
    assert_eq!(node_ports(&plan(&snap, &node)).len(), 3);
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
