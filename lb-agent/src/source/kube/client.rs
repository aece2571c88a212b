//! The API client: from `--kubeconfig`, else inferred as client-go does (`KUBECONFIG`,
//! `~/.kube/config`, then the in-cluster service account).

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use super::{KubeError, KubeOptions};

/// Builds a client; nothing is sent to the API server yet.
pub async fn client(opts: &KubeOptions) -> Result<Client, KubeError> {
    let config = match &opts.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?
        }
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}
