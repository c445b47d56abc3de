//! Run with: cargo run --release --example ws_fanout -- [subscribers...]
//!
//! (Default: `1000 10000`. Build the sidecar first: `cargo build --release
//! --bin redfire-sidecar`; the open-file limit must exceed the largest count
//! plus ~100 in this process and in the gateway: `ulimit -n 20000`.)
//!
//! WebSocket fan-out of the gateway's topic hub. An in-process control
//! (memory store) and a gateway run as a child process
//! (`target/release/redfire-sidecar --mode gateway`), so the gateway's RSS and
//! CPU are its own. Two placements, each with its own gateway process (where
//! `taskset` exists):
//! - *gateway on its own core*: the gateway pinned to CPU 1 (one worker
//!   thread), this process (clients, publisher, control; one thread) to CPU 0;
//! - *both cores shared*: the gateway with two worker threads and this
//!   process, both on CPUs 0-1: the gateway's default runtime on this
//!   machine, the clients competing with it for both cores.
//!
//! `FANOUT_GATEWAY_CPUS` / `FANOUT_CLIENT_CPUS` (taskset lists) run one
//! placement of your own instead. On loopback the kernel's receive path of
//! every client socket runs inside the gateway's `send`, so the gateway's CPU
//! includes work a remote client's host would do.
//!
//! The clients are minimal RFC 6455 clients over raw sockets (they read
//! frames and answer pings), so their own cost stays small next to the
//! gateway's. For each count N: N WebSocket clients (one token, one user)
//! connect to `/ws` and subscribe to topic `bench`; the gateway's VmRSS is
//! read before and after (idle connections); then 20 events are published
//! through control, one at a time, 500 ms apart (one fan-out ends before the
//! next starts), each stamped with its publish time, and every client records
//! receive time − publish time. Clients close only after the last event. The
//! table gives delivery latency p50/p99 over all N × 20 deliveries, the
//! gateway's CPU time per event (utime + stime from /proc), this process's
//! (clients, publisher and control) and the gateway's RSS. The latency
//! includes the clients' own reads and scheduling (one thread reads all N
//! sockets).
//!
//! Targets: p99 ≤ 100 ms at 10,000 subscribers; 10,000 idle connections in
//! ≤ 200 MB of gateway RSS.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use redfire::control::authz::token;
use redfire::control::config::{Config, Settings};
use redfire::control::events::client::EventsClient;
use redfire::control::identity::ca::Ca;
use redfire::control::server::Control;
use redfire::mesh::events::unix_us;
use redfire::proto::policy::v1 as ppb;
use redfire::proto::policy::v1::policy_client::PolicyClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "ws-fanout-bench-secret-of-32-bytes!!";
const EVENTS: usize = 20;
const SPACING: Duration = Duration::from_millis(500);

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(String::from))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// The process's CPU time (user + system), in clock ticks (1/100 s here).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is 3rd.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let at = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    at(11) + at(12)
}

fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Max open files")).map(String::from))
        .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn have_taskset() -> bool {
    let ok = Command::new("taskset").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
    ok.is_ok_and(|s| s.success())
}

/// The CPU list in `var`, when set, not empty and `taskset` is here.
fn cpus(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|l| !l.is_empty() && have_taskset())
}

/// How many CPUs a taskset list like `1` or `0,2-3` names.
fn cpu_count(list: &str) -> usize {
    list.split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.trim().parse::<usize>().unwrap_or(0).saturating_sub(a.trim().parse().unwrap_or(0)) + 1,
            None => 1,
        })
        .sum::<usize>()
        .max(1)
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run())
}

/// Where the gateway and this process (clients, publisher, control) run.
struct Mode {
    name: &'static str,
    /// taskset CPU lists (`None`: not pinned); the gateway gets one worker
    /// thread per CPU of its list.
    gateway: Option<String>,
    clients: Option<String>,
}

