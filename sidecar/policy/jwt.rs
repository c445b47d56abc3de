//! End-user JWT authentication: find the token, pick the issuer and key,
//! verify (jsonwebtoken on aws-lc-rs), map claims to headers.
//!
//! Refused, always: `alg: none` (not an algorithm here), an algorithm the
//! issuer does not allow (so an HS256 token "signed" with an RSA public key
//! never meets that key), a token whose header names a key location (`jku`,
//! `x5u`, `jwk`: never followed) or carries `crit`, `enc` or `zip`, an
//! oversized token or `kid`, a wrongly typed `exp`/`nbf`, a missing or wrong
//! `iss`/`aud`, and a missing `exp`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::path;
use crate::mesh::jwks::{Jwks, JwksRegistry, REFETCH_EVERY, Source};
use crate::mesh::policy::jwt::{JwtPolicy, TokenSource};

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

/// A cache entry: (issuer index, key-set generation, exp, claims).
type Verified = (usize, u64, u64, Claims);

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
    /// token → what verifying it found.
    cache: Mutex<HashMap<Box<str>, Verified>>,
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
        // The same bytes passed every check below before; only time and the
        // issuer's key set can have changed since.
        if let Some((i, g, exp, claims)) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(token)
            && self.issuers[*i].jwks.as_ref().map(|j| j.generation()).unwrap_or(0) == *g
            && *exp + self.leeway >= now()
        {
            return Ok(claims.clone());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| fail("malformed_token", "malformed token"))?;
        if header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() || header.x5c.is_some() {
            return Err(fail("key_location_refused", "token names its own key (jku/x5u/jwk/x5c); refused"));
        }
        // RFC 7515 §4.1.11: a recipient must refuse a token whose `crit` names
        // an extension it does not understand, and we understand none (so
        // `b64: false` and the like can never change what is verified). A
        // JWE's `enc`/`zip` have no place in a signed token either.
        if header.crit.is_some() || header.enc.is_some() || header.zip.is_some() {
            return Err(fail("critical_header_refused", "token header has crit/enc/zip; refused"));
        }
        let kid = header.kid.as_deref();
        if kid.is_some_and(|k| k.len() > MAX_KID) {
            return Err(fail("malformed_token", format!("kid over {MAX_KID} bytes")));
        }
        let peek: Peek = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| fail("malformed_token", "malformed claims"))?;
        let iss = peek.iss.as_ref().and_then(Value::as_str).ok_or_else(|| fail("wrong_issuer", "missing iss"))?;
        let (index, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.issuer == iss)
            .ok_or_else(|| fail("wrong_issuer", "untrusted issuer"))?;
        let alg = header.alg;
        if !issuer.algorithms.contains(&alg) {
            return Err(fail("algorithm_refused", format!("algorithm {alg:?} not allowed")));
        }
        let generation = issuer.jwks.as_ref().map(|j| j.generation()).unwrap_or(0);
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
                    cache.insert(token.into(), (index, generation, exp, claims.clone()));
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

    /// When a token with these verified claims stops being accepted
    /// (`exp` + leeway), as a wall-clock time; `None` without an `exp`.
    pub fn expires_at(&self, claims: &Map<String, Value>) -> Option<std::time::SystemTime> {
        let exp = claims.get("exp").and_then(Value::as_u64)?;
        std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(exp.saturating_add(self.leeway)))
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::mesh::policy::parse_toml;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn auth(extra: &str) -> JwtAuth {
        let toml = format!(
            "[jwt]\n{extra}\n[[jwt.issuers]]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\nkeys = [{{ secret = \"{SECRET}\" }}]\n"
        );
        let doc = parse_toml(&toml, "t", "orders").unwrap();
        JwtAuth::new(doc.jwt.as_ref().unwrap(), &JwksRegistry::default()).unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn token_sources_in_order() {
        let a = auth(
            r#"sources = [{ header = "authorization", prefix = "Bearer " }, { cookie = "session" }, { query = "access_token" }]"#,
        );
        assert_eq!(a.token(&headers(&[("authorization", "bearer abc")]), None).unwrap(), "abc");
        let e = a.token(&headers(&[("authorization", "Basic abc")]), None).unwrap_err();
        assert_eq!(e.code, "malformed_token");
        assert_eq!(a.token(&headers(&[("cookie", "theme=dark; session=s1")]), None).unwrap(), "s1");
        assert_eq!(a.token(&HeaderMap::new(), Some("x=1&access_token=q%2E1")).unwrap(), "q.1");
        assert_eq!(a.token(&HeaderMap::new(), Some("x=1")).unwrap_err().code, "missing_token");
    }

    #[test]
    fn claims_map_to_headers_by_type() {
        let a = auth(
            r#"claim_headers = { sub = "x-user-id", roles = "x-user-roles", tier = "x-tier", obj = "x-obj", bad = "x-bad" }"#,
        );
        let claims = json!({ "sub": "alice", "roles": ["trader", "viewer", 7], "tier": 3, "obj": { "a": 1 }, "bad": "line\nbreak" });
        let got: Vec<(String, String)> = a
            .headers(claims.as_object().unwrap())
            .into_iter()
            .map(|(h, v)| (h.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("x-user-roles".to_string(), "trader,viewer,7".to_string()),
                ("x-user-id".to_string(), "alice".to_string()),
                ("x-tier".to_string(), "3".to_string()),
            ],
            "objects and values that cannot be a header are left out"
        );
    }

    #[test]
    fn roles_from_arrays_or_strings() {
        let c = json!({ "a": ["x", "y"], "s": "x y,z", "n": 3 });
        let c = c.as_object().unwrap();
        assert_eq!(roles(c, "a"), vec!["x", "y"]);
        assert_eq!(roles(c, "s"), vec!["x", "y", "z"]);
        assert!(roles(c, "n").is_empty() && roles(c, "missing").is_empty());
    }

    #[tokio::test]
    async fn verified_tokens_are_cached_but_never_past_exp() {
        let a = auth("leeway = \"0s\"");
        let now = jsonwebtoken::get_current_timestamp();
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let mint = |exp: u64| {
            let claims = json!({ "iss": "i", "aud": "a", "sub": "u", "exp": exp });
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
        };
        let t = mint(now + 60);
        assert!(a.verify(&t).await.is_ok());
        assert_eq!(a.cache.lock().unwrap().len(), 1);
        assert!(a.verify(&t).await.is_ok(), "from the cache");
        // An entry whose exp has passed is not served from the cache, even
        // if one was planted there.
        let expired = mint(now - 10);
        a.cache.lock().unwrap().insert(expired.clone().into(), (0, 0, now - 10, Arc::default()));
        assert_eq!(a.verify(&expired).await.unwrap_err().code, "expired", "re-verified, not served stale");
    }

    #[tokio::test]
    async fn a_header_with_crit_enc_or_zip_is_refused_even_when_signed_by_the_trusted_key() {
        use base64::Engine;
        let a = auth("");
        let exp = jsonwebtoken::get_current_timestamp() + 60;
        let claims = json!({ "iss": "i", "aud": "a", "sub": "u", "exp": exp });
        // Signed by hand: jsonwebtoken's Header cannot write every field.
        let sign = |header: serde_json::Value| {
            let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
            let input = format!("{}.{}", b64(&header), b64(&claims));
            let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
            let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::HS256).unwrap();
            format!("{input}.{sig}")
        };
        assert!(a.verify(&sign(json!({ "alg": "HS256", "typ": "JWT" }))).await.is_ok(), "the control token passes");
        for header in [
            json!({ "alg": "HS256", "crit": ["exp-never"], "exp-never": true }),
            json!({ "alg": "HS256", "crit": ["b64"], "b64": false }),
            json!({ "alg": "HS256", "crit": [] }),
            json!({ "alg": "HS256", "enc": "A128GCM" }),
            json!({ "alg": "HS256", "zip": "DEF" }),
        ] {
            let e = a.verify(&sign(header.clone())).await.unwrap_err();
            assert_eq!(e.code, "critical_header_refused", "{header}");
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_config(256))]
        /// Peer input: any token-shaped string is an error, never a panic.
        #[test]
        fn arbitrary_tokens_are_refused_without_panicking(
            parts in proptest::collection::vec("[A-Za-z0-9_=+/-]{0,64}", 0..5),
            json in "\\{\"(alg|kid|jku|iss|exp)\":(\"[a-zA-Z0-9]{0,8}\"|[0-9]{1,12}|null|\\[\\])\\}",
        ) {
            use base64::Engine;
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let a = auth("");
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.as_bytes());
            for t in [parts.join("."), format!("{b64}.{b64}.{}", parts.join(""))] {
                proptest::prop_assert!(rt.block_on(a.verify(&t)).is_err());
            }
        }
    }
}
