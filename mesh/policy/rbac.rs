//! `[rbac]`: roles (from a token claim or a Redis set per user), the
//! permissions they grant and the rules that require them. Enforced by
//! `crate::sidecar::policy::rbac`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Decision, Dur, MethodName, PathPattern};

/// Roles, permissions and the rules that require them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RbacPolicy {
    /// The claim holding the user's roles (array or space-separated string) [default: roles].
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// When no rule matches a request [default: deny].
    #[serde(default)]
    pub default: Decision,
    /// Match paths ignoring ASCII case (for apps that route that way).
    #[serde(default)]
    pub case_insensitive: bool,
    /// Role → permissions (`*` is every permission).
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// Rules in order; the first that matches names the permission needed.
    #[serde(default)]
    pub rules: Vec<RbacRule>,
    /// Roles also looked up in Redis per user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RbacRedis>,
}

fn default_roles_claim() -> String {
    "roles".into()
}

/// One RBAC rule: exactly one of `path` or `grpc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawRbacRule")]
pub struct RbacRule {
    /// HTTP methods; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<MethodName>,
    /// A normalised path pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathPattern>,
    /// A gRPC method: `package.Service/Method` or `package.Service/*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    /// The permission required.
    pub permission: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRbacRule {
    #[serde(default)]
    methods: Vec<MethodName>,
    path: Option<PathPattern>,
    grpc: Option<String>,
    permission: String,
}

impl TryFrom<RawRbacRule> for RbacRule {
    type Error = String;
    fn try_from(r: RawRbacRule) -> Result<Self, String> {
        if r.permission.is_empty() {
            return Err("permission: must not be empty".into());
        }
        match (&r.path, &r.grpc) {
            (Some(_), None) => {}
            (None, Some(g)) => {
                let ok = g.split_once('/').is_some_and(|(svc, m)| {
                    svc.contains('.')
                        && !svc.starts_with('.')
                        && svc.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
                        && !m.is_empty()
                        && (m == "*" || m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                });
                if !ok {
                    return Err(format!("grpc: {g:?} is not package.Service/Method or package.Service/*"));
                }
            }
            _ => return Err("a rule has exactly one of path, grpc".into()),
        }
        Ok(RbacRule { methods: r.methods, path: r.path, grpc: r.grpc, permission: r.permission })
    }
}

/// Per-user roles kept in Redis: a set at `key` with `{sub}` replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawRbacRedis")]
pub struct RbacRedis {
    /// `redis://` URL.
    pub url: String,
    /// Key template containing `{sub}`, e.g. `roles:{sub}`.
    pub key: String,
    /// How long a lookup is cached [default: 30s].
    pub cache_ttl: Dur,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRbacRedis {
    url: String,
    key: String,
    cache_ttl: Option<Dur>,
}

impl TryFrom<RawRbacRedis> for RbacRedis {
    type Error = String;
    fn try_from(r: RawRbacRedis) -> Result<Self, String> {
        if redis::Client::open(r.url.as_str()).is_err() {
            return Err(format!("url: {:?} is not a redis:// URL", r.url));
        }
        if !r.key.contains("{sub}") {
            return Err(format!("key: {:?} must contain {{sub}}", r.key));
        }
        Ok(RbacRedis { url: r.url, key: r.key, cache_ttl: r.cache_ttl.unwrap_or(Dur(Duration::from_secs(30))) })
    }
}
