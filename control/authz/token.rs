//! Tokens signed by the mesh root key (ES256), verified by any control
//! replica that holds the root, without shared state:
//!
//! - **bootstrap tokens** (audience `redfire-bootstrap`): a sidecar's first
//!   credential, subject the SPIFFE ID it may obtain, accepted only by
//!   `IssueCertificate`. Each token certifies at most `uses` keys (default
//!   one): the identity service redeems it for the key of the first CSR
//!   (`crate::control::identity::redeem`), so a replayed token with another key is refused,
//!   while the same sidecar (same key) may re-bootstrap after its
//!   certificate lapsed. Renewals need no token.
//! - **operator tokens** (audience `redfire-operator`): a person or a tool,
//!   subject free-form, carrying roles ([`ROLES`]); sent as
//!   `authorization: Bearer <token>` on any call.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::mesh::identity::spiffe_id;

const BOOTSTRAP: &str = "redfire-bootstrap";
const OPERATOR: &str = "redfire-operator";
const ISSUER: &str = "redfire-control";

pub use crate::mesh::identity::OPERATOR_ROLES as ROLES;

/// The key tokens are signed with: the mesh root (the CA implements it).
pub trait RootKey {
    /// The key that signs tokens (ES256).
    fn token_signing_key(&self) -> Result<EncodingKey, String>;
    /// The key that verifies them.
    fn token_verifying_key(&self) -> Result<DecodingKey, String>;
    /// The mesh's trust domain.
    fn trust_domain(&self) -> &str;
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    iat: u64,
    exp: u64,
    jti: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uses: Option<u32>,
}

/// Creates a one-use bootstrap token for `service` in `namespace`, valid for
/// `ttl` from now.
pub fn create(ca: &impl RootKey, namespace: &str, service: &str, ttl: Duration) -> Result<String, String> {
    create_at(ca, namespace, service, SystemTime::now(), ttl, 1)
}

/// Creates a bootstrap token as if issued at `issued_at` (tests use a past
/// time) that certifies up to `uses` distinct keys (replicas sharing it).
pub fn create_at(
    ca: &impl RootKey,
    namespace: &str,
    service: &str,
    issued_at: SystemTime,
    ttl: Duration,
    uses: u32,
) -> Result<String, String> {
    if uses == 0 {
        return Err("uses: at least 1".into());
    }
    let sub = spiffe_id(ca.trust_domain(), namespace, service);
    sign(ca, BOOTSTRAP, sub, issued_at, ttl, Vec::new(), Some(uses))
}

/// Creates an operator token for `subject` with `roles` (each one of
/// [`ROLES`]), valid for `ttl` from now.
pub fn create_operator(ca: &impl RootKey, subject: &str, roles: &[&str], ttl: Duration) -> Result<String, String> {
    if subject.is_empty() || subject.len() > 256 || subject.chars().any(char::is_control) {
        return Err(format!("subject: {subject:?} must be 1-256 printable characters"));
    }
    if roles.is_empty() {
        return Err(format!("role: at least one of {}", ROLES.join(", ")));
    }
    if let Some(r) = roles.iter().find(|r| !ROLES.contains(r)) {
        return Err(format!("role: {r:?} is not one of {}", ROLES.join(", ")));
    }
    let roles = roles.iter().map(|r| r.to_string()).collect();
    sign(ca, OPERATOR, subject.to_string(), SystemTime::now(), ttl, roles, None)
}

fn sign(
    ca: &impl RootKey,
    aud: &str,
    sub: String,
    issued_at: SystemTime,
    ttl: Duration,
    roles: Vec<String>,
    uses: Option<u32>,
) -> Result<String, String> {
    let now = issued_at.duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
    let claims = Claims {
        iss: ISSUER.into(),
        aud: aud.into(),
        sub,
        iat: now,
        exp: now + ttl.as_secs(),
        jti: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
        roles,
        uses,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &ca.token_signing_key()?).map_err(|e| e.to_string())
}

/// What a verified bootstrap token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapGrant {
    /// The identity it may obtain.
    pub spiffe_id: String,
    /// Its unique id (what redemptions are recorded under).
    pub jti: String,
    /// How many distinct keys it may certify.
    pub uses: u32,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

/// A verified operator token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// Who (the token's `sub`).
    pub subject: String,
    /// Its roles (unknown ones dropped).
    pub roles: Vec<&'static str>,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

/// A verified bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bearer {
    /// A bootstrap token (good only for `IssueCertificate`).
    Bootstrap(BootstrapGrant),
    /// An operator token.
    Operator(Operator),
}

/// Verifies tokens against one CA's root key.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    prefix: String,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for tokens signed by `ca`'s root.
    pub fn new(ca: &impl RootKey) -> Result<Verifier, String> {
        let key = ca.token_verifying_key()?;
        // One algorithm, one key family (STACK.md pitfall 3); `none` and
        // HMAC are never accepted.
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[BOOTSTRAP, OPERATOR]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = 30;
        Ok(Verifier { key, validation, prefix: format!("spiffe://{}/ns/", ca.trust_domain()) })
    }

    /// Checks a token of either kind.
    pub fn bearer(&self, token: &str) -> Result<Bearer, String> {
        let c = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| format!("token: {e}"))?
            .claims;
        if c.aud == OPERATOR {
            let roles = ROLES.iter().copied().filter(|r| c.roles.iter().any(|x| x == r)).collect();
            return Ok(Bearer::Operator(Operator { subject: c.sub, roles, exp: c.exp }));
        }
        let sub = c.sub;
        if !sub.starts_with(&self.prefix) || sub[self.prefix.len()..].split('/').count() != 3 {
            return Err(format!("token: {sub} is not a workload identity of this trust domain"));
        }
        Ok(Bearer::Bootstrap(BootstrapGrant { spiffe_id: sub, jti: c.jti, uses: c.uses.unwrap_or(1), exp: c.exp }))
    }

    /// Checks a bootstrap token; an operator token is refused.
    pub fn bootstrap(&self, token: &str) -> Result<BootstrapGrant, String> {
        match self.bearer(token).map_err(|e| format!("bootstrap_{e}"))? {
            Bearer::Bootstrap(g) => Ok(g),
            Bearer::Operator(_) => Err("bootstrap_token: an operator token, not a bootstrap token".into()),
        }
    }
}
