//! Kubernetes objects in, model out: every rule of [`super::service`] and
//! [`super::endpoint_slice`], table-driven where the rule has cases.

use std::net::IpAddr;

use k8s_openapi::api::{
    core::v1::Service as K8sService, discovery::v1::EndpointSlice as K8sEndpointSlice,
};
use serde_json::{Value, json};

use super::{Converted, endpoint_slice, service};
use crate::model::testing::{ip, named, svc_port};
use crate::model::{
    Endpoint, EndpointPort, EndpointSlice, IpFamily, Protocol, Service, ServiceType, TrafficPolicy,
};

/// A Service object with the given `spec`, named `default/web`.
fn svc_json(spec: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": spec,
    })
}

fn convert_service(raw: &Value, require_cluster_ip: bool) -> Result<Converted<Service>, String> {
    let svc: K8sService = serde_json::from_value(raw.clone()).expect("test Service decodes");
    service(&svc, Some(raw), require_cluster_ip).map_err(|e| e.to_string())
}

fn service_ok(raw: &Value) -> Service {
    let converted = convert_service(raw, true).expect("service converts");
    assert!(converted.warnings.is_empty(), "{:?}", converted.warnings);
    converted.value
}

fn service_err(raw: &Value) -> String {
    match convert_service(raw, true) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

/// The simplest Service the manifest source accepts, for spec-level edits.
fn minimal_spec() -> Value {
    json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]})
}

fn with(mut base: Value, edits: &[(&str, Value)]) -> Value {
    for (pointer, value) in edits {
        *base
            .pointer_mut(pointer)
            .unwrap_or_else(|| panic!("test object has no {pointer}")) = value.clone();
    }
    base
}

#[test]
fn dual_stack_node_port_service_converts_every_field() {
    let raw = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.12.34",
            "clusterIPs": ["10.96.12.34", "fd00:10:96::1234"],
            "ipFamilies": ["IPv4", "IPv6"],
            "ipFamilyPolicy": "RequireDualStack",
            "externalIPs": ["192.0.2.7", "2001:db8::7"],
            "internalTrafficPolicy": "Local",
            "externalTrafficPolicy": "Local",
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http", "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353, "nodePort": 30053},
                {"name": "sig", "port": 3868, "protocol": "SCTP"},
            ],
        },
        "status": {"loadBalancer": {"ingress": [
            {"ip": "203.0.113.10"},
            {"ip": "2001:db8:1::10", "ipMode": "VIP"},
            {"hostname": "lb.example.com"},
        ]}},
    });
    assert_eq!(
        service_ok(&raw),
        Service {
            name: named("shop", "web"),
            service_type: ServiceType::LoadBalancer,
            cluster_ips: vec![ip("10.96.12.34"), ip("fd00:10:96::1234")],
            ports: vec![
                svc_port("http", 80, Protocol::Tcp, Some(30080)),
                svc_port("dns", 53, Protocol::Udp, Some(30053)),
                svc_port("sig", 3868, Protocol::Sctp, None),
            ],
            external_ips: vec![ip("192.0.2.7"), ip("2001:db8::7")],
            load_balancer_ips: vec![ip("203.0.113.10"), ip("2001:db8:1::10")],
            internal_traffic_policy: TrafficPolicy::Local,
            external_traffic_policy: TrafficPolicy::Local,
            health_check_node_port: None,
            load_balancer_source_ranges: vec![],
            session_affinity: None,
        }
    );
}

#[test]
fn omitted_fields_take_the_api_defaults() {
    let raw = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
    });
    assert_eq!(
        service_ok(&raw),
        Service {
            name: named("default", "web"),
            service_type: ServiceType::ClusterIp,
            cluster_ips: vec![ip("10.96.0.10")],
            ports: vec![svc_port("", 80, Protocol::Tcp, None)],
            external_ips: vec![],
            load_balancer_ips: vec![],
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            load_balancer_source_ranges: vec![],
            session_affinity: None,
        }
    );
}

