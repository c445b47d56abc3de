//! `/metrics` after real traffic: a client sidecar calls `echo`, which has a
//! healthy instance and one whose app answers every call UNAVAILABLE. The
//! failures are retried on the healthy instance and the failing one gets
//! ejected; the scrape must show the requests by class and gRPC code, the
//! latency histogram, the retries, the ejection and breaker state, open
//! connections and the certificate's remaining lifetime.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use redfire::sidecar::config::Settings as SidecarSettings;
use support::mesh::*;
use support::*;

/// The value of the sample `series` (name and labels exactly as exported).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// An app that answers every gRPC call with a trailers-only UNAVAILABLE.
async fn unavailable_app() -> std::net::SocketAddr {
    serve_app(false, |req: Request<Incoming>| async move {
        let _ = req.into_body().collect().await;
        let mut resp = Response::new(Full::new(Bytes::new()).map_err(|n| match n {}).boxed_unsync());
        resp.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
        resp.headers_mut().insert("grpc-status", HeaderValue::from_static("14"));
        Ok::<_, Infallible>(resp)
    })
    .await
}

#[tokio::test]
async fn metrics_after_traffic_with_retries_and_an_ejection() {
    let client = SidecarSettings { balancer: Some("round_robin".into()), ..Default::default() };
    let m = mesh(unary_app().await, "h2c", Some(client)).await;
    let bad = sidecar_for(&m.control, "echo", "echo-bad", unavailable_app().await, "h2c", Default::default()).await;
    let admin = m.client_side.admin_addr;
    assert!(eventually(Duration::from_secs(10), || async { endpoint_count(admin, "echo").await == 2 }).await);

    const N: usize = 40;
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;
    for _ in 0..N {
        let req = Request::post("http://echo/echo.Echo/Say")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"ping")).map_err(|n| match n {}).boxed_unsync())
            .unwrap();
        let resp = c.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("grpc-status").is_none(), "retried onto the healthy instance");
        let body = resp.into_body().collect().await.unwrap();
        assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
    }

    // `c` is still open: the outbound connection gauge counts it.
    let (status, text) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    let get = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    let ok = r#"redfire_sidecar_requests_total{direction="outbound",service="echo",class="2xx",grpc_code="0"}"#;
    assert_eq!(get(ok), N as f64, "every request succeeded, counted once however many attempts");
    let latency = r#"redfire_sidecar_response_latency_seconds_count{direction="outbound",service="echo"}"#;
    assert_eq!(get(latency), N as f64);
    let retried = get(r#"redfire_sidecar_retries_total{service="echo",result="retried"}"#);
    assert!((5.0..=N as f64).contains(&retried), "retries of the failing instance's answers: {retried}");
    assert_eq!(get(r#"redfire_sidecar_ejections_total{service="echo"}"#), 1.0, "5 failures in a row eject it");
    assert_eq!(get(r#"redfire_sidecar_ejected_endpoints{service="echo"}"#), 1.0);
    assert_eq!(get(r#"redfire_sidecar_endpoints{service="echo"}"#), 2.0);
    assert_eq!(get(r#"redfire_sidecar_in_flight_requests{service="echo"}"#), 0.0);
    assert!(get(r#"redfire_sidecar_open_connections{direction="outbound"}"#) >= 1.0);
    let peers = get(r#"redfire_sidecar_open_connections{direction="peer"}"#);
    assert_eq!(peers, 2.0, "one pooled mTLS connection to each echo instance");
    let expiry = get("redfire_sidecar_cert_expiry_seconds");
    assert!(expiry > 0.0 && expiry <= 24.0 * 3600.0, "the leaf's remaining lifetime: {expiry}");

    // The healthy instance's side: inbound requests and the open mTLS connection.
    let (_, text) = http_get(m.server_side.admin_addr, "/metrics").await;
    let get = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    let inbound_ok = r#"redfire_sidecar_requests_total{direction="inbound",service="echo",class="2xx",grpc_code="0"}"#;
    assert_eq!(get(inbound_ok), N as f64);
    assert!(get(r#"redfire_sidecar_open_connections{direction="inbound"}"#) >= 1.0);
    let (_, text) = http_get(bad.admin_addr, "/metrics").await;
    let failed = r#"redfire_sidecar_requests_total{direction="inbound",service="echo",class="2xx",grpc_code="14"}"#;
    assert!(sample(&text, failed).is_some_and(|n| n >= 5.0), "{text}");

    bad.shutdown();
    m.client_side.shutdown();
    m.server_side.shutdown();
    m.control.shutdown();
}

static FLAKY_FAILING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
static FLAKY_HITS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts its calls; answers UNAVAILABLE while `FLAKY_FAILING`, else OK.
async fn flaky_app() -> std::net::SocketAddr {
    use std::sync::atomic::Ordering;
    serve_app(false, |req: Request<Incoming>| async move {
        FLAKY_HITS.fetch_add(1, Ordering::SeqCst);
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let failing = FLAKY_FAILING.load(Ordering::SeqCst);
        let mut resp =
            Response::new(Full::new(if failing { Bytes::new() } else { body }).map_err(|n| match n {}).boxed_unsync());
        resp.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
        resp.headers_mut().insert("grpc-status", HeaderValue::from_static(if failing { "14" } else { "0" }));
        Ok::<_, Infallible>(resp)
    })
    .await
}

/// An endpoint that fails is ejected (no call reaches it while ejected, and
/// the callers see no failure), and once its app recovers and the ejection
/// time has passed, a probe brings it back into balancing.
#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_returns_after_it_recovers() {
    use std::sync::atomic::Ordering;
    let client = SidecarSettings {
        balancer: Some("round_robin".into()),
        ejection_time: Some("1s".into()),
        ..Default::default()
    };
    let m = mesh(unary_app().await, "h2c", Some(client)).await;
    let _flaky = sidecar_for(&m.control, "echo", "echo-flaky", flaky_app().await, "h2c", Default::default()).await;
    let admin = m.client_side.admin_addr;
    assert!(eventually(Duration::from_secs(10), || async { endpoint_count(admin, "echo").await == 2 }).await);
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;
    let mut call = async || {
        let req = Request::post("http://echo/echo.Echo/Say")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"ping")).map_err(|n| match n {}).boxed_unsync())
            .unwrap();
        let resp = c.send_request(req).await.unwrap();
        let status = resp.headers().get("grpc-status").cloned();
        let body = resp.into_body().collect().await.unwrap();
        body.trailers().and_then(|t| t.get("grpc-status").cloned()).or(status).unwrap()
    };
    let ejected = async || {
        let (_, text) = http_get(admin, "/metrics").await;
        sample(&text, r#"redfire_sidecar_ejected_endpoints{service="echo"}"#)
    };

    for _ in 0..20 {
        assert_eq!(call().await, "0", "failures are retried on the healthy instance");
    }
    assert_eq!(ejected().await, Some(1.0), "5 failures in a row ejected the flaky instance");
    let hits = FLAKY_HITS.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(call().await, "0");
    }
    assert_eq!(FLAKY_HITS.load(Ordering::SeqCst), hits, "no call reaches an ejected endpoint");

    FLAKY_FAILING.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut back = false;
    for _ in 0..200 {
        assert_eq!(call().await, "0", "the recovering instance's probe and calls succeed");
        if FLAKY_HITS.load(Ordering::SeqCst) > hits + 1 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back, "after the ejection time a probe succeeded and the instance takes traffic again");
    assert_eq!(ejected().await, Some(0.0));
}
