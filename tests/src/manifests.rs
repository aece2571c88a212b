//! A manifest directory for the agent, and YAML builders for Services and EndpointSlices in the
//! shape `kubectl get -o yaml` prints.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::agent::NODE_NAME;

/// A temporary directory of manifests; removed on drop. Writes are atomic (write, then rename),
/// so the agent never reads half a file.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
}

impl ManifestDir {
    pub fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(crate::unique_name("lb-manifests-"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir:?}"))?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn write(&self, file: &str, content: &str) -> anyhow::Result<()> {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, content)?;
        std::fs::rename(&tmp, self.dir.join(file))?;
        Ok(())
    }

    pub fn remove(&self, file: &str) -> anyhow::Result<()> {
        std::fs::remove_file(self.dir.join(file)).with_context(|| format!("removing {file}"))
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A service port: name, port, protocol (`TCP`/`UDP`).
pub type Port<'a> = (&'a str, u16, &'a str);

/// A Service with the given cluster IPs (primary first) and ports.
pub fn service(name: &str, cluster_ips: &[IpAddr], ports: &[Port<'_>]) -> String {
    let families: Vec<&str> = cluster_ips
        .iter()
        .map(|ip| if ip.is_ipv4() { "IPv4" } else { "IPv6" })
        .collect();
    let policy = if cluster_ips.len() > 1 {
        "RequireDualStack"
    } else {
        "SingleStack"
    };
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n  \
         resourceVersion: \"1\"\nspec:\n  type: ClusterIP\n  clusterIP: {first}\n  clusterIPs:\n",
        first = cluster_ips[0]
    );
    for ip in cluster_ips {
        let _ = writeln!(y, "  - {ip}");
    }
    let _ = writeln!(
        y,
        "  ipFamilies: [{}]\n  ipFamilyPolicy: {policy}\n  ports:",
        families.join(", ")
    );
    for (pname, port, proto) in ports {
        let _ = writeln!(
            y,
            "  - name: \"{pname}\"\n    port: {port}\n    protocol: {proto}\n    targetPort: {port}"
        );
    }
    y.push_str("status:\n  loadBalancer: {}\n");
    y
}

/// An endpoint: address, ready condition.
pub type Ep = (IpAddr, bool);

/// An EndpointSlice of `service` holding the endpoints of one family, all on node
/// [`NODE_NAME`].
pub fn endpoint_slice(name: &str, service: &str, ports: &[Port<'_>], endpoints: &[Ep]) -> String {
    let family = if endpoints.first().is_some_and(|(ip, _)| ip.is_ipv6()) {
        "IPv6"
    } else {
        "IPv4"
    };
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: {family}\nmetadata:\n  \
         name: {name}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\n\
         endpoints:\n"
    );
    for (ip, ready) in endpoints {
        let _ = writeln!(
            y,
            "- addresses: [\"{ip}\"]\n  conditions:\n    ready: {ready}\n    serving: {ready}\n    \
             terminating: false\n  nodeName: {NODE_NAME}"
        );
    }
    y.push_str("ports:\n");
    for (pname, port, proto) in ports {
        let _ = writeln!(
            y,
            "- name: \"{pname}\"\n  port: {port}\n  protocol: {proto}"
        );
    }
    y
}

/// A Service of any type, for tests of external traffic.
#[derive(Clone, Debug, Default)]
pub struct ServiceSpec<'a> {
    pub name: &'a str,
    /// `ClusterIP`, `NodePort` or `LoadBalancer`.
    pub service_type: &'a str,
    pub cluster_ips: Vec<IpAddr>,
    /// (name, port, protocol, node port).
    pub ports: Vec<(&'a str, u16, &'a str, Option<u16>)>,
    pub external_traffic_local: bool,
    pub health_check_node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub source_ranges: Vec<&'a str>,
    /// `sessionAffinity: ClientIP` with this timeout in seconds.
    pub session_affinity: Option<u32>,
}

impl ServiceSpec<'_> {
    pub fn to_yaml(&self) -> String {
        let families: Vec<&str> = self
            .cluster_ips
            .iter()
            .map(|ip| if ip.is_ipv4() { "IPv4" } else { "IPv6" })
            .collect();
        let policy = if self.cluster_ips.len() > 1 {
            "RequireDualStack"
        } else {
            "SingleStack"
        };
        let mut y = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: default\nspec:\n  \
             type: {}\n  clusterIP: {}\n  clusterIPs: [{}]\n  ipFamilies: [{}]\n  \
             ipFamilyPolicy: {policy}\n",
            self.name,
            self.service_type,
            self.cluster_ips[0],
            self.cluster_ips
                .iter()
                .map(|ip| format!("\"{ip}\""))
                .collect::<Vec<_>>()
                .join(", "),
            families.join(", "),
        );
        if self.service_type != "ClusterIP" {
            let etp = if self.external_traffic_local {
                "Local"
            } else {
                "Cluster"
            };
            let _ = writeln!(y, "  externalTrafficPolicy: {etp}");
        }
        if let Some(port) = self.health_check_node_port {
            let _ = writeln!(y, "  healthCheckNodePort: {port}");
        }
        if !self.external_ips.is_empty() {
            let ips: Vec<String> = self
                .external_ips
                .iter()
                .map(|i| format!("\"{i}\""))
                .collect();
            let _ = writeln!(y, "  externalIPs: [{}]", ips.join(", "));
        }
        if !self.source_ranges.is_empty() {
            let r: Vec<String> = self
                .source_ranges
                .iter()
                .map(|i| format!("\"{i}\""))
                .collect();
            let _ = writeln!(y, "  loadBalancerSourceRanges: [{}]", r.join(", "));
        }
        if let Some(timeout) = self.session_affinity {
            let _ = writeln!(
                y,
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      \
                 timeoutSeconds: {timeout}"
            );
        }
        y.push_str("  ports:\n");
        for (pname, port, proto, node_port) in &self.ports {
            let _ = writeln!(
                y,
                "  - name: \"{pname}\"\n    port: {port}\n    protocol: {proto}\n    targetPort: {port}"
            );
            if let Some(np) = node_port {
                let _ = writeln!(y, "    nodePort: {np}");
            }
        }
        y.push_str("status:\n  loadBalancer:\n");
        if self.load_balancer_ips.is_empty() {
            y.push_str("    {}\n");
        } else {
            y.push_str("    ingress:\n");
            for ip in &self.load_balancer_ips {
                let _ = writeln!(y, "    - ip: \"{ip}\"");
            }
        }
        y
    }
}

/// An endpoint with its node: address, ready, node name.
pub type NodeEp<'a> = (IpAddr, bool, &'a str);

/// An EndpointSlice whose endpoints name their nodes.
pub fn endpoint_slice_on_nodes(
    name: &str,
    service: &str,
    ports: &[Port<'_>],
    endpoints: &[NodeEp<'_>],
) -> String {
    let family = if endpoints.first().is_some_and(|(ip, _, _)| ip.is_ipv6()) {
        "IPv6"
    } else {
        "IPv4"
    };
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: {family}\nmetadata:\n  \
         name: {name}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\n\
         endpoints:\n"
    );
    for (ip, ready, node) in endpoints {
        let _ = writeln!(
            y,
            "- addresses: [\"{ip}\"]\n  conditions:\n    ready: {ready}\n    serving: {ready}\n    \
             terminating: false\n  nodeName: {node}"
        );
    }
    y.push_str("ports:\n");
    for (pname, port, proto) in ports {
        let _ = writeln!(
            y,
            "- name: \"{pname}\"\n  port: {port}\n  protocol: {proto}"
        );
    }
    y
}
