//! Rate limiting (issue 5, items 6–8): per-rule limits on path prefix,
//! method and route, counted per client IP, JWT claim, API-key header, route
//! or a combination, with four algorithms ([`algorithm`]), in memory
//! ([`memory`]) or shared through Redis ([`redis`]) with a fail-open or
//! fail-closed mode that takes effect within one Redis deadline (25 ms).
//!
//! # Calling it from a request path
//!
//! Build one [`RateLimiter`] per policy version (cheap to clone; share it,
//! e.g. through an `ArcSwap` that policy updates replace), then per request,
//! after authentication (so JWT claims are known) and before forwarding:
//!
//! ```ignore
//! let (config, _) = RateLimitConfig::from_toml(&text)?;              // at load: errors name the field
//! let redis = RedisBackend::open("redis://127.0.0.1:6379", "redfire")?; // only if a rule says storage = "redis"
//! let limiter = RateLimiter::new(&config, Some(redis))?;              // validates again; no I/O
//! limiter.metrics().register(&mut registry);                         // redfire_sidecar_ratelimit_*
//!
//! // per request (`req: http::Request<B>`, `peer: SocketAddr` of the connection):
//! let facts = RequestFacts {
//!     claims: verified_claims.as_ref(), // Option<&serde_json::Map<..>>: only claims of a *verified* JWT
//!     route: route_name,                // Option<&str> from the router (gateway), else None
//!     ..RequestFacts::of(&req, peer.ip()) // method, path (normalised inside), headers, peer IP
//! };
//! let decision = limiter.check(&facts).await;
//! if let Some(rejection) = decision.respond(is_grpc(req.headers())) {
//!     return Ok(rejection);            // 429 / RESOURCE_EXHAUSTED, or 503 / UNAVAILABLE (fail-closed)
//! }
//! let mut resp = app.call(req).await?;
//! decision.add_headers(resp.headers_mut()); // RateLimit-Limit/Remaining/Reset
//! ```
//!
//! Every rule whose path prefix (whole segments), methods and route match is
//! applied, in order; the first one that limits decides (later rules are not
//! charged). An allowed request reports the matching rule with the fewest
//! requests remaining. `check` never blocks on a lock held across I/O:
//! memory rules take one shard mutex for one arithmetic step; Redis rules do
//! one script call with a deadline, or none while Redis is known down.

pub mod algorithm;
pub mod key;
pub mod memory;
pub mod metrics;
pub mod redis;
pub mod respond;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use self::metrics::RateLimitMetrics;
use self::metrics::RuleCounters;
pub use self::redis::RedisBackend;
pub use self::respond::is_grpc;

use self::algorithm::Verdict;
use self::memory::MemoryStore;
use self::redis::RedisStore;
use crate::mesh::policy::ratelimit::{
    self as spec, Algorithm, Compiled, ConfigError, FailureMode, RateLimitConfig, RuleSpec, Storage,
};

/// What the limiter needs to know about a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    /// The method.
    pub method: &'a http::Method,
    /// The path (query allowed; it is dropped).
    pub path: &'a str,
    /// The request headers (`X-Forwarded-For`, API keys).
    pub headers: &'a http::HeaderMap,
    /// The address of the connection's peer.
    pub peer_ip: IpAddr,
    /// Claims of the verified JWT, if any.
    pub claims: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// The route name, if the router named one.
    pub route: Option<&'a str>,
}

impl<'a> RequestFacts<'a> {
    /// The facts of `req`, received on a connection from `peer_ip`, without
    /// claims or route (set those fields when known:
    /// `RequestFacts { claims: Some(&claims), ..RequestFacts::of(&req, ip) }`).
    pub fn of<B>(req: &'a http::Request<B>, peer_ip: IpAddr) -> Self {
        RequestFacts {
            method: req.method(),
            path: req.uri().path(),
            headers: req.headers(),
            peer_ip,
            claims: None,
            route: None,
        }
    }
}

/// A rule's quota as reported in `RateLimit-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// `RateLimit-Limit`: the limit or burst.
    pub limit: u64,
    /// `RateLimit-Remaining`.
    pub remaining: u64,
    /// `RateLimit-Reset`: until the quota is full again.
    pub reset: Duration,
}

