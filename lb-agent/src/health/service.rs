//! Per-service health check node ports (`healthCheckNodePort`, for externalTrafficPolicy Local),
//! with kube-proxy's contract (`pkg/proxy/healthcheck/service_health.go`): any path; 200 when
//! this node has at least one local *ready* endpoint and the proxy is healthy, else 503; a JSON
//! body naming the service and the count. Load balancers use it to send traffic only to nodes
//! that have endpoints, and a node whose endpoints are only terminating answers 503 while still
//! forwarding to them.

use std::{
    collections::BTreeMap,
    net::{Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::IntoResponse,
};
use tracing::{error, info};

use super::proxy::Health;
use crate::model::ServiceHealth;

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<ServiceHealth>>,
    proxy: Health,
}

struct Server {
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

/// The running health check servers, one per node port.
#[derive(Default)]
pub struct HealthCheckServers {
    servers: BTreeMap<u16, Server>,
}

async fn answer(State(shared): State<Shared>) -> impl IntoResponse {
    let state = shared
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let proxy_healthy = shared.proxy.snapshot().synced;
    let body = serde_json::json!({
        "service": {"namespace": state.service.namespace, "name": state.service.name},
        "localEndpoints": state.local_ready,
        "serviceProxyHealthy": proxy_healthy,
    });
    let code = if state.local_ready > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let weight = HeaderValue::from(state.local_ready);
    (
        code,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::HeaderName::from_static("x-load-balancing-endpoint-weight"),
                weight,
            ),
        ],
        body.to_string(),
    )
}

impl HealthCheckServers {
    /// Makes the running servers match `wanted` (node port -> report): new ports start
    /// listening on every address of both families, gone ones stop, others update in place.
    pub async fn update(&mut self, wanted: &BTreeMap<u16, ServiceHealth>, proxy: &Health) {
        self.servers.retain(|port, server| {
            let keep = wanted.contains_key(port);
            if !keep {
                server.task.abort();
                info!("stopped health check node port {port}");
            }
            keep
        });
        for (port, health) in wanted {
            if let Some(server) = self.servers.get(port) {
                *server
                    .shared
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = health.clone();
                continue;
            }
            // `[::]` takes IPv4 too (v4-mapped) unless the host sets bindv6only.
            let addr = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), *port);
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    error!(
                        "health check node port {port} of service {}: {e}",
                        health.service
                    );
                    continue;
                }
            };
            let shared = Shared {
                state: Arc::new(Mutex::new(health.clone())),
                proxy: proxy.clone(),
            };
            let app = Router::new().fallback(answer).with_state(shared.clone());
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            info!(
                "serving health check node port {port} for service {}",
                health.service
            );
            self.servers.insert(*port, Server { shared, task });
        }
    }

    /// Ports currently served.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.servers.keys().copied()
    }
}

impl Drop for HealthCheckServers {
    fn drop(&mut self) {
        for server in self.servers.values() {
            server.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn get(port: u16, path: &str) -> String {
        crate::health::http_get(([127, 0, 0, 1], port).into(), path).await
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("[::]:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn answers_200_with_local_ready_endpoints_and_503_without() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let proxy = Health::new(Duration::from_secs(60));
            proxy.updated();
            let port = free_port();
            let service = crate::model::NamespacedName {
                namespace: "shop".into(),
                name: "web".into(),
            };
            let mut servers = HealthCheckServers::default();
            let wanted = |n| {
                BTreeMap::from([(
                    port,
                    ServiceHealth {
                        service: service.clone(),
                        local_ready: n,
                    },
                )])
            };
            servers.update(&wanted(2), &proxy).await;
            let resp = get(port, "/any/path").await;
            assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
            assert!(resp.contains(r#""localEndpoints":2"#), "{resp}");
            assert!(
                resp.contains(r#""namespace":"shop""#) && resp.contains(r#""name":"web""#),
                "{resp}"
            );
            assert!(resp.contains(r#""serviceProxyHealthy":true"#), "{resp}");
            let lower = resp.to_ascii_lowercase();
            assert!(lower.contains("content-type: application/json"), "{resp}");
            assert!(lower.contains("x-content-type-options: nosniff"), "{resp}");
            assert!(
                lower.contains("x-load-balancing-endpoint-weight: 2"),
                "{resp}"
            );
            servers.update(&wanted(0), &proxy).await;
            let resp = get(port, "/").await;
            assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
            assert!(resp.contains(r#""localEndpoints":0"#), "{resp}");
            servers.update(&BTreeMap::new(), &proxy).await;
            assert_eq!(servers.ports().count(), 0);
        })
        .await
        .unwrap();
    }
}
