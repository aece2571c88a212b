use super::*;

fn testdata(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/config")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `config.conf` key of the kubeadm ConfigMap dump, as the pod sees the mounted file.
fn kubeadm_config_conf() -> String {
    let cm: serde_yaml::Value = serde_yaml::from_str(&testdata("kubeadm-configmap.yaml")).unwrap();
    cm["data"]["config.conf"].as_str().unwrap().to_owned()
}

fn fields(ignored: &[Ignored]) -> Vec<&str> {
    ignored.iter().map(|i| i.field.as_str()).collect()
}

#[test]
fn kubeadms_configmap_sets_the_kubeconfig_and_reports_only_the_cluster_cidr() {
    let parsed = parse(&kubeadm_config_conf()).unwrap();
    assert_eq!(
        parsed.settings,
        FileSettings {
            kubeconfig: Some("/var/lib/kube-proxy/kubeconfig.conf".into()),
            ..FileSettings::default()
        },
        "zero values leave every flag at its default"
    );
    assert_eq!(fields(&parsed.ignored), ["clusterCIDR"]);
    assert_eq!(
        parsed.ignored[0].to_string(),
        "clusterCIDR = 10.244.0.0/16: ignored: the programs know pod traffic by the device it \
         arrives on, not by its source address"
    );
}

#[test]
fn a_tuned_configuration_sets_the_flags_and_names_what_does_not_apply() {
    let parsed = parse(&testdata("tuned.yaml")).unwrap();
    assert_eq!(
        parsed.settings,
        FileSettings {
            node_name: Some("worker-7".into()),
            kubeconfig: Some("/var/lib/kube-proxy/kubeconfig.conf".into()),
            healthz_bind_address: Some("0.0.0.0:20256".parse().unwrap()),
            metrics_bind_address: Some("[::]:10249".parse().unwrap()),
            nodeport_addresses: Some("primary,192.168.100.0/24".into()),
            tcp_established_timeout: Some(Duration::from_secs(7200)),
            udp_timeout: Some(Duration::from_secs(300)),
            udp_unreplied_timeout: Some(Duration::from_secs(45)),
        }
    );
    assert_eq!(
        fields(&parsed.ignored),
        [
            "mode",
            "ipvs.syncPeriod",
            "ipvs.scheduler",
            "ipvs.strictARP",
            "clientConnection.contentType",
            "clientConnection.qps",
            "clientConnection.burst",
            "clusterCIDR",
            "oomScoreAdj",
            "conntrack.maxPerCore",
            "conntrack.min",
            "conntrack.tcpCloseWaitTimeout",
            "configSyncPeriod",
        ]
    );
    assert_eq!(parsed.ignored[0].value, "ipvs");
    assert_eq!(parsed.ignored[2].value, "rr");
}

#[test]
fn unknown_fields_are_errors_naming_the_field() {
    for (text, field) in [
        ("udpIdleTimeout: 250ms\n", "udpIdleTimeout"),
        ("conntrack:\n  tcpTimeout: 1h\n", "tcpTimeout"),
        ("iptables:\n  masqueradeBits: 14\n", "masqueradeBits"),
        ("logging:\n  options:\n    yaml: {}\n", "yaml"),
        // Field names are case-sensitive, as kube-proxy's strict decoding.
        (
            "MetricsBindAddress: 127.0.0.1:10249\n",
            "MetricsBindAddress",
        ),
    ] {
        let text = format!("apiVersion: {API_VERSION}\nkind: {KIND}\n{text}");
        match parse(&text) {
            Err(Refused::Decode(message)) => {
                assert!(message.contains(field), "{field}: {message}")
            }
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn bad_values_are_errors_naming_the_field() {
    for (text, field, says) in [
        (
            "healthzBindAddress: 0.0.0.0:99999\n",
            "healthzBindAddress",
            "not an address",
        ),
        (
            "metricsBindAddress: localhost:10249\n",
            "metricsBindAddress",
            "not an address",
        ),
        (
            "nodePortAddresses: [10.0.0.0/40]\n",
            "nodePortAddresses",
            "neither a CIDR",
        ),
        (
            "nodePortAddresses: [localhost]\n",
            "nodePortAddresses",
            "loopback",
        ),
        (
            "conntrack:\n  udpTimeout: 10d\n",
            "conntrack.udpTimeout",
            "not a duration",
        ),
        (
            "conntrack:\n  udpTimeout: 200ms\n",
            "conntrack.udpTimeout",
            "shorter than",
        ),
        (
            "conntrack:\n  tcpEstablishedTimeout: 200h\n",
            "conntrack.tcpEstablishedTimeout",
            "longer than",
        ),
    ] {
        let text = format!("apiVersion: {API_VERSION}\nkind: {KIND}\n{text}");
        match parse(&text) {
            Err(Refused::Field(f, reason)) => {
                assert_eq!(f, field);
                assert!(reason.contains(says), "{field}: {reason}");
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    // Wrong types are serde's to name.
    let text = format!("apiVersion: {API_VERSION}\nkind: {KIND}\noomScoreAdj: lots\n");
    assert!(matches!(parse(&text), Err(Refused::Decode(m)) if m.contains("oomScoreAdj")));
}

#[test]
fn only_kube_proxys_api_version_and_kind_are_read() {
    for text in [
        "kind: KubeProxyConfiguration\n",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha2\nkind: KubeProxyConfiguration\n",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n",
        "apiVersion: v1\nkind: ConfigMap\n",
    ] {
        match parse(text) {
            Err(Refused::Decode(m)) => assert!(m.contains(API_VERSION), "{text}: {m}"),
            other => panic!("{text}: {other:?}"),
        }
    }
    assert!(parse("not: [yaml").is_err());
    let minimal = parse(&format!("apiVersion: {API_VERSION}\nkind: {KIND}\n")).unwrap();
    assert_eq!(minimal, KubeProxyConfig::default());
}

#[test]
fn bind_addresses_take_kube_proxys_default_ports() {
    for (value, want) in [
        ("127.0.0.1:10249", "127.0.0.1:10249"),
        ("0.0.0.0", "0.0.0.0:10249"),
        ("::", "[::]:10249"),
        ("[::1]", "[::1]:10249"),
        ("[fd00::1]:9000", "[fd00::1]:9000"),
    ] {
        assert_eq!(
            bind_address("metricsBindAddress", value, METRICS_PORT),
            Ok(Some(want.parse().unwrap())),
            "{value}"
        );
    }
    assert_eq!(
        bind_address("metricsBindAddress", " ", METRICS_PORT),
        Ok(None)
    );
}

#[test]
fn go_durations_as_metav1_writes_them() {
    for (s, want) in [
        ("24h0m0s", Duration::from_secs(86_400)),
        ("1h30m", Duration::from_secs(5400)),
        ("1.5s", Duration::from_millis(1500)),
        ("300ms", Duration::from_millis(300)),
        ("0s", Duration::ZERO),
        ("0", Duration::ZERO),
        ("2m0.5s", Duration::from_millis(120_500)),
        ("10us", Duration::from_micros(10)),
    ] {
        assert_eq!(go_duration(s), Ok(want), "{s}");
    }
    for bad in ["", "5", "-1s", "1d", "h", "1.2.3s", "10 s"] {
        assert!(go_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn ignored_zero_values_are_not_reported() {
    let text = format!(
        "apiVersion: {API_VERSION}\nkind: {KIND}\nmode: \"\"\niptables:\n  syncPeriod: 0s\n  \
         masqueradeAll: false\nbindAddress: '::'\nlogging:\n  format: text\n  verbosity: 0\n\
         conntrack:\n  maxPerCore: 0\n  tcpBeLiberal: true\nbindAddressHardFail: true\n"
    );
    assert_eq!(parse(&text).unwrap().ignored, []);
}
