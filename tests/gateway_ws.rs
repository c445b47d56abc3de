//! The gateway's WebSocket topic hub (`/ws`), through real gateways, a real
//! control and its event bus: fan-out across two replicas exactly once,
//! topic authorization by role, publishing over WebSocket, and the limits
//! of RELIABILITY.md row 27 (close 1009, 403 for a foreign Origin, a reader
//! that stops is closed with memory bounded) plus 401 and the per-user limit.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use redfire::control::authz::token;
use redfire::control::config::{Config, Settings as ControlSettings};
use redfire::control::events::client::{EventsClient, Subscribe};
use redfire::control::identity::ca::Ca;
use redfire::control::server::Control;
use redfire::proto::events::v1 as pb;
use redfire::sidecar::config::{Config as SidecarConfig, Settings as SidecarSettings};
use redfire::sidecar::server::Sidecar;
use serde_json::{Value, json};
use support::gateway::TempFile;
use support::policy::*;
use support::{control, eventually, free_port, redis_settings, settings, shared_redis, unique_prefix};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async};

type Ws = WebSocketStream<TcpStream>;

const ROUTES: &str = "[[route]]\nname = \"echo\"\npath_prefix = \"/\"\nservice = \"echo\"\n";

fn hub_policy() -> String {
    hub_policy_with_leeway("30s")
}

fn hub_policy_with_leeway(leeway: &str) -> String {
    format!(
        r#"
[jwt]
leeway = "{leeway}"
[[jwt.issuers]]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["RS256"]
keys = [{{ kid = "k1", pem = """{RSA_PUBLIC}""" }}]

[[topics]]
name = "trading_signals"
subscribe = ["trader", "viewer"]
publish = ["trader"]

[[topics]]
name = "orders.*"
subscribe = ["*"]
"#
    )
}

struct Hub {
    control: Control,
    gateways: Vec<Sidecar>,
    _routes: TempFile,
}

/// One control (memory store) with the hub policy for `gateway`, and
/// `replicas` gateways.
async fn hub(replicas: usize, extra: SidecarSettings) -> Hub {
    hub_on(settings(), &hub_policy(), replicas, extra).await
}

async fn hub_on(control_settings: ControlSettings, policy: &str, replicas: usize, extra: SidecarSettings) -> Hub {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let control = control(control_settings.clone()).await;
    let version = set_policy(&control, "gateway", policy).await;
    // The event bus lets the gateways (their workload certificates) use
    // every topic; end users are limited by the gateway's own [[topics]].
    set_policy(
        &control,
        "redfire-control",
        "[[event_acl]]\nname = \"*\"\nsubscribe = [\"gateway\"]\npublish = [\"gateway\"]\n",
    )
    .await;
    let ca = Ca::load(Config::from_settings(control_settings).unwrap().ca).await.unwrap();
    let routes = TempFile::new("routes.toml", ROUTES);
    let mut gateways = Vec::new();
    for i in 0..replicas {
        let config = SidecarConfig::from_settings(extra.clone().or(SidecarSettings {
            mode: Some("gateway".into()),
            gateway_addr: Some("127.0.0.1:0".into()),
            routes: Some(routes.0.display().to_string()),
            control_addr: Some(control.grpc_url()),
            control_ca_file: control.trust_bundle_file.as_ref().map(|p| p.display().to_string()),
            service: Some("gateway".into()),
            instance_id: Some(format!("gw-{i}")),
            bootstrap_token: Some(token::create(&ca, "default", "gateway", Duration::from_secs(600)).unwrap()),
            admin_addr: Some("127.0.0.1:0".into()),
            shutdown_grace: Some("2s".into()),
            log_level: Some("warn".into()),
            ..Default::default()
        }))
        .unwrap();
        let gw = Sidecar::start(config).await.unwrap();
        wait_version(gw.admin_addr, version).await;
        gateways.push(gw);
    }
    Hub { control, gateways, _routes: routes }
}

/// An operator token for the tests' own publishers.
fn publisher(control: &Control) -> String {
    control.operator_token("publisher", &["events-admin"]).unwrap()
}

fn addr(gw: &Sidecar) -> SocketAddr {
    gw.gateway_addr.unwrap()
}

fn token(sub: &str, roles: &[&str]) -> String {
    rs256(&claims(sub, roles), Some("k1"), RSA_PRIVATE)
}

