//! The policy language: the policy document of one service, as written in a
//! TOML file of the policy directory and as published to proxies (the same
//! fields as JSON). Control validates and serves it (`crate::control::policy`);
//! the sidecar compiles the validated document into what it enforces
//! (`crate::sidecar::policy`). Its sections live in [`authz`], [`jwt`],
//! [`rbac`], [`topics`], [`route`]/[`routes_file`] and [`ratelimit`].
//!
//! Everything a single field or table can get wrong is checked while it is
//! deserialized (`try_from` on the raw form), so a TOML error carries the
//! line of the offending value; [`parse_toml`] adds the file and the dotted
//! field name. A document that deserializes is valid: proxies deserialize
//! the JSON with the same types and so run the same checks.

pub mod authz;
pub mod jwt;
pub mod ratelimit;
pub mod rbac;
pub mod route;
pub mod routes_file;
pub mod topics;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use self::authz::AuthzPolicy;
use self::jwt::JwtPolicy;
use self::rbac::RbacPolicy;
use self::topics::TopicRule;

/// One service's policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    /// The service (in a file: defaults to the file name without `.toml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Which mesh identities may call which paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authz: Option<AuthzPolicy>,
    /// End-user authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtPolicy>,
    /// Roles and permissions of authenticated users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbac: Option<RbacPolicy>,
    /// Rate-limit rules. Merge hook: carried through unchanged here (any
    /// TOML tables), validated by [`ratelimit::from_policy_tables`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<toml::Table>,
    /// Gateway routes (the gateway's own policy document): the fields of
    /// a routes file's `[[route]]`, validated by
    /// [`routes_file::from_tables`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<toml::Table>,
    /// Gateway WebSocket hub: which roles may subscribe and publish to
    /// which event topics (no rule matching a topic: nobody may).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<TopicRule>,
    /// Control's event bus ACL (only in the [`CONTROL_POLICY`] document):
    /// which callers may publish and subscribe to which topics. Principals
    /// are service names (workloads), `role:<operator role>` or `*` (any
    /// authenticated caller); the first rule matching a topic decides, no
    /// rule: nobody may.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_acl: Vec<TopicRule>,
}

/// The policy document control itself follows (its event bus ACL).
pub const CONTROL_POLICY: &str = "redfire-control";

/// Allow or deny.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Let the request through.
    Allow,
    /// Refuse it.
    #[default]
    Deny,
}

/// A duration written as `30s`, `500ms`, `5m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Dur(pub Duration);

impl TryFrom<String> for Dur {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        humantime::parse_duration(&s).map(Dur).map_err(|e| format!("{s:?} is not a duration like 30s ({e})"))
    }
}

impl From<Dur> for String {
    fn from(d: Dur) -> String {
        humantime::format_duration(d.0).to_string()
    }
}

/// A path pattern: `/exact`, `/prefix/*` (the prefix itself and below) or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PathPattern(pub String);

impl TryFrom<String> for PathPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s == "*" {
            return Ok(PathPattern(s));
        }
        let head = s.strip_suffix("/*").unwrap_or(&s);
        if !s.starts_with('/') || head.contains('*') {
            return Err(format!("{s:?} is not a path pattern (/exact, /prefix/* or *)"));
        }
        if head.split('/').any(|seg| seg == "." || seg == "..") || head.contains("//") || head.contains('%') {
            return Err(format!("{s:?}: write the normalised path (no //, . or .. segments, no %-escapes)"));
        }
        Ok(PathPattern(s))
    }
}

impl From<PathPattern> for String {
    fn from(p: PathPattern) -> String {
        p.0
    }
}

/// An HTTP method, upper case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MethodName(pub String);

impl TryFrom<String> for MethodName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let upper = s.to_ascii_uppercase();
        match http::Method::from_bytes(upper.as_bytes()) {
            Ok(_) if !upper.is_empty() => Ok(MethodName(upper)),
            _ => Err(format!("{s:?} is not an HTTP method")),
        }
    }
}

impl From<MethodName> for String {
    fn from(m: MethodName) -> String {
        m.0
    }
}

