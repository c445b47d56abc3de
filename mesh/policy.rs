//! The policy document of one service, as written in a TOML file of the
//! policy directory and as published to proxies (the same fields as JSON).
//!
//! Everything a single field or table can get wrong is checked while it is
//! deserialized (`try_from` on the raw form), so a TOML error carries the
//! line of the offending value; [`parse_toml`] adds the file and the dotted
//! field name. A document that deserializes is valid: proxies deserialize
//! the JSON with the same types and so run the same checks.

pub mod ratelimit;
pub mod route;
pub mod routes_file;

use std::collections::BTreeMap;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};

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
}

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

/// Service-to-service authorization: rules in order, the first whose
/// `from`, `paths` and `methods` all match decides; otherwise the caller's
/// namespace default, otherwise `default`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzPolicy {
    /// When no rule matches and the namespace has no default [default: deny].
    #[serde(default)]
    pub default: Decision,
    /// Per caller namespace: what callers from it get when no rule matches.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, Decision>,
    /// The rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthzRule>,
}

/// One authorization rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzRule {
    /// Caller SPIFFE IDs: exact, `spiffe://<td>/ns/<ns>/*` or `*`.
    pub from: Vec<IdentityPattern>,
    /// Paths (`/exact`, `/prefix/*`, `*`); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathPattern>,
    /// HTTP methods; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<MethodName>,
    /// What a match means [default: allow].
    #[serde(default = "allow")]
    pub action: Decision,
}

fn allow() -> Decision {
    Decision::Allow
}

/// A SPIFFE ID pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdentityPattern(pub String);

impl TryFrom<String> for IdentityPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s == "*" {
            return Ok(IdentityPattern(s));
        }
        if !s.starts_with("spiffe://") || s.len() > 2048 {
            return Err(format!("{s:?} is not a SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<service>)"));
        }
        let head = s.strip_suffix("/*").unwrap_or(&s);
        if head.contains('*') {
            return Err(format!("{s:?}: a wildcard may only end the pattern, as in spiffe://<td>/ns/<namespace>/*"));
        }
        Ok(IdentityPattern(s))
    }
}

impl From<IdentityPattern> for String {
    fn from(p: IdentityPattern) -> String {
        p.0
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

/// End-user authentication with JWTs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtPolicy {
    /// Trusted issuers (at least one).
    pub issuers: Vec<Issuer>,
    /// Clock skew allowed on `exp` and `nbf` [default: 30s].
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// Where the token is looked for, in order [default: the Authorization header, `Bearer `].
    #[serde(default = "default_sources")]
    pub sources: Vec<TokenSource>,
    /// Claim → header passed to the app; incoming copies are always removed
    /// [default: sub = "x-user-id", roles = "x-user-roles"].
    #[serde(default = "default_claim_headers")]
    pub claim_headers: BTreeMap<String, HeaderNameS>,
    /// Paths that need no token (nor RBAC).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_paths: Vec<PathPattern>,
    /// Methods that need no token (nor RBAC), e.g. OPTIONS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_methods: Vec<MethodName>,
}

fn default_leeway() -> Dur {
    Dur(Duration::from_secs(30))
}

fn default_sources() -> Vec<TokenSource> {
    vec![TokenSource {
        header: Some(HeaderNameS("authorization".into())),
        prefix: Some("Bearer ".into()),
        ..Default::default()
    }]
}

fn default_claim_headers() -> BTreeMap<String, HeaderNameS> {
    BTreeMap::from([
        ("sub".to_string(), HeaderNameS("x-user-id".into())),
        ("roles".to_string(), HeaderNameS("x-user-roles".into())),
    ])
}

/// A valid header name, lower case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeaderNameS(pub String);

impl TryFrom<String> for HeaderNameS {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        http::HeaderName::from_bytes(lower.as_bytes())
            .map(|_| HeaderNameS(lower))
            .map_err(|_| format!("{s:?} is not a header name"))
    }
}

impl From<HeaderNameS> for String {
    fn from(h: HeaderNameS) -> String {
        h.0
    }
}

/// One place a token may be: exactly one of `header`, `cookie`, `query`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawTokenSource")]
pub struct TokenSource {
    /// A header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderNameS>,
    /// With `header`: a prefix the value must start with (`Bearer `).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// A query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenSource {
    header: Option<HeaderNameS>,
    prefix: Option<String>,
    cookie: Option<String>,
    query: Option<String>,
}

