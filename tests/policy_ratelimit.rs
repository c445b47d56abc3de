//! Rate limits from the policy, enforced by the real sidecars: a limit in
//! memory answers 429 / RESOURCE_EXHAUSTED with `Retry-After` and
//! `RateLimit-*` once spent, and the app sees only the admitted requests;
//! a Redis-stored limit is one limit for every instance of the service.

mod support;

use std::sync::atomic::Ordering;

use redfire::sidecar::config::Settings as SidecarSettings;
use support::mesh::*;
use support::policy::*;
use support::{settings, shared_redis, unique_prefix};

const GRPC: &[(&str, &str)] = &[("content-type", "application/grpc")];

#[tokio::test]
async fn a_spent_limit_answers_429_or_resource_exhausted_and_the_app_sees_only_admitted_calls() {
    let (app, seen) = recording_app().await;
    let m = mesh_on(app, "h2c", None, settings()).await;
    let policy = "[[rate_limits]]\nname = \"orders\"\npath = \"/orders.v1.Orders\"\nlimit = 3\nwindow = \"60s\"\nkey = \"global\"\n";
    let v = set_policy(&m.control, "echo", policy).await;
    wait_version(m.server_side.admin_addr, v).await;
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;

    for _ in 0..3 {
        let r = call(&mut c, "POST", "/orders.v1.Orders/Place", GRPC).await;
        assert_eq!((r.status, r.header("grpc-status")), (200, "0"), "within the limit");
    }
    let r = call(&mut c, "POST", "/orders.v1.Orders/Place", GRPC).await;
    assert_eq!(r.header("grpc-status"), "8", "RESOURCE_EXHAUSTED once the limit is spent");
    let r = call(&mut c, "GET", "/orders.v1.Orders/list", &[]).await;
    assert_eq!(r.status, 429, "plain HTTP gets 429");
    assert!(r.header("retry-after").parse::<u64>().is_ok_and(|s| (1..=60).contains(&s)), "{:?}", r.headers);
    assert_eq!(r.header("ratelimit-limit"), "3");
    assert_eq!(r.header("ratelimit-remaining"), "0");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 3, "refused calls never reach the app");

    // Other paths are not limited by this rule.
    let r = call(&mut c, "POST", "/users.v1.Users/Get", GRPC).await;
    assert_eq!((r.status, r.header("grpc-status")), (200, "0"));
}

#[tokio::test]
async fn a_redis_limit_is_one_limit_for_every_instance_of_the_service() {
    let Some(url) = shared_redis() else { return };
    let redis = SidecarSettings {
        ratelimit_redis_url: Some(url),
        ratelimit_redis_prefix: Some(unique_prefix("policy-rl")),
        ..Default::default()
    };
    let (app, seen) = recording_app().await;
    let (app2, seen2) = recording_app().await;
    let client = SidecarSettings { balancer: Some("round_robin".into()), ..Default::default() };
    let m = mesh_full(settings(), app, "h2c", client, redis.clone()).await;
    let second = sidecar_for(&m.control, "echo", "echo-2", app2, "h2c", redis).await;
    let admin = m.client_side.admin_addr;
    assert!(
        support::eventually(std::time::Duration::from_secs(10), || async { endpoint_count(admin, "echo").await == 2 })
            .await
    );
    let policy = "[[rate_limits]]\nname = \"shared\"\npath = \"/\"\nlimit = 10\nwindow = \"60s\"\nkey = \"global\"\nstorage = \"redis\"\nfailure_mode = \"closed\"\n";
    let v = set_policy(&m.control, "echo", policy).await;
    wait_version(m.server_side.admin_addr, v).await;
    wait_version(second.admin_addr, v).await;

    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;
    let mut admitted = 0;
    for _ in 0..30 {
        let r = call(&mut c, "POST", "/orders.v1.Orders/Place", GRPC).await;
        match r.header("grpc-status") {
            "0" => admitted += 1,
            "8" => {}
            other => panic!("unexpected grpc-status {other:?}: {:?}", r.headers),
        }
    }
    let (a, b) = (seen.requests.load(Ordering::SeqCst), seen2.requests.load(Ordering::SeqCst));
    assert_eq!(admitted, 10, "one limit of 10 across both instances");
    assert_eq!(a + b, 10);
    assert!(a > 0 && b > 0, "both instances took part: {a} + {b}");
}
