//! The Redis registry store: what several control replicas share.
//!
//! Data layout (all keys under one hash tag `{<prefix>:reg}`, so every script
//! runs atomically on one Redis Cluster slot and changes have one total order):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `rev` | string | the registry revision (INCR per change) |
//! | `epoch` | string | the store's incarnation; a new one means the data was lost |
//! | `inst` | hash | `service/instance_id` → instance JSON |
//! | `health` | hash | `service/instance_id` → `SERVING`/`NOT_SERVING`/`DRAINING` |
//! | `lease` | hash | lease id → `"<ttl_ms> <service/instance_id>"` |
//! | `lease_exp` | zset | lease id scored by expiry (Redis time, ms) |
//! | `changes` | stream | the change feed: one entry per revision |
//! | `swept` | string | when a replica last ran the expiry sweep |
//!
//! Every write is one Lua script (`redis/*.lua`) that changes the data, bumps
//! `rev` and appends to `changes` together. Each replica tails `changes` with
//! XREAD and applies the entries to its [`View`] in revision order; a gap (the
//! feed was trimmed past it, or the epoch changed) makes it reload a snapshot
//! and send watchers a reset. Every replica runs the expiry sweep; the script
//! is atomic, so each lease expires exactly once, with no leader.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamId, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, AsyncConnectionConfig, Client, Script, ScriptInvocation};
use tokio::sync::watch;

use super::memory::unknown_lease;
use super::store::{Abort, Registered, RegistryStore, Renewed, StoreError, new_lease_id, unix_ms};
use super::view::{Change, DeleteReason, View, new_epoch};
use crate::mesh::registry::{Health, Instance};

/// Settings of the Redis store.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db` (or `rediss://`).
    pub url: String,
    /// Key prefix; several registries can share one Redis under different prefixes.
    pub prefix: String,
    /// Longest wait for one Redis command before the caller gets UNAVAILABLE.
    pub timeout: Duration,
    /// How often each replica runs the expiry sweep.
    pub sweep: Duration,
    /// Change-feed entries kept in Redis and in the view for watch resume.
    pub history: usize,
    /// If no replica swept for this long, leases get a fresh TTL instead of
    /// expiring together (see ARCHITECTURE.md, "Redis outages and leases").
    pub outage_grace_after: Duration,
}

const EXPIRE_BATCH: usize = 1000;
const XREAD_BLOCK_MS: usize = 1000;
const XREAD_COUNT: usize = 1000;

#[derive(Debug)]
struct Scripts {
    register: Script,
    keepalive: Script,
    deregister: Script,
    expire: Script,
    sync: Script,
}

macro_rules! script {
    ($name:literal) => {
        Script::new(concat!(include_str!("redis/prelude.lua"), include_str!(concat!("redis/", $name, ".lua"))))
    };
}

#[derive(Debug)]
struct Inner {
    view: Arc<View>,
    client: Client,
    conn: ConnectionManager,
    keys: [String; 8],
    scripts: Scripts,
    config: RedisConfig,
    /// True while this replica's feed connection is up and in sync.
    up: AtomicBool,
    /// Why the store is not ready, for `/ready` and UNAVAILABLE messages.
    down_reason: Mutex<String>,
}

/// See the module docs.
#[derive(Debug)]
pub struct RedisStore {
    inner: Arc<Inner>,
    tasks: Vec<Abort>,
    synced: watch::Receiver<bool>,
}

impl RedisStore {
    /// Connects lazily: the store starts even when Redis is down, reports
    /// not-ready and rejects writes until the first sync succeeds.
    pub fn new(config: RedisConfig) -> Result<Self, String> {
        let (client, conn) = crate::control::redis::connect_lazy(&config.url, config.timeout)?;
        let tag = format!("{{{}:reg}}", config.prefix);
        let keys =
            ["rev", "epoch", "inst", "health", "lease", "lease_exp", "changes", "swept"].map(|k| format!("{tag}:{k}"));
        let inner = Arc::new(Inner {
            view: View::new(new_epoch(), config.history),
            client,
            conn,
            keys,
            scripts: Scripts {
                register: script!("register"),
                keepalive: script!("keepalive"),
                deregister: script!("deregister"),
                expire: script!("expire"),
                sync: script!("sync"),
            },
            config,
            up: AtomicBool::new(false),
            down_reason: Mutex::new("not yet synchronised with redis".into()),
        });
        let (synced_tx, synced) = watch::channel(false);
        let tasks =
            vec![Abort(tokio::spawn(tail(inner.clone(), synced_tx))), Abort(tokio::spawn(sweep(inner.clone())))];
        Ok(RedisStore { inner, tasks, synced })
    }