impl TryFrom<RawTokenSource> for TokenSource {
    type Error = String;
    fn try_from(r: RawTokenSource) -> Result<Self, String> {
        let n = usize::from(r.header.is_some()) + usize::from(r.cookie.is_some()) + usize::from(r.query.is_some());
        if n != 1 {
            return Err("a token source names exactly one of header, cookie, query".into());
        }
        if r.prefix.is_some() && r.header.is_none() {
            return Err("prefix only goes with header".into());
        }
        Ok(TokenSource { header: r.header, prefix: r.prefix, cookie: r.cookie, query: r.query })
    }
}

/// A trusted token issuer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawIssuer")]
pub struct Issuer {
    /// The `iss` value tokens must carry.
    pub issuer: String,
    /// Accepted `aud` values (at least one; tokens must carry one of them).
    pub audiences: Vec<String>,
    /// Allowed algorithms (`none` does not exist here).
    pub algorithms: Vec<Algorithm>,
    /// Static keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeySpec>,
    /// A JWKS document URL (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// An OIDC issuer URL: `<url>/.well-known/openid-configuration` names the JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc_discovery: Option<String>,
    /// How often the JWKS is refreshed in the background [default: 5m].
    #[serde(default = "default_refresh")]
    pub jwks_refresh: Dur,
}

fn default_refresh() -> Dur {
    Dur(Duration::from_secs(300))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    #[serde(default)]
    keys: Vec<KeySpec>,
    jwks_url: Option<String>,
    oidc_discovery: Option<String>,
    #[serde(default = "default_refresh")]
    jwks_refresh: Dur,
}

impl TryFrom<RawIssuer> for Issuer {
    type Error = String;
    fn try_from(r: RawIssuer) -> Result<Self, String> {
        if r.issuer.is_empty() {
            return Err("issuer: must not be empty".into());
        }
        if r.audiences.is_empty() || r.audiences.iter().any(String::is_empty) {
            return Err(format!("issuer {:?}: audiences must list at least one non-empty audience", r.issuer));
        }
        if r.algorithms.is_empty() {
            return Err(format!("issuer {:?}: algorithms must list at least one algorithm", r.issuer));
        }
        if r.keys.is_empty() && r.jwks_url.is_none() && r.oidc_discovery.is_none() {
            return Err(format!("issuer {:?}: give keys, jwks_url or oidc_discovery", r.issuer));
        }
        for url in r.jwks_url.iter().chain(&r.oidc_discovery) {
            let ok = url
                .parse::<http::Uri>()
                .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
            if !ok {
                return Err(format!("issuer {:?}: {url:?} is not an http(s) URL", r.issuer));
            }
        }
        if r.jwks_refresh.0 < Duration::from_secs(30) {
            return Err(format!("issuer {:?}: jwks_refresh must be at least 30s", r.issuer));
        }
        for k in &r.keys {
            let fam = k.family();
            if !r.algorithms.iter().any(|a| a.family() == fam) {
                return Err(format!(
                    "issuer {:?}: key {:?} is a {fam:?} key but no allowed algorithm uses it",
                    r.issuer,
                    k.kid.as_deref().unwrap_or("(no kid)")
                ));
            }
        }
        let hmac = r.algorithms.iter().any(|a| a.family() == jsonwebtoken::AlgorithmFamily::Hmac);
        if hmac && !r.keys.iter().any(|k| k.secret.is_some()) {
            return Err(format!("issuer {:?}: an HS* algorithm is allowed but no secret key is given", r.issuer));
        }
        Ok(Issuer {
            issuer: r.issuer,
            audiences: r.audiences,
            algorithms: r.algorithms,
            keys: r.keys,
            jwks_url: r.jwks_url,
            oidc_discovery: r.oidc_discovery,
            jwks_refresh: r.jwks_refresh,
        })
    }
}

/// A static key: exactly one of `secret` (HMAC) or `pem` (RSA, EC or Ed25519 public key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawKey")]
pub struct KeySpec {
    /// Key id (`kid`) tokens name; without it the key is tried for any `kid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// HMAC secret (raw bytes of the string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Public key, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    kid: Option<String>,
    secret: Option<String>,
    pem: Option<String>,
}

