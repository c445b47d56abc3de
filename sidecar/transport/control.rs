//! The sidecar's connection to control: where control is and which roots its
//! certificate must chain to ([`ControlTarget`]), and the channels the
//! sidecar's clients of control use (one shared by discovery, policy and the
//! gateway hub's event streams; one with a call timeout for registration),
//! which present the sidecar's workload certificate: control authorizes
//! those calls by it. Each new connection
//! takes the certificate current at that moment (and waits for the first
//! one), so rotation needs nothing more. Control's gRPC API is TLS by
//! default; plaintext (`http://`) needs `dev_insecure_control` and is for
//! local experiments only (control checks nobody then).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};

use crate::mesh::process::control_endpoint;
use crate::sidecar::transport::credentials::CredentialsRx;

/// Where control is and how to trust it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlTarget {
    /// `https://host:port` (or `http://host:port` with `dev_insecure_control`).
    pub url: String,
    /// The mesh trust bundle (PEM) control's certificate must chain to;
    /// required for `https://`.
    pub ca_pem: Option<String>,
}

impl ControlTarget {
    /// A target, checked: `https://` needs the trust bundle.
    pub fn new(url: impl Into<String>, ca_pem: Option<String>) -> Result<ControlTarget, String> {
        let t = ControlTarget { url: url.into(), ca_pem };
        t.endpoint()?;
        Ok(t)
    }

    /// True when the connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("https://")
    }

    /// An endpoint for this target: for `https://`, TLS verified against the
    /// trust bundle, the server name being the URL's host (a DNS name or IP
    /// in control's certificate).
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        control_endpoint::endpoint(&self.url, self.ca_pem.as_deref())
    }
}

/// A channel to control, connected lazily: 2 s to connect, no Nagle delay,
/// HTTP/2 keep-alive so a dead control is noticed within ~15 s, and
/// `timeout` on each call's response headers if given. Over TLS it presents
/// the workload certificate in `creds` (a connection is not attempted before
/// the first one exists).
pub fn channel(target: &ControlTarget, creds: &CredentialsRx, timeout: Option<Duration>) -> Result<Channel, String> {
    let tune = |ep: Endpoint| {
        let ep = ep
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        match timeout {
            Some(t) => ep.timeout(t),
            None => ep,
        }
    };
    if !target.is_tls() {
        return Ok(tune(target.endpoint()?).connect_lazy());
    }
    let https = Endpoint::from_shared(target.url.clone()).map_err(|e| format!("control_addr: {e}"))?;
    let uri = https.uri().clone();
    let host = control_endpoint::server_name(&uri).to_string();
    let port = uri.port_u16().unwrap_or(443);
    let server_name = ServerName::try_from(host.clone()).map_err(|e| format!("control_addr: {host}: {e}"))?;
    let mut roots = RootCertStore::empty();
    let pem = target.ca_pem.as_deref().ok_or("control_ca_file: needed to verify an https:// control_addr")?;
    for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(der.map_err(|e| format!("control_ca_file: {e}"))?).map_err(|e| format!("control_ca_file: {e}"))?;
    }
    let connector = Connector {
        addr: format!("{}:{port}", if host.contains(':') { format!("[{host}]") } else { host.clone() }),
        server_name,
        roots: Arc::new(roots),
        creds: creds.clone(),
    };
    // The TLS is the connector's, so tonic is given the plain URL to dial
    // and keeps `https` as the requests' scheme.
    let dial = Endpoint::from_shared(target.url.replacen("https://", "http://", 1))
        .map_err(|e| format!("control_addr: {e}"))?
        .origin(uri);
    Ok(tune(dial).connect_with_connector_lazy(connector))
}

/// Dials control over TLS with the workload certificate current at the time.
#[derive(Clone)]
struct Connector {
    addr: String,
    server_name: ServerName<'static>,
    roots: Arc<RootCertStore>,
    creds: CredentialsRx,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let mut rx = me.creds.clone();
            let creds = rx
                .wait_for(Option::is_some)
                .await
                .map_err(|_| io::Error::other("no workload certificate: the identity task stopped"))?
                .clone()
                .ok_or_else(|| io::Error::other("no workload certificate yet"))?;
            let mut config =
                ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(io::Error::other)?
                    .with_root_certificates(me.roots.clone())
                    .with_client_auth_cert(
                        creds.chain.clone(),
                        rustls_pki_types::PrivateKeyDer::Pkcs8(creds.key.clone_key()),
                    )
                    .map_err(io::Error::other)?;
            config.alpn_protocols = vec![b"h2".to_vec()];
            let tcp = TcpStream::connect(&me.addr).await?;
            tcp.set_nodelay(true)?;
            let tls = TlsConnector::from(Arc::new(config)).connect(me.server_name.clone(), tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
