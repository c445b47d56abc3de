//! A [`Decision`] as response headers and as the answer the caller gets,
//! following `sidecar/shared/errors.rs`: an HTTP status, a trailers-only gRPC
//! status for gRPC callers, and an `x-redfire-reason` header.
//!
//! - limited: HTTP 429 / gRPC `RESOURCE_EXHAUSTED`, with `Retry-After` and
//!   `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`;
//! - store unavailable under fail-closed: HTTP 503 / gRPC `UNAVAILABLE` (not
//!   429: the client did nothing wrong), with `Retry-After: 1`;
//! - allowed: the `RateLimit-*` headers of the tightest rule, to add to the
//!   app's response.
//!
//! Header values are whole seconds, rounded up, so a client that waits
//! `Retry-After` seconds is admitted.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

use super::{Decision, Quota};
use crate::sidecar::Body;

pub use crate::sidecar::is_grpc;

fn secs(d: Duration) -> u64 {
    d.as_nanos().div_ceil(1_000_000_000) as u64
}

fn quota_headers(q: &Quota, h: &mut HeaderMap) {
    h.insert("ratelimit-limit", HeaderValue::from(q.limit));
    h.insert("ratelimit-remaining", HeaderValue::from(q.remaining));
    h.insert("ratelimit-reset", HeaderValue::from(secs(q.reset)));
}

impl Decision {
    /// Adds the `RateLimit-*` headers of an allowed request to the app's
    /// response (nothing when no rule applied or the store was bypassed).
    pub fn add_headers(&self, headers: &mut HeaderMap) {
        if let Decision::Allowed(Some(q)) = self {
            quota_headers(q, headers);
        }
    }

    /// The answer that replaces the app's for a rejected request; `None`
    /// when the request is allowed. `grpc`: see [`is_grpc`].
    pub fn respond(&self, grpc: bool) -> Option<Response<Body>> {
        let (status, code, reason, retry_after) = match self {
            Decision::Allowed(_) => return None,
            Decision::Limited { rule, retry_after, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                tonic::Code::ResourceExhausted,
                format!("rate limited by rule {rule}; retry after {} s", secs(*retry_after)),
                secs(*retry_after).max(1),
            ),
            Decision::StoreUnavailable { rule } => (
                StatusCode::SERVICE_UNAVAILABLE,
                tonic::Code::Unavailable,
                format!("rate-limit store unavailable and rule {rule} fails closed"),
                1,
            ),
        };
        let header = HeaderValue::from_str(&reason).unwrap_or_else(|_| HeaderValue::from_static("rate limited"));
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
        let h = r.headers_mut();
        h.insert("x-redfire-reason", header);
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
        if let Decision::Limited { quota, .. } = self {
            quota_headers(quota, h);
        }
        Some(r)
    }
}
