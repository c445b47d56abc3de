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
pub mod config;
pub mod control_client;
pub mod gateway;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod ratelimit;
pub mod server;
pub mod shared;
pub mod transport;

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
