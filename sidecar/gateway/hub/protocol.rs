//! The hub's JSON protocol (the seed's), one message per WebSocket text
//! frame.
//!
//! Client → gateway: `{"type":"subscribe","topic":"trading_signals"}`,
//! `{"type":"unsubscribe","topic":…}`, `{"type":"publish","topic":…,
//! "data":<any JSON>,"event_type":"signal.created"}`; each may carry an
//! `"id"` (string or number) that the answer echoes.
//!
//! Gateway → client: `{"type":"event","topic":…,"position":…,"data":<the
//! event's CloudEvents JSON>}`, `{"type":"ack","op":"subscribe",
//! "topic":…}` (publish acks add the `position`), and
//! `{"type":"error","code":…,"message":…}`.
//!
//! Topic authorization is the policy's `[[topics]]` rules ([`allowed`]).

use serde::Deserialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::mesh::events::validate_name;
pub use crate::mesh::policy::topics::Action;
use crate::mesh::policy::topics::TopicRule;

/// Longest `id` echoed back.
const MAX_ID: usize = 128;

/// A client message.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMessage {
    /// Start receiving a topic's events.
    Subscribe {
        /// The topic.
        topic: String,
        /// Correlation id.
        #[serde(default)]
        id: Option<Value>,
    },
    /// Stop receiving them.
    Unsubscribe {
        /// The topic.
        topic: String,
        /// Correlation id.
        #[serde(default)]
        id: Option<Value>,
    },
    /// Publish one event to the bus.
    Publish {
        /// The topic.
        topic: String,
        /// The payload (stored as JSON).
        #[serde(default)]
        data: Value,
        /// The event's type [default: `ws.publish`].
        #[serde(default)]
        event_type: Option<String>,
        /// Correlation id.
        #[serde(default)]
        id: Option<Value>,
    },
}

impl ClientMessage {
    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Subscribe { .. } => "subscribe",
            ClientMessage::Unsubscribe { .. } => "unsubscribe",
            ClientMessage::Publish { .. } => "publish",
        }
    }

    /// The correlation id, when it is a short string or a number.
    pub fn id(&self) -> Option<Value> {
        let id = match self {
            ClientMessage::Subscribe { id, .. }
            | ClientMessage::Unsubscribe { id, .. }
            | ClientMessage::Publish { id, .. } => id.as_ref()?,
        };
        match id {
            Value::String(s) if s.len() <= MAX_ID => Some(id.clone()),
            Value::Number(_) => Some(id.clone()),
            _ => None,
        }
    }

    /// The topic, checked as an event-bus name.
    pub fn topic(&self) -> Result<&str, String> {
        let t = match self {
            ClientMessage::Subscribe { topic, .. }
            | ClientMessage::Unsubscribe { topic, .. }
            | ClientMessage::Publish { topic, .. } => topic.as_str(),
        };
        validate_name("topic", t).map_err(|e| e.to_string())?;
        Ok(t)
    }
}

/// Parses one client text message.
pub fn parse(text: &str) -> Result<ClientMessage, String> {
    serde_json::from_str(text).map_err(|e| format!("not a hub message: {e}"))
}

fn with_id(mut v: Value, id: Option<Value>) -> Message {
    if let (Some(id), Some(m)) = (id, v.as_object_mut()) {
        m.insert("id".into(), id);
    }
    Message::Text(v.to_string().into())
}

/// `{"type":"ack",…}`.
pub fn ack(op: &str, topic: &str, position: Option<&str>, id: Option<Value>) -> Message {
    let mut v = json!({ "type": "ack", "op": op, "topic": topic });
    if let (Some(p), Some(m)) = (position, v.as_object_mut()) {
        m.insert("position".into(), p.into());
    }
    with_id(v, id)
}

/// `{"type":"error",…}`.
pub fn error(code: &str, message: &str, topic: Option<&str>, id: Option<Value>) -> Message {
    let mut v = json!({ "type": "error", "code": code, "message": message });
    if let (Some(t), Some(m)) = (topic, v.as_object_mut()) {
        m.insert("topic".into(), t.into());
    }
    with_id(v, id)
}

