//! One subscriber's delivery loop, shared by the gRPC `Subscribe` and by
//! in-process code (publish/subscribe from Rust without gRPC).
//!
//! The loop fetches at most `max_in_flight` minus the events it has handed
//! out and not yet seen acked, nacked or expired, so a subscriber never holds
//! more than `max_in_flight` events and the server never buffers without
//! bound: when the consumer stops reading, the bounded channel fills, the
//! loop stops fetching, and events stay in the store for other consumers.
//! Expired leases are claimed every quarter visibility timeout (≤ 1 s).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::store::EventStore;
use crate::control::metrics::events::EventMetrics;
use crate::mesh::events::{Delivery, EventError, Position, StartFrom, validate_name};

/// What a subscriber asks for.
#[derive(Debug, Clone)]
pub struct SubscribeSpec {
    /// Topics to consume (one group of that name on each).
    pub topics: Vec<String>,
    /// Consumer group.
    pub group: String,
    /// This consumer's name (unique within the group).
    pub consumer: String,
    /// Most events delivered and not yet acked or nacked.
    pub max_in_flight: usize,
    /// Where a new group starts.
    pub start: StartFrom,
}

impl SubscribeSpec {
    /// Checks names and bounds.
    pub fn validate(&self, limit: usize) -> Result<(), EventError> {
        if self.topics.is_empty() {
            return Err(EventError::InvalidArgument("topics: at least one is needed".into()));
        }
        if self.topics.len() > 64 {
            return Err(EventError::InvalidArgument("topics: at most 64".into()));
        }
        for t in &self.topics {
            validate_name("topic", t)?;
        }
        validate_name("group", &self.group)?;
        validate_name("consumer", &self.consumer)?;
        if self.max_in_flight == 0 || self.max_in_flight > limit {
            return Err(EventError::InvalidArgument(format!(
                "max_in_flight: {} is outside 1..={limit}",
                self.max_in_flight
            )));
        }
        Ok(())
    }
}

/// Events this subscriber holds, with their lease deadlines.
#[derive(Debug)]
struct InFlight {
    leases: Mutex<HashMap<(String, Position), Instant>>,
    freed: Notify,
    claim_now: Notify,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Position), Instant>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, topic: &str, position: Position) {
        if self.lock().remove(&(topic.to_string(), position)).is_some() {
            self.freed.notify_one();
        }
    }
}

/// Acks, nacks and extends for a [`Subscription`]'s deliveries. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    store: Arc<dyn EventStore>,
    metrics: Arc<EventMetrics>,
    group: String,
    consumer: String,
    in_flight: Arc<InFlight>,
}

impl Handle {
    /// Done with the event.
    pub async fn ack(&self, topic: &str, position: Position) -> Result<(), EventError> {
        let r = self.store.ack(topic, &self.group, &self.consumer, position).await;
        self.settle(topic, position, &r);
        if r.is_ok() {
            self.metrics.acked(topic, &self.group);
        }
        r
    }

    /// Give the event back for redelivery after `delay`.
    pub async fn nack(&self, topic: &str, position: Position, delay: Duration, reason: &str) -> Result<(), EventError> {
        let vt = self.store.settings().visibility_timeout;
        if delay > vt {
            return Err(EventError::InvalidArgument(format!(
                "delay_ms: {} is over the visibility timeout ({} ms)",
                delay.as_millis(),
                vt.as_millis()
            )));
        }
        let r = self.store.nack(topic, &self.group, &self.consumer, position, delay, reason).await;
        self.settle(topic, position, &r);
        if r.is_ok() {
            self.metrics.nacked(topic, &self.group);
            if delay.is_zero() {
                self.in_flight.claim_now.notify_one();
            }
        }
        r
    }

    /// Keep the lease for another visibility timeout.
    pub async fn extend(&self, topic: &str, position: Position) -> Result<(), EventError> {
        let r = self.store.extend(topic, &self.group, &self.consumer, position).await;
        match &r {
            Ok(()) => {
                let deadline = Instant::now() + self.store.settings().visibility_timeout;
                if let Some(d) = self.in_flight.lock().get_mut(&(topic.to_string(), position)) {
                    *d = deadline;
                }
            }
            Err(_) => self.settle(topic, position, &r),
        }
        r
    }

    /// The slot is free after an ack or nack, and after a failed one (the
    /// lease is gone: expired and claimed, or never ours).
    fn settle(&self, topic: &str, position: Position, r: &Result<(), EventError>) {
        if !matches!(r, Err(EventError::Unavailable(_) | EventError::InvalidArgument(_))) {
            self.in_flight.release(topic, position);
        }
    }
}

