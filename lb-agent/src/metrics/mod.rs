//! Prometheus metrics on `--metrics-bind-address` (kube-proxy's `127.0.0.1:10249`): `/metrics`
//! in the Prometheus text format (0.0.4) and `/proxyMode`, as kube-proxy serves them.
//!
//! Two kinds of metrics, collected where the work already happens:
//! - kube-proxy's own (`kubeproxy_*`, `pkg/proxy/metrics/metrics.go`), with its names, types,
//!   buckets and labels, updated by the sync loop, the watchers and the health server as they
//!   run ([`Metrics`]);
//! - this datapath's (`lb_*`): the kernel's counters and the maps' entries and capacity, read
//!   from the pins at scrape time ([`datapath::DatapathCollector`]), except the flow and SNAT
//!   maps' entries, which the flow GC counts on its walk anyway; GC runs, problems by kind,
//!   watch restarts and relists, updated where they happen.
//!
//! Process metrics (`process_*`, as client_golang's process collector) come from `/proc/self`
//! at scrape time ([`process::ProcessCollector`]).
//!
//! The metrics live in one process-wide [`Metrics`] ([`global`]), as kube-proxy's live in its
//! legacy registry: the sources, the sync loop and the health server reach it without a handle
//! threaded through every constructor. Tests that count exact amounts build their own.

pub mod datapath;
pub mod process;
pub mod services;

use std::{
    path::PathBuf,
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets, linear_buckets},
    },
    registry::Registry,
};

use crate::model::IpFamily;

/// What `/proxyMode` answers: kube-proxy answers its mode's name (`iptables`, `ipvs`,
/// `nftables`); this proxy has one mode, its eBPF datapath.
pub const PROXY_MODE: &str = "ebpf";

/// Default of `--metrics-bind-address`, kube-proxy's.
pub const DEFAULT_BIND_ADDRESS: &str = "127.0.0.1:10249";

/// The `ip_family` label, as kube-proxy writes it (`IPv4`, `IPv6`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabels {
    pub ip_family: String,
}

impl FamilyLabels {
    pub fn of(family: IpFamily) -> Self {
        Self {
            ip_family: family_name(family).to_owned(),
        }
    }
}

/// kube-proxy's name of a family.
pub fn family_name(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

/// `kubeproxy_sync_proxy_rules_no_local_endpoints_total`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// `internal` or `external`, as kube-proxy.
    pub traffic_policy: String,
    pub ip_family: String,
}

/// An HTTP status code label (`/healthz`, `/livez`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: String,
}

/// A BPF map label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
}

/// A kind of problem (bad object skipped) label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// A watched resource label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

/// Counters by HTTP status code.
pub type CodeFamily = Family<CodeLabels, Counter>;
type Histograms = Family<FamilyLabels, Histogram, fn() -> Histogram>;
type Timestamps = Family<FamilyLabels, Gauge<f64, AtomicU64>>;

/// kube-proxy's sync buckets: `ExponentialBuckets(0.001, 2, 15)`.
fn sync_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// kube-proxy's network programming buckets: 0.25 s, 0.5 s, 1..59 s, 60..115 s by 5, 2..5 min
/// by 30 s (`merge` there also puts a 0 bucket first).
fn network_programming_histogram() -> Histogram {
    Histogram::new(
        std::iter::once(0.0)
            .chain(linear_buckets(0.25, 0.25, 2))
            .chain(linear_buckets(1.0, 1.0, 59))
            .chain(linear_buckets(60.0, 5.0, 12))
            .chain(linear_buckets(120.0, 30.0, 7)),
    )
}

/// The flow GC's latest findings, for the map pressure of the maps it walks.
#[derive(Debug, Default)]
pub struct GcEntries {
    /// Map name -> entries left after the last run.
    pub live: std::collections::BTreeMap<&'static str, u64>,
}

