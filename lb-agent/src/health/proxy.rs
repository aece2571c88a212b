//! `/healthz` and `/livez` with kube-proxy's contract (`pkg/proxy/healthcheck/proxy_health.go`):
//! status 200 or 503, `Content-Type: application/json` and `X-Content-Type-Options: nosniff`,
//! JSON bodies with `lastUpdated` (the current time while healthy, as kube-proxy reports it for
//! compatibility), `currentTime`, `healthy` and the per-family `status`; `/healthz` adds
//! `nodeEligible` and answers 503 when this node's Node object is being deleted (or tainted for
//! deletion by the cluster autoscaler), so load balancers stop sending to the node first.
//!
//! One deliberate difference: kube-proxy counts itself healthy while starting, before it has
//! programmed anything; `/healthz` here answers 503 until the first full sync, so a DaemonSet
//! pod turns Ready only once its maps serve the cluster's services (a rolling update then never
//! moves on to the next node too early). `/livez` keeps kube-proxy's rule, so an agent waiting
//! for an unreachable API server is not restarted for it.

use std::{
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
    node_eligible: bool,
}

/// A snapshot of the health state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Everything is programmed, and no change has waited longer than the health timeout.
    pub synced: bool,
    /// No change has waited longer than the health timeout (kube-proxy's "healthy"; true while
    /// starting).
    pub live: bool,
    /// This node may receive traffic (its Node object is not being deleted).
    pub node_eligible: bool,
    /// When everything seen was last programmed.
    pub last_updated: Option<SystemTime>,
}

/// Shared health state: the sync loop writes it, the HTTP server reads it.
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<Mutex<Inner>>,
    timeout: Duration,
}

