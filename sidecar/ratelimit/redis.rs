//! The Redis store: one limit shared exactly by every proxy that uses the
//! same Redis and key prefix.
//!
//! Each check is one atomic Lua script (`redis/*.lua`, one per algorithm, run
//! with EVALSHA; the script is loaded again after a Redis restart) over one
//! key, `<prefix>:rl:{<hex>}`, where `<hex>` is the rule-and-client digest
//! (see [`super::key`]). The hash tag is the digest, so each limit lives on
//! one Redis Cluster slot and different clients spread over the cluster.
//! Times come from Redis's `TIME`, so proxies' clocks never disagree.
//!
//! Failure handling: every call has a short deadline (`redis_timeout`,
//! default 25 ms). The first failure or timeout marks the store down; from
//! then on, checks do not touch Redis at all and each rule answers with its
//! failure mode at once — so a dead or stalled Redis costs at most one
//! deadline, never one per request. A background task probes Redis
//! (`PING`, every `probe_interval`) and marks it up when it answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use super::algorithm::{Verdict, emission_interval};
use super::key::Key;
use crate::mesh::policy::ratelimit::Algorithm;

/// A Redis connection and the key prefix the limits live under.
#[derive(Clone)]
pub struct RedisBackend {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects lazily to `url` (`redis://host:port/db`): creating the
    /// limiter never waits for Redis; a Redis that is down at start is
    /// handled like one that fails later. `prefix` must not contain `{` or
    /// `}` (it would move the hash tag).
    pub fn open(url: &str, prefix: &str) -> Result<RedisBackend, String> {
        let client = Client::open(url).map_err(|e| format!("redis url: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| format!("redis url: {e}"))?;
        RedisBackend::from_connection(conn, prefix)
    }

    /// Uses an existing connection (it is cloned per call; clones share one
    /// multiplexed, pipelined socket).
    pub fn from_connection(conn: ConnectionManager, prefix: &str) -> Result<RedisBackend, String> {
        if prefix.contains(['{', '}']) {
            return Err(format!("redis prefix {prefix:?} must not contain '{{' or '}}'"));
        }
        Ok(RedisBackend { conn, prefix: prefix.to_string() })
    }
}

#[derive(Debug)]
struct Scripts {
    fixed: Script,
    sliding: Script,
    bucket: Script,
    gcra: Script,
}

macro_rules! script {
    ($name:literal) => {
        Script::new(concat!(include_str!("redis/prelude.lua"), include_str!(concat!("redis/", $name, ".lua"))))
    };
}

/// The store with its up/down state. See the module docs.
#[derive(Debug)]
pub struct RedisStore {
    backend: RedisBackend,
    scripts: Scripts,
    timeout: Duration,
    probe_interval: Duration,
    up: AtomicBool,
    /// Why the store went down, for logs.
    reason: Mutex<String>,
}

impl RedisStore {
    /// A store that starts up (optimistically: a down Redis costs the first
    /// request one deadline).
    pub fn new(backend: RedisBackend, timeout: Duration, probe_interval: Duration) -> Arc<RedisStore> {
        Arc::new(RedisStore {
            backend,
            scripts: Scripts {
                fixed: script!("fixed_window"),
                sliding: script!("sliding_window"),
                bucket: script!("token_bucket"),
                gcra: script!("gcra"),
            },
            timeout,
            probe_interval,
            up: AtomicBool::new(true),
            reason: Mutex::new(String::new()),
        })
    }

    /// The per-call deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The probe period while down.
    pub fn probe_interval(&self) -> Duration {
        self.probe_interval
    }

    /// False from a failure until a probe succeeds.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// One check; an error (or a timeout) marks the store down and starts
    /// the probe.
    pub async fn check(self: &Arc<Self>, algorithm: &Algorithm, key: &Key) -> Result<Verdict, String> {
        let redis_key = format!("{}:rl:{{{}}}", self.backend.prefix, key.hex());
        let us = |ns: u64| (ns / 1_000).max(1);
        let (script, args) = match *algorithm {
            Algorithm::FixedWindow { limit, window } => (&self.scripts.fixed, vec![limit, us(window)]),
            Algorithm::SlidingWindow { limit, window } => (&self.scripts.sliding, vec![limit, us(window)]),
            Algorithm::TokenBucket { rate, per, burst } => (&self.scripts.bucket, vec![rate, us(per), burst]),
            Algorithm::Gcra { rate, per, burst } => (&self.scripts.gcra, vec![emission_interval(rate, us(per)), burst]),
        };
        let mut inv = script.key(redis_key);
        for a in args {
            inv.arg(a);
        }
        let mut conn = self.backend.conn.clone();
        let result = match tokio::time::timeout(self.timeout, inv.invoke_async::<Vec<i64>>(&mut conn)).await {
            Ok(Ok(v)) if v.len() == 4 => Ok(v),
            Ok(Ok(v)) => Err(format!("unexpected script reply {v:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        match result {
            Ok(v) => {
                let dur = |x: i64| Duration::from_micros(u64::try_from(x).unwrap_or(0));
                Ok(Verdict {
                    allowed: v[0] == 1,
                    limit: algorithm.quota(),
                    remaining: u64::try_from(v[1]).unwrap_or(0),
                    reset: dur(v[2]),
                    retry_after: dur(v[3]),
                })
            }
            Err(e) => {
                self.mark_down(&e);
                Err(e)
            }
        }
    }

    /// Marks the store down and, on the transition, starts the probe task.
    fn mark_down(self: &Arc<Self>, reason: &str) {
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner) = reason.to_string();
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(%reason, "rate-limit Redis failing: rules use their failure mode until it answers");
            tokio::spawn(probe(Arc::downgrade(self)));
        }
    }
}

/// Pings Redis every `probe_interval` until it answers, then marks the
/// store up. Ends when the store is dropped.
async fn probe(store: Weak<RedisStore>) {
    loop {
        let Some(s) = store.upgrade() else { return };
        let interval = s.probe_interval;
        let mut conn = s.backend.conn.clone();
        // The probe may take longer than a request's deadline: it is off the
        // request path, and a Redis that answers in 60 ms is up.
        let cmd = redis::cmd("PING");
        match tokio::time::timeout(interval.max(s.timeout), cmd.query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => {
                s.up.store(true, Ordering::Release);
                tracing::info!("rate-limit Redis answers again: rules use it");
                return;
            }
            Ok(Err(e)) => *s.reason.lock().unwrap_or_else(PoisonError::into_inner) = e.to_string(),
            Err(_) => {}
        }
        drop(s);
        tokio::time::sleep(interval).await;
    }
}
