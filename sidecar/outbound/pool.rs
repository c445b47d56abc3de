//! Pooled, multiplexed HTTP/2-over-mTLS connections to peer sidecars: one
//! connection per (endpoint, expected identity), shared by every request to
//! that endpoint and re-established when it closes.
//!
//! Each connection lives in a [`Slot`]. Discovery's endpoint sets hold the
//! slots of their endpoints (looked up once per set, not per request); the
//! pool itself only keeps weak references, so when an endpoint leaves every
//! set its slot is dropped and its connection closes (no pruning pass).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::sidecar::Body;
use crate::sidecar::errors::ProxyError;
use crate::sidecar::identity::{Credentials, CredentialsRx};
use crate::sidecar::metrics::{Metrics, OpenConnection};
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

/// An open connection's sender and the credentials it was made with.
type Open = (SendRequest<Body>, Option<Arc<Credentials>>);

/// The connection to one peer sidecar (address and expected identity).
pub struct Slot {
    addr: Address,
    expected: String,
    /// The open connection and the credentials it was made with.
    current: Mutex<Option<Open>>,
    /// Held while dialing, so concurrent requests wait for one new connection.
    connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("addr", &self.addr).field("expected", &self.expected).finish_non_exhaustive()
    }
}

impl Slot {
    /// A clone of the open connection's sender, if there is one and it was
    /// made with the current credentials. After a rotation new requests go
    /// to a new connection presenting the new certificate; requests still
    /// on the old one finish there, and it closes once they have.
    fn open(&self, creds: &Option<Arc<Credentials>>) -> Option<SendRequest<Body>> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let (sender, made_with) = current.as_ref()?;
        let same = match (made_with, creds) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, _) => true,
            (Some(_), None) => false,
        };
        (same && !sender.is_closed()).then(|| sender.clone())
    }
}

/// See the module docs.
pub struct Pool {
    creds: CredentialsRx,
    metrics: Arc<Metrics>,
    slots: Mutex<HashMap<(String, String), Weak<Slot>>>,
    tls: Mutex<HashMap<String, (Arc<Credentials>, TlsConnector)>>,
    plaintext: bool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.slots.lock().map(|s| s.values().filter(|w| w.strong_count() > 0).count()).unwrap_or(0);
        f.debug_struct("Pool").field("peers", &n).finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool presenting the credentials published on `creds`, counting
    /// its open connections in `metrics`; `plaintext` (development only)
    /// dials h2c with no TLS.
    pub fn new(creds: CredentialsRx, metrics: Arc<Metrics>, plaintext: bool) -> Self {
        Pool { creds, metrics, slots: Mutex::new(HashMap::new()), tls: Mutex::new(HashMap::new()), plaintext }
    }

    /// The slot for `addr` whose certificate must carry `expected`: the one
    /// already in use, if any set still holds it, or a new empty one.
    pub fn slot(&self, addr: &Address, expected: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (addr.to_string(), expected.to_string());
        if let Some(slot) = slots.get(&key).and_then(Weak::upgrade) {
            return slot;
        }
        slots.retain(|_, w| w.strong_count() > 0);
        let slot = Arc::new(Slot {
            addr: addr.clone(),
            expected: expected.to_string(),
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        });
        slots.insert(key, Arc::downgrade(&slot));
        slot
    }

    /// A sender on `slot`'s connection, dialing it first if it is closed.
    pub async fn get(&self, slot: &Slot) -> Result<SendRequest<Body>, ProxyError> {
        let creds = if self.plaintext { None } else { self.creds.borrow().clone() };
        if let Some(s) = slot.open(&creds) {
            return Ok(s);
        }
        let _dialing = slot.connecting.lock().await;
        if let Some(s) = slot.open(&creds) {
            return Ok(s);
        }
        // Boxed: the dial (TCP, TLS, HTTP/2 handshake) is a large future that
        // would otherwise be part of every request's state, copied per request.
        let sender = Box::pin(self.connect(&slot.addr, &slot.expected)).await?;
        *slot.current.lock().unwrap_or_else(PoisonError::into_inner) = Some((sender.clone(), creds));
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
        let connector = if self.plaintext { None } else { Some(self.connector(expected)?) };
        let tcp = match addr {
            Address::Socket(a) => tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(*a)).await,
            Address::Host { host, port } => {
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), *port))).await
            }
        }
        .map_err(|_| fail(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| fail(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let Some(connector) = connector else {
            return handshake(tcp, addr, Some(self.metrics.open_connection("peer"))).await;
        };
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(peer_server_name(), tcp))
            .await
            .map_err(|_| fail("TLS handshake timed out".into()))?
            .map_err(|e| fail(format!("TLS: {e}")))?;
        handshake(tls, addr, Some(self.metrics.open_connection("peer"))).await
    }
}

/// HTTP/2 over an established (TLS or, in development, plaintext) connection
/// to a peer sidecar or to an h2c app; `addr` names it in errors and logs.
pub(crate) async fn handshake<I>(
    io: I,
    addr: &(dyn std::fmt::Display + Sync),
    open: Option<OpenConnection>,
) -> Result<SendRequest<Body>, ProxyError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .adaptive_window(false)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(5))
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ProxyError::Connect { endpoint: addr.to_string(), reason: format!("HTTP/2: {e}") })?;
    let endpoint = addr.to_string();
    tokio::spawn(async move {
        let _open = open;
        if let Err(e) = conn.await {
            tracing::debug!(%endpoint, error = %e, "peer connection closed");
        }
    });
    Ok(sender)
}
