//! Run with: cargo run --release --example registry_bench
//!
//! (`-- memory`, `-- redis`, `-- tls`, `-- plain` narrow it down.)
//!
//! Measures the control service's registry on both stores — in memory, and
//! Redis at `redis://127.0.0.1:6379` under a fresh `bench-<random>` key prefix
//! that is deleted afterwards — each over the gRPC API's TLS (the default)
//! and plaintext (`dev_insecure_control`), so what TLS costs is measured in
//! the same run. One table row per store and transport:
//!
//! 1. **registrations/s**: 10,000 `Register` RPCs over gRPC from 16 concurrent
//!    tasks sharing 4 HTTP/2 connections; the wall time gives the rate. A call
//!    returns once this replica's view shows the instance (read-your-writes),
//!    so with Redis each one is a Lua script plus the trip back through the
//!    change feed: a round-trip rate, not Redis's raw write rate.
//! 2. **watch propagation p50/p99/max**: 1,000 `Watch` streams spread over 16
//!    HTTP/2 connections (one connection caps its concurrent streams). Once
//!    every watcher has its snapshot, 200 instances are registered one at a
//!    time, 10 ms apart. Each carries its send time in metadata `sent_ns`
//!    (nanoseconds since one `Instant` shared by the sender and the watchers,
//!    which all live in this process, so no clocks are compared), and each
//!    watcher records receive time − send time for every PUT: 200,000 samples,
//!    reported by nearest rank over the sorted samples. This is end to end:
//!    encode, the store write (with Redis, the feed read back), the fan-out to
//!    1,000 watcher tasks, encode again, and decode here — on the same machine,
//!    so this client's CPU competes with the server's.
//! 3. **control RSS**: the control service runs in its own process (this
//!    example re-executed as `registry_bench --serve <store> <prefix>`), so the
//!    `VmRSS` read from `/proc/<pid>/status` is the server's alone: idle after
//!    start, holding the 10,000 instances of step 1, and with the 1,000
//!    watchers of step 2 still connected after the propagation run.
//!
//! The watchers watch only the service step 2 writes to, as a sidecar watches
//! its upstreams: their snapshots are small, but every watcher task on the
//! server still sees every change and filters it, as with unfiltered watches.
//! Watches are opened one at a time (see `WATCH_OPENS_IN_FLIGHT`). Leases are
//! 5 minutes so none lapses mid-bench. Every wait is bounded; all traffic
//! stays on 127.0.0.1.
//!
//! Besides the table, each step prints a line: the server's peak RSS
//! (`VmHWM`), the CPU seconds the control and this bench used during the
//! propagation run (they share the machine's cores), and per change how long
//! the first and the last of the 1,000 watchers took to get it — the first is
//! the store path, the gap to the last is the fan-out.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use redfire::control::config::{Config, Settings};
use redfire::control::server::Control;
use redfire::mesh::process::control_endpoint::{BearerToken, OperatorChannel};
use redfire::mesh::process::{control_endpoint, shutdown, telemetry};
use redfire::proto::registry::v1 as pb;
use redfire::proto::registry::v1::registry_client::RegistryClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::task::JoinSet;

const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Instances registered in step 1 (and held for the RSS reading).
const INSTANCES: usize = 10_000;
/// Services those instances are spread over.
const SERVICES: usize = 100;
const REGISTER_TASKS: usize = 16;
const REGISTER_CHANNELS: usize = 4;
const WATCHERS: usize = 1_000;
const WATCH_CHANNELS: usize = 16;
/// Watch streams being opened at once. One at a time, as sidecars that start
/// at different moments do, so the RSS reading is what connected watchers
/// cost. Raise it to see a reconnect storm: every Watch copies the whole
/// registry for its snapshot (even a filtered one), so many opens at once
/// make the server's peak RSS (which the allocator keeps) far higher.
const WATCH_OPENS_IN_FLIGHT: usize = 1;
/// Registrations whose propagation is timed.
const PROPAGATIONS: usize = 200;
const PROPAGATION_SPACING: Duration = Duration::from_millis(10);
/// The service the watchers watch and step 2 writes to.
const WATCH_SERVICE: &str = "bench-watch";
/// The longest lease the control allows (5 min): nothing lapses mid-bench.
const TTL_MS: u32 = 300_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tls,
    Plain,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tls => "tls",
            Transport::Plain => "plain",
        }
    }
}

