//! The manifest source against real directories: what kubectl prints, what people write by hand,
//! what breaks, and what must survive a bad edit.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant, SystemTime},
};

use super::{ManifestSource, Report};
use crate::model::testing::{endpoint, ep_port, ip, ips, named, svc_port};
use crate::model::{
    Endpoint, EndpointSlice, IpFamily, NamespacedName, Protocol, Service, ServiceType,
    TrafficPolicy,
};
use crate::source::NodeState;

const KUBECTL_YAML: &str = include_str!(
    "../../../testdata/plan/kubectl-dump/manifests/kubectl-get-svc-endpointslices.yaml"
);
const KUBECTL_JSON: &str = include_str!("../../../testdata/kubectl-get-svc-endpointslices.json");

/// A fresh directory under the system temp dir, named from pid and a counter so parallel tests
/// and parallel runs never share one; removed on drop.
struct TestDir {
    path: PathBuf,
}

impl TestDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "lb-agent-manifest-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover from a killed run with a recycled pid.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create test dir");
        Self { path }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn write(&self, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let path = self.file(name);
        fs::write(&path, text).expect("write test file");
        path
    }

    fn remove(&self, name: &str) {
        fs::remove_file(self.file(name)).expect("remove test file");
    }

    fn source(&self) -> ManifestSource {
        ManifestSource::new(&self.path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn reload(source: &mut ManifestSource) -> Report {
    source.reload().expect("manifest directory is readable")
}

fn reload_clean(source: &mut ManifestSource) {
    let report = reload(source);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

fn services(source: &ManifestSource) -> Vec<Service> {
    source.snapshot().0
}

fn slices(source: &ManifestSource) -> Vec<EndpointSlice> {
    source.snapshot().1
}

fn names<'a>(names: impl IntoIterator<Item = &'a NamespacedName>) -> Vec<String> {
    names.into_iter().map(ToString::to_string).collect()
}

fn service_names(source: &ManifestSource) -> Vec<String> {
    names(services(source).iter().map(|s| &s.name))
}

fn slice_names(source: &ManifestSource) -> Vec<String> {
    names(slices(source).iter().map(|s| &s.name))
}

fn find_service(source: &ManifestSource, namespaced: &str) -> Service {
    services(source)
        .into_iter()
        .find(|s| s.name.to_string() == namespaced)
        .unwrap_or_else(|| panic!("no service {namespaced}"))
}

/// Asserts exactly one line contains every needle.
fn assert_one_line(lines: &[String], needles: &[&str]) {
    let hits: Vec<&String> = lines
        .iter()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "want one line with {needles:?} in {lines:#?}"
    );
}

/// A small valid Service document.
fn svc_doc(namespace: &str, name: &str, cluster_ip: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  clusterIP: {cluster_ip}\n  ports:\n  - name: http\n    port: {port}\n"
    )
}

/// A small valid EndpointSlice document of service `service`.
fn slice_doc(namespace: &str, name: &str, service: &str, addr: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  \
         namespace: {namespace}\n  labels:\n    kubernetes.io/service-name: {service}\n\
         addressType: IPv4\nports:\n- name: http\n  port: 8080\nendpoints:\n- addresses: [{addr}]\n"
    )
}

