//! End-to-end with the Kubernetes source: the agent runs in a node namespace with a kubeconfig
//! pointing at the test API server (listening on 127.0.0.1 inside that namespace), and pods
//! reach ClusterIPs as Services and EndpointSlices are created, changed and deleted through the
//! API, including across API server restarts and expired (410) watches. Needs root; fails
//! (never skips) without.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, TcpListener},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Agent, HEALTHZ, NODE_NAME},
    apiserver::{self, ApiServer},
    cluster::{Cluster, SERVICE_PORTS, TARGET_PORTS, names},
    eventually,
    http::http_get,
    ip, sa,
    traffic::{tcp_request, udp_request},
};
use serde_json::{Value, json};

use super::{AGENT, READY};

/// How long a change through the API may take to reach the datapath. Generous: a reconnect
/// after an API server restart waits for the watcher's backoff (up to a few seconds here).
const CONVERGE: Duration = Duration::from_secs(20);

/// A [`Cluster`] and a test API server inside its node namespace holding this node's Node
/// object; the agent watches it.
struct KubeCluster {
    net: Cluster,
    api: ApiServer,
    api_addr: SocketAddr,
    kubeconfig: PathBuf,
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

impl KubeCluster {
    fn new() -> Self {
        let net = Cluster::new().expect("cluster");
        let mut api = ApiServer::new();
        let listener = net
            .node()
            .run(|| TcpListener::bind("127.0.0.1:0"))
            .expect("enter node namespace")
            .expect("bind the API server");
        api.serve(listener).expect("serve");
        let api_addr = api.addr().expect("address");
        api.apply(apiserver::node(NODE_NAME, Some("zone-a")))
            .unwrap();
        let kubeconfig =
            std::env::temp_dir().join(format!("{}.kubeconfig", lb_tests::unique_name("lbk")));
        api.write_kubeconfig(&kubeconfig).unwrap();
        Self {
            net,
            api,
            api_addr,
            kubeconfig,
        }
    }

    fn start_agent(&self) -> Agent {
        let mut agent = Agent::builder(AGENT, self.net.node())
            .kubeconfig(&self.kubeconfig)
            .start()
            .expect("start agent");
        agent
            .wait_healthy(self.net.node(), READY)
            .expect("agent healthy");
        agent
    }

    /// Serves again on the same address, as a restarted API server would.
    fn restart_api(&mut self) {
        let addr = self.api_addr;
        let listener = self
            .net
            .node()
            .run(move || TcpListener::bind(addr))
            .expect("enter node namespace")
            .expect("rebind the API server");
        self.api.serve(listener).expect("serve again");
    }

    /// Creates or replaces a ClusterIP service.
    fn put_service(&self, name: &str, vips: &[IpAddr]) {
        self.api
            .apply(apiserver::service(name, vips, SERVICE_PORTS))
            .unwrap();
    }

    /// Creates or replaces the slice `{service}-{suffix}` of one family with the given backends.
    fn put_slice(&self, service: &str, suffix: &str, v6: bool, backends: &[&str]) {
        let eps: Vec<apiserver::Ep<'_>> = backends
            .iter()
            .map(|b| (self.net.topo.pod(b).addr(v6), true, NODE_NAME))
            .collect();
        let family = if v6 { "v6" } else { "v4" };
        self.api
            .apply(apiserver::endpoint_slice(
                &format!("{service}-{family}{suffix}"),
                service,
                v6,
                TARGET_PORTS,
                &eps,
            ))
            .unwrap();
    }

    fn delete_slice(&self, service: &str, suffix: &str, v6: bool) {
        let family = if v6 { "v6" } else { "v4" };
        self.api
            .delete(
                "EndpointSlice",
                "default",
                &format!("{service}-{family}{suffix}"),
            )
            .unwrap();
    }

    /// A service with one slice per family of its VIPs, holding `backends`.
    fn put_service_with_backends(&self, name: &str, vips: &[IpAddr], backends: &[&str]) {
        self.put_service(name, vips);
        for vip in vips {
            self.put_slice(name, "", vip.is_ipv6(), backends);
        }
    }

