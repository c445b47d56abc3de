//! The event bus ACL in force: the `[[event_acl]]` rules of the
//! `redfire-control` policy document, kept in step with the policy store by
//! `crate::control::policy::event_acl`, so a change written on one replica
//! (Policy.Set by a `policy-admin`, or a policy file) is enforced by every
//! replica on the same Redis within one store poll (250 ms). No document: no
//! rule, every topic refused to workloads (default deny); `events-admin`
//! operators pass regardless.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::mesh::policy::topics::TopicRule;

/// The rules at one version of the document.
#[derive(Debug, Default)]
pub struct Acl {
    /// In order; the first matching a topic decides.
    pub rules: Vec<TopicRule>,
    /// The document's version (0: none).
    pub version: u64,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct EventAcl {
    current: ArcSwap<Acl>,
}

impl EventAcl {
    /// The rules in force.
    pub fn current(&self) -> Arc<Acl> {
        self.current.load_full()
    }

    /// Puts `acl` in force.
    pub fn set(&self, acl: Acl) {
        tracing::info!(version = acl.version, rules = acl.rules.len(), "event bus ACL in force");
        self.current.store(Arc::new(acl));
    }

    /// The version in force (0: none).
    pub fn version(&self) -> u64 {
        self.current.load().version
    }
}
