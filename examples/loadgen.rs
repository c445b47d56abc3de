//! HTTP/2 gRPC load generator for the mesh benchmark (`examples/bench/peers.sh` runs it).
//!
//! For every target (a port that takes h2c gRPC `POST /echo.Echo/Say` and forwards it to the
//! rig's echo backend) it measures, in one run and in the same order-shuffled rounds:
//!
//! - **closed loop**: `--requests` unary calls over `--conns` HTTP/2 connections with
//!   `--streams` calls in flight on each, as fast as the target answers: requests/s, and
//!   the CPU the target's processes used per request (utime+stime from `/proc`, so only the
//!   proxy is charged, not the load generator or the backend);
//! - **open loop**: `--rate` calls per second for `--secs` seconds on a fixed schedule. Each
//!   latency is measured from the call's *scheduled* start, not from when it was actually
//!   sent, so a target (or a load generator) that falls behind is charged for the queueing
//!   it caused (coordinated-omission correction). p50/p90/p99/p99.9 and the added p50 over
//!   the `direct` target;
//! - RSS of the target's processes before and after.
//!
//! Every call must come back HTTP 200 with `grpc-status: 0` and the request's bytes echoed,
//! and the backend's request counter (`GET /__count`) must grow by exactly the number of calls
//! sent, or the run is marked INVALID. Targets come from the rig's `targets.txt` and from
//! arguments in the same `name:port:pid[,pid...]` form.
//!
//! ```text
//! taskset -c 0 target/release/examples/loadgen --rig /tmp/redfire-peers/run \
//!     redfire_pair:18085:1234,1235
//! ```
//!
//! Runs on one thread (pin it to the load CPU); it is far cheaper per request than a proxy
//! pair, but on the one-hop `direct` target at full speed the generator itself can be the
//! limit: the table says so when the generator's own CPU was above 90 %.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

/// Linux reports utime/stime in USER_HZ ticks, which is 100 on every architecture Linux
/// supports for user space.
const TICKS_PER_SEC: f64 = 100.0;

#[derive(Parser, Debug)]
#[command(about = "HTTP/2 gRPC load generator: closed-loop rps, CPU per request, CO-corrected fixed-rate latency")]
struct Args {
    /// The peers rig's run directory (targets.txt, rig.env); empty = only the targets given.
    #[arg(long, default_value = "/tmp/redfire-peers/run")]
    rig: String,
    /// Extra targets, name:port:pid[,pid...] (pids are charged for CPU and RSS).
    targets: Vec<String>,
    /// Only these targets (comma-separated names); `direct` is always kept as the reference.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Closed loop: calls per round and target.
    #[arg(long, default_value_t = 50_000)]
    requests: u64,
    /// Closed loop: rounds (target order shuffled per round; medians reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// HTTP/2 connections per target.
    #[arg(long, default_value_t = 16)]
    conns: usize,
    /// Closed loop: calls in flight per connection.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Calls before each measured run (not counted).
    #[arg(long, default_value_t = 5_000)]
    warmup: u64,
    /// Open loop: calls per second (0 = skip).
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// Open loop: seconds per target.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Throughput reference column (besides direct).
    #[arg(long, default_value = "envoy_pair")]
    reference: String,
    /// Backend counter URL path host:port (default: BACKEND_PORT from rig.env).
    #[arg(long)]
    backend: Option<SocketAddr>,
}

#[derive(Clone, Debug)]
struct Target {
    name: String,
    addr: SocketAddr,
    pids: Vec<u32>,
}

#[derive(Default, Debug)]
struct Row {
    rps: Vec<f64>,
    cpu_us: Vec<f64>,
    gen_cpu: Vec<f64>,
    invalid: Vec<String>,
    rss_before_kb: Option<u64>,
    rss_after_kb: Option<u64>,
    lat: Option<Latency>,
}

#[derive(Debug)]
struct Latency {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    p999: Duration,
    sent_p50: Duration,
    cpu_us: Option<f64>,
    behind: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (mut targets, env) = rig_targets(&args.rig)?;
    for spec in &args.targets {
        targets.push(parse_target(spec)?);
    }
    if !args.only.is_empty() {
        targets.retain(|t| t.name == "direct" || args.only.contains(&t.name));
    }
    let backend = match args.backend {
        Some(b) => b,
        None => {
            let port = env.get("BACKEND_PORT").ok_or_else(|| anyhow::anyhow!("no --backend and no rig.env"))?;
            format!("127.0.0.1:{port}").parse()?
        }
    };
    let body = grpc_body();
    let mut rows: HashMap<String, Row> = HashMap::new();
    for t in &targets {
        let row = rows.entry(t.name.clone()).or_default();
        row.rss_before_kb = rss_kb(&t.pids);
        match Client::connect(t.addr, args.conns).await {
            Ok(c) => {
                if let Err(e) = c.call(&body).await {
                    row.invalid.push(format!("probe failed: {e}"));
                }
            }
            Err(e) => row.invalid.push(format!("DOWN: {e}")),
        }
    }
    let all = targets.clone();
    targets.retain(|t| rows[&t.name].invalid.is_empty());