    /// Waits until new TCP and UDP flows to every VIP reach exactly `want`, then checks it with
    /// more flows. Two samples of 30 flows in a row must agree, so a backend that is still
    /// programmed is not missed by chance (with three backends, (2/3)^60).
    fn converge(&self, vips: &[IpAddr], want: &[&str], what: &str) {
        let want = names(want);
        let sample = |vip: IpAddr| -> Option<BTreeSet<String>> {
            (0..30)
                .map(|_| tcp_request(self.net.client(), sa(vip, 80)).ok())
                .collect()
        };
        for vip in vips {
            let t = Instant::now();
            let reached = eventually(CONVERGE, || {
                sample(*vip).as_ref() == Some(&want) && sample(*vip).as_ref() == Some(&want)
            });
            assert!(
                reached,
                "{what}: TCP to {vip} never reached exactly {want:?}"
            );
            assert_eq!(self.net.tcp_spread(*vip, 30), want, "{what}: TCP to {vip}");
            assert_eq!(self.net.udp_spread(*vip, 30), want, "{what}: UDP to {vip}");
            eprintln!("converged {what} {vip} in {:?}", t.elapsed());
        }
    }

    /// Waits until `vip` answers neither TCP nor UDP.
    fn converge_gone(&self, vips: &[IpAddr], what: &str) {
        for vip in vips {
            let gone = eventually(CONVERGE, || {
                tcp_request(self.net.client(), sa(*vip, 80)).is_err()
            });
            assert!(gone, "{what}: {vip}:80 still answers");
            assert!(
                udp_request(self.net.client(), sa(*vip, 53)).is_err(),
                "{what}: {vip}:53 still answers"
            );
        }
    }

