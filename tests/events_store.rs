//! One test suite, run against both event stores: the in-memory store and the
//! Redis Streams store (real Redis, a unique key prefix per test). Drives the
//! stores in-process through [`EventStore`] and [`Subscription`], as the
//! gRPC service and the gateway do.

mod support;

use std::sync::Arc;
use std::time::Duration;

use redfire::control::events::memory::MemoryEventStore;
use redfire::control::events::redis::{RedisEventConfig, RedisEventStore};
use redfire::control::events::store::{EventSettings, EventStore};
use redfire::control::events::subscription::{SubscribeSpec, Subscription};
use redfire::control::metrics::events::EventMetrics;
use redfire::mesh::events::{Delivery, Envelope, EventError, NewEvent, Position, Retention, StartFrom};

const VT: Duration = Duration::from_millis(600);

fn settings() -> EventSettings {
    EventSettings {
        visibility_timeout: VT,
        max_deliveries: 3,
        idempotency_window: Duration::from_secs(60),
        default_retention: Retention::default(),
    }
}

fn memory() -> Arc<dyn EventStore> {
    Arc::new(MemoryEventStore::new(settings()))
}

fn redis(test: &str) -> Option<Arc<dyn EventStore>> {
    let url = support::shared_redis()?;
    let config = RedisEventConfig {
        url,
        prefix: support::unique_prefix(test),
        timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(20),
    };
    Some(Arc::new(RedisEventStore::new(settings(), config).unwrap()))
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn memory() {
                super::$name(super::memory()).await;
            }
            #[tokio::test]
            async fn redis() {
                if let Some(s) = super::redis(stringify!($name)) {
                    super::$name(s).await;
                }
            }
        }
    };
}

fn event(ty: &str, subject: &str, data: &str) -> NewEvent {
    let mut envelope = Envelope::domain(ty, "Order", subject, data.as_bytes().to_vec());
    envelope.validate(1 << 20).unwrap();
    NewEvent { envelope, idempotency_key: None }
}

async fn publish(s: &Arc<dyn EventStore>, topic: &str, n: usize) -> Vec<Position> {
    let events = (0..n).map(|i| event("order.created", &format!("o-{i}"), &format!("{{\"n\":{i}}}"))).collect();
    s.publish(topic, events).await.unwrap().into_iter().map(|p| p.position).collect()
}

fn spec(topic: &str, group: &str, consumer: &str, max_in_flight: usize) -> SubscribeSpec {
    SubscribeSpec {
        topics: vec![topic.into()],
        group: group.into(),
        consumer: consumer.into(),
        max_in_flight,
        start: StartFrom::Earliest,
    }
}

async fn subscribe(s: &Arc<dyn EventStore>, spec: SubscribeSpec) -> Subscription {
    Subscription::start(s.clone(), Arc::new(EventMetrics::default()), spec).await.unwrap()
}

/// The next delivery within `limit`.
async fn next(sub: &mut Subscription, limit: Duration) -> Option<Delivery> {
    match tokio::time::timeout(limit, sub.deliveries.recv()).await {
        Ok(Some(Ok(d))) => Some(d),
        Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
        _ => None,
    }
}

both!(a_single_consumer_gets_every_event_in_order_once_acked);
async fn a_single_consumer_gets_every_event_in_order_once_acked(s: Arc<dyn EventStore>) {
    let positions = publish(&s, "orders", 50).await;
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions increase");
    let mut sub = subscribe(&s, spec("orders", "billing", "b1", 8)).await;
    let mut got = Vec::new();
    while got.len() < 50 {
        let d = next(&mut sub, Duration::from_secs(5)).await.expect("delivery");
        assert_eq!(d.delivery_count, 1);
        sub.handle.ack("orders", d.position).await.unwrap();
        got.push(d.position);
    }
    assert_eq!(got, positions);
    let info = s.describe("orders").await.unwrap();
    assert_eq!(info.length, 50);
    assert_eq!(info.groups.len(), 1);
    assert_eq!((info.groups[0].pending, info.groups[0].lag), (0, 0));
}