    /// Waits until the first synchronisation with Redis, up to `limit`.
    pub async fn wait_synced(&self, limit: Duration) -> bool {
        let mut rx = self.synced.clone();
        tokio::time::timeout(limit, rx.wait_for(|s| *s)).await.is_ok()
    }
}

impl Inner {
    fn invoke<'a>(&'a self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for k in &self.keys {
            inv.key(k);
        }
        inv
    }

    fn set_down(&self, reason: String) {
        if self.up.swap(false, Ordering::SeqCst) {
            tracing::warn!(%reason, "registry store is down; serving reads and watches from the last view");
        }
        *self.down_reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    fn set_up(&self) {
        if !self.up.swap(true, Ordering::SeqCst) {
            tracing::info!("registry store is up");
        }
    }

    fn check_up(&self) -> Result<(), StoreError> {
        if self.up.load(Ordering::SeqCst) {
            return Ok(());
        }
        let reason = self.down_reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Err(StoreError::Unavailable(format!("registry store unavailable ({reason}); retry later")))
    }

    /// Makes the shared write connection reconnect now (after an outage its
    /// old socket is dead) so the first write after Redis returns succeeds.
    async fn warm_writer(&self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..3 {
            let mut conn = self.conn.clone();
            match tokio::time::timeout(self.config.timeout, redis::cmd("PING").query_async::<String>(&mut conn)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
        }
        Err(format!("write connection: {last}"))
    }

    /// Runs a script with the store's deadline; errors become UNAVAILABLE.
    async fn run<T: redis::FromRedisValue>(&self, inv: ScriptInvocation<'_>) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.config.timeout, inv.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("registry store error: {e}"))),
            Err(_) => {
                Err(StoreError::Unavailable(format!("registry store did not answer within {:?}", self.config.timeout)))
            }
        }
    }

    /// Read-your-writes: a write returns once this replica's view shows it.
    async fn settle(&self, epoch: &str, revision: u64) {
        if revision > 0 {
            let _ = tokio::time::timeout(self.config.timeout, self.view.wait_for(epoch, revision)).await;
        }
    }
}

impl RegistryStore for RedisStore {
    fn view(&self) -> &Arc<View> {
        &self.inner.view
    }

    async fn register(&self, mut instance: Instance, ttl: Duration) -> Result<Registered, StoreError> {
        let inner = &self.inner;
        inner.check_up()?;
        let lease_id = new_lease_id();
        let ttl_ms = ttl.as_millis() as u64;
        instance.lease_id = lease_id;
        instance.lease_expires_unix_ms = unix_ms() + ttl_ms;
        instance.lease_ttl_ms = ttl_ms;
        let json = serde_json::to_string(&instance).map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut inv = inner.invoke(&inner.scripts.register);
        inv.arg(instance.key())
            .arg(json)
            .arg(instance.health.as_str())
            .arg(lease_id.to_string())
            .arg(ttl_ms)
            .arg(inner.config.history)
            .arg(new_epoch())
            .arg(inner.view.position().1);
        let (epoch, revision): (String, u64) = inner.run(inv).await?;
        inner.settle(&epoch, revision).await;
        Ok(Registered { lease_id, ttl, revision })
    }

    async fn keep_alive(&self, lease_id: u64, health: Option<Health>) -> Result<Renewed, StoreError> {
        let inner = &self.inner;
        inner.check_up()?;
        let mut inv = inner.invoke(&inner.scripts.keepalive);
        inv.arg(lease_id.to_string()).arg(health.map(Health::as_str).unwrap_or("")).arg(inner.config.history);
        let (found, ttl_ms, _expires, epoch, revision): (u8, u64, u64, String, u64) = inner.run(inv).await?;
        if found == 0 {
            return Err(unknown_lease(lease_id));
        }
        inner.settle(&epoch, revision).await;
        // Reported in this host's clock, like the expiry set at registration.
        Ok(Renewed { ttl: Duration::from_millis(ttl_ms), expires_unix_ms: unix_ms() + ttl_ms })
    }

    async fn deregister(&self, lease_id: u64) -> Result<u64, StoreError> {
        let inner = &self.inner;
        inner.check_up()?;
        let mut inv = inner.invoke(&inner.scripts.deregister);
        inv.arg(lease_id.to_string()).arg(inner.config.history);
        let (found, epoch, revision): (u8, String, u64) = inner.run(inv).await?;
        if found == 0 {
            return Err(unknown_lease(lease_id));
        }
        inner.settle(&epoch, revision).await;
        Ok(revision)
    }

