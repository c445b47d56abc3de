//! Property tests of each algorithm, run through the memory store on paused
//! tokio time; the store's concurrency and memory bound; the limiter's rule
//! matching, keys and responses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::algorithm::State;
use super::key::Key;
use super::memory::MemoryStore;
use super::*;
use crate::mesh::policy::ratelimit::{Algorithm, Nanos};

const MS: u64 = 1_000_000;

fn algorithms() -> impl Strategy<Value = Algorithm> {
    let window = 1..50u64;
    prop_oneof![
        (1..6u64, window.clone()).prop_map(|(limit, w)| Algorithm::FixedWindow { limit, window: w * MS }),
        (1..6u64, window.clone()).prop_map(|(limit, w)| Algorithm::SlidingWindow { limit, window: w * MS }),
        (1..6u64, window.clone(), 1..6u64).prop_map(|(rate, p, burst)| Algorithm::TokenBucket {
            rate,
            per: p * MS,
            burst
        }),
        (1..6u64, window, 1..6u64).prop_map(|(rate, p, burst)| Algorithm::Gcra { rate, per: p * MS, burst }),
    ]
}

fn period(a: &Algorithm) -> Nanos {
    match *a {
        Algorithm::FixedWindow { window, .. } | Algorithm::SlidingWindow { window, .. } => window,
        Algorithm::TokenBucket { per, .. } | Algorithm::Gcra { per, .. } => per,
    }
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap()
}

/// Admission times must respect the algorithm's bound.
fn assert_bound(a: &Algorithm, admitted: &[Nanos]) {
    match *a {
        Algorithm::FixedWindow { limit, window } => {
            let mut per_window = HashMap::new();
            for t in admitted {
                *per_window.entry(t / window).or_insert(0u64) += 1;
            }
            assert!(per_window.values().all(|&n| n <= limit), "{a:?}: a window admitted more than {limit}");
        }
        Algorithm::SlidingWindow { limit, window } => {
            for (i, &t) in admitted.iter().enumerate() {
                let inside = admitted[i..].iter().take_while(|&&u| u < t + window).count() as u64;
                assert!(inside <= limit, "{a:?}: {inside} admitted in [{t}, {t}+window)");
            }
        }
        Algorithm::TokenBucket { rate, per, burst } | Algorithm::Gcra { rate, per, burst } => {
            for i in 0..admitted.len() {
                for j in i..admitted.len() {
                    let n = (j - i + 1) as u128;
                    let allowance =
                        u128::from(burst) + u128::from(admitted[j] - admitted[i]) * u128::from(rate) / u128::from(per);
                    assert!(n <= allowance, "{a:?}: {n} admitted in {} ns", admitted[j] - admitted[i]);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(crate::proptest_config(256))]

    /// For each algorithm, on paused time through the memory store:
    /// - admissions never exceed the algorithm's bound;
    /// - `retry_after` is exact: a request then is admitted, 1 ns earlier not;
    /// - after `reset` the key is back to a fresh state;
    /// - a sliding or fixed window denies only when its limit is really used.
    #[test]
    fn algorithms_keep_their_bounds_and_their_promises(
        a in algorithms(),
        gaps in proptest::collection::vec(0..100u64, 1..80),
    ) {
        let p = period(&a);
        paused_runtime().block_on(async move {
            let store = MemoryStore::new(16);
            let key = Key([7; 16]);
            let mut model = a.fresh(store.now());
            let mut admitted = Vec::new();
            for g in gaps {
                // Gaps from 0 to 2 periods, at nanosecond resolution.
                tokio::time::advance(Duration::from_nanos(g * p / 50 + g % 7)).await;
                let now = store.now();
                let v = store.check(&a, &key);
                let before = model.clone();
                assert_eq!(a.check(&mut model, now), v, "the store runs the algorithm");
                if v.allowed {
                    admitted.push(now);
                    assert_eq!(v.retry_after, Duration::ZERO);
                } else {
                    let r = v.retry_after.as_nanos() as u64;
                    assert!(r > 0);
                    assert!(a.check(&mut before.clone(), now + r).allowed, "{a:?}: admitted at retry_after");
                    assert!(!a.check(&mut before.clone(), now + r - 1).allowed, "{a:?}: retry_after is not early");
                    let used = match (&a, &before) {
                        (Algorithm::FixedWindow { window, .. }, _) => {
                            Some(admitted.iter().filter(|&&t| t / window == now / window).count())
                        }
                        (Algorithm::SlidingWindow { window, .. }, _) => {
                            Some(admitted.iter().filter(|&&t| t + window > now).count())
                        }
                        _ => None,
                    };
                    if let Some(used) = used {
                        assert_eq!(used as u64, a.quota(), "{a:?}: denied with the limit unused");
                    }
                }
                let after_reset = now + v.reset.as_nanos() as u64;
                assert!(a.idle(&model, after_reset), "{a:?}: not fresh at reset");
                assert!(v.remaining < a.quota(), "{a:?}: remaining counts this request");
            }
            assert_bound(&a, &admitted);
        });
    }
}

#[test]
fn algorithms_admit_a_full_quota_from_fresh() {
    for a in [
        Algorithm::FixedWindow { limit: 3, window: 10 * MS },
        Algorithm::SlidingWindow { limit: 3, window: 10 * MS },
        Algorithm::TokenBucket { rate: 1, per: 10 * MS, burst: 3 },
        Algorithm::Gcra { rate: 1, per: 10 * MS, burst: 3 },
    ] {
        let mut s: State = a.fresh(0);
        let remaining: Vec<u64> = (0..4).map(|_| a.check(&mut s, 1)).map(|v| v.remaining).collect();
        assert_eq!(remaining, vec![2, 1, 0, 0], "{a:?}");
        assert!(!a.check(&mut s, 1).allowed, "{a:?}");
    }
}

#[test]
fn memory_store_counts_exactly_under_contention() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_time().build().unwrap();
    rt.block_on(async {
        let store = Arc::new(MemoryStore::new(1000));
        let a = Algorithm::FixedWindow { limit: 500, window: 3600 * 1_000 * MS };
        let hot = Key([1; 16]);
        let tasks: Vec<_> = (0..8u8)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    let own = Key([t + 100; 16]);
                    let (mut hot_ok, mut own_ok) = (0, 0);
                    for i in 0..1000 {
                        hot_ok += u32::from(store.check(&a, &hot).allowed);
                        own_ok += u32::from(store.check(&a, &own).allowed);
                        if i % 64 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                    (hot_ok, own_ok)
                })
            })
            .collect();
        let mut hot_total = 0;
        for t in tasks {
            let (hot_ok, own_ok) = t.await.unwrap();
            hot_total += hot_ok;
            assert_eq!(own_ok, 500, "a key used by one task admits exactly its limit");
        }
        assert_eq!(hot_total, 500, "8 tasks on one key admit exactly the limit");
    });
}

