//! The rate-limit rule format of the policy language: TOML in, validated
//! rules ([`RuleSpec`]: path, methods, key, [`Algorithm`] with its
//! parameters) out. Control validates a policy's `[[rate_limits]]` with
//! [`from_policy_tables`]; the sidecar's limiter (`crate::sidecar::ratelimit`)
//! runs the algorithms on the compiled rules.
//!
//! The seed's `add_path_limit("/api/v1/trading", limit=50, window=60)` is one
//! line:
//!
//! ```toml
//! rules = [{ path = "/api/v1/trading", limit = 50, window = "60s" }]
//! ```
//!
//! which limits every client IP to 50 requests in any 60 s (sliding window).
//! Every field of a rule:
//!
//! ```toml
//! trusted_proxy_hops = 1        # X-Forwarded-For entries added by trusted proxies (0: use the peer address)
//! redis_timeout = "25ms"        # per Redis call; a slower answer switches rules to their failure mode
//! probe_interval = "100ms"      # while Redis is failing, how often it is probed
//! max_keys = 100000             # per memory-stored rule: key states kept in memory
//!
//! [[rules]]
//! name = "trading-writes"       # metric label and Redis key part; default: the path (+ methods)
//! path = "/api/v1/trading"      # prefix, whole segments; default "/"
//! methods = ["POST", "PUT"]     # default: all
//! route = "trading"             # only requests the router named so; default: any
//! key = ["ip", "claim:sub"]     # ip | route | global | claim:<name> | header:<name>, or a list; default "ip"
//! algorithm = "gcra"            # token_bucket | gcra (rate, per, burst) or fixed_window | sliding_window (limit, window)
//! rate = 10                     # requests per `per`
//! per = "1s"                    # default 1s
//! burst = 20                    # default: rate
//! storage = "redis"             # memory (default) | redis: one limit shared by every proxy
//! failure_mode = "closed"       # when Redis fails: open (admit, default) | closed (503)
//! ```
//!
//! Without `algorithm`, `limit` + `window` mean `sliding_window` and `rate`
//! means `token_bucket`.

use std::collections::HashSet;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

/// The configuration a policy's `[[rate_limits]]` tables stand for: each
/// table is one rule. Errors name the field as `rate_limits[i].<field>`.
pub fn from_policy_tables(tables: &[toml::Table]) -> Result<RateLimitConfig, String> {
    let rules: Vec<toml::Value> = tables.iter().cloned().map(toml::Value::Table).collect();
    let mut doc = toml::Table::new();
    doc.insert("rules".into(), toml::Value::Array(rules));
    let text = toml::to_string(&doc).map_err(|e| format!("rate_limits: {e}"))?;
    RateLimitConfig::from_toml(&text)
        .map(|(c, _)| c)
        .map_err(|e| format!("{}: {}", e.field.replacen("rules", "rate_limits", 1), e.message))
}

/// The whole rate-limit configuration. See the module docs for the format.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Trusted proxies in front of this one that append to `X-Forwarded-For`.
    #[serde(default)]
    pub trusted_proxy_hops: u32,
    /// Longest wait for one Redis call (default 25 ms).
    pub redis_timeout: Option<String>,
    /// Probe period while Redis is failing (default 100 ms).
    pub probe_interval: Option<String>,
    /// Key states kept per memory-stored rule (default 100,000).
    pub max_keys: Option<usize>,
    /// The rules; every rule that matches a request is applied.
    #[serde(default, alias = "rule")]
    pub rules: Vec<RuleConfig>,
}

/// One rule as written. See the module docs.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Name for metrics and Redis keys.
    pub name: Option<String>,
    /// Path prefix (whole segments).
    pub path: Option<String>,
    /// HTTP methods; empty means all.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Route name the request must carry.
    pub route: Option<String>,
    /// What the limit is counted per.
    pub key: Option<KeySpec>,
    /// `token_bucket`, `fixed_window`, `sliding_window` or `gcra`.
    pub algorithm: Option<String>,
    /// Requests per window (window algorithms).
    pub limit: Option<u64>,
    /// Window length (window algorithms).
    pub window: Option<String>,
    /// Requests per `per` (token bucket, GCRA).
    pub rate: Option<u64>,
    /// Period of `rate` (default 1s).
    pub per: Option<String>,
    /// Burst (default: `rate`).
    pub burst: Option<u64>,
    /// `memory` or `redis`.
    pub storage: Option<String>,
    /// `open` or `closed`.
    pub failure_mode: Option<String>,
}

/// `key = "ip"` or `key = ["ip", "claim:sub"]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum KeySpec {
    /// One part.
    One(String),
    /// A combination.
    Many(Vec<String>),
}