impl TryFrom<RawKey> for KeySpec {
    type Error = String;
    fn try_from(r: RawKey) -> Result<Self, String> {
        let k = KeySpec { kid: r.kid, secret: r.secret, pem: r.pem };
        if k.kid.as_ref().is_some_and(|kid| kid.is_empty() || kid.len() > 256) {
            return Err("kid: 1 to 256 characters".into());
        }
        match (&k.secret, &k.pem) {
            (Some(s), None) if s.len() >= 32 => {}
            (Some(_), None) => return Err("secret: at least 32 bytes (RFC 7518 §3.2)".into()),
            (None, Some(_)) => {
                k.decoding_key()?;
            }
            _ => return Err("a key has exactly one of secret, pem".into()),
        }
        Ok(k)
    }
}

impl KeySpec {
    /// The verification key.
    pub fn decoding_key(&self) -> Result<DecodingKey, String> {
        if let Some(s) = &self.secret {
            return Ok(DecodingKey::from_secret(s.as_bytes()));
        }
        let pem = self.pem.as_deref().unwrap_or_default().as_bytes();
        DecodingKey::from_rsa_pem(pem)
            .or_else(|_| DecodingKey::from_ec_pem(pem))
            .or_else(|_| DecodingKey::from_ed_pem(pem))
            .map_err(|_| "pem: not an RSA, EC or Ed25519 public key in PEM".to_string())
    }

    /// The key's algorithm family.
    pub fn family(&self) -> jsonwebtoken::AlgorithmFamily {
        match self.decoding_key() {
            Ok(k) => k.family(),
            Err(_) => jsonwebtoken::AlgorithmFamily::Hmac,
        }
    }
}

/// Roles, permissions and the rules that require them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RbacPolicy {
    /// The claim holding the user's roles (array or space-separated string) [default: roles].
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// When no rule matches a request [default: deny].
    #[serde(default)]
    pub default: Decision,
    /// Match paths ignoring ASCII case (for apps that route that way).
    #[serde(default)]
    pub case_insensitive: bool,
    /// Role → permissions (`*` is every permission).
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// Rules in order; the first that matches names the permission needed.
    #[serde(default)]
    pub rules: Vec<RbacRule>,
    /// Roles also looked up in Redis per user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RbacRedis>,
}

fn default_roles_claim() -> String {
    "roles".into()
}

/// One RBAC rule: exactly one of `path` or `grpc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawRbacRule")]
pub struct RbacRule {
    /// HTTP methods; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<MethodName>,
    /// A normalised path pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathPattern>,
    /// A gRPC method: `package.Service/Method` or `package.Service/*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    /// The permission required.
    pub permission: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRbacRule {
    #[serde(default)]
    methods: Vec<MethodName>,
    path: Option<PathPattern>,
    grpc: Option<String>,
    permission: String,
}

impl TryFrom<RawRbacRule> for RbacRule {
    type Error = String;
    fn try_from(r: RawRbacRule) -> Result<Self, String> {
        if r.permission.is_empty() {
            return Err("permission: must not be empty".into());
        }
        match (&r.path, &r.grpc) {
            (Some(_), None) => {}
            (None, Some(g)) => {
                let ok = g.split_once('/').is_some_and(|(svc, m)| {
                    svc.contains('.')
                        && !svc.starts_with('.')
                        && svc.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
                        && !m.is_empty()
                        && (m == "*" || m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                });
                if !ok {
                    return Err(format!("grpc: {g:?} is not package.Service/Method or package.Service/*"));
                }
            }
            _ => return Err("a rule has exactly one of path, grpc".into()),
        }
        Ok(RbacRule { methods: r.methods, path: r.path, grpc: r.grpc, permission: r.permission })
    }
}

/// Per-user roles kept in Redis: a set at `key` with `{sub}` replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawRbacRedis")]
pub struct RbacRedis {
    /// `redis://` URL.
    pub url: String,
    /// Key template containing `{sub}`, e.g. `roles:{sub}`.
    pub key: String,
    /// How long a lookup is cached [default: 30s].
    pub cache_ttl: Dur,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRbacRedis {
    url: String,
    key: String,
    cache_ttl: Option<Dur>,
}

impl TryFrom<RawRbacRedis> for RbacRedis {
    type Error = String;
    fn try_from(r: RawRbacRedis) -> Result<Self, String> {
        if redis::Client::open(r.url.as_str()).is_err() {
            return Err(format!("url: {:?} is not a redis:// URL", r.url));
        }
        if !r.key.contains("{sub}") {
            return Err(format!("key: {:?} must contain {{sub}}", r.key));
        }
        Ok(RbacRedis { url: r.url, key: r.key, cache_ttl: r.cache_ttl.unwrap_or(Dur(Duration::from_secs(30))) })
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
