//! The hub's bridge to control's event bus (`redfire.events.v1`) and its
//! local fan-out.
//!
//! Upstream: one `Subscribe` stream per topic that some local client has
//! subscribed to, in consumer group `<service>.hub.<replica>` (consumer
//! `<replica>`; a group named after the gateway's service, which control
//! lets the gateway reset and delete). A group delivers each event to one consumer, so every
//! gateway replica has its own group and sees every event. When a topic is
//! first opened in this process the group is moved to the end of the topic
//! and the topic's last position is remembered: whatever an earlier process
//! of the same replica left pending is acked and dropped, never sent to
//! clients who subscribed after it was published. Across a reconnect of
//! the stream the group resumes where it was (events published meanwhile
//! are delivered), and the positions already fanned out are remembered so a
//! redelivery reaches nobody twice. Each event is acked after the fan-out.
//! The stream stays open while the process runs, so the group keeps up and
//! never holds the topic's retention (a group of a replica name that is
//! never used again does: see ARCHITECTURE.md).
//!
//! Fan-out: the `event` message is serialized once per event and a cheap
//! clone goes into each subscriber's bounded queue with `try_send`; a full
//! queue marks that connection slow ([`Outbox::slow`]) and drops it from the
//! topic. Nothing waits on a client.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::Channel;

use super::metrics::HubMetrics;
use super::protocol;
use crate::mesh::events::{Envelope, Position};
use crate::proto::events::v1 as pb;
use crate::proto::events::v1::events_client::EventsClient;

/// How long a subscribe waits for the topic's upstream stream to open.
pub const OPEN_WAIT: Duration = Duration::from_secs(5);
/// Topics this replica keeps open upstream at most.
pub const MAX_TOPICS: usize = 1024;
/// Positions remembered per topic to drop redeliveries.
const SEEN: usize = 4096;
/// How long deleting the groups at shutdown may take.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Deliveries in flight per upstream stream.
const UPSTREAM_IN_FLIGHT: u32 = 256;

/// One connection's queue as the fan-out sees it.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// Messages for the client (bounded).
    pub tx: mpsc::Sender<Message>,
    /// Raised when the queue was full: the connection closes.
    pub slow: Arc<Slow>,
}

/// A one-way flag the fan-out raises on a connection whose queue is full.
/// Its connection polls it on every turn of its loop, so it is an atomic
/// and a waker slot (no lock, unlike a `Notify` waiter list).
#[derive(Debug, Default)]
pub struct Slow {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Slow {
    /// Marks the connection slow and wakes its task.
    pub fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once raised.
    pub fn poll_raised(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.raised.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.raised.load(Ordering::Acquire) { Poll::Ready(()) } else { Poll::Pending }
    }

