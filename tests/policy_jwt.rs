//! End-user JWT at the inbound sidecar, attacked as in RELIABILITY.md rows
//! 9–13, over the real mesh (client sidecar → mTLS → echo's sidecar → app):
//! every refused token gets 401 with `WWW-Authenticate` (gRPC callers:
//! UNAUTHENTICATED) and never reaches the app.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use support::mesh::*;
use support::policy::*;

fn static_key_policy(leeway: &str) -> String {
    format!(
        r#"
[jwt]
leeway = "{leeway}"
public_paths = ["/public/*"]
[[jwt.issuers]]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["RS256"]
keys = [{{ kid = "k1", pem = """{RSA_PUBLIC}""" }}]
"#
    )
}

#[tokio::test]
async fn hostile_tokens_get_401_and_never_reach_the_app() {
    let (app, seen) = recording_app().await;
    let m = mesh(app, "h2c", None).await;
    let v = set_policy(&m.control, "echo", &static_key_policy("30s")).await;
    wait_version(m.server_side.admin_addr, v).await;
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;

    let good = rs256(&claims("alice", &["viewer"]), Some("k1"), RSA_PRIVATE);
    let ok = call(&mut c, "GET", "/orders", &[("authorization", &bearer(&good))]).await;
    assert_eq!(ok.status, 200, "a valid token passes: {:?}", ok.headers);
    assert_eq!(ok.header("x-seen-x-user-id"), "alice");
    let reached = seen.requests.load(Ordering::SeqCst);

    let mut wrong_type_exp = claims("alice", &[]);
    wrong_type_exp["exp"] = json!("never");
    let mut string_nbf = claims("alice", &[]);
    string_nbf["nbf"] = json!("yesterday");
    let mut no_aud = claims("alice", &[]);
    no_aud.as_object_mut().unwrap().remove("aud");
    let mut wrong_aud = claims("alice", &[]);
    wrong_aud["aud"] = json!("billing");
    let mut no_iss = claims("alice", &[]);
    no_iss.as_object_mut().unwrap().remove("iss");
    let mut wrong_iss = claims("alice", &[]);
    wrong_iss["iss"] = json!("https://evil.test");
    let mut no_exp = claims("alice", &[]);
    no_exp.as_object_mut().unwrap().remove("exp");
    let base = claims("alice", &["admin"]);
    let attacker_jwks = JwksServer::start(json!({ "keys": [] })).await;

    let cases: Vec<(&str, String)> = vec![
        ("missing token", String::new()),
        ("alg none", unsigned(&base)),
        ("HS256 signed with the RSA public key", hs256(&base, RSA_PUBLIC.as_bytes())),
        ("exp is a string", rs256(&wrong_type_exp, Some("k1"), RSA_PRIVATE)),
        ("nbf is a string", rs256(&string_nbf, Some("k1"), RSA_PRIVATE)),
        ("no aud", rs256(&no_aud, Some("k1"), RSA_PRIVATE)),
        ("wrong aud", rs256(&wrong_aud, Some("k1"), RSA_PRIVATE)),
        ("no iss", rs256(&no_iss, Some("k1"), RSA_PRIVATE)),
        ("wrong iss", rs256(&wrong_iss, Some("k1"), RSA_PRIVATE)),
        ("no exp", rs256(&no_exp, Some("k1"), RSA_PRIVATE)),
        ("signed by an untrusted key", rs256(&base, Some("k1"), RSA2_PRIVATE)),
        ("kid path traversal", rs256(&base, Some("../../../../../../etc/passwd"), RSA_PRIVATE)),
        ("kid of 10 KB", rs256(&base, Some(&"k".repeat(10 * 1024)), RSA_PRIVATE)),
        (
            "jku to the attacker's JWKS",
            rs256_with_header(&json!({ "alg": "RS256", "kid": "k1", "jku": attacker_jwks.url }), &base, RSA2_PRIVATE),
        ),
        (
            "jku even with the trusted key",
            rs256_with_header(&json!({ "alg": "RS256", "kid": "k1", "jku": attacker_jwks.url }), &base, RSA_PRIVATE),
        ),
        ("x5u", rs256_with_header(&json!({ "alg": "RS256", "x5u": attacker_jwks.url }), &base, RSA2_PRIVATE)),
        (
            "crit naming an unknown extension, signed by the trusted key",
            rs256_with_header(
                &json!({ "alg": "RS256", "kid": "k1", "crit": ["exp-never"], "exp-never": true }),
                &base,
                RSA_PRIVATE,
            ),
        ),
        ("garbage", "a.b.c".into()),
    ];
    for (name, token) in &cases {
        let auth = bearer(token);
        let headers: Vec<(&str, &str)> = if token.is_empty() { vec![] } else { vec![("authorization", &auth)] };
        let r = call(&mut c, "GET", "/orders", &headers).await;
        assert_eq!(r.status, 401, "{name}: {:?}", r.headers);
        assert!(r.header("www-authenticate").starts_with("Bearer"), "{name}: {:?}", r.headers);
        assert!(!r.header("x-redfire-reason").is_empty(), "{name}");
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), reached, "no refused request reached the app");
    assert_eq!(attacker_jwks.hits.load(Ordering::SeqCst), 0, "jku/x5u never fetched");

    // gRPC callers get UNAUTHENTICATED.
    let r = call(&mut c, "POST", "/orders.v1.Orders/Place", &[("content-type", "application/grpc")]).await;
    assert_eq!(r.header("grpc-status"), "16", "{:?}", r.headers);

    // Public paths need no token, and forged claim headers are stripped.
    let r = call(&mut c, "GET", "/public/info", &[("x-user-id", "root")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-seen-x-user-id"), "", "forged x-user-id stripped");
    let r = call(&mut c, "GET", "/orders", &[("authorization", &bearer(&good)), ("x-user-id", "root")]).await;
    assert_eq!(r.header("x-seen-x-user-id"), "alice", "the verified claim, not the forged header");

    let (_, metrics) = support::http_get(m.server_side.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("redfire_sidecar_auth_failures_total{service=\"echo\",reason=\"key_location_refused\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("redfire_sidecar_auth_failures_total{service=\"echo\",reason=\"critical_header_refused\"}"),
        "{metrics}"
    );
    m.client_side.shutdown();
    m.server_side.shutdown();
    m.control.shutdown();
}

#[tokio::test]
async fn clock_skew_is_accepted_just_inside_the_leeway_and_refused_just_outside() {
    let (app, _) = recording_app().await;
    let m = mesh(app, "h2c", None).await;
    let v = set_policy(&m.control, "echo", &static_key_policy("30s")).await;
    wait_version(m.server_side.admin_addr, v).await;
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;
    let with = |field: &str, offset: i64| {
        let mut cl = claims("alice", &[]);
        cl[field] = json!(now() + offset);
        rs256(&cl, Some("k1"), RSA_PRIVATE)
    };
    // Two seconds of margin either side of the 30 s boundary, so the second
    // ticking over between minting and checking cannot flip a case.
    for (what, token, want) in [
        ("expired 28 s ago", with("exp", -28), 200),
        ("expired 32 s ago", with("exp", -32), 401),
        ("valid from 28 s ahead", with("nbf", 28), 200),
        ("valid from 32 s ahead", with("nbf", 32), 401),
    ] {
        let r = call(&mut c, "GET", "/x", &[("authorization", &bearer(&token))]).await;
        assert_eq!(r.status, want, "{what}: {:?}", r.headers);
    }
    m.client_side.shutdown();
    m.server_side.shutdown();
    m.control.shutdown();
}

#[tokio::test]
async fn unknown_kid_flood_costs_at_most_one_jwks_fetch_and_cached_keys_survive_jwks_down() {
    let jwks = JwksServer::start(json!({ "keys": [rsa_jwk("k1")] })).await;
    let (app, seen) = recording_app().await;
    let m = mesh(app, "h2c", None).await;
    let policy = format!(
        r#"
[[jwt.issuers]]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["RS256"]
jwks_url = "{}"
"#,
        jwks.url
    );
    let v = set_policy(&m.control, "echo", &policy).await;
    wait_version(m.server_side.admin_addr, v).await;
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;
    let good = rs256(&claims("alice", &[]), Some("k1"), RSA_PRIVATE);
    let ok = support::eventually(Duration::from_secs(5), || {
        let mut c = c.clone();
        let auth = bearer(&good);
        async move { call(&mut c, "GET", "/x", &[("authorization", &auth)]).await.status == 200 }
    })
    .await;
    assert!(ok, "a token signed by a JWKS key passes");
    let before = jwks.hits.load(Ordering::SeqCst);
    let reached = seen.requests.load(Ordering::SeqCst);

    for i in 0..200 {
        let t = rs256(&claims("alice", &[]), Some(&format!("unknown-{i}")), RSA_PRIVATE);
        let r = call(&mut c, "GET", "/x", &[("authorization", &bearer(&t))]).await;
        assert_eq!(r.status, 401);
    }
    let flood_fetches = jwks.hits.load(Ordering::SeqCst) - before;
    assert!(flood_fetches <= 1, "200 unknown kids caused {flood_fetches} JWKS fetches (at most 1 per 30 s)");
    assert_eq!(seen.requests.load(Ordering::SeqCst), reached);

    jwks.down.store(true, Ordering::SeqCst);
    let fresh = rs256(&claims("bob", &[]), Some("k1"), RSA_PRIVATE);
    let r = call(&mut c, "GET", "/x", &[("authorization", &bearer(&fresh))]).await;
    assert_eq!(r.status, 200, "cached keys keep working while the JWKS endpoint is down");
    m.client_side.shutdown();
    m.server_side.shutdown();
    m.control.shutdown();
}

#[tokio::test]
async fn keys_found_through_oidc_discovery_verify_tokens() {
    let idp = JwksServer::start(json!({ "keys": [rsa_jwk("k1")] })).await;
    let (app, _) = recording_app().await;
    let m = mesh(app, "h2c", None).await;
    let policy = format!(
        "[[jwt.issuers]]\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\nalgorithms = [\"RS256\"]\noidc_discovery = \"{}\"\n",
        idp.issuer_url
    );
    let v = set_policy(&m.control, "echo", &policy).await;
    wait_version(m.server_side.admin_addr, v).await;
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;
    let good = bearer(&rs256(&claims("alice", &[]), Some("k1"), RSA_PRIVATE));
    let ok = support::eventually(Duration::from_secs(5), || {
        let (mut c, good) = (c.clone(), good.clone());
        async move { call(&mut c, "GET", "/x", &[("authorization", &good)]).await.status == 200 }
    })
    .await;
    assert!(ok, "discovery document → JWKS → key k1");
    assert!(idp.hits.load(Ordering::SeqCst) >= 2, "discovery and JWKS fetched");
    let forged = bearer(&rs256(&claims("alice", &[]), Some("k1"), RSA2_PRIVATE));
    assert_eq!(call(&mut c, "GET", "/x", &[("authorization", &forged)]).await.status, 401);
    m.client_side.shutdown();
    m.server_side.shutdown();
    m.control.shutdown();
}
