//! The workload's certificate and key as the TLS layers use them: what
//! `crate::sidecar::control_client::identity` obtains from control's CA and
//! publishes on a `watch` channel, and what `tls.rs` and the outbound pool
//! present (rotation is a pointer swap, never a lock on the hot path).

use std::sync::Arc;
use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;

/// A certificate with its key, ready for rustls.
#[derive(Debug)]
pub struct Credentials {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The chain as PEM (renewal presents it).
    pub chain_pem: String,
    /// The sidecar's private key (PKCS#8 DER).
    pub key: PrivatePkcs8KeyDer<'static>,
    /// Roots a peer's certificate may chain to.
    pub roots: Vec<CertificateDer<'static>>,
    /// Our identity.
    pub spiffe_id: String,
    /// Validity start (the CA backdates it a few minutes for clock skew).
    pub not_before: SystemTime,
    /// Validity end.
    pub not_after: SystemTime,
    /// When this sidecar received it.
    pub received: SystemTime,
}

impl Credentials {
    /// When to renew: `renew_at` of the way from receipt to expiry (not from
    /// the backdated `not_before`, which would pull renewal of a short-lived
    /// certificate forward to "now").
    pub fn renew_time(&self, renew_at: f64) -> SystemTime {
        let life = self.not_after.duration_since(self.received).unwrap_or_default();
        self.received + life.mul_f64(renew_at.clamp(0.0, 1.0))
    }
}

/// The receiving side: the current credentials, `None` before the first
/// certificate and after the current one expired without renewal.
pub type CredentialsRx = watch::Receiver<Option<Arc<Credentials>>>;
