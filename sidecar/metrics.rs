//! Prometheus metrics of the sidecar (`/metrics` on the admin port), per
//! direction (`inbound`: peers → app, `outbound`: app → peers) and service:
//!
//! | family | type | labels |
//! |---|---|---|
//! | `redfire_sidecar_requests_total` | counter | direction, service, class (`2xx`…), grpc_code (`0`…`16`, `other`, empty for non-gRPC) |
//! | `redfire_sidecar_response_latency_seconds` | histogram | direction, service (time to response headers) |
//! | `redfire_sidecar_retries_total` | counter | service, result (`retried`, `budget_exhausted`) |
//! | `redfire_sidecar_ejections_total` | counter | service (outlier ejections, re-ejections included) |
//! | `redfire_sidecar_ejected_endpoints` | gauge | service (ejected or on probation now) |
//! | `redfire_sidecar_endpoints` | gauge | service (endpoints discovered) |
//! | `redfire_sidecar_in_flight_requests` | gauge | service (counted by the concurrency limit) |
//! | `redfire_sidecar_open_connections` | gauge | direction (`inbound`: mTLS connections from peers; `outbound`: the app's connections to the outbound listeners; `peer`: pooled mTLS connections to other sidecars) |
//! | `redfire_sidecar_cert_expiry_seconds` | gauge | — (seconds until the workload certificate expires) |
//! | `redfire_sidecar_app_serving` | gauge | — (1 while the app passes its health checks, or has none) |
//!
//! The request path never allocates for a label: each (direction, service)
//! gets its handles once ([`ServiceHandles`]), and later requests find them
//! with a read lock and a lookup by `&str`. The breaker and endpoint gauges
//! are read from discovery when `/metrics` is scraped.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::sidecar::{Body, BoxError};

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// Target service (outbound) or own service (inbound).
    pub service: String,
    /// `2xx`, `4xx`, `5xx`, ...
    pub class: &'static str,
    /// gRPC status code from the response head, `other` when not one of
    /// the 17 codes, or empty.
    pub grpc_code: &'static str,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// Service.
    pub service: String,
}

/// Labels of the retry counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// Target service.
    pub service: String,
    /// `retried` or `budget_exhausted`.
    pub result: &'static str,
}

/// Labels of per-upstream-service families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// Target service.
    pub service: String,
}

/// Labels of the connection gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `inbound`, `outbound` or `peer`.
    pub direction: &'static str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// `grpc_code` values: the 17 codes, then `other`, then "" (not gRPC).
const CODES: [&str; 19] =
    ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16", "other", ""];

/// One (direction, service)'s metric handles, resolved once.
#[derive(Debug)]
pub struct ServiceHandles {
    direction: &'static str,
    service: String,
    family: Family<RequestLabels, Counter>,
    latency: Histogram,
    /// By class, then by [`CODES`] position; created on first use so that
    /// only combinations that happened are exported.
    requests: [[OnceLock<Counter>; CODES.len()]; CLASSES.len()],
    retried: OnceLock<Counter>,
    budget_exhausted: OnceLock<Counter>,
}

impl ServiceHandles {
    fn count(&self, class: usize, code: usize) {
        self.requests[class][code]
            .get_or_init(|| {
                let labels = RequestLabels {
                    direction: self.direction,
                    service: self.service.clone(),
                    class: CLASSES[class],
                    grpc_code: CODES[code],
                };
                self.family.get_or_create(&labels).clone()
            })
            .inc();
    }
}

/// Position in [`CODES`] of a `grpc-status` value.
fn code_index(v: &[u8]) -> usize {
    match std::str::from_utf8(v).ok().and_then(|s| s.parse::<usize>().ok()) {
        Some(c) if c <= 16 => c,
        _ => OTHER_CODE,
    }
}

const OTHER_CODE: usize = CODES.len() - 2;
const NOT_GRPC: usize = CODES.len() - 1;
const CANCELLED: usize = 1;

/// A gRPC response body that counts its request when the trailers (with
/// `grpc-status`) pass, or as CANCELLED when dropped before them.
struct TrailerCode {
    inner: Body,
    handles: Arc<ServiceHandles>,
    class: usize,
    counted: bool,
}