    fn ready(&self) -> Result<(), String> {
        self.inner.check_up().map_err(|e| e.to_string())
    }

    fn close(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Jittered exponential backoff for reconnects: 100 ms doubling to 2 s.
#[derive(Debug, Default)]
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        let cap = 100u64.saturating_mul(1 << self.0.min(5)).min(2000);
        self.0 += 1;
        Duration::from_millis(cap / 2 + fastrand::u64(0..=cap / 2))
    }
}

/// Follows the change feed into the view, reconnecting with backoff.
async fn tail(inner: Arc<Inner>, synced: watch::Sender<bool>) {
    let mut backoff = Backoff::default();
    let mut last_id: Option<String> = None;
    let conn_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(inner.config.timeout))
        .set_response_timeout(Some(inner.config.timeout + Duration::from_millis(XREAD_BLOCK_MS as u64)));
    loop {
        let step = async {
            let mut conn = inner
                .client
                .get_multiplexed_async_connection_with_config(&conn_config)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            sync(&inner, &mut conn, &mut last_id).await?;
            inner.warm_writer().await?;
            inner.set_up();
            synced.send_replace(true);
            follow(&inner, &mut conn, &mut last_id).await
        };
        let reason = match step.await {
            Ok(()) => continue,
            Err(e) => e,
        };
        inner.set_down(reason);
        tokio::time::sleep(backoff.next()).await;
        if inner.up.load(Ordering::SeqCst) {
            backoff = Backoff::default();
        }
    }
}

/// Reads the feed until an error; resyncs on a gap. Never returns Ok.
async fn follow(inner: &Inner, conn: &mut MultiplexedConnection, last_id: &mut Option<String>) -> Result<(), String> {
    let opts = StreamReadOptions::default().block(XREAD_BLOCK_MS).count(XREAD_COUNT);
    let feed = &inner.keys[6];
    loop {
        let from = last_id.clone().unwrap_or_else(|| "0-0".into());
        let reply: Option<StreamReadReply> =
            conn.xread_options(&[feed], &[&from], &opts).await.map_err(|e| format!("read change feed: {e}"))?;
        let Some(reply) = reply else { continue };
        for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
            match apply_entry(&inner.view, &entry) {
                Applied::Yes | Applied::AlreadySeen => *last_id = Some(entry.id.clone()),
                Applied::Gap(why) => {
                    tracing::info!(%why, "change feed gap; reloading the registry snapshot");
                    resync(inner, conn, last_id).await?;
                    break;
                }
            }
        }
    }
}

enum Applied {
    Yes,
    AlreadySeen,
    Gap(String),
}

fn apply_entry(view: &View, e: &StreamId) -> Applied {
    let (epoch, rev) = view.position();
    let entry_epoch: String = e.get("epoch").unwrap_or_default();
    let entry_rev: u64 = e.get("rev").unwrap_or(0);
    if entry_epoch != epoch {
        return Applied::Gap(format!("epoch {entry_epoch} at feed entry {}, view has {epoch}", e.id));
    }
    if entry_rev <= rev {
        return Applied::AlreadySeen;
    }
    if entry_rev != rev + 1 {
        return Applied::Gap(format!("feed jumps from revision {rev} to {entry_rev}"));
    }
    match decode_change(e) {
        Ok(change) => {
            if view.apply(entry_rev, change) {
                Applied::Yes
            } else {
                Applied::Gap("view refused the change".into())
            }
        }
        Err(why) => Applied::Gap(why),
    }
}

fn decode_change(e: &StreamId) -> Result<Change, String> {
    let data: String = e.get("data").ok_or("feed entry without data")?;
    let mut inst: Instance = serde_json::from_str(&data).map_err(|err| format!("feed entry {}: {err}", e.id))?;
    let health: String = e.get("health").unwrap_or_default();
    inst.health = Health::parse(&health).unwrap_or(Health::Serving);
    let op: String = e.get("op").unwrap_or_default();
    match op.as_str() {
        "put" => Ok(Change::Put(inst)),
        "del" => {
            let reason: String = e.get("reason").unwrap_or_default();
            Ok(Change::Delete(inst, DeleteReason::parse(&reason).unwrap_or(DeleteReason::Deregistered)))
        }
        other => Err(format!("feed entry {}: unknown op {other:?}", e.id)),
    }
}

type SyncReply = (String, String, u64, String, Vec<String>, Vec<String>);

