//! A two-sidecar mesh for tests: control, an echo app, sidecar B beside it
//! (service `echo`) and sidecar A (service `client`) with an `echo` upstream
//! listener.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use redfire::control::authz::token;
use redfire::control::config::{Config, Settings};
use redfire::control::identity::ca::Ca;
use redfire::control::server::Control;
use redfire::sidecar::config::{Config as SidecarConfig, Settings as SidecarSettings};
use redfire::sidecar::server::Sidecar;
use tokio::net::TcpListener;

use super::{control, eventually, http_get, settings};

pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// An app that streams the request body back, echoes the caller identity,
/// the protocol version, the `grpc-timeout` and the `traceparent` it received
/// in headers (`x-peer`, `x-app-version`, `x-grpc-timeout`, `x-traceparent`), and
/// ends with gRPC trailers. A path ending in `/Hang` never answers.
pub async fn echo_app(http1: bool) -> SocketAddr {
    serve_app(http1, |req: Request<Incoming>| async move {
        if req.uri().path().ends_with("/Hang") {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        let peer = req.headers().get("x-redfire-peer-identity").cloned();
        let timeout = req.headers().get("grpc-timeout").cloned();
        let traceparent = req.headers().get("traceparent").cloned();
        let version = format!("{:?}", req.version());
        let frames = BodyStream::new(req.into_body()).map(|f| f.map_err(Into::into));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let end = futures::stream::once(async move { Ok(Frame::trailers(trailers)) });
        let body: BoxBody = StreamBody::new(frames.chain(end)).boxed_unsync();
        let mut resp = Response::new(body);
        resp.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
        resp.headers_mut().insert("x-app-version", HeaderValue::from_str(&version).unwrap());
        if let Some(p) = peer {
            resp.headers_mut().insert("x-peer", p);
        }
        if let Some(t) = timeout {
            resp.headers_mut().insert("x-grpc-timeout", t);
        }
        if let Some(t) = traceparent {
            resp.headers_mut().insert("x-traceparent", t);
        }
        Ok::<_, Infallible>(resp)
    })
    .await
}

/// A unary gRPC-style app: reads the whole request, then answers with the
/// same bytes and `grpc-status: 0` in one go (as a real unary server does).
pub async fn unary_app() -> SocketAddr {
    serve_app(false, |req: Request<Incoming>| async move {
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames = vec![Ok(Frame::data(body)), Ok(Frame::trailers(trailers))];
        let body: BoxBody = StreamBody::new(futures::stream::iter(frames)).boxed_unsync();
        let mut resp = Response::new(body);
        resp.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
        Ok::<_, Infallible>(resp)
    })
    .await
}

/// A unary gRPC-style app that names itself: every response carries
/// `x-instance: <name>` (to see which endpoint the balancer picked).
pub async fn named_app(name: &'static str) -> SocketAddr {
    serve_app(false, move |req: Request<Incoming>| async move {
        let _ = req.into_body().collect().await;
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let body: BoxBody = StreamBody::new(futures::stream::iter(vec![Ok(Frame::trailers(trailers))])).boxed_unsync();
        let mut resp = Response::new(body);
        resp.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
        resp.headers_mut().insert("x-instance", HeaderValue::from_static(name));
        Ok::<_, Infallible>(resp)
    })
    .await
}

/// One more in-process sidecar for `service` beside `app`, registered with
/// `control` as instance `instance_id`; `extra` overrides the defaults.
pub async fn sidecar_for(
    control: &Control,
    service: &str,
    instance_id: &str,
    app: SocketAddr,
    app_protocol: &str,
    extra: SidecarSettings,
) -> Sidecar {
    let ca = Ca::load(Config::from_settings(settings()).unwrap().ca).await.unwrap();
    let tok = token::create(&ca, "default", service, Duration::from_secs(600)).unwrap();
    let config = SidecarConfig::from_settings(extra.or(SidecarSettings {
        control_addr: Some(control.grpc_url()),
        control_ca_file: control.trust_bundle_file.as_ref().map(|p| p.display().to_string()),
        service: Some(service.into()),
        instance_id: Some(instance_id.into()),
        bootstrap_token: Some(tok),
        inbound_addr: Some("127.0.0.1:0".into()),
        outbound_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        app_addr: Some(app.to_string()),
        app_protocol: Some(app_protocol.into()),
        shutdown_grace: Some("2s".into()),
        log_level: Some("warn".into()),
        ..Default::default()
    }))
    .unwrap();
    Sidecar::start(config).await.unwrap()
}

/// The number of endpoints of `service` the sidecar with admin port `admin` knows.
pub async fn endpoint_count(admin: SocketAddr, service: &str) -> usize {
    let (_, body) = http_get(admin, "/admin/endpoints").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    json[service]["endpoints"].as_array().map_or(0, Vec::len)
}

/// What a [`recording_app`] saw.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Requests that reached the app.
    pub requests: std::sync::atomic::AtomicUsize,
}

