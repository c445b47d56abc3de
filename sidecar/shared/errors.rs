//! The one place where a proxy failure becomes a response: an HTTP status,
//! a gRPC status for gRPC callers (trailers-only), and an `x-redfire-reason`
//! header any caller can read.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

use crate::sidecar::Body;

/// Why the sidecar answered instead of the app.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    /// No such service in the registry.
    #[error("{0}")]
    UnknownService(String),
    /// The service has no endpoint that may take traffic.
    #[error("service {0:?} has no available endpoint")]
    NoEndpoints(String),
    /// The per-service concurrency limit is reached.
    #[error("{0}")]
    LimitReached(String),
    /// The request names no service (shared listener without Host).
    #[error("no service named: set Host/:authority to the service name")]
    NoService,
    /// Connecting to the peer sidecar failed.
    #[error("connect to {endpoint}: {reason}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The peer failed while the request was in flight.
    #[error("upstream {0}")]
    Upstream(String),
    /// The caller's deadline passed.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// This sidecar has no workload certificate (yet, or any more).
    #[error("no workload certificate: mTLS is refused until control issues one")]
    NoIdentity,
    /// No valid end-user credentials (policy: JWT).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Refused by service authorization or RBAC.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A request the policy cannot judge (e.g. a malformed path).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No policy from control yet: fail closed.
    #[error("policy not loaded from control yet")]
    NoPolicy,
    /// The app behind this sidecar did not answer.
    #[error("app: {0}")]
    App(String),
}

impl ProxyError {
    /// HTTP status and gRPC code.
    pub fn codes(&self) -> (StatusCode, tonic::Code) {
        match self {
            ProxyError::NoService | ProxyError::BadRequest(_) => {
                (StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument)
            }
            ProxyError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, tonic::Code::Unauthenticated),
            ProxyError::PermissionDenied(_) => (StatusCode::FORBIDDEN, tonic::Code::PermissionDenied),
            ProxyError::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, tonic::Code::DeadlineExceeded),
            ProxyError::Upstream(_) | ProxyError::App(_) => (StatusCode::BAD_GATEWAY, tonic::Code::Unavailable),
            _ => (StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable),
        }
    }

    /// The response a caller gets; gRPC callers get a trailers-only answer.
    pub fn respond(&self, grpc: bool) -> Response<Body> {
        let (status, code) = self.codes();
        let reason = self.to_string();
        let header = HeaderValue::from_str(&reason).unwrap_or_else(|_| HeaderValue::from_static("proxy error"));
        let mut r = if grpc {
            let mut r = Response::new(Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync());
            r.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
            r.headers_mut().insert("grpc-status", HeaderValue::from(code as i32));
            r.headers_mut().insert("grpc-message", header.clone());
            r
        } else {
            let mut r = Response::new(
                Full::new(Bytes::from(format!("{reason}\n"))).map_err(|never| match never {}).boxed_unsync(),
            );
            *r.status_mut() = status;
            r.headers_mut().insert("content-type", HeaderValue::from_static("text/plain; charset=utf-8"));
            r
        };
        if let ProxyError::Unauthenticated(why) = self {
            // RFC 6750 §3: the scheme, and why the token was refused.
            let value = format!("Bearer error=\"invalid_token\", error_description=\"{}\"", why.replace('"', "'"));
            if let Ok(v) = HeaderValue::from_str(&value) {
                r.headers_mut().insert("www-authenticate", v);
            }
        }
        r.headers_mut().insert("x-redfire-reason", header);
        r
    }
}