/// Opens `/ws` with extra headers: the socket, or the refusal's status.
async fn open(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), client_async(req, tcp)).await.expect("handshake answered") {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

async fn open_as(addr: SocketAddr, sub: &str, roles: &[&str]) -> Ws {
    let auth = bearer(&token(sub, roles));
    open(addr, &[("authorization", &auth)]).await.expect("hub accepts a valid token")
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON message within `limit` (pings skipped); `None` on timeout.
async fn next_json(ws: &mut Ws, limit: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Close(c)))) => panic!("closed: {c:?}"),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => return None,
        }
    }
}

async fn subscribe(ws: &mut Ws, topic: &str) -> Value {
    send(ws, json!({ "type": "subscribe", "topic": topic, "id": topic })).await;
    next_json(ws, Duration::from_secs(10)).await.expect("subscribe answered")
}

async fn metric(gw: &Sidecar, name: &str) -> f64 {
    support::metric(gw.admin_addr, name).await
}

#[tokio::test]
async fn an_event_reaches_each_replica_subscriber_exactly_once_and_ws_publishes_reach_the_bus() {
    let h = hub(2, SidecarSettings::default()).await;
    let mut a = open_as(addr(&h.gateways[0]), "alice", &["trader"]).await;
    let mut b = open_as(addr(&h.gateways[1]), "bob", &["viewer"]).await;
    for ws in [&mut a, &mut b] {
        let ack = subscribe(ws, "trading_signals").await;
        assert_eq!((ack["type"].as_str(), ack["op"].as_str()), (Some("ack"), Some("subscribe")), "{ack}");
        assert_eq!(ack["id"], "trading_signals", "the id is echoed");
    }
    let refused = subscribe(&mut b, "payments").await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("forbidden")), "{refused}");
    let refused = subscribe(&mut b, "bad topic").await;
    assert_eq!(refused["code"], "bad_topic", "{refused}");

    let mut service =
        EventsClient::connect(h.control.endpoint(), "signals-service", Some(&publisher(&h.control))).await.unwrap();
    service.publish_domain_event("payments", "payment.made", "p-1", "Payment", b"{}".to_vec()).await.unwrap();
    let body = br#"{"symbol":"BTC-USD","side":"buy"}"#.to_vec();
    let position =
        service.publish_domain_event("trading_signals", "signal.created", "BTC-USD", "Signal", body).await.unwrap();
    for ws in [&mut a, &mut b] {
        let ev = next_json(ws, Duration::from_secs(10)).await.expect("the event arrives");
        assert_eq!((ev["type"].as_str(), ev["topic"].as_str()), (Some("event"), Some("trading_signals")), "{ev}");
        assert_eq!(ev["position"], position.as_str());
        assert_eq!(ev["data"]["type"], "signal.created");
        assert_eq!(ev["data"]["source"], "signals-service");
        assert_eq!(ev["data"]["data"]["symbol"], "BTC-USD");
    }
    for ws in [&mut a, &mut b] {
        let more = next_json(ws, Duration::from_millis(800)).await;
        assert!(more.is_none(), "exactly once, and nothing from the unauthorized topic: {more:?}");
    }

    // Publishing over the hub: refused for a viewer, stored for a trader,
    // with the user recorded; subscribers everywhere get it once.
    send(&mut b, json!({ "type": "publish", "topic": "trading_signals", "data": { "x": 1 } })).await;
    let e = next_json(&mut b, Duration::from_secs(10)).await.unwrap();
    assert_eq!(e["code"], "forbidden", "{e}");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let audit = tokio::spawn({
        let seen = seen.clone();
        let mut c = service.clone();
        async move {
            let mut spec = Subscribe::new(&["trading_signals"], "audit", "audit-1");
            spec.from_earliest = true;
            spec.limit = Some(2);
            c.subscribe(spec, |d| {
                seen.lock().unwrap().push(d.envelope);
                async { Ok(()) }
            })
            .await
        }
    });
    send(&mut a, json!({ "type": "publish", "topic": "trading_signals", "event_type": "signal.manual", "data": { "qty": 2 }, "id": 9 })).await;
    let mut two = Vec::new();
    for _ in 0..2 {
        two.push(next_json(&mut a, Duration::from_secs(10)).await.expect("ack and event"));
    }
    two.sort_by_key(|m| m["type"].as_str().unwrap_or("").to_string());
    let (ack, ev) = (&two[0], &two[1]);
    assert_eq!((ack["type"].as_str(), ack["op"].as_str(), ack["id"].as_i64()), (Some("ack"), Some("publish"), Some(9)));
    assert_eq!((ev["type"].as_str(), ev["data"]["type"].as_str()), (Some("event"), Some("signal.manual")), "{ev}");
    let on_b = next_json(&mut b, Duration::from_secs(10)).await.unwrap();
    assert_eq!((on_b["data"]["type"].as_str(), on_b["data"]["user"].as_str()), (Some("signal.manual"), Some("alice")));
    assert_eq!(on_b["position"], ack["position"]);
    tokio::time::timeout(Duration::from_secs(10), audit).await.expect("audit consumer done").unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!((seen[1].ty.as_str(), seen[1].source.as_str()), ("signal.manual", "gateway"));
    assert_eq!(seen[1].extensions.get("user").map(String::as_str), Some("alice"));
    assert_eq!(serde_json::from_slice::<Value>(&seen[1].data).unwrap(), json!({ "qty": 2 }));
    for gw in &h.gateways {
        assert!(metric(gw, "redfire_sidecar_gateway_ws_connections").await >= 1.0);
    }
}