#[test]
fn empty_namespace_means_default() {
    let raw = with(
        svc_json(minimal_spec()),
        &[("/metadata/namespace", json!(""))],
    );
    assert_eq!(service_ok(&raw).name, named("default", "web"));
}

#[test]
fn service_types_are_mapped() {
    for (type_, want) in [
        ("ClusterIP", ServiceType::ClusterIp),
        ("NodePort", ServiceType::NodePort),
        ("LoadBalancer", ServiceType::LoadBalancer),
        ("ExternalName", ServiceType::ExternalName),
    ] {
        let mut raw = svc_json(minimal_spec());
        raw["spec"]["type"] = json!(type_);
        assert_eq!(service_ok(&raw).service_type, want, "type {type_}");
    }
}

#[test]
fn cluster_ip_sources() {
    /// clusterIP, clusterIPs, expected cluster_ips.
    type Case = (
        Option<&'static str>,
        Option<&'static [&'static str]>,
        &'static [&'static str],
    );
    let cases: &[Case] = &[
        (Some("10.96.0.10"), None, &["10.96.0.10"]),
        (None, Some(&["10.96.0.10"]), &["10.96.0.10"]),
        (Some(""), Some(&["10.96.0.10"]), &["10.96.0.10"]),
        (Some("fd00::10"), Some(&["fd00::10"]), &["fd00::10"]),
        (
            Some("fd00::10"),
            Some(&["fd00::10", "10.96.0.10"]),
            &["fd00::10", "10.96.0.10"],
        ),
        (Some("None"), None, &[]),
        (Some("None"), Some(&["None"]), &[]),
        (None, Some(&["None"]), &[]),
    ];
    for (cluster_ip, cluster_ips, want) in cases {
        let mut spec = json!({"ports": [{"port": 80}]});
        if let Some(c) = cluster_ip {
            spec["clusterIP"] = json!(c);
        }
        if let Some(c) = cluster_ips {
            spec["clusterIPs"] = json!(c);
        }
        let got = service_ok(&svc_json(spec)).cluster_ips;
        let want: Vec<IpAddr> = want.iter().map(|s| ip(s)).collect();
        assert_eq!(
            got, want,
            "clusterIP {cluster_ip:?} clusterIPs {cluster_ips:?}"
        );
    }
}

#[test]
fn headless_service_has_no_cluster_ips() {
    let svc = service_ok(&svc_json(
        json!({"clusterIP": "None", "ports": [{"port": 80}]}),
    ));
    assert!(svc.cluster_ips.is_empty());
}

#[test]
fn external_name_service_needs_no_cluster_ip() {
    let svc = service_ok(&svc_json(json!({
        "type": "ExternalName",
        "externalName": "db.example.com",
    })));
    assert_eq!(svc.service_type, ServiceType::ExternalName);
    assert!(svc.cluster_ips.is_empty());
}

#[test]
fn missing_cluster_ip_is_an_error_only_without_an_api_server() {
    for spec in [
        json!({"ports": [{"port": 80}]}),
        json!({"clusterIP": "", "ports": [{"port": 80}]}),
        json!({"clusterIPs": [], "ports": [{"port": 80}]}),
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
    ] {
        let raw = svc_json(spec);
        let err = service_err(&raw);
        assert!(err.contains("clusterIP"), "{err}");
        assert!(err.contains("API server"), "{err}");
        assert!(err.contains("clusterIP: None"), "{err}");
        // The Kubernetes source passes false: the API server allocates, and an object without
        // an address yet is simply not proxied.
        let converted = convert_service(&raw, false).expect("converts with an API server");
        assert!(converted.value.cluster_ips.is_empty());
    }
}

