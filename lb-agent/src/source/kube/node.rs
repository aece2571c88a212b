//! What the agent reads from its own Node object.

use k8s_openapi::api::core::v1::Node;

pub use crate::source::convert::{TO_BE_DELETED_TAINT, ZONE_LABEL};
use crate::source::{convert, snapshot::NodeState};

/// The state of this node; a node that does not exist is not eligible, as in kube-proxy.
pub fn node_state(node: Option<&Node>) -> NodeState {
    match node {
        Some(node) => convert::node_state(node),
        None => NodeState {
            zone: None,
            eligible: false,
            internal_ips: Vec::new(),
        },
    }
}

/// This machine's host name: kube-proxy's default node name when none is given.
pub fn hostname() -> Option<String> {
    // `gethostname(3)` is the UTS namespace's node name, which `uname(2)` returns too.
    let uname = rustix::system::uname();
    let name = uname.nodename().to_str().ok()?.trim().to_lowercase();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{NodeAddress, NodeSpec, NodeStatus, Taint},
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    };

    use std::net::IpAddr;

    use super::*;
    use crate::source::convert::INTERNAL_IP;

    #[test]
    fn hostname_is_the_kernels_lowercased() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(hostname(), Some(kernel.trim().to_lowercase()));
    }

    #[test]
    fn internal_ips_of_both_families_in_the_nodes_order_and_nothing_else() {
        let address = |type_: &str, address: &str| NodeAddress {
            type_: type_.into(),
            address: address.into(),
        };
        let node = Node {
            status: Some(NodeStatus {
                addresses: Some(vec![
                    address("Hostname", "n1"),
                    address("ExternalIP", "203.0.113.7"),
                    address(INTERNAL_IP, "192.168.10.21"),
                    address(INTERNAL_IP, "not-an-address"),
                    address(INTERNAL_IP, "2001:db8::21"),
                ]),
                ..NodeStatus::default()
            }),
            ..Node::default()
        };
        let want: Vec<IpAddr> = ["192.168.10.21", "2001:db8::21"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(node_state(Some(&node)).internal_ips, want);
        assert!(node_state(Some(&Node::default())).internal_ips.is_empty());
        assert!(node_state(None).internal_ips.is_empty());
    }

    #[test]
    fn node_eligibility_and_zone() {
        let labelled = |zone: &str| ObjectMeta {
            name: Some("n1".into()),
            labels: Some([(ZONE_LABEL.to_owned(), zone.to_owned())].into()),
            ..ObjectMeta::default()
        };
        let cases: Vec<(&str, Option<Node>, Option<&str>, bool)> = vec![
            ("no Node object", None, None, false),
            (
                "a node with a zone",
                Some(Node {
                    metadata: labelled("z1"),
                    ..Node::default()
                }),
                Some("z1"),
                true,
            ),
            (
                "an empty zone label is no zone",
                Some(Node {
                    metadata: labelled(""),
                    ..Node::default()
                }),
                None,
                true,
            ),
            (
                "being deleted",
                Some(Node {
                    metadata: ObjectMeta {
                        deletion_timestamp: Some(Time(Default::default())),
                        ..labelled("z1")
                    },
                    ..Node::default()
                }),
                Some("z1"),
                false,
            ),
            (
                "tainted for deletion by the cluster autoscaler",
                Some(Node {
                    metadata: labelled("z1"),
                    spec: Some(NodeSpec {
                        taints: Some(vec![Taint {
                            key: TO_BE_DELETED_TAINT.into(),
                            effect: "NoSchedule".into(),
                            ..Taint::default()
                        }]),
                        ..NodeSpec::default()
                    }),
                    ..Node::default()
                }),
                Some("z1"),
                false,
            ),
        ];
        for (case, node, zone, eligible) in cases {
            let state = node_state(node.as_ref());
            assert_eq!(state.zone.as_deref(), zone, "{case}");
            assert_eq!(state.eligible, eligible, "{case}");
        }
    }
}
