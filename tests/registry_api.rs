//! The registry's gRPC API over real sockets (in-memory store): watch
//! semantics, leases, bad input, the standard services and the admin port.

mod support;

use std::time::Duration;

use redfire::control::config::Settings;
use redfire::proto::registry::v1 as pb;
use support::*;
use tonic::Code;

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn watch_sends_a_snapshot_then_ordered_deltas() {
    let ctl = control(settings()).await;
    let mut c = client(&ctl).await;
    register(&mut c, instance("orders", "a"), 0).await;
    let mut w = Watcher::open(&mut c, pb::WatchRequest::default()).await;
    let snap = w.snapshot(T).await;
    assert!(!snap.reset);
    assert_eq!(snap.instances.len(), 1);
    let snap_rev = w.revision;

    let b = register(&mut c, instance("orders", "b"), 0).await;
    c.deregister(pb::DeregisterRequest { lease_id: b.lease_id }).await.unwrap();
    let put = w.change(T).await;
    assert!(is_put(&put) && key(&put) == "orders/b");
    assert_eq!(w.revision, snap_rev + 1);
    let del = w.change(T).await;
    assert!(is_delete(&del) && del.reason == "deregistered");
    assert_eq!(w.revision, snap_rev + 2);

    let got = c.get_service(pb::GetServiceRequest { service: "orders".into() }).await.unwrap().into_inner();
    assert_eq!(got.instances.len(), 1);
    assert_eq!(got.revision, snap_rev + 2);
    let list = c.list_services(pb::ListServicesRequest {}).await.unwrap().into_inner();
    assert_eq!(list.services.len(), 1);
    assert_eq!((list.services[0].instances, list.services[0].serving), (1, 1));
    ctl.shutdown();
    ctl.wait().await.unwrap();
}

#[tokio::test]
async fn watch_filters_by_service() {
    let ctl = control(settings()).await;
    let mut c = client(&ctl).await;
    register(&mut c, instance("orders", "before"), 0).await;
    let mut w = Watcher::open(&mut c, pb::WatchRequest { services: vec!["users".into()], ..Default::default() }).await;
    assert!(w.snapshot(T).await.instances.is_empty(), "the snapshot holds only the watched service");
    register(&mut c, instance("orders", "a"), 0).await;
    register(&mut c, instance("users", "u"), 0).await;
    let ch = w.change(T).await;
    assert_eq!(key(&ch), "users/u", "the orders change is filtered out");
    ctl.shutdown();
}

