//! End-to-end, metrics: a running agent answers `/proxyMode` and `/metrics` on
//! `--metrics-bind-address` (kube-proxy's 127.0.0.1:10249 by default, in the agent's network
//! namespace), and a service port's traffic counters move by exactly the connections made.
//! Needs root; fails (never skips) without.

use std::net::SocketAddr;

use lb_tests::{http::http_get, ip};

use super::ManifestCluster;

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
    let (code, response) = http_get(c.net.node(), metrics_addr(), path).unwrap();
    assert_eq!(code, 200, "{response}");
    match response.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_owned(),
        None => panic!("no body in {response:?}"),
    }
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
