//! `lb-agent run --config FILE`: kube-proxy's own configuration file, a
//! `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`, what the `kube-proxy`
//! ConfigMap's `config.conf` holds), so a cluster moves to the agent with the ConfigMap it has.
//!
//! The fields that mean something to the agent set what the flag of the same meaning sets
//! ([`FileSettings`]); a flag given on the command line (or its environment variable) wins.
//! Fields that only kube-proxy's own proxiers use (`mode`, `iptables`, `ipvs`, ...) are
//! [`Ignored`], each reported once by name when set to anything but its zero value, which is what
//! `kubeadm` writes for every field it leaves alone. A field kube-proxy does not know either is
//! an error naming it, as kube-proxy's strict decoding is.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// The only `apiVersion` kube-proxy has.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
/// The only `kind`.
pub const KIND: &str = "KubeProxyConfiguration";

/// kube-proxy's health check port, appended to a `healthzBindAddress` without one.
const HEALTHZ_PORT: u16 = 10256;
/// kube-proxy's metrics port, appended to a `metricsBindAddress` without one.
const METRICS_PORT: u16 = 10249;

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not YAML, a field of the wrong type, or a field kube-proxy does not know (serde names
    /// it, and the path to it).
    #[error("{path}: {message}")]
    Decode { path: PathBuf, message: String },
    /// A known field with a value the agent cannot use.
    #[error("{path}: {field}: {reason}")]
    Field {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
}

/// What the file sets that the agent honours; `None`: the file leaves it to the flag's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileSettings {
    /// `hostnameOverride` (`--node-name`).
    pub node_name: Option<String>,
    /// `clientConnection.kubeconfig` (`--kubeconfig`).
    pub kubeconfig: Option<PathBuf>,
    /// `healthzBindAddress` (`--healthz-bind-address`).
    pub healthz_bind_address: Option<SocketAddr>,
    /// `metricsBindAddress` (`--metrics-bind-address`).
    pub metrics_bind_address: Option<SocketAddr>,
    /// `nodePortAddresses`, as the flag spells it: comma-separated (`--nodeport-addresses`).
    pub nodeport_addresses: Option<String>,
    /// `conntrack.tcpEstablishedTimeout` (`--tcp-established-timeout`).
    pub tcp_established_timeout: Option<Duration>,
    /// `conntrack.udpStreamTimeout` (`--udp-timeout`): an answered UDP flow.
    pub udp_timeout: Option<Duration>,
    /// `conntrack.udpTimeout` (`--udp-unreplied-timeout`): a UDP flow without an answer.
    pub udp_unreplied_timeout: Option<Duration>,
}

/// A field set in the file that the agent does not apply, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    /// The field's path, e.g. `iptables.masqueradeAll`.
    pub field: String,
    /// Its value as the file gives it.
    pub value: String,
    pub why: &'static str,
}

impl std::fmt::Display for Ignored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {}: ignored: {}", self.field, self.value, self.why)
    }
}

/// A parsed file: what it sets and what it sets in vain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeProxyConfig {
    pub settings: FileSettings,
    pub ignored: Vec<Ignored>,
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<KubeProxyConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        Refused::Decode(message) => ConfigError::Decode {
            path: path.to_owned(),
            message,
        },
        Refused::Field(field, reason) => ConfigError::Field {
            path: path.to_owned(),
            field,
            reason,
        },
    })
}

/// [`ConfigError`] before the path is known.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Decode(String),
    Field(&'static str, String),
}

