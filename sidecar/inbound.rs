//! The inbound request path: peer sidecar → mTLS (client certificate
//! required, chained to the trust bundle) → HTTP/2 → policy (service
//! authorization by the caller's SPIFFE ID, JWT, RBAC: `sidecar::policy`)
//! → the app on 127.0.0.1. A refused request never reaches the app.
//!
//! The caller's SPIFFE ID is passed to the app in `x-redfire-peer-identity`
//! (any copy the caller sent is replaced). Requests that entered the mesh as
//! HTTP/1.1 reach an HTTP/1.1 app as HTTP/1.1; bodies stream both ways.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::control::shutdown::Drain;
use crate::sidecar::Body;
use crate::sidecar::body::NonEmpty;
use crate::sidecar::config::AppProtocol;
use crate::sidecar::errors::ProxyError;
use crate::sidecar::metrics::Metrics;
use crate::sidecar::outbound::pool::{CONNECTION_WINDOW, STREAM_WINDOW};
use crate::sidecar::outbound::proxy::{HTTP1_MARK, strip_hop_by_hop};
use crate::sidecar::policy::Policy;
use crate::sidecar::transport::tls::peer_spiffe_id;

/// Header carrying the caller's SPIFFE ID to the app.
pub const PEER_IDENTITY: &str = "x-redfire-peer-identity";

/// Streams one peer may open at once on its connection.
const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// See the module docs.
pub struct Inbound {
    service: String,
    app_addr: SocketAddr,
    app_protocol: AppProtocol,
    app: Client<HttpConnector, Body>,
    tls: Arc<ArcSwapOption<ServerConfig>>,
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
    /// every request passes `policy` first.
    pub fn new(
        service: String,
        app_addr: SocketAddr,
        app_protocol: AppProtocol,
        tls: Arc<ArcSwapOption<ServerConfig>>,
        metrics: Arc<Metrics>,
        policy: Arc<Policy>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        let app = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_only(app_protocol == AppProtocol::H2c)
            .http2_adaptive_window(false)
            .http2_initial_connection_window_size(CONNECTION_WINDOW)
            .http2_initial_stream_window_size(STREAM_WINDOW)
            .build(connector);
        Inbound { service, app_addr, app_protocol, app, tls, metrics, policy }
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
        let Some(config) = self.tls.load_full() else {
            tracing::warn!(%remote, "refusing a peer: no workload certificate");
            return;
        };
        let _ = tcp.set_nodelay(true);
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
        let this = self.clone();
        let svc = service_fn(move |req| {
            let this = this.clone();
            let peer = peer.clone();
            async move { Ok::<_, std::convert::Infallible>(this.handle(req, peer).await) }
        });
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .initial_stream_window_size(STREAM_WINDOW)
            .max_header_list_size(16 * 1024)
            .keep_alive_interval(Duration::from_secs(20))
            .serve_connection(TokioIo::new(tls), svc);
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

    async fn handle(&self, req: Request<Incoming>, peer: Option<HeaderValue>) -> Response<Body> {
        let started = Instant::now();
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let (mut parts, body) = req.into_parts();
        // No SPIFFE ID in the certificate: no identity (matches no rule).
        let caller = peer.as_ref().and_then(|p| p.to_str().ok()).filter(|p| !p.is_empty());
        if let Err(e) = self.policy.enforce(&mut parts, caller).await {
            let resp = e.respond(grpc);
            self.metrics.observe("inbound", &self.service, &resp, started.elapsed());
            return resp;
        }
        let req = Request::from_parts(parts, body);
        let resp = match self.to_app(req, peer) {
            Ok(app_req) => match self.app.request(app_req).await {
                Ok(r) => r.map(|b| NonEmpty(b.map_err(Into::into).boxed_unsync()).boxed_unsync()),
                Err(e) => ProxyError::App(e.to_string()).respond(grpc),
            },
            Err(e) => e.respond(grpc),
        };
        self.metrics.observe("inbound", &self.service, &resp, started.elapsed());
        resp
    }

    fn to_app(&self, req: Request<Incoming>, peer: Option<HeaderValue>) -> Result<Request<Body>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        let authority = parts.uri.authority().map(|a| a.to_string());
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(self.app_addr.to_string())
            .path_and_query(path)
            .build()
            .map_err(|e| ProxyError::App(format!("bad request URI: {e}")))?;
        let http1 = parts.headers.remove(HTTP1_MARK).is_some() || self.app_protocol == AppProtocol::Http1;
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(PEER_IDENTITY);
        if let Some(p) = peer {
            parts.headers.insert(PEER_IDENTITY, p);
        }
        if http1 && self.app_protocol == AppProtocol::Http1 {
            parts.version = Version::HTTP_11;
            let host = authority.unwrap_or_else(|| self.service.clone());
            if let Ok(h) = HeaderValue::from_str(&host) {
                parts.headers.insert(header::HOST, h);
            }
        } else {
            parts.version = Version::HTTP_2;
        }
        Ok(Request::from_parts(parts, NonEmpty(body.map_err(Into::into).boxed_unsync()).boxed_unsync()))
    }
}
