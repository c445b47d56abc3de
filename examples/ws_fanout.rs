//! Run with: cargo run --release --example ws_fanout -- [subscribers...]
//!
//! (Default: `1000 10000`. Build the sidecar first: `cargo build --release
//! --bin redfire-sidecar`; the open-file limit must exceed the largest count
//! plus ~100 in this process and in the gateway: `ulimit -n 20000`.)
//!
//! WebSocket fan-out of the gateway's topic hub. An in-process control
//! (memory store) and a gateway run as a child process
//! (`target/release/redfire-sidecar --mode gateway`), so the gateway's RSS is
//! its own. For each count N: N WebSocket clients (in this process, one
//! token, one user) connect to `/ws` and subscribe to topic `bench`; the
//! gateway's VmRSS is read before and after (idle connections); then 20
//! events are published through control, one at a time, 500 ms apart (one
//! fan-out ends before the next starts), each stamped with its publish
//! time, and every client records receive time − publish time. The table
//! gives delivery latency p50/p99 over all N × 20 deliveries, the gateway's
//! CPU time per event (utime + stime from /proc), this process's (clients,
//! publisher and control) and the gateway's RSS. Clients,
//! control and gateway share the machine's cores, so the latency includes
//! the clients' own reads and scheduling.
//!
//! Targets: p99 ≤ 100 ms at 10,000 subscribers; 10,000 idle connections in
//! ≤ 200 MB of gateway RSS.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use redfire::control::config::{Config, Settings};
use redfire::control::events::client::EventsClient;
use redfire::control::events::model::unix_us;
use redfire::control::identity::ca::Ca;
use redfire::control::identity::token;
use redfire::control::server::Control;
use redfire::proto::policy::v1 as ppb;
use redfire::proto::policy::v1::policy_client::PolicyClient;
use tokio::net::TcpStream;
use tokio_tungstenite::client_async;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
    let control_url = format!("http://{}", control.grpc_addr);
    let policy = format!(
        "[jwt]\n[[jwt.issuers]]\nissuer = \"bench\"\naudiences = [\"bench\"]\nalgorithms = [\"HS256\"]\nkeys = [{{ secret = \"{SECRET}\" }}]\n\n[[topics]]\nname = \"bench\"\nsubscribe = [\"*\"]\n"
    );
    PolicyClient::connect(control_url.clone())
        .await?
        .set(ppb::SetRequest { service: "gateway".into(), toml: policy })
        .await?;
    let routes = dir.join("routes.toml");
    std::fs::write(&routes, "[[route]]\nname = \"none\"\npath_prefix = \"/\"\nservice = \"none\"\n")?;
    let (gw_port, admin_port) = (free_port(), free_port());
    let bootstrap = token::create(&ca, "default", "gateway", Duration::from_secs(3600)).map_err(anyhow::Error::msg)?;
    let child = Command::new(&sidecar)
        .args(["--mode", "gateway", "--service", "gateway", "--instance-id", "bench-gw"])
        .args(["--control-addr", &control_url, "--bootstrap-token", &bootstrap])
        .args(["--gateway-addr", &format!("127.0.0.1:{gw_port}"), "--admin-addr", &format!("127.0.0.1:{admin_port}")])
        .args(["--routes", &routes.display().to_string(), "--log-level", "warn"])
        .args(["--gateway-max-connections", "100000", "--gateway-ws-max-per-user", "100000"])
        .args(["--gateway-idle-timeout", "10m"])
        .stdout(Stdio::null())
        .spawn()?;
    let gateway = Gateway(child);
    let pid = gateway.0.id();
    let gw = format!("127.0.0.1:{gw_port}");
    let claims =
        serde_json::json!({ "iss": "bench", "aud": "bench", "sub": "bench", "exp": unix_us() / 1_000_000 + 3600 });
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?;
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
    let mut publisher = EventsClient::connect(&control_url, "bench").await?;

    println!(
        "| subscribers | connect s | p50 ms | p99 ms | max ms | deliveries | gateway CPU ms/event | clients CPU ms/event | RSS before MB | RSS idle MB | per conn KB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for n in counts {
        let before = rss_kib(pid);
        let t0 = Instant::now();
        let latencies = Arc::new(Mutex::new(Vec::with_capacity(n * EVENTS)));
        let mut clients = tokio::task::JoinSet::new();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n);
        let connecting = Arc::new(tokio::sync::Semaphore::new(64));
        for _ in 0..n {
            let (gw, jwt, lat, ready, permits) =
                (gw.clone(), jwt.clone(), latencies.clone(), ready_tx.clone(), connecting.clone());
            clients.spawn(async move {
                let permit = permits.acquire_owned().await.ok();
                let Ok(mut ws) = connect(&gw, &jwt).await else { return };
                let sub = serde_json::json!({ "type": "subscribe", "topic": "bench" }).to_string();
                if ws.send(Message::Text(sub.into())).await.is_err() {
                    return;
                }
                // The ack.
                let _ = ws.next().await;
                drop(permit);
                let _ = ready.send(()).await;
                // Receive time first; the stamp is found without a full parse.
                let mut mine = Vec::with_capacity(EVENTS);
                while mine.len() < EVENTS {
                    let Some(Ok(Message::Text(t))) = ws.next().await else { continue };
                    let now = unix_us();
                    if let Some(sent) = stamp(&t) {
                        mine.push((now - sent).max(0) as u64);
                    }
                }
                lat.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
                let _ = ws.close(None).await;
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
        let _ =
            tokio::time::timeout(Duration::from_secs(30), async { while clients.join_next().await.is_some() {} }).await;
        clients.abort_all();
        let mut lat = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
        lat.sort_unstable();
        let mb = |k: u64| k as f64 / 1024.0;
        println!(
            "| {n} ({connected} connected) | {connect_s:.1} | {:.1} | {:.1} | {:.1} | {} | {cpu_ms:.1} | {own_ms:.1} | {:.1} | {:.1} | {:.1} |",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            percentile(&lat, 1.0),
            lat.len(),
            mb(before),
            mb(idle),
            idle.saturating_sub(before) as f64 / connected.max(1) as f64,
        );
        // Let the gateway notice the closed connections before the next round.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    drop(gateway);
    control.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The publish stamp `"t":<µs>` inside an event message.
fn stamp(text: &str) -> Option<i64> {
    let at = text.find("\"t\":")? + 4;
    let digits: String = text[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

async fn connect(gw: &str, jwt: &str) -> anyhow::Result<tokio_tungstenite::WebSocketStream<TcpStream>> {
    let mut req = format!("ws://{gw}/ws").into_client_request()?;
    req.headers_mut().insert("authorization", format!("Bearer {jwt}").parse()?);
    let tcp = TcpStream::connect(gw).await?;
    let (ws, _) = client_async(req, tcp).await?;
    Ok(ws)
}