/// How to reach a control: its address and, with TLS, its trust bundle.
#[derive(Debug, Clone)]
struct Dial {
    addr: SocketAddr,
    bundle: Option<String>,
    /// An operator token (`registry-admin`) the server minted.
    token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Memory,
    Redis,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::Redis => "redis",
        }
    }
}

/// One table row; `None` where a step did not produce a number.
#[derive(Debug, Default)]
struct Row {
    registrations_per_s: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    rss_idle_mb: Option<f64>,
    rss_instances_mb: Option<f64>,
    rss_watchers_mb: Option<f64>,
    /// Why the row is incomplete, if it is.
    note: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve") {
        let [_, store, prefix, transport] = args.as_slice() else {
            bail!("usage: registry_bench --serve <store> <redis_prefix> <tls|plain>")
        };
        return serve(store, prefix, transport == "tls");
    }
    let (mut stores, mut transports) = (Vec::new(), Vec::new());
    for a in &args {
        match a.as_str() {
            "memory" => stores.push(Store::Memory),
            "redis" => stores.push(Store::Redis),
            "tls" => transports.push(Transport::Tls),
            "plain" => transports.push(Transport::Plain),
            other => bail!("unknown argument {other:?}; expected memory, redis, tls, plain"),
        }
    }
    if stores.is_empty() {
        stores = vec![Store::Memory, Store::Redis];
    }
    if transports.is_empty() {
        transports = vec![Transport::Plain, Transport::Tls];
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        for store in stores {
            for &transport in &transports {
                rows.push(((store, transport), bench_store(store, transport).await));
            }
        }
        rows
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    print_table(&rows);
    Ok(())
}

// ---------------------------------------------------------------------------
// The server process.

/// `--serve`: a control service on free ports that prints `GRPC <addr>
/// <trust bundle file, or - for plaintext> <operator token>` and runs until stdin closes (the
/// parent is done or gone) or SIGTERM/SIGINT.
fn serve(store: &str, prefix: &str, tls: bool) -> anyhow::Result<()> {
    let bundle = std::env::temp_dir().join(format!("redfire-bench-bundle-{}.pem", std::process::id()));
    let config = Config::from_settings(Settings {
        dev_insecure_control: Some((!tls).to_string()),
        trust_bundle_file: Some(bundle.display().to_string()),
        grpc_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        store: Some(store.into()),
        redis_url: Some(REDIS_URL.into()),
        redis_prefix: Some(prefix.into()),
        lease_ttl: Some("5m".into()),
        shutdown_grace: Some("1s".into()),
        log_level: Some("warn".into()),
        ..Default::default()
    })?;
    // A plain thread: a blocked stdin read must not hold up runtime shutdown.
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = eof_tx.send(());
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        let _telemetry = telemetry::init("redfire-control", config.log_format, &config.log_level);
        let control = Control::start(config).await?;
        let file = if control.tls { bundle.display().to_string() } else { "-".into() };
        let token = control.operator_token("registry-bench", &["registry-admin"]).map_err(anyhow::Error::msg)?;
        println!("GRPC {} {file} {token}", control.grpc_addr);
        std::io::stdout().flush()?;
        tokio::select! {
            _ = eof_rx => {}
            () = shutdown::signal() => {}
        }
        control.shutdown();
        tokio::time::timeout(Duration::from_secs(5), control.wait()).await.context("drain took over 5 s")??;
        anyhow::Ok(())
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    let _ = std::fs::remove_file(&bundle);
    result
}

/// The parent's handle on a `--serve` child.
struct Server {
    child: Child,
    pid: u32,
    dial: Dial,
}