    eprintln!(
        "[loadgen] closed loop: {} rounds x {} calls, {} conns x {} streams",
        args.rounds, args.requests, args.conns, args.streams
    );
    let mut order = targets.clone();
    for round in 0..args.rounds {
        shuffle(&mut order, round as u64 + 1);
        for t in &order {
            let client = Client::connect(t.addr, args.conns).await?;
            if args.warmup > 0 {
                let _ = closed_loop(&client, &body, args.warmup, args.streams).await;
            }
            let count_before = backend_count(backend).await?;
            let cpu_before = cpu_ticks(&t.pids);
            let gen_before = self_cpu_ticks();
            let started = Instant::now();
            let failures = closed_loop(&client, &body, args.requests, args.streams).await;
            let elapsed = started.elapsed();
            let cpu = cpu_ticks(&t.pids) - cpu_before;
            let gen_cpu = (self_cpu_ticks() - gen_before) as f64 / TICKS_PER_SEC / elapsed.as_secs_f64();
            let counted = backend_count(backend).await? - count_before;
            let row = rows.get_mut(&t.name).expect("row");
            if failures > 0 || counted != args.requests {
                row.invalid.push(format!(
                    "round {}: {failures} failed calls, backend counted {counted} of {}",
                    round + 1,
                    args.requests
                ));
                continue;
            }
            let rps = args.requests as f64 / elapsed.as_secs_f64();
            eprintln!("[loadgen] round {} {:<12} {:>9.0} rps", round + 1, t.name, rps);
            row.rps.push(rps);
            row.gen_cpu.push(gen_cpu);
            if !t.pids.is_empty() {
                row.cpu_us.push(cpu as f64 / TICKS_PER_SEC * 1e6 / args.requests as f64);
            }
        }
    }

    if args.rate > 0 {
        eprintln!(
            "[loadgen] open loop: {} calls/s for {} s per target, latency from the scheduled start",
            args.rate, args.secs
        );
        for t in &targets {
            let client = Client::connect(t.addr, args.conns).await?;
            let _ = closed_loop(&client, &body, 1_000, 1).await;
            let count_before = backend_count(backend).await?;
            let cpu_before = cpu_ticks(&t.pids);
            let (lat, failures, sent) = open_loop(&client, &body, args.rate, args.secs).await;
            let cpu = cpu_ticks(&t.pids) - cpu_before;
            let counted = backend_count(backend).await? - count_before;
            let row = rows.get_mut(&t.name).expect("row");
            if failures > 0 || counted != sent {
                row.invalid.push(format!("open loop: {failures} failed calls, backend counted {counted} of {sent}"));
                continue;
            }
            let mut lat = lat;
            lat.cpu_us = (!t.pids.is_empty()).then(|| cpu as f64 / TICKS_PER_SEC * 1e6 / sent as f64);
            row.lat = Some(lat);
        }
    }
    for t in &targets {
        rows.get_mut(&t.name).expect("row").rss_after_kb = rss_kb(&t.pids);
    }
    print_table(&args, &all, &rows);
    Ok(())
}

/// 5-byte gRPC frame header + a 100-byte message: the rig's 105-byte call.
fn grpc_body() -> Bytes {
    let mut b = vec![0u8, 0, 0, 0, 100];
    b.push(0x0a);
    b.push(98);
    b.extend(std::iter::repeat_n(b'x', 98));
    Bytes::from(b)
}

struct Client {
    senders: Vec<SendRequest<Full<Bytes>>>,
    addr: SocketAddr,
    next: AtomicUsize,
}

impl Client {
    async fn connect(addr: SocketAddr, conns: usize) -> anyhow::Result<Arc<Client>> {
        let mut senders = Vec::with_capacity(conns);
        for _ in 0..conns.max(1) {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(4 << 20)
                .handshake(TokioIo::new(tcp))
                .await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            senders.push(sender);
        }
        Ok(Arc::new(Client { senders, addr, next: AtomicUsize::new(0) }))
    }

    fn sender(&self, i: usize) -> SendRequest<Full<Bytes>> {
        self.senders[i % self.senders.len()].clone()
    }