/// The limiter's answer for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go on. The quota of the tightest matching rule, or `None` when no rule
    /// matched or only fail-open rules with their store down did.
    Allowed(Option<Quota>),
    /// Over the limit: 429 / `RESOURCE_EXHAUSTED`.
    Limited {
        /// The rule that limited.
        rule: Arc<str>,
        /// Its quota (remaining 0).
        quota: Quota,
        /// Until one request would be admitted.
        retry_after: Duration,
    },
    /// A fail-closed rule's store is failing: 503 / `UNAVAILABLE`.
    StoreUnavailable {
        /// The rule.
        rule: Arc<str>,
    },
}

impl Decision {
    /// True for [`Decision::Allowed`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed(_))
    }
}

/// Errors building a [`RateLimiter`].
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A rule needs Redis and none was given.
    #[error("{0}: storage = \"redis\" but no Redis is configured for rate limiting")]
    NoRedis(String),
}

#[derive(Debug)]
enum RuleStore {
    Memory(Arc<MemoryStore>),
    Redis(Arc<RedisStore>),
}

#[derive(Debug)]
struct Rule {
    spec: RuleSpec,
    name: Arc<str>,
    algorithm_tag: &'static str,
    store: RuleStore,
    /// True while this rule answers with its failure mode.
    degraded: AtomicBool,
    counters: RuleCounters,
}

/// The rate limiter: see the module docs. Clones share state.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    rules: Vec<Rule>,
    hops: u32,
    metrics: RateLimitMetrics,
    redis: Option<Arc<RedisStore>>,
}

impl RateLimiter {
    /// Validates `config` and builds the limiter; `redis` is required when a
    /// rule uses `storage = "redis"`. Does no I/O. Checks of Redis rules must
    /// run inside a tokio runtime (a failure spawns the probe task).
    pub fn new(config: &RateLimitConfig, redis: Option<RedisBackend>) -> Result<RateLimiter, BuildError> {
        RateLimiter::from_compiled(config.compile()?, redis)
    }

    /// Builds the limiter from an already validated configuration.
    pub fn from_compiled(config: Compiled, redis: Option<RedisBackend>) -> Result<RateLimiter, BuildError> {
        let store = redis.map(|b| RedisStore::new(b, config.redis_timeout, config.probe_interval));
        RateLimiter::build(config, store, RateLimitMetrics::default(), None)
    }

    /// [`RateLimiter::new`] counting into `metrics` (registered once by the
    /// caller, shared by the limiters of later policy versions).
    pub fn with_metrics(
        config: &RateLimitConfig,
        redis: Option<RedisBackend>,
        metrics: RateLimitMetrics,
    ) -> Result<RateLimiter, BuildError> {
        let compiled = config.compile()?;
        let store = redis.map(|b| RedisStore::new(b, compiled.redis_timeout, compiled.probe_interval));
        RateLimiter::build(compiled, store, metrics, None)
    }

    /// The limiter for a new policy version, carrying over what this one
    /// knows: a memory rule with the same name and the same algorithm and
    /// parameters keeps its counters (a reload must not hand every client a
    /// fresh quota), the Redis connection and its up/down state are kept
    /// (Redis counters carry over anyway: same rule name, same keys), and
    /// the metrics continue. Swap it in atomically (e.g. `ArcSwap`); checks
    /// in flight on the old one finish there.
    pub fn reload(&self, config: &RateLimitConfig) -> Result<RateLimiter, BuildError> {
        let mut compiled = config.compile()?;
        // The Redis deadlines belong to the connection kept from before.
        if let Some(r) = &self.inner.redis {
            (compiled.redis_timeout, compiled.probe_interval) = (r.timeout(), r.probe_interval());
        }
        RateLimiter::build(compiled, self.inner.redis.clone(), self.inner.metrics.clone(), Some(&self.inner))
    }

