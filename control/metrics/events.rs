//! Event bus metrics: per topic (and group) counters of published, delivered,
//! redelivered, acked, nacked and dead-lettered events, consumer lag and
//! pending (set when a topic is described, which control does for every
//! topic each `events_trim_interval`), and the end-to-end latency from event
//! time to delivery.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::mesh::events::TopicInfo;

/// A topic.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    /// Topic name.
    pub topic: String,
}

/// A topic's consumer group.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// Topic name.
    pub topic: String,
    /// Group name.
    pub group: String,
}

/// Every event bus metric. `Default` gives unregistered metrics (for
/// in-process use); [`EventMetrics::register`] adds them to a registry.
#[derive(Debug, Clone)]
pub struct EventMetrics {
    published: Family<TopicLabels, Counter>,
    delivered: Family<GroupLabels, Counter>,
    redelivered: Family<GroupLabels, Counter>,
    acked: Family<GroupLabels, Counter>,
    nacked: Family<GroupLabels, Counter>,
    dead_lettered: Family<GroupLabels, Counter>,
    trimmed_unacked: Family<GroupLabels, Counter>,
    lag: Family<GroupLabels, Gauge>,
    pending: Family<GroupLabels, Gauge>,
    latency: Family<TopicLabels, Histogram>,
}

impl Default for EventMetrics {
    fn default() -> Self {
        EventMetrics {
            published: Family::default(),
            delivered: Family::default(),
            redelivered: Family::default(),
            acked: Family::default(),
            nacked: Family::default(),
            dead_lettered: Family::default(),
            trimmed_unacked: Family::default(),
            lag: Family::default(),
            pending: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_1, 2.0, 20))),
        }
    }
}

fn group(topic: &str, group: &str) -> GroupLabels {
    GroupLabels { topic: topic.into(), group: group.into() }
}

impl EventMetrics {
    /// Registers every metric under `events_` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("events");
        r.register("published", "events stored by topic", self.published.clone());
        r.register("delivered", "deliveries (first and repeated) by topic and group", self.delivered.clone());
        r.register("redelivered", "deliveries after an expired lease or a nack", self.redelivered.clone());
        r.register("acked", "acked events", self.acked.clone());
        r.register("nacked", "nacked events", self.nacked.clone());
        r.register("dead_lettered", "events moved to the dead-letter topic", self.dead_lettered.clone());
        r.register(
            "trimmed_unacked",
            "pending events found removed from the stream before they were acked",
            self.trimmed_unacked.clone(),
        );
        r.register("consumer_lag", "events not yet delivered to the group", self.lag.clone());
        r.register("pending", "delivered, not yet acked", self.pending.clone());
        r.register("end_to_end_seconds", "event time to delivery", self.latency.clone());
    }

    /// `n` events stored on `topic`.
    pub fn published(&self, topic: &str, n: u64) {
        self.published.get_or_create(&TopicLabels { topic: topic.into() }).inc_by(n);
    }

    /// One delivery of an event whose time was `event_time_us`.
    pub fn delivered(&self, topic: &str, g: &str, delivery_count: u32, event_time_us: i64) {
        let labels = group(topic, g);
        self.delivered.get_or_create(&labels).inc();
        if delivery_count > 1 {
            self.redelivered.get_or_create(&labels).inc();
        } else {
            let age_us = crate::mesh::events::unix_us() - event_time_us;
            if age_us >= 0 {
                self.latency.get_or_create(&TopicLabels { topic: topic.into() }).observe(age_us as f64 / 1e6);
            }
        }
    }

    /// One ack.
    pub fn acked(&self, topic: &str, g: &str) {
        self.acked.get_or_create(&group(topic, g)).inc();
    }

    /// One nack.
    pub fn nacked(&self, topic: &str, g: &str) {
        self.nacked.get_or_create(&group(topic, g)).inc();
    }

    /// `n` events dead-lettered.
    pub fn dead_lettered(&self, topic: &str, g: &str, n: u64) {
        self.dead_lettered.get_or_create(&group(topic, g)).inc_by(n);
    }

    /// `n` pending events found trimmed before they were acked.
    pub fn trimmed_unacked(&self, topic: &str, g: &str, n: u64) {
        self.trimmed_unacked.get_or_create(&group(topic, g)).inc_by(n);
    }

    /// Lag and pending gauges from a description.
    pub fn described(&self, info: &TopicInfo) {
        for g in &info.groups {
            self.lag.get_or_create(&group(&info.topic, &g.name)).set(g.lag as i64);
            self.pending.get_or_create(&group(&info.topic, &g.name)).set(g.pending as i64);
        }
    }
}
