//! The outbound request path: app → 127.0.0.1 listener → pick an endpoint of
//! the target service → HTTP/2 over mTLS to its sidecar.
//!
//! Per request, in order: name the service (the listener's upstream, or
//! Host/:authority on the shared listener) → concurrency limit → deadline
//! from `grpc-timeout` → balancer pick among endpoints the outlier detector
//! allows → pooled connection → forward with the remaining deadline →
//! outcome feeds the balancer (latency, overload) and the outlier detector →
//! retry (policy, budget, full-jitter backoff, inside the deadline) when the
//! attempt failed retryably and the body could be kept (64 KiB).
//! Bodies stream in both directions; nothing is buffered whole.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::sidecar::Body;
use crate::sidecar::is_grpc;
use crate::sidecar::metrics::Metrics;
use crate::sidecar::outbound::balance::{EndpointIdx, Feedback, PickContext};
use crate::sidecar::outbound::breaker::InFlight;
use crate::sidecar::outbound::pool::Pool;
use crate::sidecar::outbound::replay::{Replay, ReplayBody};
use crate::sidecar::outbound::retry::{Backoff, Decision, Outcome, RetryPolicy, RetryRequest};
use crate::sidecar::outbound::upstreams::{Upstream, Upstreams};
use crate::sidecar::shared::body::NonEmpty;
use crate::sidecar::shared::errors::ProxyError;
use crate::sidecar::shared::{trace, upgrade};

/// Marks a request that entered the mesh as HTTP/1.1, so the inbound side
/// hands it to the app as HTTP/1.1 again.
pub const HTTP1_MARK: &str = "x-redfire-http1";

/// Headers that belong to one HTTP/1.1 connection and never cross a hop.
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "proxy-authenticate"];

/// Per-request overrides a caller with routing of its own (the gateway's
/// route table) passes to [`Outbound::handle_with`]. The default is what the
/// plain sidecar listeners use: no subset, the caller's `grpc-timeout` only,
/// the default retry policy.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// Only endpoints whose instance metadata has this key = value
    /// (e.g. `version` = `2`).
    pub subset: Option<(String, String)>,
    /// A total timeout for the request; the earlier of it and the caller's
    /// `grpc-timeout` applies (and is forwarded as `grpc-timeout`).
    pub timeout: Option<Duration>,
    /// Retry policy instead of the default one.
    pub retry: Option<RetryPolicy>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Outbound {
    discovery: Arc<Upstreams>,
    pool: Pool,
    metrics: Arc<Metrics>,
    retry: RetryPolicy,
    backoff: Backoff,
    stream_idle_timeout: Duration,
}

impl Outbound {
    /// The outbound path over `discovery`, dialing through `pool`; a
    /// response stream silent for `stream_idle_timeout` is cut.
    pub fn new(discovery: Arc<Upstreams>, pool: Pool, metrics: Arc<Metrics>, stream_idle_timeout: Duration) -> Self {
        Outbound {
            discovery,
            pool,
            metrics,
            retry: RetryPolicy::default(),
            backoff: Backoff::default(),
            stream_idle_timeout,
        }
    }

    /// Handles one request from the app. `service` is fixed on per-upstream
    /// listeners and `None` on the shared one.
    pub async fn handle(&self, service: Option<&str>, req: Request<Incoming>) -> Response<Body> {
        self.handle_with(service, req, &Target::default()).await
    }

    /// [`Outbound::handle`] for any request body, with per-request overrides.
    pub async fn handle_with<B>(&self, service: Option<&str>, mut req: Request<B>, target: &Target) -> Response<Body>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<crate::sidecar::BoxError>,
    {
        let started = Instant::now();
        let grpc = is_grpc(req.headers());
        let named;
        let service = match service {
            Some(s) => Some(s),
            None => {
                named = authority_service(&req);
                named.as_deref()
            }
        };
        let span = trace::hop_span("outbound", service.unwrap_or_default(), req.headers(), req.uri().path());
        if let Some(span) = &span {
            trace::inject(span, req.headers_mut());
        }
        let upgrade = if req.version() < Version::HTTP_2 { upgrade::requested(req.headers()) } else { None };
        let resp = match (service, upgrade) {
            (Some(s), Some(protocol)) => Box::pin(self.upgrade(s, req, protocol, target.subset.as_ref()))
                .await
                .unwrap_or_else(|e| e.respond(grpc)),
            (Some(s), None) => self.forward(s, req, started, target).await.unwrap_or_else(|e| e.respond(grpc)),
            (None, _) => ProxyError::NoService.respond(grpc),
        };
        let resp = self.metrics.observe("outbound", service.unwrap_or_default(), resp, started.elapsed());
        if let Some(span) = &span {
            trace::record_status(span, resp.status());
        }
        resp
    }

