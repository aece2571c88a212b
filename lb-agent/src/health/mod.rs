//! Health endpoints with kube-proxy's contracts: the proxy's own `/healthz` and `/livez`
//! ([`proxy`], kube-proxy's `proxy_health.go`) and the per-service `healthCheckNodePort`
//! servers ([`service`], kube-proxy's `service_health.go`).

pub mod proxy;
pub mod service;

/// A plain HTTP/1.1 `GET` for the servers' tests: the whole response, status line included.
#[cfg(test)]
pub(crate) async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