#[test]
fn invalid_services_are_rejected_with_the_reason() {
    // (what, spec edits on minimal_spec, substrings of the error)
    let cases: &[(&str, Value, &[&str])] = &[
        (
            "cluster IP not an address",
            json!({"clusterIP": "not-an-ip"}),
            &["\"not-an-ip\"", "not an IP address"],
        ),
        (
            "cluster IP with a prefix length",
            json!({"clusterIP": "10.96.0.0/16"}),
            &["\"10.96.0.0/16\"", "not an IP address"],
        ),
        (
            "clusterIP differs from clusterIPs[0]",
            json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.11"]}),
            &[
                "spec.clusterIP \"10.96.0.10\"",
                "clusterIPs[0] \"10.96.0.11\"",
            ],
        ),
        (
            "clusterIP is the second entry of clusterIPs",
            json!({"clusterIP": "fd00::10", "clusterIPs": ["10.96.0.10", "fd00::10"]}),
            &["differs from spec.clusterIPs[0]"],
        ),
        (
            "two IPv4 cluster IPs",
            json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "10.96.0.11"]}),
            &["two IPv4 addresses"],
        ),
        (
            "two IPv6 cluster IPs",
            json!({"clusterIP": "fd00::10", "clusterIPs": ["fd00::10", "fd00::11"]}),
            &["two IPv6 addresses"],
        ),
        (
            "None together with an address",
            json!({"clusterIP": "None", "clusterIPs": ["None", "10.96.0.10"]}),
            &["None", "headless"],
        ),
        (
            "IPv4-mapped IPv6 cluster IP",
            json!({"clusterIP": "::ffff:10.96.0.10"}),
            &["\"::ffff:10.96.0.10\"", "IPv4-mapped"],
        ),
        (
            "ipFamilies do not match clusterIPs",
            json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
                   "ipFamilies": ["IPv6", "IPv4"]}),
            &["spec.clusterIPs[0] 10.96.0.10", "spec.ipFamilies[0] IPv6"],
        ),
        (
            "single IPv6 family for an IPv4 address",
            json!({"ipFamilies": ["IPv6"]}),
            &["spec.clusterIPs[0] 10.96.0.10 is not of family spec.ipFamilies[0] IPv6"],
        ),
        (
            "unknown IP family",
            json!({"ipFamilies": ["IPv5"]}),
            &["spec.ipFamilies", "\"IPv5\""],
        ),
        (
            "unknown IP family policy",
            json!({"ipFamilyPolicy": "DualStackPlease"}),
            &["spec.ipFamilyPolicy", "\"DualStackPlease\""],
        ),
        (
            "unknown service type",
            json!({"type": "Ingress"}),
            &["spec.type", "\"Ingress\""],
        ),
        (
            "port 0",
            json!({"ports": [{"port": 0}]}),
            &["spec.ports[0].port 0", "1-65535"],
        ),
        (
            "port 70000",
            json!({"ports": [{"port": 70000}]}),
            &["spec.ports[0].port 70000", "1-65535"],
        ),
        (
            "negative port",
            json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": -1}]}),
            &["spec.ports[1].port -1"],
        ),
        (
            "node port 70000",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 70000}]}),
            &["spec.ports[0].nodePort 70000"],
        ),
        (
            "unknown protocol",
            json!({"ports": [{"port": 80, "protocol": "ICMP"}]}),
            &["spec.ports[0]", "unknown protocol \"ICMP\""],
        ),
        (
            "lower-case protocol",
            json!({"ports": [{"port": 80, "protocol": "tcp"}]}),
            &["unknown protocol \"tcp\""],
        ),
        (
            "duplicate port name",
            json!({"ports": [{"name": "http", "port": 80}, {"name": "http", "port": 8080}]}),
            &["spec.ports[1]", "\"http\"", "used twice"],
        ),
        (
            "two unnamed ports",
            json!({"ports": [{"port": 80}, {"port": 8080}]}),
            &["spec.ports[1]", "\"\"", "used twice"],
        ),
        (
            "external IP not an address",
            json!({"externalIPs": ["192.0.2.300"]}),
            &["spec.externalIPs", "\"192.0.2.300\""],
        ),
        (
            "unknown internal traffic policy",
            json!({"internalTrafficPolicy": "Node"}),
            &["spec.internalTrafficPolicy", "\"Node\""],
        ),
        (
            "unknown external traffic policy",
            json!({"externalTrafficPolicy": "local"}),
            &["spec.externalTrafficPolicy", "\"local\""],
        ),
    ];
    for (what, edits, want) in cases {
        let mut spec = minimal_spec();
        for (k, v) in edits.as_object().expect("edits are an object") {
            spec[k] = v.clone();
        }
        let err = service_err(&svc_json(spec));
        for w in *want {
            assert!(err.contains(w), "{what}: {err:?} does not mention {w:?}");
        }
    }
}

