//! A small Rust client of `redfire.events.v1`: publish a domain event, and
//! subscribe with a handler whose `Ok` acks and `Err` nacks.
//!
//! ```text
//! let bundle = std::fs::read_to_string("bundle.pem")?;   // control's trust bundle
//! let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(bundle)).domain_name("127.0.0.1");
//! let endpoint = Endpoint::from_static("https://127.0.0.1:15010").tls_config(tls)?;
//! // A workload adds its certificate to the TLS config; an operator passes
//! // its token (`redfire-control token operator`).
//! let mut c = EventsClient::connect(endpoint, "orders-service", Some(&token)).await?;
//! c.publish_domain_event("orders", "order.created", "o-1", "Order", br#"{"qty":3}"#.to_vec()).await?;
//! c.subscribe(Subscribe::new(&["orders"], "billing", "billing-1"), |d| async move {
//!     println!("{} {}", d.position, d.delivery_count);
//!     Ok(())
//! }).await?;
//! ```

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Endpoint;

use crate::mesh::events::Envelope;
use crate::mesh::process::control_endpoint::{BearerToken, OperatorChannel};
use crate::proto::events::v1 as pb;
use crate::proto::events::v1::events_client::EventsClient as Raw;

/// One delivery as the handler sees it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Topic.
    pub topic: String,
    /// Position (what the client acks).
    pub position: String,
    /// 1 on the first delivery.
    pub delivery_count: u32,
    /// The event.
    pub envelope: Envelope,
}

/// What to subscribe to.
#[derive(Debug, Clone)]
pub struct Subscribe {
    /// Topics.
    pub topics: Vec<String>,
    /// Consumer group.
    pub group: String,
    /// Consumer name.
    pub consumer: String,
    /// Most unacked deliveries.
    pub max_in_flight: u32,
    /// Start at the first stored event when the group is new.
    pub from_earliest: bool,
    /// Stop after handling this many deliveries (`None` = until the stream ends).
    pub limit: Option<usize>,
}

impl Subscribe {
    /// A subscription with 100 in flight, starting at new events.
    pub fn new(topics: &[&str], group: &str, consumer: &str) -> Subscribe {
        Subscribe {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            group: group.into(),
            consumer: consumer.into(),
            max_in_flight: 100,
            from_earliest: false,
            limit: None,
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct EventsClient {
    raw: Raw<OperatorChannel>,
    source: String,
}

impl EventsClient {
    /// Connects to control at `endpoint` (with its TLS settings, e.g.
    /// `Control::endpoint`), calling with operator `token` if given (else as
    /// the workload of the endpoint's client certificate); events are
    /// published with `source`.
    pub async fn connect(endpoint: Endpoint, source: &str, token: Option<&str>) -> Result<EventsClient, Status> {
        let url = endpoint.uri().to_string();
        let token = BearerToken::new(token).map_err(Status::invalid_argument)?;
        let channel = endpoint
            .connect_timeout(Duration::from_secs(3))
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("connect {url}: {e}")))?;
        Ok(EventsClient { raw: Raw::new(OperatorChannel::new(channel, token)), source: source.into() })
    }

    /// The generated client, for calls this wrapper does not cover.
    pub fn raw(&mut self) -> &mut Raw<OperatorChannel> {
        &mut self.raw
    }

    /// Publishes one domain event (as the seed's `publish_domain_event`);
    /// returns its position.
    pub async fn publish_domain_event(
        &mut self,
        topic: &str,
        event_type: &str,
        aggregate_id: &str,
        aggregate_type: &str,
        payload: Vec<u8>,
    ) -> Result<String, Status> {
        let mut e = Envelope::domain(event_type, aggregate_type, aggregate_id, payload);
        e.source = self.source.clone();
        let req = pb::PublishRequest {
            topic: topic.into(),
            events: vec![pb::PublishEntry { event: Some(e.into()), idempotency_key: String::new() }],
        };
        let r = self.raw.publish(req).await?.into_inner();
        Ok(r.results.into_iter().next().map(|r| r.position).unwrap_or_default())
    }

    /// Runs `handler` on each delivery, one at a time: `Ok` acks, `Err(reason)`
    /// nacks (redelivered soon, with a higher delivery count). Returns when
    /// the stream ends, on an error, or after `limit` deliveries.
    pub async fn subscribe<F, Fut>(&mut self, spec: Subscribe, mut handler: F) -> Result<usize, Status>
    where
        F: FnMut(Received) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let (tx, rx) = mpsc::channel(spec.max_in_flight.max(1) as usize + 1);
        let send = |cmd| pb::SubscribeRequest { command: Some(cmd) };
        let open = pb::Open {
            topics: spec.topics.clone(),
            group: spec.group.clone(),
            consumer: spec.consumer.clone(),
            max_in_flight: spec.max_in_flight,
            start: if spec.from_earliest { pb::StartFrom::Earliest } else { pb::StartFrom::Latest } as i32,
        };
        tx.send(send(pb::subscribe_request::Command::Open(open)))
            .await
            .map_err(|_| Status::internal("request stream closed"))?;
        let mut stream = self.raw.subscribe(ReceiverStream::new(rx)).await?.into_inner();
        let mut handled = 0usize;
        while let Some(msg) = stream.message().await? {
            let d = match msg.message {
                Some(pb::subscribe_response::Message::Delivery(d)) => d,
                Some(pb::subscribe_response::Message::Error(e)) => {
                    tracing::warn!(topic = %e.topic, position = %e.position, code = e.code, message = %e.message,
                        "event command failed");
                    continue;
                }
                _ => continue,
            };
            let received = Received {
                topic: d.topic.clone(),
                position: d.position.clone(),
                delivery_count: d.delivery_count,
                envelope: d.event.map(Envelope::from).unwrap_or_default(),
            };
            let cmd = match handler(received).await {
                Ok(()) => pb::subscribe_request::Command::Ack(pb::Ack { topic: d.topic, position: d.position }),
                Err(reason) => pb::subscribe_request::Command::Nack(pb::Nack {
                    topic: d.topic,
                    position: d.position,
                    delay_ms: 0,
                    reason,
                }),
            };
            if tx.send(send(cmd)).await.is_err() {
                break;
            }
            handled += 1;
            if spec.limit.is_some_and(|l| handled >= l) {
                // Half-close: the server applies the commands sent so far,
                // then ends the stream. Deliveries still in flight are
                // redelivered to the group after the visibility timeout.
                drop(tx);
                while stream.message().await?.is_some() {}
                break;
            }
        }
        Ok(handled)
    }
}