/// Every metric the agent updates as it works; the scrape-time collectors are registered with
/// it ([`Metrics::with_datapath`]).
pub struct Metrics {
    registry: Registry,
    /// `kubeproxy_sync_proxy_rules_duration_seconds`: every sync that rebuilt the plan.
    pub sync_duration: Histograms,
    /// `kubeproxy_sync_full_proxy_rules_duration_seconds`: syncs that also repaired drift
    /// (the first, then every [`crate::agent::sync::REPAIR_INTERVAL`]).
    pub sync_full_duration: Histograms,
    /// `kubeproxy_sync_partial_proxy_rules_duration_seconds`: the others (diffs only).
    pub sync_partial_duration: Histograms,
    pub sync_last_timestamp: Timestamps,
    pub sync_last_queued_timestamp: Timestamps,
    pub network_programming: Histograms,
    pub endpoint_changes_pending: Gauge,
    pub endpoint_changes_total: Counter,
    pub service_changes_pending: Gauge,
    pub service_changes_total: Counter,
    pub no_local_endpoints: Family<PolicyLabels, Gauge>,
    pub healthz_total: Family<CodeLabels, Counter>,
    pub livez_total: Family<CodeLabels, Counter>,
    /// `lb_gc_runs_total`.
    pub gc_runs: Counter,
    /// `lb_gc_collected_entries_total{map}`.
    pub gc_collected: Family<MapLabels, Counter>,
    /// `lb_problems{kind}`: objects or ports skipped in the last sync.
    pub problems: Family<KindLabels, Gauge>,
    /// `lb_watch_restarts_total{resource}`: watch errors after which the watcher retries.
    pub watch_restarts: Family<ResourceLabels, Counter>,
    /// `lb_watch_relists_total{resource}`: complete lists (the first and every relist).
    pub watch_relists: Family<ResourceLabels, Counter>,
    /// `lb_sync_errors_total`: syncs that left something unprogrammed (retried).
    pub sync_errors: Counter,
    /// Entries the flow GC left per map.
    pub gc_entries: Arc<Mutex<GcEntries>>,
    /// `last-change-trigger-time`s of EndpointSlice changes not programmed yet.
    triggers: Mutex<Vec<SystemTime>>,
    /// Changes counted in the pending gauges when the running sync read its snapshot.
    pending_at_snapshot: [AtomicU64; 2],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric registered, none of the scrape-time collectors.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let sync_duration = Histograms::new_with_constructor(sync_histogram as fn() -> Histogram);
        let sync_full_duration =
            Histograms::new_with_constructor(sync_histogram as fn() -> Histogram);
        let sync_partial_duration =
            Histograms::new_with_constructor(sync_histogram as fn() -> Histogram);
        let network_programming =
            Histograms::new_with_constructor(network_programming_histogram as fn() -> Histogram);
        let m = Self {
            sync_duration,
            sync_full_duration,
            sync_partial_duration,
            sync_last_timestamp: Timestamps::default(),
            sync_last_queued_timestamp: Timestamps::default(),
            network_programming,
            endpoint_changes_pending: Gauge::default(),
            endpoint_changes_total: Counter::default(),
            service_changes_pending: Gauge::default(),
            service_changes_total: Counter::default(),
            no_local_endpoints: Family::default(),
            healthz_total: Family::default(),
            livez_total: Family::default(),
            gc_runs: Counter::default(),
            gc_collected: Family::default(),
            problems: Family::default(),
            watch_restarts: Family::default(),
            watch_relists: Family::default(),
            sync_errors: Counter::default(),
            gc_entries: Arc::default(),
            triggers: Mutex::new(Vec::new()),
            pending_at_snapshot: [AtomicU64::new(0), AtomicU64::new(0)],
            registry: Registry::default(),
        };
        {
            let kp = registry.sub_registry_with_prefix("kubeproxy");
            kp.register(
                "sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                m.sync_duration.clone(),
            );
            kp.register(
                "sync_full_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for full resyncs",
                m.sync_full_duration.clone(),
            );
            kp.register(
                "sync_partial_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for partial resyncs",
                m.sync_partial_duration.clone(),
            );
            kp.register(
                "sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
                m.sync_last_timestamp.clone(),
            );
            kp.register(
                "sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of proxy rules was queued",
                m.sync_last_queued_timestamp.clone(),
            );
            kp.register(
                "network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                m.network_programming.clone(),
            );
            kp.register(
                "sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
                m.endpoint_changes_pending.clone(),
            );
            // prometheus-client appends `_total` to counters.
            kp.register(
                "sync_proxy_rules_endpoint_changes",
                "Cumulative proxy rules Endpoint changes",
                m.endpoint_changes_total.clone(),
            );
            kp.register(
                "sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
                m.service_changes_pending.clone(),
            );
            kp.register(
                "sync_proxy_rules_service_changes",
                "Cumulative proxy rules Service changes",
                m.service_changes_total.clone(),
            );
            kp.register(
                "sync_proxy_rules_no_local_endpoints_total",
                "Number of services with a Local traffic policy and no endpoints",
                m.no_local_endpoints.clone(),
            );
            kp.register(
                "proxy_healthz",
                "Cumulative proxy healthz HTTP status",
                m.healthz_total.clone(),
            );
            kp.register(
                "proxy_livez",
                "Cumulative proxy livez HTTP status",
                m.livez_total.clone(),
            );
        }
        {
            let lb = registry.sub_registry_with_prefix("lb");
            lb.register(
                "gc_runs",
                "Runs of the flow garbage collector",
                m.gc_runs.clone(),
            );
            lb.register(
                "gc_collected_entries",
                "Dead entries the flow garbage collector deleted, per map",
                m.gc_collected.clone(),
            );
            lb.register(
                "problems",
                "Objects or ports the last sync skipped as unusable, by kind",
                m.problems.clone(),
            );
            lb.register(
                "watch_restarts",
                "Watch errors of the Kubernetes source after which the watch is retried",
                m.watch_restarts.clone(),
            );
            lb.register(
                "watch_relists",
                "Complete lists of a watched resource (the first and every relist)",
                m.watch_relists.clone(),
            );
            lb.register(
                "sync_errors",
                "Syncs that left something unprogrammed (retried by the next sync)",
                m.sync_errors.clone(),
            );
        }
        registry.register_collector(Box::new(process::ProcessCollector));
        Self { registry, ..m }
    }

    /// Adds the datapath's scrape-time metrics, read from the maps pinned under `pin_dir`.
    pub fn with_datapath(mut self, pin_dir: PathBuf) -> Self {
        let collector =
            datapath::DatapathCollector::new(pin_dir.clone(), Arc::clone(&self.gc_entries));
        self.registry.register_collector(Box::new(collector));
        self.registry
            .register_collector(Box::new(services::ServiceCollector { pin_dir }));
        self
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; a collector's error is its own `fmt::Error`.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!("encoding the metrics: {e}");
        }
        out
    }

    /// A sync was queued (a change was seen), as kube-proxy's `Sync()` records it.
    pub fn queued(&self) {
        let now = unix_seconds(SystemTime::now());
        for family in [IpFamily::V4, IpFamily::V6] {
            self.sync_last_queued_timestamp
                .get_or_create(&FamilyLabels::of(family))
                .set(now);
        }
    }

    /// The watcher saw a Service change.
    pub fn service_changed(&self) {
        self.service_changes_total.inc();
        self.service_changes_pending.inc();
    }

    /// The watcher saw an EndpointSlice change, with its `last-change-trigger-time` if any.
    pub fn endpoints_changed(&self, trigger: Option<SystemTime>) {
        self.endpoint_changes_total.inc();
        self.endpoint_changes_pending.inc();
        if let Some(t) = trigger {
            self.triggers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(t);
        }
    }

    /// A sync reads its snapshot now: the changes seen so far are the ones it programs.
    pub fn snapshot_taken(&self) {
        self.pending_at_snapshot[0].store(
            self.service_changes_pending.get().max(0) as u64,
            Ordering::Relaxed,
        );
        self.pending_at_snapshot[1].store(
            self.endpoint_changes_pending.get().max(0) as u64,
            Ordering::Relaxed,
        );
    }

    /// A sync that rebuilt the plan ended after `took`; `full` when it also repaired drift,
    /// `ok` when it programmed everything.
    pub fn synced(&self, took: Duration, full: bool, ok: bool) {
        let secs = took.as_secs_f64();
        let now = SystemTime::now();
        for family in [IpFamily::V4, IpFamily::V6] {
            let labels = FamilyLabels::of(family);
            self.sync_duration.get_or_create(&labels).observe(secs);
            if full {
                self.sync_full_duration.get_or_create(&labels).observe(secs);
            } else {
                self.sync_partial_duration
                    .get_or_create(&labels)
                    .observe(secs);
            }
        }
        if !ok {
            self.sync_errors.inc();
            return;
        }
        self.programmed(now);
    }

    /// Everything seen before the last snapshot is in the maps (also after a sync the source
    /// said had nothing new to do).
    pub fn programmed(&self, now: SystemTime) {
        for family in [IpFamily::V4, IpFamily::V6] {
            self.sync_last_timestamp
                .get_or_create(&FamilyLabels::of(family))
                .set(unix_seconds(now));
        }
        let services = self.pending_at_snapshot[0].swap(0, Ordering::Relaxed);
        let endpoints = self.pending_at_snapshot[1].swap(0, Ordering::Relaxed);
        self.service_changes_pending.dec_by(services as i64);
        self.endpoint_changes_pending.dec_by(endpoints as i64);
        let triggers = std::mem::take(
            &mut *self
                .triggers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for t in triggers {
            // A trigger time ahead of this clock (skew with the controller's) counts as 0.
            let latency = now.duration_since(t).unwrap_or_default().as_secs_f64();
            for family in [IpFamily::V4, IpFamily::V6] {
                self.network_programming
                    .get_or_create(&FamilyLabels::of(family))
                    .observe(latency);
            }
        }
    }

    /// Sets the problems of the last sync by kind; kinds that had problems before and have
    /// none now go to 0.
    pub fn set_problems(&self, by_kind: &std::collections::BTreeMap<&'static str, i64>) {
        for kind in ProblemKind::ALL {
            let n = by_kind.get(kind.name()).copied().unwrap_or(0);
            self.problems
                .get_or_create(&KindLabels {
                    kind: kind.name().to_owned(),
                })
                .set(n);
        }
    }

    /// Sets `kubeproxy_sync_proxy_rules_no_local_endpoints_total`.
    pub fn set_no_local_endpoints(&self, counts: &NoLocalEndpoints) {
        for family in [IpFamily::V4, IpFamily::V6] {
            for (policy, n) in [
                ("internal", counts.internal[family as usize]),
                ("external", counts.external[family as usize]),
            ] {
                self.no_local_endpoints
                    .get_or_create(&PolicyLabels {
                        traffic_policy: policy.to_owned(),
                        ip_family: family_name(family).to_owned(),
                    })
                    .set(n);
            }
        }
    }

    /// A flow GC run ended with `report`.
    pub fn gc_ran(&self, report: &crate::gc::Report) {
        self.gc_runs.inc();
        let mut entries = self
            .gc_entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (map, counts) in report.maps() {
            self.gc_collected
                .get_or_create(&MapLabels {
                    map: map.to_owned(),
                })
                .inc_by(counts.collected as u64);
            entries
                .live
                .insert(map, counts.scanned.saturating_sub(counts.collected) as u64);
        }
    }

    /// A watch of `resource` failed; the watcher retries with backoff.
    pub fn watch_restarted(&self, resource: &str) {
        self.watch_restarts
            .get_or_create(&ResourceLabels {
                resource: resource.to_owned(),
            })
            .inc();
    }

    /// A watch of `resource` starts a complete list.
    pub fn watch_relisted(&self, resource: &str) {
        self.watch_relists
            .get_or_create(&ResourceLabels {
                resource: resource.to_owned(),
            })
            .inc();
    }
}