/// A policy that could not be loaded: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{origin}:{}{} {message}",
    line.map(|l| format!(" line {l}:")).unwrap_or_default(),
    field.as_deref().map(|f| format!(" {f}:")).unwrap_or_default()
)]
pub struct PolicyError {
    /// File path or `api`.
    pub origin: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted field name, when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// Parses and validates a TOML policy. `service` is the service it is for
/// (file name or API argument); a `service` key in the document must agree.
pub fn parse_toml(text: &str, origin: &str, service: &str) -> Result<PolicyDoc, PolicyError> {
    let mut doc: PolicyDoc = toml::from_str(text).map_err(|e| {
        let start = e.span().map(|s| s.start.min(text.len()));
        PolicyError {
            origin: origin.into(),
            line: start.map(|s| text[..s].matches('\n').count() + 1),
            field: start.and_then(|s| field_at(text, s)),
            message: e.message().replace('\n', " "),
        }
    })?;
    let fail = |field: &str, message: String| PolicyError {
        origin: origin.into(),
        line: line_of_key(text, field),
        field: Some(field.into()),
        message,
    };
    crate::mesh::registry::validate_service_name(service).map_err(|e| fail("service", e))?;
    match &doc.service {
        Some(s) if s != service => {
            return Err(fail("service", format!("{s:?} does not match the service {service:?} it is loaded for")));
        }
        _ => doc.service = Some(service.to_string()),
    }
    if !doc.topics.is_empty() && doc.jwt.is_none() {
        return Err(fail("topics", "topics need a [jwt] section: roles come from the verified token".into()));
    }
    if !doc.event_acl.is_empty() && service != CONTROL_POLICY {
        return Err(fail(
            "event_acl",
            format!("event_acl belongs in the {CONTROL_POLICY:?} policy, not {service:?}'s"),
        ));
    }
    for rule in &doc.event_acl {
        for p in rule.publish.iter().chain(&rule.subscribe) {
            topics::validate_principal(p).map_err(|e| fail("event_acl", format!("rule {:?}: {e}", rule.name.0)))?;
        }
    }
    if doc.rbac.is_some() && doc.jwt.is_none() {
        return Err(fail("rbac", "rbac needs a [jwt] section: roles come from the verified token".into()));
    }
    if let Some(jwt) = &doc.jwt {
        if jwt.issuers.is_empty() {
            return Err(fail("jwt.issuers", "at least one issuer".into()));
        }
        if jwt.sources.is_empty() {
            return Err(fail("jwt.sources", "at least one token source".into()));
        }
        if jwt.leeway.0 > Duration::from_secs(300) {
            return Err(fail("jwt.leeway", "at most 5m".into()));
        }
    }
    if !doc.rate_limits.is_empty() {
        ratelimit::from_policy_tables(&doc.rate_limits).map_err(|e| {
            let (field, message) = e.split_once(": ").unwrap_or(("rate_limits", e.as_str()));
            PolicyError {
                origin: origin.into(),
                line: line_of_key(text, "rate_limits"),
                field: Some(field.to_string()),
                message: message.to_string(),
            }
        })?;
    }
    if !doc.route.is_empty() {
        routes_file::from_tables(&doc.route, 0, origin).map_err(|e| {
            let (field, message) = e.split_once(": ").unwrap_or(("route", e.as_str()));
            PolicyError {
                origin: origin.into(),
                line: line_of_key(text, "route"),
                field: Some(field.to_string()),
                message: message.to_string(),
            }
        })?;
    }
    if let Some(rbac) = &doc.rbac {
        for (i, rule) in rbac.rules.iter().enumerate() {
            let known =
                rule.permission == "*" || rbac.roles.values().flatten().any(|p| p == "*" || *p == rule.permission);
            if !known {
                return Err(fail(
                    "rbac.rules.permission",
                    format!("rule {}: permission {:?} is granted by no role", i + 1, rule.permission),
                ));
            }
        }
    }
    Ok(doc)
}

/// The dotted name of the key at byte `at`: the table header above it plus
/// the key on its line (`jwt.issuers.algorithms`).
fn field_at(text: &str, at: usize) -> Option<String> {
    let line_start = text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let key = if line.starts_with('[') { None } else { line.split('=').next().map(|k| k.trim().to_string()) };
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    match (table, key.filter(|k| !k.is_empty())) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (Some(t), None) => Some(t),
        (None, k) => k,
    }
}

