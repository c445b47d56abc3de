//! One gateway request, in order: CORS preflight → header count → path
//! normalised (`%2e%2e`, `//`, `..` resolved: the path routed, authorised
//! and forwarded is one path) → the WebSocket hub (an upgrade on the hub
//! path goes to [`Hub::accept`]) → route lookup (unknown → 404 with a JSON
//! body) → `X-Request-Id`, client IP (through `trusted_hops` proxies),
//! `X-Forwarded-For`, `Forwarded` → the gateway's policy on the client's
//! path ([`Policy::enforce_on_route`]: JWT, RBAC, verified claims as user
//! headers, rate limits by route) → path rewrite and request header edits
//! → gRPC-Web to gRPC (or, on a `transcode = true` route, HTTP/JSON to
//! gRPC: [`transcode`]) → the mesh's outbound path
//! ([`Outbound::handle_with`]: discovery, balancing, retries, breakers,
//! mTLS) with the route's subset, timeout and retry policy → response
//! header edits, gRPC-Web framing, CORS → per-route metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::sidecar::Body;
use crate::sidecar::gateway::Routes;
use crate::sidecar::gateway::cors::Cors;
use crate::sidecar::gateway::grpc_web;
use crate::sidecar::gateway::hub::Hub;
use crate::sidecar::gateway::metrics::{self, GatewayMetrics};
use crate::sidecar::gateway::respond::{REQUEST_ID, json_error};
use crate::sidecar::gateway::transcode::{self, table::Table};
use crate::sidecar::outbound::proxy::{Outbound, Target};
use crate::sidecar::outbound::retry::RetryPolicy;
use crate::sidecar::policy::{Policy, Refused, path};
use crate::sidecar::ratelimit::key;
use crate::sidecar::shared::errors::ProxyError;

/// What a gateway request needs, shared by every connection.
#[derive(Debug)]
pub struct Gateway {
    /// The route table's source (tables are swapped whole on reload).
    pub routes: Routes,
    /// The mesh's outbound path.
    pub outbound: Arc<Outbound>,
    /// The gateway's own policy (its service's document from control):
    /// JWT, RBAC and rate limits on the paths clients call.
    pub policy: Arc<Policy>,
    /// Per-route metrics.
    pub metrics: GatewayMetrics,
    /// CORS origins.
    pub cors: Cors,
    /// Proxies in front whose `X-Forwarded-For`/`Forwarded` are kept.
    pub trusted_hops: usize,
    /// Headers per request at most. HTTP/1.1 is cut by hyper before this
    /// point; HTTP/2 only bounds the header list's size, so the count is
    /// checked here.
    pub max_headers: usize,
    /// HTTP/JSON → gRPC bindings (`gateway_descriptors`), when configured.
    pub transcode: Option<Arc<ArcSwap<Table>>>,
    /// The WebSocket topic hub (`None`: off; upgrades pass through to routes).
    pub hub: Option<Arc<Hub>>,
}

