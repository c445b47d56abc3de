//! Pooled, multiplexed HTTP/2-over-mTLS connections to peer sidecars: one
//! connection per (endpoint, expected identity), shared by every request to
//! that endpoint and re-established when it closes.
//!
//! Each connection lives in a [`Slot`]. Discovery's endpoint sets hold the
//! slots of their endpoints (looked up once per set, not per request); the
//! pool itself only keeps weak references, so when an endpoint leaves every
//! set its slot is dropped and its connection closes (no pruning pass).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::sidecar::Body;
use crate::sidecar::metrics::{Metrics, OpenConnection};
use crate::sidecar::outbound::balance::Address;
use crate::sidecar::shared::errors::ProxyError;
use crate::sidecar::transport::credentials::{Credentials, CredentialsRx};
use crate::sidecar::transport::tls::{client_config, peer_server_name};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// HTTP/2 flow-control windows between sidecars. h2 sizes its budget of
/// buffered small DATA frames from the connection window (half of it), so a
/// window this size keeps many small gRPC messages in flight without the
/// connection being closed as abusive.
pub const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// Per-stream window between sidecars.
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// One multiplexed HTTP/2 connection, dialed on first use and again when
/// it has closed or is no longer usable; concurrent requests wait for one
/// dial. `T` records what the connection was made with (a peer's: the
/// credentials it presented). Used for peer sidecars and for an h2c app.
pub(crate) struct Redial<T> {
    current: Mutex<Option<(SendRequest<Body>, T)>>,
    /// Held while dialing.
    connecting: tokio::sync::Mutex<()>,
}

impl<T> Redial<T> {
    pub(crate) fn new() -> Self {
        Redial { current: Mutex::new(None), connecting: tokio::sync::Mutex::new(()) }
    }

    fn open(&self, usable: &impl Fn(&T) -> bool) -> Option<SendRequest<Body>> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let (sender, made_with) = current.as_ref()?;
        (usable(made_with) && !sender.is_closed()).then(|| sender.clone())
    }

    /// A sender on the open connection if it is `usable`, else on a new one
    /// from `dial`. The dial is boxed: it is a large future (TCP, TLS,
    /// HTTP/2 handshake) that would otherwise be part of every request's
    /// state, copied per request.
    pub(crate) async fn get<F>(
        &self,
        usable: impl Fn(&T) -> bool,
        dial: impl FnOnce() -> F,
    ) -> Result<SendRequest<Body>, ProxyError>
    where
        F: Future<Output = Result<(SendRequest<Body>, T), ProxyError>>,
    {
        if let Some(s) = self.open(&usable) {
            return Ok(s);
        }
        let _dialing = self.connecting.lock().await;
        if let Some(s) = self.open(&usable) {
            return Ok(s);
        }
        let (sender, made_with) = Box::pin(dial()).await?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some((sender.clone(), made_with));
        Ok(sender)
    }
}

/// The connection to one peer sidecar (address and expected identity).
pub struct Slot {
    addr: Address,
    expected: String,
    /// Made with the credentials it presents.
    conn: Redial<Option<Arc<Credentials>>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("addr", &self.addr).field("expected", &self.expected).finish_non_exhaustive()
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
        let slot = Arc::new(Slot { addr: addr.clone(), expected: expected.to_string(), conn: Redial::new() });
        slots.insert(key, Arc::downgrade(&slot));
        slot
    }

    /// A sender on `slot`'s connection, dialing it first if it is closed or
    /// was made with other than the current credentials: after a rotation
    /// new requests go to a new connection presenting the new certificate;
    /// requests still on the old one finish there, and it closes once they have.
    pub async fn get(&self, slot: &Slot) -> Result<SendRequest<Body>, ProxyError> {
        let creds = if self.plaintext { None } else { self.creds.borrow().clone() };
        let current = |made_with: &Option<Arc<Credentials>>| match (made_with, &creds) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, _) => true,
            (Some(_), None) => false,
        };
        slot.conn.get(current, || async { Ok((self.connect(&slot.addr, &slot.expected).await?, creds.clone())) }).await
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