#[tokio::test]
async fn handshakes_without_a_good_token_from_a_foreign_origin_or_over_the_user_limit_are_refused() {
    let extra = SidecarSettings {
        gateway_ws_origins: Some("https://app.test".into()),
        gateway_ws_max_per_user: Some("2".into()),
        ..Default::default()
    };
    let h = hub(1, extra).await;
    let gw = addr(&h.gateways[0]);
    assert_eq!(open(gw, &[]).await.err(), Some(401), "no token");
    let forged = bearer(&rs256(&claims("mallory", &["trader"]), Some("k1"), RSA2_PRIVATE));
    assert_eq!(open(gw, &[("authorization", &forged)]).await.err(), Some(401), "untrusted key");
    let good = bearer(&token("carol", &["viewer"]));
    let foreign = [("authorization", good.as_str()), ("origin", "https://evil.test")];
    assert_eq!(open(gw, &foreign).await.err(), Some(403), "foreign Origin");

    // The token may come as a subprotocol; the answer names the other one.
    let offered = format!("bearer, {}", token("carol", &["viewer"]));
    let mut req = format!("ws://{gw}/ws").into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", offered.parse().unwrap());
    req.headers_mut().insert("origin", "https://app.test".parse().unwrap());
    let (mut first, resp) = client_async(req, TcpStream::connect(gw).await.unwrap()).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "bearer");
    assert_eq!(subscribe(&mut first, "orders.eu").await["type"], "ack", "any user may read orders.*");

    let second = open_as(gw, "carol", &["viewer"]).await;
    let auth = bearer(&token("carol", &["viewer"]));
    assert_eq!(open(gw, &[("authorization", &auth)]).await.err(), Some(429), "a third connection of carol");
    let _dave = open_as(gw, "dave", &["viewer"]).await;
    drop(second);
    let freed =
        eventually(Duration::from_secs(10), || async { open(gw, &[("authorization", &auth)]).await.is_ok() }).await;
    assert!(freed, "a closed connection frees its slot");
    let m = |r: &str| format!("redfire_sidecar_gateway_ws_handshakes_refused_total{{reason=\"{r}\"}}");
    assert_eq!(metric(&h.gateways[0], &m("unauthenticated")).await, 2.0);
    assert_eq!(metric(&h.gateways[0], &m("origin")).await, 1.0);
}

#[tokio::test]
async fn a_message_over_the_limit_closes_with_1009() {
    let h = hub(1, SidecarSettings { gateway_ws_max_message: Some("1024".into()), ..Default::default() }).await;
    let mut ws = open_as(addr(&h.gateways[0]), "erin", &["viewer"]).await;
    let ack = subscribe(&mut ws, "trading_signals").await;
    assert_eq!(ack["type"], "ack", "a small message is fine: {ack}");
    let big = json!({ "type": "publish", "topic": "trading_signals", "data": "x".repeat(4096) });
    send(&mut ws, big).await;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("closed in time") {
            Some(Ok(Message::Close(Some(f)))) => break f.code,
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, CloseCode::Size);
    let closes = "redfire_sidecar_gateway_ws_closes_total{reason=\"message_too_big\"}";
    assert_eq!(metric(&h.gateways[0], closes).await, 1.0);
}