fn modes() -> Vec<Mode> {
    if std::env::var("FANOUT_GATEWAY_CPUS").is_ok() || std::env::var("FANOUT_CLIENT_CPUS").is_ok() {
        let (gateway, clients) = (cpus("FANOUT_GATEWAY_CPUS"), cpus("FANOUT_CLIENT_CPUS"));
        return vec![Mode { name: "custom", gateway, clients }];
    }
    let t = have_taskset();
    let list = |l: &str| t.then(|| l.to_string());
    vec![
        Mode { name: "gateway on its own core", gateway: list("1"), clients: list("0") },
        Mode { name: "both cores shared", gateway: list("0-1"), clients: list("0-1") },
    ]
}

/// Pins this process's threads (the runtime's and any blocking-pool ones).
fn pin_self(list: &str) -> anyhow::Result<()> {
    let pid = std::process::id().to_string();
    let pinned = Command::new("taskset").args(["-a", "-p", "-c", list, &pid]).stdout(Stdio::null()).status()?;
    anyhow::ensure!(pinned.success(), "taskset -a -p -c {list} failed for this process");
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let counts: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let counts = if counts.is_empty() { vec![1_000, 10_000] } else { counts };
    let largest = counts.iter().copied().max().unwrap_or(0) as u64;
    let limit = open_files_limit();
    anyhow::ensure!(
        limit > largest + 100,
        "open-file limit {limit} is too low for {largest} clients: ulimit -n {}",
        largest + 1000
    );
    let sidecar = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(|d| d.join("redfire-sidecar"))
        .context("target dir")?;
    anyhow::ensure!(sidecar.exists(), "{} missing: cargo build --release --bin redfire-sidecar", sidecar.display());

    let dir = std::env::temp_dir().join(format!("redfire-ws-fanout-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let settings = Settings {
        grpc_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        ca_dir: Some(dir.join("ca").display().to_string()),
        log_level: Some("warn".into()),
        ..Default::default()
    };
    let config = Config::from_settings(settings).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ca = Ca::load(config.ca.clone()).await?;
    let control = Control::start(config).await?;
    let control_url = control.grpc_url();
    let control_ca = control.trust_bundle_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let policy = format!(
        "[jwt]\n[[jwt.issuers]]\nissuer = \"bench\"\naudiences = [\"bench\"]\nalgorithms = [\"HS256\"]\nkeys = [{{ secret = \"{SECRET}\" }}]\n\n[[topics]]\nname = \"bench\"\nsubscribe = [\"*\"]\n"
    );
    let mut policies =
        PolicyClient::new(control.operator_channel("ws-fanout", &["policy-admin"]).await.map_err(anyhow::Error::msg)?);
    policies.set(ppb::SetRequest { service: "gateway".into(), toml: policy }).await?;
    // The event bus ACL: the gateway (its workload certificate) may use the
    // bench topic; the publisher below is an operator.
    let acl = "[[event_acl]]\nname = \"bench\"\nsubscribe = [\"gateway\"]\npublish = [\"gateway\"]\n";
    policies.set(ppb::SetRequest { service: "redfire-control".into(), toml: acl.into() }).await?;
    let routes = dir.join("routes.toml");
    std::fs::write(&routes, "[[route]]\nname = \"none\"\npath_prefix = \"/\"\nservice = \"none\"\n")?;
    let bootstrap = token::create(&ca, "default", "gateway", Duration::from_secs(3600)).map_err(anyhow::Error::msg)?;
    let claims =
        serde_json::json!({ "iss": "bench", "aud": "bench", "sub": "bench", "exp": unix_us() / 1_000_000 + 3600 });
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?;
    let publisher_token = control.operator_token("ws-fanout", &["events-admin"]).map_err(anyhow::Error::msg)?;
    let mut publisher = EventsClient::connect(control.endpoint(), "bench", Some(&publisher_token)).await?;

    println!(
        "| placement | subscribers | connect s | p50 ms | p99 ms | max ms | deliveries | gateway CPU ms/event | clients CPU ms/event | RSS before MB | RSS idle MB | per conn KB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for mode in modes() {
        if let Some(list) = &mode.clients {
            pin_self(list)?;
        }
        let (gw_port, admin_port) = (free_port(), free_port());
        let mut command = match &mode.gateway {
            Some(list) => {
                let mut c = Command::new("taskset");
                c.args(["-c", list]).arg(&sidecar).args(["--worker-threads", &cpu_count(list).to_string()]);
                c
            }
            None => Command::new(&sidecar),
        };
        let child = command
            .args(["--mode", "gateway", "--service", "gateway", "--instance-id", "bench-gw"])
            .args(["--control-addr", &control_url, "--control-ca-file", &control_ca, "--bootstrap-token", &bootstrap])
            .args([
                "--gateway-addr",
                &format!("127.0.0.1:{gw_port}"),
                "--admin-addr",
                &format!("127.0.0.1:{admin_port}"),
            ])
            .args(["--routes", &routes.display().to_string(), "--log-level", "warn"])
            .args(["--gateway-max-connections", "100000", "--gateway-ws-max-per-user", "100000"])
            .args(["--gateway-idle-timeout", "10m"])
            .stdout(Stdio::null())
            .spawn()?;
        let gateway = Gateway(child);
        let gw = format!("127.0.0.1:{gw_port}");
        // Wait for the gateway to hold the policy: a handshake succeeds.
        let started = Instant::now();
        loop {
            if connect(&gw, &jwt).await.is_ok() {
                break;
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(20), "gateway not ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let place = format!(
            "{}: gateway CPUs {}, clients {}",
            mode.name,
            mode.gateway.as_deref().unwrap_or("any"),
            mode.clients.as_deref().unwrap_or("any")
        );
        for &n in &counts {
            let row = round(n, &gw, &jwt, gateway.0.id(), &mut publisher).await?;
            println!("| {place} | {row} |");
            // Let the gateway notice the closed connections before the next round.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    control.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One count: N clients connect and subscribe, then 20 events go out; the
/// table row (after the placement column).
async fn round(n: usize, gw: &str, jwt: &str, pid: u32, publisher: &mut EventsClient) -> anyhow::Result<String> {
    let before = rss_kib(pid);
    let t0 = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n * EVENTS)));
    let mut clients = tokio::task::JoinSet::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n);
    let connecting = Arc::new(tokio::sync::Semaphore::new(64));
    // Clients close only once every event is out: closes would otherwise be
    // served by the gateway in the middle of the last fan-out.
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    for _ in 0..n {
        let (gw, jwt, lat, ready, permits, mut done) =
            (gw.to_string(), jwt.to_string(), latencies.clone(), ready_tx.clone(), connecting.clone(), done_rx.clone());
        clients.spawn(async move {
            let permit = permits.acquire_owned().await.ok();
            let Ok(mut ws) = connect(&gw, &jwt).await else { return };
            let sub = serde_json::json!({ "type": "subscribe", "topic": "bench" }).to_string();
            if ws.send(OP_TEXT, sub.as_bytes()).await.is_err() {
                return;
            }
            // The ack.
            if ws.next_text().await.is_err() {
                return;
            }
            drop(permit);
            let _ = ready.send(()).await;
            // Receive time first (taken when the read returns); the stamp is
            // found without a full parse.
            let mut mine = Vec::with_capacity(EVENTS);
            while mine.len() < EVENTS {
                let Ok((text, now)) = ws.next_text().await else { break };
                if let Some(sent) = stamp(&text) {
                    mine.push((now - sent).max(0) as u64);
                }
            }
            lat.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
            let _ = done.wait_for(|d| *d).await;
            let _ = ws.send(OP_CLOSE, &1000u16.to_be_bytes()).await;
        });
    }
    drop(ready_tx);
    let mut connected = 0;
    while connected < n {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(())) => connected += 1,
            _ => break,
        }
    }
    let connect_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kib(pid);
    let cpu_before = cpu_ticks(pid);
    let own_before = cpu_ticks(std::process::id());
    for _ in 0..EVENTS {
        let data = serde_json::json!({ "t": unix_us() }).to_string().into_bytes();
        publisher.publish_domain_event("bench", "tick", "bench", "Bench", data).await?;
        tokio::time::sleep(SPACING).await;
    }
    let cpu_ms = (cpu_ticks(pid) - cpu_before) as f64 * 10.0 / EVENTS as f64;
    // This process: the clients, the publisher and control.
    let own_ms = (cpu_ticks(std::process::id()) - own_before) as f64 * 10.0 / EVENTS as f64;
    done_tx.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), async { while clients.join_next().await.is_some() {} }).await;
    clients.abort_all();
    let mut lat = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    lat.sort_unstable();
    let mb = |k: u64| k as f64 / 1024.0;
    Ok(format!(
        "{n} ({connected} connected) | {connect_s:.1} | {:.1} | {:.1} | {:.1} | {} | {cpu_ms:.1} | {own_ms:.1} | {:.1} | {:.1} | {:.1}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
        lat.len(),
        mb(before),
        mb(idle),
        idle.saturating_sub(before) as f64 / connected.max(1) as f64,
    ))
}