#[tokio::test]
async fn lease_lapse_is_seen_once_by_every_watcher_and_keepalive_keeps_alive() {
    let ctl = control(settings()).await;
    let mut c = client(&ctl).await;
    let mut watchers = Vec::new();
    for _ in 0..3 {
        let mut w = Watcher::open(&mut c, pb::WatchRequest::default()).await;
        w.snapshot(T).await;
        watchers.push(w);
    }
    let kept = register(&mut c, instance("orders", "kept"), 1000).await;
    register(&mut c, instance("orders", "lapsing"), 1000).await;

    // Renew `kept` over a stream every 300 ms for the rest of the test.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut renewals = c.keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let lease = kept.lease_id;
    let renewer = tokio::spawn(async move {
        loop {
            tx.send(pb::KeepAliveRequest { lease_id: lease, health: 0 }).await.unwrap();
            let r = renewals.message().await.unwrap().unwrap();
            assert_eq!((r.lease_id, r.ttl_ms), (lease, 1000));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    for w in &mut watchers {
        assert_eq!(key(&w.change(T).await), "orders/kept");
        assert_eq!(key(&w.change(T).await), "orders/lapsing");
        let del = w.change(T).await;
        assert!(is_delete(&del) && key(&del) == "orders/lapsing" && del.reason == "lease expired", "{del:?}");
        w.quiet(Duration::from_millis(300)).await;
    }
    let got = c.get_service(pb::GetServiceRequest { service: "orders".into() }).await.unwrap().into_inner();
    assert_eq!(got.instances.iter().map(|i| i.instance_id.as_str()).collect::<Vec<_>>(), vec!["kept"]);
    assert!(!renewer.is_finished(), "every renewal succeeded");
    renewer.abort();
    ctl.shutdown();
}

#[tokio::test]
async fn keepalive_health_reaches_watchers_and_unknown_lease_ends_the_stream() {
    let ctl = control(settings()).await;
    let mut c = client(&ctl).await;
    let reg = register(&mut c, instance("orders", "a"), 0).await;
    let mut w = Watcher::open(&mut c, pb::WatchRequest::default()).await;
    w.snapshot(T).await;
    let reqs = vec![
        pb::KeepAliveRequest { lease_id: reg.lease_id, health: pb::Health::Draining as i32 },
        pb::KeepAliveRequest { lease_id: 777, health: 0 },
    ];
    let mut s = c.keep_alive(tokio_stream::iter(reqs)).await.unwrap().into_inner();
    assert!(s.message().await.unwrap().is_some());
    let e = s.message().await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("lease 777 is unknown"), "{}", e.message());
    let ch = w.change(T).await;
    assert_eq!(ch.instance.unwrap().health, pb::Health::Draining as i32);
    ctl.shutdown();
}

#[tokio::test]
async fn watch_resume_has_no_gap_no_duplicate_and_resets_when_history_is_gone() {
    let ctl = control(Settings { watch_history: Some("4".into()), ..settings() }).await;
    let mut c = client(&ctl).await;
    let mut w = Watcher::open(&mut c, pb::WatchRequest::default()).await;
    w.snapshot(T).await;
    register(&mut c, instance("orders", "a"), 0).await;
    w.change(T).await;
    let (epoch, seen) = (w.epoch.clone(), w.revision);
    drop(w); // the stream drops mid-way

    register(&mut c, instance("orders", "b"), 0).await;
    register(&mut c, instance("orders", "c"), 0).await;
    let mut w =
        Watcher::open(&mut c, pb::WatchRequest { epoch: epoch.clone(), revision: seen, ..Default::default() }).await;
    let got: Vec<(String, u64)> = vec![(key(&w.change(T).await), w.revision), (key(&w.change(T).await), w.revision)];
    assert_eq!(got, vec![("orders/b".into(), seen + 1), ("orders/c".into(), seen + 2)]);
    w.quiet(Duration::from_millis(200)).await;

    // Push the client's position out of the 4-change history: reset snapshot.
    for id in ["d", "e", "f", "g", "h"] {
        register(&mut c, instance("orders", id), 0).await;
    }
    let mut w =
        Watcher::open(&mut c, pb::WatchRequest { epoch: epoch.clone(), revision: seen, ..Default::default() }).await;
    let snap = w.snapshot(T).await;
    assert!(snap.reset, "history gone: reset");
    assert_eq!(snap.instances.len(), 8);

    // Another epoch (a replaced store) is a reset too.
    let mut w =
        Watcher::open(&mut c, pb::WatchRequest { epoch: "0123456789abcdef".into(), revision: 1, ..Default::default() })
            .await;
    assert!(w.snapshot(T).await.reset);
    ctl.shutdown();
}

#[tokio::test]
async fn bad_input_gets_its_status_code_and_a_message() {
    let ctl = control(settings()).await;
    let mut c = client(&ctl).await;
    let reg = |i: pb::Instance, ttl_ms| pb::RegisterRequest { instance: Some(i), ttl_ms };
    let with = |f: fn(&mut pb::Instance)| {
        let mut i = instance("orders", "a");
        f(&mut i);
        i
    };
    let cases = vec![
        (reg(with(|i| i.service = String::new()), 0), "service: name is empty"),
        (reg(with(|i| i.service = "x".repeat(64)), 0), "over the DNS-1123 limit of 63"),
        (reg(with(|i| i.service = "Bad_Name".into()), 0), "DNS-1123"),
        (reg(with(|i| i.ports = Some(pb::Ports { grpc: Some(0), http: None, admin: None })), 0), "ports.grpc: 0"),
        (
            reg(
                with(|i| {
                    i.metadata.insert("blob".into(), "x".repeat(65 * 1024));
                }),
                0,
            ),
            "over the 65536-byte limit",
        ),
        (reg(instance("orders", "a"), 10), "ttl_ms: 10 is outside"),
        (pb::RegisterRequest { instance: None, ttl_ms: 0 }, "instance: missing"),
    ];
    for (req, want) in cases {
        let e = c.register(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{want}: {e:?}");
        assert!(e.message().contains(want), "{:?} should contain {want:?}", e.message());
    }

    let e = c.deregister(pb::DeregisterRequest { lease_id: 42 }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("lease 42 is unknown"));
    let e = c.deregister(pb::DeregisterRequest { lease_id: 0 }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let e = c.get_service(pb::GetServiceRequest { service: "no/such".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let base = c.clone();
    let watch_err = |req: pb::WatchRequest| {
        let mut c = base.clone();
        async move { c.watch(req).await.map(|_| ()).unwrap_err() }
    };
    let e = watch_err(pb::WatchRequest { revision: 5, ..Default::default() }).await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("without the epoch"));
    let e = watch_err(pb::WatchRequest { epoch: "not-an-epoch".into(), revision: 1, ..Default::default() }).await;
    assert!(e.code() == Code::InvalidArgument && e.message().contains("malformed"), "{e:?}");
    let mut w = Watcher::open(&mut c, pb::WatchRequest::default()).await;
    w.snapshot(T).await;
    let e =
        watch_err(pb::WatchRequest { epoch: w.epoch.clone(), revision: w.revision + 100, ..Default::default() }).await;
    assert!(e.code() == Code::InvalidArgument && e.message().contains("ahead of the registry"), "{e:?}");

    // None of that hurt anyone: a good request still works.
    let ok = register(&mut c, instance("orders", "a"), 0).await;
    assert_ne!(ok.lease_id, 0);
    ctl.shutdown();
}

#[tokio::test]
async fn health_reflection_and_admin_endpoints_answer() {
    let ctl = control(settings()).await;
    let mut c = client(&ctl).await;
    register(&mut c, instance("orders", "a"), 0).await;

    let ch = channel(&ctl).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest { service: "redfire.registry.v1.Registry".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    let mut refl = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(ch);
    use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_request::MessageRequest};
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let msg = format!("{:?}", resp.message().await.unwrap().unwrap());
    assert!(msg.contains("redfire.registry.v1.Registry") && msg.contains("grpc.health.v1.Health"), "{msg}");

    assert_eq!(http_get(ctl.admin_addr, "/health").await.0, 200);
    assert_eq!(http_get(ctl.admin_addr, "/ready").await.0, 200);
    let (status, metrics) = http_get(ctl.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("redfire_control_registry_instances{service=\"orders\"} 1"), "{metrics}");
    assert!(metrics.contains("redfire_control_rpc_requests_total{method=\"Register\",code=\"OK\"} 1"), "{metrics}");
    assert!(metrics.contains("redfire_control_rpc_duration_seconds_bucket"), "{metrics}");
    let (status, services) = http_get(ctl.admin_addr, "/admin/services").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&services).unwrap();
    assert_eq!(json["services"]["orders"][0]["instance_id"], "a");
    assert_eq!(http_get(ctl.admin_addr, "/nope").await.0, 404);
    ctl.shutdown();
}

#[tokio::test]
async fn shutdown_ends_watch_streams_with_unavailable() {
    let ctl = control(settings()).await;
    let mut c = client(&ctl).await;
    let mut w = Watcher::open(&mut c, pb::WatchRequest::default()).await;
    w.snapshot(T).await;
    ctl.shutdown();
    let e = tokio::time::timeout(T, w.stream.message()).await.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("shutting down"));
    tokio::time::timeout(T, ctl.wait()).await.expect("stops within the grace period").unwrap();
}
