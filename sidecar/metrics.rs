//! Prometheus metrics of the sidecar, per direction and service: requests by
//! gRPC code and HTTP status class, and latency to response headers.

use std::time::Duration;

use http::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// Target service (outbound) or own service (inbound).
    pub service: String,
    /// `2xx`, `4xx`, `5xx`, ...
    pub class: &'static str,
    /// gRPC status code from the response head, or empty.
    pub grpc_code: String,
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

/// Every metric of the sidecar.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<DirectionLabels, Histogram>,
    retries: Family<RetryLabels, Counter>,
    /// Seconds until the workload certificate expires (negative: expired).
    pub cert_expiry_seconds: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("redfire_sidecar");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<DirectionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        });
        let cert_expiry_seconds = Gauge::default();
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register("retries", "retries sent, and retries refused by the budget", retries.clone());
        registry.register("requests", "requests by direction, service, status class and gRPC code", requests.clone());
        registry.register("response_latency_seconds", "time to response headers", latency.clone());
        registry.register(
            "cert_expiry_seconds",
            "seconds until the workload certificate expires",
            cert_expiry_seconds.clone(),
        );
        Metrics { registry, requests, latency, retries, cert_expiry_seconds }
    }
}

impl Metrics {
    /// Records one response.
    pub fn observe<B>(&self, direction: &'static str, service: &str, resp: &Response<B>, elapsed: Duration) {
        let class = match resp.status().as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let grpc_code = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        self.requests.get_or_create(&RequestLabels { direction, service: service.to_string(), class, grpc_code }).inc();
        self.latency
            .get_or_create(&DirectionLabels { direction, service: service.to_string() })
            .observe(elapsed.as_secs_f64());
    }

    /// Records a retry (`retried`) or one the budget refused (`budget_exhausted`).
    pub fn retry(&self, service: &str, result: &'static str) {
        self.retries.get_or_create(&RetryLabels { service: service.to_string(), result }).inc();
    }

    /// The registry, for metrics of other parts (the gateway) to join
    /// before the sidecar starts serving.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
