//! End-user JWT authentication: find the token, pick the issuer and key,
//! verify (jsonwebtoken on aws-lc-rs), map claims to headers.
//!
//! Refused, always: `alg: none` (not an algorithm here), an algorithm the
//! issuer does not allow (so an HS256 token "signed" with an RSA public key
//! never meets that key), a token whose header names a key location (`jku`,
//! `x5u`, `jwk`: never followed), an oversized token or `kid`, a wrongly
//! typed `exp`/`nbf`, a missing or wrong `iss`/`aud`, and a missing `exp`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::jwks::{Jwks, JwksRegistry, REFETCH_EVERY, Source};
use super::path;
use crate::control::policy::model::{JwtPolicy, TokenSource};

/// Largest token accepted, in bytes.
pub const MAX_TOKEN: usize = 8 * 1024;
/// Longest `kid` accepted.
pub const MAX_KID: usize = 256;
/// Verified tokens remembered (the cache is cleared when full).
const CACHE_CAP: usize = 10_000;

/// Why authentication failed: a metric label and a short reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    /// Low-cardinality label (`missing_token`, `expired`, ...).
    pub code: &'static str,
    /// What the caller reads.
    pub reason: String,
}

fn fail(code: &'static str, reason: impl Into<String>) -> AuthError {
    AuthError { code, reason: reason.into() }
}

/// Verified claims.
pub type Claims = Arc<Map<String, Value>>;

struct StaticKey {
    kid: Option<String>,
    family: AlgorithmFamily,
    key: DecodingKey,
}

struct IssuerKeys {
    issuer: String,
    algorithms: Vec<Algorithm>,
    /// One Validation per key family (STACK.md pitfall 3).
    validations: Vec<(AlgorithmFamily, Validation)>,
    keys: Vec<StaticKey>,
    jwks: Option<Arc<Jwks>>,
}

