//! Prometheus metrics of the control service, served as text on `/metrics`.
//!
//! Counters and histograms are updated on the request path; gauges that
//! describe the registry (instances per service, watchers, revision) are
//! computed from the view when `/metrics` is scraped.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub mod events;

use self::events::EventMetrics;

/// Labels of per-RPC metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// gRPC method, e.g. `Register`.
    pub method: &'static str,
    /// gRPC status code name, e.g. `OK`, `NOT_FOUND`.
    pub code: &'static str,
}

/// Labels of the per-method latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// gRPC method.
    pub method: &'static str,
}

/// Labels of store errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreErrorLabels {
    /// Operation, e.g. `register`.
    pub op: &'static str,
    /// `unavailable`, `not_found`, `internal`.
    pub kind: &'static str,
}

/// Labels of per-service gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// Service name.
    pub service: String,
}

/// Labels of `authz_denied`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeniedLabels {
    /// `registry`, `events`, ….
    pub api: &'static str,
    /// The method.
    pub method: &'static str,
    /// `no_credential`, `bad_credential`, `bootstrap_token_misused`,
    /// `role_missing`, `other_service`, `topic_not_granted`, `no_rule`.
    pub reason: &'static str,
}

/// Every metric of the control service.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rpcs: Family<RpcLabels, Counter>,
    rpc_seconds: Family<MethodLabels, Histogram>,
    store_errors: Family<StoreErrorLabels, Counter>,
    instances: Family<ServiceLabels, Gauge>,
    watchers: Gauge,
    revision: Gauge,
    store_up: Gauge,
    /// Event bus metrics (`redfire_control_events_*`).
    pub events: std::sync::Arc<EventMetrics>,
    /// Policy files rejected on reload (the last good policy stayed in force).
    pub policy_load_errors: std::sync::Arc<Counter>,
    /// TLS handshakes on the gRPC listener that failed or timed out.
    pub tls_handshake_failures: Counter,
    /// Calls refused by the authorization layer.
    pub authz_denied: Family<DeniedLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("redfire_control");
        let rpcs = Family::<RpcLabels, Counter>::default();
        let rpc_seconds = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
        });
        let store_errors = Family::<StoreErrorLabels, Counter>::default();
        let instances = Family::<ServiceLabels, Gauge>::default();
        let (watchers, revision, store_up) = (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register("rpc_requests", "gRPC requests by method and status code", rpcs.clone());
        registry.register("rpc_duration_seconds", "gRPC unary latency by method", rpc_seconds.clone());
        registry.register("store_errors", "registry store errors by operation", store_errors.clone());
        registry.register("registry_instances", "registered instances per service", instances.clone());
        registry.register("registry_watchers", "open Watch streams", watchers.clone());
        registry.register("registry_revision", "current registry revision", revision.clone());
        registry.register("store_up", "1 when the registry store takes writes", store_up.clone());
        let events = EventMetrics::default();
        events.register(&mut registry);
        let events = std::sync::Arc::new(events);
        let policy_load_errors = std::sync::Arc::new(Counter::default());
        registry.register(
            "policy_load_errors",
            "policy files rejected on reload; the last good policy stayed in force",
            (*policy_load_errors).clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes on the gRPC listener that failed (no TLS, a bad client certificate) or timed out",
            tls_handshake_failures.clone(),
        );
        let authz_denied = Family::<DeniedLabels, Counter>::default();
        registry.register(
            "authz_denied",
            "calls refused by the authorization layer, by API, method and reason",
            authz_denied.clone(),
        );
        Metrics {
            registry,
            rpcs,
            rpc_seconds,
            store_errors,
            instances,
            watchers,
            revision,
            store_up,
            events,
            policy_load_errors,
            tls_handshake_failures,
            authz_denied,
        }
    }
}

impl Metrics {
    /// Records one finished RPC.
    pub fn rpc(&self, method: &'static str, code: tonic::Code, elapsed: Option<Duration>) {
        self.rpcs.get_or_create(&RpcLabels { method, code: code_name(code) }).inc();
        if let Some(d) = elapsed {
            self.rpc_seconds.get_or_create(&MethodLabels { method }).observe(d.as_secs_f64());
        }
    }

    /// Records one store error.
    pub fn store_error(&self, op: &'static str, kind: &'static str) {
        self.store_errors.get_or_create(&StoreErrorLabels { op, kind }).inc();
    }

    /// Prometheus text, with the registry gauges refreshed from what the
    /// view holds at scrape time: the service of every registered instance
    /// (one item per instance), open Watch streams and the revision.
    pub fn render<'a>(
        &self,
        instance_services: impl IntoIterator<Item = &'a str>,
        watchers: usize,
        revision: u64,
        store_up: bool,
    ) -> String {
        self.instances.clear();
        for service in instance_services {
            self.instances.get_or_create(&ServiceLabels { service: service.to_string() }).inc();
        }
        self.watchers.set(watchers as i64);
        self.revision.set(revision as i64);
        self.store_up.set(i64::from(store_up));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The canonical name of a gRPC code, as in the gRPC spec.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
