//! How sidecars talk to each other: TLS 1.3 with mutual authentication by
//! SPIFFE workload certificates, ALPN `h2`.

pub mod tls;