impl Server {
    async fn spawn(store: Store, prefix: &str, transport: Transport) -> anyhow::Result<Server> {
        let exe = std::env::current_exe().context("current_exe")?;
        let mut child = tokio::process::Command::new(exe)
            .args(["--serve", store.name(), prefix, transport.name()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("NO_COLOR", "1")
            .kill_on_drop(true)
            .spawn()
            .context("start the server process")?;
        let pid = child.id().context("server process has no pid")?;
        let mut stdout = BufReader::new(child.stdout.take().context("server stdout")?).lines();
        // Log lines (the plaintext warning, say) may come before the address.
        let name = store.name();
        let line = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match stdout.next_line().await? {
                    Some(l) if l.starts_with("GRPC ") => return anyhow::Ok(l),
                    Some(l) => eprintln!("[{name} control log] {l}"),
                    None => bail!("server exited before printing its address"),
                }
            }
        })
        .await
        .context("server did not print its address within 20 s")??;
        let rest = line.strip_prefix("GRPC ").with_context(|| format!("unexpected server line {line:?}"))?;
        let mut parts = rest.split(' ');
        let (Some(addr), Some(file), Some(token)) = (parts.next(), parts.next(), parts.next()) else {
            anyhow::bail!("unexpected server line {line:?}");
        };
        let bundle = match file {
            "-" => None,
            f => Some(std::fs::read_to_string(f).with_context(|| format!("trust bundle {f}"))?),
        };
        let dial = Dial { addr: addr.parse()?, bundle, token: token.to_string() };
        // The server logs (warnings and up) to stdout: pass them on, marked,
        // and never let a full pipe block the server.
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                eprintln!("[{name} control log] {line}");
            }
        });
        Ok(Server { child, pid, dial })
    }

    /// `(VmRSS, VmHWM)` of the server process in MiB.
    fn memory_mb(&self) -> anyhow::Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> anyhow::Result<f64> {
            let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name}"))?;
            let kb: f64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse()?;
            Ok(kb / 1024.0)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Closes stdin (the child drains and exits), waits up to 10 s, then kills
    /// the child by its pid.
    async fn stop(mut self) -> String {
        drop(self.child.stdin.take());
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => "exited cleanly".into(),
            Ok(Ok(status)) => format!("exited with {status}"),
            Ok(Err(e)) => format!("wait failed: {e}"),
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
                "did not exit within 10 s after stdin closed; killed".into()
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The bench.

async fn bench_store(store: Store, transport: Transport) -> Row {
    let name = format!("{}/{}", store.name(), transport.name());
    let name = name.as_str();
    let prefix = format!("bench-{:08x}", fastrand::u32(..));
    if store == Store::Redis
        && let Err(e) = redis_ping().await
    {
        eprintln!("\n**********************************************************************");
        eprintln!("*** SKIPPING the redis store: Redis at {REDIS_URL} is unreachable: {e}");
        eprintln!("**********************************************************************\n");
        return Row { note: Some(format!("skipped: Redis at {REDIS_URL} unreachable")), ..Default::default() };
    }
    println!(
        "[{name}] starting a control process{}",
        if store == Store::Redis { format!(" (key prefix {prefix})") } else { String::new() }
    );
    let mut row = Row::default();
    match Server::spawn(store, &prefix, transport).await {
        Ok(server) => {
            if let Err(e) = measure(name, &server, &mut row).await {
                eprintln!("[{name}] FAILED: {e:#}");
                row.note = Some(format!("failed: {e:#}"));
            }
            let how = server.stop().await;
            println!("[{name}] control process {how}");
        }
        Err(e) => {
            eprintln!("[{name}] FAILED to start the control process: {e:#}");
            row.note = Some(format!("failed to start: {e:#}"));
        }
    }
    if store == Store::Redis {
        match redis_delete_prefix(&prefix).await {
            Ok(n) => println!("[{name}] deleted {n} Redis keys matching {{{prefix}:reg}}*"),
            Err(e) => eprintln!("[{name}] could not delete the keys {{{prefix}:reg}}*: {e:#}"),
        }
    }
    row
}

/// Steps 1–3 against one server, filling `row` as numbers come in.
async fn measure(name: &str, server: &Server, row: &mut Row) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle, _) = server.memory_mb()?;
    row.rss_idle_mb = Some(idle);
    println!("[{name}] idle: RSS {idle:.1} MB");

    let took = register_fleet(&server.dial).await?;
    let rate = INSTANCES as f64 / took.as_secs_f64();
    row.registrations_per_s = Some(rate);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss, hwm) = server.memory_mb()?;
    row.rss_instances_mb = Some(rss);
    println!(
        "[{name}] {INSTANCES} registrations in {:.2} s = {rate:.0}/s; RSS {rss:.1} MB (peak {hwm:.1})",
        took.as_secs_f64()
    );

    let base = Instant::now();
    let watchers = Watchers::open(&server.dial, base).await?;
    let (rss, hwm) = server.memory_mb()?;
    println!(
        "[{name}] {} watchers have their snapshot ({} failed to open) in {:.2} s; RSS {rss:.1} MB (peak {hwm:.1})",
        watchers.ready.load(Ordering::SeqCst),
        watchers.failed.load(Ordering::SeqCst),
        watchers.opened_in.as_secs_f64()
    );
    if watchers.failed.load(Ordering::SeqCst) > 0 {
        bail!("{} of {WATCHERS} watchers failed to open", watchers.failed.load(Ordering::SeqCst));
    }

    let pid = server.pid.to_string();
    let (server_cpu, bench_cpu, wall) = (cpu_secs(&pid)?, cpu_secs("self")?, Instant::now());
    let sent = tokio::time::timeout(Duration::from_secs(60), propagate(&server.dial, base))
        .await
        .context("the timed registrations took over 60 s")??;
    let (outcomes, errors) = watchers.collect().await;
    println!(
        "[{name}] the propagation run took {:.2} s; CPU used meanwhile: control {:.2} s, this bench {:.2} s ({} cores)",
        wall.elapsed().as_secs_f64(),
        cpu_secs(&pid)? - server_cpu,
        cpu_secs("self")? - bench_cpu,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let (rss, hwm) = server.memory_mb()?;
    row.rss_watchers_mb = Some(rss);
    let mut samples: Vec<u64> = outcomes.iter().flat_map(|o| o.samples.iter().copied()).collect();
    let expected = outcomes.len() * sent;
    println!(
        "[{name}] {sent} registrations sent {} ms apart; {} of {expected} deliveries timed{}; RSS {rss:.1} MB (peak {hwm:.1})",
        PROPAGATION_SPACING.as_millis(),
        samples.len(),
        if errors.is_empty() { String::new() } else { format!("; watcher errors: {}", errors.join("; ")) }
    );
    if sent > 0 && outcomes.iter().all(|o| o.samples.len() == sent) {
        // Every watcher saw the changes in order: sample k is change k. The
        // first and last watcher to get each change show the fan-out spread.
        let (mut first, mut last) = (Vec::with_capacity(sent), Vec::with_capacity(sent));
        for k in 0..sent {
            first.push(outcomes.iter().map(|o| o.samples[k]).min().unwrap_or(0));
            last.push(outcomes.iter().map(|o| o.samples[k]).max().unwrap_or(0));
        }
        first.sort_unstable();
        last.sort_unstable();
        println!(
            "[{name}] per change, first watcher to receive it: p50 {:.2} ms, p99 {:.2} ms; last: p50 {:.2} ms, p99 {:.2} ms",
            percentile(&first, 0.5),
            percentile(&first, 0.99),
            percentile(&last, 0.5),
            percentile(&last, 0.99)
        );
    }
    drop(outcomes);
    if samples.is_empty() {
        bail!("no watcher received a change");
    }
    samples.sort_unstable();
    row.p50_ms = Some(percentile(&samples, 0.50));
    row.p99_ms = Some(percentile(&samples, 0.99));
    row.max_ms = Some(percentile(&samples, 1.0));
    if samples.len() < expected {
        row.note = Some(format!("only {} of {expected} deliveries arrived", samples.len()));
    }
    Ok(())
}