#[test]
fn kubectl_get_yaml_list_loads_into_the_exact_model() {
    let dir = TestDir::new();
    dir.write("cluster.yaml", KUBECTL_YAML);
    let mut source = dir.source();
    reload_clean(&mut source);
    let (services, slices, problems) = source.snapshot();
    assert!(problems.is_empty(), "{problems:?}");

    let want_services = vec![
        Service {
            name: named("kube-system", "kube-dns"),
            service_type: ServiceType::NodePort,
            cluster_ips: ips(&["fd00:10:96::a"]),
            ports: vec![
                svc_port("dns", 53, Protocol::Udp, Some(30053)),
                svc_port("dns-tcp", 53, Protocol::Tcp, Some(30054)),
                svc_port("metrics", 9153, Protocol::Tcp, Some(30153)),
            ],
            external_ips: vec![],
            load_balancer_ips: vec![],
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Local,
            health_check_node_port: None,
            load_balancer_source_ranges: vec![],
            session_affinity: None,
        },
        Service {
            name: named("shop", "db"),
            service_type: ServiceType::ClusterIp,
            cluster_ips: vec![],
            ports: vec![svc_port("postgres", 5432, Protocol::Tcp, None)],
            external_ips: vec![],
            load_balancer_ips: vec![],
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            load_balancer_source_ranges: vec![],
            session_affinity: None,
        },
        Service {
            name: named("shop", "front"),
            service_type: ServiceType::LoadBalancer,
            cluster_ips: ips(&["10.96.40.1"]),
            ports: vec![svc_port("https", 443, Protocol::Tcp, Some(30443))],
            external_ips: ips(&["192.0.2.40"]),
            load_balancer_ips: ips(&["203.0.113.10"]),
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Local,
            health_check_node_port: Some(31999),
            load_balancer_source_ranges: vec![],
            session_affinity: Some(10_800),
        },
        Service {
            name: named("shop", "payments"),
            service_type: ServiceType::ExternalName,
            cluster_ips: vec![],
            ports: vec![],
            external_ips: vec![],
            load_balancer_ips: vec![],
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            load_balancer_source_ranges: vec![],
            session_affinity: None,
        },
        Service {
            name: named("shop", "web"),
            service_type: ServiceType::ClusterIp,
            cluster_ips: ips(&["10.96.12.34", "fd00:10:96::1234"]),
            ports: vec![
                svc_port("http", 80, Protocol::Tcp, None),
                svc_port("metrics", 9090, Protocol::Tcp, None),
            ],
            external_ips: vec![],
            load_balancer_ips: vec![],
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            load_balancer_source_ranges: vec![],
            session_affinity: None,
        },
    ];
    assert_eq!(services, want_services);

    let want_slices = vec![
        EndpointSlice {
            name: named("kube-system", "kube-dns-5r8tw"),
            service: named("kube-system", "kube-dns"),
            family: IpFamily::V6,
            ports: vec![
                ep_port("dns-tcp", 53, Protocol::Tcp),
                ep_port("dns", 53, Protocol::Udp),
                ep_port("metrics", 9153, Protocol::Tcp),
            ],
            endpoints: vec![endpoint("fd00:10:244:1::53", Some("node-a"), None)],
        },
        EndpointSlice {
            name: named("shop", "web-q9m4z"),
            service: named("shop", "web"),
            family: IpFamily::V6,
            ports: vec![
                ep_port("http", 8080, Protocol::Tcp),
                ep_port("metrics", 9090, Protocol::Tcp),
            ],
            endpoints: vec![
                endpoint("fd00:10:244:1::5", Some("node-a"), Some("zone-a")),
                // `conditions: {}`: ready and serving default to true, terminating to false.
                endpoint("fd00:10:244:3::9", Some("node-c"), None),
            ],
        },
        EndpointSlice {
            name: named("shop", "web-x7k2p"),
            service: named("shop", "web"),
            family: IpFamily::V4,
            ports: vec![
                ep_port("http", 8080, Protocol::Tcp),
                ep_port("metrics", 9090, Protocol::Tcp),
            ],
            endpoints: vec![
                Endpoint {
                    zone_hints: vec!["zone-a".to_owned()],
                    ..endpoint("10.244.1.5", Some("node-a"), Some("zone-a"))
                },
                // Only addresses[0] of an endpoint counts.
                Endpoint {
                    ready: false,
                    terminating: true,
                    zone_hints: vec!["zone-b".to_owned()],
                    node_hints: vec!["node-b".to_owned()],
                    ..endpoint("10.244.2.7", Some("node-b"), Some("zone-b"))
                },
            ],
        },
    ];
    assert_eq!(slices, want_slices);
}

#[test]
fn kubectl_get_json_list_loads() {
    let dir = TestDir::new();
    dir.write("echo.json", KUBECTL_JSON);
    let mut source = dir.source();
    reload_clean(&mut source);
    assert_eq!(
        services(&source),
        vec![Service {
            name: named("default", "echo"),
            service_type: ServiceType::ClusterIp,
            cluster_ips: ips(&["10.96.7.7"]),
            ports: vec![svc_port("", 7, Protocol::Udp, None)],
            external_ips: vec![],
            load_balancer_ips: vec![],
            internal_traffic_policy: TrafficPolicy::Local,
            external_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            load_balancer_source_ranges: vec![],
            session_affinity: None,
        }]
    );
    assert_eq!(
        slices(&source),
        vec![EndpointSlice {
            name: named("default", "echo-h2j6k"),
            service: named("default", "echo"),
            family: IpFamily::V4,
            ports: vec![ep_port("", 7, Protocol::Udp)],
            endpoints: vec![endpoint("10.244.3.7", Some("node-c"), None)],
        }]
    );
}

