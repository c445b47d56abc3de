//! The control service: a small stateless service over a store (in-memory or
//! Redis) that serves the service registry, the mesh CA and the event bus.
//! See ARCHITECTURE.md for the flow.

pub mod admin;
pub mod config;
pub mod events;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod registry;
pub mod server;
