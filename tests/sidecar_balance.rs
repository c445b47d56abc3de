//! Hash balancing end to end: a client sidecar and three `echo` endpoints
//! (each a real sidecar beside its own app, over mTLS). The same
//! `x-user-id` always reaches the same instance, different ids spread over
//! all three, and when one instance leaves only its own users move. Zone
//! preference keeps keyless traffic in the caller's zone while enough of it
//! is up (instances failing their health checks count as down).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use redfire::sidecar::config::Settings as SidecarSettings;
use support::mesh::*;
use support::*;

const USERS: usize = 60;

type Client = hyper::client::conn::http2::SendRequest<BoxBody>;

/// The instance that answered one request, with `header: value` when given.
async fn instance_for(c: &mut Client, header: Option<(&str, &str)>) -> String {
    let mut req =
        Request::post("http://echo/echo.Echo/Say").header("content-type", "application/grpc").header("te", "trailers");
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    let req = req.body(Full::new(Bytes::from_static(b"hi")).map_err(|n| match n {}).boxed_unsync()).unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let name = resp
        .headers()
        .get("x-instance")
        .unwrap_or_else(|| panic!("not answered by a named app: {:?}", resp.headers()))
        .to_str()
        .unwrap()
        .to_string();
    let body = resp.into_body().collect().await.unwrap();
    assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
    name
}

/// Where each user lands (asking each three times: it must be the same).
async fn placement(listener: SocketAddr, header: &str) -> Vec<String> {
    let c = &mut h2c_client(listener).await;
    let mut out = Vec::new();
    for u in 0..USERS {
        let user = format!("user-{u}");
        let first = instance_for(c, Some((header, &user))).await;
        for _ in 0..2 {
            assert_eq!(instance_for(c, Some((header, &user))).await, first, "{user} stays on one instance");
        }
        out.push(first);
    }
    out
}

/// Runs the scenario with the client sidecar configured by `client`, users
/// identified by `header`; returns the share of the users not on the leaver
/// that stayed where they were.
async fn affinity(client: SidecarSettings, header: &str) -> f64 {
    let m = mesh(named_app("a").await, "h2c", Some(client)).await;
    let none = SidecarSettings::default;
    let b = sidecar_for(&m.control, "echo", "echo-b", named_app("b").await, "h2c", none()).await;
    let c = sidecar_for(&m.control, "echo", "echo-c", named_app("c").await, "h2c", none()).await;
    let admin = m.client_side.admin_addr;
    // No wait for the new sidecars' /ready: they register NOT_SERVING until
    // they hold a certificate, so an endpoint the client sees can serve.
    assert!(
        eventually(Duration::from_secs(15), || async { endpoint_count(admin, "echo").await == 3 }).await,
        "three echo endpoints discovered"
    );
    let listener = m.client_side.upstream_addrs[0].1;

    let before = placement(listener, header).await;
    let mut per: HashMap<&str, usize> = HashMap::new();
    for i in &before {
        *per.entry(i.as_str()).or_default() += 1;
    }
    assert_eq!(per.len(), 3, "{USERS} users spread over all three instances: {per:?}");
    assert!(per.values().all(|&n| n >= USERS / 10), "no instance is starved: {per:?}");

    // Without the header: still served, by whichever instance.
    let mut seen = std::collections::HashSet::new();
    let client = &mut h2c_client(listener).await;
    for _ in 0..30 {
        seen.insert(instance_for(client, None).await);
    }
    assert!(seen.len() >= 2, "keyless requests are balanced, not pinned: {seen:?}");

    // b leaves (drain: DRAINING, then deregistered).
    b.shutdown();
    b.wait().await;
    assert!(
        eventually(Duration::from_secs(15), || async { endpoint_count(admin, "echo").await == 2 }).await,
        "b is gone from the client's endpoints"
    );
    let after = placement(listener, header).await;
    assert!(after.iter().all(|i| i != "b"), "no user goes to the instance that left");
    let others: Vec<bool> = before.iter().zip(&after).filter(|(was, _)| *was != "b").map(|(w, n)| w == n).collect();
    let kept = others.iter().filter(|&&k| k).count() as f64 / others.len() as f64;

    c.shutdown();
    m.client_side.shutdown();
    m.server_side.shutdown();
    m.control.shutdown();
    kept
}