    fn healthz(&self, path: &str) -> (u16, Value) {
        let (code, resp) = http_get(self.net.node(), HEALTHZ.parse().unwrap(), path).unwrap();
        let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (code, serde_json::from_str(body).unwrap_or(Value::Null))
    }
}

#[test]
fn services_and_slices_from_the_api_serve_both_families_and_follow_scaling() {
    let c = KubeCluster::new();
    let dual = [ip("10.96.1.10"), ip("fd00:96::1:10")];
    let v4 = [ip("10.96.1.11")];
    let v6 = [ip("fd00:96::1:12")];
    c.put_service_with_backends("dual", &dual, &["b1", "b2", "b3"]);
    c.put_service_with_backends("v4", &v4, &["b2"]);
    c.put_service_with_backends("v6", &v6, &["b3"]);
    let _agent = c.start_agent();
    c.converge(&dual, &["b1", "b2", "b3"], "created");
    c.converge(&v4, &["b2"], "IPv4-only service");
    c.converge(&v6, &["b3"], "IPv6-only service");

    // Scale down to one endpoint.
    for vip in dual {
        c.put_slice("dual", "", vip.is_ipv6(), &["b1"]);
    }
    c.converge(&dual, &["b1"], "scaled down");

    // Scale up, the endpoints now spread over two slices per family.
    for vip in dual {
        c.put_slice("dual", "-extra", vip.is_ipv6(), &["b2", "b3"]);
    }
    c.converge(&dual, &["b1", "b2", "b3"], "scaled up over two slices");

    // The first slice goes away: its endpoint goes, the other slice's stay.
    for vip in dual {
        c.delete_slice("dual", "", vip.is_ipv6());
    }
    c.converge(&dual, &["b2", "b3"], "one slice deleted");

    // Deleting the service stops translation.
    c.api.delete("Service", "default", "v4").unwrap();
    c.converge_gone(&v4, "service deleted");
    c.converge(&v6, &["b3"], "other services untouched");
}

#[test]
fn external_name_and_the_service_proxy_name_label_remove_the_service_until_undone() {
    let c = KubeCluster::new();
    let vips = [ip("10.96.2.10"), ip("fd00:96::2:10")];
    c.put_service_with_backends("web", &vips, &["b1", "b2", "b3"]);
    let _agent = c.start_agent();
    c.converge(&vips, &["b1", "b2", "b3"], "created");

    // ClusterIP -> ExternalName: the API server drops the cluster IPs.
    let mut external = apiserver::service("web", &vips, SERVICE_PORTS);
    let spec = external["spec"].as_object_mut().unwrap();
    for field in [
        "clusterIP",
        "clusterIPs",
        "ipFamilies",
        "ipFamilyPolicy",
        "internalTrafficPolicy",
    ] {
        spec.remove(field);
    }
    spec.insert("type".into(), json!("ExternalName"));
    spec.insert("externalName".into(), json!("web.example.com"));
    c.api.apply(external).unwrap();
    c.converge_gone(&vips, "switched to ExternalName");

    // And back to ClusterIP.
    c.put_service("web", &vips);
    c.converge(&vips, &["b1", "b2", "b3"], "back to ClusterIP");

    // Another proxy claims the service (the EndpointSlice controller copies the label to the
    // slices too).
    let label = json!({ "service.kubernetes.io/service-proxy-name": "other-proxy" });
    let mut claimed = apiserver::service("web", &vips, SERVICE_PORTS);
    claimed["metadata"]["labels"] = label.clone();
    c.api.apply(claimed).unwrap();
    for vip in vips {
        let mut slice = c
            .api
            .get(
                "EndpointSlice",
                "default",
                &format!("web-{}", if vip.is_ipv6() { "v6" } else { "v4" }),
            )
            .unwrap();
        slice["metadata"]["labels"]["service.kubernetes.io/service-proxy-name"] =
            json!("other-proxy");
        c.api.apply(slice).unwrap();
    }
    c.converge_gone(&vips, "service-proxy-name label added");

    // The label goes: served again.
    c.put_service_with_backends("web", &vips, &["b1", "b2", "b3"]);
    c.converge(
        &vips,
        &["b1", "b2", "b3"],
        "service-proxy-name label removed",
    );
}

#[test]
fn healthz_reports_the_node_object() {
    let c = KubeCluster::new();
    let _agent = c.start_agent();
    let (code, body) = c.healthz("/healthz");
    assert_eq!((code, &body["nodeEligible"]), (200, &json!(true)), "{body}");
    assert!(
        body["lastUpdated"]
            .as_str()
            .is_some_and(|s| s.starts_with("20")),
        "{body}"
    );

    let mut node = apiserver::node(NODE_NAME, Some("zone-a"));
    node["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
    c.api.apply(node).unwrap();
    assert!(
        eventually(CONVERGE, || c.healthz("/healthz").0 == 503),
        "/healthz still 200 for a node being deleted"
    );
    let (_, body) = c.healthz("/healthz");
    assert_eq!(body["nodeEligible"], json!(false), "{body}");
    let (code, body) = c.healthz("/livez");
    assert_eq!(code, 200, "/livez does not depend on the node: {body}");
    assert!(body.get("nodeEligible").is_none(), "{body}");

    c.api
        .apply(apiserver::node(NODE_NAME, Some("zone-a")))
        .unwrap();
    assert!(eventually(CONVERGE, || c.healthz("/healthz").0 == 200));
}

/// Requests to the given VIPs in a loop (TCP and UDP), counting failures, until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(c: &KubeCluster, vips: &[IpAddr]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let client = c.net.client().path();
        let threads = vips
            .iter()
            .map(|vip| {
                let (stop, done, failures, vip) =
                    (stop.clone(), done.clone(), failures.clone(), *vip);
                let ns = NsPath(client.clone());
                std::thread::spawn(move || {
                    ns.enter();
                    while !stop.load(Ordering::Relaxed) {
                        for result in [tcp_direct(sa(vip, 80)), udp_direct(sa(vip, 53))] {
                            match result {
                                Ok(()) => {
                                    done.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => failures.lock().unwrap().push(format!("{vip}: {e:#}")),
                            }
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Self {
            stop,
            done,
            failures,
            threads,
        }
    }

    /// Stops and returns (requests answered, failures).
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("load thread panicked");
        }
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (self.done.load(Ordering::Relaxed), failures)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A network namespace by path, entered by the calling thread for good (load threads only).
struct NsPath(PathBuf);

impl NsPath {
    fn enter(&self) {
        use std::os::fd::AsRawFd as _;
        let file = std::fs::File::open(&self.0).expect("open namespace");
        // SAFETY: setns on a valid namespace fd; it only affects this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

/// One TCP request from the current thread's namespace: connect, read the greeting.
fn tcp_direct(addr: SocketAddr) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line)?;
    anyhow::ensure!(!line.is_empty(), "no greeting");
    Ok(())
}

/// One UDP request from the current thread's namespace.
fn udp_direct(addr: SocketAddr) -> anyhow::Result<()> {
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    socket.send_to(b"hello", addr)?;
    let mut buf = [0u8; 64];
    let (_, from) = socket.recv_from(&mut buf)?;
    anyhow::ensure!(from == addr, "answer from {from}");
    Ok(())
}

#[test]
fn api_server_restarts_and_expired_watches_lose_no_request_and_leave_no_stale_backend() {
    let mut c = KubeCluster::new();
    let web = [ip("10.96.3.10"), ip("fd00:96::3:10")];
    let gone = [ip("10.96.3.11"), ip("fd00:96::3:11")];
    let late = [ip("10.96.3.12"), ip("fd00:96::3:12")];
    let relisted = [ip("10.96.3.13"), ip("fd00:96::3:13")];
    c.put_service_with_backends("web", &web, &["b1", "b2", "b3"]);
    c.put_service_with_backends("gone", &gone, &["b1"]);
    c.put_service_with_backends("relisted", &relisted, &["b2"]);
    let _agent = c.start_agent();
    c.converge(&web, &["b1", "b2", "b3"], "created");
    c.converge(&gone, &["b1"], "created");
    c.converge(&relisted, &["b2"], "created");
    let load = Load::start(&c, &web);

    // 1. The API server dies; while it is down b3 leaves `web` and `gone` is deleted. The
    //    datapath keeps serving meanwhile; after the restart the watches resume from their
    //    resource version and the changes are replayed.
    let lists = c.api.lists_served("Service");
    c.api.stop();
    for vip in web {
        c.put_slice("web", "", vip.is_ipv6(), &["b1", "b2"]);
    }
    c.api.delete("Service", "default", "gone").unwrap();
    for vip in gone {
        c.delete_slice("gone", "", vip.is_ipv6());
    }
    std::thread::sleep(Duration::from_secs(1));
    c.converge(
        &web,
        &["b1", "b2", "b3"],
        "API server down: last known state",
    );
    assert_eq!(
        c.healthz("/healthz").0,
        200,
        "healthy while the API server is down"
    );
    c.restart_api();
    c.converge(&web, &["b1", "b2"], "after restart");
    c.converge_gone(&gone, "deleted while the API server was down");
    assert_eq!(
        c.api.lists_served("Service"),
        lists,
        "the watches should have resumed without a relist"
    );

    // 2. Down again, with the history compacted while down: the resumed watches get 410 Gone
    //    and relist; what changed meanwhile (b2 out, b3 back, a new service, a deleted one,
    //    whose deletion no event reports any more) is picked up.
    let lists = c.api.lists_served("Service");
    c.api.stop();
    for vip in web {
        c.put_slice("web", "", vip.is_ipv6(), &["b1", "b3"]);
    }
    c.put_service_with_backends("late", &late, &["b2"]);
    c.api.delete("Service", "default", "relisted").unwrap();
    for vip in relisted {
        c.delete_slice("relisted", "", vip.is_ipv6());
    }
    c.api.compact();
    c.restart_api();
    c.converge(&web, &["b1", "b3"], "after 410 and relist");
    c.converge(&late, &["b2"], "created while the API server was down");
    c.converge_gone(
        &relisted,
        "deleted while down, history compacted: gone after the relist",
    );
    assert!(c.api.lists_served("Service") > lists, "no relist after 410");

    // 3. Every open watch expires (410) while connected; changes after it still arrive.
    let lists = c.api.lists_served("Service");
    c.api.expire_watches();
    for vip in web {
        c.put_slice("web", "", vip.is_ipv6(), &["b1", "b2", "b3"]);
    }
    c.api.delete("Service", "default", "late").unwrap();
    c.converge(&web, &["b1", "b2", "b3"], "after expired watches");
    c.converge_gone(&late, "deleted after expired watches");
    assert!(c.api.lists_served("Service") > lists, "no relist after 410");

    let (answered, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        answered + failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(answered > 100, "only {answered} requests answered");
}
