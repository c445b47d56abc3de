//! `[[topics]]` of the gateway's policy: which roles may subscribe and
//! publish to which event topics through the WebSocket hub.

use serde::{Deserialize, Serialize};

/// One `[[topics]]` rule of the WebSocket hub. The first rule whose `name`
/// matches a topic decides; a role `*` is any authenticated user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// A topic (`trading_signals`), a prefix pattern (`orders.*`: `orders.`
    /// and below) or `*`.
    pub name: TopicPattern,
    /// Roles that may subscribe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    /// Roles that may publish.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
}

/// A topic name pattern: exact, `prefix.*` or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicPattern(pub String);

impl TopicPattern {
    /// True when `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => prefix.is_empty() || (topic.len() > prefix.len() && topic.starts_with(prefix)),
            None => self.0 == topic,
        }
    }
}

impl TryFrom<String> for TopicPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let head = s.strip_suffix(".*").unwrap_or(&s);
        if s == "*" || crate::mesh::events::validate_name("topic", head).is_ok() {
            Ok(TopicPattern(s))
        } else {
            Err(format!("{s:?} is not a topic, a pattern like orders.* or *"))
        }
    }
}

impl From<TopicPattern> for String {
    fn from(p: TopicPattern) -> String {
        p.0
    }
}