/// An h2c app that counts the requests reaching it and answers 200 (gRPC
/// status 0) with what it received in response headers: `x-seen-path`, and
/// `x-seen-<name>` for `x-user-id`, `x-user-roles` and `x-redfire-peer-identity`.
pub async fn recording_app() -> (SocketAddr, std::sync::Arc<Recorder>) {
    let rec = std::sync::Arc::new(Recorder::default());
    let counter = rec.clone();
    let addr = serve_app(false, move |req: Request<Incoming>| {
        counter.requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let mut resp = Response::new(BodyExt::boxed_unsync(
                http_body_util::Full::new(Bytes::from_static(b"ok")).map_err(|n| match n {}),
            ));
            resp.headers_mut().insert("grpc-status", HeaderValue::from_static("0"));
            resp.headers_mut().insert("x-seen-path", HeaderValue::from_str(req.uri().path()).unwrap());
            for h in ["x-user-id", "x-user-roles", "x-redfire-peer-identity"] {
                if let Some(v) = req.headers().get(h) {
                    resp.headers_mut()
                        .insert(HeaderName::from_bytes(format!("x-seen-{h}").as_bytes()).unwrap(), v.clone());
                }
            }
            Ok::<_, Infallible>(resp)
        }
    })
    .await;
    (addr, rec)
}

/// Serves `handle` on a free 127.0.0.1 port, HTTP/1.1 or h2c, until the test ends.
pub async fn serve_app<F, Fut>(http1: bool, handle: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<BoxBody>, Infallible>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let _ = tcp.set_nodelay(true);
            let handle = handle.clone();
            tokio::spawn(async move {
                let io = TokioIo::new(tcp);
                let svc = service_fn(handle);
                if http1 {
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                } else {
                    let _ =
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, svc).await;
                }
            });
        }
    });
    addr
}

pub struct Mesh {
    pub control: Control,
    pub client_side: Sidecar,
    pub server_side: Sidecar,
    /// The control's settings (its CA signs the sidecars' bootstrap tokens).
    pub control_settings: Settings,
}

/// A sidecar config for `service` in `namespace` against `control`, whose
/// CA is configured by `control_settings`.
pub async fn sidecar_config(
    control: &Control,
    control_settings: &Settings,
    (namespace, service): (&str, &str),
    upstreams: Option<String>,
    app_addr: String,
    app_protocol: &str,
    extra: SidecarSettings,
) -> SidecarConfig {
    let ca = Ca::load(Config::from_settings(control_settings.clone()).unwrap().ca).await.unwrap();
    let tok = token::create(&ca, namespace, service, Duration::from_secs(600)).unwrap();
    SidecarConfig::from_settings(extra.or(SidecarSettings {
        control_addr: Some(control.grpc_url()),
        control_ca_file: control.trust_bundle_file.as_ref().map(|p| p.display().to_string()),
        service: Some(service.into()),
        namespace: Some(namespace.into()),
        bootstrap_token: Some(tok),
        inbound_addr: Some("127.0.0.1:0".into()),
        outbound_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        upstreams,
        app_addr: Some(app_addr),
        app_protocol: Some(app_protocol.into()),
        shutdown_grace: Some("2s".into()),
        log_level: Some("warn".into()),
        ..Default::default()
    }))
    .unwrap()
}