    async fn forward<B>(
        &self,
        service: &str,
        req: Request<B>,
        started: Instant,
        target: &Target,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<crate::sidecar::BoxError>,
    {
        let upstream = self.discovery.upstream(service).await.map_err(|e| ProxyError::UnknownService(e.to_string()))?;
        let in_flight = upstream.limit.try_acquire().map_err(|e| ProxyError::LimitReached(e.to_string()))?;
        let deadline = match (grpc_timeout(req.headers()), target.timeout) {
            (Some(a), Some(b)) => Some(started + a.min(b)),
            (a, b) => a.or(b).map(|t| started + t),
        };
        let retry = target.retry.unwrap_or(self.retry);
        let subset = target.subset.as_ref();
        let (parts, body) = req.into_parts();
        let replay = Replay::new(NonEmpty(body.map_err(Into::into).boxed_unsync()).boxed_unsync());
        upstream.budget.deposit();
        let mut attempts = 0u32;
        let mut tried = Vec::new();
        loop {
            attempts += 1;
            let (result, outcome) = self
                .attempt(service, &upstream, &parts, replay.attempt(), Limits { deadline, subset }, &mut tried)
                .await;
            let Some(outcome) = outcome else { return result.map(|r| self.guard(r, in_flight)) };
            let request = RetryRequest::new(&parts.method, replay.replayable(), attempts);
            if retry.decide(&request, &outcome) != Decision::Retry {
                return result.map(|r| self.guard(r, in_flight));
            }
            if !upstream.budget.try_withdraw() {
                self.metrics.retry(service, "budget_exhausted");
                return result.map(|r| self.guard(r, in_flight));
            }
            let delay = self.backoff.delay(attempts - 1);
            if deadline.is_some_and(|d| Instant::now() + delay >= d) {
                return result.map(|r| self.guard(r, in_flight));
            }
            self.metrics.retry(service, "retried");
            tokio::time::sleep(delay).await;
        }
    }

    /// An HTTP/1.1 `Upgrade` (e.g. WebSocket) through the mesh: one HTTP/2
    /// stream to the peer carries the tunnel (see [`upgrade`]); never retried.
    async fn upgrade<B>(
        &self,
        service: &str,
        mut req: Request<B>,
        protocol: HeaderValue,
        subset: Option<&(String, String)>,
    ) -> Result<Response<Body>, ProxyError> {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let upstream = self.discovery.upstream(service).await.map_err(|e| ProxyError::UnknownService(e.to_string()))?;
        let in_flight = upstream.limit.try_acquire().map_err(|e| ProxyError::LimitReached(e.to_string()))?;
        let set = upstream.set.load_full();
        let available = |i| set.outliers.is_available(i) && set.in_subset(i, subset);
        let idx = set.balancer.pick(&PickContext::new().with_filter(&available));
        let Some(slot) = idx.and_then(|idx| set.conn(idx, &self.pool)) else {
            return Err(ProxyError::NoEndpoints(service.to_string()));
        };
        let mut sender = self.pool.get(slot).await?;
        let (parts, _) = req.into_parts();
        let (tx, body) = upgrade::channel_body();
        let mut up = to_upstream(&parts, body, &upstream, None)?;
        up.headers_mut().insert(upgrade::UPGRADE, protocol.clone());
        let resp = sender.send_request(up).await.map_err(|e| ProxyError::Upstream(e.to_string()))?;
        if resp.headers().get(upgrade::UPGRADED).is_none() {
            // The app did not switch (e.g. refused the WebSocket handshake): its answer as is.
            return Ok(self.guard(resp, in_flight));
        }
        let (mut head, peer_body) = resp.into_parts();
        head.status = http::StatusCode::SWITCHING_PROTOCOLS;
        head.version = Version::HTTP_11;
        head.headers.remove(upgrade::UPGRADED);
        head.headers.remove(header::CONTENT_LENGTH);
        head.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        head.headers.insert(header::UPGRADE, protocol);
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(client) => upgrade::tunnel(hyper_util::rt::TokioIo::new(client), tx, peer_body).await,
                Err(e) => tracing::debug!(error = %e, "client connection did not upgrade"),
            }
            drop(in_flight);
        });
        Ok(Response::from_parts(head, http_body_util::Empty::new().map_err(|n| match n {}).boxed_unsync()))
    }

    /// One attempt on one endpoint. Returns the result and, when the attempt
    /// failed in a way a retry could fix, its outcome (and then remembers the
    /// endpoint in `tried`, so a retry goes elsewhere when it can).
    async fn attempt(
        &self,
        service: &str,
        upstream: &Upstream,
        parts: &http::request::Parts,
        body: ReplayBody,
        limits: Limits<'_>,
        tried: &mut Vec<String>,
    ) -> (Result<Response<Incoming>, ProxyError>, Option<Outcome>) {
        let Limits { deadline, subset } = limits;
        let set = upstream.set.load_full();
        let available = |i| set.outliers.is_available(i) && set.in_subset(i, subset);
        // Hash policies route by the configured header's value (borrowed, no copy).
        let key = upstream.hash_header.as_ref().and_then(|h| parts.headers.get(h)).map(HeaderValue::as_bytes);
        let idx = {
            let ctx = key.map_or_else(PickContext::new, |k| PickContext::new().with_hash_key(k));
            if tried.is_empty() {
                set.balancer.pick(&ctx.with_filter(&available))
            } else {
                // Endpoints already tried for this request are skipped unless
                // nothing else is available.
                let fresh =
                    |i: EndpointIdx| available(i) && set.balancer.endpoint(i).is_some_and(|e| !tried.contains(&e.id));
                set.balancer.pick(&ctx.with_filter(&fresh)).or_else(|| set.balancer.pick(&ctx.with_filter(&available)))
            }
        };
        let Some((idx, slot)) = idx.and_then(|idx| Some((idx, set.conn(idx, &self.pool)?))) else {
            return (Err(ProxyError::NoEndpoints(service.to_string())), None);
        };
        let admission = set.outliers.try_admit(idx);
        let load = set.balancer.start(idx);
        let result = async {
            let mut sender = self.pool.get(slot).await?;
            let req = to_upstream(parts, body.boxed_unsync(), upstream, deadline)?;
            let send = sender.send_request(req);
            match deadline {
                Some(d) => match tokio::time::timeout(d.saturating_duration_since(Instant::now()), send).await {
                    Ok(r) => r.map_err(|e| ProxyError::Upstream(e.to_string())),
                    Err(_) => Err(ProxyError::DeadlineExceeded),
                },
                None => send.await.map_err(|e| ProxyError::Upstream(e.to_string())),
            }
        }
        .await;
        let outcome = match &result {
            Ok(r) => Outcome::from_head(r.status(), r.headers(), is_grpc(r.headers())),
            Err(ProxyError::DeadlineExceeded) => Some(Outcome::Grpc(tonic::Code::DeadlineExceeded)),
            Err(ProxyError::NoIdentity) => None,
            Err(_) => Some(Outcome::ConnectFailed),
        };
        let failed = outcome.as_ref().is_some_and(Outcome::is_endpoint_failure);
        if let Some(a) = admission {
            a.report(failed);
        }
        if let Some(l) = load {
            l.finish(outcome.as_ref().map(Feedback::from).unwrap_or(Feedback::Responded));
        }
        let retryable = outcome.filter(|o| !matches!(o, Outcome::Grpc(tonic::Code::Ok)) && !is_success(o));
        if retryable.is_some()
            && let Some(e) = set.balancer.endpoint(idx)
        {
            tried.push(e.id.clone());
        }
        (result, retryable)
    }

    fn guard(&self, resp: Response<Incoming>, in_flight: InFlight) -> Response<Body> {
        // The request stays "in flight" for the concurrency limit until its
        // response body ends (streams count for as long as they are open).
        resp.map(|b| {
            let inner = NonEmpty(b.map_err(Into::into).boxed_unsync()).boxed_unsync();
            Guarded { inner, _in_flight: in_flight, idle: self.stream_idle_timeout, timer: None }.boxed_unsync()
        })
    }
}