/// Nearest-rank percentile of sorted nanosecond samples, in ms.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e6
}

/// CPU time (user + system) a process has used so far, from
/// `/proc/<pid>/stat` (`pid` may be `self`), in seconds.
fn cpu_secs(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces: state is field 3,
    // utime and stime are fields 14 and 15, in USER_HZ (100) ticks.
    let fields: Vec<&str> = stat.rsplit_once(')').context("malformed stat")?.1.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i).context("short stat")?.parse()?) };
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// A channel to the server as an operator (authorization on with TLS: each
/// call passes control's authorization layer).
async fn connect(dial: &Dial, per_call: Option<Duration>) -> anyhow::Result<OperatorChannel> {
    let url = format!("{}://{}", if dial.bundle.is_some() { "https" } else { "http" }, dial.addr);
    let mut endpoint = control_endpoint::endpoint(&url, dial.bundle.as_deref())
        .map_err(anyhow::Error::msg)?
        .connect_timeout(Duration::from_secs(2));
    if let Some(t) = per_call {
        endpoint = endpoint.timeout(t);
    }
    let token = BearerToken::new(dial.token.as_str()).map_err(anyhow::Error::msg)?;
    Ok(OperatorChannel::new(endpoint.connect().await?, token))
}

/// A typical instance: a few ports, zone, version, metadata, tags.
fn instance(service: String, instance_id: String, i: usize) -> pb::Instance {
    pb::Instance {
        service,
        instance_id,
        address: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        ports: Some(pb::Ports { grpc: Some(9000), http: Some(8080), admin: Some(15020) }),
        zone: ["zone-a", "zone-b", "zone-c"][i % 3].into(),
        version: "1.4.2".into(),
        metadata: HashMap::from([("team".into(), "payments".into()), ("build".into(), "2024.06.1".into())]),
        tags: vec!["bench".into()],
        health: pb::Health::Serving as i32,
        ..Default::default()
    }
}