#[test]
fn typed_lists_from_the_api_fill_in_the_kind_of_their_items() {
    // `kubectl get --raw /api/v1/namespaces/shop/services` prints a ServiceList whose items
    // carry neither kind nor apiVersion.
    let dir = TestDir::new();
    dir.write(
        "raw.json",
        r#"{"kind": "ServiceList", "apiVersion": "v1", "metadata": {"resourceVersion": "9"},
            "items": [{"metadata": {"name": "web", "namespace": "shop"},
                       "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}}]}"#,
    );
    dir.write(
        "slices.yaml",
        "kind: EndpointSliceList\napiVersion: discovery.k8s.io/v1\nitems:\n\
         - metadata:\n    name: web-1\n    namespace: shop\n    labels:\n      \
         kubernetes.io/service-name: web\n  addressType: IPv4\n  endpoints:\n  \
         - addresses: [10.244.0.1]\n",
    );
    let mut source = dir.source();
    reload_clean(&mut source);
    assert_eq!(service_names(&source), ["shop/web"]);
    assert_eq!(slice_names(&source), ["shop/web-1"]);
}

#[test]
fn multi_document_yaml_yml_and_json_files_load_and_other_files_are_ignored() {
    let dir = TestDir::new();
    dir.write(
        "shop.yaml",
        format!(
            "# Services of the shop, kept by hand.\n---\n---\n# nothing but a comment\n---\n\
             {}---\n\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg, namespace: shop}}\n\
             data: {{a: b}}\n---\n{}...\n---\n# trailing comment document\n",
            svc_doc("shop", "a", "10.96.0.1", 80),
            svc_doc("shop", "b", "10.96.0.2", 80),
        ),
    );
    dir.write("dns.yml", svc_doc("kube-system", "dns", "10.96.0.10", 53));
    dir.write(
        "api.json",
        r#"{"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.3", "ports": [{"port": 443}]}}"#,
    );
    // Not manifests: hidden files (editor swap and lock files too), other extensions, backups,
    // and directories even when named like a manifest.
    let ignored = svc_doc("shop", "ignored", "10.96.0.99", 80);
    for file in [
        ".hidden.yaml",
        ".shop.yaml.swp",
        ".#shop.yaml",
        "shop.yaml~",
        "shop.yaml.bak",
        "shop.txt",
        "README.md",
        "shop.YAML",
    ] {
        dir.write(file, &ignored);
    }
    fs::create_dir(dir.file("nested.yaml")).expect("mkdir");
    fs::create_dir(dir.file("sub")).expect("mkdir");
    dir.write("sub/svc.yaml", &ignored);

    let mut source = dir.source();
    reload_clean(&mut source);
    assert_eq!(
        service_names(&source),
        ["shop/api", "kube-system/dns", "shop/a", "shop/b"]
    );
    assert_eq!(
        find_service(&source, "shop/b").cluster_ips,
        ips(&["10.96.0.2"])
    );
}

#[test]
fn empty_and_comment_only_files_hold_nothing() {
    let dir = TestDir::new();
    dir.write("empty.yaml", "");
    dir.write(
        "comments.yaml",
        "# nothing here yet\n---\n# still nothing\n",
    );
    dir.write("separators.yml", "---\n---\n...\n");
    let mut source = dir.source();
    reload_clean(&mut source);
    assert!(services(&source).is_empty());
    assert!(slices(&source).is_empty());
}

#[test]
fn other_kinds_and_other_api_groups_are_ignored_silently() {
    let dir = TestDir::new();
    dir.write(
        "misc.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n---\n\
         apiVersion: v1\nkind: Endpoints\nmetadata: {name: web}\nsubsets: []\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n\
         apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: knative}\n\
         spec: {template: {}}\n---\n\
         apiVersion: example.com/v1\nkind: EndpointSlice\nmetadata: {name: custom}\n---\n\
         apiVersion: v1\nkind: List\nitems: []\n",
    );
    let mut source = dir.source();
    reload_clean(&mut source);
    assert!(services(&source).is_empty());
    assert!(slices(&source).is_empty());
}

#[test]
fn malformed_objects_are_reported_and_the_rest_of_the_file_loads() {
    // (what, bad document, substrings of the one problem line besides the file name)
    let bad_svc = |spec: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\n  namespace: shop\nspec:\n{spec}"
        )
    };
    let bad_slice = |api_version: &str, address_type: &str| {
        format!(
            "apiVersion: {api_version}\nkind: EndpointSlice\nmetadata:\n  name: bad\n  \
             namespace: shop\n  labels: {{kubernetes.io/service-name: good}}\n\
             addressType: {address_type}\nendpoints: []\n"
        )
    };
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "clusterIP not an IP",
            bad_svc("  clusterIP: not-an-ip\n"),
            &["Service shop/bad", "\"not-an-ip\"", "not an IP address"],
        ),
        (
            "clusterIP differs from clusterIPs[0]",
            bad_svc("  clusterIP: 10.96.0.5\n  clusterIPs: [10.96.0.6]\n"),
            &["Service shop/bad", "differs from spec.clusterIPs[0]"],
        ),
        (
            "two IPv4 clusterIPs",
            bad_svc("  clusterIP: 10.96.0.5\n  clusterIPs: [10.96.0.5, 10.96.0.6]\n"),
            &["Service shop/bad", "two IPv4 addresses"],
        ),
        (
            "ipFamilies not matching clusterIPs",
            bad_svc(
                "  clusterIP: 10.96.0.5\n  clusterIPs: [10.96.0.5, fd00::5]\n  \
                 ipFamilies: [IPv6, IPv4]\n",
            ),
            &["Service shop/bad", "spec.ipFamilies[0] IPv6"],
        ),
        (
            "port 0",
            bad_svc("  clusterIP: 10.96.0.5\n  ports: [{port: 0}]\n"),
            &["Service shop/bad", "spec.ports[0].port 0"],
        ),
        (
            "port 70000",
            bad_svc("  clusterIP: 10.96.0.5\n  ports: [{port: 70000}]\n"),
            &["Service shop/bad", "spec.ports[0].port 70000"],
        ),
        (
            "port not a number",
            bad_svc("  clusterIP: 10.96.0.5\n  ports: [{port: eighty}]\n"),
            &["Service shop/bad", "not a valid Service"],
        ),
        (
            "unknown protocol",
            bad_svc("  clusterIP: 10.96.0.5\n  ports: [{port: 80, protocol: HTTP}]\n"),
            &["Service shop/bad", "unknown protocol \"HTTP\""],
        ),
        (
            "duplicate port name",
            bad_svc(
                "  clusterIP: 10.96.0.5\n  ports:\n  - {name: web, port: 80}\n  \
                 - {name: web, port: 8080}\n",
            ),
            &["Service shop/bad", "spec.ports[1]", "\"web\"", "used twice"],
        ),
        (
            "missing clusterIP",
            bad_svc("  ports: [{port: 80}]\n"),
            &["Service shop/bad", "clusterIP", "API server"],
        ),
        (
            "missing metadata.name",
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: shop}\n\
             spec: {clusterIP: 10.96.0.5}\n"
                .to_owned(),
            &["document 2", "Service", "namespace shop", "metadata.name"],
        ),
        (
            "Service without apiVersion",
            "kind: Service\nmetadata: {name: bad, namespace: shop}\nspec: {clusterIP: 10.96.0.5}\n"
                .to_owned(),
            &["Service shop/bad", "apiVersion", "v1"],
        ),
        (
            "EndpointSlice with a bad addressType",
            bad_slice("discovery.k8s.io/v1", "IPv5"),
            &["EndpointSlice shop/bad", "addressType \"IPv5\""],
        ),
        (
            "EndpointSlice without addressType",
            bad_slice("discovery.k8s.io/v1", "null"),
            &["EndpointSlice shop/bad", "addressType"],
        ),
        (
            "EndpointSlice v1beta1",
            bad_slice("discovery.k8s.io/v1beta1", "IPv4"),
            &[
                "EndpointSlice shop/bad",
                "\"discovery.k8s.io/v1beta1\"",
                "use discovery.k8s.io/v1",
            ],
        ),
        (
            "document without kind",
            "apiVersion: v1\nmetadata: {name: bad}\n".to_owned(),
            &["document 2", "no kind"],
        ),
        (
            "plain string document",
            "just some text\n".to_owned(),
            &["document 2", "not an object"],
        ),
        (
            "sequence document",
            "- a\n- b\n".to_owned(),
            &["document 2", "not an object"],
        ),
        (
            "bad item of a List",
            format!(
                "apiVersion: v1\nkind: List\nitems:\n- {}\n- 42\n",
                slice_doc("shop", "good-1", "good", "10.244.0.1").replace('\n', "\n  ")
            ),
            &["document 2", "items[1]", "not an object"],
        ),
    ];
    for (what, bad, want) in cases {
        let dir = TestDir::new();
        let path = dir.write(
            "mixed.yaml",
            format!(
                "{}---\n{bad}---\n{}",
                svc_doc("shop", "good", "10.96.0.1", 80),
                slice_doc("shop", "good-0", "good", "10.244.0.9")
            ),
        );
        let mut source = dir.source();
        let report = reload(&mut source);
        assert_eq!(report.problems.len(), 1, "{what}: {:#?}", report.problems);
        let line = &report.problems[0];
        assert!(
            line.starts_with(&format!("{}: ", path.display())),
            "{what}: {line:?} does not start with the file"
        );
        for w in want {
            assert!(line.contains(w), "{what}: {line:?} does not mention {w:?}");
        }
        assert!(line.contains("skipped"), "{what}: {line:?}");
        assert_eq!(service_names(&source), ["shop/good"], "{what}");
        assert!(
            slice_names(&source).contains(&"shop/good-0".to_owned()),
            "{what}: {:?}",
            slice_names(&source)
        );
    }
}

