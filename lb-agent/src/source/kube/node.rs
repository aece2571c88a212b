//! What the agent reads from its own Node object.

use k8s_openapi::api::core::v1::Node;

use crate::source::snapshot::NodeState;

/// The well-known zone label (`v1.LabelTopologyZone`), matched against zone hints.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Taint the cluster autoscaler puts on a node it is about to delete; kube-proxy counts such a
/// node as not eligible (`pkg/proxy/healthcheck/proxy_health.go`).
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// The state of this node; a node that does not exist is not eligible, as in kube-proxy.
pub fn node_state(node: Option<&Node>) -> NodeState {
    let Some(node) = node else {
        return NodeState {
            zone: None,
            eligible: false,
        };
    };
    let being_deleted = node.metadata.deletion_timestamp.is_some();
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    NodeState {
        zone: node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL))
            .filter(|z| !z.is_empty())
            .cloned(),
        eligible: !being_deleted && !tainted,
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
        api::core::v1::{NodeSpec, Taint},
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    };

    use super::*;

    #[test]
    fn hostname_is_the_kernels_lowercased() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(hostname(), Some(kernel.trim().to_lowercase()));
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
