//! `[authz]`: service-to-service authorization by the caller's mesh
//! identity (SPIFFE ID), path and method. Enforced by the callee's inbound
//! (`crate::sidecar::policy::authz`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Decision, MethodName, PathPattern};

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
