//! The event bus (`redfire.events.v1`): topics with consumer groups,
//! at-least-once delivery under leases, redelivery with delivery counts, dead
//! letters, replay, and per-aggregate append with an expected version.
//!
//! - `crate::mesh::events` — positions, the envelope, names, errors (the
//!   wire model, shared with the gateway's hub).
//! - [`store`] — the [`store::EventStore`] trait, implemented by
//!   [`memory`] (embedded default) and [`redis`] (Redis Streams + Lua).
//! - [`subscription`] — one subscriber's delivery loop (bounded in-flight),
//!   used by the gRPC service and by in-process code.
//! - [`service`] — the gRPC boundary.
//! - `crate::control::metrics::events` — per topic/group counters, lag,
//!   end-to-end latency.
//! - [`client`] — a small Rust client of the gRPC API.

pub mod client;
pub mod memory;
pub mod redis;
pub mod service;
pub mod store;
pub mod subscription;
