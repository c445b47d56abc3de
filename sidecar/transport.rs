//! How sidecars talk to each other: TLS 1.3 with mutual authentication by
//! SPIFFE workload certificates, ALPN `h2` ([`tls`], presenting the
//! [`credentials`] control's CA issued), and the channel to control
//! ([`control`]).

pub mod control;
pub mod credentials;
pub mod tls;
