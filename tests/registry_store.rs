//! One test suite, run against both registry stores: the in-memory store and
//! the Redis store (real Redis, a unique key prefix per test).

mod support;

use std::sync::Arc;
use std::time::Duration;

use redfire::control::registry::memory::MemoryStore;
use redfire::control::registry::redis::{RedisConfig, RedisStore};
use redfire::control::registry::store::{RegistryStore, StoreError};
use redfire::control::registry::view::{Broadcast, Change, DeleteReason, Start, View};
use redfire::mesh::registry::{Health, Instance};

fn inst(service: &str, id: &str) -> Instance {
    Instance::try_from(support::instance(service, id)).unwrap()
}

fn memory() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(1000, Duration::from_millis(50)))
}

async fn redis(test: &str) -> Option<Arc<RedisStore>> {
    let url = support::shared_redis()?;
    let store = RedisStore::new(RedisConfig {
        url,
        prefix: support::unique_prefix(test),
        timeout: Duration::from_millis(500),
        sweep: Duration::from_millis(50),
        history: 1000,
        outage_grace_after: Duration::from_secs(3),
    })
    .unwrap();
    assert!(store.wait_synced(Duration::from_secs(5)).await, "redis store syncs");
    Some(Arc::new(store))
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn memory() {
                super::$name(super::memory()).await;
            }
            #[tokio::test]
            async fn redis() {
                if let Some(s) = super::redis(stringify!($name)).await {
                    super::$name(s).await;
                }
            }
        }
    };
}

both!(register_is_visible_with_the_next_revision);
async fn register_is_visible_with_the_next_revision<S: RegistryStore>(s: Arc<S>) {
    let before = s.view().position().1;
    let reg = s.register(inst("orders", "a"), Duration::from_secs(10)).await.unwrap();
    assert_eq!(reg.revision, before + 1);
    assert_ne!(reg.lease_id, 0);
    let (rev, list) = s.view().service("orders");
    assert_eq!(rev, reg.revision, "read-your-writes");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].lease_id, reg.lease_id);
    assert_eq!(list[0].lease_ttl_ms, 10_000);
    s.close();
}

both!(re_register_replaces_and_revokes_the_old_lease);
async fn re_register_replaces_and_revokes_the_old_lease<S: RegistryStore>(s: Arc<S>) {
    let old = s.register(inst("orders", "a"), Duration::from_secs(10)).await.unwrap();
    let mut changed = inst("orders", "a");
    changed.version = "v2".into();
    let new = s.register(changed, Duration::from_secs(10)).await.unwrap();
    assert_eq!(s.view().service("orders").1.len(), 1);
    assert_eq!(s.view().get("orders/a").unwrap().version, "v2");
    assert!(matches!(s.keep_alive(old.lease_id, None).await, Err(StoreError::NotFound(_))));
    s.keep_alive(new.lease_id, None).await.unwrap();
    s.close();
}

both!(health_change_is_one_change_and_renewal_alone_is_none);
async fn health_change_is_one_change_and_renewal_alone_is_none<S: RegistryStore>(s: Arc<S>) {
    let reg = s.register(inst("orders", "a"), Duration::from_secs(10)).await.unwrap();
    let (_, mut rx) = s.view().subscribe(None, &View::all).unwrap();
    s.keep_alive(reg.lease_id, None).await.unwrap();
    s.keep_alive(reg.lease_id, Some(Health::Serving)).await.unwrap();
    s.keep_alive(reg.lease_id, Some(Health::Draining)).await.unwrap();
    s.keep_alive(reg.lease_id, Some(Health::Draining)).await.unwrap();
    match rx.recv().await.unwrap() {
        Broadcast::Change(ev) => {
            assert_eq!(ev.revision, reg.revision + 1);
            assert!(matches!(&ev.change, Change::Put(i) if i.health == Health::Draining));
        }
        other => panic!("{other:?}"),
    }
    assert!(rx.try_recv().is_err(), "renewals without a health change produce no change");
    s.close();
}

both!(deregister_removes_and_unknown_lease_is_not_found);
async fn deregister_removes_and_unknown_lease_is_not_found<S: RegistryStore>(s: Arc<S>) {
    let reg = s.register(inst("orders", "a"), Duration::from_secs(10)).await.unwrap();
    let rev = s.deregister(reg.lease_id).await.unwrap();
    assert_eq!(rev, reg.revision + 1);
    assert!(s.view().get("orders/a").is_none());
    let e = s.deregister(reg.lease_id).await.unwrap_err();
    assert!(matches!(&e, StoreError::NotFound(m) if m.contains("register again")), "{e:?}");
    assert!(matches!(s.keep_alive(12345, None).await, Err(StoreError::NotFound(_))));
    s.close();
}

both!(lapsed_lease_is_removed_once_within_ttl_plus_one_second);
async fn lapsed_lease_is_removed_once_within_ttl_plus_one_second<S: RegistryStore>(s: Arc<S>) {
    let kept = s.register(inst("orders", "kept"), Duration::from_secs(1)).await.unwrap();
    let lapsing = s.register(inst("orders", "lapsing"), Duration::from_secs(1)).await.unwrap();
    let (_, mut rx) = s.view().subscribe(Some((&s.view().position().0, lapsing.revision)), &View::all).unwrap();
    let started = tokio::time::Instant::now();
    let mut deletes = Vec::new();
    while started.elapsed() < Duration::from_millis(2500) {
        s.keep_alive(kept.lease_id, None).await.unwrap();
        while let Ok(Broadcast::Change(ev)) = rx.try_recv() {
            if let Change::Delete(i, reason) = &ev.change {
                assert_eq!(*reason, DeleteReason::LeaseExpired);
                deletes.push((i.instance_id.clone(), started.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(deletes.len(), 1, "exactly one removal: {deletes:?}");
    assert_eq!(deletes[0].0, "lapsing");
    assert!(deletes[0].1 <= Duration::from_secs(2), "removed within TTL + 1 s: {:?}", deletes[0].1);
    assert!(s.view().get("orders/kept").is_some());
    s.close();
}

both!(resume_from_the_history_has_no_gap_and_no_duplicate);
async fn resume_from_the_history_has_no_gap_and_no_duplicate<S: RegistryStore>(s: Arc<S>) {
    let first = s.register(inst("orders", "a"), Duration::from_secs(10)).await.unwrap();
    let epoch = s.view().position().0;
    let b = s.register(inst("orders", "b"), Duration::from_secs(10)).await.unwrap();
    s.deregister(first.lease_id).await.unwrap();
    s.register(inst("users", "c"), Duration::from_secs(10)).await.unwrap();
    let (start, _) = s.view().subscribe(Some((&epoch, first.revision)), &View::all).unwrap();
    let Start::Resume(events) = start else { panic!("expected a resume") };
    let revs: Vec<u64> = events.iter().map(|e| e.revision).collect();
    assert_eq!(revs, vec![b.revision, b.revision + 1, b.revision + 2]);
    s.close();
}
