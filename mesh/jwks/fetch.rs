//! A small, strict HTTP(S) GET for JWKS and OIDC discovery documents: one
//! request per connection, no redirects, a size cap and an overall timeout.
//! HTTPS verifies against the system trust store (`/etc/ssl/certs`, or the
//! file named by `SSL_CERT_FILE`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

/// Largest document accepted.
pub const MAX_BODY: usize = 1024 * 1024;
/// Longest a fetch may take, connect to last byte.
pub const TIMEOUT: Duration = Duration::from_secs(5);

fn tls() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let file = std::env::var("SSL_CERT_FILE").unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into());
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(&file).map_err(|e| format!("trust store {file}: {e}"))?.flatten() {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(format!("trust store {file}: no certificates"));
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// GETs `url`; only a 200 with a body under [`MAX_BODY`] is a success.
pub async fn get(url: &str) -> Result<Bytes, String> {
    tokio::time::timeout(TIMEOUT, get_inner(url))
        .await
        .map_err(|_| format!("GET {url}: timed out after {TIMEOUT:?}"))?
}

async fn get_inner(url: &str) -> Result<Bytes, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("{url:?}: no host"))?.to_string();
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{url:?}: only http and https")),
    };
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("GET {url}: connect: {e}"))?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let req = Request::get(path)
        .header(http::header::HOST, uri.authority().map(|a| a.as_str()).unwrap_or(&host))
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = if https {
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string()).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(tls()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("GET {url}: TLS: {e}"))?;
        send(TokioIo::new(stream), req).await
    } else {
        send(TokioIo::new(tcp), req).await
    }
    .map_err(|e| format!("GET {url}: {e}"))?;
    if resp.status() != StatusCode::OK {
        return Err(format!("GET {url}: HTTP {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY).collect().await.map_err(|e| format!("GET {url}: body: {e}"))?;
    Ok(body.to_bytes())
}

async fn send<IO>(io: IO, req: Request<Empty<Bytes>>) -> Result<http::Response<hyper::body::Incoming>, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}
