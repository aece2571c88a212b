//! The observability manifests (`manifests/observability/`): promtool accepts the alert rules
//! and their unit tests pass, the dashboard is well formed and its queries parse, and every
//! metric the dashboard and the rules name is one the agent exports. The exported names come
//! from the agent's own registry ([`Metrics::encode`]) and the scrape-time collectors' lists
//! ([`datapath::METRIC_NAMES`], [`services::METRIC_NAMES`], each held equal to a real scrape by
//! a unit test), so no root and no pinned maps are needed. `lb-agent/tests/it/e2e/metrics.rs`
//! checks the same names against a live agent's scrape.
//!
//! Needs promtool (Debian's `prometheus` package; `cargo xtask setup` installs it): every test
//! that runs it fails, never skips, without it.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, SystemTime},
};

use lb_agent::metrics::{CodeLabels, Metrics, NoLocalEndpoints, datapath, services};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/observability")
}

fn read(name: &str) -> String {
    let path = dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Runs promtool in the manifests' folder with `stdin`; panics when it cannot run.
fn promtool(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("running promtool {args:?}: {e} (it comes with Debian's prometheus package: `cargo xtask setup`)")
        });
    if let Some(input) = stdin {
        // The pipe closes at the end of the block: promtool reads until then.
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn assert_success(args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "promtool {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_the_alert_rules() {
    let args = [
        "check",
        "rules",
        "--lint=all",
        "--lint-fatal",
        "alerts.yaml",
    ];
    assert_success(&args, &promtool(&args, None));
}

#[test]
fn promtool_runs_the_alert_rules_unit_tests() {
    let args = ["test", "rules", "alerts.test.yaml"];
    let out = promtool(&args, None);
    assert_success(&args, &out);
    // Every alert of the rules has a test case that expects it to fire.
    let tests: serde_yaml::Value = serde_yaml::from_str(&read("alerts.test.yaml")).unwrap();
    let tested: BTreeSet<&str> = tests["tests"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().unwrap())
        .filter(|case| !case["exp_alerts"].as_sequence().unwrap().is_empty())
        .map(|case| case["alertname"].as_str().unwrap())
        .collect();
    let rules = alert_rules();
    let alerts: BTreeSet<&str> = rules.iter().filter_map(|r| r.alert.as_deref()).collect();
    assert_eq!(
        tested,
        alerts,
        "alerts without a firing test case: {:?}",
        alerts.difference(&tested).collect::<Vec<_>>()
    );
}

/// One rule of alerts.yaml.
struct Rule {
    alert: Option<String>,
    expr: String,
    labels: serde_yaml::Value,
    annotations: serde_yaml::Value,
}

fn alert_rules() -> Vec<Rule> {
    let rules: serde_yaml::Value = serde_yaml::from_str(&read("alerts.yaml")).unwrap();
    rules["groups"]
        .as_sequence()
        .expect("a `groups:` list")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("a group's `rules:`"))
        .map(|r| Rule {
            alert: r["alert"].as_str().map(str::to_owned),
            expr: r["expr"].as_str().expect("a rule's expr").to_owned(),
            labels: r["labels"].clone(),
            annotations: r["annotations"].clone(),
        })
        .collect()
}

#[test]
fn every_alert_has_a_severity_a_summary_and_a_description() {
    for rule in alert_rules() {
        let Some(alert) = rule.alert else { continue };
        assert!(
            matches!(
                rule.labels["severity"].as_str(),
                Some("critical" | "warning" | "info")
            ),
            "{alert}: severity {:?}",
            rule.labels["severity"]
        );
        for key in ["summary", "description"] {
            let text = rule.annotations[key].as_str().unwrap_or_default();
            assert!(
                text.contains("{{ $labels."),
                "{alert}: the {key} names no label: {text:?}"
            );
        }
    }
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana-dashboard.json")).expect("the dashboard is JSON")
}

/// Every panel, those inside rows too.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The queries of the dashboard's panels.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    panels(dashboard)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect()
}

