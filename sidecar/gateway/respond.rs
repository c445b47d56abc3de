//! The gateway's own answers (a refusal, a bad path, no route): JSON with
//! the request id, used by the forwarding path, the hub's handshake and
//! transcoding alike.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::sidecar::Body;

/// Request id header, set when the client sent none.
pub const REQUEST_ID: &str = "x-request-id";

/// A JSON error answer from the gateway itself.
pub fn json_error(status: StatusCode, code: &str, message: &str, request_id: &HeaderValue) -> Response<Body> {
    let body = serde_json::json!({
        "error": { "code": code, "message": message, "status": status.as_u16() },
        "request_id": request_id.to_str().unwrap_or(""),
    });
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))).map_err(|n| match n {}).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(REQUEST_ID, request_id.clone());
    r.headers_mut().insert("x-redfire-reason", HeaderValue::from_static("gateway"));
    r
}
