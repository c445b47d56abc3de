//! Run with: cargo run --release --example events_bench
//!
//! (`-- memory` or `-- redis` benches one store only.)
//!
//! Measures the event bus of an in-process `redfire-control` over gRPC on
//! both stores — in memory, and Redis at `redis://127.0.0.1:6379` under a
//! fresh `bench-<random>` prefix deleted afterwards — and raw Redis in the
//! same run, then prints one table:
//!
//! 1. **publish/s single**: 20,000 `Publish` calls of one event from 16
//!    concurrent tasks over 4 HTTP/2 connections; wall time gives the rate.
//! 2. **publish/s batch 100**: 2,000 `Publish` calls of 100 events, same tasks.
//! 3. **end-to-end p50/p99** at a fixed 10,000 events/s (a batch of 10 every
//!    millisecond, for 2 s) with 1 and with 10 consumers in one group, each a
//!    `Subscribe` stream acking every event: receive time − event time (the
//!    publisher stamps the event time; same host, same clock).
//! 4. **raw Redis**: XADD of the same 100-byte events pipelined 100 per round
//!    trip (200,000 events) and XREADGROUP COUNT 100 + XACK of them, from one
//!    connection: what Redis itself does on this machine.
//!
//! Everything shares the machine's cores: the client, the control and Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use redfire::control::config::{Config, Settings};
use redfire::control::server::Control;
use redfire::mesh::process::control_endpoint::OperatorChannel;
use redfire::proto::events::v1 as pb;
use redfire::proto::events::v1::events_client::EventsClient;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;

const REDIS: &str = "redis://127.0.0.1:6379";
const TASKS: usize = 16;
const SINGLE: usize = 20_000;
const BATCHES: usize = 2_000;
const RATE_SECS: u64 = 2;

fn unix_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

fn event(n: usize) -> pb::Event {
    let us = unix_us();
    pb::Event {
        r#type: "tick".into(),
        subject: format!("s-{}", n % 64),
        time: Some(prost_types::Timestamp { seconds: us / 1_000_000, nanos: ((us % 1_000_000) * 1000) as i32 }),
        datacontenttype: "application/json".into(),
        data: format!("{{\"px\":\"86000.{:04}\",\"qty\":{}}}", n % 10_000, n % 7).into_bytes(),
        ..Default::default()
    }
}

fn entries(events: Vec<pb::Event>) -> Vec<pb::PublishEntry> {
    events.into_iter().map(|e| pb::PublishEntry { event: Some(e), idempotency_key: String::new() }).collect()
}

/// Four clients calling as an `events-admin` operator (authorization on:
/// every call goes through control's authorization layer).
async fn clients(control: &Control) -> anyhow::Result<Vec<EventsClient<OperatorChannel>>> {
    let mut out = Vec::new();
    for _ in 0..4 {
        let ch = control.operator_channel("events-bench", &["events-admin"]).await.map_err(anyhow::Error::msg)?;
        out.push(EventsClient::new(ch).max_decoding_message_size(64 << 20));
    }
    Ok(out)
}