#[tokio::test]
async fn a_reader_that_stops_is_closed_as_a_slow_consumer() {
    let h = hub(1, SidecarSettings { gateway_ws_queue: Some("64".into()), ..Default::default() }).await;
    let gw = &h.gateways[0];
    let mut slow = open_as(addr(gw), "frank", &["viewer"]).await;
    assert_eq!(subscribe(&mut slow, "trading_signals").await["type"], "ack");
    let mut fast = open_as(addr(gw), "grace", &["viewer"]).await;
    assert_eq!(subscribe(&mut fast, "trading_signals").await["type"], "ack");
    let got = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = tokio::spawn({
        let got = got.clone();
        async move {
            while let Some(Ok(m)) = fast.next().await {
                if matches!(m, Message::Text(_)) {
                    got.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });

    // `slow` reads nothing from here on: 24 MiB of events is more than the
    // socket buffers on both sides hold, so its queue fills.
    let mut c = EventsClient::connect(h.control.endpoint(), "flood", Some(&publisher(&h.control))).await.unwrap();
    let payload = format!("{{\"pad\":\"{}\"}}", "p".repeat(64 * 1024));
    let (batches, per_batch) = (48, 8);
    for _ in 0..batches {
        let events = (0..per_batch)
            .map(|_| pb::PublishEntry {
                event: Some(pb::Event {
                    r#type: "tick".into(),
                    datacontenttype: "application/json".into(),
                    data: payload.clone().into_bytes(),
                    ..Default::default()
                }),
                idempotency_key: String::new(),
            })
            .collect();
        c.raw().publish(pb::PublishRequest { topic: "trading_signals".into(), events }).await.unwrap();
    }
    let name = "redfire_sidecar_gateway_ws_slow_consumer_closes_total";
    let closed = eventually(Duration::from_secs(20), || async { metric(gw, name).await >= 1.0 }).await;
    assert!(closed, "the slow reader is closed");
    assert_eq!(metric(gw, name).await, 1.0, "only the slow reader");
    let all = eventually(Duration::from_secs(20), || async {
        got.load(std::sync::atomic::Ordering::Relaxed) >= batches * per_batch
    })
    .await;
    assert!(all, "the reading client got every event: {}", got.load(std::sync::atomic::Ordering::Relaxed));
    // What the slow client still reads is bounded (socket buffers plus the
    // queue), then the connection ends.
    let mut after = 0usize;
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(m)) = slow.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
            after += 1;
        }
    })
    .await;
    assert!(ended.is_ok(), "the slow connection ends");
    assert!(after < batches * per_batch, "it did not get everything: {after}");
    let open = eventually(Duration::from_secs(10), || async {
        metric(gw, "redfire_sidecar_gateway_ws_connections").await == 1.0
    })
    .await;
    assert!(open, "only the reading client is still connected");
    reader.abort();
}

