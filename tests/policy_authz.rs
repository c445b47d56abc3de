//! Service-to-service authorization and RBAC at the inbound sidecar, over
//! the real mesh: denied calls never reach the app (its own counter proves
//! it), and RBAC judges the normalised path, which is also the path the app
//! receives (RELIABILITY.md row 14).

mod support;

use std::sync::atomic::Ordering;

use support::mesh::*;
use support::policy::*;

#[tokio::test]
async fn only_allowed_identities_reach_the_app() {
    let (app, seen) = recording_app().await;
    let m = mesh(app, "h2c", None).await;
    let intruder = extra_client(&m, "default", "intruder").await;
    let ops = extra_client(&m, "ops", "tool").await;
    let policy = r#"
[authz]
default = "deny"
namespaces = { ops = "allow" }
[[authz.rules]]
from = ["spiffe://redfire.local/ns/default/sa/client"]
paths = ["/orders.v1.Orders/*"]
"#;
    let v = set_policy(&m.control, "echo", policy).await;
    wait_version(m.server_side.admin_addr, v).await;

    let mut allowed = h2c_client(m.client_side.upstream_addrs[0].1).await;
    let r = call(&mut allowed, "POST", "/orders.v1.Orders/Place", &[("content-type", "application/grpc")]).await;
    assert_eq!((r.status, r.header("grpc-status")), (200, "0"), "{:?}", r.headers);
    assert_eq!(r.header("x-seen-x-redfire-peer-identity"), "spiffe://redfire.local/ns/default/sa/client");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1);

    // The allowed identity, on a path no rule gives it.
    let r = call(&mut allowed, "GET", "/admin", &[]).await;
    assert_eq!(r.status, 403, "{:?}", r.headers);

    // Another identity in the same namespace: denied, gRPC and HTTP.
    let mut other = h2c_client(intruder.upstream_addrs[0].1).await;
    let r = call(&mut other, "POST", "/orders.v1.Orders/Place", &[("content-type", "application/grpc")]).await;
    assert_eq!(r.header("grpc-status"), "7", "PERMISSION_DENIED: {:?}", r.headers);
    assert!(r.header("x-redfire-reason").contains("sa/intruder"), "{:?}", r.headers);
    for _ in 0..20 {
        assert_eq!(call(&mut other, "GET", "/orders.v1.Orders/Place", &[]).await.status, 403);
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1, "0 denied requests reached the app");

    // A namespace whose default is allow.
    let mut tool = h2c_client(ops.upstream_addrs[0].1).await;
    assert_eq!(call(&mut tool, "GET", "/anything", &[]).await.status, 200);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 2);

    let (_, metrics) = support::http_get(m.server_side.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("redfire_sidecar_authz_denials_total{service=\"echo\",reason=\"service\"} 22"),
        "{metrics}"
    );
    for s in [intruder, ops] {
        s.shutdown();
    }
    m.client_side.shutdown();
    m.server_side.shutdown();
    m.control.shutdown();
}

