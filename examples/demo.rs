//! Run with: cargo run --example demo
//!
//! The mesh at work, on the embedded in-memory store (no Redis), all in this
//! process and on 127.0.0.1:
//!
//! 1. The registry: starts `redfire-control`, holds a Watch like a sidecar
//!    does, and drives a few instances through their life — register, health
//!    changes through the lease, deregistration, and a lease that lapses
//!    because its owner "crashed". Every change the Watch receives is printed
//!    as it arrives, with its revision. Control's API is TLS and every call
//!    is authorized: the demo acts as an operator with the `registry-admin`
//!    role (a token signed by control's CA), and shows an anonymous client
//!    refused.
//! 2. A call through the mesh: a `quotes` app behind its sidecar, and a
//!    `strategy` sidecar whose app calls `127.0.0.1:<port>` to reach `quotes`.
//!    Both sidecars get SPIFFE certificates from control's CA, find each other
//!    through the registry, and the call crosses HTTP/2 over mTLS; the app
//!    sees the caller's verified identity.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use redfire::control::authz::token;
use redfire::control::config::{Config, Settings};
use redfire::control::identity::ca::Ca;
use redfire::control::server::Control;
use redfire::mesh::process::control_endpoint::BearerToken;
use redfire::proto::registry::v1 as pb;
use redfire::proto::registry::v1::registry_client::RegistryClient;
use redfire::sidecar::config::{Config as SidecarConfig, Settings as SidecarSettings};
use redfire::sidecar::server::Sidecar;
use tokio_stream::StreamExt;

fn instance(service: &str, id: &str, port: u32, zone: &str) -> pb::Instance {
    pb::Instance {
        service: service.into(),
        instance_id: id.into(),
        address: "127.0.0.1".into(),
        ports: Some(pb::Ports { grpc: Some(port), http: None, admin: None }),
        zone: zone.into(),
        version: "1.0.0".into(),
        ..Default::default()
    }
}

