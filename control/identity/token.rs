//! Bootstrap tokens: a sidecar's first credential, scoped to one service.
//!
//! A token is a JWT (ES256) signed by the root key, audience
//! `redfire-bootstrap`, subject the SPIFFE ID it may obtain. Any control
//! replica that holds the root verifies it without shared state. Tokens are
//! reusable until they expire (every replica of a service may share one, like
//! a Kubernetes secret); renewals need no token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::ca::Ca;
use crate::mesh::identity::spiffe_id;

const AUDIENCE: &str = "redfire-bootstrap";
const ISSUER: &str = "redfire-control";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    iat: u64,
    exp: u64,
    jti: String,
}

/// Creates a token for `service` in `namespace`, valid for `ttl` from now.
pub fn create(ca: &Ca, namespace: &str, service: &str, ttl: Duration) -> Result<String, String> {
    create_at(ca, namespace, service, SystemTime::now(), ttl)
}

/// Creates a token as if issued at `issued_at` (tests use a past time).
pub fn create_at(
    ca: &Ca,
    namespace: &str,
    service: &str,
    issued_at: SystemTime,
    ttl: Duration,
) -> Result<String, String> {
    let now = issued_at.duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
    let claims = Claims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: spiffe_id(ca.trust_domain(), namespace, service),
        iat: now,
        exp: now + ttl.as_secs(),
        jti: format!("{:016x}", fastrand::u64(..)),
    };
    let key = EncodingKey::from_ec_pem(ca.root_key_pem().as_bytes()).map_err(|e| format!("root key: {e}"))?;
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).map_err(|e| e.to_string())
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
    pub fn new(ca: &Ca) -> Result<Verifier, String> {
        let kp = rcgen::KeyPair::from_pem(ca.root_key_pem()).map_err(|e| format!("root key: {e}"))?;
        let key = DecodingKey::from_ec_pem(kp.public_key_pem().as_bytes()).map_err(|e| format!("root key: {e}"))?;
        // One algorithm, one key family (STACK.md pitfall 3); `none` and
        // HMAC are never accepted.
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = 30;
        Ok(Verifier { key, validation, prefix: format!("spiffe://{}/ns/", ca.trust_domain()) })
    }

    /// Checks a token; returns the SPIFFE ID it grants.
    pub fn verify(&self, token: &str) -> Result<String, String> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| format!("bootstrap_token: {e}"))?;
        let sub = data.claims.sub;
        if !sub.starts_with(&self.prefix) || sub[self.prefix.len()..].split('/').count() != 3 {
            return Err(format!("bootstrap_token: {sub} is not a workload identity of this trust domain"));
        }
        Ok(sub)
    }
}
