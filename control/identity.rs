//! The mesh certificate authority (`redfire.identity.v1`).
//!
//! A sidecar sends a CSR plus a credential and gets a short-lived certificate
//! for `spiffe://<trust-domain>/ns/<namespace>/sa/<service>`; its private key
//! never leaves it. The first credential is a bootstrap token scoped to one
//! service (`redfire-control token create`); renewals present the current
//! certificate, and the CSR's signature proves the caller holds its key.
//!
//! - [`ca`] — the root: loaded from files, or generated once and persisted
//!   (a directory for the memory store, Redis for replicas); signs leaves.
//! - [`token`] — bootstrap tokens: JWTs signed by the root key.
//! - [`service`] — the gRPC boundary.

pub mod ca;
pub mod service;
pub mod token;