impl hyper::body::Body for TrailerCode {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if !this.counted {
            let code = match &polled {
                Poll::Ready(Some(Ok(f))) => {
                    f.trailers_ref().map(|t| t.get("grpc-status").map_or(OTHER_CODE, |v| code_index(v.as_bytes())))
                }
                // Ended without a status, or broke off: not a clean gRPC end.
                Poll::Ready(None) => Some(OTHER_CODE),
                Poll::Ready(Some(Err(_))) => Some(CANCELLED),
                Poll::Pending => None,
            };
            if let Some(code) = code {
                this.counted = true;
                this.handles.count(this.class, code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrailerCode {
    fn drop(&mut self) {
        if !self.counted {
            self.handles.count(self.class, CANCELLED);
        }
    }
}

/// An open connection, counted until dropped.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What discovery knows of one upstream service when `/metrics` is scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamState {
    /// Ejections so far.
    pub ejections: u64,
    /// Endpoints ejected or on probation now.
    pub ejected: usize,
    /// Endpoints discovered.
    pub endpoints: usize,
    /// Requests in flight.
    pub in_flight: usize,
}

/// Every metric of the sidecar.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<DirectionLabels, Histogram>,
    retries: Family<RetryLabels, Counter>,
    ejections: Family<ServiceLabels, Counter>,
    ejected: Family<ServiceLabels, Gauge>,
    endpoints: Family<ServiceLabels, Gauge>,
    in_flight: Family<ServiceLabels, Gauge>,
    connections: Family<ConnectionLabels, Gauge>,
    /// Seconds until the workload certificate expires (negative: expired).
    pub cert_expiry_seconds: Gauge,
    /// 1 while the app is healthy, else 0.
    pub app_serving: Gauge,
    /// Inbound, outbound.
    services: [RwLock<HashMap<String, Arc<ServiceHandles>>>; 2],
    /// Serializes scrape-time updates (the ejection counter adds deltas).
    refresh: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("redfire_sidecar");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<DirectionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        });
        let cert_expiry_seconds = Gauge::default();
        let app_serving = Gauge::default();
        let retries = Family::<RetryLabels, Counter>::default();
        let ejections = Family::<ServiceLabels, Counter>::default();
        let ejected = Family::<ServiceLabels, Gauge>::default();
        let endpoints = Family::<ServiceLabels, Gauge>::default();
        let in_flight = Family::<ServiceLabels, Gauge>::default();
        let connections = Family::<ConnectionLabels, Gauge>::default();
        registry.register("retries", "retries sent, and retries refused by the budget", retries.clone());
        registry.register("requests", "requests by direction, service, status class and gRPC code", requests.clone());
        registry.register("response_latency_seconds", "time to response headers", latency.clone());
        registry.register("ejections", "outlier ejections of an upstream service's endpoints", ejections.clone());
        registry.register("ejected_endpoints", "endpoints ejected or on probation", ejected.clone());
        registry.register("endpoints", "endpoints discovered per upstream service", endpoints.clone());
        registry.register("in_flight_requests", "requests in flight per upstream service", in_flight.clone());
        registry.register("open_connections", "open connections by direction", connections.clone());
        registry.register(
            "cert_expiry_seconds",
            "seconds until the workload certificate expires",
            cert_expiry_seconds.clone(),
        );
        registry.register("app_serving", "1 while the app passes its health checks (or has none)", app_serving.clone());
        Metrics {
            registry,
            requests,
            latency,
            retries,
            ejections,
            ejected,
            endpoints,
            in_flight,
            connections,
            cert_expiry_seconds,
            app_serving,
            services: [RwLock::default(), RwLock::default()],
            refresh: Mutex::new(()),
        }
    }
}

impl Metrics {
    /// The handles of (`direction`, `service`): a lookup after the first call.
    pub fn service(&self, direction: &'static str, service: &str) -> Arc<ServiceHandles> {
        let map = &self.services[usize::from(direction == "outbound")];
        if let Some(h) = map.read().unwrap_or_else(PoisonError::into_inner).get(service) {
            return h.clone();
        }
        let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
        map.entry(service.to_string())
            .or_insert_with(|| {
                let latency =
                    self.latency.get_or_create(&DirectionLabels { direction, service: service.to_string() }).clone();
                Arc::new(ServiceHandles {
                    direction,
                    service: service.to_string(),
                    family: self.requests.clone(),
                    latency,
                    requests: Default::default(),
                    retried: OnceLock::new(),
                    budget_exhausted: OnceLock::new(),
                })
            })
            .clone()
    }