#[tokio::test]
async fn ring_hash_keeps_each_user_on_one_instance_and_moves_only_the_leavers_users() {
    let client = SidecarSettings { balancer: Some("ring_hash".into()), ..Default::default() };
    let kept = affinity(client, "x-user-id").await;
    // Equal registry weights: the ring moves no key between instances that stay.
    assert_eq!(kept, 1.0, "users of the instances that stayed kept their instance");
}

#[tokio::test]
async fn maglev_per_service_with_its_own_header_keeps_affinity() {
    let client = SidecarSettings { service_balancers: Some("echo=maglev:x-account".into()), ..Default::default() };
    let kept = affinity(client, "x-account").await;
    assert!(kept >= 0.9, "{kept} of the users of the instances that stayed kept their instance");
}

/// An h2c app named `name` whose `/healthz` answers 503 while `down` holds.
async fn zone_app(name: &'static str, down: &'static std::sync::atomic::AtomicBool) -> SocketAddr {
    use std::sync::atomic::Ordering;
    serve_app(false, move |req: hyper::Request<hyper::body::Incoming>| async move {
        let unhealthy = req.uri().path() == "/healthz" && down.load(Ordering::SeqCst);
        let _ = req.into_body().collect().await;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = vec![Ok(hyper::body::Frame::trailers(trailers))];
        let body: BoxBody = http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed_unsync();
        let mut resp = http::Response::new(body);
        if unhealthy {
            *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
        resp.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
        resp.headers_mut().insert("x-instance", http::HeaderValue::from_static(name));
        Ok::<_, std::convert::Infallible>(resp)
    })
    .await
}

#[tokio::test]
async fn zone_preference_keeps_traffic_local_and_spills_over_when_the_zone_is_short() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static LOCAL_1_DOWN: AtomicBool = AtomicBool::new(false);
    static NEVER: AtomicBool = AtomicBool::new(false);
    // The client in eu-1a, staying in the zone only while all of it is up.
    let client = SidecarSettings {
        zone: Some("eu-1a".into()),
        zone_min_healthy: Some("1.0".into()),
        balancer: Some("round_robin".into()),
        ..Default::default()
    };
    let m = mesh(named_app("remote-1").await, "h2c", Some(client)).await;
    let zoned = |zone: &str, check: bool| SidecarSettings {
        zone: Some(zone.into()),
        app_health_check: check.then(|| "http:/healthz".into()),
        app_health_interval: Some("100ms".into()),
        ..Default::default()
    };
    let mut extra = Vec::new();
    for (id, name, zone, down) in [
        ("echo-remote-2", "remote-2", "eu-1b", &NEVER),
        ("echo-local-1", "local-1", "eu-1a", &LOCAL_1_DOWN),
        ("echo-local-2", "local-2", "eu-1a", &NEVER),
    ] {
        let app = zone_app(name, down).await;
        extra.push(sidecar_for(&m.control, "echo", id, app, "h2c", zoned(zone, true)).await);
    }
    let admin = m.client_side.admin_addr;
    let count = |n: usize| async move {
        eventually(Duration::from_secs(10), || async { endpoint_count(admin, "echo").await == n }).await
    };
    assert!(count(4).await, "four echo endpoints discovered");
    let listener = m.client_side.upstream_addrs[0].1;
    let spread = || async {
        let c = &mut h2c_client(listener).await;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            seen.insert(instance_for(c, None).await);
        }
        seen.into_iter().collect::<Vec<_>>()
    };
    assert_eq!(spread().await, ["local-1", "local-2"], "the whole zone is up: traffic stays in it");

    // local-1 fails its checks: it reports NOT_SERVING but stays registered,
    // so the zone counts 1 of 2 up, under the 100 % asked: spill over.
    LOCAL_1_DOWN.store(true, Ordering::SeqCst);
    assert!(count(3).await, "local-1 leaves the endpoints");
    assert_eq!(spread().await, ["local-2", "remote-1", "remote-2"], "spread over every zone");

    LOCAL_1_DOWN.store(false, Ordering::SeqCst);
    assert!(count(4).await, "local-1 is back");
    assert_eq!(spread().await, ["local-1", "local-2"], "back in the zone");

    for s in extra {
        s.shutdown();
    }
    m.client_side.shutdown();
    m.server_side.shutdown();
    m.control.shutdown();
}