#[test]
fn yaml_syntax_error_keeps_the_whole_file_at_its_last_good_version() {
    let dir = TestDir::new();
    let good = format!(
        "{}---\n{}",
        svc_doc("shop", "a", "10.96.0.1", 80),
        slice_doc("shop", "a-1", "a", "10.244.0.1")
    );
    let path = dir.write("shop.yaml", &good);
    let mut source = dir.source();
    reload_clean(&mut source);

    // The second document is fine, the third does not parse: nothing of the new text counts.
    dir.write(
        "shop.yaml",
        format!(
            "{}---\n{}---\nkind: Service\nspec: [unclosed\n",
            svc_doc("shop", "a", "10.96.0.7", 80),
            svc_doc("shop", "new", "10.96.0.8", 80)
        ),
    );
    let report = reload(&mut source);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let line = &report.problems[0];
    assert!(line.starts_with(&format!("{}: ", path.display())), "{line}");
    assert!(line.contains("invalid YAML"), "{line}");
    assert!(line.contains("line "), "{line}");
    assert!(line.contains("keeping what the file held before"), "{line}");
    assert_eq!(service_names(&source), ["shop/a"]);
    assert_eq!(
        find_service(&source, "shop/a").cluster_ips,
        ips(&["10.96.0.1"])
    );
    assert_eq!(slice_names(&source), ["shop/a-1"]);

    // Reported when read, not on every reload.
    reload_clean(&mut source);
    assert_eq!(service_names(&source), ["shop/a"]);

    // A file that never loaded holds nothing.
    let other = dir.write("other.yaml", "kind: Service\nmetadata: {name: x\n");
    let report = reload(&mut source);
    assert_one_line(
        &report.problems,
        &[&format!("{}: ", other.display()), "invalid YAML"],
    );
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(service_names(&source), ["shop/a"]);

    // The fix is taken as soon as it is written.
    dir.write("shop.yaml", svc_doc("shop", "a", "10.96.0.7", 80));
    reload(&mut source);
    assert_eq!(
        find_service(&source, "shop/a").cluster_ips,
        ips(&["10.96.0.7"])
    );
    assert!(slice_names(&source).is_empty());
}