/// Parses the text of a `KubeProxyConfiguration`.
pub fn parse(text: &str) -> Result<KubeProxyConfig, Refused> {
    let file: File = serde_yaml::from_str(text).map_err(|e| Refused::Decode(e.to_string()))?;
    match (file.api_version.as_deref(), file.kind.as_deref()) {
        (Some(API_VERSION), Some(KIND)) => {}
        (api_version, kind) => {
            return Err(Refused::Decode(format!(
                "apiVersion {:?} and kind {:?}: expected {API_VERSION} and {KIND}",
                api_version.unwrap_or(""),
                kind.unwrap_or("")
            )));
        }
    }
    let mut ignored = Vec::new();
    let settings = FileSettings {
        node_name: non_empty(file.hostname_override),
        kubeconfig: non_empty(file.client_connection.kubeconfig.clone()).map(PathBuf::from),
        healthz_bind_address: bind_address(
            "healthzBindAddress",
            &file.healthz_bind_address,
            HEALTHZ_PORT,
        )?,
        metrics_bind_address: bind_address(
            "metricsBindAddress",
            &file.metrics_bind_address,
            METRICS_PORT,
        )?,
        nodeport_addresses: nodeport_addresses(file.node_port_addresses)?,
        tcp_established_timeout: lifetime(
            "conntrack.tcpEstablishedTimeout",
            file.conntrack.tcp_established_timeout.as_deref(),
        )?,
        udp_timeout: lifetime(
            "conntrack.udpStreamTimeout",
            file.conntrack.udp_stream_timeout.as_deref(),
        )?,
        udp_unreplied_timeout: lifetime(
            "conntrack.udpTimeout",
            file.conntrack.udp_timeout.as_deref(),
        )?,
    };
    let mut ignore = |field: &str, value: String, why: &'static str| {
        ignored.push(Ignored {
            field: field.to_owned(),
            value,
            why,
        });
    };

    const OTHER_MODE: &str = "the datapath is eBPF whatever kube-proxy's mode";
    if let Some(mode) = non_empty(file.mode) {
        ignore("mode", mode, OTHER_MODE);
    }
    for (section, fields) in [
        ("iptables", file.iptables.set_fields()),
        ("ipvs", file.ipvs.set_fields()),
        ("nftables", file.nftables.set_fields()),
        ("winkernel", file.winkernel.set_fields()),
    ] {
        for (field, value) in fields {
            ignore(&format!("{section}.{field}"), value, OTHER_MODE);
        }
    }
    if !file.feature_gates.is_empty() {
        ignore(
            "featureGates",
            format!("{:?}", file.feature_gates),
            "kube-proxy's feature gates change kube-proxy's proxiers",
        );
    }
    let client = &file.client_connection;
    for (field, set) in [
        (
            "clientConnection.acceptContentTypes",
            !client.accept_content_types.is_empty(),
        ),
        (
            "clientConnection.contentType",
            !client.content_type.is_empty(),
        ),
        ("clientConnection.qps", client.qps.is_some_and(|q| q != 0.0)),
        (
            "clientConnection.burst",
            client.burst.is_some_and(|b| b != 0),
        ),
    ] {
        if set {
            let value = match field {
                "clientConnection.acceptContentTypes" => client.accept_content_types.clone(),
                "clientConnection.contentType" => client.content_type.clone(),
                "clientConnection.qps" => format!("{}", client.qps.unwrap_or_default()),
                _ => format!("{}", client.burst.unwrap_or_default()),
            };
            ignore(
                field,
                value,
                "the agent lists and watches in JSON, without a client-side rate limit",
            );
        }
    }
    if let Some(addr) = non_empty(file.bind_address)
        && !matches!(addr.parse::<IpAddr>(), Ok(ip) if ip.is_unspecified())
    {
        ignore(
            "bindAddress",
            addr,
            "the agent serves both families; node addresses come from the devices and the Node",
        );
    }
    if file.enable_profiling {
        ignore("enableProfiling", "true".into(), "the agent has no pprof");
    }
    if let Some(v) = non_empty(file.show_hidden_metrics_for_version) {
        ignore(
            "showHiddenMetricsForVersion",
            v,
            "the agent hides no metric",
        );
    }
    const LOCAL: &str =
        "the programs know pod traffic by the device it arrives on, not by its source address";
    if let Some(v) = non_empty(file.detect_local_mode) {
        ignore("detectLocalMode", v, LOCAL);
    }
    if let Some(v) = non_empty(file.cluster_cidr) {
        ignore("clusterCIDR", v, LOCAL);
    }
    if let Some(v) = non_empty(file.detect_local.bridge_interface) {
        ignore("detectLocal.bridgeInterface", v, LOCAL);
    }
    if let Some(v) = non_empty(file.detect_local.interface_name_prefix) {
        ignore("detectLocal.interfaceNamePrefix", v, LOCAL);
    }
    if let Some(v) = file.oom_score_adj {
        ignore(
            "oomScoreAdj",
            v.to_string(),
            "an agent killed by the OOM killer leaves the datapath serving; set it in the pod",
        );
    }
    for (field, v) in [
        ("conntrack.maxPerCore", file.conntrack.max_per_core),
        ("conntrack.min", file.conntrack.min),
    ] {
        if let Some(v) = v.filter(|v| *v != 0) {
            ignore(
                field,
                v.to_string(),
                "the kernel's conntrack is not used; size the flow tables with --max-flows",
            );
        }
    }
    if let Some(v) = file.conntrack.tcp_close_wait_timeout
        && !is_zero_duration(&v)
    {
        ignore(
            "conntrack.tcpCloseWaitTimeout",
            v,
            "the flow table has no CLOSE_WAIT state: a half-closed connection lives \
             --tcp-established-timeout",
        );
    }
    if let Some(v) = file.config_sync_period
        && !is_zero_duration(&v)
    {
        ignore(
            "configSyncPeriod",
            v,
            "the agent's watches relist on their own and a full resync checks the maps every 30s",
        );
    }
    if let Some(v) = non_empty(file.port_range) {
        ignore("portRange", v, "unused by kube-proxy too");
    }
    if file.windows_run_as_service {
        ignore("windowsRunAsService", "true".into(), "Windows only");
    }
    let logging = &file.logging;
    if !matches!(logging.format.as_str(), "" | "text") {
        ignore(
            "logging.format",
            logging.format.clone(),
            "the agent logs text; RUST_LOG sets its level",
        );
    }
    if logging.verbosity.unwrap_or(0) != 0 {
        ignore(
            "logging.verbosity",
            logging.verbosity.unwrap_or(0).to_string(),
            "RUST_LOG sets the agent's log level (e.g. RUST_LOG=debug)",
        );
    }
    if !logging.vmodule.is_empty() {
        ignore(
            "logging.vmodule",
            format!("{} entries", logging.vmodule.len()),
            "RUST_LOG sets the log level per module",
        );
    }
    Ok(KubeProxyConfig { settings, ignored })
}

