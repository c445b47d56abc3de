//! Pooled, multiplexed HTTP/2-over-mTLS connections to peer sidecars: one
//! connection per (endpoint, expected identity), shared by every request to
//! that endpoint and re-established when it closes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::sidecar::Body;
use crate::sidecar::errors::ProxyError;
use crate::sidecar::identity::{Credentials, CredentialsRx};
use crate::sidecar::metrics::Metrics;
use crate::sidecar::outbound::balance::Address;
use crate::sidecar::transport::tls::{client_config, peer_server_name};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// HTTP/2 flow-control windows between sidecars. h2 sizes its budget of
/// buffered small DATA frames from the connection window (half of it), so a
/// window this size keeps many small gRPC messages in flight without the
/// connection being closed as abusive.
pub const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// Per-stream window between sidecars.
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;

type Slot = Arc<tokio::sync::Mutex<Option<SendRequest<Body>>>>;

/// See the module docs.
pub struct Pool {
    creds: CredentialsRx,
    metrics: Arc<Metrics>,
    slots: Mutex<HashMap<(String, String), Slot>>,
    tls: Mutex<HashMap<String, (Arc<Credentials>, TlsConnector)>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.slots.lock().map(|s| s.len()).unwrap_or(0);
        f.debug_struct("Pool").field("peers", &n).finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool presenting the credentials published on `creds`, counting
    /// its open connections in `metrics`.
    pub fn new(creds: CredentialsRx, metrics: Arc<Metrics>) -> Self {
        Pool { creds, metrics, slots: Mutex::new(HashMap::new()), tls: Mutex::new(HashMap::new()) }
    }

    /// A ready sender to `addr`, whose certificate must carry `expected`.
    pub async fn get(&self, addr: &Address, expected: &str) -> Result<SendRequest<Body>, ProxyError> {
        let key = (addr.to_string(), expected.to_string());
        let slot = self.slots.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone();
        let mut guard = slot.lock().await;
        if let Some(s) = guard.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let sender = self.connect(addr, expected).await?;
        *guard = Some(sender.clone());
        Ok(sender)
    }

    fn connector(&self, expected: &str) -> Result<TlsConnector, ProxyError> {
        let creds = self.creds.borrow().clone().ok_or(ProxyError::NoIdentity)?;
        let mut cache = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((c, connector)) = cache.get(expected)
            && Arc::ptr_eq(c, &creds)
        {
            return Ok(connector.clone());
        }
        // First use, or the certificate rotated: new connections present the new one.
        let config = client_config(&creds, expected).map_err(|e| ProxyError::Upstream(e.to_string()))?;
        let connector = TlsConnector::from(config);
        cache.insert(expected.to_string(), (creds, connector.clone()));
        Ok(connector)
    }

    async fn connect(&self, addr: &Address, expected: &str) -> Result<SendRequest<Body>, ProxyError> {
        let fail = |reason: String| ProxyError::Connect { endpoint: addr.to_string(), reason };
        let connector = self.connector(expected)?;
        let tcp = match addr {
            Address::Socket(a) => tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(*a)).await,
            Address::Host { host, port } => {
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), *port))).await
            }
        }
        .map_err(|_| fail(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| fail(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(peer_server_name(), tcp))
            .await
            .map_err(|_| fail("TLS handshake timed out".into()))?
            .map_err(|e| fail(format!("TLS: {e}")))?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(false)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .initial_stream_window_size(STREAM_WINDOW)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(5))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(format!("HTTP/2: {e}")))?;
        let endpoint = addr.to_string();
        let open = self.metrics.open_connection("peer");
        tokio::spawn(async move {
            let _open = open;
            if let Err(e) = conn.await {
                tracing::debug!(%endpoint, error = %e, "peer connection closed");
            }
        });
        Ok(sender)
    }
}