/// Where a rule's counters live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// In this process.
    Memory,
    /// In Redis, shared by every proxy using the same prefix.
    Redis,
}

/// What a Redis-stored rule does while Redis is failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureMode {
    /// Admit (without counting).
    Open,
    /// Reject with 503 (`UNAVAILABLE`), never 429.
    Closed,
}

/// A validated rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    /// Unique name.
    pub name: String,
    /// Normalised path prefix.
    pub path: String,
    /// Upper-case methods; empty means all.
    pub methods: Vec<http::Method>,
    /// Route name filter.
    pub route: Option<String>,
    /// Key parts.
    pub key: Vec<KeyPart>,
    /// The algorithm with its parameters.
    pub algorithm: Algorithm,
    /// Storage.
    pub storage: Storage,
    /// Failure mode.
    pub failure_mode: FailureMode,
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    /// See [`RateLimitConfig::trusted_proxy_hops`].
    pub trusted_proxy_hops: u32,
    /// See [`RateLimitConfig::redis_timeout`].
    pub redis_timeout: Duration,
    /// See [`RateLimitConfig::probe_interval`].
    pub probe_interval: Duration,
    /// See [`RateLimitConfig::max_keys`].
    pub max_keys: usize,
    /// The rules, in order.
    pub rules: Vec<RuleSpec>,
}

/// A configuration error naming the field, such as `rules[0].window: ...`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The field, e.g. `rules[2].burst`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Largest limit, burst or rate. With durations ≤ 1 day this keeps the Redis
/// scripts' arithmetic (Lua doubles, microseconds) exact below 2^53.
pub const MAX_COUNT: u64 = 100_000;
/// Largest sliding-window limit: its state is one timestamp per admitted
/// request (8 bytes each in memory); use `gcra` for larger limits.
pub const MAX_SLIDING_LIMIT: u64 = 10_000;
const MAX_PERIOD: Duration = Duration::from_secs(86_400);
const MIN_PERIOD: Duration = Duration::from_millis(1);

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { field: field.into(), message: message.into() }
}

impl RateLimitConfig {
    /// Parses TOML and validates it.
    pub fn from_toml(text: &str) -> Result<(RateLimitConfig, Compiled), ConfigError> {
        let config: RateLimitConfig =
            toml::from_str(text).map_err(|e| err("ratelimit", e.to_string().trim_end().replace('\n', " ")))?;
        let compiled = config.compile()?;
        Ok((config, compiled))
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.compile().map(|_| ())
    }

    /// Validates and resolves defaults.
    pub fn compile(&self) -> Result<Compiled, ConfigError> {
        let redis_timeout = duration(self.redis_timeout.as_deref(), "redis_timeout", Duration::from_millis(25))?;
        let probe_interval = duration(self.probe_interval.as_deref(), "probe_interval", Duration::from_millis(100))?;
        if redis_timeout.is_zero() || probe_interval.is_zero() {
            let field = if redis_timeout.is_zero() { "redis_timeout" } else { "probe_interval" };
            return Err(err(field, "must be more than zero"));
        }
        let max_keys = self.max_keys.unwrap_or(100_000);
        if max_keys == 0 {
            return Err(err("max_keys", "must be at least 1"));
        }
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.iter().enumerate() {
            let spec = rule.compile(&format!("rules[{i}]"))?;
            if !names.insert(spec.name.clone()) {
                return Err(err(
                    format!("rules[{i}].name"),
                    format!("{:?} is used by an earlier rule; give each rule a distinct name", spec.name),
                ));
            }
            rules.push(spec);
        }
        Ok(Compiled { trusted_proxy_hops: self.trusted_proxy_hops, redis_timeout, probe_interval, max_keys, rules })
    }
}

