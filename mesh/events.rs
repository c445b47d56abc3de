//! The event bus's wire model: positions, the CloudEvents-shaped envelope
//! (with its protobuf storage form and its JSON form), names, errors, and
//! what the stores return. Control's event bus (`crate::control::events`)
//! and the gateway's WebSocket hub (`crate::sidecar::gateway::hub`) both
//! speak it; the gRPC types stay in `control/events/service.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use prost::Message;

use crate::proto::events::v1 as pb;

/// A place in a topic: `<unix ms>-<seq>`, the form of a Redis stream id.
/// Both stores hand them out in increasing order per topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Milliseconds part (the publish time, made monotonic).
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl Position {
    /// Before every event.
    pub const ZERO: Position = Position { ms: 0, seq: 0 };

    /// The next possible position.
    pub fn next(self) -> Position {
        if self.seq == u64::MAX {
            Position { ms: self.ms + 1, seq: 0 }
        } else {
            Position { ms: self.ms, seq: self.seq + 1 }
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for Position {
    type Err = EventError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || EventError::InvalidArgument(format!("position {s:?} is not of the form <ms>-<seq>"));
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(Position { ms: ms.parse().map_err(|_| bad())?, seq: seq.parse().map_err(|_| bad())? })
    }
}

/// An event bus call failed. Each kind is one gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Bad name, position, envelope or option.
    #[error("{0}")]
    InvalidArgument(String),
    /// Payload or batch over the configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// Unknown topic, group or position.
    #[error("{0}")]
    NotFound(String),
    /// The position is leased to another consumer.
    #[error("{0}")]
    Foreign(String),
    /// A concurrent writer appended to the aggregate first; re-read and retry.
    #[error("conflict on aggregate {aggregate_id}: it is at version {current}, expected {expected}")]
    Conflict {
        /// The aggregate.
        aggregate_id: String,
        /// Its version now.
        current: u64,
        /// What the caller expected.
        expected: u64,
    },
    /// The expected version is ahead of the aggregate: it cannot succeed by retrying.
    #[error("aggregate {aggregate_id} is at version {current}; expected version {expected} does not exist")]
    VersionAhead {
        /// The aggregate.
        aggregate_id: String,
        /// Its version now.
        current: u64,
        /// What the caller expected.
        expected: u64,
    },
    /// The store cannot serve now; retry.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or corrupted data.
    #[error("{0}")]
    Internal(String),
}

/// Metadata key carrying an aggregate's current version on ABORTED and
/// FAILED_PRECONDITION.
pub const CURRENT_VERSION_HEADER: &str = "x-redfire-current-version";

impl EventError {
    /// The gRPC code.
    pub fn code(&self) -> tonic::Code {
        match self {
            EventError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            EventError::TooLarge(_) => tonic::Code::ResourceExhausted,
            EventError::NotFound(_) => tonic::Code::NotFound,
            EventError::Foreign(_) => tonic::Code::PermissionDenied,
            EventError::Conflict { .. } => tonic::Code::Aborted,
            EventError::VersionAhead { .. } => tonic::Code::FailedPrecondition,
            EventError::Unavailable(_) => tonic::Code::Unavailable,
            EventError::Internal(_) => tonic::Code::Internal,
        }
    }

    /// The gRPC status a client sees (with the current aggregate version in
    /// metadata on conflicts).
    pub fn to_status(&self) -> tonic::Status {
        let mut status = tonic::Status::new(self.code(), self.to_string());
        if let EventError::Conflict { current, .. } | EventError::VersionAhead { current, .. } = self
            && let Ok(v) = current.to_string().parse()
        {
            status.metadata_mut().insert(CURRENT_VERSION_HEADER, v);
        }
        status
    }
}

impl From<EventError> for tonic::Status {
    fn from(e: EventError) -> Self {
        e.to_status()
    }
}

/// Longest topic, group or consumer name.
pub const MAX_NAME_LEN: usize = 200;

/// Topics, groups and consumers: 1..=200 of `A-Z a-z 0-9 . _ -`, starting
/// with a letter or digit. Topics ending in `.dlq` are dead-letter topics.
pub fn validate_name(what: &str, name: &str) -> Result<(), EventError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(EventError::InvalidArgument(format!(
            "{what} {name:?} is invalid: 1..={MAX_NAME_LEN} of A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )))
    }
}

/// The dead-letter topic of `topic`.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// How long a topic keeps events. Retention only trims events every group
/// has acked (see ARCHITECTURE.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Most events kept (0 = no limit).
    pub max_len: u64,
    /// Oldest event kept (zero = no limit).
    pub max_age: Duration,
}

/// Where a new group starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// After the last event at creation.
    #[default]
    Latest,
    /// At the first event still stored.
    Earliest,
}