#[test]
fn non_utf8_and_bad_json_files_keep_their_last_good_version() {
    let dir = TestDir::new();
    dir.write("a.json", KUBECTL_JSON);
    dir.write("b.yaml", svc_doc("shop", "b", "10.96.0.2", 80));
    let mut source = dir.source();
    reload_clean(&mut source);
    dir.write("a.json", "{\"kind\": \"List\", \"items\": [");
    dir.write(
        "b.yaml",
        b"apiVersion: v1\nkind: Service # \xff\xfe\n".as_slice(),
    );
    let report = reload(&mut source);
    assert_one_line(&report.problems, &["a.json: ", "invalid JSON"]);
    assert_one_line(&report.problems, &["b.yaml: ", "UTF-8"]);
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert_eq!(service_names(&source), ["default/echo", "shop/b"]);
}

#[test]
fn byte_order_mark_is_accepted() {
    let dir = TestDir::new();
    dir.write("a.json", format!("\u{feff}{KUBECTL_JSON}"));
    dir.write(
        "b.yaml",
        format!("\u{feff}{}", svc_doc("shop", "b", "10.96.0.2", 80)),
    );
    let mut source = dir.source();
    reload_clean(&mut source);
    assert_eq!(service_names(&source), ["default/echo", "shop/b"]);
}

#[test]
fn broken_edit_keeps_the_last_good_service_until_the_file_is_removed() {
    let dir = TestDir::new();
    let write = |web_ip: &str, other_port: u16| {
        dir.write(
            "svc.yaml",
            format!(
                "{}---\n{}",
                svc_doc("shop", "web", web_ip, 80),
                svc_doc("shop", "other", "10.96.0.2", other_port)
            ),
        )
    };
    let path = write("10.96.0.1", 80);
    let mut source = dir.source();
    reload_clean(&mut source);
    let good_web = find_service(&source, "shop/web");

    // web breaks while other changes: other's change is taken, web stays at its last good
    // version.
    write("not-an-ip", 81);
    let report = reload(&mut source);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_one_line(
        &report.problems,
        &[
            &format!("{}: ", path.display()),
            "Service shop/web",
            "\"not-an-ip\"",
            "keeping its last good version",
        ],
    );
    assert_eq!(find_service(&source, "shop/web"), good_web);
    assert_eq!(find_service(&source, "shop/other").ports[0].port, 81);

    // Still broken, differently: still the same last good version.
    write("10.96.0.1/32", 82);
    let report = reload(&mut source);
    assert_one_line(
        &report.problems,
        &[
            "Service shop/web",
            "\"10.96.0.1/32\"",
            "keeping its last good version",
        ],
    );
    assert_eq!(find_service(&source, "shop/web"), good_web);
    assert_eq!(find_service(&source, "shop/other").ports[0].port, 82);

    // Fixed: the new version is taken.
    write("10.96.0.9", 82);
    reload_clean(&mut source);
    assert_eq!(
        find_service(&source, "shop/web").cluster_ips,
        ips(&["10.96.0.9"])
    );

    // The object removed from the file is gone; so is everything once the file is.
    dir.write("svc.yaml", svc_doc("shop", "other", "10.96.0.2", 82));
    reload_clean(&mut source);
    assert_eq!(service_names(&source), ["shop/other"]);
    dir.remove("svc.yaml");
    reload_clean(&mut source);
    assert!(services(&source).is_empty());
}

#[test]
fn broken_edit_of_a_removed_file_does_not_resurrect_it() {
    let dir = TestDir::new();
    dir.write("svc.yaml", svc_doc("shop", "web", "10.96.0.1", 80));
    let mut source = dir.source();
    reload_clean(&mut source);
    dir.remove("svc.yaml");
    reload_clean(&mut source);
    // A new file with the same name and a broken object has no last good version.
    dir.write("svc.yaml", svc_doc("shop", "web", "not-an-ip", 80));
    let report = reload(&mut source);
    assert_one_line(&report.problems, &["Service shop/web", "skipped"]);
    assert!(services(&source).is_empty());
}