fn describe(m: &pb::WatchResponse) -> String {
    let health = |i: &pb::Instance| pb::Health::try_from(i.health).map(|h| h.as_str_name()).unwrap_or("?");
    match &m.event {
        Some(pb::watch_response::Event::Snapshot(s)) => {
            format!("rev {:>2}  SNAPSHOT  {} instance(s)", m.revision, s.instances.len())
        }
        Some(pb::watch_response::Event::Change(c)) => {
            let i = c.instance.clone().unwrap_or_default();
            let kind = if c.r#type == pb::ChangeType::Put as i32 { "PUT   " } else { "DELETE" };
            let why = if c.reason.is_empty() { String::new() } else { format!("  ({})", c.reason) };
            let port = i.ports.and_then(|p| p.grpc).unwrap_or(0);
            format!(
                "rev {:>2}  {kind}    {}/{}  {}:{}  zone={} health={}{why}",
                m.revision,
                i.service,
                i.instance_id,
                i.address,
                port,
                i.zone,
                health(&i)
            )
        }
        None => "?".into(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ca_dir = std::env::temp_dir().join(format!("redfire-demo-ca-{}", std::process::id()));
    let settings = Settings {
        grpc_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        ca_dir: Some(ca_dir.display().to_string()),
        log_level: Some("warn".into()),
        ..Default::default()
    };
    let config = Config::from_settings(settings)?;
    let ca = Ca::load(config.ca.clone()).await?;
    let control = Control::start(config).await?;
    println!("redfire-control (in-memory store) on {} (TLS) / admin {}", control.grpc_url(), control.admin_addr);
    println!("watching every service:\n");

    // Control's API is TLS; this client trusts control's CA (the bundle
    // control wrote to its ca_dir), as a sidecar does, and calls as an
    // operator allowed to register any service.
    let channel = control.endpoint().connect().await?;
    let anonymous = RegistryClient::new(channel.clone())
        .register(pb::RegisterRequest { instance: Some(instance("orders", "intruder", 9666, "a")), ttl_ms: 0 })
        .await;
    if let Err(refused) = anonymous {
        println!(
            "an anonymous Register is refused: {:?}: {}
",
            refused.code(),
            refused.message()
        );
    }
    let token = control.operator_token("demo", &["registry-admin"]).map_err(anyhow::Error::msg)?;
    let mut client =
        RegistryClient::with_interceptor(channel, BearerToken::new(token.as_str()).map_err(anyhow::Error::msg)?);
    let mut watch = client.watch(pb::WatchRequest::default()).await?.into_inner();
    let printer = tokio::spawn(async move {
        while let Some(Ok(m)) = watch.next().await {
            println!("  {}", describe(&m));
        }
    });
    let pause = || tokio::time::sleep(Duration::from_millis(300));

    let mut leases = Vec::new();
    for (svc, id, port, zone) in
        [("orders", "orders-1", 9001, "a"), ("orders", "orders-2", 9002, "b"), ("users", "users-1", 9101, "a")]
    {
        let r =
            client.register(pb::RegisterRequest { instance: Some(instance(svc, id, port, zone)), ttl_ms: 0 }).await?;
        leases.push(r.into_inner().lease_id);
        pause().await;
    }

    // orders-1 reports itself draining through its lease, then comes back.
    for health in [pb::Health::Draining, pb::Health::Serving] {
        let renew = pb::KeepAliveRequest { lease_id: leases[0], health: health as i32 };
        let mut s = client.keep_alive(tokio_stream::iter(vec![renew])).await?.into_inner();
        s.message().await?.context("renewal answered")?;
        pause().await;
    }

    // users-1 leaves politely.
    client.deregister(pb::DeregisterRequest { lease_id: leases[2] }).await?;
    pause().await;

    // A crashed instance: a 1 s lease that nobody renews.
    let crashed = instance("strategies", "strategy-7", 9201, "a");
    client.register(pb::RegisterRequest { instance: Some(crashed), ttl_ms: 1000 }).await?;
    println!("\n  (strategy-7 stops renewing its 1 s lease ...)\n");
    tokio::time::sleep(Duration::from_millis(1600)).await;

    let services = client.list_services(pb::ListServicesRequest {}).await?.into_inner();
    println!("\nservices now (revision {}):", services.revision);
    for s in services.services {
        println!("  {:<10} {} instance(s), {} serving", s.service, s.instances, s.serving);
    }

    println!("\n--- a call through the mesh ---\n");
    call_through_the_mesh(&control, &ca).await?;

    control.shutdown();
    control.wait().await?;
    let _ = tokio::time::timeout(Duration::from_secs(1), printer).await;
    let _ = std::fs::remove_dir_all(&ca_dir);
    Ok(())
}

/// An HTTP/1.1 `quotes` app that names its caller, two sidecars, one call.
async fn call_through_the_mesh(control: &Control, ca: &Ca) -> anyhow::Result<()> {
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app_addr = app.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = app.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let caller = req.headers().get("x-redfire-peer-identity").cloned();
                    let caller = caller.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("nobody").to_string();
                    let body = format!("quote for {}: 101.25 (asked by {caller})\n", req.uri().path());
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(Bytes::from(body))))
                });
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
    let sidecar = |service: &str, app: String, upstreams: Option<String>| -> anyhow::Result<SidecarConfig> {
        let token = token::create(ca, "default", service, Duration::from_secs(600)).map_err(anyhow::Error::msg)?;
        Ok(SidecarConfig::from_settings(SidecarSettings {
            control_addr: Some(control.grpc_url()),
            control_ca_file: control.trust_bundle_file.as_ref().map(|p| p.display().to_string()),
            service: Some(service.into()),
            bootstrap_token: Some(token),
            inbound_addr: Some("127.0.0.1:0".into()),
            outbound_addr: Some("127.0.0.1:0".into()),
            admin_addr: Some("127.0.0.1:0".into()),
            app_addr: Some(app),
            app_protocol: Some("http1".into()),
            upstreams,
            shutdown_grace: Some("1s".into()),
            ..Default::default()
        })?)
    };
    let quotes = Sidecar::start(sidecar("quotes", app_addr.to_string(), None)?).await?;
    let strategy =
        Sidecar::start(sidecar("strategy", "127.0.0.1:9".into(), Some("quotes=127.0.0.1:0".into()))?).await?;
    let listener = strategy.upstream_addrs[0].1;
    println!("quotes app on {app_addr}, its sidecar's mTLS inbound on {}", quotes.inbound_addr);
    println!("strategy's sidecar: quotes = {listener} (what the strategy app calls)\n");

    // The sidecars need their certificates and each other's registration: a
    // few hundred milliseconds. Retry the first call until then (bounded).
    let mut answer = None;
    for _ in 0..50 {
        match get(listener, "/quotes/ES-DEC26").await {
            Ok((200, body)) => {
                answer = Some(body);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let body = answer.context("the call through the mesh did not succeed within 5 s")?;
    println!("GET http://{listener}/quotes/ES-DEC26  ->  200");
    println!("  {}", body.trim());
    println!("  (strategy sidecar -> HTTP/2 over mTLS -> quotes sidecar -> app; the caller's SPIFFE ID");
    println!("   comes from its certificate, checked in the handshake)");
    strategy.shutdown();
    quotes.shutdown();
    strategy.wait().await;
    quotes.wait().await;
    Ok(())
}

/// A plain HTTP/1.1 GET, as any app would send it.
async fn get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path).header("host", "quotes").body(http_body_util::Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