fn non_empty(s: String) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// `IP:PORT`, `[IPv6]:PORT`, or an address alone (kube-proxy appends its default port);
/// empty: the flag's default.
fn bind_address(
    field: &'static str,
    value: &str,
    default_port: u16,
) -> Result<Option<SocketAddr>, Refused> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    let ip = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(value);
    ip.parse::<IpAddr>()
        .map(|ip| Some(SocketAddr::new(ip, default_port)))
        .map_err(|_| {
            Refused::Field(
                field,
                format!("{value:?} is not an address such as 0.0.0.0:{default_port} or [::]:{default_port}"),
            )
        })
}

/// `nodePortAddresses` in the flag's spelling, checked as the flag is.
fn nodeport_addresses(list: Option<Vec<String>>) -> Result<Option<String>, Refused> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let joined = list.join(",");
    crate::model::NodePortAddresses::parse(&joined)
        .map_err(|e| Refused::Field("nodePortAddresses", e))?;
    Ok(Some(joined))
}

/// A conntrack timeout: unset or zero (kube-proxy's "leave it") is the flag's default; else
/// the flag's bounds apply.
fn lifetime(field: &'static str, value: Option<&str>) -> Result<Option<Duration>, Refused> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let d = go_duration(value).map_err(|e| Refused::Field(field, e))?;
    if d.is_zero() {
        return Ok(None);
    }
    crate::kernel::settings::check_timeout(d)
        .map(Some)
        .map_err(|e| Refused::Field(field, format!("{value}: {e}")))
}

fn is_zero_duration(s: &str) -> bool {
    go_duration(s).is_ok_and(|d| d.is_zero())
}