/// Another client sidecar (`service` in `namespace`, with an `echo` upstream
/// listener) in mesh `m`, ready once it has discovered echo.
pub async fn extra_client(m: &Mesh, namespace: &str, service: &str) -> Sidecar {
    let config = sidecar_config(
        &m.control,
        &m.control_settings,
        (namespace, service),
        Some("echo=127.0.0.1:0".into()),
        "127.0.0.1:9".into(),
        "h2c",
        SidecarSettings::default(),
    )
    .await;
    let s = Sidecar::start(config).await.unwrap();
    let port = m.server_side.inbound_addr.port();
    let ready = eventually(Duration::from_secs(10), || async {
        let (_, body) = http_get(s.admin_addr, "/admin/endpoints").await;
        http_get(s.admin_addr, "/ready").await.0 == 200 && body.contains(&format!("\"address\": \"127.0.0.1:{port}\""))
    })
    .await;
    assert!(ready, "{service} ready and the echo endpoint discovered");
    s
}

pub async fn mesh(app: SocketAddr, app_protocol: &str, client: Option<SidecarSettings>) -> Mesh {
    mesh_full(settings(), app, app_protocol, client.unwrap_or_default(), SidecarSettings::default()).await
}

/// [`mesh`] with extra settings for the server side too.
pub async fn mesh_with(app: SocketAddr, app_protocol: &str, client: SidecarSettings, server: SidecarSettings) -> Mesh {
    mesh_full(settings(), app, app_protocol, client, server).await
}

/// A mesh whose control runs with `control_settings`.
pub async fn mesh_on(
    app: SocketAddr,
    app_protocol: &str,
    client: Option<SidecarSettings>,
    control_settings: Settings,
) -> Mesh {
    mesh_full(control_settings, app, app_protocol, client.unwrap_or_default(), SidecarSettings::default()).await
}

/// The most general mesh: control with `control_settings` (which must name a
/// fixed CA directory, as [`settings`] does), extra settings for both sides.
pub async fn mesh_full(
    control_settings: Settings,
    app: SocketAddr,
    app_protocol: &str,
    client: SidecarSettings,
    server: SidecarSettings,
) -> Mesh {
    let control = control(control_settings.clone()).await;
    let (ctl, cs) = (&control, &control_settings);
    let sidecar = |service: &'static str, upstreams: Option<String>, app_addr: String, extra: SidecarSettings| async move {
        sidecar_config(ctl, cs, ("default", service), upstreams, app_addr, app_protocol, extra).await
    };
    let server_side = Sidecar::start(sidecar("echo", None, app.to_string(), server).await).await.unwrap();
    let client_side =
        Sidecar::start(sidecar("client", Some("echo=127.0.0.1:0".into()), "127.0.0.1:9".into(), client).await)
            .await
            .unwrap();
    let ready = eventually(Duration::from_secs(10), || async {
        let (_, body) = http_get(client_side.admin_addr, "/admin/endpoints").await;
        http_get(client_side.admin_addr, "/ready").await.0 == 200
            && http_get(server_side.admin_addr, "/ready").await.0 == 200
            && body.contains(&format!("\"address\": \"127.0.0.1:{}\"", server_side.inbound_addr.port()))
    })
    .await;
    assert!(ready, "both sidecars ready and the echo endpoint discovered");
    Mesh { control, client_side, server_side, control_settings }
}

pub async fn h2c_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Without it, Nagle + delayed ACKs add ~40 ms to every request.
    tcp.set_nodelay(true).unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    sender
}