/// `{"type":"event",…}`, serialized once and shared by every subscriber
/// (cloning a text message clones a reference-counted buffer).
pub fn event(topic: &str, position: &str, cloud_event: Value) -> Message {
    Message::Text(
        json!({ "type": "event", "topic": topic, "position": position, "data": cloud_event }).to_string().into(),
    )
}

/// True when a user with `roles` may do `action` on `topic`: the first
/// rule whose name matches decides; its list must hold one of the roles
/// or `*`. No matching rule: no.
pub fn allowed(rules: &[TopicRule], topic: &str, action: Action, roles: &[String]) -> bool {
    crate::mesh::policy::topics::allowed(rules, topic, action, |g| roles.iter().any(|r| r == g))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::policy::topics::TopicPattern;

    fn rule(name: &str, subscribe: &[&str], publish: &[&str]) -> TopicRule {
        TopicRule {
            name: TopicPattern(name.into()),
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_first_matching_rule_decides_by_role() {
        let rules = vec![
            rule("trading_signals", &["trader", "viewer"], &["trader"]),
            rule("orders.*", &["*"], &[]),
            rule("*", &["admin"], &["admin"]),
        ];
        let viewer = vec!["viewer".to_string()];
        let trader = vec!["trader".to_string()];
        assert!(allowed(&rules, "trading_signals", Action::Subscribe, &viewer));
        assert!(!allowed(&rules, "trading_signals", Action::Publish, &viewer));
        assert!(allowed(&rules, "trading_signals", Action::Publish, &trader));
        assert!(allowed(&rules, "orders.eu", Action::Subscribe, &[]));
        assert!(!allowed(&rules, "orders.eu", Action::Publish, &trader));
        assert!(!allowed(&rules, "payments", Action::Subscribe, &trader));
        assert!(allowed(&rules, "payments", Action::Subscribe, &["admin".to_string()]));
        assert!(!allowed(&[], "payments", Action::Subscribe, &trader), "no rules: nothing allowed");
    }

    #[test]
    fn messages_parse_and_hostile_ones_are_refused() {
        let m = parse(r#"{"type":"subscribe","topic":"trading_signals","id":7}"#).unwrap();
        assert_eq!((m.kind(), m.topic().unwrap(), m.id()), ("subscribe", "trading_signals", Some(json!(7))));
        let m = parse(r#"{"type":"publish","topic":"t","data":{"a":1}}"#).unwrap();
        assert!(matches!(&m, ClientMessage::Publish { data, .. } if data["a"] == 1));
        assert!(parse(r#"{"type":"subscribe","topic":"../etc"}"#).unwrap().topic().is_err());
        assert!(parse(r#"{"type":"subscribe","topic":"t","id":{"x":"y"}}"#).unwrap().id().is_none());
        for bad in ["", "null", "[]", r#"{"type":"drop","topic":"t"}"#, r#"{"topic":"t"}"#, r#"{"type":"subscribe"}"#] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        // Peer input (RELIABILITY.md row 8): any text is an error or a
        // message, never a panic.
        #[test]
        fn parsing_any_text_never_panics(s in ".{0,300}") {
            if let Ok(m) = parse(&s) {
                let _ = (m.topic(), m.id(), m.kind());
            }
        }

        #[test]
        fn parsing_near_messages_never_panics(
            ty in "(subscribe|unsubscribe|publish|x)",
            topic in "[a-z0-9./ _-]{0,12}",
            id in "(1|\"a\"|null|\\{\\}|\\[1\\])",
        ) {
            let text = format!(r#"{{"type":"{ty}","topic":"{topic}","id":{id},"data":{{"k":[1,2]}}}}"#);
            if let Ok(m) = parse(&text) {
                let _ = (m.topic(), m.id(), m.kind());
            }
        }
    }

    #[test]
    fn event_messages_carry_topic_position_and_data() {
        let Message::Text(t) = event("t", "1-0", json!({"type": "x"})) else { panic!("text") };
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["topic"].as_str(), v["position"].as_str()),
            (Some("event"), Some("t"), Some("1-0"))
        );
        assert_eq!(v["data"]["type"], "x");
    }
}
