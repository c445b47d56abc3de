//! What the inbound, outbound and gateway paths share:
//! - [`body`] — body adapters (empty DATA frames dropped, sizes kept);
//! - [`errors`] — the one place a proxy failure becomes an HTTP/gRPC answer;
//! - [`upgrade`] — HTTP/1.1 `Upgrade` carried over one HTTP/2 stream between
//!   sidecars (the outbound half and the inbound half);
//! - [`trace`] — W3C trace context: one span per hop.

pub mod body;
pub mod errors;
pub mod trace;
pub mod upgrade;