/// The publish stamp `"t":<µs>` inside an event message.
fn stamp(text: &[u8]) -> Option<i64> {
    let at = text.windows(4).position(|w| w == b"\"t\":")? + 4;
    let digits = text[at..].iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits]).ok()?.parse().ok()
}

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A minimal RFC 6455 client: masked frames out (a zero key: valid, and the
/// payload is sent as is), unmasked frames in, pings answered.
struct Client {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    at: usize,
}

async fn connect(gw: &str, jwt: &str) -> anyhow::Result<Client> {
    let mut tcp = TcpStream::connect(gw).await?;
    tcp.set_nodelay(true)?;
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {gw}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {jwt}\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        anyhow::ensure!(buf.len() < 16384, "response head too long");
        anyhow::ensure!(tcp.read_buf(&mut buf).await? > 0, "closed during the handshake");
    };
    anyhow::ensure!(buf.starts_with(b"HTTP/1.1 101"), "handshake refused: {}", String::from_utf8_lossy(&buf[..end]));
    Ok(Client { tcp, buf, at: end })
}

impl Client {
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut f = Vec::with_capacity(payload.len() + 8);
        f.push(0x80 | opcode);
        if payload.len() < 126 {
            f.push(0x80 | payload.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(&[0; 4]);
        f.extend_from_slice(payload);
        self.tcp.write_all(&f).await
    }

    /// The next complete frame in the buffer: (opcode, payload range).
    fn frame(&self) -> Option<(u8, std::ops::Range<usize>)> {
        let b = &self.buf[self.at..];
        if b.len() < 2 {
            return None;
        }
        let (len, head) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().ok()?) as usize, 10),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        (b.len() >= head + len).then(|| (b[0] & 0x0f, self.at + head..self.at + head + len))
    }

    /// The next text message and the time (µs) its read returned.
    async fn next_text(&mut self) -> anyhow::Result<(Vec<u8>, i64)> {
        let mut now = unix_us();
        loop {
            while let Some((op, range)) = self.frame() {
                self.at = range.end;
                match op {
                    OP_TEXT => return Ok((self.buf[range].to_vec(), now)),
                    OP_PING => {
                        let payload = self.buf[range].to_vec();
                        self.send(OP_PONG, &payload).await?;
                    }
                    OP_CLOSE => anyhow::bail!("closed by the gateway"),
                    _ => {}
                }
            }
            self.buf.drain(..self.at);
            self.at = 0;
            anyhow::ensure!(self.tcp.read_buf(&mut self.buf).await? > 0, "connection closed");
            now = unix_us();
        }
    }
}
