//! Gateway mode end to end: a client calls the gateway over HTTP/1.1 and
//! h2c; the route table picks the service, rewrites the path and edits
//! headers; the request crosses the mesh (mTLS) to the service's sidecar and
//! app; unknown routes get a JSON 404; routes hot-reload; version subsets
//! pick instances by metadata; WebSocket passes through.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::Request;
use http_body_util::BodyExt;
use redfire::sidecar::config::Settings as SidecarSettings;
use support::gateway::*;
use support::mesh::h2c_client;
use support::{eventually, http_get, metric};
use tokio_tungstenite::tungstenite::Message;

/// The headers the user service reports.
const SEEN: &[&str] = &["x-forwarded-for", "forwarded", "x-request-id", "x-gateway", "cookie"];

const ROUTES: &str = r#"
[[route]]
name = "users-v1"
path_prefix = "/api/v1/users"
rewrite = "/users"
methods = ["GET"]
service = "users"
request_headers_set = { "x-gateway" = "redfire" }
request_headers_remove = ["cookie"]
response_headers_remove = ["server"]
"#;

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("JSON body ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn users_route_end_to_end_with_rewrite_over_http1_and_h2c() {
    let app = users_app("1", SEEN).await;
    let users = Service { name: "users", app, protocol: "http1", metadata: "" };
    let m = gateway_mesh(&[users], ROUTES, SidecarSettings::default()).await;

    // HTTP/1.1.
    let (status, headers, body) =
        http1(m.addr, "GET", "/api/v1/users/42?fields=name", &[("cookie", "session=secret")], b"").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let got = json(&body);
    assert_eq!(got["path"], "/users/42", "prefix rewritten");
    assert_eq!(got["query"], "fields=name", "query kept");
    assert_eq!(got["x-gateway"], "redfire", "route's request header set");
    assert_eq!(got["cookie"], "", "route's request header removed");
    assert_eq!(got["x-forwarded-for"], "127.0.0.1");
    assert_eq!(got["forwarded"], "for=127.0.0.1;proto=http;host=\"api.test\"");
    assert_eq!(got["peer"], "spiffe://redfire.local/ns/default/sa/gateway", "gateway calls with its own mesh identity");
    let id = got["x-request-id"].as_str().unwrap();
    assert_eq!(id.len(), 32, "request id generated");
    assert_eq!(headers["x-request-id"], id, "and returned to the client");
    assert!(headers.get("server").is_none(), "route's response header removed");

    // A client's own request id is kept.
    let (_, _, body) = http1(m.addr, "GET", "/api/v1/users/7", &[("x-request-id", "abc-123")], b"").await;
    assert_eq!(json(&body)["x-request-id"], "abc-123");

    // h2c (prior knowledge) on the same port.
    let mut h2 = h2c_client(m.addr).await;
    let req = Request::get(format!("http://{}/api/v1/users/42", m.addr))
        .body(http_body_util::Empty::<Bytes>::new().map_err(|n| match n {}).boxed_unsync())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(json(&body)["path"], "/users/42");

    // Unknown route, and a known path with a method the route does not allow.
    for (method, path) in [("GET", "/api/v9/nothing"), ("POST", "/api/v1/users/42")] {
        let (status, headers, body) = http1(m.addr, method, path, &[], b"").await;
        assert_eq!(status, 404);
        assert_eq!(headers["content-type"], "application/json");
        let e = json(&body);
        assert_eq!(e["error"]["code"], "route_not_found");
        assert_eq!(e["error"]["status"], 404);
        assert!(e["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    }

    // Admin: routes with their version, services with their endpoints, metrics per route.
    let (status, body) = http_get(m.gateway.admin_addr, "/admin/routes").await;
    assert_eq!(status, 200);
    let routes = json(body.as_bytes());
    assert_eq!(routes["version"], 1);
    assert_eq!(routes["routes"][0]["name"], "users-v1");
    assert_eq!(routes["routes"][0]["path"]["prefix"], "/api/v1/users");
    let (_, body) = http_get(m.gateway.admin_addr, "/admin/services").await;
    let services = json(body.as_bytes());
    assert_eq!(services["users"]["endpoints"], 1);
    assert_eq!(services["users"]["routes"][0], "users-v1");
    let (_, metrics) = http_get(m.gateway.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("redfire_sidecar_gateway_requests_total{route=\"users-v1\",class=\"2xx\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("redfire_sidecar_gateway_requests_total{route=\"none\",class=\"4xx\"} 2"), "{metrics}");
    assert!(metrics.contains("redfire_sidecar_gateway_response_latency_seconds_bucket{"), "{metrics}");
}

#[tokio::test]
async fn routes_hot_reload_and_a_bad_edit_keeps_the_table_in_force() {
    let app = users_app("1", SEEN).await;
    let m =
        gateway_mesh(&[Service { name: "users", app, protocol: "http1", metadata: "" }], ROUTES, Default::default())
            .await;
    assert_eq!(http1(m.addr, "GET", "/people/42", &[], b"").await.0, 404);

    let next = format!(
        "{ROUTES}\n[[route]]\nname = \"people\"\npath_pattern = \"/people/{{id}}\"\nrewrite = \"/users/{{id}}\"\nservice = \"users\"\n"
    );
    m.routes.rewrite(&next);
    let reloaded = eventually(Duration::from_secs(10), || async {
        json(http_get(m.gateway.admin_addr, "/admin/routes").await.1.as_bytes())["version"] == 2
    })
    .await;
    assert!(reloaded, "the changed file is loaded as version 2");
    let (status, _, body) = http1(m.addr, "GET", "/people/42", &[], b"").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["path"], "/users/42", "pattern route with a {{param}} template");

    // A broken edit: the table in force stays (version 2, both routes).
    m.routes.rewrite("[[route]]\npath = \"/x\"\nservice = \"Not_A_Service\"\n");
    let rejected = "redfire_sidecar_gateway_config_reloads_total{what=\"routes\",result=\"rejected\"}";
    let applied = "redfire_sidecar_gateway_config_reloads_total{what=\"routes\",result=\"applied\"}";
    let seen =
        eventually(Duration::from_secs(10), || async { metric(m.gateway.admin_addr, rejected).await >= 1.0 }).await;
    assert!(seen, "the bad edit is read and counted as rejected");
    assert_eq!(metric(m.gateway.admin_addr, applied).await, 1.0, "one good reload (version 2)");
    assert_eq!(json(http_get(m.gateway.admin_addr, "/admin/routes").await.1.as_bytes())["version"], 2);
    assert_eq!(http1(m.addr, "GET", "/people/42", &[], b"").await.0, 200);
    assert_eq!(http1(m.addr, "GET", "/api/v1/users/1", &[], b"").await.0, 200);
}

#[tokio::test]
async fn version_subset_routes_only_to_matching_instances() {
    let (v1, v2) = (users_app("1", SEEN).await, users_app("2", SEEN).await);
    let routes = r#"
[[route]]
name = "users-v2"
path_prefix = "/api/v2/users"
rewrite = "/users"
service = "users"
subset = { version = "2" }

[[route]]
name = "users-any"
path_prefix = "/api/users"
rewrite = "/users"
service = "users"
"#;
    let m = gateway_mesh(
        &[
            Service { name: "users", app: v1, protocol: "http1", metadata: "version=1" },
            Service { name: "users", app: v2, protocol: "http1", metadata: "version=2" },
        ],
        routes,
        // Round robin: peak-EWMA may keep choosing the faster instance.
        SidecarSettings { balancer: Some("round_robin".into()), ..Default::default() },
    )
    .await;
    let mut seen_any = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (status, _, body) = http1(m.addr, "GET", "/api/v2/users/1", &[], b"").await;
        assert_eq!(status, 200);
        assert_eq!(json(&body)["version"], "2", "the v2 route only reaches version=2 instances");
    }
    // Not interleaved with the subset route: the round-robin position is shared.
    for _ in 0..10 {
        let (_, _, body) = http1(m.addr, "GET", "/api/users/1", &[], b"").await;
        seen_any.insert(json(&body)["version"].as_str().unwrap().to_string());
    }
    assert_eq!(seen_any.len(), 2, "without a subset both versions serve");
}

#[tokio::test]
async fn websocket_passes_through_the_gateway() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else { return };
                while let Some(Ok(Message::Text(t))) = ws.next().await {
                    if ws.send(Message::text(format!("echo {t}"))).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let routes = "[[route]]\nname = \"chat\"\npath_prefix = \"/ws\"\nrewrite = \"\"\nservice = \"chat\"\n";
    let m = gateway_mesh(&[Service { name: "chat", app, protocol: "http1", metadata: "" }], routes, Default::default())
        .await;
    let tcp = tokio::net::TcpStream::connect(m.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://api.test/ws/room", tcp).await.expect("handshake");
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        ws.send(Message::text(format!("hi {i}"))).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(got, Message::text(format!("echo hi {i}")));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn gateway_drains_on_shutdown() {
    let app = users_app("1", SEEN).await;
    let m =
        gateway_mesh(&[Service { name: "users", app, protocol: "http1", metadata: "" }], ROUTES, Default::default())
            .await;
    assert_eq!(http1(m.addr, "GET", "/api/v1/users/1", &[], b"").await.0, 200);
    let addr = m.addr;
    m.gateway.shutdown();
    tokio::time::timeout(Duration::from_secs(10), m.gateway.wait()).await.expect("the gateway stops within its grace");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed");
}
