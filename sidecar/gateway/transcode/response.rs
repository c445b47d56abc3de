//! gRPC response → HTTP/JSON: the status from the trailers (or the
//! headers of a trailers-only answer); OK gives the one response message
//! as proto3 JSON (or its `response_body` field), anything else the mapped
//! HTTP status and a JSON error body.
//!
//! JSON choices: lowerCamelCase names, fields at their default value are
//! emitted (clients see every field), 64-bit integers as strings and enums
//! by name, as the proto3 JSON mapping says.

use bytes::{Buf, Bytes};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use prost_reflect::{DynamicMessage, SerializeOptions};

use crate::sidecar::Body;
use crate::sidecar::gateway::respond::json_error;
use crate::sidecar::gateway::transcode::table::Binding;
use crate::sidecar::gateway::transcode::{ReadError, read, status};

/// The HTTP/JSON answer for the gRPC response `resp` to `binding`.
pub async fn to_json(
    resp: Response<Body>,
    binding: &Binding,
    limit: usize,
    request_id: &HeaderValue,
) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let grpc = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    // Trailers-only: the status is in the headers and there is no body.
    if let Some(code) = grpc_status(&parts.headers) {
        return error_or_empty(code, &parts.headers, &parts.headers, binding, request_id);
    }
    if !grpc {
        let msg = format!("upstream answered HTTP {} without gRPC", parts.status.as_u16());
        return json_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &msg, request_id);
    }
    let (bytes, trailers) = match read(body, limit + 5).await {
        Ok((bytes, trailers)) => (bytes, trailers.unwrap_or_default()),
        Err(ReadError::TooLarge) => {
            let msg = format!("response larger than {limit} bytes");
            return json_error(StatusCode::BAD_GATEWAY, "RESOURCE_EXHAUSTED", &msg, request_id);
        }
        Err(ReadError::Body(e)) => {
            return json_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &format!("upstream: {e}"), request_id);
        }
    };
    let Some(code) = grpc_status(&trailers) else {
        return json_error(StatusCode::BAD_GATEWAY, "UNKNOWN", "upstream sent no grpc-status", request_id);
    };
    if code != 0 {
        return error_or_empty(code, &trailers, &parts.headers, binding, request_id);
    }
    let msg = match one_message(bytes) {
        Ok(m) => m,
        Err(e) => return json_error(StatusCode::BAD_GATEWAY, "INTERNAL", &e, request_id),
    };
    match json(binding, msg) {
        Ok(body) => ok(body, &parts.headers),
        Err(e) => json_error(StatusCode::BAD_GATEWAY, "INTERNAL", &e, request_id),
    }
}

fn grpc_status(h: &HeaderMap) -> Option<i32> {
    h.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|s| s.trim().parse().ok())
}

/// A non-OK status as a JSON error; OK in a trailers-only answer is an
/// empty message.
fn error_or_empty(
    code: i32,
    status_from: &HeaderMap,
    headers: &HeaderMap,
    binding: &Binding,
    request_id: &HeaderValue,
) -> Response<Body> {
    if code == 0 {
        return match json(binding, Bytes::new()) {
            Ok(body) => ok(body, headers),
            Err(e) => json_error(StatusCode::BAD_GATEWAY, "INTERNAL", &e, request_id),
        };
    }
    let http = status::http_status(code);
    let message = status_from.get("grpc-message").map(|v| status::decode_message(v.as_bytes())).unwrap_or_default();
    let mut r = json_error(http, status::code_name(code), &message, request_id);
    r.headers_mut().remove("x-redfire-reason");
    copy_headers(headers, r.headers_mut());
    r
}

/// The message bytes of a body holding exactly one uncompressed frame.
fn one_message(mut body: Bytes) -> Result<Bytes, String> {
    if body.len() < 5 {
        return Err("upstream sent no response message".into());
    }
    let flag = body.get_u8();
    let len = body.get_u32() as usize;
    if flag != 0 {
        return Err("upstream sent a compressed message the gateway cannot read".into());
    }
    if body.len() != len {
        return Err("upstream sent a truncated message or more than one".into());
    }
    Ok(body)
}

/// The message as proto3 JSON (its `response_body` field, if set).
fn json(binding: &Binding, msg: Bytes) -> Result<serde_json::Value, String> {
    let m = DynamicMessage::decode(binding.output.clone(), msg)
        .map_err(|e| format!("response is not a {}: {e}", binding.output.full_name()))?;
    let options = SerializeOptions::new().skip_default_fields(false);
    let value = m
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| format!("response to JSON: {e}"))?;
    Ok(match &binding.response_body {
        None => value,
        Some(f) => value.get(f.json_name()).cloned().unwrap_or(serde_json::Value::Null),
    })
}

fn ok(body: serde_json::Value, upstream: &HeaderMap) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))).map_err(|n| match n {}).boxed_unsync());
    copy_headers(upstream, r.headers_mut());
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The upstream's response metadata, less what belongs to gRPC framing.
fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    let own: Vec<_> = to.keys().cloned().collect();
    for (k, v) in from {
        let n = k.as_str();
        if n.starts_with("grpc-") || k == header::CONTENT_TYPE || k == header::CONTENT_LENGTH || k == header::TRAILER {
            continue;
        }
        if !own.contains(k) {
            to.append(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_uncompressed_frame() {
        assert_eq!(one_message(Bytes::from_static(b"\x00\x00\x00\x00\x02ab")).unwrap(), "ab");
        assert!(one_message(Bytes::from_static(b"\x01\x00\x00\x00\x02ab")).is_err());
        assert!(one_message(Bytes::from_static(b"\x00\x00\x00\x00\x03ab")).is_err());
        assert!(one_message(Bytes::from_static(b"\x00\x00\x00\x00\x01ab")).is_err());
        assert!(one_message(Bytes::new()).is_err());
    }
}
