//! Every gRPC method of control and who may call it: the table the
//! authorization layer enforces. A method not in it is refused (default
//! deny), so a new API is closed until it gets a rule here.

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone, even without a credential: health, reflection, the trust
    /// bundle, and `IssueCertificate` (whose credential, a bootstrap token or
    /// the current certificate, is in the request and checked by the
    /// identity service; the caller may only get its own identity).
    Public,
    /// Any workload or operator.
    Authenticated,
    /// A workload of the service the request names (checked by the service
    /// once it knows the name), or an operator holding `operator` (`None`:
    /// any operator).
    OwnService {
        /// The operator role that may act for any service.
        operator: Option<&'static str>,
    },
    /// An operator holding this role.
    Role(&'static str),
    /// Callers the event bus ACL grants the topics of the request (checked by
    /// the events service once it knows them); `events-admin` operators may
    /// use every topic.
    Topics(crate::mesh::policy::topics::Action),
    /// Managing a consumer group: `events-admin` operators, or a workload
    /// for a group of its own (named after its service: `<service>` or
    /// `<service>.…`) on a topic the ACL lets it subscribe to.
    OwnGroup,
}

/// One method's rule.
#[derive(Debug, PartialEq, Eq)]
pub struct MethodRule {
    /// gRPC path, `/package.Service/Method`.
    pub path: &'static str,
    /// `registry`, `identity`, `events`, `policy`, `health`, `reflection`.
    pub api: &'static str,
    /// The method name.
    pub method: &'static str,
    /// Who may call it.
    pub rule: Rule,
}

use crate::mesh::policy::topics::Action::{Publish, Subscribe};
use Rule::*;

const fn m(path: &'static str, api: &'static str, method: &'static str, rule: Rule) -> MethodRule {
    MethodRule { path, api, method, rule }
}

/// The table.
pub const RULES: &[MethodRule] = &[
    m("/grpc.health.v1.Health/Check", "health", "Check", Public),
    m("/grpc.health.v1.Health/Watch", "health", "Watch", Public),
    m("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "reflection", "ServerReflectionInfo", Public),
    m("/redfire.identity.v1.Identity/IssueCertificate", "identity", "IssueCertificate", Public),
    m("/redfire.identity.v1.Identity/GetTrustBundle", "identity", "GetTrustBundle", Public),
    m(
        "/redfire.registry.v1.Registry/Register",
        "registry",
        "Register",
        OwnService { operator: Some("registry-admin") },
    ),
    m(
        "/redfire.registry.v1.Registry/KeepAlive",
        "registry",
        "KeepAlive",
        OwnService { operator: Some("registry-admin") },
    ),
    m(
        "/redfire.registry.v1.Registry/Deregister",
        "registry",
        "Deregister",
        OwnService { operator: Some("registry-admin") },
    ),
    m("/redfire.registry.v1.Registry/GetService", "registry", "GetService", Authenticated),
    m("/redfire.registry.v1.Registry/ListServices", "registry", "ListServices", Authenticated),
    m("/redfire.registry.v1.Registry/Watch", "registry", "Watch", Authenticated),
    m("/redfire.policy.v1.Policy/Watch", "policy", "Watch", OwnService { operator: None }),
    m("/redfire.policy.v1.Policy/Get", "policy", "Get", OwnService { operator: None }),
    m("/redfire.policy.v1.Policy/Validate", "policy", "Validate", Authenticated),
    m("/redfire.policy.v1.Policy/Set", "policy", "Set", Role("policy-admin")),
    m("/redfire.policy.v1.Policy/Delete", "policy", "Delete", Role("policy-admin")),
    m("/redfire.events.v1.Events/Publish", "events", "Publish", Topics(Publish)),
    m("/redfire.events.v1.Events/AppendToAggregate", "events", "AppendToAggregate", Topics(Publish)),
    m("/redfire.events.v1.Events/Subscribe", "events", "Subscribe", Topics(Subscribe)),
    m("/redfire.events.v1.Events/Replay", "events", "Replay", Topics(Subscribe)),
    m("/redfire.events.v1.Events/ReadAggregate", "events", "ReadAggregate", Topics(Subscribe)),
    m("/redfire.events.v1.Events/DescribeTopic", "events", "DescribeTopic", Topics(Subscribe)),
    m("/redfire.events.v1.Events/CreateTopic", "events", "CreateTopic", Role("events-admin")),
    m("/redfire.events.v1.Events/ResetGroup", "events", "ResetGroup", OwnGroup),
    m("/redfire.events.v1.Events/DeleteGroup", "events", "DeleteGroup", OwnGroup),
];

/// The rule of `path`, if it has one.
pub fn lookup(path: &str) -> Option<&'static MethodRule> {
    RULES.iter().find(|r| r.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method of every service control serves has a rule (a method
    /// added to a .proto without one would be refused by default, and this
    /// test names it).
    #[test]
    fn every_served_method_has_a_rule() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut missing = Vec::new();
        for file in &set.file {
            let package = file.package();
            if !package.starts_with("redfire.") || package.starts_with("redfire.example") {
                continue;
            }
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{package}.{}/{}", service.name(), method.name());
                    if lookup(&path).is_none() {
                        missing.push(path);
                    }
                }
            }
        }
        assert!(missing.is_empty(), "methods without an authorization rule: {missing:?}");
        let mut paths: Vec<_> = RULES.iter().map(|r| r.path).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), RULES.len(), "a method listed twice");
    }
}