/// A compiled [`JwtPolicy`].
pub struct JwtAuth {
    issuers: Vec<IssuerKeys>,
    sources: Vec<TokenSource>,
    /// Claim → header for the app.
    pub claim_headers: Vec<(String, HeaderName)>,
    public_paths: Vec<String>,
    public_methods: Vec<String>,
    leeway: u64,
    /// token → (key-set generation, exp, claims).
    cache: Mutex<HashMap<Box<str>, (u64, u64, Claims)>>,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issuers: Vec<_> = self.issuers.iter().map(|i| &i.issuer).collect();
        f.debug_struct("JwtAuth").field("issuers", &issuers).finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct Peek {
    iss: Option<Value>,
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

impl JwtAuth {
    /// Compiles a validated policy; JWKS sources come from `registry`.
    pub fn new(p: &JwtPolicy, registry: &JwksRegistry) -> Result<JwtAuth, String> {
        let leeway = p.leeway.0.as_secs();
        let mut issuers = Vec::new();
        for i in &p.issuers {
            let mut validations: Vec<(AlgorithmFamily, Validation)> = Vec::new();
            for alg in &i.algorithms {
                let fam = alg.family();
                match validations.iter_mut().find(|(f, _)| *f == fam) {
                    Some((_, v)) => v.algorithms.push(*alg),
                    None => {
                        let mut v = Validation::new(*alg);
                        v.leeway = leeway;
                        v.validate_nbf = true;
                        v.set_issuer(&[&i.issuer]);
                        v.set_audience(&i.audiences);
                        v.set_required_spec_claims(&["exp", "iss", "aud"]);
                        validations.push((fam, v));
                    }
                }
            }
            let mut keys = Vec::new();
            for k in &i.keys {
                let key = k.decoding_key()?;
                keys.push(StaticKey { kid: k.kid.clone(), family: key.family(), key });
            }
            let source = match (&i.jwks_url, &i.oidc_discovery) {
                (Some(u), _) => Some(Source::Url(u.clone())),
                (None, Some(o)) => Some(Source::Oidc(o.clone())),
                _ => None,
            };
            let jwks = source.map(|s| registry.get(s, i.jwks_refresh.0));
            issuers.push(IssuerKeys {
                issuer: i.issuer.clone(),
                algorithms: i.algorithms.clone(),
                validations,
                keys,
                jwks,
            });
        }
        let claim_headers = p
            .claim_headers
            .iter()
            .map(|(c, h)| HeaderName::from_bytes(h.0.as_bytes()).map(|h| (c.clone(), h)).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        Ok(JwtAuth {
            issuers,
            sources: p.sources.clone(),
            claim_headers,
            public_paths: p.public_paths.iter().map(|p| p.0.clone()).collect(),
            public_methods: p.public_methods.iter().map(|m| m.0.clone()).collect(),
            leeway,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// True when `method path` needs no token.
    pub fn is_public(&self, method: &Method, path: &str) -> bool {
        self.public_methods.iter().any(|m| m == method.as_str())
            || self.public_paths.iter().any(|p| path::matches(p, path))
    }

    /// The token from the first configured source that has one.
    pub fn token<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Result<String, AuthError> {
        for s in &self.sources {
            if let Some(h) = &s.header {
                if let Some(v) = headers.get(h.0.as_str()) {
                    let v = v.to_str().map_err(|_| fail("malformed_token", "token header is not ASCII"))?;
                    let prefix = s.prefix.as_deref().unwrap_or("");
                    let t = if v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix) {
                        &v[prefix.len()..]
                    } else {
                        return Err(fail("malformed_token", format!("{} must start with {prefix:?}", h.0)));
                    };
                    return Ok(t.trim().to_string());
                }
            } else if let Some(name) = &s.cookie {
                for v in headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()) {
                    for pair in v.split(';') {
                        if let Some((k, val)) = pair.trim().split_once('=')
                            && k == name
                        {
                            return Ok(val.to_string());
                        }
                    }
                }
            } else if let Some(name) = &s.query {
                for pair in query.unwrap_or("").split('&') {
                    if let Some((k, val)) = pair.split_once('=')
                        && k == name
                    {
                        return Ok(percent_encoding::percent_decode_str(val).decode_utf8_lossy().into_owned());
                    }
                }
            }
        }
        Err(fail("missing_token", "no bearer token"))
    }

    /// Verifies `token`; the claims, or why not.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN {
            return Err(fail("malformed_token", format!("token over {MAX_TOKEN} bytes")));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| fail("malformed_token", "malformed token"))?;
        if header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() || header.x5c.is_some() {
            return Err(fail("key_location_refused", "token names its own key (jku/x5u/jwk/x5c); refused"));
        }
        let kid = header.kid.as_deref();
        if kid.is_some_and(|k| k.len() > MAX_KID) {
            return Err(fail("malformed_token", format!("kid over {MAX_KID} bytes")));
        }
        let peek: Peek = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| fail("malformed_token", "malformed claims"))?;
        let iss = peek.iss.as_ref().and_then(Value::as_str).ok_or_else(|| fail("wrong_issuer", "missing iss"))?;
        let issuer =
            self.issuers.iter().find(|i| i.issuer == iss).ok_or_else(|| fail("wrong_issuer", "untrusted issuer"))?;
        let alg = header.alg;
        if !issuer.algorithms.contains(&alg) {
            return Err(fail("algorithm_refused", format!("algorithm {alg:?} not allowed")));
        }
        let generation = issuer.jwks.as_ref().map(|j| j.generation()).unwrap_or(0);
        if let Some((g, exp, claims)) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(token)
            && *g == generation
            && *exp + self.leeway >= now()
        {
            return Ok(claims.clone());
        }
        let mut keys = candidates(issuer, kid, alg);
        if keys.is_empty()
            && let Some(jwks) = &issuer.jwks
        {
            // Unknown kid: one refetch per 30 s at most, then look again.
            jwks.refetch(REFETCH_EVERY).await;
            keys = candidates(issuer, kid, alg);
        }
        if keys.is_empty() {
            return Err(fail("unknown_key", "unknown key id"));
        }
        let Some((_, validation)) = issuer.validations.iter().find(|(f, _)| *f == alg.family()) else {
            return Err(fail("algorithm_refused", format!("algorithm {alg:?} not allowed")));
        };
        let mut last = fail("bad_signature", "bad signature");
        for key in keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key, validation) {
                Ok(data) => {
                    let exp = data.claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
                    let claims = Arc::new(data.claims);
                    let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.len() >= CACHE_CAP {
                        cache.clear();
                    }
                    cache.insert(token.into(), (generation, exp, claims.clone()));
                    return Ok(claims);
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => fail("bad_signature", "bad signature"),
                        ErrorKind::ExpiredSignature => return Err(fail("expired", "token expired")),
                        ErrorKind::ImmatureSignature => return Err(fail("not_yet_valid", "token not yet valid")),
                        ErrorKind::InvalidAudience => return Err(fail("wrong_audience", "wrong audience")),
                        ErrorKind::InvalidIssuer => return Err(fail("wrong_issuer", "wrong issuer")),
                        ErrorKind::MissingRequiredClaim(c) => {
                            return Err(fail("missing_claim", format!("missing {c}")));
                        }
                        ErrorKind::InvalidClaimFormat(c) => {
                            return Err(fail("malformed_claim", format!("{c} has the wrong type")));
                        }
                        ErrorKind::InvalidAlgorithm => fail("algorithm_refused", "algorithm does not fit the key"),
                        _ => return Err(fail("malformed_token", "malformed token")),
                    }
                }
            }
        }
        Err(last)
    }

    /// Headers for the app from verified `claims`.
    pub fn headers(&self, claims: &Map<String, Value>) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        for (claim, header) in &self.claim_headers {
            let text = match claims.get(claim) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(a)) => a.iter().filter_map(scalar).collect::<Vec<_>>().join(","),
                Some(v) => match scalar(v) {
                    Some(s) => s,
                    None => continue,
                },
                None => continue,
            };
            if let Ok(v) = HeaderValue::from_str(&text) {
                out.push((header.clone(), v));
            }
        }
        out
    }

    /// For tests and `/admin`: fetches made by each JWKS source.
    pub fn jwks_fetches(&self) -> u64 {
        self.issuers.iter().filter_map(|i| i.jwks.as_ref()).map(|j| j.fetches()).sum()
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Keys of `issuer` that may verify an `alg` token with `kid`.
fn candidates(issuer: &IssuerKeys, kid: Option<&str>, alg: Algorithm) -> Vec<DecodingKey> {
    let family = alg.family();
    let mut out: Vec<DecodingKey> = issuer
        .keys
        .iter()
        .filter(|k| k.family == family && (k.kid.is_none() || k.kid.as_deref() == kid))
        .map(|k| k.key.clone())
        .collect();
    if let Some(jwks) = &issuer.jwks {
        let alg_name = format!("{alg:?}");
        out.extend(
            jwks.keys()
                .iter()
                .filter(|k| k.family == family && k.alg.as_ref().is_none_or(|a| *a == alg_name))
                .filter(|k| match kid {
                    Some(kid) => k.kid.as_deref() == Some(kid),
                    None => true,
                })
                .map(|k| k.key.clone()),
        );
    }
    out
}

/// The user's roles in `claims[claim]`: an array, or a space- or
/// comma-separated string.
pub fn roles<'a>(claims: &'a Map<String, Value>, claim: &str) -> Vec<&'a str> {
    match claims.get(claim) {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => s.split([' ', ',']).filter(|r| !r.is_empty()).collect(),
        _ => Vec::new(),
    }
}