/// After (re)connecting: recreate a lost registry from this replica's view,
/// or load a snapshot when the view cannot catch up from the feed.
async fn sync(inner: &Inner, conn: &mut MultiplexedConnection, last_id: &mut Option<String>) -> Result<(), String> {
    let (epoch, revision) = inner.view.position();
    let mut inv = inner.invoke(&inner.scripts.sync);
    inv.arg("check").arg(&epoch).arg(revision).arg(0);
    let reply: Vec<redis::Value> = inv.invoke_async(conn).await.map_err(|e| format!("sync: {e}"))?;
    if reply.len() == 1 {
        // The registry is gone from Redis (first start, or Redis restarted
        // without persistence). A replica that still holds a view restores it,
        // so no acknowledged registration is lost and leases keep their ids.
        let snap = inner.view.snapshot();
        let mut inv = inner.invoke(&inner.scripts.sync);
        if snap.instances.is_empty() {
            inv.arg("init").arg(new_epoch()).arg(revision).arg(0);
        } else {
            tracing::warn!(
                instances = snap.instances.len(),
                "registry missing from redis; restoring it from this replica's view"
            );
            inv.arg("restore").arg(&snap.epoch).arg(snap.revision).arg(0);
            for i in &snap.instances {
                let json = serde_json::to_string(i).map_err(|e| e.to_string())?;
                inv.arg(i.key())
                    .arg(json)
                    .arg(i.health.as_str())
                    .arg(i.lease_id.to_string())
                    .arg(i.lease_ttl_ms.max(1000));
            }
        }
        let _: Vec<redis::Value> = inv.invoke_async(conn).await.map_err(|e| format!("sync: {e}"))?;
    }
    let mut inv = inner.invoke(&inner.scripts.sync);
    inv.arg("check").arg(&epoch).arg(revision).arg(0);
    let (_, r_epoch, r_rev, r_last, inst, health): SyncReply =
        inv.invoke_async(conn).await.map_err(|e| format!("sync: {e}"))?;
    if last_id.is_some() && r_epoch == epoch && r_rev >= revision {
        // Same registry, and this view is behind or level: follow the feed
        // from where it stopped; a gap found there triggers a full reload.
        return Ok(());
    }
    load(inner, r_epoch, r_rev, &r_last, inst, health)?;
    *last_id = Some(r_last);
    Ok(())
}

/// Replaces the view with a fresh snapshot (watchers get a reset).
async fn resync(inner: &Inner, conn: &mut MultiplexedConnection, last_id: &mut Option<String>) -> Result<(), String> {
    let mut inv = inner.invoke(&inner.scripts.sync);
    inv.arg("init").arg(new_epoch()).arg(inner.view.position().1).arg(0);
    let (_, r_epoch, r_rev, r_last, inst, health): SyncReply =
        inv.invoke_async(conn).await.map_err(|e| format!("resync: {e}"))?;
    load(inner, r_epoch, r_rev, &r_last, inst, health)?;
    *last_id = Some(r_last);
    Ok(())
}

fn load(
    inner: &Inner,
    epoch: String,
    revision: u64,
    last: &str,
    inst: Vec<String>,
    health: Vec<String>,
) -> Result<(), String> {
    let health: std::collections::HashMap<&str, &str> =
        health.chunks(2).filter_map(|c| Some((c.first()?.as_str(), c.get(1)?.as_str()))).collect();
    let mut list = Vec::with_capacity(inst.len() / 2);
    for pair in inst.chunks(2) {
        let [field, json] = pair else { continue };
        let mut i: Instance = serde_json::from_str(json).map_err(|e| format!("instance {field}: {e}"))?;
        i.health = health.get(field.as_str()).and_then(|h| Health::parse(h)).unwrap_or(Health::Serving);
        list.push(i);
    }
    tracing::debug!(%epoch, revision, feed = last, instances = list.len(), "loaded registry snapshot");
    inner.view.reset(epoch, revision, list);
    Ok(())
}

/// Runs the expiry sweep every `sweep` interval.
async fn sweep(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.config.sweep);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !inner.up.load(Ordering::SeqCst) {
            continue;
        }
        let mut inv = inner.invoke(&inner.scripts.expire);
        inv.arg(inner.config.outage_grace_after.as_millis() as u64).arg(EXPIRE_BATCH).arg(inner.config.history);
        match inner.run::<(i64, u64)>(inv).await {
            Ok((-1, n)) => {
                tracing::warn!(leases = n, "no replica reached redis for a while; every lease got a fresh TTL")
            }
            Ok((_, n)) if n > 0 => tracing::debug!(expired = n, "expired leases"),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "expiry sweep failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_cap_with_jitter() {
        let mut b = Backoff::default();
        let first = b.next();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            b.next();
        }
        let late = b.next();
        assert!(late >= Duration::from_millis(1000) && late <= Duration::from_millis(2000));
    }
}
