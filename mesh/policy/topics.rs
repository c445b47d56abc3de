//! Topic rules: `[[topics]]` of the gateway's policy (which end-user roles
//! may subscribe and publish to which event topics through the WebSocket
//! hub) and `[[event_acl]]` of control's own policy (which services and
//! operator roles may use which topics of the event bus).

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

/// Checks an `[[event_acl]]` principal: `*`, `role:<operator role>` or a
/// service name.
pub fn validate_principal(p: &str) -> Result<(), String> {
    use crate::mesh::identity::OPERATOR_ROLES as ROLES;
    match p.strip_prefix("role:") {
        _ if p == "*" => Ok(()),
        Some(r) if ROLES.contains(&r) => Ok(()),
        Some(r) => Err(format!("role {r:?} is not one of {}", ROLES.join(", "))),
        None => crate::mesh::registry::validate_service_name(p)
            .map_err(|e| format!("{p:?} is not *, role:<role> or a service name ({e})")),
    }
}

/// What a caller wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Receive its events.
    Subscribe,
    /// Publish to it.
    Publish,
}

impl Action {
    /// `subscribe` or `publish`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Subscribe => "subscribe",
            Action::Publish => "publish",
        }
    }
}

/// True when the first rule whose name matches `topic` lists, for `action`,
/// `*` or a principal `holds` accepts. No matching rule: no.
pub fn allowed(rules: &[TopicRule], topic: &str, action: Action, holds: impl Fn(&str) -> bool) -> bool {
    let Some(rule) = rules.iter().find(|r| r.name.matches(topic)) else { return false };
    let granted = match action {
        Action::Subscribe => &rule.subscribe,
        Action::Publish => &rule.publish,
    };
    granted.iter().any(|g| g == "*" || holds(g))
}