/// Service ports with a Local traffic policy and no local endpoint, per family (indexed by
/// `IpFamily as usize`), as kube-proxy counts them in a sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoLocalEndpoints {
    /// `internalTrafficPolicy: Local`.
    pub internal: [i64; 2],
    /// `externalTrafficPolicy: Local` (on ports reachable from outside).
    pub external: [i64; 2],
}

/// What a problem (an object or port the sync skipped) is about, for `lb_problems{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProblemKind {
    /// A Service object that cannot be used.
    Service,
    /// An EndpointSlice object that cannot be used.
    EndpointSlice,
    /// A manifest file that cannot be read or parsed (standalone mode).
    File,
    /// A service port of a protocol the datapath does not translate (SCTP).
    SctpPort,
    /// A frontend that another service port claimed first.
    FrontendTaken,
}

impl ProblemKind {
    pub const ALL: [Self; 5] = [
        Self::Service,
        Self::EndpointSlice,
        Self::File,
        Self::SctpPort,
        Self::FrontendTaken,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::EndpointSlice => "endpointslice",
            Self::File => "file",
            Self::SctpPort => "sctp_port",
            Self::FrontendTaken => "frontend_taken",
        }
    }

    /// The kind of a source's problem line: the sources start it with the object's kind
    /// (`Service ns/name: ...`), manifest problems with the file first (`path: Service
    /// ns/name: ...`); the rest are about files.
    pub fn of_source_problem(line: &str) -> Self {
        let object = |kind: &str| {
            line.starts_with(&format!("{kind} ")) || line.contains(&format!(": {kind} "))
        };
        if object("EndpointSlice") {
            Self::EndpointSlice
        } else if object("Service") {
            Self::Service
        } else {
            Self::File
        }
    }

    /// The kind of a plan's problem.
    pub fn of_plan_problem(problem: &crate::plan::Problem) -> Self {
        match problem {
            crate::plan::Problem::SctpPort { .. } => Self::SctpPort,
            crate::plan::Problem::FrontendTaken { .. } => Self::FrontendTaken,
        }
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Parses `endpoints.kubernetes.io/last-change-trigger-time` (RFC 3339, as the EndpointSlice
/// controller writes it); `None` when absent or unreadable.
pub fn parse_trigger_time(value: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(value.trim_end_matches('Z'))
        .ok()
        .or_else(|| humantime::parse_rfc3339(value).ok())
}

/// The annotation the EndpointSlice controller sets to the time of the change that triggered
/// the slice's last update.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);
static GLOBAL_WITH_DATAPATH: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();

/// The process's metrics: the agent's ([`install`]) once it runs, else a set without the
/// datapath collector (tools and tests).
pub fn global() -> &'static Metrics {
    GLOBAL_WITH_DATAPATH.get().unwrap_or(&GLOBAL)
}

/// Makes the process's metrics the agent's, with the datapath collector on `pin_dir`; call once
/// before anything records. Returns the metrics in force.
pub fn install(pin_dir: PathBuf) -> &'static Metrics {
    GLOBAL_WITH_DATAPATH.get_or_init(|| Metrics::new().with_datapath(pin_dir))
}

