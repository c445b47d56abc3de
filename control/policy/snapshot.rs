//! A policy in force as the store holds it and Watch streams send it: one
//! service's validated document at one version. Both store backends produce
//! these ([`super::store`] in memory, [`super::redis`] from Redis).

use std::collections::BTreeMap;
use std::sync::Arc;

/// One service's policy at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The service.
    pub service: String,
    /// Version (never reused for a service; 0 = no policy).
    pub version: u64,
    /// The validated document as JSON.
    pub document_json: String,
    /// `file:<path>` or `api`.
    pub source: String,
}

/// Every service's policy.
pub type Policies = Arc<BTreeMap<String, Arc<Snapshot>>>;

/// A store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("policy store unavailable: {0}")]
pub struct StoreUnavailable(pub String);