#[tokio::test]
async fn rbac_judges_the_normalised_path_and_the_app_gets_that_path() {
    let (app, seen) = recording_app().await;
    let m = mesh(app, "h2c", None).await;
    let policy = format!(
        r#"
[jwt]
public_paths = ["/public/*"]
[[jwt.issuers]]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["HS256"]
keys = [{{ secret = "{SECRET}" }}]

[rbac]
roles = {{ admin = ["admin"], trader = ["orders.write", "orders.read"], viewer = ["orders.read"] }}
[[rbac.rules]]
path = "/admin/*"
permission = "admin"
[[rbac.rules]]
grpc = "orders.v1.Orders/Place"
permission = "orders.write"
[[rbac.rules]]
methods = ["GET"]
path = "/orders/*"
permission = "orders.read"
"#
    );
    let v = set_policy(&m.control, "echo", &policy).await;
    wait_version(m.server_side.admin_addr, v).await;
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;
    let token = |roles: &[&str]| bearer(&hs256(&claims("u1", roles), SECRET.as_bytes()));
    let (viewer, admin, trader) = (token(&["viewer"]), token(&["admin"]), token(&["trader"]));

    // Paths that try to reach /admin/users through the public prefix.
    let sneaky = [
        "/public/../admin/users",
        "/public/%2e%2e/admin/users",
        "/public/%2E%2E%2Fadmin/users",
        "/public/..%2fadmin/users",
        "//admin//users",
        "/./admin/./users",
        "/%61dmin/users",
    ];
    for p in sneaky {
        let r = call(&mut c, "GET", p, &[]).await;
        assert_eq!(r.status, 401, "{p}: not public once normalised: {:?}", r.headers);
        let r = call(&mut c, "GET", p, &[("authorization", &viewer)]).await;
        assert_eq!(r.status, 403, "{p}: a viewer may not reach /admin: {:?}", r.headers);
        let r = call(&mut c, "GET", p, &[("authorization", &admin)]).await;
        assert_eq!(r.status, 200, "{p}: {:?}", r.headers);
        assert_eq!(r.header("x-seen-path"), "/admin/users", "{p}: the app gets the authorised path");
    }
    // Case variants match no rule: the default (deny) applies.
    let r = call(&mut c, "GET", "/ADMIN/users", &[("authorization", &viewer)]).await;
    assert_eq!(r.status, 403);
    // A malformed escape is refused outright.
    assert_eq!(call(&mut c, "GET", "/admin%zz", &[("authorization", &admin)]).await.status, 400);

    // gRPC methods, roles and claim headers.
    let grpc = [("content-type", "application/grpc")];
    let r = call(&mut c, "POST", "/orders.v1.Orders/Place", &[grpc[0], ("authorization", &viewer)]).await;
    assert_eq!(r.header("grpc-status"), "7", "{:?}", r.headers);
    assert!(r.header("grpc-message").contains("orders.write"), "{:?}", r.headers);
    let r = call(&mut c, "POST", "/orders.v1.Orders/Place", &[grpc[0], ("authorization", &trader)]).await;
    assert_eq!(r.header("grpc-status"), "0", "{:?}", r.headers);
    assert_eq!(r.header("x-seen-x-user-roles"), "trader");
    assert_eq!(r.header("x-seen-x-user-id"), "u1");
    let r = call(&mut c, "GET", "/orders/7", &[("authorization", &viewer)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(call(&mut c, "DELETE", "/orders/7", &[("authorization", &admin)]).await.status, 403, "no rule: deny");

    assert_eq!(seen.requests.load(Ordering::SeqCst), sneaky.len() + 2);
    m.client_side.shutdown();
    m.server_side.shutdown();
    m.control.shutdown();
}

#[tokio::test]
async fn roles_kept_in_redis_grant_permissions_the_token_does_not_carry() {
    let Some(url) = support::shared_redis() else { return };
    let prefix = support::unique_prefix("roles");
    let (app, _) = recording_app().await;
    let m = mesh(app, "h2c", None).await;
    let policy = format!(
        r#"
[[jwt.issuers]]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["HS256"]
keys = [{{ secret = "{SECRET}" }}]
[rbac]
roles = {{ admin = ["admin"] }}
redis = {{ url = "{url}", key = "{prefix}:roles:{{sub}}", cache_ttl = "30s" }}
[[rbac.rules]]
path = "/admin/*"
permission = "admin"
"#
    );
    let mut conn = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () =
        redis::cmd("SADD").arg(format!("{prefix}:roles:carol")).arg("admin").query_async(&mut conn).await.unwrap();
    let v = set_policy(&m.control, "echo", &policy).await;
    wait_version(m.server_side.admin_addr, v).await;
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;
    let carol = bearer(&hs256(&claims("carol", &[]), SECRET.as_bytes()));
    let dave = bearer(&hs256(&claims("dave", &[]), SECRET.as_bytes()));
    assert_eq!(call(&mut c, "GET", "/admin/x", &[("authorization", &carol)]).await.status, 200);
    assert_eq!(call(&mut c, "GET", "/admin/x", &[("authorization", &dave)]).await.status, 403);
    let _: () = redis::cmd("DEL").arg(format!("{prefix}:roles:carol")).query_async(&mut conn).await.unwrap();
    m.client_side.shutdown();
    m.server_side.shutdown();
    m.control.shutdown();
}
