//! Every input of the agent, as Cilium's `pkg/loadbalancer/reflectors`: manifest files
//! (`--manifests`, [`manifest`]) and the Kubernetes API (`--kubeconfig`, `KUBECONFIG` or the
//! in-cluster service account, [`kube`]). Each source watches *and* reads its own input, turns
//! objects into the model with [`convert`], and hands the agent a [`Snapshot`] rebuilt whole on
//! every sync; changes only wake the agent up ([`Changes`]). Neither source imports the other,
//! and neither decides anything about endpoints.

pub mod convert;
pub mod kube;
pub mod manifest;
pub mod snapshot;

use std::{path::PathBuf, time::Duration};

use thiserror::Error;

pub use self::snapshot::{Changes, NodeState, Snapshot};
use self::{
    kube::{KubeError, KubeOptions, KubeSource},
    manifest::{ManifestSource, ManifestWatch},
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
    Manifests(ManifestWatch),
    /// The API server's watches.
    Kubernetes(Box<KubeSource>),
}

impl Source {
    /// Starts the source; every change it sees wakes `changes`. `node_name` is the Node the
    /// Kubernetes source watches, and the one the manifest source takes from its directory.
    pub async fn start(
        opts: &SourceOptions,
        node_name: Option<&str>,
        changes: Changes,
    ) -> Result<Self, SourceError> {
        match opts {
            SourceOptions::Manifests(dir) => ManifestSource::new(dir)
                .with_node_name(node_name)
                .watch(changes)
                .map(Self::Manifests)
                .map_err(|source| SourceError::Watch {
                    path: dir.display().to_string(),
                    source,
                }),
            SourceOptions::Kubernetes(kube) => Ok(Self::Kubernetes(Box::new(
                KubeSource::start(kube, node_name, changes).await?,
            ))),
        }
    }

    /// Resolves once the source knows the whole current state (every initial list is done), so
    /// the first sync never programs a partial view over the maps of an earlier run.
    pub async fn ready(&self) -> Result<(), SourceError> {
        match self {
            Self::Manifests(_) => Ok(()),
            Self::Kubernetes(kube) => Ok(kube.ready().await?),
        }
    }

    /// The current state. An error leaves the caller's programmed state as it is. With
    /// `only_if_changed`, `None` when the source can tell that nothing changed since the last
    /// snapshot (the manifest files are all as they were), which spares a periodic resync the
    /// cost of a full rebuild.
    pub fn snapshot(&mut self, only_if_changed: bool) -> Result<Option<Snapshot>, SourceError> {
        match self {
            Self::Manifests(watch) => {
                watch
                    .source
                    .read(only_if_changed)
                    .map_err(|source| SourceError::Read {
                        path: watch.source.dir().display().to_string(),
                        source,
                    })
            }
            Self::Kubernetes(kube) => Ok(Some(kube.snapshot())),
        }
    }

    /// How often to rebuild without an event.
    pub fn resync_interval(&self) -> Duration {
        match self {
            Self::Manifests(_) => MANIFEST_RESYNC,
            Self::Kubernetes(_) => KUBE_RESYNC,
        }
    }

    /// How long a change waits for the rest of its burst.
    pub fn debounce(&self) -> Duration {
        match self {
            Self::Manifests(_) => MANIFEST_DEBOUNCE,
            Self::Kubernetes(_) => KUBE_DEBOUNCE,
        }
    }
}
