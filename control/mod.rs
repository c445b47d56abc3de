//! The control service (`redfire-control`): a small stateless service over a
//! store (in-memory or Redis) that serves the service registry, the mesh CA,
//! the event bus and policy distribution. It stands on the shared language in
//! `crate::mesh` (it validates documents with it) and never imports
//! `crate::sidecar`.
//!
//! - [`server`] assembles the gRPC API and the admin port ([`admin`],
//!   [`metrics`]) from [`config`];
//! - one folder per API: [`registry`], [`identity`], [`events`], [`policy`],
//!   each from its gRPC boundary (`service.rs`) down to its stores.
//!
//! See ARCHITECTURE.md for the flow.

pub mod admin;
pub mod authz;
pub mod config;
pub mod events;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod redis;
pub mod registry;
pub mod server;
pub mod tls;