#[test]
fn bad_load_balancer_ingress_ip_is_rejected() {
    let mut raw = svc_json(json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10",
        "ports": [{"port": 80, "nodePort": 30080}]}));
    raw["status"] = json!({"loadBalancer": {"ingress": [{"ip": "lb.example.com"}]}});
    let err = service_err(&raw);
    assert!(err.contains("status.loadBalancer.ingress"), "{err}");
    assert!(err.contains("\"lb.example.com\""), "{err}");
}

#[test]
fn load_balancer_ip_in_proxy_mode_is_left_to_the_load_balancer() {
    // kube-proxy programs only ingress IPs whose ipMode is unset or VIP (KEP-1860,
    // pkg/proxy/serviceport.go); with ipMode Proxy the load balancer sends traffic to the node.
    let mut raw = svc_json(json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10",
        "ports": [{"port": 80, "nodePort": 30080}]}));
    raw["status"] = json!({"loadBalancer": {"ingress": [
        {"ip": "203.0.113.1", "ipMode": "Proxy"},
        {"ip": "203.0.113.2", "ipMode": "VIP"},
        {"ip": "203.0.113.3"},
    ]}});
    assert_eq!(
        service_ok(&raw).load_balancer_ips,
        vec![ip("203.0.113.2"), ip("203.0.113.3")]
    );
}

#[test]
fn same_port_name_on_two_protocols_is_two_service_ports() {
    let svc = service_ok(&svc_json(json!({
        "clusterIP": "10.96.0.10",
        "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns", "port": 53, "protocol": "TCP"},
        ],
    })));
    assert_eq!(
        svc.ports,
        vec![
            svc_port("dns", 53, Protocol::Udp, None),
            svc_port("dns", 53, Protocol::Tcp, None)
        ]
    );
}

#[test]
fn service_without_ports_converts() {
    let svc = service_ok(&svc_json(json!({"clusterIP": "10.96.0.10"})));
    assert!(svc.ports.is_empty());
}

#[test]
fn metadata_name_and_spec_are_required() {
    let no_name = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "a"},
        "spec": minimal_spec()});
    assert!(service_err(&no_name).contains("metadata.name"));
    let empty_name = with(svc_json(minimal_spec()), &[("/metadata/name", json!(""))]);
    assert!(service_err(&empty_name).contains("metadata.name"));
    let no_spec = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}});
    assert!(service_err(&no_spec).contains("spec"));
}

#[test]
fn pre_1_20_ip_family_field_is_a_warning_naming_ip_families() {
    let mut raw = svc_json(minimal_spec());
    raw["spec"]["ipFamily"] = json!("IPv4");
    let converted = convert_service(&raw, true).expect("converts");
    assert_eq!(converted.warnings.len(), 1, "{:?}", converted.warnings);
    let w = &converted.warnings[0];
    assert!(w.contains("spec.ipFamily "), "{w}");
    assert!(w.contains("\"IPv4\""), "{w}");
    assert!(w.contains("spec.ipFamilies"), "{w}");
    assert_eq!(converted.value.cluster_ips, vec![ip("10.96.0.10")]);

    // Without the raw object (the Kubernetes source decodes typed objects) nothing is found.
    let svc: K8sService = serde_json::from_value(raw.clone()).expect("decodes");
    assert!(
        service(&svc, None, true)
            .expect("converts")
            .warnings
            .is_empty()
    );

    // An explicit null is no field at all.
    raw["spec"]["ipFamily"] = Value::Null;
    assert!(
        convert_service(&raw, true)
            .expect("converts")
            .warnings
            .is_empty()
    );
}

// ---- EndpointSlices ----

