//! Client- and server-streaming gRPC through the mesh (unary and bidi are in
//! sidecar_proxy.rs), and the stream idle timeout: a stream that keeps
//! talking outlives the idle timeout many times over (there is no total
//! timeout), a silent one is cut instead of hanging forever.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::{Frame, Incoming};
use redfire::sidecar::config::Settings as SidecarSettings;
use support::mesh::*;

type Frames = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;

/// `/s.S/Trickle`: 6 messages 150 ms apart, then OK. `/s.S/Stall`: one
/// message, then silence for a minute.
async fn streaming_app() -> std::net::SocketAddr {
    serve_app(false, |req: Request<Incoming>| async move {
        let stall = req.uri().path().ends_with("/Stall");
        let (tx, rx) = tokio::sync::mpsc::channel::<Frames>(8);
        tokio::spawn(async move {
            let n = if stall { 1 } else { 6 };
            for i in 0..n {
                let _ = tx.send(Ok(Frame::data(Bytes::from(vec![i as u8; 10])))).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            if stall {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from_static("0"));
            let _ = tx.send(Ok(Frame::trailers(t))).await;
        });
        let body: BoxBody = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed_unsync();
        let mut resp = Response::new(body);
        resp.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
        Ok::<_, Infallible>(resp)
    })
    .await
}

fn call(path: &str, body: BoxBody) -> Request<BoxBody> {
    Request::post(format!("http://echo{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap()
}

fn empty() -> BoxBody {
    http_body_util::Empty::new().map_err(|n| match n {}).boxed_unsync()
}

#[tokio::test]
async fn server_streaming_outlives_the_idle_timeout_and_a_silent_stream_is_cut() {
    let app = streaming_app().await;
    let idle = SidecarSettings { stream_idle_timeout: Some("400ms".into()), ..Default::default() };
    let m = mesh(app, "h2c", Some(idle)).await;
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;

    // 6 messages over ~900 ms with a 400 ms idle timeout: all arrive, then OK.
    let resp = c.send_request(call("/s.S/Trickle", empty())).await.unwrap();
    let collected = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect()).await.unwrap().unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    let got = collected.to_bytes();
    assert_eq!(got.len(), 60);
    assert!(got.chunks(10).enumerate().all(|(i, c)| c.iter().all(|b| usize::from(*b) == i)));

    // One message, then silence: cut by the sidecar, not left hanging.
    let resp = c.send_request(call("/s.S/Stall", empty())).await.unwrap();
    let mut frames = BodyStream::new(resp.into_body());
    let first = frames.next().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap().as_ref(), &[0u8; 10]);
    let rest = tokio::time::timeout(Duration::from_secs(10), frames.next()).await.expect("cut, not hanging");
    assert!(matches!(rest, Some(Err(_))), "the silent stream ends with an error (RST_STREAM), got {rest:?}");
}

#[tokio::test]
async fn client_streaming_arrives_whole_before_the_single_answer() {
    let app = unary_app().await;
    let m = mesh(app, "h2c", None).await;
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Frames>(1);
    let body: BoxBody = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed_unsync();
    let pending = tokio::spawn(async move { c.send_request(call("/s.S/Upload", body)).await.unwrap() });
    let mut sent = Vec::new();
    for i in 0..20u8 {
        let chunk = vec![i; 5000];
        sent.extend_from_slice(&chunk);
        tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(tx);
    let resp = tokio::time::timeout(Duration::from_secs(10), pending).await.unwrap().unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(collected.to_bytes().as_ref(), &sent[..], "100 KB streamed in 20 messages, answered once, byte-exact");
}
