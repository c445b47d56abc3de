//! Run with: cargo run --example demo
//!
//! The mesh's registry at work, on the embedded in-memory store (no Redis):
//! starts `redfire-control` in this process, holds a Watch like a sidecar
//! does, and drives a few instances through their life — register, health
//! changes through the lease, deregistration, and a lease that lapses because
//! its owner "crashed". Every change the Watch receives is printed as it
//! arrives, with its revision.

use std::time::Duration;

use anyhow::Context;
use redfire::control::config::{Config, Settings};
use redfire::control::server::Control;
use redfire::proto::registry::v1 as pb;
use redfire::proto::registry::v1::registry_client::RegistryClient;
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
    let settings = Settings {
        grpc_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        log_level: Some("warn".into()),
        ..Default::default()
    };
    let control = Control::start(Config::from_settings(settings)?).await?;
    println!("redfire-control (in-memory store) on grpc {} / admin {}", control.grpc_addr, control.admin_addr);
    println!("watching every service:\n");

    let mut client = RegistryClient::connect(format!("http://{}", control.grpc_addr)).await?;
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

    control.shutdown();
    control.wait().await?;
    let _ = tokio::time::timeout(Duration::from_secs(1), printer).await;
    Ok(())
}