fn slice_json(address_type: &str, endpoints: Value) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-abcde",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": address_type,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn convert_slice(raw: &Value) -> Result<Option<Converted<EndpointSlice>>, String> {
    let slice: K8sEndpointSlice = serde_json::from_value(raw.clone()).expect("test slice decodes");
    endpoint_slice(&slice).map_err(|e| e.to_string())
}

fn slice_ok(raw: &Value) -> Converted<EndpointSlice> {
    convert_slice(raw)
        .expect("slice converts")
        .expect("slice is not ignored")
}

fn endpoint(addr: &str) -> Endpoint {
    Endpoint {
        addr: ip(addr),
        ready: true,
        serving: true,
        terminating: false,
        node_name: None,
        zone: None,
        zone_hints: vec![],
        node_hints: vec![],
    }
}

#[test]
fn endpoint_slice_converts_every_field() {
    let raw = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-abcde",
            "namespace": "shop",
            "labels": {
                "kubernetes.io/service-name": "web",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"},
            {"name": "dns", "port": 5353, "protocol": "UDP"},
            {"port": 9090},
        ],
        "endpoints": [
            {
                "addresses": ["10.244.1.5", "10.244.1.6"],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": "node-a",
                "zone": "zone-a",
                "hints": {"forZones": [{"name": "zone-a"}, {"name": "zone-b"}],
                          "forNodes": [{"name": "node-a"}]},
                "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop", "uid": "u1"},
            },
            {
                "addresses": ["10.244.2.7"],
                "conditions": {"ready": false, "serving": true, "terminating": true},
                "nodeName": "node-b",
            },
        ],
    });
    let converted = slice_ok(&raw);
    assert!(converted.warnings.is_empty(), "{:?}", converted.warnings);
    assert_eq!(
        converted.value,
        EndpointSlice {
            name: named("shop", "web-abcde"),
            service: named("shop", "web"),
            family: IpFamily::V4,
            ports: vec![
                EndpointPort {
                    name: "http".to_owned(),
                    port: 8080,
                    protocol: Protocol::Tcp
                },
                EndpointPort {
                    name: "dns".to_owned(),
                    port: 5353,
                    protocol: Protocol::Udp
                },
                EndpointPort {
                    name: String::new(),
                    port: 9090,
                    protocol: Protocol::Tcp
                },
            ],
            endpoints: vec![
                Endpoint {
                    node_name: Some("node-a".to_owned()),
                    zone: Some("zone-a".to_owned()),
                    zone_hints: vec!["zone-a".to_owned(), "zone-b".to_owned()],
                    node_hints: vec!["node-a".to_owned()],
                    ..endpoint("10.244.1.5")
                },
                Endpoint {
                    ready: false,
                    terminating: true,
                    node_name: Some("node-b".to_owned()),
                    ..endpoint("10.244.2.7")
                },
            ],
        }
    );
}

#[test]
fn endpoint_conditions_default_like_kube_proxy() {
    // (conditions, ready, serving, terminating): ready and serving are nil-means-true,
    // terminating is nil-means-false.
    let cases: &[(Value, bool, bool, bool)] = &[
        (Value::Null, true, true, false),
        (json!({}), true, true, false),
        (
            json!({"ready": null, "serving": null, "terminating": null}),
            true,
            true,
            false,
        ),
        (json!({"ready": false}), false, true, false),
        (json!({"serving": false}), true, false, false),
        (json!({"terminating": true}), true, true, true),
        (
            json!({"ready": false, "serving": true, "terminating": true}),
            false,
            true,
            true,
        ),
        (
            json!({"ready": false, "serving": false, "terminating": true}),
            false,
            false,
            true,
        ),
    ];
    for (conditions, ready, serving, terminating) in cases {
        let mut ep = json!({"addresses": ["10.244.0.1"]});
        if !conditions.is_null() {
            ep["conditions"] = conditions.clone();
        }
        let converted = slice_ok(&slice_json("IPv4", json!([ep])));
        let got = &converted.value.endpoints[0];
        assert_eq!(
            (got.ready, got.serving, got.terminating),
            (*ready, *serving, *terminating),
            "conditions {conditions}"
        );
    }
}

