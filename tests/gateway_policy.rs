//! The gateway's own policy (its service's document from control): a
//! client with a JWT calls `/api/v1/users/42` through the gateway; the
//! token is verified and RBAC checked on the path the client called, the
//! verified claims travel as user headers, the route's rewrite applies,
//! and the user service answers through its sidecar (mTLS). Refusals are
//! JSON with the request id; rate limits key on the route and the user;
//! a dot-segment path cannot route around a rule.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use redfire::sidecar::config::Settings as SidecarSettings;
use serde_json::Value;
use support::gateway::*;
use support::http_get;
use support::policy::*;

/// The headers the user service reports.
const SEEN: &[&str] = &["x-user-id", "x-user-roles", "authorization"];

const ROUTES: &str = r#"
[[route]]
name = "users-v1"
path_prefix = "/api/v1/users"
rewrite = "/users"
service = "users"

[[route]]
name = "admin"
path_prefix = "/admin"
service = "users"
"#;

fn gateway_policy() -> String {
    format!(
        r#"
[jwt]
public_paths = ["/api/v1/users/public"]
[[jwt.issuers]]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["RS256"]
keys = [{{ kid = "k1", pem = """{RSA_PUBLIC}""" }}]

[rbac]
roles = {{ admin = ["admin"], trader = ["users.read"], viewer = ["users.read"] }}
[[rbac.rules]]
path = "/admin/*"
permission = "admin"
[[rbac.rules]]
methods = ["GET"]
path = "/api/v1/users/*"
permission = "users.read"

[[rate_limits]]
name = "users-per-user"
route = "users-v1"
path = "/"
limit = 5
window = "60s"
key = "claim:sub"
"#
    )
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("JSON body ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn jwt_user_calls_a_service_through_the_gateway_and_refusals_are_json() {
    let app = users_app("1", SEEN).await;
    let m = gateway_mesh(
        &[Service { name: "users", app, protocol: "http1", metadata: "" }],
        ROUTES,
        SidecarSettings::default(),
    )
    .await;
    let v = set_policy(&m.control, "gateway", &gateway_policy()).await;
    wait_version(m.gateway.admin_addr, v).await;

    let alice = rs256(&claims("alice", &["trader"]), Some("k1"), RSA_PRIVATE);
    let auth = format!("Bearer {alice}");
    let (status, headers, body) = http1(m.addr, "GET", "/api/v1/users/42", &[("authorization", &auth)], b"").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seen = json(&body);
    assert_eq!(seen["path"], "/users/42", "the route's rewrite applies after the policy");
    assert_eq!(seen["x-user-id"], "alice", "the verified subject arrives as a user header");
    assert_eq!(seen["x-user-roles"], "trader");
    assert_eq!(seen["peer"], "spiffe://redfire.local/ns/default/sa/gateway", "over mTLS as the gateway");
    assert!(headers.contains_key("x-request-id"));

    // A client cannot forge the user headers, with or without a token.
    let forged = [("authorization", auth.as_str()), ("x-user-id", "root"), ("x-user-roles", "admin")];
    let (_, _, body) = http1(m.addr, "GET", "/api/v1/users/42", &forged, b"").await;
    assert_eq!(json(&body)["x-user-id"], "alice");
    let (_, _, body) = http1(m.addr, "GET", "/api/v1/users/public", &[("x-user-id", "root")], b"").await;
    assert_eq!(json(&body)["x-user-id"], "", "a public path passes without a token, forged headers stripped");

    // No token: 401, JSON, WWW-Authenticate, the request id.
    let (status, headers, body) = http1(m.addr, "GET", "/api/v1/users/42", &[("x-request-id", "req-1")], b"").await;
    assert_eq!(status, 401);
    assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let err = json(&body);
    assert_eq!(err["error"]["code"], "unauthenticated");
    assert_eq!(err["request_id"], "req-1");

    // gRPC and gRPC-Web callers get the gRPC status, not a JSON page.
    let mut h2 = support::mesh::h2c_client(m.addr).await;
    for ct in ["application/grpc", "application/grpc-web+proto"] {
        let req = Request::post("http://api.test/api/v1/users/42")
            .header("content-type", ct)
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])).map_err(|n| match n {}).boxed_unsync())
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{ct}");
        assert_eq!(resp.headers()["grpc-status"], "16", "{ct}: UNAUTHENTICATED");
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with(ct), "{ct}: {:?}", resp.headers());
    }

    // A token signed by someone else: 401.
    let forged_token = rs256(&claims("mallory", &["admin"]), Some("k1"), RSA2_PRIVATE);
    let (status, _, _) =
        http1(m.addr, "GET", "/api/v1/users/42", &[("authorization", &format!("Bearer {forged_token}"))], b"").await;
    assert_eq!(status, 401);

    // Authenticated but without the role: 403.
    let (status, _, body) = http1(m.addr, "GET", "/admin/users", &[("authorization", &auth)], b"").await;
    assert_eq!(status, 403);
    assert_eq!(json(&body)["error"]["code"], "permission_denied");
    // Dot segments are resolved before routing and policy: this is /admin/users.
    let (status, _, _) =
        http1(m.addr, "GET", "/api/v1/users/%2e%2e/%2e%2e/%2e%2e/admin/users", &[("authorization", &auth)], b"").await;
    assert_eq!(status, 403, "a dot-segment path is the path it resolves to");

    // The rate limit of the route counts per user: alice has used 2 of 5.
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(http1(m.addr, "GET", "/api/v1/users/42", &[("authorization", &auth)], b"").await.0);
    }
    assert_eq!(codes, [200, 200, 200, 429], "the sixth request of alice on the route is limited");
    let bob = rs256(&claims("bob", &["viewer"]), Some("k1"), RSA_PRIVATE);
    let (status, _, _) =
        http1(m.addr, "GET", "/api/v1/users/7", &[("authorization", &format!("Bearer {bob}"))], b"").await;
    assert_eq!(status, 200, "another user has his own budget");

    let (_, text) = http_get(m.gateway.admin_addr, "/metrics").await;
    assert!(text.contains("gateway_limited_total{route=\"users-v1\"} 1"), "{text}");
    assert!(text.contains("gateway_auth_failures_total{route=\"users-v1\"} 4"), "{text}");
    assert!(text.contains("gateway_auth_failures_total{route=\"admin\"} 2"), "{text}");
}

