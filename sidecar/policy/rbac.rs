//! RBAC: roles → permissions, and rules (method + normalised path, or a gRPC
//! `package.Service/Method`) naming the permission a request needs. The
//! first matching rule decides; no match falls to the policy's default.

use std::collections::{HashMap, HashSet};

use crate::mesh::policy::Decision;
use crate::mesh::policy::rbac::RbacPolicy;
use crate::sidecar::policy::path;

/// A compiled [`RbacPolicy`].
#[derive(Debug, Clone)]
pub struct Rbac {
    roles: HashMap<String, HashSet<String>>,
    rules: Vec<Rule>,
    default: Decision,
    case_insensitive: bool,
    /// The claim with the user's roles.
    pub roles_claim: String,
}

#[derive(Debug, Clone)]
struct Rule {
    methods: Vec<String>,
    pattern: String,
    permission: String,
}

impl Rbac {
    /// Compiles a validated policy.
    pub fn new(p: &RbacPolicy) -> Rbac {
        let ci = |s: &str| if p.case_insensitive { s.to_ascii_lowercase() } else { s.to_string() };
        let rules = p
            .rules
            .iter()
            .map(|r| Rule {
                methods: r.methods.iter().map(|m| m.0.clone()).collect(),
                pattern: match (&r.path, &r.grpc) {
                    (Some(p), _) => ci(&p.0),
                    (None, Some(g)) => ci(&format!("/{g}")),
                    (None, None) => "*".into(),
                },
                permission: r.permission.clone(),
            })
            .collect();
        Rbac {
            roles: p.roles.iter().map(|(r, ps)| (r.clone(), ps.iter().cloned().collect())).collect(),
            rules,
            default: p.default,
            case_insensitive: p.case_insensitive,
            roles_claim: p.roles_claim.clone(),
        }
    }

    /// Ok, or why a user with `roles` may not call `method path`.
    pub fn check<'a>(
        &self,
        method: &str,
        path: &str,
        roles: impl Iterator<Item = &'a str> + Clone,
    ) -> Result<(), String> {
        let path = if self.case_insensitive { path.to_ascii_lowercase() } else { path.to_string() };
        let rule = self.rules.iter().find(|r| {
            (r.methods.is_empty() || r.methods.iter().any(|m| m == method)) && path::matches(&r.pattern, &path)
        });
        let Some(rule) = rule else {
            return match self.default {
                Decision::Allow => Ok(()),
                Decision::Deny => Err(format!("no RBAC rule allows {method} {path}")),
            };
        };
        let granted = roles.clone().any(|role| {
            self.roles.get(role).is_some_and(|perms| perms.contains("*") || perms.contains(&rule.permission))
        });
        // Permission `*` on a rule: any authenticated user.
        if granted || rule.permission == "*" {
            Ok(())
        } else {
            Err(format!("permission {:?} required", rule.permission))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rbac(extra: &str) -> Rbac {
        let toml = format!(
            r#"
[[jwt.issuers]]
issuer = "i"
audiences = ["a"]
algorithms = ["HS256"]
keys = [{{ secret = "0123456789abcdef0123456789abcdef" }}]
[rbac]
{extra}
roles = {{ admin = ["*"], trader = ["orders.write", "orders.read"], viewer = ["orders.read"] }}
[[rbac.rules]]
path = "/admin/*"
permission = "admin"
[[rbac.rules]]
grpc = "orders.v1.Orders/Place"
permission = "orders.write"
[[rbac.rules]]
methods = ["GET"]
path = "/orders/*"
permission = "orders.read"
"#
        );
        let doc = crate::mesh::policy::parse_toml(&toml, "t", "orders").unwrap();
        Rbac::new(doc.rbac.as_ref().unwrap())
    }

    #[test]
    fn first_matching_rule_names_the_permission() {
        let r = rbac("");
        let roles = |v: &'static [&'static str]| v.iter().copied();
        assert!(r.check("POST", "/orders.v1.Orders/Place", roles(&["trader"])).is_ok());
        assert!(r.check("POST", "/orders.v1.Orders/Place", roles(&["viewer"])).unwrap_err().contains("orders.write"));
        assert!(r.check("GET", "/orders/1", roles(&["viewer"])).is_ok());
        assert!(r.check("DELETE", "/orders/1", roles(&["admin"])).is_err(), "no rule: default deny");
        assert!(r.check("GET", "/admin/users", roles(&["admin"])).is_ok());
        assert!(r.check("GET", "/admin/users", roles(&["trader"])).is_err());
        assert!(r.check("GET", "/ADMIN/users", roles(&["trader"])).is_err(), "case variant: no rule, default deny");
    }

    #[test]
    fn case_insensitive_mode_matches_case_variants() {
        let r = rbac("case_insensitive = true\ndefault = \"allow\"");
        assert!(r.check("GET", "/ADMIN/users", ["trader"].into_iter()).is_err());
        assert!(r.check("GET", "/Admin/users", ["admin"].into_iter()).is_ok());
        assert!(r.check("GET", "/elsewhere", ["viewer"].into_iter()).is_ok(), "default allow");
    }
}
