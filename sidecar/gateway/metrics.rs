//! Gateway metrics, per route: requests by status class, latency to
//! response headers (p50/p95/p99 come from the histogram), and the
//! counters the policy layers (rate limits, JWT/RBAC) increment; per
//! listener: open and refused connections; reloads of the watched files.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the per-route request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteClass {
    /// Route name (`none` when no route matched).
    pub route: String,
    /// `2xx`, `4xx`, ...
    pub class: &'static str,
}

/// Labels of per-route series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// Route name.
    pub route: String,
}

/// A reason label (refused connections here; hub closes and refusals).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why.
    pub reason: &'static str,
}

/// Labels of the reload counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `routes`, `descriptors` or `tls`.
    pub what: &'static str,
    /// `applied` or `rejected` (the version in force stays).
    pub result: &'static str,
}

/// One watched file set's reload counters.
#[derive(Debug, Clone, Default)]
pub struct Reloads {
    /// Changes loaded and swapped in.
    pub applied: Counter,
    /// Changes that failed to load (logged; the version in force stays).
    pub rejected: Counter,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    requests: Family<RouteClass, Counter>,
    latency: Family<RouteLabel, Histogram>,
    /// Requests refused by a rate limit, per route (incremented by the rate-limit layer).
    pub limited: Family<RouteLabel, Counter>,
    /// Requests refused by authentication or authorization, per route (JWT/RBAC layer).
    pub auth_failures: Family<RouteLabel, Counter>,
    /// Client connections open now.
    pub connections: Gauge,
    /// Client connections closed by the gateway without serving them.
    pub refused: Family<Reason, Counter>,
    reloads: Family<ReloadLabels, Counter>,
}

impl GatewayMetrics {
    /// Creates the metrics under `gateway_` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = GatewayMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_1, 2.0, 18))),
            limited: Family::default(),
            auth_failures: Family::default(),
            connections: Gauge::default(),
            refused: Family::default(),
            reloads: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("gateway");
        r.register("requests", "requests by route and status class", m.requests.clone());
        r.register("response_latency_seconds", "time to response headers, by route", m.latency.clone());
        r.register("limited", "requests refused by a rate limit, by route", m.limited.clone());
        r.register("auth_failures", "requests refused by authentication or authorization", m.auth_failures.clone());
        r.register("connections", "client connections open", m.connections.clone());
        r.register("connections_refused", "client connections closed unserved, by reason", m.refused.clone());
        r.register("config_reloads", "file reloads (routes, descriptors, tls) by result", m.reloads.clone());
        m
    }

    /// The reload counters of the files `what` (`routes`, `descriptors`, `tls`).
    pub fn reloads(&self, what: &'static str) -> Reloads {
        let counter = |result| self.reloads.get_or_create(&ReloadLabels { what, result }).clone();
        Reloads { applied: counter("applied"), rejected: counter("rejected") }
    }

    /// Records one response of `route`.
    pub fn observe(&self, route: &str, status: http::StatusCode, elapsed: Duration) {
        let class = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests.get_or_create(&RouteClass { route: route.to_string(), class }).inc();
        self.latency.get_or_create(&RouteLabel { route: route.to_string() }).observe(elapsed.as_secs_f64());
    }
}