/// A Go `time.Duration` as `metav1.Duration` writes and reads it: `24h0m0s`, `1m30s`, `1.5s`,
/// `300ms`, `0`; units `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`. Negative durations are refused.
pub fn go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration such as 24h0m0s, 90s or 300ms");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(number_end);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * seconds;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// The file as kube-proxy's v1alpha1 types define it (Kubernetes 1.29 to 1.35): every field,
/// so that an unknown one is an error.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct File {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(deserialize_with = "null_default")]
    feature_gates: BTreeMap<String, bool>,
    #[serde(deserialize_with = "null_default")]
    client_connection: ClientConnection,
    #[serde(deserialize_with = "null_default")]
    logging: Logging,
    #[serde(deserialize_with = "null_default")]
    hostname_override: String,
    #[serde(deserialize_with = "null_default")]
    bind_address: String,
    #[serde(deserialize_with = "null_default")]
    healthz_bind_address: String,
    #[serde(deserialize_with = "null_default")]
    metrics_bind_address: String,
    #[serde(deserialize_with = "null_default")]
    bind_address_hard_fail: bool,
    #[serde(deserialize_with = "null_default")]
    enable_profiling: bool,
    #[serde(deserialize_with = "null_default")]
    show_hidden_metrics_for_version: String,
    #[serde(deserialize_with = "null_default")]
    mode: String,
    #[serde(deserialize_with = "null_default")]
    iptables: Iptables,
    #[serde(deserialize_with = "null_default")]
    ipvs: Ipvs,
    #[serde(deserialize_with = "null_default")]
    nftables: Nftables,
    #[serde(deserialize_with = "null_default")]
    winkernel: Winkernel,
    #[serde(deserialize_with = "null_default")]
    detect_local_mode: String,
    #[serde(deserialize_with = "null_default")]
    detect_local: DetectLocal,
    #[serde(rename = "clusterCIDR", deserialize_with = "null_default")]
    cluster_cidr: String,
    node_port_addresses: Option<Vec<String>>,
    oom_score_adj: Option<i32>,
    #[serde(deserialize_with = "null_default")]
    conntrack: Conntrack,
    config_sync_period: Option<String>,
    #[serde(deserialize_with = "null_default")]
    port_range: String,
    #[serde(deserialize_with = "null_default")]
    windows_run_as_service: bool,
}

