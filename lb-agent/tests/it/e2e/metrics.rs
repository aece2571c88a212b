//! End-to-end, metrics: a running agent answers `/proxyMode` and `/metrics` on
//! `--metrics-bind-address` (kube-proxy's 127.0.0.1:10249 by default, in the agent's network
//! namespace), and a service port's traffic counters move by exactly the connections made.
//! A live scrape passes `promtool check metrics` and holds every metric that the dashboard
//! and the alert rules of `manifests/observability/` name. Needs root and promtool; fails
//! (never skips) without.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, SystemTime},
};

use lb_tests::{
    agent::{Agent, HEALTHZ, NODE_NAME},
    apiserver::{self, ApiServer},
    cluster::{Cluster, SERVICE_PORTS, TARGET_PORTS},
    eventually,
    http::http_get,
    ip, sa,
    traffic::tcp_request,
};

use super::{AGENT, ManifestCluster, READY};

/// The agent's metrics address (the default).
fn metrics_addr() -> SocketAddr {
    "127.0.0.1:10249".parse().unwrap()
}

/// A counter summed over the samples of `metric` whose labels hold every pair of `labels`.
fn counter(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{metric} is {other:?}"),
        })
        .sum()
}

/// The body of an HTTP GET to the agent's metrics address, which must answer 200.
fn get(c: &ManifestCluster, path: &str) -> String {
    get_node(&c.net, path)
}

fn scrape(c: &ManifestCluster) -> prometheus_parse::Scrape {
    let body = get(c, "/metrics");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn metrics_answer_and_a_services_new_flows_move_by_the_connections_made() {
    let c = ManifestCluster::new();
    let (v4, v6) = (ip("10.96.0.90"), ip("fd00:96::90"));
    c.write_service("web", &[v4, v6], &["b1", "b2"]);
    let _agent = c.start_agent();
    assert_eq!(get(&c, "/proxyMode").trim(), "ebpf");

    let labels = |family| {
        [
            ("namespace", "default"),
            ("service", "web"),
            ("ip_family", family),
        ]
    };
    let before = scrape(&c);
    let start4 = counter(&before, "lb_service_new_flows_total", &labels("IPv4"));
    let start6 = counter(&before, "lb_service_new_flows_total", &labels("IPv6"));
    c.net.tcp_spread(v4, 7);
    c.net.tcp_spread(v6, 5);
    let after = scrape(&c);
    assert_eq!(
        counter(&after, "lb_service_new_flows_total", &labels("IPv4")) - start4,
        7.0
    );
    assert_eq!(
        counter(&after, "lb_service_new_flows_total", &labels("IPv6")) - start6,
        5.0
    );
    // The default level counts no packets; kube-proxy's sync metrics are there.
    assert_eq!(
        counter(&after, "lb_service_packets_total", &labels("IPv4")),
        0.0
    );
    assert!(
        after.samples.iter().any(|s| s
            .metric
            .starts_with("kubeproxy_sync_proxy_rules_duration_seconds")),
        "no sync duration histogram"
    );
}

/// The metric names in the queries of `manifests/observability/`: the dashboard's panels and
/// variables and the alert rules' expressions. As `lb-agent/tests/observability.rs` finds
/// them, which checks them against the names the agent exports without running it.
fn referenced_metrics() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/observability");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana-dashboard.json")).unwrap();
    let mut exprs = Vec::new();
    fn panel_exprs(panels: &serde_json::Value, out: &mut Vec<String>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.extend(t["expr"].as_str().map(str::to_owned));
            }
            panel_exprs(&p["panels"], out);
        }
    }
    panel_exprs(&dashboard["panels"], &mut exprs);
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        exprs.extend(v["definition"].as_str().map(str::to_owned));
    }
    let rules: serde_yaml::Value = serde_yaml::from_str(&read("alerts.yaml")).unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            exprs.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    let mut names = BTreeSet::new();
    for expr in &exprs {
        // Identifiers outside string literals (label values): `(kubeproxy|lb|process)_...`.
        let mut in_string = None;
        let mut word = String::new();
        for c in expr.chars().chain([' ']) {
            match in_string {
                Some(q) if c == q => in_string = None,
                Some(_) => {}
                None if matches!(c, '"' | '\'' | '`') => in_string = Some(c),
                None if c.is_ascii_alphanumeric() || c == '_' || c == ':' => {
                    word.push(c);
                    continue;
                }
                None => {}
            }
            if ["kubeproxy_", "lb_", "process_"]
                .iter()
                .any(|p| word.starts_with(p))
            {
                names.insert(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    assert!(!names.is_empty(), "no metric names in {exprs:?}");
    names
}

/// A series name as its family: a histogram's `_bucket`, `_sum` and `_count` series are the
/// histogram's.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| {
            name.strip_suffix(suffix)
                .filter(|base| types.get(*base).is_some_and(|k| k == "histogram"))
        })
        .unwrap_or(name)
}

/// The families of a text exposition with their types (`# TYPE` lines), and those with at
/// least one sample.
fn families(body: &str) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let types: BTreeMap<String, String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect();
    let sampled = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|name| family_of(name, &types).to_owned())
        .collect();
    (types, sampled)
}