#[tokio::test(start_paused = true)]
async fn memory_store_is_bounded_and_evicts_idle_keys_first() {
    // 4 states per shard; keys whose first byte is 0 share shard 0.
    let store = MemoryStore::new(64 * 4);
    let a = Algorithm::Gcra { rate: 1, per: 1_000 * MS, burst: 1 };
    let in_shard0 = |i: u8| Key([0, i, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    for i in 1..=3 {
        assert!(store.check(&a, &in_shard0(i)).allowed);
    }
    tokio::time::advance(Duration::from_millis(1500)).await; // those three are idle now
    let busy = in_shard0(0);
    assert!(store.check(&a, &busy).allowed);
    assert_eq!(store.len(), 4);
    for i in 10..13 {
        assert!(store.check(&a, &in_shard0(i)).allowed);
        assert!(store.len() <= 4);
    }
    assert!(!store.check(&a, &busy).allowed, "making room dropped idle keys, not the busy one");
    // A flood of distinct active keys stays within the bound.
    for i in 20..=255 {
        store.check(&a, &in_shard0(i));
        assert!(store.len() <= 4, "shard bound: {}", store.len());
    }
}

fn facts<'a>(method: &'a http::Method, path: &'a str, headers: &'a http::HeaderMap, ip: &str) -> RequestFacts<'a> {
    RequestFacts { method, path, headers, peer_ip: ip.parse::<IpAddr>().unwrap(), claims: None, route: None }
}

#[tokio::test]
async fn facts_of_a_request() {
    let req = http::Request::post("http://x/api/v1/trading?q=1").header("x-api-key", "k").body(()).unwrap();
    let f = RequestFacts::of(&req, IpAddr::from([1, 2, 3, 4]));
    assert_eq!(
        (f.method, f.path, f.headers["x-api-key"].to_str().unwrap()),
        (&http::Method::POST, "/api/v1/trading", "k")
    );
    let limiter = RateLimiter::from_toml(
        r#"rules = [{ path = "/api/v1/trading", key = "header:x-api-key", limit = 1, window = "1h" }]"#,
        None,
    )
    .unwrap();
    assert!(limiter.check(&f).await.is_allowed());
    assert!(!limiter.check(&f).await.is_allowed());
}

