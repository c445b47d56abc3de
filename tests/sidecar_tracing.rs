//! W3C trace context through the mesh, exported over OTLP to a real OTLP/gRPC
//! collector (tonic, the opentelemetry-proto service): the caller's trace
//! continues through one span per hop (outbound client span → inbound server
//! span), and the app receives a `traceparent` naming the inbound span.

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use redfire::mesh::process::telemetry::{self, LogFormat};
use support::mesh::*;

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_continues_through_one_span_per_hop_exported_over_otlp() {
    let collector = Collector::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    let guard = telemetry::init_with(
        "redfire-sidecar",
        LogFormat::Human,
        "warn,redfire::sidecar::shared::trace=info",
        Some(format!("http://{addr}")),
    );
    assert!(guard.exporting());
    redfire::sidecar::shared::trace::enable(true);

    let app = echo_app(false).await;
    let m = mesh(app, "h2c", None).await;
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let req = Request::post("http://echo/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x01x")).map_err(|n| match n {}).boxed_unsync())
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let at_app = resp.headers()["x-traceparent"].to_str().unwrap().to_string();
    let _ = resp.into_body().collect().await.unwrap();
    let parts: Vec<&str> = at_app.split('-').collect();
    assert_eq!(parts.len(), 4, "{at_app}");
    assert_eq!(parts[1], trace_id, "the app's request stays in the caller's trace");
    assert_ne!(parts[2], caller_span, "and names a sidecar span, not the caller's, as its parent");

    // Flush the batch exporter (it blocks, so off the async threads).
    tokio::task::spawn_blocking(move || drop(guard)).await.unwrap();
    let spans: Vec<Span> =
        collector.0.lock().unwrap().iter().filter(|s| hex(&s.trace_id) == trace_id).cloned().collect();
    let outbound = spans.iter().find(|s| s.name.starts_with("outbound echo")).expect("an outbound span in the trace");
    let inbound = spans.iter().find(|s| s.name.starts_with("inbound echo")).expect("an inbound span in the trace");
    assert_eq!(hex(&outbound.parent_span_id), caller_span, "outbound hop is a child of the caller");
    assert_eq!(inbound.parent_span_id, outbound.span_id, "inbound hop is a child of the outbound hop");
    assert_eq!(parts[2], hex(&inbound.span_id), "the app's parent is the inbound hop");
    assert_eq!(outbound.kind, 3, "SPAN_KIND_CLIENT");
    assert_eq!(inbound.kind, 2, "SPAN_KIND_SERVER");
}