/// What kube-proxy's own names make `promtool check metrics` say: they stay as kube-proxy
/// names them, so that its dashboards and alerts work unchanged. Keep in step with
/// `KUBE_PROXY_LINT` in `lb-agent/tests/observability.rs`.
const KUBE_PROXY_LINT: &[&str] = &[
    // A gauge (the count of the last sync) named like a counter by kube-proxy
    // (pkg/proxy/metrics/metrics.go, SyncProxyRulesNoLocalEndpointsTotal).
    "kubeproxy_sync_proxy_rules_no_local_endpoints_total non-counter metrics should not have \"_total\" suffix",
];

/// `promtool check metrics` on the exposition in `path` (promtool reads it from stdin): what
/// it reports, less [`KUBE_PROXY_LINT`]; a failure to read the exposition is reported too.
fn promtool_check_metrics(path: &Path) -> Vec<String> {
    let input = std::fs::File::open(path).unwrap();
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::from(input))
        .output()
        .unwrap_or_else(|e| {
            panic!("running promtool: {e} (Debian's prometheus package: `cargo xtask setup`)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut problems: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !KUBE_PROXY_LINT.contains(l))
        .map(str::to_owned)
        .collect();
    // Exit 3: lint problems only; anything else but 0: an exposition promtool cannot read.
    if !(out.status.success() || out.status.code() == Some(3) && problems.is_empty()) {
        problems.push(format!("promtool exited with {}", out.status));
    }
    problems
}

/// An agent on the Kubernetes source, so that every metric can be there: the watches' and
/// network programming's too, which the manifest source has not.
#[test]
fn a_live_scrape_passes_promtool_and_holds_every_metric_of_the_dashboard_and_alerts() {
    let net = Cluster::new().expect("cluster");
    let mut api = ApiServer::new();
    let listener = net
        .node()
        .run(|| TcpListener::bind("127.0.0.1:0"))
        .expect("enter node namespace")
        .expect("bind the API server");
    api.serve(listener).expect("serve");
    api.apply(apiserver::node(NODE_NAME, None)).unwrap();
    let kubeconfig =
        std::env::temp_dir().join(format!("{}.kubeconfig", lb_tests::unique_name("lbm")));
    api.write_kubeconfig(&kubeconfig).unwrap();
    let mut agent = Agent::builder(AGENT, net.node())
        .kubeconfig(&kubeconfig)
        .args(["--gc-interval", "1s"])
        .start()
        .expect("start agent");
    agent
        .wait_healthy(net.node(), READY)
        .expect("agent healthy");
    std::fs::remove_file(&kubeconfig).unwrap();

    // After the first sync: partial syncs, and slices whose trigger time gives the network
    // programming latency.
    let vips = [ip("10.96.0.91"), ip("fd00:96::91")];
    api.apply(apiserver::service("web", &vips, SERVICE_PORTS))
        .unwrap();
    let trigger = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    for vip in vips {
        let v6 = vip.is_ipv6();
        let eps: Vec<apiserver::Ep<'_>> = ["b1", "b2"]
            .iter()
            .map(|b| (net.topo.pod(b).addr(v6), true, NODE_NAME))
            .collect();
        let family = if v6 { "v6" } else { "v4" };
        let mut slice =
            apiserver::endpoint_slice(&format!("web-{family}"), "web", v6, TARGET_PORTS, &eps);
        slice["metadata"]["annotations"][lb_agent::metrics::TRIGGER_TIME_ANNOTATION] =
            trigger.clone().into();
        api.apply(slice).unwrap();
    }
    for vip in vips {
        assert!(
            eventually(Duration::from_secs(20), || {
                tcp_request(net.client(), sa(vip, 80)).is_ok()
            }),
            "{vip} never answered"
        );
        net.tcp_spread(vip, 4);
    }
    // Watch errors: every open watch ends with 410 Gone; the watchers relist.
    api.expire_watches();
    for path in ["/healthz", "/livez"] {
        let (code, response) = http_get(net.node(), HEALTHZ.parse().unwrap(), path).unwrap();
        assert_eq!(code, 200, "{path}: {response}");
    }

    let referenced = referenced_metrics();
    let mut body = String::new();
    let mut missing = BTreeSet::new();
    let complete = eventually(Duration::from_secs(30), || {
        body = get_node(&net, "/metrics");
        let (types, sampled) = families(&body);
        missing = referenced
            .iter()
            .map(|name| family_of(name, &types))
            .filter(|family| !sampled.contains(*family))
            .map(str::to_owned)
            .collect();
        missing.is_empty()
    });
    assert!(
        complete,
        "named by the dashboard or the alerts but without a sample in the scrape: {missing:?}\n{body}"
    );

    let path = std::env::temp_dir().join(format!("{}.prom", lb_tests::unique_name("lbm")));
    std::fs::write(&path, &body).unwrap();
    let problems = promtool_check_metrics(&path);
    std::fs::remove_file(&path).unwrap();
    assert!(
        problems.is_empty(),
        "promtool check metrics: {problems:#?}\n{body}"
    );
    drop(agent);
}

/// The body of an HTTP GET to the agent's metrics address in the node namespace of `net`,
/// which must answer 200.
fn get_node(net: &Cluster, path: &str) -> String {
    let (code, response) = http_get(net.node(), metrics_addr(), path).unwrap();
    assert_eq!(code, 200, "{response}");
    match response.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_owned(),
        None => panic!("no body in {response:?}"),
    }
}