both!(an_idempotent_publish_retried_is_stored_once);
async fn an_idempotent_publish_retried_is_stored_once(s: Arc<dyn EventStore>) {
    let keyed = |key: &str| NewEvent { idempotency_key: Some(key.into()), ..event("order.paid", "o-1", "{}") };
    let first = s.publish("payments", vec![keyed("pay-1")]).await.unwrap();
    assert!(!first[0].duplicate);
    // A retry (say, after a timeout) and a batch repeating the key.
    let retry = s.publish("payments", vec![keyed("pay-1")]).await.unwrap();
    assert_eq!(retry[0].position, first[0].position);
    assert!(retry[0].duplicate);
    let batch = s.publish("payments", vec![keyed("pay-2"), keyed("pay-2"), keyed("pay-1")]).await.unwrap();
    assert!(!batch[0].duplicate && batch[1].duplicate && batch[2].duplicate);
    assert_eq!(batch[1].position, batch[0].position);
    assert_eq!(s.describe("payments").await.unwrap().length, 2);
    assert_eq!(s.read_range("payments", Position::ZERO, 100).await.unwrap().len(), 2);
}

both!(a_consumer_that_dies_before_ack_is_redelivered_to_another_with_count_2);
async fn a_consumer_that_dies_before_ack_is_redelivered_to_another_with_count_2(s: Arc<dyn EventStore>) {
    let positions = publish(&s, "orders", 1).await;
    let mut a = subscribe(&s, spec("orders", "shipping", "a", 10)).await;
    let first = next(&mut a, Duration::from_secs(5)).await.expect("first delivery");
    assert_eq!((first.position, first.delivery_count), (positions[0], 1));
    drop(a); // dies without acking
    let mut b = subscribe(&s, spec("orders", "shipping", "b", 10)).await;
    let again = next(&mut b, VT * 5).await.expect("redelivered after the visibility timeout");
    assert_eq!((again.position, again.delivery_count), (positions[0], 2));
    assert_eq!(again.envelope, first.envelope);
    b.handle.ack("orders", again.position).await.unwrap();
    assert!(next(&mut b, VT * 2).await.is_none(), "acked: not delivered again");
}

both!(a_consumer_that_extends_its_lease_is_not_redelivered_to);
async fn a_consumer_that_extends_its_lease_is_not_redelivered_to(s: Arc<dyn EventStore>) {
    publish(&s, "orders", 1).await;
    let mut a = subscribe(&s, spec("orders", "shipping", "a", 10)).await;
    let d = next(&mut a, Duration::from_secs(5)).await.expect("delivery");
    let mut b = subscribe(&s, spec("orders", "shipping", "b", 10)).await;
    // A slow handler: three visibility timeouts, extending every sixth of one
    // (so a loaded machine delaying one extend by most of a timeout is fine).
    for _ in 0..18 {
        tokio::time::sleep(VT / 6).await;
        a.handle.extend("orders", d.position).await.unwrap();
        assert!(b.deliveries.try_recv().is_err(), "redelivered while the lease was being extended");
    }
    a.handle.ack("orders", d.position).await.unwrap();
    assert!(next(&mut b, VT * 2).await.is_none());
}

both!(max_deliveries_moves_the_event_to_the_dead_letter_topic_with_the_reason);
async fn max_deliveries_moves_the_event_to_the_dead_letter_topic_with_the_reason(s: Arc<dyn EventStore>) {
    let positions = publish(&s, "orders", 1).await;
    let mut a = subscribe(&s, spec("orders", "fraud", "a", 10)).await;
    for n in 1..=3 {
        let d = next(&mut a, VT * 5).await.expect("delivery");
        assert_eq!((d.position, d.delivery_count), (positions[0], n));
        s.nack("orders", "fraud", "a", d.position, Duration::ZERO, "card declined").await.unwrap();
    }
    let mut dlq = subscribe(&s, spec("orders.dlq", "ops", "o", 10)).await;
    let dead = next(&mut dlq, VT * 5).await.expect("dead letter");
    let ext = &dead.envelope.extensions;
    assert_eq!(ext.get("dlqtopic").map(String::as_str), Some("orders"));
    assert_eq!(ext.get("dlqgroup").map(String::as_str), Some("fraud"));
    assert_eq!(ext.get("dlqposition"), Some(&positions[0].to_string()));
    assert_eq!(ext.get("dlqdeliveries").map(String::as_str), Some("3"));
    let reason = ext.get("dlqreason").cloned().unwrap_or_default();
    assert!(reason.contains("3 deliveries") && reason.contains("card declined"), "{reason}");
    assert!(next(&mut a, VT * 2).await.is_none(), "not delivered again after dead-lettering");
    let info = s.describe("orders").await.unwrap();
    assert_eq!(info.dead_letters, 1);
    assert_eq!(info.groups[0].pending, 0);
}