#[tokio::test]
async fn routes_come_from_control_and_hot_reload_with_the_policy() {
    let app = users_app("1", SEEN).await;
    let m = gateway_mesh(
        &[Service { name: "users", app, protocol: "http1", metadata: "" }],
        "",
        SidecarSettings::default(),
    )
    .await;
    let (status, _, body) = http1(m.addr, "GET", "/api/v1/users/42", &[], b"").await;
    assert_eq!(status, 404, "no routes before control has any: {}", String::from_utf8_lossy(&body));

    let routes = |prefix: &str| {
        format!("[[route]]\nname = \"users\"\npath_prefix = \"{prefix}\"\nrewrite = \"/users\"\nservice = \"users\"\n")
    };
    let v = set_policy(&m.control, "gateway", &routes("/api/v1/users")).await;
    wait_version(m.gateway.admin_addr, v).await;
    let (status, _, body) = http1(m.addr, "GET", "/api/v1/users/42", &[], b"").await;
    assert_eq!((status, json(&body)["path"].as_str()), (200, Some("/users/42")));
    let (_, admin) = http_get(m.gateway.admin_addr, "/admin/routes").await;
    assert!(admin.contains(&format!("control policy v{v}")), "{admin}");

    // A new version moves the route; requests follow without a restart.
    let v = set_policy(&m.control, "gateway", &routes("/api/v2/users")).await;
    wait_version(m.gateway.admin_addr, v).await;
    assert_eq!(http1(m.addr, "GET", "/api/v1/users/42", &[], b"").await.0, 404);
    assert_eq!(http1(m.addr, "GET", "/api/v2/users/42", &[], b"").await.0, 200);

    // Control refuses a broken route table, naming the field; the one in force stays.
    let mut c = policy_client(&m.control).await;
    let bad = "[[route]]\nname = \"users\"\npath_prefix = \"/x\"\nservice = \"users\"\ntimeout = \"soon\"\n";
    let err = c
        .set(redfire::proto::policy::v1::SetRequest { service: "gateway".into(), toml: bad.into() })
        .await
        .expect_err("an invalid route is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("timeout"), "{}", err.message());
    assert_eq!(http1(m.addr, "GET", "/api/v2/users/42", &[], b"").await.0, 200);
}
