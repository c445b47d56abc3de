//! The ingress listener: accepts client connections and serves HTTP/1.1
//! (with upgrades, so WebSocket passes through) and HTTP/2 on one port, in
//! clear text (h2c by prior knowledge) or over TLS (ALPN `h2`/`http/1.1`).
//!
//! Hardening (RELIABILITY.md rows 1–7, 28), every limit from the config:
//! - connections beyond `max_connections` are closed at accept, never
//!   queued;
//! - the TLS handshake and each HTTP/1.1 request head must arrive within
//!   `header_read_timeout` (slowloris);
//! - request headers: at most `max_headers` and `max_header_bytes`
//!   (HTTP/1.1 answers 431; HTTP/2 advertises the header list size and
//!   refuses bigger lists, CONTINUATION floods included);
//! - HTTP/2: at most `max_concurrent_streams` per connection (more get
//!   REFUSED_STREAM); rapid reset (streams the client opens and cancels
//!   before we serve them) and streams we must reset for protocol errors
//!   are capped, then the connection gets GOAWAY;
//! - a connection with no bytes either way for `idle_timeout` is closed
//!   gracefully.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::mesh::process::shutdown::Drain;
use crate::sidecar::config::GatewayConfig;
use crate::sidecar::gateway::forward::{Client, Gateway};
use crate::sidecar::gateway::metrics::Reason;
use crate::sidecar::outbound::pool::{CONNECTION_WINDOW, STREAM_WINDOW};

/// Client streams cancelled before we served them, per connection, before
/// GOAWAY (h2's own default; the CVE-2023-44487 defence).
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams we reset for the client's protocol errors, per connection,
/// before GOAWAY (the CVE-2025-8671 "MadeYouReset" defence).
const MAX_LOCAL_ERROR_RESETS: usize = 100;

/// Serves `listener` until the drain; open connections then finish their
/// requests gracefully.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    config: GatewayConfig,
    tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    drain: Drain,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let builder = Arc::new(builder(&config));
    let mut conns = JoinSet::new();
    loop {
        let (tcp, addr) = tokio::select! {
            _ = drain.started() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // Reap finished connection tasks so the set stays small.
        while conns.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            gateway.metrics.refused.get_or_create(&Reason { reason: "max_connections" }).inc();
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (gateway, builder, tls, drain) = (gateway.clone(), builder.clone(), tls.clone(), drain.clone());
        let (handshake_timeout, idle) = (config.header_read_timeout, config.idle_timeout);
        conns.spawn(async move {
            gateway.metrics.connections.inc();
            let client = Client { addr, tls: tls.is_some() };
            match tls {
                None => serve_conn(Tracked::new(tcp), client, gateway.clone(), &builder, idle, drain).await,
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(Tracked::new(tcp))).await {
                        Ok(Ok(stream)) => serve_conn(stream, client, gateway.clone(), &builder, idle, drain).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, %addr, "gateway TLS handshake failed"),
                        Err(_) => {
                            gateway.metrics.refused.get_or_create(&Reason { reason: "handshake_timeout" }).inc();
                        }
                    }
                }
            }
            gateway.metrics.connections.dec();
            drop(slot);
        });
    }
    while conns.join_next().await.is_some() {}
}

fn builder(c: &GatewayConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(c.header_read_timeout)
        .max_headers(c.max_headers)
        // hyper's floor is 8 KiB; the head must also fit the request line.
        .max_buf_size((c.max_header_bytes as usize).max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        .max_concurrent_streams(c.max_concurrent_streams)
        .max_header_list_size(c.max_header_bytes)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS);
    b
}

/// Something [`Tracked`] can report activity of, through any TLS layer.
trait Activity {
    fn last_active(&self) -> Arc<AtomicU64>;
}

impl Activity for Tracked {
    fn last_active(&self) -> Arc<AtomicU64> {
        self.last.clone()
    }
}

impl Activity for tokio_rustls::server::TlsStream<Tracked> {
    fn last_active(&self) -> Arc<AtomicU64> {
        self.get_ref().0.last.clone()
    }
}

async fn serve_conn<I>(
    io: I,
    client: Client,
    gateway: Arc<Gateway>,
    builder: &auto::Builder<TokioExecutor>,
    idle: Duration,
    drain: Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + Activity + 'static,
{
    let last = io.last_active();
    let svc = service_fn(move |req| {
        let gateway = gateway.clone();
        async move { Ok::<_, Infallible>(gateway.handle(req, client).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(50)));
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = drain.started() => break,
            _ = tick.tick() => {
                if now_ms().saturating_sub(last.load(Ordering::Relaxed)) >= idle.as_millis() as u64 {
                    tracing::debug!(addr = %client.addr, "gateway connection idle; closing");
                    break;
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

/// A TCP stream that records when bytes last moved either way.
struct Tracked {
    inner: TcpStream,
    last: Arc<AtomicU64>,
}

impl Tracked {
    fn new(inner: TcpStream) -> Self {
        Tracked { inner, last: Arc::new(AtomicU64::new(now_ms())) }
    }

    fn touch(&self) {
        self.last.store(now_ms(), Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