impl RuleConfig {
    fn compile(&self, at: &str) -> Result<RuleSpec, ConfigError> {
        let f = |field: &str| format!("{at}.{field}");
        let path = self.path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/') {
            return Err(err(f("path"), format!("{path:?} must start with '/'")));
        }
        let path = normalise(&path);
        let mut methods = Vec::new();
        for m in &self.methods {
            let upper = m.to_ascii_uppercase();
            let method = http::Method::from_bytes(upper.as_bytes())
                .map_err(|_| err(f("methods"), format!("{m:?} is not an HTTP method")))?;
            methods.push(method);
        }
        let key_strings = match &self.key {
            None => vec!["ip".to_string()],
            Some(KeySpec::One(k)) => vec![k.clone()],
            Some(KeySpec::Many(ks)) if ks.is_empty() => return Err(err(f("key"), "empty list; use \"global\"")),
            Some(KeySpec::Many(ks)) => ks.clone(),
        };
        let key = key_strings
            .iter()
            .map(|k| KeyPart::parse(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| err(f("key"), m))?;
        let algorithm = self.algorithm(at)?;
        let storage = match self.storage.as_deref() {
            None | Some("memory") => Storage::Memory,
            Some("redis") => Storage::Redis,
            Some(other) => return Err(err(f("storage"), format!("{other:?}: use memory or redis"))),
        };
        let failure_mode = match self.failure_mode.as_deref() {
            None | Some("open") => FailureMode::Open,
            Some("closed") => FailureMode::Closed,
            Some(other) => return Err(err(f("failure_mode"), format!("{other:?}: use open or closed"))),
        };
        let name = match &self.name {
            Some(n) if n.trim().is_empty() => return Err(err(f("name"), "must not be empty")),
            Some(n) => n.clone(),
            None if methods.is_empty() => path.clone(),
            None => format!("{} {}", methods.iter().map(http::Method::as_str).collect::<Vec<_>>().join(","), path),
        };
        Ok(RuleSpec { name, path, methods, route: self.route.clone(), key, algorithm, storage, failure_mode })
    }

    fn algorithm(&self, at: &str) -> Result<Algorithm, ConfigError> {
        let f = |field: &str| format!("{at}.{field}");
        let name = match self.algorithm.as_deref() {
            Some(a) => a,
            None if self.rate.is_some() => "token_bucket",
            None if self.limit.is_some() || self.window.is_some() => "sliding_window",
            None => return Err(err(at, "needs limit + window, or rate (+ burst, per)")),
        };
        let count = |field: &str, v: Option<u64>, max: u64| -> Result<u64, ConfigError> {
            match v {
                None => Err(err(f(field), format!("required by {name}"))),
                Some(n) if n == 0 || n > max => Err(err(f(field), format!("{n} is outside 1..={max}"))),
                Some(n) => Ok(n),
            }
        };
        let period = |field: &str, v: Option<&str>, default: Option<Duration>| -> Result<u64, ConfigError> {
            let d = match (v, default) {
                (None, None) => return Err(err(f(field), format!("required by {name}"))),
                (v, default) => duration(v, &f(field), default.unwrap_or_default())?,
            };
            if !(MIN_PERIOD..=MAX_PERIOD).contains(&d) {
                return Err(err(f(field), format!("{d:?} is outside 1ms..=24h")));
            }
            Ok(d.as_nanos() as u64)
        };
        let forbid = |field: &str, set: bool| -> Result<(), ConfigError> {
            if set { Err(err(f(field), format!("not used by {name}"))) } else { Ok(()) }
        };
        match name {
            "fixed_window" | "sliding_window" => {
                forbid("rate", self.rate.is_some())?;
                forbid("burst", self.burst.is_some())?;
                forbid("per", self.per.is_some())?;
                let max = if name == "sliding_window" { MAX_SLIDING_LIMIT } else { MAX_COUNT };
                let limit = count("limit", self.limit, max)?;
                let window = period("window", self.window.as_deref(), None)?;
                Ok(if name == "fixed_window" {
                    Algorithm::FixedWindow { limit, window }
                } else {
                    Algorithm::SlidingWindow { limit, window }
                })
            }
            "token_bucket" | "gcra" => {
                forbid("limit", self.limit.is_some())?;
                forbid("window", self.window.is_some())?;
                let rate = count("rate", self.rate, MAX_COUNT)?;
                let burst = count("burst", self.burst.or(Some(rate)), MAX_COUNT)?;
                let per = period("per", self.per.as_deref(), Some(Duration::from_secs(1)))?;
                // Redis counts in microseconds: at most one request per µs.
                if per / 1_000 < rate {
                    return Err(err(f("rate"), "more than one request per microsecond"));
                }
                Ok(if name == "gcra" {
                    Algorithm::Gcra { rate, per, burst }
                } else {
                    Algorithm::TokenBucket { rate, per, burst }
                })
            }
            other => {
                Err(err(f("algorithm"), format!("{other:?}: use token_bucket, fixed_window, sliding_window or gcra")))
            }
        }
    }
}

fn duration(v: Option<&str>, field: &str, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s)
            .map_err(|e| err(field, format!("{s:?} is not a duration like 500ms or 60s ({e})"))),
    }
}

/// Nanoseconds since a store's epoch.
pub type Nanos = u64;

