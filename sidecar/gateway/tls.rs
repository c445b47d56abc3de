//! TLS on the ingress: the certificate chain and key from PEM files, ALPN
//! `h2` and `http/1.1`, reloaded when either file changes. A reload swaps
//! the config new handshakes use; open connections keep theirs, so none
//! is dropped. A bad new pair is logged and the current one stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::metrics::Reloads;

/// Builds a server config from the two files.
pub fn load(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("gateway_tls_cert {}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("gateway_tls_cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("gateway_tls_cert {}: no certificate in the file", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("gateway_tls_key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("gateway TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("gateway_tls_key: does not match the certificate or is unusable: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Loads the pair now (an error fails the start) and keeps the config in
/// step with the files (polled every [`super::ROUTES_POLL`]) until the
/// returned task is aborted; a bad new pair is logged, counted as rejected
/// in `reloads`, and the current one stays.
pub fn watch(
    cert: PathBuf,
    key: PathBuf,
    reloads: Reloads,
) -> Result<(Arc<ArcSwap<ServerConfig>>, tokio::task::JoinHandle<()>), String> {
    super::watch_files("TLS certificate", vec![cert, key], reloads, |paths, _| load(&paths[0], &paths[1]))
}
