//! Operators from an OIDC issuer (`operator_oidc_issuer`): its tokens are
//! accepted as operator tokens, their roles read from one claim
//! (`operator_oidc_roles_claim`, a string or an array; roles control does not
//! know are dropped, a token with none is refused). Keys come through OIDC
//! discovery ([`crate::mesh::jwks`]): fetched at start and every 5 minutes;
//! a token with an unknown `kid` triggers one refetch (at most every 30 s)
//! and is refused meanwhile, so the client's retry succeeds once the new key
//! is in. Asymmetric algorithms only (never `none` or HMAC), the algorithm
//! must match the key's family, `iss`, `aud`, `exp` and `sub` are required,
//! and a header with `crit`, `enc` or `zip` is refused (RFC 8725).

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;

use crate::control::authz::token::{Operator, ROLES};
use crate::mesh::jwks::{Jwks, JwksRegistry, REFETCH_EVERY, Source};

/// How often the issuer's keys are refreshed.
const REFRESH: Duration = Duration::from_secs(300);

/// An OIDC issuer whose tokens are operator tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorOidc {
    /// Its URL (`iss`; discovery at `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    /// The `aud` its tokens must carry for control.
    pub audience: String,
    /// The claim listing operator roles (a string or an array of strings).
    pub roles_claim: String,
}

/// See the module docs.
#[derive(Debug)]
pub struct OidcOperators {
    config: OperatorOidc,
    jwks: Arc<Jwks>,
    /// Keeps the refresh task's set alive.
    _registry: JwksRegistry,
}

impl OidcOperators {
    /// Starts fetching `config.issuer`'s keys (needs a Tokio runtime).
    pub fn new(config: OperatorOidc) -> OidcOperators {
        let registry = JwksRegistry::default();
        let jwks = registry.get(Source::Oidc(config.issuer.clone()), REFRESH);
        OidcOperators { config, jwks, _registry: registry }
    }

    /// Verifies `token` as one of this issuer's operator tokens.
    pub fn verify(&self, token: &str) -> Result<Operator, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("token: {e}"))?;
        if header.crit.is_some() || header.enc.is_some() || header.zip.is_some() {
            return Err("token: header has crit/enc/zip; refused".into());
        }
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            return Err(format!("token: algorithm {:?} is not accepted from an OIDC issuer", header.alg));
        }
        let keys = self.jwks.keys();
        let candidates: Vec<_> = keys
            .iter()
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .filter(|k| k.family == header.alg.family())
            .filter(|k| k.alg.as_deref().is_none_or(|a| format!("{:?}", header.alg) == a))
            .collect();
        if candidates.is_empty() {
            let jwks = self.jwks.clone();
            tokio::spawn(async move { jwks.refetch(REFETCH_EVERY).await });
            return Err(format!("token: no key of {} for kid {:?}; retry shortly", self.config.issuer, header.kid));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        let mut last = String::new();
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return self.operator(data.claims),
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!("token: {last}"))
    }

    fn operator(&self, claims: serde_json::Map<String, Value>) -> Result<Operator, String> {
        let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_string();
        let exp = claims.get("exp").and_then(Value::as_u64).ok_or("token: exp is not a number")?;
        let listed: Vec<&str> = match claims.get(&self.config.roles_claim) {
            Some(Value::String(s)) => s.split_whitespace().collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let roles: Vec<&'static str> = ROLES.iter().copied().filter(|r| listed.contains(r)).collect();
        if roles.is_empty() {
            return Err(format!(
                "token: its {:?} claim grants no operator role ({})",
                self.config.roles_claim,
                ROLES.join(", ")
            ));
        }
        Ok(Operator { subject, roles, exp })
    }
}