/// The queries of the dashboard's query variables (Grafana's `label_values(...)`).
fn variable_queries(dashboard: &Value) -> Vec<String> {
    dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "query")
        .filter_map(|v| v["definition"].as_str().map(str::to_owned))
        .collect()
}

const DATASOURCE: &str = "${datasource}";

#[test]
fn the_dashboard_has_a_prometheus_datasource_variable_and_every_panel_queries_it() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 39, "schemaVersion");
    let vars = d["templating"]["list"].as_array().unwrap();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    for name in ["job", "instance", "namespace"] {
        assert_eq!(
            var(name)["datasource"]["uid"],
            DATASOURCE,
            "variable {name}"
        );
    }

    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel id used twice: {title}"
        );
        // Rows only group panels; they query nothing.
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], DATASOURCE, "panel {title}");
        let targets = p["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title} has no targets");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], DATASOURCE, "panel {title}");
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.trim().is_empty(),
                "panel {title}: a target without expr"
            );
        }
    }
}

/// The dashboard's queries parse as PromQL: with Grafana's variables replaced by values, each is
/// a recording rule of a temporary rules file that `promtool check rules` parses.
#[test]
fn the_dashboards_queries_parse() {
    let exprs = dashboard_exprs(&dashboard());
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, expr)| {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$__range", "1h")
                .replace("$topk", "10")
                .replace("$job", ".*")
                .replace("$instance", ".*")
                .replace("$namespace", ".*");
            assert!(!expr.contains('$'), "an unknown variable in {expr}");
            serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": expr })
        })
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let path =
        std::env::temp_dir().join(format!("lb-dashboard-queries-{}.yaml", std::process::id()));
    // JSON is YAML.
    std::fs::write(&path, file.to_string()).unwrap();
    let path_arg = path.to_str().unwrap();
    let args = ["check", "rules", path_arg];
    let out = promtool(&args, None);
    std::fs::remove_file(&path).unwrap();
    assert_success(&args, &out);
}

/// Metric names in a PromQL expression: identifiers starting `kubeproxy_`, `lb_` or `process_`
/// (`(kubeproxy|lb|process)_[a-z0-9_]+`), outside string literals (label values).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if matches!(c, '"' | '\'' | '`') {
            let mut escaped = false;
            for (_, d) in chars.by_ref() {
                if d == c && !escaped {
                    break;
                }
                escaped = d == '\\' && !escaped;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut end = start + c.len_utf8();
            while let Some(&(i, d)) = chars.peek() {
                if !(d.is_ascii_alphanumeric() || d == '_' || d == ':') {
                    break;
                }
                end = i + d.len_utf8();
                chars.next();
            }
            let word = &expr[start..end];
            if ["kubeproxy_", "lb_", "process_"]
                .iter()
                .any(|p| word.starts_with(p))
            {
                names.insert(word.to_owned());
            }
        } else if c.is_ascii_digit() {
            // A number or duration (`5m`, `1e3`): not a name.
            while chars
                .peek()
                .is_some_and(|&(_, d)| d.is_ascii_alphanumeric())
            {
                chars.next();
            }
        }
    }
    names
}

#[test]
fn metric_names_are_found_outside_label_values() {
    assert_eq!(
        metric_names(
            r#"sum by (le) (rate(lb_a_bucket{event=~"lb_not|x", k='lb_no'}[5m])) / lb_b_total"#
        ),
        ["lb_a_bucket", "lb_b_total"].map(str::to_owned).into()
    );
}

/// The agent's registry with a sample in every family, as a running agent's is after its first
/// syncs, flow GC run, watch events and probes (a family without a sample is not written).
fn populated() -> Metrics {
    let m = Metrics::new();
    m.queued();
    m.service_changed();
    m.endpoints_changed(Some(SystemTime::now()));
    m.snapshot_taken();
    m.synced(Duration::from_millis(3), true, true);
    m.synced(Duration::from_millis(2), false, true);
    m.synced(Duration::from_millis(2), false, false);
    m.set_problems(&BTreeMap::new());
    m.set_no_local_endpoints(&NoLocalEndpoints::default());
    m.gc_ran(&lb_agent::gc::Report::default());
    m.watch_relisted("services");
    m.watch_restarted("services");
    for codes in [&m.healthz_total, &m.livez_total] {
        codes
            .get_or_create(&CodeLabels { code: "200".into() })
            .inc();
    }
    m
}

