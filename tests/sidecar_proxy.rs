//! The data path end to end over real sockets: app client → sidecar A
//! (outbound) → HTTP/2 over mTLS → sidecar B (inbound) → app, with control
//! providing identities and discovery. Bodies must arrive byte-exact and
//! streamed (a bidi exchange proves nothing waits for a whole body).

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::Request;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::Frame;
use support::mesh::*;

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
    let m = mesh(app, "h2c", None).await;
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
    let m = mesh(app, "http1", None).await;
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
    let m = mesh(app, "h2c", None).await;
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
