//! Logs via `tracing` (human or JSON) and, when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OTLP trace export with W3C
//! `traceparent` extraction for incoming gRPC requests.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line.
    Json,
}

/// Keeps the OTLP exporter alive; flushes it on drop.
#[derive(Debug, Default)]
pub struct Guard(Option<SdkTracerProvider>);

impl Guard {
    /// True when spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber. `level` is an `EnvFilter` directive
/// (`info`, `redfire=debug,warn`, ...), already validated by config.
pub fn init(service: &'static str, format: LogFormat, level: &str) -> Guard {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty());
    init_with(service, format, level, endpoint)
}

/// [`init`] with the OTLP endpoint given (e.g. `http://127.0.0.1:4317`);
/// `None` turns export off.
pub fn init_with(service: &'static str, format: LogFormat, level: &str, otlp_endpoint: Option<String>) -> Guard {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match format {
        LogFormat::Human => tracing_subscriber::fmt::layer().with_target(false).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().flatten_event(true).boxed(),
    };
    let mut provider = None;
    let otel = otlp_endpoint.and_then(|endpoint| {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build();
        match exporter {
            Ok(exporter) => {
                let p = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
                    .build();
                let tracer = p.tracer(service);
                provider = Some(p);
                Some(tracing_opentelemetry::layer().with_tracer(tracer))
            }
            Err(e) => {
                eprintln!("OTLP export disabled: {e}");
                None
            }
        }
    });
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init();
    Guard(provider)
}

/// True for levels `init` accepts.
pub fn valid_level(level: &str) -> Result<(), String> {
    EnvFilter::try_new(level).map(|_| ()).map_err(|e| e.to_string())
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one incoming gRPC request, a child of the caller's
/// `traceparent` when there is one.
pub fn request_span(req: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!("grpc", otel.name = %req.uri().path(), otel.kind = "server");
    if req.headers().contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(&Headers(req.headers()));
        let _ = span.set_parent(cx);
    }
    span
}
