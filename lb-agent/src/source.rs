//! The two sources of services behind one interface: manifest files (`--manifests`) and the
//! Kubernetes API (`--kubeconfig`, `KUBECONFIG` or the in-cluster service account). Both hand
//! the agent a [`Snapshot`] of model objects, rebuilt whole on every sync, and signal changes on
//! a channel; neither decides anything about endpoints.

use std::{path::PathBuf, time::Duration};

use thiserror::Error;
use tokio::sync::mpsc;

use crate::{
    k8s::{KubeError, KubeOptions, KubeSource},
    manifest::ManifestSource,
    model::{EndpointSlice, Service},
};

/// How often the manifest directory is re-read even without a file event (a safety net for
/// missed events; unchanged files are not parsed again).
const MANIFEST_RESYNC: Duration = Duration::from_secs(2);
/// How long to wait after a file event for the rest of a burst.
const MANIFEST_DEBOUNCE: Duration = Duration::from_millis(50);
/// How often the desired state is rebuilt from the reflector stores without any event, as
/// kube-proxy's `--config-sync-period`-driven resync: a missed event cannot leave the datapath
/// wrong for longer.
const KUBE_RESYNC: Duration = Duration::from_secs(30);
/// How long to wait after an API event for the rest of a burst (a rollout changes many slices
/// within milliseconds); the whole state is rebuilt from the stores once.
const KUBE_DEBOUNCE: Duration = Duration::from_millis(100);

/// What the agent's own Node object says, when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    /// The `topology.kubernetes.io/zone` label, for topology hints.
    pub zone: Option<String>,
    /// False while the Node is being deleted: `/healthz` then fails so that load balancers
    /// drain the node first.
    pub eligible: bool,
}

/// Everything a source knows, converted to the model.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every usable Service.
    pub services: Vec<Service>,
    /// Every usable EndpointSlice (FQDN and unlabelled slices left out).
    pub slices: Vec<EndpointSlice>,
    /// Objects that could not be used: kind, namespace/name and reason. Reported every sync.
    pub problems: Vec<String>,
    /// Worth a look but used anyway; reported once per object version.
    pub warnings: Vec<String>,
    /// `None` when the source has no Node objects (manifest files).
    pub node: Option<NodeState>,
}

/// Which source to run.
#[derive(Clone, Debug)]
pub enum SourceOptions {
    /// A directory of Service and EndpointSlice manifests.
    Manifests(PathBuf),
    /// The Kubernetes API.
    Kubernetes(KubeOptions),
}

/// A source failed as a whole; a bad object is a [`Snapshot::problems`] entry instead.
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("watching the manifest directory {path}")]
    Watch {
        path: String,
        #[source]
        source: notify::Error,
    },
    #[error("reading the manifest directory {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Kube(#[from] KubeError),
}

/// A running source.
pub enum Source {
    /// Manifest files, re-read on file events.
    Manifests {
        /// The directory's objects.
        source: ManifestSource,
        /// Sends on the change channel while alive.
        _watcher: notify::RecommendedWatcher,
    },
    /// The API server's watches.
    Kubernetes(Box<KubeSource>),
}

/// Whether a file system event in the manifest directory may change what it holds. Reads and
/// opens are not changes: the watch also reports the agent's own reads of the directory, and
/// reacting to those would make every sync cause the next one.
fn changes_manifests(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, MetadataKind, ModifyKind};
    let kind_matters = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        // Unknown kinds, and queue overflows (which carry no path): look again.
        EventKind::Any | EventKind::Other => true,
    };
    kind_matters
        && (event.need_rescan()
            || event.paths.is_empty()
            || event.paths.iter().any(|p| {
                crate::manifest::is_manifest(p)
                    // A ConfigMap volume: kubelet's atomic writer swaps the `..data` symlink that
                    // every manifest links through.
                    || p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(".."))
            }))
}

