//! The Redis backend of the policy store, shared by control replicas.
//!
//! | key (under `{<prefix>:policy}`) | type | holds |
//! |---|---|---|
//! | `rev` | string | INCR on every change |
//! | `doc` | hash | service → document JSON |
//! | `meta` | hash | service → `"<version> <source>"` |
//!
//! Set and delete are Lua scripts, so a document and its version change
//! together; an unchanged document keeps its version. Every replica polls
//! `rev` ([`POLL`], the poller is the store's) and reloads both hashes when it moved; while Redis is
//! unreachable the last map stays in force.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use super::snapshot::{Snapshot, StoreUnavailable};

/// How often a replica checks Redis for policy changes.
pub const POLL: Duration = Duration::from_millis(250);

const SET: &str = r"
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if cur == ARGV[2] then return 0 end
local v = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], v .. ' ' .. ARGV[3])
return v
";

const DELETE: &str = r"
local n = redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if n > 0 then redis.call('INCR', KEYS[1]) end
return n
";

/// See the module docs.
#[derive(Debug)]
pub struct RedisPolicies {
    conn: ConnectionManager,
    keys: [String; 3],
    timeout: Duration,
    set: Script,
    delete: Script,
}

impl RedisPolicies {
    /// Connects lazily.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, String> {
        let (_, conn) = crate::control::redis::connect_lazy(url, timeout)?;
        let tag = format!("{{{prefix}:policy}}");
        Ok(RedisPolicies {
            conn,
            keys: ["rev", "doc", "meta"].map(|k| format!("{tag}:{k}")),
            timeout,
            set: Script::new(SET),
            delete: Script::new(DELETE),
        })
    }

    async fn run<T: redis::FromRedisValue>(&self, script: &Script, args: &[&str]) -> Result<T, StoreUnavailable> {
        let mut inv = script.prepare_invoke();
        for k in &self.keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(*a);
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreUnavailable(e.to_string())),
            Err(_) => Err(StoreUnavailable(format!("no answer within {:?}", self.timeout))),
        }
    }

    pub(crate) async fn set(&self, service: &str, json: &str, source: &str) -> Result<(), StoreUnavailable> {
        self.run::<u64>(&self.set, &[service, json, source]).await.map(|_| ())
    }

    pub(crate) async fn delete(&self, service: &str) -> Result<bool, StoreUnavailable> {
        self.run::<u64>(&self.delete, &[service]).await.map(|n| n > 0)
    }

    pub(crate) async fn rev(&self) -> Result<u64, StoreUnavailable> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("GET");
        cmd.arg(&self.keys[0]);
        let get = cmd.query_async::<Option<u64>>(&mut conn);
        match tokio::time::timeout(self.timeout, get).await {
            Ok(Ok(v)) => Ok(v.unwrap_or(0)),
            Ok(Err(e)) => Err(StoreUnavailable(e.to_string())),
            Err(_) => Err(StoreUnavailable(format!("no answer within {:?}", self.timeout))),
        }
    }

    pub(crate) async fn load_all(&self) -> Result<BTreeMap<String, Arc<Snapshot>>, StoreUnavailable> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("HGETALL").arg(&self.keys[1]).cmd("HGETALL").arg(&self.keys[2]);
        type Reply = (BTreeMap<String, String>, BTreeMap<String, String>);
        let (docs, meta): Reply = match tokio::time::timeout(self.timeout, pipe.query_async(&mut conn)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(StoreUnavailable(e.to_string())),
            Err(_) => return Err(StoreUnavailable(format!("no answer within {:?}", self.timeout))),
        };
        let mut all = BTreeMap::new();
        for (service, document_json) in docs {
            let Some((version, source)) = meta.get(&service).and_then(|m| m.split_once(' ')) else { continue };
            let Ok(version) = version.parse() else { continue };
            let snap = Snapshot { service: service.clone(), version, document_json, source: source.into() };
            all.insert(service, Arc::new(snap));
        }
        Ok(all)
    }
}