#[test]
fn last_good_version_is_kept_for_each_kind_of_object_error() {
    let dir = TestDir::new();
    dir.write(
        "a.yaml",
        format!(
            "{}---\n{}",
            svc_doc("shop", "web", "10.96.0.1", 80),
            slice_doc("shop", "web-1", "web", "10.244.0.1")
        ),
    );
    let mut source = dir.source();
    reload_clean(&mut source);
    let before = source.snapshot();
    // The slice moves to an apiVersion that is not served and the Service loses its address.
    dir.write(
        "a.yaml",
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\n\
             spec: {{ports: [{{port: 80}}]}}\n---\n{}",
            slice_doc("shop", "web-1", "web", "10.244.0.2")
                .replace("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1")
        ),
    );
    let report = reload(&mut source);
    assert_one_line(
        &report.problems,
        &[
            "Service shop/web",
            "clusterIP",
            "keeping its last good version",
        ],
    );
    assert_one_line(
        &report.problems,
        &[
            "EndpointSlice shop/web-1",
            "v1beta1",
            "keeping its last good version",
        ],
    );
    let after = source.snapshot();
    assert_eq!(after.0, before.0);
    assert_eq!(after.1, before.1);
}

#[test]
fn object_in_two_files_is_taken_from_the_first_and_reported_naming_both() {
    let dir = TestDir::new();
    let a = dir.write(
        "a.yaml",
        format!(
            "{}---\n{}",
            svc_doc("shop", "web", "10.96.0.1", 80),
            slice_doc("shop", "web-1", "web", "10.244.0.1")
        ),
    );
    let b = dir.write(
        "b.yaml",
        format!(
            "{}---\n{}",
            svc_doc("shop", "web", "10.96.0.2", 80),
            slice_doc("shop", "web-1", "web", "10.244.0.2")
        ),
    );
    let mut source = dir.source();
    reload_clean(&mut source);
    let (services, slices, problems) = source.snapshot();
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].cluster_ips, ips(&["10.96.0.1"]));
    assert_eq!(slices.len(), 1);
    assert_eq!(slices[0].endpoints[0].addr, ip("10.244.0.1"));
    assert_eq!(problems.len(), 2, "{problems:?}");
    let (a, b) = (a.display().to_string(), b.display().to_string());
    assert_one_line(
        &problems,
        &[&format!("{b}: "), "Service shop/web", &a, "ignored"],
    );
    assert_one_line(
        &problems,
        &[&format!("{b}: "), "EndpointSlice shop/web-1", &a, "ignored"],
    );

    // Without the first file the second copy is served.
    dir.remove("a.yaml");
    reload_clean(&mut source);
    let (services, _, problems) = source.snapshot();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(services[0].cluster_ips, ips(&["10.96.0.2"]));
}

#[test]
fn same_object_twice_in_one_file_is_reported_and_the_later_copy_wins() {
    let dir = TestDir::new();
    dir.write(
        "a.yaml",
        format!(
            "{}---\n{}",
            svc_doc("shop", "web", "10.96.0.1", 80),
            svc_doc("shop", "web", "10.96.0.2", 80)
        ),
    );
    let mut source = dir.source();
    let report = reload(&mut source);
    assert_one_line(&report.problems, &["a.yaml: ", "Service shop/web", "twice"]);
    assert_eq!(
        find_service(&source, "shop/web").cluster_ips,
        ips(&["10.96.0.2"])
    );
}

#[test]
fn namespace_defaults_to_default_and_keys_by_namespace() {
    let dir = TestDir::new();
    dir.write(
        "a.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n\
         spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
         spec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}\n",
    );
    // An empty namespace is the default namespace too: the same object as the first one.
    dir.write(
        "b.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: \"\"}\n\
         spec: {clusterIP: 10.96.0.3, ports: [{port: 80}]}\n",
    );
    let mut source = dir.source();
    reload_clean(&mut source);
    let (services, _, problems) = source.snapshot();
    assert_eq!(
        names(services.iter().map(|s| &s.name)),
        ["default/web", "shop/web"]
    );
    assert_one_line(&problems, &["b.yaml: ", "Service default/web", "a.yaml"]);
}

#[test]
fn missing_cluster_ip_says_why_and_headless_is_fine() {
    let dir = TestDir::new();
    let path = dir.write(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
         spec: {ports: [{port: 80}], selector: {app: web}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\n\
         spec: {clusterIP: None, ports: [{port: 5432}]}\n",
    );
    let mut source = dir.source();
    let report = reload(&mut source);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_one_line(
        &report.problems,
        &[
            &format!("{}: ", path.display()),
            "Service shop/web",
            "spec.clusterIP",
            "without an API server",
            "clusterIP: None",
        ],
    );
    let db = find_service(&source, "shop/db");
    assert!(db.cluster_ips.is_empty());
    assert_eq!(service_names(&source), ["shop/db"]);
}

#[test]
fn pre_1_20_ip_family_is_a_warning_reported_when_the_file_is_read() {
    let dir = TestDir::new();
    let path = dir.write(
        "legacy.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: legacy, namespace: shop}\n\
         spec: {clusterIP: 10.96.0.1, ipFamily: IPv4, ports: [{port: 80}]}\n",
    );
    let mut source = dir.source();
    let report = reload(&mut source);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert_one_line(
        &report.warnings,
        &[
            &format!("{}: ", path.display()),
            "Service shop/legacy",
            "spec.ipFamily ",
            "spec.ipFamilies",
        ],
    );
    assert_eq!(service_names(&source), ["shop/legacy"]);

    // Unchanged: not parsed again, so no second warning, and the service stays.
    reload_clean(&mut source);
    reload_clean(&mut source);
    assert_eq!(service_names(&source), ["shop/legacy"]);

    // Touched without a change: still nothing to parse.
    set_mtime(&path, SystemTime::now() - Duration::from_secs(3600));
    reload_clean(&mut source);
    assert_eq!(service_names(&source), ["shop/legacy"]);
}

fn set_mtime(path: &Path, when: SystemTime) {
    fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(when))
        .expect("set mtime");
}

fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .expect("mtime")
}

#[test]
fn file_with_an_old_unchanged_stamp_is_not_read_again() {
    // The contract: same modification time and size means unchanged. Shown by changing the
    // content behind the source's back and restoring both.
    let dir = TestDir::new();
    let path = dir.write("svc.yaml", svc_doc("shop", "web", "10.96.0.1", 80));
    let old = SystemTime::now() - Duration::from_secs(3600);
    set_mtime(&path, old);
    let mut source = dir.source();
    reload_clean(&mut source);
    dir.write("svc.yaml", svc_doc("shop", "web", "10.96.0.2", 80));
    set_mtime(&path, old);
    reload_clean(&mut source);
    assert_eq!(
        find_service(&source, "shop/web").cluster_ips,
        ips(&["10.96.0.1"])
    );
}

#[test]
fn rewrite_within_one_timestamp_tick_is_seen() {
    // File systems stamp writes with a coarse clock (one kernel tick, or whole seconds), so an
    // edit of the same size right after a read can leave the stamp unchanged. A stamp that
    // recent must not be trusted (git's "racily clean" entries).
    let dir = TestDir::new();
    let path = dir.write("svc.yaml", svc_doc("shop", "web", "10.96.0.1", 80));
    let mut source = dir.source();
    reload_clean(&mut source);
    let stamp = mtime(&path);
    dir.write("svc.yaml", svc_doc("shop", "web", "10.96.0.2", 80));
    set_mtime(&path, stamp);
    reload_clean(&mut source);
    assert_eq!(
        find_service(&source, "shop/web").cluster_ips,
        ips(&["10.96.0.2"])
    );
}

#[test]
fn unreadable_directory_is_an_error_and_changes_nothing() {
    let dir = TestDir::new();
    dir.write("svc.yaml", svc_doc("shop", "web", "10.96.0.1", 80));
    let mut source = dir.source();
    reload_clean(&mut source);
    let moved = dir.path.with_extension("moved");
    fs::rename(&dir.path, &moved).expect("rename test dir");
    let result = source.reload();
    fs::rename(&moved, &dir.path).expect("rename test dir back");
    assert!(result.is_err());
    assert_eq!(service_names(&source), ["shop/web"]);
    assert_eq!(source.dir(), dir.path);
}

/// Runs `f` and fails when it takes longer than the hostile-input budget.
fn within_budget<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(1), "{what} took {took:?}");
    out
}

#[test]
fn hostile_input_is_reported_quickly_without_panicking() {
    let depth = 100_000;
    let laughs = {
        // Each level refers to the previous one ten times: 10^9 nodes if expanded.
        let mut s =
            "apiVersion: v1\nkind: Service\nmetadata: {name: lol}\nx0: &a0 [lol]\n".to_owned();
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            s.push_str(&format!("x{i}: &a{i} [{refs}]\n"));
        }
        s
    };
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "deep YAML flow nesting",
            "deep.yaml",
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        ),
        ("deep YAML block nesting", "block.yaml", {
            let mut s = String::new();
            for i in 0..2_000 {
                s.push_str(&" ".repeat(i));
                s.push_str("a:\n");
            }
            s
        }),
        (
            // libyaml's time grows with length times flow depth here.
            "deep YAML flow mappings",
            "mappings.yaml",
            format!("{}{}", "{a: ".repeat(depth), "}".repeat(depth)),
        ),
        (
            "deep JSON nesting",
            "deep.json",
            format!("{}{}", "{\"a\":".repeat(depth), "}".repeat(depth)),
        ),
        ("alias expansion", "laughs.yaml", laughs),
        ("non-string keys", "keys.yaml", "? [a, b]\n: c\n".to_owned()),
    ];
    for (what, file, text) in cases {
        let dir = TestDir::new();
        let path = dir.write(file, text);
        dir.write("good.yaml", svc_doc("shop", "good", "10.96.0.1", 80));
        let mut source = dir.source();
        let report = within_budget(what, || reload(&mut source));
        assert_one_line(&report.problems, &[&format!("{}: ", path.display())]);
        assert_eq!(service_names(&source), ["shop/good"], "{what}");
    }
}

