//! Health endpoints with kube-proxy's contracts: the proxy's own `/healthz` and `/livez`
//! ([`proxy`], kube-proxy's `proxy_health.go`) and the per-service `healthCheckNodePort`
//! servers ([`service`], kube-proxy's `service_health.go`).

pub mod proxy;
pub mod service;