both!(ack_of_unknown_or_foreign_positions_and_unknown_groups_are_refused);
async fn ack_of_unknown_or_foreign_positions_and_unknown_groups_are_refused(s: Arc<dyn EventStore>) {
    let positions = publish(&s, "orders", 2).await;
    let mut a = subscribe(&s, spec("orders", "g", "a", 1)).await;
    let d = next(&mut a, Duration::from_secs(5)).await.expect("delivery");
    let never = Position { ms: 1, seq: 0 };
    assert!(matches!(s.ack("orders", "g", "a", never).await, Err(EventError::NotFound(_))));
    assert!(matches!(s.ack("orders", "g", "a", positions[1]).await, Err(EventError::NotFound(_))), "not delivered");
    assert!(matches!(s.ack("orders", "g", "b", d.position).await, Err(EventError::Foreign(_))));
    assert!(matches!(s.extend("orders", "g", "b", d.position).await, Err(EventError::Foreign(_))));
    assert!(matches!(s.ack("orders", "nobody", "a", d.position).await, Err(EventError::NotFound(_))));
    assert!(matches!(s.reset_group("orders", "nobody", None).await, Err(EventError::NotFound(_))));
    assert!(matches!(s.describe("no-such-topic").await, Err(EventError::NotFound(_))));
    s.ack("orders", "g", "a", d.position).await.unwrap();
    assert!(matches!(s.ack("orders", "g", "a", d.position).await, Err(EventError::NotFound(_))), "acked twice");
}

both!(at_most_max_in_flight_events_are_held_by_a_subscriber);
async fn at_most_max_in_flight_events_are_held_by_a_subscriber(s: Arc<dyn EventStore>) {
    publish(&s, "ticks", 10).await;
    let mut a = subscribe(&s, spec("ticks", "g", "a", 3)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut a, Duration::from_secs(5)).await.expect("delivery"));
    }
    // The slow subscriber holds 3; the rest stay in the store, undelivered.
    assert!(next(&mut a, Duration::from_millis(200)).await.is_none());
    let g = s.describe("ticks").await.unwrap().groups.remove(0);
    assert_eq!((g.pending, g.lag), (3, 7));
    // Another consumer of the group is not slowed down by it.
    let mut b = subscribe(&s, spec("ticks", "g", "b", 100)).await;
    for _ in 0..7 {
        let d = next(&mut b, Duration::from_secs(5)).await.expect("b gets the rest");
        b.handle.ack("ticks", d.position).await.unwrap();
    }
    a.handle.ack("ticks", held[0].position).await.unwrap();
    assert!(next(&mut a, Duration::from_millis(200)).await.is_none(), "nothing left to deliver");
}

