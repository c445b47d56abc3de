//! What every RedFire process does the same way, control and sidecar alike:
//! - [`settings`] — config errors naming the key, and the common parsers;
//! - [`telemetry`] — logs (human or JSON) and OTLP trace export;
//! - [`shutdown`] — the one drain primitive and the signal that starts it;
//! - [`admin_http`] — the accept loop of the admin ports;
//! - [`control_endpoint`] — a client endpoint for control's gRPC API (TLS
//!   verified against the mesh trust bundle).

pub mod admin_http;
pub mod control_endpoint;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
