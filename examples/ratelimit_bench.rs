//! Run with: cargo run --release --example ratelimit_bench
//!
//! (`-- memory` benches the in-process limiter only; Redis rows need
//! `redis://127.0.0.1:6379`, or the URL in `REDFIRE_BENCH_REDIS_URL`.)
//!
//! The cost of one `RateLimiter::check` on the request path, printed as one
//! table, with baselines from the same run:
//!
//! - **no limiter**: building the request facts and nothing else (the
//!   loop's own cost);
//! - **no matching rule**: a limiter whose one rule is for another path (the
//!   path normalisation and rule matching every request pays);
//! - **memory, 1 key / 100k keys**: each algorithm on one hot key, and on
//!   100,000 distinct client IPs (hashing, shard lookup, insertions);
//! - **memory, 2 tasks**: two tasks on two worker threads (this machine's 2
//!   cores), distinct keys — the sharded store should scale, not serialise;
//! - **redis, 1 in flight**: one check at a time (latency: a Lua script
//!   round trip over loopback);
//! - **redis, 64 in flight**: 64 concurrent checks on one limiter (one
//!   multiplexed connection: requests are pipelined), i.e. what a busy proxy
//!   does; throughput and per-check latency.
//!
//! Latency percentiles come from timing every check (nearest rank). Redis
//! keys live under a fresh `bench-<random>` prefix, deleted afterwards.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use redfire::sidecar::ratelimit::{RateLimiter, RedisBackend, RequestFacts};

