//! The sidecar: the data plane that runs beside every service.
//!
//! So far this holds:
//! - [`identity`] — the workload identity: the sidecar's own key and its
//!   certificate from control's CA, renewed at 70 % of its lifetime;
//! - [`outbound`] — the pure building blocks of the outbound path (the app
//!   calls 127.0.0.1, the sidecar picks a peer and forwards over mTLS): load
//!   balancing, retries and circuit breaking. They do no I/O, so the
//!   listener, the tower layers and the binary can be assembled on top of
//!   them and each decision can be tested on its own with paused time;
//! - [`policy`] — service authorization, JWT and RBAC enforced at inbound,
//!   Watched from control;
//! - [`ratelimit`] — per-rule rate limits (four algorithms, in memory or
//!   shared through Redis, fail-open or fail-closed) and their responses;
//! - [`transport`] — mTLS between sidecars (TLS 1.3, SPIFFE identities);
//! - [`gateway`] — gateway mode: the external ingress with its route table.

pub mod admin;
pub mod body;
pub mod config;
pub mod discovery;
pub mod errors;
pub mod gateway;
pub mod health;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod ratelimit;
pub mod registration;
pub mod server;
pub mod trace;
pub mod transport;
pub mod upgrade;

/// A lazily connected channel to control for a long-lived watch stream
/// (discovery, policy, the gateway hub's event streams): 2 s to connect, no
/// Nagle delay, HTTP/2 keep-alive so a dead control is noticed within ~15 s.
pub fn control_channel(addr: &str) -> Result<tonic::transport::Channel, String> {
    Ok(tonic::transport::Endpoint::from_shared(addr.to_string())
        .map_err(|e| format!("control_addr: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(std::time::Duration::from_secs(10))
        .keep_alive_timeout(std::time::Duration::from_secs(5))
        .connect_lazy())
}

/// True for gRPC and gRPC-Web requests and responses
/// (`content-type: application/grpc[-web][+proto|...]`).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// Boxed error of streamed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type on both sides of the proxy: streamed, never collected.
pub type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;
