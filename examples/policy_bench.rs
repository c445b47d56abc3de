//! Run with: cargo run --release --example policy_bench
//!
//! (`-- --seconds N` sets each scenario's duration, default 5.)
//!
//! What policy costs at the inbound sidecar. One process runs control (in
//! memory), a unary h2c app, the app's sidecar and a client sidecar; the
//! load goes app client → client sidecar → mTLS → the app's sidecar (where
//! the policy is enforced) → app, over 127.0.0.1. Scenarios run in one run,
//! one after the other, on the same mesh, switching the policy through
//! control's API (so also exercising hot reload):
//!
//! 1. **off, HS256 token** — no policy; requests carry the HS256 token anyway;
//! 2. **HS256 + RBAC** — JWT (HS256) and one RBAC rule on the gRPC method;
//! 3. **off, RS256 token** — no policy; requests carry the RS256 token;
//! 4. **RS256 + RBAC** — the same with an RS256 (2048-bit) key;
//!
//! then all four again (round 2), so the spread between rounds shows how
//! much of a difference is the machine's noise.
//!
//! Each policy row is compared with the "off" row before it, which sends the
//! same bytes: a token travels as a never-indexed `authorization` header
//! (h2 does not put it in the HPACK table), so an RS256 token (~560 bytes)
//! costs throughput on every hop whether or not anything checks it. The
//! comparison isolates what checking costs.
//!
//! Each scenario: 64 requests in flight (16 on each of 4 HTTP/2 connections)
//! for N seconds; every request carries the same valid token, as one user's
//! session does, so the verified-token cache (keyed by the full token bytes
//! and the key-set generation, never past `exp`) answers after the first.
//! req/s = completed / N; p50/p99 by nearest rank over every latency.
//!
//! A second table times `Compiled::check` alone (no I/O), per call, for a
//! cached token and for distinct tokens that each miss the cache: the raw
//! verification cost the cache saves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use redfire::control::authz::token;
use redfire::control::config::{Config, Settings};
use redfire::control::identity::ca::Ca;
use redfire::control::server::Control;
use redfire::mesh::jwks::JwksRegistry;
use redfire::mesh::policy::parse_toml;
use redfire::proto::policy::v1 as pb;
use redfire::proto::policy::v1::policy_client::PolicyClient;
use redfire::sidecar::config::{Config as SidecarConfig, Settings as SidecarSettings};
use redfire::sidecar::policy::Compiled;
use redfire::sidecar::server::Sidecar;
use serde_json::json;

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

const RSA_PRIVATE: &str = include_str!("../tests/fixtures/jwt/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("../tests/fixtures/jwt/rsa_public.pem");
const SECRET: &str = "a-bench-secret-of-at-least-32-bytes!";
const CONNECTIONS: usize = 4;
const PER_CONNECTION: usize = 16;

fn policy(alg: &str) -> String {
    let key = if alg == "HS256" {
        format!("{{ secret = \"{SECRET}\" }}")
    } else {
        format!("{{ pem = \"\"\"{RSA_PUBLIC}\"\"\" }}")
    };
    format!(
        r#"
[[jwt.issuers]]
issuer = "https://auth.bench"
audiences = ["echo"]
algorithms = ["{alg}"]
keys = [{key}]
[rbac]
roles = {{ trader = ["orders.write"] }}
[[rbac.rules]]
grpc = "bench.v1.Bench/Call"
permission = "orders.write"
"#
    )
}

fn token(alg: Algorithm, sub: &str) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims =
        json!({ "iss": "https://auth.bench", "aud": "echo", "sub": sub, "roles": ["trader"], "exp": now + 3600 });
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        _ => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("fixture key"),
    };
    jsonwebtoken::encode(&Header::new(alg), &claims, &key).expect("sign")
}

