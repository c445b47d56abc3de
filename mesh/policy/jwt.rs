//! `[jwt]`: end-user authentication: where a token is found, the issuers
//! trusted and their keys (static or JWKS), leeway, and which claims become
//! headers for the app. Verified by `crate::sidecar::policy::jwt`.

use std::collections::BTreeMap;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};

use super::{Dur, MethodName, PathPattern};

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
