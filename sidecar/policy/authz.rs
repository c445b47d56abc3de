//! Service-to-service authorization: which mesh identities may call which
//! paths of this service. Pure: the caller's SPIFFE ID comes from the mTLS
//! handshake, the path is already normalised.

use crate::mesh::policy::Decision;
use crate::mesh::policy::authz::AuthzPolicy;
use crate::sidecar::policy::path;

/// A compiled [`AuthzPolicy`].
#[derive(Debug, Clone)]
pub struct Authz(AuthzPolicy);

/// The namespace in `spiffe://<td>/ns/<namespace>/sa/<service>`.
pub fn namespace_of(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    let mut parts = rest.split('/');
    parts.next()?;
    (parts.next()? == "ns").then(|| parts.next()).flatten()
}

fn identity_matches(pattern: &str, peer: &str) -> bool {
    match pattern.strip_suffix("/*") {
        _ if pattern == "*" => true,
        Some(prefix) => peer.starts_with(prefix) && peer.as_bytes().get(prefix.len()) == Some(&b'/'),
        None => pattern == peer,
    }
}

impl Authz {
    /// Compiles a validated policy.
    pub fn new(p: AuthzPolicy) -> Authz {
        Authz(p)
    }

    /// Ok, or why `peer` may not call `method path`.
    pub fn check(&self, peer: Option<&str>, method: &str, path: &str) -> Result<(), String> {
        let who = peer.unwrap_or("(no identity)");
        let decision = peer
            .and_then(|peer| {
                self.0.rules.iter().find(|r| {
                    r.from.iter().any(|f| identity_matches(&f.0, peer))
                        && (r.methods.is_empty() || r.methods.iter().any(|m| m.0 == method))
                        && (r.paths.is_empty() || r.paths.iter().any(|p| path::matches(&p.0, path)))
                })
            })
            .map(|r| r.action)
            .or_else(|| peer.and_then(namespace_of).and_then(|ns| self.0.namespaces.get(ns).copied()))
            .unwrap_or(self.0.default);
        match decision {
            Decision::Allow => Ok(()),
            Decision::Deny => Err(format!("{who} may not call {method} {path}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authz(toml: &str) -> Authz {
        let doc = crate::mesh::policy::parse_toml(toml, "t", "orders").unwrap();
        Authz::new(doc.authz.unwrap())
    }

    const CLIENT: &str = "spiffe://redfire.local/ns/default/sa/client";
    const OPS: &str = "spiffe://redfire.local/ns/ops/sa/tool";
    const OTHER: &str = "spiffe://redfire.local/ns/other/sa/x";

    #[test]
    fn rules_then_namespace_defaults_then_the_default() {
        let a = authz(
            r#"
[authz]
default = "deny"
namespaces = { ops = "allow" }
[[authz.rules]]
from = ["spiffe://redfire.local/ns/ops/sa/tool"]
paths = ["/admin/*"]
action = "deny"
[[authz.rules]]
from = ["spiffe://redfire.local/ns/default/sa/client"]
paths = ["/orders.v1.Orders/*"]
methods = ["POST"]
"#,
        );
        assert!(a.check(Some(CLIENT), "POST", "/orders.v1.Orders/Place").is_ok());
        assert!(a.check(Some(CLIENT), "GET", "/orders.v1.Orders/Place").is_err());
        assert!(a.check(Some(CLIENT), "POST", "/other").is_err());
        assert!(a.check(Some(OPS), "GET", "/anything").is_ok(), "namespace default");
        assert!(a.check(Some(OPS), "GET", "/admin/x").is_err(), "explicit deny first");
        assert!(a.check(Some(OTHER), "GET", "/x").unwrap_err().contains(OTHER));
        assert!(a.check(None, "GET", "/x").is_err());
    }

    #[test]
    fn namespace_wildcards_do_not_match_lookalike_namespaces() {
        let a = authz("[[authz.rules]]\nfrom = [\"spiffe://redfire.local/ns/ops/*\"]\n");
        assert!(a.check(Some(OPS), "GET", "/").is_ok());
        assert!(a.check(Some("spiffe://redfire.local/ns/opsx/sa/tool"), "GET", "/").is_err());
        assert_eq!(namespace_of(OPS), Some("ops"));
        assert_eq!(namespace_of("spiffe://td/sa/x"), None);
    }
}
