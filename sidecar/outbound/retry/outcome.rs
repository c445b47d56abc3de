//! What an attempt came to, read from the response head (or its absence).
//!
//! gRPC reports its status in trailers, except in a trailers-only response
//! (an error with no messages), where `grpc-status` is in the headers. Only
//! those, plain HTTP statuses and connect failures are known before the
//! response is passed on, and so only those can be retried.

use http::{HeaderMap, StatusCode};
use tonic::Code;

/// The outcome of one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A gRPC status, from `grpc-status`.
    Grpc(Code),
    /// An HTTP status of a non-gRPC request.
    Http(StatusCode),
    /// No connection to the endpoint: the request never left this sidecar.
    ConnectFailed,
}

impl Outcome {
    /// The outcome known from a response head, or `None` for a gRPC
    /// response whose status will come in trailers (see
    /// [`Outcome::from_trailers`]).
    ///
    /// A gRPC request answered with a non-200 status and no `grpc-status`
    /// (a proxy or load balancer in between answered) gets the code the
    /// gRPC spec assigns to that HTTP status.
    pub fn from_head(status: StatusCode, headers: &HeaderMap, grpc: bool) -> Option<Self> {
        if let Some(code) = grpc_status(headers) {
            return Some(Outcome::Grpc(code));
        }
        if !grpc {
            return Some(Outcome::Http(status));
        }
        (status != StatusCode::OK).then(|| Outcome::Grpc(code_for_http_status(status)))
    }

    /// The outcome from a gRPC response's trailers; `None` if they carry no
    /// `grpc-status`.
    pub fn from_trailers(trailers: &HeaderMap) -> Option<Self> {
        grpc_status(trailers).map(Outcome::Grpc)
    }

    /// Whether the endpoint failed to handle the request, as the outlier
    /// detector counts failures: no connection, a 5xx, or a gRPC code that
    /// means the server broke or was not there. An application's own answer
    /// (NOT_FOUND, INVALID_ARGUMENT, a 404) is not the endpoint's failure,
    /// and neither is shedding load (RESOURCE_EXHAUSTED, 429): the balancer
    /// steers away from that without ejecting.
    pub fn is_endpoint_failure(&self) -> bool {
        match self {
            Outcome::Grpc(code) => {
                matches!(
                    code,
                    Code::Unknown | Code::DeadlineExceeded | Code::Internal | Code::Unavailable | Code::DataLoss
                )
            }
            Outcome::Http(status) => status.is_server_error(),
            Outcome::ConnectFailed => true,
        }
    }
}

/// `grpc-status` is peer input: anything that is not a known code reads as
/// UNKNOWN, as gRPC clients do, rather than failing.
fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    headers.get("grpc-status").map(|v| Code::from_bytes(v.as_bytes()))
}

/// The gRPC spec's "HTTP to gRPC status code mapping".
fn code_for_http_status(status: StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|&(k, v)| (http::HeaderName::from_static(k), http::HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn trailers_only_grpc_status_is_read_from_headers() {
        let h = headers(&[("grpc-status", "14"), ("content-type", "application/grpc")]);
        assert_eq!(Outcome::from_head(StatusCode::OK, &h, true), Some(Outcome::Grpc(Code::Unavailable)));
    }

    #[test]
    fn grpc_status_in_trailers_is_pending_at_head() {
        assert_eq!(Outcome::from_head(StatusCode::OK, &HeaderMap::new(), true), None);
        let t = headers(&[("grpc-status", "0")]);
        assert_eq!(Outcome::from_trailers(&t), Some(Outcome::Grpc(Code::Ok)));
        assert_eq!(Outcome::from_trailers(&HeaderMap::new()), None);
    }

    #[test]
    fn garbage_grpc_status_reads_as_unknown() {
        let h = headers(&[("grpc-status", "banana")]);
        assert_eq!(Outcome::from_head(StatusCode::OK, &h, true), Some(Outcome::Grpc(Code::Unknown)));
    }

    #[test]
    fn grpc_request_answered_by_a_proxy_maps_http_status() {
        let none = HeaderMap::new();
        assert_eq!(Outcome::from_head(StatusCode::BAD_GATEWAY, &none, true), Some(Outcome::Grpc(Code::Unavailable)));
        assert_eq!(Outcome::from_head(StatusCode::NOT_FOUND, &none, true), Some(Outcome::Grpc(Code::Unimplemented)));
        assert_eq!(Outcome::from_head(StatusCode::IM_A_TEAPOT, &none, true), Some(Outcome::Grpc(Code::Unknown)));
    }

    #[test]
    fn plain_http_keeps_its_status() {
        let o = Outcome::from_head(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), false);
        assert_eq!(o, Some(Outcome::Http(StatusCode::SERVICE_UNAVAILABLE)));
    }

    #[test]
    fn endpoint_failures_are_the_endpoints_not_the_apps() {
        assert!(Outcome::Http(StatusCode::BAD_GATEWAY).is_endpoint_failure());
        assert!(!Outcome::Http(StatusCode::NOT_FOUND).is_endpoint_failure(), "a 404 is the app's answer");
        assert!(!Outcome::Http(StatusCode::TOO_MANY_REQUESTS).is_endpoint_failure());
        assert!(Outcome::Grpc(Code::Internal).is_endpoint_failure());
        assert!(Outcome::Grpc(Code::Unavailable).is_endpoint_failure());
        assert!(!Outcome::Grpc(Code::NotFound).is_endpoint_failure());
        assert!(!Outcome::Grpc(Code::ResourceExhausted).is_endpoint_failure());
        assert!(!Outcome::Grpc(Code::Ok).is_endpoint_failure());
        assert!(Outcome::ConnectFailed.is_endpoint_failure());
    }
}
