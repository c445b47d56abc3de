//! App health checks end to end: a sidecar checks its app's `/healthz`
//! (HTTP/1.1) on a short interval; when the app starts failing it reports
//! NOT_SERVING through its lease, the calling sidecar drops the endpoint and
//! every request goes to the healthy instance; the sidecar's `/ready` says
//! why. When the app recovers, the endpoint comes back.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use redfire::sidecar::config::Settings as SidecarSettings;
use support::mesh::*;
use support::*;

/// An HTTP/1.1 app named `name` whose `/healthz` answers 200 while `healthy`
/// holds, else 503; every other path answers 200 with `x-instance: name`.
async fn flagged_app(name: &'static str, healthy: &'static AtomicBool) -> std::net::SocketAddr {
    serve_app(true, move |req: Request<Incoming>| async move {
        let status = if req.uri().path() == "/healthz" && !healthy.load(Ordering::SeqCst) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")).map_err(|n| match n {}).boxed_unsync());
        *resp.status_mut() = status;
        resp.headers_mut().insert("x-instance", HeaderValue::from_static(name));
        Ok::<_, Infallible>(resp)
    })
    .await
}

/// Which instance answered a plain GET through the client's upstream listener.
async fn call(listener: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(listener).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /work HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    text.lines().find_map(|l| l.strip_prefix("x-instance: ")).expect("named").trim().to_string()
}

#[tokio::test]
async fn an_instance_whose_app_fails_its_checks_leaves_the_callers_endpoints_and_returns() {
    static STEADY: AtomicBool = AtomicBool::new(true);
    static FLAKY: AtomicBool = AtomicBool::new(true);
    // Round robin, so that both instances visibly take traffic.
    let client = SidecarSettings { balancer: Some("round_robin".into()), ..Default::default() };
    let m = mesh(flagged_app("steady", &STEADY).await, "http1", Some(client)).await;
    let checked = SidecarSettings {
        app_health_check: Some("http:/healthz".into()),
        app_health_interval: Some("100ms".into()),
        app_health_timeout: Some("500ms".into()),
        ..Default::default()
    };
    let flaky =
        sidecar_for(&m.control, "echo", "echo-flaky", flagged_app("flaky", &FLAKY).await, "http1", checked).await;
    let admin = m.client_side.admin_addr;
    let both = || async { endpoint_count(admin, "echo").await == 2 };
    assert!(eventually(Duration::from_secs(10), both).await, "the checked instance joins once its app is healthy");
    assert_eq!(http_get(flaky.admin_addr, "/ready").await.0, 200);
    let listener = m.client_side.upstream_addrs[0].1;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        seen.insert(call(listener).await);
    }
    assert_eq!(seen.len(), 2, "both instances take traffic: {seen:?}");

    // The app fails its checks: 3 failures at 100 ms, then NOT_SERVING
    // reaches control and the caller's discovery.
    FLAKY.store(false, Ordering::SeqCst);
    let one = || async { endpoint_count(admin, "echo").await == 1 };
    assert!(eventually(Duration::from_secs(5), one).await, "the failing instance leaves the caller's endpoints");
    let (status, body) = http_get(flaky.admin_addr, "/ready").await;
    assert_eq!((status, body.trim()), (503, "not ready: the app fails its health checks"));
    let (_, metrics) = http_get(flaky.admin_addr, "/metrics").await;
    assert!(metrics.lines().any(|l| l == "redfire_sidecar_app_serving 0"), "{metrics}");
    for _ in 0..20 {
        assert_eq!(call(listener).await, "steady", "nothing goes to the NOT_SERVING instance");
    }

    // Healthy again: one good check brings it back.
    FLAKY.store(true, Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(5), both).await, "the instance returns");
    assert_eq!(http_get(flaky.admin_addr, "/ready").await.0, 200);

    flaky.shutdown();
    m.client_side.shutdown();
    m.server_side.shutdown();
    m.control.shutdown();
}