    /// Records one response: latency now, and the request counted by its
    /// status class and gRPC code. A gRPC response whose status comes in
    /// the trailers is counted when they pass (its body is wrapped for
    /// that); one dropped before them counts as CANCELLED (1).
    pub fn observe(
        &self,
        direction: &'static str,
        service: &str,
        resp: Response<Body>,
        elapsed: Duration,
    ) -> Response<Body> {
        let h = self.service(direction, service);
        h.latency.observe(elapsed.as_secs_f64());
        let class = match resp.status().as_u16() {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        if let Some(v) = resp.headers().get("grpc-status") {
            h.count(class, code_index(v.as_bytes()));
            return resp;
        }
        let grpc = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !grpc || hyper::body::Body::is_end_stream(resp.body()) {
            h.count(class, NOT_GRPC);
            return resp;
        }
        resp.map(|inner| TrailerCode { inner, handles: h, class, counted: false }.boxed_unsync())
    }

    /// Records a retry (`retried`) or one the budget refused (`budget_exhausted`).
    pub fn retry(&self, service: &str, result: &'static str) {
        let h = self.service("outbound", service);
        let slot = if result == "retried" { &h.retried } else { &h.budget_exhausted };
        slot.get_or_init(|| self.retries.get_or_create(&RetryLabels { service: service.to_string(), result }).clone())
            .inc();
    }

    /// Counts an open connection (`inbound`, `outbound` or `peer`) until the guard drops.
    pub fn open_connection(&self, direction: &'static str) -> OpenConnection {
        let g = self.connections.get_or_create(&ConnectionLabels { direction }).clone();
        g.inc();
        OpenConnection(g)
    }

    /// Sets the per-upstream breaker and endpoint figures (at scrape time).
    pub fn set_upstreams(&self, upstreams: impl IntoIterator<Item = (String, UpstreamState)>) {
        let _one_at_a_time = self.refresh.lock().unwrap_or_else(PoisonError::into_inner);
        let to_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        for (service, state) in upstreams {
            let labels = ServiceLabels { service };
            let ejections = self.ejections.get_or_create(&labels);
            ejections.inc_by(state.ejections.saturating_sub(ejections.get()));
            self.ejected.get_or_create(&labels).set(to_i64(state.ejected));
            self.endpoints.get_or_create(&labels).set(to_i64(state.endpoints));
            self.in_flight.get_or_create(&labels).set(to_i64(state.in_flight));
        }
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, grpc: Option<&str>, trailers: Option<&str>) -> Response<Body> {
        use http_body_util::{Full, StreamBody};
        let mut r = Response::builder().status(status);
        if grpc.is_some() || trailers.is_some() {
            r = r.header("content-type", "application/grpc");
        }
        if let Some(g) = grpc {
            r = r.header("grpc-status", g);
        }
        let body = match trailers {
            Some(code) => {
                let mut t = http::HeaderMap::new();
                t.insert("grpc-status", code.parse().unwrap());
                let frames =
                    vec![Ok(hyper::body::Frame::data(Bytes::from_static(b"x"))), Ok(hyper::body::Frame::trailers(t))];
                StreamBody::new(futures::stream::iter(frames)).boxed_unsync()
            }
            None => Full::new(Bytes::new()).map_err(|n| match n {}).boxed_unsync(),
        };
        r.body(body).unwrap()
    }

    #[tokio::test]
    async fn requests_by_class_and_code_share_handles() {
        let m = Metrics::default();
        let ms = Duration::from_millis(3);
        m.observe("outbound", "orders", response(200, Some("14"), None), ms);
        m.observe("outbound", "orders", response(200, Some("99"), None), ms);
        m.observe("inbound", "self", response(503, None, None), ms);
        // Status in the trailers: counted when they pass.
        let resp = m.observe("outbound", "orders", response(200, None, Some("0")), ms);
        assert!(!m.render().contains(r#"grpc_code="0"} 1"#), "not before the trailers");
        resp.into_body().collect().await.unwrap();
        // Dropped before the trailers: CANCELLED.
        drop(m.observe("outbound", "orders", response(200, None, Some("0")), ms));
        assert!(Arc::ptr_eq(&m.service("outbound", "orders"), &m.service("outbound", "orders")));
        let text = m.render();
        for line in [
            r#"redfire_sidecar_requests_total{direction="outbound",service="orders",class="2xx",grpc_code="0"} 1"#,
            r#"redfire_sidecar_requests_total{direction="outbound",service="orders",class="2xx",grpc_code="1"} 1"#,
            r#"redfire_sidecar_requests_total{direction="outbound",service="orders",class="2xx",grpc_code="14"} 1"#,
            r#"redfire_sidecar_requests_total{direction="outbound",service="orders",class="2xx",grpc_code="other"} 1"#,
            r#"redfire_sidecar_requests_total{direction="inbound",service="self",class="5xx",grpc_code=""} 1"#,
            r#"redfire_sidecar_response_latency_seconds_count{direction="outbound",service="orders"} 4"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn upstream_figures_and_connections() {
        let m = Metrics::default();
        let state = UpstreamState { ejections: 3, ejected: 1, endpoints: 4, in_flight: 2 };
        m.set_upstreams([("orders".to_string(), state)]);
        m.set_upstreams([("orders".to_string(), UpstreamState { ejections: 5, ..state })]);
        let c1 = m.open_connection("inbound");
        let c2 = m.open_connection("inbound");
        drop(c1);
        m.retry("orders", "budget_exhausted");
        let text = m.render();
        for line in [
            r#"redfire_sidecar_ejections_total{service="orders"} 5"#,
            r#"redfire_sidecar_ejected_endpoints{service="orders"} 1"#,
            r#"redfire_sidecar_endpoints{service="orders"} 4"#,
            r#"redfire_sidecar_in_flight_requests{service="orders"} 2"#,
            r#"redfire_sidecar_open_connections{direction="inbound"} 1"#,
            r#"redfire_sidecar_retries_total{service="orders",result="budget_exhausted"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        drop(c2);
    }
}
