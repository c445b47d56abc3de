//! The data path end to end over real sockets: app client → sidecar A
//! (outbound) → HTTP/2 over mTLS → sidecar B (inbound) → app, with control
//! providing identities and discovery. Bodies must arrive byte-exact and
//! streamed (a bidi exchange proves nothing waits for a whole body).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use redfire::control::config::Config;
use redfire::control::identity::ca::Ca;
use redfire::control::identity::token;
use redfire::control::server::Control;
use redfire::sidecar::config::{Config as SidecarConfig, Settings as SidecarSettings};
use redfire::sidecar::server::Sidecar;
use support::*;
use tokio::net::TcpListener;

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// An app that streams the request body back, echoes the caller identity and
/// the protocol version in headers, and ends with gRPC trailers.
async fn echo_app(http1: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let peer = req.headers().get("x-redfire-peer-identity").cloned();
                    let version = format!("{:?}", req.version());
                    let frames = BodyStream::new(req.into_body()).map(|f| f.map_err(Into::into));
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    let end = futures::stream::once(async move { Ok(Frame::trailers(trailers)) });
                    let body: BoxBody = StreamBody::new(frames.chain(end)).boxed_unsync();
                    let mut resp = Response::new(body);
                    resp.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
                    resp.headers_mut().insert("x-app-version", HeaderValue::from_str(&version).unwrap());
                    if let Some(p) = peer {
                        resp.headers_mut().insert("x-peer", p);
                    }
                    Ok::<_, Infallible>(resp)
                });
                let io = TokioIo::new(tcp);
                if http1 {
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                } else {
                    let _ =
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, svc).await;
                }
            });
        }
    });
    addr
}

struct Mesh {
    control: Control,
    client_side: Sidecar,
    server_side: Sidecar,
}

async fn mesh(app: SocketAddr, app_protocol: &str) -> Mesh {
    let control = control(settings()).await;
    let ca = Ca::load(Config::from_settings(settings()).unwrap().ca).await.unwrap();
    let sidecar = |service: &str, upstreams: Option<String>, app_addr: String| {
        let tok = token::create(&ca, "default", service, Duration::from_secs(600)).unwrap();
        SidecarConfig::from_settings(SidecarSettings {
            control_addr: Some(format!("http://{}", control.grpc_addr)),
            service: Some(service.into()),
            bootstrap_token: Some(tok),
            inbound_addr: Some("127.0.0.1:0".into()),
            outbound_addr: Some("127.0.0.1:0".into()),
            admin_addr: Some("127.0.0.1:0".into()),
            upstreams,
            app_addr: Some(app_addr),
            app_protocol: Some(app_protocol.into()),
            shutdown_grace: Some("2s".into()),
            log_level: Some("warn".into()),
            ..Default::default()
        })
        .unwrap()
    };
    let server_side = Sidecar::start(sidecar("echo", None, app.to_string())).await.unwrap();
    let client_side =
        Sidecar::start(sidecar("client", Some("echo=127.0.0.1:0".into()), "127.0.0.1:9".into())).await.unwrap();
    let ready = eventually(Duration::from_secs(10), || async {
        let (_, body) = http_get(client_side.admin_addr, "/admin/endpoints").await;
        http_get(client_side.admin_addr, "/ready").await.0 == 200
            && http_get(server_side.admin_addr, "/ready").await.0 == 200
            && body.contains(&format!("\"address\": \"127.0.0.1:{}\"", server_side.inbound_addr.port()))
    })
    .await;
    assert!(ready, "both sidecars ready and the echo endpoint discovered");
    Mesh { control, client_side, server_side }
}

async fn h2c_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    sender
}

fn grpc_request(body: BoxBody) -> Request<BoxBody> {
    Request::post("http://echo/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-redfire-peer-identity", "spiffe://forged/identity")
        .body(body)
        .unwrap()
}

#[tokio::test]
async fn unary_and_bidi_streaming_grpc_arrive_byte_exact_over_mtls() {
    let app = echo_app(false).await;
    let m = mesh(app, "h2c").await;
    let listener = m.client_side.upstream_addrs[0].1;
    let mut c = h2c_client(listener).await;

    // Unary: 105 bytes, as the peers benchmark sends.
    let payload: Vec<u8> = (0..105u8).collect();
    let req = grpc_request(Full::new(Bytes::from(payload.clone())).map_err(|n| match n {}).boxed_unsync());
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-peer"],
        "spiffe://redfire.local/ns/default/sa/client",
        "identity from mTLS, not the forged header"
    );
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(collected.to_bytes().as_ref(), &payload[..]);

    // Bidi: each chunk must come back before the next is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(1);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed_unsync();
    let resp = c.send_request(grpc_request(body)).await.unwrap();
    let mut frames = BodyStream::new(resp.into_body());
    for i in 0..10u8 {
        let chunk = Bytes::from(vec![i; 1000 + usize::from(i)]);
        tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
        let mut got = Vec::new();
        while got.len() < chunk.len() {
            let f = tokio::time::timeout(Duration::from_secs(5), frames.next())
                .await
                .expect("echo is streamed")
                .unwrap()
                .unwrap();
            got.extend_from_slice(f.data_ref().expect("data frame"));
        }
        assert_eq!(got, chunk.to_vec(), "chunk {i} byte-exact");
    }
    drop(tx);
    let mut trailers = None;
    while let Some(f) = frames.next().await {
        if let Ok(t) = f.unwrap().into_trailers() {
            trailers = Some(t);
        }
    }
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    m.client_side.shutdown();
    m.server_side.shutdown();
    m.control.shutdown();
}

#[tokio::test]
async fn http1_chunked_rides_http2_and_reaches_an_http1_app_as_http1() {
    let app = echo_app(true).await;
    let m = mesh(app, "http1").await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(m.client_side.outbound_addr).await.unwrap();
    let req = "POST /orders HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("x-app-version: http/1.1"), "the app got HTTP/1.1: {text}");
    assert!(text.contains("hello") && text.contains(" world"), "{text}");
    m.client_side.shutdown();
    m.server_side.shutdown();
    m.control.shutdown();
}

#[tokio::test]
async fn unknown_service_fails_fast_with_a_reason() {
    let app = echo_app(false).await;
    let m = mesh(app, "h2c").await;
    let mut c = h2c_client(m.client_side.outbound_addr).await;
    let started = std::time::Instant::now();
    let req = Request::post("http://nosuch/x.Y/Z")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()).map_err(|n| match n {}).boxed_unsync())
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(resp.headers()["grpc-status"], "14", "UNAVAILABLE");
    assert!(resp.headers()["x-redfire-reason"].to_str().unwrap().contains("unknown"), "{:?}", resp.headers());
    m.client_side.shutdown();
    m.server_side.shutdown();
    m.control.shutdown();
}
