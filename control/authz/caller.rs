//! Who is calling: from the connection's verified client certificate (a
//! workload), or from an `authorization: Bearer` token (an operator; a
//! bootstrap token is recognised only to be refused outside
//! `IssueCertificate`). Certificates are read once per connection
//! ([`crate::control::tls`]); operator tokens are verified once and cached
//! until they expire, so the per-call cost is a map lookup.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use rustls_pki_types::CertificateDer;

use crate::control::authz::oidc::OidcOperators;
use crate::control::authz::token::{Bearer, BootstrapGrant, Operator, Verifier};
pub use crate::mesh::identity::Workload;

/// Verified tokens kept; past this the cache starts over.
const TOKEN_CACHE: usize = 4096;

/// A client's verified certificate chain (leaf first), if it presented one.
#[derive(Debug, Clone, Default)]
pub struct PeerCerts(pub Option<Arc<Vec<CertificateDer<'static>>>>);

/// What tonic learns of a TLS connection (request extensions), read once
/// per connection.
#[derive(Debug, Clone)]
pub struct TlsConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// Its verified chain, if any.
    pub certs: PeerCerts,
    /// The workload its certificate names, if it presented one with a
    /// workload SPIFFE ID.
    pub workload: Option<Arc<Workload>>,
}

/// One call's caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No credential.
    Anonymous,
    /// A mesh workload (mTLS).
    Workload(Arc<Workload>),
    /// An operator (bearer token).
    Operator(Arc<Operator>),
    /// A bootstrap token sent as a bearer token.
    Bootstrap(Arc<BootstrapGrant>),
    /// `dev_insecure_control`: nobody is checked.
    Unchecked,
}

impl Caller {
    /// How refusals and logs name the caller.
    pub fn describe(&self) -> String {
        match self {
            Caller::Anonymous => "an anonymous caller".into(),
            Caller::Workload(w) => format!("workload {}", w.spiffe_id),
            Caller::Operator(o) => format!("operator {:?} (roles: {})", o.subject, o.roles.join(", ")),
            Caller::Bootstrap(b) => format!("a bootstrap token for {}", b.spiffe_id),
            Caller::Unchecked => "an unchecked caller (dev_insecure_control)".into(),
        }
    }

    /// True for an operator holding `role`.
    pub fn has_role(&self, role: &str) -> bool {
        matches!(self, Caller::Operator(o) if o.roles.contains(&role))
    }
}

/// A bearer token that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCredential(pub String);

/// Turns a call's credentials into a [`Caller`].
#[derive(Debug)]
pub struct Authenticator {
    verifier: Verifier,
    oidc: Option<OidcOperators>,
    tokens: Mutex<HashMap<String, (u64, Caller)>>,
}

impl Authenticator {
    /// Verifies control's own tokens with `verifier`, and operator tokens of
    /// an OIDC issuer with `oidc`, if configured.
    pub fn new(verifier: Verifier, oidc: Option<OidcOperators>) -> Authenticator {
        Authenticator { verifier, oidc, tokens: Mutex::default() }
    }

    /// The caller of one call: the bearer token if there is one (a bad one
    /// is refused, not ignored), else the connection's workload, else
    /// anonymous.
    pub fn caller(&self, headers: &HeaderMap, workload: Option<&Arc<Workload>>) -> Result<Caller, BadCredential> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Ok(workload.map(|w| Caller::Workload(w.clone())).unwrap_or(Caller::Anonymous));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| BadCredential("authorization: not \"Bearer <token>\"".into()))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        {
            let cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((exp, caller)) = cache.get(token)
                && now < *exp
            {
                return Ok(caller.clone());
            }
        }
        let caller = match (self.verifier.bearer(token), &self.oidc) {
            (Ok(Bearer::Operator(o)), _) => Caller::Operator(Arc::new(o)),
            (Ok(Bearer::Bootstrap(b)), _) => Caller::Bootstrap(Arc::new(b)),
            (Err(own), None) => return Err(BadCredential(format!("authorization: {own}"))),
            (Err(own), Some(oidc)) => match oidc.verify(token) {
                Ok(o) => Caller::Operator(Arc::new(o)),
                Err(e) => {
                    return Err(BadCredential(format!(
                        "authorization: not control's ({own}) nor the OIDC issuer's ({e})"
                    )));
                }
            },
        };
        let exp = match &caller {
            Caller::Operator(o) => o.exp,
            Caller::Bootstrap(b) => b.exp,
            _ => 0,
        };
        let mut cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= TOKEN_CACHE {
            cache.clear();
        }
        cache.insert(token.to_string(), (exp, caller.clone()));
        Ok(caller)
    }
}