/// Reads until a close frame (its code) or the end of the connection (`None`).
async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("closed in time") {
            Some(Ok(Message::Close(f))) => return f.map(|f| f.code),
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_pong_timeout_and_every_client_at_drain() {
    let extra = SidecarSettings {
        gateway_ws_ping_interval: Some("200ms".into()),
        gateway_ws_pong_timeout: Some("300ms".into()),
        ..Default::default()
    };
    let h = hub(1, extra).await;
    let gw = &h.gateways[0];
    let mut silent = open_as(addr(gw), "henry", &["viewer"]).await;
    let mut live = open_as(addr(gw), "ivy", &["viewer"]).await;
    assert_eq!(subscribe(&mut live, "trading_signals").await["type"], "ack");
    // `live` reads (answering pings) while `silent` reads nothing.
    assert!(next_json(&mut live, Duration::from_millis(1500)).await.is_none());
    // Its pongs to the queued pings may meet the closed socket before it
    // reads the close frame: either way the connection has ended.
    let code = close_code(&mut silent).await;
    assert!(matches!(code, None | Some(CloseCode::Away)), "{code:?}");
    assert_eq!(metric(gw, "redfire_sidecar_gateway_ws_closes_total{reason=\"pong_timeout\"}").await, 1.0);
    let events = pb::events_client::EventsClient::new(support::channel(&h.control).await);
    let groups = || {
        let mut events = events.clone();
        async move {
            let req = pb::DescribeTopicRequest { topic: "trading_signals".into() };
            let info = events.describe_topic(req).await.unwrap().into_inner();
            info.groups.into_iter().map(|g| g.name).collect::<Vec<_>>()
        }
    };
    assert_eq!(groups().await, ["gateway.hub.gw-0"], "the hub's group while it runs");
    gw.shutdown();
    assert_eq!(close_code(&mut live).await, Some(CloseCode::Away), "draining closes with 1001");
    // The drained replica deletes its group: nothing holds the topic's retention.
    assert!(eventually(Duration::from_secs(10), || async { groups().await.is_empty() }).await, "the group is deleted");
}

#[tokio::test]
async fn a_connection_is_closed_when_its_token_expires() {
    let h = hub_on(settings(), &hub_policy_with_leeway("1s"), 1, SidecarSettings::default()).await;
    let gw = &h.gateways[0];
    let mut c = claims("judy", &["viewer"]);
    c["exp"] = json!(now() + 2);
    let mut short = open(addr(gw), &[("authorization", &bearer(&rs256(&c, Some("k1"), RSA_PRIVATE)))])
        .await
        .expect("a token valid for 2 more seconds opens the hub");
    assert_eq!(subscribe(&mut short, "trading_signals").await["type"], "ack");
    let mut long = open_as(addr(gw), "kate", &["viewer"]).await;
    // exp + 1 s of leeway: at most 3 s away; close_code waits up to 10 s.
    assert_eq!(close_code(&mut short).await, Some(CloseCode::Policy), "closed with 1008 at expiry");
    assert_eq!(metric(gw, "redfire_sidecar_gateway_ws_closes_total{reason=\"token_expired\"}").await, 1.0);
    // The connection with a valid token is served as before.
    assert_eq!(subscribe(&mut long, "trading_signals").await["type"], "ack");
    // An expired token is refused at the handshake.
    c["exp"] = json!(now() - 60);
    let stale = bearer(&rs256(&c, Some("k1"), RSA_PRIVATE));
    assert_eq!(open(addr(gw), &[("authorization", &stale)]).await.err(), Some(401));
}

/// The next event carries `{"n": n}`.
async fn expect_n(ws: &mut Ws, n: u32) {
    let ev = next_json(ws, Duration::from_secs(15)).await.expect("the event arrives");
    assert_eq!(ev["data"]["data"]["n"], n, "{ev}");
}

#[tokio::test]
async fn across_a_control_restart_on_redis_every_event_arrives_once() {
    let Some(url) = shared_redis() else { return };
    let prefix = unique_prefix("gateway-ws");
    let port = free_port();
    let on_port =
        |port: u16| ControlSettings { grpc_addr: Some(format!("127.0.0.1:{port}")), ..redis_settings(&url, &prefix) };
    let h = hub_on(on_port(port), &hub_policy(), 1, SidecarSettings::default()).await;
    let gw = &h.gateways[0];
    let mut ws = open_as(addr(gw), "judy", &["viewer"]).await;
    assert_eq!(subscribe(&mut ws, "trading_signals").await["type"], "ack");
    let publish = |control: &Control, n: u32| {
        let (endpoint, token) = (control.endpoint(), publisher(control));
        async move {
            let mut c = EventsClient::connect(endpoint, "signals", Some(&token)).await.unwrap();
            let data = format!("{{\"n\":{n}}}").into_bytes();
            c.publish_domain_event("trading_signals", "signal.created", "s", "Signal", data).await.unwrap();
        }
    };
    publish(&h.control, 1).await;
    expect_n(&mut ws, 1).await;

    // The gateway's control goes away; another replica on the same Redis
    // takes a publish meanwhile; the first comes back on its port.
    let Hub { control: first, gateways, _routes } = h;
    first.shutdown();
    first.wait().await.unwrap();
    let other = control(on_port(0)).await;
    publish(&other, 2).await;
    let back = control(on_port(port)).await;
    expect_n(&mut ws, 2).await;
    publish(&back, 3).await;
    expect_n(&mut ws, 3).await;
    let more = next_json(&mut ws, Duration::from_millis(800)).await;
    assert!(more.is_none(), "no event twice: {more:?}");
    drop(gateways);
}