async fn app() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    let frames =
                        vec![Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02ok"))), Ok(Frame::trailers(trailers))];
                    let body: BoxBody = StreamBody::new(futures::stream::iter(frames)).boxed_unsync();
                    let mut resp = Response::new(body);
                    resp.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return String::new() };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).to_string()
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) -> anyhow::Result<()> {
    for _ in 0..500 {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("timed out waiting for {what}")
}

struct Run {
    requests: usize,
    errors: usize,
    latencies: Vec<Duration>,
}

async fn load(listener: SocketAddr, auth: Option<String>, seconds: u64) -> anyhow::Result<Run> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let tcp = tokio::net::TcpStream::connect(listener).await?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, BoxBody>(TokioIo::new(tcp))
            .await?;
        tokio::spawn(conn);
        for _ in 0..PER_CONNECTION {
            let (mut sender, stop, auth) = (sender.clone(), stop.clone(), auth.clone());
            tasks.spawn(async move {
                let (mut lat, mut errors) = (Vec::with_capacity(100_000), 0usize);
                while !stop.load(Ordering::Relaxed) {
                    let mut b = Request::post("http://echo/bench.v1.Bench/Call")
                        .header("content-type", "application/grpc")
                        .header("te", "trailers");
                    if let Some(a) = &auth {
                        b = b.header("authorization", a.as_str());
                    }
                    let body =
                        Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")).map_err(|n| match n {}).boxed_unsync();
                    let Ok(req) = b.body(body) else { break };
                    let started = Instant::now();
                    let ok = match sender.send_request(req).await {
                        Ok(resp) => {
                            let status = resp.status();
                            let collected = resp.into_body().collect().await.ok();
                            let grpc_ok = collected
                                .as_ref()
                                .and_then(|c| c.trailers())
                                .and_then(|t| t.get("grpc-status"))
                                .is_some_and(|s| s == "0");
                            status == 200 && grpc_ok
                        }
                        Err(_) => false,
                    };
                    lat.push(started.elapsed());
                    if !ok {
                        errors += 1;
                    }
                }
                (lat, errors)
            });
        }
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut run = Run { requests: 0, errors: 0, latencies: Vec::new() };
    while let Some(r) = tasks.join_next().await {
        let (lat, errors) = r?;
        run.requests += lat.len();
        run.errors += errors;
        run.latencies.extend(lat);
    }
    run.latencies.sort();
    Ok(run)
}

