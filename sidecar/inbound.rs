//! The inbound request path: peer sidecar → mTLS (client certificate
//! required, chained to the trust bundle) → HTTP/2 → policy (service
//! authorization by the caller's SPIFFE ID, JWT, RBAC: `sidecar::policy`)
//! → the app on 127.0.0.1. A refused request never reaches the app.
//!
//! The caller's SPIFFE ID is passed to the app in `x-redfire-peer-identity`
//! (any copy the caller sent is replaced). Requests that entered the mesh as
//! HTTP/1.1 reach an HTTP/1.1 app as HTTP/1.1; bodies stream both ways.

pub mod app_health;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::mesh::process::shutdown::Drain;
use crate::sidecar::Body;
use crate::sidecar::metrics::Metrics;
use crate::sidecar::outbound::pool::{CONNECTION_WINDOW, Redial, STREAM_WINDOW, handshake};
use crate::sidecar::outbound::proxy::{HTTP1_MARK, strip_hop_by_hop};
use crate::sidecar::policy::Policy;
use crate::sidecar::shared::body::NonEmpty;
use crate::sidecar::shared::errors::ProxyError;
use crate::sidecar::shared::{trace, upgrade};
use crate::sidecar::transport::tls::peer_spiffe_id;

/// What the app behind the sidecar speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProtocol {
    /// HTTP/2 without TLS (gRPC servers).
    H2c,
    /// HTTP/1.1.
    Http1,
}

/// Header carrying the caller's SPIFFE ID to the app.
pub const PEER_IDENTITY: &str = "x-redfire-peer-identity";

/// How long dialing the app may take.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Streams one peer may open at once on its connection.
const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// How requests reach the app.
enum AppClient {
    /// An h2c app: one multiplexed HTTP/2 connection, dialed again when it closes.
    H2c(AppConn),
    /// An HTTP/1.1 app: a keep-alive connection pool.
    Http1(Box<Client<HttpConnector, Body>>),
}

/// The HTTP/2 connection to an h2c app.
struct AppConn {
    addr: SocketAddr,
    conn: Redial<()>,
}

impl AppConn {
    async fn sender(&self) -> Result<SendRequest<Body>, ProxyError> {
        self.conn
            .get(
                |_| true,
                || async {
                    let tcp = tokio::time::timeout(APP_CONNECT_TIMEOUT, TcpStream::connect(self.addr))
                        .await
                        .map_err(|_| {
                            ProxyError::App(format!("no answer from {} within {APP_CONNECT_TIMEOUT:?}", self.addr))
                        })?
                        .map_err(|e| ProxyError::App(format!("connect {}: {e}", self.addr)))?;
                    let _ = tcp.set_nodelay(true);
                    let sender = handshake(tcp, &self.addr, None).await.map_err(|e| ProxyError::App(e.to_string()))?;
                    Ok((sender, ()))
                },
            )
            .await
    }
}

