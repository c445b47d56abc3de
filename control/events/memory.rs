//! The in-memory event store: the embedded default. Every topic lives in this
//! process behind one mutex and is gone when it exits. Semantics match the
//! Redis store (same leases, delivery counts, dead letters, retention), so one
//! test suite runs against both.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::store::{Changes, EventSettings, EventStore};
use crate::mesh::events::{
    Delivery, Envelope, EventError, Fetched, GroupInfo, NewEvent, Position, Published, Retention, StartFrom, Stored,
    TopicInfo, dlq_topic,
};

#[derive(Debug)]
struct Pending {
    consumer: String,
    count: u32,
    /// Redelivered to whoever claims it from then on.
    visible_at: Instant,
    reason: String,
}

#[derive(Debug, Default)]
struct Group {
    last_delivered: Position,
    pending: BTreeMap<Position, Pending>,
    consumers: HashSet<String>,
}

#[derive(Debug, Default)]
struct Topic {
    retention: Retention,
    events: VecDeque<Stored>,
    last: Position,
    groups: BTreeMap<String, Group>,
    idem: HashMap<String, (Position, Instant)>,
    aggregates: HashMap<String, Vec<Envelope>>,
}

impl Topic {
    fn new(retention: Retention) -> Topic {
        Topic { retention, ..Default::default() }
    }

    fn next_position(&mut self) -> Position {
        let ms = crate::mesh::events::unix_us() as u64 / 1000;
        self.last = if ms > self.last.ms { Position { ms, seq: 0 } } else { self.last.next() };
        self.last
    }

    fn push(&mut self, envelope: Envelope) -> Position {
        let position = self.next_position();
        self.events.push_back(Stored { position, envelope });
        position
    }