both!(aggregate_append_under_two_concurrent_writers_exactly_one_wins);
async fn aggregate_append_under_two_concurrent_writers_exactly_one_wins(s: Arc<dyn EventStore>) {
    let ev = |ty: &str| {
        let mut e = Envelope::domain(ty, "Order", "", b"{}".to_vec());
        e.validate(1 << 20).unwrap();
        e
    };
    let (v, _) = s.append("orders", "Order", "o-1", Some(0), vec![ev("order.created")]).await.unwrap();
    assert_eq!(v, 1);
    for round in 0..20 {
        let (s1, s2) = (s.clone(), s.clone());
        let expected = Some(1 + round);
        let w1 = tokio::spawn(async move { s1.append("orders", "Order", "o-1", expected, vec![ev("a")]).await });
        let w2 = tokio::spawn(async move { s2.append("orders", "Order", "o-1", expected, vec![ev("b")]).await });
        let (r1, r2) = (w1.await.unwrap(), w2.await.unwrap());
        let wins = [&r1, &r2].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {r1:?} {r2:?}");
        let loser = if r1.is_ok() { r2 } else { r1 };
        assert_eq!(
            loser.unwrap_err(),
            EventError::Conflict { aggregate_id: "o-1".into(), current: 2 + round, expected: 1 + round }
        );
    }
    let ahead = s.append("orders", "Order", "o-1", Some(99), vec![ev("x")]).await.unwrap_err();
    assert!(matches!(ahead, EventError::VersionAhead { current: 21, .. }), "{ahead:?}");
    let (version, events) = s.read_aggregate("orders", "o-1").await.unwrap();
    assert_eq!(version, 21);
    assert_eq!(events.iter().map(|e| e.aggregate_version).collect::<Vec<_>>(), (1..=21).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e.subject == "o-1" && e.aggregate_type == "Order"));
    // The events also went to the topic, with their versions.
    let stored = s.read_range("orders", Position::ZERO, 100).await.unwrap();
    assert_eq!(stored.len(), 21);
    assert_eq!(stored[20].envelope.aggregate_version, 21);
    // Appending with no expected version always succeeds.
    assert_eq!(s.append("orders", "Order", "o-1", None, vec![ev("y")]).await.unwrap().0, 22);
    assert_eq!(s.read_aggregate("orders", "o-2").await.unwrap(), (0, vec![]));
}

both!(retention_trims_only_what_every_group_has_acked);
async fn retention_trims_only_what_every_group_has_acked(s: Arc<dyn EventStore>) {
    s.create_topic("audit", Retention { max_len: 2, max_age: Duration::ZERO }).await.unwrap();
    s.ensure_group("audit", "fast", StartFrom::Earliest).await.unwrap();
    s.ensure_group("audit", "slow", StartFrom::Earliest).await.unwrap();
    let positions = publish(&s, "audit", 6).await;
    let mut fast = subscribe(&s, spec("audit", "fast", "f", 100)).await;
    for _ in 0..6 {
        let d = next(&mut fast, Duration::from_secs(5)).await.unwrap();
        fast.handle.ack("audit", d.position).await.unwrap();
    }
    // "slow" has acked nothing: nothing may go.
    s.trim().await.unwrap();
    assert_eq!(s.describe("audit").await.unwrap().length, 6);
    // "slow" acks the first three and holds the fourth unacked.
    let mut slow = subscribe(&s, spec("audit", "slow", "s", 4)).await;
    for i in 0..4 {
        let d = next(&mut slow, Duration::from_secs(5)).await.unwrap();
        if i < 3 {
            slow.handle.ack("audit", d.position).await.unwrap();
        }
    }
    s.trim().await.unwrap();
    let info = s.describe("audit").await.unwrap();
    assert_eq!((info.length, info.first), (3, positions[3]), "trimmed the acked three, kept the pending one");
    let replay = s.read_range("audit", Position::ZERO, 100).await.unwrap();
    assert_eq!(replay.iter().map(|e| e.position).collect::<Vec<_>>(), positions[3..].to_vec());
}