/// See the module docs.
pub struct Inbound {
    service: String,
    app_addr: SocketAddr,
    app_authority: http::uri::Authority,
    app_protocol: AppProtocol,
    app: AppClient,
    tls: Arc<ArcSwapOption<ServerConfig>>,
    plaintext: bool,
    metrics: Arc<Metrics>,
    policy: Arc<Policy>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("service", &self.service)
            .field("app_addr", &self.app_addr)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    /// Forwards to the app at `app_addr`; TLS config from `tls` (empty while
    /// the sidecar has no certificate: connections are then refused);
    /// every request passes `policy` first. `plaintext` (development only)
    /// serves h2c with no TLS and no peer identity.
    pub fn new(
        service: String,
        app_addr: SocketAddr,
        app_protocol: AppProtocol,
        tls: Arc<ArcSwapOption<ServerConfig>>,
        plaintext: bool,
        metrics: Arc<Metrics>,
        policy: Arc<Policy>,
    ) -> Self {
        let app = match app_protocol {
            AppProtocol::H2c => AppClient::H2c(AppConn { addr: app_addr, conn: Redial::new() }),
            AppProtocol::Http1 => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(APP_CONNECT_TIMEOUT));
                AppClient::Http1(Box::new(
                    Client::builder(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .pool_timer(TokioTimer::new())
                        .build(connector),
                ))
            }
        };
        let app_authority =
            http::uri::Authority::try_from(app_addr.to_string()).expect("a socket address is an authority");
        Inbound { service, app_addr, app_authority, app_protocol, app, tls, plaintext, metrics, policy }
    }

    /// Accepts peer connections until the drain starts, then lets open
    /// connections finish their in-flight requests (graceful GOAWAY).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, drain: Drain) {
        let mut conns = tokio::task::JoinSet::new();
        let stop = drain.started();
        tokio::pin!(stop);
        loop {
            let (tcp, remote) = tokio::select! {
                _ = &mut stop => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "inbound accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let this = self.clone();
            conns.spawn(this.connection(tcp, remote, drain.clone()));
        }
        while conns.join_next().await.is_some() {}
    }

    async fn connection(self: Arc<Self>, tcp: tokio::net::TcpStream, remote: SocketAddr, drain: Drain) {
        let _open = self.metrics.open_connection("inbound");
        let _ = tcp.set_nodelay(true);
        if self.plaintext {
            return self.serve_h2(tcp, None, remote, drain).await;
        }
        let Some(config) = self.tls.load_full() else {
            tracing::warn!(%remote, "refusing a peer: no workload certificate");
            return;
        };
        let tls = match tokio::time::timeout(Duration::from_secs(10), TlsAcceptor::from(config).accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::info!(%remote, error = %e, "mTLS handshake refused");
                return;
            }
            Err(_) => {
                tracing::info!(%remote, "mTLS handshake timed out");
                return;
            }
        };
        let peer = peer_spiffe_id(tls.get_ref().1.peer_certificates().unwrap_or_default()).unwrap_or_default();
        let peer = HeaderValue::from_str(&peer).ok();
        self.serve_h2(tls, peer, remote, drain).await
    }

    /// Serves HTTP/2 on one accepted (and, unless plaintext, authenticated)
    /// connection until it ends or the drain closes it gracefully.
    async fn serve_h2<I>(self: Arc<Self>, io: I, peer: Option<HeaderValue>, remote: SocketAddr, drain: Drain)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        let svc = service_fn(move |req| {
            let this = this.clone();
            let peer = peer.clone();
            async move { Ok::<_, std::convert::Infallible>(this.handle(req, peer, remote.ip()).await) }
        });
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .initial_stream_window_size(STREAM_WINDOW)
            .max_header_list_size(16 * 1024)
            .keep_alive_interval(Duration::from_secs(20))
            .serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = drain.started() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%remote, error = %e, "inbound connection ended");
        }
    }

    async fn handle(&self, mut req: Request<Incoming>, peer: Option<HeaderValue>, remote: IpAddr) -> Response<Body> {
        let started = Instant::now();
        let span = trace::hop_span("inbound", &self.service, req.headers(), req.uri().path());
        if let Some(span) = &span {
            trace::inject(span, req.headers_mut());
        }
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let (mut parts, body) = req.into_parts();
        // No SPIFFE ID in the certificate: no identity (matches no rule).
        let caller = peer.as_ref().and_then(|p| p.to_str().ok()).filter(|p| !p.is_empty());
        if let Err(e) = self.policy.enforce(&mut parts, caller, remote).await {
            let resp = self.metrics.observe("inbound", &self.service, e.respond(grpc), started.elapsed());
            if let Some(span) = &span {
                trace::record_status(span, resp.status());
            }
            return resp;
        }
        let req = Request::from_parts(parts, body);
        if let Some(protocol) = req.headers().get(upgrade::UPGRADE).cloned() {
            let resp = Box::pin(self.upgrade(req, peer, protocol)).await.unwrap_or_else(|e| e.respond(grpc));
            return self.metrics.observe("inbound", &self.service, resp, started.elapsed());
        }
        let resp = match self.to_app(req, peer) {
            Ok(app_req) => match self.send(app_req).await {
                Ok(r) => r.map(|b| NonEmpty(b.map_err(Into::into).boxed_unsync()).boxed_unsync()),
                Err(e) => e.respond(grpc),
            },
            Err(e) => e.respond(grpc),
        };
        let resp = self.metrics.observe("inbound", &self.service, resp, started.elapsed());
        if let Some(span) = &span {
            trace::record_status(span, resp.status());
        }
        resp
    }

    /// The inbound half of an upgrade tunnel (see [`upgrade`]): the upgrade
    /// request goes to the app on a connection of its own; a 101 turns that
    /// connection into the far end of the tunnel.
    async fn upgrade(
        &self,
        req: Request<Incoming>,
        peer: Option<HeaderValue>,
        protocol: HeaderValue,
    ) -> Result<Response<Body>, ProxyError> {
        if self.app_protocol != AppProtocol::Http1 {
            return Err(ProxyError::App("an Upgrade (e.g. WebSocket) needs an app_protocol = http1 app".into()));
        }
        let (mut parts, from_peer) = self.to_app(req, peer)?.into_parts();
        parts.headers.remove(upgrade::UPGRADE);
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol.clone());
        parts.uri = parts.uri.path_and_query().map(|p| Uri::from(p.clone())).unwrap_or_else(|| Uri::from_static("/"));
        let tcp = tokio::time::timeout(APP_CONNECT_TIMEOUT, TcpStream::connect(self.app_addr))
            .await
            .map_err(|_| ProxyError::App(format!("no answer from {} within {APP_CONNECT_TIMEOUT:?}", self.app_addr)))?
            .map_err(|e| ProxyError::App(format!("connect {}: {e}", self.app_addr)))?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(tcp))
            .await
            .map_err(|e| ProxyError::App(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "app upgrade connection ended");
            }
        });
        let empty = http_body_util::Empty::new().map_err(|n| match n {}).boxed_unsync();
        let mut resp =
            sender.send_request(Request::from_parts(parts, empty)).await.map_err(|e| ProxyError::App(e.to_string()))?;
        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            return Ok(resp.map(|b| NonEmpty(b.map_err(Into::into).boxed_unsync()).boxed_unsync()));
        }
        let on_upgrade = hyper::upgrade::on(&mut resp);
        let (mut head, _) = resp.into_parts();
        head.status = http::StatusCode::OK;
        head.version = Version::HTTP_2;
        strip_hop_by_hop(&mut head.headers);
        head.headers.insert(upgrade::UPGRADED, protocol);
        let (to_peer, body) = upgrade::channel_body();
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(app) => upgrade::tunnel(TokioIo::new(app), to_peer, from_peer).await,
                Err(e) => tracing::debug!(error = %e, "app connection did not upgrade"),
            }
        });
        Ok(Response::from_parts(head, body))
    }

    async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, ProxyError> {
        match &self.app {
            AppClient::H2c(conn) => {
                let mut sender = conn.sender().await?;
                sender.send_request(req).await.map_err(|e| ProxyError::App(e.to_string()))
            }
            AppClient::Http1(client) => client.request(req).await.map_err(|e| ProxyError::App(e.to_string())),
        }
    }

    fn to_app(&self, req: Request<Incoming>, peer: Option<HeaderValue>) -> Result<Request<Body>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        let authority = uri.authority.take();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(self.app_authority.clone());
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        parts.uri = Uri::from_parts(uri).map_err(|e| ProxyError::App(format!("bad request URI: {e}")))?;
        let http1 = parts.headers.remove(HTTP1_MARK).is_some() || self.app_protocol == AppProtocol::Http1;
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(PEER_IDENTITY);
        if let Some(p) = peer {
            parts.headers.insert(PEER_IDENTITY, p);
        }
        if http1 && self.app_protocol == AppProtocol::Http1 {
            parts.version = Version::HTTP_11;
            let host = authority.as_ref().map(|a| a.as_str()).unwrap_or(&self.service);
            if let Ok(h) = HeaderValue::from_str(host) {
                parts.headers.insert(header::HOST, h);
            }
        } else {
            parts.version = Version::HTTP_2;
        }
        Ok(Request::from_parts(parts, NonEmpty(body.map_err(Into::into).boxed_unsync()).boxed_unsync()))
    }
}