/// The line of the first table or key that names `field`'s last part.
fn line_of_key(text: &str, field: &str) -> Option<usize> {
    let last = field.rsplit('.').next().unwrap_or(field);
    let table = field.replace(".rules.permission", ".rules");
    text.lines()
        .position(|l| {
            let l = l.trim();
            l.trim_matches(|c| c == '[' || c == ']') == table || l.split('=').next().is_some_and(|k| k.trim() == last)
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::topics::TopicPattern;
    use super::*;

    const RSA_PUB: &str = include_str!("../tests/fixtures/jwt/rsa_public.pem");

    fn ok(text: &str) -> PolicyDoc {
        parse_toml(text, "orders.toml", "orders").unwrap()
    }

    fn bad(text: &str) -> PolicyError {
        parse_toml(text, "orders.toml", "orders").unwrap_err()
    }

    #[test]
    fn a_bad_rate_limit_is_refused_naming_the_rule_field_and_line() {
        let e = bad("[authz]\ndefault = \"allow\"\n\n[[rate_limits]]\npath = \"/api\"\nlimit = 0\nwindow = \"1s\"\n");
        assert!(e.field.as_deref().is_some_and(|f| f.starts_with("rate_limits[0]")), "{e:?}");
        assert_eq!(e.line, Some(4), "{e:?}");
        let ok = ok("[[rate_limits]]\npath = \"/api/v1/trading\"\nlimit = 50\nwindow = \"60s\"\n");
        assert_eq!(ok.rate_limits.len(), 1);
    }

    #[test]
    fn a_full_policy_parses_and_round_trips_through_json() {
        let text = format!(
            r#"
[authz]
default = "deny"
namespaces = {{ trading = "allow" }}
[[authz.rules]]
from = ["spiffe://redfire.local/ns/default/sa/client", "spiffe://redfire.local/ns/ops/*"]
paths = ["/orders.v1.Orders/*"]

[jwt]
leeway = "10s"
public_paths = ["/health"]
sources = [{{ header = "Authorization", prefix = "Bearer " }}, {{ cookie = "session" }}]
[[jwt.issuers]]
issuer = "https://auth.example"
audiences = ["orders"]
algorithms = ["RS256", "HS256"]
keys = [{{ kid = "r1", pem = """{RSA_PUB}""" }}, {{ secret = "0123456789abcdef0123456789abcdef" }}]

[rbac]
roles = {{ trader = ["orders.write"] }}
[[rbac.rules]]
grpc = "orders.v1.Orders/Place"
permission = "orders.write"

[[rate_limits]]
path = "/api/v1/trading"
limit = 50
window = "60s"
"#
        );
        let doc = ok(&text);
        assert_eq!(doc.service.as_deref(), Some("orders"));
        assert_eq!(doc.jwt.as_ref().unwrap().leeway.0, Duration::from_secs(10));
        assert_eq!(doc.jwt.as_ref().unwrap().sources[0].header.as_ref().unwrap().0, "authorization");
        assert_eq!(doc.rate_limits.len(), 1);
        let json = serde_json::to_string(&doc).unwrap();
        let back: PolicyDoc = serde_json::from_str(&json).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn errors_name_the_file_line_and_field() {
        let e = bad(
            "[jwt]\nleeway = \"10s\"\n[[jwt.issuers]]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"none\"]\nkeys = [{ secret = \"0123456789abcdef0123456789abcdef\" }]\n",
        );
        assert_eq!(e.line, Some(6), "{e}");
        assert_eq!(e.field.as_deref(), Some("jwt.issuers.algorithms"), "{e}");
        assert!(e.to_string().starts_with("orders.toml: line 6: jwt.issuers.algorithms:"), "{e}");

        let e = bad("[authz]\ndefault = \"maybe\"\n");
        assert_eq!((e.line, e.field.as_deref()), (Some(2), Some("authz.default")), "{e}");

        let e = bad("[jwt]\nlewway = \"10s\"\n");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("lewway"), "{e}");

        let e = bad("[[authz.rules]]\nfrom = [\"spiffe://td/ns/*/sa/x\"]\n");
        assert_eq!(e.line, Some(2), "{e}");

        let e = bad("[rbac]\nroles = {}\n");
        assert_eq!(e.field.as_deref(), Some("rbac"), "{e}");
        assert_eq!(e.line, Some(1), "{e}");

        let e = bad("service = \"users\"\n");
        assert_eq!(e.field.as_deref(), Some("service"), "{e}");
    }

    #[test]
    fn topic_rules_parse_match_and_need_jwt() {
        let jwt = "[[jwt.issuers]]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\nkeys = [{ secret = \"0123456789abcdef0123456789abcdef\" }]\n";
        let doc = ok(&format!(
            "{jwt}[[topics]]\nname = \"trading_signals\"\nsubscribe = [\"trader\", \"viewer\"]\npublish = [\"trader\"]\n[[topics]]\nname = \"orders.*\"\nsubscribe = [\"*\"]\n"
        ));
        assert_eq!(doc.topics.len(), 2);
        let p = &doc.topics[1].name;
        assert!(p.matches("orders.eu") && !p.matches("orders.") && !p.matches("orders") && !p.matches("ordersx"));
        assert!(TopicPattern("*".into()).matches("anything"));
        assert!(doc.topics[0].name.matches("trading_signals") && !doc.topics[0].name.matches("trading"));
        let e = bad(&format!("{jwt}[[topics]]\nname = \"a b\"\n"));
        assert_eq!(e.field.as_deref(), Some("topics.name"), "{e}");
        let e = bad("[[topics]]\nname = \"t\"\n");
        assert_eq!(e.field.as_deref(), Some("topics"), "{e}");
    }

    #[test]
    fn the_sample_in_deploy_is_valid() {
        let doc = ok(include_str!("../deploy/policies/orders.toml"));
        assert_eq!(doc.rbac.unwrap().rules.len(), 2);
        let gateway = parse_toml(include_str!("../deploy/policies/gateway.toml"), "gateway.toml", "gateway").unwrap();
        assert_eq!((gateway.route.len(), gateway.rate_limits.len(), gateway.topics.len()), (4, 1, 2));
        let control =
            parse_toml(include_str!("../deploy/policies/redfire-control.toml"), "redfire-control.toml", CONTROL_POLICY)
                .unwrap();
        assert_eq!(control.event_acl.len(), 3);
    }

    #[test]
    fn event_acl_lives_in_controls_policy_and_names_services_roles_or_any() {
        let acl = "[[event_acl]]\nname = \"orders.*\"\npublish = [\"orders\", \"role:events-admin\", \"*\"]\n";
        assert_eq!(parse_toml(acl, "api", CONTROL_POLICY).unwrap().event_acl.len(), 1);
        let e = parse_toml(acl, "api", "orders").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("event_acl"), "{e}");
        for bad in ["role:root", "Orders!", ""] {
            let doc = format!("[[event_acl]]\nname = \"t\"\nsubscribe = [\"{bad}\"]\n");
            let e = parse_toml(&doc, "api", CONTROL_POLICY).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("event_acl"), "{bad}: {e}");
        }
    }

    #[test]
    fn gateway_routes_are_validated_with_the_field_named() {
        let e = parse_toml(
            "[[route]]\nname = \"a\"\npath_prefix = \"/a\"\nservice = \"users\"\nretry_attempts = 9\n",
            "g.toml",
            "gateway",
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("route[0].retry_attempts"), "{e}");
        let e = parse_toml(
            "[[route]]\npath_prefix = \"/a\"\nservice = \"users\"\n[[route]]\npath = \"/b\"\n",
            "g.toml",
            "gateway",
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("route[1].service"), "{e}");
    }

    #[test]
    fn issuer_checks() {
        let issuer = |body: &str| format!("[[jwt.issuers]]\nissuer = \"i\"\naudiences = [\"a\"]\n{body}\n");
        let hs_without_secret =
            bad(&issuer(&format!("algorithms = [\"HS256\", \"RS256\"]\nkeys = [{{ pem = \"\"\"{RSA_PUB}\"\"\" }}]")));
        assert!(hs_without_secret.message.contains("no secret"), "{hs_without_secret}");
        let short = bad(&issuer("algorithms = [\"HS256\"]\nkeys = [{ secret = \"short\" }]"));
        assert!(short.message.contains("32 bytes"), "{short}");
        let not_pem = bad(&issuer("algorithms = [\"RS256\"]\nkeys = [{ pem = \"nope\" }]"));
        assert!(not_pem.message.contains("pem"), "{not_pem}");
        let no_keys = bad(&issuer("algorithms = [\"RS256\"]"));
        assert!(no_keys.message.contains("jwks_url"), "{no_keys}");
        let rsa_key_for_ec =
            bad(&issuer(&format!("algorithms = [\"ES256\"]\nkeys = [{{ pem = \"\"\"{RSA_PUB}\"\"\" }}]")));
        assert!(rsa_key_for_ec.message.contains("no allowed algorithm"), "{rsa_key_for_ec}");
        let jku = bad(&issuer("algorithms = [\"RS256\"]\njwks_url = \"file:///etc/passwd\""));
        assert!(jku.message.contains("http(s)"), "{jku}");
    }
}
