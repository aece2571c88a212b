//! Per-service health check node ports (`healthCheckNodePort`, for externalTrafficPolicy Local),
//! with kube-proxy's contract (`pkg/proxy/healthcheck/service_health.go`): any path; 200 when
//! this node has at least one local *ready* endpoint and the proxy is healthy, else 503; a JSON
//! body naming the service and the count. Load balancers use it to send traffic only to nodes
//! that have endpoints, and a node whose endpoints are only terminating answers 503 while still
//! forwarding to them.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
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
    /// One listener per address.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    fn abort(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Stops listening; returns once the sockets are closed, so the port can be bound again.
    async fn stop(self) {
        self.abort();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The running health check servers, one per node port.
#[derive(Default)]
pub struct HealthCheckServers {
    servers: BTreeMap<u16, Server>,
    /// The addresses the servers listen on; empty: every address (`[::]`).
    listening_on: Vec<IpAddr>,
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
    /// listening, gone ones stop, others update in place. They listen on `addresses` when some
    /// are given (kube-proxy: the node addresses `--nodeport-addresses` allows), else on every
    /// address of both families; when the addresses change, every server listens anew.
    pub async fn update(
        &mut self,
        wanted: &BTreeMap<u16, ServiceHealth>,
        proxy: &Health,
        addresses: &[IpAddr],
    ) {
        let moved = self.listening_on != addresses;
        let gone: Vec<u16> = self
            .servers
            .keys()
            .filter(|port| moved || !wanted.contains_key(port))
            .copied()
            .collect();
        for port in gone {
            if let Some(server) = self.servers.remove(&port) {
                server.stop().await;
                info!("stopped health check node port {port}");
            }
        }
        self.listening_on = addresses.to_vec();
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
            let any = [IpAddr::V6(Ipv6Addr::UNSPECIFIED)];
            let listen = if addresses.is_empty() {
                &any[..]
            } else {
                addresses
            };
            let shared = Shared {
                state: Arc::new(Mutex::new(health.clone())),
                proxy: proxy.clone(),
            };
            let app = Router::new().fallback(answer).with_state(shared.clone());
            let mut tasks = Vec::new();
            for ip in listen {
                let addr = SocketAddr::new(*ip, *port);
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(listener) => {
                        let app = app.clone();
                        tasks.push(tokio::spawn(async move {
                            let _ = axum::serve(listener, app).await;
                        }));
                    }
                    Err(e) => error!(
                        "health check node port {addr} of service {}: {e}",
                        health.service
                    ),
                }
            }
            if tasks.is_empty() {
                continue;
            }
            info!(
                "serving health check node port {port} for service {} on {}",
                health.service,
                if addresses.is_empty() {
                    "every address".to_owned()
                } else {
                    format!("{addresses:?}")
                }
            );
            self.servers.insert(*port, Server { shared, tasks });
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
            server.abort();
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
            servers.update(&wanted(2), &proxy, &[]).await;
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
            servers.update(&wanted(0), &proxy, &[]).await;
            let resp = get(port, "/").await;
            assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
            assert!(resp.contains(r#""localEndpoints":0"#), "{resp}");
            servers.update(&BTreeMap::new(), &proxy, &[]).await;
            assert_eq!(servers.ports().count(), 0);
        })
        .await
        .unwrap();
    }

    /// kube-proxy's health check servers listen on the `--nodeport-addresses` addresses only;
    /// when they change the servers move with them.
    #[tokio::test]
    async fn listens_on_the_given_addresses_only_and_follows_them() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let proxy = Health::new(Duration::from_secs(60));
            proxy.updated();
            let port = free_port();
            let wanted = BTreeMap::from([(
                port,
                ServiceHealth {
                    service: crate::model::NamespacedName {
                        namespace: "shop".into(),
                        name: "web".into(),
                    },
                    local_ready: 1,
                },
            )]);
            let connects = |ip: [u8; 4]| async move {
                tokio::net::TcpStream::connect(SocketAddr::from((ip, port)))
                    .await
                    .is_ok()
            };
            let mut servers = HealthCheckServers::default();
            servers
                .update(&wanted, &proxy, &["127.0.0.2".parse().unwrap()])
                .await;
            assert!(
                connects([127, 0, 0, 2]).await,
                "listens on the given address"
            );
            assert!(!connects([127, 0, 0, 3]).await, "and on no other");
            servers
                .update(&wanted, &proxy, &["127.0.0.3".parse().unwrap()])
                .await;
            assert!(connects([127, 0, 0, 3]).await, "moved to the new address");
            assert!(!connects([127, 0, 0, 2]).await, "left the old one");
            let resp = crate::health::http_get(([127, 0, 0, 3], port).into(), "/").await;
            assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
            servers.update(&wanted, &proxy, &[]).await;
            assert!(connects([127, 0, 0, 4]).await, "every address again");
        })
        .await
        .unwrap();
    }
}