const ALGORITHMS: [(&str, &str); 4] = [
    ("token_bucket", r#"algorithm = "token_bucket", rate = 100000, per = "1s", burst = 100000"#),
    ("gcra", r#"algorithm = "gcra", rate = 100000, per = "1s", burst = 100000"#),
    ("fixed_window", r#"algorithm = "fixed_window", limit = 100000, window = "1h""#),
    ("sliding_window", r#"algorithm = "sliding_window", limit = 10000, window = "1s""#),
];

struct Row {
    case: String,
    checks: usize,
    elapsed: Duration,
    lat: Vec<Duration>,
}

impl Row {
    fn print(&mut self) {
        self.lat.sort_unstable();
        let pct = |p: f64| -> String {
            if self.lat.is_empty() {
                return "-".into();
            }
            let i = ((p * self.lat.len() as f64).ceil() as usize).clamp(1, self.lat.len()) - 1;
            fmt(self.lat[i])
        };
        let per = self.elapsed / self.checks.max(1) as u32;
        let rate = self.checks as f64 / self.elapsed.as_secs_f64();
        println!(
            "| {:<42} | {:>9} | {:>10} | {:>12.0} | {:>9} | {:>9} |",
            self.case,
            self.checks,
            fmt(per),
            rate,
            pct(0.50),
            pct(0.99)
        );
    }
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 { format!("{ns} ns") } else { format!("{:.1} µs", ns as f64 / 1000.0) }
}

fn ip(i: u32) -> IpAddr {
    IpAddr::from((0x0a00_0000 + i).to_be_bytes())
}

/// `n` sequential checks over `keys` distinct client IPs (starting at
/// `first`); every check timed.
async fn sequential(case: &str, limiter: Option<&RateLimiter>, n: usize, keys: u32) -> Row {
    sequential_from(case, limiter, n, keys, 0).await
}

async fn sequential_from(case: &str, limiter: Option<&RateLimiter>, n: usize, keys: u32, first: u32) -> Row {
    let headers = http::HeaderMap::new();
    let mut lat = Vec::with_capacity(n);
    let mut allowed = 0usize;
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let facts = RequestFacts {
            method: &http::Method::GET,
            path: "/api/v1/trading/orders",
            headers: &headers,
            peer_ip: ip(first + i as u32 % keys),
            claims: None,
            route: None,
        };
        if let Some(l) = limiter {
            allowed += usize::from(l.check(&facts).await.is_allowed());
        } else {
            allowed += usize::from(std::hint::black_box(&facts).path.len() > 1);
        }
        lat.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    std::hint::black_box(allowed);
    Row { case: case.into(), checks: n, elapsed, lat }
}

/// `tasks` concurrent tasks of `per_task` checks each on one limiter.
async fn concurrent(case: &str, limiter: &RateLimiter, tasks: usize, per_task: usize) -> Row {
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let l = limiter.clone();
            tokio::spawn(async move {
                // Distinct keys per task.
                sequential_from("", Some(&l), per_task, 100_000, t as u32 * 100_000).await.lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.expect("bench task"));
    }
    Row { case: case.into(), checks: tasks * per_task, elapsed: start.elapsed(), lat }
}

fn limiter(rule: &str, storage: &str, redis: Option<RedisBackend>) -> RateLimiter {
    let toml = format!(
        r#"redis_timeout = "1s"
        rules = [{{ name = "bench", path = "/api/v1/trading", storage = "{storage}", {rule} }}]"#
    );
    RateLimiter::from_toml(&toml, redis).expect("bench config")
}

async fn delete_prefix(url: &str, prefix: &str) -> anyhow::Result<u64> {
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let mut cursor = 0u64;
    let mut deleted = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            deleted += redis::cmd("DEL").arg(&keys).query_async::<u64>(&mut conn).await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let only_memory = std::env::args().any(|a| a == "memory");
    let url = std::env::var("REDFIRE_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let n = 1_000_000;

    println!(
        "| {:<42} | {:>9} | {:>10} | {:>12} | {:>9} | {:>9} |",
        "case", "checks", "per check", "checks/s", "p50", "p99"
    );
    println!("|{:-<44}|{:->11}|{:->12}|{:->14}|{:->11}|{:->11}|", "", "", "", "", "", "");
    sequential("no limiter (baseline)", None, n, 100_000).await.print();
    let toml = r#"rules = [{ name = "other", path = "/other", limit = 5, window = "1s" }]"#;
    let unmatched = RateLimiter::from_toml(toml, None)?;
    sequential("no matching rule", Some(&unmatched), n, 100_000).await.print();
    for (name, rule) in ALGORITHMS {
        let l = limiter(rule, "memory", None);
        sequential(&format!("memory {name}, 1 key"), Some(&l), n, 1).await.print();
        let l = limiter(rule, "memory", None);
        sequential(&format!("memory {name}, 100k keys"), Some(&l), n, 100_000).await.print();
        let l = limiter(rule, "memory", None);
        concurrent(&format!("memory {name}, 100k keys, 2 tasks"), &l, 2, n / 2).await.print();
    }
    if only_memory {
        return Ok(());
    }

    let prefix = format!("bench-{:08x}", fastrand::u32(..));
    let backend = RedisBackend::open(&url, &prefix).map_err(anyhow::Error::msg)?;
    // Connect (and load the scripts) before timing.
    for (_, rule) in ALGORITHMS {
        let l = limiter(rule, "redis", Some(backend.clone()));
        sequential("", Some(&l), 1, 1).await;
        if l.metrics().count("store_errors", "bench") > 0 {
            anyhow::bail!("Redis at {url} does not answer");
        }
    }
    for (name, rule) in ALGORITHMS {
        let l = limiter(rule, "redis", Some(backend.clone()));
        sequential(&format!("redis {name}, 1 in flight"), Some(&l), 20_000, 100_000).await.print();
        let l = limiter(rule, "redis", Some(backend.clone()));
        concurrent(&format!("redis {name}, 64 in flight"), &l, 64, 2_000).await.print();
        let errors = l.metrics().count("store_errors", "bench");
        if errors > 0 {
            println!("  ({errors} store errors in the row above: those checks took the failure mode)");
        }
    }
    let deleted = delete_prefix(&url, &prefix).await?;
    println!("\n(deleted {deleted} Redis keys under {prefix}:)");
    Ok(())
}