/// `null` as the type's default, as Go's decoder reads it into a non-pointer field.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct ClientConnection {
    #[serde(deserialize_with = "null_default")]
    kubeconfig: String,
    #[serde(deserialize_with = "null_default")]
    accept_content_types: String,
    #[serde(deserialize_with = "null_default")]
    content_type: String,
    qps: Option<f64>,
    burst: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct Logging {
    #[serde(deserialize_with = "null_default")]
    format: String,
    /// A duration or nanoseconds.
    flush_frequency: Option<serde_yaml::Value>,
    verbosity: Option<u32>,
    #[serde(deserialize_with = "null_default")]
    vmodule: Vec<VModule>,
    #[serde(deserialize_with = "null_default")]
    options: LoggingOptions,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct VModule {
    file_pattern: String,
    verbosity: u32,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct LoggingOptions {
    #[serde(deserialize_with = "null_default")]
    text: FormatOptions,
    #[serde(deserialize_with = "null_default")]
    json: FormatOptions,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct FormatOptions {
    split_stream: Option<bool>,
    /// A quantity: `"0"`, `4Ki`, or a number.
    info_buffer_size: Option<serde_yaml::Value>,
}

/// The fields of a proxier's section set to something other than their zero value, each with
/// its value.
trait SetFields {
    fn set_fields(&self) -> Vec<(&'static str, String)>;
}

fn push_set(out: &mut Vec<(&'static str, String)>, field: &'static str, value: Option<String>) {
    if let Some(v) = value {
        out.push((field, v));
    }
}

fn duration_set(v: &Option<String>) -> Option<String> {
    v.clone()
        .filter(|v| !v.trim().is_empty() && !is_zero_duration(v))
}

fn bool_set(v: bool) -> Option<String> {
    v.then(|| "true".to_owned())
}

fn string_set(v: &str) -> Option<String> {
    (!v.trim().is_empty()).then(|| v.to_owned())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct Iptables {
    masquerade_bit: Option<i32>,
    #[serde(deserialize_with = "null_default")]
    masquerade_all: bool,
    localhost_node_ports: Option<bool>,
    #[serde(rename = "snatNodeInternalIP")]
    snat_node_internal_ip: Option<bool>,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
}

impl SetFields for Iptables {
    fn set_fields(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        push_set(
            &mut out,
            "masqueradeBit",
            self.masquerade_bit.map(|v| v.to_string()),
        );
        push_set(&mut out, "masqueradeAll", bool_set(self.masquerade_all));
        push_set(
            &mut out,
            "localhostNodePorts",
            self.localhost_node_ports.map(|v| v.to_string()),
        );
        push_set(
            &mut out,
            "snatNodeInternalIP",
            self.snat_node_internal_ip.map(|v| v.to_string()),
        );
        push_set(&mut out, "syncPeriod", duration_set(&self.sync_period));
        push_set(
            &mut out,
            "minSyncPeriod",
            duration_set(&self.min_sync_period),
        );
        out
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct Ipvs {
    sync_period: Option<String>,
    min_sync_period: Option<String>,
    #[serde(deserialize_with = "null_default")]
    scheduler: String,
    #[serde(rename = "excludeCIDRs", deserialize_with = "null_default")]
    exclude_cidrs: Vec<String>,
    #[serde(rename = "strictARP", deserialize_with = "null_default")]
    strict_arp: bool,
    tcp_timeout: Option<String>,
    tcp_fin_timeout: Option<String>,
    udp_timeout: Option<String>,
}

impl SetFields for Ipvs {
    fn set_fields(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        push_set(&mut out, "syncPeriod", duration_set(&self.sync_period));
        push_set(
            &mut out,
            "minSyncPeriod",
            duration_set(&self.min_sync_period),
        );
        push_set(&mut out, "scheduler", string_set(&self.scheduler));
        push_set(
            &mut out,
            "excludeCIDRs",
            (!self.exclude_cidrs.is_empty()).then(|| self.exclude_cidrs.join(",")),
        );
        push_set(&mut out, "strictARP", bool_set(self.strict_arp));
        push_set(&mut out, "tcpTimeout", duration_set(&self.tcp_timeout));
        push_set(
            &mut out,
            "tcpFinTimeout",
            duration_set(&self.tcp_fin_timeout),
        );
        push_set(&mut out, "udpTimeout", duration_set(&self.udp_timeout));
        out
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct Nftables {
    masquerade_bit: Option<i32>,
    #[serde(deserialize_with = "null_default")]
    masquerade_all: bool,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
}

impl SetFields for Nftables {
    fn set_fields(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        push_set(
            &mut out,
            "masqueradeBit",
            self.masquerade_bit.map(|v| v.to_string()),
        );
        push_set(&mut out, "masqueradeAll", bool_set(self.masquerade_all));
        push_set(&mut out, "syncPeriod", duration_set(&self.sync_period));
        push_set(
            &mut out,
            "minSyncPeriod",
            duration_set(&self.min_sync_period),
        );
        out
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct Winkernel {
    #[serde(deserialize_with = "null_default")]
    network_name: String,
    #[serde(deserialize_with = "null_default")]
    source_vip: String,
    #[serde(rename = "enableDSR", deserialize_with = "null_default")]
    enable_dsr: bool,
    #[serde(deserialize_with = "null_default")]
    root_hns_endpoint_name: String,
    #[serde(deserialize_with = "null_default")]
    forward_health_check_vip: bool,
}

impl SetFields for Winkernel {
    fn set_fields(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        push_set(&mut out, "networkName", string_set(&self.network_name));
        push_set(&mut out, "sourceVip", string_set(&self.source_vip));
        push_set(&mut out, "enableDSR", bool_set(self.enable_dsr));
        push_set(
            &mut out,
            "rootHnsEndpointName",
            string_set(&self.root_hns_endpoint_name),
        );
        push_set(
            &mut out,
            "forwardHealthCheckVip",
            bool_set(self.forward_health_check_vip),
        );
        out
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct DetectLocal {
    #[serde(deserialize_with = "null_default")]
    bridge_interface: String,
    #[serde(deserialize_with = "null_default")]
    interface_name_prefix: String,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct Conntrack {
    max_per_core: Option<i32>,
    min: Option<i32>,
    tcp_established_timeout: Option<String>,
    tcp_close_wait_timeout: Option<String>,
    #[serde(deserialize_with = "null_default")]
    tcp_be_liberal: bool,
    udp_timeout: Option<String>,
    udp_stream_timeout: Option<String>,
}

#[cfg(test)]
mod tests;
