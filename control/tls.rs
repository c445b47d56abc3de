//! TLS on control's gRPC listener (on by default; `dev_insecure_control`
//! turns it off for local experiments). Sits between the listener and the
//! tonic server in `server.rs`: accept → handshake (bounded by
//! [`HANDSHAKE_TIMEOUT`]) → the connection goes to tonic.
//!
//! Control's serving certificate is issued by the mesh CA it runs, for its
//! SPIFFE ID (`spiffe://<td>/ns/redfire-system/sa/redfire-control`) plus the
//! DNS names and IPs clients dial it by (`tls_names`), with the workload
//! lifetime, and renewed at 70 % of it. The renewed certificate is swapped in
//! behind the resolver: new handshakes get it, open connections (and the
//! Watch and Subscribe streams on them) are not touched.
//!
//! Client certificates are optional (operators and the Python example come
//! with none) but verified when presented: one from a foreign CA, expired or
//! otherwise invalid fails the handshake. A workload's verified chain rides
//! with the connection ([`PeerCerts`]) for the layers above.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use rcgen::KeyPair;
use rustls::crypto::aws_lc_rs;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

pub use crate::control::authz::caller::{PeerCerts, TlsConnInfo};
use crate::control::identity::ca::{Ca, SanName};
use crate::mesh::identity::{Workload, peer_spiffe_id, spiffe_id};

/// The longest a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Fraction of the certificate's lifetime after which it is renewed.
const RENEW_AT: f64 = 0.7;

/// Control's SPIFFE ID in trust domain `td`.
pub fn control_spiffe_id(td: &str) -> String {
    spiffe_id(td, "redfire-system", "redfire-control")
}

/// The current serving certificate, swapped on renewal.
#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwap<CertifiedKey>,
    not_after: ArcSwap<SystemTime>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ServingCert {
    /// Issues the first certificate.
    pub fn issue(ca: &Ca, names: &[SanName]) -> Result<Arc<ServingCert>, String> {
        let (key, not_after) = issue(ca, names)?;
        Ok(Arc::new(ServingCert { current: ArcSwap::new(key), not_after: ArcSwap::from_pointee(not_after) }))
    }

    /// Renews at 70 % of each certificate's lifetime; a failed renewal is
    /// retried with backoff while the current certificate keeps serving.
    pub fn spawn_renewal(self: &Arc<Self>, ca: Arc<Ca>, names: Vec<SanName>) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut issued = SystemTime::now();
            let mut backoff = Duration::from_secs(1);
            loop {
                let life = me.not_after.load().duration_since(issued).unwrap_or_default();
                let due = issued + life.mul_f64(RENEW_AT);
                tokio::time::sleep(due.duration_since(SystemTime::now()).unwrap_or_default()).await;
                match issue(&ca, &names) {
                    Ok((key, not_after)) => {
                        me.current.store(key);
                        me.not_after.store(Arc::new(not_after));
                        issued = SystemTime::now();
                        backoff = Duration::from_secs(1);
                        tracing::info!(?not_after, "renewed control's serving certificate");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew control's serving certificate; keeping the current one");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        })
    }
}

fn issue(ca: &Ca, names: &[SanName]) -> Result<(Arc<CertifiedKey>, SystemTime), String> {
    let key = KeyPair::generate().map_err(|e| format!("serving key: {e}"))?;
    let leaf = ca.issue_serving(&key, &control_spiffe_id(ca.trust_domain()), names, ca.leaf_lifetime())?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("serving chain: {e}"))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = aws_lc_rs::sign::any_supported_type(&der).map_err(|e| format!("serving key: {e}"))?;
    Ok((Arc::new(CertifiedKey::new(chain, signer)), leaf.not_after))
}

/// The listener's TLS configuration: any TLS version rustls supports (gRPC
/// clients in other languages may not speak only 1.3), ALPN `h2`, client
/// certificates optional and verified against the mesh trust bundle.
pub fn server_config(ca: &Ca, cert: Arc<ServingCert>) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca.bundle_pem().as_bytes()) {
        roots.add(der.map_err(|e| format!("trust bundle: {e}"))?).map_err(|e| format!("trust bundle: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts on `listener` and yields each connection once its handshake is
/// done. Handshakes run one task each, so a slow or silent client holds up
/// nobody; one that does not finish within [`HANDSHAKE_TIMEOUT`], or fails,
/// is dropped and counted in `failures`. Abort the returned task to stop.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    failures: Counter,
) -> (tokio_stream::wrappers::ReceiverStream<io::Result<TlsConn>>, JoinHandle<()>) {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let acceptor = TlsAcceptor::from(config);
    let task = tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "control accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Small stream messages (Watch changes, deliveries) must not wait
            // for delayed ACKs.
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, failures) = (acceptor.clone(), tx.clone(), failures.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(TlsConn { inner: tls, remote })).await;
                    }
                    Ok(Err(e)) => {
                        failures.inc();
                        tracing::debug!(%remote, error = %e, "control TLS handshake failed");
                    }
                    Err(_) => {
                        failures.inc();
                        tracing::debug!(%remote, "control TLS handshake timed out");
                    }
                }
            });
        }
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), task)
}

/// One accepted TLS connection.
#[derive(Debug)]
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    remote: SocketAddr,
}

impl Connected for TlsConn {
    type ConnectInfo = TlsConnInfo;

    fn connect_info(&self) -> TlsConnInfo {
        let certs = self.inner.get_ref().1.peer_certificates().map(|c| Arc::new(c.to_vec()));
        let workload =
            certs.as_deref().and_then(|c| peer_spiffe_id(c)).and_then(|id| Workload::from_spiffe_id(&id)).map(Arc::new);
        TlsConnInfo { remote: self.remote, certs: PeerCerts(certs), workload }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Writes `pem` to `path` atomically (a temporary file renamed into place),
/// readable by everyone: a trust bundle is public.
pub fn write_bundle(path: &std::path::Path, pem: &str) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{:x}", fastrand::u64(..)));
    std::fs::write(&tmp, pem)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
