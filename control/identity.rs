//! The mesh certificate authority (`redfire.identity.v1`).
//!
//! A sidecar sends a CSR plus a credential and gets a short-lived certificate
//! for `spiffe://<trust-domain>/ns/<namespace>/sa/<service>`; its private key
//! never leaves it. The first credential is a bootstrap token scoped to one
//! service (`redfire-control token create`, `crate::control::authz::token`); renewals present the current
//! certificate, and the CSR's signature proves the caller holds its key.
//!
//! - [`ca`] — the root: loaded from files, or generated once and persisted
//!   (a directory for the memory store, Redis for replicas); signs leaves.
//! - [`redeem`] — which keys each bootstrap token certified (one by default).
//! - [`service`] — the gRPC boundary.

pub mod ca;
pub mod redeem;
pub mod service;