/// What bounds one attempt: the request's deadline and the route's subset.
#[derive(Clone, Copy)]
struct Limits<'a> {
    deadline: Option<Instant>,
    subset: Option<&'a (String, String)>,
}

fn is_success(o: &Outcome) -> bool {
    matches!(o, Outcome::Http(s) if s.is_success() || s.is_informational() || s.is_redirection())
}

/// A response body that holds its request's concurrency slot until it ends,
/// and ends it with an error when no frame came for `idle` (a stream's idle
/// timeout: streams have no total timeout, but a silent one is cut).
struct Guarded {
    inner: Body,
    _in_flight: InFlight,
    idle: Duration,
    /// Armed on the first wait only: most unary responses are complete when
    /// their head arrives, and never need a timer.
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = crate::sidecar::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(t) = this.timer.as_mut() {
                    t.as_mut().reset(tokio::time::Instant::now() + this.idle);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(format!("stream idle for {idle:?} (stream_idle_timeout)").into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The service named by `:authority` or `Host`, without a port.
fn authority_service<B>(req: &Request<B>) -> Option<String> {
    let host = req.uri().authority().map(|a| a.host().to_string()).or_else(|| {
        req.headers().get(header::HOST)?.to_str().ok().map(|h| h.split(':').next().unwrap_or(h).to_string())
    })?;
    let name = host.split('.').next().unwrap_or(&host).to_string();
    (!name.is_empty()).then_some(name)
}

/// `grpc-timeout` (`<digits><unit>`, gRPC over HTTP/2 spec) as a duration.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a remaining budget for `grpc-timeout` (milliseconds, rounded up
/// to at least 1 so a nearly spent budget is not sent as "no deadline").
fn format_grpc_timeout(d: Duration) -> HeaderValue {
    let ms = d.as_millis().clamp(1, 99_999_999);
    HeaderValue::from_str(&format!("{ms}m")).unwrap_or_else(|_| HeaderValue::from_static("1m"))
}

/// Builds one attempt's request for the peer sidecar: HTTP/2, `:authority`
/// = service, hop-by-hop headers dropped, the remaining deadline forwarded.
fn to_upstream(
    original: &http::request::Parts,
    body: Body,
    upstream: &Upstream,
    deadline: Option<Instant>,
) -> Result<Request<Body>, ProxyError> {
    let http1 = original.version < Version::HTTP_2;
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTPS);
    uri.authority = Some(
        upstream
            .authority
            .clone()
            .ok_or_else(|| ProxyError::Upstream(format!("{:?} is not a valid authority", upstream.service)))?,
    );
    uri.path_and_query =
        Some(original.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
    let mut req = Request::new(body);
    *req.method_mut() = original.method.clone();
    *req.uri_mut() = Uri::from_parts(uri).map_err(|e| ProxyError::Upstream(format!("bad request URI: {e}")))?;
    *req.version_mut() = Version::HTTP_2;
    let headers = req.headers_mut();
    *headers = original.headers.clone();
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    headers.remove(HTTP1_MARK);
    if http1 {
        headers.insert(HTTP1_MARK, HeaderValue::from_static("1"));
    }
    if let Some(d) = deadline {
        let left = d.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ProxyError::DeadlineExceeded);
        }
        headers.insert("grpc-timeout", format_grpc_timeout(left));
    }
    Ok(req)
}

/// Removes hop-by-hop headers, including any named by `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for h in HOP_BY_HOP.iter().copied().chain(named.iter().map(String::as_str)) {
        headers.remove(h);
    }
    // HTTP/2 allows `te` only as "trailers" (gRPC sends exactly that).
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units_and_bad_values() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("grpc-timeout", HeaderValue::from_str(v).unwrap());
            grpc_timeout(&m)
        };
        assert_eq!(h("100m"), Some(Duration::from_millis(100)));
        assert_eq!(h("2S"), Some(Duration::from_secs(2)));
        assert_eq!(h("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(h("5u"), Some(Duration::from_micros(5)));
        assert_eq!(h("m"), None);
        assert_eq!(h("12x"), None);
        assert_eq!(h("123456789m"), None, "at most 8 digits");
        assert_eq!(format_grpc_timeout(Duration::from_micros(10)), "1m");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut m = HeaderMap::new();
        m.insert("connection", HeaderValue::from_static("keep-alive, x-secret"));
        m.insert("x-secret", HeaderValue::from_static("1"));
        m.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        m.insert("te", HeaderValue::from_static("trailers"));
        m.insert("x-user-id", HeaderValue::from_static("42"));
        strip_hop_by_hop(&mut m);
        assert!(m.get("x-secret").is_none() && m.get("transfer-encoding").is_none() && m.get("connection").is_none());
        assert_eq!(m.get("te").unwrap(), "trailers");
        assert_eq!(m.get("x-user-id").unwrap(), "42");
    }
}