/// The metric families the agent exports, as a scrape names them, and the histograms among them.
fn exported() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = populated().encode();
    let mut families = BTreeSet::new();
    let mut histograms = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            families.insert(name.to_owned());
            if kind == "histogram" {
                histograms.insert(name.to_owned());
            }
        }
    }
    families.extend(
        datapath::METRIC_NAMES
            .iter()
            .chain(&services::METRIC_NAMES)
            .map(|n| (*n).to_owned()),
    );
    (families, histograms)
}

/// A referenced series name as its family: a histogram's `_bucket`, `_sum` and `_count`
/// series are the histogram's.
fn family_of(name: &str, histograms: &BTreeSet<String>) -> String {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| {
            name.strip_suffix(suffix)
                .filter(|base| histograms.contains(*base))
        })
        .unwrap_or(name)
        .to_owned()
}

#[test]
fn every_metric_the_dashboard_and_the_rules_name_is_exported() {
    let (families, histograms) = exported();
    // The registry's own metrics are there without a datapath, and so are the process ones.
    for sure in [
        "kubeproxy_sync_proxy_rules_duration_seconds",
        "lb_problems",
        "process_cpu_seconds_total",
    ] {
        assert!(families.contains(sure), "{sure} missing from {families:?}");
    }
    let d = dashboard();
    let sources = [
        ("the dashboard", dashboard_exprs(&d)),
        ("the dashboard's variables", variable_queries(&d)),
        (
            "alerts.yaml",
            alert_rules().into_iter().map(|r| r.expr).collect(),
        ),
    ];
    let mut used = BTreeSet::new();
    for (source, exprs) in &sources {
        assert!(!exprs.is_empty(), "no queries in {source}");
        for expr in exprs {
            for name in metric_names(expr) {
                let family = family_of(&name, &histograms);
                assert!(
                    families.contains(&family),
                    "{source} names {name}, which the agent does not export: {expr}"
                );
                used.insert(family);
            }
        }
    }
    // What the dashboard and alerts do not show at all, for whoever adds a metric.
    let unused: Vec<_> = families.difference(&used).collect();
    eprintln!("exported and neither on the dashboard nor in an alert: {unused:?}");
}

/// promtool's lint of the agent's exposition (the registry with samples; the scrape-time
/// collectors' families are linted on a live agent's scrape by the e2e metrics test).
#[test]
fn promtool_finds_nothing_to_lint_in_the_registrys_exposition_but_kube_proxys_names() {
    let text = populated().encode();
    let args = ["check", "metrics"];
    let out = promtool(&args, Some(text.as_bytes()));
    let problems = lint_problems(&out);
    assert!(
        problems.is_empty(),
        "promtool check metrics: {problems:?}\n{text}"
    );
}

/// What kube-proxy's own names make promtool say; they stay as kube-proxy names them, so
/// that its dashboards and alerts work unchanged. Keep in step with `KUBE_PROXY_LINT` in
/// `tests/it/e2e/metrics.rs`.
const KUBE_PROXY_LINT: &[&str] = &[
    // A gauge (the count of the last sync) named like a counter by kube-proxy
    // (pkg/proxy/metrics/metrics.go, SyncProxyRulesNoLocalEndpointsTotal).
    "kubeproxy_sync_proxy_rules_no_local_endpoints_total non-counter metrics should not have \"_total\" suffix",
];

/// promtool's complaints about an exposition but the allowed ones; any failure to parse is one.
fn lint_problems(out: &Output) -> Vec<String> {
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
    // promtool exits 3 on lint problems, 1 on an exposition it cannot read.
    let allowed_only = out.status.code() == Some(3) && problems.is_empty();
    if !out.status.success() && !allowed_only {
        problems.push(format!("promtool exited with {}", out.status));
    }
    problems
}
