//! The sidecar (`redfire-sidecar`): the data plane that runs beside every
//! service, and the same binary as the gateway at the edge. It stands on the
//! shared language in `crate::mesh` and never imports `crate::control`.
//!
//! Assembly and settings, at the top:
//! - [`server`] — starts identity, discovery, registration, the listeners and
//!   the drain; [`config`] — every setting; [`admin`] and [`metrics`] — the
//!   admin port and Prometheus.
//!
//! The request paths, top-down:
//! - [`outbound`] — the app calls 127.0.0.1; the sidecar picks a peer
//!   ([`outbound::upstreams`], balancing, breakers, retries) and forwards
//!   over mTLS;
//! - [`inbound`] — mTLS in, policy, the app on 127.0.0.1, app health checks;
//! - [`gateway`] — gateway mode: the external ingress with its route table,
//!   gRPC-Web, transcoding and the WebSocket topic hub;
//! - [`policy`] and [`ratelimit`] — the policy language compiled and
//!   enforced: service authorization, JWT, RBAC, rate limits;
//! - [`shared`] — what the paths share: body adapters, error answers, the
//!   upgrade tunnel, trace context;
//! - [`transport`] — mTLS between sidecars, the workload credentials, the
//!   channel to control.
//!
//! The sidecar's client of control: [`control_client`] — its identity
//! (certificates), its registration (lease and health) and discovery (the
//! registry Watch feeding [`outbound::upstreams`]).

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
