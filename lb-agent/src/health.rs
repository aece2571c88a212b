//! `/healthz` and `/livez` with kube-proxy's contract (`pkg/proxy/healthcheck/proxy_health.go`):
//! 503 until the first full sync has programmed the maps, then 200 while no update has been
//! pending longer than the health timeout; JSON bodies with `lastUpdated` and `currentTime`.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

#[derive(Debug)]
struct Inner {
    last_updated: Option<SystemTime>,
    /// When the oldest change not yet programmed was seen.
    pending_since: Option<Instant>,
}

/// Shared health state: the sync loop writes it, the HTTP server reads it.
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<Mutex<Inner>>,
    timeout: Duration,
}

impl Health {
    pub fn new(timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                last_updated: None,
                pending_since: None,
            })),
            timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A change was seen that is not programmed yet.
    pub fn queued(&self) {
        self.lock().pending_since.get_or_insert_with(Instant::now);
    }

    /// Everything seen so far is programmed.
    pub fn updated(&self) {
        let mut inner = self.lock();
        inner.last_updated = Some(SystemTime::now());
        inner.pending_since = None;
    }

    /// `(healthy, lastUpdated)`.
    pub fn status(&self) -> (bool, Option<SystemTime>) {
        let inner = self.lock();
        let stale = inner
            .pending_since
            .is_some_and(|since| since.elapsed() > self.timeout);
        (inner.last_updated.is_some() && !stale, inner.last_updated)
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

fn respond(health: &Health, with_node: bool) -> impl IntoResponse + use<> {
    let (healthy, last) = health.status();
    let mut body = serde_json::json!({
        "lastUpdated": last.map(rfc3339).unwrap_or_default(),
        "currentTime": rfc3339(SystemTime::now()),
    });
    if with_node {
        // Standalone mode has no Node object that could be marked for deletion.
        body["nodeEligible"] = serde_json::Value::Bool(true);
    }
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body.to_string(),
    )
}

async fn healthz(State(h): State<Health>) -> impl IntoResponse {
    respond(&h, true)
}

async fn livez(State(h): State<Health>) -> impl IntoResponse {
    respond(&h, false)
}

/// The router, separate from the listener for tests.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(health)
}

/// Serves until the task is dropped.
pub async fn serve(addr: SocketAddr, health: Health) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(health)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_until_first_sync_then_healthy() {
        let h = Health::new(Duration::from_secs(60));
        assert!(!h.status().0);
        h.queued();
        h.updated();
        assert!(h.status().0);
        assert!(h.status().1.is_some());
    }

    #[test]
    fn an_update_pending_past_the_timeout_is_unhealthy() {
        let h = Health::new(Duration::from_millis(0));
        h.updated();
        h.queued();
        std::thread::sleep(Duration::from_millis(5));
        assert!(!h.status().0);
        h.updated();
        assert!(h.status().0);
    }

    #[tokio::test]
    async fn healthz_body_and_headers_follow_kube_proxy() {
        let h = Health::new(Duration::from_secs(60));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(axum::serve(listener, router(h.clone())).into_future());
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let resp = tokio::time::timeout(Duration::from_secs(10), get("/healthz"))
            .await
            .unwrap();
        assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
        h.updated();
        let resp = tokio::time::timeout(Duration::from_secs(10), get("/healthz"))
            .await
            .unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        let lower = resp.to_ascii_lowercase();
        assert!(lower.contains("content-type: application/json"), "{resp}");
        assert!(lower.contains("x-content-type-options: nosniff"), "{resp}");
        assert!(resp.contains("\"lastUpdated\":\"20"), "{resp}");
        assert!(resp.contains("\"nodeEligible\":true"), "{resp}");
        let resp = tokio::time::timeout(Duration::from_secs(10), get("/livez"))
            .await
            .unwrap();
        assert!(
            resp.starts_with("HTTP/1.1 200") && !resp.contains("nodeEligible"),
            "{resp}"
        );
        server.abort();
    }
}
