//! The Kubernetes source: Services, EndpointSlices (discovery.k8s.io/v1) and this node's Node,
//! each watched by a kube-runtime watcher feeding a reflector store.
//!
//! - Services and EndpointSlices are selected with kube-proxy's label selector
//!   ([`PROXY_LABEL_SELECTOR`]): a Service that gains `service.kubernetes.io/service-proxy-name`
//!   (another proxy serves it) or `service.kubernetes.io/headless` leaves the store, and comes
//!   back when the label goes.
//! - The desired state is rebuilt from the stores, never from the events, which only say
//!   "something changed": a lost or merged event cannot leave a stale backend behind.
//! - The watcher reconnects with backoff (800 ms doubling to 30 s, client-go's reflector
//!   figures) and resumes from the last resource version; a `410 Gone` makes it list again, and
//!   the store is replaced only once that list is complete, so objects deleted while the watch
//!   was down disappear and nothing flickers meanwhile. While the API server is unreachable the
//!   stores, and so the datapath, keep the last known state.

mod cache;
mod client;
mod node;

use std::{fmt::Debug, hash::Hash, path::PathBuf};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Node, Service as K8sService},
    discovery::v1::EndpointSlice as K8sEndpointSlice,
};
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use self::cache::{Converter, Notes};
pub use self::node::{TO_BE_DELETED_TAINT, ZONE_LABEL, hostname, node_state};
use super::{
    convert::{self, Converted},
    snapshot::{Changes, NodeState, Snapshot},
};
use crate::model::{EndpointSlice, Kind, Service};

/// kube-proxy's selector for Services and EndpointSlices (`cmd/kube-proxy/app/server.go`):
/// objects another proxy implementation owns, and headless services' slices, are not watched.
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Options of the Kubernetes source.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    /// A kubeconfig file; without it, `KUBECONFIG`, `~/.kube/config`, then the in-cluster
    /// service account.
    pub kubeconfig: Option<PathBuf>,
}

/// Why the Kubernetes source could not start or run.
#[derive(Debug, Error)]
pub enum KubeError {
    #[error("reading kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no cluster configuration found (KUBECONFIG, ~/.kube/config, or the in-cluster service \
         account); give --kubeconfig, or --manifests for standalone mode"
    )]
    Infer(#[from] kube::config::InferConfigError),
    #[error("creating the API client")]
    Client(#[from] kube::Error),
    #[error("the Kubernetes source needs this node's name: give --node-name or NODE_NAME")]
    NoNodeName,
    #[error("the {0} watch stopped")]
    WatchStopped(&'static str),
}

/// The running watches and what the agent has converted from them.
pub struct KubeSource {
    node_name: String,
    services: Store<K8sService>,
    slices: Store<K8sEndpointSlice>,
    nodes: Store<Node>,
    service_objects: Converter<Service>,
    slice_objects: Converter<Option<EndpointSlice>>,
    /// Last reported node state, to log changes once.
    last_node: Option<NodeState>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts a watcher and reflector for `api`; each event is signalled on `changes`.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    changes: Changes,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => crate::metrics::global().watch_relisted(what),
                Ok(watcher::Event::InitApply(obj)) => record_change(what, &obj),
                Ok(watcher::Event::Apply(obj) | watcher::Event::Delete(obj)) => {
                    record_change(what, &obj);
                    if std::mem::take(&mut failing) {
                        info!("watching {what} again");
                    }
                    changes.notify_one();
                }
                Ok(watcher::Event::InitDone) => {
                    if std::mem::take(&mut failing) {
                        info!("watching {what} again");
                    }
                    changes.notify_one();
                }
                Err(e) => {
                    crate::metrics::global().watch_restarted(what);
                    // One line per outage; the watcher retries with backoff meanwhile.
                    if !std::mem::replace(&mut failing, true) {
                        warn!(
                            "watching {what}: {e}; retrying, the datapath keeps the last known state"
                        );
                    }
                }
            }
        }
    });
    (store, task)
}

/// Counts a Service or EndpointSlice change in kube-proxy's change metrics, with the
/// EndpointSlice's `last-change-trigger-time` for the network programming latency.
fn record_change<K: Resource>(what: &str, obj: &K) {
    let metrics = crate::metrics::global();
    match what {
        "services" => metrics.service_changed(),
        "endpointslices" => metrics.endpoints_changed(
            obj.meta()
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::metrics::TRIGGER_TIME_ANNOTATION))
                .and_then(|t| crate::metrics::parse_trigger_time(t)),
        ),
        _ => {}
    }
}

impl KubeSource {
    /// Connects and starts the three watches. Returns before the first lists complete: see
    /// [`KubeSource::ready`].
    pub async fn start(
        opts: &KubeOptions,
        node_name: Option<&str>,
        changes: Changes,
    ) -> Result<Self, KubeError> {
        let node_name = node_name.ok_or(KubeError::NoNodeName)?.to_owned();
        let client = client::client(opts).await?;
        let selected = watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
        let (services, t1) = watch(
            Api::<K8sService>::all(client.clone()),
            selected.clone(),
            "services",
            changes.clone(),
        );
        let (slices, t2) = watch(
            Api::<K8sEndpointSlice>::all(client.clone()),
            selected,
            "endpointslices",
            changes.clone(),
        );
        let (nodes, t3) = watch(
            Api::<Node>::all(client),
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
            "this node",
            changes,
        );
        info!(node = %node_name, "watching services, endpointslices and this node");
        Ok(Self {
            node_name,
            services,
            slices,
            nodes,
            service_objects: Converter::new(Kind::Service),
            slice_objects: Converter::new(Kind::EndpointSlice),
            last_node: None,
            tasks: vec![t1, t2, t3],
        })
    }

    /// Resolves when every store holds a complete list.
    pub async fn ready(&self) -> Result<(), KubeError> {
        self.services
            .wait_until_ready()
            .await
            .map_err(|_| KubeError::WatchStopped("services"))?;
        self.slices
            .wait_until_ready()
            .await
            .map_err(|_| KubeError::WatchStopped("endpointslices"))?;
        self.nodes
            .wait_until_ready()
            .await
            .map_err(|_| KubeError::WatchStopped("node"))?;
        Ok(())
    }

    /// The stores' current content as model objects, plus this node's state.
    pub fn snapshot(&mut self) -> Snapshot {
        let mut notes = Notes::default();
        let services = self.service_objects.update(
            &self.services.state(),
            // The API server allocates cluster IPs, so a Service without one is headless or
            // ExternalName, not a mistake.
            |s| convert::service(s, None, false),
            &mut notes,
        );
        let slices = self
            .slice_objects
            .update(
                &self.slices.state(),
                |s| convert::endpoint_slice(s).map(Converted::from),
                &mut notes,
            )
            .into_iter()
            .flatten()
            .collect();
        let node = self
            .nodes
            .state()
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some(self.node_name.as_str()));
        let state = node_state(node.as_deref());
        if self.last_node.as_ref() != Some(&state) {
            match (&node, &state) {
                (None, _) => warn!(
                    node = %self.node_name,
                    "no Node object of this name: /healthz reports nodeEligible false and \
                     topology hints are ignored"
                ),
                (Some(_), s) => info!(
                    node = %self.node_name,
                    zone = s.zone.as_deref().unwrap_or("<none>"),
                    eligible = s.eligible,
                    internal_ips = ?s.internal_ips,
                    "node state"
                ),
            }
            self.last_node = Some(state.clone());
        }
        Snapshot {
            services,
            slices,
            problems: notes.problems,
            warnings: notes.warnings,
            node: Some(state),
        }
    }
}

#[cfg(test)]
mod tests;