    /// Resolves once raised.
    pub async fn raised(&self) {
        std::future::poll_fn(|cx| self.poll_raised(cx)).await
    }
}

type Subscribers = Mutex<HashMap<u64, Outbox>>;

#[derive(Debug)]
struct Topic {
    subscribers: Arc<Subscribers>,
    opened: watch::Receiver<bool>,
    task: tokio::task::AbortHandle,
}

/// See the module docs.
#[derive(Debug)]
pub struct Bus {
    client: EventsClient<Channel>,
    group: String,
    consumer: String,
    source: String,
    topics: Mutex<HashMap<String, Topic>>,
    metrics: HubMetrics,
}

impl Drop for Bus {
    fn drop(&mut self) {
        for t in self.topics.lock().unwrap_or_else(|e| e.into_inner()).values() {
            t.task.abort();
        }
    }
}

impl Bus {
    /// A bus client of control on `channel`; events published through it
    /// carry `source`.
    pub fn new(channel: Channel, replica: &str, source: &str, metrics: HubMetrics) -> Bus {
        Bus {
            client: EventsClient::new(channel),
            group: format!("{source}.hub.{replica}"),
            consumer: replica.to_string(),
            source: source.to_string(),
            topics: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Stops every upstream stream and deletes this replica's group on each
    /// topic (at most [`CLOSE_WAIT`] for all). Called once the gateway has
    /// drained: a group nobody reads would hold its topics' retention, and a
    /// restarted replica moves its groups to the end anyway, so nothing of
    /// value goes with it.
    pub async fn close(&self) {
        let topics: Vec<String> = {
            let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
            topics
                .drain()
                .map(|(name, t)| {
                    t.task.abort();
                    name
                })
                .collect()
        };
        let deletes = topics.into_iter().map(|topic| {
            let mut client = self.client.clone();
            let group = self.group.clone();
            async move {
                let req = pb::DeleteGroupRequest { topic: topic.clone(), group };
                if let Err(e) = client.delete_group(req).await {
                    tracing::debug!(%topic, error = %e.message(), "hub group not deleted");
                }
            }
        });
        if tokio::time::timeout(CLOSE_WAIT, futures::future::join_all(deletes)).await.is_err() {
            tracing::warn!(group = %self.group, "deleting the hub's groups timed out; they hold their topics' retention until deleted (DeleteGroup)");
        }
    }

    /// Adds connection `id` to `topic`'s subscribers, opening the topic
    /// upstream if needed; returns once the upstream stream is open.
    pub async fn subscribe(&self, topic: &str, id: u64, outbox: Outbox) -> Result<(), String> {
        let (subscribers, mut opened) = {
            let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
            if !topics.contains_key(topic) && topics.len() >= MAX_TOPICS {
                return Err(format!("this gateway has {MAX_TOPICS} topics open"));
            }
            let t = topics.entry(topic.to_string()).or_insert_with(|| self.open(topic));
            t.subscribers.lock().unwrap_or_else(|e| e.into_inner()).insert(id, outbox);
            (t.subscribers.clone(), t.opened.clone())
        };
        match tokio::time::timeout(OPEN_WAIT, opened.wait_for(|o| *o)).await {
            Ok(Ok(_)) => Ok(()),
            _ => {
                subscribers.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                Err("the event bus is not reachable".into())
            }
        }
    }

    /// Removes connection `id` from `topic`'s subscribers.
    pub fn unsubscribe(&self, topic: &str, id: u64) {
        if let Some(t) = self.topics.lock().unwrap_or_else(|e| e.into_inner()).get(topic) {
            t.subscribers.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        }
    }

    /// Publishes one JSON event for user `sub`; its position.
    pub async fn publish(&self, topic: &str, event_type: &str, data: Vec<u8>, sub: &str) -> Result<String, String> {
        let mut e = Envelope::domain(event_type, "", "", data);
        e.source = self.source.clone();
        e.extensions.insert("user".into(), sub.to_string());
        let req = pb::PublishRequest {
            topic: topic.into(),
            events: vec![pb::PublishEntry { event: Some(e.into()), idempotency_key: String::new() }],
        };
        let r = self.client.clone().publish(req).await.map_err(|s| s.message().to_string())?;
        Ok(r.into_inner().results.into_iter().next().map(|r| r.position).unwrap_or_default())
    }

    fn open(&self, topic: &str) -> Topic {
        let subscribers = Arc::new(Subscribers::default());
        let (opened_tx, opened) = watch::channel(false);
        let upstream = Upstream {
            client: self.client.clone(),
            topic: topic.to_string(),
            group: self.group.clone(),
            consumer: self.consumer.clone(),
            subscribers: subscribers.clone(),
            opened: opened_tx,
            metrics: self.metrics.clone(),
        };
        let task = tokio::spawn(upstream.run()).abort_handle();
        Topic { subscribers, opened, task }
    }
}

/// Positions already fanned out (the most recent [`SEEN`]).
#[derive(Debug, Default)]
struct Seen {
    set: HashSet<Position>,
    order: VecDeque<Position>,
}

impl Seen {
    /// True when `p` is new (and now remembered).
    fn insert(&mut self, p: Position) -> bool {
        if !self.set.insert(p) {
            return false;
        }
        self.order.push_back(p);
        if self.order.len() > SEEN
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

struct Upstream {
    client: EventsClient<Channel>,
    topic: String,
    group: String,
    consumer: String,
    subscribers: Arc<Subscribers>,
    opened: watch::Sender<bool>,
    metrics: HubMetrics,
}

impl Upstream {
    async fn run(mut self) {
        let mut first = true;
        let mut skip_through = Position::ZERO;
        let mut seen = Seen::default();
        let mut failures = 0u32;
        loop {
            if first {
                match self.start_at_end().await {
                    Ok(p) => skip_through = p,
                    Err(e) => {
                        tracing::warn!(topic = %self.topic, error = %e, "hub cannot reach the event bus");
                        failures += 1;
                        backoff(failures).await;
                        continue;
                    }
                }
            }
            let mut opened = false;
            match self.stream(&mut first, &mut opened, skip_through, &mut seen).await {
                Ok(()) => tracing::info!(topic = %self.topic, "hub event stream ended; reopening"),
                Err(e) => tracing::warn!(topic = %self.topic, error = %e, "hub event stream failed; reopening"),
            }
            self.opened.send_replace(false);
            // Back off more while the stream cannot open at all.
            failures = if opened { 1 } else { failures + 1 };
            backoff(failures).await;
        }
    }

    /// Moves the group to the topic's end; the last position now.
    async fn start_at_end(&mut self) -> Result<Position, tonic::Status> {
        let reset =
            pb::ResetGroupRequest { topic: self.topic.clone(), group: self.group.clone(), position: "$".into() };
        match self.client.reset_group(reset).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s),
        }
        match self.client.describe_topic(pb::DescribeTopicRequest { topic: self.topic.clone() }).await {
            Ok(d) => Ok(d.into_inner().last_position.parse().unwrap_or(Position::ZERO)),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(Position::ZERO),
            Err(s) => Err(s),
        }
    }

    async fn stream(
        &mut self,
        first: &mut bool,
        opened: &mut bool,
        skip_through: Position,
        seen: &mut Seen,
    ) -> Result<(), tonic::Status> {
        let (tx, rx) = mpsc::channel(UPSTREAM_IN_FLIGHT as usize + 8);
        let open = pb::Open {
            topics: vec![self.topic.clone()],
            group: self.group.clone(),
            consumer: self.consumer.clone(),
            max_in_flight: UPSTREAM_IN_FLIGHT,
            start: pb::StartFrom::Latest as i32,
        };
        let cmd = |c| pb::SubscribeRequest { command: Some(c) };
        let _ = tx.send(cmd(pb::subscribe_request::Command::Open(open))).await;
        let mut stream = self.client.subscribe(ReceiverStream::new(rx)).await?.into_inner();
        while let Some(msg) = stream.message().await? {
            match msg.message {
                Some(pb::subscribe_response::Message::Opened(_)) => {
                    *first = false;
                    *opened = true;
                    self.opened.send_replace(true);
                }
                Some(pb::subscribe_response::Message::Delivery(d)) => {
                    let position: Position = d.position.parse().unwrap_or(Position::ZERO);
                    if position > skip_through && seen.insert(position) {
                        self.metrics.bus_events.inc();
                        let cloud = d.event.map(Envelope::from).unwrap_or_default().to_json();
                        self.fan_out(protocol::event(&self.topic, &d.position, cloud));
                    }
                    let ack = pb::Ack { topic: d.topic, position: d.position };
                    if tx.send(cmd(pb::subscribe_request::Command::Ack(ack))).await.is_err() {
                        return Ok(());
                    }
                }
                Some(pb::subscribe_response::Message::Error(e)) => {
                    tracing::debug!(topic = %e.topic, position = %e.position, message = %e.message, "hub ack failed");
                }
                None => {}
            }
        }
        Ok(())
    }

    /// One message to every subscriber; full queues are marked slow and dropped.
    fn fan_out(&self, msg: Message) {
        let mut sent = 0u64;
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, o| match o.tx.try_send(msg.clone()) {
            Ok(()) => {
                sent += 1;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                o.slow.raise();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        self.metrics.message_out("event", sent);
    }
}

async fn backoff(failures: u32) {
    let cap = Duration::from_millis(100).saturating_mul(1 << failures.min(6)).min(Duration::from_secs(5));
    tokio::time::sleep(cap.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_positions_are_bounded_and_drop_repeats() {
        let mut s = Seen::default();
        let p = |n| Position { ms: n, seq: 0 };
        assert!(s.insert(p(1)));
        assert!(!s.insert(p(1)));
        for n in 2..(SEEN as u64 + 10) {
            assert!(s.insert(p(n)));
        }
        assert_eq!(s.set.len(), SEEN);
        assert!(s.insert(p(1)), "forgotten after SEEN newer ones");
    }
}