    fn build(
        config: Compiled,
        redis: Option<Arc<RedisStore>>,
        metrics: RateLimitMetrics,
        previous: Option<&Inner>,
    ) -> Result<RateLimiter, BuildError> {
        let mut rules = Vec::with_capacity(config.rules.len());
        for spec in config.rules {
            let kept = previous.and_then(|p| p.rules.iter().find(|r| r.spec.name == spec.name));
            let store = match spec.storage {
                Storage::Memory => match kept.map(|k| (&k.store, k.spec.algorithm)) {
                    Some((RuleStore::Memory(m), algorithm)) if algorithm == spec.algorithm => {
                        RuleStore::Memory(m.clone())
                    }
                    _ => RuleStore::Memory(Arc::new(MemoryStore::new(config.max_keys))),
                },
                Storage::Redis => {
                    RuleStore::Redis(redis.clone().ok_or_else(|| BuildError::NoRedis(spec.name.clone()))?)
                }
            };
            let algorithm_tag = match spec.algorithm {
                Algorithm::FixedWindow { .. } => "fixed_window",
                Algorithm::SlidingWindow { .. } => "sliding_window",
                Algorithm::TokenBucket { .. } => "token_bucket",
                Algorithm::Gcra { .. } => "gcra",
            };
            let degraded = kept.is_some_and(|k| k.degraded.load(Ordering::Acquire));
            rules.push(Rule {
                name: Arc::from(spec.name.as_str()),
                counters: metrics.rule(&spec.name),
                spec,
                algorithm_tag,
                store,
                degraded: AtomicBool::new(degraded),
            });
        }
        let inner = Inner { rules, hops: config.trusted_proxy_hops, metrics, redis };
        Ok(RateLimiter { inner: Arc::new(inner) })
    }

    /// Parses and validates TOML, then builds (a convenience for tests and
    /// tools).
    pub fn from_toml(text: &str, redis: Option<RedisBackend>) -> Result<RateLimiter, BuildError> {
        let (_, compiled) = RateLimitConfig::from_toml(text)?;
        RateLimiter::from_compiled(compiled, redis)
    }

    /// The limiter's metrics.
    pub fn metrics(&self) -> &RateLimitMetrics {
        &self.inner.metrics
    }

    /// Decides one request. See the module docs.
    pub async fn check(&self, facts: &RequestFacts<'_>) -> Decision {
        let inner = &*self.inner;
        let path = spec::normalise(facts.path);
        let mut tightest: Option<Quota> = None;
        for rule in &inner.rules {
            if !rule.matches(facts, &path) {
                continue;
            }
            let key = key::derive(&rule.name, rule.algorithm_tag, &rule.spec.key, facts, inner.hops, &rule.spec.path);
            let verdict = match &rule.store {
                RuleStore::Memory(m) => Some(m.check(&rule.spec.algorithm, &key)),
                RuleStore::Redis(r) => self.check_redis(rule, r, &key).await,
            };
            match verdict {
                Some(v) if v.allowed => {
                    rule.counters.allowed.inc();
                    let q = quota(&v);
                    if tightest.is_none_or(|t| q.remaining < t.remaining) {
                        tightest = Some(q);
                    }
                }
                Some(v) => {
                    rule.counters.limited.inc();
                    return Decision::Limited { rule: rule.name.clone(), quota: quota(&v), retry_after: v.retry_after };
                }
                None => match rule.spec.failure_mode {
                    FailureMode::Open => {
                        rule.counters.open.inc();
                        rule.counters.allowed.inc();
                    }
                    FailureMode::Closed => {
                        rule.counters.closed.inc();
                        return Decision::StoreUnavailable { rule: rule.name.clone() };
                    }
                },
            }
        }
        Decision::Allowed(tightest)
    }

    /// A Redis verdict, or `None` when the rule must use its failure mode.
    async fn check_redis(&self, rule: &Rule, store: &Arc<RedisStore>, key: &key::Key) -> Option<Verdict> {
        if !store.is_up() {
            Self::set_degraded(rule, true);
            return None;
        }
        match store.check(&rule.spec.algorithm, key).await {
            Ok(v) => {
                Self::set_degraded(rule, false);
                Some(v)
            }
            Err(e) => {
                tracing::debug!(rule = %rule.name, error = %e, "rate-limit store call failed");
                rule.counters.store_errors.inc();
                Self::set_degraded(rule, true);
                None
            }
        }
    }

    fn set_degraded(rule: &Rule, degraded: bool) {
        if rule.degraded.swap(degraded, Ordering::AcqRel) != degraded {
            if degraded { &rule.counters.to_fallback } else { &rule.counters.to_store }.inc();
        }
    }
}

impl Rule {
    fn matches(&self, facts: &RequestFacts<'_>, path: &str) -> bool {
        let spec = &self.spec;
        spec::path_matches(&spec.path, path)
            && (spec.methods.is_empty() || spec.methods.contains(facts.method))
            && spec.route.as_deref().is_none_or(|r| facts.route == Some(r))
    }
}

fn quota(v: &Verdict) -> Quota {
    Quota { limit: v.limit, remaining: v.remaining, reset: v.reset }
}

#[cfg(test)]
mod tests;