/// A running subscriber: deliveries arrive on `deliveries`; settle them with
/// `handle`. Dropping it stops the loop (held events are redelivered to the
/// group after the visibility timeout).
#[derive(Debug)]
pub struct Subscription {
    /// Deliveries, at most `max_in_flight` unsettled.
    pub deliveries: mpsc::Receiver<Result<Delivery, EventError>>,
    /// Ack / nack / extend.
    pub handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscription {
    /// Creates the groups (if missing) and starts delivering.
    pub async fn start(
        store: Arc<dyn EventStore>,
        metrics: Arc<EventMetrics>,
        spec: SubscribeSpec,
    ) -> Result<Subscription, EventError> {
        for t in &spec.topics {
            store.ensure_group(t, &spec.group, spec.start).await?;
        }
        let in_flight =
            Arc::new(InFlight { leases: Mutex::new(HashMap::new()), freed: Notify::new(), claim_now: Notify::new() });
        let (tx, deliveries) = mpsc::channel(spec.max_in_flight);
        let handle = Handle {
            store: store.clone(),
            metrics: metrics.clone(),
            group: spec.group.clone(),
            consumer: spec.consumer.clone(),
            in_flight: in_flight.clone(),
        };
        let task = tokio::spawn(run(store, metrics, spec, in_flight, tx));
        Ok(Subscription { deliveries, handle, task })
    }
}

async fn run(
    store: Arc<dyn EventStore>,
    metrics: Arc<EventMetrics>,
    spec: SubscribeSpec,
    in_flight: Arc<InFlight>,
    tx: mpsc::Sender<Result<Delivery, EventError>>,
) {
    let vt = store.settings().visibility_timeout;
    let claim_every = (vt / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let poll = store.poll_interval();
    let mut changes: Vec<_> = spec.topics.iter().map(|t| store.changes(t)).collect();
    let mut next_claim = Instant::now();
    let mut turn = 0usize;
    loop {
        let now = Instant::now();
        // Leases that ran out are no longer ours: free their slots.
        let free = {
            let mut leases = in_flight.lock();
            leases.retain(|_, deadline| *deadline > now);
            spec.max_in_flight.saturating_sub(leases.len())
        };
        let mut got = 0usize;
        if free > 0 {
            let claim = now >= next_claim;
            if claim {
                next_claim = now + claim_every;
            }
            // Round-robin the starting topic so one busy topic cannot starve others.
            turn = turn.wrapping_add(1);
            let n = spec.topics.len();
            for i in 0..n {
                let topic = &spec.topics[(turn + i) % n];
                let want = free - got;
                if want == 0 {
                    break;
                }
                let fetched = match store.fetch(topic, &spec.group, &spec.consumer, want, claim).await {
                    Ok(f) => f,
                    Err(e) => {
                        let fatal = !matches!(e, EventError::Unavailable(_));
                        if tx.send(Err(e)).await.is_err() || fatal {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                if fetched.dead_lettered > 0 {
                    metrics.dead_lettered(topic, &spec.group, fetched.dead_lettered);
                }
                if !fetched.trimmed.is_empty() {
                    metrics.trimmed_unacked(topic, &spec.group, fetched.trimmed.len() as u64);
                    tracing::warn!(%topic, group = %spec.group, positions = ?fetched.trimmed,
                        "pending events were trimmed before they were acked");
                }
                got += fetched.deliveries.len();
                let deadline = Instant::now() + vt;
                {
                    let mut leases = in_flight.lock();
                    for d in &fetched.deliveries {
                        leases.insert((d.topic.clone(), d.position), deadline);
                    }
                }
                for d in fetched.deliveries {
                    metrics.delivered(&d.topic, &spec.group, d.delivery_count, d.envelope.time_unix_us);
                    if tx.send(Ok(d)).await.is_err() {
                        return;
                    }
                }
            }
        }
        if got > 0 {
            continue;
        }
        // Nothing to do: wait for a publish, a freed slot, the next claim,
        // the poll for other replicas' publishes, or the consumer leaving.
        let wake = futures::future::select_all(changes.iter_mut().map(|c| Box::pin(c.changed().map(|_| ()))));
        let poll_sleep = async {
            match poll {
                Some(p) => tokio::time::sleep(p).await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            _ = wake, if free > 0 => {}
            _ = in_flight.freed.notified() => {}
            _ = in_flight.claim_now.notified() => next_claim = Instant::now(),
            _ = tokio::time::sleep_until(next_claim) => {}
            _ = poll_sleep, if free > 0 => {}
            _ = tx.closed() => return,
        }
    }
}