    fn after(&self, p: Position) -> impl Iterator<Item = &Stored> {
        let start = self.events.partition_point(|s| s.position <= p);
        self.events.range(start..)
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct MemoryEventStore {
    settings: EventSettings,
    topics: Mutex<HashMap<String, Topic>>,
    changes: Changes,
}

impl MemoryEventStore {
    /// An empty store.
    pub fn new(settings: EventSettings) -> Self {
        MemoryEventStore { settings, topics: Mutex::new(HashMap::new()), changes: Changes::default() }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Topic>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn unknown_topic(topic: &str) -> EventError {
    EventError::NotFound(format!("unknown topic {topic:?}"))
}

fn unknown_group(topic: &str, group: &str) -> EventError {
    EventError::NotFound(format!("unknown group {group:?} on topic {topic:?}"))
}

/// The lease `consumer` holds on `position`, or the error the caller gets.
fn leased<'a>(
    topics: &'a mut HashMap<String, Topic>,
    topic: &str,
    group: &str,
    consumer: &str,
    position: Position,
) -> Result<&'a mut Group, EventError> {
    let t = topics.get_mut(topic).ok_or_else(|| unknown_topic(topic))?;
    let g = t.groups.get_mut(group).ok_or_else(|| unknown_group(topic, group))?;
    match g.pending.get(&position) {
        None => Err(EventError::NotFound(format!(
            "position {position} is not pending in group {group:?} of topic {topic:?} (never delivered, or already acked)"
        ))),
        Some(p) if p.consumer != consumer => Err(EventError::Foreign(format!(
            "position {position} of topic {topic:?} is leased to consumer {:?}, not {consumer:?}",
            p.consumer
        ))),
        Some(_) => Ok(g),
    }
}

/// The dead letter of `s`: the event with the reason in its extensions.
pub(crate) fn dead_letter(s: &Stored, topic: &str, group: &str, count: u32, reason: &str) -> Envelope {
    let mut e = s.envelope.clone();
    e.extensions.insert("dlqtopic".into(), topic.into());
    e.extensions.insert("dlqgroup".into(), group.into());
    e.extensions.insert("dlqposition".into(), s.position.to_string());
    e.extensions.insert("dlqdeliveries".into(), count.to_string());
    e.extensions.insert("dlqreason".into(), reason.into());
    e
}

/// The reason recorded on a dead letter.
pub(crate) fn dlq_reason(max: u32, last_nack: &str) -> String {
    if last_nack.is_empty() {
        format!("not acked after {max} deliveries")
    } else {
        format!("not acked after {max} deliveries; last nack: {last_nack}")
    }
}

#[tonic::async_trait]
impl EventStore for MemoryEventStore {
    fn settings(&self) -> &EventSettings {
        &self.settings
    }

    async fn create_topic(&self, topic: &str, retention: Retention) -> Result<bool, EventError> {
        let mut topics = self.lock();
        match topics.get_mut(topic) {
            Some(t) => {
                t.retention = retention;
                Ok(false)
            }
            None => {
                topics.insert(topic.to_string(), Topic::new(retention));
                Ok(true)
            }
        }
    }

    async fn publish(&self, topic: &str, events: Vec<NewEvent>) -> Result<Vec<Published>, EventError> {
        let now = Instant::now();
        let window = self.settings.idempotency_window;
        let out = {
            let mut topics = self.lock();
            let t = topics.entry(topic.to_string()).or_insert_with(|| Topic::new(self.settings.default_retention));
            if t.idem.len() > 1024 {
                t.idem.retain(|_, (_, exp)| *exp > now);
            }
            let mut out = Vec::with_capacity(events.len());
            for e in events {
                if let Some(key) = &e.idempotency_key
                    && let Some((p, exp)) = t.idem.get(key)
                    && *exp > now
                {
                    out.push(Published { position: *p, duplicate: true });
                    continue;
                }
                let position = t.push(e.envelope);
                if let Some(key) = e.idempotency_key {
                    t.idem.insert(key, (position, now + window));
                }
                out.push(Published { position, duplicate: false });
            }
            out
        };
        self.changes.bump(topic);
        Ok(out)
    }

    async fn ensure_group(&self, topic: &str, group: &str, start: StartFrom) -> Result<(), EventError> {
        let mut topics = self.lock();
        let t = topics.entry(topic.to_string()).or_insert_with(|| Topic::new(self.settings.default_retention));
        let last = t.last;
        t.groups.entry(group.to_string()).or_insert_with(|| Group {
            last_delivered: match start {
                StartFrom::Latest => last,
                StartFrom::Earliest => Position::ZERO,
            },
            ..Default::default()
        });
        Ok(())
    }

    async fn fetch(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        max: usize,
        claim: bool,
    ) -> Result<Fetched, EventError> {
        let now = Instant::now();
        let vt = self.settings.visibility_timeout;
        let max_deliveries = self.settings.max_deliveries;
        let mut out = Fetched::default();
        let mut dead = Vec::new();
        {
            let mut topics = self.lock();
            let t = topics.get_mut(topic).ok_or_else(|| unknown_topic(topic))?;
            let Topic { events, groups, .. } = t;
            let g = groups.get_mut(group).ok_or_else(|| unknown_group(topic, group))?;
            g.consumers.insert(consumer.to_string());
            let find =
                |p: Position| events.binary_search_by(|s| s.position.cmp(&p)).ok().and_then(|i| events.get(i)).cloned();
            if claim {
                let expired: Vec<Position> =
                    g.pending.iter().filter(|(_, p)| p.visible_at <= now).map(|(pos, _)| *pos).collect();
                for pos in expired {
                    if out.deliveries.len() >= max {
                        break;
                    }
                    let Some(stored) = find(pos) else {
                        g.pending.remove(&pos);
                        out.trimmed.push(pos);
                        continue;
                    };
                    let Some(p) = g.pending.get_mut(&pos) else { continue };
                    if p.count >= max_deliveries {
                        let reason = dlq_reason(p.count, &p.reason);
                        dead.push(dead_letter(&stored, topic, group, p.count, &reason));
                        g.pending.remove(&pos);
                        continue;
                    }
                    p.count += 1;
                    p.consumer = consumer.to_string();
                    p.visible_at = now + vt;
                    out.deliveries.push(Delivery {
                        topic: topic.to_string(),
                        position: pos,
                        delivery_count: p.count,
                        envelope: stored.envelope,
                    });
                }
            }
            let start = events.partition_point(|s| s.position <= g.last_delivered);
            for s in events.range(start..).take(max - out.deliveries.len().min(max)) {
                g.last_delivered = s.position;
                g.pending.insert(
                    s.position,
                    Pending { consumer: consumer.to_string(), count: 1, visible_at: now + vt, reason: String::new() },
                );
                out.deliveries.push(Delivery {
                    topic: topic.to_string(),
                    position: s.position,
                    delivery_count: 1,
                    envelope: s.envelope.clone(),
                });
            }
            if !dead.is_empty() {
                out.dead_lettered = dead.len() as u64;
                let dlq = topics.entry(dlq_topic(topic)).or_insert_with(|| Topic::new(self.settings.default_retention));
                for e in dead {
                    dlq.push(e);
                }
            }
        }
        if out.dead_lettered > 0 {
            self.changes.bump(&dlq_topic(topic));
        }
        Ok(out)
    }

    async fn ack(&self, topic: &str, group: &str, consumer: &str, position: Position) -> Result<(), EventError> {
        let mut topics = self.lock();
        let g = leased(&mut topics, topic, group, consumer, position)?;
        g.pending.remove(&position);
        Ok(())
    }

    async fn nack(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        position: Position,
        delay: Duration,
        reason: &str,
    ) -> Result<(), EventError> {
        let mut topics = self.lock();
        let g = leased(&mut topics, topic, group, consumer, position)?;
        if let Some(p) = g.pending.get_mut(&position) {
            p.visible_at = Instant::now() + delay.min(self.settings.visibility_timeout);
            p.reason = reason.to_string();
        }
        Ok(())
    }

    async fn extend(&self, topic: &str, group: &str, consumer: &str, position: Position) -> Result<(), EventError> {
        let mut topics = self.lock();
        let g = leased(&mut topics, topic, group, consumer, position)?;
        if let Some(p) = g.pending.get_mut(&position) {
            p.visible_at = Instant::now() + self.settings.visibility_timeout;
        }
        Ok(())
    }

    async fn read_range(&self, topic: &str, after: Position, limit: usize) -> Result<Vec<Stored>, EventError> {
        let topics = self.lock();
        let t = topics.get(topic).ok_or_else(|| unknown_topic(topic))?;
        Ok(t.after(after).take(limit).cloned().collect())
    }

    async fn append(
        &self,
        topic: &str,
        aggregate_type: &str,
        aggregate_id: &str,
        expected: Option<u64>,
        events: Vec<Envelope>,
    ) -> Result<(u64, Vec<Position>), EventError> {
        let (version, positions) = {
            let mut topics = self.lock();
            let t = topics.entry(topic.to_string()).or_insert_with(|| Topic::new(self.settings.default_retention));
            let Topic { aggregates, events: stream, last, .. } = t;
            let agg = aggregates.entry(aggregate_id.to_string()).or_default();
            let current = agg.len() as u64;
            match expected {
                Some(e) if e < current => {
                    return Err(EventError::Conflict { aggregate_id: aggregate_id.into(), current, expected: e });
                }
                Some(e) if e > current => {
                    return Err(EventError::VersionAhead { aggregate_id: aggregate_id.into(), current, expected: e });
                }
                _ => {}
            }
            let mut positions = Vec::with_capacity(events.len());
            for (i, mut e) in events.into_iter().enumerate() {
                e.subject = aggregate_id.to_string();
                e.aggregate_type = aggregate_type.to_string();
                e.aggregate_version = current + 1 + i as u64;
                agg.push(e.clone());
                let ms = crate::mesh::events::unix_us() as u64 / 1000;
                *last = if ms > last.ms { Position { ms, seq: 0 } } else { last.next() };
                stream.push_back(Stored { position: *last, envelope: e });
                positions.push(*last);
            }
            (agg.len() as u64, positions)
        };
        self.changes.bump(topic);
        Ok((version, positions))
    }

    async fn read_aggregate(&self, topic: &str, aggregate_id: &str) -> Result<(u64, Vec<Envelope>), EventError> {
        let topics = self.lock();
        let events = topics.get(topic).and_then(|t| t.aggregates.get(aggregate_id)).cloned().unwrap_or_default();
        Ok((events.len() as u64, events))
    }

    async fn describe(&self, topic: &str) -> Result<TopicInfo, EventError> {
        let topics = self.lock();
        let t = topics.get(topic).ok_or_else(|| unknown_topic(topic))?;
        let groups = t
            .groups
            .iter()
            .map(|(name, g)| GroupInfo {
                name: name.clone(),
                consumers: g.consumers.len() as u32,
                pending: g.pending.len() as u64,
                lag: t.after(g.last_delivered).count() as u64,
                last_delivered: g.last_delivered,
            })
            .collect();
        Ok(TopicInfo {
            topic: topic.to_string(),
            length: t.events.len() as u64,
            first: t.events.front().map(|s| s.position).unwrap_or_default(),
            last: t.last,
            retention: t.retention,
            groups,
            dead_letters: topics.get(&dlq_topic(topic)).map(|d| d.events.len() as u64).unwrap_or(0),
        })
    }

    async fn reset_group(&self, topic: &str, group: &str, position: Option<Position>) -> Result<(), EventError> {
        let mut topics = self.lock();
        let t = topics.get_mut(topic).ok_or_else(|| unknown_topic(topic))?;
        let last = t.last;
        let g = t.groups.get_mut(group).ok_or_else(|| unknown_group(topic, group))?;
        g.last_delivered = position.unwrap_or(last);
        Ok(())
    }

    async fn delete_group(&self, topic: &str, group: &str) -> Result<(), EventError> {
        let mut topics = self.lock();
        let t = topics.get_mut(topic).ok_or_else(|| unknown_topic(topic))?;
        t.groups.remove(group).map(|_| ()).ok_or_else(|| unknown_group(topic, group))
    }

    async fn topics(&self) -> Result<Vec<String>, EventError> {
        let mut names: Vec<String> = self.lock().keys().cloned().collect();
        names.sort();
        Ok(names)
    }

    async fn trim(&self) -> Result<u64, EventError> {
        let now_ms = crate::mesh::events::unix_us() as u64 / 1000;
        let mut removed = 0;
        for t in self.lock().values_mut() {
            // Everything before `safe` is acked by every group.
            let safe = t
                .groups
                .values()
                .map(|g| {
                    g.pending.keys().next().copied().unwrap_or(g.last_delivered.next()).min(g.last_delivered.next())
                })
                .min()
                .unwrap_or(Position { ms: u64::MAX, seq: 0 });
            let Retention { max_len, max_age } = t.retention;
            while let Some(front) = t.events.front() {
                let too_many = max_len > 0 && t.events.len() as u64 > max_len;
                let too_old = !max_age.is_zero() && front.position.ms + (max_age.as_millis() as u64) < now_ms;
                if !(too_many || too_old) || front.position >= safe {
                    break;
                }
                t.events.pop_front();
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn changes(&self, topic: &str) -> watch::Receiver<u64> {
        self.changes.subscribe(topic)
    }

    fn poll_interval(&self) -> Option<Duration> {
        None
    }

    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}