impl Source {
    /// Starts the source; every change it sees is signalled on `changes`. `node_name` is the
    /// Node the Kubernetes source watches.
    pub async fn start(
        opts: &SourceOptions,
        node_name: Option<&str>,
        changes: mpsc::UnboundedSender<()>,
    ) -> Result<Self, SourceError> {
        match opts {
            SourceOptions::Manifests(dir) => {
                let path = dir.display().to_string();
                let mut watcher =
                    notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                        if res.is_ok_and(|event| changes_manifests(&event)) {
                            let _ = changes.send(());
                        }
                    })
                    .map_err(|source| SourceError::Watch {
                        path: path.clone(),
                        source,
                    })?;
                notify::Watcher::watch(&mut watcher, dir, notify::RecursiveMode::NonRecursive)
                    .map_err(|source| SourceError::Watch { path, source })?;
                Ok(Self::Manifests {
                    source: ManifestSource::new(dir),
                    _watcher: watcher,
                })
            }
            SourceOptions::Kubernetes(kube) => Ok(Self::Kubernetes(Box::new(
                KubeSource::start(kube, node_name, changes).await?,
            ))),
        }
    }

    /// Resolves once the source knows the whole current state (every initial list is done), so
    /// the first sync never programs a partial view over the maps of an earlier run.
    pub async fn ready(&self) -> Result<(), SourceError> {
        match self {
            Self::Manifests { .. } => Ok(()),
            Self::Kubernetes(kube) => Ok(kube.ready().await?),
        }
    }

    /// The current state. An error leaves the caller's programmed state as it is. With
    /// `only_if_changed`, `None` when the source can tell that nothing changed since the last
    /// snapshot (the manifest files are all as they were), which spares a periodic resync the
    /// cost of a full rebuild.
    pub fn snapshot(&mut self, only_if_changed: bool) -> Result<Option<Snapshot>, SourceError> {
        match self {
            Self::Manifests { source, .. } => {
                let report = source.reload().map_err(|e| SourceError::Read {
                    path: source.dir().display().to_string(),
                    source: e,
                })?;
                if only_if_changed && !report.changed {
                    return Ok(None);
                }
                let (services, slices, duplicates) = source.snapshot();
                Ok(Some(Snapshot {
                    services,
                    slices,
                    problems: report.problems.into_iter().chain(duplicates).collect(),
                    warnings: report.warnings,
                    node: None,
                }))
            }
            Self::Kubernetes(kube) => Ok(Some(kube.snapshot())),
        }
    }

    /// How often to rebuild without an event.
    pub fn resync_interval(&self) -> Duration {
        match self {
            Self::Manifests { .. } => MANIFEST_RESYNC,
            Self::Kubernetes(_) => KUBE_RESYNC,
        }
    }

    /// How long a change waits for the rest of its burst.
    pub fn debounce(&self) -> Duration {
        match self {
            Self::Manifests { .. } => MANIFEST_DEBOUNCE,
            Self::Kubernetes(_) => KUBE_DEBOUNCE,
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::{
        Event,
        event::{
            AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RemoveKind,
            RenameMode,
        },
    };

    use super::changes_manifests;

    fn event(kind: EventKind, paths: &[&str]) -> Event {
        paths
            .iter()
            .fold(Event::new(kind), |e, p| e.add_path(p.into()))
    }

    #[test]
    fn writes_renames_and_removals_of_manifests_count_reads_do_not() {
        let yaml = "/m/web.yaml";
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Content)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Remove(RemoveKind::File),
        ] {
            assert!(changes_manifests(&event(kind, &[yaml])), "{kind:?}");
        }
        // An atomic write: a hidden temporary file renamed to the manifest's name.
        assert!(changes_manifests(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &["/m/.web.yaml.tmp", yaml]
        )));
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ] {
            assert!(!changes_manifests(&event(kind, &["/m"])), "{kind:?}");
            assert!(!changes_manifests(&event(kind, &[yaml])), "{kind:?}");
        }
        assert!(
            !changes_manifests(&event(
                EventKind::Modify(ModifyKind::Data(DataChange::Content)),
                &["/m/.web.yaml.swp"]
            )),
            "an editor's swap file"
        );
        // A ConfigMap volume's update: `..data_tmp` renamed over `..data`.
        assert!(changes_manifests(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &["/m/..data_tmp", "/m/..data"]
        )));
    }
}
