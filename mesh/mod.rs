//! The shared language of the mesh: what control and the sidecar agree on,
//! owned by neither. Control validates documents with it and serves them;
//! the sidecar compiles the same validated documents into its runtime.
//! Nothing here imports `control` or `sidecar`.
//!
//! - [`policy`] — the policy language: a service's policy document (authz,
//!   JWT, RBAC, WebSocket topics), gateway routes and rate-limit rules, each
//!   with its validation.

pub mod policy;