/// An algorithm with its parameters (validated: every number ≥ 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// At most `limit` requests per aligned window `[k·window, (k+1)·window)`.
    /// Cheapest; allows up to 2 × limit across a window boundary.
    FixedWindow {
        /// Requests per window.
        limit: u64,
        /// Window length.
        window: Nanos,
    },
    /// At most `limit` requests in any interval of length `window` (an exact
    /// sliding log: one timestamp per admitted request, so state grows with
    /// `limit`).
    SlidingWindow {
        /// Requests per window.
        limit: u64,
        /// Window length.
        window: Nanos,
    },
    /// A bucket of `burst` tokens refilled at `rate` per `per`; a request
    /// takes one token. Any interval of length d admits at most
    /// `burst + d·rate/per` requests.
    TokenBucket {
        /// Tokens added per `per`.
        rate: u64,
        /// The refill period.
        per: Nanos,
        /// Bucket size (and the initial fill).
        burst: u64,
    },
    /// The generic cell rate algorithm: one timestamp (the theoretical
    /// arrival time) per key; same bound as the token bucket with O(1) state
    /// and integer arithmetic. The emission interval is `per / rate` rounded
    /// up, so the rate is never exceeded.
    Gcra {
        /// Requests per `per`.
        rate: u64,
        /// The period.
        per: Nanos,
        /// Requests that may arrive at once.
        burst: u64,
    },
}

/// One component of a rule's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPart {
    /// The client IP: the peer address, or the entry of `X-Forwarded-For`
    /// added by the outermost trusted proxy (the sidecar's
    /// `ratelimit::key::client_ip`).
    ClientIp,
    /// A top-level JWT claim (strings as they are, other JSON as JSON text).
    Claim(String),
    /// A request header such as an API key.
    Header(HeaderName),
    /// The route name (the rule's path prefix when the request has none).
    Route,
    /// Nothing: one limit shared by every request the rule matches.
    Global,
}

impl KeyPart {
    /// Parses `ip`, `route`, `global`, `claim:<name>` or `header:<name>`.
    pub fn parse(s: &str) -> Result<KeyPart, String> {
        match s {
            "ip" => Ok(KeyPart::ClientIp),
            "route" => Ok(KeyPart::Route),
            "global" => Ok(KeyPart::Global),
            _ => {
                if let Some(claim) = s.strip_prefix("claim:").filter(|c| !c.is_empty()) {
                    Ok(KeyPart::Claim(claim.to_string()))
                } else if let Some(h) = s.strip_prefix("header:") {
                    HeaderName::from_bytes(h.as_bytes())
                        .map(KeyPart::Header)
                        .map_err(|_| format!("{h:?} is not a valid header name"))
                } else {
                    Err(format!("{s:?} is not a key: use ip, route, global, claim:<name> or header:<name>"))
                }
            }
        }
    }
}

/// The path rules are matched against: the query dropped, `//` collapsed,
/// `.` and `..` segments resolved, and percent-encoded unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`, RFC 3986 §6.2.2.2) decoded, so `/api/%761//./x`
/// is limited as `/api/v1/x`. Other escapes (such as `%2F`) stay encoded.
pub fn normalise(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut segments: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let seg = decode_unreserved(raw);
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(seg),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (path.ends_with('/') && !segments.is_empty()) {
        out.push('/');
    }
    out
}