impl Health {
    /// Health that turns 503 when a change waits longer than `timeout` to be programmed.
    pub fn new(timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                last_updated: None,
                pending_since: None,
                // Eligible until a Node object says otherwise, as kube-proxy while starting.
                node_eligible: true,
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

    /// Whether this node may receive traffic: false while its Node object is being deleted.
    pub fn set_node_eligible(&self, eligible: bool) {
        self.lock().node_eligible = eligible;
    }

    /// The whole health state now.
    pub fn snapshot(&self) -> Status {
        let inner = self.lock();
        let overdue = inner
            .pending_since
            .is_some_and(|since| since.elapsed() > self.timeout);
        Status {
            synced: inner.last_updated.is_some() && !overdue,
            live: !overdue,
            node_eligible: inner.node_eligible,
            last_updated: inner.last_updated,
        }
    }
}

/// RFC 3339 with nanoseconds, as Go marshals a `time.Time`.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// Go's zero `time.Time`, which kube-proxy reports before its first update.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn respond(health: &Health, with_node: bool) -> impl IntoResponse + use<> {
    let status = health.snapshot();
    let now = SystemTime::now();
    let (ok, proxier_healthy) = if with_node {
        (status.synced && status.node_eligible, status.synced)
    } else {
        (status.live, status.live)
    };
    // While healthy kube-proxy reports the current time as lastUpdated, for clients of releases
    // where it was the time of the last sync loop run.
    let last_updated = if ok {
        rfc3339(now)
    } else {
        status
            .last_updated
            .map_or_else(|| ZERO_TIME.to_owned(), rfc3339)
    };
    let family = serde_json::json!({
        "lastUpdated": status.last_updated.map_or_else(|| ZERO_TIME.to_owned(), rfc3339),
        "healthy": proxier_healthy,
    });
    let mut body = serde_json::json!({
        "lastUpdated": last_updated,
        "currentTime": rfc3339(now),
        "healthy": proxier_healthy,
        // One sync loop programs both families.
        "status": { "IPv4": family.clone(), "IPv6": family },
    });
    if with_node {
        body["nodeEligible"] = serde_json::Value::Bool(status.node_eligible);
    }
    let code = if ok {
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

/// Counts the answer in `kubeproxy_proxy_healthz_total` or `_livez_total` by its code.
fn counted(
    family: &crate::metrics::CodeFamily,
    response: impl IntoResponse,
) -> axum::response::Response {
    let response = response.into_response();
    family
        .get_or_create(&crate::metrics::CodeLabels {
            code: response.status().as_u16().to_string(),
        })
        .inc();
    response
}

async fn healthz(State(h): State<Health>) -> impl IntoResponse {
    counted(&crate::metrics::global().healthz_total, respond(&h, true))
}

async fn livez(State(h): State<Health>) -> impl IntoResponse {
    counted(&crate::metrics::global().livez_total, respond(&h, false))
}

/// The router, separate from the listener for tests.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(health)
}

/// Serves until the task is dropped.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_until_first_sync_then_healthy() {
        let h = Health::new(Duration::from_secs(60));
        assert!(!h.snapshot().synced);
        h.queued();
        h.updated();
        assert!(h.snapshot().synced);
        assert!(h.snapshot().last_updated.is_some());
    }

    #[test]
    fn an_update_pending_past_the_timeout_is_unhealthy() {
        let h = Health::new(Duration::from_millis(0));
        h.updated();
        h.queued();
        std::thread::sleep(Duration::from_millis(5));
        assert!(!h.snapshot().synced);
        h.updated();
        assert!(h.snapshot().synced);
    }

    #[test]
    fn live_while_starting_until_an_update_is_overdue() {
        let h = Health::new(Duration::from_millis(0));
        let s = h.snapshot();
        assert!(s.live && !s.synced, "{s:?}");
        h.queued();
        std::thread::sleep(Duration::from_millis(5));
        assert!(!h.snapshot().live);
        h.updated();
        assert!(h.snapshot().live && h.snapshot().synced);
    }

    use super::super::http_get as get;

    fn body(resp: &str) -> serde_json::Value {
        serde_json::from_str(resp.split_once("\r\n\r\n").unwrap().1).unwrap()
    }

    #[tokio::test]
    async fn a_node_being_deleted_fails_healthz_but_not_livez() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let h = Health::new(Duration::from_secs(60));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(axum::serve(listener, router(h.clone())).into_future());
            // Live while starting, not ready until the first sync.
            assert!(get(addr, "/livez").await.starts_with("HTTP/1.1 200"));
            let resp = get(addr, "/healthz").await;
            assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
            assert_eq!(body(&resp)["lastUpdated"], ZERO_TIME);
            h.updated();
            h.set_node_eligible(false);
            let resp = get(addr, "/healthz").await;
            assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
            let b = body(&resp);
            assert_eq!(b["nodeEligible"], false);
            assert_eq!(b["healthy"], true, "the proxy itself is healthy: {b}");
            assert_eq!(b["status"]["IPv6"]["healthy"], true, "{b}");
            assert!(get(addr, "/livez").await.starts_with("HTTP/1.1 200"));
            h.set_node_eligible(true);
            assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
            server.abort();
        })
        .await
        .expect("timed out");
    }

    #[tokio::test]
    async fn healthz_body_and_headers_follow_kube_proxy() {
        let h = Health::new(Duration::from_secs(60));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(axum::serve(listener, router(h.clone())).into_future());
        let fetch = |path: &'static str| get(addr, path);
        let resp = tokio::time::timeout(Duration::from_secs(10), fetch("/healthz"))
            .await
            .unwrap();
        assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
        h.updated();
        let resp = tokio::time::timeout(Duration::from_secs(10), fetch("/healthz"))
            .await
            .unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        let lower = resp.to_ascii_lowercase();
        assert!(lower.contains("content-type: application/json"), "{resp}");
        assert!(lower.contains("x-content-type-options: nosniff"), "{resp}");
        assert!(resp.contains("\"lastUpdated\":\"20"), "{resp}");
        assert!(resp.contains("\"nodeEligible\":true"), "{resp}");
        let resp = tokio::time::timeout(Duration::from_secs(10), fetch("/livez"))
            .await
            .unwrap();
        assert!(
            resp.starts_with("HTTP/1.1 200") && !resp.contains("nodeEligible"),
            "{resp}"
        );
        server.abort();
    }
}
