//! CORS for browser clients (gRPC-Web and plain HTTP): preflight answers
//! and response headers for the configured origins only.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Empty};

use crate::sidecar::Body;

/// Response headers browsers may read (gRPC-Web reads the status from them).
const EXPOSE: &str = "grpc-status, grpc-message, grpc-status-details-bin, x-request-id";
/// Request headers browsers may send (gRPC-Web's, plus the usual ones).
const ALLOW_HEADERS: &str =
    "content-type, x-grpc-web, x-user-agent, grpc-timeout, authorization, x-request-id, keep-alive, cache-control";

/// The allowed origins.
#[derive(Clone, Debug, Default)]
pub struct Cors {
    origins: Vec<String>,
}

impl Cors {
    /// Allows `origins` (`*` allows any).
    pub fn new(origins: Vec<String>) -> Self {
        Cors { origins }
    }

    /// The request's `Origin` if it is allowed.
    pub fn allowed(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let o = origin.to_str().ok()?;
        self.origins.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(o)).then(|| origin.clone())
    }

    /// The answer to a preflight (`OPTIONS` with `Access-Control-Request-Method`),
    /// or `None` when the request is not one.
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Response<Body>> {
        if method != Method::OPTIONS || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
            return None;
        }
        let mut r = Response::new(Empty::new().map_err(|n| match n {}).boxed_unsync());
        match self.allowed(headers) {
            Some(origin) => {
                *r.status_mut() = StatusCode::NO_CONTENT;
                let h = r.headers_mut();
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
                h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
                h.insert(header::VARY, HeaderValue::from_static("origin"));
            }
            None => *r.status_mut() = StatusCode::FORBIDDEN,
        }
        Some(r)
    }

    /// Adds the CORS headers to an actual response when the origin is allowed.
    pub fn decorate(&self, origin: Option<HeaderValue>, headers: &mut HeaderMap) {
        if let Some(origin) = origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE));
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_origins_pass() {
        let cors = Cors::new(vec!["https://app.example.com".into()]);
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_static("https://app.example.com"));
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("POST"));
        let ok = cors.preflight(&Method::OPTIONS, &h).unwrap();
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        assert_eq!(ok.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert_eq!(cors.preflight(&Method::OPTIONS, &h).unwrap().status(), StatusCode::FORBIDDEN);
        assert!(cors.allowed(&h).is_none());
        assert!(cors.preflight(&Method::POST, &h).is_none());
    }
}
