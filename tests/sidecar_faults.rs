//! The data path under faults: deadlines shrink across hops and expire with
//! DEADLINE_EXCEEDED, the per-service limit fails fast, and a dead control
//! leaves routes in use working while unknown services fail within 3 s.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use redfire::sidecar::config::Settings as SidecarSettings;
use support::mesh::*;
use support::*;

fn call(path: &str, timeout: Option<&str>) -> Request<BoxBody> {
    let mut b =
        Request::post(format!("http://echo{path}")).header("content-type", "application/grpc").header("te", "trailers");
    if let Some(t) = timeout {
        b = b.header("grpc-timeout", t);
    }
    b.body(Full::new(Bytes::from_static(b"ping")).map_err(|n| match n {}).boxed_unsync()).unwrap()
}

#[tokio::test]
async fn deadline_is_forwarded_shrunk_and_enforced() {
    let m = mesh(echo_app(false).await, "h2c", None).await;
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;
    let resp = c.send_request(call("/echo.Echo/Say", Some("2S"))).await.unwrap();
    let seen = resp.headers()["x-grpc-timeout"].to_str().unwrap().to_string();
    let ms: u64 = seen.trim_end_matches('m').parse().unwrap();
    assert!(seen.ends_with('m') && ms < 2000 && ms > 1000, "the app got the remaining budget, not 2S: {seen}");

    let started = Instant::now();
    let resp = c.send_request(call("/echo.Echo/Hang", Some("300m"))).await.unwrap();
    let took = started.elapsed();
    assert_eq!(resp.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED: {:?}", resp.headers());
    assert!(took >= Duration::from_millis(290) && took < Duration::from_secs(2), "{took:?}");
    m.client_side.shutdown();
    m.server_side.shutdown();
    m.control.shutdown();
}

#[tokio::test]
async fn per_service_limit_gives_fast_unavailable() {
    let limited = SidecarSettings { max_in_flight: Some("1".into()), ..Default::default() };
    let m = mesh(echo_app(false).await, "h2c", Some(limited)).await;
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;
    let hung = c.send_request(call("/echo.Echo/Hang", None));
    let hung = tokio::spawn(hung);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let resp = c.send_request(call("/echo.Echo/Say", None)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "fails fast");
    assert_eq!(resp.headers()["grpc-status"], "14");
    let reason = resp.headers()["x-redfire-reason"].to_str().unwrap();
    assert!(reason.contains("requests in flight"), "{reason}");
    hung.abort();
    m.client_side.shutdown();
    m.server_side.shutdown();
    m.control.shutdown();
}

#[tokio::test]
async fn control_killed_keeps_routes_in_use_and_fails_unknown_services_fast() {
    let m = mesh(echo_app(false).await, "h2c", None).await;
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;
    assert_eq!(c.send_request(call("/echo.Echo/Say", None)).await.unwrap().status(), 200);

    m.control.shutdown();
    m.control.wait().await.unwrap();
    let admin = m.client_side.admin_addr;
    assert!(eventually(Duration::from_secs(5), || async { http_get(admin, "/ready").await.0 == 503 }).await);
    for _ in 0..20 {
        let resp = c.send_request(call("/echo.Echo/Say", None)).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.into_body().collect().await.unwrap().trailers().unwrap()["grpc-status"], "0");
    }
    let mut shared = h2c_client(m.client_side.outbound_addr).await;
    let started = Instant::now();
    let req = Request::post("http://nosuch/x.Y/Z")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()).map_err(|n| match n {}).boxed_unsync())
        .unwrap();
    let resp = shared.send_request(req).await.unwrap();
    assert!(started.elapsed() <= Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(resp.headers()["grpc-status"], "14");
    m.client_side.shutdown();
    m.server_side.shutdown();
}

#[tokio::test]
async fn inbound_drain_lets_an_in_flight_stream_finish() {
    use futures::StreamExt;
    use http_body_util::{BodyStream, StreamBody};
    use hyper::body::Frame;
    let m = mesh(echo_app(false).await, "h2c", None).await;
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(1);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed_unsync();
    let req = Request::post("http://echo/echo.Echo/Chat")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    let mut frames = BodyStream::new(resp.into_body());
    tx.send(Ok(Frame::data(Bytes::from_static(b"before")))).await.unwrap();
    assert_eq!(frames.next().await.unwrap().unwrap().into_data().unwrap(), "before");

    // Sidecar B starts draining with the stream open (2 s grace): it must
    // not stop (deregister, exit) while the stream is in flight.
    let Mesh { control, client_side, server_side, .. } = m;
    server_side.shutdown();
    let stopped = tokio::spawn(server_side.wait());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stopped.is_finished(), "the drain waits for the in-flight stream");
    tx.send(Ok(Frame::data(Bytes::from_static(b"after")))).await.unwrap();
    assert_eq!(frames.next().await.unwrap().unwrap().into_data().unwrap(), "after");
    drop(tx);
    let trailers = frames.next().await.unwrap().unwrap().into_trailers().unwrap();
    assert_eq!(trailers["grpc-status"], "0", "the stream finished normally during the drain");
    tokio::time::timeout(Duration::from_secs(3), stopped).await.expect("stops once the stream is done").unwrap();
    client_side.shutdown();
    control.shutdown();
}
