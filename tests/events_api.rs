//! `redfire.events.v1` over real gRPC against an in-process control: every
//! bad input gets its own status, Subscribe's bidi protocol (ack, nack,
//! extend, command errors), Replay (also after a control restart on Redis),
//! aggregates, topic admin, and the Rust client.

mod support;

use std::time::Duration;

use redfire::control::config::Settings;
use redfire::control::events::client::{EventsClient, Subscribe};
use redfire::mesh::events::CURRENT_VERSION_HEADER;
use redfire::proto::events::v1 as pb;
use redfire::proto::events::v1::events_client::EventsClient as Raw;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn events_settings(base: Settings) -> Settings {
    Settings {
        events_visibility_timeout: Some("500ms".into()),
        events_max_deliveries: Some("2".into()),
        events_max_payload: Some("1024".into()),
        events_poll_interval: Some("20ms".into()),
        ..base
    }
}

async fn raw(control: &redfire::control::server::Control) -> Raw<support::OperatorChannel> {
    Raw::new(support::channel(control).await)
}

fn ev(ty: &str, subject: &str, data: &[u8]) -> pb::Event {
    pb::Event {
        r#type: ty.into(),
        subject: subject.into(),
        datacontenttype: "application/json".into(),
        data: data.to_vec(),
        ..Default::default()
    }
}

fn publish_req(topic: &str, events: Vec<pb::Event>) -> pb::PublishRequest {
    pb::PublishRequest {
        topic: topic.into(),
        events: events
            .into_iter()
            .map(|e| pb::PublishEntry { event: Some(e), idempotency_key: String::new() })
            .collect(),
    }
}

async fn publish(c: &mut Raw<support::OperatorChannel>, topic: &str, n: usize) -> Vec<String> {
    let events = (0..n).map(|i| ev("order.created", &format!("o-{}", i % 3), b"{}")).collect();
    let r = c.publish(publish_req(topic, events)).await.expect("publish").into_inner();
    r.results.into_iter().map(|r| r.position).collect()
}

/// A bidi Subscribe: the command sender and the response stream.
struct Sub {
    tx: mpsc::Sender<pb::SubscribeRequest>,
    rx: tonic::Streaming<pb::SubscribeResponse>,
}