/// Events/s publishing `total_calls` calls of `batch` events from TASKS tasks.
async fn publish_rate(
    cs: &[EventsClient<OperatorChannel>],
    topic: &str,
    total_calls: usize,
    batch: usize,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let mut c = cs[t % cs.len()].clone();
        let (next, topic) = (next.clone(), topic.to_string());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total_calls {
                let events = (0..batch).map(event).collect();
                c.publish(pb::PublishRequest { topic: topic.clone(), events: entries(events) }).await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((total_calls * batch) as f64 / started.elapsed().as_secs_f64())
}

/// p50 and p99 (ms) of end-to-end latency at 10,000 events/s with `consumers`.
async fn latency(
    cs: &[EventsClient<OperatorChannel>],
    topic: &str,
    consumers: usize,
) -> anyhow::Result<(f64, f64, usize)> {
    let total = 10_000 * RATE_SECS as usize;
    let samples = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let received = Arc::new(AtomicUsize::new(0));
    let mut subs = Vec::new();
    for i in 0..consumers {
        let mut c = cs[i % cs.len()].clone();
        let (tx, rx) = mpsc::channel(4096);
        let open = pb::Open {
            topics: vec![topic.into()],
            group: "bench".into(),
            consumer: format!("c{i}"),
            max_in_flight: 1000,
            start: pb::StartFrom::Latest as i32,
        };
        tx.send(pb::SubscribeRequest { command: Some(pb::subscribe_request::Command::Open(open)) }).await?;
        let mut stream = c.subscribe(ReceiverStream::new(rx)).await?.into_inner();
        stream.message().await?.context("opened")?;
        let (samples, received) = (samples.clone(), received.clone());
        subs.push(tokio::spawn(async move {
            let mut local = Vec::new();
            while let Ok(Some(m)) = stream.message().await {
                let Some(pb::subscribe_response::Message::Delivery(d)) = m.message else { continue };
                let t = d.event.as_ref().and_then(|e| e.time).unwrap_or_default();
                let sent = t.seconds * 1_000_000 + i64::from(t.nanos / 1000);
                local.push((unix_us() - sent) as f64 / 1000.0);
                let ack = pb::Ack { topic: d.topic, position: d.position };
                let _ = tx.send(pb::SubscribeRequest { command: Some(pb::subscribe_request::Command::Ack(ack)) }).await;
                if received.fetch_add(1, Ordering::Relaxed) + 1 >= total {
                    break;
                }
                if local.len() >= 256 {
                    samples.lock().await.append(&mut local);
                }
            }
            samples.lock().await.append(&mut local);
        }));
    }
    let mut c = cs[0].clone();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for n in 0..total / 10 {
        tick.tick().await;
        let events = (0..10).map(|i| event(n * 10 + i)).collect();
        c.publish(pb::PublishRequest { topic: topic.into(), events: entries(events) }).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for s in &subs {
        s.abort();
    }
    let mut v = std::mem::take(&mut *samples.lock().await);
    v.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(f64::NAN);
    Ok((pick(0.50), pick(0.99), received.load(Ordering::Relaxed)))
}

struct Row {
    store: String,
    single: f64,
    batch: f64,
    lat: Vec<(usize, f64, f64, usize)>,
}

async fn bench_store(store: &str) -> anyhow::Result<Row> {
    let prefix = format!("bench-{:08x}", fastrand::u32(..));
    let ca_dir = std::env::temp_dir().join(format!("redfire-events-bench-{}", std::process::id()));
    let settings = Settings {
        grpc_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        log_level: Some("warn".into()),
        ca_dir: Some(ca_dir.display().to_string()),
        store: Some(store.into()),
        redis_url: Some(REDIS.into()),
        redis_prefix: Some(prefix.clone()),
        events_max_len: Some("0".into()),
        ..Default::default()
    };
    let control = Control::start(Config::from_settings(settings)?).await?;
    let cs = clients(&control).await?;
    let single = publish_rate(&cs, "single", SINGLE, 1).await?;
    let batch = publish_rate(&cs, "batch", BATCHES, 100).await?;
    let mut lat = Vec::new();
    for consumers in [1, 10] {
        let (p50, p99, n) = latency(&cs, &format!("rate-{consumers}"), consumers).await?;
        lat.push((consumers, p50, p99, n));
    }
    control.shutdown();
    control.wait().await?;
    if store == "redis" {
        let client = redis::Client::open(REDIS)?;
        let mut c = client.get_multiplexed_async_connection().await?;
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{{{prefix}:*")).query_async(&mut c).await?;
        for k in keys {
            let _: i64 = redis::cmd("DEL").arg(k).query_async(&mut c).await?;
        }
    }
    let _ = std::fs::remove_dir_all(ca_dir);
    Ok(Row { store: store.into(), single, batch, lat })
}

/// Raw Redis: (XADD pipelined events/s, XREADGROUP+XACK events/s).
async fn raw_redis() -> anyhow::Result<(f64, f64)> {
    use prost::Message;
    let client = redis::Client::open(REDIS)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let key = format!("bench-raw-{:08x}", fastrand::u32(..));
    let total = 200_000;
    let started = Instant::now();
    for chunk in 0..total / 100 {
        let mut p = redis::pipe();
        for i in 0..100 {
            p.cmd("XADD").arg(&key).arg("*").arg("e").arg(event(chunk * 100 + i).encode_to_vec()).arg("s").arg("s-1");
        }
        let _: Vec<String> = p.query_async(&mut c).await?;
    }
    let xadd = total as f64 / started.elapsed().as_secs_f64();
    let _: () = redis::cmd("XGROUP").arg("CREATE").arg(&key).arg("g").arg("0").query_async(&mut c).await?;
    let started = Instant::now();
    let mut read = 0;
    while read < total {
        let r: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(100)
            .arg("STREAMS")
            .arg(&key)
            .arg(">")
            .query_async(&mut c)
            .await?;
        let ids: Vec<String> = r.keys.into_iter().flat_map(|k| k.ids).map(|e| e.id).collect();
        if ids.is_empty() {
            break;
        }
        read += ids.len();
        let _: i64 = redis::cmd("XACK").arg(&key).arg("g").arg(&ids).query_async(&mut c).await?;
    }
    let xread = read as f64 / started.elapsed().as_secs_f64();
    let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut c).await?;
    Ok((xadd, xread))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let only = std::env::args().nth(1);
    let mut rows = Vec::new();
    for store in ["memory", "redis"] {
        if only.as_deref().is_some_and(|o| o != store) {
            continue;
        }
        eprintln!("benching the {store} store ...");
        rows.push(bench_store(store).await.with_context(|| format!("{store} store"))?);
    }
    let raw = if only.as_deref() != Some("memory") { Some(raw_redis().await.context("raw redis")?) } else { None };
    println!();
    println!(
        "| store | publish/s single | publish/s batch 100 | e2e p50 / p99 ms, 1 consumer | e2e p50 / p99 ms, 10 consumers |"
    );
    println!("|---|---|---|---|---|");
    for r in &rows {
        let cell = |i: usize| {
            let (_, p50, p99, n) = r.lat[i];
            let lost = if n < 10_000 * RATE_SECS as usize { format!(" (only {n} received)") } else { String::new() };
            format!("{p50:.2} / {p99:.2}{lost}")
        };
        println!("| {} | {:.0} | {:.0} | {} | {} |", r.store, r.single, r.batch, cell(0), cell(1));
    }
    if let Some((xadd, xread)) = raw {
        println!("| raw redis | XADD pipelined 100: {xadd:.0} | | XREADGROUP 100 + XACK: {xread:.0} | |");
        if let Some(r) = rows.iter().find(|r| r.store == "redis") {
            println!("\nredis batched publish / raw XADD pipelined = {:.2} (target >= 0.5)", r.batch / xadd);
        }
    }
    Ok(())
}
