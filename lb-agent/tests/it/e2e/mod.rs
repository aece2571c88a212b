//! End-to-end tests: the agent binary runs in network namespaces built by `lb-tests`, and real
//! TCP and UDP clients reach services through it. Need root; fail (never skip) without.
//!
//! - [`manifests`]: pods reach ClusterIPs, the services read from manifest files.
//! - [`k8s`]: the same with the Kubernetes source and a test API server.
//! - [`external`]: node ports, external and load balancer IPs on two nodes, XDP and TC modes.
//! - [`sock`]: processes on the node, translated by the socket programs.
//! - [`restart`]: killing and restarting the agent fails no request.
//! - [`conformance`]: the e2e suite's cases the agent used to fail, named after them.
//! - [`devices`]: devices without Ethernet headers get no programs; the SNAT address is the
//!   uplink's.

mod conformance;
mod devices;
mod external;
mod k8s;
mod manifests;
mod metrics;
mod restart;
mod sock;

use std::{net::IpAddr, time::Duration};

use lb_tests::{
    agent::{Agent, AgentBuilder},
    cluster::{Cluster, SERVICE_PORTS, TARGET_PORTS},
    manifests::{ManifestDir, endpoint_slice, service},
};

/// The agent binary cargo built for these tests.
const AGENT: &str = env!("CARGO_BIN_EXE_lb-agent");
/// How long an agent may take to turn healthy (its first full sync).
const READY: Duration = Duration::from_secs(20);

/// A [`Cluster`] whose agent reads its services from a manifest directory.
struct ManifestCluster {
    net: Cluster,
    manifests: ManifestDir,
}

impl ManifestCluster {
    fn new() -> Self {
        Self {
            net: Cluster::new().expect("cluster"),
            manifests: ManifestDir::new().expect("manifest dir"),
        }
    }

    /// Writes `{service}-v4` or `{service}-v6`, the EndpointSlice of one family of `service`.
    fn write_slice(&self, service: &str, v6: bool, endpoints: &[(IpAddr, bool)]) {
        let name = format!("{service}-{}", if v6 { "v6" } else { "v4" });
        self.manifests
            .write(
                &format!("{name}.yaml"),
                &endpoint_slice(&name, service, TARGET_PORTS, endpoints),
            )
            .unwrap();
    }

    /// Writes a ClusterIP service with the [`SERVICE_PORTS`] and, for each family of `vips`, a
    /// slice holding the named pods, all ready.
    fn write_service(&self, name: &str, vips: &[IpAddr], pods: &[&str]) {
        self.manifests
            .write(&format!("{name}.yaml"), &service(name, vips, SERVICE_PORTS))
            .unwrap();
        for vip in vips {
            let v6 = vip.is_ipv6();
            self.write_slice(name, v6, &self.net.ready_endpoints(v6, pods));
        }
    }

    /// Writes `name` as [`ManifestCluster::write_service`] does, with `sessionAffinity:
    /// ClientIP` and `timeout` seconds when `timeout` is set (and `None` otherwise).
    fn write_affine_service(
        &self,
        name: &str,
        vips: &[IpAddr],
        pods: &[&str],
        timeout: Option<u32>,
    ) {
        let affinity = match timeout {
            Some(t) => format!(
                "spec:\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      \
                 timeoutSeconds: {t}\n"
            ),
            None => "spec:\n  sessionAffinity: None\n".to_owned(),
        };
        let yaml = service(name, vips, SERVICE_PORTS).replacen("spec:\n", &affinity, 1);
        self.manifests
            .write(&format!("{name}.yaml"), &yaml)
            .unwrap();
        for vip in vips {
            let v6 = vip.is_ipv6();
            self.write_slice(name, v6, &self.net.ready_endpoints(v6, pods));
        }
    }

    /// The agent of this node, reading the manifest directory; more settings go on the
    /// builder before [`ManifestCluster::start`].
    fn agent(&self) -> AgentBuilder<'_> {
        Agent::builder(AGENT, self.net.node()).manifests(&self.manifests)
    }

    /// Starts `agent` and waits until it is healthy.
    fn start(&self, agent: AgentBuilder<'_>) -> Agent {
        let mut agent = agent.start().expect("start agent");
        agent
            .wait_healthy(self.net.node(), READY)
            .expect("agent healthy");
        agent
    }

    /// Starts the agent with nothing but the manifest directory and waits until it is healthy.
    fn start_agent(&self) -> Agent {
        self.start(self.agent())
    }
}
