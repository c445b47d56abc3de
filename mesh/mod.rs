//! The shared language of the mesh: what control and the sidecar agree on,
//! owned by neither. Control validates documents with it and serves them;
//! the sidecar compiles the same validated documents into its runtime.
//! Nothing here imports `control` or `sidecar`.
//!
//! - [`policy`] — the policy language: a service's policy document (authz,
//!   JWT, RBAC, WebSocket topics), gateway routes and rate-limit rules, each
//!   with its validation.
//! - [`registry`] — a service instance as registered and watched, health,
//!   and the rules for service names.
//! - [`events`] — the event bus's wire model: positions, the envelope,
//!   topic and group names, errors and their gRPC codes.
//! - [`identity`] — workload identities: the SPIFFE ID of a service.
//! - [`jwks`] — JWKS key sets fetched from a URL or through OIDC discovery
//!   (end-user JWTs at the sidecar, operator tokens at control).
//! - [`process`] — what every binary shares: settings parsing, telemetry,
//!   the drain primitive and the admin HTTP loop.

pub mod events;
pub mod identity;
pub mod jwks;
pub mod policy;
pub mod process;
pub mod registry;