impl Sub {
    async fn open(
        c: &mut Raw<support::OperatorChannel>,
        topic: &str,
        group: &str,
        consumer: &str,
    ) -> Result<Sub, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let open = pb::Open {
            topics: vec![topic.into()],
            group: group.into(),
            consumer: consumer.into(),
            max_in_flight: 10,
            start: pb::StartFrom::Earliest as i32,
        };
        tx.send(pb::SubscribeRequest { command: Some(pb::subscribe_request::Command::Open(open)) }).await.unwrap();
        let mut rx = c.subscribe(ReceiverStream::new(rx)).await?.into_inner();
        match rx.message().await? {
            Some(pb::SubscribeResponse { message: Some(pb::subscribe_response::Message::Opened(o)) }) => {
                assert_eq!(o.visibility_timeout_ms, 500);
                assert_eq!(o.max_deliveries, 2);
            }
            other => panic!("expected opened, got {other:?}"),
        }
        Ok(Sub { tx, rx })
    }

    async fn send(&self, cmd: pb::subscribe_request::Command) {
        self.tx.send(pb::SubscribeRequest { command: Some(cmd) }).await.unwrap();
    }

    async fn next(&mut self) -> pb::subscribe_response::Message {
        let m = tokio::time::timeout(Duration::from_secs(5), self.rx.message()).await;
        m.expect("a message within 5 s").expect("stream ok").expect("stream open").message.expect("message set")
    }

    async fn delivery(&mut self) -> pb::Delivery {
        match self.next().await {
            pb::subscribe_response::Message::Delivery(d) => d,
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    async fn error(&mut self) -> pb::CommandError {
        match self.next().await {
            pb::subscribe_response::Message::Error(e) => e,
            other => panic!("expected a command error, got {other:?}"),
        }
    }
}

fn ack(topic: &str, position: &str) -> pb::subscribe_request::Command {
    pb::subscribe_request::Command::Ack(pb::Ack { topic: topic.into(), position: position.into() })
}

#[tokio::test]
async fn each_bad_input_gets_its_own_status() {
    let control = support::control(events_settings(support::settings())).await;
    let mut c = raw(&control).await;
    let code = |r: Result<tonic::Response<pb::PublishResponse>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(code(c.publish(publish_req("", vec![ev("t", "", b"")])).await), Code::InvalidArgument);
    assert_eq!(code(c.publish(publish_req("bad topic", vec![ev("t", "", b"")])).await), Code::InvalidArgument);
    assert_eq!(code(c.publish(publish_req("a:b{c}", vec![ev("t", "", b"")])).await), Code::InvalidArgument);
    assert_eq!(code(c.publish(publish_req("orders", vec![])).await), Code::InvalidArgument);
    assert_eq!(code(c.publish(publish_req("orders", vec![ev("", "", b"")])).await), Code::InvalidArgument);
    let big = c.publish(publish_req("orders", vec![ev("t", "", &[b'x'; 1025])])).await.unwrap_err();
    assert_eq!(big.code(), Code::ResourceExhausted);
    assert!(big.message().contains("1025") && big.message().contains("1024"), "{}", big.message());
    // Nothing of a refused batch is stored: the topic does not even exist.
    let none = c.describe_topic(pb::DescribeTopicRequest { topic: "orders".into() }).await.unwrap_err();
    assert_eq!(none.code(), Code::NotFound);

    publish(&mut c, "orders", 1).await;
    let reset = |group: &str, position: &str| pb::ResetGroupRequest {
        topic: "orders".into(),
        group: group.into(),
        position: position.into(),
    };
    assert_eq!(c.reset_group(reset("nobody", "0-0")).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(c.reset_group(reset("g", "yesterday")).await.unwrap_err().code(), Code::InvalidArgument);
    let delete = |topic: &str, group: &str| pb::DeleteGroupRequest { topic: topic.into(), group: group.into() };
    assert_eq!(c.delete_group(delete("orders", "nobody")).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(c.delete_group(delete("nowhere", "g")).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(c.delete_group(delete("orders", "")).await.unwrap_err().code(), Code::InvalidArgument);
    let replay = pb::ReplayRequest {
        topic: "orders".into(),
        from: Some(pb::replay_request::From::AfterPosition("x".into())),
        ..Default::default()
    };
    assert_eq!(c.replay(replay).await.unwrap_err().code(), Code::InvalidArgument);

    // Subscribe: the first message must be open, with valid names.
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::SubscribeRequest { command: Some(ack("orders", "1-0")) }).await.unwrap();
    assert_eq!(c.subscribe(ReceiverStream::new(rx)).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(Sub::open(&mut c, "orders", "", "a").await.err().unwrap().code(), Code::InvalidArgument);

    // Aggregates: version conflicts.
    let append = |expected: Option<u64>| pb::AppendToAggregateRequest {
        topic: "orders".into(),
        aggregate_type: "Order".into(),
        aggregate_id: "o-9".into(),
        expected_version: expected,
        events: vec![ev("order.created", "", b"{}")],
    };
    assert_eq!(c.append_to_aggregate(append(Some(0))).await.unwrap().into_inner().version, 1);
    let conflict = c.append_to_aggregate(append(Some(0))).await.unwrap_err();
    assert_eq!(conflict.code(), Code::Aborted);
    assert_eq!(conflict.metadata().get(CURRENT_VERSION_HEADER).unwrap(), "1");
    let ahead = c.append_to_aggregate(append(Some(5))).await.unwrap_err();
    assert_eq!(ahead.code(), Code::FailedPrecondition);
    assert!(ahead.message().contains("version 1"), "{}", ahead.message());
    control.shutdown();
    control.wait().await.unwrap();
}

#[tokio::test]
async fn subscribe_acks_nacks_extends_and_reports_command_errors_in_the_stream() {
    let control = support::control(events_settings(support::settings())).await;
    let mut c = raw(&control).await;
    let positions = publish(&mut c, "orders", 2).await;
    let mut a = Sub::open(&mut c, "orders", "billing", "a").await.unwrap();
    let d1 = a.delivery().await;
    let d2 = a.delivery().await;
    assert_eq!((d1.position.clone(), d1.delivery_count), (positions[0].clone(), 1));
    assert_eq!(d1.event.as_ref().unwrap().r#type, "order.created");
    assert!(!d1.event.as_ref().unwrap().id.is_empty(), "the server fills the id");

    // Unknown and foreign positions: the stream stays open.
    a.send(ack("orders", "1-0")).await;
    let e = a.error().await;
    assert_eq!((e.code, e.position.as_str()), (Code::NotFound as i32, "1-0"));
    let mut b = Sub::open(&mut c, "orders", "billing", "b").await.unwrap();
    b.send(ack("orders", &d1.position)).await;
    assert_eq!(b.error().await.code, Code::PermissionDenied as i32);
    a.send(ack("orders", "garbage")).await;
    assert_eq!(a.error().await.code, Code::InvalidArgument as i32);

    // Ack the first; nack the second: redelivered with count 2, then (max
    // deliveries 2) nacked again it goes to the dead-letter topic.
    a.send(ack("orders", &d1.position)).await;
    a.send(pb::subscribe_request::Command::Nack(pb::Nack {
        topic: "orders".into(),
        position: d2.position.clone(),
        delay_ms: 0,
        reason: "stock service down".into(),
    }))
    .await;
    let again = tokio::select! { d = a.delivery() => d, d = b.delivery() => d };
    assert_eq!((again.position.clone(), again.delivery_count), (d2.position.clone(), 2));
    let describe = |c: &Raw<support::OperatorChannel>| {
        let mut c = c.clone();
        async move { c.describe_topic(pb::DescribeTopicRequest { topic: "orders".into() }).await.unwrap().into_inner() }
    };
    assert!(support::eventually(Duration::from_secs(5), || async { describe(&c).await.groups[0].pending == 1 }).await);
    // Nobody acks: the next claim by a consumer of the group dead-letters it.
    assert!(
        support::eventually(Duration::from_secs(5), || async { describe(&c).await.dead_letters == 1 }).await,
        "dead-lettered after max deliveries with no consumer acking"
    );
    drop((a, b));
    let mut ops = Sub::open(&mut c, "orders.dlq", "ops", "o").await.unwrap();
    let dead = ops.delivery().await;
    let ext = dead.event.unwrap().extensions;
    assert!(ext["dlqreason"].contains("2 deliveries"), "{ext:?}");
    let (_, body) = support::http_get(control.admin_addr, "/metrics").await;
    assert!(
        body.contains("redfire_control_events_dead_lettered_total{topic=\"orders\",group=\"billing\"} 1"),
        "{body}"
    );
    assert!(body.contains("redfire_control_events_redelivered_total"), "{body}");
    control.shutdown();
    control.wait().await.unwrap();
}

#[tokio::test]
async fn replay_after_a_restart_returns_exactly_the_events_since_the_position() {
    let Some(url) = support::shared_redis() else { return };
    let prefix = support::unique_prefix("replay");
    let settings = || events_settings(support::redis_settings(&url, &prefix));
    let first = support::control(settings()).await;
    let mut c = raw(&first).await;
    let before = publish(&mut c, "orders", 10).await;
    let mark = before[3].clone();
    first.shutdown();
    first.wait().await.unwrap();

    let second = support::control(settings()).await;
    let mut c = raw(&second).await;
    let after = publish(&mut c, "orders", 5).await;
    let replay = |from: pb::replay_request::From, aggregate: &str| pb::ReplayRequest {
        topic: "orders".into(),
        from: Some(from),
        aggregate_id: aggregate.into(),
        limit: 0,
    };
    let collect = |req: pb::ReplayRequest| {
        let mut c = c.clone();
        async move {
            let mut s = c.replay(req).await.unwrap().into_inner();
            let mut out = Vec::new();
            while let Some(m) = s.message().await.unwrap() {
                out.push(m);
            }
            out
        }
    };
    let got = collect(replay(pb::replay_request::From::AfterPosition(mark), "")).await;
    let expected: Vec<String> = before[4..].iter().chain(after.iter()).cloned().collect();
    assert_eq!(got.iter().map(|m| m.position.clone()).collect::<Vec<_>>(), expected);
    let only = collect(replay(pb::replay_request::From::AfterPosition("0-0".into()), "o-1")).await;
    assert_eq!(only.len(), 5, "o-1 is every third event of 15");
    assert!(only.iter().all(|m| m.event.as_ref().unwrap().subject == "o-1"));
    let ms: u64 = after[0].split('-').next().unwrap().parse().unwrap();
    let t = prost_types::Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 };
    let from_time = collect(replay(pb::replay_request::From::FromTime(t), "")).await;
    assert!(from_time.len() >= 5 && from_time.last().unwrap().position == *after.last().unwrap());
    second.shutdown();
    second.wait().await.unwrap();
}

#[tokio::test]
async fn the_rust_client_publishes_domain_events_and_acks_on_ok_nacks_on_err() {
    let control = support::control(events_settings(support::settings())).await;
    let mut c = EventsClient::connect(
        control.endpoint(),
        "orders-service",
        Some(&control.operator_token("t", &["events-admin"]).unwrap()),
    )
    .await
    .unwrap();
    let mut spec = Subscribe::new(&["orders"], "billing", "b1");
    spec.from_earliest = true;
    spec.limit = Some(3);
    c.publish_domain_event("orders", "order.created", "o-1", "Order", br#"{"qty":3}"#.to_vec()).await.unwrap();
    c.publish_domain_event("orders", "order.paid", "o-1", "Order", b"{}".to_vec()).await.unwrap();
    let mut seen = Vec::new();
    let handled = c
        .subscribe(spec, |d| {
            seen.push((d.envelope.ty.clone(), d.delivery_count));
            let fail = d.envelope.ty == "order.paid" && d.delivery_count == 1;
            async move { if fail { Err("payment service down".to_string()) } else { Ok(()) } }
        })
        .await
        .unwrap();
    assert_eq!(handled, 3);
    assert_eq!(seen, vec![("order.created".into(), 1), ("order.paid".into(), 1), ("order.paid".into(), 2)]);
    let mut raw = raw(&control).await;
    let info = raw.describe_topic(pb::DescribeTopicRequest { topic: "orders".into() }).await.unwrap().into_inner();
    assert_eq!(info.groups[0].pending, 0, "both acked");
    control.shutdown();
    control.wait().await.unwrap();
}

#[tokio::test]
async fn a_publish_through_one_replica_reaches_a_subscriber_on_another() {
    let Some(url) = support::shared_redis() else { return };
    let prefix = support::unique_prefix("replicas");
    let settings = || Settings {
        events_trim_interval: Some("50ms".into()),
        ..events_settings(support::redis_settings(&url, &prefix))
    };
    let (a, b) = (support::control(settings()).await, support::control(settings()).await);
    let mut ca = raw(&a).await;
    let mut cb = raw(&b).await;
    publish(&mut ca, "orders", 1).await;
    let mut sub = Sub::open(&mut cb, "orders", "billing", "b1").await.unwrap();
    assert_eq!(sub.delivery().await.delivery_count, 1);
    let later = publish(&mut ca, "orders", 3).await;
    for p in &later {
        let d = sub.delivery().await;
        assert_eq!(&d.position, p, "published on replica a, delivered in order on replica b");
        sub.send(ack("orders", &d.position)).await;
    }
    // Both replicas see the group; the lag gauge is refreshed without a describe call.
    let lag_line = "redfire_control_events_consumer_lag{topic=\"orders\",group=\"billing\"} 0";
    let lag_ok = support::eventually(Duration::from_secs(5), || async {
        support::http_get(a.admin_addr, "/metrics").await.1.contains(lag_line)
    })
    .await;
    assert!(lag_ok, "consumer_lag gauge on replica a");
    for c in [a, b] {
        c.shutdown();
        c.wait().await.unwrap();
    }
}
