//! gRPC-Web through the gateway: a real gRPC service (grpc.health.v1, from
//! tonic-health) behind its sidecar answers the same through the gateway
//! whether called with gRPC (h2c), gRPC-Web (binary) or gRPC-Web text,
//! unary and server streaming; errors keep their gRPC status; CORS lets
//! configured browser origins in and keeps others out.

mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use prost::Message;
use redfire::sidecar::config::Settings as SidecarSettings;
use support::gateway::*;
use tonic_health::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const ROUTES: &str =
    "[[route]]\nname = \"health\"\npath_prefix = \"/grpc.health.v1.Health\"\nservice = \"health\"\ntimeout = \"5s\"\n";
const ORIGIN: &str = "https://app.example.com";

async fn setup() -> GatewayMesh {
    let (reporter, svc) = tonic_health::server::health_reporter();
    reporter.set_service_status("users", ServingStatus::Serving).await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = l.local_addr().unwrap();
    tokio::spawn(async move {
        // Keep the reporter alive as long as the server.
        let _reporter = reporter;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
        let _ = tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming).await;
    });
    let extra = SidecarSettings { gateway_cors_origins: Some(ORIGIN.into()), ..Default::default() };
    gateway_mesh(&[Service { name: "health", app, protocol: "h2c", metadata: "" }], ROUTES, extra).await
}

fn grpc_frame(msg: &impl Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut f = vec![0u8];
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(&body);
    f
}

/// Messages and the trailer block of a gRPC-Web body.
fn parse_web(mut body: Bytes) -> (Vec<Bytes>, String) {
    let (mut msgs, mut trailers) = (Vec::new(), String::new());
    while body.len() >= 5 {
        let flag = body.get_u8();
        let len = body.get_u32() as usize;
        let chunk = body.split_to(len);
        if flag & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(&chunk));
        } else {
            msgs.push(chunk);
        }
    }
    assert!(body.is_empty(), "no stray bytes");
    (msgs, trailers)
}

/// Base64 that may be several padded chunks back to back.
fn decode_text(text: &[u8]) -> Bytes {
    let mut out = Vec::new();
    let mut start = 0;
    for i in (0..text.len()).step_by(4) {
        let group = &text[i..(i + 4).min(text.len())];
        if group.contains(&b'=') || i + 4 >= text.len() {
            out.extend(STANDARD.decode(&text[start..i + group.len()]).unwrap());
            start = i + group.len();
        }
    }
    Bytes::from(out)
}

async fn web_call(
    m: &GatewayMesh,
    method: &str,
    req: &HealthCheckRequest,
    text: bool,
) -> (u16, http::HeaderMap, Vec<Bytes>, String) {
    let (ct, body) = if text {
        ("application/grpc-web-text+proto", STANDARD.encode(grpc_frame(req)).into_bytes())
    } else {
        ("application/grpc-web+proto", grpc_frame(req))
    };
    let path = format!("/grpc.health.v1.Health/{method}");
    let headers = [("content-type", ct), ("x-grpc-web", "1"), ("origin", ORIGIN)];
    let (status, headers, body) = http1(m.addr, "POST", &path, &headers, &body).await;
    let body = if text { decode_text(&body) } else { Bytes::from(body) };
    let (msgs, trailers) = parse_web(body);
    (status, headers, msgs, trailers)
}

#[tokio::test]
async fn grpc_and_grpc_web_give_the_same_answer() {
    let m = setup().await;
    let mut grpc = HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", m.addr)).unwrap().connect().await.unwrap(),
    );
    let req = HealthCheckRequest { service: "users".into() };
    let via_grpc = grpc.check(req.clone()).await.unwrap().into_inner();
    assert_eq!(via_grpc.status, ServingStatus::Serving as i32);

    for text in [false, true] {
        let (status, headers, msgs, trailers) = web_call(&m, "Check", &req, text).await;
        assert_eq!(status, 200);
        let ct = headers["content-type"].to_str().unwrap();
        assert_eq!(ct, if text { "application/grpc-web-text+proto" } else { "application/grpc-web+proto" });
        assert_eq!(headers["access-control-allow-origin"], ORIGIN);
        assert_eq!(msgs.len(), 1, "one response message");
        assert_eq!(HealthCheckResponse::decode(msgs[0].clone()).unwrap(), via_grpc, "same answer (text: {text})");
        assert!(trailers.contains("grpc-status: 0"), "trailers in the body: {trailers:?}");
    }

    // An error keeps its gRPC status: NOT_FOUND for an unknown service.
    let unknown = HealthCheckRequest { service: "nope".into() };
    let code = grpc.check(unknown.clone()).await.unwrap_err().code();
    assert_eq!(code, tonic::Code::NotFound);
    let (status, headers, msgs, trailers) = web_call(&m, "Check", &unknown, false).await;
    assert_eq!(status, 200);
    assert!(msgs.is_empty());
    let web_code = headers
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string())
        .or_else(|| trailers.lines().find_map(|l| l.strip_prefix("grpc-status: ").map(|s| s.trim().to_string())))
        .expect("a grpc-status");
    assert_eq!(web_code, (tonic::Code::NotFound as i32).to_string());
}

#[tokio::test]
async fn server_streaming_over_grpc_web() {
    let m = setup().await;
    let mut grpc = HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", m.addr)).unwrap().connect().await.unwrap(),
    );
    let req = HealthCheckRequest { service: "users".into() };
    let first_grpc = grpc.watch(req.clone()).await.unwrap().into_inner().message().await.unwrap().unwrap();

    // Watch never ends: read the first message off the streaming body.
    let tcp = tokio::net::TcpStream::connect(m.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let r = http::Request::post("/grpc.health.v1.Health/Watch")
        .header("host", "api.test")
        .header("content-type", "application/grpc-web+proto")
        .body(http_body_util::Full::new(Bytes::from(grpc_frame(&req))))
        .unwrap();
    let resp = sender.send_request(r).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    while buf.len() < 5 || buf.len() < 5 + u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.unwrap().unwrap().unwrap();
        buf.extend_from_slice(&frame.into_data().unwrap());
    }
    let (msgs, _) = parse_web(Bytes::from(buf));
    assert_eq!(HealthCheckResponse::decode(msgs[0].clone()).unwrap(), first_grpc);
}

#[tokio::test]
async fn cors_preflight_for_configured_origins_only() {
    let m = setup().await;
    let preflight = |origin: &'static str| {
        let addr = m.addr;
        async move {
            let h = [("origin", origin), ("access-control-request-method", "POST")];
            http1(addr, "OPTIONS", "/grpc.health.v1.Health/Check", &h, b"").await
        }
    };
    let (status, headers, _) = preflight(ORIGIN).await;
    assert_eq!(status, 204);
    assert_eq!(headers["access-control-allow-origin"], ORIGIN);
    assert!(headers["access-control-allow-headers"].to_str().unwrap().contains("x-grpc-web"));
    let (status, headers, _) = preflight("https://evil.example").await;
    assert_eq!(status, 403);
    assert!(headers.get("access-control-allow-origin").is_none());
}
