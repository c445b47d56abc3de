//! The Redis store with several control replicas, and Redis faults. Tests that
//! kill or pause Redis start their own `redis-server` on a free port.

mod support;

use std::time::Duration;

use redfire::proto::registry::v1 as pb;
use support::*;
use tonic::Code;

const T: Duration = Duration::from_secs(5);

type Client = pb::registry_client::RegistryClient<support::OperatorChannel>;

/// Two replicas on one Redis prefix, a client of each, a Watch on each past its snapshot.
async fn two_replicas_watching(
    url: &str,
    prefix: &str,
) -> (redfire::control::server::Control, redfire::control::server::Control, Client, Client, Watcher, Watcher) {
    let a = control(redis_settings(url, prefix)).await;
    let b = control(redis_settings(url, prefix)).await;
    let (mut ca, mut cb) = (client(&a).await, client(&b).await);
    let mut wa = Watcher::open(&mut ca, pb::WatchRequest::default()).await;
    let mut wb = Watcher::open(&mut cb, pb::WatchRequest::default()).await;
    wa.snapshot(T).await;
    wb.snapshot(T).await;
    (a, b, ca, cb, wa, wb)
}

#[tokio::test]
async fn two_replicas_on_one_redis_serve_one_view() {
    let Some(url) = shared_redis() else { return };
    let prefix = unique_prefix("replicas");
    let (a, b, mut ca, mut cb, mut wa, mut wb) = two_replicas_watching(&url, &prefix).await;

    let reg = register(&mut ca, instance("orders", "a1"), 0).await;
    let seen_on_b = wb.change(T).await;
    assert!(is_put(&seen_on_b) && key(&seen_on_b) == "orders/a1");
    assert_eq!(wb.revision, reg.revision);

    cb.deregister(pb::DeregisterRequest { lease_id: reg.lease_id }).await.unwrap();
    assert!(is_put(&wa.change(T).await));
    let seen_on_a = wa.change(T).await;
    assert!(is_delete(&seen_on_a) && key(&seen_on_a) == "orders/a1");
    assert_eq!(wa.revision, wb.change(T).await.instance.map(|_| wb.revision).unwrap());
    a.shutdown();
    b.shutdown();
}

#[tokio::test]
async fn lease_expiry_happens_once_across_replicas_and_after_one_dies() {
    let Some(url) = shared_redis() else { return };
    let prefix = unique_prefix("expiry");
    let (a, b, mut ca, _cb, mut wa, mut wb) = two_replicas_watching(&url, &prefix).await;

    register(&mut ca, instance("orders", "x"), 1000).await;
    for w in [&mut wa, &mut wb] {
        assert!(is_put(&w.change(T).await));
        let del = w.change(Duration::from_millis(2500)).await;
        assert!(is_delete(&del) && del.reason == "lease expired", "{del:?}");
        w.quiet(Duration::from_millis(500)).await; // once, though both replicas sweep
    }

    // The replica that took the registration dies; expiry still happens.
    register(&mut ca, instance("orders", "y"), 1000).await;
    assert!(is_put(&wb.change(T).await));
    a.shutdown();
    a.wait().await.unwrap();
    let del = wb.change(Duration::from_millis(2500)).await;
    assert!(is_delete(&del) && key(&del) == "orders/y");
    b.shutdown();
}

/// Renews `lease` every 300 ms, ignoring failures (as a sidecar would retry).
fn keep_renewing(
    c: &pb::registry_client::RegistryClient<support::OperatorChannel>,
    lease: u64,
) -> tokio::task::JoinHandle<()> {
    let mut c = c.clone();
    tokio::spawn(async move {
        loop {
            let req = tokio_stream::iter(vec![pb::KeepAliveRequest { lease_id: lease, health: 0 }]);
            if let Ok(r) = c.keep_alive(req).await {
                let _ = r.into_inner().message().await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

#[tokio::test]
async fn redis_killed_and_restarted_empty_loses_nothing() {
    if !have_redis_server() {
        return;
    }
    let mut redis = RedisServer::start();
    let prefix = unique_prefix("kill");
    let a = control(redis_settings(&redis.url(), &prefix)).await;
    let b = control(redis_settings(&redis.url(), &prefix)).await;
    let (mut ca, mut cb) = (client(&a).await, client(&b).await);
    let kept = register(&mut ca, instance("orders", "kept"), 2000).await;
    let renewer = keep_renewing(&ca, kept.lease_id);
    register(&mut ca, instance("orders", "long"), 60_000).await;
    let mut wb = Watcher::open(&mut cb, pb::WatchRequest::default()).await;
    assert_eq!(wb.snapshot(T).await.instances.len(), 2);
    let rev_before = wb.revision;

    redis.kill();
    assert!(eventually(T, || async { http_get(a.admin_addr, "/ready").await.0 == 503 }).await, "not ready");
    // Reads keep working from the last view.
    let got = cb.get_service(pb::GetServiceRequest { service: "orders".into() }).await.unwrap().into_inner();
    assert_eq!(got.instances.len(), 2);
    // Writes fail cleanly and fast.
    let started = std::time::Instant::now();
    let e =
        ca.register(pb::RegisterRequest { instance: Some(instance("orders", "new")), ttl_ms: 0 }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "no hang: {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Redis comes back empty (no persistence): the replicas restore the view.
    redis.restart();
    for ctl in [&a, &b] {
        assert!(eventually(T, || async { http_get(ctl.admin_addr, "/ready").await.0 == 200 }).await, "ready again");
    }
    let new = register(&mut ca, instance("orders", "new"), 0).await;
    let ch = wb.change(T).await;
    assert!(is_put(&ch) && key(&ch) == "orders/new", "the next message is the new change, no reset: {ch:?}");
    assert_eq!(wb.revision, rev_before + 1, "no lost and no duplicated revision");
    assert_eq!(new.revision, rev_before + 1);
    // The leases survived with their ids: renewing and deregistering work.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let got = ca.get_service(pb::GetServiceRequest { service: "orders".into() }).await.unwrap().into_inner();
    assert_eq!(got.instances.len(), 3, "{got:?}");
    ca.deregister(pb::DeregisterRequest { lease_id: kept.lease_id }).await.unwrap();
    let ch = wb.change(T).await;
    assert!(is_delete(&ch) && key(&ch) == "orders/kept");
    renewer.abort();
    a.shutdown();
    b.shutdown();
}

#[tokio::test]
async fn leases_do_not_all_expire_after_redis_was_unreachable() {
    if !have_redis_server() {
        return;
    }
    let redis = RedisServer::start();
    let prefix = unique_prefix("pause");
    let a = control(redis_settings(&redis.url(), &prefix)).await;
    let mut c = client(&a).await;
    let reg = register(&mut c, instance("orders", "a"), 2000).await;
    let mut w = Watcher::open(&mut c, pb::WatchRequest::default()).await;
    w.snapshot(T).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // a few sweeps run
    // Redis answers nobody for 4 s (data kept): nobody can renew or sweep.
    let admin = redis::Client::open(redis.url()).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(4000).arg("ALL").query_async(&mut conn).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4600)).await;
    // The owner renews within one TTL of Redis returning: it must still exist.
    let mut s = c
        .keep_alive(tokio_stream::iter(vec![pb::KeepAliveRequest { lease_id: reg.lease_id, health: 0 }]))
        .await
        .unwrap()
        .into_inner();
    let renewed = s.message().await;
    assert!(matches!(renewed, Ok(Some(_))), "lease survived the outage: {renewed:?}");
    w.quiet(Duration::from_millis(300)).await;
    a.shutdown();
}
