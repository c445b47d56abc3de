//! Policy: per-service end-user authentication (JWT), RBAC,
//! service-to-service authorization and rate-limit settings.
//!
//! Control loads policies from TOML files ([`files`]) or takes them through
//! the `redfire.policy.v1` API ([`service`]), validates them (`crate::mesh::policy`) and
//! keeps them in a [`store`] (memory, or Redis shared by replicas). Proxies
//! Watch their service's policy and enforce it (`crate::sidecar::policy`);
//! [`event_acl`] keeps control's own event bus ACL in step with the store.

pub mod event_acl;
pub mod files;
pub mod redis;
pub mod service;
pub mod snapshot;
pub mod store;