/// Facts about the client connection.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    /// The TCP peer.
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl Gateway {
    /// Handles one request from a client.
    pub async fn handle(&self, mut req: Request<Incoming>, client: Client) -> Response<Body> {
        let started = Instant::now();
        if let Some(r) = self.cors.preflight(req.method(), req.headers()) {
            return r;
        }
        if req.headers().len() > self.max_headers {
            let id = HeaderValue::from_static("-");
            let msg = format!("more than {} request headers", self.max_headers);
            let r = json_error(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too_many_headers", &msg, &id);
            self.metrics.observe("none", r.status(), started.elapsed());
            return r;
        }
        let origin = self.cors.allowed(req.headers());
        if let Err(e) = normalise_path(&mut req) {
            let id = HeaderValue::from_static("-");
            let mut r = json_error(StatusCode::BAD_REQUEST, "bad_path", &e, &id);
            self.cors.decorate(origin, r.headers_mut());
            self.metrics.observe("none", r.status(), started.elapsed());
            return r;
        }
        let request_id = match req.headers().get(REQUEST_ID) {
            Some(v) if !v.is_empty() && v.len() <= 200 => v.clone(),
            _ => {
                let id = HeaderValue::from_str(&new_request_id()).unwrap_or(HeaderValue::from_static("0"));
                req.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        if let Some(hub) = self.hub.as_ref().filter(|h| h.wants(&req)) {
            let mut r = hub.accept(req, &request_id).await;
            r.headers_mut().insert(REQUEST_ID, request_id);
            self.metrics.observe("ws-hub", r.status(), started.elapsed());
            return r;
        }
        let host = host_of(&req);
        let table = self.routes.synced().await;
        let Some(matched) = table.find(host.as_deref(), req.method(), req.uri().path(), req.headers()) else {
            let mut r = json_error(
                StatusCode::NOT_FOUND,
                "route_not_found",
                &format!("no route for {} {}", req.method(), req.uri().path()),
                &request_id,
            );
            self.cors.decorate(origin, r.headers_mut());
            self.metrics.observe("none", r.status(), started.elapsed());
            return r;
        };
        let route = matched.route;
        let client_ip = key::client_ip(req.headers(), client.addr.ip(), self.trusted_hops as u32);
        forwarded_headers(req.headers_mut(), client, host.as_deref(), self.trusted_hops);
        let web = grpc_web::flavour(req.headers());
        let (mut parts, body) = req.into_parts();
        if let Err(refused) = self.policy.enforce_on_route(&mut parts, None, client_ip, Some(&route.name)).await {
            let label = metrics::RouteLabel { route: route.name.clone() };
            match &refused {
                Refused::Policy(_) => self.metrics.auth_failures.get_or_create(&label).inc(),
                Refused::Limited(_) => self.metrics.limited.get_or_create(&label).inc(),
            };
            let grpc = crate::sidecar::is_grpc(&parts.headers);
            let mut r = match refused {
                Refused::Policy(e) if !grpc => policy_error(&e, &request_id),
                refused => refused.respond(grpc),
            };
            if let Some(flavour) = web {
                r = grpc_web::from_grpc(r, flavour, &grpc_web::suffix(&parts.headers));
            }
            r.headers_mut().insert(REQUEST_ID, request_id);
            self.cors.decorate(origin, r.headers_mut());
            self.metrics.observe(&route.name, r.status(), started.elapsed());
            return r;
        }
        let mut req = Request::from_parts(parts, body);
        let query = req.uri().query().map(|q| q.to_string());
        let path = match (query, matched.path.contains('?')) {
            (Some(q), true) => format!("{}&{q}", matched.path),
            (Some(q), false) => format!("{}?{q}", matched.path),
            (None, _) => matched.path,
        };
        match path.parse::<Uri>() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => {
                let r =
                    json_error(StatusCode::BAD_REQUEST, "bad_path", "rewritten path is not a valid URI", &request_id);
                self.metrics.observe(&route.name, r.status(), started.elapsed());
                return r;
            }
        }
        route.request_headers.apply(req.headers_mut());
        let target = Target {
            subset: route.subset.clone(),
            timeout: route.timeout,
            retry: route.retry_attempts.map(|n| RetryPolicy { max_attempts: n, ..RetryPolicy::default() }),
        };
        let mut resp = match web {
            Some(flavour) => {
                let suffix = grpc_web::suffix(req.headers());
                let req = grpc_web::to_grpc(req.map(|b| b.map_err(Into::into).boxed_unsync()), flavour);
                let resp = self.outbound.handle_with(Some(&route.service), req, &target).await;
                grpc_web::from_grpc(resp, flavour, &suffix)
            }
            // gRPC and gRPC-Web are never transcoded.
            None if route.transcode && !crate::sidecar::is_grpc(req.headers()) => match &self.transcode {
                Some(table) => {
                    let table = table.load_full();
                    let req = req.map(|b| b.map_err(Into::into).boxed_unsync());
                    transcode::handle(&table, req, &self.outbound, &route.service, &target, &request_id).await
                }
                None => {
                    let msg = "transcoding route, but the gateway has no gateway_descriptors";
                    json_error(StatusCode::NOT_FOUND, "NOT_FOUND", msg, &request_id)
                }
            },
            None => self.outbound.handle_with(Some(&route.service), req, &target).await,
        };
        route.response_headers.apply(resp.headers_mut());
        resp.headers_mut().insert(REQUEST_ID, request_id);
        self.cors.decorate(origin, resp.headers_mut());
        self.metrics.observe(&route.name, resp.status(), started.elapsed());
        resp
    }
}

/// `Host` (HTTP/1.1) or `:authority` (HTTP/2).
fn host_of<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(String::from))
}