#[test]
fn ipv6_slice_keeps_ipv6_endpoints() {
    let converted = slice_ok(&slice_json(
        "IPv6",
        json!([{"addresses": ["fd00:10:244:1::5"]}, {"addresses": ["FD00:10:244:2::0007"]}]),
    ));
    assert_eq!(converted.value.family, IpFamily::V6);
    assert_eq!(
        converted.value.endpoints,
        vec![endpoint("fd00:10:244:1::5"), endpoint("fd00:10:244:2::7")]
    );
}

#[test]
fn unusable_endpoint_addresses_are_skipped_with_a_warning() {
    // (address type, endpoints, kept addresses, warning substrings)
    let cases: &[(&str, Value, &[&str], &[&str])] = &[
        (
            "IPv4",
            json!([{"addresses": ["10.0.0.1"]}, {"addresses": ["fd00::1"]}, {"addresses": ["10.0.0.3"]}]),
            &["10.0.0.1", "10.0.0.3"],
            &["endpoints[1]", "fd00::1", "not IPv4"],
        ),
        (
            "IPv6",
            json!([{"addresses": ["10.0.0.1"]}, {"addresses": ["fd00::2"]}]),
            &["fd00::2"],
            &["endpoints[0]", "10.0.0.1", "not IPv6"],
        ),
        (
            "IPv6",
            json!([{"addresses": ["::ffff:10.0.0.1"]}, {"addresses": ["fd00::2"]}]),
            &["fd00::2"],
            &["endpoints[0]", "::ffff:10.0.0.1"],
        ),
        (
            "IPv4",
            json!([{"addresses": ["pod-a.example"]}, {"addresses": ["10.0.0.2"]}]),
            &["10.0.0.2"],
            &["endpoints[0]", "\"pod-a.example\"", "not an IP address"],
        ),
        (
            "IPv4",
            json!([{"addresses": ["10.0.0.1"]}, {"addresses": []}]),
            &["10.0.0.1"],
            &["endpoints[1]", "no address"],
        ),
        (
            // Only addresses[0] counts, like kube-proxy: a good second address does not rescue it.
            "IPv4",
            json!([{"addresses": ["fd00::1", "10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]),
            &["10.0.0.2"],
            &["endpoints[0]", "fd00::1"],
        ),
    ];
    for (address_type, endpoints, kept, warning) in cases {
        let converted = slice_ok(&slice_json(address_type, endpoints.clone()));
        let got: Vec<IpAddr> = converted.value.endpoints.iter().map(|e| e.addr).collect();
        let want: Vec<IpAddr> = kept.iter().map(|s| ip(s)).collect();
        assert_eq!(got, want, "{endpoints}");
        assert_eq!(converted.warnings.len(), 1, "{:?}", converted.warnings);
        for w in *warning {
            assert!(
                converted.warnings[0].contains(w),
                "{:?} does not mention {w:?}",
                converted.warnings[0]
            );
        }
    }
}

#[test]
fn slice_ports_without_a_number_are_skipped_with_a_warning() {
    for ports in [
        json!([{"name": "metrics"}, {"name": "http", "port": 8080}]),
        json!([{"name": "metrics", "port": 0}, {"name": "http", "port": 8080}]),
    ] {
        let mut raw = slice_json("IPv4", json!([{"addresses": ["10.0.0.1"]}]));
        raw["ports"] = ports;
        let converted = slice_ok(&raw);
        assert_eq!(
            converted.value.ports,
            vec![EndpointPort {
                name: "http".to_owned(),
                port: 8080,
                protocol: Protocol::Tcp
            }]
        );
        assert_eq!(converted.warnings.len(), 1, "{:?}", converted.warnings);
        assert!(converted.warnings[0].contains("ports[0]"));
    }
}

#[test]
fn slice_without_ports_or_endpoints_converts_empty() {
    let mut raw = slice_json("IPv4", Value::Null);
    raw.as_object_mut().expect("object").remove("ports");
    let converted = slice_ok(&raw);
    assert!(converted.value.ports.is_empty());
    assert!(converted.value.endpoints.is_empty());
}

#[test]
fn ignored_slices() {
    let fqdn = slice_json("FQDN", json!([{"addresses": ["db.example.com"]}]));
    let mut unlabelled = slice_json("IPv4", json!([{"addresses": ["10.0.0.1"]}]));
    unlabelled["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("labels");
    let mut other_labels = unlabelled.clone();
    other_labels["metadata"]["labels"] = json!({"app": "web"});
    let mut empty_label = unlabelled.clone();
    empty_label["metadata"]["labels"] = json!({"kubernetes.io/service-name": ""});
    for (what, raw) in [
        ("FQDN", fqdn),
        ("no labels", unlabelled),
        ("no service-name label", other_labels),
        ("empty service-name label", empty_label),
    ] {
        assert!(
            convert_slice(&raw).expect("not an error").is_none(),
            "{what}"
        );
    }
}

#[test]
fn invalid_slices_are_rejected_with_the_reason() {
    let base = slice_json("IPv4", json!([{"addresses": ["10.0.0.1"]}]));
    let cases: &[(&str, Value, &[&str])] = &[
        (
            "unknown address type",
            with(base.clone(), &[("/addressType", json!("IPv5"))]),
            &["addressType", "\"IPv5\""],
        ),
        (
            "port 70000",
            with(base.clone(), &[("/ports/0/port", json!(70000))]),
            &["ports[0].port 70000"],
        ),
        (
            "negative port",
            with(base.clone(), &[("/ports/0/port", json!(-5))]),
            &["ports[0].port -5"],
        ),
        (
            "unknown protocol",
            with(base.clone(), &[("/ports/0/protocol", json!("QUIC"))]),
            &["ports[0]", "\"QUIC\""],
        ),
        (
            "empty name",
            with(base.clone(), &[("/metadata/name", json!(""))]),
            &["metadata.name"],
        ),
    ];
    for (what, raw, want) in cases {
        let err = match convert_slice(raw) {
            Ok(c) => panic!("{what}: expected an error, got {c:?}"),
            Err(e) => e,
        };
        for w in *want {
            assert!(err.contains(w), "{what}: {err:?} does not mention {w:?}");
        }
    }
}

#[test]
fn slice_service_lives_in_the_slice_namespace() {
    let mut raw = slice_json("IPv4", json!([]));
    raw["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("namespace");
    let converted = slice_ok(&raw);
    assert_eq!(converted.value.name, named("default", "web-abcde"));
    assert_eq!(converted.value.service, named("default", "web"));
}

#[test]
fn errors_name_the_field_at_fault() {
    let svc: K8sService = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80, "nodePort": 70000}]}
    }))
    .unwrap();
    let e = service(&svc, None, true).unwrap_err();
    assert_eq!(e.field(), "spec.ports[0].nodePort", "{e}");
    let svc: K8sService = serde_json::from_value(json!({
        "metadata": {"namespace": "default"},
        "spec": {"clusterIP": "10.96.0.1"}
    }))
    .unwrap();
    assert_eq!(
        service(&svc, None, true).unwrap_err().field(),
        "metadata.name"
    );
}

#[test]
fn session_affinity_client_ip_with_kube_proxys_default_and_limits() {
    let affinity = |extra: Value| {
        let mut spec = json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        convert_service(&svc_json(spec), true).map(|c| c.value.session_affinity)
    };
    assert_eq!(affinity(json!({})), Ok(None));
    assert_eq!(affinity(json!({"sessionAffinity": "None"})), Ok(None));
    assert_eq!(
        affinity(json!({"sessionAffinity": "ClientIP"})),
        Ok(Some(10_800)),
        "kube-proxy's default timeout"
    );
    assert_eq!(
        affinity(json!({
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86400}}
        })),
        Ok(Some(86_400))
    );
    for bad in [0, -1, 86_401] {
        let e = affinity(json!({
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": bad}}
        }))
        .unwrap_err();
        assert!(
            e.contains("spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
            "{bad}: {e}"
        );
    }
    let e = affinity(json!({"sessionAffinity": "Cookie"})).unwrap_err();
    assert!(e.contains("spec.sessionAffinity \"Cookie\""), "{e}");
}
