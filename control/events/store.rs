//! The event store trait: what both backends (in-memory and Redis Streams)
//! implement, and what in-process code (the gRPC service, the gateway's
//! WebSocket hub) calls. It is object-safe: hold an `Arc<dyn EventStore>`.
//!
//! Delivery is pull-based, like Redis consumer groups: a consumer `fetch`es
//! up to N events (expired leases first, then new events), then `ack`s,
//! `nack`s or `extend`s each. [`super::subscription`] runs that loop for a
//! subscriber with bounded in-flight and wakes on [`EventStore::changes`].

use std::time::Duration;

use tokio::sync::watch;

use crate::mesh::events::{
    Envelope, EventError, Fetched, NewEvent, Position, Published, Retention, StartFrom, Stored, TopicInfo,
};

/// Settings the stores share (see `control/config.rs` for the defaults).
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// A delivered event not acked, nacked or extended for this long goes to
    /// another consumer of its group.
    pub visibility_timeout: Duration,
    /// Deliveries before an event is moved to `<topic>.dlq`.
    pub max_deliveries: u32,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
    /// Retention of topics created implicitly (by publish or subscribe).
    pub default_retention: Retention,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            visibility_timeout: Duration::from_secs(30),
            max_deliveries: 5,
            idempotency_window: Duration::from_secs(600),
            default_retention: Retention { max_len: 1_000_000, max_age: Duration::ZERO },
        }
    }
}

/// Event store operations. Every method validates nothing the gRPC layer
/// already checked (names, payload sizes) except what only the store knows.
#[tonic::async_trait]
pub trait EventStore: Send + Sync + std::fmt::Debug + 'static {
    /// The settings the store was built with.
    fn settings(&self) -> &EventSettings;

    /// Creates `topic` or updates its retention; true when it was created.
    async fn create_topic(&self, topic: &str, retention: Retention) -> Result<bool, EventError>;

    /// Appends events in order (creating the topic if needed).
    async fn publish(&self, topic: &str, events: Vec<NewEvent>) -> Result<Vec<Published>, EventError>;

    /// Creates `group` on `topic` (and the topic) if missing.
    async fn ensure_group(&self, topic: &str, group: &str, start: StartFrom) -> Result<(), EventError>;

    /// Up to `max` events for `consumer`: when `claim`, first the group's
    /// events whose lease expired (their delivery count goes up; past the
    /// maximum they move to the dead-letter topic instead), then new events.
    async fn fetch(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        max: usize,
        claim: bool,
    ) -> Result<Fetched, EventError>;

    /// Done with an event: it is never delivered to the group again.
    async fn ack(&self, topic: &str, group: &str, consumer: &str, position: Position) -> Result<(), EventError>;

    /// Give an event back: redelivered after `delay` (at most the visibility timeout).
    async fn nack(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        position: Position,
        delay: Duration,
        reason: &str,
    ) -> Result<(), EventError>;

    /// Renew the lease: not redelivered for another visibility timeout.
    async fn extend(&self, topic: &str, group: &str, consumer: &str, position: Position) -> Result<(), EventError>;

    /// Up to `limit` events with positions after `after`, in order.
    async fn read_range(&self, topic: &str, after: Position, limit: usize) -> Result<Vec<Stored>, EventError>;

    /// Appends to an aggregate if it is at `expected` (when given); the
    /// events also go to `topic`. Returns the new version and the positions.
    async fn append(
        &self,
        topic: &str,
        aggregate_type: &str,
        aggregate_id: &str,
        expected: Option<u64>,
        events: Vec<Envelope>,
    ) -> Result<(u64, Vec<Position>), EventError>;

    /// An aggregate's version and events in order (never trimmed).
    async fn read_aggregate(&self, topic: &str, aggregate_id: &str) -> Result<(u64, Vec<Envelope>), EventError>;

    /// Length, groups, lag, pending and dead letters of `topic`.
    async fn describe(&self, topic: &str) -> Result<TopicInfo, EventError>;

    /// Moves `group`'s read position to `position` (`None` = the end).
    async fn reset_group(&self, topic: &str, group: &str, position: Option<Position>) -> Result<(), EventError>;

    /// Deletes `group` (its read position and pending events): it no longer
    /// holds `topic`'s retention. NotFound for an unknown topic or group.
    async fn delete_group(&self, topic: &str, group: &str) -> Result<(), EventError>;

    /// Every topic's name (dead-letter topics included).
    async fn topics(&self) -> Result<Vec<String>, EventError>;

    /// Applies every topic's retention, trimming only events every group
    /// has acked; returns how many events were removed.
    async fn trim(&self) -> Result<u64, EventError>;

    /// Bumped when this process publishes to `topic` (subscribers wait on it).
    fn changes(&self, topic: &str) -> watch::Receiver<u64>;

    /// How often subscribers look for events published by other replicas
    /// (`None`: every publish goes through this process).
    fn poll_interval(&self) -> Option<Duration>;

    /// `Err(reason)` when the store cannot serve.
    fn ready(&self) -> Result<(), String>;
}

/// Per-topic change counters, shared by both stores.
#[derive(Debug, Default)]
pub struct Changes(std::sync::Mutex<std::collections::HashMap<String, watch::Sender<u64>>>);

impl Changes {
    /// A receiver for `topic`.
    pub fn subscribe(&self, topic: &str) -> watch::Receiver<u64> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(topic.to_string()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Wakes `topic`'s subscribers.
    pub fn bump(&self, topic: &str) {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(topic) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}