both!(a_deleted_group_no_longer_holds_retention_and_its_subscription_ends);
async fn a_deleted_group_no_longer_holds_retention_and_its_subscription_ends(s: Arc<dyn EventStore>) {
    s.create_topic("audit", Retention { max_len: 2, max_age: Duration::ZERO }).await.unwrap();
    s.ensure_group("audit", "gone", StartFrom::Earliest).await.unwrap();
    let positions = publish(&s, "audit", 5).await;
    // Created at the end: it holds nothing.
    s.ensure_group("audit", "kept", StartFrom::Latest).await.unwrap();
    // "gone" holds one event unacked.
    let mut gone = subscribe(&s, spec("audit", "gone", "g", 1)).await;
    let held = next(&mut gone, Duration::from_secs(5)).await.unwrap();
    assert_eq!(held.position, positions[0]);
    s.trim().await.unwrap();
    assert_eq!(s.describe("audit").await.unwrap().length, 5, "the unacked event holds the topic");
    s.delete_group("audit", "gone").await.unwrap();
    let info = s.describe("audit").await.unwrap();
    assert_eq!(info.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["kept"]);
    s.trim().await.unwrap();
    let info = s.describe("audit").await.unwrap();
    assert_eq!((info.length, info.first), (2, positions[3]), "trimmed to max_len once nothing holds it");
    // The deleted group's subscription ends with NotFound at its next fetch.
    gone.handle.ack("audit", held.position).await.ok();
    let ended =
        tokio::time::timeout(Duration::from_secs(5), gone.deliveries.recv()).await.expect("the subscription ends");
    assert!(matches!(ended, None | Some(Err(EventError::NotFound(_)))), "{ended:?}");
    assert!(matches!(s.delete_group("audit", "gone").await, Err(EventError::NotFound(_))));
    assert!(matches!(s.delete_group("nowhere", "kept").await, Err(EventError::NotFound(_))));
}

both!(reset_group_replays_from_a_position_and_replay_touches_no_group);
async fn reset_group_replays_from_a_position_and_replay_touches_no_group(s: Arc<dyn EventStore>) {
    let positions = publish(&s, "orders", 5).await;
    let mut a = subscribe(&s, spec("orders", "g", "a", 100)).await;
    for _ in 0..5 {
        let d = next(&mut a, Duration::from_secs(5)).await.unwrap();
        a.handle.ack("orders", d.position).await.unwrap();
    }
    let page = s.read_range("orders", positions[1], 2).await.unwrap();
    assert_eq!(page.iter().map(|e| e.position).collect::<Vec<_>>(), positions[2..4].to_vec());
    assert_eq!(s.describe("orders").await.unwrap().groups[0].lag, 0, "replay left the group alone");
    s.reset_group("orders", "g", Some(positions[2])).await.unwrap();
    for p in &positions[3..] {
        let d = next(&mut a, Duration::from_secs(5)).await.expect("redelivered after reset");
        assert_eq!(d.position, *p);
        a.handle.ack("orders", d.position).await.unwrap();
    }
}

both!(a_late_group_starting_at_latest_sees_only_new_events);
async fn a_late_group_starting_at_latest_sees_only_new_events(s: Arc<dyn EventStore>) {
    publish(&s, "orders", 3).await;
    let mut sp = spec("orders", "late", "l", 10);
    sp.start = StartFrom::Latest;
    let mut l = subscribe(&s, sp).await;
    let new = publish(&s, "orders", 1).await;
    let d = next(&mut l, Duration::from_secs(5)).await.expect("the new event");
    assert_eq!(d.position, new[0]);
}

both!(one_subscriber_consumes_several_topics);
async fn one_subscriber_consumes_several_topics(s: Arc<dyn EventStore>) {
    let orders = publish(&s, "orders", 3).await;
    let fills = publish(&s, "fills", 2).await;
    let mut sp = spec("orders", "risk", "r", 100);
    sp.topics.push("fills".into());
    let mut sub = subscribe(&s, sp).await;
    let mut got = std::collections::BTreeMap::<String, Vec<Position>>::new();
    for _ in 0..5 {
        let d = next(&mut sub, Duration::from_secs(5)).await.expect("delivery");
        sub.handle.ack(&d.topic, d.position).await.unwrap();
        got.entry(d.topic).or_default().push(d.position);
    }
    assert_eq!(got["orders"], orders, "in order per topic");
    assert_eq!(got["fills"], fills);
    assert_eq!(s.topics().await.unwrap(), vec!["fills".to_string(), "orders".to_string()]);
}