/// Step 1: registers `INSTANCES` instances; returns the wall time.
async fn register_fleet(dial: &Dial) -> anyhow::Result<Duration> {
    let mut channels = Vec::new();
    for _ in 0..REGISTER_CHANNELS {
        channels.push(connect(dial, Some(Duration::from_secs(5))).await?);
    }
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for t in 0..REGISTER_TASKS {
        let mut client = RegistryClient::new(channels[t % REGISTER_CHANNELS].clone());
        tasks.spawn(async move {
            for i in (t..INSTANCES).step_by(REGISTER_TASKS) {
                let service = format!("bench-svc-{:02}", i % SERVICES);
                let inst = instance(service, format!("i-{i:05}"), i);
                client.register(pb::RegisterRequest { instance: Some(inst), ttl_ms: TTL_MS }).await?;
            }
            anyhow::Ok(())
        });
    }
    let all = async {
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(120), all).await.context("registrations took over 120 s")??;
    Ok(started.elapsed())
}

/// Step 2, sending side: `PROPAGATIONS` registrations of `WATCH_SERVICE`, one
/// at a time, each stamped with its send time. Returns how many were sent.
async fn propagate(dial: &Dial, base: Instant) -> anyhow::Result<usize> {
    let mut client = RegistryClient::new(connect(dial, Some(Duration::from_secs(5))).await?);
    for i in 0..PROPAGATIONS {
        let mut inst = instance(WATCH_SERVICE.into(), format!("w-{i:03}"), i);
        inst.metadata.insert("sent_ns".into(), base.elapsed().as_nanos().to_string());
        client.register(pb::RegisterRequest { instance: Some(inst), ttl_ms: TTL_MS }).await?;
        tokio::time::sleep(PROPAGATION_SPACING).await;
    }
    Ok(PROPAGATIONS)
}

