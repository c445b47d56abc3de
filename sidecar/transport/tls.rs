//! mTLS between sidecars.
//!
//! - Server side (inbound): a client certificate is required and must chain
//!   to the trust bundle; the caller's SPIFFE ID is read from it afterwards
//!   ([`peer_spiffe_id`]) for service authorization.
//! - Client side (outbound): the peer's certificate must chain to the trust
//!   bundle *and* carry the SPIFFE ID of the service the client meant to
//!   reach. Mesh leaves have only a URI SAN, so rustls' DNS/IP name check does
//!   not apply; [`SpiffeVerifier`] does the chain check with webpki and then
//!   compares the URI SAN.
//!
//! Only TLS 1.3, only the aws-lc-rs provider (DESIGN.md). Configs are built
//! from one [`Credentials`] snapshot; on rotation the caller builds new ones
//! (new connections use them, open connections keep theirs).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::sidecar::transport::credentials::Credentials;

/// ALPN protocol between sidecars.
pub const ALPN_H2: &[u8] = b"h2";

/// A TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("mesh tls: {0}")]
pub struct TlsError(String);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

fn roots(creds: &Credentials) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for r in &creds.roots {
        store.add(r.clone()).map_err(|e| TlsError(format!("trust bundle: {e}")))?;
    }
    Ok(Arc::new(store))
}

fn key(creds: &Credentials) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(creds.key.clone_key())
}

/// The inbound (server) config: client certificates required.
pub fn server_config(creds: &Credentials) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(creds)?, provider.clone())
        .build()
        .map_err(|e| TlsError(format!("client verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), key(creds))
        .map_err(|e| TlsError(format!("certificate: {e}")))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The outbound (client) config for reaching a peer whose SPIFFE ID must be
/// `expected`.
pub fn client_config(creds: &Credentials, expected: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(SpiffeVerifier {
        roots: roots(creds)?,
        algorithms: provider.signature_verification_algorithms,
        expected: expected.to_string(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(creds.chain.clone(), key(creds))
        .map_err(|e| TlsError(format!("certificate: {e}")))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The name rustls is given when dialing a peer; [`SpiffeVerifier`] checks
/// the SPIFFE ID instead, so its value only matters for SNI-less logging.
pub fn peer_server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
}

pub use crate::mesh::identity::peer_spiffe_id;

/// Verifies a peer sidecar: chain to the bundle, then the expected SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    expected: String,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        match peer_spiffe_id(std::slice::from_ref(end_entity)) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            other => Err(rustls::Error::General(format!(
                "peer identity {} is not the expected {}",
                other.as_deref().unwrap_or("(none)"),
                self.expected
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
