//! Run with: cargo run --example orders_events
//!
//! The seed's order flow on the event bus, on the embedded in-memory store (no
//! Redis): starts `redfire-control` in this process, then
//!
//! 1. the **orders** service creates and pays an order by appending domain
//!    events to the `Order` aggregate (event sourcing, expected versions); a
//!    stale writer's append is refused with ABORTED;
//! 2. **billing** consumes `orders` with the Rust client: its handler fails
//!    once on `order.paid` (nack → redelivered with delivery count 2), then
//!    succeeds (ack);
//! 3. the order is rebuilt with `ReadAggregate`, the topic replayed, and
//!    `DescribeTopic` shows the group with nothing pending.

use std::time::Duration;

use anyhow::Context;
use redfire::control::config::{Config, Settings};
use redfire::control::events::client::{EventsClient, Subscribe};
use redfire::control::server::Control;
use redfire::proto::events::v1 as pb;

fn domain_event(ty: &str, data: serde_json::Value) -> pb::Event {
    pb::Event {
        r#type: ty.into(),
        source: "orders-service".into(),
        datacontenttype: "application/json".into(),
        data: data.to_string().into_bytes(),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca_dir = std::env::temp_dir().join(format!("redfire-orders-events-{}", std::process::id()));
    let settings = Settings {
        grpc_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        log_level: Some("warn".into()),
        ca_dir: Some(ca_dir.display().to_string()),
        ..Default::default()
    };
    let control = Control::start(Config::from_settings(settings)?).await?;
    println!("control on {} (in-memory store, TLS)\n", control.grpc_url());

    // Both services call as an operator allowed to use every topic (a
    // workload would present its certificate and be granted topics by the
    // `[[event_acl]]` of the redfire-control policy instead).
    let token = control.operator_token("orders-example", &["events-admin"]).map_err(anyhow::Error::msg)?;

    // 1. The orders service: event-sourced Order aggregate.
    let mut orders = EventsClient::connect(control.endpoint(), "orders-service", Some(&token)).await?;
    let append = |expected: u64, ev: pb::Event| pb::AppendToAggregateRequest {
        topic: "orders".into(),
        aggregate_type: "Order".into(),
        aggregate_id: "order-1001".into(),
        expected_version: Some(expected),
        events: vec![ev],
    };
    let created = domain_event("order.created", serde_json::json!({"symbol": "BTC-USD", "qty": 2, "side": "buy"}));
    let r = orders.raw().append_to_aggregate(append(0, created)).await?.into_inner();
    println!("orders:  order.created  -> order-1001 v{} at {}", r.version, r.positions[0]);
    let paid = domain_event("order.paid", serde_json::json!({"amount": "86000.00", "currency": "USD"}));
    let r = orders.raw().append_to_aggregate(append(1, paid)).await?.into_inner();
    println!("orders:  order.paid     -> order-1001 v{} at {}", r.version, r.positions[0]);
    let stale = domain_event("order.cancelled", serde_json::json!({}));
    let refused = orders.raw().append_to_aggregate(append(1, stale)).await.expect_err("stale writer must lose");
    println!("orders:  a stale writer (expected v1) gets {:?}: {}", refused.code(), refused.message());
    // A plain notification, no aggregate: publish_domain_event.
    let pos = orders
        .publish_domain_event("orders", "order.shipped", "order-1001", "Order", br#"{"carrier":"ups"}"#.to_vec())
        .await?;
    println!("orders:  order.shipped  published at {pos}\n");

    // 2. Billing: acks on Ok, nacks on Err.
    let mut billing = EventsClient::connect(control.endpoint(), "billing-service", Some(&token)).await?;
    let mut spec = Subscribe::new(&["orders"], "billing", "billing-1");
    spec.from_earliest = true;
    spec.limit = Some(4);
    let handled = tokio::time::timeout(
        Duration::from_secs(10),
        billing.subscribe(spec, |d| {
            let e = &d.envelope;
            let fail = e.ty == "order.paid" && d.delivery_count == 1;
            println!(
                "billing: {:<14} {} v{} delivery #{} -> {}",
                e.ty,
                e.subject,
                e.aggregate_version,
                d.delivery_count,
                if fail { "nack (ledger busy)" } else { "ack" }
            );
            async move { if fail { Err("ledger busy".to_string()) } else { Ok(()) } }
        }),
    )
    .await
    .context("billing did not get its events within 10 s")??;
    println!("billing: handled {handled} deliveries\n");

    // 3. Rebuild, replay, describe.
    let agg = orders
        .raw()
        .read_aggregate(pb::ReadAggregateRequest { topic: "orders".into(), aggregate_id: "order-1001".into() })
        .await?
        .into_inner();
    let types: Vec<_> = agg.events.iter().map(|e| format!("v{} {}", e.aggregate_version, e.r#type)).collect();
    println!("aggregate order-1001 at v{}: {}", agg.version, types.join(", "));
    let mut replay =
        orders.raw().replay(pb::ReplayRequest { topic: "orders".into(), ..Default::default() }).await?.into_inner();
    while let Some(m) = replay.message().await? {
        let e = m.event.unwrap_or_default();
        println!("replay:  {} {} {}", m.position, e.r#type, String::from_utf8_lossy(&e.data));
    }
    let d = orders.raw().describe_topic(pb::DescribeTopicRequest { topic: "orders".into() }).await?.into_inner();
    for g in &d.groups {
        println!(
            "topic orders: {} events; group {}: pending {}, lag {}; dead letters {}",
            d.length, g.name, g.pending, g.lag, d.dead_letters
        );
    }
    control.shutdown();
    control.wait().await?;
    let _ = std::fs::remove_dir_all(ca_dir);
    Ok(())
}
