//! The Kubernetes source against the test API server: the real kube client, watchers and
//! reflectors over HTTP, no root needed.

use std::{
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use lb_tests::apiserver::{self, ApiServer};
use serde_json::json;

use super::*;

const PORTS: &[apiserver::Port<'static>] = &[("http", 80, "TCP"), ("dns", 53, "UDP")];
const TIMEOUT: Duration = Duration::from_secs(30);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A kubeconfig file, removed on drop.
struct Kubeconfig(PathBuf);

impl Kubeconfig {
    fn new(api: &ApiServer) -> Self {
        let path =
            std::env::temp_dir().join(format!("{}.kubeconfig", lb_tests::unique_name("lbk")));
        api.write_kubeconfig(&path).unwrap();
        Self(path)
    }
}

impl Drop for Kubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The source on `kubeconfig` (written for the test API server), its first lists complete.
async fn start(kubeconfig: &Kubeconfig) -> KubeSource {
    let source = KubeSource::start(
        &KubeOptions {
            kubeconfig: Some(kubeconfig.0.clone()),
        },
        Some("n1"),
        Changes::default(),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), source.ready())
        .await
        .expect("stores ready")
        .unwrap();
    source
}

fn service_names(s: &Snapshot) -> Vec<String> {
    s.services.iter().map(|s| s.name.name.clone()).collect()
}

fn slice_names(s: &Snapshot) -> Vec<String> {
    s.slices.iter().map(|s| s.name.name.clone()).collect()
}

/// Polls the source until `f` holds for its snapshot.
async fn eventually(source: &mut KubeSource, what: &str, f: impl Fn(&Snapshot) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let snap = source.snapshot();
        if f(&snap) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached; services {:?}, slices {:?}, node {:?}",
            service_names(&snap),
            slice_names(&snap),
            snap.node
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn populate(api: &ApiServer) {
    api.apply(apiserver::node("n1", Some("zone-a"))).unwrap();
    api.apply(apiserver::node("n2", Some("zone-b"))).unwrap();
    api.apply(apiserver::service(
        "web",
        &[ip("10.96.0.10"), ip("fd00::10")],
        PORTS,
    ))
    .unwrap();
    api.apply(apiserver::endpoint_slice(
        "web-v4",
        "web",
        false,
        PORTS,
        &[(ip("10.0.0.1"), true, "n1")],
    ))
    .unwrap();
    api.apply(apiserver::endpoint_slice(
        "web-v6",
        "web",
        true,
        PORTS,
        &[(ip("fd01::1"), true, "n1")],
    ))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_creates_updates_deletes_labels_and_the_node() {
    tokio::time::timeout(TIMEOUT, async {
        let mut api = ApiServer::new();
        api.serve_local().unwrap();
        populate(&api);
        let mut headless = apiserver::service("db", &[ip("10.96.0.11")], PORTS);
        headless["metadata"]["labels"] = json!({ "service.kubernetes.io/headless": "" });
        api.apply(headless).unwrap();
        let kc = Kubeconfig::new(&api);
        let mut source = start(&kc).await;

        let snap = source.snapshot();
        assert_eq!(
            service_names(&snap),
            ["web"],
            "the headless label is filtered by the API"
        );
        assert_eq!(slice_names(&snap), ["web-v4", "web-v6"]);
        assert_eq!(
            snap.node,
            Some(NodeState {
                zone: Some("zone-a".into()),
                eligible: true,
                internal_ips: Vec::new(),
            }),
            "only this node's object is watched"
        );
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);

        // Scale: a second slice appears, then the first goes.
        api.apply(apiserver::endpoint_slice(
            "web-v4-2",
            "web",
            false,
            PORTS,
            &[(ip("10.0.0.2"), true, "n2")],
        ))
        .unwrap();
        eventually(&mut source, "second slice", |s| s.slices.len() == 3).await;
        api.delete("EndpointSlice", "default", "web-v4").unwrap();
        eventually(&mut source, "first slice gone", |s| {
            slice_names(s) == ["web-v4-2", "web-v6"]
        })
        .await;

        // Another proxy takes the service over, then gives it back.
        let mut owned = apiserver::service("web", &[ip("10.96.0.10"), ip("fd00::10")], PORTS);
        owned["metadata"]["labels"] =
            json!({ "service.kubernetes.io/service-proxy-name": "other-proxy" });
        api.apply(owned).unwrap();
        eventually(&mut source, "labelled service gone", |s| {
            s.services.is_empty()
        })
        .await;
        api.apply(apiserver::service(
            "web",
            &[ip("10.96.0.10"), ip("fd00::10")],
            PORTS,
        ))
        .unwrap();
        eventually(&mut source, "label removed", |s| {
            service_names(s) == ["web"]
        })
        .await;

        // An update the proxy cannot use keeps the last good version and is reported.
        let mut odd = apiserver::service("web", &[ip("10.96.0.10"), ip("fd00::10")], PORTS);
        odd["spec"]["ports"][0]["protocol"] = json!("QUIC");
        api.apply(odd).unwrap();
        eventually(&mut source, "problem reported", |s| {
            s.problems.iter().any(|p| {
                p.starts_with("Service default/web: ") && p.contains("keeping its last good")
            }) && s.services.len() == 1
        })
        .await;

        // The zone label and deletion of this node.
        let mut n1 = apiserver::node("n1", Some("zone-c"));
        api.apply(n1.clone()).unwrap();
        eventually(&mut source, "zone changed", |s| {
            s.node.as_ref().and_then(|n| n.zone.as_deref()) == Some("zone-c")
        })
        .await;
        n1["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        api.apply(n1).unwrap();
        eventually(&mut source, "node being deleted", |s| {
            s.node.as_ref().is_some_and(|n| !n.eligible)
        })
        .await;
        api.delete("Node", "", "n1").unwrap();
        eventually(&mut source, "node gone", |s| {
            s.node
                .as_ref()
                .is_some_and(|n| !n.eligible && n.zone.is_none())
        })
        .await;
    })
    .await
    .expect("timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_api_server_replays_what_changed_meanwhile() {
    tokio::time::timeout(TIMEOUT, async {
        let mut api = ApiServer::new();
        api.serve_local().unwrap();
        let addr = api.addr().unwrap();
        populate(&api);
        api.apply(apiserver::service("gone", &[ip("10.96.0.12")], PORTS))
            .unwrap();
        let kc = Kubeconfig::new(&api);
        let mut source = start(&kc).await;
        assert_eq!(service_names(&source.snapshot()), ["gone", "web"]);
        let lists = api.lists_served("Service");

        api.stop();
        api.delete("Service", "default", "gone").unwrap();
        api.delete("EndpointSlice", "default", "web-v6").unwrap();
        // The stores keep the last known state while the API server is down.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(service_names(&source.snapshot()), ["gone", "web"]);

        api.serve(std::net::TcpListener::bind(addr).unwrap())
            .unwrap();
        eventually(&mut source, "deletions replayed", |s| {
            service_names(s) == ["web"] && slice_names(s) == ["web-v4"]
        })
        .await;
        assert_eq!(
            api.lists_served("Service"),
            lists,
            "the watch resumes from its resource version, without a relist"
        );
    })
    .await
    .expect("timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_relists_and_drops_objects_deleted_meanwhile() {
    tokio::time::timeout(TIMEOUT, async {
        let mut api = ApiServer::new();
        api.serve_local().unwrap();
        let addr = api.addr().unwrap();
        // Small pages: the lists take several requests with continue tokens.
        api.set_page_size(2);
        populate(&api);
        for i in 0..5 {
            api.apply(apiserver::service(
                &format!("s{i}"),
                &[ip(&format!("10.96.1.{i}"))],
                PORTS,
            ))
            .unwrap();
        }
        let kc = Kubeconfig::new(&api);
        let mut source = start(&kc).await;
        assert_eq!(source.snapshot().services.len(), 6);

        // Expired while connected: every watch gets 410 and relists.
        let lists = api.lists_served("Service");
        api.delete("Service", "default", "s0").unwrap();
        api.expire_watches();
        api.delete("Service", "default", "s1").unwrap();
        eventually(&mut source, "relisted after 410", |s| s.services.len() == 4).await;
        assert!(api.lists_served("Service") > lists, "no relist happened");

        // Down, changed, compacted, up: the resumed watch gets 410, the relist drops what was
        // deleted meanwhile and adds what was created.
        let lists = api.lists_served("Service");
        api.stop();
        api.delete("Service", "default", "s2").unwrap();
        api.delete("Service", "default", "s3").unwrap();
        api.apply(apiserver::service("s9", &[ip("10.96.1.9")], PORTS))
            .unwrap();
        api.compact();
        api.serve(std::net::TcpListener::bind(addr).unwrap())
            .unwrap();
        eventually(&mut source, "relisted after restart", |s| {
            service_names(s) == ["s4", "s9", "web"]
        })
        .await;
        assert!(api.lists_served("Service") > lists, "no relist happened");
    })
    .await
    .expect("timed out");
}
