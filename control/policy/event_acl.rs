//! Keeps authorization's event bus ACL ([`EventAcl`]) in step with the
//! policy store: the `[[event_acl]]` of the `redfire-control` document,
//! parsed once per version.

use std::sync::Arc;

use super::snapshot::Policies;
use super::store::PolicyStore;
use crate::control::authz::event_acl::{Acl, EventAcl};
use crate::mesh::policy::{CONTROL_POLICY, PolicyDoc};

/// Installs the current rules into `acl`, then every change, until the
/// store is dropped (abort the task to stop).
pub fn follow(store: &Arc<PolicyStore>, acl: Arc<EventAcl>) -> tokio::task::JoinHandle<()> {
    let mut rx = store.subscribe();
    install(&acl, &rx.borrow_and_update());
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let policies = rx.borrow_and_update().clone();
            install(&acl, &policies);
        }
    })
}

fn install(acl: &EventAcl, policies: &Policies) {
    let next = match policies.get(CONTROL_POLICY) {
        None if acl.version() == 0 => return,
        None => Acl::default(),
        Some(snap) if snap.version == acl.version() => return,
        Some(snap) => match serde_json::from_str::<PolicyDoc>(&snap.document_json) {
            Ok(doc) => Acl { rules: doc.event_acl, version: snap.version },
            Err(e) => {
                // Stored documents were validated on the way in.
                tracing::error!(error = %e, version = snap.version, "event_acl: stored document unreadable; keeping the previous rules");
                return;
            }
        },
    };
    acl.set(next);
}
