//! HTTP/JSON → gRPC transcoding for unary methods annotated with
//! `google.api.http`.
//!
//! Where it sits: [`forward::Gateway::handle`](crate::sidecar::gateway::forward)
//! finds the route first (routes pick the *service*), applies the route's
//! rewrite, and then, for a route with `transcode = true` and a request
//! that is neither gRPC nor gRPC-Web, matches method + rewritten path
//! against the [`table::Table`] (the table picks the *method*). No binding
//! → 404 JSON. The request becomes one gRPC frame ([`request`]) and takes
//! the same outbound path as any other (discovery, mTLS, retries, policy);
//! the answer is turned back into JSON ([`response`], [`status`]).
//!
//! Descriptors come from binary `FileDescriptorSet` files
//! (`protoc --include_imports --descriptor_set_out=…`), named by the
//! `gateway_descriptors` setting, loaded at start (a bad file fails the
//! start) and reloaded when one changes. Server reflection is not used.

pub mod request;
pub mod response;
pub mod status;
pub mod table;
pub mod template;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};

use crate::sidecar::gateway::metrics::Reloads;
use crate::sidecar::gateway::respond::json_error;
use crate::sidecar::outbound::proxy::{Outbound, Target};
use crate::sidecar::{Body, BoxError};
use table::Table;

/// Largest request body and response message transcoded, in bytes.
pub const MAX_BODY: usize = 4 << 20;

/// Loads the descriptor sets now (an error fails the start) and reloads
/// them when one changes until the returned task is aborted. A bad edit is
/// logged and the table in force stays.
pub fn watch(
    paths: Vec<PathBuf>,
    reloads: Reloads,
) -> Result<(Arc<ArcSwap<Table>>, tokio::task::JoinHandle<()>), String> {
    crate::sidecar::gateway::watch_files("transcoding descriptors", paths, reloads, |paths, version| {
        let t = Table::load(paths, version).map_err(|e| e.to_string())?;
        tracing::info!(version, bindings = t.bindings.len(), "gateway transcoding descriptors loaded");
        Ok(t)
    })
}

/// Transcodes one request (path already rewritten by the route) to
/// `service` and its answer back to JSON. Boxed: as a plain `async fn` its
/// borrows trip rustc's higher-ranked `Send` check in the listener.
pub fn handle<'a>(
    table: &'a Table,
    req: Request<Body>,
    outbound: &'a Outbound,
    service: &'a str,
    target: &'a Target,
    request_id: &'a HeaderValue,
) -> Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>> {
    Box::pin(transcode(table, req, outbound, service, target, request_id))
}

async fn transcode(
    table: &Table,
    req: Request<Body>,
    outbound: &Outbound,
    service: &str,
    target: &Target,
    request_id: &HeaderValue,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let Some((binding, vars)) = table.find(&parts.method, parts.uri.path()) else {
        let msg = format!("no HTTP binding for {} {}", parts.method, parts.uri.path());
        return json_error(StatusCode::NOT_FOUND, "NOT_FOUND", &msg, request_id);
    };
    let too_large = || {
        let msg = format!("request body larger than {MAX_BODY} bytes");
        json_error(StatusCode::PAYLOAD_TOO_LARGE, "RESOURCE_EXHAUSTED", &msg, request_id)
    };
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return too_large();
    }
    let bytes = match read(body, MAX_BODY).await {
        Ok((bytes, _)) => bytes,
        Err(ReadError::TooLarge) => return too_large(),
        Err(ReadError::Body(e)) => {
            return json_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &format!("body: {e}"), request_id);
        }
    };
    let msg = match request::message(binding, &vars, parts.uri.query(), &bytes) {
        Ok(m) => m,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &e, request_id),
    };
    let grpc = match grpc_request(parts, &binding.grpc_path, &prost::Message::encode_to_vec(&msg)) {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", &e, request_id),
    };
    let resp = outbound.handle_with(Some(service), grpc, target).await;
    response::to_json(resp, binding, MAX_BODY, request_id).await
}

/// The gRPC request: the client's headers (metadata) less those of its
/// HTTP framing, one uncompressed frame.
fn grpc_request(mut parts: http::request::Parts, path: &str, msg: &[u8]) -> Result<Request<Body>, String> {
    let mut frame = Vec::with_capacity(5 + msg.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(msg.len()).map_err(|_| "message too large")?.to_be_bytes());
    frame.extend_from_slice(msg);
    parts.method = Method::POST;
    parts.uri = path.parse::<Uri>().map_err(|e| format!("gRPC path {path:?}: {e}"))?;
    parts.version = Version::HTTP_2;
    for h in [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::CONNECTION, header::ACCEPT_ENCODING] {
        parts.headers.remove(h);
    }
    parts.headers.remove("grpc-encoding");
    parts.headers.remove("grpc-accept-encoding");
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
    let body = Full::new(Bytes::from(frame)).map_err(|n| match n {}).boxed_unsync();
    Ok(Request::from_parts(parts, body))
}

/// Why a body could not be read whole.
#[derive(Debug)]
pub enum ReadError {
    /// More than the limit.
    TooLarge,
    /// The stream failed.
    Body(BoxError),
}

/// A whole body (at most `limit` bytes) and its trailers.
pub async fn read(mut body: Body, limit: usize) -> Result<(Bytes, Option<HeaderMap>), ReadError> {
    let mut buf = bytes::BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Body)?;
        match frame.into_data() {
            Ok(data) => {
                if buf.len() + data.len() > limit {
                    return Err(ReadError::TooLarge);
                }
                buf.extend_from_slice(&data);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    Ok((buf.freeze(), trailers))
}