async fn metrics_handler(State(m): State<&'static Metrics>) -> impl IntoResponse {
    // The map walks of the datapath collector are system calls: off the async workers.
    let body = tokio::task::spawn_blocking(move || m.encode())
        .await
        .unwrap_or_default();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        body,
    )
}

async fn proxy_mode_handler() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        PROXY_MODE,
    )
}

/// `/metrics` and `/proxyMode` of `metrics`.
pub fn router(metrics: &'static Metrics) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/proxyMode", get(proxy_mode_handler))
        .with_state(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_names_types_and_labels_parse_from_the_text_format() {
        let m = Metrics::new();
        m.service_changed();
        m.endpoints_changed(Some(SystemTime::now() - Duration::from_secs(2)));
        m.snapshot_taken();
        m.synced(Duration::from_millis(3), true, true);
        m.healthz_total
            .get_or_create(&CodeLabels { code: "200".into() })
            .inc();
        let text = m.encode();
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("parses");
        let value = |name: &str, label: Option<(&str, &str)>| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
                .map(|s| s.value.clone())
        };
        assert!(matches!(
            value("kubeproxy_sync_proxy_rules_service_changes_total", None),
            Some(prometheus_parse::Value::Counter(1.0))
        ));
        assert!(matches!(
            value("kubeproxy_sync_proxy_rules_endpoint_changes_pending", None),
            Some(prometheus_parse::Value::Gauge(0.0))
        ));
        assert!(matches!(
            value("kubeproxy_proxy_healthz_total", Some(("code", "200"))),
            Some(prometheus_parse::Value::Counter(1.0))
        ));
        match value(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            Some(("ip_family", "IPv6")),
        ) {
            Some(prometheus_parse::Value::Histogram(buckets)) => {
                assert_eq!(buckets.len(), 16, "15 buckets and +Inf");
            }
            other => panic!("{other:?}\n{text}"),
        }
        match value(
            "kubeproxy_network_programming_duration_seconds",
            Some(("ip_family", "IPv4")),
        ) {
            Some(prometheus_parse::Value::Histogram(buckets)) => {
                // 0, 0.25, 0.5, 1..59, 60..115, 120..300 and +Inf.
                assert_eq!(buckets.len(), 1 + 2 + 59 + 12 + 7 + 1);
                let le3 = buckets.iter().find(|b| b.less_than == 3.0).unwrap();
                assert_eq!(le3.count, 1.0, "the 2 s latency is counted");
            }
            other => panic!("{other:?}\n{text}"),
        }
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
        assert!(text.contains("# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge"));
    }

    #[test]
    fn problem_kinds_come_from_the_sources_lines() {
        assert_eq!(
            ProblemKind::of_source_problem("Service default/web: spec.ports[0]: bad"),
            ProblemKind::Service
        );
        assert_eq!(
            ProblemKind::of_source_problem("/m/a.yaml: EndpointSlice default/web-1: bad"),
            ProblemKind::EndpointSlice
        );
        assert_eq!(
            ProblemKind::of_source_problem("/m/a.yaml: not YAML"),
            ProblemKind::File
        );
    }

    #[test]
    fn trigger_times_parse_as_the_controller_writes_them() {
        let t = parse_trigger_time("2024-05-01T10:00:00Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_714_557_600
        );
        assert!(parse_trigger_time("yesterday").is_none());
    }
}