fn rank(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds = match std::env::args().skip_while(|a| a != "--seconds").nth(1) {
        Some(s) => s.parse().context("--seconds N")?,
        None => 5u64,
    };
    let ca_dir = std::env::temp_dir().join(format!("redfire-policy-bench-{}", std::process::id()));
    let settings = Settings {
        grpc_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        log_level: Some("error".into()),
        ca_dir: Some(ca_dir.display().to_string()),
        ..Default::default()
    };
    let control = Control::start(Config::from_settings(settings.clone())?).await?;
    let ca = Ca::load(Config::from_settings(settings)?.ca).await?;
    let app = app().await?;
    let sidecar = |service: &str, upstreams: Option<String>, app_addr: String| -> anyhow::Result<SidecarConfig> {
        let tok = token::create(&ca, "default", service, Duration::from_secs(3600)).map_err(anyhow::Error::msg)?;
        Ok(SidecarConfig::from_settings(SidecarSettings {
            control_addr: Some(control.grpc_url()),
            control_ca_file: control.trust_bundle_file.as_ref().map(|p| p.display().to_string()),
            service: Some(service.into()),
            bootstrap_token: Some(tok),
            inbound_addr: Some("127.0.0.1:0".into()),
            outbound_addr: Some("127.0.0.1:0".into()),
            admin_addr: Some("127.0.0.1:0".into()),
            upstreams,
            app_addr: Some(app_addr),
            app_protocol: Some("h2c".into()),
            log_level: Some("error".into()),
            ..Default::default()
        })?)
    };
    let server = Sidecar::start(sidecar("echo", None, app.to_string())?).await?;
    let client = Sidecar::start(sidecar("client", Some("echo=127.0.0.1:0".into()), "127.0.0.1:9".into())?).await?;
    let listener = client.upstream_addrs[0].1;
    let port = format!("\"address\": \"127.0.0.1:{}\"", server.inbound_addr.port());
    wait_for("both sidecars ready", async || {
        get(server.admin_addr, "/ready").await.contains(" 200 ")
            && get(client.admin_addr, "/ready").await.contains(" 200 ")
            && get(client.admin_addr, "/admin/endpoints").await.contains(&port)
    })
    .await?;
    let mut api = PolicyClient::new(
        control.operator_channel("policy-bench", &["policy-admin"]).await.map_err(anyhow::Error::msg)?,
    );

    println!(
        "policy at the inbound sidecar: {CONNECTIONS}x{PER_CONNECTION} requests in flight, {seconds} s per scenario\n"
    );
    println!("| scenario | req/s | p50 | p99 | errors | req/s vs off with the same token |");
    println!("|---|---:|---:|---:|---:|---:|");
    let hs = format!("Bearer {}", token(Algorithm::HS256, "u1"));
    let rs = format!("Bearer {}", token(Algorithm::RS256, "u1"));
    let scenarios: [(&str, Option<String>, Option<String>); 4] = [
        ("off, HS256 token sent", None, Some(hs.clone())),
        ("JWT HS256 + RBAC", Some(policy("HS256")), Some(hs)),
        ("off, RS256 token sent", None, Some(rs.clone())),
        ("JWT RS256 + RBAC", Some(policy("RS256")), Some(rs)),
    ];
    let mut baseline = 0.0;
    // Two rounds: the spread between them shows the machine's noise.
    for (round, (name, toml, auth)) in scenarios.iter().chain(scenarios.iter()).cloned().enumerate() {
        let name = format!("{name} (round {})", round / scenarios.len() + 1);
        let version = match toml {
            Some(t) => api.set(pb::SetRequest { service: "echo".into(), toml: t }).await?.into_inner().version,
            None => {
                api.delete(pb::DeleteRequest { service: "echo".into() }).await?;
                0
            }
        };
        let want = format!("\"policy_version\": {version}");
        wait_for("the policy in force", async || get(server.admin_addr, "/admin/config").await.contains(&want)).await?;
        let run = load(listener, auth, seconds).await?;
        let rps = run.requests as f64 / seconds as f64;
        let vs = if version == 0 {
            baseline = rps;
            String::new()
        } else {
            format!("{:+.1} %", (rps / baseline - 1.0) * 100.0)
        };
        println!(
            "| {name} | {rps:.0} | {:.2} ms | {:.2} ms | {} | {vs} |",
            rank(&run.latencies, 0.50).as_secs_f64() * 1e3,
            rank(&run.latencies, 0.99).as_secs_f64() * 1e3,
            run.errors,
        );
    }

    println!("\n`Compiled::check` alone (no I/O), per call:\n");
    println!("| token | calls | per call |");
    println!("|---|---:|---:|");
    let registry = JwksRegistry::default();
    for (alg, name, distinct) in [(Algorithm::HS256, "HS256", 2000usize), (Algorithm::RS256, "RS256", 300)] {
        let doc = parse_toml(&policy(name), "bench", "echo").map_err(anyhow::Error::msg)?;
        let compiled = Compiled::new(1, &doc, &registry).map_err(anyhow::Error::msg)?;
        let parts = |t: &str| {
            Request::post("http://echo/bench.v1.Bench/Call")
                .header("authorization", format!("Bearer {t}"))
                .body(())
                .map(|r| r.into_parts().0)
        };
        let one = parts(&token(alg, "u1"))?;
        let calls = 20_000;
        let started = Instant::now();
        for _ in 0..calls {
            compiled.check(&one, None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        println!(
            "| {name}, same token (cache hit) | {calls} | {:.1} µs |",
            started.elapsed().as_secs_f64() * 1e6 / calls as f64
        );
        let many: Vec<_> = (0..distinct).map(|i| parts(&token(alg, &format!("u{i}")))).collect::<Result<_, _>>()?;
        let started = Instant::now();
        for p in &many {
            compiled.check(p, None).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        println!(
            "| {name}, distinct tokens (cache miss) | {distinct} | {:.1} µs |",
            started.elapsed().as_secs_f64() * 1e6 / distinct as f64
        );
    }

    client.shutdown();
    server.shutdown();
    control.shutdown();
    let _ = std::fs::remove_dir_all(ca_dir);
    Ok(())
}
