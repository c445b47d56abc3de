//! W3C trace context across the sidecar: one span per hop.
//!
//! With OTLP export on (`OTEL_EXPORTER_OTLP_ENDPOINT` set, see
//! [`crate::mesh::process::telemetry`]), each request gets a span per direction:
//! `outbound` (kind client) and `inbound` (kind server), a child of the
//! caller's `traceparent` when it sent one (else a new trace), and the
//! request leaves with a `traceparent` naming that span as the parent. So a
//! call app A → sidecar A → sidecar B → app B shows as app A's span → A's
//! outbound span → B's inbound span → app B's span.
//!
//! With export off nothing is created and `traceparent`/`tracestate` pass
//! through untouched, at no cost.

use std::sync::OnceLock;

use http::HeaderMap;
use http::header::HeaderValue;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static ENABLED: OnceLock<bool> = OnceLock::new();

/// Turns hop spans on or off for this process (the binary calls it once
/// from its telemetry setup); unset means off.
pub fn enable(on: bool) {
    let _ = ENABLED.set(on);
}

fn enabled() -> bool {
    ENABLED.get().copied().unwrap_or(false)
}

/// The span of one request through one direction, or `None` when export is off.
pub fn hop_span(direction: &'static str, service: &str, headers: &HeaderMap, path: &str) -> Option<tracing::Span> {
    if !enabled() {
        return None;
    }
    let kind = if direction == "outbound" { "client" } else { "server" };
    let span = tracing::info_span!(
        "hop",
        otel.name = %format_args!("{direction} {service}{path}"),
        otel.kind = kind,
        redfire.direction = direction,
        redfire.service = %service,
        url.path = %path,
        http.response.status_code = tracing::field::Empty,
    );
    if headers.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&Extract(headers));
        let _ = span.set_parent(parent);
    }
    Some(span)
}

/// Sets `traceparent` (and `tracestate`) in `headers` to name `span` as the
/// parent. Leaves them alone when the span has no valid context (e.g. it
/// was filtered out).
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    TraceContextPropagator::new().inject_context(&cx, &mut Inject(headers));
}

/// Records the response status on the span.
pub fn record_status(span: &tracing::Span, status: http::StatusCode) {
    span.record("http.response.status_code", status.as_u16());
}

struct Extract<'a>(&'a HeaderMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Inject<'a>(&'a mut HeaderMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (http::HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}
