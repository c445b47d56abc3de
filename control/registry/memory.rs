//! The in-memory registry store: the embedded default, for a laptop and for
//! tests. Everything lives in this process and is gone when it exits.
//!
//! Writes take one mutex, change the lease table and apply the change to the
//! view in the same critical section, so revisions follow the order of writes.
//! A sweeper task removes lapsed leases every `sweep` interval.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::store::{Abort, Registered, RegistryStore, Renewed, StoreError, new_lease_id, unix_ms};
use super::view::{Change, DeleteReason, View, new_epoch};
use crate::mesh::registry::{Health, Instance};

#[derive(Debug)]
struct Lease {
    key: String,
    ttl: Duration,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Leases {
    by_id: HashMap<u64, Lease>,
    by_expiry: BTreeSet<(Instant, u64)>,
}

/// See the module docs.
#[derive(Debug)]
pub struct MemoryStore {
    view: Arc<View>,
    leases: Arc<Mutex<Leases>>,
    sweeper: Abort,
}

impl MemoryStore {
    /// A new empty registry keeping `history` changes for watch resume; lapsed
    /// leases are removed every `sweep`.
    pub fn new(history: usize, sweep: Duration) -> Self {
        let view = View::new(new_epoch(), history);
        let leases = Arc::new(Mutex::new(Leases::default()));
        let task = {
            let (view, leases) = (view.clone(), leases.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(sweep);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    expire(&view, &mut lock(&leases), Instant::now());
                }
            })
        };
        MemoryStore { view, leases, sweeper: Abort(task) }
    }

    fn lock(&self) -> MutexGuard<'_, Leases> {
        lock(&self.leases)
    }
}

fn lock(m: &Mutex<Leases>) -> MutexGuard<'_, Leases> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn next_revision(view: &View) -> u64 {
    view.position().1 + 1
}

fn expire(view: &View, leases: &mut Leases, now: Instant) {
    while let Some(&(at, id)) = leases.by_expiry.first() {
        if at > now {
            break;
        }
        leases.by_expiry.pop_first();
        if let Some(lease) = leases.by_id.remove(&id)
            && let Some(inst) = view.get(&lease.key)
        {
            view.apply(next_revision(view), Change::Delete(inst, DeleteReason::LeaseExpired));
        }
    }
}

impl RegistryStore for MemoryStore {
    fn view(&self) -> &Arc<View> {
        &self.view
    }

    async fn register(&self, mut instance: Instance, ttl: Duration) -> Result<Registered, StoreError> {
        let mut leases = self.lock();
        let key = instance.key();
        if let Some(old) = self.view.get(&key) {
            remove_lease(&mut leases, old.lease_id);
        }
        let lease_id = new_lease_id();
        let expires = Instant::now() + ttl;
        instance.lease_id = lease_id;
        instance.lease_expires_unix_ms = unix_ms() + ttl.as_millis() as u64;
        instance.lease_ttl_ms = ttl.as_millis() as u64;
        leases.by_id.insert(lease_id, Lease { key, ttl, expires });
        leases.by_expiry.insert((expires, lease_id));
        let revision = next_revision(&self.view);
        self.view.apply(revision, Change::Put(instance));
        Ok(Registered { lease_id, ttl, revision })
    }

    async fn keep_alive(&self, lease_id: u64, health: Option<Health>) -> Result<Renewed, StoreError> {
        let mut leases = self.lock();
        let now = Instant::now();
        let lease = leases.by_id.get_mut(&lease_id).ok_or_else(|| unknown_lease(lease_id))?;
        let old = lease.expires;
        lease.expires = now + lease.ttl;
        let (ttl, expires, key) = (lease.ttl, lease.expires, lease.key.clone());
        leases.by_expiry.remove(&(old, lease_id));
        leases.by_expiry.insert((expires, lease_id));
        let expires_unix_ms = unix_ms() + ttl.as_millis() as u64;
        if let Some(h) = health
            && let Some(mut inst) = self.view.get(&key)
            && inst.health != h
        {
            inst.health = h;
            inst.lease_expires_unix_ms = expires_unix_ms;
            self.view.apply(next_revision(&self.view), Change::Put(inst));
        }
        Ok(Renewed { ttl, expires_unix_ms })
    }

    async fn deregister(&self, lease_id: u64) -> Result<u64, StoreError> {
        let mut leases = self.lock();
        let lease = remove_lease(&mut leases, lease_id).ok_or_else(|| unknown_lease(lease_id))?;
        let inst = self
            .view
            .get(&lease.key)
            .ok_or_else(|| StoreError::Internal(format!("lease {lease_id} points at a missing instance")))?;
        let revision = next_revision(&self.view);
        self.view.apply(revision, Change::Delete(inst, DeleteReason::Deregistered));
        Ok(revision)
    }

    fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    fn close(&self) {
        self.sweeper.abort();
    }
}

fn remove_lease(leases: &mut Leases, lease_id: u64) -> Option<Lease> {
    let lease = leases.by_id.remove(&lease_id)?;
    leases.by_expiry.remove(&(lease.expires, lease_id));
    Some(lease)
}

/// The NOT_FOUND every store gives for an unknown lease.
pub(crate) fn unknown_lease(lease_id: u64) -> StoreError {
    StoreError::NotFound(format!(
        "lease {lease_id} is unknown: it expired, was revoked or its store lost it; register again"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::registry::test_instance as inst;

    #[tokio::test(start_paused = true)]
    async fn lease_lapses_within_ttl_plus_one_sweep_and_renewal_keeps_it() {
        let store = MemoryStore::new(100, Duration::from_millis(250));
        let a = store.register(inst("a"), Duration::from_secs(10)).await.unwrap();
        let b = store.register(inst("b"), Duration::from_secs(10)).await.unwrap();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            store.keep_alive(a.lease_id, None).await.unwrap();
        }
        // 15 s passed: b (never renewed) is gone, a is alive.
        assert!(store.view().get("svc/a").is_some());
        assert!(store.view().get("svc/b").is_none());
        assert_eq!(store.keep_alive(b.lease_id, None).await, Err(unknown_lease(b.lease_id)));
    }

    #[tokio::test(start_paused = true)]
    async fn removal_happens_by_ttl_plus_sweep_not_before_ttl() {
        let store = MemoryStore::new(100, Duration::from_millis(250));
        store.register(inst("a"), Duration::from_secs(10)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(9_900)).await;
        assert!(store.view().get("svc/a").is_some(), "alive before its TTL");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(store.view().get("svc/a").is_none(), "removed within TTL + one sweep");
    }
}