/// What one watcher brings back; holding it keeps the stream open.
struct Outcome {
    /// Receive − send time of each PUT, in ns.
    samples: Vec<u64>,
    _stream: tonic::Streaming<pb::WatchResponse>,
}

/// Step 2, receiving side: `WATCHERS` Watch streams, each in its own task.
struct Watchers {
    tasks: JoinSet<anyhow::Result<Outcome>>,
    ready: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: tokio::sync::watch::Sender<bool>,
    opened_in: Duration,
    _channels: Vec<OperatorChannel>,
}

impl Watchers {
    /// Opens every stream and returns once each has its snapshot (or failed).
    async fn open(dial: &Dial, base: Instant) -> anyhow::Result<Watchers> {
        let mut channels = Vec::new();
        for _ in 0..WATCH_CHANNELS {
            // No per-call timeout: it would cut the streams; opens are bounded below.
            channels.push(connect(dial, None).await?);
        }
        let ready = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let opening = Arc::new(tokio::sync::Semaphore::new(WATCH_OPENS_IN_FLIGHT));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for w in 0..WATCHERS {
            let client = RegistryClient::new(channels[w % WATCH_CHANNELS].clone());
            let (ready, failed, opening, stop) = (ready.clone(), failed.clone(), opening.clone(), stop_rx.clone());
            tasks.spawn(async move {
                let r = watch(client, &ready, &opening, base, stop).await;
                if r.is_err() {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                r
            });
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        while ready.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) < WATCHERS {
            if Instant::now() > deadline {
                bail!("only {} of {WATCHERS} watchers got their snapshot within 90 s", ready.load(Ordering::SeqCst));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let opened_in = started.elapsed();
        Ok(Watchers { tasks, ready, failed, stop, opened_in, _channels: channels })
    }

    /// Waits up to 30 s for every watcher to see every change, then stops the
    /// stragglers. The outcomes keep their streams open until dropped.
    async fn collect(mut self) -> (Vec<Outcome>, Vec<String>) {
        let mut outcomes = Vec::new();
        let mut errors = Vec::new();
        let mut take = |r: Result<anyhow::Result<Outcome>, tokio::task::JoinError>| match r {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(e.to_string()),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut stragglers = 0;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(r)) => take(r),
                Ok(None) => break,
                Err(_) => {
                    stragglers = self.tasks.len();
                    let _ = self.stop.send(true);
                    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(5), self.tasks.join_next()).await {
                        take(r);
                    }
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        if stragglers > 0 {
            errors.push(format!("{stragglers} watchers still waiting after 30 s; stopped"));
        }
        errors.sort();
        errors.dedup();
        (outcomes, errors)
    }
}

/// One watcher: open, wait for the snapshot, then time each PUT until it has
/// seen `PROPAGATIONS` of them or is told to stop.
async fn watch(
    mut client: RegistryClient<OperatorChannel>,
    ready: &AtomicUsize,
    opening: &tokio::sync::Semaphore,
    base: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Outcome> {
    let permit = opening.acquire().await?;
    let req = pb::WatchRequest { services: vec![WATCH_SERVICE.into()], ..Default::default() };
    let limit = Duration::from_secs(60);
    let mut stream =
        tokio::time::timeout(limit, client.watch(req)).await.context("Watch call timed out")??.into_inner();
    match tokio::time::timeout(limit, stream.message()).await.context("no snapshot within 60 s")?? {
        Some(pb::WatchResponse { event: Some(pb::watch_response::Event::Snapshot(_)), .. }) => {}
        other => bail!("expected a snapshot first, got {other:?}"),
    }
    drop(permit);
    ready.fetch_add(1, Ordering::SeqCst);
    let mut samples = Vec::with_capacity(PROPAGATIONS);
    while samples.len() < PROPAGATIONS {
        let msg = tokio::select! {
            m = stream.message() => m?,
            _ = stop.changed() => break,
        };
        let received = base.elapsed().as_nanos() as u64;
        let Some(msg) = msg else { bail!("the server ended the stream") };
        if let Some(pb::watch_response::Event::Change(c)) = msg.event
            && c.r#type == pb::ChangeType::Put as i32
            && let Some(sent) = c.instance.and_then(|i| i.metadata.get("sent_ns").and_then(|s| s.parse::<u64>().ok()))
        {
            samples.push(received.saturating_sub(sent));
        }
    }
    Ok(Outcome { samples, _stream: stream })
}

// ---------------------------------------------------------------------------
// Redis housekeeping.

async fn redis_conn() -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(REDIS_URL)?;
    let conn = tokio::time::timeout(Duration::from_secs(2), client.get_multiplexed_async_connection())
        .await
        .context("connect timed out")??;
    Ok(conn)
}

async fn redis_ping() -> anyhow::Result<()> {
    let mut conn = redis_conn().await?;
    let _: String = tokio::time::timeout(Duration::from_secs(2), redis::cmd("PING").query_async(&mut conn))
        .await
        .context("PING timed out")??;
    Ok(())
}

/// Deletes every key of the registry under `prefix` (SCAN + DEL); returns how many.
async fn redis_delete_prefix(prefix: &str) -> anyhow::Result<usize> {
    let pattern = format!("{{{prefix}:reg}}*");
    let mut conn = redis_conn().await?;
    let limit = Duration::from_secs(5);
    let (mut cursor, mut deleted) = (0u64, 0usize);
    loop {
        let scan = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).clone();
        let (next, keys): (u64, Vec<String>) =
            tokio::time::timeout(limit, scan.query_async(&mut conn)).await.context("SCAN timed out")??;
        if !keys.is_empty() {
            let n: usize = tokio::time::timeout(limit, redis::cmd("DEL").arg(&keys).query_async(&mut conn))
                .await
                .context("DEL timed out")??;
            deleted += n;
        }
        cursor = next;
        if cursor == 0 {
            return Ok(deleted);
        }
    }
}

// ---------------------------------------------------------------------------
// Output.

fn print_table(rows: &[((Store, Transport), Row)]) {
    let header = [
        "store",
        "transport",
        "registrations/s",
        "watch p50 ms",
        "watch p99 ms",
        "watch max ms",
        "RSS idle MB",
        "RSS 10k instances MB",
        "RSS +1k watchers MB",
    ];
    let num = |v: Option<f64>, decimals: usize| v.map(|v| format!("{v:.decimals$}")).unwrap_or_else(|| "-".into());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|((store, transport), r)| {
            vec![
                store.name().to_string(),
                transport.name().to_string(),
                num(r.registrations_per_s, 0),
                num(r.p50_ms, 2),
                num(r.p99_ms, 2),
                num(r.max_ms, 2),
                num(r.rss_idle_mb, 1),
                num(r.rss_instances_mb, 1),
                num(r.rss_watchers_mb, 1),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| cells.iter().map(|r| r[c].len()).chain([header[c].len()]).max().unwrap_or(0))
        .collect();
    let line = |row: &[String]| {
        let padded: Vec<String> = row.iter().zip(&widths).map(|(s, w)| format!("{s:>w$}")).collect();
        format!("| {} |", padded.join(" | "))
    };
    println!();
    println!("{}", line(&header.map(String::from)));
    println!("|{}|", widths.iter().map(|w| format!("{}:", "-".repeat(w + 1))).collect::<Vec<_>>().join("|"));
    for row in &cells {
        println!("{}", line(row));
    }
    println!();
    for (store, r) in rows {
        if let Some(note) = &r.note {
            println!("note ({}/{}): {note}", store.0.name(), store.1.name());
        }
    }
    println!(
        "setup: {INSTANCES} instances over {SERVICES} services registered by {REGISTER_TASKS} tasks on \
         {REGISTER_CHANNELS} connections; {WATCHERS} watchers on {WATCH_CHANNELS} connections; \
         {PROPAGATIONS} timed registrations {} ms apart",
        PROPAGATION_SPACING.as_millis()
    );
    println!("targets: propagation p99 <= 50 ms with 1,000 watchers on Redis; 10,000 instances in <= 150 MB RSS");
}
