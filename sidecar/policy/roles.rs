//! Per-user roles kept in Redis (the seed's "Redis-cached user
//! permissions"): a set at a key built from the token's `sub`, read with
//! SMEMBERS and cached locally for `cache_ttl`. Redis slow or down: the last
//! cached roles (even past their TTL) are used, else none — so a Redis
//! outage can only take roles away, never add them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use crate::mesh::policy::rbac::RbacRedis;

/// Longest wait for Redis on the request path.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_millis(200);
/// Users remembered (the cache is cleared when full).
const CACHE_CAP: usize = 100_000;

/// One user's roles and when they were read.
type Cached = (Instant, Arc<Vec<String>>);

/// See the module docs.
pub struct RoleLookup {
    conn: ConnectionManager,
    key: String,
    ttl: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for RoleLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleLookup").field("key", &self.key).finish_non_exhaustive()
    }
}

impl RoleLookup {
    /// Connects lazily.
    pub fn new(c: &RbacRedis) -> Result<RoleLookup, String> {
        let client = redis::Client::open(c.url.as_str()).map_err(|e| e.to_string())?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(LOOKUP_TIMEOUT))
            .set_connection_timeout(Some(LOOKUP_TIMEOUT))
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())?;
        Ok(RoleLookup { conn, key: c.key.clone(), ttl: c.cache_ttl.0, cache: Mutex::new(HashMap::new()) })
    }

    /// The roles Redis holds for `sub`.
    pub async fn roles(&self, sub: &str) -> Arc<Vec<String>> {
        let cached = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(sub).cloned();
        if let Some((at, roles)) = &cached
            && at.elapsed() < self.ttl
        {
            return roles.clone();
        }
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(self.key.replace("{sub}", sub));
        match tokio::time::timeout(LOOKUP_TIMEOUT, cmd.query_async::<Vec<String>>(&mut conn)).await {
            Ok(Ok(mut roles)) => {
                roles.sort();
                let roles = Arc::new(roles);
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= CACHE_CAP {
                    cache.clear();
                }
                cache.insert(sub.to_string(), (Instant::now(), roles.clone()));
                roles
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "role lookup in Redis failed; using the cached roles");
                cached.map(|c| c.1).unwrap_or_default()
            }
            Err(_) => {
                tracing::warn!("role lookup in Redis timed out; using the cached roles");
                cached.map(|c| c.1).unwrap_or_default()
            }
        }
    }
}