/// The event envelope, CloudEvents-shaped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Envelope {
    /// Unique per source.
    pub id: String,
    /// Producer.
    pub source: String,
    /// Event type, e.g. `order.created`.
    pub ty: String,
    /// Aggregate id.
    pub subject: String,
    /// Event time, Unix microseconds.
    pub time_unix_us: i64,
    /// MIME type of `data`.
    pub datacontenttype: String,
    /// Payload.
    pub data: Bytes,
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate version after this event (0 outside event sourcing).
    pub aggregate_version: u64,
    /// W3C trace context.
    pub traceparent: String,
    /// Extension attributes.
    pub extensions: BTreeMap<String, String>,
}

/// A random event id (128 bits, hex).
pub fn new_event_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// Unix time now in microseconds.
pub fn unix_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

impl Envelope {
    /// A domain event as the seed's `publish_domain_event` makes one.
    pub fn domain(ty: &str, aggregate_type: &str, aggregate_id: &str, data: impl Into<Bytes>) -> Envelope {
        Envelope {
            ty: ty.into(),
            subject: aggregate_id.into(),
            aggregate_type: aggregate_type.into(),
            datacontenttype: "application/json".into(),
            data: data.into(),
            ..Default::default()
        }
    }

    /// Checks what the server relies on and fills `id` and `time` when unset.
    pub fn validate(&mut self, max_payload: usize) -> Result<(), EventError> {
        if self.ty.is_empty() {
            return Err(EventError::InvalidArgument("event type: missing".into()));
        }
        if self.data.len() > max_payload {
            return Err(EventError::TooLarge(format!(
                "event data is {} bytes; the limit is {max_payload}",
                self.data.len()
            )));
        }
        let meta = self.id.len()
            + self.source.len()
            + self.ty.len()
            + self.subject.len()
            + self.datacontenttype.len()
            + self.aggregate_type.len()
            + self.traceparent.len()
            + self.extensions.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if meta > 64 * 1024 {
            return Err(EventError::TooLarge(format!("event attributes are {meta} bytes; the limit is 65536")));
        }
        if self.id.is_empty() {
            self.id = new_event_id();
        }
        if self.time_unix_us == 0 {
            self.time_unix_us = unix_us();
        }
        Ok(())
    }

    /// The storage form (protobuf bytes), used by the Redis store.
    pub fn encode(&self) -> Vec<u8> {
        pb::Event::from(self.clone()).encode_to_vec()
    }