#[test]
fn deeply_nested_lists_within_the_parser_limit_are_expanded() {
    let dir = TestDir::new();
    let mut text = svc_doc("shop", "web", "10.96.0.1", 80);
    // Two levels of nesting per List; serde_yaml and serde_json stop at 128.
    for _ in 0..30 {
        text = format!(
            "{{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [{}]}}",
            serde_json::to_string(&serde_yaml::from_str::<serde_json::Value>(&text).expect("yaml"))
                .expect("json")
        );
    }
    dir.write("nested.json", text);
    let mut source = dir.source();
    within_budget("nested lists", || reload_clean(&mut source));
    assert_eq!(service_names(&source), ["shop/web"]);
}

#[test]
fn huge_documents_load_quickly() {
    let dir = TestDir::new();
    // One Service with a 1 MiB annotation, and a List of 500 Services with their slices.
    dir.write(
        "big-annotation.yaml",
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: big\n  namespace: shop\n  \
             annotations:\n    blob: \"{}\"\nspec: {{clusterIP: 10.96.0.1, ports: [{{port: 80}}]}}\n",
            "x".repeat(1 << 20)
        ),
    );
    let mut items = Vec::new();
    for i in 0..500u32 {
        let [_, _, hi, lo] = i.to_be_bytes();
        items.push(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("s{i}"), "namespace": "many"},
            "spec": {"clusterIP": format!("10.97.{hi}.{lo}"), "ports": [{"name": "http", "port": 80}]},
        }));
        items.push(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("s{i}-1"), "namespace": "many",
                         "labels": {"kubernetes.io/service-name": format!("s{i}")}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [format!("10.244.{hi}.{lo}")]}],
        }));
    }
    dir.write(
        "many.json",
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
    );
    let mut source = dir.source();
    within_budget("huge documents", || reload_clean(&mut source));
    let (services, slices, _) = source.snapshot();
    assert_eq!(services.len(), 501);
    assert_eq!(slices.len(), 500);
}

#[test]
fn unusable_endpoint_addresses_are_warnings_naming_the_slice() {
    let dir = TestDir::new();
    let path = dir.write(
        "slice.yaml",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n\
         - addresses: [fd00::1]\n- addresses: [web-0.example]\n\
         - addresses: [10.244.0.3]\n  conditions: {serving: true}\n",
    );
    let mut source = dir.source();
    let report = reload(&mut source);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
    let file = format!("{}: ", path.display());
    assert_one_line(
        &report.warnings,
        &[&file, "EndpointSlice shop/web-1", "endpoints[0]", "fd00::1"],
    );
    assert_one_line(
        &report.warnings,
        &[
            &file,
            "EndpointSlice shop/web-1",
            "endpoints[1]",
            "\"web-0.example\"",
        ],
    );
    assert_eq!(
        slices(&source)[0].endpoints,
        [endpoint("10.244.0.3", None, None)]
    );
}

#[test]
fn reload_says_whether_anything_changed() {
    let dir = TestDir::new();
    dir.write("a.yaml", KUBECTL_YAML);
    let mut source = dir.source();
    assert!(source.reload().unwrap().changed, "the first read");
    assert!(!source.reload().unwrap().changed, "nothing touched");
    dir.write("b.yaml", KUBECTL_YAML.replace("web", "other"));
    assert!(source.reload().unwrap().changed, "a new file");
    assert!(!source.reload().unwrap().changed);
    dir.write("b.yaml", "# emptied\n");
    assert!(source.reload().unwrap().changed, "new text");
    dir.remove("b.yaml");
    assert!(source.reload().unwrap().changed, "a removed file");
    assert!(!source.reload().unwrap().changed);
}

#[test]
fn the_node_object_of_this_node_gives_its_state_and_internal_ips() {
    let dir = TestDir::new();
    let node = |name: &str, internal: &str| {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: \
             {{topology.kubernetes.io/zone: z1}}\nstatus:\n  addresses:\n  - {{type: Hostname, \
             address: {name}}}\n  - {{type: InternalIP, address: \"{internal}\"}}\n"
        )
    };
    dir.write("n1.yaml", node("n1", "192.168.10.21"));
    dir.write("n2.yaml", node("n2", "192.168.10.22"));
    dir.write("web.yaml", svc_doc("shop", "web", "10.96.0.10", 80));
    // Without a node name the Node objects are read but none is this node's.
    let mut anonymous = dir.source();
    reload_clean(&mut anonymous);
    assert_eq!(anonymous.node(), None);
    assert_eq!(service_names(&anonymous), ["shop/web"]);
    let snap = ManifestSource::new(&dir.path)
        .with_node_name(Some("n1"))
        .read(false)
        .unwrap()
        .unwrap();
    assert!(snap.problems.is_empty(), "{:?}", snap.problems);
    assert_eq!(
        snap.node,
        Some(NodeState {
            zone: Some("z1".into()),
            eligible: true,
            internal_ips: vec![ip("192.168.10.21")],
        })
    );
    let mut other = dir.source().with_node_name(Some("n3"));
    reload_clean(&mut other);
    assert_eq!(other.node(), None);
    // A Node is cluster-scoped: problems name it without a namespace.
    dir.write(
        "bad.yaml",
        "apiVersion: v2\nkind: Node\nmetadata: {name: n9}\n",
    );
    let report = reload(&mut other);
    assert_one_line(&report.problems, &["Node n9:", "apiVersion \"v2\""]);
}