fn decode_unreserved(seg: &str) -> String {
    if !seg.contains('%') {
        return seg.to_string();
    }
    let b = seg.as_bytes();
    let mut out = String::with_capacity(seg.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(c) = hex.filter(|c| c.is_ascii_alphanumeric() || b"-._~".contains(c)) {
                out.push(char::from(c));
                i += 3;
                continue;
            }
        }
        // Not a decodable unreserved escape: keep the byte (the input is a
        // &str, so copying char by char keeps it valid UTF-8).
        let ch = seg[i..].chars().next().unwrap_or('%');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Segment-aware prefix match: `/api/v1` matches `/api/v1` and `/api/v1/x`,
/// not `/api/v10`.
pub fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" || path == prefix {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_path_limit_is_one_line() {
        let (_, c) =
            RateLimitConfig::from_toml(r#"rules = [{ path = "/api/v1/trading", limit = 50, window = "60s" }]"#)
                .unwrap();
        let r = &c.rules[0];
        assert_eq!(r.name, "/api/v1/trading");
        assert_eq!(r.algorithm, Algorithm::SlidingWindow { limit: 50, window: 60_000_000_000 });
        assert_eq!(r.key, vec![KeyPart::ClientIp]);
        assert_eq!((r.storage, r.failure_mode), (Storage::Memory, FailureMode::Open));
        assert_eq!(c.redis_timeout, Duration::from_millis(25));
    }

    #[test]
    fn the_documented_full_rule_parses() {
        let text = r#"
            trusted_proxy_hops = 1
            [[rules]]
            name = "trading-writes"
            path = "/api/v1/trading"
            methods = ["post", "PUT"]
            route = "trading"
            key = ["ip", "claim:sub"]
            algorithm = "gcra"
            rate = 10
            per = "1s"
            burst = 20
            storage = "redis"
            failure_mode = "closed"
        "#;
        let (_, c) = RateLimitConfig::from_toml(text).unwrap();
        let r = &c.rules[0];
        assert_eq!(r.methods, vec![http::Method::POST, http::Method::PUT]);
        assert_eq!(r.key, vec![KeyPart::ClientIp, KeyPart::Claim("sub".into())]);
        assert_eq!(r.algorithm, Algorithm::Gcra { rate: 10, per: 1_000_000_000, burst: 20 });
        assert_eq!((r.storage, r.failure_mode), (Storage::Redis, FailureMode::Closed));
    }

    #[test]
    fn the_sample_in_deploy_is_valid() {
        let (_, c) = RateLimitConfig::from_toml(include_str!("../../deploy/ratelimit.toml")).unwrap();
        assert_eq!(c.rules.len(), 4);
        assert_eq!(c.trusted_proxy_hops, 1);
        assert_eq!(c.rules[2].algorithm, Algorithm::TokenBucket { rate: 600, per: 60_000_000_000, burst: 100 });
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"rules = [{ path = "/a", limit = 0, window = "1s" }]"#, "rules[0].limit"),
            (r#"rules = [{ path = "/a", limit = 5, window = "soon" }]"#, "rules[0].window"),
            (r#"rules = [{ path = "/a", limit = 5 }]"#, "rules[0].window"),
            (r#"rules = [{ path = "a", limit = 5, window = "1s" }]"#, "rules[0].path"),
            (r#"rules = [{ rate = 5, window = "1s" }]"#, "rules[0].window"),
            (r#"rules = [{ rate = 5, algorithm = "leaky" }]"#, "rules[0].algorithm"),
            (r#"rules = [{ rate = 5, key = "cookie:x" }]"#, "rules[0].key"),
            (r#"rules = [{ rate = 5, storage = "disk" }]"#, "rules[0].storage"),
            (r#"rules = [{ rate = 5, failure_mode = "maybe" }]"#, "rules[0].failure_mode"),
            (r#"rules = [{ rate = 5, methods = ["GE T"] }]"#, "rules[0].methods"),
            (r#"rules = [{ rate = 5 }, { rate = 6 }]"#, "rules[1].name"),
            (r#"rules = [{ limit = 20000, window = "1s" }]"#, "rules[0].limit"),
            (r#"rules = [{ rate = 5, per = "48h" }]"#, "rules[0].per"),
            (r#"redis_timeout = "0s""#, "redis_timeout"),
            (r#"rules = [{ rate = 5, colour = "red" }]"#, "ratelimit"),
        ];
        for (text, field) in cases {
            let e = RateLimitConfig::from_toml(text).expect_err(text);
            assert_eq!(e.field, field, "{text}: {e}");
        }
    }

    #[test]
    fn normalise_resolves_what_could_dodge_a_prefix() {
        assert_eq!(normalise("/api/v1/trading"), "/api/v1/trading");
        assert_eq!(normalise("//api/./v1/x/../trading?x=1"), "/api/v1/trading");
        assert_eq!(normalise("/api/%76%31/trading/"), "/api/v1/trading/");
        assert_eq!(normalise("/a%2Fb"), "/a%2Fb");
        assert_eq!(normalise("/%"), "/%");
        assert_eq!(normalise("/%4"), "/%4");
        assert_eq!(normalise("/é%zz"), "/é%zz");
        assert_eq!(normalise(""), "/");
        assert_eq!(normalise("/../.."), "/");
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(path_matches("/api/v1", "/api/v1"));
        assert!(path_matches("/api/v1", "/api/v1/orders"));
        assert!(!path_matches("/api/v1", "/api/v10"));
        assert!(path_matches("/api/", "/api/x"));
        assert!(path_matches("/", "/anything"));
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_config(512))]

        /// Paths come from peers: any input gives a clean path (no `//`,
        /// no dot segments), never a panic.
        #[test]
        fn any_path_normalises(path in "[/.%a-zA-Z0-9é?#]{0,40}") {
            let p = normalise(&path);
            proptest::prop_assert!(p.starts_with('/'));
            proptest::prop_assert!(!p.contains("//"));
            proptest::prop_assert!(p.split('/').all(|s| s != "." && s != ".."));
        }
    }
}
