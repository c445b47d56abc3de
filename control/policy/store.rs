//! Where the policies in force live: a map service → versioned snapshot,
//! published to this process's watchers through a `watch` channel.
//!
//! With the memory backend the map is the truth and versions count up in
//! this process. With Redis ([`super::redis`]) the truth is in Redis under
//! `{<prefix>:policy}`, every write is one Lua script, and each replica polls
//! the revision to refresh its map, so every control replica publishes the
//! same snapshot with the same version. Setting an unchanged document keeps
//! its version (replicas loading the same files do not fight).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::watch;

use super::redis::{POLL, RedisPolicies};
use super::snapshot::{Policies, Snapshot, StoreUnavailable};

/// See the module docs.
#[derive(Debug)]
pub struct PolicyStore {
    tx: watch::Sender<Policies>,
    backend: Backend,
    /// Policy files that failed to load, by path: the error.
    errors: Mutex<BTreeMap<String, String>>,
    /// With Redis: the revision poller.
    poller: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Debug)]
enum Backend {
    Memory(Mutex<u64>),
    Redis(RedisPolicies),
}

impl PolicyStore {
    /// Process-local policies.
    pub fn memory() -> Arc<PolicyStore> {
        Arc::new(PolicyStore {
            tx: watch::channel(Arc::default()).0,
            backend: Backend::Memory(Mutex::new(0)),
            errors: Mutex::default(),
            poller: Mutex::default(),
        })
    }

    /// Policies shared through Redis; starts the poller.
    pub fn redis(url: &str, prefix: &str, timeout: std::time::Duration) -> Result<Arc<PolicyStore>, String> {
        let redis = RedisPolicies::new(url, prefix, timeout)?;
        let store = Arc::new(PolicyStore {
            tx: watch::channel(Arc::default()).0,
            backend: Backend::Redis(redis),
            errors: Mutex::default(),
            poller: Mutex::default(),
        });
        let task = tokio::spawn(poll(Arc::downgrade(&store)));
        *store.poller.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(store)
    }

    /// Loads what Redis holds now (no-op in memory), up to the store timeout.
    pub async fn refresh(&self) -> Result<(), StoreUnavailable> {
        if let Backend::Redis(r) = &self.backend {
            let all = r.load_all().await?;
            self.install(all);
        }
        Ok(())
    }

    /// Replaces the map when anything differs (watchers wake up).
    pub(crate) fn install(&self, all: BTreeMap<String, Arc<Snapshot>>) {
        self.tx.send_if_modified(|cur| {
            if **cur == all {
                return false;
            }
            *cur = Arc::new(all);
            true
        });
    }

    /// Changes of the map.
    pub fn subscribe(&self) -> watch::Receiver<Policies> {
        self.tx.subscribe()
    }

    /// The policy of `service` in force, if any.
    pub fn get(&self, service: &str) -> Option<Arc<Snapshot>> {
        self.tx.borrow().get(service).cloned()
    }

    /// Every policy in force.
    pub fn all(&self) -> Policies {
        self.tx.borrow().clone()
    }

    /// Makes `document_json` the policy of `service` (validated by the caller).
    pub async fn set(
        &self,
        service: &str,
        document_json: &str,
        source: &str,
    ) -> Result<Arc<Snapshot>, StoreUnavailable> {
        match &self.backend {
            Backend::Memory(counter) => {
                let mut snap = None;
                self.tx.send_if_modified(|cur| {
                    if let Some(s) = cur.get(service).filter(|s| s.document_json == document_json) {
                        snap = Some(s.clone());
                        return false;
                    }
                    let mut n = counter.lock().unwrap_or_else(|e| e.into_inner());
                    *n += 1;
                    let s = Arc::new(Snapshot {
                        service: service.into(),
                        version: *n,
                        document_json: document_json.into(),
                        source: source.into(),
                    });
                    let mut next = (**cur).clone();
                    next.insert(service.into(), s.clone());
                    *cur = Arc::new(next);
                    snap = Some(s);
                    true
                });
                Ok(snap.unwrap_or_else(|| unreachable!("set in the closure")))
            }
            Backend::Redis(r) => {
                r.set(service, document_json, source).await?;
                self.refresh().await?;
                self.get(service).ok_or_else(|| StoreUnavailable("deleted concurrently".into()))
            }
        }
    }

    /// Removes the policy of `service`; true if there was one.
    pub async fn delete(&self, service: &str) -> Result<bool, StoreUnavailable> {
        match &self.backend {
            Backend::Memory(_) => Ok(self.tx.send_if_modified(|cur| {
                if !cur.contains_key(service) {
                    return false;
                }
                let mut next = (**cur).clone();
                next.remove(service);
                *cur = Arc::new(next);
                true
            })),
            Backend::Redis(r) => {
                let existed = r.delete(service).await?;
                self.refresh().await?;
                Ok(existed)
            }
        }
    }

    /// Records (or clears, with `None`) the load error of a policy file.
    pub fn set_error(&self, path: &str, error: Option<String>) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        match error {
            Some(e) => errors.insert(path.into(), e),
            None => errors.remove(path),
        };
    }

    /// Policy files that failed to load, by path.
    pub fn errors(&self) -> BTreeMap<String, String> {
        self.errors.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn backend_redis(&self) -> Option<&RedisPolicies> {
        match &self.backend {
            Backend::Redis(r) => Some(r),
            Backend::Memory(_) => None,
        }
    }

    /// Stops background work.
    pub fn close(&self) {
        if let Some(t) = self.poller.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }
}

/// With Redis: checks the revision every [`POLL`] and reloads the map when it
/// moved; while Redis is unreachable the last map stays in force. Ends when
/// the store is dropped.
async fn poll(store: Weak<PolicyStore>) {
    let mut seen = None;
    let mut down = false;
    loop {
        let Some(store) = store.upgrade() else { return };
        let result = match &store.backend_redis() {
            Some(r) => match r.rev().await {
                Ok(rev) if Some(rev) == seen => Ok(()),
                Ok(rev) => r.load_all().await.map(|all| {
                    store.install(all);
                    seen = Some(rev);
                }),
                Err(e) => Err(e),
            },
            None => return,
        };
        match result {
            Ok(()) if down => {
                tracing::info!("policy store: Redis reachable again");
                down = false;
            }
            Err(e) if !down => {
                tracing::warn!(error = %e, "policy store: Redis unreachable; the last policies stay in force");
                down = true;
            }
            _ => {}
        }
        drop(store);
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_versions_increase_and_unchanged_documents_keep_theirs() {
        let store = PolicyStore::memory();
        let mut rx = store.subscribe();
        let a = store.set("orders", "{}", "api").await.unwrap();
        assert_eq!(a.version, 1);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        let same = store.set("orders", "{}", "file:x").await.unwrap();
        assert_eq!(same.version, 1);
        assert!(!rx.has_changed().unwrap(), "no wake-up for an unchanged document");
        let b = store.set("orders", "{\"jwt\":null}", "api").await.unwrap();
        assert_eq!(b.version, 2);
        assert!(store.delete("orders").await.unwrap());
        assert!(store.get("orders").is_none());
        assert!(!store.delete("orders").await.unwrap());
    }
}