    async fn call(&self, body: &Bytes) -> Result<(), String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        call(self.sender(i), self.addr, body).await
    }
}

async fn call(mut sender: SendRequest<Full<Bytes>>, addr: SocketAddr, body: &Bytes) -> Result<(), String> {
    let req = Request::post(format!("http://{addr}/echo.Echo/Say"))
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(body.clone()))
        .map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::OK {
        return Err(format!("HTTP {}", resp.status()));
    }
    let head_status = resp.headers().get("grpc-status").cloned();
    let collected = resp.into_body().collect().await.map_err(|e| e.to_string())?;
    let status = collected.trailers().and_then(|t| t.get("grpc-status").cloned()).or(head_status);
    if status.as_ref().map(|s| s.as_bytes()) != Some(b"0") {
        return Err(format!("grpc-status {status:?}"));
    }
    if collected.to_bytes() != *body {
        return Err("response body differs from the request".into());
    }
    Ok(())
}

/// `total` calls with `streams` in flight per connection; returns the failed count.
async fn closed_loop(client: &Arc<Client>, body: &Bytes, total: u64, streams: usize) -> u64 {
    let left = Arc::new(AtomicU64::new(total));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..client.senders.len() * streams.max(1) {
        let (client, body, left, failed) = (client.clone(), body.clone(), left.clone(), failed.clone());
        tasks.spawn(async move {
            let sender = client.sender(w);
            while left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
                if call(sender.clone(), client.addr, &body).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    failed.load(Ordering::Relaxed)
}

/// `rate` calls/s for `secs` s on a fixed schedule. Latency is from the scheduled start
/// (coordinated-omission corrected); also returns failures and calls sent.
async fn open_loop(client: &Arc<Client>, body: &Bytes, rate: u64, secs: u64) -> (Latency, u64, u64) {
    let total = rate * secs;
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let failed = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Duration, Duration)>();
    let start = tokio::time::Instant::now() + Duration::from_millis(5);
    let mut max_lag = Duration::ZERO;
    for i in 0..total {
        let scheduled = start + period * i as u32;
        // The timer has 1 ms resolution: sleep to just before the slot, then
        // yield (letting responses be processed) until it is due, so calls
        // leave on time rather than in 1 ms batches.
        if let Some(early) = scheduled.checked_sub(Duration::from_millis(1))
            && early > tokio::time::Instant::now()
        {
            tokio::time::sleep_until(early).await;
        }
        while tokio::time::Instant::now() < scheduled {
            tokio::task::yield_now().await;
        }
        max_lag = max_lag.max(tokio::time::Instant::now() - scheduled);
        let (client, body, failed, tx) = (client.clone(), body.clone(), failed.clone(), tx.clone());
        let sender = client.sender(i as usize);
        tokio::spawn(async move {
            let sent = tokio::time::Instant::now();
            if call(sender, client.addr, &body).await.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            let done = tokio::time::Instant::now();
            let _ = tx.send((done - scheduled, done - sent));
        });
    }
    drop(tx);
    let mut corrected = Vec::with_capacity(total as usize);
    let mut from_send = Vec::with_capacity(total as usize);
    while let Some((c, s)) = rx.recv().await {
        corrected.push(c);
        from_send.push(s);
    }
    corrected.sort_unstable();
    from_send.sort_unstable();
    let lat = Latency {
        p50: percentile(&corrected, 50.0),
        p90: percentile(&corrected, 90.0),
        p99: percentile(&corrected, 99.0),
        p999: percentile(&corrected, 99.9),
        sent_p50: percentile(&from_send, 50.0),
        cpu_us: None,
        // The scheduler itself fell more than 10 ms behind: the generator could not hold the rate.
        behind: max_lag > Duration::from_millis(10),
    };
    (lat, failed.load(Ordering::Relaxed), total)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn backend_count(addr: SocketAddr) -> anyhow::Result<u64> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::get("/__count").header("host", addr.to_string()).body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(std::str::from_utf8(&body)?.trim().parse()?)
}

fn rig_targets(rig: &str) -> anyhow::Result<(Vec<Target>, HashMap<String, String>)> {
    if rig.is_empty() {
        return Ok((Vec::new(), HashMap::new()));
    }
    let mut env = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(format!("{rig}/rig.env")) {
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((k, v)) = line.split_once('=') {
                env.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
    let mut targets = Vec::new();
    if let Ok(text) = std::fs::read_to_string(format!("{rig}/targets.txt")) {
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let spec = line.split_whitespace().collect::<Vec<_>>().join(":");
            targets.push(parse_target(&spec)?);
        }
    }
    Ok((targets, env))
}

fn parse_target(spec: &str) -> anyhow::Result<Target> {
    let parts: Vec<&str> = spec.split(':').collect();
    let bad = || anyhow::anyhow!("bad target {spec:?}: want name:port[:pid,pid...]");
    if parts.len() < 2 || parts.len() > 3 {
        return Err(bad());
    }
    let port: u16 = parts[1].parse().map_err(|_| bad())?;
    let pids = match parts.get(2) {
        Some(p) => p.split(',').filter(|p| !p.is_empty() && *p != "-").map(str::parse).collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(Target { name: parts[0].to_string(), addr: SocketAddr::from(([127, 0, 0, 1], port)), pids })
}

/// pids and their descendants (nginx workers).
fn family(pids: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = pids.to_vec();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    let parents: Vec<(u32, u32)> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat_fields(pid)?.get(1)?.parse().ok()?)))
        .collect();
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// Fields 3.. of /proc/PID/stat (after the parenthesised name).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn cpu_ticks(pids: &[u32]) -> u64 {
    family(pids)
        .iter()
        .filter_map(|p| {
            let f = stat_fields(*p)?;
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

fn self_cpu_ticks() -> u64 {
    cpu_ticks(&[std::process::id()])
}

fn rss_kb(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    let kb = family(pids)
        .iter()
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum();
    Some(kb)
}

fn shuffle(v: &mut [Target], seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    rng.shuffle(v);
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some(s[s.len() / 2])
}

fn print_table(args: &Args, targets: &[Target], rows: &HashMap<String, Row>) {
    let rps = |name: &str| rows.get(name).and_then(|r| median(&r.rps));
    let direct_rps = rps("direct");
    let reference_rps = rps(&args.reference);
    let direct_p50 = rows.get("direct").and_then(|r| r.lat.as_ref()).map(|l| l.p50);
    let us = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e6);
    let opt = |v: Option<f64>, prec: usize| v.map(|v| format!("{v:.prec$}")).unwrap_or_else(|| "-".into());
    println!();
    println!(
        "loadgen: closed loop {} rounds x {} calls (c{} x m{}), medians; open loop {} calls/s x {} s, latency in µs from the scheduled start",
        args.rounds, args.requests, args.conns, args.streams, args.rate, args.secs
    );
    println!(
        "{:<14} {:>9} {:>10} {:>8} {:>11} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>9}",
        "target",
        "rps",
        "rps/direct",
        format!("rps/{}", args.reference.trim_end_matches("_pair")),
        "cpu_us/req",
        "cpu@rate",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "+p50",
        "rss_MB",
        "rss_MB'",
        "gen_cpu"
    );
    for t in targets {
        let Some(r) = rows.get(&t.name) else { continue };
        let m = median(&r.rps);
        let lat = r.lat.as_ref();
        println!(
            "{:<14} {:>9} {:>10} {:>8} {:>11} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>9}",
            t.name,
            opt(m, 0),
            opt(m.zip(direct_rps).map(|(a, b)| a / b), 3),
            opt(m.zip(reference_rps).map(|(a, b)| a / b), 2),
            opt(median(&r.cpu_us), 1),
            opt(lat.and_then(|l| l.cpu_us), 1),
            lat.map(|l| us(l.p50) + if l.behind { "!" } else { "" }).unwrap_or_else(|| "-".into()),
            lat.map(|l| us(l.p90)).unwrap_or_else(|| "-".into()),
            lat.map(|l| us(l.p99)).unwrap_or_else(|| "-".into()),
            lat.map(|l| us(l.p999)).unwrap_or_else(|| "-".into()),
            lat.zip(direct_p50)
                .map(|(l, d)| format!("{:+.0}", (l.p50.as_secs_f64() - d.as_secs_f64()) * 1e6))
                .unwrap_or_else(|| "-".into()),
            opt(r.rss_before_kb.map(|k| k as f64 / 1024.0), 1),
            opt(r.rss_after_kb.map(|k| k as f64 / 1024.0), 1),
            opt(median(&r.gen_cpu).map(|c| c * 100.0), 0) + "%",
        );
    }
    println!("  rss_MB: before the runs; rss_MB': after; gen_cpu: the load generator's own CPU during the closed loop");
    println!(
        "  (≥ 90 % means the generator, not the target, may have been the limit); ! = the schedule slipped > 10 ms"
    );
    if let Some(d) = rows.get("direct").and_then(|r| r.lat.as_ref()) {
        println!("  direct p50 from the actual send (no correction): {} µs", us(d.sent_p50));
    }
    for t in targets {
        for why in rows.get(&t.name).map(|r| r.invalid.as_slice()).unwrap_or_default() {
            println!("  INVALID {}: {why}", t.name);
        }
    }
}