#[tokio::test]
async fn the_seed_limit_applies_per_client_ip_on_its_prefix_only() {
    let limiter =
        RateLimiter::from_toml(r#"rules = [{ path = "/api/v1/trading", limit = 2, window = "60s" }]"#, None).unwrap();
    let h = http::HeaderMap::new();
    let get = http::Method::GET;
    for _ in 0..2 {
        assert!(limiter.check(&facts(&get, "/api/v1/trading/orders", &h, "10.0.0.1")).await.is_allowed());
    }
    let d = limiter.check(&facts(&get, "/api/v1//trading/./orders?x=1", &h, "10.0.0.1")).await;
    let Decision::Limited { rule, quota, retry_after } = &d else { panic!("expected limited, got {d:?}") };
    assert_eq!((&**rule, quota.limit, quota.remaining), ("/api/v1/trading", 2, 0));
    assert!(*retry_after > Duration::from_secs(59));
    assert!(limiter.check(&facts(&get, "/api/v1/trading", &h, "10.0.0.2")).await.is_allowed(), "other client");
    assert_eq!(limiter.check(&facts(&get, "/api/v1/tradingx", &h, "10.0.0.1")).await, Decision::Allowed(None));
    assert_eq!(limiter.metrics().count("allowed", "/api/v1/trading"), 3);
    assert_eq!(limiter.metrics().count("limited", "/api/v1/trading"), 1);
    assert!(limiter.metrics().render().contains("redfire_sidecar_ratelimit_limited_total{rule=\"/api/v1/trading\"} 1"));
}

#[tokio::test]
async fn keys_by_header_claim_route_and_methods() {
    let text = r#"
        trusted_proxy_hops = 1
        [[rules]]
        name = "api-key"
        path = "/a"
        methods = ["POST"]
        key = "header:x-api-key"
        limit = 1
        window = "1h"
        [[rules]]
        name = "user-route"
        route = "orders"
        key = ["claim:sub", "route"]
        algorithm = "gcra"
        rate = 1
        per = "1h"
        burst = 1
        [[rules]]
        name = "ip"
        path = "/b"
        algorithm = "fixed_window"
        limit = 1
        window = "1h"
    "#;
    let limiter = RateLimiter::from_toml(text, None).unwrap();
    let (post, get) = (http::Method::POST, http::Method::GET);
    let mut k1 = http::HeaderMap::new();
    k1.insert("x-api-key", "k1".parse().unwrap());
    let mut k2 = http::HeaderMap::new();
    k2.insert("x-api-key", "k2".parse().unwrap());
    assert!(limiter.check(&facts(&post, "/a", &k1, "1.1.1.1")).await.is_allowed());
    assert!(!limiter.check(&facts(&post, "/a", &k1, "2.2.2.2")).await.is_allowed(), "same key, other IP");
    assert!(limiter.check(&facts(&post, "/a", &k2, "1.1.1.1")).await.is_allowed(), "other key");
    assert!(limiter.check(&facts(&get, "/a", &k1, "1.1.1.1")).await.is_allowed(), "method not limited");
    let none = http::HeaderMap::new();
    assert!(limiter.check(&facts(&post, "/a", &none, "1.1.1.1")).await.is_allowed());
    assert!(!limiter.check(&facts(&post, "/a", &none, "3.3.3.3")).await.is_allowed(), "keyless requests share one");

    let alice: serde_json::Map<String, serde_json::Value> = serde_json::from_str(r#"{"sub":"alice"}"#).unwrap();
    let bob: serde_json::Map<String, serde_json::Value> = serde_json::from_str(r#"{"sub":"bob"}"#).unwrap();
    let user = |claims, route| RequestFacts { claims: Some(claims), route, ..facts(&get, "/x", &none, "1.1.1.1") };
    assert!(limiter.check(&user(&alice, Some("orders"))).await.is_allowed());
    assert!(!limiter.check(&user(&alice, Some("orders"))).await.is_allowed());
    assert!(limiter.check(&user(&bob, Some("orders"))).await.is_allowed());
    assert!(limiter.check(&user(&alice, Some("quotes"))).await.is_allowed(), "rule is for route orders");

    let mut xff1 = http::HeaderMap::new();
    xff1.insert("x-forwarded-for", "9.9.9.9, 5.5.5.5".parse().unwrap());
    let mut xff2 = http::HeaderMap::new();
    xff2.insert("x-forwarded-for", "8.8.8.8, 5.5.5.5".parse().unwrap());
    assert!(limiter.check(&facts(&get, "/b", &xff1, "10.0.0.1")).await.is_allowed());
    assert!(
        !limiter.check(&facts(&get, "/b", &xff2, "10.0.0.1")).await.is_allowed(),
        "a client-written XFF entry is not a new identity"
    );
}

#[test]
fn a_redis_rule_needs_redis() {
    let e = RateLimiter::from_toml(r#"rules = [{ name = "r", rate = 5, storage = "redis" }]"#, None).unwrap_err();
    assert!(e.to_string().contains("storage = \"redis\""), "{e}");
}

#[test]
fn responses_carry_status_reason_and_headers() {
    let rule: Arc<str> = Arc::from("trading");
    let limited = Decision::Limited {
        rule: rule.clone(),
        quota: Quota { limit: 50, remaining: 0, reset: Duration::from_millis(59_100) },
        retry_after: Duration::from_millis(1_200),
    };
    let r = limited.respond(false).unwrap();
    assert_eq!(r.status(), http::StatusCode::TOO_MANY_REQUESTS);
    let h = r.headers();
    assert_eq!(h["retry-after"], "2");
    assert_eq!(h["ratelimit-limit"], "50");
    assert_eq!(h["ratelimit-remaining"], "0");
    assert_eq!(h["ratelimit-reset"], "60");
    assert!(h["x-redfire-reason"].to_str().unwrap().contains("trading"));

    let g = limited.respond(true).unwrap();
    assert_eq!(g.status(), http::StatusCode::OK);
    assert_eq!(g.headers()["grpc-status"], "8", "RESOURCE_EXHAUSTED");
    assert_eq!(g.headers()["content-type"], "application/grpc");
    assert_eq!(g.headers()["retry-after"], "2");

    let closed = Decision::StoreUnavailable { rule };
    let r = closed.respond(false).unwrap();
    assert_eq!(r.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().get("ratelimit-remaining").is_none());
    assert_eq!(closed.respond(true).unwrap().headers()["grpc-status"], "14", "UNAVAILABLE");

    let allowed = Decision::Allowed(Some(Quota { limit: 50, remaining: 7, reset: Duration::from_secs(3) }));
    assert!(allowed.respond(false).is_none());
    let mut h = http::HeaderMap::new();
    allowed.add_headers(&mut h);
    assert_eq!(
        (&h["ratelimit-remaining"], &h["ratelimit-reset"]),
        (&"7".parse::<http::HeaderValue>().unwrap(), &"3".parse::<http::HeaderValue>().unwrap())
    );
    let mut grpc = http::HeaderMap::new();
    grpc.insert("content-type", "application/grpc+proto".parse().unwrap());
    assert!(is_grpc(&grpc));
}

#[tokio::test]
async fn a_reload_keeps_the_counters_of_unchanged_rules() {
    let v1 = r#"rules = [
        { name = "a", path = "/a", limit = 1, window = "1h" },
        { name = "b", path = "/b", limit = 1, window = "1h" },
    ]"#;
    let old = RateLimiter::from_toml(v1, None).unwrap();
    let h = http::HeaderMap::new();
    let get = http::Method::GET;
    assert!(old.check(&facts(&get, "/a", &h, "1.1.1.1")).await.is_allowed());
    assert!(old.check(&facts(&get, "/b", &h, "1.1.1.1")).await.is_allowed());
    // "a" unchanged, "b" gets a new limit, "c" is new.
    let v2 = r#"rules = [
        { name = "a", path = "/a", limit = 1, window = "1h" },
        { name = "b", path = "/b", limit = 2, window = "1h" },
        { name = "c", path = "/c", limit = 1, window = "1h" },
    ]"#;
    let (config, _) = RateLimitConfig::from_toml(v2).unwrap();
    let new = old.reload(&config).unwrap();
    assert!(!new.check(&facts(&get, "/a", &h, "1.1.1.1")).await.is_allowed(), "a's quota was used before the reload");
    let b = new.check(&facts(&get, "/b", &h, "1.1.1.1")).await;
    assert!(matches!(b, Decision::Allowed(Some(q)) if q.remaining == 1), "b starts afresh with its new limit: {b:?}");
    assert!(new.check(&facts(&get, "/c", &h, "1.1.1.1")).await.is_allowed());
    assert_eq!(new.metrics().count("allowed", "a"), 1, "metrics continue across the reload");
    assert_eq!(new.metrics().count("limited", "a"), 1);
    let bad = RateLimitConfig { max_keys: Some(0), ..config };
    assert_eq!(old.reload(&bad).unwrap_err().to_string(), "max_keys: must be at least 1");
}