/// Replaces the request's path with its normalised form (see
/// [`path::normalise`]), keeping the query.
fn normalise_path<B>(req: &mut Request<B>) -> Result<(), String> {
    let Some(pq) = path::normalise_uri(req.uri()).map_err(|e| e.to_string())?.1 else {
        return Ok(());
    };
    let mut uri = req.uri().clone().into_parts();
    uri.path_and_query = Some(pq.parse().map_err(|_| "the normalised path is not a valid URI".to_string())?);
    *req.uri_mut() = Uri::from_parts(uri).map_err(|_| "the normalised path is not a valid URI".to_string())?;
    Ok(())
}

/// A policy refusal as the gateway's JSON error (keeping `WWW-Authenticate`).
fn policy_error(e: &ProxyError, request_id: &HeaderValue) -> Response<Body> {
    let (status, _) = e.codes();
    let code = match e {
        ProxyError::Unauthenticated(_) => "unauthenticated",
        ProxyError::PermissionDenied(_) => "permission_denied",
        ProxyError::BadRequest(_) => "bad_request",
        ProxyError::NoPolicy => "policy_not_loaded",
        _ => "refused",
    };
    let mut r = json_error(status, code, &e.to_string(), request_id);
    if let Some(v) = e.respond(false).headers().get(header::WWW_AUTHENTICATE) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v.clone());
    }
    r
}

/// A 128-bit random id in hex.
fn new_request_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// Appends this hop to `X-Forwarded-For` and `Forwarded` (RFC 7239). With
/// no trusted proxy in front, what the client sent is dropped first: a
/// client could put anything there.
pub fn forwarded_headers(headers: &mut HeaderMap, client: Client, host: Option<&str>, trusted_hops: usize) {
    let ip = client.addr.ip();
    if trusted_hops == 0 {
        headers.remove("x-forwarded-for");
        headers.remove(header::FORWARDED);
    }
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    let node = if ip.is_ipv6() { format!("\"[{ip}]\"") } else { ip.to_string() };
    let proto = if client.tls { "https" } else { "http" };
    let mut hop = format!("for={node};proto={proto}");
    if let Some(h) = host.filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b';' && b != b',')) {
        hop.push_str(&format!(";host=\"{h}\""));
    }
    let fwd = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {hop}"),
        _ => hop,
    };
    if let Ok(v) = HeaderValue::from_str(&fwd) {
        headers.insert(header::FORWARDED, v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(if client.tls { "https" } else { "http" }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client { addr: "203.0.113.7:5000".parse().unwrap(), tls: true }
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced_trusted_ones_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=1.2.3.4"));
        forwarded_headers(&mut h, client(), Some("api.example.com"), 0);
        assert_eq!(h["x-forwarded-for"], "203.0.113.7");
        assert_eq!(h[header::FORWARDED], "for=203.0.113.7;proto=https;host=\"api.example.com\"");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        forwarded_headers(&mut h, client(), None, 1);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 203.0.113.7");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
