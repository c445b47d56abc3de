//! Metrics of the WebSocket topic hub, under `gateway_ws_`: open
//! connections, messages in and out by type, slow-consumer closes, other
//! closes by reason, handshakes refused by reason, events from the bus.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::sidecar::gateway::metrics::Reason;

/// A message type label (`subscribe`, `event`, `ack`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// The type.
    pub kind: &'static str,
}

/// See the module docs.
#[derive(Debug, Clone, Default)]
pub struct HubMetrics {
    /// Hub connections open now.
    pub connections: Gauge,
    /// Client messages, by type (`invalid` for unreadable ones).
    pub messages_in: Family<Kind, Counter>,
    /// Server messages, by type.
    pub messages_out: Family<Kind, Counter>,
    /// Connections closed because their send queue was full.
    pub slow_consumer_closes: Counter,
    /// Connections closed by the hub for other reasons.
    pub closes: Family<Reason, Counter>,
    /// Handshakes refused, by reason.
    pub refused: Family<Reason, Counter>,
    /// Events received from the bus (before fan-out).
    pub bus_events: Counter,
}

impl HubMetrics {
    /// Creates the metrics under `gateway_ws_` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = HubMetrics::default();
        let r = registry.sub_registry_with_prefix("gateway_ws");
        r.register("connections", "WebSocket hub connections open", m.connections.clone());
        r.register("messages_in", "client messages, by type", m.messages_in.clone());
        r.register("messages_out", "server messages, by type", m.messages_out.clone());
        r.register("slow_consumer_closes", "connections closed for a full send queue", m.slow_consumer_closes.clone());
        r.register("closes", "connections closed by the hub, by reason", m.closes.clone());
        r.register("handshakes_refused", "handshakes refused, by reason", m.refused.clone());
        r.register("bus_events", "events received from the event bus", m.bus_events.clone());
        m
    }

    /// Counts one client message.
    pub fn message_in(&self, kind: &'static str) {
        self.messages_in.get_or_create(&Kind { kind }).inc();
    }

    /// Counts `n` server messages.
    pub fn message_out(&self, kind: &'static str, n: u64) {
        self.messages_out.get_or_create(&Kind { kind }).inc_by(n);
    }

    /// Counts a refused handshake.
    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&Reason { reason }).inc();
    }

    /// Counts a close by the hub.
    pub fn close(&self, reason: &'static str) {
        self.closes.get_or_create(&Reason { reason }).inc();
    }
}