    /// Reads the storage form.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EventError> {
        pb::Event::decode(bytes)
            .map(Envelope::from)
            .map_err(|e| EventError::Internal(format!("stored event does not decode: {e}")))
    }

    /// The JSON form (CloudEvents 1.0 structured mode): `data` as JSON when
    /// the content type is JSON and the bytes parse, else `data_base64`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("specversion".into(), "1.0".into());
        m.insert("id".into(), self.id.clone().into());
        m.insert("source".into(), self.source.clone().into());
        m.insert("type".into(), self.ty.clone().into());
        let opt = |m: &mut serde_json::Map<String, serde_json::Value>, k: &str, v: &str| {
            if !v.is_empty() {
                m.insert(k.into(), v.into());
            }
        };
        opt(&mut m, "subject", &self.subject);
        opt(&mut m, "time", &rfc3339_us(self.time_unix_us));
        opt(&mut m, "datacontenttype", &self.datacontenttype);
        opt(&mut m, "aggregatetype", &self.aggregate_type);
        if self.aggregate_version > 0 {
            m.insert("aggregateversion".into(), self.aggregate_version.into());
        }
        opt(&mut m, "traceparent", &self.traceparent);
        for (k, v) in &self.extensions {
            m.entry(k.clone()).or_insert_with(|| v.clone().into());
        }
        let json_data = self.datacontenttype.is_empty() || self.datacontenttype.contains("json");
        match serde_json::from_slice::<serde_json::Value>(&self.data) {
            Ok(v) if json_data && !self.data.is_empty() => {
                m.insert("data".into(), v);
            }
            _ if self.data.is_empty() => {}
            _ => {
                m.insert("data_base64".into(), base64::engine::general_purpose::STANDARD.encode(&self.data).into());
            }
        }
        serde_json::Value::Object(m)
    }
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-26T10:00:00.000123Z`.
pub fn rfc3339_us(us: i64) -> String {
    if us <= 0 {
        return String::new();
    }
    let t = std::time::UNIX_EPOCH + Duration::from_micros(us as u64);
    humantime::format_rfc3339_micros(t).to_string()
}

impl From<Envelope> for pb::Event {
    fn from(e: Envelope) -> Self {
        pb::Event {
            id: e.id,
            source: e.source,
            r#type: e.ty,
            subject: e.subject,
            time: (e.time_unix_us != 0).then(|| prost_types::Timestamp {
                seconds: e.time_unix_us.div_euclid(1_000_000),
                nanos: (e.time_unix_us.rem_euclid(1_000_000) * 1000) as i32,
            }),
            datacontenttype: e.datacontenttype,
            data: e.data.to_vec(),
            aggregate_type: e.aggregate_type,
            aggregate_version: e.aggregate_version,
            traceparent: e.traceparent,
            extensions: e.extensions.into_iter().collect(),
        }
    }
}

impl From<pb::Event> for Envelope {
    fn from(e: pb::Event) -> Self {
        Envelope {
            id: e.id,
            source: e.source,
            ty: e.r#type,
            subject: e.subject,
            time_unix_us: e.time.map(|t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000)).unwrap_or(0),
            datacontenttype: e.datacontenttype,
            data: Bytes::from(e.data),
            aggregate_type: e.aggregate_type,
            aggregate_version: e.aggregate_version,
            traceparent: e.traceparent,
            extensions: e.extensions.into_iter().collect(),
        }
    }
}

/// One event to publish.
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    /// The envelope (validated by the caller: see [`Envelope::validate`]).
    pub envelope: Envelope,
    /// Retried publishes with the same key are stored once within the window.
    pub idempotency_key: Option<String>,
}

/// What a publish stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Where the event is (its first position when `duplicate`).
    pub position: Position,
    /// True when the idempotency key had been used: nothing was stored.
    pub duplicate: bool,
}

/// An event read back from a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Where it is.
    pub position: Position,
    /// The event.
    pub envelope: Envelope,
}

/// An event handed to one consumer of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Its topic.
    pub topic: String,
    /// Its position (what ack / nack / extend name).
    pub position: Position,
    /// 1 on the first delivery, 2 on the first redelivery, ...
    pub delivery_count: u32,
    /// The event.
    pub envelope: Envelope,
}

/// What one fetch returned.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// Events for the consumer: expired leases first, then new events.
    pub deliveries: Vec<Delivery>,
    /// How many events were moved to the dead-letter topic.
    pub dead_lettered: u64,
    /// Pending events found trimmed away before they were acked.
    pub trimmed: Vec<Position>,
}

/// A group as `describe` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupInfo {
    /// Name.
    pub name: String,
    /// Consumers known to the group.
    pub consumers: u32,
    /// Delivered and not yet acked.
    pub pending: u64,
    /// Not yet delivered.
    pub lag: u64,
    /// Last delivered position.
    pub last_delivered: Position,
}

/// A topic as `describe` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicInfo {
    /// Name.
    pub topic: String,
    /// Events stored.
    pub length: u64,
    /// First stored position (ZERO when empty).
    pub first: Position,
    /// Last position ever given out (ZERO when none).
    pub last: Position,
    /// Retention.
    pub retention: Retention,
    /// Groups, by name.
    pub groups: Vec<GroupInfo>,
    /// Events in the dead-letter topic.
    pub dead_letters: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_numerically_and_round_trip() {
        let a: Position = "9-5".parse().unwrap();
        let b: Position = "10-0".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "10-0");
        assert!("10".parse::<Position>().is_err());
        assert!("x-1".parse::<Position>().is_err());
        assert_eq!(Position { ms: 1, seq: u64::MAX }.next(), Position { ms: 2, seq: 0 });
    }

    #[test]
    fn names_are_checked() {
        for ok in ["orders", "orders.dlq", "a-b_c.1"] {
            validate_name("topic", ok).unwrap();
        }
        for bad in ["", ".orders", "a b", "a:b", "{x}", &"a".repeat(201)] {
            assert!(matches!(validate_name("topic", bad), Err(EventError::InvalidArgument(_))), "{bad}");
        }
    }

    #[test]
    fn envelope_round_trips_through_storage_and_fills_defaults() {
        let mut e = Envelope::domain("order.created", "Order", "o-1", &b"{\"qty\":3}"[..]);
        e.extensions.insert("tenant".into(), "t1".into());
        e.validate(1024).unwrap();
        assert_eq!(e.id.len(), 32);
        assert!(e.time_unix_us > 0);
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        let mut big = Envelope::domain("x", "", "", vec![0u8; 1025]);
        assert!(matches!(big.validate(1024), Err(EventError::TooLarge(_))));
        assert!(matches!(Envelope::default().validate(1024), Err(EventError::InvalidArgument(_))));
    }

    #[test]
    fn json_form_is_cloudevents_structured() {
        let mut e = Envelope::domain("order.created", "Order", "o-1", &b"{\"qty\":3}"[..]);
        e.id = "e1".into();
        e.source = "orders".into();
        e.time_unix_us = 1_700_000_000_000_123;
        e.aggregate_version = 2;
        let j = e.to_json();
        assert_eq!(j["specversion"], "1.0");
        assert_eq!(j["type"], "order.created");
        assert_eq!(j["subject"], "o-1");
        assert_eq!(j["time"], "2023-11-14T22:13:20.000123Z");
        assert_eq!(j["data"]["qty"], 3);
        assert_eq!(j["aggregateversion"], 2);
        e.datacontenttype = "application/octet-stream".into();
        e.data = Bytes::from_static(&[0, 1, 2]);
        assert_eq!(e.to_json()["data_base64"], "AAEC");
    }

    proptest::proptest! {
        #[test]
        fn peer_input_never_panics(s in ".{0,64}", b in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = s.parse::<Position>();
            let _ = validate_name("topic", &s);
            if let Ok(mut e) = Envelope::decode(&b) {
                let _ = e.validate(16);
                let _ = e.to_json();
            }
        }

        #[test]
        fn positions_round_trip(ms in 0u64.., seq in 0u64..) {
            let p = Position { ms, seq };
            proptest::prop_assert_eq!(p.to_string().parse::<Position>().unwrap(), p);
        }
    }

    #[test]
    fn conflicts_carry_the_current_version() {
        let s = EventError::Conflict { aggregate_id: "o-1".into(), current: 3, expected: 2 }.to_status();
        assert_eq!(s.code(), tonic::Code::Aborted);
        assert_eq!(s.metadata().get(CURRENT_VERSION_HEADER).unwrap(), "3");
        let s = EventError::VersionAhead { aggregate_id: "o-1".into(), current: 3, expected: 9 }.to_status();
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
    }
}
